//! Soak (issue 14, item 5): 100,000 cycles of subscribe → add a watch → (every tenth
//! cycle) read its initial state to SYNC → close, the kinds taken in turn (mounts, devices,
//! files, keys), against the release daemon. Printed: the daemon's open descriptors
//! (`/proc/PID/fd`), VmRSS and VmHWM at the start and after 1,000, 10,000, 50,000 and
//! 100,000 cycles, the cycles per second of each stretch, and the errors seen, which must
//! be none. Descriptors must end where they started, and RSS must level off.
//! `SOAK_ONLY=files` (or mounts, devices, keys) takes one kind only, to find which leaks.
//!
//! Run it as root, with a fresh release build of the daemon:
//!
//! ```sh
//! cargo build --release --workspace && cargo bench -p watchd-e2e --bench soak
//! ```
//!
//! Like the end-to-end tests it runs in a private mount namespace, on a private
//! `dbus-daemon`. The keys watches are on root's `@user` keyring: the run touches the
//! kernel's key state, so no key test should run at the same time. Results:
//! docs/benchmarks.md.

use std::cell::{Cell, RefCell};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use watchd_client::{Client, SubscribeOptions, WatchOptions};
use watchd_e2e::bench::{daemon_profile, machine};
use watchd_e2e::{Env, mounts};
use watchd_proto::{RecordType, meta};

const COMMAND: &str = "cargo build --release --workspace && cargo bench -p watchd-e2e --bench soak";
const CYCLES: u64 = 100_000;
/// Where the table gets a row.
const CHECKPOINTS: [u64; 4] = [1_000, 10_000, 50_000, CYCLES];
/// Cycles in flight at once, on the one client connection: a client's calls overlap, as
/// several programs' would.
const IN_FLIGHT: usize = 4;
/// Every this many cycles, the watch is added with "initial" and read up to its SYNC.
const READ_EVERY: u64 = 10;
const KINDS: [&str; 4] = ["mounts", "devices", "files", "keys"];

fn main() -> ExitCode {
    watchd_e2e::bench::main("soak", false, bench)
}

/// The daemon's open descriptors, VmRSS and VmHWM (KiB).
#[derive(Clone, Copy, Debug)]
struct Sample {
    fds: usize,
    rss_kib: u64,
    hwm_kib: u64,
}

fn sample(env: &Env) -> Result<Sample> {
    let (rss_kib, hwm_kib) = env.daemon.memory_kib()?;
    Ok(Sample {
        fds: env.daemon.fd_count()?,
        rss_kib,
        hwm_kib,
    })
}

/// Waits until the daemon has no subscription left (each closed pipe is noticed by the
/// daemon on its own, a moment after the close).
async fn wait_for_none(client: &Client) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = client.status().await?;
        if status.subscriptions == 0 && status.watches == 0 {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{} subscriptions and {} watches still there 30 s after the last close",
            status.subscriptions,
            status.watches
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A sample once the daemon's descriptors are back to `fds`, or after 5 s: a source lets
/// go of what its last watch used a moment after the watch ends (a mount namespace's
/// fanotify group and mountinfo when its follower next wakes).
async fn settled(env: &Env, fds: usize) -> Result<Sample> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = sample(env)?;
        if now.fds <= fds || Instant::now() >= deadline {
            return Ok(now);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the cycles share: the next cycle's number and the errors seen.
struct Run<'a> {
    client: &'a Client,
    /// The mounts watches' path (the scratch directory) and the files watches' directory.
    scratch: String,
    files: String,
    next: Cell<u64>,
    errors: Cell<u64>,
    first_errors: RefCell<Vec<String>>,
}

impl Run<'_> {
    /// Runs cycles until `until` have been started; each failure is counted, not fatal.
    async fn worker(&self, until: u64) {
        loop {
            let n = self.next.get();
            if n >= until {
                return;
            }
            self.next.set(n + 1);
            if let Err(e) = self.cycle(n).await {
                self.errors.set(self.errors.get() + 1);
                let mut first = self.first_errors.borrow_mut();
                if first.len() < 5 {
                    first.push(format!("cycle {n} ({}): {e:#}", KINDS[(n % 4) as usize]));
                }
            }
        }
    }

    async fn cycle(&self, n: u64) -> Result<()> {
        let kind = std::env::var("SOAK_ONLY")
            .ok()
            .and_then(|k| KINDS.iter().position(|x| *x == k))
            .unwrap_or((n % KINDS.len() as u64) as usize);
        let read = n.is_multiple_of(READ_EVERY);
        let sub = self.client.subscribe(SubscribeOptions::default()).await?;
        let options = match KINDS[kind] {
            "mounts" => WatchOptions::new().path(self.scratch.as_str()),
            "devices" => WatchOptions::new().option("subsystem", "block"),
            "files" => WatchOptions::new().path(self.files.as_str()),
            _ => WatchOptions::new().option("key", "@user"),
        }
        .initial(read);
        sub.add_watch(1, KINDS[kind], &options).await?;
        if read {
            let mut events = sub.into_events();
            loop {
                let event = tokio::time::timeout(Duration::from_secs(10), events.next())
                    .await
                    .context("no SYNC within 10 s")?
                    .context("the pipe ended before SYNC")??;
                if event.header().is(RecordType::Meta, meta::SYNC) {
                    break;
                }
                ensure!(
                    !event.header().is(RecordType::Meta, meta::LOSS),
                    "a LOSS in the initial state"
                );
            }
        }
        Ok(())
    }
}

async fn bench() -> Result<()> {
    let profile = daemon_profile(COMMAND)?;
    let machine = machine(&profile);
    let env = Env::start("bench-soak").await?;
    let top = env.scratch.join("files");
    mounts::tmpfs(&top, "bench-soak", "size=1m")?;
    std::fs::write(top.join("a"), b"")?;
    let client = env.client().await?;
    let run = Run {
        client: &client,
        scratch: env.scratch.path.to_str().context("UTF-8 path")?.to_owned(),
        files: top.to_str().context("UTF-8 path")?.to_owned(),
        next: Cell::new(0),
        errors: Cell::new(0),
        first_errors: RefCell::new(Vec::new()),
    };
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let start = sample(&env)?;
    eprintln!(
        "soak: {CYCLES} cycles, {IN_FLIGHT} in flight, daemon {} (load average {})",
        env.daemon.pid(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    eprintln!("  start: {start:?}");
    let mut rows = vec![("start".to_owned(), start, None)];
    let began = Instant::now();
    let mut done = 0;
    for checkpoint in CHECKPOINTS {
        let stretch = Instant::now();
        let workers: Vec<_> = (0..IN_FLIGHT).map(|_| run.worker(checkpoint)).collect();
        futures_join_all(workers).await;
        wait_for_none(&client).await?;
        let rate = (checkpoint - done) as f64 / stretch.elapsed().as_secs_f64();
        done = checkpoint;
        let now = settled(&env, start.fds).await?;
        eprintln!(
            "  {checkpoint} cycles after {:.0} s: {now:?}, {rate:.0}/s, {} errors",
            began.elapsed().as_secs_f64(),
            run.errors.get()
        );
        rows.push((format!("{checkpoint}"), now, Some(rate)));
    }
    let load_end = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    println!(
        "\nMachine: {} cores ({}), kernel {}, {} profile, {}; load average {} at the start, {} at the end",
        machine.cores,
        machine.cpu,
        machine.kernel,
        machine.profile,
        machine.date,
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        load_end
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "{CYCLES} cycles of subscribe, add a watch (mounts, devices, files, keys in turn; every \
         {READ_EVERY}th with its initial state read to SYNC), close; {IN_FLIGHT} in flight; {:.0} s in all\n",
        began.elapsed().as_secs_f64()
    );
    println!("| cycles | open fds | VmRSS KiB | VmHWM KiB | cycles/s in the stretch |");
    println!("|---:|---:|---:|---:|---:|");
    for (label, s, rate) in &rows {
        let rate = rate.map_or_else(|| "".to_owned(), |r| format!("{r:.0}"));
        println!(
            "| {label} | {} | {} | {} | {rate} |",
            s.fds, s.rss_kib, s.hwm_kib
        );
    }
    let errors = run.errors.get();
    println!("\nerrors: {errors}");
    for e in run.first_errors.borrow().iter() {
        println!("  {e}");
    }
    let end = rows.last().expect("rows").1;
    if errors > 0 {
        bail!("{errors} cycles failed");
    }
    ensure!(
        end.fds == start.fds,
        "the daemon holds {} descriptors after {CYCLES} cycles and its watches' end, {} at the start",
        end.fds,
        start.fds
    );
    Ok(())
}

/// Runs the futures together on this thread until all are done.
async fn futures_join_all<F: std::future::Future<Output = ()>>(futures: Vec<F>) {
    let mut set = Vec::new();
    for f in futures {
        set.push(Box::pin(f));
    }
    std::future::poll_fn(|cx| {
        set.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if set.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}
