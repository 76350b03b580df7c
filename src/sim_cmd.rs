//! `cityhub sim ...`: the simulators from the command line.

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use cityhub_core::Settings;
use cityhub_sim::{FaultRates, FleetSpec, Format, Pace, SimOptions};
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

#[derive(clap::Subcommand, Debug)]
pub enum SimCommand {
    /// Run a simulated Cremona fleet against a broker.
    Run(RunArgs),
    /// Publish a recorded CSV series as one sensor's stream.
    Replay(ReplayArgs),
    /// Publish small QoS 1 messages as fast as the broker takes them.
    Load(LoadArgs),
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Broker URL (default: mqtt.url of the configuration).
    #[arg(long)]
    broker: Option<String>,
    /// Sensors per kind, e.g. `waste_bin=200,streetlight=300` (any configured kind).
    #[arg(
        long,
        default_value = "waste_bin=50,streetlight=80,bike_counter=6,air_quality=4"
    )]
    fleet: String,
    /// Payload formats, taken by sensors in turn: native, senml, chirpstack, ttn, sensor-community.
    #[arg(long, default_value = "native", value_delimiter = ',')]
    format: Vec<String>,
    /// Fault rates, e.g. `malformed=0.01,out_of_range=0.01,unknown_kind=0.01,duplicate=0.02,out_of_order=0.02,burst=0.01`.
    #[arg(long, default_value = "")]
    faults: String,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Simulated start: RFC 3339, `now`, or an offset like `-24h`.
    #[arg(long, default_value = "now", allow_hyphen_values = true)]
    start: String,
    /// Simulated seconds per second (simulated time never passes the present); `inf`:
    /// the past as fast as the broker acknowledges, then real time.
    #[arg(long, default_value_t = 1.0)]
    speedup: f64,
    /// Fixed rate in messages per second instead of the fleet's cadence.
    #[arg(long)]
    rate: Option<f64>,
    /// Stop after this much simulated time (e.g. `2h`, `3d`).
    #[arg(long)]
    duration: Option<String>,
    /// Stop after this many messages.
    #[arg(long)]
    count: Option<u64>,
    /// MQTT QoS (0 or 1).
    #[arg(long, default_value_t = 1)]
    qos: u8,
    #[arg(long, default_value_t = 0.05)]
    lamp_fault_share: f64,
    /// Write the report (what was sent, faults, expected rows) as JSON here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// The hub's URL (e.g. `http://127.0.0.1:8080`): after publishing, wait for it and
    /// report the rows it stored (`stored_by_hub`), not only what the broker took.
    #[arg(long)]
    hub: Option<String>,
    /// With `--hub`: give up waiting for the count to grow after this many seconds.
    #[arg(long, default_value_t = 60)]
    settle_s: u64,
}

#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    file: PathBuf,
    #[arg(long)]
    broker: Option<String>,
    #[arg(long, default_value = "air_quality")]
    kind: String,
    #[arg(long, default_value = "replay-0001")]
    sensor: String,
    /// Column-to-metric mapping, e.g. `NO2_GT=no2,T=temperature,RH=humidity`
    /// (default: columns named like the kind's metrics).
    #[arg(long, default_value = "")]
    map: String,
    /// Values meaning "missing" (the UCI air-quality set uses -200).
    #[arg(
        long,
        default_value = "-200",
        value_delimiter = ',',
        allow_hyphen_values = true
    )]
    missing: Vec<f64>,
    /// Data seconds per second; 0: not paced by the data's own times (see `--rate`).
    #[arg(long, default_value_t = 0.0)]
    speedup: f64,
    /// Without `--speedup`: messages per second (0: as fast as the broker takes them,
    /// which can overflow a stock broker's queue for a slower subscriber).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    #[arg(long)]
    lat: Option<f64>,
    #[arg(long)]
    lon: Option<f64>,
    #[arg(long)]
    report: Option<PathBuf>,
    /// The hub's URL (e.g. `http://127.0.0.1:8080`): after publishing, wait for it and
    /// report the rows it stored (`stored_by_hub`), not only what the broker took.
    #[arg(long)]
    hub: Option<String>,
    /// With `--hub`: give up waiting for the count to grow after this many seconds.
    #[arg(long, default_value_t = 60)]
    settle_s: u64,
}

#[derive(clap::Args, Debug)]
pub struct LoadArgs {
    #[arg(long)]
    broker: Option<String>,
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    #[arg(long, default_value_t = 4)]
    connections: usize,
    #[arg(long, default_value_t = 10_000)]
    sensors: u64,
    /// Packets written per system call on each connection.
    #[arg(long, default_value_t = 512)]
    window: u64,
    /// Metrics per message: 3 (waste bins) or 6 (air-quality stations).
    #[arg(long, default_value_t = 3)]
    metrics: u8,
    /// Messages per second in total (default: as fast as possible).
    #[arg(long)]
    rate: Option<f64>,
}

/// The configured broker connection (credentials and TLS included), at `--broker` when given.
fn broker(settings: &Settings, arg: &Option<String>) -> cityhub_core::MqttSettings {
    let mut m = settings.mqtt.clone();
    if let Some(url) = arg {
        m.url = cityhub_core::ConnUrl::new(url.clone());
    }
    m
}

/// `90s`, `15m`, `2h`, `3d`.
pub(crate) fn parse_duration(s: &str) -> Result<chrono::Duration> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = n.parse().with_context(|| format!("duration {s:?}"))?;
    Ok(match unit {
        "s" | "" => chrono::Duration::seconds(n),
        "m" => chrono::Duration::minutes(n),
        "h" => chrono::Duration::hours(n),
        "d" => chrono::Duration::days(n),
        _ => bail!("duration {s:?}: use s, m, h or d"),
    })
}

fn parse_start(s: &str) -> Result<DateTime<Utc>> {
    if s == "now" {
        return Ok(Utc::now());
    }
    if let Some(rest) = s.strip_prefix('-') {
        return Ok(Utc::now() - parse_duration(rest)?);
    }
    Ok(DateTime::parse_from_rfc3339(s)
        .with_context(|| format!("start {s:?}"))?
        .with_timezone(&Utc))
}

fn cancel_on_signal() -> CancellationToken {
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        crate::shutdown_signal().await;
        c.cancel();
    });
    cancel
}

/// The indicators' truth, by the city's local days (`indicators.timezone`).
fn with_truth(settings: &Settings, report: &mut cityhub_sim::sim::Report) -> Result<()> {
    let cfg = &settings.indicators;
    let tz = cfg.tz().map_err(anyhow::Error::msg)?;
    report.indicators = Some(report.truth.summary(tz, cfg.min_day_hours() as u32));
    Ok(())
}

fn write_report<T: serde::Serialize>(path: &Option<PathBuf>, report: &T) -> Result<()> {
    let json = serde_json::to_string_pretty(report)?;
    println!("{json}");
    if let Some(p) = path {
        std::fs::write(p, &json).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

pub async fn run(settings: &Settings, cmd: SimCommand) -> Result<()> {
    match cmd {
        SimCommand::Run(a) => fleet(settings, a).await,
        SimCommand::Replay(a) => replay(settings, a).await,
        SimCommand::Load(a) => load(settings, a).await,
    }
}

/// `--fleet waste_bin=200,streetlight=300`
fn parse_fleet(s: &str) -> Result<Vec<(String, usize)>> {
    let mut per_kind = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (k, n) = part
            .split_once('=')
            .with_context(|| format!("--fleet {part:?}: expected kind=count"))?;
        per_kind.push((
            k.trim().to_owned(),
            n.trim()
                .parse()
                .with_context(|| format!("--fleet {part:?}"))?,
        ));
    }
    Ok(per_kind)
}

/// A simulated fleet, live.
async fn fleet(settings: &Settings, a: RunArgs) -> Result<()> {
    let catalog = settings.catalog()?;
    let per_kind = parse_fleet(&a.fleet)?;
    let formats = a
        .format
        .iter()
        .map(|f| Format::parse(f))
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    let opts = SimOptions {
        seed: a.seed,
        start: parse_start(&a.start)?,
        fleet: FleetSpec {
            per_kind,
            lamp_fault_share: a.lamp_fault_share,
        },
        formats,
        faults: FaultRates::parse(&a.faults).map_err(anyhow::Error::msg)?,
    };
    let pace = Pace {
        backpressure: None,
        speedup: a.speedup,
        rate: a.rate,
        duration: a.duration.as_deref().map(parse_duration).transpose()?,
        count: a.count,
        progress: None,
    };
    let qos = if a.qos == 0 {
        cityhub_sim::QoS::AtMostOnce
    } else {
        cityhub_sim::QoS::AtLeastOnce
    };
    let client_id = format!("cityhub-sim-{}", std::process::id());
    let report = cityhub_sim::run_live(
        &opts,
        &catalog,
        &pace,
        &broker(settings, &a.broker),
        &client_id,
        qos,
        cancel_on_signal(),
    )
    .await?;
    let mut report = report;
    if let Some(hub) = &a.hub {
        let sensors: Vec<String> = cityhub_sim::fleet::build(opts.seed, &opts.fleet, &catalog)
            .map_err(anyhow::Error::msg)?
            .into_iter()
            .map(|s| s.id)
            .collect();
        report.stored_by_hub = check_hub(hub, &sensors, &report, a.settle_s).await?;
    }
    with_truth(settings, &mut report)?;
    write_report(&a.report, &report)
}

/// Waits for the hub to store what the run sent and counts it (`--hub`).
async fn check_hub(
    hub: &str,
    sensors: &[String],
    report: &cityhub_sim::sim::Report,
    settle_s: u64,
) -> Result<Option<cityhub_sim::hubcheck::HubCheck>> {
    let (Some(from), Some(to)) = (report.first_time, report.last_time) else {
        return Ok(None);
    };
    eprintln!("sim: waiting for the hub at {hub} to store the run (at most {settle_s} s)...");
    let check = cityhub_sim::hubcheck::settle(
        hub,
        sensors,
        from,
        to,
        report.expected_rows,
        std::time::Duration::from_secs(5),
        std::time::Duration::from_secs(settle_s),
    )
    .await?;
    if check.missing_rows > 0 {
        eprintln!(
            "sim: the hub stored {} of {} readings; the broker acknowledged them, so it dropped the rest \
             (Mosquitto logs \"Outgoing messages are being dropped for client ...\"; raise max_queued_messages or publish slower)",
            check.stored_rows, check.expected_rows
        );
    }
    Ok(Some(check))
}

/// A recorded CSV series as one sensor's stream.
async fn replay(settings: &Settings, a: ReplayArgs) -> Result<()> {
    let catalog = settings.catalog()?;
    let kind = catalog
        .get(&a.kind)
        .with_context(|| format!("kind {:?} is not configured", a.kind))?;
    let metrics: Vec<String> = kind.metrics.keys().map(|m| m.to_string()).collect();
    let map = a
        .map
        .split(',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.split_once('=')
                .map(|(h, m)| (h.trim().to_owned(), m.trim().to_owned()))
                .with_context(|| format!("--map {p:?}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let spec = cityhub_sim::replay::ReplaySpec {
        kind: a.kind.clone(),
        sensor: a.sensor.clone(),
        map,
        missing: a.missing,
        lat: a.lat,
        lon: a.lon,
    };
    let text = std::fs::read_to_string(&a.file)
        .with_context(|| format!("reading {}", a.file.display()))?;
    let series = cityhub_sim::replay::read(&text, &spec, &metrics).map_err(anyhow::Error::msg)?;
    let msgs = cityhub_sim::replay::messages(&series, &spec, Utc::now());
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    let speedup = a.speedup;
    let rate = a.rate;
    let (from, to) = (msgs.first().map(|m| m.time), msgs.last().map(|m| m.time));
    let cancel = cancel_on_signal();
    let producer_cancel = cancel.clone();
    tokio::spawn(async move {
        let (Some(first), wall0) = (msgs.first().map(|m| m.time), std::time::Instant::now()) else {
            return;
        };
        for (i, m) in msgs.into_iter().enumerate() {
            if speedup > 0.0 || rate > 0.0 {
                let due = if speedup > 0.0 {
                    (m.time - first).num_milliseconds() as f64 / 1000.0 / speedup
                } else {
                    i as f64 / rate
                };
                tokio::select! {
                    _ = tokio::time::sleep_until((wall0 + std::time::Duration::from_secs_f64(due)).into()) => {}
                    _ = producer_cancel.cancelled() => break,
                }
            }
            if tx.send(m).await.is_err() {
                break;
            }
        }
    });
    let client_id = format!("cityhub-replay-{}", std::process::id());
    let report = cityhub_sim::publish_stream(
        &broker(settings, &a.broker),
        &client_id,
        rx,
        cityhub_sim::QoS::AtLeastOnce,
        cancel,
    )
    .await?;
    let mut report = report;
    if let Some(hub) = &a.hub {
        report.first_time = report.first_time.or(from);
        report.last_time = report.last_time.or(to);
        report.stored_by_hub =
            check_hub(hub, std::slice::from_ref(&a.sensor), &report, a.settle_s).await?;
    }
    with_truth(settings, &mut report)?;
    write_report(&a.report, &report)
}

/// QoS 1 load, as fast as the broker takes it (or at `--rate`).
async fn load(settings: &Settings, a: LoadArgs) -> Result<()> {
    let spec = cityhub_sim::load::LoadSpec {
        messages: a.messages,
        stop_at: None,
        rate: a.rate,
        connections: a.connections,
        sensors: a.sensors.max(1),
        metrics: a.metrics,
        start: Utc::now() - chrono::Duration::days(20),
        step: chrono::Duration::seconds(1),
        window: a.window,
    };
    let report = cityhub_sim::load::run(broker(settings, &a.broker).url.expose(), &spec).await?;
    write_report(&None, &report)
}
