//! Adapters: how messages of network servers (ChirpStack, The Things Stack)
//! and community networks (Sensor.Community) map onto kinds, sensors and metrics.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The message formats an adapter reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AdapterFormat {
    /// ChirpStack v4 MQTT integration uplink events.
    Chirpstack,
    /// The Things Stack v3 uplink messages.
    Ttn,
    /// Sensor.Community (airrohr) JSON.
    SensorCommunity,
}

impl AdapterFormat {
    /// The topic filter its network server publishes uplinks on.
    pub fn default_topic(self) -> &'static str {
        match self {
            AdapterFormat::Chirpstack => "application/+/device/+/event/up",
            AdapterFormat::Ttn => "v3/+/devices/+/up",
            AdapterFormat::SensorCommunity => "sensor-community/+",
        }
    }
}

/// One source field mapped to a metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum FieldMap {
    /// Just the metric name.
    Metric(String),
    Full(FieldDef),
}

/// A source field mapped to a metric, with a conversion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldDef {
    /// The metric of the kind the value is stored as.
    pub metric: String,
    /// stored = raw * scale + offset, then converted from `unit` to the kind's unit.
    #[serde(default = "one")]
    pub scale: f64,
    /// Added after scaling.
    #[serde(default)]
    pub offset: f64,
    /// The unit the source sends (converted to the metric's own unit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

fn one() -> f64 {
    1.0
}

impl FieldMap {
    pub fn def(&self) -> FieldDef {
        match self {
            FieldMap::Metric(m) => FieldDef {
                metric: m.clone(),
                scale: 1.0,
                offset: 0.0,
                unit: None,
            },
            FieldMap::Full(d) => d.clone(),
        }
    }
}

/// An `[[adapters]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdapterDef {
    /// A label for logs and dead letters.
    pub name: String,
    /// The message format: `chirpstack`, `ttn` or `sensor_community`.
    pub format: AdapterFormat,
    /// MQTT topic filter; the format's usual one when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// A fixed kind for every device of this adapter...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// ...or a path into the message (e.g. `deviceInfo.tags.kind`,
    /// `deviceInfo.deviceProfileName`, `end_device_ids.application_ids.application_id`),
    /// or `registry` (the kind the sensor is registered with).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind_from: Option<String>,
    /// Maps values found at `kind_from` to kinds (e.g. a device profile name to `waste_bin`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub kind_map: BTreeMap<String, String>,
    /// Path of the sensor id in the message; the format's device id when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensor_id_from: Option<String>,
    /// Prepended to the sensor id (e.g. `sc-` for Sensor.Community chips).
    #[serde(default)]
    pub sensor_id_prefix: String,
    /// Source field -> metric. Fields not listed are used when they are named like
    /// a metric of the kind, and ignored otherwise.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, FieldMap>,
}

impl AdapterDef {
    pub fn topic(&self) -> String {
        self.topic
            .clone()
            .unwrap_or_else(|| self.format.default_topic().to_owned())
    }
}
