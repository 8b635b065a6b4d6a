//! Certificate rotation under load (issue 8, "must be demonstrated" item 4).
//!
//! A control plane (kelson-kv + kelson-apiserver) whose API server serving certificate, the
//! test client's certificate and kelson-kv's serving certificate are first forced down to a
//! 15 s lifetime with `kelsonctl pki renew --force --cert-lifetime 15s`, then renewed by
//! `kelsonctl pki renew --before 50%` running every second, as a timer would. Meanwhile a
//! client opens a new TLS connection to the API server every 50 ms (a full handshake each
//! time, so it sees the certificate currently served) and does an authenticated GET; another
//! handshakes with kelson-kv every 500 ms. The test runs longer than a certificate lifetime,
//! so it passes only if both servers and the client (which uses kelson-runtime's reloading
//! client config) pick up renewed files without a restart:
//! - zero failed requests or handshakes;
//! - new serial numbers observed in the handshakes of both servers;
//! - the API server's `/metrics` reports the served certificate's expiry.
//!
//! A second test covers API clients (issue 8: "kube-rs clients pick up a renewed client
//! certificate"): kelson-scheduler runs with a short-lived client certificate, the certificate
//! is renewed on disk, the old one expires, and the API server is restarted so every
//! connection has to be set up again. The scheduler must keep renewing its leader Lease —
//! which it can only do with the renewed certificate (a negative control shows the expired
//! one is refused).
//!
//! Needs `cargo build -p kelson-kv -p kelson-apiserver -p kelsonctl -p kelson-scheduler`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kelson_testsupport::{bin_path, free_port, ControlPlane, ControlPlaneOpts};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

const LIFETIME: &str = "15s";
const RUN_FOR: Duration = Duration::from_secs(22);

fn renew(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new(bin_path("kelsonctl"))
        .args(["pki", "renew", "--dir"])
        .arg(dir)
        .args(args)
        .output()
        .context("running kelsonctl (cargo build -p kelsonctl)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "kelsonctl pki renew {args:?}: {}\n{text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(text)
}

/// One fresh TLS connection: the serial of the served certificate and the HTTP status line.
async fn tls_get(
    connector: &TlsConnector,
    addr: &str,
    path: Option<&str>,
) -> anyhow::Result<(String, String)> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from("127.0.0.1")?;
    let mut tls = connector.connect(name, tcp).await.context("handshake")?;
    let serial = {
        let (_, conn) = tls.get_ref();
        let leaf = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .context("no peer certificate")?;
        kelson_runtime::tls::serial_hex(leaf.as_ref()).context("unparsable peer certificate")?
    };
    let Some(path) = path else {
        return Ok((serial, String::new()));
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    // Connection: close — the server ends the stream after the response.
    let _ = tls.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf);
    let status = text.lines().next().unwrap_or("").to_string();
    Ok((serial, status))
}

fn connector(ca: &Path, cert: &Path, key: &Path, alpn: &[u8]) -> anyhow::Result<TlsConnector> {
    let mut cfg = (*kelson_runtime::tls::client_config(ca, Some(cert), Some(key))?).clone();
    // Every request must do a full handshake, or it would not see the current certificate.
    cfg.resumption = tokio_rustls::rustls::client::Resumption::disabled();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Ok(TlsConnector::from(Arc::new(cfg)))
}

fn serial_of(path: &Path) -> String {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    let der = tokio_rustls::rustls::pki_types::CertificateDer::from_pem_file(path).unwrap();
    kelson_runtime::tls::serial_hex(der.as_ref()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_roll_over_under_load_without_failed_requests() -> anyhow::Result<()> {
    let metrics_port = free_port();
    let cp = ControlPlane::start_with(ControlPlaneOpts {
        apiserver_args: vec!["--metrics-addr".into(), format!("127.0.0.1:{metrics_port}")],
    })
    .await?;
    let pki: PathBuf = cp.dir().join("pki");
    let store_pki = cp.store().pki().context("store PKI")?.clone();
    // The test's own identity, from the cluster CA (files pki/client-rotation-tester.*).
    cp.kubeconfig_for("rotation-tester", Some("system:masters"))?;
    let (client_cert, client_key) = (
        pki.join("client-rotation-tester.crt"),
        pki.join("client-rotation-tester.key"),
    );
    let original_api = serial_of(&pki.join("apiserver.crt"));
    let original_kv = serial_of(&store_pki.server_cert);

    // Short lifetimes from now on.
    let forced = [
        "--force",
        "--cert-lifetime",
        LIFETIME,
        "--cert",
        "apiserver,client-rotation-tester",
    ];
    let out = renew(&pki, &forced)?;
    assert!(out.matches("renewed").count() == 2, "{out}");
    renew(
        &store_pki.dir,
        &[
            "--force",
            "--cert-lifetime",
            LIFETIME,
            "--cert",
            "kv-server",
        ],
    )?;
    let started = Instant::now();

    let api = connector(&pki.join("ca.crt"), &client_cert, &client_key, b"http/1.1")?;
    let kv = connector(
        &store_pki.ca_cert,
        &store_pki.client_cert,
        &store_pki.client_key,
        b"h2",
    )?;
    let api_addr = cp.server_url().trim_start_matches("https://").to_string();
    let kv_addr = cp.store().endpoints()[0]
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .to_string();

    // The renewal timer: every second, renew what has less than half its life left.
    let renewer = {
        let (pki, store) = (pki.clone(), store_pki.dir.clone());
        tokio::task::spawn_blocking(move || -> anyhow::Result<usize> {
            let mut renewed = 0;
            while started.elapsed() < RUN_FOR {
                let a = renew(
                    &pki,
                    &[
                        "--before",
                        "50%",
                        "--cert",
                        "apiserver,client-rotation-tester",
                    ],
                )?;
                let b = renew(&store, &["--before", "50%", "--cert", "kv-server"])?;
                renewed += a.matches("renewed").count() + b.matches("renewed").count();
                std::thread::sleep(Duration::from_secs(1));
            }
            Ok(renewed)
        })
    };

    let mut api_serials = BTreeSet::new();
    let mut kv_serials = BTreeSet::new();
    let mut failures = Vec::new();
    let mut requests = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut i = 0u64;
    while started.elapsed() < RUN_FOR {
        tick.tick().await;
        requests += 1;
        match tls_get(&api, &api_addr, Some("/api/v1/namespaces/default")).await {
            Ok((serial, status)) if status.contains(" 200 ") => {
                api_serials.insert(serial);
            }
            Ok((_, status)) => failures.push(format!("{:?}: {status}", started.elapsed())),
            Err(e) => failures.push(format!("{:?}: {e:#}", started.elapsed())),
        }
        if i.is_multiple_of(10) {
            requests += 1;
            match tls_get(&kv, &kv_addr, None).await {
                Ok((serial, _)) => {
                    kv_serials.insert(serial);
                }
                Err(e) => failures.push(format!("kv {:?}: {e:#}", started.elapsed())),
            }
        }
        i += 1;
    }
    let renewed = renewer.await??;
    assert!(
        failures.is_empty(),
        "{} of {requests} requests failed: {failures:#?}\n{}",
        failures.len(),
        cp.apiserver_log_tail(30)
    );
    // Initial 1-year (briefly, until the reload), forced 15 s, and at least one timed renewal.
    assert!(renewed >= 3, "only {renewed} timed renewals");
    api_serials.remove(&original_api);
    kv_serials.remove(&original_kv);
    assert!(
        api_serials.len() >= 2,
        "API server served too few renewed certificates: {api_serials:?}\n{}",
        cp.apiserver_log_tail(40)
    );
    assert!(
        kv_serials.len() >= 2,
        "kelson-kv served too few renewed certificates: {kv_serials:?}"
    );
    // The client certificate expired and was replaced during the run: it was still accepted.
    assert!(started.elapsed() > Duration::from_secs(15));

    // /metrics: the expiry of the certificate now on disk (reloaded within 3 s of the write).
    let want = {
        let info = kelson_pki::cert_info(&pki.join("apiserver.crt"))?;
        info.not_after.unix_timestamp()
    };
    let line_prefix = format!(
        "kelson_certificate_expiry_seconds{{file=\"{}\"}} ",
        pki.join("apiserver.crt").display()
    );
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        // A handshake triggers the reload check.
        let _ = tls_get(&api, &api_addr, None).await;
        let body =
            kelson_testsupport::probe::http_get(&format!("127.0.0.1:{metrics_port}"), "/metrics")
                .await;
        let got = body
            .lines()
            .find_map(|l| l.strip_prefix(&line_prefix))
            .and_then(|v| v.trim().parse::<f64>().ok());
        if got == Some(want as f64) {
            break;
        }
        if Instant::now() > deadline {
            panic!("expected {line_prefix}{want}, got {got:?} in\n{body}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eprintln!(
        "{requests} requests, 0 failed; {} renewals; API serials {api_serials:?}; kv serials {kv_serials:?}",
        renewed
    );
    Ok(())
}

/// Issue 8: API clients built by kelson-kube (the scheduler here; the controller manager,
/// kelson-proxy, kelson-dns and the cloud controller manager build theirs the same way)
/// follow a renewed client certificate without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_keeps_working_after_its_old_client_certificate_expires() -> anyhow::Result<()> {
    use kelson_testsupport::ChildGuard;

    const OLD_LIFETIME: Duration = Duration::from_secs(10);
    let cp = ControlPlane::start().await?;
    // A second API server over the same store, which the test can restart: a restart closes
    // every connection, so the scheduler must handshake again after its old certificate expired.
    let mut api = cp.start_peer_apiserver("rotation-api", &[]).await?;
    let pki: PathBuf = cp.dir().join("pki");
    let issued = cp.kubeconfig_for("sched-rotation", Some("system:masters"))?;
    let base = "client-sched-rotation";
    let text = std::fs::read_to_string(&issued)?;
    assert!(text.contains(&cp.server_url()), "{text}");
    let kubeconfig = cp.dir().join("scheduler-rotation.kubeconfig");
    std::fs::write(
        &kubeconfig,
        text.replace(&cp.server_url(), &api.server_url()),
    )?;

    // The certificate the scheduler starts with lives 10 s.
    let out = renew(&pki, &["--force", "--cert-lifetime", "10s", "--cert", base])?;
    assert_eq!(out.matches("renewed").count(), 1, "{out}");
    let (cert, key) = (
        pki.join(format!("{base}.crt")),
        pki.join(format!("{base}.key")),
    );
    let old_copy = cp.dir().join("sched-rotation-old.crt");
    std::fs::copy(&cert, &old_copy)?;
    let old_expiry = {
        let na = kelson_pki::cert_info(&cert)?.not_after.unix_timestamp();
        std::time::UNIX_EPOCH + Duration::from_secs(na as u64)
    };

    let lease_name = "rotation-scheduler";
    let mut cmd = std::process::Command::new(bin_path("kelson-scheduler"));
    cmd.arg("--no-dbus")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args([
            "--leader-elect=true",
            "--leader-elect-resource-name",
            lease_name,
            "--leader-elect-lease-duration",
            "6s",
            "--leader-elect-renew-deadline",
            "4s",
            "--leader-elect-retry-period",
            "1s",
        ]);
    let mut sched = ChildGuard::spawn(
        "kelson-scheduler",
        cmd,
        &cp.dir().join("scheduler-rotation.log"),
    )?;
    // The holder and renew time of the Lease (kubectl: this crate has no kube client).
    let lease_state = || -> Option<(String, String)> {
        let out = cp.kubectl(&[
            "get",
            "lease",
            "-n",
            "kube-system",
            lease_name,
            "-o",
            "jsonpath={.spec.holderIdentity} {.spec.renewTime}",
        ]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (h, t) = text.trim().split_once(' ')?;
        (out.status.success() && !h.is_empty() && !t.is_empty())
            .then(|| (h.to_string(), t.to_string()))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let holder = loop {
        if let Some((h, _)) = lease_state() {
            break h;
        }
        if let Some(st) = sched.try_wait() {
            bail!("kelson-scheduler exited ({st}):\n{}", sched.log_tail(30));
        }
        assert!(
            Instant::now() < deadline,
            "the scheduler took no Lease within 30 s:\n{}",
            sched.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // Renewal: same key, a new certificate for an hour (what a renewal timer does).
    let out = renew(&pki, &["--force", "--cert-lifetime", "1h", "--cert", base])?;
    assert_eq!(out.matches("renewed").count(), 1, "{out}");
    assert_ne!(std::fs::read(&cert)?, std::fs::read(&old_copy)?);
    // Let the old certificate expire (a second of margin), then drop every connection.
    if let Ok(left) = old_expiry.duration_since(std::time::SystemTime::now()) {
        assert!(left <= OLD_LIFETIME);
        tokio::time::sleep(left + Duration::from_secs(1)).await;
    }
    api.restart().await?;
    // Whatever the Lease says now, a later renewal went through the restarted server (the
    // old process and all its connections are gone).
    let before = lease_state();

    // Negative control: the expired certificate is refused now, so success below means the
    // scheduler presents the renewed one.
    let ca = pki.join("ca.crt");
    let api_addr = api.server_url().trim_start_matches("https://").to_string();
    let expired = tls_get(
        &connector(&ca, &old_copy, &key, b"http/1.1")?,
        &api_addr,
        Some("/apis/coordination.k8s.io/v1/namespaces/kube-system/leases"),
    )
    .await;
    assert!(
        !matches!(&expired, Ok((_, status)) if status.contains(" 200 ")),
        "the expired client certificate was accepted: {expired:?}"
    );
    let renewed = tls_get(
        &connector(&ca, &cert, &key, b"http/1.1")?,
        &api_addr,
        Some("/apis/coordination.k8s.io/v1/namespaces/kube-system/leases"),
    )
    .await;
    assert!(
        matches!(&renewed, Ok((_, status)) if status.contains(" 200 ")),
        "positive control: the renewed certificate must be accepted: {renewed:?}"
    );

    // The scheduler renews its Lease through the restarted server, still as the same holder.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some((h, renew_time)) = lease_state() {
            if h == holder && before.as_ref().is_none_or(|(_, t)| *t != renew_time) {
                break;
            }
        }
        if let Some(st) = sched.try_wait() {
            bail!("kelson-scheduler exited ({st}):\n{}", sched.log_tail(30));
        }
        assert!(
            Instant::now() < deadline,
            "the scheduler did not renew its Lease within 20 s of the restart (holder {holder}); lease now {:?}\n{}",
            lease_state(),
            sched.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let log = sched.log();
    assert!(
        log.contains("API client reloaded"),
        "the scheduler did not log reloading its API client:\n{log}"
    );
    sched.terminate(Duration::from_secs(10))?;
    Ok(())
}
