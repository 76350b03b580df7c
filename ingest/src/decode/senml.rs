//! SenML packs (RFC 8428): base fields carry over, names are bn + n, times
//! bt + t (relative to now when small), values converted to the kind's unit,
//! `lat`/`lon` records give the position.

use super::check::{epoch_seconds, type_name, Ctx};
use cityhub_config::{units, GeoPoint, RejectReason};
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
            ctx.push(
                RejectReason::BadSenml,
                format!("{at}.{k}: expected a number, got {}", type_name(other)),
            );
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
            ctx.push(
                RejectReason::BadSenml,
                format!("{at}.{k}: expected a string, got {}", type_name(other)),
            );
            Err(WrongField)
        }
    }
}

impl Ctx<'_> {
    pub(super) fn senml(&mut self, records: &[Value], sensor: &str) {
        if records.is_empty() {
            self.push(RejectReason::MissingValues, "SenML pack is empty".into());
            return;
        }
        let mut base = Base::default();
        let mut position = Position::default();
        for (i, rec) in records.iter().enumerate() {
            let at = format!("[{i}]");
            let Value::Object(r) = rec else {
                self.push(
                    RejectReason::BadSenml,
                    format!(
                        "{at}: a SenML record must be an object, got {}",
                        type_name(rec)
                    ),
                );
                continue;
            };
            // A wrong field is already reported; the record is skipped.
            let _ = self.senml_record(&at, r, sensor, &mut base, &mut position);
        }
        self.senml_position(position);
        if self.out.readings.is_empty() && self.out.problems.is_empty() {
            self.push(
                RejectReason::MissingValues,
                "SenML pack holds no values".into(),
            );
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
            self.push(
                RejectReason::BadSenml,
                format!("{at}: must-understand field {k:?} is not supported"),
            );
            return Ok(());
        }
        if let Some(ver) = number(r, "bver", at, self)? {
            if ver > 10.0 {
                self.push(
                    RejectReason::BadSenml,
                    format!("{at}.bver: version {ver} is not supported"),
                );
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
            self.push(
                RejectReason::BadSenml,
                format!("{at}: record has no name (bn + n is empty)"),
            );
            return Ok(());
        }
        let metric = metric_of(&name, sensor);
        let at = format!("{at} ({metric})");
        let abs = base.time + t;
        let time = if abs.abs() < RELATIVE_LIMIT {
            self.now + chrono::Duration::microseconds((abs * 1e6).round() as i64)
        } else if let Some(t) = epoch_seconds(abs) {
            t
        } else {
            self.push(
                RejectReason::BadTimestamp,
                format!("{at}: time {abs} is not a valid instant"),
            );
            return Ok(());
        };
        let value = match (v, s) {
            (Some(v), _) => v + base.value,
            (None, Some(s)) => s,
            (None, None) if has_other_value => {
                self.push(
                    RejectReason::WrongType,
                    format!("{at}: expected a numeric value (v), got vs/vb/vd"),
                );
                return Ok(());
            }
            (None, None) => {
                self.push(
                    RejectReason::MissingValues,
                    format!("{at}: record has no value"),
                );
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
                    self.push(RejectReason::UnitMismatch, format!("{at}: {e}"));
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
                Err(e) => self.push(RejectReason::BadLocation, format!("SenML position: {e}")),
            },
            (None, None) => {}
            _ => self.push(
                RejectReason::BadLocation,
                "SenML position needs both lat and lon".into(),
            ),
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
        assert_eq!(codes(&d), ["unit_mismatch", "wrong_type", "missing_values"]);
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
}
