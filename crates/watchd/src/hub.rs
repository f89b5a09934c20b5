//! The hub: every event from every source passes through [`Hub::publish`], which offers it
//! to each subscription's watches and writes one packet per match without ever blocking.
//!
//! Per subscription it keeps the pipe's write end, the next sequence number and the loss
//! not yet reported. A full pipe costs that client the record (counted); the first write
//! that fits afterwards is the LOSS record. A task per subscription waits on the write end:
//! when the pipe drains it sends the pending LOSS, when the last read end closes (EPOLLERR)
//! it ends the subscription and frees everything, without waiting for the next event.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot};
use watchd_proto::{MAX_RECORD_LEN, RecordBuilder, RecordType, attr, meta, stamp};

use crate::conf::Limits;
use crate::creds;
use crate::error::{Error, Result};
use crate::event::{Event, now_ns};
use crate::identity::{Caller, Uid};
use crate::pipe::{self, Sent};
use crate::sys::{self, SharedFd};
pub use crate::watch::SubscriptionId;
use crate::watch::{Delivery, Tag, Watch};

/// Tag of records that concern the whole pipe rather than one watch (LOSS).
const PIPE_TAG: Tag = 0;

/// Records dropped since the last one that reached the pipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Loss {
    count: u64,
    first_seq: u64,
    types: u64,
}

/// The sending side of one subscription.
struct Outlet {
    pipe: Arc<OwnedFd>,
    next_seq: u64,
    loss: Option<Loss>,
    /// Records kept for the pipe, stamped and in order: an initial state larger than the pipe,
    /// and what arrives behind it. The pipe task writes them as the client reads.
    backlog: VecDeque<Vec<u8>>,
    backlog_bytes: usize,
}

/// What to do with a record the pipe cannot take right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Overflow {
    /// A live event for a client that is not keeping up: count it as lost.
    Drop,
    /// Part of a state the client asked for (snapshot, SYNC): keep it in the backlog.
    Keep,
}

/// The most a subscription's backlog may hold, as much as the largest pipe; what would go
/// beyond is lost and counted like any other loss.
const MAX_BACKLOG_BYTES: usize = 1 << 20;

impl Outlet {
    fn new(pipe: Arc<OwnedFd>) -> Outlet {
        Outlet {
            pipe,
            next_seq: 1,
            loss: None,
            backlog: VecDeque::new(),
            backlog_bytes: 0,
        }
    }

    /// Sends `record` (tag and seq still zero) stamped for this subscriber, after whatever
    /// is owed (backlog, then LOSS). `scratch` is the hub's one packet buffer.
    fn deliver(
        &mut self,
        tag: Tag,
        record: &[u8],
        record_type: RecordType,
        scratch: &mut [u8],
        overflow: Overflow,
    ) -> Sent {
        let owed = self.flush(scratch);
        if owed == Sent::ReaderGone {
            return Sent::ReaderGone;
        }
        let seq = self.take_seq();
        let packet = &mut scratch[..record.len()];
        packet.copy_from_slice(record);
        stamp(packet, tag, seq);
        // Behind anything still owed, the record can only wait (or be lost): never overtake.
        let sent = if owed == Sent::Full {
            Sent::Full
        } else {
            pipe::send(&*self.pipe, packet)
        };
        if sent == Sent::Full && !self.keep(packet, overflow) {
            self.count_lost(seq, record_type);
        }
        sent
    }

    /// Queues a stamped packet when it is wanted and fits; records behind a non-empty
    /// backlog queue too, to keep the order. Nothing queues behind a loss: LOSS comes next.
    fn keep(&mut self, packet: &[u8], overflow: Overflow) -> bool {
        let wanted = overflow == Overflow::Keep || !self.backlog.is_empty();
        if !wanted || self.loss.is_some() || self.backlog_bytes + packet.len() > MAX_BACKLOG_BYTES {
            return false;
        }
        self.backlog_bytes += packet.len();
        self.backlog.push_back(packet.to_vec());
        true
    }

    /// Writes what is owed, backlog first, then the LOSS record. `Delivered` when nothing is
    /// owed any more.
    fn flush(&mut self, scratch: &mut [u8]) -> Sent {
        while let Some(packet) = self.backlog.front() {
            match pipe::send(&*self.pipe, packet) {
                Sent::Delivered => {
                    self.backlog_bytes -= packet.len();
                    self.backlog.pop_front();
                }
                other => return other,
            }
        }
        self.flush_loss(scratch)
    }

    /// Writes the owed LOSS record, if any. It takes a sequence number only once written,
    /// so a reader sees: the gap, then LOSS describing exactly that gap.
    fn flush_loss(&mut self, scratch: &mut [u8]) -> Sent {
        let Some(loss) = self.loss else {
            return Sent::Delivered;
        };
        let mut builder = RecordBuilder::new(RecordType::Meta, meta::LOSS, 0, now_ns());
        for (id, value) in [
            (attr::LOST_COUNT, loss.count),
            (attr::FIRST_LOST_SEQ, loss.first_seq),
            (attr::LOST_TYPES, loss.types),
        ] {
            builder
                .put_u64(id, value)
                .expect("a LOSS record is far below one packet");
        }
        let record = builder.finish();
        let packet = &mut scratch[..record.len()];
        packet.copy_from_slice(&record);
        stamp(packet, PIPE_TAG, self.next_seq);
        let sent = pipe::send(&*self.pipe, packet);
        if sent == Sent::Delivered {
            self.next_seq += 1;
            self.loss = None;
        }
        sent
    }

    fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    fn count_lost(&mut self, seq: u64, record_type: RecordType) {
        let loss = self.loss.get_or_insert(Loss {
            count: 0,
            first_seq: seq,
            types: 0,
        });
        loss.count += 1;
        loss.types |= record_type.bit();
    }
}

struct Subscription {
    /// Who subscribed, as the bus reported them.
    caller: Arc<Caller>,
    depth: u32,
    outlet: Outlet,
    watches: Vec<Watch>,
    /// Dropping this stops the subscription's pipe task.
    _stop_task: oneshot::Sender<()>,
}

impl Subscription {
    fn owner(&self) -> Uid {
        self.caller.uid
    }

    fn watch_mut(&mut self, tag: Tag) -> Option<&mut Watch> {
        self.watches.iter_mut().find(|w| w.tag == tag)
    }

    fn has_watch(&self, tag: Tag) -> bool {
        self.watches.iter().any(|w| w.tag == tag)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct UidUsage {
    subscriptions: u32,
    watches: u32,
    /// Pages the kernel granted to this uid's pipes (charged to this uid, see `subscribe`).
    pipe_pages: u32,
}

struct State {
    subscriptions: BTreeMap<SubscriptionId, Subscription>,
    usage: HashMap<Uid, UidUsage>,
    next_id: u64,
    watch_count: u32,
    pipe_pages: u32,
    scratch: Box<[u8; MAX_RECORD_LEN]>,
    /// Replaced whole by a reload ([`Hub::set_limits`]); read under this lock, so a request
    /// is checked against one set of limits.
    limits: Limits,
    /// What uid 0's subscriptions may hold: their pipes are charged to root's account.
    root_share: pipe::Budget,
}

impl State {
    fn usage(&mut self, uid: Uid) -> &mut UidUsage {
        self.usage.entry(uid).or_default()
    }

    /// Drops a subscription and everything it holds; its pipe task then ends and closes
    /// the write end.
    fn remove(&mut self, id: SubscriptionId) -> Option<Subscription> {
        let sub = self.subscriptions.remove(&id)?;
        let watches = sub.watches.len() as u32;
        self.watch_count -= watches;
        self.pipe_pages -= sub.depth;
        let usage = self.usage(sub.owner());
        usage.subscriptions -= 1;
        usage.watches -= watches;
        usage.pipe_pages -= sub.depth;
        if *usage == UidUsage::default() {
            self.usage.remove(&sub.owner());
        }
        Some(sub)
    }
}

/// Counts for `watchctl status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counts {
    pub subscriptions: u32,
    pub watches: u32,
}

/// A subscription as `watchctl list` shows it to its owner: [`Hub::owned_by`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriptionSummary {
    pub id: SubscriptionId,
    pub depth: u32,
    /// (tag, kind) of each watch, in the order they were added.
    pub watches: Vec<(Tag, &'static str)>,
}

/// What a subscriber gets back from [`Hub::subscribe`].
#[derive(Debug)]
pub struct NewSubscription {
    pub id: SubscriptionId,
    pub read_end: OwnedFd,
    pub depth: u32,
}

pub struct Hub {
    state: Mutex<State>,
    /// Tells the bus side which subscriptions ended, so it can drop their objects.
    ended: mpsc::UnboundedSender<SubscriptionId>,
}

impl Hub {
    /// Root's share of pipe pages is set here from root's soft limit as it is at start, and
    /// again by each [`Hub::set_limits`].
    pub fn new(limits: Limits) -> (Arc<Hub>, mpsc::UnboundedReceiver<SubscriptionId>) {
        let root_share = root_share_of(&limits);
        let (ended, ended_rx) = mpsc::unbounded_channel();
        let state = State {
            subscriptions: BTreeMap::new(),
            usage: HashMap::new(),
            next_id: 1,
            watch_count: 0,
            pipe_pages: 0,
            scratch: Box::new([0; MAX_RECORD_LEN]),
            limits,
            root_share,
        };
        (
            Arc::new(Hub {
                state: Mutex::new(state),
                ended,
            }),
            ended_rx,
        )
    }

    /// New limits (a reload) for the requests that follow. What subscriptions and watches
    /// already hold stays, also beyond a lowered limit: only new ones are refused.
    pub fn set_limits(&self, limits: Limits) {
        let root_share = root_share_of(&limits);
        let mut state = self.lock();
        state.limits = limits;
        state.root_share = root_share;
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves counters we cannot trust; stopping is safer
        // than delivering from them.
        self.state.lock().expect("hub state poisoned")
    }

    /// Offers `event` to every watch; the record is encoded only if some watch wants it.
    /// A REMOVAL record ends each watch it goes to.
    pub fn publish(&self, event: &Event) {
        let mut state = self.lock();
        let State {
            subscriptions,
            scratch,
            watch_count,
            usage,
            ..
        } = &mut *state;
        let mut gone = Vec::new();
        for (id, sub) in subscriptions.iter_mut() {
            let mut ended = Vec::new();
            for watch in &sub.watches {
                if !watch.wants(event) {
                    continue;
                }
                if sub.outlet.deliver(
                    watch.tag,
                    &watch.record_for(event),
                    event.record_type,
                    &mut scratch[..],
                    Overflow::Drop,
                ) == Sent::ReaderGone
                {
                    gone.push(*id);
                    break;
                }
                watch.scope.delivered(
                    event,
                    &Delivery {
                        subscription: *id,
                        subscriber: &sub.caller,
                    },
                );
                if event.ends_watch() {
                    ended.push(watch.tag);
                }
            }
            if !ended.is_empty() {
                sub.watches.retain(|w| !ended.contains(&w.tag));
                let n = ended.len() as u32;
                *watch_count -= n;
                if let Some(u) = usage.get_mut(&sub.caller.uid) {
                    u.watches -= n;
                }
                tracing::info!(subscription = id.0, tags = ?ended, "watches ended: their object is gone");
            }
        }
        for id in gone {
            self.end(&mut state, id, "reader closed");
        }
    }

    fn end(&self, state: &mut State, id: SubscriptionId, why: &str) {
        if let Some(sub) = state.remove(id) {
            tracing::info!(subscription = id.0, uid = %sub.owner(), reason = why, "subscription ended");
            let _ = self.ended.send(id);
        }
    }

    /// Creates a subscription for `caller`: a packet pipe of `depth` packets whose write end
    /// the hub keeps. Must be called within a Tokio runtime (it starts the pipe's task).
    pub fn subscribe(self: &Arc<Self>, caller: Arc<Caller>, depth: u32) -> Result<NewSubscription> {
        let owner = caller.uid;
        // Checked before the pipe exists, so a refused caller costs nothing; then again, with
        // what the kernel granted, once the pipe is made. The lock is not held in between:
        // making the pipe takes a thread, and publishing must not wait for it.
        self.admit(&mut self.lock(), &caller, depth, pipe::pages_for(depth))?;
        // Made as the subscriber's real uid: the kernel charges a pipe's pages to the user
        // that created it, at creation and at every later F_SETPIPE_SZ on either end. The
        // client holds the read end and may grow it to fs.pipe-max-size, beyond this budget;
        // charged to root, that would shrink the pipes of root's other services.
        let (read_end, write_end, depth) = creds::charged_to(owner.0, || pipe::packet_pipe(depth))
            .map_err(|e| match e.raw_os_error() {
                Some(libc::EMFILE | libc::ENFILE) => out_of_descriptors(e),
                _ => Error::Failed(format!("cannot create a packet pipe: {e}")),
            })?;
        check_descriptor_reserve(write_end.as_fd())?;
        let mut state = self.lock();
        self.admit(&mut state, &caller, depth, depth)?;
        let id = SubscriptionId(state.next_id);
        state.next_id += 1;
        let write_end = Arc::new(write_end);
        let (stop_task, stopped) = oneshot::channel();
        let watcher = sys::register_async(write_end.clone(), tokio::io::Interest::WRITABLE)
            .map_err(|e| Error::Failed(format!("cannot poll the pipe: {e}")))?;
        tokio::spawn(watch_pipe(Arc::downgrade(self), id, watcher, stopped));
        state.subscriptions.insert(
            id,
            Subscription {
                caller,
                depth,
                outlet: Outlet::new(write_end),
                watches: Vec::new(),
                _stop_task: stop_task,
            },
        );
        state.pipe_pages += depth;
        let usage = state.usage(owner);
        usage.subscriptions += 1;
        usage.pipe_pages += depth;
        Ok(NewSubscription {
            id,
            read_end,
            depth,
        })
    }

    /// Refuses one more subscription of `caller` past the subscription limits, or a pipe of
    /// `pages` past the pipe page budgets.
    fn admit(&self, state: &mut State, caller: &Caller, depth: u32, pages: u32) -> Result<()> {
        let owner = caller.uid;
        let total = state.subscriptions.len() as u32;
        if total >= state.limits.max_subscriptions {
            return Err(Error::LimitExceeded(format!(
                "the daemon holds {total} subscriptions, its limit (limits.max_subscriptions)"
            )));
        }
        let mine = state.usage(owner).subscriptions;
        if mine >= state.limits.max_subscriptions_per_uid {
            return Err(Error::LimitExceeded(format!(
                "uid {owner} already holds {mine} subscriptions, the limit (limits.max_subscriptions_per_uid)"
            )));
        }
        self.check_pipe_pages(state, caller, depth, pages)
    }

    /// Refuses a pipe of `pages` for `caller` that would take its uid or the daemon past its
    /// pipe page budget. Root's share is smaller when root's soft limit is low: its pages
    /// are shared with every other root service.
    fn check_pipe_pages(
        &self,
        state: &mut State,
        caller: &Caller,
        depth: u32,
        pages: u32,
    ) -> Result<()> {
        let owner = caller.uid;
        let total = state.pipe_pages;
        let mine = state.usage(owner).pipe_pages;
        let (share, share_key) = if owner == Uid(0) {
            (state.root_share.pages, state.root_share.set_by.clone())
        } else {
            (
                state.limits.max_pipe_pages_per_uid,
                pipe::PER_UID_KEY.to_owned(),
            )
        };
        let (whose, used, budget, key) = if mine + pages > share {
            (
                format!("uid {owner}'s subscriptions hold {mine} pipe pages"),
                mine,
                share,
                share_key,
            )
        } else if total + pages > state.limits.max_pipe_pages {
            (
                format!("the daemon's subscriptions hold {total} pipe pages (uid {owner}: {mine})"),
                total,
                state.limits.max_pipe_pages,
                "limits.max_pipe_pages".to_owned(),
            )
        } else {
            return Ok(());
        };
        tracing::info!(
            uid = %owner, pid = %caller.pid, pages, used, budget, key,
            "subscribe refused: pipe page budget"
        );
        Err(Error::LimitExceeded(format!(
            "{whose}; a pipe of depth {depth} takes {pages} more, beyond the budget of {budget} pages ({key})"
        )))
    }

    /// Adds `watch` to subscription `id`. `initial` (SNAPSHOT records, then SYNC) is sent
    /// before the watch sees any live event; callers hold the source's lock across this
    /// call so that nothing happens in between.
    pub fn add_watch(
        &self,
        id: SubscriptionId,
        watch: Watch,
        initial: Option<&[Event]>,
    ) -> Result<()> {
        let mut state = self.lock();
        let limits = state.limits.clone();
        let sub = state.subscriptions.get(&id).ok_or_else(|| gone(id))?;
        let owner = sub.owner();
        if sub.has_watch(watch.tag) {
            return Err(Error::DuplicateTag(format!(
                "this subscription already has a watch tagged {}",
                watch.tag
            )));
        }
        if sub.watches.len() as u32 >= limits.max_watches_per_subscription {
            return Err(Error::LimitExceeded(format!(
                "the subscription holds {} watches, the limit (limits.max_watches_per_subscription)",
                sub.watches.len()
            )));
        }
        let mine = state.usage(owner).watches;
        if mine >= limits.max_watches_per_uid {
            return Err(Error::LimitExceeded(format!(
                "uid {owner} already holds {mine} watches, the limit (limits.max_watches_per_uid)"
            )));
        }
        if let Some(snapshot) = initial
            && self.send_state(&mut state, id, &watch, snapshot) == Sent::ReaderGone
        {
            self.end(&mut state, id, "reader closed");
            return Err(gone(id));
        }
        state
            .subscriptions
            .get_mut(&id)
            .expect("checked above")
            .watches
            .push(watch);
        state.watch_count += 1;
        state.usage(owner).watches += 1;
        Ok(())
    }

    /// Sends the watch's state again (after a loss); same locking rule as [`Hub::add_watch`].
    pub fn resync(&self, id: SubscriptionId, tag: Tag, snapshot: &[Event]) -> Result<()> {
        let mut state = self.lock();
        let sub = state.subscriptions.get_mut(&id).ok_or_else(|| gone(id))?;
        let watch = sub.watch_mut(tag).ok_or_else(|| no_watch(tag))?.clone();
        if self.send_state(&mut state, id, &watch, snapshot) == Sent::ReaderGone {
            self.end(&mut state, id, "reader closed");
            return Err(gone(id));
        }
        Ok(())
    }

    fn send_state(
        &self,
        state: &mut State,
        id: SubscriptionId,
        watch: &Watch,
        snapshot: &[Event],
    ) -> Sent {
        let State {
            subscriptions,
            scratch,
            ..
        } = state;
        let outlet = &mut subscriptions.get_mut(&id).expect("caller checked").outlet;
        for event in snapshot.iter().filter(|e| watch.wants(e)) {
            if outlet.deliver(
                watch.tag,
                &watch.record_for(event),
                event.record_type,
                &mut scratch[..],
                Overflow::Keep,
            ) == Sent::ReaderGone
            {
                return Sent::ReaderGone;
            }
        }
        let sync = RecordBuilder::new(RecordType::Meta, meta::SYNC, 0, now_ns()).finish();
        outlet.deliver(
            watch.tag,
            &sync,
            RecordType::Meta,
            &mut scratch[..],
            Overflow::Keep,
        )
    }

    pub fn remove_watch(&self, id: SubscriptionId, tag: Tag) -> Result<()> {
        let mut state = self.lock();
        let sub = state.subscriptions.get_mut(&id).ok_or_else(|| gone(id))?;
        let at = sub
            .watches
            .iter()
            .position(|w| w.tag == tag)
            .ok_or_else(|| no_watch(tag))?;
        sub.watches.remove(at);
        let owner = sub.owner();
        state.watch_count -= 1;
        state.usage(owner).watches -= 1;
        Ok(())
    }

    /// The watch tagged `tag`, for callers that need its scope (e.g. to build a resync).
    pub fn watch(&self, id: SubscriptionId, tag: Tag) -> Result<Watch> {
        let mut state = self.lock();
        let sub = state.subscriptions.get_mut(&id).ok_or_else(|| gone(id))?;
        Ok(sub.watch_mut(tag).ok_or_else(|| no_watch(tag))?.clone())
    }

    /// Refuses a new watch on subscription `id` (which may hold descriptors: a mount view,
    /// a watched directory) when the daemon is down to its [`DESCRIPTOR_RESERVE`].
    pub fn check_descriptors(&self, id: SubscriptionId) -> Result<()> {
        let pipe = self
            .lock()
            .subscriptions
            .get(&id)
            .map(|sub| sub.outlet.pipe.clone())
            .ok_or_else(|| gone(id))?;
        check_descriptor_reserve(pipe.as_fd())
    }

    /// Who subscribed, and the depth granted, while the subscription lives.
    pub fn describe(&self, id: SubscriptionId) -> Option<(Arc<Caller>, u32)> {
        self.lock()
            .subscriptions
            .get(&id)
            .map(|s| (s.caller.clone(), s.depth))
    }

    /// The subscriptions `uid` owns, oldest first.
    pub fn owned_by(&self, uid: Uid) -> Vec<SubscriptionSummary> {
        self.lock()
            .subscriptions
            .iter()
            .filter(|(_, sub)| sub.owner() == uid)
            .map(|(id, sub)| SubscriptionSummary {
                id: *id,
                depth: sub.depth,
                watches: sub.watches.iter().map(|w| (w.tag, w.kind.name())).collect(),
            })
            .collect()
    }

    pub fn counts(&self) -> Counts {
        let state = self.lock();
        Counts {
            subscriptions: state.subscriptions.len() as u32,
            watches: state.watch_count,
        }
    }

    /// Called by the pipe task when the pipe has room again: the backlog, then the LOSS.
    fn pipe_drained(&self, id: SubscriptionId) {
        let mut state = self.lock();
        let State {
            subscriptions,
            scratch,
            ..
        } = &mut *state;
        let Some(sub) = subscriptions.get_mut(&id) else {
            return;
        };
        if sub.outlet.flush(&mut scratch[..]) == Sent::ReaderGone {
            self.end(&mut state, id, "reader closed");
        }
    }

    fn reader_closed(&self, id: SubscriptionId) {
        let mut state = self.lock();
        self.end(&mut state, id, "reader closed");
    }
}

/// Descriptors that new subscriptions and watches leave free for what cannot be refused
/// cleanly: a D-Bus message carrying descriptors the kernel has no room for makes zbus drop
/// the whole bus connection (the daemon then exits, ending every subscription), and the
/// system bus may have 64 on their way to one connection (`max_outgoing_unix_fds`); a
/// Subscribe reply duplicates the pipe's read end; a check opens a pidfd and /proc files.
pub const DESCRIPTOR_RESERVE: usize = 64;

/// Refuses when fewer than [`DESCRIPTOR_RESERVE`] more descriptors could be opened. Counted by
/// opening them (copies of `any`) and closing them at once: the kernel hands out the lowest
/// free numbers below RLIMIT_NOFILE, so this is exact whatever holes closed ones left.
fn check_descriptor_reserve(any: BorrowedFd<'_>) -> Result<()> {
    let mut probes = Vec::with_capacity(DESCRIPTOR_RESERVE);
    while probes.len() < DESCRIPTOR_RESERVE {
        let probe =
            rustix::io::fcntl_dupfd_cloexec(any, 0).map_err(|e| out_of_descriptors(e.into()))?;
        probes.push(probe);
    }
    Ok(())
}

/// Out of descriptors (each subscription holds its write end and its subscriber's pidfd) is
/// a limit like the others, and passes as subscriptions close: the caller is told which.
fn out_of_descriptors(e: std::io::Error) -> Error {
    use nix::sys::resource::{Resource, getrlimit};
    match e.raw_os_error() {
        Some(libc::EMFILE) => {
            let limit = getrlimit(Resource::RLIMIT_NOFILE).map_or_else(
                |_| "its RLIMIT_NOFILE".to_owned(),
                |(soft, _)| format!("RLIMIT_NOFILE {soft}"),
            );
            Error::LimitExceeded(format!(
                "the daemon is at its limit of open files ({limit}, less {DESCRIPTOR_RESERVE} kept \
                 free for the bus): try again once subscriptions have closed (LimitNOFILE= in \
                 watchd.service)"
            ))
        }
        Some(libc::ENFILE) => Error::LimitExceeded(format!(
            "the system's open-file table is full (fs.file-max): {e}"
        )),
        _ => Error::Failed(format!("cannot open a descriptor: {e}")),
    }
}

fn gone(id: SubscriptionId) -> Error {
    Error::Failed(format!("subscription {} has ended", id.0))
}

fn no_watch(tag: Tag) -> Error {
    Error::NoSuchWatch(format!("this subscription has no watch tagged {tag}"))
}

/// One per subscription: sleeps until the kernel says the pipe has room (send the pending
/// LOSS) or has no reader left (end the subscription). Holds only a weak reference, so a
/// dropped hub ends it too.
async fn watch_pipe(
    hub: std::sync::Weak<Hub>,
    id: SubscriptionId,
    pipe: AsyncFd<SharedFd>,
    mut stop: oneshot::Receiver<()>,
) {
    loop {
        let mut ready = tokio::select! {
            ready = pipe.writable() => match ready {
                Ok(ready) => ready,
                Err(_) => return,
            },
            _ = &mut stop => return,
        };
        let Some(hub) = hub.upgrade() else { return };
        if ready.ready().is_write_closed() {
            hub.reader_closed(id);
            return;
        }
        hub.pipe_drained(id);
        // Edge-triggered: the next wake-up is the next time a full pipe gets room, or the
        // last reader goes away.
        ready.clear_ready();
    }
}

/// Root's share of pipe pages under `limits`, from root's soft limit as it is now; logged
/// with the budgets.
fn root_share_of(limits: &Limits) -> pipe::Budget {
    let soft_limit = pipe::user_pages_soft_limit();
    let root_share = pipe::root_share(limits.max_pipe_pages_per_uid, soft_limit);
    tracing::info!(
        pages = limits.max_pipe_pages, per_uid = limits.max_pipe_pages_per_uid,
        root = root_share.pages, soft_limit = ?soft_limit,
        "pipe page budgets: all subscriptions, each uid's, root's"
    );
    root_share
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Change;
    use crate::watch::{Filters, Kind, Scope};
    use watchd_proto::{Record, mount};

    /// A change of no source's: the hub knows none.
    #[derive(Debug)]
    struct Probe(String);

    impl Change for Probe {
        fn encode(&self, record: &mut RecordBuilder, _: RecordType) {
            record.put(attr::OBJECT, self.0.as_bytes()).unwrap();
        }
    }

    #[derive(Debug)]
    struct EveryProbe;

    impl Scope for EveryProbe {
        fn covers(&self, event: &Event) -> bool {
            event.subject::<Probe>().is_some()
        }
    }

    fn probe(object: &str) -> Event {
        Event::new(
            RecordType::Mount,
            mount::ATTACH,
            0,
            Arc::new(Probe(object.to_owned())),
        )
    }

    fn watch(tag: Tag) -> Watch {
        Watch {
            tag,
            kind: Kind("probe"),
            filters: Filters::default(),
            scope: Arc::new(EveryProbe),
        }
    }

    /// Each pipe is made by a thread wearing the subscriber's real uid, which needs root.
    fn can_subscribe_as_others() -> bool {
        let root = nix::unistd::geteuid().is_root();
        if !root {
            assert!(std::env::var_os("CI").is_none(), "CI runs as root");
            eprintln!("SKIP: needs root to make pipes charged to other uids");
        }
        root
    }

    fn read_all(fd: &OwnedFd) -> Vec<Vec<u8>> {
        nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = nix::unistd::read(fd, &mut buf) {
            if n == 0 {
                break;
            }
            out.push(buf[..n].to_vec());
        }
        out
    }

    #[tokio::test]
    async fn a_full_pipe_loses_records_for_that_client_only_then_reports_the_exact_loss_first() {
        if !can_subscribe_as_others() {
            return;
        }
        let (hub, _ended) = Hub::new(Limits::default());
        let slow = hub
            .subscribe(Caller::with_credentials(Uid(1000)), 4)
            .unwrap();
        let fast = hub
            .subscribe(Caller::with_credentials(Uid(1000)), 64)
            .unwrap();
        hub.add_watch(slow.id, watch(11), None).unwrap();
        hub.add_watch(fast.id, watch(22), None).unwrap();
        for _ in 0..10 {
            hub.publish(&probe("/mnt"));
        }
        let fast_records = read_all(&fast.read_end);
        assert_eq!(fast_records.len(), 10);
        for (i, packet) in fast_records.iter().enumerate() {
            let r = Record::parse(packet).unwrap();
            assert_eq!((r.header.seq, r.header.tag), (i as u64 + 1, 22));
            assert!(r.header.is(RecordType::Mount, mount::ATTACH));
        }
        // The slow reader holds 4; 6 were lost. Reading makes room, the LOSS goes first.
        let slow_records = read_all(&slow.read_end);
        assert_eq!(slow_records.len(), 4);
        hub.publish(&probe("/mnt"));
        let after = read_all(&slow.read_end);
        let loss = Record::parse(&after[0]).unwrap();
        assert!(loss.header.is(RecordType::Meta, meta::LOSS));
        assert_eq!(loss.get_u64(attr::LOST_COUNT), Some(6));
        assert_eq!(loss.get_u64(attr::FIRST_LOST_SEQ), Some(5));
        assert_eq!(
            loss.get_u64(attr::LOST_TYPES),
            Some(RecordType::Mount.bit())
        );
        assert_eq!(loss.header.seq, 11, "LOSS takes the number after the gap");
        let next = Record::parse(&after[1]).unwrap();
        assert_eq!(next.header.seq, 12);
    }

    #[tokio::test]
    async fn an_initial_state_larger_than_the_pipe_arrives_whole_then_sync_then_live_events() {
        if !can_subscribe_as_others() {
            return;
        }
        let (hub, _ended) = Hub::new(Limits::default());
        let sub = hub
            .subscribe(Caller::with_credentials(Uid(1000)), 4)
            .unwrap();
        let snapshot: Vec<Event> = (0..10).map(|i| probe(&format!("/mnt/{i}"))).collect();
        hub.add_watch(sub.id, watch(3), Some(&snapshot)).unwrap();
        // A live event while the backlog is still being written waits behind it.
        hub.publish(&probe("/live"));
        let mut got = Vec::new();
        for _ in 0..500 {
            got.extend(read_all(&sub.read_end));
            if got.len() >= 12 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        let records: Vec<Record> = got.iter().map(|p| Record::parse(p).unwrap()).collect();
        let seqs: Vec<u64> = records.iter().map(|r| r.header.seq).collect();
        assert_eq!(seqs, (1..=12).collect::<Vec<_>>(), "in order, nothing lost");
        assert!(
            records[..10]
                .iter()
                .all(|r| r.header.is(RecordType::Mount, mount::ATTACH))
        );
        assert!(records[10].header.is(RecordType::Meta, meta::SYNC) && records[10].header.tag == 3);
        assert_eq!(records[11].get_str(attr::OBJECT).as_deref(), Some("/live"));
    }

    /// `watchctl list` shows a uid its own subscriptions and nobody else's, root included.
    #[tokio::test]
    async fn owned_by_lists_a_uids_own_subscriptions_only() {
        if !can_subscribe_as_others() {
            return;
        }
        let (hub, _ended) = Hub::new(Limits::default());
        let first = hub
            .subscribe(Caller::with_credentials(Uid(1000)), 16)
            .unwrap();
        let other = hub
            .subscribe(Caller::with_credentials(Uid(1001)), 8)
            .unwrap();
        let second = hub
            .subscribe(Caller::with_credentials(Uid(1000)), 4)
            .unwrap();
        hub.add_watch(first.id, watch(7), None).unwrap();
        hub.add_watch(first.id, watch(2), None).unwrap();
        hub.add_watch(other.id, watch(1), None).unwrap();
        let summary = |id, depth, watches: &[(Tag, &'static str)]| SubscriptionSummary {
            id,
            depth,
            watches: watches.to_vec(),
        };
        assert_eq!(
            hub.owned_by(Uid(1000)),
            [
                summary(first.id, 16, &[(7, "probe"), (2, "probe")]),
                summary(second.id, 4, &[]),
            ]
        );
        assert_eq!(
            hub.owned_by(Uid(1001)),
            [summary(other.id, 8, &[(1, "probe")])]
        );
        assert_eq!(hub.owned_by(Uid(0)), []);
    }

    #[tokio::test]
    async fn new_limits_apply_to_new_requests_and_keep_what_is_held() {
        if !can_subscribe_as_others() {
            return;
        }
        let (hub, _ended) = Hub::new(Limits::default());
        let held: Vec<_> = (0..3)
            .map(|_| {
                hub.subscribe(Caller::with_credentials(Uid(1000)), 16)
                    .unwrap()
            })
            .collect();
        hub.add_watch(held[0].id, watch(1), None).unwrap();
        hub.set_limits(Limits {
            max_subscriptions_per_uid: 2,
            max_watches_per_uid: 1,
            ..Limits::default()
        });
        let err = hub
            .subscribe(Caller::with_credentials(Uid(1000)), 16)
            .unwrap_err();
        assert!(
            matches!(&err, Error::LimitExceeded(m) if m.contains("already holds 3 subscriptions")),
            "{err:?}"
        );
        assert!(matches!(
            hub.add_watch(held[1].id, watch(2), None),
            Err(Error::LimitExceeded(m)) if m.contains("max_watches_per_uid")
        ));
        assert_eq!(
            hub.counts(),
            Counts {
                subscriptions: 3,
                watches: 1
            },
            "nothing held was ended"
        );
        hub.set_limits(Limits::default());
        hub.subscribe(Caller::with_credentials(Uid(1000)), 16)
            .expect("raised again");
    }

    #[tokio::test]
    async fn limits_are_enforced_with_the_limit_named_and_released_when_the_reader_closes() {
        if !can_subscribe_as_others() {
            return;
        }
        let limits = Limits {
            max_subscriptions_per_uid: 1,
            max_watches_per_subscription: 1,
            ..Limits::default()
        };
        let (hub, mut ended) = Hub::new(limits);
        let sub = hub
            .subscribe(Caller::with_credentials(Uid(1000)), 16)
            .unwrap();
        let err = hub
            .subscribe(Caller::with_credentials(Uid(1000)), 16)
            .unwrap_err();
        assert!(
            matches!(&err, Error::LimitExceeded(m) if m.contains("max_subscriptions_per_uid")),
            "{err:?}"
        );
        let _other = hub
            .subscribe(Caller::with_credentials(Uid(1001)), 16)
            .expect("another uid is not affected");
        hub.add_watch(sub.id, watch(1), None).unwrap();
        assert!(matches!(
            hub.add_watch(sub.id, watch(2), None),
            Err(Error::LimitExceeded(_))
        ));
        assert!(matches!(
            hub.add_watch(sub.id, watch(1), None),
            Err(Error::DuplicateTag(_))
        ));
        drop(sub.read_end);
        let id = tokio::time::timeout(std::time::Duration::from_secs(5), ended.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            id, sub.id,
            "closing the read end ends the subscription without any event"
        );
        assert_eq!(
            hub.counts(),
            Counts {
                subscriptions: 1,
                watches: 0
            }
        );
        assert!(
            hub.subscribe(Caller::with_credentials(Uid(1000)), 16)
                .is_ok(),
            "the uid's quota came back"
        );
    }

    fn pipe_pages(hub: &Hub, uid: u32) -> (u32, u32) {
        let mut state = hub.lock();
        (state.pipe_pages, state.usage(Uid(uid)).pipe_pages)
    }

    async fn ended_next(ended: &mut mpsc::UnboundedReceiver<SubscriptionId>) -> SubscriptionId {
        tokio::time::timeout(std::time::Duration::from_secs(5), ended.recv())
            .await
            .unwrap()
            .unwrap()
    }

    #[tokio::test]
    async fn pipe_pages_are_charged_per_uid_and_in_all_refused_naming_the_budget_and_given_back() {
        if !can_subscribe_as_others() {
            return;
        }
        let limits = Limits {
            max_pipe_pages: 48,
            max_pipe_pages_per_uid: 32,
            ..Limits::default()
        };
        let (hub, mut ended) = Hub::new(limits);
        let uid = |uid| Caller::with_credentials(Uid(uid));
        let first = hub.subscribe(uid(1000), 16).unwrap();
        let second = hub.subscribe(uid(1000), 9).unwrap();
        assert_eq!(
            second.depth, 16,
            "the kernel rounds up, and that is what is charged"
        );
        assert_eq!(pipe_pages(&hub, 1000), (32, 32));

        let err = hub.subscribe(uid(1000), 2).unwrap_err();
        assert!(
            matches!(&err, Error::LimitExceeded(m) if m.contains("uid 1000's subscriptions hold 32 pipe pages")
                && m.contains("depth 2 takes 2 more, beyond the budget of 32 pages (limits.max_pipe_pages_per_uid)")),
            "{err:?}"
        );
        let other = hub
            .subscribe(uid(1001), 16)
            .expect("another uid has its own share");
        let err = hub.subscribe(uid(1002), 2).unwrap_err();
        assert!(
            matches!(&err, Error::LimitExceeded(m) if m.contains("the daemon's subscriptions hold 48 pipe pages (uid 1002: 0)")
                && m.contains("beyond the budget of 48 pages (limits.max_pipe_pages)")),
            "{err:?}"
        );
        assert_eq!(hub.counts().subscriptions, 3, "a refusal creates nothing");
        assert_eq!(pipe_pages(&hub, 1002), (48, 0));

        drop(first.read_end);
        assert_eq!(ended_next(&mut ended).await, first.id);
        assert_eq!(
            pipe_pages(&hub, 1000),
            (32, 16),
            "the pipe's pages came back"
        );
        let third = hub
            .subscribe(uid(1002), 16)
            .expect("the daemon's budget came back");
        assert!(
            matches!(hub.subscribe(uid(1000), 2), Err(Error::LimitExceeded(m)) if m.contains("limits.max_pipe_pages)")),
            "uid 1000 is under its share, but the daemon is full"
        );
        drop(other.read_end);
        assert_eq!(ended_next(&mut ended).await, other.id);
        hub.subscribe(uid(1000), 16)
            .expect("uid 1001's pages went back to the daemon's budget");
        assert_eq!(pipe_pages(&hub, 1000), (48, 32));
        drop((second, third));
    }

    #[tokio::test]
    async fn roots_own_subscriptions_stop_at_roots_share_of_its_soft_limit() {
        if !can_subscribe_as_others() {
            return;
        }
        let (hub, _ended) = Hub::new(Limits::default());
        hub.lock().root_share = pipe::root_share(1024, Some(32));
        let _root = hub.subscribe(Caller::with_credentials(Uid(0)), 16).unwrap();
        let err = hub
            .subscribe(Caller::with_credentials(Uid(0)), 2)
            .unwrap_err();
        assert!(
            matches!(&err, Error::LimitExceeded(m) if m.contains("uid 0's subscriptions hold 16 pipe pages")
                && m.contains("budget of 16 pages (half of fs.pipe-user-pages-soft (32)")),
            "{err:?}"
        );
        hub.subscribe(Caller::with_credentials(Uid(1000)), 16)
            .expect("other uids' pipes are charged to their own accounts");
    }
}
