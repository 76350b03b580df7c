//! A QoS 1 load publisher: several plain TCP connections, each pipelining
//! PUBLISH packets (encoded with rumqttc's MQTT 3.1.1 codec) and counting
//! PUBACKs, so the broker and the hub, not the publisher, are the bottleneck.

use crate::SimError;
use bytes::BytesMut;
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use rumqttc::mqttbytes::v4::{Connect, Packet, Publish};
use rumqttc::mqttbytes::QoS;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What a load run publishes.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// At most this many messages...
    pub messages: u64,
    /// ...and no more once this instant has passed.
    pub stop_at: Option<Instant>,
    /// Total messages per second over all connections; as fast as possible when unset.
    pub rate: Option<f64>,
    pub connections: usize,
    /// Distinct sensors; each round of all sensors is `step` later than the previous.
    pub sensors: u64,
    /// 3: waste bins (fill level, temperature, battery); 6: air-quality stations.
    pub metrics: u8,
    pub start: DateTime<Utc>,
    pub step: Duration,
    /// PUBLISH packets written per system call on each connection.
    pub window: u64,
}

/// The measured result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadReport {
    pub messages: u64,
    pub acknowledged: u64,
    pub rows: u64,
    pub seconds: f64,
    pub messages_per_s: f64,
}

/// Topic and payload of message `i`: sensor `i % sensors`, round `i / sensors`.
pub fn message(spec: &LoadSpec, i: u64) -> (String, Vec<u8>) {
    let sensor = i % spec.sensors;
    let round = i / spec.sensors;
    let t = (spec.start + spec.step * round as i32).to_rfc3339_opts(SecondsFormat::Millis, true);
    let a = (i * 37 % 1000) as f64 / 10.0;
    if spec.metrics >= 6 {
        let payload = format!(
            r#"{{"ts":"{t}","values":{{"pm10":{a},"pm2_5":{},"no2":{},"o3":{},"temperature":{},"humidity":{}}}}}"#,
            a * 0.7,
            (i % 90) as f64,
            (i % 120) as f64,
            (i % 300) as f64 / 10.0,
            (i % 100) as f64
        );
        (
            format!("cityhub/v1/air_quality/aq-{sensor:06}"),
            payload.into_bytes(),
        )
    } else {
        let payload = format!(
            r#"{{"ts":"{t}","values":{{"fill_level":{a},"temperature":{},"battery":{}}}}}"#,
            (i % 300) as f64 / 10.0,
            100 - (i % 50)
        );
        (
            format!("cityhub/v1/waste_bin/bin-{sensor:06}"),
            payload.into_bytes(),
        )
    }
}

async fn read_packet(
    rd: &mut tokio::net::tcp::OwnedReadHalf,
    buf: &mut BytesMut,
) -> Result<Option<Packet>, SimError> {
    loop {
        match Packet::read(buf, 1 << 20) {
            Ok(p) => return Ok(Some(p)),
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {
                if rd.read_buf(buf).await? == 0 {
                    return Ok(None);
                }
            }
            Err(e) => return Err(SimError::Mqtt(format!("{e:?}"))),
        }
    }
}

/// Connection `c` of `n` publishes messages `c, c + n, c + 2n, ...` below `spec.messages`,
/// so that all connections together advance through the rounds in time order.
async fn connection(
    addr: String,
    id: String,
    spec: LoadSpec,
    c: u64,
    n: u64,
) -> Result<(u64, u64), SimError> {
    let mut stream = TcpStream::connect(&addr).await?;
    stream.set_nodelay(true)?;
    let mut buf = BytesMut::with_capacity(1 << 20);
    let mut connect = Connect::new(id);
    connect.keep_alive = 60;
    connect
        .write(&mut buf)
        .map_err(|e| SimError::Mqtt(format!("{e:?}")))?;
    stream.write_all(&buf).await?;
    buf.clear();
    let (mut rd, mut wr) = stream.into_split();
    let mut inbuf = BytesMut::with_capacity(1 << 16);
    match read_packet(&mut rd, &mut inbuf).await? {
        Some(Packet::ConnAck(_)) => {}
        other => return Err(SimError::Mqtt(format!("expected CONNACK, got {other:?}"))),
    }
    // The reader counts PUBACKs until it has as many as the writer sent.
    let sent = Arc::new(AtomicU64::new(u64::MAX));
    let reader = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut acked = 0u64;
            while acked < sent.load(Ordering::Acquire) {
                match tokio::time::timeout(
                    std::time::Duration::from_millis(200),
                    read_packet(&mut rd, &mut inbuf),
                )
                .await
                {
                    Ok(Ok(Some(Packet::PubAck(_)))) => acked += 1,
                    Ok(Ok(Some(_))) => {}
                    Ok(Ok(None)) => break,
                    Ok(Err(e)) => return Err(e),
                    Err(_) => {} // re-check `sent`
                }
            }
            Ok::<_, SimError>(acked)
        })
    };
    let started = Instant::now();
    let mut pkid: u16 = 0;
    // k counts this connection's messages; message k is number c + k * n overall.
    let count = spec.messages / n + u64::from(c < spec.messages % n);
    let mut k = 0u64;
    while k < count && spec.stop_at.is_none_or(|s| Instant::now() < s) {
        let chunk_end = (k + spec.window.max(1)).min(count);
        if let Some(rate) = spec.rate {
            let due = started + std::time::Duration::from_secs_f64(k as f64 * n as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        for j in k..chunk_end {
            let (topic, payload) = message(&spec, c + j * n);
            pkid = pkid.wrapping_add(1).max(1);
            let mut p = Publish::new(topic, QoS::AtLeastOnce, payload);
            p.pkid = pkid;
            p.write(&mut buf)
                .map_err(|e| SimError::Mqtt(format!("{e:?}")))?;
        }
        wr.write_all(&buf).await?;
        buf.clear();
        k = chunk_end;
    }
    let total = k;
    sent.store(total, Ordering::Release);
    let acked = reader.await.map_err(|e| SimError::Mqtt(e.to_string()))??;
    wr.write_all(&[0xE0, 0x00]).await?; // DISCONNECT
    Ok((total, acked))
}

/// Publishes over `spec.connections` connections until `spec.messages` or
/// `spec.stop_at`, and waits until every PUBACK arrived. Plain TCP only: it writes
/// raw packets to measure the broker and the hub, not a TLS stack.
pub async fn run(broker_url: &str, spec: &LoadSpec) -> Result<LoadReport, SimError> {
    let broker = cityhub_mqtt::Endpoint::parse(broker_url)?;
    if broker.tls {
        return Err(SimError::Options(
            "the load publisher speaks plain MQTT (mqtt://) only".into(),
        ));
    }
    let addr = format!("{}:{}", broker.host, broker.port);
    let n = spec.connections.max(1) as u64;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..n {
        let id = format!(
            "cityhub-load-{}-{c}-{}",
            std::process::id(),
            rand::random::<u32>()
        );
        tasks.push(tokio::spawn(connection(
            addr.clone(),
            id,
            spec.clone(),
            c,
            n,
        )));
    }
    let (mut messages, mut acknowledged) = (0, 0);
    for t in tasks {
        let (s, a) = t.await.map_err(|e| SimError::Mqtt(e.to_string()))??;
        messages += s;
        acknowledged += a;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(LoadReport {
        messages,
        acknowledged,
        rows: messages * u64::from(spec.metrics.clamp(3, 6)),
        seconds,
        messages_per_s: messages as f64 / seconds,
    })
}
