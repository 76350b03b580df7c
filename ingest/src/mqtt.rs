//! The MQTT 5 session: options from settings (TLS, credentials, persistent
//! session, Receive Maximum, manual acks) and the event-loop task.
//!
//! The event loop runs alone in its task and is never cancelled mid-poll.
//! Acks are sent by the writer through [`Acker`] only for messages of the
//! current connection: after a reconnect the broker redelivers unacked
//! messages with their packet ids, so a late ack from an old connection could
//! acknowledge a different, not yet stored message.

use crate::metrics::IngestMetrics;
use crate::IngestError;
use chrono::Utc;
use cityhub_core::Settings;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, Publish, RetainForwardRule};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ClientError, Event, EventLoop, MqttOptions};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A received message on its way through the pipeline.
#[derive(Debug)]
pub struct Inbound {
    pub publish: Publish,
    pub epoch: u64,
    pub received_at: chrono::DateTime<Utc>,
    /// Not a reading (the hubs' own alert events, a retained copy): acknowledged
    /// with the batch it falls in, so PUBACKs keep the order of the PUBLISHes (MQTT
    /// 5, 4.6; a broker may drop a client that acknowledges out of order), but
    /// neither stored nor dead-lettered.
    pub skip: bool,
}

/// What the writer needs to acknowledge a message later.
#[derive(Debug, Clone)]
pub struct AckToken {
    epoch: u64,
    publish: Publish,
}

impl AckToken {
    pub fn of(m: &Inbound) -> Self {
        // The payload is not needed to ack; keep only the packet id and QoS.
        let publish = Publish {
            payload: Default::default(),
            topic: Default::default(),
            properties: None,
            ..m.publish.clone()
        };
        Self {
            epoch: m.epoch,
            publish,
        }
    }
}

/// Sends PUBACKs for committed messages, in the order given, on the connection they came from.
#[derive(Clone)]
pub struct Acker {
    client: AsyncClient,
    epoch: Arc<Mutex<u64>>,
    metrics: IngestMetrics,
}

impl Acker {
    pub async fn ack(&self, tokens: &[AckToken]) {
        for t in tokens {
            loop {
                let res = {
                    let epoch = self.epoch.lock().expect("epoch lock");
                    if t.epoch != *epoch {
                        self.metrics.acks_stale.inc();
                        Ok(())
                    } else if t.publish.qos == QoS::AtMostOnce {
                        Ok(())
                    } else {
                        let r = self.client.try_ack(&t.publish);
                        if r.is_ok() {
                            self.metrics.acks_queued.fetch_add(1, Ordering::Relaxed);
                        }
                        r
                    }
                };
                match res {
                    Err(ClientError::TryRequest(_)) => {
                        tokio::time::sleep(Duration::from_millis(1)).await
                    }
                    _ => break,
                }
            }
            self.metrics.acks_pending.dec();
        }
    }

    /// Asks the event loop to send DISCONNECT, which ends its task.
    pub async fn disconnect(&self) {
        let _ = self.client.disconnect().await;
    }
}

/// The hub's session options: the shared connection (URL, credentials, TLS) plus a
/// persistent session, Receive Maximum and manual acks.
pub fn options(settings: &Settings) -> Result<MqttOptions, IngestError> {
    let m = &settings.mqtt;
    let mut o =
        cityhub_mqtt::options(m, &m.client_id).map_err(|e| IngestError::Config(e.to_string()))?;
    o.set_keep_alive(Duration::from_secs(m.keep_alive_s.max(5)))
        .set_clean_start(false)
        .set_session_expiry_interval(Some(m.session_expiry_s))
        .set_receive_maximum(Some(m.receive_maximum.get()))
        .set_max_packet_size(Some(m.max_packet_bytes))
        .set_manual_acks(true)
        .set_connection_timeout(10);
    Ok(o)
}

/// Handles of a started session.
pub struct Session {
    pub acker: Acker,
    pub event_loop: EventLoop,
    pub client: AsyncClient,
    pub epoch: Arc<Mutex<u64>>,
}

pub fn session(settings: &Settings, metrics: &IngestMetrics) -> Result<Session, IngestError> {
    let opts = options(settings)?;
    // Room for every ack of a full inflight window twice over, so try_ack rarely waits.
    let cap = usize::from(settings.mqtt.receive_maximum.get()) * 2 + 64;
    let (client, event_loop) = AsyncClient::new(opts, cap);
    let epoch = Arc::new(Mutex::new(0));
    let acker = Acker {
        client: client.clone(),
        epoch: epoch.clone(),
        metrics: metrics.clone(),
    };
    Ok(Session {
        acker,
        event_loop,
        client,
        epoch,
    })
}

/// Messages past our Receive Maximum that the loop still takes from a broker that
/// overruns it, before it stops reading the socket.
const WINDOW_OVERRUN: i64 = 32;

/// What the MQTT event loop task owns: the connection, where messages go, and its
/// state across reconnects. [`EventLoopTask::run`] polls it until cancelled.
pub struct EventLoopTask {
    pub event_loop: EventLoop,
    pub client: AsyncClient,
    /// Bumped on every lost connection; acks of an older epoch are dropped.
    pub epoch: Arc<Mutex<u64>>,
    pub filters: Vec<String>,
    pub tx: mpsc::UnboundedSender<Inbound>,
    /// True while subscribed (readiness).
    pub connected: Arc<AtomicBool>,
    pub metrics: IngestMetrics,
    pub backoff: cityhub_core::Backoff,
    pub receive_maximum: u16,
}

/// The loop's state between events.
struct LoopState {
    ever_connected: bool,
    current: u64,
    window: i64,
    overrun_logged: bool,
    last_received: chrono::DateTime<Utc>,
}

impl EventLoopTask {
    /// Runs the event loop until the writer asks for DISCONNECT (after draining), or,
    /// once shutdown has begun, until the connection fails; each publish goes to the
    /// batcher, and a lost connection is retried with backoff.
    pub async fn run(mut self, cancel: CancellationToken) {
        // Our own Receive Maximum, whatever the broker does. A broker that keeps to it sends
        // nothing more while the window is full, so the loop keeps polling: pings go out and
        // a long database outage does not cost the connection (and a redelivery of the
        // whole window). Only a broker that overruns it (Mosquitto with an unlimited
        // in-flight setting, on a resumed session) meets the hard stop: past
        // [`WINDOW_OVERRUN`] more, the socket is not read until acks free room (TCP then
        // holds the broker back). Acks still go out: they only need the request queue,
        // which has room for twice the window, and are flushed as soon as polling resumes.
        let mut st = LoopState {
            ever_connected: false,
            current: 0,
            window: i64::from(self.receive_maximum) + WINDOW_OVERRUN,
            overrun_logged: false,
            // Receive times strictly increase (by at least 1 µs, PostgreSQL's resolution), so
            // two messages without a timestamp from one sensor never share the receive time.
            last_received: Utc::now(),
        };
        loop {
            Self::hold_while_overrun(&self.metrics, self.receive_maximum, &mut st, &cancel).await;
            match self.event_loop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if cancel.is_cancelled() {
                        continue; // not acked: the broker keeps it for our next session
                    }
                    self.received(p, &mut st);
                }
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    self.connected_again(ack.session_present, &mut st)
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => self.subscribed(&ack.return_codes),
                Ok(Event::Outgoing(rumqttc::Outgoing::PubAck(_))) => {
                    self.metrics.acks_queued.fetch_sub(1, Ordering::Relaxed);
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                    tracing::info!("Disconnected from the MQTT broker.");
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    if !self.connection_lost(e, &mut st, &cancel).await {
                        break;
                    }
                }
            }
        }
        self.connected.store(false, Ordering::Relaxed);
        self.metrics.mqtt_connected.set(0);
    }

    /// Past the window and its overrun, the socket is not read until acks free room.
    /// (Not a method: the event loop is not `Sync`, so `&self` could not be held
    /// across the wait.)
    async fn hold_while_overrun(
        metrics: &IngestMetrics,
        receive_maximum: u16,
        st: &mut LoopState,
        cancel: &CancellationToken,
    ) {
        while metrics.acks_pending.get() >= st.window
            && metrics.acks_queued.load(Ordering::Relaxed) <= 0
            && !cancel.is_cancelled()
        {
            if !std::mem::replace(&mut st.overrun_logged, true) {
                tracing::warn!(receive_maximum, held = metrics.acks_pending.get(),
                    "The broker sends past the hub's Receive Maximum; not reading until acks free room (no pings meanwhile: set the broker's in-flight limit to mqtt.receive_maximum).");
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                _ = cancel.cancelled() => {}
            }
        }
    }

    fn received(&self, p: Publish, st: &mut LoopState) {
        // The hubs' own alert events (`notify.mqtt`) are output, not readings; a retained
        // copy (a broker ignoring retain handling "never") is not a new reading: stored at
        // each resubscription it would repeat a reading without a timestamp.
        let skip = p
            .topic
            .starts_with(cityhub_core::alerts::ALERT_TOPIC_PREFIX.as_bytes())
            || p.retain;
        if p.retain {
            self.metrics.retained_dropped.inc();
        }
        if !skip {
            self.metrics.messages_received.inc();
        }
        self.metrics.acks_pending.inc();
        let now = Utc::now();
        st.last_received = if now > st.last_received + chrono::Duration::microseconds(1) {
            now
        } else {
            st.last_received + chrono::Duration::microseconds(1)
        };
        let m = Inbound {
            publish: p,
            epoch: st.current,
            received_at: st.last_received,
            skip,
        };
        if self.tx.send(m).is_err() {
            self.metrics.acks_pending.dec();
        }
    }

    fn connected_again(&mut self, session_present: bool, st: &mut LoopState) {
        self.backoff.reset();
        self.metrics.mqtt_connected.set(1);
        if st.ever_connected {
            self.metrics.mqtt_reconnects.inc();
        }
        st.ever_connected = true;
        tracing::info!(
            session_present,
            epoch = st.current,
            "Connected to the MQTT broker."
        );
        // Retain handling 2 (MQTT 5): never send retained messages on subscribing.
        let subs = self.filters.iter().map(|f| Filter {
            retain_forward_rule: RetainForwardRule::Never,
            ..Filter::new(f.clone(), QoS::AtLeastOnce)
        });
        if let Err(e) = self.client.try_subscribe_many(subs) {
            tracing::error!(error = %e, "Could not queue the subscription request.");
        }
    }

    fn subscribed(&self, codes: &[rumqttc::v5::mqttbytes::v5::SubscribeReasonCode]) {
        let failed: Vec<_> = codes
            .iter()
            .filter(|c| {
                !matches!(
                    c,
                    rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(_)
                )
            })
            .collect();
        if failed.is_empty() {
            // Ready only now: before the SUBACK the broker may drop what it gets for us.
            self.connected.store(true, Ordering::Relaxed);
            tracing::info!(filters = ?self.filters, "Subscribed.");
        } else {
            tracing::error!(codes = ?failed, filters = ?self.filters, "The broker refused a subscription.");
        }
    }

    /// A lost connection starts a new epoch and waits to reconnect; false: shutting down.
    async fn connection_lost(
        &mut self,
        e: rumqttc::v5::ConnectionError,
        st: &mut LoopState,
        cancel: &CancellationToken,
    ) -> bool {
        {
            let mut ep = self.epoch.lock().expect("epoch lock");
            *ep += 1;
            st.current = *ep;
            // poll() already moved unsent acks out; acks queued since belong to the old
            // connection too. Clearing again under the lock drops them.
            self.event_loop.clean();
            self.metrics.acks_queued.store(0, Ordering::Relaxed);
        }
        self.connected.store(false, Ordering::Relaxed);
        self.metrics.mqtt_connected.set(0);
        self.metrics.mqtt_connection_errors.inc();
        if cancel.is_cancelled() {
            tracing::info!(error = %e, "MQTT connection ended during shutdown.");
            return false;
        }
        let delay = self.backoff.next_pause();
        tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "MQTT connection lost; reconnecting.");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = cancel.cancelled() => {}
        }
        true
    }
}
