//! The mandate's indicators against what the simulated fleet really did (the
//! simulator's truth), against series built by hand with known answers, and
//! against SQL over the reader views.

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use cityhub_sim::{FaultRates, FleetSpec, Format, SimOptions};
use cityhub_testkit::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;

const ROME: chrono_tz::Tz = chrono_tz::Europe::Rome;

async fn get_url(http: &reqwest::Client, url: &str) -> Value {
    let r = http.get(url).send().await.unwrap();
    let status = r.status();
    let body = r.text().await.unwrap();
    assert!(status.is_success(), "{url}: {status} {body}");
    serde_json::from_str(&body).unwrap()
}

/// An indicator's city rows (the default answer) and every sensor's rows (asked for
/// with `rows=sensors`, three sensors a page, by following the `next` links) in one
/// answer. Each sensor's rows come on one page only.
async fn get(http: &reqwest::Client, hub: &Hub, path: &str) -> Value {
    let mut v = get_url(http, &hub.url(path)).await;
    if !path.starts_with("/api/v1/indicators/") || path.contains("sensor=") {
        return v;
    }
    let mut rows = v["rows"].as_array().unwrap().clone();
    assert!(
        rows.iter().all(|r| r["sensor"].is_null()),
        "{path}: the default answer holds the city's rows only"
    );
    let sep = if path.contains('?') { '&' } else { '?' };
    // Streams add city rows; sensor rows carry their stream anyway.
    let sensors_path = path.replace("&by=stream", "");
    let mut next = Some(hub.url(&format!("{sensors_path}{sep}rows=sensors&limit=3")));
    let mut paged: std::collections::BTreeSet<String> = Default::default();
    while let Some(url) = next {
        let page = get_url(http, &url).await;
        let here: std::collections::BTreeSet<String> = page["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["sensor"].as_str().expect("sensor rows only").to_owned())
            .collect();
        assert!(here.len() <= 3, "{url}: {here:?}");
        assert!(
            paged.is_disjoint(&here),
            "{url}: {here:?} came on an earlier page too"
        );
        paged.extend(here);
        rows.extend(page["rows"].as_array().unwrap().iter().cloned());
        next = link(&page, "next");
    }
    v["rows"] = Value::Array(rows);
    v
}

/// (sensor, local day) -> value of the sensor rows.
fn by_sensor_day(v: &Value) -> BTreeMap<(String, NaiveDate), Value> {
    v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| !r["sensor"].is_null())
        .map(|r| {
            let t: DateTime<Utc> = r["period_start"].as_str().unwrap().parse().unwrap();
            (
                (
                    r["sensor"].as_str().unwrap().to_owned(),
                    t.with_timezone(&ROME).date_naive(),
                ),
                r["value"].clone(),
            )
        })
        .collect()
}

fn city_rows(v: &Value) -> Vec<Value> {
    v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["sensor"].is_null() && r.get("stream").is_none())
        .cloned()
        .collect()
}

/// A refusal to come back later: `status`, a Retry-After header (its seconds,
/// returned) and a description that says `why`.
async fn refused(r: reqwest::Response, status: u16, why: &str) -> u64 {
    assert_eq!(r.status(), status);
    let wait = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert!(
        body["description"].as_str().unwrap().contains(why),
        "{body}"
    );
    wait
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_fleet_s_indicators_match_what_the_simulator_did() {
    let (db, broker, hub) = open_hub("indicators").await;
    // Nine January days: Po-valley winter, so PM10 goes past its limit.
    let start = Utc.with_ymd_and_hms(2026, 1, 5, 0, 0, 0).unwrap();
    let end = start + Duration::days(9);
    let opts = SimOptions {
        seed: 7,
        start,
        fleet: FleetSpec {
            per_kind: vec![
                ("waste_bin".into(), 16),
                ("streetlight".into(), 12),
                ("bike_counter".into(), 3),
                ("air_quality".into(), 3),
            ],
            lamp_fault_share: 0.2,
        },
        formats: vec![Format::Native, Format::Senml],
        // Faults that lose nothing: the hub must still see every reading once.
        faults: FaultRates::parse("duplicate=0.02,out_of_order=0.02,burst=0.01").unwrap(),
    };
    let msgs = fleet_messages(&opts, end);
    let mut report = cityhub_sim::Report::default();
    for m in &msgs {
        report.count(m);
    }
    let truth = report.truth.summary(ROME, 18);
    publish_sim(&broker, &msgs).await;
    let want = expected_rows(&msgs);
    wait_for_rows(&db, want, 120, "the simulated rows").await;
    // Answers read the hourly aggregates; late readings reach them seconds after.
    wait_for_aggregates(&db, 120).await;
    let http = reqwest::Client::new();
    let range = "from=2026-01-04&to=2026-01-15";

    // PM10: each valid day's mean, the invalid (partial) days without a value.
    let v = get(
        &http,
        &hub,
        &format!("/api/v1/indicators/pm10_daily_mean?period=day&{range}"),
    )
    .await;
    assert_eq!(v["unit"], "µg/m³");
    let got = by_sensor_day(&v);
    let mut valid = 0;
    for (s, days) in &truth.pm10_daily_mean {
        for (d, m) in days {
            let g = &got[&(s.clone(), *d)];
            if m.valid {
                valid += 1;
                assert!(
                    (g.as_f64().unwrap() - m.mean).abs() < 0.002,
                    "{s} {d}: {g} vs {}",
                    m.mean
                );
            } else {
                assert!(g.is_null(), "{s} {d}: {} hours, value {g}", m.hours);
            }
        }
    }
    assert!(valid >= 3 * 8, "{valid} valid station-days");
    let v = get(
        &http,
        &hub,
        "/api/v1/indicators/pm10_exceedance_days?period=year&from=2026&to=2027",
    )
    .await;
    let mut above = 0;
    for (s, years) in &truth.pm10_exceedance_days {
        let row = v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["sensor"] == s.as_str())
            .unwrap();
        assert_eq!(row["value"].as_f64().unwrap() as u32, years[&2026], "{s}");
        above += years[&2026];
    }
    assert!(
        above > 0,
        "the January fleet never went past the limit: the check proves nothing"
    );

    // Bins: every collection the level sensor can see (a drop of 20 points or
    // more), dated by the reading after it, and the fill just before.
    let visible: Vec<_> = truth
        .collections
        .iter()
        .filter(|c| c.fill_before - c.fill_after >= 20.0)
        .collect();
    assert!(
        visible.len() * 10 >= truth.collections.len() * 9 && visible.len() > 20,
        "{} of {} collections visible",
        visible.len(),
        truth.collections.len()
    );
    let mut want_count: BTreeMap<(String, NaiveDate), f64> = BTreeMap::new();
    for c in &visible {
        *want_count
            .entry((
                c.sensor.clone(),
                c.reported_at.with_timezone(&ROME).date_naive(),
            ))
            .or_default() += 1.0;
    }
    let v = get(
        &http,
        &hub,
        &format!("/api/v1/indicators/bin_collections?period=day&{range}"),
    )
    .await;
    let got: BTreeMap<_, _> = by_sensor_day(&v)
        .into_iter()
        .map(|(k, v)| (k, v.as_f64().unwrap()))
        .collect();
    assert_eq!(got, want_count);
    let city: f64 = city_rows(&v)
        .iter()
        .map(|r| r["value"].as_f64().unwrap())
        .sum();
    assert_eq!(city as usize, visible.len());
    // By waste stream, once the registry says which stream each bin takes.
    let catalog = cityhub_core::Settings::builtin()
        .unwrap()
        .catalog()
        .unwrap();
    let fleet = cityhub_sim::fleet::build(opts.seed, &opts.fleet, &catalog).unwrap();
    let client = db.client().await;
    let mut per_stream: BTreeMap<&str, f64> = BTreeMap::new();
    for s in fleet.iter().filter(|s| s.kind == "waste_bin") {
        let stream = s.stream().unwrap();
        client
            .execute(
                "UPDATE sensors SET properties = properties || jsonb_build_object('stream', $2::text)
                 WHERE external_id = $1",
                &[&s.id, &stream],
            )
            .await
            .unwrap();
        *per_stream.entry(stream).or_default() +=
            visible.iter().filter(|c| c.sensor == s.id).count() as f64;
    }
    let v = get(
        &http,
        &hub,
        "/api/v1/indicators/bin_collections?period=year&from=2026&to=2027&by=stream",
    )
    .await;
    let got: BTreeMap<String, f64> = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["sensor"].is_null() && r.get("stream").is_some())
        .map(|r| {
            (
                r["stream"].as_str().unwrap().to_owned(),
                r["value"].as_f64().unwrap(),
            )
        })
        .collect();
    let want: BTreeMap<String, f64> = per_stream
        .into_iter()
        .filter(|(_, n)| *n > 0.0)
        .map(|(k, n)| (k.to_owned(), n))
        .collect();
    assert_eq!(got, want);
    assert!(want.len() >= 3, "{want:?}");
    let v = get(
        &http,
        &hub,
        "/api/v1/indicators/bin_fill_at_collection?period=year&from=2026&to=2027",
    )
    .await;
    let mean = visible.iter().map(|c| c.fill_before).sum::<f64>() / visible.len() as f64;
    let c = &city_rows(&v)[0];
    assert!(
        (c["value"].as_f64().unwrap() - mean).abs() < 0.01,
        "{c} vs {mean}"
    );
    assert_eq!(c["collections"].as_f64().unwrap() as usize, visible.len());
    let v = get(
        &http,
        &hub,
        "/api/v1/indicators/bin_collections_full_share?period=year&from=2026&to=2027",
    )
    .await;
    let full = visible.iter().filter(|c| c.fill_before >= 80.0).count() as f64;
    let share = 100.0 * full / visible.len() as f64;
    let c = &city_rows(&v)[0];
    assert!(
        (c["value"].as_f64().unwrap() - share).abs() < 0.01,
        "{c} vs {share}"
    );

    // Lamps: the energy each drew, night by night (the meter keeps three decimals).
    let v = get(
        &http,
        &hub,
        &format!("/api/v1/indicators/lamp_energy_per_night?period=day&{range}"),
    )
    .await;
    let got = by_sensor_day(&v);
    let mut nights = 0;
    for (s, per_night) in &truth.lamp_energy_per_night {
        for (n, kwh) in per_night {
            let g = got
                .get(&(s.clone(), *n))
                .and_then(Value::as_f64)
                .unwrap_or(0.0);
            assert!((g - kwh).abs() < 0.003, "{s} night of {n}: {g} vs {kwh}");
            nights += 1;
        }
    }
    assert!(nights >= 12 * 9, "{nights} lamp-nights");

    // Bicycles: exact per counter and day, and the same as SQL over the readings view.
    let v = get(
        &http,
        &hub,
        &format!("/api/v1/indicators/bike_trips_per_day?period=day&{range}"),
    )
    .await;
    let got: BTreeMap<_, _> = by_sensor_day(&v)
        .into_iter()
        .map(|(k, v)| (k, v.as_f64().unwrap()))
        .collect();
    let want: BTreeMap<_, _> = truth
        .bike_trips_per_day
        .iter()
        .flat_map(|(s, days)| days.iter().map(move |(d, n)| ((s.clone(), *d), *n)))
        .collect();
    assert_eq!(got, want);
    let sql: BTreeMap<(String, NaiveDate), f64> = db
        .client()
        .await
        .query(
            "SELECT sensor, (time AT TIME ZONE 'Europe/Rome')::date, sum(value)
             FROM readings WHERE kind = 'bike_counter' AND metric IN ('count_in', 'count_out')
             GROUP BY 1, 2",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect();
    assert_eq!(got, sql);
    let v = get(
        &http,
        &hub,
        "/api/v1/indicators/bike_trips_per_day?period=month&from=2026-01&to=2026-02",
    )
    .await;
    let c = &city_rows(&v)[0];
    assert_eq!(c["value"].as_f64().unwrap(), want.values().sum::<f64>());
    assert!(c["weekday_daily_mean"].as_f64().unwrap() > 0.0, "{c}");
    assert!(c["weekend_daily_mean"].as_f64().unwrap() > 0.0, "{c}");
}

/// Publishes one PM10 value per hour of each local day in `days` (value, hours).
async fn pm10_days(broker: &Broker, sensor: &str, first: NaiveDate, days: &[(f64, u32)]) {
    let mut items = Vec::new();
    for (i, (v, hours)) in days.iter().enumerate() {
        let d = first + Duration::days(i as i64);
        for h in 0..*hours {
            let t = ROME
                .from_local_datetime(&d.and_hms_opt(h, 30, 0).unwrap())
                .earliest()
                .unwrap()
                .with_timezone(&Utc);
            items.push((
                format!("cityhub/v1/air_quality/{sensor}"),
                json!({"ts": t.to_rfc3339(), "values": {"pm10": v}})
                    .to_string()
                    .into_bytes(),
            ));
        }
    }
    publish_raw(broker, &items).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pm10_exceedance_days_count_valid_days_above_the_limit_by_calendar_year() {
    let (db, broker, hub) = open_hub("pm10").await;
    // 40 days from 10 December 2025: 60 (above) on 7 days, 48 (above only the
    // 2030 value) on 3, exactly 50 (not above) on 1, 70 with 17 hours (too few to
    // count) on 1, 30 on the rest. Four of the days above fall in 2025.
    let first = NaiveDate::from_ymd_opt(2025, 12, 10).unwrap();
    let mut days = vec![(30.0, 24); 40];
    for i in [2, 5, 9, 15, 22, 30, 31] {
        days[i] = (60.0, 24);
    }
    for i in [3, 25, 26] {
        days[i] = (48.0, 24);
    }
    days[12] = (50.0, 24);
    days[35] = (70.0, 17);
    days[36] = (60.0, 18); // 18 hours: exactly enough
    pm10_days(&broker, "aq-hand", first, &days).await;
    let n: i64 = days.iter().map(|d| i64::from(d.1)).sum();
    wait_for_rows(&db, n, 60, "the PM10 readings").await;
    // Answers read the hourly aggregates; late readings reach them seconds after.
    wait_for_aggregates(&db, 120).await;
    let http = reqwest::Client::new();
    let v = get(
        &http,
        &hub,
        "/api/v1/indicators/pm10_exceedance_days?from=2025&to=2027",
    )
    .await;
    assert_eq!(v["period"], "year");
    let rows: Vec<_> = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["sensor"] == "aq-hand")
        .collect();
    assert_eq!(rows.len(), 2, "{v}");
    // 2025 holds days 0-21 (10-31 December): 60 on days 2, 5, 9, 15; 48 on 3; 50 on 12.
    assert_eq!(rows[0]["period_start"], "2024-12-31T23:00:00.000000Z");
    assert_eq!(rows[0]["value"], 4.0);
    assert_eq!(rows[0]["exceedances_2030"], 6);
    assert_eq!(rows[0]["valid_days"], 22);
    assert_eq!(rows[1]["value"], 4.0); // days 22, 30, 31, 36 (not 35: 17 hours)
    assert_eq!(rows[1]["exceedances_2030"], 6);
    assert_eq!(rows[1]["valid_days"], 17);
    // The limit and its 2030 value come with the rows.
    assert_eq!(v["target"]["value"], 35.0);
    assert_eq!(v["target"]["value_2030"], 18.0);

    // The same by SQL over the reader view, by hand.
    let sql: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM (
                 SELECT (time AT TIME ZONE 'Europe/Rome')::date FROM readings
                 WHERE sensor = 'aq-hand' AND metric = 'pm10'
                 GROUP BY 1 HAVING count(*) >= 18 AND avg(value) > 50) d",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(sql, 8);

    // The daily means: the 17-hour day has none.
    let v = get(
        &http,
        &hub,
        "/api/v1/indicators/pm10_daily_mean?sensor=aq-hand&from=2026-01-14&to=2026-01-17",
    )
    .await;
    let vals: Vec<Value> = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["value"].clone())
        .collect();
    assert_eq!(vals, [Value::Null, json!(60.0), json!(30.0)]);
    assert_eq!(v["rows"][0]["hours"], 17.0);

    // CSV for spreadsheets and pandas.
    let r = http
        .get(hub.url(
            "/api/v1/indicators/pm10_exceedance_days?from=2025&to=2027&format=csv&sensor=aq-hand",
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "text/csv; charset=utf-8");
    let text = r.text().await.unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next().unwrap(),
        "period_start,sensor,value,unit,exceedances_2030,valid_days"
    );
    assert_eq!(
        lines.next().unwrap(),
        "2024-12-31T23:00:00.000000Z,aq-hand,4,days,6,22"
    );

    // Wrong questions get a 400 or 404 that says why.
    for (q, code) in [
        ("/api/v1/indicators/pm10_exceedance_days?period=week", 400),
        ("/api/v1/indicators/pm10_exceedance_days?from=2026-13", 400),
        (
            "/api/v1/indicators/pm10_exceedance_days?from=2027&to=2026",
            400,
        ),
        (
            "/api/v1/indicators/pm10_exceedance_days?period=day&from=2000&to=2026",
            400,
        ),
        ("/api/v1/indicators/pm10_exceedance_days?sensor=nobody", 404),
        ("/api/v1/indicators/pm10_exceedance_days?colour=red", 400),
        ("/api/v1/indicators/pm10_exceedance_days?rows=all", 400),
        (
            "/api/v1/indicators/pm10_exceedance_days?rows=sensors&limit=0",
            400,
        ),
        (
            "/api/v1/indicators/pm10_exceedance_days?rows=sensors&limit=1001",
            400,
        ),
        (
            "/api/v1/indicators/pm10_exceedance_days?cursor=aq-hand",
            400,
        ),
        (
            "/api/v1/indicators/pm10_exceedance_days?rows=city&sensor=aq-hand",
            400,
        ),
        (
            "/api/v1/indicators/bin_collections?rows=sensors&by=stream",
            400,
        ),
        ("/api/v1/indicators/happiness", 404),
    ] {
        let r = http.get(hub.url(q)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), code, "{q}");
        let e: Value = r.json().await.unwrap();
        assert!(!e["description"].as_str().unwrap().is_empty());
    }

    // The list says what each is for.
    let l = get(&http, &hub, "/api/v1/indicators").await;
    let ids: Vec<&str> = l["indicators"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    for id in [
        "pm10_daily_mean",
        "pm10_exceedance_days",
        "bin_fill_at_collection",
        "bin_collections_full_share",
        "lamp_energy_per_night",
        "lamp_fault_hours",
        "bike_trips_per_day",
    ] {
        assert!(ids.contains(&id), "{id} missing from {ids:?}");
    }
    let i = l["indicators"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == "pm10_exceedance_days")
        .unwrap();
    assert_eq!(i["sdg"], json!(["3.9", "11.6"]));
    assert!(i["plan"].as_str().unwrap().contains("air"));
    assert!(i["href"]
        .as_str()
        .unwrap()
        .ends_with("/api/v1/indicators/pm10_exceedance_days"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lamp_energy_survives_a_meter_reset_and_fault_hours_follow_the_sun() {
    let (db, broker, hub) = open_hub("lamps").await;
    // One lamp in Cremona, 10-minute readings from noon on 1 June 2026 to noon on
    // 3 June (local). Night 1: lit 21:30-05:30 at 100 W, the meter reset to 0 at
    // 01:00. Night 2: it stays dark all night (a fault: ~7 h of night), and is lit
    // from 09:00 to 11:00 on 3 June (a fault: 2 h by day).
    let t0 = ROME
        .with_ymd_and_hms(2026, 6, 1, 12, 0, 0)
        .unwrap()
        .with_timezone(&Utc);
    let mut meter = 500.0;
    let mut items = vec![
        json!({"ts": t0.to_rfc3339(), "location": {"lat": 45.1335, "lon": 10.0245},
                               "values": {"power": 0.0, "energy": meter}}),
    ];
    let mut lit_by_night = [0.0f64; 2];
    let lit = |t: DateTime<Utc>| {
        let local = t.with_timezone(&ROME);
        let hm = chrono::Timelike::hour(&local) * 60 + chrono::Timelike::minute(&local);
        if t <= t0 + Duration::hours(24) {
            !(5 * 60 + 30..21 * 60 + 30).contains(&hm)
        } else {
            (9 * 60..11 * 60).contains(&hm)
                && local.date_naive() == NaiveDate::from_ymd_opt(2026, 6, 3).unwrap()
        }
    };
    for k in 1..=(48 * 6) {
        let t = t0 + Duration::minutes(10 * k);
        let local = t.with_timezone(&ROME);
        let night = usize::from(k > 24 * 6);
        let hm = chrono::Timelike::hour(&local) * 60 + chrono::Timelike::minute(&local);
        let on = lit(t);
        // Energy drawn in the 10 minutes ending now, if it was on at the start.
        let prev_on = lit(t - Duration::minutes(10));
        if local.date_naive() == NaiveDate::from_ymd_opt(2026, 6, 2).unwrap() && hm == 60 {
            meter = 0.0; // a new meter, fitted at 00:50, counts from zero
        }
        if prev_on {
            meter += 100.0 / 6.0 / 1000.0;
            lit_by_night[night] += 100.0 / 6.0 / 1000.0;
        }
        items.push(json!({"ts": t.to_rfc3339(), "values": {"power": if on { 100.0 } else { 0.0 }, "energy": meter}}));
    }
    let n = items.len() as i64 * 2;
    let items: Vec<_> = items
        .into_iter()
        .map(|d| {
            (
                "cityhub/v1/streetlight/lamp-hand".to_owned(),
                d.to_string().into_bytes(),
            )
        })
        .collect();
    publish_raw(&broker, &items).await;
    wait_for_rows(&db, n, 60, "the lamp readings").await;
    // Answers read the hourly aggregates; late readings reach them seconds after.
    wait_for_aggregates(&db, 120).await;
    let http = reqwest::Client::new();
    let v = get(
        &http,
        &hub,
        "/api/v1/indicators/lamp_energy_per_night?sensor=lamp-hand&from=2026-06-01&to=2026-06-03",
    )
    .await;
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{v}");
    // The first reading of the new meter is what it drew since it was fitted.
    assert!(
        (rows[0]["value"].as_f64().unwrap() - lit_by_night[0]).abs() < 1e-4,
        "{v} vs {lit_by_night:?}"
    );
    assert!(
        (rows[1]["value"].as_f64().unwrap() - lit_by_night[1]).abs() < 1e-4,
        "{v} vs {lit_by_night:?}"
    );

    let v = get(
        &http,
        &hub,
        "/api/v1/indicators/lamp_lit_hours?sensor=lamp-hand&from=2026-06-01&to=2026-06-03",
    )
    .await;
    let lit: Vec<f64> = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["value"].as_f64().unwrap())
        .collect();
    assert_eq!(lit, [8.0, 2.0]);

    // Fault hours by calendar day: the lamp is dark the whole night of 2-3 June
    // (the sun 6° down from about 21:45 to 05:00 local), and lit 09:00-11:00 on
    // 3 June in full day.
    let v = get(
        &http,
        &hub,
        "/api/v1/indicators/lamp_fault_hours?sensor=lamp-hand&from=2026-06-01&to=2026-06-04",
    )
    .await;
    let f: BTreeMap<NaiveDate, f64> = by_sensor_day(&v)
        .into_iter()
        .map(|((_, d), v)| (d, v.as_f64().unwrap()))
        .collect();
    let day = |d: u32| NaiveDate::from_ymd_opt(2026, 6, d).unwrap();
    // 1 June: lit from 21:30, before full night (~21:45): twilight, no fault; and
    // off at 05:30, in the morning twilight: no fault. 2 June evening: dark at night from
    // ~21:50 to midnight; 3 June: dark until ~05:00, lit 2 h by day.
    assert_eq!(f.get(&day(1)).copied().unwrap_or(0.0), 0.0, "{f:?}");
    let d2 = f[&day(2)];
    assert!((1.8..2.5).contains(&d2), "2 June: {d2} h dark at night");
    let d3 = f[&day(3)];
    assert!(
        (6.5..7.5).contains(&d3),
        "3 June: {d3} h (about 5 dark at night, 2 lit by day)"
    );
    // And the sun times behind it agree with the almanac: night (6° down) starts
    // at about 21:50 in Cremona on 2 June.
    let l = cityhub_core::sun::DayLimits::new(day(2), 45.1335, 10.0245);
    let night_from = l.night.unwrap().1.with_timezone(&ROME);
    assert_eq!(night_from.format("%H").to_string(), "21");
}

/// Eight requests for three years of daily collections at once, while the readings
/// they scan are locked: two compute (and wait on the lock), the other six are
/// answered 503 with Retry-After within seconds, and the rest of the API keeps its
/// pool. Before, every request took a pool connection and waited, however many came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indicator_computations_are_bounded_and_the_rest_of_the_api_answers() {
    let f = fixture(&[("CITYHUB_DATABASE_POOL_SIZE", "6")]).await;
    let lock = f.db.lock("observations_data").await;
    let url = f
        .hub
        .url("/api/v1/indicators/bin_collections?period=day&from=2023-01-01&to=2025-12-31");
    let reqs: Vec<_> = (0..8)
        .map(|_| {
            let (http, url) = (f.http.clone(), url.clone());
            tokio::spawn(async move { http.get(url).send().await.unwrap() })
        })
        .collect();
    wait_for(60, "all but two requests answered", || async {
        reqs.iter().filter(|r| r.is_finished()).count() == 6
    })
    .await;
    let (done, waiting): (Vec<_>, Vec<_>) = reqs.into_iter().partition(|r| r.is_finished());
    for r in done {
        refused(r.await.unwrap(), 503, "indicator computations").await;
    }
    // The pool still serves what does not read the locked table.
    for path in ["/api/v1/alerts", "/readyz", "/api/v1/sensors"] {
        let r = f.http.get(f.hub.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    lock.release().await;
    for r in waiting {
        let r = r.await.unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    }
}

/// A query may not hold a pool connection for long: past `database.statement_timeout_s`
/// PostgreSQL cancels it and the client is told 503 with Retry-After. An answer over
/// finished days is kept and served again without reading the table. Before, the
/// request waited for the lock as long as it was held, and every repeat computed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_query_is_cancelled_and_finished_days_are_served_from_the_cache() {
    let f = fixture(&[("CITYHUB_DATABASE_STATEMENT_TIMEOUT_S", "1")]).await;
    let past = "/api/v1/indicators/bin_collections?period=day&from=2024-01-01&to=2024-03-01";
    let first = f.json(past).await;
    assert_eq!(first.0, 200, "{}", first.1);
    let lock = f.db.lock("observations_data").await;
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(40))
        .build()
        .unwrap();
    // The same question: the kept answer, though the readings are locked.
    let again: Value = http
        .get(f.hub.url(past))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again, first.1);
    // Another, over the last days (computed from the readings, never materialized):
    // it waits on the lock until the timeout cancels it.
    let today = Utc::now().date_naive();
    let r = http
        .get(f.hub.url(&format!(
            "/api/v1/indicators/bin_collections?period=day&from={}&to={}",
            today - Duration::days(2),
            today + Duration::days(1)
        )))
        .send()
        .await
        .expect("answered before the lock is released");
    refused(r, 503, "took longer").await;
    let sensor =
        f.db.text("SELECT external_id FROM sensors WHERE kind = 'waste_bin' LIMIT 1")
            .await;
    let r = http
        .get(f.hub.url(&format!("/api/v1/sensors/{sensor}/readings")))
        .send()
        .await
        .expect("answered before the lock is released");
    assert_eq!(r.status(), 503);
    lock.release().await;
    let r = f.get(&format!("/api/v1/sensors/{sensor}/readings")).await;
    assert_eq!(r.status(), 200);
}

/// An indicator is priced in the client's rate limit by the sensor-days it reads
/// (`SENSOR_DAYS_PER_REQUEST` a request, at most the whole burst): three years of 300
/// bins by day take the whole burst of 30, and another such request waits until the
/// bucket refills (30 s at one request a second). Before, each cost one request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_indicator_costs_the_rate_limit_in_proportion_to_its_work() {
    let f = fixture(&[
        ("CITYHUB_HTTP_RATE_LIMIT_PER_S", "1"),
        ("CITYHUB_HTTP_RATE_LIMIT_BURST", "30"),
    ])
    .await;
    f.db.client()
        .await
        .batch_execute(
            "INSERT INTO sensors (external_id, kind)
             SELECT 'bin-more-' || g, 'waste_bin' FROM generate_series(1, 300) g",
        )
        .await
        .unwrap();
    let years = "/api/v1/indicators/bin_collections?period=day&from=2023-01-01&to=2025-12-31";
    let r = f.get(years).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    // Three other years: the bucket is empty, so even the request's own share waits.
    let other = "/api/v1/indicators/bin_collections?period=day&from=2022-01-01&to=2024-12-31";
    let r = f.get(other).await;
    assert_eq!(r.status(), 429);
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
    // Paid for as a request, the work is not: most of the burst is still to refill.
    let wait = refused(f.get(other).await, 429, "sensor-days").await;
    assert!(wait >= 10, "Retry-After {wait}");
}

/// Overflow risk counts the hours whose mean fill is at or above `overflow_at` (95 %).
/// Before, the value was the sum of the day's hourly means (here 1,185, where 3
/// hours are at risk).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bin_overflow_hours_count_the_hours_at_risk() {
    let (db, broker, hub) = open_hub("overflow").await;
    // One bin on 3 March 2026, one reading an hour: 40 % for 20 hours, then 95, 97,
    // 99 (at risk) and 94 (not).
    let day = NaiveDate::from_ymd_opt(2026, 3, 3).unwrap();
    let mut items = Vec::new();
    for h in 0..24u32 {
        let fill = match h {
            20 => 95.0,
            21 => 97.0,
            22 => 99.0,
            23 => 94.0,
            _ => 40.0,
        };
        let t = ROME
            .from_local_datetime(&day.and_hms_opt(h, 10, 0).unwrap())
            .earliest()
            .unwrap()
            .with_timezone(&Utc);
        items.push((
            "cityhub/v1/waste_bin/bin-overflow".to_owned(),
            json!({"ts": t.to_rfc3339(), "values": {"fill_level": fill}})
                .to_string()
                .into_bytes(),
        ));
    }
    publish_raw(&broker, &items).await;
    wait_for_rows(&db, 24, 60, "the bin's readings").await;
    wait_for_aggregates(&db, 120).await;
    let http = reqwest::Client::new();
    let v = get(
        &http,
        &hub,
        "/api/v1/indicators/bin_overflow_hours?period=day&from=2026-03-03&to=2026-03-04",
    )
    .await;
    let got = by_sensor_day(&v);
    assert_eq!(got[&("bin-overflow".to_owned(), day)], json!(3.0), "{v}");
    assert_eq!(city_rows(&v)[0]["value"], json!(3.0), "{v}");
}

/// Days whose indicators the hub has materialized answer as the readings do: every
/// indicator, by day and by month, the city's rows, each waste stream's and each
/// sensor's, from a hub that reads the materialized days and from one that computes
/// everything from the readings (`indicators.materialize = false`), on one database.
/// The materialized answer needs no reading (the readings' table locked, it answers);
/// a late reading is in both answers at once (its days are computed again from the
/// readings until the materializer has redone them), and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn materialized_indicator_days_answer_as_the_readings_do() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let common = [
        ("CITYHUB_HTTP_RATE_LIMIT_PER_S", "0"),
        ("CITYHUB_INDICATORS_CACHE_S", "0"),
    ];
    let stored = Hub::start_in_process(&db, &broker, "materialized", &common).await;
    let mut live_env = common.to_vec();
    live_env.push(("CITYHUB_INDICATORS_MATERIALIZE", "false"));
    live_env.push(("CITYHUB_DATABASE_STATEMENT_TIMEOUT_S", "2"));
    let live = Hub::start_in_process(&db, &broker, "computed", &live_env).await;
    // Twelve days of a small fleet, ending twenty days ago: every day settled.
    let end = (Utc::now() - Duration::days(20))
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc();
    let start = end - Duration::days(12);
    let opts = SimOptions {
        seed: 11,
        start,
        fleet: FleetSpec {
            per_kind: vec![
                ("waste_bin".into(), 7),
                ("streetlight".into(), 5),
                ("bike_counter".into(), 2),
                ("air_quality".into(), 2),
            ],
            lamp_fault_share: 0.3,
        },
        formats: vec![Format::Native],
        faults: FaultRates::parse("duplicate=0.02,out_of_order=0.02").unwrap(),
    };
    let msgs = fleet_messages(&opts, end);
    publish_sim(&broker, &msgs).await;
    wait_for_rows(&db, expected_rows(&msgs), 120, "the simulated rows").await;
    wait_for_aggregates(&db, 120).await;
    let last_day = (end - Duration::days(1)).date_naive();
    let materialized = format!(
        "SELECT count(*) FROM indicator_bases WHERE to_day > '{last_day}'
         AND (SELECT count(*) FROM indicator_dirty) = 0"
    );
    wait_for(120, "the indicator days materialized", || async {
        db.count(&materialized).await >= 7
    })
    .await;
    assert!(db.count("SELECT count(*) FROM indicator_days").await > 0);

    let http = reqwest::Client::new();
    let (from, to) = (
        start.date_naive() - Duration::days(1),
        end.date_naive() + Duration::days(1),
    );
    let compare = |label: &'static str| {
        let (http, stored, live) = (&http, &stored, &live);
        async move {
            for ind in cityhub_core::indicators::INDICATORS {
                for period in ["day", "month"] {
                    let by = if ind.kind == "waste_bin" {
                        "&by=stream"
                    } else {
                        ""
                    };
                    let path = format!(
                        "/api/v1/indicators/{}?period={period}&from={from}&to={to}{by}",
                        ind.id
                    );
                    let a = get(http, stored, &path).await;
                    let b = get(http, live, &path).await;
                    assert_eq!(a["rows"], b["rows"], "{label}: {path}");
                    assert!(!a["rows"].as_array().unwrap().is_empty(), "{label}: {path}");
                }
            }
        }
    };
    compare("materialized").await;

    // The materialized answer reads no reading; the computed one waits on the lock.
    let collections =
        format!("/api/v1/indicators/bin_collections?period=month&from={from}&to={to}");
    let before = get(&http, &stored, &collections).await;
    let lock = db.lock("observations_data").await;
    let again = get(&http, &stored, &collections).await;
    assert_eq!(again["rows"], before["rows"]);
    let r = http.get(live.url(&collections)).send().await.unwrap();
    assert_eq!(r.status(), 503, "{}", r.text().await.unwrap_or_default());
    lock.release().await;

    // A late reading: a bin emptied from 100 % four days before the end, between two
    // of its readings. Both answers count one more collection at once.
    let bin = db
        .text(
            "SELECT external_id FROM sensors WHERE kind = 'waste_bin' ORDER BY external_id LIMIT 1",
        )
        .await;
    let t = end - Duration::days(4) + Duration::minutes(7);
    let late: Vec<(String, Vec<u8>)> = [(t, 100.0), (t + Duration::minutes(1), 0.0)]
        .iter()
        .map(|(t, fill)| {
            (
                format!("cityhub/v1/waste_bin/{bin}"),
                json!({"ts": t.to_rfc3339(), "values": {"fill_level": fill}})
                    .to_string()
                    .into_bytes(),
            )
        })
        .collect();
    let n = db.observations().await;
    publish_raw(&broker, &late).await;
    wait_for_rows(&db, n + 2, 60, "the late readings").await;
    wait_for_aggregates(&db, 120).await;
    let total = |v: &Value| -> f64 {
        city_rows(v)
            .iter()
            .map(|r| r["value"].as_f64().unwrap_or(0.0))
            .sum()
    };
    let after = get(&http, &stored, &collections).await;
    assert!(
        total(&after) > total(&before),
        "{} then {}",
        total(&before),
        total(&after)
    );
    compare("a late reading marked").await;
    wait_for(120, "the marked days materialized again", || async {
        db.count("SELECT count(*) FROM indicator_dirty").await == 0
    })
    .await;
    compare("a late reading materialized").await;
}
