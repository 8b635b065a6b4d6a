//! Peers over mutual TLS: a 3-member cluster with https peer URLs elects and replicates.
mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use kelson_raft::PeerTls;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

fn write_pki(dir: &Path) -> PeerTls {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("peer.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("peer-key.pem"), key.serialize_pem()).unwrap();
    PeerTls {
        cert_file: dir.join("peer.pem"),
        key_file: dir.join("peer-key.pem"),
        trusted_ca_file: Some(dir.join("ca.pem")),
        client_cert_auth: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_cluster_replicates() {
    init_tracing();
    let pki = tempfile::tempdir().unwrap();
    let tls = write_pki(pki.path());
    let addrs: Vec<(String, SocketAddr)> = (0..3).map(|i| (format!("t{i}"), free_addr())).collect();
    let mut ms = Vec::new();
    for (name, addr) in &addrs {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(name, dir.path(), *addr, &addrs);
        cfg.initial_cluster = addrs
            .iter()
            .map(|(n, a)| (n.clone(), vec![format!("https://{a}")]))
            .collect();
        cfg.peer_urls = vec![format!("https://{addr}")];
        cfg.peer_tls = Some(tls.clone());
        ms.push(start(cfg, dir).await);
    }
    let nodes: Vec<_> = ms.iter().map(|m| &m.node).collect();
    assert!(
        wait_leader(&nodes, Duration::from_secs(5)).await.is_some(),
        "leader over mTLS"
    );
    ms[0].node.propose(b"secure=yes".to_vec()).await.unwrap();
    for m in &ms {
        assert!(wait_until(Duration::from_secs(3), || m.view.get("secure").is_some()).await);
    }
    // A plaintext client cannot talk to a TLS peer port.
    let plain = kelson_raft::transport::pb::raft_peer_client::RaftPeerClient::connect(format!(
        "http://{}",
        ms[0].addr
    ))
    .await;
    if let Ok(mut c) = plain {
        assert!(c
            .members(kelson_raft::transport::pb::MembersRequest {})
            .await
            .is_err());
    }
    for m in &ms {
        m.node.shutdown().await;
    }
}
