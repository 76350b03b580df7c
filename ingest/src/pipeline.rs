//! The two stages after the event loop: the batcher decodes messages and
//! closes batches on rows, messages, bytes or age; the writer commits each
//! batch and only then acks its messages, in arrival order. A batch that fails
//! for a transient reason (connection, lock, read-only, disk) is retried with
//! backoff; one the database refuses for its data is split until the messages
//! at fault are found, and those become dead letters, so no input can stall
//! the pipeline.

use crate::decode::Decoder;
use crate::metrics::IngestMetrics;
use crate::mqtt::{AckToken, Acker, Inbound};
use bytes::Bytes;
use cityhub_core::RejectReason;
use cityhub_store::{
    BatchWriter, DeadLetter, LiveBatch, Observation, Source, Store, StoreError, WriteBatch,
    WriteOutcome,
};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// A batch ready to commit, with the acks it releases.
pub struct Batch {
    pub write: WriteBatch,
    pub acks: Vec<AckToken>,
    rows: usize,
    /// Acks of messages that are not readings (see `Inbound::skip`).
    skipped: usize,
    /// Payload and reason bytes held.
    bytes: usize,
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
            skipped: 0,
            bytes: 0,
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
    /// The device whose password the upload carried: it may send only its own readings.
    pub device: Option<String>,
    /// Whose budget of kept dead letters a refusal takes from: the device when it
    /// signed in, else the client's address.
    pub origin: String,
    /// Claimed by the writer before COMMIT, or abandoned by the client's deadline.
    pub claim: cityhub_store::Claim,
    pub reply: oneshot::Sender<Result<HttpOutcome, HttpRefused>>,
}

/// What a committed HTTP submission did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct HttpOutcome {
    /// Readings stored.
    pub stored: usize,
    /// Why parts were refused (they are dead letters now).
    pub rejected: Vec<String>,
    /// Set when the signed-in device may not send this upload (nothing was stored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forbidden: Option<String>,
    /// Set when the refused parts were not kept as a dead letter, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<String>,
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
    /// Hands `s` to the pipeline at once; `Err` when it cannot take submissions now
    /// (stopped, or as many waiting as the queue holds): the client is told to retry.
    pub fn submit(&self, s: HttpSubmission) -> Result<(), HttpRefused> {
        self.tx.try_send(s).map_err(|_| HttpRefused)
    }
}

/// When a batch closes, and how much of a reason a dead letter keeps.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub max_rows: usize,
    pub max_messages: usize,
    pub max_bytes: usize,
    pub max_age: Duration,
    pub reason_bytes: usize,
    /// Dead letters kept per hour per HTTP client (`ingest.upload_dead_letters_per_hour`).
    pub upload_dead_letters_per_hour: u32,
}

impl BatchLimits {
    fn full(&self, b: &Batch) -> bool {
        b.rows >= self.max_rows || b.acks.len() >= self.max_messages || b.bytes >= self.max_bytes
    }
}

/// Turns messages into rows and dead letters of the open batch.
pub struct Batcher {
    decoder: Decoder,
    store: Store,
    metrics: IngestMetrics,
    limits: BatchLimits,
    /// The broker connection now; messages of an older one are dropped unstored.
    epoch: Arc<std::sync::Mutex<u64>>,
    /// Each HTTP client's budget of kept dead letters; None keeps none.
    upload_dead_letters: Option<governor::DefaultKeyedRateLimiter<String>>,
}

impl Batcher {
    pub fn new(
        decoder: Decoder,
        store: Store,
        metrics: IngestMetrics,
        limits: BatchLimits,
        epoch: Arc<std::sync::Mutex<u64>>,
    ) -> Self {
        let upload_dead_letters = std::num::NonZeroU32::new(limits.upload_dead_letters_per_hour)
            .map(|n| governor::RateLimiter::keyed(governor::Quota::per_hour(n).allow_burst(n)));
        Self {
            decoder,
            store,
            metrics,
            limits,
            epoch,
            upload_dead_letters,
        }
    }

    /// Whether `origin` may have one more dead letter kept now. Clients that have not
    /// refused anything lately are forgotten once the table grows large.
    fn dead_letter_allowed(&self, origin: &str) -> bool {
        let Some(budget) = &self.upload_dead_letters else {
            return false;
        };
        if budget.len() > 10_000 {
            budget.retain_recent();
        }
        budget.check_key(&origin.to_owned()).is_ok()
    }

    /// A message of a connection that is gone: its ack could not be sent, and the
    /// broker delivers it again on the new one. Storing it now would only hold memory.
    fn stale(&self, m: &Inbound) -> bool {
        let stale = m.epoch != *self.epoch.lock().expect("epoch lock");
        if stale {
            self.metrics.acks_stale.inc();
            self.metrics.acks_pending.dec();
        }
        stale
    }

    /// Adds `m` to the batch unless it is stale.
    fn take(&self, batch: &mut Batch, m: Inbound) {
        if !self.stale(&m) {
            self.add(batch, m);
        }
    }

    fn add(&self, batch: &mut Batch, m: Inbound) {
        if m.skip {
            batch.acks.push(AckToken::of(&m));
            batch.skipped += 1;
            return;
        }
        let topic = String::from_utf8_lossy(&m.publish.topic).into_owned();
        let payload: Bytes = m.publish.payload.clone();
        let d = self.decoder.decode(&topic, &payload, m.received_at);
        self.metrics.records_ignored.inc_by(u64::from(d.ignored));
        batch.acks.push(AckToken::of(&m));
        self.add_decoded(batch, topic, payload, m.received_at, &d, true);
    }

    /// A batch of its own for one HTTP submission; None when it was answered at once
    /// (an authenticated device sending for another sensor: nothing is stored, and no
    /// dead letter is kept for it).
    fn http_batch(&self, s: HttpSubmission) -> Option<Batch> {
        let d = self.decoder.decode_sensor_community_http(
            &s.payload,
            s.x_sensor.as_deref(),
            s.received_at,
        );
        if let Some(device) = &s.device {
            let sensor = d.sensor.as_ref().map(|(id, _)| id.as_str());
            if sensor != Some(device.as_str()) {
                let _ = s.reply.send(Ok(HttpOutcome {
                    forbidden: Some(format!(
                        "signed in as device {device:?}, but the upload is for {}",
                        sensor.map_or("no sensor".to_owned(), |s| format!("{s:?}"))
                    )),
                    ..Default::default()
                }));
                return None;
            }
        }
        let mut batch = Batch::new();
        // Two value types of one metric (SDS_P1 and PMS_P1) at one time are one row.
        let rows: std::collections::HashSet<_> =
            d.readings.iter().map(|r| (&r.metric, r.time)).collect();
        let mut outcome = HttpOutcome {
            stored: rows.len(),
            rejected: d
                .problems
                .iter()
                .map(|p| cityhub_store::truncate(p.reason.clone(), self.limits.reason_bytes))
                .chain(d.unlisted_reason())
                .collect(),
            forbidden: None,
            dead_letter: None,
        };
        let keep = d.problems.is_empty() || self.dead_letter_allowed(&s.origin);
        if !keep {
            self.metrics.dead_letters_not_kept.inc();
            outcome.dead_letter = Some(format!(
                "not kept: more than {} refused uploads an hour from this client",
                self.limits.upload_dead_letters_per_hour
            ));
        }
        self.add_decoded(&mut batch, s.source, s.payload, s.received_at, &d, keep);
        batch.reply = Some((s.reply, outcome));
        batch.write.claim = Some(s.claim);
        Some(batch)
    }

    fn add_decoded(
        &self,
        batch: &mut Batch,
        topic: String,
        payload: Bytes,
        received_at: chrono::DateTime<chrono::Utc>,
        d: &crate::decode::Decoded,
        keep_dead_letter: bool,
    ) {
        let source = batch.write.sources.len() as u32;
        batch.bytes += payload.len();
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
        if let Some(first) = d.problems.first().filter(|_| keep_dead_letter) {
            let (reason, full) = joined_reasons(d, self.limits.reason_bytes);
            let mut dl = DeadLetter::new(source, first.code, reason, self.limits.reason_bytes);
            dl.reason_bytes = full;
            batch.bytes += dl.reason.len();
            batch.write.dead_letters.push(dl);
        }
    }

    /// Reads messages until cancelled or the inbound channel closes, sending closed batches on.
    pub async fn run(
        self,
        mut rx: mpsc::UnboundedReceiver<Inbound>,
        mut http_rx: mpsc::Receiver<HttpSubmission>,
        tx: mpsc::Sender<Batch>,
        cancel: CancellationToken,
    ) {
        let max_age = self.limits.max_age;
        'outer: loop {
            let first = tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                s = http_rx.recv(), if !http_rx.is_closed() => {
                    if let Some(s) = s {
                        let Some(batch) = self.http_batch(s) else {
                            continue;
                        };
                        if tx.send(batch).await.is_err() {
                            break;
                        }
                    }
                    continue;
                }
                m = rx.recv() => match m {
                    Some(m) if self.stale(&m) => continue,
                    Some(m) => m,
                    None => break,
                },
            };
            let deadline = tokio::time::Instant::now() + max_age;
            let mut batch = Batch::new();
            self.add(&mut batch, first);
            let mut stop = false;
            while !self.limits.full(&batch) {
                // Drain what is already queued without touching the timer.
                match rx.try_recv() {
                    Ok(m) => {
                        self.take(&mut batch, m);
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
                        Some(m) => self.take(&mut batch, m),
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

/// The reasons of a message's problems joined with `; ` (and how many more were only
/// counted), cut at `max` bytes; and the length the whole would have had (a flood of
/// problems never builds it).
fn joined_reasons(d: &crate::decode::Decoded, max: usize) -> (String, usize) {
    let unlisted = d.unlisted_reason();
    let parts = d
        .problems
        .iter()
        .map(|p| p.reason.as_str())
        .chain(unlisted.as_deref());
    let full = parts.clone().map(|r| r.len() + 2).sum::<usize>() - 2;
    let mut out = String::new();
    for r in parts {
        if !out.is_empty() {
            out.push_str("; ");
        }
        out.push_str(r);
        if out.len() > max {
            break;
        }
    }
    (cityhub_store::truncate(out, max), full)
}

/// How the writer treats failures.
#[derive(Debug, Clone, Copy)]
pub struct Isolation {
    /// A batch whose commit loses the connection this many times in a row while the
    /// database answers a ping is split like a refused one.
    pub poison_after_attempts: u32,
    pub reason_bytes: usize,
}

type Commit<'a> = Pin<Box<dyn Future<Output = Result<WriteOutcome, StoreError>> + Send + 'a>>;

/// Commits `b`, or, when the database refuses its rows (`fault`), commits its halves,
/// down to single messages whose rows become a dead letter with the database's
/// reason. Every part is idempotent, so a transient error midway lets the caller
/// retry the whole batch.
fn isolate<'a>(
    writer: &'a mut BatchWriter,
    b: &'a WriteBatch,
    fault: StoreError,
    store: &'a Store,
    iso: Isolation,
) -> Commit<'a> {
    Box::pin(async move {
        let n = b.sources.len();
        if n <= 1 {
            let reason = format!(
                "the database refused this message's rows: {}",
                fault.server_message()
            );
            tracing::warn!(reason = %reason, "A message the database refuses became a dead letter.");
            let mut only = WriteBatch {
                sources: b.sources.clone(),
                dead_letters: b.dead_letters.clone(),
                ..Default::default()
            };
            only.dead_letters.push(DeadLetter::new(
                0,
                RejectReason::DatabaseRefused,
                reason,
                iso.reason_bytes,
            ));
            return match writer.write(&only).await {
                Err(e) if e.is_permanent() => last_resort(writer, &only, e).await,
                other => other,
            };
        }
        let mut total = WriteOutcome::default();
        for half in [b.sources_in(0..n / 2), b.sources_in(n / 2..n)] {
            let outcome = match writer.write(&half).await {
                Ok(o) => o,
                Err(e) if is_fault(&e, store, iso, iso.poison_after_attempts).await => {
                    isolate(writer, &half, e, store, iso).await?
                }
                Err(e) => return Err(e),
            };
            total.merge(outcome);
        }
        Ok(total)
    })
}

/// The message's dead letter was refused too (a rule of the database's own on
/// `dead_letters`, say): one more try with nothing of the message but the first bytes
/// of its topic, and if the database refuses even that, the message is acknowledged
/// and counted as unstorable rather than retried forever behind every later one.
async fn last_resort(
    writer: &mut BatchWriter,
    only: &WriteBatch,
    fault: StoreError,
) -> Result<WriteOutcome, StoreError> {
    let s = &only.sources[0];
    let bare = WriteBatch {
        sources: vec![cityhub_store::Source {
            topic: cityhub_store::truncate(s.topic.clone(), 64),
            payload: Default::default(),
            received_at: s.received_at,
        }],
        dead_letters: vec![DeadLetter::new(
            0,
            RejectReason::DatabaseRefused,
            "the database refused this message and its dead letter; payload not kept".into(),
            usize::MAX,
        )],
        ..Default::default()
    };
    match writer.write(&bare).await {
        Err(e) if e.is_permanent() => {
            tracing::error!(error = %e, first_error = %fault, topic_bytes = s.topic.len(),
                "The database refuses even a bare dead letter for this message; acknowledged and counted as unstorable.");
            Ok(WriteOutcome {
                unstorable: 1,
                ..Default::default()
            })
        }
        other => other,
    }
}

/// Whether `e` is the data's fault: a data error, or (after `attempts` lost
/// connections in a row) a lost connection while the database answers otherwise.
async fn is_fault(e: &StoreError, store: &Store, iso: Isolation, attempts: u32) -> bool {
    e.is_permanent()
        || (e.is_connection_lost()
            && attempts >= iso.poison_after_attempts
            && store.ping().await.is_ok())
}

/// What the writer task owns: it commits each batch in one transaction, retries
/// with backoff, isolates messages the database refuses, and acks what committed.
pub struct WriterTask {
    pub writer: BatchWriter,
    pub store: Store,
    pub acker: Acker,
    pub metrics: IngestMetrics,
    pub backoff: cityhub_core::Backoff,
    pub iso: Isolation,
    /// After SIGTERM a failing batch is retried this long, then left unacked.
    pub shutdown_grace: Duration,
    pub live: cityhub_store::Subscribers,
}

/// How the attempts at one batch went so far.
#[derive(Default)]
struct Attempts {
    count: u32,
    lost_in_a_row: u32,
    refused_once: bool,
    isolated: bool,
}

impl WriterTask {
    /// Commits batches until the channel closes or shutdown gives up on one.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Batch>, cancel: CancellationToken) {
        let mut deadline: Option<Instant> = None;
        while let Some(batch) = rx.recv().await {
            if batch.reply.as_ref().is_some_and(|(r, _)| r.is_closed()) {
                // The HTTP client stopped waiting (and was told to send again): storing it now
                // would store it twice.
                continue;
            }
            if !self.commit(batch, &cancel, &mut deadline).await {
                break;
            }
        }
        // Whatever is left (shutdown gave up) stays unacked.
        while let Ok(b) = rx.try_recv() {
            self.metrics.acks_pending.dec_by(b.acks.len() as i64);
        }
        self.acker.disconnect().await;
    }

    /// Commits one batch, retrying until it commits; false when shutdown gave up on it.
    async fn commit(
        &mut self,
        mut batch: Batch,
        cancel: &CancellationToken,
        deadline: &mut Option<Instant>,
    ) -> bool {
        self.backoff.reset();
        let oldest = batch.write.sources.iter().map(|s| s.received_at).min();
        let mut tries = Attempts::default();
        self.writer.report_latest =
            self.live.live.receiver_count() > 0 || self.live.committed.receiver_count() > 0;
        loop {
            self.metrics.holding(oldest);
            let started = Instant::now();
            match self.write_or_isolate(&batch, &mut tries).await {
                Ok(outcome) => {
                    self.committed(&mut batch, outcome, started, &tries).await;
                    return true;
                }
                Err(e) => {
                    tries.count += 1;
                    self.metrics.db_retries.inc();
                    if let Some((reply, _)) = batch.reply.take() {
                        // Not committed: the HTTP client is told to retry; nothing to keep.
                        tracing::warn!(error = %e, "HTTP submission not committed; answered 503.");
                        let _ = reply.send(Err(HttpRefused));
                        return true;
                    }
                    if cancel.is_cancelled() {
                        let d =
                            *deadline.get_or_insert_with(|| Instant::now() + self.shutdown_grace);
                        if Instant::now() >= d {
                            tracing::warn!(error = %e, messages = batch.acks.len(),
                                "Shutdown grace period over; leaving uncommitted messages unacked for redelivery.");
                            self.metrics.acks_pending.dec_by(batch.acks.len() as i64);
                            return false;
                        }
                    }
                    let delay = self.backoff.next_pause();
                    tracing::warn!(error = %e, attempt = tries.count, retry_in_ms = delay.as_millis() as u64,
                        "Batch commit failed; retrying.");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// One attempt; a batch the database refuses is split to find the messages at fault.
    async fn write_or_isolate(
        &mut self,
        batch: &Batch,
        tries: &mut Attempts,
    ) -> Result<WriteOutcome, StoreError> {
        let e = match self.writer.write(&batch.write).await {
            Err(e) => e,
            ok => return ok,
        };
        tries.lost_in_a_row = if e.is_connection_lost() {
            tries.lost_in_a_row + 1
        } else {
            0
        };
        // A data error is believed only when it repeats on a fresh session (the writer
        // reset itself): "no partition for row" after a partition was dropped, for one,
        // goes away by itself.
        let fault = if e.is_permanent() {
            std::mem::replace(&mut tries.refused_once, true)
        } else {
            is_fault(&e, &self.store, self.iso, tries.lost_in_a_row).await
        };
        if !fault {
            return Err(e);
        }
        tracing::warn!(error = %e, messages = batch.write.sources.len(),
            "The database refuses this batch; splitting it to find the messages at fault.");
        tries.isolated = true;
        isolate(&mut self.writer, &batch.write, e, &self.store, self.iso).await
    }

    /// After the commit: the live stream and the alert engine hear of it, the metrics
    /// count it, the messages are acked, an HTTP upload gets its answer.
    async fn committed(
        &mut self,
        batch: &mut Batch,
        mut outcome: WriteOutcome,
        started: Instant,
        tries: &Attempts,
    ) {
        let (metrics, live) = (&self.metrics, &self.live);
        let latest: LiveBatch = Arc::new(std::mem::take(&mut outcome.latest));
        if !latest.is_empty() {
            // Nobody listening is not an error: the stream is best effort.
            let _ = live.live.send(latest.clone());
        }
        if live.committed.receiver_count() > 0 {
            // After an isolation some readings were refused: only the latest values say
            // what was stored.
            let readings = if tries.isolated {
                Vec::new()
            } else {
                std::mem::take(&mut batch.write.observations)
            };
            let _ = live
                .committed
                .send(Arc::new(cityhub_store::Committed { readings, latest }));
        }
        metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        metrics.batch_rows.observe(batch.rows as f64);
        metrics.rows_committed.inc_by(outcome.inserted);
        metrics.rows_duplicate.inc_by(outcome.duplicates);
        metrics.messages_unstorable.inc_by(outcome.unstorable);
        for (code, n) in &outcome.dead_letters {
            metrics.dead_letter(*code, *n);
        }
        metrics
            .messages_committed
            .inc_by((batch.acks.len() - batch.skipped) as u64);
        if tries.count > 0 {
            tracing::info!(attempts = tries.count + 1, "Batch committed after retries.");
        }
        self.acker.ack(&batch.acks).await;
        self.metrics.holding(None);
        if let Some((reply, outcome)) = batch.reply.take() {
            let _ = reply.send(Ok(outcome));
        }
    }
}
