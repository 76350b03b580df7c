//! The hub as a library: [`start`] wires storage, ingestion and the HTTP API
//! for the given settings and runs them until the cancellation token fires, so
//! the `serve` command, the demo and tests all run the same hub (tests in-process
//! on port 0, see `cityhub-testkit`).

pub use cityhub_api::HistoryLoad;

pub mod alerts;
pub mod devices;
mod http;
pub mod maintenance;
mod ngsi_notify;
pub mod replication;
pub mod sta_mqtt;
mod uploads;

use cityhub_core::Settings;
use cityhub_store::Store;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Why the hub could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("kind catalogue: {0}")]
    Catalog(#[from] cityhub_core::kinds::CatalogError),
    #[error("{0}")]
    Alerts(String),
    #[error("binding HTTP on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("opening the database: {0}")]
    Store(#[from] cityhub_store::StoreError),
    #[error("starting ingestion: {0}")]
    Ingest(#[from] cityhub_ingest::IngestError),
    #[error("the hub's task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("shutdown took longer than {0} s; stopped without waiting for the rest (nothing uncommitted was acked)")]
    ShutdownDeadline(u64),
}

/// A started hub. It stops when the token given to [`start`] is cancelled.
pub struct Hub {
    /// Where the HTTP server listens (the real port when `http.addr` asked for port 0).
    pub addr: SocketAddr,
    /// True while subscribed on a live broker session.
    pub mqtt_connected: Arc<AtomicBool>,
    /// What the map's status says about a history being loaded (the demo sets it).
    pub history: Arc<std::sync::RwLock<Option<cityhub_api::HistoryLoad>>>,
    /// The same for older history loaded behind the live hub.
    pub older: Arc<std::sync::RwLock<Option<cityhub_api::HistoryLoad>>>,
    /// Messages whose batch committed (the `cityhub_messages_committed_total` counter).
    pub messages_committed: prometheus_client::metrics::counter::Counter,
    task: JoinHandle<Result<(), AppError>>,
}

impl Hub {
    /// Waits until every task drained and stopped.
    pub async fn stopped(self) -> Result<(), AppError> {
        self.task.await?
    }

    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// Binds the HTTP server, then (in the background) opens the database, retrying until
/// it answers, and starts ingestion. Returns once the server listens.
pub async fn start(settings: Settings, cancel: CancellationToken) -> Result<Hub, AppError> {
    let catalog = settings.catalog()?;
    let alert_rules =
        cityhub_core::alerts::rules(&settings.alerts, &catalog).map_err(AppError::Alerts)?;
    let listener = tokio::net::TcpListener::bind(&settings.http.addr)
        .await
        .map_err(|source| AppError::Bind {
            addr: settings.http.addr.clone(),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| AppError::Bind {
        addr: settings.http.addr.clone(),
        source,
    })?;
    tracing::info!(addr = %addr, "HTTP server listening.");

    let tracker = TaskTracker::new();
    let mut registry = Registry::default();
    let metrics = cityhub_ingest::IngestMetrics::register(&mut registry);
    let upkeep = maintenance::MaintenanceMetrics::register(&mut registry);
    let alert_metrics = alerts::AlertMetrics::register(&mut registry);
    let replication_metrics = replication::ReplicationMetrics::register(&mut registry);
    let sta_metrics = sta_mqtt::StaMqttMetrics::register(&mut registry);
    let sta_root = format!("{}/sta/v1.1", public_base(&settings, addr));
    let mqtt_connected = Arc::new(AtomicBool::new(false));
    let snapshot = cityhub_api::snapshot::Snapshot::new(
        Duration::from_secs(settings.http.snapshot_reload_s.max(1)),
        Duration::from_millis(settings.http.snapshot_max_lag_ms),
        catalog.iter().map(|k| k.name.to_string()).collect(),
        // The metric the map's judge (web/src/state.js) reads: the rule's, else the main one.
        catalog
            .iter()
            .filter_map(|k| {
                let m = k.def.map.as_ref().map(|r| r.metric().to_owned());
                Some((k.name.to_string(), m.or_else(|| k.def.main_metric.clone())?))
            })
            .collect(),
        cancel.clone(),
    );
    let state = cityhub_api::AppState {
        store: Arc::new(tokio::sync::OnceCell::new()),
        registry: Arc::new(registry),
        mqtt_connected: mqtt_connected.clone(),
        uploads: Arc::new(tokio::sync::OnceCell::new()),
        settings: Arc::new(settings.clone()),
        catalog: Arc::new(catalog),
        live: cityhub_api::live::Live::start(
            Duration::from_secs(settings.http.stream_resume_s),
            cancel.clone(),
        ),
        shutdown: cancel.clone(),
        oldest_unacked: metrics.oldest_unacked.clone(),
        maintenance: Default::default(),
        replication: Default::default(),
        history: Default::default(),
        older: Default::default(),
        snapshot,
        map: cityhub_api::web::map_source(settings.http.web_dir.as_deref()),
        notifier: cityhub_store::alerts::Notifier::new(settings.notify.clone()),
        indicator_slots: Arc::new(tokio::sync::Semaphore::new(
            cityhub_api::indicators::MAX_CONCURRENT,
        )),
        indicator_cache: cityhub_api::indicators::Cache::new(settings.indicators.cache_s),
        downloads: Default::default(),
        pages: Default::default(),
        accounts: Default::default(),
        sta_catalog: Default::default(),
        device_secrets: Default::default(),
    };
    let history = state.history.clone();
    let older = state.older.clone();
    let messages_committed = metrics.messages_committed.clone();
    tracker.spawn(http::serve(
        listener,
        cityhub_api::router(state.clone()),
        Duration::from_secs(settings.http.header_timeout_s.get()),
        Arc::new(settings.http.trusted_proxy_nets()),
        cancel.clone(),
    ));

    if settings.mqtt.dynamic_security {
        let s = settings.clone();
        tracker.spawn(async move {
            match devices::grant_hub(&s).await {
                Ok(()) => tracing::info!(role = devices::HUB_ROLE, "Broker: the hub may publish its alerts."),
                Err(e) => tracing::warn!(error = %e, "Broker: could not grant the hub its topics; alerts over MQTT will be refused."),
            }
        });
    }

    // A second before the deadline, so the process can still end within it.
    let deadline_s = settings.ingest.shutdown_timeout_s.get();
    let deadline = Duration::from_secs(deadline_s);
    let deadline = deadline
        .saturating_sub(Duration::from_secs(1))
        .max(deadline / 2);
    let task = tokio::spawn(async move {
        let started = run_pipeline(
            &settings,
            &state,
            metrics,
            (upkeep, replication_metrics),
            Outbound {
                alert_rules,
                alert_metrics,
                sta_metrics,
                sta_root,
            },
            &tracker,
            &cancel,
        )
        .await;
        tracker.close();
        // Drain, but never longer than the deadline after the stop request: a locked
        // table or a slow client must not hold the process.
        tokio::select! {
            _ = tracker.wait() => {}
            _ = async { cancel.cancelled().await; tokio::time::sleep(deadline).await } => {
                tracing::warn!(deadline_s, "Shutdown deadline passed; stopping now.");
                return Err(AppError::ShutdownDeadline(deadline_s));
            }
        }
        tracing::info!("Stopped.");
        started
    });
    Ok(Hub {
        addr,
        mqtt_connected,
        history,
        older,
        messages_committed,
        task,
    })
}

/// Where clients reach this hub, for links in what it publishes outside a request:
/// `http.public_url`, else the address it listens on (`localhost` for all interfaces).
fn public_base(settings: &Settings, addr: std::net::SocketAddr) -> String {
    match &settings.http.public_url {
        Some(u) => u.as_str().trim_end_matches('/').to_owned(),
        None if addr.ip().is_unspecified() => format!("http://localhost:{}", addr.port()),
        None => format!("http://{addr}"),
    }
}

/// Runs the hub until `cancel`, then drains.
pub async fn serve(settings: Settings, cancel: CancellationToken) -> Result<(), AppError> {
    start(settings, cancel).await?.stopped().await
}

/// What the hub sends out after commit: alerts and SensorThings Observations.
struct Outbound {
    alert_rules: Vec<cityhub_core::alerts::AlertRule>,
    alert_metrics: alerts::AlertMetrics,
    sta_metrics: sta_mqtt::StaMqttMetrics,
    /// The STA service root the published Observations link to.
    sta_root: String,
}

/// Opens the store (the database may come up after the hub: keep trying, stay
/// stoppable), then starts ingestion and the retention job on `tracker`.
async fn run_pipeline(
    settings: &Settings,
    state: &cityhub_api::AppState,
    metrics: cityhub_ingest::IngestMetrics,
    (upkeep, replication_metrics): (
        maintenance::MaintenanceMetrics,
        replication::ReplicationMetrics,
    ),
    out: Outbound,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) -> Result<(), AppError> {
    let Outbound {
        alert_rules,
        alert_metrics,
        sta_metrics,
        sta_root,
    } = out;
    let mut backoff = settings.ingest.retry_backoff();
    let store = loop {
        match Store::open(settings, &state.catalog).await {
            Ok(s) => break s,
            Err(e) if e.is_connection_lost() => {
                let delay = backoff.next_pause();
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "Database unavailable; retrying.");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = cancel.cancelled() => return Ok(()),
                }
            }
            Err(e) => {
                // Nothing can run without storage: stop the HTTP server too.
                cancel.cancel();
                return Err(e.into());
            }
        }
    };
    tracing::info!(backend = %store.backend(), "Storage ready.");
    let _ = state.store.set(store.clone());
    {
        let (snapshot, store, stop) = (state.snapshot.clone(), store.clone(), cancel.clone());
        tracker.spawn(async move {
            tokio::select! {
                r = snapshot.warm(&store) => if let Err(e) = r {
                    tracing::warn!(error = %e, "The sensors listing could not be loaded at start; the first request will load it.");
                },
                _ = stop.cancelled() => {}
            }
        });
    }
    tracker.spawn(replication::watch(
        store.clone(),
        replication::EVERY,
        state.replication.clone(),
        replication_metrics,
        cancel.clone(),
    ));
    let committed = tokio::sync::broadcast::channel(1024).0;
    alert_metrics.rules_in_force(alert_rules.len());
    if !alert_rules.is_empty() {
        // Subscribed before ingestion starts, so the first sweep misses no commit.
        let rx = committed.subscribe();
        tracker.spawn(alerts::engine(
            store.clone(),
            alert_rules,
            Duration::from_secs(settings.alerts.reraise_after_s),
            state.notifier.clone(),
            state.live.clone(),
            rx,
            alert_metrics.clone(),
            cancel.clone(),
        ));
    }
    tracker.spawn(ngsi_notify::run(
        store.clone(),
        state.catalog.clone(),
        state.notifier.clone(),
        cancel.clone(),
    ));
    tracker.spawn(alerts::deliver(
        store.clone(),
        state.notifier.clone(),
        settings.mqtt.clone(),
        alert_metrics,
        cancel.clone(),
    ));
    if !settings.sta.mqtt_topics.is_empty() {
        tracker.spawn(sta_mqtt::publish(
            store.clone(),
            settings.sta.clone(),
            settings.mqtt.clone(),
            (sta_root, settings.notify.max_backoff_s.get()),
            sta_metrics,
            cancel.clone(),
        ));
    }
    let http = cityhub_ingest::start(
        settings,
        store.clone(),
        metrics,
        state.mqtt_connected.clone(),
        cityhub_store::Subscribers {
            live: state.live.source(),
            committed,
        },
        cancel.clone(),
        tracker,
    )
    .inspect_err(|_| cancel.cancel())?;
    let _ = state.uploads.set(Arc::new(uploads::IngestUploads(http)));
    if store.backend().is_timescale() {
        tracker.spawn(maintenance::jobs_task(
            store.clone(),
            settings.store.clone(),
            state.maintenance.clone(),
            upkeep.clone(),
            cancel.clone(),
        ));
        tracker.spawn(maintenance::late_refresh_task(
            store.clone(),
            Duration::from_secs(settings.store.late_refresh_s.max(1)),
            state.maintenance.clone(),
            upkeep,
            cancel.clone(),
        ));
    }
    if !store.backend().is_timescale() {
        tracker.spawn(maintenance::rollup_fold_task(
            store.clone(),
            Duration::from_millis(settings.store.rollup_fold_ms.max(10)),
            cancel.clone(),
        ));
    }
    if settings.indicators.materialize {
        tracker.spawn(maintenance::indicator_days_task(
            store.clone(),
            state.catalog.clone(),
            settings.indicators.clone(),
            Duration::from_secs(10),
            cancel.clone(),
        ));
    }
    tracker.spawn(retention_job(
        store,
        settings.ingest.dead_letter_retention_days,
        (
            settings.alerts.retention_days,
            settings.alerts.outbox_retention_days,
        ),
        settings.store.audit_retention_days,
        cancel.clone(),
    ));
    Ok(())
}

/// At start and hourly: on plain PostgreSQL, drop partitions past retention; on
/// both backends, delete dead letters, cleared alerts, delivered notifications and
/// audit rows past theirs (`0` keeps them).
async fn retention_job(
    store: Store,
    dead_letter_days: u32,
    (alert_days, outbox_days): (u32, u32),
    audit_days: u32,
    cancel: CancellationToken,
) {
    loop {
        match store.apply_retention().await {
            Ok(dropped) if !dropped.is_empty() => {
                tracing::info!(partitions = ?dropped, "Retention: dropped old partitions.")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "Retention run failed; will retry."),
        }
        if dead_letter_days > 0 {
            match cityhub_store::query::purge_dead_letters(&store, dead_letter_days).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "Retention: deleted old dead letters."),
                Err(e) => tracing::warn!(error = %e, "Dead-letter retention failed; will retry."),
            }
        }
        match store.purge_alerts(alert_days, outbox_days).await {
            Ok((0, 0)) => {}
            Ok((notifications, alerts)) => {
                tracing::info!(
                    notifications,
                    alerts,
                    "Retention: deleted delivered notifications and old alerts."
                )
            }
            Err(e) => tracing::warn!(error = %e, "Alert retention failed; will retry."),
        }
        if audit_days > 0 {
            match store.purge_audit(audit_days).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "Retention: deleted old audit rows."),
                Err(e) => tracing::warn!(error = %e, "Audit retention failed; will retry."),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = cancel.cancelled() => break,
        }
    }
}
