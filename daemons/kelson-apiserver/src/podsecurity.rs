//! PodSecurity admission: the Pod Security Standards per namespace labels.
//!
//! A namespace chooses a level (`privileged`, `baseline`, `restricted`) per mode with
//! `pod-security.kubernetes.io/<mode>` labels (`enforce`, `warn`, `audit`; the
//! `<mode>-version` label names the policy version, shown in messages; every version is
//! judged by the latest checks — a simplification, the checks changed little). Pods that
//! violate the `enforce` level are refused with upstream's 403 (`violates PodSecurity
//! "restricted:latest": <reason> (<detail>), ...`); the `warn` level, and for workload
//! templates (Deployment, ReplicaSet, StatefulSet, DaemonSet, Job, CronJob, ReplicationController,
//! PodTemplate) both levels, become `Warning` headers (`would violate PodSecurity ...`), which
//! kubectl prints. No exemptions, as upstream's default configuration. Deviation: the
//! `audit` level does not yet add audit annotations.
//!
//! The checks are upstream's (`k8s.io/pod-security-admission/policy`), with their reasons
//! and details word for word, and in upstream's order: the baseline checks by ID, then (for
//! restricted) the restricted ones by ID, the restricted ones replacing the baseline
//! seccomp and hostPath checks.

use serde_json::Value;

use kelson_apimachinery::ApiError;

use crate::registry::{self, ResourceInfo};
use crate::server::Api;

const LABEL_PREFIX: &str = "pod-security.kubernetes.io/";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Privileged,
    Baseline,
    Restricted,
}

impl Level {
    pub fn parse(s: &str) -> Option<Level> {
        match s {
            "privileged" => Some(Level::Privileged),
            "baseline" => Some(Level::Baseline),
            "restricted" => Some(Level::Restricted),
            _ => None,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

/// A namespace's policy for one mode: level and the version label's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub level: Level,
    pub version: String,
}

impl Policy {
    /// The policy a namespace's labels set for `mode`. An unset or invalid level is
    /// `privileged` (upstream falls back to its defaults, which are privileged).
    pub fn from_labels(labels: &Value, mode: &str) -> Policy {
        let get = |k: String| labels[k].as_str().map(String::from);
        let level = get(format!("{LABEL_PREFIX}{mode}"))
            .and_then(|l| Level::parse(&l))
            .unwrap_or(Level::Privileged);
        let version = get(format!("{LABEL_PREFIX}{mode}-version"))
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "latest".into());
        Policy { level, version }
    }
    fn label(&self) -> String {
        format!("{}:{}", self.level.name(), self.version)
    }
}

/// One failed check: upstream's `forbiddenReason` and `forbiddenDetail`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub reason: String,
    pub detail: String,
}

fn v(reason: &str, detail: String) -> Option<Violation> {
    Some(Violation {
        reason: reason.into(),
        detail,
    })
}

fn quote_join(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn pluralize<'a>(one: &'a str, many: &'a str, n: usize) -> &'a str {
    if n == 1 {
        one
    } else {
        many
    }
}

/// Every container (init, regular, ephemeral) of a pod spec.
fn containers(spec: &Value) -> Vec<&Value> {
    ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|k| spec[*k].as_array().into_iter().flatten())
        .collect()
}

fn cname(c: &Value) -> String {
    c["name"].as_str().unwrap_or_default().to_string()
}

/// `containers "a", "b" must not set X` in upstream's singular/plural form.
fn containers_phrase(names: &[String], one: &str, many: &str) -> String {
    format!(
        "{} {} {}",
        pluralize("container", "containers", names.len()),
        quote_join(names),
        pluralize(one, many, names.len())
    )
}

const BASELINE_CAPS: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
];

const RESTRICTED_VOLUME_TYPES_OK: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "image",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

fn app_armor(meta: &Value, spec: &Value) -> Option<Violation> {
    let mut bad = Vec::new();
    if spec["securityContext"]["appArmorProfile"]["type"] == "Unconfined" {
        bad.push("pod must not set appArmorProfile.type to \"Unconfined\"".to_string());
    }
    for c in containers(spec) {
        if c["securityContext"]["appArmorProfile"]["type"] == "Unconfined" {
            bad.push(format!(
                "container {:?} must not set appArmorProfile.type to \"Unconfined\"",
                cname(c)
            ));
        }
    }
    if let Some(anns) = meta["annotations"].as_object() {
        for (k, val) in anns {
            let val = val.as_str().unwrap_or_default();
            if k.starts_with("container.apparmor.security.beta.kubernetes.io/")
                && val != "runtime/default"
                && !val.starts_with("localhost/")
            {
                bad.push(format!("{k}={val:?}"));
            }
        }
    }
    if bad.is_empty() {
        return None;
    }
    v("forbidden AppArmor profile", bad.join(", "))
}

fn capabilities_baseline(spec: &Value) -> Option<Violation> {
    let mut names = Vec::new();
    let mut caps: Vec<String> = Vec::new();
    for c in containers(spec) {
        let mut found = false;
        for cap in c["securityContext"]["capabilities"]["add"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !BASELINE_CAPS.contains(&cap) {
                found = true;
                if !caps.iter().any(|c| c == cap) {
                    caps.push(cap.to_string());
                }
            }
        }
        if found {
            names.push(cname(c));
        }
    }
    if names.is_empty() {
        return None;
    }
    caps.sort();
    v(
        "non-default capabilities",
        format!(
            "{} {} in securityContext.capabilities.add",
            containers_phrase(&names, "must not include", "must not include"),
            quote_join(&caps)
        ),
    )
}

fn host_namespaces(spec: &Value) -> Option<Violation> {
    let set: Vec<String> = ["hostNetwork", "hostPID", "hostIPC"]
        .iter()
        .filter(|k| spec[**k] == true)
        .map(|k| format!("{k}=true"))
        .collect();
    if set.is_empty() {
        return None;
    }
    v("host namespaces", set.join(", "))
}

fn volumes_of(spec: &Value, pred: impl Fn(&str) -> bool) -> Vec<(String, &str)> {
    let mut out = Vec::new();
    for vol in spec["volumes"].as_array().into_iter().flatten() {
        let Some(m) = vol.as_object() else { continue };
        for k in m.keys().filter(|k| *k != "name") {
            if pred(k) {
                out.push((cname(vol), k.as_str()));
            }
        }
    }
    out
}

fn host_path_volumes(spec: &Value) -> Option<Violation> {
    let vols: Vec<String> = volumes_of(spec, |t| t == "hostPath")
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    if vols.is_empty() {
        return None;
    }
    v(
        "hostPath volumes",
        format!(
            "{} {}",
            pluralize("volume", "volumes", vols.len()),
            quote_join(&vols)
        ),
    )
}

fn host_ports(spec: &Value) -> Option<Violation> {
    let mut names = Vec::new();
    let mut ports = Vec::new();
    for c in containers(spec) {
        let mut found = false;
        for p in c["ports"].as_array().into_iter().flatten() {
            if let Some(hp) = p["hostPort"].as_i64().filter(|p| *p != 0) {
                found = true;
                if !ports.contains(&hp) {
                    ports.push(hp);
                }
            }
        }
        if found {
            names.push(cname(c));
        }
    }
    if names.is_empty() {
        return None;
    }
    let ports: Vec<String> = ports.iter().map(i64::to_string).collect();
    v(
        "hostPort",
        format!(
            "{} {} {}",
            containers_phrase(&names, "uses", "use"),
            pluralize("hostPort", "hostPorts", ports.len()),
            ports.join(", ")
        ),
    )
}

fn privileged(spec: &Value) -> Option<Violation> {
    let names: Vec<String> = containers(spec)
        .into_iter()
        .filter(|c| c["securityContext"]["privileged"] == true)
        .map(cname)
        .collect();
    if names.is_empty() {
        return None;
    }
    v(
        "privileged",
        format!(
            "{} securityContext.privileged=true",
            containers_phrase(&names, "must not set", "must not set")
        ),
    )
}

fn proc_mount(spec: &Value) -> Option<Violation> {
    let mut names = Vec::new();
    let mut types = Vec::new();
    for c in containers(spec) {
        if let Some(t) = c["securityContext"]["procMount"]
            .as_str()
            .filter(|t| *t != "Default")
        {
            names.push(cname(c));
            if !types.iter().any(|x| x == t) {
                types.push(t.to_string());
            }
        }
    }
    if names.is_empty() {
        return None;
    }
    v(
        "procMount",
        format!(
            "{} securityContext.procMount to {}",
            containers_phrase(&names, "must not set", "must not set"),
            quote_join(&types)
        ),
    )
}

fn se_linux(spec: &Value) -> Option<Violation> {
    let bad_opts = |o: &Value| {
        let t = o["type"].as_str().unwrap_or_default();
        let bad_type = !matches!(
            t,
            "" | "container_t" | "container_init_t" | "container_kvm_t" | "container_engine_t"
        );
        bad_type
            || o["user"].as_str().is_some_and(|s| !s.is_empty())
            || o["role"].as_str().is_some_and(|s| !s.is_empty())
    };
    let pod_bad = bad_opts(&spec["securityContext"]["seLinuxOptions"]);
    let names: Vec<String> = containers(spec)
        .into_iter()
        .filter(|c| bad_opts(&c["securityContext"]["seLinuxOptions"]))
        .map(cname)
        .collect();
    if !pod_bad && names.is_empty() {
        return None;
    }
    let who = match (pod_bad, names.is_empty()) {
        (true, true) => "pod".to_string(),
        (true, false) => format!("pod and {}", containers_phrase(&names, "", "").trim_end()),
        _ => containers_phrase(&names, "", "").trim_end().to_string(),
    };
    v(
        "seLinuxOptions",
        format!("{who} set forbidden securityContext.seLinuxOptions"),
    )
}

fn seccomp_baseline(spec: &Value) -> Option<Violation> {
    let mut bad = Vec::new();
    if spec["securityContext"]["seccompProfile"]["type"] == "Unconfined" {
        bad.push("pod must not set securityContext.seccompProfile.type to \"Unconfined\"".into());
    }
    let names: Vec<String> = containers(spec)
        .into_iter()
        .filter(|c| c["securityContext"]["seccompProfile"]["type"] == "Unconfined")
        .map(cname)
        .collect();
    if !names.is_empty() {
        bad.push(format!(
            "{} securityContext.seccompProfile.type to \"Unconfined\"",
            containers_phrase(&names, "must not set", "must not set")
        ));
    }
    if bad.is_empty() {
        return None;
    }
    v("seccompProfile", bad.join("; "))
}

fn sysctls(spec: &Value) -> Option<Violation> {
    let bad: Vec<String> = spec["securityContext"]["sysctls"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["name"].as_str())
        .filter(|n| !SAFE_SYSCTLS.contains(n))
        .map(String::from)
        .collect();
    if bad.is_empty() {
        return None;
    }
    v("forbidden sysctls", bad.join(", "))
}

fn host_process(spec: &Value) -> Option<Violation> {
    let pod = spec["securityContext"]["windowsOptions"]["hostProcess"] == true;
    let n = containers(spec)
        .into_iter()
        .filter(|c| c["securityContext"]["windowsOptions"]["hostProcess"] == true)
        .count();
    if !pod && n == 0 {
        return None;
    }
    v(
        "hostProcess",
        "pod or containers must not set securityContext.windowsOptions.hostProcess=true".into(),
    )
}

fn allow_privilege_escalation(spec: &Value) -> Option<Violation> {
    let names: Vec<String> = containers(spec)
        .into_iter()
        .filter(|c| c["securityContext"]["allowPrivilegeEscalation"] != false)
        .map(cname)
        .collect();
    if names.is_empty() {
        return None;
    }
    v(
        "allowPrivilegeEscalation != false",
        format!(
            "{} securityContext.allowPrivilegeEscalation=false",
            containers_phrase(&names, "must set", "must set")
        ),
    )
}

fn capabilities_restricted(spec: &Value) -> Option<Violation> {
    let mut no_drop = Vec::new();
    let mut adds = Vec::new();
    let mut added: Vec<String> = Vec::new();
    for c in containers(spec) {
        let caps = &c["securityContext"]["capabilities"];
        let drops_all = caps["drop"]
            .as_array()
            .is_some_and(|d| d.iter().any(|x| x == "ALL"));
        if !drops_all {
            no_drop.push(cname(c));
        }
        let mut found = false;
        for cap in caps["add"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if cap != "NET_BIND_SERVICE" {
                found = true;
                if !added.iter().any(|a| a == cap) {
                    added.push(cap.to_string());
                }
            }
        }
        if found {
            adds.push(cname(c));
        }
    }
    let mut details = Vec::new();
    if !no_drop.is_empty() {
        details.push(format!(
            "{} securityContext.capabilities.drop=[\"ALL\"]",
            containers_phrase(&no_drop, "must set", "must set")
        ));
    }
    if !adds.is_empty() {
        added.sort();
        details.push(format!(
            "{} {} in securityContext.capabilities.add",
            containers_phrase(&adds, "must not include", "must not include"),
            quote_join(&added)
        ));
    }
    if details.is_empty() {
        return None;
    }
    v("unrestricted capabilities", details.join("; "))
}

fn restricted_volumes(spec: &Value) -> Option<Violation> {
    let bad = volumes_of(spec, |t| !RESTRICTED_VOLUME_TYPES_OK.contains(&t));
    if bad.is_empty() {
        return None;
    }
    let names: Vec<String> = bad.iter().map(|(n, _)| n.clone()).collect();
    let mut types: Vec<String> = Vec::new();
    for (_, t) in &bad {
        if !types.iter().any(|x| x == t) {
            types.push(t.to_string());
        }
    }
    v(
        "restricted volume types",
        format!(
            "{} {} {} {}",
            pluralize("volume", "volumes", names.len()),
            quote_join(&names),
            pluralize(
                "uses restricted volume type",
                "use restricted volume types",
                names.len()
            ),
            quote_join(&types)
        ),
    )
}

fn run_as_non_root(spec: &Value) -> Option<Violation> {
    let pod = &spec["securityContext"]["runAsNonRoot"];
    let mut details = Vec::new();
    if *pod == false {
        details.push("pod must not set securityContext.runAsNonRoot=false".to_string());
    }
    let explicit_false: Vec<String> = containers(spec)
        .into_iter()
        .filter(|c| c["securityContext"]["runAsNonRoot"] == false)
        .map(cname)
        .collect();
    if !explicit_false.is_empty() {
        details.push(format!(
            "{} securityContext.runAsNonRoot=false",
            containers_phrase(&explicit_false, "must not set", "must not set")
        ));
    }
    if *pod != true {
        let unset: Vec<String> = containers(spec)
            .into_iter()
            .filter(|c| c["securityContext"]["runAsNonRoot"].is_null())
            .map(cname)
            .collect();
        if !unset.is_empty() && *pod != false {
            details.push(format!(
                "pod or {} securityContext.runAsNonRoot=true",
                containers_phrase(&unset, "must set", "must set")
            ));
        }
    }
    if details.is_empty() {
        return None;
    }
    v("runAsNonRoot != true", details.join("; "))
}

fn run_as_user(spec: &Value) -> Option<Violation> {
    let mut details = Vec::new();
    if spec["securityContext"]["runAsUser"] == 0 {
        details.push("pod must not set runAsUser=0".to_string());
    }
    let names: Vec<String> = containers(spec)
        .into_iter()
        .filter(|c| c["securityContext"]["runAsUser"] == 0)
        .map(cname)
        .collect();
    if !names.is_empty() {
        details.push(format!(
            "{} runAsUser=0",
            containers_phrase(&names, "must not set", "must not set")
        ));
    }
    if details.is_empty() {
        return None;
    }
    v("runAsUser=0", details.join("; "))
}

fn seccomp_restricted(spec: &Value) -> Option<Violation> {
    let ok = |t: &Value| t == "RuntimeDefault" || t == "Localhost";
    let pod = &spec["securityContext"]["seccompProfile"]["type"];
    let mut details = Vec::new();
    if !pod.is_null() && !ok(pod) {
        details.push(format!(
            "pod must not set securityContext.seccompProfile.type to {}",
            pod
        ));
    }
    let mut bad = Vec::new();
    let mut unset = Vec::new();
    for c in containers(spec) {
        let t = &c["securityContext"]["seccompProfile"]["type"];
        if t.is_null() {
            if !ok(pod) {
                unset.push(cname(c));
            }
        } else if !ok(t) {
            bad.push(cname(c));
        }
    }
    if !bad.is_empty() {
        details.push(format!(
            "{} securityContext.seccompProfile.type to \"Unconfined\"",
            containers_phrase(&bad, "must not set", "must not set")
        ));
    }
    if !unset.is_empty() {
        details.push(format!(
            "pod or {} securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"",
            containers_phrase(&unset, "must set", "must set")
        ));
    }
    if details.is_empty() {
        return None;
    }
    v("seccompProfile", details.join("; "))
}

/// Every violation of `level` by a pod (`meta` its metadata, `spec` its spec), in upstream's
/// order.
pub fn evaluate(level: Level, meta: &Value, spec: &Value) -> Vec<Violation> {
    if level == Level::Privileged {
        return Vec::new();
    }
    let restricted = level == Level::Restricted;
    let mut out: Vec<Option<Violation>> = vec![
        app_armor(meta, spec),
        capabilities_baseline(spec),
        host_namespaces(spec),
    ];
    if !restricted {
        out.push(host_path_volumes(spec));
    }
    out.extend([
        host_ports(spec),
        privileged(spec),
        proc_mount(spec),
        se_linux(spec),
    ]);
    if !restricted {
        out.push(seccomp_baseline(spec));
    }
    out.extend([sysctls(spec), host_process(spec)]);
    if restricted {
        out.extend([
            allow_privilege_escalation(spec),
            capabilities_restricted(spec),
            restricted_volumes(spec),
            run_as_non_root(spec),
            run_as_user(spec),
            seccomp_restricted(spec),
        ]);
    }
    out.into_iter().flatten().collect()
}

fn describe(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(|v| format!("{} ({})", v.reason, v.detail))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where a kind keeps its pod template (`None`: not a pod or pod controller).
fn template_path(info: &ResourceInfo) -> Option<&'static [&'static str]> {
    match (info.group, info.kind) {
        ("", "Pod") => Some(&[]),
        ("", "PodTemplate") => Some(&["template"]),
        ("", "ReplicationController")
        | ("apps", "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet")
        | ("batch", "Job") => Some(&["spec", "template"]),
        ("batch", "CronJob") => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

/// PodSecurity for an object being created in `ns`: a pod violating the `enforce` level is
/// refused; `warn` violations (and, for pod controllers, `enforce` ones) become warnings.
pub async fn admit(api: &Api, info: &ResourceInfo, ns: &str, obj: &Value) -> Result<(), ApiError> {
    let Some(path) = template_path(info) else {
        return Ok(());
    };
    let mut pod = obj;
    for k in path {
        pod = &pod[*k];
    }
    let nsinfo = registry::lookup("", "v1", "namespaces").expect("namespaces are registered");
    // From the watch cache, as upstream's namespace lister (kelson-apiserver's admission_get).
    let nsobj = match api.admission_get(nsinfo, None, ns, true).await {
        Ok(Some(o)) => o,
        Ok(None) => return Err(ApiError::not_found("", "namespaces", ns)),
        // NamespaceLifecycle has already answered for a missing namespace.
        Err(e) => return Err(e.to_api_error("", "namespaces", ns)),
    };
    let labels = &nsobj["metadata"]["labels"];
    let enforce = Policy::from_labels(labels, "enforce");
    let warn = Policy::from_labels(labels, "warn");
    let is_pod = path.is_empty();
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    let mut warned = Vec::new();
    let mut warn_for = |p: &Policy| {
        if p.level == Level::Privileged || warned.contains(&p.label()) {
            return;
        }
        let violations = evaluate(p.level, &pod["metadata"], &pod["spec"]);
        if !violations.is_empty() {
            crate::reqctx::warn(format!(
                "would violate PodSecurity {:?}: {}",
                p.label(),
                describe(&violations)
            ));
        }
        warned.push(p.label());
    };
    if is_pod {
        let violations = evaluate(enforce.level, &pod["metadata"], &pod["spec"]);
        if !violations.is_empty() {
            return Err(ApiError::forbidden_for(
                info.group,
                info.resource,
                name,
                &format!(
                    "violates PodSecurity {:?}: {}",
                    enforce.label(),
                    describe(&violations)
                ),
            ));
        }
        // The pod met the enforce level; warn about a stricter warn level only.
        if warn.level > enforce.level {
            warn_for(&warn);
        }
    } else {
        warn_for(&enforce);
        warn_for(&warn);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn msg(level: Level, spec: Value) -> String {
        describe(&evaluate(level, &json!({}), &spec))
    }

    #[test]
    fn restricted_on_a_bare_privileged_container() {
        let spec = json!({"containers": [{"name": "c", "image": "busybox",
            "securityContext": {"privileged": true}}]});
        assert_eq!(
            msg(Level::Restricted, spec.clone()),
            "privileged (container \"c\" must not set securityContext.privileged=true), \
allowPrivilegeEscalation != false (container \"c\" must set securityContext.allowPrivilegeEscalation=false), \
unrestricted capabilities (container \"c\" must set securityContext.capabilities.drop=[\"ALL\"]), \
runAsNonRoot != true (pod or container \"c\" must set securityContext.runAsNonRoot=true), \
seccompProfile (pod or container \"c\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"
        );
        assert_eq!(
            msg(Level::Baseline, spec),
            "privileged (container \"c\" must not set securityContext.privileged=true)"
        );
    }

    #[test]
    fn a_restricted_pod_passes_everything() {
        let spec = json!({
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "c", "securityContext": {"allowPrivilegeEscalation": false,
                "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}],
            "volumes": [{"name": "d", "emptyDir": {}}, {"name": "t", "projected": {"sources": []}}]});
        assert!(evaluate(Level::Restricted, &json!({}), &spec).is_empty());
    }

    #[test]
    fn baseline_checks() {
        let spec = json!({
            "hostNetwork": true, "hostPID": true,
            "securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"},
                                            {"name": "net.ipv4.tcp_syncookies", "value": "1"}]},
            "containers": [
                {"name": "a", "ports": [{"containerPort": 80, "hostPort": 80}],
                 "securityContext": {"capabilities": {"add": ["NET_ADMIN", "CHOWN"]}, "procMount": "Unmasked"}},
                {"name": "b", "ports": [{"containerPort": 81, "hostPort": 81}],
                 "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]},
                                     "seccompProfile": {"type": "Unconfined"}}}],
            "volumes": [{"name": "h", "hostPath": {"path": "/"}}]});
        assert_eq!(
            msg(Level::Baseline, spec.clone()),
            "non-default capabilities (containers \"a\", \"b\" must not include \"NET_ADMIN\", \"SYS_ADMIN\" in securityContext.capabilities.add), \
host namespaces (hostNetwork=true, hostPID=true), \
hostPath volumes (volume \"h\"), \
hostPort (containers \"a\", \"b\" use hostPorts 80, 81), \
procMount (container \"a\" must not set securityContext.procMount to \"Unmasked\"), \
seccompProfile (container \"b\" must not set securityContext.seccompProfile.type to \"Unconfined\"), \
forbidden sysctls (kernel.msgmax)"
        );
        // Restricted replaces the hostPath check by the volume type check.
        assert!(msg(Level::Restricted, spec).contains(
            "restricted volume types (volume \"h\" uses restricted volume type \"hostPath\")"
        ));
        assert!(evaluate(Level::Privileged, &json!({}), &json!({"hostNetwork": true})).is_empty());
    }

    #[test]
    fn policies_from_labels() {
        let labels = json!({"pod-security.kubernetes.io/enforce": "restricted",
                            "pod-security.kubernetes.io/warn": "baseline",
                            "pod-security.kubernetes.io/warn-version": "v1.30"});
        assert_eq!(
            Policy::from_labels(&labels, "enforce").label(),
            "restricted:latest"
        );
        assert_eq!(
            Policy::from_labels(&labels, "warn").label(),
            "baseline:v1.30"
        );
        assert_eq!(
            Policy::from_labels(&labels, "audit").level,
            Level::Privileged
        );
    }
}
