//! Ingestion: MQTT 5 session -> decode/validate -> batch -> commit -> ack.
//! docs/ARCHITECTURE.md says which guarantees this crate keeps and why they hold.

pub mod decode;
pub mod metrics;
pub mod mqtt;
pub mod pipeline;

pub use metrics::IngestMetrics;
pub use pipeline::{HttpIngest, HttpOutcome, HttpRefused, HttpSubmission};

use cityhub_core::Settings;
use cityhub_store::{BatchWriter, Store, WriterLimits};
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

/// Starts the event loop, batcher and writer tasks on `tracker`; they stop on
/// `cancel` after committing and acking what they hold. `connected` follows the
/// broker session (for readiness).
pub fn start(
    settings: &Settings,
    store: Store,
    metrics: IngestMetrics,
    connected: Arc<AtomicBool>,
    live: cityhub_store::Subscribers,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> Result<HttpIngest, IngestError> {
    let catalog = settings
        .catalog()
        .map_err(|e| IngestError::Config(e.to_string()))?;
    let decoder = decode::Decoder::new(catalog, decode::Limits::from_settings(settings))
        .with_adapters(settings.adapters.clone());
    let session = mqtt::session(settings, &metrics)?;
    for (a, b) in settings.overlapping_filters() {
        tracing::warn!(first = %a, second = %b,
            "Two subscribed topic filters overlap: the broker may deliver a message matching both twice, and a reading without its own timestamp would be stored twice. Narrow one of them.");
    }

    // The event loop must never wait on the pipeline: it also carries the acks that free
    // it. The channel is therefore unbounded; what it holds is bounded by the event loop
    // itself, which stops reading the socket while mqtt.receive_maximum messages are
    // unacked (whatever the broker's own limit), and by the batcher dropping messages of
    // a connection that is gone (the broker sends them again).
    let (in_tx, in_rx) = mpsc::unbounded_channel();
    // One batch waits while one commits: the batcher fills the next meanwhile.
    let (batch_tx, batch_rx) = mpsc::channel(1);
    let (http_tx, http_rx) = mpsc::channel(256);

    let ms = |v: u64| Duration::from_millis(v);
    let event_loop = mqtt::EventLoopTask {
        event_loop: session.event_loop,
        client: session.client,
        epoch: session.epoch.clone(),
        filters: settings.subscription_filters(),
        tx: in_tx,
        connected,
        metrics: metrics.clone(),
        backoff: settings.mqtt.reconnect_backoff(),
        receive_maximum: settings.mqtt.receive_maximum.get(),
    };
    tracker.spawn(event_loop.run(cancel.clone()));
    let ing = &settings.ingest;
    let limits = pipeline::BatchLimits {
        max_rows: ing.batch_max_rows.get(),
        max_messages: ing.batch_max_messages.get(),
        max_bytes: ing.batch_max_bytes.get(),
        max_age: ms(ing.batch_max_age_ms),
        reason_bytes: ing.dead_letter_reason_bytes,
        upload_dead_letters_per_hour: ing.upload_dead_letters_per_hour,
    };
    let batcher = pipeline::Batcher::new(
        decoder,
        store.clone(),
        metrics.clone(),
        limits,
        session.epoch.clone(),
    );
    tracker.spawn(batcher.run(in_rx, http_rx, batch_tx, cancel.clone()));
    let writer = BatchWriter::new(
        store.clone(),
        WriterLimits {
            statement_timeout_ms: ing.statement_timeout_ms.get(),
            lock_timeout_ms: ing.lock_timeout_ms.get(),
            dead_letter_payload_bytes: ing.dead_letter_payload_bytes,
            registration: ing.registration,
            max_sensors: ing.max_sensors,
            sta_outbox: !settings.sta.mqtt_topics.is_empty(),
        },
    );
    let writer = pipeline::WriterTask {
        writer,
        store,
        acker: session.acker,
        metrics,
        backoff: settings.ingest.retry_backoff(),
        iso: pipeline::Isolation {
            poison_after_attempts: ing.poison_after_attempts,
            reason_bytes: ing.dead_letter_reason_bytes,
        },
        // Retrying the open batch after SIGTERM: half the deadline, so the writer gives
        // up (and disconnects cleanly) before the app stops waiting for it.
        shutdown_grace: Duration::from_secs(ing.shutdown_timeout_s.get())
            .max(Duration::from_secs(2))
            / 2,
        live,
    };
    tracker.spawn(writer.run(batch_rx, cancel));
    Ok(HttpIngest { tx: http_tx })
}
