//! More API servers over a [`ControlPlane`]'s store, for high-availability tests.
//!
//! Design:
//! - A peer is one more `kelson-apiserver` process with the control plane's store endpoints,
//!   store client certificate, serving certificate and client CA, on its own ephemeral port;
//!   it reuses the control plane's PKI, so the admin client certificate works against every
//!   server and only the kubeconfig (the server URL) differs.
//! - Peers are built only from the control plane's public accessors, so the control plane's own
//!   behavior is untouched; a peer is a [`ChildGuard`] and dies with its [`PeerApiServer`].
//! - [`PeerApiServer::kill9`] and [`PeerApiServer::restart`] let a test take one server away
//!   (SIGKILL, no graceful shutdown) and bring it back on the same port, as a crashed and
//!   restarted replica behind a load balancer would be.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::{
    apiserver_args, bin_path, client_for, free_port, kubectl_with, wait_readyz, ChildGuard,
    ControlPlane,
};

/// One more API server over a control plane's store; drop to stop it.
pub struct PeerApiServer {
    name: String,
    child: Option<ChildGuard>,
    /// Everything needed to start it again (the command is rebuilt on each start).
    args: Vec<String>,
    port: u16,
    dir: PathBuf,
    kubeconfig: PathBuf,
    starts: u32,
}

impl std::fmt::Debug for PeerApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerApiServer")
            .field("name", &self.name)
            .field("port", &self.port)
            .finish()
    }
}

impl ControlPlane {
    /// Starts another `kelson-apiserver` over this control plane's store (same PKI, own port)
    /// with `extra_args` appended, and waits (bounded, 60 s) until it is ready. `name` tells
    /// its log and kubeconfig apart (`<dir>/<name>.log`, `<dir>/<name>.kubeconfig`).
    pub async fn start_peer_apiserver(
        &self,
        name: &str,
        extra_args: &[&str],
    ) -> anyhow::Result<PeerApiServer> {
        let pki = self.dir().join("pki");
        let port = free_port();
        let mut args: Vec<String> = vec!["--no-dbus".into(), "--log-level".into(), "info".into()];
        args.extend(apiserver_args(self.store(), &pki, port)?);
        args.extend(extra_args.iter().map(|s| s.to_string()));
        // The admin identity the control plane issued; the same certificate works everywhere.
        let kubeconfig = self.dir().join(format!("{name}.kubeconfig"));
        let admin = kube::config::Kubeconfig::read_from(self.kubeconfig_path())?;
        let user = admin
            .auth_infos
            .first()
            .and_then(|a| a.auth_info.as_ref())
            .context("admin kubeconfig has no user")?;
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kelson\n  cluster:\n    server: \"https://127.0.0.1:{port}\"\n    certificate-authority: \"{}\"\nusers:\n- name: u\n  user:\n    client-certificate: \"{}\"\n    client-key: \"{}\"\ncontexts:\n- name: kelson\n  context: {{cluster: kelson, user: u}}\ncurrent-context: kelson\n",
            pki.join("ca.crt").display(),
            user.client_certificate.as_deref().context("admin client certificate")?,
            user.client_key.as_deref().context("admin client key")?,
        );
        std::fs::write(&kubeconfig, text)
            .with_context(|| format!("writing {}", kubeconfig.display()))?;
        let mut peer = PeerApiServer {
            name: name.to_string(),
            child: None,
            args,
            port,
            dir: self.dir().to_path_buf(),
            kubeconfig,
            starts: 0,
        };
        peer.restart().await?;
        Ok(peer)
    }
}

impl PeerApiServer {
    /// (Re)starts the process on the same port and waits (bounded, 60 s) until `/readyz` is ok.
    /// A running process is killed first.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9();
        self.starts += 1;
        let mut cmd = Command::new(bin_path("kelson-apiserver"));
        cmd.args(&self.args);
        let log = self.dir.join(format!("{}.{}.log", self.name, self.starts));
        let what = format!("kelson-apiserver {}", self.name);
        let child = self.child.insert(ChildGuard::spawn(&what, cmd, &log)?);
        wait_readyz(
            child,
            &what,
            &self.kubeconfig,
            &self.dir,
            Duration::from_secs(60),
        )
        .await
    }

    /// SIGKILLs the server (no graceful shutdown); a no-op when it is not running.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill9();
        }
    }

    /// Whether the process is alive.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.is_running())
    }

    /// `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// An admin kubeconfig pointing at this server.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// An admin `kube::Client` for this server.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        client_for(&self.kubeconfig).await
    }

    /// The last `n` lines of the current process's log.
    pub fn log_tail(&self, n: usize) -> String {
        self.child
            .as_ref()
            .map(|c| c.log_tail(n))
            .unwrap_or_else(|| format!("({} is not running)", self.name))
    }

    /// The real kubectl against this server (bounded by `--request-timeout 20s`).
    pub fn kubectl(&self, args: &[&str]) -> Output {
        kubectl_with(&self.kubeconfig, &self.dir, args, None)
    }

    /// kubectl that must succeed; returns stdout, or an error with stderr and the log tail.
    pub fn kubectl_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.kubectl(args);
        if !out.status.success() {
            bail!(
                "kubectl {args:?} against {} failed ({}): {}\n--- {} log ---\n{}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr),
                self.name,
                self.log_tail(20)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}
