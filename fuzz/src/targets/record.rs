//! The wire format, as a client reads a packet: `Record::parse`, then the attributes.
//! Promises: a packet that parses is exactly `header.len` bytes; every attribute borrowed
//! from it lies within it and the walk that parse validated never fails later; the typed
//! getters agree with the raw values; re-encoding the attributes with `RecordBuilder` gives
//! a record that parses to the same header and attributes.

use watchd_proto::{Record, RecordBuilder, stamp};

use super::within;

pub fn check(data: &[u8]) {
    let Ok(record) = Record::parse(data) else {
        return;
    };
    assert_eq!(usize::from(record.header.len), data.len());
    let attrs: Vec<_> = record
        .attrs()
        .map(|a| a.expect("Record::parse validated every attribute"))
        .collect();
    for a in &attrs {
        assert!(within(data, a.value), "attribute {} outside the packet", a.id);
        assert_eq!(a.as_u32().is_some(), a.value.len() == 4);
        assert_eq!(a.as_u64().is_some(), a.value.len() == 8);
        let first = record.get(a.id).expect("an attribute present is found");
        assert_eq!(record.get_u64(a.id), first.as_u64());
        assert!(record.get_all(a.id).count() >= 1);
    }
    let Some(record_type) = record.header.record_type() else {
        return;
    };
    let h = record.header;
    let mut builder = RecordBuilder::new(record_type, h.subtype, h.flags, h.time_ns);
    for a in &attrs {
        builder
            .put(a.id, a.value)
            .expect("what fitted in the packet fits again");
    }
    let mut again = builder.finish();
    stamp(&mut again, h.tag, h.seq);
    let reparsed = Record::parse(&again).expect("a built record parses");
    assert_eq!(reparsed.header, h);
    let reattrs: Vec<_> = reparsed.attrs().map(Result::unwrap).collect();
    assert_eq!(reattrs, attrs);
}
