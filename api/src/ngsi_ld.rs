//! NGSI-LD (ETSI GS CIM 009 v1.7), read-only, at `/ngsi-ld/v1`: each sensor of a kind
//! with an `ngsi_ld` mapping is an entity of its Smart Data Model (`WasteContainer`,
//! `Streetlight`, ...) and a `Device`, made from the registry and the latest values
//! on each request; the temporal API reads the readings and the rollups. Nothing is
//! copied: an entity is what the hub holds at the moment it is asked for.

use crate::error::ApiError;
use crate::AppState;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use cityhub_core::kinds::{Catalog, Kind};
use cityhub_core::ngsi_ld::{
    period_seconds, regex, GeoQuery, ModelDef, Source, CORE_CONTEXT, DEVICE_CONTEXT, Q,
};
use cityhub_store::query::{self, Bbox, Bucket, ReadingsQuery, SensorFilter, SensorView};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

pub mod subscriptions;

pub const PREFIX: &str = "/ngsi-ld/v1";
/// The specification the API follows, as the catalogue names it.
pub const STANDARD: &str =
    "https://www.etsi.org/deliver/etsi_gs/CIM/001_099/009/01.07.01_60/gs_CIM009v010701p.pdf";
/// Entities a page holds unless `limit` says otherwise, and at most.
pub const DEFAULT_LIMIT: usize = 20;
pub const MAX_LIMIT: usize = 1_000;
/// Instances of one attribute a temporal answer holds at most.
pub const MAX_INSTANCES: usize = 1_000;
/// Periods of one aggregation at most.
const MAX_PERIODS: i64 = 10_000;
/// Sensors read from the database at a time while a query scans a kind.
const CHUNK: i64 = 2_000;
const DEVICE: &str = "Device";
const CONTEXT_REL: &str = "http://www.w3.org/ns/json-ld#context";

/// An NGSI-LD error answer (ProblemDetails, RFC 7807, with the NGSI-LD error types).
#[derive(Debug)]
pub struct Problem(StatusCode, &'static str, String);

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = json!({
            "type": format!("https://uri.etsi.org/ngsi-ld/errors/{}", self.1),
            "title": self.1,
            "detail": self.2,
        });
        (
            self.0,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response()
    }
}

impl From<ApiError> for Problem {
    fn from(e: ApiError) -> Self {
        let status = match &e {
            ApiError::Store(_) => e.into_response().status(),
            e => return problem_of(e),
        };
        // The cause is logged by ApiError's answer; the client learns only that it failed.
        Problem(
            status,
            "InternalError",
            "storage is unavailable; try again later".into(),
        )
    }
}

fn problem_of(e: &ApiError) -> Problem {
    let (status, kind) = match e {
        ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "BadRequestData"),
        ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "ResourceNotFound"),
        ApiError::NotAcceptable(_) => (StatusCode::NOT_ACCEPTABLE, "NotAcceptable"),
        ApiError::NotReady => (StatusCode::SERVICE_UNAVAILABLE, "InternalError"),
        ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "Unauthorized"),
        ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "Forbidden"),
        ApiError::Conflict(_) => (StatusCode::CONFLICT, "AlreadyExists"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
    };
    Problem(status, kind, e.to_string())
}

impl From<cityhub_store::StoreError> for Problem {
    fn from(e: cityhub_store::StoreError) -> Self {
        ApiError::Store(e).into()
    }
}

fn bad(m: impl Into<String>) -> Problem {
    Problem(StatusCode::BAD_REQUEST, "BadRequestData", m.into())
}

fn not_found(m: impl Into<String>) -> Problem {
    Problem(StatusCode::NOT_FOUND, "ResourceNotFound", m.into())
}

type Answer<T> = Result<T, Problem>;

/// How an answer is written: plain JSON with the @context in a `Link` header,
/// JSON-LD with it in the body, or GeoJSON.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Media {
    Json,
    JsonLd,
    GeoJson,
}

impl Media {
    fn of(h: &HeaderMap) -> Answer<Self> {
        let Some(accept) = h.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
            return Ok(Media::Json);
        };
        for m in accept.split(',') {
            let m = m.split(';').next().unwrap_or_default().trim();
            match m {
                "application/ld+json" => return Ok(Media::JsonLd),
                "application/json" | "application/*" | "*/*" | "" => return Ok(Media::Json),
                "application/geo+json" => return Ok(Media::GeoJson),
                _ => {}
            }
        }
        Err(Problem(
            StatusCode::NOT_ACCEPTABLE,
            "NotAcceptable",
            format!("Accept {accept:?}: this API answers application/json, application/ld+json or application/geo+json"),
        ))
    }

    fn content_type(self) -> &'static str {
        match self {
            Media::Json => "application/json",
            Media::JsonLd => "application/ld+json",
            Media::GeoJson => "application/geo+json",
        }
    }
}

/// The representation asked for with `options` or `format`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Format {
    Normalized,
    KeyValues,
    Concise,
}

/// A request's query string, in order, names repeated as given.
struct Params(Vec<(String, String)>);

impl Params {
    fn of(raw: Option<String>) -> Self {
        Params(
            url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }

    /// A comma-separated list parameter, empty items dropped.
    fn list(&self, k: &str) -> Option<Vec<String>> {
        self.get(k).map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
    }

    fn options(&self) -> Vec<String> {
        self.list("options").unwrap_or_default()
    }

    /// `count=true`, or `options=count` as some clients send it.
    fn count(&self) -> bool {
        self.get("count") == Some("true") || self.options().iter().any(|o| o == "count")
    }

    fn format(&self) -> Answer<Format> {
        let opts = self.options();
        let by_format = match self.get("format") {
            None => None,
            Some("normalized") => Some(Format::Normalized),
            Some("keyValues") | Some("simplified") => Some(Format::KeyValues),
            Some("concise") => Some(Format::Concise),
            Some(f) => {
                return Err(bad(format!(
                    "format {f:?} is not normalized, keyValues, simplified or concise"
                )))
            }
        };
        Ok(by_format.unwrap_or(
            if opts.iter().any(|o| o == "keyValues" || o == "simplified") {
                Format::KeyValues
            } else if opts.iter().any(|o| o == "concise") {
                Format::Concise
            } else {
                Format::Normalized
            },
        ))
    }

    fn usize(&self, k: &str, default: usize, max: usize) -> Answer<usize> {
        match self.get(k) {
            None => Ok(default),
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| *n <= max)
                .ok_or_else(|| {
                    bad(format!(
                        "{k} must be a whole number from 0 to {max}, got {v:?}"
                    ))
                }),
        }
    }
}

/// The id an entity of `ty` has for a sensor.
pub fn entity_id(ty: &str, sensor: &str) -> String {
    format!("urn:ngsi-ld:{ty}:{sensor}")
}

/// The type and sensor an entity id names.
fn parse_id(id: &str) -> Option<(&str, &str)> {
    let rest = id.strip_prefix("urn:ngsi-ld:")?;
    let (ty, sensor) = rest.split_once(':')?;
    cityhub_core::model::SensorId::parse(sensor).ok()?;
    Some((ty, sensor))
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn date_time(t: DateTime<Utc>) -> Value {
    json!({"@type": "DateTime", "@value": time(t)})
}

/// A scaled value without the float noise of the multiplication (0.42, not 0.42000000000000004).
fn scaled(v: f64, scale: f64) -> f64 {
    if scale == 1.0 {
        return v;
    }
    let x = v * scale;
    let p = 10f64.powi(9 - x.abs().log10().ceil().clamp(-300.0, 300.0) as i32);
    if p.is_finite() && p > 0.0 {
        (x * p).round() / p
    } else {
        x
    }
}

fn number(x: f64) -> Value {
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

/// One attribute of an entity, normalized, from the sensor as stored.
fn attribute(v: &SensorView, src: &Source) -> Option<Value> {
    let latest = |m: &str| v.latest.iter().find(|l| l.metric == m);
    Some(match src {
        Source::Metric {
            metric,
            scale,
            unit_code,
        } => {
            let l = latest(metric)?;
            let mut a = json!({"type": "Property", "value": number(scaled(l.value, *scale)), "observedAt": time(l.time)});
            if let Some(u) = unit_code {
                a["unitCode"] = json!(u);
            }
            a
        }
        Source::State {
            metric,
            above,
            states,
        } => {
            let l = latest(metric)?;
            let s = &states[usize::from(l.value > *above)];
            json!({"type": "Property", "value": s, "observedAt": time(l.time)})
        }
        Source::Property {
            name,
            default,
            values,
        } => {
            let p = v
                .properties
                .get(*name)
                .or_else(|| v.register.get(*name))
                .filter(|p| !p.is_null());
            let p = match p {
                Some(p) if !values.is_empty() => values.get(p.as_str()?)?,
                Some(p) => p,
                None => default.as_ref()?,
            };
            json!({"type": "Property", "value": p})
        }
        Source::Constant(c) => json!({"type": "Property", "value": c}),
        Source::TimeOf(m) => json!({"type": "Property", "value": date_time(latest(m)?.time)}),
    })
}

/// The entity a sensor is, normalized, without its @context: of its model, or
/// (`device`) the Device that observes it.
fn entity(v: &SensorView, model: &ModelDef, device: bool) -> Map<String, Value> {
    let own = entity_id(&model.entity_type, &v.id);
    let dev = entity_id(DEVICE, &v.id);
    let mut e = Map::new();
    e.insert("id".into(), json!(if device { &dev } else { &own }));
    e.insert(
        "type".into(),
        json!(if device { DEVICE } else { &model.entity_type }),
    );
    let defs = if device {
        &model.device_attributes
    } else {
        &model.attributes
    };
    for (name, def) in defs {
        // Checked when the catalogue was loaded.
        if let Some(a) = def.source().ok().and_then(|s| attribute(v, &s)) {
            e.insert(name.clone(), a);
        }
    }
    if let Some(n) = &v.name {
        e.insert("name".into(), json!({"type": "Property", "value": n}));
    }
    if let (Some(lon), Some(lat)) = (v.lon, v.lat) {
        e.insert(
            "location".into(),
            json!({"type": "GeoProperty", "value": {"type": "Point", "coordinates": [lon, lat]}}),
        );
    }
    if device {
        if !model.controlled_property.is_empty() {
            e.insert(
                "controlledProperty".into(),
                json!({"type": "Property", "value": model.controlled_property}),
            );
        }
        e.insert(
            "deviceCategory".into(),
            json!({"type": "Property", "value": ["sensor"]}),
        );
        e.insert(
            "controlledAsset".into(),
            json!({"type": "Relationship", "object": [own]}),
        );
        if let Some(t) = v.last_seen {
            e.insert(
                "dateLastValueReported".into(),
                json!({"type": "Property", "value": date_time(t)}),
            );
        }
    } else {
        let object = if model.ref_device_list {
            json!([dev])
        } else {
            json!(dev)
        };
        e.insert(
            "refDevice".into(),
            json!({"type": "Relationship", "object": object}),
        );
    }
    e
}

/// The value `q` compares at a path: an attribute's value (DateTimes as text), or
/// one of its sub-attributes (`observedAt`, `unitCode`).
fn value_at(e: &Map<String, Value>, path: &[String]) -> Option<Value> {
    let a = e.get(path.first()?)?;
    let v = match path.get(1) {
        None => match a.get("type").and_then(Value::as_str) {
            Some("Relationship") => a.get("object")?,
            _ => a.get("value")?,
        },
        Some(sub) => a.get(sub)?,
    };
    Some(match v.get("@value") {
        Some(t) => t.clone(),
        None => v.clone(),
    })
}

fn simplify(a: &Value) -> Value {
    match a.get("type").and_then(Value::as_str) {
        Some("Relationship") => a.get("object").cloned().unwrap_or(Value::Null),
        _ => {
            let v = a.get("value").cloned().unwrap_or(Value::Null);
            v.get("@value").cloned().unwrap_or(v)
        }
    }
}

fn concise(a: &Value) -> Value {
    let Some(o) = a.as_object() else {
        return a.clone();
    };
    let mut c: Map<String, Value> = o
        .iter()
        .filter(|(k, _)| *k != "type")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    match o.get("type").and_then(Value::as_str) {
        // A GeoJSON value is known by its own "type".
        Some("GeoProperty") if c.len() == 1 => c.remove("value").unwrap_or(Value::Null),
        Some("Property") if c.len() == 1 && !c["value"].is_object() => {
            c.remove("value").unwrap_or(Value::Null)
        }
        _ => Value::Object(c),
    }
}

/// An entity in the asked representation, with only `attrs` when given.
fn shape(mut e: Map<String, Value>, attrs: Option<&[String]>, f: Format) -> Map<String, Value> {
    if let Some(keep) = attrs {
        e.retain(|k, _| k == "id" || k == "type" || keep.iter().any(|a| a == k));
    }
    if f != Format::Normalized {
        for (k, v) in e.iter_mut() {
            if k != "id" && k != "type" {
                *v = if f == Format::KeyValues {
                    simplify(v)
                } else {
                    concise(v)
                };
            }
        }
    }
    e
}

/// The @context of an entity of `ty`.
fn context_of(catalog: &Catalog, ty: &str) -> Value {
    let model_ctx = if ty == DEVICE {
        Some(DEVICE_CONTEXT.to_owned())
    } else {
        models(catalog)
            .into_iter()
            .find(|(_, m)| m.entity_type == ty)
            .map(|(_, m)| m.context.clone())
    };
    match model_ctx {
        Some(c) => json!([c, CORE_CONTEXT]),
        None => json!(CORE_CONTEXT),
    }
}

/// The kinds that are served, with their models.
fn models(catalog: &Catalog) -> Vec<(&Kind, &ModelDef)> {
    catalog
        .iter()
        .filter_map(|k| k.def.ngsi_ld.as_ref().map(|m| (k, m)))
        .collect()
}

/// What a query asks for (ETSI GS CIM 009, 4.17 and 5.7.2).
struct Selection {
    /// Each kind scanned, with its model, as the model's entities and/or its Devices.
    targets: Vec<(String, ModelDef, bool, bool)>,
    /// Sensors named by `id`, per entity type.
    ids: Option<Vec<String>>,
    id_pattern: Option<regex::Regex>,
    attrs: Option<Vec<String>>,
    q: Option<Q>,
    geo: Option<GeoQuery>,
}

impl Selection {
    fn of(state: &AppState, p: &Params, temporal: bool) -> Answer<Self> {
        let types = p.list("type");
        let ids = p.list("id");
        let asked = [
            types.is_some(),
            ids.is_some(),
            p.get("idPattern").is_some(),
            p.get("attrs").is_some(),
            p.get("q").is_some(),
            p.get("georel").is_some(),
        ];
        if !asked.iter().any(|b| *b) {
            return Err(bad(if temporal {
                "give type, id, idPattern, attrs, q or a geo-query (georel, geometry, coordinates)"
            } else {
                "give type, id, idPattern, attrs, q or a geo-query (georel, geometry, coordinates); GET /ngsi-ld/v1/types lists the types"
            }));
        }
        let mut wanted_ids: Option<Vec<(String, String)>> = None;
        if let Some(ids) = &ids {
            let mut v = Vec::new();
            for id in ids {
                let (ty, s) =
                    parse_id(id).ok_or_else(|| bad(format!("id {id:?} is not an entity id of this hub (urn:ngsi-ld:<type>:<sensor id>)")))?;
                v.push((ty.to_owned(), s.to_owned()));
            }
            wanted_ids = Some(v);
        }
        // A type may be named by its term or its full IRI (the last path segment).
        let types: Option<Vec<String>> = types.map(|t| {
            t.iter()
                .map(|t| t.rsplit(['/', '#']).next().unwrap_or(t).to_owned())
                .collect()
        });
        let mut targets = Vec::new();
        for (k, m) in models(&state.catalog) {
            let wants = |ty: &str| {
                types.as_ref().is_none_or(|t| t.iter().any(|x| x == ty))
                    && wanted_ids
                        .as_ref()
                        .is_none_or(|ids| ids.iter().any(|(t, _)| t == ty))
            };
            let (own, dev) = (wants(&m.entity_type), wants(DEVICE));
            if own || dev {
                targets.push((k.name.to_string(), m.clone(), own, dev));
            }
        }
        let q = p.get("q").map(Q::parse).transpose().map_err(|e| bad(e.0))?;
        let geo = match p.get("georel") {
            None => None,
            Some(rel) => {
                if let Some(gp) = p.get("geoproperty").filter(|g| *g != "location") {
                    return Err(bad(format!(
                        "geoproperty {gp:?}: entities here have only location"
                    )));
                }
                let (Some(g), Some(c)) = (p.get("geometry"), p.get("coordinates")) else {
                    return Err(bad("a geo-query needs georel, geometry and coordinates"));
                };
                Some(GeoQuery::parse(rel, g, c).map_err(|e| bad(e.0))?)
            }
        };
        Ok(Selection {
            targets,
            ids: wanted_ids.map(|v| v.into_iter().map(|(t, s)| entity_id(&t, &s)).collect()),
            id_pattern: p
                .get("idPattern")
                .map(regex)
                .transpose()
                .map_err(|e| bad(e.0))?,
            attrs: p.list("attrs"),
            q,
            geo,
        })
    }

    fn sensor_ids(&self) -> Option<Vec<String>> {
        self.ids.as_ref().map(|ids| {
            ids.iter()
                .filter_map(|i| parse_id(i).map(|(_, s)| s.to_owned()))
                .collect()
        })
    }

    fn holds(&self, e: &Map<String, Value>, v: &SensorView) -> bool {
        let id = e["id"].as_str().unwrap_or_default();
        self.ids
            .as_ref()
            .is_none_or(|ids| ids.iter().any(|i| i == id))
            && self.id_pattern.as_ref().is_none_or(|r| r.is_match(id))
            && self.geo.as_ref().is_none_or(|g| match (v.lon, v.lat) {
                (Some(lon), Some(lat)) => g.holds(lon, lat),
                _ => false,
            })
            && match &self.q {
                Some(q) => q.matches(&|p: &[String]| value_at(e, p)),
                // Without q, attrs keeps the entities that have one of them.
                None => self
                    .attrs
                    .as_ref()
                    .is_none_or(|a| a.iter().any(|a| e.contains_key(a))),
            }
    }

    /// The matching entities from `offset`, at most `limit`, with how many match in
    /// all; sensors are read a chunk at a time, so memory holds one chunk and a page.
    async fn scan(
        &self,
        state: &AppState,
        offset: usize,
        limit: usize,
    ) -> Answer<(Vec<(Map<String, Value>, SensorView)>, usize)> {
        let store = state.reader()?;
        let bbox = self.geo.as_ref().and_then(GeoQuery::bounds).map(|b| Bbox {
            min_lon: b[0],
            min_lat: b[1],
            max_lon: b[2],
            max_lat: b[3],
        });
        let (mut page, mut total) = (Vec::new(), 0usize);
        for (kind, model, own, dev) in &self.targets {
            let mut from = 0i64;
            loop {
                let f = SensorFilter {
                    kinds: vec![kind.clone()],
                    ids: self.sensor_ids(),
                    bbox,
                    active_from: None,
                    active_to: None,
                    limit: Some(CHUNK),
                    offset: from,
                    keys: None,
                };
                let chunk = query::sensors(&store, &f).await?;
                let n = chunk.len() as i64;
                for v in chunk {
                    for as_device in [false, true] {
                        if (as_device && !dev) || (!as_device && !own) {
                            continue;
                        }
                        let e = entity(&v, model, as_device);
                        if self.holds(&e, &v) {
                            if total >= offset && page.len() < limit {
                                page.push((e, v.clone()));
                            }
                            total += 1;
                        }
                    }
                }
                if n < CHUNK {
                    break;
                }
                from += CHUNK;
            }
        }
        Ok((page, total))
    }
}

/// Writes entities as asked: JSON with the @context in a Link header, JSON-LD with
/// it in each entity, or a GeoJSON FeatureCollection.
fn respond(
    state: &AppState,
    media: Media,
    entities: Vec<Map<String, Value>>,
    one: bool,
    extra: Vec<(header::HeaderName, HeaderValue)>,
) -> Response {
    let types: std::collections::BTreeSet<&str> = entities
        .iter()
        .filter_map(|e| e.get("type").and_then(Value::as_str))
        .collect();
    // One type: its model's context; several: each entity's own, in JSON-LD, and
    // the core context in the Link of a plain JSON answer.
    let shared = match types.len() {
        1 => context_of(
            &state.catalog,
            types.iter().next().copied().unwrap_or_default(),
        ),
        _ => json!(CORE_CONTEXT),
    };
    let link_ctx = match &shared {
        Value::Array(a) => a
            .first()
            .and_then(Value::as_str)
            .unwrap_or(CORE_CONTEXT)
            .to_owned(),
        v => v.as_str().unwrap_or(CORE_CONTEXT).to_owned(),
    };
    let body = match media {
        Media::JsonLd => {
            let mut items: Vec<Value> = entities
                .into_iter()
                .map(|mut e| {
                    let ty = e
                        .get("type")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned();
                    e.insert("@context".into(), context_of(&state.catalog, &ty));
                    Value::Object(e)
                })
                .collect();
            if one {
                items.pop().unwrap_or(Value::Null)
            } else {
                Value::Array(items)
            }
        }
        Media::Json => {
            let mut items: Vec<Value> = entities.into_iter().map(Value::Object).collect();
            if one {
                items.pop().unwrap_or(Value::Null)
            } else {
                Value::Array(items)
            }
        }
        Media::GeoJson => {
            let features: Vec<Value> = entities
                .into_iter()
                .map(|mut e| {
                    let id = e.remove("id").unwrap_or(Value::Null);
                    let geometry = e.get("location").map(|l| match l.get("value") {
                        Some(g) if l.get("type").and_then(Value::as_str) == Some("GeoProperty") => {
                            g.clone()
                        }
                        _ => l.clone(),
                    });
                    json!({"id": id, "type": "Feature", "geometry": geometry, "properties": e})
                })
                .collect();
            if one {
                features.into_iter().next().unwrap_or(Value::Null)
            } else {
                json!({"type": "FeatureCollection", "features": features, "@context": shared})
            }
        }
    };
    let mut r = (
        [(header::CONTENT_TYPE, media.content_type())],
        body.to_string(),
    )
        .into_response();
    if media != Media::JsonLd {
        if let Ok(v) = HeaderValue::from_str(&format!(
            "<{link_ctx}>; rel=\"{CONTEXT_REL}\"; type=\"application/ld+json\""
        )) {
            r.headers_mut().insert(header::LINK, v);
        }
    }
    for (k, v) in extra {
        r.headers_mut().insert(k, v);
    }
    r
}

/// `GET /ngsi-ld/v1/entities`: the entities a query selects.
pub async fn entities(
    State(s): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Answer<Response> {
    let media = Media::of(&headers)?;
    let p = Params::of(raw);
    let format = p.format()?;
    let sel = Selection::of(&s, &p, false)?;
    let limit = p.usize("limit", DEFAULT_LIMIT, MAX_LIMIT)?;
    let offset = p.usize("offset", 0, usize::MAX)?;
    let count = p.count();
    if limit == 0 && !count {
        return Err(bad("limit=0 is only allowed with count=true"));
    }
    let (page, total) = sel.scan(&s, offset, limit).await?;
    let entities = page
        .into_iter()
        .map(|(e, _)| shape(e, sel.attrs.as_deref(), format))
        .collect();
    let mut extra = Vec::new();
    if count {
        extra.push((
            header::HeaderName::from_static("ngsild-results-count"),
            HeaderValue::from(total),
        ));
    }
    Ok(respond(&s, media, entities, false, extra))
}

/// Reads one entity by id (its type and sensor).
async fn one_entity(s: &AppState, id: &str) -> Answer<(Map<String, Value>, SensorView, ModelDef)> {
    let missing = || not_found(format!("no entity {id:?}"));
    let (ty, sensor) = parse_id(id).ok_or_else(missing)?;
    let store = s.reader()?;
    let f = SensorFilter {
        kinds: models(&s.catalog)
            .iter()
            .map(|(k, _)| k.name.to_string())
            .collect(),
        ids: Some(vec![sensor.to_owned()]),
        bbox: None,
        active_from: None,
        active_to: None,
        limit: Some(1),
        offset: 0,
        keys: None,
    };
    let v = query::sensors(&store, &f)
        .await?
        .pop()
        .ok_or_else(missing)?;
    let model = s
        .catalog
        .get(&v.kind)
        .and_then(|k| k.def.ngsi_ld.clone())
        .ok_or_else(missing)?;
    if ty != model.entity_type && ty != DEVICE {
        return Err(missing());
    }
    Ok((entity(&v, &model, ty == DEVICE), v, model))
}

/// `GET /ngsi-ld/v1/entities/{id}`.
pub async fn entity_by_id(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Answer<Response> {
    let media = Media::of(&headers)?;
    let p = Params::of(raw);
    let format = p.format()?;
    let (e, _, _) = one_entity(&s, &id).await?;
    let e = shape(e, p.list("attrs").as_deref(), format);
    Ok(respond(&s, media, vec![e], true, Vec::new()))
}

/// `GET /ngsi-ld/v1/types`: the entity types served.
pub async fn types(State(s): State<AppState>, headers: HeaderMap) -> Answer<Response> {
    let media = Media::of(&headers)?;
    let mut list: Vec<String> = models(&s.catalog)
        .iter()
        .map(|(_, m)| m.entity_type.clone())
        .collect();
    if !list.is_empty() {
        list.push(DEVICE.into());
    }
    list.sort();
    list.dedup();
    let mut body = json!({
        "id": "urn:ngsi-ld:EntityTypeList:cityhub",
        "type": "EntityTypeList",
        "typeList": list,
    });
    if media == Media::JsonLd {
        body["@context"] = json!(CORE_CONTEXT);
    }
    Ok((
        [(header::CONTENT_TYPE, media.content_type())],
        body.to_string(),
    )
        .into_response())
}

/// The time range and how a temporal query reads it.
struct Temporal {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    last_n: Option<usize>,
    simplified: bool,
    aggregate: Option<(Vec<String>, i64)>,
    attrs: Option<Vec<String>>,
}

/// The aggregation methods the rollups answer exactly.
const AGGR_METHODS: &[&str] = &["totalCount", "sum", "avg", "min", "max"];

impl Temporal {
    fn of(p: &Params) -> Answer<Self> {
        let at = |k: &str| -> Answer<Option<DateTime<Utc>>> {
            p.get(k)
                .map(|t| {
                    DateTime::parse_from_rfc3339(t)
                        .map(|t| t.with_timezone(&Utc))
                        .map_err(|_| bad(format!("{k} {t:?} is not an RFC 3339 DateTime")))
                })
                .transpose()
        };
        let (time_at, end) = (at("timeAt")?, at("endTimeAt")?);
        let min = Utc.timestamp_opt(0, 0).single().unwrap_or_default();
        let max = Utc::now() + chrono::Duration::days(1);
        let (from, to) = match p.get("timerel") {
            None => (min, max),
            Some(rel) => {
                let t = time_at.ok_or_else(|| bad("timerel needs timeAt"))?;
                match rel {
                    "before" => (min, t),
                    "after" => (t, max),
                    "between" => {
                        let e = end.ok_or_else(|| bad("timerel=between needs endTimeAt"))?;
                        if e <= t {
                            return Err(bad("endTimeAt must be after timeAt"));
                        }
                        (t, e)
                    }
                    r => {
                        return Err(bad(format!(
                            "timerel {r:?} is not before, after or between"
                        )))
                    }
                }
            }
        };
        if let Some(tp) = p.get("timeproperty").filter(|t| *t != "observedAt") {
            return Err(bad(format!(
                "timeproperty {tp:?}: readings have only observedAt"
            )));
        }
        let last_n = match p.get("lastN") {
            None => None,
            Some(_) => Some(p.usize("lastN", 1, MAX_INSTANCES)?).filter(|n| *n > 0),
        };
        let opts = p.options();
        let aggregated = opts.iter().any(|o| o == "aggregatedValues")
            || p.get("format") == Some("aggregatedValues")
            || p.get("aggrMethods").is_some();
        let aggregate = if aggregated {
            let methods = p
                .list("aggrMethods")
                .filter(|m| !m.is_empty())
                .ok_or_else(|| bad("aggregatedValues needs aggrMethods"))?;
            if let Some(m) = methods.iter().find(|m| !AGGR_METHODS.contains(&m.as_str())) {
                return Err(bad(format!(
                    "aggrMethods {m:?}: the hub's rollups answer {} (distinctCount, stddev and sumsq are not kept)",
                    AGGR_METHODS.join(", ")
                )));
            }
            let d = p
                .get("aggrPeriodDuration")
                .ok_or_else(|| bad("aggregatedValues needs aggrPeriodDuration (PT1H, P1D, ...)"))?;
            Some((methods, period_seconds(d).map_err(|e| bad(e.0))?))
        } else {
            None
        };
        Ok(Temporal {
            from,
            to,
            last_n,
            simplified: opts.iter().any(|o| o == "temporalValues")
                || p.get("format") == Some("temporalValues"),
            aggregate,
            attrs: p.list("attrs"),
        })
    }
}

/// The temporal evolution of an entity's attributes that come from readings.
async fn temporal_of(
    s: &AppState,
    e: &Map<String, Value>,
    v: &SensorView,
    model: &ModelDef,
    t: &Temporal,
    truncated: &mut bool,
) -> Answer<Map<String, Value>> {
    let store = s.reader()?;
    let device = e.get("type").and_then(Value::as_str) == Some(DEVICE);
    let defs = if device {
        &model.device_attributes
    } else {
        &model.attributes
    };
    let mut out = Map::new();
    out.insert("id".into(), e["id"].clone());
    out.insert("type".into(), e["type"].clone());
    let Some((pk, _)) = query::sensor_key(&store, &v.id).await? else {
        return Ok(out);
    };
    // A sensor's readings lie between its first and last; the range need not reach further.
    let from = t.from.max(v.first_seen.unwrap_or(t.from));
    let to = t.to.min(
        v.last_seen
            .map_or(t.to, |l| l + chrono::Duration::microseconds(1)),
    );
    for (name, def) in defs {
        if t.attrs.as_ref().is_some_and(|a| !a.contains(name)) {
            continue;
        }
        let Ok(src) = def.source() else { continue };
        let (metric, scale, unit, state) = match &src {
            Source::Metric {
                metric,
                scale,
                unit_code,
            } => (*metric, *scale, *unit_code, None),
            Source::State {
                metric,
                above,
                states,
            } => (*metric, 1.0, None, Some((*above, *states))),
            _ => continue,
        };
        let Some(mid) = store.metric_id(&v.kind, metric) else {
            continue;
        };
        if from >= to {
            continue;
        }
        if let Some((methods, period)) = &t.aggregate {
            if state.is_some() {
                continue;
            }
            let a = aggregate(&store, pk, mid, (from, to), *period, methods, scale).await?;
            out.insert(name.clone(), a);
            continue;
        }
        let (limit, newest) = match t.last_n {
            Some(n) => (n, true),
            None => (MAX_INSTANCES + 1, false),
        };
        let mut rows = query::series(&store, pk, mid, (from, to), limit as i64, newest).await?;
        if rows.len() > MAX_INSTANCES {
            rows.truncate(MAX_INSTANCES);
            *truncated = true;
        }
        let value = |x: f64| match state {
            Some((above, states)) => json!(states[usize::from(x > above)]),
            None => number(scaled(x, scale)),
        };
        let a = if t.simplified {
            let values: Vec<Value> = rows
                .iter()
                .map(|(ts, x)| json!([value(*x), time(*ts)]))
                .collect();
            json!({"type": "Property", "values": values})
        } else {
            let instances: Vec<Value> = rows
                .iter()
                .map(|(ts, x)| {
                    let mut i =
                        json!({"type": "Property", "value": value(*x), "observedAt": time(*ts)});
                    if let Some(u) = unit {
                        i["unitCode"] = json!(u);
                    }
                    i
                })
                .collect();
            Value::Array(instances)
        };
        out.insert(name.clone(), a);
    }
    Ok(out)
}

#[derive(Default, Clone, Copy)]
struct Agg {
    count: i64,
    sum: f64,
    min: f64,
    max: f64,
}

/// One attribute aggregated per period from the hourly or daily rollups (periods
/// start at multiples of the period since 1970-01-01T00:00Z).
async fn aggregate(
    store: &cityhub_store::Store,
    pk: i32,
    mid: i16,
    (from, to): (DateTime<Utc>, DateTime<Utc>),
    period: i64,
    methods: &[String],
    scale: f64,
) -> Answer<Value> {
    let floor = |t: DateTime<Utc>| t.timestamp().div_euclid(period) * period;
    let (start, end) = (
        floor(from),
        floor(to - chrono::Duration::microseconds(1)) + period,
    );
    if (end - start) / period > MAX_PERIODS {
        return Err(bad(format!(
            "{} periods of {period} s: narrow the range (timerel) or lengthen aggrPeriodDuration (at most {MAX_PERIODS})",
            (end - start) / period
        )));
    }
    let at = |s: i64| Utc.timestamp_opt(s, 0).single().unwrap_or_default();
    let bucket = if period % 86_400 == 0 {
        Bucket::Day
    } else {
        Bucket::Hour
    };
    let rows = query::readings(
        store,
        &ReadingsQuery {
            sensor: pk,
            metrics: vec![mid],
            from: at(start),
            to: at(end),
            bucket,
            after: None,
            limit: None,
        },
    )
    .await?;
    let mut periods: BTreeMap<i64, Agg> = BTreeMap::new();
    for r in rows {
        let c = r.count.unwrap_or(1);
        let p = periods.entry(floor(r.time)).or_insert(Agg {
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        });
        p.count += c;
        p.sum += r.value * c as f64;
        p.min = p.min.min(r.min.unwrap_or(r.value));
        p.max = p.max.max(r.max.unwrap_or(r.value));
    }
    let mut a = json!({"type": "Property"});
    for m in methods {
        let series: Vec<Value> = periods
            .iter()
            .map(|(s, g)| {
                let x = match m.as_str() {
                    "totalCount" => json!(g.count),
                    "sum" => number(scaled(g.sum, scale)),
                    "avg" => number(scaled(g.sum / g.count as f64, scale)),
                    "min" => number(scaled(g.min, scale)),
                    _ => number(scaled(g.max, scale)),
                };
                json!([x, time(at(*s)), time(at(s + period))])
            })
            .collect();
        a[m.as_str()] = Value::Array(series);
    }
    Ok(a)
}

fn temporal_respond(
    state: &AppState,
    media: Media,
    entities: Vec<Map<String, Value>>,
    one: bool,
    truncated: bool,
    mut extra: Vec<(header::HeaderName, HeaderValue)>,
) -> Response {
    let media = if media == Media::GeoJson {
        Media::Json
    } else {
        media
    };
    if truncated {
        // Each attribute holds its first MAX_INSTANCES; the client asks again from the last.
        extra.push((
            header::CONTENT_RANGE,
            HeaderValue::from_static("date-time */*"),
        ));
    }
    let mut r = respond(state, media, entities, one, extra);
    if truncated {
        *r.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    r
}

/// `GET /ngsi-ld/v1/temporal/entities/{id}`.
pub async fn temporal_entity(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Answer<Response> {
    let media = Media::of(&headers)?;
    let p = Params::of(raw);
    let t = Temporal::of(&p)?;
    let (e, v, model) = one_entity(&s, &id).await?;
    let mut truncated = false;
    let out = temporal_of(&s, &e, &v, &model, &t, &mut truncated).await?;
    Ok(temporal_respond(
        &s,
        media,
        vec![out],
        true,
        truncated,
        Vec::new(),
    ))
}

/// `GET /ngsi-ld/v1/temporal/entities`: the temporal evolution of the entities a query selects.
pub async fn temporal_entities(
    State(s): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Answer<Response> {
    let media = Media::of(&headers)?;
    let p = Params::of(raw);
    let t = Temporal::of(&p)?;
    let mut sel = Selection::of(&s, &p, true)?;
    // In the temporal API attrs picks the attributes; it does not select entities.
    sel.attrs = None;
    let limit = p.usize("limit", DEFAULT_LIMIT, 100)?;
    let offset = p.usize("offset", 0, usize::MAX)?;
    let (page, total) = sel.scan(&s, offset, limit).await?;
    let mut truncated = false;
    let mut out = Vec::with_capacity(page.len());
    for (e, v) in &page {
        let Some((_, model)) = models(&s.catalog)
            .into_iter()
            .find(|(k, _)| k.name.as_str() == v.kind)
        else {
            continue;
        };
        out.push(temporal_of(&s, e, v, model, &t, &mut truncated).await?);
    }
    let mut extra = Vec::new();
    if p.count() {
        extra.push((
            header::HeaderName::from_static("ngsild-results-count"),
            HeaderValue::from(total),
        ));
    }
    Ok(temporal_respond(&s, media, out, false, truncated, extra))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_leaves_no_float_noise() {
        assert_eq!(scaled(42.0, 0.01), 0.42);
        assert_eq!(scaled(85.0, 0.01), 0.85);
        assert_eq!(scaled(0.0, 0.01), 0.0);
        assert_eq!(scaled(123.456, 1.0), 123.456);
    }

    #[test]
    fn entity_ids_name_a_type_and_a_sensor() {
        assert_eq!(
            parse_id("urn:ngsi-ld:WasteContainer:bin-1"),
            Some(("WasteContainer", "bin-1"))
        );
        assert_eq!(parse_id("urn:ngsi-ld:Device:a:b"), Some(("Device", "a:b")));
        assert_eq!(parse_id("urn:ngsi-ld:Device:"), None);
        assert_eq!(parse_id("bin-1"), None);
    }
}
