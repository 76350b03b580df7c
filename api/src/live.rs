//! `/api/v1/stream`: Server-Sent Events of readings as they are committed. Each
//! event is one sensor's newly advanced latest values from one batch, so a map
//! can recolour a marker per event.
//!
//! Every event has an `id:` (`{hub run}-{batch}-{sensor index}`). A client that
//! reconnects with `Last-Event-ID` within `http.stream_resume_s` gets what it
//! missed from a log of recent batches; from further back, another hub process,
//! or across a gap, it gets `event: reload` and should re-read `/api/v1/sensors`.
//! A client too slow to keep up gets `event: lagged`, and should do the same.
//! Alerts raised, acknowledged and cleared come as `event: alert`, in the same
//! sequence (resumed the same way), filtered by the same kinds and sensors.

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::geo::rfc3339;
use crate::params::StrictQuery;
use crate::AppState;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use cityhub_store::LiveBatch;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use utoipa::{IntoParams, ToSchema};

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StreamParams {
    /// Only these kinds (comma-separated).
    kind: Option<String>,
    /// Only these sensors (comma-separated ids).
    sensor: Option<String>,
    /// Resume after this event, for clients that cannot send the `Last-Event-ID`
    /// header (the header wins when both are given).
    last_event_id: Option<String>,
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

impl Filter {
    fn wants(&self, e: &LiveEvent) -> bool {
        self.kinds.as_ref().is_none_or(|k| k.contains(&e.kind))
            && self.sensors.as_ref().is_none_or(|s| s.contains(&e.sensor))
    }
}

/// A batch's events, one per sensor in id order: the index of an event in this
/// list is the last part of its id, the same for every client whatever it filters.
fn events(state: &AppState, batch: &LiveBatch) -> Vec<LiveEvent> {
    let Some(store) = state.store.get() else {
        return Vec::new();
    };
    let mut by_sensor: BTreeMap<&str, LiveEvent> = BTreeMap::new();
    for c in batch.iter() {
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

/// A committed batch, or an alert event, with its place in this hub run's sequence.
#[derive(Clone)]
pub struct Stamped {
    seq: u64,
    at: Instant,
    batch: LiveBatch,
    alert: Option<Arc<AlertNote>>,
}

/// An alert event for the stream (`event: alert`).
pub struct AlertNote {
    kind: String,
    sensor: String,
    /// The JSON data, as webhooks get it.
    data: String,
}

/// Where a resuming client stands: batch `seq`, sensor index `idx` of it seen.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Position {
    seq: u64,
    idx: usize,
}

/// The live stream's hub side: the pipeline sends committed batches to `source`;
/// a relay numbers them, keeps the recent ones for resuming clients, and passes
/// them on to the connected streams.
pub struct Live {
    source: broadcast::Sender<LiveBatch>,
    out: broadcast::Sender<Stamped>,
    state: Mutex<Log>,
    /// This hub run, so an id from another run (or another hub) is not taken for ours.
    run: String,
    window: Duration,
    wake: Notify,
    /// Streams replaying the log now: a replay is paced by its client, but each holds
    /// a place here until it is done, so many resumes at once cannot take the CPU.
    resumes: Arc<Semaphore>,
}

#[derive(Default)]
struct Log {
    batches: VecDeque<Stamped>,
    /// What the logged entries hold, about ([`Stamped::weight`]).
    bytes: usize,
    next: u64,
    /// Batches before this one may be missing from the log (the relay lagged, or
    /// listened to nobody): resuming from before it means reloading.
    gap_before: u64,
    /// When the last stream ended; the relay keeps logging for `window` after it.
    idle_since: Option<Instant>,
    /// The relay takes batches now (alert events are logged only meanwhile too).
    listening: bool,
}

/// At most this much is kept for resuming (about 200,000 readings), whatever the
/// window; alert events count by their size too.
const MAX_LOGGED_BYTES: usize = 200_000 * READING_BYTES;

/// What one logged reading holds, about: its change record and its sensor id.
const READING_BYTES: usize = 128;

/// Streams that may replay the log at the same time; a resume beyond them is told
/// to reload instead.
const MAX_CONCURRENT_RESUMES: usize = 4;

/// A resume that would send more than this is cut short with `event: reload`: the
/// client re-reads `/api/v1/sensors` (answered from memory) instead.
const MAX_REPLAY_BYTES: usize = 16 * 1024 * 1024;

impl Stamped {
    fn weight(&self) -> usize {
        self.batch.len() * READING_BYTES + self.alert.as_ref().map_or(0, |a| a.data.len() + 64)
    }
}

impl Live {
    /// The stream's channels and relay; the relay ends with `cancel`.
    pub fn start(window: Duration, cancel: CancellationToken) -> Arc<Self> {
        let run = format!(
            "{:x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros())
        );
        let live = Arc::new(Self {
            source: broadcast::channel(256).0,
            out: broadcast::channel(256).0,
            state: Mutex::new(Log {
                next: 1,
                gap_before: 1,
                ..Log::default()
            }),
            run,
            window,
            wake: Notify::new(),
            resumes: Arc::new(Semaphore::new(MAX_CONCURRENT_RESUMES)),
        });
        tokio::spawn(relay(live.clone(), cancel));
        live
    }

    /// Where the pipeline sends committed batches. It reports them only while
    /// this has receivers: while streams are open, and `window` after the last.
    pub fn source(&self) -> broadcast::Sender<LiveBatch> {
        self.source.clone()
    }

    fn id(&self, p: Position) -> String {
        format!("{}-{}-{}", self.run, p.seq, p.idx)
    }

    fn parse_id(&self, id: &str) -> Option<Position> {
        let mut parts = id.trim().rsplitn(3, '-');
        let idx = parts.next()?.parse().ok()?;
        let seq = parts.next()?.parse().ok()?;
        (parts.next()? == self.run).then_some(Position { seq, idx })
    }

    /// An alert raised, acknowledged or cleared, for the open streams (and those
    /// that come back within the window).
    pub fn alert(&self, kind: &str, sensor: &str, data: String) {
        if !self.state.lock().expect("live log lock").listening {
            return;
        }
        self.push(
            Arc::new(Vec::new()),
            Some(Arc::new(AlertNote {
                kind: kind.to_owned(),
                sensor: sensor.to_owned(),
                data,
            })),
        );
    }

    fn record(&self, batch: LiveBatch) {
        self.push(batch, None);
    }

    fn push(&self, batch: LiveBatch, alert: Option<Arc<AlertNote>>) {
        let mut log = self.state.lock().expect("live log lock");
        let s = Stamped {
            seq: log.next,
            at: Instant::now(),
            batch,
            alert,
        };
        log.next += 1;
        log.bytes += s.weight();
        log.batches.push_back(s.clone());
        while log.bytes > MAX_LOGGED_BYTES
            || log
                .batches
                .front()
                .is_some_and(|b| b.at.elapsed() > self.window)
        {
            let Some(old) = log.batches.pop_front() else {
                break;
            };
            log.bytes -= old.weight();
        }
        drop(log);
        let _ = self.out.send(s);
    }

    /// Marks that batches may have been lost before the next one.
    fn gap(&self) {
        let mut log = self.state.lock().expect("live log lock");
        log.gap_before = log.next;
    }

    fn listening(&self, on: bool) {
        self.state.lock().expect("live log lock").listening = on;
    }

    /// The sequence numbers a resume from `from` replays (`from.seq` up to the next
    /// batch's), or None when some may be missing.
    fn since(&self, from: Position) -> Option<std::ops::Range<u64>> {
        let log = self.state.lock().expect("live log lock");
        if from.seq >= log.next || from.seq < log.gap_before {
            return None;
        }
        let oldest = log.batches.front().map_or(log.next, |b| b.seq);
        if from.seq + 1 < oldest {
            return None;
        }
        Some(from.seq.max(oldest)..log.next)
    }

    /// Logged entry `seq`, while it is held (sequence numbers in the log are consecutive).
    fn at(&self, seq: u64) -> Option<Stamped> {
        let log = self.state.lock().expect("live log lock");
        let oldest = log.batches.front()?.seq;
        let i = usize::try_from(seq.checked_sub(oldest)?).ok()?;
        log.batches.get(i).cloned()
    }

    fn stream_ended(&self) {
        self.state.lock().expect("live log lock").idle_since = Some(Instant::now());
    }
}

/// Takes batches from the pipeline while anyone may want them: open streams, or
/// one closed less than `window` ago (it may come back to resume). Otherwise it
/// lets go of the pipeline's channel, so the writer stops reporting.
async fn relay(live: Arc<Live>, cancel: CancellationToken) {
    let tick = (live.window / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let mut rx = live.source.subscribe();
        live.listening(true);
        let mut ticks = tokio::time::interval(tick);
        loop {
            tokio::select! {
                r = rx.recv() => match r {
                    Ok(b) => live.record(b),
                    Err(RecvError::Lagged(_)) => live.gap(),
                    Err(RecvError::Closed) => return,
                },
                _ = ticks.tick() => {
                    let idle = live.out.receiver_count() == 0 && live
                        .state
                        .lock()
                        .expect("live log lock")
                        .idle_since
                        .is_none_or(|t| t.elapsed() >= live.window);
                    if idle {
                        break;
                    }
                }
                _ = cancel.cancelled() => return,
            }
        }
        drop(rx);
        live.listening(false);
        live.gap();
        tokio::select! {
            _ = live.wake.notified() => {}
            _ = cancel.cancelled() => return,
        }
    }
}

/// Tells the relay a stream ended when the stream is dropped, however it ends.
struct Attached(Arc<Live>);

impl Drop for Attached {
    fn drop(&mut self) {
        self.0.stream_ended();
    }
}

/// What a stream does next.
struct StreamState {
    rx: broadcast::Receiver<Stamped>,
    filter: Filter,
    state: AppState,
    queue: VecDeque<Event>,
    /// Events up to here were sent (or replayed); later duplicates are skipped.
    seen: Option<Position>,
    /// A resume under way: taken one logged entry at a time, as the client reads.
    replay: Option<Replay>,
    _attached: Attached,
}

struct Replay {
    next: u64,
    end: u64,
    bytes: usize,
    _permit: OwnedSemaphorePermit,
}

impl StreamState {
    /// Queues the replay's next entry; false once there is none (done, or cut short
    /// with a reload).
    fn replay_next(&mut self) -> bool {
        let Some(r) = &mut self.replay else {
            return false;
        };
        let (seq, end) = (r.next, r.end);
        if seq >= end {
            self.finish_replay(end);
            return false;
        }
        r.next += 1;
        let Some(b) = self.state.live.at(seq) else {
            self.replay = None;
            self.queue.push_back(reload(
                "the log moved past this resume while it was replayed; re-read /api/v1/sensors",
            ));
            return false;
        };
        let bytes = self.push_batch(&b);
        let r = self.replay.as_mut().expect("checked above");
        r.bytes += bytes;
        if r.bytes > MAX_REPLAY_BYTES {
            self.replay = None;
            self.queue.push_back(reload(
                "too much to replay since this Last-Event-ID; re-read /api/v1/sensors",
            ));
            return false;
        }
        true
    }

    /// After a replay up to `end`, events before it coming from the channel are repeats.
    fn finish_replay(&mut self, end: u64) {
        self.replay = None;
        self.seen = Some(Position {
            seq: end.saturating_sub(1),
            idx: usize::MAX,
        });
    }

    /// Queues the events of `b` this stream wants and has not had; returns their bytes.
    fn push_batch(&mut self, b: &Stamped) -> usize {
        let live = &self.state.live;
        if let Some(a) = &b.alert {
            let p = Position { seq: b.seq, idx: 0 };
            let wanted = self
                .filter
                .kinds
                .as_ref()
                .is_none_or(|k| k.contains(&a.kind))
                && self
                    .filter
                    .sensors
                    .as_ref()
                    .is_none_or(|s| s.contains(&a.sensor));
            if wanted && self.seen.is_none_or(|s| (p.seq, p.idx) > (s.seq, s.idx)) {
                self.queue
                    .push_back(Event::default().event("alert").id(live.id(p)).data(&a.data));
                return a.data.len();
            }
            return 0;
        }
        let mut bytes = 0;
        for (idx, ev) in events(&self.state, &b.batch).into_iter().enumerate() {
            let p = Position { seq: b.seq, idx };
            if self.seen.is_some_and(|s| (p.seq, p.idx) <= (s.seq, s.idx)) {
                continue;
            }
            if !self.filter.wants(&ev) {
                continue;
            }
            if let Ok(data) = serde_json::to_string(&ev) {
                bytes += data.len();
                self.queue
                    .push_back(Event::default().event("readings").id(live.id(p)).data(data));
            }
        }
        bytes
    }
}

fn reload(reason: &str) -> Event {
    Event::default()
        .event("reload")
        .data(serde_json::json!({ "reason": reason }).to_string())
}

/// Live readings as Server-Sent Events (`event: readings`, JSON data per sensor).
#[utoipa::path(get, path = "/api/v1/stream", tag = "sensors", params(StreamParams,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event")),
    responses(
        (status = 200, description = "An endless `text/event-stream`. Each `readings` event's data is a LiveEvent and has an `id`; \
`reload` (a resume from too far back) and `lagged` (the client fell behind) mean: re-read `/api/v1/sensors`",
         body = LiveEvent, content_type = "text/event-stream"),
        (status = 400, description = "Unknown kind or parameter", body = ErrorBody)))]
pub async fn stream(
    State(s): State<AppState>,
    headers: HeaderMap,
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
    let live = s.live.clone();
    // Subscribe before reading the log, so no batch falls between the two.
    let rx = live.out.subscribe();
    live.wake.notify_one();
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(p.last_event_id);
    let mut st = StreamState {
        rx,
        filter,
        state: s.clone(),
        queue: VecDeque::new(),
        seen: None,
        replay: None,
        _attached: Attached(live.clone()),
    };
    let retry_ms = 3000;
    st.queue.push_back(
        Event::default()
            .retry(Duration::from_millis(retry_ms))
            .comment("cityhub live stream"),
    );
    if let Some(id) = resume.filter(|id| !id.trim().is_empty()) {
        match live
            .parse_id(&id)
            .and_then(|from| Some((from, live.since(from)?)))
        {
            Some((from, missed)) => match live.resumes.clone().try_acquire_owned() {
                Ok(permit) => {
                    st.seen = Some(from);
                    st.replay = Some(Replay {
                        next: missed.start,
                        end: missed.end,
                        bytes: 0,
                        _permit: permit,
                    });
                }
                Err(_) => st.queue.push_back(reload(
                    "too many streams are resuming at once; re-read /api/v1/sensors",
                )),
            },
            None => st.queue.push_back(reload(
                "the events after this Last-Event-ID are no longer held; re-read /api/v1/sensors",
            )),
        }
    }
    let cancel = s.shutdown.clone();
    let body = futures_util::stream::unfold((st, cancel), |(mut st, cancel)| async move {
        loop {
            if let Some(e) = st.queue.pop_front() {
                return Some((Ok::<_, Infallible>(e), (st, cancel)));
            }
            if cancel.is_cancelled() {
                return None;
            }
            if st.replay_next() || !st.queue.is_empty() {
                continue;
            }
            let got = tokio::select! {
                r = st.rx.recv() => r,
                // Open streams must not hold a graceful shutdown forever.
                _ = cancel.cancelled() => return None,
            };
            match got {
                Ok(b) => {
                    st.push_batch(&b);
                }
                Err(RecvError::Lagged(n)) => {
                    st.queue.push_back(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ids_resume_within_the_log_and_not_across_a_gap() {
        let live = Live::start(Duration::from_secs(60), CancellationToken::new());
        let batch: LiveBatch = Arc::new(Vec::new());
        for _ in 0..3 {
            live.record(batch.clone());
        }
        let p = live
            .parse_id(&live.id(Position { seq: 1, idx: 4 }))
            .unwrap();
        assert_eq!(p, Position { seq: 1, idx: 4 });
        let got: Vec<u64> = live
            .since(p)
            .unwrap()
            .filter_map(|seq| live.at(seq).map(|b| b.seq))
            .collect();
        assert_eq!(got, [1, 2, 3]);
        assert!(live.parse_id("0-1-0").is_none(), "another run's id");
        assert!(
            live.since(Position { seq: 9, idx: 0 }).is_none(),
            "an id from the future"
        );
        live.gap();
        live.record(batch);
        assert!(
            live.since(p).is_none(),
            "batches may be missing after a gap"
        );
        assert!(live.since(Position { seq: 3, idx: 9 }).is_none());
        assert_eq!(live.since(Position { seq: 4, idx: 0 }).unwrap().count(), 1);
    }
}
