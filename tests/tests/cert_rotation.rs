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
//! A third test covers the API server's store client: its `apiserver-etcd-client` certificate
//! is renewed twice (to a 12 s one, then to a 1 h one) under a steady write load, through a
//! TLS front that stands in for the store and records the client certificate of every
//! connection it accepts. Zero writes may fail, the front must see each new serial, and after
//! the 12 s certificate expired and every connection was cut, the API server reconnects with
//! the renewed one (the front refuses the expired one).
//!
//! A fourth rotates the cluster CA with `kelsonctl pki rotate-ca` through its three phases
//! (trust old+new, re-issue leaves, drop the old CA) while a client makes a request every
//! 50 ms over a fresh TLS connection: zero failures, the API server ends up serving a
//! certificate from the new CA, and a client certificate from the old CA is refused. A fifth
//! rotates the store CA (`--ca store`) the same way under API writes: every write succeeds,
//! the store's and the store client's certificates end up from the new CA, and the store
//! refuses a client certificate from the old one.
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
    tls_send(connector, addr, path.map(|p| ("GET", p, ""))).await
}

/// Like [`tls_get`] with a method and a JSON body: `(method, path, body)`.
async fn tls_send(
    connector: &TlsConnector,
    addr: &str,
    request: Option<(&str, &str, &str)>,
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
    let Some((method, path, body)) = request else {
        return Ok((serial, String::new()));
    };
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
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

/// A TLS front for the store: terminates TLS with the store's serving certificate, requires a
/// client certificate from the store CA (rustls' verifier, so an expired one is refused),
/// records each accepted connection's client certificate serial, and relays the bytes to the
/// real store over its own TLS connection. Dropping it stops everything.
struct StoreFront {
    addr: String,
    seen: Arc<std::sync::Mutex<Vec<(Instant, String)>>>,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StoreFront {
    fn drop(&mut self) {
        self.task.abort();
        self.cut_all();
    }
}

impl StoreFront {
    async fn start(spki: &kelson_pki::PkiPaths, upstream: &str) -> anyhow::Result<StoreFront> {
        let server = kelson_runtime::tls::server_config(
            &spki.server_cert,
            &spki.server_key,
            Some(spki.ca_cert.as_path()),
            true,
            &[kelson_runtime::tls::ALPN_H2],
        )?;
        let client = connector(
            &spki.ca_cert,
            &spki.client_cert,
            &spki.client_key,
            kelson_runtime::tls::ALPN_H2,
        )?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let upstream = upstream
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .to_string();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let conns = Arc::new(std::sync::Mutex::new(Vec::new()));
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        let task = {
            let (seen, conns) = (seen.clone(), conns.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let (acceptor, client, upstream, seen) = (
                        acceptor.clone(),
                        client.clone(),
                        upstream.clone(),
                        seen.clone(),
                    );
                    let h = tokio::spawn(async move {
                        let Ok(Ok(mut down)) =
                            tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
                                .await
                        else {
                            return;
                        };
                        let serial = down
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(|c| kelson_runtime::tls::serial_hex(c.as_ref()))
                            .unwrap_or_default();
                        seen.lock().unwrap().push((Instant::now(), serial));
                        let Ok(tcp) = tokio::net::TcpStream::connect(&upstream).await else {
                            return;
                        };
                        let name = ServerName::try_from("127.0.0.1").expect("name");
                        let Ok(mut up) = client.connect(name, tcp).await else {
                            return;
                        };
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    });
                    conns.lock().unwrap().push(h);
                }
            })
        };
        Ok(StoreFront {
            addr,
            seen,
            conns,
            task,
        })
    }

    /// Serials of the client certificates of connections accepted since `since`.
    fn serials_since(&self, since: Instant) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| *t >= since)
            .map(|(_, s)| s.clone())
            .collect()
    }

    /// Closes every relayed connection (as a store restart or a network cut would).
    fn cut_all(&self) {
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }
}

/// Issue 8: the API server's store client (etcd-client in kelson-apistorage) follows a renewed
/// client certificate without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_client_follows_its_renewed_certificate_under_load() -> anyhow::Result<()> {
    use kelson_pki::{CertRequest, Usage};
    use kelson_testsupport::ChildGuard;

    let cp = ControlPlane::start().await?;
    let spki = cp.store().pki().context("store PKI")?.clone();
    let pki: PathBuf = cp.dir().join("pki");
    // The API server's own store identity (kubeadm's apiserver-etcd-client), from the store CA.
    let base = "apiserver-etcd-client";
    kelson_pki::Ca::load(&spki.dir)?
        .issue(&CertRequest {
            organization: Some("system:masters".into()),
            ..CertRequest::new(kelson_pki::KV_CLIENT_CN, Usage::Client)
        })?
        .write_pair(&spki.dir, base)?;
    let cert = spki.dir.join(format!("{base}.crt"));
    let key = spki.dir.join(format!("{base}.key"));
    let original = serial_of(&cert);
    let t0 = Instant::now();
    let front = StoreFront::start(&spki, &cp.store().endpoints()[0]).await?;

    // An API server whose store client goes through the front.
    let port = free_port();
    let mut cmd = std::process::Command::new(bin_path("kelson-apiserver"));
    cmd.args(["--no-dbus", "--bind-address", "127.0.0.1"])
        .args(["--log-level", "info", "--secure-port", &port.to_string()])
        .args(["--etcd-servers", &format!("https://{}", front.addr)])
        .arg("--etcd-cafile")
        .arg(&spki.ca_cert)
        .arg("--etcd-certfile")
        .arg(&cert)
        .arg("--etcd-keyfile")
        .arg(&key)
        .arg("--tls-cert-file")
        .arg(pki.join("apiserver.crt"))
        .arg("--tls-private-key-file")
        .arg(pki.join("apiserver.key"))
        .arg("--client-ca-file")
        .arg(pki.join("ca.crt"));
    let server = ChildGuard::spawn(
        "kelson-apiserver (store front)",
        cmd,
        &cp.dir().join("apiserver-store-front.log"),
    )?;
    cp.kubeconfig_for("store-rotation-tester", Some("system:masters"))?;
    let api = connector(
        &pki.join("ca.crt"),
        &pki.join("client-store-rotation-tester.crt"),
        &pki.join("client-store-rotation-tester.key"),
        b"http/1.1",
    )?;
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok((_, status)) = tls_get(&api, &addr, Some("/readyz")).await {
            if status.contains(" 200 ") {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the API server behind the store front is not ready:\n{}",
            server.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        front.serials_since(t0).contains(&original),
        "the front never saw the original certificate"
    );

    // Steady writes (each hits the store: a create is a transaction), one every 100 ms.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = spawn_writes(api.clone(), addr.clone(), "store-rotation", stop.clone());

    // Renewal 1: a 12 s certificate (same key, new serial).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t1 = Instant::now();
    renew(
        &spki.dir,
        &["--force", "--cert-lifetime", "12s", "--cert", base],
    )?;
    let short = serial_of(&cert);
    let short_copy = cp.dir().join("etcd-client-short.crt");
    std::fs::copy(&cert, &short_copy)?;
    let short_expiry = kelson_pki::cert_info(&cert)?.not_after.unix_timestamp();
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Renewal 2: an hour, as a timer would renew the short one.
    let t2 = Instant::now();
    renew(
        &spki.dir,
        &["--force", "--cert-lifetime", "1h", "--cert", base],
    )?;
    let long = serial_of(&cert);
    // Keep writing until the 12 s certificate has expired, plus a margin.
    loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs() as i64;
        if now > short_expiry + 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, failures) = load.await?;
    assert!(
        failures.is_empty(),
        "{} of {} writes failed: {failures:#?}\n{}",
        failures.len(),
        ok + failures.len(),
        server.log_tail(30)
    );
    assert!(ok >= 50, "only {ok} writes");
    let after1 = front.serials_since(t1);
    assert!(
        after1.contains(&short),
        "the store never saw the first renewed certificate {short}: {after1:?}\n{}",
        server.log_tail(30)
    );
    let after2 = front.serials_since(t2);
    assert!(
        after2.contains(&long),
        "the store never saw the second renewed certificate {long}: {after2:?}\n{}",
        server.log_tail(30)
    );
    let log = server.log();
    assert!(
        log.contains("store client reconnects"),
        "the API server did not log rebuilding its store connection:\n{}",
        server.log_tail(30)
    );

    // The 12 s certificate has expired: the store refuses it now (negative control) ...
    let expired = connector(
        &spki.ca_cert,
        &short_copy,
        &key,
        kelson_runtime::tls::ALPN_H2,
    )?;
    let tcp = tokio::net::TcpStream::connect(&front.addr).await?;
    let refused = async {
        let mut tls = expired
            .connect(ServerName::try_from("127.0.0.1")?, tcp)
            .await?;
        // TLS 1.3: the server's verdict on the client certificate arrives after the handshake.
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
        let mut buf = [0u8; 64];
        let n = tls.read(&mut buf).await?;
        anyhow::ensure!(n > 0, "closed");
        Ok::<_, anyhow::Error>(())
    }
    .await;
    assert!(
        refused.is_err(),
        "the expired client certificate was accepted"
    );
    // ... and with every connection cut, the API server reconnects with the renewed one.
    let cut = Instant::now();
    front.cut_all();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let body = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"store-rotation-after-cut"}}"#;
        let r = tls_send(
            &api,
            &addr,
            Some(("POST", "/api/v1/namespaces/default/configmaps", body)),
        )
        .await;
        let last = match r {
            Ok((_, status)) if status.contains(" 201 ") || status.contains(" 409 ") => break,
            other => format!("{other:?}"),
        };
        assert!(
            Instant::now() < deadline,
            "no write went through after the cut: {last}\n{}",
            server.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after_cut = front.serials_since(cut);
    assert!(
        !after_cut.is_empty() && after_cut.iter().all(|s| *s == long),
        "connections after the cut must use the renewed certificate {long}: {after_cut:?}"
    );
    eprintln!(
        "{ok} writes, 0 failed; store saw serials {original} -> {short} -> {long}; reconnected with {long}"
    );
    Ok(())
}

/// Creates a ConfigMap `<prefix>-<i>` through the API server every 100 ms (each a store
/// transaction) over a fresh TLS connection until `stop`; returns (successes, failures).
fn spawn_writes(
    api: TlsConnector,
    addr: String,
    prefix: &'static str,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<(usize, Vec<String>)> {
    tokio::spawn(async move {
        let (mut ok, mut failures) = (0usize, Vec::new());
        let mut i = 0;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            i += 1;
            let body = format!(
                r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{prefix}-{i}"}},"data":{{"i":"{i}"}}}}"#
            );
            let path = "/api/v1/namespaces/default/configmaps";
            match tls_send(&api, &addr, Some(("POST", path, body.as_str()))).await {
                Ok((_, status)) if status.contains(" 201 ") => ok += 1,
                Ok((_, status)) => failures.push(format!("write {i}: {status}")),
                Err(e) => failures.push(format!("write {i}: {e:#}")),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (ok, failures)
    })
}

/// Whether a TLS client with `cert`/`key` gets an HTTP/2 answer from the gRPC server at
/// `addr` (in TLS 1.3 a refused client certificate shows only after the handshake).
async fn grpc_accepts(ca: &Path, cert: &Path, key: &Path, addr: &str) -> anyhow::Result<()> {
    let c = connector(ca, cert, key, kelson_runtime::tls::ALPN_H2)?;
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut tls = c.connect(ServerName::try_from("127.0.0.1")?, tcp).await?;
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
    let mut buf = [0u8; 64];
    let n = tls.read(&mut buf).await?;
    anyhow::ensure!(n > 0, "closed");
    Ok(())
}

fn rotate_ca(dir: &Path, phase: &str) -> anyhow::Result<String> {
    rotate_ca_of(dir, "cluster", phase)
}

fn rotate_ca_of(dir: &Path, ca: &str, phase: &str) -> anyhow::Result<String> {
    let out = std::process::Command::new(bin_path("kelsonctl"))
        .args(["pki", "rotate-ca", "--dir"])
        .arg(dir)
        .args(["--ca", ca, "--phase", phase])
        .output()
        .context("running kelsonctl (cargo build -p kelsonctl)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "kelsonctl pki rotate-ca --phase {phase}: {}\n{text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(text)
}

/// Issue 8: the cluster CA rotates in three phases with no failed request, and at the end only
/// the new CA is trusted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_ca_rotates_in_three_phases_without_failed_requests() -> anyhow::Result<()> {
    /// Longer than the reload interval of every daemon and client (3 s).
    const SETTLE: Duration = Duration::from_millis(4500);
    let cp = ControlPlane::start().await?;
    let pki: PathBuf = cp.dir().join("pki");
    cp.kubeconfig_for("ca-rotation-tester", Some("system:masters"))?;
    let (cert, key) = (
        pki.join("client-ca-rotation-tester.crt"),
        pki.join("client-ca-rotation-tester.key"),
    );
    let old_ca = cp.dir().join("old-ca.crt");
    let old_client = cp.dir().join("old-client.crt");
    std::fs::copy(pki.join("ca.crt"), &old_ca)?;
    std::fs::copy(&cert, &old_client)?;
    let api_addr = cp.server_url().trim_start_matches("https://").to_string();

    // A request every 50 ms over a fresh connection, trusting pki/ca.crt and presenting the
    // tester's certificate (both re-read by kelson-runtime's client config when they change).
    let client = connector(&pki.join("ca.crt"), &cert, &key, b"http/1.1")?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (client, addr, stop) = (client.clone(), api_addr.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut ok, mut failures, mut serials) = (0usize, Vec::new(), BTreeSet::new());
            let started = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match tls_get(&client, &addr, Some("/api/v1/namespaces/default")).await {
                    Ok((serial, status)) if status.contains(" 200 ") => {
                        ok += 1;
                        serials.insert(serial);
                    }
                    Ok((_, status)) => failures.push(format!("{:?}: {status}", started.elapsed())),
                    Err(e) => failures.push(format!("{:?}: {e:#}", started.elapsed())),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (ok, failures, serials)
        })
    };
    let mut outputs = Vec::new();
    for phase in ["trust", "reissue", "finish"] {
        tokio::time::sleep(SETTLE).await;
        outputs.push(rotate_ca(&pki, phase)?);
    }
    tokio::time::sleep(SETTLE).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, failures, serials) = load.await?;
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {failures:#?}\n{outputs:#?}\n{}",
        failures.len(),
        ok + failures.len(),
        cp.apiserver_log_tail(30)
    );
    assert!(ok >= 100, "only {ok} requests");

    // Only the new CA is in the bundle, and the served certificate and the tester's are from it.
    let bundle = std::fs::read_to_string(pki.join("ca.crt"))?;
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 1, "{bundle}");
    let old_pem = std::fs::read_to_string(&old_ca)?;
    let pem = |p: &Path| std::fs::read_to_string(p).unwrap();
    assert!(
        !bundle.split_whitespace().eq(old_pem.split_whitespace()),
        "the bundle is still the old CA"
    );
    for leaf in [pki.join("apiserver.crt"), cert.clone()] {
        assert!(
            kelson_pki::issued_by(&pem(&leaf), &bundle),
            "{} is not from the new CA",
            leaf.display()
        );
        assert!(!kelson_pki::issued_by(&pem(&leaf), &old_pem));
    }
    let now_served = tls_get(&client, &api_addr, Some("/api/v1/namespaces/default")).await?;
    assert!(now_served.1.contains(" 200 "), "{now_served:?}");
    assert_eq!(now_served.0, serial_of(&pki.join("apiserver.crt")));
    assert!(
        serials.contains(&now_served.0) && serials.len() >= 2,
        "the load saw the old and the re-issued serving certificate: {serials:?}"
    );
    // The old CA is no longer trusted: its client certificate is refused ...
    let old_identity = connector(&pki.join("ca.crt"), &old_client, &key, b"http/1.1")?;
    let r = tls_get(&old_identity, &api_addr, Some("/api/v1/namespaces/default")).await;
    assert!(
        !matches!(&r, Ok((_, status)) if status.contains(" 200 ")),
        "a client certificate from the old CA was accepted: {r:?}"
    );
    // ... and a client trusting only the old CA cannot verify the server any more.
    let old_trust = connector(&old_ca, &cert, &key, b"http/1.1")?;
    let r = tls_get(&old_trust, &api_addr, None).await;
    assert!(
        r.is_err(),
        "the server still presents an old-CA certificate: {r:?}"
    );
    eprintln!("{ok} requests, 0 failed, through trust/reissue/finish; serving serials {serials:?}");
    Ok(())
}

/// Issue 8: the store CA rotates the same way while the API server writes through it: the
/// store's serving certificate and the API server's store client certificate move to the new
/// CA, no write fails, and the old store CA is refused at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_ca_rotates_under_api_writes() -> anyhow::Result<()> {
    const SETTLE: Duration = Duration::from_millis(4500);
    let cp = ControlPlane::start().await?;
    let spki = cp.store().pki().context("store PKI")?.clone();
    let pki: PathBuf = cp.dir().join("pki");
    cp.kubeconfig_for("store-ca-tester", Some("system:masters"))?;
    let api = connector(
        &pki.join("ca.crt"),
        &pki.join("client-store-ca-tester.crt"),
        &pki.join("client-store-ca-tester.key"),
        b"http/1.1",
    )?;
    let addr = cp.server_url().trim_start_matches("https://").to_string();
    let kv_addr = cp.store().endpoints()[0]
        .trim_start_matches("https://")
        .to_string();
    let old_client = cp.dir().join("old-kv-client.crt");
    std::fs::copy(&spki.client_cert, &old_client)?;
    let old_ca = std::fs::read_to_string(&spki.store_ca_cert)?;

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = spawn_writes(api, addr, "store-ca-rotation", stop.clone());
    let mut outputs = Vec::new();
    for phase in ["trust", "reissue", "finish"] {
        tokio::time::sleep(SETTLE).await;
        outputs.push(rotate_ca_of(&spki.dir, "store", phase)?);
    }
    tokio::time::sleep(SETTLE).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, failures) = load.await?;
    assert!(
        failures.is_empty(),
        "{} of {} writes failed: {failures:#?}\n{outputs:#?}\n{}",
        failures.len(),
        ok + failures.len(),
        cp.apiserver_log_tail(30)
    );
    assert!(ok >= 100, "only {ok} writes");
    let new_ca = std::fs::read_to_string(&spki.store_ca_cert)?;
    assert_eq!(new_ca.matches("BEGIN CERTIFICATE").count(), 1);
    for leaf in [&spki.server_cert, &spki.peer_cert, &spki.client_cert] {
        let pem = std::fs::read_to_string(leaf)?;
        assert!(kelson_pki::issued_by(&pem, &new_ca), "{leaf:?}");
        assert!(!kelson_pki::issued_by(&pem, &old_ca), "{leaf:?}");
    }
    assert!(
        cp.apiserver_log().contains("store client reconnects"),
        "the API server did not rebuild its store connection:\n{}",
        cp.apiserver_log_tail(30)
    );
    // The store now refuses the old CA's client certificate and takes the re-issued one.
    let ca = &spki.store_ca_cert;
    let old = grpc_accepts(ca, &old_client, &spki.client_key, &kv_addr).await;
    assert!(
        old.is_err(),
        "the store accepted an old-CA client certificate"
    );
    grpc_accepts(ca, &spki.client_cert, &spki.client_key, &kv_addr)
        .await
        .context("the re-issued store client certificate")?;
    eprintln!("{ok} writes, 0 failed, through the store CA's trust/reissue/finish");
    Ok(())
}
