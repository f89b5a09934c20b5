//! The fanotify backend (kernel 6.15+): one fanotify group per watched mount namespace, with
//! a `FAN_MARK_MNTNS` mark, reports every attach, detach and move by 64-bit mount id, and
//! `statmount(2)` looks each one up. Nothing is re-read per change, so the cost of a change
//! does not grow with the number of mounts, and a mount made and removed between two looks
//! is still reported (by its id: it was gone before it could be looked at).
//!
//! What fanotify does not report: remounts (`mount -o remount`, `mount_setattr`) and
//! propagation changes. Those still raise `POLLPRI` on any mountinfo of the namespace (but a
//! propagation change by `mount(2)` with `MS_SHARED`… raises nothing at all); on `POLLPRI`
//! the namespace's mounts are compared with the table through `statmount`'s fixed fields,
//! the option strings fetched once per superblock, coalesced so a burst of changes costs a
//! few scans, not one each.
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
use watchd_proto::{FLAG_SNAPSHOT, RecordType, mount};

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
/// What a scan compares for every mount.
const FIXED: u64 = mask::SB_BASIC | mask::MNT_BASIC | mask::PROPAGATE_FROM;
/// What a scan fetches once per superblock.
const SUPER: u64 = mask::MNT_OPTS | mask::OPT_SEC_ARRAY;

/// A scan waits for this long without a further `POLLPRI`…
const SCAN_QUIET: Duration = Duration::from_millis(5);
/// …but never longer than this after the first.
const SCAN_MAX_DELAY: Duration = Duration::from_millis(100);

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
    /// Mounts it does not reach (no mount point): never reported, as mountinfo omits them.
    hidden: HashSet<u64>,
    /// statmount's buffer.
    buf: Vec<u64>,
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

/// A mount's entry from a FULL statmount; `None` when the answer lacks a field.
fn entry_from(sm: &Statmount<'_>) -> Option<MountEntry> {
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
    })
}

/// What a look at one mount found.
enum Looked {
    Visible(Box<MountEntry>),
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
                hidden: HashSet::new(),
                buf: vec![0u64; 512],
            }),
        };
        {
            let mut table = namespace.lock();
            let (mounts, hidden) = namespace.read_all(&mut table.buf)?;
            table.mounts = mounts.into_iter().map(|e| (e.key(), e)).collect();
            table.hidden = hidden;
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
        let entry = Statmount::parse(bytes).and_then(|sm| entry_from(&sm));
        match entry {
            Some(entry) if entry.mount_point.is_empty() => Ok(Looked::Hidden),
            Some(entry) => Ok(Looked::Visible(Box::new(entry))),
            None => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "statmount answered without the fields asked for",
            )),
        }
    }

    /// Every mount of the namespace, from `listmount` and `statmount`.
    fn read_all(&self, buf: &mut Vec<u64>) -> io::Result<(Vec<Arc<MountEntry>>, HashSet<u64>)> {
        let mut visible = Vec::new();
        let mut hidden = HashSet::new();
        for id in self.list()? {
            match self.look(buf, id)? {
                Looked::Visible(entry) => visible.push(Arc::new(*entry)),
                Looked::Hidden => {
                    hidden.insert(id);
                }
                Looked::Gone => {}
            }
        }
        Ok((visible, hidden))
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
    pub fn agrees_with_mountinfo(&self, mountinfo: &mut File) -> bool {
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
        let snapshot: Vec<Event> = table
            .mounts
            .values()
            .map(|entry| {
                MountChange::new(entry.clone(), self.origin)
                    .into_event(mount::ATTACH, FLAG_SNAPSHOT)
            })
            .collect();
        then(&snapshot);
    }

    /// Follows the namespace until `stop` closes.
    pub fn follow(&self, hub: &Hub, stop: OwnedFd) {
        let mut buf = vec![0u8; 64 * 1024];
        let mut pending_scan: Option<(Instant, Instant)> = None;
        loop {
            let timeout = match pending_scan {
                None => PollTimeout::NONE,
                Some((first, last)) => {
                    let due = (last + SCAN_QUIET).min(first + SCAN_MAX_DELAY);
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
                pending_scan = Some(pending_scan.map_or((now, now), |(first, _)| (first, now)));
            }
            if let Err(e) = self.drain(hub, &mut buf) {
                tracing::error!(error = %e, "reading mount events failed");
            }
            if let Some((first, last)) = pending_scan
                && now >= (last + SCAN_QUIET).min(first + SCAN_MAX_DELAY)
            {
                pending_scan = None;
                if let Err(e) = self.scan(hub) {
                    tracing::error!(error = %e, "comparing mount options failed");
                }
            }
        }
    }

    /// Reads and publishes every queued mount event.
    fn drain(&self, hub: &Hub, buf: &mut [u8]) -> io::Result<()> {
        loop {
            let n = match (&self.group).read(buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let events = fanotify::events(&buf[..n]).unwrap_or_else(|kept| {
                tracing::warn!("a fanotify event did not parse: the rest of the batch is lost");
                kept
            });
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
            Looked::Visible(entry) => {
                table.hidden.remove(&id);
                let entry = Arc::new(*entry);
                match table.mounts.insert(id, entry.clone()) {
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
                table.hidden.insert(id);
                if let Some(old) = table.mounts.remove(&id) {
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
            .mounts
            .remove(&id)
            .unwrap_or_else(|| Arc::new(MountEntry::gone(id)));
        self.publish(hub, mount::DETACH, MountChange::new(old, self.origin));
    }

    /// After lost events: the namespace read again, and the difference published.
    fn resync(&self, table: &mut Table, hub: &Hub) -> io::Result<()> {
        let (mounts, hidden) = self.read_all(&mut table.buf)?;
        let old: Vec<Arc<MountEntry>> = table.mounts.values().cloned().collect();
        for (subtype, change) in diff(&old, &mounts, self.origin) {
            self.publish(hub, subtype, change);
        }
        table.mounts = mounts.into_iter().map(|e| (e.key(), e)).collect();
        table.hidden = hidden;
        Ok(())
    }

    /// Finds the mounts whose options or propagation changed (no fanotify event tells) by
    /// comparing statmount's fixed fields, and each superblock's options once, with the table.
    fn scan(&self, hub: &Hub) -> io::Result<()> {
        let ids = self.list()?;
        let mut table = self.lock();
        let mut super_tails: HashMap<(u32, u32), String> = HashMap::new();
        let mut changed = Vec::new();
        let mut sb_buf = vec![0u64; 512];
        for id in ids {
            let Some(old) = table.mounts.get(&id).filter(|e| !e.is_gone()).cloned() else {
                continue;
            };
            let fixed = match sys::statmount(id, self.ns_id, FIXED, &mut table.buf) {
                Ok(bytes) => Statmount::parse(bytes)
                    .and_then(|sm| Some((sm.basic()?, sm.superblock()?, sm.propagate_from()))),
                Err(_) => None,
            };
            let Some((basic, (dev, sb_flags), from)) = fixed else {
                continue;
            };
            let tail = match super_tails.get(&dev) {
                Some(tail) => tail,
                None => {
                    let tail = match sys::statmount(id, self.ns_id, SUPER, &mut sb_buf) {
                        Ok(bytes) => Statmount::parse(bytes).map_or_else(String::new, |sm| {
                            super_options(0, &sm.security_options(), sm.fs_options()).split_off(2)
                        }),
                        Err(_) => continue,
                    };
                    super_tails.entry(dev).or_insert(tail)
                }
            };
            let super_now = super_options(sb_flags, &[], None) + tail;
            if mount_options(basic.attr) != old.options
                || super_now != old.super_options
                || propagation(&basic, from) != old.propagation
                || basic.parent != old.unique.map_or(0, |u| u.parent)
            {
                changed.push((id, old));
            }
        }
        for (id, old) in changed {
            let Ok(Looked::Visible(entry)) = self.look(&mut table.buf, id) else {
                continue;
            };
            let entry = Arc::new(*entry);
            table.mounts.insert(id, entry.clone());
            let mut change = MountChange::new(entry.clone(), self.origin);
            change.changed = entry.changes_from(&old);
            if entry.mount_point != old.mount_point {
                change.old_mount_point = Some(old.mount_point.clone());
                self.publish(hub, mount::MOVE, change);
            } else if change.changed != 0 {
                self.publish(hub, mount::CHANGE, change);
            }
        }
        Ok(())
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
        assert!(ns.agrees_with_mountinfo(&mut File::open("/proc/self/mountinfo").unwrap()));
    }
}
