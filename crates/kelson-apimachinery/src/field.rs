//! Field-level validation errors, as upstream's `k8s.io/apimachinery/pkg/util/validation/field`.
//!
//! Each builder returns a [`StatusCause`] directly: that is the only shape a field error ever
//! takes on the wire (`details.causes[]` of an `Invalid` Status), and [`crate::error::ApiError::invalid`]
//! renders the top-level message from the causes (`<field>: <body>`). The cause's `message`
//! is upstream's `ErrorBody()`: the error type's text (`Invalid value`, `Required value`, ...),
//! the offending value printed like Go's `%q`/`%v`, then `: <detail>`.
//!
//! Field paths are plain strings (`spec.containers[0].name`, `metadata.labels`); [`child`],
//! [`index`] and [`key`] build them the way upstream's `field.Path` prints.

use serde_json::{json, Map, Value};

use crate::error::go_quote;

/// `metav1.StatusCause`: one field problem (`reason` is upstream's `CauseType`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusCause {
    /// `FieldValueRequired`, `FieldValueInvalid`, ...
    pub reason: String,
    /// The error body, without the field path.
    pub message: String,
    /// The field path, e.g. `spec.containers[0].image`.
    pub field: String,
}

impl StatusCause {
    /// A `FieldValueInvalid` cause with a ready-made message.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        StatusCause {
            reason: "FieldValueInvalid".into(),
            message: message.into(),
            field: field.into(),
        }
    }

    /// A bare `FieldValueRequired` cause (`Required value`).
    pub fn required(field: &str) -> Self {
        required(field, "")
    }

    /// The cause's JSON, empty members omitted like upstream's `omitempty`.
    pub fn to_value(&self) -> Value {
        let mut m = Map::new();
        if !self.reason.is_empty() {
            m.insert("reason".into(), json!(self.reason));
        }
        if !self.message.is_empty() {
            m.insert("message".into(), json!(self.message));
        }
        if !self.field.is_empty() {
            m.insert("field".into(), json!(self.field));
        }
        Value::Object(m)
    }
}

/// `path.Child(name)`: `a` + `b` → `a.b`.
pub fn child(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

/// `path.Index(i)`: `a` + 0 → `a[0]`.
pub fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// `path.Key(k)`: `a` + `k` → `a[k]`.
pub fn key(path: &str, k: &str) -> String {
    format!("{path}[{k}]")
}

/// Prints a bad value the way upstream's `ErrorBody` does: strings with `%q`, numbers and
/// booleans with `%v`, `nil` as the quoted string `"null"`; composite values as compact JSON
/// (upstream prints Go syntax there, which has no JSON equivalent).
pub fn format_value(v: &Value) -> String {
    match v {
        Value::String(s) => go_quote(s),
        Value::Null => go_quote("null"),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    }
}

fn cause(reason: &str, field: &str, body: String, detail: &str) -> StatusCause {
    let message = if detail.is_empty() {
        body
    } else {
        format!("{body}: {detail}")
    };
    StatusCause {
        reason: reason.to_string(),
        message,
        field: field.to_string(),
    }
}

/// `field.Required`: `Required value` (`: <detail>` when given).
pub fn required(field: &str, detail: &str) -> StatusCause {
    cause("FieldValueRequired", field, "Required value".into(), detail)
}

/// `field.Invalid`: `Invalid value: "x": <detail>`.
pub fn invalid(field: &str, value: &Value, detail: &str) -> StatusCause {
    cause(
        "FieldValueInvalid",
        field,
        format!("Invalid value: {}", format_value(value)),
        detail,
    )
}

/// `field.Invalid` with the bad value already printed (for values whose Go rendering, such as
/// `[]string{"a"}`, has no JSON equivalent).
pub fn invalid_raw(field: &str, printed_value: &str, detail: &str) -> StatusCause {
    cause(
        "FieldValueInvalid",
        field,
        format!("Invalid value: {printed_value}"),
        detail,
    )
}

/// `field.Invalid` for a string value (the common case).
pub fn invalid_str(field: &str, value: &str, detail: &str) -> StatusCause {
    invalid(field, &Value::String(value.to_string()), detail)
}

/// `field.TypeInvalid`: reason `FieldValueTypeInvalid`, body like `Invalid`.
pub fn type_invalid(field: &str, value: &Value, detail: &str) -> StatusCause {
    cause(
        "FieldValueTypeInvalid",
        field,
        format!("Invalid value: {}", format_value(value)),
        detail,
    )
}

/// `field.NotSupported`: `Unsupported value: "x": supported values: "a", "b"`.
pub fn not_supported(field: &str, value: &Value, valid: &[&str]) -> StatusCause {
    let detail = if valid.is_empty() {
        String::new()
    } else {
        let quoted: Vec<String> = valid.iter().map(|v| go_quote(v)).collect();
        format!("supported values: {}", quoted.join(", "))
    };
    cause(
        "FieldValueNotSupported",
        field,
        format!("Unsupported value: {}", format_value(value)),
        &detail,
    )
}

/// `field.Duplicate`: `Duplicate value: "x"`.
pub fn duplicate(field: &str, value: &Value) -> StatusCause {
    cause(
        "FieldValueDuplicate",
        field,
        format!("Duplicate value: {}", format_value(value)),
        "",
    )
}

/// `field.NotFound`: `Not found: "x"`.
pub fn not_found(field: &str, value: &Value) -> StatusCause {
    cause(
        "FieldValueNotFound",
        field,
        format!("Not found: {}", format_value(value)),
        "",
    )
}

/// `field.Forbidden`: `Forbidden: <detail>`.
pub fn forbidden(field: &str, detail: &str) -> StatusCause {
    cause("FieldValueForbidden", field, "Forbidden".into(), detail)
}

/// `field.TooLong`: `Too long: may not be more than 256 bytes` (the value is never printed:
/// it is too long by definition). A negative `max_len` gives `Too long: value is too long`.
pub fn too_long(field: &str, max_len: i64) -> StatusCause {
    let detail = if max_len >= 0 {
        let unit = if max_len == 1 { "byte" } else { "bytes" };
        format!("may not be more than {max_len} {unit}")
    } else {
        "value is too long".to_string()
    };
    cause("FieldValueTooLong", field, "Too long".into(), &detail)
}

/// `field.TooMany`: `Too many: 5: must have at most 3 items`.
pub fn too_many(field: &str, actual: i64, max: i64) -> StatusCause {
    let detail = if max >= 0 {
        let unit = if max == 1 { "item" } else { "items" };
        format!("must have at most {max} {unit}")
    } else {
        "has too many items".to_string()
    };
    let body = if actual >= 0 {
        format!("Too many: {actual}")
    } else {
        "Too many".to_string()
    };
    cause("FieldValueTooMany", field, body, &detail)
}

/// `field.InternalError`: `Internal error: <detail>`.
pub fn internal_error(field: &str, detail: &str) -> StatusCause {
    cause("InternalError", field, "Internal error".into(), detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_match_upstream_error_body() {
        assert_eq!(required("a", "").message, "Required value");
        assert_eq!(
            required("metadata.name", "name or generateName is required").message,
            "Required value: name or generateName is required"
        );
        let c = invalid("metadata.name", &json!("x"), "bad name");
        assert_eq!(c.reason, "FieldValueInvalid");
        assert_eq!(c.message, "Invalid value: \"x\": bad name");
        assert_eq!(
            invalid(
                "spec.replicas",
                &json!(-1),
                "must be greater than or equal to 0"
            )
            .message,
            "Invalid value: -1: must be greater than or equal to 0"
        );
        assert_eq!(
            invalid("a", &Value::Null, "").message,
            "Invalid value: \"null\""
        );
        let c = not_supported(
            "spec.restartPolicy",
            &json!("Sometimes"),
            &["Always", "Never"],
        );
        assert_eq!(c.reason, "FieldValueNotSupported");
        assert_eq!(
            c.message,
            "Unsupported value: \"Sometimes\": supported values: \"Always\", \"Never\""
        );
        assert_eq!(
            duplicate("x", &json!("c")).message,
            "Duplicate value: \"c\""
        );
        assert_eq!(duplicate("x", &json!("c")).reason, "FieldValueDuplicate");
        let c = forbidden("metadata.namespace", "not allowed on this type");
        assert_eq!(
            (c.reason.as_str(), c.message.as_str()),
            ("FieldValueForbidden", "Forbidden: not allowed on this type")
        );
        let c = too_long("metadata.annotations", 262144);
        assert_eq!(c.reason, "FieldValueTooLong");
        assert_eq!(c.message, "Too long: may not be more than 262144 bytes");
        assert_eq!(
            too_many("spec.x", 5, 3).message,
            "Too many: 5: must have at most 3 items"
        );
    }

    #[test]
    fn paths_and_display() {
        let p = index(&child(&child("", "spec"), "containers"), 0);
        assert_eq!(child(&p, "name"), "spec.containers[0].name");
        assert_eq!(key("metadata.labels", "app"), "metadata.labels[app]");
        assert_eq!(
            required("spec.containers[0].name", "").to_string(),
            "spec.containers[0].name: Required value"
        );
        assert_eq!(
            required("f", "").to_value(),
            json!({"reason": "FieldValueRequired", "message": "Required value", "field": "f"})
        );
    }
}
