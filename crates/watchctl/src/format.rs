//! Output formats, as pure functions: one line per record (human or JSON) and the status.
//!
//! The JSON form is generic: names come from `watchd_proto::names` and value layouts from
//! `watchd_proto::attr::kind`, so attributes added to the protocol show up without changes
//! here. The human form has words for META and mount records and falls back to
//! `name=value` pairs for every other type.

use std::borrow::Cow;
use std::fmt::Write as _;

use serde_json::Value;
use watchd_client::Status;
use watchd_proto::{
    Attr, AttrKind, FLAG_SNAPSHOT, FLAG_TRUNCATED, Record, RecordType, attr, meta, mount, names,
};

/// A type's name, or its number when this version does not know it.
fn type_name(t: u32) -> Cow<'static, str> {
    names::record_type(t).map_or_else(|| t.to_string().into(), Cow::Borrowed)
}

/// A subtype's name, or its number when this version does not know it.
fn subtype_name(t: u32, subtype: u8) -> Cow<'static, str> {
    names::subtype(t, subtype).map_or_else(|| subtype.to_string().into(), Cow::Borrowed)
}

/// An attribute's name, or `attr_0x<id>` when this version does not know it.
fn attr_name(id: u16) -> Cow<'static, str> {
    names::attribute(id).map_or_else(|| format!("attr_0x{id:04x}").into(), Cow::Borrowed)
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// An attribute's value as JSON: numbers as numbers, text as a string (invalid UTF-8
/// replaced), anything else (unknown id, wrong size) as a hex string of its bytes.
fn attr_value(a: &Attr<'_>) -> Value {
    match attr::kind(a.id) {
        Some(AttrKind::U32) => a.as_u32().map(Value::from),
        Some(AttrKind::U64) => a.as_u64().map(Value::from),
        Some(AttrKind::Str) => Some(Value::from(String::from_utf8_lossy(a.value).into_owned())),
        None => None,
    }
    .unwrap_or_else(|| Value::from(hex(a.value)))
}

/// Writes a JSON object with its keys in the given order. A key given twice (an attribute
/// that repeats) becomes one key whose value is the array of the values.
fn json_object(fields: Vec<(Cow<'_, str>, Value)>) -> String {
    let mut merged: Vec<(Cow<'_, str>, Value)> = Vec::with_capacity(fields.len());
    for (key, value) in fields {
        match merged.iter_mut().find(|(k, _)| *k == key) {
            Some((_, Value::Array(values))) => values.push(value),
            Some((_, first)) => *first = Value::Array(vec![first.take(), value]),
            None => merged.push((key, value)),
        }
    }
    let mut out = String::from("{");
    for (i, (key, value)) in merged.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&Value::from(key.as_ref()).to_string());
        out.push(':');
        out.push_str(&value.to_string());
    }
    out.push('}');
    out
}

/// One record as one line of JSON (no newline): `type`, `event`, `tag`, `seq`, `time_ns`,
/// `snapshot`, then every attribute by name.
pub fn json_line(record: &Record<'_>) -> String {
    let h = &record.header;
    let mut fields: Vec<(Cow<'_, str>, Value)> = vec![
        (
            "type".into(),
            Value::from(type_name(h.record_type).as_ref()),
        ),
        (
            "event".into(),
            Value::from(subtype_name(h.record_type, h.subtype).as_ref()),
        ),
        ("tag".into(), Value::from(h.tag)),
        ("seq".into(), Value::from(h.seq)),
        ("time_ns".into(), Value::from(h.time_ns)),
        ("snapshot".into(), Value::from(h.flags & FLAG_SNAPSHOT != 0)),
    ];
    // Record::parse has checked the attribute chain, so no item is an error.
    for a in record.attrs().filter_map(Result::ok) {
        fields.push((attr_name(a.id), attr_value(&a)));
    }
    json_object(fields)
}

/// `HH:MM:SS.mmm` of `time_ns` (nanoseconds since the epoch) at `utc_offset` seconds east.
pub fn clock(time_ns: u64, utc_offset: i64) -> String {
    let secs = i64::try_from(time_ns / 1_000_000_000).unwrap_or(i64::MAX);
    let millis = (time_ns / 1_000_000) % 1000;
    let day_secs = secs.saturating_add(utc_offset).rem_euclid(86_400);
    format!(
        "{:02}:{:02}:{:02}.{millis:03}",
        day_secs / 3600,
        day_secs / 60 % 60,
        day_secs % 60
    )
}

/// Text as it should appear in a line: as is when it is one plain word, else quoted and
/// escaped, so a name with spaces or newlines cannot break the line apart.
fn word(s: &str) -> Cow<'_, str> {
    let plain = !s.is_empty()
        && !s
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '\\');
    if plain {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(format!("{s:?}"))
    }
}

fn text(a: &Attr<'_>) -> String {
    word(&String::from_utf8_lossy(a.value)).into_owned()
}

/// An attribute's value for the human form.
fn human_value(a: &Attr<'_>) -> String {
    match attr_value(a) {
        Value::String(_) if attr::kind(a.id) == Some(AttrKind::Str) => text(a),
        Value::String(hex) => hex,
        other => other.to_string(),
    }
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The names of the types in a set of types (bit n = type n).
fn type_set(bits: u64) -> String {
    (0..64)
        .filter(|n| bits & (1 << n) != 0)
        .map(|n| type_name(n).into_owned())
        .collect::<Vec<_>>()
        .join(", ")
}

fn describe_meta(record: &Record<'_>) -> Option<String> {
    let h = &record.header;
    Some(match h.subtype {
        meta::LOSS => {
            let count = record.get_u64(attr::LOST_COUNT).unwrap_or(0);
            let mut details = Vec::new();
            if let Some(first) = record.get_u64(attr::FIRST_LOST_SEQ) {
                details.push(format!("first seq {first}"));
            }
            if let Some(types) = record.get_u64(attr::LOST_TYPES).filter(|t| *t != 0) {
                details.push(format!("types: {}", type_set(types)));
            }
            let mut line = format!("lost {}", plural(count, "record", "records"));
            if !details.is_empty() {
                let _ = write!(line, " ({})", details.join("; "));
            }
            line
        }
        meta::SYNC => format!("snapshot complete (tag {})", h.tag),
        meta::REMOVAL => {
            let mut line = format!("watch {} ended", h.tag);
            if let Some(object) = record.get(attr::OBJECT) {
                let _ = write!(line, ": {}", text(&object));
            }
            if let Some(reason) = record.get_str(attr::REASON) {
                let _ = write!(line, " ({reason})");
            }
            line
        }
        _ => return None,
    })
}

fn changed_names(bits: u32) -> String {
    let known = [
        (mount::CHANGED_OPTIONS, "options"),
        (mount::CHANGED_SUPER_OPTIONS, "super_options"),
        (mount::CHANGED_PROPAGATION, "propagation"),
        (mount::CHANGED_PARENT, "parent"),
    ];
    let mut parts: Vec<String> = known
        .iter()
        .filter(|(bit, _)| bits & bit != 0)
        .map(|(_, n)| (*n).to_owned())
        .collect();
    let rest = known.iter().fold(bits, |b, (bit, _)| b & !bit);
    if rest != 0 {
        parts.push(format!("0x{rest:x}"));
    }
    parts.join(",")
}

fn describe_mount(record: &Record<'_>) -> String {
    let h = &record.header;
    let mut line = format!("mount {:<7}", subtype_name(h.record_type, h.subtype));
    let mut push = |field: String| {
        line.push_str("  ");
        line.push_str(&field);
    };
    push(
        record
            .get(attr::MOUNT_POINT)
            .map_or_else(|| "?".to_owned(), |a| text(&a)),
    );
    if let Some(old) = record.get(attr::OLD_MOUNT_POINT) {
        push(format!("from={}", text(&old)));
    }
    if let Some(fs_type) = record.get(attr::FS_TYPE) {
        push(text(&fs_type));
    }
    if let Some(source) = record.get(attr::SOURCE) {
        push(format!("source={}", text(&source)));
    }
    if let Some(id) = record.get_u64(attr::MOUNT_ID) {
        push(format!("id={id}"));
    }
    if let Some(options) = record.get(attr::MOUNT_OPTIONS) {
        push(format!("opts={}", text(&options)));
    }
    if let Some(changed) = record.get_u32(attr::CHANGED) {
        push(format!("changed={}", changed_names(changed)));
    }
    // Propagation is shown when it is what changed; empty means a private mount.
    let changed = record.get_u32(attr::CHANGED).unwrap_or(0);
    if h.subtype == mount::CHANGE
        && changed & mount::CHANGED_PROPAGATION != 0
        && let Some(propagation) = record.get(attr::PROPAGATION)
    {
        match propagation.value {
            [] => push("propagation=private".to_owned()),
            _ => push(format!("propagation={}", text(&propagation))),
        }
    }
    line
}

/// `type event  name=value …` for records without a form of their own.
fn describe_generic(record: &Record<'_>) -> String {
    let h = &record.header;
    let mut line = format!(
        "{} {:<7}",
        type_name(h.record_type),
        subtype_name(h.record_type, h.subtype)
    );
    for a in record.attrs().filter_map(Result::ok) {
        if a.id == attr::TRUNCATED {
            continue; // said at the end of the line
        }
        let _ = write!(line, "  {}={}", attr_name(a.id), human_value(&a));
    }
    line.trim_end().to_owned()
}

/// One record as one readable line (no newline), its time shown `utc_offset` seconds east
/// of UTC. Snapshot records are marked `[snapshot]`.
pub fn human_line(record: &Record<'_>, utc_offset: i64) -> String {
    let h = &record.header;
    let mut line = clock(h.time_ns, utc_offset);
    line.push_str("  ");
    if h.flags & FLAG_SNAPSHOT != 0 {
        line.push_str("[snapshot] ");
    }
    let body = match h.record_type() {
        Some(RecordType::Meta) => describe_meta(record).unwrap_or_else(|| describe_generic(record)),
        Some(RecordType::Mount) => describe_mount(record),
        _ => describe_generic(record),
    };
    line.push_str(body.trim_end());
    if h.flags & FLAG_TRUNCATED != 0 {
        match record.get_u32(attr::TRUNCATED) {
            Some(n) => {
                let _ = write!(
                    line,
                    "  [{} left out]",
                    plural(n.into(), "attribute", "attributes")
                );
            }
            None => line.push_str("  [truncated]"),
        }
    }
    line
}

/// The status as aligned `name: value` lines, each ending in a newline.
pub fn status_human(status: &Status) -> String {
    let sources = if status.sources.is_empty() {
        "none".to_owned()
    } else {
        status.sources.join(", ")
    };
    format!(
        "version:       {}\nsources:       {sources}\nsubscriptions: {}\nwatches:       {}\nauthorization: {}\n",
        status.version, status.subscriptions, status.watches, status.authorization
    )
}

/// The status as one line of JSON (no newline).
pub fn status_json(status: &Status) -> String {
    json_object(vec![
        ("version".into(), Value::from(status.version.as_str())),
        ("sources".into(), Value::from(status.sources.clone())),
        ("subscriptions".into(), Value::from(status.subscriptions)),
        ("watches".into(), Value::from(status.watches)),
        (
            "authorization".into(),
            Value::from(status.authorization.as_str()),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use watchd_proto::{RecordBuilder, stamp};

    /// 2023-11-14 22:13:20.123456789 UTC.
    const T: u64 = 1_700_000_000_123_456_789;

    fn build(builder: RecordBuilder, tag: u64, seq: u64) -> Vec<u8> {
        let mut bytes = builder.finish();
        stamp(&mut bytes, tag, seq);
        bytes
    }

    fn attach(flags: u8) -> Vec<u8> {
        let mut b = RecordBuilder::new(RecordType::Mount, mount::ATTACH, flags, T);
        b.put_u64(attr::MOUNT_ID, 123).unwrap();
        b.put_u64(attr::PARENT_ID, 1).unwrap();
        b.put_u32(attr::MAJOR, 0).unwrap();
        b.put_u32(attr::MINOR, 52).unwrap();
        b.put_str(attr::ROOT, "/").unwrap();
        b.put_str(attr::MOUNT_POINT, "/mnt/x").unwrap();
        b.put_str(attr::FS_TYPE, "tmpfs").unwrap();
        b.put_str(attr::SOURCE, "tmpfs").unwrap();
        b.put_str(attr::MOUNT_OPTIONS, "rw,relatime").unwrap();
        b.put_str(attr::PROPAGATION, "").unwrap();
        build(b, 1, 42)
    }

    fn parse(bytes: &[u8]) -> Record<'_> {
        Record::parse(bytes).unwrap()
    }

    #[test]
    fn mount_attach_json() {
        let bytes = attach(0);
        assert_eq!(
            json_line(&parse(&bytes)),
            r#"{"type":"mount","event":"attach","tag":1,"seq":42,"time_ns":1700000000123456789,"snapshot":false,"mount_id":123,"parent_id":1,"major":0,"minor":52,"root":"/","mount_point":"/mnt/x","fs_type":"tmpfs","source":"tmpfs","mount_options":"rw,relatime","propagation":""}"#
        );
    }

    #[test]
    fn mount_attach_human() {
        let bytes = attach(0);
        assert_eq!(
            human_line(&parse(&bytes), 0),
            "22:13:20.123  mount attach   /mnt/x  tmpfs  source=tmpfs  id=123  opts=rw,relatime"
        );
        // Local time: two hours east.
        assert!(human_line(&parse(&bytes), 7200).starts_with("00:13:20.123  mount attach"));
    }

    #[test]
    fn snapshot_is_marked() {
        let bytes = attach(FLAG_SNAPSHOT);
        let record = parse(&bytes);
        assert!(json_line(&record).contains(r#","snapshot":true,"#));
        assert_eq!(
            human_line(&record, 0),
            "22:13:20.123  [snapshot] mount attach   /mnt/x  tmpfs  source=tmpfs  id=123  opts=rw,relatime"
        );
    }

    #[test]
    fn mount_move_and_change_human() {
        let mut b = RecordBuilder::new(RecordType::Mount, mount::MOVE, 0, T);
        b.put_str(attr::MOUNT_POINT, "/srv/new place").unwrap();
        b.put_str(attr::OLD_MOUNT_POINT, "/srv/old").unwrap();
        b.put_u64(attr::MOUNT_ID, 7).unwrap();
        let bytes = build(b, 1, 1);
        assert_eq!(
            human_line(&parse(&bytes), 0),
            r#"22:13:20.123  mount move     "/srv/new place"  from=/srv/old  id=7"#
        );

        let mut b = RecordBuilder::new(RecordType::Mount, mount::CHANGE, 0, T);
        b.put_str(attr::MOUNT_POINT, "/").unwrap();
        b.put_str(attr::MOUNT_OPTIONS, "ro").unwrap();
        b.put_u32(
            attr::CHANGED,
            mount::CHANGED_OPTIONS | mount::CHANGED_PROPAGATION | 0x40,
        )
        .unwrap();
        b.put_str(attr::PROPAGATION, "shared:1").unwrap();
        let bytes = build(b, 1, 2);
        assert_eq!(
            human_line(&parse(&bytes), 0),
            "22:13:20.123  mount change   /  opts=ro  changed=options,propagation,0x40  propagation=shared:1"
        );

        // Propagation shows only when it is what changed; empty reads as private.
        for (changed, propagation, shown) in [
            (mount::CHANGED_OPTIONS, "shared:1", ""),
            (mount::CHANGED_PROPAGATION, "", "  propagation=private"),
        ] {
            let mut b = RecordBuilder::new(RecordType::Mount, mount::CHANGE, 0, T);
            b.put_str(attr::MOUNT_POINT, "/").unwrap();
            b.put_u32(attr::CHANGED, changed).unwrap();
            b.put_str(attr::PROPAGATION, propagation).unwrap();
            let bytes = build(b, 1, 3);
            let line = human_line(&parse(&bytes), 0);
            assert!(
                line.ends_with(&format!("changed={}{shown}", changed_names(changed))),
                "{line}"
            );
        }
    }

    #[test]
    fn loss_record() {
        let mut b = RecordBuilder::new(RecordType::Meta, meta::LOSS, 0, T);
        b.put_u64(attr::LOST_COUNT, 1984).unwrap();
        b.put_u64(attr::FIRST_LOST_SEQ, 17).unwrap();
        b.put_u64(attr::LOST_TYPES, RecordType::Mount.bit())
            .unwrap();
        let bytes = build(b, 0, 2001);
        let record = parse(&bytes);
        assert_eq!(
            human_line(&record, 0),
            "22:13:20.123  lost 1984 records (first seq 17; types: mount)"
        );
        assert_eq!(
            json_line(&record),
            r#"{"type":"meta","event":"loss","tag":0,"seq":2001,"time_ns":1700000000123456789,"snapshot":false,"lost_count":1984,"first_lost_seq":17,"lost_types":4}"#
        );

        let mut b = RecordBuilder::new(RecordType::Meta, meta::LOSS, 0, T);
        b.put_u64(attr::LOST_COUNT, 1).unwrap();
        b.put_u64(
            attr::LOST_TYPES,
            RecordType::Mount.bit() | RecordType::Key.bit() | 1 << 40,
        )
        .unwrap();
        let bytes = build(b, 0, 3);
        assert_eq!(
            human_line(&parse(&bytes), 0),
            "22:13:20.123  lost 1 record (types: key, mount, 40)"
        );
    }

    #[test]
    fn sync_and_removal_records() {
        let bytes = build(RecordBuilder::new(RecordType::Meta, meta::SYNC, 0, T), 3, 9);
        let record = parse(&bytes);
        assert_eq!(
            human_line(&record, 0),
            "22:13:20.123  snapshot complete (tag 3)"
        );
        assert_eq!(
            json_line(&record),
            r#"{"type":"meta","event":"sync","tag":3,"seq":9,"time_ns":1700000000123456789,"snapshot":false}"#
        );

        let mut b = RecordBuilder::new(RecordType::Meta, meta::REMOVAL, 0, T);
        b.put_str(attr::OBJECT, "/mnt/x").unwrap();
        b.put_str(attr::REASON, "unmounted").unwrap();
        let bytes = build(b, 3, 10);
        let record = parse(&bytes);
        assert_eq!(
            human_line(&record, 0),
            "22:13:20.123  watch 3 ended: /mnt/x (unmounted)"
        );
        assert_eq!(
            json_line(&record),
            r#"{"type":"meta","event":"removal","tag":3,"seq":10,"time_ns":1700000000123456789,"snapshot":false,"object":"/mnt/x","reason":"unmounted"}"#
        );
        let bytes = build(
            RecordBuilder::new(RecordType::Meta, meta::REMOVAL, 0, T),
            3,
            11,
        );
        assert_eq!(human_line(&parse(&bytes), 0), "22:13:20.123  watch 3 ended");
    }

    #[test]
    fn unknown_types_subtypes_and_attributes() {
        let mut b = RecordBuilder::new(RecordType::Key, 200, 0, T);
        b.put(0x0f00, &[0xde, 0xad, 0xbe]).unwrap();
        b.put(0x0f00, &[0x01]).unwrap();
        b.put_u64(attr::MOUNT_ID, 5).unwrap();
        b.put(attr::MAJOR, &[1, 2]).unwrap(); // a u32 attribute of the wrong size
        b.put_str(attr::OBJECT, "a \"b\"\n").unwrap();
        b.put(attr::REASON, &[0x66, 0xff]).unwrap(); // not UTF-8
        let bytes = build(b, 9, 1);
        let record = parse(&bytes);
        assert_eq!(
            json_line(&record),
            r#"{"type":"key","event":"200","tag":9,"seq":1,"time_ns":1700000000123456789,"snapshot":false,"attr_0x0f00":["deadbe","01"],"mount_id":5,"major":"0102","object":"a \"b\"\n","reason":"f�"}"#
        );
        assert_eq!(
            human_line(&record, 0),
            r#"22:13:20.123  key 200      attr_0x0f00=deadbe  attr_0x0f00=01  mount_id=5  major=0102  object="a \"b\"\n"  reason=f�"#
        );
        // A record type this version does not know: rewrite the type word by hand.
        let mut bytes = build(RecordBuilder::new(RecordType::Meta, 0, 0, T), 0, 1);
        bytes[4..8].copy_from_slice(&(77u32 | 5 << 24).to_le_bytes());
        let record = parse(&bytes);
        assert_eq!(human_line(&record, 0), "22:13:20.123  77 5");
        assert!(json_line(&record).starts_with(r#"{"type":"77","event":"5","#));
    }

    #[test]
    fn truncated_records_say_so() {
        let mut b = RecordBuilder::new(RecordType::Device, 0, 0, T);
        b.put_u32(attr::TRUNCATED, 3).unwrap();
        b.set_flags(FLAG_TRUNCATED);
        let bytes = build(b, 1, 1);
        let record = parse(&bytes);
        assert_eq!(
            human_line(&record, 0),
            "22:13:20.123  device 0  [3 attributes left out]"
        );
        assert!(json_line(&record).ends_with(r#","truncated":3}"#));
    }

    #[test]
    fn clock_wraps_around_the_day() {
        assert_eq!(clock(0, 0), "00:00:00.000");
        assert_eq!(clock(0, -3600), "23:00:00.000");
        assert_eq!(clock(86_399_999_999_999, 0), "23:59:59.999");
    }

    #[test]
    fn status_formats() {
        let status = Status {
            version: "0.1.0".into(),
            sources: vec!["mounts".into(), "keys".into()],
            subscriptions: 2,
            watches: 5,
            authorization: "polkit".into(),
        };
        assert_eq!(
            status_json(&status),
            r#"{"version":"0.1.0","sources":["mounts","keys"],"subscriptions":2,"watches":5,"authorization":"polkit"}"#
        );
        assert_eq!(
            status_human(&status),
            "version:       0.1.0\nsources:       mounts, keys\nsubscriptions: 2\nwatches:       5\nauthorization: polkit\n"
        );
    }
}
