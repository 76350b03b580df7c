//! Payload decoding and validation: topic -> (kind, sensor), payload -> readings.
//! Every problem is collected with a low-cardinality code and a precise reason;
//! valid readings of a partly bad message are kept. Nothing here panics on any input.

use chrono::{DateTime, TimeZone, Utc};
use cityhub_config::{units, Catalog, GeoPoint, Kind, Name, SensorId};
use serde_json::{Map, Value};

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
    pub code: &'static str,
    pub reason: String,
}

fn problem(code: &'static str, reason: impl Into<String>) -> Problem {
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
    pub problems: Vec<Problem>,
}

/// Limits applied while decoding.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_payload_bytes: usize,
    pub max_future: chrono::Duration,
    pub retention: chrono::Duration,
}

/// Decodes native-topic messages and adapter formats against the kind catalogue.
#[derive(Debug, Clone)]
pub struct Decoder {
    catalog: Catalog,
    limits: Limits,
    adapters: Vec<cityhub_config::AdapterDef>,
}

mod adapters;

/// SenML: times below 2^28 s are relative to now (RFC 8428 section 4.5.3).
const SENML_RELATIVE_LIMIT: f64 = 268_435_456.0;

impl Decoder {
    pub fn new(catalog: Catalog, limits: Limits) -> Self {
        Self {
            catalog,
            limits,
            adapters: Vec::new(),
        }
    }

    /// Adds the configured adapters; a topic matching an adapter's filter is read in its format.
    pub fn with_adapters(mut self, adapters: Vec<cityhub_config::AdapterDef>) -> Self {
        self.adapters = adapters;
        self
    }

    /// Size check and JSON parse, shared by every format.
    fn parse_json(&self, payload: &[u8], out: &mut Decoded) -> Option<Value> {
        if payload.len() > self.limits.max_payload_bytes {
            out.problems.push(problem(
                "oversize",
                format!(
                    "payload is {} bytes, above the limit of {}",
                    payload.len(),
                    self.limits.max_payload_bytes
                ),
            ));
            return None;
        }
        match serde_json::from_slice(payload) {
            Ok(v) => Some(v),
            Err(e) if e.to_string().starts_with("number out of range") => {
                out.problems.push(problem(
                    "not_finite",
                    format!("a number is too large for a 64-bit float ({e})"),
                ));
                None
            }
            Err(e) => {
                out.problems.push(problem(
                    "malformed_json",
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
        let mut ctx = Ctx {
            kind,
            now,
            limits: &self.limits,
            out: &mut out,
        };
        match doc {
            Value::Object(obj) => ctx.native(&obj),
            Value::Array(records) => ctx.senml(&records, topic_sensor(topic)),
            other => ctx.out.problems.push(problem(
                "bad_shape",
                format!(
                    "payload must be a JSON object (native) or array (SenML), got {}",
                    type_name(&other)
                ),
            )),
        }
        out
    }

    /// `cityhub/v1/{kind}/{sensor_id}` -> the configured kind and a valid sensor id.
    fn route(&self, topic: &str) -> Result<(&Kind, SensorId), Problem> {
        let parts: Vec<&str> = topic.split('/').collect();
        let [root, version, kind, sensor] = parts.as_slice() else {
            return Err(problem(
                "bad_topic",
                format!("topic {topic:?} is not cityhub/v1/{{kind}}/{{sensor_id}}"),
            ));
        };
        if *root != "cityhub" || *version != "v1" {
            return Err(problem(
                "bad_topic",
                format!("topic {topic:?} is not cityhub/v1/{{kind}}/{{sensor_id}}"),
            ));
        }
        let kind = self.catalog.get(kind).ok_or_else(|| {
            problem(
                "unknown_kind",
                format!("kind {kind:?} (from the topic) is not configured"),
            )
        })?;
        let sensor =
            SensorId::parse(sensor).map_err(|e| problem("bad_sensor_id", format!("topic: {e}")))?;
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

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

struct Ctx<'a> {
    kind: &'a Kind,
    now: DateTime<Utc>,
    limits: &'a Limits,
    out: &'a mut Decoded,
}

impl Ctx<'_> {
    fn push(&mut self, code: &'static str, reason: String) {
        self.out.problems.push(Problem { code, reason });
    }

    /// Checks a reading's time against the future and retention limits.
    fn check_time(&mut self, at: &str, t: DateTime<Utc>) -> bool {
        if t > self.now + self.limits.max_future {
            self.push(
                "future_timestamp",
                format!(
                    "{at}: {} is more than {} s ahead of the hub's clock",
                    t.to_rfc3339(),
                    self.limits.max_future.num_seconds()
                ),
            );
            false
        } else if t < self.now - self.limits.retention {
            self.push(
                "too_old",
                format!(
                    "{at}: {} is older than the retention of {} days",
                    t.to_rfc3339(),
                    self.limits.retention.num_days()
                ),
            );
            false
        } else {
            true
        }
    }

    /// Validates one value of `metric` (already in the kind's unit) and keeps it.
    /// `at` names the value's place for the reason; built only when there is a problem.
    fn accept(&mut self, at: impl Fn() -> String, metric: &str, time: DateTime<Utc>, value: f64) {
        let Some(m) = self.kind.metric(metric) else {
            let at = at();
            let known: Vec<&str> = self.kind.metrics.keys().map(|k| k.as_str()).collect();
            self.push(
                "unknown_metric",
                format!(
                    "{at}: metric {metric:?} is not defined for kind {} (known: {})",
                    self.kind.name,
                    known.join(", ")
                ),
            );
            return;
        };
        if !value.is_finite() {
            self.push(
                "not_finite",
                format!("{}: value is not a finite number", at()),
            );
        } else if !m.in_range(value) {
            let bound = match (m.min, m.max) {
                (Some(min), _) if value < min => format!("below the minimum {min} {}", m.unit),
                (_, Some(max)) => format!("above the maximum {max} {}", m.unit),
                _ => "outside the valid range".into(),
            };
            self.push("out_of_range", format!("{}: {value} is {bound}", at()));
        } else {
            self.out.readings.push(Reading {
                metric: m.name.clone(),
                time,
                value,
            });
        }
    }

    fn native(&mut self, obj: &Map<String, Value>) {
        if let Some(loc) = obj.get("location") {
            self.location("location", loc);
        }
        match obj.get("readings") {
            Some(Value::Array(items)) => {
                if items.is_empty() {
                    self.push("missing_values", "readings: the array is empty".into());
                }
                for (i, item) in items.iter().enumerate() {
                    let at = format!("readings[{i}]");
                    match item {
                        Value::Object(r) => self.native_reading(&at, r),
                        other => self.push(
                            "bad_shape",
                            format!("{at}: expected an object, got {}", type_name(other)),
                        ),
                    }
                }
            }
            Some(other) => self.push(
                "bad_shape",
                format!("readings: expected an array, got {}", type_name(other)),
            ),
            None => self.native_reading("", obj),
        }
    }

    fn native_reading(&mut self, prefix: &str, r: &Map<String, Value>) {
        let dot = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}.")
        };
        let time = match r.get("ts") {
            None | Some(Value::Null) => self.now,
            Some(ts) => match parse_ts(ts) {
                Ok(t) => t,
                Err(why) => {
                    self.push("bad_timestamp", format!("{dot}ts: {why}"));
                    return;
                }
            },
        };
        let values = match r.get("values") {
            Some(Value::Object(v)) if !v.is_empty() => v,
            Some(Value::Object(_)) => {
                self.push(
                    "missing_values",
                    format!("{dot}values: the object is empty"),
                );
                return;
            }
            Some(other) => {
                self.push(
                    "bad_shape",
                    format!("{dot}values: expected an object, got {}", type_name(other)),
                );
                return;
            }
            None => {
                self.push("missing_values", format!("{dot}values is missing"));
                return;
            }
        };
        if !self.check_time(&format!("{dot}ts"), time) {
            return;
        }
        for (name, v) in values {
            let at = || format!("{dot}values.{name}");
            match v {
                Value::Number(n) => match n.as_f64() {
                    Some(x) => self.accept(at, name, time, x),
                    None => {
                        let reason = format!("{}: not representable as a 64-bit float", at());
                        self.push("not_finite", reason)
                    }
                },
                Value::String(s) if is_non_finite_word(s) => self.push(
                    "not_finite",
                    format!("{}: {s:?} is not a finite number", at()),
                ),
                other => {
                    let reason = format!("{}: expected a number, got {}", at(), type_name(other));
                    self.push("wrong_type", reason)
                }
            }
        }
    }

    fn location(&mut self, at: &str, loc: &Value) {
        let Value::Object(o) = loc else {
            self.push(
                "bad_location",
                format!(
                    "{at}: expected an object with lat and lon, got {}",
                    type_name(loc)
                ),
            );
            return;
        };
        match (
            o.get("lat").and_then(Value::as_f64),
            o.get("lon").and_then(Value::as_f64),
        ) {
            (Some(lat), Some(lon)) => match GeoPoint::new(lat, lon) {
                Ok(p) => self.out.location = Some(p),
                Err(e) => self.push("bad_location", format!("{at}: {e}")),
            },
            _ => self.push(
                "bad_location",
                format!("{at}: lat and lon must both be numbers"),
            ),
        }
    }

    /// A SenML pack (RFC 8428): base fields carry over, names are bn + n,
    /// times bt + t (relative to now when small), values converted to the kind's unit.
    fn senml(&mut self, records: &[Value], sensor: &str) {
        if records.is_empty() {
            self.push("missing_values", "SenML pack is empty".into());
            return;
        }
        let (mut bn, mut bt, mut bu, mut bv) = (String::new(), 0.0f64, None::<String>, 0.0f64);
        let (mut lat, mut lon) = (None, None);
        for (i, rec) in records.iter().enumerate() {
            let at = format!("[{i}]");
            let Value::Object(r) = rec else {
                self.push(
                    "bad_senml",
                    format!(
                        "{at}: a SenML record must be an object, got {}",
                        type_name(rec)
                    ),
                );
                continue;
            };
            if let Some(k) = r.keys().find(|k| k.ends_with('_')) {
                self.push(
                    "bad_senml",
                    format!("{at}: must-understand field {k:?} is not supported"),
                );
                continue;
            }
            macro_rules! num {
                ($k:literal) => {
                    match r.get($k) {
                        None => None,
                        Some(Value::Number(n)) => n.as_f64(),
                        Some(other) => {
                            self.push(
                                "bad_senml",
                                format!("{at}.{}: expected a number, got {}", $k, type_name(other)),
                            );
                            continue;
                        }
                    }
                };
            }
            macro_rules! text {
                ($k:literal) => {
                    match r.get($k) {
                        None => None,
                        Some(Value::String(s)) => Some(s.as_str()),
                        Some(other) => {
                            self.push(
                                "bad_senml",
                                format!("{at}.{}: expected a string, got {}", $k, type_name(other)),
                            );
                            continue;
                        }
                    }
                };
            }
            if let Some(ver) = num!("bver") {
                if ver > 10.0 {
                    self.push(
                        "bad_senml",
                        format!("{at}.bver: version {ver} is not supported"),
                    );
                    continue;
                }
            }
            if let Some(s) = text!("bn") {
                bn = s.to_owned();
            }
            if let Some(t) = num!("bt") {
                bt = t;
            }
            if let Some(u) = text!("bu") {
                bu = Some(u.to_owned());
            }
            if let Some(v) = num!("bv") {
                bv = v;
            }
            let n = text!("n");
            let u = text!("u").map(str::to_owned).or_else(|| bu.clone());
            let t = num!("t").unwrap_or(0.0);
            let v = num!("v");
            let has_other_value = ["vs", "vb", "vd"].iter().any(|k| r.contains_key(*k));
            let s = num!("s");
            if n.is_none() && v.is_none() && s.is_none() && !has_other_value {
                continue; // a record carrying base fields only
            }
            let name = format!("{bn}{}", n.unwrap_or(""));
            if name.is_empty() {
                self.push(
                    "bad_senml",
                    format!("{at}: record has no name (bn + n is empty)"),
                );
                continue;
            }
            let metric = senml_metric(&name, sensor);
            let at = format!("{at} ({metric})");
            let abs = bt + t;
            let time = if abs.abs() < SENML_RELATIVE_LIMIT {
                self.now + chrono::Duration::microseconds((abs * 1e6).round() as i64)
            } else {
                match epoch_seconds(abs) {
                    Some(t) => t,
                    None => {
                        self.push(
                            "bad_timestamp",
                            format!("{at}: time {abs} is not a valid instant"),
                        );
                        continue;
                    }
                }
            };
            let value = match (v, s) {
                (Some(v), _) => v + bv,
                (None, Some(s)) => s,
                (None, None) if has_other_value => {
                    self.push(
                        "wrong_type",
                        format!("{at}: expected a numeric value (v), got vs/vb/vd"),
                    );
                    continue;
                }
                (None, None) => {
                    self.push("missing_values", format!("{at}: record has no value"));
                    continue;
                }
            };
            // Position records (RFC 8428 units "lat"/"lon") set the sensor's location.
            if matches!(u.as_deref(), Some("lat")) || metric == "lat" || metric == "latitude" {
                lat = Some(value);
                continue;
            }
            if matches!(u.as_deref(), Some("lon")) || metric == "lon" || metric == "longitude" {
                lon = Some(value);
                continue;
            }
            if !self.check_time(&at, time) {
                continue;
            }
            let value = match (u.as_deref(), self.kind.metric(metric)) {
                (Some(unit), Some(m)) => match units::convert(value, unit, &m.unit) {
                    Ok(x) => x,
                    Err(e) => {
                        self.push("unit_mismatch", format!("{at}: {e}"));
                        continue;
                    }
                },
                _ => value,
            };
            self.accept(|| at.clone(), metric, time, value);
        }
        match (lat, lon) {
            (Some(lat), Some(lon)) => match GeoPoint::new(lat, lon) {
                Ok(p) => self.out.location = Some(p),
                Err(e) => self.push("bad_location", format!("SenML position: {e}")),
            },
            (None, None) => {}
            _ => self.push(
                "bad_location",
                "SenML position needs both lat and lon".into(),
            ),
        }
        if self.out.readings.is_empty() && self.out.problems.is_empty() {
            self.push("missing_values", "SenML pack holds no values".into());
        }
    }
}

/// The metric a resolved SenML name refers to: the part after the sensor id
/// prefix, or after the last `:` or `/` (e.g. `urn:dev:mac:0024befffe804ff1:temperature`).
fn senml_metric<'a>(name: &'a str, sensor: &str) -> &'a str {
    if let Some(rest) = name.strip_prefix(sensor) {
        if let Some(rest) = rest.strip_prefix([':', '/', '.']) {
            return rest;
        }
    }
    name.rsplit([':', '/']).next().unwrap_or(name)
}

fn is_non_finite_word(s: &str) -> bool {
    matches!(
        s.to_ascii_lowercase().as_str(),
        "nan" | "inf" | "+inf" | "-inf" | "infinity" | "+infinity" | "-infinity"
    )
}

fn epoch_seconds(s: f64) -> Option<DateTime<Utc>> {
    if !(0.0..=32_503_680_000.0).contains(&s) {
        return None;
    }
    let micros = (s * 1e6).round() as i64;
    Utc.timestamp_micros(micros).single()
}

/// `ts`: RFC 3339 text or epoch milliseconds; kept to microseconds, PostgreSQL's resolution.
fn parse_ts(v: &Value) -> Result<DateTime<Utc>, String> {
    let t = match v {
        Value::String(s) => DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| format!("{s:?} is not an RFC 3339 timestamp ({e})"))?,
        Value::Number(n) => {
            let ms = n.as_f64().ok_or("not a number")?;
            epoch_seconds(ms / 1000.0)
                .ok_or_else(|| format!("{n} is not a valid epoch time in milliseconds"))?
        }
        other => {
            return Err(format!(
                "expected RFC 3339 text or epoch milliseconds, got {}",
                type_name(other)
            ))
        }
    };
    Utc.timestamp_micros(t.timestamp_micros())
        .single()
        .ok_or_else(|| "out of range".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cityhub_config::Settings;

    fn decoder() -> Decoder {
        let s = Settings::builtin().unwrap();
        Decoder::new(
            s.catalog().unwrap(),
            Limits {
                max_payload_bytes: 1024,
                max_future: chrono::Duration::minutes(10),
                retention: chrono::Duration::days(30),
            },
        )
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap()
    }

    fn codes(d: &Decoded) -> Vec<&'static str> {
        d.problems.iter().map(|p| p.code).collect()
    }

    #[test]
    fn native_single_reading() {
        let d = decoder().decode(
            "cityhub/v1/waste_bin/bin-1",
            br#"{"ts":"2026-11-24T10:15:00Z","values":{"fill_level":72.5,"battery":88},"location":{"lat":45.1335,"lon":10.0255}}"#,
            now(),
        );
        assert!(d.problems.is_empty(), "{:?}", d.problems);
        assert_eq!(d.sensor.as_ref().unwrap().0.as_str(), "bin-1");
        assert_eq!(d.readings.len(), 2);
        let fill = d
            .readings
            .iter()
            .find(|r| r.metric.as_str() == "fill_level")
            .unwrap();
        assert_eq!(fill.value, 72.5);
        assert_eq!(
            fill.time,
            Utc.with_ymd_and_hms(2026, 11, 24, 10, 15, 0).unwrap()
        );
        assert_eq!(d.location.unwrap().lon(), 10.0255);
    }

    #[test]
    fn native_epoch_ms_and_readings_array() {
        let d = decoder().decode(
            "cityhub/v1/bike_counter/bc-1",
            br#"{"readings":[{"ts":1795518000000,"values":{"count_in":3}},{"ts":1795518900123,"values":{"count_in":5,"count_out":2}}]}"#,
            now(),
        );
        assert!(d.problems.is_empty(), "{:?}", d.problems);
        assert_eq!(d.readings.len(), 3);
        assert_eq!(d.readings[2].time.timestamp_millis(), 1795518900123);
    }

    #[test]
    fn missing_ts_uses_receive_time() {
        let d = decoder().decode(
            "cityhub/v1/streetlight/l-1",
            br#"{"values":{"power":120}}"#,
            now(),
        );
        assert_eq!(d.readings[0].time, now());
    }

    #[test]
    fn partly_bad_message_keeps_the_good_metrics() {
        let d = decoder().decode(
            "cityhub/v1/air_quality/aq-1",
            br#"{"ts":"2026-11-24T11:00:00Z","values":{"pm10":41,"pm2_5":-3,"no2":"high","o3":null,"co":1,"humidity":"NaN"}}"#,
            now(),
        );
        assert_eq!(d.readings.len(), 1);
        let mut c = codes(&d);
        c.sort();
        assert_eq!(
            c,
            [
                "not_finite",
                "out_of_range",
                "unknown_metric",
                "wrong_type",
                "wrong_type"
            ]
        );
        let oor = d
            .problems
            .iter()
            .find(|p| p.code == "out_of_range")
            .unwrap();
        assert_eq!(oor.reason, "values.pm2_5: -3 is below the minimum 0 µg/m³");
    }

    #[test]
    fn each_bad_class() {
        let dec = decoder();
        let case = |topic: &str, payload: &[u8]| codes(&dec.decode(topic, payload, now()));
        assert_eq!(case("cityhub/v1/volcano/v-1", b"{}"), ["unknown_kind"]);
        assert_eq!(case("cityhub/v1/waste_bin", b"{}"), ["bad_topic"]);
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
        assert_eq!(
            case(
                "cityhub/v1/waste_bin/b",
                br#"{"values":{"fill_level":true}}"#
            ),
            ["wrong_type"]
        );
        assert_eq!(
            case(
                "cityhub/v1/waste_bin/b",
                br#"{"values":{"fill_level":101}}"#
            ),
            ["out_of_range"]
        );
        assert_eq!(
            case(
                "cityhub/v1/waste_bin/b",
                br#"{"ts":"2026-11-24T11:00:00Z"}"#
            ),
            ["missing_values"]
        );
        assert_eq!(
            case("cityhub/v1/waste_bin/b", br#"{"values":{}}"#),
            ["missing_values"]
        );
        assert_eq!(
            case(
                "cityhub/v1/waste_bin/b",
                br#"{"ts":"2026-11-25T11:00:00Z","values":{"fill_level":1}}"#
            ),
            ["future_timestamp"]
        );
        assert_eq!(
            case(
                "cityhub/v1/waste_bin/b",
                br#"{"ts":"2020-01-01T00:00:00Z","values":{"fill_level":1}}"#
            ),
            ["too_old"]
        );
        assert_eq!(
            case(
                "cityhub/v1/waste_bin/b",
                br#"{"ts":"yesterday","values":{"fill_level":1}}"#
            ),
            ["bad_timestamp"]
        );
        assert_eq!(case("cityhub/v1/waste_bin/b", &[b' '; 2000]), ["oversize"]);
        assert_eq!(case("cityhub/v1/waste_bin/b", b"42"), ["bad_shape"]);
        assert_eq!(
            case(
                "cityhub/v1/waste_bin/b",
                br#"{"values":{"fill_level":1},"location":{"lat":95,"lon":1}}"#
            ),
            ["bad_location"]
        );
    }

    #[test]
    fn senml_pack_with_base_fields_units_and_position() {
        let t0 = now().timestamp() as f64 - 600.0;
        let pack = format!(
            r#"[{{"bn":"urn:dev:aq-7:","bt":{t0},"bu":"Cel","n":"temperature","v":21.5}},
               {{"n":"humidity","u":"%RH","v":55,"t":1}},
               {{"n":"pm10","u":"mg/m3","v":0.035}},
               {{"n":"lat","u":"lat","v":45.14}},{{"n":"lon","u":"lon","v":10.02}}]"#
        );
        let d = decoder().decode("cityhub/v1/air_quality/aq-7", pack.as_bytes(), now());
        assert!(d.problems.is_empty(), "{:?}", d.problems);
        assert_eq!(d.readings.len(), 3);
        assert_eq!(d.readings[0].value, 21.5);
        assert_eq!(d.readings[1].time.timestamp(), t0 as i64 + 1);
        assert!((d.readings[2].value - 35.0).abs() < 1e-9);
        assert_eq!(d.location.unwrap().lat(), 45.14);
    }

    #[test]
    fn senml_relative_time_and_errors() {
        let d = decoder().decode(
            "cityhub/v1/streetlight/l-2",
            br#"[{"bn":"l-2/","n":"energy","u":"Wh","v":1500,"t":-60},{"n":"power","u":"Cel","v":3},{"n":"dimming","vs":"on"},{"n":"power"}]"#,
            now(),
        );
        assert_eq!(d.readings.len(), 1);
        assert_eq!(d.readings[0].value, 1.5);
        assert_eq!(d.readings[0].time, now() - chrono::Duration::seconds(60));
        assert_eq!(codes(&d), ["unit_mismatch", "wrong_type", "missing_values"]);
    }
}
