//! fanotify's read buffer (`fanotify::events`), whose records carry names others chose
//! (file names in a watched directory). Promises: events split the buffer without overlap
//! (each info record's body lies within the buffer, in order), a malformed event stops the
//! walk with the events before it, and the accessors (`mount_id`, `error`, `fid`) only
//! return bytes from within their record.

use watchd::fanotify::events;

use super::within;

pub fn check(data: &[u8]) {
    let (list, complete) = match events(data) {
        Ok(list) => (list, true),
        Err(list) => (list, false),
    };
    let mut last_end = data.as_ptr();
    let mut info_bytes = 0;
    for event in &list {
        for info in &event.infos {
            assert!(within(data, info.body));
            assert!(info.body.as_ptr() >= last_end, "info records overlap");
            last_end = info.body.as_ptr_range().end;
            info_bytes += info.body.len() + 4;
            if let Some(fid) = info.fid() {
                assert!(within(info.body, fid.handle));
                if let Some(name) = fid.name {
                    assert!(within(info.body, name));
                    assert!(!name.contains(&0));
                }
            }
        }
        let _ = (event.mount_id(), event.error());
    }
    // 24 bytes of metadata at least per event, besides its records.
    assert!(info_bytes + 24 * list.len() <= data.len());
    if complete {
        assert!(data.is_empty() || !list.is_empty());
    }
}
