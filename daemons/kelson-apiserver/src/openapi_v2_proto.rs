//! `/openapi/v2` in protobuf: gnostic's `openapi.v2.Document`, the form kubectl asks for.
//!
//! kubectl 1.32 falls back to OpenAPI v2 for client-side validation (a `v1 List`, or a kind
//! whose v3 document has no PATCH operation, such as TokenReview) and requests it with
//! `Accept: application/com.github.proto-openapi.spec.v2@v1.0+protobuf` only (client-go's
//! discovery client, as seen on the wire); older clients send
//! `application/com.github.proto-openapi.spec.v2.v1.0+protobuf`, and `…spec.v2@v2.0+protobuf`
//! is accepted as well. Upstream parses its
//! JSON document with gnostic and marshals the result; here the JSON document the server
//! already builds (`kelson_apiresources::openapi_v2`, plus the custom kinds of `crd::docs`) is
//! converted field by field into the messages generated from gnostic's `OpenAPIv2.proto`
//! (build.rs), so the two forms can never disagree.
//!
//! The mapping is gnostic's: keys starting with `x-` become `NamedAny` vendor extensions whose
//! `Any.yaml` holds the value as YAML (kubectl reads `x-kubernetes-group-version-kind` back
//! with a YAML decoder); `default`, `example` and `enum` values are `Any`s too; a parameter is
//! a `JsonReference` when it has `$ref`, a `BodyParameter` when `in: body`, otherwise the
//! `NonBodyParameter` sub-schema named by `in`; a response is a `JsonReference` or a
//! `Response` whose schema is a `FileSchema` when `type: file`. Unlike gnostic, which refuses a
//! document with unknown keys, unknown keys are skipped: the JSON form is ours and tested, and
//! a client is better served by a document without one odd keyword than by none.
//!
//! Both forms are cached per document version (the JSON bytes are compared, which is exact
//! and cheap next to building anything), the protobuf one only once a client asks for it;
//! their SHA-256 digests are the `ETag`s, and `If-None-Match` gets 304.

use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use prost::Message;
use serde_json::{Map, Value};

use kelson_apimachinery::ApiError;

use crate::http::{self as h, Body};

/// The messages generated from gnostic's `OpenAPIv2.proto` (package `openapi.v2`).
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/openapi.v2.rs"));
}

/// The media type kubectl (client-go's discovery client) asks for.
pub const PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";
/// The media type older clients ask for; the same bytes.
pub const PROTOBUF_V1: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";
/// A spelling some documentation uses; the same bytes.
pub const PROTOBUF_V2: &str = "application/com.github.proto-openapi.spec.v2@v2.0+protobuf";

/// The representation a client negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    Json,
    /// Protobuf; the response's `Content-Type` is always [`PROTOBUF_V1`], as upstream's:
    /// client-go parses it with Go's `mime.ParseMediaType`, which refuses the `@` spelling.
    Protobuf,
}

/// Picks the representation for an `Accept` header: the acceptable media range with the
/// highest `q` (the first on a tie); no header means JSON; `None` when nothing is acceptable.
pub fn negotiate(accept: Option<&str>) -> Option<Form> {
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return Some(Form::Json);
    };
    let mut best: Option<(f32, Form)> = None;
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        let form = match media.as_str() {
            "application/json" | "application/*" | "*/*" => Form::Json,
            PROTOBUF | PROTOBUF_V1 | PROTOBUF_V2 => Form::Protobuf,
            _ => continue,
        };
        if q > 0.0 && best.is_none_or(|(bq, _)| q > bq) {
            best = Some((q, form));
        }
    }
    best.map(|(_, f)| f)
}

/// One version of the document in both forms.
struct Entry {
    json: Bytes,
    json_etag: String,
    proto: OnceLock<Result<(Bytes, String), String>>,
}

/// The entry for the current document, rebuilt when the JSON bytes change (custom resources
/// added or removed).
fn entry(json: &[u8]) -> Arc<Entry> {
    static SLOT: Mutex<Option<Arc<Entry>>> = Mutex::new(None);
    let mut slot = SLOT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(e) = slot.as_ref().filter(|e| e.json.as_ref() == json) {
        return e.clone();
    }
    let e = Arc::new(Entry {
        json: Bytes::copy_from_slice(json),
        json_etag: etag(json),
        proto: OnceLock::new(),
    });
    *slot = Some(e.clone());
    e
}

fn etag(bytes: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

/// Serves `GET /openapi/v2` in the negotiated form, with an `ETag` and 304 on a matching
/// `If-None-Match`.
pub fn serve(
    accept: Option<&str>,
    if_none_match: Option<&HeaderValue>,
) -> Result<Response<Body>, ApiError> {
    let form = negotiate(accept).ok_or_else(|| {
        ApiError::not_acceptable(format!(
            "only application/json, {PROTOBUF}, {PROTOBUF_V1} and {PROTOBUF_V2} are served for /openapi/v2"
        ))
    })?;
    let base = kelson_apiresources::openapi_v2();
    // With custom resources served, their definitions are added (crd/).
    let merged = crate::crd::docs::openapi_v2(base);
    let e = entry(merged.as_deref().unwrap_or(base));
    let (body, tag, content_type) = match form {
        Form::Json => (e.json.clone(), e.json_etag.clone(), "application/json"),
        Form::Protobuf => {
            let (bytes, tag) = e
                .proto
                .get_or_init(|| {
                    let started = std::time::Instant::now();
                    let bytes = Bytes::from(encode(&e.json).map_err(|err| err.to_string())?);
                    tracing::debug!(
                        bytes = bytes.len(),
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "encoded /openapi/v2 as protobuf"
                    );
                    let tag = etag(&bytes);
                    Ok((bytes, tag))
                })
                .as_ref()
                .map_err(|err| ApiError::internal(format!("encoding /openapi/v2: {err}")))?;
            (bytes.clone(), tag.clone(), PROTOBUF_V1)
        }
    };
    let not_modified = if_none_match
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
    let mut r = if not_modified {
        let mut r = Response::new(h::full(Bytes::new()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = Response::new(h::full(body));
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        r
    };
    if let Ok(v) = HeaderValue::from_str(&tag) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r.headers_mut()
        .insert(header::VARY, HeaderValue::from_static("Accept"));
    Ok(r)
}

/// Why a JSON document could not be converted.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("the OpenAPI v2 document is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the OpenAPI v2 document is not a JSON object")]
    NotAnObject,
}

/// Converts a JSON OpenAPI v2 document to the protobuf bytes of `openapi.v2.Document`.
pub fn encode(json: &[u8]) -> Result<Vec<u8>, ConvertError> {
    let v: Value = serde_json::from_slice(json)?;
    Ok(document(&v)?.encode_to_vec())
}

/// Converts a parsed JSON OpenAPI v2 document to gnostic's `Document`.
pub fn document(v: &Value) -> Result<pb::Document, ConvertError> {
    let m = v.as_object().ok_or(ConvertError::NotAnObject)?;
    Ok(pb::Document {
        swagger: string(m, "swagger"),
        info: obj(m, "info").map(info),
        host: string(m, "host"),
        base_path: string(m, "basePath"),
        schemes: strings(m, "schemes"),
        consumes: strings(m, "consumes"),
        produces: strings(m, "produces"),
        paths: obj(m, "paths").map(paths),
        definitions: obj(m, "definitions").map(|d| pb::Definitions {
            additional_properties: named(d, schema, |name, value| pb::NamedSchema { name, value }),
        }),
        parameters: obj(m, "parameters").map(|d| pb::ParameterDefinitions {
            additional_properties: named(d, parameter, |name, value| pb::NamedParameter {
                name,
                value,
            }),
        }),
        responses: obj(m, "responses").map(|d| pb::ResponseDefinitions {
            additional_properties: named(d, response, |name, value| pb::NamedResponse {
                name,
                value,
            }),
        }),
        security: security_requirements(m, "security"),
        security_definitions: obj(m, "securityDefinitions").map(|d| pb::SecurityDefinitions {
            additional_properties: named(d, security_definition, |name, value| {
                pb::NamedSecurityDefinitionsItem { name, value }
            }),
        }),
        tags: array(m, "tags")
            .filter_map(Value::as_object)
            .map(|t| pb::Tag {
                name: string(t, "name"),
                description: string(t, "description"),
                external_docs: obj(t, "externalDocs").map(external_docs),
                vendor_extension: extensions(t),
            })
            .collect(),
        external_docs: obj(m, "externalDocs").map(external_docs),
        vendor_extension: extensions(m),
    })
}

// ---- field readers: a missing or mistyped field is the message's default ----

fn obj<'a>(m: &'a Map<String, Value>, k: &str) -> Option<&'a Map<String, Value>> {
    m.get(k).and_then(Value::as_object)
}

fn string(m: &Map<String, Value>, k: &str) -> String {
    m.get(k).and_then(Value::as_str).unwrap_or_default().into()
}

fn boolean(m: &Map<String, Value>, k: &str) -> bool {
    m.get(k).and_then(Value::as_bool).unwrap_or_default()
}

fn float(m: &Map<String, Value>, k: &str) -> f64 {
    m.get(k).and_then(Value::as_f64).unwrap_or_default()
}

fn int(m: &Map<String, Value>, k: &str) -> i64 {
    m.get(k)
        .and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)))
        .unwrap_or_default()
}

fn array<'a>(m: &'a Map<String, Value>, k: &str) -> impl Iterator<Item = &'a Value> {
    m.get(k)
        .and_then(Value::as_array)
        .map(|a| a.iter())
        .into_iter()
        .flatten()
}

fn strings(m: &Map<String, Value>, k: &str) -> Vec<String> {
    array(m, k)
        .filter_map(Value::as_str)
        .map(String::from)
        .collect()
}

/// A JSON value as gnostic's `Any`: the value as YAML (as gnostic stores it).
fn any(v: &Value) -> pb::Any {
    pb::Any {
        value: None,
        yaml: serde_yaml::to_string(v).unwrap_or_default(),
    }
}

fn any_at(m: &Map<String, Value>, k: &str) -> Option<pb::Any> {
    m.get(k).map(any)
}

fn anys(m: &Map<String, Value>, k: &str) -> Vec<pb::Any> {
    array(m, k).map(any).collect()
}

/// The `x-` keys of an object as vendor extensions, in document order.
fn extensions(m: &Map<String, Value>) -> Vec<pb::NamedAny> {
    m.iter()
        .filter(|(k, _)| k.starts_with("x-"))
        .map(|(k, v)| pb::NamedAny {
            name: k.clone(),
            value: Some(any(v)),
        })
        .collect()
}

/// A JSON map of objects as gnostic's repeated `Named*` entries.
fn named<T, N>(
    m: &Map<String, Value>,
    convert: impl Fn(&Map<String, Value>) -> T,
    make: impl Fn(String, Option<T>) -> N,
) -> Vec<N> {
    m.iter()
        .filter_map(|(k, v)| v.as_object().map(|o| make(k.clone(), Some(convert(o)))))
        .collect()
}

// ---- document parts ----

fn info(m: &Map<String, Value>) -> pb::Info {
    pb::Info {
        title: string(m, "title"),
        version: string(m, "version"),
        description: string(m, "description"),
        terms_of_service: string(m, "termsOfService"),
        contact: obj(m, "contact").map(|c| pb::Contact {
            name: string(c, "name"),
            url: string(c, "url"),
            email: string(c, "email"),
            vendor_extension: extensions(c),
        }),
        license: obj(m, "license").map(|l| pb::License {
            name: string(l, "name"),
            url: string(l, "url"),
            vendor_extension: extensions(l),
        }),
        vendor_extension: extensions(m),
    }
}

fn external_docs(m: &Map<String, Value>) -> pb::ExternalDocs {
    pb::ExternalDocs {
        description: string(m, "description"),
        url: string(m, "url"),
        vendor_extension: extensions(m),
    }
}

fn paths(m: &Map<String, Value>) -> pb::Paths {
    pb::Paths {
        vendor_extension: extensions(m),
        path: m
            .iter()
            .filter(|(k, _)| k.starts_with('/'))
            .filter_map(|(k, v)| {
                v.as_object().map(|o| pb::NamedPathItem {
                    name: k.clone(),
                    value: Some(path_item(o)),
                })
            })
            .collect(),
    }
}

fn path_item(m: &Map<String, Value>) -> pb::PathItem {
    let op = |k: &str| obj(m, k).map(operation);
    pb::PathItem {
        r#ref: string(m, "$ref"),
        get: op("get"),
        put: op("put"),
        post: op("post"),
        delete: op("delete"),
        options: op("options"),
        head: op("head"),
        patch: op("patch"),
        parameters: parameters_items(m),
        vendor_extension: extensions(m),
    }
}

fn operation(m: &Map<String, Value>) -> pb::Operation {
    pb::Operation {
        tags: strings(m, "tags"),
        summary: string(m, "summary"),
        description: string(m, "description"),
        external_docs: obj(m, "externalDocs").map(external_docs),
        operation_id: string(m, "operationId"),
        produces: strings(m, "produces"),
        consumes: strings(m, "consumes"),
        parameters: parameters_items(m),
        responses: obj(m, "responses").map(responses),
        schemes: strings(m, "schemes"),
        deprecated: boolean(m, "deprecated"),
        security: security_requirements(m, "security"),
        vendor_extension: extensions(m),
    }
}

fn json_reference(m: &Map<String, Value>) -> pb::JsonReference {
    pb::JsonReference {
        r#ref: string(m, "$ref"),
        description: string(m, "description"),
    }
}

fn parameters_items(m: &Map<String, Value>) -> Vec<pb::ParametersItem> {
    use pb::parameters_item::Oneof;
    array(m, "parameters")
        .filter_map(Value::as_object)
        .map(|p| pb::ParametersItem {
            oneof: Some(if p.contains_key("$ref") {
                Oneof::JsonReference(json_reference(p))
            } else {
                Oneof::Parameter(parameter(p))
            }),
        })
        .collect()
}

/// Fills the fields the four non-body parameter sub-schemas share (same names in each).
macro_rules! non_body {
    ($t:ident, $m:expr $(, $extra:ident: $val:expr)*) => {{
        let m = $m;
        pb::$t {
            required: boolean(m, "required"),
            r#in: string(m, "in"),
            description: string(m, "description"),
            name: string(m, "name"),
            r#type: string(m, "type"),
            format: string(m, "format"),
            items: obj(m, "items").map(primitives_items),
            collection_format: string(m, "collectionFormat"),
            default: any_at(m, "default"),
            maximum: float(m, "maximum"),
            exclusive_maximum: boolean(m, "exclusiveMaximum"),
            minimum: float(m, "minimum"),
            exclusive_minimum: boolean(m, "exclusiveMinimum"),
            max_length: int(m, "maxLength"),
            min_length: int(m, "minLength"),
            pattern: string(m, "pattern"),
            max_items: int(m, "maxItems"),
            min_items: int(m, "minItems"),
            unique_items: boolean(m, "uniqueItems"),
            r#enum: anys(m, "enum"),
            multiple_of: float(m, "multipleOf"),
            vendor_extension: extensions(m),
            $($extra: $val,)*
        }
    }};
}

fn parameter(m: &Map<String, Value>) -> pb::Parameter {
    use pb::non_body_parameter::Oneof as NonBody;
    use pb::parameter::Oneof;
    let non_body = |o| Oneof::NonBodyParameter(pb::NonBodyParameter { oneof: Some(o) });
    let oneof = match m.get("in").and_then(Value::as_str).unwrap_or_default() {
        "body" => Oneof::BodyParameter(pb::BodyParameter {
            description: string(m, "description"),
            name: string(m, "name"),
            r#in: string(m, "in"),
            required: boolean(m, "required"),
            schema: obj(m, "schema").map(schema),
            vendor_extension: extensions(m),
        }),
        "header" => non_body(NonBody::HeaderParameterSubSchema(non_body!(
            HeaderParameterSubSchema,
            m
        ))),
        "formData" => non_body(NonBody::FormDataParameterSubSchema(non_body!(
            FormDataParameterSubSchema,
            m,
            allow_empty_value: boolean(m, "allowEmptyValue")
        ))),
        "path" => non_body(NonBody::PathParameterSubSchema(non_body!(
            PathParameterSubSchema,
            m
        ))),
        // `query`, and what gnostic would reject: a query parameter is the least surprising.
        _ => non_body(NonBody::QueryParameterSubSchema(non_body!(
            QueryParameterSubSchema,
            m,
            allow_empty_value: boolean(m, "allowEmptyValue")
        ))),
    };
    pb::Parameter { oneof: Some(oneof) }
}

fn primitives_items(m: &Map<String, Value>) -> pb::PrimitivesItems {
    pb::PrimitivesItems {
        r#type: string(m, "type"),
        format: string(m, "format"),
        items: obj(m, "items").map(|i| Box::new(primitives_items(i))),
        collection_format: string(m, "collectionFormat"),
        default: any_at(m, "default"),
        maximum: float(m, "maximum"),
        exclusive_maximum: boolean(m, "exclusiveMaximum"),
        minimum: float(m, "minimum"),
        exclusive_minimum: boolean(m, "exclusiveMinimum"),
        max_length: int(m, "maxLength"),
        min_length: int(m, "minLength"),
        pattern: string(m, "pattern"),
        max_items: int(m, "maxItems"),
        min_items: int(m, "minItems"),
        unique_items: boolean(m, "uniqueItems"),
        r#enum: anys(m, "enum"),
        multiple_of: float(m, "multipleOf"),
        vendor_extension: extensions(m),
    }
}

fn header(m: &Map<String, Value>) -> pb::Header {
    pb::Header {
        r#type: string(m, "type"),
        format: string(m, "format"),
        items: obj(m, "items").map(primitives_items),
        collection_format: string(m, "collectionFormat"),
        default: any_at(m, "default"),
        maximum: float(m, "maximum"),
        exclusive_maximum: boolean(m, "exclusiveMaximum"),
        minimum: float(m, "minimum"),
        exclusive_minimum: boolean(m, "exclusiveMinimum"),
        max_length: int(m, "maxLength"),
        min_length: int(m, "minLength"),
        pattern: string(m, "pattern"),
        max_items: int(m, "maxItems"),
        min_items: int(m, "minItems"),
        unique_items: boolean(m, "uniqueItems"),
        r#enum: anys(m, "enum"),
        multiple_of: float(m, "multipleOf"),
        description: string(m, "description"),
        vendor_extension: extensions(m),
    }
}

fn responses(m: &Map<String, Value>) -> pb::Responses {
    use pb::response_value::Oneof;
    pb::Responses {
        response_code: m
            .iter()
            .filter(|(k, _)| !k.starts_with("x-"))
            .filter_map(|(k, v)| {
                let r = v.as_object()?;
                Some(pb::NamedResponseValue {
                    name: k.clone(),
                    value: Some(pb::ResponseValue {
                        oneof: Some(if r.contains_key("$ref") {
                            Oneof::JsonReference(json_reference(r))
                        } else {
                            Oneof::Response(response(r))
                        }),
                    }),
                })
            })
            .collect(),
        vendor_extension: extensions(m),
    }
}

fn response(m: &Map<String, Value>) -> pb::Response {
    use pb::schema_item::Oneof;
    pb::Response {
        description: string(m, "description"),
        schema: obj(m, "schema").map(|s| pb::SchemaItem {
            oneof: Some(if s.get("type").and_then(Value::as_str) == Some("file") {
                Oneof::FileSchema(pb::FileSchema {
                    format: string(s, "format"),
                    title: string(s, "title"),
                    description: string(s, "description"),
                    default: any_at(s, "default"),
                    required: strings(s, "required"),
                    r#type: string(s, "type"),
                    read_only: boolean(s, "readOnly"),
                    external_docs: obj(s, "externalDocs").map(external_docs),
                    example: any_at(s, "example"),
                    vendor_extension: extensions(s),
                })
            } else {
                Oneof::Schema(schema(s))
            }),
        }),
        headers: obj(m, "headers").map(|hs| pb::Headers {
            additional_properties: named(hs, header, |name, value| pb::NamedHeader { name, value }),
        }),
        examples: obj(m, "examples").map(|ex| pb::Examples {
            additional_properties: ex
                .iter()
                .map(|(k, v)| pb::NamedAny {
                    name: k.clone(),
                    value: Some(any(v)),
                })
                .collect(),
        }),
        vendor_extension: extensions(m),
    }
}

/// A schema (definitions, properties, items, allOf, body parameters, responses).
fn schema(m: &Map<String, Value>) -> pb::Schema {
    use pb::additional_properties_item::Oneof;
    let schemas = |k: &str| -> Vec<pb::Schema> {
        array(m, k)
            .filter_map(Value::as_object)
            .map(schema)
            .collect()
    };
    pb::Schema {
        r#ref: string(m, "$ref"),
        format: string(m, "format"),
        title: string(m, "title"),
        description: string(m, "description"),
        default: any_at(m, "default"),
        multiple_of: float(m, "multipleOf"),
        maximum: float(m, "maximum"),
        exclusive_maximum: boolean(m, "exclusiveMaximum"),
        minimum: float(m, "minimum"),
        exclusive_minimum: boolean(m, "exclusiveMinimum"),
        max_length: int(m, "maxLength"),
        min_length: int(m, "minLength"),
        pattern: string(m, "pattern"),
        max_items: int(m, "maxItems"),
        min_items: int(m, "minItems"),
        unique_items: boolean(m, "uniqueItems"),
        max_properties: int(m, "maxProperties"),
        min_properties: int(m, "minProperties"),
        required: strings(m, "required"),
        r#enum: anys(m, "enum"),
        additional_properties: match m.get("additionalProperties") {
            Some(Value::Bool(b)) => Some(Box::new(pb::AdditionalPropertiesItem {
                oneof: Some(Oneof::Boolean(*b)),
            })),
            Some(Value::Object(s)) => Some(Box::new(pb::AdditionalPropertiesItem {
                oneof: Some(Oneof::Schema(Box::new(schema(s)))),
            })),
            _ => None,
        },
        r#type: match m.get("type") {
            Some(Value::String(t)) => Some(pb::TypeItem {
                value: vec![t.clone()],
            }),
            Some(Value::Array(_)) => Some(pb::TypeItem {
                value: strings(m, "type"),
            }),
            _ => None,
        },
        items: match m.get("items") {
            Some(Value::Object(s)) => Some(pb::ItemsItem {
                schema: vec![schema(s)],
            }),
            Some(Value::Array(_)) => Some(pb::ItemsItem {
                schema: schemas("items"),
            }),
            _ => None,
        },
        all_of: schemas("allOf"),
        properties: obj(m, "properties").map(|p| pb::Properties {
            additional_properties: named(p, schema, |name, value| pb::NamedSchema { name, value }),
        }),
        discriminator: string(m, "discriminator"),
        read_only: boolean(m, "readOnly"),
        xml: obj(m, "xml").map(|x| pb::Xml {
            name: string(x, "name"),
            namespace: string(x, "namespace"),
            prefix: string(x, "prefix"),
            attribute: boolean(x, "attribute"),
            wrapped: boolean(x, "wrapped"),
            vendor_extension: extensions(x),
        }),
        external_docs: obj(m, "externalDocs").map(external_docs),
        example: any_at(m, "example"),
        vendor_extension: extensions(m),
    }
}

fn security_requirements(m: &Map<String, Value>, k: &str) -> Vec<pb::SecurityRequirement> {
    array(m, k)
        .filter_map(Value::as_object)
        .map(|r| pb::SecurityRequirement {
            additional_properties: r
                .iter()
                .map(|(name, scopes)| pb::NamedStringArray {
                    name: name.clone(),
                    value: Some(pb::StringArray {
                        value: scopes
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .filter_map(Value::as_str)
                                    .map(String::from)
                                    .collect()
                            })
                            .unwrap_or_default(),
                    }),
                })
                .collect(),
        })
        .collect()
}

fn security_definition(m: &Map<String, Value>) -> pb::SecurityDefinitionsItem {
    use pb::security_definitions_item::Oneof;
    let scopes = || {
        obj(m, "scopes").map(|s| pb::Oauth2Scopes {
            additional_properties: s
                .iter()
                .map(|(k, v)| pb::NamedString {
                    name: k.clone(),
                    value: v.as_str().unwrap_or_default().into(),
                })
                .collect(),
        })
    };
    let (ty, desc, ext) = (string(m, "type"), string(m, "description"), extensions(m));
    let oneof = match (ty.as_str(), m.get("flow").and_then(Value::as_str)) {
        ("basic", _) => Oneof::BasicAuthenticationSecurity(pb::BasicAuthenticationSecurity {
            r#type: ty,
            description: desc,
            vendor_extension: ext,
        }),
        ("oauth2", Some("implicit")) => Oneof::Oauth2ImplicitSecurity(pb::Oauth2ImplicitSecurity {
            r#type: ty,
            flow: string(m, "flow"),
            scopes: scopes(),
            authorization_url: string(m, "authorizationUrl"),
            description: desc,
            vendor_extension: ext,
        }),
        ("oauth2", Some("password")) => Oneof::Oauth2PasswordSecurity(pb::Oauth2PasswordSecurity {
            r#type: ty,
            flow: string(m, "flow"),
            scopes: scopes(),
            token_url: string(m, "tokenUrl"),
            description: desc,
            vendor_extension: ext,
        }),
        ("oauth2", Some("application")) => {
            Oneof::Oauth2ApplicationSecurity(pb::Oauth2ApplicationSecurity {
                r#type: ty,
                flow: string(m, "flow"),
                scopes: scopes(),
                token_url: string(m, "tokenUrl"),
                description: desc,
                vendor_extension: ext,
            })
        }
        ("oauth2", _) => Oneof::Oauth2AccessCodeSecurity(pb::Oauth2AccessCodeSecurity {
            r#type: ty,
            flow: string(m, "flow"),
            scopes: scopes(),
            authorization_url: string(m, "authorizationUrl"),
            token_url: string(m, "tokenUrl"),
            description: desc,
            vendor_extension: ext,
        }),
        // `apiKey` (what the API server declares: BearerToken).
        _ => Oneof::ApiKeySecurity(pb::ApiKeySecurity {
            r#type: ty,
            name: string(m, "name"),
            r#in: string(m, "in"),
            description: desc,
            vendor_extension: ext,
        }),
    };
    pb::SecurityDefinitionsItem { oneof: Some(oneof) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn find<'a>(defs: &'a pb::Definitions, name: &str) -> &'a pb::Schema {
        defs.additional_properties
            .iter()
            .find(|d| d.name == name)
            .and_then(|d| d.value.as_ref())
            .unwrap_or_else(|| panic!("definition {name} missing"))
    }

    fn prop<'a>(s: &'a pb::Schema, name: &str) -> &'a pb::Schema {
        s.properties
            .as_ref()
            .and_then(|p| p.additional_properties.iter().find(|p| p.name == name))
            .and_then(|p| p.value.as_ref())
            .unwrap_or_else(|| panic!("property {name} missing"))
    }

    fn ext(exts: &[pb::NamedAny], name: &str) -> Value {
        let yaml = &exts
            .iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value.as_ref())
            .unwrap_or_else(|| panic!("extension {name} missing"))
            .yaml;
        serde_yaml::from_str(yaml).expect("extension YAML")
    }

    /// The served document survives JSON → protobuf → decode with its counts and the facts
    /// kubectl reads (GVK extensions, refs, properties, query parameters of PATCH).
    #[test]
    fn served_document_round_trips() {
        let json = kelson_apiresources::openapi_v2();
        let v: Value = serde_json::from_slice(json).unwrap();
        let bytes = encode(json).unwrap();
        let doc = pb::Document::decode(bytes.as_slice()).expect("decodes");

        assert_eq!(doc.swagger, "2.0");
        assert_eq!(doc.info.as_ref().unwrap().title, v["info"]["title"]);
        let paths = doc.paths.as_ref().unwrap();
        assert_eq!(paths.path.len(), v["paths"].as_object().unwrap().len());
        let defs = doc.definitions.as_ref().unwrap();
        assert_eq!(
            defs.additional_properties.len(),
            v["definitions"].as_object().unwrap().len()
        );

        // A schema's properties, $ref beside description, arrays' items and maps.
        let pod = find(defs, "io.k8s.api.core.v1.Pod");
        let jpod = &v["definitions"]["io.k8s.api.core.v1.Pod"];
        assert_eq!(
            pod.properties.as_ref().unwrap().additional_properties.len(),
            jpod["properties"].as_object().unwrap().len()
        );
        assert_eq!(
            prop(pod, "spec").r#ref,
            "#/definitions/io.k8s.api.core.v1.PodSpec"
        );
        assert_eq!(
            prop(pod, "kind").r#type.as_ref().unwrap().value,
            vec!["string".to_string()]
        );
        let gvk = ext(&pod.vendor_extension, "x-kubernetes-group-version-kind");
        assert_eq!(gvk, jpod["x-kubernetes-group-version-kind"]);
        assert_eq!(gvk[0]["kind"], "Pod");

        let spec = find(defs, "io.k8s.api.core.v1.PodSpec");
        let containers = prop(spec, "containers");
        assert_eq!(
            containers.items.as_ref().unwrap().schema[0].r#ref,
            "#/definitions/io.k8s.api.core.v1.Container"
        );
        assert_eq!(
            ext(&containers.vendor_extension, "x-kubernetes-patch-merge-key"),
            json!("name")
        );
        let node_selector = prop(spec, "nodeSelector");
        match node_selector
            .additional_properties
            .as_ref()
            .and_then(|a| a.oneof.as_ref())
        {
            Some(pb::additional_properties_item::Oneof::Schema(s)) => {
                assert_eq!(s.r#type.as_ref().unwrap().value, vec!["string".to_string()])
            }
            other => panic!("nodeSelector additionalProperties: {other:?}"),
        }
        assert!(spec.required.contains(&"containers".to_string()));
        // As upstream's: kubectl's client-side validation would refuse a kind without it.
        assert!(!pod.required.contains(&"metadata".to_string()));

        // PATCH of ConfigMap takes fieldValidation, as kubectl's query-param check reads it.
        let cm = paths
            .path
            .iter()
            .find(|p| p.name == "/api/v1/namespaces/{namespace}/configmaps/{name}")
            .and_then(|p| p.value.as_ref())
            .expect("configmap item path");
        let patch = cm.patch.as_ref().expect("patch operation");
        let gvk = ext(&patch.vendor_extension, "x-kubernetes-group-version-kind");
        assert_eq!(gvk["kind"], "ConfigMap");
        let query_names: Vec<String> = patch
            .parameters
            .iter()
            .chain(cm.parameters.iter())
            .filter_map(|p| match p.oneof.as_ref()? {
                pb::parameters_item::Oneof::Parameter(p) => match p.oneof.as_ref()? {
                    pb::parameter::Oneof::NonBodyParameter(nb) => match nb.oneof.as_ref()? {
                        pb::non_body_parameter::Oneof::QueryParameterSubSchema(q) => {
                            Some(q.name.clone())
                        }
                        _ => None,
                    },
                    _ => None,
                },
                _ => None,
            })
            .collect();
        assert!(
            query_names.iter().any(|n| n == "fieldValidation"),
            "{query_names:?}"
        );
        assert!(patch
            .responses
            .as_ref()
            .is_some_and(|r| !r.response_code.is_empty()));

        let sec = doc.security_definitions.as_ref().unwrap();
        assert!(matches!(
            sec.additional_properties[0].value.as_ref().unwrap().oneof,
            Some(pb::security_definitions_item::Oneof::ApiKeySecurity(_))
        ));
    }

    /// The shapes the served document may not exercise: body parameters, refs, allOf, enum,
    /// boolean additionalProperties, file responses, document-level parameters.
    #[test]
    fn converts_every_shape() {
        let v = json!({
            "swagger": "2.0",
            "info": {"title": "t", "version": "1", "x-info": {"a": [1, 2]}},
            "x-top": "yes",
            "parameters": {"body": {"name": "body", "in": "body", "required": true,
                "schema": {"$ref": "#/definitions/A"}}},
            "paths": {"/a/{name}": {
                "parameters": [{"$ref": "#/parameters/body"},
                    {"name": "name", "in": "path", "required": true, "type": "string"}],
                "post": {"operationId": "postA",
                    "parameters": [{"name": "body", "in": "body", "schema": {"type": "object"}},
                        {"name": "h", "in": "header", "type": "string"},
                        {"name": "f", "in": "formData", "type": "file", "allowEmptyValue": true},
                        {"name": "q", "in": "query", "type": "array",
                            "items": {"type": "integer", "format": "int32"}, "maxItems": 3}],
                    "responses": {"200": {"description": "ok", "schema": {"type": "file"}},
                        "default": {"$ref": "#/responses/err"}}}}},
            "definitions": {"A": {"type": "object",
                "allOf": [{"$ref": "#/definitions/B"}],
                "properties": {"e": {"type": "string", "enum": ["x", "y"], "default": "x"},
                    "m": {"type": "object", "additionalProperties": false},
                    "n": {"type": "number", "minimum": 1.5, "maximum": 10}},
                "additionalProperties": true}},
        });
        let doc = pb::Document::decode(document(&v).unwrap().encode_to_vec().as_slice()).unwrap();
        assert_eq!(ext(&doc.vendor_extension, "x-top"), json!("yes"));
        assert_eq!(
            ext(&doc.info.as_ref().unwrap().vendor_extension, "x-info"),
            json!({"a": [1, 2]})
        );
        let body = doc.parameters.as_ref().unwrap().additional_properties[0]
            .value
            .as_ref()
            .unwrap();
        assert!(
            matches!(&body.oneof, Some(pb::parameter::Oneof::BodyParameter(b))
            if b.required && b.schema.as_ref().unwrap().r#ref == "#/definitions/A")
        );

        let item = doc.paths.as_ref().unwrap().path[0].value.as_ref().unwrap();
        assert!(matches!(&item.parameters[0].oneof,
            Some(pb::parameters_item::Oneof::JsonReference(r)) if r.r#ref == "#/parameters/body"));
        let post = item.post.as_ref().unwrap();
        let kinds: Vec<&'static str> = post
            .parameters
            .iter()
            .map(|p| match p.oneof.as_ref().unwrap() {
                pb::parameters_item::Oneof::Parameter(p) => match p.oneof.as_ref().unwrap() {
                    pb::parameter::Oneof::BodyParameter(_) => "body",
                    pb::parameter::Oneof::NonBodyParameter(nb) => {
                        use pb::non_body_parameter::Oneof as N;
                        match nb.oneof.as_ref().unwrap() {
                            N::HeaderParameterSubSchema(_) => "header",
                            N::FormDataParameterSubSchema(f) if f.allow_empty_value => "formData",
                            N::FormDataParameterSubSchema(_) => "formData?",
                            N::QueryParameterSubSchema(q)
                                if q.max_items == 3
                                    && q.items.as_ref().unwrap().format == "int32" =>
                            {
                                "query"
                            }
                            N::QueryParameterSubSchema(_) => "query?",
                            N::PathParameterSubSchema(_) => "path",
                        }
                    }
                },
                pb::parameters_item::Oneof::JsonReference(_) => "ref",
            })
            .collect();
        assert_eq!(kinds, ["body", "header", "formData", "query"]);
        let codes = &post.responses.as_ref().unwrap().response_code;
        assert!(codes.iter().any(|c| c.name == "200"
            && matches!(&c.value.as_ref().unwrap().oneof,
                Some(pb::response_value::Oneof::Response(r)) if matches!(
                    r.schema.as_ref().unwrap().oneof,
                    Some(pb::schema_item::Oneof::FileSchema(_))))));
        assert!(
            codes.iter().any(|c| c.name == "default"
                && matches!(&c.value.as_ref().unwrap().oneof,
                Some(pb::response_value::Oneof::JsonReference(r)) if r.r#ref == "#/responses/err"))
        );

        let a = find(doc.definitions.as_ref().unwrap(), "A");
        assert_eq!(a.all_of[0].r#ref, "#/definitions/B");
        assert!(matches!(
            a.additional_properties.as_ref().unwrap().oneof,
            Some(pb::additional_properties_item::Oneof::Boolean(true))
        ));
        let e = prop(a, "e");
        let enums: Vec<Value> = e
            .r#enum
            .iter()
            .map(|x| serde_yaml::from_str(&x.yaml).unwrap())
            .collect();
        assert_eq!(enums, [json!("x"), json!("y")]);
        assert_eq!(
            serde_yaml::from_str::<Value>(&e.default.as_ref().unwrap().yaml).unwrap(),
            json!("x")
        );
        assert!(matches!(
            prop(a, "m").additional_properties.as_ref().unwrap().oneof,
            Some(pb::additional_properties_item::Oneof::Boolean(false))
        ));
        let n = prop(a, "n");
        assert_eq!((n.minimum, n.maximum), (1.5, 10.0));
    }

    #[test]
    fn negotiates_accept() {
        assert_eq!(negotiate(None), Some(Form::Json));
        assert_eq!(negotiate(Some(PROTOBUF)), Some(Form::Protobuf));
        assert_eq!(negotiate(Some(PROTOBUF_V1)), Some(Form::Protobuf));
        assert_eq!(negotiate(Some(PROTOBUF_V2)), Some(Form::Protobuf));
        assert_eq!(negotiate(Some("application/json, */*")), Some(Form::Json));
        assert_eq!(
            negotiate(Some(&format!("application/json;q=0.5, {PROTOBUF}"))),
            Some(Form::Protobuf)
        );
        assert_eq!(negotiate(Some("application/xml")), None);
        assert_eq!(negotiate(Some(&format!("{PROTOBUF};q=0"))), None);
    }
}
