//! The mandate's indicators, computed from the stored readings.
//!
//! Each indicator has one query (by its [`Method`]) that reduces the readings of
//! the asked range to one base row per sensor and local day (or night, noon to
//! noon): hourly rollups where hours suffice, the observations where the order of
//! readings matters (fill-level drops, meter increments, time lit). The base rows
//! are then summed into days, months or years, per sensor and for the city, by
//! the indicator's own rule. `cityhub_core::indicators` describes each one.
//!
//! The base rows come ordered by sensor and are folded as they arrive, on a
//! blocking thread: only one sensor's days are held at a time, so a city's years
//! of days cost the memory of the rows answered, not of the rows read. The rows
//! answered are the city's, or those of the sensors named (a page of them).

use crate::error::StoreError;
use crate::Store;
use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc, Weekday};
use chrono_tz::Tz;
use cityhub_core::indicators::{Indicator, IndicatorSettings, Method, Period};
use cityhub_core::kinds::MapRule;
use cityhub_core::sun::DayLimits;
use cityhub_core::Catalog;
use futures_util::TryStreamExt;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use tokio_postgres::types::ToSql;

/// What to compute.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IndicatorQuery {
    /// These sensors' own rows (a page of them, or one); `None`: the city's rows.
    pub sensors: Option<Vec<String>>,
    /// First local day, aligned to the period's start.
    pub from: NaiveDate,
    /// Local day after the last, aligned to a period's start.
    pub to: NaiveDate,
    pub period: Period,
    /// City rows for each waste stream too (waste indicators).
    pub by_stream: bool,
}

/// One row: a period of one sensor, or of the city (`sensor` `None`).
#[derive(Debug, Clone, PartialEq)]
pub struct IndicatorRow {
    /// The period's first local day.
    pub period_start: NaiveDate,
    pub sensor: Option<String>,
    /// `None` when the period has data but not enough for a value (e.g. no valid day).
    pub value: Option<f64>,
    /// Indicator-specific fields (`hours`, `valid_days`, `collections`, `stream`, ...).
    pub extra: Map<String, Value>,
}

/// One sensor's reduction of one local day (or night).
#[derive(Debug, Clone)]
struct Base {
    sensor: String,
    day: NaiveDate,
    a: f64,
    b: f64,
    c: f64,
    stream: Option<String>,
}

/// The period's first day.
pub fn period_start(p: Period, d: NaiveDate) -> NaiveDate {
    match p {
        Period::Day => d,
        Period::Month => d.with_day(1).unwrap_or(d),
        Period::Year => NaiveDate::from_ymd_opt(d.year(), 1, 1).unwrap_or(d),
    }
}

/// The first day of the period after the one starting at `d`.
pub fn next_period(p: Period, d: NaiveDate) -> NaiveDate {
    match p {
        Period::Day => d.succ_opt().unwrap_or(d),
        Period::Month => d.checked_add_months(chrono::Months::new(1)).unwrap_or(d),
        Period::Year => d.checked_add_months(chrono::Months::new(12)).unwrap_or(d),
    }
}

/// `date` at `hour`:00 local time, as an instant (the earlier one when a clock change repeats it).
pub fn local_instant(tz: Tz, date: NaiveDate, hour: u32) -> DateTime<Utc> {
    let naive = date.and_hms_opt(hour, 0, 0).expect("valid hour");
    match tz.from_local_datetime(&naive) {
        chrono::LocalResult::Single(t) | chrono::LocalResult::Ambiguous(t, _) => {
            t.with_timezone(&Utc)
        }
        // Skipped by a clock change: an hour later exists.
        chrono::LocalResult::None => tz
            .from_local_datetime(&(naive + Duration::hours(1)))
            .earliest()
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|| Utc.from_utc_datetime(&naive)),
    }
}

fn round(v: f64, decimals: u32) -> f64 {
    let f = 10f64.powi(decimals as i32);
    (v * f).round() / f
}

const HOURLY: &str = "
    SELECT s.external_id, (h.bucket AT TIME ZONE $4::text)::date,
           sum(h.avg)::float8, count(*)::float8,
           (count(*) FILTER (WHERE h.avg >= $6::float8))::float8, NULL::text
    FROM obs_hourly h JOIN sensors s ON s.id = h.sensor_id
    WHERE h.metric_id = ANY($1) AND h.bucket >= $2 AND h.bucket < $3
      AND ($5::text[] IS NULL OR s.external_id = ANY($5))
    GROUP BY 1, 2
    ORDER BY 1, 2";

/// Trips: the hourly means times their counts are the hours' sums.
const TRIPS: &str = "
    SELECT s.external_id, (h.bucket AT TIME ZONE $4::text)::date,
           round(sum(h.avg * h.count))::float8, count(*)::float8, 0::float8, NULL::text
    FROM obs_hourly h JOIN sensors s ON s.id = h.sensor_id
    WHERE h.metric_id = ANY($1) AND h.bucket >= $2 AND h.bucket < $3
      AND ($5::text[] IS NULL OR s.external_id = ANY($5))
    GROUP BY 1, 2
    ORDER BY 1, 2";

/// Collections: a drop of at least $7 points from the reading before (looked for
/// up to two days before the range). a: collections, b: sum of the fill before,
/// c: those at or above $6.
const COLLECTIONS: &str = "
    WITH f AS (
        SELECT o.sensor_id, o.time, o.value,
               lag(o.value) OVER (PARTITION BY o.sensor_id ORDER BY o.time) AS prev
        FROM observations o JOIN sensors s ON s.id = o.sensor_id
        WHERE o.metric_id = ANY($1) AND o.time >= $2::timestamptz - interval '2 days' AND o.time < $3
          AND ($5::text[] IS NULL OR s.external_id = ANY($5)))
    SELECT s.external_id, (f.time AT TIME ZONE $4::text)::date, count(*)::float8,
           sum(f.prev)::float8, (count(*) FILTER (WHERE f.prev >= $6::float8))::float8,
           s.properties->>'stream'
    FROM f JOIN sensors s ON s.id = f.sensor_id
    WHERE f.time >= $2 AND f.prev - f.value >= $7::float8
    GROUP BY 1, 2, 6
    ORDER BY 1, 2";

/// Meter increments, night by night (a night is dated by its evening; $2 and $3
/// are noons). A meter that went back was reset: its new value is the increment.
const ENERGY: &str = "
    WITH e AS (
        SELECT o.sensor_id, o.time, o.value,
               lag(o.value) OVER (PARTITION BY o.sensor_id ORDER BY o.time) AS prev
        FROM observations o JOIN sensors s ON s.id = o.sensor_id
        WHERE o.metric_id = ANY($1) AND o.time >= $2::timestamptz - interval '2 days' AND o.time < $3
          AND ($5::text[] IS NULL OR s.external_id = ANY($5)))
    SELECT s.external_id, ((e.time AT TIME ZONE $4::text) - interval '12 hours')::date,
           sum(CASE WHEN e.value >= e.prev THEN e.value - e.prev ELSE e.value END)::float8,
           count(*)::float8, 0::float8, NULL::text
    FROM e JOIN sensors s ON s.id = e.sensor_id
    WHERE e.time >= $2 AND e.prev IS NOT NULL
    GROUP BY 1, 2
    ORDER BY 1, 2";

/// Seconds lit, from each reading to the next (at most $7 s), night by night.
const LIT: &str = "
    WITH r AS (
        SELECT o.sensor_id, o.time, o.value,
               lead(o.time) OVER (PARTITION BY o.sensor_id ORDER BY o.time) AS next
        FROM observations o JOIN sensors s ON s.id = o.sensor_id
        WHERE o.metric_id = ANY($1) AND o.time >= $2 AND o.time < $3::timestamptz + interval '1 day'
          AND ($5::text[] IS NULL OR s.external_id = ANY($5)))
    SELECT s.external_id, ((r.time AT TIME ZONE $4::text) - interval '12 hours')::date,
           coalesce(sum(least(extract(epoch FROM r.next - r.time)::float8, $7::float8))
                    FILTER (WHERE r.value > $6), 0)::float8 / 3600.0,
           count(*)::float8, 0::float8, NULL::text
    FROM r JOIN sensors s ON s.id = r.sensor_id
    WHERE r.time < $3
    GROUP BY 1, 2
    ORDER BY 1, 2";

/// Seconds lit by day or dark at night; the sun's limits come per solar date (the
/// UTC time shifted by the lamps' longitude, $13 seconds) in $8-$12.
const FAULT: &str = "
    WITH r AS (
        SELECT o.sensor_id, o.time, o.value,
               lead(o.time) OVER (PARTITION BY o.sensor_id ORDER BY o.time) AS next
        FROM observations o JOIN sensors s ON s.id = o.sensor_id
        WHERE o.metric_id = ANY($1) AND o.time >= $2 AND o.time < $3::timestamptz + interval '1 day'
          AND ($5::text[] IS NULL OR s.external_id = ANY($5))),
    sun AS (SELECT * FROM unnest($8::date[], $9::timestamptz[], $10::timestamptz[],
                                 $11::timestamptz[], $12::timestamptz[])
            AS u(d, day_from, day_to, night_to, night_from))
    SELECT s.external_id, (r.time AT TIME ZONE $4::text)::date,
           coalesce(sum(least(extract(epoch FROM r.next - r.time)::float8, $7::float8)) FILTER (WHERE
               (r.value > $6 AND r.time > sun.day_from AND r.time < sun.day_to)
            OR (r.value <= $6 AND (r.time < sun.night_to OR r.time > sun.night_from))), 0)::float8
               / 3600.0,
           count(*)::float8, 0::float8, NULL::text
    FROM r JOIN sensors s ON s.id = r.sensor_id
    JOIN sun ON sun.d = ((r.time AT TIME ZONE 'UTC') + $13::float8 * interval '1 second')::date
    WHERE r.time < $3
    GROUP BY 1, 2
    ORDER BY 1, 2";

/// An indicator's base query with its parameters, ready to run.
struct BaseQuery {
    sql: &'static str,
    params: Vec<Box<dyn ToSql + Sync + Send>>,
}

impl BaseQuery {
    /// The query that reduces `q`'s readings to base rows, for `ind`; $1-$5 are common
    /// to every method, each method adds its own.
    async fn new(
        store: &Store,
        catalog: &Catalog,
        cfg: &IndicatorSettings,
        ind: &'static Indicator,
        q: &IndicatorQuery,
    ) -> Result<Self, StoreError> {
        let tz = cfg.tz().map_err(StoreError::Config)?;
        let kind = catalog
            .get(ind.kind)
            .ok_or_else(|| StoreError::Config(format!("kind {} is not configured", ind.kind)))?;
        let metric_ids: Vec<i16> = ind
            .metrics
            .iter()
            .filter_map(|m| store.metric_id(ind.kind, m))
            .collect();
        let lit_above = match &kind.def.map {
            Some(MapRule::Lamp { lit_above, .. }) => *lit_above,
            _ => 5.0,
        };
        let max_gap_s = 2.0 * f64::from(kind.def.cadence_s.max(1));
        let nightly = matches!(ind.compute, Method::EnergyPerNight | Method::LitHours);
        let hour = if nightly { 12 } else { 0 };
        let from = local_instant(tz, q.from, hour);
        let to = local_instant(tz, q.to, hour);
        let threshold = match ind.compute {
            Method::OverflowHours => cfg.overflow_at,
            Method::Collections | Method::FillAtCollection | Method::FullShare => cfg.full_at,
            Method::LitHours | Method::FaultHours => lit_above,
            _ => 0.0,
        };
        let mut params: Vec<Box<dyn ToSql + Sync + Send>> = vec![
            Box::new(metric_ids),
            Box::new(from),
            Box::new(to),
            Box::new(cfg.timezone.clone()),
            Box::new(q.sensors.clone()),
        ];
        let sql = match ind.compute {
            Method::Collections | Method::FillAtCollection | Method::FullShare => {
                params.push(Box::new(threshold));
                params.push(Box::new(cfg.collection_drop));
                COLLECTIONS
            }
            Method::EnergyPerNight => ENERGY,
            Method::LitHours => {
                params.push(Box::new(threshold));
                params.push(Box::new(max_gap_s));
                LIT
            }
            Method::FaultHours => {
                // The sun's limits per solar date.
                let (lat, lon) = lamp_position(store, ind.kind, q.sensors.as_deref()).await?;
                let sun = SunTable::new(from, to, lat, lon);
                params.push(Box::new(threshold));
                params.push(Box::new(max_gap_s));
                params.push(Box::new(sun.date));
                params.push(Box::new(sun.day_from));
                params.push(Box::new(sun.day_to));
                params.push(Box::new(sun.night_to));
                params.push(Box::new(sun.night_from));
                params.push(Box::new(lon * 240.0));
                FAULT
            }
            Method::Trips => TRIPS,
            Method::DailyMean
            | Method::ExceedanceDays
            | Method::PeriodMean
            | Method::OverflowHours => {
                params.push(Box::new(threshold));
                HOURLY
            }
        };
        Ok(BaseQuery { sql, params })
    }

    async fn rows(
        &self,
        c: &tokio_postgres::Client,
    ) -> Result<tokio_postgres::RowStream, StoreError> {
        Ok(
            c.query_raw(self.sql, self.params.iter().map(|p| &**p as &dyn ToSql))
                .await?,
        )
    }
}

/// Computes `ind` over `q` (see the module doc).
pub async fn compute(
    store: &Store,
    catalog: &Catalog,
    cfg: &IndicatorSettings,
    ind: &'static Indicator,
    q: &IndicatorQuery,
) -> Result<Vec<IndicatorRow>, StoreError> {
    let tz = cfg.tz().map_err(StoreError::Config)?;
    let base = BaseQuery::new(store, catalog, cfg, ind, q).await?;
    let c = store.read_client().await?;
    let rows = base.rows(&c).await?;
    futures_util::pin_mut!(rows);
    // The fold runs on a blocking thread, fed row by row: a long range over a big
    // fleet never holds an async worker.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Base>(1024);
    let mut fold = Fold::new(ind, cfg, tz, q.clone());
    let folder = tokio::task::spawn_blocking(move || {
        while let Some(b) = rx.blocking_recv() {
            fold.push(b);
        }
        fold.finish()
    });
    while let Some(r) = rows.try_next().await? {
        let b = Base {
            sensor: r.get(0),
            day: r.get(1),
            a: r.get::<_, Option<f64>>(2).unwrap_or(0.0),
            b: r.get::<_, Option<f64>>(3).unwrap_or(0.0),
            c: r.get::<_, Option<f64>>(4).unwrap_or(0.0),
            stream: r.get(5),
        };
        if b.day >= q.from && b.day < q.to && tx.send(b).await.is_err() {
            break;
        }
    }
    drop(tx);
    folder
        .await
        .map_err(|e| StoreError::Config(format!("indicator fold failed: {e}")))
}

/// Runs only `ind`'s base query over `q` and counts its rows: the database's share
/// of [`compute`], for the benchmark's reference.
pub async fn base_rows(
    store: &Store,
    catalog: &Catalog,
    cfg: &IndicatorSettings,
    ind: &'static Indicator,
    q: &IndicatorQuery,
) -> Result<u64, StoreError> {
    let base = BaseQuery::new(store, catalog, cfg, ind, q).await?;
    let c = store.read_client().await?;
    let rows = base.rows(&c).await?;
    futures_util::pin_mut!(rows);
    let mut n = 0;
    while rows.try_next().await?.is_some() {
        n += 1;
    }
    Ok(n)
}

/// Up to `limit` sensors of `kind` after `after` (in id order): a page of sensor rows.
pub async fn sensor_page(
    store: &Store,
    kind: &str,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<String>, StoreError> {
    let c = store.read_client().await?;
    let rows = c
        .query(
            "SELECT external_id FROM sensors WHERE kind = $1
               AND ($2::text IS NULL OR external_id > $2)
             ORDER BY external_id LIMIT $3",
            &[&kind, &after, &limit],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Sensors of `kind`: what a city row's computation reads across.
pub async fn sensor_count(store: &Store, kind: &str) -> Result<u64, StoreError> {
    let c = store.read_client().await?;
    let n: i64 = c
        .query_one("SELECT count(*) FROM sensors WHERE kind = $1", &[&kind])
        .await?
        .get(0);
    Ok(n.max(0) as u64)
}

/// Day and night limits of each solar date around a range, as query arrays.
#[derive(Default)]
struct SunTable {
    date: Vec<NaiveDate>,
    day_from: Vec<Option<DateTime<Utc>>>,
    day_to: Vec<Option<DateTime<Utc>>>,
    night_to: Vec<Option<DateTime<Utc>>>,
    night_from: Vec<Option<DateTime<Utc>>>,
}

impl SunTable {
    fn new(from: DateTime<Utc>, to: DateTime<Utc>, lat: f64, lon: f64) -> Self {
        let mut t = Self::default();
        let last = to.date_naive().succ_opt().unwrap_or(to.date_naive());
        let mut date = from.date_naive().pred_opt().unwrap_or(from.date_naive());
        while date <= last && t.date.len() <= 100_000 {
            let l = DayLimits::new(date, lat, lon);
            t.date.push(date);
            t.day_from.push(l.day.map(|x| x.0));
            t.day_to.push(l.day.map(|x| x.1));
            t.night_to.push(l.night.map(|x| x.0));
            t.night_from.push(l.night.map(|x| x.1));
            match date.succ_opt() {
                Some(d) => date = d,
                None => break,
            }
        }
        t
    }
}

/// Where the sun is judged for lamp faults: the lamp asked for, else the middle of
/// the lamps (across a city the sun's times differ by seconds).
async fn lamp_position(
    store: &Store,
    kind: &str,
    sensors: Option<&[String]>,
) -> Result<(f64, f64), StoreError> {
    let c = store.read_client().await?;
    let r = c
        .query_one(
            "SELECT avg(lat)::float8, avg(lon)::float8 FROM sensors
             WHERE kind = $1 AND lat IS NOT NULL
               AND ($2::text[] IS NULL OR external_id = ANY($2))",
            &[&kind, &sensors],
        )
        .await?;
    Ok((
        r.get::<_, Option<f64>>(0).unwrap_or(45.1335),
        r.get::<_, Option<f64>>(1).unwrap_or(10.0245),
    ))
}

/// Sums base rows into one value per period (see each [`Method`]).
struct Acc {
    a: f64,
    b: f64,
    c: f64,
    days: u32,
    valid_days: u32,
    /// Valid daily means (daily-mean indicators) summed.
    means: f64,
    exceed: u32,
    exceed_2030: u32,
    weekday: (f64, u32),
    weekend: (f64, u32),
    /// Sensors counted in a city row.
    sensors: usize,
    /// The bin's waste stream (its `stream` property).
    stream: Option<String>,
}

impl Acc {
    fn new() -> Self {
        Self {
            a: 0.0,
            b: 0.0,
            c: 0.0,
            days: 0,
            valid_days: 0,
            means: 0.0,
            exceed: 0,
            exceed_2030: 0,
            weekday: (0.0, 0),
            weekend: (0.0, 0),
            sensors: 0,
            stream: None,
        }
    }
}

/// One day of one sensor, or of the city: the daily mean when valid.
fn day_mean(b: &Base, min_hours: f64) -> Option<f64> {
    (b.b >= min_hours && b.b > 0.0).then(|| b.a / b.b)
}

/// How days are judged for the daily-mean methods.
#[derive(Clone, Copy)]
struct Limits {
    min_hours: f64,
    day: f64,
    day_2030: f64,
    mean_method: bool,
}

/// The city's sums (or one waste stream's), built sensor by sensor.
#[derive(Default)]
struct City {
    by_period: BTreeMap<NaiveDate, Acc>,
    /// Per day: (sum of valid means, valid stations, any above, any above 2030).
    days: BTreeMap<NaiveDate, (f64, u32, bool, bool)>,
    /// Per day: the sensors' `a` summed (weekday and weekend means).
    daily: BTreeMap<NaiveDate, f64>,
}

impl City {
    /// Adds one sensor: its base rows and its per-period sums.
    fn add(
        &mut self,
        ind: &Indicator,
        l: Limits,
        period: Period,
        rows: &[Base],
        per: &BTreeMap<NaiveDate, Acc>,
    ) {
        match ind.compute {
            Method::DailyMean | Method::ExceedanceDays => {
                // The city's day: the mean of its stations' valid means; above when
                // any station was above.
                for b in rows {
                    let cd = self.days.entry(b.day).or_insert((0.0, 0, false, false));
                    if let Some(m) = day_mean(b, l.min_hours) {
                        cd.0 += m;
                        cd.1 += 1;
                        cd.2 |= m > l.day;
                        cd.3 |= m > l.day_2030;
                    }
                }
            }
            Method::PeriodMean => {
                // The city: mean of the stations' period means.
                for (p, acc) in per {
                    if acc.b > 0.0 {
                        let c = self.by_period.entry(*p).or_insert_with(Acc::new);
                        c.means += acc.a / acc.b;
                        c.valid_days += 1;
                        c.b += acc.b;
                        c.sensors += 1;
                    }
                }
            }
            _ => {
                for b in rows {
                    let acc = self
                        .by_period
                        .entry(period_start(period, b.day))
                        .or_insert_with(Acc::new);
                    acc.a += b.a;
                    acc.b += b.b;
                    acc.c += b.c;
                    *self.daily.entry(b.day).or_default() += b.a;
                }
                for p in per.keys() {
                    if let Some(acc) = self.by_period.get_mut(p) {
                        acc.sensors += 1;
                    }
                }
            }
        }
    }
}

/// Folds base rows, which come ordered by sensor, into the rows asked for.
struct Fold {
    ind: &'static Indicator,
    q: IndicatorQuery,
    tz: Tz,
    limits: Limits,
    /// The current sensor's base rows.
    current: Vec<Base>,
    out: Vec<IndicatorRow>,
    city: City,
    streams: BTreeMap<String, City>,
}

impl Fold {
    fn new(ind: &'static Indicator, cfg: &IndicatorSettings, tz: Tz, q: IndicatorQuery) -> Self {
        let (limit, limit_2030) = ind
            .target
            .map(|t| (t.value, t.value_2030.unwrap_or(t.value)))
            .unwrap_or((f64::INFINITY, f64::INFINITY));
        // The daily limit of PM10 (50 µg/m³) is what its days are counted against.
        let (day, day_2030) = match ind.compute {
            Method::ExceedanceDays => (50.0, 45.0),
            _ => (limit, limit_2030),
        };
        Self {
            ind,
            q,
            tz,
            limits: Limits {
                min_hours: cfg.min_day_hours() as f64,
                day,
                day_2030,
                mean_method: matches!(ind.compute, Method::DailyMean | Method::ExceedanceDays),
            },
            current: Vec::new(),
            out: Vec::new(),
            city: City::default(),
            streams: BTreeMap::new(),
        }
    }

    fn push(&mut self, b: Base) {
        if self.current.last().is_some_and(|c| c.sensor != b.sensor) {
            self.flush();
        }
        self.current.push(b);
    }

    /// Ends the current sensor: its rows when asked for, else its share of the city's.
    fn flush(&mut self) {
        let rows = std::mem::take(&mut self.current);
        let Some(first) = rows.first() else {
            return;
        };
        let (ind, l, period) = (self.ind, self.limits, self.q.period);
        let mut per: BTreeMap<NaiveDate, Acc> = BTreeMap::new();
        for b in &rows {
            let acc = per
                .entry(period_start(period, b.day))
                .or_insert_with(Acc::new);
            acc.a += b.a;
            acc.b += b.b;
            acc.c += b.c;
            acc.days += 1;
            let w = if matches!(b.day.weekday(), Weekday::Sat | Weekday::Sun) {
                &mut acc.weekend
            } else {
                &mut acc.weekday
            };
            w.0 += b.a;
            w.1 += 1;
            if l.mean_method {
                if let Some(m) = day_mean(b, l.min_hours) {
                    acc.valid_days += 1;
                    acc.means += m;
                    acc.exceed += u32::from(m > l.day);
                    acc.exceed_2030 += u32::from(m > l.day_2030);
                }
            }
            if b.stream.is_some() {
                acc.stream.clone_from(&b.stream);
            }
        }
        if self.q.sensors.is_none() {
            self.city.add(ind, l, period, &rows, &per);
            if let (true, "waste_bin", Some(s)) = (self.q.by_stream, ind.kind, &first.stream) {
                self.streams
                    .entry(s.clone())
                    .or_default()
                    .add(ind, l, period, &rows, &per);
            }
            return;
        }
        let sensor = &first.sensor;
        let mut prev: Option<(NaiveDate, f64)> = None;
        for (p, acc) in &per {
            let mut extra = Map::new();
            let value = value_of(ind, period, *p, self.tz, acc, &mut extra);
            if ind.compute == Method::Trips && period != Period::Day {
                if let (Some((pp, pv)), Some(v)) = (prev, value) {
                    if next_period(period, pp) == *p && pv > 0.0 {
                        extra.insert("change_pct".into(), json!(round((v / pv - 1.0) * 100.0, 2)));
                    }
                }
                if let Some(v) = value {
                    prev = Some((*p, v));
                }
            }
            if let Some(s) = &acc.stream {
                extra.insert("stream".into(), json!(s));
            }
            self.out.push(IndicatorRow {
                period_start: *p,
                sensor: Some(sensor.clone()),
                value,
                extra,
            });
        }
    }

    fn finish(mut self) -> Vec<IndicatorRow> {
        self.flush();
        let mut out = std::mem::take(&mut self.out);
        if self.q.sensors.is_none() {
            let (ind, q, tz) = (self.ind, &self.q, self.tz);
            out.extend(city_rows(
                ind,
                q.period,
                tz,
                std::mem::take(&mut self.city),
                None,
            ));
            for (s, c) in std::mem::take(&mut self.streams) {
                out.extend(city_rows(ind, q.period, tz, c, Some(&s)));
            }
        }
        out.sort_by(|x, y| {
            (x.period_start, x.sensor.is_some(), &x.sensor).cmp(&(
                y.period_start,
                y.sensor.is_some(),
                &y.sensor,
            ))
        });
        out
    }
}

/// Hours in the period starting at `p` (local clock changes included).
fn period_hours(period: Period, p: NaiveDate, tz: Tz) -> f64 {
    let a = local_instant(tz, p, 0);
    let b = local_instant(tz, next_period(period, p), 0);
    (b - a).num_seconds() as f64 / 3600.0
}

fn value_of(
    ind: &Indicator,
    period: Period,
    p: NaiveDate,
    tz: Tz,
    acc: &Acc,
    extra: &mut Map<String, Value>,
) -> Option<f64> {
    let ratio = |n: f64, d: f64| (d > 0.0).then(|| n / d);
    match ind.compute {
        Method::DailyMean => {
            if period == Period::Day {
                extra.insert("hours".into(), json!(acc.b));
            }
            extra.insert("valid_days".into(), json!(acc.valid_days));
            ratio(acc.means, f64::from(acc.valid_days)).map(|v| round(v, ind.compute.decimals()))
        }
        Method::ExceedanceDays => {
            extra.insert("valid_days".into(), json!(acc.valid_days));
            extra.insert("exceedances_2030".into(), json!(acc.exceed_2030));
            Some(f64::from(acc.exceed))
        }
        Method::PeriodMean => {
            extra.insert("hours".into(), json!(acc.b));
            extra.insert(
                "coverage".into(),
                json!(round(acc.b / period_hours(period, p, tz), 4)),
            );
            ratio(acc.a, acc.b).map(|v| round(v, ind.compute.decimals()))
        }
        Method::Collections | Method::OverflowHours => Some(acc.a.max(0.0)),
        Method::FillAtCollection => {
            extra.insert("collections".into(), json!(acc.a));
            ratio(acc.b, acc.a).map(|v| round(v, ind.compute.decimals()))
        }
        Method::FullShare => {
            extra.insert("collections".into(), json!(acc.a));
            ratio(acc.c * 100.0, acc.a).map(|v| round(v, ind.compute.decimals()))
        }
        Method::EnergyPerNight | Method::LitHours | Method::FaultHours => {
            Some(round(acc.a, ind.compute.decimals()))
        }
        Method::Trips => {
            if period != Period::Day {
                extra.insert("days".into(), json!(acc.days));
                if let Some(m) = ratio(acc.weekday.0, f64::from(acc.weekday.1)) {
                    extra.insert("weekday_daily_mean".into(), json!(round(m, 2)));
                }
                if let Some(m) = ratio(acc.weekend.0, f64::from(acc.weekend.1)) {
                    extra.insert("weekend_daily_mean".into(), json!(round(m, 2)));
                }
            }
            Some(acc.a)
        }
    }
}

/// The city's rows (all sensors, or one waste stream).
fn city_rows(
    ind: &Indicator,
    period: Period,
    tz: Tz,
    city: City,
    stream: Option<&str>,
) -> Vec<IndicatorRow> {
    let City {
        mut by_period,
        days,
        daily,
    } = city;
    match ind.compute {
        Method::DailyMean | Method::ExceedanceDays => {
            for (day, (sum, n, above, above_2030)) in days {
                let acc = by_period
                    .entry(period_start(period, day))
                    .or_insert_with(Acc::new);
                if n > 0 {
                    acc.valid_days += 1;
                    acc.means += sum / f64::from(n);
                    acc.exceed += u32::from(above);
                    acc.exceed_2030 += u32::from(above_2030);
                    acc.b = acc.b.max(f64::from(n));
                }
            }
        }
        Method::PeriodMean => {}
        _ => {
            for (day, total) in daily {
                let Some(acc) = by_period.get_mut(&period_start(period, day)) else {
                    continue;
                };
                acc.days += 1;
                let w = if matches!(day.weekday(), Weekday::Sat | Weekday::Sun) {
                    &mut acc.weekend
                } else {
                    &mut acc.weekday
                };
                w.0 += total;
                w.1 += 1;
            }
        }
    }
    let mut out = Vec::new();
    let mut prev: Option<(NaiveDate, f64)> = None;
    for (p, acc) in by_period {
        let mut extra = Map::new();
        let value = match ind.compute {
            Method::DailyMean => {
                extra.insert("valid_days".into(), json!(acc.valid_days));
                if period == Period::Day {
                    extra.insert("stations".into(), json!(acc.b));
                }
                (acc.valid_days > 0).then(|| {
                    round(
                        acc.means / f64::from(acc.valid_days),
                        ind.compute.decimals(),
                    )
                })
            }
            Method::ExceedanceDays => {
                extra.insert("valid_days".into(), json!(acc.valid_days));
                extra.insert("exceedances_2030".into(), json!(acc.exceed_2030));
                Some(f64::from(acc.exceed))
            }
            Method::PeriodMean => {
                extra.insert("stations".into(), json!(acc.sensors));
                (acc.valid_days > 0).then(|| {
                    round(
                        acc.means / f64::from(acc.valid_days),
                        ind.compute.decimals(),
                    )
                })
            }
            Method::EnergyPerNight | Method::LitHours | Method::FaultHours => {
                let lamps = acc.sensors;
                extra.insert("lamps".into(), json!(lamps));
                if ind.compute == Method::EnergyPerNight && lamps > 0 {
                    extra.insert("per_lamp".into(), json!(round(acc.a / lamps as f64, 4)));
                }
                Some(round(acc.a, ind.compute.decimals()))
            }
            _ => {
                let v = value_of(ind, period, p, tz, &acc, &mut extra);
                if ind.kind == "waste_bin" {
                    extra.insert("bins".into(), json!(acc.sensors));
                }
                if ind.compute == Method::Trips {
                    extra.insert("counters".into(), json!(acc.sensors));
                    if period != Period::Day {
                        if let (Some((pp, pv)), Some(v)) = (prev, v) {
                            if next_period(period, pp) == p && pv > 0.0 {
                                extra.insert(
                                    "change_pct".into(),
                                    json!(round((v / pv - 1.0) * 100.0, 2)),
                                );
                            }
                        }
                    }
                    if let Some(v) = v {
                        prev = Some((p, v));
                    }
                }
                v
            }
        };
        if let Some(s) = stream {
            extra.insert("stream".into(), json!(s));
        }
        out.push(IndicatorRow {
            period_start: p,
            sensor: None,
            value,
            extra,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_and_local_days() {
        let d = NaiveDate::from_ymd_opt(2026, 3, 29).unwrap();
        assert_eq!(
            period_start(Period::Month, d),
            NaiveDate::from_ymd_opt(2026, 3, 1).unwrap()
        );
        assert_eq!(
            next_period(Period::Year, NaiveDate::from_ymd_opt(2026, 1, 1).unwrap()),
            NaiveDate::from_ymd_opt(2027, 1, 1).unwrap()
        );
        let rome: Tz = "Europe/Rome".parse().unwrap();
        // The day of the spring clock change has 23 hours.
        assert_eq!(period_hours(Period::Day, d, rome), 23.0);
        assert_eq!(
            local_instant(rome, d, 0).to_rfc3339(),
            "2026-03-28T23:00:00+00:00"
        );
        assert_eq!(
            period_hours(
                Period::Year,
                NaiveDate::from_ymd_opt(2026, 1, 1).unwrap(),
                rome
            ),
            8760.0
        );
    }
}
