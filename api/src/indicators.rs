//! The mandate's indicators over HTTP: `GET /api/v1/indicators` lists them with
//! their plan line and SDG targets; `GET /api/v1/indicators/{id}` computes one
//! (per sensor and for the city, by day, month or year) as JSON or CSV.

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::params::{parse_time, BaseUrl, StrictQuery};
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{Datelike, Duration, NaiveDate, Utc};
use cityhub_core::indicators::{Indicator, Period, INDICATORS};
use cityhub_store::indicators::{self as ind, IndicatorQuery, IndicatorRow};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use utoipa::{IntoParams, ToSchema};

/// Indicator computations a hub runs at once; a request that finds them all taken
/// for [`SLOT_WAIT`] is answered 503 with Retry-After, and the pool keeps its other
/// connections for listings, readings and readiness.
pub const MAX_CONCURRENT: usize = 2;
const SLOT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

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
    /// One sensor's rows only (no city rows).
    sensor: Option<String>,
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
}

/// One indicator by day, month or year, per sensor and for the city.
#[utoipa::path(get, path = "/api/v1/indicators/{id}", tag = "indicators", operation_id = "get_indicator",
    params(("id" = String, Path, description = "The indicator's id, e.g. pm10_exceedance_days"), IndicatorParams),
    responses((status = 200, description = "Rows", body = IndicatorRows,
               content((IndicatorRows = "application/json"), (String = "text/csv"))),
              (status = 400, description = "Bad parameter", body = ErrorBody),
              (status = 404, description = "No such indicator or sensor", body = ErrorBody),
              (status = 503, description = "Other indicator computations take every slot; retry after the Retry-After seconds", body = ErrorBody)))]
pub async fn get(
    State(s): State<AppState>,
    Path(id): Path<String>,
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
    let store = s.store.get().ok_or(ApiError::NotReady)?;
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
    let _slot = tokio::time::timeout(SLOT_WAIT, s.indicator_slots.clone().acquire_owned())
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(|| {
            ApiError::Busy(format!(
                "{MAX_CONCURRENT} indicator computations are running; try again shortly"
            ))
        })?;
    let q = IndicatorQuery {
        sensor: p.sensor.clone(),
        from,
        to,
        period,
        by_stream,
    };
    let rows = ind::compute(store, &s.catalog, cfg, indicator, &q).await?;
    let stamp = |d: NaiveDate| cityhub_core::time::rfc3339(ind::local_instant(tz, d, 0));
    if csv {
        return Ok(to_csv(indicator, &rows, &stamp));
    }
    Ok(Json(IndicatorRows {
        indicator: indicator.id.into(),
        unit: indicator.unit.into(),
        period: period.as_str().into(),
        timezone: cfg.timezone.clone(),
        from: stamp(from),
        to: stamp(to),
        target: indicator.target.map(|t| json!(t)),
        rows: rows.iter().map(|r| row_json(r, &stamp)).collect(),
    })
    .into_response())
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
fn to_csv(i: &Indicator, rows: &[IndicatorRow], stamp: &dyn Fn(NaiveDate) -> String) -> Response {
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
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}.csv\"", i.id),
            ),
        ],
        body,
    )
        .into_response()
}
