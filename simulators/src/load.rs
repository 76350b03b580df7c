//! A QoS 1 load publisher: several plain TCP connections, each pipelining
//! PUBLISH packets (encoded with rumqttc's MQTT 3.1.1 codec) and counting
//! PUBACKs, so the broker and the hub, not the publisher, are the bottleneck.

use crate::SimError;
use bytes::BytesMut;
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use rumqttc::mqttbytes::v4::{Connect, Packet, Publish};
use rumqttc::mqttbytes::QoS;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What a load run publishes.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub messages: u64,
    pub connections: usize,
    /// Distinct sensors (`bin-000001`...): waste bins reporting three metrics.
    pub sensors: u64,
    /// Timestamp of the first round; each round of all sensors is `step` later.
    pub start: DateTime<Utc>,
    pub step: Duration,
    /// PUBLISH packets in flight per connection before waiting for PUBACKs.
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
    let t = spec.start + spec.step * round as i32;
    let fill = (i * 37 % 1000) as f64 / 10.0;
    let payload = format!(
        r#"{{"ts":"{}","values":{{"fill_level":{fill},"temperature":{},"battery":{}}}}}"#,
        t.to_rfc3339_opts(SecondsFormat::Millis, true),
        (i % 300) as f64 / 10.0,
        100 - (i % 50)
    );
    (
        format!("cityhub/v1/waste_bin/bin-{sensor:06}"),
        payload.into_bytes(),
    )
}

async fn connection(
    addr: String,
    id: String,
    spec: LoadSpec,
    from: u64,
    to: u64,
) -> Result<u64, SimError> {
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
    // CONNACK
    loop {
        match Packet::read(&mut inbuf, 1 << 20) {
            Ok(Packet::ConnAck(_)) => break,
            Ok(other) => return Err(SimError::Mqtt(format!("expected CONNACK, got {other:?}"))),
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {
                if rd.read_buf(&mut inbuf).await? == 0 {
                    return Err(SimError::Mqtt("connection closed before CONNACK".into()));
                }
            }
            Err(e) => return Err(SimError::Mqtt(format!("{e:?}"))),
        }
    }
    let total = to - from;
    let reader = tokio::spawn(async move {
        let mut acked = 0u64;
        while acked < total {
            match Packet::read(&mut inbuf, 1 << 20) {
                Ok(Packet::PubAck(_)) => acked += 1,
                Ok(_) => {}
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {
                    if rd.read_buf(&mut inbuf).await? == 0 {
                        break;
                    }
                }
                Err(e) => return Err(SimError::Mqtt(format!("{e:?}"))),
            }
        }
        Ok::<_, SimError>((acked, rd, inbuf))
    });
    let mut pkid: u16 = 0;
    let mut i = from;
    while i < to {
        let chunk_end = (i + spec.window.max(1)).min(to);
        for j in i..chunk_end {
            let (topic, payload) = message(&spec, j);
            pkid = pkid.wrapping_add(1).max(1);
            let mut p = Publish::new(topic, QoS::AtLeastOnce, payload);
            p.pkid = pkid;
            p.write(&mut buf)
                .map_err(|e| SimError::Mqtt(format!("{e:?}")))?;
        }
        wr.write_all(&buf).await?;
        buf.clear();
        i = chunk_end;
    }
    let (acked, _rd, _) = reader.await.map_err(|e| SimError::Mqtt(e.to_string()))??;
    // DISCONNECT
    wr.write_all(&[0xE0, 0x00]).await?;
    Ok(acked)
}

/// Publishes `spec.messages` messages over `spec.connections` connections and
/// waits until every PUBACK arrived.
pub async fn run(broker_url: &str, spec: &LoadSpec) -> Result<LoadReport, SimError> {
    let u = url::Url::parse(broker_url).map_err(|e| SimError::Url(e.to_string()))?;
    let addr = format!(
        "{}:{}",
        u.host_str().unwrap_or("127.0.0.1"),
        u.port().unwrap_or(1883)
    );
    let n = spec.connections.max(1) as u64;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..n {
        let from = spec.messages * c / n;
        let to = spec.messages * (c + 1) / n;
        tasks.push(tokio::spawn(connection(
            addr.clone(),
            format!("cityhub-load-{}-{c}", std::process::id()),
            spec.clone(),
            from,
            to,
        )));
    }
    let mut acknowledged = 0;
    for t in tasks {
        acknowledged += t.await.map_err(|e| SimError::Mqtt(e.to_string()))??;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(LoadReport {
        messages: spec.messages,
        acknowledged,
        rows: spec.messages * 3,
        seconds,
        messages_per_s: spec.messages as f64 / seconds,
    })
}
