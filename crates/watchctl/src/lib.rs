//! watchctl's command line as clap reads it. The binary parses it; `watchd-docgen` makes
//! watchctl(1) and the shell completions from the same definitions, so they cannot drift.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "watchctl",
    version,
    about = "Query watchd and watch for changes"
)]
pub struct Cli {
    /// D-Bus address of the bus watchd is on [default: $DBUS_SYSTEM_BUS_ADDRESS, else the
    /// system bus]
    #[arg(long, global = true, value_name = "ADDR")]
    pub bus_address: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Show the daemon's version, its sources, and how many subscriptions and watches exist
    Status {
        /// Print one JSON object
        #[arg(long)]
        json: bool,
    },
    /// Set a watch and print one line per event until interrupted, the watch or the
    /// subscription ends, `--count` records are printed, or stdout is closed. Several kinds
    /// share one subscription when each further one follows `--`:
    /// `watch mounts --path /mnt -- devices --subsystem block`
    Watch {
        #[command(subcommand)]
        kind: WatchKind,
    },
    /// List the kinds of watch the daemon serves with how each gets its events, and your own
    /// subscriptions with their watches
    List {
        /// Print one JSON object
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug, Clone)]
pub enum WatchKind {
    /// Mounts appearing, going away, moving or changing in your mount namespace
    Mounts {
        /// Only mounts at or under this path (made absolute if relative)
        #[arg(long, value_name = "P")]
        path: Option<PathBuf>,

        #[command(flatten)]
        common: WatchArgs,
    },
    /// Devices appearing, going away or changing (udev events): add, remove, change, move,
    /// online, offline, bind, unbind
    Devices {
        /// Only devices of this subsystem, and of this device type when given: block,
        /// block/partition, usb/usb_device
        #[arg(long, value_name = "S[/DEVTYPE]", value_parser = parse_subsystem)]
        subsystem: Option<String>,

        /// Only devices with this udev tag, e.g. systemd, uaccess
        #[arg(long, value_name = "T", value_parser = parse_nonempty)]
        tag: Option<String>,

        /// Only devices with a property matching KEY=GLOB (globs in key and value, e.g.
        /// ID_FS_TYPE=ext*, DM_*=*); when repeated, every one must match
        #[arg(long = "property", value_name = "K=GLOB", value_parser = parse_property)]
        properties: Vec<String>,

        /// Only devices whose kernel name matches this glob, e.g. sd*, loop[0-9]
        #[arg(long, value_name = "GLOB", value_parser = parse_nonempty)]
        sysname: Option<String>,

        #[command(flatten)]
        common: WatchArgs,
    },
    /// A key or keyring changing: instantiated, updated, linked, unlinked, cleared, revoked,
    /// invalidated, setattr (the kernel's key notifications)
    Keys {
        /// The key or keyring to watch: @user (your user keyring), @user-session (your user
        /// session keyring), @persistent (your persistent keyring, where MIT krb5 keeps
        /// KEYRING:persistent caches), or a key's serial number as `keyctl show` prints it
        #[arg(
            value_name = "SPEC",
            default_value = KEY_SPEC_DEFAULT,
            value_parser = parse_key_spec,
            allow_negative_numbers = true
        )]
        spec: String,

        /// Whose keyring @user, @user-session or @persistent means [default: yours];
        /// another user's needs an administrator's authorization. Not with a key serial
        #[arg(long, value_name = "UID")]
        uid: Option<u32>,

        /// Also watch the keys in the keyrings linked into it, and in those linked into
        /// them (the whole tree)
        #[arg(long)]
        nested: bool,

        #[command(flatten)]
        common: WatchArgs,
    },
    /// Files and directories under a path being created, deleted, written (modify,
    /// close_write), changed (attrib) or moved (moved_from, moved_to, rename); only what
    /// you could look up yourself is shown
    Files {
        /// The file or directory to watch (made absolute if relative); for a directory, the
        /// names in it and their changes
        #[arg(value_name = "PATH")]
        path: PathBuf,

        /// Everything below the directory, at any depth
        #[arg(long)]
        subtree: bool,

        #[command(flatten)]
        common: WatchArgs,
    },
    /// Errors the filesystems mounted in your mount namespace report (the kernel's
    /// FAN_FS_ERROR): errno, how many, device, type and mount points; --initial first shows
    /// what ext4 has counted (on Linux 6.18 only ext4 reports errors)
    Fserrors {
        /// Only the filesystem this path is on (made absolute if relative); it must be one
        /// that reports errors
        #[arg(value_name = "PATH")]
        path: Option<PathBuf>,

        #[command(flatten)]
        common: WatchArgs,
    },
    /// Kerberos credential caches being created (kinit), changed (kinit again, kinit -R,
    /// new tickets), made primary (kswitch) or destroyed (kdestroy)
    Krb5 {
        /// The cache or collection to watch, as MIT krb5 names it, e.g.
        /// KEYRING:persistent:1000 or FILE:/tmp/krb5cc_1000 [default: $KRB5CCNAME when set
        /// and not empty, as MIT krb5 would use it for this process; else the daemon uses
        /// krb5.conf's default_ccache_name for your uid]
        #[arg(long, value_name = "NAME", value_parser = parse_nonempty)]
        cache: Option<String>,

        #[command(flatten)]
        common: WatchArgs,
    },
    /// Quota warnings: your user's or one of your groups' quota exceeding its soft or hard
    /// limit (blocks or inodes), its grace time expiring, or usage falling back below a
    /// limit, with where the filesystem is mounted. Also before EDQUOT, which the kernel
    /// does not warn of: quota_low, quota_still_lower (each further step down),
    /// quota_recovered, for what your user and groups may still use. By default below 10 %
    /// of the limit, again at each further 1 %, at most every 10 minutes
    Quota {
        /// Every user's and group's warnings, and who caused them (needs an administrator's
        /// authorization, org.watchd.Watchd1.watch-other-users-quota); the thresholds still
        /// cover only your own user and groups
        #[arg(long)]
        all: bool,

        #[command(flatten)]
        thresholds: Box<QuotaThresholds>,

        #[command(flatten)]
        common: WatchArgs,
    },
    /// A filesystem running out of space (or inodes): low, still_lower (each further
    /// step down), recovered (back above the threshold plus one step). By default below 5 %
    /// unless 1 GiB is available, again at each further 1 %, at most every 10 minutes
    Space {
        /// A path on the filesystem to watch (made absolute if relative) [default: every
        /// filesystem of your mount namespace mounted read-write, with a size, not a kernel
        /// interface]
        #[arg(value_name = "PATH")]
        path: Option<PathBuf>,

        #[command(flatten)]
        thresholds: Box<SpaceThresholds>,

        #[command(flatten)]
        common: WatchArgs,
    },
}

impl WatchKind {
    /// The options every kind has.
    pub fn common(&self) -> &WatchArgs {
        match self {
            WatchKind::Mounts { common, .. }
            | WatchKind::Devices { common, .. }
            | WatchKind::Keys { common, .. }
            | WatchKind::Krb5 { common, .. }
            | WatchKind::Files { common, .. }
            | WatchKind::Fserrors { common, .. }
            | WatchKind::Quota { common, .. }
            | WatchKind::Space { common, .. } => common,
        }
    }

    pub fn common_mut(&mut self) -> &mut WatchArgs {
        match self {
            WatchKind::Mounts { common, .. }
            | WatchKind::Devices { common, .. }
            | WatchKind::Keys { common, .. }
            | WatchKind::Krb5 { common, .. }
            | WatchKind::Files { common, .. }
            | WatchKind::Fserrors { common, .. }
            | WatchKind::Quota { common, .. }
            | WatchKind::Space { common, .. } => common,
        }
    }

    /// The kind as `AddWatch` names it.
    pub fn name(&self) -> &'static str {
        match self {
            WatchKind::Mounts { .. } => "mounts",
            WatchKind::Devices { .. } => "devices",
            WatchKind::Keys { .. } => "keys",
            WatchKind::Krb5 { .. } => "krb5",
            WatchKind::Files { .. } => "files",
            WatchKind::Fserrors { .. } => "fserrors",
            WatchKind::Quota { .. } => "quota",
            WatchKind::Space { .. } => "space",
        }
    }
}

/// When a space watch warns (`watch space`).
#[derive(Args, Debug, Default, Clone)]
pub struct SpaceThresholds {
    /// Warn when less than this is available to unprivileged users: a percentage of the
    /// filesystem (5%) or a size (2G, 512M, 4096) [default: 5%]
    #[arg(long, value_name = "PCT|SIZE", value_parser = parse_nonempty)]
    pub below: Option<String>,

    /// ...unless at least this much is available: a size, or none [default: 1G with a
    /// percentage --below, none with a size]
    #[arg(long, value_name = "SIZE", value_parser = parse_nonempty)]
    pub min_free: Option<String>,

    /// Warn again at each further drop of this much; recovered needs the threshold plus
    /// this much (the hysteresis margin): a percentage or a size [default: 1%]
    #[arg(long, value_name = "PCT|SIZE", value_parser = parse_nonempty)]
    pub step: Option<String>,

    /// At most one warning per filesystem every S seconds; one due sooner waits
    /// [default: 600]
    #[arg(long, value_name = "S")]
    pub min_interval: Option<u32>,

    /// Also warn when free inodes fall below this: a percentage or a count
    #[arg(long, value_name = "PCT|N", value_parser = parse_nonempty)]
    pub inodes_below: Option<String>,

    /// The step (and margin) for inodes: a percentage or a count [default: 1%]
    #[arg(long, value_name = "PCT|N", value_parser = parse_nonempty, requires = "inodes_below")]
    pub inodes_step: Option<String>,
}

/// When a quota watch warns before `EDQUOT` (`watch quota`): lines for the room, what your
/// user or group may still use (the hard limit, or the soft one when there is no hard one,
/// less the usage).
#[derive(Args, Debug, Default, Clone)]
pub struct QuotaThresholds {
    /// Warn when what may still be used before EDQUOT falls below this: a percentage of the
    /// limit (10%), a size (100M, 4096), or none (no thresholds for space) [default: 10%]
    #[arg(long, value_name = "PCT|SIZE|none", value_parser = parse_nonempty)]
    pub below: Option<String>,

    /// Warn again at each further drop of this much; quota_recovered needs the threshold
    /// plus this much (the hysteresis margin): a percentage of the limit or a size
    /// [default: 1%]
    #[arg(long, value_name = "PCT|SIZE", value_parser = parse_nonempty)]
    pub step: Option<String>,

    /// The same for inodes: a percentage of the inode limit, a count, or none
    /// [default: 10%]
    #[arg(long, value_name = "PCT|N|none", value_parser = parse_nonempty)]
    pub inodes_below: Option<String>,

    /// The step (and margin) for inodes: a percentage or a count [default: 1%]
    #[arg(long, value_name = "PCT|N", value_parser = parse_nonempty)]
    pub inodes_step: Option<String>,

    /// At most one quota_low or quota_still_lower per quota every S seconds; one due sooner
    /// waits [default: 600]
    #[arg(long, value_name = "S")]
    pub min_interval: Option<u32>,
}

/// A further watch of `watch`, the words after a `--`: a kind and its options, read as
/// `watch` reads its own. Usage messages call it [`FURTHER_WATCH`].
#[derive(Parser, Debug)]
#[command(
    name = FURTHER_WATCH,
    about = "Another watch in the same subscription: a kind and its own options"
)]
pub struct FurtherWatch {
    #[command(subcommand)]
    pub kind: WatchKind,
}

/// What usage messages about a further watch call the words before it.
pub const FURTHER_WATCH: &str = "watchctl watch … --";

/// How `watch` prints its records.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One readable line per record
    Text,
    /// One JSON object per line
    Json,
    /// Key notifications as `keyctl watch` (keyutils) prints them, e.g. `255913279 link
    /// 340681059` (keys watches only)
    Keyctl,
}

/// How text lines show the record's time.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeFormat {
    /// HH:MM:SS.mmm, local time
    Clock,
    /// ISO 8601 date and time with the local offset, e.g. 2026-12-05T21:14:03.123+00:00
    Iso,
}

#[derive(Args, Debug, Default, Clone)]
pub struct WatchArgs {
    /// Print the current state first (marked as snapshot), then the changes
    #[arg(long)]
    pub initial: bool,

    /// Print one JSON object per line (the same as --format json)
    #[arg(long, conflicts_with = "format")]
    pub json: bool,

    /// How to print the records [default: text]
    #[arg(long, value_name = "F")]
    pub format: Option<Format>,

    /// How text lines show the time [default: clock]; with JSON, iso adds a "time" member
    #[arg(long, value_name = "T")]
    pub time: Option<TimeFormat>,

    /// Let polkit ask you to authenticate when the watch needs it (through your
    /// authentication agent) instead of refusing
    #[arg(long)]
    pub interactive: bool,

    /// Pipe capacity in events [default: the daemon's, 16]
    #[arg(long, value_name = "N")]
    pub depth: Option<u32>,

    /// Number the watch's records carry (the JSON tag field), not zero [default: the
    /// lowest number no other watch of the command has: 1 for the first]
    #[arg(
        long = "watch-tag",
        value_name = "N",
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub watch_tag: Option<u64>,

    /// Exit (with status 0) after printing N records: events and snapshot records count,
    /// the pipe's own lines (`snapshot complete`, lost records, the watch ending) do not
    #[arg(
        long,
        value_name = "N",
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub count: Option<u64>,

    /// When watchd goes away (restarted, stopped, the bus restarted), wait for it and
    /// subscribe again, each watch sending its current state first (snapshot records), instead
    /// of exiting with status 3
    #[arg(long)]
    pub reconnect: bool,

    /// Another watch in the same subscription: a kind and its own options, as after
    /// `watch`, e.g. `-- devices --subsystem block`; another `--` adds one more. --json,
    /// --format, --time, --depth, --count and --reconnect are the command's, given with any
    /// kind
    #[arg(last = true, value_name = "KIND [OPTIONS]")]
    pub more: Vec<String>,
}

/// `--subsystem`: `S` or `S/DEVTYPE`, neither empty.
pub fn parse_subsystem(value: &str) -> Result<String, String> {
    let ok = match value.split_once('/') {
        Some((subsystem, devtype)) => {
            !subsystem.is_empty() && !devtype.is_empty() && !devtype.contains('/')
        }
        None => !value.is_empty(),
    };
    if ok {
        Ok(value.to_owned())
    } else {
        Err("expected a subsystem, or SUBSYSTEM/DEVTYPE (e.g. block or block/partition)".into())
    }
}

/// `--property`: `KEY=GLOB` with a key; the glob may be empty (an empty value).
pub fn parse_property(value: &str) -> Result<String, String> {
    match value.split_once('=') {
        Some((key, _)) if !key.is_empty() => Ok(value.to_owned()),
        _ => Err("expected KEY=GLOB, e.g. ID_FS_TYPE=ext4 or 'DM_*=*'".into()),
    }
}

/// What `watch keys` watches when no SPEC is given.
pub const KEY_SPEC_DEFAULT: &str = "@user";

/// The keyrings `watch keys` names with `@`: the daemon resolves them for the caller (or
/// for `--uid`).
pub const KEY_SPECS: [&str; 3] = ["@user", "@user-session", "@persistent"];

/// `watch keys SPEC`: one of [`KEY_SPECS`], or a key serial (a positive decimal number that
/// fits the kernel's `key_serial_t`), sent in its canonical form.
pub fn parse_key_spec(value: &str) -> Result<String, String> {
    if KEY_SPECS.contains(&value) {
        return Ok(value.to_owned());
    }
    const EXPECTED: &str = "expected @user, @user-session, @persistent or a key serial number";
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return match value.parse::<i32>() {
            Ok(serial) if serial > 0 => Ok(serial.to_string()),
            Ok(_) => Err(format!("{EXPECTED}: key serial numbers start at 1")),
            Err(_) => Err(format!(
                "{EXPECTED}: a key serial number is at most {}",
                i32::MAX
            )),
        };
    }
    let hint = match value {
        "@u" => " (keyctl's @u is @user here)",
        "@us" => " (keyctl's @us is @user-session here)",
        _ if value.starts_with('-') => " (the kernel's negative special ids are not accepted)",
        _ => "",
    };
    Err(format!(
        "{EXPECTED}, e.g. 123456789 as `keyctl show` prints it{hint}"
    ))
}

pub fn parse_nonempty(value: &str) -> Result<String, String> {
    if value.is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(value.to_owned())
    }
}
