//! What ext4 already counts of a filesystem's errors, read from sysfs
//! (`/sys/fs/ext4/<device>/`): the number of errors since the filesystem was made (or last
//! checked), and the time, errno, function and line of the first and the last. ext4 keeps
//! these in its superblock and shows them there, for ext2 and ext3 too when its driver
//! serves them; they are what a new watch's initial state is built from.
#![forbid(unsafe_code)]

use std::io;
use std::path::{Path, PathBuf};

/// Where sysfs puts the ext4 directories.
const EXT4_SYSFS: &str = "/sys/fs/ext4";

/// The errors ext4 has counted on one filesystem.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counted {
    /// `errors_count`: how many errors, all told.
    pub count: u32,
    /// The first and the last of them, when the superblock says.
    pub first: Option<ErrorAt>,
    pub last: Option<ErrorAt>,
}

/// One error as the superblock remembers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorAt {
    /// Seconds since the epoch.
    pub time: u64,
    /// The errno, when ext4 recorded one it has a code for.
    pub errno: Option<i32>,
    /// The kernel function and line that reported it ("ext4_lookup:1827"), when known.
    pub function: String,
    pub line: u32,
}

impl ErrorAt {
    /// `function:line`, as the kernel's log prints it; `None` when ext4 recorded neither.
    pub fn place(&self) -> Option<String> {
        (!self.function.is_empty()).then(|| format!("{}:{}", self.function, self.line))
    }
}

/// The errno of an ext4 error code (`EXT4_ERR_*` of fs/ext4/ext4.h, what the superblock
/// and so `first_error_errcode` keep): ext4 stores a code of its own, not the errno.
pub fn errno_of_code(code: u32) -> Option<i32> {
    Some(match code {
        2 => libc::EIO,
        3 => libc::ENOMEM,
        4 => libc::EBADMSG, // EFSBADCRC
        5 => libc::EUCLEAN, // EFSCORRUPTED
        6 => libc::ENOSPC,
        7 => libc::ENOKEY,
        8 => libc::EROFS,
        9 => libc::EFBIG,
        10 => libc::EEXIST,
        11 => libc::ERANGE,
        12 => libc::EOVERFLOW,
        13 => libc::EBUSY,
        14 => libc::ENOTDIR,
        15 => libc::ENOTEMPTY,
        16 => libc::ESHUTDOWN,
        17 => libc::EFAULT,
        // 0: none recorded; 1: EXT4_ERR_UNKNOWN.
        _ => return None,
    })
}

/// The errno's symbolic name ("EUCLEAN"), `None` for a number the C library does not name.
pub fn errno_name(errno: i32) -> Option<String> {
    let errno = nix::errno::Errno::from_raw(errno);
    (errno != nix::errno::Errno::UnknownErrno).then(|| format!("{errno:?}"))
}

/// The sysfs directory of the ext4 filesystem on block device `major:minor`, named as the
/// kernel names the device (`/sys/dev/block/M:m` links to it), when there is one.
pub fn sysfs_dir(major: u32, minor: u32) -> Option<PathBuf> {
    let device = std::fs::read_link(format!("/sys/dev/block/{major}:{minor}")).ok()?;
    let dir = Path::new(EXT4_SYSFS).join(device.file_name()?);
    dir.is_dir().then_some(dir)
}

/// What ext4 counts on the filesystem on `major:minor`: `None` when it is not ext4's (or
/// sysfs is not there).
pub fn counted(major: u32, minor: u32) -> Option<Counted> {
    let dir = sysfs_dir(major, minor)?;
    read(&dir)
        .inspect_err(|e| tracing::debug!(dir = %dir.display(), error = %e, "cannot read ext4's error counts"))
        .ok()
}

/// Reads the counts in an ext4 sysfs directory.
pub fn read(dir: &Path) -> io::Result<Counted> {
    let text = |name: &str| -> io::Result<String> {
        Ok(std::fs::read_to_string(dir.join(name))?.trim().to_owned())
    };
    let number = |name: &str| -> io::Result<u64> {
        let value = text(name)?;
        value.parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{name}: not a number: {value:?}"),
            )
        })
    };
    let error = |which: &str| -> io::Result<Option<ErrorAt>> {
        let time = number(&format!("{which}_error_time"))?;
        if time == 0 {
            return Ok(None);
        }
        // Older kernels lack some of these: the time alone still says when.
        let code = number(&format!("{which}_error_errcode")).unwrap_or(0);
        Ok(Some(ErrorAt {
            time,
            errno: errno_of_code(u32::try_from(code).unwrap_or(0)),
            function: text(&format!("{which}_error_func")).unwrap_or_default(),
            line: number(&format!("{which}_error_line"))
                .ok()
                .and_then(|l| u32::try_from(l).ok())
                .unwrap_or(0),
        }))
    };
    Ok(Counted {
        count: u32::try_from(number("errors_count")?).unwrap_or(u32::MAX),
        first: error("first")?,
        last: error("last")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[(&str, &str)]) -> PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "watchd-ext4-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, value) in files {
            std::fs::write(dir.join(name), value).unwrap();
        }
        dir
    }

    /// The files as this kernel shows them after `trigger_fs_error` twice.
    #[test]
    fn counts_and_the_first_and_last_error_are_read() {
        let mut files = vec![("errors_count", "3\n")];
        for which in ["first", "last"] {
            files.extend([
                (leak(format!("{which}_error_time")), "1796512721\n"),
                (leak(format!("{which}_error_errcode")), "5\n"),
                (leak(format!("{which}_error_func")), "trigger_test_error\n"),
                (leak(format!("{which}_error_line")), "129\n"),
            ]);
        }
        let dir = dir_with(&files);
        let counted = read(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let at = ErrorAt {
            time: 1_796_512_721,
            errno: Some(libc::EUCLEAN),
            function: "trigger_test_error".into(),
            line: 129,
        };
        assert_eq!(
            counted,
            Counted {
                count: 3,
                first: Some(at.clone()),
                last: Some(at.clone()),
            }
        );
        assert_eq!(at.place().as_deref(), Some("trigger_test_error:129"));
    }

    fn leak(s: String) -> &'static str {
        Box::leak(s.into_boxed_str())
    }

    #[test]
    fn a_clean_filesystem_has_no_first_or_last_error() {
        let mut files = vec![("errors_count", "0\n")];
        for which in ["first", "last"] {
            files.extend([
                (leak(format!("{which}_error_time")), "0\n"),
                (leak(format!("{which}_error_errcode")), "0\n"),
                (leak(format!("{which}_error_func")), "\n"),
                (leak(format!("{which}_error_line")), "0\n"),
            ]);
        }
        let dir = dir_with(&files);
        let counted = read(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(counted, Counted::default());
    }

    #[test]
    fn a_missing_or_garbled_count_is_an_error() {
        let dir = dir_with(&[("errors_count", "many\n")]);
        let garbled = read(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(garbled.unwrap_err().to_string().contains("errors_count"));
        let dir = dir_with(&[]);
        let missing = read(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(missing.unwrap_err().kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn ext4_codes_are_errnos_with_names() {
        assert_eq!(errno_of_code(5), Some(libc::EUCLEAN));
        assert_eq!(errno_of_code(4), Some(libc::EBADMSG));
        assert_eq!(errno_of_code(2), Some(libc::EIO));
        assert_eq!(errno_of_code(0), None);
        assert_eq!(errno_of_code(1), None, "EXT4_ERR_UNKNOWN");
        assert_eq!(errno_of_code(18), None);
        assert_eq!(errno_name(117).as_deref(), Some("EUCLEAN"));
        assert_eq!(errno_name(5).as_deref(), Some("EIO"));
        assert_eq!(errno_name(100_000), None);
    }

    #[test]
    fn this_machines_root_filesystem_is_read_when_it_is_ext4() {
        let Ok(st) = rustix::fs::stat("/") else {
            return;
        };
        let dev = rustix::fs::Dev::from(st.st_dev);
        let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
        match sysfs_dir(major, minor) {
            Some(dir) => {
                let counted = read(&dir).unwrap();
                assert_eq!(counted.count == 0, counted.last.is_none(), "{counted:?}");
            }
            None => eprintln!("SKIP: / ({major}:{minor}) is not ext4"),
        }
    }
}
