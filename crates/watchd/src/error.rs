//! The errors callers see, each a D-Bus error `org.watchd.Watchd1.Error.<Name>` with a
//! message a person can act on.
#![forbid(unsafe_code)]

#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.watchd.Watchd1.Error")]
pub enum Error {
    #[zbus(error)]
    ZBus(zbus::Error),
    /// An option, filter or argument is malformed or out of range.
    InvalidArgument(String),
    /// The watch kind does not exist or its source is disabled.
    UnknownKind(String),
    /// A path or object named in the options does not exist.
    NotFound(String),
    /// A per-uid or global limit from the configuration was reached.
    LimitExceeded(String),
    /// The caller may not do this, or may not see this object.
    AccessDenied(String),
    /// The subscription already has a watch with this tag.
    DuplicateTag(String),
    /// The subscription has no watch with this tag.
    NoSuchWatch(String),
    /// The object exists but is of a kind the daemon cannot watch (e.g. a KCM: cache).
    NotSupported(String),
    /// The daemon could not do what was asked (e.g. the kernel refused a pipe).
    Failed(String),
    /// Something the call waits for (polkitd's answer) did not come in time; the call
    /// changed nothing and may be made again.
    Timeout(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::InvalidArgument(message.into())
    }
}

/// Most bytes of a caller's string that an error or a log line repeats.
pub const ECHO_BYTES: usize = 200;

/// Shows a string a caller sent, cut to [`ECHO_BYTES`] on a character boundary with its
/// full length appended, for error messages and log lines: a caller must not be able to
/// make the daemon send or log a mebibyte for every refusal.
#[derive(Clone, Copy)]
pub struct Truncated<'a>(pub &'a str);

impl std::fmt::Display for Truncated<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = self.0;
        if text.len() <= ECHO_BYTES {
            return f.write_str(text);
        }
        let end = (0..=ECHO_BYTES)
            .rev()
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0);
        write!(f, "{}…({} bytes)", &text[..end], text.len())
    }
}

impl std::fmt::Debug for Truncated<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "\"{self}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_keeps_short_strings_and_cuts_long_ones_on_a_char_boundary() {
        assert_eq!(Truncated("/mnt").to_string(), "/mnt");
        let exact = "a".repeat(ECHO_BYTES);
        assert_eq!(Truncated(&exact).to_string(), exact);
        let long = "a".repeat(1 << 20);
        assert_eq!(
            Truncated(&long).to_string(),
            format!("{}…(1048576 bytes)", "a".repeat(ECHO_BYTES))
        );
        // 'é' is two bytes: the cut falls inside the last one and steps back.
        let accents = format!("{}é", "a".repeat(ECHO_BYTES - 1));
        let shown = Truncated(&accents).to_string();
        assert_eq!(
            shown,
            format!("{}…({} bytes)", "a".repeat(ECHO_BYTES - 1), ECHO_BYTES + 1)
        );
    }
}
