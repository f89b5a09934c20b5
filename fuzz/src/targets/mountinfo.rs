//! `/proc/PID/mountinfo` (`parse_mountinfo`): its paths and sources are chosen by whoever
//! mounts, in any namespace the daemon follows. Promises: every non-empty line is either an
//! entry or counted as bad; an entry's fields come from its line (no field longer than the
//! input; unescaping only shortens); each entry encodes into a MOUNT record that parses
//! and carries the entry's ids.

use std::sync::Arc;

use watchd::sources::mounts::mountinfo::parse_mountinfo;
use watchd::sources::mounts::{MountChange, Origin};
use watchd_proto::{Record, attr, mount};

pub fn check(data: &[u8]) {
    let (entries, bad) = parse_mountinfo(data);
    let lines = data.split(|&c| c == b'\n').filter(|l| !l.is_empty()).count();
    assert_eq!(entries.len() + bad, lines);
    for entry in entries {
        assert!(!entry.is_gone(), "a parsed line is not a gone mount");
        for field in [&entry.root, &entry.mount_point, &entry.source] {
            assert!(field.len() <= data.len());
        }
        let (id, parent) = (entry.id.0, entry.parent.0);
        let origin = Origin { ns: 1, view: 1 };
        let event = MountChange::new(Arc::new(entry), origin).into_event(mount::ATTACH, 0);
        let record = Record::parse(event.record()).expect("an encoded mount parses");
        assert_eq!(record.get_u64(attr::MOUNT_ID), Some(id));
        assert_eq!(record.get_u64(attr::PARENT_ID), Some(parent));
    }
}
