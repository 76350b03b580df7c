//! The HTTP side of cityhub: open-data feeds, time series, OGC API - Features,
//! the DCAT-AP_IT catalogue, the live stream, admin calls, health and metrics.
//! Every public endpoint is described in `/openapi.json`, generated from the
//! handlers' annotations.

mod admin;
pub mod alerts;
mod audit;
pub mod auth;
mod cache;
mod dcat;
mod docs;
pub mod error;
mod feeds;
pub mod geo;
mod health;
pub mod indicators;
mod kinds;
pub mod live;
pub mod ngsi_ld;
pub mod oas30;
mod ogc;
pub mod pages;
pub mod params;
mod ratelimit;
mod readings;
mod register;
mod sensors;
pub mod snapshot;
pub mod sta;
pub mod uploads;
pub mod web;

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use cityhub_core::credentials::Role;
use cityhub_core::{Catalog, Settings};
use cityhub_store::Store;
use error::ApiError;
use prometheus_client::registry::Registry;
use serde_json::Value;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;
use tower_http::cors::{Any, CorsLayer};
use tower_http::set_header::SetResponseHeaderLayer as Set;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Everything a handler may use; passed in, never global.
#[derive(Clone)]
pub struct AppState {
    /// Set once the database is reachable and migrated.
    pub store: Arc<OnceCell<Store>>,
    pub registry: Arc<Registry>,
    /// True once subscribed on a live broker connection.
    pub mqtt_connected: Arc<AtomicBool>,
    /// Set once ingestion runs: the way in for HTTP uploads.
    pub uploads: Arc<OnceCell<Arc<dyn uploads::Uploads>>>,
    pub settings: Arc<Settings>,
    pub catalog: Arc<Catalog>,
    /// Committed latest values, fanned out to `/api/v1/stream` clients.
    pub live: Arc<live::Live>,
    /// Ends open streams when the server shuts down.
    pub shutdown: CancellationToken,
    /// Receive time (µs since the epoch) of the oldest message waiting for its commit; 0: none.
    pub oldest_unacked: Arc<std::sync::atomic::AtomicI64>,
    /// TimescaleDB jobs and late refreshes as the maintenance tasks last saw them.
    pub maintenance: cityhub_store::maintenance::SharedStatus,
    /// Replication as the hub last saw it (see `cityhub_store::replication`).
    pub replication: Arc<std::sync::RwLock<Option<cityhub_store::replication::Replication>>>,
    /// Set while a simulated history is being loaded (the demo), for the map's header.
    pub history: Arc<std::sync::RwLock<Option<HistoryLoad>>>,
    /// Set while older history is loaded behind a live hub (the demo's month), for
    /// the map's header and the indicators view, which fill in as it loads.
    pub older: Arc<std::sync::RwLock<Option<HistoryLoad>>>,
    /// The sensors listing and feeds, kept in memory.
    pub snapshot: Arc<snapshot::Snapshot>,
    /// Where the operator map comes from ([`web::map_source`]).
    pub map: web::MapSource,
    /// Alert notifications: builds the outbox rows, wakes the delivery task.
    pub notifier: Arc<cityhub_store::alerts::Notifier>,
    /// Indicator computations running at once ([`indicators::MAX_CONCURRENT`]): each
    /// can scan a fleet's years, so more would take the pool and the cores.
    pub indicator_slots: Arc<tokio::sync::Semaphore>,
    /// Indicator answers over finished days.
    pub indicator_cache: indicators::Cache,
    /// Long downloads running per client (as the rate limit keys clients).
    pub downloads: readings::Downloads,
    /// Signs the paging links this hub gives, for the rate limit's page discount.
    pub pages: Arc<pages::PageSigner>,
    /// Operator accounts, as last loaded ([`auth`]).
    pub accounts: Arc<auth::Accounts>,
    /// The SensorThings SQL's catalogue document, built once per base URL.
    pub sta_catalog: sta::CatalogCache,
    /// Device passwords already checked, for HTTP uploads.
    pub device_secrets: Arc<auth::DeviceSecrets>,
}

/// How far the loading of a simulated history has got.
#[derive(Debug, Clone, serde::Serialize, PartialEq)]
pub struct HistoryLoad {
    /// The history's first instant, and the newest simulated time published so far.
    pub from: chrono::DateTime<chrono::Utc>,
    pub loaded_until: chrono::DateTime<chrono::Utc>,
    /// Where this load ends when not at the present (older history ends where the
    /// recent one began).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    pub messages: u64,
    pub messages_per_s: f64,
}

impl AppState {
    fn store(&self) -> Result<&Store, ApiError> {
        self.store.get().ok_or(ApiError::NotReady)
    }

    /// The store as the public API reads it: from `database.read_url`'s standbys when
    /// set, so reads go on while the primary is down. What must show this hub's own
    /// last commit (the listing snapshot, feeds, operator views) uses [`Self::store`].
    fn reader(&self) -> Result<Store, ApiError> {
        Ok(self.store()?.reader())
    }

    fn kind_names(&self) -> Vec<String> {
        self.catalog.iter().map(|k| k.name.to_string()).collect()
    }

    /// What to tell a client that named a kind the catalogue lacks; `None` when it exists.
    fn unknown_kind(&self, kind: &str) -> Option<String> {
        self.catalog.get(kind).is_none().then(|| {
            format!(
                "unknown kind {kind:?}; known kinds: {}",
                self.kind_names().join(", ")
            )
        })
    }
}

pub use auth::{Admin, Caller, Operator, Viewer};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "cityhub",
        description = "Open data of a city's sensor networks: GeoJSON feeds, time series, OGC API - Features, a DCAT-AP_IT catalogue and a live stream. Errors are JSON `{code, description}`. Also served, outside this document: OGC SensorThings API 1.1 at `/sta/v1.1` and NGSI-LD (ETSI GS CIM 009 v1.7, read-only, Smart Data Models) at `/ngsi-ld/v1` (`/entities`, `/entities/{id}`, `/types`, `/temporal/entities`, `/temporal/entities/{id}`, `/subscriptions`).",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    paths(sta::landing, sta::resource),
    tags(
        (name = "sensors", description = "Sensors, latest values, time series, live stream"),
        (name = "open data", description = "Downloads and the DCAT-AP_IT catalogue"),
        (name = "OGC API - Features", description = "OGC API - Features - Part 1: Core, GeoJSON, OpenAPI 3.0"),
        (name = "SensorThings API", description = "OGC SensorThings API 1.1 Part 1: Sensing, read-only: Things, Locations, HistoricalLocations, Datastreams, Sensors, ObservedProperties, Observations, FeaturesOfInterest, with $filter, $expand, $select, $orderby, $top, $skip, $count and $resultFormat=dataArray"),
        (name = "alerts", description = "Alerts: public list; acknowledging needs an operator's token"),
        (name = "indicators", description = "The mandate's indicators, computed from the readings"),
        (name = "admin", description = "Needs an admin's token (or the bootstrap admin token)"),
        (name = "accounts", description = "Who is signed in; operator accounts and the audit trail (admins)"),
        (name = "operations", description = "Health, readiness, metrics, ingestion over HTTP")
    )
)]
struct ApiDoc;

/// The routes and their OpenAPI description, built from the same handler list.
fn routes() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, mut api) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::metrics))
        .routes(routes!(uploads::ingest_sensor_community))
        .routes(routes!(kinds::kinds))
        .routes(routes!(sensors::list))
        .routes(routes!(sensors::one, admin::put))
        .routes(routes!(readings::readings))
        .routes(routes!(admin::dead_letters))
        .routes(routes!(admin::service))
        .routes(routes!(audit::me))
        .routes(routes!(audit::audit))
        .routes(routes!(audit::operators, audit::add_operator))
        .routes(routes!(audit::disable_operator))
        .routes(routes!(audit::rotate_operator))
        .routes(routes!(live::stream))
        .routes(routes!(alerts::list))
        .routes(routes!(alerts::ack))
        .routes(routes!(indicators::list))
        .routes(routes!(indicators::get))
        .routes(routes!(feeds::feed))
        .routes(routes!(register::feed))
        .routes(routes!(ogc::landing))
        .routes(routes!(ogc::conformance))
        .routes(routes!(ogc::collections))
        .routes(routes!(ogc::one_collection))
        .routes(routes!(ogc::schema))
        .routes(routes!(ogc::items))
        .routes(routes!(ogc::item))
        .routes(routes!(dcat::catalog))
        .routes(routes!(dcat::catalog_jsonld))
        .routes(routes!(dcat::catalog_ttl))
        .routes(routes!(dcat::catalog_rdf))
        .split_for_parts();
    let router = router
        .route(sta::PREFIX, get(sta::landing))
        .route(&format!("{}/{{*path}}", sta::PREFIX), get(sta::resource))
        .route(
            &format!("{}/entities", ngsi_ld::PREFIX),
            get(ngsi_ld::entities),
        )
        .route(
            &format!("{}/entities/{{id}}", ngsi_ld::PREFIX),
            get(ngsi_ld::entity_by_id),
        )
        .route(&format!("{}/types", ngsi_ld::PREFIX), get(ngsi_ld::types))
        .route(
            &format!("{}/subscriptions", ngsi_ld::PREFIX),
            get(ngsi_ld::subscriptions::list).post(ngsi_ld::subscriptions::create),
        )
        .route(
            &format!("{}/subscriptions/{{id}}", ngsi_ld::PREFIX),
            get(ngsi_ld::subscriptions::one).delete(ngsi_ld::subscriptions::delete),
        )
        .route(
            &format!("{}/temporal/entities", ngsi_ld::PREFIX),
            get(ngsi_ld::temporal_entities),
        )
        .route(
            &format!("{}/temporal/entities/{{id}}", ngsi_ld::PREFIX),
            get(ngsi_ld::temporal_entity),
        );
    if let Some(c) = api.components.as_mut() {
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
    (router, api)
}

/// The OpenAPI 3.0 document served at `/openapi.json`, with the real page limits and
/// this city's kinds.
pub fn openapi_json(api: &utoipa::openapi::OpenApi, max_page: u32, kinds: &[String]) -> String {
    let mut doc = serde_json::to_value(api).unwrap_or_default();
    oas30::downgrade(&mut doc);
    oas30::state_enforced(&mut doc, kinds, cityhub_core::SensorId::PATTERN);
    // The closed sets the handlers check by hand, named once here.
    let roles: Vec<String> = [Role::Viewer, Role::Operator, Role::Admin]
        .iter()
        .map(ToString::to_string)
        .collect();
    let states: Vec<String> = admin::SERVICE_STATES
        .iter()
        .map(|s| s.to_string())
        .collect();
    for (pointer, values) in [
        ("/components/schemas/NewOperator/properties/role", &roles),
        ("/components/schemas/IssuedToken/properties/role", &roles),
        ("/components/schemas/OperatorOut/properties/role", &roles),
        (
            "/components/schemas/ServiceInput/properties/status",
            &states,
        ),
        (
            "/components/schemas/SensorInput/properties/type",
            &vec!["Feature".to_owned()],
        ),
    ] {
        if let Some(Value::Object(s)) = doc.pointer_mut(pointer) {
            let mut e = serde_json::json!(values);
            // OpenAPI 3.0: a nullable enum lists null among its values.
            if s.get("nullable") == Some(&Value::Bool(true)) {
                e.as_array_mut().expect("a list").push(Value::Null);
            }
            s.insert("enum".into(), e);
        }
    }
    // A sensor as PUT takes it: a Point (or null) and properties with a known kind.
    if let Some(Value::Object(s)) = doc.pointer_mut("/components/schemas/SensorInput") {
        s.insert("required".into(), serde_json::json!(["properties"]));
        let props = s
            .entry("properties")
            .or_insert_with(|| serde_json::json!({}));
        props["geometry"] = serde_json::json!({
            "type": "object", "nullable": true, "required": ["type", "coordinates"],
            "description": "A GeoJSON Point [lon, lat] (WGS 84), or null for a sensor with no fixed position",
            "properties": {
                "type": {"type": "string", "enum": ["Point"]},
                "coordinates": {"type": "array", "minItems": 2, "maxItems": 3, "items": {"type": "number"}}
            }
        });
        props["properties"] = serde_json::json!({
            "type": "object", "required": ["kind"],
            "description": "`kind`, an optional `name` (at most 200 printable characters), and registry attributes such as `depth_mm`",
            "properties": {
                "kind": {"type": "string", "enum": kinds},
                "name": {"type": "string", "nullable": true, "maxLength": 200}
            }
        });
    }
    if let Some(Value::Object(s)) =
        doc.pointer_mut("/components/schemas/NewOperator/properties/name")
    {
        s.insert("pattern".into(), audit::OPERATOR_NAME_PATTERN.into());
    }
    for (param, values) in [
        ("rows", &["city", "sensors"][..]),
        ("period", &["day", "month", "year"]),
        ("format", &["json", "csv"]),
        ("by", &["stream"]),
    ] {
        oas30::set_enum(&mut doc, "/api/v1/indicators/{id}", param, values);
    }
    for (path, default) in [
        ("/api/v1/audit", Some(100)),
        ("/api/v1/dead-letters", Some(100)),
        (
            "/ogc/collections/{collectionId}/items",
            Some(ogc::DEFAULT_LIMIT),
        ),
        ("/api/v1/sensors", None),
        (
            "/api/v1/sensors/{id}/readings",
            Some(readings::DEFAULT_LIMIT),
        ),
    ] {
        oas30::set_limit(&mut doc, path, default.map(|d| d.min(max_page)), max_page);
    }
    oas30::set_limit(
        &mut doc,
        "/api/v1/indicators/{id}",
        Some(indicators::PAGE_DEFAULT),
        indicators::PAGE_MAX,
    );
    serde_json::to_string(&doc).unwrap_or_default()
}

/// The OpenAPI document of every public endpoint.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().1
}

pub fn router(state: AppState) -> Router {
    let (router, api) = routes();
    let api = Arc::new(api);
    let json = Arc::new(openapi_json(
        &api,
        state.settings.http.max_page.get(),
        &state.kind_names(),
    ));
    let html = Arc::new(docs::html(&api));
    let http = &state.settings.http;
    let mut app = router
        .route(
            "/openapi.json",
            get(move || {
                let json = json.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/vnd.oai.openapi+json;version=3.0",
                        )],
                        json.as_bytes().to_vec(),
                    )
                }
            }),
        )
        .route(
            "/api",
            get(move || {
                let html = html.clone();
                async move { axum::response::Html(html.as_bytes().to_vec()) }
            }),
        )
        .merge(web::routes(&state))
        .fallback(not_found)
        .layer(axum::middleware::from_fn(params::reject_unstorable_text))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            http.max_body_bytes,
        ))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            Duration::from_secs(http.body_timeout_s.get()),
        ));
    // Inside CORS, so a 429 carries the CORS headers and a browser can read Retry-After.
    if http.rate_limit_per_s > 0 {
        let limiter = ratelimit::Limiter::new(
            http.rate_limit_per_s,
            http.rate_limit_burst,
            state.accounts.clone(),
            &state.shutdown,
        );
        app = app.layer(axum::middleware::from_fn_with_state(
            limiter,
            ratelimit::limit,
        ));
    }
    // Outside the rate limit, which reads what it marks; always on, so that no
    // handler sees `page_sig`.
    app = app.layer(axum::middleware::from_fn_with_state(
        state.pages.clone(),
        pages::check,
    ));
    app.layer(tower_http::compression::CompressionLayer::new().gzip(true))
        // Open data: any origin may read; admin calls authenticate by token, not cookies.
        .layer(
            CorsLayer::new()
                .allow_origin(Any)
                .allow_methods(Any)
                .allow_headers(Any)
                .expose_headers([header::ETAG, header::LAST_MODIFIED, header::RETRY_AFTER])
                .max_age(Duration::from_secs(3600)),
        )
        // On every answer: no content sniffing, no referrer leaking a URL, no framing
        // by other sites (clickjacking of the operator map). TLS, and so HSTS, is the
        // reverse proxy's.
        .layer(Set::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(Set::if_not_present(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .layer(Set::if_not_present(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("SAMEORIGIN"),
        ))
        .layer(Set::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("frame-ancestors 'self'"),
        ))
        .with_state(state.clone())
}

async fn not_found(State(_): State<AppState>, uri: axum::http::Uri) -> Response {
    ApiError::NotFound(format!(
        "no resource at {}; see /api for the endpoints",
        uri.path()
    ))
    .into_response()
}
