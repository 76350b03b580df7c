//! The sensor registry: bulk import of a city's sensor list (GeoJSON or CSV).

use crate::error::StoreError;
use crate::Store;
use cityhub_core::register::Register;
use cityhub_core::{Catalog, GeoPoint, SensorId};
use serde_json::{Map, Value};

/// One sensor as a registry file describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct SensorRecord {
    pub id: SensorId,
    pub kind: String,
    pub name: Option<String>,
    pub location: Option<GeoPoint>,
    pub properties: Map<String, Value>,
    /// Its entry in the public register (the file's register columns).
    pub register: Register,
}

/// What an import did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImportReport {
    pub inserted: u64,
    pub updated: u64,
    /// Rows that matched the registry already (no audit row).
    pub unchanged: u64,
}

/// Parses a GeoJSON FeatureCollection (when the text starts with `{`) or a CSV with
/// a header `id,kind,name,lon,lat,...` (further columns become properties).
/// Every problem is reported with its position; nothing is half-imported.
pub fn parse(text: &str, catalog: &Catalog) -> Result<Vec<SensorRecord>, StoreError> {
    let records = if text.trim_start().starts_with('{') {
        parse_geojson(text)?
    } else {
        parse_csv(text)?
    };
    let mut errors = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut records = records;
    for (i, r) in records.iter_mut().enumerate() {
        match Register::take_from(&mut r.properties) {
            Ok(reg) => r.register = reg,
            Err(why) => errors.push(format!("sensor #{} ({}): {why}", i + 1, r.id)),
        }
    }
    for (i, r) in records.iter().enumerate() {
        match catalog.get(&r.kind) {
            None => errors.push(format!(
                "sensor #{} ({}): unknown kind {:?}",
                i + 1,
                r.id,
                r.kind
            )),
            Some(kind) => {
                if let Err(why) = kind.check_properties(&r.properties) {
                    errors.push(format!("sensor #{} ({}): {why}", i + 1, r.id));
                }
            }
        }
        if !seen.insert(r.id.clone()) {
            errors.push(format!("sensor #{} ({}): id appears twice", i + 1, r.id));
        }
    }
    if errors.is_empty() {
        Ok(records)
    } else {
        Err(StoreError::Import(errors.join("; ")))
    }
}

fn point(lat: f64, lon: f64, at: &str) -> Result<GeoPoint, StoreError> {
    GeoPoint::new(lat, lon).map_err(|e| StoreError::Import(format!("{at}: {e}")))
}

fn parse_geojson(text: &str) -> Result<Vec<SensorRecord>, StoreError> {
    let fc: geojson::FeatureCollection = text
        .parse()
        .map_err(|e| StoreError::Import(format!("not a GeoJSON FeatureCollection: {e}")))?;
    let mut out = Vec::with_capacity(fc.features.len());
    for (i, f) in fc.features.into_iter().enumerate() {
        let at = format!("feature #{}", i + 1);
        let mut props = f.properties.unwrap_or_default();
        let id = match (&f.id, props.remove("id")) {
            (Some(geojson::feature::Id::String(s)), _) => s.clone(),
            (Some(geojson::feature::Id::Number(n)), _) => n.to_string(),
            (None, Some(Value::String(s))) => s,
            (None, Some(Value::Number(n))) => n.to_string(),
            _ => {
                return Err(StoreError::Import(format!(
                    "{at}: no id (feature id or properties.id)"
                )))
            }
        };
        let id = SensorId::parse(&id).map_err(|e| StoreError::Import(format!("{at}: {e}")))?;
        let kind = match props.remove("kind") {
            Some(Value::String(k)) => k,
            _ => {
                return Err(StoreError::Import(format!(
                    "{at}: properties.kind is missing"
                )))
            }
        };
        let name = match props.remove("name") {
            Some(Value::String(n)) => Some(n),
            _ => None,
        };
        let location = match f.geometry.map(|g| g.value) {
            Some(geojson::GeometryValue::Point { coordinates }) if coordinates.len() >= 2 => {
                Some(point(coordinates[1], coordinates[0], &at)?)
            }
            None => None,
            Some(_) => {
                return Err(StoreError::Import(format!(
                    "{at}: geometry must be a Point"
                )))
            }
        };
        out.push(SensorRecord {
            id,
            kind,
            name,
            location,
            properties: props,
            register: Register::default(),
        });
    }
    Ok(out)
}

fn cell_value(s: &str) -> Value {
    match s {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => s
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(s.to_owned())),
    }
}

fn parse_csv(text: &str) -> Result<Vec<SensorRecord>, StoreError> {
    let mut rdr = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers = rdr
        .headers()
        .map_err(|e| StoreError::Import(format!("CSV header: {e}")))?
        .clone();
    let col = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
    let (Some(ci), Some(ck)) = (col("id"), col("kind")) else {
        return Err(StoreError::Import(
            "CSV header must have at least the columns id and kind".into(),
        ));
    };
    let (cn, clon, clat) = (col("name"), col("lon"), col("lat"));
    let mut out = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let at = format!("CSV line {}", i + 2);
        let rec = rec.map_err(|e| StoreError::Import(format!("{at}: {e}")))?;
        let get = |c: Option<usize>| c.and_then(|c| rec.get(c)).filter(|s| !s.is_empty());
        let id = SensorId::parse(get(Some(ci)).unwrap_or(""))
            .map_err(|e| StoreError::Import(format!("{at}: {e}")))?;
        let kind = get(Some(ck)).unwrap_or("").to_owned();
        let location = match (get(clon), get(clat)) {
            (Some(lon), Some(lat)) => {
                let (lon, lat) = (lon.parse::<f64>(), lat.parse::<f64>());
                match (lon, lat) {
                    (Ok(lon), Ok(lat)) => Some(point(lat, lon, &at)?),
                    _ => {
                        return Err(StoreError::Import(format!(
                            "{at}: lon and lat must be numbers"
                        )))
                    }
                }
            }
            (None, None) => None,
            _ => return Err(StoreError::Import(format!("{at}: lon and lat go together"))),
        };
        let mut properties = Map::new();
        for (c, h) in headers.iter().enumerate() {
            if [Some(ci), Some(ck), cn, clon, clat].contains(&Some(c)) {
                continue;
            }
            if let Some(v) = rec.get(c).filter(|s| !s.is_empty()) {
                properties.insert(h.to_owned(), cell_value(v));
            }
        }
        out.push(SensorRecord {
            id,
            kind,
            name: get(cn).map(str::to_owned),
            location,
            properties,
            register: Register::default(),
        });
    }
    Ok(out)
}

/// Upserts the records in one transaction, each change in the audit trail as done
/// by `actor`. A sensor already registered under another kind is an error (moving a
/// sensor between kinds would orphan its history).
pub async fn import(
    store: &Store,
    records: &[SensorRecord],
    actor: &str,
) -> Result<ImportReport, StoreError> {
    use crate::query::SENSOR_RECORD;
    let mut client = store.pool().get().await?;
    let tx = client.transaction().await?;
    let ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
    let existing = tx
        .query(
            &format!(
                "SELECT external_id, kind, {SENSOR_RECORD} FROM sensors
                 WHERE external_id = ANY($1) FOR UPDATE"
            ),
            &[&ids],
        )
        .await?;
    let mut conflicts = Vec::new();
    let mut before = std::collections::HashMap::new();
    for row in &existing {
        let (e, k): (&str, &str) = (row.get(0), row.get(1));
        before.insert(e.to_owned(), row.get::<_, Value>(2));
        if let Some(r) = records.iter().find(|r| r.id.as_str() == e) {
            if r.kind != k {
                conflicts.push(format!(
                    "{e} is registered as {k:?}, file says {:?}",
                    r.kind
                ));
            }
        }
    }
    if !conflicts.is_empty() {
        return Err(StoreError::Import(conflicts.join("; ")));
    }
    let mut report = ImportReport::default();
    for r in records {
        let props = Value::Object(r.properties.clone());
        let register = serde_json::to_value(&r.register).unwrap_or_default();
        let (lon, lat) = (r.location.map(|p| p.lon()), r.location.map(|p| p.lat()));
        let after: Value = tx
            .query_one(
                &format!(
                    "INSERT INTO sensors AS s (external_id, kind, name, lon, lat, properties, register)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)
                     ON CONFLICT (external_id) DO UPDATE SET
                         name = coalesce(excluded.name, s.name), lon = coalesce(excluded.lon, s.lon),
                         lat = coalesce(excluded.lat, s.lat), properties = s.properties || excluded.properties,
                         register = s.register || excluded.register, updated_at = now()
                     RETURNING {SENSOR_RECORD}"
                ),
                &[&r.id.as_str(), &r.kind, &r.name, &lon, &lat, &props, &register],
            )
            .await?
            .get(0);
        let old = before.get(r.id.as_str());
        if old == Some(&after) {
            report.unchanged += 1;
            continue;
        }
        if old.is_none() {
            report.inserted += 1;
        } else {
            report.updated += 1;
        }
        let target = format!("sensor:{}", r.id);
        crate::trust::audit(&tx, actor, "sensor.import", &target, old, Some(&after)).await?;
    }
    tx.commit().await?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cityhub_core::Settings;

    fn catalog() -> Catalog {
        let s = Settings::builtin().unwrap();
        s.catalog().unwrap()
    }

    #[test]
    fn csv_with_properties() {
        let text = "id,kind,name,lon,lat,depth_mm,stream\nbin-1,waste_bin,Via Roma,10.02,45.13,1200,paper\nbin-2,waste_bin,,,,,\n";
        let r = parse(text, &catalog()).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].location.unwrap().lat(), 45.13);
        assert_eq!(r[0].properties["depth_mm"], serde_json::json!(1200.0));
        assert_eq!(r[0].properties["stream"], "paper");
        assert!(r[1].location.is_none() && r[1].name.is_none());
    }

    #[test]
    fn geojson_features() {
        let text = r#"{"type":"FeatureCollection","features":[
          {"type":"Feature","id":"aq-1","geometry":{"type":"Point","coordinates":[10.03,45.14]},
           "properties":{"kind":"air_quality","name":"Piazza Roma","height_m":3}},
          {"type":"Feature","geometry":null,"properties":{"id":"lamp-9","kind":"streetlight"}}]}"#;
        let r = parse(text, &catalog()).unwrap();
        assert_eq!(r[0].id.as_str(), "aq-1");
        assert_eq!(r[0].location.unwrap().lon(), 10.03);
        assert_eq!(r[0].properties["height_m"], 3);
        assert_eq!(r[1].id.as_str(), "lamp-9");
    }

    #[test]
    fn errors_name_the_place() {
        let e = parse("id,kind\nx,volcano\n", &catalog())
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown kind \"volcano\""), "{e}");
        let e = parse("id,kind,lon,lat\nx,waste_bin,200,45\n", &catalog())
            .unwrap_err()
            .to_string();
        assert!(e.contains("CSV line 2"), "{e}");
        let e = parse("id,kind\na b,waste_bin\n", &catalog())
            .unwrap_err()
            .to_string();
        assert!(e.contains("sensor id"), "{e}");
        let e = parse("name\nfoo\n", &catalog()).unwrap_err().to_string();
        assert!(e.contains("id and kind"), "{e}");
    }
}
