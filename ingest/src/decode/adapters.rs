//! Adapter formats: ChirpStack v4 uplink events, The Things Stack v3 uplinks,
//! Sensor.Community JSON. Each maps a device to a kind and a sensor id, and
//! decoded fields to metrics (scale, offset, unit conversion), then goes through
//! the same validation as native payloads.

use super::{parse_ts, problem, type_name, Ctx, Decoded, Decoder};
use chrono::{DateTime, Utc};
use cityhub_config::{units, AdapterDef, AdapterFormat, GeoPoint, SensorId};
use serde_json::{Map, Value};

/// Follows a dotted path (`deviceInfo.tags.kind`) into a JSON document.
fn path<'a>(doc: &'a Value, p: &str) -> Option<&'a Value> {
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

/// Sensor.Community value types -> cityhub metric names.
fn sensor_community_metric(value_type: &str) -> Option<&'static str> {
    let t = value_type.to_ascii_lowercase();
    let base = t.rsplit('_').next().unwrap_or(&t);
    Some(match (t.as_str(), base) {
        ("sds_p1" | "p1" | "pms_p1" | "sps30_p1" | "hpm_p1", _) => "pm10",
        ("sds_p2" | "p2" | "pms_p2" | "sps30_p2" | "hpm_p2", _) => "pm2_5",
        (_, "temperature") => "temperature",
        (_, "humidity") => "humidity",
        _ => return None,
    })
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
        let mut out = Decoded::default();
        let tag = format!("[{}] ", a.name);
        let fail = |out: &mut Decoded, code: &'static str, reason: String| {
            out.problems.push(problem(code, format!("{tag}{reason}")));
        };
        let Some(doc) = self.parse_json(payload, &mut out) else {
            for p in &mut out.problems {
                p.reason = format!("{tag}{}", p.reason);
            }
            return out;
        };
        if !doc.is_object() {
            fail(
                &mut out,
                "bad_shape",
                format!("expected a JSON object, got {}", type_name(&doc)),
            );
            return out;
        }

        // The device: sensor id and kind.
        let id_path = a.sensor_id_from.clone().unwrap_or_else(|| {
            match a.format {
                AdapterFormat::Chirpstack => "deviceInfo.devEui",
                AdapterFormat::Ttn => "end_device_ids.device_id",
                AdapterFormat::SensorCommunity => "esp8266id",
            }
            .to_owned()
        });
        let raw_id = path(&doc, &id_path).and_then(as_text).or_else(|| {
            // airrohr sends `X-Sensor: esp8266-<chip id>`.
            http_sensor.map(|h| h.rsplit('-').next().unwrap_or(h).to_owned())
        });
        let Some(raw_id) = raw_id else {
            fail(
                &mut out,
                "bad_sensor_id",
                format!("no device id at {id_path}"),
            );
            return out;
        };
        let sensor = match SensorId::parse(&format!("{}{raw_id}", a.sensor_id_prefix)) {
            Ok(s) => s,
            Err(e) => {
                fail(&mut out, "bad_sensor_id", format!("{id_path}: {e}"));
                return out;
            }
        };
        let kind_name = match (&a.kind, &a.kind_from) {
            (Some(k), _) => k.clone(),
            (None, Some(p)) => match path(&doc, p).and_then(as_text) {
                Some(v) => a.kind_map.get(&v).cloned().unwrap_or(v),
                None => {
                    fail(&mut out, "unknown_kind", format!("no kind at {p}"));
                    return out;
                }
            },
            (None, None) => "air_quality".to_owned(),
        };
        let Some(kind) = self.catalog.get(&kind_name) else {
            let via = a.kind_from.as_deref().unwrap_or("kind");
            fail(
                &mut out,
                "unknown_kind",
                format!("{kind_name:?} ({via}) is not a configured kind; map it with kind_map"),
            );
            return out;
        };
        out.sensor = Some((sensor, kind.name.clone()));

        // Time and position.
        let time_path = match a.format {
            AdapterFormat::Chirpstack => Some("time"),
            AdapterFormat::Ttn => Some("uplink_message.received_at"),
            AdapterFormat::SensorCommunity => None,
        };
        let time = match time_path.and_then(|p| path(&doc, p).or_else(|| doc.get("received_at"))) {
            Some(v) if !v.is_null() => match parse_ts(v) {
                Ok(t) => t,
                Err(why) => {
                    fail(
                        &mut out,
                        "bad_timestamp",
                        format!("{}: {why}", time_path.unwrap_or("time")),
                    );
                    return out;
                }
            },
            _ => now,
        };
        let position = |lat: Option<&Value>, lon: Option<&Value>| match (
            lat.and_then(Value::as_f64),
            lon.and_then(Value::as_f64),
        ) {
            (Some(lat), Some(lon)) if lat != 0.0 || lon != 0.0 => GeoPoint::new(lat, lon).ok(),
            _ => None,
        };
        match a.format {
            AdapterFormat::Chirpstack => {
                // Gateways' positions: only a hint for a sensor with no position of its own.
                let gw = path(&doc, "rxInfo")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .find_map(|rx| {
                        position(
                            path(rx, "location.latitude"),
                            path(rx, "location.longitude"),
                        )
                    });
                if let Some(p) = gw {
                    out.location = Some(p);
                    out.location_fallback = true;
                }
            }
            AdapterFormat::Ttn => {
                let user = path(&doc, "uplink_message.locations.user");
                if let Some(p) = user.and_then(|u| position(u.get("latitude"), u.get("longitude")))
                {
                    out.location = Some(p);
                }
            }
            AdapterFormat::SensorCommunity => {}
        }

        // The decoded fields.
        let fields: Map<String, Value> = match a.format {
            AdapterFormat::Chirpstack | AdapterFormat::Ttn => {
                let p = if a.format == AdapterFormat::Chirpstack {
                    "object"
                } else {
                    "uplink_message.decoded_payload"
                };
                match path(&doc, p) {
                    Some(Value::Object(o)) => o.clone(),
                    Some(Value::Null) | None => {
                        let why = if a.format == AdapterFormat::Chirpstack {
                            "the event has no decoded `object`: the device profile has no payload codec"
                        } else {
                            "the uplink has no `decoded_payload`: the device or application has no payload formatter"
                        };
                        fail(&mut out, "no_decoded_payload", why.into());
                        return out;
                    }
                    Some(other) => {
                        fail(
                            &mut out,
                            "bad_shape",
                            format!("{p}: expected an object, got {}", type_name(other)),
                        );
                        return out;
                    }
                }
            }
            AdapterFormat::SensorCommunity => {
                let Some(items) = doc.get("sensordatavalues").and_then(Value::as_array) else {
                    fail(
                        &mut out,
                        "bad_shape",
                        "sensordatavalues: expected an array".into(),
                    );
                    return out;
                };
                let mut m = Map::new();
                for it in items {
                    if let (Some(t), Some(v)) = (
                        it.get("value_type").and_then(Value::as_str),
                        it.get("value"),
                    ) {
                        m.insert(t.to_owned(), v.clone());
                    }
                }
                m
            }
        };
        let mut ctx = Ctx {
            kind,
            now,
            limits: &self.limits,
            out: &mut out,
        };
        if !ctx.check_time("time", time) {
            for p in &mut ctx.out.problems {
                p.reason = format!("{tag}{}", p.reason);
            }
            return out;
        }
        let mut mapped = 0;
        // Explicit mappings (dotted paths allowed), then same-named metrics.
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
                    ctx.push("wrong_type", format!("{}: {why}", at()));
                    continue;
                }
            };
            let v = match (&d.unit, kind.metric(&d.metric)) {
                (Some(u), Some(metric)) => match units::convert(v, u, &metric.unit) {
                    Ok(v) => v,
                    Err(e) => {
                        ctx.push("unit_mismatch", format!("{}: {e}", at()));
                        continue;
                    }
                },
                _ => v,
            };
            ctx.accept(at, &d.metric, time, v);
        }
        for (field, raw) in &fields {
            if used.contains(field) {
                continue;
            }
            let metric = if a.format == AdapterFormat::SensorCommunity {
                sensor_community_metric(field).map(str::to_owned)
            } else {
                Some(field.clone())
            };
            let Some(metric) = metric.filter(|m| kind.metric(m).is_some()) else {
                continue;
            };
            mapped += 1;
            match as_number(raw) {
                Ok(v) => ctx.accept(|| format!("{tag}{field}"), &metric, time, v),
                Err(why) => ctx.push("wrong_type", format!("{tag}{field}: {why}")),
            }
        }
        if mapped == 0 {
            let names: Vec<&str> = fields.keys().map(String::as_str).collect();
            ctx.push(
                "missing_values",
                format!(
                    "{tag}no field maps to a metric of {} (fields: {}); add [adapters.fields]",
                    kind.name,
                    names.join(", ")
                ),
            );
        }
        out
    }

    /// A Sensor.Community submission over HTTP (the airrohr firmware's custom API).
    pub fn decode_sensor_community_http(
        &self,
        payload: &[u8],
        x_sensor: Option<&str>,
        now: DateTime<Utc>,
    ) -> Decoded {
        let default = AdapterDef {
            name: "sensor-community-http".into(),
            format: AdapterFormat::SensorCommunity,
            topic: None,
            kind: None,
            kind_from: None,
            kind_map: Default::default(),
            sensor_id_from: None,
            sensor_id_prefix: "sc-".into(),
            fields: Default::default(),
        };
        let a = self
            .adapters
            .iter()
            .find(|a| a.format == AdapterFormat::SensorCommunity)
            .unwrap_or(&default);
        self.decode_adapter(a, payload, now, x_sensor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Limits;
    use chrono::TimeZone;
    use cityhub_config::Settings;

    fn adapter(toml: &str) -> AdapterDef {
        toml::from_str(toml).unwrap()
    }

    fn decoder(adapters: Vec<AdapterDef>) -> Decoder {
        let s = Settings::builtin().unwrap();
        Decoder::new(
            s.catalog().unwrap(),
            Limits {
                max_payload_bytes: 64 * 1024,
                max_future: chrono::Duration::minutes(10),
                retention: chrono::Duration::days(730),
            },
        )
        .with_adapters(adapters)
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap()
    }

    fn value(d: &Decoded, m: &str) -> f64 {
        d.readings
            .iter()
            .find(|r| r.metric.as_str() == m)
            .map(|r| r.value)
            .unwrap_or(f64::NAN)
    }

    const CHIRPSTACK: &str = r#"name = "chirpstack"
format = "chirpstack"
kind_from = "deviceInfo.tags.kind""#;

    #[test]
    fn chirpstack_uplink_with_string_numbers_extra_fields_and_gateway_location() {
        let dec = decoder(vec![adapter(CHIRPSTACK)]);
        let topic =
            "application/17c82e96-be03-4f38-aef3-f83d48582d97/device/0101010101010101/event/up";
        let d = dec.decode(
            topic,
            include_bytes!("../../../tests/fixtures/chirpstack_v4_up.json"),
            now(),
        );
        assert!(d.problems.is_empty(), "{:?}", d.problems);
        let (id, kind) = d.sensor.clone().unwrap();
        assert_eq!(
            (id.as_str(), kind.as_str()),
            ("0101010101010101", "waste_bin")
        );
        assert_eq!(value(&d, "distance"), 450.0);
        assert_eq!(value(&d, "battery"), 91.0);
        assert_eq!(value(&d, "temperature"), 7.5);
        assert_eq!(
            d.readings.len(),
            3,
            "`position` is not a metric and is ignored"
        );
        assert_eq!(
            d.readings[0].time,
            Utc.with_ymd_and_hms(2026, 11, 24, 10, 2, 40).unwrap()
                + chrono::Duration::milliseconds(115)
        );
        // The second gateway's position, as a hint only.
        assert_eq!(d.location.unwrap().lat(), 45.1362);
        assert!(d.location_fallback);
    }

    #[test]
    fn chirpstack_without_object_names_the_cause() {
        let dec = decoder(vec![adapter(CHIRPSTACK)]);
        let d = dec.decode(
            "application/x/device/0202020202020202/event/up",
            include_bytes!("../../../tests/fixtures/chirpstack_v4_no_codec.json"),
            now(),
        );
        assert_eq!(d.problems.len(), 1);
        assert_eq!(d.problems[0].code, "no_decoded_payload");
        assert!(
            d.problems[0].reason.contains("[chirpstack]")
                && d.problems[0].reason.contains("no payload codec"),
            "{:?}",
            d.problems
        );
    }

    #[test]
    fn real_chirpstack_captures_parse() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/testdata/chirpstack-jena");
        if !dir.exists() {
            eprintln!("SKIPPED: {} is absent", dir.display());
            return;
        }
        let a = adapter(
            r#"name = "jena"
format = "chirpstack"
kind_from = "deviceInfo.deviceProfileName"
sensor_id_from = "deviceInfo.deviceName"
kind_map = { "EM310-UDL" = "waste_bin" }
[fields]
battery = "battery""#,
        );
        let dec = decoder(vec![a]);
        let mut bins = 0;
        for i in 1..=7 {
            let name = if i == 1 {
                "example.json".to_owned()
            } else {
                format!("example{i}.json")
            };
            let bytes = std::fs::read(dir.join(&name)).unwrap();
            let doc: Value = serde_json::from_slice(&bytes).unwrap();
            let d = dec.decode("application/a/device/b/event/up", &bytes, now());
            // Every capture is understood: a bin reading, or a precise reason it is not one.
            assert!(d.sensor.is_some() || !d.problems.is_empty(), "{name}");
            if doc["deviceInfo"]["deviceProfileName"] == "EM310-UDL" {
                bins += 1;
                assert!(d.problems.is_empty(), "{name}: {:?}", d.problems);
                assert_eq!(d.sensor.as_ref().unwrap().1.as_str(), "waste_bin");
                assert_eq!(
                    value(&d, "distance"),
                    doc["object"]["distance"].as_f64().unwrap()
                );
                assert_eq!(
                    value(&d, "battery"),
                    doc["object"]["battery"].as_f64().unwrap()
                );
            } else {
                assert!(
                    d.problems
                        .iter()
                        .any(|p| p.code == "unknown_kind" || p.code == "no_decoded_payload"),
                    "{name}: {:?}",
                    d.problems
                );
            }
        }
        assert_eq!(bins, 1, "example3 is the bin level sensor");
    }

    const TTN: &str = r#"name = "tts"
format = "ttn"
kind_from = "end_device_ids.application_ids.application_id"
kind_map = { "cremona-air" = "air_quality" }"#;

    #[test]
    fn the_things_stack_uplink_full_and_minimal() {
        let dec = decoder(vec![adapter(TTN)]);
        let d = dec.decode(
            "v3/cremona-air@ttn/devices/aq-po-01/up",
            include_bytes!("../../../tests/fixtures/ttn_v3_up.json"),
            now(),
        );
        assert!(d.problems.is_empty(), "{:?}", d.problems);
        assert_eq!(d.sensor.as_ref().unwrap().0.as_str(), "aq-po-01");
        assert_eq!(value(&d, "pm2_5"), 21.7);
        assert_eq!(value(&d, "humidity"), 81.0);
        assert_eq!(d.readings.len(), 4);
        assert_eq!(d.location.unwrap().lon(), 10.0142);
        assert!(
            !d.location_fallback,
            "the registry location is the device's own"
        );
        // Without @tenant, and with the fields TTS omits when zero/empty left out.
        let d = dec.decode(
            "v3/cremona-air/devices/aq-po-02/up",
            include_bytes!("../../../tests/fixtures/ttn_v3_minimal.json"),
            now(),
        );
        assert!(d.problems.is_empty(), "{:?}", d.problems);
        assert_eq!(value(&d, "pm10"), 12.0);
        assert!(d.location.is_none());
        assert_eq!(
            d.readings[0].time,
            Utc.with_ymd_and_hms(2026, 11, 24, 10, 20, 0).unwrap()
        );
    }

    #[test]
    fn sensor_community_json_with_string_values() {
        let a = adapter("name = \"sc\"\nformat = \"sensor_community\"\nsensor_id_prefix = \"sc-\"");
        let dec = decoder(vec![a]);
        let d = dec.decode(
            "sensor-community/15318271",
            include_bytes!("../../../tests/fixtures/sensor_community.json"),
            now(),
        );
        assert!(d.problems.is_empty(), "{:?}", d.problems);
        assert_eq!(d.sensor.as_ref().unwrap().0.as_str(), "sc-15318271");
        assert_eq!(d.sensor.as_ref().unwrap().1.as_str(), "air_quality");
        assert_eq!(value(&d, "pm10"), 57.35);
        assert_eq!(value(&d, "pm2_5"), 36.9);
        assert_eq!(value(&d, "temperature"), 3.84);
        assert_eq!(value(&d, "humidity"), 89.21);
        assert_eq!(
            d.readings.len(),
            4,
            "pressure, samples, signal are not air_quality metrics"
        );
        assert_eq!(d.readings[0].time, now());
        // Over HTTP the chip id may come from the X-Sensor header only.
        let d = dec.decode_sensor_community_http(
            br#"{"sensordatavalues":[{"value_type":"P1","value":"12.5"}]}"#,
            Some("esp8266-999"),
            now(),
        );
        assert_eq!(d.sensor.as_ref().unwrap().0.as_str(), "sc-999");
        assert_eq!(value(&d, "pm10"), 12.5);
    }

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
        let dec = decoder(vec![a]);
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
        let codes: Vec<_> = d.problems.iter().map(|p| p.code).collect();
        assert_eq!(codes, ["unit_mismatch", "wrong_type"], "{:?}", d.problems);
        // A device whose kind maps to nothing configured.
        let dec = decoder(vec![adapter(CHIRPSTACK)]);
        let msg = serde_json::json!({ "deviceInfo": { "devEui": "01", "tags": { "kind": "volcano" } }, "object": { "x": 1 } });
        let d = dec.decode(
            "application/a/device/b/event/up",
            msg.to_string().as_bytes(),
            now(),
        );
        assert_eq!(d.problems[0].code, "unknown_kind");
        // A topic that matches no adapter still goes the native way.
        assert!(crate::decode::topic_matches(
            "v3/+/devices/+/up",
            "v3/a@t/devices/d/up"
        ));
        assert!(!crate::decode::topic_matches(
            "v3/+/devices/+/up",
            "v3/a/devices/d/down"
        ));
        assert!(crate::decode::topic_matches(
            "cityhub/v1/#",
            "cityhub/v1/waste_bin/x"
        ));
    }
}
