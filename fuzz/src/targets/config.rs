//! The configuration file, TOML text to a validated `Config`, by the function
//! `--check-config` and the daemon's start use (`Config::parse`). Promises: a config that
//! is accepted prints (`to_toml`, what `--check-config` shows) to a file that is accepted
//! again as the same config; an error names the file.

use watchd::conf::Config;

pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, "fuzz.toml") {
        Ok(config) => {
            let printed = config.to_toml().expect("an accepted config prints");
            let again = Config::parse(&printed, "printed.toml")
                .unwrap_or_else(|e| panic!("printed config refused: {e}\n{printed}"));
            assert_eq!(again, config);
            let _ = config.values();
        }
        Err(e) => assert!(e.to_string().starts_with("fuzz.toml")),
    }
}
