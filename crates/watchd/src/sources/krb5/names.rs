//! Which cache a caller means: a credential-cache name parsed as MIT krb5 would
//! ([`parse_cache_name`]), and the default name krb5.conf gives a user ([`default_cache`]).

use super::collection::KeyringCollection;
use crate::error::{Error, Result, Truncated};
use crate::sources::keys::Anchor;

/// How a FILE cache or DIR collection is laid out in its directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileLayout {
    /// One cache file, reported under `cache`.
    File { file_name: String, cache: String },
    /// A DIR collection: `primary` names the primary `tkt*` file; caches are reported as
    /// `DIR::<dir>/<file>`.
    Dir { dir_path: String },
}

impl FileLayout {
    /// Whether an event about `name` in the cache's directory may change what the cache
    /// holds; an event without a name (the directory itself) always may.
    pub fn concerns(&self, name: Option<&std::ffi::OsStr>) -> bool {
        let Some(name) = name else {
            return true;
        };
        match self {
            FileLayout::File { file_name, .. } => name == file_name.as_str(),
            FileLayout::Dir { .. } => {
                name == "primary" || name.as_encoded_bytes().starts_with(b"tkt")
            }
        }
    }
}

/// What a cache name means to the daemon.
#[derive(Debug, PartialEq, Eq)]
pub enum Target {
    Keyring {
        anchor: Anchor,
        collection: KeyringCollection,
        only: Option<String>,
    },
    Files {
        dir: String,
        layout: FileLayout,
    },
}

/// Parses a credential-cache name as MIT krb5 would for the caller `uid`.
pub fn parse_cache_name(name: &str, uid: u32) -> Result<Target> {
    let shown = Truncated(name);
    let unsupported = |why: &str| Err(Error::NotSupported(format!("cache '{shown}': {why}")));
    let (kind, residual) = match name.split_once(':') {
        Some((kind, rest)) if !kind.contains('/') => (kind, rest),
        _ => ("FILE", name),
    };
    match kind {
        "KEYRING" => {
            let mut parts = residual.splitn(3, ':');
            let anchor = parts.next().unwrap_or_default();
            let collection = parts.next().unwrap_or_default();
            let subsidiary = parts.next().filter(|s| !s.is_empty());
            let (anchor, keyring, prefix) = match anchor {
                "persistent" => {
                    let owner = if collection.is_empty() {
                        uid
                    } else {
                        collection.parse::<u32>().map_err(|_| {
                            Error::invalid(format!(
                                "cache '{shown}': '{}' is not a uid",
                                Truncated(collection)
                            ))
                        })?
                    };
                    if owner != uid {
                        return Err(Error::AccessDenied(format!(
                            "cache '{shown}' belongs to uid {owner}, not to the caller (uid {uid})"
                        )));
                    }
                    (
                        Anchor::Persistent(uid),
                        "_krb".to_owned(),
                        format!("KEYRING:persistent:{uid}:"),
                    )
                }
                "user" if !collection.is_empty() => (
                    Anchor::User(uid),
                    format!("_krb_{collection}"),
                    format!("KEYRING:user:{collection}:"),
                ),
                "session" | "process" | "thread" | "legacy" => {
                    return unsupported(
                        "a session, process or thread keyring belongs to one process tree and \
                         no other process can reach it; use KEYRING:persistent: or KEYRING:user:",
                    );
                }
                _ => {
                    return unsupported(
                        "a legacy KEYRING: name lives in the session keyring, which no other \
                         process can reach; use KEYRING:persistent: or KEYRING:user:NAME",
                    );
                }
            };
            let only = subsidiary.map(|s| format!("{prefix}{s}"));
            Ok(Target::Keyring {
                anchor,
                collection: KeyringCollection {
                    keyring,
                    prefix,
                    name: name.to_owned(),
                },
                only,
            })
        }
        "FILE" => file_target(name, residual, name),
        "DIR" => match residual.strip_prefix(':') {
            Some(file) => file_target(name, file, name),
            None => {
                absolute(name, residual)?;
                Ok(Target::Files {
                    dir: residual.to_owned(),
                    layout: FileLayout::Dir {
                        dir_path: residual.to_owned(),
                    },
                })
            }
        },
        "KCM" => unsupported(
            "KCM caches live inside the KCM daemon (sssd-kcm), which no file or key shows; \
             not supported",
        ),
        "MEMORY" | "MSLSA" | "API" => {
            unsupported("the cache lives inside one process; no other process can watch it")
        }
        other => Err(Error::invalid(format!(
            "cache '{shown}': unknown cache type '{}' (KEYRING, FILE, DIR, KCM, MEMORY)",
            Truncated(other)
        ))),
    }
}

fn absolute(name: &str, path: &str) -> Result<()> {
    if path.starts_with('/') {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "cache '{}': the path must be absolute",
            Truncated(name)
        )))
    }
}

fn file_target(name: &str, path: &str, cache: &str) -> Result<Target> {
    absolute(name, path)?;
    let (dir, file) = path.rsplit_once('/').expect("absolute");
    if file.is_empty() || file == "." || file == ".." {
        return Err(Error::invalid(format!(
            "cache '{}' names a directory, not a file",
            Truncated(name)
        )));
    }
    Ok(Target::Files {
        dir: if dir.is_empty() {
            "/".into()
        } else {
            dir.into()
        },
        layout: FileLayout::File {
            file_name: file.to_owned(),
            cache: cache.to_owned(),
        },
    })
}

/// The krb5 configuration files MIT would read: `$KRB5_CONFIG` (a colon-separated list)
/// of the daemon, else `/etc/krb5.conf`.
fn config_files() -> Vec<String> {
    match std::env::var("KRB5_CONFIG") {
        Ok(list) if !list.is_empty() => list.split(':').map(str::to_owned).collect(),
        _ => vec!["/etc/krb5.conf".into()],
    }
}

/// `[libdefaults] default_ccache_name` from krb5.conf text, unexpanded.
pub fn default_ccache_name(text: &str) -> Option<String> {
    let mut in_libdefaults = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_libdefaults = line.trim_end_matches('*') == "[libdefaults]";
            continue;
        }
        if !in_libdefaults {
            continue;
        }
        if let Some((key, value)) = line.split_once('=')
            && key.trim() == "default_ccache_name"
        {
            return Some(value.trim().to_owned());
        }
    }
    None
}

/// Expands MIT's `%{…}` tokens for `uid`.
pub fn expand(template: &str, uid: u32) -> Result<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(at) = rest.find("%{") {
        out.push_str(&rest[..at]);
        let end = rest[at..].find('}').ok_or_else(|| {
            Error::Failed(format!(
                "default_ccache_name '{template}' has an unclosed %{{"
            ))
        })? + at;
        match &rest[at + 2..end] {
            "uid" | "euid" | "USERID" => out.push_str(&uid.to_string()),
            "TEMP" => out.push_str("/tmp"),
            "null" => {}
            token => {
                return Err(Error::Failed(format!(
                    "cannot expand %{{{token}}} in default_ccache_name '{template}'; pass the \
                     cache option"
                )));
            }
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The cache MIT krb5 would use for `uid` when KRB5CCNAME is unset.
pub fn default_cache(uid: u32) -> Result<String> {
    let configured = config_files()
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .find_map(|text| default_ccache_name(&text));
    expand(
        configured.as_deref().unwrap_or("FILE:/tmp/krb5cc_%{uid}"),
        uid,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_events_about_the_caches_own_names_concern_it() {
        use std::ffi::OsStr;
        let file = FileLayout::File {
            file_name: "krb5cc_1000".into(),
            cache: "FILE:/tmp/krb5cc_1000".into(),
        };
        assert!(file.concerns(Some(OsStr::new("krb5cc_1000"))));
        assert!(!file.concerns(Some(OsStr::new("krb5cc_1001"))));
        assert!(file.concerns(None), "the directory itself");
        let dir = FileLayout::Dir {
            dir_path: "/run/user/1000/krb5cc".into(),
        };
        assert!(dir.concerns(Some(OsStr::new("primary"))));
        assert!(dir.concerns(Some(OsStr::new("tktAbc"))));
        assert!(!dir.concerns(Some(OsStr::new("notes.txt"))));
    }

    #[test]
    fn cache_names_resolve_like_mit_krb5() {
        let t = parse_cache_name("KEYRING:persistent:1000", 1000).unwrap();
        assert!(
            matches!(&t, Target::Keyring { anchor: Anchor::Persistent(1000), collection, only: None }
            if collection.keyring == "_krb" && collection.prefix == "KEYRING:persistent:1000:")
        );
        let t = parse_cache_name("KEYRING:persistent:1000:krb_ccache_X", 1000).unwrap();
        assert!(
            matches!(&t, Target::Keyring { only: Some(o), .. } if o == "KEYRING:persistent:1000:krb_ccache_X")
        );
        let t = parse_cache_name("KEYRING:user:work", 1000).unwrap();
        assert!(
            matches!(&t, Target::Keyring { anchor: Anchor::User(1000), collection, .. } if collection.keyring == "_krb_work")
        );
        assert!(matches!(
            parse_cache_name("KEYRING:persistent:1001", 1000),
            Err(Error::AccessDenied(_))
        ));
        for refused in [
            "KEYRING:session:x",
            "KEYRING:foo",
            "KCM:",
            "KCM:1000",
            "MEMORY:x",
        ] {
            assert!(
                matches!(parse_cache_name(refused, 1000), Err(Error::NotSupported(_))),
                "{refused}"
            );
        }
        assert_eq!(
            parse_cache_name("FILE:/tmp/krb5cc_1000", 1000).unwrap(),
            Target::Files {
                dir: "/tmp".into(),
                layout: FileLayout::File {
                    file_name: "krb5cc_1000".into(),
                    cache: "FILE:/tmp/krb5cc_1000".into()
                }
            }
        );
        assert!(matches!(
            parse_cache_name("/tmp/x", 1000),
            Ok(Target::Files { .. })
        ));
        assert!(matches!(
            parse_cache_name("DIR:/run/user/1000/krb5cc", 1000),
            Ok(Target::Files {
                layout: FileLayout::Dir { .. },
                ..
            })
        ));
        assert!(matches!(
            parse_cache_name("FILE:relative", 1000),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            parse_cache_name("BOGUS:x", 1000),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn default_ccache_name_is_read_from_libdefaults_and_expanded() {
        let conf = "[realms]\n default_ccache_name = nope\n[libdefaults]\n default_realm = X\n default_ccache_name = KEYRING:persistent:%{uid}\n";
        let name = default_ccache_name(conf).unwrap();
        assert_eq!(expand(&name, 1000).unwrap(), "KEYRING:persistent:1000");
        assert_eq!(
            expand("FILE:%{TEMP}/krb5cc_%{uid}", 7).unwrap(),
            "FILE:/tmp/krb5cc_7"
        );
        assert!(expand("FILE:/home/%{username}/cc", 7).is_err());
        assert_eq!(
            default_ccache_name("[libdefaults]\n default_realm = X\n"),
            None
        );
    }
}
