//! The OpenAPI document in version 3.0, as OGC API - Features Part 1 asks
//! (conformance class `oas30`) and GDAL, OWSLib and QGIS read it. utoipa writes
//! 3.1 (JSON Schema 2020-12); the differences our document uses are few and
//! mechanical: `null` in a type list or a `oneOf` becomes `nullable`, `examples`
//! lists become one `example`, `const` an `enum`, and numeric exclusive bounds
//! the 3.0 boolean form.

use serde_json::{Map, Value};

/// Rewrites a 3.1 document as 3.0.3, in place.
pub fn downgrade(doc: &mut Value) {
    if let Some(o) = doc.as_object_mut() {
        o.insert("openapi".into(), "3.0.3".into());
        o.remove("jsonSchemaDialect");
        o.remove("webhooks");
        if let Some(Value::Object(l)) = o.get_mut("info").and_then(|i| i.get_mut("license")) {
            l.remove("identifier");
        }
    }
    walk(doc);
}

fn is_null_schema(v: &Value) -> bool {
    v.get("type").and_then(Value::as_str) == Some("null")
}

fn walk(v: &mut Value) {
    match v {
        Value::Array(a) => a.iter_mut().for_each(walk),
        Value::Object(o) => {
            schema(o);
            o.values_mut().for_each(walk);
        }
        _ => {}
    }
}

/// One object, if it is a schema written the 3.1 way.
fn schema(o: &mut Map<String, Value>) {
    if let Some(Value::Array(types)) = o.get("type").cloned() {
        let rest: Vec<Value> = types
            .iter()
            .filter(|t| t.as_str() != Some("null"))
            .cloned()
            .collect();
        if rest.len() < types.len() {
            o.insert("nullable".into(), true.into());
        }
        match rest.len() {
            0 => {
                o.remove("type");
            }
            1 => {
                o.insert("type".into(), rest[0].clone());
            }
            _ => {
                o.remove("type");
                let any = rest
                    .into_iter()
                    .map(|t| Value::Object(Map::from_iter([("type".into(), t)])));
                o.insert("anyOf".into(), Value::Array(any.collect()));
            }
        }
    }
    for key in ["oneOf", "anyOf"] {
        let Some(Value::Array(alts)) = o.get(key).cloned() else {
            continue;
        };
        if !alts.iter().any(is_null_schema) {
            continue;
        }
        let rest: Vec<Value> = alts.into_iter().filter(|a| !is_null_schema(a)).collect();
        o.insert("nullable".into(), true.into());
        if rest.len() == 1 {
            o.remove(key);
            match &rest[0] {
                // A `$ref` ignores its siblings in 3.0: wrap it so `nullable` counts.
                r if r.get("$ref").is_some() => {
                    o.insert("allOf".into(), Value::Array(rest));
                }
                Value::Object(inner) => {
                    for (k, x) in inner {
                        o.entry(k.clone()).or_insert_with(|| x.clone());
                    }
                }
                _ => {}
            }
        } else {
            o.insert(key.into(), Value::Array(rest));
        }
    }
    if let Some(Value::Array(ex)) = o.get("examples").cloned() {
        o.remove("examples");
        if let Some(first) = ex.into_iter().next() {
            o.insert("example".into(), first);
        }
    }
    if let Some(c) = o.remove("const") {
        o.insert("enum".into(), Value::Array(vec![c]));
    }
    for (excl, bound) in [
        ("exclusiveMinimum", "minimum"),
        ("exclusiveMaximum", "maximum"),
    ] {
        if let Some(n) = o.get(excl).filter(|x| x.is_number()).cloned() {
            o.insert(bound.into(), n);
            o.insert(excl.into(), true.into());
        }
    }
}

/// Gives the `limit` query parameter of `path` its default and maximum, so that
/// clients (GDAL's OAPIF driver) page by the largest page the server allows.
/// States in the document what every handler enforces beyond the parameter types
/// utoipa derives: the city's kinds as an enum wherever a kind is named, the sensor
/// id's pattern wherever one is, no empty query value (the handlers refuse them),
/// and the 400 any operation with an input answers to a malformed one.
pub fn state_enforced(doc: &mut Value, kinds: &[String], sensor_id: &str) {
    let kind_enum = Value::Array(kinds.iter().map(|k| Value::String(k.clone())).collect());
    let alternatives = kinds.join("|");
    let Some(Value::Object(paths)) = doc.get_mut("paths") else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Value::Object(item) = item else { continue };
        for op in item.values_mut() {
            let Value::Object(op) = op else { continue };
            let mut has_input = op.contains_key("requestBody");
            if let Some(Value::Array(params)) = op.get_mut("parameters") {
                has_input |= !params.is_empty();
                for p in params {
                    let name = p
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned();
                    let place = p.get("in").and_then(Value::as_str).unwrap_or("").to_owned();
                    let Some(Value::Object(s)) = p.get_mut("schema") else {
                        continue;
                    };
                    match (place.as_str(), name.as_str()) {
                        ("query", "kind") | ("path", "collectionId") => {
                            s.insert("enum".into(), kind_enum.clone());
                        }
                        ("path", "id") if path.starts_with("/api/v1/sensors/") => {
                            s.insert("pattern".into(), sensor_id.into());
                        }
                        ("query", "sensor") => {
                            s.insert("pattern".into(), sensor_id.into());
                        }
                        ("path", "file") if path == "/feeds/{file}" => {
                            s.insert(
                                "pattern".into(),
                                format!("^({alternatives})\\.(geojson|csv)$").into(),
                            );
                        }
                        _ => {}
                    }
                    let free_string = s.get("type").and_then(Value::as_str) == Some("string")
                        && !s.contains_key("enum")
                        && !s.contains_key("pattern");
                    // NUL characters (and empty query values) are refused before any handler.
                    if free_string && (place == "query" || place == "path") {
                        if place == "query" {
                            s.entry("minLength").or_insert(1.into());
                        }
                        s.insert("pattern".into(), "^[^\\x00]*$".into());
                    }
                    // Ids are 64-bit; JSON clients keep integers exact up to 2^53.
                    if place == "path" && s.get("format").and_then(Value::as_str) == Some("int64") {
                        s.entry("maximum")
                            .or_insert(9_007_199_254_740_991_i64.into());
                    }
                }
            }
            if let Some(Value::Object(responses)) = op.get_mut("responses") {
                if has_input && !responses.contains_key("400") {
                    responses.insert(
                        "400".into(),
                        serde_json::json!({
                            "description": "A malformed parameter or body: the answer says which",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
                        }),
                    );
                }
            }
        }
    }
}

/// The schema of a GET operation's query parameter, when the document has it.
fn param_schema<'a>(
    doc: &'a mut Value,
    path: &str,
    name: &str,
) -> Option<&'a mut Map<String, Value>> {
    let params = doc.pointer_mut(&format!(
        "/paths/{}/get/parameters",
        path.replace('~', "~0").replace('/', "~1")
    ))?;
    params
        .as_array_mut()?
        .iter_mut()
        .find(|p| p.get("name").and_then(Value::as_str) == Some(name))?
        .get_mut("schema")?
        .as_object_mut()
}

/// A closed set of values for a GET operation's parameter.
pub fn set_enum(doc: &mut Value, path: &str, name: &str, values: &[&str]) {
    if let Some(s) = param_schema(doc, path, name) {
        s.remove("minLength");
        s.insert(
            "enum".into(),
            values.iter().map(|v| Value::from(*v)).collect(),
        );
    }
}

/// A page size's default and maximum for a GET operation's `limit`.
pub fn set_limit(doc: &mut Value, path: &str, default: Option<u32>, maximum: u32) {
    if let Some(s) = param_schema(doc, path, "limit") {
        if let Some(d) = default {
            s.insert("default".into(), d.into());
        }
        s.insert("maximum".into(), maximum.into());
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn nullable_types_refs_and_examples() {
        let mut d = json!({
            "openapi": "3.1.0",
            "info": {"title": "t", "version": "1", "license": {"name": "x", "identifier": "MIT"}},
            "components": {"schemas": {"A": {"type": "object", "properties": {
                "a": {"type": ["string", "null"], "examples": ["x"]},
                "b": {"oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/B"}]},
                "c": {"const": "Feature"},
                "d": {"type": "integer", "exclusiveMinimum": 0},
                "e": {"type": ["number", "string"]}
            }}}}
        });
        super::downgrade(&mut d);
        assert_eq!(d["openapi"], "3.0.3");
        assert!(d["info"]["license"].get("identifier").is_none());
        let p = &d["components"]["schemas"]["A"]["properties"];
        assert_eq!(
            p["a"],
            json!({"type": "string", "nullable": true, "example": "x"})
        );
        assert_eq!(
            p["b"],
            json!({"allOf": [{"$ref": "#/components/schemas/B"}], "nullable": true})
        );
        assert_eq!(p["c"], json!({"enum": ["Feature"]}));
        assert_eq!(
            p["d"],
            json!({"type": "integer", "minimum": 0, "exclusiveMinimum": true})
        );
        assert_eq!(
            p["e"],
            json!({"anyOf": [{"type": "number"}, {"type": "string"}]})
        );
    }
}
