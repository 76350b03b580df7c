//! End-to-end ingestion tests against a real Mosquitto and PostgreSQL.

use chrono::{Duration, Utc};
use cityhub_sim::{FaultRates, Format};
use cityhub_testkit::*;
use serde_json::json;

/// Every stored (sensor, metric, time, value) of the simulator's messages, compared exactly.
async fn assert_exact(db: &TestDb, msgs: &[cityhub_sim::SimMessage]) {
    let c = db.client().await;
    let rows = c
        .query(
            "SELECT s.external_id, m.name, o.time, o.value, m.unit FROM observations o
             JOIN sensors s ON s.id = o.sensor_id JOIN metrics m ON m.id = o.metric_id",
            &[],
        )
        .await
        .unwrap();
    let mut got: Vec<(String, String, i64, f64)> = rows
        .iter()
        .map(|r| {
            (
                r.get(0),
                r.get(1),
                r.get::<_, chrono::DateTime<Utc>>(2).timestamp_micros(),
                r.get(3),
            )
        })
        .collect();
    let mut want: Vec<(String, String, i64, f64)> = msgs
        .iter()
        .filter(|m| m.fault != Some("duplicate"))
        .flat_map(|m| {
            m.values.iter().map(move |(k, v)| {
                (
                    m.sensor.clone(),
                    k.to_string(),
                    m.time.timestamp_micros(),
                    *v,
                )
            })
        })
        .collect();
    got.sort_by(|a, b| a.partial_cmp(b).unwrap());
    want.sort_by(|a, b| a.partial_cmp(b).unwrap());
    assert_eq!(got.len(), want.len(), "row count");
    assert!(got == want, "stored rows differ from published values");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_native_and_senml_lands_exactly() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let hub = Hub::build(&db, &broker, "exact").start().await;
    // Two sensors per kind take the formats in turn, so every kind is exercised
    // in native JSON and in SenML.
    let native = sim_stream(
        1,
        2,
        200,
        &[Format::Native, Format::Senml],
        FaultRates::default(),
    );
    for kind in ["waste_bin", "streetlight", "bike_counter", "air_quality"] {
        for f in [Format::Native, Format::Senml] {
            assert!(
                native.iter().any(|m| m.kind == kind && m.format == f),
                "{kind} {f:?} missing"
            );
        }
    }
    publish_sim(&broker, &native).await;
    let want = expected_rows(&native);
    wait_for(30, "all rows", || async { db.observations().await == want }).await;
    assert_exact(&db, &native).await;

    // Units are those of the catalogue; positions from the first message.
    let c = db.client().await;
    let unit: String = c
        .query_one(
            "SELECT unit FROM metrics WHERE kind='air_quality' AND name='pm10'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(unit, "µg/m³");
    let located = db.count("SELECT count(*) FROM sensors WHERE lat BETWEEN 45.11 AND 45.16 AND lon BETWEEN 9.99 AND 10.07").await;
    assert_eq!(located, 8);
    // latest holds the newest reading of each sensor and metric.
    let stale = db
        .count("SELECT count(*) FROM latest l WHERE l.time <> (SELECT max(time) FROM observations o WHERE o.sensor_id=l.sensor_id AND o.metric_id=l.metric_id)")
        .await;
    assert_eq!(stale, 0);
    assert_eq!(
        db.count("SELECT count(*) FROM latest").await,
        2 * (3 + 3 + 3 + 6)
    );
    assert_eq!(hub.metric("cityhub_dead_letters_total").await, 0.0);

    // SenML unit conversion: Kelvin and Wh arrive, °C and kWh are stored.
    let t = (Utc::now() - Duration::minutes(1)).timestamp();
    publish_raw(
        &broker,
        &[
            (
                "cityhub/v1/air_quality/aq-conv",
                json!([{"bn": "aq-conv:", "bt": t, "n": "temperature", "u": "K", "v": 293.15}])
                    .to_string()
                    .into_bytes(),
            ),
            (
                "cityhub/v1/streetlight/lamp-conv",
                json!([{"bn": "lamp-conv:", "bt": t, "n": "energy", "u": "Wh", "v": 2500}])
                    .to_string()
                    .into_bytes(),
            ),
        ],
    )
    .await;
    wait_for(20, "converted rows", || async {
        db.observations().await == want + 2
    })
    .await;
    let v: f64 = c
        .query_one("SELECT o.value FROM observations o JOIN sensors s ON s.id=o.sensor_id WHERE s.external_id='aq-conv'", &[])
        .await
        .unwrap()
        .get(0);
    assert!((v - 20.0).abs() < 1e-9, "{v}");
    let v: f64 = c
        .query_one("SELECT o.value FROM observations o JOIN sensors s ON s.id=o.sensor_id WHERE s.external_id='lamp-conv'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 2.5);
}

/// One PostgreSQL without standbys: the hub stays ready and says plainly that a
/// failover could lose acknowledged readings. A `read_url` that reaches no standby
/// (here, the primary itself) leaves the API reading from the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_is_reported_as_not_durable_on_failover_and_reads_fall_back() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let read_url = cityhub_core::ConnUrl::new(db.url.clone());
    let hub = Hub::build(&db, &broker, "single-node")
        .set(move |s| s.database.read_url = Some(read_url))
        .start()
        .await;
    let msgs = sim_stream(5, 1, 20, &[Format::Native], FaultRates::default());
    publish_sim(&broker, &msgs).await;
    wait_for_rows(&db, expected_rows(&msgs), 30, "the readings").await;
    let readyz = || async {
        let r = reqwest::get(hub.url("/readyz")).await.unwrap();
        assert_eq!(r.status(), 200, "a single node is a legitimate install");
        r.json::<serde_json::Value>().await.unwrap()
    };
    wait_for(30, "the replication state", || async {
        !readyz().await["replication"].is_null()
    })
    .await;
    let ready = readyz().await;
    let r = &ready["replication"];
    assert_eq!(r["durable_on_failover"], false, "{ready}");
    assert_eq!(r["standbys"], 0, "{ready}");
    assert!(
        r["warning"].as_str().unwrap().contains("single-node"),
        "{ready}"
    );
    assert_eq!(r["reads"], "primary (no standby answers)", "{ready}");
    assert_eq!(
        hub.metric("cityhub_database_durable_on_failover").await,
        0.0
    );
    let (sensor, from) = (
        &msgs[0].sensor,
        (msgs[0].time - Duration::hours(1)).format("%Y-%m-%dT%H:%M:%SZ"),
    );
    let r = reqwest::get(hub.url(&format!("/api/v1/sensors/{sensor}/readings?from={from}")))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(!body["readings"].as_array().unwrap().is_empty(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivery_stores_nothing_twice() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let hub = Hub::build(&db, &broker, "redeliver").start().await;
    let msgs = sim_stream(3, 5, 80, &[Format::Native], FaultRates::default());
    publish_sim(&broker, &msgs).await;
    let want = expected_rows(&msgs);
    wait_for(30, "first delivery", || async {
        db.observations().await == want
    })
    .await;
    publish_sim(&broker, &msgs).await;
    publish_sim(&broker, &msgs).await;
    wait_for(30, "redeliveries processed", || async {
        hub.metric("cityhub_messages_committed_total").await == 3.0 * msgs.len() as f64
    })
    .await;
    assert_eq!(db.observations().await, want);
    assert_eq!(
        hub.metric("cityhub_observations_duplicate_total").await,
        2.0 * want as f64
    );
    assert_exact(&db, &msgs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_becomes_dead_letters_and_the_pipeline_goes_on() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let hub = Hub::build(&db, &broker, "bad").start().await;
    let now = Utc::now();
    let ts = (now - Duration::minutes(5)).to_rfc3339();
    let future = (now + Duration::hours(2)).to_rfc3339();
    let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        (
            "cityhub/v1/volcano/v-1",
            br#"{"values":{"ash":1}}"#.to_vec(),
            "unknown_kind",
            "kind \"volcano\"",
        ),
        (
            "cityhub/v1/waste_bin/b-1",
            b"{\"values\": {".to_vec(),
            "malformed_json",
            "not valid JSON",
        ),
        (
            "cityhub/v1/waste_bin/b-2",
            json!({"ts": ts, "values": {"fill_level": "full"}})
                .to_string()
                .into_bytes(),
            "wrong_type",
            "values.fill_level: expected a number, got a string",
        ),
        (
            "cityhub/v1/waste_bin/b-3",
            format!(r#"{{"ts":"{ts}","values":{{"fill_level":1e999}}}}"#).into_bytes(),
            "not_finite",
            "too large",
        ),
        (
            "cityhub/v1/waste_bin/b-4",
            json!({"ts": ts, "values": {"fill_level": "NaN"}})
                .to_string()
                .into_bytes(),
            "not_finite",
            "values.fill_level",
        ),
        (
            "cityhub/v1/waste_bin/b-5",
            json!({"ts": ts, "values": {"fill_level": 140}})
                .to_string()
                .into_bytes(),
            "out_of_range",
            "values.fill_level: 140 is above the maximum 100 %",
        ),
        (
            "cityhub/v1/waste_bin/b-6",
            json!({"ts": ts}).to_string().into_bytes(),
            "missing_values",
            "values is missing",
        ),
        (
            "cityhub/v1/waste_bin/b-7",
            json!({"ts": future, "values": {"fill_level": 3}})
                .to_string()
                .into_bytes(),
            "future_timestamp",
            "ahead of the hub's clock",
        ),
        (
            "cityhub/v1/waste_bin/b-8",
            vec![b' '; 70 * 1024],
            "oversize",
            "above the limit of 65536",
        ),
        (
            "cityhub/v1/waste_bin/b-9",
            json!({"ts": ts, "values": {"fill_level": 10, "battery": -1}})
                .to_string()
                .into_bytes(),
            "out_of_range",
            "values.battery: -1 is below the minimum 0 %",
        ),
        (
            "cityhub/v1/waste_bin",
            br#"{"values":{"fill_level":1}}"#.to_vec(),
            "bad_topic",
            "is not cityhub/v1/{kind}/{sensor_id}",
        ),
    ];
    let items: Vec<(&str, Vec<u8>)> = cases.iter().map(|c| (c.0, c.1.clone())).collect();
    publish_raw(&broker, &items).await;
    // A valid message after all of them still arrives.
    publish_raw(
        &broker,
        &[(
            "cityhub/v1/waste_bin/ok-1",
            json!({"ts": ts, "values": {"fill_level": 42}})
                .to_string()
                .into_bytes(),
        )],
    )
    .await;
    wait_for(30, "valid message after the bad ones", || async {
        db.count("SELECT count(*) FROM observations o JOIN sensors s ON s.id=o.sensor_id WHERE s.external_id='ok-1'").await == 1
    })
    .await;
    wait_for(30, "all dead letters", || async {
        db.count("SELECT count(*) FROM dead_letters").await == cases.len() as i64
    })
    .await;
    let c = db.client().await;
    for (topic, payload, code, reason) in &cases {
        let rows = c
            .query(
                "SELECT reason_code, reason, payload, payload_bytes FROM dead_letters WHERE topic = $1",
                &[topic],
            )
            .await
            .unwrap();
        assert_eq!(rows.len(), 1, "{topic}");
        let (got_code, got_reason, got_payload): (String, String, Vec<u8>) =
            (rows[0].get(0), rows[0].get(1), rows[0].get(2));
        assert_eq!(&got_code, code, "{topic}: {got_reason}");
        assert!(
            got_reason.contains(reason),
            "{topic}: {got_reason:?} lacks {reason:?}"
        );
        // The raw payload, up to ingest.dead_letter_payload_bytes (16 KiB), and its length;
        // of an oversize payload only its first bytes (OVERSIZE_PREFIX_BYTES).
        let limit = if *code == "oversize" {
            cityhub_store::writer::OVERSIZE_PREFIX_BYTES
        } else {
            16 * 1024
        };
        let kept = payload.len().min(limit);
        assert_eq!(got_payload, payload[..kept], "{topic}: raw payload kept");
        let full: i32 = rows[0].get(3);
        assert_eq!(full as usize, payload.len(), "{topic}: payload length");
    }
    // The partly bad message kept its valid metric; sensors with only bad input were not registered.
    let kept = db.count("SELECT count(*) FROM observations o JOIN sensors s ON s.id=o.sensor_id WHERE s.external_id='b-9'").await;
    assert_eq!(kept, 1);
    assert_eq!(
        db.count("SELECT count(*) FROM sensors WHERE external_id IN ('b-2','b-5','b-7')")
            .await,
        0
    );
    assert_eq!(
        hub.metric("cityhub_dead_letters_total{reason=\"out_of_range\"")
            .await,
        0.0,
        "label filter sanity"
    );
    let text = reqwest::get(hub.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("cityhub_dead_letters_total{reason=\"out_of_range\"} 2"),
        "{text}"
    );
    assert!(text.contains("cityhub_dead_letters_total{reason=\"oversize\"} 1"));
    assert!(text.contains("cityhub_dead_letters_total{reason=\"unknown_kind\"} 1"));

    // A sensor registered under one kind cannot report as another.
    publish_raw(
        &broker,
        &[(
            "cityhub/v1/streetlight/ok-1",
            json!({"ts": ts, "values": {"power": 12}})
                .to_string()
                .into_bytes(),
        )],
    )
    .await;
    wait_for(30, "kind mismatch dead letter", || async {
        db.count("SELECT count(*) FROM dead_letters WHERE reason_code='kind_mismatch'")
            .await
            == 1
    })
    .await;
}

/// Publishes `msgs` from a background task.
fn publish_in_background(
    broker: &Broker,
    msgs: &[cityhub_sim::SimMessage],
) -> tokio::task::JoinHandle<cityhub_sim::Report> {
    let mqtt = broker.mqtt();
    let msgs = msgs.to_vec();
    tokio::spawn(async move {
        cityhub_sim::publish(
            &mqtt,
            "load-publisher",
            &msgs,
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        )
        .await
        .unwrap()
    })
}

fn stream(seed: u64, per_kind: usize, rounds: usize) -> Vec<cityhub_sim::SimMessage> {
    let count = per_kind * 4 * rounds;
    sim_stream(
        seed,
        per_kind,
        count,
        &[Format::Native, Format::Senml],
        FaultRates::default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_connections_killed_mid_stream_lose_nothing() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let hub = Hub::build(&db, &broker, "pgterm").start().await;
    let msgs = stream(12, 25, 100); // 10,000 messages
    let want = expected_rows(&msgs);
    let publisher = publish_in_background(&broker, &msgs);
    let admin = db.client().await;
    let mut terminated = 0i64;
    for fraction in [4, 2] {
        wait_for(120, "progress", || async {
            db.observations().await >= want / fraction
        })
        .await;
        let n: i64 = admin
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                 WHERE datname = current_database() AND application_name = 'cityhub'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        terminated += n;
    }
    assert!(terminated > 0, "no hub connection was terminated");
    publisher.await.unwrap();
    wait_for(120, "every row after terminated connections", || async {
        db.observations().await >= want
    })
    .await;
    hub.settled(msgs.len() as f64).await;
    assert_exact(&db, &msgs).await;
    assert!(
        hub.metric("cityhub_db_retries_total").await >= 1.0,
        "the hub never saw the outage"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hubs_in_a_share_group_split_the_stream() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let group = |s: &mut cityhub_core::Settings| s.mqtt.share_group = "cityhub".into();
    let a = Hub::build(&db, &broker, "share-a").set(group).start().await;
    let b = Hub::build(&db, &broker, "share-b").set(group).start().await;
    let msgs = stream(13, 25, 40); // 4,000 messages
    let want = expected_rows(&msgs);
    publish_in_background(&broker, &msgs).await.unwrap();
    wait_for(120, "every row through two hubs", || async {
        db.observations().await >= want
    })
    .await;
    wait_for(60, "both hubs to commit and ack every message", || async {
        let committed = a.metric("cityhub_messages_committed_total").await
            + b.metric("cityhub_messages_committed_total").await;
        let pending =
            a.metric("cityhub_acks_pending").await + b.metric("cityhub_acks_pending").await;
        committed >= msgs.len() as f64 && pending == 0.0
    })
    .await;
    assert_exact(&db, &msgs).await;
    let (ra, rb) = (
        a.metric("cityhub_mqtt_messages_received_total").await,
        b.metric("cityhub_mqtt_messages_received_total").await,
    );
    assert!(ra > 0.0 && rb > 0.0, "one hub got nothing: {ra} / {rb}");
    assert_eq!(
        ra + rb,
        msgs.len() as f64,
        "each message went to exactly one hub"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulator_report_and_database_agree_with_faults() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let _hub = Hub::build(&db, &broker, "faults").start().await;
    let faults = FaultRates::parse(
        "malformed=0.03,out_of_range=0.03,unknown_kind=0.03,duplicate=0.05,out_of_order=0.05,burst=0.02",
    )
    .unwrap();
    let msgs = sim_stream(31, 10, 4000, &[Format::Native, Format::Senml], faults);
    let report = cityhub_sim::publish(
        &broker.mqtt(),
        "faulty-fleet",
        &msgs,
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
    )
    .await
    .unwrap();
    assert_eq!(report.acknowledged, 4000);
    for f in [
        "malformed",
        "out_of_range",
        "unknown_kind",
        "duplicate",
        "out_of_order",
    ] {
        assert!(
            report.faults.get(f).copied().unwrap_or(0) > 0,
            "no {f} fault injected: {:?}",
            report.faults
        );
    }
    let dead: u64 = report.expected_dead_letters.values().sum();
    wait_for(60, "every valid row and every dead letter", || async {
        db.observations().await == report.expected_rows as i64
            && db.count("SELECT count(*) FROM dead_letters").await == dead as i64
    })
    .await;
    for (code, n) in &report.expected_dead_letters {
        let got = db
            .count(&format!(
                "SELECT count(*) FROM dead_letters WHERE reason_code = '{code}'"
            ))
            .await;
        assert_eq!(got, *n as i64, "dead letters {code}");
    }
    assert_exact(&db, &msgs).await;
}

/// Values come back bit for bit, whether stored as integer thousandths (most
/// readings) or as floats (more decimals, -0, subnormals).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_values_come_back_bit_for_bit() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let _hub = Hub::build(&db, &broker, "bits").start().await;
    // (value, stored as thousandths?)
    let values: [(f64, bool); 14] = [
        (21.37, true),
        (0.1, true),
        (0.0, true),
        (-0.0, false),
        (-39.875, true),
        (-0.001, true),
        (9_999_999.999, true),
        (1234.5, true),
        (0.1 + 0.2, false),
        (1e-7, false),
        (5e-324, false),
        (-3.3333333333333335, false),
        (1_234_567.123_456_7, false),
        (84.0001, false),
    ];
    let t0 = Utc::now() - Duration::hours(1);
    let msgs: Vec<(String, Vec<u8>)> = values
        .iter()
        .enumerate()
        .map(|(i, (v, _))| {
            let (topic, metric) = if *v < 0.0 || v.is_sign_negative() {
                ("cityhub/v1/waste_bin/bits-bin", "temperature")
            } else {
                ("cityhub/v1/streetlight/bits-lamp", "energy")
            };
            let ts = (t0 + Duration::seconds(i as i64)).to_rfc3339();
            // serde_json writes the shortest text that parses back to the same f64.
            let payload = format!(
                r#"{{"ts":"{ts}","values":{{"{metric}":{}}}}}"#,
                serde_json::to_string(v).unwrap()
            );
            (topic.to_string(), payload.into_bytes())
        })
        .collect();
    publish_raw(&broker, &msgs).await;
    wait_for(30, "every value stored", || async {
        let dead = db
            .client()
            .await
            .query("SELECT reason FROM dead_letters", &[])
            .await
            .unwrap();
        assert!(
            dead.is_empty(),
            "refused: {:?}",
            dead.iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>()
        );
        db.observations().await == values.len() as i64
    })
    .await;
    let rows = db
        .client()
        .await
        .query(
            "SELECT v.value, d.value_milli IS NOT NULL FROM observations v
             JOIN observations_data d USING (time, sensor_id, metric_id) ORDER BY time",
            &[],
        )
        .await
        .unwrap();
    for ((want, milli), r) in values.iter().zip(&rows) {
        let got: f64 = r.get(0);
        assert_eq!(
            got.to_bits(),
            want.to_bits(),
            "{want:?} came back as {got:?}"
        );
        assert_eq!(
            r.get::<_, bool>(1),
            *milli,
            "{want:?}: stored as thousandths?"
        );
    }
}

fn reading(kind: &str, sensor: &str, value: f64, seconds_ago: i64) -> (String, Vec<u8>) {
    let ts = (Utc::now() - Duration::seconds(seconds_ago)).to_rfc3339();
    let metric = if kind == "waste_bin" {
        "fill_level"
    } else {
        "pm10"
    };
    (
        format!("cityhub/v1/{kind}/{sensor}"),
        format!(r#"{{"ts":"{ts}","values":{{"{metric}":{value}}}}}"#).into_bytes(),
    )
}

async fn dead_letters(db: &TestDb, code: &str) -> i64 {
    db.count(&format!(
        "SELECT count(*) FROM dead_letters WHERE reason_code = '{code}'"
    ))
    .await
}

/// Every message of a sensor reported under another kind is a dead letter, however
/// many share its batch (only the first of them was, and the rest were lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_of_a_sensor_under_another_kind_is_a_dead_letter() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let _hub = Hub::build(&db, &broker, "mismatch").start().await;
    publish_raw(&broker, &[reading("waste_bin", "mix-1", 40.0, 60)]).await;
    wait_for(30, "the bin registered", || async {
        db.observations().await == 1
    })
    .await;
    let wrong: Vec<_> = (0..5)
        .map(|i| {
            reading(
                "air_quality",
                "mix-1",
                10.0 + f64::from(i),
                50 - i64::from(i),
            )
        })
        .collect();
    publish_raw(&broker, &wrong).await;
    wait_for(30, "five kind_mismatch dead letters", || async {
        dead_letters(&db, "kind_mismatch").await == 5
    })
    .await;
    assert_eq!(db.observations().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_known_stores_registered_sensors_only() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let hub = Hub::build(&db, &broker, "known")
        .set(|s| s.ingest.registration = cityhub_core::Registration::Known)
        .admin_token(TOKEN)
        .start()
        .await;
    let put = reqwest::Client::new()
        .put(hub.url("/api/v1/sensors/bin-known"))
        .bearer_auth(TOKEN)
        .json(
            &json!({"type": "Feature", "geometry": {"type": "Point", "coordinates": [10.02, 45.13]},
                      "properties": {"kind": "waste_bin"}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    let msgs = [
        reading("waste_bin", "bin-known", 40.0, 30),
        reading("waste_bin", "stranger-1", 50.0, 30),
        reading("waste_bin", "stranger-1", 51.0, 20),
        reading("air_quality", "stranger-2", 20.0, 30),
        reading("waste_bin", "bin-known", 41.0, 20),
    ];
    publish_raw(&broker, &msgs).await;
    wait_for(30, "two readings stored and three dead letters", || async {
        db.observations().await == 2 && dead_letters(&db, "unregistered_sensor").await == 3
    })
    .await;
    assert_eq!(db.count("SELECT count(*) FROM sensors").await, 1);
    assert_eq!(
        hub.metric_labelled(
            "cityhub_dead_letters_total",
            "reason=\"unregistered_sensor\""
        )
        .await,
        Some(3.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_sensors_caps_what_readings_register() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let _hub = Hub::build(&db, &broker, "cap")
        .set(|s| s.ingest.max_sensors = 5)
        .start()
        .await;
    let first: Vec<_> = (0..8)
        .map(|i| reading("waste_bin", &format!("cap-{i}"), 30.0, 60))
        .collect();
    publish_raw(&broker, &first).await;
    wait_for(
        30,
        "five sensors and three sensor_limit dead letters",
        || async { dead_letters(&db, "sensor_limit").await == 3 && db.observations().await == 5 },
    )
    .await;
    assert_eq!(db.count("SELECT count(*) FROM sensors").await, 5);
    // The registered ones keep reporting.
    let registered: Vec<String> = db
        .client()
        .await
        .query("SELECT external_id FROM sensors", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let again: Vec<_> = registered
        .iter()
        .map(|s| reading("waste_bin", s, 31.0, 30))
        .collect();
    publish_raw(&broker, &again).await;
    wait_for(30, "their next readings", || async {
        db.observations().await == 10
    })
    .await;
    assert_eq!(dead_letters(&db, "sensor_limit").await, 3);
}

/// Open registration is bounded by default: with 50,000 sensors registered, a reading
/// of a new one is a `sensor_limit` dead letter, and registered ones still report.
/// Before, the default was no limit: one publisher registered 28,000 ids in 8 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_registration_is_bounded_by_default() {
    let db = TestDb::new().await;
    db.migrate().await.unwrap();
    db.register_bins(50_000, i32::MAX).await;
    let broker = Broker::start();
    let _hub = Hub::build(&db, &broker, "default-cap").start().await;
    let before = db.observations().await;
    publish_raw(
        &broker,
        &[
            reading("waste_bin", "newcomer-1", 30.0, 20),
            reading("waste_bin", "bin-000001", 31.0, 10),
        ],
    )
    .await;
    wait_for(
        30,
        "the registered bin's reading and one sensor_limit",
        || async {
            db.observations().await == before + 1 && dead_letters(&db, "sensor_limit").await == 1
        },
    )
    .await;
    assert_eq!(db.count("SELECT count(*) FROM sensors").await, 50_000);
}

/// Tests that kill, signal, restart or weigh a hub process: the second tier of
/// `scripts/test` (`cargo test -- process::`).
mod process {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sigkill_mid_stream_loses_nothing() {
        let db = TestDb::new().await;
        let broker = Broker::start();
        let mut hub = Hub::start(&db, &broker, "killed", &[]).await;
        let msgs = stream(11, 50, 100); // 20,000 messages, 75,000 rows
        assert_eq!(msgs.len(), 20_000);
        let want = expected_rows(&msgs);
        let publisher = publish_in_background(&broker, &msgs);
        let mut kills = 0;
        for fraction in [5, 3, 2] {
            wait_for(120, "progress before kill", || async {
                db.observations().await >= want / fraction as i64
            })
            .await;
            let before = db.observations().await;
            hub.kill9();
            kills += 1;
            assert!(
                before < want,
                "kill {kills} came after the stream ended; nothing was tested"
            );
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            hub.restart().await;
        }
        let report = publisher.await.unwrap();
        assert_eq!(report.acknowledged, 20_000);
        wait_for(180, "every row after three SIGKILLs", || async {
            db.observations().await >= want
        })
        .await;
        hub.acked().await;
        assert_exact(&db, &msgs).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn graceful_shutdown_commits_and_exits_cleanly() {
        let db = TestDb::new().await;
        let broker = Broker::start();
        let mut hub = Hub::start(&db, &broker, "graceful", &[]).await;
        let msgs = stream(14, 10, 50);
        let want = expected_rows(&msgs);
        let publisher = publish_in_background(&broker, &msgs);
        wait_for(60, "progress", || async {
            db.observations().await >= want / 3
        })
        .await;
        assert!(hub.terminate(), "hub did not exit cleanly on SIGTERM");
        publisher.await.unwrap();
        hub.restart().await;
        wait_for(60, "the rest after restart", || async {
            db.observations().await >= want
        })
        .await;
        assert_exact(&db, &msgs).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn backlog_queued_while_the_hub_was_down_drains_completely() {
        // A resumed session delivers a large backlog at once: the pipeline must keep
        // acking while it stores (a blocked event loop here once deadlocked the hub).
        let db = TestDb::new().await;
        let broker = Broker::start();
        let mut hub = Hub::start(&db, &broker, "backlog", &[]).await;
        hub.kill9();
        let msgs = stream(15, 100, 100); // 40,000 messages queued for the stopped hub
        let want = expected_rows(&msgs);
        publish_in_background(&broker, &msgs).await.unwrap();
        hub.restart().await;
        wait_for(300, "the whole backlog", || async {
            db.observations().await >= want
        })
        .await;
        assert_exact(&db, &msgs).await;
    }

    /// Not a test of correctness: measures one hub's end-to-end rate on this machine.
    /// `cargo test --release --test ingest throughput -- --ignored --nocapture`
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "measurement, run by hand"]
    async fn throughput() {
        let db = TestDb::new().await;
        let broker = Broker::start();
        let hub = Hub::start(&db, &broker, "throughput", &[("RUST_LOG", "warn")]).await;
        let msgs = stream(21, 250, 100); // 100,000 messages, 375,000 rows
        let want = expected_rows(&msgs);
        // Queue everything at the broker first, with the hub's session offline, then
        // measure how fast the hub drains it: the publisher's speed is not measured.
        let mut hub = hub;
        hub.kill9();
        publish_in_background(&broker, &msgs).await.unwrap();
        let started = std::time::Instant::now();
        hub.restart().await;
        wait_for(600, "all rows", || async {
            db.observations().await >= want
        })
        .await;
        let secs = started.elapsed().as_secs_f64();
        println!(
            "throughput: {} messages ({} rows) in {:.2} s = {:.0} messages/s, {:.0} rows/s (backend {})",
            msgs.len(),
            want,
            secs,
            msgs.len() as f64 / secs,
            want as f64 / secs,
            reqwest::get(hub.url("/readyz")).await.unwrap().text().await.unwrap()
        );
    }
}

/// The key a sensor or a metric gets from the database is drawn once, when it is new.
/// Before, every batch's upsert of its sensors drew a key per sensor and threw it away
/// (and every start of a hub or a CLI command, one per metric): at 5,000 messages a
/// second from distinct sensors the sensors' 32-bit keys run out in about five days
/// and every batch fails; the metrics' 16-bit keys after about 2,000 starts, and no
/// hub starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_drawn_only_for_new_sensors_and_metrics() {
    let db = TestDb::new().await;
    let drawn = |table: &'static str| {
        let db = &db;
        async move {
            db.count(&format!(
                "SELECT coalesce(pg_sequence_last_value(pg_get_serial_sequence('{table}', 'id')::regclass), 0)"
            ))
            .await
        }
    };
    for _ in 0..3 {
        db.migrate().await.unwrap();
    }
    let metrics = db.count("SELECT count(*) FROM metrics").await;
    assert_eq!(
        drawn("metrics").await,
        metrics,
        "keys drawn for {metrics} metrics"
    );

    let broker = Broker::start();
    let _hub = Hub::start(&db, &broker, "keys", &[]).await;
    let sensors = 100;
    for round in 0..3i64 {
        let t = Utc::now() - Duration::minutes(10 - round);
        let msgs: Vec<(String, Vec<u8>)> = (0..sensors)
            .map(|i| {
                let doc = serde_json::json!({"ts": t.to_rfc3339(), "values": {"fill_level": 40 + i % 50}});
                (format!("cityhub/v1/waste_bin/bin-key-{i}"), doc.to_string().into_bytes())
            })
            .collect();
        publish_raw(&broker, &msgs).await;
        wait_for(60, "the round's readings stored", || async {
            db.observations().await == sensors * (round + 1)
        })
        .await;
    }
    assert_eq!(db.count("SELECT count(*) FROM sensors").await, sensors);
    // A batch retried after a lost connection may draw a new sensor's key twice.
    let keys = drawn("sensors").await;
    assert!(
        keys < sensors * 3 / 2,
        "{keys} keys drawn for {sensors} sensors over three rounds of readings"
    );
}
