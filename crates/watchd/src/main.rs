//! `watchd`: parse arguments, set up logging, then serve until SIGTERM or SIGINT; SIGHUP
//! reloads the configuration. One instance per bus: the name is never handed over.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Parser;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;
use watchd::authority::Authority;
use watchd::cli::Args;
use watchd::conf::Config;
use watchd::hub::Hub;
use watchd::manager::Manager;
use watchd::manager_bus::{BUS_NAME, MANAGER_PATH, ManagerObject, reap_ended, send_signals};
use watchd::sources::krb5;
use zbus::export::futures_core::Stream;
use zbus::fdo::{DBusProxy, RequestNameFlags, RequestNameReply};

/// Blocking threads of the async runtime (tokio's default is 512); systemd/watchd.service's
/// TasksMax= counts on it.
const MAX_BLOCKING_THREADS: usize = 128;

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(file) = &args.check_config {
        return match file {
            Some(file) => check_config(file, true),
            None => check_config(&args.config, args.config_is_explicit()),
        };
    }
    init_logging();
    let config = match Config::load(&args.config, args.config_is_explicit()) {
        Ok(config) => config,
        Err(e) => return fail(anyhow::Error::new(e).context("configuration")),
    };
    // A session keyring of our own, before any thread starts (threads inherit it): the
    // daemon never searches keyrings it inherited from whoever started it. systemd's
    // KeyringMode=private does the same for the service.
    if let Err(e) = watchd::sys::keyctl_join_new_session_keyring() {
        tracing::warn!(error = %e, "cannot join a new session keyring");
    }
    // Blocking threads run the checks made as a caller (a few per uid at a time); capped well
    // below the unit's TasksMax= so that they cannot take the threads mount views need.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(anyhow::Error::new(e).context("cannot start the async runtime")),
    };
    let result = runtime.block_on(async {
        let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        // Taken over from the start: SIGHUP's default action would end the daemon, which
        // systemd counts as a clean exit. One that arrives before serving waits for it.
        let hangup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
        tokio::select! {
            result = run(args, config, hangup) => result,
            _ = terminate.recv() => { tracing::info!("SIGTERM: stopping"); Ok(()) }
            _ = interrupt.recv() => { tracing::info!("SIGINT: stopping"); Ok(()) }
        }
    });
    // Subscriptions end with the process: the kernel closes every write end, and readers
    // see end-of-file.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

/// `--check-config`: the file's effective values as TOML on stdout, or its error on stderr.
fn check_config(path: &Path, explicit: bool) -> ExitCode {
    match Config::load(path, explicit) {
        Ok(config) => match config.to_toml() {
            Ok(text) => {
                let what = if path.exists() {
                    "is valid"
                } else {
                    "does not exist: the built-in defaults apply"
                };
                let shown = path.display();
                let text =
                    format!("# {shown} {what}. Every key with the value in effect:\n\n{text}");
                // A reader that stops early (`| head`) is no error of the file's.
                match std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes()) {
                    Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                        eprintln!("watchd: cannot write to stdout: {e}");
                        ExitCode::FAILURE
                    }
                    _ => ExitCode::SUCCESS,
                }
            }
            Err(e) => {
                eprintln!("watchd: {}: cannot be shown as TOML: {e}", path.display());
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("watchd: invalid configuration: {e}");
            ExitCode::FAILURE
        }
    }
}

fn fail(error: anyhow::Error) -> ExitCode {
    tracing::error!("{error:#}");
    ExitCode::FAILURE
}

/// The journal when systemd connected our output to it, stderr otherwise. `WATCHD_LOG`
/// takes `RUST_LOG` syntax (default `info`).
fn init_logging() {
    let filter = EnvFilter::try_from_env("WATCHD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let journald = std::env::var_os("JOURNAL_STREAM").and_then(|_| tracing_journald::layer().ok());
    let registry = tracing_subscriber::registry().with(filter);
    match journald {
        Some(layer) => registry.with(layer).init(),
        None => {
            let stderr = tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
            registry.with(stderr).init()
        }
    }
}

async fn run(args: Args, config: Config, hangup: Signal) -> anyhow::Result<()> {
    check_requirements()?;
    let (builder, bus) = match &args.bus_address {
        Some(address) => (
            zbus::connection::Builder::address(address.as_str()),
            address.clone(),
        ),
        None => (
            zbus::connection::Builder::system(),
            std::env::var("DBUS_SYSTEM_BUS_ADDRESS").unwrap_or_else(|_| "the system bus".into()),
        ),
    };
    // The bus first: a second instance stops here, before it starts any source.
    let conn = builder
        .build()
        .await
        .with_context(|| format!("cannot connect to {bus}"))?;
    let dbus = DBusProxy::new(&conn).await?;
    if dbus.name_has_owner(BUS_NAME.try_into()?).await? {
        bail!(already_running(&dbus, &bus).await);
    }
    let (hub, ended) = Hub::new(config.limits.clone());
    let (signals, signal_queue) = tokio::sync::mpsc::channel(krb5::SIGNAL_QUEUE);
    let sources = watchd::sources::start(&config, &hub, signals)?;
    if sources.is_empty() {
        bail!("every source is disabled in the configuration: nothing to serve");
    }
    // Authorization asks polkitd over this same connection, so it comes before serving.
    let auth = &config.authorization;
    let authority = Authority::new(auth.mode, &auth.actions_file, conn.clone())?;
    tokio::spawn(send_signals(conn.clone(), signal_queue));
    let manager = Arc::new(Manager::new(hub, authority, sources, config));
    conn.object_server()
        .at(
            MANAGER_PATH,
            ManagerObject {
                manager: manager.clone(),
            },
        )
        .await?;
    // Subscribed before asking, so that no NameLost can slip in between.
    let mut lost = dbus.receive_name_lost_with_args(&[(0, BUS_NAME)]).await?;
    // Without ALLOW_REPLACEMENT (no other connection can take the name from us) and
    // without REPLACE_EXISTING (we take it from no one); DO_NOT_QUEUE: we do not wait for it.
    let reply = conn
        .request_name_with_flags(BUS_NAME, RequestNameFlags::DO_NOT_QUEUE)
        .await
        .with_context(|| {
            format!(
                "cannot own {BUS_NAME} on {bus} (does the bus policy not let this user own \
                 the name? see dbus/org.watchd.Watchd1.conf)"
            )
        })?;
    match reply {
        RequestNameReply::PrimaryOwner | RequestNameReply::AlreadyOwner => {}
        RequestNameReply::Exists | RequestNameReply::InQueue => {
            bail!(already_running(&dbus, &bus).await)
        }
    }
    tracing::info!(bus = %bus, pid = std::process::id(), "serving {BUS_NAME}");
    let reload = reload_on_hangup(
        hangup,
        manager,
        args.config.clone(),
        args.config_is_explicit(),
    );
    // The bus gone (dbus-daemon stopped or killed) closes the connection and ends the
    // NameLost stream, in either order. A failure exit is the way back (the unit's
    // Restart=on-failure, see systemd/watchd.service): every pipe ends with end-of-file,
    // and clients, whose own connections died with the bus, subscribe again.
    let closed = conn.clone();
    let connection_lost = || {
        anyhow::anyhow!(
            "lost the bus connection to {bus} (the bus daemon stopped, or dropped us): \
             exiting; every subscription ends"
        )
    };
    tokio::select! {
        () = closed.closed() => Err(connection_lost()),
        () = reap_ended(conn, ended) => bail!("the hub is gone: no longer serving"),
        () = reload => bail!("SIGHUP can no longer be received"),
        lost = std::future::poll_fn(|cx| std::pin::Pin::new(&mut lost).poll_next(cx)) => match lost {
            Some(_) => bail!("lost the name {BUS_NAME} on {bus}: no longer serving"),
            None => Err(connection_lost()),
        },
    }
}

/// The refusal of a second instance, naming the process that owns the name when the bus
/// says which.
async fn already_running(dbus: &DBusProxy<'_>, bus: &str) -> String {
    let owner = match BUS_NAME.try_into() {
        Ok(name) => dbus.get_connection_unix_process_id(name).await.ok(),
        Err(_) => None,
    };
    let owner = owner.map_or_else(|| "another process".to_owned(), |pid| format!("PID {pid}"));
    format!(
        "{BUS_NAME} on {bus} is already owned by {owner} (another watchd?): only one instance \
         may serve a bus; stop that one first, or send it SIGHUP to reload its configuration"
    )
}

/// Each SIGHUP re-reads the configuration file. A good one applies its `[limits]` and
/// `[pipe]` to new requests; a bad one is refused with its error and the old values stay.
async fn reload_on_hangup(
    mut hangup: Signal,
    manager: Arc<Manager>,
    path: PathBuf,
    explicit: bool,
) {
    while hangup.recv().await.is_some() {
        tracing::info!(file = %path.display(), "SIGHUP: reloading the configuration");
        match Config::load(&path, explicit) {
            Ok(config) => {
                manager.reload(&config);
            }
            Err(e) => tracing::error!(
                error = %e,
                "SIGHUP: configuration refused, the previous one stays in force"
            ),
        }
    }
}

/// States each unmet requirement precisely instead of failing later on a client's call.
fn check_requirements() -> anyhow::Result<()> {
    watchd::pipe::packet_pipe(2)
        .context("this kernel cannot make packet pipes (pipe2 with O_DIRECT, Linux ≥ 3.4)")?;
    std::fs::File::open("/proc/self/mountinfo")
        .context("the mount source needs /proc: cannot read /proc/self/mountinfo")?;
    Ok(())
}
