//! The Things Stack v3 uplinks (`v3/{app}@{tenant}/devices/{device}/up`): the
//! device in `end_device_ids`, the formatter's output in
//! `uplink_message.decoded_payload`, the registry position in `locations.user`.

use super::adapter::{decoded_object, path, point, Network};

pub(super) const NETWORK: Network = Network {
    default_id: "end_device_ids.device_id",
    time: Some("uplink_message.received_at"),
    position: |doc| {
        path(doc, "uplink_message.locations.user")
            .and_then(|u| point(u.get("latitude"), u.get("longitude")))
            .map(|p| (p, false))
    },
    fields: |doc| {
        decoded_object(
            doc,
            "uplink_message.decoded_payload",
            "the uplink has no `decoded_payload`: the device or application has no payload formatter",
        )
    },
    metric: |field| Some(field.to_owned()),
};

#[cfg(test)]
mod tests {
    use crate::decode::adapter::testing::{adapter, value};
    use crate::decode::testing::{decoder_with, now};
    use chrono::{TimeZone, Utc};

    const TTN: &str = r#"name = "tts"
format = "ttn"
kind_from = "end_device_ids.application_ids.application_id"
kind_map = { "cremona-air" = "air_quality" }"#;

    #[test]
    fn uplink_full_and_minimal() {
        let dec = decoder_with(vec![adapter(TTN)]);
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
}
