//! What the end-to-end tests stand on: a private mount namespace, a private `dbus-daemon`
//! carrying the project's real bus policy, the real `watchd` and `watchctl` binaries, and
//! helpers for real mounts. Everything started here is stopped by its PID when dropped.
//!
//! - [`enter_private_mount_namespace`]: called once by the test binary's `main`, before any
//!   thread exists, so every test, daemon and mount lives in a namespace of its own.
//! - [`Env`]: one bus plus one daemon, and a scratch directory that is unmounted and
//!   removed afterwards.
//! - [`mounts`]: mount, remount, move and unmount with the syscalls themselves.
//! - [`vm`]: a qemu VM booting a kernel that has what this machine's lacks (watch queues).
//! - [`nspawn`]: a Debian 12 container, booted or not, for the package and the README.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use watchd_client::{EventStream, SubscribeOptions, WatchOptions};

pub use libtest_mimic::{Arguments, Failed, Trial};
pub mod bench;
pub mod krb5;
pub mod nspawn;
pub mod polkit;
pub mod sys;
pub mod udev;
pub mod vm;

/// A prerequisite (a tool, a package, a kernel) that cannot be had here: a test skips
/// outside CI and fails in it ([`or_skip`]). `install` names the Debian packages to install.
#[derive(Debug)]
pub struct Unavailable {
    pub what: String,
    pub install: &'static str,
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (install: {})", self.what, self.install)
    }
}

impl std::error::Error for Unavailable {}

/// `outcome`, or `None` (skip, with the reason printed) outside CI when it failed for an
/// [`Unavailable`] prerequisite. In CI, which installs them, that fails the test.
pub fn or_skip<T>(label: &str, outcome: Result<T>) -> Result<Option<T>> {
    match outcome {
        Ok(value) => Ok(Some(value)),
        Err(e) if e.downcast_ref::<Unavailable>().is_some() => {
            if std::env::var_os("CI").is_some() {
                bail!("{e:#}: .ci/run installs these, so CI does not skip this test");
            }
            eprintln!("SKIP: {label}: {e:#}");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Debian installs some tools in /usr/sbin, which a CI's PATH may lack.
const SEARCH_PATH: &[&str] = &["/usr/sbin", "/usr/bin", "/sbin", "/bin"];

/// `name` on PATH (or in [`SEARCH_PATH`]), or [`Unavailable`] naming `package` and, to
/// install, `install`.
pub fn tool(name: &str, package: &str, install: &'static str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SEARCH_PATH.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Unavailable {
                what: format!("{name} not found (package {package})"),
                install,
            }
            .into()
        })
}

/// Root is needed for mounts and for owning the bus name under the real policy. Outside CI
/// a non-root run skips with the reason printed; in CI (CI=true) it fails.
pub fn check_root() -> Result<bool> {
    if nix::unistd::geteuid().is_root() {
        return Ok(true);
    }
    if std::env::var_os("CI").is_some() {
        bail!(
            "the end-to-end tests need root (mounts, bus policy) and CI runs as root: not skipping"
        );
    }
    eprintln!("SKIP: end-to-end tests need root (mount namespaces, mounts); run them with sudo");
    Ok(false)
}

/// Moves this process into a new mount namespace whose mounts do not propagate back to the
/// host. Must run while the process has a single thread.
pub fn enter_private_mount_namespace() -> Result<()> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).context("unshare(CLONE_NEWNS)")?;
    make_root_private()
}

/// Stops mounts under / from propagating out of this process's mount namespace.
pub fn make_root_private() -> Result<()> {
    use nix::mount::{MsFlags, mount};
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("making / private in the test namespace")
}

/// Runs an async test body on a runtime of its own and turns errors into test failures.
pub fn run<F: std::future::Future<Output = Result<()>>>(body: F) -> Result<(), Failed> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failed::from(format!("runtime: {e}")))?;
    runtime
        .block_on(body)
        .map_err(|e| Failed::from(format!("{e:#}")))
}

/// Where cargo put the workspace's binaries: beside the directory of this test binary.
fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    dir.join(name)
}

pub fn watchd_bin() -> PathBuf {
    fresh_or_panic(fresh_watchd())
}

pub fn watchctl_bin() -> PathBuf {
    fresh_or_panic(fresh_binary(
        "watchctl",
        &[
            "crates/watchctl/src",
            "crates/watchd-client/src",
            "crates/watchd-proto/src",
        ],
    ))
}

/// The `watchd` beside this executable, if it exists and is at least as new as its sources.
pub fn fresh_watchd() -> Result<PathBuf> {
    fresh_binary("watchd", &["crates/watchd/src", "crates/watchd-proto/src"])
}

fn fresh_or_panic(binary: Result<PathBuf>) -> PathBuf {
    binary.unwrap_or_else(|e| {
        panic!("{e:#}: run `cargo build --workspace` (or `cargo test --workspace`)")
    })
}

/// `cargo test -p watchd-e2e` does not rebuild the other packages' binaries, so a test could
/// quietly run yesterday's daemon. A binary older than any of its sources is refused.
fn fresh_binary(name: &str, sources: &[&str]) -> Result<PathBuf> {
    let path = binary(name);
    let built = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .with_context(|| format!("{} is missing", path.display()))?;
    let newest = sources
        .iter()
        .filter_map(|dir| newest_file(&repo().join(dir)))
        .max();
    if newest.is_some_and(|newest| newest > built) {
        bail!("{} is older than its sources", path.display());
    }
    Ok(path)
}

fn newest_file(dir: &Path) -> Option<std::time::SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let time = if path.is_dir() {
            newest_file(&path)
        } else {
            entry.metadata().and_then(|m| m.modified()).ok()
        };
        newest = newest.max(time);
    }
    newest
}

/// The repository's top directory.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the repo")
        .to_path_buf()
}

/// A child process that is stopped (SIGTERM, then SIGKILL) and reaped when dropped.
pub struct Process {
    child: Child,
    what: &'static str,
}

impl Process {
    pub fn spawn(command: Command, what: &'static str) -> Result<Process> {
        Process::spawn_in(command, what, false)
    }

    /// [`Process::spawn`] as systemd starts a service: in a session of its own, with no
    /// controlling terminal and stdin on /dev/null. A terminal such a process opens without
    /// `O_NOCTTY` becomes its controlling terminal, which is what the tests of files a
    /// caller names must be able to see.
    pub fn spawn_service(mut command: Command, what: &'static str) -> Result<Process> {
        command.stdin(Stdio::null());
        Process::spawn_in(command, what, true)
    }

    fn spawn_in(mut command: Command, what: &'static str, session: bool) -> Result<Process> {
        // Its own process group (a new session is one too), so a Ctrl-C at the terminal
        // reaches the test binary, whose Drop then stops the children in order.
        if !session {
            command.process_group(0);
        }
        // setsid detaches the child from the terminal; pdeathsig makes the child die if the
        // test thread that started it dies without running Drop, so nothing outlives the suite.
        sys::before_exec_session_and_pdeathsig(&mut command, session);
        let child = command
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        Ok(Process { child, what })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the process has already exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited early: {status}", self.what);
        }
        Ok(())
    }

    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, kill};
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = kill(pid, Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// A directory of this test's own, unmounted (lazily, recursively) and removed on drop.
pub struct Scratch {
    pub path: PathBuf,
}

impl Scratch {
    pub fn new(label: &str) -> Result<Scratch> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("watchd-e2e-{}-{n}-{label}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        Ok(Scratch {
            path: path.canonicalize()?,
        })
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        mounts::unmount_everything_under(&self.path);
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A private `dbus-daemon` configured by `dbus/private-bus.conf.in`: the system bus's
/// defaults with the project's own `dbus/org.watchd.Watchd1.conf` on top.
pub struct Bus {
    pub address: String,
    process: Process,
}

impl Bus {
    pub fn start(dir: &Path) -> Result<Bus> {
        let socket = dir.join("bus.socket");
        let config = dir.join("bus.conf");
        let policy = repo().join("dbus/org.watchd.Watchd1.conf");
        std::fs::write(&config, bus_config(&socket, &policy)?)?;
        let mut command = Command::new("dbus-daemon");
        command
            .arg(format!("--config-file={}", config.display()))
            .arg("--nofork")
            .arg("--nopidfile");
        // Its warnings (e.g. it cannot raise its fd limit in a sandbox) go to the scratch dir.
        command
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("dbus-daemon.log"))?);
        let mut process = Process::spawn(command, "dbus-daemon")
            .context("is dbus-daemon installed (package dbus-daemon)?")?;
        wait_until(Duration::from_secs(10), "dbus-daemon's socket", || {
            process.check_running()?;
            Ok(std::os::unix::net::UnixStream::connect(&socket).is_ok())
        })?;
        Ok(Bus {
            address: format!("unix:path={}", socket.display()),
            process,
        })
    }

    /// The `dbus-daemon`'s PID (for the tests that kill it).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}

/// `dbus/private-bus.conf.in` with the socket and policy paths filled in.
fn bus_config(socket: &Path, policy: &Path) -> Result<String> {
    let template = repo().join("dbus/private-bus.conf.in");
    let text =
        std::fs::read_to_string(&template).with_context(|| template.display().to_string())?;
    Ok(text
        .replace("@SOCKET@", &socket.display().to_string())
        .replace("@POLICY@", &policy.display().to_string()))
}

/// The real `watchd` on a bus, with a configuration file of the test's choosing.
pub struct Daemon {
    pub process: Process,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts watchd on `bus`, named with `--bus-address`, or with only
    /// `DBUS_SYSTEM_BUS_ADDRESS` in its environment when `via_environment`.
    pub async fn start(
        bus: &Bus,
        dir: &Path,
        config: &str,
        via_environment: bool,
    ) -> Result<Daemon> {
        Daemon::start_with_env(bus, dir, config, via_environment, &[]).await
    }

    /// [`Daemon::start`] with `env` added to the daemon's environment (e.g. `KRB5_CONFIG`,
    /// which names the krb5.conf it takes a caller's default credential cache from).
    pub async fn start_with_env(
        bus: &Bus,
        dir: &Path,
        config: &str,
        via_environment: bool,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Result<Daemon> {
        Daemon::spawn(bus, dir, config, via_environment, env, &[]).await
    }

    /// [`Daemon::start`] under a seccomp filter that fails each of `denied` with EPERM.
    pub async fn start_denying(
        bus: &Bus,
        dir: &Path,
        config: &str,
        denied: &[libc::c_long],
    ) -> Result<Daemon> {
        Daemon::spawn(bus, dir, config, false, &[], denied).await
    }

    async fn spawn(
        bus: &Bus,
        dir: &Path,
        config: &str,
        via_environment: bool,
        env: &[(&str, &std::ffi::OsStr)],
        denied: &[libc::c_long],
    ) -> Result<Daemon> {
        let config_file = dir.join("watchd.toml");
        std::fs::write(&config_file, config)?;
        let log = dir.join("watchd.log");
        // The daemon runs with the capabilities the shipped unit leaves it, not all of root's,
        // so a test fails where the service would.
        let mut command = Command::new("setpriv");
        command
            .arg(format!("--bounding-set=-all,{}", unit_capabilities()?))
            .arg("--")
            .arg(watchd_bin());
        if via_environment {
            command.env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address);
        } else {
            command.arg("--bus-address").arg(&bus.address);
        }
        command
            .arg("--config")
            .arg(&config_file)
            .env("WATCHD_LOG", "debug")
            .envs(env.iter().copied())
            .stderr(std::fs::File::create(&log)?);
        if !denied.is_empty() {
            sys::before_exec_deny_syscalls(&mut command, denied, libc::EPERM as u16);
        }
        let mut process = Process::spawn_service(command, "watchd").with_context(|| {
            format!(
                "{} (was it built? cargo test --workspace builds it)",
                watchd_bin().display()
            )
        })?;
        wait_for_bus_name(&bus.address, "org.watchd.Watchd1", &mut process, &log).await?;
        Ok(Daemon { process, log })
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Open descriptors of the daemon right now.
    pub fn fd_count(&self) -> Result<usize> {
        Ok(std::fs::read_dir(format!("/proc/{}/fd", self.pid()))?.count())
    }

    /// The daemon's resident memory now and at its peak (VmRSS, VmHWM), in KiB.
    pub fn memory_kib(&self) -> Result<(u64, u64)> {
        let pid = self.pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| -> Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .with_context(|| format!("no {name} in /proc/{pid}/status"))
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }
}

/// `systemd/watchd.service`'s CapabilityBoundingSet as setpriv takes it: "+sys_ptrace,…".
pub fn unit_capabilities() -> Result<String> {
    let unit = std::fs::read_to_string(repo().join("systemd/watchd.service"))?;
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .context("the unit has no CapabilityBoundingSet=")?;
    let caps: Vec<String> = line
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    Ok(caps.join(","))
}

/// One test's world: scratch directory, bus, daemon.
pub struct Env {
    pub daemon: Daemon,
    pub bus: Bus,
    pub scratch: Scratch,
}

impl Env {
    pub async fn start(label: &str) -> Result<Env> {
        Env::start_with_config(label, "").await
    }

    pub async fn start_with_config(label: &str, config: &str) -> Result<Env> {
        Env::start_with_config_and_env(label, config, &[]).await
    }

    /// [`Env::start_with_config`], the daemon started with `env` added to its environment.
    pub async fn start_with_config_and_env(
        label: &str,
        config: &str,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Result<Env> {
        let scratch = Scratch::new(label)?;
        let bus = Bus::start(&scratch.path)?;
        let daemon = Daemon::start_with_env(&bus, &scratch.path, config, false, env).await?;
        Ok(Env {
            daemon,
            bus,
            scratch,
        })
    }

    pub async fn client(&self) -> Result<watchd_client::Client> {
        Ok(watchd_client::Client::connect(Some(&self.bus.address)).await?)
    }

    /// A new subscription watching mounts at or under this test's scratch directory (other
    /// tests mount elsewhere in parallel), `options` added; returns its event stream.
    pub async fn watch_scratch(&self, tag: u64, options: WatchOptions) -> Result<EventStream> {
        let client = self.client().await?;
        let sub = client.subscribe(SubscribeOptions::default()).await?;
        let dir = self
            .scratch
            .path
            .to_str()
            .context("scratch path is not UTF-8")?;
        sub.add_watch(tag, "mounts", &options.path(dir)).await?;
        Ok(sub.into_events())
    }

    /// A `watchctl` command aimed at this environment's bus.
    pub fn watchctl(&self) -> Command {
        let mut command = Command::new(watchctl_bin());
        command.arg("--bus-address").arg(&self.bus.address);
        command
    }
}

/// The lines `process` prints on its (piped) stdout, as they come, read by a thread.
pub fn stdout_lines(process: &mut Process) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let stdout = process.child().stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits (10 s at most) until the process `process` owns `name` on the bus at `address`;
/// fails at once, with the process's log, if it exits first.
pub async fn wait_for_bus_name(
    address: &str,
    name: &str,
    process: &mut Process,
    log: &Path,
) -> Result<()> {
    let conn = zbus::connection::Builder::address(address).build().await?;
    let dbus = zbus::fdo::DBusProxy::new(&conn).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let log_text = || std::fs::read_to_string(log).unwrap_or_default();
    loop {
        if let Err(e) = process.check_running() {
            bail!("{e:#}; its log:\n{}", log_text());
        }
        if dbus.name_has_owner(name.try_into()?).await? {
            let owner = dbus
                .get_connection_unix_process_id(name.try_into()?)
                .await?;
            ensure!(
                owner == process.pid(),
                "{name} on {address} belongs to PID {owner}, not to the process started"
            );
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{name} was not taken within 10 s; the log:\n{}", log_text());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `ready` every 10 ms until it says yes, fails, or `limit` passes.
pub fn wait_until(
    limit: Duration,
    what: &str,
    mut ready: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !ready()? {
        if Instant::now() > deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Real mounts, by syscall, in the test's private namespace.
pub mod mounts {
    use super::*;
    use nix::mount::{MntFlags, MsFlags, mount, umount2};
    use std::os::unix::fs::MetadataExt;

    pub fn tmpfs(target: &Path, source: &str, options: &str) -> Result<()> {
        std::fs::create_dir_all(target)?;
        mount(
            Some(source),
            target,
            Some("tmpfs"),
            MsFlags::empty(),
            Some(options),
        )
        .with_context(|| format!("mount tmpfs on {}", target.display()))
    }

    pub fn remount_read_only(target: &Path) -> Result<()> {
        mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .with_context(|| format!("remount,ro {}", target.display()))
    }

    pub fn move_mount(from: &Path, to: &Path) -> Result<()> {
        std::fs::create_dir_all(to)?;
        mount(Some(from), to, None::<&str>, MsFlags::MS_MOVE, None::<&str>)
            .with_context(|| format!("mount --move {} {}", from.display(), to.display()))
    }

    pub fn unmount(target: &Path) -> Result<()> {
        umount2(target, MntFlags::empty()).with_context(|| format!("umount {}", target.display()))
    }

    /// `mount -o remount,bind,noexec`: a per-mount flag changed, the superblock untouched.
    pub fn bind_remount_noexec(target: &Path) -> Result<()> {
        mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .with_context(|| format!("remount,bind,noexec {}", target.display()))
    }

    /// `remount,OPTIONS`: the filesystem's own options changed (e.g. tmpfs `size=`), its
    /// flags and the mount's untouched.
    pub fn remount_with(target: &Path, options: &str) -> Result<()> {
        mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_REMOUNT,
            Some(options),
        )
        .with_context(|| format!("remount,{options} {}", target.display()))
    }

    /// `remount,rw`: the superblock writable again.
    pub fn remount_read_write(target: &Path) -> Result<()> {
        mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_REMOUNT,
            None::<&str>,
        )
        .with_context(|| format!("remount,rw {}", target.display()))
    }

    /// Makes the mount at `target` shared through `mount_setattr(2)` (which, unlike
    /// `mount(2)` with `MS_SHARED`, tells the namespace's watchers).
    pub fn make_shared_with_setattr(target: &Path) -> Result<()> {
        let path = std::ffi::CString::new(target.as_os_str().as_encoded_bytes())?;
        crate::sys::mount_setattr(&path, 0, 0, MsFlags::MS_SHARED.bits())
            .with_context(|| format!("mount_setattr(MS_SHARED) {}", target.display()))
    }

    /// A mount namespace of its own (a copy of the test's, private), held by a process
    /// that sleeps in it until dropped; commands run in it through `nsenter`.
    pub struct Namespace {
        holder: Process,
    }

    impl Namespace {
        pub fn new() -> Result<Namespace> {
            let mut command = Command::new("unshare");
            command.args(["--mount", "--propagation", "private", "--", "sleep", "3600"]);
            let holder = Process::spawn(command, "a mount namespace holder")?;
            let ours = std::fs::metadata("/proc/self/ns/mnt")?.ino();
            let theirs = format!("/proc/{}/ns/mnt", holder.pid());
            crate::wait_until(Duration::from_secs(5), "unshare made its namespace", || {
                Ok(std::fs::metadata(&theirs).is_ok_and(|m| m.ino() != ours))
            })?;
            Ok(Namespace { holder })
        }

        /// `program` to be run inside the namespace.
        pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
            let mut command = Command::new("nsenter");
            command
                .args(["-t", &self.holder.pid().to_string(), "-m", "--"])
                .arg(program);
            command
        }
    }

    /// Mount ids, parent ids, and devices of the mounts at `target`, from our mountinfo.
    pub fn mountinfo_line(target: &Path) -> Result<Vec<String>> {
        let text = std::fs::read_to_string("/proc/self/mountinfo")?;
        let wanted = target.to_str().context("utf-8 path")?;
        text.lines()
            .rev()
            .map(|l| l.split(' ').map(str::to_owned).collect::<Vec<_>>())
            .find(|f| f.get(4).map(String::as_str) == Some(wanted))
            .with_context(|| format!("{wanted} is not in /proc/self/mountinfo"))
    }

    pub fn unmount_everything_under(dir: &Path) {
        let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
            return;
        };
        let prefix = dir.to_string_lossy().into_owned();
        let mut points: Vec<String> = text
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
            .filter(|p| p == &prefix || p.starts_with(&format!("{prefix}/")))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            if let Err(e) = umount2(p.as_str(), MntFlags::MNT_DETACH)
                && e != nix::errno::Errno::EINVAL
            {
                eprintln!("cleanup: umount {p}: {e}");
            }
        }
    }
}

/// Runs another `watchd` on `bus`, as [`Daemon::start`] runs one (the unit's capabilities,
/// `--bus-address`, `config` written to `dir/name`), until it exits, 10 s at most: for what
/// a second instance does. Returns its exit status and its log.
pub fn run_watchd_to_exit(
    bus: &Bus,
    dir: &Path,
    name: &str,
    config: &str,
) -> Result<(std::process::ExitStatus, String)> {
    let config_file = dir.join(format!("{name}.toml"));
    std::fs::write(&config_file, config)?;
    let log = dir.join(format!("{name}.log"));
    let mut command = Command::new("setpriv");
    command
        .arg(format!("--bounding-set=-all,{}", unit_capabilities()?))
        .arg("--")
        .arg(watchd_bin())
        .arg("--bus-address")
        .arg(&bus.address)
        .arg("--config")
        .arg(&config_file)
        .env("WATCHD_LOG", "debug")
        .stderr(std::fs::File::create(&log)?);
    let mut process = Process::spawn_service(command, "a second watchd")?;
    let mut status = None;
    wait_until(Duration::from_secs(10), "the second watchd to exit", || {
        status = process.child().try_wait()?;
        Ok(status.is_some())
    })?;
    let status = status.expect("waited for it");
    Ok((status, std::fs::read_to_string(&log).unwrap_or_default()))
}

/// Sends `signal` to the process `pid` (a daemon this test started).
pub fn send_signal(pid: u32, signal: nix::sys::signal::Signal) -> Result<()> {
    let pid = i32::try_from(pid).context("PID out of range")?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
        .with_context(|| format!("kill -{signal} {pid}"))
}

/// Waits (10 s at most) until the daemon's log has a line containing every one of `parts`;
/// returns that line, or fails with the log.
pub fn wait_for_log_line(daemon: &Daemon, parts: &[&str]) -> Result<String> {
    let mut found = None;
    let waited = wait_until(
        Duration::from_secs(10),
        "a line in the daemon's log",
        || {
            found = daemon
                .log()
                .lines()
                .find(|l| parts.iter().all(|p| l.contains(p)))
                .map(str::to_owned);
            Ok(found.is_some())
        },
    );
    match (waited, found) {
        (Ok(()), Some(line)) => Ok(line),
        _ => bail!(
            "no line with all of {parts:?} in the daemon's log:\n{}",
            daemon.log()
        ),
    }
}
