use thiserror::Error;

/// Errors of the storage layer.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("database: {}", pg_message(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database configuration: {0}")]
    Config(String),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("TimescaleDB is required (store.timescaledb = \"require\") but {0}")]
    TimescaleMissing(String),
    #[error("the database was set up for {stored} but this hub would use {wanted}; set store.timescaledb accordingly")]
    BackendMismatch { stored: String, wanted: String },
    #[error("the database schema is at version {db}, newer than this hub knows ({known}); upgrade the hub")]
    SchemaTooNew { db: i32, known: i32 },
    #[error("import: {0}")]
    Import(String),
    #[error("sensor {sensor:?} is registered as kind {registered:?}; a sensor keeps its kind")]
    KindConflict { sensor: String, registered: String },
    #[error("{0} already exists")]
    Exists(String),
    #[error("the waiting client gave up before the commit; nothing was stored")]
    Abandoned,
    #[error("the database did not answer within {0} s")]
    Timeout(u64),
}

impl StoreError {
    /// True when the connection itself is gone, so a new one is needed before retrying.
    pub fn is_connection_lost(&self) -> bool {
        match self {
            StoreError::Db(e) => e.is_closed() || e.as_db_error().is_none(),
            StoreError::Pool(_) => true,
            _ => false,
        }
    }
}

impl StoreError {
    /// True when PostgreSQL cancelled the statement: it ran past the session's
    /// `statement_timeout` (SQLSTATE 57014).
    pub fn is_timeout(&self) -> bool {
        matches!(self, StoreError::Db(e) if e.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED))
    }

    /// True when the data, not the database's state, is at fault (data exceptions,
    /// integrity violations, program limits): retrying the same rows fails again,
    /// so the batch must be split to find the message at fault.
    pub fn is_permanent(&self) -> bool {
        match self {
            StoreError::Db(e) => e
                .code()
                .is_some_and(|c| matches!(c.code().get(..2), Some("22" | "23" | "54"))),
            _ => false,
        }
    }

    /// A race with another session over the same catalog rows or data (serialization
    /// failure, deadlock, or TimescaleDB's scheduler updating a job row a migration
    /// drops: `tuple concurrently updated`): the same statements succeed when retried.
    pub fn is_concurrent_update(&self) -> bool {
        let StoreError::Db(e) = self else {
            return false;
        };
        let Some(db) = e.as_db_error() else {
            return false;
        };
        matches!(db.code().code(), "40001" | "40P01")
            || (db.code().code() == "XX000" && db.message().starts_with("tuple concurrently"))
    }

    /// The server's own message, for a dead letter's reason (no connection details).
    pub fn server_message(&self) -> String {
        match self {
            StoreError::Db(e) => match e.as_db_error() {
                Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
                None => e.to_string(),
            },
            other => other.to_string(),
        }
    }
}

/// tokio-postgres prints server errors as just "db error"; show the server's message and code.
fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({}: {})", e, db.code().code(), db.message()),
        None => match std::error::Error::source(e) {
            Some(src) => format!("{e}: {src}"),
            None => e.to_string(),
        },
    }
}
