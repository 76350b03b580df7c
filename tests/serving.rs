//! Reads stay available whatever the clients do: downloads that stop reading hold
//! connections of their own pool only, so listings, feeds and readiness answer.

use chrono::Utc;
use cityhub_testkit::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ninety_stalled_downloads_starve_neither_listings_nor_feeds_nor_readiness() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let hub = Hub::start_in_process(
        &db,
        &broker,
        "slow-csv",
        &[
            ("CITYHUB_HTTP_RATE_LIMIT_PER_S", "0"),
            ("CITYHUB_HTTP_STREAM_SEND_TIMEOUT_S", "120"),
        ],
    )
    .await;
    let now = Utc::now();
    let first = format!(
        r#"{{"ts":"{}","values":{{"fill_level":40}},"location":{{"lat":45.13,"lon":10.02}}}}"#,
        now.to_rfc3339()
    );
    publish_raw(
        &broker,
        &[("cityhub/v1/waste_bin/slow-1", first.into_bytes())],
    )
    .await;
    wait_for(30, "the bin registered", || async {
        db.observations().await == 1
    })
    .await;
    // 300,000 readings (about 13 MB of CSV), more than any socket buffer holds.
    db.client()
        .await
        .batch_execute(
            "INSERT INTO observations_data (time, sensor_id, metric_id, value_milli)
             SELECT now() - make_interval(secs => g), s.id, m.id, 40000 + g % 1000
             FROM generate_series(1, 300000) g, sensors s, metrics m
             WHERE s.external_id = 'slow-1' AND m.kind = 'waste_bin' AND m.name = 'fill_level'",
        )
        .await
        .unwrap();

    // Ninety clients ask for the whole series, read the first kilobyte, and stop.
    let from = (now - chrono::Duration::days(10)).format("%Y-%m-%dT%H:%M:%SZ");
    let request = format!(
        "GET /api/v1/sensors/slow-1/readings?format=csv&from={from} HTTP/1.1\r\nHost: hub\r\n\r\n"
    );
    let addr = hub
        .url("")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let clients = (0..90).map(|_| {
        let (addr, request) = (addr.clone(), request.clone());
        tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
            s.write_all(request.as_bytes()).await.unwrap();
            let mut head = vec![0u8; 1024];
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut head))
                .await
                .expect("every download is answered at once, 200 or 503")
                .unwrap();
            let status = String::from_utf8_lossy(&head[..n])
                .chars()
                .skip(9)
                .take(3)
                .collect::<String>();
            (status, s)
        })
    });
    let mut stalled = Vec::new();
    let (mut streaming, mut busy) = (0, 0);
    for c in clients.collect::<Vec<_>>() {
        let (status, s) = c.await.unwrap();
        match status.as_str() {
            "200" => streaming += 1,
            "503" => busy += 1,
            other => panic!("a download answered {other}"),
        }
        stalled.push(s);
    }
    // Meanwhile everything else answers, on time.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    for round in 0..8 {
        for path in ["/api/v1/sensors", "/feeds/waste_bin.csv", "/readyz"] {
            let r = http.get(hub.url(path)).send().await;
            let status = r.as_ref().map(|r| r.status().as_u16());
            assert_eq!(status.ok(), Some(200), "{path} in round {round}: {r:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let ready: serde_json::Value = http
        .get(hub.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["database"], "ok");
    assert_eq!(streaming + busy, 90);
    assert!(
        (1..=4).contains(&streaming),
        "{streaming} downloads streaming with a download pool of 4"
    );

    drop(stalled);
}
