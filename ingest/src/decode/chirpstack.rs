//! ChirpStack v4 uplink events (`application/{app}/device/{devEui}/event/up`):
//! the device in `deviceInfo`, the codec's output in `object`, and gateways'
//! positions in `rxInfo[].location` (only a hint for the sensor's own).

use super::adapter::{decoded_object, path, point, Network};
use serde_json::Value;

pub(super) const NETWORK: Network = Network {
    default_id: "deviceInfo.devEui",
    time: Some("time"),
    position: |doc| {
        path(doc, "rxInfo")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find_map(|rx| {
                point(
                    path(rx, "location.latitude"),
                    path(rx, "location.longitude"),
                )
            })
            .map(|p| (p, true))
    },
    fields: |doc| {
        decoded_object(
            doc,
            "object",
            "the event has no decoded `object`: the device profile has no payload codec",
        )
    },
    metric: |field| Some(field.to_owned()),
};

#[cfg(test)]
mod tests {
    use crate::decode::adapter::testing::{adapter, value};
    use crate::decode::testing::{decoder_with, now};
    use chrono::{TimeZone, Utc};
    use serde_json::Value;

    const CHIRPSTACK: &str = r#"name = "chirpstack"
format = "chirpstack"
kind_from = "deviceInfo.tags.kind""#;

    #[test]
    fn uplink_with_string_numbers_extra_fields_and_gateway_location() {
        let dec = decoder_with(vec![adapter(CHIRPSTACK)]);
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
    fn without_object_names_the_cause() {
        let dec = decoder_with(vec![adapter(CHIRPSTACK)]);
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

    /// Seven real uplinks of a city's ChirpStack (Jena), kept in tests/fixtures.
    #[test]
    fn real_captures_parse() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/chirpstack-jena");
        let a = adapter(
            r#"name = "jena"
format = "chirpstack"
kind_from = "deviceInfo.deviceProfileName"
sensor_id_from = "deviceInfo.deviceName"
kind_map = { "EM310-UDL" = "waste_bin" }
[fields]
battery = "battery""#,
        );
        let dec = decoder_with(vec![a]);
        let mut bins = 0;
        for i in 1..=7 {
            let name = if i == 1 {
                "example.json".to_owned()
            } else {
                format!("example{i}.json")
            };
            let bytes = std::fs::read(dir.join(&name))
                .unwrap_or_else(|e| panic!("{}: {e}", dir.join(&name).display()));
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
}
