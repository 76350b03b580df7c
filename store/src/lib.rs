//! Storage of cityhub: schema migrations for PostgreSQL with or without
//! TimescaleDB, the batch writer, sensor registry and import.

pub mod alerts;
pub mod db;
mod error;
pub mod indicators;
pub mod maintenance;
pub mod ngsi;
pub mod query;
pub mod reader;
pub mod replication;
pub mod rollups;
pub mod schema;
pub mod sensors;
pub mod sta;
pub mod trust;
pub mod writer;

pub use deadpool_postgres::{Object as PooledClient, PoolError};
pub use error::StoreError;
pub use schema::Backend;
pub use writer::{
    truncate, BatchWriter, Claim, DeadLetter, LatestChange, Observation, SensorSeen, Source,
    WriteBatch, WriteOutcome, WriterLimits,
};

use cityhub_core::{Catalog, Settings};
use deadpool_postgres::Pool;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// Latest values advanced by one committed batch, for live subscribers.
pub type LiveBatch = Arc<Vec<LatestChange>>;

/// One committed batch as a whole: every reading it carried (redeliveries too) in
/// message order, and the latest values it advanced (with derived metrics), for
/// subscribers that act on each reading (the alert engine).
#[derive(Debug, Default)]
pub struct Committed {
    pub readings: Vec<Observation>,
    pub latest: LiveBatch,
}

/// Where the writer tells what it committed: each channel is fed only while it
/// has receivers.
#[derive(Debug, Clone)]
pub struct Subscribers {
    pub live: tokio::sync::broadcast::Sender<LiveBatch>,
    pub committed: tokio::sync::broadcast::Sender<Arc<Committed>>,
}

/// Shared handle to the database: a pool, the backend in use and the ids of
/// the configured metrics. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
    /// Reads go to `database.read_url`'s standbys ([`Store::reader`]).
    on_standby: bool,
}

/// A derived metric resolved to metric ids (see `cityhub_core::DerivedDef`).
#[derive(Debug, Clone)]
pub struct Derived {
    pub from: i16,
    pub target: i16,
    pub property: String,
    pub formula: cityhub_core::Formula,
}

struct Inner {
    derived: Vec<Derived>,
    pool: Pool,
    /// Long downloads only (see `db::stream_pool`).
    streams: Pool,
    /// The standbys of `database.read_url`, when set.
    standbys: Option<replication::Standbys>,
    /// Readiness checks the database on this connection of its own, so a busy pool
    /// never reads as a database down.
    ping: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
    backend: Backend,
    /// kind -> metric -> id, looked up by `&str` on the hot path.
    metric_ids: HashMap<String, HashMap<String, i16>>,
    /// id -> (kind, metric), to name what `latest` and `observations` hold.
    metric_names: HashMap<i16, (String, String)>,
    retention_days: u32,
    database: cityhub_core::settings::DatabaseSettings,
    /// Earliest reading time (µs since the epoch) committed since the late-refresh
    /// task last looked; `i64::MAX` when none.
    earliest_written: AtomicI64,
    /// Sensors whose registry row or latest values this process changed since the
    /// listing snapshot last looked, and a counter of such changes (see [`Changes`]).
    changes: std::sync::Mutex<Changes>,
    changed: tokio::sync::Notify,
    /// Woken when a batch wrote to `sta_outbox`, so the publisher need not poll.
    outboxed: tokio::sync::Notify,
    /// Whether any NGSI-LD subscription exists, so batches record their changes.
    ngsi_subscribed: std::sync::atomic::AtomicBool,
    /// Woken when a batch wrote to `ngsi_changes`.
    ngsi_changed: tokio::sync::Notify,
}

/// What changed in the registry and `latest`, as this process committed it: the
/// listing snapshot refetches only these sensors.
#[derive(Debug, Default)]
pub struct Changes {
    /// Counts every note; a snapshot that has seen generation `g` is current until it moves.
    pub generation: u64,
    pub sensors: std::collections::HashSet<String>,
    /// When the oldest change not yet taken was noted.
    pub since: Option<std::time::Instant>,
}

impl Store {
    /// Connects, migrates the schema, and registers the catalogue's metrics.
    pub async fn open(settings: &Settings, catalog: &Catalog) -> Result<Self, StoreError> {
        let pool = db::pool(&settings.database)?;
        let mut client = pool.get().await?;
        // A migration may rewrite big tables: it is not held to the queries' timeout.
        client.batch_execute("SET statement_timeout = 0").await?;
        let backend = schema::migrate(&mut client, &settings.store).await?;
        client.batch_execute("RESET statement_timeout").await?;
        let metric_ids = sync_metrics(&client, catalog).await?;
        drop(client);
        let id = |k: &str, m: &str| metric_ids.get(k).and_then(|ms| ms.get(m)).copied();
        let mut derived = Vec::new();
        for k in catalog.iter() {
            for (target, d) in &k.def.derived {
                if let (Some(from), Some(target)) =
                    (id(k.name.as_str(), &d.from), id(k.name.as_str(), target))
                {
                    derived.push(Derived {
                        from,
                        target,
                        property: d.property.clone(),
                        formula: d.formula,
                    });
                }
            }
        }
        let metric_names = metric_ids
            .iter()
            .flat_map(|(k, ms)| ms.iter().map(move |(m, id)| (*id, (k.clone(), m.clone()))))
            .collect();
        Ok(Self {
            inner: Arc::new(Inner {
                metric_names,
                derived,
                pool,
                streams: db::stream_pool(&settings.database)?,
                standbys: db::standby_pools(&settings.database)?.map(|p| {
                    replication::Standbys::new(
                        p,
                        std::time::Duration::from_secs(settings.database.connect_timeout_s.max(5)),
                    )
                }),
                ping: tokio::sync::Mutex::new(None),
                backend,
                metric_ids,
                retention_days: settings.store.retention_days,
                database: settings.database.clone(),
                earliest_written: AtomicI64::new(i64::MAX),
                changes: Default::default(),
                changed: tokio::sync::Notify::new(),
                outboxed: tokio::sync::Notify::new(),
                ngsi_subscribed: Default::default(),
                ngsi_changed: tokio::sync::Notify::new(),
            }),
            on_standby: false,
        })
    }

    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// Derived metrics computed at commit time.
    pub fn derived(&self) -> &[Derived] {
        &self.inner.derived
    }

    pub fn backend(&self) -> &Backend {
        &self.inner.backend
    }

    /// The id of `kind.metric`, when both are configured.
    pub fn metric_id(&self, kind: &str, metric: &str) -> Option<i16> {
        self.inner.metric_ids.get(kind)?.get(metric).copied()
    }

    /// The kind and name of metric `id`.
    pub fn metric_name(&self, id: i16) -> Option<(&str, &str)> {
        self.inner
            .metric_names
            .get(&id)
            .map(|(k, m)| (k.as_str(), m.as_str()))
    }

    /// A connection outside the pool (see [`db::connect`]).
    pub async fn connect(&self) -> Result<tokio_postgres::Client, StoreError> {
        db::connect(&self.inner.database).await
    }

    /// Records that readings from `earliest` on were committed (TimescaleDB: the
    /// late-refresh task refreshes aggregate buckets below the watermark).
    pub fn note_written(&self, earliest: chrono::DateTime<chrono::Utc>) {
        self.inner
            .earliest_written
            .fetch_min(earliest.timestamp_micros(), Ordering::Relaxed);
    }

    /// The earliest reading time noted since the last call, and forgets it.
    pub fn take_written(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        let us = self
            .inner
            .earliest_written
            .swap(i64::MAX, Ordering::Relaxed);
        (us != i64::MAX)
            .then(|| chrono::DateTime::from_timestamp_micros(us))
            .flatten()
    }

    /// Whether batches record their changes for the NGSI-LD subscriptions.
    pub fn ngsi_subscribed(&self) -> bool {
        self.inner.ngsi_subscribed.load(Ordering::Relaxed)
    }

    /// Set when subscriptions are created, deleted or reloaded.
    pub fn set_ngsi_subscribed(&self, any: bool) {
        self.inner.ngsi_subscribed.store(any, Ordering::Relaxed);
    }

    /// Notes that a committed batch wrote to `ngsi_changes`.
    pub fn note_ngsi_changed(&self) {
        self.inner.ngsi_changed.notify_one();
    }

    /// Resolves after the next [`Store::note_ngsi_changed`].
    pub async fn ngsi_changed(&self) {
        self.inner.ngsi_changed.notified().await
    }

    /// Notes that a committed batch wrote to `sta_outbox`.
    pub fn note_outboxed(&self) {
        self.inner.outboxed.notify_one();
    }

    /// Resolves after the next [`Store::note_outboxed`] (or at once if one is pending).
    pub async fn outboxed(&self) {
        self.inner.outboxed.notified().await
    }

    /// Notes sensors whose registry row or latest values a committed transaction changed.
    pub fn note_changed<'a>(&self, sensors: impl IntoIterator<Item = &'a str>) {
        let mut c = self.inner.changes.lock().unwrap_or_else(|p| p.into_inner());
        let mut any = false;
        for s in sensors {
            any = true;
            if !c.sensors.contains(s) {
                c.sensors.insert(s.to_owned());
            }
        }
        if any {
            c.generation += 1;
            c.since.get_or_insert_with(std::time::Instant::now);
            drop(c);
            self.inner.changed.notify_one();
        }
    }

    /// The generation of the latest change noted.
    pub fn changes_seen(&self) -> u64 {
        self.inner
            .changes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .generation
    }

    /// The changes noted so far, forgetting the sensors (the generation stays).
    pub fn take_changes(&self) -> Changes {
        let mut c = self.inner.changes.lock().unwrap_or_else(|p| p.into_inner());
        Changes {
            generation: c.generation,
            sensors: std::mem::take(&mut c.sensors),
            since: c.since.take(),
        }
    }

    /// How long the oldest change not yet taken has waited, if any waits.
    pub fn changes_waiting(&self) -> Option<std::time::Duration> {
        self.inner
            .changes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .since
            .map(|t| t.elapsed())
    }

    /// Returns once a change is noted (at once if one was noted since the last call).
    pub async fn changed(&self) {
        self.inner.changed.notified().await
    }

    /// Is the database answering? Asked on a connection of its own, within the
    /// connect timeout.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let limit = std::time::Duration::from_secs(self.inner.database.connect_timeout_s.max(1));
        let mut slot = self.inner.ping.lock().await;
        let result = tokio::time::timeout(limit, async {
            if slot.as_ref().is_none_or(|c| c.is_closed()) {
                *slot = Some(db::connect(&self.inner.database).await?);
            }
            let c = slot.as_ref().expect("connected above");
            c.simple_query("SELECT 1").await?;
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap_or_else(|_| Err(StoreError::Timeout(limit.as_secs())));
        if result.is_err() {
            *slot = None; // a fresh session next time
        }
        result
    }

    /// Creates or updates a read-only role ([`reader::grant_reader`]); true when created.
    pub async fn grant_reader(
        &self,
        role: &str,
        statement_timeout_s: u32,
    ) -> Result<bool, StoreError> {
        let client = self.inner.pool.get().await?;
        reader::grant_reader(&**client, role, statement_timeout_s).await
    }

    /// Drops plain-PostgreSQL partitions past retention; a no-op on TimescaleDB,
    /// whose retention policy does this.
    pub async fn apply_retention(&self) -> Result<Vec<String>, StoreError> {
        if self.inner.backend.is_timescale() {
            return Ok(Vec::new());
        }
        let client = self.inner.pool.get().await?;
        schema::apply_retention(&**client, self.inner.retention_days).await
    }
}

/// Inserts configured metrics the table lacks, updates units, returns all ids.
async fn sync_metrics(
    client: &tokio_postgres::Client,
    catalog: &Catalog,
) -> Result<HashMap<String, HashMap<String, i16>>, StoreError> {
    let (mut kinds, mut names, mut units) = (Vec::new(), Vec::new(), Vec::new());
    for k in catalog.iter() {
        for m in k.metrics.values() {
            kinds.push(k.name.as_str());
            names.push(m.name.as_str());
            units.push(m.unit.as_str());
        }
    }
    client
        .execute(
            // A known metric keeps its key without drawing one (see the writer's sensors):
            // the 16-bit key ran out after about 2,000 opens of the store otherwise.
            "INSERT INTO metrics AS m (id, kind, name, unit) OVERRIDING SYSTEM VALUE
             SELECT coalesce((SELECT k.id FROM metrics k WHERE k.kind = i.kind AND k.name = i.name),
                             nextval(pg_get_serial_sequence('metrics', 'id'))), i.*
             FROM unnest($1::text[], $2::text[], $3::text[]) AS i(kind, name, unit)
             ON CONFLICT (kind, name) DO UPDATE SET unit = excluded.unit WHERE m.unit <> excluded.unit",
            &[&kinds, &names, &units],
        )
        .await?;
    let rows = client
        .query("SELECT id, kind, name FROM metrics", &[])
        .await?;
    let mut ids: HashMap<String, HashMap<String, i16>> = HashMap::new();
    for r in &rows {
        ids.entry(r.get(1)).or_default().insert(r.get(2), r.get(0));
    }
    Ok(ids)
}
