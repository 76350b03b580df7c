//! What the hub stored of a run. A broker's PUBACK says the broker took a message,
//! not that the hub stored it: a stock Mosquitto queues at most 1000 messages for
//! a subscriber and drops the rest ("Outgoing messages are being dropped for
//! client ..."). Given the hub's URL, the simulators count the rows the hub
//! serves for the sensors they published, through its public readings API.

use chrono::{DateTime, Utc};
use serde::Serialize;
use std::time::{Duration, Instant};

/// The hub's side of a run.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct HubCheck {
    pub hub: String,
    /// Distinct readings the hub should hold (from the simulator's own count).
    pub expected_rows: u64,
    /// Readings the hub serves for the published sensors and period (with those it
    /// derives, such as a bin's fill level from its distance, which the simulator
    /// expects too).
    pub stored_rows: u64,
    pub missing_rows: u64,
    /// Seconds waited for the count to settle after the last publish.
    pub settled_after_s: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum HubCheckError {
    #[error("asking the hub at {url}: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the hub answered {status} to {url}")]
    Status { url: String, status: u16 },
}

/// Counts the readings the hub serves for `sensors` between `from` and `to`, give
/// or take the second a payload's time format may round away.
pub async fn stored_rows(
    hub: &str,
    sensors: &[String],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<u64, HubCheckError> {
    let http = reqwest::Client::new();
    let hub = hub.trim_end_matches('/');
    let mut total = 0;
    // Payload formats carry milliseconds or seconds: widen by a second each side.
    let (from, to) = (
        from - chrono::Duration::seconds(1),
        to + chrono::Duration::seconds(1),
    );
    for s in sensors {
        let mut next = Some(format!(
            "{hub}/api/v1/sensors/{}/readings?from={}&to={}&limit=10000",
            enc(s),
            enc(&from.to_rfc3339()),
            enc(&to.to_rfc3339())
        ));
        while let Some(url) = next.take() {
            let r = http
                .get(&url)
                .send()
                .await
                .map_err(|source| HubCheckError::Http {
                    url: url.clone(),
                    source,
                })?;
            match r.status().as_u16() {
                404 => break, // never registered: nothing stored
                429 => {
                    let wait = r
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok()?.parse().ok())
                        .unwrap_or(1u64);
                    tokio::time::sleep(Duration::from_secs(wait)).await;
                    next = Some(url);
                    continue;
                }
                200 => {}
                status => return Err(HubCheckError::Status { url, status }),
            }
            let page: serde_json::Value = r.json().await.map_err(|source| HubCheckError::Http {
                url: url.clone(),
                source,
            })?;
            total += page["readings"].as_array().map_or(0, |rs| rs.len() as u64);
            next = page["links"].as_array().and_then(|ls| {
                ls.iter()
                    .find(|l| l["rel"] == "next")
                    .and_then(|l| l["href"].as_str().map(str::to_owned))
            });
        }
    }
    Ok(total)
}

/// Waits until the hub holds `expected` rows or its count stops growing for
/// `quiet`, at most `limit`; then reports.
pub async fn settle(
    hub: &str,
    sensors: &[String],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    expected: u64,
    quiet: Duration,
    limit: Duration,
) -> Result<HubCheck, HubCheckError> {
    let started = Instant::now();
    let (mut last, mut since) = (u64::MAX, Instant::now());
    loop {
        let n = stored_rows(hub, sensors, from, to).await?;
        if n != last {
            (last, since) = (n, Instant::now());
        }
        if n >= expected || since.elapsed() >= quiet || started.elapsed() >= limit {
            return Ok(HubCheck {
                hub: hub.to_owned(),
                expected_rows: expected,
                stored_rows: n,
                missing_rows: expected.saturating_sub(n),
                settled_after_s: started.elapsed().as_secs_f64(),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
