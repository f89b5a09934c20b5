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
/// `Q_XGETQSTATV` (`XQM_CMD(8)`, `include/uapi/linux/dqblk_xfs.h`).
const Q_XGETQSTATV: u32 = (b'X' as u32) << 8 | 8;
/// `FS_QSTATV_VERSION1`.
const FS_QSTATV_VERSION1: i8 = 1;
/// `FS_QUOTA_UDQ_ENFD`; the group and project bits follow at `<< 2` and `<< 4`.
const FS_QUOTA_UDQ_ENFD: u16 = 2;
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

/// `struct fs_qfilestatv`.
#[repr(C)]
#[derive(Default)]
struct QuotaFileStat {
    ino: u64,
    blocks: u64,
    extents: u32,
    pad: u32,
}

/// `struct fs_quota_statv` (160 bytes), which `Q_XGETQSTATV` fills.
#[repr(C)]
#[derive(Default)]
struct QuotaStat {
    version: i8,
    pad1: u8,
    flags: u16,
    incore: u32,
    files: [QuotaFileStat; 3],
    time_limits: [i32; 3],
    warn_limits: [u16; 3],
    pad3: u16,
    pad4: u32,
    pad2: [u64; 7],
}

const _: () = assert!(std::mem::size_of::<QuotaStat>() == 160);

/// `quotactl_fd(2)` with `Q_XGETQSTATV`: whether the limits of quota type `quota_type` (0
/// user, 1 group, 2 project) are enforced on the filesystem `fd` is on, or only its usage
/// counted (ext4 with the `quota` feature mounted without `usrquota`: no write ever fails
/// with `EDQUOT`, and the kernel sends no warning).
pub fn quotactl_fd_limits_enforced(fd: BorrowedFd<'_>, quota_type: u32) -> io::Result<bool> {
    let mut stat = QuotaStat {
        version: FS_QSTATV_VERSION1,
        ..QuotaStat::default()
    };
    // SAFETY: `fd` is open (borrowed) for the call, and `stat` is a `struct fs_quota_statv`
    // on our stack (laid out as the kernel's, size checked above) whose version the kernel
    // reads before it writes the structure; nothing keeps the pointer afterwards.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_quotactl_fd,
            fd.as_raw_fd(),
            Q_XGETQSTATV << 8,
            0,
            (&raw mut stat).cast::<libc::c_void>(),
        )
    };
    cvt(ret)?;
    Ok(stat.flags & (FS_QUOTA_UDQ_ENFD << (2 * quota_type)) != 0)
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
