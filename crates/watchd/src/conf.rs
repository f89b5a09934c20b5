//! The configuration file (`/etc/watchd/watchd.toml`; `data/watchd.toml` is the default).
#![forbid(unsafe_code)]

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Where the daemon looks when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/watchd/watchd.toml";

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub authorization: Authorization,
    pub limits: Limits,
    pub pipe: PipeConf,
    pub sources: Sources,
    pub keys: KeysConf,
    pub space: SpaceConf,
}

/// The space source's adaptive timer: each filesystem is looked at again after the time it
/// would take to reach the nearest line of any watch on it at the fastest plausible rate,
/// within these bounds.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SpaceConf {
    /// The shortest time between two looks at a filesystem, in milliseconds.
    pub shortest_check_ms: u32,
    /// The longest, in milliseconds.
    pub longest_check_ms: u32,
    /// The fastest a filesystem is assumed to fill (or empty), in MiB per second.
    pub fill_rate_mib_per_s: u32,
    /// The fastest a filesystem is assumed to use up inodes, per second.
    pub inode_rate_per_s: u32,
}

impl Default for SpaceConf {
    fn default() -> Self {
        SpaceConf {
            shortest_check_ms: 1000,
            longest_check_ms: 300_000,
            fill_rate_mib_per_s: 1024,
            inode_rate_per_s: 100_000,
        }
    }
}

/// The key source's poller (kernels without watch queues).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KeysConf {
    /// How often every watched key tree is compared with its last state, in milliseconds.
    pub poll_interval_ms: u32,
}

impl Default for KeysConf {
    fn default() -> Self {
        KeysConf {
            poll_interval_ms: 1000,
        }
    }
}

/// Who decides whether a caller may set a watch.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Authorization {
    #[serde(serialize_with = "serialize_mode")]
    pub mode: crate::authority::Mode,
    /// The actions file whose defaults decide when polkitd does not.
    pub actions_file: std::path::PathBuf,
    /// How long one polkit check may take before the call fails with `Timeout`.
    pub timeout_ms: u32,
}

impl Default for Authorization {
    fn default() -> Self {
        Authorization {
            mode: Default::default(),
            actions_file: crate::authority::ACTIONS_FILE.into(),
            timeout_ms: 20_000,
        }
    }
}

/// `[authorization] mode` as the file spells it (`authority::Mode` only reads it).
fn serialize_mode<S: serde::Serializer>(
    mode: &crate::authority::Mode,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use crate::authority::Mode;
    serializer.serialize_str(match mode {
        Mode::Auto => "auto",
        Mode::Polkit => "polkit",
        Mode::Fallback => "fallback",
    })
}

/// Bounds on what clients can make the daemon hold.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub max_subscriptions: u32,
    pub max_subscriptions_per_uid: u32,
    pub max_watches_per_subscription: u32,
    pub max_watches_per_uid: u32,
    /// Pipe pages (4 KiB each, as the kernel granted them) all subscriptions hold together.
    pub max_pipe_pages: u32,
    /// Pipe pages one uid's subscriptions hold together. Root's own are also held to half of
    /// root's `fs.pipe-user-pages-soft`, which root's other services share.
    pub max_pipe_pages_per_uid: u32,
    /// Method calls of one uid the daemon works on at once; one more is refused at once.
    pub max_pending_calls_per_uid: u32,
    /// polkit checks of one uid awaiting polkitd's answer at once; one more is refused.
    pub max_polkit_checks_per_uid: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_subscriptions: 4096,
            max_subscriptions_per_uid: 64,
            max_watches_per_subscription: 64,
            max_watches_per_uid: 256,
            max_pipe_pages: 65536,
            max_pipe_pages_per_uid: 1024,
            max_pending_calls_per_uid: 32,
            max_polkit_checks_per_uid: 8,
        }
    }
}

/// Pipe capacity, counted in packets (one record each).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PipeConf {
    pub default_depth: u32,
    /// Above 256 packets (1 MiB) the kernel wants CAP_SYS_RESOURCE.
    pub max_depth: u32,
}

impl Default for PipeConf {
    fn default() -> Self {
        PipeConf {
            default_depth: 16,
            max_depth: 256,
        }
    }
}

/// Which sources run.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Sources {
    pub mounts: bool,
    pub devices: bool,
    pub keys: bool,
    pub krb5: bool,
    /// File events under a path (fanotify, FID mode; needs CAP_SYS_ADMIN).
    pub files: bool,
    /// Filesystem errors (fanotify FAN_FS_ERROR, filesystem marks; needs CAP_SYS_ADMIN).
    pub fserrors: bool,
    /// The kernel's quota warnings (generic netlink family VFS_DQUOT), each to the users it
    /// concerns.
    pub quota: bool,
    /// Free space and free inodes against thresholds (fstatfs on an adaptive timer).
    pub space: bool,
    /// Where device events come from: "auto" (udev when udevd runs, else the kernel),
    /// "udev" or "kernel".
    pub device_events: DeviceEvents,
    /// How mount changes are followed: "auto" (fanotify mount events and statmount where the
    /// kernel has them, 6.15+, else mountinfo), "fanotify" or "mountinfo".
    pub mount_events: MountEvents,
}

impl Default for Sources {
    fn default() -> Self {
        Sources {
            mounts: true,
            devices: true,
            keys: true,
            krb5: true,
            files: true,
            fserrors: true,
            quota: true,
            space: true,
            device_events: DeviceEvents::Auto,
            mount_events: MountEvents::Auto,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DeviceEvents {
    #[default]
    Auto,
    Udev,
    Kernel,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MountEvents {
    #[default]
    Auto,
    Fanotify,
    Mountinfo,
}

/// The sections and keys a reload (SIGHUP) applies to new requests; every other key is read
/// once, at start (the sources, their backends and the poll interval, the authorization
/// mode and actions file).
pub const LIVE_SECTIONS: &[&str] = &["limits.", "pipe.", "authorization.timeout_ms"];

/// One key whose value a reloaded file changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub key: String,
    pub old: String,
    pub new: String,
    /// Applied by the reload; otherwise it waits for the next start.
    pub live: bool,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} -> {}", self.key, self.old, self.new)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        source: toml::de::Error,
    },
    #[error("{path}: {what}")]
    Invalid { path: String, what: String },
}

impl Config {
    /// Reads `path`; a missing file at the default path means the built-in defaults, while
    /// a missing file named explicitly is an error.
    pub fn load(path: &Path, explicit: bool) -> Result<Config, ConfError> {
        let shown = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(Config::default());
            }
            Err(source) => {
                return Err(ConfError::Read {
                    path: shown,
                    source,
                });
            }
        };
        Config::parse(&text, &shown)
    }

    /// The file's text, read and validated as [`Config::load`] does; errors name it `shown`.
    pub fn parse(text: &str, shown: &str) -> Result<Config, ConfError> {
        let config: Config = toml::from_str(text).map_err(|source| ConfError::Parse {
            path: shown.to_owned(),
            source,
        })?;
        config.validate().map_err(|what| ConfError::Invalid {
            path: shown.to_owned(),
            what,
        })?;
        Ok(config)
    }

    /// Every key with its value, defaults included, as a TOML file (`watchd --check-config`).
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }

    /// Every key as `section.key` with its value as TOML writes it, sorted by key.
    pub fn values(&self) -> Vec<(String, String)> {
        let Ok(toml::Value::Table(sections)) = toml::Value::try_from(self) else {
            // Only a path that is not UTF-8 cannot be written as TOML.
            return vec![("authorization.actions_file".into(), "(not UTF-8)".into())];
        };
        let mut values = Vec::new();
        for (section, keys) in sections {
            match keys {
                toml::Value::Table(keys) => values.extend(
                    keys.into_iter()
                        .map(|(key, value)| (format!("{section}.{key}"), value.to_string())),
                ),
                value => values.push((section, value.to_string())),
            }
        }
        values
    }

    /// What differs in `new`, key by key, each marked as taking effect at once (a reload
    /// applies it) or only at the next start.
    pub fn changes(&self, new: &Config) -> Vec<Change> {
        let old = self.values();
        new.values()
            .into_iter()
            .filter_map(|(key, value)| {
                let before = old.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone());
                (before.as_ref() != Some(&value)).then(|| Change {
                    live: LIVE_SECTIONS.iter().any(|s| key.starts_with(s)),
                    old: before.unwrap_or_default(),
                    new: value,
                    key,
                })
            })
            .collect()
    }

    /// This configuration with the parts a reload applies taken from `new`; the rest stays
    /// as the daemon runs it.
    pub fn with_live_parts_of(&self, new: &Config) -> Config {
        Config {
            limits: new.limits.clone(),
            pipe: new.pipe.clone(),
            authorization: Authorization {
                timeout_ms: new.authorization.timeout_ms,
                ..self.authorization.clone()
            },
            ..self.clone()
        }
    }

    fn validate(&self) -> Result<(), String> {
        let p = &self.pipe;
        if p.max_depth < 2 || p.max_depth > 256 {
            return Err(format!(
                "pipe.max_depth must be 2..=256 packets, not {}",
                p.max_depth
            ));
        }
        if p.default_depth < 2 || p.default_depth > p.max_depth {
            return Err(format!(
                "pipe.default_depth must be 2..=pipe.max_depth ({}), not {}",
                p.max_depth, p.default_depth
            ));
        }
        let l = &self.limits;
        if l.max_pipe_pages_per_uid < p.max_depth {
            return Err(format!(
                "limits.max_pipe_pages_per_uid must be at least pipe.max_depth ({}) pages, or a \
                 subscription at the largest depth could never be made, not {}",
                p.max_depth, l.max_pipe_pages_per_uid
            ));
        }
        if l.max_pipe_pages < l.max_pipe_pages_per_uid {
            return Err(format!(
                "limits.max_pipe_pages must be at least limits.max_pipe_pages_per_uid ({}), not {}",
                l.max_pipe_pages_per_uid, l.max_pipe_pages
            ));
        }
        if l.max_pending_calls_per_uid == 0 {
            return Err("limits.max_pending_calls_per_uid must be at least 1, not 0".into());
        }
        if !(1..=l.max_pending_calls_per_uid).contains(&l.max_polkit_checks_per_uid) {
            return Err(format!(
                "limits.max_polkit_checks_per_uid must be 1..=limits.max_pending_calls_per_uid \
                 ({}): a check is made within a call, not {}",
                l.max_pending_calls_per_uid, l.max_polkit_checks_per_uid
            ));
        }
        let timeout = self.authorization.timeout_ms;
        if !(100..=600_000).contains(&timeout) {
            return Err(format!(
                "authorization.timeout_ms must be 100..=600000 milliseconds, not {timeout}"
            ));
        }
        let s = &self.sources;
        if !(s.mounts
            || s.devices
            || s.keys
            || s.krb5
            || s.files
            || s.fserrors
            || s.quota
            || s.space)
        {
            return Err("every source is disabled in [sources]: nothing to serve".into());
        }
        let interval = self.keys.poll_interval_ms;
        if !(10..=60_000).contains(&interval) {
            return Err(format!(
                "keys.poll_interval_ms must be 10..=60000 milliseconds, not {interval}"
            ));
        }
        let t = &self.space;
        if !(100..=t.longest_check_ms).contains(&t.shortest_check_ms) {
            return Err(format!(
                "space.shortest_check_ms must be 100..=space.longest_check_ms ({}) milliseconds, not {}",
                t.longest_check_ms, t.shortest_check_ms
            ));
        }
        if t.longest_check_ms > 86_400_000 {
            return Err(format!(
                "space.longest_check_ms must be at most 86400000 milliseconds (a day), not {}",
                t.longest_check_ms
            ));
        }
        if t.fill_rate_mib_per_s == 0 || t.inode_rate_per_s == 0 {
            return Err(
                "space.fill_rate_mib_per_s and space.inode_rate_per_s must be at least 1".into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_default_file_equals_built_in_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/watchd.toml");
        assert_eq!(Config::load(&path, true).unwrap(), Config::default());
    }

    #[test]
    fn unknown_keys_bad_depths_and_bad_pipe_budgets_are_refused_with_the_file_named() {
        let dir = std::env::temp_dir().join(format!("watchd-conf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bad.toml");
        for (text, expected) in [
            (
                "[limits]\nmax_subscription = 3\n",
                &["bad.toml", "max_subscription"][..],
            ),
            ("[pipe]\ndefault_depth = 300\n", &["default_depth"]),
            (
                "[limits]\nmax_pipe_pages_per_uid = 128\n",
                &["max_pipe_pages_per_uid", "pipe.max_depth (256)"],
            ),
            (
                "[limits]\nmax_pipe_pages = 512\n",
                &["limits.max_pipe_pages must be at least", "(1024)"],
            ),
            ("[limits]\nmax_pipe_pages = -1\n", &["max_pipe_pages"]),
            (
                "[limits]\nmax_pending_calls_per_uid = 0\n",
                &["limits.max_pending_calls_per_uid must be at least 1"],
            ),
            (
                "[limits]\nmax_pending_calls_per_uid = 4\nmax_polkit_checks_per_uid = 5\n",
                &["max_polkit_checks_per_uid must be 1..=", "(4)", "not 5"],
            ),
            (
                "[authorization]\ntimeout_ms = 50\n",
                &["authorization.timeout_ms must be 100..=600000", "not 50"],
            ),
        ] {
            std::fs::write(&file, text).unwrap();
            let err = Config::load(&file, true).unwrap_err().to_string();
            assert!(expected.iter().all(|e| err.contains(e)), "{text}: {err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_printed_configuration_reads_back_as_the_same_configuration() {
        let mut config = Config::default();
        config.limits.max_subscriptions_per_uid = 3;
        config.authorization.mode = crate::authority::Mode::Fallback;
        config.sources.device_events = DeviceEvents::Kernel;
        let text = config.to_toml().unwrap();
        for key in [
            "[authorization]",
            "mode = \"fallback\"",
            "max_subscriptions_per_uid = 3",
        ] {
            assert!(text.contains(key), "{key} missing from:\n{text}");
        }
        assert_eq!(toml::from_str::<Config>(&text).unwrap(), config);
        assert_eq!(config.values().len(), 28, "{:?}", config.values());
    }

    #[test]
    fn changes_are_listed_by_key_and_only_limits_pipe_and_the_polkit_timeout_are_live() {
        let old = Config::default();
        let mut new = old.clone();
        new.limits.max_subscriptions_per_uid = 1;
        new.pipe.default_depth = 8;
        new.sources.krb5 = false;
        new.authorization.timeout_ms = 5000;
        new.authorization.mode = crate::authority::Mode::Polkit;
        let changes = old.changes(&new);
        let shown: Vec<(String, bool)> = changes.iter().map(|c| (c.to_string(), c.live)).collect();
        assert_eq!(
            shown,
            [
                (
                    "authorization.mode: \"auto\" -> \"polkit\"".to_owned(),
                    false
                ),
                ("authorization.timeout_ms: 20000 -> 5000".to_owned(), true),
                ("limits.max_subscriptions_per_uid: 64 -> 1".to_owned(), true),
                ("pipe.default_depth: 16 -> 8".to_owned(), true),
                ("sources.krb5: true -> false".to_owned(), false),
            ]
        );
        let applied = old.with_live_parts_of(&new);
        assert_eq!(applied.limits, new.limits);
        assert_eq!(applied.pipe, new.pipe);
        assert_eq!(applied.sources, old.sources);
        assert_eq!(applied.authorization.timeout_ms, 5000);
        assert_eq!(applied.authorization.mode, old.authorization.mode);
        assert!(old.changes(&old).is_empty());
    }

    #[test]
    fn missing_default_file_means_defaults_but_missing_explicit_file_is_an_error() {
        let missing = Path::new("/nonexistent/watchd.toml");
        assert_eq!(Config::load(missing, false).unwrap(), Config::default());
        assert!(Config::load(missing, true).is_err());
    }
}
