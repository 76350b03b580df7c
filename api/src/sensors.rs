//! `/api/v1`: the kind catalogue, sensors with their latest values, time series,
//! and the admin calls (register a sensor, read dead letters).

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::geo::{self, cached, sensor_feature, Feature, FeatureCollection, GEOJSON};
use crate::params::{enc, parse_bbox, parse_time, BaseUrl, StrictQuery};
use crate::{Admin, AppState};
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use chrono::{DateTime, Duration, TimeZone, Utc};
use cityhub_config::{GeoPoint, SensorId};
use cityhub_store::query::{self, Bucket, ReadingRow, ReadingsQuery, SensorFilter, SensorPut};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

/// One metric of a kind.
#[derive(Debug, Serialize, ToSchema)]
pub struct MetricInfo {
    pub name: String,
    pub unit: String,
    /// Lowest valid value (inclusive); readings outside the range are refused.
    pub min: Option<f64>,
    pub max: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Computed by the hub (e.g. fill level from distance and bin depth).
    pub derived: bool,
}

/// A sensor kind as configured.
#[derive(Debug, Serialize, ToSchema)]
pub struct KindInfo {
    pub name: String,
    pub title: String,
    pub title_it: Option<String>,
    pub description: Option<String>,
    pub description_it: Option<String>,
    /// EU data-theme code (ENVI, ENER, TRAN, ...).
    pub theme: String,
    /// Expected seconds between two reports of one sensor.
    pub cadence_s: u32,
    pub main_metric: Option<String>,
    pub metrics: Vec<MetricInfo>,
    /// How the operator map judges a sensor: `{"rule": "above", "metric", "warn",
    /// "alarm"}`, `{"rule": "lamp", "metric", "lit_above"}` or `{"rule": "activity",
    /// "metric", "steps"}`; absent for a kind with no rule.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub map: Option<Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KindList {
    pub kinds: Vec<KindInfo>,
}

/// The kind catalogue: metrics, units and valid ranges.
#[utoipa::path(get, path = "/api/v1/kinds", tag = "sensors",
    responses((status = 200, description = "The configured kinds", body = KindList)))]
pub async fn kinds(State(s): State<AppState>) -> Json<KindList> {
    let kinds = s
        .catalog
        .iter()
        .map(|k| KindInfo {
            name: k.name.to_string(),
            title: k.def.title.clone(),
            title_it: k.def.title_it.clone(),
            description: k.def.description.clone(),
            description_it: k.def.description_it.clone(),
            theme: k.def.theme.clone(),
            cadence_s: k.def.cadence_s,
            main_metric: k.def.main_metric.clone(),
            metrics: k
                .metrics
                .values()
                .map(|m| MetricInfo {
                    name: m.name.to_string(),
                    unit: m.unit.clone(),
                    min: m.min,
                    max: m.max,
                    title: k
                        .def
                        .metrics
                        .get(m.name.as_str())
                        .and_then(|d| d.title.clone()),
                    derived: k.def.derived.contains_key(m.name.as_str()),
                })
                .collect(),
            map: k
                .def
                .map
                .as_ref()
                .and_then(|r| serde_json::to_value(r).ok()),
        })
        .collect();
    Json(KindList { kinds })
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SensorsParams {
    /// Only sensors of this kind.
    kind: Option<String>,
    /// `minLon,minLat,maxLon,maxLat` (WGS 84).
    bbox: Option<String>,
}

/// Checks a kind name against the catalogue.
pub fn known_kind(s: &AppState, kind: &str) -> ApiResult<()> {
    s.unknown_kind(kind)
        .map_or(Ok(()), |m| Err(ApiError::NotFound(m)))
}

/// A page size within 1..=`http.max_page`.
fn page_limit(s: &AppState, given: Option<u32>, default: u32) -> ApiResult<u32> {
    let max = s.settings.http.max_page;
    match given.unwrap_or(default) {
        l if l == 0 || l > max => Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {max}"
        ))),
        l => Ok(l),
    }
}

/// Sensors with the latest value, unit and time of each metric (reads `latest` only).
#[utoipa::path(get, path = "/api/v1/sensors", tag = "sensors", params(SensorsParams),
    responses(
        (status = 200, description = "GeoJSON FeatureCollection", body = FeatureCollection, content_type = "application/geo+json"),
        (status = 304, description = "Not modified since the client's copy"),
        (status = 400, description = "Bad parameter", body = ErrorBody),
        (status = 404, description = "Unknown kind", body = ErrorBody)))]
pub async fn list(
    State(s): State<AppState>,
    headers: HeaderMap,
    StrictQuery(p): StrictQuery<SensorsParams>,
) -> ApiResult<Response> {
    let kinds = match &p.kind {
        Some(k) => {
            if let Some(m) = s.unknown_kind(k) {
                return Err(ApiError::BadRequest(m));
            }
            vec![k.clone()]
        }
        None => s.kind_names(),
    };
    let bbox = p.bbox.as_deref().map(parse_bbox).transpose()?;
    let store = s.store()?;
    let rows = query::sensors(
        store,
        &SensorFilter {
            kinds,
            bbox,
            ..Default::default()
        },
    )
    .await?;
    let fc = FeatureCollection::new(rows.iter().map(sensor_feature).collect());
    Ok(cached(
        &headers,
        GEOJSON,
        geo::to_json(&fc)?,
        geo::last_modified(&rows),
        &[],
    ))
}

fn sensor_id(id: &str) -> ApiResult<SensorId> {
    SensorId::parse(id).map_err(|e| ApiError::BadRequest(format!("sensor id {id:?}: {e}")))
}

/// One sensor.
#[utoipa::path(get, path = "/api/v1/sensors/{id}", tag = "sensors",
    params(("id" = String, Path, description = "Sensor id")),
    responses(
        (status = 200, description = "GeoJSON Feature", body = Feature, content_type = "application/geo+json"),
        (status = 404, description = "No such sensor", body = ErrorBody)))]
pub async fn one(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    _q: StrictQuery<NoParams>,
) -> ApiResult<Response> {
    let id = sensor_id(&id)?;
    let rows = query::sensors(
        s.store()?,
        &SensorFilter {
            kinds: s.kind_names(),
            id: Some(id.to_string()),
            ..Default::default()
        },
    )
    .await?;
    let Some(sensor) = rows.first() else {
        return Err(ApiError::NotFound(format!("no sensor {id:?}")));
    };
    Ok(cached(
        &headers,
        GEOJSON,
        geo::to_json(&sensor_feature(sensor))?,
        geo::last_modified(&rows),
        &[],
    ))
}

/// Endpoints that take no query parameters still refuse unknown ones.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema, PartialEq, Eq)]
pub enum BucketParam {
    #[serde(rename = "raw")]
    Raw,
    #[serde(rename = "15m")]
    M15,
    #[serde(rename = "1h")]
    H1,
    #[serde(rename = "1d")]
    D1,
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FormatParam {
    Json,
    Csv,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReadingsParams {
    /// Metric name, or several separated by commas; all metrics of the kind when absent.
    metric: Option<String>,
    /// Start (inclusive), RFC 3339 or a date; default: `to` minus 24 h (raw, 15m), 30 days (1h), 1 year (1d).
    from: Option<String>,
    /// End (exclusive); default now.
    to: Option<String>,
    /// `raw` readings, or buckets with avg/min/max/count (UTC-aligned).
    #[param(inline)]
    bucket: Option<BucketParam>,
    /// `json` (paged) or `csv` (the whole range, streamed).
    #[param(inline)]
    format: Option<FormatParam>,
    /// Rows per page (JSON); default 1000.
    #[param(minimum = 1)]
    limit: Option<u32>,
    /// Continue after this position: the `next` link carries it.
    cursor: Option<String>,
}

/// A reading, or a bucket of readings.
#[derive(Debug, Serialize, ToSchema)]
pub struct Reading {
    /// The reading's time, or the bucket's start.
    pub time: String,
    pub metric: String,
    /// The value, or the bucket's mean.
    pub value: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Readings {
    pub sensor: String,
    pub kind: String,
    pub bucket: String,
    pub from: String,
    pub to: String,
    /// Unit of each metric returned.
    #[schema(value_type = Object)]
    pub units: Map<String, Value>,
    pub readings: Vec<Reading>,
    pub links: Vec<geo::Link>,
}

fn bucket_name(b: Bucket) -> &'static str {
    match b {
        Bucket::Raw => "raw",
        Bucket::Minutes15 => "15m",
        Bucket::Hour => "1h",
        Bucket::Day => "1d",
    }
}

fn parse_cursor(c: &str) -> ApiResult<(DateTime<Utc>, i16)> {
    let bad = || ApiError::BadRequest(format!("cursor {c:?} is not one this API issued"));
    let (t, m) = c.split_once('.').ok_or_else(bad)?;
    let micros: i64 = t.parse().map_err(|_| bad())?;
    let m: i16 = m.parse().map_err(|_| bad())?;
    let t = Utc.timestamp_micros(micros).single().ok_or_else(bad)?;
    Ok((t, m))
}

/// Time series of a sensor: raw readings or buckets with avg/min/max/count.
#[utoipa::path(get, path = "/api/v1/sensors/{id}/readings", tag = "sensors",
    params(("id" = String, Path, description = "Sensor id"), ReadingsParams),
    responses(
        (status = 200, description = "A page of readings (JSON) or all of them (CSV)",
         content((Readings = "application/json"), (String = "text/csv"))),
        (status = 400, description = "Bad parameter (unknown metric, from after to, ...)", body = ErrorBody),
        (status = 404, description = "No such sensor", body = ErrorBody)))]
pub async fn readings(
    State(s): State<AppState>,
    base: BaseUrl,
    Path(id): Path<String>,
    StrictQuery(p): StrictQuery<ReadingsParams>,
) -> ApiResult<Response> {
    let id = sensor_id(&id)?;
    let store = s.store()?.clone();
    let Some((pk, kind_name)) = query::sensor_key(&store, id.as_str()).await? else {
        return Err(ApiError::NotFound(format!("no sensor {id:?}")));
    };
    let Some(kind) = s.catalog.get(&kind_name) else {
        return Err(ApiError::NotFound(format!("no sensor {id:?}")));
    };
    let names: Vec<String> = match &p.metric {
        Some(m) => m.split(',').map(|x| x.trim().to_owned()).collect(),
        None => kind.metrics.keys().map(|n| n.to_string()).collect(),
    };
    let mut metrics = Vec::new();
    let mut units = Map::new();
    for n in &names {
        let (Some(m), Some(mid)) = (kind.metric(n), store.metric_id(&kind_name, n)) else {
            return Err(ApiError::BadRequest(format!(
                "unknown metric {n:?} for kind {kind_name}; its metrics: {}",
                kind.metrics
                    .keys()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        metrics.push(mid);
        units.insert(n.clone(), m.unit.clone().into());
    }
    let bucket = match p.bucket.unwrap_or(BucketParam::Raw) {
        BucketParam::Raw => Bucket::Raw,
        BucketParam::M15 => Bucket::Minutes15,
        BucketParam::H1 => Bucket::Hour,
        BucketParam::D1 => Bucket::Day,
    };
    let to = match &p.to {
        Some(t) => parse_time("to", t)?,
        None => Utc::now(),
    };
    let from = match &p.from {
        Some(t) => parse_time("from", t)?,
        None => {
            to - match bucket {
                Bucket::Raw | Bucket::Minutes15 => Duration::hours(24),
                Bucket::Hour => Duration::days(30),
                Bucket::Day => Duration::days(365),
            }
        }
    };
    if from > to {
        return Err(ApiError::BadRequest(format!(
            "from ({}) is after to ({})",
            geo::rfc3339(from),
            geo::rfc3339(to)
        )));
    }
    let limit = page_limit(&s, p.limit, 1000)?;
    let after = p.cursor.as_deref().map(parse_cursor).transpose()?;
    let q = ReadingsQuery {
        sensor: pk,
        metrics,
        from,
        to,
        bucket,
        after,
        limit: Some(i64::from(limit)),
    };
    let metric_name = |mid: i16| {
        store
            .metric_name(mid)
            .map(|(_, m)| m.to_owned())
            .unwrap_or_default()
    };

    if p.format == Some(FormatParam::Csv) {
        return Ok(readings_csv(
            store.clone(),
            ReadingsQuery {
                limit: p.limit.map(i64::from),
                ..q
            },
            id,
            units,
        ));
    }

    let rows = query::readings(&store, &q).await?;
    let mut links = Vec::new();
    let mut params = vec![
        format!("from={}", enc(&geo::rfc3339(from))),
        format!("to={}", enc(&geo::rfc3339(to))),
        format!("bucket={}", bucket_name(bucket)),
        format!("limit={limit}"),
    ];
    if let Some(m) = &p.metric {
        params.push(format!("metric={}", enc(m)));
    }
    let path = format!("{}/api/v1/sensors/{}/readings", base.0, enc(id.as_str()));
    links.push(geo::Link::new(
        "self",
        format!(
            "{path}?{}{}",
            params.join("&"),
            p.cursor
                .as_deref()
                .map(|c| format!("&cursor={}", enc(c)))
                .unwrap_or_default()
        ),
        "application/json",
        "",
    ));
    if rows.len() == limit as usize {
        if let Some(last) = rows.last() {
            let c = format!("{}.{}", last.time.timestamp_micros(), last.metric_id);
            links.push(geo::Link::new(
                "next",
                format!("{path}?{}&cursor={}", params.join("&"), enc(&c)),
                "application/json",
                "next page",
            ));
        }
    }
    let body = Readings {
        sensor: id.to_string(),
        kind: kind_name.clone(),
        bucket: bucket_name(bucket).into(),
        from: geo::rfc3339(from),
        to: geo::rfc3339(to),
        units,
        readings: rows
            .iter()
            .map(|r| Reading {
                time: geo::rfc3339(r.time),
                metric: metric_name(r.metric_id),
                value: r.value,
                min: r.min,
                max: r.max,
                count: r.count,
            })
            .collect(),
        links,
    };
    Ok(Json(body).into_response())
}

/// Streams the whole range as CSV; a failure mid-way ends the body early (the
/// client sees a truncated transfer, never a silently short file with a 200 trailer).
fn readings_csv(
    store: cityhub_store::Store,
    q: ReadingsQuery,
    id: SensorId,
    units: Map<String, Value>,
) -> Response {
    let raw = q.bucket == Bucket::Raw;
    let header = if raw {
        "sensor_id,time,metric,unit,value\n"
    } else {
        "sensor_id,bucket_start,metric,unit,mean,min,max,count\n"
    };
    let names: std::collections::HashMap<i16, (String, String)> = q
        .metrics
        .iter()
        .filter_map(|mid| {
            let (_, m) = store.metric_name(*mid)?;
            let unit = units.get(m)?.as_str()?.to_owned();
            Some((*mid, (m.to_owned(), unit)))
        })
        .collect();
    let rx = query::readings_stream(store, q);
    let first = futures_util::stream::once(async move {
        Ok::<_, std::io::Error>(Bytes::from_static(header.as_bytes()))
    });
    let rows =
        futures_util::stream::unfold((rx, names, id), move |(mut rx, names, id)| async move {
            // Up to 256 rows per chunk: fewer, larger writes.
            let mut out = Vec::with_capacity(16 * 1024);
            let mut n = 0;
            loop {
                let item = if n == 0 {
                    rx.recv().await
                } else {
                    match rx.try_recv() {
                        Ok(i) => Some(i),
                        Err(_) => break,
                    }
                };
                match item {
                    None => break,
                    Some(Err(e)) => {
                        tracing::error!(error = %e, "CSV download failed part-way.");
                        return Some((
                            Err(std::io::Error::other("database error")),
                            (rx, names, id),
                        ));
                    }
                    Some(Ok(r)) => {
                        csv_row(&mut out, id.as_str(), &r, names.get(&r.metric_id), raw);
                        n += 1;
                        if n == 256 {
                            break;
                        }
                    }
                }
            }
            if n == 0 {
                None
            } else {
                Some((Ok(Bytes::from(out)), (rx, names, id)))
            }
        });
    // Fused: the compression layer may poll once more after the end.
    let body = Body::from_stream(futures_util::StreamExt::fuse(
        futures_util::StreamExt::chain(first, rows),
    ));
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"readings.csv\"".to_owned(),
            ),
        ],
        body,
    )
        .into_response()
}

fn csv_field(out: &mut Vec<u8>, s: &str) {
    if s.contains([',', '"', '\n', '\r']) {
        out.push(b'"');
        out.extend_from_slice(s.replace('"', "\"\"").as_bytes());
        out.push(b'"');
    } else {
        out.extend_from_slice(s.as_bytes());
    }
}

fn csv_row(
    out: &mut Vec<u8>,
    id: &str,
    r: &ReadingRow,
    name: Option<&(String, String)>,
    raw: bool,
) {
    use std::io::Write;
    let (m, u) = name
        .map(|(m, u)| (m.as_str(), u.as_str()))
        .unwrap_or(("", ""));
    csv_field(out, id);
    let _ = write!(out, ",{},", geo::rfc3339(r.time));
    csv_field(out, m);
    out.push(b',');
    csv_field(out, u);
    let _ = write!(out, ",{}", r.value);
    if !raw {
        let opt = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
        let _ = write!(
            out,
            ",{},{},{}",
            opt(r.min),
            opt(r.max),
            r.count.unwrap_or(0)
        );
    }
    out.push(b'\n');
}

/// What `PUT /api/v1/sensors/{id}` takes: a GeoJSON Feature (or just its properties'
/// content) with `kind`, optional `name`, and any further registry attributes.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SensorInput {
    /// `Feature` (optional).
    #[serde(rename = "type")]
    pub kind_of_object: Option<String>,
    /// A GeoJSON Point, or null for a sensor with no fixed position.
    #[schema(value_type = Object)]
    pub geometry: Option<Value>,
    /// `kind` (required), `name`, and attributes such as `depth_mm`.
    #[schema(value_type = Object)]
    pub properties: Map<String, Value>,
}

/// Attribute names the API itself uses in a sensor's properties.
const RESERVED: &[&str] = &["id", "kind", "name", "latest", "first_seen", "last_seen"];

/// Registers a sensor or replaces its record (position, name, attributes). Admin only.
#[utoipa::path(put, path = "/api/v1/sensors/{id}", tag = "admin",
    params(("id" = String, Path, description = "Sensor id")),
    request_body(content = SensorInput, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Registered", body = Feature),
        (status = 200, description = "Replaced", body = Feature),
        (status = 400, description = "Invalid sensor", body = ErrorBody),
        (status = 401, description = "No token", body = ErrorBody),
        (status = 403, description = "Wrong token", body = ErrorBody),
        (status = 409, description = "Registered under another kind", body = ErrorBody)))]
pub async fn put(
    _: Admin,
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let id = sensor_id(&id)?;
    let input: SensorInput =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("body: {e}")))?;
    if input
        .kind_of_object
        .as_deref()
        .is_some_and(|t| t != "Feature")
    {
        return Err(ApiError::BadRequest(
            "body: type must be \"Feature\"".into(),
        ));
    }
    let mut props = input.properties;
    let kind = match props.remove("kind") {
        Some(Value::String(k)) => k,
        _ => {
            return Err(ApiError::BadRequest(
                "properties.kind (a string) is required".into(),
            ))
        }
    };
    if let Some(m) = s.unknown_kind(&kind) {
        return Err(ApiError::BadRequest(m));
    }
    let name = match props.remove("name") {
        None | Some(Value::Null) => None,
        Some(Value::String(n)) if n.chars().count() <= 200 && !n.chars().any(char::is_control) => {
            Some(n)
        }
        Some(Value::String(_)) => {
            return Err(ApiError::BadRequest(
                "properties.name must be at most 200 printable characters".into(),
            ))
        }
        Some(_) => {
            return Err(ApiError::BadRequest(
                "properties.name must be a string".into(),
            ))
        }
    };
    if let Some(r) = props.keys().find(|k| RESERVED.contains(&k.as_str())) {
        return Err(ApiError::BadRequest(format!("properties.{r} is reserved")));
    }
    let location = match input.geometry {
        None | Some(Value::Null) => None,
        Some(g) => {
            let ok = g.get("type").and_then(Value::as_str) == Some("Point");
            let c = g.get("coordinates").and_then(Value::as_array);
            match (ok, c.map(|c| c.as_slice())) {
                (true, Some([lon, lat, ..])) => {
                    let (Some(lon), Some(lat)) = (lon.as_f64(), lat.as_f64()) else {
                        return Err(ApiError::BadRequest(
                            "geometry.coordinates must be numbers".into(),
                        ));
                    };
                    Some(
                        GeoPoint::new(lat, lon)
                            .map_err(|e| ApiError::BadRequest(format!("geometry: {e}")))?,
                    )
                }
                _ => {
                    return Err(ApiError::BadRequest(
                        "geometry must be a GeoJSON Point [lon, lat] or null".into(),
                    ))
                }
            }
        }
    };
    let store = s.store()?;
    let created = query::put_sensor(
        store,
        &SensorPut {
            id: id.clone(),
            kind: kind.clone(),
            name,
            location,
            properties: props,
        },
    )
    .await?;
    tracing::info!(sensor = %id, kind, created, "Sensor registered by an admin.");
    let rows = query::sensors(
        store,
        &SensorFilter {
            kinds: vec![kind],
            id: Some(id.to_string()),
            ..Default::default()
        },
    )
    .await?;
    let feature = rows
        .first()
        .map(sensor_feature)
        .ok_or_else(|| ApiError::Internal("sensor vanished after registration".into()))?;
    let code = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        code,
        [(header::CONTENT_TYPE, GEOJSON)],
        geo::to_json(&feature)?,
    )
        .into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeadLetterParams {
    /// Only this reason code (e.g. `out_of_range`).
    reason: Option<String>,
    /// Entries older than this id (the `next` link carries it).
    before: Option<i64>,
    /// Default 100.
    #[param(minimum = 1)]
    limit: Option<u32>,
}

/// A message that could not be stored, with why.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterOut {
    pub id: i64,
    pub received_at: String,
    pub topic: String,
    pub reason_code: String,
    pub reason: String,
    /// The payload as text when it is UTF-8...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// ...else base64.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterPage {
    pub dead_letters: Vec<DeadLetterOut>,
    pub links: Vec<geo::Link>,
}

/// Dead letters, newest first. Admin only.
#[utoipa::path(get, path = "/api/v1/dead-letters", tag = "admin", params(DeadLetterParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of dead letters", body = DeadLetterPage),
        (status = 400, description = "Bad parameter", body = ErrorBody),
        (status = 401, description = "No token", body = ErrorBody),
        (status = 403, description = "Wrong token", body = ErrorBody)))]
pub async fn dead_letters(
    _: Admin,
    State(s): State<AppState>,
    base: BaseUrl,
    StrictQuery(p): StrictQuery<DeadLetterParams>,
) -> ApiResult<Json<DeadLetterPage>> {
    let limit = page_limit(&s, p.limit, 100)?;
    let rows =
        query::dead_letters(s.store()?, p.reason.as_deref(), p.before, i64::from(limit)).await?;
    let mut links = Vec::new();
    if rows.len() == limit as usize {
        if let Some(last) = rows.last() {
            let mut q = format!("limit={limit}&before={}", last.id);
            if let Some(r) = &p.reason {
                q.push_str(&format!("&reason={}", enc(r)));
            }
            links.push(geo::Link::new(
                "next",
                format!("{}/api/v1/dead-letters?{q}", base.0),
                "application/json",
                "older entries",
            ));
        }
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    Ok(Json(DeadLetterPage {
        dead_letters: rows
            .into_iter()
            .map(|d| {
                let (payload, payload_base64) = match String::from_utf8(d.payload) {
                    Ok(t) => (Some(t), None),
                    Err(e) => (None, Some(b64.encode(e.into_bytes()))),
                };
                DeadLetterOut {
                    id: d.id,
                    received_at: geo::rfc3339(d.received_at),
                    topic: d.topic,
                    reason_code: d.reason_code,
                    reason: d.reason,
                    payload,
                    payload_base64,
                }
            })
            .collect(),
        links,
    }))
}
