//! Test harness: a fresh database per test, a private Mosquitto per test started
//! from the project's config/mosquitto.conf, and the real `cityhub` binary.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tokio_postgres::NoTls;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The server tests create their databases on (trust auth on CI machines).
pub fn admin_url() -> String {
    std::env::var("CITYHUB_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        rand::random::<u32>()
    )
}

pub fn artifacts_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-logs");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A database of its own, dropped when the test ends.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn new() -> Self {
        let name = unique("cityhub_t");
        let (c, conn) = tokio_postgres::connect(&admin_url(), NoTls)
            .await
            .expect("connect to the test PostgreSQL");
        tokio::spawn(conn);
        c.batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let base = url::Url::parse(&admin_url()).unwrap();
        let mut u = base.clone();
        u.set_path(&name);
        u.set_query(Some("sslmode=disable"));
        Self {
            name,
            url: u.to_string(),
        }
    }

    /// A connection to the server's admin database.
    pub async fn admin() -> tokio_postgres::Client {
        let (c, conn) = tokio_postgres::connect(&admin_url(), NoTls).await.unwrap();
        tokio::spawn(conn);
        c
    }

    /// Opens or closes the database to new connections (existing ones stay).
    pub async fn allow_connections(&self, allow: bool) {
        Self::admin()
            .await
            .batch_execute(&format!(
                "ALTER DATABASE {} ALLOW_CONNECTIONS {allow}",
                self.name
            ))
            .await
            .unwrap();
    }

    /// Ends every connection the hub has to this database; returns how many.
    pub async fn terminate_hub_connections(&self) -> i64 {
        Self::admin()
            .await
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                 WHERE datname = $1 AND application_name = 'cityhub'",
                &[&self.name],
            )
            .await
            .unwrap()
            .get(0)
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        let (c, conn) = tokio_postgres::connect(&self.url, NoTls).await.unwrap();
        tokio::spawn(conn);
        c
    }

    pub async fn count(&self, sql: &str) -> i64 {
        self.client()
            .await
            .query_one(sql, &[])
            .await
            .unwrap()
            .get(0)
    }

    pub async fn observations(&self) -> i64 {
        self.count("SELECT count(*) FROM observations").await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok((c, conn)) = tokio_postgres::connect(&admin_url(), NoTls).await {
                    tokio::spawn(conn);
                    let _ = c
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            })
        })
        .join();
    }
}

fn mosquitto_bin() -> String {
    for p in [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    "mosquitto".into()
}

/// A private Mosquitto started from config/mosquitto.conf on a free port.
pub struct Broker {
    pub port: u16,
    dir: PathBuf,
    child: Child,
}

impl Broker {
    pub fn start() -> Self {
        Self::start_with(|port| format!("listener {port} 127.0.0.1"))
    }

    /// Starts from config/mosquitto.conf with its `listener` line replaced by
    /// `listener(port)` (e.g. a TLS listener with authentication).
    pub fn start_with(listener: impl Fn(u16) -> String) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(unique("cityhub_mq"));
        std::fs::create_dir_all(&dir).unwrap();
        // Mosquitto started as root drops to its own user: let it write its persistence file.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let conf = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("config/mosquitto.conf"),
        )
        .unwrap();
        let listener_text = listener(port);
        // A listener that sets its own authentication replaces the project's default.
        let own_auth = listener_text.contains("allow_anonymous");
        let conf: String = conf
            .lines()
            .filter(|l| !(own_auth && l.starts_with("allow_anonymous")))
            .map(|l| {
                if l.starts_with("persistence_location ") {
                    format!("persistence_location {}/", dir.display())
                } else if l.starts_with("listener ") {
                    listener_text.clone()
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let path = dir.join("mosquitto.conf");
        std::fs::write(&path, conf).unwrap();
        let child = Self::spawn(&path, &dir);
        let b = Self { port, dir, child };
        b.wait_listening();
        b
    }

    /// Stops the broker the way a service manager does (SIGTERM: it saves its
    /// persistent sessions) and starts it again on the same port and data.
    pub fn restart(&mut self) {
        unsafe_kill(self.child.id(), "TERM");
        let _ = self.child.wait();
        self.child = Self::spawn(&self.dir.join("mosquitto.conf"), &self.dir);
        self.wait_listening();
    }

    fn spawn(conf: &Path, dir: &Path) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("mosquitto.log"))
            .unwrap();
        Command::new(mosquitto_bin())
            .arg("-c")
            .arg(conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("mosquitto must be installed (apt-get install mosquitto)")
    }

    fn wait_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// A folder the broker may read (it drops root privileges), for its files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `cityhub serve` process.
pub struct Hub {
    pub http_port: u16,
    child: Option<Child>,
    pub log: PathBuf,
    env: Vec<(String, String)>,
}

impl Hub {
    /// Spawns `cityhub serve` for `db` and `broker` with `extra` environment.
    fn launch(db: &TestDb, broker: &Broker, client_id: &str, extra: &[(&str, &str)]) -> Self {
        let mut env: Vec<(String, String)> = vec![
            ("CITYHUB_DATABASE_URL".into(), db.url.clone()),
            ("CITYHUB_MQTT_URL".into(), broker.url()),
            ("CITYHUB_MQTT_CLIENT_ID".into(), client_id.into()),
            (
                "CITYHUB_STORE_TIMESCALEDB".into(),
                std::env::var("CITYHUB_TEST_TIMESCALEDB").unwrap_or_else(|_| "auto".into()),
            ),
        ];
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut hub = Self {
            http_port: 0,
            child: None,
            log: artifacts_dir().join(format!("{}.log", unique(client_id))),
            env,
        };
        hub.spawn();
        hub
    }

    /// A hub that is ready (database and broker connected).
    pub async fn start(
        db: &TestDb,
        broker: &Broker,
        client_id: &str,
        extra: &[(&str, &str)],
    ) -> Self {
        let hub = Self::launch(db, broker, client_id, extra);
        hub.wait_ready().await;
        hub
    }

    /// A hub that is not expected to become ready; waits only for its HTTP server.
    pub async fn start_unready(
        db: &TestDb,
        broker: &Broker,
        client_id: &str,
        extra: &[(&str, &str)],
    ) -> Self {
        let hub = Self::launch(db, broker, client_id, extra);
        let url = hub.url("/healthz");
        wait_for(30, "the hub's HTTP server", || {
            let url = url.clone();
            async move { reqwest::get(url).await.is_ok() }
        })
        .await;
        hub
    }

    fn spawn(&mut self) {
        self.http_port = free_port();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cityhub"));
        if !self.env.iter().any(|(k, _)| k == "CITYHUB_CONFIG") {
            cmd.env_remove("CITYHUB_CONFIG");
        }
        cmd.arg("serve")
            .current_dir(std::env::temp_dir())
            .env("CITYHUB_HTTP_ADDR", format!("127.0.0.1:{}", self.http_port))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().unwrap());
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }

    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = reqwest::get(self.url("/readyz")).await {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "hub not ready; log: {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A counter or gauge from /metrics.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(self.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Resident memory of the hub process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let pid = self.child.as_ref().map(|c| c.id()).unwrap_or(0);
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status success.
    pub fn terminate(&mut self) -> bool {
        if let Some(mut c) = self.child.take() {
            unsafe_kill(c.id(), "TERM");
            return c.wait().map(|s| s.success()).unwrap_or(false);
        }
        false
    }

    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn();
        self.wait_ready().await;
    }
}

fn unsafe_kill(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Waits until `f` returns true, or panics with `what` after `secs`.
pub async fn wait_for<F, Fut>(secs: u64, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Publishes raw payloads at QoS 1 and waits for the broker's PUBACKs.
pub async fn publish_raw(broker: &Broker, items: &[(&str, Vec<u8>)]) {
    let msgs: Vec<cityhub_sim::SimMessage> = items
        .iter()
        .map(|(t, p)| cityhub_sim::SimMessage {
            topic: t.to_string(),
            payload: p.clone(),
            sensor: String::new(),
            kind: String::new(),
            format: cityhub_sim::Format::Native,
            time: chrono::Utc::now(),
            values: vec![],
            fault: None,
        })
        .collect();
    let r = cityhub_sim::publish(
        &broker.url(),
        &unique("pub"),
        &msgs,
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
    )
    .await
    .unwrap();
    assert_eq!(r.acknowledged, items.len() as u64);
}

/// Publishes simulator messages at QoS 1 and waits for the broker's PUBACKs.
pub async fn publish_sim(broker: &Broker, msgs: &[cityhub_sim::SimMessage]) {
    let r = cityhub_sim::publish(
        &broker.url(),
        &unique("pub"),
        msgs,
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
    )
    .await
    .unwrap();
    assert_eq!(r.acknowledged, msgs.len() as u64);
}

/// Rows the simulator's messages should produce (a duplicate adds none).
pub fn expected_rows(msgs: &[cityhub_sim::SimMessage]) -> i64 {
    msgs.iter()
        .filter(|m| m.fault != Some("duplicate"))
        .map(|m| m.values.len() as i64)
        .sum()
}

/// The first `count` messages of a simulated fleet of `per_kind` sensors per kind,
/// starting three days ago (so no timestamp is in the future).
pub fn sim_stream(
    seed: u64,
    per_kind: usize,
    count: usize,
    formats: &[cityhub_sim::Format],
    faults: cityhub_sim::FaultRates,
) -> Vec<cityhub_sim::SimMessage> {
    let catalog = cityhub_config::Settings::builtin()
        .unwrap()
        .catalog()
        .unwrap();
    let now = chrono::Utc::now();
    let opts = cityhub_sim::SimOptions {
        seed,
        start: now - chrono::Duration::days(3),
        fleet: cityhub_sim::FleetSpec::built_in(per_kind, 0.05),
        formats: formats.to_vec(),
        faults,
    };
    let msgs = cityhub_sim::generate(&opts, &catalog, count, now).unwrap();
    assert_eq!(
        msgs.len(),
        count,
        "the fleet could not produce {count} messages in three days"
    );
    msgs
}

/// The admin token of [`fixture`] hubs.
pub const TOKEN: &str = "test-admin-token-0123456789";

pub struct Fixture {
    pub db: TestDb,
    pub broker: Broker,
    pub hub: Hub,
    pub http: reqwest::Client,
}

/// A hub with 5 sensors per kind and 600 simulated messages stored, plus one dead letter.
pub async fn fixture(extra: &[(&str, &str)]) -> Fixture {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let mut env = vec![
        ("CITYHUB_HTTP_ADMIN_TOKEN", TOKEN),
        ("CITYHUB_HTTP_RATE_LIMIT_PER_S", "0"),
    ];
    env.extend_from_slice(extra);
    let hub = Hub::start(&db, &broker, "opendata", &env).await;
    let msgs = sim_stream(
        11,
        5,
        600,
        &[cityhub_sim::Format::Native],
        cityhub_sim::FaultRates::default(),
    );
    publish_sim(&broker, &msgs).await;
    publish_raw(
        &broker,
        &[("cityhub/v1/waste_bin/bin-bad", b"{not json".to_vec())],
    )
    .await;
    let want = expected_rows(&msgs);
    wait_for(60, "the simulated rows", || {
        let db = &db;
        async move {
            db.observations().await >= want
                && db.count("SELECT count(*) FROM dead_letters").await >= 1
        }
    })
    .await;
    Fixture {
        db,
        broker,
        hub,
        http: reqwest::Client::new(),
    }
}

impl Fixture {
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.hub.url(path)).send().await.unwrap()
    }
    pub async fn json(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self.get(path).await;
        let code = r.status().as_u16();
        (code, r.json().await.unwrap_or(serde_json::Value::Null))
    }
}
