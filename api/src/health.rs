//! Operations endpoints: liveness, readiness and Prometheus metrics.

use crate::AppState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
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
    // A pipeline that holds a message this long is stuck, whatever else answers.
    let oldest = s.oldest_unacked.load(Ordering::Relaxed);
    let waiting_s = if oldest == 0 {
        0.0
    } else {
        (chrono::Utc::now().timestamp_micros() - oldest).max(0) as f64 / 1e6
    };
    let flowing = waiting_s <= s.settings.ingest.max_unacked_age_s as f64;
    let ready = db_ok && mqtt && flowing;
    // Failing jobs do not make the hub unready (it still serves and stores), but an
    // operator or a probe reading the details sees them.
    let maintenance = {
        let m = s.maintenance.read().expect("status lock");
        (m.jobs.is_some() || m.late_refresh_error.is_some())
            .then(|| serde_json::to_value(&*m).unwrap_or_default())
    };
    let mut body = json!({
        "status": if ready { "ready" } else { "not ready" },
        "database": if db_ok { "ok" } else { "unavailable" },
        "mqtt": if mqtt { "connected" } else { "disconnected" },
        "ingest": if flowing { "flowing" } else { "stalled" },
        "oldest_unacked_s": waiting_s,
        "backend": backend,
    });
    if let Some(m) = maintenance {
        body["maintenance"] = m;
    }
    if let Some(r) = &*s.replication.read().unwrap_or_else(|p| p.into_inner()) {
        body["replication"] = serde_json::to_value(r).unwrap_or_default();
    }
    // What an operator should fix, though the hub serves and stores meanwhile. Never
    // waited on: a locked registry must not hold the probe that should report it.
    let warnings = tokio::time::timeout(WARNINGS_WITHIN, warnings(&s, db_ok))
        .await
        .unwrap_or_default();
    if !warnings.is_empty() {
        body["warnings"] = json!(warnings);
    }
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// How long `/readyz` gives its warnings' queries.
const WARNINGS_WITHIN: std::time::Duration = std::time::Duration::from_millis(500);

async fn warnings(s: &AppState, db_ok: bool) -> Vec<String> {
    let mut warnings = Vec::new();
    if let (Some(store), true) = (s.store.get(), db_ok) {
        let http = &s.settings.http;
        if (http.admin_token.is_some() || http.operator_token.is_some())
            && s.accounts.refresh(store).await.is_ok()
            && s.accounts.exist()
        {
            warnings.push("bootstrap tokens (http.admin_token, http.operator_token) are still configured while operator accounts exist: remove them so every change is done by a named person".to_owned());
        }
        match store.register_gaps().await {
            Ok(0) => {}
            Ok(n) => warnings.push(format!("{n} sensors in public space lack a purpose or a responsible party in the public register")),
            Err(e) => tracing::debug!(error = %e, "Readiness: register check skipped."),
        }
    }
    warnings
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
