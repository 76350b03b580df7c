//! Operations endpoints: liveness, readiness, Prometheus metrics, and the
//! Sensor.Community HTTP upload.

use crate::error::ErrorBody;
use crate::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cityhub_ingest::HttpSubmission;
use serde_json::json;
use std::sync::atomic::Ordering;

/// The process is up and serving HTTP.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive", body = Object)))]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready when the database answers and the broker session is up; reports the storage backend.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "Ready", body = Object),
              (status = 503, description = "Not ready (database or broker)", body = Object)))]
pub async fn readyz(State(s): State<AppState>) -> Response {
    let mqtt = s.mqtt_connected.load(Ordering::Relaxed);
    let (db_ok, backend) = match s.store.get() {
        Some(store) => match store.ping().await {
            Ok(()) => (
                true,
                serde_json::to_value(store.backend()).unwrap_or_default(),
            ),
            Err(e) => {
                tracing::warn!(error = %e, "Readiness: database check failed.");
                (
                    false,
                    serde_json::to_value(store.backend()).unwrap_or_default(),
                )
            }
        },
        None => (false, serde_json::Value::Null),
    };
    let ready = db_ok && mqtt;
    let body = json!({
        "status": if ready { "ready" } else { "not ready" },
        "database": if db_ok { "ok" } else { "unavailable" },
        "mqtt": if mqtt { "connected" } else { "disconnected" },
        "backend": backend,
    });
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// Prometheus metrics (OpenMetrics text).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Metrics", content_type = "application/openmetrics-text")))]
pub async fn metrics(State(s): State<AppState>) -> Response {
    let mut out = String::new();
    match prometheus_client::encoding::text::encode(&mut out, &s.registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            out,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "Encoding metrics failed.");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({"error": "metrics unavailable"})),
            )
                .into_response()
        }
    }
}
/// Time an HTTP client waits for its submission's commit before being told to retry.
const HTTP_COMMIT_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "60")],
        Json(json!({ "error": "storage is unavailable; nothing was stored, send the data again later" })),
    )
        .into_response()
}

/// The airrohr firmware's "custom API" upload (`X-Sensor: esp8266-<chip id>`, `X-Pin`
/// per sensor type). 200 only after the transaction holding the readings committed;
/// 422 when nothing in it was valid (the payload is kept as a dead letter); 503 when
/// it could not be stored.
#[utoipa::path(post, path = "/ingest/sensor-community", tag = "operations",
    request_body(content = Object, content_type = "application/json",
                 description = "`{\"esp8266id\": ..., \"sensordatavalues\": [{\"value_type\": \"SDS_P1\", \"value\": \"12.3\"}]}`"),
    params(("X-Sensor" = Option<String>, Header, description = "`esp8266-<chip id>`")),
    responses((status = 200, description = "Stored", body = Object),
              (status = 422, description = "Nothing valid in it", body = Object),
              (status = 503, description = "Not stored; send again later", body = Object),
              (status = 413, description = "Too large", body = ErrorBody)))]
pub async fn ingest_sensor_community(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(ingest) = s.ingest.get() else {
        return unavailable();
    };
    let x_sensor = headers
        .get("x-sensor")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let submission = HttpSubmission {
        payload: body,
        x_sensor,
        received_at: chrono::Utc::now(),
        reply: tx,
    };
    if ingest.submit(submission).await.is_err() {
        return unavailable();
    }
    match tokio::time::timeout(HTTP_COMMIT_WAIT, rx).await {
        Ok(Ok(Ok(outcome))) if outcome.stored == 0 && !outcome.rejected.is_empty() => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({ "error": outcome.rejected.join("; "), "stored": 0 })),
        )
            .into_response(),
        Ok(Ok(Ok(outcome))) => (StatusCode::OK, Json(outcome)).into_response(),
        _ => unavailable(),
    }
}
