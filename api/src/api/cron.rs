//! CronJob schedules as Kubernetes reads them: five fields (minute hour day-of-month month
//! day-of-week) with `*`, ranges, lists, steps, month and weekday names (`JAN`, `MON`), the
//! `@hourly`-style shorthands, and Vixie cron's rule that a day matching *either* a restricted
//! day-of-month or a restricted day-of-week fires. Times are wall-clock times in the CronJob's
//! `spec.timeZone` (an IANA name; UTC when unset).
//!
//! Parsing and matching are `croner`'s (it follows Vixie semantics); this module adds the
//! time zone and the questions the CronJob controller asks: the most recent scheduled time in a
//! window, and the next one after a time.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds};
use croner::Cron;

/// Why a schedule or time zone is refused; the message names the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("unparseable schedule {schedule:?}: {why}")]
    Syntax { schedule: String, why: String },
    #[error("cannot use TZ or CRON_TZ in schedule, use timeZone field instead")]
    TimeZoneInSchedule,
    #[error("unknown time zone {0}")]
    UnknownTimeZone(String),
}

/// A parsed schedule in its time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    zone: Tz,
}

/// The scheduled times of a window, as the controller needs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Missed {
    /// The latest scheduled time in the window.
    pub latest: DateTime<Utc>,
    /// How many scheduled times the window held, counted up to [`TOO_MANY_MISSED`] + 1.
    pub count: usize,
}

/// Past this many missed start times Kubernetes warns that the clock or the controller is
/// badly behind; counting stops there.
pub const TOO_MANY_MISSED: usize = 100;

impl Schedule {
    /// Parses `schedule` for `time_zone` (UTC when `None`).
    pub fn parse(schedule: &str, time_zone: Option<&str>) -> Result<Self, ScheduleError> {
        let trimmed = schedule.trim();
        if trimmed.starts_with("TZ=") || trimmed.starts_with("CRON_TZ=") {
            return Err(ScheduleError::TimeZoneInSchedule);
        }
        let syntax = |why: String| ScheduleError::Syntax {
            schedule: schedule.to_string(),
            why,
        };
        // Kubernetes' parser takes exactly five fields; croner would also take six or seven.
        if !trimmed.starts_with('@') && trimmed.split_whitespace().count() != 5 {
            return Err(syntax(format!(
                "expected exactly 5 fields, found {}",
                trimmed.split_whitespace().count()
            )));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .build()
            .parse(trimmed)
            .map_err(|e| syntax(e.to_string()))?;
        let zone = match time_zone {
            None => Tz::UTC,
            Some(name) => {
                Tz::from_str(name).map_err(|_| ScheduleError::UnknownTimeZone(name.to_string()))?
            }
        };
        Ok(Self { cron, zone })
    }

    /// The scheduled times in `(after, now]`: the latest and how many, if any.
    pub fn missed(&self, after: DateTime<Utc>, now: DateTime<Utc>) -> Option<Missed> {
        if now <= after {
            return None;
        }
        let local_now = now.with_timezone(&self.zone);
        let latest = self
            .cron
            .find_previous_occurrence(&local_now, true)
            .ok()?
            .with_timezone(&Utc);
        if latest <= after {
            return None;
        }
        let count = self
            .cron
            .iter_after(after.with_timezone(&self.zone))
            .take_while(|t| t.with_timezone(&Utc) <= now)
            .take(TOO_MANY_MISSED + 1)
            .count();
        Some(Missed { latest, count })
    }

    /// The first scheduled time after `time`, if the schedule ever fires again.
    pub fn next_after(&self, time: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&time.with_timezone(&self.zone), false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }
}

/// Checks a time zone name as `spec.timeZone` validation does.
pub fn check_time_zone(name: &str) -> Result<(), ScheduleError> {
    Tz::from_str(name)
        .map(|_| ())
        .map_err(|_| ScheduleError::UnknownTimeZone(name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    /// `schedule` (in `zone`) next fires after `from` at `expected`.
    fn check_next(schedule: &str, zone: Option<&str>, from: &str, expected: &str) {
        let parsed = Schedule::parse(schedule, zone).unwrap_or_else(|e| panic!("{schedule}: {e}"));
        assert_eq!(
            parsed.next_after(at(from)),
            Some(at(expected)),
            "{schedule} in {zone:?} after {from}"
        );
    }

    #[test]
    fn next_times_follow_kubernetes_semantics() {
        // 2026-11-26 is a Thursday.
        let table = [
            (
                "*/5 * * * *",
                None,
                "2026-11-26T08:16:00Z",
                "2026-11-26T08:20:00Z",
            ),
            (
                "30 9 * * 1-5",
                None,
                "2026-11-27T10:00:00Z",
                "2026-11-30T09:30:00Z",
            ),
            (
                "@hourly",
                None,
                "2026-11-26T08:16:00Z",
                "2026-11-26T09:00:00Z",
            ),
            (
                "@daily",
                None,
                "2026-11-26T08:16:00Z",
                "2026-11-27T00:00:00Z",
            ),
            (
                "@weekly",
                None,
                "2026-11-26T08:16:00Z",
                "2026-11-29T00:00:00Z",
            ),
            (
                "@monthly",
                None,
                "2026-11-26T08:16:00Z",
                "2026-12-01T00:00:00Z",
            ),
            (
                "@yearly",
                None,
                "2026-11-26T08:16:00Z",
                "2027-01-01T00:00:00Z",
            ),
            // Names for months and weekdays.
            (
                "0 12 * JAN MON",
                None,
                "2026-11-26T08:16:00Z",
                "2027-01-04T12:00:00Z",
            ),
            (
                "0 0 * * SAT,SUN",
                None,
                "2026-11-26T08:16:00Z",
                "2026-11-28T00:00:00Z",
            ),
            // Day-of-month OR day-of-week when both are restricted (Vixie cron): the 1st, or
            // any Friday, whichever comes first.
            (
                "0 0 1 * 5",
                None,
                "2026-11-26T08:16:00Z",
                "2026-11-27T00:00:00Z",
            ),
            (
                "0 0 1 * 5",
                None,
                "2026-11-28T00:00:00Z",
                "2026-12-01T00:00:00Z",
            ),
            // Day 7 is Sunday too.
            (
                "0 0 * * 7",
                None,
                "2026-11-26T08:16:00Z",
                "2026-11-29T00:00:00Z",
            ),
            // 09:00 in New York is 14:00 UTC in winter.
            (
                "0 9 * * *",
                Some("America/New_York"),
                "2026-11-26T08:16:00Z",
                "2026-11-26T14:00:00Z",
            ),
            (
                "0 9 * * *",
                Some("Asia/Tokyo"),
                "2026-11-26T08:16:00Z",
                "2026-11-27T00:00:00Z",
            ),
        ];
        for (schedule, zone, from, expected) in table {
            check_next(schedule, zone, from, expected);
        }
    }

    #[test]
    fn missed_times_in_a_window() {
        let every_five = Schedule::parse("*/5 * * * *", None).unwrap();
        assert_eq!(
            every_five.missed(at("2026-11-26T08:00:00Z"), at("2026-11-26T08:17:30Z")),
            Some(Missed {
                latest: at("2026-11-26T08:15:00Z"),
                count: 3
            })
        );
        assert_eq!(
            every_five.missed(at("2026-11-26T08:15:00Z"), at("2026-11-26T08:17:30Z")),
            None
        );
        let every_minute = Schedule::parse("* * * * *", None).unwrap();
        let many = every_minute
            .missed(at("2026-11-20T00:00:00Z"), at("2026-11-26T00:00:00Z"))
            .unwrap();
        assert_eq!(many.latest, at("2026-11-26T00:00:00Z"));
        assert_eq!(
            many.count,
            TOO_MANY_MISSED + 1,
            "counting stops past the limit"
        );
    }

    #[test]
    fn bad_schedules_and_zones_are_named() {
        for bad in [
            "* * *",
            "61 * * * *",
            "* * * * * *",
            "0 0 32 * *",
            "lots",
            "",
        ] {
            let error = Schedule::parse(bad, None).expect_err(bad).to_string();
            assert!(error.contains(&format!("{bad:?}")), "{error}");
        }
        assert_eq!(
            Schedule::parse("TZ=UTC 0 * * * *", None).unwrap_err(),
            ScheduleError::TimeZoneInSchedule
        );
        assert_eq!(
            Schedule::parse("0 * * * *", Some("Mars/Olympus")).unwrap_err(),
            ScheduleError::UnknownTimeZone("Mars/Olympus".into())
        );
        assert!(check_time_zone("Europe/Paris").is_ok());
    }
}
