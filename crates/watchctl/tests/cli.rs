//! watchctl's own errors: usage mistakes and an absent bus, without any daemon.

use std::process::{Command, Output};

fn watchctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_watchctl"))
        .args(args)
        .output()
        .expect("run watchctl")
}

#[test]
fn usage_mistakes_exit_2_and_point_at_the_usage() {
    for args in [
        &["watch"][..],
        &["watch", "mounts", "--depth", "many"],
        &["frobnicate"],
        // `--tag` is the udev tag of `watch devices`; the watch's number is `--watch-tag`.
        &["watch", "mounts", "--tag", "7"],
        &["watch", "mounts", "--watch-tag", "0"],
        &["watch", "devices", "--property", "NO_EQUALS_SIGN"],
        &["watch", "devices", "--subsystem", "block/"],
        // A further watch, after `--`, is read as `watch` reads its first.
        &["watch", "mounts", "--", "nope"],
        &["watch", "mounts", "--", "devices", "--path", "/mnt"],
    ] {
        let out = watchctl(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("Usage") || err.contains("--help"),
            "{args:?}: {err}"
        );
    }
}

/// A mistake in a further watch shows that watch's usage, under the words before it.
#[test]
fn a_further_watchs_usage_names_where_it_stands() {
    let out = watchctl(&["watch", "mounts", "--", "devices", "--path", "/mnt"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("'--path'") && err.contains("Usage: watchctl watch … -- devices [OPTIONS]"),
        "{err}"
    );
}

#[test]
fn an_absent_bus_is_a_plain_error_naming_the_address() {
    let out = watchctl(&[
        "--bus-address",
        "unix:path=/nonexistent/bus",
        "watch",
        "mounts",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("watchctl: ") && err.contains("/nonexistent/bus"),
        "{err}"
    );
}
