//! A year of a real Italian road-side air-quality station (UCI), replayed
//! through the hub: every non-missing value stored once, -200 never stored, and
//! every hourly and daily bucket of it answered after the TimescaleDB jobs ran.

use cityhub_testkit::*;
use std::path::Path;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uci_air_quality_replay_lands_completely() {
    let csv = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/uci-air-quality/AirQualityUCI.csv");
    let db = TestDb::new().await;
    let broker = Broker::start();
    let hub = Hub::start(&db, &broker, "replay", &[]).await;
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
        ],
        &[],
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = report["expected_rows"].as_i64().unwrap();
    assert_eq!(report["acknowledged"], report["messages"]);
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
