//! Trust: device credentials on a real Mosquitto with its dynamic security plugin,
//! driven by `cityhub devices`; each endpoint tried with each role and with none;
//! the audit trail of every change; the public register.

use cityhub_testkit::*;
use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;

const ADMIN_USER: &str = "hub-admin";
const ADMIN_PASSWORD: &str = "broker-admin-password-for-tests";
const BOOTSTRAP: &str = "bootstrap-admin-token-0123456789";

/// The CLI's environment for `db` and a dynamic-security `broker`.
fn env(db: &TestDb, broker: &Broker) -> Vec<(&'static str, String)> {
    vec![
        ("CITYHUB_DATABASE_URL", db.url.clone()),
        ("CITYHUB_MQTT_URL", broker.url()),
        ("CITYHUB_MQTT_USERNAME", ADMIN_USER.into()),
        ("CITYHUB_MQTT_PASSWORD", ADMIN_PASSWORD.into()),
        ("CITYHUB_MQTT_DYNAMIC_SECURITY", "true".into()),
        ("CITYHUB_STORE_TIMESCALEDB", timescaledb_mode()),
    ]
}

fn run(args: &[&str], env: &[(&'static str, String)]) -> std::process::Output {
    let e: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    cli(args, &e)
}

fn run_json(args: &[&str], env: &[(&'static str, String)]) -> Value {
    let e: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = cli_ok(args, &e);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "cityhub {}: not JSON ({e}): {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// `mosquitto_pub` as `user` with `password`, QoS 1, MQTT 5; whether it succeeded.
fn publish_as(broker: &Broker, user: &str, password: &str, topic: &str, payload: &str) -> bool {
    let out = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string(), "-q", "1"])
        .args([
            "-V",
            "mqttv5",
            "-i",
            &unique("pub"),
            "-u",
            user,
            "-P",
            password,
        ])
        .args(["-t", topic, "-m", payload])
        .output()
        .expect("mosquitto_pub");
    out.status.success()
}

fn reading(fill: f64) -> String {
    json!({"ts": chrono::Utc::now().to_rfc3339(), "values": {"fill_level": fill}}).to_string()
}

async fn readings_of(db: &TestDb, sensor: &str) -> Vec<f64> {
    let c = db.client().await;
    c.query(
        "SELECT o.value FROM observations o JOIN sensors s ON s.id = o.sensor_id
         JOIN metrics m ON m.id = o.metric_id
         WHERE s.external_id = $1 AND m.name = 'fill_level' ORDER BY o.time",
        &[&sensor],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get::<_, f64>(0))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_publishes_only_its_own_topic_and_rotation_and_revocation_cut_it_off() {
    let db = TestDb::new().await;
    let broker = Broker::start_dynsec(ADMIN_USER, ADMIN_PASSWORD);
    let hub = Hub::build(&db, &broker, "trust-dynsec")
        .set(|s| {
            s.mqtt.username = Some(ADMIN_USER.into());
            s.mqtt.password = Some(cityhub_core::Secret::new(ADMIN_PASSWORD));
            s.mqtt.dynamic_security = true;
        })
        .start()
        .await;
    let env = env(&db, &broker);
    let a = run_json(
        &[
            "devices",
            "provision",
            "bin-a",
            "--kind",
            "waste_bin",
            "--json",
        ],
        &env,
    );
    let b = run_json(
        &[
            "devices",
            "provision",
            "bin-b",
            "--kind",
            "waste_bin",
            "--json",
        ],
        &env,
    );
    assert_eq!(a["username"], "bin-a");
    assert_eq!(a["topics"], json!(["cityhub/v1/waste_bin/bin-a"]));
    let (pa, pb) = (
        a["password"].as_str().unwrap(),
        b["password"].as_str().unwrap(),
    );
    assert!(pa.len() >= 32 && pa != pb);
    // No password is kept in clear.
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) FROM devices WHERE secret_hash LIKE '$argon2id$%' AND strpos(secret_hash, '{pa}') = 0"
        ))
        .await,
        2
    );
    assert!(
        !run(
            &["devices", "provision", "bin-a", "--kind", "waste_bin"],
            &env
        )
        .status
        .success(),
        "a device is provisioned once"
    );

    // Its own topic: stored.
    assert!(publish_as(
        &broker,
        "bin-a",
        pa,
        "cityhub/v1/waste_bin/bin-a",
        &reading(11.0)
    ));
    // Another device's topic, with bin-a's credentials: the broker drops it.
    publish_as(
        &broker,
        "bin-a",
        pa,
        "cityhub/v1/waste_bin/bin-b",
        &reading(66.0),
    );
    publish_as(
        &broker,
        "bin-a",
        pa,
        "cityhub/v1/waste_bin/bin-new",
        &reading(67.0),
    );
    // No credentials, or wrong ones: refused at connect.
    assert!(!Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string(), "-q", "1"])
        .args(["-t", "cityhub/v1/waste_bin/bin-b", "-m", &reading(68.0)])
        .status()
        .unwrap()
        .success());
    assert!(!publish_as(
        &broker,
        "bin-b",
        pa,
        "cityhub/v1/waste_bin/bin-b",
        &reading(69.0)
    ));
    // bin-b's own reading, after the refused ones: once it is stored, they would have been.
    assert!(publish_as(
        &broker,
        "bin-b",
        pb,
        "cityhub/v1/waste_bin/bin-b",
        &reading(22.0)
    ));
    wait_for(30, "bin-b's own reading", || {
        let db = &db;
        async move { !readings_of(db, "bin-b").await.is_empty() }
    })
    .await;
    hub.acked().await;
    assert_eq!(readings_of(&db, "bin-a").await, vec![11.0]);
    assert_eq!(
        readings_of(&db, "bin-b").await,
        vec![22.0],
        "bin-a wrote nothing for bin-b"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM sensors WHERE external_id = 'bin-new'")
            .await,
        0
    );
    assert_eq!(db.count("SELECT count(*) FROM dead_letters").await, 0);

    // Rotation: the new password works, the old one does not.
    let r = run_json(&["devices", "rotate", "bin-a", "--json"], &env);
    let new = r["password"].as_str().unwrap();
    assert_ne!(new, pa);
    assert!(!publish_as(
        &broker,
        "bin-a",
        pa,
        "cityhub/v1/waste_bin/bin-a",
        &reading(12.0)
    ));
    assert!(publish_as(
        &broker,
        "bin-a",
        new,
        "cityhub/v1/waste_bin/bin-a",
        &reading(13.0)
    ));
    wait_for(30, "the reading sent with the new password", || {
        let db = &db;
        async move { readings_of(db, "bin-a").await == vec![11.0, 13.0] }
    })
    .await;

    // Revocation: a connected device is cut off, and its next login refused.
    let mut o = rumqttc::v5::MqttOptions::new(unique("bin-a"), "127.0.0.1", broker.port);
    o.set_credentials("bin-a", new);
    o.set_keep_alive(Duration::from_secs(5));
    let (client, mut events) = rumqttc::v5::AsyncClient::new(o, 10);
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.poll()).await {
            Ok(Ok(rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::ConnAck(
                _,
            )))) => break,
            Ok(Ok(_)) => {}
            other => panic!("bin-a could not connect before its revocation: {other:?}"),
        }
    }
    let watcher = tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(_) => {}
                Err(e) => return e.to_string(),
            }
        }
    });
    cli_ok_env(&["devices", "revoke", "bin-a"], &env);
    let why = tokio::time::timeout(Duration::from_secs(30), watcher)
        .await
        .expect("the revoked device's connection is closed by the broker")
        .unwrap();
    drop(client);
    assert!(!publish_as(
        &broker,
        "bin-a",
        new,
        "cityhub/v1/waste_bin/bin-a",
        &reading(14.0)
    ));
    assert!(publish_as(
        &broker,
        "bin-b",
        pb,
        "cityhub/v1/waste_bin/bin-b",
        &reading(23.0)
    ));
    wait_for(30, "bin-b's second reading", || {
        let db = &db;
        async move { readings_of(db, "bin-b").await.len() == 2 }
    })
    .await;
    hub.acked().await;
    assert_eq!(readings_of(&db, "bin-a").await, vec![11.0, 13.0]);

    // The list, and the audit rows of every credential change.
    let list = run_json(&["devices", "list", "--json"], &env);
    let revoked: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| !d["revoked_at"].is_null())
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(revoked, vec!["bin-a"]);
    let actions: Vec<String> = db
        .client()
        .await
        .query(
            "SELECT action || ' ' || target FROM audit WHERE actor LIKE 'cli:%' ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        actions,
        vec![
            "device.provision device:bin-a",
            "device.provision device:bin-b",
            "device.rotate device:bin-a",
            "device.revoke device:bin-a"
        ]
    );
    eprintln!("revoked connection ended with: {why}");
    drop(hub);
}

fn cli_ok_env(args: &[&str], env: &[(&'static str, String)]) {
    let e: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    cli_ok(args, &e);
}

/// Each endpoint that needs a token, with the least role it needs (None: public).
fn endpoints() -> Vec<(&'static str, String, Option<&'static str>, Option<Value>)> {
    vec![
        ("GET", "/api/v1/sensors".into(), None, None),
        ("GET", "/api/v1/alerts".into(), None, None),
        ("GET", "/api/v1/me".into(), Some("viewer"), None),
        ("GET", "/api/v1/dead-letters".into(), Some("viewer"), None),
        (
            "POST",
            "/api/v1/alerts/999999/ack".into(),
            Some("operator"),
            Some(json!({})),
        ),
        (
            "PATCH",
            "/api/v1/sensors/bin-r/service".into(),
            Some("operator"),
            Some(json!({"status": "maintenance", "note": "lid replaced"})),
        ),
        (
            "PUT",
            "/api/v1/sensors/bin-r".into(),
            Some("admin"),
            Some(
                json!({"type": "Feature", "geometry": {"type": "Point", "coordinates": [10.02, 45.13]},
                "properties": {"kind": "waste_bin", "name": "Via Roma"}}),
            ),
        ),
        ("GET", "/api/v1/audit".into(), Some("admin"), None),
        ("GET", "/api/v1/operators".into(), Some("admin"), None),
        (
            "POST",
            "/api/v1/operators".into(),
            Some("admin"),
            Some(json!({"name": "NAME", "role": "viewer"})),
        ),
        (
            "POST",
            "/api/v1/operators/nobody/disable".into(),
            Some("admin"),
            None,
        ),
        (
            "POST",
            "/api/v1/operators/nobody/rotate".into(),
            Some("admin"),
            None,
        ),
    ]
}

fn rank(role: &str) -> u8 {
    match role {
        "viewer" => 1,
        "operator" => 2,
        "admin" => 3,
        _ => 0,
    }
}

async fn get_json(http: &reqwest::Client, url: impl reqwest::IntoUrl, token: &str) -> Value {
    http.get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// What `GET /api/v1/me` answers `token`.
async fn me_status(http: &reqwest::Client, hub: &Hub, token: &str) -> u16 {
    http.get(hub.url("/api/v1/me"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Adds an account as `admin` and returns its token.
async fn token_of(http: &reqwest::Client, hub: &Hub, admin: &str, body: Value) -> String {
    let r = add(http, hub, admin, body).await;
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    v["token"].as_str().unwrap().to_owned()
}

async fn add(http: &reqwest::Client, hub: &Hub, token: &str, body: Value) -> reqwest::Response {
    http.post(hub.url("/api/v1/operators"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_endpoint_answers_each_role_as_the_role_allows() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let hub = Hub::build(&db, &broker, "trust-roles")
        .admin_token(BOOTSTRAP)
        .start()
        .await;
    let http = reqwest::Client::new();
    let mut tokens: Vec<(String, Option<String>)> = vec![("none".into(), None)];
    for role in ["viewer", "operator", "admin"] {
        let r = add(
            &http,
            &hub,
            BOOTSTRAP,
            json!({"name": format!("the-{role}"), "role": role}),
        )
        .await;
        assert_eq!(r.status(), 201);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["role"], role);
        tokens.push((role.into(), Some(v["token"].as_str().unwrap().to_owned())));
    }
    // A disabled account, an expired one, a made-up token of the right shape, a wrong bootstrap.
    let gone = token_of(
        &http,
        &hub,
        BOOTSTRAP,
        json!({"name": "gone", "role": "admin"}),
    )
    .await;
    let d = http
        .post(hub.url("/api/v1/operators/gone/disable"))
        .bearer_auth(BOOTSTRAP)
        .send()
        .await
        .unwrap();
    assert_eq!(d.status(), 200);
    let expired = token_of(
        &http,
        &hub,
        BOOTSTRAP,
        json!({"name": "expired", "role": "admin", "expires_at": "2020-01-01T00:00:00Z"}),
    )
    .await;
    let admin = tokens[3].1.clone().unwrap();
    let forged = format!("{}xx", &admin[..admin.len() - 2]);
    tokens.push(("disabled".into(), Some(gone)));
    tokens.push(("expired".into(), Some(expired)));
    tokens.push(("forged".into(), Some(forged)));
    tokens.push((
        "wrong-bootstrap".into(),
        Some("not-the-bootstrap-token-000".into()),
    ));
    // The sensor the operator endpoints act on.
    let put = http
        .put(hub.url("/api/v1/sensors/bin-r"))
        .bearer_auth(BOOTSTRAP)
        .json(&json!({"properties": {"kind": "waste_bin"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);

    let mut table = String::from("endpoint");
    for (who, _) in &tokens {
        table.push_str(&format!("\t{who}"));
    }
    table.push('\n');
    let mut n = 0;
    for (method, path, needs, body) in endpoints() {
        table.push_str(&format!("{method} {path}"));
        for (who, token) in &tokens {
            n += 1;
            let mut body = body.clone();
            if let Some(b) = body.as_mut().filter(|b| b["name"] == "NAME") {
                b["name"] = json!(format!("new-{n}"));
            }
            let mut req = http.request(method.parse().unwrap(), hub.url(&path));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            if let Some(b) = &body {
                req = req.json(b);
            }
            let status = req.send().await.unwrap().status().as_u16();
            table.push_str(&format!("\t{status}"));
            let allowed = match needs {
                None => true,
                Some(role) => rank(who) >= rank(role),
            };
            match (needs, token, allowed) {
                (None, _, _) => assert_eq!(status, 200, "{method} {path} as {who} (public)"),
                (Some(_), None, _) => assert_eq!(status, 401, "{method} {path} without a token"),
                (Some(_), Some(_), false) => {
                    assert_eq!(status, 403, "{method} {path} as {who}: refused")
                }
                (Some(_), Some(_), true) => assert!(
                    [200, 201, 404].contains(&status),
                    "{method} {path} as {who}: allowed, got {status}"
                ),
            }
        }
        table.push('\n');
    }
    eprintln!("{table}");
    let _ = std::fs::write(artifacts_dir().join("roles.txt"), &table);
    // Who the map shows as signed in.
    let me: Value = get_json(&http, hub.url("/api/v1/me"), tokens[2].1.as_ref().unwrap()).await;
    assert_eq!(
        me,
        json!({"name": "the-operator", "role": "operator", "bootstrap": false})
    );
    // A refusal says what is missing, not more.
    let r: Value = get_json(
        &http,
        hub.url("/api/v1/audit"),
        tokens[1].1.as_ref().unwrap(),
    )
    .await;
    assert_eq!(
        r["description"],
        "this call needs the admin role; the-viewer is a viewer"
    );
    // The bootstrap token left configured while accounts exist: a warning.
    let ready: Value = reqwest::get(hub.url("/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let warnings = ready["warnings"].to_string();
    assert!(warnings.contains("bootstrap tokens"), "{ready}");
    // Security headers on every answer.
    for path in ["/api/v1/sensors", "/", "/api/v1/audit", "/nowhere"] {
        let r = reqwest::get(hub.url(path)).await.unwrap();
        let h = r.headers();
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
        assert_eq!(h["x-frame-options"], "SAMEORIGIN", "{path}");
        assert!(h.contains_key("content-security-policy"), "{path}");
    }
    drop(hub);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_is_in_the_audit_trail_with_who_and_the_values_before_and_after() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let hub = Hub::build(&db, &broker, "trust-audit")
        .admin_token(BOOTSTRAP)
        .start()
        .await;
    let http = reqwest::Client::new();
    let alice = token_of(
        &http,
        &hub,
        BOOTSTRAP,
        json!({"name": "alice", "role": "admin"}),
    )
    .await;
    let bob = token_of(
        &http,
        &hub,
        &alice,
        json!({"name": "bob", "role": "operator"}),
    )
    .await;
    let put = |body: Value| {
        http.put(hub.url("/api/v1/sensors/bin-au"))
            .bearer_auth(&alice)
            .json(&body)
            .send()
    };
    let r = put(
        json!({"geometry": {"type": "Point", "coordinates": [10.02, 45.13]},
        "properties": {"kind": "waste_bin", "name": "Via Roma", "depth_mm": 1200,
            "purpose": "Livello di riempimento per i giri di raccolta",
            "responsible": "Comune di Cremona, Settore Ambiente", "personal_data": false}}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 201);
    let r = put(
        json!({"geometry": {"type": "Point", "coordinates": [10.03, 45.14]},
        "properties": {"kind": "waste_bin", "name": "Via Roma 2", "depth_mm": 1100,
            "purpose": "Livello di riempimento per i giri di raccolta",
            "responsible": "Comune di Cremona, Settore Ambiente"}}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .patch(hub.url("/api/v1/sensors/bin-au/service"))
        .bearer_auth(&bob)
        .json(&json!({"status": "maintenance", "note": "lid replaced"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let props: Value = r.json().await.unwrap();
    assert_eq!(props["service_status"], "maintenance");
    // A personal-data sensor without its legal basis is refused, and nothing is recorded.
    let r = put(json!({"properties": {"kind": "waste_bin", "personal_data": true}}))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Credential changes through the API.
    let r = http
        .post(hub.url("/api/v1/operators/bob/rotate"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let new_bob: Value = r.json().await.unwrap();
    let new_bob = new_bob["token"].as_str().unwrap().to_owned();
    // The old token stops working within the accounts' refresh, the new one works.
    wait_for(10, "bob's old token to stop working", || {
        let (http, hub, bob) = (&http, &hub, &bob);
        async move { me_status(http, hub, bob).await == 403 }
    })
    .await;
    assert_eq!(me_status(&http, &hub, &new_bob).await, 200);
    let r = http
        .post(hub.url("/api/v1/operators/bob/disable"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    wait_for(10, "bob's disabled token to stop working", || {
        let (http, hub, t) = (&http, &hub, &new_bob);
        async move { me_status(http, hub, t).await == 403 }
    })
    .await;
    // An import from the command line.
    let dir = std::env::temp_dir().join(unique("audit_import"));
    std::fs::create_dir_all(&dir).unwrap();
    let csv = dir.join("sensors.csv");
    std::fs::write(
        &csv,
        "id,kind,name,lon,lat,purpose,responsible,contact\nbin-au,waste_bin,Via Roma 3,10.03,45.14,,,ambiente@comune.cremona.it\nbin-im,waste_bin,Piazza,10.04,45.13,Raccolta,Settore Ambiente,\n",
    )
    .unwrap();
    cli_ok(
        &["sensors", "import", csv.to_str().unwrap()],
        &[
            ("CITYHUB_DATABASE_URL", db.url.as_str()),
            ("CITYHUB_STORE_TIMESCALEDB", &timescaledb_mode()),
            ("USER", "maria"),
            ("SUDO_USER", ""),
        ],
    );

    // The trail, read as an admin reads it: newest first, paged.
    let mut all = Vec::new();
    let mut url = hub.url("/api/v1/audit?limit=3");
    loop {
        let page: Value = get_json(&http, &url, &alice).await;
        all.extend(page["audit"].as_array().unwrap().clone());
        match page["links"]
            .as_array()
            .and_then(|l| l.iter().find(|l| l["rel"] == "next"))
        {
            Some(next) => url = next["href"].as_str().unwrap().to_owned(),
            None => break,
        }
    }
    all.reverse();
    let seen: Vec<String> = all
        .iter()
        .map(|e| {
            format!(
                "{} {} {}",
                e["actor"].as_str().unwrap(),
                e["action"].as_str().unwrap(),
                e["target"].as_str().unwrap()
            )
        })
        .collect();
    let maria = "cli:maria";
    assert_eq!(
        seen,
        vec![
            "bootstrap-admin operator.add operator:alice".to_owned(),
            "operator:alice operator.add operator:bob".into(),
            "operator:alice sensor.register sensor:bin-au".into(),
            "operator:alice sensor.replace sensor:bin-au".into(),
            "operator:bob sensor.service sensor:bin-au".into(),
            "operator:alice operator.rotate operator:bob".into(),
            "operator:alice operator.disable operator:bob".into(),
            format!("{maria} sensor.import sensor:bin-au"),
            format!("{maria} sensor.import sensor:bin-im"),
        ]
    );
    let replace = &all[3];
    assert_eq!(replace["before"]["name"], "Via Roma");
    assert_eq!(replace["after"]["name"], "Via Roma 2");
    assert_eq!(replace["before"]["properties"]["depth_mm"], 1200);
    assert_eq!(replace["after"]["lon"], 10.03);
    assert_eq!(replace["before"]["register"]["personal_data"], false);
    let service = &all[4];
    assert!(service["before"]["properties"]["service_status"].is_null());
    assert_eq!(
        service["after"]["properties"]["service_note"],
        "lid replaced"
    );
    // Tokens and hashes never reach the trail.
    let text = serde_json::to_string(&all).unwrap();
    assert!(!text.contains("argon2") && !text.contains("cho_"), "{text}");
    // The import kept the register fields it did not set.
    let import = &all[7];
    assert_eq!(
        import["after"]["register"]["contact"],
        "ambiente@comune.cremona.it"
    );
    assert_eq!(
        import["after"]["register"]["responsible"],
        "Comune di Cremona, Settore Ambiente"
    );
    // Filters.
    let only: Value = get_json(
        &http,
        hub.url("/api/v1/audit?action=operator.&actor=operator:alice"),
        &alice,
    )
    .await;
    assert_eq!(only["audit"].as_array().unwrap().len(), 3);
    drop(hub);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_register_is_open_data_and_its_gaps_are_reported() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let hub = Hub::build(&db, &broker, "trust-register")
        .admin_token(BOOTSTRAP)
        .start()
        .await;
    let http = reqwest::Client::new();
    for (id, props) in [
        (
            "cam-1",
            json!({"kind": "bike_counter", "purpose": "Conteggio bici", "purpose_en": "Bicycle counts",
                   "responsible": "Settore Mobilità", "contact": "mobilita@comune.cremona.it",
                   "personal_data": true, "legal_basis": "GDPR art. 6(1)(e), public task"}),
        ),
        ("bin-gap", json!({"kind": "waste_bin"})),
        (
            "bin-indoor",
            json!({"kind": "waste_bin", "public_space": false}),
        ),
    ] {
        let r = http
            .put(hub.url(&format!("/api/v1/sensors/{id}")))
            .bearer_auth(BOOTSTRAP)
            .json(&json!({"geometry": {"type": "Point", "coordinates": [10.02, 45.13]}, "properties": props}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{id}");
    }
    let ready: Value = reqwest::get(hub.url("/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        ready["warnings"]
            .to_string()
            .contains("1 sensors in public space lack a purpose or a responsible party"),
        "{ready}"
    );
    let fc: Value = reqwest::get(hub.url("/register/sensors.geojson"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let cam = fc["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "cam-1")
        .unwrap();
    let p = &cam["properties"];
    assert_eq!(p["purpose_en"], "Bicycle counts");
    assert_eq!(p["personal_data"], true);
    assert_eq!(p["legal_basis"], "GDPR art. 6(1)(e), public task");
    assert_eq!(p["retention_days"], 730);
    assert!(p["measures"].as_str().unwrap().contains("count"), "{p}");
    let gap = fc["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "bin-gap")
        .unwrap();
    assert!(gap["properties"]["purpose"].is_null());
    assert_eq!(gap["properties"]["public_space"], true);
    let csv = reqwest::get(hub.url("/register/sensors.csv"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        csv.lines().next().unwrap(),
        "sensor_id,name,kind,lon,lat,purpose,purpose_en,responsible,contact,measures,personal_data,legal_basis,public_space,retention_days,service_status"
    );
    assert_eq!(csv.lines().count(), 4);
    // The sensor's own record carries it too.
    let one: Value = reqwest::get(hub.url("/api/v1/sensors/cam-1"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        one["properties"]["register"]["responsible"],
        "Settore Mobilità"
    );
    assert_eq!(
        reqwest::get(hub.url("/register/other.txt"))
            .await
            .unwrap()
            .status(),
        404
    );
    drop(hub);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_carry_the_devices_password_once_devices_exist() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let hub = Hub::build(&db, &broker, "trust-uploads").start().await;
    let http = reqwest::Client::new();
    let url = hub.url("/ingest/sensor-community");
    let body = |chip: &str, pm10: &str| {
        format!(
            r#"{{"esp8266id":"{chip}","sensordatavalues":[{{"value_type":"SDS_P1","value":"{pm10}"}},{{"value_type":"SDS_P2","value":"4.00"}}]}}"#
        )
    };
    let post = |chip: &'static str, auth: Option<(&str, &str)>, payload: String| {
        let mut r = http
            .post(&url)
            .header("X-Sensor", format!("esp8266-{chip}"))
            .body(payload);
        if let Some((u, p)) = auth {
            r = r.basic_auth(u, Some(p));
        }
        r.send()
    };
    // No device credential exists yet: uploads are open (ingest.upload_auth = "auto").
    assert_eq!(
        post("4242", None, body("4242", "10.00"))
            .await
            .unwrap()
            .status(),
        200
    );
    // An oversize upload keeps only a small prefix as its dead letter.
    let big = format!(
        "{{\"esp8266id\":\"4242\",\"pad\":\"{}\"}}",
        "x".repeat(100_000)
    );
    let big_len = big.len() as i32;
    assert_eq!(post("4242", None, big).await.unwrap().status(), 422);
    let (kept, total): (i32, i32) = {
        let r = db
            .client()
            .await
            .query_one(
                "SELECT octet_length(payload), payload_bytes FROM dead_letters WHERE reason_code = 'oversize'",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((kept, total), (256, big_len));

    let mode = timescaledb_mode();
    let e: Vec<(&str, &str)> = vec![
        ("CITYHUB_DATABASE_URL", db.url.as_str()),
        ("CITYHUB_STORE_TIMESCALEDB", &mode),
    ];
    let kind = db
        .text("SELECT kind FROM sensors WHERE external_id = 'sc-4242'")
        .await;
    let out = cli_ok(
        &["devices", "provision", "sc-4242", "--kind", &kind, "--json"],
        &e,
    );
    let issued: Value = serde_json::from_slice(&out.stdout).unwrap();
    let password = issued["password"].as_str().unwrap().to_owned();
    let dead_before = db.count("SELECT count(*) FROM dead_letters").await;

    // Now a device password is asked for.
    let r = post("4242", None, body("4242", "11.00")).await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Basic"));
    assert_eq!(
        post(
            "4242",
            Some(("sc-4242", "wrong-password")),
            body("4242", "12.00")
        )
        .await
        .unwrap()
        .status(),
        401
    );
    let r = post("4242", Some(("sc-4242", &password)), body("4242", "13.00"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Its password does not let it send for another sensor (a registered one, or a new one).
    let r = post("111", Some(("sc-4242", &password)), body("111", "66.00"))
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let why: Value = r.json().await.unwrap();
    assert!(why["error"].as_str().unwrap().contains("sc-111"), "{why}");
    assert_eq!(
        db.count("SELECT count(*) FROM sensors WHERE external_id = 'sc-111'")
            .await,
        0
    );
    // Refused uploads leave no dead letters (they were each 16 KiB before).
    assert_eq!(
        db.count("SELECT count(*) FROM dead_letters").await,
        dead_before
    );

    // Revoked: refused.
    cli_ok(&["devices", "revoke", "sc-4242"], &e);
    assert_eq!(
        post("4242", Some(("sc-4242", &password)), body("4242", "14.00"))
            .await
            .unwrap()
            .status(),
        401
    );
    let pm10: Vec<f64> = db
        .client()
        .await
        .query(
            "SELECT o.value FROM observations o JOIN sensors s ON s.id = o.sensor_id
             JOIN metrics m ON m.id = o.metric_id WHERE s.external_id = 'sc-4242' AND m.name = 'pm10'
             ORDER BY o.time",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(pm10, vec![10.0, 13.0]);
    drop(hub);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_in_operator_has_a_rate_limit_bucket_of_its_own() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let hub = Hub::build(&db, &broker, "trust-ratelimit")
        .admin_token(BOOTSTRAP)
        .set(|s| {
            s.http.rate_limit_per_s = 1;
            s.http.rate_limit_burst = 3;
        })
        .start()
        .await;
    let http = reqwest::Client::new();
    let carla = token_of(
        &http,
        &hub,
        BOOTSTRAP,
        json!({"name": "carla", "role": "viewer"}),
    )
    .await;
    let me = || http.get(hub.url("/api/v1/me")).bearer_auth(&carla).send();
    // Her first call is checked (and paid for by the address); later ones are hers.
    assert_eq!(me().await.unwrap().status(), 200);
    // The public from the same address empties the address's bucket...
    let mut refused = false;
    for _ in 0..30 {
        if reqwest::get(hub.url("/api/v1/kinds"))
            .await
            .unwrap()
            .status()
            == 429
        {
            refused = true;
            break;
        }
    }
    assert!(refused, "the address's bucket never ran out");
    // ...and she still gets in, on her own bucket, until she empties it herself.
    assert_eq!(me().await.unwrap().status(), 200);
    let mut why = None;
    for _ in 0..30 {
        let r = me().await.unwrap();
        if r.status() == 429 {
            why = Some(r.json::<Value>().await.unwrap());
            break;
        }
    }
    let why = why.expect("her own bucket never ran out");
    assert!(
        why["description"]
            .as_str()
            .unwrap()
            .contains("this operator"),
        "{why}"
    );
    drop(hub);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_uploads_are_kept_as_dead_letters_only_up_to_each_clients_budget() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let hub = Hub::build(&db, &broker, "trust-dead-budget")
        .set(|s| s.ingest.upload_dead_letters_per_hour = 3)
        .start()
        .await;
    let http = reqwest::Client::new();
    let url = hub.url("/ingest/sensor-community");
    // Nothing valid in it: a PM10 value that is not a number.
    let bad =
        r#"{"esp8266id":"77","sensordatavalues":[{"value_type":"SDS_P1","value":"not-a-number"}]}"#;
    let post = |auth: Option<(&str, &str)>| {
        let mut r = http.post(&url).header("X-Sensor", "esp8266-77").body(bad);
        if let Some((u, p)) = auth {
            r = r.basic_auth(u, Some(p));
        }
        r.send()
    };
    let dead = || db.count("SELECT count(*) FROM dead_letters");
    // The address's budget: three kept, then answered as refused but not kept.
    let mut notes = Vec::new();
    for _ in 0..6 {
        let r = post(None).await.unwrap();
        assert_eq!(r.status(), 422);
        let body: Value = r.json().await.unwrap();
        notes.push(body["dead_letter"].as_str().map(str::to_owned));
    }
    assert_eq!(dead().await, 3);
    assert!(notes[..3].iter().all(Option::is_none), "{notes:?}");
    assert!(
        notes[3..]
            .iter()
            .all(|n| n.as_deref().is_some_and(|n| n.contains("not kept"))),
        "{notes:?}"
    );
    assert_eq!(hub.metric("cityhub_dead_letters_not_kept_total").await, 3.0);

    // A device that signs in has a budget of its own, not its address's.
    let mode = timescaledb_mode();
    let e: Vec<(&str, &str)> = vec![
        ("CITYHUB_DATABASE_URL", db.url.as_str()),
        ("CITYHUB_STORE_TIMESCALEDB", &mode),
    ];
    let issued: Value = serde_json::from_slice(
        &cli_ok(
            &[
                "devices",
                "provision",
                "sc-77",
                "--kind",
                "air_quality",
                "--json",
            ],
            &e,
        )
        .stdout,
    )
    .unwrap();
    let password = issued["password"].as_str().unwrap().to_owned();
    for kept in [true, true, true, false] {
        let r = post(Some(("sc-77", &password))).await.unwrap();
        assert_eq!(r.status(), 422);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body.get("dead_letter").is_none(), kept, "{body}");
    }
    assert_eq!(dead().await, 6);
    drop(hub);
}
