//! `application/vnd.kubernetes.protobuf` request bodies, decoded to the JSON objects the rest of
//! the server handles.
//!
//! kubectl's typed clients (`create namespace`, `create configmap`, `create deployment`, drain's
//! evictions, ...) encode request bodies in protobuf and do not fall back to JSON on 415. The
//! wire format is upstream's: the 4-byte magic `k8s\0`, then a `runtime.Unknown` whose
//! `typeMeta` names apiVersion/kind and whose `raw` is the object's message. Messages are
//! decoded with the generated field table ([`crate::proto_schema`]); upstream's well-known
//! messages map to their JSON forms (Time → RFC 3339, Quantity → string, IntOrString → int or
//! string, RawExtension/FieldsV1 → embedded JSON, bytes → base64). Go's protobuf encoder writes
//! non-pointer fields even when zero, so zero values are dropped again, as `omitempty` would,
//! except for fields where zero means something (`replicas`).
//!
//! Responses are always JSON (clients list JSON after protobuf in `Accept`).

use std::collections::HashMap;
use std::sync::OnceLock;

use base64::Engine;
use serde_json::{json, Map, Value};

use kelson_apimachinery::ApiError;

/// A field's type.
#[derive(Debug)]
pub enum T {
    Str,
    Bytes,
    Bool,
    I32,
    I64,
    F64,
    F32,
    M(&'static str),
    Map(&'static T, &'static T),
}

/// A field: number, JSON name, type, repeated.
#[derive(Debug)]
pub struct F(pub u32, pub &'static str, pub T, pub bool);

pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";
const MAGIC: &[u8] = b"k8s\0";
const META: &str = "k8s.io.apimachinery.pkg.apis.meta.v1";
/// Fields whose zero value is meaningful (pointers upstream): kept when decoded as zero.
const KEEP_ZERO: &[&str] = &[
    "replicas",
    "minReplicas",
    "parallelism",
    "completions",
    "backoffLimit",
    "value",
    "weight",
];
/// Nesting bound: a hostile body must not recurse without limit.
const MAX_DEPTH: usize = 64;

fn schema() -> &'static HashMap<&'static str, &'static [F]> {
    static S: OnceLock<HashMap<&'static str, &'static [F]>> = OnceLock::new();
    S.get_or_init(|| {
        crate::proto_schema::MESSAGES
            .iter()
            .map(|(n, f)| (*n, *f))
            .collect()
    })
}

fn bad(msg: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("error decoding protobuf body: {msg}"))
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(b: &'a [u8]) -> Self {
        Reader { b, pos: 0 }
    }
    fn done(&self) -> bool {
        self.pos >= self.b.len()
    }
    fn varint(&mut self) -> Result<u64, ApiError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self
                .b
                .get(self.pos)
                .ok_or_else(|| bad("truncated varint"))?;
            self.pos += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(bad("varint too long"))
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], ApiError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.b.len())
            .ok_or_else(|| bad("truncated field"))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn bytes(&mut self) -> Result<&'a [u8], ApiError> {
        let n = self.varint()? as usize;
        self.take(n)
    }
    fn skip(&mut self, wire: u64) -> Result<(), ApiError> {
        match wire {
            0 => self.varint().map(|_| ()),
            1 => self.take(8).map(|_| ()),
            2 => self.bytes().map(|_| ()),
            5 => self.take(4).map(|_| ()),
            w => Err(bad(format!("unsupported wire type {w}"))),
        }
    }
}

fn string(b: &[u8]) -> Result<String, ApiError> {
    String::from_utf8(b.to_vec()).map_err(|_| bad("invalid UTF-8 in a string field"))
}

/// Decodes one scalar or message value of type `t` (wire type already consumed into `r`).
fn value(r: &mut Reader<'_>, wire: u64, t: &T, depth: usize) -> Result<Value, ApiError> {
    Ok(match t {
        T::Str => json!(string(r.bytes()?)?),
        T::Bytes => json!(base64::engine::general_purpose::STANDARD.encode(r.bytes()?)),
        T::Bool => json!(r.varint()? != 0),
        T::I32 => json!(r.varint()? as i64 as i32),
        T::I64 => json!(r.varint()? as i64),
        T::F64 => json!(f64::from_le_bytes(
            r.take(8)?.try_into().map_err(|_| bad("double"))?
        )),
        T::F32 => json!(f32::from_le_bytes(
            r.take(4)?.try_into().map_err(|_| bad("float"))?
        )),
        T::M(name) => {
            if wire != 2 {
                return Err(bad(format!("message field {name} with wire type {wire}")));
            }
            message(r.bytes()?, name, depth + 1)?
        }
        T::Map(..) => return Err(bad("nested map")),
    })
}

fn rfc3339(secs: i64, nanos: i64, micro: bool) -> Value {
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp(secs) else {
        return Value::Null;
    };
    let fmt = if micro {
        format!(
            "{}.{:06}Z",
            t.format(&time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second]"
            ))
            .unwrap_or_default(),
            nanos / 1000
        )
    } else {
        format!(
            "{}Z",
            t.format(&time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second]"
            ))
            .unwrap_or_default()
        )
    };
    json!(fmt)
}

/// Upstream's well-known messages have JSON forms that are not objects.
fn special(name: &str, m: &Map<String, Value>) -> Option<Value> {
    let int = |k: &str| m.get(k).and_then(Value::as_i64).unwrap_or(0);
    Some(match name {
        n if n == format!("{META}.Time") || n == format!("{META}.MicroTime") => {
            if int("seconds") == 0 && int("nanos") == 0 {
                Value::Null
            } else {
                rfc3339(int("seconds"), int("nanos"), n.ends_with("MicroTime"))
            }
        }
        "k8s.io.apimachinery.pkg.api.resource.Quantity" => {
            m.get("string").cloned().unwrap_or(json!("0"))
        }
        "k8s.io.apimachinery.pkg.util.intstr.IntOrString" => {
            if int("type") == 1 {
                m.get("strVal").cloned().unwrap_or(json!(""))
            } else {
                json!(int("intVal"))
            }
        }
        "k8s.io.apimachinery.pkg.runtime.RawExtension" => embedded(m.get("raw")),
        n if n == format!("{META}.FieldsV1") => embedded(m.get("raw")),
        n if n == format!("{META}.Duration") => {
            let ns = int("duration");
            json!(format!("{}s", ns as f64 / 1e9))
        }
        _ => return None,
    })
}

/// Bytes holding JSON (base64 here after decoding) back to JSON.
fn embedded(raw: Option<&Value>) -> Value {
    let Some(b64) = raw.and_then(Value::as_str) else {
        return Value::Null;
    };
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}

fn message(b: &[u8], name: &str, depth: usize) -> Result<Value, ApiError> {
    if depth > MAX_DEPTH {
        return Err(bad("nesting too deep"));
    }
    let fields = schema()
        .get(name)
        .ok_or_else(|| bad(format!("unknown message {name}")))?;
    let mut out = Map::new();
    let mut r = Reader::new(b);
    while !r.done() {
        let tag = r.varint()?;
        let (num, wire) = ((tag >> 3) as u32, tag & 7);
        let Some(f) = fields.iter().find(|f| f.0 == num) else {
            r.skip(wire)?;
            continue;
        };
        match &f.2 {
            T::Map(kt, vt) => {
                let entry = r.bytes()?;
                let mut er = Reader::new(entry);
                let (mut k, mut v) = (Value::Null, Value::Null);
                while !er.done() {
                    let tag = er.varint()?;
                    match tag >> 3 {
                        1 => k = value(&mut er, tag & 7, kt, depth)?,
                        2 => v = value(&mut er, tag & 7, vt, depth)?,
                        _ => er.skip(tag & 7)?,
                    }
                }
                let key = match k {
                    Value::String(s) => s,
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                let v = if v.is_null() {
                    match vt {
                        T::Str | T::Bytes => json!(""),
                        _ => v,
                    }
                } else {
                    v
                };
                let e = out.entry(f.1).or_insert_with(|| json!({}));
                if let Some(m) = e.as_object_mut() {
                    m.insert(key, v);
                }
            }
            t if f.3 => {
                // Packed repeated scalars arrive as one length-delimited run.
                let packed = wire == 2 && matches!(t, T::Bool | T::I32 | T::I64 | T::F64 | T::F32);
                let arr = out.entry(f.1).or_insert_with(|| json!([]));
                let items = if packed {
                    let run = r.bytes()?;
                    let mut pr = Reader::new(run);
                    let mut v = Vec::new();
                    while !pr.done() {
                        v.push(value(
                            &mut pr,
                            if matches!(t, T::F64) {
                                1
                            } else if matches!(t, T::F32) {
                                5
                            } else {
                                0
                            },
                            t,
                            depth,
                        )?);
                    }
                    v
                } else {
                    vec![value(&mut r, wire, t, depth)?]
                };
                if let Some(a) = arr.as_array_mut() {
                    a.extend(items);
                }
            }
            t => {
                let v = value(&mut r, wire, t, depth)?;
                out.insert(f.1.to_string(), v);
            }
        }
    }
    if let Some(v) = special(name, &out) {
        return Ok(v);
    }
    Ok(Value::Object(out))
}

/// Drops what Go's JSON encoding would omit: empty strings, false, zero numbers (except the
/// meaningful ones), empty lists and objects, nulls. Map values are kept as they are.
fn prune(v: &mut Value) {
    if let Value::Object(m) = v {
        for (_, c) in m.iter_mut() {
            prune(c);
        }
        m.retain(|k, c| match c {
            Value::Null => false,
            Value::String(s) => !s.is_empty(),
            Value::Bool(b) => *b,
            Value::Number(n) => n.as_f64() != Some(0.0) || KEEP_ZERO.contains(&k.as_str()),
            Value::Array(a) => !a.is_empty(),
            Value::Object(o) => !o.is_empty(),
        });
    } else if let Value::Array(a) = v {
        for c in a.iter_mut() {
            prune(c);
        }
    }
}

/// The protobuf package of an API group version (`apps/v1` → `k8s.io.api.apps.v1`).
fn package(api_version: &str, kind: &str) -> String {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    if matches!(
        kind,
        "DeleteOptions"
            | "Status"
            | "ListOptions"
            | "PatchOptions"
            | "CreateOptions"
            | "UpdateOptions"
    ) {
        return META.to_string();
    }
    let pkg = if group.is_empty() {
        "core"
    } else {
        group.split('.').next().unwrap_or(group)
    };
    format!("k8s.io.api.{pkg}.{version}")
}

/// Decodes a `k8s\0`-framed protobuf body into the JSON object it carries.
pub fn decode(body: &[u8]) -> Result<Value, ApiError> {
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("missing the k8s\\0 prefix"))?;
    let mut r = Reader::new(rest);
    let (mut api_version, mut kind, mut raw): (String, String, &[u8]) =
        (String::new(), String::new(), &[]);
    while !r.done() {
        let tag = r.varint()?;
        match (tag >> 3, tag & 7) {
            (1, 2) => {
                let mut tr = Reader::new(r.bytes()?);
                while !tr.done() {
                    let t = tr.varint()?;
                    match (t >> 3, t & 7) {
                        (1, 2) => api_version = string(tr.bytes()?)?,
                        (2, 2) => kind = string(tr.bytes()?)?,
                        (_, w) => tr.skip(w)?,
                    }
                }
            }
            (2, 2) => raw = r.bytes()?,
            (_, w) => r.skip(w)?,
        }
    }
    if kind.is_empty() {
        return Err(bad("no kind in typeMeta"));
    }
    let name = format!("{}.{kind}", package(&api_version, &kind));
    let mut obj = message(raw, &name, 0)?;
    prune(&mut obj);
    if let Value::Object(m) = &mut obj {
        m.insert("apiVersion".into(), json!(api_version));
        m.insert("kind".into(), json!(kind));
        m.entry("metadata").or_insert_with(|| json!({}));
    }
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    fn field(num: u32, data: &[u8], out: &mut Vec<u8>) {
        varint(u64::from(num) << 3 | 2, out);
        varint(data.len() as u64, out);
        out.extend_from_slice(data);
    }
    fn vfield(num: u32, v: u64, out: &mut Vec<u8>) {
        varint(u64::from(num) << 3, out);
        varint(v, out);
    }

    /// What client-go sends for `kubectl create deployment web --image=nginx --replicas=0`,
    /// reduced: envelope, ObjectMeta (name, empty strings, zero generation, labels), spec with
    /// replicas 0 and a selector, a Quantity and an IntOrString.
    fn sample() -> Vec<u8> {
        let mut meta = Vec::new();
        field(1, b"web", &mut meta);
        field(2, b"", &mut meta);
        vfield(7, 0, &mut meta);
        let mut label = Vec::new();
        field(1, b"app", &mut label);
        field(2, b"web", &mut label);
        field(11, &label, &mut meta);
        let mut container = Vec::new();
        field(1, b"nginx", &mut container);
        field(2, b"nginx", &mut container);
        let mut q = Vec::new();
        field(1, b"100m", &mut q);
        let mut entry = Vec::new();
        field(1, b"cpu", &mut entry);
        field(2, &q, &mut entry);
        let mut res = Vec::new();
        field(1, &entry, &mut res); // limits
        field(8, &res, &mut container); // resources
        let mut podspec = Vec::new();
        field(2, &container, &mut podspec);
        let mut template = Vec::new();
        field(2, &podspec, &mut template);
        let mut strategy = Vec::new();
        let mut ru = Vec::new();
        let mut ios = Vec::new();
        vfield(1, 1, &mut ios);
        field(3, b"25%", &mut ios);
        field(2, &ios, &mut ru); // maxSurge
        field(2, &ru, &mut strategy);
        let mut spec = Vec::new();
        vfield(1, 0, &mut spec); // replicas = 0
        field(3, &template, &mut spec);
        field(4, &strategy, &mut spec);
        let mut obj = Vec::new();
        field(1, &meta, &mut obj);
        field(2, &spec, &mut obj);
        let mut tm = Vec::new();
        field(1, b"apps/v1", &mut tm);
        field(2, b"Deployment", &mut tm);
        let mut unknown = Vec::new();
        field(1, &tm, &mut unknown);
        field(2, &obj, &mut unknown);
        let mut body = MAGIC.to_vec();
        body.extend(unknown);
        body
    }

    #[test]
    fn decodes_a_deployment() {
        let v = decode(&sample()).unwrap();
        assert_eq!(v["apiVersion"], "apps/v1");
        assert_eq!(v["kind"], "Deployment");
        assert_eq!(
            v["metadata"],
            json!({"name": "web", "labels": {"app": "web"}})
        );
        assert_eq!(v["spec"]["replicas"], 0);
        let c = &v["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["name"], "nginx");
        assert_eq!(c["resources"]["limits"]["cpu"], "100m");
        assert_eq!(v["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        assert_eq!(decode(b"{}").unwrap_err().code, 400);
        let mut truncated = sample();
        truncated.truncate(truncated.len() - 5);
        assert_eq!(decode(&truncated).unwrap_err().code, 400);
        assert!(decode(b"k8s\0\xff\xff\xff").is_err());
        let mut unknown_kind = MAGIC.to_vec();
        let mut tm = Vec::new();
        field(1, b"v1", &mut tm);
        field(2, b"Nope", &mut tm);
        field(1, &tm, &mut unknown_kind);
        assert_eq!(decode(&unknown_kind).unwrap_err().code, 400);
    }

    #[test]
    fn schema_has_the_kinds_kubectl_creates() {
        for m in [
            "k8s.io.api.core.v1.Namespace",
            "k8s.io.api.core.v1.ConfigMap",
            "k8s.io.api.core.v1.Secret",
            "k8s.io.api.apps.v1.Deployment",
            "k8s.io.api.core.v1.Service",
            "k8s.io.api.policy.v1.Eviction",
            "k8s.io.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        ] {
            assert!(schema().contains_key(m), "{m}");
        }
    }
}
