//! The mandate's indicators over HTTP: `GET /api/v1/indicators` lists them with
//! their plan line and SDG targets; `GET /api/v1/indicators/{id}` computes one
//! (for the city, or per sensor a page at a time, by day, month or year) as JSON
//! or CSV.
//!
//! One computation can read a fleet's years, so each is bounded: at most
//! [`MAX_CONCURRENT`] at once, the pool's statement timeout, a price in the rate
//! limit that grows with the sensor-days read ([`SENSOR_DAYS_PER_REQUEST`]), and
//! answers over finished days kept for `indicators.cache_s`.

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::params::{enc, parse_time, BaseUrl, StrictQuery};
use crate::ratelimit::Charge;
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use chrono::{Datelike, Duration, NaiveDate, Utc};
use cityhub_core::indicators::{Indicator, Period, INDICATORS};
use cityhub_store::indicators::{self as ind, IndicatorQuery, IndicatorRow};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};

/// Indicator computations a hub runs at once; a request that finds them all taken
/// for [`SLOT_WAIT`] is answered 503 with Retry-After, and the pool keeps its other
/// connections for listings, readings and readiness.
pub const MAX_CONCURRENT: usize = 2;
const SLOT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Sensor-days (sensors read times days of the range) that cost one request of the
/// client's rate limit: a month of a few hundred sensors costs one, three years of
/// 10,000 sensors the whole burst.
pub const SENSOR_DAYS_PER_REQUEST: u64 = 10_000;

/// Sensors per page of sensor rows, by default and at most.
pub const PAGE_DEFAULT: u32 = 100;
pub const PAGE_MAX: u32 = 1000;

/// Rows kept by the cache, all answers together.
const CACHE_ROWS: u64 = 200_000;

/// Answers over finished days, by indicator and query. Late readings for those days
/// show once an answer expires (`indicators.cache_s`).
#[derive(Clone)]
pub struct Cache(Option<moka::future::Cache<CacheKey, Arc<Vec<IndicatorRow>>>>);

/// An indicator's id and what was asked of it.
type CacheKey = (&'static str, IndicatorQuery);

impl Cache {
    /// Keeps answers for `ttl_s` seconds; 0 keeps none.
    pub fn new(ttl_s: u64) -> Self {
        Self((ttl_s > 0).then(|| {
            moka::future::Cache::builder()
                .max_capacity(CACHE_ROWS)
                .weigher(|_, rows: &Arc<Vec<IndicatorRow>>| {
                    u32::try_from(rows.len()).unwrap_or(u32::MAX).max(1)
                })
                .time_to_live(std::time::Duration::from_secs(ttl_s))
                .build()
        }))
    }

    async fn get(&self, key: &CacheKey) -> Option<Arc<Vec<IndicatorRow>>> {
        self.0.as_ref()?.get(key).await
    }

    async fn put(&self, key: CacheKey, rows: Arc<Vec<IndicatorRow>>) {
        if let Some(c) = &self.0 {
            c.insert(key, rows).await;
        }
    }
}

/// The indicators this hub computes: those whose kind and metrics are configured.
pub fn available(s: &AppState) -> Vec<&'static Indicator> {
    INDICATORS
        .iter()
        .filter(|i| {
            s.catalog.get(i.kind).is_some_and(|k| {
                i.metrics
                    .iter()
                    .all(|m| k.metrics.values().any(|x| x.name.as_str() == *m))
            })
        })
        .collect()
}

/// An indicator as the list shows it.
#[derive(Debug, Serialize)]
struct Entry {
    #[serde(flatten)]
    ind: &'static Indicator,
    /// The values are rounded to this many decimals.
    decimals: u32,
    /// The address of its rows.
    href: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IndicatorList {
    /// The city's time zone: days, months and years are local.
    timezone: String,
    #[schema(value_type = Vec<Object>)]
    indicators: Vec<Value>,
}

/// The indicators: unit, method, plan line, SDG targets and the limit, if any.
#[utoipa::path(get, path = "/api/v1/indicators", tag = "indicators", operation_id = "list_indicators",
    responses((status = 200, description = "The indicators", body = IndicatorList)))]
pub async fn list(State(s): State<AppState>, BaseUrl(base): BaseUrl) -> Json<IndicatorList> {
    let indicators = available(&s)
        .into_iter()
        .map(|i| {
            serde_json::to_value(Entry {
                ind: i,
                decimals: i.compute.decimals(),
                href: format!("{base}/api/v1/indicators/{}", i.id),
            })
            .unwrap_or_default()
        })
        .collect();
    Json(IndicatorList {
        timezone: s.settings.indicators.timezone.clone(),
        indicators,
    })
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct IndicatorParams {
    /// `city` (default): the city's rows; `sensors`: each sensor's rows, a page of
    /// sensors at a time (`limit`, and the `next` link).
    rows: Option<String>,
    /// One sensor's rows only.
    sensor: Option<String>,
    /// Sensors per page of sensor rows (default 100, at most 1000).
    limit: Option<u32>,
    /// Where a page of sensor rows starts: given by the `next` link.
    cursor: Option<String>,
    /// First day: `YYYY-MM-DD`, `YYYY-MM`, `YYYY` or an RFC 3339 instant, widened to
    /// the start of its period (default: 31 days, 12 months or 5 years before `to`).
    from: Option<String>,
    /// End (exclusive), in the same forms, widened to the end of its period
    /// (default: the end of the current period).
    to: Option<String>,
    /// `day`, `month` or `year` (default: the indicator's own).
    period: Option<String>,
    /// `json` (default) or `csv`.
    format: Option<String>,
    /// `stream`: waste indicators add city rows for each waste stream.
    by: Option<String>,
}

/// A local date from `YYYY`, `YYYY-MM`, `YYYY-MM-DD` or an RFC 3339 instant.
fn parse_day(name: &str, v: &str, tz: chrono_tz::Tz) -> ApiResult<NaiveDate> {
    let bad = || {
        ApiError::BadRequest(format!(
            "{name}={v:?}: use YYYY, YYYY-MM, YYYY-MM-DD or an RFC 3339 instant"
        ))
    };
    if let Ok(d) = NaiveDate::parse_from_str(v, "%Y-%m-%d") {
        return Ok(d);
    }
    if let Ok(d) = NaiveDate::parse_from_str(&format!("{v}-01"), "%Y-%m-%d") {
        if v.len() == 7 {
            return Ok(d);
        }
    }
    if v.len() == 4 {
        let y: i32 = v.parse().map_err(|_| bad())?;
        return NaiveDate::from_ymd_opt(y, 1, 1).ok_or_else(bad);
    }
    if v.contains('T') {
        let t = parse_time(name, v)?;
        return Ok(t.with_timezone(&tz).date_naive());
    }
    Err(bad())
}

/// The indicator's rows.
#[derive(Debug, Serialize, ToSchema)]
pub struct IndicatorRows {
    indicator: String,
    unit: String,
    /// The values are rounded to this many decimals (3 for means and shares, 4
    /// for energy and hours, 0 for counts).
    decimals: u32,
    period: String,
    timezone: String,
    /// The range computed, widened to whole periods (RFC 3339).
    from: String,
    to: String,
    #[schema(value_type = Object)]
    target: Option<Value>,
    /// `period_start` (RFC 3339), `sensor` (null for the city), `value`, and the
    /// indicator's own fields.
    #[schema(value_type = Vec<Object>)]
    rows: Vec<Value>,
    /// `self`, and `next` while sensor rows have more pages.
    #[schema(value_type = Vec<Object>)]
    links: Vec<crate::geo::Link>,
}

/// One indicator by day, month or year: the city's rows, or each sensor's by pages.
#[utoipa::path(get, path = "/api/v1/indicators/{id}", tag = "indicators", operation_id = "get_indicator",
    params(("id" = String, Path, description = "The indicator's id, e.g. pm10_exceedance_days"), IndicatorParams),
    responses((status = 200, description = "Rows", body = IndicatorRows,
               content((IndicatorRows = "application/json"), (String = "text/csv"))),
              (status = 400, description = "Bad parameter", body = ErrorBody),
              (status = 404, description = "No such indicator or sensor", body = ErrorBody),
              (status = 429, description = "The computation costs more of the client's rate limit than is left; retry after the Retry-After seconds", body = ErrorBody),
              (status = 503, description = "Other indicator computations take every slot, or the computation ran past the statement timeout; retry after the Retry-After seconds", body = ErrorBody)))]
pub async fn get(
    State(s): State<AppState>,
    Path(id): Path<String>,
    BaseUrl(base): BaseUrl,
    charge: Option<Extension<Charge>>,
    StrictQuery(p): StrictQuery<IndicatorParams>,
) -> ApiResult<Response> {
    let Some(indicator) = available(&s).into_iter().find(|i| i.id == id) else {
        return Err(ApiError::NotFound(format!(
            "no indicator {id:?}; see /api/v1/indicators"
        )));
    };
    let cfg = &s.settings.indicators;
    let tz = cfg.tz().map_err(ApiError::Internal)?;
    let period = match p.period.as_deref() {
        None => indicator.default_period,
        Some(x) => Period::parse(x)
            .ok_or_else(|| ApiError::BadRequest(format!("period {x:?}: use day, month or year")))?,
    };
    let csv = match p.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(x) => {
            return Err(ApiError::BadRequest(format!(
                "format {x:?}: use json or csv"
            )))
        }
    };
    let by_stream = match p.by.as_deref() {
        None => false,
        Some("stream") => true,
        Some(x) => return Err(ApiError::BadRequest(format!("by {x:?}: use stream"))),
    };
    let per_sensor = match p.rows.as_deref() {
        None => p.sensor.is_some(),
        Some("city") if p.sensor.is_some() => {
            return Err(ApiError::BadRequest(
                "sensor= asks for that sensor's rows; leave out rows=city".into(),
            ))
        }
        Some("city") => false,
        Some("sensors") => true,
        Some(x) => {
            return Err(ApiError::BadRequest(format!(
                "rows {x:?}: use city or sensors"
            )))
        }
    };
    if per_sensor && by_stream {
        return Err(ApiError::BadRequest(
            "by=stream adds city rows; it does not apply to sensor rows".into(),
        ));
    }
    let limit = p.limit.unwrap_or(PAGE_DEFAULT);
    if !(1..=PAGE_MAX).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit {limit}: from 1 to {PAGE_MAX} sensors a page"
        )));
    }
    if !per_sensor && (p.limit.is_some() || p.cursor.is_some()) {
        return Err(ApiError::BadRequest(
            "limit and cursor page sensor rows: add rows=sensors".into(),
        ));
    }
    let today = Utc::now().with_timezone(&tz).date_naive();
    let to = match &p.to {
        Some(v) => parse_day("to", v, tz)?,
        None => ind::next_period(period, ind::period_start(period, today)),
    };
    let to = if ind::period_start(period, to) == to {
        to
    } else {
        ind::next_period(period, ind::period_start(period, to))
    };
    let from = match &p.from {
        Some(v) => parse_day("from", v, tz)?,
        None => match period {
            Period::Day => to - Duration::days(31),
            Period::Month => to.checked_sub_months(chrono::Months::new(12)).unwrap_or(to),
            Period::Year => NaiveDate::from_ymd_opt(to.year() - 5, 1, 1).unwrap_or(to),
        },
    };
    let from = ind::period_start(period, from);
    if from >= to {
        return Err(ApiError::BadRequest("from must be before to".into()));
    }
    let max_days = match period {
        Period::Day => 1100,
        Period::Month => 366 * 20,
        Period::Year => 366 * 100,
    };
    if (to - from).num_days() > max_days {
        return Err(ApiError::BadRequest(format!(
            "at most {max_days} days by {}; ask for a coarser period or a shorter range",
            period.as_str()
        )));
    }
    let store = &s.reader()?;
    if let Some(sensor) = &p.sensor {
        match cityhub_store::query::sensor_key(store, sensor).await? {
            Some((_, k)) if k == indicator.kind => {}
            Some((_, k)) => {
                return Err(ApiError::BadRequest(format!(
                    "sensor {sensor:?} is a {k}; {id} is about {}",
                    indicator.kind
                )))
            }
            None => return Err(ApiError::NotFound(format!("no sensor {sensor:?}"))),
        }
    }
    // The sensors whose rows are asked for: one, or a page (one more to know whether
    // another page follows).
    let (sensors, next) = match (&p.sensor, per_sensor) {
        (Some(one), _) => (Some(vec![one.clone()]), None),
        (None, true) => {
            let mut page = ind::sensor_page(
                store,
                indicator.kind,
                p.cursor.as_deref(),
                i64::from(limit) + 1,
            )
            .await?;
            let next = (page.len() > limit as usize).then(|| {
                page.truncate(limit as usize);
                page.last().cloned().unwrap_or_default()
            });
            (Some(page), next)
        }
        (None, false) => (None, None),
    };
    let q = IndicatorQuery {
        sensors,
        from,
        to,
        period,
        by_stream,
    };
    let key = (indicator.id, q);
    let rows = match s.indicator_cache.get(&key).await {
        Some(rows) => rows,
        None => {
            let q = &key.1;
            // The price of the work: sensor-days read, beyond the request already paid.
            let sensors_read = match &q.sensors {
                Some(v) => v.len() as u64,
                None => ind::sensor_count(store, indicator.kind).await?,
            };
            let sensor_days = sensors_read * (to - from).num_days().max(1) as u64;
            let requests = sensor_days.div_ceil(SENSOR_DAYS_PER_REQUEST);
            if let Some(Extension(c)) = &charge {
                c.take(requests).map_err(|wait| ApiError::TooManyRequests {
                    wait_s: wait,
                    what: format!("this computation reads {sensor_days} sensor-days, {requests} requests' worth of this address's rate limit"),
                })?;
            }
            let _slot = tokio::time::timeout(SLOT_WAIT, s.indicator_slots.clone().acquire_owned())
                .await
                .ok()
                .and_then(Result::ok)
                .ok_or_else(|| {
                    ApiError::Busy(format!(
                        "{MAX_CONCURRENT} indicator computations are running; try again shortly"
                    ))
                })?;
            let rows = Arc::new(ind::compute(store, &s.catalog, cfg, indicator, q).await?);
            // Finished days only: today's rows still change.
            if to <= today {
                s.indicator_cache.put(key.clone(), rows.clone()).await;
            }
            rows
        }
    };
    let stamp = |d: NaiveDate| cityhub_core::time::rfc3339(ind::local_instant(tz, d, 0));
    let links = page_links(&base, indicator.id, &p, limit, per_sensor, next.as_deref());
    if csv {
        return Ok(to_csv(indicator, &rows, &stamp, &links));
    }
    Ok(Json(IndicatorRows {
        indicator: indicator.id.into(),
        unit: indicator.unit.into(),
        decimals: indicator.compute.decimals(),
        period: period.as_str().into(),
        timezone: cfg.timezone.clone(),
        from: stamp(from),
        to: stamp(to),
        target: indicator.target.map(|t| json!(t)),
        rows: rows.iter().map(|r| row_json(r, &stamp)).collect(),
        links,
    })
    .into_response())
}

/// `self`, and `next` (a cursor after the page's last sensor) when more sensors follow.
fn page_links(
    base: &str,
    id: &str,
    p: &IndicatorParams,
    limit: u32,
    per_sensor: bool,
    next: Option<&str>,
) -> Vec<crate::geo::Link> {
    let mut params: Vec<String> = [
        ("rows", p.rows.as_deref()),
        ("sensor", p.sensor.as_deref()),
        ("from", p.from.as_deref()),
        ("to", p.to.as_deref()),
        ("period", p.period.as_deref()),
        ("format", p.format.as_deref()),
        ("by", p.by.as_deref()),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| format!("{k}={}", enc(v))))
    .collect();
    if per_sensor && p.sensor.is_none() {
        params.push(format!("limit={limit}"));
    }
    let path = format!("{base}/api/v1/indicators/{id}");
    let with = |extra: Option<String>| {
        let all: Vec<String> = params.iter().cloned().chain(extra).collect();
        if all.is_empty() {
            path.clone()
        } else {
            format!("{path}?{}", all.join("&"))
        }
    };
    let media = if p.format.as_deref() == Some("csv") {
        "text/csv"
    } else {
        "application/json"
    };
    let mut links = vec![crate::geo::Link::new(
        "self",
        with(p.cursor.as_deref().map(|c| format!("cursor={}", enc(c)))),
        media,
        "",
    )];
    if let Some(after) = next {
        links.push(crate::geo::Link::new(
            "next",
            with(Some(format!("cursor={}", enc(after)))),
            media,
            "next page of sensors",
        ));
    }
    links
}

fn row_json(r: &IndicatorRow, stamp: &dyn Fn(NaiveDate) -> String) -> Value {
    let mut m = Map::new();
    m.insert("period_start".into(), json!(stamp(r.period_start)));
    m.insert("sensor".into(), json!(r.sensor));
    m.insert("value".into(), json!(r.value));
    for (k, v) in &r.extra {
        m.insert(k.clone(), v.clone());
    }
    Value::Object(m)
}

/// `period_start,sensor,value,unit` and the indicator's own fields, one row each.
fn to_csv(
    i: &Indicator,
    rows: &[IndicatorRow],
    stamp: &dyn Fn(NaiveDate) -> String,
    links: &[crate::geo::Link],
) -> Response {
    let mut extra: Vec<&String> = rows.iter().flat_map(|r| r.extra.keys()).collect();
    extra.sort();
    extra.dedup();
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    let mut head = vec!["period_start", "sensor", "value", "unit"];
    head.extend(extra.iter().map(|s| s.as_str()));
    let _ = w.write_record(&head);
    for r in rows {
        let mut rec = vec![
            stamp(r.period_start),
            r.sensor.clone().unwrap_or_default(),
            r.value.map(|v| v.to_string()).unwrap_or_default(),
            i.unit.to_owned(),
        ];
        for k in &extra {
            rec.push(match r.extra.get(*k) {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
            });
        }
        let _ = w.write_record(&rec);
    }
    let body = w.into_inner().unwrap_or_default();
    let mut r = (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}.csv\"", i.id),
            ),
        ],
        body,
    )
        .into_response();
    // A CSV has no place for links: the next page goes in a Link header (RFC 8288).
    if let Some(next) = links.iter().find(|l| l.rel == "next") {
        if let Ok(v) = header::HeaderValue::from_str(&format!("<{}>; rel=\"next\"", next.href)) {
            r.headers_mut().insert(header::LINK, v);
        }
    }
    r
}
