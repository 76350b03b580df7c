//! The operator map (`web/`, built by `npm --prefix web run build`): `/` is its
//! page, `/map/*` its bundled assets, `/map/settings.json` what it needs from the
//! configuration. Everything comes from this hub; nothing from a CDN.

use crate::AppState;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tower_http::services::ServeDir;

/// Scripts and styles only from this hub; tiles from wherever the basemap is.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
img-src 'self' data: http: https:; connect-src 'self'; frame-ancestors 'self'; base-uri 'none'";

pub fn routes(state: &AppState) -> Router<AppState> {
    let dir = state.settings.http.web_dir.clone();
    // The build names assets by content hash, so they never change under a name.
    let assets = Router::new()
        .route("/settings.json", get(settings))
        .route("/status.json", get(status))
        // The page itself is revalidated and carries its CSP, under any name.
        .route("/index.html", get(index))
        .fallback_service(ServeDir::new(dir))
        .layer(axum::middleware::map_response(immutable));
    Router::new().route("/", get(index)).nest("/map", assets)
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
    let path = s.settings.http.web_dir.join("index.html");
    match tokio::fs::read(&path).await {
        Ok(body) => (
            [
                (header::CACHE_CONTROL, "no-cache"),
                (header::CONTENT_SECURITY_POLICY, CSP),
            ],
            Html(body),
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "the operator map is not built");
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
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({ "history": history })),
    )
}

/// Revalidated on each load: it follows the hub's configuration.
async fn settings(State(s): State<AppState>) -> impl IntoResponse {
    let h = &s.settings.http;
    (
        [(header::CACHE_CONTROL, "no-cache")],
        Json(json!({
            "tile_url": h.tile_url,
            "tile_attribution": h.tile_attribution,
            "max_page": h.max_page,
            "stale_after_cadences": 3,
        })),
    )
}
