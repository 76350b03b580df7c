//! Signed paging links. The rate limit charges the next page of a listing a tenth of
//! a request (`ratelimit`), so that standard clients following `next` links by small
//! pages are not cut off; that discount must not be had by writing `cursor=` or
//! `offset=` into any request (each could be a costly query). So the hub signs the
//! paging links it gives (`page_sig`, an HMAC of the path and query under a key of
//! this process) and only a link it signed gets the discount. The parameter is taken
//! off the request before any handler sees it, so handlers that refuse unknown
//! parameters (OGC API) accept signed links; a link that does not verify (another
//! hub's, or a restarted one's) is served at the full price.

use axum::extract::{Request, State};
use axum::http::Uri;
use axum::middleware::Next;
use axum::response::Response;
use hmac::{KeyInit, Mac};
use std::sync::Arc;

const PARAM: &str = "page_sig";

/// Marks a request that came by a paging link this hub signed.
#[derive(Clone, Copy, Debug)]
pub struct SignedPage;

pub struct PageSigner {
    key: [u8; 32],
}

impl Default for PageSigner {
    fn default() -> Self {
        Self {
            key: rand::random(),
        }
    }
}

impl PageSigner {
    fn mac(&self, path: &str, query: &str) -> String {
        let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.key)
            .expect("HMAC takes a key of any length");
        m.update(path.as_bytes());
        m.update(b"?");
        m.update(query.as_bytes());
        m.finalize().into_bytes()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// `link` (absolute or a path, with its query) with its signature appended.
    pub fn sign(&self, link: &str) -> String {
        let (before, query) = link.split_once('?').unwrap_or((link, ""));
        // The path as the hub will see it: without scheme and host.
        let path = match before.find("://") {
            Some(i) => before[i + 3..]
                .find('/')
                .map_or("/", |p| &before[i + 3 + p..]),
            None => before,
        };
        let sig = self.mac(path, query);
        let sep = if query.is_empty() { "?" } else { "&" };
        format!("{link}{sep}{PARAM}={sig}")
    }

    /// Whether `query` (which ends with the signature) was signed for `path`; the
    /// query without it.
    fn verify<'q>(&self, path: &str, query: &'q str) -> (bool, Option<&'q str>) {
        let (rest, sig) = match query.rsplit_once('&') {
            Some((rest, last)) => (rest, last),
            None => ("", query),
        };
        match sig.strip_prefix(PARAM).and_then(|s| s.strip_prefix('=')) {
            Some(sig) => (self.mac(path, rest) == sig, Some(rest)),
            None => (false, None),
        }
    }
}

/// The middleware: takes `page_sig` off the query (wherever it stands) and marks the
/// request [`SignedPage`] when the signature matches.
pub async fn check(
    State(signer): State<Arc<PageSigner>>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(query) = req.uri().query().filter(|q| q.contains(PARAM)) else {
        return next.run(req).await;
    };
    let path = req.uri().path().to_owned();
    let (signed, rest) = signer.verify(&path, query);
    let rest = match rest {
        Some(r) => r.to_owned(),
        // Not at the end, where the hub puts it: drop it wherever it is, unsigned.
        None => query
            .split('&')
            .filter(|kv| kv.split('=').next() != Some(PARAM))
            .collect::<Vec<_>>()
            .join("&"),
    };
    let uri = if rest.is_empty() {
        path
    } else {
        format!("{path}?{rest}")
    };
    if let Ok(u) = uri.parse::<Uri>() {
        *req.uri_mut() = u;
    }
    if signed {
        req.extensions_mut().insert(SignedPage);
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_link_verifies_and_nothing_else_does() {
        let s = PageSigner::default();
        let link =
            s.sign("https://dati.example.it/ogc/collections/waste_bin/items?limit=10&offset=20");
        let (path_q, _) = (link.split_once("example.it").unwrap().1, ());
        let (path, query) = path_q.split_once('?').unwrap();
        assert_eq!(path, "/ogc/collections/waste_bin/items");
        assert_eq!(s.verify(path, query), (true, Some("limit=10&offset=20")));
        // Another offset, another path, another key: not signed.
        let forged = query.replace("offset=20", "offset=40");
        assert!(!s.verify(path, &forged).0);
        assert!(!s.verify("/ogc/collections/streetlight/items", query).0);
        assert!(!PageSigner::default().verify(path, query).0);
        assert_eq!(s.verify(path, "limit=10&offset=20"), (false, None));
        let rel = s.sign("/api/v1/sensors?limit=50&cursor=abc");
        let (p, q) = rel.split_once('?').unwrap();
        assert!(s.verify(p, q).0);
    }
}
