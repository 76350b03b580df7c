//! `/feeds/{kind}.geojson` and `/feeds/{kind}.csv`: the open-data downloads, one
//! row per sensor with its latest values. Columns follow the kind catalogue, so
//! they stay the same whatever the sensors sent.

use crate::cache::send_doc;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::geo::{self, flat_feature, FeatureCollection, GEOJSON};
use crate::params::{known_kind, NoParams, StrictQuery};
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::Response;
use cityhub_core::kinds::PropertyDef;
use cityhub_store::query::{self, SensorFilter, SensorView};
use serde_json::{Map, Value};

/// A kind's columns beyond the fixed ones: its metrics (name, unit), then the
/// registry attributes it declares, each of one type.
#[derive(Debug, Clone, Default)]
pub struct Columns {
    pub metrics: Vec<(String, String)>,
    pub properties: Vec<(String, PropertyDef)>,
}

impl Columns {
    pub fn of(s: &AppState, kind: &str) -> Self {
        s.catalog
            .get(kind)
            .map(|k| Self {
                metrics: k
                    .metrics
                    .values()
                    .map(|m| (m.name.to_string(), m.unit.clone()))
                    .collect(),
                properties: k
                    .def
                    .properties
                    .iter()
                    .map(|(n, d)| (n.clone(), d.clone()))
                    .collect(),
            })
            .unwrap_or_default()
    }

    /// Units by column, for a feed's `units` member.
    pub fn units(&self) -> Map<String, Value> {
        self.metrics
            .iter()
            .map(|(m, u)| (m.clone(), Value::String(u.clone())))
            .chain(
                self.properties
                    .iter()
                    .filter_map(|(n, d)| Some((n.clone(), Value::String(d.unit.clone()?)))),
            )
            .collect()
    }
}

pub async fn kind_sensors(s: &AppState, kind: &str) -> ApiResult<Vec<SensorView>> {
    Ok(query::sensors(
        s.store()?,
        &SensorFilter {
            kinds: vec![kind.to_owned()],
            ..Default::default()
        },
    )
    .await?)
}

/// Latest values of every sensor of a kind, as GeoJSON or CSV (by the file extension).
#[utoipa::path(get, path = "/feeds/{file}", tag = "open data",
    params(("file" = String, Path, description = "`<kind>.geojson` or `<kind>.csv`, e.g. `waste_bin.csv`", example = "waste_bin.geojson")),
    responses(
        (status = 200, description = "The feed; CSV headers carry units, e.g. `fill_level [%]`",
         content((FeatureCollection = "application/geo+json"), (String = "text/csv"))),
        (status = 304, description = "Not modified (ETag / Last-Modified)"),
        (status = 404, description = "Unknown kind or format", body = ErrorBody)))]
pub async fn feed(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(file): Path<String>,
    _q: StrictQuery<NoParams>,
) -> ApiResult<Response> {
    let (kind, ext) = file.rsplit_once('.').ok_or_else(|| {
        ApiError::NotFound(format!(
            "no feed {file:?}: use <kind>.geojson or <kind>.csv"
        ))
    })?;
    if ext != "geojson" && ext != "csv" {
        return Err(ApiError::NotFound(format!(
            "no feed format {ext:?}: use <kind>.geojson or <kind>.csv"
        )));
    }
    known_kind(&s, kind)?;
    let store = s.store()?;
    let doc = s
        .snapshot
        .feed(store, kind, ext, || async {
            let columns = Columns::of(&s, kind);
            let rows = kind_sensors(&s, kind).await?;
            let modified = geo::last_modified(&rows);
            let body = if ext == "geojson" {
                let mut fc = FeatureCollection::new(
                    rows.iter().map(|r| flat_feature(r, &columns)).collect(),
                );
                fc.units = columns.units();
                crate::cache::to_json(&fc)?
            } else {
                csv_feed(&rows, &columns)?
            };
            Ok((body, modified))
        })
        .await?;
    let content_type = if ext == "geojson" {
        GEOJSON
    } else {
        "text/csv; charset=utf-8"
    };
    let disposition = (
        header::CONTENT_DISPOSITION,
        format!("inline; filename=\"{kind}.{ext}\""),
    );
    send_doc(&headers, content_type, &doc, &[disposition]).await
}

/// `sensor_id,name,kind,lon,lat,last_seen,<metric> [<unit>],<metric>_time,...,<property> [<unit>],...`
pub fn csv_feed(rows: &[SensorView], columns: &Columns) -> ApiResult<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut head: Vec<String> = ["sensor_id", "name", "kind", "lon", "lat", "last_seen"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for (m, u) in &columns.metrics {
        head.push(format!("{m} [{u}]"));
        head.push(format!("{m}_time"));
    }
    for (n, d) in &columns.properties {
        head.push(match &d.unit {
            Some(u) => format!("{n} [{u}]"),
            None => n.clone(),
        });
    }
    let err = |e: csv::Error| ApiError::Internal(format!("writing CSV: {e}"));
    w.write_record(&head).map_err(err)?;
    let opt = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
    for r in rows {
        let mut rec = vec![
            r.id.clone(),
            r.name.clone().unwrap_or_default(),
            r.kind.clone(),
            opt(r.lon),
            opt(r.lat),
            r.last_seen.map(geo::rfc3339).unwrap_or_default(),
        ];
        for (m, _) in &columns.metrics {
            let l = r.latest.iter().find(|l| &l.metric == m);
            rec.push(opt(l.map(|l| l.value)));
            rec.push(l.map(|l| geo::rfc3339(l.time)).unwrap_or_default());
        }
        for (n, d) in &columns.properties {
            rec.push(match r.properties.get(n).and_then(|v| d.ty.fit(v)) {
                Some(Value::String(t)) => t,
                Some(v) => v.to_string(),
                None => String::new(),
            });
        }
        w.write_record(&rec).map_err(err)?;
    }
    w.into_inner()
        .map_err(|e| ApiError::Internal(format!("writing CSV: {e}")))
}
