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

/// Vacuums the deltas' table, unless another session is vacuuming it. Every delta is
/// deleted by a fold soon after it is written, so the table's dead rows grow at the
/// ingest rate, and readers of `obs_hourly` scan past them and their index entries:
/// with autovacuum off, 5,000 messages a second left 956,000 dead rows (86 MB) behind
/// 16,000 pending ones within five minutes; autovacuum at its defaults looks once a
/// minute. Vacuumed, the dead rows' space is reused.
pub async fn vacuum(c: &tokio_postgres::Client) -> Result<(), StoreError> {
    c.batch_execute("VACUUM (SKIP_LOCKED) rollup_delta").await?;
    Ok(())
}
