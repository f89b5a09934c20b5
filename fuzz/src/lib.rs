//! watchd's fuzz targets: one check per parser of input others control, each a
//! `fn check(data: &[u8])` that panics when the parser breaks a promise (it panicked, or
//! what it returned contradicts its input). docs/fuzzing.md says how to run them and how to
//! add one.
//!
//! The checks are plain Rust with no fuzzer in them: `src/main.rs` hands them to AFL++, and
//! crates/watchd/tests/fuzz_regressions.rs runs them on every committed corpus and
//! regression input under `cargo test`.

#[path = "targets/mod.rs"]
pub mod targets;
