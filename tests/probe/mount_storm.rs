//! Makes mount changes as fast as the kernel takes them, in the mount namespace it runs in
//! (the tests and the mount benchmark run it under `unshare -m` or `nsenter -m`):
//!
//! - `pairs N DIR`: N times, mount a tmpfs on DIR and unmount it again at once.
//! - `burst N DIR`: a tmpfs on each of DIR/0 … DIR/N-1, in that order (source `burst-I`).
//! - `unburst N DIR`: unmounts those, last first.
//! - `remounts N TARGET`: N bind-remounts of TARGET, alternately read-only and read-write,
//!   the last one read-only.
//!
//! Prints the seconds it took on stdout.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use nix::mount::{MntFlags, MsFlags, mount, umount2};

fn tmpfs(target: &Path, source: &str) -> Result<()> {
    mount(
        Some(source),
        target,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("size=16k"),
    )
    .with_context(|| format!("mount tmpfs on {}", target.display()))
}

fn unmount(target: &Path) -> Result<()> {
    umount2(target, MntFlags::empty()).with_context(|| format!("umount {}", target.display()))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [command, count, path] = &args[..] else {
        bail!("usage: mount-storm pairs|burst|unburst|remounts N PATH");
    };
    let count: usize = count.parse().context("N")?;
    let path = PathBuf::from(path);
    let started = Instant::now();
    match command.as_str() {
        "pairs" => {
            std::fs::create_dir_all(&path)?;
            for _ in 0..count {
                tmpfs(&path, "storm")?;
                unmount(&path)?;
            }
        }
        "burst" => {
            for i in 0..count {
                let target = path.join(i.to_string());
                std::fs::create_dir_all(&target)?;
                tmpfs(&target, &format!("burst-{i}"))?;
            }
        }
        "unburst" => {
            for i in (0..count).rev() {
                unmount(&path.join(i.to_string()))?;
            }
        }
        "remounts" => {
            for i in 0..count {
                let read_only = if (count - 1 - i).is_multiple_of(2) {
                    MsFlags::MS_RDONLY
                } else {
                    MsFlags::empty()
                };
                mount(
                    None::<&str>,
                    &path,
                    None::<&str>,
                    MsFlags::MS_REMOUNT | MsFlags::MS_BIND | read_only,
                    None::<&str>,
                )
                .with_context(|| format!("remount {}", path.display()))?;
            }
        }
        other => bail!("unknown command {other}"),
    }
    println!("{:.6}", started.elapsed().as_secs_f64());
    Ok(())
}
