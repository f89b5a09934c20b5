//! The fanotify backend (kernel 6.15+): one fanotify group per watched mount namespace, with
//! a `FAN_MARK_MNTNS` mark, reports every attach, detach and move by 64-bit mount id, and
//! `statmount(2)` looks each one up. Nothing is re-read per change, so the cost of a change
//! does not grow with the number of mounts, and a mount made and removed between two looks
//! is still reported (by its id: it was gone before it could be looked at).
//!
//! What fanotify does not report: remounts (`mount -o remount`, `mount_setattr`) and
//! propagation changes. Those still raise `POLLPRI` on any mountinfo of the namespace (but a
//! propagation change by `mount(2)` with `MS_SHARED`… raises nothing at all). On `POLLPRI`,
//! coalesced so a burst of changes costs one look, the namespace's mounts are compared with
//! the table by `statmount`'s fixed fields (flags, superblock flags, propagation: about
//! 0.4 µs a mount). Only a remount that changes nothing but the filesystem's own options
//! (`-o remount,size=…`) needs the option strings, fetched once per superblock (about six
//! times the cost): that full comparison runs at once when a `POLLPRI` is explained by
//! nothing else, and otherwise (the same burst also attached, detached or changed mounts) a
//! half a second later, at most once per [`FULL_SCAN_INTERVAL`].
//!
//! One group per namespace, not one for all: a mount event names no namespace, so a mount
//! gone before it was looked at could not be told apart, and an overflow of one group's
//! queue stays that namespace's to repair.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use watchd_proto::{RecordType, mount};

use super::{MountChange, MountEntry, MountId, Origin, UniqueIds, diff, parse_mountinfo};
use crate::event::Event;
use crate::fanotify::{self, flags::*};
use crate::hub::Hub;
use crate::statmount::{self, MountBasic, Statmount, mask};
use crate::sys;
use crate::watch::Notice;

/// What a mount's record needs.
const FULL: u64 = mask::SB_BASIC
    | mask::MNT_BASIC
    | mask::PROPAGATE_FROM
    | mask::MNT_ROOT
    | mask::MNT_POINT
    | mask::FS_TYPE
    | mask::MNT_OPTS
    | mask::FS_SUBTYPE
    | mask::SB_SOURCE
    | mask::OPT_SEC_ARRAY;
/// What every comparison looks at for every mount.
const FIXED: u64 = mask::SB_BASIC | mask::MNT_BASIC;
/// What a full comparison looks at too, with the first mount of each superblock (and
/// `PROPAGATE_FROM` for slaves).
const SUPER: u64 = mask::MNT_OPTS | mask::OPT_SEC_ARRAY;

/// A comparison waits for this long without a further `POLLPRI` (a burst of mount calls
/// made one after the other by a busy program has gaps of a few ms)…
const SCAN_QUIET: Duration = Duration::from_millis(20);
/// …but never longer than this after the first.
const SCAN_MAX_DELAY: Duration = Duration::from_millis(200);
/// A full comparison that other changes made unsure is run this long after them…
const FULL_SCAN_DELAY: Duration = Duration::from_millis(500);
/// …and such deferred ones at most this often: at 10,000 mounts a full comparison costs
/// about 25 ms, so a namespace that never stops changing costs at most 1.25 % of a CPU.
pub const FULL_SCAN_INTERVAL: Duration = Duration::from_secs(2);

/// A mount's fixed fields: what changes when it is remounted, bind-remounted or its
/// propagation changed (by anything but its filesystem's own options).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fixed {
    parent: u64,
    attr: u64,
    propagation: u64,
    peer_group: u64,
    master: u64,
    dev: (u32, u32),
    sb_flags: u32,
}

impl Fixed {
    fn of(sm: &Statmount<'_>) -> Option<Fixed> {
        let basic = sm.basic()?;
        let (dev, sb_flags) = sm.superblock()?;
        Some(Fixed {
            parent: basic.parent,
            attr: basic.attr,
            propagation: basic.propagation,
            peer_group: basic.peer_group,
            master: basic.master,
            dev,
            sb_flags,
        })
    }
}

/// How far a comparison looks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Depth {
    /// The fixed fields.
    Fixed,
    /// Those, `propagate_from`, and each superblock's options.
    Full,
}

/// Whether this kernel, and any seccomp filter around the daemon, lets it follow
/// namespaces this way: a `FAN_REPORT_MNT` group, a mark on the daemon's own namespace,
/// `listmount`, `statmount` and the namespace id.
pub fn probe() -> io::Result<()> {
    let context = |what: &str, e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
    let ns = File::open("/proc/self/ns/mnt")?;
    let group = new_group().map_err(|e| context("fanotify_init(FAN_REPORT_MNT)", e))?;
    mark(group.as_fd(), ns.as_fd()).map_err(|e| context("fanotify_mark(FAN_MARK_MNTNS)", e))?;
    let ns_id = sys::ns_get_mntns_id(ns.as_fd()).map_err(|e| context("NS_GET_MNTNS_ID", e))?;
    let mut first = [0u64; 1];
    sys::listmount(sys::LSMT_ROOT, ns_id, 0, &mut first).map_err(|e| context("listmount", e))?;
    let mut buf = vec![0u64; 512];
    sys::statmount(first[0], ns_id, FULL, &mut buf).map_err(|e| context("statmount", e))?;
    Ok(())
}

fn new_group() -> io::Result<OwnedFd> {
    sys::fanotify_init(
        libc::FAN_CLASS_NOTIF | libc::FAN_NONBLOCK | FAN_REPORT_MNT,
        libc::O_RDONLY as u32,
    )
}

fn mark(group: BorrowedFd<'_>, ns: BorrowedFd<'_>) -> io::Result<()> {
    sys::fanotify_mark(
        group,
        libc::FAN_MARK_ADD | FAN_MARK_MNTNS,
        FAN_MNT_ATTACH | FAN_MNT_DETACH,
        ns,
        None,
    )
}

/// A namespace's mounts as last seen.
struct Table {
    /// The mounts the namespace's root reaches, by unique id (creation order).
    mounts: BTreeMap<u64, Arc<MountEntry>>,
    /// Their fixed fields as last seen.
    fixed: HashMap<u64, Fixed>,
    /// Mounts it does not reach (no mount point): never reported, as mountinfo omits them.
    hidden: HashSet<u64>,
    /// statmount's buffer.
    buf: Vec<u64>,
}

/// When to compare the namespace's mounts with the table, after `POLLPRI`s.
#[derive(Default)]
struct Scans {
    /// The first and the last `POLLPRI` of a burst not compared yet, and whether fanotify
    /// events came meanwhile (which may be all the `POLLPRI`s were about).
    burst: Option<(Instant, Instant, bool)>,
    /// A full comparison owed, and when it may run.
    full_due: Option<Instant>,
    last_full: Option<Instant>,
}

impl Scans {
    fn changed(&mut self, now: Instant) {
        self.burst = Some(match self.burst {
            None => (now, now, false),
            Some((first, _, heard)) => (first, now, heard),
        });
    }

    fn heard(&mut self) {
        if let Some((_, _, heard)) = &mut self.burst {
            *heard = true;
        }
    }

    fn next_due(&self) -> Option<Instant> {
        let burst = self
            .burst
            .map(|(first, last, _)| (last + SCAN_QUIET).min(first + SCAN_MAX_DELAY));
        match (burst, self.full_due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The comparison to make now, if any.
    fn due(&self, now: Instant) -> Option<Depth> {
        match self.burst {
            Some((first, last, _)) if now >= (last + SCAN_QUIET).min(first + SCAN_MAX_DELAY) => {
                Some(Depth::Fixed)
            }
            Some(_) => None,
            None => self.full_due.filter(|due| now >= *due).map(|_| Depth::Full),
        }
    }

    /// After a comparison: a fixed one that explains nothing (no fanotify event, no change
    /// found) is followed by a full one at once; one that may have been explained by other
    /// changes, by a full one later.
    fn scanned(&mut self, now: Instant, depth: Depth, found: bool) {
        match depth {
            Depth::Full => {
                self.full_due = None;
                self.last_full = Some(now);
            }
            Depth::Fixed => {
                let heard = self.burst.take().is_some_and(|(_, _, heard)| heard);
                let due = if !heard && !found {
                    now
                } else {
                    let earliest = self.last_full.map_or(now, |t| t + FULL_SCAN_INTERVAL);
                    (now + FULL_SCAN_DELAY).max(earliest)
                };
                self.full_due = Some(self.full_due.map_or(due, |owed| owed.min(due)));
            }
        }
    }
}

/// One mount namespace followed through fanotify.
pub struct Namespace {
    pub origin: Origin,
    ns_id: u64,
    group: File,
    /// A mountinfo of the namespace: `POLLPRI` on any change, remounts included.
    poll_file: File,
    table: Mutex<Table>,
}

/// A `[str]` field as text, or empty.
fn text(field: Option<&[u8]>) -> String {
    String::from_utf8_lossy(field.unwrap_or_default()).into_owned()
}

/// The per-mount options as mountinfo prints them ("rw,nosuid,relatime").
fn mount_options(attr: u64) -> String {
    use statmount::attr::*;
    let mut out = String::from(if attr & RDONLY != 0 { "ro" } else { "rw" });
    for (bit, word) in [(NOSUID, ",nosuid"), (NODEV, ",nodev"), (NOEXEC, ",noexec")] {
        if attr & bit != 0 {
            out.push_str(word);
        }
    }
    if attr & ATIME == NOATIME {
        out.push_str(",noatime");
    }
    if attr & NODIRATIME != 0 {
        out.push_str(",nodiratime");
    }
    if attr & ATIME == RELATIME {
        out.push_str(",relatime");
    }
    if attr & NOSYMFOLLOW != 0 {
        out.push_str(",nosymfollow");
    }
    if attr & IDMAP != 0 {
        out.push_str(",idmapped");
    }
    out
}

/// The superblock's options as mountinfo prints them: flags, security options, then the
/// filesystem's own.
fn super_options(sb_flags: u32, security: &[&[u8]], fs: Option<&[u8]>) -> String {
    use statmount::sb::*;
    let mut out = String::from(if sb_flags & RDONLY != 0 { "ro" } else { "rw" });
    for (bit, word) in [
        (SYNCHRONOUS, ",sync"),
        (DIRSYNC, ",dirsync"),
        (LAZYTIME, ",lazytime"),
    ] {
        if sb_flags & bit != 0 {
            out.push_str(word);
        }
    }
    for option in security.iter().copied().chain(fs.filter(|f| !f.is_empty())) {
        out.push(',');
        out.push_str(&String::from_utf8_lossy(option));
    }
    out
}

/// Propagation as mountinfo's optional fields ("shared:1 master:2 propagate_from:3").
fn propagation(basic: &MountBasic, propagate_from: Option<u64>) -> String {
    use statmount::propagation::*;
    let mut fields = Vec::new();
    if basic.propagation & SHARED != 0 {
        fields.push(format!("shared:{}", basic.peer_group));
    }
    if basic.propagation & SLAVE != 0 {
        fields.push(format!("master:{}", basic.master));
        match propagate_from {
            Some(from) if from != 0 && from != basic.master => {
                fields.push(format!("propagate_from:{from}"))
            }
            _ => {}
        }
    }
    if basic.propagation & UNBINDABLE != 0 {
        fields.push("unbindable".into());
    }
    fields.join(" ")
}

/// A mount's entry from a FULL statmount; `None` when the answer lacks a field. Public for
/// the statmount fuzz target (fuzz/src/targets/statmount.rs).
pub fn entry_from(sm: &Statmount<'_>) -> Option<MountEntry> {
    let basic = sm.basic()?;
    let ((major, minor), sb_flags) = sm.superblock()?;
    let mut fs_type = text(sm.fs_type());
    if let Some(subtype) = sm.fs_subtype().filter(|s| !s.is_empty()) {
        fs_type.push('.');
        fs_type.push_str(&String::from_utf8_lossy(subtype));
    }
    let source = match sm.source() {
        Some(source) if !source.is_empty() => source.to_vec(),
        _ => b"none".to_vec(),
    };
    Some(MountEntry {
        id: MountId(basic.id_old.into()),
        parent: MountId(basic.parent_old.into()),
        major,
        minor,
        root: sm.root()?.to_vec(),
        mount_point: sm.mount_point()?.to_vec(),
        options: mount_options(basic.attr),
        propagation: propagation(&basic, sm.propagate_from()),
        fs_type,
        source,
        super_options: super_options(sb_flags, &sm.security_options(), sm.fs_options()),
        unique: Some(UniqueIds {
            id: basic.id,
            parent: basic.parent,
        }),
        gone: false,
    })
}

impl Table {
    fn remember(
        &mut self,
        id: u64,
        entry: Arc<MountEntry>,
        fixed: Fixed,
    ) -> Option<Arc<MountEntry>> {
        self.hidden.remove(&id);
        self.fixed.insert(id, fixed);
        self.mounts.insert(id, entry)
    }

    fn forget(&mut self, id: u64) -> Option<Arc<MountEntry>> {
        self.fixed.remove(&id);
        self.mounts.remove(&id)
    }

    fn replace_all(&mut self, all: Mounts) {
        self.mounts = all
            .visible
            .iter()
            .map(|(e, _)| (e.key(), e.clone()))
            .collect();
        self.fixed = all.visible.into_iter().map(|(e, f)| (e.key(), f)).collect();
        self.hidden = all.hidden;
    }
}

/// Every mount of a namespace, as [`Namespace::read_all`] found them.
struct Mounts {
    visible: Vec<(Arc<MountEntry>, Fixed)>,
    hidden: HashSet<u64>,
}

/// What a look at one mount found.
enum Looked {
    Visible(Box<(MountEntry, Fixed)>),
    /// In the namespace, but not below its root.
    Hidden,
    /// Not in the namespace (any more).
    Gone,
}

impl Namespace {
    /// Marks the namespace `ns` (an open nsfs descriptor), then reads its mounts: a change
    /// made in between is both in the table and in the queue, and found to be no change.
    pub fn open(origin: Origin, ns: BorrowedFd<'_>, poll_file: File) -> io::Result<Namespace> {
        let ns_id = sys::ns_get_mntns_id(ns)?;
        let group = new_group()?;
        mark(group.as_fd(), ns)?;
        let namespace = Namespace {
            origin,
            ns_id,
            group: File::from(group),
            poll_file,
            table: Mutex::new(Table {
                mounts: BTreeMap::new(),
                fixed: HashMap::new(),
                hidden: HashSet::new(),
                buf: vec![0u64; 512],
            }),
        };
        {
            let mut table = namespace.lock();
            let all = namespace.read_all(&mut table.buf)?;
            table.replace_all(all);
        }
        Ok(namespace)
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().expect("mount table poisoned")
    }

    fn look(&self, buf: &mut Vec<u64>, id: u64) -> io::Result<Looked> {
        let bytes = match sys::statmount(id, self.ns_id, FULL, buf) {
            Ok(bytes) => bytes,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(Looked::Gone),
            Err(e) => return Err(e),
        };
        let looked =
            Statmount::parse(bytes).and_then(|sm| Some((entry_from(&sm)?, Fixed::of(&sm)?)));
        match looked {
            Some((entry, _)) if entry.mount_point.is_empty() => Ok(Looked::Hidden),
            Some(looked) => Ok(Looked::Visible(Box::new(looked))),
            None => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "statmount answered without the fields asked for",
            )),
        }
    }

    /// Every mount of the namespace, from `listmount` and `statmount`.
    fn read_all(&self, buf: &mut Vec<u64>) -> io::Result<Mounts> {
        let mut visible = Vec::new();
        let mut hidden = HashSet::new();
        for id in self.list()? {
            match self.look(buf, id)? {
                Looked::Visible(looked) => {
                    let (entry, fixed) = *looked;
                    visible.push((Arc::new(entry), fixed));
                }
                Looked::Hidden => {
                    hidden.insert(id);
                }
                Looked::Gone => {}
            }
        }
        Ok(Mounts { visible, hidden })
    }

    /// The unique ids of the namespace's mounts, in ascending order.
    fn list(&self) -> io::Result<Vec<u64>> {
        let mut ids = Vec::new();
        let mut chunk = vec![0u64; 4096];
        loop {
            let after = ids.last().copied().unwrap_or(0);
            let n = sys::listmount(sys::LSMT_ROOT, self.ns_id, after, &mut chunk)?;
            ids.extend_from_slice(&chunk[..n]);
            if n < chunk.len() {
                return Ok(ids);
            }
        }
    }

    /// Whether a caller's mountinfo shows the mounts at the places this table does (it does
    /// not for a caller whose root is not the namespace's).
    pub fn agrees_with_mountinfo(&self, mut mountinfo: &File) -> bool {
        let mut text = Vec::new();
        if mountinfo.read_to_end(&mut text).is_err() {
            return false;
        }
        let (entries, _) = parse_mountinfo(&text);
        let table = self.lock();
        let ours: HashMap<MountId, &[u8]> = table
            .mounts
            .values()
            .map(|e| (e.id, e.mount_point.as_slice()))
            .collect();
        let mut common = 0;
        for entry in &entries {
            match ours.get(&entry.id) {
                Some(point) if *point == entry.mount_point.as_slice() => common += 1,
                Some(_) => return false,
                None => {}
            }
        }
        common > 0
    }

    /// The current table as SNAPSHOT attaches, handed to `then` with the table held still.
    pub fn with_snapshot(&self, then: &mut dyn FnMut(&[Event])) {
        let table = self.lock();
        then(&super::snapshot(table.mounts.values(), self.origin));
    }

    /// Follows the namespace until `stop` closes.
    pub fn follow(&self, hub: &Hub, stop: OwnedFd) {
        let mut buf = vec![0u8; 64 * 1024];
        let mut scans = Scans::default();
        loop {
            let timeout = match scans.next_due() {
                None => PollTimeout::NONE,
                Some(due) => {
                    let left = due.saturating_duration_since(Instant::now()).as_millis();
                    PollTimeout::try_from(left as i32 + 1).unwrap_or(PollTimeout::MAX)
                }
            };
            let mut fds = [
                PollFd::new(self.group.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.poll_file.as_fd(), PollFlags::POLLPRI),
                PollFd::new(stop.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    return tracing::error!(error = %e, "stopped following a mount namespace: poll failed");
                }
            }
            if fds[2].any().unwrap_or(true) {
                return tracing::info!(
                    feed = self.origin.view,
                    "no watch left on a mount namespace: stopped following it"
                );
            }
            let now = Instant::now();
            if fds[1].any().unwrap_or(false) {
                scans.changed(now);
            }
            let drained = self.drain(hub, &mut buf).unwrap_or_else(|e| {
                tracing::error!(error = %e, "reading mount events failed");
                0
            });
            // A change raises POLLPRI before its fanotify event is queued: the POLLPRI of
            // every event just read has been raised by now, so the burst it joins knows
            // that events came.
            if self.changed_since_polled() {
                scans.changed(now);
            }
            if drained > 0 {
                scans.heard();
            }
            if let Some(depth) = scans.due(now) {
                let heard = scans.burst.is_some_and(|(_, _, heard)| heard);
                match self.scan(hub, depth) {
                    Ok(found) => {
                        tracing::debug!(
                            feed = self.origin.view,
                            ?depth,
                            heard,
                            found,
                            took_us = now.elapsed().as_micros() as u64,
                            "compared the namespace's mounts"
                        );
                        scans.scanned(now, depth, found)
                    }
                    Err(e) => tracing::error!(error = %e, "comparing mounts failed"),
                }
            }
        }
    }

    /// Whether the namespace changed since its mountinfo was last polled (and polls it).
    fn changed_since_polled(&self) -> bool {
        let mut fds = [PollFd::new(self.poll_file.as_fd(), PollFlags::POLLPRI)];
        matches!(poll(&mut fds, PollTimeout::ZERO), Ok(1))
    }

    /// Reads and publishes every queued mount event; returns how many there were.
    fn drain(&self, hub: &Hub, buf: &mut [u8]) -> io::Result<usize> {
        let mut count = 0;
        loop {
            let n = match (&self.group).read(buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(count),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let events = fanotify::events(&buf[..n]).unwrap_or_else(|kept| {
                tracing::warn!("a fanotify event did not parse: the rest of the batch is lost");
                kept
            });
            count += events.len();
            let mut table = self.lock();
            let mut overflowed = false;
            for event in &events {
                match event.mount_id() {
                    Some(id) => self.apply(&mut table, hub, event.mask, id),
                    None => overflowed |= event.mask & FAN_Q_OVERFLOW != 0,
                }
            }
            if overflowed {
                tracing::warn!(
                    feed = self.origin.view,
                    "the mount event queue overflowed: reading the namespace again"
                );
                hub.publish(&Notice::loss_to(
                    super::KIND,
                    Some(self.origin.view),
                    RecordType::Mount,
                    "the kernel's mount event queue overflowed; what changed meanwhile follows",
                ));
                self.resync(&mut table, hub)?;
            }
        }
    }

    fn publish(&self, hub: &Hub, subtype: u8, change: MountChange) {
        hub.publish(&change.into_event(subtype, 0));
    }

    /// One mount event: what it did to mount `id`, found by looking at the mount now.
    fn apply(&self, table: &mut Table, hub: &Hub, mask: u64, id: u64) {
        if mask & FAN_MNT_ATTACH == 0 {
            return self.detached(table, hub, id);
        }
        let looked = self.look(&mut table.buf, id).unwrap_or_else(|e| {
            tracing::warn!(error = %e, id, "statmount failed: the mount is reported by its id only");
            Looked::Gone
        });
        match looked {
            Looked::Visible(looked) => {
                let (entry, fixed) = *looked;
                let entry = Arc::new(entry);
                match table.remember(id, entry.clone(), fixed) {
                    None => self.publish(hub, mount::ATTACH, MountChange::new(entry, self.origin)),
                    Some(old) if old.is_gone() => {}
                    Some(old) if old.mount_point != entry.mount_point => {
                        let changed = entry.changes_from(&old);
                        let mut change = MountChange::new(entry, self.origin);
                        change.old_mount_point = Some(old.mount_point.clone());
                        change.changed = changed;
                        self.publish(hub, mount::MOVE, change);
                    }
                    // Already known: the first table, or a look that saw the move before
                    // its event.
                    Some(_) => {}
                }
            }
            Looked::Hidden => {
                let old = table.forget(id);
                table.hidden.insert(id);
                if let Some(old) = old {
                    self.publish(hub, mount::DETACH, MountChange::new(old, self.origin));
                }
            }
            // Moved, then gone: its DETACH event follows.
            Looked::Gone if mask & FAN_MNT_DETACH != 0 => {}
            Looked::Gone => {
                if let std::collections::btree_map::Entry::Vacant(slot) = table.mounts.entry(id) {
                    let ghost = slot.insert(Arc::new(MountEntry::gone(id))).clone();
                    self.publish(hub, mount::ATTACH, MountChange::new(ghost, self.origin));
                }
            }
        }
    }

    fn detached(&self, table: &mut Table, hub: &Hub, id: u64) {
        if table.hidden.remove(&id) {
            return;
        }
        let old = table
            .forget(id)
            .unwrap_or_else(|| Arc::new(MountEntry::gone(id)));
        self.publish(hub, mount::DETACH, MountChange::new(old, self.origin));
    }

    /// After lost events: the namespace read again, and the difference published.
    fn resync(&self, table: &mut Table, hub: &Hub) -> io::Result<()> {
        let all = self.read_all(&mut table.buf)?;
        let old: Vec<Arc<MountEntry>> = table.mounts.values().cloned().collect();
        let new: Vec<Arc<MountEntry>> = all.visible.iter().map(|(e, _)| e.clone()).collect();
        for (subtype, change) in diff(&old, &new, self.origin) {
            self.publish(hub, subtype, change);
        }
        table.replace_all(all);
        Ok(())
    }

    /// Finds the mounts whose options or propagation changed (no fanotify event tells) by
    /// comparing them with the table, as far as `depth` says; publishes what changed and
    /// says whether anything did.
    fn scan(&self, hub: &Hub, depth: Depth) -> io::Result<bool> {
        let ids = self.list()?;
        let mut guard = self.lock();
        // One borrow of the table, so that its buffer and its maps borrow apart.
        let table = &mut *guard;
        // Each superblock's options (security's, then the filesystem's), fetched with the
        // first of its mounts, in the same call.
        let mut super_tails: HashMap<(u32, u32), String> = HashMap::new();
        let mut changed = Vec::new();
        for id in ids {
            let Some(old) = table.mounts.get(&id).filter(|e| !e.is_gone()).cloned() else {
                continue;
            };
            let known = table.fixed.get(&id).copied();
            let full = depth == Depth::Full;
            let with_super = full && known.is_some_and(|f| !super_tails.contains_key(&f.dev));
            // Only a slave has a propagate_from.
            let with_from =
                full && known.is_some_and(|f| f.propagation & statmount::propagation::SLAVE != 0);
            let mask = FIXED
                | if with_super { SUPER } else { 0 }
                | if with_from { mask::PROPAGATE_FROM } else { 0 };
            let Ok(bytes) = sys::statmount(id, self.ns_id, mask, &mut table.buf) else {
                continue;
            };
            let Some(sm) = Statmount::parse(bytes) else {
                continue;
            };
            let (Some(fixed), Some(basic)) = (Fixed::of(&sm), sm.basic()) else {
                continue;
            };
            let mut differs = known != Some(fixed);
            if full && !differs {
                if with_from {
                    differs = propagation(&basic, sm.propagate_from()) != old.propagation;
                }
                if with_super {
                    let tail = super_options(0, &sm.security_options(), sm.fs_options());
                    super_tails.insert(fixed.dev, tail[2..].to_owned());
                }
                let tail = super_tails.get(&fixed.dev).map_or("", String::as_str);
                differs |= super_options(fixed.sb_flags, &[], None) + tail != old.super_options;
            }
            if differs {
                changed.push((id, old));
            }
        }
        let found = !changed.is_empty();
        for (id, old) in changed {
            let Ok(Looked::Visible(looked)) = self.look(&mut table.buf, id) else {
                continue;
            };
            let (entry, fixed) = *looked;
            let entry = Arc::new(entry);
            table.remember(id, entry.clone(), fixed);
            let mut change = MountChange::new(entry.clone(), self.origin);
            change.changed = entry.changes_from(&old);
            if entry.mount_point != old.mount_point {
                change.old_mount_point = Some(old.mount_point.clone());
                self.publish(hub, mount::MOVE, change);
            } else if change.changed != 0 {
                self.publish(hub, mount::CHANGE, change);
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::statmount::attr;

    #[test]
    fn mount_options_read_like_mountinfo() {
        assert_eq!(mount_options(0), "rw,relatime");
        assert_eq!(
            mount_options(attr::RDONLY | attr::NOSUID | attr::NODEV | attr::NOEXEC | attr::NOATIME),
            "ro,nosuid,nodev,noexec,noatime"
        );
        assert_eq!(
            mount_options(0x20 | attr::NODIRATIME),
            "rw,nodiratime",
            "strictatime shows nothing"
        );
        assert_eq!(super_options(1, &[], Some(b"size=1024k")), "ro,size=1024k");
        assert_eq!(super_options(0, &[], Some(b"")), "rw");
    }

    #[test]
    fn a_burst_is_compared_once_when_quiet_and_fully_only_when_unexplained_or_later() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut scans = Scans::default();
        assert_eq!(scans.next_due(), None);
        scans.changed(ms(0));
        scans.changed(ms(3));
        assert_eq!(scans.due(ms(4)), None, "still in the burst");
        assert_eq!(scans.due(ms(23)), Some(Depth::Fixed));
        // Nothing heard, nothing found: the POLLPRI was about options only, look now.
        scans.scanned(ms(23), Depth::Fixed, false);
        assert_eq!(scans.due(ms(23)), Some(Depth::Full));
        scans.scanned(ms(24), Depth::Full, false);
        assert_eq!(scans.next_due(), None);

        // A burst that fanotify events explain: the full look waits a second, and runs
        // no sooner than FULL_SCAN_INTERVAL after the last one.
        scans.changed(ms(100));
        scans.heard();
        for t in (110..300).step_by(10) {
            scans.changed(ms(t));
        }
        assert_eq!(
            scans.due(ms(300)),
            Some(Depth::Fixed),
            "at most SCAN_MAX_DELAY late"
        );
        scans.scanned(ms(300), Depth::Fixed, false);
        assert_eq!(scans.due(ms(1300)), None);
        assert_eq!(scans.next_due(), Some(ms(24) + FULL_SCAN_INTERVAL));
        // A change found explains the burst just as well.
        let mut found = Scans::default();
        found.changed(ms(0));
        found.scanned(ms(20), Depth::Fixed, true);
        assert_eq!(found.next_due(), Some(ms(20) + FULL_SCAN_DELAY));
    }
}

#[cfg(test)]
mod live_tests {
    use super::*;

    /// Needs CAP_SYS_ADMIN (fanotify mount marks) and kernel 6.15: skipped, saying so,
    /// outside CI only.
    fn available() -> bool {
        match probe() {
            Ok(()) => true,
            Err(e) if std::env::var_os("CI").is_none() => {
                eprintln!("skipped: fanotify mount events unavailable here: {e}");
                false
            }
            Err(e) => panic!("fanotify mount events unavailable in CI: {e}"),
        }
    }

    #[test]
    fn the_statmount_table_reads_exactly_like_mountinfo() {
        if !available() {
            return;
        }
        let ns_fd = File::open("/proc/self/ns/mnt").unwrap();
        let mut mountinfo = File::open("/proc/self/mountinfo").unwrap();
        let origin = Origin { ns: 1, view: 1 };
        let ns = Namespace::open(origin, ns_fd.as_fd(), mountinfo.try_clone().unwrap()).unwrap();
        let mut text = Vec::new();
        mountinfo.read_to_end(&mut text).unwrap();
        let (expected, bad) = parse_mountinfo(&text);
        assert_eq!(bad, 0);
        let table = ns.lock();
        let ours: HashMap<MountId, &Arc<MountEntry>> =
            table.mounts.values().map(|e| (e.id, e)).collect();
        assert_eq!(
            ours.len(),
            expected.len(),
            "as many mounts as mountinfo shows"
        );
        for want in &expected {
            let got = ours
                .get(&want.id)
                .expect("every mountinfo line is in the table");
            let got = MountEntry {
                unique: None,
                ..(***got).clone()
            };
            assert_eq!(&got, want);
        }
        drop(table);
        assert!(ns.agrees_with_mountinfo(&File::open("/proc/self/mountinfo").unwrap()));
    }
}
