/*
 * watchd.h - the watchd wire format, for C readers.
 *
 * docs/protocol.md is the contract; this header is its C form and must agree with it and
 * with the watchd-proto crate. Each read() of 4096 bytes from a subscription pipe returns
 * one record: a 32-byte header followed by attributes (u16 len, u16 id, value, zero
 * padding to 4 bytes). Everything is little-endian.
 *
 * The helpers decode byte by byte, so they work on a plain unsigned char buffer of any
 * alignment and on any host byte order, without breaking C's aliasing rules.
 *
 * Typical use:
 *
 *     unsigned char buf[WATCHD_MAX_RECORD_LEN];
 *     ssize_t n = read(fd, buf, sizeof buf);      // 0: the subscription has ended
 *     struct watchd_record_header h;
 *     const unsigned char *a;
 *     if (n < 0 || watchd_record_validate(buf, (size_t)n) != 0) ... stop ...
 *     watchd_header_decode(buf, &h);
 *     WATCHD_ATTR_FOREACH(a, buf) {
 *         switch (watchd_attr_id(a)) { ... default: break;  // skip unknown ids }
 *     }
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#ifndef WATCHD_H
#define WATCHD_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Sizes -------------------------------------------------------------------------- */

#define WATCHD_VERSION 1             /* the only version this header can read */
#define WATCHD_HEADER_LEN 32         /* fixed header */
#define WATCHD_MAX_RECORD_LEN 4096   /* one packet; read() with a buffer this big */
#define WATCHD_ATTR_HEADER_LEN 4     /* u16 len + u16 id */

/* ---- Header flags ------------------------------------------------------------------- */

#define WATCHD_FLAG_SNAPSHOT 0x01u  /* initial state, not a change */
#define WATCHD_FLAG_TRUNCATED 0x02u /* attributes left out; WATCHD_ATTR_TRUNCATED says how many */

/* ---- Record types (low 24 bits of the type word) ------------------------------------ */

#define WATCHD_TYPE_META 0u
#define WATCHD_TYPE_KEY 1u
#define WATCHD_TYPE_MOUNT 2u
#define WATCHD_TYPE_SUPERBLOCK 3u
#define WATCHD_TYPE_DEVICE 4u
#define WATCHD_TYPE_FILE 5u
#define WATCHD_TYPE_KRB5 6u

/* Bit of a type in WATCHD_ATTR_LOST_TYPES. */
#define WATCHD_TYPE_BIT(type) ((uint64_t)1 << (type))

/* ---- Subtypes (high 8 bits of the type word) ---------------------------------------- */

/* WATCHD_TYPE_META */
#define WATCHD_META_REMOVAL 0u /* watched object gone or access revoked; the watch has ended */
#define WATCHD_META_LOSS 1u    /* records were dropped because the pipe was full */
#define WATCHD_META_SYNC 2u    /* initial state for this tag has been sent in full */
#define WATCHD_META_SOURCE_CHANGED 3u /* events now come another way (WATCHD_ATTR_BACKEND) */

/* WATCHD_TYPE_KEY: the kernel's enum key_notification_subtype */
#define WATCHD_KEY_INSTANTIATED 0u
#define WATCHD_KEY_UPDATED 1u
#define WATCHD_KEY_LINKED 2u
#define WATCHD_KEY_UNLINKED 3u
#define WATCHD_KEY_CLEARED 4u
#define WATCHD_KEY_REVOKED 5u
#define WATCHD_KEY_INVALIDATED 6u
#define WATCHD_KEY_SETATTR 7u

/* WATCHD_TYPE_KRB5: what happened to a Kerberos credential cache */
#define WATCHD_KRB5_CREATED 0u   /* a cache appeared (kinit into a new cache) */
#define WATCHD_KRB5_CHANGED 1u   /* its credentials changed (kinit again, kinit -R) */
#define WATCHD_KRB5_PRIMARY 2u   /* it became the collection's primary cache (kswitch) */
#define WATCHD_KRB5_DESTROYED 3u /* it went away (kdestroy) */

/* WATCHD_TYPE_FILE: what happened under a watched path (one kernel event may give several) */
#define WATCHD_FILE_CREATE 0u      /* a name was created */
#define WATCHD_FILE_DELETE 1u      /* a name was removed */
#define WATCHD_FILE_MODIFY 2u      /* a file's contents were written */
#define WATCHD_FILE_ATTRIB 3u      /* metadata changed (mode, owner, times, links, xattrs) */
#define WATCHD_FILE_CLOSE_WRITE 4u /* a file opened for writing was closed */
#define WATCHD_FILE_MOVED_FROM 5u  /* a name was moved out of the watch */
#define WATCHD_FILE_MOVED_TO 6u    /* a name was moved into the watch */
#define WATCHD_FILE_RENAME 7u      /* moved within the watch: OLD_NAME to NAME */

/* WATCHD_TYPE_SUPERBLOCK: 0 to 3 are the kernel's proposed NOTIFY_SUPERBLOCK_* numbers */
#define WATCHD_SUPERBLOCK_READONLY 0u          /* reserved: not sent by this version */
#define WATCHD_SUPERBLOCK_ERROR 1u             /* the filesystem reported an error */
#define WATCHD_SUPERBLOCK_QUOTA 2u             /* a quota warning */
#define WATCHD_SUPERBLOCK_NETWORK 3u           /* reserved: not sent by this version */
#define WATCHD_SUPERBLOCK_LOW 4u               /* free space fell below the threshold */
#define WATCHD_SUPERBLOCK_STILL_LOWER 5u       /* fell a further step */
#define WATCHD_SUPERBLOCK_RECOVERED 6u         /* back above the threshold */
#define WATCHD_SUPERBLOCK_QUOTA_LOW 7u         /* room before EDQUOT fell below the threshold */
#define WATCHD_SUPERBLOCK_QUOTA_STILL_LOWER 8u /* fell a further step */
#define WATCHD_SUPERBLOCK_QUOTA_RECOVERED 9u   /* back above the threshold */

/* WATCHD_TYPE_MOUNT */
#define WATCHD_MOUNT_ATTACH 0u
#define WATCHD_MOUNT_DETACH 1u
#define WATCHD_MOUNT_MOVE 2u
#define WATCHD_MOUNT_CHANGE 3u

/* WATCHD_TYPE_DEVICE: the uevent actions (WATCHD_ATTR_ACTION holds the same as text) */
#define WATCHD_DEVICE_ADD 0u
#define WATCHD_DEVICE_REMOVE 1u
#define WATCHD_DEVICE_CHANGE 2u
#define WATCHD_DEVICE_MOVE 3u
#define WATCHD_DEVICE_ONLINE 4u
#define WATCHD_DEVICE_OFFLINE 5u
#define WATCHD_DEVICE_BIND 6u
#define WATCHD_DEVICE_UNBIND 7u

/* Bits of WATCHD_ATTR_CHANGED: CHANGE records, and MOVE when more than the place changed. */
#define WATCHD_MOUNT_CHANGED_OPTIONS 0x1u
#define WATCHD_MOUNT_CHANGED_SUPER_OPTIONS 0x2u
#define WATCHD_MOUNT_CHANGED_PROPAGATION 0x4u
#define WATCHD_MOUNT_CHANGED_PARENT 0x8u

/* ---- Attribute ids (one numbering for all record types) ----------------------------- */

/* META, 0x0001..0x000f */
#define WATCHD_ATTR_LOST_COUNT 0x0001u     /* u64 */
#define WATCHD_ATTR_FIRST_LOST_SEQ 0x0002u /* u64 */
#define WATCHD_ATTR_LOST_TYPES 0x0003u     /* u64, WATCHD_TYPE_BIT() set */
#define WATCHD_ATTR_OBJECT 0x0004u         /* str */
#define WATCHD_ATTR_REASON 0x0005u         /* str */
#define WATCHD_ATTR_TRUNCATED 0x0006u      /* u32 */
#define WATCHD_ATTR_BACKEND 0x0007u        /* str, SOURCE_CHANGED: e.g. "udev", "kernel" */

/* Mounts, 0x0010..0x003f */
#define WATCHD_ATTR_MOUNT_ID 0x0010u        /* u64 */
#define WATCHD_ATTR_PARENT_ID 0x0011u       /* u64 */
#define WATCHD_ATTR_MAJOR 0x0012u           /* u32 */
#define WATCHD_ATTR_MINOR 0x0013u           /* u32 */
#define WATCHD_ATTR_ROOT 0x0014u            /* str */
#define WATCHD_ATTR_MOUNT_POINT 0x0015u     /* str */
#define WATCHD_ATTR_FS_TYPE 0x0016u         /* str */
#define WATCHD_ATTR_SOURCE 0x0017u          /* str */
#define WATCHD_ATTR_MOUNT_OPTIONS 0x0018u   /* str */
#define WATCHD_ATTR_SUPER_OPTIONS 0x0019u   /* str */
#define WATCHD_ATTR_PROPAGATION 0x001au     /* str */
#define WATCHD_ATTR_OLD_MOUNT_POINT 0x001bu /* str */
#define WATCHD_ATTR_MNT_NS 0x001cu          /* u64 */
#define WATCHD_ATTR_CHANGED 0x001du         /* u32, WATCHD_MOUNT_CHANGED_* */
#define WATCHD_ATTR_MOUNT_UNIQUE_ID 0x001eu  /* u64, the kernel's 64-bit mount id (statmount) */
#define WATCHD_ATTR_PARENT_UNIQUE_ID 0x001fu /* u64, the parent's 64-bit mount id */

/* Devices, 0x0040..0x005f (they use WATCHD_ATTR_MAJOR and WATCHD_ATTR_MINOR too) */
#define WATCHD_ATTR_ACTION 0x0040u       /* str, e.g. "add" */
#define WATCHD_ATTR_SUBSYSTEM 0x0041u    /* str, e.g. "block" */
#define WATCHD_ATTR_DEVTYPE 0x0042u      /* str, e.g. "partition" */
#define WATCHD_ATTR_SYSNAME 0x0043u      /* str, e.g. "sda1" */
#define WATCHD_ATTR_SYSPATH 0x0044u      /* str, e.g. "/sys/devices/virtual/block/loop0" */
#define WATCHD_ATTR_DEVNODE 0x0045u      /* str, e.g. "/dev/sda1" */
#define WATCHD_ATTR_DRIVER 0x0046u       /* str */
#define WATCHD_ATTR_SEQNUM 0x0047u       /* u64, the kernel's uevent sequence number */
#define WATCHD_ATTR_TAGS 0x0048u         /* str, udev tags joined by ':' */
#define WATCHD_ATTR_PROPERTY 0x0049u     /* str "KEY=VALUE", REPEATED: one per property */
#define WATCHD_ATTR_OLD_SYSPATH 0x004au  /* str, MOVE */
#define WATCHD_ATTR_EVENT_SOURCE 0x004bu /* str, "udev" or "kernel" */

/* Keys, 0x0060..0x006f */
#define WATCHD_ATTR_KEY_ID 0x0060u      /* u32, the key's serial (LINKED, UNLINKED: the keyring's) */
#define WATCHD_ATTR_AUX 0x0061u         /* u32, LINKED, UNLINKED: the serial of the key */
#define WATCHD_ATTR_KEY_TYPE 0x0062u    /* str, e.g. "keyring", "user" */
#define WATCHD_ATTR_DESCRIPTION 0x0063u /* str, e.g. "krb_ccache:primary" */
#define WATCHD_ATTR_KEY_UID 0x0064u     /* u32, the key's owner */
#define WATCHD_ATTR_KEY_GID 0x0065u     /* u32, the key's group */
#define WATCHD_ATTR_PERM 0x0066u        /* u32, possessor/user/group/other bytes, high to low */
#define WATCHD_ATTR_WATCHED_KEY 0x0067u /* u32, the watched key or keyring it was found under */

/* Kerberos credential caches, 0x0070..0x007f */
#define WATCHD_ATTR_CACHE 0x0070u      /* str, e.g. "KEYRING:persistent:1000:krb_ccache_AbCd" */
#define WATCHD_ATTR_PRINCIPAL 0x0071u  /* str, e.g. "alice@EXAMPLE.ORG"; empty if unknown */
#define WATCHD_ATTR_COLLECTION 0x0072u /* str, the watched cache or collection, as named */

/* Files, 0x0080..0x008f (they use WATCHD_ATTR_MAJOR and WATCHD_ATTR_MINOR too) */
#define WATCHD_ATTR_NAME 0x0080u        /* str, relative to the watched path; "" = itself */
#define WATCHD_ATTR_OLD_NAME 0x0081u    /* str, RENAME: the name before */
#define WATCHD_ATTR_HANDLE 0x0082u      /* str, the file handle's bytes in hex */
#define WATCHD_ATTR_HANDLE_TYPE 0x0083u /* u32, the file handle's type */
#define WATCHD_ATTR_FSID 0x0084u        /* u64, statfs f_fsid, val[0] in the low half */
#define WATCHD_ATTR_INODE 0x0085u       /* u64, while the object still exists */
#define WATCHD_ATTR_IS_DIR 0x0086u      /* u32, 1 for a directory */
/* superblock records */
#define WATCHD_ATTR_MOUNTED_ON 0x0090u /* str, repeated: a mount point in your namespace */
/* filesystem errors (superblock ERROR), 0x0098..0x009f */
#define WATCHD_ATTR_ERRNO 0x0098u            /* u32, e.g. 117 (EUCLEAN) */
#define WATCHD_ATTR_ERRNO_NAME 0x0099u       /* str, e.g. "EUCLEAN" */
#define WATCHD_ATTR_ERROR_COUNT 0x009au      /* u32, errors this record reports */
#define WATCHD_ATTR_ERRORS_TOTAL 0x009bu     /* u32, the filesystem's own count */
#define WATCHD_ATTR_FIRST_ERROR_TIME 0x009cu /* u64, seconds since the epoch */
#define WATCHD_ATTR_FIRST_ERROR_AT 0x009du   /* str, "function:line" */
#define WATCHD_ATTR_LAST_ERROR_TIME 0x009eu  /* u64, seconds since the epoch */
#define WATCHD_ATTR_LAST_ERROR_AT 0x009fu    /* str, "function:line" */
/* quota warnings (WATCHD_SUPERBLOCK_QUOTA), 0x00b0..0x00bf */
#define WATCHD_ATTR_QUOTA_TYPE 0x00b0u         /* u32, 0 user, 1 group, 2 project */
#define WATCHD_ATTR_QUOTA_ID 0x00b1u           /* u64, the uid, gid or project id */
#define WATCHD_ATTR_QUOTA_WARNING 0x00b2u      /* u32, the kernel's QUOTA_NL_* number, 1..10 */
#define WATCHD_ATTR_QUOTA_WARNING_NAME 0x00b3u /* str, e.g. "block_soft_exceeded" */
#define WATCHD_ATTR_QUOTA_CAUSED_BY 0x00b4u    /* u64, only your own uid (or an all watch) */
/* quota usage (WATCHD_SUPERBLOCK_QUOTA_LOW..QUOTA_RECOVERED), in the resource's unit */
#define WATCHD_ATTR_QUOTA_USED 0x00b5u         /* u64, bytes or inodes used */
#define WATCHD_ATTR_QUOTA_SOFT_LIMIT 0x00b6u   /* u64, 0: none */
#define WATCHD_ATTR_QUOTA_HARD_LIMIT 0x00b7u   /* u64, 0: none */
#define WATCHD_ATTR_QUOTA_ROOM 0x00b8u         /* u64, what may still be used before EDQUOT */
#define WATCHD_ATTR_QUOTA_GRACE_ENDS 0x00b9u   /* u64, seconds since the epoch, over soft only */
/* free space, 0x00a0..0x00af (superblock LOW, STILL_LOWER, RECOVERED) */
#define WATCHD_ATTR_FREE_BYTES 0x00a0u   /* u64, f_bfree * f_frsize */
#define WATCHD_ATTR_AVAIL_BYTES 0x00a1u  /* u64, f_bavail * f_frsize: what is compared */
#define WATCHD_ATTR_TOTAL_BYTES 0x00a2u  /* u64, f_blocks * f_frsize */
#define WATCHD_ATTR_FREE_INODES 0x00a3u  /* u64, f_ffree */
#define WATCHD_ATTR_TOTAL_INODES 0x00a4u /* u64, f_files */
#define WATCHD_ATTR_RESOURCE 0x00a5u     /* str, "space" or "inodes" */
#define WATCHD_ATTR_THRESHOLD 0x00a6u    /* u64, the watch's line (bytes or inodes) */
#define WATCHD_ATTR_MARGIN 0x00a7u       /* u64, hysteresis and step (bytes or inodes) */

/* ---- Layouts ------------------------------------------------------------------------ */

/*
 * The fixed header. Natural alignment already gives the wire offsets, so no packing
 * attribute is needed; on a little-endian host memcpy() of the first 32 bytes into this
 * struct is equivalent to watchd_header_decode().
 */
struct watchd_record_header {
	uint16_t len;          /* whole record in bytes, header included; multiple of 4 */
	uint8_t version;       /* WATCHD_VERSION */
	uint8_t flags;         /* WATCHD_FLAG_* */
	uint32_t type_subtype; /* type in bits 0..23, subtype in bits 24..31 */
	uint64_t tag;          /* the subscriber's tag of the matching watch; 0 for pipe-wide META */
	uint64_t seq;          /* per subscription, from 1; a gap means records were lost */
	uint64_t time_ns;      /* CLOCK_REALTIME, nanoseconds */
};

/* An attribute's own header; the value follows, then zero padding to 4 bytes. */
struct watchd_attr {
	uint16_t len; /* 4 + value length, padding not included */
	uint16_t id;  /* WATCHD_ATTR_* or an id this reader does not know (skip it) */
};

/*
 * Compile-time layout checks. C99 has no _Static_assert, so a negative array size is the
 * portable way to fail the build.
 */
#define WATCHD_LAYOUT_CHECK(name, cond) typedef char watchd_layout_check_##name[(cond) ? 1 : -1]
WATCHD_LAYOUT_CHECK(header_size, sizeof(struct watchd_record_header) == WATCHD_HEADER_LEN);
WATCHD_LAYOUT_CHECK(len_at_0, offsetof(struct watchd_record_header, len) == 0);
WATCHD_LAYOUT_CHECK(version_at_2, offsetof(struct watchd_record_header, version) == 2);
WATCHD_LAYOUT_CHECK(flags_at_3, offsetof(struct watchd_record_header, flags) == 3);
WATCHD_LAYOUT_CHECK(type_at_4, offsetof(struct watchd_record_header, type_subtype) == 4);
WATCHD_LAYOUT_CHECK(tag_at_8, offsetof(struct watchd_record_header, tag) == 8);
WATCHD_LAYOUT_CHECK(seq_at_16, offsetof(struct watchd_record_header, seq) == 16);
WATCHD_LAYOUT_CHECK(time_at_24, offsetof(struct watchd_record_header, time_ns) == 24);
WATCHD_LAYOUT_CHECK(attr_size, sizeof(struct watchd_attr) == WATCHD_ATTR_HEADER_LEN);
WATCHD_LAYOUT_CHECK(attr_len_at_0, offsetof(struct watchd_attr, len) == 0);
WATCHD_LAYOUT_CHECK(attr_id_at_2, offsetof(struct watchd_attr, id) == 2);
#undef WATCHD_LAYOUT_CHECK

/* ---- Little-endian loads ------------------------------------------------------------ */

static inline uint16_t watchd_le16(const void *p)
{
	const unsigned char *b = (const unsigned char *)p;
	return (uint16_t)(b[0] | (b[1] << 8));
}

static inline uint32_t watchd_le32(const void *p)
{
	const unsigned char *b = (const unsigned char *)p;
	return (uint32_t)b[0] | ((uint32_t)b[1] << 8) | ((uint32_t)b[2] << 16) |
	       ((uint32_t)b[3] << 24);
}

static inline uint64_t watchd_le64(const void *p)
{
	const unsigned char *b = (const unsigned char *)p;
	return (uint64_t)watchd_le32(b) | ((uint64_t)watchd_le32(b + 4) << 32);
}

/* ---- Records ------------------------------------------------------------------------ */

/*
 * Checks only the header of the record at the start of buf, where n bytes are available,
 * and stores the record's length in *len.
 *
 * Returns 0, or:
 *   -ENODATA          n is 0 (a 0-byte read means the subscription has ended)
 *   -EBADMSG          fewer bytes than the header, or than the record's len
 *   -EPROTONOSUPPORT  version is not WATCHD_VERSION: stop reading, nothing else can be
 *                     trusted (checked before len, whose meaning a new version may change)
 *   -EINVAL           len below 32, above 4096, or not a multiple of 4
 * When -EBADMSG is returned and n >= 32, *len holds the length the record needs.
 */
static inline int watchd_record_check_header(const void *buf, size_t n, size_t *len)
{
	const unsigned char *b = (const unsigned char *)buf;
	size_t rec_len;

	if (n == 0)
		return -ENODATA;
	if (n < WATCHD_HEADER_LEN)
		return -EBADMSG;
	if (b[2] != WATCHD_VERSION)
		return -EPROTONOSUPPORT;
	rec_len = watchd_le16(b);
	if (rec_len < WATCHD_HEADER_LEN || rec_len > WATCHD_MAX_RECORD_LEN || rec_len % 4 != 0)
		return -EINVAL;
	*len = rec_len;
	return n < rec_len ? -EBADMSG : 0;
}

/*
 * Checks the attribute chain of a record whose header passed: -EPROTO when an attribute
 * is shorter than its own 4-byte header or runs past the record.
 */
static inline int watchd_record_check_attrs(const void *record)
{
	const unsigned char *b = (const unsigned char *)record;
	size_t rec_len = watchd_le16(b), off = WATCHD_HEADER_LEN;

	while (off < rec_len) {
		/* rec_len and off are multiples of 4, so the 4-byte attribute header is there. */
		size_t alen = watchd_le16(b + off);

		if (alen < WATCHD_ATTR_HEADER_LEN || alen > rec_len - off)
			return -EPROTO;
		off += (alen + 3) & ~(size_t)3;
	}
	return 0;
}

/*
 * Checks the whole record at the start of buf and stores its length in *len, allowing
 * bytes after it: what a reader of records stored back to back (a file, an ordinary
 * pipe) needs. Returns 0 or a code of the two functions above.
 */
static inline int watchd_record_validate_prefix(const void *buf, size_t n, size_t *len)
{
	int rc = watchd_record_check_header(buf, n, len);

	return rc != 0 ? rc : watchd_record_check_attrs(buf);
}

/*
 * Checks that buf (n bytes, as returned by one read() from a subscription pipe) holds
 * exactly one well-formed record. Returns 0, a code of the functions above, or -EMSGSIZE
 * when n is larger than the record's len.
 */
static inline int watchd_record_validate(const void *buf, size_t n)
{
	size_t len = 0;
	int rc = watchd_record_check_header(buf, n, &len);

	if (rc != 0)
		return rc;
	if (n != len)
		return -EMSGSIZE;
	return watchd_record_check_attrs(buf);
}

/* Decodes the 32-byte header at buf (at least WATCHD_HEADER_LEN bytes). */
static inline void watchd_header_decode(const void *buf, struct watchd_record_header *h)
{
	const unsigned char *b = (const unsigned char *)buf;

	h->len = watchd_le16(b);
	h->version = b[2];
	h->flags = b[3];
	h->type_subtype = watchd_le32(b + 4);
	h->tag = watchd_le64(b + 8);
	h->seq = watchd_le64(b + 16);
	h->time_ns = watchd_le64(b + 24);
}

static inline uint32_t watchd_record_type(const struct watchd_record_header *h)
{
	return h->type_subtype & 0x00ffffffu;
}

static inline uint8_t watchd_record_subtype(const struct watchd_record_header *h)
{
	return (uint8_t)(h->type_subtype >> 24);
}

/* ---- Attributes --------------------------------------------------------------------- */
/*
 * An attribute is addressed by a pointer to its first byte. These functions trust the
 * record: call them only after watchd_record_validate() (or _prefix) returned 0.
 */

static inline uint16_t watchd_attr_len(const unsigned char *attr)
{
	return watchd_le16(attr);
}

static inline uint16_t watchd_attr_id(const unsigned char *attr)
{
	return watchd_le16(attr + 2);
}

static inline const unsigned char *watchd_attr_value(const unsigned char *attr)
{
	return attr + WATCHD_ATTR_HEADER_LEN;
}

static inline size_t watchd_attr_value_len(const unsigned char *attr)
{
	return (size_t)watchd_attr_len(attr) - WATCHD_ATTR_HEADER_LEN;
}

static inline struct watchd_attr watchd_attr_header(const unsigned char *attr)
{
	struct watchd_attr a;

	a.len = watchd_attr_len(attr);
	a.id = watchd_attr_id(attr);
	return a;
}

/* The first attribute of a validated record, or NULL when it has none. */
static inline const unsigned char *watchd_attr_first(const void *record)
{
	const unsigned char *b = (const unsigned char *)record;

	return watchd_le16(b) > WATCHD_HEADER_LEN ? b + WATCHD_HEADER_LEN : NULL;
}

/* The attribute after attr, or NULL at the end of the record. */
static inline const unsigned char *watchd_attr_next(const void *record, const unsigned char *attr)
{
	const unsigned char *b = (const unsigned char *)record;
	size_t off = (size_t)(attr - b) + (((size_t)watchd_attr_len(attr) + 3) & ~(size_t)3);

	return off < watchd_le16(b) ? b + off : NULL;
}

/* for (each attribute a of a validated record); a is a const unsigned char pointer. */
#define WATCHD_ATTR_FOREACH(a, record)                                                   \
	for ((a) = watchd_attr_first(record); (a) != NULL; (a) = watchd_attr_next((record), (a)))

/* The first attribute with this id, or NULL. */
static inline const unsigned char *watchd_attr_find(const void *record, uint16_t id)
{
	const unsigned char *a;

	WATCHD_ATTR_FOREACH(a, record)
	{
		if (watchd_attr_id(a) == id)
			return a;
	}
	return NULL;
}

/*
 * The next attribute after attr with this id, or NULL: with watchd_attr_find(), walks an
 * attribute that repeats (WATCHD_ATTR_PROPERTY) in order:
 *
 *     for (a = watchd_attr_find(rec, id); a; a = watchd_attr_find_next(rec, a, id)) ...
 */
static inline const unsigned char *watchd_attr_find_next(const void *record,
							 const unsigned char *attr, uint16_t id)
{
	const unsigned char *a;

	for (a = watchd_attr_next(record, attr); a != NULL; a = watchd_attr_next(record, a)) {
		if (watchd_attr_id(a) == id)
			return a;
	}
	return NULL;
}

/*
 * Typed values. Return 0, or -EINVAL when the value has the wrong size (treat that
 * attribute as absent).
 */
static inline int watchd_attr_u32(const unsigned char *attr, uint32_t *out)
{
	if (watchd_attr_value_len(attr) != 4)
		return -EINVAL;
	*out = watchd_le32(watchd_attr_value(attr));
	return 0;
}

static inline int watchd_attr_u64(const unsigned char *attr, uint64_t *out)
{
	if (watchd_attr_value_len(attr) != 8)
		return -EINVAL;
	*out = watchd_le64(watchd_attr_value(attr));
	return 0;
}

/* ---- Names -------------------------------------------------------------------------- */
/*
 * The stable names watchctl --json prints, and the layout of each known attribute.
 * NULL / WATCHD_KIND_UNKNOWN for numbers this header does not know: skip those.
 */

enum watchd_attr_kind {
	WATCHD_KIND_UNKNOWN = 0,
	WATCHD_KIND_U32 = 1,
	WATCHD_KIND_U64 = 2,
	WATCHD_KIND_STR = 3 /* bytes, normally UTF-8, no terminating NUL */
};

static inline enum watchd_attr_kind watchd_attr_kind(uint16_t id)
{
	switch (id) {
	case WATCHD_ATTR_LOST_COUNT:
	case WATCHD_ATTR_FIRST_LOST_SEQ:
	case WATCHD_ATTR_LOST_TYPES:
	case WATCHD_ATTR_MOUNT_ID:
	case WATCHD_ATTR_PARENT_ID:
	case WATCHD_ATTR_MNT_NS:
	case WATCHD_ATTR_MOUNT_UNIQUE_ID:
	case WATCHD_ATTR_PARENT_UNIQUE_ID:
	case WATCHD_ATTR_SEQNUM:
	case WATCHD_ATTR_FSID:
	case WATCHD_ATTR_INODE:
	case WATCHD_ATTR_FIRST_ERROR_TIME:
	case WATCHD_ATTR_LAST_ERROR_TIME:
	case WATCHD_ATTR_QUOTA_ID:
	case WATCHD_ATTR_QUOTA_CAUSED_BY:
	case WATCHD_ATTR_QUOTA_USED:
	case WATCHD_ATTR_QUOTA_SOFT_LIMIT:
	case WATCHD_ATTR_QUOTA_HARD_LIMIT:
	case WATCHD_ATTR_QUOTA_ROOM:
	case WATCHD_ATTR_QUOTA_GRACE_ENDS:
	case WATCHD_ATTR_FREE_BYTES:
	case WATCHD_ATTR_AVAIL_BYTES:
	case WATCHD_ATTR_TOTAL_BYTES:
	case WATCHD_ATTR_FREE_INODES:
	case WATCHD_ATTR_TOTAL_INODES:
	case WATCHD_ATTR_THRESHOLD:
	case WATCHD_ATTR_MARGIN:
		return WATCHD_KIND_U64;
	case WATCHD_ATTR_TRUNCATED:
	case WATCHD_ATTR_MAJOR:
	case WATCHD_ATTR_MINOR:
	case WATCHD_ATTR_CHANGED:
	case WATCHD_ATTR_KEY_ID:
	case WATCHD_ATTR_AUX:
	case WATCHD_ATTR_KEY_UID:
	case WATCHD_ATTR_KEY_GID:
	case WATCHD_ATTR_PERM:
	case WATCHD_ATTR_WATCHED_KEY:
	case WATCHD_ATTR_HANDLE_TYPE:
	case WATCHD_ATTR_IS_DIR:
	case WATCHD_ATTR_ERRNO:
	case WATCHD_ATTR_ERROR_COUNT:
	case WATCHD_ATTR_ERRORS_TOTAL:
	case WATCHD_ATTR_QUOTA_TYPE:
	case WATCHD_ATTR_QUOTA_WARNING:
		return WATCHD_KIND_U32;
	case WATCHD_ATTR_OBJECT:
	case WATCHD_ATTR_REASON:
	case WATCHD_ATTR_BACKEND:
	case WATCHD_ATTR_ROOT:
	case WATCHD_ATTR_MOUNT_POINT:
	case WATCHD_ATTR_FS_TYPE:
	case WATCHD_ATTR_SOURCE:
	case WATCHD_ATTR_MOUNT_OPTIONS:
	case WATCHD_ATTR_SUPER_OPTIONS:
	case WATCHD_ATTR_PROPAGATION:
	case WATCHD_ATTR_OLD_MOUNT_POINT:
	case WATCHD_ATTR_ACTION:
	case WATCHD_ATTR_SUBSYSTEM:
	case WATCHD_ATTR_DEVTYPE:
	case WATCHD_ATTR_SYSNAME:
	case WATCHD_ATTR_SYSPATH:
	case WATCHD_ATTR_DEVNODE:
	case WATCHD_ATTR_DRIVER:
	case WATCHD_ATTR_TAGS:
	case WATCHD_ATTR_PROPERTY:
	case WATCHD_ATTR_OLD_SYSPATH:
	case WATCHD_ATTR_EVENT_SOURCE:
	case WATCHD_ATTR_KEY_TYPE:
	case WATCHD_ATTR_DESCRIPTION:
	case WATCHD_ATTR_CACHE:
	case WATCHD_ATTR_PRINCIPAL:
	case WATCHD_ATTR_COLLECTION:
	case WATCHD_ATTR_NAME:
	case WATCHD_ATTR_OLD_NAME:
	case WATCHD_ATTR_HANDLE:
	case WATCHD_ATTR_MOUNTED_ON:
	case WATCHD_ATTR_ERRNO_NAME:
	case WATCHD_ATTR_FIRST_ERROR_AT:
	case WATCHD_ATTR_LAST_ERROR_AT:
	case WATCHD_ATTR_QUOTA_WARNING_NAME:
	case WATCHD_ATTR_RESOURCE:
		return WATCHD_KIND_STR;
	default:
		return WATCHD_KIND_UNKNOWN;
	}
}

static inline const char *watchd_attr_name(uint16_t id)
{
	switch (id) {
	case WATCHD_ATTR_LOST_COUNT: return "lost_count";
	case WATCHD_ATTR_FIRST_LOST_SEQ: return "first_lost_seq";
	case WATCHD_ATTR_LOST_TYPES: return "lost_types";
	case WATCHD_ATTR_OBJECT: return "object";
	case WATCHD_ATTR_REASON: return "reason";
	case WATCHD_ATTR_TRUNCATED: return "truncated";
	case WATCHD_ATTR_BACKEND: return "backend";
	case WATCHD_ATTR_MOUNT_ID: return "mount_id";
	case WATCHD_ATTR_PARENT_ID: return "parent_id";
	case WATCHD_ATTR_MAJOR: return "major";
	case WATCHD_ATTR_MINOR: return "minor";
	case WATCHD_ATTR_ROOT: return "root";
	case WATCHD_ATTR_MOUNT_POINT: return "mount_point";
	case WATCHD_ATTR_FS_TYPE: return "fs_type";
	case WATCHD_ATTR_SOURCE: return "source";
	case WATCHD_ATTR_MOUNT_OPTIONS: return "mount_options";
	case WATCHD_ATTR_SUPER_OPTIONS: return "super_options";
	case WATCHD_ATTR_PROPAGATION: return "propagation";
	case WATCHD_ATTR_OLD_MOUNT_POINT: return "old_mount_point";
	case WATCHD_ATTR_MNT_NS: return "mnt_ns";
	case WATCHD_ATTR_CHANGED: return "changed";
	case WATCHD_ATTR_MOUNT_UNIQUE_ID: return "mount_unique_id";
	case WATCHD_ATTR_PARENT_UNIQUE_ID: return "parent_unique_id";
	case WATCHD_ATTR_ACTION: return "action";
	case WATCHD_ATTR_SUBSYSTEM: return "subsystem";
	case WATCHD_ATTR_DEVTYPE: return "devtype";
	case WATCHD_ATTR_SYSNAME: return "sysname";
	case WATCHD_ATTR_SYSPATH: return "syspath";
	case WATCHD_ATTR_DEVNODE: return "devnode";
	case WATCHD_ATTR_DRIVER: return "driver";
	case WATCHD_ATTR_SEQNUM: return "seqnum";
	case WATCHD_ATTR_TAGS: return "tags";
	case WATCHD_ATTR_PROPERTY: return "property";
	case WATCHD_ATTR_OLD_SYSPATH: return "old_syspath";
	case WATCHD_ATTR_EVENT_SOURCE: return "event_source";
	case WATCHD_ATTR_KEY_ID: return "key_id";
	case WATCHD_ATTR_AUX: return "aux";
	case WATCHD_ATTR_KEY_TYPE: return "key_type";
	case WATCHD_ATTR_DESCRIPTION: return "description";
	case WATCHD_ATTR_KEY_UID: return "key_uid";
	case WATCHD_ATTR_KEY_GID: return "key_gid";
	case WATCHD_ATTR_PERM: return "perm";
	case WATCHD_ATTR_WATCHED_KEY: return "watched_key";
	case WATCHD_ATTR_CACHE: return "cache";
	case WATCHD_ATTR_PRINCIPAL: return "principal";
	case WATCHD_ATTR_COLLECTION: return "collection";
	case WATCHD_ATTR_NAME: return "name";
	case WATCHD_ATTR_OLD_NAME: return "old_name";
	case WATCHD_ATTR_HANDLE: return "handle";
	case WATCHD_ATTR_HANDLE_TYPE: return "handle_type";
	case WATCHD_ATTR_FSID: return "fsid";
	case WATCHD_ATTR_INODE: return "inode";
	case WATCHD_ATTR_IS_DIR: return "is_dir";
	case WATCHD_ATTR_MOUNTED_ON: return "mounted_on";
	case WATCHD_ATTR_ERRNO: return "errno";
	case WATCHD_ATTR_ERRNO_NAME: return "errno_name";
	case WATCHD_ATTR_ERROR_COUNT: return "error_count";
	case WATCHD_ATTR_ERRORS_TOTAL: return "errors_total";
	case WATCHD_ATTR_FIRST_ERROR_TIME: return "first_error_time";
	case WATCHD_ATTR_FIRST_ERROR_AT: return "first_error_at";
	case WATCHD_ATTR_LAST_ERROR_TIME: return "last_error_time";
	case WATCHD_ATTR_LAST_ERROR_AT: return "last_error_at";
	case WATCHD_ATTR_QUOTA_TYPE: return "quota_type";
	case WATCHD_ATTR_QUOTA_ID: return "quota_id";
	case WATCHD_ATTR_QUOTA_WARNING: return "quota_warning";
	case WATCHD_ATTR_QUOTA_WARNING_NAME: return "quota_warning_name";
	case WATCHD_ATTR_QUOTA_CAUSED_BY: return "quota_caused_by";
	case WATCHD_ATTR_QUOTA_USED: return "quota_used";
	case WATCHD_ATTR_QUOTA_SOFT_LIMIT: return "quota_soft_limit";
	case WATCHD_ATTR_QUOTA_HARD_LIMIT: return "quota_hard_limit";
	case WATCHD_ATTR_QUOTA_ROOM: return "quota_room";
	case WATCHD_ATTR_QUOTA_GRACE_ENDS: return "quota_grace_ends";
	case WATCHD_ATTR_FREE_BYTES: return "free_bytes";
	case WATCHD_ATTR_AVAIL_BYTES: return "avail_bytes";
	case WATCHD_ATTR_TOTAL_BYTES: return "total_bytes";
	case WATCHD_ATTR_FREE_INODES: return "free_inodes";
	case WATCHD_ATTR_TOTAL_INODES: return "total_inodes";
	case WATCHD_ATTR_RESOURCE: return "resource";
	case WATCHD_ATTR_THRESHOLD: return "threshold";
	case WATCHD_ATTR_MARGIN: return "margin";
	default: return NULL;
	}
}

static inline const char *watchd_type_name(uint32_t type)
{
	switch (type) {
	case WATCHD_TYPE_META: return "meta";
	case WATCHD_TYPE_KEY: return "key";
	case WATCHD_TYPE_MOUNT: return "mount";
	case WATCHD_TYPE_SUPERBLOCK: return "superblock";
	case WATCHD_TYPE_DEVICE: return "device";
	case WATCHD_TYPE_FILE: return "file";
	case WATCHD_TYPE_KRB5: return "krb5";
	default: return NULL;
	}
}

static inline const char *watchd_subtype_name(uint32_t type, uint8_t subtype)
{
	static const char *const meta[] = {"removal", "loss", "sync", "source_changed"};
	static const char *const key[] = {"instantiated", "updated", "linked", "unlinked",
					  "cleared", "revoked", "invalidated", "setattr"};
	static const char *const mount[] = {"attach", "detach", "move", "change"};
	static const char *const device[] = {"add",    "remove",  "change", "move",
					     "online", "offline", "bind",   "unbind"};
	static const char *const krb5[] = {"created", "changed", "primary", "destroyed"};
	static const char *const file[] = {"create",      "delete",     "modify",   "attrib",
					   "close_write", "moved_from", "moved_to", "rename"};
	static const char *const superblock[] = {
		"readonly",  "error",           "quota",           "network",
		"low",       "still_lower",     "recovered",       "quota_low",
		"quota_still_lower", "quota_recovered"};

	switch (type) {
	case WATCHD_TYPE_META:
		return subtype < sizeof meta / sizeof meta[0] ? meta[subtype] : NULL;
	case WATCHD_TYPE_KEY:
		return subtype < sizeof key / sizeof key[0] ? key[subtype] : NULL;
	case WATCHD_TYPE_MOUNT:
		return subtype < sizeof mount / sizeof mount[0] ? mount[subtype] : NULL;
	case WATCHD_TYPE_DEVICE:
		return subtype < sizeof device / sizeof device[0] ? device[subtype] : NULL;
	case WATCHD_TYPE_KRB5:
		return subtype < sizeof krb5 / sizeof krb5[0] ? krb5[subtype] : NULL;
	case WATCHD_TYPE_FILE:
		return subtype < sizeof file / sizeof file[0] ? file[subtype] : NULL;
	case WATCHD_TYPE_SUPERBLOCK:
		return subtype < sizeof superblock / sizeof superblock[0] ? superblock[subtype] : NULL;
	default:
		return NULL;
	}
}

#ifdef __cplusplus
}
#endif

#endif /* WATCHD_H */
