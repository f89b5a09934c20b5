//! watchd's command line as clap reads it. The daemon parses it; `watchd-docgen` makes
//! watchd(8) from the same definitions, so the page cannot drift.

use std::path::{Path, PathBuf};

use clap::Parser;

use crate::conf;

/// Gathers device, mount, key and file events and hands each D-Bus subscriber a packet pipe
/// of typed records.
///
/// One instance per bus: a second watchd exits with an error naming the one that owns
/// org.watchd.Watchd1. SIGHUP re-reads the configuration file: [limits] and [pipe] apply to
/// new requests at once, a bad file is refused (logged) and the old values stay.
#[derive(Debug, Parser)]
#[command(version)]
pub struct Args {
    /// D-Bus address to serve on instead of the system bus
    /// (default: $DBUS_SYSTEM_BUS_ADDRESS, else the system bus's well-known socket).
    #[arg(long, value_name = "ADDR")]
    pub bus_address: Option<String>,

    /// Configuration file.
    #[arg(long, value_name = "FILE", default_value = conf::DEFAULT_PATH)]
    pub config: PathBuf,

    /// Check a configuration file (default: the --config file), print every key with the
    /// value in effect, defaults included, and exit: 0 when it is valid. Connects to no bus
    /// and starts no source.
    #[arg(long, value_name = "FILE", num_args = 0..=1)]
    pub check_config: Option<Option<PathBuf>>,
}

impl Args {
    /// A file named on the command line must exist; only the default path may be missing
    /// (the built-in defaults then apply).
    pub fn config_is_explicit(&self) -> bool {
        self.config != Path::new(conf::DEFAULT_PATH)
    }
}
