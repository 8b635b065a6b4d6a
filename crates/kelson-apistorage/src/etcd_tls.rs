//! The store client's connection: etcd-client over TLS whose client certificate and CA bundle
//! follow the files on disk, so a renewed `apiserver-etcd-client` certificate or a rotated store
//! CA is used without restarting the API server.
//!
//! etcd-client takes its TLS material as PEM bytes (`TlsOptions`, tonic's `ClientTlsConfig`)
//! once, when the client is built, and [`crate::Storage`] keeps one `Client` for its lifetime.
//! Rebuilding that `Client` would mean swapping it under every clone of `Storage` and every
//! watch; instead the swap happens one layer down. etcd-client accepts a custom channel
//! through [`etcd_client::Client::connect_with_balanced_channel`]: this module hands it a
//! [`ReloadingChannel`], a tower service that forwards each gRPC request to a tonic balanced
//! channel over all endpoints (the same load balancing etcd-client sets up itself). At most
//! once per [`CHECK_INTERVAL`], on the request path (no background task), it stats the CA,
//! certificate and key files; when any changed (mtime, size or inode, so an atomic rename
//! counts) and the new files load (the key matches the certificate), it builds a new balanced
//! channel from them and swaps it in. Requests after the swap open new connections, so the
//! store sees the new certificate within a second of the renewal; streams already open
//! (watches) keep their connection, which stays valid (TLS checks certificates only during the
//! handshake) and is closed by hyper once the last of them ends. Files that fail to load (a
//! half-written key) are logged and the current channel is kept until the files change again.
//!
//! Why a new channel rather than a rustls certificate resolver: tonic's `ClientTlsConfig`
//! takes no resolver, and a channel built from a custom connector would have to re-create
//! tonic's TLS/ALPN setup by hand. A new channel per renewal (a few per year in production)
//! keeps tonic's stock transport, and a changed CA bundle is picked up the same way.
//!
//! Without TLS the stock `Client::connect` is used unchanged.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use http::Uri;
use tokio::sync::mpsc;
use tonic::transport::channel::Change;
use tonic::transport::Endpoint;
use tower::{Service, ServiceExt};

use crate::{EtcdTls, StorageError};

/// How often, at most, the TLS files are checked for changes.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Connection tunables copied onto every endpoint (what etcd-client's own endpoints get from
/// [`ConnectOptions`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct EndpointSettings {
    pub connect_timeout: Duration,
    pub keep_alive: (Duration, Duration),
}

/// Connects to `endpoints`; with `tls`, through a [`ReloadingChannel`] (see the module docs).
pub(crate) async fn connect(
    endpoints: &[String],
    tls: Option<&EtcdTls>,
    settings: EndpointSettings,
) -> Result<Client, StorageError> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(settings.connect_timeout)
        // HTTP/2 keep-alives notice a dead store under an idle watch.
        .with_keep_alive(settings.keep_alive.0, settings.keep_alive.1)
        .with_keep_alive_while_idle(true);
    let err = |e| crate::error::etcd_error(e, "unexpected compaction");
    let Some(tls) = tls else {
        return Client::connect(endpoints, Some(opts)).await.map_err(err);
    };
    // etcd-client still validates the endpoints with the TLS options (an `http://` URL with
    // TLS is an error there too) and sends them to the channel builder, which keeps the URIs.
    let opts = opts.with_tls(tls_options(&read_files(tls)?));
    let uris = endpoints
        .iter()
        .map(|e| https_uri(e))
        .collect::<Result<Vec<_>, _>>()?;
    let channel = ReloadingChannel::new(tls.clone(), uris, settings)?;
    Client::connect_with_balanced_channel(endpoints, Some(opts), channel.builder())
        .await
        .map_err(err)
}

/// An endpoint URL as etcd-client turns it into a URI when TLS is on (scheme-less → https).
fn https_uri(endpoint: &str) -> Result<Uri, StorageError> {
    let url = if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("https://{endpoint}")
    };
    url.parse()
        .map_err(|e| StorageError::BadRequest(format!("etcd endpoint {endpoint:?}: {e}")))
}

/// The PEM contents of the TLS files.
struct TlsFiles {
    ca: Vec<u8>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

fn read_files(tls: &EtcdTls) -> Result<TlsFiles, StorageError> {
    let read = |p: &PathBuf| {
        std::fs::read(p).map_err(|e| {
            StorageError::BadRequest(format!("reading etcd TLS file {}: {e}", p.display()))
        })
    };
    let identity = match (&tls.cert, &tls.key) {
        (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
        (None, None) => None,
        _ => {
            return Err(StorageError::BadRequest(
                "etcd TLS: a client certificate and key must be given together".into(),
            ))
        }
    };
    Ok(TlsFiles {
        ca: read(&tls.ca)?,
        identity,
    })
}

fn tls_options(files: &TlsFiles) -> TlsOptions {
    let o = TlsOptions::new().ca_certificate(Certificate::from_pem(&files.ca));
    match &files.identity {
        Some((c, k)) => o.identity(Identity::from_pem(c, k)),
        None => o,
    }
}

/// Checks what tonic would only find out at the first handshake: the files hold a CA bundle
/// and a certificate with the key that matches it.
fn validate(files: &TlsFiles) -> Result<(), String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = |pem: &[u8]| -> Result<Vec<CertificateDer<'static>>, String> {
        let v = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        if v.is_empty() {
            return Err("no certificate".into());
        }
        Ok(v)
    };
    certs(&files.ca).map_err(|e| format!("CA bundle: {e}"))?;
    if let Some((cert, key)) = &files.identity {
        let chain = certs(cert).map_err(|e| format!("client certificate: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("client key: {e}"))?;
        let provider = rustls::crypto::ring::default_provider();
        let signing = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| format!("client key: {e}"))?;
        rustls::sign::CertifiedKey::new(chain, signing)
            .keys_match()
            .map_err(|e| format!("client key does not match the certificate: {e}"))?;
    }
    Ok(())
}

/// What identifies a file's version (see the module docs); `None` when it is missing.
type FileSig = Option<(u64, u64, u64, i64, i64)>;

fn sig(path: &Path) -> FileSig {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

struct State {
    channel: tonic::transport::Channel,
    uris: Vec<Uri>,
    sigs: Vec<FileSig>,
    /// The endpoint set changed (etcd-client's `add_endpoint`/`remove_endpoint`).
    endpoints_changed: bool,
    last_check: Instant,
    rebuilds: u64,
}

/// A gRPC channel to the store that is rebuilt when its TLS files change (module docs).
#[derive(Clone)]
pub struct ReloadingChannel {
    tls: Arc<EtcdTls>,
    settings: EndpointSettings,
    interval: Duration,
    state: Arc<parking_lot::Mutex<State>>,
}

impl std::fmt::Debug for ReloadingChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingChannel")
            .field("tls", &self.tls)
            .finish()
    }
}

impl ReloadingChannel {
    fn new(
        tls: EtcdTls,
        uris: Vec<Uri>,
        settings: EndpointSettings,
    ) -> Result<ReloadingChannel, StorageError> {
        Self::with_interval(tls, uris, settings, CHECK_INTERVAL)
    }

    fn with_interval(
        tls: EtcdTls,
        uris: Vec<Uri>,
        settings: EndpointSettings,
        interval: Duration,
    ) -> Result<ReloadingChannel, StorageError> {
        // Signatures before reading: a change in between is seen at the next check.
        let sigs = Self::signatures(&tls);
        let files = read_files(&tls)?;
        validate(&files).map_err(|e| StorageError::BadRequest(format!("etcd TLS: {e}")))?;
        let channel = build_channel(&files, &uris, settings)?;
        Ok(ReloadingChannel {
            tls: Arc::new(tls),
            settings,
            interval,
            state: Arc::new(parking_lot::Mutex::new(State {
                channel,
                uris,
                sigs,
                endpoints_changed: false,
                last_check: Instant::now(),
                rebuilds: 0,
            })),
        })
    }

    fn signatures(tls: &EtcdTls) -> Vec<FileSig> {
        [Some(&tls.ca), tls.cert.as_ref(), tls.key.as_ref()]
            .into_iter()
            .flatten()
            .map(|p| sig(p))
            .collect()
    }

    /// How many times the channel was rebuilt after its files changed.
    #[cfg(test)]
    fn rebuilds(&self) -> u64 {
        self.state.lock().rebuilds
    }

    /// The channel to send on: the current one, rebuilt first if the files changed.
    pub fn current(&self) -> tonic::transport::Channel {
        let mut st = self.state.lock();
        if st.last_check.elapsed() < self.interval && !st.endpoints_changed {
            return st.channel.clone();
        }
        st.last_check = Instant::now();
        let sigs = Self::signatures(&self.tls);
        if sigs == st.sigs && !st.endpoints_changed {
            return st.channel.clone();
        }
        // Recorded whatever happens next: broken files are retried once they change again.
        st.sigs = sigs;
        st.endpoints_changed = false;
        let built = read_files(&self.tls)
            .map_err(|e| e.to_string())
            .and_then(|f| validate(&f).map(|_| f))
            .and_then(|f| build_channel(&f, &st.uris, self.settings).map_err(|e| e.to_string()));
        match built {
            Ok(channel) => {
                st.channel = channel;
                st.rebuilds += 1;
                tracing::info!(
                    cert = ?self.tls.cert, ca = %self.tls.ca.display(),
                    "store TLS files or endpoints changed: store client reconnects with them"
                );
            }
            Err(e) => tracing::warn!(
                cert = ?self.tls.cert, error = %e,
                "store TLS files changed but do not load; keeping the current connection"
            ),
        }
        st.channel.clone()
    }

    fn builder(&self) -> Builder {
        Builder(self.clone())
    }

    /// Applies etcd-client's endpoint changes; the next request rebuilds the channel.
    fn apply(&self, change: Change<Uri, Endpoint>) {
        let mut st = self.state.lock();
        match change {
            Change::Insert(uri, _) => {
                if st.uris.contains(&uri) {
                    return;
                }
                st.uris.push(uri);
            }
            Change::Remove(uri) => {
                // Never drop the last endpoint: requests would wait forever.
                if !st.uris.contains(&uri) || st.uris.len() == 1 {
                    return;
                }
                st.uris.retain(|u| *u != uri);
            }
        }
        st.endpoints_changed = true;
    }
}

fn build_channel(
    files: &TlsFiles,
    uris: &[Uri],
    s: EndpointSettings,
) -> Result<tonic::transport::Channel, StorageError> {
    let mut endpoints = Vec::with_capacity(uris.len());
    for uri in uris {
        let e = tonic::transport::Channel::builder(uri.clone())
            .tls_config(tls_options(files))
            .map_err(|e| StorageError::BadRequest(format!("etcd TLS for {uri}: {e}")))?
            .connect_timeout(s.connect_timeout)
            .http2_keep_alive_interval(s.keep_alive.0)
            .keep_alive_timeout(s.keep_alive.1)
            .keep_alive_while_idle(true);
        endpoints.push(e);
    }
    Ok(tonic::transport::Channel::balance_list(
        endpoints.into_iter(),
    ))
}

type Request = http::Request<tonic::body::Body>;
type Response = http::Response<tonic::body::Body>;

impl Service<Request> for ReloadingChannel {
    type Response = Response;
    type Error = tower::BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response, tower::BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is the inner channel's business, awaited per request in `call`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let channel = self.current();
        Box::pin(async move {
            let mut channel = channel;
            let ready = channel.ready().await.map_err(tower::BoxError::from)?;
            ready.call(req).await.map_err(tower::BoxError::from)
        })
    }
}

/// etcd-client's hook for a custom channel: hands out the [`ReloadingChannel`] and feeds
/// etcd-client's endpoint changes to it.
struct Builder(ReloadingChannel);

impl etcd_client::BalancedChannelBuilder for Builder {
    type Error = etcd_client::Error;

    fn balanced_channel(
        self,
        _buffer_size: usize,
    ) -> Result<(etcd_client::Channel, mpsc::Sender<Change<Uri, Endpoint>>), Self::Error> {
        let (tx, mut rx) = mpsc::channel::<Change<Uri, Endpoint>>(64);
        let channel = self.0.clone();
        // Ends when etcd-client drops its sender (the last clone of the client).
        tokio::spawn(async move {
            while let Some(change) = rx.recv().await {
                channel.apply(change);
            }
        });
        let svc = tower::util::BoxCloneSyncService::new(self.0);
        Ok((etcd_client::Channel::Custom(svc), tx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pki(dir: &Path) -> (EtcdTls, rcgen::Certificate, rcgen::KeyPair) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = p.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join("ca.crt"), ca.pem()).unwrap();
        let tls = EtcdTls {
            ca: dir.join("ca.crt"),
            cert: Some(dir.join("c.crt")),
            key: Some(dir.join("c.key")),
        };
        issue(dir, &ca, &ca_key);
        (tls, ca, ca_key)
    }

    fn issue(dir: &Path, ca: &rcgen::Certificate, ca_key: &rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .signed_by(&key, ca, ca_key)
            .unwrap();
        for (name, data) in [("c.crt", cert.pem()), ("c.key", key.serialize_pem())] {
            let tmp = dir.join("tmp");
            std::fs::write(&tmp, data).unwrap();
            std::fs::rename(&tmp, dir.join(name)).unwrap();
        }
    }

    #[tokio::test]
    async fn rebuilds_on_renewal_and_keeps_the_channel_on_broken_files() {
        let dir = tempfile::tempdir().unwrap();
        let (tls, ca, ca_key) = write_pki(dir.path());
        let settings = EndpointSettings {
            connect_timeout: Duration::from_secs(1),
            keep_alive: (Duration::from_secs(10), Duration::from_secs(5)),
        };
        let uris = vec![https_uri("127.0.0.1:1").unwrap()];
        assert_eq!(uris[0].scheme_str(), Some("https"));
        let ch =
            ReloadingChannel::with_interval(tls.clone(), uris, settings, Duration::ZERO).unwrap();
        ch.current();
        assert_eq!(ch.rebuilds(), 0, "nothing changed yet");
        issue(dir.path(), &ca, &ca_key);
        ch.current();
        assert_eq!(ch.rebuilds(), 1, "a renewed pair must rebuild the channel");
        ch.current();
        assert_eq!(ch.rebuilds(), 1, "no change, no rebuild");
        // A key that does not match: logged, the current channel stays.
        let good = std::fs::read(dir.path().join("c.key")).unwrap();
        std::fs::write(
            dir.path().join("c.key"),
            rcgen::KeyPair::generate().unwrap().serialize_pem(),
        )
        .unwrap();
        ch.current();
        assert_eq!(ch.rebuilds(), 1, "a mismatched key must not be used");
        std::fs::write(dir.path().join("c.key"), good).unwrap();
        ch.current();
        assert_eq!(ch.rebuilds(), 2);
        // A new endpoint from etcd-client rebuilds as well; a known one does not.
        let e = Endpoint::from_static("https://127.0.0.1:2");
        ch.apply(Change::Insert(e.uri().clone(), e.clone()));
        ch.current();
        assert_eq!(ch.rebuilds(), 3);
        ch.apply(Change::Insert(e.uri().clone(), e));
        ch.current();
        assert_eq!(ch.rebuilds(), 3);
        // Mismatched files at start are an error naming the problem.
        let mut bad = tls.clone();
        bad.key = Some(dir.path().join("missing.key"));
        let err = ReloadingChannel::new(bad, vec![], settings).unwrap_err();
        assert!(err.to_string().contains("missing.key"), "{err}");
    }
}
