//! The `a{sv}` options of `Subscribe` and `AddWatch`: decoded under bounds, then handed out
//! one typed key at a time.
//!
//! A caller controls the size of everything in a message (up to the bus's 32 MiB), and a
//! plain `HashMap<String, OwnedVariant>` argument decodes all of it before anyone looks: a
//! million entries cost seconds and hundreds of MiB. [`OptionMap`] is decoded instead, and
//! stops with an error as soon as one of these bounds is passed:
//!
//! | what | bound |
//! | --- | --- |
//! | entries | [`MAX_ENTRIES_READ`] (twice [`MAX_OPTIONS`]) |
//! | an option's name | [`MAX_NAME_BYTES`] |
//! | a string | [`MAX_STRING_BYTES`] (`PATH_MAX`) |
//! | a list | [`MAX_LIST_ENTRIES`] (twice [`MAX_FILTERS`]) |
//! | a value of a type no option takes | [`MAX_LIST_ENTRIES`] parts, strings as above |
//!
//! The bus turns that error into `org.freedesktop.DBus.Error.InvalidArgs` with its text.
//! Entry and list bounds are twice the semantic limits so that a request a little over a
//! limit still gets the daemon's own `InvalidArgument` error naming the option (and
//! clients matching on that name keep working); only one far over it is cut off here.
//!
//! A value of a type no option takes (say `i` for `depth`) is walked within the bounds
//! above, not kept, and remembered by its signature, so the error can still say "option
//! 'depth' must be of type 'u', not 'i'". Walking is bounded, so nothing is decoded
//! without limit.
//!
//! [`Options`] holds plain Rust values: no D-Bus type goes past the manager.
#![forbid(unsafe_code)]

use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::os::fd::AsFd;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use watchd_proto::RecordType;

use crate::error::{Error, Result, Truncated};
use crate::watch::{Filters, MAX_FILTERS, TypeFilter};

/// Most options one request may carry.
pub const MAX_OPTIONS: usize = 32;
/// Entries read before decoding stops: past [`MAX_OPTIONS`] they are counted, not kept.
pub const MAX_ENTRIES_READ: usize = 2 * MAX_OPTIONS;
/// Longest option name, in bytes; the longest real one is 10.
pub const MAX_NAME_BYTES: usize = 64;
/// Longest string value, in bytes: `PATH_MAX`, as every string option is a path, a cache
/// name, a pattern or a key name.
pub const MAX_STRING_BYTES: usize = 4096;
/// Most entries of a list value (`as`, `a(utuu)`); each option's own limit may be lower.
pub const MAX_LIST_ENTRIES: usize = 2 * MAX_FILTERS;

/// One `filters` entry as sent: (type, subtype mask, flags mask, flags value).
pub type FilterEntry = (u32, u64, u32, u32);

/// An option's value, in the types options take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Bool(bool),
    U32(u32),
    U64(u64),
    Str(String),
    Strings(Vec<String>),
    Filters(Vec<FilterEntry>),
    /// A file descriptor the caller passed (`h`), the daemon's own copy.
    Fd(PassedFd),
    /// A type no option takes, known by its D-Bus signature only.
    Other(String),
}

/// A descriptor from the caller's message; two are equal only if they are the same copy.
#[derive(Clone, Debug)]
pub struct PassedFd(pub std::sync::Arc<std::os::fd::OwnedFd>);

impl PartialEq for PassedFd {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for PassedFd {}

impl Value {
    /// The D-Bus signature the value came with.
    pub fn signature(&self) -> &str {
        match self {
            Value::Bool(_) => "b",
            Value::U32(_) => "u",
            Value::U64(_) => "t",
            Value::Str(_) => "s",
            Value::Strings(_) => "as",
            Value::Filters(_) => "a(utuu)",
            Value::Fd(_) => "h",
            Value::Other(signature) => signature,
        }
    }
}

/// The `a{sv}` as decoded: at most [`MAX_OPTIONS`] entries kept, in the order sent, and how
/// many were given (up to [`MAX_ENTRIES_READ`]).
#[derive(Debug, Default)]
pub struct OptionMap {
    entries: Vec<(String, Value)>,
    given: usize,
}

impl OptionMap {
    pub fn from_entries(entries: impl IntoIterator<Item = (String, Value)>) -> Self {
        let entries: Vec<_> = entries.into_iter().collect();
        OptionMap {
            given: entries.len(),
            entries,
        }
    }
}

impl zbus::Type for OptionMap {
    const SIGNATURE: &'static zbus::Signature =
        <HashMap<String, zbus::OwnedVariant> as zbus::Type>::SIGNATURE;
}

impl<'de> serde::Deserialize<'de> for OptionMap {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(OptionMapVisitor)
    }
}

struct OptionMapVisitor;

impl<'de> Visitor<'de> for OptionMapVisitor {
    type Value = OptionMap;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("options as a{sv}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OptionMap, A::Error> {
        let mut options = OptionMap::default();
        while let Some(name) = map.next_key_seed(OptionName)? {
            options.given += 1;
            if options.given > MAX_ENTRIES_READ {
                return Err(de::Error::custom(format!(
                    "more than {MAX_ENTRIES_READ} options given; at most {MAX_OPTIONS} are accepted"
                )));
            }
            if options.given > MAX_OPTIONS {
                map.next_value_seed(Walk {
                    name: &name,
                    signature: None,
                })?;
                continue;
            }
            let value = map.next_value_seed(OptionValue { name: &name })?;
            options.entries.push((name, value));
        }
        Ok(options)
    }
}

/// A key, refused past [`MAX_NAME_BYTES`] before it is copied.
struct OptionName;

impl<'de> DeserializeSeed<'de> for OptionName {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for OptionName {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an option name")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<String, E> {
        if name.len() > MAX_NAME_BYTES {
            return Err(E::custom(format!(
                "option name '{}' is longer than {MAX_NAME_BYTES} bytes",
                Truncated(name)
            )));
        }
        Ok(name.to_owned())
    }
}

/// A variant, presented by zbus as a sequence: its signature, then its value decoded with
/// that signature. The signature picks how the value is read.
struct OptionValue<'n> {
    name: &'n str,
}

impl<'de> DeserializeSeed<'de> for OptionValue<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for OptionValue<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a variant as the value of option '{}'", self.name)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut variant: A) -> Result<Value, A::Error> {
        let name = self.name;
        let missing = || de::Error::custom(format!("option '{name}' has no value"));
        // A D-Bus signature is at most 255 bytes.
        let signature: String = variant.next_element()?.ok_or_else(missing)?;
        let value = match signature.as_str() {
            "b" => variant.next_element().map(|v| v.map(Value::Bool)),
            "u" => variant.next_element().map(|v| v.map(Value::U32)),
            "t" => variant.next_element().map(|v| v.map(Value::U64)),
            "s" => variant
                .next_element_seed(BoundedString { name })
                .map(|v| v.map(Value::Str)),
            "as" => variant
                .next_element_seed(BoundedList {
                    name,
                    entry: BoundedString { name },
                })
                .map(|v| v.map(Value::Strings)),
            "a(utuu)" => variant
                .next_element_seed(BoundedList {
                    name,
                    entry: PhantomData::<FilterEntry>,
                })
                .map(|v| v.map(Value::Filters)),
            "h" => match variant.next_element::<zbus::Fd<'de>>()? {
                None => Ok(None),
                Some(fd) => fd
                    .as_fd()
                    .try_clone_to_owned()
                    .map(|fd| Some(Value::Fd(PassedFd(std::sync::Arc::new(fd)))))
                    .map_err(|e| de::Error::custom(format!("option '{name}': {e}"))),
            },
            _ => variant
                .next_element_seed(Walk {
                    name,
                    signature: Some(&signature),
                })
                .map(|v| v.map(|()| Value::Other(signature.clone()))),
        };
        value?.ok_or_else(missing)
    }
}

/// A string, refused past [`MAX_STRING_BYTES`] before it is copied.
#[derive(Clone, Copy)]
struct BoundedString<'n> {
    name: &'n str,
}

impl<'de> DeserializeSeed<'de> for BoundedString<'_> {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for BoundedString<'_> {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a string for option '{}'", self.name)
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<String, E> {
        check_string_length(self.name, value)?;
        Ok(value.to_owned())
    }
}

fn check_string_length<E: de::Error>(name: &str, value: &str) -> Result<(), E> {
    if value.len() > MAX_STRING_BYTES {
        return Err(E::custom(format!(
            "option '{name}' holds a string of {} bytes; at most {MAX_STRING_BYTES} are accepted",
            value.len()
        )));
    }
    Ok(())
}

/// A list whose entries `entry` decodes, refused at entry [`MAX_LIST_ENTRIES`] + 1.
struct BoundedList<'n, S> {
    name: &'n str,
    entry: S,
}

impl<'de, S> DeserializeSeed<'de> for BoundedList<'_, S>
where
    S: DeserializeSeed<'de> + Copy,
{
    type Value = Vec<S::Value>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de, S> Visitor<'de> for BoundedList<'_, S>
where
    S: DeserializeSeed<'de> + Copy,
{
    type Value = Vec<S::Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a list for option '{}'", self.name)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut list: A) -> Result<Self::Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = list.next_element_seed(self.entry)? {
            if entries.len() == MAX_LIST_ENTRIES {
                return Err(de::Error::custom(format!(
                    "option '{}' holds more than {MAX_LIST_ENTRIES} entries; \
                     at most {MAX_LIST_ENTRIES} are accepted",
                    self.name
                )));
            }
            entries.push(entry);
        }
        Ok(entries)
    }
}

/// A value walked to its end without keeping anything: one of a type no option takes
/// (`signature`), or one past [`MAX_OPTIONS`]. Every number, string, list entry, struct
/// field and nested variant is one part, and at most [`MAX_LIST_ENTRIES`] parts are walked,
/// so the work is bounded whatever the type.
struct Walk<'n, 's> {
    name: &'n str,
    signature: Option<&'s str>,
}

impl<'de> DeserializeSeed<'de> for Walk<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        let parts_left = Cell::new(MAX_LIST_ENTRIES);
        let walked = Walked {
            name: self.name,
            parts_left: &parts_left,
        }
        .deserialize(deserializer);
        match self.signature {
            None => walked,
            Some(signature) => walked.map_err(|e: D::Error| {
                de::Error::custom(format!("{e}; no option takes its type '{signature}'"))
            }),
        }
    }
}

/// One part of a [`Walk`], sharing its budget.
struct Walked<'n, 'b> {
    name: &'n str,
    parts_left: &'b Cell<usize>,
}

impl<'de> DeserializeSeed<'de> for Walked<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_ignored_any(self)
    }
}

impl Walked<'_, '_> {
    fn part<E: de::Error>(&self) -> Result<(), E> {
        match self.parts_left.get() {
            0 => Err(self.too_large()),
            left => {
                self.parts_left.set(left - 1);
                Ok(())
            }
        }
    }

    fn too_large<E: de::Error>(&self) -> E {
        E::custom(format!(
            "option '{}' holds more than {MAX_LIST_ENTRIES} values",
            self.name
        ))
    }

    fn nested(&self) -> Walked<'_, '_> {
        Walked {
            name: self.name,
            parts_left: self.parts_left,
        }
    }
}

impl<'de> Visitor<'de> for Walked<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "any value for option '{}'", self.name)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.part()
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.part()
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.part()
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.part()
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<(), E> {
        check_string_length(self.name, value)?;
        self.part()
    }

    fn visit_bytes<E: de::Error>(self, value: &[u8]) -> Result<(), E> {
        if value.len() > MAX_STRING_BYTES {
            return Err(self.too_large());
        }
        self.part()
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.part()
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.part()?;
        while seq.next_element_seed(self.nested())?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.part()?;
        while map.next_key_seed(self.nested())?.is_some() {
            map.next_value_seed(self.nested())?;
        }
        Ok(())
    }
}

/// The options a client sent. Every key must be consumed by someone who understands it;
/// whatever is left over is refused, so a typo never silently means "default".
#[derive(Debug)]
pub struct Options {
    map: HashMap<String, Value>,
}

impl Options {
    pub fn new(options: OptionMap) -> Result<Self> {
        if options.given > MAX_OPTIONS {
            return Err(Error::invalid(format!(
                "{} options given; at most {MAX_OPTIONS} are accepted",
                options.given
            )));
        }
        let mut map = HashMap::with_capacity(options.entries.len());
        for (name, value) in options.entries {
            if map.contains_key(&name) {
                return Err(Error::invalid(format!("option '{name}' is given twice")));
            }
            map.insert(name, value);
        }
        Ok(Options { map })
    }

    /// Removes `key` and converts it with `convert`, naming the key and both types when the
    /// client sent the wrong one.
    fn take<T>(
        &mut self,
        key: &str,
        signature: &str,
        convert: fn(Value) -> Result<T, Value>,
    ) -> Result<Option<T>> {
        let Some(value) = self.map.remove(key) else {
            return Ok(None);
        };
        convert(value).map(Some).map_err(|value| {
            Error::invalid(format!(
                "option '{key}' must be of type '{signature}', not '{}'",
                value.signature()
            ))
        })
    }

    /// A string option's value without consuming it (for the log), if it is one.
    pub fn peek_str(&self, key: &str) -> Option<&str> {
        match self.map.get(key) {
            Some(Value::Str(s)) => Some(s),
            _ => None,
        }
    }

    /// A `u` option's value without consuming it (to choose the polkit action).
    pub fn peek_u32(&self, key: &str) -> Option<u32> {
        match self.map.get(key) {
            Some(Value::U32(v)) => Some(*v),
            _ => None,
        }
    }

    /// A `b` option's value without consuming it (to choose the polkit action).
    pub fn peek_bool(&self, key: &str) -> Option<bool> {
        match self.map.get(key) {
            Some(Value::Bool(v)) => Some(*v),
            _ => None,
        }
    }

    pub fn take_bool(&mut self, key: &str) -> Result<Option<bool>> {
        self.take(key, "b", |v| match v {
            Value::Bool(b) => Ok(b),
            other => Err(other),
        })
    }

    pub fn take_strings(&mut self, key: &str) -> Result<Option<Vec<String>>> {
        self.take(key, "as", |v| match v {
            Value::Strings(list) => Ok(list),
            other => Err(other),
        })
    }

    pub fn take_u32(&mut self, key: &str) -> Result<Option<u32>> {
        self.take(key, "u", |v| match v {
            Value::U32(n) => Ok(n),
            other => Err(other),
        })
    }

    /// A descriptor the caller passed (`h`).
    pub fn take_fd(&mut self, key: &str) -> Result<Option<PassedFd>> {
        self.take(key, "h", |v| match v {
            Value::Fd(fd) => Ok(fd),
            other => Err(other),
        })
    }

    pub fn take_string(&mut self, key: &str) -> Result<Option<String>> {
        self.take(key, "s", |v| match v {
            Value::Str(s) => Ok(s),
            other => Err(other),
        })
    }

    /// `filters` as `a(utuu)`: (type, subtype mask, flags mask, flags value).
    pub fn take_filters(&mut self) -> Result<Filters> {
        const KEY: &str = "filters";
        let Some(value) = self.map.remove(KEY) else {
            return Ok(Filters::default());
        };
        let Value::Filters(list) = value else {
            return Err(Error::invalid(format!(
                "option '{KEY}' must be of type 'a(utuu)', not '{}'",
                value.signature()
            )));
        };
        if list.len() > MAX_FILTERS {
            return Err(Error::invalid(format!(
                "{} filters given; at most {MAX_FILTERS} are accepted",
                list.len()
            )));
        }
        let filters = list
            .into_iter()
            .map(|(record_type, subtypes, flags_mask, flags_value)| {
                if RecordType::from_u32(record_type).is_none() {
                    return Err(Error::invalid(format!(
                        "filter names unknown record type {record_type}"
                    )));
                }
                let byte = |v: u32, what| {
                    u8::try_from(v).map_err(|_| {
                        Error::invalid(format!("filter {what} {v:#x} does not fit the 8 flag bits"))
                    })
                };
                Ok(TypeFilter {
                    record_type,
                    subtypes,
                    flags_mask: byte(flags_mask, "flags mask")?,
                    flags_value: byte(flags_value, "flags value")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Filters::new(filters))
    }

    /// Refuses whatever no one consumed, naming it and what `context` accepts.
    pub fn finish(self, context: &str, known: &[&str]) -> Result<()> {
        let mut left: Vec<_> = self.map.into_keys().collect();
        if left.is_empty() {
            return Ok(());
        }
        left.sort();
        Err(Error::invalid(format!(
            "unknown option(s) {} for {context}; accepted: {}",
            left.iter()
                .map(|k| format!("'{k}'"))
                .collect::<Vec<_>>()
                .join(", "),
            known.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zbus::Variant;
    use zbus::wire::serialized::Context;
    use zbus::wire::{LE, to_bytes};

    /// `pairs` sent as an `a{sv}` and decoded as the daemon decodes it; the error's text
    /// as the caller would read it.
    fn decode(pairs: Vec<(String, Variant<'_>)>) -> Result<OptionMap, String> {
        let map: HashMap<String, Variant<'_>> = pairs.into_iter().collect();
        decode_map(&map)
    }

    fn decode_map(map: &HashMap<String, Variant<'_>>) -> Result<OptionMap, String> {
        let bytes = to_bytes(Context::new(LE, 0), map).unwrap();
        bytes
            .deserialize::<OptionMap>()
            .map(|(map, _)| map)
            .map_err(|e| e.to_string())
    }

    fn one(name: &str, value: Variant<'_>) -> Result<OptionMap, String> {
        decode(vec![(name.to_owned(), value)])
    }

    fn options(pairs: Vec<(&str, Variant<'_>)>) -> Options {
        let pairs = pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        Options::new(decode(pairs).unwrap()).unwrap()
    }

    fn flags(n: usize) -> Vec<(String, Variant<'static>)> {
        (0..n)
            .map(|i| (format!("k{i}"), Variant::from(true)))
            .collect()
    }

    fn refused(result: Result<OptionMap, String>, needle: &str) {
        match result {
            Ok(map) => panic!("accepted: {map:?}"),
            Err(text) => {
                assert!(text.contains(needle), "{text:?} should say {needle:?}");
                assert!(text.len() < 300, "a short error, not {} bytes", text.len());
            }
        }
    }

    #[test]
    fn values_decode_into_plain_rust_values() {
        let filters = vec![(2u32, 1u64, 0u32, 0u32)];
        let mut o = options(vec![
            ("initial", Variant::from(true)),
            ("depth", Variant::from(16u32)),
            ("big", Variant::from(7u64)),
            ("path", Variant::from("/mnt")),
            ("property", Variant::from(vec!["A=1", "B=*"])),
            ("filters", Variant::from(filters)),
        ]);
        assert_eq!(o.peek_str("path"), Some("/mnt"));
        assert_eq!(o.peek_u32("depth"), Some(16));
        assert_eq!(o.take_bool("initial").unwrap(), Some(true));
        assert_eq!(o.take_u32("depth").unwrap(), Some(16));
        assert_eq!(o.take_string("path").unwrap().as_deref(), Some("/mnt"));
        assert_eq!(
            o.take_strings("property").unwrap(),
            Some(vec!["A=1".to_owned(), "B=*".to_owned()])
        );
        let filters = o.take_filters().unwrap();
        assert!(filters.passes(2, 0, 0) && !filters.passes(2, 1, 0));
        assert_eq!(o.map.remove("big"), Some(Value::U64(7)));
        o.finish("test", &[]).unwrap();
    }

    #[test]
    fn entries_up_to_the_limit_are_accepted_a_few_more_get_the_typed_error_and_many_stop_decoding()
    {
        let map = decode(flags(MAX_OPTIONS)).unwrap();
        assert_eq!(Options::new(map).unwrap().map.len(), MAX_OPTIONS);

        for n in [MAX_OPTIONS + 1, MAX_ENTRIES_READ] {
            let map = decode(flags(n)).unwrap();
            assert_eq!(
                map.entries.len(),
                MAX_OPTIONS,
                "entries past the limit are not kept"
            );
            let err = Options::new(map).unwrap_err();
            assert!(
                matches!(&err, Error::InvalidArgument(m) if m == &format!("{n} options given; at most 32 are accepted")),
                "{err:?}"
            );
        }
        refused(
            decode(flags(MAX_ENTRIES_READ + 1)),
            "more than 64 options given; at most 32 are accepted",
        );
        // Entries past the limit are walked within the same bounds as kept ones.
        let mut pairs = flags(MAX_OPTIONS);
        pairs.push((
            "late".into(),
            Variant::from("x".repeat(MAX_STRING_BYTES + 1)),
        ));
        refused(decode(pairs), "at most 4096");
    }

    #[test]
    fn names_are_bounded() {
        assert!(one(&"n".repeat(MAX_NAME_BYTES), Variant::from(true)).is_ok());
        refused(
            one(&"n".repeat(MAX_NAME_BYTES + 1), Variant::from(true)),
            "longer than 64 bytes",
        );
        // A mebibyte name is refused with a short error that shows its start only.
        refused(
            one(&"n".repeat(1 << 20), Variant::from(true)),
            "(1048576 bytes)",
        );
    }

    #[test]
    fn strings_are_bounded_at_path_max() {
        let at_limit = "p".repeat(MAX_STRING_BYTES);
        let map = one("path", Variant::from(at_limit.as_str())).unwrap();
        assert_eq!(map.entries[0].1, Value::Str(at_limit));
        refused(
            one("path", Variant::from("p".repeat(MAX_STRING_BYTES + 1))),
            "option 'path' holds a string of 4097 bytes; at most 4096 are accepted",
        );
        let mut list = vec!["A=1".to_owned(); 3];
        list.push("p".repeat(MAX_STRING_BYTES + 1));
        refused(one("property", Variant::from(list)), "at most 4096");
    }

    #[test]
    fn lists_are_bounded() {
        let strings = vec!["A=1"; MAX_LIST_ENTRIES];
        assert!(one("property", Variant::from(strings)).is_ok());
        refused(
            one("property", Variant::from(vec!["A=1"; MAX_LIST_ENTRIES + 1])),
            "option 'property' holds more than 64 entries; at most 64 are accepted",
        );
        let filters = vec![(2u32, 1u64, 0u32, 0u32); MAX_LIST_ENTRIES];
        assert!(one("filters", Variant::from(filters)).is_ok());
        let filters = vec![(2u32, 1u64, 0u32, 0u32); MAX_LIST_ENTRIES + 1];
        refused(
            one("filters", Variant::from(filters)),
            "more than 64 entries",
        );
        refused(
            one("property", Variant::from(vec!["A=1"; 1_000_000])),
            "more than 64 entries",
        );
    }

    #[test]
    fn values_of_types_no_option_takes_are_named_or_refused_when_large() {
        let mut o = options(vec![
            ("depth", Variant::from(16i32)),
            ("path", Variant::from(vec!["/a", "/b"])),
            (
                "initial",
                Variant::from(HashMap::from([("x", Variant::from(1u8))])),
            ),
            ("key", Variant::from(vec![0u8; MAX_LIST_ENTRIES - 1])),
        ]);
        let named = |result: Result<()>, needle: &str| {
            let err = result.unwrap_err();
            assert!(
                matches!(&err, Error::InvalidArgument(m) if m == needle),
                "{err:?} should be {needle:?}"
            );
        };
        named(
            o.take_u32("depth").map(drop),
            "option 'depth' must be of type 'u', not 'i'",
        );
        named(
            o.take_string("path").map(drop),
            "option 'path' must be of type 's', not 'as'",
        );
        named(
            o.take_bool("initial").map(drop),
            "option 'initial' must be of type 'b', not 'a{sv}'",
        );
        named(
            o.take_string("key").map(drop),
            "option 'key' must be of type 's', not 'ay'",
        );
        refused(
            one("key", Variant::from(vec![0u8; 1 << 20])),
            "option 'key' holds more than 64 values; no option takes its type 'ay'",
        );
        let nested: Vec<Variant<'_>> = (0..1000u32).map(Variant::from).collect();
        refused(one("key", Variant::from(nested)), "its type 'av'");
    }

    #[test]
    fn unknown_keys_repeated_keys_and_bad_filters_are_refused_by_name() {
        let o = options(vec![("pth", Variant::from("/x"))]);
        let err = o.finish("kind 'mounts'", &["path"]).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument(m) if m.contains("'pth'") && m.contains("path")),
            "{err:?}"
        );

        let twice = OptionMap::from_entries([
            ("path".to_owned(), Value::Str("/a".into())),
            ("path".to_owned(), Value::Str("/b".into())),
        ]);
        let err = Options::new(twice).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument(m) if m == "option 'path' is given twice"),
            "{err:?}"
        );

        let many = vec![(2u32, 1u64, 0u32, 0u32); MAX_FILTERS + 1];
        let mut o = options(vec![("filters", Variant::from(many))]);
        assert!(
            matches!(o.take_filters(), Err(Error::InvalidArgument(m)) if m.contains("at most 32"))
        );

        let mut o = options(vec![(
            "filters",
            Variant::from(vec![(99u32, 1u64, 0u32, 0u32)]),
        )]);
        assert!(matches!(o.take_filters(), Err(Error::InvalidArgument(m)) if m.contains("99")));

        let mut o = options(vec![(
            "filters",
            Variant::from(vec![(2u32, 1u64, 0x100u32, 0u32)]),
        )]);
        assert!(o.take_filters().is_err());

        let mut o = options(vec![("filters", Variant::from("nope"))]);
        assert!(
            matches!(o.take_filters(), Err(Error::InvalidArgument(m)) if m.contains("a(utuu)"))
        );
    }
}
