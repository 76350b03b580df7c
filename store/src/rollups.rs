//! Plain PostgreSQL's hourly and daily rollups: folding the deltas the writer appends
//! (migration 0006 says why the work is split this way).

use crate::StoreError;

/// Folds up to `limit` pending deltas into `obs_hourly_data` and `obs_daily_data`, in
/// one statement that deletes what it folds; returns how many it folded. Deltas that
/// another hub is folding are skipped, and every rollup row is written in key order,
/// so hubs fold side by side without waiting on or deadlocking each other.
pub async fn fold(c: &tokio_postgres::Client, limit: i64) -> Result<u64, StoreError> {
    let upsert = |table: &str, bucket: &str| {
        format!(
            "{table} AS (INSERT INTO {table} AS r
                SELECT {bucket}, sensor_id, metric_id, sum(count)::bigint, sum(sum), min(min), max(max),
                       (array_agg(last ORDER BY last_time DESC))[1], max(last_time)
                FROM d GROUP BY 1, 2, 3 ORDER BY 2, 3, 1
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
              {}, {}
         SELECT count(*) FROM d",
        upsert("obs_hourly_data", "bucket"),
        upsert("obs_daily_data", "date_trunc('day', bucket, 'UTC')"),
    );
    let n: i64 = c.query_one(&sql, &[&limit]).await?.get(0);
    Ok(n as u64)
}
