//! `watchd-docgen OUT_DIR`: makes what is installed beside the binaries, each from the source
//! that defines it, so that none can drift from the code (`make` runs it; nothing it makes is
//! committed):
//!
//! - `OUT_DIR/man/watchd.8`, `watchctl.1` and a page per watchctl subcommand, from the clap
//!   definitions the binaries parse (`watchd::cli`, the `watchctl` library);
//! - `OUT_DIR/completions/{watchctl.bash,_watchctl,watchctl.fish}`, from the same;
//! - `OUT_DIR/man/watchd.toml.5`, from `data/watchd.toml`'s comments ([`conf_page`]), after
//!   checking that the file names exactly the keys the daemon reads;
//! - `OUT_DIR/man/org.watchd.Watchd1.5`, from the introspection XML's gtk-doc comments
//!   ([`dbus_page`]), after checking that gdbus-codegen would find each one.
#![forbid(unsafe_code)]

mod conf_page;
mod dbus_page;
mod roff;

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::CommandFactory;
use clap_complete::Shell;

/// The `.TH` source field: what every page belongs to.
const SOURCE: &str = concat!("watchd ", env!("CARGO_PKG_VERSION"));

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        bail!("usage: watchd-docgen OUT_DIR");
    };
    let out = PathBuf::from(out);
    let man = out.join("man");
    let completions = out.join("completions");
    for dir in [&man, &completions] {
        std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    }
    write(&man.join("watchd.8"), &watchd_page()?)?;
    let mut watchctl = watchctl::Cli::command().disable_help_subcommand(true);
    watchctl.build();
    watchctl_pages(&watchctl, &man, true)?;
    for (shell, name) in [
        (Shell::Bash, "watchctl.bash"),
        (Shell::Zsh, "_watchctl"),
        (Shell::Fish, "watchctl.fish"),
    ] {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut watchctl.clone(), "watchctl", &mut script);
        write(&completions.join(name), &script)?;
    }
    write(&man.join("watchd.toml.5"), conf_page::render()?.as_bytes())?;
    write(
        &man.join("org.watchd.Watchd1.5"),
        dbus_page::render()?.as_bytes(),
    )?;
    Ok(())
}

/// The pages' date: `SOURCE_DATE_EPOCH` when set (reproducible builds; dpkg-buildpackage
/// sets it), else today, as YYYY-MM-DD.
fn date() -> String {
    let seconds = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        });
    let (y, m, d) = civil_from_days(seconds / 86_400);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Days since 1970-01-01 as a proleptic Gregorian date (Howard Hinnant's `civil_from_days`,
/// for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

fn write(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, contents).with_context(|| path.display().to_string())
}

/// clap's page with sections of our own after it (what clap cannot know).
fn clap_page(man: clap_mangen::Man, extra: &str) -> anyhow::Result<Vec<u8>> {
    let mut page = Vec::new();
    man.render(&mut page)?;
    page.extend_from_slice(extra.as_bytes());
    Ok(page)
}

fn watchd_page() -> anyhow::Result<Vec<u8>> {
    let man = clap_mangen::Man::new(watchd::cli::Args::command())
        .section("8")
        .date(date())
        .source(SOURCE)
        .manual("System Administration");
    let extra = format!(
        r#".SH SIGNALS
.TP
\fBSIGHUP\fR
Re-read the configuration file (\fBsystemctl reload watchd\fR sends it). [limits], [pipe] and authorization.timeout_ms apply to the requests that follow; other changed keys are logged as waiting for a restart. A file with an error is refused, the error logged, and the values in force stay. Subscriptions are kept.
.TP
\fBSIGTERM\fR, \fBSIGINT\fR
Stop. Every subscription ends: its reader sees end-of-file.
.SH ENVIRONMENT
.TP
\fBDBUS_SYSTEM_BUS_ADDRESS\fR
The bus to serve on when \fB\-\-bus\-address\fR is not given.
.TP
\fBWATCHD_LOG\fR
What to log, as a tracing filter, e.g. \fBdebug\fR. Under systemd the daemon logs to the journal, otherwise to standard error.
.SH FILES
.TP
{conf}
The configuration, optional: see \fBwatchd.toml\fR(5).
.TP
/usr/share/polkit-1/actions/org.watchd.Watchd1.policy
The polkit actions, one per kind of watch; without polkitd their defaults decide.
.TP
/usr/share/dbus-1/system.d/org.watchd.Watchd1.conf
The bus policy: root owns the name org.watchd.Watchd1, everyone may call it.
.TP
/usr/lib/systemd/system/watchd.service
The unit; a call to org.watchd.Watchd1 starts it (bus activation).
.SH SEE ALSO
\fBwatchctl\fR(1), \fBwatchd.toml\fR(5), \fBorg.watchd.Watchd1\fR(5), \fBpolkit\fR(8), \fBsystemctl\fR(1)
"#,
        conf = watchd::conf::DEFAULT_PATH
    );
    clap_page(man, &extra)
}

/// watchctl(1), then one page per subcommand (watchctl-watch-mounts(1), ...), as
/// `clap_mangen::generate_to` names them, each with the sections below.
fn watchctl_pages(cmd: &clap::Command, dir: &Path, top: bool) -> anyhow::Result<()> {
    for sub in cmd.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        watchctl_pages(sub, dir, false)?;
    }
    let man = clap_mangen::Man::new(cmd.clone())
        .section("1")
        .date(date())
        .source(SOURCE)
        .manual("User Commands");
    let name = man.get_filename();
    let extra = if top {
        r#".SH EXIT STATUS
.TP
0
Done: the command succeeded; or \fBwatch\fR printed its \fB\-\-count\fR records, its watch ended (the watched object went away), it was interrupted (SIGINT, SIGTERM) or its standard output was closed.
.TP
1
An error, printed on standard error (for instance: no watchd on the bus, or a refused watch with the daemon's error name).
.TP
2
A usage mistake.
.TP
3
The subscription's pipe ended: watchd stopped or ended the subscription.
.SH ENVIRONMENT
.TP
\fBDBUS_SYSTEM_BUS_ADDRESS\fR
The bus watchd is on when \fB\-\-bus\-address\fR is not given.
.TP
\fBKRB5CCNAME\fR
The cache \fBwatch krb5\fR follows when \fB\-\-cache\fR is not given.
.SH SEE ALSO
\fBwatchd\fR(8), \fBorg.watchd.Watchd1\fR(5)
"#
    } else {
        ".SH SEE ALSO\n\\fBwatchctl\\fR(1), \\fBwatchd\\fR(8)\n"
    };
    write(&dir.join(name), &clap_page(man, extra)?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn days_become_dates() {
        assert_eq!(super::civil_from_days(0), (1970, 1, 1));
        assert_eq!(super::civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(super::civil_from_days(20_427), (2025, 12, 5));
    }
}
