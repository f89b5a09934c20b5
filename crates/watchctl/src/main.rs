//! `watchctl`: the command-line client of watchd.
//!
//! - `main.rs`: arguments (clap), the commands, exit codes, error reporting.
//! - [`format`](mod@format): the output formats as pure functions (human and JSON lines, status).
//! - [`sys`]: the local time zone offset (the one libc call).

mod format;
mod sys;

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use tokio::signal::unix::{SignalKind, signal};
use watchd_client::proto::{RecordType, meta};
use watchd_client::{Client, SubscribeOptions, WatchOptions};

/// Exit code: the subscription's pipe ended (watchd stopped or ended the subscription).
const EXIT_PIPE_ENDED: u8 = 3;

#[derive(Parser, Debug)]
#[command(
    name = "watchctl",
    version,
    about = "Query watchd and watch for changes"
)]
struct Cli {
    /// D-Bus address of the bus watchd is on [default: $DBUS_SYSTEM_BUS_ADDRESS, else the
    /// system bus]
    #[arg(long, global = true, value_name = "ADDR")]
    bus_address: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show the daemon's version, its sources, and how many subscriptions and watches exist
    Status {
        /// Print one JSON object
        #[arg(long)]
        json: bool,
    },
    /// Set a watch and print one line per event until interrupted
    Watch {
        #[command(subcommand)]
        kind: WatchKind,
    },
}

#[derive(Subcommand, Debug)]
enum WatchKind {
    /// Mounts appearing, going away, moving or changing in your mount namespace
    Mounts {
        /// Only mounts at or under this path (made absolute if relative)
        #[arg(long, value_name = "P")]
        path: Option<PathBuf>,

        #[command(flatten)]
        common: WatchArgs,
    },
    /// Devices appearing, going away or changing (udev events): add, remove, change, move,
    /// online, offline, bind, unbind
    Devices {
        /// Only devices of this subsystem, and of this device type when given: block,
        /// block/partition, usb/usb_device
        #[arg(long, value_name = "S[/DEVTYPE]", value_parser = parse_subsystem)]
        subsystem: Option<String>,

        /// Only devices with this udev tag, e.g. systemd, uaccess
        #[arg(long, value_name = "T", value_parser = parse_nonempty)]
        tag: Option<String>,

        /// Only devices with a property matching KEY=GLOB (globs in key and value, e.g.
        /// ID_FS_TYPE=ext*, DM_*=*); when repeated, every one must match
        #[arg(long = "property", value_name = "K=GLOB", value_parser = parse_property)]
        properties: Vec<String>,

        /// Only devices whose kernel name matches this glob, e.g. sd*, loop[0-9]
        #[arg(long, value_name = "GLOB", value_parser = parse_nonempty)]
        sysname: Option<String>,

        #[command(flatten)]
        common: WatchArgs,
    },
}

#[derive(Args, Debug)]
struct WatchArgs {
    /// Print the current state first (marked as snapshot), then the changes
    #[arg(long)]
    initial: bool,

    /// Print one JSON object per line
    #[arg(long)]
    json: bool,

    /// Let polkit ask you to authenticate when the watch needs it (through your
    /// authentication agent) instead of refusing
    #[arg(long)]
    interactive: bool,

    /// Pipe capacity in events [default: the daemon's, 16]
    #[arg(long, value_name = "N")]
    depth: Option<u32>,

    /// Number the watch's records carry (the JSON tag field), not zero
    #[arg(
        long = "watch-tag",
        value_name = "N",
        default_value_t = 1,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    watch_tag: u64,
}

/// `--subsystem`: `S` or `S/DEVTYPE`, neither empty.
fn parse_subsystem(value: &str) -> Result<String, String> {
    let ok = match value.split_once('/') {
        Some((subsystem, devtype)) => {
            !subsystem.is_empty() && !devtype.is_empty() && !devtype.contains('/')
        }
        None => !value.is_empty(),
    };
    if ok {
        Ok(value.to_owned())
    } else {
        Err("expected a subsystem, or SUBSYSTEM/DEVTYPE (e.g. block or block/partition)".into())
    }
}

/// `--property`: `KEY=GLOB` with a key; the glob may be empty (an empty value).
fn parse_property(value: &str) -> Result<String, String> {
    match value.split_once('=') {
        Some((key, _)) if !key.is_empty() => Ok(value.to_owned()),
        _ => Err("expected KEY=GLOB, e.g. ID_FS_TYPE=ext4 or 'DM_*=*'".into()),
    }
}

fn parse_nonempty(value: &str) -> Result<String, String> {
    if value.is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(value.to_owned())
    }
}

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
                let path =
                    std::path::absolute(&path).with_context(|| format!("{}", path.display()))?;
                let Some(path) = path.to_str() else {
                    bail!("{}: the path is not valid UTF-8", path.display())
                };
                options = options.path(path);
            }
            watch(cli.bus_address.as_deref(), "mounts", &options, &common).await
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
    }
}

/// Subscribes, sets the watch and prints its events until SIGINT/SIGTERM, the end of the
/// pipe, a REMOVAL record for the watch, or a closed stdout.
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
    }
}

async fn print_events(
    mut events: watchd_client::EventStream,
    args: &WatchArgs,
) -> anyhow::Result<Outcome> {
    let stdout = io::stdout();
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
    }
    Ok(Outcome::PipeEnded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
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

    #[test]
    fn status_arguments() {
        let cli =
            Cli::try_parse_from(["watchctl", "--bus-address", "x", "status", "--json"]).unwrap();
        assert!(matches!(cli.command, Command::Status { json: true }));
        assert_eq!(cli.bus_address.as_deref(), Some("x"));
    }
}
