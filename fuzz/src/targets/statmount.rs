//! statmount(2)'s answer (`Statmount::parse`), whose strings (mount point, source, options)
//! whoever mounts chooses, then the mount entry the namespace backend makes of it
//! (`entry_from`) and its MOUNT record. Promises: every string returned lies within the
//! buffer and holds no NUL; an entry made from it is not taken for a gone mount and encodes
//! into a record that parses and carries its id.

use std::sync::Arc;

use watchd::sources::mounts::namespace::entry_from;
use watchd::sources::mounts::{MountChange, Origin};
use watchd::statmount::Statmount;
use watchd_proto::{Record, attr, mount};

use super::within;

pub fn check(data: &[u8]) {
    let Some(sm) = Statmount::parse(data) else {
        return;
    };
    let strings = [
        sm.root(),
        sm.mount_point(),
        sm.fs_type(),
        sm.fs_subtype(),
        sm.source(),
        sm.fs_options(),
    ];
    for s in strings.into_iter().flatten().chain(sm.security_options()) {
        assert!(within(data, s));
        assert!(!s.contains(&0));
    }
    let _ = (sm.superblock(), sm.basic(), sm.propagate_from(), sm.ns_id());
    if let Some(entry) = entry_from(&sm) {
        assert!(!entry.is_gone(), "a mount looked up is not a gone one");
        let id = entry.id.0;
        let origin = Origin { ns: 1, view: 1 };
        let event = MountChange::new(Arc::new(entry), origin).into_event(mount::ATTACH, 0);
        let record = Record::parse(event.record()).expect("an encoded mount parses");
        assert_eq!(record.get_u64(attr::MOUNT_ID), Some(id));
    }
}
