//! The pure part of space watches and of quota watches' usage thresholds: a watch's lines
//! (threshold and margin), the alarm that decides LOW, STILL_LOWER and RECOVERED with
//! hysteresis and a rate limit, and the adaptive check interval. No clock and no syscalls:
//! times are handed in, so the unit tests decide them. "Free" is what is left: available
//! bytes or free inodes of a filesystem, or the room under a quota limit.
//!
//! - LOW when the free amount falls below the threshold;
//! - STILL_LOWER each time it has fallen a further margin (the watch's `step`) since the
//!   last warning;
//! - RECOVERED once it is back at or above threshold + margin: a filesystem hovering at
//!   the line (within one margin above it) stays low and says nothing more;
//! - LOW and STILL_LOWER come at most once per `min_interval` per watch and filesystem: one
//!   that falls due sooner waits, and is sent when the interval is over if it still holds
//!   then (with the numbers of that moment). RECOVERED is never held back.
#![forbid(unsafe_code)]

use std::time::Duration;

use watchd_proto::superblock;

/// A line given as a share of the filesystem or as an amount (bytes, or inodes).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Amount {
    Percent(f64),
    Absolute(u64),
}

impl Amount {
    /// "5%", "0.5%", "1G", "512M", "64K", "1T" (binary multiples, an optional "iB" or
    /// "B" after the letter), or a plain number (bytes, or inodes).
    pub fn parse(text: &str) -> Result<Amount, String> {
        let bad = || {
            format!(
                "'{text}' is neither a percentage from 0 to 100 (\"5%\") nor an amount (\"1G\", \"512M\", \"4096\")"
            )
        };
        let text = text.trim();
        if let Some(number) = text.strip_suffix('%') {
            let value: f64 = number.trim().parse().map_err(|_| bad())?;
            if !(0.0..=100.0).contains(&value) {
                return Err(format!(
                    "'{text}' is not a percentage from 0 to 100 (\"5%\")"
                ));
            }
            return Ok(Amount::Percent(value));
        }
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let value: f64 = number.parse().map_err(|_| bad())?;
        let shift = match unit.trim().to_ascii_uppercase().as_str() {
            "" | "B" => 0,
            "K" | "KB" | "KIB" => 10,
            "M" | "MB" | "MIB" => 20,
            "G" | "GB" | "GIB" => 30,
            "T" | "TB" | "TIB" => 40,
            _ => return Err(bad()),
        };
        let value = value * (1u64 << shift) as f64;
        if !value.is_finite() || value < 0.0 || value > u64::MAX as f64 {
            return Err(bad());
        }
        Ok(Amount::Absolute(value as u64))
    }

    /// The amount on a filesystem of `total`.
    pub fn of(self, total: u64) -> u64 {
        match self {
            Amount::Percent(p) => (total as f64 * p / 100.0) as u64,
            Amount::Absolute(n) => n,
        }
    }
}

/// What one resource (available bytes, or free inodes) of a watch is held to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rule {
    /// Warn below this.
    pub below: Amount,
    /// ...unless at least this much is free (gsd-housekeeping's "1 GB free is enough");
    /// `None`: the rule is off.
    pub min_free: Option<u64>,
    /// Each further drop of this much warns again; it is also the hysteresis margin.
    pub step: Amount,
}

/// A rule's lines on a filesystem of a given size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lines {
    pub threshold: u64,
    pub margin: u64,
}

impl Rule {
    pub fn lines(&self, total: u64) -> Lines {
        let below = self.below.of(total);
        Lines {
            threshold: self.min_free.map_or(below, |m| below.min(m)),
            // A margin of nothing would make every wobble at the line a record.
            margin: self.step.of(total).max(1),
        }
    }
}

/// The records an alarm sends; each kind has its own subtypes for them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Low,
    StillLower,
    Recovered,
}

impl Step {
    /// The subtype of a `space` watch's record.
    pub fn space_subtype(self) -> u8 {
        match self {
            Step::Low => superblock::SPACE_LOW,
            Step::StillLower => superblock::SPACE_STILL_LOWER,
            Step::Recovered => superblock::SPACE_RECOVERED,
        }
    }

    /// The subtype of a `quota` watch's usage record.
    pub fn quota_subtype(self) -> u8 {
        match self {
            Step::Low => superblock::QUOTA_LOW,
            Step::StillLower => superblock::QUOTA_STILL_LOWER,
            Step::Recovered => superblock::QUOTA_RECOVERED,
        }
    }
}

/// What [`Alarm::judge`] decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to say.
    Quiet,
    /// Send this record, then [`Alarm::commit`] it.
    Send(Step),
    /// A warning is due but the rate limit holds it until this time.
    Wait(Duration),
}

/// One watch's state for one resource of one filesystem.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Alarm {
    /// While low: the free amount at the last warning.
    warned_at: Option<u64>,
    /// When the last warning (LOW or STILL_LOWER) was sent.
    last_warning: Option<Duration>,
}

impl Alarm {
    pub fn is_low(&self) -> bool {
        self.warned_at.is_some()
    }

    /// What `free` means now, at time `now`, for a watch with these lines whose warnings
    /// are at least `min_interval` apart.
    pub fn judge(&self, free: u64, lines: Lines, now: Duration, min_interval: Duration) -> Verdict {
        let warn = |subtype| match self.last_warning {
            Some(last) if now < last + min_interval => Verdict::Wait(last + min_interval),
            _ => Verdict::Send(subtype),
        };
        match self.warned_at {
            None if free < lines.threshold => warn(Step::Low),
            None => Verdict::Quiet,
            Some(_) if free >= lines.threshold.saturating_add(lines.margin) => {
                Verdict::Send(Step::Recovered)
            }
            Some(warned) if free.saturating_add(lines.margin) <= warned => warn(Step::StillLower),
            Some(_) => Verdict::Quiet,
        }
    }

    /// A `step` record about `free` went out at `now`.
    pub fn commit(&mut self, step: Step, free: u64, now: Duration) {
        if step == Step::Recovered {
            self.warned_at = None;
        } else {
            self.warned_at = Some(free);
            self.last_warning = Some(now);
        }
    }

    /// How far `free` is from the nearest line that would change this alarm's state.
    pub fn distance(&self, free: u64, lines: Lines) -> u64 {
        match self.warned_at {
            None => free.saturating_sub(lines.threshold),
            Some(warned) => {
                let up = lines
                    .threshold
                    .saturating_add(lines.margin)
                    .saturating_sub(free);
                let down = free.saturating_sub(warned.saturating_sub(lines.margin));
                up.min(down)
            }
        }
    }
}

/// When to look again at a filesystem `distance` away from its nearest line (bytes or
/// inodes) if it can change by at most `rate` of them per second: the time it would take,
/// bounded by `shortest` and `longest`.
pub fn next_check(distance: u64, rate: u64, shortest: Duration, longest: Duration) -> Duration {
    let seconds = distance as f64 / rate.max(1) as f64;
    Duration::from_secs_f64(seconds.min(longest.as_secs_f64())).clamp(shortest, longest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Step::{Low as LOW, Recovered as RECOVERED, StillLower as LOWER};

    const GIB: u64 = 1 << 30;
    const S: fn(u64) -> Duration = Duration::from_secs;

    /// The defaults, as gsd-housekeeping's: 5 %, unless 1 GiB is free; step 1 %.
    fn defaults() -> Rule {
        Rule {
            below: Amount::Percent(5.0),
            min_free: Some(GIB),
            step: Amount::Percent(1.0),
        }
    }

    #[test]
    fn amounts_parse_as_percentages_or_binary_sizes_and_refuse_the_rest() {
        assert_eq!(Amount::parse("5%"), Ok(Amount::Percent(5.0)));
        assert_eq!(Amount::parse("0.5 %"), Ok(Amount::Percent(0.5)));
        assert_eq!(Amount::parse("1G"), Ok(Amount::Absolute(GIB)));
        assert_eq!(Amount::parse("1.5GiB"), Ok(Amount::Absolute(3 * GIB / 2)));
        assert_eq!(Amount::parse("64k"), Ok(Amount::Absolute(65536)));
        assert_eq!(Amount::parse("4096"), Ok(Amount::Absolute(4096)));
        for bad in ["-5%", "101%", "", "%", "5x", "-1G", "G", "1e3%x", "nan%"] {
            assert!(Amount::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(Amount::Percent(5.0).of(1000), 50);
        assert_eq!(Amount::Absolute(7).of(1000), 7);
    }

    #[test]
    fn the_defaults_warn_at_5_percent_on_a_small_filesystem_and_at_1_gib_on_a_large_one() {
        let small = defaults().lines(64 << 20);
        assert_eq!(
            small.threshold,
            (64 << 20) / 20,
            "5 % of 64 MiB is under 1 GiB"
        );
        assert_eq!(small.margin, (64 << 20) / 100);
        let large = defaults().lines(1 << 40);
        assert_eq!(
            large.threshold, GIB,
            "5 % of 1 TiB is over 1 GiB: 1 GiB rules"
        );
        let sized = Rule {
            below: Amount::Absolute(100),
            min_free: None,
            step: Amount::Absolute(0),
        };
        assert_eq!(
            sized.lines(1000),
            Lines {
                threshold: 100,
                margin: 1
            }
        );
    }

    #[test]
    fn low_then_a_step_lower_then_recovered_only_past_the_margin() {
        let lines = Lines {
            threshold: 1000,
            margin: 100,
        };
        let every = Duration::ZERO;
        let mut alarm = Alarm::default();
        assert_eq!(alarm.judge(1000, lines, S(0), every), Verdict::Quiet);
        assert_eq!(alarm.judge(999, lines, S(0), every), Verdict::Send(LOW));
        alarm.commit(LOW, 999, S(0));
        assert!(alarm.is_low());
        assert_eq!(
            alarm.judge(900, lines, S(1), every),
            Verdict::Quiet,
            "less than a step"
        );
        assert_eq!(alarm.judge(899, lines, S(1), every), Verdict::Send(LOWER));
        alarm.commit(LOWER, 899, S(1));
        assert_eq!(alarm.judge(800, lines, S(2), every), Verdict::Quiet);
        // Back above the line but inside the margin: still low, silent.
        for wobble in [1000, 1050, 1099, 950, 1000] {
            assert_eq!(
                alarm.judge(wobble, lines, S(3), every),
                Verdict::Quiet,
                "{wobble}"
            );
        }
        assert_eq!(
            alarm.judge(1100, lines, S(4), every),
            Verdict::Send(RECOVERED)
        );
        alarm.commit(RECOVERED, 1100, S(4));
        assert!(!alarm.is_low());
        assert_eq!(alarm.judge(1000, lines, S(5), every), Verdict::Quiet);
    }

    #[test]
    fn warnings_wait_for_the_interval_and_recovery_does_not() {
        let lines = Lines {
            threshold: 1000,
            margin: 100,
        };
        let ten_minutes = S(600);
        let mut alarm = Alarm::default();
        alarm.commit(LOW, 900, S(100));
        assert_eq!(
            alarm.judge(700, lines, S(200), ten_minutes),
            Verdict::Wait(S(700))
        );
        assert_eq!(
            alarm.judge(700, lines, S(700), ten_minutes),
            Verdict::Send(LOWER)
        );
        assert_eq!(
            alarm.judge(1200, lines, S(200), ten_minutes),
            Verdict::Send(RECOVERED)
        );
        alarm.commit(RECOVERED, 1200, S(200));
        assert_eq!(
            alarm.judge(500, lines, S(300), ten_minutes),
            Verdict::Wait(S(700)),
            "low again soon after: held back"
        );
        assert_eq!(
            alarm.judge(5000, lines, S(300), ten_minutes),
            Verdict::Quiet
        );
    }

    #[test]
    fn the_distance_is_to_the_nearest_line_that_changes_the_state() {
        let lines = Lines {
            threshold: 1000,
            margin: 100,
        };
        let mut alarm = Alarm::default();
        assert_eq!(alarm.distance(5000, lines), 4000);
        alarm.commit(LOW, 950, S(0));
        assert_eq!(
            alarm.distance(950, lines),
            100,
            "150 up to recover, 100 down"
        );
        assert_eq!(alarm.distance(1080, lines), 20, "20 up to recover");
    }

    #[test]
    fn the_next_check_is_the_time_to_the_line_at_the_fastest_rate_within_bounds() {
        let (short, long) = (S(1), S(300));
        let rate = GIB;
        assert_eq!(next_check(0, rate, short, long), short);
        assert_eq!(next_check(10 * GIB, rate, short, long), S(10));
        assert_eq!(next_check(u64::MAX, rate, short, long), long);
        assert_eq!(
            next_check(GIB, 0, short, long),
            long,
            "a zero rate is one per second"
        );
    }
}
