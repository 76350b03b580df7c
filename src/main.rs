//! The `cityhub` binary: a thin CLI over the library crates.

mod demo;
mod sim_cmd;
mod trust_cmd;

use anyhow::{Context, Result};
use cityhub_core::{LogFormat, Settings};
use cityhub_store::Store;
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// jemalloc, purging in background threads: memory freed after a spike (a burst of
/// uploads, large answers) goes back to the system within seconds, where glibc's
/// per-thread arenas kept it for the life of the process.
#[cfg(all(target_os = "linux", not(target_env = "msvc")))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "cityhub",
    version,
    about = "Smart-city IoT data hub: MQTT in, PostgreSQL/TimescaleDB, open data out"
)]
struct Cli {
    /// Configuration file (TOML). Default: config/cityhub.toml when it exists.
    #[arg(long, short, global = true, env = "CITYHUB_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run ingestion and the HTTP server until SIGTERM/SIGINT.
    Serve,
    /// Apply the database schema and exit.
    Migrate,
    /// Start a self-contained demo (hub, database, broker, simulated fleet).
    Demo(demo::DemoArgs),
    /// Simulated sensors: a Cremona fleet, a CSV replay, or a load run.
    Sim {
        #[command(subcommand)]
        command: sim_cmd::SimCommand,
    },
    /// Manage the sensor registry.
    Sensors {
        #[command(subcommand)]
        command: SensorsCommand,
    },
    /// Device credentials: a broker client per device, passwords for HTTP uploads.
    Devices {
        #[command(subcommand)]
        command: trust_cmd::DevicesCommand,
    },
    /// Named operator accounts with roles (viewer, operator, admin).
    Operators {
        #[command(subcommand)]
        command: trust_cmd::OperatorsCommand,
    },
    /// TimescaleDB's jobs: their health, or run them now.
    Maintenance {
        #[command(subcommand)]
        command: MaintenanceCommand,
    },
    /// Database roles for dashboards and SQL users.
    Db {
        #[command(subcommand)]
        command: DbCommand,
    },
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum SensorsCommand {
    /// Load sensors from a GeoJSON FeatureCollection or a CSV file (id,kind,name,lon,lat,...).
    Import { file: PathBuf },
}

#[derive(Subcommand)]
enum MaintenanceCommand {
    /// Print each policy job's state, its scheduler's last run and the hubs' (JSON).
    Status,
    /// Run every policy job now (compression, retention, aggregate refresh) and wait;
    /// on plain PostgreSQL, drop partitions past retention.
    Run,
}

#[derive(Subcommand)]
enum DbCommand {
    /// Create (or update) ROLE as a read-only role for dashboards: it may select the
    /// readings views and the registry only, read-only sessions, a statement timeout.
    GrantReader {
        role: String,
        /// Longest statement the role may run, in seconds.
        #[arg(long, default_value_t = 30)]
        statement_timeout_s: u32,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the effective configuration (defaults, file, environment), secrets hidden.
    Print,
    /// Print every setting with its meaning and default, as a commented TOML file
    /// (what config/cityhub.toml holds) or as Markdown (docs/configuration.md).
    Reference {
        #[arg(long, value_enum, default_value_t = ReferenceFormat::Toml)]
        format: ReferenceFormat,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ReferenceFormat {
    Toml,
    Markdown,
}

/// How the audit trail names a change made from this command line.
fn cli_actor() -> String {
    format!(
        "cli:{}",
        ["SUDO_USER", "USER", "LOGNAME"]
            .into_iter()
            .filter_map(|v| std::env::var(v).ok())
            .find(|u| !u.is_empty())
            .unwrap_or_else(|| "unknown".into())
    )
}

fn load_settings(path: Option<&Path>) -> Result<Settings> {
    let default = Path::new("config/cityhub.toml");
    let file = path.or_else(|| default.exists().then_some(default));
    Settings::load(file).context("loading configuration")
}

fn init_tracing(settings: &Settings) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // The demo's embedded broker logs ordinary disconnects as errors; server notices are noise.
        .unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(format!(
                "rumqttd=off,tokio_postgres::connection=warn,{}",
                settings.log.filter
            ))
        });
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour codes only for a person at a terminal, never into a file or a pipe.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match settings.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // The reference describes the defaults: no file or environment is read for it.
    if let Command::Config {
        command: ConfigCommand::Reference { format },
    } = &cli.command
    {
        print!(
            "{}",
            match format {
                ReferenceFormat::Toml => cityhub_core::reference::reference_toml(),
                ReferenceFormat::Markdown => cityhub_core::reference::reference_markdown(),
            }
        );
        return Ok(());
    }
    let mut settings = load_settings(cli.config.as_deref())?;
    // The demo talks to a person: its own messages first, the hub's only when it warns
    // (unless --verbose, or RUST_LOG says otherwise).
    if let Command::Demo(args) = &cli.command {
        if !args.verbose {
            settings.log.filter = "warn".into();
        }
    }
    if let Command::Config {
        command: ConfigCommand::Print,
    } = cli.command
    {
        print!("{}", settings.to_redacted_toml());
        return Ok(());
    }
    init_tracing(&settings);
    // Crash-only: a panic anywhere (a bug) ends the process at once instead of leaving a
    // pipeline stage dead. Nothing is lost: unacknowledged messages stay with the broker.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        tracing::error!(panic = %info, "A task panicked; exiting so a supervisor restarts the hub.");
        std::process::exit(70);
    }));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Serve => {
                let cancel = CancellationToken::new();
                watch_stop_signals(cancel.clone(), settings.ingest.shutdown_timeout_s.get())?;
                match cityhub_app::serve(settings, cancel).await {
                    // Tasks still running hold nothing that is acked: leave at once.
                    Err(e @ cityhub_app::AppError::ShutdownDeadline(_)) => {
                        tracing::error!(error = %e, "Exiting.");
                        std::process::exit(75);
                    }
                    r => Ok(r?),
                }
            }
            Command::Migrate => {
                let store = Store::open(&settings, &settings.catalog()?).await?;
                println!(
                    "schema at version {} on {}",
                    cityhub_store::schema::latest_version(),
                    store.backend()
                );
                Ok(())
            }
            Command::Sensors {
                command: SensorsCommand::Import { file },
            } => {
                let text = std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?;
                let catalog = settings.catalog()?;
                let records = cityhub_store::sensors::parse(&text, &catalog)?;
                let store = Store::open(&settings, &catalog).await?;
                let r = cityhub_store::sensors::import(&store, &records, &cli_actor()).await?;
                println!(
                    "imported {} sensors: {} new, {} updated, {} unchanged",
                    records.len(),
                    r.inserted,
                    r.updated,
                    r.unchanged
                );
                Ok(())
            }
            Command::Db {
                command: DbCommand::GrantReader { role, statement_timeout_s },
            } => {
                let store = Store::open(&settings, &settings.catalog()?).await?;
                let created = store.grant_reader(&role, statement_timeout_s).await?;
                println!(
                    "{} role {role}: it may read {} (read-only sessions, statement timeout {statement_timeout_s} s); set its password with ALTER ROLE {role} PASSWORD '...'",
                    if created { "created" } else { "updated" },
                    cityhub_store::reader::READER_VIEWS.join(", ")
                );
                Ok(())
            }
            Command::Demo(args) => demo::run(settings, args).await,
            Command::Devices { command } => {
                trust_cmd::devices(&settings, &cli_actor(), command).await
            }
            Command::Operators { command } => {
                trust_cmd::operators(&settings, &cli_actor(), command).await
            }
            Command::Sim { command } => sim_cmd::run(&settings, command).await,
            Command::Maintenance { command } => {
                let store = Store::open(&settings, &settings.catalog()?).await?;
                if !store.backend().is_timescale() {
                    if let MaintenanceCommand::Run = command {
                        let dropped = store.apply_retention().await?;
                        println!("plain PostgreSQL: dropped {} partitions past retention", dropped.len());
                    } else {
                        println!("plain PostgreSQL: no TimescaleDB jobs; the hub drops partitions past retention hourly");
                    }
                    return Ok(());
                }
                let report = match command {
                    MaintenanceCommand::Status => cityhub_app::maintenance::report(&store, settings.store.maintenance).await?,
                    MaintenanceCommand::Run => cityhub_app::maintenance::run_all(&store, settings.store.maintenance).await?,
                };
                println!("{}", serde_json::to_string_pretty(&report)?);
                if report.state == cityhub_store::maintenance::JobState::Failing {
                    std::process::exit(1);
                }
                Ok(())
            }
            Command::Config { .. } => unreachable!("handled above"),
        }
    })
}

/// SIGTERM or SIGINT starts the drain; the process is gone within
/// `ingest.shutdown_timeout_s` of it, so a supervisor whose stop timeout is that long
/// never has to kill it. The watch runs on a thread of its own: neither hearing the
/// signal nor the final exit waits for a busy runtime. A second signal exits at once.
fn watch_stop_signals(cancel: CancellationToken, deadline_s: u64) -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    // The app stops draining a second before the deadline and exits itself; this is
    // the backstop, late enough to let it, early enough for the process to end in time.
    let backstop = Duration::from_secs(deadline_s).saturating_sub(Duration::from_millis(250));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("stop-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if tx.send(signal).is_err() {
                    break;
                }
            }
        })?;
    std::thread::Builder::new()
        .name("stop-deadline".into())
        .spawn(move || {
            if rx.recv().is_err() {
                return;
            }
            tracing::info!("Shutdown requested; draining.");
            cancel.cancel();
            let why = match rx.recv_timeout(backstop) {
                Ok(_) => "a second stop signal",
                Err(_) => "the shutdown deadline",
            };
            tracing::error!(deadline_s, "Exiting before the drain finished: {why}.");
            std::process::exit(75);
        })?;
    Ok(())
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
