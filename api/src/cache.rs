//! HTTP caching of documents that change only when data does: a strong ETag
//! over the body, Last-Modified, and 304 when the client's copy is current.

use crate::error::ApiError;
use crate::snapshot::Doc;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Serialize;

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
    let doc = Doc::new(0, body, modified);
    respond(
        req,
        content_type,
        doc.body.to_axum(),
        &doc.etag,
        modified,
        extra,
        None,
    )
}

/// A document of the snapshot: its validators are computed once, and a client that
/// takes gzip gets the document's own gzip form (the compression layer leaves a
/// response that already has a Content-Encoding alone).
pub async fn send_doc(
    req: &HeaderMap,
    content_type: &str,
    doc: &Doc,
    extra: &[(header::HeaderName, String)],
) -> Result<Response, ApiError> {
    if accepts_gzip(req) {
        let etag = format!("{}-gz\"", doc.etag.trim_end_matches('"'));
        let body = doc.gzip().await?;
        return Ok(respond(
            req,
            content_type,
            axum::body::Body::from(body),
            &etag,
            doc.modified,
            extra,
            Some("gzip"),
        ));
    }
    Ok(respond(
        req,
        content_type,
        doc.body.to_axum(),
        &doc.etag,
        doc.modified,
        extra,
        None,
    ))
}

/// Does `Accept-Encoding` take gzip (with a non-zero quality)?
fn accepts_gzip(req: &HeaderMap) -> bool {
    req.get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|c| {
            let mut parts = c.split(';').map(str::trim);
            parts.next().is_some_and(|e| e.eq_ignore_ascii_case("gzip"))
                && parts.all(|p| {
                    p.strip_prefix("q=")
                        .and_then(|q| q.parse::<f32>().ok())
                        .is_none_or(|q| q > 0.0)
                })
        })
}

fn respond(
    req: &HeaderMap,
    content_type: &str,
    body: axum::body::Body,
    etag: &str,
    modified: Option<DateTime<Utc>>,
    extra: &[(header::HeaderName, String)],
    encoding: Option<&str>,
) -> Response {
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
    put(header::ETAG, etag);
    put(header::CACHE_CONTROL, "public, max-age=30");
    put(header::VARY, "Accept-Encoding");
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
    if let Some(e) = encoding {
        put(header::CONTENT_ENCODING, e);
    }
    (StatusCode::OK, headers, body).into_response()
}

/// A JSON body for [`cached`].
pub fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(v).map_err(|e| ApiError::Internal(format!("encoding JSON: {e}")))
}
