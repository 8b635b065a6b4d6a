//! List continue tokens in upstream's format, so tokens are interchangeable with (and as
//! opaque to clients as) the real API server's: unpadded base64url of
//! `{"v":"meta.k8s.io/v1","rv":<list revision>,"start":"<next key relative to the prefix>"}`.
//!
//! `rv == -1` means "continue at the latest revision" (issued after the original revision was
//! compacted); `rv == 0` is never valid, so a token with a lost revision is rejected.
//! Decoding defends against path traversal: the start key is cleaned like Go's `path.Clean`
//! and must not change, so a crafted token cannot list outside its prefix.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::StorageError;

#[derive(Serialize, Deserialize)]
struct Token {
    v: String,
    rv: i64,
    start: String,
}

const VERSION: &str = "meta.k8s.io/v1";

/// Encodes a token that continues at `key` (which must be under `prefix`) at revision `rv`.
pub fn encode_continue(key: &str, prefix: &str, rv: i64) -> Result<String, StorageError> {
    let start = key.strip_prefix(prefix).ok_or_else(|| {
        StorageError::Internal(
            "unable to encode next field: the key and key prefix do not match".into(),
        )
    })?;
    let json = serde_json::to_vec(&Token {
        v: VERSION.into(),
        rv,
        start: start.into(),
    })
    .map_err(|e| StorageError::Internal(e.to_string()))?;
    Ok(URL_SAFE_NO_PAD.encode(json))
}

/// Decodes a token for a list of `prefix`: the absolute key to start at and the revision.
pub fn decode_continue(token: &str, prefix: &str) -> Result<(String, i64), StorageError> {
    let invalid = |detail: String| {
        StorageError::BadRequest(format!(
            "invalid continue token: continue key is not valid{detail}"
        ))
    };
    let data = URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .map_err(|e| invalid(format!(": {e}")))?;
    let t: Token = serde_json::from_slice(&data).map_err(|e| invalid(format!(": {e}")))?;
    if t.v != VERSION {
        return Err(invalid(format!(
            ": server does not recognize this encoded version {}",
            t.v
        )));
    }
    if t.rv == 0 {
        return Err(invalid(
            ": incorrect encoded start resourceVersion (version meta.k8s.io/v1)".into(),
        ));
    }
    if t.start.is_empty() {
        return Err(invalid(
            ": encoded start key empty (version meta.k8s.io/v1)".into(),
        ));
    }
    let key = if t.start.starts_with('/') {
        t.start.clone()
    } else {
        format!("/{}", t.start)
    };
    if clean_path(&key) != key {
        return Err(invalid(format!(": {}", t.start)));
    }
    Ok((format!("{prefix}{}", &key[1..]), t.rv))
}

/// Go's `path.Clean` for absolute paths: collapses `//`, drops `.`, resolves `..`, and removes
/// a trailing slash.
fn clean_path(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_matches_upstream_format() {
        let t = encode_continue("/registry/pods/ns/b\u{0}", "/registry/pods/", 12).unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&t).unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"v":"meta.k8s.io/v1","rv":12,"start":"ns/b\u{0}"})
        );
        assert!(!t.contains('='));
        let (key, rv) = decode_continue(&t, "/registry/pods/").unwrap();
        assert_eq!((key.as_str(), rv), ("/registry/pods/ns/b\u{0}", 12));
        // A token with rv -1 (after compaction) is valid.
        let t = encode_continue("/p/x", "/p/", -1).unwrap();
        assert_eq!(decode_continue(&t, "/p/").unwrap().1, -1);
        assert!(encode_continue("/other/x", "/p/", 1).is_err());
    }

    #[test]
    fn bad_tokens_are_rejected() {
        let enc = |s: &str| URL_SAFE_NO_PAD.encode(s);
        for bad in [
            "%%%".to_string(),
            enc("not json"),
            enc(r#"{"v":"other","rv":1,"start":"a"}"#),
            enc(r#"{"v":"meta.k8s.io/v1","rv":0,"start":"a"}"#),
            enc(r#"{"v":"meta.k8s.io/v1","rv":1,"start":""}"#),
            enc(r#"{"v":"meta.k8s.io/v1","rv":1,"start":"../../secrets/x"}"#),
            enc(r#"{"v":"meta.k8s.io/v1","rv":1,"start":"a/../../b"}"#),
        ] {
            let e = decode_continue(&bad, "/registry/pods/").unwrap_err();
            assert_eq!(e.http_code(), 400, "{bad}: {e}");
        }
    }
}
