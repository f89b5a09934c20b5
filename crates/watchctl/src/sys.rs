//! The one call std does not cover: the local time zone's offset, from localtime_r(3).
#![allow(unsafe_code)] // localtime_r(3), which std and the dependencies do not wrap.

/// Seconds east of UTC in the local time zone at `unix_secs`; 0 when it cannot be told.
pub fn utc_offset(unix_secs: i64) -> i64 {
    // time_t is i64 here; where it is 32 bits, times past 2038 saturate.
    #[allow(clippy::unnecessary_fallible_conversions)]
    let t = libc::time_t::try_from(unix_secs).unwrap_or(libc::time_t::MAX);
    // SAFETY: `tm` is plain old data, for which all-zero bytes are a valid value.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call; localtime_r is the reentrant variant and
    // keeps no reference to them.
    let done = unsafe { libc::localtime_r(&t, &mut tm) };
    // c_long: i64 here, i32 on 32-bit targets.
    #[allow(clippy::useless_conversion)]
    if done.is_null() {
        0
    } else {
        i64::from(tm.tm_gmtoff)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn offset_is_within_a_day() {
        let offset = super::utc_offset(1_700_000_000);
        assert!(offset.abs() < 86_400, "{offset}");
    }
}
