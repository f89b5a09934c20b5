//! The AFL++ harness: one instrumented binary for every target, the target named by
//! `WATCHD_FUZZ_TARGET` (fuzz/run sets it), so that adding a target needs no build change.

fn main() {
    let name = std::env::var("WATCHD_FUZZ_TARGET").unwrap_or_default();
    let Some(check) = watchd_fuzz::targets::find(&name) else {
        eprintln!(
            "WATCHD_FUZZ_TARGET must name a target, one of: {}",
            watchd_fuzz::targets::names().join(" ")
        );
        std::process::exit(2);
    };
    afl::fuzz!(|data: &[u8]| {
        check(data);
    });
}
