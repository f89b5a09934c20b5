//! Kernel keys and keyrings: what a key watch covers, and the thread that follows every
//! watched key tree, told of changes by the kernel's watch queue where there is one, by
//! polling elsewhere.
//!
//! **Possession.** Root gets no bypass of key permissions: a key's owner usually has View
//! only, and everything else needs *possession*, i.e. reaching the key from the calling
//! thread's own keyrings. The poller thread gives each followed root a keyring of its own
//! (its `WalkRing`) that links the root and, for nested watches, the keys of its tree;
//! the thread keyring links only the ring of the root being walked, because every key call
//! searches the thread's keyrings and one shared keyring made that search cross every root.
//! Check threads, which run as the caller, never gain possession through the daemon. A
//! user's persistent keyring is linked by `KEYCTL_GET_PERSISTENT` once per root (it creates
//! the keyring and resets its expiry, so never per poll); a user's `@user` keyring is found
//! by switching the thread's real uid for a moment, as the kernel names it by real uid. A
//! key by serial is linked with the caller's rights plus possession of its user keyrings.
//! When the last watch of a root goes, its ring goes, and with it every link it held:
//! nothing stays alive for a user nobody watches.
//!
//! **Walking.** The thread walks a root's tree (describe, list keyrings, read payloads it
//! may read and keep only a keyed digest of them) with the watching user's credentials, and
//! turns the difference with the last walk into the kernel's notification subtypes
//! ([`diff`]). Keys inside a nested watch are linked into the root's ring while they are
//! in the tree: a key that disappears but is still alive was *unlinked*, one that is gone
//! while we held it was *invalidated*. One key per name can be held (`Holds`).
//!
//! **Keys under construction.** A key `request_key(2)` made is linked into its keyring at
//! once but instantiated only when its request-key helper finishes (a network lookup, or a
//! helper that hangs), and `KEYCTL_READ` (like `KEYCTL_LINK` and `KEYCTL_WATCH_KEY`) waits
//! for that, interruptibly, while `KEYCTL_DESCRIBE` does not. One such wait would stall
//! every user's key watches, so every pass runs with a per-thread timer
//! (`SIGEV_THREAD_ID`, a no-op handler without `SA_RESTART`) that interrupts the thread
//! every [`CUT_AFTER`]: a read cut short marks the key [`Condition::Pending`] (reported
//! linked, not instantiated; neither held nor watched), it is tried again at most once per
//! pass, after the poll interval and then twice as long each time, and INSTANTIATED goes
//! out when a retry finds it done.
//!
//! **When to walk.** Where the kernel has watch queues ([`KeyQueue`]), every live key of a
//! tree is watched, and a note walks the trees holding its key at once; updates and
//! setattrs the kernel notes but a walk cannot see (the same payload again, an expiry
//! time) are published as noted. Keys new to a tree are watched before their records go
//! out. Elsewhere, and for trees with keys the kernel has no room to watch, every tree is
//! walked each interval (the poller).
//!
//! **Delivery.** A record reaches a watch only if the watch's viewer may view the key it is
//! about, judged on the key's permissions as last seen ([`Viewer::may_view`]), so a chmod
//!
//! **Where it is.**
//! - this module: the `keys` kind ([`KeySource`]): its options, the [`KeyScope`] a watch
//!   covers, its snapshot;
//! - [`viewer`]: a key as described ([`KeyInfo`]), whose eyes a watch sees with
//!   ([`Viewer`]), what a caller may view, the credentials the thread takes;
//! - [`tree`]: a walk's [`Tree`], the [`diff`] of two walks, the [`KeyChange`] event;
//! - [`walk`]: one walk with the thread's credentials, reads cut short for keys under
//!   construction;
//! - [`rings`]: possession: the [`Anchor`] looked up, walk rings, the store, holds;
//! - [`queue`]: the kernel's watch queue and which roots its notes name;
//! - [`poller`]: the thread, its [`Registry`] of roots, its commands and ticks.
#![forbid(unsafe_code)]

pub mod poller;
pub mod queue;
pub mod rings;
pub mod tree;
pub mod viewer;
pub mod walk;

use std::sync::Arc;

use watchd_proto::{FLAG_SNAPSHOT, RecordType};

pub use self::poller::{Command, Poller, Registry, RootLease, RootRequest, RootView, Waker};
pub use self::rings::Anchor;
pub use self::tree::{
    Condition, KeyChange, Node, Notice, Observer, Probe, RootId, Tree, TreeObserver, diff, snapshot,
};
use self::viewer::check_viewable;
pub use self::viewer::{KeyInfo, Viewer, viewer_of};
pub use self::walk::MAX_TREE_KEYS;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::identity::Caller;
use crate::options::Options;
use crate::source::Source;
use crate::sys::KeySerial;
use crate::watch::{Kind, Scope};

/// The kind clients name in `AddWatch`.
pub const KIND: Kind = Kind("keys");

/// The group of a user the system does not know (`nogroup`).
const NOGROUP: u32 = 65534;

impl Anchor {
    fn parse(spec: &str, uid: u32) -> Result<Anchor> {
        Ok(match spec {
            "@user" | "@u" => Anchor::User(uid),
            "@user-session" | "@us" => Anchor::UserSession(uid),
            "@persistent" => Anchor::Persistent(uid),
            _ => match spec.parse::<i32>() {
                Ok(serial) if serial > 0 => Anchor::Serial(KeySerial(serial)),
                _ => {
                    return Err(Error::invalid(format!(
                        "key '{spec}' is neither @user, @user-session, @persistent nor a key \
                         serial (a positive number)"
                    )));
                }
            },
        })
    }
}

/// Which key events a watch covers.
#[derive(Clone)]
pub struct KeyScope {
    pub root: RootId,
    pub watched: KeySerial,
    pub nested: bool,
    pub viewer: Viewer,
    /// Keeps the root followed while the watch exists.
    pub lease: Arc<RootLease>,
}

impl PartialEq for KeyScope {
    fn eq(&self, other: &Self) -> bool {
        (self.root, self.nested) == (other.root, other.nested)
    }
}

impl Eq for KeyScope {}

impl std::fmt::Debug for KeyScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyScope")
            .field("root", &self.root)
            .field("watched", &self.watched)
            .field("nested", &self.nested)
            .finish()
    }
}

impl Scope for KeyScope {
    fn covers(&self, event: &Event) -> bool {
        event.subject::<KeyChange>().is_some_and(|change| {
            change.root == self.root
                && (event.record_type == RecordType::Meta
                    || self.viewer.may_view(&change.notice.key))
        })
    }
}

/// The `keys` kind.
pub struct KeySource {
    poller: Arc<Poller>,
}

impl KeySource {
    pub fn new(poller: Arc<Poller>) -> Arc<KeySource> {
        Arc::new(KeySource { poller })
    }
}

impl Source for KeySource {
    fn kind(&self) -> Kind {
        KIND
    }

    fn describe(&self) -> String {
        format!("changes found by {}", self.poller.backend())
    }

    fn scope(&self, options: &mut Options, caller: &Caller) -> Result<Arc<dyn Scope>> {
        let spec = options
            .take_string("key")?
            .unwrap_or_else(|| "@user".into());
        let uid = options.take_u32("uid")?;
        let nested = options.take_bool("nested")?.unwrap_or(false);
        let anchor = Anchor::parse(&spec, uid.unwrap_or(caller.uid.0))?;
        let viewer = match (&anchor, uid) {
            (Anchor::Serial(_), Some(_)) => {
                return Err(Error::invalid(
                    "option 'uid' names whose @user, @user-session or @persistent to watch; \
                     a key serial needs none",
                ));
            }
            (Anchor::Serial(serial), None) => {
                check_viewable(caller, *serial)?;
                viewer_of(caller, false)?
            }
            // Authorized by the admin action: everything in that user's tree.
            (_, Some(other)) if other != caller.uid.0 => Viewer {
                uid: other,
                // The user's own group (setfsgid(-1) would only ask, and keep whatever
                // group the thread had).
                gid: nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(other))
                    .ok()
                    .flatten()
                    .map_or(NOGROUP, |u| u.gid.as_raw()),
                groups: Vec::new(),
                possessor: true,
            },
            _ => viewer_of(caller, true)?,
        };
        let lease = self.poller.register(RootRequest {
            anchor,
            viewer: viewer.clone(),
            nested,
            observer: None,
        })?;
        Ok(Arc::new(KeyScope {
            root: lease.id,
            watched: lease.serial,
            nested,
            viewer,
            lease,
        }))
    }

    fn option_names(&self) -> &'static [&'static str] {
        &["key", "uid", "nested"]
    }

    fn with_snapshot(&self, scope: &dyn Scope, then: &mut dyn FnMut(&[Event])) {
        let Some(scope) = scope.downcast::<KeyScope>() else {
            return then(&[]);
        };
        self.poller.with_root(scope.root, |root| {
            let events: Vec<Event> = root
                .map(|root| {
                    snapshot(root.tree)
                        .into_iter()
                        .map(|notice| {
                            let subtype = notice.subtype;
                            let change = KeyChange {
                                root: scope.root,
                                watched: root.serial,
                                notice,
                            };
                            Event::new(RecordType::Key, subtype, FLAG_SNAPSHOT, Arc::new(change))
                        })
                        .collect()
                })
                .unwrap_or_default();
            then(&events)
        })
    }
}
