//! The operator map with a region's fleet, in headless Chromium: time from the page
//! request to every marker drawn, and frame times while dragging the map
//! (`web/tests/fleet.e2e.mjs`, the same script the map test runs).

use crate::setup::hub;
use anyhow::{bail, Context, Result};
use cityhub_testkit::{Broker, TestDb};
use std::collections::HashMap;
use std::path::PathBuf;

pub struct MapTiming {
    pub sensors: u32,
    pub markers: String,
    /// The hub's load of the fleet from PostgreSQL as it starts (its log says how long).
    pub load_ms: f64,
    pub ready_ms: f64,
    /// The same for a second browser, once the hub holds the fleet in memory.
    pub second_ready_ms: f64,
    /// Of `ready_ms`, the fleet's data: request to last byte.
    pub data_ms: f64,
    /// The tab's JavaScript heap with the fleet loaded, MiB.
    pub heap_mb: f64,
    pub frame_p50_ms: f64,
    pub frame_p95_ms: f64,
    pub frame_max_ms: f64,
    /// One whole redraw of the marker canvas (0 with DOM markers).
    pub redraw_ms: f64,
    pub longest_task_ms: f64,
    /// The page's own steps (web/src/main.js marks), ms from the navigation's start.
    pub steps: Vec<(String, f64)>,
}

fn web_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../web")
}

/// Why the map cannot be measured here, if it cannot.
pub fn missing_tools() -> Option<String> {
    let web = web_dir();
    if !web.join("dist/index.html").is_file() {
        return Some(
            "web/dist is not built (npm --prefix web ci && npm --prefix web run build)".into(),
        );
    }
    if !web.join("node_modules/playwright-core").is_dir() {
        return Some("playwright-core is not installed (npm --prefix web ci)".into());
    }
    if !std::path::Path::new("/usr/bin/chromium").is_file() {
        return Some("Chromium is not installed (apt-get install chromium)".into());
    }
    None
}

/// A hub with `sensors` registered bins (one in 1,000 needing action), and the map
/// opened on it by a first browser as soon as the hub answers `/readyz` (its load of
/// the fleet, begun at start, may still run), then by a second.
pub async fn fleet(admin: &str, sensors: u32) -> Result<MapTiming> {
    let db = TestDb::on(admin).await;
    db.migrate().await?;
    db.register_bins(sensors as i32, 1_000).await;
    // As autovacuum leaves a city's tables: a first read of rows just written sets their
    // hint bits, a cost a hub restarting on its database does not pay.
    db.client().await.batch_execute("VACUUM ANALYZE").await?;
    let broker = Broker::start();
    let dist = web_dir().join("dist");
    let hub = hub(
        &db,
        &broker,
        &[
            // The snapshot's line says how long the load at start took.
            ("RUST_LOG", "warn,cityhub_api::snapshot=info"),
            ("CITYHUB_HTTP_RATE_LIMIT_PER_S", "0"),
            ("CITYHUB_HTTP_WEB_DIR", dist.to_str().context("web dir")?),
        ],
    )
    .await;
    let shots = std::env::temp_dir().join("cityhub_bench_map");
    let out = tokio::process::Command::new("node")
        .arg("tests/fleet.e2e.mjs")
        .current_dir(web_dir())
        .env("HUB_URL", hub.url("").trim_end_matches('/'))
        .env("SENSORS", sensors.to_string())
        .env("ALARMS", (sensors / 1_000).to_string())
        .env("SHOTS", &shots)
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "fleet.e2e.mjs failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("fleet: "))
        .context("fleet.e2e.mjs printed no figures")?;
    let kv: HashMap<&str, &str> = line.split(' ').filter_map(|p| p.split_once('=')).collect();
    let num = |k: &str| -> Result<f64> {
        kv.get(k)
            .context(format!("no {k}"))?
            .parse::<f64>()
            .context(k.to_string())
    };
    let log = std::fs::read_to_string(&hub.log).context("the hub's log")?;
    let load_ms = log
        .lines()
        .filter(|l| l.contains("Sensors listing loaded."))
        .find_map(|l| l.split(' ').find_map(|w| w.strip_prefix("ms=")))
        .context("the hub's log does not say when the fleet was loaded")?
        .parse::<f64>()?;
    Ok(MapTiming {
        sensors,
        load_ms,
        markers: kv.get("markers").unwrap_or(&"?").to_string(),
        ready_ms: num("ready_ms")?,
        second_ready_ms: num("second_ready_ms")?,
        heap_mb: num("heap_mb")?,
        data_ms: num("data_ms")?,
        frame_p50_ms: num("frame_p50_ms")?,
        frame_p95_ms: num("frame_p95_ms")?,
        frame_max_ms: num("frame_max_ms")?,
        redraw_ms: num("redraw_ms")?,
        longest_task_ms: num("longest_task_ms")?,
        steps: kv
            .iter()
            .filter_map(|(k, v)| {
                let step = k.strip_prefix("at_")?.strip_suffix("_ms")?;
                Some((step.to_owned(), v.parse().ok()?))
            })
            .collect(),
    })
}
