//! Payload decoding and validation: topic -> (kind, sensor), payload -> readings.
//! Every problem is collected with its [`RejectReason`] and a precise reason;
//! valid readings of a partly bad message are kept. Nothing here panics on any input.
//!
//! One module per format: [`native`] JSON and [`senml`] packs on the native topic;
//! the network servers' uplinks ([`chirpstack`], [`ttn`], [`sensor_community`])
//! through the [`adapter`] steps they share; [`check`] holds the validation all use.

mod adapter;
mod check;
mod chirpstack;
mod native;
mod senml;
mod sensor_community;
mod ttn;

use chrono::{DateTime, Utc};
use cityhub_core::{Catalog, GeoPoint, Kind, Name, RejectReason, SensorId};
use serde_json::Value;

use check::{type_name, Ctx};

/// One valid reading of one metric.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub metric: Name,
    pub time: DateTime<Utc>,
    pub value: f64,
}

/// Why (part of) a message was refused.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub code: RejectReason,
    pub reason: String,
}

fn problem(code: RejectReason, reason: impl Into<String>) -> Problem {
    Problem {
        code,
        reason: reason.into(),
    }
}

/// The outcome of decoding one message.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decoded {
    /// Known when the topic names a valid kind and sensor.
    pub sensor: Option<(SensorId, Name)>,
    pub location: Option<GeoPoint>,
    /// The location is a hint (a gateway's position), not the sensor's own.
    pub location_fallback: bool,
    pub readings: Vec<Reading>,
    /// The first [`LISTED_PROBLEMS`] problems, each with its reason.
    pub problems: Vec<Problem>,
    /// Problems past those, counted, not described: a payload of thousands of bad
    /// values would otherwise have the hub write thousands of reasons that no dead
    /// letter or answer keeps.
    pub unlisted: u32,
    /// Records skipped on purpose (SenML string, boolean and data values, and
    /// LwM2M resources that describe a sensor rather than measure): counted, not
    /// dead-lettered.
    pub ignored: u32,
}

/// How many of a message's problems are described: a dead letter keeps about the first
/// ten within its reason's 1,024 bytes, an upload's answer lists each.
pub const LISTED_PROBLEMS: usize = 100;

impl Decoded {
    /// Records a problem, with its reason while fewer than [`LISTED_PROBLEMS`] are
    /// described, else only counted (the reason is then never built).
    pub fn problem(&mut self, code: RejectReason, reason: impl FnOnce() -> String) {
        if self.problems.len() < LISTED_PROBLEMS {
            self.problems.push(Problem {
                code,
                reason: reason(),
            });
        } else {
            self.unlisted += 1;
        }
    }

    /// What follows the described problems' reasons, when some were only counted.
    pub fn unlisted_reason(&self) -> Option<String> {
        (self.unlisted > 0).then(|| format!("and {} more problems, not described", self.unlisted))
    }
}

/// Limits applied while decoding.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_payload_bytes: usize,
    pub max_future: chrono::Duration,
    pub retention: chrono::Duration,
}

impl Limits {
    /// The limits a hub's settings give (`ingest.max_payload_bytes`,
    /// `ingest.max_future_s`, `store.retention_days`).
    pub fn from_settings(settings: &cityhub_core::Settings) -> Self {
        Self {
            max_payload_bytes: settings.ingest.max_payload_bytes,
            max_future: chrono::Duration::seconds(settings.ingest.max_future_s),
            retention: chrono::Duration::days(i64::from(settings.store.retention_days)),
        }
    }
}

/// Decodes native-topic messages and adapter formats against the kind catalogue.
#[derive(Debug, Clone)]
pub struct Decoder {
    catalog: Catalog,
    limits: Limits,
    adapters: Vec<cityhub_core::AdapterDef>,
}

impl Decoder {
    pub fn new(catalog: Catalog, limits: Limits) -> Self {
        Self {
            catalog,
            limits,
            adapters: Vec::new(),
        }
    }

    /// Adds the configured adapters; a topic matching an adapter's filter is read in its format.
    pub fn with_adapters(mut self, adapters: Vec<cityhub_core::AdapterDef>) -> Self {
        self.adapters = adapters;
        self
    }

    /// Size check and JSON parse, shared by every format.
    fn parse_json(&self, payload: &[u8], out: &mut Decoded) -> Option<Value> {
        if payload.len() > self.limits.max_payload_bytes {
            out.problems.push(problem(
                RejectReason::Oversize,
                format!(
                    "payload is {} bytes, above the limit of {}",
                    payload.len(),
                    self.limits.max_payload_bytes
                ),
            ));
            return None;
        }
        // A UTF-8 byte order mark, as some device SDKs write, is not part of the JSON.
        let payload = payload.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(payload);
        match serde_json::from_slice(payload) {
            Ok(v) => Some(v),
            Err(e) if e.to_string().starts_with("number out of range") => {
                out.problems.push(problem(
                    RejectReason::NotFinite,
                    format!("a number is too large for a 64-bit float ({e})"),
                ));
                None
            }
            Err(e) => {
                out.problems.push(problem(
                    RejectReason::MalformedJson,
                    format!("payload is not valid JSON: {e}"),
                ));
                None
            }
        }
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Decodes a message received at `now` on `topic`.
    pub fn decode(&self, topic: &str, payload: &[u8], now: DateTime<Utc>) -> Decoded {
        if let Some(a) = self
            .adapters
            .iter()
            .find(|a| topic_matches(&a.topic(), topic))
        {
            return self.decode_adapter(a, payload, now, None);
        }
        let mut out = Decoded::default();
        let kind = match self.route(topic) {
            Ok((kind, sensor)) => {
                out.sensor = Some((sensor, kind.name.clone()));
                kind
            }
            Err(p) => {
                out.problems.push(p);
                return out;
            }
        };
        let Some(doc) = self.parse_json(payload, &mut out) else {
            return out;
        };
        let mut ctx = Ctx::new(kind, now, &self.limits, &mut out);
        match doc {
            Value::Object(obj) => ctx.native(&obj),
            Value::Array(records) => ctx.senml(&records, topic_sensor(topic)),
            other => ctx.push(RejectReason::BadShape, || {
                format!(
                    "payload must be a JSON object (native) or array (SenML), got {}",
                    type_name(&other)
                )
            }),
        }
        out
    }

    /// `cityhub/v1/{kind}/{sensor_id}` -> the configured kind and a valid sensor id.
    fn route(&self, topic: &str) -> Result<(&Kind, SensorId), Problem> {
        let not_native = || {
            problem(
                RejectReason::BadTopic,
                format!("topic {topic:?} is not cityhub/v1/{{kind}}/{{sensor_id}}"),
            )
        };
        let parts: Vec<&str> = topic.split('/').collect();
        let ["cityhub", "v1", kind, sensor] = parts.as_slice() else {
            return Err(not_native());
        };
        let kind = self.catalog.get(kind).ok_or_else(|| {
            problem(
                RejectReason::UnknownKind,
                format!("kind {kind:?} (from the topic) is not configured"),
            )
        })?;
        let sensor = SensorId::parse(sensor)
            .map_err(|e| problem(RejectReason::BadSensorId, format!("topic: {e}")))?;
        Ok((kind, sensor))
    }
}

/// MQTT topic filter matching: `+` is one level, `#` the rest.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut t = topic.split('/');
    for f in filter.split('/') {
        match (f, t.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (f, Some(level)) if f == level => {}
            _ => return false,
        }
    }
    t.next().is_none()
}

fn topic_sensor(topic: &str) -> &str {
    topic.rsplit('/').next().unwrap_or("")
}

/// What the format modules' tests share.
#[cfg(test)]
pub(crate) mod testing {
    use super::{Decoded, Decoder, Limits};
    use chrono::{DateTime, TimeZone, Utc};
    use cityhub_core::{AdapterDef, Settings};

    /// Small limits, so oversize and too-old payloads are easy to make.
    pub fn decoder() -> Decoder {
        limited(1024, 30)
    }

    /// Limits for real uplinks: 64 KiB, and two years back (the captures are older).
    pub fn decoder_with(adapters: Vec<AdapterDef>) -> Decoder {
        limited(64 * 1024, 730).with_adapters(adapters)
    }

    fn limited(max_payload_bytes: usize, retention_days: i64) -> Decoder {
        let s = Settings::builtin().unwrap();
        Decoder::new(
            s.catalog().unwrap(),
            Limits {
                max_payload_bytes,
                max_future: chrono::Duration::minutes(10),
                retention: chrono::Duration::days(retention_days),
            },
        )
    }

    pub fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap()
    }

    pub fn codes(d: &Decoded) -> Vec<&'static str> {
        d.problems.iter().map(|p| p.code.code()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{codes, decoder, now};

    #[test]
    fn each_bad_class() {
        let dec = decoder();
        let case = |topic: &str, payload: &[u8]| codes(&dec.decode(topic, payload, now()));
        assert_eq!(case("cityhub/v1/volcano/v-1", b"{}"), ["unknown_kind"]);
        assert_eq!(case("cityhub/v1/waste_bin", b"{}"), ["bad_topic"]);
        assert_eq!(case("city/v1/waste_bin/b", b"{}"), ["bad_topic"]);
        assert_eq!(
            case("cityhub/v1/waste_bin/bad id", b"{}"),
            ["bad_sensor_id"]
        );
        assert_eq!(
            case("cityhub/v1/waste_bin/b", b"{\"values\":"),
            ["malformed_json"]
        );
        assert_eq!(
            case("cityhub/v1/waste_bin/b", b"\xff\xfe"),
            ["malformed_json"]
        );
        assert_eq!(
            case(
                "cityhub/v1/waste_bin/b",
                br#"{"values":{"fill_level":1e400}}"#
            ),
            ["not_finite"]
        );
        assert_eq!(case("cityhub/v1/waste_bin/b", &[b' '; 2000]), ["oversize"]);
        assert_eq!(case("cityhub/v1/waste_bin/b", b"42"), ["bad_shape"]);
    }

    #[test]
    fn topic_filters() {
        use super::topic_matches;
        assert!(topic_matches(
            "application/+/device/+/event/up",
            "application/1/device/a/event/up"
        ));
        assert!(!topic_matches(
            "application/+/device/+/event/up",
            "application/1/device/a/event/join"
        ));
        assert!(topic_matches("v3/#", "v3/app/devices/d/up"));
        assert!(!topic_matches("a/b", "a/b/c"));
    }
}
