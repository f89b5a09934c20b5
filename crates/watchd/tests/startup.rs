//! The daemon states each unmet requirement precisely at startup, and exits non-zero.

use std::process::Command;

/// Runs watchd with `args` (plus `--config FILE` holding `config`, when given) and asserts
/// that it exits non-zero with every one of `needles` in its error output.
fn refuses(config: Option<(&str, &str)>, args: &[&str], needles: &[&str]) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_watchd"));
    command.args(args).env("WATCHD_LOG", "info");
    if let Some((name, text)) = config {
        let dir = std::env::temp_dir().join(format!("watchd-startup-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(name);
        std::fs::write(&file, text).unwrap();
        command.arg("--config").arg(file);
    }
    let out = command.output().expect("run watchd");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "watchd should refuse to start: {err}"
    );
    for needle in needles {
        assert!(
            err.contains(needle),
            "the error should mention {needle:?}: {err}"
        );
    }
}

const NO_BUS: [&str; 2] = ["--bus-address", "unix:path=/nonexistent/bus"];

#[test]
fn a_config_with_an_unknown_key_is_refused_naming_the_file_and_the_key() {
    let config = ("typo.toml", "[limits]\nmax_subscribers = 1\n");
    refuses(Some(config), &NO_BUS, &["typo.toml", "max_subscribers"]);
}

#[test]
fn an_explicit_config_that_does_not_exist_is_an_error() {
    refuses(
        None,
        &["--config", "/nonexistent/watchd.toml"],
        &["/nonexistent/watchd.toml"],
    );
}

#[test]
fn disabling_every_source_is_refused_rather_than_serving_nothing() {
    let config = (
        "none.toml",
        "[sources]\nmounts = false\ndevices = false\nkeys = false\nkrb5 = false\nfiles = false\nfserrors = false\nquota = false\nspace = false\n",
    );
    refuses(Some(config), &NO_BUS, &["every source is disabled"]);
}

#[test]
fn an_unreachable_bus_is_named_in_the_error() {
    refuses(
        Some(("ok.toml", "")),
        &NO_BUS,
        &["/nonexistent/bus", "cannot connect"],
    );
}

#[test]
fn a_poll_interval_out_of_range_is_refused_naming_the_key() {
    let config = ("fast.toml", "[keys]\npoll_interval_ms = 1\n");
    refuses(
        Some(config),
        &NO_BUS,
        &["fast.toml", "keys.poll_interval_ms"],
    );
}
