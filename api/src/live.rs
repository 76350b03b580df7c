//! `/api/v1/stream`: Server-Sent Events of readings as they are committed. Each
//! event is one sensor's newly advanced latest values from one batch, so a map
//! can recolour a marker per event. Best effort: a client too slow to keep up is
//! told how many batches it missed (`event: lagged`) and should re-read
//! `/api/v1/sensors`.

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::geo::rfc3339;
use crate::params::StrictQuery;
use crate::AppState;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use cityhub_store::LiveBatch;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::broadcast::{self, error::RecvError};
use utoipa::{IntoParams, ToSchema};

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StreamParams {
    /// Only these kinds (comma-separated).
    kind: Option<String>,
    /// Only these sensors (comma-separated ids).
    sensor: Option<String>,
}

/// One `readings` event.
#[derive(Debug, Serialize, ToSchema)]
pub struct LiveEvent {
    pub sensor: String,
    pub kind: String,
    pub readings: Vec<LiveReading>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LiveReading {
    pub metric: String,
    pub value: f64,
    pub unit: String,
    pub time: String,
}

struct Filter {
    kinds: Option<HashSet<String>>,
    sensors: Option<HashSet<String>>,
}

fn list(s: &Option<String>) -> Option<HashSet<String>> {
    s.as_ref().map(|v| {
        v.split(',')
            .map(|x| x.trim().to_owned())
            .filter(|x| !x.is_empty())
            .collect()
    })
}

fn events(state: &AppState, f: &Filter, batch: &LiveBatch) -> Vec<LiveEvent> {
    let Some(store) = state.store.get() else {
        return Vec::new();
    };
    let mut by_sensor: BTreeMap<&str, LiveEvent> = BTreeMap::new();
    for c in batch.iter() {
        if f.kinds
            .as_ref()
            .is_some_and(|k| !k.contains(c.kind.as_str()))
            || f.sensors
                .as_ref()
                .is_some_and(|s| !s.contains(c.sensor.as_str()))
        {
            continue;
        }
        let Some((kind, metric)) = store.metric_name(c.metric_id) else {
            continue;
        };
        let unit = state
            .catalog
            .get(kind)
            .and_then(|k| k.metric(metric))
            .map(|m| m.unit.clone())
            .unwrap_or_default();
        by_sensor
            .entry(c.sensor.as_str())
            .or_insert_with(|| LiveEvent {
                sensor: c.sensor.to_string(),
                kind: c.kind.to_string(),
                readings: Vec::new(),
            })
            .readings
            .push(LiveReading {
                metric: metric.to_owned(),
                value: c.value,
                unit,
                time: rfc3339(c.time),
            });
    }
    by_sensor.into_values().collect()
}

/// Live readings as Server-Sent Events (`event: readings`, JSON data per sensor).
#[utoipa::path(get, path = "/api/v1/stream", tag = "sensors", params(StreamParams),
    responses(
        (status = 200, description = "An endless `text/event-stream`; each `readings` event's data is a LiveEvent",
         body = LiveEvent, content_type = "text/event-stream"),
        (status = 400, description = "Unknown kind or parameter", body = ErrorBody)))]
pub async fn stream(
    State(s): State<AppState>,
    StrictQuery(p): StrictQuery<StreamParams>,
) -> ApiResult<Response> {
    let filter = Filter {
        kinds: list(&p.kind),
        sensors: list(&p.sensor),
    };
    if let Some(kinds) = &filter.kinds {
        if let Some(m) = kinds.iter().find_map(|k| s.unknown_kind(k)) {
            return Err(ApiError::BadRequest(m));
        }
    }
    let rx = s.live.subscribe();
    let cancel = s.shutdown.clone();
    let init = (rx, filter, s, VecDeque::<Event>::new(), cancel);
    let body = futures_util::stream::unfold(init, |(mut rx, f, s, mut queue, cancel)| async move {
        loop {
            if let Some(e) = queue.pop_front() {
                return Some((Ok::<_, Infallible>(e), (rx, f, s, queue, cancel)));
            }
            let got = tokio::select! {
                r = rx.recv() => r,
                // Open streams must not hold a graceful shutdown forever.
                _ = cancel.cancelled() => return None,
            };
            match got {
                Ok(batch) => {
                    for ev in events(&s, &f, &batch) {
                        if let Ok(e) = Event::default().event("readings").json_data(&ev) {
                            queue.push_back(e);
                        }
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    queue.push_back(
                        Event::default()
                            .event("lagged")
                            .data(format!("{{\"missed_batches\":{n}}}")),
                    );
                }
                Err(RecvError::Closed) => return None,
            }
        }
    });
    Ok(Sse::new(futures_util::StreamExt::fuse(body))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// A channel for live batches, sized so a burst of commits does not lag a normal client.
pub fn channel() -> broadcast::Sender<LiveBatch> {
    broadcast::channel(256).0
}
