//! The public sensor register as open data: for every sensor, what it is for, who
//! answers for it, what it measures, whether it can capture personal data and on
//! what legal basis, and how long its readings are kept. GeoJSON and CSV.

use crate::cache::send_doc;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::geo::{Feature, FeatureCollection, GEOJSON};
use crate::params::{NoParams, StrictQuery};
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::Response;
use cityhub_store::query::{self, SensorFilter, SensorView};
use serde_json::{Map, Value};

/// The register's columns after the sensor's id, name, kind and position.
pub const COLUMNS: &[&str] = &[
    "purpose",
    "purpose_en",
    "responsible",
    "contact",
    "measures",
    "personal_data",
    "legal_basis",
    "public_space",
    "retention_days",
    "service_status",
];

/// One sensor's register row, every column present (null when not given), so GIS
/// tools and spreadsheets see the same columns for every sensor.
fn row(s: &AppState, v: &SensorView) -> Map<String, Value> {
    let mut p = Map::new();
    p.insert("sensor_id".into(), v.id.clone().into());
    p.insert(
        "name".into(),
        v.name.clone().map(Value::from).unwrap_or(Value::Null),
    );
    p.insert("kind".into(), v.kind.clone().into());
    let text = |k: &str| v.register.get(k).cloned().unwrap_or(Value::Null);
    for k in ["purpose", "purpose_en", "responsible", "contact"] {
        p.insert(k.into(), text(k));
    }
    let measures = s
        .catalog
        .get(&v.kind)
        .map(|k| {
            k.metrics
                .values()
                .map(|m| format!("{} [{}]", m.name, m.unit))
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default();
    p.insert("measures".into(), measures.into());
    p.insert(
        "personal_data".into(),
        v.register
            .get("personal_data")
            .cloned()
            .unwrap_or(Value::Bool(false)),
    );
    p.insert("legal_basis".into(), text("legal_basis"));
    p.insert(
        "public_space".into(),
        v.register
            .get("public_space")
            .cloned()
            .unwrap_or(Value::Bool(true)),
    );
    p.insert(
        "retention_days".into(),
        s.settings.store.retention_days.into(),
    );
    p.insert(
        "service_status".into(),
        v.properties
            .get("service_status")
            .cloned()
            .unwrap_or_else(|| "active".into()),
    );
    p
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The public sensor register (every sensor), as GeoJSON or CSV by the extension.
#[utoipa::path(get, path = "/register/{file}", tag = "open data", operation_id = "sensor_register",
    params(("file" = String, Path, description = "`sensors.geojson` or `sensors.csv`", example = "sensors.geojson")),
    responses(
        (status = 200, description = "The register: purpose, responsible party and contact, what each sensor measures, personal data and its legal basis, retention",
         content((FeatureCollection = "application/geo+json"), (String = "text/csv"))),
        (status = 304, description = "Not modified (ETag / Last-Modified)"),
        (status = 404, description = "Unknown file", body = ErrorBody)))]
pub async fn feed(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(file): Path<String>,
    _q: StrictQuery<NoParams>,
) -> ApiResult<Response> {
    let ext = match file.as_str() {
        "sensors.geojson" => "geojson",
        "sensors.csv" => "csv",
        _ => {
            return Err(ApiError::NotFound(format!(
                "no register file {file:?}: use sensors.geojson or sensors.csv"
            )))
        }
    };
    let rows = query::sensors(
        s.store()?,
        &SensorFilter {
            kinds: s.kind_names(),
            ..Default::default()
        },
    )
    .await?;
    let modified = crate::geo::last_modified(&rows);
    let body = if ext == "geojson" {
        let fc = FeatureCollection::new(
            rows.iter()
                .map(|v| Feature {
                    kind: "Feature",
                    id: v.id.clone(),
                    geometry: crate::geo::geometry(v),
                    properties: row(&s, v),
                })
                .collect(),
        );
        crate::cache::to_json(&fc)?
    } else {
        let mut w = csv::Writer::from_writer(Vec::new());
        let mut head = vec!["sensor_id", "name", "kind", "lon", "lat"];
        head.extend_from_slice(COLUMNS);
        let bad = |e: csv::Error| ApiError::Internal(format!("writing CSV: {e}"));
        w.write_record(&head).map_err(bad)?;
        for v in &rows {
            let p = row(&s, v);
            let mut rec = vec![
                v.id.clone(),
                v.name.clone().unwrap_or_default(),
                v.kind.clone(),
                v.lon.map(|x| x.to_string()).unwrap_or_default(),
                v.lat.map(|x| x.to_string()).unwrap_or_default(),
            ];
            rec.extend(COLUMNS.iter().map(|c| cell(&p[*c])));
            w.write_record(&rec).map_err(bad)?;
        }
        w.into_inner()
            .map_err(|e| ApiError::Internal(format!("writing CSV: {e}")))?
    };
    let doc = crate::snapshot::Doc::new(0, body, modified);
    let content_type = if ext == "geojson" {
        GEOJSON
    } else {
        "text/csv; charset=utf-8"
    };
    let disposition = (
        header::CONTENT_DISPOSITION,
        format!("inline; filename=\"sensor-register.{ext}\""),
    );
    send_doc(&headers, content_type, &doc, &[disposition]).await
}
