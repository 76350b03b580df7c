//! Simulated sensors of a Cremona fleet for tests, demos and load runs.
//!
//! - [`fleet`]: sensors placed in Cremona's districts, with the physics of each kind;
//! - [`sim`]: the fleet reporting in simulated time, in several formats, with faults,
//!   and an exact [`Report`] of what the hub should store;
//! - [`replay`]: a recorded CSV series published as one sensor's stream;
//! - [`load`]: a QoS 1 load publisher fast enough to saturate the hub.

pub mod fleet;
pub mod formats;
pub mod hubcheck;
pub mod load;
pub mod replay;
pub mod sim;
pub mod truth;
pub use cityhub_core::sun;

pub use fleet::{FleetSpec, SimSensor, CREMONA};
pub use formats::Format;
pub use rumqttc::v5::mqttbytes::QoS;
pub use sim::{FaultRates, Report, SimMessage, SimOptions, Simulation};

use chrono::{DateTime, Utc};
use cityhub_core::{Catalog, MqttSettings};
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("broker: {0}")]
    Broker(#[from] cityhub_mqtt::MqttError),
    #[error("MQTT: {0}")]
    Mqtt(String),
    #[error("{0}")]
    Options(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// The first `max` messages of a simulation, up to simulated time `until`.
pub fn generate(
    opts: &SimOptions,
    catalog: &Catalog,
    max: usize,
    until: DateTime<Utc>,
) -> Result<Vec<SimMessage>, SimError> {
    let mut sim = Simulation::new(opts, catalog).map_err(SimError::Options)?;
    let mut out = Vec::with_capacity(max.min(1 << 20));
    while out.len() < max {
        match sim.next_until(until) {
            Some(m) => out.push(m),
            None => break,
        }
    }
    if out.len() < max {
        out.extend(sim.drain_held().into_iter().take(max - out.len()));
    }
    Ok(out)
}

/// The hub's connection settings (URL, credentials, TLS) with a publisher's flow control.
fn mqtt_options(broker: &MqttSettings, client_id: &str) -> Result<MqttOptions, SimError> {
    let mut opts = cityhub_mqtt::options(broker, client_id)?;
    opts.set_keep_alive(Duration::from_secs(30))
        .set_outgoing_inflight_upper_limit(1000);
    Ok(opts)
}

/// Publishes `msgs` in order and waits until the broker acknowledged all of them (QoS 1).
pub async fn publish(
    broker: &MqttSettings,
    client_id: &str,
    msgs: &[SimMessage],
    qos: QoS,
) -> Result<Report, SimError> {
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    let owned = msgs.to_vec();
    tokio::spawn(async move {
        for m in owned {
            if tx.send(m).await.is_err() {
                break;
            }
        }
    });
    publish_stream(broker, client_id, rx, qos, CancellationToken::new()).await
}

/// Publishes what arrives on `rx` until it closes (or `cancel`), then waits for the acks.
pub async fn publish_stream(
    broker: &MqttSettings,
    client_id: &str,
    mut rx: tokio::sync::mpsc::Receiver<SimMessage>,
    qos: QoS,
    cancel: CancellationToken,
) -> Result<Report, SimError> {
    let (client, mut el) = AsyncClient::new(mqtt_options(broker, client_id)?, 1000);
    // The event loop polls in its own task: publishing waits on the request
    // channel, which only the event loop drains.
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (done_tx, mut done_rx) = tokio::sync::watch::channel(0u64);
    let poller = {
        let acked = acked.clone();
        tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        let n = acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                        let _ = done_tx.send(n);
                    }
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(SimError::Mqtt(e.to_string())),
                }
            }
        })
    };
    let started = Instant::now();
    let mut report = Report::default();
    loop {
        let m = tokio::select! {
            m = rx.recv() => m,
            _ = cancel.cancelled() => None,
        };
        let Some(m) = m else { break };
        report.count(&m);
        if client
            .publish(m.topic, qos, false, m.payload)
            .await
            .is_err()
        {
            break; // the event loop ended: its error is reported below
        }
    }
    if qos != QoS::AtMostOnce {
        let want = report.messages;
        while *done_rx.borrow() < want {
            if poller.is_finished() || done_rx.changed().await.is_err() {
                break;
            }
        }
    }
    let _ = client.disconnect().await;
    match poller.await {
        Ok(Err(e)) => return Err(e),
        Err(e) => return Err(SimError::Mqtt(e.to_string())),
        Ok(Ok(())) => {}
    }
    report.acknowledged = if qos == QoS::AtMostOnce {
        report.messages
    } else {
        acked.load(std::sync::atomic::Ordering::Relaxed)
    };
    report.elapsed_s = started.elapsed().as_secs_f64();
    report.rate_per_s = report.messages as f64 / report.elapsed_s.max(1e-9);
    Ok(report)
}

/// How a live run paces itself.
#[derive(Debug, Clone)]
pub struct Pace {
    /// Simulated seconds per wall-clock second; simulated time never passes the real now.
    /// `f64::INFINITY`: the past as fast as the broker acknowledges, then real time.
    pub speedup: f64,
    /// Fixed message rate instead of the fleet's cadence (messages per second).
    pub rate: Option<f64>,
    /// Stop after this much simulated time...
    pub duration: Option<chrono::Duration>,
    /// ...or this many messages.
    pub count: Option<u64>,
    /// Updated as the simulation runs, for a progress display.
    pub progress: Option<Arc<Progress>>,
    /// Holds the producer back while it is this far ahead of what the receiver
    /// stored: a broker acknowledges at once and queues for a slow subscriber, so a
    /// past loaded faster than the hub stores it would pile up in the broker.
    pub backpressure: Option<Backpressure>,
}

/// How far a receiver got, for [`Pace::backpressure`].
#[derive(Clone)]
pub struct Backpressure {
    /// Messages the receiver has stored since this run began.
    pub stored: Arc<dyn Fn() -> u64 + Send + Sync>,
    /// The most messages published and not yet stored.
    pub max_ahead: u64,
}

impl std::fmt::Debug for Backpressure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backpressure")
            .field("max_ahead", &self.max_ahead)
            .finish_non_exhaustive()
    }
}

/// How far a live simulation has got: messages produced, and the simulated time of
/// the newest (µs since the epoch); `caught_up` once it reached the present.
#[derive(Debug, Default)]
pub struct Progress {
    pub produced: AtomicU64,
    pub sim_time_us: AtomicI64,
    pub caught_up: AtomicBool,
}

/// Runs the simulation live against a broker until its limits or `cancel`.
pub async fn run_live(
    opts: &SimOptions,
    catalog: &Catalog,
    pace: &Pace,
    broker: &MqttSettings,
    client_id: &str,
    qos: QoS,
    cancel: CancellationToken,
) -> Result<Report, SimError> {
    let mut sim = Simulation::new(opts, catalog).map_err(SimError::Options)?;
    let (tx, rx) = tokio::sync::mpsc::channel(4096);
    let pace = pace.clone();
    let start = opts.start;
    let producer_cancel = cancel.clone();
    let producer = tokio::spawn(async move {
        let wall0 = Instant::now();
        let end = pace.duration.map(|d| start + d);
        let mut sent = 0u64;
        loop {
            if producer_cancel.is_cancelled() || pace.count.is_some_and(|c| sent >= c) {
                break;
            }
            let now = Utc::now();
            // Simulated ms since the start, capped at the present (any speedup, even infinite).
            let sim_ms = wall0.elapsed().as_secs_f64() * pace.speedup * 1000.0;
            let behind_ms = (now - start).num_milliseconds() as f64;
            let mut until = if sim_ms >= behind_ms {
                now
            } else {
                start + chrono::Duration::milliseconds(sim_ms as i64)
            };
            if pace.rate.is_some() {
                until = end.unwrap_or(now).min(now);
            }
            if let Some(e) = end {
                until = until.min(e);
            }
            match sim.next_until(until) {
                Some(m) => {
                    if let Some(b) = &pace.backpressure {
                        while sent.saturating_sub((b.stored)()) > b.max_ahead {
                            tokio::select! {
                                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                                _ = producer_cancel.cancelled() => break,
                            }
                        }
                    }
                    if let Some(rate) = pace.rate {
                        let due = wall0 + Duration::from_secs_f64(sent as f64 / rate);
                        tokio::time::sleep_until(due.into()).await;
                    }
                    let at = m.time.timestamp_micros();
                    if tx.send(m).await.is_err() {
                        break;
                    }
                    sent += 1;
                    if let Some(p) = &pace.progress {
                        p.produced.store(sent, Ordering::Relaxed);
                        p.sim_time_us.fetch_max(at, Ordering::Relaxed);
                    }
                }
                None => {
                    if let Some(p) = &pace.progress {
                        if until >= now {
                            p.caught_up.store(true, Ordering::Relaxed);
                        }
                    }
                    if end.is_some_and(|e| sim.peek_time().is_none_or(|t| t > e)) {
                        break;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                        _ = producer_cancel.cancelled() => break,
                    }
                }
            }
        }
        for m in sim.drain_held() {
            if pace.count.is_some_and(|c| sent >= c) || tx.send(m).await.is_err() {
                break;
            }
            sent += 1;
        }
    });
    let mut report = publish_stream(broker, client_id, rx, qos, CancellationToken::new()).await?;
    let _ = producer.await;
    report.seed = opts.seed;
    report.sensors = opts.fleet.per_kind.iter().map(|(_, n)| *n as u64).sum();
    Ok(report)
}
