//! Requests made to exhaust the daemon: a million options, a mebibyte string, a million
//! list entries. Each is refused while its arguments are decoded, with a short error naming
//! the bound, and leaves the daemon's memory and log about as they were. And a
//! subscription's properties are for its owner and root alone.

use std::collections::HashMap;

use anyhow::{Context, Result, bail, ensure};
use watchd_client::{Client, SubscribeOptions};
use watchd_e2e::polkit::{OTHER_UID, TEST_UID, connect_as_user};
use watchd_e2e::{Env, Process, Trial};
use zbus::as_variant::Serialize as AsVariant;

use crate::trial;

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "hostile::a_million_options_are_refused_while_decoding_and_memory_stays_bounded",
            a_million_options,
        ),
        trial(
            "hostile::a_mebibyte_string_is_refused_with_a_short_error_and_a_short_log",
            a_mebibyte_string,
        ),
        trial(
            "hostile::a_million_element_list_is_refused_while_decoding",
            a_million_element_list,
        ),
        trial(
            "hostile::a_value_of_a_type_no_option_takes_is_named_in_the_error",
            a_value_of_a_type_no_option_takes,
        ),
        trial(
            "hostile::owner_and_depth_are_readable_by_the_owner_and_root_only",
            owner_and_depth_are_private,
        ),
    ]
}

const HUGE: usize = 1_000_000;
const MIB: usize = 1 << 20;
const INVALID_ARGS: &str = "org.freedesktop.DBus.Error.InvalidArgs";
/// A refusal's text names the bound and the limit; it never carries the input back.
const SHORT_ERROR: usize = 512;
/// The largest message the system bus passes (dbus-daemon's max_message_size), in KiB.
/// The daemon must receive a whole message before it can look at it, and the allocator
/// may keep that buffer once it is freed; nothing else of a refused request may stay.
/// (Before options were decoded under bounds, two calls with a million options left the
/// daemon 54 MiB larger, after a peak 328 MiB above where it started.)
const BUS_MESSAGE_KIB: u64 = 32 * 1024;

/// The daemon's resident memory now (VmRSS) and at its peak (VmHWM), in KiB.
fn memory(env: &Env) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", env.daemon.pid()))?;
    let field = |name: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("no {name} in the daemon's /proc status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// After a hostile request: at most one message's buffer kept, and at most two in use at
/// the peak (the request itself, and whatever else was in flight).
fn memory_stayed_bounded(before: u64, after: u64, peak: u64) -> Result<()> {
    ensure!(
        after < before + BUS_MESSAGE_KIB,
        "the daemon's VmRSS grew from {before} to {after} KiB"
    );
    ensure!(
        peak < before + 2 * BUS_MESSAGE_KIB,
        "the daemon's VmRSS peaked at {peak} KiB, from {before} KiB"
    );
    Ok(())
}

/// The error name and text of a call that must have failed.
fn refusal(result: zbus::Result<zbus::Message>) -> Result<(String, String)> {
    match result {
        Ok(_) => bail!("the call succeeded but should have been refused"),
        Err(zbus::Error::MethodError(name, text, _)) => {
            Ok((name.to_string(), text.unwrap_or_default()))
        }
        Err(zbus::Error::FDO(e)) => {
            let name = zbus::DBusError::name(&*e).to_string();
            Ok((
                name,
                zbus::DBusError::description(&*e)
                    .unwrap_or_default()
                    .to_owned(),
            ))
        }
        Err(other) => bail!("not a D-Bus error reply: {other}"),
    }
}

/// The call was refused as an invalid argument, with a short text that says `needle`.
fn expect_refused(result: zbus::Result<zbus::Message>, name: &str, needle: &str) -> Result<()> {
    let (got, text) = refusal(result)?;
    ensure!(got == name, "refused as {got}, not {name}: {text:.300}");
    ensure!(
        text.len() <= SHORT_ERROR,
        "the error text is {} bytes long: {text:.300}",
        text.len()
    );
    ensure!(
        text.contains(needle),
        "the error text {text:?} should mention {needle:?}"
    );
    Ok(())
}

/// Calls `method` of the daemon's object at `path` with the arguments `body`, as built, of
/// whatever type (the typed client would not send what these tests send).
macro_rules! call {
    ($client:expr, $path:expr, $method:literal, $body:expr) => {{
        let interface = if $method == "Subscribe" {
            "org.watchd.Watchd1.Manager"
        } else {
            "org.watchd.Watchd1.Subscription"
        };
        $client
            .connection()
            .call_method(
                Some("org.watchd.Watchd1"),
                $path,
                Some(interface),
                $method,
                $body,
            )
            .await
    }};
}

const MANAGER: &str = "/org/watchd/Watchd1";

async fn a_million_options() -> Result<()> {
    let env = Env::start("hostile-options").await?;
    let client = env.client().await?;
    let sub = client.subscribe(SubscribeOptions::default()).await?;
    let (before, _) = memory(&env)?;
    let names: Vec<String> = (0..HUGE).map(|i| format!("k{i}")).collect();
    let yes = true;
    let options: HashMap<&str, AsVariant<'_, bool>> = names
        .iter()
        .map(|k| (k.as_str(), AsVariant(&yes)))
        .collect();
    let subscribed = call!(client, MANAGER, "Subscribe", &(&options,));
    let added = call!(client, sub.path(), "AddWatch", &(1u64, "mounts", &options));
    let (after, peak) = memory(&env)?;
    eprintln!(
        "daemon memory around two calls of {HUGE} options: VmRSS {before} KiB before, \
         {after} KiB after; VmHWM {peak} KiB"
    );
    let too_many = "more than 64 options given; at most 32 are accepted";
    expect_refused(subscribed, INVALID_ARGS, too_many)?;
    expect_refused(added, INVALID_ARGS, too_many)?;
    memory_stayed_bounded(before, after, peak)?;
    let status = client.status().await?;
    ensure!(
        (status.subscriptions, status.watches) == (1, 0),
        "the refusals changed the daemon's state: {status:?}"
    );
    Ok(())
}

/// A string option or the kind at a mebibyte: refused at once, and the refusal is short in
/// the reply and in the log; a long path the decoder lets through is echoed shortened.
async fn a_mebibyte_string() -> Result<()> {
    let env = Env::start("hostile-strings").await?;
    let client = env.client().await?;
    let sub = client.subscribe(SubscribeOptions::default()).await?;
    let log_before = env.daemon.log().len();
    let huge = format!("/{}", "a".repeat(MIB));
    for (kind, option, value) in [
        ("mounts", "path", huge.clone()),
        ("krb5", "cache", format!("FILE:{huge}")),
        ("devices", "subsystem", huge.clone()),
    ] {
        let options = HashMap::from([(option, zbus::Variant::from(value.as_str()))]);
        let result = call!(client, sub.path(), "AddWatch", &(1u64, kind, options));
        expect_refused(
            result,
            INVALID_ARGS,
            &format!(
                "option '{option}' holds a string of {} bytes; at most 4096",
                value.len()
            ),
        )
        .with_context(|| format!("{kind} {option}"))?;
    }
    let no_options: HashMap<&str, zbus::Variant<'_>> = HashMap::new();
    let result = call!(
        client,
        sub.path(),
        "AddWatch",
        &(1u64, huge.as_str(), &no_options)
    );
    expect_refused(
        result,
        "org.watchd.Watchd1.Error.UnknownKind",
        &format!("…({} bytes)", huge.len()),
    )?;
    // Within the decoder's bound, a path that does not exist is named, shortened.
    let long = format!(
        "{}/missing{}",
        env.scratch.path.display(),
        "/a".repeat(1900)
    );
    let options = HashMap::from([("path", zbus::Variant::from(long.as_str()))]);
    let result = call!(client, sub.path(), "AddWatch", &(1u64, "mounts", options));
    expect_refused(
        result,
        "org.watchd.Watchd1.Error.NotFound",
        &format!("…({} bytes)", long.len()),
    )?;
    let grown = env.daemon.log().len() - log_before;
    eprintln!("the daemon's log grew by {grown} bytes over five refusals");
    ensure!(
        grown < 16 * 1024,
        "the daemon's log grew by {grown} bytes over five refusals"
    );
    Ok(())
}

async fn a_million_element_list() -> Result<()> {
    let env = Env::start("hostile-list").await?;
    let client = env.client().await?;
    let sub = client.subscribe(SubscribeOptions::default()).await?;
    let (before, _) = memory(&env)?;
    let properties = vec!["ID_FS_TYPE=ext4"; HUGE];
    let options = HashMap::from([("property", AsVariant(&properties))]);
    let result = call!(client, sub.path(), "AddWatch", &(1u64, "devices", &options));
    let (after, peak) = memory(&env)?;
    eprintln!(
        "daemon memory around a {HUGE}-entry property list: VmRSS {before} KiB before, \
         {after} KiB after; VmHWM {peak} KiB"
    );
    expect_refused(
        result,
        INVALID_ARGS,
        "option 'property' holds more than 64 entries; at most 64 are accepted",
    )?;
    memory_stayed_bounded(before, after, peak)?;
    Ok(())
}

/// Values of types no option takes are still named in the typed error; a large one is
/// refused while decoding.
async fn a_value_of_a_type_no_option_takes() -> Result<()> {
    let env = Env::start("hostile-types").await?;
    let client = env.client().await?;
    let depth = HashMap::from([("depth", zbus::Variant::from(16i32))]);
    expect_refused(
        call!(client, MANAGER, "Subscribe", &(depth,)),
        "org.watchd.Watchd1.Error.InvalidArgument",
        "option 'depth' must be of type 'u', not 'i'",
    )?;
    let sub = client.subscribe(SubscribeOptions::default()).await?;
    let nested = HashMap::from([("x", zbus::Variant::from(1u8))]);
    for (value, needle) in [
        (
            zbus::Variant::from(vec!["/"]),
            "option 'path' must be of type 's', not 'as'",
        ),
        (
            zbus::Variant::from(nested),
            "option 'path' must be of type 's', not 'a{sv}'",
        ),
    ] {
        let options = HashMap::from([("path", value)]);
        expect_refused(
            call!(client, sub.path(), "AddWatch", &(1u64, "mounts", options)),
            "org.watchd.Watchd1.Error.InvalidArgument",
            needle,
        )?;
    }
    let bytes = vec![0u8; MIB];
    let options = HashMap::from([("path", AsVariant(&bytes))]);
    expect_refused(
        call!(client, sub.path(), "AddWatch", &(1u64, "mounts", &options)),
        INVALID_ARGS,
        "no option takes its type 'ay'",
    )?;
    Ok(())
}

/// `prop` of the subscription at `path`, read through `client`'s connection.
async fn read_property(
    client: &Client,
    path: &zbus::ObjectPath<'_>,
    prop: &str,
) -> zbus::Result<zbus::Message> {
    client
        .connection()
        .call_method(
            Some("org.watchd.Watchd1"),
            path,
            Some("org.freedesktop.DBus.Properties"),
            "Get",
            &("org.watchd.Watchd1.Subscription", prop),
        )
        .await
}

fn as_u32(reply: zbus::Message) -> Result<u32> {
    let value: zbus::OwnedVariant = reply.body().deserialize()?;
    Ok(u32::try_from(value)?)
}

async fn client_as(env: &Env, uid: u32) -> Result<(Client, Process)> {
    let (conn, holder) = connect_as_user(&env.bus.address, uid).await?;
    Ok((Client::from_connection(conn), holder))
}

async fn owner_and_depth_are_private() -> Result<()> {
    let env = Env::start("hostile-properties").await?;
    let (owner, _owner_process) = client_as(&env, OTHER_UID).await?;
    let (stranger, _stranger_process) = client_as(&env, TEST_UID).await?;
    let root = env.client().await?;
    let sub = owner
        .subscribe(SubscribeOptions { depth: Some(32) })
        .await?;
    let path = sub.path().clone();
    for prop in ["Owner", "Depth"] {
        expect_refused(
            read_property(&stranger, &path, prop).await,
            "org.watchd.Watchd1.Error.AccessDenied",
            "only the owner",
        )
        .with_context(|| format!("uid {TEST_UID} reading {prop}"))?;
    }
    let all = stranger
        .connection()
        .call_method(
            Some("org.watchd.Watchd1"),
            &path,
            Some("org.freedesktop.DBus.Properties"),
            "GetAll",
            &("org.watchd.Watchd1.Subscription",),
        )
        .await?;
    let all: HashMap<String, zbus::OwnedVariant> = all.body().deserialize()?;
    ensure!(
        all.is_empty(),
        "GetAll shows a stranger {:?}",
        all.keys().collect::<Vec<_>>()
    );
    for (who, client) in [("the owner", &owner), ("root", &root)] {
        let uid = as_u32(read_property(client, &path, "Owner").await?)?;
        let depth = as_u32(read_property(client, &path, "Depth").await?)?;
        ensure!(
            (uid, depth) == (OTHER_UID, 32),
            "{who} read Owner {uid} and Depth {depth}"
        );
    }
    ensure!(
        sub.owner().await? == OTHER_UID,
        "the client library reads Owner"
    );
    Ok(())
}
