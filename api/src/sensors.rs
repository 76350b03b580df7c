//! `/api/v1/sensors`: sensors with their latest values, as GeoJSON.

use crate::cache::{cached, to_json};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::geo::{self, sensor_feature, Feature, FeatureCollection, GEOJSON};
use crate::params::{parse_bbox, NoParams, StrictQuery};
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use cityhub_config::SensorId;
use cityhub_store::query::{self, SensorFilter};
use serde::Deserialize;
use utoipa::IntoParams;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SensorsParams {
    /// Only sensors of this kind.
    kind: Option<String>,
    /// `minLon,minLat,maxLon,maxLat` (WGS 84).
    bbox: Option<String>,
}

/// Sensors with the latest value, unit and time of each metric (reads `latest` only).
#[utoipa::path(get, path = "/api/v1/sensors", tag = "sensors", params(SensorsParams),
    responses(
        (status = 200, description = "GeoJSON FeatureCollection", body = FeatureCollection, content_type = "application/geo+json"),
        (status = 304, description = "Not modified since the client's copy"),
        (status = 400, description = "Bad parameter", body = ErrorBody),
        (status = 404, description = "Unknown kind", body = ErrorBody)))]
pub async fn list(
    State(s): State<AppState>,
    headers: HeaderMap,
    StrictQuery(p): StrictQuery<SensorsParams>,
) -> ApiResult<Response> {
    let kinds = match &p.kind {
        Some(k) => {
            if let Some(m) = s.unknown_kind(k) {
                return Err(ApiError::BadRequest(m));
            }
            vec![k.clone()]
        }
        None => s.kind_names(),
    };
    let bbox = p.bbox.as_deref().map(parse_bbox).transpose()?;
    let store = s.store()?;
    let rows = query::sensors(
        store,
        &SensorFilter {
            kinds,
            bbox,
            ..Default::default()
        },
    )
    .await?;
    let fc = FeatureCollection::new(rows.iter().map(sensor_feature).collect());
    Ok(cached(
        &headers,
        GEOJSON,
        to_json(&fc)?,
        geo::last_modified(&rows),
        &[],
    ))
}

pub(crate) fn sensor_id(id: &str) -> ApiResult<SensorId> {
    SensorId::parse(id).map_err(|e| ApiError::BadRequest(format!("sensor id {id:?}: {e}")))
}

/// One sensor.
#[utoipa::path(get, path = "/api/v1/sensors/{id}", tag = "sensors",
    params(("id" = String, Path, description = "Sensor id")),
    responses(
        (status = 200, description = "GeoJSON Feature", body = Feature, content_type = "application/geo+json"),
        (status = 404, description = "No such sensor", body = ErrorBody)))]
pub async fn one(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    _q: StrictQuery<NoParams>,
) -> ApiResult<Response> {
    let id = sensor_id(&id)?;
    let rows = query::sensors(
        s.store()?,
        &SensorFilter {
            kinds: s.kind_names(),
            id: Some(id.to_string()),
            ..Default::default()
        },
    )
    .await?;
    let Some(sensor) = rows.first() else {
        return Err(ApiError::NotFound(format!("no sensor {id:?}")));
    };
    Ok(cached(
        &headers,
        GEOJSON,
        to_json(&sensor_feature(sensor))?,
        geo::last_modified(&rows),
        &[],
    ))
}
