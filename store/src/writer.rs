//! The batch writer: one transaction per batch, binary COPY into a staging
//! table, idempotent insert into `observations`, upsert of `latest`, sensor
//! registration and dead letters, all committed together or not at all. Each
//! step is a function of its own taking the transaction, in the order they run.

use crate::error::StoreError;
use crate::schema::{ensure_partition, month_start};
use crate::Store;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use cityhub_core::{GeoPoint, Name, Registration, RejectReason, SensorId};
use deadpool_postgres::ClientWrapper as Client;
use futures_util::pin_mut;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use tokio_postgres::Transaction;

/// Where a batch's rows came from, kept so that a row refused late (e.g. a
/// sensor registered under another kind) still becomes a dead letter with its payload.
#[derive(Debug, Clone)]
pub struct Source {
    pub topic: String,
    pub payload: Bytes,
    pub received_at: DateTime<Utc>,
}

/// One reading of one metric.
#[derive(Debug, Clone)]
pub struct Observation {
    pub sensor: SensorId,
    pub metric_id: i16,
    pub time: DateTime<Utc>,
    pub value: f64,
    /// Index into [`WriteBatch::sources`].
    pub source: u32,
}

/// What a batch says about a sensor: registration on first sight, position and last seen.
#[derive(Debug, Clone)]
pub struct SensorSeen {
    pub kind: Name,
    pub location: Option<GeoPoint>,
    /// The location is only a hint (e.g. the receiving gateway's position):
    /// it never replaces a position the sensor already has.
    pub location_fallback: bool,
    pub first: DateTime<Utc>,
    pub last: DateTime<Utc>,
    pub source: u32,
}

/// A message or part of one that could not be stored as observations.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub source: u32,
    /// The class of refusal (the metric label and stored `reason_code`).
    pub code: RejectReason,
    /// Precise, human-readable reason naming the field and the rule (possibly cut short).
    pub reason: String,
    /// The reason's length before it was cut short.
    pub reason_bytes: usize,
}

impl DeadLetter {
    /// A dead letter whose reason is kept to at most `max` bytes (cut on a character
    /// boundary, marked with `…`); the full length is recorded.
    pub fn new(source: u32, code: RejectReason, reason: String, max: usize) -> Self {
        let reason_bytes = reason.len();
        Self {
            source,
            code,
            reason: truncate(reason, max),
            reason_bytes,
        }
    }
}

/// A dead letter's topic is kept to this many bytes (MQTT allows 65,535) with its full
/// length beside it: enough to tell a device's topic, and never a row the database refuses.
pub const DEAD_LETTER_TOPIC_BYTES: usize = 1024;

/// `s` cut to at most `max` bytes on a character boundary, with `…` when cut.
pub fn truncate(mut s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push('…');
    s
}

/// Everything one transaction commits.
#[derive(Debug, Default)]
pub struct WriteBatch {
    pub sources: Vec<Source>,
    pub observations: Vec<Observation>,
    pub sensors: BTreeMap<SensorId, SensorSeen>,
    pub dead_letters: Vec<DeadLetter>,
    /// Someone waits for this batch (an HTTP upload) and may stop waiting: the
    /// writer commits only if it claims the batch first.
    pub claim: Option<Claim>,
}

/// Who decides a waited-for batch's fate first: the writer, claiming it just before
/// COMMIT, or the waiter, abandoning it at its deadline. Exactly one wins, so a
/// client told "not stored" never has its upload stored.
#[derive(Debug, Clone, Default)]
pub struct Claim(std::sync::Arc<std::sync::atomic::AtomicU8>);

impl Claim {
    const OPEN: u8 = 0;
    const CLAIMED: u8 = 1;
    const ABANDONED: u8 = 2;

    fn decide(&self, to: u8) -> bool {
        use std::sync::atomic::Ordering;
        self.0
            .compare_exchange(Self::OPEN, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The writer's side: true when it may commit.
    pub fn try_claim(&self) -> bool {
        self.decide(Self::CLAIMED)
    }

    /// The waiter's side: true when the batch will not be committed; false when the
    /// writer claimed it first (its outcome is then on its way).
    pub fn abandon(&self) -> bool {
        self.decide(Self::ABANDONED)
    }
}

impl WriteBatch {
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// The batch of sources `range` alone: their observations, dead letters and sensors.
    /// A poison batch is split with it until the message at fault is found.
    pub fn sources_in(&self, range: std::ops::Range<usize>) -> WriteBatch {
        let first = range.start as u32;
        let inside = |s: u32| range.contains(&(s as usize));
        let mut out = WriteBatch {
            sources: self.sources[range.clone()].to_vec(),
            ..Default::default()
        };
        for o in self.observations.iter().filter(|o| inside(o.source)) {
            // Every observation's sensor was seen; one that was not could not be stored anyway.
            let Some(seen) = self.sensors.get(&o.sensor) else {
                continue;
            };
            let location = seen.location.map(|p| (p, seen.location_fallback));
            out.see_sensor(&o.sensor, &seen.kind, location, o.time, o.source - first);
            out.observations.push(Observation {
                source: o.source - first,
                ..o.clone()
            });
        }
        for d in self.dead_letters.iter().filter(|d| inside(d.source)) {
            out.dead_letters.push(DeadLetter {
                source: d.source - first,
                ..d.clone()
            });
        }
        out
    }

    /// Records what a message says about its sensor; `location` carries whether it is
    /// only a hint (see [`SensorSeen::location_fallback`]).
    pub fn see_sensor(
        &mut self,
        id: &SensorId,
        kind: &Name,
        location: Option<(GeoPoint, bool)>,
        time: DateTime<Utc>,
        source: u32,
    ) {
        let (location, fallback) = match location {
            Some((p, f)) => (Some(p), f),
            None => (None, false),
        };
        match self.sensors.get_mut(id) {
            Some(s) => {
                s.first = s.first.min(time);
                s.last = s.last.max(time);
                if location.is_some() && (!fallback || s.location.is_none() || s.location_fallback)
                {
                    s.location = location;
                    s.location_fallback = fallback;
                }
            }
            None => {
                self.sensors.insert(
                    id.clone(),
                    SensorSeen {
                        kind: kind.clone(),
                        location,
                        location_fallback: fallback,
                        first: time,
                        last: time,
                        source,
                    },
                );
            }
        }
    }
}

/// What a committed batch did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct WriteOutcome {
    /// Observation rows new to the table.
    pub inserted: u64,
    /// Rows already stored (redeliveries).
    pub duplicates: u64,
    /// Dead letters written, by reason (including those found while writing).
    pub dead_letters: Vec<(RejectReason, u64)>,
    /// Latest values this batch advanced (derived metrics included), when asked for
    /// with [`BatchWriter::report_latest`]: what live subscribers are told.
    pub latest: Vec<LatestChange>,
    /// Messages the database refused even as a bare dead letter: acknowledged and
    /// counted, so that one message can never stop ingestion.
    pub unstorable: u64,
}

impl WriteOutcome {
    /// Adds what another part of the same batch did.
    pub fn merge(&mut self, other: WriteOutcome) {
        self.inserted += other.inserted;
        self.duplicates += other.duplicates;
        for (code, n) in other.dead_letters {
            match self.dead_letters.iter_mut().find(|(c, _)| *c == code) {
                Some((_, m)) => *m += n,
                None => self.dead_letters.push((code, n)),
            }
        }
        self.latest.extend(other.latest);
        self.unstorable += other.unstorable;
    }
}

/// A sensor's newest value of a metric, as committed.
#[derive(Debug, Clone, PartialEq)]
pub struct LatestChange {
    pub sensor: SensorId,
    pub kind: Name,
    pub metric_id: i16,
    pub time: DateTime<Utc>,
    pub value: f64,
}

/// What bounds the writer: its session's timeouts and the payload a dead letter keeps.
#[derive(Debug, Clone, Copy)]
pub struct WriterLimits {
    pub statement_timeout_ms: u64,
    pub lock_timeout_ms: u64,
    pub dead_letter_payload_bytes: usize,
    /// Whether readings register new sensors, and how many at most (0: no limit).
    pub registration: Registration,
    pub max_sensors: u32,
    /// Keep each batch's new readings in `sta_outbox` for the SensorThings MQTT publisher.
    pub sta_outbox: bool,
}

impl Default for WriterLimits {
    fn default() -> Self {
        Self {
            statement_timeout_ms: 30_000,
            lock_timeout_ms: 5_000,
            dead_letter_payload_bytes: 16 * 1024,
            registration: Registration::Open,
            max_sensors: 0,
            sta_outbox: false,
        }
    }
}

/// Serialises registrations when a sensor limit applies, so hubs sharing a database
/// do not pass it together.
const REGISTRATION_LOCK: i64 = 0x0063_6974_7972_6567;

/// Owns one connection and commits batches on it; reconnects on demand.
pub struct BatchWriter {
    store: Store,
    client: Option<Client>,
    partitions: HashSet<DateTime<Utc>>,
    limits: WriterLimits,
    /// Collect [`WriteOutcome::latest`]; off when nobody listens, as it costs a little.
    pub report_latest: bool,
}

const STAGING: &str = "CREATE TEMP TABLE IF NOT EXISTS obs_staging_v2 (
    sensor_id integer, metric_id smallint, time timestamptz, value double precision,
    value_milli bigint, derived boolean NOT NULL DEFAULT false) ON COMMIT DELETE ROWS";

/// `v` as integer thousandths when they give back exactly the same float (migration
/// 0005 says why); -0 keeps its sign as a float. Computed here rather than in SQL,
/// where it cost the server a float-to-text conversion per row.
fn milli(v: f64) -> Option<i64> {
    if v.is_nan() || v.abs() >= 9e12 || (v == 0.0 && v.is_sign_negative()) {
        return None;
    }
    let m = (v * 1000.0).round();
    (m / 1000.0 == v).then_some(m as i64)
}

impl BatchWriter {
    pub fn new(store: Store, limits: WriterLimits) -> Self {
        Self {
            store,
            client: None,
            partitions: HashSet::new(),
            limits,
            report_latest: false,
        }
    }

    /// Drops the connection and forgets which partitions exist (one may have been
    /// dropped since), so that the next write starts afresh.
    pub fn reset(&mut self) {
        self.client = None;
        self.partitions.clear();
    }

    async fn client(&mut self) -> Result<&mut Client, StoreError> {
        if self.client.as_ref().is_some_and(|c| c.is_closed()) {
            self.client = None;
        }
        if self.client.is_none() {
            let obj = self.store.pool().get().await?;
            let client = deadpool_postgres::Object::take(obj);
            client
                .batch_execute(&format!(
                    "SET statement_timeout = {}; SET lock_timeout = {}; {STAGING}",
                    self.limits.statement_timeout_ms, self.limits.lock_timeout_ms
                ))
                .await?;
            self.client = Some(client);
        }
        Ok(self.client.as_mut().expect("set above"))
    }

    /// Commits the batch in one transaction. On error nothing is committed and the
    /// same batch can be retried: every statement is idempotent.
    pub async fn write(&mut self, batch: &WriteBatch) -> Result<WriteOutcome, StoreError> {
        let result = self.write_inner(batch).await;
        if result.is_err() {
            // A fresh session next time: session state that made this fail (a server
            // turned read-only, a setting changed, an aborted COPY) does not stick.
            self.reset();
        }
        result
    }

    async fn write_inner(&mut self, batch: &WriteBatch) -> Result<WriteOutcome, StoreError> {
        let months = self.new_partitions(batch);
        let store = self.store.clone();
        let report_latest = self.report_latest;
        let sta_outbox = self.limits.sta_outbox;
        let max_payload = self.limits.dead_letter_payload_bytes;
        let (registration, max_sensors) = (self.limits.registration, self.limits.max_sensors);
        let client = self.client().await?;
        for m in &months {
            ensure_partition(&**client, *m).await?;
        }
        let tx = client.transaction().await?;
        let sensors = register_sensors(&tx, batch, registration, max_sensors).await?;
        let rollups = !store.backend().is_timescale();
        let (copied, deltas) = stage_observations(&tx, batch, &sensors.ids, rollups).await?;
        let derived = stage_derived(&tx, &store).await?;
        let staged = copied + derived;
        let inserted = insert_observations(&tx).await?;
        if inserted > 0 {
            mark_indicator_days(&tx, batch).await?;
        }
        if rollups {
            write_deltas(&tx, deltas, derived, inserted == staged).await?;
        }
        let outboxed = sta_outbox && inserted > 0;
        if outboxed {
            write_sta_outbox(&tx, inserted == staged).await?;
        }
        let ngsi = inserted > 0 && store.ngsi_subscribed();
        if ngsi {
            write_ngsi_changes(&tx, inserted == staged).await?;
        }
        let latest = upsert_latest(&tx, batch, &sensors.ids, report_latest).await?;
        let dead_letters_written =
            write_dead_letters(&tx, batch, &sensors.refused, max_payload).await?;
        if batch.claim.as_ref().is_some_and(|c| !c.try_claim()) {
            return Err(StoreError::Abandoned); // rolled back as the transaction drops
        }
        tx.commit().await?;

        // Only now, with the transaction durable, may the caches learn from it.
        self.partitions.extend(months);
        store.note_changed(sensors.ids.keys().copied());
        if outboxed {
            store.note_outboxed();
        }
        if ngsi {
            store.note_ngsi_changed();
        }
        if inserted > 0 && store.backend().is_timescale() {
            if let Some(t) = batch.observations.iter().map(|o| o.time).min() {
                store.note_written(t);
            }
        }
        Ok(WriteOutcome {
            inserted,
            duplicates: staged.saturating_sub(inserted),
            dead_letters: dead_letters_written,
            latest,
            unstorable: 0,
        })
    }

    /// Plain PostgreSQL: the monthly partitions the batch needs that this writer has
    /// not made yet (TimescaleDB makes its chunks itself).
    fn new_partitions(&self, batch: &WriteBatch) -> Vec<DateTime<Utc>> {
        if self.store.backend().is_timescale() {
            return Vec::new();
        }
        let set: HashSet<_> = batch
            .observations
            .iter()
            .map(|o| month_start(o.time))
            .collect();
        set.into_iter()
            .filter(|m| !self.partitions.contains(m))
            .collect()
    }
}

/// The batch's sensors as the registry knows them.
struct Registered<'b> {
    /// External id -> surrogate key, for the sensors whose kind matches.
    ids: HashMap<&'b str, i32>,
    /// External id -> why its readings are refused (another registered kind, not
    /// registered, past the sensor limit).
    refused: HashMap<&'b str, (RejectReason, String)>,
}

/// Registers new sensors and refreshes position and last seen of known ones.
/// Sorted by external id (BTreeMap) so concurrent hubs lock rows in one order.
async fn register_sensors<'b>(
    tx: &Transaction<'_>,
    batch: &'b WriteBatch,
    registration: Registration,
    max_sensors: u32,
) -> Result<Registered<'b>, StoreError> {
    let mut refused = admit_new_sensors(tx, batch, registration, max_sensors).await?;
    let n = batch.sensors.len();
    let mut ext = Vec::with_capacity(n);
    let mut kinds = Vec::with_capacity(n);
    let mut lons: Vec<Option<f64>> = Vec::with_capacity(n);
    let mut lats: Vec<Option<f64>> = Vec::with_capacity(n);
    let mut firsts = Vec::with_capacity(n);
    let mut lasts = Vec::with_capacity(n);
    let (mut fb_ext, mut fb_lons, mut fb_lats) = (Vec::new(), Vec::new(), Vec::new());
    for (id, s) in batch
        .sensors
        .iter()
        .filter(|(id, _)| !refused.contains_key(id.as_str()))
    {
        ext.push(id.as_str());
        kinds.push(s.kind.as_str());
        let own = s.location.filter(|_| !s.location_fallback);
        lons.push(own.map(|p| p.lon()));
        lats.push(own.map(|p| p.lat()));
        if let (Some(p), true) = (s.location, s.location_fallback) {
            fb_ext.push(id.as_str());
            fb_lons.push(p.lon());
            fb_lats.push(p.lat());
        }
        firsts.push(s.first);
        lasts.push(s.last);
    }
    let rows = tx
        .query(
            // A known sensor brings its own key: `INSERT ... ON CONFLICT` draws the
            // column's default for every row it tries, and drawing one per sensor per
            // batch ran the 32-bit key out in days (tests/ingest.rs, keys).
            "INSERT INTO sensors AS s (id, external_id, kind, lon, lat, first_seen, last_seen)
             OVERRIDING SYSTEM VALUE
             SELECT coalesce((SELECT k.id FROM sensors k WHERE k.external_id = i.ext),
                             nextval(pg_get_serial_sequence('sensors', 'id'))), i.*
             FROM unnest($1::text[], $2::text[], $3::float8[], $4::float8[], $5::timestamptz[], $6::timestamptz[])
                  AS i(ext, kind, lon, lat, first_seen, last_seen)
             ON CONFLICT (external_id) DO UPDATE SET
                 lon = coalesce(excluded.lon, s.lon),
                 lat = coalesce(excluded.lat, s.lat),
                 first_seen = least(s.first_seen, excluded.first_seen),
                 last_seen = greatest(s.last_seen, excluded.last_seen),
                 updated_at = CASE WHEN excluded.lon IS DISTINCT FROM NULL AND
                     (excluded.lon, excluded.lat) IS DISTINCT FROM (s.lon, s.lat) THEN now() ELSE s.updated_at END
             WHERE s.kind = excluded.kind
             RETURNING id, external_id",
            &[&ext, &kinds, &lons, &lats, &firsts, &lasts],
        )
        .await?;
    if !fb_ext.is_empty() {
        // Hints (gateway positions) only place sensors that have no position yet.
        tx.execute(
            "UPDATE sensors AS s SET lon = f.lon, lat = f.lat
             FROM unnest($1::text[], $2::float8[], $3::float8[]) AS f(external_id, lon, lat)
             WHERE s.external_id = f.external_id AND s.lon IS NULL",
            &[&fb_ext, &fb_lons, &fb_lats],
        )
        .await?;
    }
    let mut ids: HashMap<&str, i32> = HashMap::with_capacity(rows.len());
    for r in &rows {
        let e: &str = r.get(1);
        if let Some((k, _)) = batch.sensors.get_key_value(e) {
            ids.insert(k.as_str(), r.get(0));
        }
    }
    // Sensors whose registered kind differs from the topic's: their rows become dead letters.
    if ids.len() < ext.len() {
        let missing: Vec<&str> = ext
            .iter()
            .copied()
            .filter(|e| !ids.contains_key(e))
            .collect();
        for r in tx
            .query(
                "SELECT external_id, kind FROM sensors WHERE external_id = ANY($1)",
                &[&missing],
            )
            .await?
        {
            let e: String = r.get(0);
            let kind: String = r.get(1);
            if let Some((k, seen)) = batch.sensors.get_key_value(e.as_str()) {
                let why = format!(
                    "sensor {e:?} is registered as kind {kind:?}, not {:?}",
                    seen.kind.as_str()
                );
                refused.insert(k.as_str(), (RejectReason::KindMismatch, why));
            }
        }
    }
    Ok(Registered { ids, refused })
}

/// The batch's sensors that may not be registered: all new ones when registration is
/// `known`, those past `max_sensors` otherwise.
async fn admit_new_sensors<'b>(
    tx: &Transaction<'_>,
    batch: &'b WriteBatch,
    registration: Registration,
    max_sensors: u32,
) -> Result<HashMap<&'b str, (RejectReason, String)>, StoreError> {
    let mut refused = HashMap::new();
    if registration == Registration::Open && max_sensors == 0 {
        return Ok(refused);
    }
    if registration == Registration::Open {
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&REGISTRATION_LOCK])
            .await?;
    }
    let ext: Vec<&str> = batch.sensors.keys().map(|k| k.as_str()).collect();
    let known: HashSet<String> = tx
        .query(
            "SELECT external_id FROM sensors WHERE external_id = ANY($1)",
            &[&ext],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let new: Vec<&str> = ext.into_iter().filter(|e| !known.contains(*e)).collect();
    if new.is_empty() {
        return Ok(refused);
    }
    let room = if registration == Registration::Known {
        0
    } else {
        let count: i64 = tx
            .query_one("SELECT count(*) FROM sensors", &[])
            .await?
            .get(0);
        usize::try_from(i64::from(max_sensors) - count).unwrap_or(0)
    };
    for e in new.into_iter().skip(room) {
        let refusal = if registration == Registration::Known {
            (
                RejectReason::UnregisteredSensor,
                format!("sensor {e:?} is not registered (ingest.registration = \"known\")"),
            )
        } else {
            (
                RejectReason::SensorLimit,
                format!("sensor {e:?} would pass ingest.max_sensors = {max_sensors}"),
            )
        };
        refused.insert(e, refusal);
    }
    Ok(refused)
}

/// The observations of registered sensors, by binary COPY into the staging table;
/// with `rollups`, also their hourly partial aggregates (see [`write_deltas`]).
async fn stage_observations(
    tx: &Transaction<'_>,
    batch: &WriteBatch,
    ids: &HashMap<&str, i32>,
    rollups: bool,
) -> Result<(u64, Deltas), StoreError> {
    let sink = tx
        .copy_in("COPY obs_staging_v2 (sensor_id, metric_id, time, value, value_milli) FROM STDIN BINARY")
        .await?;
    let writer = BinaryCopyInWriter::new(
        sink,
        &[
            Type::INT4,
            Type::INT2,
            Type::TIMESTAMPTZ,
            Type::FLOAT8,
            Type::INT8,
        ],
    );
    pin_mut!(writer);
    // In the unique index's order: the insert that reads them back then walks the
    // index from one leaf page to the next instead of jumping between a batch's
    // thousands of (sensor, metric) pairs.
    let mut rows: Vec<(i32, i16, DateTime<Utc>, f64)> = batch
        .observations
        .iter()
        .filter_map(|o| Some((*ids.get(o.sensor.as_str())?, o.metric_id, o.time, o.value)))
        .collect();
    rows.sort_unstable_by_key(|r| (r.0, r.1, r.2));
    let mut deltas = Deltas::default();
    for (id, metric, time, value) in &rows {
        writer
            .as_mut()
            .write(&[id, metric, time, value, &milli(*value)])
            .await?;
        if rollups {
            deltas.add(*id, *metric, *time, *value);
        }
    }
    writer.finish().await?;
    Ok((rows.len() as u64, deltas))
}

/// Hourly partial aggregates of a batch's readings, by (hour, sensor, metric).
#[derive(Default)]
struct Deltas(HashMap<(i64, i32, i16), Partial>);

struct Partial {
    count: i64,
    sum: f64,
    min: f64,
    max: f64,
    last: f64,
    last_time: DateTime<Utc>,
}

impl Deltas {
    fn add(&mut self, sensor: i32, metric: i16, time: DateTime<Utc>, v: f64) {
        let hour = time.timestamp().div_euclid(3600) * 3600;
        self.0
            .entry((hour, sensor, metric))
            .and_modify(|p| {
                p.count += 1;
                p.sum += v;
                p.min = p.min.min(v);
                p.max = p.max.max(v);
                if time >= p.last_time {
                    (p.last, p.last_time) = (v, time);
                }
            })
            .or_insert(Partial {
                count: 1,
                sum: v,
                min: v,
                max: v,
                last: v,
                last_time: time,
            });
    }
}

/// The staged readings this transaction inserted (not those already stored), found
/// by their `xmin`, with the value decoded as the `observations` view does.
const INSERTED_HERE: &str = "(SELECT o.time, o.sensor_id, o.metric_id,
        coalesce(o.value, o.value_milli::float8 / 1000) AS value
    FROM (SELECT DISTINCT sensor_id, metric_id, time FROM obs_staging_v2) s
    JOIN observations_data o USING (sensor_id, metric_id, time)
    WHERE o.xmin = pg_current_xact_id()::xid)";

/// Marks the UTC dates of the batch's readings older than
/// [`crate::indicators::MARKED_AFTER`]: the indicators may have materialized the days
/// around them (migration 0018), and a request must not read those rows until they
/// are computed again. In the readings' transaction, so no request sees the one
/// without the other; readings as they happen mark nothing.
async fn mark_indicator_days(tx: &Transaction<'_>, batch: &WriteBatch) -> Result<(), StoreError> {
    let old = Utc::now() - crate::indicators::MARKED_AFTER;
    let days: BTreeSet<chrono::NaiveDate> = batch
        .observations
        .iter()
        .filter(|o| o.time < old)
        .map(|o| o.time.date_naive())
        .collect();
    if days.is_empty() {
        return Ok(());
    }
    // In date order, so concurrent writers lock the marks in one order.
    let days: Vec<chrono::NaiveDate> = days.into_iter().collect();
    tx.execute(
        "INSERT INTO indicator_dirty (day, gen)
         SELECT d, nextval('indicator_dirty_gen') FROM unnest($1::date[]) AS d ORDER BY d
         ON CONFLICT (day) DO UPDATE SET gen = excluded.gen",
        &[&days],
    )
    .await?;
    Ok(())
}

/// Plain PostgreSQL: the batch's new rows into `rollup_delta` (migration 0006 says
/// why). When every staged row was inserted (`all_new`), the deltas computed while
/// staging are copied in, plus SQL's for the derived rows; otherwise (redeliveries, a
/// reading twice in one batch) they are computed from the rows this transaction
/// inserted, found by their `xmin`.
async fn write_deltas(
    tx: &Transaction<'_>,
    deltas: Deltas,
    derived: u64,
    all_new: bool,
) -> Result<(), StoreError> {
    const AGG: &str = "date_trunc('hour', time, 'UTC'), sensor_id, metric_id, count(*), sum(value),
        min(value), max(value), (array_agg(value ORDER BY time DESC))[1], max(time)";
    if !all_new {
        tx.execute(
            &format!(
                "INSERT INTO rollup_delta SELECT {AGG}
                 FROM {INSERTED_HERE} n
                 GROUP BY 1, 2, 3"
            ),
            &[],
        )
        .await?;
        return Ok(());
    }
    if derived > 0 {
        tx.execute(
            &format!("INSERT INTO rollup_delta SELECT {AGG} FROM obs_staging_v2 WHERE derived GROUP BY 1, 2, 3"),
            &[],
        )
        .await?;
    }
    if deltas.0.is_empty() {
        return Ok(());
    }
    let sink = tx
        .copy_in("COPY rollup_delta (bucket, sensor_id, metric_id, count, sum, min, max, last, last_time) FROM STDIN BINARY")
        .await?;
    let writer = BinaryCopyInWriter::new(
        sink,
        &[
            Type::TIMESTAMPTZ,
            Type::INT4,
            Type::INT2,
            Type::INT8,
            Type::FLOAT8,
            Type::FLOAT8,
            Type::FLOAT8,
            Type::FLOAT8,
            Type::TIMESTAMPTZ,
        ],
    );
    pin_mut!(writer);
    for ((hour, sensor, metric), p) in &deltas.0 {
        let bucket = DateTime::from_timestamp(*hour, 0).unwrap_or_default();
        writer
            .as_mut()
            .write(&[
                &bucket,
                sensor,
                metric,
                &p.count,
                &p.sum,
                &p.min,
                &p.max,
                &p.last,
                &p.last_time,
            ])
            .await?;
    }
    writer.finish().await?;
    Ok(())
}

/// The batch's new readings, as one `sta_outbox` row of arrays, for the SensorThings
/// MQTT publisher. When every staged row was inserted (`all_new`) they are the staged
/// rows; otherwise those this transaction inserted, found by their `xmin`.
async fn write_sta_outbox(tx: &Transaction<'_>, all_new: bool) -> Result<(), StoreError> {
    const AGG: &str = "INSERT INTO sta_outbox (sensor_ids, metric_ids, times, vals)
         SELECT array_agg(sensor_id), array_agg(metric_id), array_agg(time), array_agg(value)";
    let sql = if all_new {
        format!("{AGG} FROM obs_staging_v2 HAVING count(*) > 0")
    } else {
        format!("{AGG} FROM {INSERTED_HERE} n HAVING count(*) > 0")
    };
    tx.execute(&sql, &[]).await?;
    Ok(())
}

/// The (sensor, metric) pairs this batch stored, for the NGSI-LD subscriptions.
async fn write_ngsi_changes(tx: &Transaction<'_>, all_new: bool) -> Result<(), StoreError> {
    let from = if all_new {
        "obs_staging_v2"
    } else {
        INSERTED_HERE
    };
    tx.execute(
        &format!(
            "INSERT INTO ngsi_changes (sensor_ids, metric_ids)
             SELECT array_agg(sensor_id), array_agg(metric_id)
             FROM (SELECT DISTINCT sensor_id, metric_id FROM {from} n) d HAVING count(*) > 0"
        ),
        &[],
    )
    .await?;
    Ok(())
}

/// Derived metrics (a bin's fill level from its distance and registered depth),
/// staged beside the readings they come from.
async fn stage_derived(tx: &Transaction<'_>, store: &Store) -> Result<u64, StoreError> {
    let mut staged = 0;
    for d in store.derived() {
        // Only attributes within the formula's range: one set by hand to 1e-305 would
        // overflow the division and refuse every batch with that sensor in it.
        let (lo, hi) = d.formula.property_range();
        staged += tx
            .execute(
                "INSERT INTO obs_staging_v2 (sensor_id, metric_id, time, value, value_milli, derived)
                 SELECT sensor_id, metric_id, time, value,
                        CASE WHEN abs(value) < 9e12 AND round(value * 1000) / 1000 = value
                                  AND NOT (value = 0 AND value::text LIKE '-%')
                             THEN round(value * 1000)::bigint END, true
                 FROM (SELECT st.sensor_id, $2::smallint AS metric_id, st.time,
                              greatest(0, least(100, 100 * (1 - st.value / (s.properties->>$3)::float8))) AS value
                       FROM obs_staging_v2 st JOIN sensors s ON s.id = st.sensor_id
                 WHERE st.metric_id = $1 AND jsonb_typeof(s.properties->$3) = 'number'
                   AND (s.properties->>$3)::float8 BETWEEN $4 AND $5) d",
                &[&d.from, &d.target, &d.property, &lo, &hi],
            )
            .await?;
    }
    Ok(staged)
}

/// Staged rows into `observations_data`; a redelivered row changes nothing. Returns
/// the new rows, each as thousandths or as its float (see [`milli`]).
///
/// A batch nearly always holds only new readings, so it is first inserted plainly
/// behind a savepoint: `ON CONFLICT` checks the unique index before each row and
/// confirms each insertion in the WAL, which made it the write's costliest step
/// (5.2 against 3.1 µs a row alone, `bench/cpu-split`). When a reading is already
/// stored (a redelivery, or another hub storing the same message now), the savepoint
/// is rolled back and released, and the batch is inserted with `ON CONFLICT` in the
/// transaction itself, where [`INSERTED_HERE`] finds its rows by their `xmin`.
async fn insert_observations(tx: &Transaction<'_>) -> Result<u64, StoreError> {
    const INSERT: &str = "INSERT INTO observations_data (time, sensor_id, metric_id, value, value_milli)
         SELECT time, sensor_id, metric_id, CASE WHEN value_milli IS NULL THEN value END, value_milli
         FROM obs_staging_v2";
    tx.batch_execute("SAVEPOINT plain_insert").await?;
    match tx.execute(INSERT, &[]).await {
        Ok(n) => {
            tx.batch_execute("RELEASE SAVEPOINT plain_insert").await?;
            Ok(n)
        }
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
            tx.batch_execute("ROLLBACK TO SAVEPOINT plain_insert; RELEASE SAVEPOINT plain_insert")
                .await?;
            Ok(tx
                .execute(
                    &format!("{INSERT} ON CONFLICT (sensor_id, metric_id, time) DO NOTHING"),
                    &[],
                )
                .await?)
        }
        Err(e) => Err(e.into()),
    }
}

/// Advances `latest` to the newest staged value per sensor and metric; returns the
/// advanced rows when `report` (a live subscriber listens), none otherwise.
async fn upsert_latest(
    tx: &Transaction<'_>,
    batch: &WriteBatch,
    ids: &HashMap<&str, i32>,
    report: bool,
) -> Result<Vec<LatestChange>, StoreError> {
    const UPSERT_LATEST: &str = "INSERT INTO latest AS l (sensor_id, metric_id, time, value)
         SELECT DISTINCT ON (sensor_id, metric_id) sensor_id, metric_id, time, value
         FROM obs_staging_v2 ORDER BY sensor_id, metric_id, time DESC
         ON CONFLICT (sensor_id, metric_id) DO UPDATE SET time = excluded.time, value = excluded.value
         WHERE excluded.time > l.time";
    if !report {
        tx.execute(UPSERT_LATEST, &[]).await?;
        return Ok(Vec::new());
    }
    let advanced = tx
        .query(
            &format!("{UPSERT_LATEST} RETURNING sensor_id, metric_id, time, value"),
            &[],
        )
        .await?;
    let by_pk: HashMap<i32, &str> = ids.iter().map(|(e, pk)| (*pk, *e)).collect();
    let mut latest = Vec::with_capacity(advanced.len());
    for r in &advanced {
        let pk: i32 = r.get(0);
        let Some((id, seen)) = by_pk.get(&pk).and_then(|e| batch.sensors.get_key_value(*e)) else {
            continue;
        };
        latest.push(LatestChange {
            sensor: id.clone(),
            kind: seen.kind.clone(),
            metric_id: r.get(1),
            time: r.get(2),
            value: r.get(3),
        });
    }
    Ok(latest)
}

/// The dead letters found while decoding, plus kind conflicts found while
/// registering, each with its message's topic and payload. Returns counts by reason.
/// The bytes of an oversize payload its dead letter keeps (16 KiB of each 1 MB upload
/// was 69 GB a day per address at the default rate limit).
pub const OVERSIZE_PREFIX_BYTES: usize = 256;

async fn write_dead_letters(
    tx: &Transaction<'_>,
    batch: &WriteBatch,
    refused: &HashMap<&str, (RejectReason, String)>,
    max_payload: usize,
) -> Result<Vec<(RejectReason, u64)>, StoreError> {
    let mut dl: Vec<DeadLetter> = batch.dead_letters.clone();
    // Every message with readings of a refused sensor, not only the one that
    // introduced the sensor to the batch.
    let mut sources: BTreeSet<(u32, &str)> = BTreeSet::new();
    for o in &batch.observations {
        if refused.contains_key(o.sensor.as_str()) {
            sources.insert((o.source, o.sensor.as_str()));
        }
    }
    for sensor in refused.keys() {
        if let Some(seen) = batch.sensors.get(*sensor) {
            sources.insert((seen.source, sensor));
        }
    }
    for (source, sensor) in sources {
        let (code, reason) = &refused[sensor];
        dl.push(DeadLetter::new(source, *code, reason.clone(), usize::MAX));
    }
    if dl.is_empty() {
        return Ok(Vec::new());
    }
    let mut counts: BTreeMap<RejectReason, u64> = BTreeMap::new();
    let mut at = Vec::with_capacity(dl.len());
    let mut topics = Vec::with_capacity(dl.len());
    let mut payloads = Vec::with_capacity(dl.len());
    let mut codes = Vec::with_capacity(dl.len());
    let mut reasons = Vec::with_capacity(dl.len());
    let mut payload_bytes = Vec::with_capacity(dl.len());
    let mut reason_bytes = Vec::with_capacity(dl.len());
    let mut topic_bytes = Vec::with_capacity(dl.len());
    for d in &dl {
        let s = &batch.sources[d.source as usize];
        at.push(s.received_at);
        topics.push(truncate(
            s.topic.replace('\0', "\u{FFFD}"),
            DEAD_LETTER_TOPIC_BYTES,
        ));
        topic_bytes.push(i32::try_from(s.topic.len()).unwrap_or(i32::MAX));
        // An oversize payload is not worth keeping whole: its first bytes say what it was.
        let keep = if d.code == RejectReason::Oversize {
            max_payload.min(OVERSIZE_PREFIX_BYTES)
        } else {
            max_payload
        };
        payloads.push(&s.payload[..s.payload.len().min(keep)]);
        payload_bytes.push(i32::try_from(s.payload.len()).unwrap_or(i32::MAX));
        codes.push(d.code.code());
        reasons.push(d.reason.replace('\0', "\u{FFFD}"));
        reason_bytes.push(i32::try_from(d.reason_bytes).unwrap_or(i32::MAX));
        *counts.entry(d.code).or_default() += 1;
    }
    // A batch retried after an unknown commit outcome writes no dead letter twice.
    tx.execute(
        "INSERT INTO dead_letters (received_at, topic, payload, reason_code, reason, payload_bytes, reason_bytes, topic_bytes)
         SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::bytea[], $4::text[], $5::text[], $6::int[], $7::int[], $8::int[])
         ON CONFLICT (received_at, md5(topic), reason_code, md5(reason), md5(payload)) DO NOTHING",
        &[&at, &topics, &payloads, &codes, &reasons, &payload_bytes, &reason_bytes, &topic_bytes],
    )
    .await?;
    Ok(counts.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousandths_only_when_they_give_the_float_back() {
        assert_eq!(milli(21.375), Some(21_375));
        assert_eq!(milli(-3.5), Some(-3_500));
        assert_eq!(milli(0.0), Some(0));
        assert_eq!(milli(-0.0), None);
        assert_eq!(milli(0.1 + 0.2), None);
        assert_eq!(milli(1.0005), None);
        assert_eq!(milli(9e12), None);
        assert_eq!(milli(f64::NAN), None);
        for v in [0.001, 12.345, 99.999, 1e9 + 0.125, -8.6e11] {
            let m = milli(v).unwrap();
            assert_eq!((m as f64 / 1000.0).to_bits(), v.to_bits(), "{v}");
        }
    }

    #[test]
    fn truncate_keeps_whole_characters_and_marks_the_cut() {
        assert_eq!(truncate("short".into(), 10), "short");
        let cut = truncate("àèìòù àèìòù".into(), 8);
        assert!(cut.len() <= 8 && cut.ends_with('…'), "{cut:?}");
        assert!(cut.starts_with('à'));
    }

    #[test]
    fn a_slice_of_sources_takes_their_rows_dead_letters_and_sensors() {
        let t = Utc::now();
        let id = |s: &str| SensorId::parse(s).unwrap();
        let kind = Name::parse("waste_bin").unwrap();
        let mut b = WriteBatch::default();
        for (i, s) in ["a", "b", "c"].iter().enumerate() {
            b.sources.push(Source {
                topic: format!("t/{s}"),
                payload: Bytes::from_static(b"{}"),
                received_at: t,
            });
            b.observations.push(Observation {
                sensor: id(s),
                metric_id: 1,
                time: t,
                value: i as f64,
                source: i as u32,
            });
            b.see_sensor(&id(s), &kind, None, t, i as u32);
        }
        b.dead_letters
            .push(DeadLetter::new(1, RejectReason::OutOfRange, "x".into(), 64));
        let tail = b.sources_in(1..3);
        assert_eq!(tail.sources.len(), 2);
        assert_eq!(tail.sources[0].topic, "t/b");
        let values: Vec<(u32, f64)> = tail
            .observations
            .iter()
            .map(|o| (o.source, o.value))
            .collect();
        assert_eq!(values, [(0, 1.0), (1, 2.0)]);
        assert_eq!(tail.dead_letters.len(), 1);
        assert_eq!(tail.dead_letters[0].source, 0);
        assert_eq!(
            tail.sensors.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            ["b", "c"]
        );
        assert!(b.sources_in(0..1).dead_letters.is_empty());
    }
}
