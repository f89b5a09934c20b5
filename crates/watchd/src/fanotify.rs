//! Reading fanotify(7) events from the bytes `read(2)` returned: each event's metadata and
//! its information records, checked against their stated lengths (a short or inconsistent
//! record ends the batch; nothing is read past the buffer).
//!
//! The daemon's groups report identities, not open files (`FAN_REPORT_MNT`, FID modes), so
//! events carry no descriptor (`fd` is `FAN_NOFD`) and none needs closing.
#![forbid(unsafe_code)]

use std::io::{self, Read};

/// `fanotify_init(2)` flags and mark bits this daemon uses that libc does not name yet.
pub mod flags {
    /// Report mount ids (`FAN_REPORT_MNT`, kernel 6.15): the group takes mount-namespace marks.
    pub const FAN_REPORT_MNT: u32 = 0x0000_4000;
    /// Mark a mount namespace, given by an nsfs descriptor (`FAN_MARK_MNTNS`).
    pub const FAN_MARK_MNTNS: u32 = 0x0000_0110;
    /// A mount was attached to the marked namespace.
    pub const FAN_MNT_ATTACH: u64 = 0x0100_0000;
    /// A mount was detached from it (both bits at once: a move).
    pub const FAN_MNT_DETACH: u64 = 0x0200_0000;
    /// The group's queue overflowed: events were dropped.
    pub const FAN_Q_OVERFLOW: u64 = 0x0000_4000;
}

/// Information record types (`FAN_EVENT_INFO_TYPE_*`).
pub mod info {
    pub const FID: u8 = 1;
    pub const DFID_NAME: u8 = 2;
    pub const DFID: u8 = 3;
    pub const ERROR: u8 = 5;
    pub const OLD_DFID_NAME: u8 = 10;
    pub const NEW_DFID_NAME: u8 = 12;
    pub const MNT: u8 = 7;
}

/// `sizeof(struct fanotify_event_metadata)`.
const METADATA_LEN: usize = 24;
/// `FANOTIFY_METADATA_VERSION`.
const METADATA_VERSION: u8 = 3;

/// One event: its mask and its information records.
#[derive(Debug, PartialEq, Eq)]
pub struct Event<'a> {
    pub mask: u64,
    pub pid: i32,
    pub infos: Vec<Info<'a>>,
}

/// One information record: its type and the bytes after its 4-byte header.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub struct Info<'a> {
    pub kind: u8,
    pub body: &'a [u8],
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The events in `buf`, in order. Stops at the first malformed one and says so with `Err`
/// carrying the events before it.
pub fn events(mut buf: &[u8]) -> Result<Vec<Event<'_>>, Vec<Event<'_>>> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        match event(buf) {
            Some((event, len)) => {
                out.push(event);
                buf = &buf[len..];
            }
            None => return Err(out),
        }
    }
    Ok(out)
}

fn event(buf: &[u8]) -> Option<(Event<'_>, usize)> {
    let len = u32_at(buf, 0)? as usize;
    let metadata_len = u16_at(buf, 6)? as usize;
    if buf.get(4) != Some(&METADATA_VERSION)
        || metadata_len < METADATA_LEN
        || len < metadata_len
        || len > buf.len()
    {
        return None;
    }
    let mut rest = &buf[metadata_len..len];
    let mut infos = Vec::new();
    while !rest.is_empty() {
        let kind = *rest.first()?;
        let info_len = u16_at(rest, 2)? as usize;
        if info_len < 4 || info_len > rest.len() {
            return None;
        }
        infos.push(Info {
            kind,
            body: &rest[4..info_len],
        });
        rest = &rest[info_len..];
    }
    let event = Event {
        mask: u64_at(buf, 8)?,
        pid: u32_at(buf, 20)? as i32,
        infos,
    };
    Some((event, len))
}

impl<'a> Event<'a> {
    /// The first record of type `kind`.
    pub fn info(&self, kind: u8) -> Option<Info<'a>> {
        self.infos.iter().copied().find(|i| i.kind == kind)
    }

    /// The mount id of a mount event (`struct fanotify_event_info_mnt`: 4 bytes of padding,
    /// then the 64-bit id).
    pub fn mount_id(&self) -> Option<u64> {
        u64_at(self.info(info::MNT)?.body, 4)
    }

    /// A filesystem error (`struct fanotify_event_info_error`): errno and how many errors
    /// were merged into this event.
    pub fn error(&self) -> Option<(i32, u32)> {
        let body = self.info(info::ERROR)?.body;
        Some((u32_at(body, 0)? as i32, u32_at(body, 4)?))
    }
}

/// A FID record (`struct fanotify_event_info_fid`): the filesystem id, the object's file
/// handle and, for the `*_NAME` types, the name of the entry in that directory.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub struct Fid<'a> {
    pub fsid: [u32; 2],
    pub handle_type: i32,
    pub handle: &'a [u8],
    pub name: Option<&'a [u8]>,
}

impl Fid<'_> {
    /// The filesystem id as records carry it (`f_fsid` of statfs(2)): `val[0]` in the low
    /// half.
    pub fn fsid64(&self) -> u64 {
        u64::from(self.fsid[0]) | (u64::from(self.fsid[1]) << 32)
    }
}

/// Reads a non-blocking group until its queue is empty, handing each batch `read(2)` gave
/// to `batch` with `true` when part of it did not parse (the events after that are lost).
/// An error other than "empty" or an interrupted read ends the reading.
pub fn drain(
    group: &mut std::fs::File,
    buf: &mut [u8],
    mut batch: impl FnMut(&[Event<'_>], bool),
) -> io::Result<()> {
    loop {
        let n = match group.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        match events(&buf[..n]) {
            Ok(events) => batch(&events, false),
            Err(kept) => {
                tracing::warn!("a fanotify event did not parse: the rest of the batch is lost");
                batch(&kept, true)
            }
        }
    }
}

impl<'a> Info<'a> {
    pub fn fid(&self) -> Option<Fid<'a>> {
        let b = self.body;
        let fsid = [u32_at(b, 0)?, u32_at(b, 4)?];
        let handle_bytes = u32_at(b, 8)? as usize;
        let handle_type = u32_at(b, 12)? as i32;
        let handle = b.get(16..16usize.checked_add(handle_bytes)?)?;
        let tail = &b[16 + handle_bytes..];
        let named = matches!(
            self.kind,
            info::DFID_NAME | info::OLD_DFID_NAME | info::NEW_DFID_NAME
        );
        let name = if named {
            Some(&tail[..tail.iter().position(|&c| c == 0)?])
        } else {
            None
        };
        Some(Fid {
            fsid,
            handle_type,
            handle,
            name,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event_bytes(mask: u64, infos: &[(u8, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (kind, data) in infos {
            body.push(*kind);
            body.push(0);
            body.extend_from_slice(&((data.len() + 4) as u16).to_ne_bytes());
            body.extend_from_slice(data);
        }
        let mut out = Vec::new();
        out.extend_from_slice(&((METADATA_LEN + body.len()) as u32).to_ne_bytes());
        out.extend_from_slice(&[METADATA_VERSION, 0]);
        out.extend_from_slice(&(METADATA_LEN as u16).to_ne_bytes());
        out.extend_from_slice(&mask.to_ne_bytes());
        out.extend_from_slice(&(-1i32).to_ne_bytes());
        out.extend_from_slice(&0i32.to_ne_bytes());
        out.extend_from_slice(&body);
        out
    }

    fn mnt(id: u64) -> Vec<u8> {
        let mut b = vec![0u8; 4];
        b.extend_from_slice(&id.to_ne_bytes());
        b
    }

    #[test]
    fn mount_events_carry_their_ids_in_order() {
        let mut buf = event_bytes(flags::FAN_MNT_ATTACH, &[(info::MNT, &mnt(7))]);
        buf.extend(event_bytes(
            flags::FAN_MNT_ATTACH | flags::FAN_MNT_DETACH,
            &[(info::MNT, &mnt(1 << 40))],
        ));
        let events = events(&buf).unwrap();
        let ids: Vec<_> = events.iter().map(|e| (e.mask, e.mount_id())).collect();
        assert_eq!(
            ids,
            [
                (flags::FAN_MNT_ATTACH, Some(7)),
                (flags::FAN_MNT_ATTACH | flags::FAN_MNT_DETACH, Some(1 << 40))
            ]
        );
    }

    #[test]
    fn a_record_longer_than_its_event_ends_the_batch() {
        let mut good = event_bytes(flags::FAN_MNT_ATTACH, &[(info::MNT, &mnt(7))]);
        let mut bad = event_bytes(flags::FAN_MNT_DETACH, &[(info::MNT, &mnt(8))]);
        bad[METADATA_LEN + 2] = 200; // the info record claims 200 bytes
        good.extend(&bad);
        let kept = events(&good).unwrap_err();
        assert_eq!(kept.len(), 1);
        assert!(
            events(&good[..10]).unwrap_err().is_empty(),
            "a cut metadata"
        );
    }

    /// What this kernel sent for three `trigger_fs_error` writes on a loop ext4: one event,
    /// a FID record (fsid, and a handle) and an ERROR record with errno and count.
    #[test]
    fn a_filesystem_error_gives_errno_count_and_fsid() {
        let mut fid = Vec::new();
        fid.extend_from_slice(&0x89ab_cdefu32.to_ne_bytes());
        fid.extend_from_slice(&0x0123_4567u32.to_ne_bytes());
        fid.extend_from_slice(&8u32.to_ne_bytes()); // handle_bytes
        fid.extend_from_slice(&1i32.to_ne_bytes()); // handle_type
        fid.extend_from_slice(&[2, 0, 0, 0, 0, 0, 0, 0]);
        let mut error = Vec::new();
        error.extend_from_slice(&117i32.to_ne_bytes());
        error.extend_from_slice(&3u32.to_ne_bytes());
        let buf = event_bytes(
            libc::FAN_FS_ERROR,
            &[(info::FID, &fid), (info::ERROR, &error)],
        );
        let parsed = events(&buf).unwrap();
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].error(), Some((117, 3)));
        let fid = parsed[0].info(info::FID).unwrap().fid().unwrap();
        assert_eq!(fid.fsid64(), 0x0123_4567_89ab_cdef);
        assert_eq!(fid.name, None, "a FID record has no name");
        let cut = event_bytes(libc::FAN_FS_ERROR, &[(info::ERROR, &error[..4])]);
        assert_eq!(
            events(&cut).unwrap()[0].error(),
            None,
            "an ERROR record cut short"
        );
    }

    #[test]
    fn fid_records_give_handle_and_name() {
        let mut body = Vec::new();
        body.extend_from_slice(&[1u32.to_ne_bytes(), 2u32.to_ne_bytes()].concat());
        body.extend_from_slice(&3u32.to_ne_bytes()); // handle_bytes
        body.extend_from_slice(&1i32.to_ne_bytes()); // handle_type
        body.extend_from_slice(b"abcname\0\0");
        let buf = event_bytes(0x100, &[(info::DFID_NAME, &body)]);
        let parsed = events(&buf).unwrap();
        let fid = parsed[0].info(info::DFID_NAME).unwrap().fid().unwrap();
        assert_eq!(fid.fsid, [1, 2]);
        assert_eq!((fid.handle, fid.name), (&b"abc"[..], Some(&b"name"[..])));
        body.truncate(18); // handle cut short
        let buf = event_bytes(0x100, &[(info::DFID_NAME, &body)]);
        assert_eq!(events(&buf).unwrap()[0].infos[0].fid(), None);
    }
}
