//! A city that does not go dark: three PostgreSQL servers under Patroni (etcd,
//! synchronous mode) and three hubs on one broker's shared subscription. A fleet
//! publishes at a steady rate while the primary is lost (Patroni and PostgreSQL
//! SIGKILLed, as a machine lost), then a hub; both come back. Every reading is stored
//! once, the public API answers from the standbys throughout, and no alert is raised
//! or notified twice.

use cityhub_sim::{FaultRates, Format};
use cityhub_testkit::*;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One value from the cluster's primary, whichever node that is now (retried while
/// it fails over).
async fn on_primary(url: &str, sql: &str) -> i64 {
    let t = Instant::now();
    loop {
        let attempt = async {
            let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            c.query_one(sql, &[]).await.map(|r| r.get::<_, i64>(0))
        };
        match tokio::time::timeout(Duration::from_secs(10), attempt).await {
            Ok(Ok(v)) => return v,
            e if t.elapsed() > Duration::from_secs(120) => panic!("{sql}: {e:?}"),
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Public reads an app builder makes, by what they ask.
fn reads(sensor: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "readings",
            format!("/api/v1/sensors/{sensor}/readings?limit=20"),
        ),
        ("sensor", format!("/api/v1/sensors/{sensor}")),
        (
            "ogc items",
            "/ogc/collections/waste_bin/items?limit=20".to_owned(),
        ),
        (
            "indicator",
            "/api/v1/indicators/bin_fill_at_collection?period=day".to_owned(),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_and_a_hub_die_under_load_and_every_reading_is_stored_once() {
    let mut pg = Patroni::start(3).await;
    let first_leader = pg.leader().await.expect("a leader");
    let mut db = TestDb::on(&pg.node_url(first_leader, "postgres")).await;
    let (url, read_url) = (pg.url(&db.name), pg.read_url(&db.name));
    // The test's own queries follow the primary too.
    db.url = url.clone();
    let broker = Arc::new(Broker::start());
    let env = [
        ("CITYHUB_DATABASE_URL", url.as_str()),
        ("CITYHUB_DATABASE_READ_URL", read_url.as_str()),
        ("CITYHUB_DATABASE_CONNECT_TIMEOUT_S", "2"),
        ("CITYHUB_MQTT_SHARE_GROUP", "hubs"),
        ("CITYHUB_HTTP_RATE_LIMIT_PER_S", "0"),
        ("CITYHUB_STORE_MAINTENANCE_INTERVAL_S", "2"),
    ];
    let mut hubs = Vec::new();
    for i in 0..3 {
        hubs.push(Hub::start(&db, &broker, &format!("failover-{i}"), &env).await);
    }
    // Every hub knows a commit it acknowledges is on a synchronous standby too.
    wait_for(30, "the replication state in /readyz", || async {
        let r: serde_json::Value = reqwest::get(hubs[0].url("/readyz"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r["replication"]["durable_on_failover"] == true
            && r["replication"]["standbys"] == 2
            && r["replication"]["reads"] == "standby"
    })
    .await;
    assert_eq!(
        hubs[0].metric("cityhub_database_durable_on_failover").await,
        1.0
    );

    // 6,000 messages with timestamps, 60 every half second: about 50 s of traffic.
    let msgs = sim_stream(27, 10, 6_000, &[Format::Native], FaultRates::default());
    let expected = expected_rows(&msgs);
    let bin = msgs
        .iter()
        .find(|m| m.kind == "waste_bin")
        .unwrap()
        .sensor
        .clone();
    let publisher = {
        let (broker, msgs) = (broker.clone(), msgs.clone());
        tokio::spawn(async move {
            for chunk in msgs.chunks(60) {
                let t = Instant::now();
                publish_sim(&broker, chunk).await;
                tokio::time::sleep(Duration::from_millis(500).saturating_sub(t.elapsed())).await;
            }
        })
    };

    // The public reads, four a quarter second, on the two hubs that stay, from the
    // moment the sensor read is known.
    let known = hubs[0].url(&format!("/api/v1/sensors/{bin}"));
    wait_for(30, "the first readings", || async {
        reqwest::get(&known).await.unwrap().status() == 200
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let answers: Arc<Mutex<BTreeMap<(&'static str, u16), u64>>> = Default::default();
    let reader = {
        let bases = [hubs[0].url(""), hubs[1].url("")];
        let (stop, answers, bin) = (stop.clone(), answers.clone(), bin.clone());
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        tokio::spawn(async move {
            let mut turn = 0;
            while !stop.load(Ordering::Relaxed) {
                for (what, path) in reads(&bin) {
                    let base = &bases[turn % 2];
                    turn += 1;
                    let status = match http.get(format!("{base}{path}")).send().await {
                        Ok(r) => r.status().as_u16(),
                        Err(_) => 0,
                    };
                    *answers.lock().unwrap().entry((what, status)).or_default() += 1;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };

    // Commits as the two hubs that stay count them, sampled every 100 ms.
    let commits: Arc<Mutex<Vec<(Instant, f64)>>> = Default::default();
    let sampler = {
        let bases = [hubs[0].url(""), hubs[1].url("")];
        let (stop, commits) = (stop.clone(), commits.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let mut sum = 0.0;
                for b in &bases {
                    sum += metric_at(b, "cityhub_messages_committed_total").await;
                }
                commits.lock().unwrap().push((Instant::now(), sum));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    tokio::time::sleep(Duration::from_secs(12)).await;
    let leader = pg.leader().await.expect("a leader before the kill");
    pg.kill_node(leader);
    let killed_at = Instant::now();
    eprintln!("failover: killed node {leader}, the primary");
    tokio::time::sleep(Duration::from_secs(18)).await;
    hubs[2].kill9();
    eprintln!("failover: killed hub 2");
    tokio::time::sleep(Duration::from_secs(10)).await;
    pg.start_node(leader);
    hubs[2].restart().await;
    eprintln!("failover: node {leader} and hub 2 restarted");
    publisher.await.unwrap();

    let count = || on_primary(&url, "SELECT count(*) FROM observations");
    let t = Instant::now();
    while count().await < expected && t.elapsed() < Duration::from_secs(180) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for h in &hubs {
        h.acked().await;
    }
    stop.store(true, Ordering::Relaxed);
    reader.await.unwrap();
    sampler.await.unwrap();
    pg.wait_healthy(180).await;

    let stored = count().await;
    let twice = on_primary(
        &url,
        "SELECT count(*) FROM (SELECT 1 FROM observations GROUP BY sensor_id, metric_id, time HAVING count(*) > 1) d",
    )
    .await;
    let new_leader = pg.leader().await.expect("a leader after the failover");
    // Commits stop with the primary and resume on the new one: the first rise of the
    // count after a pause of a second or more (the fleet keeps it rising every 100 ms
    // otherwise), and how long the count stood still.
    let commits = commits.lock().unwrap().clone();
    let (mut last_rise, mut prev, mut resumed, mut stalled) = (None, 0.0, None, None);
    for &(t, n) in &commits {
        if n > prev {
            if t > killed_at {
                if let Some(last) = last_rise {
                    if t.duration_since(last) >= Duration::from_secs(1) {
                        resumed = Some(t.duration_since(killed_at));
                        stalled = Some(t.duration_since(last));
                        break;
                    }
                }
            }
            last_rise = Some(t);
            prev = n;
        }
    }
    let answers = answers.lock().unwrap().clone();
    let non_200: u64 = answers
        .iter()
        .filter(|((_, s), _)| *s != 200)
        .map(|(_, n)| n)
        .sum();
    let redelivered: f64 = {
        let mut sum = 0.0;
        for h in &hubs {
            sum += h.metric("cityhub_observations_duplicate_total").await;
        }
        sum
    };
    let figures = format!(
        "failover ({}): {} messages published, {expected} readings expected, {stored} stored, \
         {twice} stored twice, {} lost; primary node {leader} -> node {new_leader}; \
         first commit {resumed:?} after the primary died, no commit for {stalled:?}; API answers {answers:?} \
         ({non_200} not 200); redelivered readings the hubs saw again: {redelivered}",
        timescaledb_mode(),
        msgs.len(),
        (expected - stored).max(0),
    );
    eprintln!("{figures}");
    // Kept with the run's artifacts: a passing test's output is not shown.
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(artifacts_dir().join("failover.txt"))
        .unwrap();
    std::io::Write::write_all(&mut log, format!("{figures}\n").as_bytes()).unwrap();
    assert_eq!(stored, expected, "readings stored");
    assert_eq!(twice, 0);
    assert_ne!(new_leader, leader, "Patroni promoted another node");
    assert!(resumed.is_some(), "no commit after the primary died");
    assert_eq!(
        non_200, 0,
        "the API did not answer every read during the failover"
    );

    // No alert raised twice for one reading, no notification written twice.
    let alerts = on_primary(&url, "SELECT count(*) FROM alerts").await;
    let raised_twice = on_primary(
        &url,
        "SELECT count(*) FROM (SELECT 1 FROM alerts GROUP BY rule, sensor_id, raised_at HAVING count(*) > 1) d",
    )
    .await;
    let notified_twice = on_primary(
        &url,
        "SELECT count(*) FROM (SELECT 1 FROM alert_outbox GROUP BY alert_id, event, target HAVING count(*) > 1) d",
    )
    .await;
    let figures = format!(
        "failover: {alerts} alerts, {raised_twice} raised twice, {notified_twice} notified twice"
    );
    eprintln!("{figures}");
    std::io::Write::write_all(&mut log, format!("{figures}\n").as_bytes()).unwrap();
    assert!(alerts > 0, "the fleet raises alerts");
    assert_eq!((raised_twice, notified_twice), (0, 0));

    // TimescaleDB: the maintenance leader's lock died with the old primary; exactly
    // one hub holds it again on the new one.
    if is_timescale(&db).await {
        wait_for(60, "one maintenance leader after the failover", || async {
            let mut leaders = 0.0;
            for h in &hubs {
                leaders += h.metric("cityhub_maintenance_leader").await;
            }
            leaders == 1.0
        })
        .await;
    }

    // Hourly and daily rollups exact after it all, as the API serves them from a standby.
    for bucket in ["1h", "1d"] {
        wait_for(60, "the rollups to agree with the readings", || async {
            let (n, bad) = bucket_mismatches(&hubs[0], &db, &bin, bucket).await;
            n > 0 && bad.is_empty()
        })
        .await;
    }
}
