//! `/api/v1/sensors`: sensors with their latest values, as GeoJSON.

use crate::cache::{cached, send_doc, to_json};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::geo::{self, sensor_feature, Feature, FeatureCollection, Link, GEOJSON};
use crate::params::{enc, parse_bbox, BaseUrl, NoParams, StrictQuery};
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use cityhub_core::SensorId;
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
    /// At most this many sensors, in id order; the `next` link gives the following
    /// page. Unset: every sensor, in one document.
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<usize>,
    /// Where a page starts: copied from the previous page's `next` link (opaque).
    cursor: Option<String>,
}

/// Sensors with the latest value, unit and time of each metric, from the hub's
/// in-memory listing (current as of this hub's last commit).
#[utoipa::path(get, path = "/api/v1/sensors", tag = "sensors", params(SensorsParams),
    responses(
        (status = 200, description = "GeoJSON FeatureCollection; with `limit`, also `numberMatched` and a `next` link while more follow", body = FeatureCollection, content_type = "application/geo+json"),
        (status = 304, description = "Not modified since the client's copy"),
        (status = 400, description = "Bad parameter", body = ErrorBody),
        (status = 404, description = "Unknown kind", body = ErrorBody)))]
pub async fn list(
    State(s): State<AppState>,
    headers: HeaderMap,
    base: BaseUrl,
    StrictQuery(p): StrictQuery<SensorsParams>,
) -> ApiResult<Response> {
    if let Some(k) = &p.kind {
        if let Some(m) = s.unknown_kind(k) {
            return Err(ApiError::BadRequest(m));
        }
    }
    let bbox = p.bbox.as_deref().map(parse_bbox).transpose()?;
    let max = s.settings.http.max_page.get() as usize;
    if p.limit.is_some_and(|l| l == 0 || l > max) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {max}"
        )));
    }
    let store = s.store()?;
    if bbox.is_none() && p.limit.is_none() && p.cursor.is_none() {
        let doc = s.snapshot.listing(store, p.kind.clone()).await?;
        return send_doc(&headers, GEOJSON, &doc, &[]).await;
    }
    let paged = p.limit.is_some() || p.cursor.is_some();
    let limit = p.limit.unwrap_or(if paged { max } else { usize::MAX });
    let doc = s
        .snapshot
        .select(
            store,
            p.kind.as_deref(),
            bbox,
            p.cursor.as_deref(),
            limit,
            |sel| {
                if !paged {
                    return format!(r#""numberReturned":{}"#, sel.returned);
                }
                let mut links = Vec::new();
                if let Some(next) = &sel.next {
                    let mut q = format!("limit={limit}&cursor={}", enc(next));
                    if let Some(k) = &p.kind {
                        q.push_str(&format!("&kind={}", enc(k)));
                    }
                    if let Some(b) = &p.bbox {
                        q.push_str(&format!("&bbox={}", enc(b)));
                    }
                    links.push(Link::new(
                        "next",
                        s.pages.sign(&format!("{}/api/v1/sensors?{q}", base.0)),
                        GEOJSON,
                        "Next page",
                    ));
                }
                format!(
                    r#""numberMatched":{},"numberReturned":{},"links":{}"#,
                    sel.matched,
                    sel.returned,
                    serde_json::to_string(&links).unwrap_or_else(|_| "[]".into())
                )
            },
        )
        .await?;
    send_doc(&headers, GEOJSON, &doc, &[]).await
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
        &s.reader()?,
        &SensorFilter {
            kinds: s.kind_names(),
            ids: Some(vec![id.to_string()]),
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
