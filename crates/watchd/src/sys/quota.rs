//! Disk quotas: `quotactl_fd(2)` (Linux 5.14), which neither nix nor rustix wraps. The
//! quota source reads a user's or group's usage and limits on a filesystem it reaches by a
//! descriptor of any file on it (an `O_PATH` one will do), without a block device path:
//! filesystems on no device (tmpfs) and devices the daemon's namespace lacks work alike.
#![allow(unsafe_code)] // one raw syscall, with a `struct if_dqblk` it fills.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::cvt;

/// `Q_GETQUOTA` (`include/uapi/linux/quota.h`).
const Q_GETQUOTA: u32 = 0x800007;
/// `QIF_DQBLKSIZE`: the unit of the block limits `Q_GETQUOTA` returns.
const QIF_DQBLKSIZE: u64 = 1024;

/// One user's, group's or project's quota on one filesystem; limits of 0 are none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskQuota {
    pub bytes_used: u64,
    pub bytes_soft: u64,
    pub bytes_hard: u64,
    pub inodes_used: u64,
    pub inodes_soft: u64,
    pub inodes_hard: u64,
    /// When the block soft limit's grace ends (seconds since the epoch); 0 while under it.
    pub bytes_grace_ends: u64,
    /// When the inode soft limit's grace ends; 0 while under it.
    pub inodes_grace_ends: u64,
}

/// `quotactl_fd(2)` with `Q_GETQUOTA`: `id`'s quota of `quota_type` (0 user, 1 group, 2
/// project) on the filesystem `fd` is on. `ESRCH`: quotas of that type are off there;
/// `ENOSYS`: the filesystem has no quotas at all, or the kernel has no `quotactl_fd` (see
/// [`quotactl_fd_probe`]).
pub fn quotactl_fd_get_quota(
    fd: BorrowedFd<'_>,
    quota_type: u32,
    id: u32,
) -> io::Result<DiskQuota> {
    // SAFETY: all-zero is a valid `libc::dqblk`, which is laid out as the kernel's
    // `struct if_dqblk` (eight u64 and a u32).
    let mut block: libc::dqblk = unsafe { std::mem::zeroed() };
    let cmd = (Q_GETQUOTA << 8) | (quota_type & 0xff);
    // SAFETY: `fd` is open (borrowed) for the call, and `block` is a `struct if_dqblk` on our
    // stack, the one structure Q_GETQUOTA writes; nothing keeps the pointer afterwards.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_quotactl_fd,
            fd.as_raw_fd(),
            cmd,
            id,
            (&raw mut block).cast::<libc::c_void>(),
        )
    };
    cvt(ret)?;
    Ok(DiskQuota {
        bytes_used: block.dqb_curspace,
        bytes_soft: block.dqb_bsoftlimit.saturating_mul(QIF_DQBLKSIZE),
        bytes_hard: block.dqb_bhardlimit.saturating_mul(QIF_DQBLKSIZE),
        inodes_used: block.dqb_curinodes,
        inodes_soft: block.dqb_isoftlimit,
        inodes_hard: block.dqb_ihardlimit,
        bytes_grace_ends: block.dqb_btime,
        inodes_grace_ends: block.dqb_itime,
    })
}

/// Whether this process may call `quotactl_fd(2)`: a call on no descriptor is `EBADF`
/// where it may, `ENOSYS` on a kernel without it (before 5.14, or no `CONFIG_QUOTACTL`),
/// `EPERM` (or another error) where a seccomp filter refuses it.
pub fn quotactl_fd_probe() -> io::Result<()> {
    // SAFETY: an invalid descriptor and a null address: the kernel looks up the descriptor
    // first and fails with EBADF, reading and writing nothing.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_quotactl_fd,
            -1,
            Q_GETQUOTA << 8,
            0,
            std::ptr::null_mut::<libc::c_void>(),
        )
    };
    match cvt(ret) {
        Err(e) if e.raw_os_error() == Some(libc::EBADF) => Ok(()),
        Err(e) => Err(e),
        Ok(_) => Ok(()),
    }
}
