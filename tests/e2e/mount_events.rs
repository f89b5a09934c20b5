//! Mount changes in the namespace reach subscribers with the right subtype and fields, from
//! either backend: every trial runs against fanotify + statmount and against mountinfo
//! (`sources.mount_events`). What only fanotify promises (changes faster than any re-read,
//! bursts, the kernel queue's overflow) runs against it alone.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use watchd_client::{SubscribeOptions, WatchOptions};
use watchd_e2e::{Env, Process, Trial, mounts};
use watchd_proto::{RecordType, attr, mount};

use crate::expect_mount;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Fanotify,
    Mountinfo,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Fanotify => "fanotify",
            Backend::Mountinfo => "mountinfo",
        }
    }

    /// What `SourceDetails` says of it.
    fn described_as(self) -> &'static str {
        match self {
            Backend::Fanotify => "fanotify mount events",
            Backend::Mountinfo => "mountinfo, re-read",
        }
    }

    async fn env(self, label: &str) -> Result<Env> {
        let config = format!("[sources]\nmount_events = \"{}\"\n", self.name());
        Env::start_with_config(&format!("{label}-{}", self.name()), &config).await
    }
}

fn trial<F, Fut>(backend: Backend, name: &str, body: F) -> Trial
where
    F: FnOnce(Backend) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<()>>,
{
    Trial::test(format!("mounts::{}::{name}", backend.name()), move || {
        watchd_e2e::run(body(backend))
    })
}

pub fn trials() -> Vec<Trial> {
    let mut trials = Vec::new();
    for backend in [Backend::Fanotify, Backend::Mountinfo] {
        trials.extend([
            trial(
                backend,
                "a_tmpfs_mount_reaches_two_subscribers_each_with_its_own_tag_and_true_fields",
                two_subscribers,
            ),
            trial(backend, "umount_is_a_detach", umount_detach),
            trial(
                backend,
                "remount_read_only_then_read_write_are_changes_naming_the_new_options",
                remount_change,
            ),
            trial(
                backend,
                "a_bind_remount_noexec_changes_the_mount_options_only",
                bind_remount_noexec,
            ),
            trial(
                backend,
                "a_remount_of_the_filesystems_own_options_changes_the_superblock_options",
                remount_size,
            ),
            trial(
                backend,
                "making_a_mount_shared_with_mount_setattr_is_a_propagation_change",
                make_shared,
            ),
            trial(
                backend,
                "mount_move_is_a_move_with_old_and_new_mount_points",
                move_mount,
            ),
            trial(
                backend,
                "a_caller_in_a_chroot_sees_mount_points_as_its_root_shows_them_and_nothing_outside",
                chrooted,
            ),
        ]);
    }
    trials.extend([
        trial(
            Backend::Fanotify,
            "a_mount_and_umount_made_faster_than_any_reread_are_both_reported",
            quick_pairs,
        ),
        trial(
            Backend::Fanotify,
            "a_burst_of_1000_mounts_is_reported_in_order_without_loss",
            burst,
        ),
        trial(
            Backend::Fanotify,
            "an_overflow_of_the_kernel_queue_is_a_loss_then_what_changed_meanwhile",
            overflow,
        ),
    ]);
    trials
}

async fn two_subscribers(backend: Backend) -> Result<()> {
    let env = backend.env("two-subs").await?;
    let mut a = env.watch_scratch(7, WatchOptions::new()).await?;
    let mut b = env.watch_scratch(8, WatchOptions::new()).await?;

    let target = env.scratch.join("m");
    mounts::tmpfs(&target, "e2e-source", "size=1m,mode=0750")?;
    let info = mounts::mountinfo_line(&target)?;
    let (major, minor) = info[2].split_once(':').unwrap();
    for (stream, tag) in [(&mut a, 7), (&mut b, 8)] {
        let event = expect_mount(stream, mount::ATTACH, &target).await?;
        let r = event.record();
        ensure!(
            r.header.tag == tag,
            "tag {} on the record, {tag} on the watch",
            r.header.tag
        );
        ensure!(
            r.header.seq == 1,
            "first record of the subscription has seq 1, got {}",
            r.header.seq
        );
        ensure!(r.header.flags == 0, "a live event is not a snapshot");
        ensure!(r.get_str(attr::FS_TYPE).as_deref() == Some("tmpfs"));
        ensure!(r.get_str(attr::SOURCE).as_deref() == Some("e2e-source"));
        ensure!(
            r.get_u64(attr::MOUNT_ID) == info[0].parse().ok(),
            "mount id as in mountinfo"
        );
        ensure!(
            r.get_u64(attr::PARENT_ID) == info[1].parse().ok(),
            "parent id as in mountinfo"
        );
        ensure!(
            r.get_u32(attr::MAJOR) == major.parse().ok()
                && r.get_u32(attr::MINOR) == minor.parse().ok()
        );
        ensure!(r.get_str(attr::ROOT).as_deref() == Some("/"));
        ensure!(
            r.get_str(attr::MOUNT_OPTIONS)
                .is_some_and(|o| o.starts_with("rw"))
        );
        let sb = r.get_str(attr::SUPER_OPTIONS).unwrap_or_default();
        ensure!(
            sb.contains("size=1024k") && sb.contains("mode=750"),
            "superblock options: {sb}"
        );
        let ns = std::fs::metadata("/proc/self/ns/mnt")
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))?;
        ensure!(r.get_u64(attr::MNT_NS) == Some(ns), "the namespace's inode");
        ensure!(
            r.get_u64(attr::MOUNT_UNIQUE_ID).is_some() == (backend == Backend::Fanotify),
            "the 64-bit mount id comes with statmount only: {:?}",
            r.get_u64(attr::MOUNT_UNIQUE_ID)
        );
    }
    let status = env.client().await?.status().await?;
    let details = &status.source_details["mounts"];
    ensure!(
        details.contains(backend.described_as()),
        "status names the backend: {details}"
    );
    Ok(())
}

async fn umount_detach(backend: Backend) -> Result<()> {
    let env = backend.env("umount").await?;
    let mut events = env.watch_scratch(1, WatchOptions::new()).await?;
    let target = env.scratch.join("gone");
    mounts::tmpfs(&target, "e2e", "size=1m")?;
    let attached = expect_mount(&mut events, mount::ATTACH, &target).await?;
    mounts::unmount(&target)?;
    let detached = expect_mount(&mut events, mount::DETACH, &target).await?;
    ensure!(
        detached.record().get_u64(attr::MOUNT_ID) == attached.record().get_u64(attr::MOUNT_ID),
        "the detach names the mount that was attached"
    );
    Ok(())
}

async fn remount_change(backend: Backend) -> Result<()> {
    let env = backend.env("remount").await?;
    let target = env.scratch.join("ro");
    mounts::tmpfs(&target, "e2e", "size=1m")?;
    let mut events = env.watch_scratch(1, WatchOptions::new()).await?;
    mounts::remount_read_only(&target)?;
    let change = expect_mount(&mut events, mount::CHANGE, &target).await?;
    let r = change.record();
    ensure!(
        r.get_str(attr::MOUNT_OPTIONS)
            .is_some_and(|o| o.starts_with("ro")),
        "options: {:?}",
        r.get_str(attr::MOUNT_OPTIONS)
    );
    ensure!(
        r.get_u32(attr::CHANGED)
            .is_some_and(|c| c & mount::CHANGED_OPTIONS != 0),
        "CHANGED names the options"
    );
    mounts::remount_read_write(&target)?;
    let change = expect_mount(&mut events, mount::CHANGE, &target).await?;
    let r = change.record();
    ensure!(
        r.get_str(attr::SUPER_OPTIONS)
            .is_some_and(|o| o.starts_with("rw")),
        "superblock options after remount,rw: {:?}",
        r.get_str(attr::SUPER_OPTIONS)
    );
    Ok(())
}

async fn move_mount(backend: Backend) -> Result<()> {
    let env = backend.env("move").await?;
    let mut events = env.watch_scratch(1, WatchOptions::new()).await?;
    let (from, to) = (env.scratch.join("from"), env.scratch.join("to"));
    mounts::tmpfs(&from, "e2e", "size=1m")?;
    expect_mount(&mut events, mount::ATTACH, &from).await?;
    mounts::move_mount(&from, &to)?;
    let moved = expect_mount(&mut events, mount::MOVE, &to).await?;
    ensure!(moved.header().is(RecordType::Mount, mount::MOVE));
    ensure!(
        moved.record().get_str(attr::OLD_MOUNT_POINT).as_deref() == from.to_str(),
        "old mount point"
    );
    Ok(())
}

async fn bind_remount_noexec(backend: Backend) -> Result<()> {
    let env = backend.env("noexec").await?;
    let target = env.scratch.join("noexec");
    mounts::tmpfs(&target, "e2e", "size=1m")?;
    let mut events = env.watch_scratch(1, WatchOptions::new()).await?;
    mounts::bind_remount_noexec(&target)?;
    let change = expect_mount(&mut events, mount::CHANGE, &target).await?;
    let r = change.record();
    ensure!(
        r.get_str(attr::MOUNT_OPTIONS)
            .is_some_and(|o| o.split(',').any(|o| o == "noexec")),
        "options: {:?}",
        r.get_str(attr::MOUNT_OPTIONS)
    );
    ensure!(
        r.get_u32(attr::CHANGED) == Some(mount::CHANGED_OPTIONS),
        "only the per-mount options changed: {:?}",
        r.get_u32(attr::CHANGED)
    );
    Ok(())
}

/// `remount,size=2m` changes no flag anywhere, only tmpfs's own options: statmount's fixed
/// fields cannot see it, the superblock's option string does.
async fn remount_size(backend: Backend) -> Result<()> {
    let env = backend.env("size").await?;
    let target = env.scratch.join("size");
    mounts::tmpfs(&target, "e2e", "size=1m")?;
    let mut events = env.watch_scratch(1, WatchOptions::new()).await?;
    mounts::remount_with(&target, "size=2m")?;
    let change = expect_mount(&mut events, mount::CHANGE, &target).await?;
    let r = change.record();
    ensure!(
        r.get_u32(attr::CHANGED) == Some(mount::CHANGED_SUPER_OPTIONS),
        "only the superblock options changed: {:?}",
        r.get_u32(attr::CHANGED)
    );
    ensure!(
        r.get_str(attr::SUPER_OPTIONS)
            .is_some_and(|o| o.contains("size=2048k")),
        "superblock options: {:?}",
        r.get_str(attr::SUPER_OPTIONS)
    );
    Ok(())
}

async fn make_shared(backend: Backend) -> Result<()> {
    let env = backend.env("shared").await?;
    let target = env.scratch.join("shared");
    mounts::tmpfs(&target, "e2e", "size=1m")?;
    let mut events = env.watch_scratch(1, WatchOptions::new()).await?;
    mounts::make_shared_with_setattr(&target)?;
    let change = expect_mount(&mut events, mount::CHANGE, &target).await?;
    let r = change.record();
    ensure!(
        r.get_u32(attr::CHANGED)
            .is_some_and(|c| c & mount::CHANGED_PROPAGATION != 0),
        "CHANGED names the propagation: {:?}",
        r.get_u32(attr::CHANGED)
    );
    let info = mounts::mountinfo_line(&target)?;
    let shared = info.iter().find(|f| f.starts_with("shared:")).cloned();
    ensure!(
        shared.is_some() && r.get_str(attr::PROPAGATION) == shared,
        "propagation {:?}, mountinfo says {shared:?}",
        r.get_str(attr::PROPAGATION)
    );
    Ok(())
}

/// A `watchctl watch mounts --json` in `ns`, with `args` added; its lines, once its watch
/// is set.
async fn watch_in(
    env: &Env,
    ns: &mounts::Namespace,
    args: &[&str],
) -> Result<(Process, Receiver<String>)> {
    let mut command = ns.command(watchd_e2e::watchctl_bin());
    command
        .arg("--bus-address")
        .arg(&env.bus.address)
        .args(["watch", "mounts", "--json"])
        .args(args)
        .stdout(Stdio::piped());
    let mut watcher = Process::spawn(command, "watchctl in a namespace of its own")?;
    let lines = watchd_e2e::stdout_lines(&mut watcher);
    let client = env.client().await?;
    for _ in 0..500 {
        if client.status().await?.watches == 1 {
            return Ok((watcher, lines));
        }
        watcher.check_running()?;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("watchctl did not set its watch")
}

/// `mount-storm args…` run in `ns`, to its end.
fn storm(ns: &mounts::Namespace, args: &[&str]) -> Result<()> {
    let status = ns
        .command(env!("CARGO_BIN_EXE_mount-storm"))
        .args(args)
        .stdout(Stdio::null())
        .status()?;
    ensure!(status.success(), "mount-storm {args:?}: {status}");
    Ok(())
}

fn json_lines(lines: &Receiver<String>, n: usize) -> Result<Vec<serde_json::Value>> {
    json_lines_where(lines, n, |_| true)
}

/// The next `n` records for which `wanted` holds, the others skipped.
fn json_lines_where(
    lines: &Receiver<String>,
    n: usize,
    wanted: impl Fn(&serde_json::Value) -> bool,
) -> Result<Vec<serde_json::Value>> {
    let mut records = Vec::with_capacity(n);
    while records.len() < n {
        let line = lines
            .recv_timeout(Duration::from_secs(10))
            .with_context(|| format!("only {} of {n} records arrived", records.len()))?;
        let record = serde_json::from_str(&line)?;
        if wanted(&record) {
            records.push(record);
        }
    }
    Ok(records)
}

/// Each pair is made and undone within microseconds, long before a re-read of mountinfo
/// could see it: fanotify still reports both halves, the attach by the mount's id alone
/// when the mount was gone before it could be looked at.
async fn quick_pairs(backend: Backend) -> Result<()> {
    const PAIRS: usize = 50;
    let env = backend.env("pairs").await?;
    let ns = mounts::Namespace::new()?;
    let (_watcher, lines) = watch_in(&env, &ns, &["--depth", "256"]).await?;
    let point = env.scratch.join("pairs");
    storm(&ns, &["pairs", &PAIRS.to_string(), point.to_str().unwrap()])?;
    // The namespace is a copy of the tests' own, whose other mounts can go meanwhile (a
    // directory removed under a copy of a mount detaches it here too): only records of this
    // test's mount point, or of none known, are this test's.
    let ours = |r: &serde_json::Value| {
        r["mount_point"].is_null() || r["mount_point"] == point.to_str().unwrap()
    };
    let records = json_lines_where(&lines, 2 * PAIRS, ours)?;
    for (i, pair) in records.chunks(2).enumerate() {
        let (attach, detach) = (&pair[0], &pair[1]);
        ensure!(
            attach["event"] == "attach" && detach["event"] == "detach",
            "pair {i}: {attach} then {detach}"
        );
        ensure!(
            attach["mount_unique_id"].is_u64()
                && attach["mount_unique_id"] == detach["mount_unique_id"],
            "pair {i}: one mount, by its unique id: {attach} then {detach}"
        );
        for record in [attach, detach] {
            ensure!(
                record["mount_point"].is_null() || record["mount_point"] == point.to_str().unwrap(),
                "pair {i}: {record}"
            );
        }
    }
    while let Ok(extra) = lines.recv_timeout(Duration::from_millis(200)) {
        if ours(&serde_json::from_str(&extra)?) {
            bail!("nothing more than the pairs, but: {extra}");
        }
    }
    Ok(())
}

/// 1,000 mounts made back to back: each reported, in the order made, and the unmounts
/// (last first) too, with nothing lost for a reader that keeps up (a thread of this process
/// blocked in read(2) on the pipe, at depth 256).
async fn burst(backend: Backend) -> Result<()> {
    const MOUNTS: usize = 1000;
    let env = backend.env("burst").await?;
    let dir = env.scratch.join("burst");
    std::fs::create_dir_all(&dir)?;
    let dir_text = dir.to_str().unwrap().to_owned();
    let subscription = env
        .client()
        .await?
        .subscribe(SubscribeOptions { depth: Some(256) })
        .await?;
    subscription
        .add_watch(1, "mounts", &WatchOptions::new().path(&dir_text))
        .await?;
    let pipe = std::fs::File::from(subscription.into_pipe());
    let read = Arc::new(AtomicUsize::new(0));
    let progress = read.clone();
    let reader = std::thread::spawn(move || read_packets(pipe, 2 * MOUNTS, &progress));
    let count = MOUNTS.to_string();
    tokio::task::spawn_blocking(move || -> Result<()> {
        for (command, then_read) in [("burst", MOUNTS), ("unburst", 2 * MOUNTS)] {
            // Niced: on a busy machine the mounts, not the reader, should wait for a CPU.
            let status = std::process::Command::new("nice")
                .args(["-n", "19", env!("CARGO_BIN_EXE_mount-storm"), command])
                .args([&count, &dir_text])
                .stdout(Stdio::null())
                .status()?;
            ensure!(status.success(), "mount-storm {command}: {status}");
            // Unmounting before the daemon has looked at each mount would leave it only
            // the ids of those (see docs/protocol.md, section 9), which a watch of a path
            // does not get: the burst is reported first, then undone.
            watchd_e2e::wait_until(Duration::from_secs(60), "the burst reported", || {
                Ok(read.load(Ordering::Relaxed) >= then_read || reader_done(&read))
            })?;
        }
        Ok(())
    })
    .await??;
    let records = reader.join().expect("the reader thread")?;
    let expected = (0..MOUNTS)
        .map(|i| (mount::ATTACH, i))
        .chain((0..MOUNTS).rev().map(|i| (mount::DETACH, i)));
    for (packet, (subtype, i)) in records.iter().zip(expected) {
        let record = watchd_proto::Record::parse(packet)?;
        let at = dir.join(i.to_string());
        ensure!(
            record.header.is(RecordType::Mount, subtype)
                && record.get_str(attr::MOUNT_POINT).as_deref() == at.to_str(),
            "expected subtype {subtype} at {}, got {:?} at {:?} (seq {})",
            at.display(),
            (record.header.record_type, record.header.subtype),
            record.get_str(attr::MOUNT_POINT),
            record.header.seq
        );
    }
    Ok(())
}

/// Whether [`read_packets`] has given up (it sets its count to `usize::MAX`).
fn reader_done(read: &AtomicUsize) -> bool {
    read.load(Ordering::Relaxed) == usize::MAX
}

/// Reads `n` packets from `pipe` as fast as they come, 10 s at most between two, on a thread
/// of real-time priority (a reader that keeps up even when the machine is busy), counting
/// them in `read`; a LOSS record ends it with an error.
fn read_packets(pipe: std::fs::File, n: usize, read: &AtomicUsize) -> Result<Vec<Vec<u8>>> {
    let packets = read_packets_counted(pipe, n, read);
    if packets.is_err() {
        read.store(usize::MAX, Ordering::Relaxed);
    }
    packets
}

fn read_packets_counted(pipe: std::fs::File, n: usize, read: &AtomicUsize) -> Result<Vec<Vec<u8>>> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::io::Read;
    use std::os::fd::AsFd;
    watchd_e2e::sys::realtime_priority_this_thread()?;
    let mut packets = Vec::with_capacity(n);
    let mut buf = [0u8; 4096];
    while packets.len() < n {
        let mut fds = [PollFd::new(pipe.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, PollTimeout::from(10_000u16))? == 0 {
            bail!("only {} of {n} records arrived", packets.len());
        }
        match (&pipe).read(&mut buf) {
            Ok(0) => bail!("the pipe ended after {} records", packets.len()),
            Ok(len) => {
                let record = watchd_proto::Record::parse(&buf[..len])?;
                if record.header.is(RecordType::Meta, watchd_proto::meta::LOSS) {
                    bail!(
                        "LOSS of {:?} records after {}",
                        record.get_u64(attr::LOST_COUNT),
                        packets.len()
                    );
                }
                packets.push(buf[..len].to_vec());
                read.store(packets.len(), Ordering::Relaxed);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(packets)
}

/// `mount -t tmpfs SOURCE TARGET` in `ns`.
fn mount_in(ns: &mounts::Namespace, source: &str, target: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(target)?;
    let status = ns
        .command("mount")
        .args(["-t", "tmpfs", "-o", "size=16k", source])
        .arg(target)
        .status()?;
    ensure!(status.success(), "mount {}: {status}", target.display());
    Ok(())
}

/// The daemon stopped (SIGSTOP) while 18,000 mount events pile up, more than the kernel's
/// queue of 16,384 holds; then, past the overflow, one watched mount goes and another comes.
/// Once resumed, the watch gets a LOSS (from its source, with its tag) and then those two
/// changes, found by reading the namespace again.
async fn overflow(backend: Backend) -> Result<()> {
    use nix::sys::signal::Signal;
    let env = backend.env("overflow").await?;
    let ns = mounts::Namespace::new()?;
    let watched = env.scratch.join("watched");
    let (old, new) = (watched.join("old"), watched.join("new"));
    mount_in(&ns, "old", &old)?;
    std::fs::create_dir_all(&new)?;
    let watched_text = watched.to_str().unwrap();
    let (_watcher, lines) = watch_in(&env, &ns, &["--path", watched_text]).await?;
    let daemon = env.daemon.pid();
    watchd_e2e::send_signal(daemon, Signal::SIGSTOP)?;
    let storm_dir = env.scratch.join("storm");
    let stormed = storm(&ns, &["pairs", "9000", storm_dir.to_str().unwrap()]).and_then(|()| {
        let status = ns.command("umount").arg(&old).status()?;
        ensure!(status.success(), "umount {}", old.display());
        mount_in(&ns, "new", &new)
    });
    watchd_e2e::send_signal(daemon, Signal::SIGCONT)?;
    stormed?;
    let records = json_lines(&lines, 3)?;
    ensure!(
        records[0]["event"] == "loss"
            && records[0]["tag"] == 1
            && records[0]["first_lost_seq"].is_null(),
        "first a LOSS from the source, for the watch: {}",
        records[0]
    );
    let mut changes: Vec<(String, String)> = records[1..]
        .iter()
        .map(|r| (r["event"].to_string(), r["mount_point"].to_string()))
        .collect();
    changes.sort();
    let quoted = |p: &std::path::Path| format!("{:?}", p.to_str().unwrap());
    ensure!(
        changes
            == [
                ("\"attach\"".to_string(), quoted(&new)),
                ("\"detach\"".to_string(), quoted(&old)),
            ],
        "then the two changes made past the overflow: {records:?}"
    );
    Ok(())
}

/// A read-only bind mount of `/` to serve as a chroot, detached when dropped. Read-only, so
/// that nothing removing directories ever reaches the real tree through it.
struct ChrootDir(std::path::PathBuf);

impl ChrootDir {
    fn new() -> Result<ChrootDir> {
        use nix::mount::{MsFlags, mount};
        let dir = std::env::temp_dir().join(format!(
            "watchd-e2e-chroot-{}-{}",
            std::process::id(),
            watchd_e2e::bench::now_ns()
        ));
        std::fs::create_dir(&dir)?;
        let root = ChrootDir(dir);
        mount(
            Some("/"),
            &root.0,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )?;
        mount(
            None::<&str>,
            &root.0,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
            None::<&str>,
        )?;
        Ok(root)
    }
}

impl Drop for ChrootDir {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A watcher chrooted into a bind mount of `/` sees its mounts where its root shows them,
/// never the namespace's own paths, and none of the mounts outside its root. With fanotify,
/// its view does not match the namespace's, so it is followed through its own mountinfo.
async fn chrooted(backend: Backend) -> Result<()> {
    let env = backend.env("chroot").await?;
    let root = ChrootDir::new()?;
    let inside = env.scratch.join("inside");
    let outside = env.scratch.join("outside");
    std::fs::create_dir_all(&inside)?;
    std::fs::create_dir_all(&outside)?;
    let mut command = std::process::Command::new("chroot");
    command
        .arg(&root.0)
        .arg(watchd_e2e::watchctl_bin())
        .arg("--bus-address")
        .arg(&env.bus.address)
        .args(["watch", "mounts", "--json", "--path"])
        .arg(&env.scratch.path)
        .stdout(Stdio::piped());
    let mut watcher = Process::spawn(command, "watchctl in a chroot")?;
    let lines = watchd_e2e::stdout_lines(&mut watcher);
    let client = env.client().await?;
    for _ in 0..500 {
        if client.status().await?.watches == 1 {
            break;
        }
        watcher.check_running()?;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Outside its root: the real /…/outside, which the chroot does not contain.
    mounts::tmpfs(&outside, "outside", "size=16k")?;
    // Inside: …/inside under the chroot's root, which it sees as /…/inside.
    let seen_inside = root.0.join(inside.strip_prefix("/")?);
    mounts::tmpfs(&seen_inside, "inside", "size=16k")?;
    let records = json_lines(&lines, 1)?;
    ensure!(
        records[0]["event"] == "attach"
            && records[0]["source"] == "inside"
            && records[0]["mount_point"] == inside.to_str().unwrap(),
        "the mount as the chroot shows it, and only that one: {}",
        records[0]
    );
    ensure!(
        lines.recv_timeout(Duration::from_millis(300)).is_err(),
        "nothing about the mount outside the chroot"
    );
    mounts::unmount(&seen_inside)?;
    Ok(())
}
