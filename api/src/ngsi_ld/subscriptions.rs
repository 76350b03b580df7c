//! NGSI-LD subscriptions (`/ngsi-ld/v1/subscriptions`, operators and admins only,
//! each change in the audit trail) and the notifications of a committed batch:
//! which subscriptions its changes meet, and the bodies sent, through the alerts'
//! outbox and signed delivery.

use super::{
    bad, context_of, entity, models, not_found, shape, time, value_at, Answer, Format, Problem,
    DEVICE,
};
use crate::auth::Operator;
use crate::error::ApiError;
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use cityhub_core::kinds::Catalog;
use cityhub_core::ngsi_ld::{regex, GeoQuery, Source, CORE_CONTEXT, Q};
use cityhub_store::ngsi::Subscription;
use cityhub_store::query::{self, SensorFilter};
use cityhub_store::{Store, StoreError};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// Entities one notification carries at most; a batch that changes more sends several.
const MAX_PER_NOTIFICATION: usize = 500;

/// One `entities` item: a type, and an id or id pattern.
#[derive(Debug, Clone)]
struct Selector {
    ty: String,
    id: Option<String>,
    pattern: Option<regex::Regex>,
}

/// A subscription as the matcher reads it.
#[derive(Debug, Clone)]
pub struct Parsed {
    entities: Vec<Selector>,
    watched: Option<Vec<String>>,
    q: Option<Q>,
    geo: Option<GeoQuery>,
    attrs: Option<Vec<String>>,
    format: Format,
    json_ld: bool,
    throttling: f64,
    expires: Option<DateTime<Utc>>,
    active: bool,
}

fn strings(v: &Value, what: &str) -> Result<Vec<String>, String> {
    v.as_array()
        .filter(|a| !a.is_empty())
        .and_then(|a| a.iter().map(|s| s.as_str().map(str::to_owned)).collect())
        .ok_or_else(|| format!("{what} must be a non-empty array of names"))
}

impl Parsed {
    /// Reads and checks a subscription's body (ETSI GS CIM 009, 5.2.12).
    pub fn of(b: &Value) -> Result<Self, String> {
        let o = b.as_object().ok_or("a subscription is a JSON object")?;
        if o.get("type").and_then(Value::as_str) != Some("Subscription") {
            return Err("type must be \"Subscription\"".into());
        }
        for k in o.keys() {
            const KNOWN: &[&str] = &[
                "id",
                "type",
                "subscriptionName",
                "description",
                "entities",
                "watchedAttributes",
                "q",
                "geoQ",
                "notification",
                "expiresAt",
                "throttling",
                "isActive",
                "@context",
            ];
            if !KNOWN.contains(&k.as_str()) {
                return Err(format!("{k:?} is not a subscription member this hub knows"));
            }
        }
        let mut entities = Vec::new();
        if let Some(es) = o.get("entities") {
            for e in es.as_array().ok_or("entities must be an array")? {
                let ty = e
                    .get("type")
                    .and_then(Value::as_str)
                    .ok_or("each of entities needs a type")?;
                entities.push(Selector {
                    ty: ty.rsplit(['/', '#']).next().unwrap_or(ty).to_owned(),
                    id: e.get("id").and_then(Value::as_str).map(str::to_owned),
                    pattern: e
                        .get("idPattern")
                        .and_then(Value::as_str)
                        .map(regex)
                        .transpose()
                        .map_err(|e| e.0)?,
                });
            }
        }
        let watched = o
            .get("watchedAttributes")
            .map(|w| strings(w, "watchedAttributes"))
            .transpose()?;
        if entities.is_empty() && watched.is_none() {
            return Err("give entities or watchedAttributes".into());
        }
        let q = o
            .get("q")
            .map(|q| q.as_str().ok_or("q must be text").map(Q::parse))
            .transpose()?
            .transpose()
            .map_err(|e| e.0)?;
        let geo = match o.get("geoQ") {
            None => None,
            Some(g) => {
                let text = |k: &str| g.get(k).and_then(Value::as_str);
                let coords = g.get("coordinates").map(|c| match c {
                    Value::String(s) => s.clone(),
                    c => c.to_string(),
                });
                let (Some(rel), Some(geometry), Some(coords)) =
                    (text("georel"), text("geometry"), coords)
                else {
                    return Err("geoQ needs georel, geometry and coordinates".into());
                };
                Some(GeoQuery::parse(rel, geometry, &coords).map_err(|e| e.0)?)
            }
        };
        let n = o.get("notification").ok_or("notification is required")?;
        let endpoint = n
            .get("endpoint")
            .ok_or("notification.endpoint is required")?;
        endpoint
            .get("uri")
            .and_then(Value::as_str)
            .and_then(|u| url::Url::parse(u).ok())
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or("notification.endpoint.uri must be an http(s) URL")?;
        let json_ld = match endpoint.get("accept").and_then(Value::as_str) {
            None | Some("application/json") => false,
            Some("application/ld+json") => true,
            Some(a) => {
                return Err(format!(
                    "notification.endpoint.accept {a:?}: application/json or application/ld+json"
                ))
            }
        };
        if let Some(ri) = endpoint.get("receiverInfo") {
            for kv in ri.as_array().ok_or("receiverInfo must be an array")? {
                let (Some(k), Some(_)) = (
                    kv.get("key").and_then(Value::as_str),
                    kv.get("value").and_then(Value::as_str),
                ) else {
                    return Err("each receiverInfo item is {key, value}".into());
                };
                if axum::http::HeaderName::from_bytes(k.as_bytes()).is_err()
                    || k.to_ascii_lowercase().starts_with("x-cityhub")
                    || ["content-type", "content-length", "host"]
                        .contains(&k.to_ascii_lowercase().as_str())
                {
                    return Err(format!(
                        "receiverInfo key {k:?} cannot be a header the hub sends"
                    ));
                }
            }
        }
        let format = match n.get("format").and_then(Value::as_str) {
            None | Some("normalized") => Format::Normalized,
            Some("keyValues") | Some("simplified") => Format::KeyValues,
            Some("concise") => Format::Concise,
            Some(f) => {
                return Err(format!(
                    "notification.format {f:?}: normalized, keyValues or concise"
                ))
            }
        };
        let attrs = n
            .get("attributes")
            .map(|a| strings(a, "notification.attributes"))
            .transpose()?;
        let throttling = match o.get("throttling") {
            None => 0.0,
            Some(t) => t
                .as_f64()
                .filter(|t| t.is_finite() && *t >= 0.0)
                .ok_or("throttling must be seconds, 0 or more")?,
        };
        let expires = o
            .get("expiresAt")
            .map(|e| {
                e.as_str()
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.with_timezone(&Utc))
                    .ok_or("expiresAt must be an RFC 3339 DateTime")
            })
            .transpose()?;
        let active = match o.get("isActive") {
            None => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err("isActive must be true or false".into()),
        };
        Ok(Parsed {
            entities,
            watched,
            q,
            geo,
            attrs,
            format,
            json_ld,
            throttling,
            expires,
            active,
        })
    }

    fn selects(&self, e: &Map<String, Value>) -> bool {
        let (id, ty) = (
            e["id"].as_str().unwrap_or_default(),
            e["type"].as_str().unwrap_or_default(),
        );
        self.entities.is_empty()
            || self.entities.iter().any(|s| {
                s.ty == ty
                    && s.id.as_deref().is_none_or(|i| i == id)
                    && s.pattern.as_ref().is_none_or(|p| p.is_match(id))
            })
    }
}

/// The attributes of an entity that a reading of these metrics changes.
fn changed_attributes(
    defs: &BTreeMap<String, cityhub_core::ngsi_ld::AttrDef>,
    metrics: &BTreeSet<&str>,
    device: bool,
) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = defs
        .iter()
        .filter(|(_, d)| match d.source() {
            Ok(
                Source::Metric { metric, .. }
                | Source::State { metric, .. }
                | Source::TimeOf(metric),
            ) => metrics.contains(metric),
            _ => false,
        })
        .map(|(n, _)| n.clone())
        .collect();
    if device {
        out.insert("dateLastValueReported".into());
    }
    out
}

/// The notifications of one batch's changes: (subscription id, body) for each
/// subscription whose entities, watched attributes, `q` and `geoQ` they meet.
pub async fn notifications(
    store: &Store,
    catalog: &Catalog,
    subs: &[Subscription],
    changes: &cityhub_store::ngsi::Changes,
    now: DateTime<Utc>,
) -> Result<Vec<(String, String)>, StoreError> {
    let live: Vec<(&Subscription, Parsed)> = subs
        .iter()
        .filter_map(|s| Parsed::of(&s.body).ok().map(|p| (s, p)))
        .filter(|(s, p)| {
            p.active
                && p.expires.is_none_or(|e| e > now)
                && s.last_notification
                    .is_none_or(|l| (now - l).num_milliseconds() as f64 >= p.throttling * 1000.0)
        })
        .collect();
    if live.is_empty() {
        return Ok(Vec::new());
    }
    // The metrics each sensor's batch changed, by sensor.
    let mut by_sensor: BTreeMap<i32, BTreeSet<&str>> = BTreeMap::new();
    for (s, m) in &changes.pairs {
        if let Some((_, name)) = store.metric_name(*m) {
            by_sensor.entry(*s).or_default().insert(name);
        }
    }
    let pks: Vec<i32> = by_sensor.keys().copied().collect();
    let names = store.external_ids(&pks).await?;
    let kinds: Vec<String> = models(catalog)
        .iter()
        .map(|(k, _)| k.name.to_string())
        .collect();
    let mut data: BTreeMap<usize, Vec<Value>> = BTreeMap::new();
    for chunk in names.chunks(1000) {
        let f = SensorFilter {
            kinds: kinds.clone(),
            ids: Some(chunk.iter().map(|(_, n)| n.clone()).collect()),
            bbox: None,
            active_from: None,
            active_to: None,
            limit: None,
            offset: 0,
            keys: None,
        };
        for v in query::sensors(store, &f).await? {
            let Some(model) = catalog.get(&v.kind).and_then(|k| k.def.ngsi_ld.as_ref()) else {
                continue;
            };
            let Some(metrics) = chunk
                .iter()
                .find(|(_, n)| *n == v.id)
                .and_then(|(pk, _)| by_sensor.get(pk))
            else {
                continue;
            };
            for device in [false, true] {
                let e = entity(&v, model, device);
                let defs = if device {
                    &model.device_attributes
                } else {
                    &model.attributes
                };
                let changed = changed_attributes(defs, metrics, device);
                for (i, (_, p)) in live.iter().enumerate() {
                    let watched = match &p.watched {
                        Some(w) => w.iter().any(|a| changed.contains(a)),
                        None => !changed.is_empty(),
                    };
                    let holds = watched
                        && p.selects(&e)
                        && p.q
                            .as_ref()
                            .is_none_or(|q| q.matches(&|path: &[String]| value_at(&e, path)))
                        && p.geo.as_ref().is_none_or(|g| match (v.lon, v.lat) {
                            (Some(lon), Some(lat)) => g.holds(lon, lat),
                            _ => false,
                        });
                    if holds {
                        let mut shaped = shape(e.clone(), p.attrs.as_deref(), p.format);
                        if p.json_ld {
                            let ty = shaped["type"].as_str().unwrap_or(DEVICE).to_owned();
                            shaped.insert("@context".into(), context_of(catalog, &ty));
                        }
                        data.entry(i).or_default().push(Value::Object(shaped));
                    }
                }
            }
        }
    }
    let mut out = Vec::new();
    for (i, entities) in data {
        let (s, p) = &live[i];
        for (n, part) in entities.chunks(MAX_PER_NOTIFICATION).enumerate() {
            let mut body = json!({
                "id": format!("urn:ngsi-ld:Notification:{}-{}-{n}", changes.id, i),
                "type": "Notification",
                "subscriptionId": s.id,
                "notifiedAt": time(now),
                "data": part,
            });
            if p.json_ld {
                body["@context"] = json!(CORE_CONTEXT);
            }
            out.push((s.id.clone(), body.to_string()));
        }
    }
    Ok(out)
}

/// A subscription as the API shows it: as created, with its status and deliveries.
fn shown(s: &Subscription) -> Value {
    let mut b = s.body.clone();
    let now = Utc::now();
    let parsed = Parsed::of(&b).ok();
    let status = match &parsed {
        Some(p) if p.expires.is_some_and(|e| e <= now) => "expired",
        Some(p) if !p.active => "paused",
        _ => "active",
    };
    b["status"] = json!(status);
    b["createdAt"] = json!(time(s.created_at));
    if let Some(n) = b.get_mut("notification").and_then(Value::as_object_mut) {
        n.insert("timesSent".into(), json!(s.times_sent));
        let failing = match (s.last_failure, s.last_success) {
            (Some(f), Some(ok)) => f > ok,
            (Some(_), None) => true,
            _ => false,
        };
        n.insert(
            "status".into(),
            json!(if failing { "failed" } else { "ok" }),
        );
        for (k, t) in [
            ("lastNotification", s.last_notification),
            ("lastSuccess", s.last_success),
            ("lastFailure", s.last_failure),
        ] {
            if let Some(t) = t {
                n.insert(k.into(), json!(time(t)));
            }
        }
    }
    b
}

fn auth(op: Result<Operator, ApiError>) -> Answer<Operator> {
    op.map_err(|e| {
        let status = e.into_response().status();
        Problem(
            status,
            "Unauthorized",
            "an operator's or admin's token is required for subscriptions".into(),
        )
    })
}

fn json_answer(status: StatusCode, v: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

/// `POST /ngsi-ld/v1/subscriptions`: 201 with the subscription's URL in `Location`
/// and, in `X-Cityhub-Signing-Secret`, the secret every notification is signed with
/// (`X-Cityhub-Signature-256`, HMAC-SHA256 of the body, as alert webhooks); it is
/// shown this once.
pub async fn create(
    State(s): State<AppState>,
    op: Result<Operator, ApiError>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer<Response> {
    let Operator(caller) = auth(op)?;
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !(ct.starts_with("application/json") || ct.starts_with("application/ld+json")) {
        return Err(Problem(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "BadRequestData",
            "send the subscription as application/json or application/ld+json".into(),
        ));
    }
    let mut b: Value =
        serde_json::from_slice(&body).map_err(|e| bad(format!("the body is not JSON: {e}")))?;
    Parsed::of(&b).map_err(bad)?;
    let id = match b.get("id") {
        None => {
            use rand::Rng;
            format!(
                "urn:ngsi-ld:Subscription:{:016x}",
                rand::thread_rng().gen::<u64>()
            )
        }
        Some(Value::String(i))
            if i.len() <= 256 && i.contains(':') && url::Url::parse(i).is_ok() =>
        {
            i.clone()
        }
        Some(_) => return Err(bad("id must be a URI of at most 256 characters")),
    };
    if let Some(o) = b.as_object_mut() {
        o.remove("@context");
        o.insert("id".into(), json!(id));
    }
    let secret = {
        use rand::Rng;
        let bytes: [u8; 32] = rand::thread_rng().gen();
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let store = s.store()?;
    if !store
        .create_subscription(&caller.actor(), &id, &b, &secret)
        .await?
    {
        return Err(Problem(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("a subscription {id:?} exists"),
        ));
    }
    tracing::info!(subscription = %id, operator = %caller.name, "NGSI-LD subscription created.");
    let mut r = StatusCode::CREATED.into_response();
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("{}/subscriptions/{id}", super::PREFIX)) {
        h.insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&secret) {
        h.insert("x-cityhub-signing-secret", v);
    }
    Ok(r)
}

/// `GET /ngsi-ld/v1/subscriptions`.
pub async fn list(State(s): State<AppState>, op: Result<Operator, ApiError>) -> Answer<Response> {
    auth(op)?;
    let subs = s.store()?.subscriptions().await?;
    Ok(json_answer(
        StatusCode::OK,
        &Value::Array(subs.iter().map(shown).collect()),
    ))
}

/// `GET /ngsi-ld/v1/subscriptions/{id}`.
pub async fn one(
    State(s): State<AppState>,
    op: Result<Operator, ApiError>,
    Path(id): Path<String>,
) -> Answer<Response> {
    auth(op)?;
    let sub = s
        .store()?
        .subscription(&id)
        .await?
        .ok_or_else(|| not_found(format!("no subscription {id:?}")))?;
    Ok(json_answer(StatusCode::OK, &shown(&sub)))
}

/// `DELETE /ngsi-ld/v1/subscriptions/{id}`: with its undelivered notifications.
pub async fn delete(
    State(s): State<AppState>,
    op: Result<Operator, ApiError>,
    Path(id): Path<String>,
) -> Answer<Response> {
    let Operator(caller) = auth(op)?;
    if !s.store()?.delete_subscription(&caller.actor(), &id).await? {
        return Err(not_found(format!("no subscription {id:?}")));
    }
    tracing::info!(subscription = %id, operator = %caller.name, "NGSI-LD subscription deleted.");
    Ok(StatusCode::NO_CONTENT.into_response())
}
