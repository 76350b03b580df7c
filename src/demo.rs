//! `cityhub demo`: everything on one machine with one command. With no database
//! URL a private PostgreSQL cluster runs from the system's binaries in a data
//! folder of its own (kept for the next run); with no broker URL an embedded
//! rumqttd broker listens on a free port; the simulated Cremona fleet publishes
//! to it and the hub serves the API.

use anyhow::{bail, Context, Result};
use chrono::Utc;
use cityhub_core::{ConnUrl, Settings};
use cityhub_local::{free_port, is_root, server_bin, PrivatePostgres};
use cityhub_sim::{FaultRates, FleetSpec, Format, Pace, Progress, SimOptions};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Options of the demo.
#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Folder for the private PostgreSQL cluster (reused by later runs).
    #[arg(long, default_value = "cityhub-demo-data")]
    pub data_dir: PathBuf,
    /// Use this PostgreSQL instead of a private cluster.
    #[arg(long, env = "CITYHUB_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Use this broker instead of the embedded one.
    #[arg(long, env = "CITYHUB_MQTT_URL")]
    pub mqtt_url: Option<String>,
    /// Simulated sensors per kind: waste bins, streetlights, bike counters, air-quality stations.
    #[arg(long, default_value = "120,200,12,8", value_delimiter = ',')]
    pub fleet: Vec<usize>,
    /// History simulated before the present, e.g. `24h` or `7d` (charts and
    /// indicators have more to show with more).
    #[arg(long, default_value = "24h")]
    pub history: String,
    /// Older history loaded in the background once the recent history is in and the
    /// fleet is live, from this long ago up to where `--history` began, e.g. `30d`
    /// (the daily and yearly indicators fill in while it loads); `0` for none.
    #[arg(long, default_value = "30d")]
    pub older: String,
    /// Simulated seconds per second while loading the history; `inf` (the default):
    /// as fast as the broker acknowledges. Then real time.
    #[arg(long, default_value = "inf")]
    pub speedup: f64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Show the hub's own logs (info level) besides the demo's messages.
    #[arg(long)]
    pub verbose: bool,
}

fn ensure_postgres_installed() -> Result<()> {
    if server_bin().is_some() {
        return Ok(());
    }
    if is_root() && Path::new("/usr/bin/apt-get").exists() {
        eprintln!("demo: installing PostgreSQL (apt-get install postgresql)...");
        let ok = Command::new("sh")
            .args(["-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null"])
            .status()?
            .success();
        if ok && server_bin().is_some() {
            return Ok(());
        }
    }
    bail!("PostgreSQL server binaries not found: install them (Debian: `sudo apt-get install postgresql`) or pass --database-url")
}

/// Builds the operator map (`web/` -> `web/dist`) when the binary has none and it is missing, with npm
/// (installed from Debian when we are root and it is absent). Without it the demo
/// still runs; `/` then says how to build the map.
fn ensure_map_built(web_dir: &Path) {
    if web_dir.join("index.html").is_file() {
        return;
    }
    let src = web_dir.parent().unwrap_or(Path::new("web"));
    if !src.join("package.json").is_file() || web_dir.file_name() != Some("dist".as_ref()) {
        eprintln!(
            "demo: no operator map at {} (build it with `npm --prefix web ci && npm --prefix web run build`)",
            web_dir.display()
        );
        return;
    }
    let have_npm = || {
        Command::new("npm")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !have_npm() && is_root() && Path::new("/usr/bin/apt-get").exists() {
        eprintln!("demo: installing Node.js and npm (apt-get install nodejs npm)...");
        let _ = Command::new("sh")
            .args(["-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null"])
            .status();
    }
    if !have_npm() {
        eprintln!(
            "demo: npm not found, so the operator map is not built; the API works without it"
        );
        return;
    }
    eprintln!("demo: building the operator map (npm ci && npm run build in web/)...");
    let built = ["ci --no-audit --no-fund", "run build"].iter().all(|args| {
        Command::new("sh")
            .arg("-c")
            .arg(format!("npm {args}"))
            .current_dir(src)
            // stdout carries the demo's URLs; npm's chatter goes with the other messages.
            .stdout(std::process::Stdio::from(std::io::stderr()))
            .status()
            .is_ok_and(|s| s.success())
    });
    if !built {
        eprintln!("demo: building the operator map failed (see above); the API works without it");
    }
}

/// The demo's cluster: says what it does, and stops with the demo.
struct DemoPostgres(PrivatePostgres);

impl DemoPostgres {
    fn start(dir: &Path) -> Result<Self> {
        ensure_postgres_installed()?;
        let existed = dir.join("pg/PG_VERSION").exists();
        if existed {
            eprintln!(
                "demo: reusing the PostgreSQL cluster in {}",
                dir.join("pg").display()
            );
        } else {
            eprintln!(
                "demo: creating a private PostgreSQL cluster in {}",
                dir.join("pg").display()
            );
        }
        let (pg, _) = PrivatePostgres::start(dir, free_port()?)?;
        Ok(Self(pg))
    }
}

impl Drop for DemoPostgres {
    fn drop(&mut self) {
        match self.0.stop() {
            Ok(()) => eprintln!("demo: PostgreSQL stopped"),
            Err(e) => eprintln!("demo: stopping PostgreSQL: {e}"),
        }
    }
}

async fn create_database(admin_url: &str, name: &str) -> Result<()> {
    let (client, conn) = tokio_postgres::connect(admin_url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await?
        .is_some();
    if !exists {
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
    }
    Ok(())
}

/// An embedded rumqttd broker (MQTT 5) on a free local port.
fn start_embedded_broker() -> Result<String> {
    let port = free_port()?;
    let config = format!(
        r#"
id = 0
[router]
id = 0
max_connections = 1000
max_outgoing_packet_count = 4096
max_segment_size = 104857600
max_segment_count = 10

[v5.1]
name = "v5-1"
listen = "127.0.0.1:{port}"
next_connection_delay_ms = 1
    [v5.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 1048576
    max_inflight_count = 4096
    dynamic_filters = true
"#
    );
    let config: rumqttd::Config =
        toml::from_str(&config).context("embedded broker configuration")?;
    let mut broker = rumqttd::Broker::new(config);
    std::thread::Builder::new()
        .name("rumqttd".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "Embedded MQTT broker stopped.");
            }
        })?;
    // No probe connection here: the hub retries until the broker listens, and the fleet
    // starts only once the hub is connected.
    Ok(format!("mqtt://127.0.0.1:{port}"))
}

/// Runs the demo until Ctrl-C or SIGTERM.
pub async fn run(mut settings: Settings, args: DemoArgs) -> Result<()> {
    let cancel = CancellationToken::new();
    if let cityhub_api::web::MapSource::Dir(dir) =
        cityhub_api::web::map_source(settings.http.web_dir.as_deref())
    {
        ensure_map_built(&dir);
    }
    let _pg = services(&mut settings, &args).await?;
    let catalog = settings.catalog()?;
    let (opts, pace, progress) = fleet_plan(&args, &catalog)?;

    let signal_cancel = cancel.clone();
    tokio::spawn(async move {
        crate::shutdown_signal().await;
        eprintln!("demo: stopping...");
        signal_cancel.cancel();
    });

    // Something else on the usual port (another demo, a dev server): take a free one.
    if let Err(e) = std::net::TcpListener::bind(&settings.http.addr) {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            eprintln!("demo: {} is taken; using a free port", settings.http.addr);
            settings.http.addr = "127.0.0.1:0".into();
        }
    }
    // The fleet connects as the hub does (credentials and TLS of a broker given by URL).
    let fleet_broker = settings.mqtt.clone();
    let registry_settings = settings.clone();
    let hub = cityhub_app::start(settings, cancel.clone())
        .await
        .context("the hub did not start")?;
    let addr = hub.addr;
    // The embedded broker keeps nothing for absent subscribers: start the fleet once the
    // hub is subscribed (the flag is set on the broker's SUBACK).
    while !hub
        .mqtt_connected
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        if hub.is_finished() {
            return hub.stopped().await.context("the hub stopped");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let history_from = opts.start;
    let opts_fleet = opts.fleet.clone();
    let sim_cancel = cancel.clone();
    let catalog2 = catalog.clone();
    let sim = tokio::spawn(async move {
        cityhub_sim::run_live(
            &opts,
            &catalog2,
            &pace,
            &fleet_broker,
            "cityhub-demo-fleet",
            rumqttc_qos(),
            sim_cancel,
        )
        .await
    });
    // Loading from the first page load on: a page opened as soon as the URL is
    // printed must wait for the history and reload after it, not judge a fleet
    // half-loaded as silent.
    *hub.history.write().expect("history lock") = Some(cityhub_app::HistoryLoad {
        from: history_from,
        loaded_until: history_from,
        until: None,
        messages: 0,
        messages_per_s: 0.0,
    });
    print_banner(addr);
    let loading = show_progress(
        progress,
        history_from,
        hub.history.clone(),
        {
            let c = hub.messages_committed.clone();
            move || c.get()
        },
        cancel.clone(),
    );
    let (seed, spec) = (args.seed, opts_fleet.clone());
    let older = older_plan(&args, history_from, opts_fleet)?;
    let older_state = hub.older.clone();
    // Announced from the start, so the map follows it from the first page load on.
    if let Some((o, span)) = &older {
        *older_state.write().expect("history lock") = Some(cityhub_app::HistoryLoad {
            from: o.start,
            loaded_until: o.start,
            until: Some(o.start + *span),
            messages: 0,
            messages_per_s: 0.0,
        });
    }
    let older_broker = registry_settings.mqtt.clone();
    let older_cancel = cancel.clone();
    let committed = {
        let c = hub.messages_committed.clone();
        move || c.get()
    };
    tokio::spawn(async move {
        if loading.await {
            register_fleet(&registry_settings, &catalog, seed, &spec).await;
            match older {
                Some(plan) => {
                    load_older(
                        plan,
                        &catalog,
                        &older_broker,
                        older_state,
                        committed,
                        older_cancel,
                    )
                    .await
                }
                None => *older_state.write().expect("history lock") = None,
            }
        }
    });
    let report = sim.await?;
    match report {
        Ok(r) => eprintln!(
            "demo: the fleet sent {} messages ({} acknowledged by the broker)",
            r.messages, r.acknowledged
        ),
        Err(e) => {
            eprintln!("demo: the simulated fleet stopped: {e}");
            cancel.cancel();
        }
    }
    cancel.cancel();
    hub.stopped().await?;
    Ok(())
}

/// The demo's database and broker: the user's (`--database-url`, `--mqtt-url`) or its
/// own (a private PostgreSQL cluster, the embedded broker), written into `settings`.
async fn services(settings: &mut Settings, args: &DemoArgs) -> Result<Option<DemoPostgres>> {
    let pg = match &args.database_url {
        Some(url) => {
            settings.database.url = ConnUrl::new(url.clone());
            None
        }
        None => {
            let pg = DemoPostgres::start(&args.data_dir)?;
            create_database(&pg.0.url("postgres"), "cityhub").await?;
            settings.database.url = ConnUrl::new(pg.0.url("cityhub"));
            Some(pg)
        }
    };
    let broker = match &args.mqtt_url {
        Some(u) => u.clone(),
        None => start_embedded_broker()?,
    };
    settings.mqtt.url = ConnUrl::new(broker.clone());
    if args.mqtt_url.is_none() {
        // rumqttd sends a subscriber at most 100 unacked messages (a constant in its
        // router), so a batch never fills and closes at its age: the history loaded at
        // 1,650 messages/s with 50 ms, 5,300 with 10 ms, 9,800 with 2 ms (measured).
        settings.ingest.batch_max_age_ms = settings.ingest.batch_max_age_ms.min(2);
    }
    // The older history rewrites finished days for a few minutes: indicator answers
    // are not kept, so the indicators view fills in as it loads.
    settings.indicators.cache_s = 0;
    // The embedded broker keeps no sessions across runs; a fresh client id per run is honest about that.
    settings.mqtt.client_id = format!("cityhub-demo-{}", std::process::id());
    Ok(pg)
}

/// The simulated fleet: which sensors, from when, how fast.
fn fleet_plan(
    args: &DemoArgs,
    catalog: &cityhub_core::Catalog,
) -> Result<(SimOptions, Pace, Arc<Progress>)> {
    let per_kind: Vec<(String, usize)> = cityhub_sim::fleet::BUILT_IN_KINDS
        .iter()
        .zip(args.fleet.iter().chain(std::iter::repeat(&0)))
        .filter(|(k, n)| **n > 0 && catalog.get(k).is_some())
        .map(|(k, n)| (k.to_string(), *n))
        .collect();
    let history = crate::sim_cmd::parse_duration(&args.history)
        .with_context(|| format!("--history {}", args.history))?;
    let progress = Arc::new(Progress::default());
    let opts = SimOptions {
        seed: args.seed,
        start: Utc::now() - history.max(chrono::Duration::zero()),
        fleet: FleetSpec {
            per_kind,
            lamp_fault_share: 0.05,
        },
        formats: vec![Format::Native, Format::Senml],
        faults: FaultRates::default(),
    };
    let pace = Pace {
        backpressure: None,
        speedup: args.speedup.max(1.0),
        rate: None,
        duration: None,
        count: None,
        progress: Some(progress.clone()),
    };
    Ok((opts, pace, progress))
}

/// The older history: the same fleet (same seed, same sensors) from `--older` ago
/// up to where the recent history began; `None` when it is not longer.
fn older_plan(
    args: &DemoArgs,
    recent_from: chrono::DateTime<Utc>,
    fleet: FleetSpec,
) -> Result<Option<(SimOptions, chrono::Duration)>> {
    let older = crate::sim_cmd::parse_duration(&args.older)
        .with_context(|| format!("--older {}", args.older))?;
    let start = Utc::now() - older;
    Ok((start < recent_from).then(|| {
        let opts = SimOptions {
            seed: args.seed,
            start,
            fleet,
            formats: vec![Format::Native, Format::Senml],
            faults: FaultRates::default(),
        };
        (opts, recent_from - start)
    }))
}

/// Loads the older history as fast as the broker and the hub take it, while the
/// fleet is live; its progress goes to stderr and to the map (`/map/status.json`
/// `older`). Every guarantee holds for old readings: each is stored once, `latest`
/// only moves forward, alerts judge only what is newer than what they saw, and the
/// rollups take late hours exactly.
async fn load_older(
    (opts, span): (SimOptions, chrono::Duration),
    catalog: &cityhub_core::Catalog,
    broker: &cityhub_core::settings::MqttSettings,
    state: Arc<std::sync::RwLock<Option<cityhub_app::HistoryLoad>>>,
    committed: impl Fn() -> u64 + Send + Sync + 'static,
    cancel: CancellationToken,
) {
    let (from, until) = (opts.start, opts.start + span);
    let progress = Arc::new(Progress::default());
    // What the hub stored since now (the live fleet's few messages count too).
    let base = committed();
    let stored: Arc<dyn Fn() -> u64 + Send + Sync> =
        Arc::new(move || committed().saturating_sub(base));
    let pace = Pace {
        speedup: f64::INFINITY,
        rate: None,
        duration: Some(span),
        count: None,
        progress: Some(progress.clone()),
        // A few seconds of the hub's work ahead at most: the broker queues the rest
        // for the hub, and a queue that long is a queue a broker may cut.
        backpressure: Some(cityhub_sim::Backpressure {
            stored: stored.clone(),
            max_ahead: 20_000,
        }),
    };
    eprintln!(
        "demo: loading older history in the background, {} to {} (the indicators fill in as it loads)",
        from.format("%Y-%m-%d %H:%M"),
        until.format("%Y-%m-%d %H:%M")
    );
    let started = std::time::Instant::now();
    let run = cityhub_sim::run_live(
        &opts,
        catalog,
        &pace,
        broker,
        "cityhub-demo-older",
        rumqttc_qos(),
        cancel.clone(),
    );
    tokio::pin!(run);
    let mut last_line = started;
    let mut report = None;
    loop {
        let sent = progress.produced.load(Ordering::Relaxed);
        let done = stored();
        let at =
            chrono::DateTime::from_timestamp_micros(progress.sim_time_us.load(Ordering::Relaxed))
                .unwrap_or(from)
                .clamp(from, until);
        let rate = done as f64 / started.elapsed().as_secs_f64().max(0.001);
        // Loaded: the fleet's run ended and the hub stored all it sent.
        if report.is_some() && done >= sent {
            break;
        }
        *state.write().expect("history lock") = Some(cityhub_app::HistoryLoad {
            from,
            loaded_until: at,
            until: Some(until),
            messages: done,
            messages_per_s: rate,
        });
        if last_line.elapsed() >= Duration::from_secs(10) {
            let pct = (at - from).num_seconds() as f64 / span.num_seconds().max(1) as f64 * 100.0;
            eprintln!(
                "demo: older history {pct:3.0} % (up to {}), {sent} messages, {rate:.0}/s",
                at.format("%Y-%m-%d")
            );
            last_line = std::time::Instant::now();
        }
        tokio::select! {
            r = &mut run, if report.is_none() => {
                if let Err(e) = &r {
                    eprintln!("demo: loading the older history stopped: {e}");
                    break;
                }
                report = Some(r);
            }
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = cancel.cancelled() => break,
        }
    }
    *state.write().expect("history lock") = None;
    match report {
        Some(Ok(r)) if !cancel.is_cancelled() => eprintln!(
            "demo: older history loaded in {:.0} s ({} messages stored); the indicators cover it",
            started.elapsed().as_secs_f64(),
            r.messages
        ),
        _ => {}
    }
}

/// Written, not println!-ed: a reader that stops listening (`| head -1`) must not stop the demo.
fn print_banner(addr: std::net::SocketAddr) {
    let banner = format!(
        "cityhub demo is running: http://{addr}/  (the operator map; Ctrl-C stops it)\n\
         \x20 health:             http://{addr}/readyz\n\
         \x20 API and its docs:   http://{addr}/api   (OpenAPI: http://{addr}/openapi.json)\n\
         \x20 sensors (GeoJSON):  http://{addr}/api/v1/sensors   feeds: http://{addr}/feeds/waste_bin.csv\n\
         \x20 OGC API - Features: http://{addr}/ogc   catalogue: http://{addr}/catalog.ttl\n\
         \x20 live readings:      http://{addr}/api/v1/stream   metrics: http://{addr}/metrics\n"
    );
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(banner.as_bytes()).and_then(|()| out.flush());
}

/// While the history loads: a progress line on stderr (redrawn in place on a
/// terminal, a line every few seconds otherwise) and the same in the map's header
/// (`/map/status.json`). Loaded means the fleet reached the present and the hub
/// committed every message it sent.
async fn show_progress(
    progress: Arc<Progress>,
    from: chrono::DateTime<Utc>,
    history: Arc<std::sync::RwLock<Option<cityhub_app::HistoryLoad>>>,
    committed: impl Fn() -> u64,
    cancel: CancellationToken,
) -> bool {
    use std::io::{IsTerminal, Write};
    let tty = std::io::stderr().is_terminal();
    let started = std::time::Instant::now();
    let mut last_line = started;
    let total_s = (Utc::now() - from).num_seconds().max(1) as f64;
    loop {
        let produced = progress.produced.load(Ordering::Relaxed);
        let stored = committed();
        let secs = started.elapsed().as_secs_f64();
        let rate = stored as f64 / secs.max(0.001);
        if progress.caught_up.load(Ordering::Relaxed) && stored >= produced {
            *history.write().expect("history lock") = None;
            let clear = if tty { "\r\x1b[2K" } else { "" };
            eprintln!("{clear}demo: history loaded in {secs:.1} s ({stored} messages stored, {rate:.0}/s); the fleet is live");
            return true;
        }
        let until =
            chrono::DateTime::from_timestamp_micros(progress.sim_time_us.load(Ordering::Relaxed))
                .unwrap_or(from)
                .max(from);
        // Simulated time published, scaled by the share of it the hub has stored.
        let share = if produced == 0 {
            0.0
        } else {
            stored as f64 / produced as f64
        };
        let pct = ((until - from).num_seconds() as f64 / total_s * share * 100.0).clamp(0.0, 100.0);
        *history.write().expect("history lock") = Some(cityhub_app::HistoryLoad {
            from,
            loaded_until: from + chrono::Duration::seconds((total_s * pct / 100.0) as i64),
            until: None,
            messages: stored,
            messages_per_s: rate,
        });
        let width = 30;
        let filled = (pct / 100.0 * width as f64) as usize;
        let line = format!(
            "demo: loading history [{}{}] {pct:3.0} %  {stored} messages stored, {rate:.0}/s",
            "#".repeat(filled),
            "-".repeat(width - filled)
        );
        if tty {
            eprint!("\r\x1b[2K{line}");
            let _ = std::io::stderr().flush();
        } else if last_line.elapsed() >= Duration::from_secs(2) {
            eprintln!("{line}");
            last_line = std::time::Instant::now();
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = cancel.cancelled() => return false,
        }
    }
}

/// Registers the simulated fleet as a city would its sensor list: names, and each
/// The demo fleet's entry in the public register: what each kind is for and who
/// answers for it, as a city would fill it in (the offices are the demo's own).
fn demo_register(kind: &str) -> cityhub_core::register::Register {
    let (purpose, purpose_en, office) = match kind {
        "waste_bin" => (
            "Livello di riempimento dei cassonetti, per programmare i giri di raccolta",
            "Fill level of waste bins, to plan collection rounds",
            "Settore Ambiente (demo)",
        ),
        "streetlight" => (
            "Consumo e stato dei lampioni, per la manutenzione e il risparmio energetico",
            "Energy use and state of street lamps, for maintenance and energy saving",
            "Settore Lavori Pubblici (demo)",
        ),
        "bike_counter" => (
            "Conteggio dei passaggi in bicicletta, per la pianificazione della mobilità",
            "Bicycle counts, for mobility planning",
            "Settore Mobilità (demo)",
        ),
        "air_quality" => (
            "Qualità dell'aria (PM10, PM2.5, NO2), per il piano ambientale",
            "Air quality (PM10, PM2.5, NO2), for the environment plan",
            "Settore Ambiente (demo)",
        ),
        _ => (
            "Sensore della rete cittadina (demo)",
            "City network sensor (demo)",
            "Servizi informativi (demo)",
        ),
    };
    cityhub_core::register::Register {
        purpose: Some(purpose.into()),
        purpose_en: Some(purpose_en.into()),
        responsible: Some(office.into()),
        contact: Some("opendata@example.org".into()),
        personal_data: Some(false),
        legal_basis: None,
        public_space: Some(true),
    }
}

/// bin's waste stream and depth (indicators by stream, fill from distance). Done
/// once the history is in, so no sensor is registered before it first reports
/// (the map would call it silent meanwhile).
async fn register_fleet(
    settings: &Settings,
    catalog: &cityhub_core::Catalog,
    seed: u64,
    spec: &FleetSpec,
) {
    let result = async {
        let fleet = cityhub_sim::fleet::build(seed, spec, catalog).map_err(anyhow::Error::msg)?;
        let records = fleet
            .iter()
            .map(|s| {
                let mut properties = serde_json::Map::new();
                if let Some(stream) = s.stream() {
                    properties.insert("stream".into(), stream.into());
                }
                if let Some(depth) = s.depth_mm() {
                    properties.insert("depth_mm".into(), depth.into());
                }
                Ok(cityhub_store::sensors::SensorRecord {
                    id: cityhub_core::SensorId::parse(&s.id)?,
                    kind: s.kind.clone(),
                    name: Some(s.name.clone()),
                    location: None,
                    properties,
                    register: demo_register(&s.kind),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let store = cityhub_store::Store::open(settings, catalog).await?;
        Ok::<_, anyhow::Error>(cityhub_store::sensors::import(&store, &records, "demo").await?)
    }
    .await;
    match result {
        Ok(r) => eprintln!(
            "demo: registered the fleet's names and bins' waste streams ({} sensors)",
            r.updated + r.inserted
        ),
        Err(e) => eprintln!("demo: could not register the fleet's names: {e:#}"),
    }
}

fn rumqttc_qos() -> cityhub_sim::QoS {
    cityhub_sim::QoS::AtLeastOnce
}
