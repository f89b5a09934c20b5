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
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::InvalidArgument(message.into())
    }
}
