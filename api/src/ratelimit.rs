//! Per-client rate limit (`http.rate_limit_per_s`, `http.rate_limit_burst`), in
//! requests. A request costs one; the next page of a paged listing with a small
//! page costs a tenth: standard clients page by what they are told or by their
//! own small default (GDAL's OAPIF driver asks for 10 items a page, whatever the
//! server allows), and a layer of a few thousand features must not be cut off
//! half-way by a limit meant for scrapers. A big page costs a whole request, and so
//! does a page the hub did not link to itself (`pages`: the links are signed).

use crate::error::ErrorBody;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Cells of the bucket one ordinary request takes.
const REQUEST: u32 = 10;
/// Cells a small continuation page takes.
const PAGE: u32 = 1;
/// A continuation page is small at or below this many items.
const SMALL_PAGE: u64 = 100;

/// Whose bucket a request takes from: a signed-in operator's own, or its address's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    Addr(IpAddr),
    /// An operator whose token this hub has verified: people behind one city-hall
    /// address (NAT) do not share, nor spend, the public's budget.
    Operator(String),
}

pub struct Limiter {
    limiter: DefaultKeyedRateLimiter<Key>,
    /// Requests the bucket holds.
    burst: u32,
    accounts: Arc<crate::auth::Accounts>,
}

/// The client's bucket, for a handler that learns what a request costs only once it
/// has read it (an indicator over years of a fleet): it charges the rest itself.
#[derive(Clone)]
pub struct Charge {
    limiter: Arc<Limiter>,
    key: Key,
}

impl Charge {
    /// Charges a request that costs `requests` in all (at most the whole burst, so any
    /// request can be paid for by waiting): the one the middleware took, and the rest
    /// now. When the bucket cannot pay now, the seconds to wait, and nothing is taken.
    pub fn take(&self, requests: u64) -> Result<(), u64> {
        let requests = u32::try_from(requests)
            .unwrap_or(u32::MAX)
            .min(self.limiter.burst)
            .saturating_sub(1);
        let Some(n) = NonZeroU32::new(requests.saturating_mul(REQUEST)) else {
            return Ok(());
        };
        self.limiter.take(&self.key, n)
    }
}

impl Limiter {
    /// Takes `cells` from `key`'s bucket, or says in whole seconds (at least one, for
    /// `Retry-After`) when it could; nothing is taken then.
    fn take(&self, key: &Key, cells: NonZeroU32) -> Result<(), u64> {
        let wait = match self.limiter.check_key_n(key, cells) {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(not_until)) => not_until.wait_time_from(DefaultClock::default().now()),
            // More than the whole burst: the costs never ask it; refuse plainly.
            Err(_) => Duration::from_secs(1),
        };
        Err(wait.as_secs_f64().ceil().max(1.0) as u64)
    }

    /// `per_s` requests a second with bursts of `burst`, per client address. The
    /// table of clients forgets idle ones every minute, until `shutdown`.
    pub fn new(
        per_s: u32,
        burst: u32,
        accounts: Arc<crate::auth::Accounts>,
        shutdown: &CancellationToken,
    ) -> Arc<Self> {
        let cells = |n: u32| NonZeroU32::new(n.max(1).saturating_mul(REQUEST)).expect("non-zero");
        let quota = Quota::per_second(cells(per_s)).allow_burst(cells(burst));
        let me = Arc::new(Self {
            limiter: RateLimiter::keyed(quota),
            burst: burst.max(1),
            accounts,
        });
        let weak = Arc::downgrade(&me);
        let stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(60)) => match weak.upgrade() {
                        Some(l) => l.limiter.retain_recent(),
                        None => break,
                    },
                    _ = stop.cancelled() => break,
                }
            }
        });
        me
    }
}

/// What a request costs: a small page after the first of a paged listing is cheap.
fn cost(req: &Request) -> u32 {
    let path = req.uri().path();
    let paged =
        path.ends_with("/items") || path.ends_with("/readings") || path == "/api/v1/sensors";
    let Some(q) = req.uri().query().filter(|_| paged) else {
        return REQUEST;
    };
    // Borrowed pairs: most requests are not paged, and those that are parse a few.
    let get = |k: &str| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(n, _)| n == k)
            .map(|(_, v)| v)
    };
    // Only a link the hub signed is a continuation (`pages`): a `cursor=` written by
    // hand is a request like any other.
    let continued = req.extensions().get::<crate::pages::SignedPage>().is_some();
    let small = get("limit")
        .and_then(|l| l.parse::<u64>().ok())
        .is_some_and(|l| l <= SMALL_PAGE);
    if continued && small {
        PAGE
    } else {
        REQUEST
    }
}

/// The bucket a client address falls in: an IPv6 client by its /64 (one subscriber's
/// network: it can take any address in it, so per address it would have millions of
/// buckets), an IPv4-mapped one as the IPv4 address it is.
pub(crate) fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !(u64::MAX as u128))),
        },
        v4 => v4,
    }
}

/// The middleware: 429 with `Retry-After` (whole seconds, at least one) when the
/// client's bucket is empty. The client is `ConnectInfo`, which the server sets
/// (through trusted proxies' `X-Forwarded-For` only).
pub async fn limit(State(l): State<Arc<Limiter>>, mut req: Request, next: Next) -> Response {
    // Health checks and metrics are the operators' own: a load balancer's probes or a
    // scraper must never be refused, nor spend the budget of clients behind its address.
    if matches!(req.uri().path(), "/healthz" | "/readyz" | "/metrics") {
        return next.run(req).await;
    }
    let key = match crate::auth::bearer_token(req.headers()).and_then(|t| l.accounts.known(t)) {
        Some(operator) => Key::Operator(operator),
        None => Key::Addr(
            req.extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| client_key(c.0.ip())),
        ),
    };
    let n = NonZeroU32::new(cost(&req)).expect("costs are non-zero");
    let Err(wait) = l.take(&key, n) else {
        req.extensions_mut().insert(Charge {
            limiter: l.clone(),
            key,
        });
        return next.run(req).await;
    };
    let who = match key {
        Key::Addr(_) => "this address",
        Key::Operator(_) => "this operator",
    };
    let body = ErrorBody {
        code: "TooManyRequests",
        description: format!("too many requests from {who}; retry in {wait} s"),
    };
    let mut r = (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&wait.to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(uri: &str) -> u32 {
        cost(
            &Request::builder()
                .uri(uri)
                .body(axum::body::Body::empty())
                .unwrap(),
        )
    }

    /// The cost of a request that came by a link the hub signed.
    fn signed(uri: &str) -> u32 {
        let mut r = Request::builder()
            .uri(uri)
            .body(axum::body::Body::empty())
            .unwrap();
        r.extensions_mut().insert(crate::pages::SignedPage);
        cost(&r)
    }

    #[test]
    fn ipv6_clients_share_their_64_and_mapped_ipv4_is_ipv4() {
        let k = |s: &str| client_key(s.parse().unwrap()).to_string();
        assert_eq!(k("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::");
        assert_eq!(k("2001:db8:1:2:ffff:ffff:ffff:ffff"), "2001:db8:1:2::");
        assert_ne!(k("2001:db8:1:3::1"), k("2001:db8:1:2::1"));
        assert_eq!(k("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(k("192.0.2.7"), "192.0.2.7");
    }

    #[test]
    fn small_signed_continuation_pages_are_cheap() {
        assert_eq!(
            signed("/ogc/collections/waste_bin/items?limit=10&offset=10"),
            PAGE
        );
        assert_eq!(signed("/api/v1/sensors?limit=50&cursor=abc"), PAGE);
        assert_eq!(
            signed("/api/v1/sensors/x/readings?limit=100&cursor=abc"),
            PAGE
        );
        // A cursor or an offset the hub did not sign costs a request.
        assert_eq!(
            c("/ogc/collections/waste_bin/items?limit=10&offset=10"),
            REQUEST
        );
        assert_eq!(c("/api/v1/sensors?limit=50&cursor=abc"), REQUEST);
        assert_eq!(
            c("/api/v1/sensors/x/readings?limit=100&cursor=abc"),
            REQUEST
        );
        // Big pages and everything else cost a request, signed or not.
        assert_eq!(
            signed("/ogc/collections/waste_bin/items?limit=5000&offset=5000"),
            REQUEST
        );
        assert_eq!(
            signed("/ogc/collections/waste_bin/items?offset=10"),
            REQUEST
        );
        assert_eq!(signed("/catalog?offset=10&limit=1"), REQUEST);
    }
}
