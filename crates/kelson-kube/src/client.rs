//! API clients from a kubeconfig file that follow certificate renewals without a restart.
//!
//! `kelsonctl pki renew` replaces a component's client certificate in place: either the
//! `client-certificate`/`client-key` files a kubeconfig names, or the kubeconfig itself when the
//! credentials are embedded (`client-certificate-data`). kube-rs reads those once, when the
//! client is built, so a daemon that ran across a renewal would keep presenting the old
//! certificate on every new connection and fail once it expired.
//!
//! Design: [`client_from_kubeconfig`] returns an ordinary [`kube::Client`] whose transport is a
//! [`ReloadingService`]. That service holds a complete kube-rs client built the stock way (same
//! TLS, timeouts, retries, auth, tracing layers as `kube::Client::try_from`) and forwards each
//! request to it. At most once per check interval (on the request path, no background task) it
//! stats the kubeconfig and every file it references (CA, client certificate and key, token
//! file); when any of them changed — mtime, size or inode, so an atomic rename counts — it
//! builds a fresh inner client from the files and swaps it in. Requests after the swap open
//! new connections with the new certificate; requests and watches already in flight keep
//! their connection (TLS checks certificates only during the handshake, so they stay valid).
//!
//! Rebuilding the whole client rather than swapping only the rustls certificate resolver keeps
//! kube-rs's transport stack as kube-rs builds it (kube has no hook for a resolver, and
//! re-creating its stack by hand would drift from upstream with every kube release), and it
//! picks up a changed CA bundle or token file the same way. A kubeconfig that fails to load (a
//! half-written file, a key that does not match) is logged and the current client is kept; the
//! next change of the files triggers another attempt.
//!
//! Transport: [`Transport::Http1`] is kube-rs's stock stack (HTTP/1.1: one request per
//! connection at a time, so N concurrent requests hold N TLS connections). With the `http2`
//! feature, [`Transport::Http2`] builds the same layers (base URI, auth, extra headers) over a
//! hyper client that offers `h2` by ALPN and multiplexes every request over one connection
//! (falling back to HTTP/1.1 when a server does not offer h2), as client-go does. It is meant
//! for many small concurrent writes (the scheduler's bindings and events): one connection
//! task writes many frames per syscall instead of dozens of connections waking one task
//! each. (Until a connection has negotiated h2, hyper cannot know it will be shared: a cold
//! burst may handshake a few connections at once, of which all but one are dropped.) Long watches are better left on HTTP/1.1 connections of their own: on a shared
//! HTTP/2 connection a slow consumer's flow-control window would stall the writes too.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response};
use kube::client::Body;

use crate::KubeError;

/// How often, at most, the kubeconfig's files are checked for changes.
pub const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// A client for the cluster described by the kubeconfig at `path` (its current context) that
/// reloads the kubeconfig's credentials when its files change (see the module docs).
pub async fn client_from_kubeconfig(path: &Path) -> Result<kube::Client, KubeError> {
    client_from_kubeconfig_with(path, Transport::Http1).await
}

/// [`client_from_kubeconfig`] over the given [`Transport`].
pub async fn client_from_kubeconfig_with(
    path: &Path,
    transport: Transport,
) -> Result<kube::Client, KubeError> {
    let svc = ReloadingService::with_transport(path, RELOAD_CHECK_INTERVAL, transport).await?;
    let ns = svc.default_namespace().await;
    Ok(kube::Client::new(svc, ns))
}

/// How a client speaks HTTP to the API server (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Transport {
    /// kube-rs's stock client: HTTP/1.1, a connection per concurrent request.
    #[default]
    Http1,
    /// All requests multiplexed over one HTTP/2 connection (ALPN `h2`, HTTP/1.1 fallback).
    #[cfg(feature = "http2")]
    Http2,
}

/// Builds a kube-rs client from the kubeconfig file: the stock one, or the HTTP/2 one.
async fn build(path: &Path, transport: Transport) -> Result<kube::Client, KubeError> {
    let kc = kube::config::Kubeconfig::read_from(path).map_err(|source| KubeError::Kubeconfig {
        path: path.display().to_string(),
        source,
    })?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .map_err(|source| KubeError::Kubeconfig {
            path: path.display().to_string(),
            source,
        })?;
    match transport {
        Transport::Http1 => Ok(kube::Client::try_from(cfg)?),
        #[cfg(feature = "http2")]
        Transport::Http2 => h2::build(cfg),
    }
}

#[cfg(feature = "http2")]
mod h2 {
    //! The HTTP/2 stack: kube-rs's request layers over a hyper client whose TLS connector
    //! offers `h2` by ALPN. The ALPN list is set on kube-rs's own rustls config (same CA,
    //! client certificate, verifier) and the connector built with `HttpsConnector::new`,
    //! which takes that config as is, so hyper-rustls keeps the features kube-rs gives it.

    use std::sync::Arc;
    use std::time::Duration;

    use hyper_rustls::{DefaultServerNameResolver, FixedServerNameResolver, ResolveServerName};
    use hyper_util::client::legacy::connect::HttpConnector;
    use kube::client::ConfigExt;

    use crate::KubeError;

    /// Pings on an idle or stuck connection, so a dead peer fails requests within
    /// `KEEPALIVE + KEEPALIVE_TIMEOUT` instead of leaving them waiting on a half-open socket.
    const KEEPALIVE: Duration = Duration::from_secs(30);
    const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

    pub(super) fn build(cfg: kube::Config) -> Result<kube::Client, KubeError> {
        let mut tls = cfg.rustls_client_config()?;
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let names: Arc<dyn ResolveServerName + Send + Sync> = match &cfg.tls_server_name {
            Some(n) => {
                let name = rustls::pki_types::ServerName::try_from(n.clone()).map_err(|e| {
                    KubeError::Transport(format!("invalid tls-server-name {n:?}: {e}"))
                })?;
                Arc::new(FixedServerNameResolver::new(name))
            }
            None => Arc::new(DefaultServerNameResolver::default()),
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        // Small request frames must leave at once (Nagle + delayed ACK would add ~40 ms).
        http.set_nodelay(true);
        http.set_connect_timeout(Some(cfg.connect_timeout.unwrap_or(Duration::from_secs(30))));
        let https = hyper_rustls::HttpsConnector::new(http, tls, false, names);
        let hc: hyper_util::client::legacy::Client<_, kube::client::Body> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .timer(hyper_util::rt::TokioTimer::new())
                .http2_keep_alive_interval(KEEPALIVE)
                .http2_keep_alive_timeout(KEEPALIVE_TIMEOUT)
                .build(https);
        let svc = tower::ServiceBuilder::new()
            .layer(cfg.base_uri_layer())
            .option_layer(cfg.auth_layer()?)
            .layer(cfg.extra_headers_layer()?)
            .map_err(|e: hyper_util::client::legacy::Error| -> tower::BoxError { Box::new(e) })
            .service(hc);
        Ok(kube::Client::new(svc, cfg.default_namespace))
    }
}

/// What identifies a file's version: a rename-into-place changes the inode, an in-place write
/// the mtime or size. `None` when the file is missing (a change too, when it reappears).
pub type FileSig = Option<(u64, u64, u64, i64, i64)>;

/// The [`FileSig`] of `path` now.
pub fn sig(path: &Path) -> FileSig {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

/// The files a kubeconfig depends on: itself and every file it names (paths are absolute:
/// `Kubeconfig::read_from` resolves them against the kubeconfig's directory). Also used by
/// the kubelet's own reloading client.
pub fn watched_files(path: &Path) -> Vec<PathBuf> {
    let mut files = vec![path.to_path_buf()];
    if let Ok(kc) = kube::config::Kubeconfig::read_from(path) {
        for c in kc.clusters.iter().filter_map(|c| c.cluster.as_ref()) {
            files.extend(c.certificate_authority.iter().map(PathBuf::from));
        }
        for a in kc.auth_infos.iter().filter_map(|a| a.auth_info.as_ref()) {
            files.extend(
                [&a.client_certificate, &a.client_key, &a.token_file]
                    .into_iter()
                    .flatten()
                    .map(PathBuf::from),
            );
        }
    }
    files.sort();
    files.dedup();
    files
}

fn signatures(files: &[PathBuf]) -> Vec<FileSig> {
    files.iter().map(|f| sig(f)).collect()
}

struct State {
    client: kube::Client,
    files: Vec<PathBuf>,
    sigs: Vec<FileSig>,
    last_check: Instant,
    reloads: u64,
}

/// A `tower::Service` for [`kube::Client::new`] that forwards to a kube-rs client rebuilt
/// whenever the kubeconfig's files change.
#[derive(Clone)]
pub struct ReloadingService {
    path: Arc<PathBuf>,
    interval: Duration,
    transport: Transport,
    // A tokio mutex: a rebuild awaits (kube's config loading is async) and requests arriving
    // meanwhile should wait for the new client rather than race to build their own.
    state: Arc<tokio::sync::Mutex<State>>,
}

impl ReloadingService {
    /// Builds the first client from `path` (an error here is fatal, as for a plain client) and
    /// checks the files for changes at most once per `interval`.
    pub async fn new(path: &Path, interval: Duration) -> Result<ReloadingService, KubeError> {
        Self::with_transport(path, interval, Transport::Http1).await
    }

    /// [`ReloadingService::new`] whose clients (the first and every rebuilt one) use
    /// `transport`.
    pub async fn with_transport(
        path: &Path,
        interval: Duration,
        transport: Transport,
    ) -> Result<ReloadingService, KubeError> {
        // Signatures first: a change between reading them and building is then seen as a
        // change at the next check, never missed.
        let files = watched_files(path);
        let sigs = signatures(&files);
        let client = build(path, transport).await?;
        Ok(ReloadingService {
            path: Arc::new(path.to_path_buf()),
            interval,
            transport,
            state: Arc::new(tokio::sync::Mutex::new(State {
                client,
                files,
                sigs,
                last_check: Instant::now(),
                reloads: 0,
            })),
        })
    }

    async fn default_namespace(&self) -> String {
        self.state
            .lock()
            .await
            .client
            .default_namespace()
            .to_string()
    }

    /// How many times the client was rebuilt after a change of its files.
    pub async fn reloads(&self) -> u64 {
        self.state.lock().await.reloads
    }

    /// The client to send with: the current one, rebuilt first if the files changed.
    pub async fn current(&self) -> kube::Client {
        let mut st = self.state.lock().await;
        if st.last_check.elapsed() >= self.interval {
            st.last_check = Instant::now();
            // The kubeconfig may now name other files: re-derive the list when it changed.
            let mut files = st.files.clone();
            let mut sigs = signatures(&files);
            if sigs != st.sigs {
                files = watched_files(&self.path);
                sigs = signatures(&files);
                match build(&self.path, self.transport).await {
                    Ok(client) => {
                        st.client = client;
                        st.reloads += 1;
                        tracing::info!(
                            kubeconfig = %self.path.display(),
                            "kubeconfig or its certificate files changed: API client reloaded"
                        );
                    }
                    Err(e) => tracing::warn!(
                        kubeconfig = %self.path.display(),
                        error = %e,
                        "kubeconfig changed but does not load; keeping the current API client"
                    ),
                }
                // Recorded either way: a broken version is retried when the files change again.
                st.files = files;
                st.sigs = sigs;
            }
        }
        st.client.clone()
    }
}

impl tower::Service<Request<Body>> for ReloadingService {
    type Response = Response<Body>;
    type Error = kube::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, kube::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is the inner client's business (its own buffer), checked in `send`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.current().await.send(req).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBECONFIG: &str = "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:1\n    certificate-authority: ca.crt\nusers:\n- name: u\n  user:\n    client-certificate: u.crt\n    client-key: u.key\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\ncurrent-context: x\n";

    #[test]
    fn watches_the_kubeconfig_and_the_files_it_names() {
        let dir = tempfile::tempdir().unwrap();
        let kc = dir.path().join("k.kubeconfig");
        std::fs::write(&kc, KUBECONFIG).unwrap();
        let files = watched_files(&kc);
        for name in ["k.kubeconfig", "ca.crt", "u.crt", "u.key"] {
            assert!(
                files.contains(&dir.path().join(name)),
                "{name} not watched: {files:?}"
            );
        }
        // A missing file has no signature; writing it, then replacing it by a rename, both
        // count as changes.
        let crt = dir.path().join("u.crt");
        let s0 = sig(&crt);
        assert!(s0.is_none());
        std::fs::write(&crt, "a").unwrap();
        let s1 = sig(&crt);
        assert!(s1.is_some() && s1 != s0);
        let tmp = dir.path().join("u.crt.tmp");
        std::fs::write(&tmp, "a").unwrap();
        std::fs::rename(&tmp, &crt).unwrap();
        assert_ne!(
            sig(&crt),
            s1,
            "a rename into place must change the signature"
        );
    }

    /// A kubeconfig with files from a fresh CA, as `kelsonctl` writes them.
    fn pki(dir: &Path) -> (kelson_pki::Ca, PathBuf) {
        use kelson_pki::{Ca, CertRequest, Usage};
        let ca = Ca::generate("test-ca").unwrap();
        ca.pair().write_pair(dir, "ca").unwrap();
        ca.issue(&CertRequest::new("u", Usage::Client))
            .unwrap()
            .write_pair(dir, "u")
            .unwrap();
        let kc = dir.join("k.kubeconfig");
        std::fs::write(&kc, KUBECONFIG).unwrap();
        (ca, kc)
    }

    #[tokio::test]
    async fn rebuilds_on_a_renewed_certificate_and_keeps_the_client_on_a_broken_one() {
        use kelson_pki::{CertRequest, Usage};
        let dir = tempfile::tempdir().unwrap();
        let (ca, kc) = pki(dir.path());
        let svc = ReloadingService::new(&kc, Duration::from_millis(10))
            .await
            .unwrap();
        svc.current().await;
        assert_eq!(svc.reloads().await, 0, "nothing changed yet");
        // A renewal: new certificate and key written atomically (renames).
        ca.issue(&CertRequest::new("u", Usage::Client))
            .unwrap()
            .write_pair(dir.path(), "u")
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        svc.current().await;
        assert_eq!(svc.reloads().await, 1, "the renewed pair must be loaded");
        // Checks are rate-limited and a pass without changes rebuilds nothing.
        tokio::time::sleep(Duration::from_millis(20)).await;
        svc.current().await;
        assert_eq!(svc.reloads().await, 1);
        // A broken key: logged, the current client stays; a repaired one loads again.
        let key = dir.path().join("u.key");
        let good = std::fs::read(&key).unwrap();
        std::fs::write(&key, "not a key").unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        svc.current().await;
        assert_eq!(
            svc.reloads().await,
            1,
            "a broken pair must not replace the client"
        );
        kelson_pki::write_atomic(&key, &good, 0o600).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        svc.current().await;
        assert_eq!(svc.reloads().await, 2);
        // Embedded credentials: a rewrite of the kubeconfig itself is a change too.
        let text = std::fs::read_to_string(&kc)
            .unwrap()
            .replace("name: x", "name: y")
            .replace("current-context: x", "current-context: y");
        kelson_pki::write_atomic(&kc, text.as_bytes(), 0o600).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        svc.current().await;
        assert_eq!(svc.reloads().await, 3);
    }
}
