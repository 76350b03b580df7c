//! The two stages after the event loop: the batcher decodes messages and
//! closes batches on size or age; the writer commits each batch (retrying
//! with backoff for as long as it takes) and only then acks its messages,
//! in arrival order.

use crate::decode::Decoder;
use crate::metrics::IngestMetrics;
use crate::mqtt::{AckToken, Acker, Inbound};
use bytes::Bytes;
use cityhub_store::{BatchWriter, DeadLetter, LiveBatch, Observation, Source, Store, WriteBatch};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// A batch ready to commit, with the acks it releases.
pub struct Batch {
    pub write: WriteBatch,
    pub acks: Vec<AckToken>,
    rows: usize,
    /// An HTTP submission waits for this batch: it is tried once and the
    /// client is told the outcome (on failure it retries, so nothing is kept).
    reply: Option<(
        oneshot::Sender<Result<HttpOutcome, HttpRefused>>,
        HttpOutcome,
    )>,
}

impl Batch {
    fn new() -> Self {
        Self {
            write: WriteBatch::default(),
            acks: Vec::new(),
            rows: 0,
            reply: None,
        }
    }
}

/// A message that arrived over HTTP (Sensor.Community firmware's custom API).
#[derive(Debug)]
pub struct HttpSubmission {
    pub payload: Bytes,
    /// The firmware's `X-Sensor` header (`esp8266-<chip id>`).
    pub x_sensor: Option<String>,
    pub received_at: chrono::DateTime<chrono::Utc>,
    /// Where it came from (the route), as the topic of its dead letters.
    pub source: String,
    pub reply: oneshot::Sender<Result<HttpOutcome, HttpRefused>>,
}

/// What a committed HTTP submission did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct HttpOutcome {
    /// Readings stored.
    pub stored: usize,
    /// Why parts were refused (they are dead letters now).
    pub rejected: Vec<String>,
}

/// The submission was not committed; the client should send it again later.
#[derive(Debug, Clone, Copy)]
pub struct HttpRefused;

/// The HTTP side's handle on ingestion.
#[derive(Clone)]
pub struct HttpIngest {
    pub(crate) tx: mpsc::Sender<HttpSubmission>,
}

impl HttpIngest {
    /// Hands `s` to the pipeline; `Err` when it cannot take submissions now.
    pub async fn submit(&self, s: HttpSubmission) -> Result<(), HttpRefused> {
        self.tx.send(s).await.map_err(|_| HttpRefused)
    }
}

/// Turns messages into rows and dead letters of the open batch.
pub struct Batcher {
    decoder: Decoder,
    store: Store,
    metrics: IngestMetrics,
}

impl Batcher {
    pub fn new(decoder: Decoder, store: Store, metrics: IngestMetrics) -> Self {
        Self {
            decoder,
            store,
            metrics,
        }
    }

    fn add(&self, batch: &mut Batch, m: Inbound) {
        let topic = String::from_utf8_lossy(&m.publish.topic).into_owned();
        let payload: Bytes = m.publish.payload.clone();
        let d = self.decoder.decode(&topic, &payload, m.received_at);
        batch.acks.push(AckToken::of(&m));
        self.add_decoded(batch, topic, payload, m.received_at, &d);
    }

    /// A batch of its own for one HTTP submission.
    fn http_batch(&self, s: HttpSubmission) -> Batch {
        let d = self.decoder.decode_sensor_community_http(
            &s.payload,
            s.x_sensor.as_deref(),
            s.received_at,
        );
        let mut batch = Batch::new();
        let outcome = HttpOutcome {
            stored: d.readings.len(),
            rejected: d.problems.iter().map(|p| p.reason.clone()).collect(),
        };
        self.add_decoded(&mut batch, s.source, s.payload, s.received_at, &d);
        batch.reply = Some((s.reply, outcome));
        batch
    }

    fn add_decoded(
        &self,
        batch: &mut Batch,
        topic: String,
        payload: Bytes,
        received_at: chrono::DateTime<chrono::Utc>,
        d: &crate::decode::Decoded,
    ) {
        let source = batch.write.sources.len() as u32;
        batch.write.sources.push(Source {
            topic,
            payload,
            received_at,
        });
        if let Some((sensor, kind)) = &d.sensor {
            for r in &d.readings {
                // Every catalogue metric has an id (synced at start), so this always resolves.
                let Some(metric_id) = self.store.metric_id(kind.as_str(), r.metric.as_str()) else {
                    continue;
                };
                batch.write.observations.push(Observation {
                    sensor: sensor.clone(),
                    metric_id,
                    time: r.time,
                    value: r.value,
                    source,
                });
                let location = d.location.map(|p| (p, d.location_fallback));
                batch
                    .write
                    .see_sensor(sensor, kind, location, r.time, source);
            }
            batch.rows += d.readings.len();
        }
        if !d.problems.is_empty() {
            let code = d.problems[0].code;
            let reason = d
                .problems
                .iter()
                .map(|p| p.reason.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            batch.write.dead_letters.push(DeadLetter {
                source,
                code,
                reason,
            });
        }
    }

    /// Reads messages until cancelled or the inbound channel closes, sending closed batches on.
    #[allow(clippy::too_many_arguments)]
    pub async fn run(
        self,
        mut rx: mpsc::UnboundedReceiver<Inbound>,
        mut http_rx: mpsc::Receiver<HttpSubmission>,
        tx: mpsc::Sender<Batch>,
        max_rows: usize,
        max_age: Duration,
        cancel: CancellationToken,
    ) {
        'outer: loop {
            let first = tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                s = http_rx.recv(), if !http_rx.is_closed() => {
                    if let Some(s) = s {
                        if tx.send(self.http_batch(s)).await.is_err() {
                            break;
                        }
                    }
                    continue;
                }
                m = rx.recv() => match m { Some(m) => m, None => break },
            };
            let deadline = tokio::time::Instant::now() + max_age;
            let mut batch = Batch::new();
            self.add(&mut batch, first);
            let mut stop = false;
            while batch.rows < max_rows {
                // Drain what is already queued without touching the timer.
                match rx.try_recv() {
                    Ok(m) => {
                        self.add(&mut batch, m);
                        continue;
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        stop = true;
                        break;
                    }
                    Err(mpsc::error::TryRecvError::Empty) => {}
                }
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => { stop = true; break }
                    _ = tokio::time::sleep_until(deadline) => break,
                    m = rx.recv() => match m {
                        Some(m) => self.add(&mut batch, m),
                        None => { stop = true; break }
                    },
                }
            }
            if tx.send(batch).await.is_err() || stop {
                break 'outer;
            }
        }
        // Messages still queued are not acked; the broker redelivers them.
        // HTTP clients still waiting are told to come back (their reply drops).
        http_rx.close();
        let mut left = 0;
        rx.close();
        while rx.try_recv().is_ok() {
            left += 1;
        }
        self.metrics.acks_pending.dec_by(left);
        tracing::debug!(unprocessed = left, "Batcher stopped.");
    }
}

/// Commits batches in order; acks each batch's messages after its commit.
#[allow(clippy::too_many_arguments)] // one task's whole wiring, passed once at start
pub async fn run_writer(
    mut writer: BatchWriter,
    mut rx: mpsc::Receiver<Batch>,
    acker: Acker,
    metrics: IngestMetrics,
    mut backoff: cityhub_config::Backoff,
    shutdown_grace: Duration,
    live: broadcast::Sender<LiveBatch>,
    cancel: CancellationToken,
) {
    let mut deadline: Option<Instant> = None;
    'batches: while let Some(mut batch) = rx.recv().await {
        if batch.reply.as_ref().is_some_and(|(r, _)| r.is_closed()) {
            // The HTTP client stopped waiting (and was told to send again): storing it now
            // would store it twice.
            continue;
        }
        backoff.reset();
        let mut attempt = 0u32;
        writer.report_latest = live.receiver_count() > 0;
        loop {
            let started = Instant::now();
            match writer.write(&batch.write).await {
                Ok(mut outcome) => {
                    if !outcome.latest.is_empty() {
                        // Nobody listening is not an error: the stream is best effort.
                        let _ = live.send(Arc::new(std::mem::take(&mut outcome.latest)));
                    }
                    metrics
                        .commit_seconds
                        .observe(started.elapsed().as_secs_f64());
                    metrics.batch_rows.observe(batch.rows as f64);
                    metrics.rows_committed.inc_by(outcome.inserted);
                    metrics.rows_duplicate.inc_by(outcome.duplicates);
                    for (code, n) in &outcome.dead_letters {
                        metrics.dead_letter(*code, *n);
                    }
                    metrics.messages_committed.inc_by(batch.acks.len() as u64);
                    if attempt > 0 {
                        tracing::info!(attempts = attempt + 1, "Batch committed after retries.");
                    }
                    acker.ack(&batch.acks).await;
                    if let Some((reply, outcome)) = batch.reply.take() {
                        let _ = reply.send(Ok(outcome));
                    }
                    break;
                }
                Err(e) => {
                    attempt += 1;
                    metrics.db_retries.inc();
                    if let Some((reply, _)) = batch.reply.take() {
                        // Not committed: the HTTP client is told to retry; nothing to keep.
                        tracing::warn!(error = %e, "HTTP submission not committed; answered 503.");
                        let _ = reply.send(Err(HttpRefused));
                        break;
                    }
                    if cancel.is_cancelled() {
                        let d = *deadline.get_or_insert_with(|| Instant::now() + shutdown_grace);
                        if Instant::now() >= d {
                            tracing::warn!(error = %e, messages = batch.acks.len(),
                                "Shutdown grace period over; leaving uncommitted messages unacked for redelivery.");
                            metrics.acks_pending.dec_by(batch.acks.len() as i64);
                            break 'batches;
                        }
                    }
                    let delay = backoff.next_pause();
                    tracing::warn!(error = %e, attempt, retry_in_ms = delay.as_millis() as u64,
                        "Batch commit failed; retrying.");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
    // Whatever is left (shutdown gave up) stays unacked.
    while let Ok(b) = rx.try_recv() {
        metrics.acks_pending.dec_by(b.acks.len() as i64);
    }
    acker.disconnect().await;
}
