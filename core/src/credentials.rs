//! Credentials the hub hands out: operator tokens and device passwords. Each is
//! shown once, kept only as an Argon2id hash, and checked without revealing by its
//! timing how much of it matched.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};

/// What an operator account may do; each role may do what the ones below it may.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    strum::EnumString,
    strum::Display,
    strum::IntoStaticStr,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Role {
    /// Reads the views that are not open data (dead letters, the map's operator state).
    Viewer,
    /// Acknowledges alerts and edits a sensor's service fields.
    Operator,
    /// The registry, imports, subscriptions, accounts and the audit trail.
    Admin,
}

/// Operator tokens start with this, so a leaked one is recognisable (secret scanners,
/// log reviews) and never mistaken for a device password.
pub const TOKEN_PREFIX: &str = "cho_";

/// A token as handed out: `cho_<id>_<secret>`. The id finds the account without a
/// scan; only the secret's hash is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub id: String,
    pub secret: String,
}

impl Token {
    /// 8 random bytes of id, 32 of secret (256 bits: not guessable, so one hash
    /// check per new token seen is all an attacker can make us do).
    pub fn generate() -> Self {
        Self {
            id: random_text(8),
            secret: random_text(32),
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        let rest = s.strip_prefix(TOKEN_PREFIX)?;
        let (id, secret) = rest.split_once('_')?;
        let ok = |p: &str| {
            !p.is_empty()
                && p.len() <= 64
                && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        (ok(id) && ok(secret)).then(|| Self {
            id: id.into(),
            secret: secret.into(),
        })
    }

    pub fn text(&self) -> String {
        format!("{TOKEN_PREFIX}{}_{}", self.id, self.secret)
    }
}

/// `bytes` random bytes as base64url without padding or `_` (so a token splits on
/// `_` unambiguously).
pub fn random_text(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(b)
        .replace('_', "-")
}

/// A device password: 24 random bytes, letters, digits and `-`, which every MQTT
/// client library and HTTP basic auth carry unchanged.
pub fn device_password() -> String {
    random_text(24)
}

/// The Argon2id hash (PHC string) of `secret`, with a random salt.
pub fn hash(secret: &str) -> String {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        // Only an invalid parameter set fails, and the defaults are valid.
        .unwrap_or_default()
}

/// True when `secret` matches `phc` (an Argon2 PHC string); false for a malformed hash.
/// Argon2's own comparison is constant-time.
pub fn verify(secret: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|h| {
            Argon2::default()
                .verify_password(secret.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Compares without an early exit, so timing does not reveal how much matched
/// (for the bootstrap tokens from the settings, which are not hashed).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_round_trips_and_hashes() {
        let t = Token::generate();
        let text = t.text();
        assert!(text.starts_with("cho_"));
        assert_eq!(Token::parse(&text), Some(t.clone()));
        let h = hash(&t.secret);
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(!h.contains(&t.secret));
        assert!(verify(&t.secret, &h));
        assert!(!verify(&Token::generate().secret, &h));
        assert!(!verify(&t.secret, "not a hash"));
        // Two hashes of one secret differ (salted).
        assert_ne!(h, hash(&t.secret));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        for bad in [
            "",
            "cho_",
            "cho_abc",
            "cho__secret",
            "cho_id_",
            "xyz_id_secret",
            "cho_id_se cret",
        ] {
            assert_eq!(Token::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::Viewer);
        assert_eq!("operator".parse::<Role>().unwrap(), Role::Operator);
        assert_eq!(Role::Viewer.to_string(), "viewer");
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn passwords_are_long_and_plain() {
        let p = device_password();
        assert_eq!(p.len(), 32);
        assert!(p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
