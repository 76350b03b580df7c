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
        let pki = Self { dir };
        pki.sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj '/CN=cityhub test CA' \
            -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign");
        pki.issue("server", "localhost", "server");
        pki.issue("client", "cityhub-hub", "client");
        pki
    }

    fn sh(&self, cmd: &str) {
        let out = Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .current_dir(&self.dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `name.crt` and `name.key`: a certificate for `cn` with the extensions of `ext.ext`.
    fn issue(&self, name: &str, cn: &str, ext: &str) {
        self.sh(&format!(
            "openssl req -newkey rsa:2048 -nodes -keyout {name}.key -out {name}.csr -subj '/CN={cn}' && \
             openssl x509 -req -in {name}.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out {name}.crt -days 2 -extfile {ext}.ext && \
             chmod 755 . && chmod 644 *"
        ));
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

/// A listener that takes each client certificate's CN as the user name.
const CN_AS_USERNAME: &str = "require_certificate true\nuse_identity_as_username true";

/// How the hub reaches a mutual-TLS broker: its URL, the CA and the hub's certificate
/// (CN cityhub-hub).
struct MutualTls {
    url: String,
    ca: String,
    cert: String,
    key: String,
}

impl MutualTls {
    fn of(pki: &Pki, broker: &Broker) -> Self {
        Self {
            url: format!("mqtts://127.0.0.1:{}", broker.port),
            ca: pki.path("ca.crt"),
            cert: pki.path("client.crt"),
            key: pki.path("client.key"),
        }
    }

    fn apply(&self, s: &mut cityhub_core::Settings) {
        s.mqtt.url = cityhub_core::ConnUrl::new(self.url.clone());
        s.mqtt.ca_file = Some(self.ca.clone().into());
        s.mqtt.client_cert_file = Some(self.cert.clone().into());
        s.mqtt.client_key_file = Some(self.key.clone().into());
    }
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
            &format!("{CN_AS_USERNAME}\nallow_anonymous false"),
        )
    });
    let db = TestDb::new().await;
    let tls = MutualTls::of(&pki, &broker);
    let url = tls.url.clone();
    let _hub = Hub::build(&db, &broker, "tls-cert")
        .set(move |s| tls.apply(s))
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

/// Readings stored for `sensor`.
async fn stored_for(db: &TestDb, sensor: &str) -> usize {
    db.values_of(sensor).await.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_with_a_client_certificate_publishes_only_its_own_topic_until_revoked() {
    let pki = Pki::new();
    pki.issue("bin1", "tls-bin-1", "client");
    pki.issue("bin2", "tls-bin-2", "client");
    // The hub's certificate (CN cityhub-hub) is the plugin's admin.
    let broker = Broker::start_dynsec_with("cityhub-hub", "not-used-by-certificates", |port| {
        tls_listener(&pki, port, CN_AS_USERNAME)
    });
    let db = TestDb::new().await;
    let tls = MutualTls::of(&pki, &broker);
    let (url, ca, cert, key) = (
        tls.url.clone(),
        tls.ca.clone(),
        tls.cert.clone(),
        tls.key.clone(),
    );
    let _hub = Hub::build(&db, &broker, "tls-devices")
        .set(move |s| {
            tls.apply(s);
            s.mqtt.username = Some("cityhub-hub".into());
            s.mqtt.dynamic_security = true;
        })
        .start()
        .await;
    let mode = timescaledb_mode();
    let env = [
        ("CITYHUB_DATABASE_URL", db.url.as_str()),
        ("CITYHUB_STORE_TIMESCALEDB", mode.as_str()),
        ("CITYHUB_MQTT_URL", url.as_str()),
        ("CITYHUB_MQTT_CA_FILE", ca.as_str()),
        ("CITYHUB_MQTT_CLIENT_CERT_FILE", cert.as_str()),
        ("CITYHUB_MQTT_CLIENT_KEY_FILE", key.as_str()),
        ("CITYHUB_MQTT_USERNAME", "cityhub-hub"),
        ("CITYHUB_MQTT_DYNAMIC_SECURITY", "true"),
    ];
    let out = cli_ok(
        &[
            "devices",
            "provision",
            "tls-bin-1",
            "--kind",
            "waste_bin",
            "--certificate",
            "--json",
        ],
        &env,
    );
    let issued: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(issued["certificate_cn"], "tls-bin-1", "{issued}");
    assert!(issued.get("password").is_none(), "{issued}");

    let as_bin = |n: u8| {
        [
            "--cert".to_owned(),
            pki.path(&format!("bin{n}.crt")),
            "--key".to_owned(),
            pki.path(&format!("bin{n}.key")),
        ]
    };
    let (bin1, bin2) = (as_bin(1), as_bin(2));
    let (bin1, bin2): (Vec<&str>, Vec<&str>) = (
        bin1.iter().map(String::as_str).collect(),
        bin2.iter().map(String::as_str).collect(),
    );
    let own = "cityhub/v1/waste_bin/tls-bin-1";
    let other = "cityhub/v1/waste_bin/tls-bin-2";
    mosquitto_pub(&broker, &pki, &bin1, own, &reading(10.0));
    wait_for(30, "the certificate device's reading", || async {
        stored_for(&db, "tls-bin-1").await == 1
    })
    .await;
    // Its certificate does not let it publish another device's topic, nor does a
    // certificate of the same CA whose CN was never provisioned.
    let _ = mosquitto_pub_output(&broker, &pki, &bin1, other, &reading(66.0));
    let _ = mosquitto_pub_output(&broker, &pki, &bin2, other, &reading(67.0));
    mosquitto_pub(&broker, &pki, &bin1, own, &reading(11.0));
    wait_for(30, "the device's second reading", || async {
        stored_for(&db, "tls-bin-1").await == 2
    })
    .await;
    assert_eq!(stored_for(&db, "tls-bin-2").await, 0);

    // Revoked while connected: disconnected, and what it publishes then is refused.
    let mut held = broker
        .client("mosquitto_pub")
        .args(["--cafile", &ca, "-t", own, "-l"])
        .args(&bin1)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = held.stdin.take().unwrap();
    use std::io::Write;
    writeln!(stdin, "{}", reading(12.0)).unwrap();
    wait_for(30, "the held connection's reading", || async {
        stored_for(&db, "tls-bin-1").await == 3
    })
    .await;
    cli_ok(&["devices", "revoke", "tls-bin-1"], &env);
    let log = broker.dir().join("mosquitto.log");
    wait_for(
        30,
        "the broker to disconnect the revoked device",
        || async {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("disconnected by administrative action")
        },
    )
    .await;
    let _ = writeln!(stdin, "{}", reading(13.0));
    let _ = mosquitto_pub_output(&broker, &pki, &bin1, own, &reading(14.0));
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let _ = held.kill();
    let _ = held.wait();
    let list = cli_ok(&["devices", "list", "--json"], &env);
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(list[0]["auth"], "certificate", "{list}");
    assert!(list[0]["revoked_at"].is_string(), "{list}");

    // Let in again (`rotate`): its certificate works again, and nothing it sent while
    // revoked was stored.
    cli_ok(&["devices", "rotate", "tls-bin-1"], &env);
    mosquitto_pub(&broker, &pki, &bin1, own, &reading(15.0));
    wait_for(30, "the reinstated device's reading", || async {
        stored_for(&db, "tls-bin-1").await >= 4
    })
    .await;
    assert_eq!(
        db.values_of("tls-bin-1").await,
        vec![10.0, 11.0, 12.0, 15.0]
    );
}
