//! The daemon states each unmet requirement precisely at startup, and exits non-zero.

use std::process::{Command, Output};

fn watchd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_watchd"))
        .args(args)
        .env("WATCHD_LOG", "info")
        .output()
        .expect("run watchd")
}

fn scratch_config(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("watchd-startup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(name);
    std::fs::write(&file, text).unwrap();
    file
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_config_with_an_unknown_key_is_refused_naming_the_file_and_the_key() {
    let file = scratch_config("typo.toml", "[limits]\nmax_subscribers = 1\n");
    let out = watchd(&[
        "--config",
        file.to_str().unwrap(),
        "--bus-address",
        "unix:path=/nonexistent",
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("typo.toml") && err.contains("max_subscribers"),
        "{err}"
    );
}

#[test]
fn an_explicit_config_that_does_not_exist_is_an_error() {
    let out = watchd(&["--config", "/nonexistent/watchd.toml"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("/nonexistent/watchd.toml"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn disabling_every_source_is_refused_rather_than_serving_nothing() {
    let file = scratch_config("none.toml", "[sources]\nmounts = false\n");
    let out = watchd(&[
        "--config",
        file.to_str().unwrap(),
        "--bus-address",
        "unix:path=/nonexistent",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("every source is disabled"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_unreachable_bus_is_named_in_the_error() {
    let file = scratch_config("ok.toml", "");
    let out = watchd(&[
        "--config",
        file.to_str().unwrap(),
        "--bus-address",
        "unix:path=/nonexistent/bus",
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("/nonexistent/bus") && err.contains("org.watchd.Watchd1"),
        "{err}"
    );
}
