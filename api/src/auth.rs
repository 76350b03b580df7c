//! Who is calling: named operator accounts (`cho_…` tokens, Argon2id-hashed in the
//! database) with a role each, and the bootstrap tokens from the settings
//! (`http.admin_token`, `http.operator_token`) for a hub that has no account yet.
//!
//! The accounts are kept in memory and reloaded when older than [`FRESH`], so a
//! disabled or rotated token stops working within that on every hub. A token's hash
//! is checked once (on a blocking thread: Argon2 is slow on purpose) and then
//! remembered by its SHA-256 until the account's hash changes.

use crate::error::ApiError;
use crate::AppState;
use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use cityhub_core::credentials::{self, Role, Token};
use cityhub_store::trust::Account;
use cityhub_store::Store;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use utoipa::ToSchema;

/// How old the in-memory accounts may be: the longest a disabled token still works.
pub const FRESH: Duration = Duration::from_secs(2);

/// How often a token id the hub does not know may make it reload the accounts.
const RELOAD_UNKNOWN: Duration = Duration::from_millis(250);

/// The caller of a request that needed a token.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Caller {
    /// The account's name, or `bootstrap-admin` / `bootstrap-operator`.
    pub name: String,
    #[schema(value_type = String)]
    pub role: Role,
    /// Signed in with a token from the settings, not an account.
    pub bootstrap: bool,
}

impl Caller {
    /// How the audit trail names this caller.
    pub fn actor(&self) -> String {
        if self.bootstrap {
            self.name.clone()
        } else {
            format!("operator:{}", self.name)
        }
    }
}

struct Entry {
    account: Account,
    /// SHA-256 of the last token that matched `account.token_hash`.
    verified: Mutex<Option<[u8; 32]>>,
}

#[derive(Default)]
struct Loaded {
    at: Option<Instant>,
    by_token_id: HashMap<String, std::sync::Arc<Entry>>,
}

/// The accounts as this hub last loaded them.
#[derive(Default)]
pub struct Accounts {
    loaded: tokio::sync::RwLock<Loaded>,
    reload: tokio::sync::Mutex<()>,
    /// Whether any account existed at the last load (for `/readyz`'s warning about
    /// bootstrap tokens left configured).
    any: std::sync::atomic::AtomicBool,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Whether a credential whose SHA-256 is `d` and whose secret part is `secret` matches
/// the Argon2 `hash`: by `remembered`, the digest of the one that matched this hash
/// before, when there is one (no other can match the same hash); else by Argon2, on a
/// blocking thread because it is slow on purpose.
async fn matches(d: &[u8; 32], secret: &str, hash: &str, remembered: Option<[u8; 32]>) -> bool {
    if let Some(k) = remembered {
        return credentials::constant_time_eq(&k, d);
    }
    let (secret, hash) = (secret.to_owned(), hash.to_owned());
    tokio::task::spawn_blocking(move || credentials::verify(&secret, &hash))
        .await
        .unwrap_or(false)
}

impl Accounts {
    /// Whether accounts existed when last loaded.
    pub fn exist(&self) -> bool {
        self.any.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) async fn refresh(&self, store: &Store) -> Result<(), ApiError> {
        self.refresh_older_than(store, FRESH).await
    }

    /// Forgets the loaded accounts: a change made through this hub applies at once.
    pub async fn invalidate(&self) {
        self.loaded.write().await.at = None;
    }

    async fn refresh_older_than(&self, store: &Store, age: Duration) -> Result<(), ApiError> {
        let stale = |l: &Loaded| l.at.is_none_or(|t| t.elapsed() > age);
        if !stale(&*self.loaded.read().await) {
            return Ok(());
        }
        let _one = self.reload.lock().await;
        if !stale(&*self.loaded.read().await) {
            return Ok(());
        }
        let accounts = store.active_accounts().await?;
        let mut loaded = self.loaded.write().await;
        let mut by_token_id = HashMap::with_capacity(accounts.len());
        for a in accounts {
            // Keep what was verified while the hash is the same.
            let kept = loaded
                .by_token_id
                .get(&a.token_id)
                .filter(|e| e.account.token_hash == a.token_hash && e.account.name == a.name)
                .and_then(|e| *e.verified.lock().unwrap_or_else(|p| p.into_inner()));
            by_token_id.insert(
                a.token_id.clone(),
                std::sync::Arc::new(Entry {
                    account: a,
                    verified: Mutex::new(kept),
                }),
            );
        }
        self.any.store(
            !by_token_id.is_empty(),
            std::sync::atomic::Ordering::Relaxed,
        );
        *loaded = Loaded {
            at: Some(Instant::now()),
            by_token_id,
        };
        Ok(())
    }

    /// The account `token` signs in as; None for a wrong, disabled or expired token.
    pub async fn authenticate(
        &self,
        store: &Store,
        token: &Token,
        text: &str,
    ) -> Result<Option<Caller>, ApiError> {
        self.refresh(store).await?;
        let mut entry = self.loaded.read().await.by_token_id.get(&token.id).cloned();
        if entry.is_none() {
            // An account made on another hub (or the CLI) a moment ago. Unknown ids
            // reload at most every RELOAD_UNKNOWN, so made-up ones cost little.
            self.refresh_older_than(store, RELOAD_UNKNOWN).await?;
            entry = self.loaded.read().await.by_token_id.get(&token.id).cloned();
        }
        let Some(entry) = entry else {
            return Ok(None);
        };
        if entry
            .account
            .expires_at
            .is_some_and(|t| t <= chrono::Utc::now())
        {
            return Ok(None);
        }
        let d = digest(text);
        let known = *entry.verified.lock().unwrap_or_else(|p| p.into_inner());
        let ok = matches(&d, &token.secret, &entry.account.token_hash, known).await;
        if ok && known.is_none() {
            *entry.verified.lock().unwrap_or_else(|p| p.into_inner()) = Some(d);
        }
        Ok(ok.then(|| Caller {
            name: entry.account.name.clone(),
            role: entry.account.role,
            bootstrap: false,
        }))
    }

    /// The account whose token `text` is, when that token was verified before: lets
    /// the rate limit key a request by its operator without hashing anything.
    pub fn known(&self, text: &str) -> Option<String> {
        let token = Token::parse(text)?;
        let loaded = self.loaded.try_read().ok()?;
        let e = loaded.by_token_id.get(&token.id)?;
        let v = (*e.verified.lock().unwrap_or_else(|p| p.into_inner()))?;
        credentials::constant_time_eq(&v, &digest(text)).then(|| e.account.name.clone())
    }
}

/// The bearer token of a request, if it has one.
pub fn bearer_token(parts: &axum::http::HeaderMap) -> Option<&str> {
    parts
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
}

/// The caller of `parts`, who must hold at least `needed`.
async fn authorize(parts: &Parts, s: &AppState, needed: Role) -> Result<Caller, ApiError> {
    let Some(given) = bearer_token(&parts.headers) else {
        return Err(ApiError::Unauthorized);
    };
    let http = &s.settings.http;
    let caller = if let Some(token) = Token::parse(given) {
        let store = s.store()?;
        s.accounts.authenticate(store, &token, given).await?
    } else {
        [
            (http.admin_token.as_ref(), Role::Admin),
            (http.operator_token.as_ref(), Role::Operator),
        ]
        .into_iter()
        .find_map(|(t, role)| {
            t.filter(|t| credentials::constant_time_eq(given.as_bytes(), t.expose().as_bytes()))
                .map(|_| Caller {
                    name: format!("bootstrap-{role}"),
                    role,
                    bootstrap: true,
                })
        })
    };
    let Some(caller) = caller else {
        tracing::warn!(path = %parts.uri.path(), "Call with a wrong, disabled or expired token refused.");
        return Err(ApiError::Forbidden(
            "the token is not valid (wrong, disabled or expired)".into(),
        ));
    };
    if caller.role < needed {
        tracing::warn!(path = %parts.uri.path(), operator = %caller.name, role = %caller.role, needed = %needed, "Call beyond the caller's role refused.");
        return Err(ApiError::Forbidden(format!(
            "this call needs the {needed} role; {} is {}",
            caller.name,
            article(caller.role)
        )));
    }
    Ok(caller)
}

fn article(r: Role) -> String {
    match r {
        Role::Admin | Role::Operator => format!("an {r}"),
        Role::Viewer => format!("a {r}"),
    }
}

macro_rules! role_extractor {
    ($name:ident, $role:expr, $doc:literal) => {
        #[doc = $doc]
        pub struct $name(pub Caller);

        impl FromRequestParts<AppState> for $name {
            type Rejection = ApiError;

            async fn from_request_parts(
                parts: &mut Parts,
                s: &AppState,
            ) -> Result<Self, Self::Rejection> {
                authorize(parts, s, $role).await.map($name)
            }
        }
    };
}

role_extractor!(
    Viewer,
    Role::Viewer,
    "A caller with any role: reads the views that are not open data."
);
role_extractor!(
    Operator,
    Role::Operator,
    "An operator or admin: acknowledges alerts, edits service fields."
);
role_extractor!(
    Admin,
    Role::Admin,
    "An admin: the registry, accounts, the audit trail."
);

/// Device passwords checked once per password (Argon2 is slow on purpose), then
/// remembered by SHA-256 while the stored hash is the same.
#[derive(Default)]
pub struct DeviceSecrets {
    /// device name -> (stored hash, digest of the password that matched it)
    verified: Mutex<HashMap<String, (String, [u8; 32])>>,
}

fn basic_credentials(headers: &axum::http::HeaderMap) -> Option<(String, String)> {
    use base64::Engine;
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, b64) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn upload_refusal(status: axum::http::StatusCode, why: &str) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut r = (status, axum::Json(serde_json::json!({ "error": why }))).into_response();
    if status == axum::http::StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut().insert(
            header::RETRY_AFTER,
            axum::http::HeaderValue::from_static("60"),
        );
    }
    if status == axum::http::StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Basic realm=\"cityhub uploads\""),
        );
    }
    r
}

/// The device an HTTP upload signs in as (basic auth: its sensor id and password), as
/// `ingest.upload_auth` asks: Err is the answer to send (401) when a password is
/// needed and missing or wrong. Nothing is stored and no dead letter kept then.
pub async fn upload_device(
    s: &AppState,
    headers: &axum::http::HeaderMap,
) -> Result<Option<String>, axum::response::Response> {
    use axum::http::StatusCode;
    use cityhub_core::settings::UploadAuth;
    let mode = s.settings.ingest.upload_auth;
    let store = s.store.get();
    let Some((user, password)) = basic_credentials(headers) else {
        let needed = match (mode, store) {
            (UploadAuth::Open, _) => false,
            (UploadAuth::Device, _) => true,
            (UploadAuth::Auto, Some(store)) => match store.devices_exist().await {
                Ok(exist) => exist,
                // Not known now: the device should send again later, not give up.
                Err(e) => {
                    tracing::warn!(error = %e, "Upload: device check failed.");
                    return Err(upload_refusal(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "storage is unavailable; send the data again later",
                    ));
                }
            },
            (UploadAuth::Auto, None) => {
                return Err(upload_refusal(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage is not available yet; send the data again later",
                ))
            }
        };
        return if needed {
            Err(upload_refusal(
                StatusCode::UNAUTHORIZED,
                "this hub takes uploads from provisioned devices only: send the sensor id and its password (HTTP basic auth)",
            ))
        } else {
            Ok(None)
        };
    };
    let Some(store) = store else {
        return Err(upload_refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage is not available yet",
        ));
    };
    let hash = match store.device_secret(&user).await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "Upload: device check failed.");
            return Err(upload_refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage is unavailable; send the data again later",
            ));
        }
    };
    let wrong = || {
        tracing::warn!(device = %user, "Upload with a wrong or revoked device password refused.");
        upload_refusal(
            StatusCode::UNAUTHORIZED,
            "the device name or password is wrong, or the device is revoked",
        )
    };
    let Some(hash) = hash else {
        return Err(wrong());
    };
    let d = digest(&password);
    let known = s
        .device_secrets
        .verified
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&user)
        .filter(|(h, _)| *h == hash)
        .map(|(_, k)| *k);
    let ok = matches(&d, &password, &hash, known).await;
    if ok && known.is_none() {
        s.device_secrets
            .verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(user.clone(), (hash, d));
    }
    if ok {
        Ok(Some(user))
    } else {
        Err(wrong())
    }
}
