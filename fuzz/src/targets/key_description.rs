//! Keys: `KEYCTL_DESCRIBE`'s "type;uid;gid;perm;description" (the description is whatever
//! the key's creator chose, ';' included) through `KeyInfo::parse`, and the same bytes as
//! the watch queue's notes (`queue::parse`). Promises: a description that parses prints
//! back to one that parses to the same key, the type never holds a ';', and the queue walk
//! never yields more records than 8-byte note headers fit in the buffer.

use watchd::sources::keys::queue;
use watchd::sources::keys::viewer::KeyInfo;
use watchd::sys::KeySerial;

pub fn check(data: &[u8]) {
    if let Some(info) = KeyInfo::parse(KeySerial(1), data) {
        assert!(!info.key_type.contains(';'));
        let printed = format!(
            "{};{};{};{:08x};{}",
            info.key_type, info.uid, info.gid, info.perm, info.description
        );
        assert_eq!(KeyInfo::parse(KeySerial(1), printed.as_bytes()), Some(info));
    }
    let mut notes = Vec::new();
    queue::parse(data, &mut notes);
    assert!(notes.len() <= data.len() / 8 + 1);
}
