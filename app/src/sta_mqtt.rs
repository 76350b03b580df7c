//! The SensorThings API's MQTT extension (OGC 18-088, chapter 14), for reading: every
//! committed reading is published as an STA Observation to
//! `v1.1/Datastreams(ID)/Observations` and the other topics `sta.mqtt_topics` names.
//!
//! The batch writer keeps each batch's new readings as one `sta_outbox` row, in the
//! batch's own transaction. This task publishes them after commit at QoS 1 and deletes
//! a batch once the broker has acknowledged every message; otherwise the whole batch
//! is retried with doubling waits. So a broker outage loses nothing (for up to
//! `sta.mqtt_retention_hours`), a retried batch may reach a subscriber twice (with
//! the same `@iot.id`), and ingestion never waits on the broker.

use cityhub_core::settings::{StaSettings, StaTopic};
use cityhub_store::sta::OutboxBatch;
use cityhub_store::Store;
use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event};
use std::collections::HashSet;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// `cityhub_sta_mqtt_*`.
#[derive(Clone, Default)]
pub struct StaMqttMetrics {
    published: Counter,
    failed: Counter,
    dropped: Counter,
    pending: Gauge,
}

impl StaMqttMetrics {
    pub fn register(r: &mut prometheus_client::registry::Registry) -> Self {
        let m = Self::default();
        let r = r.sub_registry_with_prefix("cityhub");
        r.register(
            "sta_mqtt_published",
            "Readings published as SensorThings Observations and acknowledged by the broker",
            m.published.clone(),
        );
        r.register(
            "sta_mqtt_failures",
            "Attempts to publish a batch of Observations that failed and will be retried",
            m.failed.clone(),
        );
        r.register(
            "sta_mqtt_dropped",
            "Readings dropped from the publishing queue after sta.mqtt_retention_hours",
            m.dropped.clone(),
        );
        r.register(
            "sta_mqtt_pending",
            "Readings waiting to be published (checked every 10 s)",
            m.pending.clone(),
        );
        m
    }
}

/// The topics one reading is published to.
fn topics(which: &[StaTopic], sensor: i32, metric: i16) -> impl Iterator<Item = String> + '_ {
    let ds = i64::from(sensor) * cityhub_store::sta::DATASTREAM_SCALE + i64::from(metric);
    which.iter().map(move |t| match t {
        StaTopic::Datastreams => format!("v1.1/Datastreams({ds})/Observations"),
        StaTopic::FeaturesOfInterest => format!("v1.1/FeaturesOfInterest({sensor})/Observations"),
        StaTopic::Observations => "v1.1/Observations".to_owned(),
    })
}

/// Publishes the outbox until `cancel`. `root` is the STA service root the messages'
/// links use (`http.public_url` + `/sta/v1.1`).
pub async fn publish(
    store: Store,
    sta: StaSettings,
    mqtt: cityhub_core::MqttSettings,
    (root, max_backoff_s): (String, u64),
    metrics: StaMqttMetrics,
    cancel: CancellationToken,
) {
    let mut pipe: Option<Pipe> = None;
    let mut failures = 0i32;
    let mut upkeep: Option<Instant> = None;
    loop {
        if upkeep.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            upkeep = Some(Instant::now());
            match store.purge_sta_outbox(sta.mqtt_retention_hours.get()).await {
                Ok(0) => {}
                Ok(n) => {
                    metrics.dropped.inc_by(n as u64);
                    tracing::warn!(readings = n, hours = sta.mqtt_retention_hours.get(),
                        "SensorThings MQTT: readings unpublished for longer than the retention were dropped from the queue.");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "SensorThings MQTT: purging the queue failed.")
                }
            }
            if let Ok(n) = store.sta_outbox_pending().await {
                metrics.pending.set(n);
            }
        }
        let claimed = match store.claim_sta_outbox(60.0).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "SensorThings MQTT: reading the queue failed; retrying.");
                None
            }
        };
        let Some(batch) = claimed else {
            tokio::select! {
                _ = store.outboxed() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = cancel.cancelled() => return,
            }
            continue;
        };
        if pipe.is_none() {
            pipe = Pipe::start(&mqtt, &cancel);
        }
        let outcome = match pipe.as_mut() {
            None => Err("no broker connection (see the error above)".to_owned()),
            Some(p) => tokio::select! {
                r = p.send(&batch, &sta.mqtt_topics, &root) => r,
                _ = cancel.cancelled() => return, // the lease runs out; published again later
            },
        };
        let n = batch.readings.len() as u64;
        let rest = match outcome {
            Ok(()) => {
                failures = 0;
                metrics.published.inc_by(n);
                if let Err(e) = store.sta_outbox_done(batch.id, Ok(())).await {
                    tracing::warn!(error = %e, batch = batch.id,
                        "SensorThings MQTT: recording a published batch failed; it will be published again.");
                }
                None
            }
            Err(err) => {
                // A fresh connection next time: nothing of this attempt lingers in it.
                pipe = None;
                metrics.failed.inc();
                failures = failures.saturating_add(1);
                let wait = 2f64.powi(failures.min(30)).min(max_backoff_s as f64);
                tracing::warn!(batch = batch.id, readings = n, attempts = batch.attempts,
                    retry_in_s = wait, error = %err,
                    "SensorThings MQTT: publishing a batch of Observations failed; it will be retried.");
                if let Err(e) = store.sta_outbox_done(batch.id, Err((err, wait))).await {
                    tracing::warn!(error = %e, batch = batch.id, "SensorThings MQTT: recording a failed batch failed.");
                }
                Some(wait)
            }
        };
        if let Some(wait) = rest {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs_f64(wait)) => {}
                _ = cancel.cancelled() => return,
            }
        } else if cancel.is_cancelled() {
            return;
        }
    }
}

/// A broker connection of its own, with many messages in flight at once.
struct Pipe {
    client: AsyncClient,
    /// (acknowledgement?, packet id, accepted?) in the order the event loop saw them.
    events: tokio::sync::mpsc::UnboundedReceiver<(bool, u16, bool)>,
    stop: CancellationToken,
}

impl Drop for Pipe {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Pipe {
    fn start(m: &cityhub_core::MqttSettings, cancel: &CancellationToken) -> Option<Self> {
        let mut o = match cityhub_mqtt::options(m, &format!("{}-sta", m.client_id)) {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(error = %e, "SensorThings MQTT: no broker connection; Observations stay queued.");
                return None;
            }
        };
        o.set_keep_alive(Duration::from_secs(30));
        o.set_clean_start(true);
        o.set_outgoing_inflight_upper_limit(1000);
        let (client, mut el) = AsyncClient::new(o, 1000);
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        let stop = cancel.child_token();
        let done = stop.clone();
        tokio::spawn(async move {
            loop {
                let ev = tokio::select! {
                    e = el.poll() => e,
                    _ = done.cancelled() => return,
                };
                let seen = match ev {
                    Ok(Event::Outgoing(rumqttc::Outgoing::Publish(pk))) => (false, pk, true),
                    Ok(Event::Incoming(Packet::PubAck(a))) => (
                        true,
                        a.pkid,
                        matches!(
                            a.reason,
                            PubAckReason::Success | PubAckReason::NoMatchingSubscribers
                        ),
                    ),
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::debug!(error = %e, "SensorThings MQTT: broker connection lost; reconnecting.");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                            _ = done.cancelled() => return,
                        }
                        continue;
                    }
                };
                if tx.send(seen).is_err() {
                    return;
                }
            }
        });
        Some(Self {
            client,
            events,
            stop,
        })
    }

    /// Publishes every reading of `batch` to every topic; Ok once the broker has
    /// acknowledged each message.
    async fn send(
        &mut self,
        batch: &OutboxBatch,
        which: &[StaTopic],
        root: &str,
    ) -> Result<(), String> {
        let total = batch.readings.len() * which.len();
        // One attempt's time: a connection's worth, plus the messages at a slow pace.
        let deadline = tokio::time::Instant::now()
            + Duration::from_secs(10)
            + Duration::from_millis(total as u64);
        let mut outstanding: HashSet<u16> = HashSet::new();
        let mut acked = 0usize;
        let mut note = |ev: (bool, u16, bool), acked: &mut usize| -> Result<(), String> {
            match ev {
                (false, pk, _) => {
                    outstanding.insert(pk);
                }
                (true, pk, ok) => {
                    if outstanding.remove(&pk) {
                        if !ok {
                            return Err("the broker refused an Observation (is the hub allowed to publish on v1.1/#?)".to_owned());
                        }
                        *acked += 1;
                    }
                }
            }
            Ok(())
        };
        for &(sensor, metric, time, value) in &batch.readings {
            let body = serde_json::to_vec(&cityhub_api::sta::observation_message(
                root,
                (sensor, metric),
                time,
                value,
            ))
            .map_err(|e| e.to_string())?;
            for topic in topics(which, sensor, metric) {
                tokio::time::timeout_at(
                    deadline,
                    self.client
                        .publish(topic, QoS::AtLeastOnce, false, body.clone()),
                )
                .await
                .map_err(|_| "the broker took no more messages in time".to_owned())?
                .map_err(|e| e.to_string())?;
                while let Ok(ev) = self.events.try_recv() {
                    note(ev, &mut acked)?;
                }
            }
        }
        while acked < total {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(ev)) => note(ev, &mut acked)?,
                Ok(None) => return Err("the publisher stopped".to_owned()),
                Err(_) => {
                    return Err(format!(
                        "{} of {total} messages not acknowledged by the broker in time",
                        total - acked
                    ))
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_family_names_the_reading_s_datastream_or_feature() {
        let all = [
            StaTopic::Datastreams,
            StaTopic::FeaturesOfInterest,
            StaTopic::Observations,
        ];
        let t: Vec<String> = topics(&all, 7, 3).collect();
        assert_eq!(
            t,
            [
                "v1.1/Datastreams(229379)/Observations",
                "v1.1/FeaturesOfInterest(7)/Observations",
                "v1.1/Observations"
            ]
        );
    }
}
