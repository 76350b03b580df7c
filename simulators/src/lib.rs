//! Simulated sensors of a Cremona fleet and a QoS 1 load publisher. Messages
//! are deterministic for a seed, and the publisher reports exactly what the
//! broker acknowledged, so tests can check every message arrived once.

use chrono::{DateTime, Duration, Utc};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde_json::json;

/// Cremona's extent (DESIGN.md section 7).
pub const CREMONA: (f64, f64, f64, f64) = (9.99, 45.11, 10.07, 45.16);

/// The payload encodings the simulator speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Native,
    Senml,
}

/// One simulated sensor.
#[derive(Debug, Clone)]
pub struct SimSensor {
    pub id: String,
    pub kind: &'static str,
    pub lat: f64,
    pub lon: f64,
}

/// A message ready to publish, with what it carries for later checks.
#[derive(Debug, Clone)]
pub struct SimMessage {
    pub topic: String,
    pub payload: Vec<u8>,
    pub sensor: String,
    pub time: DateTime<Utc>,
    pub values: Vec<(&'static str, f64)>,
}

/// (metric, low, high) of the values a simulated sensor reports.
type MetricSpec = (&'static str, f64, f64);

/// (kind, id prefix, metrics).
const KINDS: &[(&str, &str, &[MetricSpec])] = &[
    (
        "waste_bin",
        "bin",
        &[
            ("fill_level", 0.0, 100.0),
            ("temperature", -5.0, 35.0),
            ("battery", 20.0, 100.0),
        ],
    ),
    (
        "streetlight",
        "lamp",
        &[
            ("power", 0.0, 150.0),
            ("energy", 0.0, 5000.0),
            ("dimming", 0.0, 100.0),
        ],
    ),
    (
        "bike_counter",
        "bike",
        &[
            ("count_in", 0.0, 120.0),
            ("count_out", 0.0, 120.0),
            ("interval_s", 900.0, 900.0),
        ],
    ),
    (
        "air_quality",
        "aq",
        &[
            ("pm10", 5.0, 90.0),
            ("pm2_5", 3.0, 60.0),
            ("no2", 5.0, 120.0),
            ("o3", 5.0, 150.0),
            ("temperature", -5.0, 35.0),
            ("humidity", 20.0, 100.0),
        ],
    ),
];

/// A deterministic fleet: `per_kind` sensors of each of the four kinds, inside Cremona.
pub fn fleet(seed: u64, per_kind: usize) -> Vec<SimSensor> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut out = Vec::new();
    for (kind, prefix, _) in KINDS {
        for i in 0..per_kind {
            out.push(SimSensor {
                id: format!("{prefix}-{i:05}"),
                kind,
                lon: rng.gen_range(CREMONA.0..CREMONA.2),
                lat: rng.gen_range(CREMONA.1..CREMONA.3),
            });
        }
    }
    out
}

/// `rounds` reports of every sensor, one `step` apart from `start`, in round order.
/// Values stay within each metric's valid range; times are whole milliseconds.
pub fn messages(
    seed: u64,
    sensors: &[SimSensor],
    start: DateTime<Utc>,
    step: Duration,
    rounds: usize,
    format: Format,
) -> Vec<SimMessage> {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x5eed);
    let mut out = Vec::with_capacity(sensors.len() * rounds);
    for round in 0..rounds {
        let time = start + step * round as i32;
        for s in sensors {
            let metrics = KINDS
                .iter()
                .find(|k| k.0 == s.kind)
                .map(|k| k.2)
                .unwrap_or(&[]);
            let values: Vec<(&'static str, f64)> = metrics
                .iter()
                .map(|(m, lo, hi)| {
                    let v = if lo == hi {
                        *lo
                    } else {
                        rng.gen_range(*lo..*hi)
                    };
                    (*m, (v * 100.0).round() / 100.0)
                })
                .collect();
            let topic = format!("cityhub/v1/{}/{}", s.kind, s.id);
            let payload = encode(format, s, time, &values, round == 0);
            out.push(SimMessage {
                topic,
                payload,
                sensor: s.id.clone(),
                time,
                values,
            });
        }
    }
    out
}

fn encode(
    format: Format,
    s: &SimSensor,
    time: DateTime<Utc>,
    values: &[(&str, f64)],
    with_location: bool,
) -> Vec<u8> {
    match format {
        Format::Native => {
            let vals: serde_json::Map<_, _> = values
                .iter()
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect();
            let mut doc = json!({ "ts": time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true), "values": vals });
            if with_location {
                doc["location"] = json!({ "lat": s.lat, "lon": s.lon });
            }
            serde_json::to_vec(&doc).unwrap_or_default()
        }
        Format::Senml => {
            let bt = time.timestamp_millis() as f64 / 1000.0;
            let mut recs = Vec::new();
            for (i, (k, v)) in values.iter().enumerate() {
                let mut r = json!({ "n": k, "v": v });
                if i == 0 {
                    r["bn"] = json!(format!("{}:", s.id));
                    r["bt"] = json!(bt);
                }
                recs.push(r);
            }
            if with_location {
                recs.push(json!({ "n": "lat", "u": "lat", "v": s.lat }));
                recs.push(json!({ "n": "lon", "u": "lon", "v": s.lon }));
            }
            serde_json::to_vec(&recs).unwrap_or_default()
        }
    }
}

/// What a publish run achieved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub published: u64,
    /// PUBACKs received: messages the broker took responsibility for.
    pub acknowledged: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("broker URL: {0}")]
    Url(String),
    #[error("MQTT: {0}")]
    Mqtt(String),
}

/// Publishes `msgs` at QoS 1 (or `qos`) and waits until the broker acknowledged all of them.
pub async fn publish(
    broker_url: &str,
    client_id: &str,
    msgs: &[SimMessage],
    qos: QoS,
) -> Result<Report, SimError> {
    let u = url::Url::parse(broker_url).map_err(|e| SimError::Url(e.to_string()))?;
    let host = u
        .host_str()
        .ok_or_else(|| SimError::Url("no host".into()))?
        .to_owned();
    let mut opts = MqttOptions::new(client_id, host, u.port().unwrap_or(1883));
    opts.set_keep_alive(std::time::Duration::from_secs(30))
        .set_outgoing_inflight_upper_limit(1000);
    let (client, mut el) = AsyncClient::new(opts, 1000);
    let total = msgs.len() as u64;
    let pub_client = client.clone();
    let owned: Vec<(String, Vec<u8>)> = msgs
        .iter()
        .map(|m| (m.topic.clone(), m.payload.clone()))
        .collect();
    let sender = tokio::spawn(async move {
        for (t, p) in owned {
            if pub_client.publish(t, qos, false, p).await.is_err() {
                break;
            }
        }
    });
    let mut report = Report {
        published: 0,
        acknowledged: 0,
    };
    while report.acknowledged < total || (qos == QoS::AtMostOnce && report.published < total) {
        match el.poll().await {
            Ok(Event::Outgoing(rumqttc::Outgoing::Publish(_))) => report.published += 1,
            Ok(Event::Incoming(Packet::PubAck(_))) => report.acknowledged += 1,
            Ok(_) => {}
            Err(e) => {
                sender.abort();
                return Err(SimError::Mqtt(e.to_string()));
            }
        }
        if qos == QoS::AtMostOnce && report.published == total {
            break;
        }
    }
    let _ = sender.await;
    let _ = client.disconnect().await;
    while let Ok(ev) = el.poll().await {
        if matches!(ev, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
            break;
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_messages() {
        let start = Utc::now();
        let a = messages(
            7,
            &fleet(7, 3),
            start,
            Duration::minutes(15),
            2,
            Format::Native,
        );
        let b = messages(
            7,
            &fleet(7, 3),
            start,
            Duration::minutes(15),
            2,
            Format::Native,
        );
        assert_eq!(a.len(), 24);
        assert!(a
            .iter()
            .zip(&b)
            .all(|(x, y)| x.payload == y.payload && x.topic == y.topic));
        for s in fleet(7, 3) {
            assert!(
                (CREMONA.1..CREMONA.3).contains(&s.lat) && (CREMONA.0..CREMONA.2).contains(&s.lon)
            );
        }
    }
}
