/*
 * watchd-dump: print the watchd records arriving on standard input, one line each.
 *
 *     seq=N type=T subtype=S tag=G flags=F name=value ... attr<ID>=<hex>
 *
 * Written only from docs/protocol.md and watchd.h, as a check that they are enough.
 * Known string attributes print as-is, known numbers in decimal, anything else (an id
 * this program does not know, or a known id whose value has the wrong size) as
 * attr<decimal id>=<value bytes in hex>. Attributes print in the record's order, and one
 * that repeats prints each time: a device record's properties come out as
 * property=KEY=VALUE property=KEY=VALUE ...
 *
 * Standard input is normally the read end of a subscription pipe, where each read()
 * returns exactly one record. It may also be a file or an ordinary pipe holding records
 * back to back, where a read() can return several records or end inside one; records are
 * therefore walked by their len field and an incomplete tail is kept for the next read.
 *
 * Exit status: 0 at end of input, 1 on a malformed record or a read error.
 *
 * Build: cc -std=c99 -Wall -Wextra -I crates/watchd-proto/include \
 *           -o watchd-dump docs/examples/watchd-dump.c
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "watchd.h"

static const char *problem(int rc)
{
	switch (rc) {
	case -EBADMSG:
		return "record is cut short";
	case -EPROTONOSUPPORT:
		return "unsupported record version";
	case -EINVAL:
		return "impossible record length";
	case -EPROTO:
		return "malformed attribute";
	case -EMSGSIZE:
		return "packet longer than its record";
	default:
		return strerror(-rc);
	}
}

static void print_hex(const unsigned char *p, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		printf("%02x", p[i]);
}

static void print_record(const unsigned char *rec)
{
	struct watchd_record_header h;
	const unsigned char *a;

	watchd_header_decode(rec, &h);
	printf("seq=%" PRIu64 " type=%" PRIu32 " subtype=%u tag=%" PRIu64 " flags=%u", h.seq,
	       watchd_record_type(&h), (unsigned)watchd_record_subtype(&h), h.tag,
	       (unsigned)h.flags);

	WATCHD_ATTR_FOREACH(a, rec)
	{
		uint16_t id = watchd_attr_id(a);
		const char *name = watchd_attr_name(id);
		uint32_t v32;
		uint64_t v64;

		switch (watchd_attr_kind(id)) {
		case WATCHD_KIND_STR:
			printf(" %s=%.*s", name, (int)watchd_attr_value_len(a),
			       (const char *)watchd_attr_value(a));
			continue;
		case WATCHD_KIND_U32:
			if (watchd_attr_u32(a, &v32) == 0) {
				printf(" %s=%" PRIu32, name, v32);
				continue;
			}
			break;
		case WATCHD_KIND_U64:
			if (watchd_attr_u64(a, &v64) == 0) {
				printf(" %s=%" PRIu64, name, v64);
				continue;
			}
			break;
		case WATCHD_KIND_UNKNOWN:
			break;
		}
		printf(" attr%u=", (unsigned)id);
		print_hex(watchd_attr_value(a), watchd_attr_value_len(a));
	}
	putchar('\n');
}

int main(void)
{
	/*
	 * Room for an incomplete record carried over (< 4096 bytes) plus a full 4096-byte
	 * read: on a packet pipe a read() into less than a whole packet would silently lose
	 * the rest of the packet.
	 */
	static unsigned char buf[2 * WATCHD_MAX_RECORD_LEN];
	size_t have = 0;
	unsigned long long offset = 0; /* of buf[0] in the input, for error messages */

	for (;;) {
		size_t pos = 0, len = 0;
		ssize_t n = read(STDIN_FILENO, buf + have, WATCHD_MAX_RECORD_LEN);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			fprintf(stderr, "watchd-dump: read: %s\n", strerror(errno));
			return 1;
		}
		if (n == 0) {
			if (have == 0)
				return 0;
			fprintf(stderr,
				"watchd-dump: bad record at byte %llu: input ends after %zu of its bytes\n",
				offset, have);
			return 1;
		}
		have += (size_t)n;

		while (pos < have) {
			int rc = watchd_record_validate_prefix(buf + pos, have - pos, &len);

			if (rc == -EBADMSG)
				break; /* the rest of this record comes with the next read */
			if (rc != 0) {
				fprintf(stderr, "watchd-dump: bad record at byte %llu: %s\n",
					offset + pos, problem(rc));
				return 1;
			}
			print_record(buf + pos);
			pos += len;
		}
		/* Flush per read so a live subscription shows up at once when piped. */
		if (fflush(stdout) != 0) {
			fprintf(stderr, "watchd-dump: write: %s\n", strerror(errno));
			return 1;
		}
		memmove(buf, buf + pos, have - pos);
		have -= pos;
		offset += pos;
	}
}
