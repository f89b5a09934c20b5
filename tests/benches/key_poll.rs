//! The key poller's cost (issue: "1,000 watched keyrings cost under 1 % of one core at a
//! 1 s interval"): how long a key change takes to reach a subscriber at the default
//! `[keys] poll_interval_ms` (1,000), and what the daemon costs, idle, while it polls 1, 100
//! and 1,000 keyrings of three keys each, next to as many clients each polling their own
//! keyring every 5 s (gnome-online-accounts' way). The results and what they mean are in
//! docs/benchmarks.md.
//!
//! Run it as root, with a fresh release build of the daemon (a daemon older than its sources
//! is refused):
//!
//! ```sh
//! cargo build --release --workspace && cargo bench -p watchd-e2e --bench key_poll
//! ```
//!
//! The setup is the end-to-end tests' own: a private mount namespace, a private
//! `dbus-daemon` and the real `target/release/watchd` on it, with the default poll interval
//! and raised `[limits]`. Everything on the key side belongs to uid 1000:
//!
//! - **Keys**: a thread of this benchmark takes uid 1000 (its own credentials only: the raw
//!   system calls, not glibc's process-wide wrappers) and a session keyring of its own. In a
//!   keyring `watchd-bench-key-poll` there it makes 1,000 keyrings `krb_ccache_bench_N`, each
//!   holding three user keys like a small MIT krb5 KEYRING cache: `__krb5_princ__` (48
//!   bytes) and two credentials (1,200 bytes each). Every key and keyring gets permissions
//!   0x3f3f0000 (possessor and owner: everything), so that uid 1000 may list and read them
//!   without possessing them: the daemon looks as the watching uid, and the pollers below
//!   possess nothing. The per-user key quota (`/proc/sys/kernel/keys/maxkeys`, `maxbytes`)
//!   is raised for the run if it is below what 4,000 keys need, and put back afterwards.
//! - **Watches**: a client of uid 1000 watches keyring 0 by serial with `nested = true` in a
//!   subscription of its own, and the others in subscriptions of up to 100 watches each.
//! - **Detection latency**: the key thread updates a key of keyring 0 (`KEYCTL_UPDATE`, a
//!   new payload of the same size) at random moments (100–1,100 ms after the previous
//!   record arrived, which spreads them evenly over the poll period). Latency = from the
//!   `keyctl()` call's return to the client's `read()` of the UPDATED record, both
//!   CLOCK_MONOTONIC. The record's own time stamp (CLOCK_REALTIME, taken by the daemon when
//!   its poll found the change) splits it into the wait for the poll and the delivery.
//!   Measured with 1 and with 1,000 keyrings watched.
//! - **Idle CPU**: with 0, 1, 100 and 1,000 keyrings watched and nothing changing, the
//!   daemon's utime + stime (`/proc/PID/stat`) over a 15 s window, as % of one core; also
//!   its threads' run time from `/proc/PID/task/TID/schedstat` (ns, where the stat file
//!   counts in 10 ms ticks; threads that end during the window are missed there, not in
//!   the stat figure) and the `keys` thread's own. Its RSS at the end of each window
//!   (`VmRSS`).
//! - **Pollers**: for 1, 100 and 1,000 keyrings, one process running as uid 1000 (this
//!   binary again) with a thread per keyring. Each thread reads its keyring every 5 s the way
//!   libkrb5 reads a KEYRING cache, at its own random phase: `KEYCTL_DESCRIBE` and
//!   `KEYCTL_READ` of the keyring, then `KEYCTL_READ` of each key's payload. Its CPU over a
//!   window of the same length right after the daemon's, measured the same way (the daemon
//!   keeps its watches meanwhile; only the pollers' process is counted in that column).
//!   This is a lower bound for the polling side: a real client also pays for its D-Bus and
//!   krb5 library code, for `keyctl_read_alloc()`'s second call per read, and for being a
//!   process of its own. Before starting, the process also times a bare walk of its
//!   keyrings, the eight system calls per keyring the daemon makes per poll (describe and
//!   read of the keyring and of each key), on one thread: the kernel's share of the
//!   daemon's cost.
//!
//! Before each window the benchmark waits (up to 60 s) until everything else on the
//! machine takes less than a tenth of a CPU, and reports what others took during the
//! window. It takes about 4.5 minutes on 2 cores and prints markdown tables.
//!
//! With `KEY_POLL_DISTINCT_NAMES=1` every key gets a description of its own
//! (`__krb5_princ__#17`): a diagnostic run that shows the daemon's cost without the
//! collisions of same-named keys in its thread keyring (see docs/benchmarks.md).
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::process::{ChildStdin, ChildStdout, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, poll};
use watchd::sys::KeySerial;
use watchd_client::{Client, SubscribeOptions, WatchOptions};
use watchd_e2e::bench::{
    Jitter, Machine, Pct, daemon_profile, machine, now_ns, realtime_offset, set_nonblocking,
};
use watchd_e2e::polkit::{OTHER_UID, as_user, connect_as_user};
use watchd_e2e::sys::{
    BufferOp, IntegerOp, KEYCTL_CLEAR, KEYCTL_DESCRIBE, KEYCTL_INVALIDATE, KEYCTL_READ,
    KEYCTL_SETPERM,
};
use watchd_e2e::{Env, Process};
use watchd_proto::{MAX_RECORD_LEN, Record, RecordType, attr, key};

const COMMAND: &str =
    "cargo build --release --workspace && cargo bench -p watchd-e2e --bench key_poll";
/// Whose keys are watched and polled.
const UID: u32 = OTHER_UID;
/// Watched keyrings in the idle runs, besides 0.
const SIZES: [usize; 3] = [1, 100, 1000];
const MAX_RINGS: usize = 1000;
/// The daemon's default `[keys] poll_interval_ms`; the config leaves it alone.
const INTERVAL: Duration = Duration::from_millis(1000);
/// How often a simulated client re-reads its keyring.
const CLIENT_EVERY: Duration = Duration::from_secs(5);
/// Each CPU window.
const WINDOW: Duration = Duration::from_secs(15);
/// Updates timed in each latency run.
const LATENCY_SAMPLES: usize = 50;
/// Watches per subscription (besides the latency subscription's one).
const PER_SUBSCRIPTION: usize = 100;
/// The goal: 1,000 watched keyrings under 1 % of one core.
const GOAL_SHARE: f64 = 0.01;
/// Everything else on the machine must take less than this share of a CPU before a window.
const QUIET: f64 = 0.10;
const DAEMON_CONFIG: &str = "[limits]\nmax_subscriptions_per_uid = 64\n\
                             max_watches_per_subscription = 128\nmax_watches_per_uid = 2048\n";
/// Permissions of every key and keyring made here: possessor and owner may do everything.
const PERM: u32 = 0x3f3f_0000;
const PRINCIPAL_LEN: usize = 48;
const CREDENTIAL_LEN: usize = 1200;
/// Set to 1, gives each key a description of its own (`__krb5_princ__#17`): a diagnostic
/// run. With real krb5 names every keyring has keys of the same type and description, and a
/// keyring holds only one key of each (linking another displaces it), which is what the
/// daemon's thread keyring runs into.
const DISTINCT_NAMES_ENV: &str = "KEY_POLL_DISTINCT_NAMES";
/// The argument that makes this binary the pollers' process.
const POLLERS_ARG: &str = "--key-poll-pollers";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == POLLERS_ARG) {
        return match pollers_main(&args[at + 1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("key_poll pollers: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    watchd_e2e::bench::main("key_poll", true, bench)
}

async fn bench() -> Result<()> {
    let profile = daemon_profile(COMMAND)?;
    let machine = machine(&profile);
    // Dropped in reverse: the daemon first (its links go), then the keys, then the quota.
    let _quota = Quota::raise((MAX_RINGS * 4 + 16) as u64, quota_bytes())?;
    eprintln!("making {MAX_RINGS} keyrings of 3 keys as uid {UID}");
    let holder = KeyHolder::start(UID)?;
    let rings = holder.run(|h| h.make_rings(MAX_RINGS))??;
    let env = Env::start_with_config("bench-keys", DAEMON_CONFIG).await?;
    let daemon = env.daemon.pid();
    let keys_tid = thread_named(daemon, "keys")?;
    let (connection, _connection_holder) = connect_as_user(&env.bus.address, UID).await?;
    let client = Client::from_connection(connection);
    let source = client
        .status()
        .await?
        .source_details
        .get("keys")
        .cloned()
        .unwrap_or_default();
    ensure!(
        source.contains("every 1000 ms"),
        "the daemon's key source is not a poller at the default interval: {source:?}"
    );
    eprintln!("daemon PID {daemon} (keys thread {keys_tid}): {source}");
    let probe = Probe {
        daemon,
        keys_tid,
        pollers: None,
    };

    let mut idle = Vec::new();
    let mut latency = Vec::new();
    eprintln!("idle: no key watched");
    idle.push(IdleRow {
        rings: 0,
        daemon: window(&probe).await?,
        daemon_rss_kib: rss_kib(daemon)?,
        pollers: None,
    });

    // The latency subscription: keyring 0 alone.
    let sub = client.subscribe(SubscribeOptions::default()).await?;
    sub.add_watch(1, "keys", &ring_watch(rings[0].serial))
        .await?;
    let reader = LatencyReader::start(sub.into_pipe())?;
    let mut others: Vec<OwnedFd> = Vec::new();
    let mut watched = 1;
    for &size in &SIZES {
        while watched < size {
            let sub = client.subscribe(SubscribeOptions::default()).await?;
            let end = size.min(watched + PER_SUBSCRIPTION);
            for (i, ring) in rings.iter().enumerate().take(end).skip(watched) {
                sub.add_watch(i as u64 + 1, "keys", &ring_watch(ring.serial))
                    .await
                    .with_context(|| format!("watching keyring {i} ({})", ring.serial))?;
            }
            let pipe = sub.into_pipe();
            set_nonblocking(&pipe)?;
            others.push(pipe);
            watched = end;
        }
        eprintln!("{size} keyring(s) watched");
        // The watches' first walks and links are done; nothing changes from here on.
        tokio::time::sleep(INTERVAL * 3).await;
        if size == 1 || size == MAX_RINGS {
            eprintln!("latency: {LATENCY_SAMPLES} updates of a key of keyring 0, {size} watched");
            latency.push(measure_latency(size, &holder, &rings[0], &reader)?);
        }
        eprintln!("idle: daemon, {size} keyring(s) watched");
        let daemon_cpu = window(&probe).await?;
        let daemon_rss_kib = rss_kib(daemon)?;
        let stray = drain(&others)? + reader.stray();
        ensure!(stray == 0, "{stray} records arrived while nothing changed");
        eprintln!("idle: {size} poller thread(s) reading their keyring every {CLIENT_EVERY:?}");
        let mut pollers = Pollers::start(&rings[..size])?;
        let before = pollers.counts()?;
        let cpu = window(&Probe {
            pollers: Some(pollers.pid()),
            ..probe
        })
        .await?;
        let after = pollers.counts()?;
        let rss = rss_kib(pollers.pid())?;
        ensure!(
            after.1 == before.1,
            "the pollers failed {} reads during the window",
            after.1 - before.1
        );
        idle.push(IdleRow {
            rings: size,
            daemon: daemon_cpu,
            daemon_rss_kib,
            pollers: Some(PollersRow {
                cpu,
                polls: after.0 - before.0,
                walk_ns_per_ring: pollers.walk_ns_per_ring,
                rss_kib: rss,
            }),
        });
    }

    report(&machine, &rings[0], &latency, &idle);
    drop(reader);
    drop(others);
    drop(client);
    drop(env);
    drop(holder);
    Ok(())
}

fn distinct_names() -> bool {
    std::env::var_os(DISTINCT_NAMES_ENV).is_some_and(|v| v == "1")
}

fn ring_watch(serial: i32) -> WatchOptions {
    WatchOptions::new()
        .option("key", serial.to_string())
        .option("nested", true)
}

/// Bytes of quota 1,000 caches need: payloads and descriptions, with room to spare.
fn quota_bytes() -> u64 {
    (MAX_RINGS * (PRINCIPAL_LEN + 2 * CREDENTIAL_LEN + 256) * 2) as u64
}

// ---------------------------------------------------------------------------------------
// Setup
// ---------------------------------------------------------------------------------------

/// The TID of `pid`'s thread called `name`.
fn thread_named(pid: u32, name: &str) -> Result<u32> {
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let entry = entry?;
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim() == name {
            return entry
                .file_name()
                .to_str()
                .and_then(|t| t.parse().ok())
                .context("a task directory that is not a TID");
        }
    }
    bail!("PID {pid} has no thread named {name:?}")
}

/// The per-user key quota, raised for the run and put back on drop.
struct Quota {
    saved: Vec<(&'static str, u64)>,
}

impl Quota {
    fn raise(keys: u64, bytes: u64) -> Result<Quota> {
        let mut quota = Quota { saved: Vec::new() };
        for (path, wanted) in [
            ("/proc/sys/kernel/keys/maxkeys", keys),
            ("/proc/sys/kernel/keys/maxbytes", bytes),
        ] {
            let old: u64 = std::fs::read_to_string(path)
                .with_context(|| path.to_owned())?
                .trim()
                .parse()
                .with_context(|| path.to_owned())?;
            if old < wanted {
                std::fs::write(path, wanted.to_string()).with_context(|| path.to_owned())?;
                quota.saved.push((path, old));
                eprintln!("{path}: {old} → {wanted} for the run");
            }
        }
        Ok(quota)
    }
}

impl Drop for Quota {
    fn drop(&mut self) {
        for (path, old) in &self.saved {
            if let Err(e) = std::fs::write(path, old.to_string()) {
                eprintln!("cleanup: cannot put {path} back to {old}: {e}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// keyctl(2)
// ---------------------------------------------------------------------------------------

const KEY_SPEC_SESSION_KEYRING: i32 = -3;

/// keyctl(2) with integer arguments (the harness's wrapper).
fn keyctl(op: IntegerOp, a: libc::c_long, b: libc::c_long, c: libc::c_long) -> Result<i64> {
    Ok(watchd_e2e::sys::keyctl(op, a, b, c)?)
}

/// `KEYCTL_DESCRIBE` or `KEYCTL_READ` into `buf` (as much as fits); the length wanted.
fn keyctl_buf(op: BufferOp, key: i32, buf: &mut [u8]) -> Result<usize> {
    Ok(watchd_e2e::sys::keyctl_into(op, key, buf)?)
}

/// add_key(2) through the daemon's own wrapper.
fn add_key(key_type: &str, description: &str, payload: &[u8], keyring: i32) -> Result<i32> {
    let key_type = std::ffi::CString::new(key_type)?;
    let description = std::ffi::CString::new(description)?;
    let serial = watchd::sys::add_key(&key_type, &description, payload, KeySerial(keyring))
        .with_context(|| format!("add_key {description:?}"))?;
    Ok(serial.0)
}

fn setperm(key: i32) -> Result<()> {
    keyctl(KEYCTL_SETPERM, key.into(), PERM.into(), 0).map(drop)
}

/// Makes the calling thread, and only it, uid and gid `uid` with no supplementary groups:
/// rustix's raw, per-thread system calls (glibc's wrappers would change every thread of the
/// process).
fn become_user(uid: u32) -> Result<()> {
    use rustix::thread::{Gid, Uid, set_thread_groups, set_thread_res_gid, set_thread_res_uid};
    let (gid, uid_) = (Gid::from_raw(uid), Uid::from_raw(uid));
    set_thread_groups(&[])
        .and_then(|()| set_thread_res_gid(gid, gid, gid))
        .and_then(|()| set_thread_res_uid(uid_, uid_, uid_))
        .with_context(|| format!("cannot become uid {uid}"))
}

// ---------------------------------------------------------------------------------------
// The keys: one thread of uid 1000 makes, changes and removes them
// ---------------------------------------------------------------------------------------

/// A keyring like a small krb5 KEYRING cache.
#[derive(Clone, Copy, Debug)]
struct Ring {
    serial: i32,
    /// The credential key whose updates the latency runs time.
    credential: i32,
}

/// The key thread's state.
struct Held {
    /// `watchd-bench-key-poll` in the thread's session keyring.
    bench: i32,
    /// Every key made, keyrings included, in order.
    made: Vec<i32>,
    /// Payloads made so far.
    generation: u64,
}

impl Held {
    fn make_rings(&mut self, count: usize) -> Result<Vec<Ring>> {
        let mut rings = Vec::with_capacity(count);
        for i in 0..count {
            let ring = add_key("keyring", &format!("krb_ccache_bench_{i}"), &[], self.bench)?;
            self.made.push(ring);
            setperm(ring)?;
            let mut keys = Vec::new();
            for (description, len) in [
                ("__krb5_princ__", PRINCIPAL_LEN),
                ("krbtgt/WATCHD.BENCH@WATCHD.BENCH", CREDENTIAL_LEN),
                ("HTTP/www.watchd.bench@WATCHD.BENCH", CREDENTIAL_LEN),
            ] {
                let payload = self.payload(len);
                let description = if distinct_names() {
                    format!("{description}#{i}")
                } else {
                    description.to_owned()
                };
                let key = add_key("user", &description, &payload, ring)?;
                self.made.push(key);
                setperm(key)?;
                keys.push(key);
            }
            rings.push(Ring {
                serial: ring,
                credential: keys[1],
            });
        }
        Ok(rings)
    }

    /// `len` pseudo-random bytes, different each time.
    fn payload(&mut self, len: usize) -> Vec<u8> {
        self.generation += 1;
        let mut next = Jitter(0x2545_f491_4f6c_dd1d ^ self.generation);
        (0..len).map(|_| next.next_u64() as u8).collect()
    }

    /// KEYCTL_UPDATE with a new payload; the time its call returned.
    fn update(&mut self, key: i32) -> Result<u64> {
        let payload = self.payload(CREDENTIAL_LEN);
        watchd_e2e::sys::keyctl_update(key, &payload)?;
        Ok(now_ns())
    }

    /// Invalidates everything made here: gone at once, whoever links it.
    fn remove_all(&mut self) {
        let mut failed = 0;
        for key in self.made.drain(..).rev() {
            if keyctl(KEYCTL_INVALIDATE, key.into(), 0, 0).is_err() {
                failed += 1;
            }
        }
        let _ = keyctl(KEYCTL_CLEAR, self.bench.into(), 0, 0);
        if keyctl(KEYCTL_INVALIDATE, self.bench.into(), 0, 0).is_err() {
            failed += 1;
        }
        if failed > 0 {
            eprintln!("cleanup: {failed} keys could not be invalidated");
        }
    }
}

type Job = Box<dyn FnOnce(&mut Held) + Send>;

/// The thread that owns the keys: uid `uid`, a session keyring of its own holding the
/// benchmark's keyring. On drop it invalidates every key it made and ends, and its session
/// keyring goes with it.
struct KeyHolder {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl KeyHolder {
    fn start(uid: u32) -> Result<KeyHolder> {
        let (jobs, receive) = mpsc::channel::<Job>();
        let (ready_tx, ready) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("key holder".into())
            .spawn(move || {
                let setup = || -> Result<i32> {
                    become_user(uid)?;
                    watchd::sys::keyctl_join_new_session_keyring()
                        .context("joining a new session keyring")?;
                    let bench = add_key(
                        "keyring",
                        "watchd-bench-key-poll",
                        &[],
                        KEY_SPEC_SESSION_KEYRING,
                    )?;
                    setperm(bench)?;
                    Ok(bench)
                };
                let bench = match setup() {
                    Ok(bench) => bench,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let mut held = Held {
                    bench,
                    made: Vec::new(),
                    generation: 0,
                };
                while let Ok(job) = receive.recv() {
                    job(&mut held);
                }
                held.remove_all();
            })?;
        ready.recv().map_err(|_| anyhow!("the key thread died"))??;
        Ok(KeyHolder {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Held) -> T + Send + 'static,
    ) -> Result<T> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.jobs
            .as_ref()
            .context("key thread stopped")?
            .send(Box::new(move |held| {
                let _ = reply.send(job(held));
            }))
            .map_err(|_| anyhow!("the key thread died"))?;
        answer.recv().map_err(|_| anyhow!("the key thread died"))
    }
}

impl Drop for KeyHolder {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Detection latency
// ---------------------------------------------------------------------------------------

/// A key record as the latency subscription's reader got it.
#[derive(Clone, Copy, Debug)]
struct Read {
    record_type: u32,
    subtype: u8,
    key: Option<u32>,
    /// When its read() returned.
    at: u64,
    /// The daemon's time stamp (CLOCK_REALTIME).
    stamp: u64,
}

/// Reads the latency subscription's pipe on a thread of its own, as a client would: poll(),
/// then read() of one record.
struct LatencyReader {
    reads: mpsc::Receiver<Result<Read, String>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Records that were not the awaited UPDATED.
    stray: AtomicU64,
}

impl LatencyReader {
    fn start(pipe: OwnedFd) -> Result<LatencyReader> {
        let (send, reads) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("latency reader".into())
            .spawn(move || {
                let mut buf = vec![0u8; MAX_RECORD_LEN];
                while !thread_stop.load(Ordering::Relaxed) {
                    let mut fds = [PollFd::new(pipe.as_fd(), PollFlags::POLLIN)];
                    match poll(&mut fds, 100u16) {
                        Ok(0) | Err(Errno::EINTR) => continue,
                        Ok(_) => {}
                        Err(e) => {
                            let _ = send.send(Err(format!("poll: {e}")));
                            return;
                        }
                    }
                    let read = match nix::unistd::read(&pipe, &mut buf) {
                        Ok(0) => Err("the pipe ended".to_owned()),
                        Ok(len) => {
                            let at = now_ns();
                            Record::parse(&buf[..len])
                                .map(|r| Read {
                                    record_type: r.header.record_type,
                                    subtype: r.header.subtype,
                                    key: r.get_u32(attr::KEY_ID),
                                    at,
                                    stamp: r.header.time_ns,
                                })
                                .map_err(|e| format!("a record that does not decode: {e}"))
                        }
                        Err(Errno::EINTR) => continue,
                        Err(e) => Err(format!("read: {e}")),
                    };
                    let failed = read.is_err();
                    if send.send(read).is_err() || failed {
                        return;
                    }
                }
            })?;
        Ok(LatencyReader {
            reads,
            stop,
            thread: Some(thread),
            stray: AtomicU64::new(0),
        })
    }

    /// The next UPDATED record about `key`, within `limit`; anything else read meanwhile is
    /// counted as stray.
    fn updated(&self, key: i32, limit: Duration) -> Result<Read> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let read = match self.reads.recv_timeout(left) {
                Ok(read) => read.map_err(|e| anyhow!("latency subscription: {e}"))?,
                Err(_) => bail!("no UPDATED record for key {key} within {limit:?}"),
            };
            if read.record_type == RecordType::Key as u32
                && read.subtype == key::UPDATED
                && read.key == Some(key as u32)
            {
                return Ok(read);
            }
            eprintln!("stray record on the latency subscription: {read:?}");
            self.stray.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records read that nobody waited for, including any queued now; resets the count.
    fn stray(&self) -> u64 {
        while let Ok(read) = self.reads.try_recv() {
            eprintln!("stray record on the latency subscription: {read:?}");
            self.stray.fetch_add(1, Ordering::Relaxed);
        }
        self.stray.swap(0, Ordering::Relaxed)
    }
}

impl Drop for LatencyReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct LatencyRow {
    watched: usize,
    /// update() returned → read().
    total: Pct,
    /// update() returned → the daemon's stamp: the wait for the poll, and the walk.
    to_stamp: Pct,
    /// The daemon's stamp → read(): delivery.
    stamp_to_read: Pct,
}

fn measure_latency(
    watched: usize,
    holder: &KeyHolder,
    ring: &Ring,
    reader: &LatencyReader,
) -> Result<LatencyRow> {
    let offset = realtime_offset();
    let mut jitter = Jitter::seeded();
    let (mut total, mut to_stamp, mut stamp_to_read) = (Vec::new(), Vec::new(), Vec::new());
    let key = ring.credential;
    for _ in 0..LATENCY_SAMPLES {
        // 100–1,100 ms after the last record, which came just after a poll: every phase of
        // the poll period equally often.
        std::thread::sleep(Duration::from_millis(100 + jitter.next_u64() % 1000));
        let updated = holder.run(move |h| h.update(key))??;
        let read = reader.updated(key, INTERVAL * 3)?;
        let stamp = read.stamp as i64 - offset;
        total.push(read.at as i64 - updated as i64);
        to_stamp.push(stamp - updated as i64);
        stamp_to_read.push(read.at as i64 - stamp);
    }
    Ok(LatencyRow {
        watched,
        total: Pct::of(total),
        to_stamp: Pct::of(to_stamp),
        stamp_to_read: Pct::of(stamp_to_read),
    })
}

/// Reads whatever is waiting in `pipes` (non-blocking); the number of records.
fn drain(pipes: &[OwnedFd]) -> Result<u64> {
    let mut buf = vec![0u8; MAX_RECORD_LEN];
    let mut records = 0;
    for pipe in pipes {
        loop {
            match nix::unistd::read(pipe, &mut buf) {
                Ok(0) => bail!("a subscription's pipe ended"),
                Ok(len) => {
                    records += 1;
                    let header = Record::parse(&buf[..len]).map(|r| r.header);
                    eprintln!("unexpected record on an idle subscription: {header:?}");
                }
                Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e).context("read"),
            }
        }
    }
    Ok(records)
}

// ---------------------------------------------------------------------------------------
// CPU
// ---------------------------------------------------------------------------------------

/// Whose CPU time a window measures.
#[derive(Clone, Copy)]
struct Probe {
    daemon: u32,
    keys_tid: u32,
    pollers: Option<u32>,
}

/// CPU time used so far, in ns.
#[derive(Clone, Debug, Default)]
struct Usage {
    at: u64,
    /// Busy time of every CPU of the machine (`/proc/stat`).
    machine: u64,
    /// The hypervisor's steal.
    stolen: u64,
    /// This process (`getrusage`): the key thread and the reader, all idle in a window.
    bench: u64,
    /// The daemon's utime + stime (`/proc/PID/stat`, in clock ticks).
    daemon: u64,
    /// The run time of each of the daemon's threads (`/proc/PID/task/TID/schedstat`, ns).
    daemon_exact: Threads,
    /// The `keys` thread's run time (schedstat).
    keys: u64,
    pollers: u64,
    pollers_exact: Threads,
}

/// Run time by TID.
type Threads = std::collections::HashMap<u32, u64>;

/// What the threads alive at the end of a window ran during it: a thread that ended during
/// the window is missed (the daemon's tokio blocking threads end 10 s after their last
/// job, which is why a plain sum over the threads alive at each end does not do).
fn ran(a: &Threads, b: &Threads) -> u64 {
    b.iter()
        .map(|(tid, ns)| ns.saturating_sub(a.get(tid).copied().unwrap_or(0)))
        .sum()
}

fn clock_tick_ns() -> u64 {
    let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|t| *t > 0)
        .unwrap_or(100) as u64;
    1_000_000_000 / tick
}

/// utime + stime of `/proc/…/stat`, in ns.
fn stat_cpu(path: &str) -> Result<u64> {
    let text = std::fs::read_to_string(path).with_context(|| path.to_owned())?;
    // After the command name in parentheses: state is field 3, utime 14, stime 15.
    let fields: Vec<u64> = text
        .rsplit_once(')')
        .with_context(|| format!("{path}: no command name"))?
        .1
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    Ok((fields.get(11).unwrap_or(&0) + fields.get(12).unwrap_or(&0)) * clock_tick_ns())
}

/// Time on the CPU (the first field of schedstat), in ns.
fn schedstat(path: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// The schedstat run time of each of `pid`'s threads alive now.
fn threads_schedstat(pid: u32) -> Result<Threads> {
    let mut threads = Threads::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let entry = entry?;
        if let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse().ok()) {
            threads.insert(
                tid,
                schedstat(&format!("{}/schedstat", entry.path().display())),
            );
        }
    }
    Ok(threads)
}

impl Usage {
    fn now(probe: &Probe) -> Result<Usage> {
        let tick = clock_tick_ns();
        let stat = std::fs::read_to_string("/proc/stat")?;
        let cpu: Vec<u64> = stat
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("cpu "))
            .context("/proc/stat: no cpu line")?
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        // user nice system idle iowait irq softirq steal …
        let busy: u64 = [0, 1, 2, 5, 6]
            .iter()
            .map(|i| cpu.get(*i).unwrap_or(&0))
            .sum();
        let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)?;
        let ns = |t: nix::sys::time::TimeVal| {
            (t.tv_sec() as u64 * 1_000_000 + t.tv_usec() as u64) * 1000
        };
        let (pollers, pollers_exact) = match probe.pollers {
            Some(pid) => (
                stat_cpu(&format!("/proc/{pid}/stat"))?,
                threads_schedstat(pid)?,
            ),
            None => (0, Threads::new()),
        };
        Ok(Usage {
            at: now_ns(),
            machine: busy * tick,
            stolen: cpu.get(7).unwrap_or(&0) * tick,
            bench: ns(usage.user_time()) + ns(usage.system_time()),
            daemon: stat_cpu(&format!("/proc/{}/stat", probe.daemon))?,
            daemon_exact: threads_schedstat(probe.daemon)?,
            keys: schedstat(&format!(
                "/proc/{}/task/{}/schedstat",
                probe.daemon, probe.keys_tid
            )),
            pollers,
            pollers_exact,
        })
    }
}

/// Shares of one CPU over a window.
#[derive(Clone, Copy, Debug, Default)]
struct Shares {
    seconds: f64,
    daemon: f64,
    daemon_exact: f64,
    keys: f64,
    pollers: f64,
    pollers_exact: f64,
    /// Everything else on the machine.
    other: f64,
    stolen: f64,
    /// /proc/loadavg's 1-minute figure when the window began.
    load: f64,
}

impl Shares {
    fn between(a: &Usage, b: &Usage) -> Shares {
        let wall = b.at.saturating_sub(a.at).max(1) as f64;
        let d = |f: fn(&Usage) -> u64| f(b).saturating_sub(f(a));
        let share = |ns: u64| ns as f64 / wall;
        let daemon_exact = ran(&a.daemon_exact, &b.daemon_exact);
        let pollers_exact = ran(&a.pollers_exact, &b.pollers_exact);
        let mine = daemon_exact + d(|u| u.bench) + pollers_exact;
        Shares {
            seconds: wall / 1e9,
            daemon: share(d(|u| u.daemon)),
            daemon_exact: share(daemon_exact),
            keys: share(d(|u| u.keys)),
            pollers: share(d(|u| u.pollers)),
            pollers_exact: share(pollers_exact),
            other: share(d(|u| u.machine).saturating_sub(mine)),
            stolen: share(d(|u| u.stolen)),
            load: 0.0,
        }
    }
}

fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// Waits (60 s at most) until everything else on the machine takes less than [`QUIET`] of a
/// CPU over 2 s, then measures a [`WINDOW`].
async fn window(probe: &Probe) -> Result<Shares> {
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        let a = Usage::now(probe)?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let other = Shares::between(&a, &Usage::now(probe)?).other;
        if other < QUIET {
            break;
        }
        if Instant::now() > give_up {
            eprintln!("  the machine stayed busy; measuring anyway");
            break;
        }
        eprintln!(
            "  others take {:.0}% of a CPU (load {:.2}); waiting for a quiet machine",
            other * 100.0,
            load_average()
        );
    }
    let load = load_average();
    let a = Usage::now(probe)?;
    tokio::time::sleep(WINDOW).await;
    let shares = Shares {
        load,
        ..Shares::between(&a, &Usage::now(probe)?)
    };
    eprintln!(
        "  daemon {:.3}% (keys thread {:.3}%), pollers {:.3}%, others {:.1}%, load {load:.2}",
        shares.daemon_exact * 100.0,
        shares.keys * 100.0,
        shares.pollers_exact * 100.0,
        shares.other * 100.0
    );
    Ok(shares)
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        .with_context(|| format!("no VmRSS for PID {pid}"))
}

// ---------------------------------------------------------------------------------------
// The pollers: clients that read their keyring every 5 s themselves
// ---------------------------------------------------------------------------------------

/// The pollers' process: this binary again, as uid 1000.
struct Pollers {
    process: Process,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    walk_ns_per_ring: f64,
}

impl Pollers {
    fn start(rings: &[Ring]) -> Result<Pollers> {
        let mut command = Command::new(std::env::current_exe()?);
        command
            .arg(POLLERS_ARG)
            .arg(CLIENT_EVERY.as_millis().to_string())
            .args(rings.iter().map(|r| r.serial.to_string()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        as_user(&mut command, UID);
        let mut process = Process::spawn(command, "key pollers")?;
        let stdin = process.child().stdin.take().context("pollers' stdin")?;
        let stdout = BufReader::new(process.child().stdout.take().context("pollers' stdout")?);
        let mut pollers = Pollers {
            process,
            stdin,
            stdout,
            walk_ns_per_ring: 0.0,
        };
        let ready = pollers.line()?;
        pollers.walk_ns_per_ring = ready
            .strip_prefix("ready ")
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("the pollers said {ready:?}"))?;
        // Thread start-up is over before any window begins.
        std::thread::sleep(Duration::from_secs(1));
        Ok(pollers)
    }

    fn pid(&self) -> u32 {
        self.process.pid()
    }

    fn line(&mut self) -> Result<String> {
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        if line.is_empty() {
            self.process.check_running()?;
            bail!("the pollers closed their output");
        }
        Ok(line.trim().to_owned())
    }

    /// Polls done and failed so far.
    fn counts(&mut self) -> Result<(u64, u64)> {
        writeln!(self.stdin, "count")?;
        self.stdin.flush()?;
        let line = self.line()?;
        let mut it = line.split_whitespace().map(|v| v.parse::<u64>());
        match (it.next(), it.next()) {
            (Some(Ok(polls)), Some(Ok(errors))) => Ok((polls, errors)),
            _ => bail!("the pollers said {line:?}"),
        }
    }
}

static POLLS: AtomicU64 = AtomicU64::new(0);
static POLL_ERRORS: AtomicU64 = AtomicU64::new(0);

/// The pollers' process: `<every_ms> <keyring serial>…`. Times a bare walk of the keyrings,
/// says "ready <ns per keyring>", starts a thread per keyring, then answers each line on
/// stdin with "<polls> <failed polls>" until stdin closes.
fn pollers_main(args: &[String]) -> Result<()> {
    let (every, rings) = args.split_first().context("no arguments")?;
    let every = Duration::from_millis(every.parse()?);
    let rings: Vec<i32> = rings.iter().map(|s| s.parse()).collect::<Result<_, _>>()?;
    ensure!(!rings.is_empty(), "no keyrings");
    let walk = bare_walk(&rings)?;
    let start = Instant::now();
    let mut jitter = Jitter::seeded();
    for ring in rings {
        let first = start + Duration::from_nanos(jitter.next_u64() % every.as_nanos() as u64);
        std::thread::Builder::new()
            .stack_size(64 << 10)
            .spawn(move || {
                let (mut buf, mut list) = (vec![0u8; 4096], vec![0u8; 4096]);
                let mut due = first;
                loop {
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                    if poll_like_krb5(ring, &mut buf, &mut list).is_err() {
                        POLL_ERRORS.fetch_add(1, Ordering::Relaxed);
                    }
                    POLLS.fetch_add(1, Ordering::Relaxed);
                    due += every;
                }
            })?;
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready {walk:.0}")?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        line?;
        writeln!(
            out,
            "{} {}",
            POLLS.load(Ordering::Relaxed),
            POLL_ERRORS.load(Ordering::Relaxed)
        )?;
        out.flush()?;
    }
    Ok(())
}

/// What libkrb5 reads of a KEYRING cache to go through it: the keyring's description and
/// list, then each key's payload.
fn poll_like_krb5(ring: i32, buf: &mut [u8], list: &mut [u8]) -> Result<()> {
    keyctl_buf(KEYCTL_DESCRIBE, ring, buf)?;
    let len = keyctl_buf(KEYCTL_READ, ring, list)?.min(list.len());
    let mut keys = 0;
    for serial in list[..len].chunks_exact(4) {
        let serial = i32::from_ne_bytes(serial.try_into()?);
        keyctl_buf(KEYCTL_READ, serial, buf)?;
        keys += 1;
    }
    ensure!(keys == 3, "keyring {ring} lists {keys} keys");
    Ok(())
}

/// The daemon's system calls for one poll of each keyring (describe and read of the keyring
/// and of each key), made back to back on this thread: CPU ns per keyring.
fn bare_walk(rings: &[i32]) -> Result<f64> {
    let (mut buf, mut list) = (vec![0u8; 4096], vec![0u8; 4096]);
    let rounds = (20_000 / rings.len()).clamp(10, 1000);
    let thread_cpu = || -> Result<u64> {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
        Ok(t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64)
    };
    let before = thread_cpu()?;
    for _ in 0..rounds {
        for &ring in rings {
            keyctl_buf(KEYCTL_DESCRIBE, ring, &mut buf)?;
            let len = keyctl_buf(KEYCTL_READ, ring, &mut list)?.min(list.len());
            for serial in list[..len].chunks_exact(4) {
                let serial = i32::from_ne_bytes(serial.try_into()?);
                keyctl_buf(KEYCTL_DESCRIBE, serial, &mut buf)?;
                keyctl_buf(KEYCTL_READ, serial, &mut buf)?;
            }
        }
    }
    let spent = thread_cpu()? - before;
    Ok(spent as f64 / (rounds * rings.len()) as f64)
}

// ---------------------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------------------

struct PollersRow {
    cpu: Shares,
    polls: u64,
    walk_ns_per_ring: f64,
    rss_kib: u64,
}

struct IdleRow {
    rings: usize,
    daemon: Shares,
    daemon_rss_kib: u64,
    pollers: Option<PollersRow>,
}

fn pct(share: f64) -> String {
    format!("{:.3}", share * 100.0)
}

fn report(machine: &Machine, ring: &Ring, latency: &[LatencyRow], idle: &[IdleRow]) {
    println!("## Key poller: detection latency and idle cost\n");
    println!("Command: `{COMMAND}` (as root)\n");
    println!(
        "Machine: {} cores ({}), kernel {}, daemon built in the {} profile{}, {}.\n",
        machine.cores,
        machine.cpu,
        machine.kernel,
        machine.profile,
        if cfg!(debug_assertions) {
            " (this benchmark itself is a debug build)"
        } else {
            ""
        },
        machine.date
    );
    println!(
        "Poll interval {} ms (the default). Each keyring holds 3 user keys ({PRINCIPAL_LEN} + \
         {CREDENTIAL_LEN} + {CREDENTIAL_LEN} bytes) and is watched by serial, nested, by a \
         client of uid {UID}. Key descriptions: {}.\n",
        INTERVAL.as_millis(),
        if distinct_names() {
            format!(
                "distinct in every keyring (`__krb5_princ__#N`…; diagnostic run, \
                 {DISTINCT_NAMES_ENV}=1)"
            )
        } else {
            "the same three in every keyring, as in krb5 caches (`__krb5_princ__`, \
             `krbtgt/WATCHD.BENCH@WATCHD.BENCH`, `HTTP/www.watchd.bench@WATCHD.BENCH`)"
                .to_owned()
        }
    );
    println!(
        "Detection latency: `KEYCTL_UPDATE` of key {} (in keyring {}) returns → the client's \
         read() of the UPDATED record; {LATENCY_SAMPLES} updates at random moments; ms, \
         p50 / p99 / max.\n",
        ring.credential, ring.serial
    );
    println!(
        "| keyrings watched | update → read() | update → daemon's stamp (wait for the poll) | stamp → read() (delivery) |"
    );
    println!("|---:|---:|---:|---:|");
    for row in latency {
        println!(
            "| {} | {} | {} | {} |",
            row.watched,
            row.total.ms(0),
            row.to_stamp.ms(0),
            row.stamp_to_read.ms(2)
        );
    }

    println!(
        "\nIdle cost: CPU over {} s windows, % of one core. *daemon* = utime + stime of \
         /proc/PID/stat (10 ms ticks); *exact* = its threads' schedstat run time; *keys \
         thread* = the poller thread's alone. *pollers* = one process of uid {UID} with a thread \
         per keyring, each reading its keyring every {} s as libkrb5 does (describe + read the \
         keyring, read each key), measured the same way. *others* = the rest of the machine \
         during the daemon's window / the pollers' window.\n",
        WINDOW.as_secs(),
        CLIENT_EVERY.as_secs()
    );
    println!(
        "| keyrings | daemon % (exact) | keys thread % | keys thread µs per poll per keyring | daemon RSS MiB | pollers % (exact) | pollers µs per poll | bare walk µs per keyring (8 keyctl calls) | pollers RSS MiB | others % | load |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in idle {
        let per_ring = if row.rings > 0 {
            format!(
                "{:.1}",
                row.daemon.keys * INTERVAL.as_secs_f64() * 1e6 / row.rings as f64
            )
        } else {
            "–".into()
        };
        let (pollers, per_poll, walk, rss, others) = match &row.pollers {
            Some(p) => (
                format!("{} ({})", pct(p.cpu.pollers), pct(p.cpu.pollers_exact)),
                format!(
                    "{:.1}",
                    p.cpu.pollers_exact * p.cpu.seconds * 1e6 / p.polls.max(1) as f64
                ),
                format!("{:.1}", p.walk_ns_per_ring / 1000.0),
                format!("{:.1}", p.rss_kib as f64 / 1024.0),
                format!(
                    "{:.1} / {:.1}",
                    row.daemon.other * 100.0,
                    p.cpu.other * 100.0
                ),
            ),
            None => (
                "–".into(),
                "–".into(),
                "–".into(),
                "–".into(),
                format!("{:.1}", row.daemon.other * 100.0),
            ),
        };
        println!(
            "| {} | {} ({}) | {} | {per_ring} | {:.1} | {pollers} | {per_poll} | {walk} | {rss} | {others} | {:.2} |",
            row.rings,
            pct(row.daemon.daemon),
            pct(row.daemon.daemon_exact),
            pct(row.daemon.keys),
            row.daemon_rss_kib as f64 / 1024.0,
            row.daemon.load
        );
    }
    let stolen = idle.iter().map(|r| r.daemon.stolen).fold(0.0_f64, f64::max);
    if stolen > 0.01 {
        println!(
            "\nThe hypervisor stole up to {:.1}% of a CPU during a daemon window.",
            stolen * 100.0
        );
    }
    for row in idle.iter().filter(|r| r.daemon.other > QUIET) {
        println!(
            "\nDisturbed: others took {:.0}% of a CPU during the daemon's window with {} keyrings.",
            row.daemon.other * 100.0,
            row.rings
        );
    }
    if let (Some(base), Some(top)) = (idle.first(), idle.iter().find(|r| r.rings == MAX_RINGS)) {
        let share = top.daemon.daemon_exact;
        let over = share - base.daemon.daemon_exact;
        println!(
            "\nGoal ({MAX_RINGS} watched keyrings under {:.0}% of one core at a {} ms interval): \
             the daemon takes {}% ({}% more than with no key watched): {}",
            GOAL_SHARE * 100.0,
            INTERVAL.as_millis(),
            pct(share),
            pct(over),
            if share < GOAL_SHARE {
                "met".to_owned()
            } else {
                format!("NOT met, {:.1}× the budget", share / GOAL_SHARE)
            }
        );
    }
}
