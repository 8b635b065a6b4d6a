//! How objects become stored bytes and back.
//!
//! Objects are stored as their JSON encoding with `metadata.resourceVersion` (and the
//! deprecated `metadata.selfLink`) removed, exactly as upstream's `PrepareObjectForStorage`:
//! the resource version is not data but the key's `mod_revision`, set on every read. Keeping it
//! out of the value is also what makes "the update changed nothing" a byte comparison.

use serde_json::{Map, Value};

use crate::StorageError;

/// Removes the fields that are never stored and returns the bytes to store.
pub(crate) fn encode(obj: &mut Value) -> Result<Vec<u8>, StorageError> {
    let map = obj
        .as_object_mut()
        .ok_or_else(|| StorageError::InvalidObject("the object is not a JSON object".into()))?;
    if let Some(Value::Object(meta)) = map.get_mut("metadata") {
        meta.remove("resourceVersion");
        meta.remove("selfLink");
    }
    serde_json::to_vec(obj).map_err(|e| StorageError::InvalidObject(e.to_string()))
}

/// Decodes stored bytes and sets `metadata.resourceVersion` to `rev`.
pub(crate) fn decode(key: &[u8], data: &[u8], rev: i64) -> Result<Value, StorageError> {
    let mut obj: Value = serde_json::from_slice(data).map_err(|e| {
        StorageError::InvalidObject(format!(
            "stored value of {:?} is not JSON: {e}",
            String::from_utf8_lossy(key)
        ))
    })?;
    if !obj.is_object() {
        return Err(StorageError::InvalidObject(format!(
            "stored value of {:?} is not a JSON object",
            String::from_utf8_lossy(key)
        )));
    }
    set_resource_version(&mut obj, rev);
    Ok(obj)
}

/// Sets `metadata.resourceVersion` (creating `metadata` if needed). No-op on non-objects.
pub(crate) fn set_resource_version(obj: &mut Value, rev: i64) {
    let Some(map) = obj.as_object_mut() else {
        return;
    };
    let meta = map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    if let Some(meta) = meta.as_object_mut() {
        meta.insert("resourceVersion".into(), Value::String(rev.to_string()));
    }
}

/// The stored JSON `plain` with `"resourceVersion":"<rev>"` spliced in as the first key of its
/// top-level `metadata` object: what encoding the decoded object (with its resourceVersion
/// set) would give, key order aside, without an encode. The watch cache turns every event
/// into response bytes this way; it used to decode *and* re-encode each one. `None` (the
/// caller encodes instead) when the bytes have no top-level `metadata` object or it already
/// names a `resourceVersion` (stored values never do: [`encode`] strips it).
pub(crate) fn splice_resource_version(plain: &[u8], rev: i64) -> Option<Vec<u8>> {
    let open = top_level_object_key(plain, 0, b"metadata")?;
    if plain.get(open) != Some(&b'{') {
        return None;
    }
    if top_level_object_key(plain, open, b"resourceVersion").is_some() {
        return None;
    }
    let first = open + 1 + skip_ws(&plain[open + 1..]);
    let empty = plain.get(first) == Some(&b'}');
    let rv = format!(
        "\"resourceVersion\":\"{rev}\"{}",
        if empty { "" } else { "," }
    );
    let mut out = Vec::with_capacity(plain.len() + rv.len());
    out.extend_from_slice(&plain[..=open]);
    out.extend_from_slice(rv.as_bytes());
    out.extend_from_slice(&plain[open + 1..]);
    Some(out)
}

fn skip_ws(b: &[u8]) -> usize {
    b.iter().take_while(|c| c.is_ascii_whitespace()).count()
}

/// In the JSON object starting at `b[start]` (`{`), the index of the first byte of the value of
/// its direct key `key` (compared unescaped-as-written), or `None`. Strings, nesting and escapes
/// are followed, so a key of the same name deeper down or inside a string does not match.
fn top_level_object_key(b: &[u8], start: usize, key: &[u8]) -> Option<usize> {
    let start = start + skip_ws(b.get(start..)?);
    if b.get(start) != Some(&b'{') {
        return None;
    }
    let mut depth = 0usize;
    let mut i = start;
    while i < b.len() {
        match b[i] {
            b'"' => {
                let s = i + 1;
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                if i >= b.len() {
                    return None;
                }
                let text = &b[s..i];
                i += 1;
                let colon = i + skip_ws(&b[i..]);
                if depth == 1 && text == key && b.get(colon) == Some(&b':') {
                    let v = colon + 1;
                    return Some(v + skip_ws(&b[v..]));
                }
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return None;
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// A string field of `metadata` ("" when absent, as Go's zero value).
pub(crate) fn meta_str<'a>(obj: Option<&'a Value>, field: &str) -> &'a str {
    obj.and_then(|o| o.get("metadata"))
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// Parses a resource version as upstream's `APIObjectVersioner.ParseResourceVersion`: "" is 0,
/// anything else must be an unsigned integer.
pub(crate) fn parse_resource_version(rv: &str) -> Result<u64, StorageError> {
    if rv.is_empty() {
        return Ok(0);
    }
    rv.parse::<u64>()
        .map_err(|e| StorageError::BadRequest(format!("invalid resource version: {rv:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn encode_strips_and_decode_sets_resource_version() {
        let mut o =
            json!({"kind":"Pod","metadata":{"name":"a","resourceVersion":"7","selfLink":"/x"}});
        let bytes = encode(&mut o).unwrap();
        let stored: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(stored, json!({"kind":"Pod","metadata":{"name":"a"}}));
        let back = decode(b"k", &bytes, 42).unwrap();
        assert_eq!(back["metadata"]["resourceVersion"], "42");
        assert!(encode(&mut json!([1])).is_err());
        assert!(decode(b"k", b"not json", 1).is_err());
        assert!(decode(b"k", b"[1]", 1).is_err());
        let mut no_meta = json!({"kind":"X"});
        set_resource_version(&mut no_meta, 3);
        assert_eq!(no_meta["metadata"]["resourceVersion"], "3");
    }

    #[test]
    fn resource_version_splice_equals_the_encoded_object() {
        for o in [
            json!({"kind": "Pod", "metadata": {"name": "a", "labels": {"resourceVersion": "x"}}, "spec": {"s": "\"metadata\":{"}}),
            json!({"a": [{"metadata": {}}], "metadata": {}}),
            json!({"metadata": {"annotations": {"k": "v\\\"}"}}, "z": 1}),
        ] {
            let mut stored = o.clone();
            let bytes = encode(&mut stored).unwrap();
            let spliced = splice_resource_version(&bytes, 42).unwrap();
            let got: Value = serde_json::from_slice(&spliced).unwrap();
            assert_eq!(got, decode(b"k", &bytes, 42).unwrap(), "{o}");
        }
        // No top-level metadata object, or one already naming a resourceVersion: encode.
        assert!(splice_resource_version(br#"{"spec":{"metadata":{}}}"#, 1).is_none());
        assert!(splice_resource_version(br#"{"metadata":null}"#, 1).is_none());
        assert!(splice_resource_version(br#"{"metadata":{"resourceVersion":"3"}}"#, 1).is_none());
    }

    #[test]
    fn resource_versions_parse_like_upstream() {
        assert_eq!(parse_resource_version("").unwrap(), 0);
        assert_eq!(parse_resource_version("12").unwrap(), 12);
        assert!(parse_resource_version("-1").is_err());
        assert!(parse_resource_version("abc").is_err());
    }
}
