//! Plain PostgreSQL's hourly and daily rollups: folding the deltas the writer appends
//! (migration 0006 says why the work is split this way).

use crate::StoreError;

/// Folds up to `limit` pending deltas into `obs_hourly_data` and `obs_daily_data`, in
/// one statement that deletes what it folds; returns how many it folded. Deltas that
/// another hub is folding are skipped, and every rollup row is written in key order,
/// so hubs fold side by side without waiting on or deadlocking each other.
pub async fn fold(c: &tokio_postgres::Client, limit: i64) -> Result<u64, StoreError> {
    // The deltas are grouped by hour once and the days from those hours: grouping the
    // deltas twice, once per table, made the fold the write's costliest step.
    const MERGE: &str =
        "sum(count)::bigint AS count, sum(sum) AS sum, min(min) AS min, max(max) AS max,
        (array_agg(last ORDER BY last_time DESC))[1] AS last, max(last_time) AS last_time";
    let upsert = |table: &str, rows: &str| {
        format!(
            "{table} AS (INSERT INTO {table} AS r {rows} ORDER BY 2, 3, 1
                ON CONFLICT (sensor_id, metric_id, bucket) DO UPDATE SET
                    count = r.count + excluded.count, sum = r.sum + excluded.sum,
                    min = least(r.min, excluded.min), max = greatest(r.max, excluded.max),
                    last = CASE WHEN excluded.last_time >= r.last_time THEN excluded.last ELSE r.last END,
                    last_time = greatest(r.last_time, excluded.last_time))"
        )
    };
    let sql = format!(
        "WITH d AS (DELETE FROM rollup_delta WHERE ctid = ANY(ARRAY(
                        SELECT ctid FROM rollup_delta LIMIT $1 FOR UPDATE SKIP LOCKED))
                    RETURNING *),
              h AS (SELECT bucket, sensor_id, metric_id, {MERGE} FROM d GROUP BY 1, 2, 3),
              {}, {}
         SELECT count(*) FROM d",
        upsert("obs_hourly_data", "SELECT * FROM h"),
        upsert(
            "obs_daily_data",
            &format!("SELECT date_trunc('day', bucket, 'UTC'), sensor_id, metric_id, {MERGE} FROM h GROUP BY 1, 2, 3")
        ),
    );
    let n: i64 = c.query_one(&sql, &[&limit]).await?.get(0);
    Ok(n as u64)
}

/// Vacuums the deltas' table (and analyzes it, with `analyze`), unless another session
/// is vacuuming it. [`FoldRounds`] says when and why.
async fn vacuum(c: &tokio_postgres::Client, analyze: bool) -> Result<(), StoreError> {
    c.batch_execute(if analyze {
        "VACUUM (SKIP_LOCKED, ANALYZE) rollup_delta"
    } else {
        "VACUUM (SKIP_LOCKED) rollup_delta"
    })
    .await?;
    Ok(())
}

/// Deltas per fold statement: bounds a fold's memory and locks.
const FOLD_LIMIT: i64 = 50_000;
/// Deltas folded between two vacuums of their table: it then holds at most about this
/// many dead rows, about 1 MB.
const VACUUM_AFTER: u64 = 10_000;
/// Deltas folded after which a vacuum runs however the last round went: the dead
/// rows' bound when rounds are uneven.
const VACUUM_AT_MOST_AFTER: u64 = 8 * VACUUM_AFTER;
/// How often a vacuum analyzes the table too (the planner's view of its columns), as
/// autovacuum would look.
const ANALYZE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// The fold task's rounds, and when they vacuum the deltas' table.
///
/// Every delta is deleted by a fold soon after it is written, so the table's dead rows
/// grow at the ingest rate, and readers of `obs_hourly` scan past them and their index
/// entries: with autovacuum off, 5,000 messages a second left 956,000 dead rows (86 MB)
/// behind 16,000 pending ones within five minutes; autovacuum at its defaults looks
/// once a minute. So the hub vacuums the table itself, and the dead rows' space is
/// reused.
///
/// A vacuum also counts the live rows, and the planner estimates the queue as that
/// count's density times the table's pages now. Counted just after a fold, the queue
/// looks empty however full it gets (migration 0020 says what plans follow). So a
/// vacuum runs at the start of a round, before its fold, and only while deltas keep
/// coming (the last round folded at least half the busiest recent one's), so that
/// about a round's deltas wait; autovacuum is off for the table. When ingest stops,
/// the last rounds' dead rows (fewer than about 10,000) wait for the next busy round.
#[derive(Debug, Default)]
pub struct FoldRounds {
    since_vacuum: u64,
    /// The last round's deltas.
    last: u64,
    /// The busiest recent round's deltas, forgotten by a sixty-fourth a round (half in
    /// about 44 rounds), so a pause does not make the next trickle look typical.
    busiest: u64,
    analyzed: Option<std::time::Instant>,
}

impl FoldRounds {
    /// Whether this round starts with a vacuum.
    fn vacuum_due(&self) -> bool {
        self.since_vacuum >= VACUUM_AT_MOST_AFTER
            || (self.since_vacuum >= VACUUM_AFTER && self.last >= (self.busiest / 2).max(1))
    }

    fn folded(&mut self, n: u64) {
        self.since_vacuum += n;
        self.last = n;
        self.busiest = n.max(self.busiest.saturating_sub(self.busiest / 64 + 1));
    }

    /// One round: a vacuum first when one is due, then folds until fewer than
    /// [`FOLD_LIMIT`] are left. Returns the deltas folded. A failed vacuum is logged
    /// and tried again in a later round; a failed fold is the caller's to retry
    /// (nothing is lost: deltas stay until folded).
    pub async fn round(&mut self, c: &tokio_postgres::Client) -> Result<u64, StoreError> {
        if self.vacuum_due() {
            let analyze = self.analyzed.is_none_or(|t| t.elapsed() >= ANALYZE_EVERY);
            match vacuum(c, analyze).await {
                Ok(()) => {
                    if analyze {
                        self.analyzed = Some(std::time::Instant::now());
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Vacuuming the rollup deltas' table failed; will retry.")
                }
            }
            self.since_vacuum = 0;
        }
        let mut total = 0;
        loop {
            let n = fold(c, FOLD_LIMIT).await?;
            total += n;
            if n < FOLD_LIMIT as u64 {
                break;
            }
        }
        self.folded(total);
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vacuum_waits_for_a_busy_round_and_not_forever() {
        let mut r = FoldRounds::default();
        // Busy rounds of 3,000: due once 10,000 are folded.
        for _ in 0..3 {
            r.folded(3_000);
            assert!(!r.vacuum_due());
        }
        r.folded(3_000);
        assert!(r.vacuum_due());
        // A pause: not while the queue is nearly empty, nor at the first trickle after
        // it (the busiest round is remembered).
        r.folded(0);
        assert!(!r.vacuum_due());
        r.folded(40);
        assert!(!r.vacuum_due());
        // Deltas coming again at about the rate before.
        r.folded(2_000);
        assert!(r.vacuum_due());
        // A long quiet spell forgets the busy rounds: a trickle is what comes now.
        for _ in 0..1_000 {
            r.folded(20);
        }
        assert!(r.vacuum_due());
        // Uneven rounds still vacuum at the dead rows' bound.
        let mut r = FoldRounds::default();
        r.folded(VACUUM_AT_MOST_AFTER - 1);
        r.folded(0);
        assert!(!r.vacuum_due());
        r.folded(1);
        assert!(r.vacuum_due());
    }
}
