//! The hub through the tools people already use, each a real third-party client
//! pinned in `tests/validators/requirements.txt` (or Debian's GDAL): OWSLib,
//! GDAL's ogr2ogr with default options under the default rate limit, pandas,
//! openapi-spec-validator, an SSE client that resumes (httpx-sse), LwM2M packs
//! from paho-mqtt, rdflib and pySHACL with the DCAT-AP HVD shapes, and a
//! read-only SQL role on the readings views. Their output goes to
//! `target/test-logs/interop-*.txt`.

use cityhub_sim::{FaultRates, Format};
use cityhub_testkit::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn client(name: &str) -> PathBuf {
    root().join("tests/clients").join(name)
}

/// Runs `cmd` off the runtime (the hub under test keeps answering), logs it under
/// `log`, and fails the test with its output when it fails.
async fn run_ok(log: &str, mut cmd: Command) -> String {
    let title = format!("{cmd:?}");
    let o = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("cannot run {title}: {e}"));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let text = format!("$ {title}\nexit {:?}\n{out}\n{err}\n", o.status.code());
    let path = artifacts_dir().join(format!("interop-{log}.txt"));
    let mut all = std::fs::read_to_string(&path).unwrap_or_default();
    all.push_str(&text);
    std::fs::write(&path, all).unwrap();
    println!("{text}");
    assert!(o.status.success(), "{log} failed:\n{text}");
    out
}

fn python(script: &str, args: &[&str]) -> Command {
    let mut c = Command::new(cityhub_testkit::python::python());
    c.arg(client(script)).args(args);
    c
}

const GEO_ID: &str = "https://www.geonames.org/3177838";

/// A hub with the default rate limit, every kind declared high-value, the place's
/// identifier, 5,000 registered bins and a simulated fleet's readings.
async fn city() -> (TestDb, Broker, Hub, PathBuf) {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let dir = std::env::temp_dir().join(unique("interop"));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("cityhub.toml");
    std::fs::write(
        &conf,
        format!(
            r#"
[catalog]
geographical_identifier = "{GEO_ID}"
[kinds.air_quality]
hvd_category = "earth_observation_environment"
[kinds.waste_bin]
hvd_category = "earth_observation_environment"
[kinds.streetlight]
hvd_category = "earth_observation_environment"
[kinds.bike_counter]
hvd_category = "mobility"
"#
        ),
    )
    .unwrap();
    // Migrate first, so the bins can be registered before the hub loads its listing.
    cli_ok(
        &["--config", conf.to_str().unwrap(), "migrate"],
        &[("CITYHUB_DATABASE_URL", &db.url)],
    );
    db.register_bins(5000, 100).await;
    let hub = Hub::build(&db, &broker, "interop")
        .file(conf.to_str().unwrap())
        .admin_token(TOKEN)
        .start()
        .await;
    feed(&db, &broker, 5, 3, 400).await;
    (db, broker, hub, dir)
}

/// `count` messages of a simulated fleet of `per_kind` sensors a kind, stored.
async fn feed(db: &TestDb, broker: &Broker, seed: u64, per_kind: usize, count: usize) {
    let msgs = sim_stream(
        seed,
        per_kind,
        count,
        &[Format::Native],
        FaultRates::default(),
    );
    publish_sim(broker, &msgs).await;
    let want = expected_rows(&msgs);
    wait_for(60, "the simulated rows", || async move {
        db.observations().await >= want
    })
    .await;
}

/// One timestamp format everywhere: RFC 3339, UTC, six decimals.
fn assert_fixed_times(what: &str, text: &str) {
    let mut n = 0;
    for (i, _) in text.match_indices("T") {
        let Some(start) = i.checked_sub(10) else {
            continue;
        };
        let cand = &text[start..];
        let b = cand.as_bytes();
        let looks = b.len() >= 19
            && b[4] == b'-'
            && b[7] == b'-'
            && b[13] == b':'
            && b[16] == b':'
            && b[..4].iter().all(u8::is_ascii_digit);
        if !looks {
            continue;
        }
        n += 1;
        let ok = b.len() >= 27
            && b[19] == b'.'
            && b[20..26].iter().all(u8::is_ascii_digit)
            && b[26] == b'Z';
        assert!(
            ok,
            "{what}: a timestamp not in the one format: {}",
            &cand[..cand.len().min(40)]
        );
    }
    assert!(n > 0, "{what}: no timestamp at all");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owslib_gdal_pandas_and_harvesters_read_the_open_data() {
    let (db, _broker, hub, dir) = city().await;
    let base = hub.url("");
    let http = reqwest::Client::new();
    let bins = db
        .count("SELECT count(*) FROM sensors WHERE kind = 'waste_bin'")
        .await;
    assert!(bins > 5000, "{bins}");

    // OWSLib: landing (its requests end in a slash), API document, conformance,
    // collections, bbox and datetime, every page through `next`.
    let out = run_ok(
        "owslib",
        python(
            "owslib_check.py",
            &[&base, "waste_bin", "9.9,45.1,10.0,45.1006"],
        ),
    )
    .await;
    assert!(out.contains(&format!("paging: {bins} features")), "{out}");

    // GDAL: ogr2ogr of the whole layer with default options, under the default rate
    // limit (it asks for 10 items a page).
    let gpkg = dir.join("bins.gpkg");
    let mut c = Command::new("ogr2ogr");
    c.args(["-f", "GPKG"])
        .arg(&gpkg)
        .arg(format!("OAPIF:{base}/ogc"))
        .arg("waste_bin");
    run_ok("gdal", c).await;
    let mut c = Command::new("ogrinfo");
    c.args(["-so", "-ro"]).arg(&gpkg).arg("waste_bin");
    let info = run_ok("gdal", c).await;
    assert!(info.contains(&format!("Feature Count: {bins}")), "{info}");

    // pandas: every CSV's time columns parse as UTC datetimes; GeoJSON times too.
    let aq: String = db
        .client()
        .await
        .query_one(
            "SELECT s.external_id FROM sensors s JOIN latest l ON l.sensor_id = s.id
             WHERE s.kind = 'air_quality' LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let mut urls: Vec<String> = ["waste_bin", "streetlight", "bike_counter", "air_quality"]
        .iter()
        .map(|k| format!("{base}/feeds/{k}.csv"))
        .collect();
    urls.push(format!(
        "{base}/api/v1/sensors/{aq}/readings?format=csv&from=2000-01-01T00:00:00Z"
    ));
    urls.push(format!(
        "{base}/api/v1/sensors/{aq}/readings?format=csv&bucket=1h&from=2000-01-01T00:00:00Z"
    ));
    urls.push("--".into());
    urls.push(format!("{base}/api/v1/sensors"));
    urls.push(format!("{base}/feeds/streetlight.geojson"));
    urls.push(format!("{base}/ogc/collections/air_quality/items"));
    let args: Vec<&str> = urls.iter().map(String::as_str).collect();
    run_ok("pandas", python("pandas_check.py", &args)).await;

    // The API document is valid OpenAPI 3.0, as the landing page and conformance say.
    let out = run_ok("openapi", python("openapi_check.py", &[&base])).await;
    assert!(out.contains("openapi 3.0"), "{out}");

    // The catalogue as Italian harvesters and the HVD validator read it, and still
    // DCAT-AP 3.0.1.
    let ttl = http
        .get(format!("{base}/catalog.ttl"))
        .send()
        .await
        .unwrap();
    assert_eq!(ttl.status(), 200);
    let cat = dir.join("catalog.ttl");
    std::fs::write(&cat, ttl.bytes().await.unwrap()).unwrap();
    let hvd = root().join("tests/fixtures/dcat-ap-hvd-3.0.0/hvd-SHACL.ttl");
    run_ok(
        "dcatapit",
        python(
            "dcatapit_check.py",
            &[cat.to_str().unwrap(), GEO_ID, hvd.to_str().unwrap()],
        ),
    )
    .await;
    let mut c = Command::new(cityhub_testkit::python::python());
    c.arg(root().join("tests/validators/dcat_shacl.py"))
        .arg(root().join("tests/fixtures/dcat-ap-3.0.1"))
        .arg(format!("{base}/catalog.ttl"))
        .arg(format!("{base}/catalog.jsonld"));
    let out = run_ok("dcatapit", c).await;
    assert!(out.contains("\"mandatory_conforms\": true"), "{out}");

    // One timestamp format in every JSON, GeoJSON and CSV document.
    for path in [
        "/api/v1/sensors".to_owned(),
        format!("/api/v1/sensors/{aq}"),
        format!("/api/v1/sensors/{aq}/readings?from=2000-01-01T00:00:00Z"),
        format!("/api/v1/sensors/{aq}/readings?from=2000-01-01T00:00:00Z&format=csv"),
        "/feeds/air_quality.csv".into(),
        "/feeds/air_quality.geojson".into(),
        "/ogc/collections/air_quality/items".into(),
        "/ogc/collections/air_quality".into(),
        "/readyz".into(),
    ] {
        let text = http
            .get(format!("{base}{path}"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if path == "/readyz" && !text.contains('T') {
            continue; // no maintenance report on plain PostgreSQL
        }
        assert_fixed_times(&path, &text);
    }

    // A trailing slash names the same resource.
    for path in [
        "/ogc",
        "/ogc/collections",
        "/ogc/conformance",
        "/api/v1/sensors",
        "/catalog",
    ] {
        let a = http.get(format!("{base}{path}")).send().await.unwrap();
        let b = http.get(format!("{base}{path}/")).send().await.unwrap();
        assert_eq!(
            (a.status().as_u16(), b.status().as_u16()),
            (200, 200),
            "{path}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_client_resumes_with_last_event_id_and_misses_nothing() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let hub = Hub::build(&db, &broker, "sse").start().await;
    let port = broker.port.to_string();
    let out = run_ok(
        "sse",
        python(
            "sse_resume.py",
            &[&hub.url(""), "127.0.0.1", &port, "aq-sse"],
        ),
    )
    .await;
    assert!(
        out.contains("the same as a client that never left"),
        "{out}"
    );
    assert!(out.contains("told to reload"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lwm2m_senml_packs_from_paho_land_by_ipso_object() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let hub = Hub::build(&db, &broker, "lwm2m").start().await;
    let port = broker.port.to_string();
    run_ok("lwm2m", python("lwm2m_publish.py", &["127.0.0.1", &port])).await;
    let want = [
        ("kpn-1f04", "humidity", 50.0),
        ("kpn-1f04", "temperature", 21.0),
        ("lwm2m-aq", "humidity", 48.5),
        ("lwm2m-aq", "pm10", 31.5),
        ("lwm2m-aq", "pm2_5", 12.25),
        ("lwm2m-aq", "temperature", 22.4),
        ("lwm2m-bin", "distance", 850.0),
        ("lwm2m-bin", "fill_level", 47.0),
        ("lwm2m-bom", "pm10", 20.0),
    ];
    wait_for(30, "the LwM2M readings", || {
        let db = &db;
        async move { db.count("SELECT count(*) FROM readings").await >= want.len() as i64 }
    })
    .await;
    let rows = db
        .client()
        .await
        .query(
            "SELECT sensor, metric, value FROM readings ORDER BY 1, 2",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(String, String, f64)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let want: Vec<(String, String, f64)> = want
        .iter()
        .map(|(s, m, v)| (s.to_string(), m.to_string(), *v))
        .collect();
    assert_eq!(got, want);
    assert_eq!(db.count("SELECT count(*) FROM dead_letters").await, 0);
    // Sensor Units, min/max, application type, a reset flag, NO2 in ppm, the fill
    // level in cm, the container height, the distance's unit.
    assert_eq!(hub.metric("cityhub_records_ignored_total").await, 9.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_role_reads_the_readings_views_as_the_api_answers() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let hub = Hub::build(&db, &broker, "reader").start().await;
    feed(&db, &broker, 9, 2, 300).await;
    let role = unique("grafana").to_lowercase().replace('-', "_");
    let out = cli_ok(
        &["db", "grant-reader", &role],
        &[("CITYHUB_DATABASE_URL", &db.url)],
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("created role"));
    // Twice is fine (after a migration adds views, say).
    cli_ok(
        &["db", "grant-reader", &role],
        &[("CITYHUB_DATABASE_URL", &db.url)],
    );
    let c = db.client().await;
    c.batch_execute(&format!("SET ROLE {role}")).await.unwrap();
    let http = reqwest::Client::new();
    let sensors: Vec<String> = c
        .query(
            "SELECT DISTINCT sensor FROM readings ORDER BY 1 LIMIT 4",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(sensors.len(), 4);
    for s in &sensors {
        for bucket in ["raw", "1h", "1d"] {
            let (view, value) = match bucket {
                "raw" => ("readings", "value"),
                "1h" => ("readings_hourly", "avg"),
                _ => ("readings_daily", "avg"),
            };
            let sql: Vec<(String, String, f64)> = c
                .query(
                    &format!(
                        "SELECT to_char(time AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), metric, {value}
                         FROM {view} WHERE sensor = $1 ORDER BY time, metric"
                    ),
                    &[s],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect();
            let api: serde_json::Value = http
                .get(hub.url(&format!(
                    "/api/v1/sensors/{s}/readings?bucket={bucket}&from=2000-01-01T00:00:00Z&limit=10000"
                )))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let api: Vec<(String, String, f64)> = api["readings"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    (
                        r["time"].as_str().unwrap().to_owned(),
                        r["metric"].as_str().unwrap().to_owned(),
                        r["value"].as_f64().unwrap(),
                    )
                })
                .collect();
            assert!(!sql.is_empty(), "{s} {bucket}");
            assert_eq!(sql.len(), api.len(), "{s} {bucket}");
            for (a, b) in sql.iter().zip(&api) {
                assert_eq!((&a.0, &a.1), (&b.0, &b.1), "{s} {bucket}");
                assert!(
                    (a.2 - b.2).abs() <= 1e-9 * a.2.abs().max(1.0),
                    "{s} {bucket}: {a:?} {b:?}"
                );
            }
        }
    }
    let latest = c
        .query_one(
            "SELECT count(*) FROM readings_latest WHERE lon IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert!(latest > 0);
    // Nothing else: not the tables behind the views, and no writes.
    for sql in [
        "SELECT count(*) FROM observations_data",
        "SELECT count(*) FROM dead_letters",
        "DELETE FROM sensors",
    ] {
        let e = c.batch_execute(sql).await.unwrap_err();
        let code = e.code().map(|c| c.code().to_owned()).unwrap_or_default();
        // 42501 permission denied; 25006 read-only transaction.
        assert!(code == "42501" || code == "25006", "{sql}: {e}");
    }
    drop(c);
    let admin = db.client().await;
    admin
        .batch_execute(&format!("DROP OWNED BY {role}; DROP ROLE {role}"))
        .await
        .unwrap();
}
