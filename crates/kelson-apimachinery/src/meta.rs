//! Object-meta helpers: uids, generated names, timestamps, and accessors on `Value` objects.
//!
//! Objects travel through the API server as `serde_json::Value`, so instead of typed
//! `ObjectMeta` this module offers small accessors that read and write `metadata.*` and the
//! type meta (`apiVersion`, `kind`) in place, leaving every other field untouched.
//! Generated names use upstream's `utilrand.String` alphabet (no vowels, no confusable
//! characters) and its 58-character base limit, so names look exactly like upstream's.

use rand::Rng;
use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Upstream's alphabet for random name suffixes: consonants and digits that cannot spell words
/// or be confused with each other.
pub const NAME_SUFFIX_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
/// Length of the random suffix `generateName` appends.
pub const NAME_SUFFIX_LENGTH: usize = 5;
/// Longest base kept from a `generateName` prefix (63 - 5), as upstream.
pub const MAX_GENERATED_NAME_BASE: usize = 63 - NAME_SUFFIX_LENGTH;

/// A new object uid: a random (v4) UUID in its hyphenated lowercase form.
pub fn new_uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// `names.SimpleNameGenerator.GenerateName`: the prefix (cut to 58 bytes at a character
/// boundary) plus five random characters from [`NAME_SUFFIX_ALPHABET`].
pub fn generate_name(prefix: &str) -> String {
    let mut end = prefix.len().min(MAX_GENERATED_NAME_BASE);
    while !prefix.is_char_boundary(end) {
        end -= 1;
    }
    let mut rng = rand::thread_rng();
    let mut out = String::with_capacity(end + NAME_SUFFIX_LENGTH);
    out.push_str(&prefix[..end]);
    for _ in 0..NAME_SUFFIX_LENGTH {
        let i = rng.gen_range(0..NAME_SUFFIX_ALPHABET.len());
        out.push(NAME_SUFFIX_ALPHABET[i] as char);
    }
    out
}

/// A time as `metav1.Time` serializes it: RFC 3339, UTC, second precision, `Z` suffix.
pub fn format_rfc3339(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// The current time as [`format_rfc3339`] prints it.
pub fn now_rfc3339() -> String {
    format_rfc3339(OffsetDateTime::now_utc())
}

/// Parses an RFC 3339 timestamp (any offset, optional fraction); `None` when malformed.
pub fn parse_rfc3339(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

/// The object's `metadata` map, if any.
pub fn metadata(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata").and_then(Value::as_object)
}

/// The object's `metadata` map, created (or replaced, if it was not a map) when needed.
/// `None` when `obj` itself is not a JSON object.
pub fn metadata_mut(obj: &mut Value) -> Option<&mut Map<String, Value>> {
    let o = obj.as_object_mut()?;
    let m = o
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !m.is_object() {
        *m = Value::Object(Map::new());
    }
    m.as_object_mut()
}

/// A string field of `metadata` (`name`, `namespace`, `uid`, `resourceVersion`, ...).
pub fn meta_str<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    metadata(obj)?.get(key)?.as_str()
}

/// Sets `metadata.<key>`; false when `obj` is not a JSON object.
pub fn set_meta(obj: &mut Value, key: &str, value: Value) -> bool {
    match metadata_mut(obj) {
        Some(m) => {
            m.insert(key.to_string(), value);
            true
        }
        None => false,
    }
}

/// Removes `metadata.<key>`, returning the old value.
pub fn remove_meta(obj: &mut Value, key: &str) -> Option<Value> {
    obj.get_mut("metadata")?.as_object_mut()?.remove(key)
}

/// `metadata.name`, or `""`.
pub fn name(obj: &Value) -> &str {
    meta_str(obj, "name").unwrap_or("")
}

/// `metadata.namespace`, or `""`.
pub fn namespace(obj: &Value) -> &str {
    meta_str(obj, "namespace").unwrap_or("")
}

/// `metadata.uid`, or `""`.
pub fn uid(obj: &Value) -> &str {
    meta_str(obj, "uid").unwrap_or("")
}

/// `metadata.resourceVersion`, or `""`.
pub fn resource_version(obj: &Value) -> &str {
    meta_str(obj, "resourceVersion").unwrap_or("")
}

/// `metadata.labels` as a JSON object (empty when absent).
pub fn labels(obj: &Value) -> Map<String, Value> {
    metadata(obj)
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

/// `metadata.finalizers` as strings (empty when absent).
pub fn finalizers(obj: &Value) -> Vec<String> {
    metadata(obj)
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// `apiVersion` and `kind`, `""` when absent.
pub fn type_meta(obj: &Value) -> (&str, &str) {
    (
        obj.get("apiVersion").and_then(Value::as_str).unwrap_or(""),
        obj.get("kind").and_then(Value::as_str).unwrap_or(""),
    )
}

/// Sets `apiVersion` and `kind`; false when `obj` is not a JSON object.
pub fn set_type_meta(obj: &mut Value, api_version: &str, kind: &str) -> bool {
    match obj.as_object_mut() {
        Some(o) => {
            o.insert("apiVersion".into(), Value::String(api_version.into()));
            o.insert("kind".into(), Value::String(kind.into()));
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn uid_is_v4() {
        let u = new_uid();
        let parsed = uuid::Uuid::parse_str(&u).unwrap();
        assert_eq!(parsed.get_version_num(), 4);
        assert_eq!(u.len(), 36);
        assert_ne!(u, new_uid());
    }

    #[test]
    fn generated_names_use_upstream_alphabet_and_limit() {
        let n = generate_name("web-");
        assert_eq!(n.len(), 9);
        assert!(n.starts_with("web-"));
        assert!(n[4..].bytes().all(|b| NAME_SUFFIX_ALPHABET.contains(&b)));
        let long = "x".repeat(80);
        let n = generate_name(&long);
        assert_eq!(n.len(), 63);
        assert!(n.starts_with(&"x".repeat(58)));
        // Multi-byte characters are never split.
        let n = generate_name(&"é".repeat(40));
        assert!(n.len() <= 63);
    }

    #[test]
    fn timestamps() {
        let t = parse_rfc3339("2024-02-29T23:59:58.123+01:00").unwrap();
        assert_eq!(format_rfc3339(t), "2024-02-29T22:59:58Z");
        let now = now_rfc3339();
        assert_eq!(now.len(), 20);
        assert!(now.ends_with('Z'));
        assert!(parse_rfc3339(&now).is_some());
        assert!(parse_rfc3339("yesterday").is_none());
    }

    #[test]
    fn accessors() {
        let mut o = json!({"kind": "Pod", "apiVersion": "v1",
                           "metadata": {"name": "p", "namespace": "d", "labels": {"a": "b"},
                                        "finalizers": ["x/y"]}});
        assert_eq!((name(&o), namespace(&o), uid(&o)), ("p", "d", ""));
        assert_eq!(type_meta(&o), ("v1", "Pod"));
        assert_eq!(labels(&o)["a"], "b");
        assert_eq!(finalizers(&o), vec!["x/y"]);
        assert!(set_meta(&mut o, "resourceVersion", json!("5")));
        assert_eq!(resource_version(&o), "5");
        assert_eq!(remove_meta(&mut o, "resourceVersion"), Some(json!("5")));
        let mut bare = json!({});
        assert!(set_meta(&mut bare, "uid", json!("u")));
        assert_eq!(bare, json!({"metadata": {"uid": "u"}}));
        let mut not_obj = json!([1]);
        assert!(!set_meta(&mut not_obj, "uid", json!("u")));
        assert!(set_type_meta(&mut bare, "apps/v1", "Deployment"));
        assert_eq!(type_meta(&bare), ("apps/v1", "Deployment"));
    }
}
