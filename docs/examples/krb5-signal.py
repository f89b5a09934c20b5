#!/usr/bin/env python3
# SPDX-License-Identifier: MIT OR Apache-2.0
"""Print watchd's CredentialsCacheChanged signals: one line per Kerberos cache change.

Usage: python3 krb5-signal.py [CACHE]

Subscribes to watchd on the system bus (or the bus $DBUS_SYSTEM_BUS_ADDRESS names), sets a
krb5 watch that asks for D-Bus signals, and prints each signal until interrupted (Ctrl-C)
or until watchd ends the subscription. CACHE is the credential cache or collection to
watch, as MIT krb5 names it (e.g. KEYRING:persistent:1000 or FILE:/tmp/krb5cc_1000);
without it, watchd watches your uid's default one (default_ccache_name in krb5.conf).

Needs PyGObject (Debian/Ubuntu: python3-gi; Fedora: python3-gobject).
See docs/credentials-cache-signals.md.
"""

import os
import signal
import sys

import gi

gi.require_version("GLib", "2.0")
gi.require_version("Gio", "2.0")
from gi.repository import Gio, GLib  # noqa: E402

BUS_NAME = "org.watchd.Watchd1"
MANAGER_PATH = "/org/watchd/Watchd1"
MANAGER_INTERFACE = "org.watchd.Watchd1.Manager"
SUBSCRIPTION_INTERFACE = "org.watchd.Watchd1.Subscription"
SIGNAL_NAME = "CredentialsCacheChanged"

# The signal's `what`: the krb5 record subtypes of docs/protocol.md.
WHAT = {0: "created", 1: "changed", 2: "primary", 3: "destroyed"}

TAG = 1  # our number for the watch: any non-zero u64, unique in the subscription
MAX_RECORD_LEN = 4096  # one record per read(), never more than this


def remote_error(error):
    """'message (org.watchd.Watchd1.Error.Name)' for a D-Bus error, else the message."""
    name = Gio.DBusError.get_remote_error(error)
    if not name:
        return error.message
    prefix = f"GDBus.Error:{name}: "
    message = error.message[len(prefix):] if error.message.startswith(prefix) else error.message
    return f"{message} ({name})"


def subscribe(bus):
    """Calls Subscribe; returns (the pipe's read end, the subscription's object path)."""
    reply, fd_list = bus.call_with_unix_fd_list_sync(
        BUS_NAME,
        MANAGER_PATH,
        MANAGER_INTERFACE,
        "Subscribe",
        GLib.Variant("(a{sv})", ({},)),
        GLib.VariantType("(ho)"),
        Gio.DBusCallFlags.NONE,
        -1,
        None,  # no fds to send
        None,
    )
    handle, path = reply.unpack()
    # `h` is an index into the reply's fd list. get() returns a duplicate that is ours to
    # keep: the subscription lives exactly as long as the pipe's read end stays open, so
    # this fd must stay open as long as we want signals.
    return fd_list.get(handle), path


def add_krb5_watch(bus, path, cache):
    """AddWatch(TAG, "krb5", {"signal": true[, "cache": CACHE]})."""
    options = {"signal": GLib.Variant("b", True)}
    if cache:
        options["cache"] = GLib.Variant("s", cache)
    bus.call_sync(
        BUS_NAME,
        path,
        SUBSCRIPTION_INTERFACE,
        "AddWatch",
        GLib.Variant("(tsa{sv})", (TAG, "krb5", options)),
        None,
        Gio.DBusCallFlags.NONE,
        -1,
        None,
    )


def on_credentials_cache_changed(_bus, _sender, _path, _interface, _signal, parameters):
    cache, principal, what = parameters.unpack()
    event = WHAT.get(what, f"what={what}")  # a newer watchd may send more kinds
    print(f"{event:<9} {cache} {principal or '(principal unknown)'}", flush=True)


def on_pipe(fd, _condition, loop):
    """Drains the pipe. The records are the same news as the signals; this program does
    not need them, but reading them keeps the pipe from filling. Reading 0 bytes means
    watchd has ended the subscription (it stopped, or closed the pipe)."""
    try:
        record = os.read(fd, MAX_RECORD_LEN)
    except BlockingIOError:
        return GLib.SOURCE_CONTINUE
    if not record:
        print("krb5-signal: the subscription ended (watchd stopped?)", file=sys.stderr)
        loop.quit()
        return GLib.SOURCE_REMOVE
    return GLib.SOURCE_CONTINUE


def on_interrupt(loop):
    loop.quit()
    return GLib.SOURCE_REMOVE


def main(argv):
    cache = argv[1] if len(argv) > 1 else None
    loop = GLib.MainLoop()
    try:
        # BusType.SYSTEM honours $DBUS_SYSTEM_BUS_ADDRESS, e.g. a private test bus.
        bus = Gio.bus_get_sync(Gio.BusType.SYSTEM, None)
        pipe, path = subscribe(bus)
    except GLib.Error as e:
        print(f"krb5-signal: can't subscribe: {remote_error(e)}", file=sys.stderr)
        return 1

    # The signal is unicast from the subscription's object, to this connection only.
    # Subscribe to it before adding the watch, so that no change falls in between.
    bus.signal_subscribe(
        BUS_NAME,
        SUBSCRIPTION_INTERFACE,
        SIGNAL_NAME,
        path,
        None,
        Gio.DBusSignalFlags.NONE,
        on_credentials_cache_changed,
    )
    try:
        add_krb5_watch(bus, path, cache)
    except GLib.Error as e:
        print(f"krb5-signal: can't watch: {remote_error(e)}", file=sys.stderr)
        os.close(pipe)  # ends the subscription
        return 1

    os.set_blocking(pipe, False)
    GLib.unix_fd_add_full(
        GLib.PRIORITY_DEFAULT, pipe, GLib.IOCondition.IN | GLib.IOCondition.HUP, on_pipe, loop
    )
    for signum in (signal.SIGINT, signal.SIGTERM):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signum, on_interrupt, loop)

    print(f"watching {cache or 'the default credential cache'} ({path})", file=sys.stderr)
    loop.run()
    os.close(pipe)  # ends the subscription (exiting would too)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
