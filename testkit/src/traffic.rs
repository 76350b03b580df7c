//! Simulated traffic for tests: raw payloads and simulator messages published at
//! QoS 1, and the standard fixture of a hub holding a simulated fleet.

use crate::{unique, wait_for, Broker, Hub, TestDb};
use cityhub_sim::{FaultRates, Format, SimMessage};

/// Publishes raw payloads (topic, payload) at QoS 1 and waits for the broker's PUBACKs.
pub async fn publish_raw<T: AsRef<str>>(broker: &Broker, items: &[(T, Vec<u8>)]) {
    let msgs: Vec<SimMessage> = items
        .iter()
        .map(|(t, p)| SimMessage {
            topic: t.as_ref().to_owned(),
            payload: p.clone(),
            sensor: String::new(),
            kind: String::new(),
            format: Format::Native,
            time: chrono::Utc::now(),
            values: vec![],
            fault: None,
            event: None,
        })
        .collect();
    publish_sim(broker, &msgs).await;
}

/// Publishes simulator messages at QoS 1 and waits for the broker's PUBACKs.
pub async fn publish_sim(broker: &Broker, msgs: &[SimMessage]) {
    let r = cityhub_sim::publish(
        &broker.mqtt(),
        &unique("pub"),
        msgs,
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
    )
    .await
    .expect("publishing to the test broker");
    assert_eq!(r.acknowledged, msgs.len() as u64);
}

/// Rows the simulator's messages should produce (a duplicate adds none).
pub fn expected_rows(msgs: &[SimMessage]) -> i64 {
    msgs.iter()
        .filter(|m| m.fault != Some("duplicate"))
        .map(|m| m.values.len() as i64)
        .sum()
}

/// The first `count` messages of a simulated fleet of `per_kind` sensors per kind,
/// starting three days ago (so no timestamp is in the future).
pub fn sim_stream(
    seed: u64,
    per_kind: usize,
    count: usize,
    formats: &[Format],
    faults: FaultRates,
) -> Vec<SimMessage> {
    let catalog = cityhub_core::Settings::builtin()
        .unwrap()
        .catalog()
        .unwrap();
    let now = chrono::Utc::now();
    let opts = cityhub_sim::SimOptions {
        seed,
        start: now - chrono::Duration::days(3),
        fleet: cityhub_sim::FleetSpec::built_in(per_kind, 0.05),
        formats: formats.to_vec(),
        faults,
    };
    let msgs = cityhub_sim::generate(&opts, &catalog, count, now).unwrap();
    assert_eq!(
        msgs.len(),
        count,
        "the fleet could not produce {count} messages in three days"
    );
    msgs
}

/// The `href` of a document's link with relation `rel` (`next`, `prev`, `self`),
/// from its `links` array (OGC API, readings and indicator pages).
pub fn link(doc: &serde_json::Value, rel: &str) -> Option<String> {
    doc["links"]
        .as_array()?
        .iter()
        .find(|l| l["rel"] == rel)
        .map(|l| l["href"].as_str().expect("a link has an href").to_owned())
}

/// The admin token of [`fixture`] hubs.
pub const TOKEN: &str = "test-admin-token-0123456789";

pub struct Fixture {
    pub db: TestDb,
    pub broker: Broker,
    pub hub: Hub,
    pub http: reqwest::Client,
}

/// An in-process hub with 5 sensors per kind and 600 simulated messages stored, plus
/// one dead letter. `extra` settings as `CITYHUB_...` pairs.
pub async fn fixture(extra: &[(&str, &str)]) -> Fixture {
    fixture_with(extra, false).await
}

/// The same fixture around a `cityhub serve` process, for tests that read its log
/// (a panic there is in the log, not in the test's output).
pub async fn fixture_as_process(extra: &[(&str, &str)]) -> Fixture {
    fixture_with(extra, true).await
}

async fn fixture_with(extra: &[(&str, &str)], process: bool) -> Fixture {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let mut env = vec![
        ("CITYHUB_HTTP_ADMIN_TOKEN", TOKEN),
        ("CITYHUB_HTTP_RATE_LIMIT_PER_S", "0"),
    ];
    env.extend_from_slice(extra);
    let hub = if process {
        Hub::start(&db, &broker, "opendata", &env).await
    } else {
        Hub::start_in_process(&db, &broker, "opendata", &env).await
    };
    let msgs = sim_stream(11, 5, 600, &[Format::Native], FaultRates::default());
    publish_sim(&broker, &msgs).await;
    publish_raw(
        &broker,
        &[("cityhub/v1/waste_bin/bin-bad", b"{not json".to_vec())],
    )
    .await;
    let want = expected_rows(&msgs);
    wait_for(60, "the simulated rows", || {
        let db = &db;
        async move {
            db.observations().await >= want
                && db.count("SELECT count(*) FROM dead_letters").await >= 1
        }
    })
    .await;
    // Hourly and daily answers are compared with the rows: late ones reach them seconds after.
    crate::wait_for_aggregates(&db, 120).await;
    Fixture {
        db,
        broker,
        hub,
        http: reqwest::Client::new(),
    }
}

impl Fixture {
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.hub.url(path)).send().await.unwrap()
    }
    pub async fn json(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self.get(path).await;
        let code = r.status().as_u16();
        (code, r.json().await.unwrap_or(serde_json::Value::Null))
    }
}

/// A fresh database and broker, and an in-process hub on them with no rate limit.
pub async fn open_hub(name: &str) -> (TestDb, Broker, Hub) {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let hub = Hub::start_in_process(
        &db,
        &broker,
        name,
        &[("CITYHUB_HTTP_RATE_LIMIT_PER_S", "0")],
    )
    .await;
    (db, broker, hub)
}

/// Waits (at most `secs`) until the database holds `n` observations.
pub async fn wait_for_rows(db: &TestDb, n: i64, secs: u64, what: &str) {
    wait_for(secs, what, || async move { db.observations().await >= n }).await;
}

/// Every message of a simulated fleet up to `until`, with the held-back ones.
pub fn fleet_messages(
    opts: &cityhub_sim::SimOptions,
    until: chrono::DateTime<chrono::Utc>,
) -> Vec<SimMessage> {
    let catalog = cityhub_core::Settings::builtin()
        .unwrap()
        .catalog()
        .unwrap();
    cityhub_sim::generate(opts, &catalog, usize::MAX, until).unwrap()
}
