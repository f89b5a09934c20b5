//! Filesystem error watches (`fserrors`): a loop-mounted ext4 in the suite's private mount
//! namespace, made to fail with ext4's own `trigger_fs_error` (each write is one error,
//! EUCLEAN). uid 1000 gets the errors with errno, count, device and mount point, and a new
//! watch gets ext4's count as its initial state; a filesystem mounted only in another
//! namespace never reaches a caller outside it; unmounting the filesystem of a `path` watch
//! ends it; a path on tmpfs and bad options are refused; watchctl prints the records.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use watchd_client::{Client, Event, EventStream, SubscribeOptions, WatchOptions};
use watchd_e2e::polkit::{OTHER_UID, Polkit, connect_as_user, connect_from, user_name};
use watchd_e2e::{Env, Trial, mounts};
use watchd_proto::{FLAG_SNAPSHOT, RecordType, attr, meta, superblock};

use crate::file_events::{LoopExt4, run};
use crate::{error_name, next, trial};

const WATCH_SUPERBLOCK: &str = "org.watchd.Watchd1.watch-superblock";
const EUCLEAN: u32 = 117;

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "fserrors::uid_1000_gets_the_errors_of_a_loop_ext4_then_a_new_watch_gets_the_count",
            errors_then_snapshot,
        ),
        trial(
            "fserrors::a_filesystem_mounted_only_in_another_namespace_never_reaches_a_caller_outside_it",
            other_namespace,
        ),
        trial(
            "fserrors::unmounting_the_filesystem_of_a_path_watch_ends_it",
            unmounted,
        ),
        trial(
            "fserrors::a_tmpfs_path_and_bad_options_are_refused_and_change_nothing",
            refused,
        ),
        trial(
            "fserrors::watchctl_prints_an_error_as_a_line_and_as_json",
            watchctl,
        ),
        trial(
            "fserrors::one_mark_per_filesystem_however_many_watch_it_and_none_after_the_last",
            marks,
        ),
    ]
}

/// A fresh ext4 on a loop device mounted at `scratch/name`.
fn loop_ext4(env: &Env, name: &str) -> Result<LoopExt4> {
    LoopExt4::new(
        &env.scratch.join(&format!("{name}.img")),
        &env.scratch.join(name),
    )
}

/// The loop device's `major:minor`.
fn dev_of(device: &str) -> Result<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let rdev = std::fs::metadata(device)?.rdev();
    Ok((
        nix::sys::stat::major(rdev) as u32,
        nix::sys::stat::minor(rdev) as u32,
    ))
}

/// Makes ext4 report one error on the filesystem on `device` (`/dev/loopN`).
fn trigger(device: &str) -> Result<()> {
    let name = Path::new(device).file_name().context("device name")?;
    let knob = Path::new("/sys/fs/ext4")
        .join(name)
        .join("trigger_fs_error");
    std::fs::write(&knob, "1").with_context(|| format!("writing {}", knob.display()))
}

fn text(path: &Path) -> &str {
    path.to_str().expect("UTF-8 scratch path")
}

fn is_error_of(event: &Event, (major, minor): (u32, u32)) -> bool {
    let r = event.record();
    event.header().is(RecordType::Superblock, superblock::ERROR)
        && r.get_u32(attr::MAJOR) == Some(major)
        && r.get_u32(attr::MINOR) == Some(minor)
}

fn mounted_on(event: &Event) -> Vec<String> {
    event
        .record()
        .attrs()
        .filter_map(Result::ok)
        .filter(|a| a.id == attr::MOUNTED_ON)
        .map(|a| String::from_utf8_lossy(a.value).into_owned())
        .collect()
}

fn shown(event: &Event) -> String {
    let r = event.record();
    format!(
        "type {} subtype {} flags {:#x} dev {:?}:{:?} errno {:?} {:?} count {:?} total {:?} fs {:?} on {:?} reason {:?}",
        event.header().record_type,
        event.header().subtype,
        event.header().flags,
        r.get_u32(attr::MAJOR),
        r.get_u32(attr::MINOR),
        r.get_u32(attr::ERRNO),
        r.get_str(attr::ERRNO_NAME),
        r.get_u32(attr::ERROR_COUNT),
        r.get_u32(attr::ERRORS_TOTAL),
        r.get_str(attr::FS_TYPE),
        mounted_on(event),
        r.get_str(attr::REASON),
    )
}

/// An error record says what every live or snapshot record of the loop ext4 must say.
fn check_error(event: &Event, dev: (u32, u32), point: &Path) -> Result<()> {
    let r = event.record();
    ensure!(
        is_error_of(event, dev)
            && r.get_u32(attr::ERRNO) == Some(EUCLEAN)
            && r.get_str(attr::ERRNO_NAME).as_deref() == Some("EUCLEAN")
            && r.get_str(attr::FS_TYPE).as_deref() == Some("ext4")
            && r.get_u64(attr::FSID).is_some()
            && mounted_on(event) == [text(point)],
        "the error of the loop ext4: {}",
        shown(event)
    );
    Ok(())
}

/// Records until SYNC (with `initial`): those about `dev`.
async fn snapshot_of(events: &mut EventStream, dev: (u32, u32)) -> Result<Vec<Event>> {
    let mut found = Vec::new();
    loop {
        let event = next(events).await?;
        if event.header().is(RecordType::Meta, meta::SYNC) {
            return Ok(found);
        }
        ensure!(
            event.header().flags & FLAG_SNAPSHOT != 0,
            "before SYNC, only SNAPSHOT records: {}",
            shown(&event)
        );
        if is_error_of(&event, dev) {
            found.push(event);
        }
    }
}

/// Live error records of `dev` until their counts add up to `want`.
async fn errors_adding_up_to(
    events: &mut EventStream,
    dev: (u32, u32),
    want: u32,
) -> Result<Vec<Event>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut found = Vec::new();
    let mut sum = 0;
    while sum < want {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = crate::next_within(events, left)
            .await
            .with_context(|| format!("errors counted so far: {sum} of {want}"))?;
        if is_error_of(&event, dev) {
            sum += event.record().get_u32(attr::ERROR_COUNT).unwrap_or(0);
            found.push(event);
        }
    }
    ensure!(sum == want, "counts add up to {sum}, not {want}");
    Ok(found)
}

/// polkitd, with a rule that lets uid 1000 watch superblocks (it has no session here).
async fn polkit_for_uid_1000(env: &Env) -> Result<Polkit> {
    let user = user_name(OTHER_UID)?;
    let rules = format!(
        "polkit.addRule(function(action, subject) {{
            if (action.id == '{WATCH_SUPERBLOCK}' && subject.user == '{user}') return polkit.Result.YES;
        }});"
    );
    Polkit::start(&env.bus.address, &env.scratch.path, &rules).await
}

async fn errors_then_snapshot() -> Result<()> {
    let env = Env::start("fserrors-count").await?;
    let _polkit = polkit_for_uid_1000(&env).await?;
    let disk = loop_ext4(&env, "disk")?;
    let dev = dev_of(&disk.device)?;
    let (conn, _holder) = connect_as_user(&env.bus.address, OTHER_UID).await?;
    let client = Client::from_connection(conn);
    let sub = client.subscribe(SubscribeOptions::default()).await?;
    sub.add_watch(1, "fserrors", &WatchOptions::new().initial(true))
        .await?;
    let mut events = sub.into_events();
    let before = snapshot_of(&mut events, dev).await?;
    ensure!(before.is_empty(), "a fresh ext4 has no errors to report");
    for _ in 0..3 {
        trigger(&disk.device)?;
    }
    let live = errors_adding_up_to(&mut events, dev, 3).await?;
    for event in &live {
        check_error(event, dev, &disk.point)?;
        ensure!(event.header().flags & FLAG_SNAPSHOT == 0, "live records");
    }
    let last = live.last().expect("at least one");
    let at = last.record().get_str(attr::LAST_ERROR_AT);
    ensure!(
        at.as_deref()
            .is_some_and(|a| a.starts_with("trigger_test_error:")),
        "where ext4 says the last error was: {at:?}"
    );

    // A new watch's initial state is what ext4 counts.
    let sub = client.subscribe(SubscribeOptions::default()).await?;
    sub.add_watch(
        2,
        "fserrors",
        &WatchOptions::new().initial(true).path(text(&disk.point)),
    )
    .await?;
    let mut events = sub.into_events();
    let snapshot = snapshot_of(&mut events, dev).await?;
    ensure!(
        snapshot.len() == 1,
        "one SNAPSHOT record of the loop ext4: {:?}",
        snapshot.iter().map(shown).collect::<Vec<_>>()
    );
    let record = snapshot[0].record();
    check_error(&snapshot[0], dev, &disk.point)?;
    ensure!(
        record.get_u32(attr::ERROR_COUNT) == Some(3)
            && record.get_u32(attr::ERRORS_TOTAL) == Some(3)
            && record.get_u64(attr::FIRST_ERROR_TIME).is_some(),
        "the snapshot carries ext4's count: {}",
        shown(&snapshot[0])
    );
    Ok(())
}

async fn other_namespace() -> Result<()> {
    let env = Env::start("fserrors-ns").await?;
    let ns = mounts::Namespace::new()?;
    let point = env.scratch.join("elsewhere");
    std::fs::create_dir_all(&point)?;
    let disk = LoopExt4::attach(&env.scratch.join("elsewhere.img"), &point)?;
    let dev = dev_of(&disk.device)?;
    run(ns.command("mount").arg(&disk.device).arg(&point))?;

    // Root outside (this namespace, which has not got it) and root inside.
    let client = env.client().await?;
    let outside = client.subscribe(SubscribeOptions::default()).await?;
    outside
        .add_watch(1, "fserrors", &WatchOptions::new())
        .await?;
    let mut outside = outside.into_events();
    let mut command = ns.command("sleep");
    command.arg("infinity").stdin(Stdio::null());
    let (conn, holder) = connect_from(&env.bus.address, command, 0).await?;
    watchd_e2e::wait_until(
        Duration::from_secs(5),
        "nsenter entered the namespace",
        || {
            use std::os::unix::fs::MetadataExt;
            let theirs = std::fs::metadata(format!("/proc/{}/ns/mnt", holder.pid()))?.ino();
            Ok(theirs != std::fs::metadata("/proc/self/ns/mnt")?.ino())
        },
    )?;
    let inside = Client::from_connection(conn);
    let sub = inside.subscribe(SubscribeOptions::default()).await?;
    sub.add_watch(1, "fserrors", &WatchOptions::new()).await?;
    let mut inside = sub.into_events();

    trigger(&disk.device)?;
    let seen = errors_adding_up_to(&mut inside, dev, 1).await?;
    check_error(&seen[0], dev, &point)?;
    // The outside watch sees nothing of it (the errors of other tests' filesystems, mounted
    // in this namespace, it may see).
    while let Ok(event) = crate::next_within(&mut outside, Duration::from_millis(500)).await {
        ensure!(
            !is_error_of(&event, dev),
            "a caller outside the namespace got its error: {}",
            shown(&event)
        );
    }
    drop(ns);
    Ok(())
}

async fn unmounted() -> Result<()> {
    let env = Env::start("fserrors-umount").await?;
    let disk = loop_ext4(&env, "disk")?;
    let watched = disk.point.join("dir");
    std::fs::create_dir(&watched)?;
    let client = env.client().await?;
    let sub = client.subscribe(SubscribeOptions::default()).await?;
    sub.add_watch(3, "fserrors", &WatchOptions::new().path(text(&watched)))
        .await?;
    let mut events = sub.into_events();
    // The watch keeps nothing busy: a plain umount works.
    mounts::unmount(&disk.point).context("the watch must not hold the filesystem busy")?;
    let ended = next(&mut events).await?;
    ensure!(
        ended.header().is(RecordType::Meta, meta::REMOVAL)
            && ended.header().tag == 3
            && ended.record().get_str(attr::REASON).as_deref() == Some("unmounted")
            && ended.record().get_str(attr::OBJECT).as_deref() == Some(text(&watched)),
        "REMOVAL naming the watched path: {}",
        shown(&ended)
    );
    ensure!(client.status().await?.watches == 0, "the watch ended");
    Ok(())
}

async fn refused() -> Result<()> {
    let env = Env::start("fserrors-bad").await?;
    let tmp = env.scratch.join("tmp");
    mounts::tmpfs(&tmp, "fserrors-e2e", "size=1m")?;
    let client = env.client().await?;
    let sub = client.subscribe(SubscribeOptions::default()).await?;
    let cases: [(WatchOptions, &str, &str); 4] = [
        (
            WatchOptions::new().option("subtree", true),
            "InvalidArgument",
            "subtree",
        ),
        (
            WatchOptions::new().path(text(&env.scratch.join("missing"))),
            "NotFound",
            "does not exist",
        ),
        (
            WatchOptions::new().path("relative"),
            "InvalidArgument",
            "absolute",
        ),
        (
            WatchOptions::new().path(text(&tmp)),
            "NotSupported",
            "(tmpfs) does not report errors",
        ),
    ];
    for (options, error, says) in cases {
        let result = sub.add_watch(1, "fserrors", &options).await;
        let message = match &result {
            Err(e) => e.to_string(),
            Ok(()) => String::new(),
        };
        let name = error_name(result)?;
        ensure!(
            name == format!("org.watchd.Watchd1.Error.{error}") && message.contains(says),
            "{options:?}: {name}: {message}"
        );
    }
    let status = client.status().await?;
    ensure!(status.watches == 0, "nothing was set");
    let detail = status
        .source_details
        .get("fserrors")
        .context("fserrors in SourceDetails")?;
    ensure!(
        detail.contains("only ext4 reports errors"),
        "status says which filesystems report: {detail}"
    );
    Ok(())
}

async fn watchctl() -> Result<()> {
    let env = Env::start("fserrors-cli").await?;
    let disk = loop_ext4(&env, "disk")?;
    let (major, minor) = dev_of(&disk.device)?;
    trigger(&disk.device)?;
    let watch = |json: bool| -> Result<String> {
        let mut command = env.watchctl();
        command.args([
            "watch",
            "fserrors",
            text(&disk.point),
            "--initial",
            "--count",
            "1",
        ]);
        if json {
            command.arg("--json");
        }
        let out = command.output()?;
        ensure!(
            out.status.success(),
            "{command:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?.trim().to_owned())
    };
    let line = watch(true)?;
    let v: serde_json::Value = serde_json::from_str(&line).with_context(|| line.clone())?;
    ensure!(
        v["type"] == "superblock"
            && v["event"] == "error"
            && v["snapshot"] == true
            && v["errno"] == EUCLEAN
            && v["errno_name"] == "EUCLEAN"
            && v["error_count"] == 1
            && v["major"] == major
            && v["minor"] == minor
            && v["fs_type"] == "ext4"
            && v["mounted_on"] == serde_json::json!([text(&disk.point)]),
        "{line}"
    );
    let line = watch(false)?;
    let want = format!(
        "fs error  EUCLEAN (117)  {major}:{minor} ext4 on {}  count=1",
        text(&disk.point)
    );
    ensure!(line.contains(&want), "{line:?} should contain {want:?}");
    Ok(())
}

/// The daemon's filesystem marks on `(major, minor)`: the `fanotify sdev:` lines of its
/// descriptors' fdinfo (the kernel's `s_dev`, major in the bits above 20). Each descriptor
/// of a group lists the group's marks, so a group read through two shows each twice.
fn marks_on(pid: u32, (major, minor): (u32, u32)) -> Result<usize> {
    let sdev = format!("fanotify sdev:{:x} ", (major << 20) | minor);
    let mut found = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        let info = std::fs::read_to_string(entry?.path()).unwrap_or_default();
        found += info.lines().filter(|l| l.starts_with(&sdev)).count();
    }
    Ok(found)
}

async fn marks() -> Result<()> {
    let env = Env::start("fserrors-marks").await?;
    let disk = loop_ext4(&env, "disk")?;
    let dev = dev_of(&disk.device)?;
    let pid = env.daemon.pid();
    ensure!(marks_on(pid, dev)? == 0, "no mark before a watch");
    let client = env.client().await?;
    let mut subs = Vec::new();
    let mut one = 0;
    for options in [
        WatchOptions::new(),
        WatchOptions::new().path(text(&disk.point)),
    ] {
        let sub = client.subscribe(SubscribeOptions::default()).await?;
        sub.add_watch(1, "fserrors", &options).await?;
        subs.push(sub);
        if one == 0 {
            one = marks_on(pid, dev)?;
            ensure!(one > 0, "the first watch marks the filesystem");
        }
    }
    // uid 1000 in the same namespace (its own view of it) shares the mark too.
    let _polkit = polkit_for_uid_1000(&env).await?;
    let (conn, _holder) = connect_as_user(&env.bus.address, OTHER_UID).await?;
    let other = Client::from_connection(conn);
    let theirs = other.subscribe(SubscribeOptions::default()).await?;
    theirs
        .add_watch(1, "fserrors", &WatchOptions::new())
        .await?;
    let three = marks_on(pid, dev)?;
    ensure!(
        three == one,
        "three watches share the first one's mark: {three} lines, not {one}"
    );
    let events = theirs.into_events();
    drop(events);
    for sub in subs {
        drop(sub.into_events());
    }
    watchd_e2e::wait_until(
        Duration::from_secs(5),
        "the last watch's mark removed",
        || Ok(marks_on(pid, dev)? == 0),
    )?;
    Ok(())
}
