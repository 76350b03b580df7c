//! Alert rules and notifications (`[alerts]`, `[notify]`).
//!
//! Every kind whose `map` rule is `above` has an alert rule for free: raised when
//! the value reaches `alarm`, cleared when it falls below `warn`, so a value
//! around the alarm level does not flap. A city adds its own in
//! `[[alerts.rules]]`, with a clear level (hysteresis) and a hold time.

use crate::kinds::{Catalog, MapRule};
use crate::settings::Secret;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The hub publishes alert events under this branch of its topics, and ingestion
/// leaves it alone (it is the hub's output, not readings).
pub const ALERT_TOPIC_PREFIX: &str = "cityhub/v1/alerts/";

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    Default,
    JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    #[default]
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Critical => "critical",
        }
    }
}

/// When a rule's condition holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// At or above the threshold.
    Above,
    /// At or below the threshold.
    Below,
    /// A lamp lit (above the threshold) with the sun more than 6° up, or dark
    /// with it more than 6° down; civil twilight neither raises nor clears.
    /// From a kind's `lamp` map rule.
    #[serde(skip_deserializing)]
    LampFault,
    /// No reading for `threshold` seconds (some cadences); from every kind.
    #[serde(skip_deserializing)]
    Silent,
}

/// The metric name silence alerts carry: their value is seconds without a reading.
pub const SILENCE_METRIC: &str = "silence_s";

/// A rule a city adds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertRuleDef {
    /// Stable name, used in the API and in notifications.
    pub id: String,
    /// The sensor kind it watches.
    pub kind: String,
    /// The metric of that kind it reads.
    pub metric: String,
    /// `above` or `below` the threshold.
    pub condition: Condition,
    /// The level that raises the alert, in the metric's unit.
    pub threshold: f64,
    /// The alert clears once the value is back past this level; the threshold
    /// itself when unset. Must be on the safe side of the threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear: Option<f64>,
    /// The condition must hold this long (by the readings' own times) before the
    /// alert is raised.
    #[serde(default)]
    pub hold_s: u64,
    /// `info`, `warning` or `critical`.
    #[serde(default)]
    pub severity: Severity,
}

/// Alert rules: raised, held and cleared by the hub as readings arrive.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AlertSettings {
    /// Alert rules from the kinds' `above` map rules (raised at `alarm`, cleared below `warn`).
    pub from_map_rules: bool,
    /// A sensor with no reading for this many of its kind's cadences raises a
    /// `{kind}_silent` alert (once the hub has listened that long); 0: never.
    pub silence_cadences: u32,
    /// After an alert clears, the same rule may raise for the same sensor again only
    /// on a reading at least this many seconds (reading time) after the clearing one,
    /// so a value flapping across the levels makes one alert per interval, not one
    /// per reading; 0: at once.
    pub reraise_after_s: u64,
    /// Cleared alerts whose every notification was delivered are deleted this many
    /// days after they cleared (with their outbox rows); 0 keeps them.
    pub retention_days: u32,
    /// Delivered notifications are deleted from the outbox after this many days.
    pub outbox_retention_days: u32,
    /// Rules a city adds, beside those from the kinds' map rules.
    pub rules: Vec<AlertRuleDef>,
}

impl Default for AlertSettings {
    fn default() -> Self {
        Self {
            from_map_rules: true,
            silence_cadences: 3,
            reraise_after_s: 900,
            retention_days: 400,
            outbox_retention_days: 7,
            rules: Vec::new(),
        }
    }
}

/// A webhook receiver of alert events.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookDef {
    /// An http(s) URL that receives each alert event as a JSON POST.
    pub url: crate::values::HttpUrl,
    /// Only alerts of these kinds (all when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<String>,
    /// Only alerts of these severities (all when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub severities: Vec<Severity>,
    /// Signs each body with HMAC-SHA256 (`X-Cityhub-Signature-256: sha256=<hex>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Secret>,
    /// File holding the secret, read at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<std::path::PathBuf>,
}

impl WebhookDef {
    pub fn wants(&self, kind: &str, severity: Severity) -> bool {
        (self.kinds.is_empty() || self.kinds.iter().any(|k| k == kind))
            && (self.severities.is_empty() || self.severities.contains(&severity))
    }
}

/// Where alert events go.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct NotifySettings {
    /// Receivers of alert events.
    pub webhooks: Vec<WebhookDef>,
    /// Also publish each alert event on the hub's broker, QoS 1, at
    /// `cityhub/v1/alerts/{kind}/{sensor_id}` (for Node-RED and the like).
    pub mqtt: bool,
    /// A failed delivery is retried after 2, 4, 8, ... seconds, at most this long apart.
    pub max_backoff_s: std::num::NonZeroU64,
    /// A receiver must answer within this long.
    pub timeout_s: std::num::NonZeroU64,
}

impl Default for NotifySettings {
    fn default() -> Self {
        Self {
            webhooks: Vec::new(),
            mqtt: true,
            max_backoff_s: crate::settings::nz(600),
            timeout_s: crate::settings::nz(10),
        }
    }
}

/// A rule ready to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRule {
    pub id: String,
    pub kind: String,
    pub metric: String,
    pub condition: Condition,
    pub threshold: f64,
    pub clear: f64,
    pub hold_s: u64,
    pub severity: Severity,
}

impl AlertRule {
    /// True when `value` meets the raising condition (never for lamp and silence
    /// rules, which need the sun or the clock: see [`AlertRule::lamp_fault`]).
    pub fn breached(&self, value: f64) -> bool {
        match self.condition {
            Condition::Above => value >= self.threshold,
            Condition::Below => value <= self.threshold,
            Condition::LampFault | Condition::Silent => false,
        }
    }

    /// True when `value` is back on the safe side of the clear level.
    pub fn cleared(&self, value: f64) -> bool {
        match self.condition {
            Condition::Above => value < self.clear,
            Condition::Below => value > self.clear,
            Condition::LampFault | Condition::Silent => false,
        }
    }

    /// A lamp rule's verdict on `power` at `daylight`: `Some(true)` a fault,
    /// `Some(false)` as it should be, `None` in twilight (either is right).
    pub fn lamp_fault(&self, power: f64, daylight: crate::sun::Daylight) -> Option<bool> {
        use crate::sun::Daylight;
        let lit = power > self.threshold;
        match daylight {
            Daylight::Twilight => None,
            Daylight::Day => Some(lit),
            Daylight::Night => Some(!lit),
        }
    }
}

/// The rules in force: the map rules' (when enabled) and the configured ones,
/// checked against the catalogue.
pub fn rules(settings: &AlertSettings, catalog: &Catalog) -> Result<Vec<AlertRule>, String> {
    let mut out = Vec::new();
    if settings.from_map_rules {
        for k in catalog.iter() {
            match &k.def.map {
                Some(MapRule::Above {
                    metric,
                    warn,
                    alarm,
                }) => out.push(AlertRule {
                    id: format!("{}_{}_alarm", k.name, metric),
                    kind: k.name.to_string(),
                    metric: metric.clone(),
                    condition: Condition::Above,
                    threshold: *alarm,
                    clear: *warn,
                    hold_s: 0,
                    severity: Severity::Critical,
                }),
                // Two cadences of readings agreeing, so one odd reading does not raise.
                Some(MapRule::Lamp { metric, lit_above }) => out.push(AlertRule {
                    id: format!("{}_lamp_fault", k.name),
                    kind: k.name.to_string(),
                    metric: metric.clone(),
                    condition: Condition::LampFault,
                    threshold: *lit_above,
                    clear: *lit_above,
                    hold_s: 2 * u64::from(k.def.cadence_s),
                    severity: Severity::Warning,
                }),
                _ => {}
            }
        }
    }
    if settings.silence_cadences > 0 {
        for k in catalog.iter() {
            let limit = f64::from(settings.silence_cadences) * f64::from(k.def.cadence_s.max(1));
            out.push(AlertRule {
                id: format!("{}_silent", k.name),
                kind: k.name.to_string(),
                metric: SILENCE_METRIC.into(),
                condition: Condition::Silent,
                threshold: limit,
                clear: limit,
                hold_s: 0,
                severity: Severity::Warning,
            });
        }
    }
    for r in &settings.rules {
        let at = format!("alerts.rules {:?}", r.id);
        crate::Name::parse(&r.id).map_err(|e| format!("{at}: id: {e}"))?;
        let kind = catalog
            .get(&r.kind)
            .ok_or_else(|| format!("{at}: kind {:?} is not configured", r.kind))?;
        if kind.metric(&r.metric).is_none() {
            return Err(format!(
                "{at}: {:?} is not a metric of {}",
                r.metric, r.kind
            ));
        }
        if !r.threshold.is_finite() {
            return Err(format!("{at}: threshold must be a number"));
        }
        let clear = r.clear.unwrap_or(r.threshold);
        let safe = match r.condition {
            Condition::Above => clear <= r.threshold,
            Condition::Below => clear >= r.threshold,
            Condition::LampFault | Condition::Silent => false,
        };
        if !clear.is_finite() || !safe {
            return Err(format!(
                "{at}: clear {clear} must be on the safe side of the threshold {}",
                r.threshold
            ));
        }
        if out.iter().any(|o: &AlertRule| o.id == r.id) {
            return Err(format!("{at}: two rules have this id"));
        }
        out.push(AlertRule {
            id: r.id.clone(),
            kind: r.kind.clone(),
            metric: r.metric.clone(),
            condition: r.condition,
            threshold: r.threshold,
            clear,
            hold_s: r.hold_s,
            severity: r.severity,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(condition: Condition, threshold: f64, clear: Option<f64>) -> AlertRuleDef {
        AlertRuleDef {
            id: "low_battery".into(),
            kind: "waste_bin".into(),
            metric: "battery".into(),
            condition,
            threshold,
            clear,
            hold_s: 0,
            severity: Severity::Warning,
        }
    }

    #[test]
    fn webhook_filters() {
        let w = WebhookDef {
            url: "http://x/hook".to_owned().try_into().unwrap(),
            kinds: vec!["waste_bin".into()],
            severities: vec![Severity::Critical],
            secret: None,
            secret_file: None,
        };
        assert!(w.wants("waste_bin", Severity::Critical));
        assert!(!w.wants("air_quality", Severity::Critical));
        assert!(!w.wants("waste_bin", Severity::Warning));
        let all = WebhookDef {
            kinds: vec![],
            severities: vec![],
            ..w
        };
        assert!(all.wants("air_quality", Severity::Info));
    }

    #[test]
    fn map_rules_and_configured_rules_with_hysteresis() {
        let catalog = crate::Settings::builtin().unwrap().catalog().unwrap();
        let mut s = AlertSettings::default();
        s.rules.push(rule(Condition::Below, 20.0, Some(30.0)));
        let rules = rules(&s, &catalog).unwrap();
        let bin = rules
            .iter()
            .find(|r| r.id == "waste_bin_fill_level_alarm")
            .unwrap();
        assert!(bin.breached(bin.threshold) && !bin.cleared(bin.threshold));
        assert!(!bin.cleared(bin.clear) && bin.cleared(bin.clear - 0.1));
        let lamp = rules
            .iter()
            .find(|r| r.id == "streetlight_lamp_fault")
            .unwrap();
        use crate::sun::Daylight;
        assert_eq!(lamp.lamp_fault(90.0, Daylight::Day), Some(true));
        assert_eq!(lamp.lamp_fault(0.0, Daylight::Night), Some(true));
        assert_eq!(lamp.lamp_fault(90.0, Daylight::Night), Some(false));
        assert_eq!(lamp.lamp_fault(0.0, Daylight::Twilight), None);
        assert_eq!(lamp.hold_s, 1200);
        let silent = rules.iter().find(|r| r.id == "waste_bin_silent").unwrap();
        assert_eq!(silent.threshold, 3.0 * 1200.0);
        let low = rules.iter().find(|r| r.id == "low_battery").unwrap();
        assert!(low.breached(20.0) && !low.breached(20.5));
        assert!(!low.cleared(25.0) && low.cleared(30.5));
        for bad in [
            rule(Condition::Below, 20.0, Some(10.0)),
            rule(Condition::Above, 20.0, Some(30.0)),
            AlertRuleDef {
                metric: "nope".into(),
                ..rule(Condition::Below, 1.0, None)
            },
            AlertRuleDef {
                kind: "nope".into(),
                ..rule(Condition::Below, 1.0, None)
            },
            AlertRuleDef {
                id: "Bad Id".into(),
                ..rule(Condition::Below, 1.0, None)
            },
        ] {
            let s = AlertSettings {
                from_map_rules: false,
                silence_cadences: 0,
                rules: vec![bad.clone()],
                ..AlertSettings::default()
            };
            assert!(super::rules(&s, &catalog).is_err(), "{bad:?}");
        }
    }
}
