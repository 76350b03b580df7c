//! `/api/v1/sensors/{id}/readings`: a sensor's time series, raw or in UTC
//! buckets with avg/min/max/count; JSON in keyset pages, or the whole range
//! streamed as CSV.

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::geo;
use crate::params::{enc, page_limit, parse_time, BaseUrl, StrictQuery};

/// Readings per page when the request names no `limit`.
pub const DEFAULT_LIMIT: u32 = 1000;
use crate::sensors::sensor_id;
use crate::AppState;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Duration, TimeZone, Utc};
use cityhub_core::SensorId;
use cityhub_store::query::{self, Bucket, ReadingRow, ReadingsQuery};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

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
    /// Start (inclusive), RFC 3339 (a date is taken too); default: `to` minus 24 h (raw, 15m), 30 days (1h), 1 year (1d).
    #[param(format = DateTime)]
    from: Option<String>,
    /// End (exclusive), RFC 3339 (or a date); default now.
    #[param(format = DateTime)]
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
    client_addr: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    base: BaseUrl,
    Path(id): Path<String>,
    StrictQuery(p): StrictQuery<ReadingsParams>,
) -> ApiResult<Response> {
    let id = sensor_id(&id)?;
    let store = s.reader()?;
    let Some((pk, kind_name)) = query::sensor_key(&store, id.as_str()).await? else {
        return Err(ApiError::NotFound(format!("no sensor {id:?}")));
    };
    let Some(kind) = s.catalog.get(&kind_name) else {
        return Err(ApiError::NotFound(format!("no sensor {id:?}")));
    };
    let (metrics, units) = resolve_metrics(&store, kind, p.metric.as_deref())?;
    let bucket = match p.bucket.unwrap_or(BucketParam::Raw) {
        BucketParam::Raw => Bucket::Raw,
        BucketParam::M15 => Bucket::Minutes15,
        BucketParam::H1 => Bucket::Hour,
        BucketParam::D1 => Bucket::Day,
    };
    let (from, to) = time_range(&p, bucket)?;
    let limit = page_limit(&s, p.limit, DEFAULT_LIMIT)?;
    let q = ReadingsQuery {
        sensor: pk,
        metrics,
        from,
        to,
        bucket,
        after: p.cursor.as_deref().map(parse_cursor).transpose()?,
        limit: Some(i64::from(limit)),
    };
    if p.format == Some(FormatParam::Csv) {
        // At most half the download slots per client, so one address cannot hold them all.
        let per_client = s.settings.database.stream_pool_size.max(1).div_ceil(2);
        let ip = client_addr.map(|c| crate::ratelimit::client_key(c.0 .0.ip()));
        let slot = DownloadSlot::take(&s.downloads, ip, per_client).ok_or_else(|| {
            ApiError::Busy(format!(
                "{per_client} downloads from this address are running; retry when one ends"
            ))
        })?;
        // From the pool of long downloads: slow clients there never take the
        // connections of listings, feeds and readiness.
        let client = store.download_client().await.map_err(|e| match e {
            cityhub_store::PoolError::Timeout(_) => {
                ApiError::Busy("every download slot is taken; retry in a few seconds".into())
            }
            e => ApiError::Store(e.into()),
        })?;
        let send_timeout =
            std::time::Duration::from_secs(s.settings.http.stream_send_timeout_s.max(1));
        return Ok(readings_csv(
            store,
            client,
            ReadingsQuery {
                limit: p.limit.map(i64::from),
                ..q
            },
            (id, units),
            send_timeout,
            slot,
        ));
    }
    let rows = query::readings(&store, &q).await?;
    let links = page_links(&s.pages, &base, &id, &p, &q, &rows, limit);
    let body = Readings {
        sensor: id.to_string(),
        kind: kind_name,
        bucket: bucket_name(bucket).into(),
        from: geo::rfc3339(from),
        to: geo::rfc3339(to),
        units,
        readings: rows
            .iter()
            .map(|r| Reading {
                time: geo::rfc3339(r.time),
                metric: metric_name(&store, r.metric_id),
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

fn metric_name(store: &cityhub_store::Store, mid: i16) -> String {
    store
        .metric_name(mid)
        .map(|(_, m)| m.to_owned())
        .unwrap_or_default()
}

/// The asked metrics (all of the kind's when none) as ids, with their units; 400
/// for a metric the kind does not have.
fn resolve_metrics(
    store: &cityhub_store::Store,
    kind: &cityhub_core::Kind,
    asked: Option<&str>,
) -> ApiResult<(Vec<i16>, Map<String, Value>)> {
    let kind_name = kind.name.as_str();
    let names: Vec<String> = match asked {
        Some(m) => m.split(',').map(|x| x.trim().to_owned()).collect(),
        None => kind.metrics.keys().map(|n| n.to_string()).collect(),
    };
    let mut metrics = Vec::new();
    let mut units = Map::new();
    for n in &names {
        let (Some(m), Some(mid)) = (kind.metric(n), store.metric_id(kind_name, n)) else {
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
    Ok((metrics, units))
}

/// `from` and `to`; by default the last 24 h (raw, 15m), 30 days (1h) or a year (1d).
fn time_range(p: &ReadingsParams, bucket: Bucket) -> ApiResult<(DateTime<Utc>, DateTime<Utc>)> {
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
    Ok((from, to))
}

/// `self`, and `next` with a keyset cursor when the page is full.
fn page_links(
    pages: &crate::pages::PageSigner,
    base: &BaseUrl,
    id: &SensorId,
    p: &ReadingsParams,
    q: &ReadingsQuery,
    rows: &[ReadingRow],
    limit: u32,
) -> Vec<geo::Link> {
    let mut params = vec![
        format!("from={}", enc(&geo::rfc3339(q.from))),
        format!("to={}", enc(&geo::rfc3339(q.to))),
        format!("bucket={}", bucket_name(q.bucket)),
        format!("limit={limit}"),
    ];
    if let Some(m) = &p.metric {
        params.push(format!("metric={}", enc(m)));
    }
    let path = format!("{}/api/v1/sensors/{}/readings", base.0, enc(id.as_str()));
    let mut links = vec![geo::Link::new(
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
    )];
    if rows.len() == limit as usize {
        if let Some(last) = rows.last() {
            let c = format!("{}.{}", last.time.timestamp_micros(), last.metric_id);
            links.push(geo::Link::new(
                "next",
                pages.sign(&format!("{path}?{}&cursor={}", params.join("&"), enc(&c))),
                "application/json",
                "next page",
            ));
        }
    }
    links
}

/// Streams the whole range as CSV; a failure mid-way ends the body early (the
/// client sees a truncated transfer, never a silently short file with a 200 trailer).
/// Long downloads running, per client key.
pub type Downloads =
    std::sync::Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>;

/// One client's place among the running downloads, given back when the body ends
/// (sent, failed or dropped with its connection).
pub struct DownloadSlot {
    table: Downloads,
    ip: Option<std::net::IpAddr>,
}

impl DownloadSlot {
    /// A place for `ip` if it has fewer than `max` downloads running (a request
    /// with no address, from a test harness, is not counted).
    fn take(table: &Downloads, ip: Option<std::net::IpAddr>, max: usize) -> Option<Self> {
        if let Some(ip) = ip {
            let mut t = table.lock().expect("downloads lock");
            let n = t.entry(ip).or_default();
            if *n >= max {
                return None;
            }
            *n += 1;
        }
        Some(Self {
            table: table.clone(),
            ip,
        })
    }
}

impl Drop for DownloadSlot {
    fn drop(&mut self) {
        let Some(ip) = self.ip else { return };
        let mut t = self.table.lock().expect("downloads lock");
        if let Some(n) = t.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                t.remove(&ip);
            }
        }
    }
}

fn readings_csv(
    store: cityhub_store::Store,
    client: cityhub_store::PooledClient,
    q: ReadingsQuery,
    (id, units): (SensorId, Map<String, Value>),
    send_timeout: std::time::Duration,
    slot: DownloadSlot,
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
    let rx = query::readings_stream(store, client, q, send_timeout);
    let first = futures_util::stream::once(async move {
        Ok::<_, std::io::Error>(Bytes::from_static(header.as_bytes()))
    });
    let rows = futures_util::stream::unfold(
        (rx, names, id, slot),
        move |(mut rx, names, id, slot)| async move {
            // Up to 256 rows per chunk: fewer, larger writes.
            let mut out = csv::WriterBuilder::new()
                .terminator(csv::Terminator::Any(b'\n'))
                .from_writer(Vec::with_capacity(16 * 1024));
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
                            (rx, names, id, slot),
                        ));
                    }
                    Some(Ok(r)) => {
                        // Writing into memory cannot fail.
                        let _ = csv_row(&mut out, id.as_str(), &r, names.get(&r.metric_id), raw);
                        n += 1;
                        if n == 256 {
                            break;
                        }
                    }
                }
            }
            let out = out.into_inner().unwrap_or_default();
            if n == 0 {
                None
            } else {
                Some((Ok(Bytes::from(out)), (rx, names, id, slot)))
            }
        },
    );
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

/// One CSV row (RFC 4180 quoting by the `csv` crate) appended to `out`.
fn csv_row(
    out: &mut csv::Writer<Vec<u8>>,
    id: &str,
    r: &ReadingRow,
    name: Option<&(String, String)>,
    raw: bool,
) -> csv::Result<()> {
    let (m, u) = name
        .map(|(m, u)| (m.as_str(), u.as_str()))
        .unwrap_or(("", ""));
    let time = geo::rfc3339(r.time);
    let value = r.value.to_string();
    if raw {
        return out.write_record([id, &time, m, u, &value]);
    }
    let opt = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
    out.write_record([
        id,
        &time,
        m,
        u,
        &value,
        &opt(r.min),
        &opt(r.max),
        &r.count.unwrap_or(0).to_string(),
    ])
}
