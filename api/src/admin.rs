//! Admin calls (bearer token): register or replace a sensor, read dead letters.

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::geo::{self, sensor_feature, Feature, GEOJSON};
use crate::params::{enc, page_limit, BaseUrl, StrictQuery};
use crate::sensors::sensor_id;
use crate::{Admin, AppState, Operator, Viewer};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use cityhub_core::GeoPoint;
use cityhub_store::query::{self, SensorFilter, SensorPut};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

/// What `PUT /api/v1/sensors/{id}` takes: a GeoJSON Feature (or just its properties'
/// content) with `kind`, optional `name`, and any further registry attributes.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SensorInput {
    /// `Feature` (optional).
    #[serde(rename = "type")]
    pub kind_of_object: Option<String>,
    /// A GeoJSON Point, or null for a sensor with no fixed position.
    #[schema(value_type = Object)]
    pub geometry: Option<Value>,
    /// `kind` (required), `name`, and attributes such as `depth_mm`.
    #[schema(value_type = Object)]
    pub properties: Map<String, Value>,
}

/// A GeoJSON Point geometry as a position.
fn point(g: Value) -> ApiResult<GeoPoint> {
    let not_a_point =
        || ApiError::BadRequest("geometry must be a GeoJSON Point [lon, lat] or null".into());
    let g: geojson::Geometry = serde_json::from_value(g).map_err(|_| not_a_point())?;
    let geojson::GeometryValue::Point { coordinates } = g.value else {
        return Err(not_a_point());
    };
    // [lon, lat] or [lon, lat, height] (RFC 7946 §3.1.1).
    let ([lon, lat] | [lon, lat, _]) = coordinates.as_slice() else {
        return Err(not_a_point());
    };
    GeoPoint::new(*lat, *lon).map_err(|e| ApiError::BadRequest(format!("geometry: {e}")))
}

/// Attribute names the API itself uses in a sensor's properties.
const RESERVED: &[&str] = &["id", "kind", "name", "latest", "first_seen", "last_seen"];

/// Registers a sensor or replaces its record (position, name, attributes). Admin only.
#[utoipa::path(put, path = "/api/v1/sensors/{id}", tag = "admin",
    params(("id" = String, Path, description = "Sensor id")),
    request_body(content = SensorInput, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Registered", body = Feature, content_type = "application/geo+json"),
        (status = 200, description = "Replaced", body = Feature, content_type = "application/geo+json"),
        (status = 400, description = "Invalid sensor", body = ErrorBody),
        (status = 401, description = "No token", body = ErrorBody),
        (status = 403, description = "Wrong token", body = ErrorBody),
        (status = 409, description = "Registered under another kind", body = ErrorBody)))]
pub async fn put(
    Admin(caller): Admin,
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let id = sensor_id(&id)?;
    let input: SensorInput = crate::params::json_object(&body)?;
    if input
        .kind_of_object
        .as_deref()
        .is_some_and(|t| t != "Feature")
    {
        return Err(ApiError::BadRequest(
            "body: type must be \"Feature\"".into(),
        ));
    }
    let mut props = input.properties;
    let kind = match props.remove("kind") {
        Some(Value::String(k)) => k,
        _ => {
            return Err(ApiError::BadRequest(
                "properties.kind (a string) is required".into(),
            ))
        }
    };
    if let Some(m) = s.unknown_kind(&kind) {
        return Err(ApiError::BadRequest(m));
    }
    let name = match props.remove("name") {
        None | Some(Value::Null) => None,
        Some(Value::String(n)) if n.chars().count() <= 200 && !n.chars().any(char::is_control) => {
            Some(n)
        }
        Some(Value::String(_)) => {
            return Err(ApiError::BadRequest(
                "properties.name must be at most 200 printable characters".into(),
            ))
        }
        Some(_) => {
            return Err(ApiError::BadRequest(
                "properties.name must be a string".into(),
            ))
        }
    };
    if let Some(r) = props.keys().find(|k| RESERVED.contains(&k.as_str())) {
        return Err(ApiError::BadRequest(format!("properties.{r} is reserved")));
    }
    let register = cityhub_core::register::Register::take_from(&mut props)
        .map_err(|why| ApiError::BadRequest(format!("properties.{why}")))?;
    if let Some(Err(why)) = s.catalog.get(&kind).map(|k| k.check_properties(&props)) {
        return Err(ApiError::BadRequest(format!("properties.{why}")));
    }
    let location = match input.geometry {
        None | Some(Value::Null) => None,
        Some(g) => Some(point(g)?),
    };
    let store = s.store()?;
    let created = query::put_sensor(
        store,
        &SensorPut {
            id: id.clone(),
            kind: kind.clone(),
            name,
            location,
            properties: props,
            register,
        },
        &caller.actor(),
    )
    .await?;
    tracing::info!(sensor = %id, kind, created, by = %caller.name, "Sensor registered by an admin.");
    let rows = query::sensors(
        store,
        &SensorFilter {
            kinds: vec![kind],
            ids: Some(vec![id.to_string()]),
            ..Default::default()
        },
    )
    .await?;
    let feature = rows
        .first()
        .map(sensor_feature)
        .ok_or_else(|| ApiError::Internal("sensor vanished after registration".into()))?;
    let code = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        code,
        [(header::CONTENT_TYPE, GEOJSON)],
        crate::cache::to_json(&feature)?,
    )
        .into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeadLetterParams {
    /// Only this reason code (e.g. `out_of_range`).
    reason: Option<String>,
    /// Entries older than this id (the `next` link carries it).
    before: Option<i64>,
    /// Default 100.
    #[param(minimum = 1)]
    limit: Option<u32>,
}

/// A message that could not be stored, with why.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterOut {
    pub id: i64,
    pub received_at: String,
    pub topic: String,
    pub reason_code: String,
    pub reason: String,
    /// The payload as text when it is UTF-8...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// ...else base64. At most `ingest.dead_letter_payload_bytes` of it is kept...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
    /// ...of a payload this long.
    pub payload_bytes: i32,
    /// The reason's length before it was cut to `ingest.dead_letter_reason_bytes`.
    pub reason_bytes: i32,
    /// The topic's length before it was cut to its first 1,024 bytes.
    pub topic_bytes: i32,
}

/// Payload and reason bytes on one page of dead letters, at most (one entry always fits).
const PAGE_BYTES: i64 = 4 * 1024 * 1024;

#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterPage {
    pub dead_letters: Vec<DeadLetterOut>,
    pub links: Vec<geo::Link>,
}

/// Dead letters, newest first. Any signed-in role.
#[utoipa::path(get, path = "/api/v1/dead-letters", tag = "admin", params(DeadLetterParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of dead letters", body = DeadLetterPage),
        (status = 400, description = "Bad parameter", body = ErrorBody),
        (status = 401, description = "No token", body = ErrorBody),
        (status = 403, description = "Wrong, disabled or expired token", body = ErrorBody)))]
pub async fn dead_letters(
    _: Viewer,
    State(s): State<AppState>,
    base: BaseUrl,
    StrictQuery(p): StrictQuery<DeadLetterParams>,
) -> ApiResult<Json<DeadLetterPage>> {
    let limit = page_limit(&s, p.limit, 100)?;
    let (rows, cut) = query::dead_letters(
        s.store()?,
        p.reason.as_deref(),
        p.before,
        i64::from(limit),
        PAGE_BYTES,
    )
    .await?;
    let mut links = Vec::new();
    // A page cut short by its size has a next page too.
    if rows.len() == limit as usize || cut {
        if let Some(last) = rows.last() {
            let mut q = format!("limit={limit}&before={}", last.id);
            if let Some(r) = &p.reason {
                q.push_str(&format!("&reason={}", enc(r)));
            }
            links.push(geo::Link::new(
                "next",
                format!("{}/api/v1/dead-letters?{q}", base.0),
                "application/json",
                "older entries",
            ));
        }
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    Ok(Json(DeadLetterPage {
        dead_letters: rows
            .into_iter()
            .map(|d| {
                let (payload, payload_base64) = match String::from_utf8(d.payload) {
                    Ok(t) => (Some(t), None),
                    Err(e) => (None, Some(b64.encode(e.into_bytes()))),
                };
                DeadLetterOut {
                    id: d.id,
                    received_at: geo::rfc3339(d.received_at),
                    topic: d.topic,
                    reason_code: d.reason_code,
                    reason: d.reason,
                    payload,
                    payload_base64,
                    payload_bytes: d.payload_bytes,
                    reason_bytes: d.reason_bytes,
                    topic_bytes: d.topic_bytes,
                }
            })
            .collect(),
        links,
    }))
}

/// What an operator may change of a sensor: its service state, for the map and the feeds.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceInput {
    /// `active`, `maintenance` or `out_of_service`.
    pub status: Option<String>,
    /// What is being done (at most 500 characters, no control character); null clears it.
    #[schema(max_length = 500, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$")]
    pub note: Option<String>,
}

/// The service states a sensor may be in.
pub const SERVICE_STATES: &[&str] = &["active", "maintenance", "out_of_service"];

/// Sets a sensor's service state and note (`service_status`, `service_note` among its
/// attributes). Operators and admins.
#[utoipa::path(patch, path = "/api/v1/sensors/{id}/service", tag = "admin",
    params(("id" = String, Path, description = "Sensor id")),
    request_body(content = ServiceInput, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Changed; the sensor's attributes", body = Object),
        (status = 400, description = "Bad state or note", body = ErrorBody),
        (status = 401, description = "No token", body = ErrorBody),
        (status = 403, description = "Not an operator or admin", body = ErrorBody),
        (status = 404, description = "No such sensor", body = ErrorBody)))]
pub async fn service(
    Operator(caller): Operator,
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let id = sensor_id(&id)?;
    let input: ServiceInput = crate::params::json_object(&body)?;
    if let Some(st) = &input.status {
        if !SERVICE_STATES.contains(&st.as_str()) {
            return Err(ApiError::BadRequest(format!(
                "status must be one of {}",
                SERVICE_STATES.join(", ")
            )));
        }
    }
    if input
        .note
        .as_ref()
        .is_some_and(|n| n.chars().count() > 500 || n.chars().any(char::is_control))
    {
        return Err(ApiError::BadRequest(
            "note must be at most 500 printable characters".into(),
        ));
    }
    let mut set = Map::new();
    if let Some(st) = input.status {
        set.insert("service_status".into(), Value::String(st));
    }
    set.insert(
        "service_note".into(),
        input.note.map(Value::String).unwrap_or(Value::Null),
    );
    let props = query::set_service(s.store()?, &id, &set, &caller.actor())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no sensor {id}")))?;
    tracing::info!(sensor = %id, by = %caller.name, "Service state changed.");
    Ok(Json(props))
}
