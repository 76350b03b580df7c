//! Errors of the HTTP layer: what the client did wrong, said plainly; what the
//! server did wrong, logged in full and reported without internals.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cityhub_store::StoreError;
use serde::Serialize;
use utoipa::ToSchema;

/// The body of every error answer (the exception shape of OGC API - Features).
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// A short, stable code, e.g. `InvalidParameterValue`, `NotFound`.
    pub code: &'static str,
    /// What went wrong, for a human.
    pub description: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    NotAcceptable(String),
    #[error("a bearer token is required")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("storage is not available yet")]
    NotReady,
    /// Every connection for this kind of request is taken (long downloads).
    #[error("{0}")]
    Busy(String),
    /// The client's rate limit cannot pay for this request now.
    #[error("{what}; retry in {wait_s} s")]
    TooManyRequests { wait_s: u64, what: String },
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

pub type ApiResult<T> = Result<T, ApiError>;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "InvalidParameterValue"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "NotFound"),
            ApiError::NotAcceptable(_) => (StatusCode::NOT_ACCEPTABLE, "NotAcceptable"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "Unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "Forbidden"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "Conflict"),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge"),
            ApiError::TooManyRequests { .. } => (StatusCode::TOO_MANY_REQUESTS, "TooManyRequests"),
            ApiError::NotReady | ApiError::Busy(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable")
            }
            ApiError::Store(StoreError::KindConflict { .. } | StoreError::Exists(_)) => {
                (StatusCode::CONFLICT, "Conflict")
            }
            ApiError::Store(e) if e.is_connection_lost() || e.is_timeout() => {
                (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable")
            }
            ApiError::Store(_) | ApiError::Internal(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "InternalError")
            }
        };
        let description = match (&self, status) {
            (ApiError::Store(e @ (StoreError::KindConflict { .. } | StoreError::Exists(_))), _) => {
                e.to_string()
            }
            (_, StatusCode::INTERNAL_SERVER_ERROR) => {
                tracing::error!(error = %self, "Request failed.");
                "internal error; it has been logged".to_owned()
            }
            (ApiError::Store(e), _) if e.is_timeout() => {
                tracing::warn!(error = %self, "Request failed: its query ran past the statement timeout.");
                "the query took longer than this hub allows; ask for less (a shorter range, fewer sensors) or try again later".to_owned()
            }
            (ApiError::Store(_), _) => {
                tracing::warn!(error = %self, "Request failed: database unavailable.");
                "storage is unavailable; try again later".to_owned()
            }
            _ => self.to_string(),
        };
        let mut res = (status, Json(ErrorBody { code, description })).into_response();
        let h = res.headers_mut();
        match status {
            StatusCode::UNAUTHORIZED => {
                h.insert(header::WWW_AUTHENTICATE, "Bearer".parse().unwrap());
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                h.insert(header::RETRY_AFTER, "5".parse().unwrap());
            }
            StatusCode::TOO_MANY_REQUESTS => {
                if let ApiError::TooManyRequests { wait_s, .. } = &self {
                    h.insert(header::RETRY_AFTER, header::HeaderValue::from(*wait_s));
                }
            }
            _ => {}
        }
        res
    }
}
