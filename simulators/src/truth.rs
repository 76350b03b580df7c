//! What the simulated fleet really did, for checking the hub's indicators: the
//! collections the rounds made and each bin's fill just before, the PM10 the
//! stations measured, the energy each lamp drew, the bicycles counted.
//!
//! The run keeps these per UTC hour (every European time zone is a whole number
//! of hours from UTC), and [`Truth::summary`] cuts them into the local days and
//! nights the indicators use.

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use serde::Serialize;
use std::collections::BTreeMap;

/// One collection round at one bin.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Collection {
    pub sensor: String,
    /// The bin's first reading after the round.
    pub reported_at: DateTime<Utc>,
    /// The fill it last reported before, and the one after (%).
    pub fill_before: f64,
    pub fill_after: f64,
}

/// Per UTC hour: sums and counts of what the fleet sent and did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Truth {
    /// (sensor, hour start as Unix seconds) -> (sum of PM10, readings)
    pm10: BTreeMap<(String, i64), (f64, u32)>,
    /// (sensor, hour) -> kWh drawn in the reporting intervals ending in that hour
    energy: BTreeMap<(String, i64), f64>,
    /// (sensor, hour) -> bicycles both ways
    trips: BTreeMap<(String, i64), f64>,
    pub collections: Vec<Collection>,
}

fn hour(t: DateTime<Utc>) -> i64 {
    t.timestamp().div_euclid(3600) * 3600
}

impl Truth {
    pub fn pm10(&mut self, sensor: &str, t: DateTime<Utc>, v: f64) {
        let e = self.pm10.entry((sensor.to_owned(), hour(t))).or_default();
        e.0 += v;
        e.1 += 1;
    }

    pub fn energy(&mut self, sensor: &str, t: DateTime<Utc>, kwh: f64) {
        *self.energy.entry((sensor.to_owned(), hour(t))).or_default() += kwh;
    }

    pub fn trips(&mut self, sensor: &str, t: DateTime<Utc>, n: f64) {
        *self.trips.entry((sensor.to_owned(), hour(t))).or_default() += n;
    }

    /// The indicators' truth in `tz`: days for PM10, bins and bicycles; nights
    /// (noon to noon, dated by the evening) for lamps.
    pub fn summary(&self, tz: Tz, min_day_hours: u32) -> TruthSummary {
        let local = |h: i64| {
            Utc.timestamp_opt(h, 0)
                .single()
                .unwrap_or_default()
                .with_timezone(&tz)
        };
        let mut hours: BTreeMap<(String, NaiveDate), (f64, u32)> = BTreeMap::new();
        for ((s, h), (sum, n)) in &self.pm10 {
            let e = hours
                .entry((s.clone(), local(*h).date_naive()))
                .or_default();
            e.0 += sum / f64::from(*n);
            e.1 += 1;
        }
        let mut pm10_daily_mean: BTreeMap<String, BTreeMap<NaiveDate, DayMean>> = BTreeMap::new();
        let mut pm10_exceedance_days: BTreeMap<String, BTreeMap<i32, u32>> = BTreeMap::new();
        for ((s, d), (sum, n)) in hours {
            let valid = n >= min_day_hours;
            let mean = sum / f64::from(n);
            pm10_daily_mean.entry(s.clone()).or_default().insert(
                d,
                DayMean {
                    mean,
                    hours: n,
                    valid,
                },
            );
            let years = pm10_exceedance_days.entry(s).or_default();
            let e = years.entry(d.year()).or_default();
            if valid && mean > 50.0 {
                *e += 1;
            }
        }
        let mut lamp_energy_per_night: BTreeMap<String, BTreeMap<NaiveDate, f64>> = BTreeMap::new();
        for ((s, h), kwh) in &self.energy {
            let night = (local(*h) - Duration::hours(12)).date_naive();
            *lamp_energy_per_night
                .entry(s.clone())
                .or_default()
                .entry(night)
                .or_default() += kwh;
        }
        let mut bike_trips_per_day: BTreeMap<String, BTreeMap<NaiveDate, f64>> = BTreeMap::new();
        for ((s, h), n) in &self.trips {
            *bike_trips_per_day
                .entry(s.clone())
                .or_default()
                .entry(local(*h).date_naive())
                .or_default() += n;
        }
        TruthSummary {
            timezone: tz.name().to_owned(),
            collections: self.collections.clone(),
            pm10_daily_mean,
            pm10_exceedance_days,
            lamp_energy_per_night,
            bike_trips_per_day,
        }
    }
}

/// A station's day.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DayMean {
    /// Mean of the hourly means.
    pub mean: f64,
    /// Hours with a reading.
    pub hours: u32,
    /// Enough hours for the day to count.
    pub valid: bool,
}

/// The truth by local day, as the report carries it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TruthSummary {
    pub timezone: String,
    pub collections: Vec<Collection>,
    /// Station -> local day -> mean.
    pub pm10_daily_mean: BTreeMap<String, BTreeMap<NaiveDate, DayMean>>,
    /// Station -> calendar year -> valid days above 50 µg/m³.
    pub pm10_exceedance_days: BTreeMap<String, BTreeMap<i32, u32>>,
    /// Lamp -> night (dated by its evening) -> kWh.
    pub lamp_energy_per_night: BTreeMap<String, BTreeMap<NaiveDate, f64>>,
    /// Counter -> local day -> bicycles both ways.
    pub bike_trips_per_day: BTreeMap<String, BTreeMap<NaiveDate, f64>>,
}
