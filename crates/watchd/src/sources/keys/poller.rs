//! The poller: one thread that follows every watched key tree. It owns the roots
//! ([`Registry`]), takes commands from the watches ([`Command`]), walks a root when the
//! watch queue names one of its keys or, where there is none, at every interval, and
//! publishes the difference with the last walk. The module map in [`super`] tells how.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, Weak, mpsc};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use watchd_proto::{RecordType, key, meta};

use super::queue::QueueWatches;
use super::rings::{self, Anchor, Holds, Rings, WalkRing, hold_tree};
use super::tree::{
    Condition, KeyChange, Notice, Observer, Probe, RootId, Tree, TreeObserver, diff, has_pending,
    same_members,
};
use super::viewer::{KeyInfo, ThreadCreds, Viewer};
use super::walk::Reader;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::hub::Hub;
use crate::sys::{self, KeySerial};

/// What a root is: the anchor it follows, whose eyes it sees with, how deep, and what
/// observes its walks from above.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RootRequest {
    pub anchor: Anchor,
    pub viewer: Viewer,
    pub nested: bool,
    /// Called after every walk of the root. An observed root follows its anchor: when the
    /// anchor's key is gone, the anchor is looked up again and the new key followed (what
    /// the observer reads may outlive a keyring, as a credential-cache collection outlives
    /// a persistent keyring), where an unobserved root ends with REMOVAL.
    pub observer: Option<Observer>,
}

impl RootRequest {
    /// The descriptions of keys whose payloads the walks keep whole.
    fn kept(&self) -> &[&str] {
        self.observer
            .as_ref()
            .map_or(&[], |observer| observer.hook.kept_payloads())
    }
}

/// A followed root as [`Poller::with_root`] shows it.
pub struct RootView<'a> {
    pub tree: &'a Tree,
    /// The key it follows now.
    pub serial: KeySerial,
    pub observer: Option<&'a dyn TreeObserver>,
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
}

/// Everything the poller follows. Lock order: this, then the hub.
pub struct Registry {
    roots: HashMap<RootId, Root>,
    by_request: HashMap<RootRequest, RootId>,
    next_id: u64,
}

impl Registry {
    fn allocate_id(&mut self) -> RootId {
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
    /// Where the thread publishes (and observers with it).
    hub: Arc<Hub>,
}

/// Everything only the poller thread touches.
struct ThreadState {
    creds: ThreadCreds,
    rings: Rings,
    reader: Reader,
    /// The kernel's watch queue, where the kernel has one.
    queue: Option<QueueWatches>,
    wake_read: OwnedFd,
    commands: mpsc::Receiver<Command>,
}

impl ThreadState {
    fn take_creds(&mut self, wanted: &ThreadCreds) {
        self.creds.take(wanted);
    }

    /// Links `ring` into the thread keyring, displacing the ring linked before.
    fn possess(&mut self, ring: KeySerial) -> io::Result<()> {
        self.rings.possess(ring, self.creds.uid)
    }

    fn walk(&mut self, root: KeySerial, request: &RootRequest, old: &Tree) -> io::Result<Tree> {
        let kept = request.kept();
        self.reader
            .walk(root, request.nested, old, self.creds.uid, kept)
    }

    fn resolve(&mut self, request: &RootRequest, ring: KeySerial) -> Result<(KeySerial, bool)> {
        rings::resolve(
            &request.anchor,
            &request.viewer,
            &mut self.creds,
            &mut self.rings,
            &mut self.reader.buf,
            ring,
        )
    }

    fn arm(&mut self) {
        self.reader.arm();
    }

    fn disarm(&mut self) {
        self.reader.disarm();
    }

    /// Forgets pending keys that no followed tree holds any more.
    fn forget_finished(&mut self, roots: &HashMap<RootId, Root>) {
        self.reader.forget_finished(roots.values().map(|r| &r.tree));
    }
}

impl Poller {
    /// Starts the thread and its thread keyring.
    pub fn start(hub: Arc<Hub>, interval: Duration) -> io::Result<Arc<Poller>> {
        let queue = QueueWatches::open();
        let (wake_read, wake_write) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(io::Error::from)?;
        let (commands, receiver) = mpsc::channel();
        let poller = Arc::new(Poller {
            registry: Mutex::new(Registry {
                roots: HashMap::new(),
                by_request: HashMap::new(),
                next_id: 0,
            }),
            waker: Waker {
                commands,
                pipe: Arc::new(wake_write),
            },
            interval,
            queue_backed: queue.is_some(),
            hub: hub.clone(),
        });
        let (ready_tx, ready) = mpsc::sync_channel(1);
        let thread_poller = poller.clone();
        std::thread::Builder::new()
            .name("keys".into())
            .spawn(move || {
                let rings = Rings::new();
                let _ = ready_tx.send(rings.as_ref().map(drop).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("cannot make the key thread's keyrings: {e}"),
                    )
                }));
                let Ok(rings) = rings else {
                    return;
                };
                let cutter = sys::install_interrupt_handler(sys::key_thread_signal())
                    .and_then(|()| sys::ThreadTimer::new(sys::key_thread_signal()));
                let cutter = cutter
                    .inspect_err(|e| tracing::warn!(error = %e, "cannot make the key thread's timer: a key under construction can stall every key watch until its request-key helper finishes"))
                    .ok();
                let state = ThreadState {
                    creds: ThreadCreds::root(),
                    rings,
                    reader: Reader::new(cutter, interval),
                    queue,
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

    /// Calls `then` with the root as last walked, the registry held still: nothing of it
    /// is published before `then` returns.
    pub fn with_root<T>(&self, id: RootId, then: impl FnOnce(Option<RootView<'_>>) -> T) -> T {
        let registry = self.lock();
        then(registry.roots.get(&id).map(|r| RootView {
            tree: &r.tree,
            serial: r.serial,
            observer: r.request.observer.as_ref().map(|o| &*o.hook),
        }))
    }

    /// The hub this poller publishes to.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    fn run(&self, hub: &Hub, mut state: ThreadState) {
        let mut next_tick = Instant::now() + self.interval;
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
            let mut fds = vec![PollFd::new(state.wake_read.as_fd(), PollFlags::POLLIN)];
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
            let notes_ready = fds.get(1).is_some_and(ready);
            drop(fds);
            let mut drain = [0u8; 64];
            while matches!(nix::unistd::read(&state.wake_read, &mut drain), Ok(n) if n > 0) {}
            while let Ok(command) = state.commands.try_recv() {
                self.handle(&mut state, command);
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
                    state.rings.drop_walk_ring(&root.walk_ring);
                    tracing::info!(root = id.0, key = %root.serial, "stopped following a key");
                }
            }
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
            .rings
            .make_walk_ring(id)
            .map_err(|e| Error::Failed(format!("cannot make a keyring to follow keys in: {e}")))?;
        let walked = state
            .resolve(&request, walk_ring.ring)
            .map(|(serial, linked)| {
                state.take_creds(&ThreadCreds::of(&request.viewer));
                let walked = state.walk(serial, &request, &Tree::default());
                state.take_creds(&ThreadCreds::root());
                (serial, linked, walked)
            });
        let (serial, linked, tree) = match walked {
            Ok((serial, linked, Ok(tree))) => (serial, linked, tree),
            Err(e) => {
                state.rings.drop_walk_ring(&walk_ring);
                return Err(e);
            }
            Ok((serial, _, Err(e))) => {
                state.rings.drop_walk_ring(&walk_ring);
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
        if let Some(observer) = &request.observer {
            observer.hook.walked(id, &tree, serial, &self.hub, true);
        }
        root.pending = state.reader.has_pending() && has_pending(&tree);
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
        let Some(notes) = state.queue.as_mut().and_then(QueueWatches::read_notes) else {
            return;
        };
        let said = notes.said;
        let mut registry = self.lock();
        state.arm();
        let roots = &mut registry.roots;
        let dirty: HashSet<RootId> = notes
            .dirty
            .unwrap_or_else(|| roots.keys().copied().collect());
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
    root.pending = !root.gone && state.reader.has_pending() && has_pending(&root.tree);
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
        match state.walk(root.serial, &root.request, &tree) {
            Ok(again) => tree = again,
            Err(_) => break,
        }
    }
    tree
}

/// [`QueueWatches::watch_tree`], where there is a watch queue.
fn queue_tree(
    id: RootId,
    queued: &mut HashSet<KeySerial>,
    polled: &mut bool,
    tree: &Tree,
    state: &mut ThreadState,
) -> bool {
    state
        .queue
        .as_mut()
        .is_some_and(|queue| queue.watch_tree(id, queued, polled, tree))
}

/// [`QueueWatches::forget`], where there is a watch queue.
fn forget_queued(id: RootId, queued: &mut HashSet<KeySerial>, state: &mut ThreadState) {
    match state.queue.as_mut() {
        Some(queue) => queue.forget(id, queued),
        None => queued.clear(),
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
    let walked = state.walk(root.serial, &root.request, &root.tree);
    let new = match walked {
        Ok(tree) => tree,
        Err(e) if is_gone(&e) && root.request.observer.is_some() => {
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
    let mut notices = diff(
        &root.tree,
        &new,
        &mut |s| probe(s, &mut state.reader.buf),
        &|s| holds.contains(s),
    );
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
    if let Some(observer) = &root.request.observer {
        observer.hook.walked(id, &new, root.serial, hub, false);
    }
    root.tree = new;
}

/// Re-resolves an observed root whose key is gone, and hands the observer the new tree.
fn follow_replaced_anchor(hub: &Hub, id: RootId, root: &mut Root, state: &mut ThreadState) {
    root.holds.release_all();
    let found = state.resolve(&root.request, root.walk_ring.ring);
    let (serial, tree) = match found {
        Ok((serial, linked)) => {
            state.take_creds(&ThreadCreds::of(&root.request.viewer));
            let tree = state
                .walk(serial, &root.request, &Tree::default())
                .unwrap_or_default();
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
    if let Some(observer) = &root.request.observer {
        observer.hook.walked(id, &tree, serial, hub, false);
    }
    root.serial = serial;
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
