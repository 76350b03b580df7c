//! The steps every network server's uplink goes through: find the device (sensor
//! id and kind), the uplink's time and position, the decoded fields, then map the
//! fields to metrics (explicit `[adapters.fields]` first, then same-named ones;
//! scale, offset, unit conversion) and validate as native payloads are. What differs
//! between networks is a [`Network`], one per format module.

use super::check::{parse_ts, type_name, Ctx};
use super::{problem, Decoded, Decoder, Problem};
use chrono::{DateTime, Utc};
use cityhub_core::{units, AdapterDef, AdapterFormat, GeoPoint, Kind, RejectReason, SensorId};
use serde_json::{Map, Value};

/// Where a network's uplinks keep what the hub needs.
pub(super) struct Network {
    /// The device id, when the adapter does not say (`sensor_id_from`).
    pub default_id: &'static str,
    /// The uplink's time; receive time when absent.
    pub time: Option<&'static str>,
    /// The position, and whether it is only a hint (a gateway's).
    pub position: fn(&Value) -> Option<(GeoPoint, bool)>,
    /// The decoded fields, or why there are none.
    pub fields: fn(&Value) -> Result<Map<String, Value>, Problem>,
    /// The metric a field no `[adapters.fields]` entry maps stands for.
    pub metric: fn(&str) -> Option<String>,
}

fn network(f: AdapterFormat) -> &'static Network {
    match f {
        AdapterFormat::Chirpstack => &super::chirpstack::NETWORK,
        AdapterFormat::Ttn => &super::ttn::NETWORK,
        AdapterFormat::SensorCommunity => &super::sensor_community::NETWORK,
    }
}

/// Follows a dotted path (`deviceInfo.tags.kind`) into a JSON document.
pub(super) fn path<'a>(doc: &'a Value, p: &str) -> Option<&'a Value> {
    p.split('.').try_fold(doc, |v, k| v.get(k))
}

fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Numbers, and numbers sent as text (Sensor.Community, many payload codecs).
fn as_number(v: &Value) -> Result<f64, String> {
    match v {
        Value::Number(n) => n
            .as_f64()
            .ok_or_else(|| "not representable as a 64-bit float".into()),
        Value::String(s) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| format!("{s:?} is not a number")),
        other => Err(format!("expected a number, got {}", type_name(other))),
    }
}

/// A position from latitude and longitude values; (0, 0) means "not set" to devices.
pub(super) fn point(lat: Option<&Value>, lon: Option<&Value>) -> Option<GeoPoint> {
    match (lat.and_then(Value::as_f64), lon.and_then(Value::as_f64)) {
        (Some(lat), Some(lon)) if lat != 0.0 || lon != 0.0 => GeoPoint::new(lat, lon).ok(),
        _ => None,
    }
}

/// The decoded object at `at`, or why it is missing (`why_missing`).
pub(super) fn decoded_object(
    doc: &Value,
    at: &str,
    why_missing: &str,
) -> Result<Map<String, Value>, Problem> {
    match path(doc, at) {
        Some(Value::Object(o)) => Ok(o.clone()),
        Some(Value::Null) | None => Err(problem(RejectReason::NoDecodedPayload, why_missing)),
        Some(other) => Err(problem(
            RejectReason::BadShape,
            format!("{at}: expected an object, got {}", type_name(other)),
        )),
    }
}

/// What an uplink says: which sensor, of which kind, when, and its decoded fields.
struct Uplink<'k> {
    sensor: SensorId,
    kind: &'k Kind,
    time: DateTime<Utc>,
    fields: Map<String, Value>,
}

/// Names which adapter refused a message.
fn tagged(mut out: Decoded, tag: &str) -> Decoded {
    for p in &mut out.problems {
        p.reason = format!("{tag}{}", p.reason);
    }
    out
}

impl Decoder {
    /// Decodes one message of adapter `a`. `http_sensor` is the `X-Sensor` header of an
    /// HTTP submission (Sensor.Community firmware), used when the body has no id.
    pub(super) fn decode_adapter(
        &self,
        a: &AdapterDef,
        payload: &[u8],
        now: DateTime<Utc>,
        http_sensor: Option<&str>,
    ) -> Decoded {
        let tag = format!("[{}] ", a.name);
        let mut out = Decoded::default();
        let Some(doc) = self.parse_json(payload, &mut out) else {
            return tagged(out, &tag);
        };
        let net = network(a.format);
        let found = self.uplink(a, net, &doc, now, http_sensor);
        let Uplink {
            sensor,
            kind,
            time,
            fields,
        } = match found {
            Ok(f) => f,
            Err(p) => {
                out.problems.push(p);
                return tagged(out, &tag);
            }
        };
        out.sensor = Some((sensor, kind.name.clone()));
        if let Some((p, fallback)) = (net.position)(&doc) {
            out.location = Some(p);
            out.location_fallback = fallback;
        }
        let mut ctx = Ctx::new(kind, now, &self.limits, &mut out);
        if !ctx.check_time("time", time) {
            return tagged(out, &tag);
        }
        map_fields(&mut ctx, a, net, &fields, time, &tag);
        out
    }

    /// The device, its kind, the uplink's time and its decoded fields.
    fn uplink(
        &self,
        a: &AdapterDef,
        net: &Network,
        doc: &Value,
        now: DateTime<Utc>,
        http_sensor: Option<&str>,
    ) -> Result<Uplink<'_>, Problem> {
        if !doc.is_object() {
            return Err(problem(
                RejectReason::BadShape,
                format!("expected a JSON object, got {}", type_name(doc)),
            ));
        }
        let sensor = device_id(a, net, doc, http_sensor)?;
        let kind = self.device_kind(a, doc)?;
        let time = match net
            .time
            .and_then(|p| path(doc, p).or_else(|| doc.get("received_at")))
        {
            Some(v) if !v.is_null() => parse_ts(v).map_err(|why| {
                problem(
                    RejectReason::BadTimestamp,
                    format!("{}: {why}", net.time.unwrap_or("time")),
                )
            })?,
            _ => now,
        };
        let fields = (net.fields)(doc)?;
        Ok(Uplink {
            sensor,
            kind,
            time,
            fields,
        })
    }

    /// The kind: fixed by the adapter, or read from the uplink (through `kind_map`).
    fn device_kind(&self, a: &AdapterDef, doc: &Value) -> Result<&Kind, Problem> {
        let kind_name = match (&a.kind, &a.kind_from) {
            (Some(k), _) => k.clone(),
            (None, Some(p)) => match path(doc, p).and_then(as_text) {
                Some(v) => a.kind_map.get(&v).cloned().unwrap_or(v),
                None => {
                    return Err(problem(
                        RejectReason::UnknownKind,
                        format!("no kind at {p}"),
                    ))
                }
            },
            (None, None) => "air_quality".to_owned(),
        };
        self.catalog.get(&kind_name).ok_or_else(|| {
            let via = a.kind_from.as_deref().unwrap_or("kind");
            problem(
                RejectReason::UnknownKind,
                format!("{kind_name:?} ({via}) is not a configured kind; map it with kind_map"),
            )
        })
    }
}

/// The sensor id: the adapter's prefix and the device id found in the uplink.
fn device_id(
    a: &AdapterDef,
    net: &Network,
    doc: &Value,
    http_sensor: Option<&str>,
) -> Result<SensorId, Problem> {
    let id_path = a.sensor_id_from.as_deref().unwrap_or(net.default_id);
    let raw_id = path(doc, id_path).and_then(as_text).or_else(|| {
        // airrohr sends `X-Sensor: esp8266-<chip id>`.
        http_sensor.map(|h| h.rsplit('-').next().unwrap_or(h).to_owned())
    });
    let Some(raw_id) = raw_id else {
        return Err(problem(
            RejectReason::BadSensorId,
            format!("no device id at {id_path}"),
        ));
    };
    SensorId::parse(&format!("{}{raw_id}", a.sensor_id_prefix))
        .map_err(|e| problem(RejectReason::BadSensorId, format!("{id_path}: {e}")))
}

/// Explicit mappings (dotted paths allowed), then fields named like a metric.
fn map_fields(
    ctx: &mut Ctx,
    a: &AdapterDef,
    net: &Network,
    fields: &Map<String, Value>,
    time: DateTime<Utc>,
    tag: &str,
) {
    let kind = ctx.kind;
    let mut mapped = 0;
    let fields_doc = Value::Object(fields.clone());
    let mut used = std::collections::HashSet::new();
    for (field, m) in &a.fields {
        let Some(raw) = path(&fields_doc, field) else {
            continue;
        };
        used.insert(field.split('.').next().unwrap_or(field).to_owned());
        let d = m.def();
        mapped += 1;
        let at = || format!("{tag}{field}");
        let v = match as_number(raw) {
            Ok(v) => v * d.scale + d.offset,
            Err(why) => {
                ctx.push(RejectReason::WrongType, || format!("{}: {why}", at()));
                continue;
            }
        };
        let v = match (&d.unit, kind.metric(&d.metric)) {
            (Some(u), Some(metric)) => match units::convert(v, u, &metric.unit) {
                Ok(v) => v,
                Err(e) => {
                    ctx.push(RejectReason::UnitMismatch, || format!("{}: {e}", at()));
                    continue;
                }
            },
            _ => v,
        };
        ctx.accept(at, &d.metric, time, v);
    }
    for (field, raw) in fields {
        if used.contains(field) {
            continue;
        }
        let Some(metric) = (net.metric)(field).filter(|m| kind.metric(m).is_some()) else {
            continue;
        };
        mapped += 1;
        match as_number(raw) {
            Ok(v) => ctx.accept(|| format!("{tag}{field}"), &metric, time, v),
            Err(why) => ctx.push(RejectReason::WrongType, || format!("{tag}{field}: {why}")),
        }
    }
    if mapped == 0 {
        let names: Vec<&str> = fields.keys().map(String::as_str).collect();
        ctx.push(RejectReason::MissingValues, || {
            format!(
                "{tag}no field maps to a metric of {} (fields: {}); add [adapters.fields]",
                kind.name,
                names.join(", ")
            )
        });
    }
}

/// What the format modules' adapter tests share.
#[cfg(test)]
pub(super) mod testing {
    use super::super::Decoded;
    use cityhub_core::AdapterDef;

    pub fn adapter(toml: &str) -> AdapterDef {
        toml::from_str(toml).unwrap()
    }

    /// The value of metric `m`, NaN when absent.
    pub fn value(d: &Decoded, m: &str) -> f64 {
        d.readings
            .iter()
            .find(|r| r.metric.as_str() == m)
            .map(|r| r.value)
            .unwrap_or(f64::NAN)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{adapter, value};
    use crate::decode::testing::{codes, decoder_with, now};

    #[test]
    fn field_mapping_scale_unit_and_errors() {
        let a = adapter(
            r#"name = "custom"
format = "chirpstack"
kind = "air_quality"
sensor_id_from = "deviceInfo.deviceName"
[fields]
"pm.ten" = "pm10"
temp_k = { metric = "temperature", unit = "K" }
rh_permille = { metric = "humidity", scale = 0.1 }
no2 = { metric = "no2", unit = "W" }"#,
        );
        let dec = decoder_with(vec![a]);
        let msg = serde_json::json!({
            "time": "2026-11-24T11:00:00Z",
            "deviceInfo": { "deviceName": "aq-x" },
            "object": { "pm": { "ten": 40 }, "temp_k": 283.15, "rh_permille": 655, "no2": 20, "o3": "high" }
        });
        let d = dec.decode(
            "application/a/device/b/event/up",
            msg.to_string().as_bytes(),
            now(),
        );
        assert_eq!(value(&d, "pm10"), 40.0);
        assert!((value(&d, "temperature") - 10.0).abs() < 1e-9);
        assert!((value(&d, "humidity") - 65.5).abs() < 1e-9);
        assert_eq!(
            codes(&d),
            ["unit_mismatch", "wrong_type"],
            "{:?}",
            d.problems
        );
    }

    #[test]
    fn device_problems_name_the_adapter() {
        let dec = decoder_with(vec![adapter(
            "name = \"cs\"\nformat = \"chirpstack\"\nkind_from = \"deviceInfo.tags.kind\"",
        )]);
        let case = |msg: serde_json::Value| {
            dec.decode(
                "application/a/device/b/event/up",
                msg.to_string().as_bytes(),
                now(),
            )
        };
        let d = case(
            serde_json::json!({ "deviceInfo": { "devEui": "01", "tags": { "kind": "volcano" } }, "object": { "x": 1 } }),
        );
        assert_eq!(codes(&d), ["unknown_kind"]);
        assert!(
            d.problems[0].reason.starts_with("[cs] "),
            "{:?}",
            d.problems
        );
        let d = case(
            serde_json::json!({ "deviceInfo": { "tags": { "kind": "waste_bin" } }, "object": { "battery": 1 } }),
        );
        assert_eq!(codes(&d), ["bad_sensor_id"]);
        let d = case(
            serde_json::json!({ "time": "noon", "deviceInfo": { "devEui": "01", "tags": { "kind": "waste_bin" } }, "object": { "battery": 1 } }),
        );
        assert_eq!(codes(&d), ["bad_timestamp"]);
        let d = case(serde_json::json!([1, 2]));
        assert_eq!(codes(&d), ["bad_shape"]);
        let d = case(
            serde_json::json!({ "deviceInfo": { "devEui": "01", "tags": { "kind": "waste_bin" } }, "object": { "colour": 1 } }),
        );
        assert_eq!(codes(&d), ["missing_values"]);
    }
}
