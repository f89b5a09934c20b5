//! Device events. The netlink message itself is read by libudev (C, not watchd's code):
//! this target splits a raw kernel uevent ("ACTION@DEVPATH\0KEY=VALUE\0…", the kernel
//! group's format) into the fields libudev would hand over, as libudev does, then runs
//! watchd's own part on it: `DeviceInfo::from_fields` (tags, old path), the DEVICE record
//! (`encode_with`, all properties and a watch's subset) and `DeviceMatch::matches`. A
//! device's properties come from whoever made it (a USB stick's serial number, a rule).
//! Promises: the record parses and carries the action and sequence number; unless it is
//! marked TRUNCATED it carries every property not given its own attribute, in order; a
//! match naming the device's own subsystem and sysname matches it.

use glob::Pattern;
use watchd::sources::devices::{DeviceFields, DeviceInfo, DeviceMatch, EventSource};
use watchd_proto::{FLAG_TRUNCATED, Record, RecordBuilder, RecordType, attr};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn check(data: &[u8]) {
    let mut parts = data.split(|&c| c == 0);
    let Some(header) = parts.next() else {
        return;
    };
    if !header.contains(&b'@') {
        return;
    }
    let mut fields = DeviceFields::default();
    for part in parts.filter(|p| !p.is_empty()) {
        let Some(eq) = part.iter().position(|&c| c == b'=') else {
            continue;
        };
        fields
            .properties
            .push((text(&part[..eq]), text(&part[eq + 1..])));
    }
    let get = |key: &str| {
        fields
            .properties
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    let devpath = get("DEVPATH").unwrap_or_default();
    let action = get("ACTION");
    let seqnum = get("SEQNUM").and_then(|s| s.parse().ok()).unwrap_or(0);
    fields.subsystem = get("SUBSYSTEM");
    fields.devtype = get("DEVTYPE");
    fields.sysname = devpath.rsplit('/').next().unwrap_or_default().to_owned();
    fields.syspath = format!("/sys{devpath}");
    fields.devnode = get("DEVNAME").map(|n| format!("/dev/{n}"));
    fields.driver = get("DRIVER");
    fields.devnum = get("MAJOR")
        .and_then(|m| m.parse().ok())
        .zip(get("MINOR").and_then(|m| m.parse().ok()));
    let Some(device) =
        DeviceInfo::from_fields(fields, action.as_deref(), seqnum, EventSource::Kernel)
    else {
        return;
    };

    let mut builder = RecordBuilder::new(RecordType::Device, device.subtype, 0, 0);
    device.encode_with(&mut builder, None);
    let packet = builder.finish();
    let record = Record::parse(&packet).expect("an encoded device parses");
    if record.header.flags & FLAG_TRUNCATED == 0 {
        assert_eq!(record.get_str(attr::ACTION).as_deref(), Some(&*device.action));
        assert_eq!(record.get_u64(attr::SEQNUM), Some(seqnum));
        let sent: Vec<_> = record
            .get_all(attr::PROPERTY)
            .map(|a| a.value.to_vec())
            .collect();
        let own = [
            "ACTION", "SUBSYSTEM", "DEVTYPE", "DEVPATH", "DEVNAME", "DRIVER", "SEQNUM", "MAJOR",
            "MINOR", "TAGS", "DEVPATH_OLD",
        ];
        let expected: Vec<_> = device
            .properties
            .iter()
            .filter(|(k, _)| !own.contains(&k.as_str()))
            .map(|(k, v)| format!("{k}={v}").into_bytes())
            .collect();
        assert_eq!(sent, expected);
    }

    let include = device.properties.first().map(|(k, _)| vec![k.clone()]);
    let mut builder = RecordBuilder::new(RecordType::Device, device.subtype, 0, 0);
    device.encode_with(&mut builder, include.as_deref());
    Record::parse(&builder.finish()).expect("a device's subset parses");

    let own = DeviceMatch {
        subsystem: Some(device.subsystem.clone()),
        devtype: device.devtype.clone(),
        tag: device.tags.first().cloned(),
        sysname: Pattern::new(&Pattern::escape(&device.sysname)).ok(),
        ..DeviceMatch::default()
    };
    assert!(own.matches(&device), "its own match refuses {device:?}");
}
