//! Kubernetes API errors and their `metav1.Status` wire form.
//!
//! Every failure the API server returns is an [`ApiError`]: an HTTP code, a machine-readable
//! `reason` (`NotFound`, `Conflict`, `Invalid`, ...), a human message and optional
//! [`StatusDetails`]. The constructors reproduce the message formats of upstream's
//! `k8s.io/apimachinery/pkg/api/errors` exactly, because clients match on them: `kubectl`
//! prints the message verbatim, client libraries branch on `reason` and `details`, and
//! conformance-style tests compare whole strings.
//!
//! Resource-qualified constructors take `(group, resource)` and render upstream's
//! `GroupResource.String()` (`pods`, `deployments.apps`); `invalid` takes `(group, kind)` and
//! renders `GroupKind.String()` (`Pod`, `Deployment.apps`). Field-level problems are
//! [`StatusCause`]s built with the [`crate::field`] helpers.

use std::fmt;

use serde_json::{json, Map, Value};

pub use crate::field::StatusCause;

/// A Kubernetes API error: everything needed to render a `metav1.Status` and pick the HTTP code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// HTTP status code (also `Status.code`).
    pub code: u16,
    /// `Status.reason`, one of upstream's `StatusReason` values.
    pub reason: &'static str,
    /// `Status.message`, shown to users verbatim.
    pub message: String,
    /// `Status.details`, omitted when `None`.
    pub details: Option<StatusDetails>,
}

/// `metav1.StatusDetails`: which object the error is about and, for `Invalid`, the causes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusDetails {
    pub name: String,
    pub group: String,
    /// Upstream puts the *resource* here for resource errors (`pods`) and the kind for `Invalid`.
    pub kind: String,
    pub causes: Vec<StatusCause>,
    /// `retryAfterSeconds`; 0 is omitted from the JSON like upstream's `omitempty`.
    pub retry_after_seconds: i32,
}

/// `GroupResource.String()`: `pods`, `deployments.apps`.
pub fn qualified_resource(group: &str, resource: &str) -> String {
    if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    }
}

/// `GroupKind.String()`: `Pod`, `Deployment.apps`.
pub fn qualified_kind(group: &str, kind: &str) -> String {
    if group.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}.{group}")
    }
}

/// Go's `strconv.Quote` (what `%q` prints): double quotes, backslash escapes for quotes,
/// backslashes and non-printable characters; printable Unicode is kept as is.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() => {
                if (c as u32) <= 0xffff {
                    out.push_str(&format!("\\u{:04x}", c as u32));
                } else {
                    out.push_str(&format!("\\U{:08x}", c as u32));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The optimistic-concurrency message upstream's storage layer puts in a Conflict.
pub const OPTIMISTIC_LOCK_ERROR_MSG: &str =
    "the object has been modified; please apply your changes to the latest version and try again";

impl ApiError {
    /// An error with the given code, reason and message and no details.
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self::simple(code, reason, message)
    }

    /// 404 for a URL that names no resource: upstream's generic not-found text.
    pub fn path_not_found() -> Self {
        Self::simple(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    fn simple(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn with_object(
        code: u16,
        reason: &'static str,
        message: String,
        group: &str,
        kind: &str,
        name: &str,
    ) -> Self {
        ApiError {
            code,
            reason,
            message,
            details: Some(StatusDetails {
                name: name.to_string(),
                group: group.to_string(),
                kind: kind.to_string(),
                ..Default::default()
            }),
        }
    }

    /// The `metav1.Status` JSON object, field for field as upstream serializes it.
    pub fn to_status(&self) -> Value {
        let mut m = Map::new();
        m.insert("kind".into(), json!("Status"));
        m.insert("apiVersion".into(), json!("v1"));
        m.insert("metadata".into(), json!({}));
        m.insert("status".into(), json!("Failure"));
        if !self.message.is_empty() {
            m.insert("message".into(), json!(self.message));
        }
        if !self.reason.is_empty() {
            m.insert("reason".into(), json!(self.reason));
        }
        if let Some(d) = &self.details {
            let mut dm = Map::new();
            if !d.name.is_empty() {
                dm.insert("name".into(), json!(d.name));
            }
            if !d.group.is_empty() {
                dm.insert("group".into(), json!(d.group));
            }
            if !d.kind.is_empty() {
                dm.insert("kind".into(), json!(d.kind));
            }
            if !d.causes.is_empty() {
                dm.insert(
                    "causes".into(),
                    Value::Array(d.causes.iter().map(StatusCause::to_value).collect()),
                );
            }
            if d.retry_after_seconds != 0 {
                dm.insert("retryAfterSeconds".into(), json!(d.retry_after_seconds));
            }
            m.insert("details".into(), Value::Object(dm));
        }
        m.insert("code".into(), json!(self.code));
        Value::Object(m)
    }

    /// 404 NotFound: `pods "x" not found`.
    pub fn not_found(group: &str, resource: &str, name: &str) -> Self {
        let msg = format!(
            "{} {} not found",
            qualified_resource(group, resource),
            go_quote(name)
        );
        Self::with_object(404, "NotFound", msg, group, resource, name)
    }

    /// 409 AlreadyExists: `pods "x" already exists`.
    pub fn already_exists(group: &str, resource: &str, name: &str) -> Self {
        let msg = format!(
            "{} {} already exists",
            qualified_resource(group, resource),
            go_quote(name)
        );
        Self::with_object(409, "AlreadyExists", msg, group, resource, name)
    }

    /// 409 AlreadyExists for a create whose generated name collided (upstream asks the client
    /// to retry after one second).
    pub fn generate_name_conflict(group: &str, resource: &str, name: &str) -> Self {
        let msg = format!(
            "{} {} already exists, the server was not able to generate a unique name for the object",
            qualified_resource(group, resource),
            go_quote(name)
        );
        let mut e = Self::with_object(409, "AlreadyExists", msg, group, resource, name);
        if let Some(d) = e.details.as_mut() {
            d.retry_after_seconds = 1;
        }
        e
    }

    /// 409 Conflict: `Operation cannot be fulfilled on pods "x": <msg>`; pass
    /// [`OPTIMISTIC_LOCK_ERROR_MSG`] for a stale resourceVersion.
    pub fn conflict(group: &str, resource: &str, name: &str, msg: &str) -> Self {
        let message = format!(
            "Operation cannot be fulfilled on {} {}: {}",
            qualified_resource(group, resource),
            go_quote(name),
            msg
        );
        Self::with_object(409, "Conflict", message, group, resource, name)
    }

    /// 422 Invalid: `Pod "x" is invalid: spec.containers[0].name: Required value`; several causes
    /// are joined like upstream's `ErrorList.ToAggregate()` (`[a, b]`, duplicates dropped).
    pub fn invalid(group: &str, kind: &str, name: &str, causes: Vec<StatusCause>) -> Self {
        let head = format!(
            "{} {} is invalid",
            qualified_kind(group, kind),
            go_quote(name)
        );
        let message = match aggregate(&causes) {
            Some(agg) => format!("{head}: {agg}"),
            None => head,
        };
        ApiError {
            code: 422,
            reason: "Invalid",
            message,
            details: Some(StatusDetails {
                name: name.to_string(),
                group: group.to_string(),
                kind: kind.to_string(),
                causes,
                retry_after_seconds: 0,
            }),
        }
    }

    /// 422 Invalid without object details: upstream's `NewGenericServerResponse(422, ...)`, which
    /// the patch handler returns when a JSON patch fails to apply. Upstream's message is fixed
    /// and drops the underlying error, so ours does too (clients compare it verbatim).
    pub fn unprocessable() -> Self {
        ApiError {
            code: 422,
            reason: "Invalid",
            message: "the server rejected our request due to an error in our request".into(),
            details: Some(StatusDetails::default()),
        }
    }

    /// 400 BadRequest with the given message.
    pub fn bad_request(msg: impl Into<String>) -> Self {
        Self::simple(400, "BadRequest", msg)
    }

    /// 403 Forbidden from the authorizer: `pods "x" is forbidden: User "bob" cannot get
    /// resource "pods" in API group "" in the namespace "default"` (upstream's
    /// `forbiddenMessage`), with `: <reason>` appended when the authorizer gave one.
    /// `resource` may carry a subresource (`pods/exec`): the message names it, the object part
    /// and details use the resource alone, as upstream. `name` empty gives
    /// `pods is forbidden: ...`; `namespace` empty gives `... at the cluster scope`.
    pub fn forbidden(
        user: &str,
        verb: &str,
        group: &str,
        resource: &str,
        namespace: &str,
        name: &str,
        reason: &str,
    ) -> Self {
        let mut why = if namespace.is_empty() {
            format!(
                "User {} cannot {} resource {} in API group {} at the cluster scope",
                go_quote(user),
                verb,
                go_quote(resource),
                go_quote(group)
            )
        } else {
            format!(
                "User {} cannot {} resource {} in API group {} in the namespace {}",
                go_quote(user),
                verb,
                go_quote(resource),
                go_quote(group),
                go_quote(namespace)
            )
        };
        if !reason.is_empty() {
            why.push_str(": ");
            why.push_str(reason);
        }
        let base = resource.split('/').next().unwrap_or(resource);
        Self::forbidden_for(group, base, name, &why)
    }

    /// 403 Forbidden for a non-resource URL: `forbidden: User "bob" cannot get path "/foo"`.
    pub fn forbidden_path(user: &str, verb: &str, path: &str) -> Self {
        let why = format!(
            "User {} cannot {} path {}",
            go_quote(user),
            verb,
            go_quote(path)
        );
        Self::forbidden_for("", "", "", &why)
    }

    /// 403 Forbidden with a message used verbatim.
    pub fn forbidden_msg(msg: impl Into<String>) -> Self {
        Self::simple(403, "Forbidden", msg)
    }

    /// 403 Forbidden with a free-form reason (admission, namespace termination, ...), formatted
    /// like upstream's `NewForbidden`: `pods "x" is forbidden: <err>`.
    pub fn forbidden_for(group: &str, resource: &str, name: &str, err: &str) -> Self {
        let message = if resource.is_empty() && group.is_empty() {
            format!("forbidden: {err}")
        } else if name.is_empty() {
            format!(
                "{} is forbidden: {err}",
                qualified_resource(group, resource)
            )
        } else {
            format!(
                "{} {} is forbidden: {err}",
                qualified_resource(group, resource),
                go_quote(name)
            )
        };
        Self::with_object(403, "Forbidden", message, group, resource, name)
    }

    /// 401 Unauthorized (`Unauthorized` is what the authentication filter writes).
    pub fn unauthorized() -> Self {
        Self::simple(401, "Unauthorized", "Unauthorized")
    }

    /// 410 Expired: a resourceVersion or continue token older than the compaction.
    pub fn expired(msg: impl Into<String>) -> Self {
        Self::simple(410, "Expired", msg)
    }

    /// 410 Gone.
    pub fn gone(msg: impl Into<String>) -> Self {
        Self::simple(410, "Gone", msg)
    }

    /// 413 RequestEntityTooLarge: `Request entity too large: <msg>`.
    pub fn too_large(msg: impl Into<String>) -> Self {
        Self::simple(
            413,
            "RequestEntityTooLarge",
            format!("Request entity too large: {}", msg.into()),
        )
    }

    /// 415 UnsupportedMediaType as upstream's content negotiation reports it; `accepted` is
    /// the list of media types the endpoint takes (`application/json, application/yaml`).
    pub fn unsupported_media_type(accepted: &str) -> Self {
        Self::simple(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: {}",
                accepted
            ),
        )
    }

    /// 405 MethodNotAllowed: `<verb> is not supported on resources of kind "pods"`;
    /// `resource` is the qualified resource (`deployments.apps`, `pods/log`).
    pub fn method_not_supported(verb: &str, resource: &str) -> Self {
        let message = format!(
            "{verb} is not supported on resources of kind {}",
            go_quote(resource)
        );
        let (res, group) = match resource.split_once('.') {
            Some((r, g)) => (r, g),
            None => (resource, ""),
        };
        Self::with_object(405, "MethodNotAllowed", message, group, res, "")
    }

    /// 406 NotAcceptable.
    pub fn not_acceptable(msg: impl Into<String>) -> Self {
        Self::simple(406, "NotAcceptable", msg)
    }

    /// 500 InternalError: `Internal error occurred: <msg>` with the message as the one cause.
    pub fn internal(msg: impl Into<String>) -> Self {
        let msg = msg.into();
        ApiError {
            code: 500,
            reason: "InternalError",
            message: format!("Internal error occurred: {msg}"),
            details: Some(StatusDetails {
                causes: vec![StatusCause {
                    reason: String::new(),
                    message: msg,
                    field: String::new(),
                }],
                ..Default::default()
            }),
        }
    }

    /// 504 Timeout: `Timeout: <msg>`.
    pub fn timeout(msg: impl Into<String>) -> Self {
        Self::simple(504, "Timeout", format!("Timeout: {}", msg.into()))
    }

    /// 503 ServiceUnavailable.
    pub fn service_unavailable(msg: impl Into<String>) -> Self {
        Self::simple(503, "ServiceUnavailable", msg)
    }

    /// 429 TooManyRequests with a retry hint.
    pub fn too_many_requests(msg: impl Into<String>, retry_after_seconds: i32) -> Self {
        let mut e = Self::simple(429, "TooManyRequests", msg);
        e.details = Some(StatusDetails {
            retry_after_seconds,
            ..Default::default()
        });
        e
    }
}

/// Upstream's `ErrorList.ToAggregate().Error()`: `field: body` per cause, duplicates dropped,
/// one message alone, several as `[a, b]`. `None` for no causes.
pub fn aggregate(causes: &[StatusCause]) -> Option<String> {
    let mut seen: Vec<String> = Vec::new();
    for c in causes {
        let msg = c.to_string();
        if !seen.contains(&msg) {
            seen.push(msg);
        }
    }
    match seen.len() {
        0 => None,
        1 => seen.pop(),
        _ => Some(format!("[{}]", seen.join(", "))),
    }
}

impl fmt::Display for StatusCause {
    /// Upstream's `field.Error.Error()`: `<field>: <body>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::field;

    #[test]
    fn not_found_status_json_matches_upstream() {
        let e = ApiError::not_found("", "pods", "x");
        assert_eq!(e.code, 404);
        assert_eq!(
            e.to_status(),
            json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "pods \"x\" not found", "reason": "NotFound",
                "details": {"name": "x", "kind": "pods"}, "code": 404
            })
        );
        let e = ApiError::not_found("apps", "deployments", "web");
        assert_eq!(e.message, "deployments.apps \"web\" not found");
        assert_eq!(e.to_status()["details"]["group"], "apps");
    }

    #[test]
    fn already_exists_and_conflict_messages() {
        let e = ApiError::already_exists("", "pods", "x");
        assert_eq!((e.code, e.reason), (409, "AlreadyExists"));
        assert_eq!(e.message, "pods \"x\" already exists");
        let e = ApiError::conflict("", "pods", "x", OPTIMISTIC_LOCK_ERROR_MSG);
        assert_eq!((e.code, e.reason), (409, "Conflict"));
        assert_eq!(
            e.message,
            "Operation cannot be fulfilled on pods \"x\": the object has been modified; please apply your changes to the latest version and try again"
        );
        let e = ApiError::generate_name_conflict("", "pods", "web-abcde");
        assert_eq!(e.to_status()["details"]["retryAfterSeconds"], 1);
    }

    #[test]
    fn invalid_single_and_aggregated() {
        let e = ApiError::invalid(
            "",
            "Pod",
            "x",
            vec![field::required("spec.containers[0].name", "")],
        );
        assert_eq!(e.code, 422);
        assert_eq!(
            e.message,
            "Pod \"x\" is invalid: spec.containers[0].name: Required value"
        );
        let st = e.to_status();
        assert_eq!(
            st["details"],
            json!({"name": "x", "kind": "Pod", "causes": [
                {"reason": "FieldValueRequired", "message": "Required value", "field": "spec.containers[0].name"}
            ]})
        );

        let a = field::invalid("metadata.name", &json!("A_b"), "bad");
        let b = field::required("spec.template", "");
        let e = ApiError::invalid("apps", "Deployment", "web", vec![a.clone(), b, a]);
        assert_eq!(
            e.message,
            "Deployment.apps \"web\" is invalid: [metadata.name: Invalid value: \"A_b\": bad, spec.template: Required value]"
        );
        assert_eq!(e.details.as_ref().unwrap().causes.len(), 3);
        let e = ApiError::invalid("", "Pod", "x", vec![]);
        assert_eq!(e.message, "Pod \"x\" is invalid");
    }

    #[test]
    fn forbidden_messages() {
        let e = ApiError::forbidden("bob", "get", "", "pods", "default", "x", "");
        assert_eq!(e.code, 403);
        assert_eq!(
            e.message,
            "pods \"x\" is forbidden: User \"bob\" cannot get resource \"pods\" in API group \"\" in the namespace \"default\""
        );
        let e = ApiError::forbidden("bob", "list", "apps", "deployments", "", "", "");
        assert_eq!(
            e.message,
            "deployments.apps is forbidden: User \"bob\" cannot list resource \"deployments\" in API group \"apps\" at the cluster scope"
        );
        let e = ApiError::forbidden("bob", "create", "", "pods/exec", "ns", "p", "no rule");
        assert_eq!(
            e.message,
            "pods \"p\" is forbidden: User \"bob\" cannot create resource \"pods/exec\" in API group \"\" in the namespace \"ns\": no rule"
        );
        let e = ApiError::forbidden_path("bob", "get", "/metrics");
        assert_eq!(
            e.message,
            "forbidden: User \"bob\" cannot get path \"/metrics\""
        );
    }

    #[test]
    fn simple_errors_codes_and_reasons() {
        let cases = [
            (ApiError::expired("too old"), 410, "Expired"),
            (ApiError::gone("gone"), 410, "Gone"),
            (
                ApiError::too_large("limit is 3145728"),
                413,
                "RequestEntityTooLarge",
            ),
            (
                ApiError::unsupported_media_type("application/json"),
                415,
                "UnsupportedMediaType",
            ),
            (
                ApiError::method_not_supported("deletecollection", "pods"),
                405,
                "MethodNotAllowed",
            ),
            (ApiError::not_acceptable("no"), 406, "NotAcceptable"),
            (ApiError::internal("boom"), 500, "InternalError"),
            (ApiError::timeout("slow"), 504, "Timeout"),
            (
                ApiError::service_unavailable("down"),
                503,
                "ServiceUnavailable",
            ),
            (ApiError::unauthorized(), 401, "Unauthorized"),
            (ApiError::bad_request("bad"), 400, "BadRequest"),
            (ApiError::unprocessable(), 422, "Invalid"),
        ];
        for (e, code, reason) in cases {
            assert_eq!((e.code, e.reason), (code, reason), "{e:?}");
            let st = e.to_status();
            assert_eq!(st["code"], code);
            assert_eq!(st["reason"], reason);
            assert_eq!(st["status"], "Failure");
        }
        assert_eq!(
            ApiError::method_not_supported("deletecollection", "pods").message,
            "deletecollection is not supported on resources of kind \"pods\""
        );
        assert_eq!(
            ApiError::internal("boom").to_status()["details"],
            json!({"causes": [{"message": "boom"}]})
        );
        assert_eq!(ApiError::timeout("slow").message, "Timeout: slow");
        let e = ApiError::method_not_supported("create", "deployments.apps");
        assert_eq!(
            e.message,
            "create is not supported on resources of kind \"deployments.apps\""
        );
        assert_eq!(
            e.to_status()["details"],
            json!({"group": "apps", "kind": "deployments"})
        );
        assert_eq!(ApiError::path_not_found().code, 404);
        assert_eq!(ApiError::forbidden_msg("no").message, "no");
        assert_eq!(
            ApiError::forbidden_for("", "pods", "p", "unable to create new content").message,
            "pods \"p\" is forbidden: unable to create new content"
        );
        assert_eq!(
            ApiError::too_large("x").message,
            "Request entity too large: x"
        );
    }

    #[test]
    fn go_quote_escapes_like_strconv_quote() {
        assert_eq!(go_quote("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(go_quote("\n\t\u{1}"), r#""\n\t\x01""#);
        assert_eq!(go_quote("héllo"), "\"héllo\"");
    }
}
