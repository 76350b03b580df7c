//! The HTTP side of cityhub. This crate serves liveness, readiness and
//! Prometheus metrics; the open-data feeds, OGC API and catalogue build on it.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
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
    pub mqtt_connected: Arc<AtomicBool>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
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
