//! The alert engine and the webhook delivery.
//!
//! The engine takes every committed batch: each reading it carried, in time order,
//! then the latest values it advanced (which carry the metrics the hub derives),
//! and runs each rule on them: a value past the threshold for the rule's hold
//! time raises an alert, one back past the clear level clears it. A reading no
//! newer than the last one a rule saw for the sensor (a redelivery, a late
//! reading) changes nothing. Derived metrics are seen once per batch, newest value.
//! A lamp rule judges each reading against the sun at the lamp (civil twilight
//! decides nothing); a silence rule is checked on a timer against each sensor's
//! newest reading, and any fresh reading ends it.
//! The database keeps one standing alert per rule and sensor, so hubs side by
//! side raise it once. When the engine fell behind the channel or the database
//! failed, it runs the rules over the whole `latest` table instead.
//!
//! Delivery takes due notifications from the outbox (leased with `SKIP LOCKED`),
//! POSTs them signed, and retries failures with doubling waits up to
//! `notify.max_backoff_s`: at least once, across restarts and receiver outages.

use chrono::{DateTime, Utc};
use cityhub_core::alerts::{AlertRule, Condition};
use cityhub_core::sun;
use cityhub_store::alerts::Notifier;
use cityhub_store::alerts::{Alert, Raise};
use cityhub_store::{Committed, Store};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;

/// The alert metrics (`cityhub_alerts_*`, `cityhub_alert_deliveries_*`).
#[derive(Clone, Default)]
pub struct AlertMetrics {
    raised: prometheus_client::metrics::counter::Counter,
    cleared: prometheus_client::metrics::counter::Counter,
    delivered: prometheus_client::metrics::counter::Counter,
    failed: prometheus_client::metrics::counter::Counter,
    /// Commits whose readings the rules have seen (directly, or by a sweep over the
    /// latest values after the engine fell behind): equal to the committed batches
    /// once the engine has caught up.
    evaluated: prometheus_client::metrics::counter::Counter,
    /// Rules in force (0: no engine runs, so nothing is evaluated).
    rules: prometheus_client::metrics::gauge::Gauge,
}

impl AlertMetrics {
    pub fn register(r: &mut prometheus_client::registry::Registry) -> Self {
        let m = Self::default();
        let r = r.sub_registry_with_prefix("cityhub");
        r.register(
            "alerts_raised",
            "Alerts raised by this hub",
            m.raised.clone(),
        );
        r.register(
            "alerts_cleared",
            "Alerts cleared by this hub",
            m.cleared.clone(),
        );
        r.register(
            "alert_deliveries",
            "Webhook notifications this hub delivered (2xx)",
            m.delivered.clone(),
        );
        r.register(
            "alert_delivery_failures",
            "Webhook attempts that failed and will be retried",
            m.failed.clone(),
        );
        r.register(
            "alert_commits_evaluated",
            "Committed batches the alert rules have run on",
            m.evaluated.clone(),
        );
        r.register("alert_rules", "Alert rules in force", m.rules.clone());
        m
    }

    pub fn rules_in_force(&self, n: usize) {
        self.rules.set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}

struct Engine {
    store: Store,
    rules: Vec<AlertRule>,
    /// Rules by the metric id they read.
    by_metric: HashMap<i16, Vec<usize>>,
    /// The silence rule of each kind.
    silent_by_kind: HashMap<String, usize>,
    /// (rule, sensor) with an alert not cleared.
    standing: HashSet<(usize, String)>,
    /// (rule, sensor) past the threshold since this reading time, not raised yet.
    pending: HashMap<(usize, String), DateTime<Utc>>,
    /// (rule, sensor): time of the newest reading the rule saw.
    seen: HashMap<(usize, String), DateTime<Utc>>,
    /// (rule, sensor): time of the reading that last cleared its alert.
    cleared_at: HashMap<(usize, String), DateTime<Utc>>,
    /// `alerts.reraise_after_s`.
    reraise: chrono::Duration,
    /// Lamps' positions (lamp rules judge the sun where the lamp is).
    positions: HashMap<String, (f64, f64)>,
    /// Silence is only judged once the hub has listened for as long as it takes.
    started: std::time::Instant,
    metrics: AlertMetrics,
    notifier: Arc<Notifier>,
    live: Arc<cityhub_api::live::Live>,
}

impl Engine {
    async fn load(&mut self) -> Result<(), cityhub_store::StoreError> {
        let index: HashMap<&str, usize> = self
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| (r.id.as_str(), i))
            .collect();
        self.standing = self
            .store
            .standing_alerts()
            .await?
            .into_iter()
            .filter_map(|(rule, sensor)| index.get(rule.as_str()).map(|i| (*i, sensor)))
            .collect();
        if !self.reraise.is_zero() {
            self.cleared_at = self
                .store
                .last_cleared()
                .await?
                .into_iter()
                .filter_map(|(rule, sensor, t)| index.get(rule.as_str()).map(|i| ((*i, sensor), t)))
                .collect();
        }
        Ok(())
    }

    /// Where `sensor` is, once known.
    async fn position(
        &mut self,
        sensor: &str,
    ) -> Result<Option<(f64, f64)>, cityhub_store::StoreError> {
        if let Some(p) = self.positions.get(sensor) {
            return Ok(Some(*p));
        }
        let c = self.store.pool().get().await?;
        let row = c
            .query_opt(
                "SELECT lat, lon FROM sensors WHERE external_id = $1 AND lat IS NOT NULL",
                &[&sensor],
            )
            .await?;
        let p = row.map(|r| (r.get::<_, f64>(0), r.get::<_, f64>(1)));
        if let Some(p) = p {
            self.positions.insert(sensor.to_owned(), p);
        }
        Ok(p)
    }

    /// Tells the live stream, and wakes the delivery of the outbox rows just written.
    fn announce(&self, a: &Alert, event: &str) {
        self.live.alert(
            &a.kind,
            &a.sensor,
            cityhub_store::alerts::event_json(a, event),
        );
        self.notifier.wake.notify_one();
    }

    async fn raise(
        &mut self,
        i: usize,
        sensor: &str,
        time: DateTime<Utc>,
        value: f64,
    ) -> Result<(), cityhub_store::StoreError> {
        let notifier = self.notifier.clone();
        let bodies = move |a: &Alert, e: &str| notifier.bodies(a, e);
        let rule = &self.rules[i];
        let raised = self
            .store
            .raise_alert(
                &Raise {
                    rule: &rule.id,
                    sensor,
                    kind: &rule.kind,
                    metric: &rule.metric,
                    severity: rule.severity.as_str(),
                    threshold: rule.threshold,
                    time,
                    value,
                },
                &bodies,
            )
            .await?;
        if let Some(a) = raised {
            tracing::info!(alert = a.id, rule = %rule.id, sensor, value, "Alert raised.");
            self.metrics.raised.inc();
            self.announce(&a, "raised");
        }
        let key = (i, sensor.to_owned());
        self.pending.remove(&key);
        self.standing.insert(key);
        Ok(())
    }

    async fn clear(
        &mut self,
        i: usize,
        sensor: &str,
        time: DateTime<Utc>,
        value: f64,
    ) -> Result<(), cityhub_store::StoreError> {
        let notifier = self.notifier.clone();
        let bodies = move |a: &Alert, e: &str| notifier.bodies(a, e);
        let rule = &self.rules[i];
        if let Some(a) = self
            .store
            .clear_alert(&rule.id, sensor, time, value, &bodies)
            .await?
        {
            tracing::info!(alert = a.id, rule = %rule.id, sensor, value, "Alert cleared.");
            self.metrics.cleared.inc();
            self.announce(&a, "cleared");
        }
        let key = (i, sensor.to_owned());
        self.standing.remove(&key);
        if !self.reraise.is_zero() {
            self.cleared_at.insert(key, time);
        }
        Ok(())
    }

    async fn evaluate(
        &mut self,
        sensor: &str,
        kind: &str,
        metric_id: i16,
        time: DateTime<Utc>,
        value: f64,
    ) -> Result<(), cityhub_store::StoreError> {
        // A fresh reading of any metric ends a silence.
        if let Some(&i) = self.silent_by_kind.get(kind) {
            let fresh = Utc::now() - time
                < chrono::Duration::milliseconds((self.rules[i].threshold * 1000.0) as i64);
            if fresh && self.standing.contains(&(i, sensor.to_owned())) {
                self.clear(i, sensor, time, 0.0).await?;
            }
        }
        let Some(idx) = self.by_metric.get(&metric_id).cloned() else {
            return Ok(());
        };
        for i in idx {
            let key = (i, sensor.to_owned());
            match self.seen.get(&key) {
                Some(t) if *t >= time => continue,
                _ => {
                    self.seen.insert(key.clone(), time);
                }
            }
            let (breach, clear) = match self.rules[i].condition {
                Condition::LampFault => {
                    let Some((lat, lon)) = self.position(sensor).await? else {
                        continue;
                    };
                    match self.rules[i].lamp_fault(value, sun::daylight(time, lat, lon)) {
                        None => continue,
                        Some(fault) => (fault, !fault),
                    }
                }
                _ => (self.rules[i].breached(value), self.rules[i].cleared(value)),
            };
            if self.standing.contains(&key) {
                self.pending.remove(&key);
                if clear {
                    self.clear(i, sensor, time, value).await?;
                }
            } else if breach {
                let rested = self
                    .cleared_at
                    .get(&key)
                    .is_none_or(|c| time - *c >= self.reraise);
                let since = *self.pending.entry(key).or_insert(time);
                let hold = chrono::Duration::seconds(self.rules[i].hold_s as i64);
                if time - since >= hold && rested {
                    self.raise(i, sensor, time, value).await?;
                }
            } else {
                self.pending.remove(&key);
            }
        }
        Ok(())
    }

    async fn batch(&mut self, batch: &Committed) -> Result<(), cityhub_store::StoreError> {
        let store = self.store.clone();
        let mut readings: Vec<_> = batch.readings.iter().collect();
        readings.sort_by_key(|r| r.time);
        for r in readings {
            let Some((kind, _)) = store.metric_name(r.metric_id) else {
                continue;
            };
            self.evaluate(r.sensor.as_str(), kind, r.metric_id, r.time, r.value)
                .await?;
        }
        for c in batch.latest.iter() {
            let Some((kind, _)) = store.metric_name(c.metric_id) else {
                continue;
            };
            self.evaluate(c.sensor.as_str(), kind, c.metric_id, c.time, c.value)
                .await?;
        }
        Ok(())
    }

    /// Every rule over the whole `latest` table.
    async fn sweep(&mut self) -> Result<(), cityhub_store::StoreError> {
        self.load().await?;
        let ids: Vec<i16> = self.by_metric.keys().copied().collect();
        let rows = {
            let c = self.store.pool().get().await?;
            c.query(
                "SELECT s.external_id, s.kind, l.metric_id, l.time, l.value
                 FROM latest l JOIN sensors s ON s.id = l.sensor_id
                 WHERE l.metric_id = ANY($1)",
                &[&ids],
            )
            .await?
        };
        for r in &rows {
            let (sensor, kind): (String, String) = (r.get(0), r.get(1));
            self.evaluate(&sensor, &kind, r.get(2), r.get(3), r.get(4))
                .await?;
        }
        Ok(())
    }

    /// Raises the silence alerts: sensors of a kind whose newest reading is older
    /// than the rule's limit, judged once the hub has listened that long.
    async fn silences(&mut self) -> Result<(), cityhub_store::StoreError> {
        let now = Utc::now();
        let listened = self.started.elapsed().as_secs_f64();
        let rules: Vec<usize> = self.silent_by_kind.values().copied().collect();
        for i in rules {
            let limit = self.rules[i].threshold;
            if listened < limit {
                continue;
            }
            let before = now - chrono::Duration::milliseconds((limit * 1000.0) as i64);
            let rows = {
                let c = self.store.pool().get().await?;
                c.query(
                    "SELECT s.external_id, max(l.time) FROM sensors s
                     JOIN latest l ON l.sensor_id = s.id
                     WHERE s.kind = $1 GROUP BY 1 HAVING max(l.time) < $2",
                    &[&self.rules[i].kind, &before],
                )
                .await?
            };
            for r in &rows {
                let sensor: String = r.get(0);
                let last: DateTime<Utc> = r.get(1);
                if !self.standing.contains(&(i, sensor.clone())) {
                    let silent_s = (now - last).num_seconds() as f64;
                    self.raise(i, &sensor, now, silent_s).await?;
                }
            }
        }
        Ok(())
    }
}

/// Runs the rules on every commit until `cancel`. `rx` must be subscribed before
/// the pipeline starts, so no commit falls before the first sweep.
#[allow(clippy::too_many_arguments)] // one task's whole wiring, passed once at start
pub async fn engine(
    store: Store,
    rules: Vec<AlertRule>,
    reraise_after: Duration,
    notifier: Arc<Notifier>,
    live: Arc<cityhub_api::live::Live>,
    mut rx: broadcast::Receiver<Arc<Committed>>,
    metrics: AlertMetrics,
    cancel: CancellationToken,
) {
    let mut by_metric: HashMap<i16, Vec<usize>> = HashMap::new();
    let mut silent_by_kind = HashMap::new();
    for (i, r) in rules.iter().enumerate() {
        if r.condition == Condition::Silent {
            silent_by_kind.insert(r.kind.clone(), i);
        } else if let Some(id) = store.metric_id(&r.kind, &r.metric) {
            by_metric.entry(id).or_default().push(i);
        }
    }
    // Silences are looked for a few times within the shortest limit.
    let shortest = silent_by_kind
        .values()
        .map(|&i| rules[i].threshold)
        .fold(f64::INFINITY, f64::min);
    let mut tick =
        tokio::time::interval(Duration::from_secs_f64((shortest / 3.0).clamp(1.0, 30.0)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut e = Engine {
        store,
        rules,
        by_metric,
        silent_by_kind,
        standing: HashSet::new(),
        pending: HashMap::new(),
        seen: HashMap::new(),
        cleared_at: HashMap::new(),
        reraise: chrono::Duration::from_std(reraise_after).unwrap_or(chrono::Duration::MAX),
        positions: HashMap::new(),
        started: std::time::Instant::now(),
        notifier,
        live,
        metrics,
    };
    let mut behind = true; // start with a sweep
                           // Commits the rules have not run on yet, covered by the next sweep.
    let mut owed = 0u64;
    loop {
        if behind {
            match e.sweep().await {
                Ok(()) => {
                    behind = false;
                    e.metrics.evaluated.inc_by(std::mem::take(&mut owed));
                }
                Err(err) => {
                    tracing::warn!(error = %err, "Alert rules could not run over the latest values; retrying.");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(2)) => continue,
                        _ = cancel.cancelled() => return,
                    }
                }
            }
        }
        let got = tokio::select! {
            r = rx.recv() => r,
            _ = tick.tick(), if !e.silent_by_kind.is_empty() => {
                if let Err(err) = e.silences().await {
                    tracing::warn!(error = %err, "Silence alerts could not be checked; trying again.");
                }
                continue;
            }
            _ = cancel.cancelled() => return,
        };
        match got {
            Ok(b) => match e.batch(&b).await {
                Ok(()) => {
                    e.metrics.evaluated.inc();
                }
                Err(err) => {
                    tracing::warn!(error = %err, "Alert rules failed on a commit; running them over the latest values.");
                    owed += 1;
                    behind = true;
                }
            },
            Err(RecvError::Lagged(n)) => {
                tracing::warn!(
                    missed = n,
                    "The alert engine fell behind; running the rules over the latest values."
                );
                owed += n;
                behind = true;
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// `sha256=<hex>` of HMAC-SHA256 over `body` with `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// Alert events on the broker: a connection of its own (its event loop in its own
/// task), one publish at a time, delivered when the broker's PUBACK for it comes.
struct Publisher {
    client: rumqttc::v5::AsyncClient,
    events: tokio::sync::mpsc::UnboundedReceiver<(bool, u16)>,
}

impl Publisher {
    fn start(m: &cityhub_core::MqttSettings, cancel: CancellationToken) -> Option<Self> {
        let client_id = format!("{}-alerts", m.client_id);
        let mut o = match cityhub_mqtt::options(m, &client_id) {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(error = %e, "No broker connection for alert messages; they stay queued.");
                return None;
            }
        };
        o.set_keep_alive(Duration::from_secs(30));
        o.set_clean_start(true);
        let (client, mut el) = rumqttc::v5::AsyncClient::new(o, 16);
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            use rumqttc::v5::mqttbytes::v5::Packet;
            use rumqttc::v5::Event;
            loop {
                let ev = tokio::select! {
                    e = el.poll() => e,
                    _ = cancel.cancelled() => return,
                };
                let sent = match ev {
                    Ok(Event::Outgoing(rumqttc::Outgoing::Publish(pk))) => (false, pk),
                    Ok(Event::Incoming(Packet::PubAck(a))) => (true, a.pkid),
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::debug!(error = %e, "Alert publisher: broker connection lost; reconnecting.");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                if tx.send(sent).is_err() {
                    return;
                }
            }
        });
        Some(Self { client, events })
    }

    async fn publish(&mut self, topic: &str, body: &str, timeout: Duration) -> Result<(), String> {
        while self.events.try_recv().is_ok() {} // what an earlier, timed-out publish left
        self.client
            .publish(
                topic,
                rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                false,
                body.as_bytes().to_vec(),
            )
            .await
            .map_err(|e| e.to_string())?;
        let wait = async {
            let mut pkid = None;
            while let Some((acked, pk)) = self.events.recv().await {
                match (acked, pkid) {
                    (false, None) => pkid = Some(pk),
                    (true, Some(p)) if p == pk => return Ok(()),
                    _ => {}
                }
            }
            Err("the publisher stopped".to_owned())
        };
        tokio::time::timeout(timeout, wait)
            .await
            .unwrap_or_else(|_| Err("no PUBACK from the broker".to_owned()))
    }
}

/// POSTs one notification to its webhook, signed when the webhook has a secret.
async fn post(
    http: &reqwest::Client,
    hook: &cityhub_core::alerts::WebhookDef,
    d: &cityhub_store::alerts::Delivery,
) -> Result<(), String> {
    let mut req = http
        .post(&d.target)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("X-Cityhub-Event", &d.event)
        .header("X-Cityhub-Delivery", d.id.to_string())
        .body(d.body.clone());
    if let Some(secret) = hook.secret.as_ref() {
        req = req.header(
            "X-Cityhub-Signature-256",
            signature(secret.expose(), d.body.as_bytes()),
        );
    }
    match req.send().await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("HTTP {}", r.status().as_u16())),
        // reqwest's message names the URL: say what happened without it.
        Err(e) => Err(if e.is_timeout() {
            "no answer within notify.timeout_s".to_owned()
        } else if e.is_connect() {
            "could not connect".to_owned()
        } else {
            format!("request failed: {}", e.without_url())
        }),
    }
}

/// A target as logs may show it: a webhook's scheme and host only (its path or query
/// may carry a secret, as Slack's and Teams' hooks do); a broker topic as it is.
pub fn redacted(target: &str) -> String {
    if target.starts_with(cityhub_store::alerts::MQTT_TARGET) {
        return target.to_owned();
    }
    match reqwest::Url::parse(target) {
        Ok(u) => format!(
            "{}://{}{}/…",
            u.scheme(),
            u.host_str().unwrap_or(""),
            u.port().map(|p| format!(":{p}")).unwrap_or_default()
        ),
        Err(_) => "(a webhook URL)".to_owned(),
    }
}

/// Delivers the outbox until `cancel`: one worker per webhook and one for the broker,
/// so a receiver that hangs or fails delays only its own notifications. Each worker
/// takes one notification at a time (leased for one attempt), and after a failure
/// rests its target with the same backoff as the notification.
pub async fn deliver(
    store: Store,
    notifier: Arc<Notifier>,
    mqtt: cityhub_core::MqttSettings,
    metrics: AlertMetrics,
    cancel: CancellationToken,
) {
    let s = notifier.settings().clone();
    let timeout = Duration::from_secs(s.timeout_s.get());
    let http = match reqwest::Client::builder().timeout(timeout).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "No HTTP client for webhooks; alerts are not delivered.");
            return;
        }
    };
    let urls: Vec<String> = s.webhooks.iter().map(|w| w.url.to_string()).collect();
    match store.orphan_deliveries(&urls).await {
        Ok(0) | Err(_) => {}
        Ok(n) => tracing::warn!(
            notifications = n,
            "Undelivered alert notifications for webhooks no longer configured stay queued."
        ),
    }
    let tasks = tokio_util::task::TaskTracker::new();
    for hook in &s.webhooks {
        let sender = Sender::Webhook {
            http: http.clone(),
            hook: hook.clone(),
        };
        tasks.spawn(worker(
            store.clone(),
            notifier.clone(),
            hook.url.to_string(),
            sender,
            metrics.clone(),
            cancel.clone(),
        ));
    }
    if let Some(p) = s
        .mqtt
        .then(|| Publisher::start(&mqtt, cancel.clone()))
        .flatten()
    {
        tasks.spawn(worker(
            store.clone(),
            notifier.clone(),
            cityhub_store::alerts::MQTT_TARGET.to_owned(),
            Sender::Broker(p),
            metrics.clone(),
            cancel.clone(),
        ));
    }
    // NGSI-LD notifications: two workers over every subscription's, so one slow
    // receiver does not hold the others (a subscription's own stay in order).
    for _ in 0..2 {
        tasks.spawn(worker(
            store.clone(),
            notifier.clone(),
            cityhub_store::ngsi::TARGET.to_owned(),
            Sender::Subscription {
                http: http.clone(),
                store: store.clone(),
            },
            metrics.clone(),
            cancel.clone(),
        ));
    }
    tasks.close();
    tasks.wait().await;
}

/// How one worker sends.
enum Sender {
    Webhook {
        http: reqwest::Client,
        hook: cityhub_core::alerts::WebhookDef,
    },
    Broker(Publisher),
    /// To each NGSI-LD subscription's endpoint, signed with its secret.
    Subscription {
        http: reqwest::Client,
        store: Store,
    },
}

/// POSTs one NGSI-LD notification to its subscription's endpoint, with the
/// subscription's `receiverInfo` headers, signed with its secret.
async fn notify_subscriber(
    http: &reqwest::Client,
    store: &Store,
    d: &cityhub_store::alerts::Delivery,
) -> Result<(), String> {
    let Some(sub) = d.subscription_id.as_deref() else {
        return Ok(());
    };
    // A subscription deleted meanwhile: its notifications went with it.
    let Some((body, secret)) = store
        .subscription_endpoint(sub)
        .await
        .map_err(|e| format!("reading the subscription: {e}"))?
    else {
        return Ok(());
    };
    let endpoint = &body["notification"]["endpoint"];
    let uri = endpoint["uri"].as_str().unwrap_or_default();
    let accept = endpoint["accept"].as_str().unwrap_or("application/json");
    let mut req = http
        .post(uri)
        .header(reqwest::header::CONTENT_TYPE, accept)
        .header("X-Cityhub-Event", "notification")
        .header("X-Cityhub-Delivery", d.id.to_string())
        .header(
            "X-Cityhub-Signature-256",
            signature(&secret, d.body.as_bytes()),
        )
        .body(d.body.clone());
    for kv in endpoint["receiverInfo"].as_array().into_iter().flatten() {
        if let (Some(k), Some(v)) = (kv["key"].as_str(), kv["value"].as_str()) {
            req = req.header(k, v);
        }
    }
    let outcome = match req.send().await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("HTTP {}", r.status().as_u16())),
        Err(e) if e.is_timeout() => Err("no answer within notify.timeout_s".to_owned()),
        Err(e) if e.is_connect() => Err("could not connect".to_owned()),
        Err(e) => Err(format!("request failed: {}", e.without_url())),
    };
    if let Err(e) = store.subscription_delivered(sub, outcome.is_ok()).await {
        tracing::warn!(error = %e, subscription = sub, "Recording a notification's outcome failed.");
    }
    outcome
}

impl Sender {
    async fn send(
        &mut self,
        d: &cityhub_store::alerts::Delivery,
        timeout: Duration,
    ) -> Result<(), String> {
        match self {
            Sender::Webhook { http, hook } => post(http, hook, d).await,
            Sender::Subscription { http, store } => notify_subscriber(http, store, d).await,
            Sender::Broker(p) => {
                let topic = d
                    .target
                    .strip_prefix(cityhub_store::alerts::MQTT_TARGET)
                    .unwrap_or(&d.target);
                p.publish(topic, &d.body, timeout).await
            }
        }
    }
}

/// Delivers `target`'s notifications (every `mqtt:` one for the broker) in order.
async fn worker(
    store: Store,
    notifier: Arc<Notifier>,
    target: String,
    mut sender: Sender,
    metrics: AlertMetrics,
    cancel: CancellationToken,
) {
    let s = notifier.settings().clone();
    let timeout = Duration::from_secs(s.timeout_s.get());
    let prefix = matches!(sender, Sender::Broker(_) | Sender::Subscription { .. });
    // One subscriber's failure holds only its own notifications (the outbox keeps
    // them in order and retries them), not the worker.
    let rests = !matches!(sender, Sender::Subscription { .. });
    // One attempt's time and a margin: past it, another hub may take the row.
    let lease = (s.timeout_s.get() + 5) as f64;
    let shown = redacted(&target);
    loop {
        let claimed = match store.claim_delivery(&target, prefix, lease).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, target = %shown, "Reading the alert outbox failed; retrying.");
                None
            }
        };
        let Some(d) = claimed else {
            tokio::select! {
                _ = notifier.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = cancel.cancelled() => return,
            }
            continue;
        };
        let outcome = match sender.send(&d, timeout).await {
            Ok(()) => {
                metrics.delivered.inc();
                Ok(())
            }
            Err(err) => {
                metrics.failed.inc();
                // 2, 4, 8, ... seconds, at most max_backoff_s.
                let wait = 2f64
                    .powi(d.attempts.clamp(0, 30) + 1)
                    .min(s.max_backoff_s.get() as f64);
                tracing::warn!(delivery = d.id, alert = d.alert_id, target = %shown,
                    attempts = d.attempts + 1, retry_in_s = wait, error = %err,
                    "An alert notification failed; it will be retried.");
                Err((err, wait))
            }
        };
        let rest = outcome
            .as_ref()
            .err()
            .map(|(_, wait)| *wait)
            .filter(|_| rests);
        if let Err(e) = store.delivery_done(d.id, outcome).await {
            tracing::warn!(error = %e, delivery = d.id, "Recording an alert notification failed; it may be sent again.");
        }
        if let Some(wait) = rest {
            // The target rests as long as its notification does.
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs_f64(wait)) => {}
                _ = cancel.cancelled() => return,
            }
        } else if cancel.is_cancelled() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn signature_is_hmac_sha256_hex() {
        // RFC 4231, test case 2.
        assert_eq!(
            super::signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
