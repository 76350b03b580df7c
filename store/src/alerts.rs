//! Alerts in the database: raising, clearing and acknowledging each change the
//! alert and write its notifications to the outbox in one transaction, so a
//! notification is never lost and never sent for a change that did not happen.

use crate::error::StoreError;
use crate::Store;
use chrono::{DateTime, Utc};
use cityhub_core::alerts::{NotifySettings, Severity};
use serde::Serialize;
use std::sync::Arc;

/// An alert as the API and notifications show it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Alert {
    pub id: i64,
    pub rule: String,
    pub sensor: String,
    pub kind: String,
    pub metric: String,
    pub severity: String,
    pub state: String,
    pub threshold: f64,
    #[serde(serialize_with = "cityhub_core::time::serialize")]
    pub raised_at: DateTime<Utc>,
    pub raised_value: f64,
    #[serde(serialize_with = "cityhub_core::time::serialize_opt")]
    pub acknowledged_at: Option<DateTime<Utc>>,
    pub ack_note: Option<String>,
    #[serde(serialize_with = "cityhub_core::time::serialize_opt")]
    pub cleared_at: Option<DateTime<Utc>>,
    pub cleared_value: Option<f64>,
}

const COLUMNS: &str =
    "a.id, a.rule, s.external_id, a.kind, a.metric, a.severity, a.state, a.threshold,
     a.raised_at, a.raised_value, a.acknowledged_at, a.ack_note, a.cleared_at, a.cleared_value";

fn alert(r: &tokio_postgres::Row) -> Alert {
    Alert {
        id: r.get(0),
        rule: r.get(1),
        sensor: r.get(2),
        kind: r.get(3),
        metric: r.get(4),
        severity: r.get(5),
        state: r.get(6),
        threshold: r.get(7),
        raised_at: r.get(8),
        raised_value: r.get(9),
        acknowledged_at: r.get(10),
        ack_note: r.get(11),
        cleared_at: r.get(12),
        cleared_value: r.get(13),
    }
}

/// What raises an alert.
#[derive(Debug, Clone)]
pub struct Raise<'a> {
    pub rule: &'a str,
    pub sensor: &'a str,
    pub kind: &'a str,
    pub metric: &'a str,
    pub severity: &'a str,
    pub threshold: f64,
    pub time: DateTime<Utc>,
    pub value: f64,
}

/// The notifications of one change: (target, body) pairs, from the changed alert.
pub type Notify<'a> = &'a (dyn Fn(&Alert, &str) -> Vec<(String, String)> + Sync);

/// Which alerts to list.
#[derive(Debug, Clone, Default)]
pub struct AlertFilter {
    pub states: Vec<String>,
    pub kind: Option<String>,
    pub sensor: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub limit: i64,
}

/// A notification to deliver.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: i64,
    /// The alert it tells of, or the NGSI-LD subscription it notifies.
    pub alert_id: Option<i64>,
    pub subscription_id: Option<String>,
    pub event: String,
    pub target: String,
    pub body: String,
    pub attempts: i32,
}

impl Store {
    /// Alerts not cleared: (rule, sensor) of each.
    pub async fn standing_alerts(&self) -> Result<Vec<(String, String)>, StoreError> {
        let c = self.pool().get().await?;
        Ok(c.query(
            "SELECT a.rule, s.external_id FROM alerts a JOIN sensors s ON s.id = a.sensor_id
             WHERE a.state <> 'cleared'",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
    }

    /// When each (rule, sensor) last cleared (the clearing reading's time), for the
    /// re-raise interval across restarts.
    pub async fn last_cleared(&self) -> Result<Vec<(String, String, DateTime<Utc>)>, StoreError> {
        let c = self.pool().get().await?;
        Ok(c.query(
            "SELECT DISTINCT ON (a.rule, a.sensor_id) a.rule, s.external_id, a.cleared_at
             FROM alerts a JOIN sensors s ON s.id = a.sensor_id
             WHERE a.state = 'cleared' AND a.cleared_at IS NOT NULL
             ORDER BY a.rule, a.sensor_id, a.cleared_at DESC",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
    }

    /// Deletes delivered notifications older than `outbox_days`, and alerts that
    /// cleared more than `alert_days` ago with nothing left to deliver (0 keeps
    /// either); returns (notifications, alerts) deleted.
    pub async fn purge_alerts(
        &self,
        alert_days: u32,
        outbox_days: u32,
    ) -> Result<(u64, u64), StoreError> {
        let c = self.pool().get().await?;
        let mut outbox = 0;
        if outbox_days > 0 {
            outbox = c
                .execute(
                    "DELETE FROM alert_outbox WHERE delivered_at < now() - make_interval(days => $1)",
                    &[&(outbox_days as i32)],
                )
                .await?;
        }
        let mut alerts = 0;
        if alert_days > 0 {
            alerts = c
                .execute(
                    "DELETE FROM alerts a WHERE a.state = 'cleared'
                       AND a.updated_at < now() - make_interval(days => $1)
                       AND NOT EXISTS (SELECT 1 FROM alert_outbox o
                                       WHERE o.alert_id = a.id AND o.delivered_at IS NULL)",
                    &[&(alert_days as i32)],
                )
                .await?;
        }
        Ok((outbox, alerts))
    }

    /// Raises an alert unless one of this rule stands for the sensor; returns it when raised.
    pub async fn raise_alert(
        &self,
        r: &Raise<'_>,
        notify: Notify<'_>,
    ) -> Result<Option<Alert>, StoreError> {
        let mut c = self.pool().get().await?;
        let tx = c.transaction().await?;
        let row = tx
            .query_opt(
                &format!(
                    "WITH s AS (SELECT id, external_id FROM sensors WHERE external_id = $2),
                     a AS (INSERT INTO alerts (rule, sensor_id, kind, metric, severity, state, threshold, raised_at, raised_value)
                           SELECT $1, s.id, $3, $4, $5, 'open', $6, $7, $8 FROM s
                           ON CONFLICT (rule, sensor_id) WHERE state <> 'cleared' DO NOTHING
                           RETURNING *)
                     SELECT {COLUMNS} FROM a JOIN s ON s.id = a.sensor_id"
                ),
                &[&r.rule, &r.sensor, &r.kind, &r.metric, &r.severity, &r.threshold, &r.time, &r.value],
            )
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let a = alert(&row);
        outbox(&tx, &a, "raised", notify).await?;
        tx.commit().await?;
        Ok(Some(a))
    }

    /// Clears the standing alert of `rule` for `sensor`, if any.
    pub async fn clear_alert(
        &self,
        rule: &str,
        sensor: &str,
        time: DateTime<Utc>,
        value: f64,
        notify: Notify<'_>,
    ) -> Result<Option<Alert>, StoreError> {
        self.change(
            "UPDATE alerts a SET state = 'cleared', cleared_at = $3, cleared_value = $4, updated_at = now()
             FROM sensors s WHERE s.id = a.sensor_id AND a.rule = $1 AND s.external_id = $2 AND a.state <> 'cleared'",
            &[&rule, &sensor, &time, &value],
            "cleared",
            notify,
            None,
        )
        .await
    }

    /// An operator acknowledges an open alert (with a note). None when there is no
    /// such alert; `Err(state)` inside Ok when it is not open.
    pub async fn ack_alert(
        &self,
        id: i64,
        note: Option<&str>,
        notify: Notify<'_>,
        actor: &str,
    ) -> Result<Result<Alert, Option<String>>, StoreError> {
        let done = self
            .change(
                "UPDATE alerts a SET state = 'acknowledged', acknowledged_at = now(), ack_note = $2, updated_at = now()
                 FROM sensors s WHERE s.id = a.sensor_id AND a.id = $1 AND a.state = 'open'",
                &[&id, &note],
                "acknowledged",
                notify,
                Some(actor),
            )
            .await?;
        if let Some(a) = done {
            return Ok(Ok(a));
        }
        let c = self.pool().get().await?;
        let state = c
            .query_opt("SELECT state FROM alerts WHERE id = $1", &[&id])
            .await?
            .map(|r| r.get::<_, String>(0));
        Ok(Err(state))
    }

    async fn change(
        &self,
        update: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        event: &str,
        notify: Notify<'_>,
        actor: Option<&str>,
    ) -> Result<Option<Alert>, StoreError> {
        let mut c = self.pool().get().await?;
        let tx = c.transaction().await?;
        let row = tx
            .query_opt(&format!("{update} RETURNING {COLUMNS}"), params)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let a = alert(&row);
        outbox(&tx, &a, event, notify).await?;
        if let Some(actor) = actor {
            let target = format!("alert:{}", a.id);
            let before = serde_json::json!({"state": "open"});
            let after = serde_json::json!({"state": a.state, "note": a.ack_note,
                "rule": a.rule, "sensor": a.sensor});
            crate::trust::audit(
                &tx,
                actor,
                &format!("alert.{event}"),
                &target,
                Some(&before),
                Some(&after),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(Some(a))
    }

    /// Alerts, newest first.
    pub async fn alerts(&self, f: &AlertFilter) -> Result<Vec<Alert>, StoreError> {
        let c = self.pool().get().await?;
        let rows = c
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM alerts a JOIN sensors s ON s.id = a.sensor_id
                     WHERE (cardinality($1::text[]) = 0 OR a.state = ANY($1))
                       AND ($2::text IS NULL OR a.kind = $2)
                       AND ($3::text IS NULL OR s.external_id = $3)
                       AND ($4::timestamptz IS NULL OR a.updated_at >= $4 OR a.raised_at >= $4)
                     ORDER BY a.raised_at DESC, a.id DESC LIMIT $5"
                ),
                &[&f.states, &f.kind, &f.sensor, &f.since, &f.limit],
            )
            .await?;
        Ok(rows.iter().map(alert).collect())
    }

    /// Takes the next notification due for one target (`target` itself, or every target
    /// starting with it when `prefix`), leased for `lease_s`: one attempt's time, so
    /// another hub takes it only when this one's attempt is surely over. An event waits
    /// while an earlier event of the same alert for the same target is undelivered, so
    /// a receiver never gets `cleared` before `raised`, whatever the retries did.
    pub async fn claim_delivery(
        &self,
        target: &str,
        prefix: bool,
        lease_s: f64,
    ) -> Result<Option<Delivery>, StoreError> {
        let c = self.pool().get().await?;
        let row = c
            .query_opt(
                "UPDATE alert_outbox o SET next_attempt_at = now() + make_interval(secs => $3)
                 WHERE o.id = (
                     SELECT q.id FROM alert_outbox q
                     WHERE q.delivered_at IS NULL AND q.next_attempt_at <= now()
                       AND left(q.target, length($1)) = $1 AND ($2 OR q.target = $1)
                       AND NOT EXISTS (SELECT 1 FROM alert_outbox p
                                       WHERE p.alert_id = q.alert_id AND p.target = q.target
                                         AND p.delivered_at IS NULL AND p.id < q.id)
                       AND NOT EXISTS (SELECT 1 FROM alert_outbox p
                                       WHERE p.subscription_id = q.subscription_id
                                         AND p.target = q.target
                                         AND p.delivered_at IS NULL AND p.id < q.id)
                     ORDER BY q.id LIMIT 1 FOR UPDATE SKIP LOCKED)
                 RETURNING o.id, o.alert_id, o.event, o.target, o.body, o.attempts, o.subscription_id",
                &[&target, &prefix, &lease_s],
            )
            .await?;
        Ok(row.map(|r| Delivery {
            id: r.get(0),
            alert_id: r.get(1),
            event: r.get(2),
            target: r.get(3),
            body: r.get(4),
            attempts: r.get(5),
            subscription_id: r.get(6),
        }))
    }

    /// Undelivered notifications for targets no longer configured (they stay queued).
    pub async fn orphan_deliveries(&self, targets: &[String]) -> Result<i64, StoreError> {
        let c = self.pool().get().await?;
        Ok(c.query_one(
            "SELECT count(*) FROM alert_outbox WHERE delivered_at IS NULL
               AND NOT target = ANY($1) AND target NOT LIKE 'mqtt:%' AND subscription_id IS NULL",
            &[&targets],
        )
        .await?
        .get(0))
    }

    /// Records a delivery's outcome: delivered, or retried after `retry_in_s`.
    pub async fn delivery_done(
        &self,
        id: i64,
        outcome: Result<(), (String, f64)>,
    ) -> Result<(), StoreError> {
        let c = self.pool().get().await?;
        match outcome {
            Ok(()) => {
                c.execute(
                    "UPDATE alert_outbox SET delivered_at = now(), attempts = attempts + 1, last_error = NULL WHERE id = $1",
                    &[&id],
                )
                .await?
            }
            Err((error, retry_in_s)) => {
                c.execute(
                    "UPDATE alert_outbox SET attempts = attempts + 1, last_error = $2,
                         next_attempt_at = now() + make_interval(secs => $3) WHERE id = $1",
                    &[&id, &error, &retry_in_s],
                )
                .await?
            }
        };
        Ok(())
    }

    /// Notifications not delivered yet (for `/metrics`).
    pub async fn undelivered(&self) -> Result<i64, StoreError> {
        let c = self.pool().get().await?;
        Ok(c.query_one(
            "SELECT count(*) FROM alert_outbox WHERE delivered_at IS NULL",
            &[],
        )
        .await?
        .get(0))
    }
}

async fn outbox(
    tx: &tokio_postgres::Transaction<'_>,
    a: &Alert,
    event: &str,
    notify: Notify<'_>,
) -> Result<(), StoreError> {
    for (target, body) in notify(a, event) {
        tx.execute(
            "INSERT INTO alert_outbox (alert_id, event, target, body) VALUES ($1, $2, $3, $4)",
            &[&a.id, &event, &target, &body],
        )
        .await?;
    }
    Ok(())
}

/// Outbox targets that are MQTT topics start with this.
pub const MQTT_TARGET: &str = "mqtt:";

/// Where an alert event is published on the broker. Ingestion ignores this
/// branch of `cityhub/v1/`, so the hub never reads its own alerts as readings.
pub fn alert_topic(kind: &str, sensor: &str) -> String {
    format!(
        "{}{kind}/{sensor}",
        cityhub_core::alerts::ALERT_TOPIC_PREFIX
    )
}

/// Builds the notifications of an alert change, and wakes the delivery task.
pub struct Notifier {
    settings: NotifySettings,
    pub wake: tokio::sync::Notify,
}

/// The body every receiver gets. `event_id` (`{alert id}-{event}`) is the same in
/// every retry: a receiver deduplicates on it.
#[derive(Debug, Serialize)]
struct Body<'a> {
    event_id: String,
    event: &'a str,
    alert: &'a Alert,
}

/// An alert event as every receiver gets it (webhooks, the broker, the stream).
pub fn event_json(a: &Alert, event: &str) -> String {
    serde_json::to_string(&Body {
        event_id: format!("{}-{event}", a.id),
        event,
        alert: a,
    })
    .unwrap_or_default()
}

impl Notifier {
    pub fn new(settings: NotifySettings) -> Arc<Self> {
        Arc::new(Self {
            settings,
            wake: tokio::sync::Notify::new(),
        })
    }

    pub fn settings(&self) -> &NotifySettings {
        &self.settings
    }

    /// (target, body) for each webhook that wants this alert (its URL), and the
    /// broker (`mqtt:` and the topic) when `notify.mqtt` is on.
    pub fn bodies(&self, a: &Alert, event: &str) -> Vec<(String, String)> {
        let severity = match a.severity.as_str() {
            "info" => Severity::Info,
            "critical" => Severity::Critical,
            _ => Severity::Warning,
        };
        let mut targets: Vec<String> = self
            .settings
            .webhooks
            .iter()
            .filter(|w| w.wants(&a.kind, severity))
            .map(|w| w.url.to_string())
            .collect();
        if self.settings.mqtt {
            targets.push(format!("{MQTT_TARGET}{}", alert_topic(&a.kind, &a.sensor)));
        }
        if targets.is_empty() {
            return Vec::new();
        }
        let body = event_json(a, event);
        targets.into_iter().map(|t| (t, body.clone())).collect()
    }
}
