//! The operator map (`web/`, built by `npm --prefix web run build`): `/` is its
//! page, `/map/*` its bundled assets, `/map/settings.json` what it needs from the
//! configuration, `/map/fleet.json` a large fleet in compact form. Everything comes
//! from this hub; nothing from a CDN.
//!
//! The build script (`api/build.rs`) bundles the map with Node.js and it is
//! compiled into the binary, so a release build or `cargo install` serves the map
//! from anywhere. `http.web_dir` serves a directory instead; a binary built where
//! Node.js was missing falls back to the checkout's `web/dist` (the demo builds it
//! on first run).

use crate::cache::send_doc;
use crate::error::ApiResult;
use crate::AppState;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use std::path::{Path, PathBuf};
use tower_http::services::ServeDir;

/// The map as built for this binary by `api/build.rs` (empty without Node.js).
#[derive(rust_embed::Embed)]
#[folder = "$OUT_DIR/map/"]
#[allow_missing = true]
struct Bundle;

/// Where the map is served from.
#[derive(Debug, Clone, PartialEq)]
pub enum MapSource {
    Embedded,
    Dir(PathBuf),
}

/// `http.web_dir` if set, else the bundle in the binary, else the checkout's
/// `web/dist` (looked for from the working directory, then beside the executable).
pub fn map_source(web_dir: Option<&Path>) -> MapSource {
    match web_dir {
        Some(d) => MapSource::Dir(locate_beside_exe(d)),
        None if Bundle::get("index.html").is_some() => MapSource::Embedded,
        None => MapSource::Dir(locate_beside_exe(Path::new("web/dist"))),
    }
}

/// A relative path not found from here is looked for beside the executable and
/// its parents (`target/release/cityhub` finds the checkout's `web/dist`).
pub fn locate_beside_exe(path: &Path) -> PathBuf {
    if path.is_absolute() || path.exists() {
        return path.to_path_buf();
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            exe.ancestors()
                .skip(1)
                .map(|dir| dir.join(path))
                .find(|p| p.exists())
        })
        .unwrap_or_else(|| path.to_path_buf())
}

/// Scripts and styles only from this hub; tiles from wherever the basemap is.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
img-src 'self' data: http: https:; connect-src 'self'; frame-ancestors 'self'; base-uri 'none'";

pub fn routes(state: &AppState) -> Router<AppState> {
    // The build names assets by content hash, so they never change under a name.
    let assets = Router::new()
        .route("/settings.json", get(settings))
        .route("/status.json", get(status))
        .route("/fleet.json", get(fleet))
        // The page itself is revalidated and carries its CSP, under any name.
        .route("/index.html", get(index));
    let assets = match &state.map {
        MapSource::Dir(dir) => assets.fallback_service(ServeDir::new(dir)),
        MapSource::Embedded => assets.route("/{*path}", get(embedded)),
    };
    let assets = assets.layer(axum::middleware::map_response(immutable));
    Router::new().route("/", get(index)).nest("/map", assets)
}

async fn embedded(axum::extract::Path(path): axum::extract::Path<String>) -> Response {
    match Bundle::get(&path) {
        Some(f) => (
            [(header::CONTENT_TYPE, f.metadata.mimetype().to_owned())],
            f.data.into_owned(),
        )
            .into_response(),
        None => crate::error::ApiError::NotFound(format!("no map asset {path:?}")).into_response(),
    }
}

async fn page(source: &MapSource) -> Result<Vec<u8>, String> {
    match source {
        MapSource::Embedded => Bundle::get("index.html")
            .map(|f| f.data.into_owned())
            .ok_or_else(|| "the embedded map has no index.html".to_owned()),
        MapSource::Dir(dir) => {
            let path = dir.join("index.html");
            tokio::fs::read(&path)
                .await
                .map_err(|e| format!("{}: {e}", path.display()))
        }
    }
}

async fn immutable(mut r: Response) -> Response {
    if r.status().is_success() && !r.headers().contains_key(header::CACHE_CONTROL) {
        r.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=31536000, immutable"),
        );
    }
    r
}

async fn index(State(s): State<AppState>) -> Response {
    match page(&s.map).await {
        Ok(body) => (
            [
                (header::CACHE_CONTROL, "no-cache"),
                (header::CONTENT_SECURITY_POLICY, CSP),
            ],
            Html(body),
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "The operator map is not built.");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Html(
                    "<!doctype html><meta charset=utf-8><title>cityhub</title>\
                     <h1>The operator map is not built</h1>\
                     <p>Build it with <code>npm --prefix web ci &amp;&amp; npm --prefix web run build</code> \
                     (the demo does this by itself), or point <code>http.web_dir</code> at a built copy. \
                     The API is at <a href=\"/api\">/api</a>.</p>",
                ),
            )
                .into_response()
        }
    }
}

/// What the page should say beyond the readings: while a demo loads its history,
/// how far it got (the page shows it and does not call sensors silent meanwhile).
async fn status(State(s): State<AppState>) -> impl IntoResponse {
    let history = s.history.read().expect("history lock").clone();
    let older = s.older.read().expect("history lock").clone();
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({ "history": history, "older": older })),
    )
}

/// The fleet in the compact form the map draws a large fleet from (one array per field,
/// `Snapshot::fleet`); gzipped and revalidated like the listing.
async fn fleet(State(s): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    let doc = s.snapshot.fleet(s.store()?).await?;
    send_doc(&headers, "application/json", &doc, &[]).await
}

/// Revalidated on each load: it follows the hub's configuration.
async fn settings(State(s): State<AppState>) -> impl IntoResponse {
    let h = &s.settings.http;
    (
        [(header::CACHE_CONTROL, "no-cache")],
        Json(json!({
            "tile_url": h.tile_url,
            "tile_attribution": h.tile_attribution,
            "max_page": h.max_page.get(),
            "stale_after_cadences": 3,
        })),
    )
}
