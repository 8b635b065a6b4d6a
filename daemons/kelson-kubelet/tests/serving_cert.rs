//! serverTLSBootstrap: the kubelet API's serving certificate comes from a
//! `kubernetes.io/kubelet-serving` CSR. The test plays approver and signer (no controller
//! manager runs here): it checks the request's subject, SANs and usages, approves it, signs it
//! with its own CA, and then sees the kubelet serve the issued certificate without a restart.
//! The first certificate lives 15 s: before it expires the kubelet asks for the next one with
//! a new CSR (70–90 % into the validity, like the client certificate), and serves that one
//! too without a restart.
//!
//! Needs what `common` needs, plus `openssl` (to read the served certificate).

mod common;

use std::process::Command;
use std::time::Duration;

use common::TestNode;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::core::v1::Node;
use kelson_testsupport::wait_for;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;

/// `openssl x509 -noout <what>` of the certificate served at `127.0.0.1:port`.
fn served(port: i32, what: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo | openssl s_client -connect 127.0.0.1:{port} 2>/dev/null | openssl x509 -noout {what}"
        ))
        .output()
        .expect("running openssl");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The issuer of the certificate served at `127.0.0.1:port` (`openssl x509 -issuer` text).
fn served_issuer(port: i32) -> String {
    served(port, "-issuer")
}

/// Approves the CSR `name` and answers it with `req` signed by `ca`, valid for `lifetime`;
/// returns the certificate's serial in openssl's notation (upper-case hex).
async fn approve_and_sign(
    csrs: &Api<CertificateSigningRequest>,
    name: &str,
    mut req: rcgen::CertificateSigningRequestParams,
    ca: &rcgen::Certificate,
    ca_key: &rcgen::KeyPair,
    lifetime: Duration,
) -> String {
    csrs.patch_approval(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"conditions": [{
            "type": "Approved", "status": "True", "reason": "TestApproved", "message": "approved by the test",
        }]}})),
    )
    .await
    .unwrap();
    let now = time::OffsetDateTime::now_utc();
    req.params.not_before = now;
    req.params.not_after = now + lifetime;
    let cert = req.signed_by(ca, ca_key).unwrap();
    let serial = {
        use x509_parser::prelude::FromDer;
        let (_, x) = x509_parser::certificate::X509Certificate::from_der(cert.der()).unwrap();
        let hex = x.raw_serial_as_string().replace(':', "").to_uppercase();
        // openssl prints the number: without the DER sign byte.
        let mut hex = hex.as_str();
        while hex.len() > 2 && hex.starts_with("00") {
            hex = &hex[2..];
        }
        hex.to_string()
    };
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(cert.pem().as_bytes());
    csrs.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"certificate": b64}})),
    )
    .await
    .unwrap();
    serial
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_certificate_comes_from_a_kubelet_serving_csr() {
    assert!(
        std::path::Path::new("/usr/bin/openssl").exists(),
        "needs openssl (scripts/setup.sh)"
    );
    let node = TestNode::start(63, &["--server-tls-bootstrap=true".into()]).await;
    let csrs: Api<CertificateSigningRequest> = Api::all(node.client.clone());
    let csr = wait_for(Duration::from_secs(30), "a kubelet-serving CSR", || async {
        let l = csrs.list(&ListParams::default()).await?;
        l.items
            .into_iter()
            .find(|c| c.spec.signer_name == "kubernetes.io/kubelet-serving")
            .ok_or_else(|| anyhow::anyhow!("no kubelet-serving CSR yet"))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\nkubelet log:\n{}", node.log_tail()));
    let name = csr.metadata.name.clone().unwrap();
    assert_eq!(
        csr.spec.usages.clone().unwrap_or_default(),
        vec!["digital signature".to_string(), "server auth".to_string()]
    );
    assert_eq!(
        csr.spec.username.as_deref(),
        Some(format!("system:node:{}", node.node_name).as_str())
    );
    let pem = String::from_utf8(csr.spec.request.0.clone()).unwrap();
    let req = rcgen::CertificateSigningRequestParams::from_pem(&pem).unwrap();
    let cn = req
        .params
        .distinguished_name
        .get(&rcgen::DnType::CommonName)
        .cloned();
    assert_eq!(
        cn,
        Some(rcgen::DnValue::Utf8String(format!(
            "system:node:{}",
            node.node_name
        )))
    );
    let sans = &req.params.subject_alt_names;
    assert!(
        sans.contains(&rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap())),
        "{sans:?}"
    );
    assert!(
        sans.iter()
            .any(|s| matches!(s, rcgen::SanType::DnsName(n) if n.as_str() == node.node_name)),
        "{sans:?}"
    );

    // Before signing, the API serves the self-signed placeholder.
    let nodes: Api<Node> = Api::all(node.client.clone());
    let port = nodes
        .get(&node.node_name)
        .await
        .unwrap()
        .status
        .and_then(|s| s.daemon_endpoints)
        .and_then(|d| d.kubelet_endpoint)
        .map(|e| e.port)
        .expect("kubelet port in the node status");
    assert!(
        !served_issuer(port).contains("kelson-test-serving-ca"),
        "served before signing: {}",
        served_issuer(port)
    );

    // Approve and sign, for 15 s.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kelson-test-serving-ca");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let first = approve_and_sign(&csrs, &name, req, &ca, &ca_key, Duration::from_secs(15)).await;

    // The kubelet installs it and serves it without a restart.
    wait_for(
        Duration::from_secs(30),
        "the issued certificate served",
        || async {
            let issuer = served_issuer(port);
            anyhow::ensure!(
                issuer.contains("kelson-test-serving-ca"),
                "issuer: {issuer}"
            );
            Ok(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\nkubelet log:\n{}", node.log_tail()));
    let serial = served(port, "-serial");
    assert!(serial.contains(&first), "served {serial}, signed {first}");

    // Before it expires (10.5–13.5 s in), the kubelet asks for the next one.
    let renewal = wait_for(
        Duration::from_secs(25),
        "a second kubelet-serving CSR",
        || async {
            let l = csrs.list(&ListParams::default()).await?;
            l.items
                .into_iter()
                .find(|c| {
                    c.spec.signer_name == "kubernetes.io/kubelet-serving"
                        && c.metadata.name.as_deref() != Some(name.as_str())
                })
                .ok_or_else(|| anyhow::anyhow!("no renewal CSR yet"))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\nkubelet log:\n{}", node.log_tail()));
    let pem = String::from_utf8(renewal.spec.request.0.clone()).unwrap();
    let req = rcgen::CertificateSigningRequestParams::from_pem(&pem).unwrap();
    let renewal_name = renewal.metadata.name.clone().unwrap();
    let second = approve_and_sign(
        &csrs,
        &renewal_name,
        req,
        &ca,
        &ca_key,
        Duration::from_secs(3600),
    )
    .await;
    assert_ne!(first, second);
    wait_for(
        Duration::from_secs(20),
        "the renewed certificate served",
        || async {
            let serial = served(port, "-serial");
            anyhow::ensure!(
                serial.contains(&second),
                "served {serial}, renewed {second}"
            );
            Ok(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\nkubelet log:\n{}", node.log_tail()));
    assert!(node
        .work
        .path()
        .join("kubelet/pki/kubelet-server-current.pem")
        .exists());
}
