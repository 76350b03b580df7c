//! OGC API - Features - Part 1: Core (conformance classes core, geojson, oas30)
//! under `/ogc`: one collection per sensor kind, one feature per sensor with its
//! latest values as flat properties. Readable by GDAL's OAPIF driver and QGIS.

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::feeds::Columns;
use crate::geo::{self, flat_feature, Feature, FeatureCollection, Link, GEOJSON};
use crate::params::known_kind;
use crate::params::{enc, parse_bbox, parse_datetime, BaseUrl, StrictQuery};
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use cityhub_store::query::{self, SensorFilter};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};

const CRS84: &str = "http://www.opengis.net/def/crs/OGC/1.3/CRS84";
const GREGORIAN: &str = "http://www.opengis.net/def/uom/ISO-8601/0/Gregorian";
/// Items per page when the request names no `limit`.
pub const DEFAULT_LIMIT: u32 = 10;

pub const CONFORMANCE: [&str; 3] = [
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/oas30",
];

#[derive(Debug, Serialize, ToSchema)]
pub struct LandingPage {
    pub title: String,
    pub description: String,
    pub links: Vec<Link>,
}

/// Landing page of the OGC API.
#[utoipa::path(get, path = "/ogc", tag = "OGC API - Features",
    params(OgcParams),
    responses((status = 200, description = "Landing page", body = LandingPage),
              (status = 400, description = "Unknown parameter", body = ErrorBody)))]
pub async fn landing(
    State(s): State<AppState>,
    base: BaseUrl,
    _q: StrictQuery<OgcParams>,
) -> Json<LandingPage> {
    let b = &base.0;
    Json(LandingPage {
        title: s.settings.catalog.title_en.clone(),
        description: s.settings.catalog.description_en.clone(),
        links: vec![
            Link::new(
                "self",
                format!("{b}/ogc"),
                "application/json",
                "This document",
            ),
            Link::new(
                "service-desc",
                format!("{b}/openapi.json"),
                "application/vnd.oai.openapi+json;version=3.0",
                "The API definition",
            ),
            Link::new(
                "service-doc",
                format!("{b}/api"),
                "text/html",
                "The API documentation",
            ),
            Link::new(
                "conformance",
                format!("{b}/ogc/conformance"),
                "application/json",
                "Conformance classes implemented",
            ),
            Link::new(
                "data",
                format!("{b}/ogc/collections"),
                "application/json",
                "Collections",
            ),
        ],
    })
}

/// `f` is the one parameter OGC documents may take besides their own.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct OgcParams {
    /// Output format: `json` (the only one).
    #[allow(dead_code)] // accepted so links with `f=json` work; there is one format
    #[param(inline)]
    f: Option<JsonFormat>,
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JsonFormat {
    Json,
    Geojson,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Conformance {
    pub conforms_to: Vec<String>,
}

/// The conformance classes this server implements.
#[utoipa::path(get, path = "/ogc/conformance", tag = "OGC API - Features", params(OgcParams),
    responses((status = 200, description = "Conformance declaration", body = Conformance),
              (status = 400, description = "Unknown parameter", body = ErrorBody)))]
pub async fn conformance(_q: StrictQuery<OgcParams>) -> Json<Conformance> {
    Json(Conformance {
        conforms_to: CONFORMANCE.iter().map(|s| s.to_string()).collect(),
    })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SpatialExtent {
    pub bbox: Vec<[f64; 4]>,
    pub crs: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TemporalExtent {
    /// `[start, end]`; null is open.
    pub interval: Vec<[Option<String>; 2]>,
    pub trs: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Extent {
    pub spatial: SpatialExtent,
    pub temporal: TemporalExtent,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Collection {
    pub id: String,
    pub title: String,
    pub description: String,
    pub links: Vec<Link>,
    pub extent: Extent,
    pub item_type: String,
    pub crs: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Collections {
    pub links: Vec<Link>,
    pub collections: Vec<Collection>,
}

fn collection(s: &AppState, b: &str, kind: &str, extent: Option<&query::KindExtent>) -> Collection {
    let k = s.catalog.get(kind);
    let title = k.map(|k| k.def.title.clone()).unwrap_or_default();
    let units: Vec<String> = Columns::of(s, kind)
        .metrics
        .iter()
        .map(|(m, u)| format!("{m} ({u})"))
        .collect();
    let description = format!(
        "{} One feature per sensor with its latest value and time of each metric: {}.",
        k.and_then(|k| k.def.description.clone())
            .unwrap_or_else(|| title.clone()),
        units.join(", ")
    );
    let bbox = extent
        .and_then(|e| e.bbox)
        .map(|b| [b.min_lon, b.min_lat, b.max_lon, b.max_lat])
        .unwrap_or([-180.0, -90.0, 180.0, 90.0]);
    let interval = [
        extent.and_then(|e| e.first).map(geo::rfc3339),
        extent.and_then(|e| e.last).map(geo::rfc3339),
    ];
    Collection {
        id: kind.to_owned(),
        title,
        description,
        links: vec![
            Link::new(
                "self",
                format!("{b}/ogc/collections/{kind}"),
                "application/json",
                "This collection",
            ),
            Link::new(
                "items",
                format!("{b}/ogc/collections/{kind}/items"),
                GEOJSON,
                "Sensors",
            ),
            // Relation types are case-insensitive (RFC 8288); GDAL up to 3.6 (Debian
            // 12's) matches only this spelling, later versions any.
            Link::new(
                "describedBy",
                format!("{b}/ogc/collections/{kind}/schema"),
                SCHEMA_JSON,
                "JSON Schema of the features (one type per property)",
            ),
            Link::new(
                "related",
                format!("{b}/api/v1/kinds"),
                "application/json",
                "Kind catalogue (metrics, units, ranges)",
            ),
            Link::new(
                "enclosure",
                format!("{b}/feeds/{kind}.csv"),
                "text/csv",
                "Download as CSV",
            ),
        ],
        extent: Extent {
            spatial: SpatialExtent {
                bbox: vec![bbox],
                crs: CRS84.into(),
            },
            temporal: TemporalExtent {
                interval: vec![interval],
                trs: GREGORIAN.into(),
            },
        },
        item_type: "feature".into(),
        crs: vec![CRS84.into()],
    }
}

/// The collections: one per sensor kind.
#[utoipa::path(get, path = "/ogc/collections", tag = "OGC API - Features", params(OgcParams),
    responses((status = 200, description = "Collections", body = Collections),
              (status = 400, description = "Unknown parameter", body = ErrorBody)))]
pub async fn collections(
    State(s): State<AppState>,
    base: BaseUrl,
    _q: StrictQuery<OgcParams>,
) -> ApiResult<Json<Collections>> {
    let extents = query::kind_extents(&s.reader()?).await?;
    let b = &base.0;
    Ok(Json(Collections {
        links: vec![Link::new(
            "self",
            format!("{b}/ogc/collections"),
            "application/json",
            "",
        )],
        collections: s
            .kind_names()
            .iter()
            .map(|k| collection(&s, b, k, extents.get(k)))
            .collect(),
    }))
}

/// One collection.
#[utoipa::path(get, path = "/ogc/collections/{collectionId}", tag = "OGC API - Features",
    params(("collectionId" = String, Path, description = "A sensor kind"), OgcParams),
    responses((status = 200, description = "Collection", body = Collection),
              (status = 404, description = "No such collection", body = ErrorBody)))]
pub async fn one_collection(
    State(s): State<AppState>,
    base: BaseUrl,
    Path(kind): Path<String>,
    _q: StrictQuery<OgcParams>,
) -> ApiResult<Json<Collection>> {
    known_kind(&s, &kind)?;
    let extents = query::kind_extents(&s.reader()?).await?;
    Ok(Json(collection(&s, &base.0, &kind, extents.get(&kind))))
}

const SCHEMA_JSON: &str = "application/schema+json";

/// The collection's features as a JSON Schema (the collection's `describedBy`):
/// GDAL takes each column's type from it, so a column that is null on the first
/// page still has its type.
#[utoipa::path(get, path = "/ogc/collections/{collectionId}/schema", tag = "OGC API - Features",
    params(("collectionId" = String, Path, description = "A sensor kind"), OgcParams),
    responses((status = 200, description = "JSON Schema (draft 2020-12) of a feature's properties",
               body = Object, content_type = "application/schema+json"),
              (status = 400, description = "Unknown parameter", body = ErrorBody),
              (status = 404, description = "No such collection", body = ErrorBody)))]
pub async fn schema(
    State(s): State<AppState>,
    base: BaseUrl,
    Path(kind): Path<String>,
    _q: StrictQuery<OgcParams>,
) -> ApiResult<Response> {
    known_kind(&s, &kind)?;
    let columns = Columns::of(&s, &kind);
    // One type per property, as GIS clients read it (GDAL takes no list of types);
    // a property with no value is null in the items, as the description says.
    let mut props = serde_json::Map::new();
    let mut add = |name: String, mut p: Value| {
        p["x-ogc-property-seq"] = json!(props.len() + 1);
        props.insert(name, p);
    };
    add(
        "sensor_id".into(),
        json!({ "type": "string", "x-ogc-role": "id" }),
    );
    add("name".into(), json!({ "type": "string" }));
    add("kind".into(), json!({ "type": "string" }));
    let time = || json!({ "type": "string", "format": "date-time" });
    add("last_seen".into(), time());
    for (m, unit) in &columns.metrics {
        add(
            m.clone(),
            json!({ "type": "number", "x-ogc-unit": unit, "title": m }),
        );
        add(format!("{m}_time"), time());
    }
    for (n, d) in &columns.properties {
        let mut p = json!({ "type": d.ty.json_type() });
        if let Some(u) = &d.unit {
            p["x-ogc-unit"] = json!(u);
        }
        if let Some(t) = &d.description {
            p["description"] = json!(t);
        }
        add(n.clone(), p);
    }
    let b = &base.0;
    let body = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": format!("{b}/ogc/collections/{kind}/schema"),
        "title": s.catalog.get(&kind).map(|k| k.def.title.clone()),
        "description": "A GeoJSON Feature per sensor. Each property has one type; a \
            property with no value (a metric never reported, an attribute not registered) is null.",
        "type": "object",
        "required": ["type", "id", "geometry", "properties"],
        "properties": {
            "type": { "type": "string", "enum": ["Feature"] },
            "id": { "type": "string" },
            "geometry": { "type": "object", "description": "A GeoJSON Point (CRS84), or null when unplaced" },
            "properties": {
                "type": "object",
                "required": ["sensor_id", "kind"],
                "properties": props,
            },
            "links": { "type": "array" },
        },
    });
    Ok((
        [(header::CONTENT_TYPE, SCHEMA_JSON)],
        crate::cache::to_json(&body)?,
    )
        .into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ItemsParams {
    /// Items per page: at most `http.max_page` (larger values are capped).
    #[param(minimum = 1)]
    limit: Option<u64>,
    /// Items to skip (the `next` link carries it).
    #[param(minimum = 0, maximum = 4_611_686_018_427_387_903_i64)]
    offset: Option<u64>,
    /// `minLon,minLat,maxLon,maxLat` in CRS84.
    bbox: Option<String>,
    /// An instant or an interval (`start/end`, `..` for open): sensors whose reporting
    /// period (first to last report) meets it.
    datetime: Option<String>,
    /// Output format: `json` or `geojson` (both GeoJSON).
    #[allow(dead_code)] // accepted so links with `f=json` work; there is one format
    #[param(inline)]
    f: Option<JsonFormat>,
}

/// The sensors of a kind, paged.
#[utoipa::path(get, path = "/ogc/collections/{collectionId}/items", tag = "OGC API - Features",
    params(("collectionId" = String, Path, description = "A sensor kind"), ItemsParams),
    responses(
        (status = 200, description = "GeoJSON FeatureCollection", body = FeatureCollection, content_type = "application/geo+json"),
        (status = 400, description = "Bad or unknown parameter", body = ErrorBody),
        (status = 404, description = "No such collection", body = ErrorBody)))]
pub async fn items(
    State(s): State<AppState>,
    base: BaseUrl,
    Path(kind): Path<String>,
    StrictQuery(p): StrictQuery<ItemsParams>,
) -> ApiResult<Response> {
    known_kind(&s, &kind)?;
    let max = u64::from(s.settings.http.max_page.get());
    let limit = match p.limit {
        Some(0) => return Err(ApiError::BadRequest("limit must be at least 1".into())),
        Some(l) => l.min(max),
        None => u64::from(DEFAULT_LIMIT).min(max),
    };
    let offset = p.offset.unwrap_or(0);
    if offset > i64::MAX as u64 / 2 {
        return Err(ApiError::BadRequest("offset is too large".into()));
    }
    let bbox = p.bbox.as_deref().map(parse_bbox).transpose()?;
    let (active_from, active_to) = match p.datetime.as_deref() {
        Some(d) => parse_datetime(d)?,
        None => (None, None),
    };
    let filter = SensorFilter {
        kinds: vec![kind.clone()],
        bbox,
        active_from,
        active_to,
        limit: Some(limit as i64),
        offset: offset as i64,
        ..Default::default()
    };
    let store = &s.reader()?;
    let matched = query::count_sensors(store, &filter).await?;
    let rows = query::sensors(store, &filter).await?;
    let columns = Columns::of(&s, &kind);
    let mut fc = FeatureCollection::new(rows.iter().map(|r| flat_feature(r, &columns)).collect());
    fc.number_matched = Some(matched);
    fc.time_stamp = Some(chrono::Utc::now());
    let b = &base.0;
    let path = format!("{b}/ogc/collections/{kind}/items");
    let mut q = vec![format!("limit={limit}")];
    if let Some(bb) = &p.bbox {
        q.push(format!("bbox={}", enc(bb)));
    }
    if let Some(d) = &p.datetime {
        q.push(format!("datetime={}", enc(d)));
    }
    let page = |off: u64| {
        s.pages
            .sign(&format!("{path}?{}&offset={off}", q.join("&")))
    };
    fc.links
        .push(Link::new("self", page(offset), GEOJSON, "This page"));
    if offset + (rows.len() as u64) < matched as u64 {
        fc.links.push(Link::new(
            "next",
            page(offset + limit),
            GEOJSON,
            "Next page",
        ));
    }
    if offset > 0 {
        fc.links.push(Link::new(
            "prev",
            page(offset.saturating_sub(limit)),
            GEOJSON,
            "Previous page",
        ));
    }
    fc.links.push(Link::new(
        "collection",
        format!("{b}/ogc/collections/{kind}"),
        "application/json",
        "The collection",
    ));
    Ok((
        [(header::CONTENT_TYPE, GEOJSON)],
        crate::cache::to_json(&fc)?,
    )
        .into_response())
}

/// One sensor of a kind.
#[utoipa::path(get, path = "/ogc/collections/{collectionId}/items/{featureId}", tag = "OGC API - Features",
    params(("collectionId" = String, Path, description = "A sensor kind"),
           ("featureId" = String, Path, description = "A sensor id"), OgcParams),
    responses(
        (status = 200, description = "GeoJSON Feature", body = Feature, content_type = "application/geo+json"),
        (status = 404, description = "No such collection or feature", body = ErrorBody)))]
pub async fn item(
    State(s): State<AppState>,
    base: BaseUrl,
    Path((kind, id)): Path<(String, String)>,
    _q: StrictQuery<OgcParams>,
) -> ApiResult<Response> {
    known_kind(&s, &kind)?;
    let rows = query::sensors(
        &s.reader()?,
        &SensorFilter {
            kinds: vec![kind.clone()],
            ids: Some(vec![id.clone()]),
            ..Default::default()
        },
    )
    .await?;
    let Some(r) = rows.first() else {
        return Err(ApiError::NotFound(format!(
            "no feature {id:?} in collection {kind}"
        )));
    };
    let f = flat_feature(r, &Columns::of(&s, &kind));
    let b = &base.0;
    let mut v = serde_json::to_value(&f).map_err(|e| ApiError::Internal(e.to_string()))?;
    if let Value::Object(m) = &mut v {
        let links = vec![
            Link::new(
                "self",
                format!("{b}/ogc/collections/{kind}/items/{}", enc(&id)),
                GEOJSON,
                "This feature",
            ),
            Link::new(
                "collection",
                format!("{b}/ogc/collections/{kind}"),
                "application/json",
                "The collection",
            ),
        ];
        m.insert(
            "links".into(),
            serde_json::to_value(links).unwrap_or_default(),
        );
    }
    Ok((
        [(header::CONTENT_TYPE, GEOJSON)],
        crate::cache::to_json(&v)?,
    )
        .into_response())
}
