//! The HTTP side of cityhub. This crate serves liveness, readiness and
//! Prometheus metrics; the open-data feeds, OGC API and catalogue build on it.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cityhub_ingest::{HttpIngest, HttpSubmission};
use cityhub_store::Store;
use prometheus_client::registry::Registry;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::OnceCell;

/// Everything a handler may use; passed in, never global.
#[derive(Clone)]
pub struct AppState {
    /// Set once the database is reachable and migrated.
    pub store: Arc<OnceCell<Store>>,
    pub registry: Arc<Registry>,
    /// True once subscribed on a live broker connection.
    pub mqtt_connected: Arc<AtomicBool>,
    /// Set once ingestion runs: the way in for HTTP submissions.
    pub ingest: Arc<OnceCell<HttpIngest>>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(
            "/ingest/sensor-community",
            post(ingest_sensor_community).layer(DefaultBodyLimit::max(1024 * 1024)),
        )
        .with_state(state)
}

/// The process is up and serving HTTP.
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready when the database answers and the broker session is up; reports the storage backend.
async fn readyz(State(s): State<AppState>) -> Response {
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

async fn metrics(State(s): State<AppState>) -> Response {
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

/// `POST /ingest/sensor-community`: the airrohr firmware's "custom API" upload
/// (`X-Sensor: esp8266-<chip id>`, `X-Pin` per sensor type). 200 only after the
/// transaction holding the readings committed; 422 when nothing in it was valid
/// (the payload is kept as a dead letter); 503 when it could not be stored.
async fn ingest_sensor_community(
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
