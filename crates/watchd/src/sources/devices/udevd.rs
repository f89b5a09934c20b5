//! Whether systemd-udevd runs, followed while the daemon runs (`device_events = "auto"`).
//!
//! udevd runs when something accepts connections on its control socket: the socket file
//! alone proves nothing, since udevd leaves it behind when it is killed. A connection (made
//! and closed at once, nothing sent) is tried only when something may have changed:
//!
//! - inotify on `/run` (for `/run/udev` appearing) and `/run/udev` (for `control` being
//!   created, removed or renamed): udevd binds it when it starts and removes it when it
//!   stops cleanly. Right after such an event udevd may have bound but not yet listen, so
//!   a refused connection is tried again a few times, shortly after.
//! - a pidfd on udevd, whose PID the connection's peer credentials give when udevd bound
//!   the socket itself: readable the moment udevd dies, even by SIGKILL. Under systemd the
//!   socket belongs to PID 1 (socket activation) and there is no process to follow.
//! - a backstop check every [`BACKSTOP`], for anything the two above could not see.
#![forbid(unsafe_code)]

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use nix::sys::socket::{
    AddressFamily, SockFlag, SockType, UnixAddr, connect, getsockopt, socket, sockopt,
};

/// Where udevd listens for `udevadm control` while it runs.
const CONTROL_SOCKET: &str = "/run/udev/control";
const RUN: &str = "/run";
const RUN_UDEV: &str = "/run/udev";
/// How often the control socket is tried when nothing else would say that udevd stopped
/// or started.
const BACKSTOP: Duration = Duration::from_secs(10);
/// After the control socket appeared: udevd binds it, then listens; a refused connection
/// in between is tried again this often, this many times.
const QUICK_RETRY: Duration = Duration::from_millis(100);
const QUICK_RETRIES: u32 = 30;

/// What a connection to the control socket says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Probe {
    /// Accepted (or the queue is full: someone listens); the listener's PID when known.
    Running(Option<u32>),
    /// No socket, or nobody listens on it (a socket file left by a killed udevd).
    Stopped,
}

/// Tries the control socket at `path` without sending anything. Non-blocking: a udevd that
/// is stopped (SIGSTOP) or busy never holds up the device thread.
fn probe(path: &str) -> Probe {
    let Ok(socket) = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    ) else {
        return Probe::Stopped;
    };
    let Ok(address) = UnixAddr::new(path) else {
        return Probe::Stopped;
    };
    match connect(socket.as_raw_fd(), &address) {
        Ok(()) => Probe::Running(
            getsockopt(&socket, sockopt::PeerCredentials)
                .ok()
                .and_then(|c| u32::try_from(c.pid()).ok()),
        ),
        Err(Errno::EAGAIN) => Probe::Running(None),
        Err(_) => Probe::Stopped,
    }
}

/// Follows udevd: [`UdevdWatch::running`] says whether it runs now; the device thread polls
/// [`UdevdWatch::fds`] and calls [`UdevdWatch::woken`] when one is readable or
/// [`UdevdWatch::timeout`] passed.
pub struct UdevdWatch {
    /// None when the kernel gave no inotify instance: the backstop alone is left.
    inotify: Option<Inotify>,
    run: Option<WatchDescriptor>,
    run_udev: Option<WatchDescriptor>,
    /// udevd's, while it runs and bound its own socket.
    pidfd: Option<OwnedFd>,
    running: bool,
    next_check: Instant,
    quick_retries_left: u32,
}

impl UdevdWatch {
    pub fn new() -> UdevdWatch {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .inspect_err(|e| {
                tracing::warn!(error = %e, "no inotify: udevd starting or stopping is noticed within {BACKSTOP:?}");
            })
            .ok();
        let mut watch = UdevdWatch {
            inotify,
            run: None,
            run_udev: None,
            pidfd: None,
            running: false,
            next_check: Instant::now() + BACKSTOP,
            quick_retries_left: 0,
        };
        // Without /run (a bare chroot) only the backstop is left.
        watch.run = watch.inotify.as_ref().and_then(|inotify| {
            inotify
                .add_watch(RUN, AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO)
                .ok()
        });
        watch.watch_run_udev();
        watch.check();
        watch
    }

    pub fn running(&self) -> bool {
        self.running
    }

    /// The inotify descriptor, and udevd's pidfd while there is one.
    pub fn fds(&self) -> Vec<BorrowedFd<'_>> {
        self.inotify
            .as_ref()
            .map(AsFd::as_fd)
            .into_iter()
            .chain(self.pidfd.as_ref().map(AsFd::as_fd))
            .collect()
    }

    /// How long until the next check is due.
    pub fn timeout(&self) -> Duration {
        self.next_check.saturating_duration_since(Instant::now())
    }

    /// Something in `fds` was readable, or the timeout passed: looks again.
    pub fn woken(&mut self) {
        let mut control_changed = false;
        while let Some(Ok(events)) = self.inotify.as_ref().map(Inotify::read_events) {
            if events.is_empty() {
                break;
            }
            for event in events {
                let name = event.name.as_deref();
                if event.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                    control_changed = true;
                } else if Some(event.wd) == self.run && name == Some(OsStr::new("udev")) {
                    self.watch_run_udev();
                    control_changed = true;
                } else if Some(event.wd) == self.run_udev
                    && (name == Some(OsStr::new("control"))
                        || event.mask.contains(AddWatchFlags::IN_IGNORED))
                {
                    if event.mask.contains(AddWatchFlags::IN_IGNORED) {
                        self.run_udev = None;
                    }
                    control_changed = true;
                }
            }
        }
        if control_changed {
            self.quick_retries_left = QUICK_RETRIES;
        }
        let pid_ended = self.pidfd.as_ref().is_some_and(|fd| {
            let mut fds = [nix::poll::PollFd::new(
                fd.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO).unwrap_or(0) > 0
        });
        if pid_ended {
            // Readable for good: a udevd that answers next has a pidfd of its own.
            self.pidfd = None;
        }
        if control_changed || pid_ended || Instant::now() >= self.next_check {
            self.check();
        }
    }

    fn watch_run_udev(&mut self) {
        if let (None, Some(inotify)) = (&self.run_udev, &self.inotify) {
            self.run_udev = inotify
                .add_watch(
                    RUN_UDEV,
                    AddWatchFlags::IN_CREATE
                        | AddWatchFlags::IN_DELETE
                        | AddWatchFlags::IN_MOVED_TO
                        | AddWatchFlags::IN_MOVED_FROM,
                )
                .ok();
        }
    }

    fn check(&mut self) {
        let probe = probe(CONTROL_SOCKET);
        let was_running = self.running;
        match probe {
            Probe::Running(pid) => {
                self.running = true;
                // PID 1 holds the socket for a socket-activated udevd: it never ends.
                if let Some(pid) = pid.filter(|&p| p > 1) {
                    self.pidfd = crate::sys::pidfd_open(pid).ok();
                } else if !was_running {
                    self.pidfd = None;
                }
            }
            Probe::Stopped => {
                self.running = false;
                self.pidfd = None;
            }
        }
        if self.running != was_running {
            tracing::info!(running = self.running, ?probe, "udevd's control socket");
        }
        let quick = !self.running && self.quick_retries_left > 0;
        if quick {
            self.quick_retries_left -= 1;
        } else {
            self.quick_retries_left = 0;
        }
        self.next_check = Instant::now() + if quick { QUICK_RETRY } else { BACKSTOP };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{Backlog, bind, listen};

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("watchd-udevd-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_socket_file_nobody_listens_on_is_a_stopped_udevd() {
        let dir = scratch("probe");
        let path = dir.join("control");
        let path = path.to_str().unwrap();
        assert_eq!(probe(path), Probe::Stopped, "no socket at all");

        let listener = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        bind(listener.as_raw_fd(), &UnixAddr::new(path).unwrap()).unwrap();
        listen(&listener, Backlog::new(1).unwrap()).unwrap();
        assert_eq!(
            probe(path),
            Probe::Running(Some(std::process::id())),
            "the listener's PID, from its credentials"
        );
        drop(listener);
        assert!(std::path::Path::new(path).exists(), "the socket file stays");
        assert_eq!(probe(path), Probe::Stopped, "a stale socket file");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
