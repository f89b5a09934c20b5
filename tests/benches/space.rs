//! Space watches (issue 12, item 3): what one look at a filesystem costs, and the daemon's
//! CPU with N watches over M filesystems. The results are in docs/benchmarks.md.
//!
//! Run it as root, with a fresh release build of the daemon:
//!
//! ```sh
//! cargo build --release --workspace && cargo bench -p watchd-e2e --bench space
//! ```
//!
//! - **Look**: what the daemon does per filesystem per check, alone, 100,000 times on a
//!   tmpfs: `openat2(RESOLVE_IN_ROOT)` of the mount point from a root directory, `fstat`
//!   (is it still that filesystem), `fstatfs`, `close`; and `fstatfs` of an open
//!   descriptor alone.
//! - **CPU**: M tmpfs filesystems (plus the machine's own) under N namespace-wide watches
//!   (in subscriptions of 50), the daemon's timer forced to look at every filesystem once a
//!   second (`shortest_check_ms = longest_check_ms = 1000`): the `space` thread's run time
//!   (`/proc/PID/task/*/schedstat`) over 10 s, per filesystem look. Then the default timer
//!   with 100 tmpfs of 1 TiB each (a tmpfs's size is only a limit), far from their line:
//!   what the daemon spends when nothing is near full.

use std::ffi::CString;
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rustix::fs::{Mode, OFlags, ResolveFlags};
use watchd_client::{SubscribeOptions, WatchOptions};
use watchd_e2e::bench::{daemon_cpu, daemon_profile, machine};
use watchd_e2e::{Env, mounts};

const COMMAND: &str =
    "cargo build --release --workspace && cargo bench -p watchd-e2e --bench space";
const LOOKS: u32 = 100_000;
const WINDOW: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    watchd_e2e::bench::main("space", false, bench)
}

async fn bench() -> Result<()> {
    let profile = daemon_profile(COMMAND)?;
    let m = machine(&profile);
    println!(
        "space watches: {} cores, {}, Linux {}, {} ({} daemon)\n",
        m.cores, m.cpu, m.kernel, m.date, m.profile
    );
    look()?;
    println!(
        "\n| timer | filesystems followed | watches | looks/s | space thread CPU per look | daemon CPU over 10 s |"
    );
    println!(
        "| ----- | -------------------: | ------: | ------: | ------------------------: | -------------------: |"
    );
    for (mounts, watches) in [(10, 1), (10, 100), (100, 100)] {
        cpu(mounts, watches, true).await?;
    }
    cpu(100, 100, false).await
}

/// The cost of one look, as the daemon makes it, and of fstatfs alone.
fn look() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("watchd-bench-space-{}", std::process::id()));
    let point = dir.join("fs");
    mounts::tmpfs(&point, "bench-space", "size=64m")?;
    let root = std::fs::File::open("/")?;
    let relative = CString::new(point.strip_prefix("/")?.as_os_str().as_encoded_bytes())?;
    let started = Instant::now();
    for _ in 0..LOOKS {
        let fd = rustix::fs::openat2(
            root.as_fd(),
            relative.as_c_str(),
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )?;
        std::hint::black_box(rustix::fs::fstat(&fd)?);
        std::hint::black_box(rustix::fs::fstatvfs(&fd)?);
    }
    let whole = started.elapsed() / LOOKS;
    let fd = std::fs::File::open(&point)?;
    let started = Instant::now();
    for _ in 0..LOOKS {
        std::hint::black_box(rustix::fs::fstatvfs(&fd)?);
    }
    let alone = started.elapsed() / LOOKS;
    drop(fd);
    mounts::unmount(&point)?;
    let _ = std::fs::remove_dir_all(&dir);
    println!("| one look (openat2 + fstat + fstatfs + close) | fstatfs alone |");
    println!("| ------------------------------------------: | ------------: |");
    println!("| {} ns | {} ns |", whole.as_nanos(), alone.as_nanos());
    Ok(())
}

/// `watches` namespace-wide watches over `count` tmpfs filesystems (and the machine's own).
async fn cpu(count: usize, watches: usize, every_second: bool) -> Result<()> {
    let config = if every_second {
        "[space]\nshortest_check_ms = 1000\nlongest_check_ms = 1000\n"
    } else {
        ""
    };
    let env = Env::start_with_config("bench-space", config).await?;
    for i in 0..count {
        mounts::tmpfs(
            &env.scratch.join(&format!("fs{i}")),
            "bench-space",
            "size=64m",
        )?;
    }
    let client = env.client().await?;
    let mut subscriptions = Vec::new();
    for chunk in 0..watches.div_ceil(50) {
        let sub = client.subscribe(SubscribeOptions::default()).await?;
        for tag in 1..=50.min(watches - chunk * 50) {
            sub.add_watch(tag as u64, "space", &WatchOptions::new())
                .await?;
        }
        subscriptions.push(sub);
    }
    // The first looks (every filesystem at once, as each watch came) are not the steady state.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let followed = client
        .status()
        .await?
        .source_details
        .get("space")
        .cloned()
        .unwrap_or_default();
    let filesystems: u64 = followed
        .split("following ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .context("status names the filesystems followed")?;
    let pid = env.daemon.pid();
    let (all_before, space_before) = daemon_cpu(pid, "space")?;
    tokio::time::sleep(WINDOW).await;
    let (all_after, space_after) = daemon_cpu(pid, "space")?;
    let looks = if every_second {
        filesystems * WINDOW.as_secs()
    } else {
        0
    };
    let per_look = match looks {
        0 => "–".to_owned(),
        n => format!(
            "{:.1} µs",
            space_after.saturating_sub(space_before) as f64 / n as f64 / 1000.0
        ),
    };
    println!(
        "| {} | {filesystems} | {watches} | {} | {per_look} | {:.2} ms (space thread {:.2} ms) |",
        if every_second {
            "every 1 s (forced)"
        } else {
            "default (1 s – 5 min)"
        },
        if every_second {
            filesystems.to_string()
        } else {
            "–".into()
        },
        all_after.saturating_sub(all_before) as f64 / 1e6,
        space_after.saturating_sub(space_before) as f64 / 1e6,
    );
    drop(subscriptions);
    Ok(())
}
