//! Device event latency: from a uevent to a watchd subscriber's `read()`, with 1 and 100
//! subscribers, side by side with a plain libudev monitor that receives the same events in
//! the same run; and the throughput of a storm of 10,000 events (issue 4, item 8). The
//! results and what they mean are in docs/benchmarks.md.
//!
//! Run it as root, with a fresh release build of the daemon (a daemon older than its sources
//! is refused):
//!
//! ```sh
//! cargo build --release --workspace && cargo bench -p watchd-e2e --bench device_latency
//! ```
//!
//! The setup is the end-to-end tests' own: a private mount namespace, `systemd-udevd` (the
//! one that is running, or one started here and stopped by its PID), a private `dbus-daemon`
//! and the real `target/release/watchd` on it. The events are `change` uevents of a USB stick
//! (about 30 properties, as udevd's rules leave them) on a subsystem of this run's own,
//! injected into the udev netlink group in libudev's wire format. That is exactly what
//! udevd broadcasts after its rules. So the daemon's libudev monitor and this benchmark's
//! plain libudev monitor get the same datagram from the same `sendto()`.
//!
//! - **Latency**, three ways: 1 subscriber; 100 subscribers read by one thread with epoll;
//!   100 subscribers with a thread each, as 100 client processes would read. Events are sent
//!   one at a time, 1.5–2.5 ms apart (2 ms on average; the gaps are jittered so that they do
//!   not beat with periodic timers). Times are CLOCK_MONOTONIC, taken just before `sendto()`,
//!   when libudev's `udev_monitor_receive_device()` returns the event, and when a
//!   subscriber's `read()` returns its record. *added* = a subscriber's read time − the
//!   libudev monitor's receive time of the same event (matched by SEQNUM). The first 250
//!   events of each run are a warm-up and are not counted. Every record also carries the
//!   daemon's own time stamp (CLOCK_REALTIME, taken once it has parsed the event, before it
//!   encodes and fans out). That stamp splits watchd's latency in two.
//! - **Reference**: the same paced events to 100 plain libudev monitors with a thread each,
//!   and no watchd subscriber: what 100 programs would do without watchd, each opening its
//!   own monitor and parsing every event itself.
//! - **Storm**: 10,000 events sent back to back on one socket while a depth-256 subscriber
//!   and the libudev monitor read. Reported: the time from the first `sendto()` to the last
//!   event each reader gets, and events/s. Any loss (LOSS records, gaps in the sequence
//!   numbers, events missing) is counted and printed.
//!
//! For each run it also reports CPU time per event: the daemon's (`/proc/PID/stat`), this
//! process's (`getrusage`: the sender, the monitors, the readers), everyone else's (busy
//! time in `/proc/stat`, less those two) and the hypervisor's steal (`/proc/stat`). The last
//! two show a run being disturbed; a latency run where they took more than a tenth of a CPU
//! is flagged.
//!
//! It takes about 50 s on 2 cores and prints markdown tables.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, poll};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use watchd_client::{Client, SubscribeOptions, WatchOptions};
use watchd_e2e::Env;
use watchd_e2e::bench::{
    Jitter, Machine, Pct, daemon_profile, machine, micros, now_ns, realtime_offset, set_nonblocking,
};
use watchd_e2e::udev::{InjectedEvent, Injector, Udevd, next_seqnum};
use watchd_proto::{MAX_RECORD_LEN, Record, RecordType, attr, meta};

/// Events sent before the measured ones in each latency run, and left out of the results.
const WARMUP: usize = 250;
/// Measured events in each latency run.
const MEASURED: usize = 5_000;
/// The mean gap between paced events; each gap is drawn from 75–125% of it.
const PACE: Duration = Duration::from_millis(2);
/// Plain libudev monitors of the reference run: as many as there are subscribers.
const MONITORS: usize = 100;
const STORM: usize = 10_000;
const STORM_DEPTH: u32 = 256;
/// The goal: with 100 subscribers, the p99 latency watchd adds over a plain libudev monitor.
const GOAL_NS: i64 = 1_000_000;
/// The benchmark's libudev monitor gets the receive buffer that `udevadm monitor` and the
/// daemon give theirs.
const RECEIVE_BUFFER: usize = 128 << 20;
/// How long readers keep waiting for events once everything has been sent.
const GRACE: Duration = Duration::from_secs(3);
/// 100 subscriptions of one uid (1,600 pipe pages, and a storm subscription of 256) are over
/// the default per-uid limits (64 subscriptions, 1,024 pages).
const DAEMON_CONFIG: &str = "[limits]\nmax_subscriptions_per_uid = 256\nmax_watches_per_uid = 512\n\
                             max_pipe_pages_per_uid = 8192\n\
                             [sources]\ndevice_events = \"udev\"\n";
const COMMAND: &str =
    "cargo build --release --workspace && cargo bench -p watchd-e2e --bench device_latency";

fn main() -> ExitCode {
    watchd_e2e::bench::main("device_latency", false, bench)
}

/// Who reads the subscribers' pipes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Readers {
    /// One thread, epoll over every pipe.
    Epoll,
    /// A thread for each pipe, in poll() then read(), as separate client processes would be.
    ThreadEach,
}

impl Readers {
    fn describe(self, subscribers: usize) -> &'static str {
        match (self, subscribers) {
            (_, 1) => "one thread",
            (Readers::Epoll, _) => "one epoll thread",
            (Readers::ThreadEach, _) => "a thread each",
        }
    }
}

async fn bench() -> Result<()> {
    let profile = daemon_profile(COMMAND)?;
    let machine = machine(&profile);
    let udevd = Udevd::ensure()?;
    let env = Env::start_with_config("bench-devices", DAEMON_CONFIG).await?;
    let client = env.client().await?;
    let source = client
        .status()
        .await?
        .source_details
        .get("devices")
        .cloned()
        .unwrap_or_default();
    ensure!(
        source.starts_with("udev monitor"),
        "the daemon does not take udev's events: {source:?}"
    );
    let subsystem = format!("watchd-bench-{}", std::process::id());
    let daemon = env.daemon.pid();
    eprintln!(
        "udevd {}; daemon: {source}; subsystem {subsystem}",
        if udevd.started_here() {
            "started for the benchmark"
        } else {
            "already running"
        }
    );

    let mut rows = Vec::new();
    for (subscribers, readers) in [
        (1, Readers::Epoll),
        (100, Readers::Epoll),
        (100, Readers::ThreadEach),
    ] {
        eprintln!(
            "latency: {subscribers} subscriber(s), {}: {} events ~{PACE:?} apart",
            readers.describe(subscribers),
            WARMUP + MEASURED
        );
        let pipes = subscribe(&client, subscribers, None, &subsystem).await?;
        let capture = capture(
            &subsystem,
            daemon,
            &pipes,
            readers,
            1,
            WARMUP + MEASURED,
            Some(PACE),
        )?;
        drop(pipes);
        rows.push(LatencyRow::from_capture(subscribers, readers, &capture));
    }

    eprintln!(
        "reference: {MONITORS} plain libudev monitors, a thread each, no subscriber: {} events",
        WARMUP + MEASURED
    );
    let reference = capture(
        &subsystem,
        daemon,
        &[],
        Readers::ThreadEach,
        MONITORS,
        WARMUP + MEASURED,
        Some(PACE),
    )?;
    let reference = MonitorsRow::from_capture(&reference);

    eprintln!("storm: {STORM} events back to back, one subscriber of depth {STORM_DEPTH}");
    let pipes = subscribe(&client, 1, Some(STORM_DEPTH), &subsystem).await?;
    let storm = capture(&subsystem, daemon, &pipes, Readers::Epoll, 1, STORM, None)?;
    drop(pipes);

    report(&machine, &rows, &reference, &StormRow::from_capture(&storm));
    // The daemon and the bus stop before udevd (if it was started here).
    drop(client);
    drop(env);
    drop(udevd);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Setup
// ---------------------------------------------------------------------------------------

/// `count` subscriptions, each with one devices watch on `subsystem`; their pipes.
async fn subscribe(
    client: &Client,
    count: usize,
    depth: Option<u32>,
    subsystem: &str,
) -> Result<Vec<OwnedFd>> {
    let mut pipes = Vec::with_capacity(count);
    for _ in 0..count {
        let subscription = client.subscribe(SubscribeOptions { depth }).await?;
        let options = WatchOptions::new().option("subsystem", subsystem.to_owned());
        subscription.add_watch(1, "devices", &options).await?;
        pipes.push(subscription.into_pipe());
    }
    Ok(pipes)
}

/// `count` `change` events of a USB stick (the properties udevd's rules give one) on
/// `subsystem`, with fresh sequence numbers: their SEQNUMs and their messages as udevd
/// sends them.
fn events(subsystem: &str, count: usize) -> (Vec<u64>, Vec<Vec<u8>>) {
    (0..count)
        .map(|i| {
            let event =
                InjectedEvent::usb_storage_device("change", 3, (i % 100) as u8 + 1, next_seqnum())
                    .set("SUBSYSTEM", subsystem);
            (event.seqnum(), event.encode())
        })
        .unzip()
}

/// A plain libudev client: a monitor on the "udev" group that filters by subsystem in the
/// kernel, as any program opens one.
fn libudev_monitor(subsystem: &str) -> Result<udev::MonitorSocket> {
    let socket = udev::MonitorBuilder::new()?
        .match_subsystem(subsystem)?
        .listen()?;
    nix::sys::socket::setsockopt(
        &socket,
        nix::sys::socket::sockopt::RcvBufForce,
        &RECEIVE_BUFFER,
    )
    .context("SO_RCVBUFFORCE on the libudev monitor")?;
    Ok(socket)
}

// ---------------------------------------------------------------------------------------
// Clocks
// ---------------------------------------------------------------------------------------

/// When readers stop waiting: never while events are being sent; then after a grace period.
struct Stop(AtomicU64);

impl Stop {
    fn new() -> Stop {
        Stop(AtomicU64::new(u64::MAX))
    }

    fn arm(&self, grace: Duration) {
        self.0
            .store(now_ns() + grace.as_nanos() as u64, Ordering::SeqCst);
    }

    fn expired(&self) -> bool {
        now_ns() > self.0.load(Ordering::SeqCst)
    }
}

/// CPU time used so far, in µs: by every CPU of the machine (busy, not idle or stolen), by
/// this process (sender, monitors, readers) and by the daemon; and the time the hypervisor
/// gave this machine's CPUs to someone else (steal).
#[derive(Clone, Copy, Debug, Default)]
struct CpuTimes {
    machine: u64,
    bench: u64,
    daemon: u64,
    stolen: u64,
}

impl CpuTimes {
    fn now(daemon: u32) -> Result<CpuTimes> {
        let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?
            .filter(|t| *t > 0)
            .unwrap_or(100) as u64;
        let ticks = |t: u64| t * 1_000_000 / tick;
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
        let busy = [0, 1, 2, 5, 6]
            .iter()
            .map(|i| cpu.get(*i).unwrap_or(&0))
            .sum();
        let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)?;
        let micros =
            |t: nix::sys::time::TimeVal| t.tv_sec() as u64 * 1_000_000 + t.tv_usec() as u64;
        let own = std::fs::read_to_string(format!("/proc/{daemon}/stat"))?;
        // After the command name in parentheses: state is field 3, utime 14, stime 15.
        let fields: Vec<u64> = own
            .rsplit_once(')')
            .context("/proc/PID/stat")?
            .1
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        Ok(CpuTimes {
            machine: ticks(busy),
            stolen: ticks(*cpu.get(7).unwrap_or(&0)),
            bench: micros(usage.user_time()) + micros(usage.system_time()),
            daemon: ticks(fields.get(11).unwrap_or(&0) + fields.get(12).unwrap_or(&0)),
        })
    }
}

/// CPU time per event during a run, in µs.
#[derive(Clone, Copy, Debug, Default)]
struct CpuPerEvent {
    daemon: f64,
    /// This process: the sender, the libudev monitor(s), the subscribers' readers.
    bench: f64,
    /// Everything else on the machine: other programs disturbing the run.
    other: f64,
    /// Time the hypervisor ran something else on this machine's CPUs.
    stolen: f64,
}

impl CpuPerEvent {
    fn between(before: CpuTimes, after: CpuTimes, events: usize) -> CpuPerEvent {
        let per_event = |us: u64| us as f64 / events.max(1) as f64;
        let machine = after.machine.saturating_sub(before.machine);
        let bench = after.bench.saturating_sub(before.bench);
        let daemon = after.daemon.saturating_sub(before.daemon);
        CpuPerEvent {
            daemon: per_event(daemon),
            bench: per_event(bench),
            other: per_event(machine.saturating_sub(bench + daemon)),
            stolen: per_event(after.stolen.saturating_sub(before.stolen)),
        }
    }

    fn show(&self) -> String {
        format!(
            "{:.0} / {:.0} / {:.0} / {:.0}",
            self.daemon, self.bench, self.other, self.stolen
        )
    }
}

// ---------------------------------------------------------------------------------------
// Sending and receiving
// ---------------------------------------------------------------------------------------

/// Sends `messages` in order on one socket. With `pace`, each one goes a jittered gap of
/// about `pace` after the previous one; without it, they go back to back. Returns the time
/// just before each `sendto()`.
fn send(messages: &[Vec<u8>], pace: Option<Duration>) -> Result<Vec<u64>> {
    let injector = Injector::new()?;
    let mut jitter = Jitter(0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()));
    let mut sent = Vec::with_capacity(messages.len());
    for (i, message) in messages.iter().enumerate() {
        if let (Some(pace), Some(previous)) = (pace, sent.last()) {
            let due = previous + jitter.gap(pace);
            let now = now_ns();
            if due > now {
                std::thread::sleep(Duration::from_nanos(due - now));
            }
        }
        sent.push(now_ns());
        injector
            .send_raw(message)
            .with_context(|| format!("sending event {i}"))?;
    }
    Ok(sent)
}

/// (SEQNUM, time) of every event the libudev monitor receives, until it has `last` or
/// `stop` expires. The time is taken when libudev hands over the parsed event.
fn receive_libudev(
    socket: &udev::MonitorSocket,
    last: u64,
    stop: &Stop,
) -> Result<Vec<(u64, u64)>> {
    let mut received = Vec::new();
    while !stop.expired() {
        for event in socket.iter() {
            let at = now_ns();
            let seqnum = event.sequence_number();
            received.push((seqnum, at));
            if seqnum == last {
                return Ok(received);
            }
        }
        let mut fds = [PollFd::new(socket.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, 100u16) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(e).context("poll (libudev monitor)"),
        }
    }
    Ok(received)
}

/// One record as a subscriber read it.
#[derive(Clone, Copy, Debug)]
struct Read {
    seqnum: u64,
    /// When its read() returned.
    at: u64,
    /// The daemon's time stamp (CLOCK_REALTIME).
    stamp: u64,
}

/// What subscribers read, and any loss they saw.
#[derive(Debug, Default)]
struct Tally {
    reads: Vec<Read>,
    loss_records: u64,
    /// The sum of the LOSS records' counts.
    lost: u64,
    /// Records missing between the sequence numbers of consecutive records.
    seq_gaps: u64,
    record_len: usize,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.reads.extend(other.reads);
        self.loss_records += other.loss_records;
        self.lost += other.lost;
        self.seq_gaps += other.seq_gaps;
        self.record_len = self.record_len.max(other.record_len);
    }
}

/// One subscriber's place in its sequence.
struct Subscriber {
    index: usize,
    next_seq: u64,
    /// It has read the run's last event.
    done: bool,
}

impl Subscriber {
    fn new(index: usize) -> Subscriber {
        Subscriber {
            index,
            next_seq: 1,
            done: false,
        }
    }

    /// One packet, read at `at`.
    fn take(&mut self, packet: &[u8], at: u64, last: u64, tally: &mut Tally) -> Result<()> {
        let record = Record::parse(packet).context("a record that does not decode")?;
        let header = record.header;
        tally.seq_gaps += header.seq.saturating_sub(self.next_seq);
        self.next_seq = header.seq + 1;
        if header.is(RecordType::Meta, meta::LOSS) {
            tally.loss_records += 1;
            tally.lost += record.get_u64(attr::LOST_COUNT).unwrap_or(0);
            return Ok(());
        }
        ensure!(
            header.record_type == RecordType::Device as u32,
            "subscriber {}: a record of type {}",
            self.index,
            header.record_type
        );
        let seqnum = record
            .get_u64(attr::SEQNUM)
            .context("a device record without SEQNUM")?;
        tally.reads.push(Read {
            seqnum,
            at,
            stamp: header.time_ns,
        });
        tally.record_len = packet.len();
        self.done |= seqnum == last;
        Ok(())
    }
}

/// Reads every pipe from one thread with epoll, until each has its `last` event or `stop`
/// expires.
fn read_epoll(pipes: &[OwnedFd], last: u64, stop: &Stop) -> Result<Tally> {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).context("epoll_create")?;
    for (i, pipe) in pipes.iter().enumerate() {
        set_nonblocking(pipe)?;
        epoll
            .add(pipe, EpollEvent::new(EpollFlags::EPOLLIN, i as u64))
            .context("epoll_ctl")?;
    }
    let mut subscribers: Vec<Subscriber> = (0..pipes.len()).map(Subscriber::new).collect();
    let mut tally = Tally::default();
    let mut ready = vec![EpollEvent::empty(); pipes.len()];
    let mut buf = vec![0u8; MAX_RECORD_LEN];
    let mut done = 0;
    while done < pipes.len() && !stop.expired() {
        let n = match epoll.wait(&mut ready, 100u16) {
            Ok(n) => n,
            Err(Errno::EINTR) => 0,
            Err(e) => return Err(e).context("epoll_wait"),
        };
        for event in &ready[..n] {
            let i = event.data() as usize;
            let subscriber = &mut subscribers[i];
            loop {
                match nix::unistd::read(&pipes[i], &mut buf) {
                    Ok(0) => bail!("subscriber {i}: the pipe ended"),
                    Ok(len) => {
                        let at = now_ns();
                        let was_done = subscriber.done;
                        subscriber.take(&buf[..len], at, last, &mut tally)?;
                        if subscriber.done && !was_done {
                            done += 1;
                        }
                    }
                    Err(Errno::EAGAIN) => break,
                    Err(Errno::EINTR) => {}
                    Err(e) => return Err(e).context("read"),
                }
            }
        }
    }
    Ok(tally)
}

/// Reads one pipe, in poll() then read() as a client process would, until it has `last` or
/// `stop` expires.
fn read_one(pipe: &OwnedFd, index: usize, last: u64, stop: &Stop) -> Result<Tally> {
    let mut subscriber = Subscriber::new(index);
    let mut tally = Tally::default();
    let mut buf = vec![0u8; MAX_RECORD_LEN];
    while !subscriber.done && !stop.expired() {
        let mut fds = [PollFd::new(pipe.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, 100u16) {
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(e).context("poll"),
        }
        match nix::unistd::read(pipe, &mut buf) {
            Ok(0) => bail!("subscriber {index}: the pipe ended"),
            Ok(len) => {
                let at = now_ns();
                subscriber.take(&buf[..len], at, last, &mut tally)?;
            }
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e).context("read"),
        }
    }
    Ok(tally)
}

/// Everything one run saw.
struct Capture {
    seqnums: Vec<u64>,
    message_len: usize,
    /// When each event was sent, in the order of `seqnums`.
    sent: Vec<u64>,
    /// (SEQNUM, time) per event each libudev monitor received; the first is the baseline.
    libudev: Vec<Vec<(u64, u64)>>,
    tally: Tally,
    subscribers: usize,
    realtime_offset: i64,
    cpu: CpuPerEvent,
}

impl Capture {
    /// The index of each SEQNUM in `seqnums`.
    fn positions(&self) -> HashMap<u64, usize> {
        self.seqnums
            .iter()
            .enumerate()
            .map(|(i, seqnum)| (*seqnum, i))
            .collect()
    }
}

/// Sends `count` events (paced, or back to back) while `monitors` plain libudev monitors
/// (a thread each) and the readers of the subscribers' `pipes` receive them.
fn capture(
    subsystem: &str,
    daemon: u32,
    pipes: &[OwnedFd],
    readers: Readers,
    monitors: usize,
    count: usize,
    pace: Option<Duration>,
) -> Result<Capture> {
    let (seqnums, messages) = events(subsystem, count);
    let last = *seqnums.last().context("no events")?;
    let realtime_offset = realtime_offset();
    let stop = Stop::new();
    let (sent, libudev, tally, cpu) = std::thread::scope(|s| {
        let stop = &stop;
        // libudev's objects stay on the thread that made them (they are not Send); each
        // thread says when its monitor listens.
        let (listening_tx, listening) = std::sync::mpsc::channel();
        let monitor_threads: Vec<_> = (0..monitors)
            .map(|_| {
                let listening_tx = listening_tx.clone();
                s.spawn(move || {
                    let monitor = libudev_monitor(subsystem);
                    let ready = monitor.as_ref().map(drop).map_err(|e| format!("{e:#}"));
                    let _ = listening_tx.send(ready);
                    receive_libudev(&monitor?, last, stop)
                })
            })
            .collect();
        drop(listening_tx);
        let reader_threads = match readers {
            Readers::Epoll => vec![s.spawn(move || read_epoll(pipes, last, stop))],
            Readers::ThreadEach => pipes
                .iter()
                .enumerate()
                .map(|(i, pipe)| s.spawn(move || read_one(pipe, i, last, stop)))
                .collect(),
        };
        let listening = (0..monitors).try_for_each(|_| {
            listening
                .recv()
                .unwrap_or_else(|_| Err("a libudev monitor's thread died".into()))
                .map_err(|e| anyhow!("libudev monitor: {e}"))
        });
        // Every reader is waiting in poll() before the first event goes.
        std::thread::sleep(Duration::from_millis(100));
        let before = CpuTimes::now(daemon);
        let sent = listening.and_then(|()| send(&messages, pace));
        // From here on every thread ends by itself, whatever happened.
        stop.arm(GRACE);
        let mut libudev = Vec::with_capacity(monitors);
        for monitor in monitor_threads {
            libudev.push(
                monitor
                    .join()
                    .map_err(|_| anyhow!("a libudev monitor's thread panicked"))??,
            );
        }
        let mut tally = Tally::default();
        for reader in reader_threads {
            tally.merge(
                reader
                    .join()
                    .map_err(|_| anyhow!("a reader's thread panicked"))??,
            );
        }
        let cpu = CpuPerEvent::between(before?, CpuTimes::now(daemon)?, count);
        anyhow::Ok((sent?, libudev, tally, cpu))
    })?;
    Ok(Capture {
        seqnums,
        message_len: messages[0].len(),
        sent,
        libudev,
        tally,
        subscribers: pipes.len(),
        realtime_offset,
        cpu,
    })
}

// ---------------------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------------------

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Anything lost, in words; empty if nothing was.
fn losses(libudev_missing: usize, reads_missing: usize, tally: &Tally) -> String {
    let mut parts = Vec::new();
    if libudev_missing > 0 {
        parts.push(format!("libudev monitor missed {libudev_missing} events"));
    }
    if reads_missing > 0 {
        parts.push(format!("{reads_missing} subscriber reads missing"));
    }
    if tally.loss_records > 0 {
        parts.push(format!(
            "{} LOSS records counting {} events",
            tally.loss_records, tally.lost
        ));
    }
    if tally.seq_gaps > 0 {
        parts.push(format!(
            "{} records missing by sequence number",
            tally.seq_gaps
        ));
    }
    parts.join(", ")
}

struct LatencyRow {
    subscribers: usize,
    readers: Readers,
    events: usize,
    reads: usize,
    libudev: Pct,
    watchd: Pct,
    added: Pct,
    /// Per event, the slowest subscriber's added latency.
    added_slowest: Pct,
    /// Per event, the slowest subscriber's latency.
    watchd_slowest: Pct,
    /// Sent → the daemon's time stamp (one per event).
    to_stamp: Pct,
    /// The daemon's time stamp → a subscriber's read.
    stamp_to_read: Pct,
    message_len: usize,
    record_len: usize,
    losses: String,
    cpu: CpuPerEvent,
}

impl LatencyRow {
    fn from_capture(subscribers: usize, readers: Readers, c: &Capture) -> LatencyRow {
        let positions = c.positions();
        // The position of a measured (not warm-up) event.
        let measured = |seqnum: u64| positions.get(&seqnum).copied().filter(|i| *i >= WARMUP);
        let latency = |i: usize, at: u64| at as i64 - c.sent[i] as i64;
        let mut libudev_at = vec![None; c.seqnums.len()];
        let mut libudev = Vec::new();
        for &(seqnum, at) in &c.libudev[0] {
            if let Some(i) = positions.get(&seqnum) {
                libudev_at[*i] = Some(at);
            }
            if let Some(i) = measured(seqnum) {
                libudev.push(latency(i, at));
            }
        }
        let mut stamps = vec![None; c.seqnums.len()];
        let mut slowest: Vec<Option<i64>> = vec![None; c.seqnums.len()];
        let mut watchd_slowest: Vec<Option<i64>> = vec![None; c.seqnums.len()];
        let (mut watchd, mut added, mut stamp_to_read) = (Vec::new(), Vec::new(), Vec::new());
        for read in &c.tally.reads {
            let Some(i) = measured(read.seqnum) else {
                continue;
            };
            let stamp = read.stamp as i64 - c.realtime_offset;
            stamps[i] = Some(stamp);
            watchd.push(latency(i, read.at));
            watchd_slowest[i] = watchd_slowest[i].max(Some(latency(i, read.at)));
            stamp_to_read.push(read.at as i64 - stamp);
            if let Some(received) = libudev_at[i] {
                let extra = read.at as i64 - received as i64;
                added.push(extra);
                slowest[i] = slowest[i].max(Some(extra));
            }
        }
        let to_stamp = stamps
            .iter()
            .enumerate()
            .filter_map(|(i, stamp)| stamp.map(|s| s - c.sent[i] as i64))
            .collect();
        let libudev_missing = libudev_at.iter().filter(|at| at.is_none()).count();
        let expected_reads = c.seqnums.len() * c.subscribers;
        LatencyRow {
            subscribers,
            readers,
            events: c.seqnums.len() - WARMUP,
            reads: watchd.len(),
            libudev: Pct::of(libudev),
            watchd: Pct::of(watchd),
            added: Pct::of(added),
            added_slowest: Pct::of(slowest.into_iter().flatten().collect()),
            watchd_slowest: Pct::of(watchd_slowest.into_iter().flatten().collect()),
            to_stamp: Pct::of(to_stamp),
            stamp_to_read: Pct::of(stamp_to_read),
            message_len: c.message_len,
            record_len: c.tally.record_len,
            losses: losses(
                libudev_missing,
                expected_reads.saturating_sub(c.tally.reads.len()),
                &c.tally,
            ),
            cpu: c.cpu,
        }
    }

    fn label(&self) -> String {
        format!(
            "{} | {}",
            self.subscribers,
            self.readers.describe(self.subscribers)
        )
    }

    /// Other programs (or the hypervisor's steal) took more than a tenth of a CPU while
    /// this row ran.
    fn disturbed(&self) -> Option<String> {
        let share = (self.cpu.other + self.cpu.stolen) / (PACE.as_nanos() as f64 / 1000.0);
        (share > 0.1).then(|| {
            format!(
                "other programs and steal took {:.0}% of a CPU during the run with {}, {}: \
                 its tail is theirs as much as watchd's; run again on a quiet machine",
                share * 100.0,
                self.subscribers,
                self.readers.describe(self.subscribers)
            )
        })
    }

    fn goal_met(&self) -> bool {
        self.added.p99 <= GOAL_NS && self.losses.is_empty()
    }
}

/// The reference: many programs, each with a libudev monitor of its own.
struct MonitorsRow {
    monitors: usize,
    receives: usize,
    latency: Pct,
    /// Per event, the slowest monitor's latency.
    slowest: Pct,
    missing: usize,
    cpu: CpuPerEvent,
}

impl MonitorsRow {
    fn from_capture(c: &Capture) -> MonitorsRow {
        let positions = c.positions();
        let mut slowest: Vec<Option<i64>> = vec![None; c.seqnums.len()];
        let mut latencies = Vec::new();
        let mut received = 0;
        for &(seqnum, at) in c.libudev.iter().flatten() {
            let Some(&i) = positions.get(&seqnum) else {
                continue;
            };
            received += 1;
            if i >= WARMUP {
                let latency = at as i64 - c.sent[i] as i64;
                latencies.push(latency);
                slowest[i] = slowest[i].max(Some(latency));
            }
        }
        MonitorsRow {
            monitors: c.libudev.len(),
            receives: latencies.len(),
            latency: Pct::of(latencies),
            slowest: Pct::of(slowest.into_iter().flatten().collect()),
            missing: (c.seqnums.len() * c.libudev.len()).saturating_sub(received),
            cpu: c.cpu,
        }
    }
}

/// One reader's view of the storm.
struct StormReceiver {
    received: usize,
    /// First sendto() → the last event it got.
    span: u64,
    latency: Pct,
}

impl StormReceiver {
    fn new(c: &Capture, positions: &HashMap<u64, usize>, times: &[(u64, u64)]) -> Self {
        let first = c.sent[0];
        let latencies: Vec<i64> = times
            .iter()
            .filter_map(|(seqnum, at)| positions.get(seqnum).map(|i| (*i, *at)))
            .map(|(i, at)| at as i64 - c.sent[i] as i64)
            .collect();
        StormReceiver {
            received: latencies.len(),
            span: times.iter().map(|(_, at)| at - first).max().unwrap_or(0),
            latency: Pct::of(latencies),
        }
    }

    fn per_second(&self) -> u64 {
        (self.received as f64 / (self.span.max(1) as f64 / 1e9)) as u64
    }
}

struct StormRow {
    events: usize,
    /// First sendto() → the last one returned.
    sending: u64,
    libudev: StormReceiver,
    watchd: StormReceiver,
    losses: String,
    cpu: CpuPerEvent,
}

impl StormRow {
    fn from_capture(c: &Capture) -> StormRow {
        let positions = c.positions();
        let reads: Vec<(u64, u64)> = c.tally.reads.iter().map(|r| (r.seqnum, r.at)).collect();
        let libudev = StormReceiver::new(c, &positions, &c.libudev[0]);
        let watchd = StormReceiver::new(c, &positions, &reads);
        StormRow {
            events: c.seqnums.len(),
            sending: c.sent[c.sent.len() - 1] - c.sent[0],
            losses: losses(
                c.seqnums.len() - libudev.received,
                c.seqnums.len() - watchd.received,
                &c.tally,
            ),
            libudev,
            watchd,
            cpu: c.cpu,
        }
    }
}

fn report(machine: &Machine, rows: &[LatencyRow], reference: &MonitorsRow, storm: &StormRow) {
    println!("## Device event latency: uevent → subscriber's read(), against a libudev monitor\n");
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
    if let Some(row) = rows.first() {
        println!(
            "Event: a USB stick's `change` (udevd's message {} bytes, watchd record {} bytes); \
             {} measured events per row after {WARMUP} for warm-up, ~{PACE:?} apart. \
             Times in µs.\n",
            row.message_len,
            row.record_len,
            thousands(row.events as u64)
        );
    }
    println!(
        "| subscribers | reader | reads | libudev monitor p50 / p99 | watchd p50 / p99 | added p50 / p99 | added p99, slowest subscriber of each event | goal: p99 added ≤ 1 ms |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|:---:|");
    for row in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            row.label(),
            thousands(row.reads as u64),
            row.libudev.p50_p99_micros(),
            row.watchd.p50_p99_micros(),
            row.added.p50_p99_micros(),
            micros(row.added_slowest.p99),
            if row.goal_met() { "met" } else { "not met" }
        );
    }

    println!(
        "\nWhere watchd's time goes (p50 / p99, µs; the daemon stamps each event once it has \
         parsed it), and CPU time per event during the run (µs: the daemon / this process: \
         sender, libudev monitor and readers / everything else on the machine / stolen by the \
         hypervisor):\n"
    );
    println!(
        "| subscribers | reader | uevent → daemon's stamp (wake-up, recv, libudev parse) | stamp → read() (encode, pipe writes, reader wake-up) | max: libudev / watchd / added | CPU per event |"
    );
    println!("|---:|---|---:|---:|---:|---:|");
    for row in rows {
        println!(
            "| {} | {} | {} | {} / {} / {} | {} |",
            row.label(),
            row.to_stamp.p50_p99_micros(),
            row.stamp_to_read.p50_p99_micros(),
            micros(row.libudev.max),
            micros(row.watchd.max),
            micros(row.added.max),
            row.cpu.show()
        );
    }
    for row in rows.iter().filter(|r| !r.losses.is_empty()) {
        println!("\nLOSS with {}: {}", row.label(), row.losses);
    }
    for disturbed in rows.iter().filter_map(LatencyRow::disturbed) {
        println!("\nDisturbed: {disturbed}.");
    }

    println!(
        "\nFor comparison, the same events to {} plain libudev monitors with a thread each, as \
         that many programs would each open one, without watchd (a run of its own; p50 / p99, \
         µs; CPU per event as above):\n",
        reference.monitors
    );
    println!("| receivers | receives | latency | slowest receiver of each event | CPU per event |");
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| {} libudev monitors, a thread each | {} | {} | {} | {} |",
        reference.monitors,
        thousands(reference.receives as u64),
        reference.latency.p50_p99_micros(),
        reference.slowest.p50_p99_micros(),
        reference.cpu.show()
    );
    for row in rows.iter().filter(|r| r.subscribers > 1) {
        println!(
            "| {} watchd subscribers, {} | {} | {} | {} | {} |",
            row.subscribers,
            row.readers.describe(row.subscribers),
            thousands(row.reads as u64),
            row.watchd.p50_p99_micros(),
            row.watchd_slowest.p50_p99_micros(),
            row.cpu.show()
        );
    }
    if reference.missing > 0 {
        println!(
            "\nLOSS: the libudev monitors missed {} events",
            reference.missing
        );
    }

    println!(
        "\nStorm: {} events sent back to back on one socket; one subscriber of depth {STORM_DEPTH}.\n",
        thousands(storm.events as u64)
    );
    println!(
        "| receiver | events | first send → last event, ms | events/s | latency p50 / p99 / max, ms |"
    );
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| sender (`sendto()` returns) | {} | {:.1} | {} | |",
        thousands(storm.events as u64),
        storm.sending as f64 / 1e6,
        thousands((storm.events as f64 / (storm.sending.max(1) as f64 / 1e9)) as u64)
    );
    for (name, receiver) in [
        ("libudev monitor", &storm.libudev),
        ("watchd subscriber", &storm.watchd),
    ] {
        println!(
            "| {name} | {} | {:.1} | {} | {:.2} / {:.2} / {:.2} |",
            thousands(receiver.received as u64),
            receiver.span as f64 / 1e6,
            thousands(receiver.per_second()),
            receiver.latency.p50 as f64 / 1e6,
            receiver.latency.p99 as f64 / 1e6,
            receiver.latency.max as f64 / 1e6
        );
    }
    println!("\nStorm CPU per event (µs, as above): {}", storm.cpu.show());
    if storm.losses.is_empty() {
        println!("\nStorm: no loss (every event read once, in sequence, no LOSS record).");
    } else {
        println!("\nStorm LOSS: {}", storm.losses);
    }

    println!("\nGoal (100 subscribers: p99 added over the libudev monitor ≤ 1 ms):");
    for row in rows.iter().filter(|r| r.subscribers == 100) {
        println!(
            "- {}, {}: p99 added {} µs: {}",
            row.subscribers,
            row.readers.describe(row.subscribers),
            micros(row.added.p99),
            if row.goal_met() { "met" } else { "NOT met" }
        );
    }
}
