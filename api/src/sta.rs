//! OGC SensorThings API 1.1, Part 1: Sensing, read-only (`/sta/v1.1`): the registry
//! and the readings seen as Things, Datastreams and Observations (see
//! `cityhub_store::sta` for how each entity is made of them). Paths, query options,
//! links and paging are read and written here; every filter becomes SQL there.

use crate::error::ApiError;
use crate::params::BaseUrl;
use crate::AppState;
use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cityhub_core::odata::{parse_filter, parse_orderby, BinOp, Expr};
use cityhub_store::sta::{self, EntityId, Query, Scope, Set, StaError};
use serde_json::{json, Map, Value};

/// Entities a page holds unless `$top` says otherwise, and at most.
pub const DEFAULT_TOP: i64 = 100;
pub const MAX_TOP: i64 = 1_000;
/// Entities an expanded collection holds unless its `$top` says otherwise.
const EXPAND_TOP: i64 = 100;
/// How deep `$expand` may nest.
const MAX_DEPTH: usize = 4;

pub const PREFIX: &str = "/sta/v1.1";

/// The conformance classes served (OGC 18-088 Annex A).
pub const CONFORMANCE: &[&str] = &[
    "http://www.opengis.net/spec/iot_sensing/1.1/req/datamodel",
    "http://www.opengis.net/spec/iot_sensing/1.1/req/resource-path/resource-path-to-entities",
    "http://www.opengis.net/spec/iot_sensing/1.1/req/request-data",
    "http://www.opengis.net/spec/iot_sensing/1.1/req/data-array/data-array",
];

/// An STA error answer: the status, and what was wrong with the request.
pub struct StaFailure(StatusCode, String);

impl IntoResponse for StaFailure {
    fn into_response(self) -> Response {
        let body = json!({"code": self.0.as_u16(), "type": "error", "message": self.1});
        (self.0, Json(body)).into_response()
    }
}

impl From<StaError> for StaFailure {
    fn from(e: StaError) -> Self {
        match e {
            StaError::Unsupported(m) => StaFailure(StatusCode::BAD_REQUEST, m),
            StaError::Store(e) => {
                let r = ApiError::Store(e).into_response();
                let status = r.status();
                StaFailure(
                    status,
                    if status == StatusCode::BAD_REQUEST {
                        "the query could not be answered".into()
                    } else {
                        "storage is unavailable; try again later".into()
                    },
                )
            }
        }
    }
}

impl From<ApiError> for StaFailure {
    fn from(e: ApiError) -> Self {
        let message = match &e {
            ApiError::Store(_) => "storage is unavailable; try again later".to_owned(),
            e => e.to_string(),
        };
        StaFailure(e.into_response().status(), message)
    }
}

fn bad(m: impl Into<String>) -> StaFailure {
    StaFailure(StatusCode::BAD_REQUEST, m.into())
}

/// The query options of one level: the request's own, or those in an `$expand`.
#[derive(Debug, Default, Clone)]
struct Options {
    query: Query,
    select: Option<Vec<String>>,
    expand: Vec<Expand>,
    data_array: bool,
}

#[derive(Debug, Clone)]
struct Expand {
    name: String,
    options: Options,
}

fn options(pairs: &[(String, String)], top: i64, depth: usize) -> Result<Options, StaFailure> {
    let mut o = Options {
        query: Query {
            top,
            ..Default::default()
        },
        ..Default::default()
    };
    for (k, v) in pairs {
        match k.as_str() {
            "$top" => {
                let n: i64 = v
                    .parse()
                    .map_err(|_| bad(format!("$top={v:?} is not a whole number")))?;
                if n < 0 {
                    return Err(bad("$top must not be negative"));
                }
                o.query.top = n.min(MAX_TOP);
            }
            "$skip" => {
                o.query.skip = v
                    .parse::<i64>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| bad(format!("$skip={v:?} is not a whole number ≥ 0")))?;
            }
            "$count" => {
                o.query.count = match v.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(bad("$count is true or false")),
                }
            }
            "$filter" => {
                o.query.filter =
                    Some(parse_filter(v).map_err(|e| bad(format!("$filter: {e}")))?)
            }
            "$orderby" => {
                o.query.orderby = parse_orderby(v).map_err(|e| bad(format!("$orderby: {e}")))?
            }
            "$select" => {
                o.select = Some(
                    v.split(',')
                        .map(|s| s.trim().to_owned())
                        .filter(|s| !s.is_empty())
                        .collect(),
                )
            }
            "$expand" => {
                if depth >= MAX_DEPTH {
                    return Err(bad(format!("$expand nests at most {MAX_DEPTH} deep")));
                }
                o.expand = parse_expand(v, depth)?;
            }
            "$resultFormat" => match v.as_str() {
                "dataArray" => o.data_array = true,
                _ => return Err(bad(format!("$resultFormat={v:?}: only dataArray is served"))),
            },
            k if k.starts_with('$') => {
                return Err(bad(format!(
                    "unknown query option {k:?}: $top, $skip, $count, $filter, $orderby, $select, $expand and $resultFormat are served"
                )))
            }
            _ => {}
        }
    }
    Ok(o)
}

/// Splits `s` at `sep` outside parentheses and quotes.
fn split_top(s: &str, sep: char) -> Vec<&str> {
    let (mut depth, mut quoted, mut start) = (0i32, false, 0);
    let mut out = Vec::new();
    for (i, c) in s.char_indices() {
        match c {
            '\'' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth -= 1,
            c if c == sep && depth == 0 && !quoted => {
                out.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// `Datastreams($top=1;$expand=Observations),Locations`, and the path form
/// `Datastreams/ObservedProperty`.
fn parse_expand(s: &str, depth: usize) -> Result<Vec<Expand>, StaFailure> {
    let mut out = Vec::new();
    for item in split_top(s, ',') {
        let item = item.trim();
        if item.is_empty() {
            return Err(bad("$expand has an empty item"));
        }
        let (head, inner) = match item.find('(') {
            Some(i) if item.ends_with(')') => (&item[..i], Some(&item[i + 1..item.len() - 1])),
            Some(_) => return Err(bad(format!("$expand: {item:?} has unbalanced parentheses"))),
            None => (item, None),
        };
        let mut names = head.split('/');
        let first = names.next().unwrap_or_default().to_owned();
        let rest: Vec<&str> = names.collect();
        let mut pairs = Vec::new();
        if let Some(inner) = inner {
            for opt in split_top(inner, ';') {
                let (k, v) = opt
                    .split_once('=')
                    .ok_or_else(|| bad(format!("$expand: {opt:?} is not option=value")))?;
                pairs.push((k.trim().to_owned(), v.trim().to_owned()));
            }
        }
        let mut options = if rest.is_empty() {
            options(&pairs, EXPAND_TOP, depth + 1)?
        } else {
            // `A/B(...)`: B's options, under A.
            let mut nested = parse_expand(
                &format!(
                    "{}{}",
                    rest.join("/"),
                    inner.map(|i| format!("({i})")).unwrap_or_default()
                ),
                depth + 1,
            )?;
            let mut o = options(&[], EXPAND_TOP, depth + 1)?;
            o.expand.append(&mut nested);
            o
        };
        if options.data_array {
            return Err(bad("$resultFormat is not served inside $expand"));
        }
        options.query.top = options.query.top.min(MAX_TOP);
        out.push(Expand {
            name: first,
            options,
        });
    }
    Ok(out)
}

/// The set and rows a resource path names, and whether it is one entity, plus a
/// property (and `$value`) when it ends in one.
struct Target {
    set: Set,
    scope: Scope,
    single: bool,
    property: Option<(String, bool)>,
}

fn id_segment(seg: &str) -> Result<(&str, Option<&str>), StaFailure> {
    match seg.find('(') {
        Some(i) if seg.ends_with(')') => Ok((&seg[..i], Some(&seg[i + 1..seg.len() - 1]))),
        Some(_) => Err(bad(format!("{seg:?}: unbalanced parentheses"))),
        None => Ok((seg, None)),
    }
}

async fn resolve(s: &AppState, catalog: &Value, path: &str) -> Result<Target, StaFailure> {
    let mut segs = path.split('/').filter(|x| !x.is_empty());
    let first = segs.next().ok_or_else(|| bad("no entity set"))?;
    let (name, id) = id_segment(first)?;
    let set = Set::parse(name)
        .ok_or_else(|| StaFailure(StatusCode::NOT_FOUND, format!("no entity set {name:?}")))?;
    let mut t = Target {
        set,
        scope: match id {
            Some(raw) => Scope::One(EntityId::parse(set, raw)?),
            None => Scope::All,
        },
        single: id.is_some(),
        property: None,
    };
    for seg in segs {
        if let Some((_, v)) = &t.property {
            if seg == "$value" && !v {
                t.property.as_mut().expect("set above").1 = true;
                continue;
            }
            return Err(bad(format!(
                "nothing follows a property but $value, not {seg:?}"
            )));
        }
        if !t.single {
            return Err(bad(format!(
                "{seg:?} follows a collection: name one entity first, as {}(id)",
                t.set.name()
            )));
        }
        let (name, id) = id_segment(seg)?;
        match t.set.navigation().iter().find(|(n, _, _)| *n == name) {
            Some((_, target, single)) => {
                // The id of the entity we stand on, to follow its navigation.
                let parent_id = match &t.scope {
                    Scope::One(id) => id.clone(),
                    _ => one_id(s, catalog, t.set, &t.scope).await?,
                };
                t.scope = Scope::Related {
                    parent: t.set,
                    id: parent_id,
                };
                t.set = *target;
                t.single = *single;
                if let Some(raw) = id {
                    // `Things(1)/Datastreams(5)`: one of them, checked to be related.
                    // One query, `id eq <id>` among the related: any number of them.
                    let only = EntityId::parse(*target, raw)?;
                    let id = match id_json(&only) {
                        Value::String(x) => Expr::String(x),
                        v => Expr::Number(v.as_f64().unwrap_or(f64::NAN)),
                    };
                    let filter = Expr::Binary(
                        BinOp::Eq,
                        Box::new(Expr::Path(vec!["id".into()])),
                        Box::new(id),
                    );
                    let rows = sta::list(
                        &s.reader()?,
                        catalog,
                        t.set,
                        &t.scope,
                        &Query {
                            top: 1,
                            filter: Some(filter),
                            ..Default::default()
                        },
                    )
                    .await?;
                    if rows.rows.is_empty() {
                        return Err(StaFailure(StatusCode::NOT_FOUND, "Nothing found.".into()));
                    }
                    t.scope = Scope::One(only);
                    t.single = true;
                }
            }
            None if id.is_none() => t.property = Some((name.to_owned(), false)),
            None => return Err(bad(format!("{} has no navigation {name:?}", t.set.name()))),
        }
    }
    Ok(t)
}

fn id_json(id: &EntityId) -> Value {
    match id {
        EntityId::Int(i) => json!(i),
        EntityId::Observation {
            sensor,
            metric,
            time,
        } => json!(format!("{sensor}-{metric}-{}", time.timestamp_micros())),
    }
}

/// The id of the one entity `scope` names in `set`, or 404.
async fn one_id(
    s: &AppState,
    catalog: &Value,
    set: Set,
    scope: &Scope,
) -> Result<EntityId, StaFailure> {
    let page = sta::list(
        &s.reader()?,
        catalog,
        set,
        scope,
        &Query {
            top: 1,
            ..Default::default()
        },
    )
    .await?;
    let row = page
        .rows
        .first()
        .ok_or_else(|| StaFailure(StatusCode::NOT_FOUND, "Nothing found.".into()))?;
    let raw = match &row["@iot.id"] {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    Ok(EntityId::parse(set, &raw)?)
}

/// `Set(id)` as a URL segment: string ids quoted.
fn entity_segment(set: Set, id: &Value) -> String {
    match id {
        Value::String(s) => format!("{}('{}')", set.name(), s.replace('\'', "''")),
        v => format!("{}({v})", set.name()),
    }
}

/// The last catalogue document built and the base URL it was built for: the kinds
/// never change while the hub runs, and most hubs are reached by one name.
#[derive(Default, Clone)]
pub struct CatalogCache(std::sync::Arc<std::sync::Mutex<Option<Built>>>);

/// A catalogue document and the base URL it names.
type Built = (String, std::sync::Arc<Value>);

impl CatalogCache {
    fn get(&self, s: &AppState, base: &str) -> std::sync::Arc<Value> {
        let mut c = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match &*c {
            Some((b, v)) if b == base => v.clone(),
            _ => {
                let v = std::sync::Arc::new(catalog_document(s, base));
                *c = Some((base.to_owned(), v.clone()));
                v
            }
        }
    }
}

/// The catalogue as the SQL of `cityhub_store::sta` reads it: titles, descriptions,
/// units in UCUM, metric definitions.
pub fn catalog_document(s: &AppState, base: &str) -> Value {
    let mut kinds = Map::new();
    for k in s.catalog.iter() {
        let mut metrics = Map::new();
        for (name, m) in &k.metrics {
            let def = k.def.metrics.get(name.as_str());
            let title = def.and_then(|d| d.title.clone());
            let ucum = cityhub_core::units::ucum(&m.unit);
            metrics.insert(
                name.to_string(),
                json!({
                    "title": title,
                    "definition": format!("{base}/api/v1/kinds#{}.{}", k.name, name),
                    "unitOfMeasurement": {
                        "name": title.clone().unwrap_or_else(|| m.unit.clone()),
                        "symbol": m.unit,
                        "definition": ucum.map_or_else(
                            || "http://unitsofmeasure.org/ucum.html".to_owned(),
                            |c| format!("http://unitsofmeasure.org/ucum.html#{c}")),
                    },
                }),
            );
        }
        kinds.insert(
            k.name.to_string(),
            json!({
                "title": k.def.title,
                "description": k.def.description.clone().unwrap_or_else(|| k.def.title.clone()),
                "metadata": format!("{base}/api/v1/kinds#{}", k.name),
                "metrics": metrics,
            }),
        );
    }
    json!({ "kinds": kinds })
}

/// Adds `@iot.selfLink` and the navigation links, expands what `$expand` asks for,
/// and keeps what `$select` names.
fn links(set: Set, row: &mut Map<String, Value>, root: &str) {
    let id = row.get("@iot.id").cloned().unwrap_or(Value::Null);
    let me = format!("{root}/{}", entity_segment(set, &id));
    for (nav, _, _) in set.navigation() {
        row.insert(
            format!("{nav}@iot.navigationLink"),
            Value::String(format!("{me}/{nav}")),
        );
    }
    row.insert("@iot.selfLink".into(), Value::String(me));
}

/// A new Observation as the MQTT extension publishes it: the same JSON as
/// `GET {root}/Observations('id')` answers, built from the reading alone.
pub fn observation_message(
    root: &str,
    (sensor, metric): (i32, i16),
    time: chrono::DateTime<chrono::Utc>,
    value: f64,
) -> Value {
    let mut row = sta::observation((sensor, metric), time, value);
    links(Set::Observations, &mut row, root);
    Value::Object(row)
}

fn select(row: &mut Map<String, Value>, select: &Option<Vec<String>>, expanded: &[Expand]) {
    let Some(keep) = select else { return };
    row.retain(|k, _| {
        let base = k.split('@').next().unwrap_or(k);
        let is_id = k == "@iot.id" && keep.iter().any(|s| s == "id" || s == "@iot.id");
        is_id
            || (!base.is_empty() && keep.iter().any(|s| s == base))
            || expanded.iter().any(|e| e.name == base)
    });
}

fn shape<'a>(
    s: &'a AppState,
    catalog: &'a Value,
    root: &'a str,
    set: Set,
    rows: &'a mut [Map<String, Value>],
    o: &'a Options,
    held: &'a std::sync::atomic::AtomicUsize,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StaFailure>> + Send + 'a>> {
    Box::pin(async move {
        for e in &o.expand {
            let (_, target, single) = *set
                .navigation()
                .iter()
                .find(|(n, _, _)| *n == e.name)
                .ok_or_else(|| {
                    bad(format!(
                        "$expand: {} has no navigation {:?}",
                        set.name(),
                        e.name
                    ))
                })?;
            let mut ids = Vec::with_capacity(rows.len());
            for row in rows.iter() {
                ids.push(match row.get("@iot.id") {
                    Some(Value::String(x)) => Some(EntityId::parse(set, x)?),
                    Some(v) => Some(EntityId::parse(set, &v.to_string())?),
                    None => None,
                });
            }
            let q = &e.options.query;
            let ints: Option<Vec<i64>> = ids
                .iter()
                .map(|i| i.as_ref().and_then(EntityId::int))
                .collect();
            // One query for the whole page of parents when their ids are numbers.
            let mut pages: Vec<sta::Page> = match ints {
                Some(ints) if !q.count => {
                    sta::list_related(&s.reader()?, catalog, target, set, &ints, q).await?
                }
                _ => {
                    let mut pages = Vec::with_capacity(ids.len());
                    for id in &ids {
                        pages.push(match id {
                            Some(id) => {
                                let scope = Scope::Related {
                                    parent: set,
                                    id: id.clone(),
                                };
                                sta::list(&s.reader()?, catalog, target, &scope, q).await?
                            }
                            None => sta::Page {
                                rows: Vec::new(),
                                more: false,
                                count: None,
                            },
                        });
                    }
                    pages
                }
            };
            let n: usize = pages.iter().map(|p| p.rows.len()).sum();
            let now = held.fetch_add(n, std::sync::atomic::Ordering::Relaxed) + n;
            // 1,000 Things with 1,000 Observations each would be a million.
            let most = s.settings.sta.max_entities.get() as usize;
            if now > most {
                return Err(bad(format!(
                    "the answer would hold more than {most} entities with its expansions: ask for fewer with $top, inside $expand too"
                )));
            }
            // The children of every parent shaped together, so nested expansions are
            // one query per level too.
            let sizes: Vec<usize> = pages.iter().map(|p| p.rows.len()).collect();
            let mut children: Vec<Map<String, Value>> = pages
                .iter_mut()
                .flat_map(|p| std::mem::take(&mut p.rows))
                .collect();
            for r in children.iter_mut() {
                links(target, r, root);
            }
            shape(s, catalog, root, target, &mut children, &e.options, held).await?;
            for r in children.iter_mut() {
                select(r, &e.options.select, &e.options.expand);
            }
            let mut children = children.into_iter();
            for ((row, page), size) in rows.iter_mut().zip(pages).zip(sizes) {
                if !row.contains_key("@iot.id") {
                    continue;
                }
                let mine: Vec<Map<String, Value>> = children.by_ref().take(size).collect();
                if single {
                    row.insert(
                        e.name.clone(),
                        mine.into_iter().next().map_or(Value::Null, Value::Object),
                    );
                    continue;
                }
                if let Some(c) = page.count {
                    row.insert(format!("{}@iot.count", e.name), json!(c));
                }
                if page.more {
                    let me = row["@iot.selfLink"].as_str().unwrap_or_default().to_owned();
                    let skip = q.skip + q.top;
                    row.insert(
                        format!("{}@iot.nextLink", e.name),
                        json!(format!("{me}/{}?$top={}&$skip={skip}", e.name, q.top)),
                    );
                }
                row.insert(
                    e.name.clone(),
                    Value::Array(mine.into_iter().map(Value::Object).collect()),
                );
            }
        }
        Ok(())
    })
}

/// The service root: the entity sets and `serverSettings`.
#[utoipa::path(get, path = "/sta/v1.1", tag = "SensorThings API", operation_id = "sta_landing",
    responses((status = 200, description = "The entity sets and the conformance classes served", body = Object)))]
pub async fn landing(BaseUrl(base): BaseUrl) -> Response {
    let root = format!("{base}{PREFIX}");
    let value: Vec<Value> = Set::ALL
        .iter()
        .map(|s| json!({"name": s.name(), "url": format!("{root}/{}", s.name())}))
        .collect();
    Json(json!({
        "value": value,
        "serverSettings": {
            "conformance": CONFORMANCE,
        },
    }))
    .into_response()
}

/// Every resource path under `/sta/v1.1/` (OGC 18-088 §9.2): an entity set, one
/// entity, a navigation from it, or a property (and its `$value`).
#[utoipa::path(get, path = "/sta/v1.1/{resource}", tag = "SensorThings API", operation_id = "sta_resource",
    params(
        ("resource" = String, Path, description = "`Things`, `Things(1)`, `Datastreams(32771)/Observations`, `Observations('1-3-1714550400000000')/FeatureOfInterest`, `Things(1)/name/$value`, ..."),
        ("$filter" = Option<String>, Query, description = "OData filter: comparison, logical and arithmetic operators, string and date functions, geo.distance, st_within, st_intersects"),
        ("$expand" = Option<String>, Query, description = "Navigation properties to include, with nested options: `Datastreams($top=1;$expand=Observations($orderby=phenomenonTime desc;$top=1))`"),
        ("$select" = Option<String>, Query, description = "Properties to keep, comma-separated"),
        ("$orderby" = Option<String>, Query, description = "Expressions with asc or desc, comma-separated"),
        ("$top" = Option<i64>, Query, description = "Entities per page (100 unless given, at most 1,000)"),
        ("$skip" = Option<i64>, Query, description = "Entities to skip"),
        ("$count" = Option<bool>, Query, description = "Adds @iot.count, the number of all that match"),
        ("$resultFormat" = Option<String>, Query, description = "`dataArray`, for collections of Observations"),
    ),
    responses(
        (status = 200, description = "The entity, collection or property", body = Object),
        (status = 400, description = "A query the hub cannot serve, and why", body = Object),
        (status = 404, description = "No such entity or entity set", body = Object),
    ))]
pub async fn resource(
    State(s): State<AppState>,
    BaseUrl(base): BaseUrl,
    uri: Uri,
    RawQuery(raw): RawQuery,
) -> Result<Response, StaFailure> {
    let path = uri
        .path()
        .strip_prefix(PREFIX)
        .unwrap_or_default()
        .to_owned();
    let path = percent_encoding::percent_decode_str(&path)
        .decode_utf8()
        .map_err(|_| bad("the path is not UTF-8"))?
        .into_owned();
    let pairs: Vec<(String, String)> =
        url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
    let o = options(&pairs, DEFAULT_TOP, 0)?;
    let root = format!("{base}{PREFIX}");
    let catalog = s.sta_catalog.get(&s, &base);
    let catalog = &*catalog;
    let t = resolve(&s, catalog, &path).await?;
    let mut q = o.query.clone();
    if t.single {
        q.top = 1;
        q.skip = 0;
        q.count = false;
    }
    let mut page = sta::list(&s.reader()?, catalog, t.set, &t.scope, &q).await?;
    for r in page.rows.iter_mut() {
        links(t.set, r, &root);
    }
    if o.data_array {
        if t.set != Set::Observations || t.single {
            return Err(bad(
                "$resultFormat=dataArray is served for collections of Observations",
            ));
        }
        return Ok(Json(data_array(&root, &uri, &pairs, &page, &o)?).into_response());
    }
    let held = std::sync::atomic::AtomicUsize::new(page.rows.len());
    shape(&s, catalog, &root, t.set, &mut page.rows, &o, &held).await?;
    for r in page.rows.iter_mut() {
        select(r, &o.select, &o.expand);
    }
    if t.single {
        let mut row = page
            .rows
            .into_iter()
            .next()
            .ok_or_else(|| StaFailure(StatusCode::NOT_FOUND, "Nothing found.".into()))?;
        if let Some((name, raw_value)) = t.property {
            let v = row
                .remove(&name)
                .ok_or_else(|| bad(format!("{} has no property {name:?}", t.set.name())))?;
            if raw_value {
                let text = match v {
                    Value::String(s) => s,
                    v => v.to_string(),
                };
                return Ok(
                    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response(),
                );
            }
            return Ok(Json(json!({ name: v })).into_response());
        }
        return Ok(Json(Value::Object(row)).into_response());
    }
    let mut out = Map::new();
    if let Some(c) = page.count {
        out.insert("@iot.count".into(), json!(c));
    }
    out.insert(
        "value".into(),
        Value::Array(page.rows.into_iter().map(Value::Object).collect()),
    );
    if page.more {
        out.insert(
            "@iot.nextLink".into(),
            json!(next_link(&root, &path, &pairs, &o)),
        );
    }
    Ok(Json(Value::Object(out)).into_response())
}

/// The same request for the next page: `$skip` moved on by `$top`.
fn next_link(root: &str, path: &str, pairs: &[(String, String)], o: &Options) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs.iter().filter(|(k, _)| k != "$skip" && k != "$top") {
        q.append_pair(k, v);
    }
    q.append_pair("$top", &o.query.top.to_string());
    q.append_pair("$skip", &(o.query.skip + o.query.top).to_string());
    format!("{root}{path}?{}", q.finish())
}

/// Observations as `dataArray`s, one per Datastream (OGC 18-088 §14.3).
fn data_array(
    root: &str,
    uri: &Uri,
    pairs: &[(String, String)],
    page: &sta::Page,
    o: &Options,
) -> Result<Value, StaFailure> {
    let components: Vec<String> = o.select.clone().unwrap_or_else(|| {
        ["id", "phenomenonTime", "result", "resultTime"]
            .map(String::from)
            .to_vec()
    });
    for c in &components {
        if !matches!(
            c.as_str(),
            "id" | "phenomenonTime" | "result" | "resultTime"
        ) {
            return Err(bad(format!(
                "dataArray component {c:?}: id, phenomenonTime, result and resultTime are served"
            )));
        }
    }
    let mut groups: Vec<(i64, Vec<Value>)> = Vec::new();
    for r in &page.rows {
        let id = r["@iot.id"].as_str().unwrap_or_default();
        let mut parts = id.splitn(3, '-');
        let ds = match (
            parts.next().and_then(|x| x.parse::<i64>().ok()),
            parts.next().and_then(|x| x.parse::<i64>().ok()),
        ) {
            (Some(s), Some(m)) => s * sta::DATASTREAM_SCALE + m,
            _ => continue,
        };
        let row: Vec<Value> = components
            .iter()
            .map(|c| {
                r.get(if c == "id" { "@iot.id" } else { c })
                    .cloned()
                    .unwrap_or(Value::Null)
            })
            .collect();
        match groups.last_mut() {
            Some((d, rows)) if *d == ds => rows.push(Value::Array(row)),
            _ => groups.push((ds, vec![Value::Array(row)])),
        }
    }
    let value: Vec<Value> = groups
        .into_iter()
        .map(|(ds, rows)| {
            json!({
                "Datastream@iot.navigationLink": format!("{root}/Datastreams({ds})"),
                "components": components,
                "dataArray@iot.count": rows.len(),
                "dataArray": rows,
            })
        })
        .collect();
    let mut out = json!({ "value": value });
    if let Some(c) = page.count {
        out["@iot.count"] = json!(c);
    }
    if page.more {
        let path = uri.path().strip_prefix(PREFIX).unwrap_or_default();
        out["@iot.nextLink"] = json!(next_link(root, path, pairs, o));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expand_items_and_their_options() {
        let e = parse_expand(
            "Datastreams($top=1;$filter=name eq 'a,b';$expand=Observations($orderby=phenomenonTime desc;$top=2)),Locations",
            0,
        )
        .unwrap_or_else(|_| panic!("parse"));
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].name, "Datastreams");
        assert_eq!(e[0].options.query.top, 1);
        assert!(e[0].options.query.filter.is_some());
        assert_eq!(e[0].options.expand[0].name, "Observations");
        assert_eq!(e[0].options.expand[0].options.query.top, 2);
        assert_eq!(e[1].name, "Locations");
        let p = parse_expand("Datastreams/ObservedProperty", 0).unwrap_or_else(|_| panic!("parse"));
        assert_eq!(p[0].options.expand[0].name, "ObservedProperty");
        assert!(parse_expand("Datastreams($top=1", 0).is_err());
        assert!(parse_expand("Datastreams($bogus)", 0).is_err());
    }
}
