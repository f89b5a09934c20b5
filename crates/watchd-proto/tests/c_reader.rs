//! The C side of the contract: `include/watchd.h` and `docs/examples/watchd-dump.c` must
//! read what this crate writes, and the header must agree with the crate's numbering.
//!
//! Needs a C compiler (`cc`); see `common` for what happens without one.

mod common;

use std::process::{Command, Output};

use common::{STRICT, compile_snippet, run, run_on_file, stdout_lines, watchd_dump};
use watchd_proto::{
    AttrKind, FLAG_SNAPSHOT, FLAG_TRUNCATED, HEADER_LEN, MAX_RECORD_LEN, RecordBuilder, RecordType,
    VERSION, attr, device, file, key, krb5, meta, mount, names, stamp, superblock,
};

const TIME: u64 = 1_767_225_600_123_456_789;

fn have_cc() -> bool {
    common::have("cc")
}

fn dump_file(name: &str, input: &[u8]) -> Output {
    run_on_file(watchd_dump(), name, input)
}

fn stamped(b: &RecordBuilder, tag: u64, seq: u64) -> Vec<u8> {
    let mut rec = b.clone().finish();
    stamp(&mut rec, tag, seq);
    rec
}

/// Records covering every attribute kind, META semantics, padding, unknown ids and an
/// unknown type, with the line watchd-dump must print for each.
fn sample() -> Vec<(Vec<u8>, &'static str)> {
    let mut out = Vec::new();

    let mut b = RecordBuilder::new(RecordType::Mount, mount::ATTACH, FLAG_SNAPSHOT, TIME);
    b.put_u64(attr::MOUNT_ID, 36)
        .unwrap()
        .put_u64(attr::PARENT_ID, 25)
        .unwrap()
        .put_u32(attr::MAJOR, 0)
        .unwrap()
        .put_u32(attr::MINOR, 44)
        .unwrap()
        .put_str(attr::ROOT, "/")
        .unwrap()
        .put_str(attr::MOUNT_POINT, "/mnt/data")
        .unwrap()
        .put_str(attr::FS_TYPE, "tmpfs")
        .unwrap()
        .put_str(attr::SOURCE, "tmpfs")
        .unwrap()
        .put_str(attr::MOUNT_OPTIONS, "rw,relatime")
        .unwrap()
        .put_str(attr::SUPER_OPTIONS, "rw,size=1024k")
        .unwrap()
        .put_str(attr::PROPAGATION, "shared:5")
        .unwrap()
        .put_u64(attr::MNT_NS, 4_026_531_841)
        .unwrap();
    out.push((
        stamped(&b, 7, 1),
        "seq=1 type=2 subtype=0 tag=7 flags=1 mount_id=36 parent_id=25 major=0 minor=44 \
         root=/ mount_point=/mnt/data fs_type=tmpfs source=tmpfs mount_options=rw,relatime \
         super_options=rw,size=1024k propagation=shared:5 mnt_ns=4026531841",
    ));

    let b = RecordBuilder::new(RecordType::Meta, meta::SYNC, 0, TIME);
    out.push((stamped(&b, 7, 2), "seq=2 type=0 subtype=2 tag=7 flags=0"));

    let mut b = RecordBuilder::new(RecordType::Meta, meta::LOSS, 0, TIME);
    b.put_u64(attr::LOST_COUNT, 6)
        .unwrap()
        .put_u64(attr::FIRST_LOST_SEQ, 3)
        .unwrap()
        .put_u64(
            attr::LOST_TYPES,
            RecordType::Mount.bit() | RecordType::Key.bit(),
        )
        .unwrap();
    out.push((
        stamped(&b, 0, 9),
        "seq=9 type=0 subtype=1 tag=0 flags=0 lost_count=6 first_lost_seq=3 lost_types=6",
    ));

    let mut b = RecordBuilder::new(RecordType::Mount, mount::CHANGE, 0, TIME);
    b.put_u64(attr::MOUNT_ID, 36)
        .unwrap()
        .put(0x7fff, &[0x01, 0x02, 0xff])
        .unwrap()
        .put(0x7ffe, &[])
        .unwrap()
        .put_u32(
            attr::CHANGED,
            mount::CHANGED_OPTIONS | mount::CHANGED_PROPAGATION,
        )
        .unwrap()
        .put_str(attr::PROPAGATION, "")
        .unwrap();
    out.push((
        stamped(&b, 7, 10),
        "seq=10 type=2 subtype=3 tag=7 flags=0 mount_id=36 attr32767=0102ff attr32766= \
         changed=5 propagation=",
    ));

    let mut b = RecordBuilder::new(RecordType::Mount, mount::MOVE, 0, TIME);
    b.put_u64(attr::MOUNT_ID, 36)
        .unwrap()
        .put_str(attr::MOUNT_POINT, "/srv/data")
        .unwrap()
        .put_str(attr::OLD_MOUNT_POINT, "/mnt/data")
        .unwrap();
    out.push((
        stamped(&b, 7, 11),
        "seq=11 type=2 subtype=2 tag=7 flags=0 mount_id=36 mount_point=/srv/data \
         old_mount_point=/mnt/data",
    ));

    let mut b = RecordBuilder::new(RecordType::Meta, meta::REMOVAL, 0, TIME);
    b.put_str(attr::OBJECT, "/srv/data")
        .unwrap()
        .put_str(attr::REASON, "unmounted")
        .unwrap();
    out.push((
        stamped(&b, 7, 12),
        "seq=12 type=0 subtype=0 tag=7 flags=0 object=/srv/data reason=unmounted",
    ));

    // A type and subtype from a later version, and a known id whose value has the wrong
    // size: both must be shown, not trusted.
    let mut b = RecordBuilder::new(RecordType::Device, 0, FLAG_TRUNCATED, TIME);
    b.put(attr::MAJOR, &[8, 0])
        .unwrap()
        .put_u32(attr::TRUNCATED, 2)
        .unwrap();
    let mut rec = stamped(&b, u64::MAX, 13);
    rec[4..8].copy_from_slice(&(0x0012_3456u32 | 0xff << 24).to_le_bytes());
    out.push((
        rec,
        "seq=13 type=1193046 subtype=255 tag=18446744073709551615 flags=2 attr18=0800 \
         truncated=2",
    ));

    // A device MOVE as the daemon lays it out: fixed attributes, then the repeated
    // PROPERTY attribute, each printed on its own (values may hold '=' and spaces).
    let mut b = RecordBuilder::new(RecordType::Device, device::MOVE, 0, TIME);
    b.put_str(attr::ACTION, "move")
        .unwrap()
        .put_str(attr::SUBSYSTEM, "net")
        .unwrap()
        .put_str(attr::SYSNAME, "enp0s3")
        .unwrap()
        .put_str(
            attr::SYSPATH,
            "/sys/devices/pci0000:00/0000:00:03.0/net/enp0s3",
        )
        .unwrap()
        .put_u64(attr::SEQNUM, 2210)
        .unwrap()
        .put_str(attr::EVENT_SOURCE, "udev")
        .unwrap()
        .put_str(attr::DRIVER, "e1000")
        .unwrap()
        .put_str(
            attr::OLD_SYSPATH,
            "/sys/devices/pci0000:00/0000:00:03.0/net/eth0",
        )
        .unwrap()
        .put_str(attr::PROPERTY, "INTERFACE=enp0s3")
        .unwrap()
        .put_str(attr::PROPERTY, "ID_MODEL_FROM_DATABASE=82540EM Gigabit")
        .unwrap()
        .put_str(attr::PROPERTY, "ID_NET_LINK_FILE=")
        .unwrap()
        .put_str(attr::PROPERTY, "X=a=b")
        .unwrap();
    out.push((
        stamped(&b, 2, 14),
        "seq=14 type=4 subtype=3 tag=2 flags=0 action=move subsystem=net sysname=enp0s3 \
         syspath=/sys/devices/pci0000:00/0000:00:03.0/net/enp0s3 seqnum=2210 \
         event_source=udev driver=e1000 \
         old_syspath=/sys/devices/pci0000:00/0000:00:03.0/net/eth0 \
         property=INTERFACE=enp0s3 property=ID_MODEL_FROM_DATABASE=82540EM Gigabit \
         property=ID_NET_LINK_FILE= property=X=a=b",
    ));

    // A truncated device ADD with a device number and tags.
    let mut b = RecordBuilder::new(RecordType::Device, device::ADD, FLAG_TRUNCATED, TIME);
    b.put_str(attr::ACTION, "add")
        .unwrap()
        .put_str(attr::SUBSYSTEM, "block")
        .unwrap()
        .put_str(attr::DEVTYPE, "disk")
        .unwrap()
        .put_str(attr::DEVNODE, "/dev/loop7")
        .unwrap()
        .put_u32(attr::MAJOR, 7)
        .unwrap()
        .put_u32(attr::MINOR, 7)
        .unwrap()
        .put_str(attr::TAGS, "systemd")
        .unwrap()
        .put_str(attr::PROPERTY, "DISKSEQ=12")
        .unwrap()
        .put_u32(attr::TRUNCATED, 40)
        .unwrap();
    out.push((
        stamped(&b, 2, 15),
        "seq=15 type=4 subtype=0 tag=2 flags=2 action=add subsystem=block devtype=disk \
         devnode=/dev/loop7 major=7 minor=7 tags=systemd property=DISKSEQ=12 truncated=40",
    ));

    out
}

fn concat(records: &[(Vec<u8>, &str)]) -> Vec<u8> {
    records
        .iter()
        .flat_map(|(rec, _)| rec.iter().copied())
        .collect()
}

#[test]
fn dump_prints_every_record() {
    if !have_cc() {
        return;
    }
    let records = sample();
    let expected: Vec<&str> = records.iter().map(|(_, line)| *line).collect();
    let input = concat(&records);

    assert_eq!(stdout_lines(&dump_file("sample.bin", &input)), expected);
    assert_eq!(stdout_lines(&run(watchd_dump(), &[], &input)), expected);
}

/// On a file, a 4096-byte read() ends inside a record; the rest must be carried over.
#[test]
fn dump_reads_records_split_across_reads() {
    if !have_cc() {
        return;
    }
    let mut input = Vec::new();
    let mut expected = Vec::new();
    for seq in 1..=9u64 {
        // Sizes chosen so record boundaries fall everywhere relative to 4096, up to a
        // full-size record.
        let size = match seq {
            9 => MAX_RECORD_LEN - HEADER_LEN - 4,
            _ => 1000 + 333 * seq as usize,
        };
        let source = "x".repeat(size);
        let mut b = RecordBuilder::new(RecordType::Mount, mount::ATTACH, 0, TIME);
        b.put_str(attr::SOURCE, &source).unwrap();
        input.extend(stamped(&b, 1, seq));
        expected.push(format!(
            "seq={seq} type=2 subtype=0 tag=1 flags=0 source={source}"
        ));
    }
    assert_eq!(stdout_lines(&dump_file("split.bin", &input)), expected);
    assert_eq!(stdout_lines(&run(watchd_dump(), &[], &input)), expected);
}

/// The real thing: an O_DIRECT pipe, where each read() returns exactly one packet.
#[test]
fn dump_reads_a_packet_pipe() {
    if !have_cc() {
        return;
    }
    // Writes each record of its stdin as one packet, then runs argv[1] on the read end.
    let feeder = compile_snippet(
        "packet-feeder",
        r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
#include "watchd.h"

static unsigned char in[1 << 20];

int main(int argc, char **argv)
{
    size_t n = fread(in, 1, sizeof in, stdin), pos = 0;
    int fds[2];
    pid_t pid;

    if (argc != 2 || pipe2(fds, O_DIRECT) != 0)
        return 2;
    pid = fork();
    if (pid == 0) {
        close(fds[0]);
        while (pos < n) {
            size_t len = watchd_le16(in + pos);
            if (write(fds[1], in + pos, len) != (ssize_t)len)
                _exit(3);
            pos += len;
        }
        _exit(0);
    }
    close(fds[1]);
    dup2(fds[0], 0);
    execv(argv[1], argv + 1);
    return 4;
}
"#,
        &["-std=c99", "-Wall", "-Wextra", "-Werror"],
    );
    let records = sample();
    let expected: Vec<&str> = records.iter().map(|(_, line)| *line).collect();
    let dump = watchd_dump().to_str().expect("UTF-8 path");
    let out = run(&feeder, &[dump], &concat(&records));
    assert_eq!(stdout_lines(&out), expected);
}

#[test]
fn dump_of_nothing_prints_nothing() {
    if !have_cc() {
        return;
    }
    let out = dump_file("empty.bin", &[]);
    assert!(out.status.success());
    assert!(out.stdout.is_empty() && out.stderr.is_empty());
}

#[test]
fn dump_stops_at_a_malformed_record() {
    if !have_cc() {
        return;
    }
    let good = sample().swap_remove(1).0; // SYNC: a bare 32-byte header
    let with_attr = sample().swap_remove(5).0; // REMOVAL, first attribute at byte 32

    let mut version = good.clone();
    version[2] = 2;
    let mut odd_len = good.clone();
    odd_len[0] = 34;
    odd_len.extend_from_slice(&[0, 0]);
    let mut small_len = good.clone();
    small_len[0] = 28;
    let mut big_len = good.clone();
    big_len[0..2].copy_from_slice(&4100u16.to_le_bytes());
    let mut bad_attr = with_attr.clone();
    bad_attr[32..34].copy_from_slice(&200u16.to_le_bytes());
    let mut zero_attr = with_attr.clone();
    zero_attr[32..34].copy_from_slice(&0u16.to_le_bytes());

    for (name, bad, message) in [
        ("version", version, "unsupported record version"),
        ("odd-len", odd_len, "impossible record length"),
        ("small-len", small_len, "impossible record length"),
        ("big-len", big_len, "impossible record length"),
        ("bad-attr", bad_attr, "malformed attribute"),
        ("zero-attr", zero_attr, "malformed attribute"),
        (
            "short-header",
            good[..20].to_vec(),
            "input ends after 20 of its bytes",
        ),
        (
            "short-record",
            with_attr[..40].to_vec(),
            "input ends after 40 of its bytes",
        ),
    ] {
        // Records before the bad one are still printed; the error names its offset.
        let input = [good.clone(), bad].concat();
        let out = dump_file(&format!("{name}.bin"), &input);
        assert_eq!(out.status.code(), Some(1), "{name}: {out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "seq=2 type=0 subtype=2 tag=7 flags=0\n",
            "{name}"
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.starts_with("watchd-dump: bad record at byte 32: ") && stderr.contains(message),
            "{name}: stderr {stderr:?} should mention {message:?}"
        );
    }
}

/// The header compiles on its own, pedantic C99, with nothing included before it.
#[test]
fn header_stands_alone() {
    if !have_cc() {
        return;
    }
    let bin = compile_snippet(
        "standalone",
        r#"#include "watchd.h"
#include "watchd.h" /* the include guard must make a second inclusion harmless */

int main(void)
{
    static const unsigned char rec[WATCHD_HEADER_LEN] = {WATCHD_HEADER_LEN, 0, WATCHD_VERSION};
    struct watchd_record_header h;

    watchd_header_decode(rec, &h);
    return watchd_record_validate(rec, sizeof rec) == 0 && h.len == WATCHD_HEADER_LEN &&
                   watchd_attr_first(rec) == NULL ? 0 : 1;
}
"#,
        &["-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror"],
    );
    let out = Command::new(bin).output().expect("run");
    assert!(out.status.success());
}

/// Every constant and name in watchd.h against the crate's, so neither can change alone.
#[test]
fn header_agrees_with_crate() {
    if !have_cc() {
        return;
    }
    let bin = compile_snippet(
        "agree",
        r#"#include <inttypes.h>
#include <stdio.h>
#include "watchd.h"

#define P(c) printf("%s %" PRIu64 "\n", #c, (uint64_t)(c))

int main(void)
{
    unsigned long id, t, s;
    static const char *const kinds[] = {"unknown", "u32", "u64", "str"};

    P(WATCHD_VERSION); P(WATCHD_HEADER_LEN); P(WATCHD_MAX_RECORD_LEN);
    P(WATCHD_ATTR_HEADER_LEN); P(WATCHD_FLAG_SNAPSHOT); P(WATCHD_FLAG_TRUNCATED);
    P(WATCHD_TYPE_META); P(WATCHD_TYPE_KEY); P(WATCHD_TYPE_MOUNT); P(WATCHD_TYPE_SUPERBLOCK);
    P(WATCHD_TYPE_DEVICE); P(WATCHD_TYPE_FILE); P(WATCHD_TYPE_KRB5);
    P(WATCHD_TYPE_BIT(WATCHD_TYPE_KRB5));
    P(WATCHD_META_REMOVAL); P(WATCHD_META_LOSS); P(WATCHD_META_SYNC);
    P(WATCHD_META_SOURCE_CHANGED);
    P(WATCHD_KEY_INSTANTIATED); P(WATCHD_KEY_UPDATED); P(WATCHD_KEY_LINKED);
    P(WATCHD_KEY_UNLINKED); P(WATCHD_KEY_CLEARED); P(WATCHD_KEY_REVOKED);
    P(WATCHD_KEY_INVALIDATED); P(WATCHD_KEY_SETATTR);
    P(WATCHD_KRB5_CREATED); P(WATCHD_KRB5_CHANGED); P(WATCHD_KRB5_PRIMARY);
    P(WATCHD_KRB5_DESTROYED);
    P(WATCHD_FILE_CREATE); P(WATCHD_FILE_DELETE); P(WATCHD_FILE_MODIFY); P(WATCHD_FILE_ATTRIB);
    P(WATCHD_FILE_CLOSE_WRITE); P(WATCHD_FILE_MOVED_FROM); P(WATCHD_FILE_MOVED_TO);
    P(WATCHD_FILE_RENAME);
    P(WATCHD_SUPERBLOCK_READONLY); P(WATCHD_SUPERBLOCK_ERROR); P(WATCHD_SUPERBLOCK_QUOTA);
    P(WATCHD_SUPERBLOCK_NETWORK); P(WATCHD_SUPERBLOCK_LOW); P(WATCHD_SUPERBLOCK_STILL_LOWER);
    P(WATCHD_SUPERBLOCK_RECOVERED); P(WATCHD_SUPERBLOCK_QUOTA_LOW);
    P(WATCHD_SUPERBLOCK_QUOTA_STILL_LOWER); P(WATCHD_SUPERBLOCK_QUOTA_RECOVERED);
    P(WATCHD_MOUNT_ATTACH); P(WATCHD_MOUNT_DETACH); P(WATCHD_MOUNT_MOVE); P(WATCHD_MOUNT_CHANGE);
    P(WATCHD_DEVICE_ADD); P(WATCHD_DEVICE_REMOVE); P(WATCHD_DEVICE_CHANGE); P(WATCHD_DEVICE_MOVE);
    P(WATCHD_DEVICE_ONLINE); P(WATCHD_DEVICE_OFFLINE); P(WATCHD_DEVICE_BIND);
    P(WATCHD_DEVICE_UNBIND);
    P(WATCHD_MOUNT_CHANGED_OPTIONS); P(WATCHD_MOUNT_CHANGED_SUPER_OPTIONS);
    P(WATCHD_MOUNT_CHANGED_PROPAGATION); P(WATCHD_MOUNT_CHANGED_PARENT);
    P(WATCHD_ATTR_LOST_COUNT); P(WATCHD_ATTR_FIRST_LOST_SEQ); P(WATCHD_ATTR_LOST_TYPES);
    P(WATCHD_ATTR_OBJECT); P(WATCHD_ATTR_REASON); P(WATCHD_ATTR_TRUNCATED);
    P(WATCHD_ATTR_BACKEND);
    P(WATCHD_ATTR_MOUNT_ID); P(WATCHD_ATTR_PARENT_ID); P(WATCHD_ATTR_MAJOR); P(WATCHD_ATTR_MINOR);
    P(WATCHD_ATTR_ROOT); P(WATCHD_ATTR_MOUNT_POINT); P(WATCHD_ATTR_FS_TYPE); P(WATCHD_ATTR_SOURCE);
    P(WATCHD_ATTR_MOUNT_OPTIONS); P(WATCHD_ATTR_SUPER_OPTIONS); P(WATCHD_ATTR_PROPAGATION);
    P(WATCHD_ATTR_OLD_MOUNT_POINT); P(WATCHD_ATTR_MNT_NS); P(WATCHD_ATTR_CHANGED);
    P(WATCHD_ATTR_MOUNT_UNIQUE_ID); P(WATCHD_ATTR_PARENT_UNIQUE_ID);
    P(WATCHD_ATTR_ACTION); P(WATCHD_ATTR_SUBSYSTEM); P(WATCHD_ATTR_DEVTYPE); P(WATCHD_ATTR_SYSNAME);
    P(WATCHD_ATTR_SYSPATH); P(WATCHD_ATTR_DEVNODE); P(WATCHD_ATTR_DRIVER); P(WATCHD_ATTR_SEQNUM);
    P(WATCHD_ATTR_TAGS); P(WATCHD_ATTR_PROPERTY); P(WATCHD_ATTR_OLD_SYSPATH);
    P(WATCHD_ATTR_EVENT_SOURCE);
    P(WATCHD_ATTR_KEY_ID); P(WATCHD_ATTR_AUX); P(WATCHD_ATTR_KEY_TYPE);
    P(WATCHD_ATTR_DESCRIPTION); P(WATCHD_ATTR_KEY_UID); P(WATCHD_ATTR_KEY_GID);
    P(WATCHD_ATTR_PERM); P(WATCHD_ATTR_WATCHED_KEY);
    P(WATCHD_ATTR_CACHE); P(WATCHD_ATTR_PRINCIPAL); P(WATCHD_ATTR_COLLECTION);
    P(WATCHD_ATTR_NAME); P(WATCHD_ATTR_OLD_NAME); P(WATCHD_ATTR_HANDLE);
    P(WATCHD_ATTR_HANDLE_TYPE); P(WATCHD_ATTR_FSID); P(WATCHD_ATTR_INODE); P(WATCHD_ATTR_IS_DIR);
    P(WATCHD_ATTR_MOUNTED_ON);
    P(WATCHD_ATTR_ERRNO); P(WATCHD_ATTR_ERRNO_NAME); P(WATCHD_ATTR_ERROR_COUNT);
    P(WATCHD_ATTR_ERRORS_TOTAL); P(WATCHD_ATTR_FIRST_ERROR_TIME); P(WATCHD_ATTR_FIRST_ERROR_AT);
    P(WATCHD_ATTR_LAST_ERROR_TIME); P(WATCHD_ATTR_LAST_ERROR_AT);
    P(WATCHD_ATTR_FREE_BYTES); P(WATCHD_ATTR_AVAIL_BYTES); P(WATCHD_ATTR_TOTAL_BYTES);
    P(WATCHD_ATTR_FREE_INODES); P(WATCHD_ATTR_TOTAL_INODES); P(WATCHD_ATTR_RESOURCE);
    P(WATCHD_ATTR_THRESHOLD); P(WATCHD_ATTR_MARGIN);
    P(WATCHD_ATTR_QUOTA_TYPE); P(WATCHD_ATTR_QUOTA_ID); P(WATCHD_ATTR_QUOTA_WARNING);
    P(WATCHD_ATTR_QUOTA_WARNING_NAME); P(WATCHD_ATTR_QUOTA_CAUSED_BY);
    P(WATCHD_ATTR_QUOTA_USED); P(WATCHD_ATTR_QUOTA_SOFT_LIMIT); P(WATCHD_ATTR_QUOTA_HARD_LIMIT);
    P(WATCHD_ATTR_QUOTA_ROOM); P(WATCHD_ATTR_QUOTA_GRACE_ENDS);

    for (id = 0; id <= 0xffff; id++) {
        const char *name = watchd_attr_name((uint16_t)id);
        enum watchd_attr_kind kind = watchd_attr_kind((uint16_t)id);
        if (name || kind)
            printf("attr %lu %s %s\n", id, name ? name : "-", kinds[kind]);
    }
    for (t = 0; t < 256; t++) {
        if (watchd_type_name((uint32_t)t))
            printf("type %lu %s\n", t, watchd_type_name((uint32_t)t));
        for (s = 0; s < 256; s++)
            if (watchd_subtype_name((uint32_t)t, (uint8_t)s))
                printf("subtype %lu %lu %s\n", t, s, watchd_subtype_name((uint32_t)t, (uint8_t)s));
    }
    return 0;
}
"#,
        STRICT,
    );
    let out = Command::new(bin).output().expect("run");
    assert!(out.status.success());
    let got = String::from_utf8(out.stdout).expect("UTF-8");

    let mut want = String::new();
    let mut p = |name: &str, value: u64| want.push_str(&format!("WATCHD_{name} {value}\n"));
    p("VERSION", VERSION.into());
    p("HEADER_LEN", HEADER_LEN as u64);
    p("MAX_RECORD_LEN", MAX_RECORD_LEN as u64);
    p("ATTR_HEADER_LEN", watchd_proto::ATTR_HEADER_LEN as u64);
    p("FLAG_SNAPSHOT", FLAG_SNAPSHOT.into());
    p("FLAG_TRUNCATED", FLAG_TRUNCATED.into());
    for t in RecordType::ALL {
        let name = names::record_type(t as u32).unwrap().to_uppercase();
        p(&format!("TYPE_{name}"), t as u64);
    }
    p("TYPE_BIT(WATCHD_TYPE_KRB5)", RecordType::Krb5.bit());
    for (t, subtypes) in [
        (
            RecordType::Meta,
            &[meta::REMOVAL, meta::LOSS, meta::SYNC, meta::SOURCE_CHANGED][..],
        ),
        (
            RecordType::Key,
            &[
                key::INSTANTIATED,
                key::UPDATED,
                key::LINKED,
                key::UNLINKED,
                key::CLEARED,
                key::REVOKED,
                key::INVALIDATED,
                key::SETATTR,
            ],
        ),
        (
            RecordType::Krb5,
            &[krb5::CREATED, krb5::CHANGED, krb5::PRIMARY, krb5::DESTROYED],
        ),
        (
            RecordType::File,
            &[
                file::CREATE,
                file::DELETE,
                file::MODIFY,
                file::ATTRIB,
                file::CLOSE_WRITE,
                file::MOVED_FROM,
                file::MOVED_TO,
                file::RENAME,
            ],
        ),
        (
            RecordType::Superblock,
            &[
                superblock::READONLY,
                superblock::ERROR,
                superblock::QUOTA,
                superblock::NETWORK,
                superblock::SPACE_LOW,
                superblock::SPACE_STILL_LOWER,
                superblock::SPACE_RECOVERED,
                superblock::QUOTA_LOW,
                superblock::QUOTA_STILL_LOWER,
                superblock::QUOTA_RECOVERED,
            ],
        ),
        (
            RecordType::Mount,
            &[mount::ATTACH, mount::DETACH, mount::MOVE, mount::CHANGE],
        ),
        (
            RecordType::Device,
            &[
                device::ADD,
                device::REMOVE,
                device::CHANGE,
                device::MOVE,
                device::ONLINE,
                device::OFFLINE,
                device::BIND,
                device::UNBIND,
            ],
        ),
    ] {
        let type_name = names::record_type(t as u32).unwrap().to_uppercase();
        for &s in subtypes {
            let name = names::subtype(t as u32, s).unwrap().to_uppercase();
            p(&format!("{type_name}_{name}"), s.into());
        }
    }
    p("MOUNT_CHANGED_OPTIONS", mount::CHANGED_OPTIONS.into());
    p(
        "MOUNT_CHANGED_SUPER_OPTIONS",
        mount::CHANGED_SUPER_OPTIONS.into(),
    );
    p(
        "MOUNT_CHANGED_PROPAGATION",
        mount::CHANGED_PROPAGATION.into(),
    );
    p("MOUNT_CHANGED_PARENT", mount::CHANGED_PARENT.into());
    let known: Vec<u16> = (0..=u16::MAX)
        .filter(|&id| names::attribute(id).is_some())
        .collect();
    for &id in &known {
        let name = names::attribute(id).unwrap().to_uppercase();
        p(&format!("ATTR_{name}"), id.into());
    }
    for id in 0..=u16::MAX {
        let name = names::attribute(id);
        let kind = attr::kind(id);
        if name.is_some() || kind.is_some() {
            let kind = match kind {
                None => "unknown",
                Some(AttrKind::U32) => "u32",
                Some(AttrKind::U64) => "u64",
                Some(AttrKind::Str) => "str",
            };
            want.push_str(&format!("attr {id} {} {kind}\n", name.unwrap_or("-")));
        }
    }
    for t in 0..256u32 {
        if let Some(name) = names::record_type(t) {
            want.push_str(&format!("type {t} {name}\n"));
        }
        for s in 0..=u8::MAX {
            if let Some(name) = names::subtype(t, s) {
                want.push_str(&format!("subtype {t} {s} {name}\n"));
            }
        }
    }

    let got: Vec<&str> = got.lines().collect();
    let want: Vec<&str> = want.lines().collect();
    assert_eq!(got, want);
}

/// watchd_attr_find_next() walks a repeated attribute in order, past other ids.
#[test]
fn header_walks_a_repeated_attribute() {
    if !have_cc() {
        return;
    }
    let bin = compile_snippet(
        "repeated",
        r#"#include <stdio.h>
#include "watchd.h"

int main(void)
{
    static unsigned char buf[WATCHD_MAX_RECORD_LEN];
    size_t n = fread(buf, 1, sizeof buf, stdin);
    const unsigned char *a;

    if (watchd_record_validate(buf, n) != 0)
        return 1;
    for (a = watchd_attr_find(buf, WATCHD_ATTR_PROPERTY); a != NULL;
         a = watchd_attr_find_next(buf, a, WATCHD_ATTR_PROPERTY))
        printf("%.*s\n", (int)watchd_attr_value_len(a), (const char *)watchd_attr_value(a));
    return 0;
}
"#,
        STRICT,
    );
    let mut b = RecordBuilder::new(RecordType::Device, device::CHANGE, 0, TIME);
    b.put_str(attr::PROPERTY, "A=1")
        .unwrap()
        .put_str(attr::SUBSYSTEM, "block")
        .unwrap()
        .put_str(attr::PROPERTY, "B=")
        .unwrap()
        .put(0x7fff, b"x")
        .unwrap()
        .put_str(attr::PROPERTY, "C=3=3")
        .unwrap()
        .put_u64(attr::SEQNUM, 1)
        .unwrap();
    assert_eq!(
        stdout_lines(&run(&bin, &[], &stamped(&b, 1, 1))),
        ["A=1", "B=", "C=3=3"]
    );
    // None at all: the loop does not run.
    let b = RecordBuilder::new(RecordType::Device, device::CHANGE, 0, TIME);
    assert!(stdout_lines(&run(&bin, &[], &stamped(&b, 1, 2))).is_empty());
}

/// watchd_record_validate() classifies bad packets as Record::parse does.
#[test]
fn header_validates_like_crate() {
    if !have_cc() {
        return;
    }
    let bin = compile_snippet(
        "validate",
        r#"#include <stdio.h>
#include "watchd.h"

int main(void)
{
    static unsigned char buf[70000];
    size_t n = fread(buf, 1, sizeof buf, stdin);

    switch (watchd_record_validate(buf, n)) {
    case 0: puts("ok"); break;
    case -ENODATA: puts("ENODATA"); break;
    case -EBADMSG: puts("EBADMSG"); break;
    case -EPROTONOSUPPORT: puts("EPROTONOSUPPORT"); break;
    case -EINVAL: puts("EINVAL"); break;
    case -EMSGSIZE: puts("EMSGSIZE"); break;
    case -EPROTO: puts("EPROTO"); break;
    default: puts("other"); break;
    }
    return 0;
}
"#,
        STRICT,
    );
    use watchd_proto::{DecodeError, Record};
    let errno = |e: Option<DecodeError>| match e {
        None => "ok",
        Some(DecodeError::Empty) => "ENODATA",
        Some(DecodeError::Truncated { .. }) => "EBADMSG",
        Some(DecodeError::UnsupportedVersion(_)) => "EPROTONOSUPPORT",
        Some(DecodeError::BadLength(_)) => "EINVAL",
        Some(DecodeError::Oversized { .. }) => "EMSGSIZE",
        Some(DecodeError::BadAttribute { .. }) => "EPROTO",
    };

    let records = sample();
    let good = records[3].0.clone(); // mount CHANGE with several attributes
    let mut cases: Vec<Vec<u8>> = records.into_iter().map(|(r, _)| r).collect();
    cases.push(Vec::new());
    cases.push(good[..31].to_vec());
    cases.push(good[..good.len() - 4].to_vec());
    cases.push([good.clone(), vec![0; 4]].concat());
    cases.push([good.clone(), good.clone()].concat());
    for (at, value) in [
        (0usize, 30u16),
        (0, 33),
        (0, 4100),
        (0, 0xfffc),
        (2, 0),
        (2, 2),
        (32, 0),
        (32, 3),
        (32, 200),
        (44, 100),
    ] {
        let mut bad = good.clone();
        if at == 2 {
            bad[2] = value as u8;
        } else {
            bad[at..at + 2].copy_from_slice(&value.to_le_bytes());
        }
        cases.push(bad);
    }
    let mut full = vec![0; MAX_RECORD_LEN];
    full[..HEADER_LEN].copy_from_slice(&good[..HEADER_LEN]);
    full[0..2].copy_from_slice(&(MAX_RECORD_LEN as u16).to_le_bytes());
    full[32..34].copy_from_slice(&((MAX_RECORD_LEN - HEADER_LEN) as u16).to_le_bytes());
    cases.push(full.clone());
    cases.push([full, vec![0; 4]].concat());

    for (i, case) in cases.iter().enumerate() {
        let want = errno(Record::parse(case).err());
        let out = run(&bin, &[], case);
        let got = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            got.trim(),
            want,
            "case {i}: {:?}",
            Record::parse(case).err()
        );
    }
}
