//! API query latency while the hub ingests: `GET /api/v1/sensors` over 10,000
//! placed bins with latest values (next to a static file server sending the same
//! bytes), one bin's 30 days in hourly buckets, and a city-wide day of hourly means
//! in SQL, as a dashboard asks it.

use crate::setup::{hub, percentiles, spec};
use anyhow::{bail, Result};
use chrono::{DateTime, Utc};
use cityhub_sim::load;
use cityhub_testkit::{hub_bin, Broker, TestDb};
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use std::process::Command;
use std::time::{Duration, Instant};

const SENSORS: u64 = 10_000;
/// Days of 5-minute history of the queried bin.
pub(crate) const DAYS: i64 = 30;

pub struct ApiLatency {
    pub backend: String,
    pub sensors: i64,
    pub list_bytes: usize,
    pub list_ms: (f64, f64, usize),
    /// The same bytes from a static file server (tower-http `ServeFile`), same client.
    pub static_ms: (f64, f64, usize),
    /// A day of city-wide hourly means of the bins' fill level, from `obs_hourly`.
    pub city_day_ms: (f64, f64, usize),
    pub city_day_rows: i64,
    pub readings_ms: (f64, f64, usize),
    pub buckets: usize,
    pub history_rows: i64,
    pub achieved: f64,
}

/// One client asks back to back while the load publisher ingests at `rate` into the
/// 10,000 bins for `window`.
pub async fn api_latency(admin: &str, rate: f64, window: Duration) -> Result<ApiLatency> {
    let db = TestDb::on(admin).await;
    db.migrate().await?;
    place_bins(&db, SENSORS)?;
    let broker = Broker::start();
    // The listing as shipped: a commit reaches it in the background within the lag,
    // not before each request (the tests' setting, so they read what they just wrote).
    let lag = cityhub_core::settings::HttpSettings::default()
        .snapshot_max_lag_ms
        .to_string();
    let hub = hub(
        &db,
        &broker,
        &[
            ("CITYHUB_HTTP_RATE_LIMIT_PER_S", "0"),
            ("CITYHUB_HTTP_SNAPSHOT_MAX_LAG_MS", &lag),
        ],
    )
    .await;
    let now = Utc::now();
    publish_history(&broker, now).await?;
    let history_rows = || async {
        db.count(
            "SELECT count(*) FROM observations o JOIN sensors s ON s.id = o.sensor_id WHERE s.external_id = 'bin-history'",
        )
        .await
    };
    wait_until(
        Duration::from_secs(60),
        "the 30-day history was not stored",
        || async { history_rows().await >= DAYS * 288 },
    )
    .await?;

    let started = Instant::now();
    let url = broker.url();
    let publisher = tokio::spawn(async move {
        load::run(
            &url,
            &spec(u64::MAX / 4, SENSORS, 3, Some(started + window), Some(rate)),
        )
        .await
    });
    // Every bin has reported once before the clock starts.
    wait_until(
        window / 2,
        "the 10,000 bins did not all report within half the window",
        || async {
            db.count("SELECT count(DISTINCT sensor_id) FROM latest")
                .await
                >= SENSORS as i64
        },
    )
    .await?;
    let base = hub.url("");
    // The load's readings start 20 days back (see `spec`).
    let load_day = now - chrono::Duration::days(20) - chrono::Duration::hours(1);
    let q = query_back_to_back(&base, &db, now, load_day, started + window).await?;
    let achieved = publisher.await??.messages_per_s;
    let backend = crate::setup::backend(&db).await?;
    Ok(ApiLatency {
        history_rows: history_rows().await,
        achieved,
        backend,
        ..q
    })
}

/// The fleet's places, through the registry import a city would use.
pub(crate) fn place_bins(db: &TestDb, n: u64) -> Result<()> {
    let features: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            serde_json::json!({"type": "Feature", "id": format!("bin-{i:06}"),
                "geometry": {"type": "Point", "coordinates": [9.98 + (i % 100) as f64 * 0.0009, 45.11 + (i / 100) as f64 * 0.0005]},
                "properties": {"kind": "waste_bin", "name": format!("Bin {i}")}})
        })
        .collect();
    let file = std::env::temp_dir().join(format!("cityhub_bench_sensors_{}.geojson", db.name));
    std::fs::write(
        &file,
        serde_json::json!({"type": "FeatureCollection", "features": features}).to_string(),
    )?;
    let out = Command::new(hub_bin())
        .args(["sensors", "import"])
        .arg(&file)
        .env("CITYHUB_DATABASE_URL", &db.url)
        .env_remove("CITYHUB_CONFIG")
        .output()?;
    let _ = std::fs::remove_file(&file);
    if !out.status.success() {
        bail!("import: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// 30 days of one bin every 5 minutes, one day per message (`readings` array).
pub(crate) async fn publish_history(broker: &Broker, now: DateTime<Utc>) -> Result<()> {
    let mut opts = MqttOptions::new("bench-history", "127.0.0.1", broker.port);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut el) = AsyncClient::new(opts, 100);
    let acks = tokio::spawn(async move {
        let mut n = 0;
        while n < DAYS {
            match el.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => n += 1,
                Ok(_) => {}
                Err(e) => return Err(anyhow::anyhow!("history publisher: {e:?}")),
            }
        }
        Ok(())
    });
    for day in 0..DAYS {
        let readings: Vec<serde_json::Value> = (0..288)
            .map(|k| {
                let t = now - chrono::Duration::minutes(5 * (day * 288 + k) + 1);
                serde_json::json!({"ts": t.to_rfc3339(), "values": {"fill_level": ((day * 288 + k) % 100) as f64}})
            })
            .collect();
        let payload = serde_json::json!({ "readings": readings }).to_string();
        client
            .publish(
                "cityhub/v1/waste_bin/bin-history",
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .await?;
    }
    acks.await?
}

pub(crate) async fn wait_until<F, Fut>(limit: Duration, failure: &str, mut done: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !done().await {
        if Instant::now() > deadline {
            bail!("{failure}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

pub(crate) fn query_value(t: DateTime<Utc>) -> String {
    url::form_urlencoded::byte_serialize(
        t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            .as_bytes(),
    )
    .collect()
}

/// A static file server on a free port, serving `file` at `/sensors.geojson`.
async fn static_server(file: std::path::PathBuf) -> Result<String> {
    let app = axum::Router::new().route_service(
        "/sensors.geojson",
        tower_http::services::ServeFile::new(file),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(format!("http://{addr}/sensors.geojson"))
}

/// Alternates the listing, the same bytes from a static server, the 30-day hourly
/// query and the city-wide day in SQL until `until`, timing each.
async fn query_back_to_back(
    base: &str,
    db: &TestDb,
    now: DateTime<Utc>,
    load_day: DateTime<Utc>,
    until: Instant,
) -> Result<ApiLatency> {
    let http = reqwest::Client::new();
    let list_url = format!("{base}/api/v1/sensors");
    let readings_url = format!(
        "{base}/api/v1/sensors/bin-history/readings?metric=fill_level&bucket=1h&from={}&to={}",
        query_value(now - chrono::Duration::days(DAYS)),
        query_value(now),
    );
    let get = |url: String| {
        let http = http.clone();
        async move {
            let t = Instant::now();
            let body = http
                .get(url)
                .send()
                .await?
                .error_for_status()?
                .bytes()
                .await?;
            anyhow::Ok((t.elapsed().as_secs_f64() * 1000.0, body))
        }
    };
    let sql = db.client().await;
    let city_day = sql
        .prepare(
            "SELECT o.bucket, count(*), avg(o.avg), max(o.max)
             FROM obs_hourly o JOIN metrics m ON m.id = o.metric_id
             WHERE m.kind = 'waste_bin' AND m.name = 'fill_level'
               AND o.bucket >= $1 AND o.bucket < $1 + INTERVAL '24 hours'
             GROUP BY 1 ORDER BY 1",
        )
        .await?;
    let (first_ms, first) = get(list_url.clone()).await?;
    let file = std::env::temp_dir().join(format!("cityhub_bench_listing_{}.geojson", db.name));
    std::fs::write(&file, &first)?;
    let static_url = static_server(file.clone()).await?;
    let fc: serde_json::Value = serde_json::from_slice(&first)?;
    let sensors = fc["features"].as_array().map_or(0, Vec::len) as i64;
    let (mut list, mut files, mut series, mut city) =
        (vec![first_ms], Vec::new(), Vec::new(), Vec::new());
    let (mut list_bytes, mut buckets, mut city_day_rows) = (first.len(), 0, 0);
    while Instant::now() < until {
        let (ms, body) = get(list_url.clone()).await?;
        list.push(ms);
        list_bytes = body.len();
        let (ms, _) = get(static_url.clone()).await?;
        files.push(ms);
        let (ms, body) = get(readings_url.clone()).await?;
        series.push(ms);
        if buckets == 0 {
            let v: serde_json::Value = serde_json::from_slice(&body)?;
            buckets = v["readings"].as_array().map_or(0, Vec::len);
        }
        let t = Instant::now();
        let rows = sql.query(&city_day, &[&load_day]).await?;
        city.push(t.elapsed().as_secs_f64() * 1000.0);
        city_day_rows = rows.iter().map(|r| r.get::<_, i64>(1)).sum();
    }
    let _ = std::fs::remove_file(&file);
    if files.is_empty() {
        bail!("no query finished within the window");
    }
    Ok(ApiLatency {
        backend: String::new(),
        sensors,
        list_bytes,
        list_ms: percentiles(list),
        static_ms: percentiles(files),
        readings_ms: percentiles(series),
        city_day_ms: percentiles(city),
        city_day_rows,
        buckets,
        history_rows: 0,
        achieved: 0.0,
    })
}
