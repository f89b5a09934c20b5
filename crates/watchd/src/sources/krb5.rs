//! Kerberos credential caches (MIT krb5): which cache a caller means, what a collection
//! holds, and the events between two states of it.
//!
//! - `KEYRING:persistent:UID` and `KEYRING:user:NAME` collections are key trees: the key
//!   poller ([`super::keys`]) follows them and hands each new walk to
//!   [`Collection::from_keyring`]. MIT keeps a collection in a keyring (`_krb` in the
//!   persistent keyring, `_krb_NAME` in `@user`) holding `krb_ccache:primary` (the primary
//!   cache's name) and one keyring per cache, each with `__krb5_princ__` and one key per
//!   ticket. `kinit` and `kinit -R` replace every key of a cache, so its fingerprint (the
//!   member serials and payload digests) changes; `kswitch` rewrites the primary key.
//! - `FILE:` caches and `DIR:` collections are files, followed with inotify on their
//!   directory ([`FileWatches`], on the same poller thread): a change is seen as soon as
//!   the file is written or renamed into place, not at the next poll. Every file is looked
//!   at with the caller's own credentials ([`crate::creds`]): first through an `O_PATH`
//!   handle, which opens nothing, and only a regular file of the caller's is then opened
//!   (`O_NOCTTY`, through that same inode) and read. A name that leads to a terminal, a
//!   device or a FIFO is never opened: a root daemon opening a terminal without a
//!   controlling one would take it as its own, and the terminal's owner could then stop it.
//! - `KEYRING:session:` and the other per-process anchors, `KCM:` and `MEMORY:` caches are
//!   refused with the reason: no other process can reach them.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hash, Hasher};
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Weak};

use nix::fcntl::OFlag;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use nix::sys::stat::Mode;
use tokio::sync::mpsc;
use watchd_proto::{FLAG_SNAPSHOT, RecordBuilder, RecordType, attr, krb5};

use crate::access;
use crate::creds::{self, FsCreds};
use crate::error::{Error, Result, Truncated};
use crate::event::{Change, Event, Fields};
use crate::hub::Hub;
use crate::identity::Caller;
use crate::options::Options;
use crate::sources::Source;
use crate::sources::keys::{
    Anchor, Command, Poller, RootId, RootLease, RootRequest, Tree, Waker, viewer_of,
};
use crate::sys::KeySerial;
use crate::watch::{Delivery, Kind, Scope, SubscriptionId};

/// The kind clients name in `AddWatch`.
pub const KIND: Kind = Kind("krb5");

/// The key naming a collection's primary cache.
pub const PRIMARY_KEY: &str = "krb_ccache:primary";
/// The key holding a cache's default principal.
pub const PRINCIPAL_KEY: &str = "__krb5_princ__";
/// The largest cache file read; bigger ones are taken as they are (changed, principal
/// unknown).
const MAX_CACHE_FILE: u64 = 1 << 20;

/// Where a keyring collection lives inside its anchor.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KeyringCollection {
    /// The collection keyring's description: `_krb` or `_krb_NAME`.
    pub keyring: String,
    /// What cache names start with: `KEYRING:persistent:1000:`.
    pub prefix: String,
    /// The watched name, for the records' `collection` attribute.
    pub name: String,
}

/// One cache as last seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheState {
    pub principal: String,
    /// Changes whenever the cache's credentials do.
    pub fingerprint: u64,
}

/// A collection (or a single cache) as last seen: caches by full name, and the primary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Collection {
    pub primary: Option<String>,
    pub caches: BTreeMap<String, CacheState>,
}

/// One credential-cache event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheChange {
    pub subtype: u8,
    pub cache: String,
    pub principal: String,
}

impl Collection {
    /// The collection inside the key tree under `root` (empty when there is none yet).
    pub fn from_keyring(tree: &Tree, root: KeySerial, spec: &KeyringCollection) -> Collection {
        let Some(keyring) = tree.child(root, "keyring", &spec.keyring) else {
            return Collection::default();
        };
        let serial = keyring.info.serial;
        let primary = tree
            .child(serial, "user", PRIMARY_KEY)
            .and_then(|k| k.content.as_deref())
            .and_then(decode_primary)
            .map(|name| format!("{}{name}", spec.prefix));
        let mut caches = BTreeMap::new();
        for member in keyring.children.iter().flatten() {
            let Some(cache) = tree.node(*member).filter(|n| n.info.is_keyring()) else {
                continue;
            };
            let principal = tree
                .child(*member, "user", PRINCIPAL_KEY)
                .and_then(|k| k.content.as_deref())
                .and_then(|p| parse_principal(p).map(|(name, _)| name))
                .unwrap_or_default();
            let mut hasher = std::hash::DefaultHasher::new();
            for key in cache.children.iter().flatten() {
                key.hash(&mut hasher);
                tree.node(*key).and_then(|n| n.digest).hash(&mut hasher);
            }
            caches.insert(
                format!("{}{}", spec.prefix, cache.info.description),
                CacheState {
                    principal,
                    fingerprint: hasher.finish(),
                },
            );
        }
        Collection { primary, caches }
    }

    /// The events that turn `self` into `new`: destroyed, created, changed, then the primary.
    pub fn diff(&self, new: &Collection) -> Vec<CacheChange> {
        let change = |subtype, cache: &str, state: &CacheState| CacheChange {
            subtype,
            cache: cache.to_owned(),
            principal: state.principal.clone(),
        };
        let mut out = Vec::new();
        for (name, state) in &self.caches {
            if !new.caches.contains_key(name) {
                out.push(change(krb5::DESTROYED, name, state));
            }
        }
        for (name, state) in &new.caches {
            match self.caches.get(name) {
                None => out.push(change(krb5::CREATED, name, state)),
                Some(old) if old != state => out.push(change(krb5::CHANGED, name, state)),
                Some(_) => {}
            }
        }
        if let (Some(_), Some(primary)) = (&self.primary, &new.primary)
            && self.primary.as_ref() != Some(primary)
            && let Some(state) = new.caches.get(primary)
        {
            out.push(change(krb5::PRIMARY, primary, state));
        }
        out
    }

    /// The state as SNAPSHOT events: each cache created, then the primary.
    pub fn snapshot(&self) -> Vec<CacheChange> {
        let mut out: Vec<CacheChange> = self
            .caches
            .iter()
            .map(|(name, state)| CacheChange {
                subtype: krb5::CREATED,
                cache: name.clone(),
                principal: state.principal.clone(),
            })
            .collect();
        if let Some(primary) = &self.primary
            && let Some(state) = self.caches.get(primary)
        {
            out.push(CacheChange {
                subtype: krb5::PRIMARY,
                cache: primary.clone(),
                principal: state.principal.clone(),
            });
        }
        out
    }
}

/// The cache name in a `krb_ccache:primary` payload (big-endian version 1, length, name).
pub fn decode_primary(payload: &[u8]) -> Option<String> {
    let word = |at: usize| {
        Some(u32::from_be_bytes(
            payload.get(at..at + 4)?.try_into().ok()?,
        ))
    };
    if word(0)? != 1 {
        return None;
    }
    let len = word(4)? as usize;
    String::from_utf8(payload.get(8..8 + len)?.to_vec()).ok()
}

/// A principal as MIT marshals it in version 3 and 4 caches (`__krb5_princ__`, and a
/// FILE cache after its header): big-endian name type, component count, the realm, then
/// the components, each a length and bytes. Returns "comp/comp@REALM" and the bytes used.
pub fn parse_principal(data: &[u8]) -> Option<(String, usize)> {
    let mut at = 0;
    let mut word = || {
        let w = u32::from_be_bytes(data.get(at..at + 4)?.try_into().ok()?);
        at += 4;
        Some(w)
    };
    let _name_type = word()?;
    let count = word()?;
    if count > 64 {
        return None;
    }
    let mut parts = Vec::new();
    for _ in 0..=count {
        let len = u32::from_be_bytes(data.get(at..at + 4)?.try_into().ok()?) as usize;
        at += 4;
        parts.push(String::from_utf8_lossy(data.get(at..at + len)?).into_owned());
        at += len;
    }
    let realm = parts.remove(0);
    Some((format!("{}@{realm}", parts.join("/")), at))
}

/// The default principal of a FILE cache (format version 3 or 4); `None` when the bytes
/// are not a cache (a file being written, or zeroed by kdestroy).
pub fn file_principal(data: &[u8]) -> Option<String> {
    let body = match data.get(..2)? {
        [5, 3] => data.get(2..)?,
        [5, 4] => {
            let header_len = u16::from_be_bytes(data.get(2..4)?.try_into().ok()?) as usize;
            data.get(4 + header_len..)?
        }
        _ => return None,
    };
    parse_principal(body).map(|(name, _)| name)
}

/// A credential-cache event as watches match it and records carry it.
#[derive(Debug)]
pub struct Krb5Change {
    /// The followed collection it happened in.
    pub collection: RootId,
    /// The watched name.
    pub name: String,
    pub change: CacheChange,
}

impl Change for Krb5Change {
    fn encode(&self, builder: &mut RecordBuilder, _: RecordType) {
        let mut f = Fields::new(builder);
        f.bytes(attr::CACHE, self.change.cache.as_bytes());
        f.bytes(attr::PRINCIPAL, self.change.principal.as_bytes());
        f.bytes(attr::COLLECTION, self.name.as_bytes());
        f.finish();
    }
}

impl Krb5Change {
    fn into_event(self, flags: u8) -> Event {
        Event::new(RecordType::Krb5, self.change.subtype, flags, Arc::new(self))
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

pub fn publish(hub: &Hub, collection: RootId, name: &str, change: CacheChange) {
    let change = Krb5Change {
        collection,
        name: name.to_owned(),
        change,
    };
    hub.publish(&change.into_event(0));
}

/// What keeps a krb5 watch's collection followed.
#[derive(Clone)]
pub enum Krb5Lease {
    Keyring(Arc<RootLease>),
    Files(Arc<FileLease>),
}

/// Which credential-cache events a watch covers.
#[derive(Clone)]
pub struct Krb5Scope {
    pub collection: RootId,
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

/// How a FILE cache or DIR collection is laid out in its directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileLayout {
    /// One cache file, reported under `cache`.
    File { file_name: String, cache: String },
    /// A DIR collection: `primary` names the primary `tkt*` file; caches are reported as
    /// `DIR::<dir>/<file>`.
    Dir { dir_path: String },
}

/// A file-based cache to follow: its directory, opened as the caller, and whose files count.
pub struct FileRequest {
    pub dir: OwnedFd,
    pub layout: FileLayout,
    /// Every file is opened, read and listed with these: the caller's own rights.
    pub reader: FsCreds,
    pub name: String,
}

/// Held by every watch on a file cache.
pub struct FileLease {
    pub id: RootId,
    wake: Waker,
}

impl Drop for FileLease {
    fn drop(&mut self) {
        self.wake.send(Command::ReleaseFiles(self.id));
    }
}

struct FileWatch {
    request: FileRequest,
    wd: WatchDescriptor,
    collection: Collection,
    _lease: Weak<FileLease>,
}

/// Every followed file cache, on one inotify instance.
pub struct FileWatches {
    inotify: Inotify,
    watches: HashMap<RootId, FileWatch>,
    digests: std::hash::RandomState,
}

impl FileWatches {
    pub fn new() -> std::io::Result<FileWatches> {
        Ok(FileWatches {
            inotify: Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?,
            watches: HashMap::new(),
            digests: std::hash::RandomState::new(),
        })
    }

    /// The inotify descriptor, for the poller's poll set.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.inotify.as_fd()
    }

    pub fn collection(&self, id: RootId) -> Option<(&Collection, &String)> {
        self.watches
            .get(&id)
            .map(|w| (&w.collection, &w.request.name))
    }

    pub fn add(&mut self, id: RootId, request: FileRequest, wake: Waker) -> Result<Arc<FileLease>> {
        // The directory was opened as the caller; the watch goes on that very inode.
        let path = format!("/proc/self/fd/{}", request.dir.as_raw_fd());
        let mask = AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_ATTRIB
            | AddWatchFlags::IN_ONLYDIR;
        let wd = self.inotify.add_watch(path.as_str(), mask).map_err(|e| {
            Error::Failed(format!(
                "cannot watch the directory of {}: {e}",
                request.name
            ))
        })?;
        let collection = read_collection(&request, &self.digests).unwrap_or_default();
        let lease = Arc::new(FileLease { id, wake });
        self.watches.insert(
            id,
            FileWatch {
                request,
                wd,
                collection,
                _lease: Arc::downgrade(&lease),
            },
        );
        Ok(lease)
    }

    pub fn release(&mut self, id: RootId) {
        let Some(watch) = self.watches.remove(&id) else {
            return;
        };
        // inotify gives one descriptor per inode: keep it while another cache uses it.
        if !self.watches.values().any(|w| w.wd == watch.wd) {
            let _ = self.inotify.rm_watch(watch.wd);
        }
    }

    /// Reads what inotify has, and re-reads every cache in a directory that changed.
    pub fn on_ready(&mut self, hub: &Hub) {
        let mut touched = Vec::new();
        while let Ok(events) = self.inotify.read_events() {
            if events.is_empty() {
                break;
            }
            touched.extend(events.into_iter().map(|e| e.wd));
        }
        let digests = &self.digests;
        for (id, watch) in self.watches.iter_mut() {
            if !touched.contains(&watch.wd) {
                continue;
            }
            let Some(new) = read_collection(&watch.request, digests) else {
                continue;
            };
            for change in watch.collection.diff(&new) {
                publish(hub, *id, &watch.request.name, change);
            }
            watch.collection = new;
        }
    }
}

/// What a name in a cache directory is, looked up as the caller through an `O_PATH` handle
/// (which opens nothing: no device is touched, no terminal is acquired).
enum Entry {
    Missing,
    /// A regular file of the caller's: the handle, to be opened as what it is.
    Cache(OwnedFd),
    /// Anything else: another user's file, a symlink, a device, a FIFO, a directory.
    Foreign,
}

/// Looks `name` up in the cache directory without following a symlink. Runs on a thread
/// wearing the caller's credentials ([`creds::run_as`]).
fn look_up(dir: &OwnedFd, name: &str, owner: u32) -> std::io::Result<Entry> {
    let handle = match nix::fcntl::openat(
        dir.as_fd(),
        name,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(handle) => handle,
        Err(nix::errno::Errno::ENOENT) => return Ok(Entry::Missing),
        Err(e) => return Err(e.into()),
    };
    let meta = std::fs::File::from(handle.try_clone()?).metadata()?;
    Ok(if meta.is_file() && meta.uid() == owner {
        Entry::Cache(handle)
    } else {
        Entry::Foreign
    })
}

/// A cache file's bytes, if `name` is a regular file of the caller's that the caller may
/// read. The file is opened through the very inode the `O_PATH` lookup checked (a swap in
/// between cannot put a terminal or a FIFO there), with `O_NOCTTY` all the same.
fn read_owned(dir: &OwnedFd, name: &str, owner: u32) -> Option<Vec<u8>> {
    let Entry::Cache(handle) = look_up(dir, name, owner).ok()? else {
        return None;
    };
    let fd = nix::fcntl::open(
        format!("/proc/self/fd/{}", handle.as_raw_fd()).as_str(),
        OFlag::O_RDONLY | OFlag::O_NOCTTY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let mut data = Vec::new();
    std::fs::File::from(fd)
        .take(MAX_CACHE_FILE)
        .read_to_end(&mut data)
        .ok()?;
    Some(data)
}

fn cache_state(data: &[u8], digests: &std::hash::RandomState) -> Option<CacheState> {
    let principal = file_principal(data)?;
    Some(CacheState {
        principal,
        fingerprint: digests.hash_one(data),
    })
}

/// The collection as the caller sees it now; `None` when it could not be looked at (it is
/// then taken as unchanged).
fn read_collection(request: &FileRequest, digests: &std::hash::RandomState) -> Option<Collection> {
    creds::run_as(&request.reader, || Ok(read_as_caller(request, digests)))
        .inspect_err(|e| tracing::warn!(cache = ?Truncated(&request.name), error = %e, "cannot read a credential cache as its owner"))
        .ok()
}

fn read_as_caller(request: &FileRequest, digests: &std::hash::RandomState) -> Collection {
    let owner = request.reader.uid;
    let read = |file: &str| read_owned(&request.dir, file, owner);
    let mut collection = Collection::default();
    match &request.layout {
        FileLayout::File { file_name, cache } => {
            if let Some(state) = read(file_name).and_then(|d| cache_state(&d, digests)) {
                collection.caches.insert(cache.clone(), state);
            }
        }
        FileLayout::Dir { dir_path } => {
            let name = |file: &str| format!("DIR::{}/{file}", dir_path.trim_end_matches('/'));
            let primary_file = read("primary")
                .and_then(|d| String::from_utf8(d).ok())
                .map(|p| p.trim().to_owned());
            collection.primary = primary_file.as_deref().map(name);
            // Listed as the caller: a directory it may search but not read shows only the
            // cache its primary names, as `ls` would show none.
            let files: Vec<String> = match nix::dir::Dir::openat(
                request.dir.as_fd(),
                ".",
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            ) {
                Ok(mut dir) => dir
                    .iter()
                    .filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().to_str().ok().map(str::to_owned))
                    .filter(|f| f.starts_with("tkt"))
                    .collect(),
                Err(_) => primary_file
                    .into_iter()
                    .filter(|f| f.starts_with("tkt") && !f.contains('/'))
                    .collect(),
            };
            for file in files {
                if let Some(state) = read(&file).and_then(|d| cache_state(&d, digests)) {
                    collection.caches.insert(name(&file), state);
                }
            }
        }
    }
    collection
}

/// Refuses, at AddWatch, a cache the caller could not read itself: a name that is there
/// but is not a regular file of the caller's (a terminal, a device, a symlink), or a
/// directory the caller may not search.
fn check_reachable(request: &FileRequest) -> Result<()> {
    let probe = match &request.layout {
        FileLayout::File { file_name, .. } => file_name.as_str(),
        FileLayout::Dir { .. } => "primary",
    };
    let uid = request.reader.uid;
    let shown = Truncated(&request.name);
    match creds::run_as(&request.reader, || look_up(&request.dir, probe, uid)) {
        Ok(Entry::Missing | Entry::Cache(_)) => Ok(()),
        Ok(Entry::Foreign) => Err(Error::invalid(format!(
            "cache '{shown}' is not a regular file of uid {uid}"
        ))),
        Err(e) if e.raw_os_error() == Some(libc::EACCES) => Err(Error::AccessDenied(format!(
            "uid {uid} may not reach cache '{shown}'"
        ))),
        Err(e) => Err(Error::Failed(format!(
            "cannot look at cache '{shown}': {e}"
        ))),
    }
}

/// What a cache name means to the daemon.
#[derive(Debug, PartialEq, Eq)]
pub enum Target {
    Keyring {
        anchor: Anchor,
        collection: KeyringCollection,
        only: Option<String>,
    },
    Files {
        dir: String,
        layout: FileLayout,
    },
}

/// Parses a credential-cache name as MIT krb5 would for the caller `uid`.
pub fn parse_cache_name(name: &str, uid: u32) -> Result<Target> {
    let shown = Truncated(name);
    let unsupported = |why: &str| Err(Error::NotSupported(format!("cache '{shown}': {why}")));
    let (kind, residual) = match name.split_once(':') {
        Some((kind, rest)) if !kind.contains('/') => (kind, rest),
        _ => ("FILE", name),
    };
    match kind {
        "KEYRING" => {
            let mut parts = residual.splitn(3, ':');
            let anchor = parts.next().unwrap_or_default();
            let collection = parts.next().unwrap_or_default();
            let subsidiary = parts.next().filter(|s| !s.is_empty());
            let (anchor, keyring, prefix) = match anchor {
                "persistent" => {
                    let owner = if collection.is_empty() {
                        uid
                    } else {
                        collection.parse::<u32>().map_err(|_| {
                            Error::invalid(format!(
                                "cache '{shown}': '{}' is not a uid",
                                Truncated(collection)
                            ))
                        })?
                    };
                    if owner != uid {
                        return Err(Error::AccessDenied(format!(
                            "cache '{shown}' belongs to uid {owner}, not to the caller (uid {uid})"
                        )));
                    }
                    (
                        Anchor::Persistent(uid),
                        "_krb".to_owned(),
                        format!("KEYRING:persistent:{uid}:"),
                    )
                }
                "user" if !collection.is_empty() => (
                    Anchor::User(uid),
                    format!("_krb_{collection}"),
                    format!("KEYRING:user:{collection}:"),
                ),
                "session" | "process" | "thread" | "legacy" => {
                    return unsupported(
                        "a session, process or thread keyring belongs to one process tree and \
                         no other process can reach it; use KEYRING:persistent: or KEYRING:user:",
                    );
                }
                _ => {
                    return unsupported(
                        "a legacy KEYRING: name lives in the session keyring, which no other \
                         process can reach; use KEYRING:persistent: or KEYRING:user:NAME",
                    );
                }
            };
            let only = subsidiary.map(|s| format!("{prefix}{s}"));
            Ok(Target::Keyring {
                anchor,
                collection: KeyringCollection {
                    keyring,
                    prefix,
                    name: name.to_owned(),
                },
                only,
            })
        }
        "FILE" => file_target(name, residual, name),
        "DIR" => match residual.strip_prefix(':') {
            Some(file) => file_target(name, file, name),
            None => {
                absolute(name, residual)?;
                Ok(Target::Files {
                    dir: residual.to_owned(),
                    layout: FileLayout::Dir {
                        dir_path: residual.to_owned(),
                    },
                })
            }
        },
        "KCM" => unsupported(
            "KCM caches live inside the KCM daemon (sssd-kcm), which no file or key shows; \
             not supported",
        ),
        "MEMORY" | "MSLSA" | "API" => {
            unsupported("the cache lives inside one process; no other process can watch it")
        }
        other => Err(Error::invalid(format!(
            "cache '{shown}': unknown cache type '{}' (KEYRING, FILE, DIR, KCM, MEMORY)",
            Truncated(other)
        ))),
    }
}

fn absolute(name: &str, path: &str) -> Result<()> {
    if path.starts_with('/') {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "cache '{}': the path must be absolute",
            Truncated(name)
        )))
    }
}

fn file_target(name: &str, path: &str, cache: &str) -> Result<Target> {
    absolute(name, path)?;
    let (dir, file) = path.rsplit_once('/').expect("absolute");
    if file.is_empty() || file == "." || file == ".." {
        return Err(Error::invalid(format!(
            "cache '{}' names a directory, not a file",
            Truncated(name)
        )));
    }
    Ok(Target::Files {
        dir: if dir.is_empty() {
            "/".into()
        } else {
            dir.into()
        },
        layout: FileLayout::File {
            file_name: file.to_owned(),
            cache: cache.to_owned(),
        },
    })
}

/// The krb5 configuration files MIT would read: `$KRB5_CONFIG` (a colon-separated list)
/// of the daemon, else `/etc/krb5.conf`.
fn config_files() -> Vec<String> {
    match std::env::var("KRB5_CONFIG") {
        Ok(list) if !list.is_empty() => list.split(':').map(str::to_owned).collect(),
        _ => vec!["/etc/krb5.conf".into()],
    }
}

/// `[libdefaults] default_ccache_name` from krb5.conf text, unexpanded.
pub fn default_ccache_name(text: &str) -> Option<String> {
    let mut in_libdefaults = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_libdefaults = line.trim_end_matches('*') == "[libdefaults]";
            continue;
        }
        if !in_libdefaults {
            continue;
        }
        if let Some((key, value)) = line.split_once('=')
            && key.trim() == "default_ccache_name"
        {
            return Some(value.trim().to_owned());
        }
    }
    None
}

/// Expands MIT's `%{…}` tokens for `uid`.
pub fn expand(template: &str, uid: u32) -> Result<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(at) = rest.find("%{") {
        out.push_str(&rest[..at]);
        let end = rest[at..].find('}').ok_or_else(|| {
            Error::Failed(format!(
                "default_ccache_name '{template}' has an unclosed %{{"
            ))
        })? + at;
        match &rest[at + 2..end] {
            "uid" | "euid" | "USERID" => out.push_str(&uid.to_string()),
            "TEMP" => out.push_str("/tmp"),
            "null" => {}
            token => {
                return Err(Error::Failed(format!(
                    "cannot expand %{{{token}}} in default_ccache_name '{template}'; pass the \
                     cache option"
                )));
            }
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The cache MIT krb5 would use for `uid` when KRB5CCNAME is unset.
pub fn default_cache(uid: u32) -> Result<String> {
    let configured = config_files()
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .find_map(|text| default_ccache_name(&text));
    expand(
        configured.as_deref().unwrap_or("FILE:/tmp/krb5cc_%{uid}"),
        uid,
    )
}

/// The `krb5` kind.
pub struct Krb5Source {
    poller: Arc<Poller>,
    signals: SignalSink,
}

impl Krb5Source {
    pub fn new(poller: Arc<Poller>, signals: SignalSink) -> Arc<Krb5Source> {
        Arc::new(Krb5Source { poller, signals })
    }
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
                let lease = self.poller.register(RootRequest {
                    anchor,
                    viewer: viewer_of(caller, true)?,
                    nested: true,
                    collection: Some(collection),
                })?;
                (lease.id, only, Krb5Lease::Keyring(lease))
            }
            Target::Files { dir, layout } => {
                let dir = access::open_path(caller, &dir)?;
                let (gid, groups) = access::CallerProcess::new(caller)?.fs_groups()?;
                let request = FileRequest {
                    dir,
                    layout,
                    reader: FsCreds {
                        uid: caller.uid.0,
                        gid,
                        groups,
                    },
                    name: name.clone(),
                };
                check_reachable(&request)?;
                let lease = self.poller.watch_files(request)?;
                (lease.id, None, Krb5Lease::Files(lease))
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
        let registry = self.poller.lock();
        let (collection, name) = match registry.collection(scope.collection) {
            Some(found) => found,
            None => return then(&[]),
        };
        let events: Vec<Event> = collection
            .snapshot()
            .into_iter()
            .map(|change| {
                Krb5Change {
                    collection: scope.collection,
                    name: name.clone(),
                    change,
                }
                .into_event(FLAG_SNAPSHOT)
            })
            .collect();
        then(&events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_names_resolve_like_mit_krb5() {
        let t = parse_cache_name("KEYRING:persistent:1000", 1000).unwrap();
        assert!(
            matches!(&t, Target::Keyring { anchor: Anchor::Persistent(1000), collection, only: None }
            if collection.keyring == "_krb" && collection.prefix == "KEYRING:persistent:1000:")
        );
        let t = parse_cache_name("KEYRING:persistent:1000:krb_ccache_X", 1000).unwrap();
        assert!(
            matches!(&t, Target::Keyring { only: Some(o), .. } if o == "KEYRING:persistent:1000:krb_ccache_X")
        );
        let t = parse_cache_name("KEYRING:user:work", 1000).unwrap();
        assert!(
            matches!(&t, Target::Keyring { anchor: Anchor::User(1000), collection, .. } if collection.keyring == "_krb_work")
        );
        assert!(matches!(
            parse_cache_name("KEYRING:persistent:1001", 1000),
            Err(Error::AccessDenied(_))
        ));
        for refused in [
            "KEYRING:session:x",
            "KEYRING:foo",
            "KCM:",
            "KCM:1000",
            "MEMORY:x",
        ] {
            assert!(
                matches!(parse_cache_name(refused, 1000), Err(Error::NotSupported(_))),
                "{refused}"
            );
        }
        assert_eq!(
            parse_cache_name("FILE:/tmp/krb5cc_1000", 1000).unwrap(),
            Target::Files {
                dir: "/tmp".into(),
                layout: FileLayout::File {
                    file_name: "krb5cc_1000".into(),
                    cache: "FILE:/tmp/krb5cc_1000".into()
                }
            }
        );
        assert!(matches!(
            parse_cache_name("/tmp/x", 1000),
            Ok(Target::Files { .. })
        ));
        assert!(matches!(
            parse_cache_name("DIR:/run/user/1000/krb5cc", 1000),
            Ok(Target::Files {
                layout: FileLayout::Dir { .. },
                ..
            })
        ));
        assert!(matches!(
            parse_cache_name("FILE:relative", 1000),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            parse_cache_name("BOGUS:x", 1000),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn default_ccache_name_is_read_from_libdefaults_and_expanded() {
        let conf = "[realms]\n default_ccache_name = nope\n[libdefaults]\n default_realm = X\n default_ccache_name = KEYRING:persistent:%{uid}\n";
        let name = default_ccache_name(conf).unwrap();
        assert_eq!(expand(&name, 1000).unwrap(), "KEYRING:persistent:1000");
        assert_eq!(
            expand("FILE:%{TEMP}/krb5cc_%{uid}", 7).unwrap(),
            "FILE:/tmp/krb5cc_7"
        );
        assert!(expand("FILE:/home/%{username}/cc", 7).is_err());
        assert_eq!(
            default_ccache_name("[libdefaults]\n default_realm = X\n"),
            None
        );
    }

    fn marshal(parts: &[&str], realm: &str) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(1u32.to_be_bytes());
        out.extend((parts.len() as u32).to_be_bytes());
        for s in std::iter::once(&realm).chain(parts) {
            out.extend((s.len() as u32).to_be_bytes());
            out.extend(s.as_bytes());
        }
        out
    }

    #[test]
    fn principals_and_primary_names_decode() {
        let p = marshal(&["alice"], "WATCHD.TEST");
        assert_eq!(parse_principal(&p).unwrap().0, "alice@WATCHD.TEST");
        let p = marshal(&["HTTP", "host.example"], "R");
        assert_eq!(parse_principal(&p).unwrap().0, "HTTP/host.example@R");
        assert!(parse_principal(&p[..p.len() - 1]).is_none());
        let mut file = vec![5, 4, 0, 0];
        file.extend(marshal(&["bob"], "R"));
        assert_eq!(file_principal(&file).as_deref(), Some("bob@R"));
        assert_eq!(file_principal(&[0; 64]), None, "a zeroed file is no cache");
        let mut primary = 1u32.to_be_bytes().to_vec();
        primary.extend(4u32.to_be_bytes());
        primary.extend(b"1000");
        assert_eq!(decode_primary(&primary).as_deref(), Some("1000"));
    }

    #[test]
    fn collection_changes_become_cache_events() {
        let state = |p: &str, f| CacheState {
            principal: p.into(),
            fingerprint: f,
        };
        let a = Collection {
            primary: Some("c1".into()),
            caches: BTreeMap::from([("c1".into(), state("alice@R", 1))]),
        };
        assert_eq!(
            Collection::default()
                .diff(&a)
                .iter()
                .map(|c| c.subtype)
                .collect::<Vec<_>>(),
            vec![krb5::CREATED],
            "a first kinit makes a cache, and no primary switch"
        );
        let renewed = Collection {
            caches: BTreeMap::from([("c1".into(), state("alice@R", 2))]),
            ..a.clone()
        };
        assert_eq!(a.diff(&renewed)[0].subtype, krb5::CHANGED);
        let second = Collection {
            primary: Some("c2".into()),
            caches: BTreeMap::from([
                ("c1".into(), state("alice@R", 1)),
                ("c2".into(), state("bob@R", 5)),
            ]),
        };
        let changes = a.diff(&second);
        assert_eq!(
            changes
                .iter()
                .map(|c| (c.subtype, c.cache.as_str(), c.principal.as_str()))
                .collect::<Vec<_>>(),
            vec![
                (krb5::CREATED, "c2", "bob@R"),
                (krb5::PRIMARY, "c2", "bob@R")
            ]
        );
        assert_eq!(
            second
                .diff(&Collection::default())
                .iter()
                .map(|c| c.subtype)
                .collect::<Vec<_>>(),
            vec![krb5::DESTROYED, krb5::DESTROYED]
        );
    }
}
