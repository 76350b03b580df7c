//! The operator map in a real browser: headless Chromium (Debian's `chromium`),
//! driven by playwright-core from `web/tests/map.e2e.mjs`, against a hub fed a
//! day of a simulated fleet plus sensors whose state is known. Screenshots land in
//! `target/test-logs/map/`. `./scripts/test` installs Chromium and builds `web/`.

use cityhub_testkit::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

fn web_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("web")
}

fn chromium() -> String {
    std::env::var("CITYHUB_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

/// What the browser tests need; `./scripts/test` provides all of it.
fn require_web_tools() {
    let web = web_dir();
    for (what, ok) in [
        (
            "the built map (npm --prefix web ci && npm --prefix web run build)",
            web.join("dist/index.html").is_file(),
        ),
        (
            "playwright-core (npm --prefix web ci)",
            web.join("node_modules/playwright-core").is_dir(),
        ),
        (
            "Chromium (apt-get install chromium)",
            Path::new(&chromium()).is_file(),
        ),
    ] {
        assert!(ok, "the map tests need {what}; ./scripts/test sets it up");
    }
}

/// The map's state rules (`web/src/state.js`), unit-tested with Node's test runner.
#[test]
fn map_state_rules() {
    require_web_tools();
    let out = std::process::Command::new("node")
        .args(["--test", "tests/"])
        .current_dir(web_dir())
        .output()
        .expect("node");
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "node --test failed");
    assert!(
        text.contains("# fail 0") && !text.contains("# pass 0"),
        "{text}"
    );
}

fn native(ts: chrono::DateTime<chrono::Utc>, values: serde_json::Value, at: (f64, f64)) -> Vec<u8> {
    json!({
        "ts": ts.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "values": values,
        "location": { "lat": at.0, "lon": at.1 },
    })
    .to_string()
    .into_bytes()
}

const OPERATOR: &str = "operator-token-for-the-map";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_map_in_a_browser() {
    require_web_tools();
    let db = TestDb::new().await;
    let broker = Broker::start();
    let dist = web_dir().join("dist");
    let hub = Hub::build(&db, &broker, "map")
        .admin_token(TOKEN)
        .operator_token(OPERATOR)
        .set(|s| s.http.rate_limit_per_s = 0)
        .web_dir(&dist)
        .start()
        .await;

    // A day of a small fleet, up to now.
    let catalog = cityhub_core::Settings::builtin()
        .unwrap()
        .catalog()
        .unwrap();
    let now = chrono::Utc::now();
    let opts = cityhub_sim::SimOptions {
        seed: 5,
        start: now - chrono::Duration::hours(24),
        fleet: cityhub_sim::FleetSpec {
            per_kind: vec![
                ("waste_bin".into(), 6),
                ("streetlight".into(), 10),
                ("bike_counter".into(), 3),
                ("air_quality".into(), 3),
            ],
            lamp_fault_share: 0.2,
        },
        formats: vec![cityhub_sim::Format::Native, cityhub_sim::Format::Senml],
        faults: cityhub_sim::FaultRates::default(),
    };
    let msgs = cityhub_sim::generate(&opts, &catalog, 1_000_000, now).unwrap();
    publish_sim(&broker, &msgs).await;

    // Sensors of known state, reported now, around Piazza del Comune.
    let (lat, lon) = (45.1335, 10.0255);
    let at = |i: u32| {
        (
            lat + 0.0012 * f64::from(i % 5),
            lon + 0.0015 * f64::from(i / 5),
        )
    };
    let t = now - chrono::Duration::seconds(30);
    let crafted: Vec<(&str, &str, serde_json::Value, chrono::DateTime<chrono::Utc>)> = vec![
        ("waste_bin", "map-bin-worst", json!({"fill_level": 97}), t),
        ("waste_bin", "map-bin-full", json!({"fill_level": 85}), t),
        ("waste_bin", "map-bin-half", json!({"fill_level": 65}), t),
        ("waste_bin", "map-bin-low", json!({"fill_level": 20}), t),
        (
            "waste_bin",
            "map-bin-silent",
            json!({"fill_level": 40}),
            now - chrono::Duration::hours(3),
        ),
        (
            "air_quality",
            "map-air-high",
            json!({"pm10": 80, "no2": 31}),
            t,
        ),
        ("air_quality", "map-air-clean", json!({"pm10": 12}), t),
        ("streetlight", "map-lamp-lit", json!({"power": 90}), t),
        ("streetlight", "map-lamp-dark", json!({"power": 0}), t),
        ("bike_counter", "map-bike-busy", json!({"count_in": 55}), t),
        ("bike_counter", "map-bike-idle", json!({"count_in": 0}), t),
    ];
    let items: Vec<(String, Vec<u8>)> = crafted
        .iter()
        .enumerate()
        .map(|(i, (kind, id, v, ts))| {
            (
                format!("cityhub/v1/{kind}/{id}"),
                native(*ts, v.clone(), at(i as u32)),
            )
        })
        .collect();
    publish_raw(&broker, &items).await;
    // Registered, placed, never heard from.
    let r = reqwest::Client::new()
        .put(hub.url("/api/v1/sensors/map-bin-never"))
        .bearer_auth(TOKEN)
        .json(&json!({"type": "Feature", "geometry": {"type": "Point", "coordinates": [lon - 0.002, lat]},
                      "properties": {"kind": "waste_bin", "name": "Via Solferino",
                          "purpose": "Livello di riempimento per i giri di raccolta",
                          "purpose_en": "Fill level for collection rounds",
                          "responsible": "Comune di Cremona, Settore Ambiente",
                          "contact": "ambiente@comune.cremona.it", "personal_data": false}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let want = expected_rows(&msgs)
        + crafted
            .iter()
            .map(|c| c.2.as_object().unwrap().len() as i64)
            .sum::<i64>();
    wait_for(120, "the day of readings", || async {
        db.observations().await >= want
    })
    .await;

    let expect = json!({
        "map-bin-worst": "alarm", "map-bin-full": "alarm", "map-bin-half": "warn", "map-bin-low": "ok",
        "map-bin-silent": "stale", "map-bin-never": "stale",
        "map-air-high": "alarm", "map-air-clean": "ok",
        "map-bike-busy": "activity:3", "map-bike-idle": "activity:0",
    });
    let lamp = |i: usize, power: f64| {
        let (la, lo) = at(i as u32);
        json!({"power": power, "lat": la, "lon": lo, "time": t.to_rfc3339()})
    };
    let lamps = json!({ "map-lamp-lit": lamp(7, 90.0), "map-lamp-dark": lamp(8, 0.0) });
    let shots = artifacts_dir().join("map");

    let mut child = tokio::process::Command::new("node")
        .arg("tests/map.e2e.mjs")
        .current_dir(web_dir())
        .env("HUB_URL", hub.url("").trim_end_matches('/'))
        .env("SHOTS", &shots)
        .env("EXPECT", expect.to_string())
        .env("LAMPS", lamps.to_string())
        .env("LIVE_SENSOR", "map-bin-low")
        .env("OPERATOR_TOKEN", OPERATOR)
        .env("CHROMIUM", chromium())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node");
    let mut stdin = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut log = Vec::new();
    let run = async {
        while let Some(line) = out.next_line().await.unwrap() {
            println!("map.e2e: {line}");
            if line == "PUBLISH" {
                // The live step: the low bin fills up.
                publish_raw(
                    &broker,
                    &[(
                        "cityhub/v1/waste_bin/map-bin-low",
                        native(chrono::Utc::now(), json!({"fill_level": 95}), at(3)),
                    )],
                )
                .await;
                stdin.write_all(b"published\n").await.unwrap();
                stdin.flush().await.unwrap();
            }
            log.push(line);
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(240), run)
        .await
        .expect("the browser test took more than 4 minutes");
    let status = child.wait().await.unwrap();
    std::fs::write(shots.join("steps.txt"), log.join("\n")).unwrap();
    assert!(status.success(), "the browser test failed: {status}");
    assert_eq!(log.last().map(String::as_str), Some("OK"));
    for shot in [
        "1-overview.png",
        "2-panel-item-zoomed.png",
        "3-popup-chart.png",
        "4-live-update.png",
        "5-tablet-italian.png",
        "6-tablet-popup.png",
        "7-alerts.png",
        "8-indicators.png",
    ] {
        let meta = std::fs::metadata(shots.join(shot)).unwrap();
        assert!(meta.len() > 10_000, "{shot} is nearly empty");
    }
}

/// `/` and its assets: a content security policy, hashed assets cached for good,
/// the basemap from configuration, and a page that says how to build a missing map.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_page_and_assets() {
    require_web_tools();
    let db = TestDb::new().await;
    let broker = Broker::start();
    let dist = web_dir().join("dist");
    let hub = Hub::build(&db, &broker, "map-assets")
        .web_dir(&dist)
        .set(|s| s.http.tile_url = "https://tiles.example.org/{z}/{x}/{y}.png".into())
        .start()
        .await;
    let page = reqwest::get(hub.url("/")).await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let html = page.text().await.unwrap();
    let script = html
        .split('"')
        .find(|s| s.starts_with("map/main-") && s.ends_with(".js"))
        .expect("the page names its script")
        .to_owned();
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no outside asset: {html}"
    );
    let js = reqwest::get(hub.url(&format!("/{script}"))).await.unwrap();
    assert_eq!(js.status(), 200);
    assert!(js.headers()["cache-control"]
        .to_str()
        .unwrap()
        .contains("immutable"));
    assert!(js.headers()["content-type"]
        .to_str()
        .unwrap()
        .contains("javascript"));
    // The page under its file name is the page: revalidated, with its CSP.
    let named = reqwest::get(hub.url("/map/index.html")).await.unwrap();
    assert_eq!(named.status(), 200);
    assert!(!named.headers()["cache-control"]
        .to_str()
        .unwrap()
        .contains("immutable"));
    assert!(named.headers().contains_key("content-security-policy"));
    let missing = reqwest::get(hub.url("/map/main-NOPE.js")).await.unwrap();
    assert_eq!(missing.status(), 404);
    assert!(missing.headers().get("cache-control").is_none());
    let settings: serde_json::Value = reqwest::get(hub.url("/map/settings.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        settings["tile_url"],
        "https://tiles.example.org/{z}/{x}/{y}.png"
    );
    assert_eq!(settings["stale_after_cadences"], 3);

    // No built map: the page says how to build it, and the API still answers.
    let empty = std::env::temp_dir().join(unique("cityhub_no_map"));
    std::fs::create_dir_all(&empty).unwrap();
    let hub2 = Hub::build(&db, &broker, "map-missing")
        .web_dir(&empty)
        .start()
        .await;
    let r = reqwest::get(hub2.url("/")).await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("npm --prefix web ci"));
    assert_eq!(
        reqwest::get(hub2.url("/api/v1/kinds"))
            .await
            .unwrap()
            .status(),
        200
    );
    let _ = std::fs::remove_dir_all(&empty);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_sensors_on_a_canvas_with_the_list_and_popups_working() {
    require_web_tools();
    let db = TestDb::new().await;
    db.migrate().await.unwrap();
    db.register_bins(100_000, 1_000).await;
    let broker = Broker::start();
    let hub = Hub::build(&db, &broker, "map-100k")
        .set(|s| s.http.rate_limit_per_s = 0)
        .web_dir(web_dir().join("dist"))
        .start()
        .await;
    let out = tokio::process::Command::new("node")
        .arg("tests/fleet.e2e.mjs")
        .current_dir(web_dir())
        .env("HUB_URL", hub.url("").trim_end_matches('/'))
        .env("SENSORS", "100000")
        .env("ALARMS", "100")
        .env("SHOTS", artifacts_dir().join("map"))
        .env("CHROMIUM", chromium())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(300), out)
        .await
        .expect("the browser test took more than 5 minutes")
        .expect("node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the browser test failed");
    assert_eq!(stdout.lines().last(), Some("OK"));
}
