//! The validation every format goes through: a reading's time against the
//! future and retention limits, its metric against the kind, its value against
//! the metric's range, and positions.

use super::{Decoded, Limits, Reading};
use chrono::{DateTime, TimeZone, Utc};
use cityhub_core::{GeoPoint, Kind, RejectReason};
use serde_json::Value;

/// One message being decoded for one kind.
pub(super) struct Ctx<'a> {
    pub kind: &'a Kind,
    pub now: DateTime<Utc>,
    pub limits: &'a Limits,
    pub out: &'a mut Decoded,
    /// The kind's metric names as an unknown metric's reason lists them, joined once
    /// per message: a payload of thousands of unknown metrics would join them each time.
    known: Option<String>,
}

impl<'a> Ctx<'a> {
    pub fn new(
        kind: &'a Kind,
        now: DateTime<Utc>,
        limits: &'a Limits,
        out: &'a mut Decoded,
    ) -> Self {
        Self {
            kind,
            now,
            limits,
            out,
            known: None,
        }
    }

    /// Records a problem; `reason` is built only if the problem is described
    /// ([`Decoded::problem`]).
    pub fn push(&mut self, code: RejectReason, reason: impl FnOnce() -> String) {
        self.out.problem(code, reason);
    }

    /// Checks a reading's time against the future and retention limits.
    pub fn check_time(&mut self, at: &str, t: DateTime<Utc>) -> bool {
        if t > self.now + self.limits.max_future {
            self.push(RejectReason::FutureTimestamp, || {
                format!(
                    "{at}: {} is more than {} s ahead of the hub's clock",
                    t.to_rfc3339(),
                    self.limits.max_future.num_seconds()
                )
            });
            false
        } else if t < self.now - self.limits.retention {
            self.push(RejectReason::TooOld, || {
                format!(
                    "{at}: {} is older than the retention of {} days",
                    t.to_rfc3339(),
                    self.limits.retention.num_days()
                )
            });
            false
        } else {
            true
        }
    }

    /// Validates one value of `metric` (already in the kind's unit) and keeps it.
    /// `at` names the value's place for the reason; built only when there is a problem.
    pub fn accept(
        &mut self,
        at: impl Fn() -> String,
        metric: &str,
        time: DateTime<Utc>,
        value: f64,
    ) {
        let Some(m) = self.kind.metric(metric) else {
            let kind = self.kind;
            let known = &mut self.known;
            self.out.problem(RejectReason::UnknownMetric, || {
                let known = known.get_or_insert_with(|| {
                    let names: Vec<&str> = kind.metrics.keys().map(|k| k.as_str()).collect();
                    names.join(", ")
                });
                format!(
                    "{}: metric {metric:?} is not defined for kind {} (known: {known})",
                    at(),
                    kind.name
                )
            });
            return;
        };
        if !value.is_finite() {
            self.push(RejectReason::NotFinite, || {
                format!("{}: value is not a finite number", at())
            });
        } else if !m.in_range(value) {
            self.push(RejectReason::OutOfRange, || {
                let bound = match (m.min, m.max) {
                    (Some(min), _) if value < min => format!("below the minimum {min} {}", m.unit),
                    (_, Some(max)) => format!("above the maximum {max} {}", m.unit),
                    _ => "outside the valid range".into(),
                };
                format!("{}: {value} is {bound}", at())
            });
        } else {
            self.out.readings.push(Reading {
                metric: m.name.clone(),
                time,
                value,
            });
        }
    }

    /// `{"lat": .., "lon": ..}` as the sensor's position.
    pub fn location(&mut self, at: &str, loc: &Value) {
        let Value::Object(o) = loc else {
            self.push(RejectReason::BadLocation, || {
                format!(
                    "{at}: expected an object with lat and lon, got {}",
                    type_name(loc)
                )
            });
            return;
        };
        match (
            o.get("lat").and_then(Value::as_f64),
            o.get("lon").and_then(Value::as_f64),
        ) {
            (Some(lat), Some(lon)) => match GeoPoint::new(lat, lon) {
                Ok(p) => self.out.location = Some(p),
                Err(e) => self.push(RejectReason::BadLocation, || format!("{at}: {e}")),
            },
            _ => self.push(RejectReason::BadLocation, || {
                format!("{at}: lat and lon must both be numbers")
            }),
        }
    }
}

pub(super) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(super) fn is_non_finite_word(s: &str) -> bool {
    matches!(
        s.to_ascii_lowercase().as_str(),
        "nan" | "inf" | "+inf" | "-inf" | "infinity" | "+infinity" | "-infinity"
    )
}

/// Seconds since the epoch, from 1970 to the year 3000.
pub(super) fn epoch_seconds(s: f64) -> Option<DateTime<Utc>> {
    if !(0.0..=32_503_680_000.0).contains(&s) {
        return None;
    }
    let micros = (s * 1e6).round() as i64;
    Utc.timestamp_micros(micros).single()
}

/// `ts`: RFC 3339 text or epoch milliseconds; kept to microseconds, PostgreSQL's resolution.
pub(super) fn parse_ts(v: &Value) -> Result<DateTime<Utc>, String> {
    let t = match v {
        Value::String(s) => DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| format!("{s:?} is not an RFC 3339 timestamp ({e})"))?,
        Value::Number(n) => {
            let ms = n.as_f64().ok_or("not a number")?;
            epoch_seconds(ms / 1000.0)
                .ok_or_else(|| format!("{n} is not a valid epoch time in milliseconds"))?
        }
        other => {
            return Err(format!(
                "expected RFC 3339 text or epoch milliseconds, got {}",
                type_name(other)
            ))
        }
    };
    Utc.timestamp_micros(t.timestamp_micros())
        .single()
        .ok_or_else(|| "out of range".to_owned())
}
