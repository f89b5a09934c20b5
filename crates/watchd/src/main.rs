//! `watchd`: parse arguments, set up logging, then serve until SIGTERM or SIGINT.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;
use watchd::authority::Authority;
use watchd::conf::{self, Config};
use watchd::hub::Hub;
use watchd::manager::Manager;
use watchd::manager_bus::{BUS_NAME, MANAGER_PATH, ManagerObject, reap_ended, send_signals};
use watchd::sources::krb5;

/// Blocking threads of the async runtime (tokio's default is 512); systemd/watchd.service's
/// TasksMax= counts on it.
const MAX_BLOCKING_THREADS: usize = 128;

/// Gathers device, mount, key and file events and hands each D-Bus subscriber a packet pipe
/// of typed records.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// D-Bus address to serve on instead of the system bus
    /// (default: $DBUS_SYSTEM_BUS_ADDRESS, else the system bus's well-known socket).
    #[arg(long, value_name = "ADDR")]
    bus_address: Option<String>,

    /// Configuration file.
    #[arg(long, value_name = "FILE", default_value = conf::DEFAULT_PATH)]
    config: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging();
    let explicit = args.config != std::path::Path::new(conf::DEFAULT_PATH);
    let config = match Config::load(&args.config, explicit) {
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
        tokio::select! {
            result = run(args, config) => result,
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

async fn run(args: Args, config: Config) -> anyhow::Result<()> {
    check_requirements()?;
    let (hub, ended) = Hub::new(config.limits.clone());
    let (signals, signal_queue) = tokio::sync::mpsc::channel(krb5::SIGNAL_QUEUE);
    let sources = watchd::sources::start(&config, &hub, signals)?;
    if sources.is_empty() {
        bail!("every source is disabled in the configuration: nothing to serve");
    }
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
    let conn = builder
        .build()
        .await
        .with_context(|| format!("cannot connect to {bus}"))?;
    // Authorization asks polkitd over this same connection, so it comes before serving.
    let auth = &config.authorization;
    let authority = Authority::new(auth.mode, &auth.actions_file, conn.clone())?;
    tokio::spawn(send_signals(conn.clone(), signal_queue));
    let manager = Arc::new(Manager::new(hub, authority, sources, config));
    conn.object_server()
        .at(MANAGER_PATH, ManagerObject { manager })
        .await?;
    conn.request_name(BUS_NAME).await.with_context(|| {
        format!(
            "cannot own {BUS_NAME} on {bus} (is another watchd running, or does the bus policy \
             not let this user own the name? see dbus/org.watchd.Watchd1.conf)"
        )
    })?;
    tracing::info!(bus = %bus, "serving {BUS_NAME}");
    reap_ended(conn, ended).await;
    bail!("lost the bus connection")
}

/// States each unmet requirement precisely instead of failing later on a client's call.
fn check_requirements() -> anyhow::Result<()> {
    watchd::pipe::packet_pipe(2)
        .context("this kernel cannot make packet pipes (pipe2 with O_DIRECT, Linux ≥ 3.4)")?;
    std::fs::File::open("/proc/self/mountinfo")
        .context("the mount source needs /proc: cannot read /proc/self/mountinfo")?;
    Ok(())
}
