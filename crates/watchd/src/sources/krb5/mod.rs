//! Kerberos credential caches (MIT krb5): which cache a caller means, what a collection
//! holds, and the events between two states of it.
//!
//! - `KEYRING:persistent:UID` and `KEYRING:user:NAME` collections are key trees: the key
//!   poller ([`super::keys`]) follows them, and after each walk calls the
//!   [`KeyringFollower`] this source registered with the root (a
//!   [`super::keys::TreeObserver`]), which reads the collection out of the tree
//!   ([`Collection::from_keyring`]) and publishes how it changed. MIT keeps a collection in
//!   a keyring (`_krb` in the persistent keyring, `_krb_NAME` in `@user`) holding
//!   `krb_ccache:primary` (the primary cache's name) and one keyring per cache, each with
//!   `__krb5_princ__` and one key per ticket. `kinit` and `kinit -R` replace every key of a
//!   cache, so its fingerprint (the member serials and payload digests) changes; `kswitch`
//!   rewrites the primary key.
//! - `FILE:` caches and `DIR:` collections are files, followed with inotify on their
//!   directory by a thread of this source's own ([`files::FileWatcher`]), every file read
//!   with the caller's own credentials.
//! - `KEYRING:session:` and the other per-process anchors, `KCM:` and `MEMORY:` caches are
//!   refused with the reason: no other process can reach them.
//!
//! Where it is: this module (the kind, its scope, its signal), [`names`] (cache names and
//! the krb5.conf default), [`collection`] (a collection, its diff, the events, the keyring
//! follower), [`files`] (the file thread).

pub mod collection;
pub mod files;
pub mod names;

use std::any::Any;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use watchd_proto::FLAG_SNAPSHOT;

pub use self::collection::{
    CacheChange, CacheState, Collection, CollectionId, KeyringCollection, KeyringFollower,
    Krb5Change, PRIMARY_KEY, PRINCIPAL_KEY, decode_primary, file_principal, parse_principal,
    publish,
};
use self::files::check_reachable;
pub use self::files::{FileLease, FileRequest, FileWatcher};
pub use self::names::{
    FileLayout, Target, default_cache, default_ccache_name, expand, parse_cache_name,
};
use crate::access;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::identity::Caller;
use crate::options::Options;
use crate::source::Source;
use crate::sources::keys::{Observer, Poller, RootLease, RootRequest, viewer_of};
use crate::watch::{Delivery, Kind, Scope, SubscriptionId};

/// The kind clients name in `AddWatch`.
pub const KIND: Kind = Kind("krb5");

/// The body of the `CredentialsCacheChanged` D-Bus signal: (cache, principal, what), with
/// `what` the krb5 record subtype.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialsSignal {
    pub cache: String,
    pub principal: String,
    pub what: u32,
}

/// A `CredentialsCacheChanged` signal for the bus side to send, unicast to one subscriber.
#[derive(Debug)]
pub struct SignalNote {
    pub subscription: SubscriptionId,
    /// The subscriber's unique bus name.
    pub destination: String,
    pub signal: CredentialsSignal,
}

/// Where krb5 watches that asked for signals hand them; the bus side sends them.
pub type SignalSink = mpsc::Sender<SignalNote>;

/// Signals waiting for the bus; beyond this, new ones are dropped (and logged) rather than
/// held: the pipe has the same events, with loss accounting.
pub const SIGNAL_QUEUE: usize = 1024;

/// What keeps a krb5 watch's collection followed.
#[derive(Clone)]
pub enum Krb5Lease {
    Keyring(Arc<RootLease>),
    Files(Arc<FileLease>),
}

/// Which credential-cache events a watch covers.
#[derive(Clone)]
pub struct Krb5Scope {
    pub collection: CollectionId,
    /// Only this cache of the collection (a name with a subsidiary part).
    pub only: Option<String>,
    /// Where `CredentialsCacheChanged` goes too, when the watch asked for the signal.
    pub signal: Option<SignalSink>,
    pub lease: Krb5Lease,
}

impl std::fmt::Debug for Krb5Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Krb5Scope")
            .field("collection", &self.collection)
            .field("only", &self.only)
            .field("signal", &self.signal.is_some())
            .finish()
    }
}

impl Scope for Krb5Scope {
    fn covers(&self, event: &Event) -> bool {
        event.subject::<Krb5Change>().is_some_and(|change| {
            change.collection == self.collection
                && self
                    .only
                    .as_ref()
                    .is_none_or(|only| *only == change.change.cache)
        })
    }

    fn delivered(&self, event: &Event, to: &Delivery<'_>) {
        let (Some(sink), Some(change)) = (&self.signal, event.subject::<Krb5Change>()) else {
            return;
        };
        let note = SignalNote {
            subscription: to.subscription,
            destination: to.subscriber.bus_name.clone(),
            signal: CredentialsSignal {
                cache: change.change.cache.clone(),
                principal: change.change.principal.clone(),
                what: u32::from(change.change.subtype),
            },
        };
        if sink.try_send(note).is_err() {
            tracing::warn!(
                subscription = to.subscription.0,
                "signal queue full: a CredentialsCacheChanged signal was dropped"
            );
        }
    }
}

/// The `krb5` kind.
pub struct Krb5Source {
    poller: Arc<Poller>,
    signals: SignalSink,
    /// The file thread, started by the first FILE: or DIR: watch.
    files: Mutex<Option<Arc<FileWatcher>>>,
}

impl Krb5Source {
    pub fn new(poller: Arc<Poller>, signals: SignalSink) -> Arc<Krb5Source> {
        Arc::new(Krb5Source {
            poller,
            signals,
            files: Mutex::new(None),
        })
    }

    /// The file thread, started now if it is not running yet.
    fn files(&self) -> Result<Arc<FileWatcher>> {
        let mut files = self.files.lock().expect("krb5 file watcher poisoned");
        if let Some(watcher) = &*files {
            return Ok(watcher.clone());
        }
        let watcher = FileWatcher::start(self.poller.hub().clone()).map_err(|e| {
            Error::Failed(format!(
                "cannot watch credential cache files (inotify): {e}"
            ))
        })?;
        *files = Some(watcher.clone());
        Ok(watcher)
    }

    /// The file thread, if a file watch started it.
    fn files_started(&self) -> Option<Arc<FileWatcher>> {
        self.files
            .lock()
            .expect("krb5 file watcher poisoned")
            .clone()
    }
}

/// Snapshot events of `collection`, followed as `id` under `name`, for `scope`.
fn snapshot_events(id: CollectionId, name: &str, collection: &Collection) -> Vec<Event> {
    collection
        .snapshot()
        .into_iter()
        .map(|change| {
            Krb5Change {
                collection: id,
                name: name.to_owned(),
                change,
            }
            .into_event(FLAG_SNAPSHOT)
        })
        .collect()
}

impl Source for Krb5Source {
    fn kind(&self) -> Kind {
        KIND
    }

    fn describe(&self) -> String {
        format!(
            "KEYRING caches by {}, FILE and DIR caches by inotify",
            self.poller.backend()
        )
    }

    fn scope(&self, options: &mut Options, caller: &Caller) -> Result<Arc<dyn Scope>> {
        let name = match options.take_string("cache")? {
            Some(name) => name,
            None => default_cache(caller.uid.0)?,
        };
        let signal = options
            .take_bool("signal")?
            .unwrap_or(false)
            .then(|| self.signals.clone());
        let (collection, only, lease) = match parse_cache_name(&name, caller.uid.0)? {
            Target::Keyring {
                anchor,
                collection,
                only,
            } => {
                let key = collection.key();
                let follower = Arc::new(KeyringFollower::new(collection));
                let lease = self.poller.register(RootRequest {
                    anchor,
                    viewer: viewer_of(caller, true)?,
                    nested: true,
                    observer: Some(Observer {
                        key,
                        hook: follower,
                    }),
                })?;
                (
                    CollectionId::Keyring(lease.id),
                    only,
                    Krb5Lease::Keyring(lease),
                )
            }
            Target::Files { dir, layout } => {
                let dir = access::open_path(caller, &dir)?;
                let request = FileRequest {
                    dir,
                    layout,
                    reader: access::CallerProcess::new(caller)?.fs_creds()?,
                    name: name.clone(),
                };
                check_reachable(&request)?;
                let lease = self.files()?.watch(request)?;
                (CollectionId::Files(lease.id), None, Krb5Lease::Files(lease))
            }
        };
        Ok(Arc::new(Krb5Scope {
            collection,
            only,
            signal,
            lease,
        }))
    }

    fn option_names(&self) -> &'static [&'static str] {
        &["cache", "signal"]
    }

    fn with_snapshot(&self, scope: &dyn Scope, then: &mut dyn FnMut(&[Event])) {
        let Some(scope) = scope.downcast::<Krb5Scope>() else {
            return then(&[]);
        };
        let id = scope.collection;
        match id {
            CollectionId::Keyring(root) => self.poller.with_root(root, |root| {
                let follower = root
                    .and_then(|root| root.observer)
                    .and_then(|hook| (hook as &dyn Any).downcast_ref::<KeyringFollower>());
                match follower {
                    Some(follower) => then(&snapshot_events(
                        id,
                        follower.name(),
                        &follower.collection(),
                    )),
                    None => then(&[]),
                }
            }),
            CollectionId::Files(files) => match self.files_started() {
                Some(watcher) => watcher.with_collection(files, |found| match found {
                    Some((collection, name)) => then(&snapshot_events(id, name, collection)),
                    None => then(&[]),
                }),
                None => then(&[]),
            },
        }
    }
}
