//! Free space (and free inodes) of filesystems against each watch's thresholds, with
//! hysteresis: "warn me before the disk is full", without every session polling statvfs.
//!
//! A watch covers the filesystem of its `path` (resolved as the caller), or every
//! filesystem of the caller's mount namespace worth warning about: mounted read-write
//! somewhere in the namespace, of a type not in [`PSEUDO`], and of a non-zero size. What a
//! watch says and when is [`alarm`]'s pure state machine.
//!
//! One thread follows everything:
//! - each watched mount namespace through its mountinfo's `POLLPRI` (one open mountinfo per
//!   uid and view, shared by its watches, re-read with the mounts source's reader): a new
//!   filesystem is checked at once, one that is gone is dropped, and a path watch whose
//!   filesystem is no longer mounted ends with REMOVAL;
//! - each filesystem by a timer of its own, set after every check from its distance to the
//!   nearest line of any watch on it at the fastest plausible rate (`[space]` in the
//!   configuration), within the configured bounds.
//!
//! Watches are grouped by filesystem (device number, with the fsid the last check gave): a
//! check is one `fstatfs(2)` however many watches share the filesystem. The daemon reaches a
//! filesystem through a mount point of a namespace that holds it, resolved from that
//! caller's root directory; it holds no descriptor on the filesystem between checks, so a
//! watch never keeps a filesystem busy.
#![forbid(unsafe_code)]

pub mod alarm;

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use watchd_proto::{FLAG_SNAPSHOT, RecordBuilder, RecordType, attr, meta, superblock};

use self::alarm::{Alarm, Amount, Rule, Verdict};
use super::mounts::{MountEntry, mountinfo};
use crate::access::{self, CallerProcess, MountView};
use crate::conf::SpaceConf;
use crate::error::{Error, Result, Truncated};
use crate::event::{Change, Event, Fields};
use crate::hub::Hub;
use crate::identity::{Caller, Uid};
use crate::options::Options;
use crate::source::Source;
use crate::sys::{self, ResolveFlags};
use crate::watch::{Kind, Scope};

/// The kind clients name in `AddWatch`.
pub const KIND: Kind = Kind("space");

/// Filesystem types a namespace-wide watch never covers: kernel interfaces, and images that
/// are full by design. (Most of them also report a size of zero, which is skipped anyway.)
pub const PSEUDO: &[&str] = &[
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "efivarfs",
    "fusectl",
    "hugetlbfs",
    "mqueue",
    "nsfs",
    "proc",
    "pstore",
    "ramfs",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
    "squashfs",
    "sysfs",
    "tracefs",
];

/// A watch's first warning that found no watch in the hub (it was being registered) is
/// tried again this soon, while the watch is this young.
pub const RETRY: Duration = Duration::from_millis(100);
pub const YOUNG: Duration = Duration::from_secs(5);

/// The option keys of a space watch.
const OPTIONS: &[&str] = &[
    "path",
    "below",
    "min_free",
    "step",
    "min_interval_s",
    "inodes_below",
    "inodes_step",
];

/// The adaptive timer's bounds and rates (`[space]` in the configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub shortest: Duration,
    pub longest: Duration,
    /// Bytes per second a filesystem can plausibly fill (or empty) at.
    pub fill_rate: u64,
    /// Inodes per second a filesystem can plausibly use up.
    pub inode_rate: u64,
}

impl Timing {
    pub fn from_config(conf: &SpaceConf) -> Timing {
        Timing {
            shortest: Duration::from_millis(conf.shortest_check_ms.into()),
            longest: Duration::from_millis(conf.longest_check_ms.into()),
            fill_rate: u64::from(conf.fill_rate_mib_per_s) << 20,
            inode_rate: conf.inode_rate_per_s.into(),
        }
    }
}

/// What a watch compares: bytes or inodes (here available bytes or free inodes; in a
/// quota watch, the room under a limit of either).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Resource {
    Space,
    Inodes,
}

impl Resource {
    pub const ALL: [Resource; 2] = [Resource::Space, Resource::Inodes];

    /// As the RESOURCE attribute names it.
    pub fn name(self) -> &'static str {
        match self {
            Resource::Space => "space",
            Resource::Inodes => "inodes",
        }
    }

    fn free(self, usage: &Usage) -> u64 {
        match self {
            Resource::Space => usage.avail_bytes(),
            Resource::Inodes => usage.ffree,
        }
    }

    fn total(self, usage: &Usage) -> u64 {
        match self {
            Resource::Space => usage.total_bytes(),
            Resource::Inodes => usage.files,
        }
    }
}

/// A filesystem's numbers from one `fstatfs(2)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    pub frsize: u64,
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub fsid: u64,
}

impl Usage {
    fn of(fd: impl AsFd) -> std::io::Result<Usage> {
        let s = rustix::fs::fstatvfs(fd)?;
        Ok(Usage {
            frsize: s.f_frsize,
            blocks: s.f_blocks,
            bfree: s.f_bfree,
            bavail: s.f_bavail,
            files: s.f_files,
            ffree: s.f_ffree,
            fsid: s.f_fsid,
        })
    }

    pub fn avail_bytes(&self) -> u64 {
        self.bavail.saturating_mul(self.frsize)
    }

    pub fn total_bytes(&self) -> u64 {
        self.blocks.saturating_mul(self.frsize)
    }

    pub fn free_bytes(&self) -> u64 {
        self.bfree.saturating_mul(self.frsize)
    }
}

/// A watch's rules: space always, inodes when asked for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rules {
    pub space: Rule,
    pub inodes: Option<Rule>,
    pub min_interval: Duration,
}

impl Rules {
    /// gsd-housekeeping's defaults: below 5 % unless 1 GiB is free, again at each further
    /// 1 %, at most every 10 minutes.
    pub const DEFAULT_MIN_FREE: u64 = 1 << 30;
    pub const DEFAULT_MIN_INTERVAL_S: u32 = 600;

    fn rule(&self, resource: Resource) -> Option<&Rule> {
        match resource {
            Resource::Space => Some(&self.space),
            Resource::Inodes => self.inodes.as_ref(),
        }
    }

    /// Takes the watch's threshold options.
    pub fn take(options: &mut Options) -> Result<Rules> {
        let below = amount_option("below", options.take_string("below")?, "5%")?;
        let min_free = match options.take_string("min_free")? {
            None if matches!(below, Amount::Percent(_)) => Some(Self::DEFAULT_MIN_FREE),
            None => None,
            Some(off) if off == "none" => None,
            Some(text) => match amount_option("min_free", Some(text), "")? {
                Amount::Absolute(n) => Some(n),
                Amount::Percent(_) => {
                    return Err(Error::invalid(
                        "option 'min_free' is an amount (\"1G\", \"512M\") or \"none\", not a percentage",
                    ));
                }
            },
        };
        let step = amount_option("step", options.take_string("step")?, "1%")?;
        let min_interval = options
            .take_u32("min_interval_s")?
            .unwrap_or(Self::DEFAULT_MIN_INTERVAL_S);
        let inodes_below = options.take_string("inodes_below")?;
        let inodes_step = options.take_string("inodes_step")?;
        let inodes = match (inodes_below, inodes_step) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(Error::invalid(
                    "option 'inodes_step' needs 'inodes_below' (inodes are watched only when it is given)",
                ));
            }
            (below, step) => Some(Rule {
                below: amount_option("inodes_below", below, "")?,
                min_free: None,
                step: amount_option("inodes_step", step, "1%")?,
            }),
        };
        Ok(Rules {
            space: Rule {
                below,
                min_free,
                step,
            },
            inodes,
            min_interval: Duration::from_secs(min_interval.into()),
        })
    }
}

/// Option `key`'s amount (`text`, or `default` when not given), refused by name when it
/// does not parse. Space and quota watches read their lines with it.
pub fn amount_option(key: &str, text: Option<String>, default: &str) -> Result<Amount> {
    Amount::parse(text.as_deref().unwrap_or(default))
        .map_err(|why| Error::invalid(format!("option '{key}': {why}")))
}

/// A LOW, STILL_LOWER or RECOVERED record for one watch.
#[derive(Debug)]
pub struct SpaceChange {
    watch: u64,
    resource: Resource,
    usage: Usage,
    dev: u64,
    fs_type: String,
    mounted_on: Vec<Vec<u8>>,
    lines: alarm::Lines,
    /// Set when the hub matched the record against its watch: the watch was registered.
    reached: AtomicBool,
}

impl Change for SpaceChange {
    fn encode(&self, builder: &mut RecordBuilder, _: RecordType) {
        let u = &self.usage;
        let mut f = Fields::new(builder);
        f.bytes(attr::RESOURCE, self.resource.name().as_bytes());
        f.u64(attr::AVAIL_BYTES, u.avail_bytes());
        f.u64(attr::FREE_BYTES, u.free_bytes());
        f.u64(attr::TOTAL_BYTES, u.total_bytes());
        f.u64(attr::FREE_INODES, u.ffree);
        f.u64(attr::TOTAL_INODES, u.files);
        f.u64(attr::THRESHOLD, self.lines.threshold);
        f.u64(attr::MARGIN, self.lines.margin);
        f.u32(attr::MAJOR, rustix::fs::major(self.dev));
        f.u32(attr::MINOR, rustix::fs::minor(self.dev));
        f.u64(attr::FSID, u.fsid);
        f.bytes(attr::FS_TYPE, self.fs_type.as_bytes());
        for point in &self.mounted_on {
            f.bytes(attr::MOUNTED_ON, point);
        }
        f.finish();
    }
}

/// The end of a path watch (META REMOVAL): its filesystem is no longer mounted.
#[derive(Debug)]
pub struct SpaceRemoved {
    watch: u64,
    object: Vec<u8>,
}

impl Change for SpaceRemoved {
    fn encode(&self, builder: &mut RecordBuilder, _: RecordType) {
        let mut f = Fields::new(builder);
        f.bytes(attr::REASON, b"unmounted");
        f.bytes(attr::OBJECT, &self.object);
        f.finish();
    }
}

/// A caller's view of the mount tree, followed for its watches: its root directory (mount
/// points are resolved from it) and its open mountinfo (`POLLPRI` on every change).
struct Namespace {
    key: (Uid, MountView),
    root: OwnedFd,
    mountinfo: File,
}

/// One space watch.
struct WatchEntry {
    id: u64,
    ns: Arc<Namespace>,
    /// A path watch: the path as the caller named it (canonical) and its filesystem.
    path: Option<(Vec<u8>, u64)>,
    rules: Rules,
    born: Instant,
    ended: AtomicBool,
    waker: Arc<OwnedFd>,
}

impl Drop for WatchEntry {
    /// The thread lets go of what only this watch needed.
    fn drop(&mut self) {
        wake(&self.waker);
    }
}

fn wake(waker: &OwnedFd) {
    // A full pipe already wakes the thread.
    let _ = rustix::io::write(waker, &[1]);
}

/// The scope of a space watch: its own records only (each is shaped by its thresholds).
pub struct SpaceScope {
    entry: Arc<WatchEntry>,
}

impl std::fmt::Debug for SpaceScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpaceScope")
            .field("watch", &self.entry.id)
            .field("rules", &self.entry.rules)
            .finish()
    }
}

impl Scope for SpaceScope {
    fn covers(&self, event: &Event) -> bool {
        if let Some(change) = event.subject::<SpaceChange>() {
            let mine = change.watch == self.entry.id;
            if mine {
                change.reached.store(true, Ordering::Relaxed);
            }
            return mine;
        }
        event
            .subject::<SpaceRemoved>()
            .is_some_and(|removed| removed.watch == self.entry.id)
    }
}

/// A filesystem some watch covers.
struct Fs {
    fs_type: String,
    usage: Option<Usage>,
    due: Instant,
}

#[derive(Default)]
struct State {
    watches: Vec<Weak<WatchEntry>>,
    namespaces: HashMap<(Uid, MountView), Weak<Namespace>>,
    tables: HashMap<(Uid, MountView), Vec<MountEntry>>,
    stale: HashSet<(Uid, MountView)>,
    filesystems: HashMap<u64, Fs>,
    alarms: HashMap<(u64, u64), [Alarm; 2]>,
}

struct Shared {
    hub: Arc<Hub>,
    timing: Timing,
    state: Mutex<State>,
    waker: Arc<OwnedFd>,
    start: Instant,
    next_id: AtomicU64,
}

pub struct SpaceSource {
    shared: Arc<Shared>,
}

impl SpaceSource {
    /// Starts the source's thread; it sleeps until a watch comes.
    pub fn start(hub: Arc<Hub>, timing: Timing) -> std::io::Result<Arc<SpaceSource>> {
        let (wake_read, wake_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
            .map_err(std::io::Error::from)?;
        let shared = Arc::new(Shared {
            hub,
            timing,
            state: Mutex::new(State::default()),
            waker: Arc::new(wake_write),
            start: Instant::now(),
            next_id: AtomicU64::new(1),
        });
        let followed = shared.clone();
        std::thread::Builder::new()
            .name("space".into())
            .spawn(move || followed.run(wake_read))?;
        Ok(Arc::new(SpaceSource { shared }))
    }

    /// The caller's view, shared with the other watches of its uid on it.
    fn namespace(&self, caller: &Caller) -> Result<Arc<Namespace>> {
        let process = CallerProcess::new(caller)?;
        let view = process.mount_view()?;
        let mountinfo = process.mountinfo()?;
        let root = process.root()?;
        if process.mount_view()? != view {
            return Err(Error::Failed(
                "the caller changed mount namespace while its watch was being set".into(),
            ));
        }
        let key = (caller.uid, view);
        let mut state = self.shared.lock();
        if let Some(ns) = state.namespaces.get(&key).and_then(Weak::upgrade) {
            return Ok(ns);
        }
        let ns = Arc::new(Namespace {
            key,
            root,
            mountinfo,
        });
        state.namespaces.insert(key, Arc::downgrade(&ns));
        state.stale.insert(key);
        Ok(ns)
    }
}

/// Whether a namespace-wide watch covers this mount's filesystem.
fn worth_warning(mount: &MountEntry) -> bool {
    let read_only = |options: &str| options.split(',').any(|o| o == "ro");
    !read_only(&mount.options)
        && !read_only(&mount.super_options)
        && !PSEUDO.contains(&mount.fs_type.as_str())
}

pub fn dev_of(mount: &MountEntry) -> u64 {
    rustix::fs::makedev(mount.major, mount.minor)
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("space state poisoned")
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn run(&self, wake_read: OwnedFd) {
        loop {
            let (namespaces, due) = {
                let state = self.lock();
                let namespaces: Vec<Arc<Namespace>> = state
                    .namespaces
                    .values()
                    .filter_map(Weak::upgrade)
                    .collect();
                (
                    namespaces,
                    state.filesystems.values().map(|fs| fs.due).min(),
                )
            };
            let tables: Vec<&File> = namespaces.iter().map(|ns| &ns.mountinfo).collect();
            let (woken, fired) = match mountinfo::wait_for_change(&wake_read, &tables, due) {
                Ok(woken) => woken,
                Err(e) => {
                    tracing::error!(error = %e, "space watches stopped: poll failed");
                    return;
                }
            };
            let changed: Vec<(Uid, MountView)> = fired
                .iter()
                .zip(&namespaces)
                .filter(|(fired, _)| **fired)
                .map(|(_, ns)| ns.key)
                .collect();
            let mut state = self.lock();
            // Watches and mount tables change only with a wake-up or a POLLPRI: a timer
            // alone looks at filesystems and nothing else.
            if woken || !changed.is_empty() {
                state.stale.extend(changed);
                self.refresh(&mut state);
            }
            drop(namespaces);
            self.check_due(&mut state, Instant::now());
        }
    }

    /// Brings the state up to date with the watches and their mount tables: drops what no
    /// watch needs, re-reads tables that changed, ends path watches whose filesystem is
    /// gone, and makes new filesystems (and those of new watches) due at once.
    fn refresh(&self, state: &mut State) {
        state.watches.retain(|w| w.strong_count() > 0);
        state.namespaces.retain(|_, ns| ns.strong_count() > 0);
        let State {
            namespaces,
            tables,
            stale,
            ..
        } = state;
        tables.retain(|key, _| namespaces.contains_key(key));
        for key in stale.drain() {
            let Some(ns) = namespaces.get(&key).and_then(Weak::upgrade) else {
                continue;
            };
            match mountinfo::reread(&ns.mountinfo, &mut Vec::with_capacity(64 * 1024)) {
                Ok(table) => {
                    tables.insert(key, table);
                }
                Err(e) => {
                    tracing::warn!(error = %e, ns = key.1.ns, "cannot re-read a watched mountinfo")
                }
            }
        }
        let watches: Vec<Arc<WatchEntry>> =
            state.watches.iter().filter_map(Weak::upgrade).collect();
        let now = Instant::now();
        let mut wanted: HashMap<u64, String> = HashMap::new();
        let mut live_alarms = HashSet::new();
        for watch in &watches {
            if watch.ended.load(Ordering::Relaxed) {
                continue;
            }
            let Some(table) = state.tables.get(&watch.ns.key) else {
                continue;
            };
            for (dev, fs_type) in covered(watch, table) {
                live_alarms.insert((watch.id, dev));
                if let std::collections::hash_map::Entry::Vacant(new) =
                    state.alarms.entry((watch.id, dev))
                {
                    new.insert(Default::default());
                    if let Some(fs) = state.filesystems.get_mut(&dev) {
                        fs.due = now;
                    }
                }
                wanted.entry(dev).or_insert_with(|| fs_type.to_owned());
            }
            if let Some((path, dev)) = &watch.path
                && !table.iter().any(|m| dev_of(m) == *dev)
            {
                self.end(watch, path);
            }
        }
        state.alarms.retain(|key, _| live_alarms.contains(key));
        state.filesystems.retain(|dev, _| wanted.contains_key(dev));
        for (dev, fs_type) in wanted {
            state.filesystems.entry(dev).or_insert(Fs {
                fs_type,
                usage: None,
                due: now,
            });
        }
    }

    /// Ends a path watch whose filesystem is no longer mounted in its namespace.
    fn end(&self, watch: &WatchEntry, path: &[u8]) {
        if watch.ended.swap(true, Ordering::Relaxed) {
            return;
        }
        tracing::info!(path = %String::from_utf8_lossy(path), "a space watch ended: its filesystem was unmounted");
        let removed = SpaceRemoved {
            watch: watch.id,
            object: path.to_vec(),
        };
        self.hub.publish(&Event::new(
            RecordType::Meta,
            meta::REMOVAL,
            0,
            Arc::new(removed),
        ));
    }

    /// Looks at every filesystem whose time has come, and tells each of its watches what
    /// its rules make of the numbers.
    fn check_due(&self, state: &mut State, now: Instant) {
        let due: Vec<u64> = state
            .filesystems
            .iter()
            .filter(|(_, fs)| fs.due <= now)
            .map(|(dev, _)| *dev)
            .collect();
        if due.is_empty() {
            return;
        }
        let watches: Vec<Arc<WatchEntry>> =
            state.watches.iter().filter_map(Weak::upgrade).collect();
        for dev in due {
            // A filesystem no mount point leads to (all covered by other mounts) is tried
            // again after the longest interval, or when the mount table changes.
            let next = match self.stat(state, &watches, dev) {
                Some(usage) => self.judge(state, &watches, dev, usage, now),
                None => now + self.timing.longest,
            };
            if let Some(fs) = state.filesystems.get_mut(&dev) {
                fs.due = next;
            }
        }
    }

    /// One `fstatfs(2)` of filesystem `dev`, through the first mount point of a watch's
    /// namespace that still leads to it.
    fn stat(&self, state: &mut State, watches: &[Arc<WatchEntry>], dev: u64) -> Option<Usage> {
        let mut tried = HashSet::new();
        for watch in watches {
            if !tried.insert(watch.ns.key) {
                continue;
            }
            let Some(table) = state.tables.get(&watch.ns.key) else {
                continue;
            };
            for mount in table.iter().filter(|m| dev_of(m) == dev) {
                let Some(usage) = stat_at(&watch.ns.root, &mount.mount_point, dev) else {
                    continue;
                };
                let fs = state.filesystems.get_mut(&dev)?;
                if fs.usage.is_some_and(|old| old.fsid != usage.fsid) {
                    // Another filesystem on a reused device number: start afresh.
                    state.alarms.retain(|(_, d), _| *d != dev);
                }
                fs.usage = Some(usage);
                return Some(usage);
            }
        }
        None
    }

    /// Sends what each watch on `dev` has to say about `usage`; returns when to look again.
    fn judge(
        &self,
        state: &mut State,
        watches: &[Arc<WatchEntry>],
        dev: u64,
        usage: Usage,
        now: Instant,
    ) -> Instant {
        let t = self.now();
        let mut next = now + self.timing.longest;
        if usage.blocks == 0 {
            // No size (a kernel interface): nothing to warn about, ever.
            return next;
        }
        let fs_type = state.filesystems.get(&dev).map(|fs| fs.fs_type.clone());
        for watch in watches {
            let Some(alarms) = state.alarms.get_mut(&(watch.id, dev)) else {
                continue;
            };
            for (i, resource) in Resource::ALL.into_iter().enumerate() {
                let Some(rule) = watch.rules.rule(resource) else {
                    continue;
                };
                let total = resource.total(&usage);
                if total == 0 {
                    continue;
                }
                let free = resource.free(&usage);
                let lines = rule.lines(total);
                let alarm = &mut alarms[i];
                match alarm.judge(free, lines, t, watch.rules.min_interval) {
                    Verdict::Quiet => {}
                    Verdict::Wait(until) => {
                        next = next.min(now + until.saturating_sub(t));
                    }
                    Verdict::Send(step) => {
                        let change = Arc::new(SpaceChange {
                            watch: watch.id,
                            resource,
                            usage,
                            dev,
                            fs_type: fs_type.clone().unwrap_or_default(),
                            mounted_on: mounted_on(state.tables.get(&watch.ns.key), dev),
                            lines,
                            reached: AtomicBool::new(false),
                        });
                        self.hub.publish(&Event::new(
                            RecordType::Superblock,
                            step.space_subtype(),
                            0,
                            change.clone(),
                        ));
                        if change.reached.load(Ordering::Relaxed) || watch.born.elapsed() > YOUNG {
                            alarm.commit(step, free, t);
                        } else {
                            next = next.min(now + RETRY);
                        }
                    }
                }
                let rate = match resource {
                    Resource::Space => self.timing.fill_rate,
                    Resource::Inodes => self.timing.inode_rate,
                };
                let wait = alarm::next_check(
                    alarm.distance(free, lines),
                    rate,
                    self.timing.shortest,
                    self.timing.longest,
                );
                next = next.min(now + wait);
            }
        }
        next
    }

    /// A watch's initial state: its filesystems looked at now; those low (by the watch's
    /// rules) as SNAPSHOT LOW records, one per low resource.
    fn snapshot(&self, state: &mut State, entry: &Arc<WatchEntry>) -> Vec<Event> {
        self.refresh(state);
        let Some(table) = state.tables.get(&entry.ns.key) else {
            return Vec::new();
        };
        let devs: Vec<(u64, String)> = covered(entry, table)
            .map(|(dev, fs_type)| (dev, fs_type.to_owned()))
            .collect();
        let t = self.now();
        let watches = [entry.clone()];
        let mut events = Vec::new();
        for (dev, fs_type) in devs {
            let Some(usage) = self.stat(state, &watches, dev) else {
                continue;
            };
            if usage.blocks == 0 {
                continue;
            }
            let mounted_on = mounted_on(state.tables.get(&entry.ns.key), dev);
            let Some(alarms) = state.alarms.get_mut(&(entry.id, dev)) else {
                continue;
            };
            for (i, resource) in Resource::ALL.into_iter().enumerate() {
                let (Some(rule), total) = (entry.rules.rule(resource), resource.total(&usage))
                else {
                    continue;
                };
                if total == 0 {
                    continue;
                }
                let free = resource.free(&usage);
                let lines = rule.lines(total);
                if !alarms[i].is_low() && free < lines.threshold {
                    alarms[i].commit(alarm::Step::Low, free, t);
                }
                if alarms[i].is_low() {
                    let change = SpaceChange {
                        watch: entry.id,
                        resource,
                        usage,
                        dev,
                        fs_type: fs_type.clone(),
                        mounted_on: mounted_on.clone(),
                        lines,
                        reached: AtomicBool::new(true),
                    };
                    events.push(Event::new(
                        RecordType::Superblock,
                        superblock::SPACE_LOW,
                        FLAG_SNAPSHOT,
                        Arc::new(change),
                    ));
                }
            }
        }
        events
    }
}

/// The filesystems (device, type) a watch covers in its namespace's `table`.
fn covered<'a>(
    watch: &'a WatchEntry,
    table: &'a [MountEntry],
) -> impl Iterator<Item = (u64, &'a str)> + 'a {
    let mut seen = HashSet::new();
    let worth: HashSet<u64> = match watch.path {
        Some(_) => HashSet::new(),
        None => table
            .iter()
            .filter(|m| worth_warning(m))
            .map(dev_of)
            .collect(),
    };
    table.iter().filter_map(move |m| {
        let dev = dev_of(m);
        let wanted = match &watch.path {
            Some((_, only)) => dev == *only,
            None => worth.contains(&dev),
        };
        (wanted && seen.insert(dev)).then_some((dev, m.fs_type.as_str()))
    })
}

/// The mount points of `dev` in a namespace's table, in its order.
fn mounted_on(table: Option<&Vec<MountEntry>>, dev: u64) -> Vec<Vec<u8>> {
    table
        .into_iter()
        .flatten()
        .filter(|m| dev_of(m) == dev)
        .map(|m| m.mount_point.clone())
        .collect()
}

/// `fstatfs(2)` of the filesystem mounted at `point` (a mount point as the namespace's
/// mountinfo names it, resolved from the caller's `root`), if it is still `dev` there.
fn stat_at(root: &OwnedFd, point: &[u8], dev: u64) -> Option<Usage> {
    Usage::of(open_mount_point(root, point, dev)?).ok()
}

/// An `O_PATH` descriptor of `point` (a mount point as a namespace's mountinfo names it),
/// resolved from that namespace's `root` without leaving it, if filesystem `dev` is still
/// what is mounted there. It keeps nothing busy once closed.
pub fn open_mount_point(root: &OwnedFd, point: &[u8], dev: u64) -> Option<OwnedFd> {
    let relative = point.strip_prefix(b"/").unwrap_or(point);
    let path = CString::new(if relative.is_empty() { b"." } else { relative }).ok()?;
    let fd = sys::openat2_path(
        root.as_fd(),
        &path,
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )
    .ok()?;
    (rustix::fs::fstat(&fd).ok()?.st_dev == dev).then_some(fd)
}

impl Source for SpaceSource {
    fn kind(&self) -> Kind {
        KIND
    }

    fn describe(&self) -> String {
        let state = self.shared.lock();
        let t = &self.shared.timing;
        let namespaces = state
            .namespaces
            .values()
            .filter(|n| n.strong_count() > 0)
            .count();
        format!(
            "fstatfs(2) of each followed filesystem by an adaptive timer (every {}–{} s, from the distance to the nearest line at {} MiB/s or {} inodes/s) and on mount changes (mountinfo POLLPRI); following {} filesystem(s) in {} mount namespace(s)",
            t.shortest.as_secs_f64(),
            t.longest.as_secs_f64(),
            t.fill_rate >> 20,
            t.inode_rate,
            state.filesystems.len(),
            namespaces,
        )
    }

    fn scope(&self, options: &mut Options, caller: &Caller) -> Result<Arc<dyn Scope>> {
        let path = options.take_string("path")?;
        let rules = Rules::take(options)?;
        let path = match path {
            None => None,
            Some(path) => {
                let shown = Truncated(&path);
                let handle = access::open_path(caller, &path)?;
                let failed = |e: std::io::Error| {
                    Error::Failed(format!("cannot look at the filesystem of '{shown}': {e}"))
                };
                let dev = rustix::fs::fstat(&handle)
                    .map_err(|e| failed(e.into()))?
                    .st_dev;
                if Usage::of(&handle).map_err(failed)?.blocks == 0 {
                    return Err(Error::NotSupported(format!(
                        "the filesystem of '{shown}' has no size (a kernel interface such as proc): it cannot fill up"
                    )));
                }
                Some((access::caller_relative(caller, &handle)?, dev))
            }
        };
        let ns = self.namespace(caller)?;
        let entry = Arc::new(WatchEntry {
            id: self.shared.next_id.fetch_add(1, Ordering::Relaxed),
            ns,
            path,
            rules,
            born: Instant::now(),
            ended: AtomicBool::new(false),
            waker: self.shared.waker.clone(),
        });
        self.shared.lock().watches.push(Arc::downgrade(&entry));
        wake(&self.shared.waker);
        Ok(Arc::new(SpaceScope { entry }))
    }

    fn option_names(&self) -> &'static [&'static str] {
        OPTIONS
    }

    fn with_snapshot(&self, scope: &dyn Scope, then: &mut dyn FnMut(&[Event])) {
        let Some(scope) = scope.downcast::<SpaceScope>() else {
            return then(&[]);
        };
        // The state stays locked until `then` returns: the thread publishes nothing for
        // this watch in between.
        let mut state = self.shared.lock();
        let events = self.shared.snapshot(&mut state, &scope.entry);
        then(&events);
    }
}
