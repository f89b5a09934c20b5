//! The targets, one module each (`NAME.rs` with `pub fn check(data: &[u8])`). To add one:
//! write the file and add its name to the list below; fuzz/run, CI and the regression test
//! pick it up, and `fuzz/corpus/NAME/` holds its seeds.

macro_rules! targets {
    ($($name:ident),* $(,)?) => {
        $(pub mod $name;)*

        /// Every target: its name and its check.
        pub const ALL: &[(&str, fn(&[u8]))] = &[$((stringify!($name), $name::check)),*];
    };
}

targets! {
    record,
    mountinfo,
    uevent,
    key_description,
    krb5,
    config,
    options,
    fanotify,
    statmount,
    quota,
}

/// The check named `name`.
pub fn find(name: &str) -> Option<fn(&[u8])> {
    ALL.iter()
        .find(|(n, _)| *n == name)
        .map(|(_, check)| *check)
}

/// Every target's name, in the order above.
pub fn names() -> Vec<&'static str> {
    ALL.iter().map(|(n, _)| *n).collect()
}

/// Whether `part` lies within `whole` (a parser's borrowed result points into its input).
pub fn within(whole: &[u8], part: &[u8]) -> bool {
    let (w, p) = (whole.as_ptr_range(), part.as_ptr_range());
    part.is_empty() || (w.start <= p.start && p.end <= w.end)
}
