//! The subscription contract: initial state, sequence numbers, exact loss accounting that
//! never slows other clients, filters, and a lifetime bound to the read end.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use watchd_client::{Filter, SubscribeOptions, WatchOptions};
use watchd_e2e::{Env, Trial, mounts, wait_until};
use watchd_proto::{FLAG_SNAPSHOT, RecordType, attr, meta, mount};

use crate::{expect_mount, expect_silence, expect_sync_for, next, next_within, trial};

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "pipe::initial_state_lists_current_mounts_as_snapshots_then_sync",
            initial_state,
        ),
        trial("pipe::resync_sends_the_state_again_then_sync", resync),
        trial(
            "pipe::a_stalled_subscriber_gets_one_exact_loss_while_another_gets_all_2000_in_order",
            stalled_subscriber,
        ),
        trial(
            "pipe::closing_the_read_end_frees_the_subscription_and_its_descriptors",
            close_frees,
        ),
        trial("pipe::filters_keep_only_the_subtypes_asked_for", filters),
        trial(
            "pipe::stopping_the_daemon_ends_every_pipe_with_end_of_file",
            daemon_stop_eof,
        ),
    ]
}

async fn initial_state() -> Result<()> {
    let env = Env::start("initial").await?;
    let (one, two) = (env.scratch.join("one"), env.scratch.join("two"));
    mounts::tmpfs(&one, "e2e", "size=1m")?;
    mounts::tmpfs(&two, "e2e", "size=1m")?;
    let mut events = env
        .watch_scratch(5, WatchOptions::new().initial(true))
        .await?;
    for target in [&one, &two] {
        let e = expect_mount(&mut events, mount::ATTACH, target).await?;
        ensure!(
            e.header().flags & FLAG_SNAPSHOT != 0,
            "initial records carry SNAPSHOT"
        );
        ensure!(e.header().tag == 5);
    }
    let sync = next(&mut events).await?;
    expect_sync_for(&sync, 5)?;
    ensure!(
        sync.header().seq == 3,
        "sequence numbers run through snapshot and sync"
    );
    // After SYNC, live changes follow without the SNAPSHOT flag.
    let three = env.scratch.join("three");
    mounts::tmpfs(&three, "e2e", "size=1m")?;
    let live = expect_mount(&mut events, mount::ATTACH, &three).await?;
    ensure!(live.header().flags & FLAG_SNAPSHOT == 0 && live.header().seq == 4);

    // Without a path, the snapshot is the whole namespace: as many records as mountinfo has.
    // The default depth (16) is far below the namespace's mounts: the rest of the
    // state waits in the daemon and arrives as the client reads, SYNC last, nothing lost.
    let sub = env
        .client()
        .await?
        .subscribe(SubscribeOptions::default())
        .await?;
    let expected = std::fs::read_to_string("/proc/self/mountinfo")?
        .lines()
        .count();
    sub.add_watch(
        1,
        "mounts",
        &WatchOptions::new()
            .initial(true)
            .filter(Filter::new(RecordType::Mount).flags(FLAG_SNAPSHOT, FLAG_SNAPSHOT)),
    )
    .await?;
    let mut events = sub.into_events();
    let mut snapshots: usize = 0;
    loop {
        let e = next(&mut events).await?;
        if e.header().is(RecordType::Meta, meta::SYNC) {
            break;
        }
        ensure!(
            !e.header().is(RecordType::Meta, meta::LOSS),
            "part of the initial state was lost"
        );
        snapshots += 1;
    }
    // Other tests mount in parallel; allow for their churn but not for a partial snapshot.
    ensure!(
        snapshots.abs_diff(expected) <= 8,
        "snapshot of {snapshots} mounts, mountinfo lists {expected}"
    );
    Ok(())
}

async fn resync() -> Result<()> {
    let env = Env::start("resync").await?;
    let target = env.scratch.join("r");
    mounts::tmpfs(&target, "e2e", "size=1m")?;
    let sub = env
        .client()
        .await?
        .subscribe(SubscribeOptions::default())
        .await?;
    sub.add_watch(
        3,
        "mounts",
        &WatchOptions::new().path(target.to_str().unwrap()),
    )
    .await?;
    let (control, mut events) = sub.split();
    control.resync(3).await?;
    let snap = expect_mount(&mut events, mount::ATTACH, &target).await?;
    ensure!(snap.header().flags & FLAG_SNAPSHOT != 0);
    expect_sync_for(&next(&mut events).await?, 3)?;
    Ok(())
}

async fn stalled_subscriber() -> Result<()> {
    const PAIRS: usize = 1000;
    let env = Env::start("storm").await?;
    let client = env.client().await?;
    let dir = env.scratch.path.to_str().unwrap().to_owned();
    let mut fast = env.watch_scratch(1, WatchOptions::new()).await?;
    let stalled = client.subscribe(SubscribeOptions::default()).await?;
    stalled
        .add_watch(2, "mounts", &WatchOptions::new().path(dir))
        .await?;
    let depth = stalled.depth().await? as u64;
    let mut stalled = stalled.into_events();

    // mountinfo is diffed, so each change is waited for before the next one is made: the
    // fast reader sees every record; the stalled one reads nothing meanwhile.
    let target = env.scratch.join("churn");
    std::fs::create_dir_all(&target)?;
    for i in 0..PAIRS {
        mounts::tmpfs(&target, "storm", "size=64k")?;
        let a = expect_mount(&mut fast, mount::ATTACH, &target)
            .await
            .with_context(|| format!("pair {i}"))?;
        mounts::unmount(&target)?;
        let d = expect_mount(&mut fast, mount::DETACH, &target)
            .await
            .with_context(|| format!("pair {i}"))?;
        ensure!(
            a.header().seq == 2 * i as u64 + 1 && d.header().seq == 2 * i as u64 + 2,
            "in order, no gaps"
        );
    }
    expect_silence(&mut fast, Duration::from_millis(100)).await?;

    // The stalled reader: `depth` records, then exactly one LOSS naming every other record.
    let total = 2 * PAIRS as u64;
    let mut received = 0;
    let mut losses = Vec::new();
    let mut last_seq = 0;
    loop {
        let e = match next_within(&mut stalled, Duration::from_millis(500)).await {
            Ok(e) => e,
            Err(_) => break,
        };
        ensure!(e.header().seq > last_seq, "sequence numbers increase");
        last_seq = e.header().seq;
        if e.header().is(RecordType::Meta, meta::LOSS) {
            losses.push(e);
        } else {
            received += 1;
        }
    }
    ensure!(losses.len() == 1, "one LOSS record, got {}", losses.len());
    let loss = losses[0].record();
    let lost = loss.get_u64(attr::LOST_COUNT).context("lost_count")?;
    ensure!(
        received == depth,
        "the stalled pipe held {depth} records, read {received}"
    );
    ensure!(
        received + lost == total,
        "received {received} + lost {lost} != {total}"
    );
    ensure!(
        loss.get_u64(attr::FIRST_LOST_SEQ) == Some(depth + 1),
        "first lost seq"
    );
    ensure!(
        loss.get_u64(attr::LOST_TYPES) == Some(RecordType::Mount.bit()),
        "lost types"
    );
    ensure!(
        loss.header.seq == total + 1,
        "LOSS takes the number after the gap"
    );
    Ok(())
}

async fn close_frees() -> Result<()> {
    let env = Env::start("close").await?;
    let client = env.client().await?;
    // Warm up the daemon's own descriptors (bus, tokio) before taking the baseline.
    drop(client.subscribe(SubscribeOptions::default()).await?);
    wait_for_counts(&client, (0, 0)).await?;
    let baseline = env.daemon.fd_count()?;

    let sub = client.subscribe(SubscribeOptions::default()).await?;
    sub.add_watch(1, "mounts", &WatchOptions::new()).await?;
    let path = sub.path().to_string();
    wait_for_counts(&client, (1, 1))
        .await
        .context("status counts the subscription and watch")?;
    ensure!(
        env.daemon.fd_count()? > baseline,
        "the daemon holds the write end"
    );
    drop(sub.into_pipe());
    wait_for_counts(&client, (0, 0))
        .await
        .context("the subscription ends")?;
    wait_until(
        Duration::from_secs(5),
        "the daemon's descriptors to return",
        || Ok(env.daemon.fd_count()? == baseline),
    )?;
    let introspect = std::process::Command::new("busctl")
        .args([
            "--address",
            &env.bus.address,
            "introspect",
            "org.watchd.Watchd1",
            &path,
        ])
        .output()?;
    ensure!(
        !introspect.status.success()
            || !String::from_utf8_lossy(&introspect.stdout).contains("Subscription"),
        "the object is gone"
    );
    ensure!(
        env.daemon.log().contains("reader closed"),
        "the daemon logs why it ended"
    );
    Ok(())
}

/// Waits (asynchronously: the bus connection runs on this same thread) until the daemon's
/// subscription and watch counts are `want`.
async fn wait_for_counts(client: &watchd_client::Client, want: (u32, u32)) -> Result<()> {
    let mut last = None;
    for _ in 0..500 {
        let status = client.status().await?;
        if (status.subscriptions, status.watches) == want {
            return Ok(());
        }
        last = Some(status);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("counts never reached {want:?}; last status {last:?}")
}

async fn filters() -> Result<()> {
    let env = Env::start("filters").await?;
    let only_detach = Filter::new(RecordType::Mount).subtypes([mount::DETACH]);
    let mut filtered = env
        .watch_scratch(4, WatchOptions::new().filter(only_detach))
        .await?;
    // An unfiltered subscriber paces the changes, so each one is seen before the next.
    let mut pacer = env.watch_scratch(5, WatchOptions::new()).await?;
    let target = env.scratch.join("f");
    mounts::tmpfs(&target, "e2e", "size=1m")?;
    expect_mount(&mut pacer, mount::ATTACH, &target).await?;
    mounts::remount_read_only(&target)?;
    expect_mount(&mut pacer, mount::CHANGE, &target).await?;
    mounts::unmount(&target)?;
    expect_mount(&mut pacer, mount::DETACH, &target).await?;
    let first = expect_mount(&mut filtered, mount::DETACH, &target).await?;
    ensure!(
        first.header().seq == 1,
        "filtered records use no sequence numbers"
    );
    expect_silence(&mut filtered, Duration::from_millis(200)).await
}

async fn daemon_stop_eof() -> Result<()> {
    let mut env = Env::start("stop").await?;
    let mut events = env.watch_scratch(1, WatchOptions::new()).await?;
    let pid = nix::unistd::Pid::from_raw(env.daemon.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
    let status = env.daemon.process.child().wait()?;
    ensure!(status.success(), "SIGTERM is a clean stop: {status}");
    match tokio::time::timeout(Duration::from_secs(5), events.next()).await {
        Ok(None) => Ok(()),
        Ok(Some(e)) => bail!("expected end-of-file, got {:?}", e.map(|e| *e.header())),
        Err(_) => bail!("the pipe did not end"),
    }
}
