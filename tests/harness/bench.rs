//! What the benchmarks (`tests/benches/`) share: a monotonic nanosecond clock and its
//! offset to CLOCK_REALTIME (records carry real-time stamps), a cheap jitter for pacing,
//! nearest-rank percentiles, the machine a run was made on, and the check that the daemon
//! under test is a fresh build.

use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Command, ExitCode};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Result, anyhow};
use nix::fcntl::{FcntlArg, OFlag, fcntl};

/// Nanoseconds on this process's monotonic clock (from its first call).
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// CLOCK_REALTIME minus [`now_ns`], in ns, from the tightest of 1,000 paired readings.
pub fn realtime_offset() -> i64 {
    (0..1000)
        .map(|_| {
            let before = now_ns();
            let real = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as i64);
            let after = now_ns();
            (after - before, real - ((before + after) / 2) as i64)
        })
        .min_by_key(|(spread, _)| *spread)
        .map_or(0, |(_, offset)| offset)
}

pub fn set_nonblocking(fd: impl AsFd) -> Result<()> {
    let flags = OFlag::from_bits_retain(fcntl(&fd, FcntlArg::F_GETFL)?);
    fcntl(&fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// A xorshift generator: spreads events in time, nothing more.
pub struct Jitter(pub u64);

impl Jitter {
    /// Seeded from the time and the process id.
    pub fn seeded() -> Jitter {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Jitter((t ^ u64::from(std::process::id()) << 32) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A gap between 75% and 125% of `mean`, in ns.
    pub fn gap(&mut self, mean: Duration) -> u64 {
        let mean = mean.as_nanos() as u64;
        mean * 3 / 4 + self.next_u64() % (mean / 2 + 1)
    }
}

/// Median, 99th percentile and maximum, in ns.
#[derive(Clone, Copy, Debug, Default)]
pub struct Pct {
    pub p50: i64,
    pub p99: i64,
    pub max: i64,
}

impl Pct {
    /// Nearest-rank percentiles; zeroes for no samples.
    pub fn of(mut samples: Vec<i64>) -> Pct {
        if samples.is_empty() {
            return Pct::default();
        }
        samples.sort_unstable();
        let rank = |p: f64| {
            let n = samples.len();
            samples[((p * n as f64).ceil() as usize).clamp(1, n) - 1]
        };
        Pct {
            p50: rank(0.50),
            p99: rank(0.99),
            max: samples[samples.len() - 1],
        }
    }

    /// "p50 / p99" in µs, one decimal.
    pub fn p50_p99_micros(&self) -> String {
        format!("{} / {}", micros(self.p50), micros(self.p99))
    }

    /// "p50 / p99 / max" in ms with `decimals` places.
    pub fn ms(&self, decimals: usize) -> String {
        let ms = |ns: i64| format!("{:.*}", decimals, ns as f64 / 1e6);
        format!("{} / {} / {}", ms(self.p50), ms(self.p99), ms(self.max))
    }
}

/// Nanoseconds as µs with one decimal.
pub fn micros(ns: i64) -> String {
    format!("{:.1}", ns as f64 / 1000.0)
}

/// What a run was made on, for the report.
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub kernel: String,
    pub date: String,
    pub profile: String,
}

/// This machine, with the daemon's build `profile`.
pub fn machine(profile: &str) -> Machine {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, name)| name.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let date = Command::new("date")
        .arg("+%F %H:%M")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    Machine {
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
        date,
        profile: profile.to_owned(),
    }
}

/// The daemon the harness starts is `target/<profile>/watchd`, beside the benchmark's
/// directory; the harness's freshness check, with `command` (how to build and run the
/// benchmark) in the error. Returns the profile.
pub fn daemon_profile(command: &str) -> Result<String> {
    let daemon = crate::fresh_watchd().map_err(|e| anyhow!("{e:#}; build it first: {command}"))?;
    Ok(daemon
        .parent()
        .and_then(Path::file_name)
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default())
}

/// A benchmark's `main`: as root (a non-root run outside CI skips, saying why), in a
/// private mount namespace entered while still single-threaded (the test uids named there
/// too when `test_users`), then `bench` on a tokio runtime; failures print as `name: …`.
pub fn main<F>(name: &str, test_users: bool, bench: impl FnOnce() -> F) -> ExitCode
where
    F: Future<Output = Result<()>>,
{
    match crate::check_root() {
        Ok(true) => {}
        Ok(false) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e:#}");
            return ExitCode::FAILURE;
        }
    }
    if let Err(e) = crate::enter_private_mount_namespace() {
        eprintln!("cannot set up a private mount namespace: {e:#}");
        return ExitCode::FAILURE;
    }
    if test_users && let Err(e) = crate::polkit::ensure_test_users() {
        eprintln!("cannot set up the test users: {e:#}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bench()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Time on the CPU (the first field of schedstat), in ns.
fn schedstat(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// Run time of all of `pid`'s threads, and of those whose name starts with `prefix`, in ns
/// (`/proc/PID/task/*/schedstat`).
pub fn daemon_cpu(pid: u32, prefix: &str) -> Result<(u64, u64)> {
    let (mut all, mut named) = (0, 0);
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let task = task?.path();
        let ns = schedstat(&task.join("schedstat"));
        all += ns;
        let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        if comm.starts_with(prefix) {
            named += ns;
        }
    }
    Ok((all, named))
}
