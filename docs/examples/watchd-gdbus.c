/*
 * watchd-gdbus: a watchd client in C with GDBus. It subscribes, adds one watch and prints
 * each record of the subscription's pipe as one line:
 *
 *     tag=1 seq=3 mount attach mount_id=63 ... mount_point=/mnt/a fs_type=tmpfs ...
 *
 * The D-Bus calls go through a proxy that gdbus-codegen makes from the introspection XML
 * (dbus/org.watchd.Watchd1.xml, installed as
 * /usr/share/dbus-1/interfaces/org.watchd.Watchd1.xml); the records are decoded with the C
 * header of the wire format, watchd.h. Nothing generated is kept with this file: the
 * Makefile next to it makes the proxy at build time.
 *
 * Usage: watchd-gdbus [-a ADDRESS] [KIND [KEY=VALUE]...]
 *
 *   -a ADDRESS  the bus watchd is on [default: $DBUS_SYSTEM_BUS_ADDRESS, else the system
 *               bus]
 *   KIND        mounts, devices, keys or krb5 [default: mounts]
 *   KEY=VALUE   an AddWatch option of the kind: "true" and "false" are sent as booleans
 *               (b), digits as a number (u), anything else as a string (s); e.g.
 *               path=/mnt initial=true, or subsystem=block, or key=@user nested=true
 *
 * What it did goes to standard error ("subscribed: ..."), the records to standard output,
 * flushed one by one. It exits 0 when the subscription ends (end of file on the pipe:
 * watchd stopped or ended it), 1 on an error.
 *
 * Build: make -C docs/examples watchd-gdbus (or, from anywhere, make -f
 * .../docs/examples/Makefile); it needs gdbus-codegen and pkg-config's gio-2.0 and
 * gio-unix-2.0 (Debian: libglib2.0-dev, libglib2.0-dev-bin).
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <gio/gio.h>
#include <gio/gunixfdlist.h>

#include "watchd-generated.h" /* gdbus-codegen's proxies: WatchdManager, WatchdSubscription */
#include "watchd.h"

#define BUS_NAME "org.watchd.Watchd1"
#define MANAGER_PATH "/org/watchd/Watchd1"
/* The number the watch's records carry (AddWatch's tag). */
#define TAG 1

static int fail(const char *what, GError *error)
{
	fprintf(stderr, "watchd-gdbus: %s: %s\n", what, error ? error->message : strerror(errno));
	g_clear_error(&error);
	return 1;
}

/* The bus at address, else the system bus (GDBus reads $DBUS_SYSTEM_BUS_ADDRESS). */
static GDBusConnection *connect_bus(const char *address, GError **error)
{
	if (address == NULL)
		return g_bus_get_sync(G_BUS_TYPE_SYSTEM, NULL, error);
	return g_dbus_connection_new_for_address_sync(
		address,
		G_DBUS_CONNECTION_FLAGS_AUTHENTICATION_CLIENT |
			G_DBUS_CONNECTION_FLAGS_MESSAGE_BUS_CONNECTION,
		NULL, NULL, error);
}

/* KEY=VALUE arguments as AddWatch's a{sv}; NULL (and *bad set) when one has no '='. */
static GVariant *watch_options(char **args, int n, const char **bad)
{
	GVariantBuilder options;
	int i;

	g_variant_builder_init(&options, G_VARIANT_TYPE_VARDICT);
	for (i = 0; i < n; i++) {
		char *key = args[i], *value = strchr(args[i], '=');
		GVariant *v;

		if (value == NULL || value == key) {
			*bad = args[i];
			g_variant_builder_clear(&options);
			return NULL;
		}
		*value++ = '\0';
		if (strcmp(value, "true") == 0 || strcmp(value, "false") == 0)
			v = g_variant_new_boolean(value[0] == 't');
		else if (value[0] != '\0' && strspn(value, "0123456789") == strlen(value))
			v = g_variant_new_uint32((guint32)strtoul(value, NULL, 10));
		else
			v = g_variant_new_string(value);
		g_variant_builder_add(&options, "{sv}", key, v);
	}
	return g_variant_builder_end(&options);
}

/* Subscribe(): the read end of the subscription's pipe, and the subscription's object. */
static int subscribe(WatchdManager *manager, gchar **path, GError **error)
{
	GVariant *handle = NULL;
	GUnixFDList *fds = NULL;
	int fd = -1;

	if (!watchd_manager_call_subscribe_sync(manager, g_variant_new("a{sv}", NULL),
						G_DBUS_CALL_FLAGS_NONE, -1, NULL, &handle, path,
						&fds, NULL, error))
		return -1;
	/* The reply's h is an index into the descriptors that came with it; _get dups it. */
	fd = g_unix_fd_list_get(fds, g_variant_get_handle(handle), error);
	g_variant_unref(handle);
	g_object_unref(fds); /* closes the list's own copy: ours keeps the subscription */
	return fd;
}

static void print_record(const unsigned char *rec)
{
	struct watchd_record_header h;
	const unsigned char *a;
	const char *type, *subtype; /* NULL when newer than this header: then numbers */

	watchd_header_decode(rec, &h);
	type = watchd_type_name(watchd_record_type(&h));
	subtype = watchd_subtype_name(watchd_record_type(&h), watchd_record_subtype(&h));
	printf("tag=%" PRIu64 " seq=%" PRIu64, h.tag, h.seq);
	if (type != NULL)
		printf(" %s", type);
	else
		printf(" type%" PRIu32, watchd_record_type(&h));
	if (subtype != NULL)
		printf(" %s", subtype);
	else
		printf(" subtype%u", (unsigned)watchd_record_subtype(&h));
	if (h.flags & WATCHD_FLAG_SNAPSHOT)
		printf(" [snapshot]");
	WATCHD_ATTR_FOREACH(a, rec)
	{
		uint16_t id = watchd_attr_id(a);
		const char *name = watchd_attr_name(id); /* NULL: an id newer than this header */
		uint32_t v32;
		uint64_t v64;

		if (name != NULL)
			printf(" %s=", name);
		else
			printf(" attr%u=", (unsigned)id);
		if (watchd_attr_kind(id) == WATCHD_KIND_STR)
			printf("%.*s", (int)watchd_attr_value_len(a), (const char *)watchd_attr_value(a));
		else if (watchd_attr_kind(id) == WATCHD_KIND_U32 && watchd_attr_u32(a, &v32) == 0)
			printf("%" PRIu32, v32);
		else if (watchd_attr_kind(id) == WATCHD_KIND_U64 && watchd_attr_u64(a, &v64) == 0)
			printf("%" PRIu64, v64);
		else
			printf("(%zu bytes)", watchd_attr_value_len(a));
	}
	putchar('\n');
	fflush(stdout);
}

int main(int argc, char **argv)
{
	const char *address = NULL, *kind = "mounts", *bad = NULL;
	GError *error = NULL;
	GDBusConnection *bus;
	WatchdManager *manager;
	WatchdSubscription *subscription;
	GVariant *options;
	gchar *path = NULL;
	int first = 1, fd;

	if (argc > 2 && strcmp(argv[1], "-a") == 0) {
		address = argv[2];
		first = 3;
	}
	if (first < argc)
		kind = argv[first++];
	options = watch_options(argv + first, argc - first, &bad);
	if (options == NULL) {
		fprintf(stderr, "watchd-gdbus: %s: expected KEY=VALUE\n"
				"usage: watchd-gdbus [-a ADDRESS] [KIND [KEY=VALUE]...]\n",
			bad);
		return 2;
	}

	bus = connect_bus(address, &error);
	if (bus == NULL)
		return fail("connecting to the bus", error);
	manager = watchd_manager_proxy_new_sync(bus, G_DBUS_PROXY_FLAGS_NONE, BUS_NAME,
						MANAGER_PATH, NULL, &error);
	if (manager == NULL)
		return fail("the Manager object", error);
	fd = subscribe(manager, &path, &error);
	if (fd < 0)
		return fail("Subscribe", error);
	subscription = watchd_subscription_proxy_new_sync(bus, G_DBUS_PROXY_FLAGS_NONE, BUS_NAME,
							  path, NULL, &error);
	if (subscription == NULL)
		return fail("the Subscription object", error);
	if (!watchd_subscription_call_add_watch_sync(subscription, TAG, kind, options,
						     G_DBUS_CALL_FLAGS_NONE, -1, NULL, &error))
		return fail("AddWatch", error);
	fprintf(stderr, "subscribed: %s, watch %d: %s (watchd %s)\n", path, TAG, kind,
		watchd_manager_get_version(manager));

	for (;;) {
		/* One read, one record: the pipe is a packet pipe of records of 4096 bytes at most. */
		unsigned char buf[WATCHD_MAX_RECORD_LEN];
		ssize_t n = read(fd, buf, sizeof buf);
		int rc;

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return fail("read", NULL);
		if (n == 0) {
			fprintf(stderr, "watchd-gdbus: the subscription ended\n");
			break;
		}
		rc = watchd_record_validate(buf, (size_t)n);
		if (rc != 0) {
			fprintf(stderr, "watchd-gdbus: skipped a malformed record: %s\n",
				strerror(-rc));
			continue;
		}
		print_record(buf);
	}
	close(fd);
	g_free(path);
	g_object_unref(subscription);
	g_object_unref(manager);
	g_object_unref(bus);
	return 0;
}
