//! Each indicator over a long range of a simulated fleet: the city's rows by month
//! through the API (`GET /api/v1/indicators/{id}`, answer cache off), which reads the
//! days the hub has materialized and computes the last few from the readings,
//! against the indicator's base query over the whole range from the readings, run
//! directly on the same database (`cityhub_store::indicators::base_rows`: the SQL and
//! parameters a request without materialized days runs).
//!
//! The fleet is simulated through the hub (`cityhub sim run`, as fast as the broker
//! takes it). A year of every sensor at its configured cadence is more than this
//! machine ingests in a bench run, so the bins, lamps and bicycle counters report
//! every `sparse_s` here; the air-quality stations keep an hourly cadence so their
//! daily means are valid days. A history stored at once raises thousands of alerts;
//! their MQTT notifications are off here, so their delivery does not share the
//! machine with the requests measured.

use crate::setup::{hub, percentiles};
use anyhow::{bail, Result};
use chrono::{Datelike, Utc};
use cityhub_core::indicators::{Period, INDICATORS};
use cityhub_core::Settings;
use cityhub_store::indicators::{base_rows, reads, IndicatorQuery};
use cityhub_testkit::{Broker, TestDb};
use std::time::{Duration, Instant};

/// Requests per indicator, each way.
const REPEAT: usize = 5;

pub struct IndicatorCost {
    pub id: &'static str,
    /// Base rows the query gives (one per sensor and day).
    pub base_rows: u64,
    pub api_ms: (f64, f64, usize),
    pub sql_ms: (f64, f64, usize),
    /// The two reads of a request, each alone (`cityhub_store::indicators::reads`):
    /// the materialized rows, and the days computed from the readings; `None` when
    /// the request read no materialized day.
    pub reads: Option<Reads>,
}

/// Where a request's time goes: its two reads timed alone.
pub struct Reads {
    pub materialized_rows: u64,
    pub materialized_ms: (f64, f64, usize),
    pub live_rows: u64,
    pub live_ms: (f64, f64, usize),
}

pub struct Indicators {
    pub backend: String,
    pub sensors: i64,
    pub readings: i64,
    pub sparse_s: u32,
    pub ingest_s: f64,
    /// From the last reading stored to every settled day materialized.
    pub materialize_s: f64,
    /// Materialized base rows, over every indicator.
    pub materialized_rows: i64,
    pub costs: Vec<IndicatorCost>,
}

pub async fn indicators(admin: &str, fleet: &str, days: u32, sparse_s: u32) -> Result<Indicators> {
    let db = TestDb::on(admin).await;
    let broker = Broker::start();
    let config = std::env::temp_dir().join(format!("cityhub_bench_indicators_{}.toml", db.name));
    std::fs::write(
        &config,
        format!(
            "[kinds.waste_bin]\ncadence_s = {sparse_s}\n[kinds.streetlight]\ncadence_s = {sparse_s}\n\
             [kinds.bike_counter]\ncadence_s = {sparse_s}\n[kinds.air_quality]\ncadence_s = 3600\n\
             [notify]\nmqtt = false\n"
        ),
    )?;
    let config_s = config.to_string_lossy().into_owned();
    let hub = hub(
        &db,
        &broker,
        &[
            ("CITYHUB_CONFIG", &config_s),
            ("CITYHUB_HTTP_RATE_LIMIT_PER_S", "0"),
            ("CITYHUB_INDICATORS_CACHE_S", "0"),
        ],
    )
    .await;
    let started = Instant::now();
    crate::setup::simulate_fleet(
        &db,
        &broker,
        &[
            "--fleet",
            fleet,
            &format!("--start=-{days}d"),
            "--duration",
            &format!("{days}d"),
            "--speedup",
            "inf",
        ],
        Some(&config),
        Duration::from_secs(1800),
    )
    .await?;
    let ingest_s = started.elapsed().as_secs_f64();
    // Every settled day materialized, every late reading's mark handled.
    let started = Instant::now();
    let settled = "SELECT CASE WHEN count(*) >= 7
                     AND bool_and(coalesce(to_day >= current_date - 6, false))
                     AND NOT EXISTS (SELECT FROM indicator_dirty) THEN 1::bigint ELSE 0 END
                   FROM indicator_bases";
    while db.count(settled).await < 1 {
        if started.elapsed() > Duration::from_secs(1800) {
            bail!("the indicator days were not materialized within 30 minutes");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let materialize_s = started.elapsed().as_secs_f64();
    let c = db.client().await;
    // As a city's database is between autovacuum runs: its statistics current.
    c.batch_execute("VACUUM ANALYZE").await?;
    let backend = crate::setup::backend(&db).await?;
    if backend == "timescaledb" {
        cityhub_testkit::wait_for_aggregates(&db, 600).await;
    }

    let settings =
        Settings::load_with_vars(Some(&config), [("CITYHUB_DATABASE_URL", db.url.as_str())])?;
    let catalog = settings.catalog()?;
    let store = cityhub_store::Store::open(&settings, &catalog).await?;
    let tz = settings.indicators.tz().map_err(anyhow::Error::msg)?;
    let today = Utc::now().with_timezone(&tz).date_naive();
    let q = IndicatorQuery {
        sensors: None,
        from: (today - chrono::Duration::days(i64::from(days)))
            .with_day(1)
            .unwrap_or(today),
        to: today.with_day(1).unwrap_or(today) + chrono::Months::new(1),
        period: Period::Month,
        by_stream: false,
    };
    let http = reqwest::Client::new();
    let mut costs = Vec::new();
    for ind in INDICATORS {
        if catalog.get(ind.kind).is_none() {
            continue;
        }
        let url = hub.url(&format!(
            "/api/v1/indicators/{}?period=month&from={}&to={}",
            ind.id, q.from, q.to
        ));
        let (mut api, mut sql, mut rows) = (Vec::new(), Vec::new(), 0);
        let (mut mat, mut live, mut parts) = (Vec::new(), Vec::new(), None);
        for _ in 0..REPEAT {
            let t = Instant::now();
            let r = http.get(&url).send().await?;
            let status = r.status();
            let body = r.bytes().await?;
            if !status.is_success() {
                bail!("{url}: {status} {}", String::from_utf8_lossy(&body));
            }
            api.push(t.elapsed().as_secs_f64() * 1000.0);
            let t = Instant::now();
            rows = base_rows(&store, &catalog, &settings.indicators, ind, &q).await?;
            sql.push(t.elapsed().as_secs_f64() * 1000.0);
            if let Some(r) = reads(&store, &catalog, &settings.indicators, ind, &q).await? {
                mat.push(r.materialized.as_secs_f64() * 1000.0);
                live.push(r.live.as_secs_f64() * 1000.0);
                parts = Some((r.materialized_rows, r.live_rows));
            }
        }
        costs.push(IndicatorCost {
            id: ind.id,
            base_rows: rows,
            api_ms: percentiles(api),
            sql_ms: percentiles(sql),
            reads: parts.map(|(materialized_rows, live_rows)| Reads {
                materialized_rows,
                materialized_ms: percentiles(mat),
                live_rows,
                live_ms: percentiles(live),
            }),
        });
    }
    let _ = std::fs::remove_file(&config);
    Ok(Indicators {
        backend,
        sensors: db.count("SELECT count(*) FROM sensors").await,
        readings: db.observations().await,
        sparse_s,
        ingest_s,
        materialize_s,
        materialized_rows: db.count("SELECT count(*) FROM indicator_days").await,
        costs,
    })
}
