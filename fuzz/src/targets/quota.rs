//! Quota warnings: a generic netlink datagram, as the daemon's quota socket receives it
//! (any process may send to the group's members; the kernel's own messages are the seeds),
//! through `wire::messages`, `parse_family` and `warning`. Promises: every message's
//! payload lies inside the datagram, and the walk yields no more messages than 16-byte
//! headers fit; a datagram's first message parses the same alone (`parse_warning`) as
//! split from it; a family's group names hold no NUL.

use watchd::sources::quota::wire;

use super::within;

pub fn check(data: &[u8]) {
    let mut count = 0;
    for message in wire::messages(data) {
        count += 1;
        let Ok(message) = message else {
            continue;
        };
        assert!(within(data, message.payload));
        if let Ok(family) = wire::parse_family(&message) {
            assert!(!family.name.contains('\0'));
            assert!(family.groups.iter().all(|(name, _)| !name.contains('\0')));
        }
        let _ = wire::warning(&message);
    }
    assert!(count <= data.len() / 16 + 1);
    if let Some(Ok(first)) = wire::messages(data).next() {
        assert_eq!(wire::parse_warning(data), wire::warning(&first));
    }
}
