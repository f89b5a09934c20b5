//! May this caller set this watch? One polkit action per kind of watch, asked of polkitd with
//! `CheckAuthorization`, or, when polkitd is not on the bus, decided from the defaults in the
//! same actions file (yes → allow, auth_* → root only, no → deny).
//!
//! The fallback reads `allow_any`: with no polkitd there is no session information, so the
//! least privileged default is the only one that can be applied to everyone.
//!
//! A check polkitd does not answer within `[authorization] timeout_ms` fails with `Timeout`
//! (and is cancelled at polkitd), and one uid has at most `[limits]
//! max_polkit_checks_per_uid` checks waiting: a polkitd that hangs costs each caller one
//! failed call, never the daemon. polkitd is asked by its well-known name on every check,
//! so a restarted polkitd answers the next one.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Deserialize;
use zbus_polkit::policykit1::{AuthorityProxy, CheckAuthorizationFlags, Subject};

use crate::error::{Error, Result};
use crate::identity::{Caller, Uid};
use crate::inflight::InFlight;
use crate::options::Options;
use crate::watch::Kind;

/// Where polkit looks for actions files; the daemon's fallback reads the same file.
pub const ACTIONS_FILE: &str = "/usr/share/polkit-1/actions/org.watchd.Watchd1.policy";
/// The project's actions file, built in for when none is installed (e.g. run from a checkout).
const BUILT_IN_ACTIONS: &str = include_str!("../../../data/org.watchd.Watchd1.policy");
const POLKIT_NAME: &str = "org.freedesktop.PolicyKit1";

/// The polkit actions, one per kind of watch plus administration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    WatchMounts,
    WatchDevices,
    WatchOwnKeys,
    WatchOtherUsersKeys,
    WatchKrb5,
    WatchFiles,
    /// Filesystem errors, free space and quota warnings: what happens to a filesystem, not
    /// to anyone's files.
    WatchSuperblock,
    /// Every user's and group's quota warnings (a quota watch with `all`).
    WatchOtherUsersQuota,
}

impl Action {
    pub const ALL: [Action; 8] = [
        Action::WatchMounts,
        Action::WatchDevices,
        Action::WatchOwnKeys,
        Action::WatchOtherUsersKeys,
        Action::WatchKrb5,
        Action::WatchFiles,
        Action::WatchSuperblock,
        Action::WatchOtherUsersQuota,
    ];

    /// The action that guards a watch of `kind` with these options, decided before any
    /// object is looked at (so only from the options and the caller's uid). `None` for a
    /// kind no action guards, which is then refused: a source without a policy line here
    /// is not served.
    pub fn for_watch(kind: Kind, options: &Options, caller: &Caller) -> Option<Action> {
        Some(match kind.name() {
            "mounts" => Action::WatchMounts,
            "devices" => Action::WatchDevices,
            "keys" => match options.peek_u32("uid") {
                Some(uid) if uid != caller.uid.0 => Action::WatchOtherUsersKeys,
                _ => Action::WatchOwnKeys,
            },
            "krb5" => Action::WatchKrb5,
            "files" => Action::WatchFiles,
            "quota" if options.peek_bool("all") == Some(true) => Action::WatchOtherUsersQuota,
            "fserrors" | "space" | "quota" => Action::WatchSuperblock,
            _ => return None,
        })
    }

    pub fn id(self) -> &'static str {
        match self {
            Action::WatchMounts => "org.watchd.Watchd1.watch-mounts",
            Action::WatchDevices => "org.watchd.Watchd1.watch-devices",
            Action::WatchOwnKeys => "org.watchd.Watchd1.watch-own-keys",
            Action::WatchOtherUsersKeys => "org.watchd.Watchd1.watch-other-users-keys",
            Action::WatchKrb5 => "org.watchd.Watchd1.watch-krb5",
            Action::WatchFiles => "org.watchd.Watchd1.watch-files",
            Action::WatchSuperblock => "org.watchd.Watchd1.watch-superblock",
            Action::WatchOtherUsersQuota => "org.watchd.Watchd1.watch-other-users-quota",
        }
    }
}

/// How decisions are made; `[authorization] mode` in the configuration.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// polkitd when it is on the bus, the actions file's defaults when it is not.
    #[default]
    Auto,
    /// Always polkitd; refuse everything when it is absent.
    Polkit,
    /// Never polkitd: the actions file's defaults decide.
    Fallback,
}

/// An implicit authorization from an actions file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Implicit {
    Yes,
    No,
    /// auth_self, auth_admin and their _keep forms: in the fallback, root only.
    Authenticate,
}

impl Implicit {
    fn parse(text: &str) -> Option<Implicit> {
        match text.trim() {
            "yes" => Some(Implicit::Yes),
            "no" => Some(Implicit::No),
            "auth_self" | "auth_self_keep" | "auth_admin" | "auth_admin_keep" => {
                Some(Implicit::Authenticate)
            }
            _ => None,
        }
    }
}

/// The `allow_any` default of each action in a polkit actions file.
pub fn parse_actions(xml: &str) -> std::result::Result<HashMap<String, Implicit>, String> {
    let doc = roxmltree::Document::parse_with_options(
        xml,
        roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let mut defaults = HashMap::new();
    for action in doc.descendants().filter(|n| n.has_tag_name("action")) {
        let id = action.attribute("id").ok_or("an <action> without an id")?;
        let any = action
            .descendants()
            .find(|n| n.has_tag_name("allow_any"))
            .and_then(|n| n.text())
            .ok_or_else(|| format!("action {id} has no <allow_any>"))?;
        let implicit =
            Implicit::parse(any).ok_or_else(|| format!("action {id}: unknown default '{any}'"))?;
        defaults.insert(id.to_owned(), implicit);
    }
    Ok(defaults)
}

/// Where a decision came from, for the log and for `watchctl status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decider {
    Polkit,
    Fallback,
}

/// What bounds one polkit check, from the configuration in force when it is asked.
#[derive(Clone, Copy, Debug)]
pub struct CheckBounds {
    /// `[limits] max_polkit_checks_per_uid`.
    pub per_uid: u32,
    /// `[authorization] timeout_ms`.
    pub timeout: Duration,
}

pub struct Authority {
    mode: Mode,
    defaults: HashMap<String, Implicit>,
    bus: zbus::Connection,
    /// Checks awaiting polkitd's answer, per uid.
    checks: Arc<InFlight>,
    /// Numbers the checks' cancellation ids.
    next_check: AtomicU64,
}

impl Authority {
    /// Reads the fallback defaults from `actions_file`, or the built-in copy of the project's
    /// file when none is installed there.
    pub fn new(
        mode: Mode,
        actions_file: &Path,
        bus: zbus::Connection,
    ) -> anyhow::Result<Authority> {
        let (text, from) = match std::fs::read_to_string(actions_file) {
            Ok(text) => (text, actions_file.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (
                BUILT_IN_ACTIONS.to_owned(),
                "the built-in copy of data/org.watchd.Watchd1.policy".to_owned(),
            ),
            Err(e) => anyhow::bail!("cannot read {}: {e}", actions_file.display()),
        };
        let defaults = parse_actions(&text).map_err(|e| anyhow::anyhow!("{from}: {e}"))?;
        tracing::info!(?mode, actions = %from, "authorization");
        Ok(Authority {
            mode,
            defaults,
            bus,
            checks: InFlight::new(
                "polkit checks awaiting polkitd",
                "limits.max_polkit_checks_per_uid",
            ),
            next_check: AtomicU64::new(1),
        })
    }

    /// polkitd counts as present when it owns its name or the bus can start it (it is
    /// usually bus-activated). Only a bus that says neither lets the fallback decide; if the
    /// bus cannot be asked, polkit is asked, and its failure is a refusal, not a fallback.
    async fn polkit_present(&self) -> bool {
        let Ok(dbus) = zbus::fdo::DBusProxy::new(&self.bus).await else {
            return true;
        };
        let Ok(name) = zbus::names::BusName::try_from(POLKIT_NAME) else {
            return true;
        };
        match dbus.name_has_owner(name).await {
            Ok(true) => true,
            Ok(false) => match dbus.list_activatable_names().await {
                Ok(names) => names.iter().any(|n| n.as_str() == POLKIT_NAME),
                Err(_) => true,
            },
            Err(_) => true,
        }
    }

    /// Who decides right now.
    pub async fn decider(&self) -> Decider {
        match self.mode {
            Mode::Polkit => Decider::Polkit,
            Mode::Fallback => Decider::Fallback,
            Mode::Auto if self.polkit_present().await => Decider::Polkit,
            Mode::Auto => Decider::Fallback,
        }
    }

    /// For `watchctl status`: the mode and who decides now.
    pub async fn describe(&self) -> String {
        match (self.mode, self.decider().await) {
            (Mode::Auto, Decider::Polkit) => "polkit".into(),
            (Mode::Auto, Decider::Fallback) => {
                "fallback: polkitd is neither running nor activatable on this bus; the actions file's defaults decide".into()
            }
            (Mode::Polkit, _) => "polkit (forced by the configuration)".into(),
            (Mode::Fallback, _) => {
                "fallback (forced by the configuration): the actions file's defaults decide".into()
            }
        }
    }

    /// Allows, or refuses with an `AccessDenied` that names the action. `object` says what the
    /// watch is about, for the log. With polkit deciding, a uid already at `bounds.per_uid`
    /// checks gets `LimitExceeded`, and a check polkitd leaves unanswered past
    /// `bounds.timeout` fails with `Timeout`.
    pub async fn check(
        &self,
        caller: &Caller,
        subject: &Subject,
        action: Action,
        interactive: bool,
        object: &str,
        bounds: CheckBounds,
    ) -> Result<()> {
        let decider = self.decider().await;
        let verdict = match decider {
            Decider::Polkit => {
                let _slot = self.checks.enter(caller.uid, bounds.per_uid)?;
                tracing::debug!(uid = %caller.uid, pid = %caller.pid, action = action.id(), object, "authorization: asking polkitd");
                let id = format!("watchd-{}", self.next_check.fetch_add(1, Ordering::Relaxed));
                let asked = self.ask_polkit(subject, action, interactive, &id);
                match tokio::time::timeout(bounds.timeout, asked).await {
                    Ok(verdict) => verdict,
                    Err(_) => {
                        let ms = bounds.timeout.as_millis();
                        tracing::warn!(
                            uid = %caller.uid, pid = %caller.pid, action = action.id(), object, interactive, timeout_ms = %ms,
                            "authorization: polkitd did not answer in time; the call fails"
                        );
                        self.cancel(id, bounds.timeout);
                        return Err(Error::Timeout(format!(
                            "polkitd did not answer the check of {} within {ms} ms \
                             (authorization.timeout_ms); nothing was changed, try again",
                            action.id()
                        )));
                    }
                }
            }
            Decider::Fallback => self.fallback(caller.uid, action),
        };
        let result = match &verdict {
            Ok(()) => "allowed",
            Err(_) => "denied",
        };
        tracing::info!(
            uid = %caller.uid, pid = %caller.pid, action = action.id(), object, ?decider, interactive, result,
            reason = verdict.as_ref().err().map(String::as_str).unwrap_or(""),
            "authorization"
        );
        verdict.map_err(|why| {
            Error::AccessDenied(format!("not authorized for {}: {why}", action.id()))
        })
    }

    /// Tells polkitd to drop check `id` (and any password dialog it opened), in the
    /// background: a polkitd that hangs must not hold up the caller's error.
    fn cancel(&self, id: String, timeout: Duration) {
        let bus = self.bus.clone();
        tokio::spawn(async move {
            let cancelled = tokio::time::timeout(timeout, async {
                AuthorityProxy::new(&bus)
                    .await?
                    .cancel_check_authorization(&id)
                    .await
            })
            .await;
            tracing::debug!(check = id, outcome = ?cancelled, "polkit check cancelled");
        });
    }

    async fn ask_polkit(
        &self,
        subject: &Subject,
        action: Action,
        interactive: bool,
        cancellation_id: &str,
    ) -> std::result::Result<(), String> {
        let proxy = AuthorityProxy::new(&self.bus)
            .await
            .map_err(|e| format!("polkit is unreachable: {e}"))?;
        let flags = if interactive {
            CheckAuthorizationFlags::ALLOW_USER_INTERACTION
        } else {
            CheckAuthorizationFlags::empty()
        };
        let reply = proxy
            .check_authorization(
                subject,
                action.id(),
                &HashMap::new(),
                flags,
                cancellation_id,
            )
            .await
            .map_err(|e| format!("polkit could not decide: {e}"))?;
        match (reply.is_authorized, reply.is_challenge) {
            (true, _) => Ok(()),
            (false, true) if interactive => Err("authentication is required and did not succeed".into()),
            (false, true) => Err("authentication is required; call with the ALLOW_INTERACTIVE_AUTHORIZATION flag to be asked".into()),
            (false, false) => Err("polkit denied it".into()),
        }
    }

    fn fallback(&self, uid: Uid, action: Action) -> std::result::Result<(), String> {
        match self.defaults.get(action.id()) {
            Some(Implicit::Yes) => Ok(()),
            Some(Implicit::Authenticate) if uid.0 == 0 => Ok(()),
            Some(Implicit::Authenticate) => {
                Err("polkitd is not running and this action needs an administrator".into())
            }
            Some(Implicit::No) => Err("the action's default is no".into()),
            None => Err("the actions file does not define this action".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_actions_file_defines_every_action_the_daemon_asks_for() {
        let defaults = parse_actions(BUILT_IN_ACTIONS).unwrap();
        for action in Action::ALL {
            let id = action.id();
            assert!(
                defaults.contains_key(id),
                "{id} is missing from data/org.watchd.Watchd1.policy"
            );
        }
        assert_eq!(defaults["org.watchd.Watchd1.watch-mounts"], Implicit::Yes);
    }

    #[test]
    fn fallback_defaults_map_yes_auth_and_no() {
        let xml = r#"<policyconfig>
          <action id="a.yes"><defaults><allow_any>yes</allow_any></defaults></action>
          <action id="a.auth"><defaults><allow_any>auth_admin_keep</allow_any></defaults></action>
          <action id="a.no"><defaults><allow_any>no</allow_any></defaults></action>
        </policyconfig>"#;
        let d = parse_actions(xml).unwrap();
        assert_eq!(
            (d["a.yes"], d["a.auth"], d["a.no"]),
            (Implicit::Yes, Implicit::Authenticate, Implicit::No)
        );
        assert!(
            parse_actions("<policyconfig><action id='x'><defaults/></action></policyconfig>")
                .is_err()
        );
        assert!(parse_actions("<policyconfig><action id='x'><defaults><allow_any>maybe</allow_any></defaults></action></policyconfig>").is_err());
    }
}
