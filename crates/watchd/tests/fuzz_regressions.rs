//! Every committed fuzz input through its target's check, as the fuzzer ran it: the seed
//! corpora (fuzz/corpus/TARGET/) and the inputs that once crashed or hung a parser
//! (fuzz/regressions/TARGET/, each fixed since). The checks are the fuzz targets' own code
//! (fuzz/src/targets/), so a parser that breaks a promise again fails here, under plain
//! `cargo test`, without AFL++. docs/fuzzing.md.
#![forbid(unsafe_code)]

use std::path::Path;
use std::time::{Duration, Instant};

#[allow(dead_code)]
#[path = "../../../fuzz/src/targets/mod.rs"]
mod targets;

/// One input's check, however slow the machine, stays well under this: a regression that
/// was a hang fails here instead of stalling the suite.
const SLOW: Duration = Duration::from_secs(10);

#[test]
fn every_committed_fuzz_input_passes_its_target_check() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut failed = Vec::new();
    for (name, check) in targets::ALL {
        let mut seeds = 0;
        for dir in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(fuzz.join(dir).join(name)) else {
                continue;
            };
            for entry in entries {
                let path = entry.expect("a readable directory").path();
                let data = std::fs::read(&path).expect("a readable input");
                let started = Instant::now();
                let outcome = std::panic::catch_unwind(|| check(&data));
                if outcome.is_err() || started.elapsed() > SLOW {
                    failed.push(path.display().to_string());
                }
                seeds += usize::from(dir == "corpus");
            }
        }
        assert!(
            seeds > 0,
            "target {name} has no seeds in fuzz/corpus/{name}/"
        );
    }
    assert!(
        failed.is_empty(),
        "inputs that fail their check: {failed:#?}"
    );
}
