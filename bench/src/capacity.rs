//! The inputs of the capacity model (docs/capacity.md): CPU per reading of the hub,
//! the broker and PostgreSQL at a steady rate below saturation (so the figure is
//! the cost of a reading, not of contention), then the API's queries per second per
//! core of CPU (the hub's and PostgreSQL's together), ingestion stopped.

use crate::setup::{hub, spec};
use anyhow::{bail, Result};
use cityhub_sim::load;
use cityhub_testkit::{cpu_seconds, Broker, TestDb};
use std::time::{Duration, Instant};

const SENSORS: u64 = 1_000;

pub struct Capacity {
    pub backend: String,
    pub rate: f64,
    pub rows_per_s: f64,
    /// µs of CPU per reading stored.
    pub hub_us: f64,
    pub broker_us: f64,
    pub postgres_us: f64,
    /// (what, requests answered per second of CPU, requests, clients).
    pub api: Vec<(&'static str, f64, u64, usize)>,
}

/// CPU seconds of PostgreSQL for database `db`: the backends serving it (their titles
/// name it) and the server's own writers, which work for whoever writes (WAL writer,
/// checkpointer, background writer, autovacuum, TimescaleDB's workers).
fn backends_cpu(db: &str) -> f64 {
    const SERVER: [&str; 5] = [
        "walwriter",
        "checkpointer",
        "background writer",
        "autovacuum",
        "TimescaleDB",
    ];
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let title = String::from_utf8_lossy(&c);
                title.starts_with("postgres: ")
                    && (title.split_whitespace().any(|w| w == db)
                        || SERVER.iter().any(|s| title.contains(s)))
            })
        })
        .map(cpu_seconds)
        .sum()
}

/// Ingests 3-metric messages from 1,000 bins at `rate` for `window`, then asks the
/// API from 4 clients for `window / 2`.
pub async fn measure(admin: &str, rate: f64, window: Duration) -> Result<Capacity> {
    let db = TestDb::on(admin).await;
    db.migrate().await?;
    let broker = Broker::start();
    let hub = hub(&db, &broker, &[("CITYHUB_HTTP_RATE_LIMIT_PER_S", "0")]).await;
    let url = broker.url();
    // Warm up for a few seconds (every bin registered), then measure.
    let warm = Duration::from_secs(5);
    let started = Instant::now();
    let publisher = tokio::spawn(async move {
        load::run(
            &url,
            &spec(
                u64::MAX / 4,
                SENSORS,
                3,
                Some(started + warm + window),
                Some(rate),
            ),
        )
        .await
    });
    tokio::time::sleep(warm).await;
    let rows0 = db.observations().await;
    let cpu = || {
        (
            cpu_seconds(hub.pid()),
            cpu_seconds(broker.pid()),
            backends_cpu(&db.name),
        )
    };
    let (h0, b0, p0) = cpu();
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let (h1, b1, p1) = cpu();
    let rows = (db.observations().await - rows0) as f64;
    let elapsed = t0.elapsed().as_secs_f64();
    let achieved = publisher.await??.messages_per_s;
    if rows <= 0.0 {
        bail!("nothing was stored while measuring");
    }
    let per_row = |a: f64, b: f64| (b - a) * 1e6 / rows;

    let base = hub.url("");
    let to = chrono::Utc::now();
    let from = to - chrono::Duration::days(30);
    let q = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let queries = [
        (
            "one bin's readings, 100 raw values",
            format!("{base}/api/v1/sensors/bin-000007/readings?metric=fill_level&limit=100&from={}&to={}", q(from), q(to)),
        ),
        (
            "one bin's 30 days in hourly buckets",
            format!("{base}/api/v1/sensors/bin-000007/readings?metric=fill_level&bucket=1h&from={}&to={}", q(from), q(to)),
        ),
        (
            "OGC API items, 100 bins",
            format!("{base}/ogc/collections/waste_bin/items?limit=100"),
        ),
    ];
    let clients = 4;
    let mut api = Vec::new();
    for (what, url) in queries {
        let http = reqwest::Client::new();
        let until = Instant::now() + window / 2;
        let (h0, p0) = (cpu_seconds(hub.pid()), backends_cpu(&db.name));
        let tasks: Vec<_> = (0..clients)
            .map(|_| {
                let (http, url) = (http.clone(), url.clone());
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while Instant::now() < until {
                        http.get(&url)
                            .send()
                            .await?
                            .error_for_status()?
                            .bytes()
                            .await?;
                        n += 1;
                    }
                    anyhow::Ok(n)
                })
            })
            .collect();
        let mut n = 0;
        for t in tasks {
            n += t.await??;
        }
        let cpu = cpu_seconds(hub.pid()) - h0 + backends_cpu(&db.name) - p0;
        api.push((what, n as f64 / cpu.max(1e-3), n, clients));
    }
    let backend = crate::setup::backend(&db).await?;
    Ok(Capacity {
        backend,
        rate: achieved,
        rows_per_s: rows / elapsed,
        hub_us: per_row(h0, h1),
        broker_us: per_row(b0, b1),
        postgres_us: per_row(p0, p1),
        api,
    })
}
