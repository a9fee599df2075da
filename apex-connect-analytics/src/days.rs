//! Calendar days: both platforms export whole days, in the project's (or property's) time zone.
//!
//! A sync walks **day windows**: `[from, to]`, both inclusive, at most `window_days` long, never
//! past today. When a walk has reached today it is *caught up*; the next walk starts again a
//! trailing number of days before the last day it exported (Mixpanel's attribution window, GA4's
//! freshness window), because both platforms keep changing recent days. Records of those days
//! come back with the same ids, so sinks upsert them.

use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Days, LocalResult, NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;

use apex_connect_core::{Error, Result};

/// The wall clock a connector reads "today" from (and quota resets). Injectable for tests.
pub type WallClock = apex_connect_core::oauth::Clock;

/// The system clock.
pub fn system_clock() -> WallClock {
    apex_connect_core::oauth::system_clock()
}

/// Today's date in `tz` at `now`.
pub fn today_in(tz: Tz, now: SystemTime) -> NaiveDate {
    let utc = system_to_utc(now);
    utc.with_timezone(&tz).date_naive()
}

/// `now` as a UTC date-time (times before 1970 read as the epoch).
pub fn system_to_utc(now: SystemTime) -> DateTime<Utc> {
    let d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    DateTime::<Utc>::from_timestamp(secs, d.subsec_nanos()).unwrap_or_default()
}

/// `d + n` days, saturating at the calendar's end.
pub fn add_days(d: NaiveDate, n: u64) -> NaiveDate {
    d.checked_add_days(Days::new(n)).unwrap_or(NaiveDate::MAX)
}

/// `d - n` days, saturating at the calendar's start.
pub fn sub_days(d: NaiveDate, n: u64) -> NaiveDate {
    d.checked_sub_days(Days::new(n)).unwrap_or(NaiveDate::MIN)
}

/// The last day of a window that starts at `from`, is at most `len` days long (at least one)
/// and ends no later than `last`.
pub fn window_end(from: NaiveDate, len: u32, last: NaiveDate) -> NaiveDate {
    add_days(from, u64::from(len.max(1)) - 1)
        .min(last)
        .max(from)
}

/// The first day of the walk that follows a walk which exported through `through`: it re-reads
/// the last `trailing` days (at least the last one, which may have been exported while it was
/// still today), never before `start`.
pub fn repull_from(through: NaiveDate, trailing: u32, start: NaiveDate) -> NaiveDate {
    sub_days(through, u64::from(trailing.max(1)) - 1).max(start)
}

/// Parses an IANA time zone name (`"America/New_York"`).
///
/// # Errors
/// `Config` naming the setting when the name is unknown.
pub fn parse_tz(setting: &'static str, name: &str) -> Result<Tz> {
    name.trim().parse::<Tz>().map_err(|_| {
        Error::config("not an IANA time zone name (such as \"America/New_York\")")
            .with_context("setting", setting)
            .with_context("value", name)
    })
}

/// The UTC instant (Unix milliseconds) of a wall-clock time `local_ms` ("milliseconds since
/// 1970 as if the local time were UTC") in `tz`.
///
/// Local times that occur twice (the hour repeated when clocks go back) read as the first of
/// the two; local times that do not exist (the hour skipped when clocks go forward) read with
/// the offset in force just before the gap. Out-of-range values give `None`.
pub fn local_ms_to_utc_ms(tz: Tz, local_ms: i64) -> Option<i64> {
    let naive = DateTime::<Utc>::from_timestamp_millis(local_ms)?.naive_utc();
    let utc = match tz.from_local_datetime(&naive) {
        LocalResult::Single(t) => t,
        LocalResult::Ambiguous(first, _) => first,
        LocalResult::None => {
            // In a gap: the offset an hour earlier is the one in force before it.
            let before = naive.checked_sub_signed(chrono::TimeDelta::hours(3))?;
            let offset = tz.offset_from_local_datetime(&before).earliest()?;
            let fixed =
                chrono::FixedOffset::east_opt(chrono::Offset::fix(&offset).local_minus_utc())?;
            fixed
                .from_local_datetime(&naive)
                .single()?
                .with_timezone(&Tz::UTC)
        }
    };
    Some(utc.timestamp_millis())
}

/// The wall-clock time (as "milliseconds since 1970 as if local were UTC") of the UTC instant
/// `utc_ms` in `tz`: the inverse of [`local_ms_to_utc_ms`] (used by simulators).
pub fn utc_ms_to_local_ms(tz: Tz, utc_ms: i64) -> Option<i64> {
    let utc = DateTime::<Utc>::from_timestamp_millis(utc_ms)?;
    let local: NaiveDateTime = utc.with_timezone(&tz).naive_local();
    Some(local.and_utc().timestamp_millis())
}

/// Midnight at the start of `day` in `tz`, as Unix milliseconds.
pub fn day_start_utc_ms(tz: Tz, day: NaiveDate) -> Option<i64> {
    let local = day.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis();
    local_ms_to_utc_ms(tz, local)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    #[test]
    fn windows_and_repulls() {
        assert_eq!(
            window_end(d("2024-01-01"), 30, d("2024-12-31")),
            d("2024-01-30")
        );
        assert_eq!(
            window_end(d("2024-01-01"), 30, d("2024-01-10")),
            d("2024-01-10")
        );
        assert_eq!(
            window_end(d("2024-01-01"), 0, d("2024-01-10")),
            d("2024-01-01")
        );
        assert_eq!(
            repull_from(d("2024-01-10"), 5, d("2024-01-01")),
            d("2024-01-06")
        );
        assert_eq!(
            repull_from(d("2024-01-10"), 0, d("2024-01-01")),
            d("2024-01-10")
        );
        assert_eq!(
            repull_from(d("2024-01-03"), 5, d("2024-01-02")),
            d("2024-01-02")
        );
        assert_eq!(add_days(NaiveDate::MAX, 5), NaiveDate::MAX);
        assert_eq!(sub_days(NaiveDate::MIN, 5), NaiveDate::MIN);
    }

    #[test]
    fn local_times_across_dst_changes() {
        let ny: Tz = "America/New_York".parse().unwrap();
        let local = |s: &str| {
            NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S")
                .unwrap()
                .and_utc()
                .timestamp_millis()
        };
        let utc = |s: &str| {
            NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S")
                .unwrap()
                .and_utc()
                .timestamp_millis()
        };
        // Before the spring change (EST, UTC-5) and after it (EDT, UTC-4).
        assert_eq!(
            local_ms_to_utc_ms(ny, local("2022-03-13 01:30:00")),
            Some(utc("2022-03-13 06:30:00"))
        );
        assert_eq!(
            local_ms_to_utc_ms(ny, local("2022-03-13 03:30:00")),
            Some(utc("2022-03-13 07:30:00"))
        );
        // In the skipped hour: the offset before the gap.
        assert_eq!(
            local_ms_to_utc_ms(ny, local("2022-03-13 02:30:00")),
            Some(utc("2022-03-13 07:30:00"))
        );
        // The repeated hour in November reads as its first occurrence (EDT).
        assert_eq!(
            local_ms_to_utc_ms(ny, local("2022-11-06 01:30:00")),
            Some(utc("2022-11-06 05:30:00"))
        );
        assert_eq!(
            local_ms_to_utc_ms(ny, local("2022-11-06 02:30:00")),
            Some(utc("2022-11-06 07:30:00"))
        );
        // Round trip away from the changes.
        let t = utc("2022-07-01 12:00:00");
        assert_eq!(
            local_ms_to_utc_ms(ny, utc_ms_to_local_ms(ny, t).unwrap()),
            Some(t)
        );
        assert_eq!(local_ms_to_utc_ms(ny, i64::MAX), None);
        assert_eq!(
            day_start_utc_ms(ny, d("2022-03-13")),
            Some(utc("2022-03-13 05:00:00"))
        );
    }

    #[test]
    fn today_follows_the_zone() {
        // 2024-01-02 03:00 UTC is still Jan 1st in New York.
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_704_164_400);
        assert_eq!(today_in(Tz::UTC, t), d("2024-01-02"));
        assert_eq!(
            today_in("America/New_York".parse().unwrap(), t),
            d("2024-01-01")
        );
        assert!(parse_tz("project_timezone", "Mars/Olympus").is_err());
    }
}
