//! Space watches on real filesystems: a 64 MiB ext4 on a loop device, mounted in the suite's
//! private mount namespace, filled with `fallocate` and emptied with `rm`, watched by uid
//! 1000. Low, a step lower and recovered with the numbers statvfs gives; no flapping inside
//! the hysteresis margin; gsd-housekeeping's defaults; the initial state; the rate limit; a
//! filesystem mounted under a namespace-wide watch reported at once although the timer is
//! slow; the end of a path watch when its filesystem is unmounted; bad options refused.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use watchd_client::{Client, Event, EventStream, SubscribeOptions, WatchOptions};
use watchd_e2e::polkit::{OTHER_UID, Polkit, connect_as_user, user_name};
use watchd_e2e::{Env, Process, Trial, mounts};
use watchd_proto::{FLAG_SNAPSHOT, RecordType, attr, meta, names, superblock};

use crate::file_events::LoopExt4;
use crate::{expect_silence, next, next_within, trial};

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "space::low_then_still_lower_then_recovered_with_the_numbers_statvfs_gives",
            low_lower_recovered,
        ),
        trial(
            "space::free_space_wobbling_inside_the_margin_does_not_flap",
            no_flapping,
        ),
        trial(
            "space::the_defaults_warn_below_5_percent_on_a_small_filesystem",
            defaults,
        ),
        trial(
            "space::free_inodes_below_a_count_give_an_inodes_low",
            inodes,
        ),
        trial(
            "space::initial_gives_a_snapshot_low_for_a_filesystem_already_low",
            initial,
        ),
        trial(
            "space::a_second_drop_within_the_interval_waits_for_the_interval",
            rate_limit,
        ),
        trial(
            "space::a_low_filesystem_mounted_under_a_namespace_wide_watch_is_reported_at_once",
            mounted_later,
        ),
        trial(
            "space::unmounting_the_filesystem_of_a_path_watch_ends_it",
            unmounted,
        ),
        trial(
            "space::watchctl_prints_a_line_and_json_for_a_low_filesystem",
            watchctl,
        ),
        trial(
            "space::bad_options_are_refused_and_change_nothing",
            bad_options,
        ),
    ]
}

const SIZE: u64 = 64 << 20;

/// What a test runs on: a daemon, polkitd, the filesystem and where it is mounted.
/// Fields drop in this order: the filesystem is unmounted and its loop device detached
/// before the scratch directory goes.
struct World {
    disk: LoopExt4,
    point: PathBuf,
    _polkit: Polkit,
    env: Env,
}

/// A daemon (started with `config`), polkitd with a rule that lets uid 1000 watch
/// superblocks (as the actions file lets the user at the console), and a fresh 64 MiB ext4
/// mounted at `disk` in the scratch directory.
async fn on_ext4(label: &str, config: &str) -> Result<World> {
    let env = Env::start_with_config(label, config).await?;
    let rules = format!(
        "polkit.addRule(function(action, subject) {{
            if (action.id == 'org.watchd.Watchd1.watch-superblock' && subject.user == '{}') return polkit.Result.YES;
        }});",
        user_name(OTHER_UID)?
    );
    let polkit = Polkit::start(&env.bus.address, &env.scratch.path, &rules).await?;
    let point = env.scratch.join("disk");
    let disk = LoopExt4::sized(&env.scratch.join("disk.img"), &point, SIZE)?;
    Ok(World {
        env,
        _polkit: polkit,
        disk,
        point,
    })
}

/// A client of uid 1000 and the process that holds its connection.
async fn client_1000(env: &Env) -> Result<(Client, Process)> {
    let (conn, holder) = connect_as_user(&env.bus.address, OTHER_UID).await?;
    Ok((Client::from_connection(conn), holder))
}

fn text(path: &Path) -> &str {
    path.to_str().expect("UTF-8 scratch path")
}

/// A space watch tagged `tag` with `options` in a new subscription of `client`.
async fn watch(client: &Client, tag: u64, options: WatchOptions) -> Result<EventStream> {
    let sub = client.subscribe(SubscribeOptions::default()).await?;
    sub.add_watch(tag, "space", &options).await?;
    Ok(sub.into_events())
}

/// A path watch on `point` with `below`, a 5 % step and no rate limit, plus `options`.
fn quick(point: &Path, below: &str) -> WatchOptions {
    WatchOptions::new()
        .path(text(point))
        .option("below", below)
        .option("step", "5%")
        .option("min_interval_s", 0u32)
}

/// (available, total) bytes of the filesystem at `point`, as statvfs gives them.
fn statvfs(point: &Path) -> Result<(u64, u64)> {
    let s = rustix::fs::statvfs(point)?;
    Ok((s.f_bavail * s.f_frsize, s.f_blocks * s.f_frsize))
}

/// Allocates a file `name` on the filesystem at `point` that leaves `percent` of it
/// available (to within a few blocks of metadata).
fn fill_to(point: &Path, name: &str, percent: u64) -> Result<()> {
    let (avail, total) = statvfs(point)?;
    let want = total * percent / 100;
    ensure!(avail > want, "{avail} available is already below {want}");
    let bytes = (avail - want) / 4096 * 4096;
    let file = std::fs::File::create(point.join(name))?;
    rustix::fs::fallocate(file.as_fd(), rustix::fs::FallocateFlags::empty(), 0, bytes)
        .with_context(|| format!("fallocate {bytes} bytes"))?;
    Ok(())
}

/// Allocates a file of `percent` of the filesystem at `point`.
fn allocate(point: &Path, name: &str, percent: u64) -> Result<()> {
    let (_, total) = statvfs(point)?;
    let bytes = total * percent / 100 / 4096 * 4096;
    let file = std::fs::File::create(point.join(name))?;
    rustix::fs::fallocate(file.as_fd(), rustix::fs::FallocateFlags::empty(), 0, bytes)?;
    Ok(())
}

/// `p` % of `total`, rounded down as the daemon rounds it.
fn percent(total: u64, p: f64) -> u64 {
    (total as f64 * p / 100.0) as u64
}

fn remove(point: &Path, name: &str) -> Result<()> {
    std::fs::remove_file(point.join(name)).with_context(|| format!("rm {name}"))
}

fn shown(event: &Event) -> String {
    let h = event.header();
    let r = event.record();
    format!(
        "{} {} tag {} flags {:#x} resource {:?} avail {:?} threshold {:?} mounted_on {:?}",
        names::record_type(h.record_type).unwrap_or("?"),
        names::subtype(h.record_type, h.subtype).unwrap_or("?"),
        h.tag,
        h.flags,
        r.get_str(attr::RESOURCE),
        r.get_u64(attr::AVAIL_BYTES),
        r.get_u64(attr::THRESHOLD),
        r.get_str(attr::MOUNTED_ON)
            .or_else(|| r.get_str(attr::REASON)),
    )
}

/// The next record is a space record of `subtype` about the filesystem at `point`.
async fn expect_space(stream: &mut EventStream, subtype: u8, point: &Path) -> Result<Event> {
    let event = next(stream).await?;
    ensure!(
        event.header().is(RecordType::Superblock, subtype)
            && event.record().get_str(attr::MOUNTED_ON).as_deref() == Some(text(point)),
        "expected {} at {}, got {}",
        names::subtype(RecordType::Superblock as u32, subtype).unwrap(),
        point.display(),
        shown(&event)
    );
    Ok(event)
}

async fn low_lower_recovered() -> Result<()> {
    let World { env, point, .. } = &on_ext4("space-low", "").await?;
    let (client, _holder) = client_1000(env).await?;
    let mut events = watch(&client, 3, quick(point, "50%")).await?;
    expect_silence(&mut events, Duration::from_millis(1500)).await?;

    fill_to(point, "a", 40)?;
    let low = expect_space(&mut events, superblock::SPACE_LOW, point).await?;
    let r = low.record();
    let (avail, total) = statvfs(point)?;
    let s = rustix::fs::statvfs(point.as_path())?;
    let st = rustix::fs::stat(point.as_path())?;
    let numbers = [
        (attr::AVAIL_BYTES, avail),
        (attr::TOTAL_BYTES, total),
        (attr::FREE_BYTES, s.f_bfree * s.f_frsize),
        (attr::FREE_INODES, s.f_ffree),
        (attr::TOTAL_INODES, s.f_files),
        (attr::THRESHOLD, percent(total, 50.0)),
        (attr::MARGIN, percent(total, 5.0)),
        (attr::FSID, s.f_fsid),
    ];
    for (id, want) in numbers {
        ensure!(
            r.get_u64(id) == Some(want),
            "{}: the record says {:?}, statvfs {want}",
            names::attribute(id).unwrap(),
            r.get_u64(id)
        );
    }
    ensure!(r.get_str(attr::RESOURCE).as_deref() == Some("space"));
    ensure!(r.get_str(attr::FS_TYPE).as_deref() == Some("ext4"));
    ensure!(
        (r.get_u32(attr::MAJOR), r.get_u32(attr::MINOR))
            == (
                Some(rustix::fs::major(st.st_dev)),
                Some(rustix::fs::minor(st.st_dev))
            ),
        "major:minor"
    );
    ensure!(low.header().tag == 3 && low.header().flags & FLAG_SNAPSHOT == 0);

    allocate(point, "b", 10)?;
    let lower = expect_space(&mut events, superblock::SPACE_STILL_LOWER, point).await?;
    ensure!(
        lower.record().get_u64(attr::AVAIL_BYTES) < r.get_u64(attr::AVAIL_BYTES),
        "still lower: {}",
        shown(&lower)
    );
    remove(point, "a")?;
    remove(point, "b")?;
    let recovered = expect_space(&mut events, superblock::SPACE_RECOVERED, point).await?;
    let back = recovered.record().get_u64(attr::AVAIL_BYTES).unwrap_or(0);
    ensure!(
        back >= percent(total, 50.0) + percent(total, 5.0),
        "recovered only past threshold + margin: {}",
        shown(&recovered)
    );
    expect_silence(&mut events, Duration::from_millis(1500)).await
}

async fn no_flapping() -> Result<()> {
    let World { env, point, .. } = &on_ext4("space-flap", "").await?;
    let (client, _holder) = client_1000(env).await?;
    let mut events = watch(&client, 1, quick(point, "50%")).await?;
    // 52 % left, then a 4 % file: 48 %, below the line.
    fill_to(point, "base", 52)?;
    allocate(point, "wobble", 4)?;
    expect_space(&mut events, superblock::SPACE_LOW, point).await?;
    // Back above the line, but within the 5 % margin; below again, by less than a step.
    for round in 0..3 {
        remove(point, "wobble")?;
        expect_silence(&mut events, Duration::from_millis(1500))
            .await
            .with_context(|| format!("round {round}: 52 %, inside the margin"))?;
        allocate(point, "wobble", 4)?;
        expect_silence(&mut events, Duration::from_millis(1500))
            .await
            .with_context(|| format!("round {round}: 48 % again"))?;
    }
    remove(point, "wobble")?;
    remove(point, "base")?;
    expect_space(&mut events, superblock::SPACE_RECOVERED, point).await?;
    Ok(())
}

async fn defaults() -> Result<()> {
    let World { env, point, .. } = &on_ext4("space-defaults", "").await?;
    let (client, _holder) = client_1000(env).await?;
    let mut events = watch(&client, 1, WatchOptions::new().path(text(point))).await?;
    fill_to(point, "a", 7)?;
    expect_silence(&mut events, Duration::from_millis(1500)).await?;
    remove(point, "a")?;
    fill_to(point, "a", 3)?;
    let low = expect_space(&mut events, superblock::SPACE_LOW, point).await?;
    let (_, total) = statvfs(point)?;
    ensure!(
        low.record().get_u64(attr::THRESHOLD) == Some(percent(total, 5.0)),
        "5 % of a 64 MiB filesystem is the line (1 GiB free is out of reach): {}",
        shown(&low)
    );
    Ok(())
}

async fn inodes() -> Result<()> {
    let World { env, point, .. } = &on_ext4("space-inodes", "").await?;
    let (client, _holder) = client_1000(env).await?;
    let free = rustix::fs::statvfs(point.as_path())?.f_ffree;
    let line = free - 200;
    let options = WatchOptions::new()
        .path(text(point))
        .option("inodes_below", line.to_string())
        .option("min_interval_s", 0u32);
    let mut events = watch(&client, 6, options).await?;
    for i in 0..150 {
        std::fs::File::create(point.join(format!("f{i}")))?;
    }
    expect_silence(&mut events, Duration::from_millis(1500)).await?;
    for i in 150..250 {
        std::fs::File::create(point.join(format!("f{i}")))?;
    }
    let low = expect_space(&mut events, superblock::SPACE_LOW, point).await?;
    let r = low.record();
    ensure!(
        r.get_str(attr::RESOURCE).as_deref() == Some("inodes")
            && r.get_u64(attr::THRESHOLD) == Some(line)
            && r.get_u64(attr::FREE_INODES) == Some(rustix::fs::statvfs(point.as_path())?.f_ffree),
        "{}",
        shown(&low)
    );
    Ok(())
}

async fn initial() -> Result<()> {
    let World { env, point, .. } = &on_ext4("space-initial", "").await?;
    fill_to(point, "a", 30)?;
    let (client, _holder) = client_1000(env).await?;
    let mut events = watch(&client, 5, quick(point, "50%").initial(true)).await?;
    let first = expect_space(&mut events, superblock::SPACE_LOW, point).await?;
    ensure!(
        first.header().flags & FLAG_SNAPSHOT != 0,
        "a snapshot: {}",
        shown(&first)
    );
    crate::expect_sync_for(&next(&mut events).await?, 5)?;
    // The state is known: no live LOW follows.
    expect_silence(&mut events, Duration::from_millis(2500)).await
}

async fn rate_limit() -> Result<()> {
    let World { env, point, .. } = &on_ext4("space-rate", "").await?;
    let (client, _holder) = client_1000(env).await?;
    let interval = 5;
    let options = quick(point, "50%").option("min_interval_s", interval as u32);
    let mut events = watch(&client, 1, options).await?;
    fill_to(point, "a", 40)?;
    let low = expect_space(&mut events, superblock::SPACE_LOW, point).await?;
    allocate(point, "b", 15)?;
    expect_silence(&mut events, Duration::from_secs(3))
        .await
        .context("a second drop within the interval")?;
    let lower = next_within(&mut events, Duration::from_secs(interval + 5)).await?;
    ensure!(
        lower
            .header()
            .is(RecordType::Superblock, superblock::SPACE_STILL_LOWER),
        "{}",
        shown(&lower)
    );
    let apart = lower.header().time_ns - low.header().time_ns;
    ensure!(
        apart >= interval * 1_000_000_000,
        "the warnings are {apart} ns apart, less than the interval"
    );
    Ok(())
}

async fn mounted_later() -> Result<()> {
    // A timer slower than the test: only the mount change can report the new filesystem.
    let config = "[space]\nshortest_check_ms = 120000\nlongest_check_ms = 120000\n";
    let World {
        env, point, disk, ..
    } = &on_ext4("space-mount", config).await?;
    fill_to(point, "a", 30)?;
    mounts::unmount(point)?;
    let (client, _holder) = client_1000(env).await?;
    let options = WatchOptions::new()
        .option("below", "50%")
        .option("min_interval_s", 0u32);
    let mut events = watch(&client, 2, options).await?;
    // Whatever else of this machine's is low goes by first.
    while tokio::time::timeout(Duration::from_millis(1500), events.next())
        .await
        .is_ok()
    {}
    let status = std::process::Command::new("mount")
        .arg(&disk.device)
        .arg(point)
        .status()?;
    ensure!(status.success(), "mount again");
    let started = std::time::Instant::now();
    loop {
        let event = next_within(&mut events, Duration::from_secs(10)).await?;
        if event.record().get_str(attr::MOUNTED_ON).as_deref() == Some(text(point)) {
            ensure!(
                event
                    .header()
                    .is(RecordType::Superblock, superblock::SPACE_LOW),
                "{}",
                shown(&event)
            );
            break;
        }
    }
    ensure!(
        started.elapsed() < Duration::from_secs(10),
        "reported after {:?}",
        started.elapsed()
    );
    Ok(())
}

async fn unmounted() -> Result<()> {
    let World { env, point, .. } = &on_ext4("space-umount", "").await?;
    let (client, _holder) = client_1000(env).await?;
    let mut events = watch(&client, 4, quick(point, "50%")).await?;
    expect_silence(&mut events, Duration::from_millis(500)).await?;
    let status = env.watchctl().arg("status").output()?;
    let status = String::from_utf8_lossy(&status.stdout);
    ensure!(
        status.contains("space")
            && status.contains("fstatfs")
            && status.contains("following 1 filesystem(s) in 1 mount namespace(s)"),
        "watchctl status says how space watches check and how much it follows:\n{status}"
    );
    // The watch holds nothing on the filesystem: a plain umount works.
    mounts::unmount(point).context("the watch must not keep the filesystem busy")?;
    let ended = next(&mut events).await?;
    ensure!(
        ended.header().is(RecordType::Meta, meta::REMOVAL)
            && ended.header().tag == 4
            && ended.record().get_str(attr::REASON).as_deref() == Some("unmounted")
            && ended.record().get_str(attr::OBJECT).as_deref() == Some(text(point)),
        "{}",
        shown(&ended)
    );
    Ok(())
}

async fn watchctl() -> Result<()> {
    let World { env, point, .. } = &on_ext4("space-watchctl", "").await?;
    fill_to(point, "a", 30)?;
    for (json, want) in [(false, "space low"), (true, r#""event":"low""#)] {
        let mut command = env.watchctl();
        command.args(["watch", "space"]).arg(point).args([
            "--below",
            "50%",
            "--min-interval",
            "0",
            "--count",
            "1",
        ]);
        if json {
            command.arg("--json");
        }
        let out = command.output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success() && stdout.contains(want) && stdout.contains(text(point)),
            "{command:?}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

async fn bad_options() -> Result<()> {
    let World { env, point, .. } = &on_ext4("space-bad", "").await?;
    let (client, _holder) = client_1000(env).await?;
    let sub = client.subscribe(SubscribeOptions::default()).await?;
    let path = || WatchOptions::new().path(text(point));
    let cases: Vec<(WatchOptions, &str, &str)> = vec![
        (path().option("below", "-5%"), "InvalidArgument", "below"),
        (path().option("below", "150%"), "InvalidArgument", "below"),
        (path().option("below", "lots"), "InvalidArgument", "below"),
        (path().option("below", 5u32), "InvalidArgument", "below"),
        (path().option("step", "-1G"), "InvalidArgument", "step"),
        (
            path().option("min_free", "5%"),
            "InvalidArgument",
            "min_free",
        ),
        (
            path().option("inodes_step", "1%"),
            "InvalidArgument",
            "inodes_below",
        ),
        (path().option("colour", "red"), "InvalidArgument", "colour"),
        (
            WatchOptions::new().path(text(&point.join("missing"))),
            "NotFound",
            "does not exist",
        ),
        (WatchOptions::new().path("/proc"), "NotSupported", "no size"),
    ];
    for (options, error, names) in cases {
        let result = sub.add_watch(1, "space", &options).await;
        let message = match &result {
            Err(e) => e.to_string(),
            Ok(()) => String::new(),
        };
        let name = crate::error_name(result)?;
        ensure!(
            name == format!("org.watchd.Watchd1.Error.{error}") && message.contains(names),
            "{options:?}: {name}: {message}"
        );
    }
    ensure!(client.status().await?.watches == 0, "nothing was set");
    Ok(())
}
