//! A whole control plane for integration tests of API clients (scheduler, controller manager,
//! kubelet, ...): one kelson-kv member (mutual TLS), one kelson-apiserver in front of it, a
//! freshly generated cluster PKI, and an admin kubeconfig (client certificate with
//! `O=system:masters`) in a temp dir.
//!
//! Design:
//! - Everything lives in one temp dir; the processes are [`ChildGuard`]s, so dropping the
//!   [`ControlPlane`] kills them (also on test panic) before the directory is removed.
//! - `start` returns only once `/readyz` answers `ok` through the admin credentials, so tests
//!   can create objects immediately; failures carry the API server's log tail.
//! - Extra client identities (e.g. `system:kube-scheduler`) can be issued from the same CA with
//!   [`ControlPlane::kubeconfig_for`], so components can be tested under their own RBAC user.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kelson_pki::{Ca, CertRequest, Usage};

use crate::{bin_path, free_port, ChildGuard, ClusterOpts, StoreCluster, StoreKind};

/// The real kubectl.
pub const KUBECTL: &str = "/usr/bin/kubectl";

/// Options for [`ControlPlane::start_with`].
#[derive(Debug, Clone, Default)]
pub struct ControlPlaneOpts {
    /// Appended to the API server's command line.
    pub apiserver_args: Vec<String>,
}

/// A running store + API server with an admin kubeconfig; drop to tear down.
pub struct ControlPlane {
    // Field order matters: the server dies before the store, both before the dir is removed.
    server: ChildGuard,
    store: StoreCluster,
    ca: Ca,
    port: u16,
    kubeconfig: PathBuf,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("port", &self.port)
            .field("dir", &self.dir.path())
            .finish()
    }
}

fn write_kubeconfig(
    path: &Path,
    port: u16,
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> anyhow::Result<()> {
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kelson\n  cluster:\n    server: \"https://127.0.0.1:{port}\"\n    certificate-authority: \"{}\"\nusers:\n- name: u\n  user:\n    client-certificate: \"{}\"\n    client-key: \"{}\"\ncontexts:\n- name: kelson\n  context: {{cluster: kelson, user: u}}\ncurrent-context: kelson\n",
        ca.display(),
        cert.display(),
        key.display()
    );
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// The flags every test API server shares: serve TLS on 127.0.0.1:`port` with
/// `pki`/apiserver.{crt,key}, trust client certificates of `pki`/ca.crt, and talk to `store`
/// with its client certificate (mutual TLS). Callers append the rest (`--no-dbus`,
/// `--log-level`, feature flags), so a second server over the same store (HA, key rotation,
/// migration tests) is started the same way as the first.
pub fn apiserver_args(store: &StoreCluster, pki: &Path, port: u16) -> anyhow::Result<Vec<String>> {
    let spki = store.pki().context("store PKI")?;
    let mut args: Vec<String> = vec![
        "--bind-address".into(),
        "127.0.0.1".into(),
        "--secure-port".into(),
        port.to_string(),
        "--etcd-servers".into(),
        store.endpoints_str(),
    ];
    for (flag, path) in [
        ("--etcd-cafile", spki.ca_cert.clone()),
        ("--etcd-certfile", spki.client_cert.clone()),
        ("--etcd-keyfile", spki.client_key.clone()),
        ("--tls-cert-file", pki.join("apiserver.crt")),
        ("--tls-private-key-file", pki.join("apiserver.key")),
        ("--client-ca-file", pki.join("ca.crt")),
    ] {
        args.push(flag.into());
        args.push(path.display().to_string());
    }
    Ok(args)
}

/// Runs the real kubectl with `kubeconfig` and `HOME=home` (its cache stays in the test's
/// dir), bounded by `--request-timeout 20s`, feeding it `stdin`. A kubectl that cannot be run
/// is an [`Output`] with exit status 127 and the reason on stderr, so callers report it the
/// same way as a failed command.
pub fn kubectl_with(kubeconfig: &Path, home: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut cmd = Command::new(KUBECTL);
    cmd.env("KUBECONFIG", kubeconfig)
        .env("HOME", home)
        .args(["--request-timeout", "20s"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Output {
                status: std::os::unix::process::ExitStatusExt::from_raw(127 << 8),
                stdout: Vec::new(),
                stderr: format!("spawning {KUBECTL}: {e}").into_bytes(),
            }
        }
    };
    if let (Some(input), Some(mut w)) = (stdin, child.stdin.take()) {
        let _ = w.write_all(input.as_bytes());
    }
    // Closing stdin tells kubectl the input is complete (and is EOF when there is none).
    drop(child.stdin.take());
    child.wait_with_output().unwrap_or_else(|e| Output {
        status: std::os::unix::process::ExitStatusExt::from_raw(127 << 8),
        stdout: Vec::new(),
        stderr: format!("waiting for kubectl: {e}").into_bytes(),
    })
}

/// Polls `/readyz` with kubectl ([`kubectl_with`]) every 200 ms until it answers `ok`. Fails
/// early, with the log tail, when `server` (named `what` in errors) exits; fails with the last
/// kubectl error and the log tail after `timeout`.
pub async fn wait_readyz(
    server: &mut ChildGuard,
    what: &str,
    kubeconfig: &Path,
    home: &Path,
    timeout: Duration,
) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let out = kubectl_with(kubeconfig, home, &["get", "--raw", "/readyz"], None);
        if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok" {
            return Ok(());
        }
        if let Some(st) = server.try_wait() {
            bail!("{what} exited ({st}):\n{}", server.log_tail(40));
        }
        if start.elapsed() > timeout {
            bail!(
                "{what} not ready after {timeout:?}: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                server.log_tail(40)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl ControlPlane {
    /// Starts a kelson-kv member and kelson-apiserver and waits (bounded, 60 s) until the API
    /// server is ready. Needs `cargo build -p kelson-kv -p kelson-apiserver` beforehand.
    pub async fn start() -> anyhow::Result<ControlPlane> {
        Self::start_with(ControlPlaneOpts::default()).await
    }

    /// [`ControlPlane::start`] with extra API server flags.
    pub async fn start_with(opts: ControlPlaneOpts) -> anyhow::Result<ControlPlane> {
        let apiserver = bin_path("kelson-apiserver");
        let store = StoreCluster::start(
            StoreKind::Kelson,
            1,
            ClusterOpts {
                tls: true,
                ..Default::default()
            },
        )
        .await?;
        let dir = tempfile::Builder::new()
            .prefix("kelson-controlplane-")
            .tempdir()?;
        let pki = dir.path().join("pki");
        std::fs::create_dir_all(&pki)?;
        let ca = Ca::generate("kelson-test-cluster-ca")?;
        ca.pair().write_pair(&pki, "ca")?;
        ca.issue(&CertRequest {
            dns_names: vec!["localhost".into()],
            ip_addresses: vec!["127.0.0.1".parse()?],
            ..CertRequest::new("kube-apiserver", Usage::Server)
        })?
        .write_pair(&pki, "apiserver")?;
        let port = free_port();
        let mut cmd = Command::new(apiserver);
        cmd.args(["--no-dbus", "--log-level", "info"])
            .args(apiserver_args(&store, &pki, port)?)
            .args(&opts.apiserver_args);
        let server = ChildGuard::spawn("kelson-apiserver", cmd, &dir.path().join("apiserver.log"))?;
        let kubeconfig = dir.path().join("admin.kubeconfig");
        let mut cp = ControlPlane {
            server,
            store,
            ca,
            port,
            kubeconfig: kubeconfig.clone(),
            dir,
        };
        cp.issue_kubeconfig(&kubeconfig, "kubernetes-admin", Some("system:masters"))?;
        wait_readyz(
            &mut cp.server,
            "kelson-apiserver",
            &cp.kubeconfig,
            cp.dir.path(),
            Duration::from_secs(60),
        )
        .await?;
        Ok(cp)
    }

    fn issue_kubeconfig(&self, path: &Path, user: &str, group: Option<&str>) -> anyhow::Result<()> {
        let pki = self.dir.path().join("pki");
        let base = format!("client-{}", user.replace([':', '/'], "_"));
        self.ca
            .issue(&CertRequest {
                organization: group.map(str::to_string),
                ..CertRequest::new(user, Usage::Client)
            })?
            .write_pair(&pki, &base)?;
        write_kubeconfig(
            path,
            self.port,
            &pki.join("ca.crt"),
            &pki.join(format!("{base}.crt")),
            &pki.join(format!("{base}.key")),
        )
    }

    /// Writes (once per call) a kubeconfig for `user` in `group` (certificate CN / O) and
    /// returns its path.
    pub fn kubeconfig_for(&self, user: &str, group: Option<&str>) -> anyhow::Result<PathBuf> {
        let path = self
            .dir
            .path()
            .join(format!("{}.kubeconfig", user.replace([':', '/'], "_")));
        self.issue_kubeconfig(&path, user, group)?;
        Ok(path)
    }

    /// The admin kubeconfig (`O=system:masters`).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The test's temp dir (logs, PKI, kubeconfigs); put other components' files here too.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The cluster CA, to issue more certificates.
    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    /// The store under the API server.
    pub fn store(&self) -> &StoreCluster {
        &self.store
    }

    /// An admin `kube::Client`.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        client_for(&self.kubeconfig).await
    }

    /// The API server's log so far.
    pub fn apiserver_log(&self) -> String {
        self.server.log()
    }

    /// The last `n` lines of the API server's log.
    pub fn apiserver_log_tail(&self, n: usize) -> String {
        self.server.log_tail(n)
    }

    /// Runs the real kubectl with the admin kubeconfig (bounded by `--request-timeout 20s`).
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_stdin(args, None)
    }

    /// kubectl with `stdin` fed to it (e.g. `apply -f -`).
    pub fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        kubectl_with(&self.kubeconfig, self.dir.path(), args, stdin)
    }

    /// kubectl that must succeed; returns stdout, or an error with stderr and the server log.
    pub fn kubectl_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.kubectl(args);
        if !out.status.success() {
            bail!(
                "kubectl {args:?} failed ({}): {}\n--- apiserver log ---\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                self.server.log_tail(20)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// A `kube::Client` from a kubeconfig file (its current context).
pub async fn client_for(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .with_context(|| format!("loading {}", kubeconfig.display()))?;
    Ok(kube::Client::try_from(cfg)?)
}
