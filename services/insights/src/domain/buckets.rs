//! Trend buckets: hours, days, weeks (from Monday) and months of local time in an IANA time
//! zone, each with its start and the SQL that puts a conversation in it.
//!
//! The SQL is integer arithmetic on `created_at` (milliseconds since the epoch), the same on
//! Postgres and SQLite: between two of the zone's transitions its offset is constant, so a
//! conversation's local hour, day or week is `(created_at + offset) / width`; the window is
//! cut at each transition it contains. Months are not of one width and are told apart by
//! their start instants.

use jiff::civil::{self, DateTime};
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};

use super::dimensions::{DAY_MS, Window};

/// The most buckets one answer holds.
pub const MAX_BUCKETS: i64 = 1000;

const HOUR_MS: i64 = 3_600_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interval {
    Hour,
    Day,
    Week,
    Month,
}

impl Interval {
    /// `hour`, `day`, `week` or `month`; `day` for "".
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "hour" => Self::Hour,
            "" | "day" => Self::Day,
            "week" => Self::Week,
            "month" => Self::Month,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Hour => "hour",
            Self::Day => "day",
            Self::Week => "week",
            Self::Month => "month",
        }
    }

    /// Width and shift of the fixed-width intervals: the bucket of local time `t` is
    /// `(t + shift) / width` (1970-01-01 was a Thursday: weeks from Monday shift 3 days).
    fn width(self) -> Option<(i64, i64)> {
        match self {
            Self::Hour => Some((HOUR_MS, 0)),
            Self::Day => Some((DAY_MS, 0)),
            Self::Week => Some((7 * DAY_MS, 3 * DAY_MS)),
            Self::Month => None,
        }
    }
}

/// How a window is cut into buckets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// An SQL expression over `c.created_at` giving the bucket key of a conversation.
    pub key_sql: String,
    /// Every bucket of the window, in order: its key and its start (ms since the epoch).
    pub buckets: Vec<(i64, i64)>,
}

/// The IANA time zone `name` (`UTC` for "").
pub fn time_zone(name: &str) -> Result<TimeZone, String> {
    if name.is_empty() {
        return Ok(TimeZone::UTC);
    }
    TimeZone::get(name).map_err(|_| format!("`{name}` is not an IANA time zone"))
}

fn instant(ms: i64) -> Result<Timestamp, String> {
    Timestamp::from_millisecond(ms).map_err(|e| format!("time out of range: {e}"))
}

/// The instant local time `local` (milliseconds of civil time since 1970-01-01T00:00)
/// begins in `tz`; a time skipped by a transition begins when the transition ends.
fn local_start(tz: &TimeZone, local: i64) -> Result<i64, String> {
    let civil: DateTime = instant(local)?.to_zoned(TimeZone::UTC).datetime();
    civil
        .to_zoned(tz.clone())
        .map(|z| z.timestamp().as_millisecond())
        .map_err(|e| format!("time out of range: {e}"))
}

fn offset_ms(tz: &TimeZone, ms: i64) -> Result<i64, String> {
    Ok(i64::from(tz.to_offset(instant(ms)?).seconds()) * 1000)
}

/// Cuts `window` into `interval`s of local time in `tz`.
pub fn plan(interval: Interval, tz: &TimeZone, window: Window) -> Result<Plan, String> {
    match interval.width() {
        Some((width, shift)) => fixed(tz, window, width, shift),
        None => months(tz, window),
    }
}

fn too_many(count: i64) -> String {
    format!(
        "the window has {count} buckets of this interval, more than {MAX_BUCKETS}: ask for a \
         shorter window or a longer interval"
    )
}

fn fixed(tz: &TimeZone, window: Window, width: i64, shift: i64) -> Result<Plan, String> {
    let key = |ms: i64| -> Result<i64, String> {
        Ok((ms + offset_ms(tz, ms)? + shift).div_euclid(width))
    };
    let (first, last) = (key(window.from)?, key(window.to - 1)?);
    if last - first + 1 > MAX_BUCKETS {
        return Err(too_many(last - first + 1));
    }
    // The offsets in force across the window: (until, offset) pieces, then the last one.
    let mut pieces = Vec::new();
    let mut current = offset_ms(tz, window.from)?;
    for transition in tz.following(instant(window.from)?) {
        let at = transition.timestamp().as_millisecond();
        if at >= window.to {
            break;
        }
        pieces.push((at, current));
        current = i64::from(transition.offset().seconds()) * 1000;
    }
    let bucket = |offset: i64| format!("(c.created_at + {}) / {width}", offset + shift);
    let key_sql = if pieces.is_empty() {
        format!("CAST({} AS BIGINT)", bucket(current))
    } else {
        let mut sql = String::from("CAST(CASE");
        for (until, offset) in &pieces {
            sql.push_str(&format!(
                " WHEN c.created_at < {until} THEN {}",
                bucket(*offset)
            ));
        }
        sql.push_str(&format!(" ELSE {} END AS BIGINT)", bucket(current)));
        sql
    };
    let mut buckets: Vec<(i64, i64)> = Vec::new();
    for k in first..=last {
        let start = local_start(tz, k * width - shift)?;
        match buckets.last_mut() {
            // A local hour a transition skipped starts where the next one does: one
            // bucket, under the key its conversations get (the later one).
            Some((key, previous)) if *previous >= start => *key = k,
            _ => buckets.push((k, start)),
        }
    }
    Ok(Plan { key_sql, buckets })
}

fn months(tz: &TimeZone, window: Window) -> Result<Plan, String> {
    let local = |ms: i64| -> Result<Zoned, String> { Ok(instant(ms)?.to_zoned(tz.clone())) };
    let (from, to) = (local(window.from)?, local(window.to - 1)?);
    let index = |z: &Zoned| i64::from(z.year()) * 12 + i64::from(z.month()) - 1;
    let (first, last) = (index(&from), index(&to));
    if last - first + 1 > MAX_BUCKETS {
        return Err(too_many(last - first + 1));
    }
    let start_of = |k: i64| -> Result<i64, String> {
        let year = i16::try_from(k.div_euclid(12)).map_err(|e| e.to_string())?;
        let month = i8::try_from(k.rem_euclid(12) + 1).map_err(|e| e.to_string())?;
        civil::date(year, month, 1)
            .at(0, 0, 0, 0)
            .to_zoned(tz.clone())
            .map(|z| z.timestamp().as_millisecond())
            .map_err(|e| format!("time out of range: {e}"))
    };
    let mut buckets = Vec::new();
    for k in first..=last {
        buckets.push((k, start_of(k)?));
    }
    let key_sql = if buckets.len() == 1 {
        format!("CAST({last} AS BIGINT)")
    } else {
        let mut sql = String::from("CAST(CASE");
        for pair in buckets.windows(2) {
            let ((key, _), (_, next_start)) = (pair[0], pair[1]);
            sql.push_str(&format!(" WHEN c.created_at < {next_start} THEN {key}"));
        }
        sql.push_str(&format!(" ELSE {last} END AS BIGINT)"));
        sql
    };
    Ok(Plan { key_sql, buckets })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        s.parse::<Timestamp>().unwrap().as_millisecond()
    }

    /// The bucket key the SQL would compute, evaluated here the same way.
    fn key_of(plan: &Plan, tz: &TimeZone, interval: Interval, at: i64) -> i64 {
        match interval.width() {
            Some((width, shift)) => (at + offset_ms(tz, at).unwrap() + shift).div_euclid(width),
            None => {
                plan.buckets
                    .iter()
                    .rev()
                    .find(|(_, start)| *start <= at)
                    .unwrap()
                    .0
            }
        }
    }

    #[test]
    fn days_follow_local_midnight_across_a_dst_change() {
        let tz = time_zone("Europe/Berlin").unwrap();
        // Clocks go forward on 2026-03-29: that day has 23 hours.
        let window = Window {
            from: ms("2026-03-27T23:00:00Z"),
            to: ms("2026-03-30T22:00:00Z"),
        };
        let plan = plan(Interval::Day, &tz, window).unwrap();
        let starts: Vec<i64> = plan.buckets.iter().map(|b| b.1).collect();
        assert_eq!(
            starts,
            [
                ms("2026-03-27T23:00:00Z"),
                ms("2026-03-28T23:00:00Z"),
                ms("2026-03-29T22:00:00Z"),
            ]
        );
        assert!(
            plan.key_sql.contains("CASE WHEN c.created_at < "),
            "{}",
            plan.key_sql
        );
        // 23:30 local on the 29th (21:30 UTC, summer time) is in the 29th's bucket.
        let at = ms("2026-03-29T21:30:00Z");
        assert_eq!(key_of(&plan, &tz, Interval::Day, at), plan.buckets[1].0);
    }

    #[test]
    fn weeks_start_on_monday_and_months_on_the_first() {
        let tz = time_zone("").unwrap();
        let window = Window {
            from: ms("2026-11-30T00:00:00Z"),
            to: ms("2026-12-15T00:00:00Z"),
        };
        let weeks = plan(Interval::Week, &tz, window).unwrap();
        let starts: Vec<i64> = weeks.buckets.iter().map(|b| b.1).collect();
        // 2026-11-30 is a Monday.
        assert_eq!(
            starts,
            [
                ms("2026-11-30T00:00:00Z"),
                ms("2026-12-07T00:00:00Z"),
                ms("2026-12-14T00:00:00Z")
            ]
        );
        let tz = time_zone("Asia/Kathmandu").unwrap();
        let months = plan(Interval::Month, &tz, window).unwrap();
        let starts: Vec<i64> = months.buckets.iter().map(|b| b.1).collect();
        assert_eq!(
            starts,
            [
                ms("2026-11-30T18:15:00Z") - 30 * DAY_MS,
                ms("2026-11-30T18:15:00Z")
            ]
        );
    }

    #[test]
    fn a_window_inside_one_month_is_one_bucket_of_valid_sql() {
        let window = Window {
            from: ms("2026-12-03T00:00:00Z"),
            to: ms("2026-12-20T00:00:00Z"),
        };
        let plan = plan(Interval::Month, &TimeZone::UTC, window).unwrap();
        assert_eq!(plan.buckets, [(2026 * 12 + 11, ms("2026-12-01T00:00:00Z"))]);
        assert_eq!(plan.key_sql, format!("CAST({} AS BIGINT)", 2026 * 12 + 11));
    }

    #[test]
    fn the_hour_a_spring_forward_skips_is_one_bucket_with_the_key_its_rows_get() {
        let tz = time_zone("Europe/Berlin").unwrap();
        // 2026-03-29: 02:00 local does not exist; 01:00 UTC is 03:00 CEST.
        let window = Window {
            from: ms("2026-03-29T00:00:00Z"),
            to: ms("2026-03-29T03:00:00Z"),
        };
        let plan = plan(Interval::Hour, &tz, window).unwrap();
        let starts: Vec<i64> = plan.buckets.iter().map(|b| b.1).collect();
        assert_eq!(
            starts,
            [
                ms("2026-03-29T00:00:00Z"),
                ms("2026-03-29T01:00:00Z"),
                ms("2026-03-29T02:00:00Z")
            ]
        );
        let at = ms("2026-03-29T01:30:00Z");
        assert_eq!(key_of(&plan, &tz, Interval::Hour, at), plan.buckets[1].0);
    }

    #[test]
    fn too_many_buckets_and_unknown_zones_are_refused() {
        let window = Window {
            from: 0,
            to: 400 * DAY_MS,
        };
        assert!(plan(Interval::Hour, &TimeZone::UTC, window).is_err());
        assert_eq!(
            plan(Interval::Day, &TimeZone::UTC, window)
                .unwrap()
                .buckets
                .len(),
            400
        );
        assert!(time_zone("Mars/Olympus").is_err());
        assert_eq!(Interval::parse(""), Some(Interval::Day));
        assert_eq!(Interval::parse("fortnight"), None);
    }
}
