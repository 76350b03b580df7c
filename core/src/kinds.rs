//! The sensor-kind catalogue: which kinds exist, their metrics, units and
//! valid ranges. Loaded from configuration, never compiled in.

use crate::model::Name;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One metric of a kind, as configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricDef {
    /// Unit of the stored values (UCUM-style, e.g. `%`, `Wh`, `ug/m3`).
    pub unit: String,
    /// Values below this are refused as `out_of_range` dead letters.
    pub min: Option<f64>,
    /// Values above this are refused as `out_of_range` dead letters.
    pub max: Option<f64>,
    /// A human name for legends and the catalogue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
}

/// One sensor kind, as configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KindDef {
    /// A disabled kind is refused on arrival and hidden from the API.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Name of the kind (English).
    pub title: String,
    /// Name of the kind (Italian).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title_it: Option<String>,
    /// What the kind measures (English).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// What the kind measures (Italian).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description_it: Option<String>,
    /// EU data-theme code (ENVI, ENER, TRAN, ...), for the catalogue.
    #[serde(default = "default_theme")]
    pub theme: String,
    /// Expected seconds between two reports of one sensor.
    #[serde(default = "default_cadence")]
    pub cadence_s: u32,
    /// The metric the map and the feeds show first; the first metric when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub main_metric: Option<String>,
    /// The kind's metrics, by name.
    pub metrics: BTreeMap<String, MetricDef>,
    /// Metrics computed by the hub from another metric and a sensor property.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub derived: BTreeMap<String, DerivedDef>,
    /// How the operator map colours this kind's markers and what it lists as
    /// needing action; a kind without one is drawn in a neutral colour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map: Option<MapRule>,
    /// SenML names this kind's devices use for its metrics, beyond the metric
    /// names and the built-in LwM2M/IPSO objects: a resolved name's last part
    /// (`temp_c`) or an LwM2M path, with instance (`3303/1/5700`) or without
    /// (`3325/5700`, any instance), mapped to a metric of the kind.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub senml_names: BTreeMap<String, String>,
    /// The high-value dataset category (Implementing Regulation (EU) 2023/138)
    /// this kind's data falls in, when the city publishes it as one: the
    /// catalogue then tags the dataset, its distributions and the API with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hvd_category: Option<HvdCategory>,
    /// How the kind's sensors appear in the NGSI-LD API: the Smart Data Model each
    /// is an entity of, and where each of the model's attributes comes from. A kind
    /// without one is not served there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ngsi_ld: Option<crate::ngsi_ld::ModelDef>,
    /// The registry attributes a city records for this kind's sensors (a bin's
    /// `depth_mm`, its waste `stream`): each is a column of the feeds and the OGC
    /// items, with one type whatever a sensor has, and an import is refused when a
    /// value does not fit it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, PropertyDef>,
}

/// A registry attribute of a kind's sensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PropertyDef {
    /// Its JSON type: `number`, `integer`, `string` or `boolean`.
    #[serde(rename = "type")]
    pub ty: PropertyType,
    /// Unit of a number, for headers and legends (e.g. `mm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// What it is (English).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// What it is (Italian).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description_it: Option<String>,
}

/// The JSON type of a registry attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PropertyType {
    Number,
    Integer,
    String,
    Boolean,
}

impl PropertyType {
    /// The JSON Schema type name.
    pub fn json_type(self) -> &'static str {
        match self {
            Self::Number => "number",
            Self::Integer => "integer",
            Self::String => "string",
            Self::Boolean => "boolean",
        }
    }

    /// `v` as this type, or `None` when it is not one (a value registered before the
    /// declaration): the outputs never change a column's type.
    pub fn fit(self, v: &serde_json::Value) -> Option<serde_json::Value> {
        use serde_json::Value;
        match (self, v) {
            (Self::Number, Value::Number(n)) if n.as_f64().is_some_and(f64::is_finite) => {
                Some(v.clone())
            }
            (Self::Integer, Value::Number(n)) if n.is_i64() || n.is_u64() => Some(v.clone()),
            (Self::Integer, Value::Number(n)) => n
                .as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                .map(|f| Value::from(f as i64)),
            (Self::String, Value::String(_)) | (Self::Boolean, Value::Bool(_)) => Some(v.clone()),
            _ => None,
        }
    }
}

/// The six categories of Implementing Regulation (EU) 2023/138, as the EU's
/// HVD category vocabulary (<http://data.europa.eu/bna/asd487ae75>) names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HvdCategory {
    Geospatial,
    EarthObservationEnvironment,
    Meteorological,
    Statistics,
    Companies,
    Mobility,
}

impl HvdCategory {
    pub fn uri(self) -> &'static str {
        match self {
            Self::Geospatial => "http://data.europa.eu/bna/c_ac64a52d",
            Self::EarthObservationEnvironment => "http://data.europa.eu/bna/c_dd313021",
            Self::Meteorological => "http://data.europa.eu/bna/c_164e0bf5",
            Self::Statistics => "http://data.europa.eu/bna/c_e1da4e07",
            Self::Companies => "http://data.europa.eu/bna/c_a9135398",
            Self::Mobility => "http://data.europa.eu/bna/c_b79e35eb",
        }
    }

    /// English and Italian labels.
    pub fn labels(self) -> (&'static str, &'static str) {
        match self {
            Self::Geospatial => ("Geospatial", "Dati geospaziali"),
            Self::EarthObservationEnvironment => (
                "Earth observation and environment",
                "Dati relativi all'osservazione della terra e all'ambiente",
            ),
            Self::Meteorological => ("Meteorological", "Dati meteorologici"),
            Self::Statistics => ("Statistics", "Dati statistici"),
            Self::Companies => (
                "Companies and company ownership",
                "Dati relativi alle imprese e alla proprietà delle imprese",
            ),
            Self::Mobility => ("Mobility", "Dati relativi alla mobilità"),
        }
    }
}

/// The state of a sensor as the operator map shows it, judged on its latest
/// value of `metric` (staleness, three missed cadences, is judged for every kind).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "rule", rename_all = "snake_case", deny_unknown_fields)]
pub enum MapRule {
    /// Higher is worse: `warn` and above is amber, `alarm` and above is red and
    /// needs action (bin fill, a pollutant against its limit value).
    Above {
        /// The metric judged.
        metric: String,
        /// Amber from this value.
        warn: f64,
        /// Red, and needs action, from this value.
        alarm: f64,
    },
    /// A lamp: lit (`metric` above `lit_above`) while the sun is up at the lamp,
    /// or dark while it is down, is a fault.
    Lamp {
        /// The metric judged (the lamp's power or energy).
        metric: String,
        /// Above this value the lamp is lit.
        lit_above: f64,
    },
    /// Activity only, never an alarm: shades by `metric` against ascending `steps`
    /// (a counter's count per interval).
    Activity {
        /// The metric judged.
        metric: String,
        /// Ascending values where the shade steps up.
        steps: Vec<f64>,
    },
}

impl MapRule {
    pub fn metric(&self) -> &str {
        match self {
            Self::Above { metric, .. }
            | Self::Lamp { metric, .. }
            | Self::Activity { metric, .. } => metric,
        }
    }
}

/// How a derived metric is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Formula {
    /// Ultrasonic bin sensors: `100 * (1 - distance / depth)`, clamped to 0-100 %.
    FillFromDistance,
}

impl Formula {
    /// The values the registry property may take: outside them the formula means
    /// nothing (or overflows), so registration refuses them and the writer skips them.
    pub fn property_range(self) -> (f64, f64) {
        match self {
            // A bin's depth in mm: from 1 mm to 100 m.
            Formula::FillFromDistance => (1.0, 100_000.0),
        }
    }
}

/// A metric the hub derives at commit time, e.g. `fill_level` from `distance`
/// and the bin's registered depth.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DerivedDef {
    /// The metric it is computed from.
    pub from: String,
    /// How it is computed.
    pub formula: Formula,
    /// The sensor property (from the registry) the formula needs, e.g. `depth_mm`.
    pub property: String,
}

fn check_map_rule(kind: &str, def: &KindDef, rule: &MapRule) -> Result<(), CatalogError> {
    let fail = |reason: String| {
        Err(CatalogError::Map {
            kind: kind.to_owned(),
            reason,
        })
    };
    if !def.metrics.contains_key(rule.metric()) {
        return fail(format!("{:?} is not one of its metrics", rule.metric()));
    }
    match rule {
        MapRule::Above { warn, alarm, .. } if warn.partial_cmp(alarm).is_none_or(|o| o.is_gt()) => {
            fail(format!("warn {warn} must not be above alarm {alarm}"))
        }
        MapRule::Activity { steps, .. }
            if steps.is_empty()
                || steps
                    .windows(2)
                    .any(|w| w[0].partial_cmp(&w[1]) != Some(std::cmp::Ordering::Less)) =>
        {
            fail("steps must be one or more ascending numbers".into())
        }
        _ => Ok(()),
    }
}

fn yes() -> bool {
    true
}
fn default_theme() -> String {
    "TECH".into()
}
fn default_cadence() -> u32 {
    900
}

/// A problem in the kind configuration.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CatalogError {
    #[error("kind {kind:?}: {source}")]
    KindName {
        kind: String,
        source: crate::model::ModelError,
    },
    #[error("kind {kind:?} metric {metric:?}: {source}")]
    MetricName {
        kind: String,
        metric: String,
        source: crate::model::ModelError,
    },
    #[error("kind {kind:?} metric {metric:?}: min {min} is above max {max}")]
    Range {
        kind: String,
        metric: String,
        min: f64,
        max: f64,
    },
    #[error("kind {0:?} has no metrics")]
    NoMetrics(String),
    #[error("kind {kind:?}: main_metric {metric:?} is not one of its metrics")]
    MainMetric { kind: String, metric: String },
    #[error("kind {kind:?}: senml_names: {name:?} maps to {metric:?}, which is not a metric of the kind")]
    SenmlName {
        kind: String,
        name: String,
        metric: String,
    },
    #[error("kind {kind:?}: map rule: {reason}")]
    Map { kind: String, reason: String },
    #[error("kind {kind:?}: ngsi_ld: {reason}")]
    NgsiLd { kind: String, reason: String },
    #[error("kind {kind:?}: property {property:?}: {reason}")]
    Property {
        kind: String,
        property: String,
        reason: String,
    },
    #[error("kind {kind:?}: derived metric {metric:?} and its source {from:?} must both be metrics of the kind")]
    Derived {
        kind: String,
        metric: String,
        from: String,
    },
}

/// The columns every feed row has before the metrics' and the properties'.
pub const RESERVED_COLUMNS: &[&str] = &["sensor_id", "name", "kind", "lon", "lat", "last_seen"];

/// A validated metric: what the pipeline checks values against.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub name: Name,
    pub unit: String,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

impl Metric {
    pub fn in_range(&self, v: f64) -> bool {
        self.min.is_none_or(|m| v >= m) && self.max.is_none_or(|m| v <= m)
    }
}

/// A validated kind.
#[derive(Debug, Clone, PartialEq)]
pub struct Kind {
    pub name: Name,
    pub def: KindDef,
    pub metrics: BTreeMap<Name, Metric>,
}

impl Kind {
    pub fn metric(&self, name: &str) -> Option<&Metric> {
        self.metrics.get(name)
    }

    /// Checks the registry attributes a derived metric of this kind reads (e.g.
    /// `depth_mm`): a finite number within the formula's range, when present.
    pub fn check_properties(
        &self,
        props: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), String> {
        for (name, def) in &self.def.properties {
            match props.get(name) {
                None | Some(serde_json::Value::Null) => {}
                Some(v) if def.ty.fit(v).is_some() => {}
                Some(v) => {
                    return Err(format!(
                        "{name} must be {} {} (got {v})",
                        if def.ty == PropertyType::Integer {
                            "an"
                        } else {
                            "a"
                        },
                        def.ty.json_type()
                    ))
                }
            }
        }
        for d in self.def.derived.values() {
            let Some(v) = props.get(&d.property) else {
                continue;
            };
            let (lo, hi) = d.formula.property_range();
            match v.as_f64() {
                Some(x) if x.is_finite() && (lo..=hi).contains(&x) => {}
                _ => {
                    return Err(format!(
                        "{} must be a number from {lo} to {hi} (got {v})",
                        d.property
                    ))
                }
            }
        }
        Ok(())
    }
}

/// The enabled kinds, validated and indexed by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalog {
    kinds: BTreeMap<Name, Kind>,
}

impl Catalog {
    pub fn from_defs(defs: &BTreeMap<String, KindDef>) -> Result<Self, CatalogError> {
        let mut kinds = BTreeMap::new();
        for (kname, def) in defs.iter().filter(|(_, d)| d.enabled) {
            let name = Name::parse(kname).map_err(|source| CatalogError::KindName {
                kind: kname.clone(),
                source,
            })?;
            if def.metrics.is_empty() {
                return Err(CatalogError::NoMetrics(kname.clone()));
            }
            let mut metrics = BTreeMap::new();
            for (mname, m) in &def.metrics {
                let mn = Name::parse(mname).map_err(|source| CatalogError::MetricName {
                    kind: kname.clone(),
                    metric: mname.clone(),
                    source,
                })?;
                if let (Some(min), Some(max)) = (m.min, m.max) {
                    if min > max {
                        return Err(CatalogError::Range {
                            kind: kname.clone(),
                            metric: mname.clone(),
                            min,
                            max,
                        });
                    }
                }
                metrics.insert(
                    mn.clone(),
                    Metric {
                        name: mn,
                        unit: m.unit.clone(),
                        min: m.min,
                        max: m.max,
                    },
                );
            }
            if let Some(main) = &def.main_metric {
                if !def.metrics.contains_key(main) {
                    return Err(CatalogError::MainMetric {
                        kind: kname.clone(),
                        metric: main.clone(),
                    });
                }
            }
            if let Some((name, metric)) = def
                .senml_names
                .iter()
                .find(|(_, m)| !def.metrics.contains_key(m.as_str()))
            {
                return Err(CatalogError::SenmlName {
                    kind: kname.clone(),
                    name: name.clone(),
                    metric: metric.clone(),
                });
            }
            if let Some(rule) = &def.map {
                check_map_rule(kname, def, rule)?;
            }
            for d in def.derived.values() {
                if let Some(p) = def.properties.get(&d.property) {
                    if !matches!(p.ty, PropertyType::Number | PropertyType::Integer) {
                        return Err(CatalogError::Property {
                            kind: kname.clone(),
                            property: d.property.clone(),
                            reason: "a derived metric reads it, so it must be a number".into(),
                        });
                    }
                }
            }
            if let Some(p) = def.properties.keys().find(|p| {
                def.metrics.contains_key(p.as_str())
                    || Name::parse(p).is_err()
                    || RESERVED_COLUMNS.contains(&p.as_str())
                    || p.ends_with("_time")
            }) {
                return Err(CatalogError::Property {
                    kind: kname.clone(),
                    property: p.clone(),
                    reason:
                        "not a valid column name: a metric's, a reserved one, or ending in _time"
                            .into(),
                });
            }
            if let Some(m) = &def.ngsi_ld {
                m.check(def).map_err(|reason| CatalogError::NgsiLd {
                    kind: kname.clone(),
                    reason,
                })?;
            }
            kinds.insert(
                name.clone(),
                Kind {
                    name,
                    def: def.clone(),
                    metrics,
                },
            );
        }
        Ok(Self { kinds })
    }

    pub fn get(&self, name: &str) -> Option<&Kind> {
        self.kinds.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Kind> {
        self.kinds.values()
    }

    pub fn len(&self) -> usize {
        self.kinds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kinds.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn derived_properties_must_be_in_the_formulas_range() {
        let catalog = crate::Settings::builtin().unwrap().catalog().unwrap();
        let bin = catalog.get("waste_bin").unwrap();
        let props = |v: serde_json::Value| json!({ "depth_mm": v }).as_object().unwrap().clone();
        assert!(bin.check_properties(&props(json!(1200))).is_ok());
        assert!(bin.check_properties(&serde_json::Map::new()).is_ok());
        for bad in [
            json!(1e-305),
            json!(0),
            json!(-5),
            json!(1e9),
            json!("deep"),
        ] {
            let e = bin.check_properties(&props(bad.clone())).unwrap_err();
            assert!(e.contains("depth_mm"), "{bad}: {e}");
        }
        // Kinds with no derived metric take any attributes.
        let lamp = catalog.get("streetlight").unwrap();
        assert!(lamp.check_properties(&props(json!(1e-305))).is_ok());
    }
}
