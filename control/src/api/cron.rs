//! Cron schedules (five fields: minute hour day-of-month month day-of-week, UTC, with `*`,
//! ranges, lists, steps and the `@hourly`-style shorthands), as CronJobs use them.

use chrono::{DateTime, Datelike, Timelike, Utc};

/// A parsed five-field cron schedule: the allowed values of each field.
#[derive(Debug, PartialEq, Eq)]
pub struct Schedule {
    minutes: Vec<u32>,
    hours: Vec<u32>,
    days: Vec<u32>,
    months: Vec<u32>,
    weekdays: Vec<u32>,
}

impl Schedule {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = match text.trim() {
            "@hourly" => "0 * * * *",
            "@daily" | "@midnight" => "0 0 * * *",
            "@weekly" => "0 0 * * 0",
            "@monthly" => "0 0 1 * *",
            "@yearly" | "@annually" => "0 0 1 1 *",
            other => other,
        };
        let fields: Vec<&str> = text.split_whitespace().collect();
        let [minutes, hours, days, months, weekdays] = fields.as_slice() else {
            return Err(format!("{text:?} is not a five-field cron schedule (minute hour day-of-month month day-of-week)"));
        };
        Ok(Self {
            minutes: field(minutes, 0, 59)?,
            hours: field(hours, 0, 23)?,
            days: field(days, 1, 31)?,
            months: field(months, 1, 12)?,
            weekdays: field(weekdays, 0, 7)?.into_iter().map(|d| d % 7).collect(),
        })
    }

    pub fn matches(&self, t: DateTime<Utc>) -> bool {
        self.minutes.contains(&t.minute())
            && self.hours.contains(&t.hour())
            && self.days.contains(&t.day())
            && self.months.contains(&t.month())
            && self.weekdays.contains(&t.weekday().num_days_from_sunday())
    }

    /// The latest scheduled minute in (after, now], if any (looking back at most a day).
    pub fn last_between(&self, after: DateTime<Utc>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut t = now.with_second(0)?.with_nanosecond(0)?;
        for _ in 0..1440 {
            if t <= after {
                return None;
            }
            if self.matches(t) {
                return Some(t);
            }
            t -= chrono::Duration::minutes(1);
        }
        None
    }
}

fn field(text: &str, low: u32, high: u32) -> Result<Vec<u32>, String> {
    let mut values = Vec::new();
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => (
                range,
                step.parse::<u32>()
                    .map_err(|_| format!("bad step in {part:?}"))?
                    .max(1),
            ),
            None => (part, 1),
        };
        let (from, to) = match range {
            "*" => (low, high),
            _ => match range.split_once('-') {
                Some((a, b)) => (number(a, low, high)?, number(b, low, high)?),
                None if step > 1 => (number(range, low, high)?, high),
                None => {
                    let n = number(range, low, high)?;
                    (n, n)
                }
            },
        };
        values.extend((from..=to).step_by(step as usize));
    }
    Ok(values)
}

fn number(text: &str, low: u32, high: u32) -> Result<u32, String> {
    let n: u32 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if n < low || n > high {
        return Err(format!("{n} is out of range {low}-{high}"));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn schedules() {
        let every_five = Schedule::parse("*/5 * * * *").unwrap();
        assert!(every_five.matches(at("2026-11-26T08:15:00Z")));
        assert!(!every_five.matches(at("2026-11-26T08:16:00Z")));
        assert_eq!(
            every_five.last_between(at("2026-11-26T08:00:00Z"), at("2026-11-26T08:17:30Z")),
            Some(at("2026-11-26T08:15:00Z"))
        );
        assert_eq!(
            every_five.last_between(at("2026-11-26T08:15:00Z"), at("2026-11-26T08:17:30Z")),
            None
        );
        let weekdays = Schedule::parse("30 9 * * 1-5").unwrap();
        assert!(weekdays.matches(at("2026-11-26T09:30:00Z")), "a Thursday");
        assert!(!weekdays.matches(at("2026-11-29T09:30:00Z")), "a Sunday");
        assert_eq!(
            Schedule::parse("@hourly").unwrap(),
            Schedule::parse("0 * * * *").unwrap()
        );
        assert!(Schedule::parse("* * *").is_err());
        assert!(Schedule::parse("61 * * * *")
            .unwrap_err()
            .contains("out of range"));
    }
}
