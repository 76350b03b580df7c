//! The open-data API over real HTTP, on a hub fed through Mosquitto by the
//! simulators: every endpoint, its errors and edge cases, compared with what the
//! database holds. `tests/validators.rs` runs the outside validators.

use chrono::{DateTime, Duration, Utc};
use cityhub_testkit::*;
use serde_json::{json, Value};
use std::collections::HashSet;

fn ids(fc: &Value) -> Vec<String> {
    fc["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensors_kinds_and_readings() {
    let f = fixture(&[]).await;

    // The kind catalogue.
    let (code, kinds) = f.json("/api/v1/kinds").await;
    assert_eq!(code, 200);
    let bins = kinds["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "waste_bin")
        .unwrap();
    let fill = bins["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "fill_level")
        .unwrap();
    assert_eq!(
        (
            fill["unit"].as_str(),
            fill["min"].as_f64(),
            fill["max"].as_f64()
        ),
        (Some("%"), Some(0.0), Some(100.0))
    );
    assert_eq!(fill["derived"], true);

    // All sensors, then one kind, then a bounding box, each against the database.
    let r = f.get("/api/v1/sensors").await;
    assert_eq!(r.headers()["content-type"], "application/geo+json");
    let all: Value = r.json().await.unwrap();
    assert_eq!(all["type"], "FeatureCollection");
    assert_eq!(
        ids(&all).len() as i64,
        f.db.count("SELECT count(*) FROM sensors").await
    );
    let (_, bins) = f.json("/api/v1/sensors?kind=waste_bin").await;
    assert_eq!(
        ids(&bins).len() as i64,
        f.db.count("SELECT count(*) FROM sensors WHERE kind = 'waste_bin'")
            .await
    );
    let c = f.db.client().await;
    let row = c.query_one("SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY lon), percentile_cont(0.5) WITHIN GROUP (ORDER BY lat) FROM sensors", &[]).await.unwrap();
    let (mlon, mlat): (f64, f64) = (row.get(0), row.get(1));
    let (_, boxed) = f
        .json(&format!("/api/v1/sensors?bbox=0,0,{mlon},{mlat}"))
        .await;
    let want =
        f.db.count(&format!(
            "SELECT count(*) FROM sensors WHERE lon <= {mlon} AND lat <= {mlat}"
        ))
        .await;
    assert!(
        want > 0 && want < ids(&all).len() as i64,
        "the box must select a strict subset"
    );
    assert_eq!(ids(&boxed).len() as i64, want);

    // Latest values equal the latest table, with units and times.
    let bin = &bins["features"][0];
    let id = bin["id"].as_str().unwrap().to_owned();
    let latest = c
        .query("SELECT m.name, m.unit, l.value, l.time FROM latest l JOIN metrics m ON m.id = l.metric_id JOIN sensors s ON s.id = l.sensor_id WHERE s.external_id = $1", &[&id])
        .await
        .unwrap();
    assert!(!latest.is_empty());
    let (code, one) = f.json(&format!("/api/v1/sensors/{id}")).await;
    assert_eq!(code, 200);
    for r in &latest {
        let (m, unit, v, t): (String, String, f64, DateTime<Utc>) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        let got = &one["properties"]["latest"][&m];
        assert_eq!(got["value"].as_f64(), Some(v), "{m}");
        assert_eq!(got["unit"].as_str(), Some(unit.as_str()));
        assert_eq!(
            DateTime::parse_from_rfc3339(got["time"].as_str().unwrap()).unwrap(),
            t
        );
    }
    assert_eq!(one["geometry"]["type"], "Point");

    // Raw readings, paged through next links: every row exactly once, in order.
    let total = f
        .db
        .count(&format!("SELECT count(*) FROM observations o JOIN sensors s ON s.id = o.sensor_id JOIN metrics m ON m.id = o.metric_id WHERE s.external_id = '{id}' AND m.name = 'fill_level'"))
        .await;
    assert!(total > 7, "need several pages");
    let mut next = Some(f.hub.url(&format!(
        "/api/v1/sensors/{id}/readings?metric=fill_level&from=2000-01-01&limit=7"
    )));
    let mut times = Vec::new();
    let mut pages = 0;
    while let Some(url) = next.take() {
        let page: Value = f.http.get(&url).send().await.unwrap().json().await.unwrap();
        for r in page["readings"].as_array().unwrap() {
            assert_eq!(r["metric"], "fill_level");
            times.push(DateTime::parse_from_rfc3339(r["time"].as_str().unwrap()).unwrap());
        }
        next = link(&page, "next");
        pages += 1;
        assert!(pages < 1000);
    }
    assert_eq!(times.len() as i64, total);
    assert!(
        times.windows(2).all(|w| w[0] < w[1]),
        "strictly increasing, no repeats"
    );
    assert_eq!(
        pages,
        (total as usize).div_ceil(7) + usize::from(total % 7 == 0)
    );

    // Hourly buckets against SQL over the raw rows.
    let (code, hourly) = f.json(&format!("/api/v1/sensors/{id}/readings?metric=fill_level,battery&bucket=1h&from=2000-01-01&limit=10000")).await;
    assert_eq!(code, 200);
    let want = c
        .query(&format!("SELECT date_trunc('hour', o.time), m.name, avg(o.value), min(o.value), max(o.value), count(*) FROM observations o JOIN sensors s ON s.id = o.sensor_id JOIN metrics m ON m.id = o.metric_id WHERE s.external_id = '{id}' AND m.name IN ('fill_level', 'battery') GROUP BY 1, 2"), &[])
        .await
        .unwrap();
    let got = hourly["readings"].as_array().unwrap();
    assert_eq!(got.len(), want.len());
    for w in &want {
        let (t, m): (DateTime<Utc>, String) = (w.get(0), w.get(1));
        let g = got
            .iter()
            .find(|g| {
                g["metric"] == m.as_str()
                    && DateTime::parse_from_rfc3339(g["time"].as_str().unwrap()).unwrap() == t
            })
            .unwrap_or_else(|| panic!("bucket {t} {m}"));
        assert!((g["value"].as_f64().unwrap() - w.get::<_, f64>(2)).abs() < 1e-9);
        assert_eq!(g["min"].as_f64(), Some(w.get::<_, f64>(3)));
        assert_eq!(g["max"].as_f64(), Some(w.get::<_, f64>(4)));
        assert_eq!(g["count"].as_i64(), Some(w.get::<_, i64>(5)));
    }
    assert_eq!(hourly["units"]["battery"], "%");

    // 15-minute and daily buckets count every reading once.
    for b in ["15m", "1d"] {
        let (_, v) = f.json(&format!("/api/v1/sensors/{id}/readings?metric=fill_level&bucket={b}&from=1970-01-01&to=2100-01-01&limit=10000")).await;
        let n: i64 = v["readings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["count"].as_i64().unwrap())
            .sum();
        assert_eq!(n, total, "bucket {b}");
    }

    // CSV: the whole range streamed, a header and one line per reading.
    let r = f
        .get(&format!(
            "/api/v1/sensors/{id}/readings?format=csv&from=2000-01-01"
        ))
        .await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let body = r.text().await.unwrap();
    let mut lines = body.lines();
    assert_eq!(lines.next(), Some("sensor_id,time,metric,unit,value"));
    let all_rows = f.db.count(&format!("SELECT count(*) FROM observations o JOIN sensors s ON s.id = o.sensor_id WHERE s.external_id = '{id}'")).await;
    assert_eq!(lines.count() as i64, all_rows);
    let r = f
        .get(&format!(
            "/api/v1/sensors/{id}/readings?format=csv&bucket=1d&from=2000-01-01"
        ))
        .await;
    assert_eq!(
        r.text().await.unwrap().lines().next(),
        Some("sensor_id,bucket_start,metric,unit,mean,min,max,count")
    );

    // An empty CSV, gzipped: found by schemathesis, this once crashed the hub (the
    // compression layer polled the finished stream again).
    for _ in 0..3 {
        let r = f
            .http
            .get(f.hub.url(&format!(
                "/api/v1/sensors/{id}/readings?format=csv&from=1990-01-01&to=1990-01-02"
            )))
            .header("Accept-Encoding", "gzip")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.bytes().await.is_ok(), "complete body");
    }
    assert_eq!(f.get("/healthz").await.status(), 200, "the hub is still up");

    // Empty ranges and errors.
    let (code, v) = f
        .json(&format!(
            "/api/v1/sensors/{id}/readings?from=1990-01-01&to=1990-01-02"
        ))
        .await;
    assert_eq!(
        (code, v["readings"].as_array().map(Vec::len)),
        (200, Some(0))
    );
    for (path, want) in [
        (
            format!("/api/v1/sensors/{id}/readings?from=2026-02-01&to=2026-01-01"),
            400,
        ),
        (format!("/api/v1/sensors/{id}/readings?metric=pm10"), 400),
        (format!("/api/v1/sensors/{id}/readings?bucket=5m"), 400),
        (format!("/api/v1/sensors/{id}/readings?from=yesterday"), 400),
        (format!("/api/v1/sensors/{id}/readings?limit=0"), 400),
        (format!("/api/v1/sensors/{id}/readings?limit=999999"), 400),
        (format!("/api/v1/sensors/{id}/readings?cursor=xyz"), 400),
        (
            format!("/api/v1/sensors/{id}/readings?metrc=fill_level"),
            400,
        ),
        ("/api/v1/sensors/no-such-sensor/readings".into(), 404),
        ("/api/v1/sensors/no-such-sensor".into(), 404),
        ("/api/v1/sensors?kind=volcano".into(), 400),
        ("/api/v1/sensors?bbox=1,2,3".into(), 400),
        ("/api/v1/sensors?bbox=0,50,1,40".into(), 400),
        ("/api/v1/sensors?bbox=a,b,c,d".into(), 400),
        ("/no/such/path".into(), 404),
    ] {
        let (code, body) = f.json(&path).await;
        assert_eq!(code, want, "{path}: {body}");
        assert!(
            body["code"].is_string() && body["description"].is_string(),
            "{path}: JSON error {body}"
        );
    }
    let (_, v) = f.json("/api/v1/sensors?kind=volcano").await;
    assert!(
        v["description"].as_str().unwrap().contains("waste_bin"),
        "names the known kinds"
    );
    drop(f.broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feeds_caching_cors_and_gzip() {
    let f = fixture(&[]).await;
    let r = f.get("/feeds/waste_bin.geojson").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/geo+json");
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    let modified = r.headers()["last-modified"].to_str().unwrap().to_owned();
    let fc: Value = r.json().await.unwrap();
    assert_eq!(fc["units"]["fill_level"], "%");
    let first = &fc["features"][0]["properties"];
    for col in [
        "sensor_id",
        "name",
        "kind",
        "last_seen",
        "fill_level",
        "fill_level_time",
        "battery",
        "temperature",
        "distance",
    ] {
        assert!(first.get(col).is_some(), "column {col}");
    }
    // Conditional requests.
    for (h, v, want) in [
        ("If-None-Match", etag.as_str(), 304),
        ("If-Modified-Since", modified.as_str(), 304),
        ("If-None-Match", "\"other\"", 200),
    ] {
        let r = f
            .http
            .get(f.hub.url("/feeds/waste_bin.geojson"))
            .header(h, v)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), want, "{h}: {v}");
    }
    // New data changes the tag.
    let now = Utc::now().to_rfc3339();
    let id = first["sensor_id"].as_str().unwrap();
    publish_raw(
        &f.broker,
        &[(
            &format!("cityhub/v1/waste_bin/{id}") as &str,
            json!({"ts": now, "values": {"fill_level": 99.5}})
                .to_string()
                .into_bytes(),
        )],
    )
    .await;
    wait_for(30, "the new reading in the feed", || {
        let (http, url, etag) = (&f.http, f.hub.url("/feeds/waste_bin.geojson"), etag.clone());
        async move {
            http.get(url)
                .header("If-None-Match", etag)
                .send()
                .await
                .unwrap()
                .status()
                == 200
        }
    })
    .await;

    // CSV: stable columns with units in the header, one row per sensor.
    let r = f.get("/feeds/air_quality.csv").await;
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    assert!(r.headers().get("etag").is_some());
    let text = r.text().await.unwrap();
    let header = text.lines().next().unwrap();
    assert_eq!(
        header,
        "sensor_id,name,kind,lon,lat,last_seen,humidity [%],humidity_time,no2 [µg/m³],no2_time,o3 [µg/m³],o3_time,pm10 [µg/m³],pm10_time,pm2_5 [µg/m³],pm2_5_time,temperature [°C],temperature_time"
    );
    assert_eq!(
        text.lines().count() as i64 - 1,
        f.db.count("SELECT count(*) FROM sensors WHERE kind = 'air_quality'")
            .await
    );
    for (path, code) in [
        ("/feeds/volcano.csv", 404),
        ("/feeds/waste_bin.xlsx", 404),
        ("/feeds/waste_bin", 404),
        ("/feeds/waste_bin.csv?x=1", 400),
    ] {
        assert_eq!(f.get(path).await.status(), code, "{path}");
    }

    // gzip when asked for, CORS for any origin, preflight answered.
    let r = f
        .http
        .get(f.hub.url("/api/v1/sensors"))
        .header("Accept-Encoding", "gzip")
        .header("Origin", "https://example.org")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-encoding"], "gzip");
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    let r = f
        .http
        .request(reqwest::Method::OPTIONS, f.hub.url("/api/v1/sensors"))
        .header("Origin", "https://example.org")
        .header("Access-Control-Request-Method", "GET")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ogc_api_features() {
    let f = fixture(&[]).await;
    let (code, landing) = f.json("/ogc").await;
    assert_eq!(code, 200);
    let rels: HashSet<&str> = landing["links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["rel"].as_str().unwrap())
        .collect();
    for rel in ["self", "service-desc", "service-doc", "conformance", "data"] {
        assert!(rels.contains(rel), "landing page link {rel}");
    }
    let (_, conf) = f.json("/ogc/conformance").await;
    let classes: Vec<&str> = conf["conformsTo"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert!(classes.contains(&"http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core"));
    assert!(classes.contains(&"http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson"));
    let (_, cols) = f.json("/ogc/collections").await;
    let names: Vec<&str> = cols["collections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["air_quality", "bike_counter", "streetlight", "waste_bin"]
    );
    let bins = cols["collections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "waste_bin")
        .unwrap();
    assert_eq!(
        bins["extent"]["spatial"]["bbox"][0]
            .as_array()
            .unwrap()
            .len(),
        4
    );
    assert!(bins["extent"]["temporal"]["interval"][0][0].is_string());

    // Paging: limit, numberMatched/numberReturned, next links that cover all items once.
    let matched =
        f.db.count("SELECT count(*) FROM sensors WHERE kind = 'streetlight'")
            .await;
    let mut url = Some(f.hub.url("/ogc/collections/streetlight/items?limit=2"));
    let mut seen = Vec::new();
    while let Some(u) = url.take() {
        let r = f.http.get(&u).send().await.unwrap();
        assert_eq!(r.headers()["content-type"], "application/geo+json");
        let page: Value = r.json().await.unwrap();
        assert_eq!(page["numberMatched"].as_i64(), Some(matched));
        assert_eq!(
            page["numberReturned"].as_u64().unwrap() as usize,
            page["features"].as_array().unwrap().len()
        );
        seen.extend(ids(&page));
        url = link(&page, "next");
    }
    assert_eq!(seen.len() as i64, matched);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), seen.len());

    // datetime: an interval before any data matches nothing; an open one after the first report matches all.
    let (_, none) = f
        .json(
            "/ogc/collections/streetlight/items?datetime=2000-01-01T00:00:00Z/2000-01-02T00:00:00Z",
        )
        .await;
    assert_eq!(none["numberMatched"], 0);
    let (_, some) = f
        .json("/ogc/collections/streetlight/items?datetime=2000-01-01T00:00:00Z/..")
        .await;
    assert_eq!(some["numberMatched"].as_i64(), Some(matched));
    // A huge limit is capped, not refused (OGC API - Features, /req/core/fc-limit-response-1).
    let (code, _) = f
        .json("/ogc/collections/streetlight/items?limit=100000000")
        .await;
    assert_eq!(code, 200);

    let id = &seen[0];
    let (code, item) = f
        .json(&format!("/ogc/collections/streetlight/items/{id}"))
        .await;
    assert_eq!(code, 200);
    assert_eq!(item["id"], id.as_str());
    assert!(item["properties"]["power"].is_number());
    for (path, code) in [
        (
            "/ogc/collections/streetlight/items?color=red".to_owned(),
            400,
        ),
        ("/ogc/collections/streetlight/items?limit=0".into(), 400),
        ("/ogc/collections/streetlight/items?bbox=1,2".into(), 400),
        (
            "/ogc/collections/streetlight/items?datetime=soon".into(),
            400,
        ),
        ("/ogc/collections/volcano/items".into(), 404),
        (
            "/ogc/collections/streetlight/items/no-such-lamp".into(),
            404,
        ),
        (format!("/ogc/collections/waste_bin/items/{id}"), 404),
        ("/ogc?f=xml".into(), 400),
    ] {
        let (c, body) = f.json(&path).await;
        assert_eq!(c, code, "{path}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_catalogue_docs_and_live_stream() {
    let f = fixture(&[]).await;
    let put = |id: &str, body: Value, token: Option<&str>| {
        let mut rq = f
            .http
            .put(f.hub.url(&format!("/api/v1/sensors/{id}")))
            .json(&body);
        if let Some(t) = token {
            rq = rq.bearer_auth(t);
        }
        rq.send()
    };
    let feature = json!({"type": "Feature", "geometry": {"type": "Point", "coordinates": [10.0221, 45.1332]},
                          "properties": {"kind": "waste_bin", "name": "Piazza del Comune", "depth_mm": 1200}});
    assert_eq!(
        put("bin-new", feature.clone(), None)
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        put("bin-new", feature.clone(), Some("wrong-token-wrong-token"))
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        put("bin-new", feature.clone(), Some(TOKEN))
            .await
            .unwrap()
            .status(),
        201
    );
    let moved = json!({"type": "Feature", "geometry": {"type": "Point", "coordinates": [10.03, 45.14]},
                        "properties": {"kind": "waste_bin", "name": "Piazza del Comune", "depth_mm": 1100}});
    assert_eq!(
        put("bin-new", moved, Some(TOKEN)).await.unwrap().status(),
        200
    );
    let (_, s) = f.json("/api/v1/sensors/bin-new").await;
    assert_eq!(s["geometry"]["coordinates"], json!([10.03, 45.14]));
    assert_eq!(s["properties"]["depth_mm"], 1100);
    assert_eq!(
        s["properties"]["latest"],
        json!({}),
        "registered, never reported"
    );
    // A sensor with no position: geometry null, still listed.
    let nowhere =
        json!({"type": "Feature", "geometry": null, "properties": {"kind": "air_quality"}});
    assert_eq!(
        put("aq-nowhere", nowhere, Some(TOKEN))
            .await
            .unwrap()
            .status(),
        201
    );
    let (_, all) = f.json("/api/v1/sensors?kind=air_quality").await;
    let f0 = all["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == "aq-nowhere")
        .unwrap();
    assert!(f0["geometry"].is_null());
    let (_, bbox) = f
        .json("/api/v1/sensors?kind=air_quality&bbox=-180,-90,180,90")
        .await;
    assert!(
        !ids(&bbox).contains(&"aq-nowhere".to_owned()),
        "no position, not in any box"
    );
    for (body, code) in [
        (json!({"properties": {"kind": "streetlight"}}), 409),
        (json!({"properties": {"kind": "volcano"}}), 400),
        (json!({"properties": {}}), 400),
        (
            json!({"geometry": {"type": "Point", "coordinates": [200, 45]}, "properties": {"kind": "waste_bin"}}),
            400,
        ),
        (
            json!({"geometry": {"type": "LineString", "coordinates": [[1, 2], [3, 4]]}, "properties": {"kind": "waste_bin"}}),
            400,
        ),
        (
            json!({"properties": {"kind": "waste_bin", "latest": 1}}),
            400,
        ),
    ] {
        let r = put("bin-new", body.clone(), Some(TOKEN)).await.unwrap();
        assert_eq!(r.status(), code, "{body}");
    }
    // Request size limit: refused on the declared length, before any body is read.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", f.hub.http_port))
            .await
            .unwrap();
        let head = format!(
            "PUT /api/v1/sensors/bin-new HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            2 * 1024 * 1024
        );
        c.write_all(head.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 256];
        let n = c.read(&mut buf).await.unwrap();
        let status = String::from_utf8_lossy(&buf[..n]);
        assert!(
            status.starts_with("HTTP/1.1 413"),
            "request size limit: {status}"
        );
    }

    // Dead letters: admin only, with the raw payload and the reason.
    assert_eq!(f.get("/api/v1/dead-letters").await.status(), 401);
    let dl: Value = f
        .http
        .get(f.hub.url("/api/v1/dead-letters?limit=10"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let first = &dl["dead_letters"][0];
    assert_eq!(first["payload"], "{not json");
    assert_eq!(first["reason_code"], "malformed_json");
    assert_eq!(first["topic"], "cityhub/v1/waste_bin/bin-bad");

    // Catalogue: content negotiation.
    let r = f
        .http
        .get(f.hub.url("/catalog"))
        .header("Accept", "text/turtle")
        .send()
        .await
        .unwrap();
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/turtle"));
    assert_eq!(r.headers()["vary"], "Accept");
    let ttl = r.text().await.unwrap();
    assert!(ttl.contains("dcatapit:Dataset") && ttl.contains("data-theme/ENVI"));
    let r = f
        .http
        .get(f.hub.url("/catalog"))
        .header("Accept", "application/ld+json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "application/ld+json");
    serde_json::from_str::<Value>(&r.text().await.unwrap()).unwrap();
    let r = f
        .http
        .get(f.hub.url("/catalog"))
        .header("Accept", "application/xml")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 406);
    assert_eq!(
        f.get("/catalog.rdf").await.headers()["content-type"],
        "application/rdf+xml"
    );

    // OpenAPI lists every public endpoint; the HTML page renders it.
    let (_, api) = f.json("/openapi.json").await;
    let paths: Vec<&String> = api["paths"].as_object().unwrap().keys().collect();
    for p in [
        "/api/v1/sensors",
        "/api/v1/sensors/{id}",
        "/api/v1/sensors/{id}/readings",
        "/api/v1/kinds",
        "/api/v1/stream",
        "/api/v1/dead-letters",
        "/feeds/{file}",
        "/ogc",
        "/ogc/conformance",
        "/ogc/collections",
        "/ogc/collections/{collectionId}/items",
        "/ogc/collections/{collectionId}/items/{featureId}",
        "/catalog",
        "/catalog.jsonld",
        "/catalog.ttl",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(paths.iter().any(|x| *x == p), "openapi lacks {p}");
    }
    let html = f.get("/api").await.text().await.unwrap();
    assert!(html.contains("/api/v1/sensors/{id}/readings"));

    // Live: a reading published now arrives on the stream, filtered by kind.
    let mut stream = f
        .http
        .get(f.hub.url("/api/v1/stream?kind=waste_bin"))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    assert_eq!(f.get("/api/v1/stream?kind=volcano").await.status(), 400);
    let t = (Utc::now() - Duration::seconds(1)).to_rfc3339();
    publish_raw(
        &f.broker,
        &[
            (
                "cityhub/v1/streetlight/lamp-live",
                json!({"ts": t, "values": {"power": 12.0}})
                    .to_string()
                    .into_bytes(),
            ),
            (
                "cityhub/v1/waste_bin/bin-new",
                json!({"ts": t, "values": {"distance": 330.0, "battery": 88.0}})
                    .to_string()
                    .into_bytes(),
            ),
        ],
    )
    .await;
    let mut buf = String::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while !buf.contains("bin-new") {
        let chunk = tokio::time::timeout_at(deadline, stream.chunk())
            .await
            .expect("no live event within 30 s")
            .unwrap()
            .unwrap();
        buf.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(!buf.contains("lamp-live"), "kind filter");
    let data = buf
        .lines()
        .find(|l| l.starts_with("data:") && l.contains("bin-new"))
        .unwrap();
    let ev: Value = serde_json::from_str(data.trim_start_matches("data:").trim()).unwrap();
    let readings = ev["readings"].as_array().unwrap();
    let fill = readings
        .iter()
        .find(|r| r["metric"] == "fill_level")
        .expect("the derived fill level is live too");
    assert!(
        (fill["value"].as_f64().unwrap() - 70.0).abs() < 1e-9,
        "100 * (1 - 330/1100): {fill}"
    );
    assert_eq!(
        readings.iter().find(|r| r["metric"] == "battery").unwrap()["unit"],
        "%"
    );
    assert!(buf.contains("event: readings"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answers_429() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let hub = Hub::build(&db, &broker, "ratelimit")
        .set(|s| s.http.rate_limit_per_s = 2)
        .set(|s| s.http.rate_limit_burst = 5)
        .start()
        .await;
    let http = reqwest::Client::new();
    let mut codes = Vec::new();
    for _ in 0..20 {
        codes.push(
            http.get(hub.url("/api/v1/kinds"))
                .header("Origin", "https://app.example.org")
                .send()
                .await
                .unwrap(),
        );
    }
    let limited = codes.iter().filter(|r| r.status() == 429).count();
    assert!(
        limited >= 10,
        "20 requests at once against a burst of 5: {limited} refused"
    );
    let r = codes.into_iter().find(|r| r.status() == 429).unwrap();
    // A browser app sees the 429 (CORS) and when to come back, the same in header and body.
    assert_eq!(
        r.headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap()),
        Some("*"),
        "a 429 without CORS headers is a CORS error to a browser"
    );
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "TooManyRequests");
    let description = body["description"].as_str().unwrap();
    assert!(
        description.ends_with(&format!("retry in {retry} s")),
        "{description} vs Retry-After {retry}"
    );
}

/// The page discount of the rate limit goes to the paging links the hub gives, not to
/// any `offset=` a client writes: 30 pages of two bins by the `next` links fit a burst
/// of six requests (each page after the first a tenth), the same 30 written by hand do not. Before the
/// links were signed, the hand-written ones were as cheap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_hubs_own_paging_links_are_cheap() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    // Two hubs, each its own bucket: one to follow its links, one to be asked by hand.
    let limits = |s: &mut cityhub_core::Settings| {
        s.http.rate_limit_per_s = 1;
        s.http.rate_limit_burst = 6;
    };
    let hub = Hub::build(&db, &broker, "signed-pages")
        .set(limits)
        .start()
        .await;
    let other = Hub::build(&db, &broker, "forged-pages")
        .set(limits)
        .start()
        .await;
    let items: Vec<(String, Vec<u8>)> = (0..60)
        .map(|i| {
            (
                format!("cityhub/v1/waste_bin/page-{i:02}"),
                br#"{"values":{"fill_level":10},"location":{"lat":45.13,"lon":10.02}}"#.to_vec(),
            )
        })
        .collect();
    publish_raw(&broker, &items).await;
    // Health checks and metrics cost nothing: waiting on them leaves the buckets full.
    hub.settled(60.0).await;
    for _ in 0..20 {
        assert_eq!(
            reqwest::get(other.url("/readyz")).await.unwrap().status(),
            200
        );
    }
    let http = reqwest::Client::new();
    let mut url = hub.url("/ogc/collections/waste_bin/items?limit=2");
    let mut seen = HashSet::new();
    let mut pages = 0;
    loop {
        let r = http.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200, "page {pages} by the hub's own link: {url}");
        let fc: Value = r.json().await.unwrap();
        pages += 1;
        for id in ids(&fc) {
            assert!(seen.insert(id.clone()), "{id} twice");
        }
        match link(&fc, "next") {
            Some(next) => url = next,
            None => break,
        }
    }
    assert_eq!((pages, seen.len()), (30, 60));
    // The same pages by hand, from the other hub's full bucket.
    let mut refused = 0;
    for page in 0..30 {
        let u = other.url(&format!(
            "/ogc/collections/waste_bin/items?limit=2&offset={}",
            page * 2
        ));
        refused += usize::from(http.get(u).send().await.unwrap().status() == 429);
    }
    assert!(
        refused >= 20,
        "hand-written offsets: {refused} of 30 refused"
    );
    // A signature that does not match is no discount either, and no error.
    let r = http
        .get(other.url("/ogc/collections/waste_bin/items?limit=2&offset=2&page_sig=00"))
        .send()
        .await
        .unwrap();
    assert!(matches!(r.status().as_u16(), 200 | 429), "{}", r.status());
}

/// Behind a trusted proxy each client has its own rate-limit bucket, named by
/// `X-Forwarded-For`; from anyone else the header is ignored (one bucket per peer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxies_name_the_client_for_rate_limits_and_nobody_else_does() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let limits = |s: &mut cityhub_core::Settings| {
        s.http.rate_limit_per_s = 1;
        s.http.rate_limit_burst = 2;
    };
    let proxied = Hub::build(&db, &broker, "proxied")
        .set(limits)
        .set(|s| s.http.trusted_proxies = vec!["127.0.0.0/8".to_owned().try_into().unwrap()])
        .start()
        .await;
    let direct = Hub::build(&db, &broker, "direct").set(limits).start().await;
    let http = reqwest::Client::new();
    let get = |hub: &Hub, client: &str| {
        http.get(hub.url("/api/v1/kinds"))
            .header("X-Forwarded-For", format!("198.51.100.99, {client}"))
            .send()
    };
    let mut refused = 0;
    for _ in 0..10 {
        refused += usize::from(get(&proxied, "203.0.113.7").await.unwrap().status() == 429);
    }
    assert!(
        refused >= 5,
        "one client, 10 requests, burst 2: {refused} refused"
    );
    // Another client behind the same proxy has a bucket of its own.
    assert_eq!(get(&proxied, "203.0.113.8").await.unwrap().status(), 200);
    // An IPv6 client is its /64: a new address in it for every request gets no new bucket.
    let mut refused = 0;
    for i in 0..10 {
        let r = get(&proxied, &format!("2001:db8:7:7::{:x}", 0x100 + i))
            .await
            .unwrap();
        refused += usize::from(r.status() == 429);
    }
    assert!(refused >= 5, "one /64, 10 addresses: {refused} refused");
    assert_eq!(
        get(&proxied, "2001:db8:7:8::1").await.unwrap().status(),
        200
    );

    // Not a trusted proxy: whatever the header says, it is one client.
    let mut refused = 0;
    for i in 0..10 {
        let r = get(&direct, &format!("203.0.113.{}", 10 + i))
            .await
            .unwrap();
        refused += usize::from(r.status() == 429);
    }
    assert!(
        refused >= 5,
        "spoofed addresses got their own buckets: {refused} refused"
    );
}

/// A NUL character or invalid UTF-8 in any text input (query string, path, body) is a
/// 400 that says where, never a 500 from the database. Found by schemathesis on the
/// dead letters' `reason` and by hand on an acknowledgement's note.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_and_invalid_utf8_are_400_everywhere() {
    let f = fixture(&[("CITYHUB_HTTP_OPERATOR_TOKEN", TOKEN)]).await;
    for path in [
        "/api/v1/dead-letters?reason=%00abc",
        "/api/v1/dead-letters?reason=%ff",
        "/api/v1/sensors?kind=waste%00bin",
        "/api/v1/sensors/bin%000001",
        "/api/v1/sensors/bin-0001/readings?metric=fill%00level",
        "/api/v1/alerts?state=open%00",
        "/feeds/waste_bin.csv?x=%C3",
        "/ogc/collections/waste_bin/items?name=%00",
    ] {
        let r = f
            .http
            .get(f.hub.url(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{path}");
        let body: serde_json::Value = r.json().await.unwrap();
        let d = body["description"].as_str().unwrap();
        assert!(d.contains("NUL") || d.contains("UTF-8"), "{path}: {d}");
    }
    // An acknowledgement's note with a NUL escape; a literal backslash-u0000 is fine.
    let id: i64 = f
        .db
        .client()
        .await
        .query_one(
            "INSERT INTO alerts (rule, sensor_id, kind, metric, severity, state, threshold, raised_at, raised_value)
             SELECT 'test_rule', id, 'waste_bin', 'fill_level', 'critical', 'open', 80, now(), 90
             FROM sensors WHERE kind = 'waste_bin' ORDER BY id LIMIT 1
             RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let ack = |body: &'static str| {
        f.http
            .post(f.hub.url(&format!("/api/v1/alerts/{id}/ack")))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let r = ack(r#"{"note":"bin emptied\u0000"}"#).await.unwrap();
    assert_eq!(r.status(), 400);
    let r = ack(r#"{"note":"path C:\\u0000 is text"}"#).await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

/// The registry attributes a kind declares (`[kinds.waste_bin.properties]`:
/// `depth_mm` a number in mm, `stream` a string) are columns of the GeoJSON and CSV
/// feeds and of the OGC items, null where a bin has none, and typed by the
/// collection's schema; a value of another type is refused at registration.
/// Indicator answers say how many decimals their values carry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_attributes_are_typed_columns_and_indicators_state_their_precision() {
    let f = fixture(&[]).await;
    let put = |id: &str, props: Value| {
        let mut p = json!({"kind": "waste_bin", "name": id});
        p.as_object_mut()
            .unwrap()
            .extend(props.as_object().unwrap().clone());
        f.http
            .put(f.hub.url(&format!("/api/v1/sensors/{id}")))
            .bearer_auth(TOKEN)
            .json(&json!({"type": "Feature", "geometry": {"type": "Point", "coordinates": [10.02, 45.13]},
                          "properties": p}))
            .send()
    };
    assert_eq!(
        put("bin-typed", json!({"depth_mm": 1200, "stream": "carta"}))
            .await
            .unwrap()
            .status(),
        201
    );
    assert_eq!(put("bin-plain", json!({})).await.unwrap().status(), 201);
    // Another type is refused, with the attribute named.
    for (bad, name) in [
        (json!({"stream": 5}), "stream"),
        (json!({"depth_mm": "deep"}), "depth_mm"),
    ] {
        let r = put("bin-wrong", bad).await.unwrap();
        assert_eq!(r.status(), 400);
        let body = r.text().await.unwrap();
        assert!(body.contains(name), "{body}");
    }

    let want_typed = json!({"depth_mm": 1200, "stream": "carta"});
    let want_plain = json!({"depth_mm": null, "stream": null});
    let check = |fc: &Value, what: &str| {
        for (id, want) in [("bin-typed", &want_typed), ("bin-plain", &want_plain)] {
            let feat = fc["features"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["id"] == id)
                .unwrap_or_else(|| panic!("{what}: no {id}"));
            for k in ["depth_mm", "stream"] {
                let p = &feat["properties"];
                assert!(
                    p.as_object().unwrap().contains_key(k),
                    "{what}: {id} lacks {k}"
                );
                assert_eq!(p[k], want[k], "{what}: {id} {k}");
            }
        }
    };
    wait_for(30, "the feed to show the registered bins", || async {
        let (_, fc) = f.json("/feeds/waste_bin.geojson").await;
        fc["features"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["id"] == "bin-plain"))
    })
    .await;
    let (_, fc) = f.json("/feeds/waste_bin.geojson").await;
    check(&fc, "GeoJSON feed");
    assert_eq!(fc["units"]["depth_mm"], "mm");
    let (_, items) = f.json("/ogc/collections/waste_bin/items?limit=1000").await;
    check(&items, "OGC items");
    let (_, one) = f.json("/ogc/collections/waste_bin/items/bin-typed").await;
    assert_eq!(one["properties"]["depth_mm"], 1200);
    // Every bin has both columns, of one type each.
    for feat in items["features"].as_array().unwrap() {
        let p = &feat["properties"];
        assert!(p["depth_mm"].is_null() || p["depth_mm"].is_number(), "{p}");
        assert!(p["stream"].is_null() || p["stream"].is_string(), "{p}");
    }

    let csv = f.get("/feeds/waste_bin.csv").await.text().await.unwrap();
    let mut rows = csv::Reader::from_reader(csv.as_bytes());
    let head: Vec<String> = rows.headers().unwrap().iter().map(String::from).collect();
    let at = |h: &str| {
        head.iter()
            .position(|x| x == h)
            .unwrap_or_else(|| panic!("{h} in {head:?}"))
    };
    let (depth, stream) = (at("depth_mm [mm]"), at("stream"));
    let recs: Vec<csv::StringRecord> = rows.records().map(Result::unwrap).collect();
    let rec = |id: &str| recs.iter().find(|r| &r[0] == id).unwrap().clone();
    assert_eq!(
        (&rec("bin-typed")[depth], &rec("bin-typed")[stream]),
        ("1200", "carta")
    );
    assert_eq!(
        (&rec("bin-plain")[depth], &rec("bin-plain")[stream]),
        ("", "")
    );

    // The collection points at its schema, which types each column.
    let (_, col) = f.json("/ogc/collections/waste_bin").await;
    let described = col["links"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| {
            l["rel"]
                .as_str()
                .unwrap()
                .eq_ignore_ascii_case("describedby")
        })
        .unwrap()
        .clone();
    assert_eq!(described["type"], "application/schema+json");
    let r = f
        .http
        .get(described["href"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "application/schema+json");
    let schema: Value = r.json().await.unwrap();
    let props = &schema["properties"]["properties"]["properties"];
    assert_eq!(props["depth_mm"]["type"], "number");
    assert_eq!(props["depth_mm"]["x-ogc-unit"], "mm");
    assert_eq!(props["stream"]["type"], "string");
    assert_eq!(props["fill_level"]["type"], "number");
    assert_eq!(props["fill_level_time"]["format"], "date-time");
    assert_eq!(props["sensor_id"]["x-ogc-role"], "id");
    // Every property an item carries is in the schema, and nothing else.
    let item_keys: HashSet<&String> = one["properties"]
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| *k != "links")
        .collect();
    let schema_keys: HashSet<&String> = props.as_object().unwrap().keys().collect();
    assert_eq!(item_keys, schema_keys);
    assert_eq!(f.get("/ogc/collections/volcano/schema").await.status(), 404);

    // Indicators: the list and each answer state their values' decimals.
    let (_, list) = f.json("/api/v1/indicators").await;
    for ind in list["indicators"].as_array().unwrap() {
        assert!(ind["decimals"].is_u64(), "{ind}");
    }
    let (_, pm10) = f.json("/api/v1/indicators/pm10_daily_mean").await;
    assert_eq!(pm10["decimals"], 3, "{pm10}");
    let (_, energy) = f.json("/api/v1/indicators/lamp_energy_per_night").await;
    assert_eq!(energy["decimals"], 4, "{energy}");
}

/// Malformed inputs the API document now declares get the API's JSON 400, as
/// schemathesis's negative checks found they did not: an empty query value, an alert
/// id that is not a number (was axum's text/plain 400), a body that is a JSON array
/// where an object is documented (was read as the struct's fields), a position with
/// four numbers (was taken).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_inputs_are_json_400s() {
    let f = fixture(&[]).await;
    let check = |r: reqwest::Response, what: &'static str| async move {
        assert_eq!(r.status(), 400, "{what}");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json"),
            "{what}: {:?}",
            r.headers()["content-type"]
        );
        let body: Value = r.json().await.unwrap();
        assert!(body["description"].is_string(), "{what}: {body}");
    };
    check(f.get("/api/v1/sensors?kind=").await, "empty kind").await;
    check(
        f.get("/ogc/collections/waste_bin/items?datetime=").await,
        "empty datetime",
    )
    .await;
    let post = |path: &str, body: &'static str| {
        f.http
            .post(f.hub.url(path))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    check(
        post("/api/v1/alerts/null,null/ack", "{}").await.unwrap(),
        "alert id",
    )
    .await;
    check(
        post("/api/v1/alerts/1/ack", "{\"note\": true}")
            .await
            .unwrap(),
        "note type",
    )
    .await;
    check(
        post("/api/v1/operators", "[\"x\", \"viewer\", null]")
            .await
            .unwrap(),
        "array body",
    )
    .await;
    let r = f
        .http
        .patch(f.hub.url("/api/v1/sensors/bin-0001/service"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("[null, null]")
        .send()
        .await
        .unwrap();
    check(r, "array service body").await;
    let r = f
        .http
        .put(f.hub.url("/api/v1/sensors/bin-4d"))
        .bearer_auth(TOKEN)
        .json(
            &json!({"geometry": {"type": "Point", "coordinates": [10.0, 45.1, 0.0, 0.0]},
                      "properties": {"kind": "waste_bin"}}),
        )
        .send()
        .await
        .unwrap();
    check(r, "four coordinates").await;
    // What stays accepted: no body and a JSON null for the optional ones.
    let r = f
        .http
        .post(f.hub.url("/api/v1/alerts/999999/ack"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("null")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "a null note is no note");
}
