//! Structural schemas at work on custom resources: validation, pruning and defaulting.
//!
//! A structural schema (what apiextensions.k8s.io/v1 requires, see `validation.rs`) says at
//! every node which type the value has and which fields exist, so one walk over the object
//! can do what upstream does in three passes:
//! - [`validate`]: types (with `nullable` and `x-kubernetes-int-or-string`), `required`,
//!   `enum`, numeric bounds, string length and `pattern`, item counts, and the embedded
//!   resource's `apiVersion`/`kind`, `format` (the formats upstream knows), `allOf`/`anyOf`/
//!   `oneOf`/`not` and unique items of `x-kubernetes-list-type` set/map lists; causes carry
//!   upstream's field paths and messages
//!   (`spec.replicas: Invalid value: "string": spec.replicas in body must be of type integer: "string"`);
//! - [`prune`]: fields the schema does not declare are dropped unless
//!   `x-kubernetes-preserve-unknown-fields` is set (returning their paths is also what
//!   `fieldValidation=Strict|Warn` reports);
//! - [`default`]: `default` values are filled in where a field is absent (and, as upstream,
//!   where it is `null` but not `nullable`).
//!
//! The schema is the CRD's `openAPIV3Schema` as JSON; the walker is hand-written because the
//! structural rules (pruning, int-or-string, embedded resources, upstream's messages) are not
//! what generic JSON Schema crates implement.

use kelson_apimachinery::StatusCause;
use serde_json::{json, Map, Value};

fn child(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

fn preserves(s: &Value) -> bool {
    s["x-kubernetes-preserve-unknown-fields"] == true
}

fn embedded(s: &Value) -> bool {
    s["x-kubernetes-embedded-resource"] == true
}

/// Go's `%v`-ish rendering of a value inside a message (`"string"`, `5`, `true`).
fn show(v: &Value) -> String {
    v.to_string()
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn type_ok(ty: &str, v: &Value) -> bool {
    match ty {
        "" => true,
        "number" => v.is_number(),
        "integer" => {
            v.is_i64()
                || v.is_u64()
                || v.as_f64()
                    .is_some_and(|f| f.fract() == 0.0 && f.is_finite())
        }
        other => json_type(v) == other,
    }
}

/// Validates `obj` (a whole custom resource) against the version's root schema.
pub fn validate(schema: &Value, obj: &Value) -> Vec<StatusCause> {
    let mut out = Vec::new();
    // apiVersion, kind and metadata are the server's; the schema governs the rest.
    if let (Some(props), Some(o)) = (schema["properties"].as_object(), obj.as_object()) {
        let required: Vec<&str> = schema["required"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        for r in required {
            if o.get(r).is_none() {
                out.push(StatusCause::required(r));
            }
        }
        for (k, v) in o {
            if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            if let Some(s) = props.get(k) {
                walk(s, v, k, &mut out);
            }
        }
    }
    out
}

fn walk(s: &Value, v: &Value, path: &str, out: &mut Vec<StatusCause>) {
    let ty = s["type"].as_str().unwrap_or_default();
    if v.is_null() {
        if s["nullable"] == true
            || (ty.is_empty() && !s["x-kubernetes-int-or-string"].as_bool().unwrap_or(false))
        {
            return;
        }
        out.push(type_invalid(
            path,
            if ty.is_empty() { "string" } else { ty },
            v,
        ));
        return;
    }
    if s["x-kubernetes-int-or-string"] == true {
        if !(v.is_string() || type_ok("integer", v)) {
            out.push(type_invalid(path, "integer,string", v));
            return;
        }
    } else if !type_ok(ty, v) {
        out.push(type_invalid(path, ty, v));
        return;
    }
    if let Some(e) = s["enum"].as_array() {
        if !e.contains(v) {
            let vals: Vec<String> = e.iter().map(show).collect();
            out.push(StatusCause {
                reason: "FieldValueNotSupported".into(),
                message: format!(
                    "Unsupported value: {}: supported values: {}",
                    show(v),
                    vals.join(", ")
                ),
                field: path.into(),
            });
        }
    }
    let bad =
        |msg: String| StatusCause::invalid(path, format!("Invalid value: {}: {msg}", show(v)));
    if let Some(n) = v.as_f64() {
        let excl_max = s["exclusiveMaximum"] == true;
        let excl_min = s["exclusiveMinimum"] == true;
        if let Some(max) = s["maximum"].as_f64() {
            if n > max || (excl_max && n == max) {
                let rel = if excl_max {
                    "less than"
                } else {
                    "less than or equal to"
                };
                out.push(bad(format!(
                    "{path} in body should be {rel} {}",
                    s["maximum"]
                )));
            }
        }
        if let Some(min) = s["minimum"].as_f64() {
            if n < min || (excl_min && n == min) {
                let rel = if excl_min {
                    "greater than"
                } else {
                    "greater than or equal to"
                };
                out.push(bad(format!(
                    "{path} in body should be {rel} {}",
                    s["minimum"]
                )));
            }
        }
        if let Some(m) = s["multipleOf"].as_f64().filter(|m| *m > 0.0) {
            if (n / m).fract() != 0.0 {
                out.push(bad(format!(
                    "{path} in body should be a multiple of {}",
                    s["multipleOf"]
                )));
            }
        }
    }
    if let Some(st) = v.as_str() {
        let len = st.chars().count() as u64;
        if let Some(max) = s["maxLength"].as_u64() {
            if len > max {
                out.push(StatusCause {
                    reason: "FieldValueTooLong".into(),
                    message: format!("Too long: may not be more than {max} bytes"),
                    field: path.into(),
                });
            }
        }
        if let Some(min) = s["minLength"].as_u64() {
            if len < min {
                out.push(bad(format!(
                    "{path} in body should be at least {min} chars long"
                )));
            }
        }
        if let Some(p) = s["pattern"].as_str() {
            match regex::Regex::new(p) {
                Ok(re) if !re.is_match(st) => {
                    out.push(bad(format!("{path} in body should match '{p}'")))
                }
                _ => {}
            }
        }
        if let Some(f) = s["format"].as_str() {
            if format_ok(f, st) == Some(false) {
                out.push(bad(format!(
                    "{path} in body must be of type {f}: {}",
                    show(v)
                )));
            }
        }
    }
    if let Some(items) = v.as_array() {
        if let Some(max) = s["maxItems"].as_u64() {
            if items.len() as u64 > max {
                out.push(StatusCause {
                    reason: "FieldValueTooMany".into(),
                    message: format!("Too many: {}: must have at most {max} items", items.len()),
                    field: path.into(),
                });
            }
        }
        if let Some(min) = s["minItems"].as_u64() {
            if (items.len() as u64) < min {
                out.push(bad(format!(
                    "{path} in body should have at least {min} items"
                )));
            }
        }
        if s["items"].is_object() {
            for (i, it) in items.iter().enumerate() {
                walk(&s["items"], it, &format!("{path}[{i}]"), out);
            }
        }
        list_uniqueness(s, items, path, out);
    }
    if let Some(o) = v.as_object() {
        if let Some(req) = s["required"].as_array() {
            for r in req.iter().filter_map(Value::as_str) {
                if o.get(r).is_none() {
                    out.push(StatusCause::required(&child(path, r)));
                }
            }
        }
        if embedded(s) {
            for f in ["apiVersion", "kind"] {
                if o.get(f).and_then(Value::as_str).is_none_or(str::is_empty) {
                    out.push(StatusCause::required(&child(path, f)));
                }
            }
        }
        if let Some(max) = s["maxProperties"].as_u64() {
            if o.len() as u64 > max {
                out.push(StatusCause {
                    reason: "FieldValueTooMany".into(),
                    message: format!("Too many: {}: must have at most {max} items", o.len()),
                    field: path.into(),
                });
            }
        }
        let props = s["properties"].as_object();
        for (k, cv) in o {
            if embedded(s) && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            if let Some(cs) = props.and_then(|p| p.get(k)) {
                walk(cs, cv, &child(path, k), out);
            } else if s["additionalProperties"].is_object() {
                walk(&s["additionalProperties"], cv, &child(path, k), out);
            }
        }
    }
    junctors(s, v, path, out);
}

/// `allOf`, `anyOf`, `oneOf` and `not`: in a structural schema they carry value validations
/// only (no types), checked against the same value; messages as go-openapi's (which upstream
/// passes through as `Invalid value` causes).
fn junctors(s: &Value, v: &Value, path: &str, out: &mut Vec<StatusCause>) {
    let errors_of = |sub: &Value| {
        let mut e = Vec::new();
        walk(sub, v, path, &mut e);
        e
    };
    let bad =
        |msg: String| StatusCause::invalid(path, format!("Invalid value: {}: {msg}", show(v)));
    if let Some(all) = s["allOf"].as_array() {
        for sub in all {
            out.extend(errors_of(sub));
        }
    }
    if let Some(any) = s["anyOf"].as_array() {
        if !any.is_empty() && !any.iter().any(|sub| errors_of(sub).is_empty()) {
            out.push(bad(format!(
                "{path} in body must validate at least one schema (anyOf)"
            )));
        }
    }
    if let Some(one) = s["oneOf"].as_array() {
        let passing = one.iter().filter(|sub| errors_of(sub).is_empty()).count();
        if !one.is_empty() && passing != 1 {
            out.push(bad(format!(
                "{path} in body must validate one and only one schema (oneOf)"
            )));
        }
    }
    if s["not"].is_object() && errors_of(&s["not"]).is_empty() {
        out.push(bad(format!(
            "{path} in body must not validate the schema (not)"
        )));
    }
}

/// `x-kubernetes-list-type: set` items and `map` items' keys must be unique (upstream:
/// `Duplicate value` causes at the later item's index).
fn list_uniqueness(s: &Value, items: &[Value], path: &str, out: &mut Vec<StatusCause>) {
    let keys: Vec<&str> = s["x-kubernetes-list-map-keys"]
        .as_array()
        .map(|k| k.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let identity = |it: &Value| -> Option<Value> {
        match s["x-kubernetes-list-type"].as_str() {
            Some("set") => Some(it.clone()),
            Some("map") if !keys.is_empty() => {
                let mut m = Map::new();
                for k in &keys {
                    if let Some(x) = it.get(*k) {
                        m.insert((*k).to_string(), x.clone());
                    }
                }
                Some(Value::Object(m))
            }
            _ => None,
        }
    };
    let mut seen: Vec<Value> = Vec::new();
    for (i, it) in items.iter().enumerate() {
        let Some(id) = identity(it) else { return };
        if seen.contains(&id) {
            out.push(StatusCause {
                reason: "FieldValueDuplicate".into(),
                message: format!("Duplicate value: {}", show(&id)),
                field: format!("{path}[{i}]"),
            });
        } else {
            seen.push(id);
        }
    }
}

/// Checks a string against the formats upstream's CRD validation knows (`format` values it
/// does not know are accepted, as upstream); `None` for an unknown format.
fn format_ok(format: &str, st: &str) -> Option<bool> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use std::str::FromStr;
    let re = |p: &str| regex::Regex::new(p).is_ok_and(|r| r.is_match(st));
    Some(match format {
        "date-time" | "datetime" => k8s_openapi::jiff::Timestamp::from_str(st).is_ok(),
        "date" => k8s_openapi::jiff::civil::Date::from_str(st).is_ok() && st.len() == 10,
        "ipv4" => Ipv4Addr::from_str(st).is_ok(),
        "ipv6" => Ipv6Addr::from_str(st).is_ok(),
        "cidr" => {
            st.split_once('/')
                .is_some_and(|(a, n)| match (IpAddr::from_str(a), n.parse::<u8>()) {
                    (Ok(IpAddr::V4(_)), Ok(n)) => n <= 32,
                    (Ok(IpAddr::V6(_)), Ok(n)) => n <= 128,
                    _ => false,
                })
        }
        "mac" => re(r"^([0-9A-Fa-f]{2}[:-]){5}[0-9A-Fa-f]{2}$"),
        "uuid" => re(r"^(?i)[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$"),
        "uuid3" | "uuid4" | "uuid5" => {
            let ver = &format[4..];
            re(&format!(
                r"^(?i)[0-9a-f]{{8}}-?[0-9a-f]{{4}}-?{ver}[0-9a-f]{{3}}-?[0-9a-f]{{4}}-?[0-9a-f]{{12}}$"
            ))
        }
        "hostname" => {
            st.len() <= 253
                && re(
                    r"^[a-zA-Z0-9]([-a-zA-Z0-9]{0,61}[a-zA-Z0-9])?(\.[a-zA-Z0-9]([-a-zA-Z0-9]{0,61}[a-zA-Z0-9])?)*$",
                )
        }
        "email" => re(r"^[^@\s]+@[^@\s]+$"),
        "uri" => re(r"^[a-zA-Z][a-zA-Z0-9+.-]*:"),
        "byte" => {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.decode(st).is_ok()
        }
        _ => return None,
    })
}

fn type_invalid(path: &str, ty: &str, v: &Value) -> StatusCause {
    let shown = json_type(v);
    StatusCause {
        reason: "FieldValueTypeInvalid".into(),
        message: format!(
            "Invalid value: \"{shown}\": {path} in body must be of type {ty}: \"{shown}\""
        ),
        field: path.into(),
    }
}

/// Drops the fields the schema does not declare (except where unknown fields are preserved)
/// and returns their paths. `apiVersion`, `kind` and `metadata` at the root are kept (the
/// metadata of embedded resources keeps only what ObjectMeta has, which is not checked here).
pub fn prune(schema: &Value, obj: &mut Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(o) = obj.as_object_mut() {
        prune_object(schema, o, "", true, &mut out);
    }
    out.sort();
    out
}

fn prune_object(
    s: &Value,
    o: &mut Map<String, Value>,
    path: &str,
    root: bool,
    out: &mut Vec<String>,
) {
    let props = s["properties"].as_object();
    let addl = &s["additionalProperties"];
    let keep_unknown = preserves(s) || addl == &Value::Bool(true);
    let mut drop = Vec::new();
    for (k, v) in o.iter_mut() {
        if (root || embedded(s)) && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        let cs = props
            .and_then(|p| p.get(k))
            .or(if addl.is_object() { Some(addl) } else { None });
        match cs {
            Some(cs) => prune_value(cs, v, &child(path, k), out),
            None if keep_unknown => {}
            None => drop.push(k.clone()),
        }
    }
    for k in drop {
        o.remove(&k);
        out.push(child(path, &k));
    }
}

fn prune_value(s: &Value, v: &mut Value, path: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(o)
            if s["properties"].is_object()
                || s["additionalProperties"].is_object()
                || !preserves(s) && s["type"] == "object" =>
        {
            prune_object(s, o, path, false, out)
        }
        Value::Array(a) if s["items"].is_object() => {
            for (i, it) in a.iter_mut().enumerate() {
                prune_value(&s["items"], it, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Fills in `default`s of absent fields, top-down (a defaulted object gets its own children's
/// defaults too).
pub fn default(schema: &Value, obj: &mut Value) {
    default_value(schema, obj);
}

fn default_value(s: &Value, v: &mut Value) {
    match v {
        Value::Object(o) => {
            if let Some(props) = s["properties"].as_object() {
                for (k, cs) in props {
                    let absent = match o.get(k) {
                        None => true,
                        Some(Value::Null) => cs["nullable"] != true,
                        _ => false,
                    };
                    if absent {
                        if let Some(d) = cs.get("default") {
                            o.insert(k.clone(), d.clone());
                        }
                    }
                }
                for (k, cv) in o.iter_mut() {
                    if let Some(cs) = props.get(k) {
                        default_value(cs, cv);
                    }
                }
            } else if s["additionalProperties"].is_object() {
                for cv in o.values_mut() {
                    default_value(&s["additionalProperties"], cv);
                }
            }
        }
        Value::Array(a) if s["items"].is_object() => {
            for it in a.iter_mut() {
                default_value(&s["items"], it);
            }
        }
        _ => {}
    }
}

/// The value at a simple JSON path (`.spec.replicas`), as `specReplicasPath` and friends use.
pub fn at_path<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = obj;
    for seg in path
        .trim_start_matches('.')
        .split('.')
        .filter(|s| !s.is_empty())
    {
        cur = cur.get(seg)?;
    }
    Some(cur)
}

/// Sets the value at a simple JSON path, creating objects on the way.
pub fn set_path(obj: &mut Value, path: &str, val: Value) {
    let segs: Vec<&str> = path
        .trim_start_matches('.')
        .split('.')
        .filter(|s| !s.is_empty())
        .collect();
    let mut cur = obj;
    for (i, seg) in segs.iter().enumerate() {
        if !cur.is_object() {
            *cur = json!({});
        }
        if i == segs.len() - 1 {
            cur[*seg] = val;
            return;
        }
        cur = &mut cur[*seg];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "spec": {"type": "object", "required": ["cronSpec"], "properties": {
                "cronSpec": {"type": "string", "pattern": "^\\S+ \\S+$"},
                "replicas": {"type": "integer", "minimum": 1, "maximum": 10, "default": 1},
                "mode": {"type": "string", "enum": ["a", "b"]},
                "port": {"x-kubernetes-int-or-string": true},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}}
            }},
            "status": {"type": "object", "properties": {"replicas": {"type": "integer"}}}
        }})
    }

    #[test]
    fn validation_messages() {
        let s = schema();
        let o = json!({"spec": {"cronSpec": 5, "replicas": 11, "mode": "c", "port": true, "tags": ["abcd"], "labels": {"x": 1}}});
        let c = validate(&s, &o);
        let got: Vec<String> = c
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        assert!(got.contains(&"spec.cronSpec: Invalid value: \"integer\": spec.cronSpec in body must be of type string: \"integer\"".to_string()), "{got:?}");
        assert!(got.contains(&"spec.replicas: Invalid value: 11: spec.replicas in body should be less than or equal to 10".to_string()), "{got:?}");
        assert!(
            got.contains(
                &"spec.mode: Unsupported value: \"c\": supported values: \"a\", \"b\"".to_string()
            ),
            "{got:?}"
        );
        assert!(
            got.iter()
                .any(|m| m.starts_with("spec.port: Invalid value: \"boolean\"")),
            "{got:?}"
        );
        assert!(
            got.iter().any(|m| m.starts_with("spec.tags[0]: Too long")),
            "{got:?}"
        );
        assert!(
            got.iter()
                .any(|m| m.starts_with("spec.labels.x: Invalid value")),
            "{got:?}"
        );
        let missing = validate(&s, &json!({"spec": {}}));
        assert_eq!(missing[0].field, "spec.cronSpec");
        assert_eq!(missing[0].reason, "FieldValueRequired");
        assert!(validate(&s, &json!({"spec": {"cronSpec": "a b", "port": "http"}})).is_empty());
        assert!(!validate(&s, &json!({"spec": {"cronSpec": "ab"}})).is_empty());
    }

    #[test]
    fn junctors_formats_and_list_uniqueness() {
        let s = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "when": {"type": "string", "format": "date-time"},
            "addr": {"type": "string", "format": "ipv4"},
            "net": {"type": "string", "format": "cidr"},
            "odd": {"type": "string", "format": "no-such-format"},
            "size": {"x-kubernetes-int-or-string": true,
                     "anyOf": [{"type": "integer"}, {"type": "string", "pattern": "^[0-9]+Gi$"}]},
            "one": {"type": "integer", "oneOf": [{"minimum": 5}, {"maximum": 7}]},
            "both": {"type": "integer", "allOf": [{"minimum": 1}, {"maximum": 3}]},
            "notTwo": {"type": "integer", "not": {"enum": [2]}},
            "tags": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
            "ports": {"type": "array", "x-kubernetes-list-type": "map",
                      "x-kubernetes-list-map-keys": ["name"],
                      "items": {"type": "object", "properties": {
                          "name": {"type": "string"}, "port": {"type": "integer"}}}}
        }}}});
        let good = json!({"spec": {"when": "2026-11-21T18:00:00Z", "addr": "10.0.0.1",
            "net": "10.0.0.0/8", "odd": "anything", "size": "5Gi", "one": 3, "both": 2,
            "notTwo": 3, "tags": ["a", "b"], "ports": [{"name": "a", "port": 1}, {"name": "b", "port": 1}]}});
        assert!(validate(&s, &good).is_empty(), "{:?}", validate(&s, &good));
        let bad = json!({"spec": {"when": "yesterday", "addr": "10.0.0.256", "net": "10.0.0.0/33",
            "size": "5Mi", "one": 6, "both": 4, "notTwo": 2, "tags": ["a", "a"],
            "ports": [{"name": "a", "port": 1}, {"name": "a", "port": 2}]}});
        let got: Vec<String> = validate(&s, &bad)
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        for want in [
            "spec.when: Invalid value: \"yesterday\": spec.when in body must be of type date-time: \"yesterday\"",
            "spec.addr: Invalid value: \"10.0.0.256\": spec.addr in body must be of type ipv4: \"10.0.0.256\"",
            "spec.size: Invalid value: \"5Mi\": spec.size in body must validate at least one schema (anyOf)",
            "spec.one: Invalid value: 6: spec.one in body must validate one and only one schema (oneOf)",
            "spec.both: Invalid value: 4: spec.both in body should be less than or equal to 3",
            "spec.notTwo: Invalid value: 2: spec.notTwo in body must not validate the schema (not)",
            "spec.tags[1]: Duplicate value: \"a\"",
            "spec.ports[1]: Duplicate value: {\"name\":\"a\"}",
        ] {
            assert!(got.iter().any(|g| g == want), "missing {want:?} in {got:#?}");
        }
        assert!(got.iter().any(|g| g.starts_with("spec.net: ")), "{got:?}");
        assert_eq!(got.len(), 9, "{got:#?}");
    }

    #[test]
    fn pruning_and_defaults() {
        let s = schema();
        let mut o = json!({"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "n"},
            "junk": 1, "spec": {"cronSpec": "a b", "bogus": true, "free": {"any": {"thing": 1}}}});
        let pruned = prune(&s, &mut o);
        assert_eq!(pruned, vec!["junk".to_string(), "spec.bogus".to_string()]);
        assert_eq!(o["spec"]["free"]["any"]["thing"], 1);
        default(&s, &mut o);
        assert_eq!(o["spec"]["replicas"], 1);
        assert_eq!(o["metadata"]["name"], "n");
        let mut p = json!({"spec": {}});
        set_path(&mut p, ".spec.replicas", json!(3));
        assert_eq!(at_path(&p, ".spec.replicas"), Some(&json!(3)));
    }
}
