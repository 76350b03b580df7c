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
pub async fn vacuum(c: &tokio_postgres::Client, analyze: bool) -> Result<(), StoreError> {
    c.batch_execute(if analyze {
        "VACUUM (SKIP_LOCKED, ANALYZE) rollup_delta"
    } else {
        "VACUUM (SKIP_LOCKED) rollup_delta"
    })
    .await?;
    Ok(())
}

/// Deltas per fold statement: bounds a fold's memory and locks.
pub const FOLD_LIMIT: i64 = 50_000;
/// Deltas folded between two vacuums of their table: it then holds at most about this
/// many dead rows, about 1 MB.
const VACUUM_AFTER: u64 = 10_000;
/// Deltas folded after which a vacuum runs however few wait: the dead rows' bound
/// when rounds keep finding the queue short.
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
/// vacuum runs at the start of a round, before its fold, and only when about as many
/// deltas wait as the busiest recent round folded; autovacuum is off for the table.
#[derive(Debug, Default)]
pub struct FoldRounds {
    since_vacuum: u64,
    /// The busiest recent round's deltas, forgotten by a sixty-fourth a round (half in
    /// about 44 rounds), so a pause does not make the next trickle look typical.
    busiest: u64,
    analyzed: Option<std::time::Instant>,
}

impl FoldRounds {
    /// How many deltas must wait for a vacuum to run now; `None`: none is due.
    fn vacuum_wants(&self) -> Option<u64> {
        if self.since_vacuum >= VACUUM_AT_MOST_AFTER {
            Some(0)
        } else if self.since_vacuum >= VACUUM_AFTER {
            Some((self.busiest / 2).max(1))
        } else {
            None
        }
    }

    fn folded(&mut self, n: u64) {
        self.since_vacuum += n;
        self.busiest = n.max(self.busiest.saturating_sub(self.busiest / 64 + 1));
    }

    /// One round: a vacuum first when one is due and the queue holds a round's deltas,
    /// then folds until fewer than [`FOLD_LIMIT`] are left. Returns the deltas folded.
    /// A failed vacuum is logged and tried again in a later round; a failed fold is
    /// the caller's to retry (nothing is lost: deltas stay until folded).
    pub async fn round(&mut self, c: &tokio_postgres::Client) -> Result<u64, StoreError> {
        if let Some(wants) = self.vacuum_wants() {
            let waiting: i64 = c
                .query_one(
                    "SELECT count(*) FROM (SELECT FROM rollup_delta LIMIT $1) q",
                    &[&(wants as i64)],
                )
                .await?
                .get(0);
            if waiting as u64 >= wants {
                let analyze = self.analyzed.is_none_or(|t| t.elapsed() >= ANALYZE_EVERY);
                match vacuum(c, analyze).await {
                    Ok(()) => {
                        if analyze {
                            self.analyzed = Some(std::time::Instant::now());
                        }
                        tracing::debug!(waiting, analyze, "Vacuumed the rollup deltas' table.");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "Vacuuming the rollup deltas' table failed; will retry.")
                    }
                }
                self.since_vacuum = 0;
            }
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
    fn a_vacuum_waits_for_a_round_of_deltas_and_not_forever() {
        let mut r = FoldRounds::default();
        // Busy rounds of 3,000: due once 10,000 are folded, when half a round waits.
        for _ in 0..3 {
            r.folded(3_000);
            assert_eq!(r.vacuum_wants(), None);
        }
        r.folded(3_000);
        assert_eq!(r.vacuum_wants(), Some(1_500));
        // A pause: the busiest round is remembered, so the first trickle after it is
        // not what a vacuum counts.
        for _ in 0..10 {
            r.folded(0);
        }
        let wants = r.vacuum_wants().unwrap();
        assert!((1_000..1_500).contains(&wants), "{wants}");
        // A long quiet spell forgets it.
        for _ in 0..1_000 {
            r.folded(2);
        }
        assert_eq!(r.vacuum_wants(), Some(1));
        // Rounds that keep finding the queue short still vacuum at the dead rows' bound.
        let mut r = FoldRounds::default();
        r.folded(VACUUM_AT_MOST_AFTER - 1);
        assert!(r.vacuum_wants().unwrap() > 0);
        r.folded(1);
        assert_eq!(r.vacuum_wants(), Some(0));
    }
}
