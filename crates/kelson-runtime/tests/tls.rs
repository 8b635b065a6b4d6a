//! TLS: mutual auth over `tls_incoming`, rejected clients, certificate hot-reload, errors.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kelson_runtime::tls::{self, ReloadingCertResolver, TlsError};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca() -> Ca {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, "test ca");
    let key = KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    Ca { cert, key }
}

/// A leaf signed by `ca`: (cert PEM, key PEM, cert DER).
fn leaf(ca: &Ca, cn: &str) -> (String, String, Vec<u8>) {
    let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
    (cert.pem(), key.serialize_pem(), cert.der().to_vec())
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Connect, send "ping", expect it echoed; returns the server certificate's DER.
async fn ping(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<Vec<u8>> {
    let connector = tokio_rustls::TlsConnector::from(config);
    let tcp = TcpStream::connect(addr).await?;
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    tls.write_all(b"ping").await?;
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"ping");
    let (_, session) = tls.get_ref();
    assert_eq!(session.alpn_protocol(), Some(tls::ALPN_H2));
    Ok(session.peer_certificates().unwrap()[0].to_vec())
}

fn with_h2(cfg: Arc<rustls::ClientConfig>) -> Arc<rustls::ClientConfig> {
    let mut c = (*cfg).clone();
    c.alpn_protocols = vec![tls::ALPN_H2.to_vec()];
    // A resumed TLS 1.3 session skips the certificate: each ping must see what is served now.
    c.resumption = rustls::client::Resumption::disabled();
    Arc::new(c)
}

#[tokio::test]
async fn mutual_tls_rejects_anonymous_and_reloads_certs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = ca();
    let ca_path = write(d, "ca.pem", &ca.cert.pem());
    let (c1, k1, der1) = leaf(&ca, "server-1");
    let cert_path = write(d, "server.pem", &c1);
    let key_path = write(d, "server.key", &k1);
    let (cc, ck, _) = leaf(&ca, "client");
    let client_cert = write(d, "client.pem", &cc);
    let client_key = write(d, "client.key", &ck);

    let resolver =
        ReloadingCertResolver::new(&cert_path, &key_path, Duration::from_millis(100)).unwrap();
    let server_cfg =
        tls::server_config_with_resolver(resolver, Some(&ca_path), true, &[tls::ALPN_H2]).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut incoming = tls::tls_incoming(listener, server_cfg);
    assert_eq!(incoming.local_addr(), Some(addr));
    let server = tokio::spawn(async move {
        while let Some(conn) = incoming.next().await {
            let mut conn = conn.expect("items are never errors");
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while let Ok(n) = conn.read(&mut buf).await {
                    if n == 0 || conn.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });

    let good =
        with_h2(tls::client_config(&ca_path, Some(&client_cert), Some(&client_key)).unwrap());
    let anon = with_h2(tls::client_config(&ca_path, None, None).unwrap());

    let served = tokio::time::timeout(Duration::from_secs(5), ping(addr, good.clone()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(served, der1);

    // No client certificate: the required-cert server refuses (TLS 1.3 reports it on read).
    let refused = tokio::time::timeout(Duration::from_secs(5), ping(addr, anon)).await;
    assert!(matches!(refused, Ok(Err(_))), "{refused:?}");

    // Garbage instead of a ClientHello: dropped, the stream keeps going.
    let mut raw = TcpStream::connect(addr).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut sink)).await;

    tokio::time::timeout(Duration::from_secs(5), ping(addr, good.clone()))
        .await
        .unwrap()
        .expect("server still accepts after failed handshakes");

    // A broken rewrite (key that does not match) keeps the old pair in service.
    let (c2, k2, der2) = leaf(&ca, "server-2");
    std::fs::write(&cert_path, &c2).unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let still = ping(addr, good.clone()).await.unwrap();
    assert_eq!(still, der1, "mismatched pair must not be served");

    // Complete the rewrite: the new certificate is served within a few checks.
    std::fs::write(&key_path, &k2).unwrap();
    let mut seen = Vec::new();
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        seen = ping(addr, good.clone()).await.unwrap();
        if seen == der2 {
            break;
        }
    }
    assert_eq!(seen, der2, "reloaded certificate served");
    server.abort();
}

#[tokio::test]
async fn optional_client_cert_accepts_anonymous() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = ca();
    let ca_path = write(d, "ca.pem", &ca.cert.pem());
    let (c1, k1, _) = leaf(&ca, "server");
    let cert = write(d, "s.pem", &c1);
    let key = write(d, "s.key", &k1);
    let cfg = tls::server_config(&cert, &key, Some(&ca_path), false, &[tls::ALPN_H2]).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut incoming = tls::tls_incoming(listener, cfg);
    let server = tokio::spawn(async move {
        if let Some(Ok(mut conn)) = incoming.next().await {
            let mut buf = [0u8; 4];
            conn.read_exact(&mut buf).await.unwrap();
            conn.write_all(&buf).await.unwrap();
            let (_, session) = conn.get_ref();
            assert!(session.peer_certificates().is_none());
        }
    });
    let anon = with_h2(tls::client_config(&ca_path, None, None).unwrap());
    tokio::time::timeout(Duration::from_secs(5), ping(addr, anon))
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
}

#[test]
fn errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = ca();
    let (c1, k1, _) = leaf(&ca, "a");
    let (_, k_other, _) = leaf(&ca, "b");
    let cert = write(d, "cert.pem", &c1);
    let key = write(d, "key.pem", &k1);
    let other_key = write(d, "other.key", &k_other);
    let garbage = write(
        d,
        "garbage.pem",
        "-----BEGIN CERTIFICATE-----\nnot base64!\n",
    );
    let empty = write(d, "empty.pem", "nothing here\n");
    let missing = d.join("missing.pem");

    let err = tls::server_config(&missing, &key, None, false, &[]).unwrap_err();
    assert!(
        matches!(err, TlsError::Read { .. }) && err.to_string().contains("missing.pem"),
        "{err}"
    );
    let err = tls::server_config(&garbage, &key, None, false, &[]).unwrap_err();
    assert!(err.to_string().contains("garbage.pem"), "{err}");
    let err = tls::server_config(&empty, &key, None, false, &[]).unwrap_err();
    assert!(matches!(err, TlsError::NoCertificates { .. }), "{err:?}");
    let err = tls::server_config(&cert, &empty, None, false, &[]).unwrap_err();
    assert!(
        matches!(err, TlsError::NoPrivateKey { .. }) && err.to_string().contains("empty.pem"),
        "{err:?}"
    );
    let err = tls::server_config(&cert, &other_key, None, false, &[]).unwrap_err();
    assert!(
        matches!(err, TlsError::KeyMismatch { .. }) && err.to_string().contains("other.key"),
        "{err:?}"
    );
    let err = tls::server_config(&cert, &key, None, true, &[]).unwrap_err();
    assert!(matches!(err, TlsError::MissingClientCa), "{err:?}");
    let err = tls::client_config(&empty, None, None).unwrap_err();
    assert!(err.to_string().contains("empty.pem"), "{err}");
    assert!(tls::server_config(&cert, &key, None, false, &[tls::ALPN_H2]).is_ok());
}

#[test]
fn tls_stream_works_with_tonic_incoming() {
    // tonic's serve_with_incoming needs `Connected`; tonic's tls-ring feature provides it for
    // tokio-rustls server streams (with the peer certificates in the connect info).
    fn assert_connected<T: tonic::transport::server::Connected>() {}
    assert_connected::<tls::TlsStream<TcpStream>>();
}
