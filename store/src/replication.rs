//! High availability as the hub sees it: whether a commit it acknowledges would
//! survive the loss of the primary (a synchronous standby has it), and the standbys
//! the public API reads from (`database.read_url`), with how far behind they are.

use crate::{PoolError, PooledClient, Store, StoreError};
use deadpool_postgres::Pool;
use serde::Serialize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The standbys' pools, and a pause on them after none could be reached.
pub(crate) struct Standbys {
    pub queries: Pool,
    pub downloads: Pool,
    /// Until then reads go to the primary: no standby answered a moment ago, and
    /// asking again on every request would add a connect timeout to each.
    down_until: Mutex<Option<Instant>>,
    pause: Duration,
}

impl Standbys {
    pub fn new((queries, downloads): (Pool, Pool), pause: Duration) -> Self {
        Self {
            queries,
            downloads,
            down_until: Mutex::new(None),
            pause,
        }
    }

    fn usable(&self) -> bool {
        let until = self.down_until.lock().unwrap_or_else(|p| p.into_inner());
        until.is_none_or(|t| Instant::now() >= t)
    }

    fn mark_down(&self, e: &PoolError) {
        let mut until = self.down_until.lock().unwrap_or_else(|p| p.into_inner());
        if until.is_none_or(|t| Instant::now() >= t) {
            tracing::warn!(error = %e, pause_s = self.pause.as_secs(), "No standby of database.read_url answers; reading from the primary meanwhile.");
        }
        *until = Some(Instant::now() + self.pause);
    }
}

/// A standby that could not be reached (as opposed to a pool whose connections are
/// all in use, which the caller reports as busy).
fn unreachable(e: &PoolError) -> bool {
    matches!(
        e,
        PoolError::Backend(_) | PoolError::Timeout(deadpool_postgres::TimeoutType::Create)
    )
}

impl Store {
    /// This handle, reading from the standbys of `database.read_url` where it has
    /// them: what the public API reads with. Writes, and everything read through
    /// [`Store::pool`], stay on the primary.
    pub fn reader(&self) -> Store {
        Store {
            inner: self.inner.clone(),
            on_standby: true,
        }
    }

    /// A connection to read with: on a standby for a [`Store::reader`] handle while
    /// one answers, else on the primary.
    pub async fn read_client(&self) -> Result<PooledClient, StoreError> {
        Ok(self
            .preferring_standby(|s| &s.queries, &self.inner.pool)
            .await?)
    }

    /// A connection for a long download, from the download pool of a standby (for
    /// a [`Store::reader`] handle while one answers) or of the primary.
    pub async fn download_client(&self) -> Result<PooledClient, PoolError> {
        self.preferring_standby(|s| &s.downloads, &self.inner.streams)
            .await
    }

    /// From the standbys' pool `standby` picks while they are usable, else from
    /// `primary`; a standby that cannot be reached pauses them.
    async fn preferring_standby(
        &self,
        standby: impl Fn(&Standbys) -> &Pool,
        primary: &Pool,
    ) -> Result<PooledClient, PoolError> {
        if let Some(s) = self.standbys() {
            match standby(s).get().await {
                Ok(c) => return Ok(c),
                Err(e) if unreachable(&e) => s.mark_down(&e),
                Err(e) => return Err(e),
            }
        }
        primary.get().await
    }

    fn standbys(&self) -> Option<&Standbys> {
        self.inner
            .standbys
            .as_ref()
            .filter(|s| self.on_standby && s.usable())
    }

    /// Whether the primary would keep what it acknowledged if it failed now, and
    /// where the API reads; asked on the primary, then on a standby.
    pub async fn replication(&self) -> Result<Replication, StoreError> {
        let c = self.inner.pool.get().await?;
        let row = c
            .query_one(
                "SELECT current_setting('synchronous_commit'),
                        current_setting('synchronous_standby_names'),
                        (SELECT count(*) FROM pg_stat_replication),
                        (SELECT count(*) FROM pg_stat_replication WHERE sync_state IN ('sync', 'quorum')),
                        (SELECT count(*) FROM pg_stat_replication WHERE sync_state IS NULL)",
                &[],
            )
            .await?;
        drop(c);
        let hidden: i64 = row.get(4);
        let mut r = Replication::judge(
            row.get(0),
            row.get(1),
            row.get(2),
            (hidden == 0).then(|| row.get(3)),
        );
        if let Some(s) = &self.inner.standbys {
            match read_lag(&s.queries).await {
                Ok(Some(lag)) => {
                    r.reads = "standby";
                    r.read_lag_s = Some(lag);
                }
                Ok(None) => r.reads = "primary (read_url reached a primary)",
                Err(e) => {
                    tracing::debug!(error = %e, "Replication status: no standby answers.");
                    r.reads = "primary (no standby answers)";
                }
            }
        }
        Ok(r)
    }
}

/// Seconds the standby's data is behind the primary's: 0 when it has replayed all it
/// received, else the age of the last transaction it replayed; `None` on a primary.
async fn read_lag(pool: &Pool) -> Result<Option<f64>, StoreError> {
    let c = pool.get().await?;
    let row = c
        .query_one(
            "SELECT CASE WHEN NOT pg_is_in_recovery() THEN NULL
                         WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
                         ELSE greatest(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0)::float8
                    END",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// The replication state `/readyz` reports.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Replication {
    /// True when every commit the hub acknowledges is also on a synchronous standby,
    /// so a failover to it loses no acknowledged reading.
    pub durable_on_failover: bool,
    pub synchronous_commit: String,
    pub synchronous_standby_names: String,
    /// Standbys streaming from the primary.
    pub standbys: i64,
    /// Of those, the synchronous ones; `null` when the hub's role may not see it
    /// (grant it `pg_monitor`).
    pub synchronous_standbys: Option<i64>,
    /// Why acknowledged readings could be lost on failover, when they could.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    /// Where the public API reads: `primary` (no `read_url`), `standby`, or the
    /// primary for the reason given.
    pub reads: &'static str,
    /// How far the standby the API reads from is behind, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_lag_s: Option<f64>,
}

impl Replication {
    /// Judges the primary's settings: a commit waits for a standby only when
    /// `synchronous_commit` is `on`, `remote_write` or `remote_apply` and
    /// `synchronous_standby_names` names one, and that standby is connected (Patroni's
    /// `synchronous_mode` empties the names when none is, to keep accepting writes).
    pub fn judge(commit: String, names: String, standbys: i64, synchronous: Option<i64>) -> Self {
        let waits = matches!(commit.as_str(), "on" | "remote_write" | "remote_apply");
        let warning = if names.trim().is_empty() {
            Some(if standbys == 0 {
                "no synchronous standby (synchronous_standby_names is empty, none streams): a failover would lose the commits not yet copied; fine for a single-node install".to_owned()
            } else {
                format!("{standbys} standby(s) stream asynchronously (synchronous_standby_names is empty): a failover may lose the last acknowledged readings; set Patroni's synchronous_mode")
            })
        } else if !waits {
            Some(format!(
                "synchronous_commit is {commit}: commits do not wait for the synchronous standby"
            ))
        } else if synchronous == Some(0) {
            Some(
                "synchronous_standby_names is set but no synchronous standby is connected"
                    .to_owned(),
            )
        } else {
            None
        };
        Self {
            durable_on_failover: warning.is_none(),
            synchronous_commit: commit,
            synchronous_standby_names: names,
            standbys,
            synchronous_standbys: synchronous,
            warning,
            reads: "primary",
            read_lag_s: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_connected_synchronous_standby_with_a_waiting_commit_is_durable() {
        let j = |c: &str, n: &str, s, y| Replication::judge(c.into(), n.into(), s, y);
        assert!(j("on", "\"node2\"", 2, Some(1)).durable_on_failover);
        assert!(j("remote_apply", "ANY 1 (a, b)", 2, Some(2)).durable_on_failover);
        // Not visible to the role: judged by the settings alone.
        assert!(j("on", "node2", 1, None).durable_on_failover);
        let single = j("on", "", 0, Some(0));
        assert!(!single.durable_on_failover);
        assert!(single.warning.unwrap().contains("single-node"));
        assert!(j("on", "", 2, Some(0))
            .warning
            .unwrap()
            .contains("asynchronously"));
        assert!(!j("local", "node2", 1, Some(1)).durable_on_failover);
        assert!(!j("off", "node2", 1, Some(1)).durable_on_failover);
        assert!(!j("on", "node2", 1, Some(0)).durable_on_failover);
    }
}
