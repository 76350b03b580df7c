//! A year of a real Italian road-side air-quality station (UCI), replayed
//! through the hub: every non-missing value stored once, -200 never stored, and
//! every hourly and daily bucket of it answered after the TimescaleDB jobs ran.
//! And a replay's report tells what the hub stored, not what the broker took.

use cityhub_testkit::*;
use std::path::Path;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uci_air_quality_replay_lands_completely() {
    let csv = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/uci-air-quality/AirQualityUCI.csv");
    let db = TestDb::new().await;
    let broker = Broker::start();
    let hub = Hub::build(&db, &broker, "replay").start().await;
    let out = cli_ok(
        &[
            "sim",
            "replay",
            csv.to_str().unwrap(),
            "--broker",
            &broker.url(),
            "--kind",
            "air_quality",
            "--sensor",
            "aq-uci",
            "--map",
            "NO2_GT=no2,T=temperature,RH=humidity",
            "--lat",
            "45.1335",
            "--lon",
            "10.0255",
            "--hub",
            &hub.url(""),
        ],
        &[],
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = report["expected_rows"].as_i64().unwrap();
    assert_eq!(report["acknowledged_by_broker"], report["messages"]);
    // The report says what the hub stored, counted through its API.
    let stored = &report["stored_by_hub"];
    assert_eq!(stored["stored_rows"], rows, "{report}");
    assert_eq!(stored["missing_rows"], 0, "{report}");
    assert!(report["messages"].as_i64().unwrap() > 9000, "{report}");
    // Independent count of the file's usable values.
    let text = std::fs::read_to_string(&csv).unwrap();
    let header: Vec<&str> = text.lines().next().unwrap().split(',').collect();
    let cols: Vec<usize> = ["NO2_GT", "T", "RH"]
        .iter()
        .map(|c| header.iter().position(|h| h == c).unwrap())
        .collect();
    let usable: i64 = text
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            cols.iter()
                .filter(|c| {
                    f.get(**c)
                        .and_then(|v| v.parse::<f64>().ok())
                        .is_some_and(|v| v != -200.0)
                })
                .count() as i64
        })
        .sum();
    assert_eq!(rows, usable);
    wait_for(120, "every replayed value", || async {
        db.observations().await == usable
    })
    .await;
    assert_eq!(
        db.count("SELECT count(*) FROM observations WHERE value = -200")
            .await,
        0
    );
    assert_eq!(db.count("SELECT count(*) FROM dead_letters").await, 0);
    let located = db
        .count("SELECT count(*) FROM sensors WHERE external_id = 'aq-uci' AND lat = 45.1335")
        .await;
    assert_eq!(located, 1);

    // A year of history is older than any refresh window: after the policies run
    // (and compression), every hourly and daily answer still equals SQL over the rows.
    run_policies(&db).await;
    compress_all(&db).await;
    run_policies(&db).await;
    for bucket in ["1h", "1d"] {
        let (n, wrong) = bucket_mismatches(&hub, &db, "aq-uci", bucket).await;
        eprintln!(
            "UCI replay, {bucket}: {n} buckets, {} disagree",
            wrong.len()
        );
        assert!(n > 300, "{bucket}: {n}");
        assert!(
            wrong.is_empty(),
            "{bucket}: {} of {n} buckets disagree, e.g. {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(5)]
        );
    }
}

/// Acknowledged by a broker is not stored by the hub: published to a broker the
/// hub does not listen to, every message is acknowledged, and the report says
/// none was stored (and prints what to look for).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_report_tells_what_the_hub_stored_not_what_the_broker_took() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let elsewhere = Broker::start();
    let hub = Hub::build(&db, &broker, "replay-elsewhere").start().await;
    let dir = std::env::temp_dir().join(unique("replay_small"));
    std::fs::create_dir_all(&dir).unwrap();
    let csv = dir.join("series.csv");
    let mut text = String::from("Date,Time,NO2_GT\n");
    for h in 0..24 {
        text.push_str(&format!("10/03/2004,{h:02}.00.00,{}\n", 40 + h));
    }
    std::fs::write(&csv, text).unwrap();
    let out = cli(
        &[
            "sim",
            "replay",
            csv.to_str().unwrap(),
            "--broker",
            &elsewhere.url(),
            "--kind",
            "air_quality",
            "--sensor",
            "aq-elsewhere",
            "--map",
            "NO2_GT=no2",
            "--hub",
            &hub.url(""),
            "--settle-s",
            "6",
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["messages"], 24, "{report}");
    assert_eq!(report["acknowledged_by_broker"], 24, "{report}");
    assert_eq!(report["stored_by_hub"]["stored_rows"], 0, "{report}");
    assert_eq!(report["stored_by_hub"]["missing_rows"], 24, "{report}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("stored 0 of 24") && err.contains("Outgoing messages are being dropped"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
