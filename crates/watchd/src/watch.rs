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

use watchd_proto::{RecordBuilder, RecordType, attr, meta};

use crate::event::{Change, Event, Fields};
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

    /// Whether a notice of this watch's kind addressed to `audience` (a group of the kind's
    /// watches that the source names, such as the mount namespace a feed follows) is for
    /// this watch. A notice to all the kind's watches has no audience and never asks.
    fn in_audience(&self, _audience: u64) -> bool {
        false
    }
}

impl dyn Scope {
    /// The scope as its source's own type.
    pub fn downcast<T: Scope>(&self) -> Option<&T> {
        let scope: &dyn Any = self;
        scope.downcast_ref()
    }
}

/// What a source tells every watch of its kind at once (or those of one audience, see
/// [`Scope::in_audience`]), as a META record that each gets with its own tag: events it lost
/// before they could be matched (LOSS), or that its events now come another way
/// (SOURCE_CHANGED). Type filters never hold it back, as any META.
#[derive(Debug)]
pub struct Notice {
    pub kind: Kind,
    /// Only the watches whose scope is in this audience; `None`: all of the kind.
    pub audience: Option<u64>,
    /// SOURCE_CHANGED: how the source gets its events from now on.
    pub backend: Option<&'static str>,
    /// LOSS: the types of the records lost.
    pub lost_types: u64,
    pub reason: String,
}

impl Notice {
    /// Events of `lost` records were lost for every watch of `kind`; how many is not known.
    pub fn loss(kind: Kind, lost: RecordType, reason: impl Into<String>) -> Event {
        Notice::loss_to(kind, None, lost, reason)
    }

    /// Events of `lost` records were lost for the watches of `kind` in `audience` (all of the
    /// kind when `None`).
    pub fn loss_to(
        kind: Kind,
        audience: Option<u64>,
        lost: RecordType,
        reason: impl Into<String>,
    ) -> Event {
        let notice = Notice {
            kind,
            audience,
            backend: None,
            lost_types: lost.bit(),
            reason: reason.into(),
        };
        Event::new(RecordType::Meta, meta::LOSS, 0, Arc::new(notice))
    }

    /// `kind`'s events now come from `backend`.
    pub fn source_changed(kind: Kind, backend: &'static str, reason: impl Into<String>) -> Event {
        let notice = Notice {
            kind,
            audience: None,
            backend: Some(backend),
            lost_types: 0,
            reason: reason.into(),
        };
        Event::new(RecordType::Meta, meta::SOURCE_CHANGED, 0, Arc::new(notice))
    }
}

impl Change for Notice {
    fn encode(&self, record: &mut RecordBuilder, _: RecordType) {
        let mut fields = Fields::new(record);
        if self.lost_types != 0 {
            fields.u64(attr::LOST_TYPES, self.lost_types);
        }
        if let Some(backend) = self.backend {
            fields.bytes(attr::BACKEND, backend.as_bytes());
        }
        fields.bytes(attr::REASON, self.reason.as_bytes());
        fields.finish();
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
        if let Some(notice) = event.subject::<Notice>() {
            return notice.kind == self.kind
                && notice.audience.is_none_or(|a| self.scope.in_audience(a));
        }
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

    #[derive(Debug)]
    struct Nothing;

    impl Scope for Nothing {
        fn covers(&self, _: &Event) -> bool {
            false
        }
    }

    #[test]
    fn a_notice_reaches_every_watch_of_its_kind_whatever_its_filters_and_scope() {
        let watch = |kind, filters| Watch {
            tag: 1,
            kind: Kind(kind),
            filters,
            scope: Arc::new(Nothing),
        };
        let only_attach = Filters(vec![TypeFilter {
            record_type: RecordType::Mount as u32,
            subtypes: 1 << mount::ATTACH,
            flags_mask: 0,
            flags_value: 0,
        }]);
        let loss = Notice::loss(Kind("probe"), RecordType::Mount, "overflow");
        let switch = Notice::source_changed(Kind("probe"), "other", "restarted");
        for notice in [&loss, &switch] {
            assert!(watch("probe", Filters::default()).wants(notice));
            assert!(watch("probe", only_attach.clone()).wants(notice));
            assert!(!watch("other", Filters::default()).wants(notice));
        }
        let record = watchd_proto::Record::parse(switch.record()).unwrap();
        assert!(record.header.is(RecordType::Meta, meta::SOURCE_CHANGED));
        assert_eq!(record.get_str(attr::BACKEND).as_deref(), Some("other"));
        assert_eq!(record.get_str(attr::REASON).as_deref(), Some("restarted"));
        let record = watchd_proto::Record::parse(loss.record()).unwrap();
        assert_eq!(
            record.get_u64(attr::LOST_TYPES),
            Some(RecordType::Mount.bit())
        );
        assert!(
            record.get(attr::LOST_COUNT).is_none() && record.get(attr::FIRST_LOST_SEQ).is_none()
        );
    }
}
