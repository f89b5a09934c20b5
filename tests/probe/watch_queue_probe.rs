//! watch-queue-probe: proves `watchd::sources::keys::queue` against a kernel that has watch
//! queues. Run as root (by e2e/key_watch_queue.rs, inside a VM), it makes real keys in a
//! session keyring of its own, watches them through a `KeyQueue` and checks, change by
//! change, that exactly the expected notes arrive with the right serials. One line per check
//! (`ok NAME: …` or `FAIL NAME: …`), then a summary.
//!
//! Exit status: 0 every check passed, 1 some failed, 2 the probe could not run (a key
//! operation failed), [`NO_WATCH_QUEUES`] the kernel has no watch queues (ENOPKG).
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use watchd::sources::keys::queue::{KeyQueue, QueueRecord};
use watchd::sys::{self, KeySerial};
use watchd_e2e::sys::{
    IntegerOp, KEYCTL_CLEAR, KEYCTL_INVALIDATE, KEYCTL_REVOKE, KEYCTL_SETPERM, keyctl_update,
};
use watchd_proto::key;

/// The exit status when `pipe2(O_NOTIFICATION_PIPE)` fails with ENOPKG.
const NO_WATCH_QUEUES: u8 = 3;

/// How long the kernel's key garbage collector may take to destroy an unreferenced key (it
/// runs as soon as it is scheduled; this is slack for a slow emulated CPU).
const GC_LIMIT: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let queue = match KeyQueue::open(256) {
        Ok(queue) => queue,
        Err(e) if e.raw_os_error() == Some(libc::ENOPKG) => {
            println!(
                "NO WATCH QUEUES: pipe2(O_NOTIFICATION_PIPE) failed with {e}: this kernel lacks \
                 CONFIG_WATCH_QUEUE"
            );
            return ExitCode::from(NO_WATCH_QUEUES);
        }
        Err(e) => {
            println!("SETUP FAILED: opening the key queue: {e}");
            return ExitCode::from(2);
        }
    };
    let mut probe = Probe {
        queue,
        checks: 0,
        failed: 0,
    };
    if let Err(e) = probe.run() {
        println!("SETUP FAILED: {e:#}");
        return ExitCode::from(2);
    }
    println!("probe: {} checks, {} failed", probe.checks, probe.failed);
    if probe.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

struct Probe {
    queue: KeyQueue,
    checks: usize,
    failed: usize,
}

fn note(serial: KeySerial, subtype: u8) -> QueueRecord {
    QueueRecord::Key {
        serial,
        subtype,
        aux: None,
    }
}

fn link_note(keyring: KeySerial, subtype: u8, key: KeySerial) -> QueueRecord {
    QueueRecord::Key {
        serial: keyring,
        subtype,
        aux: Some(key),
    }
}

fn removed(serial: KeySerial) -> QueueRecord {
    QueueRecord::Removed {
        serial: Some(serial),
    }
}

impl Probe {
    fn run(&mut self) -> Result<()> {
        let session = sys::keyctl_join_new_session_keyring().context("joining a session")?;
        let ring = add_key("keyring", "watchd-probe", b"", session)?;
        self.queue.watch(ring).context("watching the keyring")?;
        self.expect("watch_posts_nothing", &[])?;

        let a = add_key("user", "a", b"one", ring)?;
        self.expect(
            "add_key_links_into_watched_keyring",
            &[link_note(ring, key::LINKED, a)],
        )?;

        self.queue.watch(a).context("watching key a")?;
        update(a, b"two")?;
        self.expect("update", &[note(a, key::UPDATED)])?;

        let same = add_key("user", "a", b"three", ring)?;
        self.expect_that(
            "add_key_of_an_existing_name_updates_in_place",
            same == a,
            format!("add_key returned {same}, the existing key is {a}"),
        );
        self.expect(
            "add_key_of_an_existing_name_is_an_update",
            &[note(a, key::UPDATED)],
        )?;

        let b = add_key("user", "b", b"x", session)?;
        self.expect("a_key_outside_the_watched_tree_is_not_reported", &[])?;
        sys::keyctl_link(b, ring).context("linking b")?;
        self.expect("link", &[link_note(ring, key::LINKED, b)])?;
        sys::keyctl_unlink(b, ring).context("unlinking b")?;
        self.expect("unlink", &[link_note(ring, key::UNLINKED, b)])?;

        // Possessor: everything; user: view, read, write, search.
        keyctl(KEYCTL_SETPERM, a, 0x3f1b_0000)?;
        self.expect("setperm", &[note(a, key::SETATTR)])?;

        keyctl(KEYCTL_REVOKE, a, 0)?;
        self.expect("revoke", &[note(a, key::REVOKED)])?;

        let c = add_key("user", "c", b"y", ring)?;
        self.expect("add_key_again", &[link_note(ring, key::LINKED, c)])?;
        self.queue.watch(c).context("watching key c")?;
        keyctl(KEYCTL_INVALIDATE, c, 0)?;
        // The garbage collector then unlinks and destroys c at once, which ends its watch.
        self.expect_within(
            "invalidate_then_destroyed",
            &[note(c, key::INVALIDATED), removed(c)],
            GC_LIMIT,
        )?;

        // The keyring held the last link to the revoked a: the collector destroys it.
        keyctl(KEYCTL_CLEAR, ring, 0)?;
        self.expect_within(
            "clear_then_unlinked_key_destroyed",
            &[note(ring, key::CLEARED), removed(a)],
            GC_LIMIT,
        )?;

        self.queue.unwatch(ring).context("unwatching the keyring")?;
        self.expect("unwatch_ends_the_watch", &[removed(ring)])?;
        self.expect_that(
            "unwatching_twice_is_refused",
            self.queue
                .unwatch(ring)
                .is_err_and(|e| e.raw_os_error() == Some(libc::EBADSLT)),
            "a second unwatch did not fail with EBADSLT".into(),
        );

        self.loss(session)
    }

    /// A queue of one page (32 notes) and 100 updates before anyone reads: the reader is
    /// told it lost notes.
    fn loss(&mut self, session: KeySerial) -> Result<()> {
        let mut small = KeyQueue::open(1).context("opening a small queue")?;
        let d = add_key("user", "d", b"0", session)?;
        small.watch(d).context("watching key d")?;
        for i in 0..100 {
            update(d, format!("{i}").as_bytes())?;
        }
        let mut got = Vec::new();
        small.drain(&mut got).context("draining the small queue")?;
        let updates = got.iter().filter(|r| **r == note(d, key::UPDATED)).count();
        let losses = got.iter().filter(|r| **r == QueueRecord::Loss).count();
        self.expect_that(
            "overflow_is_reported_as_loss",
            losses > 0 && updates < 100 && updates + losses == got.len(),
            format!("{updates} updates and {losses} losses in {got:?}"),
        );
        Ok(())
    }

    fn expect(&mut self, name: &str, expected: &[QueueRecord]) -> Result<()> {
        let mut got = Vec::new();
        self.queue.drain(&mut got).context("draining the queue")?;
        self.expect_that(
            name,
            got == expected,
            format!("expected {expected:?}, got {got:?}"),
        );
        Ok(())
    }

    /// Like [`Probe::expect`], for notes that the kernel posts later (from its garbage
    /// collector): waits on the queue until as many records arrived, or `limit`.
    fn expect_within(
        &mut self,
        name: &str,
        expected: &[QueueRecord],
        limit: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + limit;
        let mut got = Vec::new();
        loop {
            self.queue.drain(&mut got).context("draining the queue")?;
            let left = deadline.saturating_duration_since(Instant::now());
            if got.len() >= expected.len() || left.is_zero() {
                break;
            }
            let mut fds = [PollFd::new(
                std::os::fd::AsFd::as_fd(&self.queue),
                PollFlags::POLLIN,
            )];
            let wait = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
            match poll(&mut fds, wait) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e).context("poll"),
            }
        }
        self.expect_that(
            name,
            got == expected,
            format!("expected {expected:?} within {limit:?}, got {got:?}"),
        );
        Ok(())
    }

    fn expect_that(&mut self, name: &str, passed: bool, detail: String) {
        self.checks += 1;
        if passed {
            println!("ok {name}");
        } else {
            self.failed += 1;
            println!("FAIL {name}: {detail}");
        }
    }
}

/// `add_key(2)` (the daemon's wrapper): a key of `key_type` named `description` with
/// `payload` in `keyring`, or the existing one of that name updated.
fn add_key(
    key_type: &str,
    description: &str,
    payload: &[u8],
    keyring: KeySerial,
) -> Result<KeySerial> {
    let key_type = std::ffi::CString::new(key_type)?;
    let description = std::ffi::CString::new(description)?;
    sys::add_key(&key_type, &description, payload, keyring)
        .with_context(|| format!("add_key({key_type:?}, {description:?})"))
}

/// `keyctl(2)` operations that take a key and one integer.
fn keyctl(op: IntegerOp, key: KeySerial, arg: libc::c_long) -> Result<()> {
    watchd_e2e::sys::keyctl(op, key.0.into(), arg, 0)
        .with_context(|| format!("keyctl({op:?}, {key})"))?;
    Ok(())
}

/// `KEYCTL_UPDATE`: `key`'s payload replaced.
fn update(key: KeySerial, payload: &[u8]) -> Result<()> {
    keyctl_update(key.0, payload).with_context(|| format!("KEYCTL_UPDATE of {key}"))
}
