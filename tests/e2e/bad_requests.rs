//! Bad input gets a clear D-Bus error, changes nothing, and the daemon keeps serving others.

use std::collections::HashMap;

use anyhow::{Result, bail, ensure};
use watchd_client::{Client, SubscribeOptions, WatchOptions};
use watchd_e2e::{Env, Trial, mounts};
use watchd_proto::mount;
use zbus::Variant;

use crate::{error_name, expect_mount, trial};

const ERR: &str = "org.watchd.Watchd1.Error.";

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "bad::malformed_options_are_refused_by_name_and_change_nothing",
            malformed_options,
        ),
        trial(
            "bad::unknown_kind_is_refused_naming_the_kinds_there_are",
            unknown_kind,
        ),
        trial(
            "bad::wrong_argument_types_are_refused_by_the_bus_layer",
            wrong_types,
        ),
        trial(
            "bad::paths_that_do_not_exist_or_are_relative_are_refused",
            bad_paths,
        ),
        trial("bad::tags_must_be_non_zero_unique_and_known", bad_tags),
        trial(
            "bad::limits_from_the_config_are_enforced_with_a_clear_error",
            limits,
        ),
    ]
}

/// After a refusal: status unchanged, and a fresh subscriber still gets live events.
async fn still_serving(env: &Env, client: &Client, expect: (u32, u32)) -> Result<()> {
    let status = client.status().await?;
    ensure!(
        (status.subscriptions, status.watches) == expect,
        "refusals changed the daemon's state: {status:?}"
    );
    let mut events = env.watch_scratch(99, WatchOptions::new()).await?;
    let target = env.scratch.join("alive");
    mounts::tmpfs(&target, "e2e", "size=1m")?;
    expect_mount(&mut events, mount::ATTACH, &target).await?;
    mounts::unmount(&target)?;
    Ok(())
}

async fn raw_subscribe(
    client: &Client,
    options: HashMap<&str, Variant<'_>>,
) -> Result<(), watchd_client::Error> {
    client
        .connection()
        .call_method(
            Some("org.watchd.Watchd1"),
            "/org/watchd/Watchd1",
            Some("org.watchd.Watchd1.Manager"),
            "Subscribe",
            &(options,),
        )
        .await
        .map(drop)
        .map_err(into_client_error)
}

fn into_client_error(e: zbus::Error) -> watchd_client::Error {
    match e {
        zbus::Error::MethodError(name, message, _) => watchd_client::Error::Daemon {
            name: name.to_string(),
            message: message.unwrap_or_default(),
        },
        other => watchd_client::Error::Bus(other),
    }
}

async fn malformed_options() -> Result<()> {
    let env = Env::start("bad-options").await?;
    let client = env.client().await?;
    let cases: Vec<(HashMap<&str, Variant<'_>>, &str)> = vec![
        (HashMap::from([("dpeth", Variant::from(16u32))]), "'dpeth'"),
        (HashMap::from([("depth", Variant::from("sixteen"))]), "'u'"),
        (
            HashMap::from([("depth", Variant::from(0u32))]),
            "out of range",
        ),
        (
            HashMap::from([("depth", Variant::from(100_000u32))]),
            "out of range",
        ),
    ];
    for (options, needle) in cases {
        let err = raw_subscribe(&client, options)
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("accepted"))?;
        let text = err.to_string();
        ensure!(
            err.dbus_name() == Some("org.watchd.Watchd1.Error.InvalidArgument"),
            "{text}"
        );
        ensure!(
            text.contains(needle),
            "message {text:?} should mention {needle}"
        );
    }
    let sub = client.subscribe(SubscribeOptions::default()).await?;
    for (options, needle) in [
        (WatchOptions::new().option("initial", 1u32), "'b'"),
        (WatchOptions::new().option("pth", "/"), "'pth'"),
        (
            WatchOptions::new().option("filters", vec![(2u32, 1u64, 0u32, 0u32); 33]),
            "at most",
        ),
        (
            WatchOptions::new().option("filters", vec![(77u32, 1u64, 0u32, 0u32)]),
            "77",
        ),
        (WatchOptions::new().option("filters", "all"), "a(utuu)"),
    ] {
        let result = sub.add_watch(1, "mounts", &options).await;
        let text = format!("{:?}", result);
        ensure!(
            error_name(result)? == format!("{ERR}InvalidArgument"),
            "{text}"
        );
        ensure!(
            text.contains(needle),
            "message {text} should mention {needle}"
        );
    }
    let many: HashMap<String, Variant<'_>> = (0..40)
        .map(|i| (format!("k{i}"), Variant::from(true)))
        .collect();
    let err = client
        .connection()
        .call_method(
            Some("org.watchd.Watchd1"),
            sub.path(),
            Some("org.watchd.Watchd1.Subscription"),
            "AddWatch",
            &(1u64, "mounts", many),
        )
        .await
        .map(drop)
        .map_err(into_client_error);
    ensure!(
        error_name(err)? == format!("{ERR}InvalidArgument"),
        "an oversized option map is refused"
    );
    still_serving(&env, &client, (1, 0)).await
}

async fn unknown_kind() -> Result<()> {
    let env = Env::start("bad-kind").await?;
    let client = env.client().await?;
    let sub = client.subscribe(SubscribeOptions::default()).await?;
    let result = sub.add_watch(1, "usb-gadgets", &WatchOptions::new()).await;
    let text = format!("{result:?}");
    ensure!(error_name(result)? == format!("{ERR}UnknownKind"));
    ensure!(
        text.contains("usb-gadgets") && text.contains("mounts"),
        "names the kind and the available ones: {text}"
    );
    still_serving(&env, &client, (1, 0)).await
}

async fn wrong_types() -> Result<()> {
    let env = Env::start("bad-types").await?;
    let client = env.client().await?;
    let sub = client.subscribe(SubscribeOptions::default()).await?;
    let conn = client.connection();
    let calls: [(&str, &str, Result<zbus::Message, zbus::Error>); 3] = [
        (
            "Subscribe",
            "u",
            conn.call_method(
                Some("org.watchd.Watchd1"),
                "/org/watchd/Watchd1",
                Some("org.watchd.Watchd1.Manager"),
                "Subscribe",
                &(5u32,),
            )
            .await,
        ),
        (
            "AddWatch",
            "ssu",
            conn.call_method(
                Some("org.watchd.Watchd1"),
                sub.path(),
                Some("org.watchd.Watchd1.Subscription"),
                "AddWatch",
                &("1", "mounts", 3u32),
            )
            .await,
        ),
        (
            "RemoveWatch",
            "",
            conn.call_method(
                Some("org.watchd.Watchd1"),
                sub.path(),
                Some("org.watchd.Watchd1.Subscription"),
                "RemoveWatch",
                &(),
            )
            .await,
        ),
    ];
    for (method, signature, result) in calls {
        match result {
            Err(zbus::Error::FDO(e)) if matches!(*e, zbus::fdo::Error::InvalidArgs(_)) => {}
            Err(zbus::Error::MethodError(name, _, _))
                if name.as_str() == "org.freedesktop.DBus.Error.InvalidArgs" => {}
            other => bail!("{method}({signature}) should be refused, got {other:?}"),
        }
    }
    still_serving(&env, &client, (1, 0)).await
}

async fn bad_paths() -> Result<()> {
    let env = Env::start("bad-paths").await?;
    let client = env.client().await?;
    let sub = client.subscribe(SubscribeOptions::default()).await?;
    let missing = env.scratch.join("does/not/exist");
    let result = sub
        .add_watch(
            1,
            "mounts",
            &WatchOptions::new().path(missing.to_str().unwrap()),
        )
        .await;
    let text = format!("{result:?}");
    ensure!(error_name(result)? == format!("{ERR}NotFound"), "{text}");
    ensure!(text.contains("does/not/exist"), "names the path: {text}");
    let result = sub
        .add_watch(1, "mounts", &WatchOptions::new().path("relative/dir"))
        .await;
    ensure!(error_name(result)? == format!("{ERR}InvalidArgument"));
    still_serving(&env, &client, (1, 0)).await
}

async fn bad_tags() -> Result<()> {
    let env = Env::start("bad-tags").await?;
    let client = env.client().await?;
    let sub = client.subscribe(SubscribeOptions::default()).await?;
    ensure!(
        error_name(sub.add_watch(0, "mounts", &WatchOptions::new()).await)?
            == format!("{ERR}InvalidArgument")
    );
    sub.add_watch(1, "mounts", &WatchOptions::new()).await?;
    ensure!(
        error_name(sub.add_watch(1, "mounts", &WatchOptions::new()).await)?
            == format!("{ERR}DuplicateTag")
    );
    ensure!(error_name(sub.remove_watch(2).await)? == format!("{ERR}NoSuchWatch"));
    ensure!(error_name(sub.resync(2).await)? == format!("{ERR}NoSuchWatch"));
    sub.remove_watch(1).await?;
    // The owner's own removals and resyncs are logged like additions, with who asked.
    let log = env.daemon.log();
    for (what, tag) in [("resync: refused", 2), ("remove watch: allowed", 1)] {
        ensure!(
            log.lines().any(|l| l.contains(what)
                && l.contains(&format!("tag={tag}"))
                && l.contains("uid=")
                && l.contains("pid=")
                && l.contains("subscription=")),
            "no '{what}' line for tag {tag} in the daemon's log:\n{log}"
        );
    }
    still_serving(&env, &client, (1, 0)).await
}

async fn limits() -> Result<()> {
    let config = "[limits]\nmax_subscriptions_per_uid = 3\nmax_watches_per_subscription = 2\n";
    let env = Env::start_with_config("limits", config).await?;
    let client = env.client().await?;
    let a = client.subscribe(SubscribeOptions::default()).await?;
    let _b = client.subscribe(SubscribeOptions::default()).await?;
    let result = client
        .subscribe(SubscribeOptions::default())
        .await
        .map(drop);
    let text = format!("{result:?}");
    // The third is allowed (3 per uid); the fourth is not.
    ensure!(result.is_ok(), "{text}");
    let _c = client.subscribe(SubscribeOptions::default()).await?;
    let result = client
        .subscribe(SubscribeOptions::default())
        .await
        .map(drop);
    let text = format!("{result:?}");
    ensure!(
        error_name(result)? == format!("{ERR}LimitExceeded"),
        "{text}"
    );
    ensure!(
        text.contains("max_subscriptions_per_uid"),
        "names the limit: {text}"
    );
    a.add_watch(1, "mounts", &WatchOptions::new()).await?;
    a.add_watch(2, "mounts", &WatchOptions::new()).await?;
    let result = a.add_watch(3, "mounts", &WatchOptions::new()).await;
    let text = format!("{result:?}");
    ensure!(
        error_name(result)? == format!("{ERR}LimitExceeded")
            && text.contains("max_watches_per_subscription"),
        "{text}"
    );
    drop(_c);
    let status = client.status().await?;
    ensure!(status.watches == 2, "the refused watch was not added");
    Ok(())
}
