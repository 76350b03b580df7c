//! Typed settings and the sensor-kind catalogue shared by every cityhub crate.

pub mod kinds;
pub mod model;
pub mod settings;
pub mod units;

pub use kinds::{Catalog, Kind, KindDef, Metric, MetricDef};
pub use model::{GeoPoint, ModelError, Name, SensorId};
pub use settings::{ConfigError, ConnUrl, LogFormat, Secret, Settings, TimescaleMode};
