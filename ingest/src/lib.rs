//! Ingestion: MQTT 5 session -> decode/validate -> batch -> commit -> ack.
//! docs/ARCHITECTURE.md says which guarantees this crate keeps and why they hold.

pub mod decode;
pub mod metrics;
pub mod mqtt;
pub mod pipeline;

pub use metrics::IngestMetrics;
pub use pipeline::{HttpIngest, HttpOutcome, HttpRefused, HttpSubmission};

use cityhub_config::Settings;
use cityhub_store::{BatchWriter, Store};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Errors that stop ingestion from starting.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("configuration: {0}")]
    Config(String),
}

/// Grace period for committing the open batch when shutting down with the database away.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Starts the event loop, batcher and writer tasks on `tracker`; they stop on
/// `cancel` after committing and acking what they hold. `connected` follows the
/// broker session (for readiness).
pub fn start(
    settings: &Settings,
    store: Store,
    metrics: IngestMetrics,
    connected: Arc<AtomicBool>,
    live: tokio::sync::broadcast::Sender<cityhub_store::LiveBatch>,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> Result<HttpIngest, IngestError> {
    let catalog = settings
        .catalog()
        .map_err(|e| IngestError::Config(e.to_string()))?;
    let limits = decode::Limits {
        max_payload_bytes: settings.ingest.max_payload_bytes,
        max_future: chrono::Duration::seconds(settings.ingest.max_future_s),
        retention: chrono::Duration::days(i64::from(settings.store.retention_days)),
    };
    let decoder = decode::Decoder::new(catalog, limits).with_adapters(settings.adapters.clone());
    let session = mqtt::session(settings, &metrics)?;

    // The event loop must never wait: it also carries the acks that free the pipeline,
    // so a full inbound channel would deadlock it against the writer. The channel is
    // therefore unbounded; what it holds is bounded by the broker's in-flight window
    // (our Receive Maximum, and Mosquitto's max_inflight_messages), watched by acks_pending.
    let (in_tx, in_rx) = mpsc::unbounded_channel();
    // One batch waits while one commits: the batcher fills the next meanwhile.
    let (batch_tx, batch_rx) = mpsc::channel(1);
    let (http_tx, http_rx) = mpsc::channel(256);

    let ms = |v: u64| Duration::from_millis(v);
    tracker.spawn(mqtt::run_event_loop(
        session.event_loop,
        session.client,
        session.epoch,
        settings.subscription_filters(),
        in_tx,
        connected,
        metrics.clone(),
        settings.mqtt.reconnect_backoff(),
        cancel.clone(),
    ));
    let batcher = pipeline::Batcher::new(decoder, store.clone(), metrics.clone());
    tracker.spawn(batcher.run(
        in_rx,
        http_rx,
        batch_tx,
        settings.ingest.batch_max_rows,
        ms(settings.ingest.batch_max_age_ms),
        cancel.clone(),
    ));
    tracker.spawn(pipeline::run_writer(
        BatchWriter::new(store),
        batch_rx,
        session.acker,
        metrics,
        settings.ingest.retry_backoff(),
        SHUTDOWN_GRACE,
        live,
        cancel,
    ));
    Ok(HttpIngest { tx: http_tx })
}
