//! Device events with the real systemd-udevd and libudev: loop devices of the tests' own,
//! USB devices injected into the udev netlink group, a storm, and the kernel fallback.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use watchd_client::{Event, EventStream, SubscribeOptions, WatchOptions};
use watchd_e2e::udev::{self, InjectedEvent, LoopDevice, Udevd};
use watchd_e2e::{Env, Trial};
use watchd_proto::{FLAG_SNAPSHOT, RecordType, attr, device, meta};

use crate::{error_name, expect_silence, next, next_within, trial};

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "devices::a_partitioned_loop_image_is_an_add_of_the_disk_and_its_partition",
            loop_add,
        ),
        trial(
            "devices::detaching_removes_the_partition_and_changes_the_disk",
            loop_detach,
        ),
        trial(
            "devices::writing_change_to_the_uevent_file_is_a_change",
            loop_change,
        ),
        trial(
            "devices::an_injected_usb_storage_device_reaches_a_usb_watch_with_its_properties",
            usb_injected,
        ),
        trial(
            "devices::subsystem_tag_and_property_filters_select_events_before_delivery",
            filters,
        ),
        trial(
            "devices::initial_state_enumerates_matching_devices_then_sync",
            initial_state,
        ),
        trial(
            "devices::a_storm_of_10000_events_reaches_one_subscriber_whole_and_the_stalled_one_counts_its_loss",
            storm,
        ),
        trial(
            "devices::without_udevd_raw_kernel_uevents_are_used_and_status_says_so",
            kernel_fallback,
        ),
        trial(
            "devices::bad_device_options_are_refused_by_name",
            bad_options,
        ),
    ]
}

/// A watch on kind "devices" with `options`; depth 256 so parallel tests' devices fit.
async fn watch_devices(env: &Env, options: WatchOptions) -> Result<EventStream> {
    let sub = env
        .client()
        .await?
        .subscribe(SubscribeOptions { depth: Some(256) })
        .await?;
    sub.add_watch(1, "devices", &options).await?;
    Ok(sub.into_events())
}

fn sysname(event: &Event) -> String {
    event.record().get_str(attr::SYSNAME).unwrap_or_default()
}

/// The value of device property `key` in the record, if it has one.
pub(crate) fn property(event: &Event, key: &str) -> Option<String> {
    let prefix = format!("{key}=");
    event.record().get_all(attr::PROPERTY).find_map(|a| {
        a.as_str()
            .and_then(|p| p.strip_prefix(&prefix))
            .map(str::to_owned)
    })
}

/// The next device record for `name` (records for other tests' devices are skipped).
async fn expect_device(stream: &mut EventStream, subtype: u8, name: &str) -> Result<Event> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = next_within(stream, left)
            .await
            .with_context(|| format!("waiting for subtype {subtype} of {name}"))?;
        let h = *event.header();
        if h.record_type == RecordType::Device as u32 && sysname(&event) == name {
            ensure!(
                h.subtype == subtype,
                "{name}: expected subtype {subtype}, got {} (action {:?})",
                h.subtype,
                event.record().get_str(attr::ACTION)
            );
            return Ok(event);
        }
    }
}

/// sysfs's "MAJOR:MINOR" of a block device.
fn sysfs_devnum(name: &str) -> Result<(u32, u32)> {
    let text = std::fs::read_to_string(format!("/sys/class/block/{name}/dev"))?;
    let (major, minor) = text.trim().split_once(':').context("MAJOR:MINOR")?;
    Ok((major.parse()?, minor.parse()?))
}

async fn loop_add() -> Result<()> {
    let _udevd = Udevd::ensure()?;
    let env = Env::start("dev-add").await?;
    let mut events = watch_devices(&env, WatchOptions::new().option("subsystem", "block")).await?;
    let disk = LoopDevice::attach_partitioned(&env.scratch.path, 8)?;
    let add = expect_device(&mut events, device::ADD, disk.name()).await?;
    let part_name = &disk.partition_names()[0];
    let part = expect_device(&mut events, device::ADD, part_name).await?;
    for (event, name, devtype) in [
        (&add, disk.name(), "disk"),
        (&part, part_name.as_str(), "partition"),
    ] {
        let r = event.record();
        ensure!(r.get_str(attr::ACTION).as_deref() == Some("add"));
        ensure!(r.get_str(attr::SUBSYSTEM).as_deref() == Some("block"));
        ensure!(
            r.get_str(attr::DEVTYPE).as_deref() == Some(devtype),
            "{name}: devtype"
        );
        ensure!(
            r.get_str(attr::DEVNODE) == Some(format!("/dev/{name}")),
            "{name}: devnode"
        );
        let syspath = std::fs::canonicalize(format!("/sys/class/block/{name}"))?;
        ensure!(
            r.get_str(attr::SYSPATH).as_deref() == syspath.to_str(),
            "{name}: syspath"
        );
        let (major, minor) = sysfs_devnum(name)?;
        ensure!(
            r.get_u32(attr::MAJOR) == Some(major) && r.get_u32(attr::MINOR) == Some(minor),
            "{name}: devnum"
        );
        ensure!(
            r.get_u64(attr::SEQNUM).is_some_and(|s| s > 0),
            "{name}: kernel seqnum"
        );
        ensure!(
            r.get_str(attr::EVENT_SOURCE).as_deref() == Some("udev"),
            "{name}: after udevd"
        );
    }
    ensure!(
        property(&part, "ID_PART_ENTRY_NUMBER").as_deref() == Some("1"),
        "udevd's rules ran (blkid's ID_PART_ENTRY_NUMBER) before the event reached us"
    );
    Ok(())
}

async fn loop_detach() -> Result<()> {
    let udevd = Udevd::ensure()?;
    let env = Env::start("dev-detach").await?;
    let mut disk = LoopDevice::attach_partitioned(&env.scratch.path, 8)?;
    let part_name = disk.partition_names()[0].clone();
    // udevd delivers after its rules: let the attach's events pass before watching.
    udevd.settle(Duration::from_secs(10))?;
    let mut events = watch_devices(&env, WatchOptions::new().option("subsystem", "block")).await?;
    disk.detach()?;
    expect_device(&mut events, device::REMOVE, &part_name).await?;
    disk.remove_device()?;
    expect_device(&mut events, device::REMOVE, disk.name()).await?;
    Ok(())
}

async fn loop_change() -> Result<()> {
    let _udevd = Udevd::ensure()?;
    let env = Env::start("dev-change").await?;
    let disk = LoopDevice::attach_partitioned(&env.scratch.path, 8)?;
    let mut events =
        watch_devices(&env, WatchOptions::new().option("subsystem", "block/disk")).await?;
    let uuid = disk.trigger_change_tagged()?;
    loop {
        let change = expect_device(&mut events, device::CHANGE, disk.name()).await?;
        if property(&change, "SYNTH_UUID").as_deref() == Some(uuid.as_str()) {
            ensure!(change.record().get_str(attr::DEVTYPE).as_deref() == Some("disk"));
            return Ok(());
        }
    }
}

async fn usb_injected() -> Result<()> {
    let _udevd = Udevd::ensure()?;
    let env = Env::start("dev-usb").await?;
    let (bus, dev) = (3, 42);
    let devpath = InjectedEvent::usb_device_devpath(bus, dev);
    // Other tests inject USB devices too: this watch selects its own by sysname.
    let own = devpath.rsplit('/').next().unwrap_or_default().to_owned();
    let mut events = watch_devices(
        &env,
        WatchOptions::new()
            .option("subsystem", "usb")
            .option("sysname", own),
    )
    .await?;
    let add = InjectedEvent::usb_storage_add(bus, dev, udev::next_seqnum());
    udev::inject(&add)?;
    let got = next(&mut events).await?;
    let r = got.record();
    ensure!(
        got.header().is(RecordType::Device, device::ADD),
        "first record is the add"
    );
    ensure!(r.get_str(attr::SUBSYSTEM).as_deref() == Some("usb"));
    ensure!(r.get_str(attr::DEVTYPE).as_deref() == Some("usb_device"));
    ensure!(
        r.get_str(attr::SYSPATH) == Some(format!("/sys{devpath}")),
        "syspath {:?}",
        r.get_str(attr::SYSPATH)
    );
    ensure!(r.get_u64(attr::SEQNUM) == Some(add.seqnum()));
    ensure!(property(&got, "ID_VENDOR_ID").as_deref() == Some(udev::USB_VENDOR_ID));
    ensure!(property(&got, "ID_MODEL_ID").as_deref() == Some(udev::USB_MODEL_ID));
    ensure!(
        r.get_str(attr::TAGS)
            .is_some_and(|t| t.split(':').any(|t| t == "systemd")),
        "tags"
    );
    let remove = InjectedEvent::usb_storage_remove(bus, dev, udev::next_seqnum());
    udev::inject(&remove)?;
    let gone = next(&mut events).await?;
    ensure!(
        gone.header().is(RecordType::Device, device::REMOVE)
            && gone.record().get_u64(attr::SEQNUM) == Some(remove.seqnum())
    );
    Ok(())
}

async fn filters() -> Result<()> {
    let _udevd = Udevd::ensure()?;
    let env = Env::start("dev-filters").await?;
    let mut by_property = watch_devices(
        &env,
        WatchOptions::new().option(
            "property",
            vec![
                format!("ID_VENDOR_ID={}", udev::USB_VENDOR_ID),
                "ID_MODEL=*".to_owned(),
                // Other tests inject this vendor too: only this test's events carry this.
                format!("WATCHD_TEST=filters-{}", std::process::id()),
            ],
        ),
    )
    .await?;
    let mut by_tag = watch_devices(
        &env,
        WatchOptions::new()
            .option("subsystem", "usb")
            .option("tag", "watchd-e2e-seat"),
    )
    .await?;
    let mut by_sysname = watch_devices(
        &env,
        WatchOptions::new()
            .option("subsystem", "usb")
            .option("sysname", "9-7*"),
    )
    .await?;
    // Another vendor, another subsystem, a tagged one, and ours; all marked as this test's.
    let mark = format!("filters-{}", std::process::id());
    let other_vendor = InjectedEvent::usb_storage_add(9, 1, udev::next_seqnum())
        .set("ID_VENDOR_ID", "dead")
        .set("WATCHD_TEST", &mark);
    let other_subsystem = InjectedEvent::change(
        "watchd-e2e-other",
        "/devices/virtual/watchd-e2e-other/x",
        &[
            ("ID_VENDOR_ID", udev::USB_VENDOR_ID),
            ("WATCHD_TEST", &mark),
        ],
    );
    let tagged = InjectedEvent::usb_storage_add(9, 2, udev::next_seqnum())
        .set("TAGS", ":watchd-e2e-seat:")
        .set("WATCHD_TEST", &mark);
    let ours = InjectedEvent::usb_storage_add(9, 7, udev::next_seqnum()).set("WATCHD_TEST", &mark);
    udev::inject_many([&other_vendor, &other_subsystem, &tagged, &ours])?;
    let first = next(&mut by_property).await?;
    ensure!(
        first.record().get_u64(attr::SEQNUM) == Some(tagged.seqnum()),
        "the property watch skipped the other vendor and subsystem"
    );
    let second = next(&mut by_property).await?;
    ensure!(second.record().get_u64(attr::SEQNUM) == Some(ours.seqnum()));
    let tag = next(&mut by_tag).await?;
    ensure!(
        tag.record().get_u64(attr::SEQNUM) == Some(tagged.seqnum()),
        "only the tagged device"
    );
    let name = next(&mut by_sysname).await?;
    ensure!(
        name.record().get_u64(attr::SEQNUM) == Some(ours.seqnum()),
        "only sysname 9-7*: {}",
        sysname(&name)
    );
    for stream in [&mut by_property, &mut by_tag, &mut by_sysname] {
        expect_silence(stream, Duration::from_millis(200)).await?;
    }
    Ok(())
}

async fn initial_state() -> Result<()> {
    let udevd = Udevd::ensure()?;
    let env = Env::start("dev-initial").await?;
    let disk = LoopDevice::attach_partitioned(&env.scratch.path, 8)?;
    udevd.settle(Duration::from_secs(10))?;
    let options = WatchOptions::new()
        .initial(true)
        .option("subsystem", "block")
        .option("sysname", format!("{}*", disk.name()));
    let mut events = watch_devices(&env, options).await?;
    let mut names = Vec::new();
    loop {
        let event = next(&mut events).await?;
        if event.header().is(RecordType::Meta, meta::SYNC) {
            break;
        }
        ensure!(
            event.header().is(RecordType::Device, device::ADD)
                && event.header().flags & FLAG_SNAPSHOT != 0
        );
        names.push(sysname(&event));
    }
    names.sort();
    ensure!(
        names == [disk.name().to_owned(), disk.partition_names()[0].clone()],
        "snapshot lists {names:?}"
    );
    Ok(())
}

/// RSS of a process, in KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("VmRSS")?;
    Ok(line.split_whitespace().nth(1).context("value")?.parse()?)
}

async fn storm() -> Result<()> {
    const STORM: usize = 10_000;
    let _udevd = Udevd::ensure()?;
    let env = Env::start("dev-storm").await?;
    let subsystem = format!("watchd-storm-{}", std::process::id());
    let options = || WatchOptions::new().option("subsystem", subsystem.clone());
    let client = env.client().await?;
    let fast = client
        .subscribe(SubscribeOptions { depth: Some(256) })
        .await?;
    fast.add_watch(1, "devices", &options()).await?;
    let stalled = client.subscribe(SubscribeOptions::default()).await?;
    stalled.add_watch(2, "devices", &options()).await?;
    let depth = stalled.depth().await? as u64;
    // Events are published one at a time, to every subscriber in turn: once this third one
    // has an event sent after the storm, the stalled subscriber has had the whole storm.
    let marker_subsystem = format!("{subsystem}-done");
    let marker = client.subscribe(SubscribeOptions::default()).await?;
    marker
        .add_watch(
            3,
            "devices",
            &WatchOptions::new().option("subsystem", marker_subsystem.clone()),
        )
        .await?;
    let (mut fast, mut stalled, mut marker) = (
        fast.into_events(),
        stalled.into_events(),
        marker.into_events(),
    );
    let storm: Vec<InjectedEvent> = (0..STORM)
        .map(|i| {
            InjectedEvent::change(
                &subsystem,
                &format!("/devices/virtual/{subsystem}/dev{}", i % 64),
                &[("STORM_INDEX", &i.to_string())],
            )
        })
        .collect();
    let seqnums: Vec<u64> = storm.iter().map(InjectedEvent::seqnum).collect();

    // A first, small storm brings the daemon to its working size; the big one must not grow
    // it. Both are sent from another thread while the fast subscriber reads.
    // The fast reader is a test task on a possibly loaded machine: the sender stays at most
    // WINDOW events ahead of it, so it provably keeps up (its pipe holds 256) while the
    // stalled subscriber, which reads nothing, still faces the whole storm.
    const WINDOW: usize = 200;
    let storm = std::sync::Arc::new(storm);
    let consumed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let send = |range: std::ops::Range<usize>| {
        let (storm, consumed) = (storm.clone(), consumed.clone());
        tokio::task::spawn_blocking(move || -> Result<()> {
            let injector = udev::Injector::new()?;
            for i in range {
                while i >= consumed.load(std::sync::atomic::Ordering::Acquire) + WINDOW {
                    std::thread::yield_now();
                }
                injector.send(&storm[i])?;
            }
            Ok(())
        })
    };
    const WARMUP: usize = 1000;
    let mut rss_before = 0;
    for (phase, range) in [(0..WARMUP), (WARMUP..STORM)].into_iter().enumerate() {
        let sender = send(range.clone());
        for i in range {
            let e = next(&mut fast)
                .await
                .with_context(|| format!("record {i} of the storm"))?;
            ensure!(
                e.header().seq == i as u64 + 1,
                "fast subscriber: seq {} at record {i}",
                e.header().seq
            );
            ensure!(
                e.record().get_u64(attr::SEQNUM) == Some(seqnums[i]),
                "record {i} in the order sent"
            );
            consumed.store(i + 1, std::sync::atomic::Ordering::Release);
        }
        sender.await??;
        if phase == 0 {
            rss_before = rss_kib(env.daemon.pid())?;
        }
    }
    let rss_after = rss_kib(env.daemon.pid())?;
    udev::Injector::new()?.send(&InjectedEvent::change(
        &marker_subsystem,
        &format!("/devices/virtual/{marker_subsystem}/done"),
        &[],
    ))?;
    next(&mut marker)
        .await
        .context("the event sent after the storm")?;

    let mut received = 0u64;
    let mut losses = Vec::new();
    while let Ok(e) = next_within(&mut stalled, Duration::from_millis(500)).await {
        if e.header().is(RecordType::Meta, meta::LOSS) {
            losses.push(e);
        } else {
            received += 1;
        }
    }
    ensure!(losses.len() == 1, "one LOSS record, got {}", losses.len());
    let lost = losses[0]
        .record()
        .get_u64(attr::LOST_COUNT)
        .context("lost_count")?;
    // At least the pipe's worth arrived before the loss; the storm's last events may race
    // the first reads and land after the LOSS record, which is as the contract says.
    ensure!(
        received >= depth && received + lost == STORM as u64,
        "stalled: received {received}, lost {lost}"
    );
    ensure!(losses[0].record().get_u64(attr::LOST_TYPES) == Some(RecordType::Device.bit()));
    let growth = rss_after.saturating_sub(rss_before);
    ensure!(
        growth < 4096,
        "the daemon grew by {growth} KiB during 9,000 events ({rss_before} → {rss_after} KiB)"
    );
    Ok(())
}

async fn kernel_fallback() -> Result<()> {
    let env =
        Env::start_with_config("dev-kernel", "[sources]\ndevice_events = \"kernel\"\n").await?;
    let status = env.client().await?.status().await?;
    let detail = status
        .source_details
        .get("devices")
        .cloned()
        .unwrap_or_default();
    ensure!(
        detail.contains("kernel") && detail.contains("udevd is not running"),
        "status says so: {detail:?}"
    );
    let disk = LoopDevice::attach_partitioned(&env.scratch.path, 8)?;
    let mut events = watch_devices(&env, WatchOptions::new().option("subsystem", "block")).await?;
    let uuid = disk.trigger_change_tagged()?;
    loop {
        let change = expect_device(&mut events, device::CHANGE, disk.name()).await?;
        if property(&change, "SYNTH_UUID").as_deref() == Some(uuid.as_str()) {
            ensure!(change.record().get_str(attr::EVENT_SOURCE).as_deref() == Some("kernel"));
            ensure!(
                property(&change, "ID_PART_TABLE_TYPE").is_none(),
                "no udev rules ran: raw kernel properties"
            );
            return Ok(());
        }
    }
}

async fn bad_options() -> Result<()> {
    let env = Env::start("dev-bad").await?;
    let sub = env
        .client()
        .await?
        .subscribe(SubscribeOptions::default())
        .await?;
    let long = "x".repeat(300);
    let cases: Vec<(WatchOptions, &str)> = vec![
        (
            WatchOptions::new().option("property", vec!["NO_EQUALS_SIGN".to_owned()]),
            "KEY=GLOB",
        ),
        (
            WatchOptions::new().option("property", vec!["A=b".to_owned(); 33]),
            "at most",
        ),
        (WatchOptions::new().option("property", "A=b"), "'as'"),
        (WatchOptions::new().option("subsystem", ""), "subsystem"),
        (WatchOptions::new().option("sysname", long), "sysname"),
        (
            WatchOptions::new().option("subsytem", "block"),
            "'subsytem'",
        ),
        (
            WatchOptions::new().option("sysname", "loop[0-9"),
            "not a valid glob",
        ),
        (
            WatchOptions::new().option("properties", vec!["ID_FS_TYPE".to_owned(); 33]),
            "at most",
        ),
    ];
    for (options, needle) in cases {
        let result = sub.add_watch(1, "devices", &options).await;
        let text = format!("{result:?}");
        ensure!(
            error_name(result)? == "org.watchd.Watchd1.Error.InvalidArgument",
            "{text}"
        );
        ensure!(
            text.contains(needle),
            "message should mention {needle}: {text}"
        );
    }
    if env.client().await?.status().await?.watches != 0 {
        bail!("a refused watch was kept");
    }
    Ok(())
}
