//! The polkit files watchd ships, read by the real polkitd (`/usr/lib/polkit-1/polkitd`) on
//! each test's private bus, in a mount namespace of its own where they are polkit's only
//! actions and rules: `data/org.watchd.Watchd1.policy` says what it should, rules in
//! `/etc/polkit-1/rules.d` decide for a process of another uid, the example rules file for
//! administrators loads and does what its comments say, and a bus name on the private bus is
//! a subject polkitd resolves (what watchd asks about a caller).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use watchd_e2e::polkit::{
    Decision, Polkit, TEST_UID, actions_file, connect_as_user, example_rules_file, sleeper_as_user,
    user_name,
};
use watchd_e2e::{Bus, Scratch, Trial, wait_until};

use crate::trial;

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "polkit::polkitd_serves_every_action_of_the_actions_file_with_its_texts_and_defaults",
            actions,
        ),
        trial(
            "polkit::pkcheck_for_another_uid_follows_allow_any_and_then_the_rules_directory",
            pkcheck_other_uid,
        ),
        trial(
            "polkit::the_example_rules_file_loads_and_decides_as_its_comments_say",
            example_rules,
        ),
        trial(
            "polkit::a_bus_name_on_the_private_bus_is_a_subject_polkitd_resolves",
            bus_name_subject,
        ),
        trial(
            "polkit::polkitd_sees_its_own_directories_only_and_stops_by_pid_or_with_the_bus",
            isolation_and_lifecycle,
        ),
    ]
}

const MOUNTS: &str = "org.watchd.Watchd1.watch-mounts";
const DEVICES: &str = "org.watchd.Watchd1.watch-devices";
const FILESYSTEM: &str = "org.watchd.Watchd1.watch-filesystem";
const SUPERBLOCK: &str = "org.watchd.Watchd1.watch-superblock";
const MANAGE: &str = "org.watchd.Watchd1.manage";

/// Every action and its implicit authorizations: any, inactive, active. allow_any is what
/// the daemon's fallback applies, and what polkitd applies to a caller without a session.
#[rustfmt::skip]
const ACTIONS: [(&str, &str, &str, &str); 10] = [
    ("org.watchd.Watchd1.manage", "auth_admin", "auth_admin", "auth_admin_keep"),
    ("org.watchd.Watchd1.watch-devices", "yes", "yes", "yes"),
    ("org.watchd.Watchd1.watch-files", "yes", "yes", "yes"),
    ("org.watchd.Watchd1.watch-filesystem", "auth_admin", "auth_admin", "auth_admin_keep"),
    ("org.watchd.Watchd1.watch-krb5", "yes", "yes", "yes"),
    ("org.watchd.Watchd1.watch-mounts", "yes", "yes", "yes"),
    ("org.watchd.Watchd1.watch-other-users-keys", "auth_admin", "auth_admin", "auth_admin_keep"),
    ("org.watchd.Watchd1.watch-other-users-quota", "auth_admin", "auth_admin", "auth_admin_keep"),
    ("org.watchd.Watchd1.watch-own-keys", "yes", "yes", "yes"),
    ("org.watchd.Watchd1.watch-superblock", "auth_admin", "auth_admin", "yes"),
];

/// A scratch directory, a private bus, and polkitd on it (stopped first when dropped).
struct World {
    polkit: Option<Polkit>,
    bus: Bus,
    scratch: Scratch,
}

impl World {
    async fn start(label: &str, rules: &str) -> Result<World> {
        let scratch = Scratch::new(label)?;
        let bus = Bus::start(&scratch.path)?;
        let polkit = Polkit::start(&bus.address, &scratch.path, rules).await?;
        Ok(World {
            polkit: Some(polkit),
            bus,
            scratch,
        })
    }

    /// Stops polkitd and starts another with `rules`.
    async fn restart(&mut self, rules: &str) -> Result<&Polkit> {
        if let Some(old) = self.polkit.take() {
            old.stop();
        }
        let polkit = Polkit::start(&self.bus.address, &self.scratch.path, rules).await?;
        Ok(self.polkit.insert(polkit))
    }

    fn polkit(&self) -> &Polkit {
        self.polkit.as_ref().expect("polkitd is running")
    }
}

/// `pkcheck --process` must answer `want` for `action`.
fn expect_process(polkit: &Polkit, action: &str, pid: u32, want: Decision) -> Result<()> {
    let got = polkit.check_process(action, pid)?;
    ensure!(
        got == want,
        "pkcheck --action-id {action} --process {pid}: {got:?}, expected {want:?}; \
         polkitd's log:\n{}",
        polkit.log()
    );
    Ok(())
}

/// CheckAuthorization for the bus name must answer `want` for `action`.
async fn expect_bus_name(polkit: &Polkit, action: &str, name: &str, want: Decision) -> Result<()> {
    let got = polkit.check_bus_name(name, action).await?;
    ensure!(
        got == want,
        "CheckAuthorization(system-bus-name {name}, {action}): {got:?}, expected {want:?}; \
         polkitd's log:\n{}",
        polkit.log()
    );
    Ok(())
}

/// The lines of polkitd's log that report a problem with rules or anything else.
fn error_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("error") || l.contains("warning") || l.contains("critical")
        })
        .collect()
}

/// The text of `<element>` in the `<action>` called `id` of the actions file.
fn element_of_action(xml: &str, id: &str, element: &str) -> Option<String> {
    let start = xml.find(&format!("<action id=\"{id}\">"))?;
    let action = &xml[start..start + xml[start..].find("</action>")?];
    let open = format!("<{element}>");
    let from = action.find(&open)? + open.len();
    let to = from + action[from..].find(&format!("</{element}>"))?;
    Some(action[from..to].trim().to_owned())
}

/// `key: value` lines of `pkaction --verbose`.
fn pkaction_fields(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.trim().split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// pkaction, through polkitd, shows exactly the actions of the file (so polkitd read ours
/// and no other), each with the file's description and message, vendor watchd, and the
/// implicit authorizations the project decided on.
async fn actions() -> Result<()> {
    let world = World::start("pk-actions", "").await?;
    let polkit = world.polkit();
    let xml = std::fs::read_to_string(actions_file())?;

    let out = polkit.pkaction().output().context("running pkaction")?;
    ensure!(
        out.status.success(),
        "pkaction: {}; polkitd's log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        polkit.log()
    );
    let mut listed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    listed.sort();
    let expected: Vec<&str> = ACTIONS.iter().map(|a| a.0).collect();
    ensure!(
        listed == expected,
        "pkaction lists {listed:?}, the actions file should define exactly {expected:?}"
    );

    for (id, any, inactive, active) in ACTIONS {
        let out = polkit
            .pkaction()
            .args(["--verbose", "--action-id", id])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success(),
            "pkaction --verbose --action-id {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let fields = pkaction_fields(&text);
        let field = |k: &str| fields.get(k).map(String::as_str).unwrap_or("(missing)");
        for element in ["description", "message"] {
            let in_file = element_of_action(&xml, id, element)
                .with_context(|| format!("{id} has no <{element}> in the actions file"))?;
            ensure!(!in_file.is_empty(), "{id}: empty <{element}>");
            ensure!(
                field(element) == in_file,
                "{id}: polkitd's {element} is {:?}, the file's {in_file:?}\n{text}",
                field(element)
            );
        }
        ensure!(field("vendor") == "watchd", "{id}: vendor\n{text}");
        let implicit = [
            ("implicit any", any),
            ("implicit inactive", inactive),
            ("implicit active", active),
        ];
        for (key, want) in implicit {
            ensure!(field(key) == want, "{id}: {key} should be {want}\n{text}");
        }
    }
    Ok(())
}

/// A process of uid 1001 (no session, so allow_any applies) may watch mounts and devices,
/// needs an administrator for filesystem-wide events, superblock events and administration;
/// root may do anything. Then a rule in /etc/polkit-1/rules.d naming the user denies mounts
/// to it and leaves devices alone: polkitd read our rules directory and knew the user name.
async fn pkcheck_other_uid() -> Result<()> {
    let mut world = World::start("pk-check", "").await?;
    let user = user_name(TEST_UID)?;
    let sleeper = sleeper_as_user(TEST_UID)?;
    let pid = sleeper.pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    let ids = format!("{TEST_UID} {TEST_UID} {TEST_UID} {TEST_UID}");
    ensure!(
        line("Uid:") == ids && line("Gid:") == ids && line("Groups:").is_empty(),
        "the subject should run as uid/gid {TEST_UID} with no groups:\n{status}"
    );

    let polkit = world.polkit();
    expect_process(polkit, MOUNTS, pid, Decision::Authorized)?;
    expect_process(polkit, DEVICES, pid, Decision::Authorized)?;
    expect_process(polkit, FILESYSTEM, pid, Decision::Challenge)?;
    expect_process(polkit, SUPERBLOCK, pid, Decision::Challenge)?;
    expect_process(polkit, MANAGE, pid, Decision::Challenge)?;
    expect_process(polkit, MANAGE, std::process::id(), Decision::Authorized)?;
    let errors = error_lines(&polkit.log()).join("\n");
    ensure!(
        errors.is_empty(),
        "polkitd reported problems (does uid {TEST_UID} have a name?):\n{errors}"
    );

    let rules = format!(
        r#"polkit.addRule(function(action, subject) {{
    if (action.id == "{MOUNTS}" && subject.user == "{user}") {{
        polkit.log("test rule: no mount watches for " + subject.user);
        return polkit.Result.NO;
    }}
}});
"#
    );
    let polkit = world.restart(&rules).await?;
    expect_process(polkit, MOUNTS, pid, Decision::NotAuthorized)?;
    expect_process(polkit, DEVICES, pid, Decision::Authorized)?;
    expect_process(polkit, MOUNTS, std::process::id(), Decision::Authorized)?;
    let log = polkit.log();
    ensure!(
        log.contains(&format!("test rule: no mount watches for {user}")),
        "the rule's polkit.log() line is missing from polkitd's log:\n{log}"
    );
    drop(sleeper);
    Ok(())
}

/// data/50-watchd-example.rules as shipped: polkitd compiles and runs it without an error,
/// and it changes nothing for an ordinary user. Then a copy whose group "sudo" and user
/// "guest" are the test user's (what an administrator does when copying it): filesystem-wide
/// and superblock events are allowed without authentication, mounts are refused. And a
/// broken rules file does show up as errors in the log, so the first check means something.
async fn example_rules() -> Result<()> {
    let example = std::fs::read_to_string(example_rules_file())?;
    let mut world = World::start("pk-example", &example).await?;
    let user = user_name(TEST_UID)?;
    let group = nix::unistd::Group::from_gid(TEST_UID.into())?
        .with_context(|| format!("gid {TEST_UID} has no name"))?
        .name;
    let sleeper = sleeper_as_user(TEST_UID)?;
    let pid = sleeper.pid();

    let polkit = world.polkit();
    let log = polkit.log();
    let errors = error_lines(&log);
    ensure!(
        errors.is_empty() && log.contains("Finished loading, compiling and executing 1 rules"),
        "polkitd did not load the example rules cleanly:\n{log}"
    );
    expect_process(polkit, MOUNTS, pid, Decision::Authorized)?;
    expect_process(polkit, FILESYSTEM, pid, Decision::Challenge)?;
    expect_process(polkit, SUPERBLOCK, pid, Decision::Challenge)?;

    ensure!(
        example.contains("subject.isInGroup(\"sudo\")")
            && example.contains("subject.user == \"guest\""),
        "the example no longer names group sudo and user guest: update this test"
    );
    let site = example
        .replace("\"sudo\"", &format!("\"{group}\""))
        .replace("\"guest\"", &format!("\"{user}\""));
    let polkit = world.restart(&site).await?;
    let errors = error_lines(&polkit.log()).join("\n");
    ensure!(errors.is_empty(), "polkitd reported:\n{errors}");
    expect_process(polkit, FILESYSTEM, pid, Decision::Authorized)?;
    expect_process(polkit, SUPERBLOCK, pid, Decision::Authorized)?;
    expect_process(polkit, MOUNTS, pid, Decision::NotAuthorized)?;
    expect_process(polkit, DEVICES, pid, Decision::Authorized)?;
    expect_process(polkit, MANAGE, pid, Decision::Challenge)?;
    let log = polkit.log();
    ensure!(
        log.contains(&format!("watchd: refusing mount watches to {user}")),
        "the example's polkit.log() line is missing:\n{log}"
    );

    let broken = "polkit.addRule(function(action, subject) {\n    return polkit.Result.YES;\n";
    let polkit = world.restart(broken).await?;
    let log = polkit.log();
    ensure!(
        !error_lines(&log).is_empty(),
        "a rules file with a syntax error left no error in polkitd's log, so a clean log \
         proves nothing:\n{log}"
    );
    expect_process(polkit, MOUNTS, pid, Decision::Authorized)?;
    drop(sleeper);
    Ok(())
}

/// A connection of uid 1001 on the private bus, named by its unique name: polkitd asks the
/// bus who that is and decides for uid 1001 (allow_any, then rules), as it will for watchd's
/// callers when the bus cannot hand over a pidfd.
async fn bus_name_subject() -> Result<()> {
    let mut world = World::start("pk-busname", "").await?;
    let (conn, holder) = connect_as_user(&world.bus.address, TEST_UID).await?;
    let name = conn
        .unique_name()
        .context("the connection has no unique name")?
        .to_string();

    let root = zbus::connection::Builder::address(world.bus.address.as_str())
        .build()
        .await?;
    let dbus = zbus::fdo::DBusProxy::new(&root).await?;
    let bus_name = zbus::names::BusName::try_from(name.as_str())?;
    let uid = dbus.get_connection_unix_user(bus_name.clone()).await?;
    let pid = dbus.get_connection_unix_process_id(bus_name).await?;
    ensure!(
        uid == TEST_UID && pid == holder.pid(),
        "the bus says {name} is uid {uid} pid {pid}, expected uid {TEST_UID} pid {}",
        holder.pid()
    );

    let polkit = world.polkit();
    expect_bus_name(polkit, MOUNTS, &name, Decision::Authorized).await?;
    expect_bus_name(polkit, FILESYSTEM, &name, Decision::Challenge).await?;
    let out = polkit
        .pkcheck()
        .args(["--action-id", MOUNTS, "--system-bus-name", &name])
        .output()?;
    ensure!(
        out.status.code() == Some(0),
        "pkcheck --system-bus-name {name}: {} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );

    let rules = format!(
        "polkit.addRule(function(action, subject) {{\n    \
         if (action.id == \"{MOUNTS}\" && subject.user == \"{}\") {{ return polkit.Result.NO; }}\n}});\n",
        user_name(TEST_UID)?
    );
    let polkit = world.restart(&rules).await?;
    expect_bus_name(polkit, MOUNTS, &name, Decision::NotAuthorized).await?;
    expect_bus_name(polkit, DEVICES, &name, Decision::Authorized).await?;
    drop(conn);
    drop(holder);
    Ok(())
}

/// Mount points listed in a mountinfo file.
fn mount_points(mountinfo: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .collect()
}

fn listing(dir: &str) -> Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| dir.to_owned())?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    names.sort();
    Ok(names)
}

/// polkitd runs as user polkitd with the three directories bind-mounted in its own
/// namespace; the test's namespace has none of those mounts and sees the host's actions
/// directory; the host's /etc/passwd has no test users. Stop by PID is prompt, and polkitd
/// exits by itself when its bus goes away (the backstop when a test dies without Drop).
async fn isolation_and_lifecycle() -> Result<()> {
    let scratch = Scratch::new("pk-life")?;
    let bus = Bus::start(&scratch.path)?;
    let polkit = Polkit::start(&bus.address, &scratch.path, "").await?;
    let pid = polkit.pid();

    let polkitd_user = nix::unistd::User::from_name("polkitd")?.context("user polkitd")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap_or("");
    ensure!(
        uid_line
            .split_whitespace()
            .skip(1)
            .all(|u| u == polkitd_user.uid.to_string()),
        "polkitd should run as polkitd ({}): {uid_line}",
        polkitd_user.uid
    );

    let dirs = [
        "/usr/share/polkit-1/actions",
        "/etc/polkit-1/rules.d",
        "/usr/share/polkit-1/rules.d",
    ];
    let theirs = mount_points(&std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))?);
    let ours = mount_points(&std::fs::read_to_string("/proc/self/mountinfo")?);
    for dir in dirs {
        ensure!(
            theirs.iter().any(|p| p == dir),
            "{dir} is not a mount in polkitd's namespace"
        );
        ensure!(
            !ours.iter().any(|p| p == dir),
            "{dir} is a mount in the test's namespace"
        );
    }
    let seen_by_polkitd = listing(&format!("/proc/{pid}/root/usr/share/polkit-1/actions"))?;
    ensure!(
        seen_by_polkitd == ["org.watchd.Watchd1.policy"],
        "polkitd's actions directory: {seen_by_polkitd:?}"
    );
    // The parent (cargo) is in the namespace the test binary started in: the host's.
    let host = format!("/proc/{}/root", nix::unistd::getppid());
    ensure!(
        listing("/usr/share/polkit-1/actions")?
            == listing(&format!("{host}/usr/share/polkit-1/actions"))?,
        "the test's actions directory differs from the host's"
    );
    let host_passwd = std::fs::read_to_string(format!("{host}/etc/passwd"))?;
    ensure!(
        !host_passwd.contains("watchd-test"),
        "the host's /etc/passwd has a test user"
    );
    let our_passwd = std::fs::read_to_string("/etc/passwd")?;
    ensure!(
        our_passwd
            .lines()
            .any(|l| l.split(':').nth(2) == Some(TEST_UID.to_string().as_str())),
        "uid {TEST_UID} has no line in the test namespace's /etc/passwd"
    );

    let started = Instant::now();
    polkit.stop();
    ensure!(
        started.elapsed() < Duration::from_secs(4),
        "polkitd ignored SIGTERM (stopping took {:?})",
        started.elapsed()
    );
    ensure!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "polkitd {pid} is still there after stop"
    );

    let mut polkit = Polkit::start(&bus.address, &scratch.path, "").await?;
    drop(bus);
    wait_until(
        Duration::from_secs(10),
        "polkitd to exit without its bus",
        || Ok(polkit.process.check_running().is_err()),
    )
    .map_err(|e| anyhow::anyhow!("{e:#}; polkitd's log:\n{}", polkit.log()))?;
    let log = polkit.log();
    if !log.contains("Lost the name") {
        bail!("polkitd exited without saying it lost its name:\n{log}");
    }
    Ok(())
}
