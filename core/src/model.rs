//! Validated newtypes for what crosses the edges of the hub: ids and names
//! from topics and payloads, and positions.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why a name, id or position was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    #[error("sensor id must be 1-128 characters of A-Z a-z 0-9 . _ : - (got {0:?})")]
    SensorId(String),
    #[error("name must match [a-z][a-z0-9_]{{0,62}} (got {0:?})")]
    Name(String),
    #[error(
        "latitude must be within -90..90 and longitude within -180..180 (got lat {lat}, lon {lon})"
    )]
    GeoPoint { lat: f64, lon: f64 },
}

/// A sensor's external id, as it appears in topics and feeds. The character set
/// keeps ids safe in MQTT topics, URLs, CSV and PostgreSQL text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SensorId(String);

impl SensorId {
    /// What [`SensorId::parse`] takes, as a regular expression (for API documents).
    pub const PATTERN: &'static str = "^[A-Za-z0-9._:-]{1,128}$";

    pub fn parse(s: &str) -> Result<Self, ModelError> {
        let ok = !s.is_empty()
            && s.len() <= 128
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(ModelError::SensorId(truncate(s)))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for SensorId {
    type Error = ModelError;
    fn try_from(s: String) -> Result<Self, ModelError> {
        Self::parse(&s)
    }
}
impl From<SensorId> for String {
    fn from(s: SensorId) -> String {
        s.0
    }
}
impl std::borrow::Borrow<str> for SensorId {
    fn borrow(&self) -> &str {
        &self.0
    }
}
impl fmt::Display for SensorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A kind or metric name: lower-case identifier, so it is usable as a topic
/// level, a URL path segment, a CSV column and a catalogue identifier as is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Name(String);

impl Name {
    pub fn parse(s: &str) -> Result<Self, ModelError> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 63
            && b[0].is_ascii_lowercase()
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(ModelError::Name(truncate(s)))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl TryFrom<String> for Name {
    type Error = ModelError;
    fn try_from(s: String) -> Result<Self, ModelError> {
        Self::parse(&s)
    }
}
impl From<Name> for String {
    fn from(s: Name) -> String {
        s.0
    }
}
impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::borrow::Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// A WGS 84 position (RFC 7946 order is lon, lat; fields are named to avoid
/// the classic swap).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GeoPoint {
    lat: f64,
    lon: f64,
}

impl GeoPoint {
    pub fn new(lat: f64, lon: f64) -> Result<Self, ModelError> {
        if lat.is_finite()
            && lon.is_finite()
            && (-90.0..=90.0).contains(&lat)
            && (-180.0..=180.0).contains(&lon)
        {
            Ok(Self { lat, lon })
        } else {
            Err(ModelError::GeoPoint { lat, lon })
        }
    }
    pub fn lat(&self) -> f64 {
        self.lat
    }
    pub fn lon(&self) -> f64 {
        self.lon
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sensor_ids() {
        assert!(SensorId::parse("bin-0001").is_ok());
        assert!(SensorId::parse("urn:dev:a0b1.c_2").is_ok());
        assert!(SensorId::parse("").is_err());
        assert!(SensorId::parse("a/b").is_err());
        assert!(SensorId::parse("a b").is_err());
        assert!(SensorId::parse("a\0b").is_err());
        assert!(SensorId::parse(&"x".repeat(129)).is_err());
    }

    #[test]
    fn names() {
        assert!(Name::parse("pm2_5").is_ok());
        assert!(Name::parse("PM10").is_err());
        assert!(Name::parse("2pm").is_err());
        assert!(Name::parse("waste-bin").is_err());
    }

    #[test]
    fn points() {
        assert!(GeoPoint::new(45.13, 10.02).is_ok());
        assert!(GeoPoint::new(91.0, 10.0).is_err());
        assert!(GeoPoint::new(45.0, f64::NAN).is_err());
    }
}
