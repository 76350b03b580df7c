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
//!
//! The base rows of settled days are materialized ([`materialize`], migration
//! 0018): a request reads those and computes the rest from the readings. A day's
//! base row must therefore not depend on the range it was computed in, and it does
//! not: the reading before counts within two days, the reading after is looked for
//! past the range by the kind's longest gap, and sums run in time order.

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
    /// Empty where the city's rows need no name (the fold tells sensors apart by `id`).
    sensor: String,
    day: NaiveDate,
    a: f64,
    b: f64,
    c: f64,
    stream: Option<String>,
    /// The sensor's key: base rows come ordered by it.
    id: i32,
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
           sum(h.avg ORDER BY h.bucket)::float8, count(*)::float8,
           (count(*) FILTER (WHERE h.avg >= $6::float8))::float8, NULL::text, s.id
    FROM obs_hourly h JOIN sensors s ON s.id = h.sensor_id
    WHERE h.metric_id = ANY($1) AND h.bucket >= $2 AND h.bucket < $3
      AND ($5::text[] IS NULL OR s.external_id = ANY($5))
    GROUP BY s.id, 2
    ORDER BY s.id, 2";

/// Trips: the hourly means times their counts are the hours' sums.
const TRIPS: &str = "
    SELECT s.external_id, (h.bucket AT TIME ZONE $4::text)::date,
           round(sum(h.avg * h.count))::float8, count(*)::float8, 0::float8, NULL::text, s.id
    FROM obs_hourly h JOIN sensors s ON s.id = h.sensor_id
    WHERE h.metric_id = ANY($1) AND h.bucket >= $2 AND h.bucket < $3
      AND ($5::text[] IS NULL OR s.external_id = ANY($5))
    GROUP BY s.id, 2
    ORDER BY s.id, 2";

/// Collections: a drop of at least $7 points from the reading before, when that
/// reading is at most two days older (so a day's rows do not depend on the range
/// asked). a: collections, b: sum of the fill before, c: those at or above $6.
const COLLECTIONS: &str = "
    WITH f AS (
        SELECT o.sensor_id, o.time, o.value,
               lag(o.value) OVER w AS prev, lag(o.time) OVER w AS prev_time
        FROM observations o JOIN sensors s ON s.id = o.sensor_id
        WHERE o.metric_id = ANY($1) AND o.time >= $2::timestamptz - interval '2 days' AND o.time < $3
          AND ($5::text[] IS NULL OR s.external_id = ANY($5))
        WINDOW w AS (PARTITION BY o.sensor_id ORDER BY o.time))
    SELECT s.external_id, (f.time AT TIME ZONE $4::text)::date, count(*)::float8,
           sum(f.prev ORDER BY f.time)::float8, (count(*) FILTER (WHERE f.prev >= $6::float8))::float8,
           s.properties->>'stream', s.id
    FROM f JOIN sensors s ON s.id = f.sensor_id
    WHERE f.time >= $2 AND f.prev - f.value >= $7::float8
      AND f.prev_time >= f.time - interval '2 days'
    GROUP BY s.id, 2
    ORDER BY s.id, 2";

/// Meter increments, night by night (a night is dated by its evening; $2 and $3
/// are noons), from the reading before when it is at most two days older. A meter
/// that went back was reset: its new value is the increment.
const ENERGY: &str = "
    WITH e AS (
        SELECT o.sensor_id, o.time, o.value,
               lag(o.value) OVER w AS prev, lag(o.time) OVER w AS prev_time
        FROM observations o JOIN sensors s ON s.id = o.sensor_id
        WHERE o.metric_id = ANY($1) AND o.time >= $2::timestamptz - interval '2 days' AND o.time < $3
          AND ($5::text[] IS NULL OR s.external_id = ANY($5))
        WINDOW w AS (PARTITION BY o.sensor_id ORDER BY o.time))
    SELECT s.external_id, ((e.time AT TIME ZONE $4::text) - interval '12 hours')::date,
           sum(CASE WHEN e.value >= e.prev THEN e.value - e.prev ELSE e.value END
               ORDER BY e.time)::float8,
           count(*)::float8, 0::float8, NULL::text, s.id
    FROM e JOIN sensors s ON s.id = e.sensor_id
    WHERE e.time >= $2 AND e.prev IS NOT NULL AND e.prev_time >= e.time - interval '2 days'
    GROUP BY s.id, 2
    ORDER BY s.id, 2";

/// Seconds lit, from each reading to the next (at most $7 s), night by night. The
/// next reading is looked for at least $7 s past the range, so a day's rows do not
/// depend on the range asked.
const LIT: &str = "
    WITH r AS (
        SELECT o.sensor_id, o.time, o.value,
               lead(o.time) OVER (PARTITION BY o.sensor_id ORDER BY o.time) AS next
        FROM observations o JOIN sensors s ON s.id = o.sensor_id
        WHERE o.metric_id = ANY($1) AND o.time >= $2
          AND o.time < $3::timestamptz + greatest(interval '1 day', $7::float8 * interval '1 second')
          AND ($5::text[] IS NULL OR s.external_id = ANY($5)))
    SELECT s.external_id, ((r.time AT TIME ZONE $4::text) - interval '12 hours')::date,
           coalesce(sum(least(extract(epoch FROM r.next - r.time)::float8, $7::float8)
                        ORDER BY r.time) FILTER (WHERE r.value > $6), 0)::float8 / 3600.0,
           count(*)::float8, 0::float8, NULL::text, s.id
    FROM r JOIN sensors s ON s.id = r.sensor_id
    WHERE r.time < $3
    GROUP BY s.id, 2
    ORDER BY s.id, 2";

/// Seconds lit by day or dark at night; the sun's limits come per solar date (the
/// UTC time shifted by the lamps' longitude, $13 seconds) in $8-$12.
const FAULT: &str = "
    WITH r AS (
        SELECT o.sensor_id, o.time, o.value,
               lead(o.time) OVER (PARTITION BY o.sensor_id ORDER BY o.time) AS next
        FROM observations o JOIN sensors s ON s.id = o.sensor_id
        WHERE o.metric_id = ANY($1) AND o.time >= $2
          AND o.time < $3::timestamptz + greatest(interval '1 day', $7::float8 * interval '1 second')
          AND ($5::text[] IS NULL OR s.external_id = ANY($5))),
    sun AS (SELECT * FROM unnest($8::date[], $9::timestamptz[], $10::timestamptz[],
                                 $11::timestamptz[], $12::timestamptz[])
            AS u(d, day_from, day_to, night_to, night_from))
    SELECT s.external_id, (r.time AT TIME ZONE $4::text)::date,
           coalesce(sum(least(extract(epoch FROM r.next - r.time)::float8, $7::float8)
                        ORDER BY r.time) FILTER (WHERE
               (r.value > $6 AND r.time > sun.day_from AND r.time < sun.day_to)
            OR (r.value <= $6 AND (r.time < sun.night_to OR r.time > sun.night_from))), 0)::float8
               / 3600.0,
           count(*)::float8, 0::float8, NULL::text, s.id
    FROM r JOIN sensors s ON s.id = r.sensor_id
    JOIN sun ON sun.d = ((r.time AT TIME ZONE 'UTC') + $13::float8 * interval '1 second')::date
    WHERE r.time < $3
    GROUP BY s.id, 2
    ORDER BY s.id, 2";

/// Materialized base rows of one base, in the base queries' columns and order, for
/// some sensors or with each bin's waste stream. (The base queries sum in time
/// order: a sum of floats in another order can differ in its last bit, and a value
/// rounded to its decimals then by one unit.)
const MATERIALIZED: &str = "
    SELECT s.external_id, d.day, d.a, d.b, d.c,
           CASE WHEN $5 THEN s.properties->>'stream' END, s.id
    FROM indicator_days d JOIN sensors s ON s.id = d.sensor_id
    WHERE d.base = $1 AND d.day >= $2 AND d.day < $3
      AND ($4::text[] IS NULL OR s.external_id = ANY($4))
    ORDER BY d.sensor_id, d.day";

/// The city's materialized base rows where no sensor's name or stream is needed:
/// the fold tells sensors apart by key.
const MATERIALIZED_CITY: &str = "
    SELECT NULL::text, d.day, d.a, d.b, d.c, NULL::text, d.sensor_id
    FROM indicator_days d
    WHERE d.base = $1 AND d.day >= $2 AND d.day < $3
    ORDER BY d.sensor_id, d.day";

/// Changes whenever a base query's rows for the same readings and settings change,
/// so rows materialized by an older version are not read (see [`Spec::key`]).
const BASE_VERSION: u32 = 1;

/// Readings older than this are marked by the writer for the materializer (see
/// `indicator_dirty`, migration 0018); younger ones fall on days not yet materialized.
pub const MARKED_AFTER: Duration = Duration::days(1);

/// Days longer ago than this (plus the kind's longest gap between readings) are
/// materialized: a reading younger than [`MARKED_AFTER`] cannot change them (a day
/// for the time zone, one for a reading's effect on the days before, its gap, and
/// one to spare).
const SETTLED_DAYS: i64 = 4;

/// Days one materializer statement computes.
const CHUNK_DAYS: i64 = 31;

/// Rounds a marked day may wait for its marks to stop before it is computed anyway.
const MAX_WAIT_ROUNDS: u32 = 6;

/// The marks of late readings the materializer has seen, kept between its rounds.
/// A day still being marked (a backfill, a gateway replaying its buffer) would be
/// computed again every round and marked again before the next; it waits instead
/// until a round finds its mark unchanged, or for [`MAX_WAIT_ROUNDS`] while marks
/// keep coming. Requests compute marked days from the readings meanwhile, so the
/// wait costs their speed, never their answer. Empty after a restart or a change of
/// materializer: every mark then waits a round.
#[derive(Debug, Default)]
pub struct MarkWatch {
    /// Day → the mark's generation when last seen, and the rounds it has waited.
    seen: std::collections::HashMap<NaiveDate, (i64, u32)>,
}

impl MarkWatch {
    /// Of this round's `marks`, those to compute now; remembers the others.
    fn due(&mut self, marks: &[(NaiveDate, i64)]) -> Vec<(NaiveDate, i64)> {
        let mut seen = std::collections::HashMap::with_capacity(marks.len());
        let mut due = Vec::new();
        for &(day, gen) in marks {
            match self.seen.get(&day) {
                Some(&(g, _)) if g == gen => due.push((day, gen)),
                Some(&(_, waited)) if waited + 1 >= MAX_WAIT_ROUNDS => due.push((day, gen)),
                Some(&(_, waited)) => {
                    seen.insert(day, (gen, waited + 1));
                }
                None => {
                    seen.insert(day, (gen, 0));
                }
            }
        }
        self.seen = seen;
        due
    }
}

/// Live days a request computes next to materialized ones; with more (late readings
/// for long ago), it computes everything from the readings, as with none.
const MAX_LIVE_DAYS: i64 = 62;

/// Everything an indicator's base query depends on but the range and the sensors.
struct Spec {
    name: &'static str,
    sql: &'static str,
    metric_ids: Vec<i16>,
    tz: Tz,
    timezone: String,
    /// Days run from noon to noon.
    nightly: bool,
    threshold: f64,
    collection_drop: Option<f64>,
    max_gap_s: f64,
    /// Where the sun is judged (lamp faults).
    sun_at: Option<(f64, f64)>,
}

impl Spec {
    async fn new(
        store: &Store,
        catalog: &Catalog,
        cfg: &IndicatorSettings,
        ind: &'static Indicator,
        sensors: Option<&[String]>,
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
        let (name, sql, threshold, collection_drop) = match ind.compute {
            Method::Collections | Method::FillAtCollection | Method::FullShare => (
                "collections",
                COLLECTIONS,
                cfg.full_at,
                Some(cfg.collection_drop),
            ),
            Method::EnergyPerNight => ("energy", ENERGY, 0.0, None),
            Method::LitHours => ("lit", LIT, lit_above, None),
            Method::FaultHours => ("fault", FAULT, lit_above, None),
            Method::Trips => ("trips", TRIPS, 0.0, None),
            Method::OverflowHours => ("hourly", HOURLY, cfg.overflow_at, None),
            Method::DailyMean | Method::ExceedanceDays | Method::PeriodMean => {
                ("hourly", HOURLY, 0.0, None)
            }
        };
        let sun_at = match ind.compute {
            Method::FaultHours => Some(lamp_position(store, ind.kind, sensors).await?),
            _ => None,
        };
        Ok(Self {
            name,
            sql,
            metric_ids,
            tz,
            timezone: cfg.timezone.clone(),
            nightly: matches!(ind.compute, Method::EnergyPerNight | Method::LitHours),
            threshold,
            collection_drop,
            max_gap_s: 2.0 * f64::from(kind.def.cadence_s.max(1)),
            sun_at,
        })
    }

    /// Names the query and every value its rows depend on but the range and the
    /// sensors: two requests with one key read the same rows for a day.
    fn key(&self) -> String {
        format!(
            "v{BASE_VERSION} {} metrics={:?} tz={} threshold={} drop={:?} gap={} sun={:?}",
            self.name,
            self.metric_ids,
            self.timezone,
            self.threshold,
            self.collection_drop,
            self.max_gap_s,
            self.sun_at
        )
    }

    /// Whole days covered by the longest gap between two readings a query bridges.
    fn gap_days(&self) -> i64 {
        (self.max_gap_s / 86_400.0).ceil() as i64
    }

    /// The local days a reading on UTC date `day` may change: its local day (a day
    /// either side of UTC), the days before that its gap and a night reach back to,
    /// and the two days after whose readings look back at it.
    fn touched_by(&self, day: NaiveDate) -> (NaiveDate, NaiveDate) {
        (
            day - Duration::days(2 + self.gap_days()),
            day + Duration::days(4),
        )
    }

    /// The query over local days `[from, to)` of `sensors` (all: `None`).
    fn query(&self, from: NaiveDate, to: NaiveDate, sensors: Option<Vec<String>>) -> BaseQuery {
        let hour = if self.nightly { 12 } else { 0 };
        let (from, to) = (
            local_instant(self.tz, from, hour),
            local_instant(self.tz, to, hour),
        );
        let mut params: Vec<Box<dyn ToSql + Sync + Send>> = vec![
            Box::new(self.metric_ids.clone()),
            Box::new(from),
            Box::new(to),
            Box::new(self.timezone.clone()),
            Box::new(sensors),
        ];
        match self.name {
            "collections" => {
                params.push(Box::new(self.threshold));
                params.push(Box::new(self.collection_drop.unwrap_or_default()));
            }
            "energy" | "trips" => {}
            "lit" => {
                params.push(Box::new(self.threshold));
                params.push(Box::new(self.max_gap_s));
            }
            "fault" => {
                let (lat, lon) = self.sun_at.unwrap_or_default();
                let sun = SunTable::new(from, to, lat, lon);
                params.push(Box::new(self.threshold));
                params.push(Box::new(self.max_gap_s));
                params.push(Box::new(sun.date));
                params.push(Box::new(sun.day_from));
                params.push(Box::new(sun.day_to));
                params.push(Box::new(sun.night_to));
                params.push(Box::new(sun.night_from));
                params.push(Box::new(lon * 240.0));
            }
            _ => params.push(Box::new(self.threshold)),
        }
        BaseQuery {
            sql: self.sql,
            params,
        }
    }

    /// The first local day not yet settled (see [`SETTLED_DAYS`]).
    fn horizon(&self) -> NaiveDate {
        Utc::now().with_timezone(&self.tz).date_naive()
            - Duration::days(SETTLED_DAYS + self.gap_days())
    }
}

/// An indicator's base query with its parameters, ready to run.
struct BaseQuery {
    sql: &'static str,
    params: Vec<Box<dyn ToSql + Sync + Send>>,
}

impl BaseQuery {
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

fn base_of(r: &tokio_postgres::Row) -> Base {
    Base {
        sensor: r.get::<_, Option<String>>(0).unwrap_or_default(),
        day: r.get(1),
        a: r.get::<_, Option<f64>>(2).unwrap_or(0.0),
        b: r.get::<_, Option<f64>>(3).unwrap_or(0.0),
        c: r.get::<_, Option<f64>>(4).unwrap_or(0.0),
        stream: r.get(5),
        id: r.get(6),
    }
}

/// Which of a request's days come materialized: `Some((base, split))` when days
/// `[q.from, split)` are read from `base` and the rest computed from the readings.
async fn materialized_part(
    c: &tokio_postgres::Client,
    cfg: &IndicatorSettings,
    spec: &Spec,
    q: &IndicatorQuery,
) -> Result<Option<(i32, NaiveDate)>, StoreError> {
    if !cfg.materialize {
        return Ok(None);
    }
    let row = c
        .query_opt(
            "SELECT b.id, b.to_day, (SELECT min(day) FROM indicator_dirty)
             FROM indicator_bases b WHERE b.key = $1 AND b.from_day IS NOT NULL",
            &[&spec.key()],
        )
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let (id, to_day, dirty): (i32, Option<NaiveDate>, Option<NaiveDate>) =
        (row.get(0), row.get(1), row.get(2));
    // No reading is older than the base's first day but one marked: the days
    // before it are empty, and the days a mark touches are computed live.
    let mut split = q.to.min(to_day.unwrap_or(q.from));
    if let Some(d) = dirty {
        split = split.min(spec.touched_by(d).0);
    }
    let usable = split > q.from && (q.to - split).num_days() <= MAX_LIVE_DAYS;
    Ok(usable.then_some((id, split)))
}

/// Computes `ind` over `q` (see the module doc): the days materialized are read as
/// they were stored, the others computed from the readings, and the rows merged by
/// sensor and day.
pub async fn compute(
    store: &Store,
    catalog: &Catalog,
    cfg: &IndicatorSettings,
    ind: &'static Indicator,
    q: &IndicatorQuery,
) -> Result<Vec<IndicatorRow>, StoreError> {
    let tz = cfg.tz().map_err(StoreError::Config)?;
    let spec = Spec::new(store, catalog, cfg, ind, q.sensors.as_deref()).await?;
    let c = store.read_client().await?;
    let part = materialized_part(&c, cfg, &spec, q).await?;
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
    let in_range = |b: &Base| b.day >= q.from && b.day < q.to;
    match part {
        None => {
            let rows = spec.query(q.from, q.to, q.sensors.clone()).rows(&c).await?;
            futures_util::pin_mut!(rows);
            while let Some(r) = rows.try_next().await? {
                let b = base_of(&r);
                if in_range(&b) && tx.send(b).await.is_err() {
                    break;
                }
            }
        }
        Some((base, split)) => {
            // The live days are few (at most MAX_LIVE_DAYS): held, then merged into
            // the materialized ones as those stream by.
            let mut live = Vec::new();
            if split < q.to {
                let rows = spec.query(split, q.to, q.sensors.clone()).rows(&c).await?;
                futures_util::pin_mut!(rows);
                while let Some(r) = rows.try_next().await? {
                    live.push(base_of(&r));
                }
            }
            let mut live = live.into_iter().peekable();
            let rows = materialized_rows(&c, &spec, base, q, split).await?;
            futures_util::pin_mut!(rows);
            let mut next = rows.try_next().await?.map(|r| base_of(&r));
            loop {
                let take_live = match (&next, live.peek()) {
                    (None, None) => break,
                    (None, Some(_)) => true,
                    (Some(_), None) => false,
                    (Some(m), Some(l)) => (l.id, l.day) < (m.id, m.day),
                };
                let b = if take_live {
                    live.next().expect("peeked")
                } else {
                    let b = next.take().expect("matched");
                    next = rows.try_next().await?.map(|r| base_of(&r));
                    b
                };
                if in_range(&b) && tx.send(b).await.is_err() {
                    break;
                }
            }
        }
    }
    drop(tx);
    folder
        .await
        .map_err(|e| StoreError::Config(format!("indicator fold failed: {e}")))
}

/// Runs only `ind`'s base query over `q`, from the readings, and counts its rows:
/// the database's share of [`compute`] without materialized days, for the
/// benchmark's reference.
pub async fn base_rows(
    store: &Store,
    catalog: &Catalog,
    cfg: &IndicatorSettings,
    ind: &'static Indicator,
    q: &IndicatorQuery,
) -> Result<u64, StoreError> {
    let spec = Spec::new(store, catalog, cfg, ind, q.sensors.as_deref()).await?;
    let c = store.read_client().await?;
    count(spec.query(q.from, q.to, q.sensors.clone()).rows(&c).await?).await
}

/// The two reads of a [`compute`] with materialized days, each timed alone: where
/// a request's time goes, for the benchmark.
#[derive(Debug, Default, Clone)]
pub struct Reads {
    /// Materialized base rows read, and how long reading them took.
    pub materialized_rows: u64,
    pub materialized: std::time::Duration,
    /// Base rows computed from the readings for the days not materialized (the
    /// newest, and those late readings marked), and how long that took.
    pub live_rows: u64,
    pub live: std::time::Duration,
}

/// Runs the reads [`compute`] would run for `ind` over `q`, one after the other and
/// without the fold, timing each; `None` when `compute` would read no materialized
/// day (everything from the readings, as [`base_rows`] does).
pub async fn reads(
    store: &Store,
    catalog: &Catalog,
    cfg: &IndicatorSettings,
    ind: &'static Indicator,
    q: &IndicatorQuery,
) -> Result<Option<Reads>, StoreError> {
    let spec = Spec::new(store, catalog, cfg, ind, q.sensors.as_deref()).await?;
    let c = store.read_client().await?;
    let Some((base, split)) = materialized_part(&c, cfg, &spec, q).await? else {
        return Ok(None);
    };
    let mut r = Reads::default();
    let t = std::time::Instant::now();
    if split < q.to {
        let rows = spec.query(split, q.to, q.sensors.clone()).rows(&c).await?;
        r.live_rows = count(rows).await?;
    }
    r.live = t.elapsed();
    let t = std::time::Instant::now();
    let rows = materialized_rows(&c, &spec, base, q, split).await?;
    r.materialized_rows = count(rows).await?;
    r.materialized = t.elapsed();
    Ok(Some(r))
}

async fn count(rows: tokio_postgres::RowStream) -> Result<u64, StoreError> {
    futures_util::pin_mut!(rows);
    let mut n = 0;
    while rows.try_next().await?.is_some() {
        n += 1;
    }
    Ok(n)
}

/// The materialized base rows of days `[q.from, split)`, in sensor and day order.
async fn materialized_rows(
    c: &tokio_postgres::Client,
    spec: &Spec,
    base: i32,
    q: &IndicatorQuery,
    split: NaiveDate,
) -> Result<tokio_postgres::RowStream, StoreError> {
    let streams = spec.name == "collections";
    Ok(if q.sensors.is_none() && !streams {
        c.query_raw(
            MATERIALIZED_CITY,
            [&base as &(dyn ToSql + Sync), &q.from, &split],
        )
        .await?
    } else {
        c.query_raw(
            MATERIALIZED,
            [
                &base as &(dyn ToSql + Sync),
                &q.from,
                &split,
                &q.sensors,
                &streams,
            ],
        )
        .await?
    })
}

/// What one round of [`materialize`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Materialized {
    /// Base queries maintained (indicators sharing one count once).
    pub bases: usize,
    /// Days computed, summed over the bases.
    pub days: i64,
    /// Base rows written.
    pub rows: u64,
    /// Marks of late readings handled and removed.
    pub marks: usize,
    /// Marks left for a later round: their days are still being marked.
    pub waiting: usize,
    /// Days remain to be computed: run again soon.
    pub more: bool,
}

/// One round of the indicators' materializer, on `c` (the primary; the caller holds
/// the lock that makes it the only one): computes again the days that late readings
/// marked and `watch` finds settled, then extends each base by up to `budget_days`
/// settled days, and drops the bases no indicator uses any more (a setting changed).
pub async fn materialize(
    c: &mut tokio_postgres::Client,
    store: &Store,
    catalog: &Catalog,
    cfg: &IndicatorSettings,
    budget_days: i64,
    watch: &mut MarkWatch,
) -> Result<Materialized, StoreError> {
    let mut specs: BTreeMap<String, Spec> = BTreeMap::new();
    for ind in cityhub_core::indicators::INDICATORS {
        if catalog.get(ind.kind).is_none() {
            continue;
        }
        let spec = Spec::new(store, catalog, cfg, ind, None).await?;
        if !spec.metric_ids.is_empty() {
            specs.insert(spec.key(), spec);
        }
    }
    let marks: Vec<(NaiveDate, i64)> = c
        .query("SELECT day, gen FROM indicator_dirty ORDER BY day", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let seen = marks.len();
    let marks = watch.due(&marks);
    let mut done = Materialized {
        bases: specs.len(),
        marks: marks.len(),
        waiting: seen - marks.len(),
        ..Default::default()
    };
    let mut budget = budget_days;
    for (key, spec) in &specs {
        // Found or made without updating a row each round (no dead rows to vacuum).
        let row = c
            .query_one(
                "WITH made AS (INSERT INTO indicator_bases (key) VALUES ($1)
                               ON CONFLICT (key) DO NOTHING RETURNING id, from_day, to_day)
                 SELECT * FROM made
                 UNION ALL SELECT id, from_day, to_day FROM indicator_bases WHERE key = $1",
                &[key],
            )
            .await?;
        let (id, from_day, to_day): (i32, Option<NaiveDate>, Option<NaiveDate>) =
            (row.get(0), row.get(1), row.get(2));
        let horizon = spec.horizon();
        let to_day = match (from_day, to_day) {
            (Some(_), Some(t)) => t,
            _ => {
                // A new base starts before its first reading, or at the horizon when
                // there is none yet.
                let first: Option<DateTime<Utc>> = c
                    .query_one(
                        "SELECT min(bucket) FROM obs_daily WHERE metric_id = ANY($1)",
                        &[&spec.metric_ids],
                    )
                    .await?
                    .get(0);
                let start = first
                    .map(|t| t.date_naive() - Duration::days(3))
                    .unwrap_or(horizon)
                    .min(horizon);
                c.execute(
                    "UPDATE indicator_bases SET from_day = $2, to_day = $2 WHERE id = $1",
                    &[&id, &start],
                )
                .await?;
                start
            }
        };
        // The marked days again (and before the first day, the days up to it).
        let mut spans: Vec<(NaiveDate, NaiveDate)> = Vec::new();
        for (day, _) in &marks {
            let (lo, hi) = spec.touched_by(*day);
            let hi = hi.min(to_day);
            if lo >= hi {
                continue;
            }
            match spans.last_mut() {
                Some(last) if lo <= last.1 => last.1 = last.1.max(hi),
                _ => spans.push((lo, hi)),
            }
        }
        // Then the settled days not materialized yet, within the budget.
        let end = horizon.min(to_day + Duration::days(budget.max(0)));
        if end > to_day {
            budget -= (end - to_day).num_days();
            spans.push((to_day, end));
        }
        if horizon > end {
            done.more = true;
        }
        let timescale = store.backend().is_timescale();
        for (lo, hi) in spans {
            if timescale && matches!(spec.name, "hourly" | "trips") {
                // A late reading reaches TimescaleDB's hourly aggregate when its buckets
                // are refreshed; the rows computed here must not miss it.
                crate::maintenance::refresh(
                    c,
                    "obs_hourly",
                    local_instant(spec.tz, lo, 0) - Duration::hours(1),
                    local_instant(spec.tz, hi, 0) + Duration::hours(1),
                )
                .await?;
            }
            let mut a = lo;
            while a < hi {
                let b = hi.min(a + Duration::days(CHUNK_DAYS));
                done.rows += write_days(c, id, spec, a, b).await?;
                done.days += (b - a).num_days();
                a = b;
            }
        }
    }
    if !marks.is_empty() {
        let (days, gens): (Vec<NaiveDate>, Vec<i64>) = marks.into_iter().unzip();
        c.execute(
            "DELETE FROM indicator_dirty d USING unnest($1::date[], $2::bigint[]) AS m(day, gen)
             WHERE d.day = m.day AND d.gen = m.gen",
            &[&days, &gens],
        )
        .await?;
    }
    let keys: Vec<&String> = specs.keys().collect();
    c.execute("DELETE FROM indicator_bases WHERE key <> ALL($1)", &[&keys])
        .await?;
    Ok(done)
}

/// Computes `spec`'s rows for local days `[from, to)` and puts them in place of
/// those stored, in one transaction that also widens the base's range to them.
async fn write_days(
    c: &mut tokio_postgres::Client,
    base: i32,
    spec: &Spec,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<u64, StoreError> {
    let q = spec.query(from, to, None);
    let n = q.params.len();
    let sql = format!(
        "INSERT INTO indicator_days (base, sensor_id, day, a, b, c)
         SELECT ${b}, q.sid, q.day, coalesce(q.a, 0), coalesce(q.b, 0), coalesce(q.c, 0)
         FROM ({}) AS q(external_id, day, a, b, c, stream, sid)
         WHERE q.day >= ${f} AND q.day < ${t}",
        q.sql,
        b = n + 1,
        f = n + 2,
        t = n + 3,
    );
    let mut params: Vec<&(dyn ToSql + Sync)> = q
        .params
        .iter()
        .map(|p| &**p as &(dyn ToSql + Sync))
        .collect();
    params.extend([&base as &(dyn ToSql + Sync), &from, &to]);
    let tx = c.transaction().await?;
    tx.execute(
        "DELETE FROM indicator_days WHERE base = $1 AND day >= $2 AND day < $3",
        &[&base, &from, &to],
    )
    .await?;
    let rows = tx.execute(&sql, &params).await?;
    tx.execute(
        "UPDATE indicator_bases
         SET from_day = least(from_day, $2), to_day = greatest(to_day, $3)
         WHERE id = $1",
        &[&base, &from, &to],
    )
    .await?;
    tx.commit().await?;
    Ok(rows)
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
/// the lamps (across a city the sun's times differ by seconds), to a hundredth of a
/// degree (about a kilometre, a few seconds of the sun's times), so a lamp added
/// to a city leaves its materialized days as they are (see [`Spec::key`]).
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
    let hundredth = |v: f64| (v * 100.0).round() / 100.0;
    Ok((
        hundredth(r.get::<_, Option<f64>>(0).unwrap_or(45.1335)),
        hundredth(r.get::<_, Option<f64>>(1).unwrap_or(10.0245)),
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
        if self.current.last().is_some_and(|c| c.id != b.id) {
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
        Method::Collections => Some(acc.a.max(0.0)),
        Method::OverflowHours => Some(acc.c),
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
    fn a_day_still_being_marked_waits_but_not_forever() {
        let day = |d| NaiveDate::from_ymd_opt(2026, 11, d).unwrap();
        let mut watch = MarkWatch::default();
        // New marks wait a round; one seen unchanged is due.
        assert!(watch.due(&[(day(1), 10), (day(2), 11)]).is_empty());
        assert_eq!(watch.due(&[(day(1), 10), (day(2), 12)]), [(day(1), 10)]);
        // A day marked again every round is due after MAX_WAIT_ROUNDS.
        let mut rounds = 1;
        let mut gen = 12;
        loop {
            gen += 1;
            rounds += 1;
            if !watch.due(&[(day(2), gen)]).is_empty() {
                break;
            }
            assert!(rounds < 100, "never due");
        }
        assert_eq!(rounds, MAX_WAIT_ROUNDS);
        // A day computed and marked again starts over; a day gone is forgotten.
        assert!(watch.due(&[(day(2), gen + 1)]).is_empty());
        assert!(watch.due(&[(day(3), 20)]).is_empty());
        assert!(watch.due(&[(day(2), gen + 1)]).is_empty());
        assert_eq!(watch.due(&[(day(2), gen + 1)]), [(day(2), gen + 1)]);
    }

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
