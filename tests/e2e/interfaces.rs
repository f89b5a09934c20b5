//! The ways people reach the daemon: busctl, watchctl, the introspection XML in dbus/, and a
//! C reader written only from docs/protocol.md.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use watchd_client::{SubscribeOptions, WatchOptions};
use watchd_e2e::{Bus, Daemon, Env, Process, Scratch, Trial, mounts, repo};

use crate::trial;

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "interfaces::the_introspection_xml_in_dbus_is_what_the_daemon_serves",
            introspection,
        ),
        trial(
            "interfaces::busctl_can_subscribe_and_sees_errors_by_name",
            busctl,
        ),
        trial(
            "interfaces::watchctl_prints_live_mount_events_as_json_and_as_text",
            watchctl_watch,
        ),
        trial(
            "interfaces::watchctl_count_exits_0_after_n_records_not_counting_meta",
            watchctl_count,
        ),
        trial(
            "interfaces::watchctl_exits_when_its_reader_goes_without_another_event",
            watchctl_reader_gone,
        ),
        trial(
            "interfaces::watchctl_status_and_errors",
            watchctl_status_and_errors,
        ),
        trial(
            "interfaces::watchd_and_watchctl_honour_dbus_system_bus_address",
            bus_from_environment,
        ),
        trial(
            "interfaces::a_c_reader_built_from_the_protocol_doc_decodes_live_records",
            c_reader,
        ),
        trial(
            "interfaces::the_pygobject_example_prints_credentials_cache_signals",
            pygobject_signal_example,
        ),
    ]
}

/// The `<interface name="...">` element called `name`, as written. (zbus also inlines child
/// objects' interfaces into a parent's document: the first match is the object's own.)
fn interface_xml<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let start = xml.find(&format!("<interface name=\"{name}\">"))?;
    let end = start + xml[start..].find("</interface>")? + "</interface>".len();
    Some(&xml[start..end])
}

/// Whitespace folded: formatting does not matter, every method, argument, property and doc
/// comment does.
fn folded(xml: &str) -> String {
    xml.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Compares dbus/org.watchd.Watchd1.xml with what the daemon serves. `WATCHD_BLESS=1`
/// rewrites the file from the daemon instead (after a deliberate interface change).
async fn introspection() -> Result<()> {
    let env = Env::start("introspect").await?;
    let client = env.client().await?;
    let sub = client.subscribe(SubscribeOptions::default()).await?;
    let file = repo().join("dbus/org.watchd.Watchd1.xml");
    let shipped = std::fs::read_to_string(&file).with_context(|| file.display().to_string())?;
    let objects = [
        (
            "/org/watchd/Watchd1".to_owned(),
            "org.watchd.Watchd1.Manager",
        ),
        (sub.path().to_string(), "org.watchd.Watchd1.Subscription"),
    ];
    let mut served = Vec::new();
    for (path, name) in objects {
        let proxy = zbus::fdo::IntrospectableProxy::builder(client.connection())
            .destination("org.watchd.Watchd1")
            .path(path.as_str())
            .build()
            .await?;
        let xml: String = proxy.introspect().await?;
        let interface =
            interface_xml(&xml, name).with_context(|| format!("{path} does not serve {name}"))?;
        served.push((name, interface.to_owned()));
    }
    if std::env::var_os("WATCHD_BLESS").is_some() {
        // Each interface element is replaced where it stands: the comments around them (the
        // interfaces' own gtk-doc comments) are the file's, not the daemon's.
        let mut blessed = shipped.clone();
        for (name, interface) in &served {
            let old = interface_xml(&blessed, name)
                .with_context(|| format!("{name} is not in the file"))?
                .to_owned();
            blessed = blessed.replacen(&old, interface, 1);
        }
        std::fs::write(&file, blessed)?;
        return Ok(());
    }
    for (name, interface) in served {
        if interface_xml(&shipped, name).map(folded) != Some(folded(&interface)) {
            bail!(
                "{name} in {} differs from what the daemon serves (WATCHD_BLESS=1 rewrites it):\n{interface}",
                file.display()
            );
        }
    }
    Ok(())
}

fn run_busctl(env: &Env, args: &[&str]) -> Result<std::process::Output> {
    Ok(Command::new("busctl")
        .arg(format!("--address={}", env.bus.address))
        .args(args)
        .output()?)
}

async fn busctl() -> Result<()> {
    let env = Env::start("busctl").await?;
    let manager = [
        "call",
        "org.watchd.Watchd1",
        "/org/watchd/Watchd1",
        "org.watchd.Watchd1.Manager",
    ];
    let out = run_busctl(
        &env,
        &[
            &manager[..],
            &["Subscribe", "a{sv}", "1", "depth", "u", "8"],
        ]
        .concat(),
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "busctl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        stdout.starts_with("ho ") && stdout.contains("\"/org/watchd/Watchd1/subscription/"),
        "busctl printed {stdout}"
    );
    // As the README says: busctl closed the pipe's only read end when it exited, which ended
    // the subscription, so a second busctl cannot add a watch to it.
    let path = stdout
        .split('"')
        .nth(1)
        .context("no subscription path")?
        .to_owned();
    let mut refused = String::new();
    for _ in 0..100 {
        let out = run_busctl(
            &env,
            &[
                "call",
                "org.watchd.Watchd1",
                &path,
                "org.watchd.Watchd1.Subscription",
                "AddWatch",
                "tsa{sv}",
                "7",
                "mounts",
                "0",
            ],
        )?;
        if !out.status.success() {
            refused = String::from_utf8_lossy(&out.stderr).into_owned();
            break;
        }
        // The daemon learns of the closed pipe a moment after busctl exits.
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("AddWatch after busctl exited: {refused}");
    ensure!(
        refused.contains(&path),
        "AddWatch on the subscription busctl ended was not refused naming it: {refused:?}"
    );
    let out = run_busctl(
        &env,
        &[&manager[..], &["Subscribe", "a{sv}", "1", "deep", "u", "8"]].concat(),
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("unknown option(s) 'deep'"),
        "busctl showed: {stderr}"
    );
    let out = run_busctl(
        &env,
        &[
            "get-property",
            "org.watchd.Watchd1",
            "/org/watchd/Watchd1",
            "org.watchd.Watchd1.Manager",
            "Sources",
        ],
    )?;
    ensure!(
        String::from_utf8_lossy(&out.stdout).contains("\"mounts\""),
        "Sources property"
    );
    Ok(())
}

/// Lines of a child's stdout, read on a thread so the test can wait with a limit.
fn lines_of(child: &mut std::process::Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

async fn wait_for_watches(env: &Env, n: u32) -> Result<()> {
    let client = env.client().await?;
    for _ in 0..500 {
        if client.status().await?.watches == n {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("the client never set its watch")
}

async fn watchctl_watch() -> Result<()> {
    let env = Env::start("watchctl").await?;
    let dir = env.scratch.path.to_str().unwrap().to_owned();
    let mut json = env.watchctl();
    json.args(["watch", "mounts", "--path", &dir, "--json"])
        .stdout(Stdio::piped());
    let mut json = Process::spawn(json, "watchctl --json")?;
    let json_lines = lines_of(json.child());
    let mut text = env.watchctl();
    text.args(["watch", "mounts", "--path", &dir])
        .stdout(Stdio::piped());
    let mut text = Process::spawn(text, "watchctl")?;
    let text_lines = lines_of(text.child());
    wait_for_watches(&env, 2).await?;

    let target = env.scratch.join("cli");
    mounts::tmpfs(&target, "cli-source", "size=1m")?;
    let line = json_lines
        .recv_timeout(Duration::from_secs(10))
        .context("no JSON line")?;
    let v: serde_json::Value = serde_json::from_str(&line).with_context(|| line.clone())?;
    let info = mounts::mountinfo_line(&target)?;
    ensure!(
        v["type"] == "mount" && v["event"] == "attach" && v["tag"] == 1 && v["seq"] == 1,
        "{line}"
    );
    ensure!(
        v["mount_point"] == target.to_str().unwrap()
            && v["fs_type"] == "tmpfs"
            && v["source"] == "cli-source",
        "{line}"
    );
    ensure!(v["mount_id"].as_u64() == info[0].parse().ok(), "{line}");
    ensure!(v["snapshot"] == false, "{line}");

    let line = text_lines
        .recv_timeout(Duration::from_secs(10))
        .context("no text line")?;
    ensure!(
        line.contains("attach")
            && line.contains(target.to_str().unwrap())
            && line.contains("tmpfs"),
        "{line}"
    );
    Ok(())
}

/// Waits (`limit` at most) for `process` to exit; on timeout fails, and dropping `process`
/// then stops it by its pid.
fn exit_within(process: &mut Process, limit: Duration) -> Result<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = process.child().try_wait()? {
            return Ok(status);
        }
        if std::time::Instant::now() >= deadline {
            bail!("pid {} still running after {limit:?}", process.pid());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Every line still to come from `lines`, up to the end of the output.
fn rest_of(lines: &mpsc::Receiver<String>) -> Result<Vec<String>> {
    let mut rest = Vec::new();
    loop {
        match lines.recv_timeout(Duration::from_secs(10)) {
            Ok(line) => rest.push(line),
            Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(rest),
            Err(mpsc::RecvTimeoutError::Timeout) => bail!("the output never ended: {rest:?}"),
        }
    }
}

fn json_of(lines: &mpsc::Receiver<String>) -> Result<serde_json::Value> {
    let line = lines
        .recv_timeout(Duration::from_secs(10))
        .context("no line")?;
    serde_json::from_str(&line).with_context(|| line.clone())
}

/// `--count 2 --initial`: the snapshot record counts, the `sync` after it does not, so
/// watchctl waits for one live event and then exits 0, having printed exactly those.
async fn watchctl_count() -> Result<()> {
    let env = Env::start("watchctl-count").await?;
    let dir = env.scratch.join("count");
    let before = dir.join("before");
    let after = dir.join("after");
    mounts::tmpfs(&before, "count-before", "size=1m")?;
    let mut command = env.watchctl();
    command
        .args(["watch", "mounts", "--path", dir.to_str().unwrap()])
        .args(["--initial", "--json", "--count", "2"])
        .stdout(Stdio::piped());
    let mut watchctl = Process::spawn(command, "watchctl --count 2")?;
    let lines = lines_of(watchctl.child());

    let v = json_of(&lines)?;
    ensure!(
        v["snapshot"] == true && v["mount_point"] == before.to_str().unwrap(),
        "{v}"
    );
    let v = json_of(&lines)?;
    ensure!(v["type"] == "meta" && v["event"] == "sync", "{v}");
    // Had the sync counted, watchctl would be on its way out now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    watchctl.check_running()?;

    mounts::tmpfs(&after, "count-after", "size=1m")?;
    let status = exit_within(&mut watchctl, Duration::from_secs(10))?;
    ensure!(status.success(), "{status}");
    let rest = rest_of(&lines)?;
    ensure!(rest.len() == 1, "one record after the sync: {rest:?}");
    let v: serde_json::Value = serde_json::from_str(&rest[0])?;
    ensure!(
        v["event"] == "attach"
            && v["snapshot"] == false
            && v["mount_point"] == after.to_str().unwrap(),
        "{v}"
    );

    // Without --initial: two live events, then exit 0 with exactly two lines.
    let live = env.scratch.join("count-live");
    std::fs::create_dir_all(&live)?;
    let mut command = env.watchctl();
    command
        .args(["watch", "mounts", "--path", live.to_str().unwrap()])
        .args(["--count", "2"])
        .stdout(Stdio::piped());
    let mut watchctl = Process::spawn(command, "watchctl --count 2 (live)")?;
    let lines = lines_of(watchctl.child());
    wait_for_watches(&env, 1).await?;
    for name in ["a", "b"] {
        mounts::tmpfs(&live.join(name), "count-live", "size=1m")?;
    }
    let status = exit_within(&mut watchctl, Duration::from_secs(10))?;
    ensure!(status.success(), "{status}");
    let rest = rest_of(&lines)?;
    ensure!(
        rest.len() == 2 && rest.iter().all(|line| line.contains("attach")),
        "{rest:?}"
    );
    Ok(())
}

/// `watchctl watch mounts | head -1`: once the reader has its line and closes the pipe,
/// watchctl exits 0 at once, with no further event to write (it would fail writing one).
async fn watchctl_reader_gone() -> Result<()> {
    let env = Env::start("watchctl-head").await?;
    let dir = env.scratch.join("head");
    std::fs::create_dir_all(&dir)?;
    let mut command = env.watchctl();
    command
        .args(["watch", "mounts", "--path", dir.to_str().unwrap()])
        .stdout(Stdio::piped());
    let mut watchctl = Process::spawn(command, "watchctl | head -1")?;
    let stdout = watchctl.child().stdout.take().expect("piped stdout");
    // `head -1`: one line, then the read end closes (the thread drops it).
    let (tx, first) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let read = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(read.map(|_| line));
    });
    wait_for_watches(&env, 1).await?;

    mounts::tmpfs(&dir.join("one"), "head-one", "size=1m")?;
    let line = first
        .recv_timeout(Duration::from_secs(10))
        .context("no line")??;
    ensure!(line.contains("attach") && line.contains("head"), "{line}");
    // No other mount under the path from here on: only the closed pipe can end it.
    let status = exit_within(&mut watchctl, Duration::from_secs(5))
        .context("watchctl did not notice its reader had gone")?;
    ensure!(status.success(), "{status}");
    Ok(())
}

async fn watchctl_status_and_errors() -> Result<()> {
    let env = Env::start("watchctl-status").await?;
    let out = env.watchctl().args(["status", "--json"]).output()?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    ensure!(
        v["version"] == env!("CARGO_PKG_VERSION") && v["sources"][0] == "mounts",
        "{v}"
    );
    let out = env.watchctl().arg("status").output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        text.contains(env!("CARGO_PKG_VERSION")) && text.contains("mounts"),
        "{text}"
    );

    let out = env
        .watchctl()
        .args(["watch", "mounts", "--path", "/nonexistent/dir"])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "a refused watch is a failure");
    ensure!(
        stderr.contains("/nonexistent/dir") && stderr.contains("NotFound"),
        "plain error: {stderr}"
    );

    let out = Command::new(watchd_e2e::watchctl_bin())
        .args(["--bus-address", "unix:path=/nonexistent/bus", "status"])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("/nonexistent/bus"),
        "names the address: {stderr}"
    );
    Ok(())
}

async fn bus_from_environment() -> Result<()> {
    let scratch = Scratch::new("env-bus")?;
    let bus = Bus::start(&scratch.path)?;
    let _daemon = Daemon::start(&bus, &scratch.path, "", true).await?;
    let out = Command::new(watchd_e2e::watchctl_bin())
        .arg("status")
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
        .output()?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(String::from_utf8_lossy(&out.stdout).contains("mounts"));
    Ok(())
}

async fn c_reader() -> Result<()> {
    let env = Env::start("c-reader").await?;
    let binary = env.scratch.join("watchd-dump");
    let compiled = Command::new("cc")
        .args(["-std=c99", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(repo().join("crates/watchd-proto/include"))
        .arg(repo().join("docs/examples/watchd-dump.c"))
        .arg("-o")
        .arg(&binary)
        .status()
        .context("cc (package gcc) is needed to build the C reader")?;
    ensure!(compiled.success(), "the C reader does not compile");
    let sub = env
        .client()
        .await?
        .subscribe(SubscribeOptions::default())
        .await?;
    sub.add_watch(
        42,
        "mounts",
        &WatchOptions::new().path(env.scratch.path.to_str().unwrap()),
    )
    .await?;
    let mut reader = Command::new(&binary);
    reader
        .stdin(Stdio::from(sub.into_pipe()))
        .stdout(Stdio::piped());
    let mut reader = Process::spawn(reader, "watchd-dump")?;
    let lines = lines_of(reader.child());
    let target = env.scratch.join("c");
    mounts::tmpfs(&target, "c-source", "size=1m")?;
    let line = lines
        .recv_timeout(Duration::from_secs(10))
        .context("the C reader printed nothing")?;
    for needle in [
        "seq=1 ",
        "type=2 ",
        "subtype=0 ",
        "tag=42 ",
        "fs_type=tmpfs",
        "source=c-source",
    ] {
        ensure!(
            line.contains(needle),
            "C reader line {line:?} lacks {needle:?}"
        );
    }
    ensure!(
        line.contains(&format!("mount_point={}", target.display())),
        "{line}"
    );
    Ok(())
}

/// A FILE credential cache as MIT writes it (version 4, empty header), holding only the
/// default principal `name@realm`: enough for the daemon to name the cache's principal.
fn file_ccache(name: &str, realm: &str) -> Vec<u8> {
    let mut out = vec![5, 4, 0, 0];
    out.extend(1u32.to_be_bytes()); // KRB5_NT_PRINCIPAL
    out.extend(1u32.to_be_bytes()); // one component
    for part in [realm, name] {
        out.extend((part.len() as u32).to_be_bytes());
        out.extend(part.as_bytes());
    }
    out
}

/// docs/examples/krb5-signal.py, run as uid 1000 against the daemon, prints the signals for
/// a FILE cache being created and destroyed.
async fn pygobject_signal_example() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    use watchd_e2e::polkit::{OTHER_UID, as_user};

    let env = Env::start("pygobject").await?;
    let dir = env.scratch.join("ccache");
    std::fs::create_dir(&dir)?;
    std::fs::set_permissions(&env.scratch.path, std::fs::Permissions::from_mode(0o755))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777))?;
    let cache = dir.join("krb5cc_1000");
    let name = format!("FILE:{}", cache.display());
    // Debian's python3, which has PyGObject (python3-gi); not whichever python3 is first
    // in PATH.
    let mut command = Command::new("/usr/bin/python3");
    command
        .arg(repo().join("docs/examples/krb5-signal.py"))
        .arg(&name)
        .env("DBUS_SYSTEM_BUS_ADDRESS", &env.bus.address)
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    as_user(&mut command, OTHER_UID);
    let mut example = Process::spawn(command, "krb5-signal.py")?;
    let stdout = example.child().stdout.take().context("stdout")?;
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    // The example has set its watch once the daemon holds one.
    let client = env.client().await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while client.status().await?.watches < 1 {
        example.check_running()?;
        ensure!(
            std::time::Instant::now() < deadline,
            "the example set no watch"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let next_line = |what: &str| -> Result<String> {
        lines
            .recv_timeout(Duration::from_secs(10))
            .with_context(|| format!("the example printed nothing for {what}"))
    };
    std::fs::write(&cache, file_ccache("alice", "WATCHD.TEST"))?;
    std::os::unix::fs::chown(&cache, Some(OTHER_UID), Some(OTHER_UID))?;
    // Written, then chowned: the first write is root's file and does not count.
    std::fs::write(&cache, file_ccache("alice", "WATCHD.TEST"))?;
    let created = next_line("created")?;
    ensure!(
        created.contains("created")
            && created.contains(&name)
            && created.contains("alice@WATCHD.TEST"),
        "created: {created:?}"
    );
    std::fs::remove_file(&cache)?;
    let destroyed = next_line("destroyed")?;
    ensure!(
        destroyed.contains("destroyed") && destroyed.contains(&name),
        "destroyed: {destroyed:?}"
    );
    Ok(())
}
