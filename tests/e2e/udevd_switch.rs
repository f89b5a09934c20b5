//! The device source following udevd with the real systemd-udevd: a control socket left by
//! a killed udevd, udevd started and killed while the daemon runs (also during a storm of
//! uevents), and a monitor socket that overflows.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use watchd_client::{Event, EventStream, SubscribeOptions, WatchOptions};
use watchd_e2e::udev::{self, InjectedEvent, LoopDevice, UdevdOwner};
use watchd_e2e::{Env, Trial, send_signal};
use watchd_proto::{RecordType, attr, device, meta};

use crate::devices::property;
use crate::{next_within, trial};

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "devices::udevd::a_stale_control_socket_means_kernel_events_and_udevd_starting_or_stopping_switches",
            stale_socket_then_udevd_starts,
        ),
        trial(
            "devices::udevd::killed_and_restarted_during_a_storm_switches_twice_and_events_go_on",
            restart_during_storm,
        ),
        trial(
            "devices::udevd::an_overflowing_monitor_socket_costs_every_device_watch_a_loss_record",
            socket_overflow,
        ),
    ]
}

/// A subscription with one device watch (tag 1) on `disk` and its partitions.
async fn watch_disk(env: &Env, disk: &LoopDevice) -> Result<EventStream> {
    let sub = env
        .client()
        .await?
        .subscribe(SubscribeOptions { depth: Some(256) })
        .await?;
    let options = WatchOptions::new()
        .option("subsystem", "block")
        .option("sysname", disk.name().to_owned());
    sub.add_watch(1, "devices", &options).await?;
    Ok(sub.into_events())
}

async fn devices_detail(env: &Env) -> Result<String> {
    let status = env.client().await?.status().await?;
    Ok(status
        .source_details
        .get("devices")
        .cloned()
        .unwrap_or_default())
}

fn synth_uuid(event: &Event) -> Option<String> {
    property(event, "SYNTH_UUID")
}

fn is_source_change(event: &Event, backend: &str) -> bool {
    event.header().is(RecordType::Meta, meta::SOURCE_CHANGED)
        && event.record().get_str(attr::BACKEND).as_deref() == Some(backend)
}

/// A UUID the kernel accepts in `change UUID`, unique per (run, index).
fn uuid(run: u32, index: usize) -> String {
    format!(
        "{:08x}-{:04x}-4000-8000-{:012x}",
        std::process::id(),
        run,
        index
    )
}

/// `change UUID` into the disk's uevent file: a real uevent, with SYNTH_UUID=UUID.
fn synth_change(disk: &str, uuid: &str) -> Result<()> {
    let file = format!("/sys/block/{disk}/uevent");
    std::fs::write(&file, format!("change {uuid}")).with_context(|| format!("writing {file}"))
}

/// Reads records until `done` says so, or `limit` passes.
async fn read_until(
    stream: &mut EventStream,
    limit: Duration,
    what: &str,
    mut done: impl FnMut(&Event) -> bool,
) -> Result<Vec<Event>> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = next_within(stream, left)
            .await
            .with_context(|| format!("waiting for {what} ({} records before)", seen.len()))?;
        let finished = done(&event);
        seen.push(event);
        if finished {
            return Ok(seen);
        }
    }
}

/// Waits for the SOURCE_CHANGED record naming `backend`, checks that status says
/// `detail…`, then makes change number `index` of the disk and returns its record, which
/// must come from `backend`.
async fn expect_switch(
    env: &Env,
    events: &mut EventStream,
    disk: &LoopDevice,
    backend: &str,
    detail: &str,
    index: usize,
) -> Result<Event> {
    read_until(
        events,
        Duration::from_secs(20),
        &format!("SOURCE_CHANGED {backend}"),
        |e| is_source_change(e, backend),
    )
    .await?;
    let now = devices_detail(env).await?;
    ensure!(now.starts_with(detail), "status follows udevd: {now:?}");
    let uuid = uuid(2, index);
    synth_change(disk.name(), &uuid)?;
    let mut seen = read_until(events, Duration::from_secs(20), "the change", |e| {
        synth_uuid(e).as_deref() == Some(uuid.as_str())
    })
    .await?;
    let change = seen
        .pop()
        .expect("read_until returns the one it waited for");
    ensure!(
        change.record().get_str(attr::EVENT_SOURCE).as_deref() == Some(backend),
        "after the switch events come from {backend}"
    );
    Ok(change)
}

async fn stale_socket_then_udevd_starts() -> Result<()> {
    const CHANGES: usize = 300;
    let Some(mut owner) = UdevdOwner::take()? else {
        return Ok(());
    };
    owner.start()?;
    owner.kill()?;
    ensure!(
        std::path::Path::new("/run/udev/control").exists(),
        "a udevd killed with SIGKILL leaves its control socket"
    );
    let env = Env::start("dev-stale").await?;
    let detail = devices_detail(&env).await?;
    ensure!(
        detail.contains("kernel uevents") && detail.contains("switches when udevd starts"),
        "with a stale control socket the daemon takes the kernel's events: {detail:?}"
    );
    let disk = LoopDevice::attach_partitioned(&env.scratch.path, 8)?;
    let mut events = watch_disk(&env, &disk).await?;
    let uuids: Vec<String> = (0..CHANGES).map(|i| uuid(1, i)).collect();
    for uuid in &uuids {
        synth_change(disk.name(), uuid)?;
    }
    let mut missing: HashSet<&str> = uuids.iter().map(String::as_str).collect();
    let seen = read_until(&mut events, Duration::from_secs(20), "every change", |e| {
        if let Some(uuid) = synth_uuid(e) {
            missing.remove(uuid.as_str());
        }
        missing.is_empty()
    })
    .await?;
    let changes: Vec<&Event> = seen.iter().filter(|e| synth_uuid(e).is_some()).collect();
    ensure!(
        changes.iter().all(|e| {
            e.header().is(RecordType::Device, device::CHANGE)
                && e.record().get_str(attr::EVENT_SOURCE).as_deref() == Some("kernel")
        }),
        "raw kernel changes"
    );
    eprintln!(
        "stale control socket: the devices watch got {} of {CHANGES} changes",
        changes.len()
    );
    ensure!(changes.len() == CHANGES, "each change once");

    // udevd starts again (it replaces the stale socket): the watch is told, then events come
    // after udevd's rules.
    owner.start()?;
    let change = expect_switch(&env, &mut events, &disk, "udev", "udev monitor", 0).await?;
    ensure!(
        property(&change, "ID_PART_TABLE_TYPE").is_some(),
        "with udevd's properties (blkid's ID_PART_TABLE_TYPE)"
    );
    // Stopped cleanly, udevd removes its socket: back to the kernel's events.
    owner.stop()?;
    expect_switch(&env, &mut events, &disk, "kernel", "kernel uevents", 1).await?;
    Ok(())
}

async fn restart_during_storm() -> Result<()> {
    let Some(mut owner) = UdevdOwner::take()? else {
        return Ok(());
    };
    owner.start()?;
    let env = Env::start("dev-udevd-storm").await?;
    ensure!(devices_detail(&env).await?.starts_with("udev monitor"));
    let disk = LoopDevice::attach_partitioned(&env.scratch.path, 8)?;
    let mut events = watch_disk(&env, &disk).await?;

    // Writes change uevents, about one per millisecond, until told to stop.
    let written = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (written, stop, name) = (written.clone(), stop.clone(), disk.name().to_owned());
        tokio::task::spawn_blocking(move || -> Result<()> {
            let mut i = 0;
            while !stop.load(Ordering::Acquire) {
                synth_change(&name, &uuid(3, i))?;
                i += 1;
                written.store(i, Ordering::Release);
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(())
        })
    };
    let mut seen = Vec::new();
    let mut read_while = async |seen: &mut Vec<Event>, until: &dyn Fn() -> bool| -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !until() {
            ensure!(Instant::now() < deadline, "the storm stalled");
            if let Ok(event) = next_within(&mut events, Duration::from_millis(5)).await {
                seen.push(event);
            }
        }
        Ok(())
    };
    read_while(&mut seen, &|| written.load(Ordering::Acquire) >= 300).await?;
    owner.kill()?;
    let killed_at = written.load(Ordering::Acquire);
    read_while(&mut seen, &|| {
        written.load(Ordering::Acquire) >= killed_at + 300
    })
    .await?;
    owner.spawn()?;
    let restarted_at = written.load(Ordering::Acquire);
    read_while(&mut seen, &|| {
        written.load(Ordering::Acquire) >= restarted_at + 300 && udev::is_running().unwrap_or(false)
    })
    .await?;
    let ready_at = written.load(Ordering::Acquire);
    read_while(&mut seen, &|| {
        written.load(Ordering::Acquire) >= ready_at + 300
    })
    .await?;
    stop.store(true, Ordering::Release);
    writer.await??;
    let total = written.load(Ordering::Acquire);
    owner.wait_ready()?;

    // The storm is over; one more change must come, after udevd's rules.
    let last = uuid(4, 0);
    synth_change(disk.name(), &last)?;
    seen.extend(
        read_until(
            &mut events,
            Duration::from_secs(30),
            "the change after the storm",
            |e| synth_uuid(e).as_deref() == Some(last.as_str()),
        )
        .await?,
    );
    let last_event = seen.last().expect("the change after the storm");
    ensure!(
        last_event.record().get_str(attr::EVENT_SOURCE).as_deref() == Some("udev"),
        "after the restart events come from udevd again"
    );

    let switches: Vec<String> = seen
        .iter()
        .filter(|e| e.header().is(RecordType::Meta, meta::SOURCE_CHANGED))
        .map(|e| e.record().get_str(attr::BACKEND).unwrap_or_default())
        .collect();
    ensure!(
        switches == ["kernel", "udev"],
        "one switch to the kernel's events when udevd died, one back when it started: {switches:?}"
    );
    let after_kill = seen
        .iter()
        .position(|e| is_source_change(e, "kernel"))
        .context("the switch to kernel")?;
    ensure!(
        seen.iter()
            .skip(after_kill)
            .any(|e| e.record().get_str(attr::EVENT_SOURCE).as_deref() == Some("kernel")),
        "raw kernel events between the two switches"
    );
    let mut uuids = HashSet::new();
    let mut kernel_seqnums = HashSet::new();
    for e in seen
        .iter()
        .filter(|e| e.header().record_type == RecordType::Device as u32)
    {
        if let Some(uuid) = synth_uuid(e) {
            ensure!(uuids.insert(uuid.clone()), "change {uuid} came twice");
        }
        if let Some(seqnum) = e.record().get_u64(attr::SEQNUM) {
            ensure!(kernel_seqnums.insert(seqnum), "uevent {seqnum} came twice");
        }
    }
    let storm_received = (0..total).filter(|i| uuids.contains(&uuid(3, *i))).count();
    let losses: Vec<&Event> = seen
        .iter()
        .filter(|e| e.header().is(RecordType::Meta, meta::LOSS))
        .collect();
    let replayed = env
        .daemon
        .log()
        .lines()
        .find(|l| l.contains("passing on raw the uevents udevd had not"))
        .map(str::to_owned);
    eprintln!(
        "storm: {total} changes written, {storm_received} received, switches {switches:?}, \
         {} LOSS records; the daemon: {replayed:?}",
        losses.len()
    );
    ensure!(
        storm_received == total || !losses.is_empty(),
        "{} changes missing without a LOSS record",
        total - storm_received
    );
    Ok(())
}

async fn socket_overflow() -> Result<()> {
    const BURST: usize = 300;
    // udevd's group, which the injected events reach without a udevd; a socket that holds a
    // few messages only (the knob is for tests).
    let buffer = std::ffi::OsString::from("4096");
    let env = Env::start_with_config_and_env(
        "dev-overflow",
        "[sources]\ndevice_events = \"udev\"\n",
        &[("WATCHD_DEVICE_RECEIVE_BUFFER", &buffer)],
    )
    .await?;
    let subsystem = format!("watchd-overflow-{}", std::process::id());
    let client = env.client().await?;
    let mut streams = Vec::new();
    for tag in [1, 2] {
        let sub = client
            .subscribe(SubscribeOptions { depth: Some(256) })
            .await?;
        sub.add_watch(
            tag,
            "devices",
            &WatchOptions::new().option("subsystem", subsystem.clone()),
        )
        .await?;
        streams.push((tag, sub.into_events()));
    }
    let event = |i: usize| {
        InjectedEvent::change(
            &subsystem,
            &format!("/devices/virtual/{subsystem}/dev{}", i % 8),
            &[("BURST_INDEX", &i.to_string())],
        )
    };
    // The daemon stopped, the burst fills its socket: the kernel drops the rest and flags
    // the socket (ENOBUFS), which the daemon sees once it runs again.
    send_signal(env.daemon.pid(), nix::sys::signal::Signal::SIGSTOP)?;
    let sent = (|| -> Result<()> {
        let injector = udev::Injector::new()?;
        for i in 0..BURST {
            injector.send(&event(i))?;
        }
        Ok(())
    })();
    send_signal(env.daemon.pid(), nix::sys::signal::Signal::SIGCONT)?;
    sent?;
    for (tag, stream) in &mut streams {
        let seen = read_until(stream, Duration::from_secs(10), "the LOSS record", |e| {
            e.header().is(RecordType::Meta, meta::LOSS)
        })
        .await?;
        let loss = seen
            .last()
            .expect("read_until returns the one it waited for");
        eprintln!(
            "overflow: watch {tag} got {} of {BURST} events before its LOSS record",
            seen.len() - 1
        );
        ensure!(loss.header().tag == *tag, "the LOSS names the watch");
        ensure!(
            loss.record().get_u64(attr::LOST_TYPES) == Some(RecordType::Device.bit())
                && loss.record().get(attr::FIRST_LOST_SEQ).is_none()
                && loss
                    .record()
                    .get_str(attr::REASON)
                    .is_some_and(|r| r.contains("ENOBUFS")),
            "a loss at the source: {:?}",
            loss.record().get_str(attr::REASON)
        );
        let seqs: Vec<u64> = seen.iter().map(|e| e.header().seq).collect();
        ensure!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "no gap in the pipe's own sequence numbers"
        );
    }
    // Events go on. The kernel holds new ones back until the daemon has emptied the socket
    // that overflowed, so one is sent every 100 ms until both watches have one.
    let mut sent_after = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    for (tag, stream) in &mut streams {
        let mut got = false;
        while !got {
            ensure!(
                Instant::now() < deadline,
                "watch {tag}: no event after the burst"
            );
            let after = event(BURST + sent_after.len());
            udev::inject(&after)?;
            sent_after.push(after.seqnum());
            while let Ok(e) = next_within(stream, Duration::from_millis(100)).await {
                ensure!(
                    e.header().record_type == RecordType::Device as u32,
                    "watch {tag}: only one LOSS record"
                );
                got |= e
                    .record()
                    .get_u64(attr::SEQNUM)
                    .is_some_and(|s| sent_after.contains(&s));
            }
        }
    }
    Ok(())
}
