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
//! or chown takes effect at the next walk.
#![forbid(unsafe_code)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::{CStr, CString};
use std::hash::BuildHasher;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, Weak, mpsc};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use watchd_proto::{FLAG_SNAPSHOT, RecordBuilder, RecordType, attr, key, meta};

use crate::access;
use crate::error::{Error, Result};
use crate::event::{Change, Event, Fields};
use crate::hub::Hub;
use crate::identity::Caller;
use crate::options::Options;
use crate::sources::Source;
use crate::sources::key_queue::{KeyQueue, QueueRecord};
use crate::sources::krb5::{self, FileWatches, KeyringCollection};
use crate::sys::{self, KeySerial};
use crate::watch::{Kind, Scope};

/// The kind clients name in `AddWatch`.
pub const KIND: Kind = Kind("keys");

/// The group of a user the system does not know (`nogroup`).
const NOGROUP: u32 = 65534;
/// Permission bit View, in each of the four permission bytes.
const KEY_VIEW: u32 = 0x01;
/// Group permissions: all six bits of the group byte.
const KEY_GROUP_ALL: u32 = 0x3f00;
/// Notes the watch queue holds before the kernel drops some (and says so): its maximum.
const QUEUE_NOTES: u32 = sys::WATCH_QUEUE_MAX_NOTES;
/// Most keys one tree walk visits: a watch on a huge keyring costs a bounded amount.
pub const MAX_TREE_KEYS: usize = 4096;
/// Payloads MIT krb5 keeps its collection's bookkeeping in: kept whole (they hold names,
/// not secrets) so that credential-cache events can name the cache and principal.
const KEPT_PAYLOADS: [&str; 2] = [krb5::PRIMARY_KEY, krb5::PRINCIPAL_KEY];

/// One key as `KEYCTL_DESCRIBE` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    pub serial: KeySerial,
    pub key_type: String,
    pub uid: u32,
    pub gid: u32,
    pub perm: u32,
    pub description: String,
}

impl KeyInfo {
    /// Parses "type;uid;gid;perm;description" (the description may itself contain ';').
    pub fn parse(serial: KeySerial, text: &[u8]) -> Option<KeyInfo> {
        Described::parse(text).map(|d| d.into_info(serial))
    }

    /// What a key that can no longer be described is known by.
    fn unknown(serial: KeySerial) -> KeyInfo {
        KeyInfo {
            serial,
            key_type: String::new(),
            uid: u32::MAX,
            gid: u32::MAX,
            perm: 0,
            description: String::new(),
        }
    }

    pub fn is_keyring(&self) -> bool {
        self.key_type == "keyring"
    }
}

/// `KEYCTL_DESCRIBE`'s answer, borrowed from the buffer: comparing it with what is known
/// costs no allocation.
#[derive(PartialEq, Eq)]
struct Described<'a> {
    key_type: &'a str,
    uid: u32,
    gid: u32,
    perm: u32,
    description: &'a str,
}

impl<'a> Described<'a> {
    fn parse(text: &'a [u8]) -> Option<Described<'a>> {
        let text = std::str::from_utf8(text).ok()?;
        let mut fields = text.splitn(5, ';');
        Some(Described {
            key_type: fields.next()?,
            uid: fields.next()?.parse().ok()?,
            gid: fields.next()?.parse().ok()?,
            perm: u32::from_str_radix(fields.next()?, 16).ok()?,
            description: fields.next()?,
        })
    }

    fn of(info: &'a KeyInfo) -> Described<'a> {
        Described {
            key_type: &info.key_type,
            uid: info.uid,
            gid: info.gid,
            perm: info.perm,
            description: &info.description,
        }
    }

    fn into_info(self, serial: KeySerial) -> KeyInfo {
        KeyInfo {
            serial,
            key_type: self.key_type.to_owned(),
            uid: self.uid,
            gid: self.gid,
            perm: self.perm,
            description: self.description.to_owned(),
        }
    }
}

/// Whose eyes a watch sees keys with: the kernel's `key_task_permission`, less the
/// possession the daemon cannot know the caller has, which `possessor` stands for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Viewer {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    /// The watch is on the caller's own keyring (or set by an administrator), whose keys
    /// the caller possesses: possessor permissions count.
    pub possessor: bool,
}

impl Viewer {
    pub fn may_view(&self, key: &KeyInfo) -> bool {
        let perm = key.perm;
        let mut granted = if key.uid == self.uid {
            perm >> 16
        } else if perm & KEY_GROUP_ALL != 0
            && (key.gid == self.gid || self.groups.contains(&key.gid))
        {
            perm >> 8
        } else {
            perm
        };
        if self.possessor {
            granted |= perm >> 24;
        }
        granted & KEY_VIEW != 0
    }
}

/// A key that is still listed but cannot be used: not yet instantiated, negative,
/// invalidated (until the garbage collector unlinks it), revoked or expired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    Live,
    /// Under construction: `request_key(2)` made and linked it, and its request-key helper
    /// has not instantiated it yet. Reading it would wait for the helper ([`Pending`]), so
    /// it is described but neither read, held nor watched until a retry finds it done.
    Pending,
    Revoked,
    Unavailable,
}

impl Condition {
    /// Live or still under construction: its changes are reported, its loss too.
    fn is_usable(self) -> bool {
        matches!(self, Condition::Live | Condition::Pending)
    }
}

/// One key of a walked tree.
#[derive(Clone, Debug)]
pub struct Node {
    pub info: Arc<KeyInfo>,
    pub condition: Condition,
    /// A keyed digest of the payload, for keys the walk may read.
    pub digest: Option<u64>,
    /// The payload itself, only for the krb5 bookkeeping keys (`KEPT_PAYLOADS`).
    pub content: Option<Arc<[u8]>>,
    /// A keyring's members, for keyrings the walk may read.
    pub children: Option<Vec<KeySerial>>,
}

/// A watched key and, for nested watches, everything below it, as one walk found it.
#[derive(Clone, Debug, Default)]
pub struct Tree {
    pub nodes: HashMap<KeySerial, Node>,
    /// Walk order: the root first, then breadth first.
    pub order: Vec<KeySerial>,
}

impl Tree {
    pub fn node(&self, serial: KeySerial) -> Option<&Node> {
        self.nodes.get(&serial)
    }

    /// The keyring `parent`'s member keyring or key with this type and description.
    pub fn child(&self, parent: KeySerial, key_type: &str, description: &str) -> Option<&Node> {
        self.node(parent)?
            .children
            .as_ref()?
            .iter()
            .filter_map(|c| self.node(*c))
            .find(|n| n.info.key_type == key_type && n.info.description == description)
    }
}

/// What `KEYCTL_DESCRIBE` says of a key that has gone from where it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// Still alive somewhere: it was unlinked.
    Alive,
    /// No longer usable (ENOKEY, EKEYREVOKED, EKEYEXPIRED).
    Gone,
}

/// One notification, in the kernel's terms: about `key`, with `aux` for (un)links.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub subtype: u8,
    pub key: Arc<KeyInfo>,
    pub aux: Option<KeySerial>,
}

/// The notifications that turn tree `old` into tree `new`. `probe` tells what became of a
/// key that left a keyring; `held` whether the poller held a link to it (then a gone key
/// was invalidated, since our link would otherwise keep it alive).
pub fn diff(
    old: &Tree,
    new: &Tree,
    probe: &mut dyn FnMut(KeySerial) -> Probe,
    held: &dyn Fn(KeySerial) -> bool,
) -> Vec<Notice> {
    let mut out = Vec::new();
    let notice = |subtype, key: &Arc<KeyInfo>, aux| Notice {
        subtype,
        key: key.clone(),
        aux,
    };
    for serial in &new.order {
        let n = &new.nodes[serial];
        let Some(o) = old.nodes.get(serial) else {
            continue;
        };
        match (o.condition, n.condition) {
            (Condition::Unavailable | Condition::Pending, Condition::Live) => {
                out.push(notice(key::INSTANTIATED, &n.info, None))
            }
            (Condition::Live | Condition::Pending, Condition::Revoked) => {
                out.push(notice(key::REVOKED, &n.info, None))
            }
            (Condition::Live | Condition::Pending, Condition::Unavailable) => {
                out.push(notice(key::INVALIDATED, &n.info, None))
            }
            _ => {}
        }
        if o.condition.is_usable() && n.condition.is_usable() {
            if (o.info.uid, o.info.gid, o.info.perm) != (n.info.uid, n.info.gid, n.info.perm) {
                out.push(notice(key::SETATTR, &n.info, None));
            }
            if o.digest.is_some() && n.digest.is_some() && o.digest != n.digest {
                out.push(notice(key::UPDATED, &n.info, None));
            }
        }
        let (Some(was), Some(now)) = (&o.children, &n.children) else {
            continue;
        };
        if was == now {
            continue;
        }
        let now_set: HashSet<_> = now.iter().collect();
        let was_set: HashSet<_> = was.iter().collect();
        let mut unlinked = Vec::new();
        for child in was.iter().filter(|c| !now_set.contains(c)) {
            let before = old.nodes.get(child);
            if before.is_some_and(|b| !b.condition.is_usable()) {
                // Already reported (revoked, invalidated): the collector just tidied up.
                continue;
            }
            match probe(*child) {
                Probe::Gone if held(*child) => {
                    let info = before
                        .map_or_else(|| Arc::new(KeyInfo::unknown(*child)), |b| b.info.clone());
                    out.push(notice(key::INVALIDATED, &info, None));
                }
                _ => unlinked.push(*child),
            }
        }
        if now.is_empty() && unlinked.len() >= 2 && unlinked.len() == was.len() {
            out.push(notice(key::CLEARED, &n.info, None));
        } else {
            for child in unlinked {
                out.push(notice(key::UNLINKED, &n.info, Some(child)));
            }
        }
        for child in now.iter().filter(|c| !was_set.contains(c)) {
            out.push(notice(key::LINKED, &n.info, Some(*child)));
        }
    }
    out
}

/// The state of a tree as SNAPSHOT notices: each key instantiated, then each keyring's links.
pub fn snapshot(tree: &Tree) -> Vec<Notice> {
    let live = |s: &KeySerial| tree.nodes.get(s).filter(|n| n.condition == Condition::Live);
    let mut out: Vec<Notice> = tree
        .order
        .iter()
        .filter_map(live)
        .map(|n| Notice {
            subtype: key::INSTANTIATED,
            key: n.info.clone(),
            aux: None,
        })
        .collect();
    for node in tree.order.iter().filter_map(live) {
        for child in node.children.iter().flatten() {
            out.push(Notice {
                subtype: key::LINKED,
                key: node.info.clone(),
                aux: Some(*child),
            });
        }
    }
    out
}

/// Names a followed root (and, for krb5 watches, its collection) for as long as it lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RootId(pub u64);

/// A key event as watches match it and records carry it.
#[derive(Debug)]
pub struct KeyChange {
    pub root: RootId,
    /// The serial the watch named (its root).
    pub watched: KeySerial,
    pub notice: Notice,
}

impl Change for KeyChange {
    fn encode(&self, builder: &mut RecordBuilder, record_type: RecordType) {
        let key = &self.notice.key;
        let mut f = Fields::new(builder);
        f.u32(attr::KEY_ID, key.serial.0 as u32);
        if let Some(aux) = self.notice.aux {
            f.u32(attr::AUX, aux.0 as u32);
        }
        f.u32(attr::WATCHED_KEY, self.watched.0 as u32);
        if record_type == RecordType::Meta {
            f.bytes(attr::OBJECT, format!("key {}", self.watched).as_bytes());
            f.bytes(attr::REASON, b"the watched key is gone");
        } else {
            f.u32(attr::KEY_UID, key.uid);
            f.u32(attr::KEY_GID, key.gid);
            f.u32(attr::PERM, key.perm);
            f.bytes(attr::KEY_TYPE, key.key_type.as_bytes());
            f.bytes(attr::DESCRIPTION, key.description.as_bytes());
        }
        f.finish();
    }
}

/// Which key a watch names, before it is looked up.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Anchor {
    /// `@user` of this uid.
    User(u32),
    /// `@user-session` of this uid.
    UserSession(u32),
    /// `@persistent` of this uid.
    Persistent(u32),
    /// A key by serial.
    Serial(KeySerial),
}

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

/// What a root is: the anchor it follows, whose eyes it sees with, how deep, and for krb5
/// watches the collection inside it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RootRequest {
    pub anchor: Anchor,
    pub viewer: Viewer,
    pub nested: bool,
    pub collection: Option<KeyringCollection>,
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

/// Held by every watch on a root; when the last one goes, the poller drops the root.
pub struct RootLease {
    pub id: RootId,
    pub serial: KeySerial,
    wake: Waker,
}

impl Drop for RootLease {
    fn drop(&mut self) {
        // This runs under the hub's lock (a watch being removed), so it only posts a note.
        self.wake.send(Command::Release(self.id));
    }
}

/// Posts commands to the poller thread and wakes it.
#[derive(Clone)]
pub struct Waker {
    commands: mpsc::Sender<Command>,
    pipe: Arc<OwnedFd>,
}

impl Waker {
    pub fn send(&self, command: Command) {
        if self.commands.send(command).is_ok() {
            // A full pipe already holds a wake-up.
            let _ = nix::unistd::write(&*self.pipe, &[1]);
        }
    }
}

/// Work for the poller thread, which alone possesses what it has linked.
pub enum Command {
    Register {
        request: RootRequest,
        reply: mpsc::SyncSender<Result<Arc<RootLease>>>,
    },
    Release(RootId),
    WatchFiles {
        request: krb5::FileRequest,
        reply: mpsc::SyncSender<Result<Arc<krb5::FileLease>>>,
    },
    ReleaseFiles(RootId),
}

/// The credentials the poller thread has taken, to switch only when they change.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ThreadCreds {
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
}

impl ThreadCreds {
    fn root() -> ThreadCreds {
        ThreadCreds {
            uid: 0,
            gid: 0,
            groups: Vec::new(),
        }
    }

    fn of(viewer: &Viewer) -> ThreadCreds {
        ThreadCreds {
            uid: viewer.uid,
            gid: viewer.gid,
            groups: viewer.groups.clone(),
        }
    }
}

/// One followed root.
struct Root {
    request: RootRequest,
    serial: KeySerial,
    lease: Weak<RootLease>,
    tree: Tree,
    /// The keyring that gives the thread possession of this tree while it walks it.
    walk_ring: WalkRing,
    /// The links `walk_ring` holds to keys of this tree.
    holds: Holds,
    /// Keys of this tree the kernel's watch queue reports on for it.
    queued: HashSet<KeySerial>,
    /// Polled at the interval although a watch queue runs: a key of the tree could not be
    /// watched (the kernel caps a user's watches at its open-file limit).
    polled: bool,
    /// Updates and setattrs the last comparison published before the kernel's notes of them
    /// were read: those notes are not published again.
    echoes: Vec<(KeySerial, u8)>,
    /// The root key is gone: REMOVAL was sent, nothing more to poll.
    gone: bool,
    /// The last walk found keys under construction ([`Condition::Pending`]): the root is
    /// walked at the interval although a watch queue runs, since the kernel notes a key's
    /// instantiation only to watchers of that key, which it cannot have yet.
    pending: bool,
    /// For krb5 watches: the collection as last seen.
    collection: krb5::Collection,
}

/// Everything the poller follows. Lock order: this, then the hub.
pub struct Registry {
    roots: HashMap<RootId, Root>,
    by_request: HashMap<RootRequest, RootId>,
    pub files: FileWatches,
    next_id: u64,
}

impl Registry {
    /// A followed credential-cache collection, keyring or file, and its watched name.
    pub fn collection(&self, id: RootId) -> Option<(&krb5::Collection, &String)> {
        match self.roots.get(&id) {
            Some(root) => root
                .request
                .collection
                .as_ref()
                .map(|spec| (&root.collection, &spec.name)),
            None => self.files.collection(id),
        }
    }

    pub fn allocate_id(&mut self) -> RootId {
        self.next_id += 1;
        RootId(self.next_id)
    }
}

/// The poller: one thread for every key and credential-cache watch.
pub struct Poller {
    pub registry: Mutex<Registry>,
    waker: Waker,
    interval: Duration,
    /// The kernel's watch queue tells of changes; the interval is only for keys it could
    /// not watch.
    queue_backed: bool,
}

/// Everything only the poller thread touches.
struct ThreadState {
    creds: ThreadCreds,
    /// The unsearchable keyring that keeps every root's [`WalkRing`] alive.
    store: KeySerial,
    /// The walk ring linked into the thread keyring now.
    possessed: Option<KeySerial>,
    /// The kernel's watch queue, where the kernel has one.
    queue: Option<KeyQueue>,
    /// The roots each key is watched in the queue for.
    queue_owners: HashMap<KeySerial, HashSet<RootId>>,
    buf: Vec<u8>,
    digests: std::hash::RandomState,
    wake_read: OwnedFd,
    commands: mpsc::Receiver<Command>,
    /// Cuts a wait for a key under construction short ([`ThreadState::arm`]); `None` where
    /// the timer could not be made (then such a read waits, as it would without one).
    cutter: Option<sys::ThreadTimer>,
    /// Keys whose read was cut short: under construction when last tried.
    pending: HashMap<KeySerial, Pending>,
    /// A pending key was tried again in this pass: no other one is.
    retry_spent: bool,
    /// The first wait before a pending key is tried again: the poll interval.
    first_retry: Duration,
}

/// How long a read of a key under construction may wait for its request-key helper before
/// the thread's timer cuts it short. A read of any other key never sleeps that way, so
/// this bounds a pass's delay per key under construction met, not the pass.
const CUT_AFTER: Duration = Duration::from_millis(20);
/// The longest wait before a key still under construction is tried again.
const RETRY_AT_MOST: Duration = Duration::from_secs(60);

/// A key found under construction, and when to try reading it again (the wait doubles
/// each time it is still not done, from the poll interval to [`RETRY_AT_MOST`]).
struct Pending {
    next_try: Instant,
    wait: Duration,
}

/// What a guarded `KEYCTL_READ` gave.
enum Read {
    /// The payload (or a keyring's list) is `buf[..len]`.
    Done(usize),
    /// Refused or failed, as a read of any key can be.
    Failed,
    /// The key is under construction: not read (this pass), nothing waited for it.
    Pending,
}

impl Poller {
    /// Starts the thread and its thread keyring.
    pub fn start(hub: Arc<Hub>, interval: Duration) -> io::Result<Arc<Poller>> {
        let queue = match KeyQueue::open(QUEUE_NOTES) {
            Ok(queue) => {
                allow_key_watches();
                Some(queue)
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOPKG) => None,
            Err(e) => {
                tracing::warn!(error = %e, "the kernel has watch queues but one cannot be opened; polling keys instead");
                None
            }
        };
        let (wake_read, wake_write) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(io::Error::from)?;
        let (commands, receiver) = mpsc::channel();
        let poller = Arc::new(Poller {
            registry: Mutex::new(Registry {
                roots: HashMap::new(),
                by_request: HashMap::new(),
                files: FileWatches::new()?,
                next_id: 0,
            }),
            waker: Waker {
                commands,
                pipe: Arc::new(wake_write),
            },
            interval,
            queue_backed: queue.is_some(),
        });
        let (ready_tx, ready) = mpsc::sync_channel(1);
        let thread_poller = poller.clone();
        std::thread::Builder::new()
            .name("keys".into())
            .spawn(move || {
                let store = make_store();
                let _ = ready_tx.send(store.as_ref().map(drop).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("cannot make the key thread's keyrings: {e}"),
                    )
                }));
                let Ok(store) = store else {
                    return;
                };
                let cutter = sys::install_interrupt_handler(sys::key_thread_signal())
                    .and_then(|()| sys::ThreadTimer::new(sys::key_thread_signal()));
                let cutter = cutter
                    .inspect_err(|e| tracing::warn!(error = %e, "cannot make the key thread's timer: a key under construction can stall every key watch until its request-key helper finishes"))
                    .ok();
                let state = ThreadState {
                    cutter,
                    pending: HashMap::new(),
                    retry_spent: false,
                    first_retry: interval,
                    creds: ThreadCreds::root(),
                    store,
                    possessed: None,
                    queue,
                    queue_owners: HashMap::new(),
                    buf: Vec::with_capacity(4096),
                    digests: std::hash::RandomState::new(),
                    wake_read,
                    commands: receiver,
                };
                thread_poller.run(&hub, state);
            })?;
        ready
            .recv()
            .map_err(|_| io::Error::other("the key thread did not start"))??;
        Ok(poller)
    }

    /// How key changes are found, for `watchctl status`.
    pub fn backend(&self) -> String {
        if self.queue_backed {
            "the kernel's watch queue".into()
        } else {
            format!(
                "a poll every {} ms (this kernel has no watch queues)",
                self.interval.as_millis()
            )
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().expect("key registry poisoned")
    }

    pub fn waker(&self) -> Waker {
        self.waker.clone()
    }

    /// Follows `request`'s root (shared with watches asking the same), linking it first.
    pub fn register(&self, request: RootRequest) -> Result<Arc<RootLease>> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.waker.send(Command::Register { request, reply });
        answer
            .recv()
            .map_err(|_| Error::Failed("the key source has stopped".into()))?
    }

    pub fn watch_files(&self, request: krb5::FileRequest) -> Result<Arc<krb5::FileLease>> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.waker.send(Command::WatchFiles { request, reply });
        answer
            .recv()
            .map_err(|_| Error::Failed("the key source has stopped".into()))?
    }

    /// Calls `then` with the root's keys as SNAPSHOT events, the registry held still.
    pub fn with_root<T>(
        &self,
        id: RootId,
        then: impl FnOnce(Option<(&Tree, &krb5::Collection, KeySerial)>) -> T,
    ) -> T {
        let registry = self.lock();
        then(
            registry
                .roots
                .get(&id)
                .map(|r| (&r.tree, &r.collection, r.serial)),
        )
    }

    fn run(&self, hub: &Hub, mut state: ThreadState) {
        let mut next_tick = Instant::now() + self.interval;
        let inotify = match self.lock().files.fd().try_clone_to_owned() {
            Ok(fd) => fd,
            Err(e) => {
                tracing::error!(error = %e, "key poller cannot start; key watches stop");
                return;
            }
        };
        loop {
            // The thread sleeps until something happens unless a root is polled: every root
            // without a watch queue, with one only a root whose keys it could not watch.
            let ticking = self.lock().roots.values().any(|r| self.ticks(r));
            let timeout = if ticking {
                let wait = next_tick.saturating_duration_since(Instant::now());
                PollTimeout::try_from(wait.as_millis().min(60_000) as u32 + 1)
                    .unwrap_or(PollTimeout::MAX)
            } else {
                PollTimeout::NONE
            };
            let ready = |fd: &PollFd| fd.revents().is_some_and(|r| r.contains(PollFlags::POLLIN));
            let mut fds = vec![
                PollFd::new(state.wake_read.as_fd(), PollFlags::POLLIN),
                PollFd::new(inotify.as_fd(), PollFlags::POLLIN),
            ];
            if let Some(queue) = &state.queue {
                fds.push(PollFd::new(queue.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, timeout) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    tracing::error!(error = %e, "key poller cannot poll; key watches stop");
                    return;
                }
            }
            let files_ready = ready(&fds[1]);
            let notes_ready = fds.get(2).is_some_and(ready);
            drop(fds);
            let mut drain = [0u8; 64];
            while matches!(nix::unistd::read(&state.wake_read, &mut drain), Ok(n) if n > 0) {}
            while let Ok(command) = state.commands.try_recv() {
                self.handle(&mut state, command);
            }
            if files_ready {
                self.lock().files.on_ready(hub);
            }
            if notes_ready {
                self.on_notes(hub, &mut state);
            }
            if !ticking {
                next_tick = Instant::now() + self.interval;
            } else if Instant::now() >= next_tick {
                self.tick(hub, &mut state);
                next_tick += self.interval;
                let now = Instant::now();
                if next_tick < now {
                    // A tick that ran long skips the ticks it overlapped.
                    next_tick = now + self.interval;
                }
            }
        }
    }

    /// Whether the interval walks this root: every root without a watch queue, with one a
    /// root whose keys it could not all watch or that has keys under construction.
    fn ticks(&self, root: &Root) -> bool {
        !root.gone && (!self.queue_backed || root.polled || root.pending)
    }

    fn handle(&self, state: &mut ThreadState, command: Command) {
        match command {
            Command::Register { request, reply } => {
                let mut registry = self.lock();
                state.arm();
                let result = self.register_here(&mut registry, state, request);
                state.disarm();
                drop(registry);
                let _ = reply.send(result);
            }
            Command::Release(id) => {
                let mut registry = self.lock();
                let unused = registry
                    .roots
                    .get(&id)
                    .is_some_and(|r| r.lease.strong_count() == 0);
                if unused {
                    let mut root = registry.roots.remove(&id).expect("checked");
                    if registry.by_request.get(&root.request) == Some(&id) {
                        registry.by_request.remove(&root.request);
                    }
                    // Unwatching needs View, as the viewer with the root's possession.
                    state.take_creds(&ThreadCreds::of(&root.request.viewer));
                    if state.possess(root.walk_ring.ring).is_ok() {
                        let Root { queued, polled, .. } = &mut root;
                        queue_tree(id, queued, polled, &Tree::default(), state);
                    }
                    forget_queued(id, &mut root.queued, state);
                    state.take_creds(&ThreadCreds::root());
                    state.drop_walk_ring(&root.walk_ring);
                    tracing::info!(root = id.0, key = %root.serial, "stopped following a key");
                }
            }
            Command::WatchFiles { request, reply } => {
                let mut registry = self.lock();
                let id = registry.allocate_id();
                let result = registry.files.add(id, request, self.waker.clone());
                let _ = reply.send(result);
            }
            Command::ReleaseFiles(id) => self.lock().files.release(id),
        }
    }

    fn register_here(
        &self,
        registry: &mut Registry,
        state: &mut ThreadState,
        request: RootRequest,
    ) -> Result<Arc<RootLease>> {
        if let Some(lease) = registry
            .by_request
            .get(&request)
            .and_then(|id| registry.roots.get(id))
            .filter(|root| !root.gone)
            .and_then(|root| root.lease.upgrade())
        {
            return Ok(lease);
        }
        let id = registry.allocate_id();
        state.take_creds(&ThreadCreds::root());
        let walk_ring = state
            .make_walk_ring(id)
            .map_err(|e| Error::Failed(format!("cannot make a keyring to follow keys in: {e}")))?;
        let walked = resolve(&request, state, walk_ring.ring).map(|(serial, linked)| {
            state.take_creds(&ThreadCreds::of(&request.viewer));
            let walked = walk(serial, request.nested, &Tree::default(), state);
            state.take_creds(&ThreadCreds::root());
            (serial, linked, walked)
        });
        let (serial, linked, tree) = match walked {
            Ok((serial, linked, Ok(tree))) => (serial, linked, tree),
            Err(e) => {
                state.drop_walk_ring(&walk_ring);
                return Err(e);
            }
            Ok((serial, _, Err(e))) => {
                state.drop_walk_ring(&walk_ring);
                return Err(match e.raw_os_error() {
                    Some(libc::ENOKEY) => Error::NotFound(format!("key {serial} does not exist")),
                    Some(libc::EACCES) => Error::AccessDenied(format!(
                        "uid {} may not view key {serial}",
                        request.viewer.uid
                    )),
                    _ => Error::Failed(format!("cannot read key {serial}: {e}")),
                });
            }
        };
        let mut root = Root {
            serial,
            lease: Weak::new(),
            tree: Tree::default(),
            holds: Holds::new(walk_ring.ring),
            walk_ring,
            queued: HashSet::new(),
            polled: false,
            echoes: Vec::new(),
            gone: false,
            pending: false,
            collection: krb5::Collection::default(),
            request: request.clone(),
        };
        if linked {
            root.holds.adopt(serial, &tree);
        }
        state.take_creds(&ThreadCreds::of(&request.viewer));
        // What changed before the keys were watched shows in the last walk; nobody sees this
        // root's records before this call returns, so that walk is simply kept.
        let tree = watched_walk(id, &mut root, tree, state);
        hold_tree(&mut root.holds, &tree, serial, request.nested);
        state.take_creds(&ThreadCreds::root());
        if let Some(spec) = &request.collection {
            root.collection = krb5::Collection::from_keyring(&tree, serial, spec);
        }
        root.pending = !state.pending.is_empty() && has_pending(&tree);
        root.tree = tree;
        let lease = Arc::new(RootLease {
            id,
            serial,
            wake: self.waker.clone(),
        });
        root.lease = Arc::downgrade(&lease);
        tracing::info!(root = id.0, key = %serial, uid = request.viewer.uid, nested = request.nested, "following a key");
        registry.by_request.insert(request, id);
        registry.roots.insert(id, root);
        Ok(lease)
    }

    /// Reads the watch queue and walks the roots it names (all of them after a loss).
    fn on_notes(&self, hub: &Hub, state: &mut ThreadState) {
        let mut notes = Vec::new();
        if let Some(queue) = state.queue.as_mut()
            && let Err(e) = queue.drain(&mut notes)
        {
            tracing::warn!(error = %e, "cannot read the key watch queue; walking every root");
            notes.push(QueueRecord::Loss);
        }
        let mut changed = HashSet::new();
        let mut said = Vec::new();
        let mut everything = false;
        for note in &notes {
            match note {
                QueueRecord::Key {
                    serial, subtype, ..
                } => {
                    changed.insert(*serial);
                    said.push((*serial, *subtype));
                }
                QueueRecord::Removed {
                    serial: Some(serial),
                } => {
                    changed.insert(*serial);
                }
                QueueRecord::Removed { serial: None } | QueueRecord::Loss => everything = true,
            }
        }
        if changed.is_empty() && !everything {
            return;
        }
        let mut registry = self.lock();
        state.arm();
        let roots = &mut registry.roots;
        let dirty: HashSet<RootId> = if everything {
            roots.keys().copied().collect()
        } else {
            changed
                .iter()
                .filter_map(|serial| state.queue_owners.get(serial))
                .flatten()
                .copied()
                .collect()
        };
        for id in dirty {
            if let Some(root) = roots.get_mut(&id) {
                poll_root(hub, id, root, &said, state);
            }
        }
        state.disarm();
        state.take_creds(&ThreadCreds::root());
        state.forget_finished(roots);
    }

    /// One poll of every root: walk, compare, publish.
    fn tick(&self, hub: &Hub, state: &mut ThreadState) {
        let mut registry = self.lock();
        let roots = &mut registry.roots;
        let mut order: Vec<RootId> = roots
            .iter()
            .filter(|(_, r)| self.ticks(r))
            .map(|(id, _)| *id)
            .collect();
        // Roots of one viewer together: the thread switches credentials once per viewer.
        order.sort_by_key(|id| roots[id].request.viewer.uid);
        state.arm();
        for id in order {
            poll_root(
                hub,
                id,
                roots.get_mut(&id).expect("listed above"),
                &[],
                state,
            );
        }
        state.disarm();
        state.take_creds(&ThreadCreds::root());
        state.forget_finished(roots);
    }
}

/// Walks one root, publishes what changed since the last walk, keeps the new tree, and
/// has the watch queue (if any) report on exactly the keys of that tree.
///
/// `said` is what the watch queue reported, (key, subtype), since the last walk: an update
/// or setattr the comparison cannot see (the same payload written again, a new expiry
/// time) is published as the kernel said it.
fn poll_root(
    hub: &Hub,
    id: RootId,
    root: &mut Root,
    said: &[(KeySerial, u8)],
    state: &mut ThreadState,
) {
    poll_root_once(hub, id, root, said, state);
    // A key is pending only while the thread remembers it so: no scan otherwise.
    root.pending = !root.gone && !state.pending.is_empty() && has_pending(&root.tree);
}

/// [`poll_root`] but for keeping its `pending` flag.
fn poll_root_once(
    hub: &Hub,
    id: RootId,
    root: &mut Root,
    said: &[(KeySerial, u8)],
    state: &mut ThreadState,
) {
    let Some(new) = walk_root(hub, id, root, state) else {
        // Gone (nothing more to watch), replaced (its new tree was published: watch it) or
        // unreadable for now.
        let tree = if root.gone {
            Tree::default()
        } else {
            std::mem::take(&mut root.tree)
        };
        let unseen = queue_tree(id, &mut root.queued, &mut root.polled, &tree, state);
        if !root.gone {
            root.tree = tree;
            if unseen {
                // A replaced collection's keys changed before they were watched.
                poll_root_once(hub, id, root, &[], state);
            }
        }
        return;
    };
    let new = watched_walk(id, root, new, state);
    publish_changes(hub, id, root, new, said, state);
}

/// Has the watch queue (if any) report on the keys of `tree`, walking again while a key
/// was watched only after the walk that found it (a change in between would be missed), at
/// most a few times. Keys new to the tree are watched before anything about them is
/// published: a client may act on a record at once. Returns the last walk's tree.
fn watched_walk(id: RootId, root: &mut Root, mut tree: Tree, state: &mut ThreadState) -> Tree {
    for _ in 0..3 {
        if !queue_tree(id, &mut root.queued, &mut root.polled, &tree, state) {
            break;
        }
        match walk(root.serial, root.request.nested, &tree, state) {
            Ok(again) => tree = again,
            Err(_) => break,
        }
    }
    tree
}

/// Has the watch queue report on the live keys of `tree` for a root (`queued` is what it
/// reports on already), and no longer on keys that left it. True when the tree may have
/// changed unseen: a key was newly watched, or vanished before it could be. `polled` is
/// set while a key is refused for lack of room (a user's watches are capped at its
/// open-file limit): the root is then polled.
fn queue_tree(
    id: RootId,
    queued: &mut HashSet<KeySerial>,
    polled: &mut bool,
    tree: &Tree,
    state: &mut ThreadState,
) -> bool {
    let ThreadState {
        queue: Some(queue),
        queue_owners,
        ..
    } = state
    else {
        return false;
    };
    let mut unseen = false;
    let mut refused = false;
    // Revoked or expired keys are not watched anew: their records went out already, and the
    // kernel refuses them.
    let new: Vec<KeySerial> = tree
        .nodes
        .iter()
        .filter(|(s, n)| n.condition == Condition::Live && !queued.contains(s))
        .map(|(s, _)| *s)
        .collect();
    for serial in new {
        let owners = queue_owners.entry(serial).or_default();
        if owners.is_empty() {
            match queue.watch(serial) {
                Ok(()) => unseen = true,
                // A watch whose unwatch failed earlier is still there.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => {
                    queue_owners.remove(&serial);
                    if e.raw_os_error() == Some(libc::EAGAIN) {
                        if !*polled && !refused {
                            tracing::warn!(root = id.0, key = %serial, "the kernel has no room for more key watches; polling this root");
                        }
                        refused = true;
                    } else {
                        // Revoked, invalidated or gone since the walk.
                        unseen = true;
                    }
                    continue;
                }
            }
        }
        owners.insert(id);
        queued.insert(serial);
    }
    *polled = refused;
    let left: Vec<KeySerial> = queued
        .iter()
        .filter(|s| !tree.nodes.contains_key(s))
        .copied()
        .collect();
    for serial in left {
        let owners = queue_owners.get_mut(&serial).expect("owned when queued");
        if owners.len() > 1 {
            owners.remove(&id);
            queued.remove(&serial);
            continue;
        }
        match queue.unwatch(serial) {
            // EBADSLT: not watched (any more); ENOKEY, EKEYREVOKED, EKEYEXPIRED: the key is
            // dead and its watch goes with it.
            Err(e)
                if !matches!(
                    e.raw_os_error(),
                    Some(libc::EBADSLT | libc::ENOKEY | libc::EKEYREVOKED | libc::EKEYEXPIRED)
                ) =>
            {
                // Kept and retried at the next pass (EACCES: the viewer may not view it now;
                // its notes keep walking this root meanwhile).
            }
            _ => {
                queue_owners.remove(&serial);
                queued.remove(&serial);
            }
        }
    }
    unseen
}

/// Forgets a dropped root's kernel watches that could not be removed: they end when their
/// keys are destroyed, and their notes name no root until then.
fn forget_queued(id: RootId, queued: &mut HashSet<KeySerial>, state: &mut ThreadState) {
    for serial in queued.drain() {
        if let Some(owners) = state.queue_owners.get_mut(&serial) {
            owners.remove(&id);
            if owners.is_empty() {
                state.queue_owners.remove(&serial);
            }
        }
    }
}

/// [`poll_root`]'s walk: the root's tree now, or `None` when there is none to compare (the
/// root is gone and that was published, or replaced and followed, or unreadable for now).
fn walk_root(hub: &Hub, id: RootId, root: &mut Root, state: &mut ThreadState) -> Option<Tree> {
    if root.gone {
        return None;
    }
    state.take_creds(&ThreadCreds::of(&root.request.viewer));
    if let Err(e) = state.possess(root.walk_ring.ring) {
        tracing::debug!(root = id.0, error = %e, "cannot take the root's walk keyring; keeping the last state");
        return None;
    }
    let walked = walk(root.serial, root.request.nested, &root.tree, state);
    let new = match walked {
        Ok(tree) => tree,
        Err(e) if is_gone(&e) && root.request.collection.is_some() => {
            // A credential-cache collection outlives its keyring (a persistent keyring
            // expires, kdestroy -A may leave none): follow the anchor's new keyring, once,
            // and report the caches that went and came.
            follow_replaced_anchor(hub, id, root, state);
            return None;
        }
        Err(e) if is_gone(&e) => {
            root.gone = true;
            let notice = Notice {
                subtype: meta::REMOVAL,
                key: root.tree.node(root.serial).map_or_else(
                    || Arc::new(KeyInfo::unknown(root.serial)),
                    |n| n.info.clone(),
                ),
                aux: None,
            };
            tracing::info!(root = id.0, key = %root.serial, "a watched key is gone");
            publish_key(hub, id, root.serial, RecordType::Meta, notice);
            return None;
        }
        Err(e) => {
            tracing::debug!(root = id.0, key = %root.serial, error = %e, "key walk failed; keeping the last state");
            return None;
        }
    };
    Some(new)
}

/// [`poll_root`]'s comparison: publishes how `new` differs from the root's last tree, and
/// keeps it.
fn publish_changes(
    hub: &Hub,
    id: RootId,
    root: &mut Root,
    new: Tree,
    said: &[(KeySerial, u8)],
    state: &mut ThreadState,
) {
    let holds = &root.holds;
    let mut notices = diff(&root.tree, &new, &mut |s| probe(s, &mut state.buf), &|s| {
        holds.contains(s)
    });
    let compared = notices.len();
    let mut answered = vec![false; compared];
    let mut echoes = std::mem::take(&mut root.echoes);
    for &(serial, subtype) in said {
        if !matches!(subtype, key::UPDATED | key::SETATTR) {
            continue;
        }
        let is = |n: &Notice| n.key.serial == serial && n.subtype == subtype;
        // The note of a change this comparison saw, or the last one saw before its note.
        if let Some(i) = (0..compared).find(|&i| !answered[i] && is(&notices[i])) {
            answered[i] = true;
            continue;
        }
        if let Some(i) = echoes.iter().position(|&e| e == (serial, subtype)) {
            echoes.swap_remove(i);
            continue;
        }
        let live = new.node(serial).filter(|n| n.condition == Condition::Live);
        if let Some(node) = live
            && !notices[compared..].iter().any(is)
        {
            notices.push(Notice {
                subtype,
                key: node.info.clone(),
                aux: None,
            });
        }
    }
    if state.queue.is_some() {
        // Seen by comparing before the kernel's note was read: that note comes next.
        root.echoes = (0..compared)
            .filter(|&i| !answered[i] && matches!(notices[i].subtype, key::UPDATED | key::SETATTR))
            .map(|i| (notices[i].key.serial, notices[i].subtype))
            .collect();
    }
    if !same_members(&root.tree, &new) {
        hold_tree(&mut root.holds, &new, root.serial, root.request.nested);
    }
    for notice in notices {
        publish_key(hub, id, root.serial, RecordType::Key, notice);
    }
    if let Some(spec) = &root.request.collection {
        let collection = krb5::Collection::from_keyring(&new, root.serial, spec);
        for change in root.collection.diff(&collection) {
            krb5::publish(hub, id, &spec.name, change);
        }
        root.collection = collection;
    }
    root.tree = new;
}

/// Re-resolves a krb5 root whose keyring is gone and reports the collection's difference.
fn follow_replaced_anchor(hub: &Hub, id: RootId, root: &mut Root, state: &mut ThreadState) {
    let spec = root.request.collection.clone().expect("krb5 roots only");
    root.holds.release_all();
    let found = resolve(&root.request, state, root.walk_ring.ring);
    let (serial, tree) = match found {
        Ok((serial, linked)) => {
            state.take_creds(&ThreadCreds::of(&root.request.viewer));
            let tree =
                walk(serial, root.request.nested, &Tree::default(), state).unwrap_or_default();
            if linked {
                root.holds.adopt(serial, &tree);
            }
            hold_tree(&mut root.holds, &tree, serial, root.request.nested);
            (serial, tree)
        }
        Err(e) => {
            tracing::warn!(root = id.0, error = ?e, "a followed collection's keyring is gone and cannot be found again");
            root.gone = true;
            (root.serial, Tree::default())
        }
    };
    tracing::info!(root = id.0, old = %root.serial, new = %serial, "a followed collection's keyring was replaced");
    let collection = krb5::Collection::from_keyring(&tree, serial, &spec);
    for change in root.collection.diff(&collection) {
        krb5::publish(hub, id, &spec.name, change);
    }
    root.serial = serial;
    root.collection = collection;
    root.tree = tree;
}

fn publish_key(
    hub: &Hub,
    root: RootId,
    watched: KeySerial,
    record_type: RecordType,
    notice: Notice,
) {
    let subtype = notice.subtype;
    let change = KeyChange {
        root,
        watched,
        notice,
    };
    hub.publish(&Event::new(record_type, subtype, 0, Arc::new(change)));
}

/// The key is no longer usable at all: the watch ends.
fn is_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOKEY) | Some(libc::EKEYEXPIRED)
    )
}

fn probe(serial: KeySerial, buf: &mut Vec<u8>) -> Probe {
    match sys::keyctl_describe(serial, buf) {
        Ok(_) => Probe::Alive,
        Err(_) => Probe::Gone,
    }
}

/// A key's name as a keyring indexes it.
type KeyName = (String, String);

fn name_of(tree: &Tree, serial: KeySerial) -> Option<KeyName> {
    tree.node(serial)
        .map(|n| (n.info.key_type.clone(), n.info.description.clone()))
}

/// The links a root's walk ring holds to keys of its tree.
///
/// A keyring keeps one link per (type, description), and `KEYCTL_UNLINK` removes whatever
/// holds that name: so a name is held for one key at a time. A second key of the same name
/// in one tree (two krb5 caches each have a `__krb5_princ__`) is not held; its
/// disappearance then reads as unlinked, never as invalidated. Linking it anyway would
/// displace the first.
struct Holds {
    ring: KeySerial,
    by_serial: HashMap<KeySerial, KeyName>,
    by_name: HashMap<KeyName, KeySerial>,
}

impl Holds {
    fn new(ring: KeySerial) -> Holds {
        Holds {
            ring,
            by_serial: HashMap::new(),
            by_name: HashMap::new(),
        }
    }

    /// Whether the ring's link under this key's name is this key's.
    fn contains(&self, serial: KeySerial) -> bool {
        self.by_serial
            .get(&serial)
            .is_some_and(|name| self.by_name.get(name) == Some(&serial))
    }

    /// Links `serial` into the ring; false when it cannot be held.
    fn hold(&mut self, serial: KeySerial, name: KeyName) -> bool {
        if self.by_serial.contains_key(&serial) {
            return true;
        }
        if self.by_name.contains_key(&name) || sys::keyctl_link(serial, self.ring).is_err() {
            return false;
        }
        self.by_name.insert(name.clone(), serial);
        self.by_serial.insert(serial, name);
        true
    }

    /// Counts the link a lookup made itself (`KEYCTL_GET_PERSISTENT`, or linking `@user`).
    fn adopt(&mut self, serial: KeySerial, tree: &Tree) {
        let name = name_of(tree, serial).unwrap_or_default();
        self.by_name.insert(name.clone(), serial);
        self.by_serial.insert(serial, name);
    }

    /// Unlinks `serial`, if the name is still its own.
    fn release(&mut self, serial: KeySerial) {
        let Some(name) = self.by_serial.remove(&serial) else {
            return;
        };
        if self.by_name.get(&name) == Some(&serial) {
            self.by_name.remove(&name);
            // ENOKEY when the key is already gone (its links went with it).
            let _ = sys::keyctl_unlink(serial, self.ring);
        }
    }

    fn release_all(&mut self) {
        let held: Vec<KeySerial> = self.by_serial.keys().copied().collect();
        for serial in held {
            self.release(serial);
        }
    }
}

/// Links into the walk ring whatever this root's tree has that it did not hold yet, and
/// lets go of what left it. A key we may not link is simply not held.
fn hold_tree(holds: &mut Holds, tree: &Tree, root: KeySerial, nested: bool) {
    let wanted: HashSet<KeySerial> = if nested {
        tree.nodes
            .iter()
            .filter(|(_, n)| n.condition == Condition::Live)
            .map(|(s, _)| *s)
            .collect()
    } else {
        HashSet::from([root])
    };
    for serial in &wanted {
        // The root's link is made by the lookup; one we could not make then is not retried
        // (the caller's rights did not allow it).
        if *serial == root || holds.by_serial.contains_key(serial) {
            continue;
        }
        if let Some(name) = name_of(tree, *serial) {
            holds.hold(*serial, name);
        }
    }
    let released: Vec<KeySerial> = holds
        .by_serial
        .keys()
        .filter(|s| **s != root && !wanted.contains(s))
        .copied()
        .collect();
    for serial in released {
        holds.release(serial);
    }
}

/// Whether two walks found the same keys in the same conditions: then the holds stay.
fn same_members(old: &Tree, new: &Tree) -> bool {
    old.order == new.order
        && new
            .nodes
            .iter()
            .all(|(s, n)| old.nodes.get(s).is_some_and(|o| o.condition == n.condition))
}

/// Every key permission of the possessor (`KEY_POS_ALL`).
const KEY_POS_ALL: u32 = 0x3f00_0000;
/// The possessor's Search permission.
const KEY_POS_SEARCH: u32 = 0x0800_0000;
/// The owner's View and Link permissions.
const KEY_USR_VIEW_LINK: u32 = 0x0011_0000;
/// The owner's View and Write permissions.
const KEY_USR_VIEW_WRITE: u32 = 0x0005_0000;
/// What every walk ring is called: the thread keyring holds one link per name, so linking
/// a root's ring displaces the ring linked before it.
const WALK_RING_NAME: &CStr = c"watchd:walk";

/// A root's possession anchor. Every key call makes the kernel search the calling thread's
/// keyrings for the key, to tell whether the caller possesses it; with every root's keys
/// linked into one thread keyring, keys of the same name (every krb5 cache has a
/// `__krb5_princ__`) made each search descend into all the roots: quadratic. So each root
/// has a keyring of its own, `ring`, holding the root and its tree, and the thread keyring
/// links only the ring of the root being walked. `holder`, named after the root, keeps the
/// ring alive in the thread's store, which grants no Search: no lookup descends into it.
struct WalkRing {
    holder: KeySerial,
    ring: KeySerial,
}

/// The kernel caps the key watches of a user (all of root's, here) at the open-file limit of
/// the task adding one, and the usual soft limit (1024) is a few hundred watched trees: take
/// the hard limit, as a daemon may. Beyond it, roots are polled.
fn allow_key_watches() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::warn!(error = %e, soft, "cannot raise the open-file limit; fewer keys can be watched");
    }
}

/// Makes the thread's store: a keyring in the thread keyring without Search permission.
fn make_store() -> io::Result<KeySerial> {
    let store = sys::add_key(
        c"keyring",
        c"watchd:roots",
        &[],
        sys::KEY_SPEC_THREAD_KEYRING,
    )?;
    // A keyring without Search is not possessed even from the thread keyring (the
    // kernel's lookup needs Search on what it finds), so its owner, root, may write it.
    sys::keyctl_setperm(store, (KEY_POS_ALL & !KEY_POS_SEARCH) | KEY_USR_VIEW_WRITE)?;
    Ok(store)
}

impl ThreadState {
    /// Makes root `id`'s walk ring (as root: the store is root's).
    fn make_walk_ring(&mut self, id: RootId) -> io::Result<WalkRing> {
        let name = CString::new(format!("watchd:root:{}", id.0)).expect("no NUL in digits");
        // Made in the thread keyring, where we possess it, then moved to the store.
        let holder = sys::add_key(c"keyring", &name, &[], sys::KEY_SPEC_THREAD_KEYRING)?;
        let made = (|| -> io::Result<KeySerial> {
            let ring = sys::add_key(c"keyring", WALK_RING_NAME, &[], holder)?;
            // Linking it into the thread keyring later happens without possession: the
            // owner (root) needs Link.
            sys::keyctl_setperm(ring, KEY_POS_ALL | KEY_USR_VIEW_LINK)?;
            sys::keyctl_link(holder, self.store)?;
            Ok(ring)
        })();
        let _ = sys::keyctl_unlink(holder, sys::KEY_SPEC_THREAD_KEYRING);
        Ok(WalkRing {
            holder,
            ring: made?,
        })
    }

    /// Lets go of a walk ring: with it go the links it held.
    fn drop_walk_ring(&mut self, walk_ring: &WalkRing) {
        if self.possessed == Some(walk_ring.ring) {
            let _ = sys::keyctl_unlink(walk_ring.ring, sys::KEY_SPEC_THREAD_KEYRING);
            self.possessed = None;
        }
        let _ = sys::keyctl_unlink(walk_ring.holder, self.store);
    }

    /// Links `ring` into the thread keyring, displacing the ring linked before.
    fn possess(&mut self, ring: KeySerial) -> io::Result<()> {
        if self.possessed == Some(ring) {
            return Ok(());
        }
        // The ring grants Link to its owner, root: link with fsuid 0 for a moment.
        let uid = self.creds.uid;
        if uid != 0 {
            sys::setfsuid(0);
        }
        let linked = sys::keyctl_link(ring, sys::KEY_SPEC_THREAD_KEYRING);
        if uid != 0 {
            sys::setfsuid(uid);
        }
        linked?;
        self.possessed = Some(ring);
        Ok(())
    }

    /// Starts a pass that may read keys: from now on, the thread's timer interrupts it
    /// every [`CUT_AFTER`], so a read waiting for a key's construction returns within that
    /// time. Two system calls per pass, none per key.
    fn arm(&mut self) {
        self.retry_spent = false;
        if let Some(cutter) = &self.cutter
            && let Err(e) = cutter.set(CUT_AFTER, CUT_AFTER)
        {
            tracing::debug!(error = %e, "cannot arm the key thread's timer");
        }
    }

    /// Ends the pass [`ThreadState::arm`] started.
    fn disarm(&mut self) {
        if let Some(cutter) = &self.cutter {
            let _ = cutter.set(Duration::ZERO, Duration::ZERO);
        }
    }

    /// `KEYCTL_READ` of `serial` into `buf`, unless the key was under construction when
    /// last tried and is not due for a retry (at most one retry per pass). A read the
    /// timer cut short (the kernel turns the interrupted wait into ENOKEY, or EINTR) marks
    /// the key pending; the first time, with a warning.
    fn read(&mut self, serial: KeySerial) -> Read {
        if let Some(pending) = self.pending.get(&serial) {
            if self.retry_spent || Instant::now() < pending.next_try {
                return Read::Pending;
            }
            self.retry_spent = true;
        }
        let before = sys::interrupts();
        match sys::keyctl_read(serial, &mut self.buf) {
            Ok(len) => {
                self.pending.remove(&serial);
                Read::Done(len)
            }
            Err(e)
                if matches!(e.raw_os_error(), Some(libc::ENOKEY | libc::EINTR))
                    && sys::interrupts() != before =>
            {
                self.cut_short(serial);
                Read::Pending
            }
            Err(_) => {
                self.pending.remove(&serial);
                Read::Failed
            }
        }
    }

    fn cut_short(&mut self, serial: KeySerial) {
        let now = Instant::now();
        let uid = self.creds.uid;
        match self.pending.entry(serial) {
            std::collections::hash_map::Entry::Occupied(entry) => {
                let pending = entry.into_mut();
                pending.wait = (pending.wait * 2).min(RETRY_AT_MOST);
                pending.next_try = now + pending.wait;
                tracing::debug!(key = %serial, uid, retry_in = ?pending.wait, "a key is still under construction");
            }
            std::collections::hash_map::Entry::Vacant(entry) => {
                tracing::warn!(key = %serial, uid, cut_after = ?CUT_AFTER, "reading a key under construction was cut short (its request-key helper has not finished); it is tried again later and nothing waits for it meanwhile");
                entry.insert(Pending {
                    next_try: now + self.first_retry,
                    wait: self.first_retry,
                });
            }
        }
    }

    /// Forgets pending keys that no followed tree holds any more.
    fn forget_finished(&mut self, roots: &HashMap<RootId, Root>) {
        if self.pending.is_empty() {
            return;
        }
        let still: HashSet<KeySerial> = roots
            .values()
            .flat_map(|r| r.tree.nodes.iter())
            .filter(|(_, n)| n.condition == Condition::Pending)
            .map(|(s, _)| *s)
            .collect();
        self.pending.retain(|s, _| still.contains(s));
    }

    fn take_creds(&mut self, wanted: &ThreadCreds) {
        if self.creds == *wanted {
            return;
        }
        // Groups and gid while fsuid is still root's; back to root in the reverse order.
        if wanted.uid != 0 {
            sys::setfsuid(0);
        }
        let mut taken = wanted.clone();
        if sys::setgroups_this_thread(&wanted.groups).is_err() {
            // Fewer rights, never another viewer's: no supplementary groups (recorded as
            // such, so the next switch tries again).
            let _ = sys::setgroups_this_thread(&[]);
            taken.groups.clear();
        }
        sys::setfsgid(wanted.gid);
        sys::setfsuid(wanted.uid);
        self.creds = taken;
    }
}

/// Looks up the root key as its viewer and links it into the root's walk `ring`. Returns
/// the serial and whether the link was made.
fn resolve(
    request: &RootRequest,
    state: &mut ThreadState,
    ring: KeySerial,
) -> Result<(KeySerial, bool)> {
    let denied = |e: io::Error, what: &str| match e.raw_os_error() {
        Some(libc::ENOKEY) => Error::NotFound(format!("{what} does not exist")),
        Some(libc::EACCES) | Some(libc::EPERM) => {
            Error::AccessDenied(format!("uid {} may not watch {what}", request.viewer.uid))
        }
        _ => Error::Failed(format!("cannot look up {what}: {e}")),
    };
    state
        .possess(ring)
        .map_err(|e| Error::Failed(format!("cannot take a keyring to follow keys in: {e}")))?;
    match &request.anchor {
        Anchor::Persistent(uid) => {
            state.take_creds(&ThreadCreds::root());
            let serial = sys::keyctl_get_persistent(*uid, ring)
                .map_err(|e| denied(e, &format!("the persistent keyring of uid {uid}")))?;
            Ok((serial, true))
        }
        Anchor::User(uid) | Anchor::UserSession(uid) => {
            let (special, what) = match request.anchor {
                Anchor::User(_) => (sys::KEY_SPEC_USER_KEYRING, "user"),
                _ => (sys::KEY_SPEC_USER_SESSION_KEYRING, "user session"),
            };
            state.take_creds(&ThreadCreds::root());
            let result = with_real_uid(*uid, || {
                let serial = sys::keyctl_get_keyring_id(special, true)?;
                sys::keyctl_link(serial, ring)?;
                Ok(serial)
            });
            let serial =
                result.map_err(|e| denied(e, &format!("the {what} keyring of uid {uid}")))?;
            Ok((serial, true))
        }
        Anchor::Serial(serial) => {
            state.take_creds(&ThreadCreds::of(&request.viewer));
            let viewable = sys::keyctl_describe(*serial, &mut state.buf);
            state.take_creds(&ThreadCreds::root());
            viewable.map_err(|e| denied(e, &format!("key {serial}")))?;
            Ok((
                *serial,
                link_as_possessed(*serial, ring, &request.viewer, state),
            ))
        }
    }
}

/// Links key `serial` into `ring` with the rights its viewer has in a login session: its
/// own, plus possession of what its user and user-session keyrings reach (a key's owner
/// usually has View only, and Link needs possession). Those keyrings are linked into the
/// ring for the moment of the link and unlinked after it. False when it cannot be linked:
/// the walk then sees only what the viewer's permissions show.
fn link_as_possessed(
    serial: KeySerial,
    ring: KeySerial,
    viewer: &Viewer,
    state: &mut ThreadState,
) -> bool {
    let link_as_viewer = |state: &mut ThreadState| {
        state.take_creds(&ThreadCreds::of(viewer));
        let linked = sys::keyctl_link(serial, ring).is_ok();
        state.take_creds(&ThreadCreds::root());
        linked
    };
    if link_as_viewer(state) {
        return true;
    }
    for special in [
        sys::KEY_SPEC_USER_KEYRING,
        sys::KEY_SPEC_USER_SESSION_KEYRING,
    ] {
        let lent = with_real_uid(viewer.uid, || {
            let keyring = sys::keyctl_get_keyring_id(special, false)?;
            sys::keyctl_link(keyring, ring)?;
            Ok(keyring)
        });
        let Ok(keyring) = lent else {
            continue;
        };
        let linked = link_as_viewer(state);
        if keyring != serial {
            let _ = sys::keyctl_unlink(keyring, ring);
        }
        if linked {
            return true;
        }
    }
    false
}

/// Runs `f` with the thread's real uid and fsuid set to `uid` (effective uid and
/// capabilities stay root's), then restores both.
fn with_real_uid<T>(uid: u32, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    sys::setresuid_this_thread(Some(uid), None, None)?;
    sys::setfsuid(uid);
    let result = f();
    sys::setfsuid(0);
    sys::setresuid_this_thread(Some(0), None, None)
        .expect("the key thread cannot take back real uid 0 (it keeps CAP_SETUID)");
    result
}

/// Walks the tree under `root` with the thread's current credentials: the root, its
/// members, and for nested walks everything below, breadth first, at most
/// [`MAX_TREE_KEYS`]. Keys the walk may not view are left out. Fails only when the root
/// itself cannot be described (and is not merely revoked).
fn walk(root: KeySerial, nested: bool, old: &Tree, state: &mut ThreadState) -> io::Result<Tree> {
    let mut tree = Tree {
        nodes: HashMap::with_capacity(old.nodes.len()),
        order: Vec::with_capacity(old.order.len()),
    };
    let mut queue = VecDeque::from([root]);
    while let Some(serial) = queue.pop_front() {
        if tree.nodes.contains_key(&serial) || tree.nodes.len() >= MAX_TREE_KEYS {
            continue;
        }
        let known = || {
            old.node(serial)
                .map_or_else(|| Arc::new(KeyInfo::unknown(serial)), |n| n.info.clone())
        };
        let (info, condition) = match sys::keyctl_describe(serial, &mut state.buf) {
            Ok(len) => match Described::parse(&state.buf[..len]) {
                Some(described) => (reuse(old, serial, described), Condition::Live),
                None => continue,
            },
            Err(e) => match e.raw_os_error() {
                Some(libc::EKEYREVOKED) => (known(), Condition::Revoked),
                Some(libc::ENOKEY) | Some(libc::EKEYEXPIRED) if serial != root => {
                    (known(), Condition::Unavailable)
                }
                Some(libc::EACCES) if serial != root => continue,
                _ if serial == root && e.raw_os_error() != Some(libc::EKEYREVOKED) => {
                    return Err(e);
                }
                _ => continue,
            },
        };
        let mut node = Node {
            info,
            condition,
            digest: None,
            content: None,
            children: None,
        };
        let expand = serial == root || nested;
        if condition == Condition::Live && expand {
            match state.read(serial) {
                Read::Failed => {}
                Read::Pending => node.condition = Condition::Pending,
                Read::Done(len) if node.info.is_keyring() => {
                    let members: Vec<KeySerial> = state.buf[..len]
                        .chunks_exact(4)
                        .map(|c| KeySerial(i32::from_ne_bytes(c.try_into().expect("4 bytes"))))
                        .collect();
                    if nested {
                        queue.extend(members.iter().copied());
                    }
                    node.children = Some(members);
                }
                Read::Done(len) => {
                    let payload = &mut state.buf[..len];
                    node.digest = Some(state.digests.hash_one(&*payload));
                    if KEPT_PAYLOADS.contains(&node.info.description.as_str()) {
                        node.content = Some(Arc::from(&*payload));
                    }
                    // Payloads can be secrets (tickets, passwords): none stays in our memory.
                    payload.fill(0);
                }
            }
        }
        tree.order.push(serial);
        tree.nodes.insert(serial, node);
    }
    Ok(tree)
}

/// Whether a walk found keys under construction.
fn has_pending(tree: &Tree) -> bool {
    tree.nodes
        .values()
        .any(|n| n.condition == Condition::Pending)
}

/// The old tree's `Arc` when nothing changed, so unchanged keys cost no allocation.
fn reuse(old: &Tree, serial: KeySerial, described: Described<'_>) -> Arc<KeyInfo> {
    match old.node(serial) {
        Some(n) if Described::of(&n.info) == described => n.info.clone(),
        _ => Arc::new(described.into_info(serial)),
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

/// What the caller may view of key `serial`, asked of the kernel as the caller (its fsuid,
/// fsgid and groups, and none of the daemon's possession).
fn check_viewable(caller: &Caller, serial: KeySerial) -> Result<()> {
    let described = access::as_caller(caller, |_| {
        let mut buf = Vec::new();
        sys::keyctl_describe(serial, &mut buf)
    })?;
    described.map(drop).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOKEY) => Error::NotFound(format!("key {serial} does not exist")),
        Some(libc::EACCES) => {
            Error::AccessDenied(format!("uid {} may not view key {serial}", caller.uid))
        }
        Some(libc::EKEYREVOKED) => Error::NotFound(format!("key {serial} has been revoked")),
        _ => Error::Failed(format!("cannot describe key {serial}: {e}")),
    })
}

/// The caller's eyes: its uid, fsgid and groups.
pub fn viewer_of(caller: &Caller, possessor: bool) -> Result<Viewer> {
    let (gid, groups) = access::CallerProcess::new(caller)?.fs_groups()?;
    Ok(Viewer {
        uid: caller.uid.0,
        gid,
        groups,
        possessor,
    })
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
            collection: None,
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
                .map(|(tree, _, serial)| {
                    snapshot(tree)
                        .into_iter()
                        .map(|notice| {
                            let subtype = notice.subtype;
                            let change = KeyChange {
                                root: scope.root,
                                watched: serial,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn info(serial: i32, key_type: &str, perm: u32) -> Arc<KeyInfo> {
        Arc::new(KeyInfo {
            serial: KeySerial(serial),
            key_type: key_type.into(),
            uid: 1000,
            gid: 1000,
            perm,
            description: format!("k{serial}"),
        })
    }

    fn node(serial: i32, children: Option<Vec<i32>>, digest: Option<u64>) -> Node {
        let key_type = if children.is_some() {
            "keyring"
        } else {
            "user"
        };
        Node {
            info: info(serial, key_type, 0x3f010000),
            condition: Condition::Live,
            digest,
            content: None,
            children: children.map(|c| c.into_iter().map(KeySerial).collect()),
        }
    }

    fn tree(nodes: Vec<Node>) -> Tree {
        let order = nodes.iter().map(|n| n.info.serial).collect();
        Tree {
            nodes: nodes.into_iter().map(|n| (n.info.serial, n)).collect(),
            order,
        }
    }

    fn subtypes(notices: &[Notice]) -> Vec<(u8, i32, Option<i32>)> {
        notices
            .iter()
            .map(|n| (n.subtype, n.key.serial.0, n.aux.map(|a| a.0)))
            .collect()
    }

    fn run(old: &Tree, new: &Tree, alive: &[i32], held: &[i32]) -> Vec<(u8, i32, Option<i32>)> {
        let mut probe = |s: KeySerial| {
            if alive.contains(&s.0) {
                Probe::Alive
            } else {
                Probe::Gone
            }
        };
        subtypes(&diff(old, new, &mut probe, &|s| held.contains(&s.0)))
    }

    #[test]
    fn describe_text_parses_with_semicolons_in_the_description() {
        let k = KeyInfo::parse(KeySerial(5), b"user;1000;1000;3f010000;a;b").unwrap();
        assert_eq!(
            (k.uid, k.perm, k.description.as_str()),
            (1000, 0x3f01_0000, "a;b")
        );
        assert!(KeyInfo::parse(KeySerial(5), b"user;x;1000;3f010000;a").is_none());
    }

    #[test]
    fn key_changes_map_to_the_kernel_subtypes() {
        let old = tree(vec![
            node(1, Some(vec![2, 3, 4]), None),
            node(2, None, Some(7)),
            node(3, None, Some(1)),
            node(4, None, Some(1)),
        ]);
        let mut updated = node(2, None, Some(8));
        let mut chmod = node(3, None, Some(1));
        Arc::make_mut(&mut chmod.info).perm = 0x3f030000;
        let mut revoked = node(4, None, Some(1));
        revoked.condition = Condition::Revoked;
        updated.children = None;
        let new = tree(vec![
            node(1, Some(vec![2, 3, 4, 5]), None),
            updated,
            chmod,
            revoked,
            node(5, None, Some(3)),
        ]);
        assert_eq!(
            run(&old, &new, &[], &[]),
            vec![
                (key::LINKED, 1, Some(5)),
                (key::UPDATED, 2, None),
                (key::SETATTR, 3, None),
                (key::REVOKED, 4, None),
            ]
        );
    }

    #[test]
    fn a_key_that_left_is_unlinked_if_alive_and_invalidated_if_we_held_it() {
        let old = tree(vec![
            node(1, Some(vec![2, 3]), None),
            node(2, None, Some(1)),
            node(3, None, Some(1)),
        ]);
        let new = tree(vec![node(1, Some(vec![]), None)]);
        // One alive, one gone while held: no "cleared", since one was invalidated.
        assert_eq!(
            run(&old, &new, &[2], &[3]),
            vec![(key::INVALIDATED, 3, None), (key::UNLINKED, 1, Some(2))]
        );
        // Gone but never held: it may just have died with its last link.
        assert_eq!(run(&old, &new, &[2], &[]), vec![(key::CLEARED, 1, None)]);
    }

    #[test]
    fn a_keyring_that_lost_several_keys_at_once_was_cleared_one_key_was_unlinked() {
        let old = tree(vec![node(1, Some(vec![2, 3]), None)]);
        let new = tree(vec![node(1, Some(vec![]), None)]);
        assert_eq!(
            run(&old, &new, &[2, 3], &[2, 3]),
            vec![(key::CLEARED, 1, None)]
        );
        let old = tree(vec![node(1, Some(vec![2]), None)]);
        assert_eq!(
            run(&old, &new, &[2], &[2]),
            vec![(key::UNLINKED, 1, Some(2))]
        );
    }

    #[test]
    fn an_invalidated_key_still_listed_is_reported_once() {
        let old = tree(vec![node(1, Some(vec![2]), None), node(2, None, Some(1))]);
        let mut dead = node(2, None, None);
        dead.condition = Condition::Unavailable;
        let listed = tree(vec![node(1, Some(vec![2]), None), dead]);
        assert_eq!(
            run(&old, &listed, &[], &[2]),
            vec![(key::INVALIDATED, 2, None)]
        );
        let collected = tree(vec![node(1, Some(vec![]), None)]);
        assert_eq!(run(&listed, &collected, &[], &[2]), vec![]);
    }

    #[test]
    fn a_key_under_construction_is_linked_then_instantiated_or_unlinked() {
        let pending = || {
            let mut n = node(2, None, None);
            n.condition = Condition::Pending;
            n
        };
        let empty = tree(vec![node(1, Some(vec![]), None)]);
        let requested = tree(vec![node(1, Some(vec![2]), None), pending()]);
        assert_eq!(
            run(&empty, &requested, &[], &[]),
            vec![(key::LINKED, 1, Some(2))]
        );
        assert_eq!(run(&requested, &requested, &[], &[]), vec![]);
        assert!(snapshot(&requested).iter().all(|n| n.key.serial.0 != 2));
        let done = tree(vec![node(1, Some(vec![2]), None), node(2, None, Some(7))]);
        assert_eq!(
            run(&requested, &done, &[], &[]),
            vec![(key::INSTANTIATED, 2, None)]
        );
        // Unlinked while still under construction: it was usable, so the unlink is told.
        assert_eq!(
            run(&requested, &empty, &[2], &[]),
            vec![(key::UNLINKED, 1, Some(2))]
        );
    }

    #[test]
    fn viewers_get_exactly_one_of_user_group_other_plus_possessor() {
        let mut key = (*info(9, "user", 0x3f010000)).clone();
        let owner = Viewer {
            uid: 1000,
            gid: 1000,
            groups: vec![],
            possessor: false,
        };
        let stranger = Viewer {
            uid: 1001,
            gid: 1001,
            groups: vec![],
            possessor: false,
        };
        assert!(owner.may_view(&key));
        assert!(!stranger.may_view(&key));
        key.perm = 0x3f000100;
        let member = Viewer {
            uid: 1001,
            gid: 1001,
            groups: vec![1000],
            possessor: false,
        };
        assert!(
            !owner.may_view(&key),
            "the owner's byte is used, not the group's"
        );
        assert!(member.may_view(&key));
        key.perm = 0x01000000;
        assert!(!owner.may_view(&key));
        assert!(
            Viewer {
                possessor: true,
                ..owner
            }
            .may_view(&key)
        );
    }
}
