//! The SensorThings API against the hub's own readings API, for the same data, each
//! pair asked alternately by one client: a day of one Datastream, the latest
//! observation of every Datastream of a kind, and a `$filter` on the result over a
//! month (the native API has no filter on values: its client downloads the month and
//! filters). No ingest load runs meanwhile: the ratio is the STA layer's own cost.

use crate::api::{place_bins, publish_history, query_value, wait_until, DAYS};
use crate::setup::{hub, percentiles, spec};
use anyhow::{bail, Result};
use chrono::Utc;
use cityhub_sim::load;
use cityhub_testkit::{Broker, TestDb};
use std::time::{Duration, Instant};

/// Bins with latest values (3 metrics each).
pub const BINS: u64 = 1_000;

pub struct Pair {
    pub what: &'static str,
    /// What each answer holds, the same for both (checked).
    pub detail: String,
    pub native_ms: (f64, f64, usize),
    pub sta_ms: (f64, f64, usize),
}

pub struct StaLatency {
    pub backend: String,
    pub pairs: Vec<Pair>,
}

pub async fn sta_latency(admin: &str, rounds: usize) -> Result<StaLatency> {
    let db = TestDb::on(admin).await;
    db.migrate().await?;
    place_bins(&db, BINS)?;
    let broker = Broker::start();
    let hub = hub(&db, &broker, &[("CITYHUB_HTTP_RATE_LIMIT_PER_S", "0")]).await;
    let now = Utc::now();
    publish_history(&broker, now).await?;
    load::run(&broker.url(), &spec(BINS, BINS, 3, None, None)).await?;
    wait_until(
        Duration::from_secs(120),
        "the history and the bins' readings were not stored",
        || async {
            db.count("SELECT count(*) FROM observations").await >= DAYS * 288 + BINS as i64 * 3
        },
    )
    .await?;
    let ds: i64 = db
        .client()
        .await
        .query_one(
            "SELECT s.id::bigint * 32768 + m.id FROM sensors s, metrics m
             WHERE s.external_id = 'bin-history' AND m.kind = 'waste_bin' AND m.name = 'fill_level'",
            &[],
        )
        .await?
        .get(0);
    let base = hub.url("");
    let http = reqwest::Client::new();
    let (day_from, day_to) = (
        now - chrono::Duration::days(2),
        now - chrono::Duration::days(1),
    );
    let month = now - chrono::Duration::days(DAYS);
    let sta_time = |t: chrono::DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let q = |s: &str| -> String { url::form_urlencoded::byte_serialize(s.as_bytes()).collect() };
    let native_readings = |from, to, limit| {
        format!(
            "{base}/api/v1/sensors/bin-history/readings?metric=fill_level&from={}&to={}&limit={limit}",
            query_value(from),
            query_value(to)
        )
    };
    let day_native = native_readings(day_from, day_to, 1000);
    let day_sta = format!(
        "{base}/sta/v1.1/Datastreams({ds})/Observations?$filter={}&$orderby=phenomenonTime&$top=1000",
        q(&format!(
            "phenomenonTime ge {} and phenomenonTime lt {}",
            sta_time(day_from),
            sta_time(day_to)
        ))
    );
    let latest_native = format!("{base}/api/v1/sensors?kind=waste_bin");
    let latest_sta = format!(
        "{base}/sta/v1.1/Datastreams?$filter={}&$expand={}&$top=1000",
        q("Thing/properties/kind eq 'waste_bin'"),
        q("Observations($orderby=phenomenonTime desc;$top=1)")
    );
    let month_native = native_readings(month, now, 10_000);
    let month_sta = format!(
        "{base}/sta/v1.1/Datastreams({ds})/Observations?$filter={}&$top=1000",
        q(&format!(
            "result gt 90 and phenomenonTime ge {}",
            sta_time(month)
        ))
    );

    // Each function fetches every page and returns the entities counted as the
    // question asks them.
    let get = |url: String| {
        let http = http.clone();
        async move {
            let v: serde_json::Value = http
                .get(&url)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            anyhow::Ok(v)
        }
    };
    let sta_all = |url: String| async move {
        let mut next = Some(url);
        let mut all = Vec::new();
        while let Some(u) = next {
            let v = get(u).await?;
            all.extend(v["value"].as_array().cloned().unwrap_or_default());
            next = v["@iot.nextLink"].as_str().map(str::to_owned);
        }
        anyhow::Ok(all)
    };
    let mut pairs = Vec::new();

    // A day of one Datastream.
    let (mut n_ms, mut s_ms) = (Vec::new(), Vec::new());
    let mut sizes = (0, 0);
    for _ in 0..rounds {
        let t = Instant::now();
        let v = get(day_native.clone()).await?;
        n_ms.push(ms(t));
        sizes.0 = v["readings"].as_array().map_or(0, Vec::len);
        let t = Instant::now();
        let v = sta_all(day_sta.clone()).await?;
        s_ms.push(ms(t));
        sizes.1 = v.len();
    }
    same("a day of one Datastream", sizes)?;
    pairs.push(Pair {
        what: "a day of one Datastream",
        detail: format!("{} readings of one bin's fill level", sizes.0),
        native_ms: percentiles(n_ms),
        sta_ms: percentiles(s_ms),
    });

    // The latest observation of every Datastream of a kind.
    let (mut n_ms, mut s_ms) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        let v = get(latest_native.clone()).await?;
        n_ms.push(ms(t));
        sizes.0 = v["features"].as_array().map_or(0, |f| {
            f.iter()
                .map(|f| f["properties"]["latest"].as_object().map_or(0, |l| l.len()))
                .sum()
        });
        let t = Instant::now();
        let v = sta_all(latest_sta.clone()).await?;
        s_ms.push(ms(t));
        sizes.1 = v
            .iter()
            .filter(|d| d["Observations"].as_array().is_some_and(|o| o.len() == 1))
            .count();
    }
    same("the latest of every Datastream of a kind", sizes)?;
    pairs.push(Pair {
        what: "the latest of every Datastream of a kind",
        detail: format!(
            "{} Datastreams of {} waste bins (STA: {} pages of 1,000, expanded with their newest Observation; native: the kind's sensor listing with latest values)",
            sizes.0,
            BINS + 1,
            sizes.0.div_ceil(1000)
        ),
        native_ms: percentiles(n_ms),
        sta_ms: percentiles(s_ms),
    });

    // A filter on the result over a month.
    let (mut n_ms, mut s_ms) = (Vec::new(), Vec::new());
    let mut month_rows = 0;
    for _ in 0..rounds {
        let t = Instant::now();
        let v = get(month_native.clone()).await?;
        let rows = v["readings"].as_array().cloned().unwrap_or_default();
        month_rows = rows.len();
        sizes.0 = rows
            .iter()
            .filter(|r| r["value"].as_f64().is_some_and(|x| x > 90.0))
            .count();
        n_ms.push(ms(t));
        let t = Instant::now();
        let v = sta_all(month_sta.clone()).await?;
        s_ms.push(ms(t));
        sizes.1 = v.len();
    }
    same("a filter on the result over a month", sizes)?;
    pairs.push(Pair {
        what: "a $filter on the result over a month",
        detail: format!(
            "{} of {month_rows} readings of one bin above 90 (native: the month downloaded and filtered by the client)",
            sizes.0
        ),
        native_ms: percentiles(n_ms),
        sta_ms: percentiles(s_ms),
    });

    Ok(StaLatency {
        backend: crate::setup::backend(&db).await?,
        pairs,
    })
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

fn same(what: &str, (native, sta): (usize, usize)) -> Result<()> {
    if native != sta || native == 0 {
        bail!("{what}: the native API gave {native} entities, STA {sta}");
    }
    Ok(())
}
