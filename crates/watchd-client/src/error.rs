//! The one error type of this crate.

use std::fmt;

use zbus::DBusError;

/// What can go wrong talking to watchd.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No connection to the bus could be made at `address`.
    #[error("can't connect to the bus at {address}: {}", connect_reason(source))]
    Connect {
        /// The address that was tried.
        address: String,
        #[source]
        source: zbus::Error,
    },

    /// A D-Bus error reply: from watchd (`org.watchd.Watchd1.Error.*`, see [`DaemonError`]),
    /// or from the bus on its behalf (e.g. `org.freedesktop.DBus.Error.ServiceUnknown` when
    /// watchd is not running). Displays as "message (name)".
    #[error("{}", daemon_display(name, message))]
    Daemon {
        /// The D-Bus error name.
        name: String,
        /// The human message that came with it (empty when there was none).
        message: String,
    },

    /// Any other D-Bus failure (connection lost, malformed reply, …).
    #[error("D-Bus: {0}")]
    Bus(#[source] zbus::Error),

    /// The daemon's reply did not have the shape the contract promises.
    #[error("unexpected reply from watchd: {0}")]
    Protocol(String),

    /// A watch option's value could not be encoded.
    #[error("option {key:?}: {source}")]
    InvalidOption {
        key: String,
        #[source]
        source: zbus::Error,
    },

    /// Reading the subscription pipe failed.
    #[error("reading the subscription pipe: {0}")]
    Io(#[from] std::io::Error),

    /// A packet read from the pipe is not a record this version can read.
    #[error("malformed record: {0}")]
    Decode(#[from] watchd_proto::DecodeError),
}

/// Why a connection failed, without zbus repeating the address.
fn connect_reason(e: &zbus::Error) -> String {
    match e {
        zbus::Error::Connection(io, _) => io.to_string(),
        e => e.to_string(),
    }
}

fn daemon_display(name: &str, message: &str) -> String {
    if message.is_empty() {
        name.to_owned()
    } else {
        format!("{message} ({name})")
    }
}

impl From<zbus::Error> for Error {
    fn from(e: zbus::Error) -> Self {
        match e {
            zbus::Error::MethodError(name, message, _) => Error::Daemon {
                name: name.to_string(),
                message: message.unwrap_or_default(),
            },
            zbus::Error::FDO(e) => Error::Daemon {
                name: e.name().to_string(),
                message: e.description().unwrap_or_default().to_owned(),
            },
            zbus::Error::DBus(e) => Error::Daemon {
                name: e.name().to_string(),
                message: e.description().unwrap_or_default().to_owned(),
            },
            e => Error::Bus(e),
        }
    }
}

impl From<zbus::fdo::Error> for Error {
    fn from(e: zbus::fdo::Error) -> Self {
        Error::from(zbus::Error::from(e))
    }
}

impl Error {
    /// The D-Bus error name, for [`Error::Daemon`].
    pub fn dbus_name(&self) -> Option<&str> {
        match self {
            Error::Daemon { name, .. } => Some(name),
            _ => None,
        }
    }

    /// Which of watchd's own errors this is, if it is one.
    pub fn daemon_error(&self) -> Option<DaemonError> {
        DaemonError::from_name(self.dbus_name()?)
    }

    /// True when the reply says nobody owns watchd's bus name and it cannot be started.
    pub fn is_daemon_absent(&self) -> bool {
        matches!(
            self.dbus_name(),
            Some(
                "org.freedesktop.DBus.Error.ServiceUnknown"
                    | "org.freedesktop.DBus.Error.NameHasNoOwner"
            )
        )
    }
}

/// Prefix of every error name watchd itself replies with.
pub const ERROR_PREFIX: &str = "org.watchd.Watchd1.Error.";

/// watchd's own errors (`org.watchd.Watchd1.Error.<variant>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DaemonError {
    InvalidArgument,
    UnknownKind,
    NotFound,
    LimitExceeded,
    AccessDenied,
    DuplicateTag,
    NoSuchWatch,
    Failed,
    /// polkitd did not answer within the daemon's `authorization.timeout_ms`; nothing was
    /// changed and the call may be made again.
    Timeout,
}

impl DaemonError {
    pub const ALL: [DaemonError; 9] = [
        DaemonError::InvalidArgument,
        DaemonError::UnknownKind,
        DaemonError::NotFound,
        DaemonError::LimitExceeded,
        DaemonError::AccessDenied,
        DaemonError::DuplicateTag,
        DaemonError::NoSuchWatch,
        DaemonError::Failed,
        DaemonError::Timeout,
    ];

    /// The last component of the error name.
    pub fn short_name(self) -> &'static str {
        match self {
            DaemonError::InvalidArgument => "InvalidArgument",
            DaemonError::UnknownKind => "UnknownKind",
            DaemonError::NotFound => "NotFound",
            DaemonError::LimitExceeded => "LimitExceeded",
            DaemonError::AccessDenied => "AccessDenied",
            DaemonError::DuplicateTag => "DuplicateTag",
            DaemonError::NoSuchWatch => "NoSuchWatch",
            DaemonError::Failed => "Failed",
            DaemonError::Timeout => "Timeout",
        }
    }

    /// Parses a full D-Bus error name such as `org.watchd.Watchd1.Error.NotFound`.
    pub fn from_name(name: &str) -> Option<Self> {
        let short = name.strip_prefix(ERROR_PREFIX)?;
        Self::ALL.into_iter().find(|e| e.short_name() == short)
    }
}

impl fmt::Display for DaemonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{ERROR_PREFIX}{}", self.short_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_error_displays_message_then_name() {
        let e = Error::Daemon {
            name: "org.watchd.Watchd1.Error.NotFound".into(),
            message: "/nope does not exist".into(),
        };
        assert_eq!(
            e.to_string(),
            "/nope does not exist (org.watchd.Watchd1.Error.NotFound)"
        );
        assert_eq!(e.daemon_error(), Some(DaemonError::NotFound));
        let bare = Error::Daemon {
            name: "org.example.E".into(),
            message: String::new(),
        };
        assert_eq!(bare.to_string(), "org.example.E");
        assert_eq!(bare.daemon_error(), None);
    }

    #[test]
    fn daemon_error_names_round_trip() {
        for e in DaemonError::ALL {
            assert_eq!(DaemonError::from_name(&e.to_string()), Some(e));
        }
        assert_eq!(
            DaemonError::from_name("org.watchd.Watchd1.Error.Nope"),
            None
        );
        assert_eq!(DaemonError::from_name("NotFound"), None);
    }

    #[test]
    fn fdo_errors_keep_their_name() {
        let e = Error::from(zbus::fdo::Error::ServiceUnknown("not activatable".into()));
        assert_eq!(
            e.to_string(),
            "not activatable (org.freedesktop.DBus.Error.ServiceUnknown)"
        );
        assert!(e.is_daemon_absent());
    }
}
