//! File events under a path the caller names: creates, deletes, writes, metadata changes,
//! closes after writing and moves, from one fanotify group in FID mode
//! (`FAN_REPORT_DFID_NAME_TARGET`: objects are named by file handle, never by an open file,
//! and events carry no descriptor and, as the daemon reads them, no pid).
//!
//! **Marks.** One group serves every watch. A watch of a directory's entries puts an inode
//! mark on the directory (`FAN_EVENT_ON_CHILD` for its children's writes and metadata); a
//! watch of a file, an inode mark on the file; a `subtree` watch a filesystem mark
//! (`FAN_MARK_FILESYSTEM`: mount marks refuse directory-entry events) on the filesystem the
//! path is on, and the events below the path are picked out by directory handle: the
//! directory is opened by handle (`CAP_DAC_READ_SEARCH`) through the watch's own mount and
//! its path compared with the watch's. Marks are counted: one per filesystem or inode,
//! however many watches share it, removed with the last.
//!
//! **Who sees an event.** This thread, which reads the kernel's queue, only finds which
//! watches an event falls under and where (directory relative to the watched path, name);
//! each caller's checker ([`check`]) then decides, as the caller, whether the caller could
//! see it, and publishes what passes. See [`check`] for why it is done there.
#![forbid(unsafe_code)]

pub mod check;

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use watchd_proto::{RecordBuilder, RecordType, attr, file};

use crate::access::{self, CallerProcess};
use crate::error::{Error, Result};
use crate::event::{Change, Event, Fields};
use crate::fanotify::{self, Fid, info};
use crate::hub::Hub;
use crate::identity::Caller;
use crate::options::Options;
use crate::source::Source;
use crate::sys;
use crate::watch::{Kind, Scope};

use check::{Checker, Checkers, Job, Place, Sighting};

/// The kind clients name in `AddWatch`.
pub const KIND: Kind = Kind("files");

/// What the group reports.
const GROUP_FLAGS: u32 =
    libc::FAN_CLASS_NOTIF | libc::FAN_NONBLOCK | libc::FAN_REPORT_DFID_NAME_TARGET;

/// Changes of names and contents: what every watch wants, wherever its mark is.
/// `FAN_RENAME` rather than `FAN_MOVED_FROM`/`FAN_MOVED_TO`: one event names both ends, so a
/// move within a watch is one record with both names.
const CHANGES: u64 = libc::FAN_CREATE
    | libc::FAN_DELETE
    | libc::FAN_RENAME
    | libc::FAN_MODIFY
    | libc::FAN_ATTRIB
    | libc::FAN_CLOSE_WRITE
    | libc::FAN_ONDIR;
/// The watched object itself moved or went away: its watch is looked at again.
const SELF: u64 = libc::FAN_MOVE_SELF | libc::FAN_DELETE_SELF;
/// A filesystem mark (subtree watches): self events would come for every inode of the
/// filesystem, so the watched directory gets an inode mark of [`SELF`] too.
const FS_MASK: u64 = CHANGES;
/// An inode mark on a watched directory: its entries, and its children's own changes.
const DIR_MASK: u64 = CHANGES | SELF | libc::FAN_EVENT_ON_CHILD;
/// An inode mark on a watched file.
const FILE_MASK: u64 = libc::FAN_MODIFY | libc::FAN_ATTRIB | libc::FAN_CLOSE_WRITE | SELF;

/// The subtypes a merged event's `mask` stands for, in [`file::ORDER`] (arrivals, changes,
/// departures). `FAN_RENAME` is left to the caller: which subtype it becomes depends on
/// which of its ends a watch covers.
pub fn subtypes(mask: u64) -> Vec<u8> {
    let bit = |subtype| match subtype {
        file::MOVED_TO => libc::FAN_MOVED_TO,
        file::CREATE => libc::FAN_CREATE,
        file::MODIFY => libc::FAN_MODIFY,
        file::ATTRIB => libc::FAN_ATTRIB,
        file::CLOSE_WRITE => libc::FAN_CLOSE_WRITE,
        file::MOVED_FROM => libc::FAN_MOVED_FROM,
        file::DELETE => libc::FAN_DELETE,
        _ => 0,
    };
    file::ORDER
        .into_iter()
        .filter(|&s| bit(s) != 0 && mask & bit(s) != 0)
        .collect()
}

/// A file handle, and the filesystem it is valid on.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Handle {
    pub fsid: u64,
    pub handle_type: i32,
    pub bytes: Vec<u8>,
}

impl Handle {
    fn of(fid: &Fid<'_>) -> Handle {
        Handle {
            fsid: fid.fsid64(),
            handle_type: fid.handle_type,
            bytes: fid.handle.to_vec(),
        }
    }

    fn is(&self, fid: &Fid<'_>) -> bool {
        self.fsid == fid.fsid64() && self.handle_type == fid.handle_type && self.bytes == fid.handle
    }
}

/// Device and inode: what a path walk is compared with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    pub fn of(fd: BorrowedFd<'_>) -> io::Result<FileId> {
        let st = rustix::fs::fstat(fd)?;
        Ok(FileId {
            dev: st.st_dev,
            ino: st.st_ino,
        })
    }
}

/// One change as a record: for the watches of one path (names are relative to it).
#[derive(Debug)]
pub struct FileChange {
    /// The watches ([`WatchState::id`]) it is for, in ascending order.
    pub watches: Vec<u64>,
    pub name: Vec<u8>,
    pub old_name: Option<Vec<u8>>,
    pub object: Arc<Object>,
    /// `st_dev` of the watched path's filesystem.
    pub dev: u64,
}

/// What the kernel said of the object an event is about.
#[derive(Debug, Default)]
pub struct Object {
    pub handle: Option<Handle>,
    pub inode: Option<u64>,
    pub is_dir: bool,
}

impl Change for FileChange {
    fn encode(&self, builder: &mut RecordBuilder, _: RecordType) {
        let mut f = Fields::new(builder);
        f.bytes(attr::NAME, &self.name);
        if let Some(old) = &self.old_name {
            f.bytes(attr::OLD_NAME, old);
        }
        let dev = rustix::fs::Dev::from(self.dev);
        f.u32(attr::MAJOR, rustix::fs::major(dev));
        f.u32(attr::MINOR, rustix::fs::minor(dev));
        if let Some(handle) = &self.object.handle {
            f.u64(attr::FSID, handle.fsid);
            f.u32(attr::HANDLE_TYPE, handle.handle_type as u32);
            f.bytes(attr::HANDLE, hex(&handle.bytes).as_bytes());
        }
        if let Some(inode) = self.object.inode {
            f.u64(attr::INODE, inode);
        }
        if self.object.is_dir {
            f.u32(attr::IS_DIR, 1);
        }
        f.finish();
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The end of a watch (META REMOVAL): the watched path no longer names the watched object,
/// or the caller may no longer look it up.
#[derive(Debug)]
pub struct Removed {
    pub watch: u64,
    pub object: Vec<u8>,
    pub reason: &'static str,
}

impl Change for Removed {
    fn encode(&self, builder: &mut RecordBuilder, _: RecordType) {
        let mut f = Fields::new(builder);
        f.bytes(attr::REASON, self.reason.as_bytes());
        f.bytes(attr::OBJECT, &self.object);
        f.finish();
    }
}

/// What kind of object a watch is on, and so which mark it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// A file: its own changes.
    File,
    /// A directory's entries and their changes.
    Dir,
    /// Everything below a directory.
    Subtree,
}

/// A directory below a subtree watch: its path relative to the watched one, and its id.
type DirPlace = (Vec<u8>, FileId);

/// One files watch as the source and its caller's checker know it.
pub struct WatchState {
    pub id: u64,
    pub reach: Reach,
    /// The watched path as the caller names it (canonical, in the caller's root).
    pub caller_path: Vec<u8>,
    /// The watched object, opened by the daemon (read-only, through the mount the caller
    /// reached it by): for marks, for opening directory handles below it, and to see it
    /// deleted. Keeps that mount busy while the watch lives.
    pub fd: OwnedFd,
    /// The daemon's name for `fd` (`/proc/self/fd`), which directory handles are compared
    /// with.
    daemon_path: Vec<u8>,
    pub handle: Handle,
    pub id_at_start: FileId,
    pub checker: Arc<Checker>,
    /// REMOVAL was sent: nothing more goes out for it.
    pub ended: AtomicBool,
    /// Subtree watches: directory handle → (path relative to the watched one, its id), or
    /// `None` when it is not below it. Cleared whenever a directory moves or goes.
    dirs: Mutex<HashMap<Handle, Option<DirPlace>>>,
    marks: Arc<Marks>,
}

impl Drop for WatchState {
    fn drop(&mut self) {
        self.marks.release(self);
    }
}

impl WatchState {
    /// Where the directory of `fid` is relative to the watched path, if the watch covers its
    /// entries.
    fn place_of_dir(&self, dir: &Fid<'_>) -> Option<DirPlace> {
        if self.handle.is(dir) {
            return Some((Vec::new(), self.id_at_start));
        }
        if self.reach != Reach::Subtree || self.handle.fsid != dir.fsid64() {
            return None;
        }
        let key = Handle::of(dir);
        let mut dirs = self.dirs.lock().expect("dir cache poisoned");
        if let Some(known) = dirs.get(&key) {
            return known.clone();
        }
        let found = self.resolve_dir(&key);
        if dirs.len() > 4096 {
            dirs.clear();
        }
        dirs.insert(key, found.clone());
        found
    }

    fn resolve_dir(&self, dir: &Handle) -> Option<DirPlace> {
        let fd = sys::open_by_handle_at(
            self.fd.as_fd(),
            dir.handle_type,
            &dir.bytes,
            libc::O_PATH | libc::O_DIRECTORY,
        )
        .ok()?;
        let path = fd_path(fd.as_fd()).ok()?;
        let rest = path.strip_prefix(self.daemon_path.as_slice())?;
        let rel = match rest {
            [] => Vec::new(),
            [b'/', rel @ ..] => rel.to_vec(),
            _ if self.daemon_path == b"/" => rest.to_vec(),
            _ => return None,
        };
        Some((rel, FileId::of(fd.as_fd()).ok()?))
    }

    fn forget_dirs(&self) {
        self.dirs.lock().expect("dir cache poisoned").clear();
    }

    /// The place of a name event in directory `dir` (name "." is the directory itself).
    fn place(&self, dir: &Fid<'_>) -> Option<Place> {
        let (rel_dir, dir_id) = self.place_of_dir(dir)?;
        let entry = dir.name.filter(|n| *n != b".").map(<[u8]>::to_vec);
        Some(Place {
            rel_dir,
            dir_id,
            entry,
        })
    }
}

/// The daemon's path of an open descriptor.
fn fd_path(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
    Ok(link.as_os_str().as_bytes().to_vec())
}

/// The group's marks, counted so that watches share them.
pub struct Marks {
    group: OwnedFd,
    table: Mutex<MarkTable>,
}

#[derive(Default)]
struct MarkTable {
    /// Filesystem marks by filesystem id: how many subtree watches use each.
    filesystems: HashMap<u64, usize>,
    /// Inode marks: the masks of the watches on each inode.
    inodes: HashMap<FileId, Vec<u64>>,
}

fn union(masks: &[u64]) -> u64 {
    masks.iter().fold(0, |a, m| a | m)
}

impl Marks {
    fn mark(&self, flags: u32, mask: u64, fd: BorrowedFd<'_>) -> io::Result<()> {
        sys::fanotify_mark(self.group.as_fd(), flags, mask, fd, None)
    }

    /// Adds the marks a new watch needs.
    fn take(&self, reach: Reach, fd: BorrowedFd<'_>, id: FileId, fsid: u64) -> io::Result<()> {
        let mut table = self.table.lock().expect("marks poisoned");
        if reach == Reach::Subtree && !table.filesystems.contains_key(&fsid) {
            self.mark(libc::FAN_MARK_ADD | libc::FAN_MARK_FILESYSTEM, FS_MASK, fd)?;
        }
        let mask = match reach {
            Reach::File => FILE_MASK,
            Reach::Dir => DIR_MASK,
            Reach::Subtree => SELF | libc::FAN_ONDIR,
        };
        if let Err(e) = self.mark(libc::FAN_MARK_ADD, mask, fd) {
            if reach == Reach::Subtree && !table.filesystems.contains_key(&fsid) {
                let _ = self.mark(
                    libc::FAN_MARK_REMOVE | libc::FAN_MARK_FILESYSTEM,
                    FS_MASK,
                    fd,
                );
            }
            return Err(e);
        }
        if reach == Reach::Subtree {
            *table.filesystems.entry(fsid).or_default() += 1;
        }
        table.inodes.entry(id).or_default().push(mask);
        Ok(())
    }

    /// Removes what only `watch` needed.
    fn release(&self, watch: &WatchState) {
        let mut table = self.table.lock().expect("marks poisoned");
        let fd = watch.fd.as_fd();
        let mask = match watch.reach {
            Reach::File => FILE_MASK,
            Reach::Dir => DIR_MASK,
            Reach::Subtree => SELF | libc::FAN_ONDIR,
        };
        if let Some(masks) = table.inodes.get_mut(&watch.id_at_start) {
            let before = union(masks);
            if let Some(i) = masks.iter().position(|m| *m == mask) {
                masks.remove(i);
            }
            let gone = before & !union(masks);
            if masks.is_empty() {
                table.inodes.remove(&watch.id_at_start);
            }
            // An inode already gone took its mark with it: nothing to undo then.
            if gone != 0 {
                let _ = self.mark(libc::FAN_MARK_REMOVE, gone, fd);
            }
        }
        if watch.reach == Reach::Subtree
            && let Some(count) = table.filesystems.get_mut(&watch.handle.fsid)
        {
            *count -= 1;
            if *count == 0 {
                table.filesystems.remove(&watch.handle.fsid);
                let _ = self.mark(
                    libc::FAN_MARK_REMOVE | libc::FAN_MARK_FILESYSTEM,
                    FS_MASK,
                    fd,
                );
            }
        }
    }
}

/// Which events a files watch covers: those its caller's checker published for it.
pub struct FileScope {
    pub state: Arc<WatchState>,
}

impl std::fmt::Debug for FileScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileScope")
            .field("id", &self.state.id)
            .field("path", &String::from_utf8_lossy(&self.state.caller_path))
            .field("reach", &self.state.reach)
            .finish()
    }
}

impl Scope for FileScope {
    fn covers(&self, event: &Event) -> bool {
        if let Some(change) = event.subject::<FileChange>() {
            return change.watches.binary_search(&self.state.id).is_ok();
        }
        event
            .subject::<Removed>()
            .is_some_and(|r| r.watch == self.state.id)
    }

    /// A checker's notices (its queue overflowed, or the kernel's did) go to its watches.
    fn in_audience(&self, checker: u64) -> bool {
        checker == self.state.checker.id
    }
}

/// What the reading thread shares with the source.
struct Shared {
    marks: Arc<Marks>,
    watches: Mutex<Vec<Weak<WatchState>>>,
    checkers: Checkers,
    next_watch: AtomicU64,
}

pub struct FileSource {
    shared: Arc<Shared>,
}

impl FileSource {
    /// Makes the group and starts the thread that reads it.
    pub fn start(hub: Arc<Hub>) -> io::Result<Arc<FileSource>> {
        let group = sys::fanotify_init(GROUP_FLAGS, libc::O_RDONLY as u32)?;
        let reader = File::from(group.try_clone()?);
        let shared = Arc::new(Shared {
            marks: Arc::new(Marks {
                group,
                table: Mutex::new(MarkTable::default()),
            }),
            watches: Mutex::new(Vec::new()),
            checkers: Checkers::new(hub),
            next_watch: AtomicU64::new(1),
        });
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("files".into())
            .spawn(move || follow(reader, weak))?;
        Ok(Arc::new(FileSource { shared }))
    }
}

/// Reads the group until the source is gone.
fn follow(mut group: File, shared: Weak<Shared>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut fds = [PollFd::new(group.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                return tracing::error!(error = %e, "stopped reading file events: poll failed");
            }
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if let Err(e) = fanotify::drain(&mut group, &mut buf, |events, cut| {
            shared.dispatch(events, cut)
        }) {
            return tracing::error!(error = %e, "stopped reading file events");
        }
    }
}

impl Shared {
    fn live_watches(&self) -> Vec<Arc<WatchState>> {
        let mut watches = self.watches.lock().expect("file watches poisoned");
        watches.retain(|w| w.strong_count() > 0);
        watches.iter().filter_map(Weak::upgrade).collect()
    }

    /// Finds, for each event of a batch, the watches it falls under, and hands each
    /// caller's checker its part, in order. `cut`: events after these were lost.
    fn dispatch(&self, events: &[fanotify::Event<'_>], cut: bool) {
        let watches = self.live_watches();
        let mut jobs: HashMap<u64, (Arc<Checker>, Vec<Sighting>)> = HashMap::new();
        let mut overflowed = cut;
        for event in events {
            if event.mask & libc::FAN_Q_OVERFLOW != 0 {
                overflowed = true;
                continue;
            }
            if event.mask & libc::FAN_ONDIR != 0
                && event.mask & (libc::FAN_RENAME | libc::FAN_DELETE | libc::FAN_MOVE_SELF) != 0
            {
                // A directory moved or went: cached places below it may be stale.
                for w in watches.iter().filter(|w| w.reach == Reach::Subtree) {
                    w.forget_dirs();
                }
            }
            // Looked at only when some watch covers the event: a filesystem mark brings
            // every event of the filesystem, most of them outside any watch.
            let mut object = None;
            let mut object_for = || {
                object
                    .get_or_insert_with(|| Arc::new(object_of(event, &watches)))
                    .clone()
            };
            for watch in &watches {
                if watch.ended.load(Ordering::Relaxed) {
                    continue;
                }
                if let Some(sighting) = sight(event, watch, &mut object_for) {
                    jobs.entry(watch.checker.id)
                        .or_insert_with(|| (watch.checker.clone(), Vec::new()))
                        .1
                        .push(sighting);
                }
            }
        }
        if overflowed {
            tracing::warn!(
                "the kernel's file event queue overflowed: every files watch gets a LOSS"
            );
            for checker in self.checkers.all() {
                let batch = jobs.remove(&checker.id).map(|(_, b)| b).unwrap_or_default();
                if !batch.is_empty() {
                    checker.send(Job::Batch(batch));
                }
                checker.send(Job::Loss(
                    "the kernel's file event queue overflowed; those changes are not known",
                ));
            }
        }
        for (_, (checker, batch)) in jobs {
            checker.send(Job::Batch(batch));
        }
    }
}

/// The object of an event, looked at once for every watch: its handle, and (while it
/// exists) its inode.
fn object_of(event: &fanotify::Event<'_>, watches: &[Arc<WatchState>]) -> Object {
    let fid = event.info(info::FID).and_then(|i| i.fid());
    let is_dir = event.mask & libc::FAN_ONDIR != 0;
    let Some(fid) = fid else {
        return Object {
            is_dir,
            ..Object::default()
        };
    };
    let handle = Handle::of(&fid);
    let inode = watches
        .iter()
        .find(|w| w.handle.fsid == handle.fsid)
        .and_then(|w| {
            sys::open_by_handle_at(
                w.fd.as_fd(),
                handle.handle_type,
                &handle.bytes,
                libc::O_PATH,
            )
            .ok()
        })
        .and_then(|fd| FileId::of(fd.as_fd()).ok())
        .map(|id| id.ino);
    Object {
        handle: Some(handle),
        inode,
        is_dir,
    }
}

/// What `watch` sees of `event`, before the caller's check.
fn sight(
    event: &fanotify::Event<'_>,
    watch: &Arc<WatchState>,
    object: &mut dyn FnMut() -> Arc<Object>,
) -> Option<Sighting> {
    let fid = event.info(info::FID).and_then(|i| i.fid());
    let is_self = fid.as_ref().is_some_and(|f| watch.handle.is(f));
    let revisit = is_self && event.mask & SELF != 0;
    let mut base = |from, to, subtypes: Vec<u8>| Sighting {
        watch: watch.clone(),
        from,
        to,
        subtypes,
        rename: false,
        object: object(),
        revisit,
    };
    if watch.reach == Reach::File {
        if !is_self {
            return None;
        }
        let here = Place {
            rel_dir: Vec::new(),
            dir_id: watch.id_at_start,
            entry: None,
        };
        return Some(base(None, Some(here), subtypes(event.mask)));
    }
    if event.mask & libc::FAN_RENAME != 0 {
        let from = event
            .info(info::OLD_DFID_NAME)
            .and_then(|i| i.fid())
            .and_then(|d| watch.place(&d));
        let to = event
            .info(info::NEW_DFID_NAME)
            .and_then(|i| i.fid())
            .and_then(|d| watch.place(&d));
        if from.is_none() && to.is_none() {
            return revisit.then(|| base(None, None, Vec::new()));
        }
        let mut s = base(from, to, subtypes(event.mask & !libc::FAN_RENAME));
        s.rename = true;
        return Some(s);
    }
    let place = event
        .info(info::DFID_NAME)
        .and_then(|i| i.fid())
        .and_then(|d| watch.place(&d));
    match place {
        Some(place) => Some(base(None, Some(place), subtypes(event.mask))),
        None if revisit => Some(base(None, None, Vec::new())),
        None => None,
    }
}

impl Source for FileSource {
    fn kind(&self) -> Kind {
        KIND
    }

    fn describe(&self) -> String {
        format!(
            "one fanotify group in FID mode (inode marks, filesystem marks for subtrees), every event checked as its subscriber; {} caller checker(s)",
            self.shared.checkers.all().len()
        )
    }

    fn scope(&self, options: &mut Options, caller: &Caller) -> Result<Arc<dyn Scope>> {
        let path = options.take_string("path")?;
        let passed = options.take_fd("fd")?;
        let subtree = options.take_bool("subtree")?.unwrap_or(false);
        let (opened, path) = match (path, passed) {
            (Some(path), None) => (access::open_path(caller, &path)?, path),
            (None, Some(passed)) => opened_from_fd(caller, &passed.0)?,
            (Some(_), Some(_)) => {
                return Err(Error::invalid(
                    "a files watch takes option 'path' or option 'fd', not both",
                ));
            }
            (None, None) => {
                return Err(Error::invalid(
                    "a files watch needs option 'path' (a string) or 'fd' (a directory's descriptor)",
                ));
            }
        };
        let caller_path = access::caller_relative(caller, &opened)?;
        let shown = crate::error::Truncated(&path);
        let st = rustix::fs::fstat(&opened)
            .map_err(|e| Error::Failed(format!("cannot look at '{shown}': {e}")))?;
        let file_type = rustix::fs::FileType::from_raw_mode(st.st_mode);
        let reach = match (file_type, subtree) {
            (rustix::fs::FileType::Directory, true) => Reach::Subtree,
            (rustix::fs::FileType::Directory, false) => Reach::Dir,
            (rustix::fs::FileType::RegularFile, false) => Reach::File,
            (rustix::fs::FileType::RegularFile, true) => {
                return Err(Error::invalid(format!(
                    "'{shown}' is a file: option 'subtree' is for directories"
                )));
            }
            _ => {
                return Err(Error::NotSupported(format!(
                    "'{shown}' is neither a regular file nor a directory"
                )));
            }
        };
        // Reopened by the daemon from the caller's own walk (same object, same mount): an
        // O_PATH descriptor serves neither fanotify_mark nor open_by_handle_at.
        let fd: OwnedFd = File::open(format!("/proc/self/fd/{}", opened.as_raw_fd()))
            .map_err(|e| Error::Failed(format!("cannot open '{shown}': {e}")))?
            .into();
        drop(opened);
        let failed = |what: &str, e: io::Error| Error::Failed(format!("{what} '{shown}': {e}"));
        let id_at_start = FileId::of(fd.as_fd()).map_err(|e| failed("cannot look at", e))?;
        let (handle_type, bytes, _) =
            sys::name_to_handle_at(fd.as_fd()).map_err(|e| failed("no file handle for", e))?;
        let fsid = rustix::fs::fstatvfs(&fd)
            .map_err(|e| failed("cannot statfs", e.into()))?
            .f_fsid;
        let daemon_path = fd_path(fd.as_fd()).map_err(|e| failed("cannot name", e))?;
        let process = CallerProcess::new(caller)?;
        let checker = self
            .shared
            .checkers
            .for_caller(&process.fs_creds()?, process.root()?)?;
        let marks = self.shared.marks.clone();
        marks
            .take(reach, fd.as_fd(), id_at_start, fsid)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENODEV) | Some(libc::EOPNOTSUPP) | Some(libc::EXDEV) => {
                    Error::NotSupported(format!(
                        "the filesystem of '{shown}' cannot be watched this way: {e}"
                    ))
                }
                _ => failed("cannot watch", e),
            })?;
        let state = Arc::new(WatchState {
            id: self.shared.next_watch.fetch_add(1, Ordering::Relaxed),
            reach,
            caller_path,
            fd,
            daemon_path,
            handle: Handle {
                fsid,
                handle_type,
                bytes,
            },
            id_at_start,
            checker: checker.clone(),
            ended: AtomicBool::new(false),
            dirs: Mutex::new(HashMap::new()),
            marks,
        });
        checker.adopt(&state);
        let mut watches = self.shared.watches.lock().expect("file watches poisoned");
        // Pruned here too, not only when events come: a dead watch's Weak keeps its whole
        // allocation, so on a quiet filesystem each watch ever set would stay (the soak
        // bench saw 330 bytes a cycle).
        watches.retain(|w| w.strong_count() > 0);
        watches.push(Arc::downgrade(&state));
        drop(watches);
        tracing::info!(uid = %caller.uid, path = %String::from_utf8_lossy(&state.caller_path), reach = ?reach, checker = checker.id, "watching files");
        Ok(Arc::new(FileScope { state }))
    }

    fn option_names(&self) -> &'static [&'static str] {
        &["path", "fd", "subtree"]
    }

    /// No initial state: a directory's listing is the caller's to read.
    fn with_snapshot(&self, _: &dyn Scope, then: &mut dyn FnMut(&[Event])) {
        then(&[]);
    }
}

/// The directory a caller passed by descriptor, opened again by its path as the caller
/// names it, by the caller's own walk: what every later check of the watch walks is that
/// path, so the caller must be able to reach the directory by it now (a descriptor alone
/// proves only that it could once).
fn opened_from_fd(caller: &Caller, passed: &OwnedFd) -> Result<(OwnedFd, String)> {
    let st = rustix::fs::fstat(passed)
        .map_err(|e| Error::invalid(format!("option 'fd': cannot look at it: {e}")))?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Directory {
        return Err(Error::invalid(
            "option 'fd' must be a directory's descriptor",
        ));
    }
    let path = String::from_utf8(access::caller_relative(caller, passed)?)
        .map_err(|_| Error::NotSupported("the directory's path is not UTF-8".into()))?;
    if !path.starts_with('/') {
        return Err(Error::AccessDenied(
            "the directory passed is outside the caller's root".into(),
        ));
    }
    let opened = access::open_path(caller, &path)?;
    let same = FileId::of(opened.as_fd()).ok()
        == Some(FileId {
            dev: st.st_dev,
            ino: st.st_ino,
        });
    if !same {
        return Err(Error::AccessDenied(format!(
            "the directory passed is not the one at its path '{}' for the caller",
            crate::error::Truncated(&path)
        )));
    }
    Ok((opened, path))
}

/// A path to hand openat2(2) below the caller's root: relative, never empty.
pub fn relative_c_path(path: &[u8]) -> Option<CString> {
    let rel = path.strip_prefix(b"/").unwrap_or(path);
    CString::new(if rel.is_empty() {
        b".".to_vec()
    } else {
        rel.to_vec()
    })
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_merged_mask_gives_one_subtype_per_bit_arrivals_first() {
        // create + close_write + moved_from on one name, as the kernel merged them.
        assert_eq!(
            subtypes(0x148),
            [file::CREATE, file::CLOSE_WRITE, file::MOVED_FROM]
        );
        assert_eq!(
            subtypes(libc::FAN_MOVED_TO | libc::FAN_MODIFY | libc::FAN_DELETE | libc::FAN_ATTRIB),
            [file::MOVED_TO, file::MODIFY, file::ATTRIB, file::DELETE]
        );
        assert_eq!(
            subtypes(libc::FAN_ONDIR | libc::FAN_CREATE),
            [file::CREATE],
            "flags that are not changes give nothing"
        );
        assert!(subtypes(libc::FAN_RENAME | libc::FAN_MOVE_SELF).is_empty());
        assert!(subtypes(libc::FAN_Q_OVERFLOW).is_empty());
    }

    #[test]
    fn every_subtype_has_its_bit() {
        let all = libc::FAN_MOVED_TO
            | libc::FAN_CREATE
            | libc::FAN_MODIFY
            | libc::FAN_ATTRIB
            | libc::FAN_CLOSE_WRITE
            | libc::FAN_MOVED_FROM
            | libc::FAN_DELETE;
        let got = subtypes(all);
        let want: Vec<u8> = file::ORDER
            .into_iter()
            .filter(|s| *s != file::RENAME)
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn handles_compare_by_filesystem_type_and_bytes() {
        let fid = Fid {
            fsid: [1, 2],
            handle_type: 1,
            handle: b"abcd",
            name: Some(b"x"),
        };
        let h = Handle::of(&fid);
        assert_eq!(h.fsid, 1 | (2 << 32));
        assert!(h.is(&fid));
        assert!(!h.is(&Fid {
            fsid: [1, 3],
            ..fid
        }));
        assert!(!h.is(&Fid {
            handle_type: 2,
            ..fid
        }));
        assert_eq!(hex(b"\x01\xab"), "01ab");
    }

    #[test]
    fn a_handle_opens_the_object_it_was_taken_from() {
        if !nix::unistd::geteuid().is_root() {
            assert!(std::env::var_os("CI").is_none(), "CI runs as root");
            eprintln!("SKIP: open_by_handle_at needs CAP_DAC_READ_SEARCH");
            return;
        }
        let dir = std::env::temp_dir().join(format!("watchd-handle-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let top: OwnedFd = File::open(&dir).unwrap().into();
        let sub: OwnedFd = File::open(dir.join("sub")).unwrap().into();
        let (handle_type, bytes, _) = sys::name_to_handle_at(sub.as_fd()).unwrap();
        let opened =
            sys::open_by_handle_at(top.as_fd(), handle_type, &bytes, libc::O_PATH).unwrap();
        let same = FileId::of(opened.as_fd()).unwrap() == FileId::of(sub.as_fd()).unwrap();
        let path = fd_path(opened.as_fd()).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(same, "the handle opens the directory it names");
        assert_eq!(path, dir.join("sub").as_os_str().as_bytes());
    }

    #[test]
    fn relative_paths_for_openat2() {
        assert_eq!(relative_c_path(b"/").unwrap().as_bytes(), b".");
        assert_eq!(relative_c_path(b"/a/b").unwrap().as_bytes(), b"a/b");
        assert!(relative_c_path(b"/a\0b").is_none());
    }
}
