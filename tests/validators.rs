//! Outside validators against a running hub fed by the simulators: the GeoJSON
//! (Python `geojson` + shapely), GDAL's OAPIF driver (ogrinfo, ogr2ogr), the
//! DCAT-AP 3.0.1 SHACL shapes (rdflib + pySHACL), and schemathesis against
//! `/openapi.json`. Their reports go to `target/test-logs/validators.txt`.
//!
//! The Python tools are installed on first use into `target/validators-venv` from
//! `tests/validators/requirements.txt`; GDAL comes from Debian's `gdal-bin`
//! (`scripts/test` installs it).

use cityhub_testkit::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn venv() -> PathBuf {
    cityhub_testkit::python::venv()
}

struct Run {
    code: i32,
    out: String,
}

fn run(log: &mut String, title: &str, cmd: &mut Command) -> Run {
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("{title}: cannot run {cmd:?}: {e}"));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let code = o.status.code().unwrap_or(-1);
    log.push_str(&format!(
        "=== {title} (exit {code})\n$ {cmd:?}\n{out}\n{err}\n"
    ));
    Run { code, out }
}

/// Runs `cmd` off the async runtime (the hub under test keeps answering) and logs it.
async fn run_logged(log: &mut String, title: &str, mut cmd: Command) -> Run {
    let title = title.to_owned();
    let (l, r) = tokio::task::spawn_blocking(move || {
        let mut l = String::new();
        let r = run(&mut l, &title, &mut cmd);
        (l, r)
    })
    .await
    .unwrap();
    log.push_str(&l);
    r
}

fn cmd(program: impl AsRef<std::ffi::OsStr>, args: &[String]) -> Command {
    let mut c = Command::new(program);
    c.args(args);
    c
}

fn save(log: &str) {
    std::fs::write(artifacts_dir().join("validators.txt"), log).unwrap();
    println!("{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_validators() {
    let venv = tokio::task::spawn_blocking(venv).await.unwrap();
    let py = venv.join("bin/python");
    let f = fixture_as_process(&[]).await;
    // A sensor with no position: its null geometry must validate too.
    let r = f
        .http
        .put(f.hub.url("/api/v1/sensors/aq-unplaced"))
        .bearer_auth(TOKEN)
        .json(&json!({"geometry": null, "properties": {"kind": "air_quality", "name": "Mobile station"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let base = f.hub.url("");
    let mut log = String::new();
    let vdir = root().join("tests/validators");

    // 1. GeoJSON: the geojson package and shapely.
    let one =
        f.db.text("SELECT external_id FROM sensors WHERE kind = 'waste_bin' LIMIT 1")
            .await;
    let mut urls: Vec<String> = vec![
        format!("{base}/api/v1/sensors"),
        format!("{base}/api/v1/sensors/{one}"),
        format!("{base}/ogc/collections/waste_bin/items?limit=100"),
        format!("{base}/ogc/collections/air_quality/items/aq-unplaced"),
    ];
    for k in ["waste_bin", "streetlight", "bike_counter", "air_quality"] {
        urls.push(format!("{base}/feeds/{k}.geojson"));
    }
    let g = run_logged(&mut log, "GeoJSON (geojson + shapely)", {
        let mut c = Command::new(&py);
        c.arg(vdir.join("geojson_check.py")).args(&urls);
        c
    })
    .await;
    let report: serde_json::Value =
        serde_json::from_str(g.out.trim()).unwrap_or_else(|_| panic!("{log}"));
    assert_eq!(g.code, 0, "{log}");
    let total: u64 = report
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["features"].as_u64().unwrap())
        .sum();
    assert!(total > 40, "{log}");

    // 2. GDAL's OGC API - Features driver lists the collections and reads every item.
    let oapif = format!("OAPIF:{base}/ogc");
    let layers = run_logged(
        &mut log,
        "GDAL ogrinfo (OAPIF): collections",
        cmd("ogrinfo", &["-ro".into(), "-so".into(), oapif.clone()]),
    )
    .await;
    assert_eq!(layers.code, 0, "{log}");
    for k in ["air_quality", "bike_counter", "streetlight", "waste_bin"] {
        assert!(
            layers.out.contains(&format!(": {k} (")),
            "ogrinfo does not list {k}:\n{log}"
        );
    }
    // The columns' types come from the collection's schema (its describedBy link),
    // not from the first page: no simulated bin has a registered depth or stream,
    // yet Debian's GDAL (3.6) and the GDAL in pyogrio's wheels (3.12) type
    // depth_mm a Real and the times DateTimes.
    let bins = run_logged(
        &mut log,
        "GDAL ogrinfo (OAPIF): the waste_bin layer's fields",
        cmd(
            "ogrinfo",
            &[
                "-ro".into(),
                "-so".into(),
                oapif.clone(),
                "waste_bin".into(),
            ],
        ),
    )
    .await;
    assert_eq!(bins.code, 0, "{log}");
    for field in [
        "depth_mm: Real",
        "distance: Real",
        "stream: String",
        "fill_level_time: DateTime",
        "last_seen: DateTime",
    ] {
        assert!(bins.out.contains(field), "ogrinfo: no {field}:\n{log}");
    }
    let fields = run_logged(
        &mut log,
        "GDAL 3.12 (pyogrio): the waste_bin layer's fields",
        {
            let mut c = Command::new(&py);
            c.arg(vdir.join("oapif_fields.py"))
                .arg(format!("{base}/ogc"))
                .arg("waste_bin");
            c
        },
    )
    .await;
    assert_eq!(fields.code, 0, "{log}");
    let fields: serde_json::Value =
        serde_json::from_str(fields.out.trim()).unwrap_or_else(|_| panic!("{log}"));
    for (field, dtype) in [
        ("depth_mm", "float64"),
        ("distance", "float64"),
        ("stream", "object"),
        ("fill_level", "float64"),
        ("sensor_id", "object"),
    ] {
        assert_eq!(fields["fields"][field], dtype, "{field}: {fields}\n{log}");
    }
    for field in ["fill_level_time", "last_seen"] {
        assert!(
            fields["fields"][field]
                .as_str()
                .is_some_and(|t| t.starts_with("datetime64")),
            "{field}: {fields}\n{log}"
        );
    }
    for k in ["streetlight", "air_quality"] {
        let want =
            f.db.count(&format!("SELECT count(*) FROM sensors WHERE kind = '{k}'"))
                .await;
        let read = run_logged(
            &mut log,
            &format!("GDAL ogr2ogr (OAPIF): all items of {k}"),
            // Small pages, so the driver must follow next links.
            cmd(
                "ogr2ogr",
                &[
                    "-f",
                    "CSV",
                    "/vsistdout/",
                    &oapif,
                    k,
                    "-oo",
                    "PAGE_SIZE=3",
                    "-lco",
                    "GEOMETRY=AS_XY",
                ]
                .map(String::from),
            ),
        )
        .await;
        assert_eq!(read.code, 0, "{log}");
        let rows = read.out.lines().count() as i64 - 1;
        assert_eq!(
            rows, want,
            "ogr2ogr read {rows} {k} items, the database has {want}:\n{log}"
        );
    }

    // 3. DCAT-AP 3.0.1 SHACL: mandatory shapes conform, recommended ones reported.
    // The official shapes (CC-BY 4.0, European Union), copied with their SOURCE.md.
    let shapes = root().join("tests/fixtures/dcat-ap-3.0.1");
    let d = run_logged(&mut log, "DCAT-AP 3.0.1 SHACL (rdflib + pySHACL)", {
        let mut c = Command::new(&py);
        c.arg(vdir.join("dcat_shacl.py")).arg(&shapes).args([
            format!("{base}/catalog.ttl"),
            format!("{base}/catalog.jsonld"),
            format!("{base}/catalog.rdf"),
        ]);
        c
    })
    .await;
    let summary: serde_json::Value =
        serde_json::from_str(d.out.trim()).unwrap_or_else(|_| panic!("{log}"));
    assert_eq!(summary["mandatory_conforms"], true, "{log}");
    assert_eq!(summary["syntaxes_agree"], true, "{log}");
    // A dataset per kind, one per indicator of the mandate, and the sensor register.
    assert_eq!(
        summary["datasets"],
        4 + cityhub_core::indicators::INDICATORS.len() + 1,
        "{log}"
    );
    assert_eq!(d.code, 0, "{log}");

    // 4. schemathesis: generated requests against every operation in /openapi.json
    // (admin ones with the token), with its full check set: no server error, every
    // status, content type, header and body as documented, schema-valid requests
    // accepted and schema-invalid ones refused. The few inputs JSON Schema cannot
    // judge are in tests/validators/schemathesis.toml, each with its reason. The
    // live stream never ends, so it is left out.
    let s = run_logged(&mut log, "schemathesis", {
        let mut c = Command::new(venv.join("bin/schemathesis"));
        // Its cache goes where it is run: keep it under target/, out of the tree.
        c.current_dir(artifacts_dir())
            .env("NO_COLOR", "1")
            .arg("--config-file")
            .arg(vdir.join("schemathesis.toml"))
            .args([
                "run",
                &format!("{base}/openapi.json"),
                "--max-examples",
                "15",
                // A fixed seed and no stored examples: the same requests on every
                // run, on a fresh clone as on a developer's (a kept example database
                // replays old finds), so a failure is reproduced by running the test
                // again, and CI never fails by draw.
                "--seed",
                "20261204",
                "--generation-database",
                "none",
                "--request-timeout",
                "30",
                "--exclude-path",
                "/api/v1/stream",
                "--no-color",
            ])
            .args(["-H", &format!("Authorization: Bearer {TOKEN}")]);
        c
    })
    .await;
    save(&log);
    assert_eq!(
        s.code, 0,
        "schemathesis reported failures (see target/test-logs/validators.txt)"
    );
    assert!(s.out.contains("passed"), "{}", s.out);
    let hub_log = std::fs::read_to_string(&f.hub.log).unwrap();
    assert!(
        !hub_log.contains("panicked"),
        "the hub panicked under schemathesis"
    );
}
