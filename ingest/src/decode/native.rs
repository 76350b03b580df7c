//! The native JSON object: `{"ts": ..., "values": {...}, "location": {...}}`, or
//! `{"readings": [{"ts": ..., "values": {...}}, ...]}` for several timestamps.

use super::check::{is_non_finite_word, parse_ts, type_name, Ctx};
use cityhub_core::RejectReason;
use serde_json::{Map, Value};

impl Ctx<'_> {
    pub(super) fn native(&mut self, obj: &Map<String, Value>) {
        if let Some(loc) = obj.get("location") {
            self.location("location", loc);
        }
        match obj.get("readings") {
            Some(Value::Array(items)) => {
                if items.is_empty() {
                    self.push(RejectReason::MissingValues, || {
                        "readings: the array is empty".into()
                    });
                }
                for (i, item) in items.iter().enumerate() {
                    let at = format!("readings[{i}]");
                    match item {
                        Value::Object(r) => self.native_reading(&at, r),
                        other => self.push(RejectReason::BadShape, || {
                            format!("{at}: expected an object, got {}", type_name(other))
                        }),
                    }
                }
            }
            Some(other) => self.push(RejectReason::BadShape, || {
                format!("readings: expected an array, got {}", type_name(other))
            }),
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
                    self.push(RejectReason::BadTimestamp, || format!("{dot}ts: {why}"));
                    return;
                }
            },
        };
        let values = match r.get("values") {
            Some(Value::Object(v)) if !v.is_empty() => v,
            Some(Value::Object(_)) => {
                self.push(RejectReason::MissingValues, || {
                    format!("{dot}values: the object is empty")
                });
                return;
            }
            Some(other) => {
                self.push(RejectReason::BadShape, || {
                    format!("{dot}values: expected an object, got {}", type_name(other))
                });
                return;
            }
            None => {
                self.push(RejectReason::MissingValues, || {
                    format!("{dot}values is missing")
                });
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
                    None => self.push(RejectReason::NotFinite, || {
                        format!("{}: not representable as a 64-bit float", at())
                    }),
                },
                Value::String(s) if is_non_finite_word(s) => self
                    .push(RejectReason::NotFinite, || {
                        format!("{}: {s:?} is not a finite number", at())
                    }),
                other => self.push(RejectReason::WrongType, || {
                    format!("{}: expected a number, got {}", at(), type_name(other))
                }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::decode::testing::{codes, decoder, decoder_with, now};
    use chrono::{TimeZone, Utc};

    #[test]
    fn single_reading() {
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
    fn epoch_ms_and_readings_array() {
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

    /// A payload of thousands of unknown metrics: the first hundred are described, the
    /// rest counted (their reasons never built), and the valid reading among them kept.
    #[test]
    fn a_flood_of_bad_values_is_described_up_to_a_bound_and_counted_past_it() {
        let mut values: Vec<String> = (0..6000).map(|i| format!("\"a{i}\":1")).collect();
        values.push("\"fill_level\":40".into());
        let payload = format!("{{\"values\":{{{}}}}}", values.join(","));
        let d =
            decoder_with(Vec::new()).decode("cityhub/v1/waste_bin/b", payload.as_bytes(), now());
        assert_eq!(d.readings.len(), 1);
        assert_eq!(d.readings[0].metric.as_str(), "fill_level");
        assert_eq!(d.problems.len(), crate::decode::LISTED_PROBLEMS);
        assert_eq!(d.unlisted as usize, 6000 - crate::decode::LISTED_PROBLEMS);
        assert!(d.problems.iter().all(|p| p.code == "unknown_metric"));
        assert!(
            d.problems[0]
                .reason
                .contains("is not defined for kind waste_bin (known: "),
            "{}",
            d.problems[0].reason
        );
        assert_eq!(
            d.unlisted_reason().unwrap(),
            "and 5900 more problems, not described"
        );
    }

    #[test]
    fn each_bad_class_of_a_native_payload() {
        let dec = decoder();
        let case = |payload: &[u8]| codes(&dec.decode("cityhub/v1/waste_bin/b", payload, now()));
        assert_eq!(case(br#"{"values":{"fill_level":true}}"#), ["wrong_type"]);
        assert_eq!(case(br#"{"values":{"fill_level":101}}"#), ["out_of_range"]);
        assert_eq!(
            case(br#"{"ts":"2026-11-24T11:00:00Z"}"#),
            ["missing_values"]
        );
        assert_eq!(case(br#"{"values":{}}"#), ["missing_values"]);
        assert_eq!(
            case(br#"{"ts":"2026-11-25T11:00:00Z","values":{"fill_level":1}}"#),
            ["future_timestamp"]
        );
        assert_eq!(
            case(br#"{"ts":"2020-01-01T00:00:00Z","values":{"fill_level":1}}"#),
            ["too_old"]
        );
        assert_eq!(
            case(br#"{"ts":"yesterday","values":{"fill_level":1}}"#),
            ["bad_timestamp"]
        );
        assert_eq!(
            case(br#"{"values":{"fill_level":1},"location":{"lat":95,"lon":1}}"#),
            ["bad_location"]
        );
    }
}
