//! Payload formats the simulator speaks: cityhub's native JSON and SenML, and
//! the uplinks of the network servers cities use (ChirpStack v4, The Things
//! Stack v3) and Sensor.Community's JSON, shaped as those servers publish them.

use crate::fleet::SimSensor;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Map, Value};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Native,
    Senml,
    Chirpstack,
    Ttn,
    SensorCommunity,
}

impl Format {
    pub fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "native" => Format::Native,
            "senml" => Format::Senml,
            "chirpstack" => Format::Chirpstack,
            "ttn" | "tts" => Format::Ttn,
            "sensor-community" | "sensor_community" | "sensorcommunity" => Format::SensorCommunity,
            other => {
                return Err(format!(
                    "unknown format {other:?} (native, senml, chirpstack, ttn, sensor-community)"
                ))
            }
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Format::Native => "native",
            Format::Senml => "senml",
            Format::Chirpstack => "chirpstack",
            Format::Ttn => "ttn",
            Format::SensorCommunity => "sensor_community",
        }
    }
    /// Whether the format can carry readings of `kind` (Sensor.Community is air quality only).
    pub fn carries(self, kind: &str) -> bool {
        self != Format::SensorCommunity || kind == "air_quality"
    }
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A device EUI derived from the sensor id, stable across runs.
pub fn dev_eui(id: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Topic and payload of one report in `format`.
pub fn encode(
    format: Format,
    s: &SimSensor,
    t: DateTime<Utc>,
    values: &[(String, f64)],
    with_location: bool,
    fcnt: u32,
) -> (String, Vec<u8>) {
    let vals: Map<String, Value> = values.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    let (topic, doc) = match format {
        Format::Native => {
            let mut doc = json!({ "ts": ts(t), "values": vals });
            if with_location {
                doc["location"] = json!({ "lat": s.lat, "lon": s.lon });
            }
            (format!("cityhub/v1/{}/{}", s.kind, s.id), doc)
        }
        Format::Senml => {
            let bt = t.timestamp_millis() as f64 / 1000.0;
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
            (
                format!("cityhub/v1/{}/{}", s.kind, s.id),
                Value::Array(recs),
            )
        }
        Format::Chirpstack => {
            let eui = dev_eui(&s.id);
            let app = format!("00000000-0000-4000-8000-{:012x}", kind_number(&s.kind));
            let mut object = vals.clone();
            // Ultrasonic bin sensors report the distance to the waste, not the fill level.
            if let (Some(depth), Some(fill)) = (
                s.depth_mm(),
                object.remove("fill_level").and_then(|v| v.as_f64()),
            ) {
                object.insert(
                    "distance".into(),
                    json!((depth * (1.0 - fill / 100.0)).round()),
                );
            }
            let doc = json!({
                "deduplicationId": format!("{:08x}-0000-4000-8000-{:012x}", fcnt, u64::from_str_radix(&eui[4..], 16).unwrap_or(0)),
                "time": ts(t),
                "deviceInfo": {
                    "tenantId": "52f14cd4-c6f1-4fbd-8f87-4025e1d49242",
                    "tenantName": "Comune di Cremona",
                    "applicationId": app,
                    "applicationName": format!("cityhub-{}", s.kind),
                    "deviceProfileId": app,
                    "deviceProfileName": s.kind,
                    "deviceName": s.id,
                    "devEui": eui,
                    "tags": { "kind": s.kind, "sensor_id": s.id }
                },
                "devAddr": &eui[8..],
                "adr": true, "dr": 5, "fCnt": fcnt, "fPort": 2, "confirmed": false,
                "data": "AQID",
                "object": object,
                "rxInfo": [{
                    "gatewayId": "a84041ffff1f4b70", "uplinkId": fcnt % 65536, "time": ts(t),
                    "rssi": -97, "snr": 7.5, "channel": 3,
                    "location": { "latitude": s.lat, "longitude": s.lon },
                    "context": "a72XTA==", "metadata": { "region_name": "eu868", "region_common_name": "EU868" }
                }],
                "txInfo": { "frequency": 868_100_000, "modulation": { "lora": { "bandwidth": 125_000, "spreadingFactor": 7, "codeRate": "CR_4_5" } } }
            });
            (format!("application/{app}/device/{eui}/event/up"), doc)
        }
        Format::Ttn => {
            let eui = dev_eui(&s.id).to_uppercase();
            let app = format!("cityhub-{}", s.kind.replace('_', "-"));
            let doc = json!({
                "end_device_ids": {
                    "device_id": s.id.to_lowercase(),
                    "application_ids": { "application_id": app },
                    "dev_eui": eui,
                    "dev_addr": &eui[8..]
                },
                "correlation_ids": [format!("as:up:{fcnt}")],
                "received_at": ts(t),
                "uplink_message": {
                    "f_port": 2, "f_cnt": fcnt, "frm_payload": "AQID",
                    "decoded_payload": vals,
                    "rx_metadata": [{ "gateway_ids": { "gateway_id": "cremona-gw-1" }, "rssi": -97, "channel_rssi": -97, "snr": 7.5 }],
                    "settings": { "data_rate": { "lora": { "bandwidth": 125000, "spreading_factor": 7 } }, "frequency": "868100000" },
                    "received_at": ts(t),
                    "locations": { "user": { "latitude": s.lat, "longitude": s.lon, "source": "SOURCE_REGISTRY" } }
                }
            });
            (
                format!("v3/{app}@cremona/devices/{}/up", s.id.to_lowercase()),
                doc,
            )
        }
        Format::SensorCommunity => {
            let chip = sensor_community_chip(&s.id);
            let map = |k: &str| match k {
                "pm10" => Some("SDS_P1"),
                "pm2_5" => Some("SDS_P2"),
                "temperature" => Some("BME280_temperature"),
                "humidity" => Some("BME280_humidity"),
                _ => None,
            };
            let data: Vec<Value> = values
                .iter()
                .filter_map(|(k, v)| {
                    map(k).map(|vt| json!({ "value_type": vt, "value": format!("{v:.2}") }))
                })
                .collect();
            let doc = json!({ "esp8266id": chip.to_string(), "software_version": "NRZ-2020-133", "sensordatavalues": data });
            (format!("sensor-community/{chip}"), doc)
        }
    };
    (topic, serde_json::to_vec(&doc).unwrap_or_default())
}

/// The airrohr chip id the simulator gives sensor `id`.
pub fn sensor_community_chip(id: &str) -> u32 {
    u32::from_str_radix(&dev_eui(id)[10..], 16).unwrap_or(0) % 10_000_000
}

/// What an ultrasonic sensor in a bin `depth` mm deep reads at `fill` %: whole millimetres.
pub fn distance_mm(depth: f64, fill: f64) -> f64 {
    (depth * (1.0 - fill / 100.0)).round()
}

fn kind_number(kind: &str) -> u64 {
    u64::from_str_radix(&dev_eui(kind)[..12], 16).unwrap_or(0)
}
