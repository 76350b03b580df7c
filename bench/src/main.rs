//! The cityhub benchmark: one machine, a real Mosquitto started from
//! config/mosquitto.conf, PostgreSQL, and one table of results, each row
//! measured in this run. See bench/run.

mod api;
mod capacity;
mod decode;
mod indicators;
mod ingest;
mod map;
mod setup;
mod sta;
mod storage;

use anyhow::{bail, Result};
use chrono::Utc;
use cityhub_testkit::{hub_bin, workspace_root};
use clap::Parser;
use serde::Serialize;
use std::time::Duration;

#[derive(Parser)]
struct Args {
    /// Seconds each sustained measurement runs.
    #[arg(long, default_value_t = 60)]
    window: u64,
    /// Short windows and small counts, to try the harness.
    #[arg(long)]
    quick: bool,
    /// PostgreSQL server to create the benchmark databases on.
    #[arg(
        long,
        env = "CITYHUB_TEST_PG_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pg: String,
    /// A second server, with TimescaleDB, for the storage rows (both backends in one run).
    #[arg(long, env = "CITYHUB_BENCH_TIMESCALE_URL")]
    timescale_pg: Option<String>,
    /// Which parts to run: ingest, freshness, api, sta, storage, capacity, map, indicators, decode.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ingest,freshness,api,sta,storage,capacity,map,indicators,decode"
    )]
    only: Vec<String>,
    /// Fleet sizes the map is opened with.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
    map_sensors: Vec<u32>,
    /// Simulated days of the Cremona fleet for the storage rows.
    #[arg(long, default_value_t = 14)]
    storage_days: u32,
    /// The fleet the indicators are computed over (`cityhub sim run --fleet`).
    #[arg(
        long,
        default_value = "waste_bin=400,streetlight=400,bike_counter=100,air_quality=100"
    )]
    indicator_fleet: String,
    /// Simulated days of that fleet.
    #[arg(long, default_value_t = 365)]
    indicator_days: u32,
    /// Seconds between two reports of a bin, lamp or bicycle counter in that fleet
    /// (air-quality stations report hourly).
    #[arg(long, default_value_t = 21600)]
    indicator_cadence_s: u32,
    /// Python with paho-mqtt and psycopg, for the baseline bridge.
    #[arg(long, default_value = "python3")]
    python: String,
}

#[derive(Serialize, Clone)]
struct Row {
    measurement: String,
    result: String,
    value: f64,
    unit: String,
    settings: String,
}

/// The rows measured so far, each also printed as it comes.
#[derive(Default)]
struct Table(Vec<Row>);

impl Table {
    fn add(&mut self, measurement: &str, value: f64, unit: &str, settings: String) {
        let result = format!("{} {unit}", fmt(value));
        eprintln!("{measurement}: {result}");
        self.0.push(Row {
            measurement: measurement.into(),
            result,
            value,
            unit: unit.into(),
            settings,
        });
    }
}

fn hardware() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|k| format!("{:.0} GiB", k as f64 / 1024.0 / 1024.0))
        .unwrap_or_default();
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    format!("{cpus} cores ({model}), {mem}")
}

/// Ceilings, the hub flat out and the baseline; returns the hub's 3-metric 1,000-sensor rate.
async fn ingest_rows(t: &mut Table, args: &Args, window: Duration, n: u64) -> Result<f64> {
    let w = window.as_secs();
    let v = ingest::broker_ceiling(n).await?;
    t.add(
        "broker ceiling (publisher -> bare subscriber, QoS 1)",
        v,
        "msg/s",
        format!("{n} messages, 4 connections, 3-metric JSON"),
    );
    let broker = v;
    let v = ingest::db_ceiling(&args.pg, n * 2).await?;
    let copy = v;
    t.add(
        "database ceiling (binary COPY into observations)",
        v,
        "rows/s",
        format!("{} rows, 100,000 per transaction", n * 2),
    );
    let mut best = 0.0f64;
    for (sensors, metrics) in [(1000u64, 3u8), (1000, 6), (10_000, 3), (10_000, 6)] {
        let (m, r) = ingest::hub_sustained(&args.pg, sensors, metrics, window).await?;
        if sensors == 1000 && metrics == 3 {
            best = m;
            t.add(
                "cityhub end to end / database ceiling, rows/s",
                r / copy,
                "ratio",
                "3-metric messages, 1000 sensors, against the binary COPY above; goal at least 0.35".into(),
            );
            t.add(
                "cityhub end to end / broker ceiling, msg/s",
                m / broker,
                "ratio",
                "3-metric messages, 1000 sensors, against the bare subscriber above; goal at least 0.5".into(),
            );
        }
        t.add(
            &format!("cityhub end to end, {metrics}-metric messages, {sensors} sensors"),
            m,
            "msg/s",
            format!("{w} s, publisher flat out; {} rows/s", fmt(r)),
        );
    }
    match ingest::baseline(&args.pg, &args.python, 1000, window).await {
        Ok((m, r)) => t.add(
            "baseline Python bridge (paho-mqtt + psycopg, insert per message)",
            m,
            "msg/s",
            format!(
                "{w} s, same load (3 metrics, 1000 sensors); {} rows/s",
                fmt(r)
            ),
        ),
        Err(e) => eprintln!("baseline not measured: {e:#}"),
    }
    Ok(best)
}

/// Freshness, memory, CPU and storage at half the hub's measured rate.
async fn freshness_rows(t: &mut Table, args: &Args, window: Duration, best: f64) -> Result<()> {
    let f = ingest::freshness(&args.pg, best / 2.0, window).await?;
    let at = format!(
        "load at half the 3-metric 1000-sensor rate ({} msg/s asked, {} sent), {} probes",
        fmt(best / 2.0),
        fmt(f.achieved),
        f.samples
    );
    t.add(
        "freshness p50 (publish -> queryable)",
        f.p50_ms,
        "ms",
        at.clone(),
    );
    t.add(
        "freshness p99 (publish -> queryable)",
        f.p99_ms,
        "ms",
        at.clone(),
    );
    t.add("hub resident memory", f.rss_mib, "MiB", at.clone());
    t.add("hub CPU", f.cpu_pct, "% of one core", at);
    let compressed = if f.backend == "timescaledb" {
        ", compressed"
    } else {
        ""
    };
    t.add(
        "storage per reading",
        f.bytes_per_reading,
        "bytes",
        format!("{} (table + indexes{compressed})", f.backend),
    );
    Ok(())
}

/// API latency while ingesting at half the hub's measured rate, on each server.
async fn api_rows(t: &mut Table, args: &Args, window: Duration, best: f64) -> Result<()> {
    for pg in std::iter::once(&args.pg).chain(args.timescale_pg.as_ref()) {
        let a = api::api_latency(pg, best / 2.0, window).await?;
        let under = format!(
            "one client, back to back, while ingesting {} msg/s (half the 3-metric 1000-sensor rate) into 10,000 bins; listing lag as shipped (http.snapshot_max_lag_ms); {}",
            fmt(a.achieved),
            a.backend
        );
        let listing = format!(
            "{} sensors with position and latest values, {} KiB of GeoJSON",
            a.sensors,
            a.list_bytes / 1024
        );
        for (what, (p50, p99, n), detail) in [
            ("GET /api/v1/sensors", a.list_ms, listing.clone()),
            (
                "static file server, the same bytes",
                a.static_ms,
                format!(
                    "{listing}, from tower-http ServeFile in the bench process (the reference)"
                ),
            ),
            (
                "30-day hourly readings query",
                a.readings_ms,
                format!(
                    "{} hourly buckets over {} readings of one bin",
                    a.buckets, a.history_rows
                ),
            ),
            (
                "city-wide day of hourly means (SQL on obs_hourly)",
                a.city_day_ms,
                format!(
                    "every bin's fill level, 24 hourly buckets, {} readings under them",
                    a.city_day_rows
                ),
            ),
        ] {
            for (q, v) in [("p50", p50), ("p99", p99)] {
                t.add(
                    &format!("API {what}, {q}, {}", a.backend),
                    v,
                    "ms",
                    format!("{detail}; {n} requests; {under}"),
                );
            }
        }
        t.add(
            &format!("API listing / static file server, p99, {}", a.backend),
            a.list_ms.1 / a.static_ms.1,
            "ratio",
            format!("{listing}; goal within 1.5"),
        );
    }
    Ok(())
}

/// The SensorThings API next to the native readings API, the same data, on each backend.
async fn sta_rows(t: &mut Table, args: &Args) -> Result<()> {
    let rounds = if args.quick { 10 } else { 40 };
    for pg in std::iter::once(&args.pg).chain(args.timescale_pg.as_ref()) {
        let r = sta::sta_latency(pg, rounds).await?;
        for p in &r.pairs {
            for (api, (p50, p99, n)) in [("native", p.native_ms), ("STA", p.sta_ms)] {
                t.add(
                    &format!("{api}: {}, p50 / p99, {}", p.what, r.backend),
                    p50,
                    "ms",
                    format!(
                        "p99 {} ms; {}; {n} requests, one client, alternating",
                        fmt(p99),
                        p.detail
                    ),
                );
            }
            t.add(
                &format!("STA / native: {}, p50, {}", p.what, r.backend),
                p.sta_ms.0 / p.native_ms.0,
                "ratio",
                format!("{}; goal within 1.5", p.detail),
            );
        }
    }
    Ok(())
}

/// The decoder per message against parsing its bytes alone, one core.
fn decode_rows(t: &mut Table, window: Duration) -> Result<()> {
    for c in decode::decode_costs(window)? {
        t.add(
            &format!("decoding {}, per message", c.what),
            c.decode_us,
            "µs",
            format!(
                "{} bytes; JSON parse alone {} µs ({} times that); {} problems described, {} counted",
                fmt(c.bytes as f64),
                fmt(c.parse_us),
                fmt(c.decode_us / c.parse_us),
                c.problems,
                c.unlisted
            ),
        );
    }
    Ok(())
}

/// `start 120, data 900, ...` in the order the page reached them.
fn steps(steps: &[(String, f64)]) -> String {
    let mut v = steps.to_vec();
    v.sort_by(|a, b| a.1.total_cmp(&b.1));
    v.iter()
        .map(|(k, ms)| format!("{k} {}", fmt(*ms)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The map in headless Chromium with each of `--map-sensors` (10,000 to 1,000,000).
async fn map_rows(t: &mut Table, args: &Args) -> Result<()> {
    if let Some(why) = map::missing_tools() {
        eprintln!("map not measured: {why}");
        return Ok(());
    }
    for &n in &args.map_sensors {
        let m = map::fleet(&args.pg, n).await?;
        let what = format!(
            "{} waste bins ({} markers), 1366x850 headless Chromium on this machine",
            fmt(f64::from(m.sensors)),
            m.markers
        );
        t.add(
            &format!(
                "map with {} sensors: page request to every marker drawn",
                fmt(f64::from(n))
            ),
            m.ready_ms,
            "ms",
            format!(
                "{what}; the first browser, opened once the hub answers /readyz, its load of the fleet at start maybe still running; of which {} ms the fleet's data, request to last byte; the page's steps, ms from navigation: {}; goal within 3,000 ms at 100,000",
                fmt(m.data_ms),
                steps(&m.steps)
            ),
        );
        t.add(
            &format!(
                "map with {} sensors: the hub's load of the fleet as it starts",
                fmt(f64::from(n))
            ),
            m.load_ms,
            "ms",
            format!(
                "{what}; from PostgreSQL into the hub's memory (its log line), before any request"
            ),
        );
        t.add(
            &format!(
                "map with {} sensors: a second browser, page request to every marker drawn",
                fmt(f64::from(n))
            ),
            m.second_ready_ms,
            "ms",
            format!("{what}; the hub already holds the fleet"),
        );
        t.add(
            &format!(
                "map with {} sensors: the tab's JavaScript heap",
                fmt(f64::from(n))
            ),
            m.heap_mb,
            "MiB",
            what.clone(),
        );
        t.add(
            &format!(
                "map with {} sensors: frame time while dragging, p50 / p95 / max",
                fmt(f64::from(n))
            ),
            m.frame_p95_ms,
            "ms",
            format!(
                "p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms; longest task {:.0} ms; {what}",
                m.frame_p50_ms, m.frame_p95_ms, m.frame_max_ms, m.longest_task_ms
            ),
        );
        if m.redraw_ms > 0.0 {
            t.add(
                &format!(
                    "map with {} sensors: one whole canvas redraw",
                    fmt(f64::from(n))
                ),
                m.redraw_ms,
                "ms",
                what,
            );
        }
    }
    Ok(())
}

/// Bytes per reading of the simulated fleet, as written and compressed, on each server.
async fn storage_rows(t: &mut Table, args: &Args) -> Result<()> {
    let days = if args.quick { 3 } else { args.storage_days };
    for pg in std::iter::once(&args.pg).chain(args.timescale_pg.as_ref()) {
        let s = storage::fleet(pg, days).await?;
        let what = format!(
            "{} readings of the default simulated fleet (140 sensors, {days} days)",
            fmt(s.readings as f64)
        );
        let (label, note) = if s.backend == "timescaledb" {
            ("TimescaleDB", "table + indexes, before compression")
        } else {
            (
                "plain PostgreSQL",
                "table + index; PostgreSQL compresses no row this narrow (a 24 B header, 30 B of columns, an index entry)",
            )
        };
        t.add(
            &format!("storage per reading, {label}, as written"),
            s.before,
            "bytes",
            format!("{what}; {note}"),
        );
        if let Some(after) = s.after {
            t.add(
                &format!("storage per reading, {label}, compressed"),
                after,
                "bytes",
                format!("{what}; every chunk compressed (segment by sensor and metric, week chunks, values as integer thousandths)"),
            );
        }
    }
    Ok(())
}

/// Each indicator's city rows by month over the simulated range, through the API and
/// its base query alone, on each server.
async fn indicator_rows(t: &mut Table, args: &Args) -> Result<()> {
    let days = if args.quick { 30 } else { args.indicator_days };
    for pg in std::iter::once(&args.pg).chain(args.timescale_pg.as_ref()) {
        let r = indicators::indicators(pg, &args.indicator_fleet, days, args.indicator_cadence_s)
            .await?;
        let what = format!(
            "{} sensors ({}), {} readings over {days} days (bins, lamps, counters every {} s, stations hourly; stored in {:.0} s); the city's rows by month; {}",
            r.sensors,
            args.indicator_fleet,
            fmt(r.readings as f64),
            r.sparse_s,
            r.ingest_s,
            r.backend
        );
        t.add(
            &format!("indicator days materialized, {}", r.backend),
            r.materialize_s,
            "s",
            format!("{what}; from the last reading stored to every settled day of every indicator materialized: {} base rows", fmt(r.materialized_rows as f64)),
        );
        for c in &r.costs {
            for (label, (p50, p99, n)) in [
                ("API", c.api_ms),
                ("its base query from the readings", c.sql_ms),
            ] {
                for (p, v) in [("p50", p50), ("p99", p99)] {
                    t.add(
                        &format!("indicator {}, {label}, {p}, {}", c.id, r.backend),
                        v,
                        "ms",
                        format!("{what}; {n} requests one after the other; {} base rows; goal under 200 ms p99", c.base_rows),
                    );
                }
            }
            // Where a request's time goes: its two reads, each alone, without the fold.
            if let Some(p) = &c.reads {
                for (label, rows, (p50, _, n)) in [
                    (
                        "its materialized rows read alone",
                        p.materialized_rows,
                        p.materialized_ms,
                    ),
                    ("its days from the readings alone", p.live_rows, p.live_ms),
                ] {
                    t.add(
                        &format!("indicator {}, {label}, p50, {}", c.id, r.backend),
                        p50,
                        "ms",
                        format!("{what}; {n} runs; {rows} base rows"),
                    );
                }
            }
        }
    }
    Ok(())
}

/// The capacity model's inputs (docs/capacity.md) at a third of the hub's measured
/// rate, on each server.
async fn capacity_rows(t: &mut Table, args: &Args, window: Duration, best: f64) -> Result<()> {
    for pg in std::iter::once(&args.pg).chain(args.timescale_pg.as_ref()) {
        let c = capacity::measure(pg, best / 3.0, window).await?;
        let at = format!(
            "3-metric messages from 1,000 bins at {} msg/s ({} readings/s stored), a third of the flat-out rate (or of 10,000 without the ingest rows); {}",
            fmt(c.rate),
            fmt(c.rows_per_s),
            c.backend
        );
        for (who, us) in [
            ("the hub", c.hub_us),
            ("Mosquitto", c.broker_us),
            (
                "PostgreSQL (backends and the server's writers)",
                c.postgres_us,
            ),
        ] {
            t.add(
                &format!("capacity: CPU per reading, {who}, {}", c.backend),
                us,
                "µs",
                at.clone(),
            );
        }
        for (what, per_cpu_s, n, clients) in c.api {
            t.add(
                &format!("capacity: API {what}, per CPU second, {}", c.backend),
                per_cpu_s,
                "requests",
                format!("{n} requests from {clients} clients back to back, ingestion stopped; CPU of the hub and PostgreSQL; {}", c.backend),
            );
        }
    }
    Ok(())
}

/// The table on stdout, and `target/bench/results.json`.
fn report(t: &Table, hw: &str, window: Duration) -> Result<()> {
    println!(
        "\nHardware: {hw}; PostgreSQL and Mosquitto (config/mosquitto.conf) on the same machine.\n"
    );
    println!("| measurement | result | settings |\n|---|---|---|");
    for r in &t.0 {
        println!("| {} | {} | {} |", r.measurement, r.result, r.settings);
    }
    let out = workspace_root().join("target/bench");
    std::fs::create_dir_all(&out)?;
    let json = serde_json::json!({ "hardware": hw, "window_s": window.as_secs(), "measured_at": Utc::now(), "rows": t.0 });
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    eprintln!("written: {}", out.join("results.json").display());
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if !hub_bin().exists() {
        bail!(
            "{} is missing: run bench/run (it builds it)",
            hub_bin().display()
        );
    }
    let window = Duration::from_secs(if args.quick { 10 } else { args.window.max(10) });
    let n = if args.quick { 200_000 } else { 1_000_000 };
    let hw = hardware();
    let mut table = Table::default();
    let run = |part: &str| args.only.iter().any(|o| o == part);
    // Later parts load the hub at half the rate the first one measured.
    let mut best = 10_000.0;
    if run("ingest") {
        best = ingest_rows(&mut table, &args, window, n).await?;
    }
    if run("freshness") {
        freshness_rows(&mut table, &args, window, best).await?;
    }
    if run("api") {
        api_rows(&mut table, &args, window, best).await?;
    }
    if run("sta") {
        sta_rows(&mut table, &args).await?;
    }
    if run("storage") {
        storage_rows(&mut table, &args).await?;
    }
    if run("capacity") {
        capacity_rows(&mut table, &args, window, best).await?;
    }
    if run("map") {
        map_rows(&mut table, &args).await?;
    }
    if run("indicators") {
        indicator_rows(&mut table, &args).await?;
    }
    if run("decode") {
        decode_rows(&mut table, window)?;
    }
    report(&table, &hw, window)
}

fn fmt(v: f64) -> String {
    if v >= 100.0 {
        let s = format!("{:.0}", v);
        let mut out = String::new();
        for (i, ch) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(ch);
        }
        out
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}
