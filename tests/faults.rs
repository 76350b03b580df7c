//! Outages and hostile input: the broker restarted, the database read-only or
//! away at start, floods of bad payloads. Every valid message ends stored exactly
//! once, every invalid one a dead letter, and memory stays bounded meanwhile.

use cityhub_sim::{FaultRates, Format};
use cityhub_testkit::*;

/// How many of [`stream_started`]'s messages go before the outage.
const FIRST: usize = 5000;

/// 8,000 simulated messages (25 sensors per kind, native and SenML). The first
/// [`FIRST`] are published, and a tenth of their rows stored but not all, when this
/// returns: the outage comes mid-stream.
async fn stream_started(db: &TestDb, broker: &Broker, seed: u64) -> Vec<cityhub_sim::SimMessage> {
    let msgs = sim_stream(
        seed,
        25,
        8000,
        &[Format::Native, Format::Senml],
        FaultRates::default(),
    );
    let first = &msgs[..FIRST];
    publish_sim(broker, first).await;
    let want_first = expected_rows(first);
    wait_for(60, "progress before the outage", || async {
        db.observations().await > want_first / 10
    })
    .await;
    assert!(
        db.observations().await < want_first,
        "the first part was stored before the outage; nothing would be tested"
    );
    msgs
}

/// Every row of `msgs` stored exactly once, and every message acked.
async fn all_stored_once(db: &TestDb, hub: &Hub, msgs: &[cityhub_sim::SimMessage]) {
    wait_for(120, "every row after the outage", || async {
        db.observations().await >= expected_rows(msgs)
    })
    .await;
    hub.acked().await;
    assert_eq!(db.observations().await, expected_rows(msgs));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restarted_mid_stream() {
    let db = TestDb::new().await;
    let mut broker = Broker::start();
    let hub = Hub::build(&db, &broker, "broker-restart")
        .set(|s| s.ingest.batch_max_rows = std::num::NonZeroUsize::new(500).unwrap())
        .start()
        .await;
    let msgs = stream_started(&db, &broker, 51).await;
    broker.restart();
    hub.wait_ready().await;
    publish_sim(&broker, &msgs[FIRST..]).await;
    all_stored_once(&db, &hub, &msgs).await;
    assert!(hub.metric("cityhub_mqtt_reconnects_total").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_read_only_then_restored() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let hub = Hub::build(&db, &broker, "read-only").start().await;
    let admin = db.admin().await;
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {} SET default_transaction_read_only = on",
            db.name
        ))
        .await
        .unwrap();
    db.terminate_hub_connections().await;
    let msgs = sim_stream(52, 10, 2000, &[Format::Native], FaultRates::default());
    publish_sim(&broker, &msgs).await;
    wait_for(60, "the hub to hit the read-only database", || async {
        hub.metric("cityhub_db_retries_total").await >= 2.0
    })
    .await;
    assert_eq!(
        db.observations().await,
        0,
        "a read-only database stored something"
    );
    assert!(
        hub.metric("cityhub_acks_pending").await > 0.0,
        "messages were acked while nothing could be stored"
    );
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {} RESET default_transaction_read_only",
            db.name
        ))
        .await
        .unwrap();
    wait_for(120, "every row once writable again", || async {
        db.observations().await == expected_rows(&msgs)
    })
    .await;
    wait_for(30, "every ack", || async {
        hub.metric("cityhub_acks_pending").await == 0.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_of_malformed_and_oversized_payloads_among_valid_traffic() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let hub = Hub::build(&db, &broker, "flood").start().await;
    let valid = sim_stream(54, 10, 3000, &[Format::Native], FaultRates::default());
    let big = vec![b'{'; 100 * 1024];
    let mut items: Vec<(&str, Vec<u8>)> = Vec::new();
    let (mut malformed, mut oversized) = (0, 0);
    for (i, m) in valid.iter().enumerate() {
        items.push((m.topic.as_str(), m.payload.clone()));
        if i % 3 == 0 {
            items.push((m.topic.as_str(), m.payload[..m.payload.len() / 2].to_vec()));
            malformed += 1;
        }
        if i % 20 == 0 {
            items.push((m.topic.as_str(), big.clone()));
            oversized += 1;
        }
    }
    publish_raw(&broker, &items).await;
    wait_for(120, "valid rows and dead letters", || async {
        db.observations().await == expected_rows(&valid)
            && db.count("SELECT count(*) FROM dead_letters").await == malformed + oversized
    })
    .await;
    assert_eq!(
        db.count("SELECT count(*) FROM dead_letters WHERE reason_code = 'oversize'")
            .await,
        oversized
    );
    assert_eq!(
        db.count("SELECT count(*) FROM dead_letters WHERE reason_code = 'malformed_json'")
            .await,
        malformed
    );
    assert_eq!(
        hub.metric("cityhub_dead_letters_total").await,
        (malformed + oversized) as f64
    );
}

/// A PostgreSQL server of the test's own (a private cluster on a free port),
/// stopped with a fast shutdown mid-stream and started again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_mid_stream() {
    let dir = std::env::temp_dir().join(unique("cityhub_pg"));
    let (mut pg, _) = PrivatePostgres::start_preloading(&dir, free_port().unwrap(), test_preload())
        .expect("a private PostgreSQL cluster (Debian package postgresql)");
    let db = TestDb::on(&pg.url("postgres")).await;
    let broker = Broker::start();
    let hub = Hub::build(&db, &broker, "pg-restart")
        .set(|s| s.ingest.batch_max_rows = std::num::NonZeroUsize::new(500).unwrap())
        .start()
        .await;
    let msgs = stream_started(&db, &broker, 54).await;
    pg.stop().unwrap();
    // While the server is down the broker keeps taking messages, and the hub
    // retries without acking what it could not store.
    publish_sim(&broker, &msgs[FIRST..]).await;
    wait_for(
        60,
        "the hub to retry against the stopped server",
        || async { hub.metric("cityhub_db_retries_total").await >= 1.0 },
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    pg.resume().unwrap();
    all_stored_once(&db, &hub, &msgs).await;
    drop(hub);
    drop(pg);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The table locked for three times the broker's keep-alive limit (1.5 × 5 s) while
/// the hub holds a full in-flight window of readings without a timestamp: the hub keeps
/// its session alive (it went on polling for pings), so nothing is redelivered, and
/// every reading is stored once. Before, the event loop stopped polling with the window
/// full, Mosquitto dropped the hub, and the redelivered window was stored a second time
/// at its new receive time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_window_during_a_long_lock_keeps_the_session() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let hub = Hub::build(&db, &broker, "keepalive")
        .set(|s| s.mqtt.keep_alive_s = 5)
        .start()
        .await;
    let lock = db.lock("observations_data").await;
    let items: Vec<(String, Vec<u8>)> = (0..6000)
        .map(|i| {
            (
                format!("cityhub/v1/waste_bin/ka-{:03}", i % 100),
                format!(r#"{{"values":{{"fill_level":{}}}}}"#, i % 97).into_bytes(),
            )
        })
        .collect();
    publish_raw(&broker, &items).await;
    wait_for(60, "the hub to hold a full in-flight window", || async {
        hub.metric("cityhub_acks_pending").await >= 4096.0
    })
    .await;
    // The fault itself: an outage well past 1.5 × the keep-alive.
    tokio::time::sleep(std::time::Duration::from_secs(23)).await;
    lock.release().await;
    wait_for(180, "every reading after the lock", || async {
        hub.metric("cityhub_messages_committed_total").await >= 6000.0
            && hub.metric("cityhub_acks_pending").await == 0.0
    })
    .await;
    assert_eq!(hub.metric("cityhub_mqtt_reconnects_total").await, 0.0);
    assert_eq!(
        hub.metric("cityhub_mqtt_messages_received_total").await,
        6000.0
    );
    assert_eq!(db.observations().await, 6000);
    assert_eq!(
        hub.metric("cityhub_observations_duplicate_total").await,
        0.0
    );
}

/// Tests that kill, signal, restart or weigh a hub process: the second tier of
/// `scripts/test` (`cargo test -- process::`).
mod process {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hub_started_while_the_database_is_away() {
        let db = TestDb::new().await;
        let broker = Broker::start();
        // A first run creates the hub's persistent session at the broker.
        let mut hub = Hub::start(&db, &broker, "db-late", &[]).await;
        hub.kill9();
        db.allow_connections(false).await;
        let msgs = sim_stream(
            53,
            10,
            3000,
            &[Format::Native, Format::Senml],
            FaultRates::default(),
        );
        publish_sim(&broker, &msgs).await;
        let hub = Hub::start_unready(&db, &broker, "db-late", &[]).await;
        let r = reqwest::get(hub.url("/readyz")).await.unwrap();
        assert_eq!(r.status(), 503);
        assert!(r
            .text()
            .await
            .unwrap()
            .contains("\"database\":\"unavailable\""));
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        db.allow_connections(true).await;
        hub.wait_ready().await;
        wait_for(120, "the backlog after the database appeared", || async {
            db.observations().await == expected_rows(&msgs)
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory_stays_bounded_while_the_database_is_away() {
        // The bound: the broker sends at most max_inflight_messages (4096 in
        // config/mosquitto.conf) unacknowledged messages to the hub, whatever the backlog.
        let db = TestDb::new().await;
        let broker = Broker::start();
        let hub = Hub::start(&db, &broker, "memory", &[]).await;
        let idle = hub.rss_kib();
        db.allow_connections(false).await;
        db.terminate_hub_connections().await;
        let msgs = sim_stream(55, 50, 40_000, &[Format::Native], FaultRates::default());
        publish_sim(&broker, &msgs).await;
        // Lower bound: the broker filled the whole in-flight window (so the hub was really
        // holding messages it could not store). Upper bound: never more, while it stays full.
        wait_for(60, "the hub to hold a full in-flight window", || async {
            hub.metric("cityhub_acks_pending").await >= 4096.0
        })
        .await;
        let mut peak = 0;
        for _ in 0..10 {
            let pending = hub.metric("cityhub_acks_pending").await;
            assert!(
                (4096.0..=4096.0 + 64.0).contains(&pending),
                "the hub holds {pending} messages; the broker's in-flight window is 4096"
            );
            peak = peak.max(hub.rss_kib());
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        eprintln!("memory: idle {idle} KiB, with 40,000 messages waiting {peak} KiB");
        assert!(
            peak < idle + 64 * 1024,
            "resident memory grew by more than 64 MiB: {idle} -> {peak} KiB"
        );
        db.allow_connections(true).await;
        wait_for(180, "the whole backlog after the outage", || async {
            db.observations().await == expected_rows(&msgs)
        })
        .await;
    }
}
