//! The `a{sv}` options of `Subscribe` and `AddWatch`, as the bus hands them over: the first
//! byte picks the byte order, the rest is decoded as a D-Bus-serialized `a{sv}` into
//! `OptionMap` (the bounded decoder), then taken apart as the manager and the sources do
//! without touching the system: `depth`, `initial`, `filters`, a device watch's match, a
//! keys `key`/`uid`/`nested` and a krb5 `cache` name, then `finish`. Promises: no panic, and
//! every refusal is a short message (the decoder's bounds hold: a caller's 32 MiB never
//! comes back in an error).

use watchd::options::{OptionMap, Options};
use watchd::sources::devices::DeviceMatch;
use watchd::sources::krb5::names::parse_cache_name;
use zbus::wire::serialized::{Context, Data};
use zbus::wire::{BE, LE};

/// Longer than any error the daemon words (they quote at most a shortened value).
const MAX_ERROR: usize = 1024;

fn short<T, E: std::fmt::Display>(result: Result<T, E>) -> Option<T> {
    result
        .inspect_err(|e| {
            let text = e.to_string();
            assert!(text.len() < MAX_ERROR, "{} byte error: {text:.200}", text.len());
        })
        .ok()
}

pub fn check(data: &[u8]) {
    let Some((&order, body)) = data.split_first() else {
        return;
    };
    let context = Context::new(if order & 1 == 0 { LE } else { BE }, 0);
    let bytes = Data::new(body, context);
    let Some((map, _)) = short(bytes.deserialize::<OptionMap>()) else {
        return;
    };
    let Some(mut options) = short(Options::new(map)) else {
        return;
    };
    short(options.take_u32("depth"));
    short(options.take_bool("initial"));
    short(options.take_filters());
    short(DeviceMatch::from_options(&mut options));
    short(options.take_string("key"));
    short(options.take_u32("uid"));
    short(options.take_bool("nested"));
    short(options.take_bool("signal"));
    short(options.take_string("path"));
    if let Some(Some(cache)) = short(options.take_string("cache")) {
        short(parse_cache_name(&cache, 1000));
    }
    short(options.finish("fuzz", &[]));
}
