//! Admission for pod creation: the ServiceAccount and Priority plugins, as upstream runs them
//! (mutating, after NamespaceLifecycle and before validation).
//!
//! - ServiceAccount: a pod without `spec.serviceAccountName` gets `default` (and the deprecated
//!   `spec.serviceAccount` mirrors it). A pod that *names* a service account must name an
//!   existing one, else `403 error looking up service account <ns>/<name>: serviceaccount
//!   "<name>" not found`, upstream's words. Deviation: the implicit `default` is not required
//!   to exist yet, because the account is made by the controller manager, which API clients
//!   under test (scheduler, kubelet) often run without; upstream would refuse such pods.
//!   Unless automounting is off (`automountServiceAccountToken: false` on the pod, else on the
//!   account), every container and init container without a mount at
//!   `/var/run/secrets/kubernetes.io/serviceaccount` gets one of the standard projected volume
//!   `kube-api-access-<5 random>`: a bound token (3607 s, path `token`), `ca.crt` from the
//!   `kube-root-ca.crt` ConfigMap and the pod's `namespace` — upstream's shape exactly, so
//!   client libraries' in-cluster config works. Mirror pods get none (as upstream). Deviation:
//!   a server without `--service-account-signing-key-file` cannot issue the token the volume
//!   needs, so it injects nothing rather than make every pod wait for a token that never comes.
//! - Priority: `spec.priority` comes from the PriorityClass named by
//!   `spec.priorityClassName`, else from the `globalDefault` class (the lowest value if several
//!   claim it), else 0; `spec.preemptionPolicy` from the class (default
//!   `PreemptLowerPriority`). An unknown class is `403 no PriorityClass with name <x> was found`;
//!   a client-set priority or policy that differs from the computed one is a 403 too.
//!   The two system classes exist from bootstrap ([`SYSTEM_PRIORITY_CLASSES`]).
//! - DefaultTolerationSeconds lives in the pod strategy (the not-ready / unreachable
//!   `NoExecute` tolerations for 300 s), since it needs no store lookups.

use kelson_apimachinery::ApiError;
use serde_json::{json, Value};

use crate::registry::{self, ResourceInfo};
use crate::server::Api;

/// Upstream's built-in priority classes: (name, value, description).
pub const SYSTEM_PRIORITY_CLASSES: &[(&str, i64, &str)] = &[
    (
        "system-node-critical",
        2_000_001_000,
        "Used for system critical pods that must not be moved from their current node.",
    ),
    (
        "system-cluster-critical",
        2_000_000_000,
        "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary.",
    ),
];

const DEFAULT_PREEMPTION_POLICY: &str = "PreemptLowerPriority";

fn priority_classes() -> &'static ResourceInfo {
    registry::lookup("scheduling.k8s.io", "v1", "priorityclasses")
        .expect("priorityclasses are registered")
}

/// The PriorityClass objects upstream creates at start-up.
pub fn system_priority_classes() -> Vec<Value> {
    SYSTEM_PRIORITY_CLASSES
        .iter()
        .map(|(name, value, description)| {
            json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                   "metadata": {"name": name}, "value": value, "description": description,
                   "preemptionPolicy": DEFAULT_PREEMPTION_POLICY})
        })
        .collect()
}

/// Runs the pod admission plugins on a pod about to be created in `ns`.
pub async fn admit_pod_create(
    api: &Api,
    ns: &str,
    name: &str,
    pod: &mut Value,
) -> Result<(), ApiError> {
    service_account(api, ns, name, pod).await?;
    priority(api, name, pod).await
}

fn forbidden(name: &str, why: &str) -> ApiError {
    ApiError::forbidden_for("", "pods", name, why)
}

async fn service_account(api: &Api, ns: &str, name: &str, pod: &mut Value) -> Result<(), ApiError> {
    let spec = &mut pod["spec"];
    let named = spec["serviceAccountName"]
        .as_str()
        .or_else(|| spec["serviceAccount"].as_str())
        .filter(|s| !s.is_empty())
        .map(String::from);
    let sa = named.clone().unwrap_or_else(|| "default".to_string());
    spec["serviceAccountName"] = json!(sa);
    spec["serviceAccount"] = json!(sa);
    let is_mirror = pod["metadata"]["annotations"]
        .get(MIRROR_ANNOTATION)
        .is_some();
    let info =
        registry::lookup("", "v1", "serviceaccounts").expect("serviceaccounts are registered");
    // From the watch cache as upstream's lister; a named account the cache lacks is looked up
    // in the store (upstream's live lookup), the implicit `default` is not (its absence is
    // tolerated anyway, see the module doc).
    let account = match api
        .admission_get(info, Some(ns), &sa, named.is_some())
        .await
    {
        Ok(Some(a)) => Some(a),
        // The implicit `default` may not exist yet (see the module doc).
        Ok(None) if named.is_none() => None,
        Ok(None) => {
            return Err(forbidden(
                name,
                &format!(
                    "error looking up service account {ns}/{sa}: serviceaccount {} not found",
                    kelson_apimachinery::error::go_quote(&sa)
                ),
            ))
        }
        Err(e) => return Err(e.to_api_error("", "serviceaccounts", &sa)),
    };
    let automount = pod["spec"]["automountServiceAccountToken"]
        .as_bool()
        .or_else(|| {
            account
                .as_ref()
                .and_then(|a| a["automountServiceAccountToken"].as_bool())
        })
        .unwrap_or(true);
    if automount && !is_mirror && api.tokens.can_issue() {
        mount_token_volume(pod);
    }
    Ok(())
}

/// Where the token volume is mounted (upstream's `DefaultAPITokenMountPath`).
pub const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
const TOKEN_VOLUME_PREFIX: &str = "kube-api-access-";
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Adds the projected token volume and its mounts, as upstream's `mountServiceAccountToken`:
/// an existing `kube-api-access-*` volume is reused, a container that already mounts something
/// at the path is left alone, and the volume is added only if some container needs it.
fn mount_token_volume(pod: &mut Value) {
    use rand::Rng;
    let existing = pod["spec"]["volumes"].as_array().and_then(|vs| {
        vs.iter()
            .filter_map(|v| v["name"].as_str())
            .find(|n| n.starts_with(TOKEN_VOLUME_PREFIX))
            .map(String::from)
    });
    let volume_name = existing.clone().unwrap_or_else(|| {
        // utilrand.String's alphabet: no vowels (no words), no confusable characters.
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        let mut rng = rand::thread_rng();
        let suffix: String = (0..5)
            .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
            .collect();
        format!("{TOKEN_VOLUME_PREFIX}{suffix}")
    });
    let mount = json!({"name": volume_name, "readOnly": true, "mountPath": TOKEN_MOUNT_PATH});
    let mut needed = false;
    for list in ["initContainers", "containers"] {
        let Some(cs) = pod["spec"][list].as_array_mut() else {
            continue;
        };
        for c in cs {
            let has = c["volumeMounts"].as_array().is_some_and(|ms| {
                ms.iter()
                    .any(|m| m["mountPath"].as_str() == Some(TOKEN_MOUNT_PATH))
            });
            if has {
                continue;
            }
            needed = true;
            match c["volumeMounts"].as_array_mut() {
                Some(ms) => ms.push(mount.clone()),
                None => c["volumeMounts"] = json!([mount.clone()]),
            }
        }
    }
    if existing.is_none() && needed {
        let volume = json!({
            "name": volume_name,
            "projected": {
                "defaultMode": 420,
                "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt",
                                   "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace",
                        "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
                ]
            }
        });
        match pod["spec"]["volumes"].as_array_mut() {
            Some(vs) => vs.push(volume),
            None => pod["spec"]["volumes"] = json!([volume]),
        }
    }
}

#[cfg(test)]
mod token_volume_tests {
    use super::*;

    #[test]
    fn adds_one_volume_and_mounts_where_missing() {
        let mut pod = json!({"spec": {
            "initContainers": [{"name": "i"}],
            "containers": [
                {"name": "a"},
                {"name": "b", "volumeMounts": [{"name": "own", "mountPath": TOKEN_MOUNT_PATH}]}
            ],
            "volumes": [{"name": "own", "emptyDir": {}}]
        }});
        mount_token_volume(&mut pod);
        let vols = pod["spec"]["volumes"].as_array().unwrap();
        assert_eq!(vols.len(), 2);
        let name = vols[1]["name"].as_str().unwrap();
        assert!(
            name.starts_with(TOKEN_VOLUME_PREFIX) && name.len() == TOKEN_VOLUME_PREFIX.len() + 5
        );
        let srcs = vols[1]["projected"]["sources"].as_array().unwrap();
        assert_eq!(srcs[0]["serviceAccountToken"]["expirationSeconds"], 3607);
        assert_eq!(srcs[1]["configMap"]["name"], "kube-root-ca.crt");
        assert_eq!(
            pod["spec"]["initContainers"][0]["volumeMounts"][0]["name"],
            name
        );
        assert_eq!(
            pod["spec"]["containers"][0]["volumeMounts"][0]["readOnly"],
            true
        );
        // The container with its own mount at the path is left alone.
        let b = pod["spec"]["containers"][1]["volumeMounts"]
            .as_array()
            .unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!(b[0]["name"], "own");
        // Idempotent: a second pass reuses the volume.
        mount_token_volume(&mut pod);
        assert_eq!(pod["spec"]["volumes"].as_array().unwrap().len(), 2);
        assert_eq!(
            pod["spec"]["containers"][0]["volumeMounts"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn no_volume_when_every_container_mounts_the_path() {
        let mut pod = json!({"spec": {"containers": [
            {"name": "b", "volumeMounts": [{"name": "own", "mountPath": TOKEN_MOUNT_PATH}]}
        ]}});
        mount_token_volume(&mut pod);
        assert!(pod["spec"]["volumes"].is_null());
    }
}

async fn priority(api: &Api, name: &str, pod: &mut Value) -> Result<(), ApiError> {
    let info = priority_classes();
    let class_name = pod["spec"]["priorityClassName"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(String::from);
    let (class_name, value, policy) = match class_name {
        Some(pc) => match api.admission_get(info, None, &pc, true).await {
            Ok(Some(c)) => (
                Some(pc),
                c["value"].as_i64().unwrap_or(0),
                c["preemptionPolicy"].clone(),
            ),
            Ok(None) => {
                return Err(forbidden(
                    name,
                    &format!("no PriorityClass with name {pc} was found"),
                ))
            }
            Err(e) => return Err(e.to_api_error(info.group, info.resource, &pc)),
        },
        None => {
            let all = api
                .admission_list(info, None)
                .await
                .map_err(|e| e.to_api_error(info.group, info.resource, ""))?;
            let default = all
                .into_iter()
                .filter(|c| c["globalDefault"] == true)
                .min_by_key(|c| c["value"].as_i64().unwrap_or(0));
            match default {
                Some(c) => (
                    c["metadata"]["name"].as_str().map(String::from),
                    c["value"].as_i64().unwrap_or(0),
                    c["preemptionPolicy"].clone(),
                ),
                None => (None, 0, Value::Null),
            }
        }
    };
    let spec = &mut pod["spec"];
    if let Some(p) = spec["priority"].as_i64().filter(|p| *p != value) {
        return Err(forbidden(
            name,
            &format!("the integer value of priority ({p}) must not be provided in pod spec; priority admission controller computed {value} from the given PriorityClass name"),
        ));
    }
    let policy = policy
        .as_str()
        .unwrap_or(DEFAULT_PREEMPTION_POLICY)
        .to_string();
    if let Some(p) = spec["preemptionPolicy"].as_str().filter(|p| *p != policy) {
        return Err(forbidden(
            name,
            &format!("the string value of PreemptionPolicy ({p}) must not be provided in pod spec; priority admission controller computed {policy} from the given PriorityClass name"),
        ));
    }
    if let Some(c) = class_name {
        spec["priorityClassName"] = json!(c);
    }
    spec["priority"] = json!(value);
    spec["preemptionPolicy"] = json!(policy);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_classes_are_upstreams() {
        let pcs = system_priority_classes();
        assert_eq!(pcs.len(), 2);
        assert_eq!(pcs[0]["metadata"]["name"], "system-node-critical");
        assert_eq!(pcs[0]["value"], 2_000_001_000);
        assert_eq!(pcs[1]["metadata"]["name"], "system-cluster-critical");
        assert_eq!(pcs[1]["value"], 2_000_000_000);
        assert_eq!(
            forbidden("p", "no PriorityClass with name x was found").message,
            "pods \"p\" is forbidden: no PriorityClass with name x was found"
        );
    }
}
