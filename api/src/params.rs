//! Request parsing shared by the endpoints: strict query strings, bounding boxes,
//! times and intervals, and the base URL links are built on.

use crate::error::{ApiError, ApiResult};
use crate::AppState;
use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use cityhub_store::query::Bbox;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use utoipa::IntoParams;

/// A query string with no parameter the endpoint does not know (OGC API - Features
/// requires a 400 for those; elsewhere it catches typos such as `kinds=`), and no
/// empty value: `kind=` filters by nothing meaningful, so it is refused rather than
/// read as absent (the API document says `minLength: 1`).
pub struct StrictQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for StrictQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        if let Some(q) = parts.uri.query() {
            if let Some((k, _)) =
                url::form_urlencoded::parse(q.as_bytes()).find(|(_, v)| v.is_empty())
            {
                return Err(ApiError::BadRequest(format!(
                    "parameter {k:?} is empty: give it a value or leave it out"
                )));
            }
        }
        Query::<T>::try_from_uri(&parts.uri)
            .map(|Query(q)| StrictQuery(q))
            .map_err(|e| ApiError::BadRequest(format!("query string: {}", e.body_text())))
    }
}

/// A JSON request body that must be an object: serde would read a struct from an
/// array as well, and the API document says object.
pub fn json_object<T: DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {
            serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("body: {e}")))
        }
        _ => Err(ApiError::BadRequest(
            "body: a JSON object is expected".into(),
        )),
    }
}

/// An optional body: an object, or nothing or JSON `null` for the defaults.
pub fn json_object_or_none<T: DeserializeOwned + Default>(body: &[u8]) -> ApiResult<T> {
    let text = body.trim_ascii();
    if text.is_empty() || text == b"null" {
        return Ok(T::default());
    }
    json_object(text)
}

/// `minLon,minLat,maxLon,maxLat` in WGS 84 (a 6-number box with heights is accepted
/// and its heights ignored, as OGC API - Features allows).
pub fn parse_bbox(s: &str) -> Result<Bbox, ApiError> {
    let bad = |why: &str| ApiError::BadRequest(format!("bbox {s:?}: {why}"));
    let v: Vec<f64> = s
        .split(',')
        .map(|p| p.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|_| bad("expected comma-separated numbers"))?;
    let (min_lon, min_lat, max_lon, max_lat) = match v.as_slice() {
        [a, b, c, d] => (*a, *b, *c, *d),
        [a, b, _, d, e, _] => (*a, *b, *d, *e),
        _ => return Err(bad("expected 4 numbers: minLon,minLat,maxLon,maxLat")),
    };
    if v.iter().any(|x| !x.is_finite()) {
        return Err(bad("numbers must be finite"));
    }
    if !(-180.0..=180.0).contains(&min_lon) || !(-180.0..=180.0).contains(&max_lon) {
        return Err(bad("longitudes must be within -180..180"));
    }
    if !(-90.0..=90.0).contains(&min_lat) || !(-90.0..=90.0).contains(&max_lat) {
        return Err(bad("latitudes must be within -90..90"));
    }
    if min_lat > max_lat {
        return Err(bad("minLat is above maxLat"));
    }
    Ok(Bbox {
        min_lon,
        min_lat,
        max_lon,
        max_lat,
    })
}

/// An RFC 3339 time (`2026-03-01T00:00:00Z`) or a date (`2026-03-01`, midnight UTC).
pub fn parse_time(name: &str, s: &str) -> Result<DateTime<Utc>, ApiError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        if let Some(t) = d.and_hms_opt(0, 0, 0) {
            return Ok(t.and_utc());
        }
    }
    Err(ApiError::BadRequest(format!(
        "{name} {s:?} is not an RFC 3339 time (e.g. 2026-03-01T08:00:00Z) or a date (2026-03-01)"
    )))
}

/// A closed time interval; `None` is open at that end.
pub type Interval = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// OGC `datetime`: an instant, or an interval `start/end` where either end may be `..`
/// (or empty) for open. Returns the closed interval it covers.
pub fn parse_datetime(s: &str) -> Result<Interval, ApiError> {
    match s.split_once('/') {
        None => {
            let t = parse_time("datetime", s)?;
            Ok((Some(t), Some(t)))
        }
        Some((a, b)) => {
            let end = |x: &str| -> Result<Option<DateTime<Utc>>, ApiError> {
                if x.is_empty() || x == ".." {
                    Ok(None)
                } else {
                    parse_time("datetime", x).map(Some)
                }
            };
            let (from, to) = (end(a)?, end(b)?);
            if from.is_none() && to.is_none() {
                return Err(ApiError::BadRequest(
                    "datetime: an interval needs at least one end".into(),
                ));
            }
            if let (Some(f), Some(t)) = (from, to) {
                if f > t {
                    return Err(ApiError::BadRequest(format!(
                        "datetime {s:?}: the start is after the end"
                    )));
                }
            }
            Ok((from, to))
        }
    }
}

/// Where clients reach this hub: `http.public_url`, or the request's own host.
#[derive(Debug, Clone)]
pub struct BaseUrl(pub String);

impl FromRequestParts<AppState> for BaseUrl {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Self, Self::Rejection> {
        if let Some(u) = &s.settings.http.public_url {
            return Ok(BaseUrl(u.as_str().trim_end_matches('/').to_owned()));
        }
        let host = parts
            .headers
            .get(axum::http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| {
                !h.is_empty()
                    && h.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c))
            })
            .unwrap_or("localhost");
        let proto = parts
            .headers
            .get("x-forwarded-proto")
            .and_then(|h| h.to_str().ok())
            .filter(|p| *p == "https")
            .unwrap_or("http");
        Ok(BaseUrl(format!("{proto}://{host}")))
    }
}

/// Percent-encodes a query value.
pub fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bbox_forms() {
        let b = parse_bbox("9.9,45.1,10.1,45.2").unwrap();
        assert_eq!((b.min_lon, b.max_lat), (9.9, 45.2));
        let b = parse_bbox("9.9,45.1,0,10.1,45.2,100").unwrap();
        assert_eq!((b.max_lon, b.max_lat), (10.1, 45.2));
        assert!(parse_bbox("170,10,-170,20").is_ok(), "antimeridian");
        for bad in [
            "",
            "1,2,3",
            "a,b,c,d",
            "0,50,1,40",
            "0,0,200,1",
            "NaN,0,1,1",
        ] {
            assert!(parse_bbox(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn datetimes() {
        let (a, b) = parse_datetime("2026-03-01T00:00:00Z").unwrap();
        assert_eq!(a, b);
        let (a, b) = parse_datetime("../2026-03-01T00:00:00Z").unwrap();
        assert!(a.is_none() && b.is_some());
        let (a, b) = parse_datetime("2026-03-01/").unwrap();
        assert!(a.is_some() && b.is_none());
        assert!(parse_datetime("../..").is_err());
        assert!(parse_datetime("2026-03-02/2026-03-01").is_err());
        assert!(parse_datetime("yesterday").is_err());
    }
}

/// Endpoints that take no query parameters still refuse unknown ones.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

/// Checks a kind name against the catalogue.
pub fn known_kind(s: &AppState, kind: &str) -> ApiResult<()> {
    s.unknown_kind(kind)
        .map_or(Ok(()), |m| Err(ApiError::NotFound(m)))
}

/// A page size within 1..=`http.max_page`.
pub fn page_limit(s: &AppState, given: Option<u32>, default: u32) -> ApiResult<u32> {
    let max = s.settings.http.max_page.get();
    match given.unwrap_or(default) {
        l if l == 0 || l > max => Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {max}"
        ))),
        l => Ok(l),
    }
}

/// One gate for every text input: a NUL character (PostgreSQL text cannot hold one) or
/// invalid UTF-8, in the path, the query string or a request body, is a 400 that says
/// where, before any handler turns it into a query that fails with a 500. Uploads
/// (`/ingest/...`) are left to the ingestion pipeline, which keeps such a payload as a
/// dead letter (bytes, not text).
pub async fn reject_unstorable_text(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Result<axum::response::Response, ApiError> {
    let uri = req.uri();
    check_text("path", uri.path())?;
    if let Some(q) = uri.query() {
        check_text("query string", q)?;
    }
    if req.uri().path().starts_with("/ingest/") || req.method() == axum::http::Method::GET {
        return Ok(next.run(req).await);
    }
    let (parts, body) = req.into_parts();
    // The body limit layer outside this one bounds what is read here.
    let bytes = axum::body::to_bytes(body, usize::MAX).await.map_err(|e| {
        if caused_by::<http_body_util::LengthLimitError>(&e) {
            ApiError::TooLarge("body: larger than http.max_body_bytes".into())
        } else {
            ApiError::BadRequest(format!("body: {e}"))
        }
    })?;
    if !bytes.is_empty() {
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| ApiError::BadRequest("body: not valid UTF-8".into()))?;
        if text.contains('\0') || has_json_nul_escape(text) {
            return Err(ApiError::BadRequest(
                "body: text may not contain a NUL character (\\u0000)".into(),
            ));
        }
    }
    let req = axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes));
    Ok(next.run(req).await)
}

fn caused_by<E: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if c.is::<E>() {
            return true;
        }
        cur = c.source();
    }
    false
}

/// `raw` percent-decoded must be UTF-8 without NUL (a `+` in a query is a space, which
/// changes neither).
fn check_text(what: &str, raw: &str) -> Result<(), ApiError> {
    let decoded = percent_encoding::percent_decode_str(raw).collect::<Vec<u8>>();
    match std::str::from_utf8(&decoded) {
        Err(_) => Err(ApiError::BadRequest(format!(
            "{what}: not valid UTF-8 once percent-decoded"
        ))),
        Ok(t) if t.contains('\0') => Err(ApiError::BadRequest(format!(
            "{what}: may not contain a NUL character (%00)"
        ))),
        Ok(_) => Ok(()),
    }
}

/// Whether JSON text holds the escape `\u0000` (a NUL in a string once parsed): a `u`
/// after an odd run of backslashes is an escape, after an even run a literal.
fn has_json_nul_escape(text: &str) -> bool {
    let b = text.as_bytes();
    let mut from = 0;
    while let Some(i) = text[from..].find("u0000").map(|i| i + from) {
        let run = b[..i].iter().rev().take_while(|c| **c == b'\\').count();
        if run % 2 == 1 {
            return true;
        }
        from = i + 1;
    }
    false
}

#[cfg(test)]
mod text_tests {
    use super::*;

    #[test]
    fn nul_and_bad_utf8_are_refused_wherever_they_are_written() {
        assert!(check_text("q", "reason=abc").is_ok());
        assert!(check_text("q", "name=Cremona%20%C3%A8").is_ok());
        assert!(check_text("q", "reason=%00abc").is_err());
        assert!(check_text("q", "reason=%ff").is_err());
        assert!(check_text("p", "/api/v1/sensors/a%00b").is_err());
        assert!(has_json_nul_escape(r#"{"note":"a\u0000b"}"#));
        assert!(has_json_nul_escape(r#"{"note":"a\\\u0000b"}"#));
        assert!(!has_json_nul_escape(r#"{"note":"a\\u0000b"}"#));
        assert!(!has_json_nul_escape(r#"{"note":"u0000"}"#));
    }
}
