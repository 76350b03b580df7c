//! Bytes per reading of the simulated Cremona fleet: `days` of simulated time sent
//! through the hub into a fresh database, measured as written and, on TimescaleDB,
//! after every chunk is compressed.

use crate::setup::hub;
use anyhow::Result;
use cityhub_testkit::{Broker, TestDb};
use std::time::Duration;

pub struct Storage {
    pub backend: String,
    pub readings: i64,
    pub before: f64,
    /// Compressed (TimescaleDB only).
    pub after: Option<f64>,
}

async fn size(c: &tokio_postgres::Client, timescale: bool) -> Result<i64> {
    let sql = if timescale {
        "SELECT hypertable_size('observations_data')"
    } else {
        "SELECT sum(pg_total_relation_size(relid))::bigint FROM pg_partition_tree('observations_data')"
    };
    Ok(c.query_one(sql, &[]).await?.get(0))
}

pub async fn fleet(admin: &str, days: u32) -> Result<Storage> {
    let db = TestDb::on(admin).await;
    let broker = Broker::start();
    let _hub = hub(&db, &broker, &[]).await;
    crate::setup::simulate_fleet(
        &db,
        &broker,
        &[
            &format!("--start=-{days}d"),
            "--duration",
            &format!("{days}d"),
            "--speedup",
            "1000000",
        ],
        None,
        Duration::from_secs(300),
    )
    .await?;
    let c = db.client().await;
    let backend = crate::setup::backend(&db).await?;
    let timescale = backend == "timescaledb";
    c.batch_execute("VACUUM ANALYZE observations_data").await?;
    let readings = db.observations().await;
    let before = size(&c, timescale).await? as f64 / readings.max(1) as f64;
    let after = if timescale {
        c.batch_execute(
            "SELECT compress_chunk(ch, if_not_compressed => true) FROM show_chunks('observations_data') ch",
        )
        .await?;
        Some(size(&c, true).await? as f64 / readings.max(1) as f64)
    } else {
        None
    };
    Ok(Storage {
        backend,
        readings,
        before,
        after,
    })
}
