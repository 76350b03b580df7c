//! A sensor's entry in the public sensor register: what it is for, who answers for
//! it, and whether it can capture personal data and on what legal basis. European
//! cities publish this for every sensor in public space (Amsterdam's register is
//! mandatory; GDPR art. 13-14 transparency asks it where personal data may be caught).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The register's fields; each is optional so an import may set some and keep the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Register {
    /// What the sensor is for, in the city's language.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// The purpose in English.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose_en: Option<String>,
    /// The office or contractor that answers for the sensor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub responsible: Option<String>,
    /// How to reach them: an e-mail address, a phone number or a web page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact: Option<String>,
    /// Whether the sensor can capture personal data (a camera, a Wi-Fi or Bluetooth counter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub personal_data: Option<bool>,
    /// The GDPR legal basis (art. 6) under which it does; required when it can.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legal_basis: Option<String>,
    /// False for a sensor indoors or on private ground; the register's duty is for public space.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_space: Option<bool>,
}

/// The attribute names that belong to the register, not to the kind's attributes.
pub const FIELDS: &[&str] = &[
    "purpose",
    "purpose_en",
    "responsible",
    "contact",
    "personal_data",
    "legal_basis",
    "public_space",
];

const MAX_TEXT: usize = 500;

impl Register {
    /// Moves the register's fields out of a sensor's attributes (an import row, an API
    /// body) and checks them. CSV cells arrive as text, so `"true"`/`"false"` are
    /// taken as booleans too.
    pub fn take_from(props: &mut Map<String, Value>) -> Result<Self, String> {
        let mut r = Register::default();
        for field in FIELDS {
            let Some(v) = props.remove(*field) else {
                continue;
            };
            match *field {
                "personal_data" | "public_space" => {
                    let b = match v {
                        Value::Null => None,
                        Value::Bool(b) => Some(b),
                        Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
                        Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
                        other => return Err(format!("{field} must be true or false, got {other}")),
                    };
                    if *field == "personal_data" {
                        r.personal_data = b;
                    } else {
                        r.public_space = b;
                    }
                }
                _ => {
                    let s = match v {
                        Value::Null => None,
                        Value::String(s) => Some(s),
                        other => return Err(format!("{field} must be text, got {other}")),
                    };
                    if let Some(s) = &s {
                        if s.chars().count() > MAX_TEXT || s.chars().any(|c| c.is_control()) {
                            return Err(format!(
                                "{field} must be at most {MAX_TEXT} printable characters"
                            ));
                        }
                    }
                    let s = s.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
                    match *field {
                        "purpose" => r.purpose = s,
                        "purpose_en" => r.purpose_en = s,
                        "responsible" => r.responsible = s,
                        "contact" => r.contact = s,
                        _ => r.legal_basis = s,
                    }
                }
            }
        }
        if r.personal_data == Some(true) && r.legal_basis.is_none() {
            return Err(
                "legal_basis is required for a sensor that can capture personal data".into(),
            );
        }
        Ok(r)
    }

    /// Whether the register applies: sensors are in public space unless said otherwise.
    pub fn in_public_space(&self) -> bool {
        self.public_space.unwrap_or(true)
    }

    /// What a sensor in public space lacks for its register entry.
    pub fn gaps(&self) -> Vec<&'static str> {
        if !self.in_public_space() {
            return Vec::new();
        }
        let mut g = Vec::new();
        if self.purpose.is_none() {
            g.push("purpose");
        }
        if self.responsible.is_none() {
            g.push("responsible");
        }
        g
    }

    /// The stored form merged with `newer`'s fields that are set (an import keeps the rest).
    pub fn merged(&self, newer: &Register) -> Register {
        Register {
            purpose: newer.purpose.clone().or_else(|| self.purpose.clone()),
            purpose_en: newer.purpose_en.clone().or_else(|| self.purpose_en.clone()),
            responsible: newer
                .responsible
                .clone()
                .or_else(|| self.responsible.clone()),
            contact: newer.contact.clone().or_else(|| self.contact.clone()),
            personal_data: newer.personal_data.or(self.personal_data),
            legal_basis: newer
                .legal_basis
                .clone()
                .or_else(|| self.legal_basis.clone()),
            public_space: newer.public_space.or(self.public_space),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn props(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn register_fields_leave_the_attributes() {
        let mut p = props(
            json!({"depth_mm": 1200, "purpose": " Fill level for collection rounds ",
            "responsible": "Settore Ambiente", "personal_data": "false", "public_space": true}),
        );
        let r = Register::take_from(&mut p).unwrap();
        assert_eq!(p, props(json!({"depth_mm": 1200})));
        assert_eq!(
            r.purpose.as_deref(),
            Some("Fill level for collection rounds")
        );
        assert_eq!(r.personal_data, Some(false));
        assert!(r.gaps().is_empty());
    }

    #[test]
    fn personal_data_needs_a_legal_basis() {
        let mut p = props(json!({"personal_data": true}));
        let e = Register::take_from(&mut p).unwrap_err();
        assert!(e.contains("legal_basis"), "{e}");
        let mut p = props(json!({"personal_data": true, "legal_basis": "GDPR art. 6(1)(e)"}));
        assert!(Register::take_from(&mut p).is_ok());
    }

    #[test]
    fn bad_values_are_named() {
        for (v, want) in [
            (json!({"purpose": 3}), "purpose must be text"),
            (
                json!({"public_space": "maybe"}),
                "public_space must be true or false",
            ),
            (json!({"contact": "a\u{0}b"}), "contact must be at most"),
        ] {
            let e = Register::take_from(&mut props(v)).unwrap_err();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn gaps_only_in_public_space() {
        let r = Register::default();
        assert_eq!(r.gaps(), vec!["purpose", "responsible"]);
        let r = Register {
            public_space: Some(false),
            ..Default::default()
        };
        assert!(r.gaps().is_empty());
    }

    #[test]
    fn an_import_keeps_what_it_does_not_set() {
        let old = Register {
            purpose: Some("a".into()),
            contact: Some("c".into()),
            ..Default::default()
        };
        let new = Register {
            purpose: Some("b".into()),
            ..Default::default()
        };
        let m = old.merged(&new);
        assert_eq!(m.purpose.as_deref(), Some("b"));
        assert_eq!(m.contact.as_deref(), Some("c"));
    }
}
