//! Publishing what a joining node needs to find and trust the cluster, as kubeadm does: the
//! `cluster-info` ConfigMap in `kube-public` (a kubeconfig with the server and the CA, no
//! credentials) and a Role + RoleBinding that let bootstrap-token holders
//! (`system:bootstrappers`) read exactly that ConfigMap. `kelsonctl join` checks the CA it
//! finds there against the `--ca-cert-hash` the operator was given out of band.
//!
//! Written with server-side apply under the field manager `kelsonctl`, so re-running `up`
//! converges instead of failing on existing objects.

use std::path::Path;

use anyhow::Context;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

/// The Role/RoleBinding name (kubeadm's is `kubeadm:bootstrap-signer-clusterinfo`).
pub const RBAC_NAME: &str = "kelson:bootstrap-signer-clusterinfo";

/// The `kubeconfig` value of `cluster-info`: the server and CA only.
pub fn cluster_info_kubeconfig(server: &str, ca_pem: &[u8]) -> String {
    use base64::Engine;
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: \"\"\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\ncontexts: []\nusers: []\n",
        base64::engine::general_purpose::STANDARD.encode(ca_pem)
    )
}

/// Applies the ConfigMap and its RBAC with the admin kubeconfig.
pub async fn publish(admin_kubeconfig: &Path, server: &str, ca: &Path) -> anyhow::Result<()> {
    let client = kelson_kube::client_from_kubeconfig(admin_kubeconfig)
        .await
        .context("admin client")?;
    let ca_pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
    let pp = PatchParams::apply("kelsonctl").force();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-public");
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "cluster-info", "namespace": "kube-public"},
        "data": {"kubeconfig": cluster_info_kubeconfig(server, &ca_pem)}});
    cms.patch("cluster-info", &pp, &Patch::Apply(cm))
        .await
        .context("applying kube-public/cluster-info")?;
    let roles: Api<Role> = Api::namespaced(client.clone(), "kube-public");
    let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": RBAC_NAME, "namespace": "kube-public"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"],
                   "resourceNames": ["cluster-info"], "verbs": ["get"]}]});
    roles
        .patch(RBAC_NAME, &pp, &Patch::Apply(role))
        .await
        .context("applying the cluster-info Role")?;
    let bindings: Api<RoleBinding> = Api::namespaced(client, "kube-public");
    let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": RBAC_NAME, "namespace": "kube-public"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": RBAC_NAME},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group",
                      "name": "system:bootstrappers"}]});
    bindings
        .patch(RBAC_NAME, &pp, &Patch::Apply(binding))
        .await
        .context("applying the cluster-info RoleBinding")?;
    Ok(())
}
