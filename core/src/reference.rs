//! The configuration reference, rendered from the settings' own definitions: their
//! doc comments, types and `Default` impls, read through their JSON Schema
//! (`schemars`). `cityhub config reference` prints it as a commented TOML file
//! (committed as `config/cityhub.toml`) and as Markdown (`docs/configuration.md`);
//! tests fail when either committed copy differs, so the settings are described once.

use crate::settings::{Settings, DEFAULT_KINDS};
use serde_json::{Map, Value};
use std::fmt::Write;

/// One key of a section.
struct Field {
    key: String,
    doc: String,
    /// What the value is: `integer ≥ 0`, `"auto" | "off"`, `list of strings`...
    ty: String,
    /// Allowed values of an enumeration, with what each means.
    choices: Vec<(String, String)>,
    /// The built-in default; `None`: unset (optional) or required in its table.
    default: Option<Value>,
    required: bool,
    /// `CITYHUB_<SECTION>_<KEY>`, for the keys of top-level sections.
    env: Option<String>,
}

/// A TOML table: `[database]`, `[[alerts.rules]]`, `[kinds.<name>.metrics.<metric>]`.
struct Section {
    /// As written in a TOML file, brackets included.
    header: String,
    doc: String,
    fields: Vec<Field>,
    /// Tables that repeat (arrays of tables, tables keyed by a name) have no
    /// defaults: the reference shows their keys commented out.
    example_only: bool,
}

struct Walker<'a> {
    defs: &'a Map<String, Value>,
    sections: Vec<Section>,
}

impl<'a> Walker<'a> {
    /// `schema` with a `$ref` followed (once; the settings have no recursive types).
    fn resolve(&self, schema: &'a Value) -> &'a Value {
        match schema.get("$ref").and_then(Value::as_str) {
            Some(r) => r
                .strip_prefix("#/$defs/")
                .and_then(|name| self.defs.get(name))
                .unwrap_or(schema),
            None => schema,
        }
    }

    /// The schema without its `null` alternative (an `Option`).
    fn non_null(&self, schema: &'a Value) -> &'a Value {
        let schema = self.resolve(schema);
        if let Some(any) = schema.get("anyOf").and_then(Value::as_array) {
            let rest: Vec<&Value> = any
                .iter()
                .filter(|s| s.get("type") != Some(&Value::from("null")))
                .collect();
            if let [one] = rest.as_slice() {
                return self.resolve(one);
            }
        }
        schema
    }

    fn is_struct(&self, schema: &Value) -> bool {
        schema.get("properties").is_some()
    }

    /// The struct a map's values or a list's items are, when they are one.
    fn struct_of(&self, schema: &'a Value) -> Option<&'a Value> {
        let s = self.non_null(schema);
        let inner = s
            .get("additionalProperties")
            .or_else(|| s.get("items"))
            .filter(|v| v.is_object())?;
        let inner = self.resolve(inner);
        self.is_struct(inner).then_some(inner)
    }

    fn ty(&self, schema: &'a Value) -> String {
        let s = self.non_null(schema);
        if let Some(alts) = s
            .get("oneOf")
            .or_else(|| s.get("anyOf"))
            .and_then(Value::as_array)
        {
            if alts.iter().all(|a| a.get("const").is_some()) {
                return alts
                    .iter()
                    .map(|a| a["const"].to_string())
                    .collect::<Vec<_>>()
                    .join(" | ");
            }
            return alts
                .iter()
                .map(|a| self.ty(a))
                .collect::<Vec<_>>()
                .join(" or ");
        }
        if let Some(values) = s.get("enum").and_then(Value::as_array) {
            return values
                .iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join(" | ");
        }
        if self.is_struct(s) {
            return "table".into();
        }
        let types: Vec<&str> = match s.get("type") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => ts
                .iter()
                .filter_map(Value::as_str)
                .filter(|t| *t != "null")
                .collect(),
            _ => vec![],
        };
        match types.as_slice() {
            ["integer"] => match s.get("minimum").and_then(Value::as_f64) {
                Some(min) => format!("integer ≥ {min}"),
                None => "integer".into(),
            },
            ["number"] => "number".into(),
            ["boolean"] => "boolean".into(),
            ["string"] => "string".into(),
            ["array"] => match s.get("items") {
                Some(items) => format!("list of {}", plural(&self.ty(items))),
                None => "list".into(),
            },
            ["object"] => match s.get("additionalProperties") {
                Some(v) if v.is_object() => format!("table of {}", plural(&self.ty(v))),
                _ => "table".into(),
            },
            _ => "value".into(),
        }
    }

    fn choices(&self, schema: &'a Value) -> Vec<(String, String)> {
        let s = self.non_null(schema);
        s.get("oneOf")
            .and_then(Value::as_array)
            .filter(|alts| alts.iter().all(|a| a.get("const").is_some()))
            .map(|alts| {
                alts.iter()
                    .map(|a| (a["const"].as_str().unwrap_or_default().to_owned(), doc(a)))
                    .filter(|(_, d)| !d.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Adds `schema`'s table under `header` and, after it, the tables inside it.
    fn table(
        &mut self,
        header: String,
        path: &str,
        schema: &'a Value,
        env: Option<&str>,
        example_only: bool,
    ) {
        let mut fields = Vec::new();
        let mut nested = Vec::new();
        let required: Vec<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let props = schema.get("properties").and_then(Value::as_object);
        for (key, prop) in props.into_iter().flatten() {
            let sub = self.non_null(prop);
            let child = format!("{path}.{key}");
            if self.is_struct(sub) {
                nested.push((format!("[{child}]"), child, sub, doc_or(prop, sub)));
                continue;
            }
            if let Some(inner) = self.struct_of(prop) {
                let (h, p) = repeated(&child, key, sub.get("items").is_some());
                nested.push((h, p, inner, doc_or(prop, inner)));
                continue;
            }
            if let Some(variants) = tagged_variants(self, sub) {
                for (tag, value, variant) in variants {
                    let mut d = doc_or(prop, sub);
                    let vd = doc(variant);
                    if !vd.is_empty() {
                        d = format!("{d} With `{tag} = \"{value}\"`: {vd}");
                    }
                    nested.push((format!("[{child}]"), child.clone(), variant, d));
                }
                continue;
            }
            let mut text = doc(prop);
            if let Some(c) = prop.get("const") {
                text = format!("{c} selects this form of the table.");
            }
            fields.push(Field {
                key: key.clone(),
                doc: text,
                ty: self.ty(prop),
                choices: self.choices(prop),
                default: if example_only {
                    None
                } else {
                    prop.get("default").cloned()
                },
                required: required.contains(&key.as_str()) && prop.get("default").is_none(),
                env: env.map(|e| format!("CITYHUB_{}_{}", e, key.to_ascii_uppercase())),
            });
        }
        let doc = doc(schema);
        self.sections.push(Section {
            header,
            doc,
            fields,
            example_only,
        });
        for (h, p, s, d) in nested {
            let at = self.sections.len();
            self.table(h, &p, s, None, true);
            if self.sections[at].doc.is_empty() || !d.is_empty() {
                self.sections[at].doc = d;
            }
        }
    }
}

/// A tagged enum of tables (`MapRule`): each variant's table, with its tag's value.
fn tagged_variants<'a>(
    w: &Walker<'a>,
    schema: &'a Value,
) -> Option<Vec<(String, String, &'a Value)>> {
    let alts = schema.get("oneOf")?.as_array()?;
    let mut out = Vec::new();
    for a in alts {
        let a = w.resolve(a);
        let props = a.get("properties")?.as_object()?;
        let (tag, value) = props.iter().find_map(|(k, v)| {
            v.get("const")
                .and_then(Value::as_str)
                .map(|c| (k.clone(), c.to_owned()))
        })?;
        out.push((tag, value, a));
    }
    Some(out)
}

fn doc(schema: &Value) -> String {
    let part = |k: &str| schema.get(k).and_then(Value::as_str).unwrap_or_default();
    let text = match (part("title"), part("description")) {
        ("", d) => d.to_owned(),
        (t, "") => t.to_owned(),
        (t, d) => format!("{t}\n\n{d}"),
    };
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn doc_or(outer: &Value, inner: &Value) -> String {
    let d = doc(outer);
    if d.is_empty() {
        doc(inner)
    } else {
        d
    }
}

/// The header and path of a table that repeats: `[[path]]` for a list of tables,
/// `[path.<name>]` for tables keyed by a name.
fn repeated(path: &str, key: &str, list: bool) -> (String, String) {
    if list {
        (format!("[[{path}]]"), path.to_owned())
    } else {
        let one = singular(key);
        (format!("[{path}.<{one}>]"), format!("{path}.<{one}>"))
    }
}

fn singular(key: &str) -> &str {
    match key {
        "kinds" => "kind",
        "metrics" | "derived" => "metric",
        "fields" => "field",
        other => other,
    }
}

fn plural(ty: &str) -> String {
    match ty {
        "string" | "number" | "integer" | "boolean" | "table" => format!("{ty}s"),
        t if t.starts_with("integer") => t.replacen("integer", "integers", 1),
        t => t.to_owned(),
    }
}

fn sections() -> Vec<Section> {
    let root = serde_json::to_value(schemars::schema_for!(Settings)).expect("a schema is JSON");
    let empty = Map::new();
    let defs = root
        .get("$defs")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let mut w = Walker {
        defs,
        sections: Vec::new(),
    };
    let props = root["properties"].as_object().expect("Settings has fields");
    for (name, prop) in props {
        let schema = w.non_null(prop);
        if w.is_struct(schema) {
            let at = w.sections.len();
            w.table(
                format!("[{name}]"),
                name,
                schema,
                Some(&name.to_ascii_uppercase()),
                false,
            );
            // The section's defaults come with the section, not with each key.
            let defaults = prop.get("default").and_then(Value::as_object);
            for f in &mut w.sections[at].fields {
                if let Some(v) = defaults.and_then(|d| d.get(&f.key)) {
                    f.default = Some(v.clone());
                }
            }
        } else if let Some(inner) = w.struct_of(prop) {
            let (h, p) = repeated(name, name, w.non_null(prop).get("items").is_some());
            let at = w.sections.len();
            w.table(h, &p, inner, None, true);
            let d = doc(prop);
            if !d.is_empty() {
                w.sections[at].doc = d;
            }
        }
    }
    // The kinds are defaults too, from their own file; say which.
    if let Some(s) = w.sections.iter_mut().find(|s| s.header == "[kinds.<kind>]") {
        let builtin: toml::Table = toml::from_str(DEFAULT_KINDS).expect("the built-in kinds parse");
        let names: Vec<&str> = builtin
            .get("kinds")
            .and_then(|k| k.as_table())
            .map(|t| t.keys().map(String::as_str).collect())
            .unwrap_or_default();
        let lead = format!(
            "A sensor kind. Built in (config/kinds.toml): {}. A file adds kinds, or changes a built-in one key by key; `enabled = false` turns one off.",
            names.join(", ")
        );
        s.doc = if s.doc.is_empty() {
            lead
        } else {
            format!("{lead} {}", s.doc)
        };
    }
    w.sections
}

fn toml_value(v: &Value) -> String {
    let mut t = toml::Table::new();
    match toml::Value::try_from(v) {
        Ok(tv) => {
            t.insert("v".into(), tv);
            toml::to_string(&t)
                .map(|s| s.trim_start_matches("v = ").trim_end().to_owned())
                .unwrap_or_else(|_| v.to_string())
        }
        Err(_) => v.to_string(),
    }
}

fn wrap(text: &str, prefix: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && prefix.len() + line.len() + 1 + word.len() > width {
            let _ = writeln!(out, "{prefix}{line}");
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        let _ = writeln!(out, "{prefix}{line}");
    }
    out
}

const TOML_HEAD: &str = "\
cityhub configuration: every setting, at its built-in default. Generated by \
`cityhub config reference` from the settings' definitions (core/src); do not \
edit by hand (a test compares them). Every key is optional: a file needs only \
what differs from the default. Environment variables win over the file: \
CITYHUB_<SECTION>_<KEY>, e.g. CITYHUB_DATABASE_URL. `cityhub config print` shows \
the effective configuration.";

/// Every setting as a commented TOML file, at its default.
pub fn reference_toml() -> String {
    let mut out = wrap(TOML_HEAD, "# ", 88);
    for s in sections() {
        out.push('\n');
        let c = if s.example_only { "# " } else { "" };
        if !s.doc.is_empty() {
            out.push_str(&wrap(&s.doc, "# ", 88));
        }
        let _ = writeln!(out, "{c}{}", s.header);
        for f in &s.fields {
            let mut text = f.doc.clone();
            for (value, meaning) in &f.choices {
                let _ = write!(text, " \"{value}\": {meaning}");
            }
            if !text.is_empty() {
                out.push_str(&wrap(&text, "# ", 88));
            }
            match &f.default {
                Some(v) => {
                    let _ = writeln!(out, "{c}{} = {}", f.key, toml_value(v));
                }
                None => {
                    let what = if f.required {
                        "required"
                    } else {
                        "unset by default"
                    };
                    let _ = writeln!(out, "# {} = <{}>  ({what})", f.key, f.ty);
                }
            }
        }
    }
    out
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|")
}

/// Every setting as Markdown tables, one per section (`docs/configuration.md`).
pub fn reference_markdown() -> String {
    let mut out = String::from(
        "# Configuration reference\n\n\
         <!-- Generated by `cityhub config reference --format markdown` from the settings' \
         definitions in core/src; do not edit by hand (a test compares them). -->\n\n\
         The hub reads its built-in defaults, then a TOML file (`--config FILE`, \
         `CITYHUB_CONFIG`, or `config/cityhub.toml` when it exists), then \
         `CITYHUB_<SECTION>_<KEY>` environment variables. Unknown keys are errors. \
         `cityhub config print` shows the effective configuration with secrets hidden; \
         `cityhub config reference` prints this reference as a commented TOML file, \
         which is what `config/cityhub.toml` holds. A setting that names a file \
         (`*_file`) is read at start, for secrets kept out of the configuration.\n",
    );
    for s in sections() {
        let _ = write!(out, "\n## `{}`\n\n", s.header);
        if !s.doc.is_empty() {
            let _ = write!(out, "{}\n\n", s.doc);
        }
        if s.fields.is_empty() {
            continue;
        }
        let env = s.fields.iter().any(|f| f.env.is_some());
        out.push_str(if env {
            "| Key | Type | Default | Environment | Meaning |\n|---|---|---|---|---|\n"
        } else {
            "| Key | Type | Default | Meaning |\n|---|---|---|---|\n"
        });
        for f in &s.fields {
            let default = match &f.default {
                Some(v) => format!("`{}`", toml_value(v)),
                None if f.required => "required".into(),
                None => "unset".into(),
            };
            let mut meaning = f.doc.clone();
            for (value, m) in &f.choices {
                let _ = write!(meaning, "<br>`\"{value}\"`: {m}");
            }
            let _ = write!(
                out,
                "| `{}` | {} | {} |",
                f.key,
                md_cell(&f.ty),
                md_cell(&default)
            );
            if env {
                let _ = write!(out, " `{}` |", f.env.as_deref().unwrap_or_default());
            }
            let _ = writeln!(out, " {} |", md_cell(&meaning));
        }
    }
    out
}

/// Keys with no description, as `section.key`: each setting must say what it is for.
pub fn undescribed() -> Vec<String> {
    sections()
        .iter()
        .flat_map(|s| {
            s.fields
                .iter()
                .filter(|f| f.doc.is_empty())
                .map(move |f| format!("{} {}", s.header, f.key))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Settings;

    #[test]
    fn the_reference_file_loads_as_the_defaults() {
        let dir = std::env::temp_dir().join(format!("cityhub-ref-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("cityhub.toml");
        std::fs::write(&file, reference_toml()).unwrap();
        let from_file = Settings::load_with_vars(Some(&file), []).unwrap();
        let builtin = Settings::builtin().unwrap();
        assert_eq!(from_file.to_redacted_toml(), builtin.to_redacted_toml());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The committed reference files are what the code prints (`CITYHUB_BLESS=1`
    /// rewrites them).
    #[test]
    fn the_committed_reference_files_are_current() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for (path, generated, format) in [
            ("config/cityhub.toml", reference_toml(), "toml"),
            ("docs/configuration.md", reference_markdown(), "markdown"),
        ] {
            let file = root.join(path);
            if std::env::var_os("CITYHUB_BLESS").is_some() {
                std::fs::write(&file, &generated).unwrap();
            }
            let committed = std::fs::read_to_string(&file).unwrap_or_default();
            assert!(
                committed == generated,
                "{path} is not what the settings' definitions say: run \
                 `cargo run -q -- config reference --format {format} > {path}` \
                 (or CITYHUB_BLESS=1 cargo test -p cityhub-core reference)"
            );
        }
    }

    #[test]
    fn every_setting_is_described() {
        assert_eq!(undescribed(), Vec::<String>::new());
    }

    #[test]
    fn every_section_and_key_is_in_the_reference() {
        let text = reference_toml();
        let defaults: toml::Table =
            toml::from_str(&Settings::builtin().unwrap().to_redacted_toml()).unwrap();
        for (section, keys) in &defaults {
            if section == "kinds" {
                assert!(text.contains("# [kinds.<kind>]"));
                continue;
            }
            let Some(keys) = keys.as_table() else {
                assert!(
                    text.contains(&format!("# [[{section}]]")),
                    "{section} missing"
                );
                continue;
            };
            assert!(
                text.contains(&format!("\n[{section}]\n")),
                "{section} missing"
            );
            for key in keys.keys() {
                let shown = [format!("\n{key} = "), format!("# [[{section}.{key}]]\n")];
                assert!(
                    shown.iter().any(|s| text.contains(s)),
                    "{section}.{key} missing"
                );
            }
        }
    }
}
