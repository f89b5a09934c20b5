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
use watchctl::{Cli, Command, WatchArgs, WatchKind};
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
            match io::stdout().lock().write_all(text.as_bytes()) {
                Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e).context("stdout"),
                _ => Ok(Outcome::Done),
            }
        }
        Command::Watch {
            kind: WatchKind::Mounts { path, common },
        } => {
            let mut options = WatchOptions::new()
                .initial(common.initial)
                .interactive(common.interactive);
            if let Some(path) = path {
                options = options.path(absolute_text(&path)?);
            }
            watch(cli.bus_address.as_deref(), "mounts", &options, &common).await
        }
        Command::Watch {
            kind:
                WatchKind::Files {
                    path,
                    subtree,
                    common,
                },
        } => {
            let mut options = WatchOptions::new()
                .initial(common.initial)
                .interactive(common.interactive)
                .path(absolute_text(&path)?);
            if subtree {
                options = options.option("subtree", true);
            }
            watch(cli.bus_address.as_deref(), "files", &options, &common).await
        }
        Command::Watch {
            kind:
                WatchKind::Devices {
                    subsystem,
                    tag,
                    properties,
                    sysname,
                    common,
                },
        } => {
            let options = device_options(subsystem, tag, properties, sysname, &common);
            watch(cli.bus_address.as_deref(), "devices", &options, &common).await
        }
        Command::Watch {
            kind:
                WatchKind::Keys {
                    spec,
                    uid,
                    nested,
                    common,
                },
        } => {
            let options = key_options(spec, uid, nested, &common)?;
            watch(cli.bus_address.as_deref(), "keys", &options, &common).await
        }
        Command::Watch {
            kind: WatchKind::Krb5 { cache, common },
        } => {
            let cache = krb5_cache(cache, std::env::var_os(KRB5CCNAME))?;
            let options = krb5_options(cache, &common);
            watch(cli.bus_address.as_deref(), "krb5", &options, &common).await
        }
    }
}

/// Subscribes, sets the watch and prints its events until SIGINT/SIGTERM, the end of the
/// pipe, a REMOVAL record for the watch, `--count` records, or a closed stdout (noticed at
/// once, not only at the next write).
async fn watch(
    bus_address: Option<&str>,
    kind: &str,
    options: &WatchOptions,
    args: &WatchArgs,
) -> anyhow::Result<Outcome> {
    let mut interrupt = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let work = async {
        let client = Client::connect(bus_address).await?;
        let subscription = client
            .subscribe(SubscribeOptions { depth: args.depth })
            .await?;
        subscription
            .add_watch(args.watch_tag, kind, options)
            .await?;
        print_events(subscription.into_events(), args).await
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

async fn print_events(
    mut events: watchd_client::EventStream,
    args: &WatchArgs,
) -> anyhow::Result<Outcome> {
    let stdout = io::stdout();
    let mut counted = 0u64;
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(event) => event,
            Err(watchd_client::Error::Decode(e)) => {
                eprintln!("watchctl: skipped a malformed record: {e}");
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let record = event.record();
        let mut line = if args.json {
            format::json_line(&record)
        } else {
            let secs = i64::try_from(record.header.time_ns / 1_000_000_000).unwrap_or(i64::MAX);
            format::human_line(&record, sys::utc_offset(secs))
        };
        line.push('\n');
        let mut out = stdout.lock();
        match out.write_all(line.as_bytes()).and_then(|()| out.flush()) {
            Ok(()) => {}
            // Whoever read our output has gone (`watchctl … | head -1`): a normal end.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(Outcome::Done),
            Err(e) => return Err(e).context("stdout"),
        }
        let h = event.header();
        if h.tag == args.watch_tag && h.is(RecordType::Meta, meta::REMOVAL) {
            // The watch has ended; nothing more will come for it.
            return Ok(Outcome::Done);
        }
        if counts(h) {
            counted += 1;
            if args.count == Some(counted) {
                return Ok(Outcome::Done);
            }
        }
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
        assert_eq!((common.depth, common.watch_tag), (Some(64), 7));

        let cli = Cli::try_parse_from(["watchctl", "watch", "mounts"]).unwrap();
        let Command::Watch {
            kind: WatchKind::Mounts { path, common },
        } = cli.command
        else {
            panic!("not watch mounts")
        };
        assert_eq!((path, common.initial, common.json), (None, false, false));
        assert_eq!((common.depth, common.watch_tag), (None, 1));
    }

    fn parse_devices(args: &[&str]) -> Result<(WatchOptions, WatchArgs), clap::Error> {
        let cli = Cli::try_parse_from(["watchctl", "watch", "devices"].iter().chain(args))?;
        let Command::Watch {
            kind:
                WatchKind::Devices {
                    subsystem,
                    tag,
                    properties,
                    sysname,
                    common,
                },
        } = cli.command
        else {
            panic!("not watch devices")
        };
        Ok((
            device_options(subsystem, tag, properties, sysname, &common),
            common,
        ))
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
        assert_eq!((common.depth, common.watch_tag), (Some(128), 9));
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
        assert_eq!((common.depth, common.watch_tag), (None, 1));

        let (options, _) = parse_devices(&["--subsystem", "net", "--interactive"]).unwrap();
        assert!(options.interactive);
        assert_eq!(sent(&options), [triple("subsystem", "s", "net")]);
        let (options, _) = parse_devices(&["--property", "A=1"]).unwrap();
        assert_eq!(sent(&options), [triple("property", "as", "A=1")]);
    }

    /// A command line clap refuses as malformed: a bad value or an unknown argument.
    fn assert_usage_error(err: &clap::Error, args: &[&str]) {
        assert!(
            matches!(
                err.kind(),
                clap::error::ErrorKind::ValueValidation
                    | clap::error::ErrorKind::InvalidValue
                    | clap::error::ErrorKind::UnknownArgument
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
        assert_eq!(common.watch_tag, 1);
        assert_eq!(sent(&options), [triple("tag", "s", "7")]);
        let err =
            Cli::try_parse_from(["watchctl", "watch", "mounts", "--watch-tag", "0"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
    }

    fn parse_keys(args: &[&str]) -> Result<(WatchOptions, WatchArgs), clap::Error> {
        let cli = Cli::try_parse_from(["watchctl", "watch", "keys"].iter().chain(args))?;
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
        Ok((key_options(spec, uid, nested, &common).unwrap(), common))
    }

    #[test]
    fn watch_keys_arguments() {
        // The default: the caller's user keyring, nothing else.
        let (options, common) = parse_keys(&[]).unwrap();
        assert_eq!(sent(&options), [triple("key", "s", "@user")]);
        assert!(!options.initial && !options.interactive && !common.json);
        assert_eq!((common.depth, common.watch_tag), (None, 1));

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
        assert_eq!((common.depth, common.watch_tag), (Some(64), 5));
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
        // The kernel's negative special ids (-4 is KEY_SPEC_USER_KEYRING) are refused too.
        let err = parse_keys(&["--", "-4"]).map(|_| ()).unwrap_err();
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
        assert_eq!((common.depth, common.watch_tag), (None, 1));
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
        assert_eq!(common.watch_tag, 3);

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
        ] {
            let args = ["watchctl", "watch"].iter().chain(kind);
            let cli = Cli::try_parse_from(args.clone().chain(&["--count", "2"])).unwrap();
            let Command::Watch { kind: watch } = cli.command else {
                panic!("not watch")
            };
            let common = match watch {
                WatchKind::Mounts { common, .. }
                | WatchKind::Devices { common, .. }
                | WatchKind::Keys { common, .. }
                | WatchKind::Krb5 { common, .. }
                | WatchKind::Files { common, .. } => common,
            };
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

    #[test]
    fn status_arguments() {
        let cli =
            Cli::try_parse_from(["watchctl", "--bus-address", "x", "status", "--json"]).unwrap();
        assert!(matches!(cli.command, Command::Status { json: true }));
        assert_eq!(cli.bus_address.as_deref(), Some("x"));
    }
}
