#!/usr/bin/env bash
# watchd's main job, on any machine: build it, start the daemon, and show live mount events
# with watchctl while this script mounts, remounts, moves and unmounts a tmpfs.
#
# Run it as yourself: it installs the Debian packages it needs (packaging/install-deps demo,
# through sudo), builds with your cargo (a debug build, as `cargo test` makes), then runs
# itself again through sudo for the part that needs root (the daemon owns a system bus
# name, and the demo mounts). Root builds nothing there, so target/ stays yours, and sudo's
# secure_path, which does not hold ~/.cargo/bin, does not matter. Run as root without sudo
# (CI), it does all of it as root.
#
# Everything runs in a private mount namespace, so the host's mounts are never touched.
# The daemon serves the system bus when watchd's bus policy is installed there; otherwise
# (no system bus, or no policy) it serves a private bus this script starts and stops.
#
#   ./demo.sh                  until Ctrl-C
#   DEMO_ROUNDS=2 ./demo.sh    two rounds, then stop (what CI runs)
set -euo pipefail
cd "$(dirname "$0")"
self=$PWD/demo.sh
rounds=${DEMO_ROUNDS:-0}

build() {
    packaging/install-deps demo
    if ! command -v cargo > /dev/null; then
        echo "demo.sh: no cargo in PATH: install a Rust toolchain (rustup; 1.89 or later)" >&2
        exit 1
    fi
    echo "building (cargo build)..."
    cargo build --quiet --locked -p watchd -p watchctl
}

if [ "$(id -u)" -ne 0 ]; then
    build
    exec sudo env DEMO_ROUNDS="$rounds" WATCHD_DEMO_BUILT=1 "$self"
fi
if [ -z "${WATCHD_DEMO_BUILT:-}" ]; then
    if [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ]; then
        # sudo ./demo.sh: build as the user who ran sudo, with that user's login PATH
        # (where rustup put cargo), then come back here through sudo.
        echo "demo.sh: building as $SUDO_USER, not root"
        exec sudo -u "$SUDO_USER" -H env DEMO_ROUNDS="$rounds" bash -lc 'exec "$0"' "$self"
    fi
    build
fi
if [ -z "${WATCHD_DEMO_NAMESPACE:-}" ]; then
    exec env WATCHD_DEMO_NAMESPACE=1 WATCHD_DEMO_BUILT=1 \
        unshare --mount --propagation private "$self" "$@"
fi

bin=$PWD/target/debug
work=$(mktemp -d /tmp/watchd-demo.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    umount -R "$work/mnt" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

policy=dbus/org.watchd.Watchd1.conf
if [ -S /run/dbus/system_bus_socket ] &&
    { [ -e /usr/share/dbus-1/system.d/org.watchd.Watchd1.conf ] ||
        [ -e /etc/dbus-1/system.d/org.watchd.Watchd1.conf ]; }; then
    address=unix:path=/run/dbus/system_bus_socket
    echo "using the system bus"
else
    echo "no system bus with watchd's policy here: starting a private bus"
    sed -e "s|@SOCKET@|$work/bus|" -e "s|@POLICY@|$PWD/$policy|" dbus/private-bus.conf.in > "$work/bus.conf"
    dbus-daemon --config-file="$work/bus.conf" --nofork --nopidfile 2> "$work/dbus.log" &
    pids+=($!)
    address=unix:path=$work/bus
    for _ in $(seq 100); do [ -S "$work/bus" ] && break; sleep 0.05; done
fi

"$bin/watchd" --bus-address "$address" --config data/watchd.toml 2> "$work/watchd.log" &
pids+=($!)
for _ in $(seq 100); do
    busctl --address="$address" status org.watchd.Watchd1 > /dev/null 2>&1 && break
    sleep 0.05
done
"$bin/watchctl" --bus-address "$address" status || { cat "$work/watchd.log"; exit 1; }

mkdir -p "$work/mnt/a" "$work/mnt/b"
echo
echo "watchctl watch mounts --initial --path $work/mnt   (Ctrl-C to stop)"
"$bin/watchctl" --bus-address "$address" watch mounts --initial --path "$work/mnt" &
pids+=($!)
sleep 0.5

i=0
while [ "$rounds" -eq 0 ] || [ "$i" -lt "$rounds" ]; do
    i=$((i + 1))
    mount -t tmpfs -o size=1m "demo$i" "$work/mnt/a"; sleep 0.5
    mount -o remount,ro "$work/mnt/a"; sleep 0.5
    mount --move "$work/mnt/a" "$work/mnt/b"; sleep 0.5
    umount "$work/mnt/b"; sleep 0.5
done
