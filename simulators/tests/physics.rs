//! The simulated fleet behaves like the city's: checks over days of simulated time.

use chrono::{DateTime, Duration, TimeZone, Utc};
use cityhub_core::Settings;
use cityhub_sim::fleet::LampFault;
use cityhub_sim::{generate, sun, FaultRates, FleetSpec, Format, SimMessage, SimOptions};
use std::collections::HashMap;

fn opts(seed: u64, start: DateTime<Utc>, per_kind: usize, faults: FaultRates) -> SimOptions {
    SimOptions {
        seed,
        start,
        fleet: FleetSpec::built_in(per_kind, 0.1),
        formats: vec![Format::Native, Format::Senml],
        faults,
    }
}

fn run(seed: u64, start: DateTime<Utc>, days: i64, per_kind: usize) -> Vec<SimMessage> {
    let catalog = Settings::builtin().unwrap().catalog().unwrap();
    generate(
        &opts(seed, start, per_kind, FaultRates::default()),
        &catalog,
        usize::MAX,
        start + Duration::days(days),
    )
    .unwrap()
}

fn value(m: &SimMessage, k: &str) -> f64 {
    m.values
        .iter()
        .find(|(n, _)| n == k)
        .map(|(_, v)| *v)
        .unwrap()
}

#[test]
fn same_seed_same_stream_other_seed_other_stream() {
    let t0 = Utc.with_ymd_and_hms(2026, 3, 2, 0, 0, 0).unwrap();
    let a = run(7, t0, 1, 5);
    let b = run(7, t0, 1, 5);
    let c = run(8, t0, 1, 5);
    assert!(a.len() > 500);
    assert_eq!(a.len(), b.len());
    assert!(a
        .iter()
        .zip(&b)
        .all(|(x, y)| x.topic == y.topic && x.payload == y.payload));
    assert!(a.iter().zip(&c).any(|(x, y)| x.payload != y.payload));
    // Times never go backwards without a fault.
    assert!(a.windows(2).all(|w| w[0].time <= w[1].time));
}

#[test]
fn physics_over_a_winter_fortnight() {
    let t0 = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
    let msgs = run(42, t0, 14, 10);
    let catalog = Settings::builtin().unwrap().catalog().unwrap();
    let sensors =
        cityhub_sim::fleet::build(42, &opts(42, t0, 10, FaultRates::default()).fleet, &catalog)
            .unwrap();
    let faulty: HashMap<&str, LampFault> = sensors
        .iter()
        .filter_map(|s| s.lamp_fault().map(|f| (s.id.as_str(), f)))
        .collect();
    let mut last_energy: HashMap<&str, f64> = HashMap::new();
    let mut last_fill: HashMap<&str, f64> = HashMap::new();
    let (mut drops, mut pm10_exceed, mut lit_night, mut dark_day) = (0, 0, 0, 0);
    for m in &msgs {
        for (k, v) in &m.values {
            let metric = catalog.get(&m.kind).unwrap().metric(k).unwrap();
            assert!(metric.in_range(*v), "{} {k}={v} out of its range", m.sensor);
        }
        match m.kind.as_str() {
            "waste_bin" => {
                let f = value(m, "fill_level");
                assert!((0.0..=100.0).contains(&f));
                if let Some(prev) = last_fill.insert(&m.sensor, f) {
                    if f < prev - 20.0 {
                        drops += 1;
                    }
                }
            }
            "streetlight" => {
                let e = value(m, "energy");
                if let Some(prev) = last_energy.insert(&m.sensor, e) {
                    assert!(
                        e >= prev,
                        "energy meter of {} went back: {prev} -> {e}",
                        m.sensor
                    );
                }
                let (lat, lon) = sensors
                    .iter()
                    .find(|s| s.id == m.sensor)
                    .map(|s| (s.lat, s.lon))
                    .unwrap();
                let dark = sun::is_dark(m.time, lat, lon);
                let power = value(m, "power");
                match faulty.get(m.sensor.as_str()) {
                    None if !dark => assert_eq!(
                        power, 0.0,
                        "healthy lamp {} lit by day at {}",
                        m.sensor, m.time
                    ),
                    None => {
                        assert!(power > 0.0, "healthy lamp {} dark at night", m.sensor);
                        lit_night += 1;
                    }
                    Some(LampFault::DayBurner) if !dark => assert!(power > 0.0),
                    Some(LampFault::Dark) if dark => {
                        assert_eq!(power, 0.0);
                        dark_day += 1;
                    }
                    _ => {}
                }
            }
            "bike_counter" => {
                assert!(value(m, "count_in") >= 0.0 && value(m, "count_out") >= 0.0);
                assert_eq!(value(m, "interval_s"), 900.0);
                assert_eq!(m.time.timestamp() % 900, 0, "counts are per quarter hour");
            }
            "air_quality" => {
                if value(m, "pm10") > 50.0 {
                    pm10_exceed += 1;
                }
                assert!(value(m, "pm2_5") < value(m, "pm10"));
            }
            _ => unreachable!(),
        }
    }
    assert!(drops > 5, "bins were never collected ({drops} drops)");
    assert!(pm10_exceed > 10, "no winter PM10 episode above 50 µg/m³");
    assert!(lit_night > 100);
    let _ = dark_day;
    assert!(
        !faulty.is_empty(),
        "10 % of 10 lamps: expected at least one fault with this seed"
    );
}

#[test]
fn bike_counts_peak_at_commuting_hours_and_drop_at_weekends() {
    let t0 = Utc.with_ymd_and_hms(2026, 5, 4, 0, 0, 0).unwrap(); // a Monday
    let msgs = run(5, t0, 7, 20);
    let mut by_hour = [0.0f64; 24];
    let (mut weekday, mut weekend) = (0.0, 0.0);
    for m in msgs.iter().filter(|m| m.kind == "bike_counter") {
        let total = value(m, "count_in") + value(m, "count_out");
        let local = m.time + Duration::hours(2);
        if local.format("%u").to_string().parse::<u32>().unwrap() >= 6 {
            weekend += total;
        } else {
            weekday += total;
            by_hour[local.format("%H").to_string().parse::<usize>().unwrap()] += total;
        }
    }
    let peak_morning = by_hour[8] + by_hour[9];
    let midday = by_hour[12] + by_hour[13];
    let night = by_hour[2] + by_hour[3];
    assert!(
        peak_morning > 1.5 * midday,
        "morning {peak_morning} vs midday {midday}"
    );
    assert!(midday > 3.0 * night);
    assert!(
        weekday / 5.0 > 1.3 * weekend / 2.0,
        "weekday {weekday} weekend {weekend}"
    );
}

#[test]
fn faults_are_injected_and_accounted() {
    let t0 = Utc::now() - Duration::days(2);
    let faults = FaultRates::parse("malformed=0.05,out_of_range=0.05,unknown_kind=0.05,duplicate=0.05,out_of_order=0.05,burst=0.02").unwrap();
    let catalog = Settings::builtin().unwrap().catalog().unwrap();
    let msgs = generate(
        &opts(9, t0, 10, faults),
        &catalog,
        4000,
        t0 + Duration::days(1),
    )
    .unwrap();
    let mut report = cityhub_sim::Report::default();
    for m in &msgs {
        report.count(m);
    }
    for f in [
        "malformed",
        "out_of_range",
        "unknown_kind",
        "duplicate",
        "out_of_order",
    ] {
        assert!(
            report.faults.get(f).copied().unwrap_or(0) > 20,
            "{f}: {:?}",
            report.faults
        );
    }
    assert!(
        msgs.windows(2).any(|w| w[1].time < w[0].time),
        "no message out of order"
    );
    assert_eq!(
        report.expected_dead_letters["malformed_json"],
        report.faults["malformed"]
    );
    assert!(FaultRates::parse("bogus=0.1").is_err());
    assert!(FaultRates::parse("malformed=2").is_err());
}

#[test]
fn network_server_formats_have_the_shape_of_the_real_thing() {
    let t0 = Utc::now() - Duration::hours(6);
    let catalog = Settings::builtin().unwrap().catalog().unwrap();
    let mut o = opts(3, t0, 2, FaultRates::default());
    o.formats = vec![Format::Chirpstack];
    let msgs = generate(&o, &catalog, 50, Utc::now()).unwrap();
    let bin = msgs.iter().find(|m| m.kind == "waste_bin").unwrap();
    assert!(
        bin.topic.starts_with("application/") && bin.topic.ends_with("/event/up"),
        "{}",
        bin.topic
    );
    let doc: serde_json::Value = serde_json::from_slice(&bin.payload).unwrap();
    // Same keys as a real ChirpStack v4 capture of a bin sensor.
    let real = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/chirpstack-jena/example3.json");
    let real: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(real).unwrap()).unwrap();
    for key in [
        "deduplicationId",
        "time",
        "deviceInfo",
        "devAddr",
        "fCnt",
        "fPort",
        "data",
        "object",
        "rxInfo",
    ] {
        assert!(real.get(key).is_some() && doc.get(key).is_some(), "{key}");
    }
    for key in [
        "tenantId",
        "applicationId",
        "applicationName",
        "deviceProfileName",
        "deviceName",
        "devEui",
        "tags",
    ] {
        assert!(
            real["deviceInfo"].get(key).is_some() && doc["deviceInfo"].get(key).is_some(),
            "deviceInfo.{key}"
        );
    }
    // Like the real bin sensor, ours reports distance in mm, not a fill level.
    assert!(real["object"].get("distance").is_some());
    assert!(
        doc["object"]["distance"].as_f64().is_some() && doc["object"].get("fill_level").is_none()
    );
    assert!(doc["rxInfo"][0]["location"]["latitude"].as_f64().is_some());

    o.formats = vec![Format::Ttn];
    let msgs = generate(&o, &catalog, 10, Utc::now()).unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&msgs[0].payload).unwrap();
    assert!(msgs[0].topic.starts_with("v3/") && msgs[0].topic.contains("@cremona/devices/"));
    assert!(doc["uplink_message"]["decoded_payload"].is_object());
    assert!(doc["uplink_message"]["locations"]["user"]["latitude"].is_number());

    o.formats = vec![Format::SensorCommunity];
    let msgs = generate(&o, &catalog, 200, Utc::now()).unwrap();
    let aq = msgs
        .iter()
        .find(|m| m.format == Format::SensorCommunity)
        .expect("air quality in Sensor.Community format");
    assert_eq!(aq.kind, "air_quality");
    let doc: serde_json::Value = serde_json::from_slice(&aq.payload).unwrap();
    let types: Vec<&str> = doc["sensordatavalues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["value_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["SDS_P1", "SDS_P2", "BME280_temperature", "BME280_humidity"]
    );
    assert!(
        doc["sensordatavalues"][0]["value"].is_string(),
        "Sensor.Community sends values as strings"
    );
    // Other kinds cannot speak it and fall back to native JSON.
    assert!(msgs
        .iter()
        .filter(|m| m.kind != "air_quality")
        .all(|m| m.format == Format::Native));
}
