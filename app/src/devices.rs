//! Device credentials: each device gets a broker client of its own on Mosquitto's
//! dynamic security plugin (when `mqtt.dynamic_security` is set), bound to a role
//! that may publish only its own topic, and the same password, Argon2id-hashed, for
//! HTTP uploads. Network servers (ChirpStack, The Things Stack) get an integration
//! client that may publish only their adapter's topic. `cityhub devices` drives this.

use cityhub_core::credentials;
use cityhub_core::{Catalog, SensorId, Settings};
use cityhub_mqtt::dynsec::{Acl, DynSec, DynSecError};
use cityhub_store::trust::{DeviceAuth, DeviceInfo, NewDevice};
use cityhub_store::{Store, StoreError};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("broker: {0}")]
    Broker(#[from] DynSecError),
    #[error("database: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Invalid(String),
    #[error("no device {0:?} is provisioned")]
    NotFound(String),
}

/// A credential as handed out, once: the password is not kept anywhere in clear.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Issued {
    pub id: String,
    pub username: String,
    /// None for a device that signs in with a client certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// The CN its client certificate must carry, for one that signs in by certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate_cn: Option<String>,
    /// What the client may publish on.
    pub topics: Vec<String>,
}

/// A certificate device's stored secret: not an Argon2 hash, so no password matches it
/// (and `device_secret` never hands it out).
const NO_PASSWORD: &str = "!certificate";

/// The role a device's or integration's broker client holds.
pub fn role_of(name: &str) -> String {
    format!("cityhub-device:{name}")
}

/// The role the hub's own client is given for what it publishes.
pub const HUB_ROLE: &str = "cityhub-hub";

/// Manages credentials as `actor` (for the audit trail).
pub struct Devices<'a> {
    store: &'a Store,
    catalog: &'a Catalog,
    settings: &'a Settings,
    broker: Option<DynSec>,
    actor: String,
}

impl<'a> Devices<'a> {
    /// Connects to the broker's plugin when `mqtt.dynamic_security` is set.
    pub async fn open(
        settings: &'a Settings,
        catalog: &'a Catalog,
        store: &'a Store,
        actor: &str,
    ) -> Result<Self, DeviceError> {
        let broker = if settings.mqtt.dynamic_security {
            let id = format!("cityhub-devices-{}", std::process::id());
            Some(DynSec::connect(&settings.mqtt, &id).await?)
        } else {
            None
        };
        Ok(Self {
            store,
            catalog,
            settings,
            broker,
            actor: actor.to_owned(),
        })
    }

    /// A client for sensor `id` of `kind`, which may publish `cityhub/v1/<kind>/<id>`
    /// (native JSON or SenML; the sensor is the topic's, never the payload's). With
    /// [`DeviceAuth::Certificate`] it signs in by a client certificate whose CN is `id`.
    pub async fn provision(
        &self,
        id: &str,
        kind: &str,
        auth: DeviceAuth,
    ) -> Result<Issued, DeviceError> {
        let id = SensorId::parse(id).map_err(|e| DeviceError::Invalid(e.to_string()))?;
        if self.catalog.get(kind).is_none() {
            return Err(DeviceError::Invalid(format!(
                "unknown kind {kind:?}; known kinds: {}",
                self.catalog
                    .iter()
                    .map(|k| k.name.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if auth == DeviceAuth::Certificate && self.broker.is_none() {
            return Err(DeviceError::Invalid(
                "a certificate device signs in to the broker only: set mqtt.dynamic_security"
                    .into(),
            ));
        }
        let topics = vec![format!("cityhub/v1/{kind}/{id}")];
        self.create(id.as_str(), Some(kind), topics, auth).await
    }

    /// A network server's integration client, which may publish its adapter's topic.
    pub async fn provision_integration(&self, adapter: &str) -> Result<Issued, DeviceError> {
        let a = self
            .settings
            .adapters
            .iter()
            .find(|a| a.name == adapter)
            .ok_or_else(|| {
                DeviceError::Invalid(format!(
                    "no [[adapters]] entry named {adapter:?}; configured: {}",
                    self.settings
                        .adapters
                        .iter()
                        .map(|a| a.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
        let name = format!("integration-{}", a.name);
        self.create(&name, None, vec![a.topic()], DeviceAuth::Password)
            .await
    }

    async fn create(
        &self,
        name: &str,
        kind: Option<&str>,
        topics: Vec<String>,
        auth: DeviceAuth,
    ) -> Result<Issued, DeviceError> {
        if self.store.device(name).await?.is_some() {
            return Err(StoreError::Exists(format!(
                "device {name:?} (rotate its password with `cityhub devices rotate`)"
            ))
            .into());
        }
        let password = (auth == DeviceAuth::Password).then(credentials::device_password);
        let role = role_of(name);
        if let Some(b) = &self.broker {
            let acls: Vec<Acl> = topics
                .iter()
                .map(|t| Acl {
                    acltype: "publishClientSend",
                    topic: t,
                    allow: true,
                })
                .collect();
            b.ensure_role(&role, &acls).await?;
            b.create_client(
                name,
                password.as_deref(),
                &role,
                &format!("cityhub {}", kind.unwrap_or("integration")),
            )
            .await?;
        }
        let added = self
            .store
            .add_device(
                &self.actor,
                &NewDevice {
                    name: name.to_owned(),
                    kind: kind.map(str::to_owned),
                    username: name.to_owned(),
                    topics: topics.clone(),
                    secret_hash: password
                        .as_deref()
                        .map_or_else(|| NO_PASSWORD.to_owned(), credentials::hash),
                    on_broker: self.broker.is_some(),
                    auth,
                },
            )
            .await;
        if let Err(e) = added {
            // Leave no broker client the registry does not know of.
            if let Some(b) = &self.broker {
                let _ = b.delete(name, &role).await;
            }
            return Err(e.into());
        }
        tracing::info!(
            device = name,
            on_broker = self.broker.is_some(),
            "Device provisioned."
        );
        Ok(Issued {
            id: name.to_owned(),
            username: name.to_owned(),
            certificate_cn: password.is_none().then(|| name.to_owned()),
            password,
            topics,
        })
    }

    /// A new password (the old one stops working; a revoked device is enabled again).
    /// A certificate device has no password: a revoked one is let in again (a new
    /// certificate with the same CN is the city's CA's to issue).
    pub async fn rotate(&self, name: &str) -> Result<Issued, DeviceError> {
        let d = self
            .store
            .device(name)
            .await?
            .ok_or_else(|| DeviceError::NotFound(name.into()))?;
        if d.auth == DeviceAuth::Certificate {
            return self.reinstate(d).await;
        }
        let password = credentials::device_password();
        if let (Some(b), true) = (&self.broker, d.on_broker) {
            b.set_password(&d.username, &password).await?;
            if d.revoked_at.is_some() {
                b.enable(&d.username).await?;
            }
        }
        self.store
            .rotate_device(&self.actor, name, &credentials::hash(&password))
            .await?;
        tracing::info!(device = name, "Device password rotated.");
        Ok(Issued {
            id: d.name,
            username: d.username,
            password: Some(password),
            certificate_cn: None,
            topics: d.topics,
        })
    }

    async fn reinstate(&self, d: DeviceInfo) -> Result<Issued, DeviceError> {
        if d.revoked_at.is_none() {
            return Err(DeviceError::Invalid(format!(
                "device {:?} signs in with a client certificate (CN {:?}) and has no password: \
                 give it a new certificate; `revoke` cuts it off",
                d.name, d.username
            )));
        }
        if let (Some(b), true) = (&self.broker, d.on_broker) {
            let role = role_of(&d.name);
            let text = format!("cityhub {}", d.kind.as_deref().unwrap_or("integration"));
            match b.create_client(&d.username, None, &role, &text).await {
                Err(e) if e.already_exists() => {}
                other => other?,
            }
        }
        self.store
            .rotate_device(&self.actor, &d.name, NO_PASSWORD)
            .await?;
        tracing::info!(device = %d.name, "Certificate device let in again.");
        Ok(Issued {
            certificate_cn: Some(d.username.clone()),
            id: d.name,
            username: d.username,
            password: None,
            topics: d.topics,
        })
    }

    /// Cuts a device off: the broker disconnects it and refuses its next logins, and
    /// its HTTP uploads are refused.
    pub async fn revoke(&self, name: &str) -> Result<DeviceInfo, DeviceError> {
        let d = self
            .store
            .device(name)
            .await?
            .ok_or_else(|| DeviceError::NotFound(name.into()))?;
        if let (Some(b), true) = (&self.broker, d.on_broker) {
            match d.auth {
                DeviceAuth::Password => b.disable(&d.username).await?,
                DeviceAuth::Certificate => b.delete_client(&d.username).await?,
            }
        }
        let d = self
            .store
            .revoke_device(&self.actor, name)
            .await?
            .ok_or_else(|| DeviceError::NotFound(name.into()))?;
        tracing::info!(device = name, "Device revoked.");
        Ok(d)
    }

    /// Every sensor of the registry (of `kind`, when given) that has no credential yet.
    pub async fn unprovisioned(
        &self,
        kind: Option<&str>,
    ) -> Result<Vec<(String, String)>, DeviceError> {
        Ok(self.store.unprovisioned_sensors(kind).await?)
    }

    pub async fn close(self) {
        if let Some(b) = self.broker {
            b.close().await;
        }
    }
}

/// Gives the hub's own client the topics it publishes (alerts, SensorThings), when the broker runs
/// the dynamic security plugin: its admin role lets it read every topic but publish
/// only to the plugin.
pub async fn grant_hub(settings: &Settings) -> Result<(), DeviceError> {
    let Some(user) = settings.mqtt.username.as_deref() else {
        return Err(DeviceError::Invalid(
            "mqtt.dynamic_security needs mqtt.username (a client with the plugin's admin role)"
                .into(),
        ));
    };
    let id = format!("{}-grants", settings.mqtt.client_id);
    let b = DynSec::connect(&settings.mqtt, &id).await?;
    let alerts = format!("{}#", cityhub_core::alerts::ALERT_TOPIC_PREFIX);
    let r = async {
        b.ensure_role(
            HUB_ROLE,
            &[
                Acl {
                    acltype: "publishClientSend",
                    topic: &alerts,
                    allow: true,
                },
                // The SensorThings MQTT extension's Observations.
                Acl {
                    acltype: "publishClientSend",
                    topic: "v1.1/#",
                    allow: true,
                },
            ],
        )
        .await?;
        b.add_client_role(user, HUB_ROLE).await
    }
    .await;
    b.close().await;
    Ok(r?)
}
