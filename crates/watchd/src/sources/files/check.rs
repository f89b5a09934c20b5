//! The as-the-caller check of every file event, on one thread per caller.
//!
//! A subscriber may see an event only if it could look the object up itself, now: a fresh
//! path walk from its root (`openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`) with its
//! fsuid, fsgid and groups, to the directory the name is in, that lands on that very
//! directory (device and inode), which it may read (`faccessat(AT_EACCESS)` on what its own
//! walk opened). A descriptor root opened would not do: `faccessat` on it still succeeds
//! after a `chmod 700` of an ancestor, while a walk is refused at once.
//!
//! Why a thread per caller (per uid, gid, groups and root directory), wearing the caller's
//! credentials for its whole life: a switch of credentials costs 3.4 µs, a walk and check
//! 0.7 µs, so the checks are batched on a thread that never switches. Why not in
//! `Scope::covers`: that runs under the hub's lock, for every subscription, and a walk can
//! block (a hung network filesystem on the path); here a slow caller stalls only its own
//! checker. The reading thread never waits for a checker: each has a bounded queue, and a
//! full one drops that caller's events and gives its watches a LOSS when it has room again.
//!
//! A checker also looks at each of its watches again once a second, and whenever an event
//! says the watched object moved or went or its own check failed: when the watched path no
//! longer names the watched object, or the caller may no longer look it up, the watch gets
//! its REMOVAL and ends.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use rustix::fs::{Access, AtFlags};
use watchd_proto::{RecordType, file, meta};

use super::{FileChange, FileId, KIND, Object, Removed, WatchState, relative_c_path};
use crate::creds::{self, FsCreds};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::hub::Hub;
use crate::sys::{self, ResolveFlags};
use crate::watch::Notice;

/// Batches of events a checker may have waiting; past it, its caller loses events.
const QUEUE: usize = 1024;
/// The reason of the LOSS a checker's full queue gives its watches.
const BEHIND: &str = "the daemon fell behind checking this subscriber's file events";
/// How often a checker looks at its watches when no event made it.
const REVISIT: Duration = Duration::from_secs(1);

/// Where in a watch an event happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Place {
    /// The directory, relative to the watched path (empty: the watched object).
    pub rel_dir: Vec<u8>,
    /// What the walk to it must find.
    pub dir_id: super::FileId,
    /// The name in it; `None`: the directory (or the watched file) itself.
    pub entry: Option<Vec<u8>>,
}

impl Place {
    /// The name records carry: relative to the watched path.
    pub fn name(&self) -> Vec<u8> {
        match &self.entry {
            None => self.rel_dir.clone(),
            Some(entry) if self.rel_dir.is_empty() => entry.clone(),
            Some(entry) => [self.rel_dir.as_slice(), b"/", entry].concat(),
        }
    }
}

/// An event as one watch sees it, before its caller's check.
pub struct Sighting {
    pub watch: Arc<WatchState>,
    /// A move's old end, when the watch covers it.
    pub from: Option<Place>,
    /// A move's new end, or where any other event happened.
    pub to: Option<Place>,
    pub subtypes: Vec<u8>,
    pub rename: bool,
    pub object: Arc<Object>,
    /// The watched object itself moved or went: look at the watch again.
    pub revisit: bool,
}

pub enum Job {
    Batch(Vec<Sighting>),
    /// Events were lost for every watch of this checker.
    Loss(&'static str),
}

/// One caller's checker, shared by all its files watches.
pub struct Checker {
    /// Names the checker's watches as an audience of notices.
    pub id: u64,
    queue: SyncSender<Job>,
    /// Events were dropped since the last LOSS that got through; shared with the checker's
    /// thread, which says so itself once its queue is empty.
    behind: Arc<AtomicBool>,
    watches: Mutex<Vec<Weak<WatchState>>>,
}

impl Checker {
    /// Queues `job` without waiting; a full queue drops it, and the LOSS that says so goes
    /// first once there is room.
    pub fn send(&self, job: Job) {
        if self.behind.load(Ordering::Relaxed) {
            let loss = Job::Loss(BEHIND);
            if self.queue.try_send(loss).is_err() {
                return;
            }
            self.behind.store(false, Ordering::Relaxed);
        }
        if let Err(TrySendError::Full(_)) = self.queue.try_send(job) {
            tracing::warn!(
                checker = self.id,
                "a caller's file event checks fell behind: its events are dropped"
            );
            self.behind.store(true, Ordering::Relaxed);
        }
    }

    pub fn adopt(&self, watch: &Arc<WatchState>) {
        let mut watches = self.watches.lock().expect("checker watches poisoned");
        watches.retain(|w| w.strong_count() > 0);
        watches.push(Arc::downgrade(watch));
    }

    fn watches(&self) -> Vec<Arc<WatchState>> {
        let watches = self.watches.lock().expect("checker watches poisoned");
        watches.iter().filter_map(Weak::upgrade).collect()
    }
}

/// Whose checks a checker makes: credentials and root directory.
type CheckerKey = (FsCreds, FileId);

/// The checkers, one per caller identity, each alive while a watch uses it.
pub struct Checkers {
    hub: Arc<Hub>,
    by_caller: Mutex<HashMap<CheckerKey, Weak<Checker>>>,
    next: AtomicU64,
}

impl Checkers {
    pub fn new(hub: Arc<Hub>) -> Checkers {
        Checkers {
            hub,
            by_caller: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
        }
    }

    pub fn all(&self) -> Vec<Arc<Checker>> {
        let mut map = self.by_caller.lock().expect("checkers poisoned");
        map.retain(|_, c| c.strong_count() > 0);
        map.values().filter_map(Weak::upgrade).collect()
    }

    /// The checker of a caller with `creds` and root directory `root`, started if none runs.
    pub fn for_caller(&self, creds: &FsCreds, root: OwnedFd) -> Result<Arc<Checker>> {
        let root_id = FileId::of(root.as_fd())
            .map_err(|e| Error::Failed(format!("cannot look at the caller's root: {e}")))?;
        let key = (creds.clone(), root_id);
        let mut map = self.by_caller.lock().expect("checkers poisoned");
        if let Some(checker) = map.get(&key).and_then(Weak::upgrade) {
            return Ok(checker);
        }
        let (queue, jobs) = std::sync::mpsc::sync_channel(QUEUE);
        let checker = Arc::new(Checker {
            id: self.next.fetch_add(1, Ordering::Relaxed),
            queue,
            behind: Arc::new(AtomicBool::new(false)),
            watches: Mutex::new(Vec::new()),
        });
        let (started_tx, started) = std::sync::mpsc::channel();
        let run = Run {
            behind: checker.behind.clone(),
            hub: self.hub.clone(),
            checker: Arc::downgrade(&checker),
            id: checker.id,
            root,
        };
        let creds = creds.clone();
        std::thread::Builder::new()
            .name(format!("files-check-{}", checker.id))
            .spawn(move || {
                let worn = creds::wear(&creds);
                let ok = worn.is_ok();
                let _ = started_tx.send(worn);
                if ok {
                    run.serve(&jobs);
                }
            })
            .map_err(|e| Error::Failed(format!("cannot start a thread: {e}")))?;
        started
            .recv()
            .map_err(|_| Error::Failed("the checker thread did not start".into()))?
            .map_err(|e| Error::Failed(format!("cannot take the caller's credentials: {e}")))?;
        map.retain(|_, c| c.strong_count() > 0);
        map.insert(key, Arc::downgrade(&checker));
        Ok(checker)
    }
}

/// A checker's thread: it wears its caller's credentials.
struct Run {
    behind: Arc<AtomicBool>,
    hub: Arc<Hub>,
    checker: Weak<Checker>,
    id: u64,
    root: OwnedFd,
}

/// The records of one kernel event, gathered from the watches that see it.
#[derive(Default)]
struct Pending {
    object: Option<Arc<Object>>,
    records: Vec<(u8, FileChange)>,
    revisits: Vec<Arc<WatchState>>,
}

impl Pending {
    /// Whether `object` is the one of this event (every sighting of a kernel event shares it).
    fn is_of(&self, object: &Arc<Object>) -> bool {
        self.object.as_ref().is_some_and(|o| Arc::ptr_eq(o, object))
    }

    fn add(&mut self, subtype: u8, name: Vec<u8>, old_name: Option<Vec<u8>>, dev: u64, watch: u64) {
        let same = self.records.iter_mut().find(|(s, c)| {
            *s == subtype && c.name == name && c.old_name == old_name && c.dev == dev
        });
        match same {
            Some((_, change)) => change.watches.push(watch),
            None => self.records.push((
                subtype,
                FileChange {
                    watches: vec![watch],
                    name,
                    old_name,
                    object: Arc::default(),
                    dev,
                },
            )),
        }
    }
}

/// Walks already made in one batch: (path, expected id, needs read) → seen.
type Memo = HashMap<(Vec<u8>, FileId, bool), bool>;

impl Run {
    fn serve(&self, jobs: &Receiver<Job>) {
        let mut last_visit = Instant::now();
        loop {
            let job = match jobs.try_recv() {
                Ok(job) => Ok(job),
                Err(_) => {
                    // Drained: a drop the reading thread could not report yet (no event
                    // came after it) is reported now, so no loss goes unsaid.
                    if self.behind.swap(false, Ordering::Relaxed) {
                        self.loss(BEHIND);
                    }
                    jobs.recv_timeout(REVISIT)
                }
            };
            match job {
                Ok(Job::Batch(batch)) => self.batch(batch),
                Ok(Job::Loss(reason)) => self.loss(reason),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            if last_visit.elapsed() >= REVISIT {
                last_visit = Instant::now();
                let Some(checker) = self.checker.upgrade() else {
                    return;
                };
                for watch in checker.watches() {
                    self.revisit(&watch);
                }
            }
        }
    }

    fn loss(&self, reason: &str) {
        let loss = Notice::loss_to(KIND, Some(self.id), RecordType::File, reason);
        self.hub.publish(&loss);
    }

    /// Whether the caller's own walk reaches `place` of `watch` and may read it.
    fn sees(&self, watch: &WatchState, place: &Place, memo: &mut Memo) -> bool {
        let mut path = watch.caller_path.clone();
        if !place.rel_dir.is_empty() {
            if path.last() != Some(&b'/') {
                path.push(b'/');
            }
            path.extend_from_slice(&place.rel_dir);
        }
        let needs_read = place.entry.is_some();
        let key = (path, place.dir_id, needs_read);
        if let Some(&seen) = memo.get(&key) {
            return seen;
        }
        let seen = self.walk(&key.0).is_ok_and(|fd| {
            FileId::of(fd.as_fd()).is_ok_and(|id| id == place.dir_id)
                && (!needs_read || readable(fd.as_fd()))
        });
        memo.insert(key, seen);
        seen
    }

    fn walk(&self, path: &[u8]) -> std::io::Result<OwnedFd> {
        let c_path = relative_c_path(path).ok_or(std::io::ErrorKind::InvalidInput)?;
        sys::openat2_path(
            self.root.as_fd(),
            &c_path,
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )
    }

    /// Checks and publishes a batch. The watches that see the same change of the same
    /// kernel event under the same name (watches of one path) share one record, published
    /// once: the hub then matches it against every subscription once, not once per watch.
    fn batch(&self, batch: Vec<Sighting>) {
        let mut memo = Memo::new();
        let mut pending = Pending::default();
        for s in batch {
            let watch = &s.watch;
            if watch.ended.load(Ordering::Relaxed) {
                continue;
            }
            if !pending.is_of(&s.object) {
                self.flush(std::mem::take(&mut pending));
                pending.object = Some(s.object.clone());
            }
            let mut revisit = s.revisit;
            let mut seen = |place: &Option<Place>| {
                let place = place.as_ref()?;
                if self.sees(watch, place, &mut memo) {
                    return Some(place.name());
                }
                // The watched directory itself cannot be seen: perhaps never again.
                revisit |= place.rel_dir.is_empty();
                None
            };
            let from = seen(&s.from);
            let to = seen(&s.to);
            let dev = watch.id_at_start.dev;
            if s.rename {
                match (from, to.clone()) {
                    (Some(old), Some(new)) => {
                        pending.add(file::RENAME, new, Some(old), dev, watch.id)
                    }
                    (Some(old), None) => pending.add(file::MOVED_FROM, old, None, dev, watch.id),
                    (None, Some(new)) => pending.add(file::MOVED_TO, new, None, dev, watch.id),
                    (None, None) => {}
                }
            }
            if let Some(name) = to {
                for &subtype in &s.subtypes {
                    pending.add(subtype, name.clone(), None, dev, watch.id);
                }
            }
            if revisit {
                pending.revisits.push(s.watch.clone());
            }
        }
        self.flush(pending);
    }

    fn flush(&self, pending: Pending) {
        let Some(object) = pending.object else {
            return;
        };
        for (subtype, mut change) in pending.records {
            change.object = object.clone();
            change.watches.sort_unstable();
            self.hub
                .publish(&Event::new(RecordType::File, subtype, 0, Arc::new(change)));
        }
        for watch in pending.revisits {
            self.revisit(&watch);
        }
    }

    /// Ends `watch` with a REMOVAL if its path no longer names its object for the caller.
    fn revisit(&self, watch: &WatchState) {
        if watch.ended.load(Ordering::Relaxed) {
            return;
        }
        let deleted = rustix::fs::fstat(&watch.fd).is_ok_and(|st| st.st_nlink == 0);
        let reason = if deleted {
            Some("deleted")
        } else {
            match self.walk(&watch.caller_path) {
                Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM)) => {
                    Some("access revoked")
                }
                Err(_) => Some("moved or deleted"),
                Ok(fd) if FileId::of(fd.as_fd()).ok() != Some(watch.id_at_start) => {
                    Some("no longer at its path: moved, replaced or unmounted")
                }
                Ok(_) => None,
            }
        };
        let Some(reason) = reason else {
            return;
        };
        if watch.ended.swap(true, Ordering::Relaxed) {
            return;
        }
        tracing::info!(
            path = %String::from_utf8_lossy(&watch.caller_path),
            reason,
            "a files watch ended"
        );
        let removed = Removed {
            watch: watch.id,
            object: watch.caller_path.clone(),
            reason,
        };
        self.hub.publish(&Event::new(
            RecordType::Meta,
            meta::REMOVAL,
            0,
            Arc::new(removed),
        ));
    }
}

/// Whether this thread (the caller's credentials) may read `fd`'s directory: list its
/// names. `fd` is one the caller's own walk opened.
fn readable(fd: BorrowedFd<'_>) -> bool {
    // "." rather than AT_EMPTY_PATH, which faccessat2 refuses (EINVAL) for this descriptor.
    rustix::fs::accessat(fd, ".", Access::READ_OK, AtFlags::EACCESS).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_and_its_loss_goes_first_once_there_is_room() {
        let (queue, jobs) = std::sync::mpsc::sync_channel(1);
        let checker = Checker {
            id: 1,
            queue,
            behind: Arc::new(AtomicBool::new(false)),
            watches: Mutex::new(Vec::new()),
        };
        let reason = |job: Job| match job {
            Job::Loss(reason) => reason,
            Job::Batch(_) => "a batch",
        };
        checker.send(Job::Loss("first"));
        checker.send(Job::Loss("dropped: the queue is full"));
        assert!(checker.behind.load(Ordering::Relaxed));
        assert_eq!(reason(jobs.try_recv().unwrap()), "first");
        // Room for one: the LOSS takes it, and what came with it is dropped in turn.
        checker.send(Job::Loss("next"));
        assert_eq!(reason(jobs.try_recv().unwrap()), BEHIND);
        assert!(jobs.try_recv().is_err());
        assert!(checker.behind.load(Ordering::Relaxed), "still owed a LOSS");
        checker.send(Job::Loss("last"));
        assert_eq!(reason(jobs.try_recv().unwrap()), BEHIND);
    }

    #[test]
    fn names_are_relative_to_the_watched_path() {
        let id = FileId { dev: 1, ino: 2 };
        let place = |rel: &str, entry: Option<&str>| Place {
            rel_dir: rel.as_bytes().to_vec(),
            dir_id: id,
            entry: entry.map(|e| e.as_bytes().to_vec()),
        };
        assert_eq!(place("", Some("a.txt")).name(), b"a.txt");
        assert_eq!(place("sub/dir", Some("a.txt")).name(), b"sub/dir/a.txt");
        assert_eq!(place("sub", None).name(), b"sub");
        assert_eq!(place("", None).name(), b"");
    }
}
