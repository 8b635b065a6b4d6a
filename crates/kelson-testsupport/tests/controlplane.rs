//! The ControlPlane fixture starts a usable API server: kubectl and kube::Client both work
//! with the admin kubeconfig, and teardown kills the processes.

use k8s_openapi::api::core::v1::Namespace;
use kelson_testsupport::ControlPlane;
use kube::api::{Api, ListParams};

#[tokio::test(flavor = "multi_thread")]
async fn control_plane_serves_kubectl_and_kube_client() {
    let cp = ControlPlane::start().await.unwrap();
    let out = cp.kubectl_ok(&["get", "ns", "-o", "name"]).unwrap();
    assert!(out.contains("namespace/default"), "{out}");
    let client = cp.client().await.unwrap();
    let ns: Api<Namespace> = Api::all(client);
    let list = ns.list(&ListParams::default()).await.unwrap();
    assert!(list
        .items
        .iter()
        .any(|n| n.metadata.name.as_deref() == Some("kube-system")));
    // A second identity from the same CA authenticates too (as a non-admin it may be forbidden,
    // but it must not be rejected as unauthenticated).
    let kc = cp.kubeconfig_for("system:kube-scheduler", None).unwrap();
    let c2 = kelson_testsupport::client_for(&kc).await.unwrap();
    let r = Api::<Namespace>::all(c2).list(&ListParams::default()).await;
    if let Err(kube::Error::Api(s)) = &r {
        assert_ne!(s.code, 401, "{s:?}");
    }
}
