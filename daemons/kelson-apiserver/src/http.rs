//! HTTP plumbing: bodies, content negotiation, request decoding and responses.
//!
//! Negotiation follows the API server's rules as kubectl exercises them: `Accept` is a list of
//! media ranges tried in order; `application/json` with `as=Table;g=meta.k8s.io;v=v1` (or
//! v1beta1) asks for a server-side Table, `as=PartialObjectMetadata(List)` for metadata only;
//! `application/yaml` for YAML; protobuf and anything
//! else we do not speak is skipped, and if nothing matches the answer is 406. Request bodies
//! are JSON or YAML (415 otherwise) and at most 3 MiB (413), read with a hard cap so a huge
//! body is refused before it is buffered.

use std::convert::Infallible;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited};
use serde_json::Value;

use kelson_apimachinery::ApiError;

pub type Body = BoxBody<Bytes, std::io::Error>;

/// Request bodies larger than this are refused with 413 (upstream's limit).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|e: Infallible| match e {})
        .boxed()
}

/// How to encode a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
    /// `as=Table`; `v1beta1` is still asked for by older clients and is answered alike.
    Table {
        beta: bool,
    },
    /// `as=PartialObjectMetadata` / `as=PartialObjectMetadataList` (`g=meta.k8s.io`, v1 or
    /// v1beta1): objects reduced to their metadata, as kube's `list_metadata`/`get_metadata`
    /// and client-go's metadata informers ask for. Either spelling is accepted on any read; the
    /// handler answers a list with a list.
    Metadata,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Yaml => "application/yaml",
            Format::Table { .. } => "application/json;as=Table;v=v1;g=meta.k8s.io",
            Format::Metadata => "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1",
        }
    }
}

/// Picks the response format from `Accept`; `allow_table` is false where a Table makes no
/// sense (a Status, a Scale). Err is a 406.
pub fn negotiate(accept: Option<&str>, allow_table: bool) -> Result<Format, ApiError> {
    let Some(accept) = accept.map(str::trim).filter(|a| !a.is_empty()) else {
        return Ok(Format::Json);
    };
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let mt = parts.next().unwrap_or_default().to_ascii_lowercase();
        let mut as_ = None;
        let mut g = None;
        let mut v = None;
        for p in parts {
            if let Some((k, val)) = p.split_once('=') {
                match k.trim() {
                    "as" => as_ = Some(val.trim().to_string()),
                    "g" => g = Some(val.trim().to_string()),
                    "v" => v = Some(val.trim().to_string()),
                    _ => {}
                }
            }
        }
        match mt.as_str() {
            "application/json" | "*/*" | "application/*" => match as_.as_deref() {
                None => return Ok(Format::Json),
                Some("Table") if allow_table && g.as_deref() == Some("meta.k8s.io") => {
                    match v.as_deref() {
                        Some("v1") => return Ok(Format::Table { beta: false }),
                        Some("v1beta1") => return Ok(Format::Table { beta: true }),
                        _ => continue,
                    }
                }
                Some("PartialObjectMetadata" | "PartialObjectMetadataList")
                    if allow_table
                        && g.as_deref() == Some("meta.k8s.io")
                        && matches!(v.as_deref(), Some("v1" | "v1beta1")) =>
                {
                    return Ok(Format::Metadata)
                }
                _ => continue,
            },
            "application/yaml" if as_.is_none() => return Ok(Format::Yaml),
            _ => continue,
        }
    }
    Err(ApiError::not_acceptable(format!(
        "only the following media types are accepted: application/json, application/yaml, application/json;as=Table;v=v1;g=meta.k8s.io, application/json;as=PartialObjectMetadata;v=v1;g=meta.k8s.io (Accept: {accept})"
    )))
}

/// Encodes `v` as `fmt` (a Table must already have been built by the caller).
pub fn respond(code: StatusCode, v: &Value, fmt: Format) -> Response<Body> {
    let (bytes, ct) = match fmt {
        Format::Yaml => match serde_yaml::to_string(v) {
            Ok(s) => (Bytes::from(s), "application/yaml"),
            Err(e) => return error_response(&ApiError::internal(e.to_string())),
        },
        _ => (
            Bytes::from(serde_json::to_vec(v).unwrap_or_default()),
            "application/json",
        ),
    };
    let mut r = Response::new(full(bytes));
    *r.status_mut() = code;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    r
}

pub fn json(code: StatusCode, v: &Value) -> Response<Body> {
    respond(code, v, Format::Json)
}

pub fn text(code: StatusCode, s: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(full(s.into()));
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

pub fn error_response(e: &ApiError) -> Response<Body> {
    let code = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json(code, &e.to_status())
}

/// Reads the whole body, refusing more than [`MAX_BODY_BYTES`].
pub async fn read_body<B>(body: B) -> Result<Bytes, ApiError>
where
    B: hyper::body::Body<Data = Bytes> + Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ApiError::too_large("limit is 3145728"))
        }
        Err(e) => Err(ApiError::bad_request(format!(
            "reading the request body: {e}"
        ))),
    }
}

/// The media type of `Content-Type` without parameters, lowercased.
pub fn media_type(ct: Option<&str>) -> String {
    ct.unwrap_or("application/json")
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// Decodes a JSON or YAML object body.
pub fn decode_object(ct: Option<&str>, body: &[u8]) -> Result<Value, ApiError> {
    let mt = media_type(ct);
    let v: Value = match mt.as_str() {
        "application/json" | "" => serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding JSON: {e}")))?,
        "application/yaml" | "application/x-yaml" | "text/yaml" => serde_yaml::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?,
        crate::protobuf::MEDIA_TYPE => crate::protobuf::decode(body)?,
        _ => {
            return Err(ApiError::unsupported_media_type(
                "application/json, application/yaml, application/vnd.kubernetes.protobuf",
            ))
        }
    };
    if !v.is_object() {
        return Err(ApiError::bad_request("the request body must be an object"));
    }
    Ok(v)
}

/// Query parameters, percent-decoded; later duplicates win.
pub fn query(uri: &http::Uri) -> std::collections::HashMap<String, String> {
    let mut out = std::collections::HashMap::new();
    if let Some(q) = uri.query() {
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            out.insert(pct_decode(k), pct_decode(v));
        }
    }
    out
}

pub fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    Ok(x) => {
                        out.push(x);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubectl_accept_headers() {
        let get = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(
            negotiate(Some(get), true).unwrap(),
            Format::Table { beta: false }
        );
        assert_eq!(negotiate(Some(get), false).unwrap(), Format::Json);
        assert_eq!(
            negotiate(Some("application/yaml"), true).unwrap(),
            Format::Yaml
        );
        assert_eq!(negotiate(None, true).unwrap(), Format::Json);
        assert_eq!(
            negotiate(
                Some("application/vnd.kubernetes.protobuf, application/json"),
                true
            )
            .unwrap(),
            Format::Json
        );
        assert_eq!(
            negotiate(Some("application/vnd.kubernetes.protobuf"), true)
                .unwrap_err()
                .code,
            406
        );
        for a in [
            "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
            "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1beta1,application/json",
        ] {
            assert_eq!(negotiate(Some(a), true).unwrap(), Format::Metadata, "{a}");
            assert_ne!(
                negotiate(Some(a), false).ok(),
                Some(Format::Metadata),
                "{a}"
            );
        }
        assert_eq!(
            negotiate(
                Some("application/json;as=PartialObjectMetadata;g=apps;v=v1"),
                true
            )
            .unwrap_err()
            .code,
            406
        );
    }

    #[test]
    fn bodies_and_queries() {
        assert!(decode_object(
            Some("application/yaml"),
            b"kind: Pod\nmetadata: {name: a}\n"
        )
        .is_ok());
        assert_eq!(
            decode_object(Some("text/plain"), b"x").unwrap_err().code,
            415
        );
        assert_eq!(decode_object(None, b"[1]").unwrap_err().code, 400);
        let q = query(
            &"/x?labelSelector=app%3Dweb%2Ctier+in+(a)&watch=1"
                .parse()
                .unwrap(),
        );
        assert_eq!(q["labelSelector"], "app=web,tier in (a)");
        assert_eq!(q["watch"], "1");
        assert_eq!(pct_decode("100%"), "100%");
    }

    #[tokio::test]
    async fn body_limit_is_413() {
        let big = Full::new(Bytes::from(vec![b' '; MAX_BODY_BYTES + 1]));
        assert_eq!(read_body(big).await.unwrap_err().code, 413);
        let ok = Full::new(Bytes::from_static(b"{}"));
        assert_eq!(&read_body(ok).await.unwrap()[..], b"{}");
    }
}
