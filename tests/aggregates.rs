//! Hourly and daily answers never lose data: backfills older than any refresh window,
//! late rows into compressed chunks, and refreshes by the policies or by the hub;
//! every bucket the API gives is compared with SQL over `observations`. On plain
//! PostgreSQL the same tests run against the rollup tables the writer maintains;
//! on TimescaleDB (`CITYHUB_TEST_TIMESCALEDB=require`) they run the jobs too.

use chrono::{Duration, Utc};
use cityhub_testkit::*;

/// Readings of `sensor` every `step` from `from_ago` to `to_ago` before now.
fn series(
    sensor: &str,
    from_ago: Duration,
    to_ago: Duration,
    step: Duration,
) -> Vec<(String, Vec<u8>)> {
    let now = Utc::now();
    let mut t = now - from_ago;
    let mut out = Vec::new();
    let mut i = 0u32;
    while t <= now - to_ago {
        i += 1;
        let payload = serde_json::json!({
            "ts": t.to_rfc3339(),
            "values": {"pm10": 10.0 + f64::from(i % 40) * 0.25, "no2": 30.0 + f64::from(i % 17) * 1.5},
        });
        out.push((
            format!("cityhub/v1/air_quality/{sensor}"),
            payload.to_string().into_bytes(),
        ));
        t += step;
    }
    out
}

async fn publish(broker: &Broker, db: &TestDb, msgs: &[(String, Vec<u8>)]) {
    let before = db.observations().await;
    publish_raw(broker, msgs).await;
    let want = before + 2 * msgs.len() as i64;
    wait_for(60, "the readings to be stored", || async {
        db.observations().await >= want
    })
    .await;
}

async fn assert_agree(hub: &Hub, db: &TestDb, sensor: &str, min_hours: usize) {
    for (bucket, min) in [("1h", min_hours), ("1d", min_hours / 24)] {
        let (n, wrong) = bucket_mismatches(hub, db, sensor, bucket).await;
        assert!(n >= min, "{bucket}: only {n} buckets in observations");
        assert!(
            wrong.is_empty(),
            "{bucket}: {} of {n} buckets disagree with observations, e.g. {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(5)]
        );
    }
}

/// A hub on a new database that runs no TimescaleDB job itself (the scheduler does)
/// and refreshes its late rows every `late_refresh_s`.
async fn scheduled_hub(s: &str, late_refresh_s: u64) -> (TestDb, Broker, Hub) {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let hub = Hub::build(&db, &broker, s)
        .set(move |c| {
            c.store.maintenance = cityhub_core::MaintenanceMode::Timescaledb;
            c.store.late_refresh_s = late_refresh_s;
        })
        .start()
        .await;
    (db, broker, hub)
}

/// A hub whose sensor `s` reported every 10 minutes for the
/// last 3 hours, and the policies run once: the aggregates are materialized up to an
/// hour (a day) ago, so older rows from now on land below their watermarks.
async fn materialized(s: &str, late_refresh_s: u64) -> (TestDb, Broker, Hub) {
    let (db, broker, hub) = scheduled_hub(s, late_refresh_s).await;
    let recent = series(
        s,
        Duration::hours(3),
        Duration::zero(),
        Duration::minutes(10),
    );
    publish(&broker, &db, &recent).await;
    run_policies(&db).await;
    (db, broker, hub)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_older_than_every_refresh_window_is_in_hourly_and_daily_answers() {
    // Only the policies refresh here: the hub runs no job and no late refresh.
    let s = "aq-backfill";
    let (db, broker, hub) = materialized(s, 86400).await;
    // 20 days of history arrive, as after an outage or an import.
    let history = series(
        s,
        Duration::days(20),
        Duration::hours(3),
        Duration::minutes(30),
    );
    publish(&broker, &db, &history).await;
    run_policies(&db).await;
    assert_agree(&hub, &db, s, 20 * 24).await;

    // Compressed chunks take late rows too, and the next refresh sees them.
    let compressed = compress_all(&db).await;
    if is_timescale(&db).await {
        assert!(compressed > 0, "nothing compressed");
    }
    let late = series(
        s,
        Duration::days(15) + Duration::minutes(7),
        Duration::days(14),
        Duration::hours(2),
    );
    publish(&broker, &db, &late).await;
    run_policies(&db).await;
    assert_agree(&hub, &db, s, 20 * 24).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_readings_reach_hourly_and_daily_answers_without_waiting_for_a_policy() {
    let s = "aq-late";
    let (db, broker, hub) = materialized(s, 1).await;
    let timescale = is_timescale(&db).await;
    // Below both watermarks, and no policy runs again in this test.
    let late = series(
        s,
        Duration::days(10),
        Duration::days(2),
        Duration::minutes(20),
    );
    publish(&broker, &db, &late).await;
    wait_for(
        60,
        "hourly and daily answers to include the late readings",
        || async {
            bucket_mismatches(&hub, &db, s, "1h").await.1.is_empty()
                && bucket_mismatches(&hub, &db, s, "1d").await.1.is_empty()
        },
    )
    .await;
    assert_agree(&hub, &db, s, 8 * 24).await;
    if timescale {
        // The hub refreshed them (TimescaleDB's scheduler may have too, on its own time).
        wait_for(30, "the hub's refresh of the late buckets", || async {
            let ok = "view=\"obs_hourly\",result=\"ok\"";
            hub.metric_labelled("cityhub_aggregate_late_refreshes_total", ok)
                .await
                .is_some_and(|n| n >= 1.0)
        })
        .await;
    }
}

async fn maintenance(hub: &Hub) -> serde_json::Value {
    reqwest::get(hub.url("/readyz"))
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap()["maintenance"]["jobs"]
        .clone()
}

fn job<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["jobs"]
        .as_array()
        .and_then(|js| js.iter().find(|j| j["name"] == name))
        .unwrap_or(&serde_json::Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_jobs_are_reported_and_one_elected_hub_runs_them() {
    let db = TestDb::new().await;
    db.migrate().await.unwrap();
    if !is_timescale(&db).await {
        eprintln!("plain PostgreSQL: no TimescaleDB jobs to check");
        return;
    }
    let c = db.client().await;
    // Due every second, and the compression job broken the way a bad edit would.
    c.batch_execute(
        "SELECT alter_job(job_id, schedule_interval => INTERVAL '1 second') FROM timescaledb_information.jobs
          WHERE hypertable_name IN ('observations_data', 'obs_hourly', 'obs_daily');
         SELECT alter_job(job_id, config => jsonb_build_object('hypertable_id', config->'hypertable_id'))
           FROM timescaledb_information.jobs WHERE proc_name = 'policy_compression'",
    )
    .await
    .unwrap();
    let broker = Broker::start();
    let elected = |s: &mut cityhub_core::Settings| {
        s.store.maintenance = cityhub_core::MaintenanceMode::Hub;
        s.store.maintenance_interval_s = 1;
    };
    let a = Hub::build(&db, &broker, "maint-a")
        .set(elected)
        .start()
        .await;
    let b = Hub::build(&db, &broker, "maint-b")
        .set(elected)
        .start()
        .await;

    wait_for(
        60,
        "the broken job reported failing, the others run by a hub",
        || async {
            let r = maintenance(&a).await;
            let compression = job(&r, "compression:observations_data");
            let others_ran = r["jobs"].as_array().is_some_and(|js| {
                js.len() == 6
                    && js
                        .iter()
                        .filter(|j| j["name"] != "compression:observations_data")
                        .all(|j| j["hub_ran_at"].is_string() && j["hub_error"].is_null())
            });
            compression["state"] == "failing"
                && compression["hub_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("compress_after"))
                && others_ran
        },
    )
    .await;
    let (la, lb) = (
        maintenance(&a).await["leader"].clone(),
        maintenance(&b).await["leader"].clone(),
    );
    assert!(la != lb, "exactly one leader: a {la}, b {lb}");
    let leader = if la == true { &a } else { &b };
    assert_eq!(
        leader
            .metric_labelled(
                "cityhub_timescaledb_job_state",
                "job=\"compression:observations_data\""
            )
            .await,
        Some(2.0)
    );
    let failed_runs = leader
        .metric_labelled(
            "cityhub_maintenance_runs_total",
            "job=\"compression:observations_data\",result=\"error\"",
        )
        .await;
    assert!(failed_runs >= Some(1.0), "{failed_runs:?}");
    assert_eq!(leader.metric("cityhub_maintenance_leader").await, 1.0);

    // Repaired, the job runs and compresses the old readings.
    publish(
        &broker,
        &db,
        &series(
            "aq-old",
            Duration::days(40),
            Duration::days(25),
            Duration::hours(1),
        ),
    )
    .await;
    c.batch_execute(
        "SELECT alter_job(job_id, config => config || '{\"compress_after\": \"7 days\"}')
           FROM timescaledb_information.jobs WHERE proc_name = 'policy_compression'",
    )
    .await
    .unwrap();
    wait_for(60, "the repaired job to compress old chunks", || async {
        db.count("SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_name = 'observations_data' AND is_compressed").await > 0
            && job(&maintenance(&a).await, "compression:observations_data")["state"] != "failing"
    })
    .await;

    // The leader gone, the other hub takes over.
    let (mut leader, follower) = if la == true { (a, b) } else { (b, a) };
    leader.terminate();
    wait_for(30, "the other hub to be elected", || async {
        maintenance(&follower).await["leader"] == true
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollups_read_only_their_buckets_count_each_reading_once_and_take_late_ones() {
    let s = "aq-rollup";
    let db = TestDb::new().await;
    let broker = Broker::start();
    // The policies refresh here (TimescaleDB), as in the backfill test.
    let hub = Hub::build(&db, &broker, s)
        .set(|s| s.store.maintenance = cityhub_core::MaintenanceMode::Timescaledb)
        .set(|s| s.store.late_refresh_s = 86400)
        .start()
        .await;
    // Four months of readings: four monthly partitions on plain PostgreSQL.
    let history = series(s, Duration::days(100), Duration::zero(), Duration::hours(3));
    publish(&broker, &db, &history).await;
    run_policies(&db).await;
    assert_agree(&hub, &db, s, 99 * 8).await;

    // Redelivered readings insert nothing, so no bucket counts them twice.
    let stored = db.observations().await;
    let dup = "cityhub_observations_duplicate_total";
    let dups_before = hub.metric(dup).await;
    publish_raw(&broker, &history[..200]).await;
    wait_for(60, "the redeliveries to be recognised", || async {
        hub.metric(dup).await >= dups_before + 400.0
    })
    .await;
    assert_eq!(db.observations().await, stored);
    // A late reading inside an existing hour, older than the newest in that hour.
    let mid = series(
        s,
        Duration::days(50) + Duration::minutes(1),
        Duration::days(50),
        Duration::minutes(1),
    );
    publish(&broker, &db, &mid).await;
    run_policies(&db).await;
    assert_agree(&hub, &db, s, 99 * 8).await;

    // Derived rows (a bin's fill level from its distance and depth) are rolled up too.
    let bin = "bin-rollup";
    let topic = format!("cityhub/v1/waste_bin/{bin}");
    let first = serde_json::json!({"ts": Utc::now().to_rfc3339(), "values": {"temperature": 11.5}});
    publish_raw(&broker, &[(topic.clone(), first.to_string().into_bytes())]).await;
    wait_for(30, "the bin registered", || async {
        db.count(&format!(
            "SELECT count(*) FROM sensors WHERE external_id = '{bin}'"
        ))
        .await
            == 1
    })
    .await;
    db.client()
        .await
        .batch_execute(&format!(
            "UPDATE sensors SET properties = '{{\"depth_mm\": 1200}}' WHERE external_id = '{bin}'"
        ))
        .await
        .unwrap();
    let before = db.observations().await;
    let now = Utc::now();
    let readings: Vec<(String, Vec<u8>)> = (1..=60)
        .map(|i| {
            let t = now - Duration::minutes(37 * i);
            let doc = serde_json::json!({"ts": t.to_rfc3339(), "values": {"distance": 100 + (i * 17) % 1000}});
            (topic.clone(), doc.to_string().into_bytes())
        })
        .collect();
    publish_raw(&broker, &readings).await;
    wait_for(
        60,
        "the distances and derived fill levels stored",
        || async { db.observations().await >= before + 120 },
    )
    .await;
    run_policies(&db).await;
    for bucket in ["1h", "1d"] {
        let (n, wrong) = bucket_mismatches(&hub, &db, bin, bucket).await;
        assert!(n > 0 && wrong.is_empty(), "{bucket}: {wrong:?}");
    }

    if !is_timescale(&db).await {
        // Answers were exact with deltas pending; they stay so once all are folded.
        wait_for(30, "the rollup deltas folded", || async {
            db.count("SELECT count(*) FROM rollup_delta").await == 0
        })
        .await;
        assert_agree(&hub, &db, s, 99 * 8).await;
        let partitions = db
            .count("SELECT count(*) FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'observations_data'")
            .await;
        assert!(partitions >= 4, "only {partitions} partitions");
        let c = db.client().await;
        for q in [
            "SELECT sensor_id, metric_id, avg FROM obs_hourly WHERE bucket > now() - INTERVAL '24 hours'",
            "SELECT bucket, avg, min, max FROM obs_hourly WHERE sensor_id = 1 AND metric_id = 1 AND bucket >= now() - INTERVAL '30 days'",
            "SELECT sensor_id, avg FROM obs_daily WHERE bucket > now() - INTERVAL '30 days'",
        ] {
            let plan: String = c
                .query(&format!("EXPLAIN {q}"), &[])
                .await
                .unwrap()
                .iter()
                .map(|r| r.get::<_, String>(0) + "\n")
                .collect();
            let touched = plan.matches("observations_p").count();
            assert!(touched <= 2, "{q} touches {touched} partitions:\n{plain}", plain = plan);
        }
    }
}

/// Rows of `table` a plan read (the JSON of `EXPLAIN (ANALYZE, FORMAT JSON)`): each
/// scan's rows returned and filtered out, times the times it ran.
fn rows_read(plan: &serde_json::Value, table: &str) -> f64 {
    let own = if plan["Relation Name"] == table {
        let per_loop = [
            "Actual Rows",
            "Rows Removed by Filter",
            "Rows Removed by Index Recheck",
        ]
        .iter()
        .filter_map(|k| plan[*k].as_f64())
        .sum::<f64>();
        per_loop * plan["Actual Loops"].as_f64().unwrap_or(1.0)
    } else {
        0.0
    };
    own + plan["Plans"]
        .as_array()
        .map_or(0.0, |p| p.iter().map(|c| rows_read(c, table)).sum())
}

/// A migrated database for the tests of plain PostgreSQL's rollup tables, which
/// TimescaleDB does not have (`None` there).
async fn plain_db() -> Option<TestDb> {
    let db = TestDb::new().await;
    db.migrate().await.unwrap();
    (!is_timescale(&db).await).then_some(db)
}

/// Plain PostgreSQL: one sensor's hourly and daily answers do not read through the
/// rollup deltas pending for other sensors, whatever plan the database picks (here a
/// generic one, as a pooled prepared statement gets after five runs). Without an
/// index on the deltas this plan read them all three times; under ingest, the plan
/// the API got read them once per bucket, and one bin's 30 days of hourly means took
/// 27 s (the API answered 503).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sensors_answers_read_pending_deltas_once_whatever_the_plan() {
    let Some(db) = plain_db().await else {
        return;
    };
    let c = db.client().await;
    c.batch_execute(
        "INSERT INTO sensors (external_id, kind) SELECT 'bin-' || g, 'waste_bin' FROM generate_series(1, 2000) g;
         INSERT INTO obs_hourly_data
         SELECT date_trunc('hour', now()) - make_interval(hours => g), 1, m.id, 12, 500, 1, 80, 40, now()
         FROM generate_series(1, 720) g, metrics m WHERE m.kind = 'waste_bin' AND m.name = 'fill_level';
         INSERT INTO obs_daily_data
         SELECT date_trunc('day', now()) - make_interval(days => g), 1, m.id, 288, 12000, 1, 80, 40, now()
         FROM generate_series(1, 30) g, metrics m WHERE m.kind = 'waste_bin' AND m.name = 'fill_level';
         INSERT INTO rollup_delta
         SELECT date_trunc('hour', now()) - make_interval(hours => g % 48), 2 + g % 1999, m.id, 1, 10, 10, 10, 10, now()
         FROM generate_series(1, 100000) g, metrics m WHERE m.kind = 'waste_bin' AND m.name = 'fill_level';
         ANALYZE;
         SET plan_cache_mode = force_generic_plan;",
    )
    .await
    .unwrap();
    let pending = db.count("SELECT count(*) FROM rollup_delta").await as f64;
    let metrics: String = c
        .query_one(
            "SELECT array_agg(id)::text FROM metrics WHERE kind = 'waste_bin'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    for view in ["obs_hourly", "obs_daily"] {
        c.batch_execute(&format!(
            "DEALLOCATE ALL;
             PREPARE q(int, smallint[], timestamptz, timestamptz) AS
             SELECT bucket, metric_id, avg, min, max, count FROM {view}
             WHERE sensor_id = $1 AND metric_id = ANY($2) AND bucket >= $3 AND bucket < $4
             ORDER BY bucket, metric_id"
        ))
        .await
        .unwrap();
        let rows = c
            .query(
                &format!(
                    "EXPLAIN (ANALYZE, FORMAT JSON)
                     EXECUTE q(1, '{metrics}', now() - INTERVAL '30 days', now())"
                ),
                &[],
            )
            .await
            .unwrap();
        let plan: serde_json::Value = rows[0].get(0);
        let read = rows_read(&plan[0]["Plan"], "rollup_delta");
        assert!(
            read < pending,
            "{view}: one sensor's 30 days read {read} rows of rollup_delta, {pending} pending:\n{plan:#}"
        );
    }
}

/// Plain PostgreSQL: what `obs_hourly` and `obs_daily` answer while deltas are pending
/// is what the rollup tables hold once a fold has merged them: keys with a folded row
/// only, with pending deltas only, and with both (the newest reading in the folded row
/// or in a delta). Values are exact in binary, so no order of summing differs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_deltas_answer_as_they_will_once_folded() {
    let Some(db) = plain_db().await else {
        return;
    };
    let c = db.client().await;
    // Sensors 1-4: 1 folded only, 2 pending only, 3 both with the newest reading
    // folded, 4 both with the newest reading pending; two hours of one day each.
    c.batch_execute(
        "INSERT INTO sensors (external_id, kind) SELECT 'bin-' || g, 'waste_bin' FROM generate_series(1, 4) g;
         CREATE TEMP TABLE k AS
         SELECT s.id AS sensor_id, m.id AS metric_id,
                date_trunc('day', now(), 'UTC') - INTERVAL '2 days' + make_interval(hours => h) AS bucket,
                s.external_id AS name,
                -- The folded extremes: beyond the pending ones for bin-3 (min) and bin-4 (max).
                CASE WHEN s.external_id = 'bin-3' THEN 1.25 ELSE 10.25 END AS min,
                CASE WHEN s.external_id = 'bin-4' THEN 90 ELSE 40 END AS max
         FROM sensors s, metrics m, generate_series(3, 4) h
         WHERE m.kind = 'waste_bin' AND m.name = 'fill_level';
         INSERT INTO obs_hourly_data
         SELECT bucket, sensor_id, metric_id, 4, 100.5, min, max, 30.5,
                bucket + CASE WHEN name = 'bin-3' THEN INTERVAL '50 minutes' ELSE INTERVAL '10 minutes' END
         FROM k WHERE name <> 'bin-2';
         INSERT INTO obs_daily_data
         SELECT date_trunc('day', bucket, 'UTC'), sensor_id, metric_id, 8, 201, min, max, 30.5,
                max(bucket) + CASE WHEN name = 'bin-3' THEN INTERVAL '50 minutes' ELSE INTERVAL '10 minutes' END
         FROM k WHERE name <> 'bin-2' GROUP BY 1, 2, 3, name, min, max;
         INSERT INTO rollup_delta
         SELECT bucket, sensor_id, metric_id, 1, 8.5 * d, 2.5 * d, 60 + d, 70.75 + d,
                bucket + make_interval(mins => 20 + d)
         FROM k, generate_series(1, 3) d WHERE name <> 'bin-1';",
    )
    .await
    .unwrap();
    let answers = |view: &'static str| {
        let c = &c;
        async move {
            c.query(
                &format!(
                    "SELECT bucket, sensor_id, metric_id, avg, min, max, count, last FROM {view}
                     WHERE sensor_id IN (SELECT id FROM sensors WHERE external_id LIKE 'bin-%')
                     ORDER BY 1, 2, 3"
                ),
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| {
                format!(
                    "{} {} {} avg={} min={} max={} count={} last={}",
                    r.get::<_, chrono::DateTime<Utc>>(0),
                    r.get::<_, i32>(1),
                    r.get::<_, i16>(2),
                    r.get::<_, f64>(3),
                    r.get::<_, f64>(4),
                    r.get::<_, f64>(5),
                    r.get::<_, i64>(6),
                    r.get::<_, f64>(7)
                )
            })
            .collect::<Vec<String>>()
        }
    };
    let pending = (answers("obs_hourly").await, answers("obs_daily").await);
    assert_eq!((pending.0.len(), pending.1.len()), (8, 4), "{pending:#?}");
    let folded = cityhub_store::rollups::fold(&c, 1_000).await.unwrap();
    assert_eq!(folded, 18);
    assert_eq!(db.count("SELECT count(*) FROM rollup_delta").await, 0);
    assert_eq!(answers("obs_hourly").await, pending.0);
    assert_eq!(answers("obs_daily").await, pending.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_database_has_its_aggregates_materialized_once_rows_arrive() {
    let s = "aq-first";
    let db = TestDb::new().await;
    let broker = Broker::start();
    // Only TimescaleDB's scheduler runs jobs here; the hub just asks it to run one now.
    let hub = Hub::build(&db, &broker, s)
        .set(|c| c.store.maintenance = cityhub_core::MaintenanceMode::Timescaledb)
        .start()
        .await;
    if !is_timescale(&db).await {
        // Plain PostgreSQL's views read rollup tables kept by every commit: no watermark.
        return;
    }
    // The refresh policy's first run, at migration, found no rows; its next is 15
    // minutes on, and until then every query aggregated every row written.
    let rows = series(
        s,
        Duration::hours(5),
        Duration::hours(2),
        Duration::minutes(10),
    );
    publish(&broker, &db, &rows).await;
    let c = db.client().await;
    wait_for(60, "obs_hourly materialized past the readings", || async {
        let row = c
            .query_one(
                "SELECT _timescaledb_functions.to_timestamp(_timescaledb_functions.cagg_watermark(mat_hypertable_id))
                 FROM _timescaledb_catalog.continuous_agg WHERE user_view_name = 'obs_hourly'",
                &[],
            )
            .await
            .unwrap();
        row.try_get::<_, chrono::DateTime<Utc>>(0)
            .is_ok_and(|w| w > Utc::now() - Duration::hours(3))
    })
    .await;
    assert_agree(&hub, &db, s, 3).await;
}

/// TimescaleDB: a first refresh of `obs_hourly` (its policy, `CALL run_job`) held at
/// the end of each batch, where it writes the watermark: the test holds that row.
/// The scheduler runs none of the policies meanwhile (paused), so this run is the
/// only one.
struct HeldRefresh {
    db_url: String,
    mat_id: i32,
    holder: tokio_postgres::Client,
    holder_pid: i32,
    run: tokio::task::JoinHandle<()>,
    run_pid: i32,
}

impl HeldRefresh {
    async fn start(db: &TestDb) -> Self {
        let c = db.client().await;
        c.batch_execute(
            "SELECT alter_job(job_id, scheduled => false) FROM timescaledb_information.jobs
             WHERE proc_name = 'policy_refresh_continuous_aggregate'",
        )
        .await
        .unwrap();
        let mat_id: i32 = c
            .query_one(
                "SELECT mat_hypertable_id FROM _timescaledb_catalog.continuous_agg
                 WHERE user_view_name = 'obs_hourly'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        let job: i32 = c
            .query_one(
                "SELECT job_id FROM timescaledb_information.jobs
                 WHERE proc_name = 'policy_refresh_continuous_aggregate'
                   AND (config->>'mat_hypertable_id')::int = $1",
                &[&mat_id],
            )
            .await
            .unwrap()
            .get(0);
        let holder = db.client().await;
        let holder_pid = pid(&holder).await;
        hold(&holder, mat_id).await;
        let runner = db.client().await;
        let run_pid = pid(&runner).await;
        let run = tokio::spawn(async move {
            runner
                .batch_execute(&format!("CALL run_job({job})"))
                .await
                .unwrap();
        });
        let held = Self {
            db_url: db.url.clone(),
            mat_id,
            holder,
            holder_pid,
            run,
            run_pid,
        };
        held.wait_blocked_by(held.holder_pid).await;
        held
    }

    /// Waits until the run waits for `pid`: a batch is materialized and not committed.
    async fn wait_blocked_by(&self, blocker: i32) {
        let c = connect(&self.db_url).await;
        let run = self.run_pid;
        wait_for(60, "the refresh to wait at its watermark", || {
            let c = &c;
            async move {
                c.query_one("SELECT $1 = ANY(pg_blocking_pids($2))", &[&blocker, &run])
                    .await
                    .unwrap()
                    .get(0)
            }
        })
        .await;
    }

    /// Lets the held batch commit and holds the next one at its watermark.
    async fn next_batch(&mut self) {
        let next = connect(&self.db_url).await;
        let next_pid = pid(&next).await;
        let mat_id = self.mat_id;
        // Queued behind the held batch, so it holds the row before the next batch asks.
        let queued = tokio::spawn(async move {
            hold(&next, mat_id).await;
            next
        });
        let c = connect(&self.db_url).await;
        let (holder, run) = (self.holder_pid, self.run_pid);
        wait_for(30, "the next holder to queue", || {
            let c = &c;
            async move {
                c.query_one(
                    "SELECT $1 = ANY(pg_blocking_pids($2))",
                    &[&holder, &next_pid],
                )
                .await
                .unwrap()
                .get::<_, bool>(0)
                    || c.query_one("SELECT $1 = ANY(pg_blocking_pids($2))", &[&run, &next_pid])
                        .await
                        .unwrap()
                        .get::<_, bool>(0)
            }
        })
        .await;
        self.holder.batch_execute("COMMIT").await.unwrap();
        self.holder = queued.await.unwrap();
        self.holder_pid = next_pid;
        self.wait_blocked_by(next_pid).await;
    }

    /// Lets the refresh finish.
    async fn release(self) {
        self.holder.batch_execute("COMMIT").await.unwrap();
        self.run.await.unwrap();
    }
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c
}

async fn pid(c: &tokio_postgres::Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

/// Takes the row lock a refresh needs to write `mat_id`'s watermark, until COMMIT.
async fn hold(c: &tokio_postgres::Client, mat_id: i32) {
    c.batch_execute("BEGIN").await.unwrap();
    c.query(
        "SELECT 1 FROM _timescaledb_catalog.continuous_aggs_watermark
         WHERE mat_hypertable_id = $1 FOR UPDATE",
        &[&mat_id],
    )
    .await
    .unwrap();
}

/// TimescaleDB: a hub (late refresh every `late_refresh_s`) whose sensor `s` reported
/// every 20 minutes from `from_h` to `to_h` hours ago, and the first refresh of
/// `obs_hourly` held at its first watermark. None on plain PostgreSQL.
async fn refresh_held_after(
    s: &str,
    late_refresh_s: u64,
    from_h: i64,
    to_h: i64,
) -> Option<(TestDb, Broker, Hub, HeldRefresh)> {
    let (db, broker, hub) = scheduled_hub(s, late_refresh_s).await;
    if !is_timescale(&db).await {
        eprintln!("plain PostgreSQL: no refresh to watch");
        return None;
    }
    let rows = series(
        s,
        Duration::hours(from_h),
        Duration::hours(to_h),
        Duration::minutes(20),
    );
    publish(&broker, &db, &rows).await;
    let held = HeldRefresh::start(&db).await;
    Some((db, broker, hub, held))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hourly_answers_are_whole_at_every_moment_of_a_first_refresh() {
    let s = "aq-first-batches";
    // No late refresh from the hub: the policy's run is the only refresh. 40 hours
    // below the policy's end offset: four batches of ten hours.
    let Some((db, _broker, hub, mut held)) = refresh_held_after(s, 86400, 42, 2).await else {
        return;
    };
    // Nothing committed yet: every hour is computed from the rows.
    assert_agree(&hub, &db, s, 40).await;
    // The first batch committed, the second waits: the watermark has moved, and the
    // hours no batch has reached yet must still be in the answers.
    held.next_batch().await;
    let c = db.client().await;
    let watermark: chrono::DateTime<Utc> = c
        .query_one(
            "SELECT _timescaledb_functions.to_timestamp(watermark)
             FROM _timescaledb_catalog.continuous_aggs_watermark WHERE mat_hypertable_id = $1",
            &[&held.mat_id],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        watermark > Utc::now() - Duration::days(3),
        "the first batch moved the watermark ({watermark})"
    );
    assert_agree(&hub, &db, s, 40).await;
    held.next_batch().await;
    assert_agree(&hub, &db, s, 40).await;
    held.release().await;
    assert_agree(&hub, &db, s, 40).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_committed_while_a_first_refresh_runs_reach_the_answers() {
    let s = "aq-during-refresh";
    // The refresh has materialized what it saw and not yet written its watermark.
    let Some((db, broker, hub, held)) = refresh_held_after(s, 1, 30, 25).await else {
        return;
    };
    let during = series(
        s,
        Duration::hours(30) - Duration::minutes(10),
        Duration::hours(25),
        Duration::minutes(20),
    );
    publish(&broker, &db, &during).await;
    // Rounds of the hub's late refresh see the aggregate not yet materialized.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    held.release().await;
    // The refresh did not see the second rows, and its watermark is past them: until
    // someone refreshes their hours, the answers hold the first rows only (the
    // policy is paused here; in a city it runs again 15 minutes on).
    wait_for(
        60,
        "the hourly answers to include the rows written during the refresh",
        || async { bucket_mismatches(&hub, &db, s, "1h").await.1.is_empty() },
    )
    .await;
    assert_agree(&hub, &db, s, 5).await;
}

/// Plain PostgreSQL: the rollup deltas' table does not grow with every delta ever
/// written. Each is deleted by a fold soon after; on a database whose autovacuum is
/// off or behind (at its defaults it looks once a minute), the dead rows stayed and
/// every reader of `obs_hourly` scanned past them. The hub vacuums the table itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rollup_deltas_table_reuses_the_space_of_folded_deltas() {
    const SENSORS: usize = 2000;
    const ROUNDS: usize = 20;
    let db = TestDb::new().await;
    let broker = Broker::start();
    let hub = Hub::build(&db, &broker, "aq-vac")
        .set(|c| c.store.rollup_fold_ms = 50)
        .start()
        .await;
    if is_timescale(&db).await {
        return;
    }
    let c = db.client().await;
    // Autovacuum must not be what keeps the table small here.
    c.batch_execute("ALTER TABLE rollup_delta SET (autovacuum_enabled = false)")
        .await
        .unwrap();
    let pages = || async {
        db.count("SELECT pg_relation_size('rollup_delta') / current_setting('block_size')::int")
            .await
    };
    let mut first_round = 0;
    for round in 0..ROUNDS {
        let t = Utc::now() - Duration::seconds((ROUNDS - round) as i64);
        let msgs: Vec<(String, Vec<u8>)> = (0..SENSORS)
            .map(|i| {
                let doc = serde_json::json!({"ts": t.to_rfc3339(), "values": {"pm10": 20.0 + (i % 7) as f64, "no2": 31.5}});
                (format!("cityhub/v1/air_quality/aq-vac-{i}"), doc.to_string().into_bytes())
            })
            .collect();
        publish(&broker, &db, &msgs).await;
        if round == 0 {
            first_round = pages().await;
        }
        wait_for(60, "the round's deltas folded", || async {
            db.count("SELECT count(*) FROM rollup_delta").await == 0
        })
        .await;
    }
    let last = pages().await;
    assert!(
        first_round > 0 && last < 8 * first_round,
        "rollup_delta takes {last} pages after {ROUNDS} rounds of {} deltas, one round took {first_round}",
        2 * SENSORS
    );
    // Every reading is in the hourly answers once.
    let rolled = db
        .count("SELECT sum(h.count)::bigint FROM obs_hourly h JOIN sensors s ON s.id = h.sensor_id WHERE s.external_id LIKE 'aq-vac-%'")
        .await;
    assert_eq!(rolled, (2 * SENSORS * ROUNDS) as i64);
    drop(hub);
}

/// Plain PostgreSQL: while readings arrive, the planner's estimate of the pending
/// deltas is about the queue the fold leaves between its rounds, not an empty table.
/// A table's row estimate is the density its last vacuum or analyze counted times its
/// pages now; counted just after a fold, the density is about nil while the queue
/// refills in the same pages, and the views' check for pending deltas may then join
/// every folded row of a range against the whole queue row by row (a city-wide day
/// took 7.8-85 s so, docs/benchmarks.md). The hub counts the queue before it folds,
/// and autovacuum, which would count it at any moment, leaves the table to the hub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_planner_counts_the_deltas_a_round_leaves_not_an_empty_queue() {
    const SENSORS: usize = 1000;
    let db = TestDb::new().await;
    let broker = Broker::start();
    let hub = Hub::build(&db, &broker, "aq-est").start().await;
    if is_timescale(&db).await {
        return;
    }
    let c = db.client().await;
    let vacuums = || async {
        db.count(
            "SELECT vacuum_count + analyze_count FROM pg_stat_user_tables WHERE relname = 'rollup_delta'",
        )
        .await
    };
    let before = vacuums().await;
    let mut sent = 0usize;
    // Each station once a second, a tenth of them every 100 ms, as a city's fleet
    // sends, until the hub has counted the queue twice (its vacuums follow the deltas
    // it folds).
    for step in 0.. {
        let started = std::time::Instant::now();
        let t = Utc::now();
        let tenth = SENSORS / 10;
        let msgs: Vec<(String, Vec<u8>)> = (0..tenth)
            .map(|j| {
                let i = (step % 10) * tenth + j;
                let doc = serde_json::json!({"ts": t.to_rfc3339(), "values": {"pm10": 20.0 + (i % 7) as f64, "no2": 31.5}});
                (format!("cityhub/v1/air_quality/aq-est-{i}"), doc.to_string().into_bytes())
            })
            .collect();
        publish_raw(&broker, &msgs).await;
        sent += msgs.len();
        if step % 10 == 9 && vacuums().await >= before + 2 {
            break;
        }
        assert!(
            step < 1800,
            "the hub never vacuumed rollup_delta under load"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100).saturating_sub(started.elapsed()))
            .await;
    }
    // Two deltas a message, a second's messages a round.
    let round = 2 * SENSORS;
    let (pages, counted): (i32, f32) = {
        let r = c
            .query_one(
                "SELECT relpages, reltuples FROM pg_class WHERE relname = 'rollup_delta'",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert!(
        counted >= (round / 8) as f32,
        "rollup_delta's last count: {counted} rows in {pages} pages, while about {round} deltas arrive between folds"
    );
    // What a reader's plan expects once a round's deltas wait again.
    c.batch_execute(&format!(
        "BEGIN;
         INSERT INTO rollup_delta
         SELECT date_trunc('hour', now()), s.id, m.id, 1, 10, 10, 10, 10, now()
         FROM sensors s, metrics m
         WHERE s.external_id LIKE 'aq-est-%' AND m.kind = 'air_quality' AND m.name IN ('pm10', 'no2')
         LIMIT {round}"
    ))
    .await
    .unwrap();
    let plan: serde_json::Value = c
        .query_one("EXPLAIN (FORMAT JSON) SELECT * FROM rollup_delta", &[])
        .await
        .unwrap()
        .get(0);
    c.batch_execute("ROLLBACK").await.unwrap();
    let estimate = plan[0]["Plan"]["Plan Rows"].as_f64().unwrap();
    assert!(
        estimate >= round as f64 / 4.0,
        "the planner expects {estimate} pending deltas with {round} more waiting"
    );
    // Autovacuum leaves the table to the hub, whose analyzes keep its columns' statistics.
    let options = db
        .text("SELECT coalesce(array_to_string(reloptions, ','), '') FROM pg_class WHERE relname = 'rollup_delta'")
        .await;
    assert!(options.contains("autovacuum_enabled=false"), "{options}");
    assert!(
        db.count("SELECT count(*) FROM pg_stats WHERE tablename = 'rollup_delta'")
            .await
            > 0
    );
    // Every reading is in the hourly answers once.
    wait_for(120, "every reading folded", || async {
        db.count("SELECT count(*) FROM rollup_delta").await == 0
            && db.observations().await == 2 * sent as i64
    })
    .await;
    let rolled = db
        .count("SELECT sum(h.count)::bigint FROM obs_hourly h JOIN sensors s ON s.id = h.sensor_id WHERE s.external_id LIKE 'aq-est-%'")
        .await;
    assert_eq!(rolled, 2 * sent as i64);
    drop(hub);
}
