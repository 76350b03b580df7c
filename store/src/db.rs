//! Connections: one place that turns settings into a TLS-capable pool.

use crate::error::StoreError;
use cityhub_core::settings::DatabaseSettings;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// How to treat the server's certificate, after libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertCheck {
    /// `disable`, `allow`, `prefer`, `require`: encrypt when TLS is used, do not verify
    /// (libpq's behaviour; `require` with `database.ca_file` verifies, as libpq does with a root cert).
    None,
    /// `verify-ca`, `verify-full`: chain and host name are verified (rustls always checks the name).
    Full,
}

/// Splits libpq's `sslmode` (which tokio-postgres only knows in part) off the URL.
fn split_sslmode(url: &str) -> (String, Option<String>) {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        if let Ok(mut u) = url::Url::parse(url) {
            let mut mode = None;
            let pairs: Vec<(String, String)> = u
                .query_pairs()
                .filter_map(|(k, v)| {
                    if k == "sslmode" {
                        mode = Some(v.into_owned());
                        None
                    } else {
                        Some((k.into_owned(), v.into_owned()))
                    }
                })
                .collect();
            if pairs.is_empty() {
                u.set_query(None);
            } else {
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
            return (u.to_string(), mode);
        }
        return (url.to_owned(), None);
    }
    let mut mode = None;
    let rest: Vec<&str> = url
        .split_whitespace()
        .filter(|kv| match kv.strip_prefix("sslmode=") {
            Some(m) => {
                mode = Some(m.to_owned());
                false
            }
            None => true,
        })
        .collect();
    (rest.join(" "), mode)
}

/// The tokio-postgres configuration from settings: URL, then password override,
/// and how to check the server certificate.
pub fn pg_config(s: &DatabaseSettings) -> Result<(tokio_postgres::Config, CertCheck), StoreError> {
    url_config(s, &s.url, "database.url")
}

/// [`pg_config`] for another URL of the same database (`read_url`), named `setting`
/// in errors.
fn url_config(
    s: &DatabaseSettings,
    conn: &cityhub_core::ConnUrl,
    setting: &str,
) -> Result<(tokio_postgres::Config, CertCheck), StoreError> {
    let (url, mode) = split_sslmode(conn.expose());
    let mut cfg = tokio_postgres::Config::from_str(&url)
        .map_err(|e| StoreError::Config(format!("{setting} ({}): {e}", conn.redacted())))?;
    let (ssl, mut check) = match mode.as_deref().unwrap_or("prefer") {
        "disable" => (SslMode::Disable, CertCheck::None),
        "allow" | "prefer" => (SslMode::Prefer, CertCheck::None),
        "require" => (SslMode::Require, CertCheck::None),
        "verify-ca" | "verify-full" => (SslMode::Require, CertCheck::Full),
        other => {
            return Err(StoreError::Config(format!(
                "{setting}: unknown sslmode {other:?}"
            )))
        }
    };
    if ssl == SslMode::Require && s.ca_file.is_some() {
        check = CertCheck::Full;
    }
    cfg.ssl_mode(ssl);
    if let Some(pw) = &s.password {
        cfg.password(pw.expose());
    }
    if cfg.get_application_name().is_none() {
        cfg.application_name("cityhub");
    }
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(Duration::from_secs(s.connect_timeout_s));
    }
    cfg.keepalives_idle(Duration::from_secs(30));
    Ok((cfg, check))
}

/// A rustls connector: verifying against the system roots plus `ca_file`, or,
/// for the non-verifying sslmodes, encrypting only (signatures are still checked).
pub fn tls(s: &DatabaseSettings, check: CertCheck) -> Result<MakeRustlsConnect, StoreError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Tls(e.to_string()))?;
    let config = match check {
        CertCheck::None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
            .with_no_client_auth(),
        CertCheck::Full => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            if let Some(path) = &s.ca_file {
                let pem = std::fs::read(path)
                    .map_err(|e| StoreError::Tls(format!("reading {}: {e}", path.display())))?;
                for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                    let cert = cert
                        .map_err(|e| StoreError::Tls(format!("parsing {}: {e}", path.display())))?;
                    roots
                        .add(cert)
                        .map_err(|e| StoreError::Tls(format!("adding {}: {e}", path.display())))?;
                }
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(MakeRustlsConnect::new(config))
}

/// libpq's `sslmode=require` semantics: the channel is encrypted, the certificate is not verified.
#[derive(Debug)]
struct EncryptOnly(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A connection of its own, outside the pool: for a session that holds a lock for
/// as long as it lives (the maintenance leader), so it never takes a pool slot.
pub async fn connect(s: &DatabaseSettings) -> Result<tokio_postgres::Client, StoreError> {
    let (mut cfg, check) = pg_config(s)?;
    cfg.connect_timeout(Duration::from_secs(s.connect_timeout_s));
    let (client, conn) = cfg.connect(tls(s, check)?).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "Dedicated database connection closed.");
        }
    });
    Ok(client)
}

/// A connection pool for queries and for the writer's dedicated connection.
pub fn pool(s: &DatabaseSettings) -> Result<Pool, StoreError> {
    sized_pool(
        s,
        s.pool_size.max(2),
        Duration::from_secs(s.connect_timeout_s),
        s.statement_timeout_s,
    )
}

/// The pool of long downloads: a caller that finds it full is told so within a
/// second (503), instead of queueing behind slow clients.
pub fn stream_pool(s: &DatabaseSettings) -> Result<Pool, StoreError> {
    sized_pool(s, s.stream_pool_size.max(1), Duration::from_secs(1), 0)
}

/// The pools on the standbys of `read_url` (queries, downloads), sized as those on
/// the primary; `None` without one. A URL that does not say which servers it wants
/// gets standbys only (`target_session_attrs=read-only`): the caller falls back to
/// the primary when none answers.
pub fn standby_pools(s: &DatabaseSettings) -> Result<Option<(Pool, Pool)>, StoreError> {
    let Some(url) = &s.read_url else {
        return Ok(None);
    };
    let config = || {
        let (mut cfg, check) = url_config(s, url, "database.read_url")?;
        if !url.expose().contains("target_session_attrs") {
            cfg.target_session_attrs(tokio_postgres::config::TargetSessionAttrs::ReadOnly);
        }
        Ok::<_, StoreError>((cfg, check))
    };
    let queries = build_pool(
        s,
        config()?,
        s.pool_size.max(2),
        Duration::from_secs(s.connect_timeout_s),
        s.statement_timeout_s,
    )?;
    let downloads = build_pool(
        s,
        config()?,
        s.stream_pool_size.max(1),
        Duration::from_secs(1),
        0,
    )?;
    Ok(Some((queries, downloads)))
}

/// A pool whose sessions cancel a statement after `statement_timeout_s` (0: never),
/// set at connect time so that no query can forget it; a session that needs longer
/// (the writer, migrations) sets its own.
fn sized_pool(
    s: &DatabaseSettings,
    size: usize,
    wait: Duration,
    statement_timeout_s: u64,
) -> Result<Pool, StoreError> {
    build_pool(s, pg_config(s)?, size, wait, statement_timeout_s)
}

fn build_pool(
    s: &DatabaseSettings,
    (mut cfg, check): (tokio_postgres::Config, CertCheck),
    size: usize,
    wait: Duration,
    statement_timeout_s: u64,
) -> Result<Pool, StoreError> {
    if statement_timeout_s > 0 {
        let options = format!(
            "{} -c statement_timeout={statement_timeout_s}s",
            cfg.get_options().unwrap_or_default()
        );
        cfg.options(options.trim());
    }
    let mgr = Manager::from_config(
        cfg,
        tls(s, check)?,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(mgr)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(wait))
        .create_timeout(Some(Duration::from_secs(s.connect_timeout_s)))
        .build()
        .map_err(|e| StoreError::Config(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cityhub_core::ConnUrl;

    fn cfg(url: &str) -> (tokio_postgres::Config, CertCheck) {
        pg_config(&DatabaseSettings {
            url: ConnUrl::new(url),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn sslmodes_follow_libpq() {
        let (c, k) =
            cfg("postgres://u:pw@db.example:5433/city?sslmode=verify-full&application_name=x");
        assert_eq!((c.get_ssl_mode(), k), (SslMode::Require, CertCheck::Full));
        assert_eq!(c.get_application_name(), Some("x"));
        assert_eq!(c.get_password(), Some(&b"pw"[..]));
        assert_eq!(cfg("postgres://h/db?sslmode=require").1, CertCheck::None);
        assert_eq!(cfg("postgres://h/db").0.get_ssl_mode(), SslMode::Prefer);
        assert_eq!(
            cfg("host=h dbname=d sslmode=disable").0.get_ssl_mode(),
            SslMode::Disable
        );
        assert!(pg_config(&DatabaseSettings {
            url: ConnUrl::new("postgres://h/d?sslmode=bogus"),
            ..Default::default()
        })
        .is_err());
    }
}
