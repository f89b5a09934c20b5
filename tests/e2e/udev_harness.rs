//! The device tests' harness (`watchd_e2e::udev`) proved against the real systemd-udevd
//! and the real libudev, as `udevadm monitor` uses it: injected USB events are accepted and
//! parsed with every property, the header's hashes are the ones the kernel-side filters of
//! libudev subscribers compare (a wrong one is dropped), our encoding of udevd's own
//! messages is byte for byte what udevd sent, loop devices give real add, change and remove
//! events, and a storm of 10,000 injected events goes out quickly and arrives complete.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use watchd_e2e::udev::{
    Header, InjectedEvent, Injector, LoopDevice, USB_MODEL_ID, USB_SERIAL_SHORT, USB_VENDOR_ID,
    UdevListener, Udevd, inject, inject_many, loop_devices_backed_by, next_seqnum, string_hash32,
};
use watchd_e2e::{Process, Scratch, Trial};

use crate::trial;

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "udev_harness::injected_usb_storage_events_reach_a_libudev_monitor_with_every_property",
            usb_events_reach_libudev,
        ),
        trial(
            "udev_harness::libudev_kernel_filters_pass_our_hashes_and_drop_wrong_ones",
            kernel_filters_use_our_hashes,
        ),
        trial(
            "udev_harness::udevds_own_messages_reencode_byte_for_byte",
            udevd_messages_reencode,
        ),
        trial(
            "udev_harness::a_partitioned_loop_device_gives_add_and_remove_of_disk_and_partition",
            loop_add_and_remove,
        ),
        trial(
            "udev_harness::writing_change_to_the_uevent_file_gives_a_change",
            loop_change,
        ),
        trial(
            "udev_harness::a_storm_of_10000_injected_events_goes_out_fast_and_arrives_in_order",
            storm,
        ),
    ]
}

/// Bus 1 device numbers, one per trial, so that parallel trials inject different devices.
const DEVNUM_EVENTS: u8 = 2;
const DEVNUM_FILTERS: u8 = 3;

async fn usb_events_reach_libudev() -> Result<()> {
    let udevd = Udevd::ensure()?;
    let again = Udevd::ensure()?;
    ensure!(
        again.pid() == udevd.pid(),
        "two handles, two udevds: {:?} and {:?}",
        udevd.pid(),
        again.pid()
    );
    drop(again);

    let monitor = UdevadmMonitor::start(&["--property", "--subsystem-match=usb"])?;
    let device_add = InjectedEvent::usb_storage_add(1, DEVNUM_EVENTS, next_seqnum());
    let interface_add =
        InjectedEvent::usb_storage_interface("add", 1, DEVNUM_EVENTS, next_seqnum());
    // Another subsystem: the monitor's filter must keep it out.
    let block_change = InjectedEvent::change(
        "block",
        "/devices/virtual/block/watchd-harness-not-usb",
        &[("DEVTYPE", "disk")],
    );
    let interface_remove =
        InjectedEvent::usb_storage_interface("remove", 1, DEVNUM_EVENTS, next_seqnum());
    let device_remove = InjectedEvent::usb_storage_remove(1, DEVNUM_EVENTS, next_seqnum());

    inject(&device_add)?;
    let seen = monitor.expect_seqnum(&device_add)?;
    ensure!(
        seen.action == "add" && seen.subsystem == "usb" && seen.devpath == device_add.devpath(),
        "udevadm printed {seen:?}"
    );
    for (key, value) in [
        ("DEVNAME", "/dev/bus/usb/001/002"),
        ("DEVTYPE", "usb_device"),
        ("ID_VENDOR_ID", USB_VENDOR_ID),
        ("ID_MODEL_ID", USB_MODEL_ID),
        ("ID_SERIAL_SHORT", USB_SERIAL_SHORT),
        ("MAJOR", "189"),
        ("MINOR", "1"),
    ] {
        ensure!(
            seen.get(key) == Some(value),
            "{key}: {:?}, not {value:?}",
            seen.get(key)
        );
    }
    same_properties(&device_add, &seen)?;

    let rest = [
        &interface_add,
        &block_change,
        &interface_remove,
        &device_remove,
    ];
    for event in rest {
        inject(event)?;
    }
    let seen = monitor.collect_through(&device_remove, &rest)?;
    let seqnums: Vec<u64> = seen.iter().map(MonitorEvent::seqnum).collect();
    let expected = [&interface_add, &interface_remove, &device_remove].map(|e| e.seqnum());
    ensure!(
        seqnums == expected,
        "expected the interface's add and remove and the device's remove, in order, and not the \
         block change {}: got seqnums {seqnums:?}",
        block_change.seqnum()
    );
    ensure!(seen[0].get("INTERFACE") == Some("8/6/80"));
    ensure!(seen[0].get("DRIVER") == Some("usb-storage"));
    ensure!(seen[2].action == "remove");
    for (sent, got) in [(&interface_add, &seen[0]), (&device_remove, &seen[2])] {
        same_properties(sent, got)?;
    }
    Ok(())
}

/// Every injected property arrived unchanged (tags as sets: libudev rebuilds TAGS).
fn same_properties(sent: &InjectedEvent, got: &MonitorEvent) -> Result<()> {
    for (key, value) in sent.properties() {
        let arrived = got.get(key);
        if key == "TAGS" || key == "CURRENT_TAGS" {
            let mut a: Vec<&str> = value.split(':').filter(|t| !t.is_empty()).collect();
            let mut b: Vec<&str> = arrived
                .unwrap_or_default()
                .split(':')
                .filter(|t| !t.is_empty())
                .collect();
            a.sort_unstable();
            b.sort_unstable();
            ensure!(a == b, "{key}: sent {value:?}, libudev has {arrived:?}");
        } else {
            ensure!(
                arrived == Some(value.as_str()),
                "{key}: sent {value:?}, libudev has {arrived:?}"
            );
        }
    }
    Ok(())
}

async fn kernel_filters_use_our_hashes() -> Result<()> {
    let _udevd = Udevd::ensure()?;
    // Kernel-side BPF on the subsystem hash, the devtype hash and the tag bloom, then the
    // same checks on the strings in libudev.
    let strict = UdevadmMonitor::start(&[
        "--property",
        "--subsystem-match=usb/usb_device",
        "--tag-match=systemd",
    ])?;
    // Kernel-side BPF on the subsystem hash only, accepting the hash of "block" too, so a
    // usb event whose header claims "block" gets through it to libudev's string check.
    let loose = UdevadmMonitor::start(&[
        "--property",
        "--subsystem-match=usb",
        "--subsystem-match=block",
    ])?;

    let device = |seqnum| InjectedEvent::usb_storage_add(1, DEVNUM_FILTERS, seqnum);
    let tampered = |event: InjectedEvent, change: &dyn Fn(&mut Header)| {
        let mut header = Header::of(&event);
        change(&mut header);
        (event.encode_with_header(&header), event)
    };
    let right = device(next_seqnum());
    let cases: Vec<(&str, Vec<u8>, InjectedEvent)> = vec![
        {
            let (bytes, event) = tampered(device(next_seqnum()), &|h| {
                h.filter_subsystem_hash = string_hash32("block")
            });
            ("the subsystem hash of \"block\"", bytes, event)
        },
        {
            let (bytes, event) = tampered(device(next_seqnum()), &|h| {
                h.filter_devtype_hash = string_hash32("usb_interface")
            });
            ("the devtype hash of \"usb_interface\"", bytes, event)
        },
        {
            let (bytes, event) = tampered(device(next_seqnum()), &|h| {
                h.filter_tag_bloom_hi = 0;
                h.filter_tag_bloom_lo = 0;
            });
            ("no tag bloom bits", bytes, event)
        },
        {
            let event =
                InjectedEvent::usb_storage_interface("add", 1, DEVNUM_FILTERS, next_seqnum());
            ("devtype usb_interface", event.encode(), event)
        },
        {
            let event = device(next_seqnum())
                .without("TAGS")
                .without("CURRENT_TAGS");
            ("no tags", event.encode(), event)
        },
    ];
    let injector = Injector::new()?;
    for (_, bytes, _) in &cases {
        injector.send_raw(bytes)?;
    }
    injector.send(&right)?;
    let mut ours: Vec<&InjectedEvent> = cases.iter().map(|(_, _, e)| e).collect();
    ours.push(&right);

    // The loose monitor takes all of them: each is a message libudev accepts.
    let seen: Vec<u64> = loose
        .collect_through(&right, &ours)?
        .iter()
        .map(MonitorEvent::seqnum)
        .collect();
    let all: Vec<u64> = ours.iter().map(|e| e.seqnum()).collect();
    ensure!(
        seen == all,
        "the loose monitor saw seqnums {seen:?}, expected {all:?}"
    );
    // The strict one only the right one: the tampered ones match its string checks, so
    // only the kernel filter, comparing hashes, can have dropped them; the right one
    // passing means our hashes are the ones libudev computes for usb, usb_device, systemd.
    let seen = strict.collect_through(&right, &ours)?;
    let unexpected: Vec<&str> = cases
        .iter()
        .filter(|(_, _, e)| seen.iter().any(|s| s.seqnum() == e.seqnum()))
        .map(|(what, _, _)| *what)
        .collect();
    ensure!(
        unexpected.is_empty(),
        "the strict monitor let through events with {unexpected:?}"
    );
    ensure!(seen.len() == 1, "the strict monitor saw {seen:?}");
    Ok(())
}

async fn udevd_messages_reencode() -> Result<()> {
    let _udevd = Udevd::ensure()?;
    let scratch = Scratch::new("udev-bytes")?;
    let listener = UdevListener::new()?;
    let device = LoopDevice::attach_partitioned(&scratch.path, 8)?;
    let partition = device.partition_devpaths().remove(0);
    let mut checked = Vec::new();
    for (devpath, devtype) in [(device.devpath(), "disk"), (partition, "partition")] {
        let (event, bytes) = listener.wait_for(Duration::from_secs(10), |e| {
            e.devpath() == devpath && e.action() == "add"
        })?;
        ensure!(
            event.get("DEVTYPE") == Some(devtype),
            "udevd's {devpath}: {event:?}"
        );
        ensure!(
            !event.tags().is_empty(),
            "udevd tags block devices (systemd), so the bloom is tested: {event:?}"
        );
        let header = Header::parse(&bytes)?;
        ensure!(
            header == Header::of(&event),
            "udevd's header {header:x?}, ours {:x?}",
            Header::of(&event)
        );
        ensure!(
            event.encode() == bytes,
            "re-encoded {devpath} differs from udevd's message"
        );
        checked.push(devtype);
    }
    ensure!(checked == ["disk", "partition"]);
    Ok(())
}

async fn loop_add_and_remove() -> Result<()> {
    let _udevd = Udevd::ensure()?;
    let scratch = Scratch::new("udev-loop")?;
    ensure!(loop_devices_backed_by(&scratch.path)?.is_empty());
    let monitor = UdevadmMonitor::start(&["--subsystem-match=block"])?;

    let mut device = LoopDevice::attach_partitioned(&scratch.path, 8)?;
    let attached = loop_devices_backed_by(&scratch.path)?;
    ensure!(
        attached.len() == 1 && attached[0].starts_with(&format!("/dev/{} ", device.name())),
        "losetup --list: {attached:?}"
    );
    ensure!(Path::new(&format!("/dev/{}", device.partition_names()[0])).exists());
    let disk = device.devpath();
    let partition = device.partition_devpaths().remove(0);
    monitor.expect_all(&[("add", &disk), ("add", &partition)])?;

    device.detach()?;
    monitor.expect_all(&[("remove", &partition)])?;
    device.detach()?; // a second detach does nothing
    device.remove_device()?;
    monitor.expect_all(&[("remove", &disk)])?;
    ensure!(
        !Path::new("/sys/block").join(device.name()).exists(),
        "{} is still in sysfs",
        device.name()
    );
    ensure!(
        loop_devices_backed_by(&scratch.path)?.is_empty(),
        "still attached"
    );
    Ok(())
}

async fn loop_change() -> Result<()> {
    let udevd = Udevd::ensure()?;
    let scratch = Scratch::new("udev-change")?;
    let device = LoopDevice::attach_partitioned(&scratch.path, 8)?;
    // What attaching set off is done with before the monitor starts.
    udevd.settle(Duration::from_secs(10))?;
    let monitor = UdevadmMonitor::start(&["--property", "--subsystem-match=block"])?;

    device.trigger_change()?;
    monitor.expect_all(&[("change", &device.devpath())])?;
    let uuid = device.trigger_change_tagged()?;
    let seen = monitor.expect(Duration::from_secs(10), "the tagged change", |e| {
        e.get("SYNTH_UUID") == Some(uuid.as_str())
    })?;
    ensure!(
        seen.action == "change" && seen.devpath == device.devpath(),
        "{seen:?}"
    );
    ensure!(seen.get("DEVTYPE") == Some("disk"), "{seen:?}");
    Ok(())
}

async fn storm() -> Result<()> {
    const COUNT: usize = 10_000;
    let listener = UdevListener::new()?;
    // A subsystem nobody filters for: libudev subscribers with subsystem filters drop the
    // storm in the kernel.
    let devpath = format!("/devices/virtual/watchd_storm/storm{}", std::process::id());
    let events: Vec<InjectedEvent> = (0..COUNT)
        .map(|i| InjectedEvent::change("watchd_storm", &devpath, &[("STORM", &i.to_string())]))
        .collect();
    let started = Instant::now();
    let sent = inject_many(&events)?;
    let took = started.elapsed();
    ensure!(sent == COUNT, "sent {sent}");
    ensure!(
        took < Duration::from_secs(5),
        "{COUNT} events took {took:?} to send"
    );
    for (i, event) in events.iter().enumerate() {
        let (got, _) = listener
            .wait_for(Duration::from_secs(10), |e| e.devpath() == devpath)
            .with_context(|| format!("event {i} of the storm"))?;
        ensure!(
            &got == event,
            "event {i}: got STORM={:?} SEQNUM={}",
            got.get("STORM"),
            got.seqnum()
        );
    }
    Ok(())
}

/// One event as `udevadm monitor --udev [--property]` prints it.
#[derive(Debug)]
struct MonitorEvent {
    action: String,
    devpath: String,
    subsystem: String,
    properties: HashMap<String, String>,
}

impl MonitorEvent {
    fn get(&self, key: &str) -> Option<&str> {
        self.properties.get(key).map(String::as_str)
    }

    fn seqnum(&self) -> u64 {
        self.get("SEQNUM")
            .and_then(|s| s.parse().ok())
            .unwrap_or_default()
    }
}

/// `udevadm monitor --udev`: libudev's (sd-device's) own monitor, filters and parsing.
struct UdevadmMonitor {
    lines: mpsc::Receiver<String>,
    properties: bool,
    _process: Process,
}

impl UdevadmMonitor {
    /// Starts it and waits until it has subscribed (it prints its "UDEV - ..." line after).
    fn start(args: &[&str]) -> Result<UdevadmMonitor> {
        let mut command = Command::new("udevadm");
        command
            .arg("monitor")
            .arg("--udev")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut process = Process::spawn(command, "udevadm monitor")
            .context("is udevadm installed (package udev)?")?;
        let stdout = process.child().stdout.take().context("no stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if line.starts_with("UDEV - ") => break,
                Ok(_) => {}
                Err(_) => bail!(
                    "udevadm monitor {args:?} did not subscribe within 10 s (it does nothing in \
                     a chroot)"
                ),
            }
        }
        Ok(UdevadmMonitor {
            lines,
            properties: args.contains(&"--property"),
            _process: process,
        })
    }

    /// The next event printed before `deadline`.
    fn next_event(&self, deadline: Instant) -> Result<Option<MonitorEvent>> {
        let line = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with("UDEV ") => break line,
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => return Ok(None),
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!("udevadm monitor exited"),
            }
        };
        // UDEV  [3944.110933] add      /devices/virtual/block/loop200 (block)
        let fields: Vec<&str> = line.split_whitespace().collect();
        ensure!(fields.len() == 5, "unexpected line {line:?}");
        let mut event = MonitorEvent {
            action: fields[2].to_owned(),
            devpath: fields[3].to_owned(),
            subsystem: fields[4].trim_matches(['(', ')']).to_owned(),
            properties: HashMap::new(),
        };
        if self.properties {
            // KEY=VALUE lines up to an empty one, printed and flushed with the header.
            loop {
                let line = self
                    .lines
                    .recv_timeout(Duration::from_secs(5))
                    .context("properties of an event")?;
                if line.is_empty() {
                    break;
                }
                let (key, value) = line
                    .split_once('=')
                    .with_context(|| format!("not a property: {line:?}"))?;
                event.properties.insert(key.to_owned(), value.to_owned());
            }
        }
        Ok(Some(event))
    }

    /// The first event `wanted` accepts within `limit`, skipping others.
    fn expect(
        &self,
        limit: Duration,
        what: &str,
        mut wanted: impl FnMut(&MonitorEvent) -> bool,
    ) -> Result<MonitorEvent> {
        let deadline = Instant::now() + limit;
        let mut skipped = Vec::new();
        loop {
            match self.next_event(deadline)? {
                Some(event) if wanted(&event) => return Ok(event),
                Some(event) => skipped.push(format!("{} {}", event.action, event.devpath)),
                None => bail!("no {what} within {limit:?}; udevadm printed {skipped:?}"),
            }
        }
    }

    /// The event carrying `sent`'s SEQNUM.
    fn expect_seqnum(&self, sent: &InjectedEvent) -> Result<MonitorEvent> {
        self.expect(
            Duration::from_secs(5),
            &format!("event with SEQNUM {}", sent.seqnum()),
            |e| e.seqnum() == sent.seqnum(),
        )
    }

    /// The events carrying the SEQNUM of one of `ours` (others' are skipped), up to and
    /// including `last`'s.
    fn collect_through(
        &self,
        last: &InjectedEvent,
        ours: &[&InjectedEvent],
    ) -> Result<Vec<MonitorEvent>> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut seen = Vec::new();
        loop {
            let Some(event) = self.next_event(deadline)? else {
                bail!(
                    "no event with SEQNUM {} within 5 s; before it: {seen:?}",
                    last.seqnum()
                );
            };
            let done = event.seqnum() == last.seqnum();
            if ours.iter().any(|e| e.seqnum() == event.seqnum()) {
                seen.push(event);
            }
            if done {
                return Ok(seen);
            }
        }
    }

    /// Waits until each (action, devpath) has been printed, in any order.
    fn expect_all(&self, wanted: &[(&str, &str)]) -> Result<()> {
        let mut missing: Vec<(&str, &str)> = wanted.to_vec();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        while !missing.is_empty() {
            let Some(event) = self.next_event(deadline)? else {
                bail!("missing {missing:?} after 10 s; udevadm printed {seen:?}");
            };
            missing.retain(|(action, devpath)| {
                !(event.action == *action && event.devpath == *devpath)
            });
            seen.push(format!("{} {}", event.action, event.devpath));
        }
        Ok(())
    }
}
