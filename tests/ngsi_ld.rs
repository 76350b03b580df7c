//! NGSI-LD (`/ngsi-ld/v1`) over a small known fleet: entities of the Smart Data
//! Models made from the registry and the latest values, the query language,
//! geo-queries, paging, representations and @context, and the temporal API over the
//! readings and the rollups; then the real clients (ngsildclient, pyld, the models'
//! JSON Schemas) in `process`.

use cityhub_testkit::*;
use serde_json::{json, Value};

/// Two waste bins, a street lamp, a bike counter and an air-quality station, with
/// known readings: bin-a's fill levels 10, 20, ..., 60 one minute apart from 10:00
/// UTC yesterday, bin-b full (95) and registered as organic waste.
async fn fleet(broker: &Broker, db: &TestDb) -> chrono::DateTime<chrono::Utc> {
    let day = chrono::Utc::now().date_naive() - chrono::Days::new(1);
    let t0 = day.and_hms_opt(10, 0, 0).unwrap().and_utc();
    let mut items = Vec::new();
    let msg = |topic: &str, v: Value| (format!("cityhub/v1/{topic}"), v.to_string().into_bytes());
    for i in 0..6 {
        let t = t0 + chrono::Duration::minutes(i);
        items.push(msg(
            "waste_bin/bin-a",
            json!({"ts": t.to_rfc3339(), "values": {"fill_level": 10.0 * (i + 1) as f64, "battery": 90, "temperature": 14.5},
                   "location": {"lat": 45.1335, "lon": 10.0255}}),
        ));
    }
    items.push(msg(
        "waste_bin/bin-b",
        json!({"ts": t0.to_rfc3339(), "values": {"fill_level": 95.0, "battery": 40},
               "location": {"lat": 45.20, "lon": 10.10}}),
    ));
    items.push(msg(
        "air_quality/aq-1",
        json!({"ts": t0.to_rfc3339(), "values": {"pm10": 31.5, "pm2_5": 18.0, "no2": 40.0, "humidity": 55.0},
               "location": {"lat": 45.14, "lon": 10.03}}),
    ));
    items.push(msg(
        "streetlight/lamp-1",
        json!({"ts": t0.to_rfc3339(), "values": {"power": 120.0, "energy": 3000.0, "dimming": 80.0},
               "location": {"lat": 45.135, "lon": 10.027}}),
    ));
    items.push(msg(
        "bike_counter/bike-1",
        json!({"ts": t0.to_rfc3339(), "values": {"count_in": 12, "count_out": 9},
               "location": {"lat": 45.131, "lon": 10.02}}),
    ));
    publish_raw(broker, &items).await;
    wait_for(30, "the fleet's readings", || async {
        db.observations().await >= 6 * 3 + 2 + 4 + 3 + 2
    })
    .await;
    db.client()
        .await
        .batch_execute(
            "UPDATE sensors SET properties = properties || '{\"stream\": \"organico\"}'
             WHERE external_id = 'bin-b';
             UPDATE sensors SET properties = properties || '{\"stream\": \"ingombranti\"}'
             WHERE external_id = 'bin-a'",
        )
        .await
        .unwrap();
    t0
}

struct Ngsi {
    http: reqwest::Client,
    root: String,
}

impl Ngsi {
    async fn get_with(&self, path: &str, accept: &str) -> (u16, reqwest::header::HeaderMap, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.root))
            .header("accept", accept)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, headers, v)
    }

    async fn ok(&self, path: &str) -> Value {
        let (s, _, v) = self.get_with(path, "application/json").await;
        assert_eq!(s, 200, "{path}: {v}");
        v
    }

    async fn ids(&self, path: &str) -> Vec<String> {
        let v = self.ok(path).await;
        v.as_array()
            .unwrap_or_else(|| panic!("{path}: {v}"))
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect()
    }

    async fn refused(&self, path: &str, status: u16) -> Value {
        let (s, h, v) = self.get_with(path, "application/json").await;
        assert_eq!(s, status, "{path}: {v}");
        assert_eq!(h["content-type"], "application/json", "{path}");
        assert!(
            v["type"]
                .as_str()
                .unwrap()
                .starts_with("https://uri.etsi.org/ngsi-ld/errors/"),
            "{path}: {v}"
        );
        v
    }
}

const BIN_A: &str = "urn:ngsi-ld:WasteContainer:bin-a";
const BIN_B: &str = "urn:ngsi-ld:WasteContainer:bin-b";
const WASTE_CTX: &str =
    "https://raw.githubusercontent.com/smart-data-models/dataModel.WasteManagement/master/context.jsonld";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entities_of_the_smart_data_models_with_queries_and_representations() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let hub = Hub::build(&db, &broker, "ngsi").start().await;
    let t0 = fleet(&broker, &db).await;
    let n = Ngsi {
        http: reqwest::Client::new(),
        root: hub.url("/ngsi-ld/v1"),
    };

    let types = n.ok("/types").await;
    assert_eq!(
        types["typeList"],
        json!([
            "AirQualityObserved",
            "Device",
            "Streetlight",
            "TrafficFlowObserved",
            "WasteContainer"
        ])
    );

    // Normalized entities of one type, with the model's context in the Link header.
    let (s, h, bins) = n
        .get_with("/entities?type=WasteContainer", "application/json")
        .await;
    assert_eq!(s, 200, "{bins}");
    assert!(
        h["link"].to_str().unwrap().contains(WASTE_CTX),
        "{:?}",
        h["link"]
    );
    assert_eq!(bins.as_array().unwrap().len(), 2, "{bins}");
    let a = &bins[0];
    assert_eq!(a["id"], BIN_A);
    assert_eq!(a["type"], "WasteContainer");
    let t5 =
        (t0 + chrono::Duration::minutes(5)).to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
    assert_eq!(
        a["fillingLevel"],
        json!({"type": "Property", "value": 0.6, "observedAt": t5, "unitCode": "C62"})
    );
    assert_eq!(a["temperature"]["value"], 14.5);
    assert_eq!(a["temperature"]["unitCode"], "CEL");
    assert_eq!(
        a["location"],
        json!({"type": "GeoProperty", "value": {"type": "Point", "coordinates": [10.0255, 45.1335]}})
    );
    assert_eq!(
        a["refDevice"],
        json!({"type": "Relationship", "object": ["urn:ngsi-ld:Device:bin-a"]})
    );
    assert_eq!(bins[1]["storedWasteKind"]["value"], "organic");
    // bin-a's stream (bulky waste) is not one the model names: left out.
    assert!(a.get("storedWasteKind").is_none(), "{a}");

    // q: comparisons, and (;), or (|), ranges, patterns, sub-attributes.
    let q = |q: &str| format!("/entities?type=WasteContainer&q={}", urlencode(q));
    assert_eq!(n.ids(&q("fillingLevel>0.8")).await, [BIN_B]);
    assert_eq!(
        n.ids(&q("fillingLevel>0.8;storedWasteKind==\"organic\""))
            .await,
        [BIN_B]
    );
    assert!(n
        .ids(&q("fillingLevel>0.8;storedWasteKind==\"paper\""))
        .await
        .is_empty());
    assert_eq!(
        n.ids(&q("fillingLevel==0.5..0.7|storedWasteKind~=^org"))
            .await,
        [BIN_A, BIN_B]
    );
    assert_eq!(
        n.ids(&q(&format!(
            "fillingLevel.observedAt>{}",
            t0.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )))
        .await,
        [BIN_A]
    );
    assert_eq!(n.ids(&q("!storedWasteKind")).await, [BIN_A]);
    // q across types: the lamp is on above 5 W, its status ok when the registry says none.
    assert_eq!(
        n.ids(&format!(
            "/entities?q={}",
            urlencode("powerState==\"on\";status==\"ok\"")
        ))
        .await,
        ["urn:ngsi-ld:Streetlight:lamp-1"]
    );

    // Geo-queries: within 500 m of bin-a (bin-a, not bin-b 11 km away), inside a polygon.
    let near = n
        .ids(&format!(
            "/entities?type=WasteContainer&georel={}&geometry=Point&coordinates={}",
            urlencode("near;maxDistance==500"),
            urlencode("[10.0255,45.1335]")
        ))
        .await;
    assert_eq!(near, [BIN_A]);
    let within = n
        .ids(&format!(
            "/entities?type=WasteContainer,Device&georel=within&geometry=Polygon&coordinates={}",
            urlencode("[[[10.09,45.19],[10.11,45.19],[10.11,45.21],[10.09,45.21],[10.09,45.19]]]")
        ))
        .await;
    assert_eq!(within, [BIN_B, "urn:ngsi-ld:Device:bin-b"]);

    // Paging and counting: NGSILD-Results-Count holds every match.
    let (_, h, page) = n
        .get_with(
            "/entities?type=WasteContainer,Device&limit=3&offset=2&count=true",
            "application/json",
        )
        .await;
    assert_eq!(h["ngsild-results-count"], "7");
    assert_eq!(page.as_array().unwrap().len(), 3);
    let (s, h, none) = n
        .get_with(
            "/entities?type=Device&limit=0&count=true",
            "application/json",
        )
        .await;
    assert_eq!((s, none), (200, json!([])));
    assert_eq!(h["ngsild-results-count"], "5");
    assert_eq!(
        n.ids("/entities?idPattern=bin-b$").await,
        [BIN_B, "urn:ngsi-ld:Device:bin-b"]
    );
    // Kind by kind (air quality first), then by sensor.
    assert_eq!(
        n.ids(&format!("/entities?id={BIN_B},urn:ngsi-ld:Device:aq-1"))
            .await,
        ["urn:ngsi-ld:Device:aq-1", BIN_B]
    );
    // attrs without q keeps the entities that have one of them.
    assert_eq!(n.ids("/entities?attrs=storedWasteKind").await, [BIN_B]);

    // keyValues and concise.
    let kv = n.ok(&format!("/entities/{BIN_A}?options=keyValues")).await;
    assert_eq!(kv["fillingLevel"], 0.6);
    assert_eq!(kv["refDevice"], json!(["urn:ngsi-ld:Device:bin-a"]));
    assert_eq!(
        kv["location"],
        json!({"type": "Point", "coordinates": [10.0255, 45.1335]})
    );
    let concise = n
        .ok(&format!(
            "/entities/{BIN_A}?options=concise&attrs=fillingLevel,name"
        ))
        .await;
    assert_eq!(
        concise,
        json!({"id": BIN_A, "type": "WasteContainer",
               "fillingLevel": {"value": 0.6, "observedAt": t5, "unitCode": "C62"}})
    );
    let aq = n
        .ok("/entities/urn:ngsi-ld:AirQualityObserved:aq-1?options=keyValues")
        .await;
    assert_eq!(
        (
            aq["pm10"].clone(),
            aq["pm25"].clone(),
            aq["relativeHumidity"].clone()
        ),
        (json!(31.5), json!(18.0), json!(0.55))
    );
    assert_eq!(
        aq["dateObserved"],
        t0.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
    );
    let bike = n
        .ok("/entities/urn:ngsi-ld:TrafficFlowObserved:bike-1?options=keyValues")
        .await;
    assert_eq!(
        (bike["intensity"].clone(), bike["vehicleType"].clone()),
        (json!(12.0), json!("bicycle"))
    );

    // The Device of a bin: what it controls, its battery, the asset it watches.
    let dev = n
        .ok("/entities/urn:ngsi-ld:Device:bin-a?options=keyValues")
        .await;
    assert_eq!(
        dev["controlledProperty"],
        json!(["fillingLevel", "temperature"])
    );
    assert_eq!(dev["batteryLevel"], 0.9);
    assert_eq!(dev["controlledAsset"], json!([BIN_A]));

    // JSON-LD: the @context in the body, no Link; GeoJSON; unknown media refused.
    let (s, h, ld) = n
        .get_with(&format!("/entities/{BIN_A}"), "application/ld+json")
        .await;
    assert_eq!(s, 200);
    assert_eq!(h["content-type"], "application/ld+json");
    assert!(h.get("link").is_none());
    assert_eq!(
        ld["@context"],
        json!([WASTE_CTX, cityhub_core::ngsi_ld::CORE_CONTEXT])
    );
    let (s, _, geo) = n
        .get_with("/entities?type=WasteContainer", "application/geo+json")
        .await;
    assert_eq!(s, 200);
    assert_eq!(geo["type"], "FeatureCollection");
    assert_eq!(
        geo["features"][0]["geometry"]["coordinates"],
        json!([10.0255, 45.1335])
    );
    let (s, _, _) = n
        .get_with("/entities?type=WasteContainer", "text/html")
        .await;
    assert_eq!(s, 406);

    // What is refused, as ProblemDetails.
    n.refused("/entities", 400).await;
    n.refused("/entities?type=WasteContainer&q=fillingLevel>", 400)
        .await;
    n.refused(
        "/entities?type=WasteContainer&georel=near&geometry=Point&coordinates=[10,45]",
        400,
    )
    .await;
    n.refused("/entities?type=WasteContainer&limit=5000", 400)
        .await;
    n.refused("/entities/urn:ngsi-ld:WasteContainer:nope", 404)
        .await;
    // A sensor is a WasteContainer or a Device, not a Streetlight.
    n.refused("/entities/urn:ngsi-ld:Streetlight:bin-a", 404)
        .await;
    n.refused("/entities/not-an-urn", 404).await;
    assert!(n.ids("/entities?type=Unknown").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporal_values_come_from_the_readings_and_the_rollups() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let hub = Hub::build(&db, &broker, "ngsi-temporal").start().await;
    let t0 = fleet(&broker, &db).await;
    let n = Ngsi {
        http: reqwest::Client::new(),
        root: hub.url("/ngsi-ld/v1"),
    };
    let at = |m: i64| {
        (t0 + chrono::Duration::minutes(m)).to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
    };
    let path = format!("/temporal/entities/{BIN_A}?attrs=fillingLevel");

    let all = n.ok(&path).await;
    let inst = all["fillingLevel"].as_array().unwrap();
    assert_eq!(inst.len(), 6, "{all}");
    assert_eq!(
        inst[0],
        json!({"type": "Property", "value": 0.1, "observedAt": at(0), "unitCode": "C62"})
    );
    assert!(all.get("temperature").is_none(), "{all}");

    let last = n
        .ok(&format!("{path}&lastN=2&options=temporalValues"))
        .await;
    assert_eq!(
        last["fillingLevel"],
        json!({"type": "Property", "values": [[0.5, at(4)], [0.6, at(5)]]})
    );
    let between = n
        .ok(&format!(
            "{path}&timerel=between&timeAt={}&endTimeAt={}&options=temporalValues",
            urlencode(&at(1)),
            urlencode(&at(3))
        ))
        .await;
    assert_eq!(
        between["fillingLevel"]["values"],
        json!([[0.2, at(1)], [0.3, at(2)]])
    );
    let before = n
        .ok(&format!(
            "{path}&timerel=before&timeAt={}",
            urlencode(&at(1))
        ))
        .await;
    assert_eq!(before["fillingLevel"].as_array().unwrap().len(), 1);

    // From the hourly rollups: the six readings of 10:00-11:00.
    let hour = |m: i64| {
        (t0 + chrono::Duration::hours(m)).to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
    };
    let agg = n
        .ok(&format!(
            "{path}&aggrMethods=totalCount,avg,min,max,sum&aggrPeriodDuration=PT1H"
        ))
        .await;
    assert_eq!(
        agg["fillingLevel"]["totalCount"],
        json!([[6, hour(0), hour(1)]]),
        "{agg}"
    );
    assert_eq!(
        agg["fillingLevel"]["avg"],
        json!([[0.35, hour(0), hour(1)]])
    );
    assert_eq!(agg["fillingLevel"]["min"], json!([[0.1, hour(0), hour(1)]]));
    assert_eq!(agg["fillingLevel"]["max"], json!([[0.6, hour(0), hour(1)]]));
    assert_eq!(agg["fillingLevel"]["sum"], json!([[2.1, hour(0), hour(1)]]));
    let day = n
        .ok(&format!("{path}&aggrMethods=max&aggrPeriodDuration=P1D"))
        .await;
    let midnight = t0.date_naive().and_hms_opt(0, 0, 0).unwrap().and_utc();
    assert_eq!(
        day["fillingLevel"]["max"],
        json!([[
            0.6,
            midnight.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            (midnight + chrono::Duration::days(1))
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
        ]])
    );

    // The lamp's power state over time, and a query over entities.
    let lamps = n
        .ok("/temporal/entities?type=Streetlight&attrs=powerState&options=temporalValues")
        .await;
    assert_eq!(
        lamps[0]["powerState"]["values"],
        json!([["on", at(0)]]),
        "{lamps}"
    );

    n.refused(
        &format!("{path}&aggrMethods=stddev&aggrPeriodDuration=PT1H"),
        400,
    )
    .await;
    n.refused(
        &format!("{path}&aggrMethods=avg&aggrPeriodDuration=P1M"),
        400,
    )
    .await;
    n.refused(
        &format!("{path}&timerel=between&timeAt={}", urlencode(&at(1))),
        400,
    )
    .await;
    n.refused("/temporal/entities", 400).await;
}

const OPERATOR: &str = "operator-token-0123456789";

/// Notifications a receiver got: (headers, body); it answers 500 to the first.
type Got = std::sync::Arc<std::sync::Mutex<Vec<(reqwest::header::HeaderMap, String)>>>;

fn flaky_receiver(
    listener: tokio::net::TcpListener,
) -> (Got, std::sync::Arc<std::sync::atomic::AtomicU32>) {
    let got: Got = Default::default();
    let tries = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let (g, t) = (got.clone(), tries.clone());
    let app = axum::Router::new().route(
        "/notify",
        axum::routing::post(move |h: axum::http::HeaderMap, b: String| {
            let (g, t) = (g.clone(), t.clone());
            async move {
                if t.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                    return axum::http::StatusCode::INTERNAL_SERVER_ERROR;
                }
                let mut headers = reqwest::header::HeaderMap::new();
                for (k, v) in &h {
                    headers.insert(k.clone(), v.clone());
                }
                g.lock().unwrap().push((headers, b));
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (got, tries)
}

fn hmac_hex(secret: &str, body: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    m.update(body);
    format!(
        "sha256={}",
        m.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

/// A subscription on full bins: only the batch that makes bin-b full is notified,
/// once, signed, with the receiver's headers, after a failed first attempt; it is
/// audited, listed with its deliveries, and deleted with nothing more sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_is_notified_of_the_changes_it_asks_for_signed_and_retried() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (got, tries) = flaky_receiver(listener);
    let hub = Hub::build(&db, &broker, "ngsi-subs")
        .operator_token(OPERATOR)
        .set(|s| s.notify.max_backoff_s = std::num::NonZeroU64::new(2).unwrap())
        .start()
        .await;
    fleet(&broker, &db).await;
    let http = reqwest::Client::new();
    let subs = hub.url("/ngsi-ld/v1/subscriptions");
    let sub = json!({
        "type": "Subscription",
        "entities": [{"type": "WasteContainer"}],
        "watchedAttributes": ["fillingLevel"],
        "q": "fillingLevel>0.8",
        "throttling": 3600,
        "notification": {
            "format": "keyValues",
            "attributes": ["fillingLevel"],
            "endpoint": {"uri": format!("http://127.0.0.1:{port}/notify"), "accept": "application/json",
                         "receiverInfo": [{"key": "X-Api-Key", "value": "k1"}]}
        }
    });
    let post = |body: Value, token: Option<&str>| {
        let mut r = http
            .post(&subs)
            .header("content-type", "application/ld+json")
            .body(body.to_string());
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    assert_eq!(post(sub.clone(), None).await.unwrap().status(), 401);
    let mut broken = sub.clone();
    broken["q"] = json!("fillingLevel>");
    assert_eq!(post(broken, Some(OPERATOR)).await.unwrap().status(), 400);
    let r = post(sub.clone(), Some(OPERATOR)).await.unwrap();
    assert_eq!(r.status(), 201);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let secret = r.headers()["x-cityhub-signing-secret"]
        .to_str()
        .unwrap()
        .to_owned();
    let id = location.rsplit('/').next().unwrap().to_owned();
    assert!(id.starts_with("urn:ngsi-ld:Subscription:"), "{location}");

    // bin-a at 50 % (q fails), bin-b's battery (fillingLevel not watched), a lamp
    // (not a WasteContainer): nothing. bin-b at 90 %: one notification.
    let now = chrono::Utc::now();
    let msg = |topic: &str, v: Value| (format!("cityhub/v1/{topic}"), v.to_string().into_bytes());
    let before = db.observations().await;
    publish_raw(
        &broker,
        &[
            msg(
                "waste_bin/bin-a",
                json!({"ts": now.to_rfc3339(), "values": {"fill_level": 50.0}}),
            ),
            msg(
                "waste_bin/bin-b",
                json!({"ts": now.to_rfc3339(), "values": {"battery": 38}}),
            ),
            msg(
                "streetlight/lamp-1",
                json!({"ts": now.to_rfc3339(), "values": {"power": 0.0}}),
            ),
        ],
    )
    .await;
    wait_for(30, "the three readings", || async {
        db.observations().await >= before + 3
    })
    .await;
    let t1 = now + chrono::Duration::seconds(1);
    publish_raw(
        &broker,
        &[msg(
            "waste_bin/bin-b",
            json!({"ts": t1.to_rfc3339(), "values": {"fill_level": 90.0}}),
        )],
    )
    .await;
    wait_for(
        60,
        "the notification, after the receiver's first 500",
        || {
            let got = got.clone();
            async move { !got.lock().unwrap().is_empty() }
        },
    )
    .await;
    // Every batch is matched by now (the last one made the notification).
    wait_for(30, "no change left to match", || async {
        db.count("SELECT count(*) FROM ngsi_changes").await == 0
    })
    .await;
    let (headers, body) = got.lock().unwrap()[0].clone();
    let n: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(n["type"], "Notification");
    assert_eq!(n["subscriptionId"], id.as_str());
    assert_eq!(
        n["data"],
        json!([{"id": BIN_B, "type": "WasteContainer", "fillingLevel": 0.9}]),
        "{n}"
    );
    assert_eq!(headers["x-api-key"], "k1");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(
        headers["x-cityhub-signature-256"].to_str().unwrap(),
        hmac_hex(&secret, body.as_bytes())
    );
    assert!(tries.load(std::sync::atomic::Ordering::SeqCst) >= 2);
    assert_eq!(got.lock().unwrap().len(), 1, "one notification only");

    // Listed (operators only) with its deliveries; audited.
    let listed: Value = http
        .get(&subs)
        .bearer_auth(OPERATOR)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["status"], "active");
    assert_eq!(listed[0]["notification"]["timesSent"], 1);
    assert!(
        listed[0]["notification"]["lastFailure"].is_string(),
        "{listed}"
    );
    assert_eq!(http.get(&subs).send().await.unwrap().status(), 401);
    assert_eq!(
        db.count("SELECT count(*) FROM audit WHERE action = 'ngsi_subscription.create'")
            .await,
        1
    );

    // Throttled: bin-b fuller still, within the hour, is matched and not sent.
    fill_bin_b(
        &broker,
        &db,
        now + chrono::Duration::milliseconds(1500),
        93.0,
    )
    .await;
    wait_for(30, "its change matched", || async {
        db.count("SELECT count(*) FROM ngsi_changes").await == 0
    })
    .await;
    assert_eq!(
        db.count("SELECT count(*) FROM alert_outbox WHERE event = 'notification'")
            .await,
        1,
        "throttled"
    );

    // Deleted: audited; a full bin after it is not notified.
    let url = hub.url(&location);
    assert_eq!(
        http.delete(&url)
            .bearer_auth(OPERATOR)
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(
        http.delete(&url)
            .bearer_auth(OPERATOR)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        db.count("SELECT count(*) FROM audit WHERE action = 'ngsi_subscription.delete'")
            .await,
        1
    );
    fill_bin_b(&broker, &db, now + chrono::Duration::seconds(2), 97.0).await;
    assert_eq!(
        db.count("SELECT count(*) FROM ngsi_changes").await,
        0,
        "no subscription, no changes kept"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM alert_outbox WHERE event = 'notification'")
            .await,
        0
    );
    assert_eq!(got.lock().unwrap().len(), 1);
}

/// Publishes bin-b's fill level at `t` and waits until it is stored.
async fn fill_bin_b(broker: &Broker, db: &TestDb, t: chrono::DateTime<chrono::Utc>, fill: f64) {
    let before = db.observations().await;
    publish_raw(
        broker,
        &[(
            "cityhub/v1/waste_bin/bin-b".to_owned(),
            json!({"ts": t.to_rfc3339(), "values": {"fill_level": fill}})
                .to_string()
                .into_bytes(),
        )],
    )
    .await;
    wait_for(30, "the reading", || async {
        db.observations().await > before
    })
    .await;
}

fn urlencode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

mod process {
    use super::*;

    /// ngsildclient lists, queries and reads the temporal API; pyld expands every
    /// answer against the vendored @contexts; every entity validates against its
    /// model's official JSON Schema (tests/clients/ngsi_ld_check.py).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ngsildclient_pyld_and_the_official_schemas_accept_every_entity() {
        let db = TestDb::new().await;
        let broker = Broker::start();
        let hub = Hub::build(&db, &broker, "ngsi-clients").start().await;
        fleet(&broker, &db).await;
        let models = workspace_root().join("../shared/testdata/smart-data-models");
        assert!(models.is_dir(), "{} is missing", models.display());
        let out = std::process::Command::new(cityhub_testkit::python::ngsi_ld_python())
            .arg(workspace_root().join("tests/clients/ngsi_ld_check.py"))
            .arg(hub.url(""))
            .arg(&models)
            .output()
            .unwrap();
        let text = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!("{text}");
        assert!(out.status.success(), "{text}");
        assert!(text.contains("validated 10 entities"), "{text}");
    }

    /// ngsildclient subscribes (with an operator's token) and its receiver gets the
    /// notification of a bin filling up, valid against the WasteContainer schema.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_ngsildclient_subscription_receives_its_notification() {
        use std::io::BufRead;
        let db = TestDb::new().await;
        let broker = Broker::start();
        let hub = Hub::build(&db, &broker, "ngsi-subscriber")
            .operator_token(OPERATOR)
            .start()
            .await;
        fleet(&broker, &db).await;
        let mut child = std::process::Command::new(cityhub_testkit::python::ngsi_ld_python())
            .arg(workspace_root().join("tests/clients/ngsi_ld_check.py"))
            .arg(hub.url(""))
            .arg(workspace_root().join("../shared/testdata/smart-data-models"))
            .args(["--subscribe", OPERATOR])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        let mut seen = Vec::new();
        loop {
            match rx.recv_timeout(std::time::Duration::from_secs(120)) {
                Ok(l) if l.starts_with("subscribed") => {
                    seen.push(l);
                    break;
                }
                Ok(l) => seen.push(l),
                Err(_) => {
                    let out = child.wait_with_output().unwrap();
                    panic!(
                        "no subscription: {seen:?} {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
        }
        let t = chrono::Utc::now();
        publish_raw(
            &broker,
            &[(
                "cityhub/v1/waste_bin/bin-a".to_owned(),
                json!({"ts": t.to_rfc3339(), "values": {"fill_level": 85.0}})
                    .to_string()
                    .into_bytes(),
            )],
        )
        .await;
        let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
            .await
            .unwrap();
        seen.extend(rx.try_iter());
        let text = format!(
            "{}\n{}",
            seen.join("\n"),
            String::from_utf8_lossy(&out.stderr)
        );
        println!("{text}");
        assert!(out.status.success(), "{text}");
        assert!(text.contains(r#""fillingLevel": 0.85"#), "{text}");
    }
}
