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
