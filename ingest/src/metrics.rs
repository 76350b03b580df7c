//! Prometheus metrics of the ingestion pipeline. Held in a registry that is
//! passed around (no global recorder), so tests can run hubs in parallel.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

/// Handles to every ingestion metric; cheap to clone.
#[derive(Clone)]
pub struct IngestMetrics {
    pub messages_received: Counter,
    pub messages_committed: Counter,
    pub rows_committed: Counter,
    pub rows_duplicate: Counter,
    /// Messages the database refused even as a bare dead letter (acked, not stored).
    pub messages_unstorable: Counter,
    /// Refused HTTP uploads past their client's hourly budget: answered, not kept.
    pub dead_letters_not_kept: Counter,
    pub batch_rows: Histogram,
    pub commit_seconds: Histogram,
    pub acks_pending: Gauge,
    pub acks_stale: Counter,
    pub dead_letters: Family<ReasonLabel, Counter>,
    pub db_retries: Counter,
    pub mqtt_reconnects: Counter,
    pub mqtt_connection_errors: Counter,
    pub mqtt_connected: Gauge,
    pub retained_dropped: Counter,
    /// SenML records skipped on purpose ([`crate::decode::Decoded::ignored`]).
    pub records_ignored: Counter,
    /// Age of the oldest message taken but not yet acknowledged (0 when none).
    pub oldest_unacked_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Receive time (µs since the epoch) of the oldest message of the batch being
    /// committed, 0 when the writer holds none: readiness reads it.
    pub oldest_unacked: std::sync::Arc<std::sync::atomic::AtomicI64>,
    /// Acks handed to the MQTT client and not yet written to the broker: while there
    /// are some, the event loop must keep polling, or the writer would wait for room.
    pub acks_queued: std::sync::Arc<std::sync::atomic::AtomicI64>,
}

impl IngestMetrics {
    /// Records the batch the writer now holds (its oldest receive time), or none.
    pub fn holding(&self, oldest: Option<chrono::DateTime<chrono::Utc>>) {
        use std::sync::atomic::Ordering;
        let micros = oldest.map_or(0, |t| t.timestamp_micros());
        self.oldest_unacked.store(micros, Ordering::Relaxed);
        let age = oldest.map_or(0.0, |t| {
            (chrono::Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0
        });
        self.oldest_unacked_seconds.set(age);
    }

    /// Creates the metrics and registers them under `cityhub_`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            messages_received: Counter::default(),
            messages_committed: Counter::default(),
            rows_committed: Counter::default(),
            rows_duplicate: Counter::default(),
            messages_unstorable: Counter::default(),
            dead_letters_not_kept: Counter::default(),
            batch_rows: Histogram::new(exponential_buckets(1.0, 4.0, 9)),
            commit_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            acks_pending: Gauge::default(),
            acks_stale: Counter::default(),
            dead_letters: Family::default(),
            db_retries: Counter::default(),
            mqtt_reconnects: Counter::default(),
            mqtt_connection_errors: Counter::default(),
            mqtt_connected: Gauge::default(),
            retained_dropped: Counter::default(),
            records_ignored: Counter::default(),
            oldest_unacked_seconds: Gauge::default(),
            oldest_unacked: Default::default(),
            acks_queued: Default::default(),
        };
        let r = registry.sub_registry_with_prefix("cityhub");
        r.register(
            "records_ignored",
            "SenML records skipped on purpose: string, boolean or data values, and LwM2M resources that describe a sensor",
            m.records_ignored.clone(),
        );
        r.register(
            "retained_dropped",
            "Retained messages acknowledged and not stored (a retained copy is no new reading)",
            m.retained_dropped.clone(),
        );
        r.register(
            "oldest_unacked_seconds",
            "Age of the oldest message the hub holds unacknowledged",
            m.oldest_unacked_seconds.clone(),
        );
        r.register(
            "mqtt_messages_received",
            "MQTT messages received",
            m.messages_received.clone(),
        );
        r.register(
            "messages_committed",
            "Messages whose transaction committed (then acked)",
            m.messages_committed.clone(),
        );
        r.register(
            "observations_committed",
            "Observation rows newly stored",
            m.rows_committed.clone(),
        );
        r.register(
            "observations_duplicate",
            "Observation rows already stored (redeliveries)",
            m.rows_duplicate.clone(),
        );
        r.register(
            "messages_unstorable",
            "Messages the database refused even as a bare dead letter: acknowledged, not stored, logged",
            m.messages_unstorable.clone(),
        );
        r.register(
            "dead_letters_not_kept",
            "Refused HTTP uploads not kept as dead letters: their client had used its hourly budget (ingest.upload_dead_letters_per_hour)",
            m.dead_letters_not_kept.clone(),
        );
        r.register(
            "batch_rows",
            "Observation rows per committed batch",
            m.batch_rows.clone(),
        );
        r.register(
            "commit_seconds",
            "Time to commit one batch",
            m.commit_seconds.clone(),
        );
        r.register(
            "acks_pending",
            "Messages received and not yet acknowledged",
            m.acks_pending.clone(),
        );
        r.register(
            "acks_stale",
            "Acks skipped because the connection they belong to is gone (the broker redelivers)",
            m.acks_stale.clone(),
        );
        r.register(
            "dead_letters",
            "Dead letters written, by reason",
            m.dead_letters.clone(),
        );
        r.register(
            "db_retries",
            "Batch commits retried after a database error",
            m.db_retries.clone(),
        );
        r.register(
            "mqtt_reconnects",
            "Successful MQTT reconnections",
            m.mqtt_reconnects.clone(),
        );
        r.register(
            "mqtt_connection_errors",
            "MQTT connection errors",
            m.mqtt_connection_errors.clone(),
        );
        r.register(
            "mqtt_connected",
            "1 while connected to the broker",
            m.mqtt_connected.clone(),
        );
        m
    }

    pub fn dead_letter(&self, reason: cityhub_core::RejectReason, n: u64) {
        self.dead_letters
            .get_or_create(&ReasonLabel {
                reason: reason.code().to_owned(),
            })
            .inc_by(n);
    }
}
