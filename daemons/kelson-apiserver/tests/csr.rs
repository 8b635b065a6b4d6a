//! certificates.k8s.io/v1 CertificateSigningRequests end to end, against a control plane
//! (kelson-kv + kelson-apiserver with RBAC), with the real kubectl and kube-rs:
//! - a non-admin user's CSR gets `spec.username/groups` from that user, whatever it sent;
//! - `kubectl get csr` prints upstream's columns;
//! - `kubectl certificate approve|deny` (PUT `/approval`) sets the conditions, for users with
//!   `approve` on the signer only (403 with upstream's message otherwise);
//! - `/status` takes a certificate from a user with `sign` on the signer (403 otherwise), and
//!   the certificate cannot change afterwards;
//! - bad requests, signer names, usages and durations are 422 with field causes; a spec change
//!   through the main resource is not applied (upstream copies the stored spec).

mod common;

use std::path::Path;
use std::process::Output;

use base64::Engine;
use common::{eventually, text};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kelson_testsupport::{kubectl_with, ControlPlane};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{json, Value};

const SIGNER: &str = "example.com/test-signer";

fn kubectl_as(cp: &ControlPlane, kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    kubectl_with(kubeconfig, cp.dir(), args, stdin)
}

/// kubectl as `kubeconfig` that must succeed: its trimmed stdout.
#[track_caller]
fn ok_as(cp: &ControlPlane, kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let out = kubectl_as(cp, kubeconfig, args, stdin);
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// A PEM certificate request for `cn` in organization `org`, from a fresh P-256 key.
fn csr_pem(cn: &str, org: &str) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, org);
    params.serialize_request(&key).unwrap().pem().unwrap()
}

/// A self-signed PEM certificate (what a signer would put in `status.certificate`).
fn cert_pem() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["issued.example.com".to_string()]).unwrap();
    params.self_signed(&key).unwrap().pem()
}

fn csr_manifest(name: &str, signer: &str, usages: &[&str], request_pem: &str) -> Value {
    json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": name},
        "spec": {
            "request": base64::engine::general_purpose::STANDARD.encode(request_pem),
            "signerName": signer,
            "usages": usages,
            "expirationSeconds": 600,
            // The server overwrites these from the requesting user.
            "username": "mallory",
            "groups": ["system:masters"],
        },
        "status": {"conditions": [{"type": "Approved", "status": "True"}]},
    })
}

fn api_err(r: kube::Result<CertificateSigningRequest>) -> Box<kube::core::Status> {
    match r {
        Err(kube::Error::Api(s)) => s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn cause_fields(s: &kube::core::Status) -> Vec<String> {
    s.details
        .as_ref()
        .map(|d| d.causes.iter().map(|c| c.field.clone()).collect())
        .unwrap_or_default()
}

/// RBAC for the test users: alice requests (and may write status, but not sign), bob may
/// write approvals but approve no signer, carol may approve and sign for example.com.
const POLICY: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: rbac.authorization.k8s.io/v1
  kind: ClusterRole
  metadata: {name: csr-requester}
  rules:
  - apiGroups: [certificates.k8s.io]
    resources: [certificatesigningrequests]
    verbs: [create, get, list, watch]
  - apiGroups: [certificates.k8s.io]
    resources: [certificatesigningrequests/status]
    verbs: [patch, update]
- apiVersion: rbac.authorization.k8s.io/v1
  kind: ClusterRole
  metadata: {name: csr-approval-writer}
  rules:
  - apiGroups: [certificates.k8s.io]
    resources: [certificatesigningrequests]
    verbs: [get, list]
  - apiGroups: [certificates.k8s.io]
    resources: [certificatesigningrequests/approval, certificatesigningrequests/status]
    verbs: [update]
- apiVersion: rbac.authorization.k8s.io/v1
  kind: ClusterRole
  metadata: {name: example-signer}
  rules:
  - apiGroups: [certificates.k8s.io]
    resources: [signers]
    resourceNames: ["example.com/*"]
    verbs: [approve, sign]
- apiVersion: rbac.authorization.k8s.io/v1
  kind: ClusterRoleBinding
  metadata: {name: alice-requests}
  roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: csr-requester}
  subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}]
- apiVersion: rbac.authorization.k8s.io/v1
  kind: ClusterRoleBinding
  metadata: {name: bob-approval}
  roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: csr-approval-writer}
  subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: bob}]
- apiVersion: rbac.authorization.k8s.io/v1
  kind: ClusterRoleBinding
  metadata: {name: carol-approval}
  roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: csr-approval-writer}
  subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: carol}]
- apiVersion: rbac.authorization.k8s.io/v1
  kind: ClusterRoleBinding
  metadata: {name: carol-signer}
  roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: example-signer}
  subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: carol}]
"#;

#[tokio::test(flavor = "multi_thread")]
async fn csr_requester_approval_and_status() {
    let cp = ControlPlane::start().await.unwrap();
    let alice = cp.kubeconfig_for("alice", Some("requesters")).unwrap();
    let bob = cp.kubeconfig_for("bob", None).unwrap();
    let carol = cp.kubeconfig_for("carol", None).unwrap();
    let admin = cp.kubeconfig_path().to_path_buf();
    ok_as(&cp, &admin, &["apply", "-f", "-"], Some(POLICY));
    let can = |kc: &Path, args: &[&str]| {
        let mut full = vec!["auth", "can-i"];
        full.extend_from_slice(args);
        text(&kubectl_as(&cp, kc, &full, None).stdout) == "yes"
    };
    // Bindings reach the authorizer through a watch; the last one written is carol's signer.
    eventually("alice may create CSRs", || {
        can(
            &alice,
            &["create", "certificatesigningrequests.certificates.k8s.io"],
        )
    });
    eventually("bob may update approvals", || {
        can(
            &bob,
            &[
                "update",
                "certificatesigningrequests.certificates.k8s.io",
                "--subresource=approval",
            ],
        )
    });
    // Alice's CSR: the requester fields are hers, not what she sent; status starts empty.
    let manifest = csr_manifest(
        "alice-1",
        SIGNER,
        &["digital signature", "client auth"],
        &csr_pem("alice", "requesters"),
    );
    ok_as(
        &cp,
        &alice,
        &["create", "-f", "-"],
        Some(&manifest.to_string()),
    );
    let csrs: Api<CertificateSigningRequest> = Api::all(cp.client().await.unwrap());
    let got = csrs.get("alice-1").await.unwrap();
    let spec = &got.spec;
    assert_eq!(spec.username.as_deref(), Some("alice"));
    let groups = spec.groups.clone().unwrap_or_default();
    assert!(groups.contains(&"requesters".to_string()), "{groups:?}");
    assert!(
        groups.contains(&"system:authenticated".to_string()),
        "{groups:?}"
    );
    assert!(
        !groups.contains(&"system:masters".to_string()),
        "{groups:?}"
    );
    assert!(
        got.status
            .as_ref()
            .is_none_or(|s| s.conditions.as_ref().is_none_or(|c| c.is_empty())),
        "a new CSR is not pre-approved: {:?}",
        got.status
    );

    // `kubectl get csr`: upstream's columns, and the short name works.
    let out = kubectl_as(&cp, &admin, &["get", "csr"], None);
    let table = text(&out.stdout);
    let mut lines = table.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "AGE",
            "SIGNERNAME",
            "REQUESTOR",
            "REQUESTEDDURATION",
            "CONDITION"
        ],
        "{table}"
    );
    let row: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(row[0], "alice-1");
    assert_eq!(&row[2..], [SIGNER, "alice", "10m", "Pending"], "{table}");

    // Selecting by signer, as upstream's field selector allows.
    let names = |sel: &str| {
        let out = kubectl_as(
            &cp,
            &admin,
            &["get", "csr", "--field-selector", sel, "-o", "name"],
            None,
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    assert_eq!(
        names(&format!("spec.signerName={SIGNER}")),
        "certificatesigningrequest.certificates.k8s.io/alice-1"
    );
    assert_eq!(names("spec.signerName=example.com/other"), "");

    // Bob may write approvals but not approve this signer: upstream's 403.
    let out = kubectl_as(&cp, &bob, &["certificate", "approve", "alice-1"], None);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "user not permitted to approve requests with signerName \"{SIGNER}\""
        )) && err.contains("forbidden"),
        "{err}"
    );

    // Carol may (through `example.com/*`): Approved, with kubectl's reason and timestamps.
    // (Retried: carol's signer binding is the last one written and may still be on its way.)
    let mut last = String::new();
    eventually("carol approves", || {
        let out = kubectl_as(&cp, &carol, &["certificate", "approve", "alice-1"], None);
        last = text(&out.stderr);
        out.status.success()
    });
    assert!(last.is_empty() || !last.contains("error"), "{last}");
    let got = csrs.get("alice-1").await.unwrap();
    let conds = got.status.clone().unwrap().conditions.unwrap();
    assert_eq!(conds.len(), 1, "{conds:?}");
    assert_eq!(
        (conds[0].type_.as_str(), conds[0].status.as_str()),
        ("Approved", "True")
    );
    assert_eq!(conds[0].reason.as_deref(), Some("KubectlApprove"));
    assert!(conds[0].last_update_time.is_some() && conds[0].last_transition_time.is_some());
    let row = ok_as(
        &cp,
        &admin,
        &["get", "csr", "alice-1", "--no-headers"],
        None,
    );
    assert!(row.ends_with("Approved"), "{row}");
    // `kubectl describe csr` reads it.
    let out = kubectl_as(&cp, &admin, &["describe", "csr", "alice-1"], None);
    let desc = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        desc.contains("Requesting User:") && desc.contains("alice"),
        "{desc}"
    );
    assert!(desc.contains(SIGNER) && desc.contains("Approved"), "{desc}");

    // Removing the approval through /approval is refused.
    let mut cleared = got.clone();
    cleared.status.as_mut().unwrap().conditions = Some(vec![]);
    let err = api_err(
        csrs.replace_subresource("approval", "alice-1", &PostParams::default(), &cleared)
            .await,
    );
    assert_eq!(err.code, 422, "{err:?}");
    assert!(err.message.contains("may not remove"), "{err:?}");

    // Status: alice may update status but not sign for the signer.
    let pem = cert_pem();
    let cert_status =
        json!({"status": {"certificate": base64::engine::general_purpose::STANDARD.encode(&pem)}});
    let alice_csrs: Api<CertificateSigningRequest> =
        Api::all(kelson_testsupport::client_for(&alice).await.unwrap());
    let err = api_err(
        alice_csrs
            .patch_status(
                "alice-1",
                &PatchParams::default(),
                &Patch::Merge(&cert_status),
            )
            .await,
    );
    assert_eq!(err.code, 403, "{err:?}");
    assert!(
        err.message
            .contains("user not permitted to sign requests with signerName"),
        "{err:?}"
    );
    // Not a certificate: 422 on status.certificate.
    let bogus = json!({"status": {"certificate": base64::engine::general_purpose::STANDARD.encode("junk")}});
    let err = api_err(
        csrs.patch_status("alice-1", &PatchParams::default(), &Patch::Merge(&bogus))
            .await,
    );
    assert_eq!(err.code, 422, "{err:?}");
    assert_eq!(cause_fields(&err), ["status.certificate"], "{err:?}");
    // The admin issues it with a PUT of the whole object; the approval stays as stored.
    let mut issued = csrs.get("alice-1").await.unwrap();
    let status = issued.status.as_mut().unwrap();
    status.certificate = Some(k8s_openapi::ByteString(pem.clone().into_bytes()));
    status.conditions = Some(vec![]);
    let out = csrs
        .replace_status("alice-1", &PostParams::default(), &issued)
        .await;
    // Dropping Approved is a removal; with it kept, the write succeeds.
    let err = api_err(out);
    assert_eq!(err.code, 422, "{err:?}");
    let mut issued = csrs.get("alice-1").await.unwrap();
    issued.status.as_mut().unwrap().certificate =
        Some(k8s_openapi::ByteString(pem.clone().into_bytes()));
    let stored = csrs
        .replace_status("alice-1", &PostParams::default(), &issued)
        .await
        .unwrap();
    let st = stored.status.unwrap();
    assert_eq!(st.certificate.unwrap().0, pem.as_bytes());
    assert_eq!(st.conditions.unwrap()[0].type_, "Approved");
    let row = ok_as(
        &cp,
        &admin,
        &["get", "csr", "alice-1", "--no-headers"],
        None,
    );
    assert!(row.ends_with("Approved,Issued"), "{row}");
    // Once issued the certificate cannot change.
    let other = json!({"status": {"certificate": base64::engine::general_purpose::STANDARD.encode(cert_pem())}});
    let err = api_err(
        csrs.patch_status("alice-1", &PatchParams::default(), &Patch::Merge(&other))
            .await,
    );
    assert_eq!(err.code, 422, "{err:?}");
    assert!(
        err.message.contains("may not modify existing certificate"),
        "{err:?}"
    );

    // Deny, by the admin: Denied; approving afterwards is 422 (mutually exclusive).
    let manifest = csr_manifest(
        "alice-2",
        SIGNER,
        &["client auth"],
        &csr_pem("alice", "requesters"),
    );
    ok_as(
        &cp,
        &alice,
        &["create", "-f", "-"],
        Some(&manifest.to_string()),
    );
    ok_as(&cp, &admin, &["certificate", "deny", "alice-2"], None);
    let row = ok_as(
        &cp,
        &admin,
        &["get", "csr", "alice-2", "--no-headers"],
        None,
    );
    assert!(row.ends_with("Denied"), "{row}");
    let both = json!({"status": {"conditions": [
        {"type": "Denied", "status": "True", "reason": "KubectlDeny"},
        {"type": "Approved", "status": "True"}]}});
    let err = api_err(
        csrs.patch_subresource(
            "approval",
            "alice-2",
            &PatchParams::default(),
            &Patch::Merge(&both),
        )
        .await,
    );
    assert_eq!(err.code, 422, "{err:?}");
    assert!(err.message.contains("mutually exclusive"), "{err:?}");

    // A signer reports failure with a server-side apply of status: the Denied condition
    // (kubectl's) stays, Failed joins it, and the apply is recorded under `status`.
    let failed = json!({"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "status": {"conditions": [{"type": "Failed", "status": "True", "reason": "SignerFailed", "message": "denied requests are not signed"}]}});
    let out = csrs
        .patch_status(
            "alice-2",
            &PatchParams::apply("test-signer"),
            &Patch::Apply(&failed),
        )
        .await
        .unwrap();
    let types: Vec<String> = out
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.type_)
        .collect();
    assert_eq!(types, ["Denied", "Failed"]);
    let mf = out.metadata.managed_fields.clone().unwrap_or_default();
    assert!(
        mf.iter()
            .any(|m| m.manager.as_deref() == Some("test-signer")
                && m.subresource.as_deref() == Some("status")
                && m.operation.as_deref() == Some("Apply")),
        "{mf:?}"
    );
    let row = ok_as(
        &cp,
        &admin,
        &["get", "csr", "alice-2", "--no-headers"],
        None,
    );
    assert!(row.ends_with("Denied,Failed"), "{row}");

    // A spec change through the resource itself is not applied (upstream keeps the stored
    // spec); labels are.
    let spec_change = json!({"metadata": {"labels": {"a": "b"}}, "spec": {"signerName": "example.com/other", "usages": ["server auth"]}});
    let out = csrs
        .patch(
            "alice-2",
            &PatchParams::default(),
            &Patch::Merge(&spec_change),
        )
        .await
        .unwrap();
    assert_eq!(out.spec.signer_name, SIGNER);
    assert_eq!(out.spec.usages, Some(vec!["client auth".to_string()]));
    assert_eq!(out.metadata.labels.unwrap()["a"], "b");
    assert_eq!(out.status.unwrap().conditions.unwrap()[0].type_, "Denied");
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_csrs_are_422_with_causes() {
    let cp = ControlPlane::start().await.unwrap();
    let csrs: Api<CertificateSigningRequest> = Api::all(cp.client().await.unwrap());
    let good = csr_pem("u", "o");
    let create = |v: Value| {
        let csrs = csrs.clone();
        async move {
            let obj: CertificateSigningRequest = serde_json::from_value(v).unwrap();
            csrs.create(&PostParams::default(), &obj).await
        }
    };
    // Not PEM, and a PEM block of the wrong type.
    for (name, pem) in [("junk", "not pem at all".to_string()), ("cert", cert_pem())] {
        let err = api_err(create(csr_manifest(name, SIGNER, &["client auth"], &pem)).await);
        assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"), "{err:?}");
        assert_eq!(cause_fields(&err), ["spec.request"], "{err:?}");
        assert!(
            err.message
                .contains("PEM block type must be CERTIFICATE REQUEST"),
            "{err:?}"
        );
    }
    // A request whose signature does not verify (its last signature byte flipped).
    let tampered = {
        let b64: String = good.lines().filter(|l| !l.starts_with("-----")).collect();
        let mut der = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        *der.last_mut().unwrap() ^= 0x01;
        format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            base64::engine::general_purpose::STANDARD.encode(der)
        )
    };
    let err = api_err(create(csr_manifest("sig", SIGNER, &["client auth"], &tampered)).await);
    assert_eq!(cause_fields(&err), ["spec.request"], "{err:?}");
    assert!(err.message.contains("signature"), "{err:?}");
    // Bad signer names.
    for signer in ["nodomain", "example/x", "example.com/a/b", ""] {
        let err = api_err(create(csr_manifest("s", signer, &["client auth"], &good)).await);
        assert_eq!(err.code, 422, "{signer}: {err:?}");
        assert!(
            cause_fields(&err).iter().all(|f| f == "spec.signerName")
                && !cause_fields(&err).is_empty(),
            "{signer}: {err:?}"
        );
    }
    // The legacy signer is v1beta1-only.
    let err = api_err(
        create(csr_manifest(
            "l",
            "kubernetes.io/legacy-unknown",
            &["client auth"],
            &good,
        ))
        .await,
    );
    assert!(
        err.message.contains("legacy signerName is not allowed"),
        "{err:?}"
    );
    // Usages: unknown, duplicate, missing, and ones the built-in signer would refuse.
    let err = api_err(
        create(csr_manifest(
            "u",
            SIGNER,
            &["flying", "client auth", "client auth"],
            &good,
        ))
        .await,
    );
    assert_eq!(
        cause_fields(&err),
        ["spec.usages[0]", "spec.usages[2]"],
        "{err:?}"
    );
    let err = api_err(create(csr_manifest("u", SIGNER, &[], &good)).await);
    assert_eq!(cause_fields(&err), ["spec.usages"], "{err:?}");
    let err = api_err(
        create(csr_manifest(
            "u",
            "kubernetes.io/kube-apiserver-client-kubelet",
            &["digital signature", "server auth"],
            &good,
        ))
        .await,
    );
    assert_eq!(err.code, 422, "{err:?}");
    assert!(
        cause_fields(&err).iter().all(|f| f == "spec.usages"),
        "{err:?}"
    );
    assert!(err.message.contains("server auth"), "{err:?}");
    // The kubelet's own bootstrap usages pass.
    let mut kubelet = csr_manifest(
        "node-csr-1",
        "kubernetes.io/kube-apiserver-client-kubelet",
        &["digital signature", "key encipherment", "client auth"],
        &csr_pem("system:node:n1", "system:nodes"),
    );
    create(kubelet.clone()).await.unwrap();
    // Too short a duration.
    kubelet["metadata"]["name"] = json!("short");
    kubelet["spec"]["expirationSeconds"] = json!(599);
    let err = api_err(create(kubelet).await);
    assert_eq!(cause_fields(&err), ["spec.expirationSeconds"], "{err:?}");
    // CertificateSubjectRestriction: no system:masters through kube-apiserver-client.
    let err = api_err(
        create(csr_manifest(
            "masters",
            "kubernetes.io/kube-apiserver-client",
            &["client auth"],
            &csr_pem("root", "system:masters"),
        ))
        .await,
    );
    assert_eq!(err.code, 403, "{err:?}");
    assert!(
        err.message
            .contains("with system:masters group is not allowed"),
        "{err:?}"
    );
    // The bootstrap policy lets join tokens' group create CSRs (and marks their node-client
    // CSRs for auto-approval), and nodes renew their own client certificates.
    let joiner = cp
        .kubeconfig_for(
            "system:bootstrap:abcdef",
            Some("system:bootstrappers:kelson:default-node-token"),
        )
        .unwrap();
    let node = cp
        .kubeconfig_for("system:node:n1", Some("system:nodes"))
        .unwrap();
    let can = |kc: &Path, args: &[&str]| {
        let mut full = vec!["auth", "can-i"];
        full.extend_from_slice(args);
        text(&kubectl_as(&cp, kc, &full, None).stdout) == "yes"
    };
    assert!(can(
        &joiner,
        &["create", "certificatesigningrequests.certificates.k8s.io"]
    ));
    assert!(can(
        &joiner,
        &[
            "create",
            "certificatesigningrequests.certificates.k8s.io",
            "--subresource=nodeclient"
        ]
    ));
    assert!(!can(
        &joiner,
        &[
            "update",
            "certificatesigningrequests.certificates.k8s.io",
            "--subresource=approval"
        ]
    ));
    assert!(can(
        &node,
        &[
            "create",
            "certificatesigningrequests.certificates.k8s.io",
            "--subresource=selfnodeclient"
        ]
    ));
    let bootstrap = csr_manifest(
        "node-csr-joiner",
        "kubernetes.io/kube-apiserver-client-kubelet",
        &["digital signature", "client auth"],
        &csr_pem("system:node:n2", "system:nodes"),
    );
    ok_as(
        &cp,
        &joiner,
        &["create", "-f", "-"],
        Some(&bootstrap.to_string()),
    );
    let got = csrs.get("node-csr-joiner").await.unwrap();
    assert_eq!(
        got.spec.username.as_deref(),
        Some("system:bootstrap:abcdef")
    );

    // Discovery lists the resource with its short name and subresources.
    let out = cp
        .kubectl_ok(&["get", "--raw", "/apis/certificates.k8s.io/v1"])
        .unwrap();
    let list: Value = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> = list["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "certificatesigningrequests",
            "certificatesigningrequests/approval",
            "certificatesigningrequests/status"
        ]
    );
    assert_eq!(list["resources"][0]["shortNames"], json!(["csr"]));
}
