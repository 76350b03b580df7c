//! NGSI-LD (ETSI GS CIM 009): how a kind maps onto a Smart Data Model, the query
//! language (`q`) and geo-queries, parsed from a request and evaluated on an entity.
//! The HTTP side (entities, temporal values, subscriptions) is `cityhub_api::ngsi_ld`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// The NGSI-LD core @context the answers name (v1.7 of the core context).
pub const CORE_CONTEXT: &str = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.7.jsonld";
/// The Device model's @context, for the Device entity every mapped sensor also is.
pub const DEVICE_CONTEXT: &str =
    "https://raw.githubusercontent.com/smart-data-models/dataModel.Device/master/context.jsonld";

/// A kind as a Smart Data Model (`[kinds.<name>.ngsi_ld]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelDef {
    /// The model's entity type, e.g. `WasteContainer`.
    #[serde(rename = "type")]
    pub entity_type: String,
    /// The model's JSON-LD @context, which defines the type and attribute terms.
    pub context: String,
    /// The entity's attributes by the model's names, each from a metric, a registry
    /// attribute, a threshold on a metric or a constant.
    pub attributes: BTreeMap<String, AttrDef>,
    /// `controlledProperty` of the sensor's Device entity, in the Device model's
    /// vocabulary (`fillingLevel`, `temperature`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub controlled_property: Vec<String>,
    /// Whether the model's `refDevice` is a list of ids (WasteContainer, Streetlight)
    /// rather than one (AirQualityObserved).
    #[serde(default)]
    pub ref_device_list: bool,
    /// Attributes of the Device entity beyond those every Device has (e.g. `batteryLevel`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub device_attributes: BTreeMap<String, AttrDef>,
}

/// Where one attribute's value comes from: exactly one of `metric`, `property`,
/// `value` and `time_of`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AttrDef {
    /// The latest value of this metric, times `scale`, with `observedAt` and `unitCode`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// Factor from the stored unit to the model's (0.01 turns percent into 0..1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<f64>,
    /// The UN/CEFACT common code of the model's unit (`C62` for a ratio, `CEL`, `GQ`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit_code: Option<String>,
    /// With `metric`: the text `states[1]` when the latest value is above this, else `states[0]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub above: Option<f64>,
    /// With `metric` and `above`: the texts at or below it, and above it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub states: Option<[String; 2]>,
    /// A registry attribute or public-register field of the sensor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub property: Option<String>,
    /// With `property`: the value when the sensor has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    /// With `property`: the registry's values as the model's (`organico = "organic"`);
    /// a value not listed is left out, so the entity stays valid against the model.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub values: BTreeMap<String, Value>,
    /// The same value for every sensor of the kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// The time of the latest reading of this metric, as a DateTime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_of: Option<String>,
}

/// An [`AttrDef`] once checked.
#[derive(Debug, Clone, PartialEq)]
pub enum Source<'a> {
    Metric {
        metric: &'a str,
        scale: f64,
        unit_code: Option<&'a str>,
    },
    State {
        metric: &'a str,
        above: f64,
        states: &'a [String; 2],
    },
    Property {
        name: &'a str,
        default: Option<&'a Value>,
        values: &'a BTreeMap<String, Value>,
    },
    Constant(&'a Value),
    TimeOf(&'a str),
}

impl AttrDef {
    pub fn source(&self) -> Result<Source<'_>, String> {
        let set = [
            self.metric.is_some(),
            self.property.is_some(),
            self.value.is_some(),
            self.time_of.is_some(),
        ];
        if set.iter().filter(|b| **b).count() != 1 {
            return Err("needs exactly one of metric, property, value, time_of".into());
        }
        if let Some(m) = &self.metric {
            return match (self.above, &self.states) {
                (Some(above), Some(states)) if self.scale.is_none() => Ok(Source::State {
                    metric: m,
                    above,
                    states,
                }),
                (None, None) => Ok(Source::Metric {
                    metric: m,
                    scale: self.scale.unwrap_or(1.0),
                    unit_code: self.unit_code.as_deref(),
                }),
                _ => Err("above and states go together, without scale".into()),
            };
        }
        if self.above.is_some() || self.states.is_some() || self.scale.is_some() {
            return Err("scale, above and states need a metric".into());
        }
        if let Some(p) = &self.property {
            return Ok(Source::Property {
                name: p,
                default: self.default.as_ref(),
                values: &self.values,
            });
        }
        if self.default.is_some() || !self.values.is_empty() {
            return Err("default and values need a property".into());
        }
        match (&self.value, &self.time_of) {
            (Some(v), _) => Ok(Source::Constant(v)),
            (_, Some(m)) => Ok(Source::TimeOf(m)),
            _ => unreachable!("one source is set"),
        }
    }
}

/// Attribute names the hub writes itself on every entity.
pub const RESERVED: &[&str] = &["id", "type", "location", "name", "refDevice", "@context"];

impl ModelDef {
    /// Checks the mapping against the kind's metrics.
    pub fn check(&self, kind: &crate::kinds::KindDef) -> Result<(), String> {
        if !is_term(&self.entity_type) {
            return Err(format!(
                "type {:?} is not an NGSI-LD term",
                self.entity_type
            ));
        }
        if url::Url::parse(&self.context).is_err() {
            return Err(format!("context {:?} is not a URL", self.context));
        }
        let all = self.attributes.iter().map(|a| (a, "attributes")).chain(
            self.device_attributes
                .iter()
                .map(|a| (a, "device_attributes")),
        );
        for ((name, def), at) in all {
            let fail = |r: String| format!("{at}.{name}: {r}");
            if !is_term(name) || RESERVED.contains(&name.as_str()) {
                return Err(fail("not a name the hub can give an attribute".into()));
            }
            let metric = match def.source().map_err(fail)? {
                Source::Metric { metric, scale, .. } if !scale.is_finite() || scale == 0.0 => {
                    return Err(fail(format!("scale {scale} of {metric}")))
                }
                Source::Metric { metric, .. } | Source::State { metric, .. } => Some(metric),
                Source::TimeOf(m) => Some(m),
                _ => None,
            };
            if let Some(m) = metric.filter(|m| !kind.metrics.contains_key(*m)) {
                return Err(fail(format!("{m:?} is not a metric of the kind")));
            }
        }
        Ok(())
    }
}

/// A JSON-LD term as NGSI-LD names types and attributes.
fn is_term(s: &str) -> bool {
    let mut c = s.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic())
        && s.len() <= 128
        && c.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Why a `q` or geo-query could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct QueryError(pub String);

/// A parsed `q` (ETSI GS CIM 009, 4.9): terms joined by `;` (and) and `|` (or),
/// `;` binding tighter, parentheses grouping.
#[derive(Debug, Clone)]
pub enum Q {
    And(Vec<Q>),
    Or(Vec<Q>),
    Term(Term),
}

/// One comparison, or an attribute's presence (`attr`) or absence (`!attr`).
#[derive(Debug, Clone)]
pub struct Term {
    /// The attribute, then an optional sub-attribute (`fillingLevel.observedAt`).
    pub path: Vec<String>,
    pub op: Op,
}

#[derive(Debug, Clone)]
pub enum Op {
    Exists,
    Absent,
    Eq(Operand),
    Ne(Operand),
    Gt(Literal),
    Ge(Literal),
    Lt(Literal),
    Le(Literal),
    Matches(regex::Regex),
    NotMatches(regex::Regex),
}

/// The right side of `==` and `!=`: a value, a list of values or a range.
#[derive(Debug, Clone)]
pub enum Operand {
    One(Literal),
    List(Vec<Literal>),
    Range(Literal, Literal),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Number(f64),
    Text(String),
    Bool(bool),
}

/// A regular expression in `q` or `idPattern` may not compile to more than this.
const REGEX_SIZE: usize = 1 << 16;

pub fn regex(p: &str) -> Result<regex::Regex, QueryError> {
    regex::RegexBuilder::new(p)
        .size_limit(REGEX_SIZE)
        .build()
        .map_err(|e| QueryError(format!("pattern {p:?}: {e}")))
}

impl Q {
    pub fn parse(s: &str) -> Result<Self, QueryError> {
        if s.len() > 4096 {
            return Err(QueryError("q is longer than 4096 characters".into()));
        }
        let mut p = Parser { s, i: 0, depth: 0 };
        let q = p.or()?;
        if p.i != s.len() {
            return Err(QueryError(format!(
                "q: unexpected {:?} at character {}",
                &s[p.i..],
                p.i + 1
            )));
        }
        Ok(q)
    }

    /// The attributes it reads.
    pub fn attributes(&self) -> Vec<&str> {
        match self {
            Q::And(v) | Q::Or(v) => v.iter().flat_map(|q| q.attributes()).collect(),
            Q::Term(t) => vec![t.path[0].as_str()],
        }
    }

    /// Whether an entity holds; `get` gives the value at a path (the attribute's
    /// value, or its sub-attribute's), `None` when absent.
    pub fn matches(&self, get: &dyn Fn(&[String]) -> Option<Value>) -> bool {
        match self {
            Q::And(v) => v.iter().all(|q| q.matches(get)),
            Q::Or(v) => v.iter().any(|q| q.matches(get)),
            Q::Term(t) => t.matches(get(&t.path)),
        }
    }
}

impl Term {
    fn matches(&self, v: Option<Value>) -> bool {
        let Some(v) = v else {
            return matches!(self.op, Op::Absent);
        };
        // A list attribute matches when one of its items does.
        if let Value::Array(items) = &v {
            return match &self.op {
                Op::Ne(_) | Op::NotMatches(_) => items.iter().all(|i| self.one(i)),
                _ => items.iter().any(|i| self.one(i)),
            };
        }
        self.one(&v)
    }

    fn one(&self, v: &Value) -> bool {
        use std::cmp::Ordering::*;
        let cmp = |l: &Literal| compare(v, l);
        match &self.op {
            Op::Exists => true,
            Op::Absent => false,
            Op::Eq(o) => in_operand(v, o),
            Op::Ne(o) => !in_operand(v, o),
            Op::Gt(l) => cmp(l) == Some(Greater),
            Op::Ge(l) => matches!(cmp(l), Some(Greater | Equal)),
            Op::Lt(l) => cmp(l) == Some(Less),
            Op::Le(l) => matches!(cmp(l), Some(Less | Equal)),
            Op::Matches(r) => v.as_str().is_some_and(|s| r.is_match(s)),
            Op::NotMatches(r) => !v.as_str().is_some_and(|s| r.is_match(s)),
        }
    }
}

fn in_operand(v: &Value, o: &Operand) -> bool {
    use std::cmp::Ordering::*;
    match o {
        Operand::One(l) => compare(v, l) == Some(Equal),
        Operand::List(ls) => ls.iter().any(|l| compare(v, l) == Some(Equal)),
        Operand::Range(a, b) => {
            matches!(compare(v, a), Some(Greater | Equal))
                && matches!(compare(v, b), Some(Less | Equal))
        }
    }
}

/// Compares a value with a literal of the same type; DateTimes (text) compare as instants.
fn compare(v: &Value, l: &Literal) -> Option<std::cmp::Ordering> {
    match (v, l) {
        (Value::Number(n), Literal::Number(x)) => n.as_f64()?.partial_cmp(x),
        (Value::Bool(b), Literal::Bool(x)) => Some(b.cmp(x)),
        (Value::String(s), Literal::Text(x)) => {
            match (
                chrono::DateTime::parse_from_rfc3339(s),
                chrono::DateTime::parse_from_rfc3339(x),
            ) {
                (Ok(a), Ok(b)) => Some(a.cmp(&b)),
                _ => Some(s.as_str().cmp(x.as_str())),
            }
        }
        _ => None,
    }
}

struct Parser<'a> {
    s: &'a str,
    i: usize,
    depth: usize,
}

impl Parser<'_> {
    fn rest(&self) -> &str {
        &self.s[self.i..]
    }

    fn fail<T>(&self, what: &str) -> Result<T, QueryError> {
        Err(QueryError(format!(
            "q: expected {what} at character {} ({:?})",
            self.i + 1,
            self.rest().chars().take(20).collect::<String>()
        )))
    }

    fn eat(&mut self, t: &str) -> bool {
        if self.rest().starts_with(t) {
            self.i += t.len();
            true
        } else {
            false
        }
    }

    fn or(&mut self) -> Result<Q, QueryError> {
        let mut v = vec![self.and()?];
        while self.eat("|") {
            v.push(self.and()?);
        }
        Ok(if v.len() == 1 { v.remove(0) } else { Q::Or(v) })
    }

    fn and(&mut self) -> Result<Q, QueryError> {
        let mut v = vec![self.unit()?];
        while self.eat(";") {
            v.push(self.unit()?);
        }
        Ok(if v.len() == 1 { v.remove(0) } else { Q::And(v) })
    }

    fn unit(&mut self) -> Result<Q, QueryError> {
        if self.eat("(") {
            self.depth += 1;
            if self.depth > 16 {
                return Err(QueryError("q: parentheses nest deeper than 16".into()));
            }
            let q = self.or()?;
            if !self.eat(")") {
                return self.fail("')'");
            }
            self.depth -= 1;
            return Ok(q);
        }
        let absent = self.eat("!");
        let path = self.path()?;
        if absent {
            return Ok(Q::Term(Term {
                path,
                op: Op::Absent,
            }));
        }
        let op = if self.eat("==") {
            Op::Eq(self.operand()?)
        } else if self.eat("!=") {
            Op::Ne(self.operand()?)
        } else if self.eat(">=") {
            Op::Ge(self.literal()?)
        } else if self.eat(">") {
            Op::Gt(self.literal()?)
        } else if self.eat("<=") {
            Op::Le(self.literal()?)
        } else if self.eat("<") {
            Op::Lt(self.literal()?)
        } else if self.eat("~=") {
            Op::Matches(self.pattern()?)
        } else if self.eat("!~=") {
            Op::NotMatches(self.pattern()?)
        } else {
            Op::Exists
        };
        Ok(Q::Term(Term { path, op }))
    }

    fn path(&mut self) -> Result<Vec<String>, QueryError> {
        let mut path = Vec::new();
        loop {
            let n = self
                .rest()
                .find(|c: char| {
                    !(c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == '/' || c == '#')
                })
                .unwrap_or(self.rest().len());
            if n == 0 {
                return self.fail("an attribute name");
            }
            path.push(self.rest()[..n].to_owned());
            self.i += n;
            if path.len() == 2 || !self.eat(".") {
                return Ok(path);
            }
        }
    }

    fn pattern(&mut self) -> Result<regex::Regex, QueryError> {
        // A pattern runs to the next `;`, `|` or `)` outside brackets.
        let end = self
            .rest()
            .find([';', '|', ')'])
            .unwrap_or(self.rest().len());
        let p = self.rest()[..end].to_owned();
        self.i += end;
        regex(&p)
    }

    fn operand(&mut self) -> Result<Operand, QueryError> {
        let first = self.literal()?;
        if self.eat("..") {
            return Ok(Operand::Range(first, self.literal()?));
        }
        if self.rest().starts_with(',') {
            let mut v = vec![first];
            while self.eat(",") {
                v.push(self.literal()?);
            }
            return Ok(Operand::List(v));
        }
        Ok(Operand::One(first))
    }

    fn literal(&mut self) -> Result<Literal, QueryError> {
        if self.eat("\"") {
            let Some(end) = self.rest().find('"') else {
                return self.fail("a closing '\"'");
            };
            let t = self.rest()[..end].to_owned();
            self.i += end + 1;
            return Ok(Literal::Text(t));
        }
        let end = self
            .rest()
            .find([';', '|', ')', ','])
            .unwrap_or(self.rest().len());
        let mut raw = &self.rest()[..end];
        // `a..b` ends the first value at `..` (numbers and DateTimes hold no `..`).
        if let Some(r) = raw.find("..") {
            raw = &raw[..r];
        }
        if raw.is_empty() {
            return self.fail("a value");
        }
        let lit = match raw {
            "true" => Literal::Bool(true),
            "false" => Literal::Bool(false),
            _ => match raw.parse::<f64>() {
                Ok(x) if x.is_finite() => Literal::Number(x),
                // A DateTime, a date or a URI, unquoted as the grammar allows.
                _ => Literal::Text(raw.to_owned()),
            },
        };
        self.i += raw.len();
        Ok(lit)
    }
}

/// A geo-query: `georel`, `geometry` and `coordinates` (ETSI GS CIM 009, 4.10).
#[derive(Debug, Clone, PartialEq)]
pub struct GeoQuery {
    pub rel: GeoRel,
    pub geometry: geo::Geometry<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GeoRel {
    /// Within `max` metres (`near;maxDistance==m`) or beyond `min` (`near;minDistance==m`).
    Near {
        min: Option<f64>,
        max: Option<f64>,
    },
    Within,
    Contains,
    Intersects,
    Equals,
    Disjoint,
    Overlaps,
}

impl GeoQuery {
    pub fn parse(georel: &str, geometry: &str, coordinates: &str) -> Result<Self, QueryError> {
        let bad = |m: String| QueryError(m);
        let mut parts = georel.split(';');
        let rel = match parts.next().unwrap_or_default() {
            "near" => {
                let (mut min, mut max) = (None, None);
                for p in parts.by_ref() {
                    let (k, v) = p
                        .split_once("==")
                        .ok_or_else(|| bad(format!("georel: {p:?} is not name==metres")))?;
                    let m: f64 = v
                        .parse()
                        .ok()
                        .filter(|m: &f64| m.is_finite() && *m >= 0.0)
                        .ok_or_else(|| bad(format!("georel: {k} must be metres, got {v:?}")))?;
                    match k {
                        "maxDistance" => max = Some(m),
                        "minDistance" => min = Some(m),
                        _ => return Err(bad(format!("georel: near takes maxDistance or minDistance, not {k:?}"))),
                    }
                }
                if min.is_none() && max.is_none() {
                    return Err(bad("georel: near needs maxDistance==m or minDistance==m".into()));
                }
                GeoRel::Near { min, max }
            }
            "within" => GeoRel::Within,
            "contains" => GeoRel::Contains,
            "intersects" => GeoRel::Intersects,
            "equals" => GeoRel::Equals,
            "disjoint" => GeoRel::Disjoint,
            "overlaps" => GeoRel::Overlaps,
            other => {
                return Err(bad(format!(
                    "georel {other:?} is not one of near, within, contains, intersects, equals, disjoint, overlaps"
                )))
            }
        };
        if parts.next().is_some() {
            return Err(bad(format!("georel {georel:?}: only near takes distances")));
        }
        let coords: Value = serde_json::from_str(coordinates)
            .map_err(|_| bad(format!("coordinates {coordinates:?} is not a JSON array")))?;
        let g = serde_json::from_value::<geojson::Geometry>(serde_json::json!({
            "type": geometry, "coordinates": coords
        }))
        .map_err(|e| bad(format!("geometry {geometry} with these coordinates: {e}")))?;
        let geometry: geo::Geometry<f64> = g
            .try_into()
            .map_err(|e: geojson::Error| bad(format!("geometry: {e}")))?;
        if matches!(rel, GeoRel::Near { .. }) && !matches!(geometry, geo::Geometry::Point(_)) {
            return Err(bad("georel near needs a Point geometry".into()));
        }
        Ok(GeoQuery { rel, geometry })
    }

    /// Whether a sensor at `p` (lon, lat) holds.
    pub fn holds(&self, lon: f64, lat: f64) -> bool {
        use geo::{Contains, Distance, Haversine, Intersects};
        let p = geo::Point::new(lon, lat);
        let g = &self.geometry;
        match self.rel {
            GeoRel::Near { min, max } => {
                let geo::Geometry::Point(q) = g else {
                    return false;
                };
                let d = Haversine.distance(p, *q);
                min.is_none_or(|m| d >= m) && max.is_none_or(|m| d <= m)
            }
            // A point is within (or overlaps) an area when the area holds it.
            GeoRel::Within | GeoRel::Overlaps => g.contains(&p),
            GeoRel::Intersects => g.intersects(&p),
            GeoRel::Disjoint => !g.intersects(&p),
            GeoRel::Contains | GeoRel::Equals => {
                matches!(g, geo::Geometry::Point(q) if *q == p)
            }
        }
    }

    /// A box holding every point that can match, to narrow the database query.
    pub fn bounds(&self) -> Option<[f64; 4]> {
        use geo::BoundingRect;
        match self.rel {
            GeoRel::Disjoint | GeoRel::Near { max: None, .. } => None,
            GeoRel::Near { max: Some(m), .. } => {
                let geo::Geometry::Point(q) = &self.geometry else {
                    return None;
                };
                let dlat = m / 111_000.0 + 1e-6;
                let dlon = dlat / q.y().to_radians().cos().abs().max(1e-6);
                if dlon >= 180.0 {
                    return None;
                }
                Some([
                    q.x() - dlon,
                    (q.y() - dlat).max(-90.0),
                    q.x() + dlon,
                    (q.y() + dlat).min(90.0),
                ])
                .filter(|b| b[0] >= -180.0 && b[2] <= 180.0)
            }
            _ => self
                .geometry
                .bounding_rect()
                .map(|r| [r.min().x, r.min().y, r.max().x, r.max().y]),
        }
    }
}

/// An ISO 8601 duration in whole hours or days (`PT1H`, `PT6H`, `P1D`, `P7D`, `P1W`),
/// as `aggrPeriodDuration` takes it; months and years have no fixed length.
pub fn period_seconds(d: &str) -> Result<i64, QueryError> {
    let bad = || {
        QueryError(format!(
            "aggrPeriodDuration {d:?}: give whole hours or days (PT1H, PT6H, P1D, P7D, P1W)"
        ))
    };
    let n = |s: &str| s.parse::<i64>().ok().filter(|n| (1..=3660).contains(n));
    let secs = if let Some(h) = d.strip_prefix("PT").and_then(|r| r.strip_suffix('H')) {
        n(h).ok_or_else(bad)? * 3600
    } else if let Some(x) = d.strip_prefix('P').and_then(|r| r.strip_suffix('D')) {
        n(x).ok_or_else(bad)? * 86_400
    } else if let Some(x) = d.strip_prefix('P').and_then(|r| r.strip_suffix('W')) {
        n(x).ok_or_else(bad)? * 7 * 86_400
    } else {
        return Err(bad());
    };
    Ok(secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn eval(q: &str, e: &Value) -> bool {
        let q = Q::parse(q).unwrap();
        q.matches(&|path: &[String]| {
            let a = e.get(&path[0])?;
            match path.get(1) {
                None => a.get("value").or(a.get("object")).cloned(),
                Some(s) => a.get(s).cloned(),
            }
        })
    }

    #[test]
    fn q_reads_and_evaluates_the_grammar() {
        let bin = json!({
            "fillingLevel": {"type": "Property", "value": 0.85, "observedAt": "2026-12-05T10:00:00Z"},
            "storedWasteKind": {"type": "Property", "value": "organic"},
            "refDevice": {"type": "Relationship", "object": ["urn:ngsi-ld:Device:b1"]},
        });
        for (q, want) in [
            ("fillingLevel>0.8", true),
            ("fillingLevel>0.8;storedWasteKind==\"organic\"", true),
            ("fillingLevel>0.9|storedWasteKind==\"organic\"", true),
            ("fillingLevel>0.9;storedWasteKind==\"organic\"", false),
            ("fillingLevel==0.5..0.9", true),
            ("fillingLevel==0.1,0.85", true),
            ("fillingLevel!=0.85", false),
            ("storedWasteKind~=^org", true),
            ("storedWasteKind!~=^org", false),
            ("(fillingLevel<0.5|fillingLevel>=0.85);!temperature", true),
            ("temperature", false),
            ("fillingLevel.observedAt>=2026-12-05T09:00:00Z", true),
            ("fillingLevel.observedAt<2026-12-05T09:00:00Z", false),
            ("refDevice==\"urn:ngsi-ld:Device:b1\"", true),
            ("refDevice==urn:ngsi-ld:Device:b2", false),
        ] {
            assert_eq!(eval(q, &bin), want, "{q}");
        }
        for bad in [
            "",
            "fillingLevel>",
            "(fillingLevel>1",
            "a==\"x",
            "a~=(",
            "a>1;",
        ] {
            assert!(Q::parse(bad).is_err(), "{bad}");
        }
        assert!(Q::parse(&"(".repeat(40)).is_err());
    }

    #[test]
    fn geo_queries_hold_for_points_near_or_inside() {
        let near = GeoQuery::parse("near;maxDistance==500", "Point", "[10.02,45.13]").unwrap();
        assert!(near.holds(10.022, 45.131));
        assert!(!near.holds(10.03, 45.13));
        let within = GeoQuery::parse(
            "within",
            "Polygon",
            "[[[10.0,45.1],[10.1,45.1],[10.1,45.2],[10.0,45.2],[10.0,45.1]]]",
        )
        .unwrap();
        assert!(within.holds(10.05, 45.15));
        assert!(!within.holds(10.15, 45.15));
        assert_eq!(within.bounds(), Some([10.0, 45.1, 10.1, 45.2]));
        let b = near.bounds().unwrap();
        assert!(b[0] < 10.02 && b[2] > 10.02 && b[1] < 45.13 && b[3] > 45.13);
        for (rel, g, c) in [
            ("near", "Point", "[10,45]"),
            ("near;maxDistance==-1", "Point", "[10,45]"),
            (
                "near;maxDistance==5",
                "Polygon",
                "[[[10,45],[11,45],[11,46],[10,45]]]",
            ),
            ("above", "Point", "[10,45]"),
            ("within", "Point", "10,45"),
            ("within", "Polygon", "[[10,45]]"),
        ] {
            assert!(GeoQuery::parse(rel, g, c).is_err(), "{rel} {g} {c}");
        }
    }

    #[test]
    fn periods_are_whole_hours_or_days() {
        assert_eq!(period_seconds("PT1H").unwrap(), 3600);
        assert_eq!(period_seconds("P1D").unwrap(), 86_400);
        assert_eq!(period_seconds("P1W").unwrap(), 604_800);
        for bad in ["P1M", "PT30M", "P0D", "1D", "PT1.5H"] {
            assert!(period_seconds(bad).is_err(), "{bad}");
        }
    }
}
