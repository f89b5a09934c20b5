//! Cutting a thread's blocking system call short: a no-op signal handler installed without
//! `SA_RESTART`, and a POSIX timer that sends that signal to one thread only
//! (`SIGEV_THREAD_ID`). A call sleeping interruptibly when the signal arrives returns early
//! (`EINTR`, or whatever the call makes of `-ERESTARTSYS`); [`interrupts`] tells the caller
//! that the signal came. One safe function per call: [`install_interrupt_handler`]
//! (sigaction(2)), [`gettid`] (gettid(2), through rustix), [`ThreadTimer::new`] (timer_create(2)),
//! [`ThreadTimer::set`] (timer_settime(2)); dropping a [`ThreadTimer`] calls
//! timer_delete(2).
#![allow(unsafe_code)] // sigaction(2) (unsafe in any wrapper: the handler runs as a signal) and the POSIX timer calls.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How many times the handler of [`install_interrupt_handler`] ran, in any thread.
static INTERRUPTS: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_interrupt(_signal: libc::c_int) {
    // Async-signal-safe: one atomic add.
    INTERRUPTS.fetch_add(1, Ordering::Relaxed);
}

/// How many interrupting signals have arrived so far: a caller compares the count before
/// and after a call to learn whether the call was cut short.
pub fn interrupts() -> u64 {
    INTERRUPTS.load(Ordering::Relaxed)
}

/// The signal the key thread's timer sends: one of the real-time signals nothing else in
/// the daemon uses (glibc keeps `SIGRTMIN`'s first two for itself and reports the rest).
pub fn key_thread_signal() -> libc::c_int {
    libc::SIGRTMIN() + 7
}

/// `sigaction(2)`: installs, process-wide, a handler for `signal` that only counts
/// ([`interrupts`]), without `SA_RESTART`, so that a system call sleeping interruptibly
/// when `signal` arrives is not restarted but returns.
pub fn install_interrupt_handler(signal: libc::c_int) -> io::Result<()> {
    // SAFETY: an all-zero sigaction is a valid value of this plain C struct (no handler,
    // empty mask, no flags); every field used is set below.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_interrupt as extern "C" fn(libc::c_int) as libc::sighandler_t;
    action.sa_flags = 0;
    // SAFETY: `action.sa_mask` is a live sigset_t that sigemptyset only writes.
    unsafe { libc::sigemptyset(&mut action.sa_mask) };
    // SAFETY: `action` is a valid sigaction whose handler is async-signal-safe and lives for
    // the whole program; the old action is not asked for (null).
    let ret = unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) };
    if ret == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `gettid(2)` (rustix's): the calling thread's id.
pub fn gettid() -> libc::pid_t {
    rustix::thread::gettid().as_raw_nonzero().get()
}

/// A POSIX timer on `CLOCK_MONOTONIC` whose expirations send a signal to one thread.
/// Not `Send`: it belongs to the thread that made it.
pub struct ThreadTimer {
    id: libc::timer_t,
}

impl ThreadTimer {
    /// `timer_create(2)` with `SIGEV_THREAD_ID`: a disarmed timer that, once set, sends
    /// `signal` to the calling thread only.
    pub fn new(signal: libc::c_int) -> io::Result<ThreadTimer> {
        // SAFETY: an all-zero sigevent is a valid value of this plain C struct; the fields
        // the kernel reads for SIGEV_THREAD_ID are set below.
        let mut event: libc::sigevent = unsafe { std::mem::zeroed() };
        event.sigev_notify = libc::SIGEV_THREAD_ID;
        event.sigev_signo = signal;
        event.sigev_notify_thread_id = gettid();
        let mut id: libc::timer_t = std::ptr::null_mut();
        // SAFETY: `event` and `id` are live for the call; the kernel reads the first and
        // writes the timer's id into the second.
        let ret = unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut event, &mut id) };
        if ret == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(ThreadTimer { id })
    }

    /// `timer_settime(2)`: first expiry `first` from now, then every `every`; a zero
    /// `first` disarms the timer.
    pub fn set(&self, first: Duration, every: Duration) -> io::Result<()> {
        let spec = |d: Duration| libc::timespec {
            tv_sec: d.as_secs() as libc::time_t,
            tv_nsec: d.subsec_nanos() as libc::c_long,
        };
        let value = libc::itimerspec {
            it_value: spec(first),
            it_interval: spec(every),
        };
        // SAFETY: `self.id` is a timer this object created and has not deleted; `value` is
        // live for the call and the old value is not asked for (null).
        let ret = unsafe { libc::timer_settime(self.id, 0, &value, std::ptr::null_mut()) };
        if ret == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for ThreadTimer {
    fn drop(&mut self) {
        // SAFETY: `self.id` is a timer this object created; it is deleted once, here.
        unsafe { libc::timer_delete(self.id) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn the_thread_timer_cuts_a_blocking_read_short() {
        install_interrupt_handler(key_thread_signal()).unwrap();
        let timer = ThreadTimer::new(key_thread_signal()).unwrap();
        let (read, _write) = nix::unistd::pipe().unwrap();
        let mut read = std::fs::File::from(read);
        let before = interrupts();
        timer
            .set(Duration::from_millis(20), Duration::from_millis(20))
            .unwrap();
        let mut byte = [0u8; 1];
        // std's read does not retry EINTR: the empty pipe's read returns it.
        let got = read.read(&mut byte);
        timer.set(Duration::ZERO, Duration::ZERO).unwrap();
        assert_eq!(got.unwrap_err().kind(), io::ErrorKind::Interrupted);
        assert!(interrupts() > before);
    }
}
