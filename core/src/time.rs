//! The one timestamp format of every document, CSV, event and status the hub
//! writes: RFC 3339 in UTC with exactly six decimals (`2026-11-25T10:15:00.000000Z`).
//! A fixed width parses with one format string everywhere (pandas, Excel, GDAL)
//! and keeps the microseconds PostgreSQL stores.

use chrono::{DateTime, Utc};
use serde::Serializer;

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// For `#[serde(serialize_with = "...")]` on a `DateTime<Utc>`.
pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*t))
}

/// For `#[serde(serialize_with = "...")]` on an `Option<DateTime<Utc>>`.
pub fn serialize_opt<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => serialize(t, s),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    #[test]
    fn fixed_width_whatever_the_fraction() {
        let t = chrono::Utc
            .with_ymd_and_hms(2026, 11, 25, 17, 1, 0)
            .unwrap();
        assert_eq!(super::rfc3339(t), "2026-11-25T17:01:00.000000Z");
        let t = t + chrono::Duration::nanoseconds(580_004_321);
        assert_eq!(super::rfc3339(t), "2026-11-25T17:01:00.580004Z");
    }
}
