//! Sunrise, sunset and twilight (NOAA solar calculator equations): simulated
//! lamps switch on at dusk and off at dawn, and the hub judges a lamp lit by
//! day or dark at night (alerts, the `lamp_fault_hours` indicator) the way the
//! operator map does, with civil twilight (the sun within 6° of the horizon)
//! as the time a lamp may rightly be either way.

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use std::f64::consts::PI;

/// Sunrise and sunset (UTC) of `date` at `lat`, `lon` (degrees, east positive).
/// `None` in polar day or night.
pub fn sunrise_sunset(
    date: NaiveDate,
    lat: f64,
    lon: f64,
) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    crossings(date, lat, lon, -0.833)
}

/// When the sun's centre passes `altitude` degrees, rising and setting, on `date`
/// (UTC). `None` when it stays above or below all day.
pub fn crossings(
    date: NaiveDate,
    lat: f64,
    lon: f64,
    altitude: f64,
) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let n = f64::from(date.ordinal());
    let g = 2.0 * PI / 365.0 * (n - 1.0 + 0.5); // fractional year at noon
    let eqtime = 229.18
        * (0.000075 + 0.001868 * g.cos()
            - 0.032077 * g.sin()
            - 0.014615 * (2.0 * g).cos()
            - 0.040849 * (2.0 * g).sin());
    let decl = 0.006918 - 0.399912 * g.cos() + 0.070257 * g.sin() - 0.006758 * (2.0 * g).cos()
        + 0.000907 * (2.0 * g).sin()
        - 0.002697 * (3.0 * g).cos()
        + 0.00148 * (3.0 * g).sin();
    let phi = lat.to_radians();
    let cos_ha =
        ((90.0 - altitude).to_radians().cos() / (phi.cos() * decl.cos())) - phi.tan() * decl.tan();
    if !(-1.0..=1.0).contains(&cos_ha) {
        return None;
    }
    let ha = cos_ha.acos().to_degrees();
    let midnight = Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0)?);
    let minutes = |m: f64| midnight + Duration::milliseconds((m * 60_000.0) as i64);
    let rise = 720.0 - 4.0 * (lon + ha) - eqtime;
    let set = 720.0 - 4.0 * (lon - ha) - eqtime;
    Some((minutes(rise), minutes(set)))
}

/// The date of `t` by the sun at longitude `lon` (mean solar time: 4 minutes a
/// degree east of Greenwich). The limits [`crossings`] gives for this date are those
/// of the day around `t`; for a UTC date, far from Greenwich (Sydney, the Americas)
/// they would be another day's.
pub fn solar_date(t: DateTime<Utc>, lon: f64) -> NaiveDate {
    (t + Duration::milliseconds((lon * 240_000.0) as i64)).date_naive()
}

/// Is it dark (between sunset and sunrise) at `t`?
pub fn is_dark(t: DateTime<Utc>, lat: f64, lon: f64) -> bool {
    match sunrise_sunset(solar_date(t, lon), lat, lon) {
        Some((rise, set)) => t < rise || t >= set,
        None => t.month() < 3 || t.month() > 9, // polar: night in winter
    }
}

/// The sun this high above the horizon is day, this far below it night (civil twilight).
pub const TWILIGHT_DEG: f64 = 6.0;

/// Day, night, or the twilight between, when a lamp may rightly be lit or dark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Daylight {
    Day,
    Night,
    Twilight,
}

/// The day's limits at one place: day between `day.0` and `day.1`, night before
/// `night.0` or from `night.1` (UTC). Computed once per date for many readings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DayLimits {
    pub day: Option<(DateTime<Utc>, DateTime<Utc>)>,
    pub night: Option<(DateTime<Utc>, DateTime<Utc>)>,
    winter: bool,
}

impl DayLimits {
    /// The limits of `date` by the sun at the place ([`solar_date`]).
    pub fn new(date: NaiveDate, lat: f64, lon: f64) -> Self {
        Self {
            day: crossings(date, lat, lon, TWILIGHT_DEG),
            night: crossings(date, lat, lon, -TWILIGHT_DEG),
            winter: (date.month() < 3 || date.month() > 9) == (lat >= 0.0),
        }
    }

    pub fn at(&self, t: DateTime<Utc>) -> Daylight {
        match (self.day, self.night) {
            (Some((a, b)), _) if t > a && t < b => Daylight::Day,
            (_, Some((a, b))) if t < a || t > b => Daylight::Night,
            (_, Some(_)) => Daylight::Twilight,
            // Never 6° below: polar twilight or day.
            (Some(_), None) => Daylight::Twilight,
            (None, None) if self.winter => Daylight::Night,
            (None, None) => Daylight::Day,
        }
    }
}

/// [`Daylight`] at `t` and a place.
pub fn daylight(t: DateTime<Utc>, lat: f64, lon: f64) -> Daylight {
    DayLimits::new(solar_date(t, lon), lat, lon).at(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hub and the map (web/tests/sun.test.mjs) judge day, night and twilight
    /// alike: both against one table of the sun's altitude from NREL's SPA
    /// (scripts/sun-cases.py), at six places from the equator to the Arctic through
    /// a year. Cases within 0.5° of a limit say nothing about either and are skipped.
    #[test]
    fn daylight_agrees_with_the_reference_table() {
        let table: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/fixtures/sun_cases.json")).unwrap();
        let cases = table["cases"].as_array().unwrap();
        let (mut judged, mut wrong) = (0, Vec::new());
        for c in cases {
            let (lat, lon) = (c[0].as_f64().unwrap(), c[1].as_f64().unwrap());
            let t: DateTime<Utc> = c[2].as_str().unwrap().parse().unwrap();
            let alt = c[3].as_f64().unwrap();
            let want = match alt {
                a if a > TWILIGHT_DEG + 0.5 => Daylight::Day,
                a if a < -TWILIGHT_DEG - 0.5 => Daylight::Night,
                a if a.abs() < TWILIGHT_DEG - 0.5 => Daylight::Twilight,
                _ => continue,
            };
            judged += 1;
            let got = daylight(t, lat, lon);
            if got != want {
                wrong.push(format!("{lat},{lon} {t}: altitude {alt}°, {got:?}"));
            }
        }
        assert!(judged > 2000, "only {judged} cases judged");
        assert!(
            wrong.is_empty(),
            "{} of {judged} wrong:\n{}",
            wrong.len(),
            wrong.join("\n")
        );
    }

    #[test]
    fn cremona_solstices() {
        // Cremona 45.133 N, 10.024 E. Local times (CEST/CET) from published almanacs:
        // 21 June: sunrise ~05:33, sunset ~21:11 CEST; 21 Dec: ~07:58, ~16:41 CET.
        let (r, s) = sunrise_sunset(
            NaiveDate::from_ymd_opt(2026, 6, 21).unwrap(),
            45.133,
            10.024,
        )
        .unwrap();
        assert_eq!(
            (r + Duration::hours(2)).format("%H:%M").to_string()[..4],
            *"05:3"
        );
        assert_eq!(
            (s + Duration::hours(2)).format("%H:%M").to_string()[..4],
            *"21:1"
        );
        let (r, s) = sunrise_sunset(
            NaiveDate::from_ymd_opt(2026, 12, 21).unwrap(),
            45.133,
            10.024,
        )
        .unwrap();
        assert_eq!((r + Duration::hours(1)).format("%H").to_string(), "07");
        assert_eq!(
            (s + Duration::hours(1)).format("%H:%M").to_string()[..4],
            *"16:4"
        );
        let noon = Utc.with_ymd_and_hms(2026, 12, 21, 11, 0, 0).unwrap();
        assert!(!is_dark(noon, 45.133, 10.024));
        assert!(is_dark(noon + Duration::hours(11), 45.133, 10.024));
        assert_eq!(daylight(noon, 45.133, 10.024), Daylight::Day);
        assert_eq!(
            daylight(noon + Duration::hours(11), 45.133, 10.024),
            Daylight::Night
        );
        // 16:41 CET sunset: twilight 15:41-16:41 UTC +/- the 6° band.
        let dusk = Utc.with_ymd_and_hms(2026, 12, 21, 15, 50, 0).unwrap();
        assert_eq!(daylight(dusk, 45.133, 10.024), Daylight::Twilight);
    }
}
