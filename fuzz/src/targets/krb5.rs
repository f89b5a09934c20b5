//! Kerberos credential caches, whose bytes and names their owner controls: the first byte
//! picks the parser, the rest is its input.
//! - 0: `decode_primary` (a `krb_ccache:primary` key's payload): the name is the bytes the
//!   length names, taken from the payload;
//! - 1: `file_principal` / `parse_principal` (a FILE cache's header and principal): the
//!   bytes used lie within the input, and a principal names its realm after an '@';
//! - 2: `parse_cache_name` (the `cache` option: KEYRING:, FILE:, DIR:…) for uid 1000: a
//!   FILE or DIR target is an absolute path, a KEYRING one keeps the name given, and an
//!   error quotes the name only shortened;
//! - 3: `default_ccache_name` + `expand` (krb5.conf text): the value comes from the text.

use watchd::sources::krb5::collection::{decode_primary, file_principal, parse_principal};
use watchd::sources::krb5::names::{Target, default_ccache_name, expand, parse_cache_name};

pub fn check(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => {
            if let Some(name) = decode_primary(rest) {
                assert_eq!(rest.get(8..8 + name.len()), Some(name.as_bytes()));
            }
        }
        1 => {
            if let Some((name, used)) = parse_principal(rest) {
                assert!(used <= rest.len());
                assert!(name.contains('@'));
            }
            if let Some(name) = file_principal(rest) {
                assert!(name.contains('@'));
            }
        }
        2 => {
            let Ok(name) = std::str::from_utf8(rest) else {
                return;
            };
            match parse_cache_name(name, 1000) {
                Ok(Target::Files { dir, .. }) => assert!(dir.starts_with('/'), "{dir:?}"),
                Ok(Target::Keyring { collection, .. }) => assert_eq!(collection.name, name),
                Err(e) => assert!(e.to_string().len() < 1024, "error quotes all: {e}"),
            }
        }
        _ => {
            let Ok(text) = std::str::from_utf8(rest) else {
                return;
            };
            if let Some(value) = default_ccache_name(text) {
                assert!(text.contains(&value));
                let _ = expand(&value, 1000);
            }
        }
    }
}
