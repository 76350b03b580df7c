//! Setting values whose type says what is valid, so a bad one is refused when the
//! file is read, with the key's name, instead of by a check written elsewhere.

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::fmt;

/// An IP network in CIDR notation, or a bare address (a network of one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Network(pub ipnet::IpNet);

impl TryFrom<String> for Network {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse::<ipnet::IpNet>()
            .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map(Network)
            .map_err(|_| format!("{s:?} is not an IP address or CIDR network"))
    }
}
impl From<Network> for String {
    fn from(n: Network) -> String {
        n.0.to_string()
    }
}
impl JsonSchema for Network {
    fn schema_name() -> Cow<'static, str> {
        "Network".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "format": "ip-network" })
    }
}

/// An absolute `http://` or `https://` URL, kept as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HttpUrl(String);

impl HttpUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl TryFrom<String> for HttpUrl {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match url::Url::parse(&s) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(HttpUrl(s)),
            _ => Err(format!("{s:?} is not an http(s) URL")),
        }
    }
}
impl From<HttpUrl> for String {
    fn from(u: HttpUrl) -> String {
        u.0
    }
}
impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl JsonSchema for HttpUrl {
    fn schema_name() -> Cow<'static, str> {
        "HttpUrl".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "format": "uri" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_and_urls_are_checked_when_read() {
        assert_eq!(
            Network::try_from("10.0.0.0/8".to_owned())
                .unwrap()
                .0
                .to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            Network::try_from("::1".to_owned()).unwrap().0.to_string(),
            "::1/128"
        );
        assert!(Network::try_from("10.0.0.0/33".to_owned()).is_err());
        assert!(Network::try_from("proxy.local".to_owned()).is_err());
        assert!(HttpUrl::try_from("https://dati.example.it/".to_owned()).is_ok());
        for bad in ["ftp://x.it", "dati.example.it", "https://", "mailto:a@b.it"] {
            assert!(HttpUrl::try_from(bad.to_owned()).is_err(), "{bad}");
        }
    }
}
