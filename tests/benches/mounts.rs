//! Mounts at scale (issue 11): 200 mount+umount pairs made at full speed in a namespace
//! that holds 1,000 and then 10,000 other mounts, watched at once by `findmnt --poll`
//! (util-linux: mountinfo re-read and diffed on each change) and by 1 or 10 watchd
//! subscribers (fanotify mount events + statmount). Reported: changes seen out of 400, CPU
//! time of findmnt and of the daemon, and per change. Then 1,000 remounts of one mount among
//! them (changes fanotify does not report, found by the daemon's coalesced statmount scan).
//!
//! Run it as root, with a fresh release build of the daemon:
//!
//! ```sh
//! cargo build --release --workspace && cargo bench -p watchd-e2e --bench mounts
//! ```
//!
//! Everything happens in a private mount namespace (the harness's, as in the end-to-end
//! tests) on a private `dbus-daemon`; the mounts are small tmpfs, made by `mount-storm`.
//! CPU time is the sum of `/proc/PID/task/*/schedstat` (nanoseconds on a CPU) before and
//! after each run. Results and what they mean: docs/benchmarks.md.

use std::io::{BufRead, BufReader};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use watchd_client::{SubscribeOptions, WatchOptions};
use watchd_e2e::bench::{daemon_profile, machine};
use watchd_e2e::{Env, Process};
use watchd_proto::{Record, RecordType, attr, meta, mount};

const COMMAND: &str =
    "cargo build --release --workspace && cargo bench -p watchd-e2e --bench mounts";
const PAIRS: u64 = 200;
/// fanotify forced (a fallback would measure mountinfo); ten depth-256 pipes are 2,560
/// pages, over the default per-uid budget.
const DAEMON_CONFIG: &str =
    "[sources]\nmount_events = \"fanotify\"\n[limits]\nmax_pipe_pages_per_uid = 4096\n";
const REMOUNTS: u64 = 1000;

fn main() -> ExitCode {
    watchd_e2e::bench::main("mounts", false, bench)
}

/// Nanoseconds process `pid` has spent on a CPU, all its threads.
fn cpu_ns(pid: u32) -> Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let stat = std::fs::read_to_string(task?.path().join("schedstat")).unwrap_or_default();
        total += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(total)
}

fn storm(args: &[&str]) -> Result<f64> {
    let out = Command::new(env!("CARGO_BIN_EXE_mount-storm"))
        .args(args)
        .output()?;
    ensure!(
        out.status.success(),
        "mount-storm {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

/// Counts the records of one subscription's pipe that match, on a thread of its own; dropping
/// it ends the thread, which closes the pipe and so the subscription.
struct Counter {
    count: Arc<AtomicU64>,
    /// Records the pipe dropped for a slow reader (LOSS records' counts).
    lost: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Counter {
    fn get(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn counter(pipe: OwnedFd, matches: impl Fn(&Record<'_>) -> bool + Send + 'static) -> Counter {
    let count = Arc::new(AtomicU64::new(0));
    let lost = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (counted, lost_count, stopped) = (count.clone(), lost.clone(), stop.clone());
    std::thread::spawn(move || {
        let file = std::fs::File::from(pipe);
        let mut buf = [0u8; 4096];
        while !stopped.load(Ordering::Relaxed) {
            let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(50u8)) {
                Ok(0) => continue,
                Ok(_) => {}
                Err(_) => return,
            }
            match std::io::Read::read(&mut &file, &mut buf) {
                Ok(0) => return,
                Ok(n) => match Record::parse(&buf[..n]) {
                    Ok(r) if r.header.is(RecordType::Meta, meta::LOSS) => {
                        let n = r.get_u64(attr::LOST_COUNT).unwrap_or(0);
                        lost_count.fetch_add(n, Ordering::Relaxed);
                    }
                    Ok(r) if matches(&r) => {
                        counted.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                },
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    });
    Counter { count, lost, stop }
}

/// Waits until `done` holds, or nothing changed in `quiet` (as seen by `progress`).
fn settle(quiet: Duration, progress: impl Fn() -> u64, done: impl Fn() -> bool) {
    let (mut last, mut since) = (progress(), Instant::now());
    while !done() && since.elapsed() < quiet {
        std::thread::sleep(Duration::from_millis(20));
        let now = progress();
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
}

struct Row {
    mounts: usize,
    subscribers: usize,
    storm_s: f64,
    findmnt_seen: u64,
    findmnt_cpu_ns: u64,
    watchd_seen_min: u64,
    /// Records dropped at the slowest subscriber's pipe (its reader fell behind).
    watchd_lost_max: u64,
    /// The daemon's CPU in the 2.5 s after: the deferred full comparison.
    deferred_ns: u64,
    watchd_cpu_ns: u64,
}

/// `findmnt --poll`, printing ACTION and TARGET, its lines counted when they name `dir`.
fn findmnt(dir: &Path) -> Result<(Process, Arc<AtomicU64>)> {
    let mut command = Command::new("findmnt");
    command
        .args(["--poll", "--noheadings", "--output", "ACTION,TARGET"])
        .stdout(Stdio::piped());
    let mut process = Process::spawn(command, "findmnt --poll")?;
    let stdout = process.child().stdout.take().context("piped")?;
    let count = Arc::new(AtomicU64::new(0));
    let (counted, dir) = (count.clone(), dir.to_string_lossy().into_owned());
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.split_whitespace().nth(1) == Some(dir.as_str()) {
                counted.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    Ok((process, count))
}

async fn pairs_run(env: &Env, mounts: usize, subscribers: usize) -> Result<Row> {
    let dir = env.scratch.join("pairs");
    std::fs::create_dir_all(&dir)?;
    let (findmnt, findmnt_seen) = findmnt(&dir)?;
    let client = env.client().await?;
    let mut counts = Vec::new();
    for tag in 1..=subscribers as u64 {
        let subscription = client
            .subscribe(SubscribeOptions { depth: Some(256) })
            .await?;
        subscription
            .add_watch(tag, "mounts", &WatchOptions::new())
            .await?;
        let dir = dir.to_string_lossy().into_owned();
        counts.push(counter(subscription.into_pipe(), move |r| {
            r.header.record_type == RecordType::Mount as u32
                && matches!(r.header.subtype, mount::ATTACH | mount::DETACH)
                && r.get_str(attr::MOUNT_POINT).is_none_or(|p| p == dir)
        }));
    }
    // Past any comparison still owed by what came before (FULL_SCAN_INTERVAL is 2 s).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (daemon, finder) = (env.daemon.pid(), findmnt.pid());
    let before = (cpu_ns(daemon)?, cpu_ns(finder)?);
    let storm_s = storm(&["pairs", &PAIRS.to_string(), &dir.to_string_lossy()])?;
    let seen_min = || counts.iter().map(Counter::get).min().unwrap_or(0);
    let seen_sum = || counts.iter().map(Counter::get).sum::<u64>();
    let accounted = || counts.iter().map(|c| c.get() + c.lost()).min().unwrap_or(0);
    settle(Duration::from_secs(2), seen_sum, || {
        accounted() >= 2 * PAIRS
    });
    settle(
        Duration::from_secs(1),
        || findmnt_seen.load(Ordering::Relaxed),
        || findmnt_seen.load(Ordering::Relaxed) >= 2 * PAIRS,
    );
    let after = (cpu_ns(daemon)?, cpu_ns(finder)?);
    drop(findmnt);
    // The full comparison the burst left owed (filesystem options: see
    // sources/mounts/namespace.rs), which runs half a second to two seconds later.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let deferred_ns = cpu_ns(daemon)? - after.0;
    Ok(Row {
        mounts,
        subscribers,
        storm_s,
        findmnt_seen: findmnt_seen.load(Ordering::Relaxed),
        findmnt_cpu_ns: after.1 - before.1,
        watchd_seen_min: seen_min(),
        watchd_lost_max: counts.iter().map(Counter::lost).max().unwrap_or(0),
        watchd_cpu_ns: after.0 - before.0,
        deferred_ns,
    })
}

/// What one comparison costs: a single `remount,bind,ro` (no fanotify event) makes the
/// daemon compare the fixed fields of every mount at once (finding the change), then all
/// the filesystems' options half a second later. Returns the CPU of each, as a table row.
async fn comparison_run(env: &Env, mounts: usize) -> Result<String> {
    let target = env.scratch.join("compared");
    std::fs::create_dir_all(&target)?;
    nix::mount::mount(
        Some("compared"),
        &target,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=16k"),
    )?;
    let client = env.client().await?;
    let subscription = client
        .subscribe(SubscribeOptions { depth: Some(16) })
        .await?;
    subscription
        .add_watch(1, "mounts", &WatchOptions::new())
        .await?;
    let changes = counter(subscription.into_pipe(), |r| {
        r.header.is(RecordType::Mount, mount::CHANGE)
    });
    // Past any comparison still owed by earlier runs.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let daemon = env.daemon.pid();
    let before = cpu_ns(daemon)?;
    storm(&["remounts", "1", &target.to_string_lossy()])?;
    settle(Duration::from_secs(1), || 0, || changes.get() >= 1);
    let fixed = cpu_ns(daemon)? - before;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let full = cpu_ns(daemon)? - before - fixed;
    nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH)?;
    ensure!(
        changes.get() == 1,
        "the remount was reported {} times",
        changes.get()
    );
    Ok(format!(
        "| {mounts} | {:.1} ms ({:.2} µs a mount) | {:.1} ms ({:.2} µs a mount) |",
        fixed as f64 / 1e6,
        fixed as f64 / 1e3 / mounts as f64,
        full as f64 / 1e6,
        full as f64 / 1e3 / mounts as f64,
    ))
}

/// 1,000 bind-remounts of one mount, alternately ro and rw: how many CHANGE records one
/// subscriber gets (coalesced: a burst costs one comparison, then the deferred full one) and
/// the daemon's CPU per remount, all of it.
async fn remount_run(env: &Env, mounts: usize) -> Result<String> {
    let target = env.scratch.join("remounted");
    std::fs::create_dir_all(&target)?;
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16k", "remounted"])
        .arg(&target)
        .status()?;
    ensure!(status.success(), "mount {}", target.display());
    let client = env.client().await?;
    let subscription = client
        .subscribe(SubscribeOptions { depth: Some(256) })
        .await?;
    subscription
        .add_watch(1, "mounts", &WatchOptions::new())
        .await?;
    let point = target.to_string_lossy().into_owned();
    let changes = counter(subscription.into_pipe(), move |r| {
        r.header.record_type == RecordType::Mount as u32
            && r.header.subtype == mount::CHANGE
            && r.get_str(attr::MOUNT_POINT).as_deref() == Some(point.as_str())
    });
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let daemon = env.daemon.pid();
    let before = cpu_ns(daemon)?;
    let storm_s = storm(&["remounts", &REMOUNTS.to_string(), &target.to_string_lossy()])?;
    settle(Duration::from_millis(500), || changes.get(), || false);
    // Everything the burst costs, the deferred full comparison included.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let cpu = cpu_ns(daemon)? - before;
    nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH)?;
    Ok(format!(
        "| {mounts} | {REMOUNTS} in {:.0} ms | {} | {:.1} ms | {:.1} µs |",
        storm_s * 1000.0,
        changes.get(),
        cpu as f64 / 1e6,
        cpu as f64 / 1e3 / REMOUNTS as f64,
    ))
}

async fn bench() -> Result<()> {
    let profile = daemon_profile(COMMAND)?;
    let machine = machine(&profile);
    let log_level = std::ffi::OsString::from("info,watchd::sources::mounts=debug");
    let env = Env::start_with_config_and_env(
        "bench-mounts",
        DAEMON_CONFIG,
        &[("WATCHD_LOG", &log_level)],
    )
    .await?;
    let mut rows = Vec::new();
    let mut remounts = Vec::new();
    let mut comparisons = Vec::new();
    let mut made = 0;
    for (size, part) in [(1000, "a"), (10_000, "b")] {
        let fill = env.scratch.join("fill").join(part);
        std::fs::create_dir_all(&fill)?;
        storm(&["burst", &(size - made).to_string(), &fill.to_string_lossy()])?;
        made = size;
        for subscribers in [1, 10] {
            rows.push(pairs_run(&env, size, subscribers).await?);
        }
        remounts.push(remount_run(&env, size).await?);
        comparisons.push(comparison_run(&env, size).await?);
    }
    let log = env.daemon.log();
    let logged = |depth: &str| {
        log.lines()
            .filter(|l| l.contains("compared the namespace's mounts") && l.contains(depth))
            .count()
    };
    let (fixed, full) = (logged("depth=Fixed"), logged("depth=Full"));
    println!(
        "mounts: {} cores, {}, kernel {}, {} ({} daemon)\n",
        machine.cores, machine.cpu, machine.kernel, machine.date, machine.profile
    );
    println!(
        "{PAIRS} mount+umount pairs at full speed ({} changes):\n",
        2 * PAIRS
    );
    println!(
        "| other mounts | watchd subscribers | pairs made in | findmnt --poll saw | findmnt CPU | per change | watchd saw (each) | lost at a slow reader's pipe | watchd CPU | per change | watchd / findmnt |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let changes = (2 * PAIRS) as f64;
    for r in &rows {
        println!(
            "| {} | {} | {:.0} ms | {}/{} | {:.1} ms | {:.1} µs | {}/{} | {} | {:.1} ms | {:.1} µs | {:.3} | {:.1} ms |",
            r.mounts,
            r.subscribers,
            r.storm_s * 1000.0,
            r.findmnt_seen,
            2 * PAIRS,
            r.findmnt_cpu_ns as f64 / 1e6,
            r.findmnt_cpu_ns as f64 / 1e3 / changes,
            r.watchd_seen_min,
            2 * PAIRS,
            r.watchd_lost_max,
            r.watchd_cpu_ns as f64 / 1e6,
            r.watchd_cpu_ns as f64 / 1e3 / changes,
            r.watchd_cpu_ns as f64 / r.findmnt_cpu_ns.max(1) as f64,
            r.deferred_ns as f64 / 1e6,
        );
    }
    let per_change = |mounts, subscribers| {
        rows.iter()
            .find(|r| r.mounts == mounts && r.subscribers == subscribers)
            .map_or(0.0, |r| r.watchd_cpu_ns as f64)
    };
    println!(
        "\nwatchd CPU per change, 10,000 vs 1,000 other mounts: {:.2}× (1 subscriber), {:.2}× (10)",
        per_change(10_000, 1) / per_change(1000, 1),
        per_change(10_000, 10) / per_change(1000, 10),
    );
    println!("\n{REMOUNTS} bind-remounts of one mount (ro, rw, …), 1 subscriber:\n");
    println!("| other mounts | remounts | CHANGE records | watchd CPU | per remount |");
    println!("|---|---|---|---|---|");
    for line in remounts {
        println!("{line}");
    }
    println!(
        "\nComparisons of the namespace's mounts in the whole run: {fixed} of the fixed fields, {full} full."
    );
    println!("\nOne remount,bind,ro alone: the comparisons it costs (all mounts):\n");
    println!("| other mounts | fixed fields, at once | then the filesystems' options |");
    println!("|---|---|---|");
    for line in comparisons {
        println!("{line}");
    }
    Ok(())
}
