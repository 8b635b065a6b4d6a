//! Certificate helpers shared by the reload tests (`cert_reload.rs`, `sighup_reload.rs`):
//! renewing the members' pairs in place as `kelsonctl pki renew` does, and reading the serial
//! a fresh (never resumed) TLS handshake sees.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kelson_pki::{Ca, CertRequest, PkiPaths, Usage};
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

/// Issues new `kv-server` and `kv-peer` pairs (same names and SANs as the cluster's PKI) valid
/// for `lifetime` from now, written in place with atomic renames as `kelsonctl pki renew` does;
/// returns their serials.
pub fn renew(pki: &PkiPaths, lifetime: Duration) -> (String, String) {
    let ca = Ca::load_files(&pki.ca_cert, &pki.ca_key).expect("store CA");
    let req = |cn: &str| CertRequest {
        dns_names: vec!["localhost".into()],
        ip_addresses: vec![IpAddr::from([127, 0, 0, 1])],
        validity: lifetime,
        ..CertRequest::new(cn, Usage::Peer)
    };
    let mut serials = Vec::new();
    for (base, cn) in [("kv-server", "kelson-kv"), ("kv-peer", "kelson-kv-peer")] {
        let pair = ca.issue(&req(cn)).expect("issue");
        let (cert, _) = pair.write_pair(&pki.dir, base).expect("write pair");
        serials.push(serial_of(&cert));
    }
    (serials[0].clone(), serials[1].clone())
}

/// The serial of the first certificate in a PEM file.
pub fn serial_of(path: &Path) -> String {
    let certs = kelson_runtime::tls::load_certs(path).expect("certificate");
    kelson_runtime::tls::serial_hex(certs[0].as_ref()).expect("serial")
}

/// A connector doing a full handshake every time (no resumption), with the client certificate
/// (the peer port requires one from the store CA too).
pub fn connector(pki: &PkiPaths) -> TlsConnector {
    let mut cfg = (*kelson_runtime::tls::client_config(
        &pki.ca_cert,
        Some(&pki.client_cert),
        Some(&pki.client_key),
    )
    .expect("client TLS config"))
    .clone();
    cfg.resumption = tokio_rustls::rustls::client::Resumption::disabled();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    TlsConnector::from(Arc::new(cfg))
}

/// The serial a fresh handshake with 127.0.0.1:`port` sees.
pub async fn served_serial(connector: &TlsConnector, port: u16) -> anyhow::Result<String> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = ServerName::try_from("127.0.0.1")?;
    let tls = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp)).await??;
    let (_, conn) = tls.get_ref();
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| anyhow::anyhow!("no peer certificate"))?;
    kelson_runtime::tls::serial_hex(leaf.as_ref())
        .ok_or_else(|| anyhow::anyhow!("unparsable certificate"))
}
