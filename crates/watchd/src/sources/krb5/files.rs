//! `FILE:` caches and `DIR:` collections, followed by a thread of the krb5 source's own
//! ([`FileWatcher`]): one inotify instance watches the directory of every followed cache,
//! and an event naming a cache's file re-reads that cache, so a change is seen as soon as
//! the file is written or renamed into place. Commands (watch, release) reach the thread
//! through a channel and a wake-up pipe, as the key poller's do.
//!
//! **Why a thread and not a tokio task.** Every read is made as the caller
//! ([`creds::run_as`], which runs it on a scoped thread wearing the caller's fsuid, fsgid
//! and groups, and joins it): a blocking call that must not run on a runtime worker. The
//! watch is asked for by [`crate::source::Source::scope`], which is synchronous, and a
//! snapshot must hold the watches still while the hub registers the watch. A thread that
//! sleeps in `poll(2)` on the inotify descriptor and its wake-up pipe needs no runtime and
//! keeps all of it synchronous; it is started by the first file watch.
//!
//! **Reading as the caller.** Every file is looked at with the caller's own credentials:
//! first through an `O_PATH` handle, which opens nothing, and only a regular file of the
//! caller's is then opened (`O_NOCTTY`, through that same inode) and read. A name that
//! leads to a terminal, a device or a FIFO is never opened: a root daemon opening a
//! terminal without a controlling one would take it as its own, and the terminal's owner
//! could then stop it.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex, MutexGuard, Weak, mpsc};

use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use nix::sys::stat::Mode;

use super::collection::{CacheState, Collection, CollectionId, file_principal, publish};
use super::names::FileLayout;
use crate::creds::{self, FsCreds};
use crate::error::{Error, Result, Truncated};
use crate::hub::Hub;

/// The largest cache file read; bigger ones are taken as they are (changed, principal
/// unknown).
const MAX_CACHE_FILE: u64 = 1 << 20;

/// The file thread: every followed file cache, and the commands for the thread.
pub struct FileWatcher {
    /// Lock order: this, then the hub (the thread publishes holding it).
    watches: Mutex<FileWatches>,
    waker: Waker,
}

/// Posts commands to the file thread and wakes it.
#[derive(Clone)]
struct Waker {
    commands: mpsc::Sender<Command>,
    pipe: Arc<OwnedFd>,
}

impl Waker {
    fn send(&self, command: Command) {
        if self.commands.send(command).is_ok() {
            // A full pipe already holds a wake-up.
            let _ = nix::unistd::write(&*self.pipe, &[1]);
        }
    }
}

/// Work for the file thread.
enum Command {
    Watch {
        request: FileRequest,
        reply: mpsc::SyncSender<Result<Arc<FileLease>>>,
    },
    Release(u64),
}

impl FileWatcher {
    /// Makes the inotify instance and starts the thread, publishing to `hub`.
    pub fn start(hub: Arc<Hub>) -> io::Result<Arc<FileWatcher>> {
        let watches = FileWatches::new()?;
        let inotify = watches.inotify.as_fd().try_clone_to_owned()?;
        let (wake_read, wake_write) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(io::Error::from)?;
        let (commands, receiver) = mpsc::channel();
        let watcher = Arc::new(FileWatcher {
            watches: Mutex::new(watches),
            waker: Waker {
                commands,
                pipe: Arc::new(wake_write),
            },
        });
        let thread = watcher.clone();
        std::thread::Builder::new()
            .name("krb5-files".into())
            .spawn(move || thread.run(&hub, &inotify, &wake_read, &receiver))?;
        Ok(watcher)
    }

    /// Follows a file cache or DIR collection until the lease is dropped.
    pub fn watch(&self, request: FileRequest) -> Result<Arc<FileLease>> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.waker.send(Command::Watch { request, reply });
        answer
            .recv()
            .map_err(|_| Error::Failed("the krb5 file watcher has stopped".into()))?
    }

    /// Calls `then` with watch `id`'s collection and watched name, the watches held still:
    /// nothing is published before `then` returns.
    pub fn with_collection<T>(
        &self,
        id: u64,
        then: impl FnOnce(Option<(&Collection, &String)>) -> T,
    ) -> T {
        let watches = self.lock();
        then(watches.collection(id))
    }

    fn lock(&self) -> MutexGuard<'_, FileWatches> {
        self.watches.lock().expect("krb5 file watches poisoned")
    }

    fn run(
        &self,
        hub: &Hub,
        inotify: &OwnedFd,
        wake_read: &OwnedFd,
        commands: &mpsc::Receiver<Command>,
    ) {
        loop {
            let mut fds = [
                PollFd::new(wake_read.as_fd(), PollFlags::POLLIN),
                PollFd::new(inotify.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    tracing::error!(error = %e, "krb5 file watcher cannot poll; file cache watches stop");
                    return;
                }
            }
            let files_ready = fds[1]
                .revents()
                .is_some_and(|r| r.contains(PollFlags::POLLIN));
            let mut drain = [0u8; 64];
            while matches!(nix::unistd::read(wake_read, &mut drain), Ok(n) if n > 0) {}
            while let Ok(command) = commands.try_recv() {
                match command {
                    Command::Watch { request, reply } => {
                        let result = self.lock().add(request, self.waker.clone());
                        let _ = reply.send(result);
                    }
                    Command::Release(id) => self.lock().release(id),
                }
            }
            if files_ready {
                self.lock().on_ready(hub);
            }
        }
    }
}

/// A file-based cache to follow: its directory, opened as the caller, and whose files count.
pub struct FileRequest {
    pub dir: OwnedFd,
    pub layout: FileLayout,
    /// Every file is opened, read and listed with these: the caller's own rights.
    pub reader: FsCreds,
    pub name: String,
}

/// Held by every watch on a file cache.
pub struct FileLease {
    pub id: u64,
    wake: Waker,
}

impl Drop for FileLease {
    fn drop(&mut self) {
        // This runs under the hub's lock (a watch being removed), so it only posts a note.
        self.wake.send(Command::Release(self.id));
    }
}

struct FileWatch {
    request: FileRequest,
    wd: WatchDescriptor,
    collection: Collection,
    _lease: Weak<FileLease>,
}

/// Every followed file cache, on one inotify instance.
struct FileWatches {
    inotify: Inotify,
    watches: HashMap<u64, FileWatch>,
    digests: std::hash::RandomState,
    next_id: u64,
}

impl FileWatches {
    fn new() -> std::io::Result<FileWatches> {
        Ok(FileWatches {
            inotify: Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?,
            watches: HashMap::new(),
            digests: std::hash::RandomState::new(),
            next_id: 0,
        })
    }

    fn collection(&self, id: u64) -> Option<(&Collection, &String)> {
        self.watches
            .get(&id)
            .map(|w| (&w.collection, &w.request.name))
    }

    fn add(&mut self, request: FileRequest, wake: Waker) -> Result<Arc<FileLease>> {
        self.next_id += 1;
        let id = self.next_id;
        // The directory was opened as the caller; the watch goes on that very inode.
        let path = format!("/proc/self/fd/{}", request.dir.as_raw_fd());
        let mask = AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_ATTRIB
            | AddWatchFlags::IN_ONLYDIR;
        let wd = self.inotify.add_watch(path.as_str(), mask).map_err(|e| {
            Error::Failed(format!(
                "cannot watch the directory of {}: {e}",
                request.name
            ))
        })?;
        let collection = read_collection(&request, &self.digests).unwrap_or_default();
        let lease = Arc::new(FileLease { id, wake });
        self.watches.insert(
            id,
            FileWatch {
                request,
                wd,
                collection,
                _lease: Arc::downgrade(&lease),
            },
        );
        Ok(lease)
    }

    fn release(&mut self, id: u64) {
        let Some(watch) = self.watches.remove(&id) else {
            return;
        };
        // inotify gives one descriptor per inode: keep it while another cache uses it.
        if !self.watches.values().any(|w| w.wd == watch.wd) {
            let _ = self.inotify.rm_watch(watch.wd);
        }
    }

    /// Reads what inotify has, and re-reads every cache a name in it may concern. A busy
    /// directory (`/tmp`) changes all the time: an event about another file costs nothing.
    fn on_ready(&mut self, hub: &Hub) {
        let mut touched = Vec::new();
        let mut overflowed = false;
        while let Ok(events) = self.inotify.read_events() {
            if events.is_empty() {
                break;
            }
            for event in events {
                overflowed |= event.mask.contains(AddWatchFlags::IN_Q_OVERFLOW);
                touched.push((event.wd, event.name));
            }
        }
        let digests = &self.digests;
        for (id, watch) in self.watches.iter_mut() {
            let concerned = overflowed
                || touched.iter().any(|(wd, name)| {
                    *wd == watch.wd && watch.request.layout.concerns(name.as_deref())
                });
            if !concerned {
                continue;
            }
            let Some(new) = read_collection(&watch.request, digests) else {
                continue;
            };
            for change in watch.collection.diff(&new) {
                publish(hub, CollectionId::Files(*id), &watch.request.name, change);
            }
            watch.collection = new;
        }
    }
}

/// What a name in a cache directory is, looked up as the caller through an `O_PATH` handle
/// (which opens nothing: no device is touched, no terminal is acquired).
enum Entry {
    Missing,
    /// A regular file of the caller's: the handle, to be opened as what it is.
    Cache(OwnedFd),
    /// Anything else: another user's file, a symlink, a device, a FIFO, a directory.
    Foreign,
}

/// Looks `name` up in the cache directory without following a symlink. Runs on a thread
/// wearing the caller's credentials ([`creds::run_as`]).
fn look_up(dir: &OwnedFd, name: &str, owner: u32) -> std::io::Result<Entry> {
    let handle = match nix::fcntl::openat(
        dir.as_fd(),
        name,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(handle) => handle,
        Err(nix::errno::Errno::ENOENT) => return Ok(Entry::Missing),
        Err(e) => return Err(e.into()),
    };
    let meta = std::fs::File::from(handle.try_clone()?).metadata()?;
    Ok(if meta.is_file() && meta.uid() == owner {
        Entry::Cache(handle)
    } else {
        Entry::Foreign
    })
}

/// A cache file's bytes, if `name` is a regular file of the caller's that the caller may
/// read. The file is opened through the very inode the `O_PATH` lookup checked (a swap in
/// between cannot put a terminal or a FIFO there), with `O_NOCTTY` all the same.
fn read_owned(dir: &OwnedFd, name: &str, owner: u32) -> Option<Vec<u8>> {
    let Entry::Cache(handle) = look_up(dir, name, owner).ok()? else {
        return None;
    };
    let fd = nix::fcntl::open(
        format!("/proc/self/fd/{}", handle.as_raw_fd()).as_str(),
        OFlag::O_RDONLY | OFlag::O_NOCTTY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let mut data = Vec::new();
    std::fs::File::from(fd)
        .take(MAX_CACHE_FILE)
        .read_to_end(&mut data)
        .ok()?;
    Some(data)
}

fn cache_state(data: &[u8], digests: &std::hash::RandomState) -> Option<CacheState> {
    let principal = file_principal(data)?;
    Some(CacheState {
        principal,
        fingerprint: digests.hash_one(data),
    })
}

/// The collection as the caller sees it now; `None` when it could not be looked at (it is
/// then taken as unchanged).
fn read_collection(request: &FileRequest, digests: &std::hash::RandomState) -> Option<Collection> {
    creds::run_as(&request.reader, || Ok(read_as_caller(request, digests)))
        .inspect_err(|e| tracing::warn!(cache = ?Truncated(&request.name), error = %e, "cannot read a credential cache as its owner"))
        .ok()
}

fn read_as_caller(request: &FileRequest, digests: &std::hash::RandomState) -> Collection {
    let owner = request.reader.uid;
    let read = |file: &str| read_owned(&request.dir, file, owner);
    let mut collection = Collection::default();
    match &request.layout {
        FileLayout::File { file_name, cache } => {
            if let Some(state) = read(file_name).and_then(|d| cache_state(&d, digests)) {
                collection.caches.insert(cache.clone(), state);
            }
        }
        FileLayout::Dir { dir_path } => {
            let name = |file: &str| format!("DIR::{}/{file}", dir_path.trim_end_matches('/'));
            let primary_file = read("primary")
                .and_then(|d| String::from_utf8(d).ok())
                .map(|p| p.trim().to_owned());
            collection.primary = primary_file.as_deref().map(name);
            // Listed as the caller: a directory it may search but not read shows only the
            // cache its primary names, as `ls` would show none.
            let files: Vec<String> = match nix::dir::Dir::openat(
                request.dir.as_fd(),
                ".",
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            ) {
                Ok(mut dir) => dir
                    .iter()
                    .filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().to_str().ok().map(str::to_owned))
                    .filter(|f| f.starts_with("tkt"))
                    .collect(),
                Err(_) => primary_file
                    .into_iter()
                    .filter(|f| f.starts_with("tkt") && !f.contains('/'))
                    .collect(),
            };
            for file in files {
                if let Some(state) = read(&file).and_then(|d| cache_state(&d, digests)) {
                    collection.caches.insert(name(&file), state);
                }
            }
        }
    }
    collection
}

/// Refuses, at AddWatch, a cache the caller could not read itself: a name that is there
/// but is not a regular file of the caller's (a terminal, a device, a symlink), or a
/// directory the caller may not search.
pub(super) fn check_reachable(request: &FileRequest) -> Result<()> {
    let probe = match &request.layout {
        FileLayout::File { file_name, .. } => file_name.as_str(),
        FileLayout::Dir { .. } => "primary",
    };
    let uid = request.reader.uid;
    let shown = Truncated(&request.name);
    match creds::run_as(&request.reader, || look_up(&request.dir, probe, uid)) {
        Ok(Entry::Missing | Entry::Cache(_)) => Ok(()),
        Ok(Entry::Foreign) => Err(Error::invalid(format!(
            "cache '{shown}' is not a regular file of uid {uid}"
        ))),
        Err(e) if e.raw_os_error() == Some(libc::EACCES) => Err(Error::AccessDenied(format!(
            "uid {uid} may not reach cache '{shown}'"
        ))),
        Err(e) => Err(Error::Failed(format!(
            "cannot look at cache '{shown}': {e}"
        ))),
    }
}
