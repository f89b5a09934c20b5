//! A watch: a client's tag, a kind, type filters and the source-specific scope, plus the
//! strict parsing of the `a{sv}` options a client sends to set one up.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use watchd_proto::RecordType;
use zbus::{OwnedVariant, Variant};

use crate::error::{Error, Result};
use crate::event::{Event, Subject};
use crate::sources::devices::DeviceScope;
use crate::sources::keys::KeyScope;
use crate::sources::krb5::Krb5Scope;
use crate::sources::mounts::MountScope;

/// The client-chosen number that marks every record a watch produces.
pub type Tag = u64;

/// Most type filters one watch may carry; more is a malformed request, not a use case.
pub const MAX_FILTERS: usize = 32;
/// Most options one request may carry.
pub const MAX_OPTIONS: usize = 32;

/// The kinds of watch, one per source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Mounts,
    Devices,
    Keys,
    Krb5,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Mounts, Kind::Devices, Kind::Keys, Kind::Krb5];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Mounts => "mounts",
            Kind::Devices => "devices",
            Kind::Keys => "keys",
            Kind::Krb5 => "krb5",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Kind {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        Kind::ALL.into_iter().find(|k| k.name() == s).ok_or(())
    }
}

/// The kernel's `watch_notification_type_filter`: records of `record_type` pass when their
/// subtype's bit is set and `flags & flags_mask == flags_value`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TypeFilter {
    pub record_type: u32,
    pub subtypes: u64,
    pub flags_mask: u8,
    pub flags_value: u8,
}

/// No filters: everything passes. Otherwise only the listed types do; META always passes,
/// because loss, removal and sync are about the pipe itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filters(Vec<TypeFilter>);

impl Filters {
    pub fn passes(&self, record_type: u32, subtype: u8, flags: u8) -> bool {
        self.0.is_empty()
            || record_type == RecordType::Meta as u32
            || self.0.iter().any(|f| {
                f.record_type == record_type
                    && subtype < 64
                    && f.subtypes & (1 << subtype) != 0
                    && flags & f.flags_mask == f.flags_value
            })
    }
}

/// Which objects a watch covers, in the terms of its source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    Mounts(MountScope),
    Devices(DeviceScope),
    Keys(KeyScope),
    Krb5(Krb5Scope),
}

impl Scope {
    pub fn kind(&self) -> Kind {
        match self {
            Scope::Mounts(_) => Kind::Mounts,
            Scope::Devices(_) => Kind::Devices,
            Scope::Keys(_) => Kind::Keys,
            Scope::Krb5(_) => Kind::Krb5,
        }
    }

    fn covers(&self, event: &Event) -> bool {
        match (self, &*event.subject) {
            (Scope::Mounts(scope), Subject::Mount(change)) => scope.covers(change),
            (Scope::Devices(scope), Subject::Device(device)) => scope.matcher.matches(device),
            (Scope::Keys(scope), Subject::Key(change)) => scope.covers(change, event.record_type),
            (Scope::Krb5(scope), Subject::Krb5(change)) => scope.covers(change),
            _ => false,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Watch {
    pub tag: Tag,
    pub filters: Filters,
    pub scope: Scope,
}

impl Watch {
    pub fn kind(&self) -> Kind {
        self.scope.kind()
    }

    /// Whether `event` goes to this watch; decided before anything is encoded.
    pub fn wants(&self, event: &Event) -> bool {
        self.filters
            .passes(event.record_type as u32, event.subtype, event.flags)
            && self.scope.covers(event)
    }

    /// The `CredentialsCacheChanged` signal this watch wants sent for `event`, if any.
    pub fn signal_for(&self, event: &Event) -> Option<CredentialsSignal> {
        match (&self.scope, &*event.subject) {
            (Scope::Krb5(scope), Subject::Krb5(change)) if scope.signal => {
                Some(CredentialsSignal {
                    cache: change.change.cache.clone(),
                    principal: change.change.principal.clone(),
                    what: u32::from(change.change.subtype),
                })
            }
            _ => None,
        }
    }

    /// The record this watch gets: the event's shared one, or its own when the watch asked
    /// for a different encoding (a device watch's property subset).
    pub fn record_for<'e>(&self, event: &'e Event) -> std::borrow::Cow<'e, [u8]> {
        let custom = match (&self.scope, &*event.subject) {
            (Scope::Devices(scope), Subject::Device(device)) => {
                scope.matcher.custom_record(event, device)
            }
            _ => None,
        };
        custom.map_or(
            std::borrow::Cow::Borrowed(event.record()),
            std::borrow::Cow::Owned,
        )
    }
}

/// The body of the `CredentialsCacheChanged` D-Bus signal: (cache, principal, what), with
/// `what` the krb5 record subtype.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialsSignal {
    pub cache: String,
    pub principal: String,
    pub what: u32,
}

/// The `a{sv}` a client sent. Every key must be consumed by someone who understands it;
/// whatever is left over is refused, so a typo never silently means "default".
#[derive(Debug)]
pub struct Options {
    map: HashMap<String, OwnedVariant>,
}

impl Options {
    pub fn new(map: HashMap<String, OwnedVariant>) -> Result<Self> {
        if map.len() > MAX_OPTIONS {
            return Err(Error::invalid(format!(
                "{} options given; at most {MAX_OPTIONS} are accepted",
                map.len()
            )));
        }
        Ok(Options { map })
    }

    /// Removes `key` and converts it with `convert`, naming the key and both types when the
    /// client sent the wrong one.
    fn take<T>(
        &mut self,
        key: &str,
        signature: &str,
        convert: fn(&OwnedVariant) -> Option<T>,
    ) -> Result<Option<T>> {
        let Some(value) = self.map.remove(key) else {
            return Ok(None);
        };
        convert(&value).map(Some).ok_or_else(|| {
            let got = Variant::try_from(&value)
                .map(|v| v.value_signature().to_string())
                .unwrap_or_default();
            Error::invalid(format!(
                "option '{key}' must be of type '{signature}', not '{got}'"
            ))
        })
    }

    /// A string option's value without consuming it (for the log), if it is one.
    pub fn peek_str(&self, key: &str) -> Option<&str> {
        self.map.get(key).and_then(|v| <&str>::try_from(v).ok())
    }

    /// A `u` option's value without consuming it (to choose the polkit action).
    pub fn peek_u32(&self, key: &str) -> Option<u32> {
        self.map.get(key).and_then(|v| u32::try_from(v).ok())
    }

    pub fn take_bool(&mut self, key: &str) -> Result<Option<bool>> {
        self.take(key, "b", |v| bool::try_from(v).ok())
    }

    pub fn take_strings(&mut self, key: &str) -> Result<Option<Vec<String>>> {
        self.take(key, "as", |v| {
            v.try_clone()
                .ok()
                .and_then(|v| Vec::<String>::try_from(v).ok())
        })
    }

    pub fn take_u32(&mut self, key: &str) -> Result<Option<u32>> {
        self.take(key, "u", |v| u32::try_from(v).ok())
    }

    pub fn take_string(&mut self, key: &str) -> Result<Option<String>> {
        self.take(key, "s", |v| <&str>::try_from(v).ok().map(str::to_owned))
    }

    /// `filters` as `a(utuu)`: (type, subtype mask, flags mask, flags value).
    pub fn take_filters(&mut self) -> Result<Filters> {
        const KEY: &str = "filters";
        let Some(value) = self.map.remove(KEY) else {
            return Ok(Filters::default());
        };
        let wrong = || Error::invalid(format!("option '{KEY}' must be of type 'a(utuu)'"));
        let list: Vec<(u32, u64, u32, u32)> = value
            .try_clone()
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(wrong)?;
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
        Ok(Filters(filters))
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
    use watchd_proto::{FLAG_SNAPSHOT, mount};

    fn options(pairs: Vec<(&str, Variant<'static>)>) -> Options {
        let map = pairs
            .into_iter()
            .map(|(k, v)| (k.to_owned(), OwnedVariant::try_from(v).unwrap()))
            .collect();
        Options::new(map).unwrap()
    }

    #[test]
    fn filters_follow_the_kernel_type_filter_semantics() {
        let mount = RecordType::Mount as u32;
        let only_attach_live = Filters(vec![TypeFilter {
            record_type: mount,
            subtypes: 1 << mount::ATTACH,
            flags_mask: FLAG_SNAPSHOT,
            flags_value: 0,
        }]);
        assert!(only_attach_live.passes(mount, mount::ATTACH, 0));
        assert!(!only_attach_live.passes(mount, mount::ATTACH, FLAG_SNAPSHOT));
        assert!(!only_attach_live.passes(mount, mount::DETACH, 0));
        assert!(!only_attach_live.passes(RecordType::Key as u32, 0, 0));
        assert!(
            only_attach_live.passes(RecordType::Meta as u32, 1, 0),
            "META always passes"
        );
        assert!(Filters::default().passes(mount, mount::CHANGE, 0));
    }

    #[test]
    fn wrong_types_unknown_keys_and_oversized_filters_are_refused_by_name() {
        let mut o = options(vec![("initial", Variant::from(1u32))]);
        let err = o.take_bool("initial").unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument(m) if m.contains("'initial'") && m.contains("'b'") && m.contains("'u'")),
            "{err:?}"
        );

        let o = options(vec![("pth", Variant::from("/x"))]);
        let err = o.finish("kind 'mounts'", &["path"]).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument(m) if m.contains("'pth'") && m.contains("path")),
            "{err:?}"
        );

        let many: Vec<(u32, u64, u32, u32)> = vec![(2, 1, 0, 0); MAX_FILTERS + 1];
        let mut o = options(vec![("filters", Variant::from(many))]);
        assert!(
            matches!(o.take_filters(), Err(Error::InvalidArgument(m)) if m.contains("at most"))
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
