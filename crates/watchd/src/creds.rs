//! Acting for a caller with the caller's credentials, on a thread of the daemon's own:
//!
//! - [`run_as`]: the file-system credentials (fsuid, fsgid, supplementary groups) a thread
//!   takes before it opens or reads anything a caller named;
//! - [`charged_to`]: the real uid a thread takes so that what it creates is counted by
//!   the kernel against the caller's per-user limits, not root's.
//!
//! A thread whose fsuid is not 0 loses root's file capabilities (`CAP_DAC_OVERRIDE`,
//! `CAP_DAC_READ_SEARCH`, `CAP_FOWNER`, …), so every permission check it meets is the
//! caller's own. The change is made on a scoped thread of its own, which ends with those
//! credentials: no other thread of the daemon ever wears them, and nothing has to be put
//! back.
#![forbid(unsafe_code)]

use std::io;

use crate::sys;

/// Runs `f` on a thread of its own whose *real* uid is `uid`; effective uid, capabilities
/// and file-system credentials stay root's. The kernel charges some resources to the real
/// uid's account: a pipe's pages count against `fs.pipe-user-pages-soft` of the user
/// that created it, so a subscriber's pipes made this way use up its own allowance and
/// never shrink the pipes of root's other services.
pub fn charged_to<T: Send>(uid: u32, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    on_a_thread_of_its_own(|| {
        sys::setresuid_this_thread(Some(uid), None, None)?;
        f()
    })
}

/// Runs `f` on a scoped thread, which ends with whatever credentials `f` gave it.
fn on_a_thread_of_its_own<T: Send>(f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(f)
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("work done as a caller panicked")))
    })
}

/// Whose rights a file is opened with.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FsCreds {
    pub uid: u32,
    /// The caller's file-system gid, as its process had it.
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// Runs `f` on a thread of its own that holds `creds` as its fsuid, fsgid and groups.
pub fn run_as<T: Send>(creds: &FsCreds, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    on_a_thread_of_its_own(|| {
        wear(creds)?;
        f()
    })
}

/// Gives the calling thread `creds` as its fsuid, fsgid and groups, for the rest of its
/// life: only for a thread the daemon started for this caller alone (a per-caller checker
/// of the files source), which wears them from its first instruction to its end.
pub fn wear(creds: &FsCreds) -> io::Result<()> {
    // Groups and gid while fsuid is still root's (setgroups needs CAP_SETGID, which a
    // change of fsuid does not drop, but keep the order obvious).
    sys::setgroups_this_thread(&creds.groups)?;
    sys::setfsgid(creds.gid);
    sys::setfsuid(creds.uid);
    // setfsuid reports no failure: ask for the value to know it took.
    if sys::setfsuid(u32::MAX) != creds.uid || sys::setfsgid(u32::MAX) != creds.gid {
        return Err(io::Error::other("could not take the caller's credentials"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_only_root_may_read_is_refused_to_the_callers_credentials() {
        if !nix::unistd::geteuid().is_root() {
            assert!(std::env::var_os("CI").is_none(), "CI runs as root");
            eprintln!("SKIP: needs root to change file-system credentials");
            return;
        }
        let dir = std::env::temp_dir().join(format!("watchd-creds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("secret");
        std::fs::write(&secret, b"root's").unwrap();
        std::os::unix::fs::chown(&secret, Some(0), Some(0)).unwrap();
        std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let stranger = FsCreds {
            uid: 65534,
            gid: 65534,
            groups: vec![],
        };
        let as_stranger = run_as(&stranger, || std::fs::read(&secret));
        let as_root = std::fs::read(&secret);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            as_stranger.map_err(|e| e.kind()),
            Err(io::ErrorKind::PermissionDenied),
            "root's DAC override must not survive the change of fsuid"
        );
        assert_eq!(
            as_root.unwrap(),
            b"root's",
            "the calling thread keeps its own rights"
        );
    }
}
