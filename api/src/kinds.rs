//! `/api/v1/kinds`: the kind catalogue as configured (metrics, units, valid
//! ranges, themes, map rules), so clients need no copy of the configuration.

use crate::AppState;
use axum::extract::State;
use axum::Json;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

/// One metric of a kind.
#[derive(Debug, Serialize, ToSchema)]
pub struct MetricInfo {
    pub name: String,
    pub unit: String,
    /// Lowest valid value (inclusive); readings outside the range are refused.
    pub min: Option<f64>,
    pub max: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Computed by the hub (e.g. fill level from distance and bin depth).
    pub derived: bool,
}

/// A sensor kind as configured.
#[derive(Debug, Serialize, ToSchema)]
pub struct KindInfo {
    pub name: String,
    pub title: String,
    pub title_it: Option<String>,
    pub description: Option<String>,
    pub description_it: Option<String>,
    /// EU data-theme code (ENVI, ENER, TRAN, ...).
    pub theme: String,
    /// Expected seconds between two reports of one sensor.
    pub cadence_s: u32,
    pub main_metric: Option<String>,
    pub metrics: Vec<MetricInfo>,
    /// How the operator map judges a sensor: `{"rule": "above", "metric", "warn",
    /// "alarm"}`, `{"rule": "lamp", "metric", "lit_above"}` or `{"rule": "activity",
    /// "metric", "steps"}`; absent for a kind with no rule.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub map: Option<Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KindList {
    pub kinds: Vec<KindInfo>,
}

/// The kind catalogue: metrics, units and valid ranges.
#[utoipa::path(get, path = "/api/v1/kinds", tag = "sensors",
    responses((status = 200, description = "The configured kinds", body = KindList)))]
pub async fn kinds(State(s): State<AppState>) -> Json<KindList> {
    let kinds = s
        .catalog
        .iter()
        .map(|k| KindInfo {
            name: k.name.to_string(),
            title: k.def.title.clone(),
            title_it: k.def.title_it.clone(),
            description: k.def.description.clone(),
            description_it: k.def.description_it.clone(),
            theme: k.def.theme.clone(),
            cadence_s: k.def.cadence_s,
            main_metric: k.def.main_metric.clone(),
            metrics: k
                .metrics
                .values()
                .map(|m| MetricInfo {
                    name: m.name.to_string(),
                    unit: m.unit.clone(),
                    min: m.min,
                    max: m.max,
                    title: k
                        .def
                        .metrics
                        .get(m.name.as_str())
                        .and_then(|d| d.title.clone()),
                    derived: k.def.derived.contains_key(m.name.as_str()),
                })
                .collect(),
            map: k
                .def
                .map
                .as_ref()
                .and_then(|r| serde_json::to_value(r).ok()),
        })
        .collect();
    Json(KindList { kinds })
}
