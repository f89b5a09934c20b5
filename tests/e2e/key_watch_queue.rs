//! The kernel's key notifications (watch queues), read by `watchd::sources::keys::queue`.
//! The test machines' kernel has no `CONFIG_WATCH_QUEUE`, so `watch-queue-probe` runs in a
//! VM booting a kernel that has it (`watchd_e2e::vm`): it makes real key changes — add,
//! update, link, unlink, setperm, revoke, invalidate, clear, unwatch, an overflowing queue —
//! and checks each note `KeyQueue` reads, serials included. Then `watchd-vm-probe` runs the
//! daemon itself there, on a private dbus-daemon, with a 60 s poll interval: a client's key
//! watch must see each change, in the kernel's vocabulary, within seconds, which only the
//! watch queue can have told the daemon. The first run builds the kernel (minutes); later
//! runs reuse it from `target/vm/`.

use std::path::Path;

use anyhow::{Result, ensure};
use watchd_e2e::{Trial, vm};

pub fn trials() -> Vec<Trial> {
    vec![
        Trial::test(
            "key_watch_queue::kernel_key_notifications_are_read_by_key_queue_in_a_vm",
            || notifications_in_a_vm().map_err(|e| format!("{e:#}").into()),
        ),
        Trial::test(
            "key_watch_queue::the_daemon_reports_key_changes_from_the_watch_queue_in_a_vm",
            || daemon_in_a_vm().map_err(|e| format!("{e:#}").into()),
        ),
    ]
}

/// Every check `watchd-vm-probe` makes; each must print `ok NAME`.
const DAEMON_CHECKS: &[&str] = &[
    "status",
    "files unavailable",
    "newring",
    "add",
    "update",
    "update again",
    "link",
    "unlink",
    "setperm",
    "set timeout",
    "revoke",
    "add k2",
    "invalidate",
    "add into the ring",
    "clear",
    "silence",
    "unwatched",
];

fn daemon_in_a_vm() -> Result<()> {
    let probe = Path::new(env!("CARGO_BIN_EXE_watchd-vm-probe"));
    let watchd = watchd_e2e::fresh_watchd()?;
    let Some(out) = vm::or_skip("key_watch_queue", vm::run_daemon_probe(probe, &watchd, &[]))?
    else {
        return Ok(());
    };
    eprintln!(
        "key_watch_queue: the VM ({}) ran dbus-daemon, watchd and the client in {:.1?}",
        out.accel, out.elapsed
    );
    out.expect_checks("key_watch_queue", DAEMON_CHECKS)
}

/// `watch-queue-probe`'s exit status for a kernel without watch queues.
const NO_WATCH_QUEUES: i32 = 3;

/// Every check the probe makes; each must print `ok NAME`.
const CHECKS: &[&str] = &[
    "watch_posts_nothing",
    "add_key_links_into_watched_keyring",
    "update",
    "add_key_of_an_existing_name_updates_in_place",
    "add_key_of_an_existing_name_is_an_update",
    "a_key_outside_the_watched_tree_is_not_reported",
    "link",
    "unlink",
    "setperm",
    "revoke",
    "add_key_again",
    "invalidate_then_destroyed",
    "clear_then_unlinked_key_destroyed",
    "unwatch_ends_the_watch",
    "unwatching_twice_is_refused",
    "overflow_is_reported_as_loss",
];

fn notifications_in_a_vm() -> Result<()> {
    let probe = Path::new(env!("CARGO_BIN_EXE_watch-queue-probe"));
    let Some(out) = vm::or_skip("key_watch_queue", vm::run(probe, &[]))? else {
        return Ok(());
    };
    eprintln!(
        "key_watch_queue: the VM ({}) booted, ran the probe and powered off in {:.1?}",
        out.accel, out.elapsed
    );
    ensure!(
        out.status != NO_WATCH_QUEUES,
        "the VM's kernel has no watch queues:\n{}",
        out.output
    );
    out.expect_checks("key_watch_queue", CHECKS)
}
