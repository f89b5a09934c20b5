//! Output formats, as pure functions: one line per record (human or JSON) and the status.
//!
//! The JSON form is generic: names come from `watchd_proto::names` and value layouts from
//! `watchd_proto::attr::kind`, so attributes added to the protocol show up without changes
//! here. The exceptions are the repeated `property` attribute of device records, which becomes
//! a `properties` object (`{"KEY": "VALUE", …}`), and `mounted_on`, always an array.
//! The human form has words for META, mount, device, key, krb5, file, filesystem error, quota
//! and free space records and falls back to `name=value` pairs for every other
//! type (and for key and krb5 subtypes this version does not know).

use std::borrow::Cow;
use std::fmt::Write as _;

use serde_json::Value;
use watchctl::TimeFormat;
use watchd_client::{Status, SubscriptionInfo};
use watchd_proto::quota;
use watchd_proto::{
    Attr, AttrKind, FLAG_SNAPSHOT, FLAG_TRUNCATED, Record, RecordType, attr, key, meta, mount,
    names, superblock,
};

/// The JSON member that gathers a record's `property` attributes.
const PROPERTIES: &str = "properties";

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

/// A JSON object that keeps its members in the order they were added (serde_json's own map
/// sorts them). A key pushed twice (an attribute that repeats) becomes one member whose
/// value is the array of the values.
#[derive(Debug, Default)]
struct Object<'a> {
    members: Vec<(Cow<'a, str>, Member<'a>)>,
}

#[derive(Debug)]
enum Member<'a> {
    Value(Value),
    Object(Object<'a>),
}

impl<'a> Object<'a> {
    fn push(&mut self, key: impl Into<Cow<'a, str>>, value: Value) {
        let key = key.into();
        let existing = self.members.iter_mut().find_map(|(k, m)| match m {
            Member::Value(v) if *k == key => Some(v),
            _ => None,
        });
        match existing {
            Some(Value::Array(values)) => values.push(value),
            Some(first) => *first = Value::Array(vec![first.take(), value]),
            None => self.members.push((key, Member::Value(value))),
        }
    }

    /// Like [`Object::push`], but the member is an array from its first value on.
    fn push_to_list(&mut self, key: impl Into<Cow<'a, str>>, value: Value) {
        let key = key.into();
        if self.members.iter().any(|(k, _)| *k == key) {
            self.push(key, value);
        } else {
            self.members
                .push((key, Member::Value(Value::Array(vec![value]))));
        }
    }

    /// The nested object under `key`, added (empty, at the end) the first time.
    fn object(&mut self, key: &'a str) -> &mut Object<'a> {
        let at = match self
            .members
            .iter()
            .position(|(k, m)| k == key && matches!(m, Member::Object(_)))
        {
            Some(at) => at,
            None => {
                self.members
                    .push((key.into(), Member::Object(Object::default())));
                self.members.len() - 1
            }
        };
        match &mut self.members[at].1 {
            Member::Object(object) => object,
            Member::Value(_) => unreachable!("position() found an object"),
        }
    }

    fn write(&self, out: &mut String) {
        out.push('{');
        for (i, (key, member)) in self.members.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&Value::from(key.as_ref()).to_string());
            out.push(':');
            match member {
                Member::Value(value) => out.push_str(&value.to_string()),
                Member::Object(object) => object.write(out),
            }
        }
        out.push('}');
    }

    fn to_json(&self) -> String {
        let mut out = String::new();
        self.write(&mut out);
        out
    }
}

/// A `property` value, `KEY=VALUE`, as a member of the `properties` object: the key ends
/// at the first `=`; a value without `=` (never written by watchd) has the value null.
fn push_property(properties: &mut Object<'_>, a: &Attr<'_>) {
    let text = String::from_utf8_lossy(a.value);
    match text.split_once('=') {
        Some((key, value)) => properties.push(key.to_owned(), Value::from(value)),
        None => properties.push(text.into_owned(), Value::Null),
    }
}

/// [`json_line_with`] with neither kind nor time.
#[cfg(test)]
pub fn json_line(record: &Record<'_>) -> String {
    json_line_with(record, None, None)
}

/// One record as one line of JSON (no newline): `type`, `event`, `tag`, `kind` (the kind
/// of the watch the tag names, when given), `seq`, `time_ns`, `time` (the time as text,
/// when given), `snapshot`, then every attribute by name, in the record's order. The
/// `property` attributes (device records) are gathered into one `properties` object,
/// `{"KEY": "VALUE", …}` in their order, placed where the first of them was; a key that
/// occurs twice gets the array of its values.
pub fn json_line_with(record: &Record<'_>, kind: Option<&str>, time: Option<&str>) -> String {
    let h = &record.header;
    let mut object = Object::default();
    object.push("type", Value::from(type_name(h.record_type).as_ref()));
    object.push(
        "event",
        Value::from(subtype_name(h.record_type, h.subtype).as_ref()),
    );
    object.push("tag", Value::from(h.tag));
    if let Some(kind) = kind {
        object.push("kind", Value::from(kind));
    }
    object.push("seq", Value::from(h.seq));
    object.push("time_ns", Value::from(h.time_ns));
    if let Some(time) = time {
        object.push("time", Value::from(time));
    }
    object.push("snapshot", Value::from(h.flags & FLAG_SNAPSHOT != 0));
    // Record::parse has checked the attribute chain, so no item is an error.
    for a in record.attrs().filter_map(Result::ok) {
        if a.id == attr::PROPERTY {
            push_property(object.object(PROPERTIES), &a);
        } else if a.id == attr::MOUNTED_ON {
            // Always a list, however many mount points the filesystem has.
            object.push_to_list(attr_name(a.id), attr_value(&a));
        } else {
            object.push(attr_name(a.id), attr_value(&a));
        }
    }
    object.to_json()
}

/// `HH:MM:SS.mmm` of `time_ns` (nanoseconds since the epoch) at `utc_offset` seconds east.
pub fn clock(time_ns: u64, utc_offset: i64) -> String {
    let (_, day_secs, millis) = local_parts(time_ns, utc_offset);
    format!(
        "{:02}:{:02}:{:02}.{millis:03}",
        day_secs / 3600,
        day_secs / 60 % 60,
        day_secs % 60
    )
}

/// `time_ns` at `utc_offset` seconds east: days since the epoch, seconds into that day,
/// milliseconds.
fn local_parts(time_ns: u64, utc_offset: i64) -> (i64, i64, u64) {
    let secs = i64::try_from(time_ns / 1_000_000_000).unwrap_or(i64::MAX);
    let local = secs.saturating_add(utc_offset);
    (
        local.div_euclid(86_400),
        local.rem_euclid(86_400),
        (time_ns / 1_000_000) % 1000,
    )
}

/// The proleptic Gregorian (year, month, day) of a count of days since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_date(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153; // March is 0
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// ISO 8601 (RFC 3339) date and time of `time_ns` at `utc_offset` seconds east, to the
/// millisecond, with the offset: `2026-12-05T21:14:03.123+01:00`.
pub fn iso_time(time_ns: u64, utc_offset: i64) -> String {
    let (days, day_secs, millis) = local_parts(time_ns, utc_offset);
    let (year, month, day) = civil_date(days);
    let sign = if utc_offset < 0 { '-' } else { '+' };
    let offset_minutes = utc_offset.abs() / 60;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}{sign}{:02}:{:02}",
        day_secs / 3600,
        day_secs / 60 % 60,
        day_secs % 60,
        offset_minutes / 60,
        offset_minutes % 60
    )
}

/// The record's time as `time` says: [`clock`] or [`iso_time`].
pub fn time_text(time_ns: u64, utc_offset: i64, time: TimeFormat) -> String {
    match time {
        TimeFormat::Clock => clock(time_ns, utc_offset),
        TimeFormat::Iso => iso_time(time_ns, utc_offset),
    }
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
        meta::LOSS if h.tag != 0 => {
            // Lost by the watch's source, before any matching: no count, no gap in seq.
            let mut line = format!("events lost at their source (tag {})", h.tag);
            if let Some(types) = record.get_u64(attr::LOST_TYPES).filter(|t| *t != 0) {
                let _ = write!(line, " (types: {})", type_set(types));
            }
            if let Some(reason) = record.get_str(attr::REASON) {
                let _ = write!(line, ": {reason}");
            }
            line
        }
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
        meta::SOURCE_CHANGED => {
            let backend = record
                .get(attr::BACKEND)
                .map_or_else(|| "?".to_owned(), |b| text(&b));
            let mut line = format!("source changed (tag {}): now {backend}", h.tag);
            if let Some(reason) = record.get_str(attr::REASON) {
                let _ = write!(line, " ({reason})");
            }
            line
        }
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

/// `device ACTION  SUBSYSTEM[/DEVTYPE]  SYSNAME  [DEVNODE]  [from=OLD_SYSPATH]  [driver=…]
/// [event_source=kernel]  [seq=N]`. Properties are left to `--json`.
fn describe_device(record: &Record<'_>) -> String {
    let h = &record.header;
    let mut line = format!("device {:<7}", subtype_name(h.record_type, h.subtype));
    let mut push = |field: String| {
        line.push_str("  ");
        line.push_str(&field);
    };
    let subsystem = record
        .get(attr::SUBSYSTEM)
        .map_or_else(|| "?".to_owned(), |a| text(&a));
    match record.get(attr::DEVTYPE) {
        Some(devtype) => push(format!("{subsystem}/{}", text(&devtype))),
        None => push(subsystem),
    }
    push(
        record
            .get(attr::SYSNAME)
            .map_or_else(|| "?".to_owned(), |a| text(&a)),
    );
    if let Some(devnode) = record.get(attr::DEVNODE) {
        push(text(&devnode));
    }
    if let Some(old) = record.get(attr::OLD_SYSPATH) {
        push(format!("from={}", text(&old)));
    }
    if let Some(driver) = record.get(attr::DRIVER) {
        push(format!("driver={}", text(&driver)));
    }
    // Said only when it is not the usual udev: raw kernel events lack udev's properties.
    if let Some(source) = record
        .get(attr::EVENT_SOURCE)
        .filter(|a| a.value != b"udev")
    {
        push(format!("event_source={}", text(&source)));
    }
    // Snapshot records describe a device, not an event: their seqnum is 0.
    if let Some(seqnum) = record.get_u64(attr::SEQNUM).filter(|n| *n != 0) {
        push(format!("seq={seqnum}"));
    }
    line
}

/// `key EVENT  key=ID  [aux=ID]  type=T  desc=D  perm=0xPERM  uid=U  gid=G  [watched=ID]`:
/// `aux` for linked/unlinked, `perm` in hex as `/proc/keys` shows it, `watched` (the key
/// the watch names) only when the record is about another key, one inside it.
fn describe_key(record: &Record<'_>) -> String {
    let h = &record.header;
    let mut line = format!("key {:<12}", subtype_name(h.record_type, h.subtype));
    let mut push = |field: String| {
        line.push_str("  ");
        line.push_str(&field);
    };
    let key_id = record.get_u32(attr::KEY_ID);
    if let Some(id) = key_id {
        push(format!("key={id}"));
    }
    if let Some(aux) = record.get_u32(attr::AUX) {
        push(format!("aux={aux}"));
    }
    if let Some(key_type) = record.get(attr::KEY_TYPE) {
        push(format!("type={}", text(&key_type)));
    }
    if let Some(description) = record.get(attr::DESCRIPTION) {
        push(format!("desc={}", text(&description)));
    }
    if let Some(perm) = record.get_u32(attr::PERM) {
        push(format!("perm=0x{perm:08x}"));
    }
    if let Some(uid) = record.get_u32(attr::KEY_UID) {
        push(format!("uid={uid}"));
    }
    if let Some(gid) = record.get_u32(attr::KEY_GID) {
        push(format!("gid={gid}"));
    }
    if let Some(watched) = record
        .get_u32(attr::WATCHED_KEY)
        .filter(|w| Some(*w) != key_id)
    {
        push(format!("watched={watched}"));
    }
    line
}

/// `krb5 EVENT  cache=NAME  [principal=P]`: the principal when known (not empty). The
/// collection is the watched name, which the user gave; it is left to `--json`.
fn describe_krb5(record: &Record<'_>) -> String {
    let h = &record.header;
    let mut line = format!("krb5 {:<9}", subtype_name(h.record_type, h.subtype));
    let mut push = |field: String| {
        line.push_str("  ");
        line.push_str(&field);
    };
    push(format!(
        "cache={}",
        record
            .get(attr::CACHE)
            .map_or_else(|| "?".to_owned(), |a| text(&a))
    ));
    if let Some(principal) = record.get(attr::PRINCIPAL).filter(|a| !a.value.is_empty()) {
        push(format!("principal={}", text(&principal)));
    }
    line
}

/// `file EVENT  NAME  [from OLD]  [dir]`: the name relative to the watched path ("." for
/// the watched object itself).
fn describe_file(record: &Record<'_>) -> String {
    let h = &record.header;
    let name = match record.get(attr::NAME) {
        Some(name) if !name.value.is_empty() => text(&name),
        _ => ".".to_owned(),
    };
    let mut line = format!(
        "file {:<11}  {name}",
        subtype_name(h.record_type, h.subtype)
    );
    if let Some(old) = record.get(attr::OLD_NAME) {
        let _ = write!(line, "  from {}", text(&old));
    }
    if record.get_u32(attr::IS_DIR) == Some(1) {
        line.push_str("  [dir]");
    }
    line
}

/// `fs error  EUCLEAN (117)  7:0 ext4 on /mnt, /srv  count=3  total=5  last=func:line`.
fn describe_fs_error(record: &Record<'_>) -> String {
    let mut line = String::from("fs error  ");
    match (record.get(attr::ERRNO_NAME), record.get_u32(attr::ERRNO)) {
        (Some(name), Some(errno)) => {
            let _ = write!(line, "{} ({errno})", text(&name));
        }
        (None, Some(errno)) => {
            let _ = write!(line, "errno {errno}");
        }
        (_, None) => line.push_str("error"),
    }
    let number = |id| record.get_u32(id).map_or("?".to_owned(), |n| n.to_string());
    let _ = write!(line, "  {}:{}", number(attr::MAJOR), number(attr::MINOR));
    if let Some(fs_type) = record.get(attr::FS_TYPE) {
        let _ = write!(line, " {}", text(&fs_type));
    }
    let points = mounted_on(record);
    if !points.is_empty() {
        let _ = write!(line, " on {}", points.join(", "));
    }
    if let Some(count) = record.get_u32(attr::ERROR_COUNT) {
        let _ = write!(line, "  count={count}");
    }
    if let Some(total) = record.get_u32(attr::ERRORS_TOTAL) {
        let _ = write!(line, "  total={total}");
    }
    if let Some(at) = record.get(attr::LAST_ERROR_AT) {
        let _ = write!(line, "  last={}", text(&at));
    }
    line
}

/// `quota WARNING  user|group|project ID  dev MAJOR:MINOR  on MOUNT,…  [by uid N]`.
fn describe_quota(record: &Record<'_>) -> String {
    let warning = record.get_u32(attr::QUOTA_WARNING).unwrap_or(0);
    let name = record
        .get_str(attr::QUOTA_WARNING_NAME)
        .or_else(|| quota::warning_name(warning).map(str::to_owned))
        .unwrap_or_else(|| format!("warning_{warning}"));
    let mut line = format!("quota {name:<19}  {}", quota_owner(record));
    if let (Some(major), Some(minor)) = (record.get_u32(attr::MAJOR), record.get_u32(attr::MINOR)) {
        let _ = write!(line, "  dev {major}:{minor}");
    }
    let mounts = mounted_on(record);
    if !mounts.is_empty() {
        let _ = write!(line, "  on {}", mounts.join(","));
    }
    if let Some(uid) = record.get_u64(attr::QUOTA_CAUSED_BY) {
        let _ = write!(line, "  by uid {uid}");
    }
    line
}

/// `quota_low  user 1000 space on /mnt/q: 174.0 KiB left before EDQUOT (used 850.0 KiB of
/// hard 1.0 MiB), below 204.8 KiB  ext4 7:0`: a quota threshold record (superblock
/// quota_low, quota_still_lower, quota_recovered).
fn describe_quota_room(record: &Record<'_>) -> String {
    let h = &record.header;
    let (resource, inodes, amount) = resource_unit(record);
    let mut line = format!(
        "{:<17}  {} {}",
        subtype_name(h.record_type, h.subtype),
        quota_owner(record),
        word(&resource),
    );
    let points = mounted_on(record);
    if !points.is_empty() {
        let _ = write!(line, " on {}", points.join(","));
    }
    let used = record.get_u64(attr::QUOTA_USED).unwrap_or(0);
    let limits: Vec<String> = [
        ("soft", attr::QUOTA_SOFT_LIMIT),
        ("hard", attr::QUOTA_HARD_LIMIT),
    ]
    .into_iter()
    .filter_map(|(name, id)| {
        let limit = record.get_u64(id).filter(|&l| l > 0)?;
        Some(format!("{name} {}", amount(limit)))
    })
    .collect();
    if limits.is_empty() {
        let _ = write!(line, ": no limit (used {})", amount(used));
    } else {
        let room = record.get_u64(attr::QUOTA_ROOM).unwrap_or(0);
        let _ = write!(
            line,
            ": {} left before EDQUOT (used {} of {}",
            if inodes {
                plural(room, "inode", "inodes")
            } else {
                size(room)
            },
            amount(used),
            limits.join(", ")
        );
        if let Some(ends) = record.get_u64(attr::QUOTA_GRACE_ENDS) {
            let now = h.time_ns / 1_000_000_000;
            match ends.checked_sub(now).filter(|&left| left > 0) {
                Some(left) => {
                    let _ = write!(line, "; grace ends in {}", duration(left));
                }
                None => line.push_str("; grace over"),
            }
        }
        line.push(')');
        if let Some(threshold) = record.get_u64(attr::THRESHOLD) {
            let side = if h.subtype == superblock::QUOTA_RECOVERED {
                "back above"
            } else {
                "below"
            };
            let _ = write!(line, ", {side} {}", amount(threshold));
        }
    }
    push_filesystem(&mut line, record);
    line
}

/// A span of seconds in its two largest units, e.g. `6d 23h`, `3h 5m`, `42s`.
fn duration(seconds: u64) -> String {
    let parts = [
        (seconds / 86_400, "d"),
        (seconds / 3600 % 24, "h"),
        (seconds / 60 % 60, "m"),
        (seconds % 60, "s"),
    ];
    let first = parts.iter().position(|&(n, _)| n > 0).unwrap_or(3);
    parts[first..]
        .iter()
        .take(2)
        .enumerate()
        .filter(|&(i, &(n, _))| i == 0 || n > 0)
        .map(|(_, (n, unit))| format!("{n}{unit}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `space low  /mnt  avail 12.0 MiB of 31.0 MiB (38.7 %)  line 15.5 MiB  ext4 7:3`: a
/// space record (superblock low, still_lower, recovered), its mount points first.
fn describe_space(record: &Record<'_>) -> String {
    let h = &record.header;
    let (_, inodes, amount) = resource_unit(record);
    let (free, total) = if inodes {
        (attr::FREE_INODES, attr::TOTAL_INODES)
    } else {
        (attr::AVAIL_BYTES, attr::TOTAL_BYTES)
    };
    let (free, total) = (
        record.get_u64(free).unwrap_or(0),
        record.get_u64(total).unwrap_or(0),
    );
    let points = mounted_on(record);
    let mut line = format!(
        "{} {:<11}  {}  {} {} of {}",
        if inodes { "inodes" } else { "space" },
        subtype_name(h.record_type, h.subtype),
        if points.is_empty() {
            "?".to_owned()
        } else {
            points.join(",")
        },
        if inodes { "free" } else { "avail" },
        amount(free),
        amount(total),
    );
    if total > 0 {
        let _ = write!(line, " ({:.1} %)", free as f64 * 100.0 / total as f64);
    }
    if let Some(threshold) = record.get_u64(attr::THRESHOLD) {
        let _ = write!(line, "  line {}", amount(threshold));
    }
    push_filesystem(&mut line, record);
    line
}

/// Ends a space or quota threshold line with the filesystem: `  ext4 7:3`.
fn push_filesystem(line: &mut String, record: &Record<'_>) {
    if let Some(fs_type) = record.get_str(attr::FS_TYPE) {
        let _ = write!(line, "  {}", word(&fs_type));
    }
    if let (Some(major), Some(minor)) = (record.get_u32(attr::MAJOR), record.get_u32(attr::MINOR)) {
        let _ = write!(line, " {major}:{minor}");
    }
}

/// Whose quota a record is about: `user 1000`, `group 3000`.
fn quota_owner(record: &Record<'_>) -> String {
    let quota_type = record.get_u32(attr::QUOTA_TYPE).unwrap_or(u32::MAX);
    let whose =
        quota::type_name(quota_type).map_or_else(|| format!("type_{quota_type}"), str::to_owned);
    format!(
        "{whose} {}",
        record.get_u64(attr::QUOTA_ID).unwrap_or_default()
    )
}

/// A space or quota threshold record's amounts are inodes when its `resource` says so, else
/// bytes: whether they are inodes, and how to print one.
fn resource_unit(record: &Record<'_>) -> (String, bool, fn(u64) -> String) {
    let resource = record.get_str(attr::RESOURCE).unwrap_or_default();
    let inodes = resource == "inodes";
    let amount: fn(u64) -> String = if inodes { |n| n.to_string() } else { size };
    (resource, inodes, amount)
}

/// Bytes in binary units with one decimal, as `df -h` would round them.
fn size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Every `mounted_on` of a superblock record, in order, made printable.
fn mounted_on(record: &Record<'_>) -> Vec<String> {
    record
        .attrs()
        .filter_map(Result::ok)
        .filter(|a| a.id == attr::MOUNTED_ON)
        .map(|a| text(&a))
        .collect()
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
#[cfg(test)]
pub fn human_line(record: &Record<'_>, utc_offset: i64) -> String {
    human_line_at(record, &clock(record.header.time_ns, utc_offset), None)
}

/// [`human_line`] starting with `time`, then `[TAG KIND]` when `watch` names the watch the
/// record is from (when a command has several).
pub fn human_line_at(record: &Record<'_>, time: &str, watch: Option<(u64, &str)>) -> String {
    let h = &record.header;
    let mut line = format!("{time}  ");
    if let Some((tag, kind)) = watch {
        let _ = write!(line, "[{tag} {kind}]  ");
    }
    if h.flags & FLAG_SNAPSHOT != 0 {
        line.push_str("[snapshot] ");
    }
    let body = match h.record_type() {
        Some(RecordType::Meta) => describe_meta(record).unwrap_or_else(|| describe_generic(record)),
        Some(RecordType::Mount) => describe_mount(record),
        Some(RecordType::Device) => describe_device(record),
        // A subtype from a newer daemon may carry attributes these forms leave out.
        Some(RecordType::Key) if names::subtype(h.record_type, h.subtype).is_some() => {
            describe_key(record)
        }
        Some(RecordType::Krb5) if names::subtype(h.record_type, h.subtype).is_some() => {
            describe_krb5(record)
        }
        Some(RecordType::File) if names::subtype(h.record_type, h.subtype).is_some() => {
            describe_file(record)
        }
        Some(RecordType::Superblock) if h.subtype == superblock::ERROR => describe_fs_error(record),
        Some(RecordType::Superblock) if h.subtype == superblock::QUOTA => describe_quota(record),
        Some(RecordType::Superblock)
            if (superblock::QUOTA_LOW..=superblock::QUOTA_RECOVERED).contains(&h.subtype) =>
        {
            describe_quota_room(record)
        }
        Some(RecordType::Superblock) if record.get(attr::RESOURCE).is_some() => {
            describe_space(record)
        }
        _ => describe_generic(record),
    };
    line.push_str(body.trim_end());
    if h.flags & FLAG_TRUNCATED != 0 {
        // What a device record leaves out is always properties.
        let (one, many) = match h.record_type() {
            Some(RecordType::Device) => ("property", "properties"),
            _ => ("attribute", "attributes"),
        };
        match record.get_u32(attr::TRUNCATED) {
            Some(n) => {
                let _ = write!(line, "  [{} left out]", plural(n.into(), one, many));
            }
            None => line.push_str("  [truncated]"),
        }
    }
    line
}

/// What `keyctl watch` (keyutils, keyctl_watch.c) prints when its pipe ends.
pub const KEYCTL_END: &str = "-- END --";

/// The line `keyctl watch` prints for the same notification (no newline), or none for a
/// record it has no line for (SYNC, SOURCE_CHANGED, anything not about keys). keyutils
/// prints, with `%u` the key's serial (`key_id`) and `aux` the other key:
///
/// | notification | line |
/// |---|---|
/// | instantiated | `%u inst` |
/// | updated | `%u upd` |
/// | linked | `%u link %u` (keyring, key linked) |
/// | unlinked | `%u unlk %u` (keyring, key unlinked) |
/// | cleared | `%u clr` |
/// | revoked | `%u rev` |
/// | invalidated | `%u inv` |
/// | setattr | `%u attr` |
/// | removal (the watched key is gone) | `%u gc` |
/// | loss | `-- LOSS --` |
pub fn keyctl_line(record: &Record<'_>) -> Option<String> {
    let h = &record.header;
    let key_id = record.get_u32(attr::KEY_ID);
    match h.record_type() {
        Some(RecordType::Key) => {
            let id = key_id?;
            // keyutils prints the aux field as is: 0 when the kernel gave none.
            let aux = record.get_u32(attr::AUX).unwrap_or(0);
            Some(match h.subtype {
                key::INSTANTIATED => format!("{id} inst"),
                key::UPDATED => format!("{id} upd"),
                key::LINKED => format!("{id} link {aux}"),
                key::UNLINKED => format!("{id} unlk {aux}"),
                key::CLEARED => format!("{id} clr"),
                key::REVOKED => format!("{id} rev"),
                key::INVALIDATED => format!("{id} inv"),
                key::SETATTR => format!("{id} attr"),
                _ => return None,
            })
        }
        Some(RecordType::Meta) => match h.subtype {
            // keyutils prints the removal's id, 0 when the notification carries none.
            meta::REMOVAL if h.tag != 0 => Some(format!(
                "{} gc",
                key_id
                    .or_else(|| record.get_u32(attr::WATCHED_KEY))
                    .unwrap_or(0)
            )),
            meta::LOSS => Some("-- LOSS --".to_owned()),
            _ => None,
        },
        _ => None,
    }
}

/// The status as aligned `name: value` lines, each ending in a newline.
pub fn status_human(status: &Status) -> String {
    let sources = if status.sources.is_empty() {
        "none".to_owned()
    } else {
        status.sources.join(", ")
    };
    let mut text = format!(
        "version:       {}\nsources:       {sources}\nsubscriptions: {}\nwatches:       {}\nauthorization: {}\n",
        status.version, status.subscriptions, status.watches, status.authorization
    );
    for (kind, detail) in &status.source_details {
        text.push_str(&format!("  {kind}: {detail}\n"));
    }
    text
}

/// `watchctl list`: the kinds with how each gets its events, then the caller's
/// subscriptions, one line each with its watches as `TAG:KIND`; each line ends in a newline.
pub fn list_human(status: &Status, subscriptions: &[SubscriptionInfo]) -> String {
    let mut text = String::from("kinds:\n");
    let width = status.sources.iter().map(String::len).max().unwrap_or(0);
    for kind in &status.sources {
        let detail = status.source_details.get(kind).map_or("", String::as_str);
        let _ = writeln!(text, "  {kind:<width$}  {detail}");
    }
    if status.sources.is_empty() {
        text.push_str("  none\n");
    }
    text.push_str("your subscriptions:\n");
    for sub in subscriptions {
        let watches = if sub.watches.is_empty() {
            "no watches".to_owned()
        } else {
            sub.watches
                .iter()
                .map(|w| format!("{}:{}", w.tag, w.kind))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let _ = writeln!(text, "  {}  depth={}  {watches}", sub.path, sub.depth);
    }
    if subscriptions.is_empty() {
        text.push_str("  none\n");
    }
    text
}

/// `watchctl list --json`: `{"kinds":[{"kind":K,"backend":B},…],"subscriptions":[{"path":P,
/// "depth":N,"watches":[{"tag":T,"kind":K},…]},…]}` (no newline).
pub fn list_json(status: &Status, subscriptions: &[SubscriptionInfo]) -> String {
    let kinds: Vec<Value> = status
        .sources
        .iter()
        .map(|kind| {
            let detail = status.source_details.get(kind).map(String::as_str);
            serde_json::json!({ "kind": kind, "backend": detail })
        })
        .collect();
    let subscriptions: Vec<Value> = subscriptions
        .iter()
        .map(|sub| {
            let watches: Vec<Value> = sub
                .watches
                .iter()
                .map(|w| serde_json::json!({ "tag": w.tag, "kind": w.kind }))
                .collect();
            serde_json::json!({ "path": sub.path, "depth": sub.depth, "watches": watches })
        })
        .collect();
    let mut object = Object::default();
    object.push("kinds", Value::from(kinds));
    object.push("subscriptions", Value::from(subscriptions));
    object.to_json()
}

/// The status as one line of JSON (no newline).
pub fn status_json(status: &Status) -> String {
    let mut object = Object::default();
    object.push("version", Value::from(status.version.as_str()));
    object.push("sources", Value::from(status.sources.clone()));
    object.push("subscriptions", Value::from(status.subscriptions));
    object.push("watches", Value::from(status.watches));
    object.push("authorization", Value::from(status.authorization.as_str()));
    let details: serde_json::Map<String, Value> = status
        .source_details
        .iter()
        .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
        .collect();
    object.push("source_details", Value::Object(details));
    object.to_json()
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
    fn records_of_a_watchs_source_loss_and_source_change() {
        let mut b = RecordBuilder::new(RecordType::Meta, meta::LOSS, 0, T);
        b.put_u64(attr::LOST_TYPES, RecordType::Device.bit())
            .unwrap();
        b.put_str(attr::REASON, "the socket overflowed").unwrap();
        let bytes = build(b, 5, 12);
        assert_eq!(
            human_line(&parse(&bytes), 0),
            "22:13:20.123  events lost at their source (tag 5) (types: device): the socket overflowed"
        );

        let mut b = RecordBuilder::new(RecordType::Meta, meta::SOURCE_CHANGED, 0, T);
        b.put_str(attr::BACKEND, "kernel").unwrap();
        b.put_str(attr::REASON, "udevd stopped").unwrap();
        let bytes = build(b, 5, 13);
        let record = parse(&bytes);
        assert_eq!(
            human_line(&record, 0),
            "22:13:20.123  source changed (tag 5): now kernel (udevd stopped)"
        );
        assert_eq!(
            json_line(&record),
            r#"{"type":"meta","event":"source_changed","tag":5,"seq":13,"time_ns":1700000000123456789,"snapshot":false,"backend":"kernel","reason":"udevd stopped"}"#
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
    fn quota_warnings_read_as_a_line_and_as_json() {
        let mut b = RecordBuilder::new(RecordType::Superblock, superblock::QUOTA, 0, T);
        b.put_u32(attr::QUOTA_TYPE, quota::USER).unwrap();
        b.put_u64(attr::QUOTA_ID, 1000).unwrap();
        b.put_u32(attr::QUOTA_WARNING, 6).unwrap();
        b.put_str(attr::QUOTA_WARNING_NAME, "block_soft_exceeded")
            .unwrap();
        b.put_u32(attr::MAJOR, 7).unwrap();
        b.put_u32(attr::MINOR, 0).unwrap();
        b.put_u64(attr::QUOTA_CAUSED_BY, 1000).unwrap();
        b.put_str(attr::MOUNTED_ON, "/mnt/quota").unwrap();
        b.put_str(attr::MOUNTED_ON, "/srv/a b").unwrap();
        let bytes = build(b, 1, 1);
        let record = parse(&bytes);
        assert_eq!(
            human_line(&record, 0),
            r#"22:13:20.123  quota block_soft_exceeded  user 1000  dev 7:0  on /mnt/quota,"/srv/a b"  by uid 1000"#
        );
        let json: serde_json::Value = serde_json::from_str(&json_line(&record)).unwrap();
        assert_eq!(json["type"], "superblock");
        assert_eq!(json["event"], "quota");
        assert_eq!(json["quota_type"], 0);
        assert_eq!(json["quota_id"], 1000);
        assert_eq!(json["quota_warning"], 6);
        assert_eq!(json["quota_warning_name"], "block_soft_exceeded");
        assert_eq!(json["quota_caused_by"], 1000);

        // A group's, from a daemon that sent no name and no mount point.
        let mut b = RecordBuilder::new(RecordType::Superblock, superblock::QUOTA, 0, T);
        b.put_u32(attr::QUOTA_TYPE, quota::GROUP).unwrap();
        b.put_u64(attr::QUOTA_ID, 3000).unwrap();
        b.put_u32(attr::QUOTA_WARNING, 9).unwrap();
        let bytes = build(b, 1, 2);
        assert_eq!(
            human_line(&parse(&bytes), 0),
            "22:13:20.123  quota block_hard_below     group 3000"
        );
    }

    #[test]
    fn truncated_records_say_so() {
        let mut b = RecordBuilder::new(RecordType::Superblock, superblock::NETWORK, 0, T);
        b.put_u32(attr::TRUNCATED, 3).unwrap();
        b.set_flags(FLAG_TRUNCATED);
        let bytes = build(b, 1, 1);
        let record = parse(&bytes);
        assert_eq!(
            human_line(&record, 0),
            "22:13:20.123  superblock network  [3 attributes left out]"
        );
        assert!(json_line(&record).ends_with(r#","truncated":3}"#));

        // The flag without the count still says something was left out.
        let mut b = RecordBuilder::new(RecordType::Superblock, superblock::NETWORK, 0, T);
        b.set_flags(FLAG_TRUNCATED);
        let bytes = build(b, 1, 2);
        assert_eq!(
            human_line(&parse(&bytes), 0),
            "22:13:20.123  superblock network  [truncated]"
        );
    }

    /// A device record laid out as the daemon does: the fixed attributes, then one
    /// `property` attribute per property.
    struct Device {
        subtype: u8,
        flags: u8,
        subsystem: &'static str,
        devtype: Option<&'static str>,
        sysname: &'static str,
        syspath: &'static str,
        seqnum: u64,
        source: &'static str,
        devnode: Option<&'static str>,
        driver: Option<&'static str>,
        old_syspath: Option<&'static str>,
        devnum: Option<(u32, u32)>,
        tags: Option<&'static str>,
        properties: Vec<String>,
        truncated: Option<u32>,
    }

    impl Device {
        fn loop7(subtype: u8) -> Device {
            Device {
                subtype,
                flags: 0,
                subsystem: "block",
                devtype: Some("disk"),
                sysname: "loop7",
                syspath: "/sys/devices/virtual/block/loop7",
                seqnum: 4321,
                source: "udev",
                devnode: Some("/dev/loop7"),
                driver: None,
                old_syspath: None,
                devnum: Some((7, 7)),
                tags: Some("systemd"),
                properties: vec!["DISKSEQ=12".into(), "ID_FS_TYPE=ext4".into()],
                truncated: None,
            }
        }

        fn build(&self, seq: u64) -> Vec<u8> {
            let mut b = RecordBuilder::new(RecordType::Device, self.subtype, self.flags, T);
            let action = names::subtype(RecordType::Device as u32, self.subtype).unwrap();
            b.put_str(attr::ACTION, action).unwrap();
            b.put_str(attr::SUBSYSTEM, self.subsystem).unwrap();
            b.put_str(attr::SYSNAME, self.sysname).unwrap();
            b.put_str(attr::SYSPATH, self.syspath).unwrap();
            b.put_u64(attr::SEQNUM, self.seqnum).unwrap();
            b.put_str(attr::EVENT_SOURCE, self.source).unwrap();
            for (id, value) in [
                (attr::DEVTYPE, self.devtype),
                (attr::DEVNODE, self.devnode),
                (attr::DRIVER, self.driver),
                (attr::OLD_SYSPATH, self.old_syspath),
            ] {
                if let Some(value) = value {
                    b.put_str(id, value).unwrap();
                }
            }
            if let Some((major, minor)) = self.devnum {
                b.put_u32(attr::MAJOR, major).unwrap();
                b.put_u32(attr::MINOR, minor).unwrap();
            }
            if let Some(tags) = self.tags {
                b.put_str(attr::TAGS, tags).unwrap();
            }
            for p in &self.properties {
                b.put_str(attr::PROPERTY, p).unwrap();
            }
            if let Some(n) = self.truncated {
                b.set_flags(FLAG_TRUNCATED);
                b.put_u32(attr::TRUNCATED, n).unwrap();
            }
            build(b, 3, seq)
        }
    }

    #[test]
    fn device_add_and_remove_human() {
        use watchd_proto::device;
        let bytes = Device::loop7(device::ADD).build(1);
        assert_eq!(
            human_line(&parse(&bytes), 0),
            "22:13:20.123  device add      block/disk  loop7  /dev/loop7  seq=4321"
        );

        // A USB interface: no device type given, no node, a driver.
        let usb = Device {
            subsystem: "usb",
            devtype: None,
            sysname: "1-1:1.0",
            syspath: "/sys/devices/pci0000:00/0000:00:14.0/usb1/1-1/1-1:1.0",
            seqnum: 4400,
            devnode: None,
            driver: Some("usb-storage"),
            devnum: None,
            tags: None,
            properties: vec!["INTERFACE=8/6/80".into()],
            ..Device::loop7(device::REMOVE)
        };
        let bytes = usb.build(2);
        assert_eq!(
            human_line(&parse(&bytes), 0),
            "22:13:20.123  device remove   usb  1-1:1.0  driver=usb-storage  seq=4400"
        );
        let bytes = Device {
            subtype: device::BIND,
            devtype: Some("usb_interface"),
            ..usb
        }
        .build(3);
        assert_eq!(
            human_line(&parse(&bytes), 0),
            "22:13:20.123  device bind     usb/usb_interface  1-1:1.0  driver=usb-storage  seq=4400"
        );
    }

    #[test]
    fn device_change_and_move_human() {
        use watchd_proto::device;
        let bytes = Device::loop7(device::CHANGE).build(1);
        assert_eq!(
            human_line(&parse(&bytes), 0),
            "22:13:20.123  device change   block/disk  loop7  /dev/loop7  seq=4321"
        );

        // A network interface renamed by udev.
        let bytes = Device {
            subtype: device::MOVE,
            subsystem: "net",
            devtype: None,
            sysname: "enp0s3",
            syspath: "/sys/devices/pci0000:00/0000:00:03.0/net/enp0s3",
            seqnum: 2210,
            devnode: None,
            driver: None,
            old_syspath: Some("/sys/devices/pci0000:00/0000:00:03.0/net/eth0"),
            devnum: None,
            tags: None,
            properties: vec!["INTERFACE=enp0s3".into(), "IFINDEX=2".into()],
            ..Device::loop7(device::MOVE)
        }
        .build(2);
        assert_eq!(
            human_line(&parse(&bytes), 0),
            "22:13:20.123  device move     net  enp0s3  from=/sys/devices/pci0000:00/0000:00:03.0/net/eth0  seq=2210"
        );
    }

    #[test]
    fn device_snapshot_and_kernel_source_human() {
        use watchd_proto::device;
        // A device of the initial state: its seqnum is 0, which is not shown.
        let bytes = Device {
            flags: FLAG_SNAPSHOT,
            seqnum: 0,
            ..Device::loop7(device::ADD)
        }
        .build(1);
        assert_eq!(
            human_line(&parse(&bytes), 0),
            "22:13:20.123  [snapshot] device add      block/disk  loop7  /dev/loop7"
        );
        // Raw kernel events (no udevd) say so; odd names are quoted.
        let bytes = Device {
            source: "kernel",
            sysname: "odd name",
            devnode: Some("/dev/odd name"),
            tags: None,
            ..Device::loop7(device::OFFLINE)
        }
        .build(2);
        assert_eq!(
            human_line(&parse(&bytes), 0),
            r#"22:13:20.123  device offline  block/disk  "odd name"  "/dev/odd name"  event_source=kernel  seq=4321"#
        );
        // Whatever is missing shows as `?`, never as a shifted column.
        let bytes = build(
            RecordBuilder::new(RecordType::Device, device::UNBIND, 0, T),
            3,
            3,
        );
        assert_eq!(
            human_line(&parse(&bytes), 0),
            "22:13:20.123  device unbind   ?  ?"
        );
    }

    #[test]
    fn truncated_device_record_counts_properties() {
        use watchd_proto::device;
        let bytes = Device {
            truncated: Some(12),
            ..Device::loop7(device::CHANGE)
        }
        .build(1);
        let record = parse(&bytes);
        assert_eq!(
            human_line(&record, 0),
            "22:13:20.123  device change   block/disk  loop7  /dev/loop7  seq=4321  [12 properties left out]"
        );
        assert!(
            json_line(&record)
                .ends_with(r#","properties":{"DISKSEQ":"12","ID_FS_TYPE":"ext4"},"truncated":12}"#),
            "{}",
            json_line(&record)
        );
        let bytes = Device {
            truncated: Some(1),
            ..Device::loop7(device::CHANGE)
        }
        .build(2);
        assert!(human_line(&parse(&bytes), 0).ends_with("  [1 property left out]"));
    }

    #[test]
    fn device_json() {
        use watchd_proto::device;
        let bytes = Device::loop7(device::ADD).build(7);
        let line = json_line(&parse(&bytes));
        assert_eq!(
            line,
            r#"{"type":"device","event":"add","tag":3,"seq":7,"time_ns":1700000000123456789,"snapshot":false,"action":"add","subsystem":"block","sysname":"loop7","syspath":"/sys/devices/virtual/block/loop7","seqnum":4321,"event_source":"udev","devtype":"disk","devnode":"/dev/loop7","major":7,"minor":7,"tags":"systemd","properties":{"DISKSEQ":"12","ID_FS_TYPE":"ext4"}}"#
        );
        // It is JSON, and the properties object is what jq would index.
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["properties"]["ID_FS_TYPE"], "ext4");
        assert!(v.get("property").is_none());

        // Values keep everything after the first '=', empty values stay empty strings, the
        // order is the record's, a key given twice collects its values in an array, and an
        // entry without '=' has the value null.
        let bytes = Device {
            old_syspath: Some("/sys/devices/virtual/block/loop6"),
            properties: vec![
                "Z_LAST_IN_ALPHABET=1".into(),
                "DM_UUID=CRYPT-LUKS2-abc=def".into(),
                "ID_FS_LABEL=".into(),
                "DUP=a".into(),
                "NOEQUALS".into(),
                "DUP=b".into(),
                "A \"quoted\" key=tab\\there".into(),
            ],
            ..Device::loop7(device::MOVE)
        }
        .build(8);
        let line = json_line(&parse(&bytes));
        assert!(
            line.ends_with(
                r#""old_syspath":"/sys/devices/virtual/block/loop6","major":7,"minor":7,"tags":"systemd","properties":{"Z_LAST_IN_ALPHABET":"1","DM_UUID":"CRYPT-LUKS2-abc=def","ID_FS_LABEL":"","DUP":["a","b"],"NOEQUALS":null,"A \"quoted\" key":"tab\\there"}}"#
            ),
            "{line}"
        );
        serde_json::from_str::<Value>(&line).unwrap();

        // No properties at all: no `properties` member.
        let bytes = Device {
            properties: Vec::new(),
            ..Device::loop7(device::REMOVE)
        }
        .build(9);
        assert!(json_line(&parse(&bytes)).ends_with(r#","tags":"systemd"}"#));
    }

    /// The `properties` object sits where the first `property` attribute was, and other
    /// attributes, known or not, keep the generic form around it.
    #[test]
    fn properties_object_keeps_the_record_order() {
        use watchd_proto::device;
        let mut b = RecordBuilder::new(RecordType::Device, device::CHANGE, 0, T);
        b.put_str(attr::SUBSYSTEM, "block").unwrap();
        b.put_str(attr::PROPERTY, "A=1").unwrap();
        b.put(0x0f00, &[0xab]).unwrap();
        b.put_str(attr::PROPERTY, "B=2").unwrap();
        b.put(0x0f00, &[0xcd]).unwrap();
        b.put_u64(attr::SEQNUM, 5).unwrap();
        let bytes = build(b, 1, 1);
        assert!(json_line(&parse(&bytes)).ends_with(
            r#""subsystem":"block","properties":{"A":"1","B":"2"},"attr_0x0f00":["ab","cd"],"seqnum":5}"#
        ));
        // No attribute or header field is called `properties`, so nothing can collide.
        assert!((0..=u16::MAX).all(|id| names::attribute(id) != Some(PROPERTIES)));
    }

    /// A key record laid out as the daemon does: every attribute but `aux` always (in the
    /// daemon's order), `aux` for linked and unlinked.
    struct Key {
        subtype: u8,
        flags: u8,
        key_id: u32,
        aux: Option<u32>,
        key_type: &'static str,
        description: &'static str,
        uid: u32,
        gid: u32,
        perm: u32,
        watched: u32,
    }

    impl Key {
        /// The `_krb` keyring of uid 1000's persistent keyring gaining a cache keyring.
        fn krb_linked() -> Key {
            Key {
                subtype: watchd_proto::key::LINKED,
                flags: 0,
                key_id: 123_456,
                aux: Some(654_321),
                key_type: "keyring",
                description: "_krb",
                uid: 1000,
                gid: 1000,
                perm: 0x3f01_0000,
                watched: 123_456,
            }
        }

        fn build(&self, seq: u64) -> Vec<u8> {
            let mut b = RecordBuilder::new(RecordType::Key, self.subtype, self.flags, T);
            b.put_u32(attr::KEY_ID, self.key_id).unwrap();
            if let Some(aux) = self.aux {
                b.put_u32(attr::AUX, aux).unwrap();
            }
            b.put_u32(attr::WATCHED_KEY, self.watched).unwrap();
            b.put_u32(attr::KEY_UID, self.uid).unwrap();
            b.put_u32(attr::KEY_GID, self.gid).unwrap();
            b.put_u32(attr::PERM, self.perm).unwrap();
            b.put_str(attr::KEY_TYPE, self.key_type).unwrap();
            b.put_str(attr::DESCRIPTION, self.description).unwrap();
            build(b, 1, seq)
        }
    }

    #[test]
    fn key_records_human() {
        use watchd_proto::key;
        let bytes = Key::krb_linked().build(5);
        assert_eq!(
            human_line(&parse(&bytes), 0),
            "22:13:20.123  key linked        key=123456  aux=654321  type=keyring  desc=_krb  perm=0x3f010000  uid=1000  gid=1000"
        );

        // The initial state: a key found under the watched keyring says which (`watched`),
        // and the permissions keep all eight hex digits.
        let bytes = Key {
            subtype: key::INSTANTIATED,
            flags: FLAG_SNAPSHOT,
            key_id: 777,
            aux: None,
            key_type: "user",
            description: "krb_ccache:primary",
            perm: 0x0001_0000,
            ..Key::krb_linked()
        }
        .build(6);
        assert_eq!(
            human_line(&parse(&bytes), 0),
            "22:13:20.123  [snapshot] key instantiated  key=777  type=user  desc=krb_ccache:primary  perm=0x00010000  uid=1000  gid=1000  watched=123456"
        );

        // A keyring emptied has no `aux`; an odd description is quoted.
        let bytes = Key {
            subtype: key::CLEARED,
            aux: None,
            description: "my keys",
            ..Key::krb_linked()
        }
        .build(7);
        assert_eq!(
            human_line(&parse(&bytes), 0),
            r#"22:13:20.123  key cleared       key=123456  type=keyring  desc="my keys"  perm=0x3f010000  uid=1000  gid=1000"#
        );

        // Every subtype this version knows has the key form; `setattr` fits the column too.
        for subtype in 0..=key::SETATTR {
            let bytes = Key {
                subtype,
                ..Key::krb_linked()
            }
            .build(8);
            let line = human_line(&parse(&bytes), 0);
            let name = names::subtype(RecordType::Key as u32, subtype).unwrap();
            assert!(
                line.starts_with(&format!("22:13:20.123  key {name:<12}  key=123456  ")),
                "{line}"
            );
        }
    }

    #[test]
    fn space_records_human_and_json() {
        let record = |subtype, resource: &str| {
            let mut b = RecordBuilder::new(RecordType::Superblock, subtype, 0, T);
            b.put(attr::RESOURCE, resource.as_bytes()).unwrap();
            b.put_u64(attr::AVAIL_BYTES, 12 << 20).unwrap();
            b.put_u64(attr::TOTAL_BYTES, 48 << 20).unwrap();
            b.put_u64(attr::FREE_INODES, 10).unwrap();
            b.put_u64(attr::TOTAL_INODES, 1000).unwrap();
            b.put_u64(attr::THRESHOLD, 24 << 20).unwrap();
            b.put_u32(attr::MAJOR, 7).unwrap();
            b.put_u32(attr::MINOR, 3).unwrap();
            b.put(attr::FS_TYPE, b"ext4").unwrap();
            b.put(attr::MOUNTED_ON, b"/mnt/a").unwrap();
            b.put(attr::MOUNTED_ON, b"/srv/a").unwrap();
            build(b, 1, 1)
        };
        let bytes = record(superblock::SPACE_LOW, "space");
        assert_eq!(
            human_line(&parse(&bytes), 0),
            "22:13:20.123  space low          /mnt/a,/srv/a  avail 12.0 MiB of 48.0 MiB (25.0 %)  line 24.0 MiB  ext4 7:3"
        );
        let json = json_line(&parse(&bytes));
        for part in [
            r#""event":"low""#,
            r#""resource":"space""#,
            r#""avail_bytes":12582912"#,
            r#""mounted_on":["/mnt/a","/srv/a"]"#,
        ] {
            assert!(json.contains(part), "{part} in {json}");
        }
        let bytes = record(superblock::SPACE_STILL_LOWER, "inodes");
        assert!(
            human_line(&parse(&bytes), 0)
                .starts_with("22:13:20.123  inodes still_lower  /mnt/a,/srv/a  free 10 of 1000 (1.0 %)  line 25165824"),
            "{}",
            human_line(&parse(&bytes), 0)
        );
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(3 << 30), "3.0 GiB");
    }

    /// A quota threshold record of `(quota_type, id)` on an ext4 filesystem `(major, minor,
    /// mounted_on)`, with the u64 attributes `numbers`.
    fn quota_record(
        (subtype, flags): (u8, u8),
        (quota_type, id): (u32, u64),
        resource: &str,
        numbers: &[(u16, u64)],
        (major, minor, point): (u32, u32, &str),
    ) -> Vec<u8> {
        let mut b = RecordBuilder::new(RecordType::Superblock, subtype, flags, T);
        b.put_u32(attr::QUOTA_TYPE, quota_type).unwrap();
        b.put_u64(attr::QUOTA_ID, id).unwrap();
        b.put_str(attr::RESOURCE, resource).unwrap();
        for &(id, n) in numbers {
            b.put_u64(id, n).unwrap();
        }
        b.put_u32(attr::MAJOR, major).unwrap();
        b.put_u32(attr::MINOR, minor).unwrap();
        b.put_str(attr::FS_TYPE, "ext4").unwrap();
        b.put_str(attr::MOUNTED_ON, point).unwrap();
        build(b, 1, 1)
    }

    #[test]
    fn quota_threshold_records_human_and_json() {
        let now = T / 1_000_000_000;
        let record = |subtype, flags, quota_type, id, resource: &str, numbers: &[(u16, u64)]| {
            quota_record(
                (subtype, flags),
                (quota_type, id),
                resource,
                numbers,
                (7, 0, "/mnt/quota"),
            )
        };
        let low = record(
            superblock::QUOTA_LOW,
            0,
            quota::USER,
            1000,
            "space",
            &[
                (attr::QUOTA_USED, 850 << 10),
                (attr::QUOTA_SOFT_LIMIT, 0),
                (attr::QUOTA_HARD_LIMIT, 1 << 20),
                (attr::QUOTA_ROOM, 174 << 10),
                (attr::THRESHOLD, 209_715),
                (attr::MARGIN, 10_485),
            ],
        );
        assert_eq!(
            human_line(&parse(&low), 0),
            "22:13:20.123  quota_low          user 1000 space on /mnt/quota: 174.0 KiB left before EDQUOT (used 850.0 KiB of hard 1.0 MiB), below 204.8 KiB  ext4 7:0"
        );
        let json: serde_json::Value = serde_json::from_str(&json_line(&parse(&low))).unwrap();
        assert_eq!(json["type"], "superblock");
        assert_eq!(json["event"], "quota_low");
        assert_eq!(json["quota_type"], 0);
        assert_eq!(json["quota_id"], 1000);
        assert_eq!(json["resource"], "space");
        assert_eq!(json["quota_used"], 850 << 10);
        assert_eq!(json["quota_soft_limit"], 0);
        assert_eq!(json["quota_hard_limit"], 1 << 20);
        assert_eq!(json["quota_room"], 174 << 10);
        assert_eq!(json["threshold"], 209_715);
        assert_eq!(json["margin"], 10_485);
        assert_eq!(json["mounted_on"], serde_json::json!(["/mnt/quota"]));

        // A group's inodes, over the soft limit: its grace time is shown as what is left.
        let numbers = |grace_ends| {
            [
                (attr::QUOTA_USED, 110),
                (attr::QUOTA_SOFT_LIMIT, 100),
                (attr::QUOTA_HARD_LIMIT, 120),
                (attr::QUOTA_ROOM, 10),
                (attr::QUOTA_GRACE_ENDS, grace_ends),
                (attr::THRESHOLD, 12),
            ]
        };
        let grace = now + 6 * 86_400 + 23 * 3600 + 5 * 60;
        let lower = record(
            superblock::QUOTA_STILL_LOWER,
            FLAG_SNAPSHOT,
            quota::GROUP,
            3000,
            "inodes",
            &numbers(grace),
        );
        assert_eq!(
            human_line(&parse(&lower), 0),
            "22:13:20.123  [snapshot] quota_still_lower  group 3000 inodes on /mnt/quota: 10 inodes left before EDQUOT (used 110 of soft 100, hard 120; grace ends in 6d 23h), below 12  ext4 7:0"
        );
        let json: serde_json::Value = serde_json::from_str(&json_line(&parse(&lower))).unwrap();
        assert_eq!(json["event"], "quota_still_lower");
        assert_eq!(json["snapshot"], true);
        assert_eq!(json["quota_grace_ends"], grace);
        let over = record(
            superblock::QUOTA_STILL_LOWER,
            0,
            quota::GROUP,
            3000,
            "inodes",
            &numbers(now),
        );
        assert!(
            human_line(&parse(&over), 0).contains("hard 120; grace over), below 12"),
            "{}",
            human_line(&parse(&over), 0)
        );

        // Recovered: back above the line, or the limit gone.
        let recovered = |numbers: &[(u16, u64)]| {
            let bytes = record(
                superblock::QUOTA_RECOVERED,
                0,
                quota::USER,
                1000,
                "space",
                numbers,
            );
            human_line(&parse(&bytes), 0)
        };
        assert_eq!(
            recovered(&[
                (attr::QUOTA_USED, 512 << 10),
                (attr::QUOTA_SOFT_LIMIT, 1 << 20),
                (attr::QUOTA_HARD_LIMIT, 0),
                (attr::QUOTA_ROOM, 512 << 10),
                (attr::THRESHOLD, 209_715),
            ]),
            "22:13:20.123  quota_recovered    user 1000 space on /mnt/quota: 512.0 KiB left before EDQUOT (used 512.0 KiB of soft 1.0 MiB), back above 204.8 KiB  ext4 7:0"
        );
        assert_eq!(
            recovered(&[
                (attr::QUOTA_USED, 512 << 10),
                (attr::QUOTA_SOFT_LIMIT, 0),
                (attr::QUOTA_HARD_LIMIT, 0),
                (attr::QUOTA_ROOM, 0),
                (attr::THRESHOLD, 209_715),
            ]),
            "22:13:20.123  quota_recovered    user 1000 space on /mnt/quota: no limit (used 512.0 KiB)  ext4 7:0"
        );

        // The lines docs/watchctl.md shows (after their time) are what this prints.
        let manual = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/watchctl.md"),
        )
        .unwrap();
        let in_home = |subtype, flags, quota_type, id, resource: &str, numbers: &[(u16, u64)]| {
            let bytes = quota_record(
                (subtype, flags),
                (quota_type, id),
                resource,
                numbers,
                (8, 17, "/home"),
            );
            let line = human_line(&parse(&bytes), 0);
            line.split_once("  ").unwrap().1.to_owned()
        };
        let mib = |n: f64| (n * (1u64 << 20) as f64) as u64;
        let space = |used: f64| {
            [
                (attr::QUOTA_USED, mib(used)),
                (attr::QUOTA_SOFT_LIMIT, 0),
                (attr::QUOTA_HARD_LIMIT, 10 << 30),
                (attr::QUOTA_ROOM, (10 << 30) - mib(used)),
                (attr::THRESHOLD, 1 << 30),
            ]
        };
        let lines = [
            in_home(
                superblock::QUOTA_LOW,
                FLAG_SNAPSHOT,
                quota::GROUP,
                3000,
                "inodes",
                &[
                    (attr::QUOTA_USED, 9850),
                    (attr::QUOTA_SOFT_LIMIT, 9000),
                    (attr::QUOTA_HARD_LIMIT, 10_000),
                    (attr::QUOTA_ROOM, 150),
                    (attr::QUOTA_GRACE_ENDS, now + 7 * 86_400 - 60),
                    (attr::THRESHOLD, 1000),
                ],
            ),
            in_home(
                superblock::QUOTA_LOW,
                0,
                quota::USER,
                1000,
                "space",
                &space(10240.0 - 921.6),
            ),
            in_home(
                superblock::QUOTA_STILL_LOWER,
                0,
                quota::USER,
                1000,
                "space",
                &space(9440.0),
            ),
            in_home(
                superblock::QUOTA_RECOVERED,
                0,
                quota::USER,
                1000,
                "space",
                &space(7168.0),
            ),
        ];
        for line in lines {
            assert!(
                manual.lines().any(|l| l.ends_with(&format!("  {line}"))),
                "docs/watchctl.md should show\n{line}"
            );
        }

        assert_eq!(duration(42), "42s");
        assert_eq!(duration(3600), "1h");
        assert_eq!(duration(3 * 3600 + 5 * 60 + 9), "3h 5m");
        assert_eq!(duration(86_400 + 59), "1d");
    }

    #[test]
    fn file_records_human_and_json() {
        use watchd_proto::file;
        let record = |subtype, name: &str, old: Option<&str>, dir: bool| {
            let mut b = RecordBuilder::new(RecordType::File, subtype, 0, T);
            b.put(attr::NAME, name.as_bytes()).unwrap();
            if let Some(old) = old {
                b.put(attr::OLD_NAME, old.as_bytes()).unwrap();
            }
            b.put_u32(attr::MAJOR, 0).unwrap();
            b.put(attr::HANDLE, b"01ab").unwrap();
            if dir {
                b.put_u32(attr::IS_DIR, 1).unwrap();
            }
            let mut bytes = b.finish();
            stamp(&mut bytes, 2, 7);
            bytes
        };
        let line = |bytes: &[u8]| human_line(&parse(bytes), 0);
        assert_eq!(
            line(&record(file::CREATE, "sub/a b.txt", None, false)),
            "22:13:20.123  file create       \"sub/a b.txt\""
        );
        assert_eq!(
            line(&record(file::RENAME, "new", Some("old"), true)),
            "22:13:20.123  file rename       new  from old  [dir]"
        );
        assert_eq!(
            line(&record(file::ATTRIB, "", None, false)),
            "22:13:20.123  file attrib       ."
        );
        assert_eq!(
            json_line(&parse(&record(file::CLOSE_WRITE, "a", None, false))),
            r#"{"type":"file","event":"close_write","tag":2,"seq":7,"time_ns":1700000000123456789,"snapshot":false,"name":"a","major":0,"handle":"01ab"}"#
        );
    }

    #[test]
    fn filesystem_error_records_human_and_json() {
        let record = |points: &[&str], snapshot: bool| {
            let flags = if snapshot { FLAG_SNAPSHOT } else { 0 };
            let mut b = RecordBuilder::new(RecordType::Superblock, superblock::ERROR, flags, T);
            b.put_u32(attr::MAJOR, 7).unwrap();
            b.put_u32(attr::MINOR, 3).unwrap();
            b.put_str(attr::FS_TYPE, "ext4").unwrap();
            b.put_u32(attr::ERRNO, 117).unwrap();
            b.put_str(attr::ERRNO_NAME, "EUCLEAN").unwrap();
            b.put_u32(attr::ERROR_COUNT, 3).unwrap();
            b.put_u32(attr::ERRORS_TOTAL, 5).unwrap();
            b.put_str(attr::LAST_ERROR_AT, "trigger_test_error:129")
                .unwrap();
            for p in points {
                b.put_str(attr::MOUNTED_ON, p).unwrap();
            }
            let mut bytes = b.finish();
            stamp(&mut bytes, 1, 4);
            bytes
        };
        assert_eq!(
            human_line(&parse(&record(&["/mnt/a", "/srv"], false)), 0),
            "22:13:20.123  fs error  EUCLEAN (117)  7:3 ext4 on /mnt/a, /srv  count=3  total=5  last=trigger_test_error:129"
        );
        assert_eq!(
            human_line(&parse(&record(&[], true)), 0),
            "22:13:20.123  [snapshot] fs error  EUCLEAN (117)  7:3 ext4  count=3  total=5  last=trigger_test_error:129"
        );
        let json = json_line(&parse(&record(&["/mnt/a"], false)));
        assert_eq!(
            json,
            r#"{"type":"superblock","event":"error","tag":1,"seq":4,"time_ns":1700000000123456789,"snapshot":false,"major":7,"minor":3,"fs_type":"ext4","errno":117,"errno_name":"EUCLEAN","error_count":3,"errors_total":5,"last_error_at":"trigger_test_error:129","mounted_on":["/mnt/a"]}"#
        );
        let v: Value =
            serde_json::from_str(&json_line(&parse(&record(&["/a", "/b"], false)))).unwrap();
        assert_eq!(v["mounted_on"], serde_json::json!(["/a", "/b"]));
    }

    #[test]
    fn key_record_json() {
        let bytes = Key::krb_linked().build(5);
        let line = json_line(&parse(&bytes));
        assert_eq!(
            line,
            r#"{"type":"key","event":"linked","tag":1,"seq":5,"time_ns":1700000000123456789,"snapshot":false,"key_id":123456,"aux":654321,"watched_key":123456,"key_uid":1000,"key_gid":1000,"perm":1057030144,"key_type":"keyring","description":"_krb"}"#
        );
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["perm"], 0x3f01_0000);
    }

    /// Each key notification as keyutils' keyctl_watch.c prints it (the table in
    /// docs/watchctl.md, `--format keyctl`): `%u inst`, `%u upd`, `%u link %u`, `%u unlk
    /// %u`, `%u clr`, `%u rev`, `%u inv`, `%u attr`.
    #[test]
    fn keyctl_lines_of_each_key_notification() {
        use watchd_proto::key;
        for (subtype, aux, line) in [
            (key::INSTANTIATED, None, "255913279 inst"),
            (key::UPDATED, None, "255913279 upd"),
            (key::LINKED, Some(340_681_059), "255913279 link 340681059"),
            (key::UNLINKED, Some(340_681_059), "255913279 unlk 340681059"),
            (key::CLEARED, None, "255913279 clr"),
            (key::REVOKED, None, "255913279 rev"),
            (key::INVALIDATED, None, "255913279 inv"),
            (key::SETATTR, None, "255913279 attr"),
        ] {
            let bytes = Key {
                subtype,
                key_id: 255_913_279,
                aux,
                ..Key::krb_linked()
            }
            .build(1);
            assert_eq!(keyctl_line(&parse(&bytes)).as_deref(), Some(line));
        }
        // Every subtype this version knows has its line.
        for subtype in 0..=key::SETATTR {
            let bytes = Key {
                subtype,
                ..Key::krb_linked()
            }
            .build(1);
            assert!(keyctl_line(&parse(&bytes)).is_some(), "{subtype}");
        }
        // keyctl prints the kernel's aux as is: 0 when a link record had none.
        let bytes = Key {
            aux: None,
            ..Key::krb_linked()
        }
        .build(1);
        assert_eq!(
            keyctl_line(&parse(&bytes)).as_deref(),
            Some("123456 link 0")
        );
        // A subtype keyutils does not know gets no line, as in keyctl.
        let bytes = Key {
            subtype: 40,
            ..Key::krb_linked()
        }
        .build(1);
        assert_eq!(keyctl_line(&parse(&bytes)), None);
    }

    /// The watched key gone is keyctl's `%u gc`, a loss its `-- LOSS --`; the rest of the
    /// pipe's records, and other types, have no line.
    #[test]
    fn keyctl_lines_of_meta_records() {
        let mut b = RecordBuilder::new(RecordType::Meta, meta::REMOVAL, 0, T);
        b.put_u32(attr::KEY_ID, 255_913_279).unwrap();
        b.put_u32(attr::WATCHED_KEY, 255_913_279).unwrap();
        b.put_str(attr::OBJECT, "key 255913279").unwrap();
        b.put_str(attr::REASON, "the watched key is gone").unwrap();
        let bytes = build(b, 1, 9);
        assert_eq!(keyctl_line(&parse(&bytes)).as_deref(), Some("255913279 gc"));
        // No key id: keyutils prints 0.
        let bytes = build(
            RecordBuilder::new(RecordType::Meta, meta::REMOVAL, 0, T),
            1,
            9,
        );
        assert_eq!(keyctl_line(&parse(&bytes)).as_deref(), Some("0 gc"));

        let mut b = RecordBuilder::new(RecordType::Meta, meta::LOSS, 0, T);
        b.put_u64(attr::LOST_COUNT, 3).unwrap();
        let bytes = build(b, 0, 10);
        assert_eq!(keyctl_line(&parse(&bytes)).as_deref(), Some("-- LOSS --"));
        let mut b = RecordBuilder::new(RecordType::Meta, meta::LOSS, 0, T);
        b.put_str(attr::REASON, "the poller fell behind").unwrap();
        let bytes = build(b, 1, 11);
        assert_eq!(keyctl_line(&parse(&bytes)).as_deref(), Some("-- LOSS --"));

        for bytes in [
            build(
                RecordBuilder::new(RecordType::Meta, meta::SYNC, 0, T),
                1,
                12,
            ),
            build(
                RecordBuilder::new(RecordType::Meta, meta::SOURCE_CHANGED, 0, T),
                1,
                13,
            ),
            attach(0),
        ] {
            assert_eq!(keyctl_line(&parse(&bytes)), None);
        }
        assert_eq!(KEYCTL_END, "-- END --");
    }

    #[test]
    fn iso_time_has_the_date_and_the_offset() {
        assert_eq!(iso_time(T, 0), "2023-11-14T22:13:20.123+00:00");
        assert_eq!(iso_time(T, 7200), "2023-11-15T00:13:20.123+02:00");
        assert_eq!(
            iso_time(T, -(5 * 3600 + 1800)),
            "2023-11-14T16:43:20.123-05:30"
        );
        assert_eq!(iso_time(0, 0), "1970-01-01T00:00:00.000+00:00");
        assert_eq!(iso_time(0, -3600), "1969-12-31T23:00:00.000-01:00");
        // 29 February of a leap year, and the day after.
        assert_eq!(
            iso_time(1_709_164_800_000_000_000, 0),
            "2024-02-29T00:00:00.000+00:00"
        );
        assert_eq!(
            iso_time(1_709_251_199_999_000_000, 0),
            "2024-02-29T23:59:59.999+00:00"
        );
        assert_eq!(
            iso_time(1_709_251_200_000_000_000, 0),
            "2024-03-01T00:00:00.000+00:00"
        );
        // 2000 was a leap year, 2100 will not be.
        assert_eq!(
            iso_time(951_782_400_000_000_000, 0),
            "2000-02-29T00:00:00.000+00:00"
        );
        assert_eq!(
            iso_time(4_107_542_400_000_000_000, 0),
            "2100-03-01T00:00:00.000+00:00"
        );
        assert_eq!(
            time_text(T, 3600, TimeFormat::Iso),
            "2023-11-14T23:13:20.123+01:00"
        );
        assert_eq!(time_text(T, 3600, TimeFormat::Clock), "23:13:20.123");
    }

    /// With several watches, a text line names the one it came from; JSON says the kind
    /// and, with --time iso, the time as text.
    #[test]
    fn lines_name_their_watch() {
        let bytes = attach(0);
        let record = parse(&bytes);
        assert_eq!(
            human_line_at(
                &record,
                "2023-11-14T22:13:20.123+00:00",
                Some((1, "mounts"))
            ),
            "2023-11-14T22:13:20.123+00:00  [1 mounts]  mount attach   /mnt/x  tmpfs  source=tmpfs  id=123  opts=rw,relatime"
        );
        assert_eq!(
            human_line_at(&record, "22:13:20.123", None),
            human_line(&record, 0)
        );
        let bytes = build(RecordBuilder::new(RecordType::Meta, meta::SYNC, 0, T), 2, 7);
        assert_eq!(
            human_line_at(&parse(&bytes), "22:13:20.123", Some((2, "devices"))),
            "22:13:20.123  [2 devices]  snapshot complete (tag 2)"
        );
        assert_eq!(
            json_line_with(
                &parse(&bytes),
                Some("devices"),
                Some("2023-11-14T22:13:20.123+00:00")
            ),
            r#"{"type":"meta","event":"sync","tag":2,"kind":"devices","seq":7,"time_ns":1700000000123456789,"time":"2023-11-14T22:13:20.123+00:00","snapshot":false}"#
        );
    }

    fn list_status() -> Status {
        Status {
            version: "0.1.0".into(),
            sources: vec!["mounts".into(), "devices".into()],
            subscriptions: 3,
            watches: 4,
            authorization: "polkit".into(),
            source_details: [
                ("mounts".to_owned(), "fanotify".to_owned()),
                ("devices".to_owned(), "udev".to_owned()),
            ]
            .into(),
        }
    }

    fn list_subscriptions() -> Vec<SubscriptionInfo> {
        use watchd_client::WatchInfo;
        vec![
            SubscriptionInfo {
                path: "/org/watchd/Watchd1/subscription/3".into(),
                depth: 16,
                watches: vec![
                    WatchInfo {
                        tag: 1,
                        kind: "mounts".into(),
                    },
                    WatchInfo {
                        tag: 2,
                        kind: "devices".into(),
                    },
                ],
            },
            SubscriptionInfo {
                path: "/org/watchd/Watchd1/subscription/9".into(),
                depth: 4,
                watches: vec![],
            },
        ]
    }

    #[test]
    fn list_human_and_json() {
        assert_eq!(
            list_human(&list_status(), &list_subscriptions()),
            "kinds:\n  mounts   fanotify\n  devices  udev\nyour subscriptions:\n  /org/watchd/Watchd1/subscription/3  depth=16  1:mounts 2:devices\n  /org/watchd/Watchd1/subscription/9  depth=4  no watches\n"
        );
        assert_eq!(
            list_human(&list_status(), &[]),
            "kinds:\n  mounts   fanotify\n  devices  udev\nyour subscriptions:\n  none\n"
        );
        assert_eq!(
            list_json(&list_status(), &list_subscriptions()),
            r#"{"kinds":[{"backend":"fanotify","kind":"mounts"},{"backend":"udev","kind":"devices"}],"subscriptions":[{"depth":16,"path":"/org/watchd/Watchd1/subscription/3","watches":[{"kind":"mounts","tag":1},{"kind":"devices","tag":2}]},{"depth":4,"path":"/org/watchd/Watchd1/subscription/9","watches":[]}]}"#
        );
    }

    fn krb5_record(subtype: u8, flags: u8, cache: &str, principal: &str) -> Vec<u8> {
        let mut b = RecordBuilder::new(RecordType::Krb5, subtype, flags, T);
        b.put_str(attr::CACHE, cache).unwrap();
        b.put_str(attr::PRINCIPAL, principal).unwrap();
        b.put_str(attr::COLLECTION, "KEYRING:persistent:1000")
            .unwrap();
        build(b, 1, 3)
    }

    #[test]
    fn krb5_records_human() {
        use watchd_proto::krb5;
        let bytes = krb5_record(
            krb5::CHANGED,
            0,
            "KEYRING:persistent:1000:1000",
            "alice@WATCHD.TEST",
        );
        assert_eq!(
            human_line(&parse(&bytes), 0),
            "22:13:20.123  krb5 changed    cache=KEYRING:persistent:1000:1000  principal=alice@WATCHD.TEST"
        );
        let bytes = krb5_record(
            krb5::PRIMARY,
            FLAG_SNAPSHOT,
            "KEYRING:persistent:1000:krb_ccache_AbCd",
            "bob@WATCHD.TEST",
        );
        assert_eq!(
            human_line(&parse(&bytes), 0),
            "22:13:20.123  [snapshot] krb5 primary    cache=KEYRING:persistent:1000:krb_ccache_AbCd  principal=bob@WATCHD.TEST"
        );
        // An unknown principal (empty) is not shown.
        let bytes = krb5_record(krb5::DESTROYED, 0, "FILE:/tmp/krb5cc_1000", "");
        assert_eq!(
            human_line(&parse(&bytes), 0),
            "22:13:20.123  krb5 destroyed  cache=FILE:/tmp/krb5cc_1000"
        );
        // A subtype from a newer daemon: every attribute, generically.
        let bytes = krb5_record(9, 0, "FILE:/tmp/x", "a@B");
        assert_eq!(
            human_line(&parse(&bytes), 0),
            "22:13:20.123  krb5 9        cache=FILE:/tmp/x  principal=a@B  collection=KEYRING:persistent:1000"
        );
    }

    #[test]
    fn krb5_record_json() {
        let bytes = krb5_record(
            watchd_proto::krb5::CREATED,
            FLAG_SNAPSHOT,
            "KEYRING:persistent:1000:1000",
            "alice@WATCHD.TEST",
        );
        assert_eq!(
            json_line(&parse(&bytes)),
            r#"{"type":"krb5","event":"created","tag":1,"seq":3,"time_ns":1700000000123456789,"snapshot":true,"cache":"KEYRING:persistent:1000:1000","principal":"alice@WATCHD.TEST","collection":"KEYRING:persistent:1000"}"#
        );
    }

    /// The JSON lines docs/watchctl.md shows are what `json_line` prints.
    #[test]
    fn json_examples_in_the_manual_are_real() {
        let manual = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/watchctl.md"),
        )
        .unwrap();
        let examples: Vec<&str> = manual
            .lines()
            .filter(|l| l.starts_with("{\"type\":"))
            .collect();
        let mut device = Device::loop7(watchd_proto::device::ADD).build(7);
        stamp(&mut device, 1, 7);
        let krb5 = krb5_record(
            watchd_proto::krb5::CHANGED,
            0,
            "KEYRING:persistent:1000:1000",
            "alice@WATCHD.TEST",
        );
        let expected = [
            json_line(&parse(&device)),
            json_line(&parse(&attach(0))),
            json_line(&parse(&Key::krb_linked().build(5))),
            json_line(&parse(&krb5)),
        ];
        assert_eq!(examples, expected);
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
            source_details: [("devices".to_owned(), "kernel uevents".to_owned())].into(),
        };
        assert_eq!(
            status_json(&status),
            r#"{"version":"0.1.0","sources":["mounts","keys"],"subscriptions":2,"watches":5,"authorization":"polkit","source_details":{"devices":"kernel uevents"}}"#
        );
        assert_eq!(
            status_human(&status),
            "version:       0.1.0\nsources:       mounts, keys\nsubscriptions: 2\nwatches:       5\nauthorization: polkit\n  devices: kernel uevents\n"
        );
    }
}
