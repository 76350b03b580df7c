//! A database of its own for each test (or bench measurement), dropped after.

use crate::unique;
use tokio_postgres::NoTls;

/// The server tests create their databases on (trust auth on CI machines).
pub fn admin_url() -> String {
    std::env::var("CITYHUB_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// `CITYHUB_TEST_TIMESCALEDB` (`auto` when unset): what the tests ask of the
/// backend; `require` makes every hub, and every private cluster, use TimescaleDB.
pub fn timescaledb_mode() -> String {
    std::env::var("CITYHUB_TEST_TIMESCALEDB").unwrap_or_else(|_| "auto".into())
}

/// The `shared_preload_libraries` a test's private cluster needs for [`timescaledb_mode`].
pub fn test_preload() -> &'static [&'static str] {
    if timescaledb_mode() == "require" {
        &["timescaledb"]
    } else {
        &[]
    }
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (c, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(conn);
    Ok(c)
}

/// A fresh database on [`admin_url`]'s server, dropped (connections and all) on drop.
pub struct TestDb {
    pub name: String,
    pub url: String,
    admin: String,
}

impl TestDb {
    pub async fn new() -> Self {
        Self::on(&admin_url()).await
    }

    /// A fresh database on the server of `admin` (a URL to any database there).
    pub async fn on(admin: &str) -> Self {
        let name = unique("cityhub_t");
        connect(admin)
            .await
            .expect("connect to the test PostgreSQL")
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("CREATE DATABASE");
        let mut u = url::Url::parse(admin).expect("the admin URL is a URL");
        u.set_path(&name);
        u.set_query(Some("sslmode=disable"));
        Self {
            name,
            url: u.to_string(),
            admin: admin.to_owned(),
        }
    }

    /// A connection to the server's admin database.
    pub async fn admin(&self) -> tokio_postgres::Client {
        connect(&self.admin)
            .await
            .expect("connect to the admin database")
    }

    /// Opens or closes the database to new connections (existing ones stay).
    pub async fn allow_connections(&self, allow: bool) {
        self.admin()
            .await
            .batch_execute(&format!(
                "ALTER DATABASE {} ALLOW_CONNECTIONS {allow}",
                self.name
            ))
            .await
            .unwrap();
    }

    /// Ends every connection the hub has to this database; returns how many.
    pub async fn terminate_hub_connections(&self) -> i64 {
        self.admin()
            .await
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                 WHERE datname = $1 AND application_name = 'cityhub'",
                &[&self.name],
            )
            .await
            .unwrap()
            .get(0)
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.url)
            .await
            .expect("connect to the test database")
    }

    /// The first column of the one row `sql` returns.
    pub async fn value<T: for<'r> tokio_postgres::types::FromSql<'r>>(&self, sql: &str) -> T {
        self.client()
            .await
            .query_one(sql, &[])
            .await
            .unwrap()
            .get(0)
    }

    pub async fn count(&self, sql: &str) -> i64 {
        self.value(sql).await
    }

    /// The text in the first column of the one row `sql` returns.
    pub async fn text(&self, sql: &str) -> String {
        self.value(sql).await
    }

    /// Applies the hub's schema (as `cityhub migrate` does), for tools that write
    /// without a hub.
    #[cfg(feature = "hub")]
    pub async fn migrate(&self) -> Result<(), cityhub_store::StoreError> {
        let backend = timescaledb_mode();
        let settings = cityhub_core::Settings::load_with_vars(
            None,
            [
                ("CITYHUB_DATABASE_URL", self.url.as_str()),
                ("CITYHUB_STORE_TIMESCALEDB", backend.as_str()),
            ],
        )
        .expect("built-in settings with a database URL");
        let catalog = settings.catalog().expect("the built-in catalogue");
        cityhub_store::Store::open(&settings, &catalog).await?;
        Ok(())
    }

    /// Takes `table` in ACCESS EXCLUSIVE mode on a connection of its own, as a
    /// slow migration or an operator's long transaction would; held until released.
    pub async fn lock(&self, table: &str) -> TableLock {
        let client = self.client().await;
        client
            .batch_execute(&format!(
                "BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"
            ))
            .await
            .expect("locking the table");
        TableLock { client }
    }

    pub async fn observations(&self) -> i64 {
        self.count("SELECT count(*) FROM observations").await
    }

    /// Every value stored for sensor `external_id`, oldest first.
    pub async fn values_of(&self, external_id: &str) -> Vec<f64> {
        self.client()
            .await
            .query(
                "SELECT o.value FROM observations o JOIN sensors s ON s.id = o.sensor_id
                 WHERE s.external_id = $1 ORDER BY o.time, o.metric_id",
                &[&external_id],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// A region's fleet straight into the registry: `n` waste bins `bin-000001`... on
    /// a grid of 1,000 per row from (9.9, 45.1), each with a latest value of every
    /// metric a minute old; every `alarm_every`th bin 95 % full, the rest 42.5 %.
    /// Before the hub starts, as a city's fleet is: a hub loads the fleet as it starts,
    /// and rows written behind its back reach its listing with the next reload only.
    pub async fn register_bins(&self, n: i32, alarm_every: i32) {
        self.client()
            .await
            .batch_execute(&format!(
                "INSERT INTO sensors (external_id, kind, name, lon, lat, properties, first_seen, last_seen)
                 SELECT format('bin-%s', lpad(g::text, greatest(6, length('{n}')), '0')), 'waste_bin', format('Bin %s', g),
                        9.9 + (g % 1000) * 0.0003, 45.1 + (g / 1000) * 0.0003,
                        jsonb_build_object('stream', 'paper'), now() - INTERVAL '1 day', now()
                 FROM generate_series(1, {n}) g;
                 INSERT INTO latest (sensor_id, metric_id, time, value)
                 SELECT s.id, m.id, now() - INTERVAL '1 minute',
                        CASE WHEN m.name = 'fill_level' AND s.id % {alarm_every} = 0 THEN 95 ELSE 42.5 END
                 FROM sensors s JOIN metrics m ON m.kind = s.kind
                 WHERE s.external_id LIKE 'bin-%';"
            ))
            .await
            .expect("registering the fleet");
    }
}

/// A table lock held by a transaction of its own; [`TableLock::release`] ends it
/// (dropping it does too, when its connection closes).
pub struct TableLock {
    client: tokio_postgres::Client,
}

impl TableLock {
    pub async fn release(self) {
        self.client
            .batch_execute("COMMIT")
            .await
            .expect("releasing the lock");
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // Drop runs inside a runtime: the DROP gets a thread and a runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(c) = connect(&admin).await {
                    let _ = c
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            })
        })
        .join();
    }
}
