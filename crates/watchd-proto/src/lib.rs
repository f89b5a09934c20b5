//! The watchd wire format: what one packet read from a subscription pipe holds.
//!
//! `docs/protocol.md` is the contract and `include/watchd.h` its C form; this crate is the
//! Rust form. Every record is one packet of at most [`MAX_RECORD_LEN`] bytes:
//!
//! ```text
//!  0  u16 len          whole record, header included; a multiple of 4
//!  2  u8  version      VERSION (1)
//!  3  u8  flags        FLAG_*
//!  4  u32 type:24 | subtype:8   (type in the low 24 bits, as the kernel's bitfield)
//!  8  u64 tag          the client's tag of the watch that matched (0 for pipe-wide META)
//! 16  u64 seq          per-subscription sequence number; a gap means records were lost
//! 24  u64 time_ns      CLOCK_REALTIME when the daemon saw the change
//! 32  attributes       u16 len (4 + value), u16 id, value, zero padding to 4 bytes
//! ```
//!
//! - [`RecordBuilder`] encodes; the daemon builds a record once per event and stamps
//!   each subscriber's tag and sequence number into a copy ([`stamp`]).
//! - [`Record::parse`] decodes, and [`Record::attrs`] walks the attributes; ids a reader
//!   does not know are skipped, so new attributes never break old readers.
//! - [`RecordType`], the subtype modules and [`attr`] hold the numbering; [`names`] turns
//!   numbers into the stable names that `watchctl --json` prints.
#![forbid(unsafe_code)]

use std::fmt;

/// The version this crate writes and reads.
pub const VERSION: u8 = 1;
/// Size of the fixed header.
pub const HEADER_LEN: usize = 32;
/// Largest record: one packet, which a pipe write delivers atomically.
pub const MAX_RECORD_LEN: usize = 4096;
/// Size of an attribute's own header (length and id).
pub const ATTR_HEADER_LEN: usize = 4;

/// The record describes state that existed when the watch was set (initial state).
pub const FLAG_SNAPSHOT: u8 = 0x01;
/// Some attributes did not fit in one packet and were left out; `attr::TRUNCATED` says how many.
pub const FLAG_TRUNCATED: u8 = 0x02;

/// Record types. 0 and 1 are the kernel's `WATCH_TYPE_META` and `WATCH_TYPE_KEY_NOTIFY`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum RecordType {
    Meta = 0,
    Key = 1,
    Mount = 2,
    Superblock = 3,
    Device = 4,
    File = 5,
    Krb5 = 6,
}

impl RecordType {
    pub const ALL: [RecordType; 7] = [
        RecordType::Meta,
        RecordType::Key,
        RecordType::Mount,
        RecordType::Superblock,
        RecordType::Device,
        RecordType::File,
        RecordType::Krb5,
    ];

    pub fn from_u32(value: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|t| *t as u32 == value)
    }

    /// The bit this type takes in a set of types (`attr::LOST_TYPES`).
    pub fn bit(self) -> u64 {
        1 << (self as u32)
    }
}

/// Subtypes of [`RecordType::Meta`]; 0 and 1 are the kernel's numbers.
pub mod meta {
    /// The watched object is gone (or access to it was revoked); the watch has ended.
    pub const REMOVAL: u8 = 0;
    /// Records were dropped because the pipe was full.
    pub const LOSS: u8 = 1;
    /// The initial state requested for a watch has been sent in full.
    pub const SYNC: u8 = 2;
    /// The watch's source now gets its events another way (`attr::BACKEND` names it), so
    /// records before and after this one may carry different properties.
    pub const SOURCE_CHANGED: u8 = 3;
}

/// Subtypes of [`RecordType::Key`]: the kernel's `enum key_notification_subtype`.
pub mod key {
    pub const INSTANTIATED: u8 = 0;
    pub const UPDATED: u8 = 1;
    pub const LINKED: u8 = 2;
    pub const UNLINKED: u8 = 3;
    pub const CLEARED: u8 = 4;
    pub const REVOKED: u8 = 5;
    pub const INVALIDATED: u8 = 6;
    pub const SETATTR: u8 = 7;
}

/// Subtypes of [`RecordType::Krb5`]: what happened to a Kerberos credential cache.
pub mod krb5 {
    /// A cache appeared (kinit into a new cache, or the first kinit of a collection).
    pub const CREATED: u8 = 0;
    /// A cache's credentials changed (kinit again, kinit -R, a new service ticket).
    pub const CHANGED: u8 = 1;
    /// Another cache of the collection became the primary one (kswitch).
    pub const PRIMARY: u8 = 2;
    /// A cache went away (kdestroy).
    pub const DESTROYED: u8 = 3;
}

/// Subtypes of [`RecordType::Mount`].
pub mod mount {
    /// A mount appeared.
    pub const ATTACH: u8 = 0;
    /// A mount went away.
    pub const DETACH: u8 = 1;
    /// A mount moved to another mount point; `attr::OLD_MOUNT_POINT` says where from.
    pub const MOVE: u8 = 2;
    /// Options, superblock options or propagation changed; `attr::CHANGED` says which.
    pub const CHANGE: u8 = 3;

    /// Bits of `attr::CHANGED`.
    pub const CHANGED_OPTIONS: u32 = 0x1;
    pub const CHANGED_SUPER_OPTIONS: u32 = 0x2;
    pub const CHANGED_PROPAGATION: u32 = 0x4;
    pub const CHANGED_PARENT: u32 = 0x8;
}

/// The values of a superblock QUOTA record's attributes.
pub mod quota {
    /// `attr::QUOTA_TYPE`: the kernel's `USRQUOTA`, `GRPQUOTA`, `PRJQUOTA`.
    pub const USER: u32 = 0;
    pub const GROUP: u32 = 1;
    pub const PROJECT: u32 = 2;

    /// The name of a quota type ("user", "group", "project").
    pub fn type_name(quota_type: u32) -> Option<&'static str> {
        Some(match quota_type {
            USER => "user",
            GROUP => "group",
            PROJECT => "project",
            _ => return None,
        })
    }

    /// The stable name of a kernel warning number (`attr::QUOTA_WARNING`,
    /// `include/uapi/linux/quota.h`): inode or block limits, soft or hard, exceeded, the
    /// soft limit's grace time expired, or usage back below a limit.
    pub fn warning_name(warning: u32) -> Option<&'static str> {
        Some(match warning {
            1 => "inode_hard_exceeded",
            2 => "inode_grace_expired",
            3 => "inode_soft_exceeded",
            4 => "block_hard_exceeded",
            5 => "block_grace_expired",
            6 => "block_soft_exceeded",
            7 => "inode_hard_below",
            8 => "inode_soft_below",
            9 => "block_hard_below",
            10 => "block_soft_below",
            _ => return None,
        })
    }
}

/// Subtypes of [`RecordType::Device`]: the uevent actions.
pub mod device {
    pub const ADD: u8 = 0;
    pub const REMOVE: u8 = 1;
    pub const CHANGE: u8 = 2;
    pub const MOVE: u8 = 3;
    pub const ONLINE: u8 = 4;
    pub const OFFLINE: u8 = 5;
    pub const BIND: u8 = 6;
    pub const UNBIND: u8 = 7;

    /// The subtype of a uevent action name, e.g. "add".
    pub fn from_action(action: &str) -> Option<u8> {
        Some(match action {
            "add" => ADD,
            "remove" => REMOVE,
            "change" => CHANGE,
            "move" => MOVE,
            "online" => ONLINE,
            "offline" => OFFLINE,
            "bind" => BIND,
            "unbind" => UNBIND,
            _ => return None,
        })
    }
}

/// Subtypes of [`RecordType::Superblock`]: what happened to a filesystem. 0 to 3 keep the
/// numbers of the kernel's proposed superblock notifications (`NOTIFY_SUPERBLOCK_*`); the
/// daemon's own threshold subtypes follow. Three kinds of watch send them: `fserrors`
/// ([`ERROR`]), `quota` ([`QUOTA`], and [`QUOTA_LOW`], [`QUOTA_STILL_LOWER`],
/// [`QUOTA_RECOVERED`] from its usage) and `space` ([`SPACE_LOW`], [`SPACE_STILL_LOWER`],
/// [`SPACE_RECOVERED`]).
pub mod superblock {
    /// The filesystem went read-only. Reserved: this version sends none.
    pub const READONLY: u8 = 0;
    /// The filesystem reported an error (fanotify `FAN_FS_ERROR`).
    pub const ERROR: u8 = 1;
    /// A quota warning about a user or group (the kernel's `EDQUOT` slot).
    pub const QUOTA: u8 = 2;
    /// A network filesystem's server changed state. Reserved: this version sends none.
    pub const NETWORK: u8 = 3;
    /// Free space (or free inodes) fell below the watch's threshold.
    pub const SPACE_LOW: u8 = 4;
    /// Free space fell a further step (1 % by default) since the last warning.
    pub const SPACE_STILL_LOWER: u8 = 5;
    /// Free space is back above the threshold (plus the hysteresis margin).
    pub const SPACE_RECOVERED: u8 = 6;
    /// What a user or group may still use before `EDQUOT` (read with quotactl(2)) fell below
    /// the watch's threshold: a warning the kernel does not send.
    pub const QUOTA_LOW: u8 = 7;
    /// That room fell a further step since the last warning.
    pub const QUOTA_STILL_LOWER: u8 = 8;
    /// The room is back above the threshold (plus the hysteresis margin), or the limit was
    /// raised or removed.
    pub const QUOTA_RECOVERED: u8 = 9;
}

/// Subtypes of [`RecordType::File`]: what happened to a file or directory under a watched
/// path. One kernel event can say several of these at once (the kernel merges events on one
/// name); each is a record of its own, in the order [`file::ORDER`] gives.
pub mod file {
    /// A name was created in a watched directory (file, directory, link…).
    pub const CREATE: u8 = 0;
    /// A name was removed from a watched directory.
    pub const DELETE: u8 = 1;
    /// A file's contents were written.
    pub const MODIFY: u8 = 2;
    /// Metadata changed: permissions, owner, timestamps, link count, extended attributes.
    pub const ATTRIB: u8 = 3;
    /// A file opened for writing was closed.
    pub const CLOSE_WRITE: u8 = 4;
    /// A name was moved out of the watch (`name` is where it was).
    pub const MOVED_FROM: u8 = 5;
    /// A name was moved into the watch (`name` is where it is now).
    pub const MOVED_TO: u8 = 6;
    /// A name was moved within the watch: `old_name` to `name`.
    pub const RENAME: u8 = 7;

    /// The order the records of one merged kernel event come in: arrivals first, changes,
    /// departures last.
    pub const ORDER: [u8; 8] = [
        MOVED_TO,
        CREATE,
        MODIFY,
        ATTRIB,
        CLOSE_WRITE,
        RENAME,
        MOVED_FROM,
        DELETE,
    ];
}

/// How an attribute's value is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttrKind {
    U32,
    U64,
    /// Bytes, normally UTF-8 text, without a terminating NUL.
    Str,
}

/// Attribute ids. One numbering for every record type, so a generic reader can name any
/// attribute; ranges are reserved per source.
pub mod attr {
    // 0x0001..0x000f: META records.
    /// u64: records lost since the last record that arrived.
    pub const LOST_COUNT: u16 = 0x0001;
    /// u64: sequence number of the first lost record.
    pub const FIRST_LOST_SEQ: u16 = 0x0002;
    /// u64: set of the types lost, bit n for type n.
    pub const LOST_TYPES: u16 = 0x0003;
    /// str: the object that went away (REMOVAL).
    pub const OBJECT: u16 = 0x0004;
    /// str: why (REMOVAL), e.g. "unmounted", "access revoked".
    pub const REASON: u16 = 0x0005;
    /// u32: attributes left out of this record (with `FLAG_TRUNCATED`).
    pub const TRUNCATED: u16 = 0x0006;
    /// str: how the source gets its events from now on (SOURCE_CHANGED), e.g. "kernel".
    pub const BACKEND: u16 = 0x0007;

    // 0x0010..0x003f: mounts.
    /// u64: the mount's id as `/proc/PID/mountinfo` lists it (reused after unmount).
    pub const MOUNT_ID: u16 = 0x0010;
    /// u64: the parent mount's id.
    pub const PARENT_ID: u16 = 0x0011;
    /// u32: device major number.
    pub const MAJOR: u16 = 0x0012;
    /// u32: device minor number.
    pub const MINOR: u16 = 0x0013;
    /// str: the root of the mount within its filesystem.
    pub const ROOT: u16 = 0x0014;
    /// str: where it is mounted.
    pub const MOUNT_POINT: u16 = 0x0015;
    /// str: filesystem type, e.g. "tmpfs", "ext4".
    pub const FS_TYPE: u16 = 0x0016;
    /// str: mount source, e.g. "/dev/sda1".
    pub const SOURCE: u16 = 0x0017;
    /// str: per-mount options, e.g. "rw,nosuid".
    pub const MOUNT_OPTIONS: u16 = 0x0018;
    /// str: superblock options.
    pub const SUPER_OPTIONS: u16 = 0x0019;
    /// str: propagation, e.g. "shared:1 master:2", empty when private.
    pub const PROPAGATION: u16 = 0x001a;
    /// str: the previous mount point (MOVE).
    pub const OLD_MOUNT_POINT: u16 = 0x001b;
    /// u64: inode number of the mount namespace the mount lives in.
    pub const MNT_NS: u16 = 0x001c;
    /// u32: what changed (CHANGE), `mount::CHANGED_*` bits.
    pub const CHANGED: u16 = 0x001d;
    /// u64: the kernel's 64-bit mount id, never reused while the system runs (statmount's
    /// `mnt_id`); absent when the source follows mountinfo, which does not show it.
    pub const MOUNT_UNIQUE_ID: u16 = 0x001e;
    /// u64: the parent mount's 64-bit id.
    pub const PARENT_UNIQUE_ID: u16 = 0x001f;

    // 0x0040..0x005f: devices. (MAJOR and MINOR above are used by devices too.)
    /// str: the uevent action, e.g. "add" (also the subtype, kept for readers of the text).
    pub const ACTION: u16 = 0x0040;
    /// str: e.g. "block", "usb", "net".
    pub const SUBSYSTEM: u16 = 0x0041;
    /// str: e.g. "disk", "partition", "usb_device".
    pub const DEVTYPE: u16 = 0x0042;
    /// str: the kernel name, e.g. "loop0p1".
    pub const SYSNAME: u16 = 0x0043;
    /// str: the device's path in sysfs, e.g. "/sys/devices/virtual/block/loop0".
    pub const SYSPATH: u16 = 0x0044;
    /// str: the device node, e.g. "/dev/loop0".
    pub const DEVNODE: u16 = 0x0045;
    /// str: the bound driver, e.g. "usb-storage".
    pub const DRIVER: u16 = 0x0046;
    /// u64: the kernel's uevent sequence number.
    pub const SEQNUM: u16 = 0x0047;
    /// str: udev tags, colon-separated, e.g. "systemd:seat".
    pub const TAGS: u16 = 0x0048;
    /// str, repeated: one device property each, as "KEY=VALUE".
    pub const PROPERTY: u16 = 0x0049;
    /// str: the previous sysfs path (MOVE).
    pub const OLD_SYSPATH: u16 = 0x004a;
    /// str: "udev" (after udevd's rules) or "kernel" (raw uevents, no udevd running).
    pub const EVENT_SOURCE: u16 = 0x004b;

    // 0x0060..0x006f: keys.
    /// u32: the serial of the key the record is about (the kernel's `key_id`).
    pub const KEY_ID: u16 = 0x0060;
    /// u32: LINKED, UNLINKED: the serial of the key linked or unlinked (the kernel's `aux`).
    pub const AUX: u16 = 0x0061;
    /// str: the key's type, e.g. "user", "keyring".
    pub const KEY_TYPE: u16 = 0x0062;
    /// str: the key's description, e.g. "krb_ccache:primary".
    pub const DESCRIPTION: u16 = 0x0063;
    /// u32: the key's owner.
    pub const KEY_UID: u16 = 0x0064;
    /// u32: the key's group.
    pub const KEY_GID: u16 = 0x0065;
    /// u32: the key's permissions (possessor, user, group, other: one byte each).
    pub const PERM: u16 = 0x0066;
    /// u32: the serial of the watched key or keyring the record was found under.
    pub const WATCHED_KEY: u16 = 0x0067;

    // 0x0070..0x007f: Kerberos credential caches.
    /// str: the cache, as MIT krb5 names it, e.g. "KEYRING:persistent:1000:krb_ccache_x".
    pub const CACHE: u16 = 0x0070;
    /// str: the cache's default principal, e.g. "alice@EXAMPLE.ORG"; empty if unknown.
    pub const PRINCIPAL: u16 = 0x0071;
    /// str: the watched cache or collection, as the watch named it.
    pub const COLLECTION: u16 = 0x0072;

    // 0x0080..0x008f: file records.
    /// str: the name the record is about, relative to the watched path ("a/b.txt"); empty
    /// for the watched object itself.
    pub const NAME: u16 = 0x0080;
    /// str: RENAME: the name before the move, relative to the watched path.
    pub const OLD_NAME: u16 = 0x0081;
    /// str: the object's file handle as `name_to_handle_at(2)` gives it, in hex.
    pub const HANDLE: u16 = 0x0082;
    /// u32: the file handle's type (`handle_type` of `struct file_handle`).
    pub const HANDLE_TYPE: u16 = 0x0083;
    /// u64: the filesystem id (`f_fsid` of statfs(2): val[0] in the low 32 bits).
    pub const FSID: u16 = 0x0084;
    /// u64: the object's inode number, when the daemon could still open it by its handle.
    pub const INODE: u16 = 0x0085;
    /// u32: 1 when the object is a directory.
    pub const IS_DIR: u16 = 0x0086;

    // 0x0090..0x0097: every superblock record. They also carry MAJOR, MINOR, FS_TYPE and
    // FSID where they apply.
    /// str, repeated: a mount point of the filesystem in the subscriber's mount namespace,
    /// one attribute each, in the namespace's order.
    pub const MOUNTED_ON: u16 = 0x0090;
    // 0x0098..0x009f: filesystem errors (superblock ERROR records).
    /// u32: the errno the filesystem reported (117, EUCLEAN: corruption found).
    pub const ERRNO: u16 = 0x0098;
    /// str: the errno's symbolic name, e.g. "EUCLEAN".
    pub const ERRNO_NAME: u16 = 0x0099;
    /// u32: the errors this record reports: live, how many the kernel merged into one
    /// event (errors on one filesystem merge until the daemon reads them); SNAPSHOT, the
    /// filesystem's total.
    pub const ERROR_COUNT: u16 = 0x009a;
    /// u32: the errors the filesystem has counted since it was made or last checked
    /// (ext4's `errors_count`), read when the record was made.
    pub const ERRORS_TOTAL: u16 = 0x009b;
    /// u64: when the first counted error happened, seconds since the epoch.
    pub const FIRST_ERROR_TIME: u16 = 0x009c;
    /// str: where in the kernel the first counted error was reported ("function:line").
    pub const FIRST_ERROR_AT: u16 = 0x009d;
    /// u64: when the last counted error happened, seconds since the epoch.
    pub const LAST_ERROR_TIME: u16 = 0x009e;
    /// str: where in the kernel the last counted error was reported ("function:line").
    pub const LAST_ERROR_AT: u16 = 0x009f;
    // 0x00a0..0x00af: free space (superblock SPACE_* records).
    /// u64: bytes free on the filesystem (`f_bfree` × `f_frsize`), root's reserve included.
    pub const FREE_BYTES: u16 = 0x00a0;
    /// u64: bytes available to unprivileged users (`f_bavail` × `f_frsize`): what the
    /// space thresholds are compared with.
    pub const AVAIL_BYTES: u16 = 0x00a1;
    /// u64: the filesystem's size in bytes (`f_blocks` × `f_frsize`).
    pub const TOTAL_BYTES: u16 = 0x00a2;
    /// u64: free inodes (`f_ffree`).
    pub const FREE_INODES: u16 = 0x00a3;
    /// u64: the filesystem's inodes (`f_files`; 0 for filesystems without a fixed count).
    pub const TOTAL_INODES: u16 = 0x00a4;
    /// str: what the record is about: "space" (available bytes) or "inodes" (free inodes).
    pub const RESOURCE: u16 = 0x00a5;
    /// u64: the watch's line, in the resource's unit (bytes or inodes): LOW and
    /// STILL_LOWER: below it; RECOVERED: back at or above it plus the margin.
    pub const THRESHOLD: u16 = 0x00a6;
    /// u64: the hysteresis margin in the resource's unit: RECOVERED needs
    /// THRESHOLD + MARGIN free, and each STILL_LOWER a further drop of this much.
    pub const MARGIN: u16 = 0x00a7;
    // 0x00b0..0x00bf: quota (superblock QUOTA records).
    /// u32: whose quota: 0 a user's, 1 a group's, 2 a project's (the kernel's quota types;
    /// see [`super::quota`]).
    pub const QUOTA_TYPE: u16 = 0x00b0;
    /// u64: the user, group or project id the quota is for.
    pub const QUOTA_ID: u16 = 0x00b1;
    /// u32: the kernel's warning number (`QUOTA_NL_IHARDWARN` 1 … `QUOTA_NL_BSOFTBELOW` 10).
    pub const QUOTA_WARNING: u16 = 0x00b2;
    /// str: the warning's stable name, e.g. "block_soft_exceeded" (see [`super::quota`]).
    pub const QUOTA_WARNING_NAME: u16 = 0x00b3;
    /// u64: the uid of the process whose action caused the warning; only when it is the
    /// subscriber's own uid (or the watch is an administrator's `all` watch).
    pub const QUOTA_CAUSED_BY: u16 = 0x00b4;
    // QUOTA_LOW, QUOTA_STILL_LOWER and QUOTA_RECOVERED records carry QUOTA_TYPE, QUOTA_ID,
    // RESOURCE ("space" in bytes or "inodes"), THRESHOLD and MARGIN (of the room), and:
    /// u64: what the user or group uses on the filesystem, in the resource's unit.
    pub const QUOTA_USED: u16 = 0x00b5;
    /// u64: the soft limit in the resource's unit; 0 when there is none.
    pub const QUOTA_SOFT_LIMIT: u16 = 0x00b6;
    /// u64: the hard limit in the resource's unit; 0 when there is none.
    pub const QUOTA_HARD_LIMIT: u16 = 0x00b7;
    /// u64: what may still be used before `EDQUOT`: the hard limit (the soft limit when
    /// there is no hard one) less the usage. What THRESHOLD is compared with.
    pub const QUOTA_ROOM: u16 = 0x00b8;
    /// u64: when the soft limit's grace time ends (seconds since the epoch), after which
    /// writes fail with `EDQUOT`; only while usage is over the soft limit.
    pub const QUOTA_GRACE_ENDS: u16 = 0x00b9;

    /// The layout of each known attribute; `None` for ids this version does not know.
    pub fn kind(id: u16) -> Option<super::AttrKind> {
        use super::AttrKind::*;
        Some(match id {
            LOST_COUNT | FIRST_LOST_SEQ | LOST_TYPES | MOUNT_ID | PARENT_ID | MNT_NS | SEQNUM
            | MOUNT_UNIQUE_ID | PARENT_UNIQUE_ID | FSID | INODE => U64,
            FIRST_ERROR_TIME | LAST_ERROR_TIME => U64,
            ERRNO | ERROR_COUNT | ERRORS_TOTAL => U32,
            ERRNO_NAME | FIRST_ERROR_AT | LAST_ERROR_AT => Str,
            FREE_BYTES | AVAIL_BYTES | TOTAL_BYTES | FREE_INODES | TOTAL_INODES | THRESHOLD
            | MARGIN => U64,
            RESOURCE => Str,
            TRUNCATED | MAJOR | MINOR | CHANGED | KEY_ID | AUX | KEY_UID | KEY_GID | PERM
            | WATCHED_KEY | HANDLE_TYPE | IS_DIR => U32,
            OBJECT | REASON | ROOT | MOUNT_POINT | FS_TYPE | SOURCE | MOUNT_OPTIONS
            | SUPER_OPTIONS | PROPAGATION | OLD_MOUNT_POINT | ACTION | SUBSYSTEM | DEVTYPE
            | SYSNAME | SYSPATH | DEVNODE | DRIVER | TAGS | PROPERTY | OLD_SYSPATH
            | EVENT_SOURCE | BACKEND | KEY_TYPE | DESCRIPTION | CACHE | PRINCIPAL | COLLECTION
            | NAME | OLD_NAME | HANDLE | MOUNTED_ON => Str,
            QUOTA_TYPE | QUOTA_WARNING => U32,
            QUOTA_ID | QUOTA_CAUSED_BY | QUOTA_USED | QUOTA_SOFT_LIMIT | QUOTA_HARD_LIMIT
            | QUOTA_ROOM | QUOTA_GRACE_ENDS => U64,
            QUOTA_WARNING_NAME => Str,
            _ => return None,
        })
    }
}

/// Stable names for types, subtypes and attributes (what `watchctl --json` prints).
pub mod names {
    use super::{RecordType, attr, device, file, key, krb5, meta, mount, superblock};

    pub fn record_type(t: u32) -> Option<&'static str> {
        Some(match RecordType::from_u32(t)? {
            RecordType::Meta => "meta",
            RecordType::Key => "key",
            RecordType::Mount => "mount",
            RecordType::Superblock => "superblock",
            RecordType::Device => "device",
            RecordType::File => "file",
            RecordType::Krb5 => "krb5",
        })
    }

    pub fn subtype(t: u32, subtype: u8) -> Option<&'static str> {
        Some(match (RecordType::from_u32(t)?, subtype) {
            (RecordType::Meta, meta::REMOVAL) => "removal",
            (RecordType::Meta, meta::LOSS) => "loss",
            (RecordType::Meta, meta::SYNC) => "sync",
            (RecordType::Meta, meta::SOURCE_CHANGED) => "source_changed",
            (RecordType::Key, key::INSTANTIATED) => "instantiated",
            (RecordType::Key, key::UPDATED) => "updated",
            (RecordType::Key, key::LINKED) => "linked",
            (RecordType::Key, key::UNLINKED) => "unlinked",
            (RecordType::Key, key::CLEARED) => "cleared",
            (RecordType::Key, key::REVOKED) => "revoked",
            (RecordType::Key, key::INVALIDATED) => "invalidated",
            (RecordType::Key, key::SETATTR) => "setattr",
            (RecordType::Mount, mount::ATTACH) => "attach",
            (RecordType::Mount, mount::DETACH) => "detach",
            (RecordType::Mount, mount::MOVE) => "move",
            (RecordType::Mount, mount::CHANGE) => "change",
            (RecordType::Device, device::ADD) => "add",
            (RecordType::Device, device::REMOVE) => "remove",
            (RecordType::Device, device::CHANGE) => "change",
            (RecordType::Device, device::MOVE) => "move",
            (RecordType::Device, device::ONLINE) => "online",
            (RecordType::Device, device::OFFLINE) => "offline",
            (RecordType::Device, device::BIND) => "bind",
            (RecordType::Device, device::UNBIND) => "unbind",
            (RecordType::Krb5, krb5::CREATED) => "created",
            (RecordType::Krb5, krb5::CHANGED) => "changed",
            (RecordType::Krb5, krb5::PRIMARY) => "primary",
            (RecordType::Krb5, krb5::DESTROYED) => "destroyed",
            (RecordType::File, file::CREATE) => "create",
            (RecordType::File, file::DELETE) => "delete",
            (RecordType::File, file::MODIFY) => "modify",
            (RecordType::File, file::ATTRIB) => "attrib",
            (RecordType::File, file::CLOSE_WRITE) => "close_write",
            (RecordType::File, file::MOVED_FROM) => "moved_from",
            (RecordType::File, file::MOVED_TO) => "moved_to",
            (RecordType::File, file::RENAME) => "rename",
            (RecordType::Superblock, superblock::READONLY) => "readonly",
            (RecordType::Superblock, superblock::ERROR) => "error",
            (RecordType::Superblock, superblock::QUOTA) => "quota",
            (RecordType::Superblock, superblock::NETWORK) => "network",
            (RecordType::Superblock, superblock::SPACE_LOW) => "low",
            (RecordType::Superblock, superblock::SPACE_STILL_LOWER) => "still_lower",
            (RecordType::Superblock, superblock::SPACE_RECOVERED) => "recovered",
            (RecordType::Superblock, superblock::QUOTA_LOW) => "quota_low",
            (RecordType::Superblock, superblock::QUOTA_STILL_LOWER) => "quota_still_lower",
            (RecordType::Superblock, superblock::QUOTA_RECOVERED) => "quota_recovered",
            _ => return None,
        })
    }

    pub fn attribute(id: u16) -> Option<&'static str> {
        Some(match id {
            attr::LOST_COUNT => "lost_count",
            attr::FIRST_LOST_SEQ => "first_lost_seq",
            attr::LOST_TYPES => "lost_types",
            attr::OBJECT => "object",
            attr::REASON => "reason",
            attr::TRUNCATED => "truncated",
            attr::BACKEND => "backend",
            attr::MOUNT_ID => "mount_id",
            attr::PARENT_ID => "parent_id",
            attr::MAJOR => "major",
            attr::MINOR => "minor",
            attr::ROOT => "root",
            attr::MOUNT_POINT => "mount_point",
            attr::FS_TYPE => "fs_type",
            attr::SOURCE => "source",
            attr::MOUNT_OPTIONS => "mount_options",
            attr::SUPER_OPTIONS => "super_options",
            attr::PROPAGATION => "propagation",
            attr::OLD_MOUNT_POINT => "old_mount_point",
            attr::MNT_NS => "mnt_ns",
            attr::CHANGED => "changed",
            attr::MOUNT_UNIQUE_ID => "mount_unique_id",
            attr::PARENT_UNIQUE_ID => "parent_unique_id",
            attr::ACTION => "action",
            attr::SUBSYSTEM => "subsystem",
            attr::DEVTYPE => "devtype",
            attr::SYSNAME => "sysname",
            attr::SYSPATH => "syspath",
            attr::DEVNODE => "devnode",
            attr::DRIVER => "driver",
            attr::SEQNUM => "seqnum",
            attr::TAGS => "tags",
            attr::PROPERTY => "property",
            attr::OLD_SYSPATH => "old_syspath",
            attr::EVENT_SOURCE => "event_source",
            attr::KEY_ID => "key_id",
            attr::AUX => "aux",
            attr::KEY_TYPE => "key_type",
            attr::DESCRIPTION => "description",
            attr::KEY_UID => "key_uid",
            attr::KEY_GID => "key_gid",
            attr::PERM => "perm",
            attr::WATCHED_KEY => "watched_key",
            attr::CACHE => "cache",
            attr::PRINCIPAL => "principal",
            attr::COLLECTION => "collection",
            attr::NAME => "name",
            attr::OLD_NAME => "old_name",
            attr::HANDLE => "handle",
            attr::HANDLE_TYPE => "handle_type",
            attr::FSID => "fsid",
            attr::INODE => "inode",
            attr::IS_DIR => "is_dir",
            attr::MOUNTED_ON => "mounted_on",
            attr::ERRNO => "errno",
            attr::ERRNO_NAME => "errno_name",
            attr::ERROR_COUNT => "error_count",
            attr::ERRORS_TOTAL => "errors_total",
            attr::FIRST_ERROR_TIME => "first_error_time",
            attr::FIRST_ERROR_AT => "first_error_at",
            attr::LAST_ERROR_TIME => "last_error_time",
            attr::LAST_ERROR_AT => "last_error_at",
            attr::QUOTA_TYPE => "quota_type",
            attr::QUOTA_ID => "quota_id",
            attr::QUOTA_WARNING => "quota_warning",
            attr::QUOTA_WARNING_NAME => "quota_warning_name",
            attr::QUOTA_CAUSED_BY => "quota_caused_by",
            attr::QUOTA_USED => "quota_used",
            attr::QUOTA_SOFT_LIMIT => "quota_soft_limit",
            attr::QUOTA_HARD_LIMIT => "quota_hard_limit",
            attr::QUOTA_ROOM => "quota_room",
            attr::QUOTA_GRACE_ENDS => "quota_grace_ends",
            attr::FREE_BYTES => "free_bytes",
            attr::AVAIL_BYTES => "avail_bytes",
            attr::TOTAL_BYTES => "total_bytes",
            attr::FREE_INODES => "free_inodes",
            attr::TOTAL_INODES => "total_inodes",
            attr::RESOURCE => "resource",
            attr::THRESHOLD => "threshold",
            attr::MARGIN => "margin",
            _ => return None,
        })
    }
}

/// Why an encode failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// The attribute would take the record past [`MAX_RECORD_LEN`].
    TooLarge,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "record would exceed {MAX_RECORD_LEN} bytes")
    }
}

impl std::error::Error for EncodeError {}

/// Why a packet is not a record this crate can read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// A zero-length packet (end of file on the pipe reads as this too).
    Empty,
    /// Fewer bytes than the header, or than the header's length field says.
    Truncated { have: usize, need: usize },
    /// The packet holds more bytes than its length field says (a record is exactly one packet).
    Oversized { have: usize, len: usize },
    /// A length field that cannot be right: below the header, above [`MAX_RECORD_LEN`], or not a
    /// multiple of 4.
    BadLength(usize),
    /// A version this crate does not speak.
    UnsupportedVersion(u8),
    /// An attribute whose length runs past the record or is below its own header.
    BadAttribute { offset: usize },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Empty => write!(f, "empty packet"),
            DecodeError::Truncated { have, need } => {
                write!(f, "truncated record: {have} bytes, need {need}")
            }
            DecodeError::Oversized { have, len } => {
                write!(f, "packet of {have} bytes holds a record of {len} bytes")
            }
            DecodeError::BadLength(len) => write!(f, "impossible record length {len}"),
            DecodeError::UnsupportedVersion(v) => {
                write!(
                    f,
                    "record version {v} is not supported (this reader speaks {VERSION})"
                )
            }
            DecodeError::BadAttribute { offset } => {
                write!(f, "malformed attribute at byte {offset}")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// The fixed part of every record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub len: u16,
    pub version: u8,
    pub flags: u8,
    pub record_type: u32,
    pub subtype: u8,
    pub tag: u64,
    pub seq: u64,
    pub time_ns: u64,
}

impl Header {
    pub fn record_type(&self) -> Option<RecordType> {
        RecordType::from_u32(self.record_type)
    }

    pub fn is(&self, record_type: RecordType, subtype: u8) -> bool {
        self.record_type == record_type as u32 && self.subtype == subtype
    }
}

fn type_word(record_type: u32, subtype: u8) -> u32 {
    (record_type & 0x00ff_ffff) | (u32::from(subtype) << 24)
}

fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

/// Builds one record. Tag and sequence number start at zero and are filled in per
/// subscriber with [`stamp`], so one build serves every pipe the event goes to.
#[derive(Clone, Debug)]
pub struct RecordBuilder {
    buf: Vec<u8>,
}

impl RecordBuilder {
    pub fn new(record_type: RecordType, subtype: u8, flags: u8, time_ns: u64) -> Self {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&(HEADER_LEN as u16).to_le_bytes());
        buf.push(VERSION);
        buf.push(flags);
        buf.extend_from_slice(&type_word(record_type as u32, subtype).to_le_bytes());
        buf.extend_from_slice(&[0; 16]); // tag, seq
        buf.extend_from_slice(&time_ns.to_le_bytes());
        RecordBuilder { buf }
    }

    /// Bytes still free in the packet, attribute headers and padding included.
    pub fn room(&self) -> usize {
        MAX_RECORD_LEN - self.buf.len()
    }

    /// Appends an attribute, or leaves the record as it was when it would not fit.
    pub fn put(&mut self, id: u16, value: &[u8]) -> Result<&mut Self, EncodeError> {
        let attr_len = ATTR_HEADER_LEN + value.len();
        if pad4(attr_len) > self.room() {
            return Err(EncodeError::TooLarge);
        }
        self.buf.extend_from_slice(&(attr_len as u16).to_le_bytes());
        self.buf.extend_from_slice(&id.to_le_bytes());
        self.buf.extend_from_slice(value);
        self.buf.resize(pad4(self.buf.len()), 0);
        let len = self.buf.len() as u16;
        self.buf[0..2].copy_from_slice(&len.to_le_bytes());
        Ok(self)
    }

    pub fn put_u32(&mut self, id: u16, value: u32) -> Result<&mut Self, EncodeError> {
        self.put(id, &value.to_le_bytes())
    }

    pub fn put_u64(&mut self, id: u16, value: u64) -> Result<&mut Self, EncodeError> {
        self.put(id, &value.to_le_bytes())
    }

    pub fn put_str(&mut self, id: u16, value: impl AsRef<[u8]>) -> Result<&mut Self, EncodeError> {
        self.put(id, value.as_ref())
    }

    /// Sets flag bits after the fact (e.g. [`FLAG_TRUNCATED`] once attributes were left out).
    pub fn set_flags(&mut self, flags: u8) -> &mut Self {
        self.buf[3] |= flags;
        self
    }

    /// The encoded record, tag and sequence number still zero.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Writes a subscriber's tag and sequence number into an encoded record.
///
/// Panics if `record` is shorter than [`HEADER_LEN`]; records come from [`RecordBuilder`].
pub fn stamp(record: &mut [u8], tag: u64, seq: u64) {
    record[8..16].copy_from_slice(&tag.to_le_bytes());
    record[16..24].copy_from_slice(&seq.to_le_bytes());
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// A decoded record borrowing the packet it came from.
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    pub header: Header,
    body: &'a [u8],
}

impl<'a> Record<'a> {
    /// Decodes one packet. The packet must hold exactly one record.
    pub fn parse(packet: &'a [u8]) -> Result<Self, DecodeError> {
        if packet.is_empty() {
            return Err(DecodeError::Empty);
        }
        if packet.len() < HEADER_LEN {
            return Err(DecodeError::Truncated {
                have: packet.len(),
                need: HEADER_LEN,
            });
        }
        let version = packet[2];
        if version != VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let len = usize::from(le_u16(packet, 0));
        if !(HEADER_LEN..=MAX_RECORD_LEN).contains(&len) || len % 4 != 0 {
            return Err(DecodeError::BadLength(len));
        }
        if packet.len() < len {
            return Err(DecodeError::Truncated {
                have: packet.len(),
                need: len,
            });
        }
        if packet.len() > len {
            return Err(DecodeError::Oversized {
                have: packet.len(),
                len,
            });
        }
        let word = le_u32(packet, 4);
        let header = Header {
            len: len as u16,
            version,
            flags: packet[3],
            record_type: word & 0x00ff_ffff,
            subtype: (word >> 24) as u8,
            tag: le_u64(packet, 8),
            seq: le_u64(packet, 16),
            time_ns: le_u64(packet, 24),
        };
        let record = Record {
            header,
            body: &packet[HEADER_LEN..len],
        };
        // Validate the attribute chain up front so later walks cannot fail.
        for attr in record.attrs() {
            attr?;
        }
        Ok(record)
    }

    /// The attributes in order, unknown ids included (skip them).
    pub fn attrs(&self) -> Attrs<'a> {
        Attrs {
            body: self.body,
            offset: 0,
        }
    }

    /// The first attribute with this id.
    pub fn get(&self, id: u16) -> Option<Attr<'a>> {
        self.attrs().filter_map(Result::ok).find(|a| a.id == id)
    }

    /// Every attribute with this id, in order (repeated ones, such as `attr::PROPERTY`).
    pub fn get_all(&self, id: u16) -> impl Iterator<Item = Attr<'a>> + use<'a> {
        self.attrs()
            .filter_map(Result::ok)
            .filter(move |a| a.id == id)
    }

    pub fn get_u32(&self, id: u16) -> Option<u32> {
        self.get(id)?.as_u32()
    }

    pub fn get_u64(&self, id: u16) -> Option<u64> {
        self.get(id)?.as_u64()
    }

    /// A text attribute; bytes that are not UTF-8 are replaced.
    pub fn get_str(&self, id: u16) -> Option<String> {
        self.get(id)
            .map(|a| String::from_utf8_lossy(a.value).into_owned())
    }
}

/// One attribute: its id and value (padding removed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr<'a> {
    pub id: u16,
    pub value: &'a [u8],
}

impl<'a> Attr<'a> {
    pub fn as_u32(&self) -> Option<u32> {
        Some(u32::from_le_bytes(self.value.try_into().ok()?))
    }

    pub fn as_u64(&self) -> Option<u64> {
        Some(u64::from_le_bytes(self.value.try_into().ok()?))
    }

    pub fn as_str(&self) -> Option<&'a str> {
        std::str::from_utf8(self.value).ok()
    }
}

/// Iterator over a record's attributes.
#[derive(Clone, Debug)]
pub struct Attrs<'a> {
    body: &'a [u8],
    offset: usize,
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Result<Attr<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = &self.body[self.offset..];
        if rest.is_empty() {
            return None;
        }
        let at = HEADER_LEN + self.offset;
        if rest.len() < ATTR_HEADER_LEN {
            self.offset = self.body.len();
            return Some(Err(DecodeError::BadAttribute { offset: at }));
        }
        let len = usize::from(le_u16(rest, 0));
        if len < ATTR_HEADER_LEN || len > rest.len() {
            self.offset = self.body.len();
            return Some(Err(DecodeError::BadAttribute { offset: at }));
        }
        let attr = Attr {
            id: le_u16(rest, 2),
            value: &rest[ATTR_HEADER_LEN..len],
        };
        self.offset = (self.offset + pad4(len)).min(self.body.len());
        Some(Ok(attr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIME: u64 = 1_767_225_600_123_456_789;

    fn mount_detach() -> Vec<u8> {
        let mut b = RecordBuilder::new(RecordType::Mount, mount::DETACH, FLAG_SNAPSHOT, TIME);
        b.put_u64(attr::MOUNT_ID, 0x0102_0304_0506_0708)
            .unwrap()
            .put_u32(attr::MAJOR, 259)
            .unwrap()
            .put_str(attr::MOUNT_POINT, "/mnt/usb1")
            .unwrap();
        b.finish()
    }

    /// A record of just a header, with `len` and `version` patched to whatever a test needs.
    fn raw_header(len: u16, version: u8) -> Vec<u8> {
        let mut rec = RecordBuilder::new(RecordType::Meta, meta::SYNC, 0, TIME).finish();
        rec[0..2].copy_from_slice(&len.to_le_bytes());
        rec[2] = version;
        rec
    }

    #[test]
    fn round_trip_header_and_attributes() {
        let mut rec = mount_detach();
        stamp(&mut rec, 7, 42);
        let r = Record::parse(&rec).unwrap();
        assert_eq!(
            r.header,
            Header {
                len: rec.len() as u16,
                version: VERSION,
                flags: FLAG_SNAPSHOT,
                record_type: RecordType::Mount as u32,
                subtype: mount::DETACH,
                tag: 7,
                seq: 42,
                time_ns: TIME,
            }
        );
        assert!(r.header.is(RecordType::Mount, mount::DETACH));
        assert_eq!(r.header.record_type(), Some(RecordType::Mount));
        assert_eq!(r.get_u64(attr::MOUNT_ID), Some(0x0102_0304_0506_0708));
        assert_eq!(r.get_u32(attr::MAJOR), Some(259));
        assert_eq!(r.get_str(attr::MOUNT_POINT).as_deref(), Some("/mnt/usb1"));
        assert_eq!(
            r.get(attr::MOUNT_POINT).unwrap().as_str(),
            Some("/mnt/usb1")
        );
        assert_eq!(r.get(attr::SOURCE), None);
        // A typed getter must not reinterpret a value of the wrong size.
        assert_eq!(r.get_u32(attr::MOUNT_ID), None);
        assert_eq!(r.attrs().count(), 3);
    }

    /// Pins the exact bytes, so a change to the wire format cannot pass unnoticed: C and
    /// Python readers written from docs/protocol.md depend on these offsets.
    #[test]
    fn wire_layout_is_fixed() {
        let mut rec = mount_detach();
        stamp(&mut rec, 0x1122_3344_5566_7788, 0x99);
        #[rustfmt::skip]
        let expected: Vec<u8> = [
            &[68, 0, VERSION, FLAG_SNAPSHOT][..],
            &[2, 0, 0, 1],                                  // type 2 low, subtype 1 high
            &0x1122_3344_5566_7788u64.to_le_bytes(),
            &0x99u64.to_le_bytes(),
            &TIME.to_le_bytes(),
            &[12, 0, 0x10, 0], &[8, 7, 6, 5, 4, 3, 2, 1],   // mount_id
            &[8, 0, 0x12, 0], &[3, 1, 0, 0],                // major 259
            &[13, 0, 0x15, 0], b"/mnt/usb1", &[0, 0, 0],    // len excludes the padding
        ]
        .concat();
        assert_eq!(rec, expected);
    }

    #[test]
    fn type_keeps_low_24_bits_and_subtype_high_8() {
        let rec = RecordBuilder::new(RecordType::Key, key::SETATTR, 0, 0).finish();
        assert_eq!(rec[4..8], [1, 0, 0, 7]);
        let r = Record::parse(&rec).unwrap();
        assert_eq!((r.header.record_type, r.header.subtype), (1, key::SETATTR));
    }

    #[test]
    fn stamp_sets_tag_and_seq_only() {
        let built = mount_detach();
        let mut rec = built.clone();
        stamp(&mut rec, u64::MAX, 1);
        let r = Record::parse(&rec).unwrap();
        assert_eq!((r.header.tag, r.header.seq), (u64::MAX, 1));
        assert_eq!(rec[..8], built[..8]);
        assert_eq!(rec[24..], built[24..]);
        // Restamping one build for another subscriber must not leave the first one's values.
        stamp(&mut rec, 3, 9);
        let r = Record::parse(&rec).unwrap();
        assert_eq!((r.header.tag, r.header.seq), (3, 9));
    }

    #[test]
    fn empty_packet() {
        assert_eq!(Record::parse(&[]).unwrap_err(), DecodeError::Empty);
    }

    #[test]
    fn truncated_packets() {
        let rec = mount_detach();
        assert_eq!(
            Record::parse(&rec[..HEADER_LEN - 1]).unwrap_err(),
            DecodeError::Truncated {
                have: HEADER_LEN - 1,
                need: HEADER_LEN
            }
        );
        assert_eq!(
            Record::parse(&rec[..1]).unwrap_err(),
            DecodeError::Truncated {
                have: 1,
                need: HEADER_LEN
            }
        );
        assert_eq!(
            Record::parse(&rec[..rec.len() - 4]).unwrap_err(),
            DecodeError::Truncated {
                have: rec.len() - 4,
                need: rec.len()
            }
        );
    }

    #[test]
    fn oversized_packets() {
        let mut rec = mount_detach();
        let len = rec.len();
        rec.extend_from_slice(&[0; 4]);
        assert_eq!(
            Record::parse(&rec).unwrap_err(),
            DecodeError::Oversized { have: len + 4, len }
        );

        // Two records in one packet are not one record.
        let two = [mount_detach(), mount_detach()].concat();
        assert_eq!(
            Record::parse(&two).unwrap_err(),
            DecodeError::Oversized { have: 2 * len, len }
        );

        // A length field beyond one packet can never be right, however many bytes follow.
        let mut big = raw_header(4100, VERSION);
        big.resize(4100, 0);
        assert_eq!(
            Record::parse(&big).unwrap_err(),
            DecodeError::BadLength(4100)
        );
        let mut big = raw_header(0xfffc, VERSION);
        big.resize(0xfffc, 0);
        assert_eq!(
            Record::parse(&big).unwrap_err(),
            DecodeError::BadLength(0xfffc)
        );

        // A full-size record followed by more bytes than one packet holds.
        let mut full = raw_header(MAX_RECORD_LEN as u16, VERSION);
        full.extend_from_slice(&4064u16.to_le_bytes());
        full.extend_from_slice(&0x7fffu16.to_le_bytes());
        full.resize(MAX_RECORD_LEN, 0);
        assert!(Record::parse(&full).is_ok());
        full.push(0);
        assert_eq!(
            Record::parse(&full).unwrap_err(),
            DecodeError::Oversized {
                have: MAX_RECORD_LEN + 1,
                len: MAX_RECORD_LEN
            }
        );
    }

    #[test]
    fn impossible_lengths() {
        // Not a multiple of 4: attributes could not stay aligned.
        let mut rec = raw_header(34, VERSION);
        rec.resize(34, 0);
        assert_eq!(Record::parse(&rec).unwrap_err(), DecodeError::BadLength(34));
        // Below the header: the record cannot even hold itself.
        assert_eq!(
            Record::parse(&raw_header(28, VERSION)).unwrap_err(),
            DecodeError::BadLength(28)
        );
        assert_eq!(
            Record::parse(&raw_header(0, VERSION)).unwrap_err(),
            DecodeError::BadLength(0)
        );
    }

    #[test]
    fn attribute_running_past_the_end() {
        let mut rec = RecordBuilder::new(RecordType::Meta, meta::REMOVAL, 0, TIME);
        rec.put_str(attr::OBJECT, "/mnt/usb1").unwrap();
        let mut rec = rec.finish();
        // Claim a longer value than the record holds.
        rec[32..34].copy_from_slice(&20u16.to_le_bytes());
        assert_eq!(
            Record::parse(&rec).unwrap_err(),
            DecodeError::BadAttribute { offset: 32 }
        );

        // A second attribute whose header claims more than is left.
        let mut b = RecordBuilder::new(RecordType::Meta, meta::REMOVAL, 0, TIME);
        b.put_str(attr::OBJECT, "abc")
            .unwrap()
            .put_str(attr::REASON, "xyz")
            .unwrap();
        let mut rec = b.finish();
        rec[40..42].copy_from_slice(&9u16.to_le_bytes());
        assert_eq!(
            Record::parse(&rec).unwrap_err(),
            DecodeError::BadAttribute { offset: 40 }
        );
    }

    #[test]
    fn attribute_shorter_than_its_header() {
        let mut rec = RecordBuilder::new(RecordType::Meta, meta::REMOVAL, 0, TIME);
        rec.put_str(attr::OBJECT, "").unwrap();
        let mut rec = rec.finish();
        // Length 0 would make a walker loop forever on the same attribute.
        rec[32..34].copy_from_slice(&0u16.to_le_bytes());
        assert_eq!(
            Record::parse(&rec).unwrap_err(),
            DecodeError::BadAttribute { offset: 32 }
        );
        rec[32..34].copy_from_slice(&3u16.to_le_bytes());
        assert_eq!(
            Record::parse(&rec).unwrap_err(),
            DecodeError::BadAttribute { offset: 32 }
        );
    }

    #[test]
    fn unknown_attribute_is_skipped() {
        let mut b = RecordBuilder::new(RecordType::Mount, mount::ATTACH, 0, TIME);
        b.put_u32(attr::MAJOR, 8)
            .unwrap()
            .put(0x7fff, b"future")
            .unwrap()
            .put(0x7ffe, &[])
            .unwrap()
            .put_u64(attr::MOUNT_ID, 99)
            .unwrap()
            .put_str(attr::FS_TYPE, "ext4")
            .unwrap();
        let rec = b.finish();
        let r = Record::parse(&rec).unwrap();
        assert_eq!(r.get_u32(attr::MAJOR), Some(8));
        assert_eq!(r.get_u64(attr::MOUNT_ID), Some(99));
        assert_eq!(r.get_str(attr::FS_TYPE).as_deref(), Some("ext4"));
        let ids: Vec<u16> = r.attrs().map(|a| a.unwrap().id).collect();
        assert_eq!(
            ids,
            [attr::MAJOR, 0x7fff, 0x7ffe, attr::MOUNT_ID, attr::FS_TYPE]
        );
        assert_eq!(r.get(0x7fff).unwrap().value, b"future");
        assert_eq!(r.get(0x7ffe).unwrap().value, b"");
        assert_eq!(attr::kind(0x7fff), None);
    }

    #[test]
    fn first_attribute_with_an_id_wins() {
        let mut b = RecordBuilder::new(RecordType::Mount, mount::ATTACH, 0, TIME);
        b.put_u32(attr::MAJOR, 1)
            .unwrap()
            .put_u32(attr::MAJOR, 2)
            .unwrap();
        let rec = b.finish();
        assert_eq!(Record::parse(&rec).unwrap().get_u32(attr::MAJOR), Some(1));
    }

    #[test]
    fn unknown_version() {
        let mut rec = mount_detach();
        rec[2] = 2;
        let err = Record::parse(&rec).unwrap_err();
        assert_eq!(err, DecodeError::UnsupportedVersion(2));
        assert_eq!(
            err.to_string(),
            "record version 2 is not supported (this reader speaks 1)"
        );
        // The version is checked before the length, so a later version may change what the
        // length field means without old readers misreporting it as malformed.
        assert_eq!(
            Record::parse(&raw_header(3, 0)).unwrap_err(),
            DecodeError::UnsupportedVersion(0)
        );
    }

    #[test]
    fn errors_display() {
        for (err, text) in [
            (DecodeError::Empty, "empty packet"),
            (
                DecodeError::Truncated { have: 3, need: 32 },
                "truncated record: 3 bytes, need 32",
            ),
            (
                DecodeError::Oversized { have: 72, len: 64 },
                "packet of 72 bytes holds a record of 64 bytes",
            ),
            (DecodeError::BadLength(34), "impossible record length 34"),
            (
                DecodeError::BadAttribute { offset: 40 },
                "malformed attribute at byte 40",
            ),
        ] {
            assert_eq!(err.to_string(), text);
        }
        assert_eq!(
            EncodeError::TooLarge.to_string(),
            "record would exceed 4096 bytes"
        );
    }

    #[test]
    fn builder_refuses_what_does_not_fit() {
        let mut b = RecordBuilder::new(RecordType::Mount, mount::ATTACH, 0, TIME);
        assert_eq!(b.room(), MAX_RECORD_LEN - HEADER_LEN);
        b.put_str(attr::ROOT, vec![b'a'; 4000]).unwrap();
        let room = b.room();
        assert_eq!(room, MAX_RECORD_LEN - HEADER_LEN - 4004);
        let before = b.clone().finish();

        assert_eq!(
            b.put_str(attr::MOUNT_POINT, vec![b'b'; 100]).unwrap_err(),
            EncodeError::TooLarge
        );
        // One byte over only because of padding still does not fit.
        assert_eq!(
            b.put_str(attr::SOURCE, vec![b'c'; room - ATTR_HEADER_LEN + 1])
                .unwrap_err(),
            EncodeError::TooLarge
        );
        assert_eq!(b.room(), room);
        assert_eq!(b.clone().finish(), before);
        assert!(Record::parse(&before).is_ok());

        // Exactly filling the packet is allowed.
        b.put_str(attr::SOURCE, vec![b'c'; room - ATTR_HEADER_LEN])
            .unwrap();
        assert_eq!(b.room(), 0);
        let full = b.finish();
        assert_eq!(full.len(), MAX_RECORD_LEN);
        let r = Record::parse(&full).unwrap();
        assert_eq!(
            r.get(attr::SOURCE).unwrap().value.len(),
            room - ATTR_HEADER_LEN
        );
    }

    #[test]
    fn value_too_long_for_the_length_field() {
        let mut b = RecordBuilder::new(RecordType::Mount, mount::ATTACH, 0, TIME);
        // Larger than u16: must be refused, not wrapped into a short length.
        assert_eq!(
            b.put(attr::ROOT, &vec![0; 70_000]).unwrap_err(),
            EncodeError::TooLarge
        );
        assert_eq!(b.finish().len(), HEADER_LEN);
    }

    #[test]
    fn set_flags_adds_bits() {
        let mut b = RecordBuilder::new(RecordType::Mount, mount::ATTACH, FLAG_SNAPSHOT, TIME);
        b.set_flags(FLAG_TRUNCATED);
        let rec = b.finish();
        let flags = Record::parse(&rec).unwrap().header.flags;
        assert_eq!(flags, FLAG_SNAPSHOT | FLAG_TRUNCATED);
    }

    #[test]
    fn lost_types_bits() {
        assert_eq!(RecordType::Meta.bit(), 1);
        assert_eq!(RecordType::Mount.bit(), 4);
        assert_eq!(RecordType::Krb5.bit(), 64);
    }

    #[test]
    fn type_numbers() {
        for (i, t) in RecordType::ALL.into_iter().enumerate() {
            assert_eq!(t as u32, i as u32);
            assert_eq!(RecordType::from_u32(i as u32), Some(t));
        }
        assert_eq!(RecordType::from_u32(RecordType::ALL.len() as u32), None);
    }

    #[test]
    fn every_known_number_has_a_name() {
        let mut seen = std::collections::HashSet::new();
        for t in RecordType::ALL {
            let name = names::record_type(t as u32).unwrap();
            assert!(seen.insert(name), "duplicate type name {name}");
        }
        assert_eq!(names::record_type(7), None);
        assert_eq!(names::record_type(0x00ff_ffff), None);

        let known_subtypes = |t: RecordType| -> u8 {
            match t {
                RecordType::Meta => 4,
                RecordType::Key => 8,
                RecordType::Mount => 4,
                RecordType::Device | RecordType::File => 8,
                RecordType::Krb5 => 4,
                RecordType::Superblock => 10,
            }
        };
        for t in RecordType::ALL {
            let mut seen = std::collections::HashSet::new();
            for s in 0..=u8::MAX {
                let name = names::subtype(t as u32, s);
                assert_eq!(name.is_some(), s < known_subtypes(t), "{t:?} subtype {s}");
                if let Some(name) = name {
                    assert!(seen.insert(name), "duplicate subtype name {name}");
                }
            }
        }
        assert_eq!(names::subtype(99, 0), None);

        let mut seen = std::collections::HashSet::new();
        for id in 0..=u16::MAX {
            let name = names::attribute(id);
            assert_eq!(
                attr::kind(id).is_some(),
                name.is_some(),
                "attribute {id:#06x}: kind and name disagree"
            );
            if let Some(name) = name {
                assert!(seen.insert(name), "duplicate attribute name {name}");
            }
        }
        assert_eq!(seen.len(), 80);
    }

    #[test]
    fn device_subtypes_are_the_uevent_actions() {
        let actions = [
            ("add", device::ADD),
            ("remove", device::REMOVE),
            ("change", device::CHANGE),
            ("move", device::MOVE),
            ("online", device::ONLINE),
            ("offline", device::OFFLINE),
            ("bind", device::BIND),
            ("unbind", device::UNBIND),
        ];
        for (i, (action, subtype)) in actions.into_iter().enumerate() {
            assert_eq!(usize::from(subtype), i, "{action}");
            assert_eq!(device::from_action(action), Some(subtype));
            // The subtype's name is the action itself, so ACTION and the subtype agree.
            assert_eq!(
                names::subtype(RecordType::Device as u32, subtype),
                Some(action)
            );
        }
        for unknown in ["", "ADD", "Add", "add ", "exit", "attach"] {
            assert_eq!(device::from_action(unknown), None, "{unknown:?}");
        }
    }

    /// PROPERTY repeats (as MOUNTED_ON does): every occurrence is there, in order,
    /// after the fixed attributes, and `get` still gives the first.
    #[test]
    fn repeated_property_attributes_keep_their_order() {
        let mut b = RecordBuilder::new(RecordType::Device, device::ADD, 0, TIME);
        b.put_str(attr::ACTION, "add")
            .unwrap()
            .put_str(attr::SUBSYSTEM, "block")
            .unwrap()
            .put_u64(attr::SEQNUM, 4321)
            .unwrap();
        let properties = [
            "ID_FS_TYPE=ext4",
            "ID_FS_LABEL=",
            "DM_NAME=a=b",
            "ID_FS_TYPE=xfs",
        ];
        for p in properties {
            b.put_str(attr::PROPERTY, p).unwrap();
        }
        let rec = b.finish();
        let r = Record::parse(&rec).unwrap();
        let got: Vec<&str> = r
            .attrs()
            .map(Result::unwrap)
            .filter(|a| a.id == attr::PROPERTY)
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(got, properties);
        assert_eq!(
            r.get_str(attr::PROPERTY).as_deref(),
            Some("ID_FS_TYPE=ext4")
        );
        assert_eq!(r.get_u64(attr::SEQNUM), Some(4321));
    }

    /// The daemon's policy for properties that do not fit, expressed with the builder: a
    /// property is put whole or not at all, and the record still parses at full size.
    #[test]
    fn properties_left_out_whole_are_counted() {
        let mut b = RecordBuilder::new(RecordType::Device, device::CHANGE, 0, TIME);
        b.put_str(attr::ACTION, "change")
            .unwrap()
            .put_str(attr::SUBSYSTEM, "block")
            .unwrap();
        let reserve = ATTR_HEADER_LEN + 4; // room kept for TRUNCATED
        let mut left_out = 0u32;
        for i in 0..100 {
            let p = format!("PROP_{i:02}={}", "v".repeat(60));
            if pad4(ATTR_HEADER_LEN + p.len()) + reserve > b.room() {
                left_out += 1;
                continue;
            }
            b.put_str(attr::PROPERTY, &p).unwrap();
        }
        assert!(left_out > 0);
        b.set_flags(FLAG_TRUNCATED);
        b.put_u32(attr::TRUNCATED, left_out).unwrap();
        let rec = b.finish();
        assert!(rec.len() <= MAX_RECORD_LEN);
        let r = Record::parse(&rec).unwrap();
        assert_eq!(r.header.flags & FLAG_TRUNCATED, FLAG_TRUNCATED);
        let kept = r
            .attrs()
            .map(Result::unwrap)
            .filter(|a| a.id == attr::PROPERTY)
            .count() as u32;
        assert_eq!(kept + left_out, 100);
        assert_eq!(r.get_u32(attr::TRUNCATED), Some(left_out));
        // Every kept property is whole.
        for a in r
            .attrs()
            .map(Result::unwrap)
            .filter(|a| a.id == attr::PROPERTY)
        {
            assert_eq!(a.value.len(), "PROP_00=".len() + 60);
        }
    }

    #[test]
    fn attribute_kinds() {
        use AttrKind::*;
        for (id, kind) in [
            (attr::LOST_COUNT, U64),
            (attr::FIRST_LOST_SEQ, U64),
            (attr::LOST_TYPES, U64),
            (attr::OBJECT, Str),
            (attr::REASON, Str),
            (attr::TRUNCATED, U32),
            (attr::BACKEND, Str),
            (attr::MOUNT_ID, U64),
            (attr::PARENT_ID, U64),
            (attr::MAJOR, U32),
            (attr::MINOR, U32),
            (attr::ROOT, Str),
            (attr::MOUNT_POINT, Str),
            (attr::FS_TYPE, Str),
            (attr::SOURCE, Str),
            (attr::MOUNT_OPTIONS, Str),
            (attr::SUPER_OPTIONS, Str),
            (attr::PROPAGATION, Str),
            (attr::OLD_MOUNT_POINT, Str),
            (attr::MNT_NS, U64),
            (attr::CHANGED, U32),
            (attr::MOUNT_UNIQUE_ID, U64),
            (attr::PARENT_UNIQUE_ID, U64),
            (attr::ACTION, Str),
            (attr::SUBSYSTEM, Str),
            (attr::DEVTYPE, Str),
            (attr::SYSNAME, Str),
            (attr::SYSPATH, Str),
            (attr::DEVNODE, Str),
            (attr::DRIVER, Str),
            (attr::SEQNUM, U64),
            (attr::TAGS, Str),
            (attr::PROPERTY, Str),
            (attr::OLD_SYSPATH, Str),
            (attr::EVENT_SOURCE, Str),
            (attr::ERRNO, U32),
            (attr::ERRNO_NAME, Str),
            (attr::ERROR_COUNT, U32),
            (attr::ERRORS_TOTAL, U32),
            (attr::FIRST_ERROR_TIME, U64),
            (attr::FIRST_ERROR_AT, Str),
            (attr::LAST_ERROR_TIME, U64),
            (attr::LAST_ERROR_AT, Str),
        ] {
            assert_eq!(attr::kind(id), Some(kind), "attribute {id:#06x}");
        }
        assert_eq!(attr::kind(0), None);
    }
}
