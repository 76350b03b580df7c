//! Alerts end to end: rules raised and cleared by readings, the lifecycle in the
//! database and the API, the operator token, and webhook notifications delivered
//! signed, at least once, through a receiver outage and a hub restart.

use axum::body::Bytes;
use axum::http::HeaderMap;
use cityhub_testkit::*;
use hmac::{KeyInit, Mac};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SECRET: &str = "webhook-secret-for-the-test";
const OPERATOR: &str = "operator-token-0123456789";

/// Webhook deliveries a receiver got: (headers, body).
type Got = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

/// A webhook receiver on `listener` that answers 200 to every POST.
fn receiver(listener: tokio::net::TcpListener) -> Got {
    let got: Got = Arc::default();
    let g = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |h: HeaderMap, b: Bytes| {
            let g = g.clone();
            async move {
                g.lock().unwrap().push((h, b));
                "ok"
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    got
}

fn config(dir: &std::path::Path, hook_port: u16, extra: &str) -> std::path::PathBuf {
    let conf = dir.join("cityhub.toml");
    std::fs::write(
        &conf,
        format!(
            r#"
[http]
operator_token = "{OPERATOR}"
[notify]
max_backoff_s = 4
mqtt = true
[[notify.webhooks]]
url = "http://127.0.0.1:{hook_port}/hook"
secret = "{SECRET}"
kinds = ["waste_bin"]
[[alerts.rules]]
id = "low_battery"
kind = "waste_bin"
metric = "battery"
condition = "below"
threshold = 20
clear = 30
hold_s = 3600
severity = "warning"
{extra}
"#
        ),
    )
    .unwrap();
    conf
}

/// A topic under the hub's alert branch that no alert uses, to see a subscriber is ready.
const PROBE_TOPIC: &str = "cityhub/v1/alerts/probe/ready";

async fn publish(broker: &Broker, sensor: &str, ts: chrono::DateTime<chrono::Utc>, values: Value) {
    publish_raw(
        broker,
        &[(
            &format!("cityhub/v1/waste_bin/{sensor}"),
            json!({"ts": ts.to_rfc3339(), "values": values})
                .to_string()
                .into_bytes(),
        )],
    )
    .await;
}

async fn alerts(http: &reqwest::Client, hub: &Hub, query: &str) -> Vec<Value> {
    let r: Value = http
        .get(hub.url(&format!("/api/v1/alerts{query}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["alerts"].as_array().unwrap().clone()
}

/// (event, alert id) of each delivery, after checking its signature.
fn deliveries(got: &Got) -> Vec<(String, i64)> {
    got.lock()
        .unwrap()
        .iter()
        .map(|(h, b)| {
            let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
            mac.update(b);
            let want: String = mac
                .finalize()
                .into_bytes()
                .iter()
                .map(|x| format!("{x:02x}"))
                .collect();
            let sig = h["x-cityhub-signature-256"].to_str().unwrap();
            assert_eq!(sig, format!("sha256={want}"), "a body signed wrongly");
            let v: Value = serde_json::from_slice(b).unwrap();
            let event = v["event"].as_str().unwrap().to_owned();
            assert_eq!(h["x-cityhub-event"].to_str().unwrap(), event);
            let id = v["alert"]["id"].as_i64().unwrap();
            assert_eq!(v["event_id"], format!("{id}-{event}"));
            (event, id)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bin_past_its_alarm_raises_one_alert_signed_to_a_webhook_and_clears_below_warn() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = receiver(listener);
    let dir = std::env::temp_dir().join(unique("alerts"));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = config(&dir, port, "");
    let hub = Hub::build(&db, &broker, "alerts")
        .file(conf.to_str().unwrap())
        .start()
        .await;
    let http = reqwest::Client::new();
    // Node-RED's view: the alert events on the broker.
    let sub_out = dir.join("alerts.mqtt");
    let mut sub = broker
        .client("mosquitto_sub")
        .args(["-v", "-t", "cityhub/v1/alerts/#"])
        .stdout(std::fs::File::create(&sub_out).unwrap())
        .spawn()
        .unwrap();
    // Subscribed once a probe on its filter comes through.
    wait_for(30, "mosquitto_sub subscribed", || {
        let (broker, p) = (&broker, &sub_out);
        async move {
            publish_raw(broker, &[(PROBE_TOPIC, br#"{"event":"probe"}"#.to_vec())]).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .contains(PROBE_TOPIC)
        }
    })
    .await;
    let alert_lines = |text: String| -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with(PROBE_TOPIC))
            .map(str::to_owned)
            .collect()
    };
    let t0 = chrono::Utc::now() - chrono::Duration::hours(3);
    let min = |m: i64| t0 + chrono::Duration::minutes(m);

    // 50 is below the alarm (80); 85 raises; 90 raises nothing more; 60 is above
    // warn (50), so it stays; 40 clears.
    for (m, fill) in [(0, 50.0), (10, 85.0), (20, 90.0), (30, 60.0)] {
        publish(&broker, "bin-a1", min(m), json!({"fill_level": fill})).await;
    }
    wait_for(30, "the raised alert delivered", || {
        let got = got.clone();
        async move { !deliveries(&got).is_empty() }
    })
    .await;
    hub.settled(4.0).await;
    let open = alerts(&http, &hub, "?state=open").await;
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0]["rule"], "waste_bin_fill_level_alarm");
    assert_eq!(open[0]["severity"], "critical");
    assert_eq!(open[0]["raised_value"], 85.0);
    assert_eq!(open[0]["raised_at"], cityhub_core::time::rfc3339(min(10)));
    publish(&broker, "bin-a1", min(40), json!({"fill_level": 40.0})).await;
    wait_for(30, "the cleared alert delivered", || {
        let got = got.clone();
        async move { deliveries(&got).len() >= 2 }
    })
    .await;
    let id = open[0]["id"].as_i64().unwrap();
    assert_eq!(
        deliveries(&got),
        [("raised".into(), id), ("cleared".into(), id)]
    );
    let cleared = alerts(&http, &hub, "?state=cleared&sensor=bin-a1").await;
    assert_eq!(cleared.len(), 1);
    assert_eq!(cleared[0]["cleared_value"], 40.0);
    assert!(alerts(&http, &hub, "?state=open").await.is_empty());

    // A configured rule with a hold time and a clear level: battery at or below 20
    // for an hour (by the readings' times) raises; back above 30 clears.
    for (m, b) in [(0, 15.0), (30, 14.0)] {
        publish(&broker, "bin-b1", min(m), json!({"battery": b})).await;
    }
    hub.settled(7.0).await;
    assert!(
        alerts(&http, &hub, "?sensor=bin-b1").await.is_empty(),
        "raised before the hold time"
    );
    publish(&broker, "bin-b1", min(61), json!({"battery": 13.0})).await;
    wait_for(30, "the low battery alert", || {
        let (http, hub) = (&http, &hub);
        async move { alerts(http, hub, "?sensor=bin-b1&state=open").await.len() == 1 }
    })
    .await;
    let low = &alerts(&http, &hub, "?sensor=bin-b1").await[0];
    assert_eq!(
        (low["rule"].as_str(), low["severity"].as_str()),
        (Some("low_battery"), Some("warning"))
    );
    assert_eq!(low["raised_at"], cityhub_core::time::rfc3339(min(61)));
    publish(&broker, "bin-b1", min(70), json!({"battery": 25.0})).await;
    hub.settled(9.0).await;
    assert_eq!(
        alerts(&http, &hub, "?sensor=bin-b1&state=open").await.len(),
        1,
        "25 is not past the clear level"
    );
    publish(&broker, "bin-b1", min(80), json!({"battery": 35.0})).await;
    wait_for(30, "the low battery alert cleared", || {
        let (http, hub) = (&http, &hub);
        async move {
            alerts(http, hub, "?sensor=bin-b1&state=cleared")
                .await
                .len()
                == 1
        }
    })
    .await;
    // Two rules raised and cleared, four deliveries of the bin alarm's webhook
    // (its filter takes every waste_bin alert).
    assert_eq!(hub.metric("cityhub_alerts_raised_total").await, 2.0);
    assert_eq!(hub.metric("cityhub_alerts_cleared_total").await, 2.0);
    wait_for(30, "four deliveries", || {
        let got = got.clone();
        async move { deliveries(&got).len() == 4 }
    })
    .await;
    // The same four events on the broker, and the hub did not read them back as readings.
    wait_for(30, "four alert messages on the broker", || {
        let p = sub_out.clone();
        async move { alert_lines(std::fs::read_to_string(&p).unwrap_or_default()).len() >= 4 }
    })
    .await;
    let _ = sub.kill();
    let _ = sub.wait();
    let lines = alert_lines(std::fs::read_to_string(&sub_out).unwrap());
    let events: Vec<(String, String)> = lines
        .iter()
        .map(|l| {
            let (topic, body) = l.split_once(' ').unwrap();
            let v: Value = serde_json::from_str(body).unwrap();
            (topic.to_owned(), v["event"].as_str().unwrap().to_owned())
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("bin-a1", "raised"),
        ("bin-a1", "cleared"),
        ("bin-b1", "raised"),
        ("bin-b1", "cleared"),
    ]
    .iter()
    .map(|(s, e)| (format!("cityhub/v1/alerts/waste_bin/{s}"), e.to_string()))
    .collect();
    assert_eq!(events, want);
    assert_eq!(db.count("SELECT count(*) FROM dead_letters").await, 0);
    assert_eq!(
        db.count("SELECT count(*) FROM sensors WHERE kind = 'alerts'")
            .await,
        0
    );
    // Unknown filters are refused.
    let r = http
        .get(hub.url("/api/v1/alerts?state=closed"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledging_needs_the_operator_token() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = receiver(listener);
    let dir = std::env::temp_dir().join(unique("alerts_ack"));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = config(&dir, port, "");
    let hub = Hub::build(&db, &broker, "alerts-ack")
        .file(conf.to_str().unwrap())
        .admin_token(TOKEN)
        .start()
        .await;
    let http = reqwest::Client::new();
    // A live-stream client of the bins: it gets the alert events too.
    let stream = Arc::new(Mutex::new(String::new()));
    let mut resp = http
        .get(hub.url("/api/v1/stream?kind=waste_bin"))
        .send()
        .await
        .unwrap();
    let sink = stream.clone();
    tokio::spawn(async move {
        while let Ok(Some(chunk)) = resp.chunk().await {
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&chunk));
        }
    });
    publish(
        &broker,
        "bin-k1",
        chrono::Utc::now(),
        json!({"fill_level": 99.0}),
    )
    .await;
    wait_for(30, "the alert", || {
        let (http, hub) = (&http, &hub);
        async move { alerts(http, hub, "?state=open").await.len() == 1 }
    })
    .await;
    let id = alerts(&http, &hub, "").await[0]["id"].as_i64().unwrap();
    let ack = |token: Option<&str>, id: i64| {
        let mut r = http
            .post(hub.url(&format!("/api/v1/alerts/{id}/ack")))
            .json(&json!({"note": "crew sent, round 14"}));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    assert_eq!(ack(None, id).await.unwrap().status(), 401);
    assert_eq!(
        ack(Some("operator-token-wrong-12345"), id)
            .await
            .unwrap()
            .status(),
        403
    );
    let r = ack(Some(OPERATOR), id).await.unwrap();
    assert_eq!(r.status(), 200);
    let a: Value = r.json().await.unwrap();
    assert_eq!(a["state"], "acknowledged");
    assert_eq!(a["ack_note"], "crew sent, round 14");
    // Who acknowledged is in the audit trail, written with the change.
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) FROM audit WHERE action = 'alert.acknowledged' AND target = 'alert:{id}'
               AND actor = 'bootstrap-operator' AND before->>'state' = 'open'
               AND after->>'state' = 'acknowledged' AND after->>'note' = 'crew sent, round 14'"
        ))
        .await,
        1
    );
    assert_eq!(ack(Some(OPERATOR), id).await.unwrap().status(), 409);
    assert_eq!(ack(Some(OPERATOR), id + 1000).await.unwrap().status(), 404);
    assert_eq!(alerts(&http, &hub, "?state=acknowledged").await.len(), 1);
    // An acknowledged alert still clears, and the receiver hears of all three.
    publish(
        &broker,
        "bin-k1",
        chrono::Utc::now(),
        json!({"fill_level": 10.0}),
    )
    .await;
    wait_for(30, "three deliveries", || {
        let got = got.clone();
        async move { deliveries(&got).len() >= 3 }
    })
    .await;
    let events: Vec<String> = deliveries(&got).into_iter().map(|(e, _)| e).collect();
    assert_eq!(events, ["raised", "acknowledged", "cleared"]);
    wait_for(10, "three alert events on the stream", || {
        let stream = stream.clone();
        async move { stream.lock().unwrap().matches("event: alert").count() >= 3 }
    })
    .await;
    let text = stream.lock().unwrap().clone();
    let alerts: Vec<(String, String)> = text
        .split("\n\n")
        .filter(|e| e.contains("event: alert"))
        .map(|e| {
            let id = e
                .lines()
                .find_map(|l| l.strip_prefix("id: "))
                .unwrap()
                .to_owned();
            let data = e.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
            let v: Value = serde_json::from_str(data).unwrap();
            (id, v["event"].as_str().unwrap().to_owned())
        })
        .collect();
    let kinds: Vec<&str> = alerts.iter().map(|(_, e)| e.as_str()).collect();
    assert_eq!(kinds, ["raised", "acknowledged", "cleared"], "{text}");
    assert!(alerts.iter().all(|(id, _)| !id.is_empty()));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every alert of `sensor` (any state), oldest first.
async fn history(http: &reqwest::Client, hub: &Hub, sensor: &str) -> Vec<Value> {
    let mut a = alerts(http, hub, &format!("?sensor={sensor}&limit=1000")).await;
    a.reverse();
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_match_the_faults_the_simulator_injected() {
    let (db, broker, hub) = open_hub("simalerts").await;
    let catalog = cityhub_core::Settings::builtin()
        .unwrap()
        .catalog()
        .unwrap();
    // Two fixed January weekdays (the same fleet every run): every lamp sees a dusk
    // and a dawn, every bin a round.
    use chrono::TimeZone;
    let start = chrono::Utc.with_ymd_and_hms(2026, 1, 13, 0, 0, 0).unwrap();
    let now = start + chrono::Duration::hours(48);
    let opts = cityhub_sim::SimOptions {
        seed: 21,
        start,
        fleet: cityhub_sim::FleetSpec {
            per_kind: vec![("waste_bin".into(), 16), ("streetlight".into(), 16)],
            lamp_fault_share: 0.5,
        },
        formats: vec![cityhub_sim::Format::Native],
        faults: cityhub_sim::FaultRates::default(),
    };
    let mut sim = cityhub_sim::Simulation::new(&opts, &catalog).unwrap();
    let faults: Vec<(String, Option<cityhub_sim::fleet::LampFault>)> = sim
        .sensors()
        .iter()
        .filter(|s| s.kind == "streetlight")
        .map(|s| (s.id.clone(), s.lamp_fault()))
        .collect();
    let mut msgs = Vec::new();
    while let Some(m) = sim.next_until(now) {
        msgs.push(m);
    }
    msgs.extend(sim.drain_held());
    publish_sim(&broker, &msgs).await;
    let want = expected_rows(&msgs);
    wait_for_rows(&db, want, 120, "the two days").await;
    hub.settled(msgs.len() as f64).await;
    let http = reqwest::Client::new();

    // Lamps: each one lit by day or dark at night raised an alert, and the night
    // or the day after cleared it; a working lamp raised none. (A flickering lamp
    // may or may not drop below 5 W for 20 minutes at night.)
    use cityhub_sim::fleet::LampFault;
    let mut faulty = 0;
    for (id, fault) in &faults {
        let h = history(&http, &hub, id).await;
        match fault {
            None => assert!(h.is_empty(), "{id} works, yet: {h:?}"),
            Some(LampFault::DayBurner | LampFault::Dark) => {
                faulty += 1;
                assert!(!h.is_empty(), "{id} ({fault:?}) raised no alert");
                assert!(
                    h.iter().all(|a| a["rule"] == "streetlight_lamp_fault"),
                    "{h:?}"
                );
                assert!(
                    h.iter().any(|a| a["state"] == "cleared"),
                    "{id} ({fault:?}): never cleared in two days: {h:?}"
                );
            }
            Some(LampFault::Flicker) => {}
        }
    }
    assert!(faulty >= 3, "only {faulty} lamps with a lasting fault");

    // Bins: the rule (raise at 80, clear below 50) run over the fill levels the
    // fleet sent gives the alerts to expect, raised and cleared, bin by bin.
    let mut seqs: std::collections::BTreeMap<String, Vec<(chrono::DateTime<chrono::Utc>, f64)>> =
        Default::default();
    for m in msgs.iter().filter(|m| m.kind == "waste_bin") {
        for (k, v) in &m.values {
            if k == "fill_level" {
                seqs.entry(m.sensor.clone()).or_default().push((m.time, *v));
            }
        }
    }
    let mut raised_total = 0;
    for (bin, mut seq) in seqs {
        seq.sort_by_key(|x| x.0);
        let (mut standing, mut raised, mut cleared) = (false, vec![], 0);
        for (t, v) in seq {
            if !standing && v >= 80.0 {
                standing = true;
                raised.push(t);
            } else if standing && v < 50.0 {
                standing = false;
                cleared += 1;
            }
        }
        let h = history(&http, &hub, &bin).await;
        let got_raised: Vec<String> = h
            .iter()
            .map(|a| a["raised_at"].as_str().unwrap().to_owned())
            .collect();
        let want_raised: Vec<String> = raised
            .iter()
            .map(|t| cityhub_core::time::rfc3339(*t))
            .collect();
        assert_eq!(got_raised, want_raised, "{bin}");
        assert_eq!(
            h.iter().filter(|a| a["state"] == "cleared").count(),
            cleared,
            "{bin}"
        );
        raised_total += raised.len();
    }
    assert!(
        raised_total >= 3,
        "only {raised_total} bin alarms in two days"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_sensor_raises_an_alert_and_its_next_reading_clears_it() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let dir = std::env::temp_dir().join(unique("silence"));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("cityhub.toml");
    // A kind reporting every 2 s: silent after 3 cadences, 6 s.
    std::fs::write(
        &conf,
        r#"
[kinds.beacon]
title = "Beacon"
cadence_s = 2
metrics = { level = { unit = "%", min = 0, max = 100 } }
"#,
    )
    .unwrap();
    let hub = Hub::build(&db, &broker, "silence")
        .file(conf.to_str().unwrap())
        .start()
        .await;
    let http = reqwest::Client::new();
    let beacon = |v: f64| {
        (
            "cityhub/v1/beacon/beacon-1".to_owned(),
            json!({"ts": chrono::Utc::now().to_rfc3339(), "values": {"level": v}})
                .to_string()
                .into_bytes(),
        )
    };
    publish_raw(&broker, &[beacon(10.0)]).await;
    wait_for(30, "the silence alert", || {
        let (http, hub) = (&http, &hub);
        async move {
            !alerts(http, hub, "?sensor=beacon-1&state=open")
                .await
                .is_empty()
        }
    })
    .await;
    let a = alerts(&http, &hub, "?sensor=beacon-1").await;
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(a[0]["rule"], "beacon_silent");
    assert_eq!(a[0]["metric"], "silence_s");
    assert_eq!(a[0]["threshold"], 6.0);
    assert!(a[0]["raised_value"].as_f64().unwrap() >= 6.0);
    publish_raw(&broker, &[beacon(11.0)]).await;
    wait_for(30, "the silence cleared", || {
        let (http, hub) = (&http, &hub);
        async move {
            alerts(http, hub, "?sensor=beacon-1&state=cleared")
                .await
                .len()
                == 1
        }
    })
    .await;
}

/// A bin flapping across its levels (90 % and 10 % in turn, one reading a minute for
/// 200 minutes) raises one alert per `alerts.reraise_after_s` (an hour here), as the
/// rule run over the readings says: 4, each cleared. Before, every flap raised one
/// (100 alerts and their notifications from one sensor).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_sensor_raises_once_per_reraise_interval() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let _hub = Hub::build(&db, &broker, "flap")
        .set(|s| s.alerts.reraise_after_s = 3600)
        .start()
        .await;
    let t0 = chrono::Utc::now() - chrono::Duration::minutes(300);
    let fill = |i: i64| if i % 2 == 0 { 90.0 } else { 10.0 };
    let items: Vec<(String, Vec<u8>)> = (0..200)
        .map(|i| {
            let ts = t0 + chrono::Duration::minutes(i);
            (
                "cityhub/v1/waste_bin/flap-1".to_owned(),
                json!({"ts": ts.to_rfc3339(), "values": {"fill_level": fill(i)}})
                    .to_string()
                    .into_bytes(),
            )
        })
        .collect();
    publish_raw(&broker, &items).await;
    // The rule (raise at 80, clear below 50) with the re-raise interval, by hand.
    let (mut standing, mut last_clear, mut raised) = (false, None::<i64>, 0);
    for i in 0..200 {
        let (t, v) = (i * 60, fill(i));
        if standing {
            if v < 50.0 {
                standing = false;
                last_clear = Some(t);
            }
        } else if v >= 80.0 && last_clear.is_none_or(|c| t - c >= 3600) {
            standing = true;
            raised += 1;
        }
    }
    assert_eq!(raised, 4);
    wait_for_rows(&db, 200, 60, "every reading").await;
    let count = |state: &'static str| {
        let db = &db;
        async move {
            db.count(&format!(
                "SELECT count(*) FROM alerts a JOIN sensors s ON s.id = a.sensor_id
                 WHERE s.external_id = 'flap-1' AND a.rule = 'waste_bin_fill_level_alarm'
                   AND a.state::text LIKE '{state}'"
            ))
            .await
        }
    };
    wait_for(30, "the alerts of every reading", || async {
        count("cleared").await == raised && count("%").await == raised
    })
    .await;
}

/// Cleared alerts past `alerts.retention_days` with every notification delivered go
/// (their outbox rows with them), delivered notifications past
/// `alerts.outbox_retention_days` go; a standing alert, one with a notification still
/// to deliver, and recent rows stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_alerts_and_delivered_notifications_are_deleted() {
    let db = TestDb::new().await;
    db.migrate().await.unwrap();
    db.client()
        .await
        .batch_execute(
            "INSERT INTO sensors (external_id, kind) VALUES ('old-1', 'waste_bin');
             CREATE FUNCTION old_alert(st text, age interval, delivered interval) RETURNS void
             LANGUAGE sql AS $$
               WITH a AS (
                 INSERT INTO alerts (rule, sensor_id, kind, metric, severity, state, threshold,
                                     raised_at, raised_value, cleared_at, updated_at)
                 SELECT 'waste_bin_fill_level_alarm', id, 'waste_bin', 'fill_level', 'critical', st,
                        80, now() - age, 90, CASE WHEN st = 'cleared' THEN now() - age END, now() - age
                 FROM sensors WHERE external_id = 'old-1' RETURNING id)
               INSERT INTO alert_outbox (alert_id, event, target, body, delivered_at)
               SELECT id, 'raised', 'webhook:0', '{}', now() - delivered FROM a $$;
             SELECT old_alert('cleared', '500 days', '500 days');  -- goes, with its outbox row
             SELECT old_alert('cleared', '500 days', NULL);        -- stays: not delivered
             SELECT old_alert('open', '500 days', '500 days');     -- stays: standing; outbox row goes
             SELECT old_alert('cleared', '1 day', '10 days');      -- stays; outbox row goes",
        )
        .await
        .unwrap();
    let broker = Broker::start();
    let _hub = Hub::build(&db, &broker, "retention").start().await;
    wait_for(30, "the retention run at start", || async {
        db.count("SELECT count(*) FROM alerts").await == 3
            && db.count("SELECT count(*) FROM alert_outbox").await == 1
    })
    .await;
    assert_eq!(
        db.count("SELECT count(*) FROM alert_outbox WHERE delivered_at IS NULL")
            .await,
        1
    );
}

/// Two webhooks, one of which hangs past `notify.timeout_s` on every request until it
/// is released: the other gets every event at once (each worker has its own target),
/// the hanging one gets every event once released, each alert's `raised` before its
/// `cleared` (retries and backoff never reorder them), and the log never shows the
/// hanging webhook's secret path. Before, the outbox was delivered in turn, so the
/// healthy receiver waited out the timeout of every notification of the hanging one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_webhook_delays_only_itself_and_events_stay_in_order() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let db = TestDb::new().await;
    let broker = Broker::start();
    let ok_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ok_port = ok_listener.local_addr().unwrap().port();
    let ok = receiver(ok_listener);
    let slow_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let slow_port = slow_listener.local_addr().unwrap().port();
    let hang = Arc::new(AtomicBool::new(true));
    let slow: Arc<Mutex<Vec<(String, i64)>>> = Arc::default();
    {
        let (hang, slow) = (hang.clone(), slow.clone());
        let app = axum::Router::new().route(
            "/hook/s3cr3t-path-token",
            axum::routing::post(move |b: Bytes| {
                let (hang, slow) = (hang.clone(), slow.clone());
                async move {
                    while hang.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    let v: Value = serde_json::from_slice(&b).unwrap();
                    let event = v["event"].as_str().unwrap().to_owned();
                    slow.lock()
                        .unwrap()
                        .push((event, v["alert"]["id"].as_i64().unwrap()));
                    "ok"
                }
            }),
        );
        tokio::spawn(async move { axum::serve(slow_listener, app).await });
    }
    let dir = std::env::temp_dir().join(unique("hooks"));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("cityhub.toml");
    std::fs::write(
        &conf,
        format!(
            r#"
[notify]
max_backoff_s = 2
timeout_s = 3
mqtt = false
[[notify.webhooks]]
url = "http://127.0.0.1:{slow_port}/hook/s3cr3t-path-token"
[[notify.webhooks]]
url = "http://127.0.0.1:{ok_port}/hook"
secret = "{SECRET}"
"#
        ),
    )
    .unwrap();
    let hub = Hub::build(&db, &broker, "hooks")
        .file(conf.to_str().unwrap())
        .start()
        .await;
    // Ten bins past their alarm, then each back below warn: 20 events per webhook.
    let t0 = chrono::Utc::now() - chrono::Duration::hours(1);
    for b in 0..10 {
        let sensor = format!("bin-h{b}");
        publish(&broker, &sensor, t0, json!({"fill_level": 90.0})).await;
        publish(
            &broker,
            &sensor,
            t0 + chrono::Duration::minutes(5),
            json!({"fill_level": 10.0}),
        )
        .await;
    }
    wait_for(40, "every event at the healthy webhook", || {
        let ok = ok.clone();
        async move { deliveries(&ok).len() >= 20 }
    })
    .await;
    // Let the hanging one time out and be retried a few times before it answers.
    wait_for(60, "failed attempts at the hanging webhook", || async {
        hub.metric("cityhub_alert_delivery_failures_total").await >= 3.0
    })
    .await;
    assert!(slow.lock().unwrap().is_empty());
    hang.store(false, Ordering::Relaxed);
    let in_order = |got: &[(String, i64)]| {
        let mut ids: Vec<i64> = got.iter().map(|(_, id)| *id).collect();
        ids.sort();
        ids.dedup();
        ids.len() == 10
            && ids.iter().all(|id| {
                let first = |e: &str| got.iter().position(|(ev, i)| ev == e && i == id);
                matches!((first("raised"), first("cleared")), (Some(r), Some(c)) if r < c)
            })
    };
    assert!(in_order(&deliveries(&ok)), "{:?}", deliveries(&ok));
    wait_for(120, "every event at the released webhook", || {
        let slow = slow.clone();
        async move {
            let got = slow.lock().unwrap().clone();
            let cleared: std::collections::HashSet<i64> = got
                .iter()
                .filter(|(e, _)| e == "cleared")
                .map(|(_, id)| *id)
                .collect();
            cleared.len() == 10
        }
    })
    .await;
    let got = slow.lock().unwrap().clone();
    assert!(in_order(&got), "{got:?}");
    let log = std::fs::read_to_string(&hub.log).unwrap();
    assert!(
        log.contains("An alert notification failed"),
        "no failure was logged"
    );
    assert!(
        !log.contains("s3cr3t-path-token"),
        "the log shows a webhook's secret path"
    );
}

/// Tests that kill, signal, restart or weigh a hub process: the second tier of
/// `scripts/test` (`cargo test -- process::`).
mod process {
    use super::*;

    /// The receiver is down for two minutes and the hub is killed and restarted in
    /// between: when the receiver is back, it gets every notification.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_receiver_down_for_two_minutes_and_a_hub_restart_lose_nothing() {
        let db = TestDb::new().await;
        let broker = Broker::start();
        let port = free_port().unwrap();
        let dir = std::env::temp_dir().join(unique("alerts_down"));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = config(&dir, port, "");
        let mut hub = Hub::start(
            &db,
            &broker,
            "alerts-down",
            &[("CITYHUB_CONFIG", conf.to_str().unwrap())],
        )
        .await;
        let down = std::time::Instant::now();
        publish(
            &broker,
            "bin-d1",
            chrono::Utc::now() - chrono::Duration::minutes(5),
            json!({"fill_level": 95.0}),
        )
        .await;
        wait_for(30, "a failed delivery attempt", || {
            let db = &db;
            async move {
                db.count(
                    "SELECT count(*) FROM alert_outbox WHERE target LIKE 'http%' AND attempts > 0",
                )
                .await
                    >= 1
            }
        })
        .await;
        hub.restart().await;
        publish(
            &broker,
            "bin-d1",
            chrono::Utc::now(),
            json!({"fill_level": 5.0}),
        )
        .await;
        wait_for(30, "the cleared notification queued", || {
            let db = &db;
            async move {
                db.count("SELECT count(*) FROM alert_outbox WHERE target LIKE 'http%'")
                    .await
                    == 2
            }
        })
        .await;
        let remaining = Duration::from_secs(120).saturating_sub(down.elapsed());
        tokio::time::sleep(remaining).await;
        assert_eq!(
            db.count(
                "SELECT count(*) FROM alert_outbox WHERE target LIKE 'http%' AND delivered_at IS NULL"
            )
            .await,
            2,
            "nothing could be delivered while the receiver was down"
        );
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let got = receiver(listener);
        wait_for(30, "both notifications, once the receiver is back", || {
            let got = got.clone();
            async move { deliveries(&got).len() >= 2 }
        })
        .await;
        let mut events: Vec<String> = deliveries(&got).into_iter().map(|(e, _)| e).collect();
        events.dedup();
        assert_eq!(events, ["raised", "cleared"]);
        assert_eq!(
            db.count("SELECT count(*) FROM alert_outbox WHERE delivered_at IS NULL")
                .await,
            0
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// An alert storm is delivered: 20,000 pending MQTT notifications (as storing a
/// fleet's months of history at once leaves), each claim within a 5 s statement
/// timeout. Before, asking of each pending row whether an earlier one of its alert
/// was pending read the whole outbox (26 s a claim at 12,500 rows), every claim was
/// cancelled and nothing was delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_storm_is_delivered() {
    let db = TestDb::new().await;
    db.migrate().await.unwrap();
    db.client()
        .await
        .batch_execute(
            "INSERT INTO sensors (external_id, kind) VALUES ('storm-1', 'waste_bin');
             WITH a AS (
               INSERT INTO alerts (rule, sensor_id, kind, metric, severity, state, threshold,
                                   raised_at, raised_value, cleared_at)
               SELECT 'waste_bin_fill_level_alarm', s.id, 'waste_bin', 'fill_level', 'critical',
                      'cleared', 80, now() - g * interval '1 minute', 90, now()
               FROM sensors s, generate_series(1, 10000) g RETURNING id)
             INSERT INTO alert_outbox (alert_id, event, target, body)
             SELECT id, e, 'mqtt:cityhub/v1/alerts/waste_bin/storm-1', '{}'
             FROM a, unnest(ARRAY['raised', 'cleared']) e ORDER BY id, e DESC;",
        )
        .await
        .unwrap();
    let broker = Broker::start();
    let _hub = Hub::build(&db, &broker, "storm")
        .set(|s| s.database.statement_timeout_s = 5)
        .start()
        .await;
    wait_for(120, "200 notifications delivered", || async {
        db.count("SELECT count(*) FROM alert_outbox WHERE delivered_at IS NOT NULL")
            .await
            >= 200
    })
    .await;
    // In order: no event delivered while an earlier one of its alert is pending.
    assert_eq!(
        db.count(
            "SELECT count(*) FROM alert_outbox o WHERE o.delivered_at IS NOT NULL
               AND EXISTS (SELECT 1 FROM alert_outbox p WHERE p.alert_id = o.alert_id
                           AND p.id < o.id AND p.delivered_at IS NULL)"
        )
        .await,
        0
    );
}
