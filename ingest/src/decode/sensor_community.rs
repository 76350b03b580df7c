//! Sensor.Community (airrohr firmware) JSON: `esp8266id` and `sensordatavalues`
//! with string values, over MQTT or the firmware's HTTP "custom API".

use super::adapter::{path, Network};
use super::{problem, Decoded, Decoder};
use chrono::{DateTime, Utc};
use cityhub_core::{AdapterDef, AdapterFormat, RejectReason};
use serde_json::{Map, Value};

pub(super) const NETWORK: Network = Network {
    default_id: "esp8266id",
    time: None,
    position: |_| None,
    fields: |doc| {
        let Some(items) = path(doc, "sensordatavalues").and_then(Value::as_array) else {
            return Err(problem(
                RejectReason::BadShape,
                "sensordatavalues: expected an array",
            ));
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
        Ok(m)
    },
    metric: |value_type| metric(value_type).map(str::to_owned),
};

/// Sensor.Community value types -> cityhub metric names.
fn metric(value_type: &str) -> Option<&'static str> {
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
    /// A Sensor.Community submission over HTTP (the airrohr firmware's custom API),
    /// read by the configured sensor_community adapter or, without one, as `sc-<chip id>`.
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
    use crate::decode::adapter::testing::{adapter, value};
    use crate::decode::testing::{decoder_with, now};

    #[test]
    fn json_with_string_values() {
        let a = adapter("name = \"sc\"\nformat = \"sensor_community\"\nsensor_id_prefix = \"sc-\"");
        let dec = decoder_with(vec![a]);
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
    }

    #[test]
    fn over_http_the_chip_id_may_come_from_the_header() {
        let dec = decoder_with(Vec::new());
        let d = dec.decode_sensor_community_http(
            br#"{"sensordatavalues":[{"value_type":"P1","value":"12.5"}]}"#,
            Some("esp8266-999"),
            now(),
        );
        assert_eq!(d.sensor.as_ref().unwrap().0.as_str(), "sc-999");
        assert_eq!(value(&d, "pm10"), 12.5);
        let d = dec.decode_sensor_community_http(br#"{"esp8266id":"1"}"#, None, now());
        assert_eq!(d.problems[0].code, "bad_shape");
    }
}
