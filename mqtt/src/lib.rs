//! The MQTT connection as `mqtt.*` settings describe it: broker URL (`mqtt://` or
//! `mqtts://`), credentials and TLS (CA, client certificate). The hub and the
//! simulators both connect through [`options`], so a broker the hub reaches is one
//! the simulators reach too.

pub mod dynsec;

use cityhub_core::{ConnUrl, MqttSettings};
use rumqttc::v5::MqttOptions;
use rumqttc::{TlsConfiguration, Transport};
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("mqtt.url: {0}")]
    Url(String),
    #[error("reading {path}: {message}")]
    File { path: String, message: String },
    #[error("TLS: {0}")]
    Tls(String),
}

/// Where a broker is and how to log in, from its URL.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub password: Option<String>,
}

impl Endpoint {
    /// `mqtt://` (or `tcp://`) is plain on port 1883 by default; `mqtts://` (or `ssl://`) is TLS on 8883.
    pub fn parse(s: &str) -> Result<Self, MqttError> {
        let u = url::Url::parse(s).map_err(|e| MqttError::Url(e.to_string()))?;
        let tls = match u.scheme() {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            other => {
                return Err(MqttError::Url(format!(
                    "scheme {other:?} is not mqtt:// or mqtts://"
                )))
            }
        };
        let host = u
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| MqttError::Url("no host".into()))?
            .to_owned();
        Ok(Self {
            tls,
            host,
            port: u.port().unwrap_or(if tls { 8883 } else { 1883 }),
            user: (!u.username().is_empty()).then(|| u.username().to_owned()),
            password: u.password().map(str::to_owned),
        })
    }
}

/// Settings for a plain connection to `url` with everything else at its default
/// (what a test or a one-off publisher needs).
pub fn plain(url: &str) -> MqttSettings {
    MqttSettings {
        url: ConnUrl::new(url),
        ..MqttSettings::default()
    }
}

/// Options for `client_id` at the broker of `m`: address, credentials (the settings'
/// own win over the URL's) and TLS. Session, keep-alive and flow control are the
/// caller's to set.
pub fn options(m: &MqttSettings, client_id: &str) -> Result<MqttOptions, MqttError> {
    let url = Endpoint::parse(m.url.expose())?;
    let mut o = MqttOptions::new(client_id, url.host, url.port);
    let user = m.username.clone().or(url.user);
    let password = m
        .password
        .as_ref()
        .map(|p| p.expose().to_owned())
        .or(url.password);
    if let Some(user) = user {
        o.set_credentials(user, password.unwrap_or_default());
    }
    if url.tls {
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls_config(m)?),
        )));
    }
    Ok(o)
}

fn read_pem(path: &Path) -> Result<Vec<u8>, MqttError> {
    std::fs::read(path).map_err(|e| file_error(path, e))
}

fn file_error(path: &Path, e: impl std::fmt::Display) -> MqttError {
    MqttError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// rustls with the `ring` provider: the system roots, or only `ca_file` when set;
/// a client certificate when both its files are set.
fn tls_config(m: &MqttSettings) -> Result<rustls::ClientConfig, MqttError> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = &m.ca_file {
        for c in rustls_pemfile::certs(&mut read_pem(ca)?.as_slice()) {
            let c = c.map_err(|e| file_error(ca, e))?;
            roots.add(c).map_err(|e| file_error(ca, e))?;
        }
    } else {
        for c in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(c);
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| MqttError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    match (&m.client_cert_file, &m.client_key_file) {
        (Some(cert), Some(key)) => {
            let certs = rustls_pemfile::certs(&mut read_pem(cert)?.as_slice())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| file_error(cert, e))?;
            let key_der = rustls_pemfile::private_key(&mut read_pem(key)?.as_slice())
                .map_err(|e| file_error(key, e))?
                .ok_or_else(|| file_error(key, "no private key found"))?;
            builder
                .with_client_auth_cert(certs, key_der)
                .map_err(|e| MqttError::Tls(format!("client certificate: {e}")))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let e = Endpoint::parse("mqtts://hub:secret@broker.example:9883").unwrap();
        assert_eq!(
            e,
            Endpoint {
                tls: true,
                host: "broker.example".into(),
                port: 9883,
                user: Some("hub".into()),
                password: Some("secret".into()),
            }
        );
        assert_eq!(Endpoint::parse("mqtt://h").unwrap().port, 1883);
        assert_eq!(Endpoint::parse("ssl://h").unwrap().port, 8883);
        assert!(!Endpoint::parse("tcp://h:1").unwrap().tls);
        assert!(Endpoint::parse("http://h").is_err());
        assert!(Endpoint::parse("not a url").is_err());
    }

    #[test]
    fn settings_credentials_win_over_the_url() {
        let mut m = plain("mqtt://u:p@127.0.0.1:1883");
        m.username = Some("other".into());
        let o = options(&m, "c").unwrap();
        assert_eq!(o.credentials().unwrap().username, "other");
        assert_eq!(o.broker_address(), ("127.0.0.1".to_owned(), 1883));
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let mut m = plain("mqtts://127.0.0.1");
        m.ca_file = Some("/nonexistent/ca.pem".into());
        let e = options(&m, "c").unwrap_err().to_string();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    }
}
