//! The decoder's cost per message, against parsing the same bytes as JSON alone (the
//! floor any decoder pays): an ordinary 3-metric message, and a hostile one of 6,000
//! unknown metrics (60 KB, under the 64 KiB payload limit), which is all refusals.

use chrono::Utc;
use cityhub_core::Settings;
use cityhub_ingest::decode::{Decoder, Limits};
use std::time::{Duration, Instant};

pub struct DecodeCost {
    pub what: &'static str,
    pub bytes: usize,
    /// Microseconds a message: decoded, and parsed as JSON alone.
    pub decode_us: f64,
    pub parse_us: f64,
    pub problems: usize,
    pub unlisted: u32,
}

/// Each payload decoded, then parsed, alternately for `window` in all, one core.
pub fn decode_costs(window: Duration) -> anyhow::Result<Vec<DecodeCost>> {
    let s = Settings::builtin()?;
    // As a hub with the shipped settings decodes.
    let dec =
        Decoder::new(s.catalog()?, Limits::from_settings(&s)).with_adapters(s.adapters.clone());
    let now = Utc::now();
    let ordinary = serde_json::json!({"ts": now.to_rfc3339(),
        "values": {"fill_level": 72.5, "battery": 88, "temperature": 14.25}})
    .to_string();
    let flood = {
        let keys: Vec<String> = (0..6000).map(|i| format!("\"u{i}\":1")).collect();
        format!("{{\"values\":{{{}}}}}", keys.join(","))
    };
    let cases = [
        ("an ordinary 3-metric message", ordinary),
        ("a message of 6,000 unknown metrics", flood),
    ];
    let each = window / (2 * cases.len() as u32);
    let mut out = Vec::new();
    for (what, payload) in cases {
        let d = dec.decode("cityhub/v1/waste_bin/bench-1", payload.as_bytes(), now);
        let (problems, unlisted) = (d.problems.len(), d.unlisted);
        let timed = |f: &dyn Fn()| {
            let (started, mut n) = (Instant::now(), 0u64);
            while started.elapsed() < each {
                for _ in 0..16 {
                    f();
                }
                n += 16;
            }
            started.elapsed().as_secs_f64() * 1e6 / n as f64
        };
        let decode_us = timed(&|| {
            std::hint::black_box(dec.decode(
                "cityhub/v1/waste_bin/bench-1",
                std::hint::black_box(payload.as_bytes()),
                now,
            ));
        });
        let parse_us = timed(&|| {
            std::hint::black_box(
                serde_json::from_slice::<serde_json::Value>(std::hint::black_box(
                    payload.as_bytes(),
                ))
                .ok(),
            );
        });
        out.push(DecodeCost {
            what,
            bytes: payload.len(),
            decode_us,
            parse_us,
            problems,
            unlisted,
        });
    }
    Ok(out)
}
