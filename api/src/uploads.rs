//! Readings uploaded over HTTP instead of MQTT: the Sensor.Community (airrohr)
//! firmware's "custom API". The API only receives; ingestion, wired in by the
//! app behind [`Uploads`], decodes, stores and says what it did.

use crate::error::ErrorBody;
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use chrono::{DateTime, Utc};
use serde_json::json;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

/// The topic dead letters of this route carry, so an admin sees where they came from.
pub const SENSOR_COMMUNITY_SOURCE: &str = "http:/ingest/sensor-community";

/// One upload, as received.
#[derive(Debug)]
pub struct Upload {
    pub payload: Bytes,
    /// The firmware's `X-Sensor` header (`esp8266-<chip id>`).
    pub x_sensor: Option<String>,
    pub received_at: DateTime<Utc>,
    /// Where it came from, for dead letters.
    pub source: &'static str,
    /// The device whose password it carried: it may send only its own readings.
    pub device: Option<String>,
    /// Whose budget of kept dead letters a refusal takes from: the device, else the
    /// client's address.
    pub origin: String,
}

/// What a committed upload did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct UploadOutcome {
    /// Readings stored.
    pub stored: usize,
    /// Why parts were refused (they are dead letters now).
    pub rejected: Vec<String>,
    /// Set when the signed-in device may not send this upload (nothing was stored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forbidden: Option<String>,
    /// Set when the refused parts were not kept as a dead letter, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<String>,
}

/// Not committed: the client should send it again later.
#[derive(Debug, Clone, Copy)]
pub struct UploadRefused;

/// Takes an upload and resolves once it is committed, or refused: refused when it
/// could not be taken, or when `wait` passed before the commit began (then it is
/// never committed).
pub trait Uploads: Send + Sync {
    fn submit(
        &self,
        upload: Upload,
        wait: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<UploadOutcome, UploadRefused>> + Send + '_>>;
}

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
              (status = 401, description = "A device password is required (HTTP basic auth: the sensor id and its password), or it is wrong", body = Object),
              (status = 403, description = "The device may not send for this sensor", body = Object),
              (status = 422, description = "Nothing valid in it", body = Object),
              (status = 503, description = "Not stored; send again later", body = Object),
              (status = 413, description = "Too large", body = ErrorBody)))]
pub async fn ingest_sensor_community(
    State(s): State<AppState>,
    client: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(uploads) = s.uploads.get() else {
        return unavailable();
    };
    let device = match crate::auth::upload_device(&s, &headers).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let x_sensor = headers
        .get("x-sensor")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let origin = match (&device, client) {
        (Some(d), _) => format!("device:{d}"),
        (None, Some(Extension(ConnectInfo(a)))) => {
            format!("address:{}", crate::ratelimit::client_key(a.ip()))
        }
        (None, None) => "address:unknown".to_owned(),
    };
    let upload = Upload {
        payload: body,
        x_sensor,
        received_at: chrono::Utc::now(),
        source: SENSOR_COMMUNITY_SOURCE,
        device,
        origin,
    };
    let wait = Duration::from_secs(s.settings.http.upload_timeout_s.get());
    match uploads.submit(upload, wait).await {
        Ok(UploadOutcome {
            forbidden: Some(why),
            ..
        }) => (
            StatusCode::FORBIDDEN,
            Json(json!({ "error": why, "stored": 0 })),
        )
            .into_response(),
        Ok(outcome) if outcome.stored == 0 && !outcome.rejected.is_empty() => {
            let mut body = json!({ "error": outcome.rejected.join("; "), "stored": 0 });
            if let Some(why) = outcome.dead_letter {
                body["dead_letter"] = why.into();
            }
            (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response()
        }
        Ok(outcome) => (StatusCode::OK, Json(outcome)).into_response(),
        _ => unavailable(),
    }
}
