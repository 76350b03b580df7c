//! HTTP caching of documents that change only when data does: a strong ETag
//! over the body, Last-Modified, and 304 when the client's copy is current.

use crate::error::ApiError;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::hash::{Hash, Hasher};

fn http_date(t: DateTime<Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// A cacheable answer: strong ETag over the body, Last-Modified when known, and 304
/// when the client's copy is current (If-None-Match wins over If-Modified-Since, RFC 9110).
pub fn cached(
    req: &HeaderMap,
    content_type: &str,
    body: Vec<u8>,
    modified: Option<DateTime<Utc>>,
    extra: &[(header::HeaderName, String)],
) -> Response {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut h);
    let etag = format!("\"{:016x}-{:x}\"", h.finish(), body.len());
    let modified = modified.map(|t| t.min(Utc::now()));
    let not_modified = match req.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        Some(inm) => inm
            .split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == etag || t == "*"),
        None => match (
            req.get(header::IF_MODIFIED_SINCE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| DateTime::parse_from_rfc2822(v).ok()),
            modified,
        ) {
            (Some(since), Some(m)) => m.timestamp() <= since.timestamp(),
            _ => false,
        },
    };
    let mut headers = HeaderMap::new();
    let mut put = |k: header::HeaderName, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            headers.insert(k, v);
        }
    };
    put(header::ETAG, &etag);
    put(header::CACHE_CONTROL, "public, max-age=30");
    if let Some(m) = modified {
        put(header::LAST_MODIFIED, &http_date(m));
    }
    for (k, v) in extra {
        put(k.clone(), v);
    }
    if not_modified {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    put(header::CONTENT_TYPE, content_type);
    (StatusCode::OK, headers, body).into_response()
}

/// A JSON body for [`cached`].
pub fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(v).map_err(|e| ApiError::Internal(format!("encoding JSON: {e}")))
}
