//! Read side of the store: what the API serves. Sensor listings read `sensors`
//! and `latest` only; time series read `observations` or, on TimescaleDB, the
//! continuous aggregates.

use crate::error::StoreError;
use crate::Store;
use chrono::{DateTime, TimeZone, Utc};
use cityhub_core::{GeoPoint, SensorId};
use futures_util::{pin_mut, TryStreamExt};
use serde_json::{Map, Value};
use std::collections::HashMap;
use tokio::sync::mpsc;
use tokio_postgres::types::ToSql;

/// A longitude/latitude box; `min_lon > max_lon` crosses the antimeridian.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bbox {
    pub min_lon: f64,
    pub min_lat: f64,
    pub max_lon: f64,
    pub max_lat: f64,
}

/// Which sensors a listing returns.
#[derive(Debug, Clone, Default)]
pub struct SensorFilter {
    /// Only these kinds (the enabled ones; empty matches nothing).
    pub kinds: Vec<String>,
    /// Only these external ids.
    pub ids: Option<Vec<String>>,
    pub bbox: Option<Bbox>,
    /// Sensors whose reporting period [first_seen, last_seen] meets this interval.
    pub active_from: Option<DateTime<Utc>>,
    pub active_to: Option<DateTime<Utc>>,
    pub limit: Option<i64>,
    pub offset: i64,
    /// Only database keys from the first, below the second if any: a whole fleet read
    /// as ranges fetched side by side (see [`sensor_key_ranges`]).
    pub keys: Option<(i32, Option<i32>)>,
}

/// A sensor with its latest value of each metric.
#[derive(Debug, Clone, PartialEq)]
pub struct SensorView {
    pub id: String,
    pub kind: String,
    pub name: Option<String>,
    pub lon: Option<f64>,
    pub lat: Option<f64>,
    pub properties: Map<String, Value>,
    /// Its public register entry (`cityhub_core::register::Register` as stored).
    pub register: Map<String, Value>,
    pub first_seen: Option<DateTime<Utc>>,
    pub last_seen: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    pub latest: Vec<LatestValue>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LatestValue {
    pub metric: String,
    pub unit: String,
    pub time: DateTime<Utc>,
    pub value: f64,
}

const FILTER: &str = "s.kind = ANY($1)
    AND ($2::text[] IS NULL OR s.external_id = ANY($2))
    AND ($3::float8 IS NULL OR (s.lat BETWEEN $4 AND $6 AND CASE WHEN $3 <= $5
        THEN s.lon BETWEEN $3 AND $5 ELSE (s.lon >= $3 OR s.lon <= $5) END))
    AND ($7::timestamptz IS NULL OR s.last_seen >= $7)
    AND ($8::timestamptz IS NULL OR s.first_seen <= $8)";

fn filter_params(f: &SensorFilter) -> [Box<dyn ToSql + Sync + Send>; 8] {
    let b = f.bbox;
    [
        Box::new(f.kinds.clone()),
        Box::new(f.ids.clone()),
        Box::new(b.map(|b| b.min_lon)),
        Box::new(b.map(|b| b.min_lat)),
        Box::new(b.map(|b| b.max_lon)),
        Box::new(b.map(|b| b.max_lat)),
        Box::new(f.active_from),
        Box::new(f.active_to),
    ]
}

/// Sensors matching `f`, ordered by id, each with its latest values.
pub async fn sensors(store: &Store, f: &SensorFilter) -> Result<Vec<SensorView>, StoreError> {
    let client = store.read_client().await?;
    let base = filter_params(f);
    let mut params: Vec<&(dyn ToSql + Sync)> = base.iter().map(|p| &**p as _).collect();
    params.push(&f.limit);
    params.push(&f.offset);
    let (from, to) = (f.keys.map(|k| k.0), f.keys.and_then(|k| k.1));
    params.push(&from);
    params.push(&to);
    let rows = client
        .query(
            &format!(
                "SELECT s.id, s.external_id, s.kind, s.name, s.lon, s.lat, s.properties,
                        s.first_seen, s.last_seen, s.updated_at, s.register
                 FROM sensors s WHERE {FILTER}
                   AND ($11::int IS NULL OR s.id >= $11) AND ($12::int IS NULL OR s.id < $12)
                 ORDER BY s.external_id LIMIT $9 OFFSET $10"
            ),
            &params,
        )
        .await?;
    let pks: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    let mut latest: HashMap<i32, Vec<LatestValue>> = HashMap::with_capacity(pks.len());
    if !pks.is_empty() {
        // One index probe of `latest` per sensor (OFFSET 0 keeps the subquery per row).
        // As `sensor_id = ANY($1)`, a page of 10,000 sensors was planned as a scan of
        // the whole table: the snapshot's first load of a million sensors took 89 s.
        for r in client
            .query(
                "SELECT k.id, m.name, m.unit, l.time, l.value
                 FROM unnest($1::int[]) AS k(id)
                 CROSS JOIN LATERAL (SELECT metric_id, time, value FROM latest
                                     WHERE sensor_id = k.id OFFSET 0) l
                 JOIN metrics m ON m.id = l.metric_id
                 ORDER BY k.id, m.name",
                &[&pks],
            )
            .await?
        {
            latest.entry(r.get(0)).or_default().push(LatestValue {
                metric: r.get(1),
                unit: r.get(2),
                time: r.get(3),
                value: r.get(4),
            });
        }
    }
    Ok(rows
        .iter()
        .map(|r| {
            let pk: i32 = r.get(0);
            let properties = match r.get::<_, Value>(6) {
                Value::Object(m) => m,
                _ => Map::new(),
            };
            SensorView {
                id: r.get(1),
                kind: r.get(2),
                name: r.get(3),
                lon: r.get(4),
                lat: r.get(5),
                properties,
                register: match r.get::<_, Value>(10) {
                    Value::Object(m) => m,
                    _ => Map::new(),
                },
                first_seen: r.get(7),
                last_seen: r.get(8),
                updated_at: r.get(9),
                latest: latest.remove(&pk).unwrap_or_default(),
            }
        })
        .collect())
}

/// Ranges of database keys holding `per` sensors each (the last one open), for
/// [`SensorFilter::keys`]: a fleet read side by side in bounded pieces. Found from the
/// keys themselves (one scan of the primary key), so gaps in them cost nothing: a
/// database whose writers once drew a key per upsert has keys spread up to billions.
pub async fn sensor_key_ranges(
    store: &Store,
    per: i64,
) -> Result<Vec<(i32, Option<i32>)>, StoreError> {
    let client = store.read_client().await?;
    let starts: Vec<i32> = client
        .query(
            "SELECT id FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM sensors) k
             WHERE (n - 1) % $1 = 0 ORDER BY id",
            &[&per],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok(starts
        .iter()
        .enumerate()
        .map(|(i, &from)| (from, starts.get(i + 1).copied()))
        .collect())
}

/// How many sensors match `f`, ignoring its limit and offset.
pub async fn count_sensors(store: &Store, f: &SensorFilter) -> Result<i64, StoreError> {
    let client = store.read_client().await?;
    let base = filter_params(f);
    let params: Vec<&(dyn ToSql + Sync)> = base.iter().map(|p| &**p as _).collect();
    Ok(client
        .query_one(
            &format!("SELECT count(*) FROM sensors s WHERE {FILTER}"),
            &params,
        )
        .await?
        .get(0))
}

/// The database key and kind of a sensor.
pub async fn sensor_key(store: &Store, id: &str) -> Result<Option<(i32, String)>, StoreError> {
    let client = store.read_client().await?;
    Ok(client
        .query_opt(
            "SELECT id, kind FROM sensors WHERE external_id = $1",
            &[&id],
        )
        .await?
        .map(|r| (r.get(0), r.get(1))))
}

/// Time resolution of a readings query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    Raw,
    Minutes15,
    Hour,
    Day,
}

impl Bucket {
    pub fn seconds(self) -> Option<i64> {
        match self {
            Bucket::Raw => None,
            Bucket::Minutes15 => Some(900),
            Bucket::Hour => Some(3600),
            Bucket::Day => Some(86400),
        }
    }

    fn interval(self) -> &'static str {
        match self {
            Bucket::Raw => "0",
            Bucket::Minutes15 => "INTERVAL '15 minutes'",
            Bucket::Hour => "INTERVAL '1 hour'",
            Bucket::Day => "INTERVAL '1 day'",
        }
    }

    /// Start of the bucket holding `t` (buckets are aligned to UTC midnight).
    pub fn floor(self, t: DateTime<Utc>) -> DateTime<Utc> {
        match self.seconds() {
            None => t,
            Some(s) => {
                let secs = t.timestamp().div_euclid(s) * s;
                Utc.timestamp_opt(secs, 0).single().unwrap_or(t)
            }
        }
    }
}

/// One time-series request. Rows come ordered by (time, metric id); `after` is the
/// last row of the previous page.
#[derive(Debug, Clone)]
pub struct ReadingsQuery {
    pub sensor: i32,
    pub metrics: Vec<i16>,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub bucket: Bucket,
    pub after: Option<(DateTime<Utc>, i16)>,
    pub limit: Option<i64>,
}

/// A raw reading (`value`) or a bucket (`value` is the mean).
#[derive(Debug, Clone, PartialEq)]
pub struct ReadingRow {
    pub time: DateTime<Utc>,
    pub metric_id: i16,
    pub value: f64,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub count: Option<i64>,
}

fn readings_sql(store: &Store, b: Bucket) -> String {
    const PAGE: &str = "($5::timestamptz IS NULL OR t > $5 OR (t = $5 AND metric_id > $6))
        ORDER BY t, metric_id LIMIT $7";
    let range = "sensor_id = $1 AND metric_id = ANY($2) AND time >= $3 AND time < $4";
    match b {
        Bucket::Raw => format!(
            "SELECT t, metric_id, value, NULL::float8, NULL::float8, NULL::bigint FROM
             (SELECT time AS t, metric_id, value FROM observations WHERE {range}) q WHERE {PAGE}"
        ),
        Bucket::Hour | Bucket::Day => {
            let view = if b == Bucket::Hour {
                "obs_hourly"
            } else {
                "obs_daily"
            };
            format!(
                "SELECT t, metric_id, avg, min, max, count FROM
                 (SELECT bucket AS t, metric_id, avg, min, max, count FROM {view}
                  WHERE sensor_id = $1 AND metric_id = ANY($2) AND bucket >= $3 AND bucket < $4) q
                 WHERE {PAGE}"
            )
        }
        _ => {
            let f = if store.backend().is_timescale() {
                format!("time_bucket({}, time)", b.interval())
            } else {
                format!(
                    "date_bin({}, time, TIMESTAMPTZ '2000-01-01 00:00:00+00')",
                    b.interval()
                )
            };
            format!(
                "SELECT t, metric_id, avg, min, max, count FROM
                 (SELECT {f} AS t, metric_id, avg(value) AS avg, min(value) AS min,
                         max(value) AS max, count(*) AS count
                  FROM observations WHERE {range} GROUP BY 1, 2) q
                 WHERE {PAGE}"
            )
        }
    }
}

/// The statement and its bounds: buckets start in [floor(from), to) and hold all their rows.
fn readings_bounds(
    q: &ReadingsQuery,
) -> (DateTime<Utc>, DateTime<Utc>, Option<DateTime<Utc>>, i16) {
    let lower = q.bucket.floor(q.from);
    let upper = match q.bucket.seconds() {
        Some(s) if q.bucket.floor(q.to) != q.to => {
            q.bucket.floor(q.to) + chrono::Duration::seconds(s)
        }
        _ => q.to,
    };
    match q.after {
        // A cursor lets the scan start at its bucket.
        Some((t, m)) => (lower.max(q.bucket.floor(t)), upper, Some(t), m),
        None => (lower, upper, None, 0),
    }
}

fn to_row(r: &tokio_postgres::Row) -> ReadingRow {
    ReadingRow {
        time: r.get(0),
        metric_id: r.get(1),
        value: r.get(2),
        min: r.get(3),
        max: r.get(4),
        count: r.get(5),
    }
}

/// One page of readings (`q.limit` rows at most).
pub async fn readings(store: &Store, q: &ReadingsQuery) -> Result<Vec<ReadingRow>, StoreError> {
    let client = store.read_client().await?;
    let (lower, upper, after_t, after_m) = readings_bounds(q);
    let rows = client
        .query(
            &readings_sql(store, q.bucket),
            &[
                &q.sensor, &q.metrics, &lower, &upper, &after_t, &after_m, &q.limit,
            ],
        )
        .await?;
    Ok(rows.iter().map(to_row).collect())
}

/// Every reading of `q` as a stream, for downloads of any size: rows flow from the
/// server as the receiver takes them, never all in memory. `client` comes from the
/// stream pool; a receiver that takes nothing for `send_timeout` is dropped and the
/// connection freed.
pub fn readings_stream(
    store: Store,
    client: crate::PooledClient,
    q: ReadingsQuery,
    send_timeout: std::time::Duration,
) -> mpsc::Receiver<Result<ReadingRow, StoreError>> {
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        let run = async {
            let (lower, upper, after_t, after_m) = readings_bounds(&q);
            let params: [&(dyn ToSql + Sync); 7] = [
                &q.sensor, &q.metrics, &lower, &upper, &after_t, &after_m, &q.limit,
            ];
            let rows = client
                .query_raw(&readings_sql(&store, q.bucket), params)
                .await?;
            pin_mut!(rows);
            while let Some(r) = rows.try_next().await? {
                match tokio::time::timeout(send_timeout, tx.send(Ok(to_row(&r)))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break, // the client went away
                    Err(_) => {
                        tracing::info!(
                            timeout_s = send_timeout.as_secs(),
                            "A download's client stopped reading; ending it."
                        );
                        break;
                    }
                }
            }
            Ok::<_, StoreError>(())
        };
        if let Err(e) = run.await {
            let _ = tx.send(Err(e)).await;
        }
    });
    rx
}

/// What the catalogue says about a kind's data: how many sensors, where, and when.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KindExtent {
    pub sensors: i64,
    pub first: Option<DateTime<Utc>>,
    pub last: Option<DateTime<Utc>>,
    pub bbox: Option<Bbox>,
}

pub async fn kind_extents(store: &Store) -> Result<HashMap<String, KindExtent>, StoreError> {
    let client = store.read_client().await?;
    let rows = client
        .query(
            "SELECT kind, count(*), min(first_seen), max(last_seen),
                    min(lon), min(lat), max(lon), max(lat)
             FROM sensors GROUP BY kind",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let b: [Option<f64>; 4] = [r.get(4), r.get(5), r.get(6), r.get(7)];
            let bbox = match b {
                [Some(a), Some(b), Some(c), Some(d)] => Some(Bbox {
                    min_lon: a,
                    min_lat: b,
                    max_lon: c,
                    max_lat: d,
                }),
                _ => None,
            };
            (
                r.get(0),
                KindExtent {
                    sensors: r.get(1),
                    first: r.get(2),
                    last: r.get(3),
                    bbox,
                },
            )
        })
        .collect())
}

/// A stored dead letter, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetterRow {
    pub id: i64,
    pub received_at: DateTime<Utc>,
    pub topic: String,
    pub payload: Vec<u8>,
    pub reason_code: String,
    pub reason: String,
    /// The lengths before payload and reason were cut short.
    pub payload_bytes: i32,
    pub reason_bytes: i32,
    pub topic_bytes: i32,
}

/// At most `limit` dead letters, newest first, and no more than `max_bytes` of
/// payloads and reasons in all (always at least one), so a page's size is bounded;
/// and whether the size cut the page short.
pub async fn dead_letters(
    store: &Store,
    reason_code: Option<&str>,
    before_id: Option<i64>,
    limit: i64,
    max_bytes: i64,
) -> Result<(Vec<DeadLetterRow>, bool), StoreError> {
    let client = store.read_client().await?;
    let rows = client
        .query(
            "SELECT id, received_at, topic, payload, reason_code, reason, payload_bytes, reason_bytes, fetched, topic_bytes
             FROM (SELECT *, sum(length(payload) + octet_length(reason)) OVER (ORDER BY id DESC) AS running,
                          row_number() OVER (ORDER BY id DESC) AS n, count(*) OVER () AS fetched
                   FROM (SELECT * FROM dead_letters
                         WHERE ($1::text IS NULL OR reason_code = $1) AND ($2::bigint IS NULL OR id < $2)
                         ORDER BY id DESC LIMIT $3) newest) sized
             WHERE running <= $4 OR n = 1
             ORDER BY id DESC",
            &[&reason_code, &before_id, &limit, &max_bytes],
        )
        .await?;
    let fetched: i64 = rows.first().map_or(0, |r| r.get(8));
    let cut = (rows.len() as i64) < fetched;
    let page = rows
        .iter()
        .map(|r| DeadLetterRow {
            id: r.get(0),
            received_at: r.get(1),
            topic: r.get(2),
            payload: r.get(3),
            reason_code: r.get(4),
            reason: r.get(5),
            payload_bytes: r.get(6),
            reason_bytes: r.get(7),
            topic_bytes: r.get(9),
        })
        .collect();
    Ok((page, cut))
}

/// Deletes dead letters received more than `days` ago; returns how many.
pub async fn purge_dead_letters(store: &Store, days: u32) -> Result<u64, StoreError> {
    let client = store.pool().get().await?;
    Ok(client
        .execute(
            "DELETE FROM dead_letters WHERE received_at < now() - make_interval(days => $1)",
            &[&(days as i32)],
        )
        .await?)
}

/// A sensor as an operator registers it: the whole record, replacing what was there.
#[derive(Debug, Clone, PartialEq)]
pub struct SensorPut {
    pub id: SensorId,
    pub kind: String,
    pub name: Option<String>,
    pub location: Option<GeoPoint>,
    pub properties: Map<String, Value>,
    pub register: cityhub_core::register::Register,
}

/// Registers or replaces a sensor; `Ok(true)` when it is new. A sensor keeps its kind
/// for life (its history belongs to the kind's metrics): another kind is refused.
pub async fn put_sensor(store: &Store, s: &SensorPut, actor: &str) -> Result<bool, StoreError> {
    let mut client = store.pool().get().await?;
    let tx = client.transaction().await?;
    let before: Option<(String, Value)> = tx
        .query_opt(
            &format!("SELECT kind, {SENSOR_RECORD} FROM sensors WHERE external_id = $1 FOR UPDATE"),
            &[&s.id.as_str()],
        )
        .await?
        .map(|r| (r.get(0), r.get(1)));
    if let Some((k, _)) = &before {
        if *k != s.kind {
            return Err(StoreError::KindConflict {
                sensor: s.id.to_string(),
                registered: k.clone(),
            });
        }
    }
    let props = Value::Object(s.properties.clone());
    let (lon, lat) = (s.location.map(|p| p.lon()), s.location.map(|p| p.lat()));
    let register = serde_json::to_value(&s.register).unwrap_or_default();
    let after: Value = tx
        .query_one(
            &format!(
                "INSERT INTO sensors AS s (external_id, kind, name, lon, lat, properties, register)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (external_id) DO UPDATE SET name = excluded.name, lon = excluded.lon,
                     lat = excluded.lat, properties = excluded.properties,
                     register = excluded.register, updated_at = now()
                 RETURNING {SENSOR_RECORD}"
            ),
            &[
                &s.id.as_str(),
                &s.kind,
                &s.name,
                &lon,
                &lat,
                &props,
                &register,
            ],
        )
        .await?
        .get(0);
    let before = before.map(|(_, b)| b);
    let action = if before.is_some() {
        "sensor.replace"
    } else {
        "sensor.register"
    };
    let target = format!("sensor:{}", s.id);
    crate::trust::audit(&tx, actor, action, &target, before.as_ref(), Some(&after)).await?;
    tx.commit().await?;
    store.note_changed([s.id.as_str()]);
    Ok(before.is_none())
}

/// Merges `set` into a sensor's attributes (a null removes one), audited; returns
/// the attributes after, or None when there is no such sensor.
pub async fn set_service(
    store: &Store,
    id: &SensorId,
    set: &Map<String, Value>,
    actor: &str,
) -> Result<Option<Value>, StoreError> {
    let mut client = store.pool().get().await?;
    let tx = client.transaction().await?;
    let Some(before) = tx
        .query_opt(
            &format!("SELECT {SENSOR_RECORD} FROM sensors WHERE external_id = $1 FOR UPDATE"),
            &[&id.as_str()],
        )
        .await?
    else {
        return Ok(None);
    };
    let before: Value = before.get(0);
    let set = Value::Object(set.clone());
    let row = tx
        .query_one(
            &format!(
                "UPDATE sensors SET properties = jsonb_strip_nulls(properties || $2), updated_at = now()
                 WHERE external_id = $1 RETURNING {SENSOR_RECORD}, properties"
            ),
            &[&id.as_str(), &set],
        )
        .await?;
    let after: Value = row.get(0);
    let target = format!("sensor:{id}");
    crate::trust::audit(
        &tx,
        actor,
        "sensor.service",
        &target,
        Some(&before),
        Some(&after),
    )
    .await?;
    tx.commit().await?;
    store.note_changed([id.as_str()]);
    Ok(Some(row.get(1)))
}

/// A sensor's registry record as JSON, for the audit trail's before and after.
pub(crate) const SENSOR_RECORD: &str = "jsonb_build_object('kind', kind, 'name', name, \
    'lon', lon, 'lat', lat, 'properties', properties, 'register', register)";

/// Raw readings of one metric in `[from, to)`, at most `limit`: the oldest, or the
/// newest when `newest` (NGSI-LD's `lastN`); either way returned oldest first.
pub async fn series(
    store: &Store,
    sensor: i32,
    metric: i16,
    (from, to): (DateTime<Utc>, DateTime<Utc>),
    limit: i64,
    newest: bool,
) -> Result<Vec<(DateTime<Utc>, f64)>, StoreError> {
    let client = store.read_client().await?;
    let order = if newest { "DESC" } else { "ASC" };
    let rows = client
        .query(
            &format!(
                "SELECT time, value FROM observations
                 WHERE sensor_id = $1 AND metric_id = $2 AND time >= $3 AND time < $4
                 ORDER BY time {order} LIMIT $5"
            ),
            &[&sensor, &metric, &from, &to, &limit],
        )
        .await?;
    let mut v: Vec<_> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    if newest {
        v.reverse();
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_align_to_utc() {
        let t = Utc.with_ymd_and_hms(2026, 3, 5, 13, 47, 12).unwrap();
        assert_eq!(
            Bucket::Minutes15.floor(t),
            Utc.with_ymd_and_hms(2026, 3, 5, 13, 45, 0).unwrap()
        );
        assert_eq!(
            Bucket::Hour.floor(t),
            Utc.with_ymd_and_hms(2026, 3, 5, 13, 0, 0).unwrap()
        );
        assert_eq!(
            Bucket::Day.floor(t),
            Utc.with_ymd_and_hms(2026, 3, 5, 0, 0, 0).unwrap()
        );
        assert_eq!(Bucket::Raw.floor(t), t);
    }

    #[test]
    fn bounds_cover_whole_buckets() {
        let from = Utc.with_ymd_and_hms(2026, 3, 5, 13, 47, 0).unwrap();
        let to = Utc.with_ymd_and_hms(2026, 3, 5, 15, 10, 0).unwrap();
        let q = ReadingsQuery {
            sensor: 1,
            metrics: vec![1],
            from,
            to,
            bucket: Bucket::Hour,
            after: None,
            limit: None,
        };
        let (lo, hi, _, _) = readings_bounds(&q);
        assert_eq!(lo, Utc.with_ymd_and_hms(2026, 3, 5, 13, 0, 0).unwrap());
        assert_eq!(hi, Utc.with_ymd_and_hms(2026, 3, 5, 16, 0, 0).unwrap());
        let q = ReadingsQuery {
            after: Some((Utc.with_ymd_and_hms(2026, 3, 5, 14, 0, 0).unwrap(), 1)),
            ..q
        };
        let (lo, _, at, am) = readings_bounds(&q);
        assert_eq!(lo, Utc.with_ymd_and_hms(2026, 3, 5, 14, 0, 0).unwrap());
        assert_eq!(
            (at, am),
            (Some(Utc.with_ymd_and_hms(2026, 3, 5, 14, 0, 0).unwrap()), 1)
        );
    }
}
