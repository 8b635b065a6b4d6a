//! The generated store PKI works for real mutual TLS: a rustls server using `kv-server` and
//! requiring client certificates from `ca.crt` accepts a client presenting `kv-client`, and a
//! client that trusts an unrelated CA refuses the server. In a cluster layout the store has a CA
//! of its own, and a certificate of the cluster CA is refused by the store (CIS 2.7). Also
//! idempotence, migration to the cluster layout, and file modes.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kelson_pki::{
    init_cluster_pki, init_store_pki, load_certs, load_private_key, Ca, CertRequest, PkiPaths,
    Usage,
};
use rustls::pki_types::ServerName;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &Path) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(ca).unwrap() {
        roots.add(c).unwrap();
    }
    Arc::new(roots)
}

fn server_config(p: &PkiPaths) -> ServerConfig {
    // What kelson-kv does: trust the store CA for clients (`--trusted-ca-file`).
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(&p.store_ca_cert), provider())
        .build()
        .unwrap();
    ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            load_certs(&p.server_cert).unwrap(),
            load_private_key(&p.server_key).unwrap(),
        )
        .unwrap()
}

fn client_config(ca: &Path, cert: &Path, key: &Path) -> ClientConfig {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(ca))
        .with_client_auth_cert(load_certs(cert).unwrap(), load_private_key(key).unwrap())
        .unwrap()
}

/// Serves one connection (echoing one line back) and connects to it; returns the client's
/// result: the echoed bytes, or the handshake error.
async fn handshake(
    server: ServerConfig,
    client: ClientConfig,
    name: &str,
) -> Result<Vec<u8>, String> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let srv = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 5];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        tls.write_all(&buf).await.map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())
    });
    let connector = TlsConnector::from(Arc::new(client));
    let name = ServerName::try_from(name.to_string()).unwrap();
    let result = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let mut tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(b"hello").await.map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        tls.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
        Ok(out)
    };
    let out = tokio::time::timeout(Duration::from_secs(10), result)
        .await
        .expect("handshake bounded");
    srv.abort();
    out
}

#[tokio::test]
async fn mutual_tls_with_generated_store_pki() {
    let dir = tempfile::tempdir().unwrap();
    let p = init_store_pki(dir.path(), &["kv.example".into(), "192.0.2.7".into()]).unwrap();

    for name in ["localhost", "127.0.0.1", "kv.example"] {
        let got = handshake(
            server_config(&p),
            client_config(&p.ca_cert, &p.client_cert, &p.client_key),
            name,
        )
        .await;
        assert_eq!(got.as_deref(), Ok(&b"hello"[..]), "server name {name}");
    }

    // The peer certificate is usable as a client certificate too (raft peers dial each other).
    let got = handshake(
        server_config(&p),
        client_config(&p.ca_cert, &p.peer_cert, &p.peer_key),
        "127.0.0.1",
    )
    .await;
    assert!(got.is_ok(), "peer cert as client: {got:?}");

    // A name the server certificate does not carry is refused.
    let got = handshake(
        server_config(&p),
        client_config(&p.ca_cert, &p.client_cert, &p.client_key),
        "not-in-cert.example",
    )
    .await;
    assert!(got.is_err(), "wrong name must fail: {got:?}");
}

#[tokio::test]
async fn unrelated_ca_is_refused_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let p = init_store_pki(dir.path(), &[]).unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let other = init_store_pki(other_dir.path(), &[]).unwrap();

    // Client trusts another CA: it must reject our server.
    let got = handshake(
        server_config(&p),
        client_config(&other.ca_cert, &p.client_cert, &p.client_key),
        "localhost",
    )
    .await;
    let err = got.expect_err("client with unrelated CA must fail");
    assert!(err.to_lowercase().contains("certificate"), "{err}");

    // Client presents a certificate from another CA: the server must reject it.
    let got = handshake(
        server_config(&p),
        client_config(&p.ca_cert, &other.client_cert, &other.client_key),
        "localhost",
    )
    .await;
    assert!(got.is_err(), "client cert from unrelated CA must fail");
}

#[test]
fn init_is_idempotent_and_keys_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let p = init_store_pki(dir.path(), &["a.example".into()]).unwrap();
    let files = [
        &p.ca_cert,
        &p.ca_key,
        &p.server_cert,
        &p.server_key,
        &p.peer_cert,
        &p.peer_key,
        &p.client_cert,
        &p.client_key,
    ];
    let before: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    for f in files {
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        let want = if f.extension().unwrap() == "key" {
            0o600
        } else {
            0o644
        };
        assert_eq!(mode, want, "{}", f.display());
    }

    let p2 = init_store_pki(dir.path(), &["a.example".into()]).unwrap();
    assert_eq!(p, p2);
    let after: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    assert_eq!(before, after, "second run must not rotate anything");

    // A new host name reissues the host certificates but keeps the CA and the client cert.
    init_store_pki(dir.path(), &["a.example".into(), "b.example".into()]).unwrap();
    assert_eq!(std::fs::read(&p.ca_key).unwrap(), before[1]);
    assert_eq!(std::fs::read(&p.client_cert).unwrap(), before[6]);
    assert_ne!(std::fs::read(&p.server_cert).unwrap(), before[2]);
    let info = kelson_pki::cert_info(&p.server_cert).unwrap();
    assert!(
        info.sans.contains(&"b.example".to_string()),
        "{:?}",
        info.sans
    );

    // A deleted key is repaired with a fresh pair; a corrupt cert likewise.
    std::fs::remove_file(&p.client_key).unwrap();
    std::fs::write(&p.peer_cert, "junk").unwrap();
    init_store_pki(dir.path(), &[]).unwrap();
    assert!(load_private_key(&p.client_key).is_ok());
    assert!(kelson_pki::cert_info(&p.peer_cert).is_ok());
    assert_ne!(std::fs::read(&p.client_cert).unwrap(), before[6]);
}

#[test]
fn client_cert_identity_and_ca_subject() {
    let dir = tempfile::tempdir().unwrap();
    let p = init_store_pki(dir.path(), &[]).unwrap();
    let client = kelson_pki::cert_info(&p.client_cert).unwrap();
    assert!(
        client.subject.contains("CN=kube-apiserver-etcd-client"),
        "{}",
        client.subject
    );
    assert!(client.sans.is_empty());
    let ca = kelson_pki::cert_info(&p.ca_cert).unwrap();
    assert!(ca.is_ca);
    assert!(!ca.expires_within(Duration::from_secs(9 * 365 * 24 * 3600)));
    let server = kelson_pki::cert_info(&p.server_cert).unwrap();
    for want in ["localhost", "127.0.0.1", "::1"] {
        assert!(
            server.sans.iter().any(|s| s == want),
            "{want} in {:?}",
            server.sans
        );
    }
    if let Some(h) = kelson_pki::hostname() {
        assert!(server.sans.contains(&h));
    }
    // A CA whose key is missing is an error, not a silent new CA.
    std::fs::remove_file(&p.ca_key).unwrap();
    assert!(init_store_pki(dir.path(), &[]).is_err());
    assert!(Ca::load(dir.path()).is_err());
}

#[tokio::test]
async fn cluster_layout_store_refuses_cluster_ca_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let p = init_cluster_pki(dir.path(), &[]).unwrap();
    assert!(p.has_separate_store_ca());
    assert_eq!(p.store_ca_cert, dir.path().join("store-ca.crt"));
    let cluster = kelson_pki::cert_info(&p.ca_cert).unwrap();
    let store = kelson_pki::cert_info(&p.store_ca_cert).unwrap();
    assert!(
        cluster.subject.contains("CN=kelson-ca"),
        "{}",
        cluster.subject
    );
    assert!(
        store.subject.contains("CN=kelson-store-ca"),
        "{}",
        store.subject
    );
    let pem = |f: &Path| std::fs::read_to_string(f).unwrap();
    for leaf in [&p.server_cert, &p.peer_cert, &p.client_cert] {
        assert!(
            kelson_pki::issued_by(&pem(leaf), &pem(&p.store_ca_cert)),
            "{leaf:?}"
        );
        assert!(
            !kelson_pki::issued_by(&pem(leaf), &pem(&p.ca_cert)),
            "{leaf:?}"
        );
    }
    assert_eq!(
        std::fs::metadata(&p.store_ca_key)
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    // The store's own client certificate gets a session...
    let got = handshake(
        server_config(&p),
        client_config(&p.store_ca_cert, &p.client_cert, &p.client_key),
        "localhost",
    )
    .await;
    assert_eq!(got.as_deref(), Ok(&b"hello"[..]));
    // ...a client certificate of the cluster CA (an admin in system:masters) does not.
    let cluster_ca = Ca::load(dir.path()).unwrap();
    cluster_ca
        .issue(&CertRequest {
            organization: Some("system:masters".into()),
            ..CertRequest::new("kubernetes-admin", Usage::Client)
        })
        .unwrap()
        .write_pair(dir.path(), "admin")
        .unwrap();
    let got = handshake(
        server_config(&p),
        client_config(
            &p.store_ca_cert,
            &dir.path().join("admin.crt"),
            &dir.path().join("admin.key"),
        ),
        "localhost",
    )
    .await;
    assert!(
        got.is_err(),
        "a cluster-CA client certificate must not reach the store"
    );

    // Idempotent: a second run keeps every byte.
    let names = ["ca.crt", "store-ca.crt", "kv-server.crt", "kv-client.key"];
    let before: Vec<Vec<u8>> = names
        .iter()
        .map(|n| std::fs::read(dir.path().join(n)).unwrap())
        .collect();
    init_cluster_pki(dir.path(), &[]).unwrap();
    let after: Vec<Vec<u8>> = names
        .iter()
        .map(|n| std::fs::read(dir.path().join(n)).unwrap())
        .collect();
    assert_eq!(before, after);
}

#[test]
fn a_store_only_directory_migrates_to_a_store_ca_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    // Before: the store's leaves issued by ca.crt (the cluster CA).
    init_store_pki(dir.path(), &[]).unwrap();
    let ca_before = std::fs::read(dir.path().join("ca.crt")).unwrap();
    let p = init_cluster_pki(dir.path(), &[]).unwrap();
    assert_eq!(
        std::fs::read(&p.ca_cert).unwrap(),
        ca_before,
        "the cluster CA is kept"
    );
    let pem = |f: &Path| std::fs::read_to_string(f).unwrap();
    for leaf in [&p.server_cert, &p.peer_cert, &p.client_cert] {
        assert!(
            kelson_pki::issued_by(&pem(leaf), &pem(&p.store_ca_cert)),
            "{leaf:?} must be reissued by the store CA"
        );
    }
}
