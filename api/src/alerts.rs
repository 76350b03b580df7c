//! Alerts over HTTP: `GET /api/v1/alerts` (public, like the map) and
//! `POST /api/v1/alerts/{id}/ack` (operator token). The rules are in
//! `cityhub_core::alerts`, the engine and delivery in `cityhub_app::alerts`, the
//! alerts, their outbox and the `Notifier` in `cityhub_store::alerts`.

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::params::{parse_time, StrictQuery};
use crate::{AppState, Operator};
use axum::extract::{Path, State};
use axum::Json;
use cityhub_store::alerts::{event_json, Alert, AlertFilter};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AlertParams {
    /// `open`, `acknowledged`, `cleared`, comma-separated (default: all).
    #[param(pattern = "^(open|acknowledged|cleared)(,(open|acknowledged|cleared))*$")]
    state: Option<String>,
    kind: Option<String>,
    /// A sensor id.
    sensor: Option<String>,
    /// Only alerts raised or changed at or after this instant (RFC 3339; a date is taken too).
    #[param(format = DateTime)]
    since: Option<String>,
    /// At most this many, newest first (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AlertList {
    #[schema(value_type = Vec<Object>)]
    pub alerts: Vec<Alert>,
}

/// Alerts, newest first: what is wrong, since when, and who acknowledged it.
#[utoipa::path(get, path = "/api/v1/alerts", tag = "alerts", operation_id = "list_alerts", params(AlertParams),
    responses((status = 200, description = "Alerts", body = AlertList),
              (status = 400, description = "Bad parameter", body = ErrorBody)))]
pub async fn list(
    State(s): State<AppState>,
    StrictQuery(p): StrictQuery<AlertParams>,
) -> ApiResult<Json<AlertList>> {
    let states: Vec<String> = p
        .state
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_owned)
        .collect();
    if let Some(bad) = states
        .iter()
        .find(|x| !["open", "acknowledged", "cleared"].contains(&x.as_str()))
    {
        return Err(ApiError::BadRequest(format!(
            "state {bad:?}: use open, acknowledged or cleared"
        )));
    }
    if let Some(k) = &p.kind {
        if let Some(m) = s.unknown_kind(k) {
            return Err(ApiError::BadRequest(m));
        }
    }
    if let Some(id) = &p.sensor {
        crate::sensors::sensor_id(id)?;
    }
    let limit = p.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest(
            "limit must be between 1 and 1000".into(),
        ));
    }
    let since = p
        .since
        .as_deref()
        .map(|t| parse_time("since", t))
        .transpose()?;
    let store = s.store.get().ok_or(ApiError::NotReady)?;
    let alerts = store
        .alerts(&AlertFilter {
            states,
            kind: p.kind,
            sensor: p.sensor,
            since,
            limit,
        })
        .await?;
    Ok(Json(AlertList { alerts }))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Ack {
    /// What the operator did or will do (at most 1000 characters).
    #[schema(max_length = 1000)]
    pub note: Option<String>,
}

/// An operator acknowledges an open alert, with a note.
#[utoipa::path(post, path = "/api/v1/alerts/{id}/ack", tag = "alerts", operation_id = "ack_alert",
    params(("id" = i64, Path, description = "The alert's id", minimum = 1)),
    request_body(content = Option<Ack>, description = "Optional note", content_type = "application/json"),
    security(("bearer" = [])),
    responses((status = 200, description = "Acknowledged", body = Object),
              (status = 400, description = "Not an alert id, or a bad note", body = ErrorBody),
              (status = 401, description = "No operator token", body = ErrorBody),
              (status = 403, description = "Wrong token", body = ErrorBody),
              (status = 404, description = "No such alert", body = ErrorBody),
              (status = 409, description = "Not open (acknowledged or cleared)", body = ErrorBody)))]
pub async fn ack(
    State(s): State<AppState>,
    Operator(caller): Operator,
    id: Result<Path<i64>, axum::extract::rejection::PathRejection>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Alert>> {
    // Rejections as the API's JSON errors, not axum's plain-text ones.
    let Path(id) = id.map_err(|e| ApiError::BadRequest(format!("alert id: {}", e.body_text())))?;
    // No body, or JSON null: no note.
    let ack: Ack = crate::params::json_object_or_none(&body)?;
    let note = ack.note;
    if note.as_ref().is_some_and(|n| n.chars().count() > 1000) {
        return Err(ApiError::BadRequest("note: at most 1000 characters".into()));
    }
    let store = s.store.get().ok_or(ApiError::NotReady)?;
    let notifier = s.notifier.clone();
    let bodies = move |a: &Alert, e: &str| notifier.bodies(a, e);
    match store
        .ack_alert(id, note.as_deref(), &bodies, &caller.actor())
        .await?
    {
        Ok(a) => {
            tracing::info!(alert = a.id, rule = %a.rule, operator = %caller.name, "Alert acknowledged.");
            s.live
                .alert(&a.kind, &a.sensor, event_json(&a, "acknowledged"));
            s.notifier.wake.notify_one();
            Ok(Json(a))
        }
        Err(None) => Err(ApiError::NotFound(format!("no alert {id}"))),
        Err(Some(state)) => Err(ApiError::Conflict(format!(
            "alert {id} is {state}, not open"
        ))),
    }
}
