//! SIGHUP makes kelson-kv re-check its certificate files at once (issue 2).
//!
//! Without a signal the files are polled on the handshake path at most every 3 s, so a renewal
//! is picked up "soon". `systemctl reload` (SIGHUP) must make it happen now: the member
//! re-checks every certificate, key and CA bundle it serves, presents or trusts, logs what it
//! replaced, and the next handshake shows the new certificate. Whether that beats the poll is
//! a race on a loaded machine, so what is asserted is what only the signal produces: the
//! re-check is logged (with the certificate reloaded) although no handshake happened since the
//! renewal, and the first handshake after it sees the new serials on the client and peer ports.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kelson_pki::{Ca, CertRequest, PkiPaths, Usage};
use kelson_testsupport::{ClusterOpts, StoreCluster, StoreKind};
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

/// Issues new `kv-server` and `kv-peer` pairs (same names and SANs as the cluster's PKI),
/// written in place with atomic renames as `kelsonctl pki renew` does; returns their serials.
fn renew(pki: &PkiPaths) -> (String, String) {
    let ca = Ca::load_files(&pki.ca_cert, &pki.ca_key).expect("store CA");
    let req = |cn: &str| CertRequest {
        dns_names: vec!["localhost".into()],
        ip_addresses: vec![IpAddr::from([127, 0, 0, 1])],
        validity: Duration::from_secs(3600),
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

fn serial_of(path: &Path) -> String {
    let certs = kelson_runtime::tls::load_certs(path).expect("certificate");
    kelson_runtime::tls::serial_hex(certs[0].as_ref()).expect("serial")
}

/// Full handshakes only (no resumption), with a client certificate from the store CA.
fn connector(pki: &PkiPaths) -> TlsConnector {
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
async fn served_serial(connector: &TlsConnector, port: u16) -> anyhow::Result<String> {
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

/// The pid of the kelson-kv process serving `data_dir` (its command line names it).
fn pid_of(data_dir: &Path) -> u32 {
    let want = data_dir.to_string_lossy().to_string();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).to_string())
            .collect();
        if args.first().is_some_and(|a| a.ends_with("kelson-kv")) && args.contains(&want) {
            return pid;
        }
    }
    panic!("no kelson-kv process for {want}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_renewed_certificates_at_once() {
    let cluster = StoreCluster::start(
        StoreKind::Kelson,
        1,
        ClusterOpts {
            tls: true,
            ..ClusterOpts::default()
        },
    )
    .await
    .expect("1-member TLS store");
    let pki = cluster.pki().expect("TLS cluster has a PKI").clone();
    let member = &cluster.members()[0];
    let connector = connector(&pki);
    let before = served_serial(&connector, member.client_port)
        .await
        .expect("handshake with the client port");
    assert_eq!(before, serial_of(&pki.server_cert));

    let (server_serial, peer_serial) = renew(&pki);
    assert_ne!(server_serial, before, "the renewal has a new serial");
    // No handshake between the renewal and the signal: the poll-based check, which runs only
    // on a handshake, cannot be what reloads the files.
    let pid = pid_of(&member.data_dir);
    let kill = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("running kill");
    assert!(kill.success(), "kill -HUP {pid}: {kill}");

    let deadline = Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = cluster.log(0);
        if log.contains("re-checked TLS certificates") {
            break log;
        }
        assert!(
            Instant::now() < deadline,
            "no reload logged after SIGHUP:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let server_cert = pki.server_cert.display().to_string();
    assert!(
        log.lines()
            .any(|l| l.contains("TLS certificate reloaded") && l.contains(&server_cert)),
        "the serving certificate {server_cert} is logged as reloaded:\n{log}"
    );
    assert!(
        !log.contains("TLS reload failed"),
        "no file failed to load:\n{log}"
    );

    // The very next handshakes show the renewed certificates, on both listeners.
    let client_side = served_serial(&connector, member.client_port)
        .await
        .expect("handshake with the client port after SIGHUP");
    assert_eq!(client_side, server_serial, "client port after SIGHUP");
    let peer_side = served_serial(&connector, member.peer_port)
        .await
        .expect("handshake with the peer port after SIGHUP");
    assert_eq!(peer_side, peer_serial, "peer port after SIGHUP");

    // And the member keeps serving: SIGHUP is a reload, not a stop.
    let mut client = cluster.client().await.expect("client");
    client.put("after-hup", "1", None).await.expect("put");
    let got = client.get("after-hup", None).await.expect("get");
    assert_eq!(got.kvs()[0].value(), b"1");
}
