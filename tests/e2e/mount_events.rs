//! Mount changes in the namespace reach subscribers with the right subtype and fields.

use anyhow::{Result, ensure};
use watchd_client::WatchOptions;
use watchd_e2e::{Env, Trial, mounts};
use watchd_proto::{RecordType, attr, mount};

use crate::{expect_mount, trial};

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "mounts::a_tmpfs_mount_reaches_two_subscribers_each_with_its_own_tag_and_true_fields",
            two_subscribers,
        ),
        trial("mounts::umount_is_a_detach", umount_detach),
        trial(
            "mounts::remount_read_only_is_a_change_naming_the_new_options",
            remount_change,
        ),
        trial(
            "mounts::mount_move_is_a_move_with_old_and_new_mount_points",
            move_mount,
        ),
    ]
}

async fn two_subscribers() -> Result<()> {
    let env = Env::start("two-subs").await?;
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
    }
    Ok(())
}

async fn umount_detach() -> Result<()> {
    let env = Env::start("umount").await?;
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

async fn remount_change() -> Result<()> {
    let env = Env::start("remount").await?;
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
    Ok(())
}

async fn move_mount() -> Result<()> {
    let env = Env::start("move").await?;
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
