//! SenML packs (RFC 8428): base fields carry over, names are bn + n, times
//! bt + t (relative to now when small), values converted to the kind's unit,
//! `lat`/`lon` records give the position.
//!
//! LwM2M devices (Leshan, Zephyr, RIOT, Anjay) name records by object, instance
//! and resource (`bn` `/3303/0/`, `n` `5700`). The IPSO objects that measure what
//! a kind's metrics are map to them built in ([`IPSO`]); a kind's `senml_names`
//! maps anything else. A resource's unit comes from the record, else from the
//! instance's "Sensor Units" (5701) record, else from the object's definition.

use super::check::{epoch_seconds, type_name, Ctx};
use cityhub_core::{units, GeoPoint, RejectReason};
use serde_json::{Map, Value};

/// Times below 2^28 s are relative to now (RFC 8428 section 4.5.3).
const RELATIVE_LIMIT: f64 = 268_435_456.0;

/// Base fields, carried from record to record.
#[derive(Default)]
struct Base {
    name: String,
    time: f64,
    unit: Option<String>,
    value: f64,
    /// LwM2M "Sensor Units" per object and instance, read before the records.
    units: std::collections::HashMap<(u32, u32), String>,
}

fn builtin(object: u32, resource: u32) -> Option<&'static Ipso> {
    IPSO.iter()
        .find(|b| b.object == object && b.resource == resource)
}

/// The "Sensor Units" (5701) string records of a pack, by object and instance, so
/// a value can take the unit a later record of the pack names.
fn sensor_units(records: &[Value]) -> std::collections::HashMap<(u32, u32), String> {
    let mut out = std::collections::HashMap::new();
    let mut bn = "";
    for r in records {
        let Value::Object(r) = r else { continue };
        if let Some(Value::String(b)) = r.get("bn") {
            bn = b;
        }
        let (Some(Value::String(n)), Some(Value::String(vs))) = (r.get("n"), r.get("vs")) else {
            continue;
        };
        if let Some((o, i, SENSOR_UNITS)) = lwm2m_path(&format!("{bn}{n}")) {
            out.insert((o, i), vs.clone());
        }
    }
    out
}

/// Position records of the pack.
#[derive(Default)]
struct Position {
    lat: Option<f64>,
    lon: Option<f64>,
}

/// A field of a record: absent, or present with the wrong JSON type.
struct WrongField;

fn number(
    r: &Map<String, Value>,
    k: &str,
    at: &str,
    ctx: &mut Ctx,
) -> Result<Option<f64>, WrongField> {
    match r.get(k) {
        None => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(other) => {
            ctx.push(RejectReason::BadSenml, || {
                format!("{at}.{k}: expected a number, got {}", type_name(other))
            });
            Err(WrongField)
        }
    }
}

fn text<'r>(
    r: &'r Map<String, Value>,
    k: &str,
    at: &str,
    ctx: &mut Ctx,
) -> Result<Option<&'r str>, WrongField> {
    match r.get(k) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(other) => {
            ctx.push(RejectReason::BadSenml, || {
                format!("{at}.{k}: expected a string, got {}", type_name(other))
            });
            Err(WrongField)
        }
    }
}

/// An LwM2M object/resource that measures a metric: the metric's usual name in
/// the kinds, and the unit the OMA registry defines when the device sends none.
struct Ipso {
    object: u32,
    resource: u32,
    metric: &'static str,
    unit: Option<&'static str>,
}

const fn ipso(
    object: u32,
    resource: u32,
    metric: &'static str,
    unit: Option<&'static str>,
) -> Ipso {
    Ipso {
        object,
        resource,
        metric,
        unit,
    }
}

/// The IPSO objects (OMA LwM2M registry) whose value fits a metric of the kinds.
/// 3325 (Concentration) does not say which gas it measures, so it needs a
/// kind's `senml_names`; 3428's gases come in ppm, which is not the µg/m³ the
/// air-quality kind stores, so only its particulate matter maps built in.
const IPSO: &[Ipso] = &[
    ipso(3303, 5700, "temperature", Some("Cel")),
    ipso(3304, 5700, "humidity", Some("%RH")),
    ipso(3328, 5700, "power", Some("W")),
    ipso(3331, 5700, "energy", Some("Wh")),
    ipso(3331, 5805, "energy", Some("Wh")),
    ipso(3330, 5700, "distance", Some("m")),
    ipso(3435, 2, "fill_level", Some("%")),
    ipso(3428, 1, "pm10", Some("ug/m3")),
    ipso(3428, 3, "pm2_5", Some("ug/m3")),
    ipso(3428, 5, "pm1", Some("ug/m3")),
];

/// LwM2M "Sensor Units": a string naming the unit of the instance's value.
const SENSOR_UNITS: u32 = 5701;

/// The object, instance and resource of a resolved name ending in an LwM2M path
/// (`/3303/0/5700`, `urn:dev:x:3303/0/5700`).
fn lwm2m_path(name: &str) -> Option<(u32, u32, u32)> {
    let mut parts = name.trim_end_matches('/').rsplit('/');
    let r = parts.next()?.parse().ok()?;
    let i = parts.next()?.parse().ok()?;
    let o = parts.next()?.rsplit([':', '.']).next()?.parse().ok()?;
    Some((o, i, r))
}

/// What a record's name resolved to.
enum Target {
    Metric(String, Option<&'static str>),
    /// An LwM2M resource of an object the kind knows that measures nothing it stores.
    Ignore,
    Unknown(String),
}

impl Ctx<'_> {
    /// The metric a record names: the kind's `senml_names`, then the built-in
    /// LwM2M objects, then the name's last part, then the record's own `n`
    /// (for a `bn` with no separator, such as `kpn-1f04` + `temperature`).
    fn target(&self, name: &str, n: Option<&str>, sensor: &str) -> Target {
        let kind = self.kind;
        let last = metric_of(name, sensor);
        let path = lwm2m_path(name);
        let keys = [
            Some(name.to_owned()),
            n.map(str::to_owned),
            Some(last.to_owned()),
            path.map(|(o, i, r)| format!("{o}/{i}/{r}")),
            path.map(|(o, _, r)| format!("{o}/{r}")),
        ];
        for k in keys.iter().flatten() {
            if let Some((_, m)) = kind.def.senml_names.get_key_value(k.as_str()) {
                let unit = path
                    .and_then(|(o, _, r)| builtin(o, r))
                    .and_then(|b| b.unit);
                return Target::Metric(m.clone(), unit);
            }
        }
        if let Some((o, _, r)) = path {
            if let Some(b) = builtin(o, r).filter(|b| kind.metric(b.metric).is_some()) {
                return Target::Metric(b.metric.to_owned(), b.unit);
            }
            let known_object = IPSO
                .iter()
                .any(|b| b.object == o && kind.metric(b.metric).is_some())
                || kind
                    .def
                    .senml_names
                    .keys()
                    .any(|k| k.split('/').next() == Some(&o.to_string()));
            if known_object {
                return Target::Ignore;
            }
        }
        for cand in [Some(last), n, name.strip_prefix(sensor)]
            .into_iter()
            .flatten()
        {
            if let Some(m) = kind.metric(cand) {
                return Target::Metric(m.name.to_string(), None);
            }
        }
        Target::Unknown(last.to_owned())
    }

    pub(super) fn senml(&mut self, records: &[Value], sensor: &str) {
        if records.is_empty() {
            self.push(RejectReason::MissingValues, || "SenML pack is empty".into());
            return;
        }
        let mut base = Base::default();
        let mut position = Position::default();
        base.units = sensor_units(records);
        for (i, rec) in records.iter().enumerate() {
            let at = format!("[{i}]");
            let Value::Object(r) = rec else {
                self.push(RejectReason::BadSenml, || {
                    format!(
                        "{at}: a SenML record must be an object, got {}",
                        type_name(rec)
                    )
                });
                continue;
            };
            // A wrong field is already reported; the record is skipped.
            let _ = self.senml_record(&at, r, sensor, &mut base, &mut position);
        }
        self.senml_position(position);
        if self.out.readings.is_empty() && self.out.problems.is_empty() {
            self.push(RejectReason::MissingValues, || {
                "SenML pack holds no values".into()
            });
        }
    }

    /// One record: updates the base fields, then keeps its value (or position).
    fn senml_record(
        &mut self,
        at: &str,
        r: &Map<String, Value>,
        sensor: &str,
        base: &mut Base,
        position: &mut Position,
    ) -> Result<(), WrongField> {
        if let Some(k) = r.keys().find(|k| k.ends_with('_')) {
            self.push(RejectReason::BadSenml, || {
                format!("{at}: must-understand field {k:?} is not supported")
            });
            return Ok(());
        }
        if let Some(ver) = number(r, "bver", at, self)? {
            if ver > 10.0 {
                self.push(RejectReason::BadSenml, || {
                    format!("{at}.bver: version {ver} is not supported")
                });
                return Ok(());
            }
        }
        if let Some(s) = text(r, "bn", at, self)? {
            base.name = s.to_owned();
        }
        if let Some(t) = number(r, "bt", at, self)? {
            base.time = t;
        }
        if let Some(u) = text(r, "bu", at, self)? {
            base.unit = Some(u.to_owned());
        }
        if let Some(v) = number(r, "bv", at, self)? {
            base.value = v;
        }
        let n = text(r, "n", at, self)?;
        let u = text(r, "u", at, self)?
            .map(str::to_owned)
            .or_else(|| base.unit.clone());
        let t = number(r, "t", at, self)?.unwrap_or(0.0);
        let v = number(r, "v", at, self)?;
        let has_other_value = ["vs", "vb", "vd"].iter().any(|k| r.contains_key(*k));
        let s = number(r, "s", at, self)?;
        if n.is_none() && v.is_none() && s.is_none() && !has_other_value {
            return Ok(()); // a record carrying base fields only
        }
        let name = format!("{}{}", base.name, n.unwrap_or(""));
        if name.is_empty() {
            self.push(RejectReason::BadSenml, || {
                format!("{at}: record has no name (bn + n is empty)")
            });
            return Ok(());
        }
        // String, boolean and data values: no metric stores them (LwM2M's Sensor
        // Units is read above); counted, and the pack's numbers are kept.
        if v.is_none() && s.is_none() && has_other_value {
            self.out.ignored += 1;
            return Ok(());
        }
        let (metric, implied_unit) = match self.target(&name, n, sensor) {
            Target::Metric(m, u) => (m, u),
            Target::Ignore => {
                self.out.ignored += 1;
                return Ok(());
            }
            Target::Unknown(m) => (m, None),
        };
        let metric = metric.as_str();
        let u = u
            .or_else(|| lwm2m_path(&name).and_then(|(o, i, _)| base.units.get(&(o, i)).cloned()))
            .or_else(|| implied_unit.map(str::to_owned));
        let at = format!("{at} ({metric})");
        let abs = base.time + t;
        let time = if abs.abs() < RELATIVE_LIMIT {
            self.now + chrono::Duration::microseconds((abs * 1e6).round() as i64)
        } else if let Some(t) = epoch_seconds(abs) {
            t
        } else {
            self.push(RejectReason::BadTimestamp, || {
                format!("{at}: time {abs} is not a valid instant")
            });
            return Ok(());
        };
        let value = match (v, s) {
            (Some(v), _) => v + base.value,
            (None, Some(s)) => s,
            (None, None) => {
                self.push(RejectReason::MissingValues, || {
                    format!("{at}: record has no value")
                });
                return Ok(());
            }
        };
        // Position records (RFC 8428 units "lat"/"lon") set the sensor's location.
        if matches!(u.as_deref(), Some("lat")) || metric == "lat" || metric == "latitude" {
            position.lat = Some(value);
            return Ok(());
        }
        if matches!(u.as_deref(), Some("lon")) || metric == "lon" || metric == "longitude" {
            position.lon = Some(value);
            return Ok(());
        }
        if !self.check_time(&at, time) {
            return Ok(());
        }
        let value = match (u.as_deref(), self.kind.metric(metric)) {
            (Some(unit), Some(m)) => match units::convert(value, unit, &m.unit) {
                Ok(x) => x,
                Err(e) => {
                    self.push(RejectReason::UnitMismatch, || format!("{at}: {e}"));
                    return Ok(());
                }
            },
            _ => value,
        };
        self.accept(|| at.clone(), metric, time, value);
        Ok(())
    }

    fn senml_position(&mut self, p: Position) {
        match (p.lat, p.lon) {
            (Some(lat), Some(lon)) => match GeoPoint::new(lat, lon) {
                Ok(p) => self.out.location = Some(p),
                Err(e) => self.push(RejectReason::BadLocation, || format!("SenML position: {e}")),
            },
            (None, None) => {}
            _ => self.push(RejectReason::BadLocation, || {
                "SenML position needs both lat and lon".into()
            }),
        }
    }
}

/// The metric a resolved SenML name refers to: the part after the sensor id
/// prefix, or after the last `:` or `/` (e.g. `urn:dev:mac:0024befffe804ff1:temperature`).
fn metric_of<'a>(name: &'a str, sensor: &str) -> &'a str {
    if let Some(rest) = name.strip_prefix(sensor) {
        if let Some(rest) = rest.strip_prefix([':', '/', '.']) {
            return rest;
        }
    }
    name.rsplit([':', '/']).next().unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use crate::decode::testing::{codes, decoder, now};

    #[test]
    fn pack_with_base_fields_units_and_position() {
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
    fn relative_time_and_errors() {
        let d = decoder().decode(
            "cityhub/v1/streetlight/l-2",
            br#"[{"bn":"l-2/","n":"energy","u":"Wh","v":1500,"t":-60},{"n":"power","u":"Cel","v":3},{"n":"dimming","vs":"on"},{"n":"power"}]"#,
            now(),
        );
        assert_eq!(d.readings.len(), 1);
        assert_eq!(d.readings[0].value, 1.5);
        assert_eq!(d.readings[0].time, now() - chrono::Duration::seconds(60));
        assert_eq!(codes(&d), ["unit_mismatch", "missing_values"]);
        assert_eq!(
            d.ignored, 1,
            "the string record is counted, not dead-lettered"
        );
    }

    #[test]
    fn wrong_field_types_and_half_a_position() {
        let d = decoder().decode(
            "cityhub/v1/waste_bin/b-1",
            br#"[{"n":"fill_level","v":"50"},{"bn":7,"n":"fill_level","v":1},{"n":"battery","v":80,"x_":1},{"n":"lat","u":"lat","v":45.1},{"n":"fill_level","v":40}]"#,
            now(),
        );
        assert_eq!(d.readings.len(), 1);
        assert_eq!(
            codes(&d),
            ["bad_senml", "bad_senml", "bad_senml", "bad_location"]
        );
    }

    #[test]
    fn lwm2m_packs_map_by_ipso_object_and_ignore_what_describes() {
        let d = decoder().decode(
            "cityhub/v1/air_quality/aq-1",
            br#"[{"bn":"/3303/0/","n":"5700","v":22.4},{"n":"5701","vs":"Cel"}]"#,
            now(),
        );
        assert!(d.problems.is_empty(), "{:?}", d.problems);
        assert_eq!(d.readings.len(), 1);
        assert_eq!(
            (d.readings[0].metric.as_str(), d.readings[0].value),
            ("temperature", 22.4)
        );
        assert_eq!(d.ignored, 1);
        // A whole Leshan-style instance, Fahrenheit named by Sensor Units after the
        // value, min/max/range resources, an application type, and a second object.
        let d = decoder().decode(
            "cityhub/v1/air_quality/aq-1",
            br#"[{"bn":"/3303/0/","n":"5700","v":71.6},{"n":"5601","v":60},{"n":"5602","v":80},
                 {"n":"5701","vs":"F"},{"n":"5750","vs":"Outdoor"},{"n":"5605","vb":false},
                 {"bn":"/3428/0/","n":"1","v":31.5},{"n":"3","v":12},{"n":"15","v":0.02},
                 {"bn":"/3304/0/","n":"5700","v":48}]"#,
            now(),
        );
        assert!(d.problems.is_empty(), "{:?}", d.problems);
        let got: Vec<(&str, f64)> = d
            .readings
            .iter()
            .map(|r| (r.metric.as_str(), (r.value * 1000.0).round() / 1000.0))
            .collect();
        assert_eq!(
            got,
            [
                ("temperature", 22.0),
                ("pm10", 31.5),
                ("pm2_5", 12.0),
                ("humidity", 48.0)
            ]
        );
        assert_eq!(d.ignored, 6);
        // Filling level (3435, percent) and distance (3330, metres) on a bin.
        let d = decoder().decode(
            "cityhub/v1/waste_bin/bin-9",
            br#"[{"bn":"/3435/0/","n":"2","v":47},{"n":"3","v":61},{"bn":"/3330/0/","n":"5700","v":0.85}]"#,
            now(),
        );
        assert!(d.problems.is_empty(), "{:?}", d.problems);
        let got: Vec<(&str, f64)> = d
            .readings
            .iter()
            .map(|r| (r.metric.as_str(), r.value))
            .collect();
        assert_eq!(got, [("fill_level", 47.0), ("distance", 850.0)]);
        assert_eq!(d.ignored, 1);
        // An object no kind's metric fits is still an unknown metric.
        let d = decoder().decode(
            "cityhub/v1/waste_bin/bin-9",
            br#"[{"bn":"/3316/0/","n":"5700","v":3.3}]"#,
            now(),
        );
        assert_eq!(codes(&d), ["unknown_metric"]);
    }

    #[test]
    fn base_name_without_separator_bom_and_only_strings() {
        let d = decoder().decode(
            "cityhub/v1/air_quality/kpn-1f04",
            br#"[{"bn":"kpn-1f04","n":"temperature","v":21},{"n":"humidity","v":50}]"#,
            now(),
        );
        assert!(d.problems.is_empty(), "{:?}", d.problems);
        assert_eq!(d.readings.len(), 2);
        let d = decoder().decode(
            "cityhub/v1/air_quality/aq-1",
            b"\xEF\xBB\xBF[{\"n\":\"pm10\",\"v\":20}]",
            now(),
        );
        assert!(d.problems.is_empty(), "{:?}", d.problems);
        assert_eq!(d.readings.len(), 1);
        // Strings alone are no reading: the pack is still dead-lettered as empty.
        let d = decoder().decode(
            "cityhub/v1/air_quality/aq-1",
            br#"[{"n":"status","vs":"ok"}]"#,
            now(),
        );
        assert_eq!(codes(&d), ["missing_values"]);
    }

    #[test]
    fn a_kinds_senml_names_map_concentrations_and_vendor_names() {
        let mut s = cityhub_core::Settings::builtin().unwrap();
        let aq = s.kinds.get_mut("air_quality").unwrap();
        aq.senml_names.insert("3325/5700".into(), "no2".into());
        aq.senml_names.insert("3325/1/5700".into(), "o3".into());
        aq.senml_names.insert("temp_c".into(), "temperature".into());
        let d = super::super::Decoder::new(
            s.catalog().unwrap(),
            crate::decode::Limits {
                max_payload_bytes: 4096,
                max_future: chrono::Duration::minutes(10),
                retention: chrono::Duration::days(30),
            },
        )
        .decode(
            "cityhub/v1/air_quality/aq-3",
            br#"[{"bn":"/3325/0/","n":"5700","v":41},{"bn":"/3325/1/","n":"5700","v":60},{"n":"5601","v":1},
                 {"bn":"urn:dev:aq-3:","n":"temp_c","v":9.5}]"#,
            now(),
        );
        assert!(d.problems.is_empty(), "{:?}", d.problems);
        let got: Vec<(&str, f64)> = d
            .readings
            .iter()
            .map(|r| (r.metric.as_str(), r.value))
            .collect();
        assert_eq!(got, [("no2", 41.0), ("o3", 60.0), ("temperature", 9.5)]);
        assert_eq!(d.ignored, 1);
        s.kinds
            .get_mut("air_quality")
            .unwrap()
            .senml_names
            .insert("x".into(), "nope".into());
        let e = s.catalog().unwrap_err().to_string();
        assert!(e.contains("senml_names"), "{e}");
    }
}
