//! Why the hub refused a message (or part of it): the `reason_code` of a dead
//! letter and the label of `cityhub_dead_letters_total`. One enum, so decoding,
//! the writer, metrics and the API agree on the set.

use serde::Serialize;

/// A class of refusal; the precise reason of each refusal is text beside it.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::EnumIter,
    strum::Display,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum RejectReason {
    Oversize,
    MalformedJson,
    NotFinite,
    BadShape,
    BadTopic,
    UnknownKind,
    BadSensorId,
    BadTimestamp,
    FutureTimestamp,
    TooOld,
    MissingValues,
    UnknownMetric,
    WrongType,
    OutOfRange,
    UnitMismatch,
    BadLocation,
    BadSenml,
    NoDecodedPayload,
    KindMismatch,
    DatabaseRefused,
    UnregisteredSensor,
    SensorLimit,
}

impl RejectReason {
    /// The stable code (`out_of_range`), as stored and as the metric label.
    pub fn code(self) -> &'static str {
        self.into()
    }

    /// What the class means, for people reading dead letters or the docs.
    pub fn message(self) -> &'static str {
        use RejectReason::*;
        match self {
            Oversize => "the payload is larger than ingest.max_payload_bytes",
            MalformedJson => "the payload is not valid JSON",
            NotFinite => "a value is not a finite 64-bit number",
            BadShape => "the JSON does not have the expected structure",
            BadTopic => "the topic is not cityhub/v1/{kind}/{sensor_id}",
            UnknownKind => "the kind is not in the catalogue",
            BadSensorId => "the sensor id is missing or has characters outside A-Z a-z 0-9 . _ : -",
            BadTimestamp => "the timestamp is neither RFC 3339 nor epoch milliseconds",
            FutureTimestamp => "the timestamp is further ahead than ingest.max_future_s",
            TooOld => "the timestamp is older than the retention",
            MissingValues => "the message carries no value",
            UnknownMetric => "the metric is not defined for the kind",
            WrongType => "a value is not a number",
            OutOfRange => "a value is outside the metric's valid range",
            UnitMismatch => "a unit cannot be converted to the metric's unit",
            BadLocation => "the position is not a valid latitude and longitude",
            BadSenml => "a SenML record is not valid (RFC 8428)",
            NoDecodedPayload => "a network server's uplink has no decoded payload",
            KindMismatch => "the sensor is registered as another kind",
            DatabaseRefused => "the database refused the message's rows (the reason says why)",
            UnregisteredSensor => {
                "the sensor is not registered and ingest.registration is \"known\""
            }
            SensorLimit => "registering the sensor would pass ingest.max_sensors",
        }
    }
}

/// So tests and filters can compare with the stored code directly.
impl PartialEq<&str> for RejectReason {
    fn eq(&self, other: &&str) -> bool {
        self.code() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strum::IntoEnumIterator;

    #[test]
    fn codes_are_stable_snake_case_and_round_trip() {
        assert_eq!(RejectReason::OutOfRange.code(), "out_of_range");
        assert_eq!(RejectReason::BadSenml.code(), "bad_senml");
        assert_eq!(RejectReason::iter().count(), 22);
        for r in RejectReason::iter() {
            assert_eq!(r.code().parse::<RejectReason>().unwrap(), r);
            assert_eq!(serde_json::to_value(r).unwrap(), r.code());
            assert!(!r.message().is_empty());
        }
    }
}
