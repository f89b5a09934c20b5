//! The only `unsafe` code of the tests, benches and probes: what a child runs between fork
//! and exec (`Command::pre_exec`, whose closure must stay async-signal-safe; the calls in it
//! are nix's), the loop-control ioctl, and the key calls the daemon's `watchd::sys` does not
//! make (keyctl(2) revoke, clear, timeouts, invalidation, updates and fixed-buffer reads;
//! request_key(2)), and a seccomp(2) filter for a daemon run as a container would run it.
//! One safe function each, naming its man page.
#![allow(unsafe_code)] // pre_exec (an unsafe fn), ioctl(2), keyctl(2) and request_key(2).

use std::ffi::{CStr, CString};
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::sys::socket::UnixAddr;

/// Before exec: setsid(2) when `session` (a session of its own, no controlling terminal),
/// then prctl(2) `PR_SET_PDEATHSIG` SIGKILL, so the child dies if the test thread that
/// started it dies without running Drop (a killed or timed-out test run).
pub fn before_exec_session_and_pdeathsig(command: &mut Command, session: bool) {
    // SAFETY: the closure runs between fork and exec and only makes the setsid(2) and
    // prctl(2) calls, which are async-signal-safe; it allocates nothing and takes no locks.
    unsafe {
        command.pre_exec(move || {
            if session {
                nix::unistd::setsid()?;
            }
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
}

/// Before exec: a mount namespace of the child's own (unshare(2) `CLONE_NEWNS`), every
/// mount in it private, then each `(from, to)` of `binds` bind-mounted (mount(2)).
pub fn before_exec_private_mounts(command: &mut Command, binds: Vec<(CString, CString)>) {
    // SAFETY: between fork and exec the closure makes only unshare(2) and mount(2) calls on
    // strings allocated before the fork (nix passes a CStr through without copying); it
    // allocates nothing and takes no locks.
    unsafe {
        command.pre_exec(move || {
            unshare(CloneFlags::CLONE_NEWNS)?;
            let none: Option<&std::ffi::CStr> = None;
            let private = MsFlags::MS_REC | MsFlags::MS_PRIVATE;
            mount(none, c"/", none, private, none)?;
            for (from, to) in &binds {
                mount(
                    Some(from.as_c_str()),
                    to.as_c_str(),
                    none,
                    MsFlags::MS_BIND,
                    none,
                )?;
            }
            Ok(())
        });
    }
}

/// Before exec: a seccomp(2) filter (installed with prctl(2) `PR_SET_SECCOMP`) that fails
/// each of `syscalls` with `errno` and allows everything else, as a container manager's
/// filter does (systemd-nspawn refuses keyctl(2) and add_key(2) this way). The filter
/// outlives exec: the program runs under it.
pub fn before_exec_deny_syscalls(command: &mut Command, syscalls: &[libc::c_long], errno: u16) {
    // Classic BPF over `struct seccomp_data`: load the number, one test per denied call
    // jumping to the final ERRNO return, else ALLOW. Built before the fork: the child only
    // points the kernel at it.
    let denied = syscalls.len();
    let mut program: Vec<libc::sock_filter> = vec![bpf(
        (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
        0, // offsetof(struct seccomp_data, nr)
        0,
        0,
    )];
    for (i, &nr) in syscalls.iter().enumerate() {
        let to_errno = u8::try_from(denied - i).expect("few syscalls");
        program.push(bpf(
            (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            nr as u32,
            to_errno,
            0,
        ));
    }
    program.push(bpf(
        (libc::BPF_RET | libc::BPF_K) as u16,
        libc::SECCOMP_RET_ALLOW,
        0,
        0,
    ));
    program.push(bpf(
        (libc::BPF_RET | libc::BPF_K) as u16,
        libc::SECCOMP_RET_ERRNO | u32::from(errno),
        0,
        0,
    ));
    // SAFETY: the child only makes the prctl(2) call of `set_seccomp_filter` on `program`,
    // owned by the closure and built before the fork; it allocates nothing and takes no
    // locks.
    unsafe {
        command.pre_exec(move || set_seccomp_filter(&program));
    }
}

/// prctl(2) `PR_SET_SECCOMP` `SECCOMP_MODE_FILTER` with `program` (seccomp(2)). Without
/// `PR_SET_NO_NEW_PRIVS` it needs CAP_SYS_ADMIN, which the tests have.
fn set_seccomp_filter(program: &[libc::sock_filter]) -> std::io::Result<()> {
    let fprog = libc::sock_fprog {
        len: u16::try_from(program.len()).map_err(|_| std::io::ErrorKind::InvalidInput)?,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: `fprog` points at `program`, alive for the call; the kernel copies the filter
    // and keeps no pointer to it.
    let set = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &fprog as *const libc::sock_fprog,
        )
    };
    if set == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn bpf(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// Before exec: connect(2) socket `fd` (open in the parent too, so the parent's copy is then
/// the connected socket) to `address`, as the child's credentials.
pub fn before_exec_connect(command: &mut Command, fd: RawFd, address: UnixAddr) {
    // SAFETY: the child only calls connect(2) on a descriptor and an address prepared before
    // the fork; it allocates nothing and takes no locks.
    unsafe {
        command.pre_exec(move || {
            nix::sys::socket::connect(fd, &address)?;
            Ok(())
        });
    }
}

/// ioctl(2) on /dev/loop-control (loop(4)) with a device number as its argument:
/// `LOOP_CTL_ADD` or `LOOP_CTL_REMOVE`.
pub fn loop_control(control: &File, request: libc::c_ulong, index: u32) -> nix::Result<i32> {
    // SAFETY: LOOP_CTL_ADD and LOOP_CTL_REMOVE take their argument by value (an integer
    // device number), not a pointer, so the kernel reads no memory of ours; the descriptor
    // is open for the duration of the call.
    let result = unsafe { libc::ioctl(control.as_raw_fd(), request, index as libc::c_ulong) };
    nix::errno::Errno::result(result)
}

/// A keyctl(2) operation whose arguments are all integers (serials, ids, permissions,
/// seconds): only those listed here can be made, so [`keyctl`] never hands the kernel an
/// integer it would take for a pointer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IntegerOp(libc::c_long);

/// `KEYCTL_GET_KEYRING_ID` (keyctl_get_keyring_ID(3)): id, create.
pub const KEYCTL_GET_KEYRING_ID: IntegerOp = IntegerOp(0);
/// `KEYCTL_REVOKE` (keyctl_revoke(3)): key.
pub const KEYCTL_REVOKE: IntegerOp = IntegerOp(3);
/// `KEYCTL_SETPERM` (keyctl_setperm(3)): key, permissions.
pub const KEYCTL_SETPERM: IntegerOp = IntegerOp(5);
/// `KEYCTL_CLEAR` (keyctl_clear(3)): keyring.
pub const KEYCTL_CLEAR: IntegerOp = IntegerOp(7);
/// `KEYCTL_LINK` (keyctl_link(3)): key, keyring.
pub const KEYCTL_LINK: IntegerOp = IntegerOp(8);
/// `KEYCTL_UNLINK` (keyctl_unlink(3)): key, keyring.
pub const KEYCTL_UNLINK: IntegerOp = IntegerOp(9);
/// `KEYCTL_SET_TIMEOUT` (keyctl_set_timeout(3)): key, seconds.
pub const KEYCTL_SET_TIMEOUT: IntegerOp = IntegerOp(15);
/// `KEYCTL_INVALIDATE` (keyctl_invalidate(3)): key.
pub const KEYCTL_INVALIDATE: IntegerOp = IntegerOp(21);

/// keyctl(2) with up to three integer arguments; the kernel's answer.
pub fn keyctl(
    op: IntegerOp,
    a: libc::c_long,
    b: libc::c_long,
    c: libc::c_long,
) -> std::io::Result<i64> {
    // SAFETY: every IntegerOp takes only integers, so the kernel reads and writes no memory
    // of ours.
    let ret = unsafe { libc::syscall(libc::SYS_keyctl, op.0, a, b, c, 0 as libc::c_long) };
    cvt(ret)
}

/// A keyctl(2) operation that writes into a buffer: [`KEYCTL_DESCRIBE`], [`KEYCTL_READ`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufferOp(libc::c_long);

/// `KEYCTL_DESCRIBE` (keyctl_describe(3)).
pub const KEYCTL_DESCRIBE: BufferOp = BufferOp(6);
/// `KEYCTL_READ` (keyctl_read(3)).
pub const KEYCTL_READ: BufferOp = BufferOp(11);

/// keyctl(2) `op` on `key` into `buf`, as much as fits: the length the kernel wanted to
/// write (more than `buf.len()` when it did not fit).
pub fn keyctl_into(op: BufferOp, key: i32, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: the kernel writes at most `buf.len()` bytes into the live, exclusively
    // borrowed buffer.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            op.0,
            key as libc::c_long,
            buf.as_mut_ptr(),
            buf.len(),
            0 as libc::c_long,
        )
    };
    cvt(ret).map(|n| n as usize)
}

/// `KEYCTL_UPDATE` (keyctl_update(3)): replaces `key`'s payload.
pub fn keyctl_update(key: i32, payload: &[u8]) -> std::io::Result<()> {
    const KEYCTL_UPDATE: libc::c_long = 2;
    // SAFETY: the kernel reads `payload.len()` bytes from the live slice, and nothing else.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_UPDATE,
            key as libc::c_long,
            payload.as_ptr(),
            payload.len(),
            0 as libc::c_long,
        )
    };
    cvt(ret).map(drop)
}

/// request_key(2): the key `key_type`/`description`, made by the request-key helper with
/// `callout` when none is found, linked into `keyring`. Blocks until the helper ends.
pub fn request_key(
    key_type: &CStr,
    description: &CStr,
    callout: &CStr,
    keyring: i32,
) -> std::io::Result<i32> {
    // SAFETY: the three strings are NUL-terminated and live for the call; the kernel only
    // reads them.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_request_key,
            key_type.as_ptr(),
            description.as_ptr(),
            callout.as_ptr(),
            keyring as libc::c_long,
        )
    };
    cvt(ret).map(|n| n as i32)
}

/// A `-1` return as the thread's errno.
fn cvt(ret: libc::c_long) -> std::io::Result<i64> {
    if ret == -1 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `struct mount_attr` of `<linux/mount.h>`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `mount_setattr(2)` on the mount at `path` (not recursive): sets propagation to
/// `propagation` (`MS_SHARED`, `MS_PRIVATE`…, 0 to leave it), sets `attr_set` and clears
/// `attr_clr` (`MOUNT_ATTR_*`).
pub fn mount_setattr(
    path: &CStr,
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
) -> nix::Result<()> {
    let attr = MountAttr {
        attr_set,
        attr_clr,
        propagation,
        userns_fd: 0,
    };
    // SAFETY: `path` is NUL-terminated and `attr` a complete struct mount_attr of the size
    // passed; both outlive the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            0,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    nix::errno::Errno::result(ret).map(drop)
}

/// `sched_setscheduler(2)` of the calling thread to `SCHED_FIFO` at priority 1: it runs
/// whenever it is runnable, ahead of every ordinary thread (for a reader that must keep up
/// on a busy machine). Needs CAP_SYS_NICE.
pub fn realtime_priority_this_thread() -> nix::Result<()> {
    let param = libc::sched_param { sched_priority: 1 };
    // SAFETY: pid 0 names the calling thread; `param` is a valid sched_param that outlives
    // the call.
    let ret = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    nix::errno::Errno::result(ret).map(drop)
}

/// `Q_SETQUOTA` / `Q_GETQUOTA` of quotactl(2) (`include/uapi/linux/quota.h`).
const Q_SETQUOTA: libc::c_int = 0x800008;
const Q_GETQUOTA: libc::c_int = 0x800007;
/// `QIF_BLIMITS | QIF_ILIMITS`: the limits of a `struct if_dqblk` are set.
const QIF_LIMITS: u32 = 1 | 4;

/// `QCMD(cmd, type)`.
fn qcmd(cmd: libc::c_int, quota_type: u32) -> libc::c_int {
    (cmd << 8) | (quota_type as libc::c_int & 0xff)
}

/// Limits of one user's or group's quota: blocks in KiB (`QIF_DQBLKSIZE`), inodes in files;
/// 0 is no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuotaLimits {
    pub block_soft_kib: u64,
    pub block_hard_kib: u64,
    pub inode_soft: u64,
    pub inode_hard: u64,
}

/// quotactl(2) `Q_SETQUOTA`: sets `id`'s limits of `quota_type` (0 user, 1 group) on the
/// filesystem of block device `device`.
pub fn quotactl_set_limits(
    device: &CStr,
    quota_type: u32,
    id: u32,
    limits: QuotaLimits,
) -> std::io::Result<()> {
    let mut block = libc::dqblk {
        dqb_bhardlimit: limits.block_hard_kib,
        dqb_bsoftlimit: limits.block_soft_kib,
        dqb_curspace: 0,
        dqb_ihardlimit: limits.inode_hard,
        dqb_isoftlimit: limits.inode_soft,
        dqb_curinodes: 0,
        dqb_btime: 0,
        dqb_itime: 0,
        dqb_valid: QIF_LIMITS,
    };
    // SAFETY: `device` is a NUL-terminated string and `block` a `struct if_dqblk` on our
    // stack, both live for the call; Q_SETQUOTA only reads them.
    let ret = unsafe {
        libc::quotactl(
            qcmd(Q_SETQUOTA, quota_type),
            device.as_ptr(),
            id as libc::c_int,
            (&raw mut block).cast(),
        )
    };
    nix::errno::Errno::result(ret).map(drop).map_err(Into::into)
}

/// quotactl(2) `Q_GETQUOTA`: `id`'s usage of `quota_type` on `device`, in bytes.
pub fn quotactl_space_used(device: &CStr, quota_type: u32, id: u32) -> std::io::Result<u64> {
    let mut block = libc::dqblk {
        dqb_bhardlimit: 0,
        dqb_bsoftlimit: 0,
        dqb_curspace: 0,
        dqb_ihardlimit: 0,
        dqb_isoftlimit: 0,
        dqb_curinodes: 0,
        dqb_btime: 0,
        dqb_itime: 0,
        dqb_valid: 0,
    };
    // SAFETY: as in quotactl_set_limits; Q_GETQUOTA writes one `struct if_dqblk`, which
    // `block` is.
    let ret = unsafe {
        libc::quotactl(
            qcmd(Q_GETQUOTA, quota_type),
            device.as_ptr(),
            id as libc::c_int,
            (&raw mut block).cast(),
        )
    };
    nix::errno::Errno::result(ret)?;
    Ok(block.dqb_curspace)
}
