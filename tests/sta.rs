//! OGC SensorThings API 1.1 (`/sta/v1.1`) over a small known fleet: the resource
//! paths, query options, links and paging of OGC 18-088, each answer checked.

use cityhub_testkit::*;
use serde_json::{json, Value};

/// Two waste bins with a position and an air-quality station, with known readings:
/// bin-a's fill levels 10, 20, ..., 60 one minute apart ending at 10:05 UTC today.
async fn fleet(broker: &Broker, db: &TestDb) -> chrono::DateTime<chrono::Utc> {
    let day = chrono::Utc::now().date_naive() - chrono::Days::new(1);
    let t0 = day.and_hms_opt(10, 0, 0).unwrap().and_utc();
    let mut items = Vec::new();
    for i in 0..6 {
        let t = t0 + chrono::Duration::minutes(i);
        items.push((
            "cityhub/v1/waste_bin/bin-a".to_owned(),
            json!({"ts": t.to_rfc3339(), "values": {"fill_level": 10.0 * (i + 1) as f64, "battery": 90},
                   "location": {"lat": 45.1335, "lon": 10.0255}})
            .to_string()
            .into_bytes(),
        ));
    }
    items.push((
        "cityhub/v1/waste_bin/bin-b".to_owned(),
        json!({"ts": t0.to_rfc3339(), "values": {"fill_level": 95.0},
               "location": {"lat": 45.20, "lon": 10.10}})
        .to_string()
        .into_bytes(),
    ));
    items.push((
        "cityhub/v1/air_quality/aq-1".to_owned(),
        json!({"ts": t0.to_rfc3339(), "values": {"pm10": 31.5, "no2": 40.0}})
            .to_string()
            .into_bytes(),
    ));
    publish_raw(broker, &items).await;
    wait_for(30, "the fleet's readings", || async {
        db.observations().await >= 6 * 2 + 1 + 2
    })
    .await;
    t0
}

/// The results of a collection of Observations, in order.
fn results(v: &Value) -> Vec<f64> {
    v["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["result"].as_f64().unwrap())
        .collect()
}

struct Sta {
    http: reqwest::Client,
    root: String,
}

impl Sta {
    /// GETs `path` (under /sta/v1.1) and returns the status and JSON body.
    async fn get(&self, path: &str) -> (u16, Value) {
        let url = if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{path}", self.root)
        };
        let r = self.http.get(&url).send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    }

    async fn ok(&self, path: &str) -> Value {
        let (s, v) = self.get(path).await;
        assert_eq!(s, 200, "{path}: {v}");
        v
    }

    async fn refused(&self, path: &str) -> String {
        let (s, v) = self.get(path).await;
        assert_eq!(s, 400, "{path}: {v}");
        v["message"].as_str().unwrap_or_default().to_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensorthings_paths_options_and_links() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let hub = Hub::build(&db, &broker, "sta").start().await;
    let t0 = fleet(&broker, &db).await;
    let sta = Sta {
        http: reqwest::Client::new(),
        root: hub.url("/sta/v1.1"),
    };

    // 1. The service root lists the eight entity sets and the conformance classes.
    let root = sta.ok("").await;
    assert_eq!(root["value"].as_array().unwrap().len(), 8, "{root}");
    assert!(root["serverSettings"]["conformance"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c.as_str().unwrap().ends_with("/req/request-data")));

    // 2. Things, with @iot.count, links and properties from the registry.
    let things = sta.ok("/Things?$count=true&$orderby=name").await;
    assert_eq!(things["@iot.count"], 3, "{things}");
    let names: Vec<&str> = things["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["aq-1", "bin-a", "bin-b"]);
    let bin_a = &things["value"][1];
    let id = bin_a["@iot.id"].as_i64().unwrap();
    assert_eq!(bin_a["properties"]["kind"], "waste_bin");
    assert_eq!(bin_a["@iot.selfLink"], format!("{}/Things({id})", sta.root));
    assert_eq!(
        bin_a["Datastreams@iot.navigationLink"],
        format!("{}/Things({id})/Datastreams", sta.root)
    );

    // 3. One entity, a property and its raw $value.
    let one = sta.ok(&format!("/Things({id})")).await;
    assert_eq!(one["name"], "bin-a");
    assert_eq!(
        sta.ok(&format!("/Things({id})/name")).await,
        json!({"name": "bin-a"})
    );
    let raw = sta
        .http
        .get(format!("{}/Things({id})/name/$value", sta.root))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.text().await.unwrap(), "bin-a");

    // 4. Navigation: its Datastreams (fill_level, battery), Location, and back.
    let ds = sta
        .ok(&format!("/Things({id})/Datastreams?$orderby=name"))
        .await;
    let streams = ds["value"].as_array().unwrap();
    assert_eq!(streams.len(), 2, "{ds}");
    let fill = streams
        .iter()
        .find(|d| d["properties"]["metric"] == "fill_level")
        .unwrap();
    let fill_id = fill["@iot.id"].as_i64().unwrap();
    assert_eq!(fill["unitOfMeasurement"]["symbol"], "%");
    assert_eq!(
        fill["unitOfMeasurement"]["definition"],
        "http://unitsofmeasure.org/ucum.html#%"
    );
    assert_eq!(
        fill["observationType"],
        "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Measurement"
    );
    let first = t0.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
    let last = (t0 + chrono::Duration::minutes(5))
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string();
    assert_eq!(fill["phenomenonTime"], format!("{first}/{last}"), "{fill}");
    assert_eq!(
        fill["observedArea"]["coordinates"],
        json!([10.0255, 45.1335])
    );
    let locs = sta.ok(&format!("/Things({id})/Locations")).await;
    assert_eq!(locs["value"][0]["location"]["type"], "Point");
    let thing = sta.ok(&format!("/Datastreams({fill_id})/Thing")).await;
    assert_eq!(thing["@iot.id"], id);
    let op = sta
        .ok(&format!("/Datastreams({fill_id})/ObservedProperty"))
        .await;
    assert_eq!(op["name"], "fill_level");
    let sensor = sta.ok(&format!("/Datastreams({fill_id})/Sensor")).await;
    assert_eq!(sensor["properties"]["kind"], "waste_bin");
    let chained = sta
        .ok(&format!("/Datastreams({fill_id})/Thing/Locations"))
        .await;
    assert_eq!(chained["value"].as_array().unwrap().len(), 1);

    // 5. Observations of a Datastream: paging with nextLink, $filter on result and time.
    let obs = sta
        .ok(&format!(
            "/Datastreams({fill_id})/Observations?$top=4&$count=true"
        ))
        .await;
    assert_eq!(obs["@iot.count"], 6);
    assert_eq!(obs["value"].as_array().unwrap().len(), 4);
    let first_page = results(&obs);
    assert_eq!(first_page, [10.0, 20.0, 30.0, 40.0]);
    let next = obs["@iot.nextLink"].as_str().unwrap().to_owned();
    let counted = sta
        .ok(&format!(
            "/Datastreams({fill_id})/Observations?$top=0&$count=true"
        ))
        .await;
    assert_eq!(counted["@iot.count"], 6);
    assert!(counted["value"].as_array().unwrap().is_empty());
    assert!(counted.get("@iot.nextLink").is_none(), "{counted}");
    let rest = sta.ok(&next).await;
    assert_eq!(rest["value"].as_array().unwrap().len(), 2, "{rest}");
    assert!(rest.get("@iot.nextLink").is_none());
    let f = sta
        .ok(&format!(
            "/Datastreams({fill_id})/Observations?$filter=result ge 30 and result lt 60&$orderby=result desc"
        ))
        .await;
    let r: Vec<f64> = results(&f);
    assert_eq!(r, [50.0, 40.0, 30.0]);
    let since =
        (t0 + chrono::Duration::minutes(4)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let f = sta
        .ok(&format!(
            "/Datastreams({fill_id})/Observations?$filter=phenomenonTime ge {since}"
        ))
        .await;
    assert_eq!(f["value"].as_array().unwrap().len(), 2, "{f}");
    // Arithmetic and functions.
    let f = sta
        .ok(&format!("/Datastreams({fill_id})/Observations?$filter=result mod 20 eq 0 and minute(phenomenonTime) ge 2"))
        .await;
    let r: Vec<f64> = results(&f);
    assert_eq!(r, [40.0, 60.0]);

    // 6. One Observation by its id, and its navigation.
    let o_id = obs["value"][0]["@iot.id"].as_str().unwrap().to_owned();
    let o = sta.ok(&format!("/Observations('{o_id}')")).await;
    assert_eq!(o["result"], 10.0);
    let o_ds = sta.ok(&format!("/Observations('{o_id}')/Datastream")).await;
    assert_eq!(o_ds["@iot.id"], fill_id);
    let foi = sta
        .ok(&format!("/Observations('{o_id}')/FeatureOfInterest"))
        .await;
    assert_eq!(foi["feature"]["coordinates"], json!([10.0255, 45.1335]));

    // 7. Observations filtered across Datastreams by navigation paths.
    let f = sta
        .ok("/Observations?$filter=Datastream/Thing/name eq 'bin-b'")
        .await;
    assert_eq!(f["value"].as_array().unwrap().len(), 1, "{f}");
    assert_eq!(f["value"][0]["result"], 95.0);
    let f = sta
        .ok(&format!(
            "/Observations?$filter=Datastream/id eq {fill_id} and result gt 50"
        ))
        .await;
    assert_eq!(f["value"][0]["result"], 60.0);
    let f = sta
        .ok("/Datastreams?$filter=ObservedProperty/name eq 'pm10'")
        .await;
    assert_eq!(f["value"].as_array().unwrap().len(), 1, "{f}");

    // 8. Geo: within a polygon around bin-a, and by distance (degrees, as FROST).
    let f = sta
        .ok("/Locations?$filter=st_within(location, geography'POLYGON((10 45.1, 10.05 45.1, 10.05 45.15, 10 45.15, 10 45.1))')")
        .await;
    assert_eq!(f["value"].as_array().unwrap().len(), 1, "{f}");
    let f = sta
        .ok("/Things?$filter=geo.distance(Locations/location, geography'POINT(10.10 45.20)') lt 0.01")
        .await;
    assert_eq!(f["value"].as_array().unwrap().len(), 1, "{f}");
    assert_eq!(f["value"][0]["name"], "bin-b");

    // 9. $expand with nested options, and $select.
    let e = sta
        .ok(&format!(
            "/Things({id})?$select=name&$expand=Datastreams($select=name;$filter=ObservedProperty/name eq 'fill_level';$expand=Observations($orderby=phenomenonTime desc;$top=1;$select=result))"
        ))
        .await;
    assert_eq!(e["name"], "bin-a");
    assert!(e.get("properties").is_none(), "{e}");
    let streams = e["Datastreams"].as_array().unwrap();
    assert_eq!(streams.len(), 1, "{e}");
    let latest = streams[0]["Observations"][0].as_object().unwrap();
    assert_eq!(latest.len(), 1, "{e}");
    assert_eq!(latest["result"].as_f64(), Some(60.0));
    let e = sta
        .ok("/Datastreams?$expand=Thing,ObservedProperty&$top=1")
        .await;
    assert!(e["value"][0]["Thing"]["name"].is_string(), "{e}");
    assert!(e["value"][0]["ObservedProperty"]["name"].is_string(), "{e}");

    // 10. dataArray.
    let d = sta
        .ok(&format!("/Datastreams({fill_id})/Observations?$resultFormat=dataArray&$select=id,phenomenonTime,result"))
        .await;
    assert_eq!(
        d["value"][0]["components"],
        json!(["id", "phenomenonTime", "result"])
    );
    assert_eq!(d["value"][0]["dataArray@iot.count"], 6);
    assert_eq!(d["value"][0]["dataArray"][5][2], 60.0);
    assert_eq!(
        d["value"][0]["Datastream@iot.navigationLink"],
        format!("{}/Datastreams({fill_id})", sta.root)
    );

    // 11. What cannot be served is refused, saying why; what does not exist is 404.
    for (path, why) in [
        ("/Things?$filter=name eq", "ends too early"),
        ("/Things?$filter=name gt 3", "compare"),
        ("/Things?$bogus=1", "unknown query option"),
        (
            "/Things?$filter=st_touches(Locations/location, geography'POINT(1 2)')",
            "not served",
        ),
        ("/Observations?$filter=parameters/x eq 1", "parameters"),
    ] {
        let message = sta.refused(path).await;
        assert!(message.contains(why), "{path}: {message}");
    }
    assert!(sta.refused("/Things(abc)").await.contains("integers"));
    assert_eq!(sta.get("/Things(999999)").await.0, 404);
    assert_eq!(sta.get("/Nothings").await.0, 404);
    drop(hub);

    // An answer holds at most sta.max_entities, expansions included.
    let small = Hub::build(&db, &broker, "sta-small")
        .set(|s| s.sta.max_entities = std::num::NonZeroU32::new(10).unwrap())
        .start()
        .await;
    let sta = Sta {
        http: reqwest::Client::new(),
        root: small.url("/sta/v1.1"),
    };
    let fits = sta.ok("/Things?$expand=Datastreams").await;
    assert_eq!(fits["value"].as_array().unwrap().len(), 3);
    let message = sta
        .refused("/Things?$expand=Datastreams($expand=Observations)")
        .await;
    assert!(message.contains("more than 10 entities"), "{message}");
}

/// A sensor that moves: one HistoricalLocation per position it has had, each with
/// its own Location; the Thing's Location is where it is now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sensor_that_moves_has_a_historical_location_for_each_position() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let hub = Hub::build(&db, &broker, "sta-moves").start().await;
    let sta = Sta {
        http: reqwest::Client::new(),
        root: hub.url("/sta/v1.1"),
    };
    let t0 = chrono::SubsecRound::trunc_subsecs(chrono::Utc::now() - chrono::Duration::hours(3), 0);
    let at = |h: i64, lon: f64| {
        (
            "cityhub/v1/waste_bin/bin-m".to_owned(),
            json!({"ts": (t0 + chrono::Duration::hours(h)).to_rfc3339(), "values": {"fill_level": 10.0 * h as f64},
                   "location": {"lat": 45.13, "lon": lon}})
            .to_string()
            .into_bytes(),
        )
    };
    // Each message on its own, in order: registered at 10.02, moved to 10.05 an hour
    // later, seen there again (no move).
    for (n, m) in [at(0, 10.02), at(1, 10.05), at(2, 10.05)]
        .into_iter()
        .enumerate()
    {
        publish_raw(&broker, &[m]).await;
        wait_for(30, "the reading stored", || async {
            db.observations().await > n as i64
        })
        .await;
    }
    let things = sta
        .ok("/Things?$filter=properties/sensorId eq 'bin-m'")
        .await;
    let thing = things["value"][0]["@iot.id"].clone();
    let hist = sta
        .ok(&format!(
            "/Things({thing})/HistoricalLocations?$orderby=time&$expand=Locations"
        ))
        .await;
    let hist = hist["value"].as_array().unwrap();
    assert_eq!(hist.len(), 2, "{hist:?}");
    let time =
        |v: &Value| chrono::DateTime::parse_from_rfc3339(v["time"].as_str().unwrap()).unwrap();
    assert_eq!(time(&hist[0]), t0);
    assert_eq!(time(&hist[1]), t0 + chrono::Duration::hours(1));
    let lon = |v: &Value| v["location"]["coordinates"][0].as_f64().unwrap();
    assert_eq!(lon(&hist[0]["Locations"][0]), 10.02);
    assert_eq!(lon(&hist[1]["Locations"][0]), 10.05);
    // Where it is now; the old place still leads to its Thing.
    let now = sta.ok(&format!("/Things({thing})/Locations")).await;
    assert_eq!(now["value"].as_array().unwrap().len(), 1, "{now}");
    assert_eq!(lon(&now["value"][0]), 10.05);
    let old = hist[0]["Locations"][0]["@iot.id"].clone();
    let of = sta.ok(&format!("/Locations({old})/Things")).await;
    assert_eq!(of["value"][0]["@iot.id"], thing);
    let near_old = sta
        .ok("/Locations?$filter=st_within(location, geography'POLYGON((10.01 45.12, 10.03 45.12, 10.03 45.14, 10.01 45.14, 10.01 45.12))')")
        .await;
    assert_eq!(near_old["value"].as_array().unwrap().len(), 1, "{near_old}");
    assert_eq!(near_old["value"][0]["@iot.id"], old);
}

/// An Observation by its id under its Datastream, far past the first page: found
/// (the membership check once listed only the first 1,000 and answered 404).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observation_past_the_first_thousand_is_found_under_its_datastream() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let hub = Hub::build(&db, &broker, "sta-deep").start().await;
    let sta = Sta {
        http: reqwest::Client::new(),
        root: hub.url("/sta/v1.1"),
    };
    let t0 = chrono::SubsecRound::trunc_subsecs(chrono::Utc::now() - chrono::Duration::days(1), 0);
    let readings: Vec<Value> = (0..1200)
        .map(|i| json!({"ts": (t0 + chrono::Duration::seconds(i)).to_rfc3339(), "values": {"fill_level": (i % 100) as f64}}))
        .collect();
    // Two messages: one would pass ingest.max_payload_bytes.
    let msgs: Vec<(&str, Vec<u8>)> = readings
        .chunks(600)
        .map(|c| {
            (
                "cityhub/v1/waste_bin/bin-deep",
                json!({ "readings": c }).to_string().into_bytes(),
            )
        })
        .collect();
    publish_raw(&broker, &msgs).await;
    wait_for(30, "1,200 readings", || async {
        db.observations().await >= 1200
    })
    .await;
    let ds = sta
        .ok("/Datastreams?$filter=ObservedProperty/name eq 'fill_level'")
        .await;
    let ds = ds["value"][0]["@iot.id"].clone();
    let last = sta
        .ok(&format!(
            "/Datastreams({ds})/Observations?$orderby=phenomenonTime desc&$top=1"
        ))
        .await;
    let id = last["value"][0]["@iot.id"].as_str().unwrap().to_owned();
    let one = sta
        .ok(&format!("/Datastreams({ds})/Observations('{id}')"))
        .await;
    assert_eq!(one["@iot.id"], json!(id));
    assert_eq!(one["result"], json!(99));
    let by_filter = sta.ok(&format!("/Observations?$filter=id eq '{id}'")).await;
    assert_eq!(
        by_filter["value"].as_array().unwrap().len(),
        1,
        "{by_filter}"
    );
    // Under another Datastream it is not found.
    assert_eq!(
        sta.get(&format!(
            "/Datastreams({})/Observations('{id}')",
            ds.as_i64().unwrap() + 1
        ))
        .await
        .0,
        404
    );
}

/// A subscriber on the city's broker: every message it receives, as (topic, JSON).
async fn sta_subscriber(
    broker: &Broker,
    filters: &[&str],
) -> tokio::sync::mpsc::UnboundedReceiver<(String, Value)> {
    use rumqttc::v5::mqttbytes::v5::{ConnectProperties, Packet};
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let mut o = MqttOptions::new(unique("sta-sub"), "127.0.0.1", broker.port);
    // A session the broker keeps while it restarts, as an application would hold.
    o.set_clean_start(false);
    let mut props = ConnectProperties::new();
    props.session_expiry_interval = Some(3600);
    o.set_connect_properties(props);
    let (client, mut el) = AsyncClient::new(o, 100);
    for f in filters {
        client
            .subscribe(*f, rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
            .await
            .unwrap();
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (subscribed, mut acks) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _client = client;
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let topic = String::from_utf8_lossy(&p.topic).into_owned();
                    let body = serde_json::from_slice(&p.payload)
                        .unwrap_or_else(|e| Value::String(format!("not JSON: {e}")));
                    if tx.send((topic, body)).is_err() {
                        return;
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = subscribed.send(());
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
            }
        }
    });
    for _ in filters {
        tokio::time::timeout(std::time::Duration::from_secs(10), acks.recv())
            .await
            .expect("the subscriptions are acknowledged");
    }
    rx
}

/// Takes messages until `done` holds of all received so far (at most `secs`).
async fn receive_until(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(String, Value)>,
    got: &mut Vec<(String, Value)>,
    secs: u64,
    done: impl Fn(&[(String, Value)]) -> bool,
) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !done(got) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(m)) => got.push(m),
            _ => panic!(
                "{} messages after {secs} s, not all expected: {:?}",
                got.len(),
                got.iter()
                    .map(|(t, b)| (t, &b["@iot.id"]))
                    .collect::<Vec<_>>()
            ),
        }
    }
}

/// The ids received on Datastream topics and on `v1.1/Observations`.
fn received_ids(
    got: &[(String, Value)],
) -> (
    std::collections::BTreeSet<String>,
    std::collections::BTreeSet<String>,
) {
    let id = |b: &Value| b["@iot.id"].as_str().unwrap_or_default().to_owned();
    (
        got.iter()
            .filter(|(t, _)| t.starts_with("v1.1/Datastreams("))
            .map(|(_, b)| id(b))
            .collect(),
        got.iter()
            .filter(|(t, _)| t == "v1.1/Observations")
            .map(|(_, b)| id(b))
            .collect(),
    )
}

/// The MQTT extension (OGC 18-088 chapter 14): a subscriber on the city's broker
/// receives each committed reading as an STA Observation, the same JSON the HTTP API
/// answers for it, on its Datastream's topic and on `v1.1/Observations`; readings
/// committed while the broker is down reach it once the broker is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_subscribers_receive_each_committed_observation_even_across_a_broker_outage() {
    use cityhub_core::StaTopic;
    let db = TestDb::new().await;
    let mut broker = Broker::start();
    let hub = Hub::build(&db, &broker, "sta-mqtt")
        .set(|s| s.sta.mqtt_topics = vec![StaTopic::Datastreams, StaTopic::Observations])
        .start()
        .await;
    let mut rx = sta_subscriber(&broker, &["v1.1/+/Observations", "v1.1/Observations"]).await;
    let sta = Sta {
        http: reqwest::Client::new(),
        root: hub.url("/sta/v1.1"),
    };
    fleet(&broker, &db).await;
    let mut got = Vec::new();
    receive_until(&mut rx, &mut got, 60, |g| {
        let (ds, all) = received_ids(g);
        ds.len() == 15 && all.len() == 15
    })
    .await;
    for (topic, body) in &got {
        // The same JSON as the HTTP API's, on the topic of its own Datastream.
        let link = body["@iot.selfLink"].as_str().expect("a selfLink");
        assert_eq!(&sta.ok(link).await, body, "{topic}");
        if let Some(ds) = topic.strip_prefix("v1.1/Datastreams(") {
            let ds: i64 = ds.split(')').next().unwrap().parse().unwrap();
            let of = sta.ok(&format!("{link}/Datastream")).await;
            assert_eq!(of["@iot.id"], json!(ds), "{topic}: {body}");
        }
    }

    // The broker goes away; uploads over HTTP are stored meanwhile, and published later.
    broker.stop();
    for n in 0..3 {
        let r = reqwest::Client::new()
            .post(hub.url("/ingest/sensor-community"))
            .header("X-Sensor", format!("esp8266-77{n}"))
            .header("Content-Type", "application/json")
            .body(format!(r#"{{"esp8266id":"77{n}","sensordatavalues":[{{"value_type":"SDS_P1","value":"1{n}.5"}},{{"value_type":"SDS_P2","value":"{n}.25"}}]}}"#))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    }
    assert_eq!(db.observations().await, 21);
    wait_for(
        60,
        "a failed attempt to publish while the broker is down",
        || async { hub.metric("cityhub_sta_mqtt_failures_total").await >= 1.0 },
    )
    .await;
    assert!(
        db.count("SELECT count(*) FROM sta_outbox").await >= 1,
        "the outage's readings wait in the outbox"
    );
    broker.start_again();
    receive_until(&mut rx, &mut got, 120, |g| {
        let (ds, all) = received_ids(g);
        ds.len() == 21 && all.len() == 21
    })
    .await;
    let every = sta.ok("/Observations?$select=id&$top=100").await;
    let stored: std::collections::BTreeSet<String> = every["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["@iot.id"].as_str().unwrap().to_owned())
        .collect();
    let (ds, all) = received_ids(&got);
    assert_eq!(ds, stored);
    assert_eq!(all, stored);
    for (topic, body) in &got[got.len() - 12..] {
        let link = body["@iot.selfLink"].as_str().unwrap();
        assert_eq!(&sta.ok(link).await, body, "{topic}");
    }
    wait_for(30, "the outbox emptied", || async {
        db.count("SELECT count(*) FROM sta_outbox").await == 0
    })
    .await;
    assert!(hub.metric("cityhub_sta_mqtt_published_total").await >= 21.0);
}

mod process {
    use super::*;

    /// FROST-Server's Python client (pinned in tests/validators/requirements.txt).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn frost_python_client_walks_things_datastreams_and_observations() {
        let db = TestDb::new().await;
        let broker = Broker::start();
        let hub = Hub::build(&db, &broker, "sta-frost").start().await;
        fleet(&broker, &db).await;
        let script = workspace_root().join("tests/clients/frost_check.py");
        let out = std::process::Command::new(cityhub_testkit::python::python())
            .arg(&script)
            .arg(hub.url("/sta/v1.1"))
            .output()
            .unwrap();
        let text = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!("{text}");
        assert!(out.status.success(), "{text}");
        assert!(
            text.contains("observations: [30.0, 40.0, 50.0, 60.0]")
                || text.contains("observations: [30, 40, 50, 60]"),
            "{text}"
        );
    }
}
