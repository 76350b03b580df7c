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
pub fn set_limit(doc: &mut Value, path: &str, default: Option<u32>, maximum: u32) {
    let Some(Value::Array(params)) = doc.pointer_mut(&format!(
        "/paths/{}/get/parameters",
        path.replace('~', "~0").replace('/', "~1")
    )) else {
        return;
    };
    for p in params {
        if p.get("name").and_then(Value::as_str) == Some("limit") {
            if let Some(Value::Object(s)) = p.get_mut("schema") {
                if let Some(d) = default {
                    s.insert("default".into(), d.into());
                }
                s.insert("maximum".into(), maximum.into());
            }
        }
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
