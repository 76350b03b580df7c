//! A client of Mosquitto's dynamic security plugin: commands published on
//! `$CONTROL/dynamic-security/v1`, answers read from its `/response` topic and
//! matched by correlation data. The hub uses it to give each device a broker client
//! of its own, with a role that may publish only the device's topics.

use crate::{options, MqttError};
use cityhub_core::MqttSettings;
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

const CONTROL: &str = "$CONTROL/dynamic-security/v1";
const RESPONSE: &str = "$CONTROL/dynamic-security/v1/response";
/// How long a command may wait for the plugin's answer.
const ANSWER: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DynSecError {
    #[error(transparent)]
    Settings(#[from] MqttError),
    #[error("the broker refused the hub's login ({0}); the dynamic security plugin's admin role is needed (mqtt.username, mqtt.password)")]
    Refused(String),
    #[error("broker connection: {0}")]
    Connection(String),
    #[error("the broker did not answer {0} within 10 s: is the dynamic security plugin loaded, and does mqtt.username have its admin role?")]
    NoAnswer(String),
    /// The plugin refused a command (its own words).
    #[error("{command}: {error}")]
    Command { command: String, error: String },
}

impl DynSecError {
    /// True when the plugin said the client or role already exists.
    pub fn already_exists(&self) -> bool {
        matches!(self, DynSecError::Command { error, .. } if error.contains("already exists"))
    }
}

type Waiting = Arc<Mutex<HashMap<String, oneshot::Sender<Value>>>>;

/// A connection to the plugin's control topic.
pub struct DynSec {
    client: AsyncClient,
    waiting: Waiting,
    next: std::sync::atomic::AtomicU64,
    task: tokio::task::JoinHandle<()>,
}

/// One ACL entry of a role.
pub struct Acl<'a> {
    /// `publishClientSend`, `publishClientReceive`, `subscribePattern`, ...
    pub acltype: &'a str,
    pub topic: &'a str,
    pub allow: bool,
}

impl DynSec {
    /// Connects with the settings' credentials and subscribes to the answers.
    pub async fn connect(m: &MqttSettings, client_id: &str) -> Result<Self, DynSecError> {
        let mut o = options(m, client_id)?;
        o.set_keep_alive(Duration::from_secs(30));
        o.set_clean_start(true);
        let (client, mut events) = AsyncClient::new(o, 64);
        client
            .subscribe(RESPONSE, QoS::AtLeastOnce)
            .await
            .map_err(|e| DynSecError::Connection(e.to_string()))?;
        // Wait for the login and the subscription before any command goes out.
        let started = tokio::time::Instant::now();
        loop {
            let ev = tokio::time::timeout_at(started + ANSWER, events.poll())
                .await
                .map_err(|_| DynSecError::NoAnswer("the connection".into()))?;
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(a))) if a.code != ConnectReturnCode::Success => {
                    return Err(DynSecError::Refused(format!("{:?}", a.code)))
                }
                Ok(Event::Incoming(Packet::SubAck(a))) => {
                    if a.return_codes.iter().any(|c| {
                        !matches!(
                            c,
                            rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(_)
                        )
                    }) {
                        return Err(DynSecError::Refused(
                            "not allowed to read the plugin's answers".into(),
                        ));
                    }
                    break;
                }
                Ok(_) => {}
                Err(rumqttc::v5::ConnectionError::ConnectionRefused(code)) => {
                    return Err(DynSecError::Refused(format!("{code:?}")))
                }
                Err(e) => return Err(DynSecError::Connection(e.to_string())),
            }
        }
        let waiting: Waiting = Default::default();
        let w = waiting.clone();
        let task = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let Ok(v) = serde_json::from_slice::<Value>(&p.payload) else {
                            continue;
                        };
                        let answers = v["responses"].as_array().cloned().unwrap_or_default();
                        for a in answers {
                            let Some(id) = a["correlationData"].as_str() else {
                                continue;
                            };
                            let tx = w.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
                            if let Some(tx) = tx {
                                let _ = tx.send(a);
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "Dynamic security connection lost.");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        Ok(Self {
            client,
            waiting,
            next: Default::default(),
            task,
        })
    }

    /// Runs one command (`{"command": ..., ...}`) and returns the plugin's answer.
    pub async fn command(&self, mut cmd: Value) -> Result<Value, DynSecError> {
        let name = cmd["command"].as_str().unwrap_or("?").to_owned();
        let id = format!(
            "cityhub-{}",
            self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        cmd["correlationData"] = Value::String(id.clone());
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), tx);
        let body = json!({ "commands": [cmd] }).to_string();
        self.client
            .publish(CONTROL, QoS::AtLeastOnce, false, body)
            .await
            .map_err(|e| DynSecError::Connection(e.to_string()))?;
        let answer = tokio::time::timeout(ANSWER, rx).await;
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        let answer = answer
            .map_err(|_| DynSecError::NoAnswer(name.clone()))?
            .map_err(|_| DynSecError::NoAnswer(name.clone()))?;
        match answer["error"].as_str() {
            Some(e) => Err(DynSecError::Command {
                command: name,
                error: e.to_owned(),
            }),
            None => Ok(answer),
        }
    }

    /// Creates a role with these ACLs; when it exists, adds those it lacks.
    pub async fn ensure_role(&self, role: &str, acls: &[Acl<'_>]) -> Result<(), DynSecError> {
        let list: Vec<Value> = acls
            .iter()
            .map(|a| json!({"acltype": a.acltype, "topic": a.topic, "allow": a.allow}))
            .collect();
        match self
            .command(json!({"command": "createRole", "rolename": role, "acls": list}))
            .await
        {
            Err(e) if e.already_exists() => {
                for a in list {
                    let mut c = a.clone();
                    c["command"] = json!("addRoleACL");
                    c["rolename"] = json!(role);
                    match self.command(c).await {
                        Err(e) if e.already_exists() => {}
                        other => {
                            other?;
                        }
                    }
                }
                Ok(())
            }
            other => other.map(|_| ()),
        }
    }

    /// Creates a client with a password and one role.
    /// A client with `role`; without a password it can only sign in by a client
    /// certificate whose CN is `username`.
    pub async fn create_client(
        &self,
        username: &str,
        password: Option<&str>,
        role: &str,
        text_name: &str,
    ) -> Result<(), DynSecError> {
        let mut cmd = json!({"command": "createClient", "username": username,
            "textname": text_name, "roles": [{"rolename": role, "priority": -1}]});
        if let Some(p) = password {
            cmd["password"] = json!(p);
        }
        self.command(cmd).await.map(|_| ())
    }

    /// Gives `username` a role (kept when it has it).
    pub async fn add_client_role(&self, username: &str, role: &str) -> Result<(), DynSecError> {
        match self
            .command(json!({"command": "addClientRole", "username": username, "rolename": role}))
            .await
        {
            Err(e) if e.already_exists() => Ok(()),
            other => other.map(|_| ()),
        }
    }

    pub async fn set_password(&self, username: &str, password: &str) -> Result<(), DynSecError> {
        self.command(
            json!({"command": "setClientPassword", "username": username, "password": password}),
        )
        .await
        .map(|_| ())
    }

    /// Refuses the client's next logins and disconnects it now.
    pub async fn disable(&self, username: &str) -> Result<(), DynSecError> {
        self.command(json!({"command": "disableClient", "username": username}))
            .await
            .map(|_| ())
    }

    pub async fn enable(&self, username: &str) -> Result<(), DynSecError> {
        self.command(json!({"command": "enableClient", "username": username}))
            .await
            .map(|_| ())
    }

    /// Deletes a client and a role (undoing a half-done provisioning); missing ones are fine.
    pub async fn delete(&self, username: &str, role: &str) -> Result<(), DynSecError> {
        self.delete_all(&[
            json!({"command": "deleteClient", "username": username}),
            json!({"command": "deleteRole", "rolename": role}),
        ])
        .await
    }

    /// Deletes a client, disconnecting it (a missing one is fine). A client that signs
    /// in by certificate is let in by TLS alone, so disabling would not stop it: with
    /// no client of its name left, every publish of its next connections is refused.
    pub async fn delete_client(&self, username: &str) -> Result<(), DynSecError> {
        self.delete_all(&[json!({"command": "deleteClient", "username": username})])
            .await
    }

    async fn delete_all(&self, commands: &[Value]) -> Result<(), DynSecError> {
        for c in commands.iter().cloned() {
            match self.command(c).await {
                Err(DynSecError::Command { error, .. }) if error.contains("not found") => {}
                other => {
                    other?;
                }
            }
        }
        Ok(())
    }

    /// Closes the connection.
    pub async fn close(self) {
        let _ = self.client.disconnect().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.task.abort();
    }
}
