//! What the caller can see, decided as the caller and not as root.
//!
//! - [`CallerProcess`]: the caller's `/proc/PID` entries, opened by the daemon and then
//!   checked against the caller's pidfd, so a recycled pid cannot stand in for the caller.
//! - [`resolve_path`]: a path resolved in the caller's root directory, on a thread whose
//!   fsuid, fsgid and groups are the caller's (root's file capabilities drop with fsuid), with
//!   `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`: a symlink the caller planted can lead only
//!   where the caller could go itself.
#![forbid(unsafe_code)]

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use crate::creds::{self, FsCreds};
use crate::error::{Error, Result, Truncated};
use crate::identity::Caller;
use crate::sys::{self, ResolveFlags};

/// The caller's process as seen through `/proc/PID`.
pub struct CallerProcess<'a> {
    caller: &'a Caller,
}

impl<'a> CallerProcess<'a> {
    /// Pins the caller's process and checks it is still the uid the bus vouched for. Without
    /// a ProcessFD from the bus the pid is the one that connected: if that process exited and
    /// the pid was reused, the process found here belongs to someone else, and every lookup
    /// through it would describe a stranger. An identity mismatch is refused outright.
    pub fn new(caller: &'a Caller) -> Result<Self> {
        match &caller.pidfd {
            Some(pidfd) if pidfd_is_alive(pidfd.as_fd()) => {}
            _ => return Err(gone(caller)),
        }
        let process = CallerProcess { caller };
        let euid = process.status_field("Uid:", 1)?;
        if euid != caller.uid.0 {
            let pid = caller.pid;
            tracing::warn!(uid = %caller.uid, pid = %caller.pid, process_euid = euid, "refused: the pid no longer belongs to the caller");
            return Err(Error::AccessDenied(format!(
                "process {pid} is not the caller any more (uid {euid}, the bus says {})",
                caller.uid
            )));
        }
        Ok(process)
    }

    /// Field `index` (0 real, 1 effective, 2 saved, 3 filesystem) of a `Uid:`/`Gid:` line of
    /// /proc/PID/status.
    fn status_field(&self, line: &str, index: usize) -> Result<u32> {
        let status = self.checked("status", std::fs::read_to_string)?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(line))
            .and_then(|rest| rest.split_whitespace().nth(index))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| {
                Error::Failed(format!(
                    "cannot read the credentials of pid {}",
                    self.caller.pid
                ))
            })
    }

    fn path(&self, entry: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/{entry}", self.caller.pid))
    }

    /// Runs `open` on `/proc/PID/<entry>`, then makes sure the pid still named the caller.
    fn checked<T>(&self, entry: &str, open: impl FnOnce(PathBuf) -> io::Result<T>) -> Result<T> {
        let opened = open(self.path(entry));
        let pidfd = self.caller.pidfd.as_ref().expect("checked in new");
        if !pidfd_is_alive(pidfd.as_fd()) {
            return Err(gone(self.caller));
        }
        opened.map_err(|e| {
            Error::Failed(format!(
                "cannot read the caller's /proc/{}/{entry}: {e}",
                self.caller.pid
            ))
        })
    }

    /// The caller's mountinfo, open: the open file keeps its mount namespace readable.
    pub fn mountinfo(&self) -> Result<File> {
        self.checked("mountinfo", File::open)
    }

    /// The caller's view of the mount tree: namespace inode, and the device and inode of its
    /// root directory (two processes in one namespace can have different roots).
    pub fn mount_view(&self) -> Result<MountView> {
        let ns = self.checked("ns/mnt", std::fs::metadata)?.ino();
        let root = self.checked("root", std::fs::metadata)?;
        Ok(MountView {
            ns,
            root_dev: root.dev(),
            root_ino: root.ino(),
        })
    }

    /// The caller's mount namespace, open (an nsfs descriptor, for `FAN_MARK_MNTNS` and
    /// `NS_GET_MNTNS_ID`).
    pub fn mount_namespace(&self) -> Result<OwnedFd> {
        self.checked("ns/mnt", |p| File::open(p).map(OwnedFd::from))
    }

    /// The caller's root directory, open: paths the caller names resolve below it.
    pub fn root(&self) -> Result<OwnedFd> {
        self.checked("root", |p| File::open(p).map(OwnedFd::from))
    }

    /// The caller's file-system credentials: its uid, its filesystem gid (from the process,
    /// checked to be the caller's) and its supplementary groups as the bus vouched for them.
    pub fn fs_creds(&self) -> Result<FsCreds> {
        Ok(FsCreds {
            uid: self.caller.uid.0,
            gid: self.status_field("Gid:", 3)?,
            groups: self.caller.gids.iter().map(|g| g.0).collect(),
        })
    }
}

/// Whether the process behind `pidfd` still runs, i.e. a pid looked up before this call
/// still names the same process. A pidfd polls readable once its process has exited; unlike
/// signal 0 this needs no permission over the process (the service has no CAP_KILL).
fn pidfd_is_alive(pidfd: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::new(pidfd, PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(0))
}

fn gone(caller: &Caller) -> Error {
    Error::Failed(format!("the calling process {} has exited", caller.pid))
}

/// Identifies one view of the mount tree: a namespace seen from one root directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MountView {
    pub ns: u64,
    pub root_dev: u64,
    pub root_ino: u64,
}

/// Runs `f` on a thread of its own whose fsuid, fsgid and groups are the caller's (root's
/// file capabilities drop with fsuid), handing it the caller's root directory. The thread
/// ends with those credentials; the daemon's other threads never wear them.
pub fn as_caller<T: Send>(
    caller: &Caller,
    f: impl FnOnce(BorrowedFd<'_>) -> io::Result<T> + Send,
) -> Result<io::Result<T>> {
    let process = CallerProcess::new(caller)?;
    let root = process.root()?;
    let creds = process.fs_creds()?;
    Ok(creds::run_as(&creds, || f(root.as_fd())))
}

/// Opens `path` (absolute, in the caller's root) as the caller would, with
/// `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`, as an `O_PATH` handle.
pub fn open_path(caller: &Caller, path: &str) -> Result<OwnedFd> {
    // The path is the caller's: echoed shortened.
    let shown = Truncated(path);
    let Some(relative) = path.strip_prefix('/') else {
        return Err(Error::invalid(format!("path '{shown}' must be absolute")));
    };
    let c_path = CString::new(if relative.is_empty() { "." } else { relative })
        .map_err(|_| Error::invalid("a path cannot contain a NUL byte"))?;
    let uid = caller.uid.0;
    let opened = as_caller(caller, |root| {
        sys::openat2_path(
            root,
            &c_path,
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )
    })?;
    opened.map_err(|e| match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENOTDIR) => {
            Error::NotFound(format!("path '{shown}' does not exist"))
        }
        Some(libc::EACCES) | Some(libc::EPERM) => {
            Error::AccessDenied(format!("uid {uid} may not reach path '{shown}'"))
        }
        Some(libc::ELOOP) | Some(libc::EXDEV) => {
            Error::AccessDenied(format!("path '{shown}' leads outside the caller's root"))
        }
        _ => Error::Failed(format!("cannot resolve path '{shown}': {e}")),
    })
}

/// Resolves `path` (absolute, in the caller's root) as the caller would, and returns it in
/// canonical form as the caller sees it (the form its mountinfo uses).
pub fn resolve_path(caller: &Caller, path: &str) -> Result<Vec<u8>> {
    let handle = open_path(caller, path)?;
    caller_relative(caller, &handle)
}

/// The handle's path as the caller names it: the daemon's name for it, less the daemon's
/// name for the caller's root.
pub fn caller_relative(caller: &Caller, handle: &OwnedFd) -> Result<Vec<u8>> {
    let link = |p: PathBuf| std::fs::read_link(&p).map(|t| t.as_os_str().as_bytes().to_vec());
    let fd_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(handle));
    let full = link(PathBuf::from(fd_path))
        .map_err(|e| Error::Failed(format!("cannot name the resolved path: {e}")))?;
    let root = CallerProcess::new(caller)?.checked("root", link)?;
    match full.strip_prefix(root.as_slice()) {
        _ if root == b"/" => Ok(full),
        Some([]) => Ok(b"/".to_vec()),
        Some(rest) if rest[0] == b'/' => Ok(rest.to_vec()),
        _ => Ok(full),
    }
}
