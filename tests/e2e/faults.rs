//! Faults around the daemon (issue 14, item 3): the bus killed under it, its descriptor
//! limit reached, and a subscriber that never reads through a storm of 100,000 events.
//! udevd killed and restarted, and the device socket overflowing, are in `udevd_switch.rs`.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::Signal;
use watchd_client::{Client, EventStream, Filter, SubscribeOptions, Subscription, WatchOptions};
use watchd_e2e::{Env, Trial, mounts, send_signal, wait_until};
use watchd_proto::{Record, RecordType, attr, file, meta, mount};

use crate::{expect_mount, next_within, trial};

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "faults::the_bus_killed_ends_the_daemon_with_one_error_line_and_every_pipe_with_end_of_file",
            bus_killed,
        ),
        trial(
            "faults::at_its_fd_limit_subscribe_is_refused_with_limit_exceeded_and_works_again_after_closes",
            fd_limit,
        ),
        trial(
            "faults::a_subscriber_that_never_reads_100000_events_costs_the_others_nothing",
            stuck_subscriber,
        ),
    ]
}

const LIMIT_EXCEEDED: &str = "org.watchd.Watchd1.Error.LimitExceeded";

fn text(path: &Path) -> Result<&str> {
    path.to_str().context("the scratch path is not UTF-8")
}

/// Reads `stream` to its end; fails if it has not ended within `limit`.
async fn expect_end_of_file(stream: &mut EventStream, limit: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => bail!("the pipe did not end within {limit:?}"),
            Ok(None) => return Ok(()),
            // Whatever the daemon wrote before it went is still in the pipe.
            Ok(Some(event)) => drop(event?),
        }
    }
}

/// systemd/watchd.service has `Restart=on-failure`: a daemon that lost the system bus exits
/// with status 1, and systemd starts it again (`Requires=dbus.socket` holds it back until the
/// bus is there again); the clients, whose own connections died with the bus, subscribe
/// again. Reconnecting instead would keep the pipes, but no client could reach the
/// subscriptions on the new bus, and the bus's restart means the system is going down or
/// broken: a fresh start is what a system daemon does.
async fn bus_killed() -> Result<()> {
    let mut env = Env::start("bus-killed").await?;
    let top = env.scratch.join("top");
    mounts::tmpfs(&top, "faults", "size=1m")?;
    let client = env.client().await?;
    let scratch = text(&env.scratch.path)?.to_owned();
    let watches = [
        ("mounts", WatchOptions::new().path(scratch)),
        ("files", WatchOptions::new().path(text(&top)?)),
        ("devices", WatchOptions::new().option("subsystem", "block")),
    ];
    let mut streams = Vec::new();
    for (kind, options) in &watches {
        let sub = client.subscribe(SubscribeOptions::default()).await?;
        sub.add_watch(1, kind, options).await?;
        streams.push((*kind, sub.into_events()));
    }
    let bare = client.subscribe(SubscribeOptions::default()).await?;
    streams.push(("no watch", bare.into_events()));

    // The sources are busy when the bus goes: files keep coming until the daemon is gone,
    // so its threads are mid-work when it exits.
    let busy = std::thread::spawn({
        let top = top.clone();
        move || {
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut n = 0;
            while Instant::now() < deadline && std::fs::write(top.join(n.to_string()), b"x").is_ok()
            {
                n += 1;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(100));
    send_signal(env.bus.pid(), Signal::SIGKILL)?;
    let killed = Instant::now();
    let mut status = None;
    wait_until(Duration::from_secs(10), "the daemon to exit", || {
        status = env.daemon.process.child().try_wait()?;
        Ok(status.is_some())
    })
    .with_context(|| format!("the daemon's log:\n{}", env.daemon.log()))?;
    let status = status.expect("waited for it");
    let exited = killed.elapsed();
    ensure!(
        status.code() == Some(1),
        "the daemon exited with {status}, not status 1 (a failure systemd's Restart=on-failure restarts)"
    );
    for (kind, stream) in &mut streams {
        expect_end_of_file(stream, Duration::from_secs(5))
            .await
            .with_context(|| format!("the subscription with {kind}"))?;
    }
    let _ = busy.join();
    let log = env.daemon.log();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    ensure!(
        errors.len() == 1 && errors[0].contains("lost the bus connection"),
        "one error line saying the bus connection was lost, got {errors:?}; the log:\n{log}"
    );
    eprintln!(
        "the daemon exited {exited:?} after the bus was killed: {}",
        errors[0]
    );
    Ok(())
}

/// `prlimit --pid PID --nofile=N:N`: the running daemon's descriptor limit.
fn set_fd_limit(pid: u32, limit: usize) -> Result<()> {
    let out = Command::new("prlimit")
        .arg("--pid")
        .arg(pid.to_string())
        .arg(format!("--nofile={limit}:{limit}"))
        .output()
        .context("prlimit (util-linux)")?;
    ensure!(
        out.status.success(),
        "prlimit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Subscribes until the daemon refuses (20 tries at most); returns what it granted and the
/// refusal's error name and message. Any other failure (a lost connection) fails.
async fn subscribe_until_refused(client: &Client) -> Result<(Vec<Subscription>, String, String)> {
    let mut held = Vec::new();
    while held.len() < 20 {
        match client.subscribe(SubscribeOptions::default()).await {
            Ok(sub) => held.push(sub),
            Err(watchd_client::Error::Daemon { name, message }) => {
                return Ok((held, name, message));
            }
            Err(e) => bail!("Subscribe failed without an error from the daemon: {e}"),
        }
    }
    bail!("20 subscriptions granted under a limit that leaves room for a few")
}

/// Descriptors the daemon keeps free (`hub::DESCRIPTOR_RESERVE`).
const RESERVE: usize = 64;

/// The daemon's descriptor limit lowered to what it holds, plus its reserve, plus a few: a
/// new Subscribe gets `LimitExceeded` naming the limit, and so does an AddWatch carrying a
/// descriptor (which the daemon can still receive: at a full table, zbus would drop the bus
/// connection, and the daemon with it); the bus connection and the existing subscription
/// carry on (a mount and a file event reach it); once some subscriptions close, Subscribe
/// works again.
async fn fd_limit() -> Result<()> {
    let env = Env::start("fd-limit").await?;
    let top = env.scratch.join("top");
    mounts::tmpfs(&top, "faults", "size=1m")?;
    let client = env.client().await?;
    let kept = client.subscribe(SubscribeOptions::default()).await?;
    kept.add_watch(
        1,
        "mounts",
        &WatchOptions::new().path(text(&env.scratch.path)?),
    )
    .await?;
    kept.add_watch(2, "files", &WatchOptions::new().path(text(&top)?))
        .await?;
    let (control, mut kept) = kept.split();
    // The daemon's own descriptors (bus, runtime, sources) are all open by now.
    let open = env.daemon.fd_count()?;
    let limit = open + RESERVE + 6;
    set_fd_limit(env.daemon.pid(), limit)?;

    let (mut held, name, message) = subscribe_until_refused(&client).await?;
    let named = format!("RLIMIT_NOFILE {limit}");
    ensure!(
        name == LIMIT_EXCEEDED && message.contains("open files") && message.contains(&named),
        "at {limit} descriptors, Subscribe got {name}: {message:?}, not LimitExceeded naming {named}"
    );
    ensure!(
        !held.is_empty(),
        "the limit left room for no subscription at all"
    );
    eprintln!(
        "limit {limit} ({open} open before): {} subscriptions granted, then {name}: {message}",
        held.len()
    );

    let dir = std::fs::File::open(&top)?;
    let with_fd = control
        .add_watch(
            3,
            "files",
            &WatchOptions::new().option("fd", zbus::Fd::from(&dir)),
        )
        .await;
    ensure!(
        crate::error_name(with_fd)? == LIMIT_EXCEEDED,
        "AddWatch with a descriptor at the reserve was not refused with LimitExceeded"
    );
    let status = client.status().await?;
    ensure!(
        status.subscriptions as usize == held.len() + 1 && status.watches == 2,
        "the daemon counts {} subscriptions and {} watches, not {} and 2",
        status.subscriptions,
        status.watches,
        held.len() + 1
    );

    // At the limit, the subscription that was there gets its events.
    let point = env.scratch.join("at-limit");
    mounts::tmpfs(&point, "faults", "size=64k")?;
    expect_mount(&mut kept, mount::ATTACH, &point).await?;
    std::fs::File::create(top.join("at-limit"))?;
    let created = next_within(&mut kept, Duration::from_secs(10)).await?;
    ensure!(
        created.header().is(RecordType::File, file::CREATE)
            && created.record().get_str(attr::NAME).as_deref() == Some("at-limit"),
        "expected the file's creation, got type {} subtype {}",
        created.header().record_type,
        created.header().subtype
    );

    // Room again: the pipes closed are the descriptors freed.
    held.truncate(held.len() / 2);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client.subscribe(SubscribeOptions::default()).await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline && e.dbus_name() == Some(LIMIT_EXCEEDED) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => bail!("Subscribe did not work again after subscriptions closed: {e}"),
        }
    }
    let log = env.daemon.log();
    ensure!(
        log.lines()
            .any(|l| l.contains("subscribe: refused") && l.contains(&named)),
        "the refusal is not in the daemon's log:\n{log}"
    );
    ensure!(!log.contains("panicked"), "the daemon panicked:\n{log}");
    Ok(())
}

/// Events in the storm.
const STORM: u64 = 100_000;
/// Files made before the keeping-up readers must have seen them all: below their pipes'
/// depth, so that a reader descheduled for a while on a busy machine still loses nothing,
/// and far below the kernel's queue (16,384 events) and a checker's (1,024 batches).
const ROUND: u64 = 200;
/// The keeping-up readers' pipes.
const READER_DEPTH: u32 = 256;
/// What the stuck subscriber's backlog would be if the daemon kept its records: about
/// 150 bytes each. Its memory may grow by less than a tenth of it.
const RSS_GROWTH_ALLOWED_KIB: u64 = STORM * 150 / 1024 / 10;

/// A thread reading one subscription's pipe as fast as it can, counting the create records
/// of tag 1 and the records the pipe says it lost. It fails on a gap in the sequence.
struct Reader {
    creates: Arc<AtomicU64>,
    lost: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Reader {
    fn start(pipe: OwnedFd) -> Reader {
        let creates = Arc::new(AtomicU64::new(0));
        let lost = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, l, s) = (creates.clone(), lost.clone(), stop.clone());
        let thread = std::thread::spawn(move || read_all(pipe, &c, &l, &s));
        Reader {
            creates,
            lost,
            stop,
            thread: Some(thread),
        }
    }

    fn creates(&self) -> u64 {
        self.creates.load(Ordering::Relaxed)
    }

    /// Stops the thread; its verdict.
    fn finish(mut self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().expect("joined once").join() {
            Ok(result) => result,
            Err(_) => bail!("a reader thread panicked"),
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn read_all(pipe: OwnedFd, creates: &AtomicU64, lost: &AtomicU64, stop: &AtomicBool) -> Result<()> {
    let file = std::fs::File::from(pipe);
    let mut buf = [0u8; 4096];
    let mut last_seq = 0;
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, PollTimeout::from(50u8))? == 0 {
            continue;
        }
        let n = std::io::Read::read(&mut &file, &mut buf)?;
        ensure!(n > 0, "the pipe ended during the storm");
        let record = Record::parse(&buf[..n]).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let seq = record.header.seq;
        ensure!(seq == last_seq + 1, "sequence {seq} after {last_seq}");
        last_seq = seq;
        if record.header.is(RecordType::Meta, meta::LOSS) {
            lost.fetch_add(
                record.get_u64(attr::LOST_COUNT).unwrap_or(0),
                Ordering::Relaxed,
            );
            bail!("a LOSS record: {:?}", record.get_str(attr::REASON));
        } else if record.header.is(RecordType::File, file::CREATE) && record.header.tag == 1 {
            creates.fetch_add(1, Ordering::Relaxed);
        } else {
            bail!(
                "unexpected record: type {} subtype {} tag {}",
                record.header.record_type,
                record.header.subtype,
                record.header.tag
            );
        }
    }
    Ok(())
}

/// 100,000 files made on a tmpfs, each a create record for three subscribers that read as
/// fast as they can (root and uid 1000) and for one that never reads until the end (root,
/// the same checker thread as two of the readers, the worst case). The readers get every
/// create, in sequence, and no LOSS; the stuck one, when it reads at last, finds its pipe's
/// worth and one LOSS counting exactly the rest; the daemon's memory stays flat (no queue
/// behind the full pipe). The files are made in rounds of [`ROUND`] (`mknod`: one create
/// event each, no open or close), each round once the readers have the one before: the
/// kernel's queue holds 16,384 events, and what would overflow it is the kernel's loss,
/// not the subscribers'.
async fn stuck_subscriber() -> Result<()> {
    use nix::sys::stat::{Mode, SFlag, mknod};
    use watchd_e2e::polkit::{TEST_UID, connect_as_user};

    let config = "[limits]\nmax_pipe_pages_per_uid = 4096\n";
    let env = Env::start_with_config("stuck-subscriber", config).await?;
    let top = env.scratch.join("top");
    mounts::tmpfs(&top, "faults", "size=16m,nr_inodes=200000,mode=0755")?;
    let root = env.client().await?;
    let (conn, _holder) = connect_as_user(&env.bus.address, TEST_UID).await?;
    let other = Client::from_connection(conn);
    let creates = WatchOptions::new()
        .path(text(&top)?)
        .filter(Filter::new(RecordType::File).subtypes([file::CREATE]));
    let mut readers = Vec::new();
    for client in [&root, &root, &other] {
        let sub = client
            .subscribe(SubscribeOptions {
                depth: Some(READER_DEPTH),
            })
            .await?;
        sub.add_watch(1, "files", &creates).await?;
        readers.push(Reader::start(sub.into_pipe()));
    }
    let stuck = root.subscribe(SubscribeOptions::default()).await?;
    stuck.add_watch(1, "files", &creates).await?;
    let depth = u64::from(stuck.depth().await?);
    let mut stuck = stuck.into_events();

    let mut rss = Vec::new();
    let started = Instant::now();
    let mut made = 0;
    'storm: while made < STORM {
        for _ in 0..ROUND {
            let path = top.join(made.to_string());
            mknod(&path, SFlag::S_IFREG, Mode::from_bits_truncate(0o644), 0)
                .with_context(|| format!("mknod {}", path.display()))?;
            made += 1;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while readers.iter().any(|r| r.creates() < made) {
            if readers
                .iter()
                .any(|r| r.thread.as_ref().is_some_and(|t| t.is_finished()))
            {
                break 'storm;
            }
            ensure!(
                Instant::now() < deadline,
                "the readers have {:?} of {made} creates after 60 s",
                readers.iter().map(Reader::creates).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if made.is_multiple_of(10_000) {
            rss.push((made, env.daemon.memory_kib()?.0));
        }
    }
    let took = started.elapsed();
    for (i, reader) in readers.into_iter().enumerate() {
        let (got, lost) = (reader.creates(), reader.lost.load(Ordering::Relaxed));
        reader
            .finish()
            .with_context(|| format!("reader {i}: {got} creates, {lost} lost"))?;
        ensure!(got == STORM, "reader {i} got {got} of {STORM} creates");
    }

    // The stuck subscriber: its pipe's worth, then one LOSS for everything else.
    let mut received = 0;
    let mut losses = Vec::new();
    while let Ok(event) = next_within(&mut stuck, Duration::from_secs(2)).await {
        if event.header().is(RecordType::Meta, meta::LOSS) {
            losses.push(event);
        } else {
            received += 1;
        }
    }
    ensure!(
        losses.len() == 1,
        "the stuck subscriber got {} LOSS records, not one",
        losses.len()
    );
    let loss = losses[0].record();
    let lost = loss.get_u64(attr::LOST_COUNT).context("lost_count")?;
    ensure!(
        received == depth && received + lost == STORM,
        "the stuck subscriber read {received} (its pipe holds {depth}) and lost {lost}: not {STORM}"
    );
    ensure!(
        loss.get_u64(attr::FIRST_LOST_SEQ) == Some(depth + 1)
            && loss.header.seq == STORM + 1
            && loss.get_u64(attr::LOST_TYPES) == Some(RecordType::File.bit()),
        "the LOSS record does not describe the gap after record {depth}"
    );

    let (first_kib, last_kib) = (rss[0].1, rss[rss.len() - 1].1);
    eprintln!(
        "{STORM} creates in {took:?}; the daemon's VmRSS (KiB) after each 10,000: {rss:?}; VmHWM {} KiB",
        env.daemon.memory_kib()?.1
    );
    ensure!(
        last_kib.saturating_sub(first_kib) <= RSS_GROWTH_ALLOWED_KIB,
        "the daemon's VmRSS grew from {first_kib} KiB to {last_kib} KiB over the storm (allowed: \
         {RSS_GROWTH_ALLOWED_KIB} KiB): something queues behind the full pipe"
    );
    Ok(())
}
