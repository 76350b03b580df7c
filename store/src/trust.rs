//! Operator accounts, device credentials and the audit trail. Secrets arrive here
//! already hashed (`cityhub_core::credentials`); every change writes its audit row
//! in the change's own transaction, so there is no change without its record.

use crate::{Store, StoreError};
use chrono::{DateTime, Utc};
use cityhub_core::credentials::Role;
use deadpool_postgres::GenericClient;
use serde::Serialize;
use serde_json::{json, Value};

/// Records `action` on `target` by `actor` with the values before and after.
/// Called inside the change's transaction.
pub async fn audit<C: GenericClient>(
    c: &C,
    actor: &str,
    action: &str,
    target: &str,
    before: Option<&Value>,
    after: Option<&Value>,
) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO audit (actor, action, target, before, after) VALUES ($1, $2, $3, $4, $5)",
        &[&actor, &action, &target, &before, &after],
    )
    .await?;
    Ok(())
}

/// An operator account as listed (never its hash).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct OperatorInfo {
    pub name: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    pub rotated_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub disabled_at: Option<DateTime<Utc>>,
}

/// What the API needs to check a token: the hash, and whether it may still be used.
#[derive(Debug, Clone)]
pub struct Account {
    pub name: String,
    pub role: Role,
    pub token_id: String,
    pub token_hash: String,
    pub expires_at: Option<DateTime<Utc>>,
}

/// A device's credential as listed (never its hash).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeviceInfo {
    pub name: String,
    /// None for a network server's integration client.
    pub kind: Option<String>,
    pub username: String,
    pub topics: Vec<String>,
    pub on_broker: bool,
    pub auth: DeviceAuth,
    pub provisioned_at: DateTime<Utc>,
    pub rotated_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A new device credential, its secret already hashed.
#[derive(Debug, Clone)]
pub struct NewDevice {
    pub name: String,
    pub kind: Option<String>,
    pub username: String,
    pub topics: Vec<String>,
    pub secret_hash: String,
    pub on_broker: bool,
    pub auth: DeviceAuth,
}

/// How a device signs in to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceAuth {
    /// A password (the same one signs its HTTP uploads).
    Password,
    /// A client certificate whose CN is its username (`use_identity_as_username` on an
    /// mqtts listener); it has no password.
    Certificate,
}

impl DeviceAuth {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Password => "password",
            Self::Certificate => "certificate",
        }
    }
}

/// One audit row.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AuditEntry {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

/// Which audit rows, newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub actor: Option<String>,
    /// An action, or a prefix ending in `.` (`sensor.` for every sensor change).
    pub action: Option<String>,
    pub target: Option<String>,
    pub since: Option<DateTime<Utc>>,
    /// Rows older than this id (paging).
    pub before: Option<i64>,
    pub limit: i64,
}

fn operator_json(o: &OperatorInfo) -> Value {
    json!({"name": o.name, "role": o.role, "expires_at": o.expires_at, "disabled_at": o.disabled_at})
}

fn device_json(d: &DeviceInfo) -> Value {
    json!({"name": d.name, "kind": d.kind, "username": d.username, "topics": d.topics,
           "on_broker": d.on_broker, "revoked_at": d.revoked_at})
}

/// A table whose rows [`Store::audited`] changes, keyed by `name`.
struct Change {
    table: &'static str,
    columns: &'static str,
    /// The audit target's prefix (`operator:<name>`).
    target: &'static str,
}

const OPERATOR_COLUMNS: &str = "name, role, created_at, rotated_at, expires_at, disabled_at";

fn operator(r: &tokio_postgres::Row) -> OperatorInfo {
    OperatorInfo {
        name: r.get(0),
        role: r.get::<_, &str>(1).parse().unwrap_or(Role::Viewer),
        created_at: r.get(2),
        rotated_at: r.get(3),
        expires_at: r.get(4),
        disabled_at: r.get(5),
    }
}

const DEVICE_COLUMNS: &str =
    "name, kind, username, topics, on_broker, provisioned_at, rotated_at, revoked_at, auth";

fn device(r: &tokio_postgres::Row) -> DeviceInfo {
    DeviceInfo {
        name: r.get(0),
        kind: r.get(1),
        username: r.get(2),
        topics: r.get(3),
        on_broker: r.get(4),
        provisioned_at: r.get(5),
        rotated_at: r.get(6),
        revoked_at: r.get(7),
        auth: match r.get::<_, &str>(8) {
            "certificate" => DeviceAuth::Certificate,
            _ => DeviceAuth::Password,
        },
    }
}

impl Store {
    /// Adds an account; an existing name is [`StoreError::Exists`].
    pub async fn add_operator(
        &self,
        actor: &str,
        name: &str,
        role: Role,
        token_id: &str,
        token_hash: &str,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<OperatorInfo, StoreError> {
        let mut c = self.pool().get().await?;
        let tx = c.transaction().await?;
        let row = tx
            .query_opt(
                &format!(
                    "INSERT INTO operators (name, role, token_id, token_hash, expires_at)
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO NOTHING
                     RETURNING {OPERATOR_COLUMNS}"
                ),
                &[
                    &name,
                    &role.to_string(),
                    &token_id,
                    &token_hash,
                    &expires_at,
                ],
            )
            .await?
            .ok_or_else(|| StoreError::Exists(format!("operator {name:?}")))?;
        let o = operator(&row);
        let target = format!("operator:{name}");
        audit(
            &tx,
            actor,
            "operator.add",
            &target,
            None,
            Some(&operator_json(&o)),
        )
        .await?;
        tx.commit().await?;
        Ok(o)
    }

    pub async fn operators(&self) -> Result<Vec<OperatorInfo>, StoreError> {
        let c = self.pool().get().await?;
        let rows = c
            .query(
                &format!("SELECT {OPERATOR_COLUMNS} FROM operators ORDER BY name"),
                &[],
            )
            .await?;
        Ok(rows.iter().map(operator).collect())
    }

    /// The accounts that may sign in now (not disabled, not expired).
    pub async fn active_accounts(&self) -> Result<Vec<Account>, StoreError> {
        let c = self.pool().get().await?;
        let rows = c
            .query(
                "SELECT name, role, token_id, token_hash, expires_at FROM operators
                 WHERE disabled_at IS NULL AND (expires_at IS NULL OR expires_at > now())",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                Some(Account {
                    name: r.get(0),
                    role: r.get::<_, &str>(1).parse().ok()?,
                    token_id: r.get(2),
                    token_hash: r.get(3),
                    expires_at: r.get(4),
                })
            })
            .collect())
    }

    /// Changes an account in one audited transaction: `set` is the SQL assignment list
    /// (parameters from $2), `action` the audit action. None when there is no such account.
    async fn change_operator(
        &self,
        actor: &str,
        name: &str,
        action: &str,
        set: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Option<OperatorInfo>, StoreError> {
        let change = Change {
            table: "operators",
            columns: OPERATOR_COLUMNS,
            target: "operator",
        };
        self.audited(
            &change,
            actor,
            name,
            action,
            set,
            params,
            operator,
            operator_json,
        )
        .await
    }

    /// One audited change of the row `name` of `c.table`: read for update, changed,
    /// recorded with its values before and after, in one transaction.
    #[allow(clippy::too_many_arguments)]
    async fn audited<T>(
        &self,
        c: &Change,
        actor: &str,
        name: &str,
        action: &str,
        set: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        read: fn(&tokio_postgres::Row) -> T,
        json: fn(&T) -> Value,
    ) -> Result<Option<T>, StoreError> {
        let mut client = self.pool().get().await?;
        let tx = client.transaction().await?;
        let Some(before) = tx
            .query_opt(
                &format!(
                    "SELECT {} FROM {} WHERE name = $1 FOR UPDATE",
                    c.columns, c.table
                ),
                &[&name],
            )
            .await?
        else {
            return Ok(None);
        };
        let before = read(&before);
        let mut all: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&name];
        all.extend_from_slice(params);
        let after = tx
            .query_one(
                &format!(
                    "UPDATE {} SET {set} WHERE name = $1 RETURNING {}",
                    c.table, c.columns
                ),
                &all,
            )
            .await?;
        let after = read(&after);
        let target = format!("{}:{name}", c.target);
        audit(
            &tx,
            actor,
            action,
            &target,
            Some(&json(&before)),
            Some(&json(&after)),
        )
        .await?;
        tx.commit().await?;
        Ok(Some(after))
    }

    /// Disables an account: its token stops working at once.
    pub async fn disable_operator(
        &self,
        actor: &str,
        name: &str,
    ) -> Result<Option<OperatorInfo>, StoreError> {
        self.change_operator(
            actor,
            name,
            "operator.disable",
            "disabled_at = coalesce(disabled_at, now())",
            &[],
        )
        .await
    }

    /// Gives an account a new token (the old one stops working) and a new expiry;
    /// a disabled account is enabled again.
    pub async fn rotate_operator(
        &self,
        actor: &str,
        name: &str,
        token_id: &str,
        token_hash: &str,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<Option<OperatorInfo>, StoreError> {
        self.change_operator(
            actor,
            name,
            "operator.rotate",
            "token_id = $2, token_hash = $3, expires_at = $4, rotated_at = now(), disabled_at = NULL",
            &[&token_id, &token_hash, &expires_at],
        )
        .await
    }

    /// Records a device credential; an existing name is [`StoreError::Exists`].
    pub async fn add_device(&self, actor: &str, d: &NewDevice) -> Result<DeviceInfo, StoreError> {
        let mut c = self.pool().get().await?;
        let tx = c.transaction().await?;
        let row = tx
            .query_opt(
                &format!(
                    "INSERT INTO devices (name, kind, username, topics, secret_hash, on_broker, auth)
                     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING
                     RETURNING {DEVICE_COLUMNS}"
                ),
                &[
                    &d.name,
                    &d.kind,
                    &d.username,
                    &d.topics,
                    &d.secret_hash,
                    &d.on_broker,
                    &d.auth.as_str(),
                ],
            )
            .await?
            .ok_or_else(|| StoreError::Exists(format!("device {:?}", d.name)))?;
        let info = device(&row);
        let target = format!("device:{}", d.name);
        audit(
            &tx,
            actor,
            "device.provision",
            &target,
            None,
            Some(&device_json(&info)),
        )
        .await?;
        tx.commit().await?;
        Ok(info)
    }

    pub async fn devices(&self) -> Result<Vec<DeviceInfo>, StoreError> {
        let c = self.pool().get().await?;
        let rows = c
            .query(
                &format!("SELECT {DEVICE_COLUMNS} FROM devices ORDER BY name"),
                &[],
            )
            .await?;
        Ok(rows.iter().map(device).collect())
    }

    pub async fn device(&self, name: &str) -> Result<Option<DeviceInfo>, StoreError> {
        let c = self.pool().get().await?;
        let row = c
            .query_opt(
                &format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE name = $1"),
                &[&name],
            )
            .await?;
        Ok(row.as_ref().map(device))
    }

    /// Whether any device holds a credential that is not revoked.
    pub async fn devices_exist(&self) -> Result<bool, StoreError> {
        let c = self.pool().get().await?;
        let row = c
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM devices WHERE revoked_at IS NULL)",
                &[],
            )
            .await?;
        Ok(row.get(0))
    }

    /// The password hash of the device that sends as `name`, unless revoked or it signs
    /// in with a certificate (it has no password).
    pub async fn device_secret(&self, name: &str) -> Result<Option<String>, StoreError> {
        let c = self.pool().get().await?;
        let row = c
            .query_opt(
                "SELECT secret_hash FROM devices
                 WHERE name = $1 AND revoked_at IS NULL AND auth = 'password'",
                &[&name],
            )
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn change_device(
        &self,
        actor: &str,
        name: &str,
        action: &str,
        set: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Option<DeviceInfo>, StoreError> {
        let change = Change {
            table: "devices",
            columns: DEVICE_COLUMNS,
            target: "device",
        };
        self.audited(
            &change,
            actor,
            name,
            action,
            set,
            params,
            device,
            device_json,
        )
        .await
    }

    /// A new password hash for a device (a revoked device is enabled again).
    pub async fn rotate_device(
        &self,
        actor: &str,
        name: &str,
        secret_hash: &str,
    ) -> Result<Option<DeviceInfo>, StoreError> {
        self.change_device(
            actor,
            name,
            "device.rotate",
            "secret_hash = $2, rotated_at = now(), revoked_at = NULL",
            &[&secret_hash],
        )
        .await
    }

    pub async fn revoke_device(
        &self,
        actor: &str,
        name: &str,
    ) -> Result<Option<DeviceInfo>, StoreError> {
        self.change_device(
            actor,
            name,
            "device.revoke",
            "revoked_at = coalesce(revoked_at, now())",
            &[],
        )
        .await
    }

    /// Sensors in public space whose register entry lacks a purpose or a responsible party.
    /// It gives up at once on a locked registry (`lock_timeout`), for `/readyz`.
    pub async fn register_gaps(&self) -> Result<i64, StoreError> {
        let mut c = self.pool().get().await?;
        let tx = c.transaction().await?;
        tx.batch_execute("SET LOCAL lock_timeout = '100ms'").await?;
        let row = tx
            .query_one(
                "SELECT count(*) FROM sensors
                 WHERE coalesce((register->>'public_space')::boolean, true)
                   AND (register->>'purpose' IS NULL OR register->>'responsible' IS NULL)",
                &[],
            )
            .await?;
        tx.commit().await?;
        Ok(row.get(0))
    }

    /// Registered sensors (of `kind`, when given) with no device credential: `(id, kind)`.
    pub async fn unprovisioned_sensors(
        &self,
        kind: Option<&str>,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let c = self.pool().get().await?;
        let rows = c
            .query(
                "SELECT s.external_id, s.kind FROM sensors s
                 WHERE ($1::text IS NULL OR s.kind = $1)
                   AND NOT EXISTS (SELECT 1 FROM devices d WHERE d.name = s.external_id)
                 ORDER BY s.external_id",
                &[&kind],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Audit rows matching `f`, newest first.
    pub async fn audit_entries(&self, f: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
        let c = self.pool().get().await?;
        let (action, prefix) = match f.action.as_deref() {
            Some(a) if a.ends_with('.') => (None, Some(format!("{a}%"))),
            Some(a) => (Some(a.to_owned()), None),
            None => (None, None),
        };
        let rows = c
            .query(
                "SELECT id, at, actor, action, target, before, after FROM audit
                 WHERE ($1::text IS NULL OR actor = $1) AND ($2::text IS NULL OR action = $2)
                   AND ($3::text IS NULL OR action LIKE $3) AND ($4::text IS NULL OR target = $4)
                   AND ($5::timestamptz IS NULL OR at >= $5) AND ($6::bigint IS NULL OR id < $6)
                 ORDER BY id DESC LIMIT $7",
                &[
                    &f.actor, &action, &prefix, &f.target, &f.since, &f.before, &f.limit,
                ],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| AuditEntry {
                id: r.get(0),
                at: r.get(1),
                actor: r.get(2),
                action: r.get(3),
                target: r.get(4),
                before: r.get(5),
                after: r.get(6),
            })
            .collect())
    }

    /// Deletes audit rows older than `days` days, in slices; returns how many.
    pub async fn purge_audit(&self, days: u32) -> Result<u64, StoreError> {
        let c = self.pool().get().await?;
        let mut total = 0;
        loop {
            let n = c
                .execute(
                    "DELETE FROM audit WHERE id IN (SELECT id FROM audit
                     WHERE at < now() - make_interval(days => $1) ORDER BY id LIMIT 10000)",
                    &[&(days as i32)],
                )
                .await?;
            total += n;
            if n < 10_000 {
                return Ok(total);
            }
        }
    }
}
