//! The hub under test: `cityhub serve` as a process of its own (for SIGKILL,
//! SIGTERM and memory tests), or in-process on a runtime of its own (a library
//! call, faster, one per test side by side). Both answer the same questions.

use crate::{artifacts_dir, free_port, signal, unique, Broker, TestDb};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The `cityhub` binary next to the running executable: `target/<profile>/cityhub`
/// for an integration test (`target/<profile>/deps/<test>`) or the bench.
pub fn hub_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the running executable's path");
    let mut dir = exe.parent().expect("an executable lives in a folder");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("deps lives in the profile folder");
    }
    dir.join("cityhub")
}

/// A log subscriber writing what `cityhub serve` would log at `info` to `path`.
fn log_to(path: &std::path::Path) -> tracing::Dispatch {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("opening the hub's log");
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "info,tokio_postgres::connection=warn,cityhub_api::snapshot=debug",
        ))
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .finish()
        .into()
}

/// How a hub runs.
enum Runner {
    Process {
        child: Option<Child>,
        env: Vec<(String, String)>,
    },
    InProcess {
        cancel: CancellationToken,
        thread: Option<std::thread::JoinHandle<()>>,
    },
}

/// A hub connected to a test database and broker.
pub struct Hub {
    pub http_port: u16,
    /// Where the hub logs.
    pub log: PathBuf,
    runner: Runner,
}

/// The environment every test hub gets: its database, broker, client id and backend,
/// and listings that wait for the last commit (tests read right after they write;
/// `CITYHUB_HTTP_SNAPSHOT_MAX_LAG_MS` in `extra` gives a test the production lag).
fn base_env(db: &TestDb, broker: &Broker, client_id: &str) -> Vec<(String, String)> {
    vec![
        ("CITYHUB_HTTP_SNAPSHOT_MAX_LAG_MS".into(), "0".into()),
        ("CITYHUB_DATABASE_URL".into(), db.url.clone()),
        ("CITYHUB_MQTT_URL".into(), broker.url()),
        ("CITYHUB_MQTT_CLIENT_ID".into(), client_id.into()),
        (
            "CITYHUB_STORE_TIMESCALEDB".into(),
            crate::db::timescaledb_mode(),
        ),
    ]
}

/// Keeps the last value of each variable (a test's `extra` over the defaults).
fn last_wins(vars: &mut Vec<(String, String)>) {
    let mut seen = std::collections::HashSet::new();
    let mut kept: Vec<(String, String)> = vars
        .drain(..)
        .rev()
        .filter(|(k, _)| seen.insert(k.clone()))
        .collect();
    kept.reverse();
    *vars = kept;
}

impl Hub {
    /// Spawns `cityhub serve` for `db` and `broker` with `extra` environment.
    fn launch(db: &TestDb, broker: &Broker, client_id: &str, extra: &[(&str, &str)]) -> Self {
        let mut env = base_env(db, broker, client_id);
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        last_wins(&mut env);
        let mut hub = Self {
            http_port: 0,
            log: artifacts_dir().join(format!("{}.log", unique(client_id))),
            runner: Runner::Process { child: None, env },
        };
        hub.spawn();
        hub
    }

    /// A `cityhub serve` process that is ready (database and broker connected).
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

    /// A process hub that is not expected to become ready; waits only for its HTTP server.
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

    /// A hub in this process, its settings typed: `Hub::build(&db, &broker, "id")
    /// .set(|s| s.ingest.max_sensors = 5).start().await`. Tests use it unless they
    /// kill, signal, restart or weigh the hub (then [`Hub::start`], a process
    /// configured as an operator would, by file and `CITYHUB_*` variables).
    pub fn build<'a>(db: &'a TestDb, broker: &'a Broker, client_id: &str) -> HubBuilder<'a> {
        HubBuilder {
            db,
            broker,
            client_id: client_id.to_owned(),
            file: None,
            vars: Vec::new(),
            edits: Vec::new(),
        }
    }

    /// [`Hub::build`] with `extra` given as `CITYHUB_...` pairs and `CITYHUB_CONFIG` as
    /// the file, for settings shared with a process hub of the same test.
    pub async fn start_in_process(
        db: &TestDb,
        broker: &Broker,
        client_id: &str,
        extra: &[(&str, &str)],
    ) -> Self {
        let file = extra
            .iter()
            .find(|(k, _)| *k == "CITYHUB_CONFIG")
            .map(|(_, v)| PathBuf::from(v));
        let vars: Vec<(String, String)> = extra
            .iter()
            .filter(|(k, _)| *k != "CITYHUB_CONFIG")
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut b = Self::build(db, broker, client_id);
        b.file = file;
        b.vars(vars).start().await
    }

    /// Runs `settings` in-process ([`cityhub_app::start`] on a runtime and thread of
    /// its own, never reading the process environment, which tests share); ready when
    /// this returns.
    async fn run_in_process(settings: cityhub_core::Settings, client_id: &str) -> Self {
        let log = artifacts_dir().join(format!("{}.log", unique(client_id)));
        let dispatch = log_to(&log);
        let cancel = CancellationToken::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let stop = cancel.clone();
        let thread = std::thread::spawn(move || {
            // Every thread of the hub's runtime logs to the hub's own file.
            let _guard = tracing::dispatcher::set_default(&dispatch);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .on_thread_start(move || {
                    std::mem::forget(tracing::dispatcher::set_default(&dispatch));
                })
                .build()
                .expect("a runtime for the hub");
            rt.block_on(async move {
                match cityhub_app::start(settings, stop).await {
                    Ok(hub) => {
                        let _ = tx.send(Ok(hub.addr.port()));
                        if let Err(e) = hub.stopped().await {
                            eprintln!("in-process hub stopped with an error: {e}");
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                    }
                }
            });
        });
        let http_port = rx
            .await
            .expect("the hub thread answers")
            .expect("the in-process hub starts");
        let hub = Self {
            http_port,
            log,
            runner: Runner::InProcess {
                cancel,
                thread: Some(thread),
            },
        };
        hub.wait_ready().await;
        hub
    }

    fn spawn(&mut self) {
        self.http_port = free_port().expect("a free port");
        let Runner::Process { child, env } = &mut self.runner else {
            panic!("only a process hub is spawned");
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(hub_bin());
        if !env.iter().any(|(k, _)| k == "CITYHUB_CONFIG") {
            cmd.env_remove("CITYHUB_CONFIG");
        }
        cmd.arg("serve")
            .current_dir(std::env::temp_dir())
            .env("CITYHUB_HTTP_ADDR", format!("127.0.0.1:{}", self.http_port))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in env.iter() {
            cmd.env(k, v);
        }
        *child = Some(cmd.spawn().expect("spawning cityhub serve"));
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

    /// A counter or gauge from /metrics, summed over its labels.
    pub async fn metric(&self, name: &str) -> f64 {
        metric_at(&self.url(""), name).await
    }

    /// Waits until no message waits for its ack: after a restart, when the counters
    /// start again, the strongest "done" a test can wait on.
    pub async fn acked(&self) {
        wait_for(60, "every message acked", || async {
            self.metric("cityhub_acks_pending").await == 0.0
        })
        .await;
    }

    /// Waits until at least `messages` readings messages are committed, none waits for
    /// its ack, and the alert rules have run on every commit: what the hub will do
    /// with what it was sent is done, so a test can assert that something did not
    /// happen without sleeping on it.
    pub async fn settled(&self, messages: f64) {
        wait_for(
            120,
            "the hub to commit, ack and evaluate what it was sent",
            || async {
                let committed = self.metric("cityhub_messages_committed_total").await;
                let pending = self.metric("cityhub_acks_pending").await;
                let batches = self.metric("cityhub_batch_rows_count").await;
                let evaluated = self.metric("cityhub_alert_commits_evaluated_total").await;
                let rules = self.metric("cityhub_alert_rules").await;
                committed >= messages && pending == 0.0 && (rules == 0.0 || evaluated >= batches)
            },
        )
        .await;
    }

    /// The value of the series `name{labels}` (labels as the hub prints them, in
    /// order, e.g. `job="x",result="ok"`), when the hub has it.
    pub async fn metric_labelled(&self, name: &str, labels: &str) -> Option<f64> {
        let text = reqwest::get(self.url("/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let series = format!("{name}{{{labels}}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
    }

    /// The process id of a process hub (this process for an in-process one).
    pub fn pid(&self) -> u32 {
        match &self.runner {
            Runner::Process { child, .. } => child.as_ref().map(|c| c.id()).unwrap_or(0),
            Runner::InProcess { .. } => std::process::id(),
        }
    }

    /// Resident memory of the hub process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        crate::rss_kib(self.pid())
    }

    /// CPU seconds the hub process used so far.
    pub fn cpu_seconds(&self) -> f64 {
        crate::cpu_seconds(self.pid())
    }

    /// SIGKILL for a process hub. An in-process hub cannot be killed: it is cancelled
    /// and waited for (it drains, as after SIGTERM).
    pub fn kill9(&mut self) {
        match &mut self.runner {
            Runner::Process { child, .. } => {
                if let Some(mut c) = child.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
            Runner::InProcess { cancel, thread } => {
                cancel.cancel();
                if let Some(t) = thread.take() {
                    let _ = t.join();
                }
            }
        }
    }

    /// SIGTERM and wait for the exit; true when it exited cleanly.
    pub fn terminate(&mut self) -> bool {
        match &mut self.runner {
            Runner::Process { child, .. } => match child.take() {
                Some(mut c) => {
                    signal(c.id(), "TERM");
                    c.wait().map(|s| s.success()).unwrap_or(false)
                }
                None => false,
            },
            Runner::InProcess { .. } => {
                self.kill9();
                true
            }
        }
    }

    /// SIGTERM, then waits at most `limit` for the process to exit: its exit status
    /// (true: success), or `None` when it was still running (it is then killed).
    pub fn terminate_within(&mut self, limit: Duration) -> Option<bool> {
        let Runner::Process { child, .. } = &mut self.runner else {
            panic!("only a process hub gets signals");
        };
        let mut c = child.take()?;
        signal(c.id(), "TERM");
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return Some(status.success());
            }
            if Instant::now() >= deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills a process hub and starts it again with the same settings.
    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn();
        self.wait_ready().await;
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A counter or gauge from the /metrics of the hub at `base` (`http://host:port`),
/// summed over its labels.
pub async fn metric_at(base: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("{base}/metrics"))
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

type Edit = Box<dyn FnOnce(&mut cityhub_core::Settings) + Send>;

/// The settings of an in-process test hub ([`Hub::build`]): its database, broker, client
/// id and backend, a file when given, then the test's own changes, checked as the
/// binary checks a configuration.
pub struct HubBuilder<'a> {
    db: &'a TestDb,
    broker: &'a Broker,
    client_id: String,
    file: Option<PathBuf>,
    vars: Vec<(String, String)>,
    edits: Vec<Edit>,
}

impl HubBuilder<'_> {
    /// A configuration file, as `--config` gives one (for what only a file says:
    /// kinds, adapters, alert rules, webhooks).
    pub fn file(mut self, path: impl Into<PathBuf>) -> Self {
        self.file = Some(path.into());
        self
    }

    /// Changes the settings (after the file).
    pub fn set(mut self, f: impl FnOnce(&mut cityhub_core::Settings) + Send + 'static) -> Self {
        self.edits.push(Box::new(f));
        self
    }

    /// The bearer token of the admin API.
    pub fn admin_token(self, token: &str) -> Self {
        let t = cityhub_core::Secret::new(token);
        self.set(move |s| s.http.admin_token = Some(t))
    }

    /// The bearer token of operator calls.
    pub fn operator_token(self, token: &str) -> Self {
        let t = cityhub_core::Secret::new(token);
        self.set(move |s| s.http.operator_token = Some(t))
    }

    /// A built operator map to serve instead of the compiled one.
    pub fn web_dir(self, dir: impl Into<PathBuf>) -> Self {
        let d = dir.into();
        self.set(move |s| s.http.web_dir = Some(d))
    }

    /// `CITYHUB_...` pairs, read as the binary reads its environment (before the
    /// typed changes).
    fn vars(mut self, vars: Vec<(String, String)>) -> Self {
        self.vars.extend(vars);
        self
    }

    /// The hub, started in this process and ready.
    pub async fn start(self) -> Hub {
        let mut vars = base_env(self.db, self.broker, &self.client_id);
        vars.push(("CITYHUB_HTTP_ADDR".into(), "127.0.0.1:0".into()));
        vars.extend(self.vars);
        last_wins(&mut vars);
        let mut settings = cityhub_core::Settings::load_with_vars(
            self.file.as_deref(),
            vars.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        )
        .expect("test hub settings");
        for edit in self.edits {
            edit(&mut settings);
        }
        settings.check().expect("test hub settings");
        Hub::run_in_process(settings, &self.client_id).await
    }
}

/// Runs the `cityhub` CLI in the temp folder with `env` (and no `CITYHUB_CONFIG`
/// unless `env` sets one).
pub fn cli(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(hub_bin());
    cmd.args(args)
        .current_dir(std::env::temp_dir())
        .env_remove("CITYHUB_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("running cityhub")
}

/// [`cli`], which must succeed; its stderr is the failure message otherwise.
pub fn cli_ok(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let out = cli(args, env);
    assert!(
        out.status.success(),
        "cityhub {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
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
