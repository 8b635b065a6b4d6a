//! Validation and defaulting of CustomResourceDefinition objects, after upstream's
//! `apiextensions/validation` for apiextensions.k8s.io/v1.
//!
//! Checked: the name is `<plural>.<group>`, the group is a domain with a dot, names
//! (plural/singular/kind/listKind/shortNames/categories), scope, versions (unique DNS-1035
//! names, exactly one storage version, at least one served), a schema per version that is
//! structural (every node has a type unless it is int-or-string or preserves unknown fields,
//! `properties` and `additionalProperties` exclusive, arrays have typed `items`, root is an
//! object, `metadata` only restricts name/generateName), subresource paths, printer
//! columns, and the conversion stanza (a `Webhook` strategy needs a client config with
//! exactly one of an https url and a service, a parsable `caBundle` and a recognized
//! `conversionReviewVersions`; `None` may have neither; field paths are upstream's internal
//! ones, `spec.conversion.webhookClientConfig`, as its messages show them). Messages and field paths are upstream's, so `kubectl` users see the same errors.

use kelson_apimachinery::field;
use kelson_apimachinery::validation;
use kelson_apimachinery::StatusCause;
use serde_json::{json, Value};

fn required(field: &str) -> StatusCause {
    StatusCause::required(field)
}

fn invalid(field: &str, v: &Value, msg: &str) -> StatusCause {
    StatusCause::invalid(field, format!("Invalid value: {v}: {msg}"))
}

fn forbidden(field: &str, msg: &str) -> StatusCause {
    StatusCause {
        reason: "FieldValueForbidden".into(),
        message: format!("Forbidden: {msg}"),
        field: field.into(),
    }
}

fn dns1035(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && *b.last().unwrap_or(&b'-') != b'-'
}

const DNS1035_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

/// Upstream's defaults: singular = lowercase kind, listKind = kind + "List", conversion None.
pub fn set_defaults(crd: &mut Value) {
    let kind = crd["spec"]["names"]["kind"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if crd["spec"]["names"].is_object() {
        if crd["spec"]["names"]["singular"]
            .as_str()
            .is_none_or(str::is_empty)
        {
            crd["spec"]["names"]["singular"] = json!(kind.to_ascii_lowercase());
        }
        if crd["spec"]["names"]["listKind"]
            .as_str()
            .is_none_or(str::is_empty)
            && !kind.is_empty()
        {
            crd["spec"]["names"]["listKind"] = json!(format!("{kind}List"));
        }
    }
    if crd["spec"].is_object() && !crd["spec"]["conversion"].is_object() {
        crd["spec"]["conversion"] = json!({"strategy": "None"});
    }
    // SetDefaults_ServiceReference: a service's port is 443 unless given.
    if let Some(svc) = crd
        .pointer_mut("/spec/conversion/webhook/clientConfig/service")
        .and_then(Value::as_object_mut)
    {
        if svc.get("port").is_none_or(Value::is_null) {
            svc.insert("port".into(), json!(443));
        }
    }
    if let Some(vs) = crd["spec"]["versions"].as_array_mut() {
        for v in vs {
            for c in v["additionalPrinterColumns"]
                .as_array_mut()
                .into_iter()
                .flatten()
            {
                if c["priority"].is_null() {
                    // upstream leaves priority absent (0); nothing to fill
                }
            }
        }
    }
}

/// All causes for a CRD (create; on update the immutable fields are checked too).
pub fn validate(crd: &Value, old: Option<&Value>) -> Vec<StatusCause> {
    let mut out = Vec::new();
    if let Err(e) = serde_json::from_value::<
        k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    >(crd.clone())
    {
        out.push(StatusCause::invalid("", format!("Invalid value: {e}")));
        return out;
    }
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap_or_default();
    let names = &spec["names"];
    let plural = names["plural"].as_str().unwrap_or_default();
    let name = crd["metadata"]["name"].as_str().unwrap_or_default();
    if name != format!("{plural}.{group}") {
        out.push(invalid(
            "metadata.name",
            &json!(name),
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    if group.is_empty() {
        out.push(required("spec.group"));
    } else if !group.contains('.') {
        out.push(invalid(
            "spec.group",
            &json!(group),
            "should be a domain with at least one dot",
        ));
    } else if let Some(m) = validation::is_dns1123_subdomain(group).into_iter().next() {
        out.push(invalid("spec.group", &json!(group), &m));
    }
    match spec["scope"].as_str().unwrap_or_default() {
        "" => out.push(required("spec.scope")),
        "Cluster" | "Namespaced" => {}
        s => out.push(StatusCause {
            reason: "FieldValueNotSupported".into(),
            message: format!(
                "Unsupported value: \"{s}\": supported values: \"Cluster\", \"Namespaced\""
            ),
            field: "spec.scope".into(),
        }),
    }
    // Names.
    if plural.is_empty() {
        out.push(required("spec.names.plural"));
    } else if !dns1035(plural) {
        out.push(invalid("spec.names.plural", &json!(plural), DNS1035_MSG));
    }
    let singular = names["singular"].as_str().unwrap_or_default();
    if !singular.is_empty() && !dns1035(singular) {
        out.push(invalid(
            "spec.names.singular",
            &json!(singular),
            DNS1035_MSG,
        ));
    }
    let kind = names["kind"].as_str().unwrap_or_default();
    let kind_ok = |k: &str| dns1035(&k.to_ascii_lowercase());
    if kind.is_empty() {
        out.push(required("spec.names.kind"));
    } else if !kind_ok(kind) {
        out.push(invalid(
            "spec.names.kind",
            &json!(kind),
            "may have mixed case, but should otherwise match: [a-z]([-a-z0-9]*[a-z0-9])?",
        ));
    }
    let list_kind = names["listKind"].as_str().unwrap_or_default();
    if !list_kind.is_empty() {
        if !kind_ok(list_kind) {
            out.push(invalid(
                "spec.names.listKind",
                &json!(list_kind),
                "may have mixed case, but should otherwise match: [a-z]([-a-z0-9]*[a-z0-9])?",
            ));
        } else if list_kind == kind {
            out.push(invalid(
                "spec.names.listKind",
                &json!(list_kind),
                "kind and listKind may not be the same",
            ));
        }
    }
    for (field, arr) in [
        ("shortNames", &names["shortNames"]),
        ("categories", &names["categories"]),
    ] {
        for (i, s) in arr.as_array().into_iter().flatten().enumerate() {
            let s = s.as_str().unwrap_or_default();
            if !dns1035(s) {
                out.push(invalid(
                    &format!("spec.names.{field}[{i}]"),
                    &json!(s),
                    DNS1035_MSG,
                ));
            }
        }
    }
    // Versions.
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    if versions.is_empty() {
        out.push(invalid(
            "spec.versions",
            &json!(versions),
            "must have exactly one version marked as storage version",
        ));
    } else {
        let storage = versions.iter().filter(|v| v["storage"] == true).count();
        if storage != 1 {
            out.push(invalid(
                "spec.versions",
                &json!(versions),
                "must have exactly one version marked as storage version",
            ));
        }
        if !versions.iter().any(|v| v["served"] == true) {
            out.push(invalid(
                "spec.versions",
                &json!(versions),
                "must have at least one version marked as served",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, v) in versions.iter().enumerate() {
            let vname = v["name"].as_str().unwrap_or_default();
            let p = format!("spec.versions[{i}]");
            if !seen.insert(vname) {
                out.push(invalid(
                    "spec.versions",
                    &json!(versions),
                    "must contain unique version names",
                ));
            }
            if vname.is_empty() {
                out.push(required(&format!("{p}.name")));
            } else if !dns1035(vname) {
                out.push(invalid(&format!("{p}.name"), &json!(vname), DNS1035_MSG));
            }
            let sp = format!("{p}.schema.openAPIV3Schema");
            match v["schema"]["openAPIV3Schema"].as_object() {
                None => out.push(StatusCause {
                    reason: "FieldValueRequired".into(),
                    message: "Required value: schemas are required".into(),
                    field: sp.clone(),
                }),
                Some(_) => structural_root(&v["schema"]["openAPIV3Schema"], &sp, &mut out),
            }
            let sub = &v["subresources"]["scale"];
            if sub.is_object() {
                for f in ["specReplicasPath", "statusReplicasPath"] {
                    let val = sub[f].as_str().unwrap_or_default();
                    let fp = format!("{p}.subresources.scale.{f}");
                    if val.is_empty() {
                        out.push(required(&fp));
                    } else if !val.starts_with('.') {
                        out.push(invalid(
                            &fp,
                            &json!(val),
                            "should be a json path under .spec or .status",
                        ));
                    }
                }
            }
            for (j, c) in v["additionalPrinterColumns"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                let cp = format!("{p}.additionalPrinterColumns[{j}]");
                if c["name"].as_str().is_none_or(str::is_empty) {
                    out.push(required(&format!("{cp}.name")));
                }
                if c["jsonPath"].as_str().is_none_or(str::is_empty) {
                    out.push(required(&format!("{cp}.jsonPath")));
                }
                let ty = c["type"].as_str().unwrap_or_default();
                if !matches!(ty, "integer" | "number" | "string" | "boolean" | "date") {
                    out.push(StatusCause {
                        reason: "FieldValueNotSupported".into(),
                        message: format!("Unsupported value: \"{ty}\": supported values: \"boolean\", \"date\", \"integer\", \"number\", \"string\""),
                        field: format!("{cp}.type"),
                    });
                }
            }
        }
    }
    out.extend(validate_conversion(spec));
    if let Some(old) = old {
        if old["spec"]["group"] != spec["group"] {
            out.push(invalid("spec.group", &spec["group"], "field is immutable"));
        }
        if old["spec"]["names"]["plural"] != names["plural"] {
            out.push(invalid(
                "spec.names.plural",
                &names["plural"],
                "field is immutable",
            ));
        }
    }
    out
}

/// upstream's `validateCustomResourceConversion` over the v1 layout.
fn validate_conversion(spec: &Value) -> Vec<StatusCause> {
    const P: &str = "spec.conversion";
    let mut out = Vec::new();
    let c = &spec["conversion"];
    if !c.is_object() {
        return out;
    }
    let strategy = c["strategy"].as_str().unwrap_or_default();
    match strategy {
        "" => out.push(field::required(&format!("{P}.strategy"), "")),
        "None" | "Webhook" => {}
        s => out.push(field::not_supported(
            &format!("{P}.strategy"),
            &json!(s),
            &["None", "Webhook"],
        )),
    }
    let cc = &c["webhook"]["clientConfig"];
    let versions = &c["webhook"]["conversionReviewVersions"];
    let cc_path = format!("{P}.webhookClientConfig");
    let rv_path = format!("{P}.conversionReviewVersions");
    if strategy != "Webhook" {
        let msg = "should not be set when strategy is not set to Webhook";
        if !cc.is_null() {
            out.push(field::forbidden(&cc_path, msg));
        }
        if versions.as_array().is_some_and(|v| !v.is_empty()) {
            out.push(field::forbidden(&rv_path, msg));
        }
        return out;
    }
    if spec["preserveUnknownFields"] == true {
        out.push(field::invalid_str(
            &format!("{P}.strategy"),
            strategy,
            "must be None if spec.preserveUnknownFields is true",
        ));
    }
    if cc.is_null() {
        out.push(field::required(
            &cc_path,
            "required when strategy is set to Webhook",
        ));
    } else {
        match (cc["url"].as_str(), cc["service"].is_object()) {
            (Some(u), false) => out.extend(validate_webhook_url(&format!("{cc_path}.url"), u)),
            (None, true) => out.extend(validate_webhook_service(
                &format!("{cc_path}.service"),
                &cc["service"],
            )),
            _ => out.push(field::required(
                &cc_path,
                "exactly one of url or service is required",
            )),
        }
        if let Some(b) = cc["caBundle"].as_str().filter(|b| !b.is_empty()) {
            use base64::Engine;
            let pem = base64::engine::general_purpose::STANDARD
                .decode(b)
                .unwrap_or_default();
            if !super::conversion::valid_ca_bundle(&pem) {
                out.push(field::invalid_str(
                    &format!("{cc_path}.caBundle"),
                    b,
                    "data does not contain any valid RSA or ECDSA certificates",
                ));
            }
        }
    }
    let list = super::strs(versions);
    if list.is_empty() {
        out.push(field::required(&rv_path, ""));
        return out;
    }
    let mut seen = std::collections::HashSet::new();
    for (i, v) in list.iter().enumerate() {
        let fp = format!("{rv_path}[{i}]");
        if !seen.insert(v.as_str()) {
            out.push(field::invalid_str(&fp, v, "duplicate version"));
            continue;
        }
        if !dns1035(v) {
            out.push(field::invalid_str(&fp, v, DNS1035_MSG));
        }
    }
    let known = super::conversion::REVIEW_VERSIONS;
    if !list.iter().any(|v| known.contains(&v.as_str())) {
        let shown: Vec<String> = list.iter().map(|v| format!("{v:?}")).collect();
        out.push(field::invalid_raw(
            &rv_path,
            &format!("[]string{{{}}}", shown.join(", ")),
            "must include at least one of v1, v1beta1",
        ));
    }
    out
}

/// upstream's `ValidateWebhookURL` with https forced.
fn validate_webhook_url(path: &str, url: &str) -> Vec<StatusCause> {
    const FORM: &str = "; desired format: https://host[/path]";
    let mut out = Vec::new();
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let (rest, fragment) = rest.split_once('#').unwrap_or((rest, ""));
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let authority = rest.split('/').next().unwrap_or_default();
    let (user, host) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    if scheme != "https" {
        out.push(field::invalid_str(
            path,
            scheme,
            &format!("'https' is the only allowed URL scheme{FORM}"),
        ));
    }
    if host.is_empty() || scheme.is_empty() {
        out.push(field::invalid_str(
            path,
            host,
            &format!("host must be specified{FORM}"),
        ));
    }
    if let Some(u) = user {
        out.push(field::invalid_str(
            path,
            u,
            "user information is not permitted in the URL",
        ));
    }
    if !fragment.is_empty() {
        out.push(field::invalid_str(
            path,
            fragment,
            "fragments are not permitted in the URL",
        ));
    }
    if !query.is_empty() {
        out.push(field::invalid_str(
            path,
            query,
            "query parameters are not permitted in the URL",
        ));
    }
    out
}

/// upstream's `ValidateWebhookService`.
fn validate_webhook_service(path: &str, svc: &Value) -> Vec<StatusCause> {
    let mut out = Vec::new();
    if svc["name"].as_str().is_none_or(str::is_empty) {
        out.push(field::required(
            &format!("{path}.name"),
            "service name is required",
        ));
    }
    if svc["namespace"].as_str().is_none_or(str::is_empty) {
        out.push(field::required(
            &format!("{path}.namespace"),
            "service namespace is required",
        ));
    }
    let port = svc["port"].as_i64().unwrap_or(443);
    if !(1..=65535).contains(&port) {
        out.push(field::invalid(
            &format!("{path}.port"),
            &json!(port),
            "port is not valid: must be between 1 and 65535, inclusive",
        ));
    }
    let Some(p) = svc["path"].as_str() else {
        return out;
    };
    let pp = format!("{path}.path");
    if p.is_empty() || p == "/" {
        return out;
    }
    if p == "//" {
        out.push(field::invalid_str(&pp, p, "segment[0] may not be empty"));
        return out;
    }
    let Some(trimmed) = p.strip_prefix('/') else {
        out.push(field::invalid_str(&pp, p, "must start with a '/'"));
        return out;
    };
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    for (i, seg) in trimmed.split('/').enumerate() {
        if seg.is_empty() {
            out.push(field::invalid_str(
                &pp,
                p,
                &format!("segment[{i}] may not be empty"),
            ));
        } else if let Some(m) = validation::is_dns1123_subdomain(seg).into_iter().next() {
            out.push(field::invalid_str(&pp, p, &format!("segment[{i}]: {m}")));
        }
    }
    out
}

fn structural_root(s: &Value, path: &str, out: &mut Vec<StatusCause>) {
    match s["type"].as_str() {
        Some("object") => {}
        None | Some("") => out.push(StatusCause {
            reason: "FieldValueRequired".into(),
            message: "Required value: must not be empty at the root".into(),
            field: format!("{path}.type"),
        }),
        Some(t) => out.push(invalid(
            &format!("{path}.type"),
            &json!(t),
            "must be object at the root",
        )),
    }
    if let Some(meta) = s["properties"]["metadata"].as_object() {
        let allowed = meta.keys().all(|k| k == "type" || k == "properties")
            && meta
                .get("properties")
                .and_then(Value::as_object)
                .is_none_or(|p| p.keys().all(|k| k == "name" || k == "generateName"));
        if !allowed {
            out.push(forbidden(
                &format!("{path}.properties[metadata]"),
                "must not specify anything other than name and generateName, but metadata is implicitly specified",
            ));
        }
    }
    structural(s, path, true, out);
}

fn structural(s: &Value, path: &str, root: bool, out: &mut Vec<StatusCause>) {
    let ty = s["type"].as_str().unwrap_or_default();
    let int_or_string = s["x-kubernetes-int-or-string"] == true;
    let preserve = &s["x-kubernetes-preserve-unknown-fields"];
    if *preserve == false {
        out.push(invalid(
            &format!("{path}.x-kubernetes-preserve-unknown-fields"),
            &json!(false),
            "must be true or undefined",
        ));
    }
    if !root && ty.is_empty() && !int_or_string && *preserve != true {
        out.push(StatusCause {
            reason: "FieldValueRequired".into(),
            message: "Required value: must not be empty for specified object fields".into(),
            field: format!("{path}.type"),
        });
    }
    if int_or_string && !ty.is_empty() {
        out.push(invalid(
            &format!("{path}.type"),
            &json!(ty),
            "must be empty to be structural",
        ));
    }
    if !ty.is_empty()
        && !matches!(
            ty,
            "object" | "array" | "string" | "integer" | "number" | "boolean"
        )
    {
        out.push(StatusCause {
            reason: "FieldValueNotSupported".into(),
            message: format!("Unsupported value: \"{ty}\": supported values: \"array\", \"boolean\", \"integer\", \"number\", \"object\", \"string\""),
            field: format!("{path}.type"),
        });
    }
    if s["x-kubernetes-embedded-resource"] == true && ty != "object" {
        out.push(invalid(
            &format!("{path}.type"),
            &json!(ty),
            "must be object if x-kubernetes-embedded-resource is true",
        ));
    }
    if s["properties"].is_object() && s["additionalProperties"].is_object() {
        out.push(forbidden(
            &format!("{path}.additionalProperties"),
            "additionalProperties and properties are mutual exclusive",
        ));
    }
    for forbidden_key in ["$ref", "uniqueItems"] {
        if s.get(forbidden_key)
            .is_some_and(|v| v != &Value::Bool(false))
        {
            out.push(forbidden(
                &format!("{path}.{forbidden_key}"),
                &format!("{forbidden_key} cannot be set to true"),
            ));
        }
    }
    if ty == "array" {
        if !s["items"].is_object() {
            out.push(StatusCause {
                reason: "FieldValueRequired".into(),
                message: "Required value: must be specified".into(),
                field: format!("{path}.items"),
            });
        } else {
            structural(&s["items"], &format!("{path}.items"), false, out);
        }
    }
    if let Some(props) = s["properties"].as_object() {
        for (k, cs) in props {
            if root && k == "metadata" {
                continue;
            }
            structural(cs, &format!("{path}.properties[{k}]"), false, out);
        }
    }
    if s["additionalProperties"].is_object() {
        structural(
            &s["additionalProperties"],
            &format!("{path}.additionalProperties"),
            false,
            out,
        );
    }
    for comb in ["allOf", "anyOf", "oneOf"] {
        // Value validations only; they may not declare types (structural rule).
        for (i, sub) in s[comb].as_array().into_iter().flatten().enumerate() {
            if sub.get("type").is_some() {
                out.push(forbidden(
                    &format!("{path}.{comb}[{i}].type"),
                    "must be empty to be structural",
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd() -> Value {
        json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "crontabs.stable.example.com"},
            "spec": {"group": "stable.example.com", "scope": "Namespaced",
              "names": {"plural": "crontabs", "kind": "CronTab", "shortNames": ["ct"]},
              "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {"type": "object", "properties": {"x": {"type": "string"}}}}}}}]}})
    }

    #[test]
    fn valid_and_defaulted() {
        let mut c = crd();
        set_defaults(&mut c);
        assert_eq!(c["spec"]["names"]["singular"], "crontab");
        assert_eq!(c["spec"]["names"]["listKind"], "CronTabList");
        assert!(validate(&c, None).is_empty(), "{:?}", validate(&c, None));
    }

    #[test]
    fn rejects_with_upstream_paths() {
        let mut c = crd();
        c["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            ["x"] = json!({"description": "no type"});
        let causes = validate(&c, None);
        assert_eq!(causes.len(), 1, "{causes:?}");
        assert_eq!(
            causes[0].field,
            "spec.versions[0].schema.openAPIV3Schema.properties[spec].properties[x].type"
        );
        assert_eq!(
            causes[0].message,
            "Required value: must not be empty for specified object fields"
        );
        let mut c = crd();
        c["metadata"]["name"] = json!("x.stable.example.com");
        c["spec"]["versions"][0]["storage"] = json!(false);
        let fields: Vec<String> = validate(&c, None).into_iter().map(|c| c.field).collect();
        assert_eq!(fields, vec!["metadata.name", "spec.versions"]);
        let mut c = crd();
        c["spec"]["versions"][0]["schema"] = json!({});
        assert_eq!(
            validate(&c, None)[0].message,
            "Required value: schemas are required"
        );
    }

    fn causes(c: &Value) -> Vec<String> {
        validate(c, None)
            .into_iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect()
    }

    #[test]
    fn conversion_stanza() {
        let mut c = crd();
        c["spec"]["conversion"] = json!({"strategy": "Webhook", "webhook": {
            "conversionReviewVersions": ["v1"],
            "clientConfig": {"service": {"namespace": "ns", "name": "conv", "path": "/convert"}}}});
        set_defaults(&mut c);
        assert_eq!(
            c["spec"]["conversion"]["webhook"]["clientConfig"]["service"]["port"],
            443
        );
        assert_eq!(causes(&c), Vec::<String>::new());

        c["spec"]["conversion"]["webhook"]["clientConfig"]["url"] = json!("https://x/y");
        c["spec"]["conversion"]["webhook"]["conversionReviewVersions"] = json!(["v9", "v9"]);
        assert_eq!(
            causes(&c),
            vec![
                "spec.conversion.webhookClientConfig: Required value: exactly one of url or service is required",
                "spec.conversion.conversionReviewVersions[1]: Invalid value: \"v9\": duplicate version",
                "spec.conversion.conversionReviewVersions: Invalid value: []string{\"v9\", \"v9\"}: must include at least one of v1, v1beta1",
            ]
        );

        c["spec"]["conversion"]["webhook"] = json!({"clientConfig": {"url": "http://u@h/p?q=1#f"}});
        assert_eq!(
            causes(&c),
            vec![
                "spec.conversion.webhookClientConfig.url: Invalid value: \"http\": 'https' is the only allowed URL scheme; desired format: https://host[/path]",
                "spec.conversion.webhookClientConfig.url: Invalid value: \"u\": user information is not permitted in the URL",
                "spec.conversion.webhookClientConfig.url: Invalid value: \"f\": fragments are not permitted in the URL",
                "spec.conversion.webhookClientConfig.url: Invalid value: \"q=1\": query parameters are not permitted in the URL",
                "spec.conversion.conversionReviewVersions: Required value",
            ]
        );

        c["spec"]["conversion"] = json!({"strategy": "None", "webhook": {
            "conversionReviewVersions": ["v1"], "clientConfig": {"url": "https://h/p"}}});
        assert_eq!(
            causes(&c),
            vec![
                "spec.conversion.webhookClientConfig: Forbidden: should not be set when strategy is not set to Webhook",
                "spec.conversion.conversionReviewVersions: Forbidden: should not be set when strategy is not set to Webhook",
            ]
        );

        c["spec"]["conversion"] = json!({"strategy": "Webhook", "webhook": {
            "conversionReviewVersions": ["v1"],
            "clientConfig": {"url": "https://h/p", "caBundle": "bm90IGEgY2VydA=="}}});
        assert_eq!(
            causes(&c),
            vec!["spec.conversion.webhookClientConfig.caBundle: Invalid value: \"bm90IGEgY2VydA==\": data does not contain any valid RSA or ECDSA certificates"]
        );
        c["spec"]["conversion"] =
            json!({"strategy": "Webhook", "webhook": {"conversionReviewVersions": ["v1"]}});
        assert_eq!(
            causes(&c),
            vec!["spec.conversion.webhookClientConfig: Required value: required when strategy is set to Webhook"]
        );
    }
}
