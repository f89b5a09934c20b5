//! `watchctl`: the command-line client of watchd.
//!
//! - `lib.rs`: the arguments (clap), shared with the man page and completion generator.
//! - `main.rs`: the commands, exit codes, error reporting.
//! - [`format`](mod@format): the output formats as pure functions (human and JSON lines, status).
//! - [`sys`]: the local time zone offset (the one libc call).
//!
//! `watch` ends on its own when stdout is a pipe whose reader has gone (`| head -1`), even
//! while no record comes: see [`stdout_closed`].

mod format;
mod sys;

use std::ffi::OsString;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Parser;
use tokio::io::Interest;
use tokio::signal::unix::{SignalKind, signal};
use watchctl::{
    Cli, Command, Format, FurtherWatch, QuotaThresholds, SpaceThresholds, TimeFormat, WatchArgs,
    WatchKind,
};
use watchd_client::proto::{Header, RecordType, meta};
use watchd_client::{Client, SubscribeOptions, WatchOptions};

/// Exit code: the subscription's pipe ended (watchd stopped or ended the subscription).
const EXIT_PIPE_ENDED: u8 = 3;

/// The `AddWatch` options of a `devices` watch: only those given are sent.
fn device_options(
    subsystem: Option<String>,
    tag: Option<String>,
    properties: Vec<String>,
    sysname: Option<String>,
    common: &WatchArgs,
) -> WatchOptions {
    let mut options = WatchOptions::new()
        .initial(common.initial)
        .interactive(common.interactive);
    if let Some(subsystem) = subsystem {
        options = options.option("subsystem", subsystem);
    }
    if let Some(tag) = tag {
        options = options.option("tag", tag);
    }
    if !properties.is_empty() {
        options = options.option("property", properties);
    }
    if let Some(sysname) = sysname {
        options = options.option("sysname", sysname);
    }
    options
}

/// The `AddWatch` options of a `keys` watch: `key` always, `uid` and `nested` when given.
/// `--uid` says whose `@` keyring is meant, so it makes no sense with a serial.
fn key_options(
    spec: String,
    uid: Option<u32>,
    nested: bool,
    common: &WatchArgs,
) -> anyhow::Result<WatchOptions> {
    if uid.is_some() && !spec.starts_with('@') {
        bail!(
            "--uid names whose @user, @user-session or @persistent to watch; a key serial needs none"
        );
    }
    let mut options = WatchOptions::new()
        .initial(common.initial)
        .interactive(common.interactive)
        .option("key", spec);
    if let Some(uid) = uid {
        options = options.option("uid", uid);
    }
    if nested {
        options = options.option("nested", true);
    }
    Ok(options)
}

/// The environment variable MIT krb5 takes the default credential cache's name from.
const KRB5CCNAME: &str = "KRB5CCNAME";

/// The cache a `krb5` watch names: `--cache`, else `$KRB5CCNAME` (`env`) when it is set and
/// not empty, else none (the daemon then uses krb5.conf's default for the caller's uid).
fn krb5_cache(cache: Option<String>, env: Option<OsString>) -> anyhow::Result<Option<String>> {
    if cache.is_some() {
        return Ok(cache);
    }
    match env.filter(|value| !value.is_empty()) {
        None => Ok(None),
        Some(value) => match value.into_string() {
            Ok(value) => Ok(Some(value)),
            Err(value) => bail!(
                "${KRB5CCNAME} is not valid UTF-8 ({}); name the cache with --cache",
                value.to_string_lossy()
            ),
        },
    }
}

/// The `AddWatch` options of a `krb5` watch: `cache` when there is one.
fn krb5_options(cache: Option<String>, common: &WatchArgs) -> WatchOptions {
    let mut options = WatchOptions::new()
        .initial(common.initial)
        .interactive(common.interactive);
    if let Some(cache) = cache {
        options = options.option("cache", cache);
    }
    options
}

/// `path` made absolute, as the text the daemon takes.
fn absolute_text(path: &std::path::Path) -> anyhow::Result<String> {
    let path = std::path::absolute(path).with_context(|| format!("{}", path.display()))?;
    match path.to_str() {
        Some(text) => Ok(text.to_owned()),
        None => bail!("{}: the path is not valid UTF-8", path.display()),
    }
}

/// How a command that did not fail ended.
enum Outcome {
    Done,
    /// The pipe reported end of file.
    PipeEnded,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("watchctl: can't start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::PipeEnded) => {
            eprintln!("watchctl: the subscription ended (watchd stopped or closed the pipe)");
            ExitCode::from(EXIT_PIPE_ENDED)
        }
        // A further watch (after `--`) is read when the command runs: its usage mistakes
        // are shown and end the program as clap's own are (status 2).
        Err(e) if e.is::<clap::Error>() => e.downcast::<clap::Error>().map_or_else(
            |e| {
                report(&e);
                ExitCode::FAILURE
            },
            |usage| usage.exit(),
        ),
        Err(e) => {
            report(&e);
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, leaving out a cause whose text the line already
/// holds (many errors repeat their source in their own message). A `watchd_client::Error`
/// says all there is to say in its own message, so the line ends with it.
fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
        if cause.is::<watchd_client::Error>() {
            break;
        }
    }
    line
}

fn report(e: &anyhow::Error) {
    eprintln!("watchctl: {}", error_line(e));
    if let Some(e) = e.downcast_ref::<watchd_client::Error>()
        && e.is_daemon_absent()
    {
        eprintln!("watchctl: is watchd running on this bus?");
    }
}

async fn run(cli: Cli) -> anyhow::Result<Outcome> {
    match cli.command {
        Command::Status { json } => {
            let client = Client::connect(cli.bus_address.as_deref()).await?;
            let status = client.status().await?;
            let text = if json {
                format!("{}\n", format::status_json(&status))
            } else {
                format::status_human(&status)
            };
            write_out(&text)
        }
        Command::List { json } => {
            let client = Client::connect(cli.bus_address.as_deref()).await?;
            let status = client.status().await?;
            let subscriptions = client.list_subscriptions().await?;
            let text = if json {
                format!("{}\n", format::list_json(&status, &subscriptions))
            } else {
                format::list_human(&status, &subscriptions)
            };
            write_out(&text)
        }
        Command::Watch { kind } => {
            let (watches, output) = plan(further_watches(kind)?)?;
            watch(cli.bus_address.as_deref(), &watches, &output).await
        }
    }
}

/// Writes all of `text` to stdout; a reader that has gone is no error.
fn write_out(text: &str) -> anyhow::Result<Outcome> {
    match io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e).context("stdout"),
        _ => Ok(Outcome::Done),
    }
}

/// The watches of one `watch` command: `first`, then each one given after a `--` (read from
/// the words clap left in `more`), in order.
fn further_watches(first: WatchKind) -> Result<Vec<WatchKind>, clap::Error> {
    let mut kinds = vec![first];
    loop {
        let more = std::mem::take(&mut kinds.last_mut().expect("one kind").common_mut().more);
        if more.is_empty() {
            return Ok(kinds);
        }
        let words = std::iter::once(watchctl::FURTHER_WATCH.to_owned()).chain(more);
        kinds.push(FurtherWatch::try_parse_from(words)?.kind);
    }
}

/// One watch of a `watch` command, as `AddWatch` gets it.
#[derive(Debug)]
struct Planned {
    tag: u64,
    kind: &'static str,
    options: WatchOptions,
    /// The options of the same watch set again after a reconnection: with the current state
    /// first (what changed meanwhile was not seen), unless the format has no form for it.
    again: WatchOptions,
}

/// What a `watch` command does with its records, and its subscription's depth: options of
/// the command, which any of its kinds may carry.
#[derive(Debug, PartialEq, Eq)]
struct Output {
    format: Format,
    time: TimeFormat,
    count: Option<u64>,
    depth: Option<u32>,
    /// Subscribe again when watchd goes away.
    reconnect: bool,
}

/// The one value of a command-wide option given with several kinds, refused when they differ.
fn one_value<T: PartialEq + std::fmt::Display>(
    option: &str,
    values: impl IntoIterator<Item = Option<T>>,
) -> anyhow::Result<Option<T>> {
    let mut chosen: Option<T> = None;
    for value in values.into_iter().flatten() {
        match &chosen {
            Some(first) if *first != value => bail!(
                "{option} is given as {first} and as {value}: it is the whole command's, give it once"
            ),
            Some(_) => {}
            None => chosen = Some(value),
        }
    }
    Ok(chosen)
}

impl<T: clap::ValueEnum> std::fmt::Display for Show<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.to_possible_value() {
            Some(value) => f.write_str(value.get_name()),
            None => f.write_str("?"),
        }
    }
}

/// A value of a `clap::ValueEnum`, shown as it is written on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Show<T>(T);

/// The watches of a `watch` command, each with its tag (`--watch-tag`, else the lowest
/// number no other watch has), and what the command does with their records.
fn plan(kinds: Vec<WatchKind>) -> anyhow::Result<(Vec<Planned>, Output)> {
    let format = one_value(
        "--format",
        kinds.iter().map(|k| {
            let common = k.common();
            if common.json {
                Some(Show(Format::Json))
            } else {
                common.format.map(Show)
            }
        }),
    )?
    .map_or(Format::Text, |f| f.0);
    let time = one_value("--time", kinds.iter().map(|k| k.common().time.map(Show)))?;
    let output = Output {
        format,
        time: time.map_or(TimeFormat::Clock, |t| t.0),
        count: one_value("--count", kinds.iter().map(|k| k.common().count))?,
        depth: one_value("--depth", kinds.iter().map(|k| k.common().depth))?,
        reconnect: kinds.iter().any(|k| k.common().reconnect),
    };
    if format == Format::Keyctl {
        if let Some(other) = kinds.iter().find(|k| k.name() != "keys") {
            bail!(
                "--format keyctl prints key notifications, as keyctl watch does: watch {} has none",
                other.name()
            );
        }
        if kinds.iter().any(|k| k.common().initial) {
            bail!(
                "--format keyctl has no form for the initial state (keyctl watch prints none): leave out --initial"
            );
        }
        if time.is_some() {
            bail!("--format keyctl prints no time (keyctl watch prints none): leave out --time");
        }
    }
    let mut taken = std::collections::BTreeSet::new();
    for tag in kinds.iter().filter_map(|k| k.common().watch_tag) {
        if !taken.insert(tag) {
            bail!("two watches have --watch-tag {tag}: each watch needs a tag of its own");
        }
    }
    let mut next_free = 1;
    let mut watches = Vec::with_capacity(kinds.len());
    for kind in kinds {
        let tag = match kind.common().watch_tag {
            Some(tag) => tag,
            None => {
                while taken.contains(&next_free) {
                    next_free += 1;
                }
                taken.insert(next_free);
                next_free
            }
        };
        let name = kind.name();
        let mut again = kind.clone();
        again.common_mut().initial |= format != Format::Keyctl;
        watches.push(Planned {
            tag,
            kind: name,
            options: watch_options(kind)?,
            again: watch_options(again)?,
        });
    }
    Ok((watches, output))
}

/// The `AddWatch` options of one kind and its command-line options.
fn watch_options(kind: WatchKind) -> anyhow::Result<WatchOptions> {
    Ok(match kind {
        // Both take an optional path, made absolute.
        WatchKind::Mounts { path, common } | WatchKind::Fserrors { path, common } => {
            let mut options = WatchOptions::new()
                .initial(common.initial)
                .interactive(common.interactive);
            if let Some(path) = path {
                options = options.path(absolute_text(&path)?);
            }
            options
        }
        WatchKind::Devices {
            subsystem,
            tag,
            properties,
            sysname,
            common,
        } => device_options(subsystem, tag, properties, sysname, &common),
        WatchKind::Keys {
            spec,
            uid,
            nested,
            common,
        } => key_options(spec, uid, nested, &common)?,
        WatchKind::Files {
            path,
            subtree,
            common,
        } => {
            let mut options = WatchOptions::new()
                .initial(common.initial)
                .interactive(common.interactive)
                .path(absolute_text(&path)?);
            if subtree {
                options = options.option("subtree", true);
            }
            options
        }
        WatchKind::Krb5 { cache, common } => {
            let cache = krb5_cache(cache, std::env::var_os(KRB5CCNAME))?;
            krb5_options(cache, &common)
        }
        WatchKind::Quota {
            all,
            thresholds,
            common,
        } => {
            let QuotaThresholds {
                below,
                step,
                inodes_below,
                inodes_step,
                min_interval,
            } = *thresholds;
            let mut options = WatchOptions::new()
                .initial(common.initial)
                .interactive(common.interactive);
            if all {
                options = options.option("all", true);
            }
            threshold_options(
                options,
                [
                    ("below", below),
                    ("step", step),
                    ("inodes_below", inodes_below),
                    ("inodes_step", inodes_step),
                ],
                min_interval,
            )
        }
        WatchKind::Space {
            path,
            thresholds,
            common,
        } => {
            let SpaceThresholds {
                below,
                min_free,
                step,
                min_interval,
                inodes_below,
                inodes_step,
            } = *thresholds;
            let mut options = WatchOptions::new()
                .initial(common.initial)
                .interactive(common.interactive);
            if let Some(path) = path {
                options = options.path(absolute_text(&path)?);
            }
            threshold_options(
                options,
                [
                    ("below", below),
                    ("min_free", min_free),
                    ("step", step),
                    ("inodes_below", inodes_below),
                    ("inodes_step", inodes_step),
                ],
                min_interval,
            )
        }
    })
}

/// The threshold options of a `space` or `quota` watch that were given: the lines as the
/// strings the daemon parses (so "10%", "100M" and "none" mean there what they mean in
/// its documentation), the rate limit as `min_interval_s`.
fn threshold_options(
    mut options: WatchOptions,
    lines: impl IntoIterator<Item = (&'static str, Option<String>)>,
    min_interval: Option<u32>,
) -> WatchOptions {
    for (key, value) in lines {
        if let Some(value) = value {
            options = options.option(key, value);
        }
    }
    if let Some(seconds) = min_interval {
        options = options.option("min_interval_s", seconds);
    }
    options
}

/// Subscribes, sets the watches and prints their events until SIGINT/SIGTERM, the end of
/// the pipe, a REMOVAL record for every watch, `--count` records, or a closed stdout
/// (noticed at once, not only at the next write).
async fn watch(
    bus_address: Option<&str>,
    watches: &[Planned],
    output: &Output,
) -> anyhow::Result<Outcome> {
    let mut interrupt = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let work = async {
        let mut progress = Progress::new(watches);
        let mut again = false;
        let mut wait = RECONNECT_FIRST_WAIT;
        loop {
            let outcome = async {
                let client = Client::connect(bus_address).await?;
                let subscription = client
                    .subscribe(SubscribeOptions {
                        depth: output.depth,
                    })
                    .await?;
                // A watch that ended (its REMOVAL came) is not set again.
                for planned in watches.iter().filter(|w| progress.live.contains(&w.tag)) {
                    let options = if again {
                        &planned.again
                    } else {
                        &planned.options
                    };
                    subscription
                        .add_watch(planned.tag, planned.kind, options)
                        .await
                        .with_context(|| format!("watch {} (tag {})", planned.kind, planned.tag))?;
                }
                if again {
                    eprintln!("watchctl: subscribed again; the current state follows");
                    wait = RECONNECT_FIRST_WAIT;
                }
                print_events(subscription.into_events(), watches, output, &mut progress).await
            }
            .await;
            match outcome {
                Ok(Outcome::PipeEnded) if output.reconnect => {
                    eprintln!(
                        "watchctl: the subscription ended; subscribing again when watchd is back"
                    );
                }
                Err(e) if output.reconnect && again && daemon_away(&e) => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(RECONNECT_MAX_WAIT);
                }
                other => return other,
            }
            again = true;
        }
    };
    tokio::select! {
        outcome = work => outcome,
        _ = interrupt.recv() => Ok(Outcome::Done),
        _ = terminate.recv() => Ok(Outcome::Done),
        // Whoever read our output has gone (`watchctl … | head -1`): a normal end, without
        // waiting for a next record to fail writing.
        () = stdout_closed() => Ok(Outcome::Done),
    }
}

/// `--reconnect` tries again at once after the pipe ends, then after these waits, doubled
/// each time up to the last.
const RECONNECT_FIRST_WAIT: std::time::Duration = std::time::Duration::from_millis(100);
const RECONNECT_MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether `e` says watchd (or the bus) is not there now, rather than that the request is
/// wrong: the bus cannot be reached, nobody owns watchd's name, the daemon left without
/// replying (it was stopping) or could not be started yet, or the connection failed.
/// watchd's own refusals (a path gone, access denied…) are final.
fn daemon_away(e: &anyhow::Error) -> bool {
    const AWAY: [&str; 5] = [
        "org.freedesktop.DBus.Error.NoReply",
        "org.freedesktop.DBus.Error.Disconnected",
        "org.freedesktop.DBus.Error.Timeout",
        "org.freedesktop.DBus.Error.TimedOut",
        "org.freedesktop.DBus.Error.Spawn.",
    ];
    e.chain()
        .find_map(|cause| cause.downcast_ref::<watchd_client::Error>())
        .is_some_and(|e| match e.dbus_name() {
            Some(name) => e.is_daemon_absent() || AWAY.iter().any(|a| name.starts_with(a)),
            None => true,
        })
}

/// Resolves once stdout is a pipe (or FIFO) with no reader left; see [`reader_gone`].
async fn stdout_closed() {
    reader_gone(io::stdout().as_fd()).await
}

/// Resolves once `fd`, the write end of a pipe or FIFO, has no reader left: the kernel
/// reports `POLLERR` on a pipe's write end when its last read end is closed, and epoll
/// (tokio's reactor) passes that on as error readiness, so this wakes up while `watch`
/// waits for the next record. Never resolves when `fd` is anything else (a terminal, a
/// file, a socket: their ends are noticed at the next write) or cannot be watched.
///
/// A duplicate of `fd` is registered with the reactor; nothing is read or written through
/// it, and the file's flags (blocking mode) are left alone, since other processes may share
/// the pipe.
async fn reader_gone(fd: BorrowedFd<'_>) {
    if let Ok(fd) = fd.try_clone_to_owned()
        && is_fifo(&fd)
        && let Ok(pipe) = tokio::net::unix::pipe::Sender::from_owned_fd_unchecked(fd)
        && pipe
            .ready(Interest::ERROR)
            .await
            .is_ok_and(|ready| ready.is_error())
    {
        return;
    }
    std::future::pending().await
}

/// Whether `fd` is a pipe or FIFO (fstat(2) through a duplicate).
fn is_fifo(fd: &OwnedFd) -> bool {
    fd.try_clone()
        .map(std::fs::File::from)
        .and_then(|file| file.metadata())
        .is_ok_and(|meta| meta.file_type().is_fifo())
}

/// Whether a record counts toward `--count`: every record of a watch (snapshot records
/// too), none of the pipe's own META records (SYNC, LOSS, REMOVAL).
fn counts(header: &Header) -> bool {
    header.record_type != RecordType::Meta as u32
}

/// One record as `output` prints it (no newline), or none when the format has no line for
/// it (`keyctl` and what is not a key notification). `kind` is the kind of the watch the
/// record's tag names; text lines show the watch when the command has `several`.
fn record_line(
    record: &watchd_client::proto::Record<'_>,
    kind: Option<&str>,
    several: bool,
    output: &Output,
) -> Option<String> {
    let time_ns = record.header.time_ns;
    let time = || {
        let secs = i64::try_from(time_ns / 1_000_000_000).unwrap_or(i64::MAX);
        format::time_text(time_ns, sys::utc_offset(secs), output.time)
    };
    match output.format {
        Format::Json => {
            let time = (output.time == TimeFormat::Iso).then(time);
            Some(format::json_line_with(record, kind, time.as_deref()))
        }
        Format::Text => {
            let watch = kind
                .filter(|_| several)
                .map(|kind| (record.header.tag, kind));
            Some(format::human_line_at(record, &time(), watch))
        }
        Format::Keyctl => format::keyctl_line(record),
    }
}

/// Writes `line` and a newline to stdout; `false` when the reader has gone
/// (`watchctl … | head -1`), a normal end.
fn print_line(mut line: String) -> anyhow::Result<bool> {
    line.push('\n');
    let mut out = io::stdout().lock();
    match out.write_all(line.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e).context("stdout"),
    }
}

/// What a `watch` command has seen so far, kept across reconnections: the watches not
/// ended yet, and the records counted for `--count`.
struct Progress {
    live: std::collections::BTreeSet<u64>,
    counted: u64,
}

impl Progress {
    fn new(watches: &[Planned]) -> Self {
        Progress {
            live: watches.iter().map(|w| w.tag).collect(),
            counted: 0,
        }
    }
}

async fn print_events(
    mut events: watchd_client::EventStream,
    watches: &[Planned],
    output: &Output,
    progress: &mut Progress,
) -> anyhow::Result<Outcome> {
    let Progress { live, counted } = progress;
    let several = watches.len() > 1;
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(event) => event,
            Err(watchd_client::Error::Decode(e)) => {
                eprintln!("watchctl: skipped a malformed record: {e}");
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let h = event.header();
        let kind = watches.iter().find(|w| w.tag == h.tag).map(|w| w.kind);
        if let Some(line) = record_line(&event.record(), kind, several, output)
            && !print_line(line)?
        {
            return Ok(Outcome::Done);
        }
        if h.is(RecordType::Meta, meta::REMOVAL) && live.remove(&h.tag) && live.is_empty() {
            // Every watch has ended; nothing more will come.
            return Ok(Outcome::Done);
        }
        if counts(h) {
            *counted += 1;
            if output.count == Some(*counted) {
                return Ok(Outcome::Done);
            }
        }
    }
    if output.format == Format::Keyctl && !output.reconnect {
        // keyctl watch says so when its queue ends.
        print_line(format::KEYCTL_END.to_owned())?;
    }
    Ok(Outcome::PipeEnded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use std::path::PathBuf;
    use std::time::Duration;
    use watchd_client::zbus;

    #[test]
    fn error_line_leaves_out_repeated_causes() {
        let io = io::Error::new(io::ErrorKind::NotFound, "no such file");
        let e = anyhow::Error::new(watchd_client::Error::Connect {
            address: "unix:path=/x".into(),
            source: zbus::Error::InputOutput(io.into()),
        });
        assert_eq!(
            error_line(&e),
            "can't connect to the bus at unix:path=/x: I/O error: no such file"
        );
        let e = anyhow::Error::new(watchd_client::Error::Daemon {
            name: "org.watchd.Watchd1.Error.NotFound".into(),
            message: "/nope: no such file or directory".into(),
        })
        .context("adding the watch");
        assert_eq!(
            error_line(&e),
            "adding the watch: /nope: no such file or directory (org.watchd.Watchd1.Error.NotFound)"
        );
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn watch_mounts_arguments() {
        let cli = Cli::try_parse_from([
            "watchctl",
            "watch",
            "mounts",
            "--path",
            "/mnt",
            "--initial",
            "--json",
            "--depth",
            "64",
            "--watch-tag",
            "7",
            "--bus-address",
            "unix:path=/tmp/bus",
        ])
        .unwrap();
        assert_eq!(cli.bus_address.as_deref(), Some("unix:path=/tmp/bus"));
        let Command::Watch {
            kind: WatchKind::Mounts { path, common },
        } = cli.command
        else {
            panic!("not watch mounts")
        };
        assert_eq!(path, Some(PathBuf::from("/mnt")));
        assert!(common.initial && common.json);
        assert_eq!((common.depth, common.watch_tag), (Some(64), Some(7)));

        let cli = Cli::try_parse_from(["watchctl", "watch", "mounts"]).unwrap();
        let Command::Watch {
            kind: WatchKind::Mounts { path, common },
        } = cli.command
        else {
            panic!("not watch mounts")
        };
        assert_eq!((path, common.initial, common.json), (None, false, false));
        assert_eq!((common.depth, common.watch_tag), (None, None));
    }

    /// `watch KIND ARGS`: the options `AddWatch` gets, and the options every kind has.
    fn parse_kind(kind: &str, args: &[&str]) -> Result<(WatchOptions, WatchArgs), clap::Error> {
        let parse = || match Cli::try_parse_from(["watchctl", "watch", kind].iter().chain(args)) {
            Ok(Cli {
                command: Command::Watch { kind },
                ..
            }) => Ok(kind),
            Ok(_) => panic!("not watch"),
            Err(e) => Err(e),
        };
        // Read twice: building the options takes the kind whole.
        let common = std::mem::take(parse()?.common_mut());
        Ok((watch_options(parse()?).unwrap(), common))
    }

    fn parse_devices(args: &[&str]) -> Result<(WatchOptions, WatchArgs), clap::Error> {
        parse_kind("devices", args)
    }

    /// The kind's own options as sent: (key, D-Bus signature, value as text).
    fn sent(options: &WatchOptions) -> Vec<(String, String, String)> {
        options
            .extra()
            .map(|(key, value)| {
                let value = zbus::Variant::try_from(value).unwrap();
                let signature = value.value_signature().to_string();
                let text = match signature.as_str() {
                    "s" => String::try_from(value).unwrap(),
                    "as" => Vec::<String>::try_from(value).unwrap().join(" | "),
                    "u" => u32::try_from(value).unwrap().to_string(),
                    "b" => bool::try_from(value).unwrap().to_string(),
                    other => panic!("{key}: unexpected signature {other}"),
                };
                (key.to_owned(), signature, text)
            })
            .collect()
    }

    fn triple(key: &str, signature: &str, value: &str) -> (String, String, String) {
        (key.into(), signature.into(), value.into())
    }

    #[test]
    fn watch_devices_arguments() {
        let (options, common) = parse_devices(&[
            "--subsystem",
            "block/partition",
            "--tag",
            "systemd",
            "--property",
            "DM_*=*",
            "--sysname",
            "dm-*",
            "--property",
            "ID_FS_TYPE=ext4",
            "--property",
            "ID_FS_LABEL=",
            "--initial",
            "--json",
            "--depth",
            "128",
            "--watch-tag",
            "9",
        ])
        .unwrap();
        assert!(options.initial && !options.interactive);
        assert!(common.initial && common.json);
        assert_eq!((common.depth, common.watch_tag), (Some(128), Some(9)));
        assert_eq!(
            sent(&options),
            [
                // In key order (the options are a map); `property` keeps its order.
                triple("property", "as", "DM_*=* | ID_FS_TYPE=ext4 | ID_FS_LABEL="),
                triple("subsystem", "s", "block/partition"),
                triple("sysname", "s", "dm-*"),
                triple("tag", "s", "systemd"),
            ]
        );

        // Nothing given, nothing sent.
        let (options, common) = parse_devices(&[]).unwrap();
        assert!(sent(&options).is_empty());
        assert!(!options.initial && !common.json);
        assert_eq!((common.depth, common.watch_tag), (None, None));

        let (options, _) = parse_devices(&["--subsystem", "net", "--interactive"]).unwrap();
        assert!(options.interactive);
        assert_eq!(sent(&options), [triple("subsystem", "s", "net")]);
        let (options, _) = parse_devices(&["--property", "A=1"]).unwrap();
        assert_eq!(sent(&options), [triple("property", "as", "A=1")]);
    }

    /// A command line clap refuses as malformed: a bad value, an unknown argument or kind.
    fn assert_usage_error(err: &clap::Error, args: &[&str]) {
        assert!(
            matches!(
                err.kind(),
                clap::error::ErrorKind::ValueValidation
                    | clap::error::ErrorKind::InvalidValue
                    | clap::error::ErrorKind::UnknownArgument
                    | clap::error::ErrorKind::InvalidSubcommand
            ),
            "{args:?}: {err}"
        );
    }

    #[test]
    fn watch_devices_refuses_malformed_filters() {
        for args in [
            &["--property", "NOEQUALS"][..],
            &["--property", "=x"],
            &["--subsystem", ""],
            &["--subsystem", "/disk"],
            &["--subsystem", "block/"],
            &["--subsystem", "a/b/c"],
            &["--tag", ""],
            &["--sysname", ""],
            &["--tag"],
            &["--watch-tag", "0"],
            &["--watch-tag", "x"],
            &["--path", "/mnt"],
        ] {
            let err = parse_devices(args).map(|_| ()).unwrap_err();
            assert_usage_error(&err, args);
        }
    }

    /// `--tag` is the udev tag of `watch devices`; the watch's own number is `--watch-tag`
    /// everywhere, and `watch mounts` has no `--tag`.
    #[test]
    fn watch_tag_is_its_own_option() {
        let err = Cli::try_parse_from(["watchctl", "watch", "mounts", "--tag", "7"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::UnknownArgument);
        let (options, common) = parse_devices(&["--tag", "7"]).unwrap();
        assert_eq!(common.watch_tag, None);
        assert_eq!(sent(&options), [triple("tag", "s", "7")]);
        let err =
            Cli::try_parse_from(["watchctl", "watch", "mounts", "--watch-tag", "0"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
    }

    /// `watch quota`'s threshold options reach `AddWatch` under the daemon's names, as the
    /// strings it parses; none of them given, none sent (the daemon's defaults hold).
    #[test]
    fn watch_quota_arguments() {
        let (options, common) = parse_kind(
            "quota",
            &[
                "--all",
                "--below",
                "100M",
                "--step",
                "2%",
                "--inodes-below",
                "none",
                "--inodes-step",
                "50",
                "--min-interval",
                "0",
                "--initial",
            ],
        )
        .unwrap();
        assert!(common.initial);
        assert_eq!(
            sent(&options),
            [
                triple("all", "b", "true"),
                triple("below", "s", "100M"),
                triple("inodes_below", "s", "none"),
                triple("inodes_step", "s", "50"),
                triple("min_interval_s", "u", "0"),
                triple("step", "s", "2%"),
            ]
        );
        let (options, _) = parse_kind("quota", &[]).unwrap();
        assert_eq!(sent(&options), []);
        let (options, _) = parse_kind("quota", &["--below", "none"]).unwrap();
        assert_eq!(sent(&options), [triple("below", "s", "none")]);
        // Unlike a space watch's, the inode step needs no --inodes-below: inodes are
        // watched by default.
        let (options, _) = parse_kind("quota", &["--inodes-step", "5%"]).unwrap();
        assert_eq!(sent(&options), [triple("inodes_step", "s", "5%")]);
        let err = parse_kind("space", &["--inodes-step", "5%"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);

        for bad in [
            &["--below", ""][..],
            &["--min-interval", "-1"],
            &["--min-interval", "10m"],
            &["--min-free", "1G"],
        ] {
            assert!(parse_kind("quota", bad).is_err(), "{bad:?}");
        }
    }

    /// `watch space`'s options, which share the mapping with `watch quota`'s.
    #[test]
    fn watch_space_arguments() {
        let (options, _) = parse_kind(
            "space",
            &[
                "/mnt",
                "--below",
                "10%",
                "--min-free",
                "none",
                "--step",
                "1G",
                "--inodes-below",
                "5%",
                "--inodes-step",
                "100",
                "--min-interval",
                "60",
            ],
        )
        .unwrap();
        assert_eq!(
            sent(&options),
            [
                triple("below", "s", "10%"),
                triple("inodes_below", "s", "5%"),
                triple("inodes_step", "s", "100"),
                triple("min_free", "s", "none"),
                triple("min_interval_s", "u", "60"),
                triple("path", "s", "/mnt"),
                triple("step", "s", "1G"),
            ]
        );
    }

    fn parse_keys(args: &[&str]) -> Result<(WatchOptions, WatchArgs), clap::Error> {
        parse_kind("keys", args)
    }

    #[test]
    fn watch_keys_arguments() {
        // The default: the caller's user keyring, nothing else.
        let (options, common) = parse_keys(&[]).unwrap();
        assert_eq!(sent(&options), [triple("key", "s", "@user")]);
        assert!(!options.initial && !options.interactive && !common.json);
        assert_eq!((common.depth, common.watch_tag), (None, None));

        for spec in ["@user", "@user-session", "@persistent"] {
            let (options, _) = parse_keys(&[spec]).unwrap();
            assert_eq!(sent(&options), [triple("key", "s", spec)]);
        }

        let (options, common) = parse_keys(&[
            "@persistent",
            "--uid",
            "1000",
            "--nested",
            "--initial",
            "--json",
            "--interactive",
            "--depth",
            "64",
            "--watch-tag",
            "5",
        ])
        .unwrap();
        assert!(options.initial && options.interactive && common.json);
        assert_eq!((common.depth, common.watch_tag), (Some(64), Some(5)));
        assert_eq!(
            sent(&options),
            [
                triple("key", "s", "@persistent"),
                triple("nested", "b", "true"),
                triple("uid", "u", "1000"),
            ]
        );

        // A serial goes as its decimal text, in canonical form; options may come first.
        let (options, _) = parse_keys(&["--nested", "0123456789"]).unwrap();
        assert_eq!(
            sent(&options),
            [
                triple("key", "s", "123456789"),
                triple("nested", "b", "true")
            ]
        );
        let (options, _) = parse_keys(&["--uid", "0", "@user-session"]).unwrap();
        assert_eq!(
            sent(&options),
            [triple("key", "s", "@user-session"), triple("uid", "u", "0")]
        );
        let (options, _) = parse_keys(&["2147483647"]).unwrap();
        assert_eq!(sent(&options), [triple("key", "s", "2147483647")]);
    }

    #[test]
    fn watch_keys_refuses_what_is_not_a_key() {
        for (spec, says) in [
            ("@u", "keyctl's @u is @user here"),
            ("@us", "keyctl's @us is @user-session here"),
            (
                "@s",
                "expected @user, @user-session, @persistent or a key serial number",
            ),
            ("@User", "expected @user"),
            ("user", "expected @user"),
            ("", "expected @user"),
            ("0", "key serial numbers start at 1"),
            ("2147483648", "a key serial number is at most 2147483647"),
            ("99999999999999999999", "at most 2147483647"),
            ("+5", "expected @user"),
            ("0x1e240", "expected @user"),
            ("12 34", "expected @user"),
        ] {
            let err = parse_keys(&[spec]).map(|_| ()).unwrap_err();
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{spec:?}"
            );
            assert!(err.to_string().contains(says), "{spec:?}: {err}");
        }
        // The kernel's negative special ids (-4 is KEY_SPEC_USER_KEYRING) are refused too,
        // with a word on why.
        let err = parse_keys(&["-4"]).map(|_| ()).unwrap_err();
        assert!(err.to_string().contains("negative special ids"), "{err}");

        for args in [
            &["--uid", "-1"][..],
            &["--uid", "alice"],
            &["--uid"],
            &["--nested", "yes"],
            &["--cache", "FILE:/tmp/x"],
            &["@user", "@persistent"],
        ] {
            let err = parse_keys(args).map(|_| ()).unwrap_err();
            assert_usage_error(&err, args);
        }
    }

    /// `--uid` says whose `@` keyring; with a serial it is refused before the daemon is
    /// asked (the daemon would refuse it too).
    #[test]
    fn watch_keys_refuses_uid_with_a_serial() {
        let cli =
            Cli::try_parse_from(["watchctl", "watch", "keys", "42", "--uid", "1000"]).unwrap();
        let Command::Watch {
            kind:
                WatchKind::Keys {
                    spec,
                    uid,
                    nested,
                    common,
                },
        } = cli.command
        else {
            panic!("not watch keys")
        };
        let err = key_options(spec, uid, nested, &common).unwrap_err();
        assert_eq!(
            error_line(&err),
            "--uid names whose @user, @user-session or @persistent to watch; a key serial needs none"
        );
    }

    /// `watch krb5` with `args`, as if `$KRB5CCNAME` were `env`.
    fn parse_krb5(
        args: &[&str],
        env: Option<&str>,
    ) -> Result<(WatchOptions, WatchArgs), clap::Error> {
        let cli = Cli::try_parse_from(["watchctl", "watch", "krb5"].iter().chain(args))?;
        let Command::Watch {
            kind: WatchKind::Krb5 { cache, common },
        } = cli.command
        else {
            panic!("not watch krb5")
        };
        let cache = krb5_cache(cache, env.map(OsString::from)).unwrap();
        Ok((krb5_options(cache, &common), common))
    }

    #[test]
    fn watch_krb5_arguments() {
        // No --cache, no $KRB5CCNAME: no cache option, the daemon picks krb5.conf's default.
        let (options, common) = parse_krb5(&[], None).unwrap();
        assert!(sent(&options).is_empty());
        assert!(!options.initial && !common.json);
        assert_eq!((common.depth, common.watch_tag), (None, None));
        // Set but empty is unset, for MIT krb5 too.
        let (options, _) = parse_krb5(&[], Some("")).unwrap();
        assert!(sent(&options).is_empty());

        // $KRB5CCNAME is what MIT krb5 would use for this process, so it is what is watched.
        let (options, _) = parse_krb5(&[], Some("KEYRING:persistent:1000")).unwrap();
        assert_eq!(
            sent(&options),
            [triple("cache", "s", "KEYRING:persistent:1000")]
        );
        // --cache wins over it.
        let (options, common) = parse_krb5(
            &[
                "--cache",
                "FILE:/tmp/krb5cc_1000",
                "--initial",
                "--json",
                "--watch-tag",
                "3",
            ],
            Some("KEYRING:persistent:1000"),
        )
        .unwrap();
        assert_eq!(
            sent(&options),
            [triple("cache", "s", "FILE:/tmp/krb5cc_1000")]
        );
        assert!(options.initial && common.json);
        assert_eq!(common.watch_tag, Some(3));

        for args in [
            &["--cache", ""][..],
            &["--cache"],
            &["--nested"],
            &["@user"],
        ] {
            let err = parse_krb5(args, None).map(|_| ()).unwrap_err();
            assert_usage_error(&err, args);
        }
    }

    #[test]
    fn krb5_cache_from_the_environment_must_be_text() {
        use std::os::unix::ffi::OsStringExt;
        let bad = OsString::from_vec(b"FILE:/tmp/krb5cc_\xff".to_vec());
        let err = krb5_cache(None, Some(bad.clone())).unwrap_err();
        assert_eq!(
            error_line(&err),
            "$KRB5CCNAME is not valid UTF-8 (FILE:/tmp/krb5cc_\u{fffd}); name the cache with --cache"
        );
        // --cache makes the environment irrelevant.
        assert_eq!(
            krb5_cache(Some("FILE:/x".into()), Some(bad)).unwrap(),
            Some("FILE:/x".to_owned())
        );
    }

    #[test]
    fn watch_count_argument() {
        for kind in [
            &["mounts"][..],
            &["devices"],
            &["keys"],
            &["krb5"],
            &["files", "/tmp"],
            &["fserrors"],
            &["fserrors", "/tmp"],
        ] {
            let args = ["watchctl", "watch"].iter().chain(kind);
            let cli = Cli::try_parse_from(args.clone().chain(&["--count", "2"])).unwrap();
            let Command::Watch { kind: watch } = cli.command else {
                panic!("not watch")
            };
            let common = watch.common();
            assert_eq!(common.count, Some(2), "{kind:?}");
            for bad in ["0", "-1", "x", ""] {
                let err = Cli::try_parse_from(args.clone().chain(&["--count", bad])).unwrap_err();
                assert_usage_error(&err, &[bad]);
            }
        }
        let cli = Cli::try_parse_from(["watchctl", "watch", "mounts"]).unwrap();
        let Command::Watch {
            kind: WatchKind::Mounts { common, .. },
        } = cli.command
        else {
            panic!("not watch mounts")
        };
        assert_eq!(common.count, None);
    }

    /// Events and snapshot records count toward `--count`; the pipe's META records do not.
    #[test]
    fn what_count_counts() {
        let header = |record_type: RecordType, subtype: u8, flags: u8| Header {
            len: 32,
            version: watchd_client::proto::VERSION,
            flags,
            record_type: record_type as u32,
            subtype,
            tag: 1,
            seq: 1,
            time_ns: 0,
        };
        use watchd_client::proto::{FLAG_SNAPSHOT, mount};
        assert!(counts(&header(RecordType::Mount, mount::ATTACH, 0)));
        assert!(counts(&header(
            RecordType::Mount,
            mount::ATTACH,
            FLAG_SNAPSHOT
        )));
        assert!(counts(&header(RecordType::Device, 0, 0)));
        assert!(counts(&header(RecordType::Key, 0, FLAG_SNAPSHOT)));
        for subtype in [meta::SYNC, meta::LOSS, meta::REMOVAL] {
            assert!(!counts(&header(RecordType::Meta, subtype, 0)), "{subtype}");
        }
        // A type this watchctl does not know is a record of the watch: it counts.
        let mut unknown = header(RecordType::Mount, 0, 0);
        unknown.record_type = 99;
        assert!(counts(&unknown));
    }

    /// A pipe's write end: waited on while its reader is there, done at once when it goes,
    /// with nothing written.
    #[tokio::test]
    async fn reader_gone_notices_a_closed_pipe_without_a_write() {
        let (reader, writer) = io::pipe().unwrap();
        let mut gone = std::pin::pin!(reader_gone(writer.as_fd()));
        let early = tokio::time::timeout(Duration::from_millis(100), gone.as_mut()).await;
        assert!(early.is_err(), "resolved while the reader was there");
        drop(reader);
        tokio::time::timeout(Duration::from_secs(5), gone)
            .await
            .expect("the reader's end went unnoticed");

        // Already gone before the wait starts.
        let (reader, writer) = io::pipe().unwrap();
        drop(reader);
        tokio::time::timeout(Duration::from_secs(5), reader_gone(writer.as_fd()))
            .await
            .expect("the reader's end went unnoticed");
    }

    /// Anything but a pipe or FIFO is never waited on (its end shows at the next write).
    #[tokio::test]
    async fn reader_gone_ignores_what_is_not_a_pipe() {
        let file = std::fs::File::open("/dev/null").unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(100), reader_gone(file.as_fd()));
        assert!(waited.await.is_err());
        // Nor the read end of a pipe, whose writer is gone.
        let (reader, writer) = io::pipe().unwrap();
        drop(writer);
        let waited = tokio::time::timeout(Duration::from_millis(100), reader_gone(reader.as_fd()));
        assert!(waited.await.is_err());
    }

    /// `watchctl watch ARGS`, its watches planned.
    fn plan_of(args: &[&str]) -> anyhow::Result<(Vec<Planned>, Output)> {
        let cli = Cli::try_parse_from(["watchctl", "watch"].iter().chain(args))?;
        let Command::Watch { kind } = cli.command else {
            panic!("not watch")
        };
        plan(further_watches(kind)?)
    }

    /// A planned watch: tag, kind, options as sent.
    type Summary<'a> = (u64, &'a str, Vec<(String, String, String)>);

    fn summary(watches: &[Planned]) -> Vec<Summary<'_>> {
        watches
            .iter()
            .map(|w| (w.tag, w.kind, sent(&w.options)))
            .collect()
    }

    #[test]
    fn several_kinds_each_with_its_own_options() {
        let (watches, output) = plan_of(&[
            "mounts",
            "--path",
            "/mnt",
            "--json",
            "--",
            "devices",
            "--subsystem",
            "block",
            "--initial",
            "--",
            "keys",
            "@persistent",
            "--nested",
            "--depth",
            "64",
        ])
        .unwrap();
        assert_eq!(
            summary(&watches),
            [
                (1, "mounts", vec![triple("path", "s", "/mnt")]),
                (2, "devices", vec![triple("subsystem", "s", "block")]),
                (
                    3,
                    "keys",
                    vec![
                        triple("key", "s", "@persistent"),
                        triple("nested", "b", "true")
                    ]
                ),
            ]
        );
        assert_eq!(
            watches
                .iter()
                .map(|w| w.options.initial)
                .collect::<Vec<_>>(),
            [false, true, false],
            "--initial is the watch's own"
        );
        assert_eq!(
            output,
            Output {
                format: Format::Json,
                time: TimeFormat::Clock,
                count: None,
                depth: Some(64),
                reconnect: false,
            },
            "--json and --depth are the command's, given with any kind"
        );
        assert!(
            watches.iter().all(|w| w.again.initial),
            "set again after a reconnection, every watch sends its state first"
        );
        let (_, output) = plan_of(&["mounts", "--", "devices", "--reconnect"]).unwrap();
        assert!(
            output.reconnect,
            "--reconnect is the command's, given with any kind"
        );

        // One kind twice is two watches; the text form and the clock are the defaults.
        let (watches, output) = plan_of(&[
            "mounts", "--path", "/a", "--", "mounts", "--path", "/b", "--count", "3",
        ])
        .unwrap();
        assert_eq!(
            summary(&watches),
            [
                (1, "mounts", vec![triple("path", "s", "/a")]),
                (2, "mounts", vec![triple("path", "s", "/b")]),
            ]
        );
        assert_eq!(
            (output.format, output.time),
            (Format::Text, TimeFormat::Clock)
        );
        assert_eq!((output.count, output.depth), (Some(3), None));
    }

    #[test]
    fn watch_tags_given_are_kept_and_the_others_take_the_lowest_free() {
        let (watches, _) = plan_of(&[
            "mounts",
            "--watch-tag",
            "2",
            "--",
            "devices",
            "--",
            "keys",
            "--watch-tag",
            "1",
            "--",
            "krb5",
        ])
        .unwrap();
        let tags: Vec<_> = watches.iter().map(|w| (w.tag, w.kind)).collect();
        assert_eq!(
            tags,
            [(2, "mounts"), (3, "devices"), (1, "keys"), (4, "krb5")]
        );

        let err = plan_of(&[
            "mounts",
            "--watch-tag",
            "5",
            "--",
            "devices",
            "--watch-tag",
            "5",
        ])
        .unwrap_err();
        assert_eq!(
            error_line(&err),
            "two watches have --watch-tag 5: each watch needs a tag of its own"
        );
    }

    #[test]
    fn command_wide_options_must_agree() {
        for (args, says) in [
            (
                &["mounts", "--depth", "16", "--", "devices", "--depth", "32"][..],
                "--depth is given as 16 and as 32: it is the whole command's, give it once",
            ),
            (
                &["mounts", "--json", "--", "devices", "--format", "text"],
                "--format is given as json and as text",
            ),
            (
                &[
                    "mounts", "--time", "iso", "--", "devices", "--time", "clock",
                ],
                "--time is given as iso and as clock",
            ),
            (
                &["mounts", "--count", "1", "--", "devices", "--count", "2"],
                "--count is given as 1 and as 2",
            ),
        ] {
            let err = plan_of(args).unwrap_err();
            assert!(error_line(&err).starts_with(says), "{args:?}: {err}");
        }
        // The same value twice is no contradiction.
        let (_, output) = plan_of(&[
            "mounts", "--depth", "8", "--json", "--", "devices", "--depth", "8", "--json",
        ])
        .unwrap();
        assert_eq!((output.format, output.depth), (Format::Json, Some(8)));
        // --json and --format in one kind are clap's to refuse.
        let err = plan_of(&["mounts", "--json", "--format", "json"]).unwrap_err();
        let err = err.downcast_ref::<clap::Error>().expect("a usage error");
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    /// A further watch is read as `watch` reads its kinds: its options are its kind's, and
    /// what is not a kind, or not an option of that kind, is a usage error.
    #[test]
    fn further_watches_are_read_as_kinds() {
        for args in [
            &["mounts", "--", "nope"][..],
            &["mounts", "--", "--path", "/x"],
            &["devices", "--tag", "systemd", "--", "mounts", "--tag", "x"],
            &["mounts", "--", "devices", "--path", "/mnt"],
            &["keys", "--", "-4"],
            &["mounts", "--", "devices", "--subsystem", ""],
        ] {
            let err = plan_of(args).unwrap_err();
            let usage = err.downcast_ref::<clap::Error>().expect("a usage error");
            assert_usage_error(usage, args);
        }
        // A trailing `--` with nothing after it adds nothing.
        let (watches, _) = plan_of(&["mounts", "--"]).unwrap();
        assert_eq!(watches.len(), 1);
    }

    #[test]
    fn format_and_time_arguments() {
        let (_, output) = plan_of(&["keys", "--format", "keyctl"]).unwrap();
        assert_eq!(output.format, Format::Keyctl);
        let (_, output) = plan_of(&["mounts", "--time", "iso"]).unwrap();
        assert_eq!(
            (output.format, output.time),
            (Format::Text, TimeFormat::Iso)
        );
        let (_, output) = plan_of(&["mounts", "--format", "json", "--time", "iso"]).unwrap();
        assert_eq!(
            (output.format, output.time),
            (Format::Json, TimeFormat::Iso)
        );
        for args in [
            &["mounts", "--format", "xml"][..],
            &["mounts", "--time", "utc"],
        ] {
            let err = plan_of(args).unwrap_err();
            let usage = err.downcast_ref::<clap::Error>().expect("a usage error");
            assert_eq!(
                usage.kind(),
                clap::error::ErrorKind::InvalidValue,
                "{args:?}"
            );
        }
    }

    /// `--format keyctl` is keyctl watch's output: key watches only, no initial state, no
    /// time.
    #[test]
    fn format_keyctl_is_for_key_watches_alone() {
        let (watches, _) =
            plan_of(&["keys", "--format", "keyctl", "--", "keys", "@persistent"]).unwrap();
        assert_eq!(watches.len(), 2);
        for (args, says) in [
            (
                &["keys", "--format", "keyctl", "--", "mounts"][..],
                "--format keyctl prints key notifications, as keyctl watch does: watch mounts has none",
            ),
            (
                &["krb5", "--format", "keyctl"],
                "--format keyctl prints key notifications, as keyctl watch does: watch krb5 has none",
            ),
            (
                &["keys", "--format", "keyctl", "--initial"],
                "--format keyctl has no form for the initial state (keyctl watch prints none): leave out --initial",
            ),
            (
                &["keys", "--format", "keyctl", "--time", "iso"],
                "--format keyctl prints no time (keyctl watch prints none): leave out --time",
            ),
        ] {
            let err = plan_of(args).unwrap_err();
            assert_eq!(error_line(&err), says, "{args:?}");
        }
    }

    #[test]
    fn list_arguments() {
        let cli = Cli::try_parse_from(["watchctl", "list", "--json"]).unwrap();
        assert!(matches!(cli.command, Command::List { json: true }));
        let cli = Cli::try_parse_from(["watchctl", "list"]).unwrap();
        assert!(matches!(cli.command, Command::List { json: false }));
        let err = Cli::try_parse_from(["watchctl", "list", "mounts"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::UnknownArgument);
    }

    #[test]
    fn status_arguments() {
        let cli =
            Cli::try_parse_from(["watchctl", "--bus-address", "x", "status", "--json"]).unwrap();
        assert!(matches!(cli.command, Command::Status { json: true }));
        assert_eq!(cli.bus_address.as_deref(), Some("x"));
    }
}
