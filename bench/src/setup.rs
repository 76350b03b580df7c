//! What every measurement shares: a hub started quietly, the load's shape, the
//! partitions a write without the hub needs, and percentiles.

use anyhow::{bail, Context, Result};
use chrono::Utc;
use cityhub_sim::load::LoadSpec;
use cityhub_testkit::{hub_bin, unique, Broker, Hub, TestDb};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// A ready `cityhub serve` (the release build beside the bench) logging warnings only.
pub async fn hub(db: &TestDb, broker: &Broker, env: &[(&str, &str)]) -> Hub {
    let mut all = vec![("RUST_LOG", "warn")];
    all.extend_from_slice(env);
    Hub::start(db, broker, &unique("bench"), &all).await
}

/// The load publisher: 4 connections, each sensor reporting once per simulated second
/// from 20 days ago, `metrics` values per message.
pub fn spec(
    messages: u64,
    sensors: u64,
    metrics: u8,
    stop_at: Option<Instant>,
    rate: Option<f64>,
) -> LoadSpec {
    LoadSpec {
        messages,
        stop_at,
        rate,
        connections: 4,
        sensors,
        metrics,
        start: Utc::now() - chrono::Duration::days(20),
        step: chrono::Duration::seconds(1),
        window: 256,
    }
}

/// Plain PostgreSQL: the monthly partitions the load's times fall in (the hub makes
/// them on demand; the COPY ceiling and the baseline bridge need them made).
pub async fn ensure_partitions(c: &tokio_postgres::Client) -> Result<()> {
    let partitioned: bool = c
        .query_one("SELECT EXISTS (SELECT 1 FROM pg_partitioned_table p JOIN pg_class r ON r.oid = p.partrelid WHERE r.relname = 'observations_data')", &[])
        .await?
        .get(0);
    if !partitioned {
        return Ok(());
    }
    let now = Utc::now();
    for m in [now - chrono::Duration::days(21), now] {
        let start = chrono::NaiveDate::from_ymd_opt(
            chrono::Datelike::year(&m),
            chrono::Datelike::month(&m),
            1,
        )
        .unwrap();
        let end = start.checked_add_months(chrono::Months::new(1)).unwrap();
        c.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS observations_p{} PARTITION OF observations_data FOR VALUES FROM ('{start} 00:00:00+00') TO ('{end} 00:00:00+00')",
            start.format("%Y%m")
        ))
        .await?;
    }
    Ok(())
}

/// The backend the hub chose for `db` (`postgresql` or `timescaledb`).
pub async fn backend(db: &TestDb) -> Result<String> {
    Ok(db
        .client()
        .await
        .query_one("SELECT value FROM cityhub_meta WHERE key = 'backend'", &[])
        .await?
        .get(0))
}

/// p50, p99 and the number of samples.
pub fn percentiles(mut v: Vec<f64>) -> (f64, f64, usize) {
    v.sort_by(f64::total_cmp);
    let q = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    (q(0.5), q(0.99), v.len())
}

/// Runs the simulated Cremona fleet (`cityhub sim run` with `args`, and `config` as
/// its configuration file, else none) against `broker`, then waits up to `limit`
/// until the hub has stored every reading the simulator's report expects.
pub async fn simulate_fleet(
    db: &TestDb,
    broker: &Broker,
    args: &[&str],
    config: Option<&Path>,
    limit: Duration,
) -> Result<()> {
    let mut cmd = Command::new(hub_bin());
    cmd.args(["sim", "run", "--broker", &broker.url()])
        .args(args)
        .env("RUST_LOG", "warn");
    match config {
        Some(file) => cmd.env("CITYHUB_CONFIG", file),
        None => cmd.env_remove("CITYHUB_CONFIG"),
    };
    let out = cmd.output().context("running cityhub sim run")?;
    if !out.status.success() {
        bail!("sim run: {}", String::from_utf8_lossy(&out.stderr));
    }
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let expected = report["expected_rows"].as_i64().unwrap_or(0);
    let deadline = Instant::now() + limit;
    while db.observations().await < expected {
        if Instant::now() > deadline {
            bail!("the fleet's {expected} readings were not all stored");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}
