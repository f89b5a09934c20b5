//! The harness's only `unsafe` code: what a child runs between fork and exec
//! (`Command::pre_exec`, whose closure must stay async-signal-safe) and the loop-control
//! ioctl no crate wraps. One safe function each; the calls inside are nix's.
#![allow(unsafe_code)] // pre_exec (an unsafe fn) and ioctl(2) on /dev/loop-control.

use std::ffi::CString;
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
