//! The domain core of cityhub, shared by every crate: typed settings and their
//! generated reference, the sensor-kind catalogue, validated names and positions,
//! units, reject reasons, alert rules, indicator definitions and the sun.

pub mod adapters;
pub mod alerts;
pub mod backoff;
pub mod credentials;
pub mod indicators;
pub mod kinds;
pub mod model;
pub mod ngsi_ld;
pub mod odata;
pub mod reference;
pub mod register;
pub mod reject;
pub mod settings;
pub mod sun;
pub mod time;
pub mod units;
pub mod values;

pub use adapters::{AdapterDef, AdapterFormat, FieldDef, FieldMap};
pub use backoff::Backoff;
pub use kinds::{Catalog, DerivedDef, Formula, HvdCategory, Kind, KindDef, Metric, MetricDef};
pub use model::{GeoPoint, ModelError, Name, SensorId};
pub use reject::RejectReason;
pub use settings::{
    CatalogSettings, ConfigError, ConnUrl, HttpSettings, IngestSettings, LogFormat,
    MaintenanceMode, MqttSettings, Registration, Secret, Settings, StaSettings, StaTopic,
    TimescaleMode,
};
