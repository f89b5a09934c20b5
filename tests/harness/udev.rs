//! Real devices for the device tests: the real `systemd-udevd`, real loop devices with a
//! partition, and udev events injected into the udev netlink group in libudev's own wire
//! format, so that they go through the real libudev parsing path of every subscriber.
//!
//! - [`Udevd::ensure`]: uses a `systemd-udevd` that is already running, or starts
//!   `/lib/systemd/systemd-udevd` (package `udev`) once for the whole test binary, shared by
//!   every test that holds a handle and stopped by its PID (after `udevadm settle`) when the
//!   last handle drops. Nothing else about the system is touched: no `udevadm trigger`.
//! - [`UdevdOwner`]: udevd to one test alone, for the tests that kill and restart it: waits
//!   until no other test of this binary holds a [`Udevd`], refuses to touch a udevd it did
//!   not start, and leaves `/run/udev` as it found it.
//! - [`LoopDevice::attach_partitioned`]: an image with an MBR and one Linux partition, on a
//!   loop device created for it (`LOOP_CTL_ADD`, so the disk itself gets `add` and `remove`),
//!   its partition `loopNp1` made by the kernel's partition scan (`losetup -P`) or, on
//!   kernels built without partition table parsers such as the test machines', by
//!   `partx --add`. Detached and removed on drop.
//! - [`InjectedEvent`], [`inject`], [`inject_many`], [`Injector`]: one message per event
//!   on a `NETLINK_KOBJECT_UEVENT` socket to multicast group 2 (the group
//!   `udev_monitor_new_from_netlink(udev, "udev")` listens to), laid out exactly as
//!   systemd's `device_monitor_send_device` lays it out: the `monitor_netlink_header`
//!   ([`Header`]), then the properties as NUL-terminated `KEY=VALUE` strings.
//! - [`UdevListener`]: a raw subscriber of the same group, which sees udevd's messages and
//!   injected ones byte for byte.
//!
//! What libudev (systemd 252, sd-device's `device_monitor_receive_device`) accepts from the
//! udev group: a datagram of at least 32 and at most 8192 bytes (bigger ones are truncated
//! and dropped); sender credentials as the first control message with uid 0 (the kernel
//! attaches the sender's credentials to every netlink message, and libudev asks for them with
//! `SO_PASSCRED`, so a root sender needs no `SCM_CREDENTIALS` of its own); the `"libudev"`
//! prefix, the big-endian magic `0xfeedcafe` and `properties_off + 32 <= length`; properties
//! that include `DEVPATH`, `SUBSYSTEM`, `ACTION` (a known action) and a non-zero `SEQNUM`.
//! Subscribers with subsystem, devtype or tag matches also filter in the kernel, with a BPF
//! program that compares the header's hashes: a wrong hash drops the event before libudev
//! sees it. Devices received are "initialized" and sealed: libudev does not read sysfs or
//! `/run/udev/data` for their properties, so an injected device needs no sysfs entry (but
//! its parent and sysfs attributes cannot be read).
#![forbid(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, sendto,
    setsockopt, socket, sockopt,
};

use crate::{Process, Scratch, wait_until};

/// The daemon, as Debian's package `udev` installs it (a link to `udevadm`, which acts as
/// the daemon when called by this name).
pub const UDEVD: &str = "/lib/systemd/systemd-udevd";
/// The netlink multicast group of events udevd has processed (libudev's "udev" monitors).
pub const UDEV_GROUP: u32 = 2;
/// The largest message libudev receives: its receive buffer (`char raw[8192]`).
pub const LIBUDEV_MAX_MESSAGE: usize = 8192;

// ---------------------------------------------------------------------------------------
// systemd-udevd
// ---------------------------------------------------------------------------------------

/// A running `systemd-udevd`, for as long as the handle lives.
///
/// Either one that was already running (nothing is done on drop) or one this test binary
/// started: every test that calls [`Udevd::ensure`] while it runs shares it, and the last
/// handle to drop waits for its queue to empty, stops it by its PID and, if `/run/udev` did
/// not exist before, removes the `/run/udev` it left behind.
pub struct Udevd {
    started: Option<Arc<Started>>,
    _use: SharedUse,
}

/// How many handles of this binary use udevd now, and whether one test has it to itself.
#[derive(Default)]
struct Sharing {
    users: usize,
    sole: bool,
}

fn sharing() -> &'static (Mutex<Sharing>, std::sync::Condvar) {
    static SHARING: OnceLock<(Mutex<Sharing>, std::sync::Condvar)> = OnceLock::new();
    SHARING.get_or_init(Default::default)
}

/// One user of the shared udevd, for as long as it lives; waits while a test has udevd to
/// itself.
struct SharedUse;

impl SharedUse {
    fn new() -> SharedUse {
        let (state, changed) = sharing();
        let state = state.lock().unwrap_or_else(|e| e.into_inner());
        let mut state = changed
            .wait_while(state, |s| s.sole)
            .unwrap_or_else(|e| e.into_inner());
        state.users += 1;
        SharedUse
    }
}

impl Drop for SharedUse {
    fn drop(&mut self) {
        let (state, changed) = sharing();
        state.lock().unwrap_or_else(|e| e.into_inner()).users -= 1;
        changed.notify_all();
    }
}

/// The udevd this test binary started.
struct Started {
    pid: u32,
    /// Dropping this tells the owner thread to stop udevd.
    stop: Option<mpsc::Sender<()>>,
    /// The thread that spawned udevd: udevd's parent-death signal is tied to it, so it
    /// lives exactly as long as udevd should.
    owner: Option<JoinHandle<()>>,
    remove_run_udev: bool,
    log: PathBuf,
    _scratch: Scratch,
}

impl Drop for Started {
    fn drop(&mut self) {
        // Let udevd finish the events of the devices tests just removed, so it leaves no
        // database entries for devices that are gone.
        let _ = Command::new("udevadm")
            .args(["settle", "--timeout=10"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        drop(self.stop.take());
        if let Some(owner) = self.owner.take() {
            let _ = owner.join();
        }
        if self.remove_run_udev
            && let Err(e) = std::fs::remove_dir_all("/run/udev")
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("cleanup: removing /run/udev: {e}");
        }
    }
}

/// The udevd this binary started, while some test holds it. Locked across start and stop,
/// so that a test never sees a udevd that another test is stopping.
fn shared() -> &'static Mutex<Weak<Started>> {
    static SHARED: OnceLock<Mutex<Weak<Started>>> = OnceLock::new();
    SHARED.get_or_init(|| Mutex::new(Weak::new()))
}

impl Udevd {
    /// A running udevd: the one already running, the one another test of this binary
    /// started, or a new one, started in the foreground as a [`Process`] and ready when
    /// `udevadm control --ping` answers.
    pub fn ensure() -> Result<Udevd> {
        let sharing = SharedUse::new();
        let mut slot = shared().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(started) = slot.upgrade() {
            return Ok(Udevd {
                started: Some(started),
                _use: sharing,
            });
        }
        if is_running()? {
            return Ok(Udevd {
                started: None,
                _use: sharing,
            });
        }
        let started = Arc::new(start()?);
        *slot = Arc::downgrade(&started);
        Ok(Udevd {
            started: Some(started),
            _use: sharing,
        })
    }

    /// Whether this test binary started the udevd (false: it was already running).
    pub fn started_here(&self) -> bool {
        self.started.is_some()
    }

    /// The PID of the udevd this binary started.
    pub fn pid(&self) -> Option<u32> {
        self.started.as_ref().map(|s| s.pid)
    }

    /// What the udevd this binary started has logged so far.
    pub fn log(&self) -> String {
        self.started
            .as_ref()
            .map(|s| std::fs::read_to_string(&s.log).unwrap_or_default())
            .unwrap_or_default()
    }

    /// `udevadm settle`: waits until udevd has processed every event the kernel has sent
    /// so far (and so has broadcast them to the udev group).
    pub fn settle(&self, limit: Duration) -> Result<()> {
        let status = Command::new("udevadm")
            .arg("settle")
            .arg(format!("--timeout={}", limit.as_secs().max(1)))
            .status()
            .context("udevadm settle")?;
        ensure!(status.success(), "udevadm settle: {status}");
        Ok(())
    }
}

impl Drop for Udevd {
    fn drop(&mut self) {
        if let Some(started) = self.started.take() {
            // Dropped under the lock: if this was the last handle, udevd is stopped before
            // any other test can look for a running one.
            let _slot = shared().lock().unwrap_or_else(|e| e.into_inner());
            drop(started);
        }
    }
}

/// What a udevd killed with SIGKILL leaves in /run/udev: its control socket, and the
/// queue flag file when events were in flight.
const LEFT_BY_A_KILLED_UDEVD: [&str; 2] = ["control", "queue"];

/// udevd to one test alone, started and stopped (also with SIGKILL, which leaves its control
/// socket behind) as the test says. On drop it stops the udevd it runs, by its PID, and puts
/// `/run/udev` back: removed if it did not exist before, else without the control socket
/// and queue file a killed udevd left.
pub struct UdevdOwner {
    process: Option<Process>,
    run_udev_existed: bool,
    /// The files of /run/udev a udevd leaves when killed that were there before the test.
    left_before: Vec<&'static str>,
    scratch: Scratch,
    starts: u32,
}

impl UdevdOwner {
    /// Waits until no other test of this binary uses udevd. `None` (with the reason printed;
    /// an error in CI) when a udevd this binary did not start runs: it is not ours to kill.
    pub fn take() -> Result<Option<UdevdOwner>> {
        let (state, changed) = sharing();
        let state = state.lock().unwrap_or_else(|e| e.into_inner());
        let mut state = changed
            .wait_while(state, |s| s.sole || s.users > 0)
            .unwrap_or_else(|e| e.into_inner());
        // Released by drop, which also wakes the tests waiting to share udevd.
        state.sole = true;
        drop(state);
        let owner = UdevdOwner {
            process: None,
            run_udev_existed: Path::new("/run/udev").exists(),
            left_before: LEFT_BY_A_KILLED_UDEVD
                .into_iter()
                .filter(|name| Path::new("/run/udev").join(name).exists())
                .collect(),
            scratch: Scratch::new("udevd-owned")?,
            starts: 0,
        };
        if is_running()? {
            let why = "a systemd-udevd that this test binary did not start is running: the tests                        that kill and restart udevd would kill it";
            ensure!(std::env::var_os("CI").is_none(), "{why}");
            eprintln!("SKIP: {why}");
            return Ok(None);
        }
        ensure!(
            Path::new(UDEVD).exists(),
            "{UDEVD} is missing: install the package udev"
        );
        Ok(Some(owner))
    }

    /// Starts udevd in the foreground and returns once it answers a ping.
    pub fn start(&mut self) -> Result<u32> {
        self.spawn()?;
        self.wait_ready()
    }

    /// Starts udevd without waiting for it; [`UdevdOwner::wait_ready`] waits.
    pub fn spawn(&mut self) -> Result<()> {
        ensure!(self.process.is_none(), "udevd already runs");
        self.starts += 1;
        let log = self.scratch.join(&format!("udevd-{}.log", self.starts));
        self.process = Some(spawn_udevd(&log)?);
        Ok(())
    }

    /// Waits until the udevd started answers a ping; its PID.
    pub fn wait_ready(&mut self) -> Result<u32> {
        let process = self.process.as_mut().context("udevd was not started")?;
        wait_until(Duration::from_secs(20), "udevd to answer a ping", || {
            process.check_running()?;
            is_running()
        })?;
        Ok(process.pid())
    }

    /// SIGKILL, as when udevd is stopped outside systemd without its cleanup: its control
    /// socket stays in /run/udev with nobody listening.
    pub fn kill(&mut self) -> Result<()> {
        let mut process = self.process.take().context("udevd is not running")?;
        crate::send_signal(process.pid(), nix::sys::signal::Signal::SIGKILL)?;
        process.child().wait()?;
        Ok(())
    }

    /// SIGTERM, as `systemctl stop` sends it: udevd removes its control socket as it exits.
    pub fn stop(&mut self) -> Result<()> {
        let process = self.process.take().context("udevd is not running")?;
        drop(process);
        Ok(())
    }

    /// What the udevd started last has logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.scratch.join(&format!("udevd-{}.log", self.starts)))
            .unwrap_or_default()
    }
}

impl Drop for UdevdOwner {
    fn drop(&mut self) {
        // SIGTERM, by its PID: udevd removes its control socket as it exits.
        drop(self.process.take());
        let ours: Vec<PathBuf> = if self.run_udev_existed {
            LEFT_BY_A_KILLED_UDEVD
                .into_iter()
                .filter(|name| !self.left_before.contains(name))
                .map(|name| Path::new("/run/udev").join(name))
                .collect()
        } else {
            vec![PathBuf::from("/run/udev")]
        };
        for path in ours {
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            if let Err(e) = removed
                && e.kind() != std::io::ErrorKind::NotFound
            {
                eprintln!("cleanup: {}: {e}", path.display());
            }
        }
        let (state, changed) = sharing();
        state.lock().unwrap_or_else(|e| e.into_inner()).sole = false;
        changed.notify_all();
    }
}

/// Whether a udevd answers `udevadm control --ping`.
pub fn is_running() -> Result<bool> {
    let status = Command::new("udevadm")
        .args(["control", "--ping", "--timeout=2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running udevadm (install the package udev)")?;
    Ok(status.success())
}

fn start() -> Result<Started> {
    ensure!(
        Path::new(UDEVD).exists(),
        "{UDEVD} is missing: install the package udev"
    );
    let remove_run_udev = !Path::new("/run/udev").exists();
    let scratch = Scratch::new("udevd")?;
    let log = scratch.join("udevd.log");
    let (ready_tx, ready_rx) = mpsc::channel::<Result<u32>>();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let owner_log = log.clone();
    let owner = std::thread::Builder::new()
        .name("systemd-udevd".into())
        .spawn(move || {
            let mut process = match spawn_udevd(&owner_log) {
                Ok(process) => process,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let ready = wait_until(Duration::from_secs(20), "udevd to answer a ping", || {
                process.check_running()?;
                is_running()
            });
            match ready {
                Ok(()) => {
                    let _ = ready_tx.send(Ok(process.pid()));
                    // Until the last handle drops (the sender goes away).
                    let _ = stop_rx.recv();
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
            drop(process);
        })
        .context("starting the thread that owns udevd")?;
    let pid = match ready_rx.recv() {
        Ok(Ok(pid)) => pid,
        Ok(Err(e)) => {
            let _ = owner.join();
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if remove_run_udev {
                let _ = std::fs::remove_dir_all("/run/udev");
            }
            bail!("{e:#}; udevd's log:\n{text}");
        }
        Err(_) => bail!("the thread starting udevd died"),
    };
    Ok(Started {
        pid,
        stop: Some(stop_tx),
        owner: Some(owner),
        remove_run_udev,
        log,
        _scratch: scratch,
    })
}

fn spawn_udevd(log: &Path) -> Result<Process> {
    let log = File::create(log)?;
    let mut command = Command::new(UDEVD);
    command
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    Process::spawn(command, "systemd-udevd")
}

// ---------------------------------------------------------------------------------------
// Loop devices
// ---------------------------------------------------------------------------------------

const LOOP_CONTROL: &str = "/dev/loop-control";
/// ioctls on /dev/loop-control (linux/loop.h).
const LOOP_CTL_ADD: libc::c_ulong = 0x4C80;
const LOOP_CTL_REMOVE: libc::c_ulong = 0x4C81;
/// Loop devices made here are numbered from this one up: far above the ones the kernel
/// creates at boot, which `losetup -f` and `mount -o loop` hand out first.
const FIRST_LOOP_INDEX: u32 = 100;
const LAST_LOOP_INDEX: u32 = 1100;
/// Where the one partition starts, in 512-byte sectors (1 MiB, as fdisk aligns it).
const PARTITION_START: u64 = 2048;

/// A loop device of its own, attached to an image with one partition.
///
/// The device is created for the test (the kernel sends `add` for `loopN`), attached with
/// partition scanning (`change` for `loopN`, `add` for `loopNp1`), and on [`detach`]
/// (`remove` for `loopNp1`, `change` for `loopN`) and [`remove_device`] (`remove` for
/// `loopN`) or drop taken away again; the image file is deleted on drop.
///
/// [`detach`]: LoopDevice::detach
/// [`remove_device`]: LoopDevice::remove_device
pub struct LoopDevice {
    index: u32,
    name: String,
    image: PathBuf,
    attached: bool,
    exists: bool,
}

impl LoopDevice {
    /// Writes a `size_mib` MiB image in `dir` with an MBR holding one Linux (0x83)
    /// partition from 1 MiB to the end, creates a loop device for it and attaches it with
    /// `losetup --partscan`. `loopNp1` exists when this returns.
    pub fn attach_partitioned(dir: &Path, size_mib: u64) -> Result<LoopDevice> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        ensure!(
            size_mib >= 2,
            "the image needs at least 2 MiB for its partition"
        );
        let image = dir.join(format!(
            "loop-image-{}.img",
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        write_partitioned_image(&image, size_mib)?;
        let index = match create_loop_device() {
            Ok(index) => index,
            Err(e) => {
                let _ = std::fs::remove_file(&image);
                return Err(e);
            }
        };
        // From here on, drop cleans up whatever was done.
        let mut device = LoopDevice {
            index,
            name: format!("loop{index}"),
            image,
            attached: false,
            exists: true,
        };
        let output = Command::new("losetup")
            .arg("--partscan")
            .arg(device.path())
            .arg(&device.image)
            .output()
            .context("running losetup (package mount)")?;
        ensure!(
            output.status.success(),
            "losetup --partscan {} {}: {}",
            device.path().display(),
            device.image.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
        device.attached = true;
        let partition = device.partition_names().remove(0);
        let in_sysfs = Path::new("/sys/class/block").join(&partition);
        if !in_sysfs.exists() {
            // The kernel did not find the partition table: it was built without the
            // parsers (CONFIG_MSDOS_PARTITION is off on the test machines). partx reads the
            // table itself and adds the partition with the BLKPG ioctl.
            let output = Command::new("partx")
                .arg("--add")
                .arg(device.path())
                .output()
                .context("running partx (package util-linux)")?;
            ensure!(
                output.status.success(),
                "partx --add {}: {}",
                device.path().display(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        wait_until(Duration::from_secs(5), "the partition in sysfs", || {
            Ok(in_sysfs.exists())
        })?;
        Ok(device)
    }

    /// The kernel's name of the disk, e.g. "loop107".
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its number, the N of loopN.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The device node, e.g. /dev/loop107.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/dev/{}", self.name))
    }

    /// The kernel's names of its partitions: ["loop107p1"].
    pub fn partition_names(&self) -> Vec<String> {
        vec![format!("{}p1", self.name)]
    }

    /// The disk's udev DEVPATH, e.g. /devices/virtual/block/loop107.
    pub fn devpath(&self) -> String {
        format!("/devices/virtual/block/{}", self.name)
    }

    /// The partitions' udev DEVPATHs, e.g. /devices/virtual/block/loop107/loop107p1.
    pub fn partition_devpaths(&self) -> Vec<String> {
        self.partition_names()
            .iter()
            .map(|p| format!("{}/{p}", self.devpath()))
            .collect()
    }

    /// The image file behind it.
    pub fn image(&self) -> &Path {
        &self.image
    }

    /// Whether it is still attached (until [`LoopDevice::detach`]).
    pub fn is_attached(&self) -> bool {
        self.attached
    }

    /// `echo change > /sys/block/loopN/uevent`: the kernel sends a `change` for the disk.
    pub fn trigger_change(&self) -> Result<()> {
        let file = format!("/sys/block/{}/uevent", self.name);
        std::fs::write(&file, "change").with_context(|| format!("writing change to {file}"))
    }

    /// A synthetic `change` the test can tell from any other (udevd's own inotify watch
    /// sends plain changes of loop devices after they are written to): writes
    /// `change UUID` to the uevent file, and the kernel's and udevd's events carry
    /// `SYNTH_UUID=UUID`. Returns the UUID.
    pub fn trigger_change_tagged(&self) -> Result<String> {
        let uuid = std::fs::read_to_string("/proc/sys/kernel/random/uuid")?
            .trim()
            .to_owned();
        let file = format!("/sys/block/{}/uevent", self.name);
        std::fs::write(&file, format!("change {uuid}"))
            .with_context(|| format!("writing change {uuid} to {file}"))?;
        Ok(uuid)
    }

    /// `losetup -d`: the partitions go away (`remove`), the disk stays, empty (`change`).
    /// Does nothing if it is already detached. The kernel may finish the detach a moment
    /// later, when the last opener (often udevd probing it) closes the device.
    pub fn detach(&mut self) -> Result<()> {
        if !self.attached {
            return Ok(());
        }
        let output = Command::new("losetup")
            .arg("--detach")
            .arg(self.path())
            .output()
            .context("running losetup")?;
        ensure!(
            output.status.success(),
            "losetup --detach {}: {}",
            self.path().display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
        self.attached = false;
        Ok(())
    }

    /// Detaches if still attached, then deletes the loop device itself (`LOOP_CTL_REMOVE`):
    /// the kernel sends `remove` for the disk. Does nothing the second time.
    pub fn remove_device(&mut self) -> Result<()> {
        self.detach()?;
        if !self.exists {
            return Ok(());
        }
        let control = open_loop_control()?;
        // Busy while the detach is still being finished or udevd has the device open.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match crate::sys::loop_control(&control, LOOP_CTL_REMOVE, self.index) {
                Ok(_) => break,
                Err(nix::errno::Errno::EBUSY) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(nix::errno::Errno::ENODEV | nix::errno::Errno::ENXIO) => break,
                Err(e) => bail!("LOOP_CTL_REMOVE {}: {e}", self.name),
            }
        }
        self.exists = false;
        Ok(())
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        if let Err(e) = self.remove_device() {
            eprintln!("cleanup: {}: {e:#}", self.name);
        }
        let _ = std::fs::remove_file(&self.image);
    }
}

/// A sparse image with an MBR (what `echo type=83 | sfdisk` writes, written here so no
/// partitioning tool is needed): one Linux partition from sector 2048 to the end.
fn write_partitioned_image(image: &Path, size_mib: u64) -> Result<()> {
    let sectors = size_mib * 2048;
    let length = u32::try_from(sectors - PARTITION_START).context("image too large for MBR")?;
    let mut mbr = [0u8; 512];
    // Disk identifier (blkid's PTUUID): anything non-zero, different per image.
    let id = std::process::id().wrapping_mul(2_654_435_761) ^ size_mib as u32 ^ 0x5741_5443;
    mbr[440..444].copy_from_slice(&id.to_le_bytes());
    let entry = &mut mbr[446..462];
    entry[0] = 0x00; // not bootable
    entry[1..4].copy_from_slice(&[0x20, 0x21, 0x00]); // CHS of sector 2048
    entry[4] = 0x83; // Linux
    entry[5..8].copy_from_slice(&[0xfe, 0xff, 0xff]); // CHS beyond reach: use LBA
    entry[8..12].copy_from_slice(&(PARTITION_START as u32).to_le_bytes());
    entry[12..16].copy_from_slice(&length.to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(image)
        .with_context(|| format!("creating {}", image.display()))?;
    file.set_len(size_mib << 20)?;
    file.seek(SeekFrom::Start(0))?;
    file.write_all(&mbr)?;
    file.sync_all()?;
    Ok(())
}

fn open_loop_control() -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(LOOP_CONTROL)
        .with_context(|| format!("opening {LOOP_CONTROL}"))
}

/// Creates a free loop device numbered from [`FIRST_LOOP_INDEX`] up; the kernel makes sure
/// no two callers get the same one.
fn create_loop_device() -> Result<u32> {
    let control = open_loop_control()?;
    for index in FIRST_LOOP_INDEX..LAST_LOOP_INDEX {
        match crate::sys::loop_control(&control, LOOP_CTL_ADD, index) {
            Ok(_) => return Ok(index),
            Err(nix::errno::Errno::EEXIST) => continue,
            Err(e) => bail!("LOOP_CTL_ADD {index}: {e}"),
        }
    }
    bail!("no free loop device number in {FIRST_LOOP_INDEX}..{LAST_LOOP_INDEX}")
}

// ---------------------------------------------------------------------------------------
// libudev's wire format
// ---------------------------------------------------------------------------------------

/// systemd's `string_hash32`: MurmurHash2 with seed 0, reading 4-byte blocks in the host's
/// byte order, as systemd's `MurmurHash2.c` does.
pub fn string_hash32(s: &str) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let data = s.as_bytes();
    let mut h = data.len() as u32;
    let mut blocks = data.chunks_exact(4);
    for block in &mut blocks {
        let mut k = u32::from_ne_bytes(block.try_into().expect("4 bytes"));
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = blocks.remainder();
    if !tail.is_empty() {
        for (i, byte) in tail.iter().enumerate() {
            h ^= u32::from(*byte) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// systemd's `string_bloom64`: four bits of the 64-bit tag filter, from the tag's hash.
pub fn string_bloom64(s: &str) -> u64 {
    let hash = string_hash32(s);
    [0, 6, 12, 18]
        .iter()
        .fold(0u64, |bits, shift| bits | 1u64 << ((hash >> shift) & 63))
}

/// systemd's `struct monitor_netlink_header`, 40 bytes, in front of every message udevd
/// sends to the udev group. `magic` and the filter fields are big-endian on the wire (the
/// kernel's BPF loads words in network order); the sizes and offset are in host order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub magic: u32,
    pub header_size: u32,
    pub properties_off: u32,
    pub properties_len: u32,
    pub filter_subsystem_hash: u32,
    pub filter_devtype_hash: u32,
    pub filter_tag_bloom_hi: u32,
    pub filter_tag_bloom_lo: u32,
}

impl Header {
    pub const PREFIX: &'static [u8; 8] = b"libudev\0";
    pub const MAGIC: u32 = 0xfeed_cafe;
    pub const SIZE: usize = 40;

    /// The header udevd would send in front of `event`'s properties: hashes of its
    /// SUBSYSTEM and DEVTYPE (0 when it has none) and the bloom bits of every tag in TAGS
    /// and CURRENT_TAGS.
    pub fn of(event: &InjectedEvent) -> Header {
        let bloom = event
            .tags()
            .iter()
            .fold(0u64, |bits, tag| bits | string_bloom64(tag));
        Header {
            magic: Header::MAGIC,
            header_size: Header::SIZE as u32,
            properties_off: Header::SIZE as u32,
            properties_len: event.properties_nulstr().len() as u32,
            filter_subsystem_hash: event.get("SUBSYSTEM").map(string_hash32).unwrap_or(0),
            filter_devtype_hash: event.get("DEVTYPE").map(string_hash32).unwrap_or(0),
            filter_tag_bloom_hi: (bloom >> 32) as u32,
            filter_tag_bloom_lo: bloom as u32,
        }
    }

    /// The 40 bytes on the wire.
    pub fn to_bytes(&self) -> [u8; Header::SIZE] {
        let mut out = [0u8; Header::SIZE];
        out[0..8].copy_from_slice(Header::PREFIX);
        out[8..12].copy_from_slice(&self.magic.to_be_bytes());
        out[12..16].copy_from_slice(&self.header_size.to_ne_bytes());
        out[16..20].copy_from_slice(&self.properties_off.to_ne_bytes());
        out[20..24].copy_from_slice(&self.properties_len.to_ne_bytes());
        out[24..28].copy_from_slice(&self.filter_subsystem_hash.to_be_bytes());
        out[28..32].copy_from_slice(&self.filter_devtype_hash.to_be_bytes());
        out[32..36].copy_from_slice(&self.filter_tag_bloom_hi.to_be_bytes());
        out[36..40].copy_from_slice(&self.filter_tag_bloom_lo.to_be_bytes());
        out
    }

    /// Reads the header of a message from the udev group; fails for anything libudev
    /// would not take as a udev message (prefix, magic, offset).
    pub fn parse(message: &[u8]) -> Result<Header> {
        ensure!(
            message.len() >= Header::SIZE,
            "{} bytes: too short",
            message.len()
        );
        ensure!(
            &message[0..8] == Header::PREFIX,
            "no \"libudev\" prefix (a kernel uevent?)"
        );
        let be = |at: usize| u32::from_be_bytes(message[at..at + 4].try_into().unwrap());
        let ne = |at: usize| u32::from_ne_bytes(message[at..at + 4].try_into().unwrap());
        let header = Header {
            magic: be(8),
            header_size: ne(12),
            properties_off: ne(16),
            properties_len: ne(20),
            filter_subsystem_hash: be(24),
            filter_devtype_hash: be(28),
            filter_tag_bloom_hi: be(32),
            filter_tag_bloom_lo: be(36),
        };
        ensure!(
            header.magic == Header::MAGIC,
            "magic {:#x}, not {:#x}",
            header.magic,
            Header::MAGIC
        );
        ensure!(
            header.properties_off as usize + 32 <= message.len(),
            "properties_off {} beyond the {} bytes",
            header.properties_off,
            message.len()
        );
        Ok(header)
    }
}

/// A udev event as udevd broadcasts it after processing: an ordered list of properties.
///
/// Builders give realistic property sets; [`InjectedEvent::set`] and
/// [`InjectedEvent::without`] adjust them. [`InjectedEvent::decode`] reads udevd's own
/// messages into the same form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectedEvent {
    properties: Vec<(String, String)>,
}

/// Sequence numbers for events that are not given one: far above the kernel's own, so
/// they never repeat one the kernel has used.
pub fn next_seqnum() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1 << 40);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Vendor, model, serial of the injected USB stick (a SanDisk Cruzer Blade, as udev's
/// usb_id and hwdb describe one).
pub const USB_VENDOR_ID: &str = "0781";
pub const USB_MODEL_ID: &str = "5567";
pub const USB_SERIAL_SHORT: &str = "4C530001230818115520";

impl InjectedEvent {
    /// An event with the properties every udev event has, in udevd's order: ACTION,
    /// DEVPATH, SUBSYSTEM, SEQNUM, USEC_INITIALIZED.
    pub fn new(action: &str, subsystem: &str, devpath: &str, seqnum: u64) -> InjectedEvent {
        InjectedEvent {
            properties: vec![
                ("ACTION".into(), action.into()),
                ("DEVPATH".into(), devpath.into()),
                ("SUBSYSTEM".into(), subsystem.into()),
                ("SEQNUM".into(), seqnum.to_string()),
                ("USEC_INITIALIZED".into(), usec_now().to_string()),
            ],
        }
    }

    /// The DEVPATH of the USB device at `busnum`/`devnum` (plugged into port `devnum` of
    /// the root hub of an xHCI controller at 0000:00:14.0).
    pub fn usb_device_devpath(busnum: u8, devnum: u8) -> String {
        format!("/devices/pci0000:00/0000:00:14.0/usb{busnum}/{busnum}-{devnum}")
    }

    /// A USB mass storage stick (bulk-only SCSI, interface 8/6/80) appearing as
    /// `usb_device` /dev/bus/usb/BBB/DDD, with what udevd's rules and builtins (usb_id,
    /// hwdb, path_id) add to it.
    pub fn usb_storage_device(action: &str, busnum: u8, devnum: u8, seqnum: u64) -> Self {
        let devpath = Self::usb_device_devpath(busnum, devnum);
        let port = devnum;
        let minor = u32::from(busnum).saturating_sub(1) * 128 + u32::from(devnum).saturating_sub(1);
        let path = format!("pci-0000:00:14.0-usb-0:{port}");
        let path_tag = format!("pci-0000_00_14_0-usb-0_{port}");
        let mut event = InjectedEvent::new(action, "usb", &devpath, seqnum);
        for (key, value) in [
            ("DEVNAME", format!("/dev/bus/usb/{busnum:03}/{devnum:03}")),
            ("DEVTYPE", "usb_device".into()),
            ("DRIVER", "usb".into()),
            ("PRODUCT", "781/5567/100".into()),
            ("TYPE", "0/0/0".into()),
            ("BUSNUM", format!("{busnum:03}")),
            ("DEVNUM", format!("{devnum:03}")),
            ("MAJOR", "189".into()),
            ("MINOR", minor.to_string()),
            ("ID_BUS", "usb".into()),
            ("ID_MODEL", "Cruzer_Blade".into()),
            ("ID_MODEL_ENC", "Cruzer\\x20Blade".into()),
            ("ID_MODEL_ID", USB_MODEL_ID.into()),
            (
                "ID_SERIAL",
                format!("SanDisk_Cruzer_Blade_{USB_SERIAL_SHORT}"),
            ),
            ("ID_SERIAL_SHORT", USB_SERIAL_SHORT.into()),
            ("ID_VENDOR", "SanDisk".into()),
            ("ID_VENDOR_ENC", "SanDisk".into()),
            ("ID_VENDOR_ID", USB_VENDOR_ID.into()),
            ("ID_REVISION", "0100".into()),
            ("ID_USB_INTERFACES", ":080650:".into()),
            ("ID_VENDOR_FROM_DATABASE", "SanDisk Corp.".into()),
            ("ID_MODEL_FROM_DATABASE", "Cruzer Blade".into()),
            ("ID_PATH", path),
            ("ID_PATH_TAG", path_tag.clone()),
            ("ID_FOR_SEAT", format!("usb-{path_tag}")),
            ("TAGS", ":seat:systemd:".into()),
            ("CURRENT_TAGS", ":seat:systemd:".into()),
        ] {
            event = event.set(key, &value);
        }
        event
    }

    /// The stick is plugged in: `add` of its `usb_device`.
    pub fn usb_storage_add(busnum: u8, devnum: u8, seqnum: u64) -> Self {
        Self::usb_storage_device("add", busnum, devnum, seqnum)
    }

    /// The stick is pulled: `remove` of its `usb_device` (udevd sends the properties from
    /// its database with a remove).
    pub fn usb_storage_remove(busnum: u8, devnum: u8, seqnum: u64) -> Self {
        Self::usb_storage_device("remove", busnum, devnum, seqnum)
    }

    /// The stick's interface 0 (`usb_interface`, class 8/6/80, bound to `usb-storage`): the
    /// `add`, `bind`, `unbind` or `remove` that follows or precedes the device's.
    pub fn usb_storage_interface(action: &str, busnum: u8, devnum: u8, seqnum: u64) -> Self {
        let devpath = format!(
            "{}/{busnum}-{devnum}:1.0",
            Self::usb_device_devpath(busnum, devnum)
        );
        let path_tag = format!("pci-0000_00_14_0-usb-0_{devnum}_1_0");
        let mut event = InjectedEvent::new(action, "usb", &devpath, seqnum);
        for (key, value) in [
            ("DEVTYPE", "usb_interface".to_string()),
            ("DRIVER", "usb-storage".into()),
            ("PRODUCT", "781/5567/100".into()),
            ("TYPE", "0/0/0".into()),
            ("INTERFACE", "8/6/80".into()),
            (
                "MODALIAS",
                "usb:v0781p5567d0100dc00dsc00dp00ic08isc06ip50in00".into(),
            ),
            ("ID_VENDOR_FROM_DATABASE", "SanDisk Corp.".into()),
            ("ID_MODEL_FROM_DATABASE", "Cruzer Blade".into()),
            ("ID_PATH", format!("pci-0000:00:14.0-usb-0:{devnum}:1.0")),
            ("ID_PATH_TAG", path_tag),
        ] {
            event = event.set(key, &value);
        }
        event
    }

    /// A `change` of any device, with a fresh sequence number ([`next_seqnum`]) and extra
    /// properties.
    pub fn change(subsystem: &str, devpath: &str, props: &[(&str, &str)]) -> Self {
        props.iter().fold(
            InjectedEvent::new("change", subsystem, devpath, next_seqnum()),
            |event, (key, value)| event.set(key, value),
        )
    }

    /// Sets a property, in place if it exists, else at the end.
    pub fn set(mut self, key: &str, value: &str) -> Self {
        match self.properties.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value.to_owned(),
            None => self.properties.push((key.to_owned(), value.to_owned())),
        }
        self
    }

    /// Drops a property.
    pub fn without(mut self, key: &str) -> Self {
        self.properties.retain(|(k, _)| k != key);
        self
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn properties(&self) -> &[(String, String)] {
        &self.properties
    }

    pub fn action(&self) -> &str {
        self.get("ACTION").unwrap_or_default()
    }

    pub fn devpath(&self) -> &str {
        self.get("DEVPATH").unwrap_or_default()
    }

    pub fn subsystem(&self) -> &str {
        self.get("SUBSYSTEM").unwrap_or_default()
    }

    pub fn seqnum(&self) -> u64 {
        self.get("SEQNUM")
            .and_then(|s| s.parse().ok())
            .unwrap_or_default()
    }

    /// Every tag in TAGS and CURRENT_TAGS, once each (sd-device's "all tags").
    pub fn tags(&self) -> Vec<&str> {
        let mut tags: Vec<&str> = ["TAGS", "CURRENT_TAGS"]
            .iter()
            .filter_map(|key| self.get(key))
            .flat_map(|value| value.split(':'))
            .filter(|tag| !tag.is_empty())
            .collect();
        tags.sort_unstable();
        tags.dedup();
        tags
    }

    /// The properties as udevd sends them: each `KEY=VALUE` followed by a NUL.
    pub fn properties_nulstr(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (key, value) in &self.properties {
            out.extend_from_slice(key.as_bytes());
            out.push(b'=');
            out.extend_from_slice(value.as_bytes());
            out.push(0);
        }
        out
    }

    /// The whole message, with the header udevd would put in front of it.
    pub fn encode(&self) -> Vec<u8> {
        self.encode_with_header(&Header::of(self))
    }

    /// The message with a header of the caller's choosing (to send a wrong hash, say).
    pub fn encode_with_header(&self, header: &Header) -> Vec<u8> {
        let mut out = header.to_bytes().to_vec();
        out.extend_from_slice(&self.properties_nulstr());
        out
    }

    /// Reads a message from the udev group (udevd's or an injected one) as libudev does:
    /// the properties start at `properties_off` and run to the end of the datagram.
    pub fn decode(message: &[u8]) -> Result<InjectedEvent> {
        let header = Header::parse(message)?;
        let mut properties = Vec::new();
        let body = &message[header.properties_off as usize..];
        ensure!(
            body.last() == Some(&0),
            "properties not NUL-terminated: {:?}",
            String::from_utf8_lossy(body)
        );
        for item in body[..body.len() - 1].split(|b| *b == 0) {
            let text = std::str::from_utf8(item).context("property not UTF-8")?;
            let (key, value) = text
                .split_once('=')
                .with_context(|| format!("not KEY=VALUE: {text:?}"))?;
            properties.push((key.to_owned(), value.to_owned()));
        }
        Ok(InjectedEvent { properties })
    }
}

/// CLOCK_MONOTONIC in microseconds, the clock of udev's USEC_INITIALIZED.
fn usec_now() -> u64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<f64>().ok())
        .map(|secs| (secs * 1e6) as u64)
        .unwrap_or(1)
}

// ---------------------------------------------------------------------------------------
// The udev netlink group
// ---------------------------------------------------------------------------------------

fn udev_group() -> NetlinkAddr {
    NetlinkAddr::new(0, UDEV_GROUP)
}

fn uevent_socket() -> Result<OwnedFd> {
    socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkKObjectUEvent,
    )
    .context("socket(AF_NETLINK, NETLINK_KOBJECT_UEVENT)")
}

/// A socket that sends events to the udev group, reused for any number of them.
pub struct Injector {
    socket: OwnedFd,
}

impl Injector {
    pub fn new() -> Result<Injector> {
        Ok(Injector {
            socket: uevent_socket()?,
        })
    }

    /// Sends one event. Refuses one libudev could not receive (over 8192 bytes).
    pub fn send(&self, event: &InjectedEvent) -> Result<()> {
        let message = event.encode();
        ensure!(
            message.len() <= LIBUDEV_MAX_MESSAGE,
            "{} bytes: libudev drops messages over {LIBUDEV_MAX_MESSAGE} bytes (use send_raw to send one anyway)",
            message.len()
        );
        self.send_raw(&message)
    }

    /// Sends any bytes as one datagram to the udev group.
    pub fn send_raw(&self, message: &[u8]) -> Result<()> {
        let sent = sendto(
            self.socket.as_raw_fd(),
            message,
            &udev_group(),
            MsgFlags::empty(),
        );
        match sent {
            Ok(n) => {
                ensure!(n == message.len(), "sent {n} of {}", message.len());
                Ok(())
            }
            // udevd ignores this too: the multicast went out; only the unicast copy to the
            // kernel's own socket, which nobody needs, was refused.
            Err(nix::errno::Errno::ECONNREFUSED) => Ok(()),
            Err(nix::errno::Errno::EPERM) => {
                bail!("sending to the udev group needs root (CAP_NET_ADMIN)")
            }
            Err(e) => Err(e).context("sendto(udev group)"),
        }
    }
}

/// Sends one event to the udev group, as udevd would after processing it.
pub fn inject(event: &InjectedEvent) -> Result<()> {
    Injector::new()?.send(event)
}

/// Sends many events, in order, on one socket, as fast as the kernel takes them; returns
/// how many. Subscribers whose receive buffer fills up lose the rest (and see ENOBUFS).
pub fn inject_many<'a>(events: impl IntoIterator<Item = &'a InjectedEvent>) -> Result<usize> {
    let injector = Injector::new()?;
    let mut sent = 0;
    for event in events {
        injector
            .send(event)
            .with_context(|| format!("event {sent}"))?;
        sent += 1;
    }
    Ok(sent)
}

/// A raw subscriber of the udev group: every message udevd (or an injector) sends there,
/// byte for byte, without libudev's filtering.
pub struct UdevListener {
    socket: OwnedFd,
}

impl UdevListener {
    /// Subscribes, with a receive buffer big enough for a storm (128 MiB, as root may).
    pub fn new() -> Result<UdevListener> {
        let socket = uevent_socket()?;
        setsockopt(&socket, sockopt::RcvBufForce, &(128 << 20)).context("SO_RCVBUFFORCE")?;
        bind(socket.as_raw_fd(), &udev_group()).context("bind to the udev group")?;
        Ok(UdevListener { socket })
    }

    /// The next message, or None after `limit`.
    pub fn recv(&self, limit: Duration) -> Result<Option<Vec<u8>>> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let deadline = Instant::now() + limit;
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            match recv(self.socket.as_raw_fd(), &mut buffer, MsgFlags::MSG_DONTWAIT) {
                Ok(n) => {
                    buffer.truncate(n);
                    return Ok(Some(buffer));
                }
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
                Err(nix::errno::Errno::ENOBUFS) => {
                    bail!("the listener's receive buffer overflowed: events were lost")
                }
                Err(e) => return Err(e).context("recv(udev group)"),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let mut fds = [PollFd::new(self.socket.as_fd(), PollFlags::POLLIN)];
            let millis = left.as_millis().clamp(1, 60_000) as i32;
            match poll(
                &mut fds,
                PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX),
            ) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e).context("poll"),
            }
        }
    }

    /// Reads messages until one decodes to an event `wanted` accepts; returns it and its
    /// bytes. Messages that are not libudev's (none should be) are skipped.
    pub fn wait_for(
        &self,
        limit: Duration,
        mut wanted: impl FnMut(&InjectedEvent) -> bool,
    ) -> Result<(InjectedEvent, Vec<u8>)> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(message) = self.recv(left)? else {
                bail!("no matching event on the udev group within {limit:?}");
            };
            if let Ok(event) = InjectedEvent::decode(&message)
                && wanted(&event)
            {
                return Ok((event, message));
            }
        }
    }
}

/// `losetup --list` lines naming a backing file under `dir` (to check nothing is left).
pub fn loop_devices_backed_by(dir: &Path) -> Result<Vec<String>> {
    let output = Command::new("losetup")
        .args(["--list", "--noheadings", "--output", "NAME,BACK-FILE"])
        .output()
        .context("losetup --list")?;
    let needle = dir.to_string_lossy().into_owned();
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.contains(&needle))
        .map(str::to_owned)
        .collect())
}
