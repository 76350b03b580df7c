//! The demo as a new user runs it (`cityhub demo`): private PostgreSQL, embedded
//! broker, simulated fleet; it serves /readyz, stores readings, stops cleanly on
//! Ctrl-C, and a second run reuses its data.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn run_demo(dir: &std::path::Path) -> (String, std::process::Child, std::path::PathBuf) {
    let err = dir.with_extension("stderr.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_cityhub"))
        .args([
            "demo",
            "--data-dir",
            dir.to_str().unwrap(),
            "--fleet",
            "20,20,2,2",
            "--history-hours",
            "2",
            "--speedup",
            "600",
        ])
        .current_dir(std::env::temp_dir())
        .env_remove("CITYHUB_DATABASE_URL")
        .env_remove("CITYHUB_MQTT_URL")
        .env_remove("CITYHUB_CONFIG")
        .env("CITYHUB_HTTP_ADDR", "127.0.0.1:0")
        // Run from elsewhere, so point it at this checkout's built map (scripts/test builds it).
        .env(
            "CITYHUB_HTTP_WEB_DIR",
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("web/dist"),
        )
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(
            Instant::now() < deadline,
            "demo printed no URL; stderr: {}",
            std::fs::read_to_string(&err).unwrap()
        );
        match lines.next() {
            Some(Ok(l)) if l.contains("http://") => {
                let url = l
                    .split_whitespace()
                    .find(|w| w.starts_with("http://"))
                    .unwrap();
                let base = url
                    .trim_end_matches("/readyz")
                    .trim_end_matches('/')
                    .to_owned();
                // Keep reading, as a terminal would.
                std::thread::spawn(move || lines.for_each(drop));
                return (base, child, err);
            }
            Some(_) => {}
            None => panic!(
                "demo exited early; stderr: {}",
                std::fs::read_to_string(&err).unwrap()
            ),
        }
    }
}

fn interrupt_and_wait(mut child: std::process::Child) -> bool {
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.success();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_serves_and_stops_cleanly_then_reuses_its_data() {
    let dir = std::env::temp_dir().join(format!(
        "cityhub_demo_{}_{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let (base, child, err) = run_demo(&dir);
    cityhub_testkit::wait_for(60, "demo /readyz", || async {
        reqwest::get(format!("{base}/readyz"))
            .await
            .map(|r| r.status() == 200)
            .unwrap_or(false)
    })
    .await;
    let committed = || async {
        cityhub_testkit::metric_at(&base, "cityhub_observations_committed_total").await
    };
    cityhub_testkit::wait_for(60, "readings from the simulated fleet", || async {
        committed().await > 100.0
    })
    .await;
    // The URL it prints first is the operator map (built by the demo when missing).
    let page = reqwest::get(format!("{base}/")).await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(
        html.contains("map/main-") && html.contains("map/app-"),
        "{html}"
    );
    assert!(
        interrupt_and_wait(child),
        "demo did not stop cleanly: {}",
        std::fs::read_to_string(&err).unwrap()
    );
    let log = std::fs::read_to_string(&err).unwrap();
    assert!(
        log.contains("creating a private PostgreSQL cluster"),
        "{log}"
    );
    assert!(log.contains("PostgreSQL stopped"), "{log}");

    // Second run: same folder, data kept.
    let (base, child, err) = run_demo(&dir);
    cityhub_testkit::wait_for(60, "second demo /readyz", || async {
        reqwest::get(format!("{base}/readyz"))
            .await
            .map(|r| r.status() == 200)
            .unwrap_or(false)
    })
    .await;
    assert!(
        interrupt_and_wait(child),
        "second demo did not stop cleanly"
    );
    let log = std::fs::read_to_string(&err).unwrap();
    assert!(log.contains("reusing the PostgreSQL cluster"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}
