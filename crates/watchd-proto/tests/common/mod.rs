//! Helpers shared by the tests that run outside tools (a C compiler, Python) against the
//! crate's output.
//!
//! A missing tool skips those tests with a message, except under CI (the `CI` environment
//! variable set), where a skipped contract check would pass unnoticed, so they fail.

// Each test binary compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn include_dir() -> PathBuf {
    workspace_root().join("crates/watchd-proto/include")
}

/// A directory of its own for this test binary and run, so parallel runs do not collide.
/// It lives under cargo's target tmp directory; directories of earlier runs whose process
/// has exited are removed so they do not pile up.
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let prefix = concat!(env!("CARGO_CRATE_NAME"), "-");
        if let Ok(entries) = std::fs::read_dir(base) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else {
                    continue;
                };
                if !Path::new("/proc").join(pid).exists() {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        let dir = base.join(format!("{prefix}{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create scratch directory");
        dir
    })
}

/// Whether `program --version` runs. When it does not: panics under CI, otherwise says
/// once that the tests needing it are skipped and returns false.
pub fn have(program: &str) -> bool {
    static SEEN: OnceLock<Mutex<HashMap<String, Result<(), String>>>> = OnceLock::new();
    let mut seen = SEEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let found = seen.entry(program.to_owned()).or_insert_with(|| {
        let found = match Command::new(program).arg("--version").output() {
            Ok(out) if out.status.success() => Ok(()),
            Ok(out) => Err(format!("`{program} --version` failed: {}", out.status)),
            Err(e) => Err(format!("cannot run `{program}`: {e}")),
        };
        if let Err(why) = &found
            && std::env::var_os("CI").is_none()
        {
            // Straight to stderr, past libtest's capture, so the skip is seen.
            let _ = writeln!(
                std::io::stderr(),
                "{}: skipping the tests that need {program}: {why}",
                env!("CARGO_CRATE_NAME")
            );
        }
        found
    });
    match found {
        Ok(()) => true,
        Err(why) if std::env::var_os("CI").is_some() => {
            panic!("{why}; {program} is required to check the wire format contract under CI")
        }
        Err(_) => false,
    }
}

/// `cc` flags every C file of the project must pass.
pub const STRICT: &[&str] = &["-std=c99", "-Wall", "-Wextra", "-Werror"];

/// Compiles C sources into `name` in the scratch directory, failing the test with the
/// compiler's messages on error.
pub fn compile(name: &str, sources: &[&Path], flags: &[&str]) -> PathBuf {
    let out = scratch().join(name);
    let result = Command::new("cc")
        .args(flags)
        .arg("-I")
        .arg(include_dir())
        .arg("-o")
        .arg(&out)
        .args(sources)
        .output()
        .expect("run cc");
    assert!(
        result.status.success(),
        "cc {flags:?} {sources:?} failed:\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    out
}

pub fn compile_snippet(name: &str, source: &str, flags: &[&str]) -> PathBuf {
    let src = scratch().join(format!("{name}.c"));
    std::fs::write(&src, source).expect("write C source");
    compile(name, &[&src], flags)
}

/// docs/examples/watchd-dump.c, compiled once per test binary.
pub fn watchd_dump() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let src = workspace_root().join("docs/examples/watchd-dump.c");
        compile("watchd-dump", &[&src], STRICT)
    })
}

/// Runs `bin` with `input` on an ordinary pipe as standard input.
pub fn run(bin: &Path, args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_vec();
    // Write from another thread so a large input cannot deadlock against unread output.
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().expect("wait");
    // A reader that stops early (malformed input) closes its end: that is not our failure.
    let _ = writer.join().expect("writer thread");
    out
}

/// Runs `bin` with standard input a regular file holding `input`, where a read() returns
/// as much as it can rather than one packet.
pub fn run_on_file(bin: &Path, name: &str, input: &[u8]) -> Output {
    let path = scratch().join(name);
    std::fs::write(&path, input).expect("write input");
    let out = Command::new(bin)
        .stdin(std::fs::File::open(&path).expect("open input"))
        .output()
        .expect("run");
    let _ = std::fs::remove_file(&path);
    out
}

/// Standard output as lines, after checking the program succeeded and said nothing on
/// standard error.
pub fn stdout_lines(out: &Output) -> Vec<String> {
    assert!(
        out.status.success(),
        "failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone())
        .expect("UTF-8 output")
        .lines()
        .map(str::to_owned)
        .collect()
}
