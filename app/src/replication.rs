//! Every few seconds each hub asks the primary whether what it acknowledges would
//! survive a failover, and the standbys how far behind the API's reads are; `/readyz`
//! shows the answer and `/metrics` the figures. A warning, never a refusal: a
//! single-node install is a legitimate choice.

use cityhub_store::replication::Replication;
use cityhub_store::Store;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often each hub looks: a failover or a lagging standby shows within this.
pub const EVERY: Duration = Duration::from_secs(5);

/// What `/readyz` reads; `None` until the first look.
pub type SharedReplication = Arc<RwLock<Option<Replication>>>;

#[derive(Clone)]
pub struct ReplicationMetrics {
    durable: Gauge,
    standbys: Gauge,
    read_lag: Gauge<f64, AtomicU64>,
}

impl ReplicationMetrics {
    pub fn register(r: &mut Registry) -> Self {
        let m = Self {
            durable: Gauge::default(),
            standbys: Gauge::default(),
            read_lag: Gauge::default(),
        };
        let r = r.sub_registry_with_prefix("cityhub");
        r.register(
            "database_durable_on_failover",
            "1 when every acknowledged commit is also on a synchronous standby; 0 when a failover could lose acknowledged readings",
            m.durable.clone(),
        );
        r.register(
            "database_standbys",
            "Standbys streaming from the primary",
            m.standbys.clone(),
        );
        r.register(
            "database_read_lag_seconds",
            "How far the standby the public API reads from is behind the primary (0 when reads go to the primary)",
            m.read_lag.clone(),
        );
        m
    }
}

/// Looks every `every` until cancelled; logs when durability changes (and at the first
/// look), as a warning when standbys stream but a failover could lose acknowledged readings.
pub async fn watch(
    store: Store,
    every: Duration,
    status: SharedReplication,
    metrics: ReplicationMetrics,
    cancel: CancellationToken,
) {
    let mut last: Option<bool> = None;
    loop {
        match store.replication().await {
            Ok(r) => {
                metrics.durable.set(i64::from(r.durable_on_failover));
                metrics.standbys.set(r.standbys);
                metrics.read_lag.set(r.read_lag_s.unwrap_or(0.0));
                if last != Some(r.durable_on_failover) {
                    match &r.warning {
                        // No standby at all is a single-node install, chosen on purpose (the
                        // demo is one): said in /readyz, not as a warning in the log.
                        Some(w) if r.standbys == 0 => {
                            tracing::info!(synchronous_commit = %r.synchronous_commit, "Single node: {w}.")
                        }
                        Some(w) => {
                            tracing::warn!(synchronous_commit = %r.synchronous_commit, synchronous_standby_names = %r.synchronous_standby_names, "Acknowledged readings could be lost on failover: {w}.")
                        }
                        None => {
                            tracing::info!(synchronous_standby_names = %r.synchronous_standby_names, "Every acknowledged commit is on a synchronous standby.")
                        }
                    }
                    last = Some(r.durable_on_failover);
                }
                *status.write().unwrap_or_else(|p| p.into_inner()) = Some(r);
            }
            // The primary is away (failing over): readiness already says so.
            Err(e) => tracing::debug!(error = %e, "Replication status unavailable."),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = cancel.cancelled() => break,
        }
    }
}
