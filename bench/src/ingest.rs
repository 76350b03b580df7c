//! Ingestion rows: the broker and database ceilings, the hub flat out, the
//! hand-written baseline, and freshness at half the hub's rate.

use crate::setup::{ensure_partitions, hub, percentiles, spec};
use anyhow::{bail, Context, Result};
use chrono::Utc;
use cityhub_sim::load;
use cityhub_testkit::{workspace_root, Broker, TestDb};
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// QoS 1 messages/s from the load publisher to a bare subscriber, no hub.
pub async fn broker_ceiling(n: u64) -> Result<f64> {
    let broker = Broker::start();
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

/// Rows/s of binary COPY into `observations` with its indexes.
pub async fn db_ceiling(admin: &str, rows: u64) -> Result<f64> {
    use futures_util::pin_mut;
    use tokio_postgres::binary_copy::BinaryCopyInWriter;
    use tokio_postgres::types::Type;
    let db = TestDb::on(admin).await;
    db.migrate().await?;
    let c = db.client().await;
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
            .copy_in("COPY observations_data (time, sensor_id, metric_id, value) FROM STDIN BINARY")
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
pub async fn hub_sustained(
    admin: &str,
    sensors: u64,
    metrics: u8,
    window: Duration,
) -> Result<(f64, f64)> {
    let db = TestDb::on(admin).await;
    let broker = Broker::start();
    let _hub = hub(&db, &broker, &[]).await;
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
    let rows = db.observations().await as f64;
    let secs = started.elapsed().as_secs_f64();
    publisher.abort();
    Ok((rows / f64::from(metrics) / secs, rows / secs))
}

/// The hand-written Python bridge under the same flat-out load.
pub async fn baseline(
    admin: &str,
    python: &str,
    sensors: u64,
    window: Duration,
) -> Result<(f64, f64)> {
    let db = TestDb::on(admin).await;
    db.migrate().await?;
    ensure_partitions(&db.client().await).await?;
    let broker = Broker::start();
    let mut bridge = Command::new(python)
        .arg(workspace_root().join("bench/baseline_bridge.py"))
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
    let rows = db.observations().await as f64;
    let secs = started.elapsed().as_secs_f64();
    publisher.abort();
    // A bridge that died (no paho in this Python, a failed connect) measured nothing.
    let exited = bridge.try_wait()?;
    let _ = bridge.kill();
    let _ = bridge.wait();
    if let Some(status) = exited {
        anyhow::bail!("the bridge exited early ({status})");
    }
    Ok((rows / 3.0 / secs, rows / secs))
}

pub struct Freshness {
    /// What the paced publisher really sent.
    pub achieved: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub samples: usize,
    pub rss_mib: f64,
    pub cpu_pct: f64,
    pub bytes_per_reading: f64,
    pub backend: String,
}

/// Publish-to-queryable latency of probe readings while the hub runs at `rate`; memory,
/// CPU, and storage per reading at the end.
pub async fn freshness(admin: &str, rate: f64, window: Duration) -> Result<Freshness> {
    let db = TestDb::on(admin).await;
    let broker = Broker::start();
    let hub = hub(&db, &broker, &[]).await;
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
    let c = db.client().await;
    let cpu0 = hub.cpu_seconds();
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
    let (rss, cpu1) = (hub.rss_kib(), hub.cpu_seconds());
    let cpu_pct = (cpu1 - cpu0) / t0.elapsed().as_secs_f64() * 100.0;
    let achieved = publisher.await??.messages_per_s;
    let backend = crate::setup::backend(&db).await?;
    let size: i64 = if backend == "timescaledb" {
        c.batch_execute("SELECT compress_chunk(ch, if_not_compressed => true) FROM show_chunks('observations_data') ch").await?;
        c.query_one("SELECT hypertable_size('observations_data')", &[])
            .await?
            .get(0)
    } else {
        c.query_one("SELECT sum(pg_total_relation_size(relid))::bigint FROM pg_partition_tree('observations_data')", &[]).await?.get(0)
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
