//! The HTTP server loop: hyper's HTTP/1 connections with a deadline for the
//! request head (axum's own `serve` has no timer, so a client sending a byte
//! every few seconds held a connection, and shutdown, for as long as it liked),
//! the client's address for rate limiting (through trusted proxies' `X-Forwarded-For`
//! only), paths with a trailing slash answered as without, and a graceful stop on
//! cancellation.

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Serves `app` on `listener` until `cancel`, then waits for open connections to
/// finish (the app's shutdown deadline bounds that wait).
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    header_timeout: Duration,
    trusted: Arc<Vec<ipnet::IpNet>>,
    cancel: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    // `/ogc/` is `/ogc`: OGC clients (OWSLib) and people add the slash.
    let app = tower_http::normalize_path::NormalizePath::trim_trailing_slash(app);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(error = %e, "Accepting an HTTP connection failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = cancel.cancelled() => break,
        };
        let trusted = trusted.clone();
        let svc = app
            .clone()
            .map_request(move |mut req: axum::http::Request<Incoming>| {
                let client = client_addr(peer, req.headers(), &trusted);
                req.extensions_mut().insert(ConnectInfo(client));
                req
            });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, peer = %peer, "HTTP connection ended with an error.");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Who the request is from: the peer, or, when the peer is a trusted proxy, the
/// rightmost `X-Forwarded-For` address that is not itself a trusted proxy (addresses
/// further left are whatever the client wrote, so they are not believed).
pub(crate) fn client_addr(
    peer: SocketAddr,
    headers: &axum::http::HeaderMap,
    trusted: &[ipnet::IpNet],
) -> SocketAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(&ip.to_canonical()));
    if trusted.is_empty() || !is_trusted(&peer.ip()) {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer.ip();
    for hop in hops.iter().rev() {
        let Ok(ip) = hop.parse::<IpAddr>() else {
            break; // garbage: believe no further
        };
        client = ip.to_canonical();
        if !is_trusted(&client) {
            break;
        }
    }
    SocketAddr::new(client, peer.port())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue};

    fn nets(list: &[&str]) -> Vec<ipnet::IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn from(peer: &str, xff: &[&str], trusted: &[&str]) -> String {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        client_addr(peer.parse().unwrap(), &h, &nets(trusted))
            .ip()
            .to_string()
    }

    #[test]
    fn only_a_trusted_peer_s_header_is_believed() {
        assert_eq!(
            from("198.51.100.1:5000", &["203.0.113.7"], &[]),
            "198.51.100.1"
        );
        assert_eq!(
            from("198.51.100.1:5000", &["203.0.113.7"], &["10.0.0.0/8"]),
            "198.51.100.1"
        );
        assert_eq!(
            from("10.0.0.2:5000", &["203.0.113.7"], &["10.0.0.0/8"]),
            "203.0.113.7"
        );
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client_and_spoofs_to_its_left_are_ignored() {
        let t = &["10.0.0.0/8", "192.0.2.1/32"];
        assert_eq!(
            from("10.0.0.2:1", &["1.1.1.1, 203.0.113.7, 192.0.2.1"], t),
            "203.0.113.7"
        );
        assert_eq!(
            from("10.0.0.2:1", &["1.1.1.1", "203.0.113.7"], t),
            "203.0.113.7"
        );
        assert_eq!(
            from("10.0.0.2:1", &["garbage, 203.0.113.7"], t),
            "203.0.113.7"
        );
        assert_eq!(from("10.0.0.2:1", &["203.0.113.7, garbage"], t), "10.0.0.2");
        assert_eq!(from("10.0.0.2:1", &[], t), "10.0.0.2");
        // IPv4 peers on a dual-stack socket arrive mapped into IPv6.
        assert_eq!(
            from("[::ffff:10.0.0.2]:1", &["2001:db8::5"], t),
            "2001:db8::5"
        );
    }
}
