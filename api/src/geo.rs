//! GeoJSON (RFC 7946) documents of sensors, and OGC API links.

use chrono::{DateTime, Utc};
use cityhub_store::query::SensorView;
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

pub const GEOJSON: &str = "application/geo+json";

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Point {
    /// Always `Point`.
    #[serde(rename = "type")]
    #[schema(example = "Point")]
    pub kind: &'static str,
    /// Longitude, latitude (WGS 84).
    pub coordinates: [f64; 2],
}

/// A GeoJSON Feature; `geometry` is null for a sensor with no known position.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Feature {
    /// Always `Feature`.
    #[serde(rename = "type")]
    #[schema(example = "Feature")]
    pub kind: &'static str,
    pub id: String,
    pub geometry: Option<Point>,
    #[schema(value_type = Object)]
    pub properties: Map<String, Value>,
}

/// A link of an OGC API document.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Link {
    pub href: String,
    pub rel: String,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
}

impl Link {
    pub fn new(rel: &str, href: String, media_type: &str, title: &str) -> Self {
        Link {
            href,
            rel: rel.into(),
            media_type: Some(media_type.into()),
            title: (!title.is_empty()).then(|| title.to_owned()),
        }
    }
}

/// A GeoJSON FeatureCollection, with the OGC API paging members when paged.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FeatureCollection {
    /// Always `FeatureCollection`.
    #[serde(rename = "type")]
    #[schema(example = "FeatureCollection")]
    pub kind: &'static str,
    pub features: Vec<Feature>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub number_matched: Option<i64>,
    pub number_returned: usize,
    /// When the response was made (OGC pages); absent on cacheable documents, whose
    /// ETag would otherwise change on every request.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "cityhub_core::time::serialize_opt"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub time_stamp: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<Link>,
    /// Units of the metric properties (a foreign member; RFC 7946 section 6.1).
    #[serde(skip_serializing_if = "Map::is_empty")]
    #[schema(value_type = Object)]
    pub units: Map<String, Value>,
}

impl FeatureCollection {
    pub fn new(features: Vec<Feature>) -> Self {
        FeatureCollection {
            kind: "FeatureCollection",
            number_returned: features.len(),
            features,
            number_matched: None,
            time_stamp: None,
            links: Vec::new(),
            units: Map::new(),
        }
    }
}

pub(crate) fn geometry(s: &SensorView) -> Option<Point> {
    match (s.lon, s.lat) {
        (Some(lon), Some(lat)) => Some(Point {
            kind: "Point",
            coordinates: [lon, lat],
        }),
        _ => None,
    }
}

fn num(v: f64) -> Value {
    serde_json::Number::from_f64(v)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

/// The API's sensor: registry attributes, plus `latest` with value, unit and time per metric.
pub fn sensor_feature(s: &SensorView) -> Feature {
    let mut p = s.properties.clone();
    p.insert("kind".into(), s.kind.clone().into());
    p.insert(
        "name".into(),
        s.name.clone().map(Value::String).unwrap_or(Value::Null),
    );
    p.insert("first_seen".into(), json_time(s.first_seen));
    p.insert("last_seen".into(), json_time(s.last_seen));
    let mut latest = Map::new();
    for l in &s.latest {
        let mut m = Map::new();
        m.insert("value".into(), num(l.value));
        m.insert("unit".into(), l.unit.clone().into());
        m.insert("time".into(), json_time(Some(l.time)));
        latest.insert(l.metric.clone(), Value::Object(m));
    }
    p.insert("latest".into(), Value::Object(latest));
    if !s.register.is_empty() {
        p.insert("register".into(), Value::Object(s.register.clone()));
    }
    Feature {
        kind: "Feature",
        id: s.id.clone(),
        geometry: geometry(s),
        properties: p,
    }
}

/// The open-data row of a sensor: flat properties (one value and one time per metric of
/// the kind, null when never reported), so GIS tools see plain columns.
pub fn flat_feature(s: &SensorView, columns: &crate::feeds::Columns) -> Feature {
    let mut p = Map::new();
    p.insert("sensor_id".into(), s.id.clone().into());
    p.insert(
        "name".into(),
        s.name.clone().map(Value::String).unwrap_or(Value::Null),
    );
    p.insert("kind".into(), s.kind.clone().into());
    p.insert("last_seen".into(), json_time(s.last_seen));
    for (m, _) in &columns.metrics {
        let l = s.latest.iter().find(|l| &l.metric == m);
        p.insert(m.clone(), l.map(|l| num(l.value)).unwrap_or(Value::Null));
        p.insert(format!("{m}_time"), json_time(l.map(|l| l.time)));
    }
    for (n, d) in &columns.properties {
        let v = s.properties.get(n).and_then(|v| d.ty.fit(v));
        p.insert(n.clone(), v.unwrap_or(Value::Null));
    }
    Feature {
        kind: "Feature",
        id: s.id.clone(),
        geometry: geometry(s),
        properties: p,
    }
}

pub fn json_time(t: Option<DateTime<Utc>>) -> Value {
    t.map(|t| Value::String(rfc3339(t))).unwrap_or(Value::Null)
}

pub use cityhub_core::time::rfc3339;

/// The newest change a set of sensors shows (for Last-Modified).
pub fn last_modified(sensors: &[SensorView]) -> Option<DateTime<Utc>> {
    sensors
        .iter()
        .flat_map(|s| s.latest.iter().map(|l| l.time).chain([s.updated_at]))
        .max()
}
