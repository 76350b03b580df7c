//! Production connections: MQTT over TLS with a password or a client
//! certificate, PostgreSQL over TLS; secrets never in logs.

use cityhub_testkit::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A throw-away CA with a server certificate for 127.0.0.1 and a client certificate.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "cityhub_pki_{}_{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
        let sh = |cmd: &str| {
            let out = Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .current_dir(&dir)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{cmd}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj '/CN=cityhub test CA' \
            -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign");
        for (name, cn) in [("server", "localhost"), ("client", "cityhub-hub")] {
            sh(&format!(
                "openssl req -newkey rsa:2048 -nodes -keyout {name}.key -out {name}.csr -subj '/CN={cn}' && \
                 openssl x509 -req -in {name}.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out {name}.crt -days 2 -extfile {name}.ext"
            ));
        }
        sh("chmod 755 . && chmod 644 *");
        Self { dir }
    }
    fn path(&self, f: &str) -> String {
        self.dir.join(f).to_str().unwrap().to_owned()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn tls_listener(pki: &Pki, port: u16, extra: &str) -> String {
    format!(
        "listener {port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n{extra}",
        pki.path("ca.crt"),
        pki.path("server.crt"),
        pki.path("server.key")
    )
}

/// Runs `mosquitto_pub` against the TLS listener with `auth` options.
fn mosquitto_pub_output(
    broker: &Broker,
    pki: &Pki,
    auth: &[&str],
    topic: &str,
    payload: &str,
) -> std::process::Output {
    broker
        .client("mosquitto_pub")
        .args(["--cafile", &pki.path("ca.crt"), "-t", topic, "-m", payload])
        .args(auth)
        .output()
        .unwrap()
}

fn mosquitto_pub(broker: &Broker, pki: &Pki, auth: &[&str], topic: &str, payload: &str) {
    let out = mosquitto_pub_output(broker, pki, auth, topic, payload);
    assert!(
        out.status.success(),
        "mosquitto_pub: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The broker really demands authentication: an anonymous publish is refused.
fn assert_anonymous_refused(broker: &Broker, pki: &Pki) {
    let out = mosquitto_pub_output(broker, pki, &[], "x", "x");
    assert!(
        !out.status.success(),
        "the test broker accepted an anonymous client"
    );
}

fn reading(v: f64) -> String {
    format!(
        r#"{{"ts":"{}","values":{{"fill_level":{v}}}}}"#,
        (chrono::Utc::now() - chrono::Duration::minutes(1)).to_rfc3339()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtts_with_password_from_a_file() {
    let pki = Pki::new();
    let passwd = pki.dir.join("passwd");
    std::fs::write(&passwd, "").unwrap();
    let ok = Command::new("mosquitto_passwd")
        .args(["-b", passwd.to_str().unwrap(), "hub", "s3cret-hub"])
        .status()
        .unwrap();
    assert!(ok.success());
    Command::new("mosquitto_passwd")
        .args(["-b", passwd.to_str().unwrap(), "sensor", "sensor-pw"])
        .status()
        .unwrap();
    Command::new("chmod")
        .args(["644", passwd.to_str().unwrap()])
        .status()
        .unwrap();
    let extra = format!("password_file {}\nallow_anonymous false", passwd.display());
    let broker = Broker::start_with(|port| tls_listener(&pki, port, &extra));
    let pwfile = pki.dir.join("hub.pw");
    std::fs::write(&pwfile, "s3cret-hub\n").unwrap();
    let db = TestDb::new().await;
    let url = format!("mqtts://127.0.0.1:{}", broker.port);
    let ca = pki.path("ca.crt");
    let env = [
        ("CITYHUB_MQTT_URL", url.as_str()),
        ("CITYHUB_MQTT_CA_FILE", ca.as_str()),
        ("CITYHUB_MQTT_USERNAME", "hub"),
        ("CITYHUB_MQTT_PASSWORD_FILE", pwfile.to_str().unwrap()),
    ];
    let hub = Hub::start_in_process(&db, &broker, "tls-pw", &env).await;
    assert_anonymous_refused(&broker, &pki);
    mosquitto_pub(
        &broker,
        &pki,
        &["-u", "sensor", "-P", "sensor-pw"],
        "cityhub/v1/waste_bin/tls-1",
        &reading(33.0),
    );
    wait_for(30, "the reading over TLS", || async {
        db.observations().await == 1
    })
    .await;
    let log = std::fs::read_to_string(&hub.log).unwrap();
    assert!(
        !log.contains("s3cret-hub"),
        "the password appeared in the log"
    );

    // A wrong password: the hub stays up, not ready, and says why.
    std::fs::write(&pwfile, "wrong\n").unwrap();
    let bad = Hub::start_unready(&db, &broker, "tls-badpw", &env).await;
    wait_for(30, "the refusal in the log", || async {
        std::fs::read_to_string(&bad.log)
            .unwrap_or_default()
            .contains("MQTT connection lost")
    })
    .await;
    let r = reqwest::get(bad.url("/readyz")).await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("\"mqtt\":\"disconnected\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtts_with_a_client_certificate() {
    let pki = Pki::new();
    let broker = Broker::start_with(|port| {
        tls_listener(
            &pki,
            port,
            "require_certificate true\nuse_identity_as_username true\nallow_anonymous false",
        )
    });
    let db = TestDb::new().await;
    let url = format!("mqtts://127.0.0.1:{}", broker.port);
    let (ca, cert, key) = (
        pki.path("ca.crt"),
        pki.path("client.crt"),
        pki.path("client.key"),
    );
    let hub_url = url.clone();
    let _hub = Hub::build(&db, &broker, "tls-cert")
        .set(move |s| {
            s.mqtt.url = cityhub_core::ConnUrl::new(hub_url);
            s.mqtt.ca_file = Some(ca.into());
            s.mqtt.client_cert_file = Some(cert.into());
            s.mqtt.client_key_file = Some(key.into());
        })
        .start()
        .await;
    assert_anonymous_refused(&broker, &pki);
    mosquitto_pub(
        &broker,
        &pki,
        &[
            "--cert",
            &pki.path("client.crt"),
            "--key",
            &pki.path("client.key"),
        ],
        "cityhub/v1/waste_bin/tls-2",
        &reading(44.0),
    );
    wait_for(30, "the reading over mutual TLS", || async {
        db.observations().await == 1
    })
    .await;

    // The simulators connect as the hub does: the same mqtts:// URL and certificates.
    let out = cli_ok(
        &[
            "sim",
            "run",
            "--broker",
            &url,
            "--fleet",
            "waste_bin=3",
            "--start",
            "-1h",
            "--speedup",
            "1000000",
            "--count",
            "6",
        ],
        &[
            ("CITYHUB_MQTT_CA_FILE", &pki.path("ca.crt")),
            ("CITYHUB_MQTT_CLIENT_CERT_FILE", &pki.path("client.crt")),
            ("CITYHUB_MQTT_CLIENT_KEY_FILE", &pki.path("client.key")),
        ],
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["acknowledged_by_broker"], 6, "{report}");
    let want = 1 + report["expected_rows"].as_i64().unwrap();
    wait_for(30, "the simulated fleet's rows over mutual TLS", || async {
        db.observations().await == want
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls_and_a_refused_certificate() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let tls_url = db.url.replace("sslmode=disable", "sslmode=require");
    let url = tls_url.clone();
    let _hub = Hub::build(&db, &broker, "pg-tls")
        .set(move |s| s.database.url = cityhub_core::ConnUrl::new(url))
        .start()
        .await;
    let encrypted = db
        .count("SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'cityhub' AND a.datname = current_database() AND s.ssl")
        .await;
    assert!(encrypted >= 1, "the hub's connections are not encrypted");

    // verify-full against a CA that did not sign the server's certificate: refused, and said so.
    let pki = Pki::new();
    let strict = db.url.replace("sslmode=disable", "sslmode=verify-full");
    let bad = Hub::start_unready(
        &db,
        &broker,
        "pg-strict",
        &[
            ("CITYHUB_DATABASE_URL", &strict),
            ("CITYHUB_DATABASE_CA_FILE", &pki.path("ca.crt")),
        ],
    )
    .await;
    wait_for(30, "the TLS refusal in the log", || async {
        let log = std::fs::read_to_string(&bad.log).unwrap_or_default();
        log.contains("Database unavailable")
            && (log.contains("certificate") || log.contains("TLS") || log.contains("tls"))
    })
    .await;
    assert_eq!(
        reqwest::get(bad.url("/readyz")).await.unwrap().status(),
        503
    );
}

#[test]
fn secret_files_are_not_printed() {
    let dir = std::env::temp_dir();
    let f = dir.join(format!("cityhub_secret_{}", std::process::id()));
    std::fs::write(&f, "pg-secret-value\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cityhub"))
        .args(["config", "print"])
        .env_remove("CITYHUB_CONFIG")
        .env("CITYHUB_DATABASE_PASSWORD_FILE", &f)
        .current_dir(Path::new(&dir))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("password = \"***\""), "{text}");
    assert!(!text.contains("pg-secret-value"));
}
