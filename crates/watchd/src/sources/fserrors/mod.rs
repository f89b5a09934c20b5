//! Filesystem errors (`fserrors` kind): the errors a filesystem reports to fanotify
//! (`FAN_FS_ERROR`), with errno, count, device, filesystem id and type, and where the
//! filesystem is mounted in the subscriber's own mount namespace; initially, what ext4
//! already counts ([`ext4`]).
//!
//! **Which filesystems report.** In Linux 6.18 only ext4 calls `fsnotify_sb_error` (and so
//! ext2 and ext3 when the ext4 driver serves them): [`REPORTING`] are the types marked. A
//! `path` watch on any other filesystem is refused (`NotSupported`, naming its type and the
//! types that report) rather than accepted and left silent forever.
//!
//! **Marks.** One fanotify group in FID mode (`FAN_REPORT_FID`, which `FAN_FS_ERROR`
//! needs: events name a filesystem id and an inode's handle, never an open file; the
//! event's pid is never read). A filesystem gets one filesystem mark (`FAN_MARK_FILESYSTEM`)
//! however many watches and namespaces share it, as soon as some watched namespace has it
//! mounted: the daemon opens a mount point of it (`O_PATH`, resolved in the watcher's root
//! with `RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS`, checked to be that device) and marks it,
//! then closes the descriptor: nothing is held open, so no watch keeps a filesystem busy.
//! For the same reason a mark cannot be taken off a filesystem that left every watched
//! namespace (removing a mark needs a path on it): the daemon forgets it, ignores its
//! events, and marks it again if it comes back; the kernel drops the mark with the
//! superblock, and the daemon flushes every mark once no watch is left.
//!
//! **Following mounts.** Each watched view (a mount namespace seen from a root, per uid, as
//! the mounts kind keys them) is followed through the first watcher's open mountinfo (the
//! open file keeps the namespace readable after the caller exits): on its `POLLPRI` the
//! table is read again, newly mounted filesystems are marked, and a filesystem with no
//! mount left ends the `path` watches on it (REMOVAL "unmounted"). One thread polls the
//! group and every followed mountinfo. A filesystem that is mounted and fails before the
//! re-read has marked it is missed live, but its errors are in ext4's counts.
//!
//! **Who sees an error.** An event is published once per followed view that has the
//! filesystem mounted, with that view's mount points: a watch gets errors of filesystems
//! mounted in its own namespace only, and a `path` watch those of its path's filesystem.
//! Two filesystems with one filesystem id (a cloned ext4 image, same UUID) cannot be told
//! apart by the event: its error is reported for each of them.
//!
//! **Loss.** The group's queue overflowing (`FAN_Q_OVERFLOW`) is a LOSS to every fserrors
//! watch: the event does not say whose errors were dropped. Errors on one filesystem that
//! the daemon has not read yet merge in the kernel into one event with their count: a
//! record's `error_count` is that count, not a loss.
#![forbid(unsafe_code)]

pub mod ext4;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, Weak};

use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use watchd_proto::{FLAG_SNAPSHOT, RecordBuilder, RecordType, attr, meta, superblock};

use crate::access::{self, CallerProcess, MountView};
use crate::error::{Error, Result, Truncated};
use crate::event::{Change, Event, Fields};
use crate::fanotify::{self, flags::FAN_Q_OVERFLOW, info};
use crate::hub::Hub;
use crate::identity::{Caller, Uid};
use crate::options::Options;
use crate::source::Source;
use crate::sources::files::relative_c_path;
use crate::sources::mounts::{MountEntry, mountinfo};
use crate::sys;
use crate::watch::{Kind, Notice, Scope};

/// The kind clients name in `AddWatch`.
pub const KIND: Kind = Kind("fserrors");

/// The filesystem types that report errors to fanotify (Linux 6.18: ext4's driver).
pub const REPORTING: [&str; 3] = ["ext4", "ext3", "ext2"];

/// [`REPORTING`] in words, for messages and `watchctl status`.
const REPORTING_TEXT: &str =
    "only ext4 reports errors (ext2 and ext3 too when the ext4 driver serves them)";

const GROUP_FLAGS: u32 = libc::FAN_CLASS_NOTIF | libc::FAN_NONBLOCK | libc::FAN_REPORT_FID;

/// A filesystem, by its device number (`st_dev`, mountinfo's `major:minor`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Dev(pub u64);

impl Dev {
    pub fn of(major: u32, minor: u32) -> Dev {
        Dev(rustix::fs::makedev(major, minor))
    }

    pub fn major(self) -> u32 {
        rustix::fs::major(self.0)
    }

    pub fn minor(self) -> u32 {
        rustix::fs::minor(self.0)
    }
}

/// A reporting filesystem as one view has it mounted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mounted {
    pub fs_type: String,
    /// Its mount points in the view, in the table's order (a filesystem may be mounted at
    /// several places, bind mounts included).
    pub points: Vec<Vec<u8>>,
}

/// The reporting filesystems of a mount table, by device.
pub fn reporting(entries: &[MountEntry]) -> BTreeMap<Dev, Mounted> {
    let mut found: BTreeMap<Dev, Mounted> = BTreeMap::new();
    for e in entries
        .iter()
        .filter(|e| REPORTING.contains(&e.fs_type.as_str()))
    {
        found
            .entry(Dev::of(e.major, e.minor))
            .or_insert_with(|| Mounted {
                fs_type: e.fs_type.clone(),
                points: Vec::new(),
            })
            .points
            .push(e.mount_point.clone());
    }
    found
}

/// A filesystem error as one view's watches get it (superblock ERROR), live or from ext4's
/// counts (SNAPSHOT).
#[derive(Debug)]
pub struct FsError {
    /// The followed view ([`Lease::feed`]) it is for.
    pub feed: u64,
    pub dev: Dev,
    pub fsid: Option<u64>,
    pub fs_type: String,
    pub errno: Option<i32>,
    /// Live: how many errors the kernel merged into the event; SNAPSHOT: ext4's count.
    pub count: u32,
    /// What ext4 counts on the filesystem, read when the record was made.
    pub counted: Option<ext4::Counted>,
    pub mounted_on: Vec<Vec<u8>>,
}

impl FsError {
    pub fn into_event(self, flags: u8) -> Event {
        Event::new(
            RecordType::Superblock,
            superblock::ERROR,
            flags,
            Arc::new(self),
        )
    }
}

impl Change for FsError {
    /// Mount points last: when a filesystem has more than fit, only some of them give way.
    fn encode(&self, builder: &mut RecordBuilder, _: RecordType) {
        let mut f = Fields::new(builder);
        f.u32(attr::MAJOR, self.dev.major());
        f.u32(attr::MINOR, self.dev.minor());
        f.bytes(attr::FS_TYPE, self.fs_type.as_bytes());
        if let Some(fsid) = self.fsid {
            f.u64(attr::FSID, fsid);
        }
        if let Some(errno) = self.errno {
            f.u32(attr::ERRNO, errno as u32);
            if let Some(name) = ext4::errno_name(errno) {
                f.bytes(attr::ERRNO_NAME, name.as_bytes());
            }
        }
        f.u32(attr::ERROR_COUNT, self.count);
        if let Some(counted) = &self.counted {
            f.u32(attr::ERRORS_TOTAL, counted.count);
            for (at, time_id, place_id) in [
                (&counted.first, attr::FIRST_ERROR_TIME, attr::FIRST_ERROR_AT),
                (&counted.last, attr::LAST_ERROR_TIME, attr::LAST_ERROR_AT),
            ] {
                if let Some(at) = at {
                    f.u64(time_id, at.time);
                    if let Some(place) = at.place() {
                        f.bytes(place_id, place.as_bytes());
                    }
                }
            }
        }
        for point in &self.mounted_on {
            f.bytes(attr::MOUNTED_ON, point);
        }
        f.finish();
    }
}

/// A filesystem left a followed view (META REMOVAL for the `path` watches on it).
#[derive(Debug)]
pub struct Unmounted {
    pub feed: u64,
    pub dev: Dev,
    pub fs_type: String,
    /// Where it was last mounted in the view.
    pub was_on: Vec<u8>,
}

impl Unmounted {
    /// The REMOVAL record, naming `object`.
    fn encode_naming(&self, builder: &mut RecordBuilder, object: &[u8]) {
        let mut f = Fields::new(builder);
        f.bytes(attr::REASON, b"unmounted");
        f.bytes(attr::OBJECT, object);
        f.u32(attr::MAJOR, self.dev.major());
        f.u32(attr::MINOR, self.dev.minor());
        f.bytes(attr::FS_TYPE, self.fs_type.as_bytes());
        f.finish();
    }
}

impl Change for Unmounted {
    fn encode(&self, builder: &mut RecordBuilder, _: RecordType) {
        self.encode_naming(builder, &self.was_on);
    }
}

/// Held by every watch on a view: keeps it followed. Dropping the last one wakes the
/// source's thread, which forgets the view (no lock is taken here: the hub drops scopes
/// under its own).
pub struct Lease {
    pub feed: u64,
    wake: Arc<OwnedFd>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        wake(&self.wake);
    }
}

fn wake(pipe: &OwnedFd) {
    // A full pipe already wakes the thread.
    let _ = nix::unistd::write(pipe, &[1]);
}

/// Which errors a watch covers: those of its view, or of one filesystem in it.
pub struct FsErrorScope {
    pub lease: Arc<Lease>,
    /// `path` watches: the filesystem, and the path as the caller named it (canonical).
    pub only: Option<(Dev, Vec<u8>)>,
}

impl std::fmt::Debug for FsErrorScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsErrorScope")
            .field("feed", &self.lease.feed)
            .field(
                "only",
                &self
                    .only
                    .as_ref()
                    .map(|(d, p)| (d, String::from_utf8_lossy(p))),
            )
            .finish()
    }
}

impl FsErrorScope {
    fn dev(&self) -> Option<Dev> {
        self.only.as_ref().map(|(dev, _)| *dev)
    }
}

impl Scope for FsErrorScope {
    fn covers(&self, event: &Event) -> bool {
        if let Some(error) = event.subject::<FsError>() {
            return error.feed == self.lease.feed && self.dev().is_none_or(|d| d == error.dev);
        }
        event
            .subject::<Unmounted>()
            .is_some_and(|u| u.feed == self.lease.feed && self.dev() == Some(u.dev))
    }

    /// A REMOVAL names the path the watch was set on.
    fn record_for(&self, event: &Event) -> Option<Vec<u8>> {
        let unmounted = event.subject::<Unmounted>()?;
        let (_, path) = self.only.as_ref()?;
        let mut builder = event.builder();
        unmounted.encode_naming(&mut builder, path);
        Some(builder.finish())
    }
}

/// One followed view.
struct Feed {
    id: u64,
    key: (Uid, MountView),
    lease: Weak<Lease>,
    /// The first watcher's mountinfo: read again on each `POLLPRI`.
    mountinfo: File,
    /// The first watcher's root directory: mount points are opened below it.
    root: OwnedFd,
    filesystems: BTreeMap<Dev, Mounted>,
}

#[derive(Default)]
struct State {
    feeds: Vec<Feed>,
    /// The filesystems the group holds a mark on (as far as the daemon knows), with their
    /// filesystem ids, which events name them by.
    marked: HashMap<Dev, u64>,
    /// Filesystems that could not be marked, and why (said once, and in the status).
    unmarkable: HashMap<Dev, String>,
    buf: Vec<u8>,
    next_feed: u64,
}

struct Shared {
    hub: Arc<Hub>,
    group: OwnedFd,
    state: Mutex<State>,
    /// Write end of the pipe that wakes the thread: a view came or went.
    wake: Arc<OwnedFd>,
}

pub struct FsErrorSource {
    shared: Arc<Shared>,
}

impl FsErrorSource {
    /// Makes the group, checks the kernel knows `FAN_FS_ERROR` (Linux 5.16), and starts the
    /// thread that reads the group and follows the watched views.
    pub fn start(hub: Arc<Hub>) -> io::Result<Arc<FsErrorSource>> {
        let group = sys::fanotify_init(GROUP_FLAGS, libc::O_RDONLY as u32)?;
        probe(&group)?;
        let (wake_read, wake_write) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(io::Error::from)?;
        let reader = File::from(group.try_clone()?);
        let shared = Arc::new(Shared {
            hub,
            group,
            state: Mutex::new(State {
                next_feed: 1,
                ..State::default()
            }),
            wake: Arc::new(wake_write),
        });
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("fserrors".into())
            .spawn(move || follow(reader, wake_read, weak))?;
        Ok(Arc::new(FsErrorSource { shared }))
    }
}

/// A kernel without `FAN_FS_ERROR` refuses the mask (`EINVAL`); the daemon's root
/// filesystem answers that whatever its type. Any other refusal (a root that cannot be
/// marked in FID mode, say) says nothing about the kernel.
fn probe(group: &OwnedFd) -> io::Result<()> {
    let root = File::open("/")?;
    let mark = |flags| {
        sys::fanotify_mark(
            group.as_fd(),
            flags | libc::FAN_MARK_FILESYSTEM,
            libc::FAN_FS_ERROR,
            root.as_fd(),
            None,
        )
    };
    match mark(libc::FAN_MARK_ADD) {
        Ok(()) => {
            let _ = mark(libc::FAN_MARK_REMOVE);
            Ok(())
        }
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Err(e),
        Err(_) => Ok(()),
    }
}

/// Reads the group and the followed mountinfo files until the source is gone.
fn follow(mut group: File, wake_read: OwnedFd, shared: Weak<Shared>) {
    let mut buf = vec![0u8; 16 * 1024];
    // The followed mountinfo files (duplicates of the feeds' own: one open file, one
    // POLLPRI state), refreshed when the thread is woken.
    let mut polled: Vec<(u64, File)> = Vec::new();
    loop {
        let ready: Vec<bool> = {
            let mut fds = vec![
                PollFd::new(group.as_fd(), PollFlags::POLLIN),
                PollFd::new(wake_read.as_fd(), PollFlags::POLLIN),
            ];
            fds.extend(
                polled
                    .iter()
                    .map(|(_, f)| PollFd::new(f.as_fd(), PollFlags::POLLPRI)),
            );
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    return tracing::error!(error = %e, "stopped reading filesystem errors: poll failed");
                }
            }
            fds.iter().map(|f| f.any().unwrap_or(false)).collect()
        };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        for ((feed, _), _) in polled.iter().zip(&ready[2..]).filter(|(_, r)| **r) {
            shared.refresh(*feed);
        }
        if ready[1] {
            let mut sink = [0u8; 64];
            while matches!(nix::unistd::read(&wake_read, &mut sink), Ok(n) if n > 0) {}
            polled = shared.prune();
        }
        if ready[0]
            && let Err(e) = fanotify::drain(&mut group, &mut buf, |events, cut| {
                shared.dispatch(events, cut)
            })
        {
            return tracing::error!(error = %e, "stopped reading filesystem errors");
        }
    }
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("fserrors state poisoned")
    }

    /// Forgets the views no watch holds any more; the mountinfo files left to poll.
    fn prune(&self) -> Vec<(u64, File)> {
        let mut state = self.state();
        state.feeds.retain(|f| f.lease.strong_count() > 0);
        let had_marks = !state.marked.is_empty();
        state.forget_unmounted();
        if state.feeds.is_empty() && had_marks {
            // Every mark, including those on filesystems no view has any more.
            let _ = sys::fanotify_mark(
                self.group.as_fd(),
                libc::FAN_MARK_FLUSH | libc::FAN_MARK_FILESYSTEM,
                0,
                self.group.as_fd(),
                None,
            );
            state.marked.clear();
            tracing::info!("no fserrors watch left: removed every filesystem mark");
        }
        state
            .feeds
            .iter()
            .filter_map(|f| Some((f.id, f.mountinfo.try_clone().ok()?)))
            .collect()
    }

    /// Reads view `feed`'s mount table again: marks what came, ends the path watches on
    /// what went.
    fn refresh(&self, feed: u64) {
        let mut state = self.state();
        self.refresh_locked(&mut state, feed);
    }

    fn refresh_locked(&self, state: &mut State, feed: u64) {
        let State {
            feeds,
            marked,
            unmarkable,
            buf,
            ..
        } = state;
        let Some(feed) = feeds.iter_mut().find(|f| f.id == feed) else {
            return;
        };
        let entries = match mountinfo::reread(&feed.mountinfo, buf) {
            Ok(entries) => entries,
            Err(e) => {
                return tracing::error!(feed = feed.id, error = %e, "re-reading mountinfo failed; retrying on the next change");
            }
        };
        let now = reporting(&entries);
        for (dev, mounted) in &now {
            if !marked.contains_key(dev) {
                match mark(self.group.as_fd(), feed.root.as_fd(), *dev, mounted) {
                    Ok(fsid) => {
                        unmarkable.remove(dev);
                        marked.insert(*dev, fsid);
                        tracing::info!(major = dev.major(), minor = dev.minor(), fs_type = %mounted.fs_type, "watching a filesystem's errors");
                    }
                    Err(why) => {
                        if unmarkable.insert(*dev, why.clone()).is_none() {
                            tracing::warn!(major = dev.major(), minor = dev.minor(), %why, "cannot watch a filesystem's errors");
                        }
                    }
                }
            }
        }
        let old = std::mem::replace(&mut feed.filesystems, now);
        for (dev, mounted) in old {
            if !feed.filesystems.contains_key(&dev) {
                let gone = Unmounted {
                    feed: feed.id,
                    dev,
                    fs_type: mounted.fs_type,
                    was_on: mounted.points.into_iter().next().unwrap_or_default(),
                };
                self.hub.publish(&Event::new(
                    RecordType::Meta,
                    meta::REMOVAL,
                    0,
                    Arc::new(gone),
                ));
            }
        }
        state.forget_unmounted();
    }

    /// Publishes what a batch of the group's events says.
    fn dispatch(&self, events: &[fanotify::Event<'_>], cut: bool) {
        let mut overflowed = cut;
        for event in events {
            if event.mask & FAN_Q_OVERFLOW != 0 {
                overflowed = true;
                continue;
            }
            if event.mask & libc::FAN_FS_ERROR == 0 {
                continue;
            }
            let Some(fsid) = event
                .info(info::FID)
                .and_then(|i| i.fid())
                .map(|f| f.fsid64())
            else {
                continue;
            };
            let (errno, count) = event.error().unwrap_or((0, 1));
            let state = self.state();
            let devs: Vec<Dev> = state
                .marked
                .iter()
                .filter(|(_, f)| **f == fsid)
                .map(|(d, _)| *d)
                .collect();
            if devs.is_empty() {
                tracing::debug!(fsid, "an error of a filesystem no watched view has");
            }
            for dev in devs {
                let counted = ext4::counted(dev.major(), dev.minor());
                for feed in &state.feeds {
                    let Some(mounted) = feed.filesystems.get(&dev) else {
                        continue;
                    };
                    let error = FsError {
                        feed: feed.id,
                        dev,
                        fsid: Some(fsid),
                        fs_type: mounted.fs_type.clone(),
                        errno: (errno != 0).then_some(errno),
                        count,
                        counted: counted.clone(),
                        mounted_on: mounted.points.clone(),
                    };
                    self.hub.publish(&error.into_event(0));
                }
            }
        }
        if overflowed {
            tracing::warn!(
                "the kernel's filesystem error queue overflowed: every fserrors watch gets a LOSS"
            );
            self.hub.publish(&Notice::loss(
                KIND,
                RecordType::Superblock,
                "the kernel's queue of filesystem errors overflowed; those errors are not known",
            ));
        }
    }
}

impl State {
    /// Filesystems no view has mounted any more are forgotten (see the module's doc).
    fn forget_unmounted(&mut self) {
        let feeds = &self.feeds;
        self.marked
            .retain(|dev, _| feeds.iter().any(|f| f.filesystems.contains_key(dev)));
        self.unmarkable
            .retain(|dev, _| feeds.iter().any(|f| f.filesystems.contains_key(dev)));
    }
}

/// Puts a filesystem mark on `dev` through one of its mount points, opened below `root`;
/// returns its filesystem id.
fn mark(
    group: std::os::fd::BorrowedFd<'_>,
    root: std::os::fd::BorrowedFd<'_>,
    dev: Dev,
    mounted: &Mounted,
) -> std::result::Result<u64, String> {
    let mut why = String::from("no mount point");
    // A mount point may be covered by a later mount: the next may not be.
    for point in &mounted.points {
        let shown = String::from_utf8_lossy(point);
        let Some(rel) = relative_c_path(point) else {
            continue;
        };
        let resolve = sys::ResolveFlags::IN_ROOT
            | sys::ResolveFlags::NO_MAGICLINKS
            | sys::ResolveFlags::NO_SYMLINKS;
        let fd = match sys::openat2_path(root, &rel, resolve) {
            Ok(fd) => fd,
            Err(e) => {
                why = format!("cannot open {shown}: {e}");
                continue;
            }
        };
        match rustix::fs::fstat(&fd) {
            Ok(st) if st.st_dev == dev.0 => {}
            _ => {
                why = format!("{shown} is covered by another mount");
                continue;
            }
        }
        let fsid = match rustix::fs::fstatvfs(&fd) {
            Ok(st) => st.f_fsid,
            Err(e) => {
                why = format!("cannot statfs {shown}: {e}");
                continue;
            }
        };
        // An O_PATH descriptor names the object only through a path relative to it.
        return match sys::fanotify_mark(
            group,
            libc::FAN_MARK_ADD | libc::FAN_MARK_FILESYSTEM,
            libc::FAN_FS_ERROR,
            fd.as_fd(),
            Some(c"."),
        ) {
            Ok(()) => Ok(fsid),
            Err(e) => Err(format!("fanotify_mark on {shown}: {e}")),
        };
    }
    Err(why)
}

impl Source for FsErrorSource {
    fn kind(&self) -> Kind {
        KIND
    }

    fn describe(&self) -> String {
        let state = self.shared.state();
        let mut text = format!(
            "one fanotify group in FID mode, a filesystem mark (FAN_FS_ERROR) on each ext4, ext3 or ext2 filesystem mounted in a watched namespace ({REPORTING_TEXT}); initial state from /sys/fs/ext4; {} view(s) followed, {} filesystem(s) marked",
            state.feeds.len(),
            state.marked.len()
        );
        if !state.unmarkable.is_empty() {
            text.push_str(&format!(", {} could not be", state.unmarkable.len()));
        }
        text
    }

    fn scope(&self, options: &mut Options, caller: &Caller) -> Result<Arc<dyn Scope>> {
        let path = options.take_string("path")?;
        let process = CallerProcess::new(caller)?;
        let view = process.mount_view()?;
        // The open file pins the namespace it was opened in; the view read on both sides of
        // the open proves it is the one `view` names.
        let file = process.mountinfo()?;
        if process.mount_view()? != view {
            return Err(Error::Failed(
                "the caller changed mount namespace while its watch was being set".into(),
            ));
        }
        // Resolved as the caller, then let go: a watch keeps no filesystem busy.
        let target = match &path {
            None => None,
            Some(path) => {
                let opened = access::open_path(caller, path)?;
                let st = rustix::fs::fstat(&opened).map_err(|e| {
                    Error::Failed(format!("cannot look at '{}': {e}", Truncated(path)))
                })?;
                Some((Dev(st.st_dev), access::caller_relative(caller, &opened)?))
            }
        };
        let mut buf = Vec::new();
        let entries = mountinfo::reread(&file, &mut buf)
            .map_err(|e| Error::Failed(format!("cannot read the caller's mountinfo: {e}")))?;
        if let (Some(path), Some((dev, _))) = (&path, &target)
            && !reporting(&entries).contains_key(dev)
        {
            let fs_type = entries
                .iter()
                .find(|e| Dev::of(e.major, e.minor) == *dev)
                .map_or("an unknown type", |e| e.fs_type.as_str());
            return Err(Error::NotSupported(format!(
                "the filesystem of '{}' ({fs_type}) does not report errors: {REPORTING_TEXT}",
                Truncated(path)
            )));
        }
        let key = (caller.uid, view);
        let mut state = self.shared.state();
        state.feeds.retain(|f| f.lease.strong_count() > 0);
        let existing = state
            .feeds
            .iter()
            .filter(|f| f.key == key)
            .find_map(|f| f.lease.upgrade());
        let lease = match existing {
            Some(lease) => lease,
            None => {
                let root = process.root()?;
                let id = state.next_feed;
                state.next_feed += 1;
                let lease = Arc::new(Lease {
                    feed: id,
                    wake: self.shared.wake.clone(),
                });
                state.feeds.push(Feed {
                    id,
                    key,
                    lease: Arc::downgrade(&lease),
                    mountinfo: file,
                    root,
                    filesystems: BTreeMap::new(),
                });
                tracing::info!(uid = %caller.uid, ns = view.ns, feed = id, "following a mount namespace's filesystems for their errors");
                // The thread polls the new view's mountinfo from now on.
                wake(&self.shared.wake);
                lease
            }
        };
        self.shared.refresh_locked(&mut state, lease.feed);
        if let Some((dev, _)) = &target
            && let Some(why) = state.unmarkable.get(dev)
        {
            return Err(Error::Failed(format!(
                "cannot watch the errors of the filesystem of '{}': {why}",
                Truncated(path.as_deref().unwrap_or_default())
            )));
        }
        drop(state);
        Ok(Arc::new(FsErrorScope {
            lease,
            only: target,
        }))
    }

    fn option_names(&self) -> &'static [&'static str] {
        &["path"]
    }

    /// What ext4 counts on each filesystem the watch covers that has had errors: one
    /// SNAPSHOT ERROR record each, its errno the last error's.
    fn with_snapshot(&self, scope: &dyn Scope, then: &mut dyn FnMut(&[Event])) {
        let Some(scope) = scope.downcast::<FsErrorScope>() else {
            return then(&[]);
        };
        let state = self.shared.state();
        let mut events = Vec::new();
        if let Some(feed) = state.feeds.iter().find(|f| f.id == scope.lease.feed) {
            for (dev, mounted) in &feed.filesystems {
                if scope.dev().is_some_and(|d| d != *dev) {
                    continue;
                }
                if let Some(error) = snapshot_of(feed.id, *dev, mounted, state.marked.get(dev)) {
                    events.push(error.into_event(FLAG_SNAPSHOT));
                }
            }
        }
        then(&events);
    }
}

/// The SNAPSHOT record of a filesystem that has had errors, from ext4's counts.
fn snapshot_of(feed: u64, dev: Dev, mounted: &Mounted, fsid: Option<&u64>) -> Option<FsError> {
    let counted = ext4::counted(dev.major(), dev.minor()).filter(|c| c.count > 0)?;
    Some(FsError {
        feed,
        dev,
        fsid: fsid.copied(),
        fs_type: mounted.fs_type.clone(),
        errno: counted.last.as_ref().and_then(|l| l.errno),
        count: counted.count,
        counted: Some(counted),
        mounted_on: mounted.points.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::mounts::parse_mountinfo;
    use watchd_proto::Record;

    const TABLE: &[u8] = b"\
22 1 252:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 22 0:30 / /tmp rw - tmpfs tmpfs rw
66 40 7:3 / /tmp/a\\040b rw,relatime - ext4 /dev/loop3 rw
67 22 7:3 /sub /srv rw - ext4 /dev/loop3 rw
68 22 7:4 / /old rw - ext3 /dev/loop4 rw
69 22 0:50 / /x rw - xfs /dev/sdz rw
";

    #[test]
    fn reporting_filesystems_gather_their_mount_points_in_table_order() {
        let (entries, bad) = parse_mountinfo(TABLE);
        assert_eq!(bad, 0);
        let found = reporting(&entries);
        let keys: Vec<_> = found.keys().map(|d| (d.major(), d.minor())).collect();
        assert_eq!(keys, [(7, 3), (7, 4), (252, 0)]);
        assert_eq!(
            found[&Dev::of(7, 3)],
            Mounted {
                fs_type: "ext4".into(),
                points: vec![b"/tmp/a b".to_vec(), b"/srv".to_vec()],
            }
        );
        assert_eq!(found[&Dev::of(7, 4)].fs_type, "ext3");
    }

    fn sample(count: u32, counted: Option<ext4::Counted>) -> FsError {
        FsError {
            feed: 1,
            dev: Dev::of(7, 3),
            fsid: Some(0x1234_5678_9abc_def0),
            fs_type: "ext4".into(),
            errno: Some(libc::EUCLEAN),
            count,
            counted,
            mounted_on: vec![b"/mnt/a".to_vec(), b"/srv".to_vec()],
        }
    }

    #[test]
    fn an_error_record_carries_errno_count_device_and_every_mount_point() {
        let at = ext4::ErrorAt {
            time: 1_796_512_721,
            errno: Some(libc::EUCLEAN),
            function: "trigger_test_error".into(),
            line: 129,
        };
        let event = sample(
            3,
            Some(ext4::Counted {
                count: 5,
                first: Some(at.clone()),
                last: Some(at),
            }),
        )
        .into_event(0);
        let record = Record::parse(event.record()).unwrap();
        assert!(record.header.is(RecordType::Superblock, superblock::ERROR));
        assert_eq!(record.get_u32(attr::ERRNO), Some(117));
        assert_eq!(record.get_str(attr::ERRNO_NAME).as_deref(), Some("EUCLEAN"));
        assert_eq!(record.get_u32(attr::ERROR_COUNT), Some(3));
        assert_eq!(record.get_u32(attr::ERRORS_TOTAL), Some(5));
        assert_eq!(
            (record.get_u32(attr::MAJOR), record.get_u32(attr::MINOR)),
            (Some(7), Some(3))
        );
        assert_eq!(record.get_str(attr::FS_TYPE).as_deref(), Some("ext4"));
        assert_eq!(record.get_u64(attr::FSID), Some(0x1234_5678_9abc_def0));
        assert_eq!(record.get_u64(attr::FIRST_ERROR_TIME), Some(1_796_512_721));
        assert_eq!(
            record.get_str(attr::LAST_ERROR_AT).as_deref(),
            Some("trigger_test_error:129")
        );
        let points: Vec<_> = record
            .attrs()
            .map(Result::unwrap)
            .filter(|a| a.id == attr::MOUNTED_ON)
            .map(|a| a.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(points, ["/mnt/a", "/srv"]);
    }

    #[test]
    fn without_ext4_counts_or_errno_only_what_is_known_is_sent() {
        let mut error = sample(1, None);
        error.errno = None;
        error.fsid = None;
        let event = error.into_event(FLAG_SNAPSHOT);
        let record = Record::parse(event.record()).unwrap();
        assert_eq!(record.header.flags & FLAG_SNAPSHOT, FLAG_SNAPSHOT);
        for absent in [
            attr::ERRNO,
            attr::ERRNO_NAME,
            attr::ERRORS_TOTAL,
            attr::FIRST_ERROR_TIME,
            attr::LAST_ERROR_AT,
            attr::FSID,
        ] {
            assert!(record.get(absent).is_none(), "{absent:#06x}");
        }
        assert_eq!(record.get_u32(attr::ERROR_COUNT), Some(1));
    }

    #[test]
    fn scopes_cover_their_view_and_a_path_watch_its_filesystem() {
        let (_read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).unwrap();
        let wake = Arc::new(write);
        let lease = |feed| {
            Arc::new(Lease {
                feed,
                wake: wake.clone(),
            })
        };
        let whole = FsErrorScope {
            lease: lease(1),
            only: None,
        };
        let one = FsErrorScope {
            lease: lease(1),
            only: Some((Dev::of(7, 3), b"/mnt/a/dir".to_vec())),
        };
        let other_view = FsErrorScope {
            lease: lease(2),
            only: None,
        };
        let here = sample(1, None).into_event(0);
        let mut elsewhere = sample(1, None);
        elsewhere.dev = Dev::of(7, 9);
        let elsewhere = elsewhere.into_event(0);
        assert!(whole.covers(&here) && whole.covers(&elsewhere));
        assert!(one.covers(&here) && !one.covers(&elsewhere));
        assert!(!other_view.covers(&here), "another view's error");

        let gone = Event::new(
            RecordType::Meta,
            meta::REMOVAL,
            0,
            Arc::new(Unmounted {
                feed: 1,
                dev: Dev::of(7, 3),
                fs_type: "ext4".into(),
                was_on: b"/mnt/a".to_vec(),
            }),
        );
        assert!(one.covers(&gone) && !whole.covers(&gone) && !other_view.covers(&gone));
        let own = one.record_for(&gone).unwrap();
        let record = Record::parse(&own).unwrap();
        assert_eq!(record.get_str(attr::OBJECT).as_deref(), Some("/mnt/a/dir"));
        assert_eq!(record.get_str(attr::REASON).as_deref(), Some("unmounted"));
        assert!(whole.record_for(&here).is_none());
    }
}
