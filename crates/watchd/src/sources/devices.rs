//! Devices, from libudev: the "udev" netlink group (events after systemd-udevd's rules, with
//! all their properties), or the kernel's own uevent group when udevd is not running.
//!
//! One thread owns the monitor sockets. Their kernel-side filter is the union of what the
//! live watches ask for (subsystem/devtype, tag), so events nobody wants never wake the
//! daemon; each watch then applies its full match (property globs, sysname glob) before
//! anything is encoded. When the set of watches changes, the new sockets are opened before
//! the old ones are drained, and events seen on both are passed on once (by sequence number).
//!
//! With `device_events = "auto"` the thread follows udevd ([`udevd`]) and switches between
//! the two groups when udevd starts or stops, telling every device watch with a META
//! SOURCE_CHANGED record. While udevd serves, a stand-by socket on the kernel's group keeps
//! the uevents udevd has not passed on yet, so that those it never passes on (it was
//! stopped or killed) are passed on raw after the switch. A socket that overflows (ENOBUFS:
//! uevents came faster than the thread read them) costs every device watch a LOSS record.
//!
//! Initial state is an enumeration under the same matches, taken while the thread is held
//! still. An event already queued on the socket at that moment may repeat what the snapshot
//! shows (an add for a device it lists); it is never missing.
#![forbid(unsafe_code)]

mod udevd;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

use glob::Pattern;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use watchd_proto::{FLAG_SNAPSHOT, RecordBuilder, RecordType, attr, device};

use crate::conf::DeviceEvents;
use crate::error::{Error, Result, Truncated};
use crate::event::{Change, Event, Fields};
use crate::hub::Hub;
use crate::identity::Caller;
use crate::options::Options;
use crate::source::Source;
use crate::watch::{Kind, MAX_FILTERS, Notice, Scope};

/// The kind clients name in `AddWatch`.
pub const KIND: Kind = Kind("devices");

/// Longest glob or name a watch may give; real subsystem names and properties are short.
const MAX_PATTERN_LEN: usize = 256;
/// The monitor's receive buffer: a storm of uevents must not overflow the kernel socket
/// while the daemon fans out (udevd itself asks for 128 MiB).
const RECEIVE_BUFFER: usize = 128 * 1024 * 1024;
/// Sets a smaller receive buffer, in bytes, for the tests that make the socket overflow.
const RECEIVE_BUFFER_ENV: &str = "WATCHD_DEVICE_RECEIVE_BUFFER";
/// Most uevents kept while udevd has not passed them on; beyond, a switch to the kernel's
/// group cannot pass them all on and reports a LOSS.
const MAX_PENDING: usize = 4096;
/// How many passed-on sequence numbers are remembered, so that a uevent seen on two sockets
/// (old and new filter, kernel and udev group) is passed on once.
const REMEMBERED: usize = 16384;
/// How long AddWatch waits for the monitor thread to cover a new watch (it takes well under
/// a millisecond; this only bounds a stuck thread).
const APPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Where device events come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventSource {
    /// After systemd-udevd's rules, with its properties and tags.
    Udev,
    /// The kernel's raw uevents: no udevd is running.
    Kernel,
}

impl EventSource {
    fn name(self) -> &'static str {
        match self {
            EventSource::Udev => "udev",
            EventSource::Kernel => "kernel",
        }
    }
}

/// Properties that have an attribute of their own and are not repeated as PROPERTY.
const OWN_ATTRIBUTES: [&str; 11] = [
    "ACTION",
    "SUBSYSTEM",
    "DEVTYPE",
    "DEVPATH",
    "DEVNAME",
    "DRIVER",
    "SEQNUM",
    "MAJOR",
    "MINOR",
    "TAGS",
    "DEVPATH_OLD",
];

/// One device event, or one device of a snapshot.
#[derive(Debug)]
pub struct DeviceInfo {
    pub subtype: u8,
    pub action: String,
    pub subsystem: String,
    pub devtype: Option<String>,
    pub sysname: String,
    pub syspath: String,
    pub devnode: Option<String>,
    pub driver: Option<String>,
    pub seqnum: u64,
    pub devnum: Option<(u32, u32)>,
    pub tags: Vec<String>,
    pub properties: Vec<(String, String)>,
    pub old_syspath: Option<String>,
    pub source: EventSource,
}

fn text(s: &std::ffi::OsStr) -> String {
    s.to_string_lossy().into_owned()
}

/// A device as libudev hands it over, in plain strings: what [`DeviceInfo::from_fields`]
/// reads. Separate from `udev::Device` so that the uevent fuzz target
/// (fuzz/src/targets/uevent.rs) can give a raw uevent's fields to the same code.
#[derive(Debug, Default)]
pub struct DeviceFields {
    pub subsystem: Option<String>,
    pub devtype: Option<String>,
    pub sysname: String,
    pub syspath: String,
    pub devnode: Option<String>,
    pub driver: Option<String>,
    pub devnum: Option<(u32, u32)>,
    /// Every property, in the uevent's order.
    pub properties: Vec<(String, String)>,
}

impl DeviceFields {
    fn of(dev: &udev::Device) -> DeviceFields {
        DeviceFields {
            subsystem: dev.subsystem().map(text),
            devtype: dev.devtype().map(text),
            sysname: text(dev.sysname()),
            syspath: dev.syspath().to_string_lossy().into_owned(),
            devnode: dev.devnode().map(|p| p.to_string_lossy().into_owned()),
            driver: dev.driver().map(text),
            devnum: dev.devnum().map(|n| {
                (
                    nix::sys::stat::major(n) as u32,
                    nix::sys::stat::minor(n) as u32,
                )
            }),
            properties: dev
                .properties()
                .map(|p| (text(p.name()), text(p.value())))
                .collect(),
        }
    }

    fn property(&self, key: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

impl DeviceInfo {
    /// `action` is the event's (None for a device of a snapshot, which reads as "add").
    fn from_device(
        dev: &udev::Device,
        action: Option<&str>,
        seqnum: u64,
        source: EventSource,
    ) -> Option<DeviceInfo> {
        DeviceInfo::from_fields(DeviceFields::of(dev), action, seqnum, source)
    }

    /// The event of a device's fields; `None` for an action records have no subtype for.
    pub fn from_fields(
        fields: DeviceFields,
        action: Option<&str>,
        seqnum: u64,
        source: EventSource,
    ) -> Option<DeviceInfo> {
        let action = action.unwrap_or("add").to_owned();
        let subtype = device::from_action(&action)?;
        let tags = fields
            .property("TAGS")
            .map(|t| {
                t.split(':')
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let old_syspath = fields.property("DEVPATH_OLD").map(|p| format!("/sys{p}"));
        Some(DeviceInfo {
            subtype,
            action,
            subsystem: fields.subsystem.unwrap_or_default(),
            devtype: fields.devtype,
            sysname: fields.sysname,
            syspath: fields.syspath,
            devnode: fields.devnode,
            driver: fields.driver,
            seqnum,
            devnum: fields.devnum,
            tags,
            properties: fields.properties,
            old_syspath,
            source,
        })
    }

    /// Fixed fields first, then the properties in udev's order (all, or those in `include`);
    /// what does not fit in the packet is left out whole and counted (TRUNCATED).
    pub fn encode_with(&self, builder: &mut RecordBuilder, include: Option<&[String]>) {
        let mut f = Fields::new(builder);
        f.bytes(attr::ACTION, self.action.as_bytes());
        f.bytes(attr::SUBSYSTEM, self.subsystem.as_bytes());
        f.bytes(attr::SYSNAME, self.sysname.as_bytes());
        f.bytes(attr::SYSPATH, self.syspath.as_bytes());
        f.u64(attr::SEQNUM, self.seqnum);
        f.bytes(attr::EVENT_SOURCE, self.source.name().as_bytes());
        let optional = [
            (attr::DEVTYPE, &self.devtype),
            (attr::DEVNODE, &self.devnode),
            (attr::DRIVER, &self.driver),
            (attr::OLD_SYSPATH, &self.old_syspath),
        ];
        for (id, value) in optional {
            if let Some(value) = value {
                f.bytes(id, value.as_bytes());
            }
        }
        if let Some((major, minor)) = self.devnum {
            f.u32(attr::MAJOR, major);
            f.u32(attr::MINOR, minor);
        }
        if !self.tags.is_empty() {
            f.bytes(attr::TAGS, self.tags.join(":").as_bytes());
        }
        for (key, value) in &self.properties {
            let wanted = match include {
                Some(keys) => keys.iter().any(|k| k == key),
                None => !OWN_ATTRIBUTES.contains(&key.as_str()),
            };
            if wanted {
                f.bytes(attr::PROPERTY, format!("{key}={value}").as_bytes());
            }
        }
        f.finish();
    }

    fn into_event(self, flags: u8) -> Event {
        Event::new(RecordType::Device, self.subtype, flags, Arc::new(self))
    }
}

impl Change for DeviceInfo {
    fn encode(&self, builder: &mut RecordBuilder, _: RecordType) {
        self.encode_with(builder, None);
    }
}

/// What one watch selects. Every field given must match; globs are shell-style, as in udev
/// rules (`*`, `?`, `[...]`), compiled when the watch is set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceMatch {
    pub subsystem: Option<String>,
    pub devtype: Option<String>,
    pub tag: Option<String>,
    /// (key glob, value glob): some property must match each.
    pub properties: Vec<(Pattern, Pattern)>,
    pub sysname: Option<Pattern>,
    /// Only these properties go into the records (None: all).
    pub include: Option<Vec<String>>,
}

impl DeviceMatch {
    /// A device watch's options (`subsystem`, `tag`, `sysname`, `property`, `properties`),
    /// checked and compiled; touches nothing outside.
    pub fn from_options(options: &mut Options) -> Result<DeviceMatch> {
        let (subsystem, devtype) = match options.take_string("subsystem")? {
            None => (None, None),
            Some(value) => {
                let value = pattern("subsystem", value)?;
                match value.split_once('/') {
                    Some((s, t)) => (Some(s.to_owned()), Some(t.to_owned())),
                    None => (Some(value), None),
                }
            }
        };
        let tag = options
            .take_string("tag")?
            .map(|t| pattern("tag", t))
            .transpose()?;
        let sysname = options
            .take_string("sysname")?
            .map(|s| glob("sysname", s))
            .transpose()?;
        let properties = list(options, "property")?
            .unwrap_or_default()
            .into_iter()
            .map(|p| match p.split_once('=') {
                Some((k, v)) if !k.is_empty() => Ok((
                    glob("property", k.to_owned())?,
                    glob("property", v.to_owned())?,
                )),
                _ => Err(Error::invalid(format!(
                    "option 'property': '{}' is not KEY=GLOB",
                    Truncated(&p)
                ))),
            })
            .collect::<Result<Vec<_>>>()?;
        // Absent: every property; an empty list: none, only the fixed fields.
        let include = list(options, "properties")?;
        Ok(DeviceMatch {
            subsystem,
            devtype,
            tag,
            properties,
            sysname,
            include,
        })
    }

    pub fn matches(&self, d: &DeviceInfo) -> bool {
        self.subsystem.as_ref().is_none_or(|s| *s == d.subsystem)
            && self
                .devtype
                .as_ref()
                .is_none_or(|t| Some(t) == d.devtype.as_ref())
            && self.tag.as_ref().is_none_or(|t| d.tags.contains(t))
            && self.sysname.as_ref().is_none_or(|g| g.matches(&d.sysname))
            && self.properties.iter().all(|(key, value)| {
                d.properties
                    .iter()
                    .any(|(k, v)| key.matches(k) && value.matches(v))
            })
    }

    /// This watch's own record, when it asked for a subset of the properties.
    pub fn custom_record(&self, event: &Event, d: &DeviceInfo) -> Option<Vec<u8>> {
        let include = self.include.as_deref()?;
        let mut builder = event.builder();
        d.encode_with(&mut builder, Some(include));
        Some(builder.finish())
    }

    /// The part libudev can filter in the kernel: (subsystem, devtype) and tag.
    fn socket_filter(&self) -> (Option<(String, Option<String>)>, Option<String>) {
        (
            self.subsystem.clone().map(|s| (s, self.devtype.clone())),
            self.tag.clone(),
        )
    }
}

/// A device watch's scope: its match, and a lease that keeps the source's socket filter
/// covering it for as long as the watch exists.
#[derive(Clone)]
pub struct DeviceScope {
    pub matcher: Arc<DeviceMatch>,
    pub lease: Option<Arc<FilterLease>>,
}

impl PartialEq for DeviceScope {
    fn eq(&self, other: &Self) -> bool {
        self.matcher == other.matcher
    }
}

impl Eq for DeviceScope {}

impl std::fmt::Debug for DeviceScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.matcher.fmt(f)
    }
}

impl Scope for DeviceScope {
    fn covers(&self, event: &Event) -> bool {
        event
            .subject::<DeviceInfo>()
            .is_some_and(|device| self.matcher.matches(device))
    }

    fn record_for(&self, event: &Event) -> Option<Vec<u8>> {
        self.matcher
            .custom_record(event, event.subject::<DeviceInfo>()?)
    }
}

/// Held by each device watch; dropping it asks the monitor thread to recompute its filter.
pub struct FilterLease {
    matcher: Arc<DeviceMatch>,
    shared: Weak<Shared>,
}

impl Drop for FilterLease {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            shared.wake();
        }
    }
}

/// The kernel-side filter of the monitor socket: the union of the leases' filters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct SocketFilter {
    /// Empty: no subsystem filter (some watch wants every subsystem).
    subsystems: Vec<(String, Option<String>)>,
    /// Empty: no tag filter.
    tags: Vec<String>,
}

struct Shared {
    /// Where events come from now: changes only while `follows_udevd`.
    source: Mutex<EventSource>,
    follows_udevd: bool,
    leases: Mutex<Vec<Weak<FilterLease>>>,
    /// Bumped by each new watch after its lease is in `leases`.
    requested: AtomicU64,
    /// The newest request the monitor thread has acted on, and why the socket does not cover
    /// it if it could not be opened. A new watch waits for its request, so that no event
    /// after AddWatch returns can slip past a socket that did not cover it yet.
    applied: Mutex<(u64, Option<String>)>,
    applied_changed: Condvar,
    /// Held while a batch of events is published and while a snapshot is taken.
    publishing: Mutex<()>,
    wake_write: OwnedFd,
}

impl Shared {
    fn new(source: EventSource, follows_udevd: bool, wake_write: OwnedFd) -> Shared {
        Shared {
            source: Mutex::new(source),
            follows_udevd,
            leases: Mutex::new(Vec::new()),
            requested: AtomicU64::new(0),
            applied: Mutex::new((0, None)),
            applied_changed: Condvar::new(),
            publishing: Mutex::new(()),
            wake_write,
        }
    }

    /// Registers a watch's lease and returns once the monitor socket covers it.
    fn add_lease(&self, lease: &Arc<FilterLease>) -> Result<()> {
        self.leases
            .lock()
            .expect("device leases poisoned")
            .push(Arc::downgrade(lease));
        let request = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        self.wake();
        let applied = self.applied.lock().expect("device monitor state poisoned");
        let (applied, _) = self
            .applied_changed
            .wait_timeout_while(applied, APPLY_TIMEOUT, |(done, _)| *done < request)
            .expect("device monitor state poisoned");
        match &*applied {
            (done, _) if *done < request => Err(Error::Failed(
                "the device monitor did not take up the watch in time".into(),
            )),
            (_, Some(why)) => Err(Error::Failed(format!(
                "cannot open the device monitor: {why}"
            ))),
            _ => Ok(()),
        }
    }

    fn source(&self) -> EventSource {
        *self.source.lock().expect("device source state poisoned")
    }

    fn mark_applied(&self, request: u64, failure: Option<String>) {
        *self.applied.lock().expect("device monitor state poisoned") = (request, failure);
        self.applied_changed.notify_all();
    }

    fn wake(&self) {
        // A full pipe already means "wake up"; nothing else can fail here.
        let _ = nix::unistd::write(&self.wake_write, &[1]);
    }

    /// None while no device watch exists: then no socket is open at all.
    fn wanted_filter(&self) -> Option<SocketFilter> {
        let mut leases = self.leases.lock().expect("device leases poisoned");
        leases.retain(|l| l.strong_count() > 0);
        let live: Vec<Arc<FilterLease>> = leases.iter().filter_map(Weak::upgrade).collect();
        if live.is_empty() {
            return None;
        }
        let filters: Vec<_> = live.iter().map(|l| l.matcher.socket_filter()).collect();
        let mut union = SocketFilter::default();
        if filters.iter().all(|(s, _)| s.is_some()) {
            union.subsystems = filters.iter().filter_map(|(s, _)| s.clone()).collect();
            union.subsystems.sort();
            union.subsystems.dedup();
        }
        if filters.iter().all(|(_, t)| t.is_some()) {
            union.tags = filters.iter().filter_map(|(_, t)| t.clone()).collect();
            union.tags.sort();
            union.tags.dedup();
        }
        Some(union)
    }
}

pub struct DeviceSource {
    shared: Arc<Shared>,
}

impl DeviceSource {
    /// `events` says where events come from: "auto" follows udevd starting and stopping.
    pub fn start(hub: Arc<Hub>, events: DeviceEvents) -> io::Result<Arc<DeviceSource>> {
        let (wake_read, wake_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        let udevd = match events {
            DeviceEvents::Auto => Some(udevd::UdevdWatch::new()),
            DeviceEvents::Udev | DeviceEvents::Kernel => None,
        };
        let source = match (events, &udevd) {
            (_, Some(watch)) if watch.running() => EventSource::Udev,
            (DeviceEvents::Udev, _) => EventSource::Udev,
            _ => EventSource::Kernel,
        };
        let shared = Arc::new(Shared::new(source, udevd.is_some(), wake_write));
        let follower = shared.clone();
        std::thread::Builder::new()
            .name("devices".into())
            .spawn(move || follow(&follower, &hub, wake_read, udevd))?;
        tracing::info!(source = source.name(), ?events, "device source started");
        Ok(Arc::new(DeviceSource { shared }))
    }
}

fn open_monitor(source: EventSource, filter: &SocketFilter) -> io::Result<udev::MonitorSocket> {
    let mut builder = match source {
        EventSource::Udev => udev::MonitorBuilder::new()?,
        EventSource::Kernel => udev::MonitorBuilder::new_kernel()?,
    };
    for (subsystem, devtype) in &filter.subsystems {
        builder = match devtype {
            Some(devtype) => builder.match_subsystem_devtype(subsystem, devtype)?,
            None => builder.match_subsystem(subsystem)?,
        };
    }
    for tag in &filter.tags {
        builder = builder.match_tag(tag)?;
    }
    let socket = builder.listen()?;
    let size = std::env::var(RECEIVE_BUFFER_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(RECEIVE_BUFFER);
    // Needs CAP_NET_ADMIN; without it the kernel's default (rmem_max) must do.
    let forced =
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::RcvBufForce, &size);
    if forced.is_err() {
        let _ = nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::RcvBuf, &size);
    }
    Ok(socket)
}

/// The monitor sockets open for one filter: the udev group's while udevd serves; the
/// kernel group's while the kernel serves, or, when the thread follows udevd, as the
/// stand-by that keeps what udevd has not passed on yet.
struct Sockets {
    filter: SocketFilter,
    udev: Option<udev::MonitorSocket>,
    kernel: Option<udev::MonitorSocket>,
}

impl Sockets {
    fn open(shared: &Shared, filter: &SocketFilter) -> io::Result<Sockets> {
        let source = shared.source();
        let udev = (source == EventSource::Udev)
            .then(|| open_monitor(EventSource::Udev, filter))
            .transpose()?;
        let kernel = (source == EventSource::Kernel || shared.follows_udevd)
            .then(|| open_monitor(EventSource::Kernel, filter))
            .transpose()?;
        Ok(Sockets {
            filter: filter.clone(),
            udev,
            kernel,
        })
    }

    /// Publishes what waits on every socket, the serving one first.
    fn drain(&self, flow: &mut Flow, hub: &Hub, shared: &Shared) {
        for (socket, from) in [
            (&self.udev, EventSource::Udev),
            (&self.kernel, EventSource::Kernel),
        ] {
            if let Some(socket) = socket {
                drain(socket, from, flow, hub, shared);
            }
        }
    }
}

/// What the thread knows across sockets and switches.
#[derive(Default)]
struct Flow {
    /// Sequence numbers of the newest uevents passed on.
    delivered: Remembered,
    /// While udevd serves: uevents the kernel sent that udevd has not passed on yet.
    pending: BTreeMap<u64, DeviceInfo>,
    /// `pending` may lack some: it overflowed, or the stand-by socket did.
    pending_incomplete: bool,
}

/// A bounded set of sequence numbers: the oldest go first.
#[derive(Default)]
struct Remembered {
    numbers: HashSet<u64>,
    order: VecDeque<u64>,
}

impl Remembered {
    fn insert(&mut self, seqnum: u64) {
        if self.numbers.insert(seqnum) {
            self.order.push_back(seqnum);
            if self.order.len() > REMEMBERED
                && let Some(oldest) = self.order.pop_front()
            {
                self.numbers.remove(&oldest);
            }
        }
    }

    fn contains(&self, seqnum: u64) -> bool {
        self.numbers.contains(&seqnum)
    }
}

/// Publishes what is waiting on `socket`, which gets events `from` udev or the kernel: each
/// uevent not passed on before, when `from` serves; into `flow.pending` when it stands by.
fn drain(
    socket: &udev::MonitorSocket,
    from: EventSource,
    flow: &mut Flow,
    hub: &Hub,
    shared: &Shared,
) {
    let _held = shared
        .publishing
        .lock()
        .expect("device publishing poisoned");
    let serving = shared.source() == from;
    loop {
        Errno::clear();
        let Some(event) = socket.iter().next() else {
            // libudev leaves recvmsg's errno: ENOBUFS once per overflow, then the rest of
            // the queue can still be read.
            if Errno::last() != Errno::ENOBUFS {
                break;
            }
            if serving {
                tracing::warn!(
                    source = from.name(),
                    "the device monitor socket overflowed: uevents were lost"
                );
                hub.publish(&Notice::loss(
                    KIND,
                    RecordType::Device,
                    format!(
                        "the {} uevent socket overflowed (ENOBUFS): uevents came faster than \
                         the daemon read them",
                        from.name()
                    ),
                ));
            } else {
                flow.pending_incomplete = true;
            }
            continue;
        };
        let seqnum = event.sequence_number();
        if flow.delivered.contains(seqnum) {
            continue;
        }
        let dev = event.device();
        let action = dev.action().map(text);
        let Some(info) = DeviceInfo::from_device(&dev, action.as_deref(), seqnum, from) else {
            tracing::debug!(?action, "uevent with an action this version does not know");
            continue;
        };
        if serving {
            flow.pending.remove(&seqnum);
            flow.delivered.insert(seqnum);
            hub.publish(&info.into_event(0));
        } else {
            if flow.pending.len() >= MAX_PENDING {
                flow.pending.pop_first();
                flow.pending_incomplete = true;
            }
            flow.pending.insert(seqnum, info);
        }
    }
}

/// Moves to events from `to` (udevd started or stopped) and tells every device watch.
fn switch_source(
    to: EventSource,
    sockets: &mut Option<Sockets>,
    flow: &mut Flow,
    hub: &Hub,
    shared: &Shared,
) -> io::Result<()> {
    let set = |source| *shared.source.lock().expect("device source state poisoned") = source;
    let Some(open) = sockets else {
        // No watch, no socket: the next one opens on the new source.
        set(to);
        return Ok(());
    };
    let reason = match to {
        EventSource::Udev => {
            let udev = open_monitor(EventSource::Udev, &open.filter)?;
            // What the kernel sent up to now is passed on raw; udevd's versions of it are
            // then skipped as passed on. The kernel's socket stays, standing by.
            if let Some(kernel) = &open.kernel {
                drain(kernel, EventSource::Kernel, flow, hub, shared);
            }
            flow.pending.clear();
            flow.pending_incomplete = false;
            open.udev = Some(udev);
            "udevd started: events come after its rules, with its properties"
        }
        EventSource::Kernel => {
            if open.kernel.is_none() {
                open.kernel = Some(open_monitor(EventSource::Kernel, &open.filter)?);
                flow.pending_incomplete = true;
            }
            // Whatever udevd passed on before it stopped, then what the kernel sent since.
            if let Some(udev) = open.udev.take() {
                drain(&udev, EventSource::Udev, flow, hub, shared);
            }
            if let Some(kernel) = &open.kernel {
                drain(kernel, EventSource::Kernel, flow, hub, shared);
            }
            "udevd stopped: events are the kernel's raw uevents"
        }
    };
    let _held = shared
        .publishing
        .lock()
        .expect("device publishing poisoned");
    set(to);
    tracing::info!(
        source = to.name(),
        "device events now come from {}",
        to.name()
    );
    hub.publish(&Notice::source_changed(KIND, to.name(), reason));
    if !flow.pending.is_empty() {
        tracing::info!(
            count = flow.pending.len(),
            "passing on raw the uevents udevd had not passed on"
        );
    }
    for (seqnum, info) in std::mem::take(&mut flow.pending) {
        flow.delivered.insert(seqnum);
        hub.publish(&info.into_event(0));
    }
    if std::mem::take(&mut flow.pending_incomplete) {
        hub.publish(&Notice::loss(
            KIND,
            RecordType::Device,
            "udevd stopped with more uevents not passed on than the daemon keeps",
        ));
    }
    Ok(())
}

fn follow(shared: &Shared, hub: &Hub, wake: OwnedFd, mut udevd: Option<udevd::UdevdWatch>) {
    let mut sockets: Option<Sockets> = None;
    let mut flow = Flow::default();
    loop {
        // Read before the leases: a lease added after this has a higher request number.
        let request = shared.requested.load(Ordering::SeqCst);
        let wanted = shared.wanted_filter();
        let mut failure = None;
        if let Some(watch) = &udevd {
            let now = if watch.running() {
                EventSource::Udev
            } else {
                EventSource::Kernel
            };
            if now != shared.source()
                && let Err(e) = switch_source(now, &mut sockets, &mut flow, hub, shared)
            {
                // Tried again at the next wake-up; the old source goes on meanwhile.
                tracing::error!(error = %e, "cannot open the device monitor for {}", now.name());
            }
        }
        if wanted.as_ref() != sockets.as_ref().map(|s| &s.filter) {
            // On failure the old sockets stay: they still cover every watch but the new one,
            // whose AddWatch then fails (and whose lease, dropped, wakes us to settle back).
            let next = match &wanted {
                None => Ok(None),
                Some(filter) => Sockets::open(shared, filter).map(Some),
            };
            match next {
                Ok(next) => {
                    if let Some(old) = &sockets {
                        old.drain(&mut flow, hub, shared);
                    }
                    tracing::debug!(filter = ?wanted, "device monitor filter");
                    sockets = next;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot open the device monitor with a new filter; keeping the old one");
                    failure = Some(e.to_string());
                }
            }
        }
        shared.mark_applied(request, failure);
        let mut fds = vec![PollFd::new(wake.as_fd(), PollFlags::POLLIN)];
        let udevd_fds = udevd.as_ref().map_or(Vec::new(), |w| w.fds());
        let first_udevd_fd = fds.len();
        fds.extend(
            udevd_fds
                .iter()
                .map(|fd| PollFd::new(*fd, PollFlags::POLLIN)),
        );
        let first_socket = fds.len();
        if let Some(open) = &sockets {
            for socket in [&open.udev, &open.kernel].into_iter().flatten() {
                fds.push(PollFd::new(socket.as_fd(), PollFlags::POLLIN));
            }
        }
        let timeout = udevd.as_ref().map_or(PollTimeout::NONE, |w| {
            PollTimeout::try_from(w.timeout() + Duration::from_millis(1))
                .unwrap_or(PollTimeout::MAX)
        });
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return tracing::error!(error = %e, "device source stopped: poll failed"),
        }
        let ready = |fd: &PollFd| fd.any().unwrap_or(false);
        let woken = ready(&fds[0]);
        let udevd_ready = fds[first_udevd_fd..first_socket].iter().any(ready);
        let readable = fds[first_socket..].iter().any(ready);
        drop(fds);
        drop(udevd_fds);
        if woken {
            let mut buf = [0u8; 64];
            while matches!(nix::unistd::read(&wake, &mut buf), Ok(n) if n > 0) {}
        }
        if readable && let Some(open) = &sockets {
            open.drain(&mut flow, hub, shared);
        }
        if let Some(watch) = &mut udevd
            && (udevd_ready || watch.timeout().is_zero())
        {
            watch.woken();
        }
    }
}

fn pattern(key: &str, value: String) -> Result<String> {
    if value.is_empty() || value.len() > MAX_PATTERN_LEN {
        return Err(Error::invalid(format!(
            "option '{key}' must be 1 to {MAX_PATTERN_LEN} bytes long"
        )));
    }
    Ok(value)
}

/// A glob option, compiled once; a malformed one is refused with the pattern named.
fn glob(key: &str, value: String) -> Result<Pattern> {
    let value = pattern(key, value)?;
    Pattern::new(&value).map_err(|e| {
        Error::invalid(format!(
            "option '{key}': '{}' is not a valid glob: {}",
            Truncated(&value),
            e.msg
        ))
    })
}

/// A list option, absent or not: at most MAX_FILTERS entries, each a valid pattern. Each
/// entry is looked at for every event, so the count is bounded like the filters'.
fn list(options: &mut Options, key: &str) -> Result<Option<Vec<String>>> {
    let Some(values) = options.take_strings(key)? else {
        return Ok(None);
    };
    if values.len() > MAX_FILTERS {
        return Err(Error::invalid(format!(
            "option '{key}': {} entries; at most {MAX_FILTERS}",
            values.len()
        )));
    }
    values
        .into_iter()
        .map(|v| pattern(key, v))
        .collect::<Result<_>>()
        .map(Some)
}

impl Source for DeviceSource {
    fn kind(&self) -> Kind {
        KIND
    }

    fn describe(&self) -> String {
        let now = match self.shared.source() {
            EventSource::Udev => "udev monitor (events after udevd's rules)",
            EventSource::Kernel => {
                "kernel uevents: udevd is not running, properties are the kernel's raw ones"
            }
        };
        if self.shared.follows_udevd {
            format!("{now}; switches when udevd starts or stops")
        } else {
            now.to_owned()
        }
    }

    fn scope(&self, options: &mut Options, _caller: &Caller) -> Result<Arc<dyn Scope>> {
        let matcher = Arc::new(DeviceMatch::from_options(options)?);
        let lease = Arc::new(FilterLease {
            matcher: matcher.clone(),
            shared: Arc::downgrade(&self.shared),
        });
        self.shared.add_lease(&lease)?;
        Ok(Arc::new(DeviceScope {
            matcher,
            lease: Some(lease),
        }))
    }

    fn option_names(&self) -> &'static [&'static str] {
        &["subsystem", "tag", "property", "sysname", "properties"]
    }

    fn with_snapshot(&self, scope: &dyn Scope, then: &mut dyn FnMut(&[Event])) {
        let Some(DeviceScope { matcher, .. }) = scope.downcast::<DeviceScope>() else {
            return then(&[]);
        };
        let _held = self
            .shared
            .publishing
            .lock()
            .expect("device publishing poisoned");
        let snapshot = enumerate(matcher, self.shared.source()).unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot enumerate devices for an initial state");
            Vec::new()
        });
        then(&snapshot);
    }
}

fn enumerate(matcher: &DeviceMatch, source: EventSource) -> io::Result<Vec<Event>> {
    let mut enumerator = udev::Enumerator::new()?;
    if let Some(subsystem) = &matcher.subsystem {
        enumerator.match_subsystem(subsystem)?;
    }
    if let Some(tag) = &matcher.tag {
        enumerator.match_tag(tag)?;
    }
    Ok(enumerator
        .scan_devices()?
        .filter_map(|dev| DeviceInfo::from_device(&dev, None, 0, source))
        .filter(|info| matcher.matches(info))
        .map(|info| info.into_event(FLAG_SNAPSHOT))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use watchd_proto::{FLAG_TRUNCATED, MAX_RECORD_LEN, Record};

    fn disk(properties: Vec<(&str, &str)>) -> DeviceInfo {
        DeviceInfo {
            subtype: device::ADD,
            action: "add".into(),
            subsystem: "block".into(),
            devtype: Some("disk".into()),
            sysname: "loop7".into(),
            syspath: "/sys/devices/virtual/block/loop7".into(),
            devnode: Some("/dev/loop7".into()),
            driver: None,
            seqnum: 4321,
            devnum: Some((7, 7)),
            tags: vec!["systemd".into()],
            properties: properties
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            old_syspath: None,
            source: EventSource::Udev,
        }
    }

    fn encode(info: &DeviceInfo, include: Option<&[String]>) -> Vec<u8> {
        let mut builder = RecordBuilder::new(RecordType::Device, info.subtype, 0, 1);
        info.encode_with(&mut builder, include);
        builder.finish()
    }

    #[test]
    fn matches_subsystem_devtype_tag_sysname_and_property_globs() {
        let d = disk(vec![("DM_NAME", "pool-tpool"), ("ID_FS_TYPE", "ext4")]);
        let m = |f: fn(&mut DeviceMatch)| {
            let mut m = DeviceMatch::default();
            f(&mut m);
            m.matches(&d)
        };
        assert!(m(|_| {}));
        assert!(
            m(|m| m.subsystem = Some("block".into())) && !m(|m| m.subsystem = Some("usb".into()))
        );
        assert!(
            m(|m| m.devtype = Some("disk".into())) && !m(|m| m.devtype = Some("partition".into()))
        );
        assert!(m(|m| m.tag = Some("systemd".into())) && !m(|m| m.tag = Some("seat".into())));
        assert!(
            m(|m| m.sysname = Some(Pattern::new("loop*").unwrap()))
                && !m(|m| m.sysname = Some(Pattern::new("sd?").unwrap()))
        );
        assert!(m(|m| m.properties = vec![(
            Pattern::new("DM_*").unwrap(),
            Pattern::new("*-tpool").unwrap()
        )]));
        assert!(!m(|m| m.properties = vec![(
            Pattern::new("DM_NAME").unwrap(),
            Pattern::new("other*").unwrap()
        )]));
        assert!(!m(|m| m.properties = vec![
            (
                Pattern::new("ID_FS_TYPE").unwrap(),
                Pattern::new("ext4").unwrap()
            ),
            (Pattern::new("DM_UUID").unwrap(), Pattern::new("*").unwrap())
        ]));
    }

    #[test]
    fn a_property_set_larger_than_a_packet_drops_whole_properties_and_counts_them() {
        let values: Vec<String> = (0..400)
            .map(|i| format!("value-{i:04}-{}", "x".repeat(20)))
            .collect();
        let keys: Vec<String> = (0..400).map(|i| format!("PROP_{i:04}")).collect();
        let d = disk(
            keys.iter()
                .map(String::as_str)
                .zip(values.iter().map(String::as_str))
                .collect(),
        );
        let bytes = encode(&d, None);
        assert!(bytes.len() <= MAX_RECORD_LEN);
        let record = Record::parse(&bytes).unwrap();
        assert_eq!(record.header.flags & FLAG_TRUNCATED, FLAG_TRUNCATED);
        let kept: Vec<String> = record
            .attrs()
            .filter_map(|a| a.ok())
            .filter(|a| a.id == attr::PROPERTY)
            .map(|a| String::from_utf8(a.value.to_vec()).unwrap())
            .collect();
        let dropped = record.get_u32(attr::TRUNCATED).unwrap() as usize;
        assert_eq!(
            kept.len() + dropped,
            400,
            "every property is either whole in the record or counted"
        );
        assert_eq!(
            kept[0],
            format!("PROP_0000={}", values[0]),
            "udev's order, first ones kept"
        );
        assert!(
            kept.iter()
                .all(|p| p.len() == "PROP_0000=".len() + values[0].len()),
            "none is cut"
        );
        assert_eq!(
            record.get_str(attr::SYSNAME).as_deref(),
            Some("loop7"),
            "fixed fields come first"
        );
    }

    #[test]
    fn own_attributes_are_not_repeated_as_properties_and_a_subset_is_honoured() {
        let d = disk(vec![
            ("ACTION", "add"),
            ("DEVNAME", "/dev/loop7"),
            ("ID_FS_TYPE", "ext4"),
            ("DISKSEQ", "9"),
        ]);
        let props = |bytes: &[u8]| -> Vec<String> {
            Record::parse(bytes)
                .unwrap()
                .attrs()
                .filter_map(|a| a.ok())
                .filter(|a| a.id == attr::PROPERTY)
                .map(|a| String::from_utf8(a.value.to_vec()).unwrap())
                .collect()
        };
        assert_eq!(props(&encode(&d, None)), ["ID_FS_TYPE=ext4", "DISKSEQ=9"]);
        assert_eq!(
            props(&encode(&d, Some(&["DISKSEQ".to_owned()]))),
            ["DISKSEQ=9"]
        );
        assert!(
            props(&encode(&d, Some(&[]))).is_empty(),
            "an empty list means no properties"
        );
    }

    #[test]
    fn passed_on_sequence_numbers_are_remembered_up_to_a_bound() {
        let mut remembered = Remembered::default();
        for seqnum in 0..(REMEMBERED as u64 + 10) {
            remembered.insert(seqnum);
        }
        remembered.insert(20);
        assert!(!remembered.contains(9), "the oldest went first");
        assert!(remembered.contains(10) && remembered.contains(REMEMBERED as u64 + 9));
        assert_eq!(
            remembered.order.len(),
            REMEMBERED,
            "a repeat is not counted twice"
        );
    }

    #[test]
    fn the_socket_filter_is_the_union_and_only_where_every_watch_has_one() {
        let (wake_read, wake_write) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).unwrap();
        let shared = Arc::new(Shared::new(EventSource::Udev, false, wake_write));
        let lease = |subsystem: Option<&str>, tag: Option<&str>| {
            let matcher = Arc::new(DeviceMatch {
                subsystem: subsystem.map(str::to_owned),
                tag: tag.map(str::to_owned),
                ..DeviceMatch::default()
            });
            let lease = Arc::new(FilterLease {
                matcher,
                shared: Arc::downgrade(&shared),
            });
            shared.leases.lock().unwrap().push(Arc::downgrade(&lease));
            lease
        };
        assert_eq!(shared.wanted_filter(), None, "no watch, no socket");
        let block = lease(Some("block"), Some("systemd"));
        let usb = lease(Some("usb"), None);
        let union = shared.wanted_filter().unwrap();
        assert_eq!(
            union.subsystems,
            [("block".to_owned(), None), ("usb".to_owned(), None)]
        );
        assert!(
            union.tags.is_empty(),
            "the usb watch wants untagged devices too"
        );
        let everything = lease(None, None);
        assert_eq!(shared.wanted_filter().unwrap(), SocketFilter::default());
        drop((everything, usb));
        let mut buf = [0u8; 8];
        assert!(
            nix::unistd::read(&wake_read, &mut buf).unwrap() > 0,
            "a dropped watch wakes the thread"
        );
        let only_block = shared.wanted_filter().unwrap();
        assert_eq!(
            (only_block.subsystems.len(), only_block.tags.as_slice()),
            (1, &["systemd".to_owned()][..])
        );
        drop(block);
        assert_eq!(shared.wanted_filter(), None);
    }
}
