//! Test harness: a store (kelson-kv or etcd, via kelson-testsupport), a PKI for the API server
//! (kelson-pki), the kelson-apiserver binary, kubeconfigs, and the real kubectl.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use kelson_pki::{Ca, CertRequest, Usage};
use kelson_testsupport::{
    apiserver_args, free_port, kubectl_with, wait_readyz, ChildGuard, ClusterOpts, StoreCluster,
    StoreKind,
};

pub const KUBECTL: &str = "/usr/bin/kubectl";

pub struct ApiCluster {
    pub store: StoreCluster,
    pub server: ChildGuard,
    pub port: u16,
    pub kubeconfig: PathBuf,
    pub dir: tempfile::TempDir,
}

fn write_kubeconfig(
    path: &Path,
    port: u16,
    ca: &Path,
    cert: Option<(&Path, &Path)>,
) -> anyhow::Result<()> {
    let user = match cert {
        Some((c, k)) => format!(
            "{{client-certificate: {}, client-key: {}}}",
            c.display(),
            k.display()
        ),
        // A token kelson-apiserver does not accept: without any credential kubectl would
        // prompt for a password instead of sending the request.
        None => "{token: not-a-valid-token}".into(),
    };
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kelson\n  cluster: {{server: \"https://127.0.0.1:{port}\", certificate-authority: {}}}\nusers:\n- name: u\n  user: {user}\ncontexts:\n- name: kelson\n  context: {{cluster: kelson, user: u}}\ncurrent-context: kelson\n",
        ca.display()
    );
    std::fs::write(path, text)?;
    Ok(())
}

impl ApiCluster {
    /// A one-member store of `kind` (mutual TLS) and an API server in front of it.
    pub async fn start(kind: StoreKind, extra: &[&str]) -> anyhow::Result<ApiCluster> {
        Self::start_env(kind, extra, &[]).await
    }

    /// As [`ApiCluster::start`], with extra environment for the server process.
    pub async fn start_env(
        kind: StoreKind,
        extra: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> anyhow::Result<ApiCluster> {
        let store = StoreCluster::start(
            kind,
            1,
            ClusterOpts {
                tls: true,
                ..Default::default()
            },
        )
        .await?;
        let dir = tempfile::Builder::new()
            .prefix("kelson-apiserver-test-")
            .tempdir()?;
        let pki = dir.path().join("pki");
        std::fs::create_dir_all(&pki)?;
        let ca = Ca::generate("kelson-apiserver-test-ca")?;
        ca.pair().write_pair(&pki, "ca")?;
        let server = ca.issue(&CertRequest {
            dns_names: vec!["localhost".into()],
            ip_addresses: vec!["127.0.0.1".parse()?],
            ..CertRequest::new("kube-apiserver", Usage::Server)
        })?;
        server.write_pair(&pki, "apiserver")?;
        ca.issue(&CertRequest {
            organization: Some("system:masters".into()),
            ..CertRequest::new("kubernetes-admin", Usage::Client)
        })?
        .write_pair(&pki, "admin")?;
        ca.issue(&CertRequest {
            organization: Some("devs".into()),
            ..CertRequest::new("bob", Usage::Client)
        })?
        .write_pair(&pki, "bob")?;
        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kelson-apiserver"));
        cmd.args(["--log-level", "info"])
            .args(apiserver_args(&store, &pki, port)?)
            .args(extra);
        for (k, v) in env {
            cmd.env(k, v);
        }
        if !extra.contains(&"--dbus-address") {
            cmd.arg("--no-dbus");
        }
        let server = ChildGuard::spawn("kelson-apiserver", cmd, &dir.path().join("apiserver.log"))?;
        let kubeconfig = dir.path().join("admin.kubeconfig");
        write_kubeconfig(
            &kubeconfig,
            port,
            &pki.join("ca.crt"),
            Some((&pki.join("admin.crt"), &pki.join("admin.key"))),
        )?;
        write_kubeconfig(
            &dir.path().join("bob.kubeconfig"),
            port,
            &pki.join("ca.crt"),
            Some((&pki.join("bob.crt"), &pki.join("bob.key"))),
        )?;
        write_kubeconfig(
            &dir.path().join("anon.kubeconfig"),
            port,
            &pki.join("ca.crt"),
            None,
        )?;
        let mut c = ApiCluster {
            store,
            server,
            port,
            kubeconfig,
            dir,
        };
        wait_readyz(
            &mut c.server,
            "kelson-apiserver",
            &c.kubeconfig,
            c.dir.path(),
            Duration::from_secs(30),
        )
        .await?;
        Ok(c)
    }

    pub fn kubeconfig_for(&self, user: &str) -> PathBuf {
        self.dir.path().join(format!("{user}.kubeconfig"))
    }

    pub fn kubectl_as(&self, kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Output {
        kubectl_with(kubeconfig, self.dir.path(), args, stdin)
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_as(&self.kubeconfig, args, None)
    }

    pub fn kubectl_in(&self, args: &[&str], stdin: &str) -> Output {
        self.kubectl_as(&self.kubeconfig, args, Some(stdin))
    }

    /// Runs kubectl, asserting success; returns stdout.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}\n--- server log ---\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.server.log_tail(20)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[track_caller]
    pub fn ok_in(&self, args: &[&str], stdin: &str) -> String {
        let out = self.kubectl_in(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `script` with python3 and the official `kubernetes` client (a test prerequisite),
    /// the admin kubeconfig as `sys.argv[1]`; asserts it succeeds and parses what it prints
    /// as JSON (a script prints one JSON document of its findings for the test to check).
    #[track_caller]
    pub fn python(&self, script: &str) -> serde_json::Value {
        let out = Command::new("python3")
            .args(["-c", script])
            .arg(&self.kubeconfig)
            .env("HOME", self.dir.path())
            .output()
            .expect("python3 runs (the `kubernetes` package is a test prerequisite)");
        assert!(
            out.status.success(),
            "python failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.server.log_tail(20)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "python printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Runs kubectl expecting failure; returns stderr.
    #[track_caller]
    pub fn fails(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl_as(&self.kubeconfig, args, stdin);
        assert!(
            !out.status.success(),
            "kubectl {args:?} unexpectedly succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

/// Output bytes as trimmed text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_string()
}

/// Polls (every 100 ms, at most 15 s) until `f` holds: policy and object changes reach the
/// authorizers (RBAC, the node graph) through a watch, so they take effect shortly after the
/// write returns.
#[track_caller]
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A raw HTTPS response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl ApiCluster {
    /// One HTTP/1.1 request with the admin certificate (or none); reads the body to the end.
    pub async fn request(
        &self,
        user: Option<&str>,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Resp {
        use http_body_util::BodyExt;
        let pki = self.dir.path().join("pki");
        let (cert, key) = match user {
            Some(u) => (
                Some(pki.join(format!("{u}.crt"))),
                Some(pki.join(format!("{u}.key"))),
            ),
            None => (None, None),
        };
        let cfg = kelson_runtime::tls::client_config(
            &pki.join("ca.crt"),
            cert.as_deref(),
            key.as_deref(),
        )
        .unwrap();
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await
            .unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(20), sender.send_request(req))
            .await
            .expect("answer in time")
            .unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = tokio::time::timeout(Duration::from_secs(20), resp.into_body().collect())
            .await
            .expect("body in time")
            .unwrap()
            .to_bytes()
            .to_vec();
        Resp {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.request(Some("admin"), "GET", path, &[], vec![]).await
    }

    pub async fn send_json(&self, method: &str, path: &str, body: &serde_json::Value) -> Resp {
        self.request(
            Some("admin"),
            method,
            path,
            &[("content-type", "application/json")],
            body.to_string().into_bytes(),
        )
        .await
    }
}
