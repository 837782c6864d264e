//! Conversions between Shoal's clock type (`chrono`, which `croner` and `chrono-tz` use for
//! schedules) and the API's timestamps (`k8s-openapi`'s `Time`/`MicroTime`, which wrap
//! `jiff::Timestamp`). Kept in one place so no caller does nanosecond arithmetic itself.

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};

/// An API `Time` for an instant.
pub fn time(at: DateTime<Utc>) -> Time {
    Time(timestamp(at))
}

/// An API `MicroTime` for an instant.
pub fn micro_time(at: DateTime<Utc>) -> MicroTime {
    MicroTime(timestamp(at))
}

/// The instant an API `Time` stands for.
pub fn instant(time: &Time) -> DateTime<Utc> {
    from_timestamp(time.0)
}

/// The instant an API `MicroTime` stands for.
pub fn micro_instant(time: &MicroTime) -> DateTime<Utc> {
    from_timestamp(time.0)
}

/// `jiff` covers years -9999..=9999 and `chrono` about ±262,000: an instant outside jiff's range
/// is clamped to its nearest end (no API timestamp can hold it anyway).
fn timestamp(at: DateTime<Utc>) -> jiff::Timestamp {
    let nanos = at
        .timestamp_nanos_opt()
        .map(i128::from)
        .unwrap_or_else(|| i128::from(at.timestamp()) * 1_000_000_000);
    jiff::Timestamp::from_nanosecond(nanos).unwrap_or(if nanos < 0 {
        jiff::Timestamp::MIN
    } else {
        jiff::Timestamp::MAX
    })
}

fn from_timestamp(at: jiff::Timestamp) -> DateTime<Utc> {
    // jiff's sub-second part carries the sign of the instant; chrono's is always positive.
    let (mut seconds, mut nanos) = (at.as_second(), at.subsec_nanosecond());
    if nanos < 0 {
        seconds -= 1;
        nanos += 1_000_000_000;
    }
    DateTime::from_timestamp(seconds, nanos.unsigned_abs()).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_nanoseconds() {
        let at = DateTime::parse_from_rfc3339("2026-12-04T18:30:01.123456789Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(instant(&time(at)), at);
        let before_1970 = DateTime::parse_from_rfc3339("1969-12-31T23:59:58.25Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(instant(&time(before_1970)), before_1970);
        assert_eq!(
            serde_json::to_value(micro_time(at)).unwrap(),
            "2026-12-04T18:30:01.123456Z"
        );
    }

    #[test]
    fn clamps_what_the_api_cannot_hold() {
        let far = DateTime::<Utc>::MAX_UTC;
        assert_eq!(time(far).0, jiff::Timestamp::MAX);
        let before = DateTime::<Utc>::MIN_UTC;
        assert_eq!(time(before).0, jiff::Timestamp::MIN);
    }
}
