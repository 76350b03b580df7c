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
/// requires a 400 for those; elsewhere it catches typos such as `kinds=`).
pub struct StrictQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for StrictQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::try_from_uri(&parts.uri)
            .map(|Query(q)| StrictQuery(q))
            .map_err(|e| ApiError::BadRequest(format!("query string: {}", e.body_text())))
    }
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
            return Ok(BaseUrl(u.trim_end_matches('/').to_owned()));
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
    let max = s.settings.http.max_page;
    match given.unwrap_or(default) {
        l if l == 0 || l > max => Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {max}"
        ))),
        l => Ok(l),
    }
}
