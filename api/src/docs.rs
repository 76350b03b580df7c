//! `/api`: a self-contained HTML page of the API, rendered from the same OpenAPI
//! document as `/openapi.json` (no script, nothing fetched from a CDN).

use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::{OpenApi, Required};

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn operation(out: &mut String, method: &str, path: &str, op: &Operation) {
    let summary = op.summary.as_deref().unwrap_or("");
    out.push_str(&format!(
        "<section><h3><span class=\"m {m}\">{M}</span> <code>{p}</code></h3><p>{s}</p>",
        m = method,
        M = method.to_uppercase(),
        p = esc(path),
        s = esc(summary)
    ));
    if let Some(d) = op.description.as_deref().filter(|d| *d != summary) {
        out.push_str(&format!("<p>{}</p>", esc(d)));
    }
    if op.security.is_some() {
        out.push_str(
            "<p><em>Admin: needs <code>Authorization: Bearer &lt;token&gt;</code>.</em></p>",
        );
    }
    if let Some(params) = op.parameters.as_ref().filter(|p| !p.is_empty()) {
        out.push_str("<table><tr><th>parameter</th><th>in</th><th></th></tr>");
        for p in params {
            let place = match p.parameter_in {
                ParameterIn::Query => "query",
                ParameterIn::Path => "path",
                ParameterIn::Header => "header",
                ParameterIn::Cookie => "cookie",
            };
            let req = if matches!(p.required, Required::True) {
                " (required)"
            } else {
                ""
            };
            out.push_str(&format!(
                "<tr><td><code>{}</code>{req}</td><td>{place}</td><td>{}</td></tr>",
                esc(&p.name),
                esc(p.description.as_deref().unwrap_or(""))
            ));
        }
        out.push_str("</table>");
    }
    let codes: Vec<String> = op
        .responses
        .responses
        .keys()
        .map(|c| format!("<code>{}</code>", esc(c)))
        .collect();
    out.push_str(&format!(
        "<p class=\"r\">Answers: {}</p></section>",
        codes.join(" ")
    ));
}

pub fn html(api: &OpenApi) -> String {
    let mut out = String::from(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>cityhub API</title>\
<style>body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;line-height:1.4}\
code{background:#f3f3f3;padding:0 .2em}table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:.2em .5em;text-align:left}\
.m{font:bold .8em monospace;padding:.1em .4em;border-radius:3px;color:#fff;background:#2a6}.put{background:#c80}.post{background:#36c}\
section{border-top:1px solid #ddd;margin-top:1em}.r{color:#555}</style></head><body>",
    );
    out.push_str(&format!(
        "<h1>{}</h1><p>{}</p><p>Machine-readable: <a href=\"/openapi.json\">/openapi.json</a> (OpenAPI 3). \
OGC API - Features: <a href=\"/ogc\">/ogc</a>. Catalogue: <a href=\"/catalog.ttl\">/catalog.ttl</a>, \
<a href=\"/catalog.jsonld\">/catalog.jsonld</a>.</p>",
        esc(&api.info.title),
        esc(api.info.description.as_deref().unwrap_or(""))
    ));
    for (path, item) in &api.paths.paths {
        for (m, op) in [
            ("get", &item.get),
            ("put", &item.put),
            ("post", &item.post),
            ("delete", &item.delete),
        ] {
            if let Some(op) = op {
                operation(&mut out, m, path, op);
            }
        }
    }
    out.push_str("</body></html>");
    out
}
