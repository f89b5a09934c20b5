//! The real `polkitd` on a test's private bus, and the other users tests run clients as.
//!
//! - [`Polkit::start`]: `/usr/lib/polkit-1/polkitd` (package `polkitd`) in a mount namespace
//!   of its own, in which `/usr/share/polkit-1/actions` holds only watchd's
//!   `data/org.watchd.Watchd1.policy`, `/etc/polkit-1/rules.d` holds only the rules the test
//!   gives, and `/usr/share/polkit-1/rules.d` is empty (no distribution rules: the results
//!   are the same on every machine). The test's own view of those directories, which
//!   parallel tests share, is untouched. It connects to the bus named by
//!   `DBUS_SYSTEM_BUS_ADDRESS`, whose policy (`dbus/private-bus.conf.in`) includes polkit's
//!   own bus policy, so it owns `org.freedesktop.PolicyKit1` there as user `polkitd`.
//! - [`ensure_test_users`]: user names for uids 1000 and 1001 in the test namespace's
//!   `/etc/passwd` and `/etc/group`, which polkitd (`subject.user`) and dbus-daemon (it
//!   drops connections from a uid it cannot look up) need.
//! - [`as_user`], [`connect_as_user`]: a client process, or a bus connection, of another uid.
//!
//! polkitd is started as root and switches to user `polkitd` itself (it refuses to start as
//! that user: it cannot clear its groups). That switch clears the parent-death signal
//! [`Process::spawn`] sets, so the backstop for a test thread that dies without dropping
//! [`Polkit`] is the bus: the test's dbus-daemon keeps its parent-death signal, and polkitd
//! exits as soon as it loses its bus name.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::Permissions;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail, ensure};
use zbus::Variant;

use crate::{Process, repo};

/// The daemon, as the `polkitd` package installs it.
pub const POLKITD: &str = "/usr/lib/polkit-1/polkitd";
/// Its bus name.
pub const BUS_NAME: &str = "org.freedesktop.PolicyKit1";
/// A uid with no account on the test machines; [`ensure_test_users`] names it.
pub const TEST_UID: u32 = 1001;
/// A second unprivileged uid (an account on some machines, none on others).
pub const OTHER_UID: u32 = 1000;

/// The actions file watchd installs in `/usr/share/polkit-1/actions`.
pub fn actions_file() -> PathBuf {
    repo().join("data/org.watchd.Watchd1.policy")
}

/// The example rules file for administrators.
pub fn example_rules_file() -> PathBuf {
    repo().join("data/50-watchd-example.rules")
}

/// What polkit answered, as `pkcheck` reports it by exit status (0, 1, 2) or
/// `CheckAuthorization` by its `is_authorized` and `is_challenge`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Authorized,
    NotAuthorized,
    /// Authorized only after authentication (auth_self/auth_admin); without an agent and
    /// user interaction, a refusal.
    Challenge,
}

/// A running polkitd; stopped by its PID when dropped.
pub struct Polkit {
    pub process: Process,
    /// polkitd's stdout and stderr (rules loaded, JavaScript errors, `polkit.log()` lines).
    pub log: PathBuf,
    /// Where its actions and rules directories are (inside the test's scratch directory).
    pub dir: PathBuf,
    bus_address: String,
}

impl Polkit {
    /// Starts polkitd on the bus at `bus_address` with watchd's actions file as its only
    /// actions and `rules` (JavaScript; empty for none) as its only rules, and waits until it
    /// owns its bus name, by which time it has loaded both. Its files go to a new directory
    /// in `scratch_dir`, so a test may start several in turn.
    pub async fn start(bus_address: &str, scratch_dir: &Path, rules: &str) -> Result<Polkit> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        ensure!(
            Path::new(POLKITD).exists(),
            "{POLKITD} is missing: install the package polkitd"
        );
        ensure_test_users()?;
        // polkitd starts as root and switches to this user itself.
        nix::unistd::User::from_name("polkitd")?
            .context("no user polkitd (the package polkitd creates it)")?;

        let dir = scratch_dir.join(format!("polkit-{}", NEXT.fetch_add(1, Ordering::Relaxed)));
        let actions = dir.join("actions");
        let rules_dir = dir.join("rules.d");
        let vendor_rules = dir.join("vendor-rules.d");
        for d in [&actions, &rules_dir, &vendor_rules] {
            std::fs::create_dir_all(d)?;
        }
        // polkitd reads these, and reaches the bus socket in scratch_dir, as user polkitd.
        readable_by_all(scratch_dir, 0o711)?;
        for d in [&dir, &actions, &rules_dir, &vendor_rules] {
            readable_by_all(d, 0o755)?;
        }
        let installed = actions.join("org.watchd.Watchd1.policy");
        std::fs::copy(actions_file(), &installed)
            .with_context(|| actions_file().display().to_string())?;
        readable_by_all(&installed, 0o644)?;
        if !rules.is_empty() {
            let file = rules_dir.join("50-test.rules");
            std::fs::write(&file, rules)?;
            readable_by_all(&file, 0o644)?;
        }

        let binds = [
            (actions.as_path(), "/usr/share/polkit-1/actions"),
            (rules_dir.as_path(), "/etc/polkit-1/rules.d"),
            (vendor_rules.as_path(), "/usr/share/polkit-1/rules.d"),
        ];
        for (_, target) in binds {
            ensure!(
                Path::new(target).is_dir(),
                "{target} is missing (the package polkitd creates it)"
            );
        }
        let binds = binds
            .map(|(from, to)| Ok((c_path(from)?, CString::new(to)?)))
            .into_iter()
            .collect::<Result<Vec<_>>>()?;

        let log = dir.join("polkitd.log");
        let out = std::fs::File::create(&log)?;
        let mut command = Command::new(POLKITD);
        command
            .env("DBUS_SYSTEM_BUS_ADDRESS", bus_address)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        crate::sys::before_exec_private_mounts(&mut command, binds);
        let mut process = Process::spawn(command, "polkitd").with_context(|| {
            format!(
                "starting {POLKITD} in a mount namespace of its own, {} over \
                 /usr/share/polkit-1/actions and {} over /etc/polkit-1/rules.d",
                actions.display(),
                rules_dir.display()
            )
        })?;

        crate::wait_for_bus_name(bus_address, BUS_NAME, &mut process, &log).await?;
        Ok(Polkit {
            process,
            log,
            dir,
            bus_address: bus_address.to_owned(),
        })
    }

    /// Stops polkitd now (SIGTERM, then SIGKILL) and waits for it.
    pub fn stop(self) {
        drop(self);
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn log(&self) -> String {
        read_log(&self.log)
    }

    pub fn bus_address(&self) -> &str {
        &self.bus_address
    }

    /// `pkaction` aimed at this polkitd.
    pub fn pkaction(&self) -> Command {
        pkaction(&self.bus_address)
    }

    /// `pkcheck` aimed at this polkitd.
    pub fn pkcheck(&self) -> Command {
        pkcheck(&self.bus_address)
    }

    /// `pkcheck --action-id ACTION --process PID`: polkit's decision for that process
    /// (pkcheck runs as root, which may ask about any process). Any other outcome than 0, 1
    /// or 2 is an error showing pkcheck's output and polkitd's log.
    pub fn check_process(&self, action: &str, pid: u32) -> Result<Decision> {
        let out = self
            .pkcheck()
            .args(["--action-id", action, "--process", &pid.to_string()])
            .output()
            .context("running pkcheck (package pkexec or polkitd)")?;
        match out.status.code() {
            Some(0) => Ok(Decision::Authorized),
            Some(1) => Ok(Decision::NotAuthorized),
            Some(2) => Ok(Decision::Challenge),
            _ => bail!(
                "pkcheck --action-id {action} --process {pid}: {}\nstdout: {}\nstderr: {}\n\
                 polkitd's log:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log()
            ),
        }
    }

    /// `CheckAuthorization` over D-Bus for the subject `system-bus-name` `bus_name`, without
    /// user interaction, asked by a root connection of the test: what watchd asks for a
    /// caller.
    pub async fn check_bus_name(&self, bus_name: &str, action: &str) -> Result<Decision> {
        let conn = zbus::connection::Builder::address(self.bus_address.as_str())
            .build()
            .await?;
        let subject = (
            "system-bus-name",
            HashMap::from([("name", Variant::from(bus_name))]),
        );
        let details: HashMap<&str, &str> = HashMap::new();
        let reply = conn
            .call_method(
                Some(BUS_NAME),
                "/org/freedesktop/PolicyKit1/Authority",
                Some("org.freedesktop.PolicyKit1.Authority"),
                "CheckAuthorization",
                &(subject, action, details, 0u32, ""),
            )
            .await
            .with_context(|| {
                format!(
                    "CheckAuthorization({bus_name}, {action}); polkitd's log:\n{}",
                    self.log()
                )
            })?;
        let (authorized, challenge, _details): (bool, bool, HashMap<String, String>) =
            reply.body().deserialize()?;
        Ok(match (authorized, challenge) {
            (true, _) => Decision::Authorized,
            (false, true) => Decision::Challenge,
            (false, false) => Decision::NotAuthorized,
        })
    }
}

fn read_log(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_else(|e| format!("({}: {e})", log.display()))
}

fn c_path(path: &Path) -> Result<CString> {
    Ok(CString::new(path.as_os_str().as_bytes())?)
}

/// Adds the `bits` to a path's permissions (never removes any).
fn readable_by_all(path: &Path, bits: u32) -> Result<()> {
    let mode = std::fs::metadata(path)?.mode() & 0o7777;
    if mode & bits != bits {
        std::fs::set_permissions(path, Permissions::from_mode(mode | bits))
            .with_context(|| format!("chmod {}", path.display()))?;
    }
    Ok(())
}

/// `pkaction` with `DBUS_SYSTEM_BUS_ADDRESS` set to `bus_address`.
pub fn pkaction(bus_address: &str) -> Command {
    let mut command = Command::new("pkaction");
    command.env("DBUS_SYSTEM_BUS_ADDRESS", bus_address);
    command
}

/// `pkcheck` with `DBUS_SYSTEM_BUS_ADDRESS` set to `bus_address`.
pub fn pkcheck(bus_address: &str) -> Command {
    let mut command = Command::new("pkcheck");
    command.env("DBUS_SYSTEM_BUS_ADDRESS", bus_address);
    command
}

/// Makes `command` run with uid and gid `uid` and no supplementary groups (std clears them
/// when the parent is root). Set this before [`Process::spawn`], whose parent-death signal
/// must be set after the switch (a change of uid clears it).
pub fn as_user(command: &mut Command, uid: u32) {
    command.uid(uid).gid(uid);
}

/// A `sleep` running as `uid` for as long as the returned [`Process`] lives: a subject for
/// `pkcheck --process`.
pub fn sleeper_as_user(uid: u32) -> Result<Process> {
    let mut command = Command::new("sleep");
    command.arg("300").stdin(Stdio::null());
    as_user(&mut command, uid);
    Process::spawn(command, "sleep (as another user)")
}

/// A bus connection of `uid`: the socket is connected by a child process running as `uid`
/// (dbus-daemon records the uid and PID of whoever called connect(2)), which then runs
/// `sleep infinity`, so the connection's ProcessID stays a live process of that uid while the
/// returned [`Process`] lives. The test owns the connection itself.
pub async fn connect_as_user(bus_address: &str, uid: u32) -> Result<(zbus::Connection, Process)> {
    let mut command = Command::new("sleep");
    command.arg("infinity").stdin(Stdio::null());
    as_user(&mut command, uid);
    connect_from(bus_address, command, uid).await
}

/// A bus connection whose socket is connected by `command`'s process just before it execs
/// (after any uid switch of the Command itself), authenticating as `uid`. The process is
/// kept running as the connection's ProcessID while the returned [`Process`] lives.
pub async fn connect_from(
    bus_address: &str,
    mut command: Command,
    uid: u32,
) -> Result<(zbus::Connection, Process)> {
    let path = bus_address
        .strip_prefix("unix:path=")
        .and_then(|p| p.split(',').next())
        .with_context(|| format!("not a unix:path= address: {bus_address}"))?;
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, socket};
    let socket = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("socket")?;
    let address = UnixAddr::new(path).with_context(|| format!("socket path {path}"))?;
    // The child connects the socket, as its own uid; the descriptor is shared with the
    // parent (same open socket), so the parent's copy is the connected socket; close-on-exec
    // keeps it out of `sleep`.
    crate::sys::before_exec_connect(&mut command, socket.as_raw_fd(), address);
    let holder = Process::spawn(command, "sleep (bus connection of another user)")
        .with_context(|| format!("connecting to {path} as uid {uid}"))?;
    let conn = zbus::connection::Builder::unix_stream(UnixStream::from(socket))
        .user_id(uid)
        .build()
        .await
        .with_context(|| format!("D-Bus handshake as uid {uid} on {bus_address}"))?;
    Ok((conn, holder))
}

/// The user name of `uid` (in this namespace, after [`ensure_test_users`]).
pub fn user_name(uid: u32) -> Result<String> {
    Ok(nix::unistd::User::from_uid(uid.into())?
        .with_context(|| format!("uid {uid} has no name (ensure_test_users?)"))?
        .name)
}

/// Gives uids [`OTHER_UID`] and [`TEST_UID`] user and group names where they have none:
/// `watchd-test1000` and `watchd-test1001`, with groups of the same names and numbers.
/// Copies of `/etc/passwd` and `/etc/group` with the lines added are bind-mounted over the
/// originals in this process's mount namespace, whose mounts do not propagate to the host
/// (it refuses to run in its parent's namespace); the copies' own files are removed at once,
/// so nothing is left behind. Runs once per process; later calls return the first result.
pub fn ensure_test_users() -> Result<()> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| add_test_users().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn add_test_users() -> Result<()> {
    use nix::mount::{MsFlags, mount};
    // The parent (cargo, a shell) is in the namespace this process was started in; PID 1's
    // may be unreadable even to root in a sandbox.
    let ns = |p: &str| std::fs::metadata(p).map(|m| m.ino()).context(p.to_owned());
    let parent = format!("/proc/{}/ns/mnt", nix::unistd::getppid());
    ensure!(
        ns("/proc/self/ns/mnt")? != ns(&parent)?,
        "refusing to change /etc/passwd in the mount namespace this process started in: \
         call enter_private_mount_namespace first"
    );
    // Already private after enter_private_mount_namespace; again, so that nothing below can
    // propagate anywhere whoever called this.
    crate::make_root_private()?;

    let users = [
        (OTHER_UID, "watchd-test1000"),
        (TEST_UID, "watchd-test1001"),
    ];
    let mut copies = Vec::new();
    for (file, line) in [
        (
            "/etc/passwd",
            (|uid: u32, name: &str| format!("{name}:x:{uid}:{uid}::/nonexistent:/usr/sbin/nologin"))
                as fn(u32, &str) -> String,
        ),
        ("/etc/group", |gid, name| format!("{name}:x:{gid}:")),
    ] {
        let text = std::fs::read_to_string(file).context(file)?;
        let taken = |id: u32| {
            text.lines()
                .any(|l| l.split(':').nth(2) == Some(id.to_string().as_str()))
        };
        let added: Vec<String> = users
            .iter()
            .filter(|(id, _)| !taken(*id))
            .map(|(id, name)| line(*id, name))
            .collect();
        if !added.is_empty() {
            let mut new = text.clone();
            if !new.is_empty() && !new.ends_with('\n') {
                new.push('\n');
            }
            for l in added {
                new.push_str(&l);
                new.push('\n');
            }
            copies.push((file, new));
        }
    }
    if copies.is_empty() {
        return Ok(());
    }
    let dir = std::env::temp_dir().join(format!("watchd-e2e-{}-users", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = (|| -> Result<()> {
        for (file, text) in &copies {
            let copy = dir.join(Path::new(file).file_name().context("file name")?);
            std::fs::write(&copy, text)?;
            std::fs::set_permissions(&copy, Permissions::from_mode(0o644))?;
            mount(
                Some(&copy),
                *file,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .with_context(|| format!("bind-mounting {} over {file}", copy.display()))?;
        }
        Ok(())
    })();
    // The mounts keep the files' contents; their names go.
    let _ = std::fs::remove_dir_all(&dir);
    result
}
