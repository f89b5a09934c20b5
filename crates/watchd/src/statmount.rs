//! Reading what `statmount(2)` returns ([`crate::sys::statmount`]): a `struct statmount`
//! followed by its strings, checked against its own length, never trusted to be well formed.
#![forbid(unsafe_code)]

use std::mem::offset_of;

/// `struct statmount` of `<linux/mount.h>` (kernel 6.18), for its layout: fields are read
/// from the returned bytes at these offsets, so no byte is reinterpreted in place.
#[repr(C)]
#[allow(dead_code)] // read through offset_of!, never built
struct RawStatmount {
    size: u32,
    mnt_opts: u32,
    mask: u64,
    sb_dev_major: u32,
    sb_dev_minor: u32,
    sb_magic: u64,
    sb_flags: u32,
    fs_type: u32,
    mnt_id: u64,
    mnt_parent_id: u64,
    mnt_id_old: u32,
    mnt_parent_id_old: u32,
    mnt_attr: u64,
    mnt_propagation: u64,
    mnt_peer_group: u64,
    mnt_master: u64,
    propagate_from: u64,
    mnt_root: u32,
    mnt_point: u32,
    mnt_ns_id: u64,
    fs_subtype: u32,
    sb_source: u32,
    opt_num: u32,
    opt_array: u32,
    opt_sec_num: u32,
    opt_sec_array: u32,
    supported_mask: u64,
    mnt_uidmap_num: u32,
    mnt_uidmap: u32,
    mnt_gidmap_num: u32,
    mnt_gidmap: u32,
    spare: [u64; 43],
    // char str[]: the strings, each field above marked [str] an offset into them.
}

/// Where the strings begin.
const STRINGS: usize = std::mem::size_of::<RawStatmount>();
const _: () = assert!(
    STRINGS == 512,
    "struct statmount is 512 bytes before its strings"
);

/// `STATMOUNT_*` request bits.
pub mod mask {
    pub const SB_BASIC: u64 = 0x1;
    pub const MNT_BASIC: u64 = 0x2;
    pub const PROPAGATE_FROM: u64 = 0x4;
    pub const MNT_ROOT: u64 = 0x8;
    pub const MNT_POINT: u64 = 0x10;
    pub const FS_TYPE: u64 = 0x20;
    pub const MNT_NS_ID: u64 = 0x40;
    pub const MNT_OPTS: u64 = 0x80;
    pub const FS_SUBTYPE: u64 = 0x100;
    pub const SB_SOURCE: u64 = 0x200;
    pub const OPT_SEC_ARRAY: u64 = 0x800;
}

/// `MOUNT_ATTR_*` bits of `mnt_attr`.
pub mod attr {
    pub const RDONLY: u64 = 0x1;
    pub const NOSUID: u64 = 0x2;
    pub const NODEV: u64 = 0x4;
    pub const NOEXEC: u64 = 0x8;
    pub const ATIME: u64 = 0x70;
    pub const RELATIME: u64 = 0x0;
    pub const NOATIME: u64 = 0x10;
    pub const NODIRATIME: u64 = 0x80;
    pub const IDMAP: u64 = 0x10_0000;
    pub const NOSYMFOLLOW: u64 = 0x20_0000;
}

/// `SB_*` bits of `sb_flags` (the four statmount reports).
pub mod sb {
    pub const RDONLY: u32 = 0x1;
    pub const SYNCHRONOUS: u32 = 0x10;
    pub const DIRSYNC: u32 = 0x80;
    pub const LAZYTIME: u32 = 1 << 25;
}

/// `MS_*` propagation bits of `mnt_propagation`.
pub mod propagation {
    pub const UNBINDABLE: u64 = 1 << 17;
    pub const SLAVE: u64 = 1 << 19;
    pub const SHARED: u64 = 1 << 20;
}

/// One `statmount(2)` result, borrowed.
#[derive(Clone, Copy)]
pub struct Statmount<'a> {
    bytes: &'a [u8],
}

/// A private accessor `raw_FIELD` for each fixed field read.
macro_rules! field {
    ($get:ident, $name:ident, u32) => {
        fn $get(&self) -> u32 {
            self.u32_at(offset_of!(RawStatmount, $name))
        }
    };
    ($get:ident, $name:ident, u64) => {
        fn $get(&self) -> u64 {
            self.u64_at(offset_of!(RawStatmount, $name))
        }
    };
}

impl<'a> Statmount<'a> {
    /// The bytes the kernel wrote; `None` when they cannot hold the fixed part.
    pub fn parse(bytes: &'a [u8]) -> Option<Self> {
        (bytes.len() >= STRINGS).then_some(Statmount { bytes })
    }

    fn u32_at(&self, at: usize) -> u32 {
        u32::from_ne_bytes(self.bytes[at..at + 4].try_into().expect("four bytes"))
    }

    fn u64_at(&self, at: usize) -> u64 {
        u64::from_ne_bytes(self.bytes[at..at + 8].try_into().expect("eight bytes"))
    }

    field!(raw_mnt_opts, mnt_opts, u32);
    field!(raw_mask, mask, u64);
    field!(raw_sb_dev_major, sb_dev_major, u32);
    field!(raw_sb_dev_minor, sb_dev_minor, u32);
    field!(raw_sb_flags, sb_flags, u32);
    field!(raw_fs_type, fs_type, u32);
    field!(raw_mnt_id, mnt_id, u64);
    field!(raw_mnt_parent_id, mnt_parent_id, u64);
    field!(raw_mnt_id_old, mnt_id_old, u32);
    field!(raw_mnt_parent_id_old, mnt_parent_id_old, u32);
    field!(raw_mnt_attr, mnt_attr, u64);
    field!(raw_mnt_propagation, mnt_propagation, u64);
    field!(raw_mnt_peer_group, mnt_peer_group, u64);
    field!(raw_mnt_master, mnt_master, u64);
    field!(raw_propagate_from, propagate_from, u64);
    field!(raw_mnt_root, mnt_root, u32);
    field!(raw_mnt_point, mnt_point, u32);
    field!(raw_mnt_ns_id, mnt_ns_id, u64);
    field!(raw_fs_subtype, fs_subtype, u32);
    field!(raw_sb_source, sb_source, u32);
    field!(raw_opt_sec_num, opt_sec_num, u32);
    field!(raw_opt_sec_array, opt_sec_array, u32);

    /// Whether the kernel answered every bit of `wanted`.
    pub fn has(&self, wanted: u64) -> bool {
        self.raw_mask() & wanted == wanted
    }

    /// A `[str]` field: the NUL-terminated string at `offset` into the strings, if `bit`
    /// was answered and the string lies within the result.
    fn string(&self, bit: u64, offset: u32) -> Option<&'a [u8]> {
        if !self.has(bit) {
            return None;
        }
        let rest = self.bytes.get(STRINGS.checked_add(offset as usize)?..)?;
        rest.iter().position(|&c| c == 0).map(|end| &rest[..end])
    }

    /// The superblock's device, its four `SB_*` flags (`SB_BASIC`).
    pub fn superblock(&self) -> Option<((u32, u32), u32)> {
        self.has(mask::SB_BASIC).then(|| {
            (
                (self.raw_sb_dev_major(), self.raw_sb_dev_minor()),
                self.raw_sb_flags(),
            )
        })
    }

    /// `MNT_BASIC`'s fields.
    pub fn basic(&self) -> Option<MountBasic> {
        self.has(mask::MNT_BASIC).then(|| MountBasic {
            id: self.raw_mnt_id(),
            parent: self.raw_mnt_parent_id(),
            id_old: self.raw_mnt_id_old(),
            parent_old: self.raw_mnt_parent_id_old(),
            attr: self.raw_mnt_attr(),
            propagation: self.raw_mnt_propagation(),
            peer_group: self.raw_mnt_peer_group(),
            master: self.raw_mnt_master(),
        })
    }

    pub fn propagate_from(&self) -> Option<u64> {
        self.has(mask::PROPAGATE_FROM)
            .then(|| self.raw_propagate_from())
    }

    pub fn ns_id(&self) -> Option<u64> {
        self.has(mask::MNT_NS_ID).then(|| self.raw_mnt_ns_id())
    }

    pub fn root(&self) -> Option<&'a [u8]> {
        self.string(mask::MNT_ROOT, self.raw_mnt_root())
    }

    /// Where it is mounted, relative to the root statmount resolved against; empty when
    /// that root cannot reach it.
    pub fn mount_point(&self) -> Option<&'a [u8]> {
        self.string(mask::MNT_POINT, self.raw_mnt_point())
    }

    pub fn fs_type(&self) -> Option<&'a [u8]> {
        self.string(mask::FS_TYPE, self.raw_fs_type())
    }

    pub fn fs_subtype(&self) -> Option<&'a [u8]> {
        self.string(mask::FS_SUBTYPE, self.raw_fs_subtype())
    }

    pub fn source(&self) -> Option<&'a [u8]> {
        self.string(mask::SB_SOURCE, self.raw_sb_source())
    }

    /// The filesystem's own options, comma-separated and escaped as in mountinfo.
    pub fn fs_options(&self) -> Option<&'a [u8]> {
        self.string(mask::MNT_OPTS, self.raw_mnt_opts())
    }

    /// The security module's options (`OPT_SEC_ARRAY`), one string each.
    pub fn security_options(&self) -> Vec<&'a [u8]> {
        let mut out = Vec::new();
        let Some(mut rest) = self
            .has(mask::OPT_SEC_ARRAY)
            .then(|| {
                self.bytes
                    .get(STRINGS + self.raw_opt_sec_array() as usize..)
            })
            .flatten()
        else {
            return out;
        };
        for _ in 0..self.raw_opt_sec_num() {
            let Some(end) = rest.iter().position(|&c| c == 0) else {
                break;
            };
            out.push(&rest[..end]);
            rest = &rest[end + 1..];
        }
        out
    }
}

/// A mount's identity, flags and propagation (`STATMOUNT_MNT_BASIC`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MountBasic {
    /// The 64-bit id, never reused while the system runs.
    pub id: u64,
    pub parent: u64,
    /// The id mountinfo shows (reused after unmount).
    pub id_old: u32,
    pub parent_old: u32,
    pub attr: u64,
    pub propagation: u64,
    pub peer_group: u64,
    pub master: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_u32(buf: &mut [u8], at: usize, v: u32) {
        buf[at..at + 4].copy_from_slice(&v.to_ne_bytes());
    }

    fn put_u64(buf: &mut [u8], at: usize, v: u64) {
        buf[at..at + 8].copy_from_slice(&v.to_ne_bytes());
    }

    #[test]
    fn strings_are_read_within_the_result_and_only_when_answered() {
        let mut buf = vec![0u8; STRINGS];
        buf.extend_from_slice(b"/mnt/a\0tmpfs\0");
        put_u64(&mut buf, offset_of!(RawStatmount, mask), mask::MNT_POINT);
        put_u32(&mut buf, offset_of!(RawStatmount, mnt_point), 0);
        put_u32(&mut buf, offset_of!(RawStatmount, fs_type), 7);
        let sm = Statmount::parse(&buf).unwrap();
        assert_eq!(sm.mount_point(), Some(&b"/mnt/a"[..]));
        assert_eq!(sm.fs_type(), None, "FS_TYPE was not answered");
        put_u64(
            &mut buf,
            offset_of!(RawStatmount, mask),
            mask::MNT_POINT | mask::FS_TYPE,
        );
        put_u32(&mut buf, offset_of!(RawStatmount, mnt_point), u32::MAX);
        let sm = Statmount::parse(&buf).unwrap();
        assert_eq!(sm.fs_type(), Some(&b"tmpfs"[..]));
        assert_eq!(
            sm.mount_point(),
            None,
            "an offset past the end is no string"
        );
        assert!(Statmount::parse(&buf[..STRINGS - 1]).is_none());
    }

    #[test]
    fn an_unterminated_string_is_refused() {
        let mut buf = vec![0u8; STRINGS];
        buf.extend_from_slice(b"/no/nul");
        put_u64(
            &mut buf,
            offset_of!(RawStatmount, mask),
            mask::MNT_POINT | mask::OPT_SEC_ARRAY,
        );
        put_u32(&mut buf, offset_of!(RawStatmount, opt_sec_num), 3);
        let sm = Statmount::parse(&buf).unwrap();
        assert_eq!(sm.mount_point(), None);
        assert!(sm.security_options().is_empty());
    }
}
