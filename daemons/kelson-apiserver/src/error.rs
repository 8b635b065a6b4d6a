//! `ApiError`: every failure a handler returns, rendered as a `metav1.Status`.
//!
//! The shape and constructors follow docs/apiserver-design.md (the interface kelson-apimachinery
//! is to export), with upstream's message wording, so that when that crate lands this module
//! becomes a re-export. Messages matter: kubectl prints them verbatim (`Error from server
//! (NotFound): pods "x" not found`).

use serde_json::{json, Value};

/// One field-level problem of a 422 Invalid (or a 409/400 detail).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusCause {
    pub reason: String,
    pub message: String,
    pub field: String,
}

impl StatusCause {
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        StatusCause {
            reason: "FieldValueInvalid".into(),
            message: message.into(),
            field: field.into(),
        }
    }
    pub fn required(field: &str) -> Self {
        StatusCause {
            reason: "FieldValueRequired".into(),
            message: "Required value".into(),
            field: field.into(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusDetails {
    pub name: String,
    pub group: String,
    pub kind: String,
    pub causes: Vec<StatusCause>,
}

/// An API error: HTTP code, Status reason, message and optional details.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<StatusDetails>,
}

/// `pods`, `deployments.apps`: how upstream names a resource in messages.
fn qualified(group: &str, resource: &str) -> String {
    if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    }
}

fn details(group: &str, kind: &str, name: &str) -> Option<StatusDetails> {
    Some(StatusDetails {
        name: name.into(),
        group: group.into(),
        kind: kind.into(),
        causes: Vec::new(),
    })
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    /// The `metav1.Status` object.
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            let mut dj = serde_json::Map::new();
            if !d.name.is_empty() {
                dj.insert("name".into(), json!(d.name));
            }
            if !d.group.is_empty() {
                dj.insert("group".into(), json!(d.group));
            }
            if !d.kind.is_empty() {
                dj.insert("kind".into(), json!(d.kind));
            }
            if !d.causes.is_empty() {
                dj.insert(
                    "causes".into(),
                    d.causes
                        .iter()
                        .map(
                            |c| json!({"reason": c.reason, "message": c.message, "field": c.field}),
                        )
                        .collect(),
                );
            }
            s["details"] = Value::Object(dj);
        }
        s
    }

    pub fn not_found(group: &str, resource: &str, name: &str) -> Self {
        ApiError {
            details: details(group, resource, name),
            ..Self::new(
                404,
                "NotFound",
                format!("{} \"{name}\" not found", qualified(group, resource)),
            )
        }
    }
    pub fn already_exists(group: &str, resource: &str, name: &str) -> Self {
        ApiError {
            details: details(group, resource, name),
            ..Self::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", qualified(group, resource)),
            )
        }
    }
    pub fn conflict(group: &str, resource: &str, name: &str, msg: &str) -> Self {
        ApiError {
            details: details(group, resource, name),
            ..Self::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": {msg}",
                    qualified(group, resource)
                ),
            )
        }
    }
    /// 422 with field causes; the message lists them like upstream's aggregate.
    pub fn invalid(group: &str, kind: &str, name: &str, causes: Vec<StatusCause>) -> Self {
        let list = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect::<Vec<_>>();
        let body = if list.len() == 1 {
            list[0].clone()
        } else {
            format!("[{}]", list.join(", "))
        };
        let qkind = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{group}")
        };
        ApiError {
            details: Some(StatusDetails {
                name: name.into(),
                group: group.into(),
                kind: kind.into(),
                causes,
            }),
            ..Self::new(
                422,
                "Invalid",
                format!("{qkind} \"{name}\" is invalid: {body}"),
            )
        }
    }
    pub fn bad_request(msg: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", msg)
    }
    pub fn forbidden(
        user: &str,
        verb: &str,
        group: &str,
        resource: &str,
        ns: &str,
        name: &str,
        reason: &str,
    ) -> Self {
        let what = if name.is_empty() {
            qualified(group, resource)
        } else {
            format!("{} \"{name}\"", qualified(group, resource))
        };
        let scope = if ns.is_empty() {
            "at the cluster scope".to_string()
        } else {
            format!("in the namespace \"{ns}\"")
        };
        let mut msg = format!("{what} is forbidden: User \"{user}\" cannot {verb} resource \"{resource}\" in API group \"{group}\" {scope}");
        if !reason.is_empty() {
            msg.push_str(": ");
            msg.push_str(reason);
        }
        ApiError {
            details: details(group, resource, name),
            ..Self::new(403, "Forbidden", msg)
        }
    }
    /// A 403 with an arbitrary message (admission refusals).
    pub fn forbidden_msg(msg: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", msg)
    }
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }
    pub fn expired(msg: impl Into<String>) -> Self {
        Self::new(410, "Expired", msg)
    }
    pub fn gone(msg: impl Into<String>) -> Self {
        Self::new(410, "Gone", msg)
    }
    pub fn too_large(msg: impl Into<String>) -> Self {
        Self::new(413, "RequestEntityTooLarge", msg)
    }
    pub fn unsupported_media_type(ct: &str) -> Self {
        Self::new(415, "UnsupportedMediaType", format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {ct:?})"))
    }
    pub fn method_not_supported(verb: &str, resource: &str) -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            format!("{verb} is not supported on resources of kind {resource:?}"),
        )
    }
    pub fn not_acceptable(msg: impl Into<String>) -> Self {
        Self::new(406, "NotAcceptable", msg)
    }
    pub fn internal(msg: impl Into<String>) -> Self {
        Self::new(
            500,
            "InternalError",
            format!("Internal error occurred: {}", msg.into()),
        )
    }
    pub fn timeout(msg: impl Into<String>) -> Self {
        Self::new(504, "Timeout", msg)
    }
    pub fn service_unavailable(msg: impl Into<String>) -> Self {
        Self::new(503, "ServiceUnavailable", msg)
    }
    pub fn path_not_found() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_shapes_match_upstream() {
        let s = ApiError::not_found("apps", "deployments", "web").to_status();
        assert_eq!(s["message"], "deployments.apps \"web\" not found");
        assert_eq!(s["code"], 404);
        assert_eq!(s["details"]["kind"], "deployments");
        let e = ApiError::invalid(
            "",
            "Pod",
            "p",
            vec![StatusCause::required("spec.containers")],
        );
        assert_eq!(e.code, 422);
        assert_eq!(
            e.message,
            "Pod \"p\" is invalid: spec.containers: Required value"
        );
        assert_eq!(
            e.to_status()["details"]["causes"][0]["field"],
            "spec.containers"
        );
        let c = ApiError::conflict("", "configmaps", "c", "the object has been modified");
        assert_eq!(c.to_status()["reason"], "Conflict");
    }
}
