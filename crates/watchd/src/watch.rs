//! A watch: a client's tag, a kind, type filters and the source-specific scope. The options
//! a client sends to set one up are parsed in [`crate::options`].
#![forbid(unsafe_code)]

use std::fmt;
use std::str::FromStr;

use watchd_proto::RecordType;

use crate::event::{Event, Subject};
use crate::sources::devices::DeviceScope;
use crate::sources::keys::KeyScope;
use crate::sources::krb5::Krb5Scope;
use crate::sources::mounts::MountScope;

// Options moved to their own module; the sources keep naming them from here.
pub use crate::options::{MAX_OPTIONS, Options};

/// The client-chosen number that marks every record a watch produces.
pub type Tag = u64;

/// Most type filters one watch may carry; more is a malformed request, not a use case.
pub const MAX_FILTERS: usize = 32;

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
    pub fn new(filters: Vec<TypeFilter>) -> Self {
        Filters(filters)
    }

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

#[cfg(test)]
mod tests {
    use super::*;
    use watchd_proto::{FLAG_SNAPSHOT, mount};

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
}
