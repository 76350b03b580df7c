//! The cityhub benchmark: one machine, a real Mosquitto started from
//! config/mosquitto.conf, PostgreSQL, and one table of results, each row
//! measured in this run. See bench/run.

use anyhow::{bail, Context, Result};
use chrono::Utc;
use cityhub_sim::load::{self, LoadSpec};
use clap::Parser;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::NoTls;

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

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Broker {
    port: u16,
    child: Child,
    dir: PathBuf,
}

impl Broker {
    fn start() -> Result<Self> {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("cityhub_bench_mq_{}_{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Command::new("chmod").arg("777").arg(&dir).status()?;
        let conf: String = std::fs::read_to_string(root().join("config/mosquitto.conf"))?
            .lines()
            .map(|l| {
                if l.starts_with("persistence_location ") {
                    format!("persistence_location {}/", dir.display())
                } else if l.starts_with("listener ") {
                    format!("listener {port} 127.0.0.1")
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(dir.join("m.conf"), conf)?;
        let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("mosquitto");
        let child = Command::new(bin)
            .arg("-c")
            .arg(dir.join("m.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("mosquitto did not start");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self { port, child, dir })
    }
    fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Db {
    admin: String,
    name: String,
    url: String,
}

impl Db {
    async fn create(admin: &str) -> Result<Self> {
        let name = format!(
            "cityhub_bench_{}_{}",
            std::process::id(),
            rand::random::<u32>()
        );
        let (c, conn) = tokio_postgres::connect(admin, NoTls).await?;
        tokio::spawn(conn);
        c.batch_execute(&format!("CREATE DATABASE {name}")).await?;
        let mut u = url::Url::parse(admin)?;
        u.set_path(&name);
        u.set_query(Some("sslmode=disable"));
        Ok(Self {
            admin: admin.to_owned(),
            name,
            url: u.to_string(),
        })
    }
    async fn client(&self) -> Result<tokio_postgres::Client> {
        let (c, conn) = tokio_postgres::connect(&self.url, NoTls).await?;
        tokio::spawn(conn);
        Ok(c)
    }
    async fn rows(&self) -> Result<i64> {
        Ok(self
            .client()
            .await?
            .query_one("SELECT count(*) FROM observations", &[])
            .await?
            .get(0))
    }
    fn migrate(&self) -> Result<()> {
        let out = Command::new(hub_bin())
            .arg("migrate")
            .env("CITYHUB_DATABASE_URL", &self.url)
            .env_remove("CITYHUB_CONFIG")
            .output()?;
        if !out.status.success() {
            bail!("migrate: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok((c, conn)) = tokio_postgres::connect(&admin, NoTls).await {
                    tokio::spawn(conn);
                    let _ = c
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            })
        })
        .join();
    }
}

fn hub_bin() -> PathBuf {
    root().join("target/release/cityhub")
}

struct Hub {
    child: Child,
    http: u16,
}

impl Hub {
    async fn start(db: &Db, broker: &Broker) -> Result<Self> {
        Self::start_with(db, broker, &[]).await
    }
    async fn start_with(db: &Db, broker: &Broker, env: &[(&str, &str)]) -> Result<Self> {
        let http = free_port();
        let child = Command::new(hub_bin())
            .arg("serve")
            .envs(env.iter().copied())
            .env_remove("CITYHUB_CONFIG")
            .env("CITYHUB_DATABASE_URL", &db.url)
            .env("CITYHUB_MQTT_URL", broker.url())
            .env("CITYHUB_MQTT_CLIENT_ID", format!("bench-{}", db.name))
            .env("CITYHUB_HTTP_ADDR", format!("127.0.0.1:{http}"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let hub = Self { child, http };
        let deadline = Instant::now() + Duration::from_secs(60);
        while http_status(hub.http, "/readyz").await != Some(200) {
            if Instant::now() > deadline {
                bail!("hub not ready");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(hub)
    }
    /// (resident KiB, CPU seconds used so far)
    fn usage(&self) -> (u64, f64) {
        let pid = self.child.id();
        let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0);
        let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .map(|s| {
                let f: Vec<&str> = s
                    .rsplit(')')
                    .next()
                    .unwrap_or("")
                    .split_whitespace()
                    .collect();
                let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
                    + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
                ticks / 100.0
            })
            .unwrap_or(0.0);
        (rss, cpu)
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = vec![0u8; 64];
    let n = s.read(&mut buf).await.ok()?;
    String::from_utf8_lossy(&buf[..n])
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn spec(
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

/// QoS 1 messages/s from the load publisher to a bare subscriber, no hub.
async fn broker_ceiling(n: u64) -> Result<f64> {
    let broker = Broker::start()?;
    let mut opts = MqttOptions::new("bench-subscriber", "127.0.0.1", broker.port);
    opts.set_receive_maximum(Some(4096))
        .set_keep_alive(Duration::from_secs(30));
    let (client, mut el) = AsyncClient::new(opts, 100);
    client.subscribe("cityhub/v1/#", QoS::AtLeastOnce).await?;
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = el.poll().await? {
            break;
        }
    }
    let started = Instant::now();
    let sub = tokio::spawn(async move {
        let mut got = 0u64;
        while got < n {
            if let Ok(Event::Incoming(Packet::Publish(_))) = el.poll().await {
                got += 1;
            }
        }
        Instant::now()
    });
    let url = broker.url();
    load::run(&url, &spec(n, 1000, 3, None, None)).await?;
    let done = sub.await?;
    Ok(n as f64 / (done - started).as_secs_f64())
}

/// Plain PostgreSQL: the monthly partitions the load's times fall in (the hub makes
/// them on demand; the COPY ceiling and the baseline bridge need them made).
async fn ensure_partitions(c: &tokio_postgres::Client) -> Result<()> {
    let partitioned: bool = c
        .query_one("SELECT EXISTS (SELECT 1 FROM pg_partitioned_table p JOIN pg_class r ON r.oid = p.partrelid WHERE r.relname = 'observations')", &[])
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
            "CREATE TABLE IF NOT EXISTS observations_p{} PARTITION OF observations FOR VALUES FROM ('{start} 00:00:00+00') TO ('{end} 00:00:00+00')",
            start.format("%Y%m")
        ))
        .await?;
    }
    Ok(())
}

/// Rows/s of binary COPY into `observations` with its indexes.
async fn db_ceiling(admin: &str, rows: u64) -> Result<f64> {
    use futures_util::pin_mut;
    use tokio_postgres::binary_copy::BinaryCopyInWriter;
    use tokio_postgres::types::Type;
    let db = Db::create(admin).await?;
    db.migrate()?;
    let c = db.client().await?;
    c.batch_execute("INSERT INTO sensors (external_id, kind) SELECT 'bin-' || g, 'waste_bin' FROM generate_series(1, 1000) g").await?;
    ensure_partitions(&c).await?;
    let from = Utc::now() - chrono::Duration::days(1);
    let ids: Vec<i32> = c
        .query("SELECT id FROM sensors", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let metric: i16 = c
        .query_one(
            "SELECT id FROM metrics WHERE kind='waste_bin' AND name='fill_level'",
            &[],
        )
        .await?
        .get(0);
    let started = Instant::now();
    let per_tx = 100_000u64;
    let mut c = c;
    let mut written = 0u64;
    while written < rows {
        let tx = c.transaction().await?;
        let sink = tx
            .copy_in("COPY observations (time, sensor_id, metric_id, value) FROM STDIN BINARY")
            .await?;
        let w = BinaryCopyInWriter::new(
            sink,
            &[Type::TIMESTAMPTZ, Type::INT4, Type::INT2, Type::FLOAT8],
        );
        pin_mut!(w);
        for i in written..(written + per_tx).min(rows) {
            let t = from + chrono::Duration::milliseconds((i / ids.len() as u64) as i64 * 50);
            let v = (i % 1000) as f64 / 10.0;
            w.as_mut()
                .write(&[&t, &ids[(i % ids.len() as u64) as usize], &metric, &v])
                .await?;
        }
        w.finish().await?;
        tx.commit().await?;
        written = (written + per_tx).min(rows);
    }
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}

/// A hub under a publisher that runs flat out for `window`: committed messages and rows per second.
async fn hub_sustained(
    admin: &str,
    sensors: u64,
    metrics: u8,
    window: Duration,
) -> Result<(f64, f64)> {
    let db = Db::create(admin).await?;
    let broker = Broker::start()?;
    let _hub = Hub::start(&db, &broker).await?;
    let started = Instant::now();
    let url = broker.url();
    let publisher = tokio::spawn(async move {
        load::run(
            &url,
            &spec(u64::MAX / 4, sensors, metrics, Some(started + window), None),
        )
        .await
    });
    tokio::time::sleep_until((started + window).into()).await;
    let rows = db.rows().await? as f64;
    let secs = started.elapsed().as_secs_f64();
    publisher.abort();
    Ok((rows / f64::from(metrics) / secs, rows / secs))
}

/// The hand-written Python bridge under the same flat-out load.
async fn baseline(admin: &str, python: &str, sensors: u64, window: Duration) -> Result<(f64, f64)> {
    let db = Db::create(admin).await?;
    db.migrate()?;
    ensure_partitions(&db.client().await?).await?;
    let broker = Broker::start()?;
    let mut bridge = Command::new(python)
        .arg(root().join("bench/baseline_bridge.py"))
        .arg(broker.port.to_string())
        .arg(db.url.replace("?sslmode=disable", ""))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the Python baseline (bench/run prepares its virtualenv)")?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    let url = broker.url();
    let publisher = tokio::spawn(async move {
        load::run(
            &url,
            &spec(u64::MAX / 4, sensors, 3, Some(started + window), None),
        )
        .await
    });
    tokio::time::sleep_until((started + window).into()).await;
    let rows = db.rows().await? as f64;
    let secs = started.elapsed().as_secs_f64();
    publisher.abort();
    let _ = bridge.kill();
    let _ = bridge.wait();
    Ok((rows / 3.0 / secs, rows / secs))
}

struct Freshness {
    /// What the paced publisher really sent.
    achieved: f64,
    p50_ms: f64,
    p99_ms: f64,
    samples: usize,
    rss_mib: f64,
    cpu_pct: f64,
    bytes_per_reading: f64,
    backend: String,
}

/// Publish-to-queryable latency of probe readings while the hub runs at `rate`; memory,
/// CPU, and storage per reading at the end.
async fn freshness(admin: &str, rate: f64, window: Duration) -> Result<Freshness> {
    let db = Db::create(admin).await?;
    let broker = Broker::start()?;
    let hub = Hub::start(&db, &broker).await?;
    let started = Instant::now();
    let url = broker.url();
    let publisher = tokio::spawn(async move {
        load::run(
            &url,
            &spec(u64::MAX / 4, 1000, 3, Some(started + window), Some(rate)),
        )
        .await
    });
    let mut opts = MqttOptions::new("bench-prober", "127.0.0.1", broker.port);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut el) = AsyncClient::new(opts, 100);
    tokio::spawn(async move { while el.poll().await.is_ok() {} });
    let c = db.client().await?;
    let (_, cpu0) = hub.usage();
    let t0 = Instant::now();
    let mut samples = Vec::new();
    let mut i = 0u32;
    while started.elapsed() < window {
        i += 1;
        let sensor = format!("probe-{i}");
        let sent = Instant::now();
        let ts = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        client
            .publish(
                format!("cityhub/v1/waste_bin/{sensor}"),
                QoS::AtLeastOnce,
                false,
                format!(r#"{{"ts":"{ts}","values":{{"fill_level":1}}}}"#),
            )
            .await?;
        loop {
            let found = c
                .query_opt("SELECT 1 FROM observations o JOIN sensors s ON s.id = o.sensor_id WHERE s.external_id = $1", &[&sensor])
                .await?;
            if found.is_some() {
                samples.push(sent.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            if sent.elapsed() > Duration::from_secs(30) {
                bail!("probe {sensor} never became queryable");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (rss, cpu1) = hub.usage();
    let cpu_pct = (cpu1 - cpu0) / t0.elapsed().as_secs_f64() * 100.0;
    let achieved = publisher.await??.messages_per_s;
    let backend: String = c
        .query_one("SELECT value FROM cityhub_meta WHERE key = 'backend'", &[])
        .await?
        .get(0);
    let size: i64 = if backend == "timescaledb" {
        c.batch_execute("SELECT compress_chunk(ch, if_not_compressed => true) FROM show_chunks('observations') ch").await?;
        c.query_one("SELECT hypertable_size('observations')", &[])
            .await?
            .get(0)
    } else {
        c.query_one("SELECT sum(pg_total_relation_size(relid))::bigint FROM pg_partition_tree('observations')", &[]).await?.get(0)
    };
    let rows: i64 = c
        .query_one("SELECT count(*) FROM observations", &[])
        .await?
        .get(0);
    let (p50_ms, p99_ms, samples) = percentiles(samples);
    Ok(Freshness {
        achieved,
        p50_ms,
        p99_ms,
        samples,
        rss_mib: rss as f64 / 1024.0,
        cpu_pct,
        bytes_per_reading: size as f64 / rows.max(1) as f64,
        backend,
    })
}

struct ApiLatency {
    sensors: i64,
    list_bytes: usize,
    list_ms: (f64, f64, usize),
    readings_ms: (f64, f64, usize),
    buckets: usize,
    history_rows: i64,
    achieved: f64,
}

/// p50, p99 and the number of samples.
fn percentiles(mut v: Vec<f64>) -> (f64, f64, usize) {
    v.sort_by(f64::total_cmp);
    let q = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    (q(0.5), q(0.99), v.len())
}

/// Query latency of the open-data API while the hub ingests: `GET /api/v1/sensors`
/// over 10,000 placed sensors with latest values, and a 30-day hourly readings query
/// of one sensor with 30 days of 5-minute history. One client, requests back to back.
async fn api_latency(admin: &str, rate: f64, window: Duration) -> Result<ApiLatency> {
    const SENSORS: u64 = 10_000;
    let db = Db::create(admin).await?;
    db.migrate()?;
    // The fleet's places, through the registry import a city would use.
    let features: Vec<serde_json::Value> = (0..SENSORS)
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
    let broker = Broker::start()?;
    let hub = Hub::start_with(&db, &broker, &[("CITYHUB_HTTP_RATE_LIMIT_PER_S", "0")]).await?;

    // 30 days of one bin every 5 minutes, one day per message (`readings` array).
    let mut opts = MqttOptions::new("bench-history", "127.0.0.1", broker.port);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut el) = AsyncClient::new(opts, 100);
    let acks = tokio::spawn(async move {
        let mut n = 0;
        while n < 30 {
            match el.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => n += 1,
                Ok(_) => {}
                Err(e) => return Err(anyhow::anyhow!("history publisher: {e:?}")),
            }
        }
        Ok(())
    });
    let now = Utc::now();
    for day in 0..30 {
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
    acks.await??;
    let c = db.client().await?;
    let history = || async {
        c.query_one(
            "SELECT count(*) FROM observations o JOIN sensors s ON s.id = o.sensor_id WHERE s.external_id = 'bin-history'",
            &[],
        )
        .await
        .map(|r| r.get::<_, i64>(0))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while history().await? < 30 * 288 {
        if Instant::now() > deadline {
            bail!("the 30-day history was not stored");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Ingest at the given rate across the 10,000 bins, and query meanwhile.
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
    let latest = || async {
        c.query_one("SELECT count(DISTINCT sensor_id) FROM latest", &[])
            .await
            .map(|r| r.get::<_, i64>(0))
    };
    while latest().await? < SENSORS as i64 {
        if started.elapsed() > window / 2 {
            bail!("the 10,000 bins did not all report within half the window");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{}", hub.http);
    let from =
        (now - chrono::Duration::days(30)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let readings_url = format!(
        "{base}/api/v1/sensors/bin-history/readings?metric=fill_level&bucket=1h&from={}&to={}",
        url::form_urlencoded::byte_serialize(from.as_bytes()).collect::<String>(),
        url::form_urlencoded::byte_serialize(
            now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                .as_bytes()
        )
        .collect::<String>(),
    );
    let (mut list, mut series) = (Vec::new(), Vec::new());
    let (mut list_bytes, mut buckets, mut sensors) = (0, 0, 0);
    while started.elapsed() < window {
        let t = Instant::now();
        let body = http
            .get(format!("{base}/api/v1/sensors"))
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?;
        list.push(t.elapsed().as_secs_f64() * 1000.0);
        list_bytes = body.len();
        let t = Instant::now();
        let body = http
            .get(&readings_url)
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?;
        series.push(t.elapsed().as_secs_f64() * 1000.0);
        if buckets == 0 {
            let v: serde_json::Value = serde_json::from_slice(&body)?;
            buckets = v["readings"].as_array().map_or(0, Vec::len);
            let fc: serde_json::Value = serde_json::from_slice(
                &http
                    .get(format!("{base}/api/v1/sensors"))
                    .send()
                    .await?
                    .bytes()
                    .await?,
            )?;
            sensors = fc["features"].as_array().map_or(0, Vec::len) as i64;
        }
    }
    let achieved = publisher.await??.messages_per_s;
    if list.is_empty() {
        bail!("no query finished within the window");
    }
    Ok(ApiLatency {
        sensors,
        list_bytes,
        list_ms: percentiles(list),
        readings_ms: percentiles(series),
        buckets,
        history_rows: history().await?,
        achieved,
    })
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
    let mut rows: Vec<Row> = Vec::new();
    let mut add = |measurement: &str, value: f64, unit: &str, settings: String| {
        let result = format!("{} {unit}", fmt(value));
        eprintln!("{measurement}: {result}");
        rows.push(Row {
            measurement: measurement.into(),
            result,
            value,
            unit: unit.into(),
            settings,
        });
    };
    let w = window.as_secs();

    let v = broker_ceiling(n).await?;
    add(
        "broker ceiling (publisher -> bare subscriber, QoS 1)",
        v,
        "msg/s",
        format!("{n} messages, 4 connections, 3-metric JSON"),
    );
    let v = db_ceiling(&args.pg, n * 2).await?;
    add(
        "database ceiling (binary COPY into observations)",
        v,
        "rows/s",
        format!("{} rows, 100,000 per transaction", n * 2),
    );
    let mut best = 0.0f64;
    for (sensors, metrics) in [(1000u64, 3u8), (1000, 6), (10_000, 3), (10_000, 6)] {
        let (m, r) = hub_sustained(&args.pg, sensors, metrics, window).await?;
        if sensors == 1000 && metrics == 3 {
            best = m;
        }
        add(
            &format!("cityhub end to end, {metrics}-metric messages, {sensors} sensors"),
            m,
            "msg/s",
            format!("{w} s, publisher flat out; {} rows/s", fmt(r)),
        );
    }
    match baseline(&args.pg, &args.python, 1000, window).await {
        Ok((m, r)) => add(
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
    let f = freshness(&args.pg, best / 2.0, window).await?;
    let at = format!(
        "load at half the 3-metric 1000-sensor rate ({} msg/s asked, {} sent), {} probes",
        fmt(best / 2.0),
        fmt(f.achieved),
        f.samples
    );
    add(
        "freshness p50 (publish -> queryable)",
        f.p50_ms,
        "ms",
        at.clone(),
    );
    add(
        "freshness p99 (publish -> queryable)",
        f.p99_ms,
        "ms",
        at.clone(),
    );
    add("hub resident memory", f.rss_mib, "MiB", at.clone());
    add("hub CPU", f.cpu_pct, "% of one core", at.clone());
    add(
        "storage per reading",
        f.bytes_per_reading,
        "bytes",
        format!(
            "{} (table + indexes{})",
            f.backend,
            if f.backend == "timescaledb" {
                ", compressed"
            } else {
                ""
            }
        ),
    );

    let a = api_latency(&args.pg, best / 2.0, window).await?;
    let under = format!(
        "one client, back to back, while ingesting {} msg/s (half the 3-metric 1000-sensor rate) into 10,000 bins",
        fmt(a.achieved)
    );
    for (what, (p50, p99, n), detail) in [
        (
            "GET /api/v1/sensors",
            a.list_ms,
            format!(
                "{} sensors with position and latest values, {} KiB of GeoJSON",
                a.sensors,
                a.list_bytes / 1024
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
    ] {
        add(
            &format!("API {what}, p50"),
            p50,
            "ms",
            format!("{detail}; {n} requests; {under}"),
        );
        add(
            &format!("API {what}, p99"),
            p99,
            "ms",
            format!("{detail}; {n} requests; {under}"),
        );
    }

    println!(
        "\nHardware: {hw}; PostgreSQL and Mosquitto (config/mosquitto.conf) on the same machine.\n"
    );
    println!("| measurement | result | settings |\n|---|---|---|");
    for r in &rows {
        println!("| {} | {} | {} |", r.measurement, r.result, r.settings);
    }
    let out = root().join("target/bench");
    std::fs::create_dir_all(&out)?;
    let json = serde_json::json!({ "hardware": hw, "window_s": w, "measured_at": Utc::now(), "rows": rows });
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    eprintln!("written: {}", out.join("results.json").display());
    Ok(())
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
    } else {
        format!("{v:.1}")
    }
}
