//! Versioned, embedded schema migrations for both backends, and the
//! housekeeping plain PostgreSQL needs that TimescaleDB does by itself
//! (time partitions, retention).

use crate::error::StoreError;
use chrono::{DateTime, Datelike, TimeZone, Utc};
use cityhub_config::settings::StoreSettings;
use cityhub_config::TimescaleMode;
use serde::Serialize;
use tokio_postgres::GenericClient;

/// Which storage engine the schema runs on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "name", rename_all = "lowercase")]
pub enum Backend {
    Timescaledb { version: String, postgres: String },
    Postgresql { postgres: String },
}

impl Backend {
    pub fn is_timescale(&self) -> bool {
        matches!(self, Backend::Timescaledb { .. })
    }
    fn tag(&self) -> &'static str {
        match self {
            Backend::Timescaledb { .. } => "timescaledb",
            Backend::Postgresql { .. } => "postgresql",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Timescaledb { version, postgres } => {
                write!(f, "TimescaleDB {version} on PostgreSQL {postgres}")
            }
            Backend::Postgresql { postgres } => write!(f, "PostgreSQL {postgres} (no TimescaleDB)"),
        }
    }
}

/// Arbitrary constant that serialises concurrent migrations of several hubs.
const MIGRATION_LOCK: i64 = 0x0063_6974_7968_7562;

struct Migration {
    version: i32,
    name: &'static str,
    /// Run on both backends.
    common: &'static str,
    /// Backend-specific part; `{retention}` and `{compress_after}` are interval literals.
    plain: &'static str,
    timescale: &'static str,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "core",
        common: r#"
CREATE TABLE sensors (
    id          integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    external_id text NOT NULL UNIQUE,
    kind        text NOT NULL,
    name        text,
    lon         double precision CHECK (lon BETWEEN -180 AND 180),
    lat         double precision CHECK (lat BETWEEN -90 AND 90),
    properties  jsonb NOT NULL DEFAULT '{}',
    first_seen  timestamptz,
    last_seen   timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CHECK ((lon IS NULL) = (lat IS NULL))
);
CREATE INDEX sensors_kind ON sensors (kind);

CREATE TABLE metrics (
    id    smallint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind  text NOT NULL,
    name  text NOT NULL,
    unit  text NOT NULL,
    UNIQUE (kind, name)
);

CREATE TABLE latest (
    sensor_id integer NOT NULL REFERENCES sensors (id) ON DELETE CASCADE,
    metric_id smallint NOT NULL REFERENCES metrics (id),
    time      timestamptz NOT NULL,
    value     double precision NOT NULL,
    PRIMARY KEY (sensor_id, metric_id)
);

CREATE TABLE dead_letters (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at timestamptz NOT NULL,
    topic       text NOT NULL,
    payload     bytea NOT NULL,
    reason_code text NOT NULL,
    reason      text NOT NULL
);
CREATE INDEX dead_letters_received ON dead_letters (received_at DESC);
"#,
        plain: r#"
CREATE TABLE observations (
    time      timestamptz NOT NULL,
    sensor_id integer NOT NULL,
    metric_id smallint NOT NULL,
    value     double precision NOT NULL,
    UNIQUE (sensor_id, metric_id, time)
) PARTITION BY RANGE (time);

CREATE VIEW obs_hourly AS
SELECT date_trunc('hour', time) AS bucket, sensor_id, metric_id,
       avg(value) AS avg, min(value) AS min, max(value) AS max, count(*) AS count,
       (array_agg(value ORDER BY time DESC))[1] AS last
FROM observations GROUP BY 1, 2, 3;

CREATE VIEW obs_daily AS
SELECT date_trunc('day', time) AS bucket, sensor_id, metric_id,
       avg(value) AS avg, min(value) AS min, max(value) AS max, count(*) AS count,
       (array_agg(value ORDER BY time DESC))[1] AS last
FROM observations GROUP BY 1, 2, 3;
"#,
        timescale: r#"
CREATE TABLE observations (
    time      timestamptz NOT NULL,
    sensor_id integer NOT NULL,
    metric_id smallint NOT NULL,
    value     double precision NOT NULL,
    UNIQUE (sensor_id, metric_id, time)
);
SELECT create_hypertable('observations', 'time', chunk_time_interval => INTERVAL '1 day');
ALTER TABLE observations SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'sensor_id, metric_id',
    timescaledb.compress_orderby = 'time DESC'
);
SELECT add_compression_policy('observations', {compress_after});
SELECT add_retention_policy('observations', {retention});

CREATE MATERIALIZED VIEW obs_hourly WITH (timescaledb.continuous) AS
SELECT time_bucket(INTERVAL '1 hour', time) AS bucket, sensor_id, metric_id,
       avg(value) AS avg, min(value) AS min, max(value) AS max, count(*) AS count,
       last(value, time) AS last
FROM observations GROUP BY 1, 2, 3 WITH NO DATA;
SELECT add_continuous_aggregate_policy('obs_hourly',
    start_offset => INTERVAL '3 days', end_offset => INTERVAL '1 hour', schedule_interval => INTERVAL '15 minutes');

CREATE MATERIALIZED VIEW obs_daily WITH (timescaledb.continuous) AS
SELECT time_bucket(INTERVAL '1 day', time) AS bucket, sensor_id, metric_id,
       avg(value) AS avg, min(value) AS min, max(value) AS max, count(*) AS count,
       last(value, time) AS last
FROM observations GROUP BY 1, 2, 3 WITH NO DATA;
SELECT add_continuous_aggregate_policy('obs_daily',
    start_offset => INTERVAL '7 days', end_offset => INTERVAL '1 day', schedule_interval => INTERVAL '1 hour');
SELECT add_retention_policy('obs_hourly', {retention});
SELECT add_retention_policy('obs_daily', {retention});
"#,
    },
    Migration {
        version: 2,
        name: "realtime_aggregates",
        common: "",
        plain: "",
        // Since TimescaleDB 2.13 continuous aggregates default to materialized-only; the API
        // reads them for hourly and daily buckets and must see the last hours too.
        timescale: r#"
ALTER MATERIALIZED VIEW obs_hourly SET (timescaledb.materialized_only = false);
ALTER MATERIALIZED VIEW obs_daily SET (timescaledb.materialized_only = false);
"#,
    },
];

/// The newest schema version this build knows.
pub fn latest_version() -> i32 {
    MIGRATIONS.iter().map(|m| m.version).max().unwrap_or(0)
}

async fn server_version<C: GenericClient>(c: &C) -> Result<String, StoreError> {
    Ok(c.query_one("SHOW server_version", &[]).await?.get(0))
}

/// What the server offers: TimescaleDB needs the extension installed and preloaded.
pub async fn detect<C: GenericClient>(c: &C) -> Result<Result<String, String>, StoreError> {
    let installed: Option<String> = c
        .query_opt(
            "SELECT installed_version FROM pg_available_extensions WHERE name = 'timescaledb'",
            &[],
        )
        .await?
        .map(|r| r.get::<_, Option<String>>(0).unwrap_or_default());
    let available: Option<String> = c
        .query_opt(
            "SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'",
            &[],
        )
        .await?
        .map(|r| r.get(0));
    let Some(default_version) = available else {
        return Ok(Err(
            "the timescaledb extension is not installed on the server".into(),
        ));
    };
    let preload: String = c
        .query_one("SELECT current_setting('shared_preload_libraries')", &[])
        .await?
        .get(0);
    if !preload.split(',').any(|l| l.trim() == "timescaledb") {
        return Ok(Err(
            "timescaledb is installed but not in shared_preload_libraries".into(),
        ));
    }
    Ok(Ok(installed
        .filter(|v| !v.is_empty())
        .unwrap_or(default_version)))
}

/// Brings the schema to the latest version (idempotent, safe to run from several hubs at once)
/// and returns the backend in use.
pub async fn migrate(
    client: &mut tokio_postgres::Client,
    settings: &StoreSettings,
) -> Result<Backend, StoreError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let result = migrate_locked(client, settings).await;
    // Unlock even on failure; a lost connection releases it anyway.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    result
}

async fn migrate_locked(
    client: &mut tokio_postgres::Client,
    settings: &StoreSettings,
) -> Result<Backend, StoreError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS cityhub_meta (key text PRIMARY KEY, value text NOT NULL);
             CREATE TABLE IF NOT EXISTS schema_migrations (
                 version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());",
        )
        .await?;
    let postgres = server_version(client).await?;
    let stored: Option<String> = client
        .query_opt("SELECT value FROM cityhub_meta WHERE key = 'backend'", &[])
        .await?
        .map(|r| r.get(0));
    let offered = detect(client).await?;
    let use_timescale = match (stored.as_deref(), settings.timescaledb, &offered) {
        (Some("timescaledb"), TimescaleMode::Off, _) => {
            return Err(StoreError::BackendMismatch {
                stored: "timescaledb".into(),
                wanted: "postgresql".into(),
            })
        }
        (Some("postgresql"), TimescaleMode::Require, _) => {
            return Err(StoreError::BackendMismatch {
                stored: "postgresql".into(),
                wanted: "timescaledb".into(),
            })
        }
        (Some("timescaledb"), _, Err(why)) => {
            return Err(StoreError::TimescaleMissing(why.clone()))
        }
        (Some(s), _, _) => s == "timescaledb",
        (None, TimescaleMode::Off, _) => false,
        (None, TimescaleMode::Require, Err(why)) => {
            return Err(StoreError::TimescaleMissing(why.clone()))
        }
        (None, _, o) => o.is_ok(),
    };
    let backend = if use_timescale {
        client
            .batch_execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
            .await?;
        let version: String = client
            .query_one(
                "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'",
                &[],
            )
            .await?
            .get(0);
        Backend::Timescaledb { version, postgres }
    } else {
        Backend::Postgresql { postgres }
    };
    if stored.is_none() {
        client
            .execute("INSERT INTO cityhub_meta (key, value) VALUES ('backend', $1) ON CONFLICT DO NOTHING", &[&backend.tag()])
            .await?;
    }

    let current: i32 = client
        .query_one(
            "SELECT coalesce(max(version), 0) FROM schema_migrations",
            &[],
        )
        .await?
        .get(0);
    if current > latest_version() {
        return Err(StoreError::SchemaTooNew {
            db: current,
            known: latest_version(),
        });
    }
    let retention = format!("INTERVAL '{} days'", settings.retention_days);
    let compress_after = format!("INTERVAL '{} days'", settings.compress_after_days);
    for m in MIGRATIONS.iter().filter(|m| m.version > current) {
        let specific = if use_timescale { m.timescale } else { m.plain };
        let specific = specific
            .replace("{retention}", &retention)
            .replace("{compress_after}", &compress_after);
        let tx = client.transaction().await?;
        tx.batch_execute(m.common).await?;
        tx.batch_execute(&specific).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[&m.version, &m.name],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(
            version = m.version,
            name = m.name,
            backend = backend.tag(),
            "Applied schema migration."
        );
    }
    Ok(backend)
}

/// Reads the backend a migrated database uses.
pub async fn backend<C: GenericClient>(c: &C) -> Result<Backend, StoreError> {
    let postgres = server_version(c).await?;
    let stored: Option<String> = c
        .query_opt("SELECT value FROM cityhub_meta WHERE key = 'backend'", &[])
        .await?
        .map(|r| r.get(0));
    if stored.as_deref() == Some("timescaledb") {
        let version: String = c
            .query_one(
                "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'",
                &[],
            )
            .await?
            .get(0);
        Ok(Backend::Timescaledb { version, postgres })
    } else {
        Ok(Backend::Postgresql { postgres })
    }
}

/// First instant of the UTC month holding `t`.
pub fn month_start(t: DateTime<Utc>) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(t.year(), t.month(), 1, 0, 0, 0)
        .single()
        .expect("first of month exists")
}

fn next_month(t: DateTime<Utc>) -> DateTime<Utc> {
    let (y, m) = if t.month() == 12 {
        (t.year() + 1, 1)
    } else {
        (t.year(), t.month() + 1)
    };
    Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0)
        .single()
        .expect("first of month exists")
}

/// Plain PostgreSQL: creates the monthly partition holding `month` if it is missing.
pub async fn ensure_partition<C: GenericClient>(
    c: &C,
    month: DateTime<Utc>,
) -> Result<(), StoreError> {
    let from = month_start(month);
    let to = next_month(from);
    let sql = format!(
        "CREATE TABLE IF NOT EXISTS observations_p{} PARTITION OF observations FOR VALUES FROM ('{}') TO ('{}')",
        from.format("%Y%m"),
        from.to_rfc3339(),
        to.to_rfc3339()
    );
    c.batch_execute(&sql).await?;
    Ok(())
}

/// Plain PostgreSQL: drops monthly partitions wholly older than the retention window
/// (TimescaleDB runs its own retention policy). Returns the partitions dropped.
pub async fn apply_retention<C: GenericClient>(
    c: &C,
    retention_days: u32,
) -> Result<Vec<String>, StoreError> {
    let cutoff = Utc::now() - chrono::Duration::days(i64::from(retention_days));
    let rows = c
        .query(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'observations'",
            &[],
        )
        .await?;
    let mut dropped = Vec::new();
    for r in rows {
        let name: String = r.get(0);
        let Some(ym) = name.strip_prefix("observations_p") else {
            continue;
        };
        let (Ok(y), Ok(m)) = (
            ym.get(..4).unwrap_or("").parse::<i32>(),
            ym.get(4..).unwrap_or("").parse::<u32>(),
        ) else {
            continue;
        };
        let Some(start) = Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0).single() else {
            continue;
        };
        if next_month(start) <= cutoff {
            c.batch_execute(&format!("DROP TABLE IF EXISTS {name}"))
                .await?;
            dropped.push(name);
        }
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months() {
        let t = Utc.with_ymd_and_hms(2026, 12, 31, 23, 59, 59).unwrap();
        assert_eq!(
            month_start(t),
            Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap()
        );
        assert_eq!(
            next_month(month_start(t)),
            Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap()
        );
    }
}
