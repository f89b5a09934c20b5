//! The configuration file (`/etc/watchd/watchd.toml`; `data/watchd.toml` is the default).
#![forbid(unsafe_code)]

use std::path::Path;

use serde::Deserialize;

/// Where the daemon looks when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/watchd/watchd.toml";

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub authorization: Authorization,
    pub limits: Limits,
    pub pipe: PipeConf,
    pub sources: Sources,
    pub keys: KeysConf,
}

/// The key source's poller (kernels without watch queues).
#[derive(Clone, Debug, Deserialize, PartialEq)]
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
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Authorization {
    pub mode: crate::authority::Mode,
    /// The actions file whose defaults decide when polkitd does not.
    pub actions_file: std::path::PathBuf,
}

impl Default for Authorization {
    fn default() -> Self {
        Authorization {
            mode: Default::default(),
            actions_file: crate::authority::ACTIONS_FILE.into(),
        }
    }
}

/// Bounds on what clients can make the daemon hold.
#[derive(Clone, Debug, Deserialize, PartialEq)]
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
        }
    }
}

/// Pipe capacity, counted in packets (one record each).
#[derive(Clone, Debug, Deserialize, PartialEq)]
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
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Sources {
    pub mounts: bool,
    pub devices: bool,
    pub keys: bool,
    pub krb5: bool,
    /// Where device events come from: "auto" (udev when udevd runs, else the kernel),
    /// "udev" or "kernel".
    pub device_events: DeviceEvents,
}

impl Default for Sources {
    fn default() -> Self {
        Sources {
            mounts: true,
            devices: true,
            keys: true,
            krb5: true,
            device_events: DeviceEvents::Auto,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DeviceEvents {
    #[default]
    Auto,
    Udev,
    Kernel,
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
        let config: Config = toml::from_str(&text).map_err(|source| ConfError::Parse {
            path: shown.clone(),
            source,
        })?;
        config
            .validate()
            .map_err(|what| ConfError::Invalid { path: shown, what })?;
        Ok(config)
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
        let interval = self.keys.poll_interval_ms;
        if !(10..=60_000).contains(&interval) {
            return Err(format!(
                "keys.poll_interval_ms must be 10..=60000 milliseconds, not {interval}"
            ));
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
        ] {
            std::fs::write(&file, text).unwrap();
            let err = Config::load(&file, true).unwrap_err().to_string();
            assert!(expected.iter().all(|e| err.contains(e)), "{text}: {err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_default_file_means_defaults_but_missing_explicit_file_is_an_error() {
        let missing = Path::new("/nonexistent/watchd.toml");
        assert_eq!(Config::load(missing, false).unwrap(), Config::default());
        assert!(Config::load(missing, true).is_err());
    }
}
