//! Versioned, embedded schema migrations for both backends, and the
//! housekeeping plain PostgreSQL needs that TimescaleDB does by itself
//! (time partitions, retention).

use crate::error::StoreError;
use chrono::{DateTime, Datelike, TimeZone, Utc};
use cityhub_core::settings::StoreSettings;
use cityhub_core::TimescaleMode;
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

/// One step of the schema: SQL run on both backends, then the backend's own part
/// (`{retention}` and `{compress_after}` there are interval literals from settings).
struct Migration {
    version: i32,
    name: &'static str,
    common: &'static str,
    plain: &'static str,
    timescale: &'static str,
}

/// `store/migrations/NNNN_name/{common,postgresql,timescaledb}.sql`, embedded in the binary.
macro_rules! migration {
    ($version:literal, $number:literal, $name:literal) => {
        Migration {
            version: $version,
            name: $name,
            common: include_str!(concat!(
                "../migrations/",
                $number,
                "_",
                $name,
                "/common.sql"
            )),
            plain: include_str!(concat!(
                "../migrations/",
                $number,
                "_",
                $name,
                "/postgresql.sql"
            )),
            timescale: include_str!(concat!(
                "../migrations/",
                $number,
                "_",
                $name,
                "/timescaledb.sql"
            )),
        }
    };
}

/// Applied in this order, each once, recorded in `schema_migrations`.
const MIGRATIONS: &[Migration] = &[
    migration!(1, "0001", "core"),
    // Since TimescaleDB 2.13 continuous aggregates default to materialized-only; the API
    // reads them for hourly and daily buckets and must see the last hours too.
    migration!(2, "0002", "realtime_aggregates"),
    migration!(3, "0003", "bounded_dead_letters"),
    migration!(4, "0004", "maintained_aggregates"),
    migration!(5, "0005", "integer_values"),
    migration!(6, "0006", "rollups"),
    migration!(7, "0007", "reader_views"),
    migration!(8, "0008", "alerts"),
    migration!(9, "0009", "dead_letter_keys"),
    migration!(10, "0010", "trust"),
    migration!(11, "0011", "device_certificates"),
    migration!(12, "0012", "sta_outbox"),
    migration!(13, "0013", "sensor_locations"),
    migration!(14, "0014", "ngsi_subscriptions"),
    migration!(15, "0015", "cheaper_writes"),
    migration!(16, "0016", "oldest_first_refresh"),
    migration!(17, "0017", "pending_delta_index"),
    migration!(18, "0018", "indicator_days"),
    migration!(19, "0019", "outbox_order"),
    migration!(20, "0020", "delta_statistics"),
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
        // Each migration is one transaction, so a lost race rolls it back whole.
        let mut backoff = cityhub_core::Backoff::new(100, 2000);
        let mut attempt = 0u32;
        loop {
            match apply(client, m, &specific).await {
                Ok(()) => break,
                Err(e) if e.is_concurrent_update() && attempt < 10 => {
                    attempt += 1;
                    tracing::info!(version = m.version, attempt, error = %e, "Schema migration raced another session; retrying.");
                    tokio::time::sleep(backoff.next_pause()).await;
                }
                Err(e) => return Err(e),
            }
        }
        tracing::info!(
            version = m.version,
            name = m.name,
            backend = backend.tag(),
            "Applied schema migration."
        );
    }
    Ok(backend)
}

async fn apply(
    client: &mut tokio_postgres::Client,
    m: &Migration,
    specific: &str,
) -> Result<(), StoreError> {
    let tx = client.transaction().await?;
    tx.batch_execute(m.common).await?;
    tx.batch_execute(specific).await?;
    tx.execute(
        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
        &[&m.version, &m.name],
    )
    .await?;
    tx.commit().await?;
    Ok(())
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
        "CREATE TABLE IF NOT EXISTS observations_p{} PARTITION OF observations_data FOR VALUES FROM ('{}') TO ('{}')",
        from.format("%Y%m"),
        from.to_rfc3339(),
        to.to_rfc3339()
    );
    c.batch_execute(&sql).await?;
    Ok(())
}

/// Plain PostgreSQL: drops monthly partitions wholly older than the retention window
/// and the rollup rows of those months (TimescaleDB runs its own retention policies).
/// Returns the partitions dropped.
pub async fn apply_retention<C: GenericClient>(
    c: &C,
    retention_days: u32,
) -> Result<Vec<String>, StoreError> {
    let cutoff = Utc::now() - chrono::Duration::days(i64::from(retention_days));
    let rows = c
        .query(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'observations_data'",
            &[],
        )
        .await?;
    let mut dropped = Vec::new();
    let mut kept_from: Option<DateTime<Utc>> = None;
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
            kept_from = kept_from.max(Some(next_month(start)));
        }
    }
    // The rollups keep what the raw readings keep, no more.
    if let Some(t) = kept_from {
        for table in ["obs_hourly_data", "obs_daily_data"] {
            c.execute(&format!("DELETE FROM {table} WHERE bucket < $1"), &[&t])
                .await?;
        }
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every folder in store/migrations is listed, in order, with its number.
    #[test]
    fn every_migration_folder_is_applied_in_order() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut folders: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        folders.sort();
        let listed: Vec<String> = MIGRATIONS
            .iter()
            .map(|m| format!("{:04}_{}", m.version, m.name))
            .collect();
        assert_eq!(folders, listed);
        assert!(MIGRATIONS
            .windows(2)
            .all(|w| w[0].version + 1 == w[1].version));
    }

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
