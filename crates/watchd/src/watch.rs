//! A watch: a client's tag, a kind, type filters and the source-specific [`Scope`]. The
//! options a client sends to set one up are parsed in [`crate::options`].
//!
//! The core knows no source: each source names its [`Kind`] and implements [`Scope`] for
//! its watches (which events they cover, and any record or notice of their own).
#![forbid(unsafe_code)]

use std::any::Any;
use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use watchd_proto::RecordType;

use crate::event::Event;
use crate::identity::Caller;

/// The client-chosen number that marks every record a watch produces.
pub type Tag = u64;

/// Names a subscription for as long as it lives; never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriptionId(pub u64);

/// Most type filters one watch may carry; more is a malformed request, not a use case.
pub const MAX_FILTERS: usize = 32;

/// A kind of watch, as clients name it in `AddWatch`: one per source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Kind(pub &'static str);

impl Kind {
    pub fn name(self) -> &'static str {
        self.0
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
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

/// Where a record went: for a scope that does more than fill the pipe.
pub struct Delivery<'a> {
    pub subscription: SubscriptionId,
    pub subscriber: &'a Caller,
}

/// Which objects a watch covers, in the terms of its source.
pub trait Scope: Any + fmt::Debug + Send + Sync {
    /// Whether `event` is within this watch; decided before anything is encoded.
    fn covers(&self, event: &Event) -> bool;

    /// A record of this watch's own, when it shapes records differently from the event's
    /// shared one (a device watch's property subset).
    fn record_for(&self, _event: &Event) -> Option<Vec<u8>> {
        None
    }

    /// Called once the event's record was offered to the watch's pipe: a scope may tell
    /// the subscriber another way too (a D-Bus signal). Runs under the hub's lock: it must
    /// not block.
    fn delivered(&self, _event: &Event, _to: &Delivery<'_>) {}
}

impl dyn Scope {
    /// The scope as its source's own type.
    pub fn downcast<T: Scope>(&self) -> Option<&T> {
        let scope: &dyn Any = self;
        scope.downcast_ref()
    }
}

#[derive(Clone, Debug)]
pub struct Watch {
    pub tag: Tag,
    pub kind: Kind,
    pub filters: Filters,
    pub scope: Arc<dyn Scope>,
}

impl Watch {
    /// Whether `event` goes to this watch; decided before anything is encoded.
    pub fn wants(&self, event: &Event) -> bool {
        self.filters
            .passes(event.record_type as u32, event.subtype, event.flags)
            && self.scope.covers(event)
    }

    /// The record this watch gets: the event's shared one, or its own when the watch asked
    /// for a different encoding.
    pub fn record_for<'e>(&self, event: &'e Event) -> Cow<'e, [u8]> {
        self.scope
            .record_for(event)
            .map_or(Cow::Borrowed(event.record()), Cow::Owned)
    }
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
