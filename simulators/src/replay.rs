//! Replay: a recorded CSV series (a time column, or date and time columns, and
//! metric columns mapped by header) published as one sensor's stream, shifted
//! so its last row lands at the present, at real or accelerated pace.

use crate::formats::Format;
use crate::sim::SimMessage;
use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use serde_json::json;

/// One row of a series: its time and the metrics it has values for.
pub type Row = (DateTime<Utc>, Vec<(String, f64)>);

/// How to read the file.
#[derive(Debug, Clone)]
pub struct ReplaySpec {
    pub kind: String,
    pub sensor: String,
    /// (CSV header, metric) pairs; empty: headers equal to metric names.
    pub map: Vec<(String, String)>,
    /// Values that mean "missing" (the UCI data set uses -200).
    pub missing: Vec<f64>,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
}

fn parse_time(date: Option<&str>, time: &str) -> Option<DateTime<Utc>> {
    if let Some(d) = date {
        let d = ["%d/%m/%Y", "%Y-%m-%d", "%m/%d/%Y"]
            .iter()
            .find_map(|f| NaiveDate::parse_from_str(d, f).ok())?;
        let t = ["%H:%M:%S", "%H.%M.%S", "%H:%M"]
            .iter()
            .find_map(|f| NaiveTime::parse_from_str(time, f).ok())?;
        return Some(NaiveDateTime::new(d, t).and_utc());
    }
    DateTime::parse_from_rfc3339(time)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            NaiveDateTime::parse_from_str(time, "%Y-%m-%d %H:%M:%S")
                .ok()
                .map(|t| t.and_utc())
        })
}

/// Reads the series; rows with no usable value are skipped. Values are rounded to
/// the file's own precision by parsing (a decimal comma is accepted).
pub fn read(text: &str, spec: &ReplaySpec, metrics: &[String]) -> Result<Vec<Row>, String> {
    let delim = if text.lines().next().unwrap_or("").matches(';').count() > 1 {
        b';'
    } else {
        b','
    };
    let mut rdr = csv::ReaderBuilder::new()
        .delimiter(delim)
        .flexible(true)
        .from_reader(text.as_bytes());
    let headers: Vec<String> = rdr
        .headers()
        .map_err(|e| e.to_string())?
        .iter()
        .map(|h| h.trim().to_owned())
        .collect();
    let find = |names: &[&str]| {
        headers
            .iter()
            .position(|h| names.iter().any(|n| h.eq_ignore_ascii_case(n)))
    };
    let date_col = find(&["date"]);
    let time_col = find(&["time", "timestamp", "datetime", "ts"])
        .ok_or("no time column (time, timestamp, datetime, ts)")?;
    let map: Vec<(usize, String)> = if spec.map.is_empty() {
        metrics
            .iter()
            .filter_map(|m| {
                headers
                    .iter()
                    .position(|h| h.eq_ignore_ascii_case(m))
                    .map(|i| (i, m.clone()))
            })
            .collect()
    } else {
        spec.map
            .iter()
            .map(|(h, m)| {
                let i = headers
                    .iter()
                    .position(|x| x == h)
                    .ok_or_else(|| format!("column {h:?} is not in the header"))?;
                if !metrics.contains(m) {
                    return Err(format!(
                        "metric {m:?} is not defined for kind {}",
                        spec.kind
                    ));
                }
                Ok((i, m.clone()))
            })
            .collect::<Result<_, String>>()?
    };
    if map.is_empty() {
        return Err("no column maps to a metric of the kind (use --map HEADER=metric)".into());
    }
    let mut out = Vec::new();
    for (line, rec) in rdr.records().enumerate() {
        let rec = rec.map_err(|e| format!("line {}: {e}", line + 2))?;
        if rec.iter().all(|c| c.trim().is_empty()) {
            continue;
        }
        let Some(t) = parse_time(
            date_col.and_then(|c| rec.get(c)),
            rec.get(time_col).unwrap_or(""),
        ) else {
            return Err(format!("line {}: cannot read the time", line + 2));
        };
        let values: Vec<(String, f64)> = map
            .iter()
            .filter_map(|(i, m)| {
                let v: f64 = rec.get(*i)?.trim().replace(',', ".").parse().ok()?;
                (v.is_finite() && !spec.missing.contains(&v)).then(|| (m.clone(), v))
            })
            .collect();
        if !values.is_empty() {
            out.push((t, values));
        }
    }
    out.sort_by_key(|(t, _)| *t);
    Ok(out)
}

/// The series as native messages, shifted so the last row is at `end`.
pub fn messages(series: &[Row], spec: &ReplaySpec, end: DateTime<Utc>) -> Vec<SimMessage> {
    let Some(last) = series.last().map(|(t, _)| *t) else {
        return Vec::new();
    };
    let shift = end - last;
    series
        .iter()
        .enumerate()
        .map(|(i, (t, values))| {
            let time = *t + shift;
            let vals: serde_json::Map<_, _> = values.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
            let mut doc = json!({ "ts": time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true), "values": vals });
            if let (0, Some(lat), Some(lon)) = (i, spec.lat, spec.lon) {
                doc["location"] = json!({ "lat": lat, "lon": lon });
            }
            SimMessage {
                topic: format!("cityhub/v1/{}/{}", spec.kind, spec.sensor),
                payload: serde_json::to_vec(&doc).unwrap_or_default(),
                sensor: spec.sensor.clone(),
                kind: spec.kind.clone(),
                format: Format::Native,
                time,
                values: values.clone(),
                fault: None,
                event: None,
            }
        })
        .collect()
}
