//! Hourly and daily answers checked against the raw readings: what the API says for
//! every bucket of a sensor, next to SQL over `observations`, and the TimescaleDB
//! jobs run the way the scheduler would run them.

use crate::{Hub, TestDb};
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;

/// Does this database run on TimescaleDB?
pub async fn is_timescale(db: &TestDb) -> bool {
    db.client()
        .await
        .query_opt(
            "SELECT 1 FROM cityhub_meta WHERE key = 'backend' AND value = 'timescaledb'",
            &[],
        )
        .await
        .unwrap()
        .is_some()
}

/// TimescaleDB: runs every policy job on the hub's tables once, in job order, as the
/// scheduler would (`CALL run_job`). Plain PostgreSQL has none.
pub async fn run_policies(db: &TestDb) {
    if !is_timescale(db).await {
        return;
    }
    let c = db.client().await;
    let ids: Vec<i32> = c
        .query(
            "SELECT job_id FROM timescaledb_information.jobs
             WHERE hypertable_name IN ('observations_data', 'obs_hourly', 'obs_daily') ORDER BY job_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for id in ids {
        // TimescaleDB's own scheduler may be running the same job: a refresh then waits
        // for a lock, a compression finds chunks the other run compressed. Run it again.
        let mut attempt = 0;
        loop {
            match c.batch_execute(&format!("CALL run_job({id})")).await {
                Ok(()) => break,
                Err(e) if attempt < 40 && concurrent_run(&e) => {
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                }
                Err(e) => panic!("job {id}: {e:?}"),
            }
        }
    }
}

fn concurrent_run(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE)
        || e.as_db_error().is_some_and(|d| {
            d.code() == &SqlState::DATA_EXCEPTION
                && d.message() == "columnstore policy failure"
                && d.detail()
                    .is_some_and(|m| m.starts_with("Failed to convert"))
        })
}

/// TimescaleDB: compresses every chunk of `observations`; returns how many are compressed.
pub async fn compress_all(db: &TestDb) -> i64 {
    if !is_timescale(db).await {
        return 0;
    }
    db.client()
        .await
        .batch_execute(
            "SELECT compress_chunk(c, if_not_compressed => true) FROM show_chunks('observations_data') c",
        )
        .await
        .unwrap();
    db.count("SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_name = 'observations_data' AND is_compressed")
        .await
}

/// avg, min, max, count of one bucket of one metric.
type Stats = (f64, f64, f64, i64);

/// Compares every `bucket` (`1h` or `1d`) the API gives for `sensor` with the same
/// aggregates computed by SQL from `observations`. Returns the number of buckets SQL
/// finds and a description of each disagreement (empty when they agree).
pub async fn bucket_mismatches(
    hub: &Hub,
    db: &TestDb,
    sensor: &str,
    bucket: &str,
) -> (usize, Vec<String>) {
    let unit = if bucket == "1h" { "hour" } else { "day" };
    let rows = db
        .client()
        .await
        .query(
            &format!(
                "SELECT date_trunc('{unit}', o.time, 'UTC'), m.name, avg(o.value), min(o.value),
                        max(o.value), count(*)
                 FROM observations o JOIN sensors s ON s.id = o.sensor_id
                 JOIN metrics m ON m.id = o.metric_id
                 WHERE s.external_id = $1 GROUP BY 1, 2"
            ),
            &[&sensor],
        )
        .await
        .unwrap();
    let sql: BTreeMap<(DateTime<Utc>, String), Stats> = rows
        .iter()
        .map(|r| {
            (
                (r.get(0), r.get(1)),
                (r.get(2), r.get(3), r.get(4), r.get(5)),
            )
        })
        .collect();
    let from = sql
        .keys()
        .map(|k| k.0)
        .min()
        .unwrap_or_else(Utc::now)
        .to_rfc3339();
    let to = (Utc::now() + chrono::Duration::days(2)).to_rfc3339();
    let csv = reqwest::Client::new()
        .get(hub.url(&format!("/api/v1/sensors/{sensor}/readings")))
        .query(&[
            ("bucket", bucket),
            ("format", "csv"),
            ("from", from.as_str()),
            ("to", to.as_str()),
        ])
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut api = BTreeMap::new();
    // sensor_id,time,metric,unit,avg,min,max,count
    for line in csv.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let time = DateTime::parse_from_rfc3339(f[1])
            .unwrap()
            .with_timezone(&Utc);
        let n = |i: usize| f[i].parse::<f64>().unwrap();
        api.insert(
            (time, f[2].to_string()),
            (n(4), n(5), n(6), f[7].parse::<i64>().unwrap()),
        );
    }
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0);
    let mut wrong = Vec::new();
    for (k, s) in &sql {
        match api.get(k) {
            None => wrong.push(format!("{} {}: missing", k.0, k.1)),
            Some(a) if !(close(a.0, s.0) && a.1 == s.1 && a.2 == s.2 && a.3 == s.3) => {
                wrong.push(format!("{} {}: api {a:?}, sql {s:?}", k.0, k.1))
            }
            Some(_) => {}
        }
    }
    wrong.extend(
        api.keys()
            .filter(|k| !sql.contains_key(*k))
            .map(|k| format!("{} {}: not in observations", k.0, k.1)),
    );
    (sql.len(), wrong)
}

/// Waits (at most `secs`) until the hourly and daily aggregates count every stored
/// reading once. On TimescaleDB a reading stored below an aggregate's watermark
/// (a late one, or one committed while a refresh ran) reaches it with the hub's next
/// late refresh, seconds after it is stored; plain PostgreSQL's views count it at
/// once. Panics with the first buckets that still disagree.
pub async fn wait_for_aggregates(db: &TestDb, secs: u64) {
    let c = db.client().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let mut wrong = Vec::new();
        for (view, unit) in [("obs_hourly", "hour"), ("obs_daily", "day")] {
            let rows = c
                .query(
                    &format!(
                        "WITH o AS (SELECT sensor_id, metric_id, date_trunc('{unit}', time, 'UTC') AS bucket,
                                           count(*) AS n
                                    FROM observations GROUP BY 1, 2, 3)
                         SELECT coalesce(o.sensor_id, a.sensor_id), coalesce(o.metric_id, a.metric_id),
                                coalesce(o.bucket, a.bucket), o.n, a.count::bigint
                         FROM o FULL JOIN {view} a
                           ON a.sensor_id = o.sensor_id AND a.metric_id = o.metric_id AND a.bucket = o.bucket
                         WHERE o.n IS DISTINCT FROM a.count::bigint LIMIT 5"
                    ),
                    &[],
                )
                .await
                .unwrap();
            wrong.extend(rows.iter().map(|r| {
                format!(
                    "{view} sensor {} metric {} {}: {:?} readings, aggregate counts {:?}",
                    r.get::<_, i32>(0),
                    r.get::<_, i16>(1),
                    r.get::<_, DateTime<Utc>>(2),
                    r.get::<_, Option<i64>>(3),
                    r.get::<_, Option<i64>>(4)
                )
            }));
        }
        if wrong.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "after {secs} s the aggregates still disagree with the readings: {wrong:#?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
