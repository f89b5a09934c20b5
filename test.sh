#!/usr/bin/env bash
# The whole test suite (README, "Test it"): run it as yourself.
#
#   ./test.sh                       every test
#   ./test.sh -- mounts::           arguments for cargo test (here: only the mount tests)
#
# 1. Installs the Debian packages the tests need (packaging/install-deps test, through sudo)
#    and cargo-deb, which the packaging tests use, when cargo has none.
# 2. Builds everything as you: cargo test --workspace --no-run.
# 3. Runs cargo test as root, through sudo: the end-to-end tests mount filesystems in
#    private namespaces, own a bus name under the real bus policy, start udevd. sudo's
#    secure_path does not hold ~/.cargo/bin, so cargo is named by its path, with your
#    RUSTUP_HOME and CARGO_HOME; --offline, as everything was fetched in step 2.
# 4. Gives back to you what root wrote under target/ and build/.
# As root (CI), steps 3 and 4 are plain cargo test.
set -euo pipefail
cd "$(dirname "$0")"

packaging/install-deps test
if ! command -v cargo > /dev/null; then
    echo "test.sh: no cargo in PATH: install a Rust toolchain (rustup; 1.89 or later)" >&2
    exit 1
fi
# The version .ci/run has always used; about 45 s to build on 2 cores.
if ! cargo deb --version > /dev/null 2>&1; then
    cargo install cargo-deb --locked --version 3.8.0
fi

if [ "$(id -u)" -eq 0 ]; then
    exec cargo test --workspace --locked "$@"
fi

cargo test --workspace --locked --no-run
owner="$(id -u):$(id -g)"
give_back() { sudo chown -R "$owner" target build 2> /dev/null || true; }
trap give_back EXIT
sudo env PATH="$PATH" \
    RUSTUP_HOME="${RUSTUP_HOME:-$HOME/.rustup}" CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}" \
    ${CI:+CI="$CI"} \
    "$(command -v cargo)" test --workspace --locked --offline "$@"
