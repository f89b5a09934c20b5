//! Files watches: real files on a tmpfs and on a loop-mounted ext4 (both mounted in the
//! suite's private mount namespace). Every subtype with its names, a subtree, a rename
//! between two watched directories, a subscriber of uid 1001 that sees only what it could
//! look up itself (a `chmod 700` of a parent stops it at once, a sibling it may not read
//! never reaches it), the watched directory removed, and the kernel queue's overflow.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use watchd_client::{Client, EventStream, SubscribeOptions, WatchOptions};
use watchd_e2e::polkit::{TEST_UID, connect_as_user};
use watchd_e2e::{Env, Trial, mounts};
use watchd_proto::{RecordType, attr, file, meta, names};

use crate::{expect_silence, next, trial};

pub fn trials() -> Vec<Trial> {
    vec![
        trial("files::every_subtype_with_its_names_on_tmpfs", || {
            every_subtype(Fs::Tmpfs)
        }),
        trial("files::every_subtype_with_its_names_on_a_loop_ext4", || {
            every_subtype(Fs::Ext4)
        }),
        trial(
            "files::a_subtree_names_changes_below_it_relative_to_the_watched_path",
            subtree,
        ),
        trial(
            "files::a_rename_between_two_watched_directories",
            rename_across,
        ),
        trial(
            "files::uid_1001_sees_what_it_can_read_until_a_parent_is_chmod_700",
            chmod_parent,
        ),
        trial(
            "files::a_sibling_directory_uid_1001_cannot_read_never_reaches_it",
            unreadable_sibling,
        ),
        trial(
            "files::the_watched_directory_removed_or_moved_away_ends_the_watch",
            removed,
        ),
        trial(
            "files::a_watched_file_reports_its_own_changes_until_it_is_deleted",
            one_file,
        ),
        trial(
            "files::a_lazy_unmount_of_the_watched_filesystem_ends_the_watch",
            unmounted,
        ),
        trial(
            "files::a_directory_passed_by_descriptor_is_watched_as_its_path",
            by_descriptor,
        ),
        trial(
            "files::bad_requests_are_refused_and_change_nothing",
            bad_requests,
        ),
        trial(
            "files::an_overflow_of_the_kernel_queue_is_a_loss_for_every_files_watch",
            overflow,
        ),
    ]
}

#[derive(Clone, Copy, Debug)]
enum Fs {
    Tmpfs,
    Ext4,
}

/// A daemon, and a fresh tmpfs (mounted with `options`) at `top` in its scratch directory.
async fn on_tmpfs(label: &str, options: &str) -> Result<(Env, PathBuf)> {
    let env = Env::start(label).await?;
    let top = env.scratch.join("top");
    mounts::tmpfs(&top, "files-e2e", options)?;
    Ok((env, top))
}

/// A loop device with an ext4 on it, mounted at `point`; unmounted and detached on drop.
pub(crate) struct LoopExt4 {
    pub(crate) point: PathBuf,
    pub(crate) device: String,
}

impl LoopExt4 {
    pub(crate) fn new(image: &Path, point: &Path) -> Result<LoopExt4> {
        LoopExt4::sized(image, point, 32 << 20)
    }

    /// An ext4 of `bytes` in the file `image`, mounted at `point`.
    pub(crate) fn sized(image: &Path, point: &Path, bytes: u64) -> Result<LoopExt4> {
        let made = LoopExt4::attach_sized(image, point, bytes)?;
        std::fs::create_dir_all(point)?;
        run(Command::new("mount").arg(&made.device).arg(point))?;
        Ok(made)
    }

    /// A fresh ext4 image on a loop device, for the caller to mount at `point` (in another
    /// namespace, say).
    pub(crate) fn attach(image: &Path, point: &Path) -> Result<LoopExt4> {
        LoopExt4::attach_sized(image, point, 32 << 20)
    }

    fn attach_sized(image: &Path, point: &Path, bytes: u64) -> Result<LoopExt4> {
        std::fs::File::create(image)?.set_len(bytes)?;
        run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(image))?;
        let device = run(Command::new("losetup")
            .args(["--find", "--show"])
            .arg(image))?;
        Ok(LoopExt4 {
            point: point.to_owned(),
            device,
        })
    }
}

/// Runs `command`, failing with its stderr; its stdout, trimmed.
pub(crate) fn run(command: &mut Command) -> Result<String> {
    let out = command.output().with_context(|| format!("{command:?}"))?;
    ensure!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

impl Drop for LoopExt4 {
    fn drop(&mut self) {
        // Already unmounted by the test, or mounted in another namespace: nothing to say.
        let _ = Command::new("umount").arg(&self.point).output();
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
    }
}

fn text(path: &Path) -> &str {
    path.to_str().expect("UTF-8 scratch path")
}

/// A files watch with `tag` on `path` in a new subscription of `client`.
async fn watch(
    client: &Client,
    tag: u64,
    path: &Path,
    subtree: bool,
    depth: Option<u32>,
) -> Result<EventStream> {
    let sub = client.subscribe(SubscribeOptions { depth }).await?;
    let mut options = WatchOptions::new().path(text(path));
    if subtree {
        options = options.option("subtree", true);
    }
    sub.add_watch(tag, "files", &options).await?;
    Ok(sub.into_events())
}

/// (subtype name, name, old name) of a record, for messages and comparisons.
fn shown(event: &watchd_client::Event) -> (String, String, Option<String>) {
    let h = event.header();
    let r = event.record();
    let kind = names::subtype(h.record_type, h.subtype).unwrap_or("?");
    let prefix = if h.record_type == RecordType::Meta as u32 {
        "meta "
    } else {
        ""
    };
    (
        format!("{prefix}{kind}"),
        r.get_str(attr::NAME)
            .or_else(|| r.get_str(attr::REASON))
            .unwrap_or_default(),
        r.get_str(attr::OLD_NAME),
    )
}

/// The next records are file records of exactly these (subtype, name) pairs, in order.
async fn expect_files(stream: &mut EventStream, tag: u64, want: &[(u8, &str)]) -> Result<()> {
    for (i, &(subtype, name)) in want.iter().enumerate() {
        let event = next(stream)
            .await
            .with_context(|| format!("waiting for record {i} of {want:?}"))?;
        let h = event.header();
        ensure!(
            h.is(RecordType::File, subtype)
                && event.record().get_str(attr::NAME).as_deref() == Some(name)
                && h.tag == tag,
            "record {i}: expected {} {name:?} (tag {tag}), got {:?} (tag {})",
            names::subtype(RecordType::File as u32, subtype).unwrap(),
            shown(&event),
            h.tag
        );
    }
    Ok(())
}

/// The records of `std::fs::write` of a new file: created, written, closed (three records,
/// whether the kernel merged the events or not).
async fn expect_written(stream: &mut EventStream, tag: u64, name: &str) -> Result<()> {
    let want = [file::CREATE, file::MODIFY, file::CLOSE_WRITE].map(|s| (s, name));
    expect_files(stream, tag, &want).await
}

/// The records of `File::create` of a new file: created, closed.
async fn expect_created(stream: &mut EventStream, tag: u64, name: &str) -> Result<()> {
    expect_files(
        stream,
        tag,
        &[(file::CREATE, name), (file::CLOSE_WRITE, name)],
    )
    .await
}

async fn every_subtype(fs: Fs) -> Result<()> {
    let env = Env::start("files-subtypes").await?;
    let watched = env.scratch.join("w");
    let _ext4 = match fs {
        Fs::Tmpfs => {
            mounts::tmpfs(&watched, "files-e2e", "size=4m")?;
            None
        }
        Fs::Ext4 => Some(LoopExt4::new(&env.scratch.join("ext4.img"), &watched)?),
    };
    let outside = watched.join("outside");
    std::fs::create_dir(&outside)?;
    let dir = watched.join("d");
    std::fs::create_dir(&dir)?;
    let client = env.client().await?;
    let mut events = watch(&client, 5, &dir, false, Some(64)).await?;

    std::fs::write(dir.join("a"), b"x")?;
    expect_written(&mut events, 5, "a").await?;
    let first = next_after(&dir, &mut events, |d| {
        std::fs::set_permissions(
            d.join("a"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
    })
    .await?;
    ensure!(
        first.header().is(RecordType::File, file::ATTRIB)
            && first.record().get_str(attr::NAME).as_deref() == Some("a"),
        "chmod: {:?}",
        shown(&first)
    );
    let r = first.record();
    let meta = std::fs::metadata(dir.join("a"))?;
    ensure!(
        r.get_u64(attr::INODE) == Some(std::os::unix::fs::MetadataExt::ino(&meta)),
        "the inode of the file: {:?}",
        r.get_u64(attr::INODE)
    );
    let dev = std::os::unix::fs::MetadataExt::dev(&meta);
    ensure!(
        r.get_u32(attr::MAJOR) == Some(nix::sys::stat::major(dev) as u32)
            && r.get_u32(attr::MINOR) == Some(nix::sys::stat::minor(dev) as u32),
        "the filesystem's device"
    );
    ensure!(
        r.get_str(attr::HANDLE).is_some_and(|h| !h.is_empty())
            && r.get_u32(attr::HANDLE_TYPE).is_some()
            && r.get_u64(attr::FSID).is_some(),
        "a handle and its filesystem id"
    );
    ensure!(r.get(attr::IS_DIR).is_none(), "a file is no directory");

    std::fs::rename(dir.join("a"), dir.join("b"))?;
    let renamed = next(&mut events).await?;
    ensure!(
        renamed.header().is(RecordType::File, file::RENAME)
            && shown(&renamed) == ("rename".into(), "b".into(), Some("a".into())),
        "rename: {:?}",
        shown(&renamed)
    );
    std::fs::create_dir(dir.join("sub"))?;
    let made = next(&mut events).await?;
    ensure!(
        made.header().is(RecordType::File, file::CREATE)
            && made.record().get_str(attr::NAME).as_deref() == Some("sub")
            && made.record().get_u32(attr::IS_DIR) == Some(1),
        "mkdir: {:?}",
        shown(&made)
    );
    // Below a directory's entries, without subtree: nothing.
    std::fs::write(dir.join("sub/deep"), b"")?;
    std::fs::rename(dir.join("b"), outside.join("b"))?;
    expect_files(&mut events, 5, &[(file::MOVED_FROM, "b")]).await?;
    std::fs::rename(outside.join("b"), dir.join("c"))?;
    expect_files(&mut events, 5, &[(file::MOVED_TO, "c")]).await?;
    std::fs::remove_file(dir.join("c"))?;
    expect_files(&mut events, 5, &[(file::DELETE, "c")]).await?;
    std::fs::write(outside.join("elsewhere"), b"")?;
    expect_silence(&mut events, Duration::from_millis(300)).await?;
    drop(events);
    drop(client);
    Ok(())
}

/// Runs `change` on `dir`, returns the next record.
async fn next_after(
    dir: &Path,
    events: &mut EventStream,
    change: impl FnOnce(&Path) -> std::io::Result<()>,
) -> Result<watchd_client::Event> {
    change(dir)?;
    next(events).await
}

async fn subtree() -> Result<()> {
    let (env, top) = on_tmpfs("files-subtree", "size=4m").await?;
    std::fs::create_dir_all(top.join("x/y"))?;
    let client = env.client().await?;
    let mut events = watch(&client, 3, &top.join("x"), true, Some(64)).await?;
    std::fs::write(top.join("x/y/f"), b"1")?;
    expect_written(&mut events, 3, "y/f").await?;
    std::fs::create_dir(top.join("x/y/z"))?;
    expect_files(&mut events, 3, &[(file::CREATE, "y/z")]).await?;
    // A directory renamed: what is below it is named by its new path.
    std::fs::rename(top.join("x/y"), top.join("x/w"))?;
    let renamed = next(&mut events).await?;
    ensure!(
        shown(&renamed) == ("rename".into(), "w".into(), Some("y".into())),
        "directory rename: {:?}",
        shown(&renamed)
    );
    std::fs::File::create(top.join("x/w/z/g"))?;
    expect_created(&mut events, 3, "w/z/g").await?;
    // Beside the watched directory, on the same filesystem (same filesystem mark): nothing.
    std::fs::write(top.join("beside"), b"")?;
    expect_silence(&mut events, Duration::from_millis(300)).await?;
    Ok(())
}

async fn rename_across() -> Result<()> {
    let (env, top) = on_tmpfs("files-across", "size=4m").await?;
    let (a, b) = (top.join("a"), top.join("b"));
    std::fs::create_dir(&a)?;
    std::fs::create_dir(&b)?;
    std::fs::write(a.join("f"), b"")?;
    let client = env.client().await?;
    let mut in_a = watch(&client, 1, &a, false, None).await?;
    let mut in_b = watch(&client, 2, &b, false, None).await?;
    let mut both = watch(&client, 3, &top, true, None).await?;
    // A second watch of the same path shares the daemon's record, with its own tag.
    let mut in_a_too = watch(&client, 4, &a, false, None).await?;
    std::fs::rename(a.join("f"), b.join("g"))?;
    expect_files(&mut in_a, 1, &[(file::MOVED_FROM, "f")]).await?;
    expect_files(&mut in_a_too, 4, &[(file::MOVED_FROM, "f")]).await?;
    expect_files(&mut in_b, 2, &[(file::MOVED_TO, "g")]).await?;
    let moved = next(&mut both).await?;
    ensure!(
        shown(&moved) == ("rename".into(), "b/g".into(), Some("a/f".into()))
            && moved.header().tag == 3,
        "the subtree of both sees one rename: {:?}",
        shown(&moved)
    );
    Ok(())
}

/// A client of uid 1001 and the process that holds its connection.
async fn client_1001(env: &Env) -> Result<(Client, watchd_e2e::Process)> {
    let (conn, holder) = connect_as_user(&env.bus.address, TEST_UID).await?;
    Ok((Client::from_connection(conn), holder))
}

/// No record of `stream` (until the pipe has been quiet a while) names `needle`.
async fn no_record_names(stream: &mut EventStream, needle: &str) -> Result<Vec<String>> {
    let mut seen = Vec::new();
    while let Ok(Some(event)) =
        tokio::time::timeout(Duration::from_millis(500), stream.next()).await
    {
        let event = event?;
        let (kind, name, old) = shown(&event);
        ensure!(
            !name.contains(needle) && !old.as_deref().unwrap_or("").contains(needle),
            "a record names {needle:?}: {kind} {name} {old:?}"
        );
        seen.push(format!("{kind} {name}"));
    }
    Ok(seen)
}

async fn chmod_parent() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::start("files-chmod").await?;
    let parent = env.scratch.join("parent");
    let watched = parent.join("w");
    std::fs::create_dir_all(&watched)?;
    std::fs::set_permissions(&parent, PermissionsExt::from_mode(0o755))?;
    let (client, _holder) = client_1001(&env).await?;
    let mut events = watch(&client, 9, &watched, false, None).await?;
    std::fs::File::create(watched.join("seen"))?;
    expect_created(&mut events, 9, "seen").await?;
    std::fs::set_permissions(&parent, PermissionsExt::from_mode(0o700))?;
    std::fs::File::create(watched.join("secret-name"))?;
    let ended = next(&mut events).await?;
    ensure!(
        ended.header().is(RecordType::Meta, meta::REMOVAL)
            && ended.record().get_str(attr::REASON).as_deref() == Some("access revoked")
            && ended.header().tag == 9,
        "after chmod 700 of a parent: the watch ends, no event: {:?}",
        shown(&ended)
    );
    std::fs::File::create(watched.join("secret-later"))?;
    no_record_names(&mut events, "secret").await?;
    Ok(())
}

async fn unreadable_sibling() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::start("files-sibling").await?;
    let tree = env.scratch.join("tree");
    let (open, closed) = (tree.join("open"), tree.join("closed"));
    std::fs::create_dir_all(&open)?;
    std::fs::create_dir_all(&closed)?;
    for dir in [&tree, &open] {
        std::fs::set_permissions(dir, PermissionsExt::from_mode(0o755))?;
    }
    std::fs::set_permissions(&closed, PermissionsExt::from_mode(0o700))?;
    let (client, _holder) = client_1001(&env).await?;
    let mut events = watch(&client, 4, &tree, true, Some(64)).await?;
    let mut roots = watch(&env.client().await?, 4, &tree, true, Some(64)).await?;
    std::fs::File::create(closed.join("hidden-name"))?;
    std::fs::File::create(open.join("visible"))?;
    // Root's watch sees both: proof the hidden file made events.
    expect_files(
        &mut roots,
        4,
        &[
            (file::CREATE, "closed/hidden-name"),
            (file::CLOSE_WRITE, "closed/hidden-name"),
            (file::CREATE, "open/visible"),
            (file::CLOSE_WRITE, "open/visible"),
        ],
    )
    .await?;
    expect_created(&mut events, 4, "open/visible").await?;
    no_record_names(&mut events, "hidden").await?;
    Ok(())
}

async fn removed() -> Result<()> {
    let env = Env::start("files-removed").await?;
    let dir = env.scratch.join("gone");
    std::fs::create_dir(&dir)?;
    let client = env.client().await?;
    let mut events = watch(&client, 2, &dir, false, None).await?;
    std::fs::remove_dir(&dir)?;
    let ended = next(&mut events).await?;
    ensure!(
        ended.header().is(RecordType::Meta, meta::REMOVAL)
            && ended.record().get_str(attr::REASON).as_deref() == Some("deleted")
            && ended.record().get_str(attr::OBJECT).as_deref() == Some(text(&dir)),
        "rmdir of the watched directory: {:?}",
        shown(&ended)
    );
    let status = client.status().await?;
    ensure!(
        status.watches == 0,
        "the watch ended: {} left",
        status.watches
    );
    // A subtree moved away: its path names nothing any more.
    let tree = env.scratch.join("tree");
    std::fs::create_dir_all(tree.join("below"))?;
    let mut events = watch(&client, 3, &tree, true, None).await?;
    std::fs::rename(&tree, env.scratch.join("elsewhere"))?;
    let ended = next(&mut events).await?;
    ensure!(
        ended.header().is(RecordType::Meta, meta::REMOVAL)
            && ended.record().get_str(attr::REASON).as_deref() == Some("moved or deleted"),
        "mv of the watched subtree: {:?}",
        shown(&ended)
    );
    Ok(())
}

async fn one_file() -> Result<()> {
    use std::io::Write;
    let (env, top) = on_tmpfs("files-one", "size=4m").await?;
    let path = top.join("f");
    std::fs::write(&path, b"")?;
    std::fs::write(top.join("sibling"), b"")?;
    let client = env.client().await?;
    let mut events = watch(&client, 6, &path, false, None).await?;
    // A sibling's changes are not the file's.
    std::fs::write(top.join("sibling"), b"x")?;
    let mut f = std::fs::OpenOptions::new().append(true).open(&path)?;
    f.write_all(b"more")?;
    drop(f);
    expect_files(
        &mut events,
        6,
        &[(file::MODIFY, ""), (file::CLOSE_WRITE, "")],
    )
    .await?;
    std::fs::remove_file(&path)?;
    let ended = next(&mut events).await?;
    ensure!(
        ended.header().is(RecordType::Meta, meta::REMOVAL)
            && ended.record().get_str(attr::REASON).as_deref() == Some("deleted"),
        "rm of the watched file: {:?}",
        shown(&ended)
    );
    Ok(())
}

async fn unmounted() -> Result<()> {
    let (env, top) = on_tmpfs("files-umount", "size=4m").await?;
    let client = env.client().await?;
    let mut events = watch(&client, 7, &top, true, None).await?;
    // The watch holds the mount busy, as an open directory would.
    let busy = Command::new("umount").arg(&top).output()?;
    ensure!(!busy.status.success(), "a plain umount should say busy");
    ensure!(
        Command::new("umount")
            .arg("-l")
            .arg(&top)
            .status()?
            .success(),
        "umount -l"
    );
    let ended = crate::next_within(&mut events, Duration::from_secs(5)).await?;
    ensure!(
        ended.header().is(RecordType::Meta, meta::REMOVAL)
            && ended
                .record()
                .get_str(attr::REASON)
                .is_some_and(|r| r.contains("unmounted")),
        "umount -l of the watched filesystem: {:?}",
        shown(&ended)
    );
    Ok(())
}

/// A descriptor as an option's value.
fn fd(file: &std::fs::File) -> zbus::Fd<'_> {
    zbus::Fd::from(file)
}

async fn by_descriptor() -> Result<()> {
    let (env, top) = on_tmpfs("files-fd", "size=4m").await?;
    let dir = top.join("d");
    std::fs::create_dir(&dir)?;
    let plain = top.join("plain");
    std::fs::write(&plain, b"")?;
    let opened = std::fs::File::open(&dir)?;
    let client = env.client().await?;
    let sub = client.subscribe(SubscribeOptions::default()).await?;
    sub.add_watch(8, "files", &WatchOptions::new().option("fd", fd(&opened)))
        .await?;
    // Not a directory, or both ways at once: refused.
    let file = std::fs::File::open(&plain)?;
    for options in [
        WatchOptions::new().option("fd", fd(&file)),
        WatchOptions::new()
            .path(text(&dir))
            .option("fd", fd(&opened)),
    ] {
        let name = crate::error_name(sub.add_watch(9, "files", &options).await)?;
        ensure!(
            name == "org.watchd.Watchd1.Error.InvalidArgument",
            "{options:?}: {name}"
        );
    }
    let mut events = sub.into_events();
    std::fs::File::create(dir.join("x"))?;
    expect_created(&mut events, 8, "x").await?;
    // A directory uid 1001 holds open but can no longer reach by its path: refused.
    let hidden = top.join("hidden");
    std::fs::create_dir_all(hidden.join("inner"))?;
    let held = std::fs::File::open(hidden.join("inner"))?;
    std::fs::set_permissions(&hidden, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    let (other, _holder) = client_1001(&env).await?;
    let theirs = other.subscribe(SubscribeOptions::default()).await?;
    let name = crate::error_name(
        theirs
            .add_watch(1, "files", &WatchOptions::new().option("fd", fd(&held)))
            .await,
    )?;
    ensure!(
        name == "org.watchd.Watchd1.Error.AccessDenied",
        "a descriptor of a directory uid 1001 cannot reach: {name}"
    );
    Ok(())
}

async fn bad_requests() -> Result<()> {
    let env = Env::start("files-bad").await?;
    let client = env.client().await?;
    let sub = client.subscribe(SubscribeOptions::default()).await?;
    let file = env.scratch.join("plain");
    std::fs::write(&file, b"")?;
    let cases: [(WatchOptions, &str); 5] = [
        (WatchOptions::new(), "InvalidArgument"),
        (WatchOptions::new().path("relative/path"), "InvalidArgument"),
        (
            WatchOptions::new().path(text(&env.scratch.join("missing"))),
            "NotFound",
        ),
        (
            WatchOptions::new()
                .path(text(&file))
                .option("subtree", true),
            "InvalidArgument",
        ),
        (
            WatchOptions::new()
                .path(text(&env.scratch.path))
                .option("subtree", "yes"),
            "InvalidArgument",
        ),
    ];
    for (options, error) in cases {
        let name = crate::error_name(sub.add_watch(1, "files", &options).await)?;
        ensure!(
            name == format!("org.watchd.Watchd1.Error.{error}"),
            "{options:?}: {name}"
        );
    }
    let (other, _holder) = client_1001(&env).await?;
    let private = env.scratch.join("private");
    std::fs::create_dir(&private)?;
    std::fs::set_permissions(
        &private,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )?;
    let theirs = other.subscribe(SubscribeOptions::default()).await?;
    let name = crate::error_name(
        theirs
            .add_watch(
                1,
                "files",
                &WatchOptions::new().path(text(&private.join("x"))),
            )
            .await,
    )?;
    ensure!(
        name == "org.watchd.Watchd1.Error.AccessDenied",
        "a path below a directory uid 1001 may not search: {name}"
    );
    ensure!(client.status().await?.watches == 0, "nothing was set");
    Ok(())
}

/// Waits until every thread of `pid` is stopped (state `T` in /proc/PID/task/*/stat).
fn all_stopped(pid: u32) -> Result<()> {
    for _ in 0..500 {
        let mut stopped = true;
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            let stat = std::fs::read_to_string(task?.path().join("stat"))?;
            let state = stat.rsplit_once(") ").map(|(_, rest)| &rest[..1]);
            stopped &= state == Some("T");
        }
        if stopped {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    bail!("the daemon's threads did not all stop")
}

async fn overflow() -> Result<()> {
    use nix::sys::signal::Signal;
    const STORM: usize = 20_000;
    let (env, top) = on_tmpfs("files-overflow", "size=64m,nr_inodes=40000").await?;
    let (quiet, storm) = (top.join("quiet"), top.join("storm"));
    std::fs::create_dir(&quiet)?;
    std::fs::create_dir(&storm)?;
    let client = env.client().await?;
    let mut watcher = watch(&client, 1, &quiet, false, None).await?;
    // The storm's own watch (another subscription): its events fill the kernel's queue.
    let _stormy = watch(&client, 2, &storm, false, None).await?;
    let daemon = env.daemon.pid();
    watchd_e2e::send_signal(daemon, Signal::SIGSTOP)?;
    // SIGSTOP only asks: a thread reading the queue right then could drain part of it.
    all_stopped(daemon)?;
    let made =
        (0..STORM).try_for_each(|i| std::fs::File::create(storm.join(i.to_string())).map(drop));
    watchd_e2e::send_signal(daemon, Signal::SIGCONT)?;
    made?;
    let loss = crate::next_within(&mut watcher, Duration::from_secs(30)).await?;
    let r = loss.record();
    ensure!(
        loss.header().is(RecordType::Meta, meta::LOSS)
            && loss.header().tag == 1
            && r.get(attr::FIRST_LOST_SEQ).is_none()
            && r.get_u64(attr::LOST_TYPES) == Some(RecordType::File.bit()),
        "a LOSS from the source for the quiet watch: {:?}",
        shown(&loss)
    );
    std::fs::File::create(quiet.join("after"))?;
    expect_created(&mut watcher, 1, "after").await?;
    if env.daemon.log().contains("panicked") {
        bail!("the daemon panicked");
    }
    Ok(())
}
