//! Files a caller names are looked at as that caller, and only regular files are opened.
//!
//! The daemon runs as systemd runs it: a session leader without a controlling terminal
//! ([`watchd_e2e::Process::spawn_service`]). Such a process that opens a terminal without
//! `O_NOCTTY` takes it as its controlling terminal, and whoever holds the terminal's master
//! can then stop it (`^C`) or kill it (hang-up). Every test here builds its krb5 `FILE:` or
//! `DIR:` cache by hand (a version 4 cache is a header and a principal: no KDC needed) and
//! watches it as uid 1000 or 1001, in a directory the test lays out.

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use watchd_client::{Client, Event, EventStream, SubscribeOptions, WatchOptions};
use watchd_e2e::polkit::{OTHER_UID, TEST_UID, connect_as_user};
use watchd_e2e::{Env, Process, Trial};
use watchd_proto::{RecordType, attr, krb5, meta};

use crate::{error_name, expect_silence, next_within, trial};

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "caller_files::a_terminal_named_as_a_cache_never_becomes_the_daemons_terminal",
            terminal_as_cache,
        ),
        trial(
            "caller_files::a_cache_in_a_directory_the_caller_cannot_search_is_refused",
            unsearchable_directory,
        ),
        trial(
            "caller_files::a_cache_file_its_owner_may_not_read_is_not_read_until_it_may",
            unreadable_file,
        ),
        trial(
            "caller_files::a_dir_collection_the_caller_cannot_list_shows_only_its_primary",
            unlistable_collection,
        ),
    ]
}

const ACCESS_DENIED: &str = "org.watchd.Watchd1.Error.AccessDenied";
const INVALID_ARGUMENT: &str = "org.watchd.Watchd1.Error.InvalidArgument";
const LIMIT: Duration = Duration::from_secs(5);

/// A FILE cache (format version 4, no header tags) whose default principal is
/// `name@WATCHD.TEST`: what the daemon reads of a cache, and nothing more.
fn cache_bytes(name: &str) -> Vec<u8> {
    let mut out = vec![5, 4, 0, 0];
    out.extend(1u32.to_be_bytes()); // KRB5_NT_PRINCIPAL
    out.extend(1u32.to_be_bytes()); // one component after the realm
    for part in ["WATCHD.TEST", name] {
        out.extend((part.len() as u32).to_be_bytes());
        out.extend(part.as_bytes());
    }
    out
}

/// Writes `path` with `bytes`, owned by `uid` with `mode`.
fn put(path: &Path, bytes: &[u8], uid: u32, mode: u32) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| path.display().to_string())?;
    std::os::unix::fs::chown(path, Some(uid), Some(uid))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// A directory owned by `uid` with `mode`, in a scratch directory others may search.
fn directory(env: &Env, name: &str, uid: u32, mode: u32) -> Result<std::path::PathBuf> {
    std::fs::set_permissions(&env.scratch.path, std::fs::Permissions::from_mode(0o711))?;
    let dir = env.scratch.join(name);
    std::fs::create_dir(&dir)?;
    std::os::unix::fs::chown(&dir, Some(uid), Some(uid))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode))?;
    Ok(dir)
}

/// A client whose bus connection belongs to `uid`, and the process that keeps it so.
async fn client_as(env: &Env, uid: u32) -> Result<(Client, Process)> {
    let (conn, holder) = connect_as_user(&env.bus.address, uid).await?;
    Ok((Client::from_connection(conn), holder))
}

fn krb5_watch(cache: &str) -> WatchOptions {
    WatchOptions::new().option("cache", cache).initial(true)
}

/// The `session` and `tty_nr` fields of /proc/PID/stat.
fn session_and_tty(pid: u32) -> Result<(i64, i64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // After "pid (comm) ": state ppid pgrp session tty_nr …; comm may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .context("malformed stat")?
        .1
        .split_whitespace()
        .collect();
    Ok((fields[3].parse()?, fields[4].parse()?))
}

fn describe(event: &Event) -> String {
    let (h, r) = (event.header(), event.record());
    format!(
        "type {} subtype {} flags {:#x} cache {:?} principal {:?}",
        h.record_type,
        h.subtype,
        h.flags,
        r.get_str(attr::CACHE),
        r.get_str(attr::PRINCIPAL)
    )
}

/// Every record up to the watch's SYNC, described.
async fn until_sync(events: &mut EventStream) -> Result<Vec<String>> {
    let mut seen = Vec::new();
    loop {
        let event = next_within(events, LIMIT).await?;
        if event.header().is(RecordType::Meta, meta::SYNC) {
            return Ok(seen);
        }
        seen.push(describe(&event));
    }
}

async fn terminal_as_cache() -> Result<()> {
    let mut env = Env::start("pty-cache").await?;
    let pid = env.daemon.pid();
    let (session, tty) = session_and_tty(pid)?;
    ensure!(
        session == i64::from(pid) && tty == 0,
        "the daemon must run as a service does, a session leader without a terminal \
         (session {session}, tty {tty})"
    );
    let pty = nix::pty::openpty(None, None).context("openpty")?;
    let terminal = nix::unistd::ttyname(pty.slave.as_fd()).context("ttyname")?;
    // A user's own terminal: what os.openpty() gives uid 1000.
    std::os::unix::fs::chown(&terminal, Some(OTHER_UID), None)?;
    drop(pty.slave);
    let (client, _holder) = client_as(&env, OTHER_UID).await?;
    let sub = client.subscribe(SubscribeOptions::default()).await?;
    let cache = format!("FILE:{}", terminal.display());
    let result = sub.add_watch(1, "krb5", &krb5_watch(&cache)).await;
    ensure!(
        session_and_tty(pid)?.1 == 0,
        "the daemon took {} as its controlling terminal",
        terminal.display()
    );
    // What the terminal's owner would do: ^C, then hang up.
    let mut master = std::fs::File::from(pty.master);
    master.write_all(b"\x03")?;
    drop(master);
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        env.daemon.process.check_running()?;
    }
    client
        .status()
        .await
        .context("the daemon stopped answering after ^C and a hang-up on the terminal")?;
    let text = format!("{result:?}");
    ensure!(
        error_name(result)? == INVALID_ARGUMENT && text.contains("not a regular file"),
        "a terminal as a cache must be refused as not a regular file: {text}"
    );
    Ok(())
}

async fn unsearchable_directory() -> Result<()> {
    let env = Env::start("unsearchable-cache").await?;
    // root's 0700 directory holding uid 1001's cache: uid 1001 cannot even stat the file.
    let dir = directory(&env, "d700", 0, 0o700)?;
    put(&dir.join("krb5cc"), &cache_bytes("carol"), TEST_UID, 0o600)?;
    let (client, _holder) = client_as(&env, TEST_UID).await?;
    let sub = client.subscribe(SubscribeOptions::default()).await?;
    let cache = format!("FILE:{}/krb5cc", dir.display());
    let result = sub.add_watch(1, "krb5", &krb5_watch(&cache)).await;
    let text = format!("{result:?}");
    ensure!(
        error_name(result)? == ACCESS_DENIED,
        "uid {TEST_UID} cannot reach {cache}, so neither may its watch: {text}"
    );
    ensure!(
        !text.contains("carol"),
        "the refusal leaks the principal: {text}"
    );
    Ok(())
}

async fn unreadable_file() -> Result<()> {
    let env = Env::start("unreadable-cache").await?;
    let dir = directory(&env, "ccaches", OTHER_UID, 0o700)?;
    let file = dir.join("krb5cc");
    // The owner's own file, but mode 0000: root could read it, its owner cannot.
    put(&file, &cache_bytes("alice"), OTHER_UID, 0o000)?;
    let (client, _holder) = client_as(&env, OTHER_UID).await?;
    let sub = client.subscribe(SubscribeOptions::default()).await?;
    let cache = format!("FILE:{}", file.display());
    sub.add_watch(1, "krb5", &krb5_watch(&cache)).await?;
    let mut events = sub.into_events();
    let before = until_sync(&mut events).await?;
    ensure!(
        before.is_empty(),
        "a cache its owner may not read was read for it: {before:?}"
    );
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
    let event = next_within(&mut events, LIMIT)
        .await
        .context("once the owner may read its cache, the change must be seen")?;
    ensure!(
        event.header().is(RecordType::Krb5, krb5::CREATED)
            && event.record().get_str(attr::PRINCIPAL).as_deref() == Some("alice@WATCHD.TEST"),
        "expected the cache created, got {}",
        describe(&event)
    );
    Ok(())
}

async fn unlistable_collection() -> Result<()> {
    let env = Env::start("unlistable-collection").await?;
    // root's 0711 directory: uid 1000 may open the names it knows, `ls` is refused.
    let dir = directory(&env, "collection", 0, 0o711)?;
    put(&dir.join("primary"), b"tktPrimary\n", OTHER_UID, 0o600)?;
    put(
        &dir.join("tktPrimary"),
        &cache_bytes("alice"),
        OTHER_UID,
        0o600,
    )?;
    put(
        &dir.join("tktHidden"),
        &cache_bytes("hidden"),
        OTHER_UID,
        0o600,
    )?;
    let (client, _holder) = client_as(&env, OTHER_UID).await?;
    let sub = client.subscribe(SubscribeOptions::default()).await?;
    sub.add_watch(1, "krb5", &krb5_watch(&format!("DIR:{}", dir.display())))
        .await?;
    let mut events = sub.into_events();
    let seen = until_sync(&mut events).await?;
    let primary = format!("DIR::{}/tktPrimary", dir.display());
    ensure!(
        seen.len() == 2
            && seen.iter().all(|s| s.contains(&primary))
            && !seen
                .iter()
                .any(|s| s.contains("tktHidden") || s.contains("hidden@")),
        "only the primary cache (created, then primary) may show, not a name `ls` refuses: \
         {seen:#?}"
    );
    expect_silence(&mut events, Duration::from_millis(300)).await
}
