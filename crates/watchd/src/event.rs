//! What a source hands the hub: one change, typed, encoded only when a watch wants it.
//!
//! The core knows no source. A source's change type implements [`Change`] (how it encodes
//! into a record); its watches' [`crate::watch::Scope`] looks at the change through
//! [`Event::subject`], which hands back the source's own type.
#![forbid(unsafe_code)]

use std::any::Any;
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use watchd_proto::{RecordBuilder, RecordType};

/// What an event is about, in the terms of the source that saw it.
pub trait Change: Any + std::fmt::Debug + Send + Sync {
    /// Puts this change's attributes into its record (`record_type` is the event's: a
    /// source may describe its object in a META record, such as REMOVAL, too).
    fn encode(&self, record: &mut RecordBuilder, record_type: RecordType);
}

/// One change seen by a source.
#[derive(Debug)]
pub struct Event {
    pub record_type: RecordType,
    pub subtype: u8,
    pub flags: u8,
    pub time_ns: u64,
    subject: Arc<dyn Change>,
    encoded: OnceLock<Vec<u8>>,
}

impl Event {
    pub fn new(record_type: RecordType, subtype: u8, flags: u8, subject: Arc<dyn Change>) -> Self {
        Event {
            record_type,
            subtype,
            flags,
            time_ns: now_ns(),
            subject,
            encoded: OnceLock::new(),
        }
    }

    /// The change, if it is a `T`: a watch asks for its own source's type.
    pub fn subject<T: Change>(&self) -> Option<&T> {
        let subject: &dyn Any = &*self.subject;
        subject.downcast_ref()
    }

    /// The watched object is gone: watches that get this record end with it.
    pub fn ends_watch(&self) -> bool {
        self.record_type == RecordType::Meta && self.subtype == watchd_proto::meta::REMOVAL
    }

    /// A fresh record builder for this event, for a watch that shapes its own record.
    pub fn builder(&self) -> RecordBuilder {
        RecordBuilder::new(self.record_type, self.subtype, self.flags, self.time_ns)
    }

    /// The record, tag and sequence number zero; built on first use, then shared by every
    /// subscriber it goes to.
    pub fn record(&self) -> &[u8] {
        self.encoded.get_or_init(|| {
            let mut builder = self.builder();
            self.subject.encode(&mut builder, self.record_type);
            builder.finish()
        })
    }
}

/// CLOCK_REALTIME in nanoseconds, as records carry it.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Puts attributes into a record under the one-packet limit. An attribute that does not fit
/// is left out and counted, never cut: the record then carries `FLAG_TRUNCATED` and
/// `attr::TRUNCATED` with the count, for which room is always kept.
pub struct Fields<'a> {
    builder: &'a mut RecordBuilder,
    dropped: u32,
}

/// Room for the TRUNCATED attribute itself (header + u32).
const TRUNCATED_ROOM: usize = 8;

impl<'a> Fields<'a> {
    pub fn new(builder: &'a mut RecordBuilder) -> Self {
        Fields {
            builder,
            dropped: 0,
        }
    }

    pub fn bytes(&mut self, id: u16, value: &[u8]) {
        let need = (watchd_proto::ATTR_HEADER_LEN + value.len()).next_multiple_of(4);
        if need + TRUNCATED_ROOM > self.builder.room() || self.builder.put(id, value).is_err() {
            self.dropped += 1;
        }
    }

    pub fn u32(&mut self, id: u16, value: u32) {
        self.bytes(id, &value.to_le_bytes());
    }

    pub fn u64(&mut self, id: u16, value: u64) {
        self.bytes(id, &value.to_le_bytes());
    }

    pub fn finish(self) {
        if self.dropped > 0 {
            self.builder.set_flags(watchd_proto::FLAG_TRUNCATED);
            self.builder
                .put_u32(watchd_proto::attr::TRUNCATED, self.dropped)
                .expect("room for TRUNCATED is always kept");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use watchd_proto::{FLAG_TRUNCATED, MAX_RECORD_LEN, Record, attr, mount};

    #[test]
    fn attributes_that_do_not_fit_are_dropped_whole_and_counted() {
        let mut builder = RecordBuilder::new(RecordType::Mount, mount::ATTACH, 0, 1);
        let mut fields = Fields::new(&mut builder);
        fields.u64(attr::MOUNT_ID, 7);
        fields.bytes(attr::MOUNT_POINT, &[b'a'; 3000]);
        fields.bytes(attr::SOURCE, &[b'b'; 3000]);
        fields.bytes(attr::FS_TYPE, b"tmpfs");
        fields.finish();
        let bytes = builder.finish();
        assert!(bytes.len() <= MAX_RECORD_LEN);
        let record = Record::parse(&bytes).unwrap();
        assert_eq!(record.header.flags & FLAG_TRUNCATED, FLAG_TRUNCATED);
        assert_eq!(record.get_u32(attr::TRUNCATED), Some(1));
        assert_eq!(record.get(attr::MOUNT_POINT).unwrap().value.len(), 3000);
        assert!(record.get(attr::SOURCE).is_none());
        assert_eq!(
            record.get_str(attr::FS_TYPE).as_deref(),
            Some("tmpfs"),
            "smaller fields after still fit"
        );
    }
}
