//! The OGC SensorThings API's entities as SQL over the registry and the readings:
//! no copy of the data. Every `$filter` and `$orderby` becomes SQL here; what cannot
//! be said in SQL is refused ([`StaError::Unsupported`]), never applied afterwards.
//!
//! | entity | rows | `@iot.id` |
//! |---|---|---|
//! | Things, FeaturesOfInterest | `sensors` (the second only with a position) | the sensor's id |
//! | Locations, HistoricalLocations | `sensor_locations`: each position a sensor has had (its Location is the newest) | the row's id |
//! | Sensors | one per kind | the kind's lowest metric id |
//! | ObservedProperties | `metrics` | the metric's id |
//! | Datastreams | `latest` (a sensor and a metric it has readings of) | sensor id × 32768 + metric id |
//! | Observations | `observations` | `"<sensor>-<metric>-<µs since 1970>"` |

use crate::{Store, StoreError};
use chrono::{DateTime, Utc};
use cityhub_core::odata::{BinOp, Expr, OrderKey};
use serde_json::Value;
use tokio_postgres::types::ToSql;

/// Datastream ids pack the sensor and the metric: metric ids are `smallint`.
pub const DATASTREAM_SCALE: i64 = 32_768;

#[derive(Debug, thiserror::Error)]
pub enum StaError {
    /// The request asks for something this hub does not serve (400).
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<tokio_postgres::Error> for StaError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Store(e.into())
    }
}

fn no(msg: impl Into<String>) -> StaError {
    StaError::Unsupported(msg.into())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Set {
    Things,
    Locations,
    HistoricalLocations,
    Datastreams,
    Sensors,
    ObservedProperties,
    Observations,
    FeaturesOfInterest,
}

impl Set {
    pub const ALL: [Set; 8] = [
        Set::Things,
        Set::Locations,
        Set::HistoricalLocations,
        Set::Datastreams,
        Set::Sensors,
        Set::ObservedProperties,
        Set::Observations,
        Set::FeaturesOfInterest,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Set::Things => "Things",
            Set::Locations => "Locations",
            Set::HistoricalLocations => "HistoricalLocations",
            Set::Datastreams => "Datastreams",
            Set::Sensors => "Sensors",
            Set::ObservedProperties => "ObservedProperties",
            Set::Observations => "Observations",
            Set::FeaturesOfInterest => "FeaturesOfInterest",
        }
    }

    pub fn parse(s: &str) -> Option<Set> {
        Set::ALL.into_iter().find(|x| x.name() == s)
    }

    /// The navigation properties of an entity: (name, the set it leads to, whether
    /// it leads to one entity).
    pub fn navigation(self) -> &'static [(&'static str, Set, bool)] {
        match self {
            Set::Things => &[
                ("Locations", Set::Locations, false),
                ("HistoricalLocations", Set::HistoricalLocations, false),
                ("Datastreams", Set::Datastreams, false),
            ],
            Set::Locations => &[
                ("Things", Set::Things, false),
                ("HistoricalLocations", Set::HistoricalLocations, false),
            ],
            Set::HistoricalLocations => &[
                ("Thing", Set::Things, true),
                ("Locations", Set::Locations, false),
            ],
            Set::Datastreams => &[
                ("Thing", Set::Things, true),
                ("Sensor", Set::Sensors, true),
                ("ObservedProperty", Set::ObservedProperties, true),
                ("Observations", Set::Observations, false),
            ],
            Set::Sensors => &[("Datastreams", Set::Datastreams, false)],
            Set::ObservedProperties => &[("Datastreams", Set::Datastreams, false)],
            Set::Observations => &[
                ("Datastream", Set::Datastreams, true),
                ("FeatureOfInterest", Set::FeaturesOfInterest, true),
            ],
            Set::FeaturesOfInterest => &[("Observations", Set::Observations, false)],
        }
    }

    /// `(base table and alias, joins)`: the rows of the set, and what their
    /// properties and filters read.
    fn from(self) -> (&'static str, &'static str) {
        match self {
            Set::Things => ("sensors s", ""),
            Set::Locations | Set::HistoricalLocations => (
                "sensor_locations h",
                " JOIN sensors s ON s.id = h.sensor_id",
            ),
            Set::FeaturesOfInterest => ("sensors s", ""),
            Set::Sensors => (
                "(SELECT kind, min(id)::bigint AS id FROM metrics GROUP BY kind) k",
                "",
            ),
            Set::ObservedProperties => ("metrics m", ""),
            Set::Datastreams => (
                "latest l",
                " JOIN sensors s ON s.id = l.sensor_id JOIN metrics m ON m.id = l.metric_id",
            ),
            Set::Observations => (
                "observations o",
                " JOIN sensors s ON s.id = o.sensor_id JOIN metrics m ON m.id = o.metric_id",
            ),
        }
    }

    /// Joins only the page's rows need: what the JSON shows and no filter reads.
    fn outer_joins(self) -> &'static str {
        match self {
            // First and last reading: the index's two ends.
            Set::Datastreams => {
                " CROSS JOIN LATERAL (SELECT to_char(min(f.time) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')
                    || '/' || to_char(l.time AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS range
                  FROM observations f WHERE f.sensor_id = l.sensor_id AND f.metric_id = l.metric_id) r"
            }
            _ => "",
        }
    }

    fn alias(self) -> &'static str {
        match self {
            Set::Sensors => "k",
            Set::ObservedProperties => "m",
            Set::Datastreams => "l",
            Set::Observations => "o",
            Set::Locations | Set::HistoricalLocations => "h",
            _ => "s",
        }
    }

    /// Always true of the set's rows.
    fn always(self) -> Option<&'static str> {
        match self {
            Set::FeaturesOfInterest => Some("s.lon IS NOT NULL"),
            _ => None,
        }
    }

    /// The order that makes paging stable, after any `$orderby`.
    fn key_order(self) -> &'static str {
        match self {
            Set::Sensors => "k.id",
            Set::ObservedProperties => "m.id",
            Set::Datastreams => "l.sensor_id, l.metric_id",
            Set::Observations => "o.time, o.sensor_id, o.metric_id",
            Set::Locations | Set::HistoricalLocations => "h.id",
            _ => "s.id",
        }
    }

    /// The entity as JSON, without links (the API adds them), or for Observations the
    /// columns [`Set::decode`] makes it from. `$1` is the catalogue document (titles,
    /// descriptions, units) the API passes in.
    fn json(self) -> &'static str {
        match self {
            Set::Things => {
                "jsonb_build_object('@iot.id', s.id, 'name', coalesce(s.name, s.external_id),
                   'description', coalesce($1::jsonb #>> ARRAY['kinds', s.kind, 'title'], s.kind) || ' ' || s.external_id,
                   'properties', s.properties || jsonb_build_object('sensorId', s.external_id, 'kind', s.kind))"
            }
            Set::Locations => {
                "jsonb_build_object('@iot.id', h.id, 'name', coalesce(s.name, s.external_id),
                   'description', 'Position of ' || s.external_id, 'encodingType', 'application/geo+json',
                   'location', jsonb_build_object('type', 'Point', 'coordinates', jsonb_build_array(h.lon, h.lat)))"
            }
            Set::HistoricalLocations => {
                "jsonb_build_object('@iot.id', h.id,
                   'time', to_char(h.since AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'))"
            }
            Set::FeaturesOfInterest => {
                "jsonb_build_object('@iot.id', s.id, 'name', coalesce(s.name, s.external_id),
                   'description', 'Where ' || s.external_id || ' measures', 'encodingType', 'application/geo+json',
                   'feature', jsonb_build_object('type', 'Point', 'coordinates', jsonb_build_array(s.lon, s.lat)))"
            }
            Set::Sensors => {
                "jsonb_build_object('@iot.id', k.id, 'name', coalesce($1::jsonb #>> ARRAY['kinds', k.kind, 'title'], k.kind),
                   'description', coalesce($1::jsonb #>> ARRAY['kinds', k.kind, 'description'], k.kind),
                   'encodingType', 'text/html', 'metadata', $1::jsonb #>> ARRAY['kinds', k.kind, 'metadata'],
                   'properties', jsonb_build_object('kind', k.kind))"
            }
            Set::ObservedProperties => {
                "jsonb_build_object('@iot.id', m.id, 'name', m.name,
                   'definition', $1::jsonb #>> ARRAY['kinds', m.kind, 'metrics', m.name, 'definition'],
                   'description', coalesce($1::jsonb #>> ARRAY['kinds', m.kind, 'metrics', m.name, 'title'], m.name),
                   'properties', jsonb_build_object('kind', m.kind))"
            }
            Set::Datastreams => {
                "jsonb_strip_nulls(jsonb_build_object('@iot.id', l.sensor_id::bigint * 32768 + l.metric_id,
                   'name', coalesce(s.name, s.external_id) || ' ' || m.name,
                   'description', coalesce($1::jsonb #>> ARRAY['kinds', m.kind, 'metrics', m.name, 'title'], m.name) || ' of ' || s.external_id,
                   'unitOfMeasurement', $1::jsonb -> 'kinds' -> m.kind -> 'metrics' -> m.name -> 'unitOfMeasurement',
                   'observationType', 'http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Measurement',
                   'observedArea', CASE WHEN s.lon IS NOT NULL THEN jsonb_build_object('type', 'Point', 'coordinates', jsonb_build_array(s.lon, s.lat)) END,
                   'phenomenonTime', r.range, 'resultTime', r.range,
                   'properties', jsonb_build_object('sensorId', s.external_id, 'metric', m.name)))"
            }
            // The columns only: the JSON is made in Rust ([`observation`]), at a
            // third of what building it in SQL cost per row.
            Set::Observations => "o.sensor_id, o.metric_id, o.time, o.value",
        }
    }
}

/// One entity's id, as the URL gives it.
#[derive(Debug, Clone, PartialEq)]
pub enum EntityId {
    Int(i64),
    Observation {
        sensor: i32,
        metric: i16,
        time: DateTime<Utc>,
    },
}

impl EntityId {
    /// Reads the id in `Set(id)` for `set`.
    pub fn parse(set: Set, raw: &str) -> Result<Self, StaError> {
        let bad = || {
            no(format!(
                "{raw:?} is not an id of {}: {}",
                set.name(),
                if set == Set::Observations {
                    "they look like '12-3-1714550400000000' (quoted)"
                } else {
                    "they are integers"
                }
            ))
        };
        if set == Set::Observations {
            let s = raw
                .strip_prefix('\'')
                .and_then(|r| r.strip_suffix('\''))
                .unwrap_or(raw);
            let mut it = s.splitn(3, '-');
            let (Some(a), Some(b), Some(c)) = (it.next(), it.next(), it.next()) else {
                return Err(bad());
            };
            let micros: i64 = c.parse().map_err(|_| bad())?;
            return Ok(EntityId::Observation {
                sensor: a.parse().map_err(|_| bad())?,
                metric: b.parse().map_err(|_| bad())?,
                time: DateTime::from_timestamp_micros(micros).ok_or_else(bad)?,
            });
        }
        raw.parse().map(EntityId::Int).map_err(|_| bad())
    }

    /// The numeric id (every entity but an Observation has one).
    pub fn int(&self) -> Option<i64> {
        match self {
            EntityId::Int(i) => Some(*i),
            _ => None,
        }
    }
}

/// Which rows of a set a request reads.
#[derive(Debug, Clone, PartialEq)]
pub enum Scope {
    All,
    /// `Set(id)`.
    One(EntityId),
    /// `Parent(id)/Navigation`.
    Related {
        parent: Set,
        id: EntityId,
    },
}

/// The query options that shape SQL.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub filter: Option<Expr>,
    pub orderby: Vec<OrderKey>,
    pub top: i64,
    pub skip: i64,
    pub count: bool,
}

/// A page of entities as JSON objects (without links), whether more follow, and the
/// count of all that match when asked.
#[derive(Debug)]
pub struct Page {
    pub rows: Vec<serde_json::Map<String, Value>>,
    pub more: bool,
    pub count: Option<i64>,
}

/// SQL and its parameters, numbered from `$2` (`$1` is the catalogue document).
struct Sql {
    params: Vec<Box<dyn ToSql + Sync + Send>>,
}

impl Sql {
    /// `$1` (the catalogue document), then these parameters, in their numbering.
    fn with_catalog<'a>(&'a self, catalog: &'a Value) -> Vec<&'a (dyn ToSql + Sync)> {
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![catalog];
        params.extend(
            self.params
                .iter()
                .map(|p| p.as_ref() as &(dyn ToSql + Sync)),
        );
        params
    }

    fn param(&mut self, p: impl ToSql + Sync + Send + 'static, cast: &str) -> String {
        self.params.push(Box::new(p));
        format!("${}::{cast}", self.params.len() + 1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Ty {
    Num,
    Text,
    Bool,
    Time,
    /// A `point` (a position) or, from a literal, a `polygon`.
    Point,
    Polygon,
    /// A JSON property value: takes the type of what it is compared with.
    Json,
    Null,
    Duration,
}

/// An SQL expression and its type.
struct Typed(String, Ty);

/// How `set`'s rows of `scope` are chosen.
fn scope_sql(set: Set, scope: &Scope, sql: &mut Sql) -> Result<Option<String>, StaError> {
    let id_of = |set: Set, id: &EntityId, sql: &mut Sql| -> Result<String, StaError> {
        Ok(match (set, id) {
            (
                Set::Observations,
                EntityId::Observation {
                    sensor,
                    metric,
                    time,
                },
            ) => format!(
                "(o.sensor_id = {} AND o.metric_id = {} AND o.time = {})",
                sql.param(*sensor, "int"),
                sql.param(*metric, "smallint"),
                sql.param(*time, "timestamptz")
            ),
            (Set::Datastreams, EntityId::Int(i)) => datastream_is(*i, "l", sql),
            (Set::Sensors, EntityId::Int(i)) => format!("k.id = {}", sql.param(*i, "bigint")),
            (Set::ObservedProperties, EntityId::Int(i)) => {
                format!("m.id = {}", sql.param(*i, "bigint"))
            }
            (Set::Locations | Set::HistoricalLocations, EntityId::Int(i)) => {
                format!("h.id = {}", sql.param(*i, "bigint"))
            }
            (_, EntityId::Int(i)) => format!("s.id = {}", sql.param(*i, "bigint")),
            _ => return Err(no("an Observation id where another id belongs")),
        })
    };
    Ok(match scope {
        Scope::All => None,
        Scope::One(id) => Some(id_of(set, id, sql)?),
        Scope::Related { parent, id } => Some(related(set, *parent, id, sql)?),
    })
}

/// `l.sensor_id = … AND l.metric_id = …` for Datastream `id`: the index's columns.
fn datastream_is(id: i64, alias: &str, sql: &mut Sql) -> String {
    let (sensor, metric) = (
        id.div_euclid(DATASTREAM_SCALE),
        id.rem_euclid(DATASTREAM_SCALE),
    );
    format!(
        "({alias}.sensor_id = {} AND {alias}.metric_id = {})",
        sql.param(sensor, "bigint"),
        sql.param(metric, "bigint")
    )
}

/// The rows of `set` that `parent(id)` leads to.
fn related(set: Set, parent: Set, id: &EntityId, sql: &mut Sql) -> Result<String, StaError> {
    use Set::*;
    if let (
        Observations,
        EntityId::Observation {
            sensor,
            metric,
            time: _,
        },
    ) = (parent, id)
    {
        return match set {
            Datastreams => Ok(format!(
                "(l.sensor_id = {} AND l.metric_id = {})",
                sql.param(*sensor, "int"),
                sql.param(*metric, "smallint")
            )),
            FeaturesOfInterest => Ok(format!("s.id = {}", sql.param(*sensor, "int"))),
            _ => Err(no("no such navigation")),
        };
    }
    let i = id.int().ok_or_else(|| no("no such navigation"))?;
    related_to(set, parent, &sql.param(i, "bigint"))
}

/// The rows of `set` that `parent(pid)` leads to, `pid` an SQL expression of the
/// parent's numeric id (a parameter, or a column when many parents are expanded at once).
fn related_to(set: Set, parent: Set, pid: &str) -> Result<String, StaError> {
    use Set::*;
    Ok(match (parent, set) {
        (Things, Things) => format!("s.id = {pid}"),
        // A Thing's Locations: where it is now; its HistoricalLocations: every position.
        (Things, Locations) => format!(
            "h.id = (SELECT max(x.id) FROM sensor_locations x WHERE x.sensor_id = {pid})"
        ),
        (Things, HistoricalLocations) => format!("h.sensor_id = {pid}"),
        (Locations | HistoricalLocations, Things) => {
            format!("s.id = (SELECT x.sensor_id FROM sensor_locations x WHERE x.id = {pid})")
        }
        (Locations, HistoricalLocations) | (HistoricalLocations, Locations) => {
            format!("h.id = {pid}")
        }
        (Things, Datastreams) => format!("l.sensor_id = {pid}"),
        (Datastreams, Observations) => format!(
            "(o.sensor_id = ({pid} / {DATASTREAM_SCALE})::int AND o.metric_id = ({pid} % {DATASTREAM_SCALE})::smallint)"
        ),
        (Datastreams, Things) => format!("s.id = ({pid} / {DATASTREAM_SCALE})::int"),
        (Datastreams, ObservedProperties) => format!("m.id = ({pid} % {DATASTREAM_SCALE})::smallint"),
        (Datastreams, Sensors) => format!(
            "k.kind = (SELECT kind FROM sensors WHERE id = ({pid} / {DATASTREAM_SCALE})::int)"
        ),
        (Sensors, Datastreams) => format!("m.kind = (SELECT kind FROM metrics WHERE id = {pid})"),
        (ObservedProperties, Datastreams) => format!("l.metric_id = {pid}"),
        (FeaturesOfInterest, Observations) => format!("o.sensor_id = {pid}"),
        _ => return Err(no("no such navigation")),
    })
}

/// The SQL of a property path of `set`.
fn property(set: Set, path: &[String], sql: &mut Sql) -> Result<Typed, StaError> {
    let [first, rest @ ..] = path else {
        return Err(no("an empty property path"));
    };
    let t = |s: &str, ty: Ty| Ok(Typed(s.to_owned(), ty));
    let one = |ty: &str| -> Result<Typed, StaError> {
        Err(no(format!(
            "{} has no property {ty:?} that $filter or $orderby can use",
            set.name()
        )))
    };
    let name = first.as_str();
    let is_id = name == "id" || name == "@iot.id";
    if !rest.is_empty() {
        // Properties of a JSON object, and the entity a navigation leads to.
        if name == "properties" && set == Set::Things && rest.len() == 1 {
            // What the JSON adds to the registry's properties.
            match rest[0].as_str() {
                "kind" => return t("s.kind", Ty::Text),
                "sensorId" => return t("s.external_id", Ty::Text),
                _ => {}
            }
        }
        if name == "properties" && matches!(set, Set::Things) {
            let keys = sql.param(rest.to_vec(), "text[]");
            return t(&format!("(s.properties #> {keys})"), Ty::Json);
        }
        // A Thing has one Location (its sensor's position now): "any of its
        // Locations" is that one.
        if set == Set::Things && name == "Locations" && rest.len() == 1 && rest[0] == "location" {
            return t("point(s.lon, s.lat)", Ty::Point);
        }
        if name == "unitOfMeasurement" && set == Set::Datastreams && rest.len() == 1 {
            return match rest[0].as_str() {
                "name" | "symbol" | "definition" => Ok(Typed(
                    format!(
                        "($1::jsonb #>> ARRAY['kinds', m.kind, 'metrics', m.name, 'unitOfMeasurement', '{}'])",
                        rest[0]
                    ),
                    Ty::Text,
                )),
                _ => one(&path.join("/")),
            };
        }
        let target = set
            .navigation()
            .iter()
            .find(|(n, _, single)| *n == name && *single)
            .map(|(_, s, _)| *s);
        return match (set, target) {
            // What the set's own joins hold.
            (Set::Observations, Some(Set::Datastreams)) => {
                if matches!(rest[0].as_str(), "id" | "@iot.id") && rest.len() == 1 {
                    t("(o.sensor_id::bigint * 32768 + o.metric_id)", Ty::Num)
                } else {
                    property(Set::Datastreams, rest, sql)
                }
            }
            (Set::Observations, Some(Set::FeaturesOfInterest)) => {
                property(Set::FeaturesOfInterest, rest, sql)
            }
            (Set::Datastreams, Some(Set::Things)) => property(Set::Things, rest, sql),
            (Set::Datastreams, Some(Set::ObservedProperties)) => {
                property(Set::ObservedProperties, rest, sql)
            }
            (Set::Datastreams, Some(Set::Sensors)) => match rest[0].as_str() {
                "name" => t("m.kind", Ty::Text),
                "id" | "@iot.id" => t("(SELECT min(id) FROM metrics x WHERE x.kind = m.kind)", Ty::Num),
                _ => one(&path.join("/")),
            },
            (Set::HistoricalLocations, Some(Set::Things)) => property(Set::Things, rest, sql),
            _ => Err(no(format!(
                "{} of {} cannot be used in $filter or $orderby here (only the properties of the entity and of the single entities it leads to)",
                path.join("/"),
                set.name()
            ))),
        };
    }
    match set {
        Set::Things | Set::FeaturesOfInterest if is_id => t("s.id", Ty::Num),
        Set::Locations | Set::HistoricalLocations if is_id => t("h.id", Ty::Num),
        Set::Things | Set::Locations | Set::FeaturesOfInterest if name == "name" => {
            t("coalesce(s.name, s.external_id)", Ty::Text)
        }
        Set::Things if name == "description" => t(
            "(coalesce($1::jsonb #>> ARRAY['kinds', s.kind, 'title'], s.kind) || ' ' || s.external_id)",
            Ty::Text,
        ),
        Set::Locations if name == "location" => t("point(h.lon, h.lat)", Ty::Point),
        Set::FeaturesOfInterest if name == "feature" => t("point(s.lon, s.lat)", Ty::Point),
        Set::Locations | Set::FeaturesOfInterest if name == "encodingType" => {
            t("'application/geo+json'", Ty::Text)
        }
        Set::HistoricalLocations if name == "time" => t("h.since", Ty::Time),
        Set::Sensors if is_id => t("k.id", Ty::Num),
        Set::Sensors if name == "name" => t(
            "coalesce($1::jsonb #>> ARRAY['kinds', k.kind, 'title'], k.kind)",
            Ty::Text,
        ),
        Set::ObservedProperties if is_id => t("m.id", Ty::Num),
        Set::ObservedProperties if name == "name" => t("m.name", Ty::Text),
        Set::ObservedProperties if name == "definition" => t(
            "($1::jsonb #>> ARRAY['kinds', m.kind, 'metrics', m.name, 'definition'])",
            Ty::Text,
        ),
        Set::Datastreams if is_id => t("(l.sensor_id::bigint * 32768 + l.metric_id)", Ty::Num),
        Set::Datastreams if name == "name" => t(
            "(coalesce(s.name, s.external_id) || ' ' || m.name)",
            Ty::Text,
        ),
        Set::Datastreams if name == "observationType" => t(
            "'http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Measurement'",
            Ty::Text,
        ),
        Set::Datastreams if name == "observedArea" => t("point(s.lon, s.lat)", Ty::Point),
        Set::Observations if is_id => t(
            "(o.sensor_id || '-' || o.metric_id || '-' || (extract(epoch FROM o.time) * 1000000)::bigint)",
            Ty::Text,
        ),
        Set::Observations if name == "phenomenonTime" || name == "resultTime" => {
            t("o.time", Ty::Time)
        }
        Set::Observations if name == "result" => t("o.value", Ty::Num),
        // The Datastreams' own phenomenonTime is a range: STA compares ranges with
        // operators of its own that this hub does not serve.
        _ => one(name),
    }
}

fn compile(set: Set, e: &Expr, sql: &mut Sql) -> Result<Typed, StaError> {
    Ok(match e {
        Expr::Null => Typed("NULL".into(), Ty::Null),
        Expr::Bool(b) => Typed(sql.param(*b, "boolean"), Ty::Bool),
        Expr::Number(n) => Typed(sql.param(*n, "float8"), Ty::Num),
        Expr::String(s) => Typed(sql.param(s.clone(), "text"), Ty::Text),
        Expr::Time(t) => Typed(sql.param(*t, "timestamptz"), Ty::Time),
        Expr::Duration(secs) => Typed(
            format!("make_interval(secs => {})", sql.param(*secs, "float8")),
            Ty::Duration,
        ),
        Expr::Geography(wkt) => geography(wkt, sql)?,
        Expr::Path(p) => property(set, p, sql)?,
        Expr::Not(x) => {
            let x = boolean(set, x, sql)?;
            Typed(format!("(NOT {x})"), Ty::Bool)
        }
        Expr::Neg(x) => {
            let x = compile(set, x, sql)?;
            let x = as_type(x, Ty::Num)?;
            Typed(format!("(-{x})"), Ty::Num)
        }
        Expr::Binary(op, a, b) => binary(set, *op, a, b, sql)?,
        Expr::Call(name, args) => call(set, name, args, sql)?,
    })
}

/// A JSON value read as `ty`: numbers only where they are numbers, so a property
/// holding text never fails the query.
fn as_type(x: Typed, ty: Ty) -> Result<String, StaError> {
    match (x.1, ty) {
        (a, b) if a == b => Ok(x.0),
        (Ty::Null, _) => Ok(x.0),
        (Ty::Json, Ty::Num) => Ok(format!(
            "(CASE WHEN jsonb_typeof({0}) = 'number' THEN ({0} #>> '{{}}')::float8 END)",
            x.0
        )),
        (Ty::Json, Ty::Text) => Ok(format!(
            "(CASE WHEN jsonb_typeof({0}) = 'string' THEN {0} #>> '{{}}' END)",
            x.0
        )),
        (Ty::Json, Ty::Bool) => Ok(format!(
            "(CASE WHEN jsonb_typeof({0}) = 'boolean' THEN ({0} #>> '{{}}')::boolean END)",
            x.0
        )),
        (Ty::Json, Ty::Time) => Ok(format!(
            "(CASE WHEN jsonb_typeof({0}) = 'string' AND ({0} #>> '{{}}') ~ '^\\d{{4}}-\\d\\d-\\d\\dT' THEN ({0} #>> '{{}}')::timestamptz END)",
            x.0
        )),
        (a, b) => Err(no(format!(
            "{} where {} is expected",
            ty_name(a),
            ty_name(b)
        ))),
    }
}

fn ty_name(t: Ty) -> &'static str {
    match t {
        Ty::Num => "a number",
        Ty::Text => "text",
        Ty::Bool => "a boolean",
        Ty::Time => "a time",
        Ty::Point => "a position",
        Ty::Polygon => "a polygon",
        Ty::Json => "a property value",
        Ty::Null => "null",
        Ty::Duration => "a duration",
    }
}

fn boolean(set: Set, e: &Expr, sql: &mut Sql) -> Result<String, StaError> {
    let x = compile(set, e, sql)?;
    as_type(x, Ty::Bool)
}

fn binary(set: Set, op: BinOp, a: &Expr, b: &Expr, sql: &mut Sql) -> Result<Typed, StaError> {
    use BinOp::*;
    if matches!(op, And | Or) {
        let (x, y) = (boolean(set, a, sql)?, boolean(set, b, sql)?);
        let w = if op == And { "AND" } else { "OR" };
        return Ok(Typed(format!("({x} {w} {y})"), Ty::Bool));
    }
    // A Datastream by id: the index's two columns, not arithmetic over them.
    if op == Eq {
        for (p, v) in [(a, b), (b, a)] {
            if let (Expr::Path(path), Expr::Number(n)) = (p, v) {
                let ds = match (set, path.as_slice()) {
                    (Set::Observations, [d, i])
                        if d == "Datastream" && (i == "id" || i == "@iot.id") =>
                    {
                        Some("o")
                    }
                    (Set::Datastreams, [i]) if i == "id" || i == "@iot.id" => Some("l"),
                    _ => None,
                };
                if let (Some(alias), true) = (ds, n.fract() == 0.0) {
                    return Ok(Typed(datastream_is(*n as i64, alias, sql), Ty::Bool));
                }
            }
            // An Observation by id: its key's three columns, not the id text of every row.
            if let (Set::Observations, Expr::Path(path), Expr::String(id)) = (set, p, v) {
                if matches!(path.as_slice(), [i] if i == "id" || i == "@iot.id") {
                    if let Ok(EntityId::Observation {
                        sensor,
                        metric,
                        time,
                    }) = EntityId::parse(Set::Observations, id)
                    {
                        return Ok(Typed(
                            format!(
                                "(o.sensor_id = {} AND o.metric_id = {} AND o.time = {})",
                                sql.param(sensor, "int"),
                                sql.param(metric, "smallint"),
                                sql.param(time, "timestamptz")
                            ),
                            Ty::Bool,
                        ));
                    }
                }
            }
        }
    }
    let (x, y) = (compile(set, a, sql)?, compile(set, b, sql)?);
    if op.is_comparison() {
        if x.1 == Ty::Null || y.1 == Ty::Null {
            let other = if x.1 == Ty::Null { y } else { x };
            return match op {
                Eq => Ok(Typed(format!("({} IS NULL)", other.0), Ty::Bool)),
                Ne => Ok(Typed(format!("({} IS NOT NULL)", other.0), Ty::Bool)),
                _ => Err(no("null can only be compared with eq or ne")),
            };
        }
        let ty = match (x.1, y.1) {
            (Ty::Json, Ty::Json) => {
                let sym = sym(op);
                return Ok(Typed(format!("({} {sym} {})", x.0, y.0), Ty::Bool));
            }
            (Ty::Json, t) | (t, Ty::Json) => t,
            (a, b) if a == b => a,
            (a, b) => {
                return Err(no(format!(
                    "cannot compare {} with {}",
                    ty_name(a),
                    ty_name(b)
                )))
            }
        };
        if matches!(ty, Ty::Point | Ty::Polygon | Ty::Duration) && !matches!(op, Eq | Ne) {
            return Err(no(format!("{} cannot be ordered", ty_name(ty))));
        }
        let (x, y) = (as_type(x, ty)?, as_type(y, ty)?);
        let expr = match ty {
            Ty::Point if op == Eq => format!("({x} ~= {y})"),
            Ty::Point => format!("(NOT {x} ~= {y})"),
            _ => format!("({x} {} {y})", sym(op)),
        };
        return Ok(Typed(expr, Ty::Bool));
    }
    // Arithmetic: numbers, and a time moved by a duration.
    match (x.1, y.1, op) {
        (Ty::Time, Ty::Duration, Add | Sub) => {
            Ok(Typed(format!("({} {} {})", x.0, sym(op), y.0), Ty::Time))
        }
        (Ty::Time, Ty::Time, Sub) => Ok(Typed(format!("({} - {})", x.0, y.0), Ty::Duration)),
        _ => {
            let (x, y) = (as_type(x, Ty::Num)?, as_type(y, Ty::Num)?);
            let e = match op {
                // Division by zero is null (no answer), not an error of the whole request.
                Div => format!("({x} / NULLIF({y}, 0))"),
                Mod => format!("mod({x}::numeric, NULLIF({y}, 0)::numeric)::float8"),
                _ => format!("({x} {} {y})", sym(op)),
            };
            Ok(Typed(e, Ty::Num))
        }
    }
}

fn sym(op: BinOp) -> &'static str {
    use BinOp::*;
    match op {
        Eq => "=",
        Ne => "<>",
        Gt => ">",
        Ge => ">=",
        Lt => "<",
        Le => "<=",
        Add => "+",
        Sub => "-",
        Mul => "*",
        Div => "/",
        Mod => "%",
        And => "AND",
        Or => "OR",
    }
}

/// `POINT(x y)` or a `POLYGON((x y, …))` without holes, as PostgreSQL's own types:
/// positions are points, so these are all a filter on them needs.
fn geography(wkt: &str, sql: &mut Sql) -> Result<Typed, StaError> {
    let w = wkt.trim();
    let upper = w.to_ascii_uppercase();
    let inner = |prefix: &str| {
        upper
            .strip_prefix(prefix)
            .map(str::trim)
            .and_then(|r| r.strip_prefix('('))
            .and_then(|r| r.strip_suffix(')'))
            .map(str::to_owned)
    };
    let pair = |s: &str| -> Option<(f64, f64)> {
        let mut it = s.split_whitespace();
        let (x, y) = (it.next()?.parse().ok()?, it.next()?.parse().ok()?);
        it.next().is_none().then_some((x, y))
    };
    if let Some(body) = inner("POINT") {
        let (x, y) = pair(&body).ok_or_else(|| no(format!("{wkt:?} is not a POINT(x y)")))?;
        return Ok(Typed(
            format!(
                "point({}, {})",
                sql.param(x, "float8"),
                sql.param(y, "float8")
            ),
            Ty::Point,
        ));
    }
    if let Some(body) = inner("POLYGON") {
        let ring = body
            .trim()
            .strip_prefix('(')
            .and_then(|r| r.strip_suffix(')'))
            .filter(|r| !r.contains('('))
            .ok_or_else(|| {
                no(format!(
                    "{wkt:?}: a POLYGON of one ring (no holes) is served"
                ))
            })?;
        let pts: Option<Vec<(f64, f64)>> = ring.split(',').map(pair).collect();
        let pts = pts
            .filter(|p| p.len() >= 4)
            .ok_or_else(|| no(format!("{wkt:?} is not a closed ring of x y pairs")))?;
        let text = pts
            .iter()
            .map(|(x, y)| format!("({x},{y})"))
            .collect::<Vec<_>>()
            .join(",");
        return Ok(Typed(
            sql.param(format!("({text})"), "text") + "::polygon",
            Ty::Polygon,
        ));
    }
    Err(no(format!(
        "{wkt:?}: geography literals are POINT or POLYGON here"
    )))
}

fn call(set: Set, name: &str, args: &[Expr], sql: &mut Sql) -> Result<Typed, StaError> {
    let arity = |n: usize| {
        if args.len() == n {
            Ok(())
        } else {
            Err(no(format!("{name} takes {n} argument(s)")))
        }
    };
    let mut arg = |i: usize, ty: Ty, sql: &mut Sql| -> Result<String, StaError> {
        let x = compile(set, &args[i], sql)?;
        as_type(x, ty)
    };
    let text = |s: String| Ok(Typed(s, Ty::Text));
    let num = |s: String| Ok(Typed(s, Ty::Num));
    let boolean = |s: String| Ok(Typed(s, Ty::Bool));
    let part =
        |field: &str,
         sql: &mut Sql,
         arg: &mut dyn FnMut(usize, Ty, &mut Sql) -> Result<String, StaError>| {
            arity(1)?;
            Ok(Typed(
                format!(
                    "extract({field} FROM {} AT TIME ZONE 'UTC')::float8",
                    arg(0, Ty::Time, sql)?
                ),
                Ty::Num,
            ))
        };
    match name {
        "substringof" => {
            arity(2)?;
            boolean(format!(
                "(strpos({}, {}) > 0)",
                arg(1, Ty::Text, sql)?,
                arg(0, Ty::Text, sql)?
            ))
        }
        "contains" => {
            arity(2)?;
            boolean(format!(
                "(strpos({}, {}) > 0)",
                arg(0, Ty::Text, sql)?,
                arg(1, Ty::Text, sql)?
            ))
        }
        "startswith" => {
            arity(2)?;
            boolean(format!(
                "starts_with({}, {})",
                arg(0, Ty::Text, sql)?,
                arg(1, Ty::Text, sql)?
            ))
        }
        "endswith" => {
            arity(2)?;
            let (a, b) = (arg(0, Ty::Text, sql)?, arg(1, Ty::Text, sql)?);
            boolean(format!("(right({a}, char_length({b})) = {b})"))
        }
        "length" => {
            arity(1)?;
            num(format!("char_length({})::float8", arg(0, Ty::Text, sql)?))
        }
        "indexof" => {
            arity(2)?;
            num(format!(
                "(strpos({}, {}) - 1)::float8",
                arg(0, Ty::Text, sql)?,
                arg(1, Ty::Text, sql)?
            ))
        }
        "substring" => {
            if !(2..=3).contains(&args.len()) {
                return Err(no("substring takes 2 or 3 arguments"));
            }
            let s = arg(0, Ty::Text, sql)?;
            let from = arg(1, Ty::Num, sql)?;
            if args.len() == 3 {
                let n = arg(2, Ty::Num, sql)?;
                text(format!("substr({s}, ({from})::int + 1, ({n})::int)"))
            } else {
                text(format!("substr({s}, ({from})::int + 1)"))
            }
        }
        "tolower" => {
            arity(1)?;
            text(format!("lower({})", arg(0, Ty::Text, sql)?))
        }
        "toupper" => {
            arity(1)?;
            text(format!("upper({})", arg(0, Ty::Text, sql)?))
        }
        "trim" => {
            arity(1)?;
            text(format!("btrim({})", arg(0, Ty::Text, sql)?))
        }
        "concat" => {
            arity(2)?;
            text(format!(
                "({} || {})",
                arg(0, Ty::Text, sql)?,
                arg(1, Ty::Text, sql)?
            ))
        }
        "year" => part("year", sql, &mut arg),
        "month" => part("month", sql, &mut arg),
        "day" => part("day", sql, &mut arg),
        "hour" => part("hour", sql, &mut arg),
        "minute" => part("minute", sql, &mut arg),
        "second" => {
            arity(1)?;
            num(format!(
                "floor(extract(second FROM {} AT TIME ZONE 'UTC'))::float8",
                arg(0, Ty::Time, sql)?
            ))
        }
        "fractionalseconds" => {
            arity(1)?;
            let t = arg(0, Ty::Time, sql)?;
            num(format!(
                "(extract(second FROM {t}) - floor(extract(second FROM {t})))::float8"
            ))
        }
        "totaloffsetminutes" => {
            arity(1)?;
            arg(0, Ty::Time, sql)?;
            num("0::float8".into())
        }
        "now" => {
            arity(0)?;
            Ok(Typed("now()".into(), Ty::Time))
        }
        "mindatetime" | "maxdatetime" => {
            // An Observation's times are instants: the range is the instant itself.
            arity(1)?;
            Ok(Typed(arg(0, Ty::Time, sql)?, Ty::Time))
        }
        "round" | "floor" | "ceiling" => {
            arity(1)?;
            let f = if name == "ceiling" { "ceil" } else { name };
            num(format!("{f}({})", arg(0, Ty::Num, sql)?))
        }
        "geo.distance" => {
            arity(2)?;
            num(format!(
                "({} <-> {})",
                arg(0, Ty::Point, sql)?,
                arg(1, Ty::Point, sql)?
            ))
        }
        "geo.intersects" | "st_intersects" | "st_within" | "st_contains" | "st_disjoint"
        | "st_equals" => {
            arity(2)?;
            let (a, b) = (compile(set, &args[0], sql)?, compile(set, &args[1], sql)?);
            let (a, b) = if name == "st_contains" {
                (b, a)
            } else {
                (a, b)
            };
            let inside = match (a.1, b.1) {
                (Ty::Point, Ty::Polygon) => format!("({} <@ {})", a.0, b.0),
                (Ty::Polygon, Ty::Point) if name != "st_within" => format!("({} <@ {})", b.0, a.0),
                (Ty::Point, Ty::Point) => format!("({} ~= {})", a.0, b.0),
                _ => {
                    return Err(no(format!(
                        "{name} is served between a position and a POLYGON or POINT"
                    )))
                }
            };
            match name {
                "st_disjoint" => boolean(format!("(NOT {inside})")),
                "st_equals" if !(a.1 == Ty::Point && b.1 == Ty::Point) => {
                    Err(no("st_equals is served between two points"))
                }
                _ => boolean(inside),
            }
        }
        "geo.length" | "st_touches" | "st_overlaps" | "st_crosses" | "st_relate" => {
            Err(no(format!(
            "{name} is not served: the hub's positions are points, and no answer would be right"
        )))
        }
        _ => Err(no(format!("unknown function {name:?}"))),
    }
}

/// A page of `set`'s entities of `scope` that match `q`, in its order.
pub async fn list(
    store: &Store,
    catalog: &Value,
    set: Set,
    scope: &Scope,
    q: &Query,
) -> Result<Page, StaError> {
    let mut sql = Sql { params: Vec::new() };
    let scope = scope_sql(set, scope, &mut sql)?;
    let (where_, order) = conditions(set, scope, q, &mut sql)?;
    let (base, joins) = set.from();
    let alias = set.alias();
    let n = sql.params.len();
    let page = format!(
        "WITH catalog AS (SELECT $1::jsonb),
         page AS MATERIALIZED (SELECT {alias}.* FROM {base}{joins}{where_} ORDER BY {order} LIMIT ${} OFFSET ${})
         SELECT {} FROM page {alias}{}{} ORDER BY {order}",
        n + 2,
        n + 3,
        set.json(),
        set.json_joins(joins),
        set.outer_joins()
    );
    let client = store.read_client().await?;
    let (limit, offset) = (q.top + 1, q.skip);
    let mut params = sql.with_catalog(catalog);
    params.push(&limit);
    params.push(&offset);
    let rows = client.query(&page, &params).await?;
    let rows = rows.iter().filter_map(|r| set.decode(r, 0)).collect();
    let mut page = Page::of(rows, q);
    if q.count {
        let count_sql = format!(
            "WITH catalog AS (SELECT $1::jsonb) SELECT count(*) FROM {base}{joins}{where_}"
        );
        params.truncate(params.len() - 2);
        page.count = Some(
            client
                .query_one(&count_sql, &params)
                .await?
                .get::<_, i64>(0),
        );
    }
    Ok(page)
}

/// The pages of `set` that each of `parents` (entities of `parent` with numeric ids)
/// leads to, in one query: an `$expand` over a page of 1,000 entities is one round
/// trip, not 1,000. Without counts (`$count` in an expansion takes [`list`]).
pub async fn list_related(
    store: &Store,
    catalog: &Value,
    set: Set,
    parent: Set,
    parents: &[i64],
    q: &Query,
) -> Result<Vec<Page>, StaError> {
    let mut sql = Sql { params: Vec::new() };
    let scope = related_to(set, parent, "p.pid")?;
    let (where_, order) = conditions(set, Some(scope), q, &mut sql)?;
    let (base, joins) = set.from();
    let alias = set.alias();
    let n = sql.params.len();
    let query = format!(
        "WITH catalog AS (SELECT $1::jsonb)
         SELECT p.ord, x.* FROM unnest(${}::bigint[]) WITH ORDINALITY AS p(pid, ord)
         CROSS JOIN LATERAL (
             SELECT {}, row_number() OVER (ORDER BY {order}) AS rn
             FROM (SELECT {alias}.* FROM {base}{joins}{where_} ORDER BY {order} LIMIT ${} OFFSET ${}) {alias}{}{}
         ) x
         ORDER BY p.ord, x.rn",
        n + 2,
        set.json(),
        n + 3,
        n + 4,
        set.json_joins(joins),
        set.outer_joins()
    );
    let client = store.read_client().await?;
    let (limit, offset) = (q.top + 1, q.skip);
    let mut params = sql.with_catalog(catalog);
    params.push(&parents);
    params.push(&limit);
    params.push(&offset);
    let rows = client.query(&query, &params).await?;
    let mut groups: Vec<Vec<serde_json::Map<String, Value>>> = vec![Vec::new(); parents.len()];
    for r in &rows {
        let ord: i64 = r.get(0);
        if let Some(g) = usize::try_from(ord - 1)
            .ok()
            .and_then(|i| groups.get_mut(i))
        {
            g.extend(set.decode(r, 1));
        }
    }
    Ok(groups.into_iter().map(|g| Page::of(g, q)).collect())
}

/// The WHERE clause (with `scope`, the set's own condition and `$filter`) and the
/// ORDER BY list (`$orderby`, then the key, so pages are stable).
fn conditions(
    set: Set,
    scope: Option<String>,
    q: &Query,
    sql: &mut Sql,
) -> Result<(String, String), StaError> {
    let mut conds: Vec<String> = set.always().map(str::to_owned).into_iter().collect();
    conds.extend(scope);
    if let Some(f) = &q.filter {
        let x = compile(set, f, sql)?;
        conds.push(as_type(x, Ty::Bool).map_err(|_| no("$filter must be a condition"))?);
    }
    let mut order = Vec::new();
    for k in &q.orderby {
        let x = compile(set, &k.expr, sql)?;
        if matches!(x.1, Ty::Point | Ty::Polygon) {
            return Err(no("$orderby on a geometry is not served"));
        }
        order.push(format!(
            "{} {}",
            x.0,
            if k.descending { "DESC" } else { "ASC" }
        ));
    }
    order.push(set.key_order().to_owned());
    let where_ = if conds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conds.join(" AND "))
    };
    Ok((where_, order.join(", ")))
}

impl Page {
    /// A page from up to `$top + 1` rows: the extra one says there is more.
    fn of(mut rows: Vec<serde_json::Map<String, Value>>, q: &Query) -> Self {
        // `$top=0` asks only for the count: no next page to follow.
        let more = q.top > 0 && rows.len() as i64 > q.top;
        rows.truncate(q.top.max(0) as usize);
        Page {
            rows,
            more,
            count: None,
        }
    }
}

impl Set {
    /// The joins [`Set::json`] reads: none for Observations (made from their own columns).
    fn json_joins(self, joins: &'static str) -> &'static str {
        if self == Set::Observations {
            ""
        } else {
            joins
        }
    }

    /// The entity a result row holds from column `at` on (see [`Set::json`]).
    fn decode(self, r: &tokio_postgres::Row, at: usize) -> Option<serde_json::Map<String, Value>> {
        if self == Set::Observations {
            return Some(observation(
                (r.get(at), r.get(at + 1)),
                r.get(at + 2),
                r.get(at + 3),
            ));
        }
        match r.get::<_, Value>(at) {
            Value::Object(m) => Some(m),
            _ => None,
        }
    }
}

/// An Observation without links, from its reading: what the HTTP answers and the
/// MQTT messages both hold.
pub fn observation(
    (sensor, metric): (i32, i16),
    time: DateTime<Utc>,
    value: f64,
) -> serde_json::Map<String, Value> {
    let at = time.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
    // An integral value is written without a fraction, as PostgreSQL's JSON did.
    let result = if value.fract() == 0.0 && value.abs() < 9.0e15 {
        Value::from(value as i64)
    } else {
        serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number)
    };
    let mut row = serde_json::Map::new();
    row.insert(
        "@iot.id".into(),
        Value::String(format!("{sensor}-{metric}-{}", time.timestamp_micros())),
    );
    row.insert("phenomenonTime".into(), Value::String(at.clone()));
    row.insert("resultTime".into(), Value::String(at));
    row.insert("result".into(), result);
    row
}

/// One committed batch's new readings, waiting in `sta_outbox` for the broker.
#[derive(Debug, Clone)]
pub struct OutboxBatch {
    pub id: i64,
    pub attempts: i32,
    /// (sensor id, metric id, time, value), as the readings hold them.
    pub readings: Vec<(i32, i16, DateTime<Utc>, f64)>,
}

impl Store {
    /// Takes the oldest batch not leased by another hub, leased for `lease_s` (one
    /// attempt's time); delivered batches are deleted by [`Store::sta_outbox_done`].
    pub async fn claim_sta_outbox(&self, lease_s: f64) -> Result<Option<OutboxBatch>, StoreError> {
        let c = self.pool().get().await?;
        let row = c
            .query_opt(
                "UPDATE sta_outbox o SET leased_until = now() + make_interval(secs => $1),
                     attempts = o.attempts + 1
                 WHERE o.id = (SELECT q.id FROM sta_outbox q WHERE q.leased_until <= now()
                               ORDER BY q.id LIMIT 1 FOR UPDATE SKIP LOCKED)
                 RETURNING o.id, o.attempts, o.sensor_ids, o.metric_ids, o.times, o.vals",
                &[&lease_s],
            )
            .await?;
        Ok(row.map(|r| {
            let (s, m, t, v): (Vec<i32>, Vec<i16>, Vec<DateTime<Utc>>, Vec<f64>) =
                (r.get(2), r.get(3), r.get(4), r.get(5));
            OutboxBatch {
                id: r.get(0),
                attempts: r.get(1),
                readings: s
                    .into_iter()
                    .zip(m)
                    .zip(t.into_iter().zip(v))
                    .map(|((s, m), (t, v))| (s, m, t, v))
                    .collect(),
            }
        }))
    }

    /// Records a batch's attempt: published (deleted), or retried after `retry_in_s`.
    pub async fn sta_outbox_done(
        &self,
        id: i64,
        outcome: Result<(), (String, f64)>,
    ) -> Result<(), StoreError> {
        let c = self.pool().get().await?;
        match outcome {
            Ok(()) => {
                c.execute("DELETE FROM sta_outbox WHERE id = $1", &[&id])
                    .await?
            }
            Err((error, retry_in_s)) => {
                c.execute(
                    "UPDATE sta_outbox SET last_error = $2,
                         leased_until = now() + make_interval(secs => $3) WHERE id = $1",
                    &[&id, &error, &retry_in_s],
                )
                .await?
            }
        };
        Ok(())
    }

    /// Drops batches older than `hours` (the broker was away that long); returns how
    /// many readings they held.
    pub async fn purge_sta_outbox(&self, hours: u32) -> Result<i64, StoreError> {
        let c = self.pool().get().await?;
        Ok(c.query_one(
            "WITH d AS (DELETE FROM sta_outbox WHERE created_at < now() - make_interval(hours => $1)
                        RETURNING cardinality(sensor_ids) AS n)
             SELECT coalesce(sum(n), 0)::bigint FROM d",
            &[&(hours as i32)],
        )
        .await?
        .get(0))
    }

    /// Readings waiting to be published (for `/metrics`).
    pub async fn sta_outbox_pending(&self) -> Result<i64, StoreError> {
        let c = self.pool().get().await?;
        Ok(c.query_one(
            "SELECT coalesce(sum(cardinality(sensor_ids)), 0)::bigint FROM sta_outbox",
            &[],
        )
        .await?
        .get(0))
    }
}
