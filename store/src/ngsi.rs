//! NGSI-LD subscriptions in the database: created and deleted with their audit row
//! in one transaction; each batch's changes (`ngsi_changes`, written by the batch
//! writer) turned into notifications in the alerts' outbox, which delivers them
//! signed, with retries, across restarts.

use crate::trust::audit;
use crate::{Store, StoreError};
use chrono::{DateTime, Utc};
use serde_json::Value;

/// Outbox targets of NGSI-LD notifications start with this, then the subscription id.
pub const TARGET: &str = "ngsi-ld:";

/// A subscription as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    pub id: String,
    pub body: Value,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub last_notification: Option<DateTime<Utc>>,
    pub last_success: Option<DateTime<Utc>>,
    pub last_failure: Option<DateTime<Utc>>,
    pub times_sent: i64,
}

const COLUMNS: &str = "id, body, created_by, created_at, last_notification, last_success,
    last_failure, times_sent";

fn subscription(r: &tokio_postgres::Row) -> Subscription {
    Subscription {
        id: r.get(0),
        body: r.get(1),
        created_by: r.get(2),
        created_at: r.get(3),
        last_notification: r.get(4),
        last_success: r.get(5),
        last_failure: r.get(6),
        times_sent: r.get(7),
    }
}

/// One batch's changes, leased to this hub.
#[derive(Debug, Clone)]
pub struct Changes {
    pub id: i64,
    pub pairs: Vec<(i32, i16)>,
}

impl Store {
    /// Creates a subscription; false when one with this id exists.
    pub async fn create_subscription(
        &self,
        actor: &str,
        id: &str,
        body: &Value,
        secret: &str,
    ) -> Result<bool, StoreError> {
        let mut c = self.pool().get().await?;
        let tx = c.transaction().await?;
        let n = tx
            .execute(
                "INSERT INTO ngsi_subscriptions (id, body, secret, created_by)
                 VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
                &[&id, body, &secret, &actor],
            )
            .await?;
        if n == 0 {
            return Ok(false);
        }
        audit(&tx, actor, "ngsi_subscription.create", id, None, Some(body)).await?;
        tx.commit().await?;
        self.set_ngsi_subscribed(true);
        Ok(true)
    }

    /// Deletes a subscription and its undelivered notifications; false when absent.
    pub async fn delete_subscription(&self, actor: &str, id: &str) -> Result<bool, StoreError> {
        let mut c = self.pool().get().await?;
        let tx = c.transaction().await?;
        let Some(row) = tx
            .query_opt(
                "DELETE FROM ngsi_subscriptions WHERE id = $1 RETURNING body",
                &[&id],
            )
            .await?
        else {
            return Ok(false);
        };
        let before: Value = row.get(0);
        audit(
            &tx,
            actor,
            "ngsi_subscription.delete",
            id,
            Some(&before),
            None,
        )
        .await?;
        tx.commit().await?;
        self.reload_ngsi_subscribed().await?;
        Ok(true)
    }

    /// Sets [`Store::ngsi_subscribed`] from the table (subscriptions other hubs made).
    pub async fn reload_ngsi_subscribed(&self) -> Result<bool, StoreError> {
        let c = self.pool().get().await?;
        let any: bool = c
            .query_one("SELECT EXISTS (SELECT 1 FROM ngsi_subscriptions)", &[])
            .await?
            .get(0);
        self.set_ngsi_subscribed(any);
        Ok(any)
    }

    pub async fn subscriptions(&self) -> Result<Vec<Subscription>, StoreError> {
        let c = self.pool().get().await?;
        let rows = c
            .query(
                &format!("SELECT {COLUMNS} FROM ngsi_subscriptions ORDER BY created_at, id"),
                &[],
            )
            .await?;
        Ok(rows.iter().map(subscription).collect())
    }

    pub async fn subscription(&self, id: &str) -> Result<Option<Subscription>, StoreError> {
        let c = self.pool().get().await?;
        Ok(c.query_opt(
            &format!("SELECT {COLUMNS} FROM ngsi_subscriptions WHERE id = $1"),
            &[&id],
        )
        .await?
        .as_ref()
        .map(subscription))
    }

    /// Where a subscription's notifications go and the secret that signs them.
    pub async fn subscription_endpoint(
        &self,
        id: &str,
    ) -> Result<Option<(Value, String)>, StoreError> {
        let c = self.pool().get().await?;
        Ok(c.query_opt(
            "SELECT body, secret FROM ngsi_subscriptions WHERE id = $1",
            &[&id],
        )
        .await?
        .map(|r| (r.get(0), r.get(1))))
    }

    /// Records a delivery attempt's outcome on its subscription.
    pub async fn subscription_delivered(&self, id: &str, ok: bool) -> Result<(), StoreError> {
        let c = self.pool().get().await?;
        let sql = if ok {
            "UPDATE ngsi_subscriptions SET last_success = now(), times_sent = times_sent + 1 WHERE id = $1"
        } else {
            "UPDATE ngsi_subscriptions SET last_failure = now() WHERE id = $1"
        };
        c.execute(sql, &[&id]).await?;
        Ok(())
    }

    /// Leases the oldest batch of changes for `lease_s` (another hub takes it after).
    pub async fn claim_changes(&self, lease_s: f64) -> Result<Option<Changes>, StoreError> {
        let c = self.pool().get().await?;
        let row = c
            .query_opt(
                "UPDATE ngsi_changes c SET leased_until = now() + make_interval(secs => $1)
                 WHERE c.id = (SELECT id FROM ngsi_changes WHERE leased_until < now()
                               ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
                 RETURNING c.id, c.sensor_ids, c.metric_ids",
                &[&lease_s],
            )
            .await?;
        Ok(row.map(|r| {
            let (s, m): (Vec<i32>, Vec<i16>) = (r.get(1), r.get(2));
            Changes {
                id: r.get(0),
                pairs: s.into_iter().zip(m).collect(),
            }
        }))
    }

    /// Turns a leased batch of changes into its notifications (subscription id, body),
    /// in one transaction; false when the lease was lost and another hub did it.
    pub async fn finish_changes(
        &self,
        id: i64,
        notifications: &[(String, String)],
    ) -> Result<bool, StoreError> {
        let mut c = self.pool().get().await?;
        let tx = c.transaction().await?;
        if tx
            .execute("DELETE FROM ngsi_changes WHERE id = $1", &[&id])
            .await?
            == 0
        {
            return Ok(false);
        }
        for (sub, body) in notifications {
            // A subscription deleted meanwhile gets nothing (and its row no FK error).
            tx.execute(
                "INSERT INTO alert_outbox (subscription_id, event, target, body)
                 SELECT id, 'notification', $2, $3 FROM ngsi_subscriptions WHERE id = $1",
                &[&sub, &format!("{TARGET}{sub}"), &body],
            )
            .await?;
            tx.execute(
                "UPDATE ngsi_subscriptions SET last_notification = now() WHERE id = $1",
                &[&sub],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }
}

impl Store {
    /// The external ids of sensors by their numbers.
    pub async fn external_ids(&self, pks: &[i32]) -> Result<Vec<(i32, String)>, StoreError> {
        let c = self.pool().get().await?;
        let rows = c
            .query(
                "SELECT id, external_id FROM sensors WHERE id = ANY($1) ORDER BY id",
                &[&pks],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}
