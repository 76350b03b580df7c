//! `cityhub devices` and `cityhub operators`: credentials, shown once.

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use cityhub_app::devices::{Devices, Issued};
use cityhub_core::credentials::{self, Role, Token};
use cityhub_core::Settings;
use cityhub_store::trust::DeviceAuth;
use cityhub_store::Store;
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum DevicesCommand {
    /// Give devices their own credentials: a broker client (mqtt.dynamic_security) that
    /// may publish only the device's topic, and the same password for HTTP uploads.
    /// The password is printed once.
    Provision {
        /// Sensor ids (with --kind).
        ids: Vec<String>,
        /// The devices' kind.
        #[arg(long)]
        kind: Option<String>,
        /// Every registered sensor (of --kind, when given) without a credential yet.
        #[arg(long, conflicts_with_all = ["ids", "csv"])]
        from_registry: bool,
        /// A CSV file with the columns id,kind.
        #[arg(long, conflicts_with = "ids")]
        csv: Option<PathBuf>,
        /// The devices sign in with a client certificate whose CN is the sensor id (an
        /// mqtts listener with `use_identity_as_username`), not a password.
        #[arg(long)]
        certificate: bool,
        /// One JSON object per device: {"id", "username", "password", "topics"}
        /// ({"certificate_cn"} instead of the password with --certificate).
        #[arg(long)]
        json: bool,
    },
    /// A client for a network server's MQTT integration (ChirpStack, The Things Stack):
    /// it may publish only its [[adapters]] entry's topic.
    Integration {
        /// The adapter's name in the configuration.
        adapter: String,
        #[arg(long)]
        json: bool,
    },
    /// A new password for a device (the old one stops working); a revoked certificate
    /// device is let in again.
    Rotate {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Cut a device off: disconnected now, its next logins and uploads refused.
    Revoke { id: String },
    /// The provisioned devices (never their passwords).
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum OperatorsCommand {
    /// Add a named account; its token is printed once.
    Add {
        name: String,
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// When the token stops working (RFC 3339); never when absent.
        #[arg(long)]
        expires: Option<DateTime<Utc>>,
        /// {"name", "role", "token"} as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The accounts (never their tokens).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Disable an account: its token stops working within seconds on every hub.
    Disable { name: String },
    /// A new token for an account (the old one stops working).
    Rotate {
        name: String,
        #[arg(long)]
        expires: Option<DateTime<Utc>>,
        #[arg(long)]
        json: bool,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not a role: viewer, operator or admin"))
}

fn print_issued(i: &Issued, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(i)?);
    } else {
        let credential = match (&i.password, &i.certificate_cn) {
            (Some(p), _) => format!("username {} password {p} (shown once)", i.username),
            (None, Some(cn)) => format!("client certificate CN {cn}"),
            (None, None) => format!("username {}", i.username),
        };
        println!("{}: {credential} may publish {}", i.id, i.topics.join(", "));
    }
    Ok(())
}

pub async fn devices(settings: &Settings, actor: &str, command: DevicesCommand) -> Result<()> {
    let catalog = settings.catalog()?;
    let store = Store::open(settings, &catalog).await?;
    if let DevicesCommand::List { json } = command {
        let list = store.devices().await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&list)?);
        } else {
            for d in list {
                println!(
                    "{:<32} {:<14} {:<11} {:<8} {}",
                    d.name,
                    d.kind.as_deref().unwrap_or("integration"),
                    d.auth.as_str(),
                    if d.revoked_at.is_some() {
                        "revoked"
                    } else {
                        "active"
                    },
                    d.topics.join(", ")
                );
            }
        }
        return Ok(());
    }
    let devices = Devices::open(settings, &catalog, &store, actor)
        .await
        .context("connecting to the broker's dynamic security plugin")?;
    let result = async {
        match command {
            DevicesCommand::Provision {
                ids,
                kind,
                from_registry,
                csv,
                certificate,
                json,
            } => {
                let auth = if certificate {
                    DeviceAuth::Certificate
                } else {
                    DeviceAuth::Password
                };
                let todo: Vec<(String, String)> = if from_registry {
                    devices.unprovisioned(kind.as_deref()).await?
                } else if let Some(path) = csv {
                    read_csv(&path)?
                } else {
                    let Some(kind) = kind else {
                        bail!("give --kind for the ids (or --from-registry, or --csv FILE)");
                    };
                    if ids.is_empty() {
                        bail!("give at least one sensor id");
                    }
                    ids.into_iter().map(|i| (i, kind.clone())).collect()
                };
                for (id, kind) in &todo {
                    let issued = devices
                        .provision(id, kind, auth)
                        .await
                        .with_context(|| format!("provisioning {id}"))?;
                    print_issued(&issued, json)?;
                }
                if !json {
                    eprintln!("{} devices provisioned", todo.len());
                }
                Ok(())
            }
            DevicesCommand::Integration { adapter, json } => {
                print_issued(&devices.provision_integration(&adapter).await?, json)
            }
            DevicesCommand::Rotate { id, json } => print_issued(&devices.rotate(&id).await?, json),
            DevicesCommand::Revoke { id } => {
                devices.revoke(&id).await?;
                println!("{id}: revoked (disconnected; its next logins and uploads are refused)");
                Ok(())
            }
            DevicesCommand::List { .. } => unreachable!("handled above"),
        }
    }
    .await;
    devices.close().await;
    result
}

fn read_csv(path: &std::path::Path) -> Result<Vec<(String, String)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    let mut r = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let h = r.headers()?.clone();
    let col = |n: &str| h.iter().position(|x| x.eq_ignore_ascii_case(n));
    let (Some(ci), Some(ck)) = (col("id"), col("kind")) else {
        bail!("{}: the CSV needs the columns id and kind", path.display());
    };
    for (n, rec) in r.records().enumerate() {
        let rec = rec?;
        match (rec.get(ci), rec.get(ck)) {
            (Some(i), Some(k)) if !i.is_empty() && !k.is_empty() => out.push((i.into(), k.into())),
            _ => bail!(
                "{} line {}: id and kind are required",
                path.display(),
                n + 2
            ),
        }
    }
    Ok(out)
}

pub async fn operators(settings: &Settings, actor: &str, command: OperatorsCommand) -> Result<()> {
    let store = Store::open(settings, &settings.catalog()?).await?;
    let issue = |name: &str, role: Role, token: &Token, json: bool| -> Result<()> {
        if json {
            println!(
                "{}",
                serde_json::json!({"name": name, "role": role, "token": token.text()})
            );
        } else {
            println!("{name} ({role}): token {} (shown once)", token.text());
        }
        Ok(())
    };
    match command {
        OperatorsCommand::Add {
            name,
            role,
            expires,
            json,
        } => {
            let token = Token::generate();
            store
                .add_operator(
                    actor,
                    &name,
                    role,
                    &token.id,
                    &credentials::hash(&token.secret),
                    expires,
                )
                .await?;
            issue(&name, role, &token, json)
        }
        OperatorsCommand::List { json } => {
            let list = store.operators().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for o in list {
                    let state = match (o.disabled_at, o.expires_at) {
                        (Some(_), _) => "disabled".to_owned(),
                        (None, Some(t)) if t <= Utc::now() => "expired".to_owned(),
                        (None, Some(t)) => format!("until {}", t.to_rfc3339()),
                        (None, None) => "active".to_owned(),
                    };
                    println!("{:<32} {:<9} {state}", o.name, o.role.to_string());
                }
            }
            Ok(())
        }
        OperatorsCommand::Disable { name } => {
            if store.disable_operator(actor, &name).await?.is_none() {
                bail!("no operator {name:?}");
            }
            println!("{name}: disabled");
            Ok(())
        }
        OperatorsCommand::Rotate {
            name,
            expires,
            json,
        } => {
            let token = Token::generate();
            let Some(o) = store
                .rotate_operator(
                    actor,
                    &name,
                    &token.id,
                    &credentials::hash(&token.secret),
                    expires,
                )
                .await?
            else {
                bail!("no operator {name:?}");
            };
            issue(&name, o.role, &token, json)
        }
    }
}
