//! The CLI as an operator uses it: config print, migrate, sensors import, and a
//! kind added by configuration only.

use cityhub_testkit::*;
use serde_json::json;

#[test]
fn config_print_shows_layers_and_hides_secrets() {
    let dir = std::env::temp_dir().join(format!("cityhub_cfg_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("c.toml");
    std::fs::write(
        &file,
        "[ingest]\nbatch_max_rows = 123\n[mqtt]\npassword = \"file-secret\"\n",
    )
    .unwrap();
    let out = cli(
        &["--config", file.to_str().unwrap(), "config", "print"],
        &[
            ("CITYHUB_DATABASE_URL", "postgres://u:env-secret@db/x"),
            ("CITYHUB_MQTT_SHARE_GROUP", "g"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("batch_max_rows = 123"), "{text}");
    assert!(text.contains("share_group = \"g\""));
    assert!(text.contains("[kinds.waste_bin.metrics.fill_level]") || text.contains("fill_level"));
    assert!(
        !text.contains("env-secret") && !text.contains("file-secret"),
        "{text}"
    );
    let bad = cli(&["--config", "/nonexistent.toml", "config", "print"], &[]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("does not exist"));
}

/// The binary prints the committed reference files (the config crate's test checks
/// that they are current), and ignores a broken configuration while it does.
#[test]
fn config_reference_prints_the_committed_files() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for (format, path) in [
        ("toml", "config/cityhub.toml"),
        ("markdown", "docs/configuration.md"),
    ] {
        let out = cli(
            &["config", "reference", "--format", format],
            &[("CITYHUB_INGEST_BATCH_MAX_ROWS", "0")],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let committed = std::fs::read_to_string(root.join(path)).unwrap();
        assert!(
            String::from_utf8(out.stdout).unwrap() == committed,
            "{path} differs"
        );
    }
}

/// The shipped systemd unit and production configuration work with this binary: the
/// unit's command line and environment, with its credentials in a folder as systemd
/// would pass them, load the example configuration (`config print` in place of `serve`).
#[test]
fn the_systemd_unit_and_the_production_configuration_load() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let unit = std::fs::read_to_string(root.join("deploy/cityhub.service")).unwrap();
    let values = |key: &str| -> Vec<String> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_owned)
            .collect()
    };
    let exec = values("ExecStart");
    let mut args: Vec<String> = exec[0]
        .split_whitespace()
        .skip(1)
        .map(str::to_owned)
        .collect();
    assert_eq!(args.last().map(String::as_str), Some("serve"), "{exec:?}");
    args.pop();
    args.extend(["config".into(), "print".into()]);
    let at = args
        .iter()
        .position(|a| a == "--config")
        .expect("the unit names its configuration");
    args[at + 1] = root
        .join("deploy/cityhub.toml")
        .to_string_lossy()
        .into_owned();
    // Every file the environment names is a credential the unit loads.
    let creds = std::env::temp_dir().join(format!("cityhub_creds_{}", std::process::id()));
    std::fs::create_dir_all(&creds).unwrap();
    let loaded: Vec<String> = values("LoadCredential")
        .iter()
        .map(|c| c.split(':').next().unwrap().to_owned())
        .collect();
    let mut env = Vec::new();
    for e in values("Environment") {
        let (k, v) = e.split_once('=').unwrap();
        let name = v
            .strip_prefix("%d/")
            .expect("secrets come from the credentials folder");
        assert!(
            loaded.iter().any(|l| l == name),
            "{name} is not a LoadCredential"
        );
        std::fs::write(creds.join(name), format!("secret-{name}-0123456789\n")).unwrap();
        env.push((
            k.to_owned(),
            creds.join(name).to_string_lossy().into_owned(),
        ));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = cli_ok(&args, &env);
    let text = String::from_utf8(out.stdout).unwrap();
    let effective: toml::Table = toml::from_str(&text).unwrap();
    assert_eq!(effective["ingest"]["registration"].as_str(), Some("known"));
    assert_eq!(effective["mqtt"]["share_group"].as_str(), Some("cityhub"));
    for (section, key) in [
        ("http", "admin_token"),
        ("http", "operator_token"),
        ("mqtt", "password"),
    ] {
        assert_eq!(
            effective[section][key].as_str(),
            Some("***"),
            "{section}.{key}"
        );
    }
    assert!(!text.contains("secret-"), "a secret was printed");
    // systemd waits for the drain before it kills.
    let stop: i64 = values("TimeoutStopSec")[0].parse().unwrap();
    assert!(
        stop > effective["ingest"]["shutdown_timeout_s"]
            .as_integer()
            .unwrap()
    );
    std::fs::remove_dir_all(&creds).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_import_and_a_kind_added_by_configuration() {
    let db = TestDb::new().await;
    let dir = std::env::temp_dir().join(format!("cityhub_cli_{}_{}", std::process::id(), db.name));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("cityhub.toml");
    std::fs::write(
        &conf,
        r#"
[kinds.river_level]
title = "River level"
title_it = "Livello del Po"
theme = "ENVI"
metrics = { level = { unit = "cm", min = -500, max = 1500 } }
"#,
    )
    .unwrap();
    let env = [
        ("CITYHUB_DATABASE_URL", db.url.as_str()),
        ("CITYHUB_CONFIG", conf.to_str().unwrap()),
    ];
    let out = cli(&["migrate"], &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let latest = cityhub_store::schema::latest_version();
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("schema at version {latest}")));
    assert_eq!(
        db.count("SELECT max(version)::bigint FROM schema_migrations")
            .await,
        i64::from(latest)
    );
    // Idempotent.
    assert!(cli(&["migrate"], &env).status.success());

    let csv = dir.join("sensors.csv");
    std::fs::write(&csv, "id,kind,name,lon,lat,depth_mm\nbin-001,waste_bin,Piazza del Comune,10.0236,45.1333,1200\npo-01,river_level,Po a Cremona,10.0106,45.1262,\n").unwrap();
    let out = cli(&["sensors", "import", csv.to_str().unwrap()], &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 new"));
    let gj = dir.join("sensors.geojson");
    std::fs::write(
        &gj,
        json!({"type": "FeatureCollection", "features": [
            {"type": "Feature", "id": "bin-001", "geometry": {"type": "Point", "coordinates": [10.0240, 45.1335]},
             "properties": {"kind": "waste_bin", "stream": "paper"}}]})
        .to_string(),
    )
    .unwrap();
    let out = cli(&["sensors", "import", gj.to_str().unwrap()], &env);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 updated"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c = db.client().await;
    let r = c
        .query_one(
            "SELECT name, lon, properties FROM sensors WHERE external_id='bin-001'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "Piazza del Comune");
    assert_eq!(r.get::<_, f64>(1), 10.0240);
    assert_eq!(
        r.get::<_, serde_json::Value>(2),
        json!({"depth_mm": 1200.0, "stream": "paper"})
    );
    // A file with an unknown kind is refused whole, with the reason.
    std::fs::write(&csv, "id,kind\nx-1,volcano\n").unwrap();
    let out = cli(&["sensors", "import", csv.to_str().unwrap()], &env);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown kind \"volcano\""));

    // The configured kind ingests end to end with no code change.
    let broker = Broker::start();
    let _hub = Hub::build(&db, &broker, "newkind")
        .file(conf.to_str().unwrap())
        .start()
        .await;
    publish_raw(
        &broker,
        &[
            (
                "cityhub/v1/river_level/po-01",
                json!({"values": {"level": -120.5}})
                    .to_string()
                    .into_bytes(),
            ),
            (
                "cityhub/v1/river_level/po-01",
                json!({"values": {"level": 9000}}).to_string().into_bytes(),
            ),
        ],
    )
    .await;
    wait_for(30, "river level row and dead letter", || async {
        db.count("SELECT count(*) FROM observations").await == 1
            && db.count("SELECT count(*) FROM dead_letters").await == 1
    })
    .await;
    let v: f64 = c
        .query_one("SELECT value FROM observations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, -120.5);
    let reason: String = c
        .query_one("SELECT reason FROM dead_letters", &[])
        .await
        .unwrap()
        .get(0);
    assert!(reason.contains("above the maximum 1500 cm"), "{reason}");
}

/// An installed binary (copied away from the checkout, started elsewhere) serves
/// the operator map compiled into it; `http.web_dir` still overrides it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_installed_binary_serves_the_map_compiled_into_it() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let dir = std::env::temp_dir().join(unique("cityhub_installed"));
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    let bin = dir.join("bin/cityhub");
    std::fs::copy(hub_bin(), &bin).unwrap();
    let other = dir.join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(
        other.join("index.html"),
        "<!doctype html><title>another map</title>",
    )
    .unwrap();
    let http = reqwest::Client::new();
    for web_dir in [None, Some(other.to_str().unwrap())] {
        let port = free_port().unwrap();
        let mut cmd = std::process::Command::new(&bin);
        cmd.arg("serve")
            .current_dir(&dir)
            .env_remove("CITYHUB_CONFIG")
            .env_remove("CITYHUB_HTTP_WEB_DIR")
            .env("CITYHUB_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("CITYHUB_DATABASE_URL", &db.url)
            .env("CITYHUB_MQTT_URL", broker.url())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if let Some(d) = web_dir {
            cmd.env("CITYHUB_HTTP_WEB_DIR", d);
        }
        let mut child = cmd.spawn().unwrap();
        let base = format!("http://127.0.0.1:{port}");
        wait_for(30, "the installed hub's HTTP server", || {
            let u = format!("{base}/healthz");
            async move { reqwest::get(u).await.is_ok() }
        })
        .await;
        let r = http.get(format!("{base}/")).send().await.unwrap();
        let status = r.status();
        let page = r.text().await.unwrap();
        if web_dir.is_some() {
            assert_eq!(status, 200);
            assert!(page.contains("another map"), "{page}");
        } else {
            assert_eq!(status, 200, "{page}");
            // Every script and stylesheet the page names is served, with its type.
            let assets: Vec<&str> = page
                .split(['"', '\''])
                .filter(|s| s.trim_start_matches('/').starts_with("map/"))
                .filter(|s| s.ends_with(".js") || s.ends_with(".css"))
                .collect();
            assert!(
                !assets.is_empty(),
                "the page names no bundled asset: {page}"
            );
            for a in assets {
                let r = http
                    .get(format!("{base}/{}", a.trim_start_matches('/')))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200, "{a}");
                let ct = r.headers()[reqwest::header::CONTENT_TYPE]
                    .to_str()
                    .unwrap()
                    .to_owned();
                assert!(ct.contains("javascript") || ct.contains("css"), "{a}: {ct}");
                assert!(!r.bytes().await.unwrap().is_empty(), "{a}");
            }
        }
        signal(child.id(), "TERM");
        let _ = child.wait();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
