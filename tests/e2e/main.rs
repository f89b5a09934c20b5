//! End-to-end: the real `dbus-daemon`, `watchd`, `watchctl` and client library, real mounts,
//! all inside a private mount namespace entered before any thread starts.
//!
//! Tests are grouped by what they prove: delivery of mount events, the pipe contract (loss,
//! lifetime, filters, initial state), refusal of bad requests, and the interfaces people use
//! (busctl, watchctl, a C reader written from docs/protocol.md), and clients for scripts and
//! other languages (watchctl's script options, the GDBus example).

mod authorization;
mod bad_requests;
mod booted;
mod caller_files;
mod daemon_admin;
mod devices;
mod faults;
mod file_events;
mod flood;
mod fresh_root;
mod fs_errors;
mod hostile_requests;
mod interfaces;
mod key_watch_queue;
mod keys;
mod krb5_events;
mod krb5_harness;
mod mount_events;
mod packaging;
mod pipe_budget;
mod pipe_contract;
mod polkit_faults;
mod polkit_files;
mod quota;
mod scripting;
mod space;
mod udev_harness;
mod udevd_switch;

use std::time::Duration;

use anyhow::{Context, Result, bail};
use watchd_client::{Event, EventStream};
use watchd_e2e::{Arguments, Trial};
use watchd_proto::{RecordType, attr, meta};

fn main() -> std::process::ExitCode {
    let args = Arguments::from_args();
    match watchd_e2e::check_root() {
        Ok(true) => {}
        Ok(false) => return std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e:#}");
            return std::process::ExitCode::FAILURE;
        }
    }
    if let Err(e) = watchd_e2e::enter_private_mount_namespace() {
        eprintln!("cannot set up a private mount namespace: {e:#}");
        return std::process::ExitCode::FAILURE;
    }
    // Names for the test uids (polkit rules and dbus-daemon look users up), in this
    // namespace only: still single-threaded here.
    if let Err(e) = watchd_e2e::polkit::ensure_test_users() {
        eprintln!("cannot set up the test users: {e:#}");
        return std::process::ExitCode::FAILURE;
    }
    let mut trials = Vec::new();
    trials.extend(mount_events::trials());
    trials.extend(pipe_contract::trials());
    trials.extend(pipe_budget::trials());
    trials.extend(bad_requests::trials());
    trials.extend(hostile_requests::trials());
    trials.extend(interfaces::trials());
    trials.extend(scripting::trials());
    trials.extend(authorization::trials());
    trials.extend(polkit_files::trials());
    trials.extend(polkit_faults::trials());
    trials.extend(flood::trials());
    trials.extend(udev_harness::trials());
    trials.extend(devices::trials());
    trials.extend(udevd_switch::trials());
    trials.extend(krb5_harness::trials());
    trials.extend(keys::trials());
    trials.extend(krb5_events::trials());
    trials.extend(caller_files::trials());
    trials.extend(file_events::trials());
    trials.extend(fs_errors::trials());
    trials.extend(space::trials());
    trials.extend(key_watch_queue::trials());
    trials.extend(daemon_admin::trials());
    trials.extend(packaging::trials());
    trials.extend(booted::trials());
    trials.extend(quota::trials());
    trials.extend(fresh_root::trials());
    trials.extend(faults::trials());
    libtest_mimic::run(&args, trials).exit_code()
}

/// Wraps an async test body as a trial.
fn trial<F, Fut>(name: &'static str, body: F) -> Trial
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<()>>,
{
    Trial::test(name, move || watchd_e2e::run(body()))
}

/// The next record, or an error after `limit`.
async fn next_within(stream: &mut EventStream, limit: Duration) -> Result<Event> {
    match tokio::time::timeout(limit, stream.next()).await {
        Err(_) => bail!("no record within {limit:?}"),
        Ok(None) => bail!("the pipe ended"),
        Ok(Some(event)) => Ok(event?),
    }
}

async fn next(stream: &mut EventStream) -> Result<Event> {
    next_within(stream, Duration::from_secs(10)).await
}

/// Nothing arrives for a while (used to prove something was filtered or not sent).
async fn expect_silence(stream: &mut EventStream, limit: Duration) -> Result<()> {
    match tokio::time::timeout(limit, stream.next()).await {
        Err(_) => Ok(()),
        Ok(None) => bail!("the pipe ended"),
        Ok(Some(event)) => bail!("expected nothing, got {}", describe(&event?)),
    }
}

fn describe(event: &Event) -> String {
    let h = event.header();
    let record = event.record();
    format!(
        "type {} subtype {} tag {} seq {} flags {:#x} mount_point {:?}",
        h.record_type,
        h.subtype,
        h.tag,
        h.seq,
        h.flags,
        record.get_str(attr::MOUNT_POINT)
    )
}

/// The next record must be a mount record of `subtype` at `mount_point`.
async fn expect_mount(
    stream: &mut EventStream,
    subtype: u8,
    mount_point: &std::path::Path,
) -> Result<Event> {
    let event = next(stream).await?;
    let at = event.record().get_str(attr::MOUNT_POINT);
    if !event.header().is(RecordType::Mount, subtype) || at.as_deref() != mount_point.to_str() {
        bail!(
            "expected mount subtype {subtype} at {}, got {}",
            mount_point.display(),
            describe(&event)
        );
    }
    Ok(event)
}

fn expect_sync_for(event: &Event, tag: u64) -> Result<()> {
    if !event.header().is(RecordType::Meta, meta::SYNC) || event.header().tag != tag {
        bail!("expected SYNC for tag {tag}, got {}", describe(event));
    }
    Ok(())
}

/// The daemon's error name for a failed call, for asserting which error a request got.
fn error_name(result: Result<(), watchd_client::Error>) -> Result<String> {
    match result {
        Ok(()) => bail!("the call succeeded but should have failed"),
        Err(e) => e
            .dbus_name()
            .map(str::to_owned)
            .with_context(|| format!("not a D-Bus error: {e}")),
    }
}
