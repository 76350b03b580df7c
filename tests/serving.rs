//! Reads stay available whatever the clients do: downloads that stop reading hold
//! connections of their own pool only, so listings, feeds and readiness answer.

use chrono::{DateTime, Utc};
use cityhub_sim::{FaultRates, Format};
use cityhub_testkit::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Registers bin `sensor` by a reading now, then gives it 300,000 readings (about
/// 13 MB of CSV, more than any socket buffer holds); returns the reading's time.
async fn bin_with_a_long_series(db: &TestDb, broker: &Broker, sensor: &str) -> DateTime<Utc> {
    let now = Utc::now();
    let first = format!(
        r#"{{"ts":"{}","values":{{"fill_level":40}},"location":{{"lat":45.13,"lon":10.02}}}}"#,
        now.to_rfc3339()
    );
    publish_raw(
        broker,
        &[(format!("cityhub/v1/waste_bin/{sensor}"), first.into_bytes())],
    )
    .await;
    wait_for(30, "the bin registered", || async {
        db.observations().await == 1
    })
    .await;
    db.client()
        .await
        .execute(
            "INSERT INTO observations_data (time, sensor_id, metric_id, value_milli)
             SELECT now() - make_interval(secs => g), s.id, m.id, 40000 + g % 1000
             FROM generate_series(1, 300000) g, sensors s, metrics m
             WHERE s.external_id = $1 AND m.kind = 'waste_bin' AND m.name = 'fill_level'",
            &[&sensor],
        )
        .await
        .unwrap();
    now
}

/// Sends `request` to the hub on `port`, reads the first bytes of the answer and no
/// more: its status (`200` or `503`, within 10 s) and the connection, held open.
async fn stalled_download(port: u16, request: String) -> (String, tokio::net::TcpStream) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut head = vec![0u8; 512];
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ninety_stalled_downloads_starve_neither_listings_nor_feeds_nor_readiness() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let hub = Hub::build(&db, &broker, "slow-csv")
        .set(|s| s.http.rate_limit_per_s = 0)
        .set(|s| s.http.stream_send_timeout_s = 120)
        .start()
        .await;
    let now = bin_with_a_long_series(&db, &broker, "slow-1").await;

    // Ninety clients ask for the whole series, read the first kilobyte, and stop.
    let from = (now - chrono::Duration::days(10)).format("%Y-%m-%dT%H:%M:%SZ");
    let request = format!(
        "GET /api/v1/sensors/slow-1/readings?format=csv&from={from} HTTP/1.1\r\nHost: hub\r\n\r\n"
    );
    let port = hub.http_port;
    let clients = (0..90).map(|_| tokio::spawn(stalled_download(port, request.clone())));
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

/// The peak resident memory of a process (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listing_pages_by_cursor_filters_and_gzips_from_memory() {
    let db = TestDb::new().await;
    db.migrate().await.unwrap();
    db.register_bins(2_500, i32::MAX).await;
    let broker = Broker::start();
    let hub = Hub::build(&db, &broker, "fleet-pages")
        .set(|s| s.http.rate_limit_per_s = 0)
        .start()
        .await;
    let http = reqwest::Client::new();
    let all: serde_json::Value = http
        .get(hub.url("/api/v1/sensors"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let all = all["features"].as_array().unwrap().clone();
    assert_eq!(all.len(), 2_500);

    // Pages of 1,000 by their next links give every sensor once, in order.
    let mut url = hub.url("/api/v1/sensors?limit=1000");
    let mut paged = Vec::new();
    let mut pages = 0;
    loop {
        let page: serde_json::Value = http.get(&url).send().await.unwrap().json().await.unwrap();
        pages += 1;
        assert_eq!(page["numberMatched"], 2_500);
        paged.extend(page["features"].as_array().unwrap().iter().cloned());
        match link(&page, "next") {
            Some(next) => url = next,
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(paged, all);

    // A bbox selects from memory too: bins 1..=999 lie on the first row of the grid.
    let boxed: serde_json::Value = http
        .get(hub.url("/api/v1/sensors?bbox=9.8,45.09,10.3,45.1001"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(boxed["features"].as_array().unwrap().len(), 999);
    for (q, status) in [
        ("limit=0", 400),
        ("limit=10001", 400),
        ("limit=5&kind=volcano", 400),
    ] {
        let r = http
            .get(hub.url(&format!("/api/v1/sensors?{q}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{q}");
    }

    // gzip is the document's own, with an ETag of its own, and inflates to the same bytes.
    let plain = http.get(hub.url("/api/v1/sensors")).send().await.unwrap();
    let plain_etag = plain.headers()["etag"].clone();
    let plain = plain.bytes().await.unwrap();
    let gz = http
        .get(hub.url("/api/v1/sensors"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(gz.headers()["content-encoding"], "gzip");
    let gz_etag = gz.headers()["etag"].clone();
    assert_ne!(gz_etag, plain_etag);
    let mut inflated = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(&gz.bytes().await.unwrap()[..]),
        &mut inflated,
    )
    .unwrap();
    assert_eq!(inflated, plain);
    let again = http
        .get(hub.url("/api/v1/sensors"))
        .header("accept-encoding", "gzip")
        .header("if-none-match", gz_etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status().as_u16(), 304);
}

/// The whole listing, as a map or app asks for it.
async fn listing(hub: &Hub) -> serde_json::Value {
    reqwest::get(hub.url("/api/v1/sensors"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The hub loads the fleet as it starts, before any request asks, in ranges of
/// database keys fetched side by side; a fleet whose keys have gaps (sensors deleted,
/// and keys spread to billions, as writers that drew a key per upsert left them) is
/// listed whole, each sensor once, and its ranges follow the keys there are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_is_loaded_as_the_hub_starts_whole_across_gaps_in_its_keys() {
    let db = TestDb::new().await;
    db.migrate().await.unwrap();
    db.register_bins(25_000, i32::MAX).await;
    db.client()
        .await
        .batch_execute(
            "DELETE FROM latest WHERE sensor_id BETWEEN 5000 AND 17000;
             DELETE FROM sensors WHERE id BETWEEN 5000 AND 17000;
             SELECT setval(pg_get_serial_sequence('sensors', 'id'), 2000000000);
             INSERT INTO sensors (external_id, kind, name, lon, lat)
             VALUES ('bin-late', 'waste_bin', 'Late', 10.0, 45.1);",
        )
        .await
        .unwrap();
    let want: Vec<String> = db
        .client()
        .await
        .query("SELECT external_id FROM sensors ORDER BY external_id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(want.len(), 25_000 - 12_001 + 1);
    let broker = Broker::start();
    let hub = Hub::build(&db, &broker, "fleet-at-start")
        .set(|s| s.http.rate_limit_per_s = 0)
        .start()
        .await;
    let loaded = format!("Sensors listing loaded. sensors={}", want.len());
    wait_for(60, "the hub's log to say it loaded the fleet", || async {
        std::fs::read_to_string(&hub.log).is_ok_and(|l| l.contains(&loaded))
    })
    .await;
    let listing = listing(&hub).await;
    let got: Vec<&str> = listing["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, want);
}

/// Readings committed after the hub started reach the listing in the background,
/// before anyone asks: the first request does not wait for every commit since the
/// start (under the API bench's ingest it did, 700-760 ms, the slowest request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_after_the_start_are_taken_in_before_the_first_request() {
    let db = TestDb::new().await;
    db.migrate().await.unwrap();
    db.register_bins(200, 1_000).await;
    let broker = Broker::start();
    let hub = Hub::build(&db, &broker, "taken-in")
        .set(|s| {
            s.http.rate_limit_per_s = 0;
            s.http.snapshot_max_lag_ms = 1000;
        })
        .start()
        .await;
    let log = || std::fs::read_to_string(&hub.log).unwrap_or_default();
    wait_for(60, "the hub's log to say it loaded the fleet", || async {
        log().contains("Sensors listing loaded. sensors=200")
    })
    .await;
    // One message: one commit, which the refresher's first round takes in.
    let doc = serde_json::json!({"ts": Utc::now().to_rfc3339(), "values": {"fill_level": 37.25}});
    publish_raw(
        &broker,
        &[(
            "cityhub/v1/waste_bin/bin-000007",
            doc.to_string().into_bytes(),
        )],
    )
    .await;
    wait_for(
        60,
        "the hub's log to say the listing took the commits in",
        || async { log().contains("Sensors listing took in the latest commits.") },
    )
    .await;
    let listing = listing(&hub).await;
    let fresh: Vec<&str> = listing["features"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["properties"]["latest"]["fill_level"]["value"].as_f64() == Some(37.25))
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        fresh,
        ["bin-000007"],
        "the listing holds the reading taken in"
    );
    assert!(
        !log().contains("A listing request waits for the latest commits. behind=true"),
        "the first request waited for commits older than the lag"
    );
}

/// The map's compact fleet (`/map/fleet.json`) says what the listing says, sensor by
/// sensor, in arrays; it follows a new reading and revalidates like the listing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_maps_fleet_arrays_say_what_the_listing_says_and_follow_readings() {
    let db = TestDb::new().await;
    db.migrate().await.unwrap();
    db.register_bins(2_500, 1_000).await;
    let broker = Broker::start();
    let hub = Hub::build(&db, &broker, "fleet-arrays")
        .set(|s| s.http.rate_limit_per_s = 0)
        .start()
        .await;
    let http = reqwest::Client::new();
    let get = |path: &'static str| {
        let (http, url) = (http.clone(), hub.url(path));
        async move {
            http.get(url)
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    let listing = get("/api/v1/sensors").await;
    let fleet = get("/map/fleet.json").await;
    let features = listing["features"].as_array().unwrap();
    assert_eq!(fleet["count"], 2_500);
    assert_eq!(fleet["kinds"], serde_json::json!(["waste_bin"]));
    assert_eq!(fleet["judged_by"]["waste_bin"], "fill_level");
    let ms = |v: &serde_json::Value| {
        DateTime::parse_from_rfc3339(v.as_str().unwrap())
            .unwrap()
            .timestamp_millis()
    };
    for (i, f) in features.iter().enumerate() {
        let p = &f["properties"];
        assert_eq!(fleet["id"][i], f["id"], "sensor {i}");
        assert_eq!(fleet["name"][i], p["name"]);
        assert_eq!(
            fleet["kinds"][fleet["kind"][i].as_u64().unwrap() as usize],
            p["kind"]
        );
        assert_eq!(fleet["lon"][i], f["geometry"]["coordinates"][0]);
        assert_eq!(fleet["lat"][i], f["geometry"]["coordinates"][1]);
        let fill = &p["latest"]["fill_level"];
        assert_eq!(fleet["value"][i].as_f64(), fill["value"].as_f64());
        assert_eq!(fleet["at"][i].as_i64().unwrap(), ms(&fill["time"]));
        assert!(fleet["seen"][i].as_i64().unwrap() >= ms(&p["last_seen"]));
    }
    let alarms = (0..2_500)
        .filter(|&i| fleet["value"][i].as_f64() == Some(95.0))
        .count();
    assert_eq!(alarms, 2);

    // A reading moves the bin's value in the arrays; an unchanged fleet revalidates to 304.
    let now = Utc::now();
    let reading = format!(
        r#"{{"ts":"{}","values":{{"fill_level":88}}}}"#,
        now.to_rfc3339()
    );
    publish_raw(
        &broker,
        &[("cityhub/v1/waste_bin/bin-000007", reading.into_bytes())],
    )
    .await;
    let i = features
        .iter()
        .position(|f| f["id"] == "bin-000007")
        .unwrap();
    wait_for(30, "the fleet shows the new reading", || async {
        let fleet = get("/map/fleet.json").await;
        fleet["value"][i] == 88.0 && fleet["at"][i] == now.timestamp_millis()
    })
    .await;
    let first = http.get(hub.url("/map/fleet.json")).send().await.unwrap();
    let etag = first.headers()["etag"].clone();
    let again = http
        .get(hub.url("/map/fleet.json"))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status().as_u16(), 304);
}

/// Reads a live stream's chunks until `needle` shows up (at most `secs`, at most
/// 64 MiB); returns the text from a little before the needle's chunk on.
async fn read_until(r: &mut reqwest::Response, needle: &str, secs: u64) -> String {
    let mut text = String::new();
    let mut read = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !text.contains(needle) && read < 64 << 20 {
        match tokio::time::timeout_at(deadline, r.chunk()).await {
            Ok(Ok(Some(c))) => {
                read += c.len();
                // Keep a tail for a needle split across chunks, not the whole stream.
                let keep = text.len().saturating_sub(needle.len() + 256);
                let cut = (keep..=text.len())
                    .find(|i| text.is_char_boundary(*i))
                    .unwrap_or(0);
                text.drain(..cut);
                text.push_str(&String::from_utf8_lossy(&c));
            }
            _ => break,
        }
    }
    text
}

/// One address that starts four downloads and never reads them holds two of the four
/// download slots; the others are answered 503 at once, and a second address behind
/// the same trusted proxy still gets a download. Before, the four took every slot and
/// everybody else's downloads were refused until they timed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holds_at_most_half_the_download_slots() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let hub = Hub::build(&db, &broker, "dl-cap")
        .set(|s| s.http.rate_limit_per_s = 0)
        .set(|s| s.http.stream_send_timeout_s = 120)
        .set(|s| s.http.trusted_proxies = vec!["127.0.0.0/8".to_owned().try_into().unwrap()])
        .start()
        .await;
    let now = bin_with_a_long_series(&db, &broker, "dl-1").await;
    let from = (now - chrono::Duration::days(10)).format("%Y-%m-%dT%H:%M:%SZ");
    let start = |client: &'static str| {
        let request = format!(
            "GET /api/v1/sensors/dl-1/readings?format=csv&from={from} HTTP/1.1\r\nHost: hub\r\nX-Forwarded-For: {client}\r\n\r\n"
        );
        stalled_download(hub.http_port, request)
    };
    let mut held = Vec::new();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let (status, s) = start("203.0.113.1").await;
        statuses.push(status);
        held.push(s);
    }
    assert_eq!(statuses, ["200", "200", "503", "503"]);
    let (other, s) = start("203.0.113.2").await;
    held.push(s);
    assert_eq!(other, "200", "another address found no download slot");
    drop(held);
}

/// Tests that kill, signal, restart or weigh a hub process: the second tier of
/// `scripts/test` (`cargo test -- process::`).
mod process {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hundred_thousand_sensors_forty_listings_at_once_in_bounded_memory() {
        let db = TestDb::new().await;
        db.migrate().await.unwrap();
        db.register_bins(100_000, i32::MAX).await;
        let broker = Broker::start();
        let hub = Hub::start(
            &db,
            &broker,
            "fleet-100k",
            &[
                ("CITYHUB_HTTP_RATE_LIMIT_PER_S", "0"),
                // As in production: commits reach the listing in the background.
                ("CITYHUB_HTTP_SNAPSHOT_MAX_LAG_MS", "1000"),
            ],
        )
        .await;
        let http = reqwest::Client::new();
        let first = http
            .get(hub.url("/api/v1/sensors"))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let fc: serde_json::Value = serde_json::from_slice(&first).unwrap();
        assert_eq!(fc["features"].as_array().unwrap().len(), 100_000);

        // A reading committed now is in the listing within the lag.
        publish_raw(
            &broker,
            &[(
                "cityhub/v1/waste_bin/bin-000007",
                br#"{"values":{"fill_level":91.5}}"#.to_vec(),
            )],
        )
        .await;
        wait_for(30, "the reading stored", || async {
            db.observations().await == 1
        })
        .await;
        let one = hub.url("/api/v1/sensors?limit=1&cursor=bin-000006");
        wait_for(10, "the reading in the listing", || async {
            let page: serde_json::Value =
                http.get(&one).send().await.unwrap().json().await.unwrap();
            page["features"][0]["properties"]["latest"]["fill_level"]["value"] == 91.5
        })
        .await;
        let gets = (0..40).map(|_| {
            let (http, url) = (http.clone(), hub.url("/api/v1/sensors"));
            tokio::spawn(async move {
                let r = http.get(url).send().await.unwrap();
                let status = r.status().as_u16();
                (status, r.bytes().await.unwrap())
            })
        });
        let mut bodies = Vec::new();
        for g in gets.collect::<Vec<_>>() {
            let (status, body) = g.await.unwrap();
            assert_eq!(status, 200);
            bodies.push(body);
        }
        assert!(bodies.iter().all(|b| *b == bodies[0]), "listings differ");
        let fc: serde_json::Value = serde_json::from_slice(&bodies[0]).unwrap();
        let bin7 = fc["features"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["id"] == "bin-000007")
            .unwrap();
        assert_eq!(bin7["properties"]["latest"]["fill_level"]["value"], 91.5);
        drop((fc, bodies, first));

        let peak = peak_rss_kib(hub.pid());
        assert!(
            peak < 256 * 1024,
            "the hub peaked at {} MiB serving 40 listings of 100,000 sensors",
            peak / 1024
        );
    }

    /// Fifty clients resume the live stream from the oldest held event at once (about
    /// 200,000 readings of the log each) and never read. The replay is built as a client
    /// reads, at most a few at a time, so the hub's memory stays near idle, ingestion
    /// goes on, and the resumes past the limit are told to reload. Before, each resume
    /// built its whole replay (tens of MB) before sending anything: ingestion stopped and
    /// memory rose by gigabytes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fifty_resumes_at_once_neither_stall_ingestion_nor_hold_memory() {
        let db = TestDb::new().await;
        let broker = Broker::start();
        let hub = Hub::start(
            &db,
            &broker,
            "resumes",
            &[("CITYHUB_HTTP_RATE_LIMIT_PER_S", "0")],
        )
        .await;
        let http = reqwest::Client::new();
        // An open stream, so the hub logs what it commits; its first id is the oldest held.
        let mut first = http.get(hub.url("/api/v1/stream")).send().await.unwrap();
        let msgs = sim_stream(81, 250, 60_000, &[Format::Native], FaultRates::default());
        publish_sim(&broker, &msgs).await;
        let text = read_until(&mut first, "\nid: ", 60).await;
        let oldest = text
            .split("\nid: ")
            .nth(1)
            .and_then(|t| t.lines().next())
            .expect("an event id")
            .to_owned();
        wait_for_rows(&db, expected_rows(&msgs), 120, "the first 60,000 messages").await;
        let idle = hub.rss_kib();
        let logged: f64 = hub.metric("cityhub_observations_committed_total").await;
        assert!(logged > 150_000.0, "{logged} readings committed");

        // Fifty resumes that send their request and never read.
        let mut stalled = Vec::new();
        for _ in 0..50 {
            let mut c = tokio::net::TcpStream::connect(("127.0.0.1", hub.http_port))
                .await
                .unwrap();
            let head = format!(
                "GET /api/v1/stream HTTP/1.1\r\nHost: x\r\nLast-Event-ID: {oldest}\r\n\r\n"
            );
            c.write_all(head.as_bytes()).await.unwrap();
            stalled.push(c);
        }
        // Each has its answer's head (its handler ran), and then reads no more.
        for c in &mut stalled {
            let mut head = Vec::new();
            let mut buf = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                let n = tokio::time::timeout(Duration::from_secs(60), c.read(&mut buf))
                    .await
                    .expect("a response head within 60 s")
                    .unwrap();
                assert!(n > 0, "the hub closed a resuming stream");
                head.push(buf[0]);
            }
            assert!(
                head.starts_with(b"HTTP/1.1 200"),
                "{}",
                String::from_utf8_lossy(&head)
            );
        }
        // One more that reads: with every replay place taken it is told to reload.
        let mut late = http
            .get(hub.url("/api/v1/stream"))
            .header("Last-Event-ID", &oldest)
            .send()
            .await
            .unwrap();
        let text = read_until(&mut late, "event: reload", 60).await;
        assert!(text.contains("too many streams are resuming"), "{text}");

        // Ingestion goes on: the next messages are stored while the fifty hang on.
        let more: Vec<(String, Vec<u8>)> = (0..1000)
            .map(|i| {
                (
                    format!("cityhub/v1/waste_bin/more-{i}"),
                    br#"{"values":{"fill_level":33}}"#.to_vec(),
                )
            })
            .collect();
        let before = db.observations().await;
        publish_raw(&broker, &more).await;
        wait_for_rows(&db, before + 1000, 60, "readings while fifty resumes hang").await;
        let held = hub.rss_kib();
        eprintln!(
            "fifty stalled resumes: RSS idle {} MiB, with them {} MiB",
            idle / 1024,
            held / 1024
        );
        assert!(
            held < idle + 256 * 1024,
            "resident memory grew from {idle} to {held} KiB"
        );
        let ready = http.get(hub.url("/readyz")).send().await.unwrap();
        assert_eq!(ready.status(), 200);
        drop(stalled);
    }
}
