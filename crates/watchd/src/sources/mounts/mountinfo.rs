//! The fallback backend: the caller's own `/proc/PID/mountinfo`, re-read on every change.
//!
//! The kernel flags the open mountinfo with `POLLPRI` on every change in the namespace; each
//! wake-up costs a full re-read and a diff against the last table, keyed by mount id.
//! Changes that come and go between two reads are not seen. Used where the kernel lacks
//! fanotify mount events or statmount (before 6.15, or refused by a seccomp filter), and for
//! a caller whose root is not its namespace's (a chroot), whose mount points only its own
//! mountinfo gives.
#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::{MountEntry, MountId, Origin, diff};
use crate::event::Event;
use crate::hub::Hub;

/// Undoes mountinfo's octal escapes (`\040` for a space, `\134` for a backslash…).
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal = field
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (field[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') << 6 | (d[1] - b'0') << 3 | (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

fn parse_line(line: &[u8]) -> Option<MountEntry> {
    let text = |f: &[u8]| String::from_utf8_lossy(f).into_owned();
    let mut fields = line.split(|&c| c == b' ');
    let mut next = || fields.next();
    let id = MountId(std::str::from_utf8(next()?).ok()?.parse().ok()?);
    let parent = MountId(std::str::from_utf8(next()?).ok()?.parse().ok()?);
    let (major, minor) = std::str::from_utf8(next()?).ok()?.split_once(':')?;
    let (major, minor) = (major.parse().ok()?, minor.parse().ok()?);
    let root = unescape(next()?);
    let mount_point = unescape(next()?);
    let options = text(next()?);
    let mut propagation = Vec::new();
    loop {
        match next()? {
            b"-" => break,
            tag => propagation.push(text(tag)),
        }
    }
    Some(MountEntry {
        id,
        parent,
        major,
        minor,
        root,
        mount_point,
        options,
        propagation: propagation.join(" "),
        fs_type: text(next()?),
        source: unescape(next()?),
        super_options: text(next()?),
        unique: None,
        gone: false,
    })
}

/// Parses a whole mountinfo file; lines that do not parse are skipped (and counted).
pub fn parse_mountinfo(text: &[u8]) -> (Vec<MountEntry>, usize) {
    let mut bad = 0;
    let entries = text
        .split(|&c| c == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| {
            parse_line(l).or_else(|| {
                bad += 1;
                None
            })
        })
        .collect();
    (entries, bad)
}

/// A view's mount table as last read.
struct Table {
    mounts: Vec<Arc<MountEntry>>,
    file: File,
    buf: Vec<u8>,
}

impl Table {
    fn reread(&mut self) -> io::Result<Vec<Arc<MountEntry>>> {
        Ok(reread(&self.file, &mut self.buf)?
            .into_iter()
            .map(Arc::new)
            .collect())
    }
}

/// Reads an open mountinfo (a caller's, kept open to follow its namespace) again from the
/// start, with `buf` as the reading buffer.
pub fn reread(mut file: &File, buf: &mut Vec<u8>) -> io::Result<Vec<MountEntry>> {
    buf.clear();
    file.seek(SeekFrom::Start(0))?;
    file.read_to_end(buf)?;
    let (entries, bad) = parse_mountinfo(buf);
    if bad > 0 {
        tracing::warn!(lines = bad, "skipped mountinfo lines that did not parse");
    }
    Ok(entries)
}

/// Waits until `due` (forever without one) for the thread's wake-up pipe `wake` or one of
/// `tables` (open mountinfos) to change; drains the pipe. Returns whether the pipe woke it,
/// and which tables changed (`POLLPRI`), in their order.
pub fn wait_for_change(
    wake: &OwnedFd,
    tables: &[&File],
    due: Option<std::time::Instant>,
) -> nix::Result<(bool, Vec<bool>)> {
    let timeout = match due {
        None => PollTimeout::NONE,
        Some(due) => {
            let left = due.saturating_duration_since(std::time::Instant::now());
            PollTimeout::try_from(left.as_millis() + 1).unwrap_or(PollTimeout::MAX)
        }
    };
    let mut fds = vec![PollFd::new(wake.as_fd(), PollFlags::POLLIN)];
    fds.extend(
        tables
            .iter()
            .map(|table| PollFd::new(table.as_fd(), PollFlags::POLLPRI)),
    );
    match poll(&mut fds, timeout) {
        Ok(_) | Err(nix::errno::Errno::EINTR) => {}
        Err(e) => return Err(e),
    }
    let fired: Vec<bool> = fds.iter().map(|fd| fd.any().unwrap_or(false)).collect();
    let mut drain = [0u8; 64];
    while rustix::io::read(wake, &mut drain).is_ok_and(|n| n > 0) {}
    Ok((fired[0], fired[1..].to_vec()))
}

/// One caller's view of the mount tree, followed through its mountinfo.
pub struct View {
    pub origin: Origin,
    table: Mutex<Table>,
}

impl View {
    /// Reads the first table from `file`, a caller's open mountinfo.
    pub fn open(origin: Origin, file: File) -> io::Result<View> {
        let mut table = Table {
            mounts: Vec::new(),
            file,
            buf: Vec::with_capacity(64 * 1024),
        };
        table.mounts = table.reread()?;
        Ok(View {
            origin,
            table: Mutex::new(table),
        })
    }

    /// The current table as SNAPSHOT attaches, handed to `then` with the table held still.
    pub fn with_snapshot(&self, then: &mut dyn FnMut(&[Event])) {
        let table = self.table.lock().expect("mount table poisoned");
        then(&super::snapshot(table.mounts.iter(), self.origin));
    }

    /// Re-reads the view's mountinfo on every change until `stop` closes.
    pub fn follow(&self, hub: &Hub, stop: OwnedFd) {
        let watched = match self
            .table
            .lock()
            .expect("mount table poisoned")
            .file
            .try_clone()
        {
            Ok(file) => file,
            Err(e) => return tracing::error!(error = %e, "cannot follow a mount namespace"),
        };
        loop {
            let mut fds = [
                PollFd::new(watched.as_fd(), PollFlags::POLLPRI),
                PollFd::new(stop.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    return tracing::error!(error = %e, "stopped following a mount namespace: poll failed");
                }
            }
            if fds[1].any().unwrap_or(true) {
                return tracing::info!(
                    view = self.origin.view,
                    "no watch left on a mount namespace: stopped following it"
                );
            }
            let mut table = self.table.lock().expect("mount table poisoned");
            match table.reread() {
                Ok(mounts) => {
                    for (subtype, change) in diff(&table.mounts, &mounts, self.origin) {
                        hub.publish(&change.into_event(subtype, 0));
                    }
                    table.mounts = mounts;
                }
                Err(e) => {
                    tracing::error!(error = %e, "re-reading mountinfo failed; retrying on the next change")
                }
            }
        }
    }
}
