//! Name, label and object-meta validation with upstream's exact messages.
//!
//! The `is_*` checks mirror `k8s.io/apimachinery/pkg/util/validation`: each returns the list
//! of problems as upstream's strings (empty when valid), so callers turn them into
//! `field::invalid(path, value, msg)` causes exactly as upstream's validators do and `kubectl`
//! shows the familiar text. The regular expressions are matched by small hand-written
//! scanners (the grammars are tiny), but the messages quote upstream's regex text verbatim.
//!
//! [`validate_object_meta`] and [`validate_object_meta_update`] mirror
//! `k8s.io/apimachinery/pkg/api/validation/objectmeta.go` over a `serde_json::Value`.

use serde_json::Value;

use crate::field::{self, StatusCause};

/// Upstream's `ValidateNameFunc`: `(name, is_prefix) -> problems`. `is_prefix` is true when
/// checking a `generateName`, whose trailing dash is allowed.
pub type NameFn = fn(&str, bool) -> Vec<String>;

pub const DNS1123_LABEL_MAX_LENGTH: usize = 63;
pub const DNS1123_SUBDOMAIN_MAX_LENGTH: usize = 253;
pub const DNS1035_LABEL_MAX_LENGTH: usize = 63;
pub const QUALIFIED_NAME_MAX_LENGTH: usize = 63;
pub const LABEL_VALUE_MAX_LENGTH: usize = 63;
/// Upstream's `TotalAnnotationSizeLimitB`.
pub const TOTAL_ANNOTATION_SIZE_LIMIT_B: usize = 256 * 1024;

const DNS1123_LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const DNS1123_LABEL_ERR_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character";
const DNS1123_SUBDOMAIN_FMT: &str =
    r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const DNS1123_SUBDOMAIN_ERR_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
const DNS1035_LABEL_FMT: &str = "[a-z]([-a-z0-9]*[a-z0-9])?";
const DNS1035_LABEL_ERR_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character";
const QUALIFIED_NAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const QUALIFIED_NAME_ERR_MSG: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const LABEL_VALUE_FMT: &str = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";
const LABEL_VALUE_ERR_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const C_IDENTIFIER_FMT: &str = "[A-Za-z_][A-Za-z0-9_]*";
const C_IDENTIFIER_ERR_MSG: &str = "a valid C identifier must start with alphabetic character or '_', followed by a string of alphanumeric characters or '_'";
const CONFIG_MAP_KEY_FMT: &str = "[-._a-zA-Z0-9]+";
const CONFIG_MAP_KEY_ERR_MSG: &str =
    "a valid config key must consist of alphanumeric characters, '-', '_' or '.'";

/// Upstream's message for a negative number where it is not allowed.
pub const IS_NEGATIVE_ERROR_MSG: &str = "must be greater than or equal to 0";
/// Upstream's message for changing an immutable field.
pub const FIELD_IMMUTABLE_ERROR_MSG: &str = "field is immutable";

/// Upstream's `RegexError`: the message, examples, and the regex text (note the doubled space
/// before `or`, which upstream's string building produces and clients see).
pub fn regex_error(msg: &str, fmt: &str, examples: &[&str]) -> String {
    if examples.is_empty() {
        return format!("{msg} (regex used for validation is '{fmt}')");
    }
    let mut out = format!("{msg} (e.g. ");
    for (i, ex) in examples.iter().enumerate() {
        if i > 0 {
            out.push_str(" or ");
        }
        out.push('\'');
        out.push_str(ex);
        out.push_str("', ");
    }
    out.push_str("regex used for validation is '");
    out.push_str(fmt);
    out.push_str("')");
    out
}

/// Upstream's `MaxLenError`.
pub fn max_len_error(length: usize) -> String {
    format!("must be no more than {length} characters")
}

/// Upstream's `EmptyError`.
pub fn empty_error() -> String {
    "must be non-empty".to_string()
}

/// Upstream's `InclusiveRangeError`.
pub fn inclusive_range_error(lo: i64, hi: i64) -> String {
    format!("must be between {lo} and {hi}, inclusive")
}

fn is_lower_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?` (or with `first` as the first-character class).
fn match_label(s: &str, first: fn(u8) -> bool) -> bool {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(&f), Some(&l)) => {
            first(f) && is_lower_alnum(l) && b.iter().all(|&c| is_lower_alnum(c) || c == b'-')
        }
        _ => false,
    }
}

fn match_dns1123_label(s: &str) -> bool {
    match_label(s, is_lower_alnum)
}

fn match_dns1123_subdomain(s: &str) -> bool {
    s.split('.').all(match_dns1123_label)
}

fn match_qualified_name(s: &str) -> bool {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(&f), Some(&l)) => {
            f.is_ascii_alphanumeric()
                && l.is_ascii_alphanumeric()
                && b.iter()
                    .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// `IsDNS1123Label`: a lowercase RFC 1123 label (namespace names, most `name` fields).
pub fn is_dns1123_label(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > DNS1123_LABEL_MAX_LENGTH {
        errs.push(max_len_error(DNS1123_LABEL_MAX_LENGTH));
    }
    if !match_dns1123_label(value) {
        if match_dns1123_subdomain(value) {
            // A valid subdomain but not a label: length was checked, so it must be the dots.
            errs.push("must not contain dots".to_string());
        } else {
            errs.push(regex_error(
                DNS1123_LABEL_ERR_MSG,
                DNS1123_LABEL_FMT,
                &["my-name", "123-abc"],
            ));
        }
    }
    errs
}

/// `IsDNS1123Subdomain`: a lowercase RFC 1123 subdomain (most object names).
pub fn is_dns1123_subdomain(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > DNS1123_SUBDOMAIN_MAX_LENGTH {
        errs.push(max_len_error(DNS1123_SUBDOMAIN_MAX_LENGTH));
    }
    if !match_dns1123_subdomain(value) {
        errs.push(regex_error(
            DNS1123_SUBDOMAIN_ERR_MSG,
            DNS1123_SUBDOMAIN_FMT,
            &["example.com"],
        ));
    }
    errs
}

/// `IsDNS1035Label`: a DNS-1035 label (Service names).
pub fn is_dns1035_label(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > DNS1035_LABEL_MAX_LENGTH {
        errs.push(max_len_error(DNS1035_LABEL_MAX_LENGTH));
    }
    if !match_label(value, |b| b.is_ascii_lowercase()) {
        errs.push(regex_error(
            DNS1035_LABEL_ERR_MSG,
            DNS1035_LABEL_FMT,
            &["my-name", "abc-123"],
        ));
    }
    errs
}

/// `IsQualifiedName`: label and annotation keys, finalizers: `[prefix/]name`.
pub fn is_qualified_name(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let parts: Vec<&str> = value.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push(format!("prefix part {}", empty_error()));
            } else {
                for m in is_dns1123_subdomain(prefix) {
                    errs.push(format!("prefix part {m}"));
                }
            }
            *name
        }
        _ => {
            errs.push(format!(
                "a qualified name {} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                regex_error(
                    QUALIFIED_NAME_ERR_MSG,
                    QUALIFIED_NAME_FMT,
                    &["MyName", "my.name", "123-abc"]
                )
            ));
            return errs;
        }
    };
    if name.is_empty() {
        errs.push(format!("name part {}", empty_error()));
    } else if name.len() > QUALIFIED_NAME_MAX_LENGTH {
        errs.push(format!(
            "name part {}",
            max_len_error(QUALIFIED_NAME_MAX_LENGTH)
        ));
    }
    if !match_qualified_name(name) {
        errs.push(format!(
            "name part {}",
            regex_error(
                QUALIFIED_NAME_ERR_MSG,
                QUALIFIED_NAME_FMT,
                &["MyName", "my.name", "123-abc"]
            )
        ));
    }
    errs
}

/// `IsValidLabelValue`: empty, or a qualified name without prefix, at most 63 characters.
pub fn is_valid_label_value(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > LABEL_VALUE_MAX_LENGTH {
        errs.push(max_len_error(LABEL_VALUE_MAX_LENGTH));
    }
    if !value.is_empty() && !match_qualified_name(value) {
        errs.push(regex_error(
            LABEL_VALUE_ERR_MSG,
            LABEL_VALUE_FMT,
            &["MyValue", "my_value", "12345"],
        ));
    }
    errs
}

/// `IsCIdentifier`.
pub fn is_c_identifier(value: &str) -> Vec<String> {
    let b = value.as_bytes();
    let ok = match b.first() {
        Some(&f) => {
            (f.is_ascii_alphabetic() || f == b'_')
                && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'_')
        }
        None => false,
    };
    if ok {
        Vec::new()
    } else {
        vec![regex_error(
            C_IDENTIFIER_ERR_MSG,
            C_IDENTIFIER_FMT,
            &["my_name", "MY_NAME", "MyName"],
        )]
    }
}

/// `IsValidPortName`: an IANA_SVC_NAME (at most 15 characters, a-z0-9 and single inner dashes,
/// at least one letter).
pub fn is_valid_port_name(port: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if port.len() > 15 {
        errs.push(max_len_error(15));
    }
    if port.is_empty() || !port.bytes().all(|c| is_lower_alnum(c) || c == b'-') {
        errs.push("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".into());
    }
    if !port.bytes().any(|c| c.is_ascii_lowercase()) {
        errs.push("must contain at least one letter (a-z)".into());
    }
    if port.contains("--") {
        errs.push("must not contain consecutive hyphens".into());
    }
    if port.starts_with('-') || port.ends_with('-') {
        errs.push("must not begin or end with a hyphen".into());
    }
    errs
}

/// `IsValidPortNum`: 1..=65535.
pub fn is_valid_port_num(port: i64) -> Vec<String> {
    if (1..=65535).contains(&port) {
        Vec::new()
    } else {
        vec![inclusive_range_error(1, 65535)]
    }
}

/// `IsConfigMapKey`: keys of ConfigMap and Secret data.
pub fn is_config_map_key(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > DNS1123_SUBDOMAIN_MAX_LENGTH {
        errs.push(max_len_error(DNS1123_SUBDOMAIN_MAX_LENGTH));
    }
    if value.is_empty()
        || !value
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_'))
    {
        errs.push(regex_error(
            CONFIG_MAP_KEY_ERR_MSG,
            CONFIG_MAP_KEY_FMT,
            &["key.name", "KEY_NAME", "key-name"],
        ));
    }
    if value == "." {
        errs.push("must not be '.'".into());
    } else if value == ".." {
        errs.push("must not be '..'".into());
    } else if value.starts_with("..") {
        errs.push("must not start with '..'".into());
    }
    errs
}

/// A `generateName` may end in `-` (the random suffix follows); upstream masks it before
/// checking the rest.
fn mask_trailing_dash(name: &str) -> String {
    if name.len() > 1 && name.ends_with('-') {
        format!("{}a", &name[..name.len() - 1])
    } else {
        name.to_string()
    }
}

/// `NameIsDNSSubdomain`: the name rule of most resources.
pub fn name_is_dns_subdomain(name: &str, prefix: bool) -> Vec<String> {
    if prefix {
        is_dns1123_subdomain(&mask_trailing_dash(name))
    } else {
        is_dns1123_subdomain(name)
    }
}

/// `NameIsDNSLabel`: the name rule of namespaces (and `ValidateNamespaceName`).
pub fn name_is_dns_label(name: &str, prefix: bool) -> Vec<String> {
    if prefix {
        is_dns1123_label(&mask_trailing_dash(name))
    } else {
        is_dns1123_label(name)
    }
}

/// `NameIsDNS1035Label`: the name rule of Services.
pub fn name_is_dns1035_label(name: &str, prefix: bool) -> Vec<String> {
    if prefix {
        is_dns1035_label(&mask_trailing_dash(name))
    } else {
        is_dns1035_label(name)
    }
}

/// `ValidatePathSegmentName`-style rule for resources whose names only need to be usable in a
/// URL path (e.g. RBAC roles): not `.`/`..`, no `/` or `%`.
pub fn name_is_path_segment(name: &str, prefix: bool) -> Vec<String> {
    let mut errs = Vec::new();
    if !prefix && (name == "." || name == "..") {
        errs.push(format!("may not be '{name}'"));
    }
    for bad in ["/", "%"] {
        if name.contains(bad) {
            errs.push(format!("may not contain '{bad}'"));
        }
    }
    errs
}

fn str_field<'a>(meta: &'a Value, name: &str) -> &'a str {
    meta.get(name).and_then(Value::as_str).unwrap_or("")
}

/// `ValidateLabels`: keys are qualified names, values valid label values; errors name the
/// `labels` path itself, as upstream's do.
pub fn validate_labels(labels: &Value, path: &str) -> Vec<StatusCause> {
    let mut errs = Vec::new();
    let Some(map) = labels.as_object() else {
        if !labels.is_null() {
            errs.push(field::type_invalid(
                path,
                labels,
                "must be a map of strings",
            ));
        }
        return errs;
    };
    for (k, v) in map {
        for msg in is_qualified_name(k) {
            errs.push(field::invalid_str(path, k, &msg));
        }
        match v.as_str() {
            Some(s) => {
                for msg in is_valid_label_value(s) {
                    errs.push(field::invalid_str(path, s, &msg));
                }
            }
            None => errs.push(field::type_invalid(
                &field::key(path, k),
                v,
                "must be a string",
            )),
        }
    }
    errs
}

/// `ValidateAnnotations`: keys are qualified names (case-insensitively), total size at most
/// 256 KiB.
pub fn validate_annotations(annotations: &Value, path: &str) -> Vec<StatusCause> {
    let mut errs = Vec::new();
    let Some(map) = annotations.as_object() else {
        if !annotations.is_null() {
            errs.push(field::type_invalid(
                path,
                annotations,
                "must be a map of strings",
            ));
        }
        return errs;
    };
    let mut total = 0usize;
    for (k, v) in map {
        for msg in is_qualified_name(&k.to_lowercase()) {
            errs.push(field::invalid_str(path, k, &msg));
        }
        match v.as_str() {
            Some(s) => total += k.len() + s.len(),
            None => errs.push(field::type_invalid(
                &field::key(path, k),
                v,
                "must be a string",
            )),
        }
    }
    if total > TOTAL_ANNOTATION_SIZE_LIMIT_B {
        errs.push(field::too_long(path, TOTAL_ANNOTATION_SIZE_LIMIT_B as i64));
    }
    errs
}

/// `ValidateFinalizers`: qualified names, and not both orphan and foreground deletion.
pub fn validate_finalizers(finalizers: &Value, path: &str) -> Vec<StatusCause> {
    let mut errs = Vec::new();
    let Some(list) = finalizers.as_array() else {
        if !finalizers.is_null() {
            errs.push(field::type_invalid(
                path,
                finalizers,
                "must be a list of strings",
            ));
        }
        return errs;
    };
    let (mut orphan, mut foreground) = (false, false);
    for f in list {
        let Some(s) = f.as_str() else {
            errs.push(field::type_invalid(path, f, "must be a string"));
            continue;
        };
        for msg in is_qualified_name(s) {
            errs.push(field::invalid_str(path, s, &msg));
        }
        orphan |= s == "orphan";
        foreground |= s == "foregroundDeletion";
    }
    if orphan && foreground {
        errs.push(field::invalid(
            path,
            finalizers,
            "finalizer orphan and foregroundDeletion cannot be both set",
        ));
    }
    errs
}

/// `ValidateOwnerReferences`: apiVersion with a version, kind, name and uid present, at most
/// one controller.
pub fn validate_owner_references(refs: &Value, path: &str) -> Vec<StatusCause> {
    let mut errs = Vec::new();
    let Some(list) = refs.as_array() else {
        if !refs.is_null() {
            errs.push(field::type_invalid(path, refs, "must be a list"));
        }
        return errs;
    };
    let mut first_controller: Option<String> = None;
    for r in list {
        let api_version = str_field(r, "apiVersion");
        // schema.FromAPIVersionAndKind: "v1" has no group; "apps/v1" → version after '/'.
        let version = match api_version.split_once('/') {
            Some((_, v)) => v,
            None => api_version,
        };
        if version.is_empty() {
            errs.push(field::invalid_str(
                &field::child(path, "apiVersion"),
                api_version,
                "version must not be empty",
            ));
        }
        for (name, msg) in [
            ("kind", "must not be empty"),
            ("name", "must not be empty"),
            ("uid", "must not be empty"),
        ] {
            let v = str_field(r, name);
            if v.is_empty() {
                errs.push(field::invalid_str(&field::child(path, name), v, msg));
            }
        }
        if r.get("controller").and_then(Value::as_bool) == Some(true) {
            let cur = format!("{}/{}", str_field(r, "kind"), str_field(r, "name"));
            match &first_controller {
                Some(first) => errs.push(field::invalid(
                    path,
                    refs,
                    &format!(
                        "Only one reference can have Controller set to true. Found \"true\" in references for {first} and {cur}"
                    ),
                )),
                None => first_controller = Some(cur),
            }
        }
    }
    errs
}

/// `ValidateObjectMeta` over the object's `metadata` value: name or generateName (with
/// `name_fn`), namespace presence by scope, generation, labels, annotations, ownerReferences,
/// finalizers. Paths are rooted at `metadata`.
pub fn validate_object_meta(meta: &Value, namespaced: bool, name_fn: NameFn) -> Vec<StatusCause> {
    let mut errs = Vec::new();
    let path = "metadata";
    let generate_name = str_field(meta, "generateName");
    if !generate_name.is_empty() {
        for msg in name_fn(generate_name, true) {
            errs.push(field::invalid_str(
                &field::child(path, "generateName"),
                generate_name,
                &msg,
            ));
        }
    }
    let name = str_field(meta, "name");
    if name.is_empty() {
        errs.push(field::required(
            &field::child(path, "name"),
            "name or generateName is required",
        ));
    } else {
        for msg in name_fn(name, false) {
            errs.push(field::invalid_str(&field::child(path, "name"), name, &msg));
        }
    }
    let namespace = str_field(meta, "namespace");
    if namespaced {
        if namespace.is_empty() {
            errs.push(field::required(&field::child(path, "namespace"), ""));
        } else {
            for msg in name_is_dns_label(namespace, false) {
                errs.push(field::invalid_str(
                    &field::child(path, "namespace"),
                    namespace,
                    &msg,
                ));
            }
        }
    } else if !namespace.is_empty() {
        errs.push(field::forbidden(
            &field::child(path, "namespace"),
            "not allowed on this type",
        ));
    }
    if let Some(g) = meta.get("generation").and_then(Value::as_i64) {
        if g < 0 {
            errs.push(field::invalid(
                &field::child(path, "generation"),
                &Value::from(g),
                IS_NEGATIVE_ERROR_MSG,
            ));
        }
    }
    let null = Value::Null;
    errs.extend(validate_labels(
        meta.get("labels").unwrap_or(&null),
        &field::child(path, "labels"),
    ));
    errs.extend(validate_annotations(
        meta.get("annotations").unwrap_or(&null),
        &field::child(path, "annotations"),
    ));
    errs.extend(validate_owner_references(
        meta.get("ownerReferences").unwrap_or(&null),
        &field::child(path, "ownerReferences"),
    ));
    errs.extend(validate_finalizers(
        meta.get("finalizers").unwrap_or(&null),
        &field::child(path, "finalizers"),
    ));
    errs
}

/// `ValidateObjectMetaUpdate`'s immutability rules: name, namespace, uid and
/// creationTimestamp may not change (the caller also runs [`validate_object_meta`] on the new
/// metadata).
pub fn validate_object_meta_update(new_meta: &Value, old_meta: &Value) -> Vec<StatusCause> {
    let mut errs = Vec::new();
    for name in ["name", "namespace", "uid", "creationTimestamp"] {
        let new = new_meta.get(name).unwrap_or(&Value::Null);
        let old = old_meta.get(name).unwrap_or(&Value::Null);
        if new != old {
            let shown = if new.is_null() {
                Value::String(String::new())
            } else {
                new.clone()
            };
            errs.push(field::invalid(
                &field::child("metadata", name),
                &shown,
                FIELD_IMMUTABLE_ERROR_MSG,
            ));
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dns1123_subdomain_message_is_upstreams() {
        assert!(is_dns1123_subdomain("example.com").is_empty());
        assert!(is_dns1123_subdomain("a").is_empty());
        assert_eq!(
            is_dns1123_subdomain("Bad_Name"),
            vec![r"a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')".to_string()]
        );
        for bad in ["", "-a", "a-", "a..b", ".a", "a.", "A"] {
            assert_eq!(is_dns1123_subdomain(bad).len(), 1, "{bad:?}");
        }
        let long = "a".repeat(254);
        assert_eq!(
            is_dns1123_subdomain(&long),
            vec!["must be no more than 253 characters".to_string()]
        );
    }

    #[test]
    fn dns1123_label_messages() {
        assert!(is_dns1123_label("my-name").is_empty());
        assert!(is_dns1123_label("123-abc").is_empty());
        assert_eq!(
            is_dns1123_label("a.b"),
            vec!["must not contain dots".to_string()]
        );
        assert_eq!(
            is_dns1123_label("My"),
            vec!["a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')".to_string()]
        );
        assert_eq!(is_dns1123_label(&"a".repeat(64)).len(), 1);
        assert!(is_dns1035_label("svc-1").is_empty());
        assert_eq!(is_dns1035_label("1svc").len(), 1);
    }

    #[test]
    fn qualified_names_and_label_values() {
        for ok in ["app", "app.kubernetes.io/name", "A_b.c-d", "example.com/X"] {
            assert!(is_qualified_name(ok).is_empty(), "{ok}");
        }
        assert_eq!(
            is_qualified_name("-bad"),
            vec!["name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')".to_string()]
        );
        assert_eq!(
            is_qualified_name("/a"),
            vec!["prefix part must be non-empty".to_string()]
        );
        let e = is_qualified_name("a/");
        assert_eq!(e.len(), 2);
        assert_eq!(e[0], "name part must be non-empty");
        assert!(is_qualified_name("a/b/c")[0].starts_with("a qualified name must consist"));
        assert!(is_qualified_name("Bad_Prefix/x")[0]
            .starts_with("prefix part a lowercase RFC 1123 subdomain"));
        assert_eq!(
            is_qualified_name(&"a".repeat(64)),
            vec!["name part must be no more than 63 characters".to_string()]
        );

        assert!(is_valid_label_value("").is_empty());
        assert!(is_valid_label_value("v1.2_3-x").is_empty());
        assert_eq!(
            is_valid_label_value("bad value"),
            vec!["a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')".to_string()]
        );
    }

    #[test]
    fn c_identifier_port_names_and_keys() {
        assert!(is_c_identifier("MY_VAR1").is_empty());
        assert_eq!(is_c_identifier("1abc").len(), 1);
        assert!(is_valid_port_name("http").is_empty());
        assert!(is_valid_port_name("h2c-1").is_empty());
        assert_eq!(
            is_valid_port_name("123"),
            vec!["must contain at least one letter (a-z)".to_string()]
        );
        assert_eq!(
            is_valid_port_name("-a--b"),
            vec![
                "must not contain consecutive hyphens".to_string(),
                "must not begin or end with a hyphen".to_string()
            ]
        );
        assert_eq!(is_valid_port_name("a-very-long-port-name").len(), 1);
        assert_eq!(
            is_valid_port_num(0),
            vec!["must be between 1 and 65535, inclusive".to_string()]
        );
        assert!(is_valid_port_num(443).is_empty());
        assert!(is_config_map_key("app.properties").is_empty());
        assert_eq!(
            is_config_map_key(".."),
            vec!["must not be '..'".to_string()]
        );
        assert_eq!(is_config_map_key("a/b").len(), 1);
    }

    #[test]
    fn object_meta_name_namespace_and_scope() {
        let ok = json!({"name": "web", "namespace": "default", "labels": {"app": "web"}});
        assert!(validate_object_meta(&ok, true, name_is_dns_subdomain).is_empty());

        let errs = validate_object_meta(&json!({}), true, name_is_dns_subdomain);
        let fields: Vec<&str> = errs.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, ["metadata.name", "metadata.namespace"]);
        assert_eq!(
            errs[0].message,
            "Required value: name or generateName is required"
        );
        assert_eq!(errs[1].message, "Required value");

        let errs = validate_object_meta(
            &json!({"name": "n1", "namespace": "x"}),
            false,
            name_is_dns_subdomain,
        );
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].message, "Forbidden: not allowed on this type");

        // generateName may end in a dash; the name must not.
        let errs = validate_object_meta(
            &json!({"generateName": "web-", "name": "web-", "namespace": "d"}),
            true,
            name_is_dns_subdomain,
        );
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "metadata.name");
        assert!(errs[0]
            .message
            .starts_with("Invalid value: \"web-\": a lowercase RFC 1123 subdomain"));
    }

    #[test]
    fn object_meta_labels_annotations_finalizers_owners() {
        let big = "x".repeat(TOTAL_ANNOTATION_SIZE_LIMIT_B);
        let meta = json!({
            "name": "a", "namespace": "d", "generation": -1,
            "labels": {"bad key!": "ok", "k": "bad value"},
            "annotations": {"note": big},
            "finalizers": ["example.com/f", "orphan", "foregroundDeletion"],
            "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "1", "controller": true},
                {"apiVersion": "", "kind": "ReplicaSet", "name": "rs2", "uid": "", "controller": true}
            ]
        });
        let errs = validate_object_meta(&meta, true, name_is_dns_subdomain);
        let got: Vec<(String, String)> = errs
            .iter()
            .map(|c| (c.field.clone(), c.reason.clone()))
            .collect();
        let want = [
            ("metadata.generation", "FieldValueInvalid"),
            ("metadata.labels", "FieldValueInvalid"),
            ("metadata.labels", "FieldValueInvalid"),
            ("metadata.annotations", "FieldValueTooLong"),
            ("metadata.ownerReferences.apiVersion", "FieldValueInvalid"),
            ("metadata.ownerReferences.uid", "FieldValueInvalid"),
            ("metadata.ownerReferences", "FieldValueInvalid"),
            ("metadata.finalizers", "FieldValueInvalid"),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(got, want);
        assert_eq!(
            errs[0].message,
            "Invalid value: -1: must be greater than or equal to 0"
        );
        assert!(errs[6].message.ends_with(
            "Only one reference can have Controller set to true. Found \"true\" in references for ReplicaSet/rs and ReplicaSet/rs2"
        ));
        assert!(errs[7]
            .message
            .ends_with("finalizer orphan and foregroundDeletion cannot be both set"));
    }

    #[test]
    fn object_meta_update_immutables() {
        let old = json!({"name": "a", "namespace": "d", "uid": "u1"});
        assert!(validate_object_meta_update(&old, &old).is_empty());
        let new = json!({"name": "a", "namespace": "d", "uid": "u2"});
        let errs = validate_object_meta_update(&new, &old);
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "metadata.uid");
        assert_eq!(errs[0].message, "Invalid value: \"u2\": field is immutable");
    }
}
