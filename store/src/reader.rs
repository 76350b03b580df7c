//! A read-only database role for dashboards and SQL users (Grafana's PostgreSQL
//! data source): it may read the named reader views (migration 0007) and the
//! registry, nothing else, and its sessions are read-only with a statement
//! timeout, so a heavy panel cannot hold locks or run for ever beside ingestion.

use crate::error::StoreError;
use tokio_postgres::GenericClient;

/// What a reader role may select.
pub const READER_VIEWS: &[&str] = &[
    "readings",
    "readings_hourly",
    "readings_daily",
    "readings_latest",
    "alerts",
    "sensors",
    "metrics",
];

/// A role name as PostgreSQL would take it unquoted: so it is quoted safely and
/// means what the operator typed.
fn check_role(role: &str) -> Result<(), StoreError> {
    let ok = !role.is_empty()
        && role.len() <= 63
        && role.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && role
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Config(format!(
            "role {role:?}: use lower-case letters, digits and underscores (at most 63), starting with a letter"
        )))
    }
}

/// Creates `role` (LOGIN, no password: set one with `ALTER ROLE`) when it does not
/// exist, and grants it read access to the reader views only. Run again after a
/// migration adds views; granting twice changes nothing.
pub async fn grant_reader<C: GenericClient>(
    client: &C,
    role: &str,
    statement_timeout_s: u32,
) -> Result<bool, StoreError> {
    check_role(role)?;
    let exists = client
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role])
        .await?
        .is_some();
    if !exists {
        client
            .batch_execute(&format!("CREATE ROLE \"{role}\" LOGIN"))
            .await?;
    }
    let db: String = client
        .query_one("SELECT current_database()", &[])
        .await?
        .get(0);
    let db = db.replace('"', "\"\"");
    client
        .batch_execute(&format!(
            "GRANT CONNECT ON DATABASE \"{db}\" TO \"{role}\";
             GRANT USAGE ON SCHEMA public TO \"{role}\";
             GRANT SELECT ON {views} TO \"{role}\";
             ALTER ROLE \"{role}\" IN DATABASE \"{db}\" SET default_transaction_read_only = on;
             ALTER ROLE \"{role}\" IN DATABASE \"{db}\" SET statement_timeout = '{statement_timeout_s}s';",
            views = READER_VIEWS.join(", ")
        ))
        .await?;
    Ok(!exists)
}

#[cfg(test)]
mod tests {
    #[test]
    fn role_names_are_plain_identifiers() {
        for ok in ["grafana", "dash_2", "_ro"] {
            assert!(super::check_role(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Grafana",
            "a-b",
            "x\"; DROP TABLE sensors; --",
            "9lives",
            &"a".repeat(64),
        ] {
            assert!(super::check_role(bad).is_err(), "{bad}");
        }
    }
}
