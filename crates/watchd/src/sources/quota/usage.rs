//! Usage thresholds: warnings before `EDQUOT`, where the kernel sends none. The kernel warns
//! when a limit is crossed, which for a hard limit is the moment writes start failing, and
//! not at all without `CONFIG_QUOTA_NETLINK_INTERFACE`. A quota watch also follows the
//! caller's own quotas, read with `quotactl_fd(2)` `Q_GETQUOTA`: its user's, and each of its
//! groups', on every filesystem of its mount namespace that has them on.
//!
//! **What is compared.** Only quotas whose limits are enforced (a filesystem may count
//! usage without enforcing limits: ext4 with the `quota` feature mounted without
//! `usrquota`; no write then fails, and the kernel warns of nothing). The room: what may still be used before `EDQUOT`, the hard limit
//! (the soft limit when there is no hard one; its grace time ends in `EDQUOT` too) less the
//! usage, in bytes and in inodes. The watch's lines are a share of that limit or an amount;
//! the decisions (LOW, STILL_LOWER, RECOVERED, hysteresis, rate limit, when to look again)
//! are the space kind's [`alarm`], so both kinds behave alike. A limit removed while low is
//! a RECOVERED.
//!
//! **When.** One thread follows every watch: each watch by a timer of its own, set after
//! each look from the distance to its nearest line at the `[space]` fill rates within the
//! `[space]` bounds (a quota without limits is looked at the longest interval apart); at
//! once when its mount table changes (mountinfo `POLLPRI`) and when a kernel warning comes.
//! The table is also where the kernel warnings' mount points come from: it is read when the
//! table changes, not for each warning.
//!
//! **Who sees what.** A watch's readings are its caller's own ids, which the caller could
//! read itself (quota(1) does the same with the kernel's own check: one's user, one's
//! groups). An `all` watch sees everyone's kernel warnings, but thresholds only of its own.
#![forbid(unsafe_code)]

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use watchd_proto::{FLAG_SNAPSHOT, RecordBuilder, RecordType, attr, quota, superblock};

use crate::error::{Error, Result};
use crate::event::{Change, Event, Fields};
use crate::hub::Hub;
use crate::sources::mounts::{MountEntry, mountinfo};
use crate::sources::space::alarm::{self, Alarm, Rule, Step, Verdict};
use crate::sources::space::{
    RETRY, Resource, Timing, YOUNG, amount_option, dev_of, open_mount_point,
};
use crate::sys::{self, DiskQuota};

/// Filesystem types whose quotas `quotactl_fd(2)` reads (local filesystems with the
/// kernel's quota operations). No other is looked at: a stuck network or FUSE mount must
/// not stall every user's thresholds, and none of them has quotactl quotas.
const QUOTA_TYPES: &[&str] = &[
    "ext2", "ext3", "ext4", "xfs", "tmpfs", "f2fs", "gfs2", "ocfs2", "jfs", "reiserfs",
];

/// (used, soft limit, hard limit, grace end) of `resource` in a reading.
fn of(resource: Resource, q: &DiskQuota) -> (u64, u64, u64, u64) {
    match resource {
        Resource::Space => (q.bytes_used, q.bytes_soft, q.bytes_hard, q.bytes_grace_ends),
        Resource::Inodes => (
            q.inodes_used,
            q.inodes_soft,
            q.inodes_hard,
            q.inodes_grace_ends,
        ),
    }
}

/// A watch's thresholds; a resource without a rule is not compared.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Thresholds {
    pub space: Option<Rule>,
    pub inodes: Option<Rule>,
    pub min_interval: Duration,
}

impl Thresholds {
    pub const DEFAULT_BELOW: &str = "10%";
    pub const DEFAULT_STEP: &str = "1%";
    pub const DEFAULT_MIN_INTERVAL_S: u32 = 600;

    /// Takes the watch's threshold options; also says whether any was given.
    pub fn take(options: &mut crate::options::Options) -> Result<(Thresholds, bool)> {
        let mut given = false;
        let mut rule = |below_key: &str, step_key: &str| -> Result<Option<Rule>> {
            let below = options.take_string(below_key)?;
            let step = options.take_string(step_key)?;
            given |= below.is_some() || step.is_some();
            if below.as_deref() == Some("none") {
                if step.is_some() {
                    return Err(Error::invalid(format!(
                        "option '{step_key}' means nothing with '{below_key}' \"none\""
                    )));
                }
                return Ok(None);
            }
            Ok(Some(Rule {
                below: amount_option(below_key, below, Self::DEFAULT_BELOW)?,
                min_free: None,
                step: amount_option(step_key, step, Self::DEFAULT_STEP)?,
            }))
        };
        let space = rule("below", "step")?;
        let inodes = rule("inodes_below", "inodes_step")?;
        let min_interval = options.take_u32("min_interval_s")?;
        given |= min_interval.is_some();
        let min_interval = min_interval.unwrap_or(Self::DEFAULT_MIN_INTERVAL_S);
        Ok((
            Thresholds {
                space,
                inodes,
                min_interval: Duration::from_secs(min_interval.into()),
            },
            given,
        ))
    }

    /// Whether any resource is compared.
    fn any(&self) -> bool {
        self.space.is_some() || self.inodes.is_some()
    }

    fn rule(&self, resource: Resource) -> Option<&Rule> {
        match resource {
            Resource::Space => self.space.as_ref(),
            Resource::Inodes => self.inodes.as_ref(),
        }
    }
}

/// One quota a watch follows: (filesystem, quota type, id, resource).
type Key = (u64, u32, u32, Resource);

/// A QUOTA_LOW, QUOTA_STILL_LOWER or QUOTA_RECOVERED record for one watch.
#[derive(Debug)]
pub struct UsageChange {
    watch: u64,
    quota_type: u32,
    id: u32,
    resource: Resource,
    reading: DiskQuota,
    dev: u64,
    fs_type: String,
    mounted_on: Vec<Vec<u8>>,
    lines: alarm::Lines,
    room: u64,
    /// Set when the hub matched the record against its watch: the watch was registered.
    reached: AtomicBool,
}

impl Change for UsageChange {
    fn encode(&self, builder: &mut RecordBuilder, _: RecordType) {
        let (used, soft, hard, grace_ends) = of(self.resource, &self.reading);
        let mut f = Fields::new(builder);
        f.u32(attr::QUOTA_TYPE, self.quota_type);
        f.u64(attr::QUOTA_ID, self.id.into());
        f.bytes(attr::RESOURCE, self.resource.name().as_bytes());
        f.u64(attr::QUOTA_USED, used);
        f.u64(attr::QUOTA_SOFT_LIMIT, soft);
        f.u64(attr::QUOTA_HARD_LIMIT, hard);
        f.u64(attr::QUOTA_ROOM, self.room);
        if soft != 0 && used > soft && grace_ends != 0 {
            f.u64(attr::QUOTA_GRACE_ENDS, grace_ends);
        }
        f.u64(attr::THRESHOLD, self.lines.threshold);
        f.u64(attr::MARGIN, self.lines.margin);
        f.u32(attr::MAJOR, rustix::fs::major(self.dev));
        f.u32(attr::MINOR, rustix::fs::minor(self.dev));
        f.bytes(attr::FS_TYPE, self.fs_type.as_bytes());
        for point in &self.mounted_on {
            f.bytes(attr::MOUNTED_ON, point);
        }
        f.finish();
    }
}

/// The limit whose crossing means `EDQUOT` (0: none), and the room left under it at `now`
/// (seconds since the epoch): the hard limit, or the soft one when there is no hard one;
/// over a soft limit whose grace time has ended, writes already fail: no room.
fn room(used: u64, soft: u64, hard: u64, grace_ends: u64, now: u64) -> (u64, u64) {
    if soft != 0 && used > soft && grace_ends != 0 && grace_ends <= now {
        return (soft, 0);
    }
    let limit = if hard != 0 { hard } else { soft };
    (limit, limit.saturating_sub(used))
}

/// [`room`] of `resource` in reading `q`, now.
fn room_now(resource: Resource, q: &DiskQuota) -> (u64, u64) {
    let (used, soft, hard, grace_ends) = of(resource, q);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    room(used, soft, hard, grace_ends, now)
}

/// One quota watch's view and ids, as the thread follows them.
pub struct Follower {
    pub id: u64,
    uid: u32,
    gids: Vec<u32>,
    thresholds: Thresholds,
    root: OwnedFd,
    mountinfo: File,
    /// The caller's mount table, read when it changes.
    table: Mutex<Vec<MountEntry>>,
    alarms: Mutex<Alarms>,
    born: Instant,
    /// Its watch has ended: the thread lets go of it (and its descriptors).
    ended: AtomicBool,
    engine: Weak<Engine>,
}

/// A watch's hold on its follower. The thread keeps followers while it sleeps, so the end
/// of a watch has to tell it: dropping this does, and the thread lets go at once.
#[derive(Debug)]
pub struct Following(Arc<Follower>);

impl std::ops::Deref for Following {
    type Target = Follower;

    fn deref(&self) -> &Follower {
        &self.0
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        self.0.ended.store(true, Ordering::Relaxed);
        if let Some(engine) = self.0.engine.upgrade() {
            engine.wake();
        }
    }
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower")
            .field("watch", &self.id)
            .field("uid", &self.uid)
            .field("gids", &self.gids)
            .field("thresholds", &self.thresholds)
            .finish()
    }
}

/// One quota's alarm, and the type of its filesystem (for the RECOVERED of a quota gone).
#[derive(Default)]
struct Tracked {
    alarm: Alarm,
    fs_type: String,
}

#[derive(Default)]
struct Alarms {
    by_quota: HashMap<Key, Tracked>,
    due: Option<Instant>,
    /// When the quotas were last read.
    last: Option<Instant>,
}

impl Follower {
    /// The caller's mount points of filesystem `major:minor`, in its table's order.
    pub fn mount_points(&self, major: u32, minor: u32) -> Vec<Vec<u8>> {
        self.table()
            .iter()
            .filter(|m| m.major == major && m.minor == minor)
            .map(|m| m.mount_point.clone())
            .collect()
    }

    fn table(&self) -> MutexGuard<'_, Vec<MountEntry>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn alarms(&self) -> MutexGuard<'_, Alarms> {
        self.alarms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this watch's usage records are this event.
    pub fn covers(&self, event: &Event) -> bool {
        event.subject::<UsageChange>().is_some_and(|change| {
            let mine = change.watch == self.id;
            if mine {
                change.reached.store(true, Ordering::Relaxed);
            }
            mine
        })
    }

    fn reread(&self) {
        match mountinfo::reread(&self.mountinfo, &mut Vec::with_capacity(64 * 1024)) {
            Ok(table) => *self.table() = table,
            Err(error) => {
                tracing::warn!(%error, "quota: cannot re-read a watched mountinfo")
            }
        }
    }

    /// Every quota this watch follows, read now; and the filesystems whose quotas could
    /// not be read this time (not reached, or a failure that may pass), whose alarms stay.
    fn read_all(&self) -> (Vec<Reading>, HashSet<u64>) {
        let table = self.table().clone();
        let (mut readings, mut unsure, mut seen) = (Vec::new(), HashSet::new(), HashSet::new());
        for mount in &table {
            let dev = dev_of(mount);
            if !QUOTA_TYPES.contains(&mount.fs_type.as_str()) || !seen.insert(dev) {
                continue;
            }
            // The first mount point that still leads to the filesystem.
            let Some(fd) = table
                .iter()
                .filter(|m| dev_of(m) == dev)
                .find_map(|m| open_mount_point(&self.root, &m.mount_point, dev))
            else {
                unsure.insert(dev);
                continue;
            };
            // Limits only counted, not enforced, never give EDQUOT (nor kernel warnings):
            // such a quota is treated as off. A filesystem that cannot say enforces.
            let enforced = [quota::USER, quota::GROUP]
                .map(|t| sys::quotactl_fd_limits_enforced(fd.as_fd(), t).unwrap_or(true));
            let ids = std::iter::once((quota::USER, self.uid))
                .chain(self.gids.iter().map(|&g| (quota::GROUP, g)));
            let mut off = None;
            for (quota_type, id) in ids {
                if off == Some(quota_type) || !enforced[quota_type as usize] {
                    continue;
                }
                match sys::quotactl_fd_get_quota(fd.as_fd(), quota_type, id) {
                    Ok(reading) => readings.push(Reading {
                        dev,
                        fs_type: mount.fs_type.clone(),
                        quota_type,
                        id,
                        reading,
                    }),
                    // Quotas of this type are off here.
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => off = Some(quota_type),
                    // No quotas at all on this filesystem.
                    Err(e)
                        if matches!(
                            e.raw_os_error(),
                            Some(libc::ENOSYS | libc::ENOTTY | libc::EOPNOTSUPP)
                        ) =>
                    {
                        break;
                    }
                    Err(error) => {
                        tracing::debug!(%error, dev, quota_type, id, "quota: Q_GETQUOTA failed");
                        unsure.insert(dev);
                    }
                }
            }
        }
        (readings, unsure)
    }

    /// This watch's record about `resource` of reading `r`.
    fn change(
        &self,
        r: &Reading,
        resource: Resource,
        lines: alarm::Lines,
        room: u64,
        reached: bool,
    ) -> UsageChange {
        UsageChange {
            watch: self.id,
            quota_type: r.quota_type,
            id: r.id,
            resource,
            reading: r.reading,
            dev: r.dev,
            fs_type: r.fs_type.clone(),
            mounted_on: self.mount_points(rustix::fs::major(r.dev), rustix::fs::minor(r.dev)),
            lines,
            room,
            reached: AtomicBool::new(reached),
        }
    }
}

/// One quota as read.
struct Reading {
    dev: u64,
    fs_type: String,
    quota_type: u32,
    id: u32,
    reading: DiskQuota,
}

/// The thread's shared part: the watches it follows and how to wake it.
pub struct Engine {
    hub: Arc<Hub>,
    timing: Timing,
    followers: Mutex<Vec<Arc<Follower>>>,
    waker: OwnedFd,
    /// A kernel warning came: every watch looks again (at most once per shortest interval).
    nudged: AtomicBool,
    /// The thread has stopped (its poll failed): no new watch is followed.
    stopped: AtomicBool,
    next_id: AtomicU64,
    start: Instant,
}

impl Engine {
    /// Starts the thread; it sleeps until a watch comes.
    pub fn start(hub: Arc<Hub>, timing: Timing) -> std::io::Result<Arc<Engine>> {
        let (wake_read, waker) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
            .map_err(std::io::Error::from)?;
        let engine = Arc::new(Engine {
            hub,
            timing,
            followers: Mutex::new(Vec::new()),
            waker,
            nudged: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            start: Instant::now(),
        });
        let followed = engine.clone();
        std::thread::Builder::new()
            .name("quota-usage".into())
            .spawn(move || followed.run(wake_read))?;
        Ok(engine)
    }

    /// A follower for a new watch, due at once.
    pub fn follow(
        self: &Arc<Self>,
        uid: u32,
        gids: Vec<u32>,
        thresholds: Thresholds,
        root: OwnedFd,
        mountinfo: File,
    ) -> Result<Following> {
        if self.stopped.load(Ordering::Relaxed) {
            return Err(Error::Failed(
                "quota usage thresholds have stopped (the daemon's log says why)".into(),
            ));
        }
        let follower = Arc::new(Follower {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            uid,
            gids,
            thresholds,
            root,
            mountinfo,
            table: Mutex::new(Vec::new()),
            alarms: Mutex::new(Alarms {
                due: Some(Instant::now()),
                ..Alarms::default()
            }),
            born: Instant::now(),
            ended: AtomicBool::new(false),
            engine: Arc::downgrade(self),
        });
        follower.reread();
        self.lock().push(follower.clone());
        self.wake();
        Ok(Following(follower))
    }

    /// A kernel warning came: its quota may be near a line too.
    pub fn nudge(&self) {
        self.nudged.store(true, Ordering::Relaxed);
        self.wake();
    }

    fn wake(&self) {
        // A full pipe already wakes the thread.
        let _ = rustix::io::write(&self.waker, &[1]);
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Arc<Follower>>> {
        self.followers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(&self, wake_read: OwnedFd) {
        loop {
            let followers: Vec<Arc<Follower>> = {
                let mut list = self.lock();
                list.retain(|f| !f.ended.load(Ordering::Relaxed));
                list.clone()
            };
            let due = followers.iter().filter_map(|f| f.alarms().due).min();
            let tables: Vec<&File> = followers.iter().map(|f| &f.mountinfo).collect();
            let changed = match mountinfo::wait_for_change(&wake_read, &tables, due) {
                Ok((_, changed)) => changed,
                Err(error) => {
                    tracing::error!(%error, "quota usage thresholds stopped: poll failed");
                    self.stopped.store(true, Ordering::Relaxed);
                    self.lock().clear();
                    return;
                }
            };
            let nudged = self.nudged.swap(false, Ordering::Relaxed);
            let now = Instant::now();
            for (follower, changed) in followers.iter().zip(changed) {
                if follower.ended.load(Ordering::Relaxed) {
                    continue;
                }
                if changed {
                    follower.reread();
                }
                let mut alarms = follower.alarms();
                if changed || nudged {
                    // A mount storm, or a user writing back and forth across a soft limit,
                    // is read once per shortest interval, not per change.
                    let soonest = alarms.last.map_or(now, |last| last + self.timing.shortest);
                    alarms.due = alarms
                        .due
                        .map_or(Some(soonest), |due| Some(due.min(soonest)));
                }
                if alarms.due.is_some_and(|due| due <= now) {
                    alarms.due = Some(self.check(follower, &mut alarms, now));
                    alarms.last = Some(now);
                }
            }
        }
    }

    /// Reads the watch's quotas and sends what its thresholds make of them (its alarms stay
    /// locked meanwhile: a snapshot never crosses a live record); returns when to look again.
    fn check(&self, follower: &Follower, alarms: &mut Alarms, now: Instant) -> Instant {
        let t = self.start.elapsed();
        let mut next = now + self.timing.longest;
        if !follower.thresholds.any() {
            // Kept for its mount table only: nothing to read.
            return next;
        }
        let (readings, unsure) = follower.read_all();
        let mut live = HashSet::new();
        for r in &readings {
            for resource in Resource::ALL {
                let Some(rule) = follower.thresholds.rule(resource) else {
                    continue;
                };
                let key = (r.dev, r.quota_type, r.id, resource);
                live.insert(key);
                let tracked = alarms.by_quota.entry(key).or_insert_with(|| Tracked {
                    alarm: Alarm::default(),
                    fs_type: r.fs_type.clone(),
                });
                let alarm = &mut tracked.alarm;
                let (limit, room) = room_now(resource, &r.reading);
                let lines = rule.lines(limit);
                let verdict = if limit == 0 {
                    // No limit, or no longer one: nothing to warn about.
                    match alarm.is_low() {
                        true => Verdict::Send(Step::Recovered),
                        false => Verdict::Quiet,
                    }
                } else {
                    alarm.judge(room, lines, t, follower.thresholds.min_interval)
                };
                match verdict {
                    Verdict::Quiet => {}
                    Verdict::Wait(until) => next = next.min(now + until.saturating_sub(t)),
                    Verdict::Send(step) => {
                        let change = follower.change(r, resource, lines, room, false);
                        if self.send(step, change) || follower.born.elapsed() > YOUNG {
                            alarm.commit(step, room, t);
                        } else {
                            next = next.min(now + RETRY);
                        }
                    }
                }
                if limit != 0 {
                    let rate = match resource {
                        Resource::Space => self.timing.fill_rate,
                        Resource::Inodes => self.timing.inode_rate,
                    };
                    let distance = alarm.distance(room, lines);
                    let wait = alarm::next_check(
                        distance,
                        rate,
                        self.timing.shortest,
                        self.timing.longest,
                    );
                    next = next.min(now + wait);
                }
            }
        }
        // A quota no longer there (its filesystem unmounted, or quotas turned off) ends its
        // alarm; one that was low says RECOVERED, with no limit. One that could not be read
        // this time keeps it.
        let gone: Vec<Key> = alarms
            .by_quota
            .keys()
            .filter(|key| !live.contains(key) && !unsure.contains(&key.0))
            .copied()
            .collect();
        for key @ (dev, quota_type, id, resource) in gone {
            let Some(tracked) = alarms.by_quota.remove(&key) else {
                continue;
            };
            if tracked.alarm.is_low() {
                let r = Reading {
                    dev,
                    fs_type: tracked.fs_type,
                    quota_type,
                    id,
                    reading: DiskQuota::default(),
                };
                let lines = alarm::Lines {
                    threshold: 0,
                    margin: 0,
                };
                self.send(
                    Step::Recovered,
                    follower.change(&r, resource, lines, 0, true),
                );
            }
        }
        next
    }

    /// Publishes a record; whether it reached its watch (`false` while the watch is being
    /// registered).
    fn send(&self, step: Step, change: UsageChange) -> bool {
        let change = Arc::new(change);
        self.hub.publish(&Event::new(
            RecordType::Superblock,
            step.quota_subtype(),
            0,
            change.clone(),
        ));
        change.reached.load(Ordering::Relaxed)
    }

    /// A new watch's initial state: its quotas read now; those already low (by the watch's
    /// thresholds) as SNAPSHOT QUOTA_LOW records. `then` runs with the watch's alarms
    /// locked, so the thread sends nothing for it in between.
    pub fn with_snapshot(&self, follower: &Follower, then: &mut dyn FnMut(&[Event])) {
        let mut alarms = follower.alarms();
        if !follower.thresholds.any() {
            return then(&[]);
        }
        let t = self.start.elapsed();
        let mut events = Vec::new();
        for r in follower.read_all().0 {
            for resource in Resource::ALL {
                let Some(rule) = follower.thresholds.rule(resource) else {
                    continue;
                };
                let (limit, room) = room_now(resource, &r.reading);
                if limit == 0 {
                    continue;
                }
                let lines = rule.lines(limit);
                let tracked = alarms
                    .by_quota
                    .entry((r.dev, r.quota_type, r.id, resource))
                    .or_insert_with(|| Tracked {
                        alarm: Alarm::default(),
                        fs_type: r.fs_type.clone(),
                    });
                let alarm = &mut tracked.alarm;
                if !alarm.is_low() && room < lines.threshold {
                    alarm.commit(Step::Low, room, t);
                }
                if alarm.is_low() {
                    let change = follower.change(&r, resource, lines, room, true);
                    events.push(Event::new(
                        RecordType::Superblock,
                        superblock::QUOTA_LOW,
                        FLAG_SNAPSHOT,
                        Arc::new(change),
                    ));
                }
            }
        }
        then(&events);
    }

    /// For `watchctl status`.
    pub fn describe(&self) -> String {
        let t = &self.timing;
        format!(
            "quotactl_fd(2) of each watcher's own user and group quotas by an adaptive timer (every {}–{} s, as [space]) and on mount changes; following {} watch(es)",
            t.shortest.as_secs_f64(),
            t.longest.as_secs_f64(),
            self.lock()
                .iter()
                .filter(|f| !f.ended.load(Ordering::Relaxed))
                .count(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::{OptionMap, Options, Value};

    #[test]
    fn a_watch_that_ends_is_let_go_while_the_thread_sleeps() {
        let (hub, _) = crate::hub::Hub::new(crate::conf::Limits::default());
        let timing = Timing::from_config(&crate::conf::SpaceConf::default());
        let engine = Engine::start(hub, timing).unwrap();
        let (thresholds, _) = take(&[]).unwrap();
        let following = engine
            .follow(
                1000,
                vec![1000],
                thresholds,
                File::open("/").unwrap().into(),
                File::open("/proc/self/mountinfo").unwrap(),
            )
            .unwrap();
        let follower = Arc::downgrade(&following.0);
        // Looked at once (no quotas here), the watch is due again only in minutes.
        std::thread::sleep(Duration::from_millis(50));
        drop(following);
        for _ in 0..500 {
            if follower.strong_count() == 0 {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the thread still holds an ended watch (its mountinfo and root stay open)");
    }

    #[test]
    fn the_room_is_under_the_hard_limit_or_else_the_soft_one() {
        let now = 1_000_000;
        assert_eq!(room(900, 0, 1000, 0, now), (1000, 100));
        assert_eq!(room(900, 500, 1000, now + 60, now), (1000, 100), "in grace");
        assert_eq!(
            room(900, 500, 1000, now, now),
            (500, 0),
            "grace over: EDQUOT now"
        );
        assert_eq!(room(400, 500, 0, 0, now), (500, 100));
        assert_eq!(room(600, 500, 0, 0, now), (500, 0), "over: no room");
        assert_eq!(room(600, 0, 0, 0, now), (0, 0), "no limit");
    }

    fn take(pairs: &[(&str, &str)]) -> Result<(Thresholds, bool)> {
        let map = OptionMap::from_entries(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), Value::Str(v.to_string()))),
        );
        Thresholds::take(&mut Options::new(map)?)
    }

    #[test]
    fn thresholds_default_to_10_percent_and_can_be_turned_off_or_refused() {
        let (t, given) = take(&[]).unwrap();
        assert!(!given);
        let rule = t.space.unwrap();
        assert_eq!(rule.lines(1000).threshold, 100);
        assert_eq!(rule.lines(1000).margin, 10);
        assert!(t.inodes.is_some());
        assert_eq!(t.min_interval, Duration::from_secs(600));
        let (t, given) = take(&[("below", "none"), ("inodes_below", "64")]).unwrap();
        assert!(given && t.space.is_none());
        assert_eq!(t.inodes.unwrap().lines(1000).threshold, 64);
        for bad in [
            vec![("below", "110%")],
            vec![("step", "x")],
            vec![("below", "none"), ("step", "1%")],
        ] {
            let error = take(&bad).unwrap_err().to_string();
            assert!(error.contains("option '"), "{bad:?}: {error}");
        }
    }
}
