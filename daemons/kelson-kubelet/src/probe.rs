//! Container probes (liveness, readiness, startup) and lifecycle hook handlers.
//!
//! Each probe of a running container is one task (upstream's probe worker), started when the
//! pod worker first sees the container running and aborted when the container changes or
//! stops (the [`ContainerProbers`] handle aborts its tasks on drop). A task waits out
//! `initialDelaySeconds` from the container's start, then probes every `periodSeconds` with
//! `timeoutSeconds`, and changes its result only after `successThreshold` consecutive
//! successes or `failureThreshold` consecutive failures, as upstream:
//!   - startup runs first; until it succeeds the other two do nothing and the container is
//!     not `started`; `failureThreshold` failures mark the container for a kill;
//!   - readiness starts out failed and flips `ready` both ways (the pod's Ready and
//!     ContainersReady conditions follow, and with them Services' endpoints);
//!   - liveness starts out successful; `failureThreshold` failures mark the container for a
//!     kill; the pod worker kills it ("Killing" event) and its restart policy and back-off
//!     decide what happens next.
//!
//! Every result change wakes the pod worker through a `Notify`, so status follows a probe at
//! once instead of at the next periodic resync. Every failed probe records an `Unhealthy`
//! event with upstream's message.
//!
//! Handlers: exec is CRI ExecSync with the timeout (exit 0 = success); httpGet is an HTTP/1.1
//! GET with hyper's client connection from the kubelet's (host) network namespace to the pod
//! IP (or `host`), TLS without verification for `HTTPS` like upstream, success for 200–399;
//! tcpSocket is a connect; grpc is a hand-made unary call of `grpc.health.v1.Health/Check`
//! through tonic's generic client with two prost messages — the two-field protocol does not
//! justify a new dependency (tonic-health) that would also pull its own build-time codegen.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Container, HTTPGetAction, LifecycleHandler, Pod, Probe, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use parking_lot::Mutex;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::cri::Cri;
use crate::events::Recorder;

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Liveness,
    Readiness,
    Startup,
}

impl Kind {
    fn title(self) -> &'static str {
        match self {
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
            Kind::Startup => "Startup",
        }
    }
}

/// The combined probe results of one container instance.
#[derive(Debug, Clone, Default)]
pub struct ProbeStatus {
    /// The startup probe succeeded (or there is none).
    pub started: bool,
    /// The readiness probe's current result (true without a readiness probe).
    pub ready: bool,
    /// A liveness or startup probe failed `failureThreshold` times: kill the container.
    pub kill: Option<Kind>,
}

/// Everything a probe needs to reach its container.
#[derive(Clone)]
pub struct Target {
    pub cri: Cri,
    pub container: Container,
    pub container_id: String,
    pub pod_ip: String,
}

/// The probe tasks of one container instance; dropping it stops them.
pub struct ContainerProbers {
    pub container_id: String,
    pub status: Arc<Mutex<ProbeStatus>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for ContainerProbers {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl ContainerProbers {
    /// Starts the container's probes. `started_at_ns` is the container's start time (the
    /// initial delay counts from it, so an adopted container is not re-delayed).
    pub fn spawn(
        target: Target,
        pod: Arc<Pod>,
        started_at_ns: i64,
        recorder: Recorder,
        wake: Arc<Notify>,
    ) -> ContainerProbers {
        let c = &target.container;
        let status = Arc::new(Mutex::new(ProbeStatus {
            started: c.startup_probe.is_none(),
            ready: c.readiness_probe.is_none(),
            kill: None,
        }));
        let (started_tx, started_rx) = watch::channel(c.startup_probe.is_none());
        let started_tx = Arc::new(started_tx);
        let mut tasks = Vec::new();
        for (kind, probe) in [
            (Kind::Startup, c.startup_probe.clone()),
            (Kind::Liveness, c.liveness_probe.clone()),
            (Kind::Readiness, c.readiness_probe.clone()),
        ] {
            let Some(probe) = probe else { continue };
            let w = ProbeWorker {
                kind,
                probe,
                target: target.clone(),
                pod: pod.clone(),
                started_at_ns,
                recorder: recorder.clone(),
                wake: wake.clone(),
                status: status.clone(),
                started_tx: started_tx.clone(),
                started_rx: started_rx.clone(),
            };
            tasks.push(tokio::spawn(w.run()));
        }
        ContainerProbers {
            container_id: target.container_id,
            status,
            tasks,
        }
    }
}

struct ProbeWorker {
    kind: Kind,
    probe: Probe,
    target: Target,
    pod: Arc<Pod>,
    started_at_ns: i64,
    recorder: Recorder,
    wake: Arc<Notify>,
    status: Arc<Mutex<ProbeStatus>>,
    started_tx: Arc<watch::Sender<bool>>,
    started_rx: watch::Receiver<bool>,
}

/// Probe timing with upstream's defaults and minimums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl Timing {
    pub fn of(kind: Kind, p: &Probe) -> Timing {
        let secs = |v: Option<i32>, default: i32, min: i32| {
            Duration::from_secs(v.unwrap_or(default).max(min) as u64)
        };
        Timing {
            initial_delay: secs(p.initial_delay_seconds, 0, 0),
            period: secs(p.period_seconds, 10, 1),
            timeout: secs(p.timeout_seconds, 1, 1),
            // Liveness and startup must have successThreshold 1 (API validation); enforce it.
            success_threshold: match kind {
                Kind::Readiness => p.success_threshold.unwrap_or(1).max(1) as u32,
                _ => 1,
            },
            failure_threshold: p.failure_threshold.unwrap_or(3).max(1) as u32,
        }
    }
}

impl ProbeWorker {
    async fn run(mut self) {
        let t = Timing::of(self.kind, &self.probe);
        // Liveness and readiness wait for the startup probe.
        if self.kind != Kind::Startup && self.started_rx.wait_for(|s| *s).await.is_err() {
            return;
        }
        let now_ns = k8s_openapi::jiff::Timestamp::now().as_nanosecond() as i64;
        let due = self.started_at_ns + t.initial_delay.as_nanos() as i64;
        if due > now_ns {
            tokio::time::sleep(Duration::from_nanos((due - now_ns) as u64)).await;
        }
        let (mut ok_run, mut fail_run) = (0u32, 0u32);
        loop {
            let result = run_probe(&self.probe, &self.target, t.timeout).await;
            match &result {
                Ok(()) => {
                    ok_run += 1;
                    fail_run = 0;
                }
                Err(msg) => {
                    fail_run += 1;
                    ok_run = 0;
                    self.recorder.pod_event(
                        &self.pod,
                        Some(&self.target.container.name),
                        true,
                        "Unhealthy",
                        format!("{} probe failed: {msg}", self.kind.title()),
                    );
                }
            }
            let mut changed = false;
            {
                let mut st = self.status.lock();
                match self.kind {
                    Kind::Readiness => {
                        if ok_run >= t.success_threshold && !st.ready {
                            st.ready = true;
                            changed = true;
                        } else if fail_run >= t.failure_threshold && st.ready {
                            st.ready = false;
                            changed = true;
                        }
                    }
                    Kind::Liveness | Kind::Startup if fail_run >= t.failure_threshold => {
                        st.kill = Some(self.kind);
                        changed = true;
                    }
                    Kind::Startup if ok_run >= 1 => {
                        st.started = true;
                        changed = true;
                    }
                    _ => {}
                }
            }
            if changed {
                self.wake.notify_one();
                if self.kind == Kind::Startup && result.is_ok() {
                    let _ = self.started_tx.send(true);
                }
                if self.kind != Kind::Readiness {
                    return; // started for good, or the container is to be killed
                }
            }
            tokio::time::sleep(t.period).await;
        }
    }
}

/// Runs one probe; `Err` carries upstream's failure text.
pub async fn run_probe(p: &Probe, t: &Target, timeout: Duration) -> Result<(), String> {
    if let Some(e) = &p.exec {
        let cmd = e.command.clone().unwrap_or_default();
        return exec(&t.cri, &t.container_id, cmd, timeout)
            .await
            .map(|_| ());
    }
    if let Some(h) = &p.http_get {
        return http_get(h, &t.pod_ip, &t.container, timeout).await;
    }
    if let Some(s) = &p.tcp_socket {
        return tcp(s, &t.pod_ip, &t.container, timeout).await;
    }
    if let Some(g) = &p.grpc {
        let host = if t.pod_ip.is_empty() {
            "127.0.0.1"
        } else {
            &t.pod_ip
        };
        return grpc(host, g.port, g.service.as_deref().unwrap_or(""), timeout).await;
    }
    Err("probe has no handler".into())
}

/// Runs a lifecycle hook (postStart / preStop) within `timeout`.
pub async fn run_hook(h: &LifecycleHandler, t: &Target, timeout: Duration) -> Result<(), String> {
    if let Some(e) = &h.exec {
        let cmd = e.command.clone().unwrap_or_default();
        return exec(&t.cri, &t.container_id, cmd.clone(), timeout)
            .await
            .map(|_| ())
            .map_err(|m| format!("Exec lifecycle hook ({cmd:?}) failed - error: {m}"));
    }
    if let Some(g) = &h.http_get {
        return http_get(g, &t.pod_ip, &t.container, timeout)
            .await
            .map_err(|m| {
                format!(
                    "HTTP lifecycle hook ({}) failed - error: {m}",
                    g.path.as_deref().unwrap_or("/")
                )
            });
    }
    if let Some(s) = &h.sleep {
        let d = Duration::from_secs(s.seconds.max(0) as u64).min(timeout);
        tokio::time::sleep(d).await;
        return Ok(());
    }
    if let Some(s) = &h.tcp_socket {
        // Deprecated for hooks upstream but still accepted: a connect.
        return tcp(s, &t.pod_ip, &t.container, timeout).await;
    }
    Err("lifecycle hook has no handler".into())
}

async fn exec(cri: &Cri, id: &str, cmd: Vec<String>, timeout: Duration) -> Result<String, String> {
    let secs = timeout.as_secs().max(1) as i64;
    match cri.exec_sync(id, cmd.clone(), secs).await {
        Ok(r) => {
            let mut out = String::from_utf8_lossy(&r.stdout).into_owned();
            out.push_str(&String::from_utf8_lossy(&r.stderr));
            if r.exit_code == 0 {
                Ok(out)
            } else if out.trim().is_empty() {
                Err(format!("command {cmd:?} exited with {}", r.exit_code))
            } else {
                Err(out)
            }
        }
        Err(e) if matches!(&e, crate::cri::CriError::Call { status, .. } if status.code() == tonic::Code::DeadlineExceeded) => {
            Err(format!("command {cmd:?} timed out"))
        }
        Err(e) => Err(e.message()),
    }
}

/// A probe's port: a number, or the name of one of the container's ports.
pub fn resolve_port(port: &IntOrString, c: &Container) -> Result<u16, String> {
    let n = match port {
        IntOrString::Int(i) => *i,
        IntOrString::String(s) => match s.parse::<i32>() {
            Ok(n) => n,
            Err(_) => c
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(s.as_str()))
                .map(|p| p.container_port)
                .ok_or_else(|| format!("couldn't find port: {s} in {}", c.name))?,
        },
    };
    u16::try_from(n)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("invalid port number: {n}"))
}

fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

async fn tcp(
    s: &TCPSocketAction,
    pod_ip: &str,
    c: &Container,
    timeout: Duration,
) -> Result<(), String> {
    let port = resolve_port(&s.port, c)?;
    let host = s
        .host
        .clone()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| pod_ip.to_string());
    let addr = host_port(&host, port);
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&addr)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("dial tcp {addr}: connect: {e}")),
        Err(_) => Err(format!("dial tcp {addr}: i/o timeout")),
    }
}

async fn http_get(
    h: &HTTPGetAction,
    pod_ip: &str,
    c: &Container,
    timeout: Duration,
) -> Result<(), String> {
    let port = resolve_port(&h.port, c)?;
    let host = h
        .host
        .clone()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| pod_ip.to_string());
    let https = h
        .scheme
        .as_deref()
        .is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"));
    let mut path = h.path.clone().unwrap_or_default();
    if !path.starts_with('/') {
        path.insert(0, '/');
    }
    let addr = host_port(&host, port);
    let url = format!("{}://{addr}{path}", if https { "https" } else { "http" });
    match tokio::time::timeout(timeout, http_get_inner(&addr, &host, https, &path, h)).await {
        Ok(Ok(code)) if (200..400).contains(&code) => Ok(()),
        Ok(Ok(code)) => Err(format!("HTTP probe failed with statuscode: {code}")),
        Ok(Err(e)) => Err(format!("Get \"{url}\": {e}")),
        Err(_) => Err(format!(
            "Get \"{url}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
        )),
    }
}

async fn http_get_inner(
    addr: &str,
    host: &str,
    https: bool,
    path: &str,
    h: &HTTPGetAction,
) -> Result<u16, String> {
    use http_body_util::Empty;
    use hyper_util::rt::TokioIo;
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("dial tcp {addr}: connect: {e}"))?;
    let mut req = http::Request::get(path);
    let mut has_host = false;
    for hd in h.http_headers.iter().flatten() {
        if hd.name.eq_ignore_ascii_case("host") {
            has_host = true;
        }
        req = req.header(hd.name.as_str(), hd.value.as_str());
    }
    if !has_host {
        req = req.header(http::header::HOST, addr);
    }
    let req = req
        .header(http::header::USER_AGENT, "kube-probe/1.33")
        .header(http::header::ACCEPT, "*/*")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let code = if https {
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerify))
        .with_no_client_auth();
        let name =
            rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, stream)
            .await
            .map_err(|e| e.to_string())?;
        send(TokioIo::new(tls), req).await?
    } else {
        send(TokioIo::new(stream), req).await?
    };
    Ok(code)
}

async fn send<T>(
    io: T,
    req: http::Request<http_body_util::Empty<bytes::Bytes>>,
) -> Result<u16, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    let conn = tokio::spawn(conn);
    let r = sender.send_request(req).await.map_err(|e| e.to_string());
    conn.abort();
    Ok(r?.status().as_u16())
}

/// Upstream's HTTPS probes skip certificate verification (pods serve self-signed certs).
#[derive(Debug)]
struct NoVerify;

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    pub service: String,
}

/// `grpc.health.v1.HealthCheckResponse` (status: 0 UNKNOWN, 1 SERVING, 2 NOT_SERVING,
/// 3 SERVICE_UNKNOWN).
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    pub status: i32,
}

async fn grpc(host: &str, port: i32, service: &str, timeout: Duration) -> Result<(), String> {
    let addr = host_port(
        host,
        u16::try_from(port).map_err(|_| format!("invalid port {port}"))?,
    );
    let fut = async {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .connect_timeout(timeout)
            .connect()
            .await
            .map_err(|e| {
                format!(
                    "failed to connect service {addr:?} within {}s: {e}",
                    timeout.as_secs()
                )
            })?;
        let mut g = tonic::client::Grpc::new(ch);
        g.ready().await.map_err(|e| e.to_string())?;
        let codec = tonic_prost::ProstCodec::<HealthCheckRequest, HealthCheckResponse>::default();
        let path = http::uri::PathAndQuery::from_static("/grpc.health.v1.Health/Check");
        let r = g
            .unary(
                tonic::Request::new(HealthCheckRequest {
                    service: service.to_string(),
                }),
                path,
                codec,
            )
            .await
            .map_err(|s| {
                format!(
                    "health rpc did not complete within {}s: {}",
                    timeout.as_secs(),
                    s.message()
                )
            })?;
        match r.into_inner().status {
            1 => Ok(()),
            s => Err(format!(
                "service unhealthy (responded with \"{}\")",
                match s {
                    2 => "NOT_SERVING",
                    3 => "SERVICE_UNKNOWN",
                    _ => "UNKNOWN",
                }
            )),
        }
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "timeout: health rpc did not complete within {}s",
            timeout.as_secs()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerPort, HTTPHeader};

    fn container() -> Container {
        Container {
            name: "c".into(),
            ports: Some(vec![ContainerPort {
                name: Some("http".into()),
                container_port: 8080,
                ..Default::default()
            }]),
            ..Default::default()
        }
    }

    #[test]
    fn timing_defaults_and_minimums_follow_upstream() {
        let p = Probe::default();
        let t = Timing::of(Kind::Readiness, &p);
        assert_eq!(t.period, Duration::from_secs(10));
        assert_eq!(t.timeout, Duration::from_secs(1));
        assert_eq!(t.failure_threshold, 3);
        assert_eq!(t.success_threshold, 1);
        let p = Probe {
            period_seconds: Some(0),
            success_threshold: Some(3),
            ..Default::default()
        };
        assert_eq!(Timing::of(Kind::Readiness, &p).success_threshold, 3);
        assert_eq!(Timing::of(Kind::Liveness, &p).success_threshold, 1);
        assert_eq!(
            Timing::of(Kind::Liveness, &p).period,
            Duration::from_secs(1)
        );
    }

    #[test]
    fn named_ports_resolve() {
        let c = container();
        assert_eq!(
            resolve_port(&IntOrString::String("http".into()), &c),
            Ok(8080)
        );
        assert_eq!(resolve_port(&IntOrString::String("81".into()), &c), Ok(81));
        assert_eq!(resolve_port(&IntOrString::Int(9), &c), Ok(9));
        assert!(resolve_port(&IntOrString::String("nope".into()), &c).is_err());
        assert!(resolve_port(&IntOrString::Int(0), &c).is_err());
    }

    /// A one-shot HTTP server on loopback answering `status`, returning the request it saw.
    async fn serve_once(status: u16) -> (u16, JoinHandle<String>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let h = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.unwrap();
            let resp = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
            s.write_all(resp.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        (port, h)
    }

    #[tokio::test]
    async fn http_probe_sends_path_and_headers_and_judges_status() {
        let (port, seen) = serve_once(204).await;
        let h = HTTPGetAction {
            path: Some("/healthz".into()),
            port: IntOrString::Int(port as i32),
            http_headers: Some(vec![HTTPHeader {
                name: "X-Custom".into(),
                value: "yes".into(),
            }]),
            ..Default::default()
        };
        http_get(&h, "127.0.0.1", &container(), Duration::from_secs(2))
            .await
            .unwrap();
        let req = seen.await.unwrap();
        assert!(req.starts_with("GET /healthz HTTP/1.1"), "{req}");
        assert!(req.to_lowercase().contains("x-custom: yes"), "{req}");
        assert!(req.contains("kube-probe/"), "{req}");

        let (port, _) = serve_once(500).await;
        let h = HTTPGetAction {
            port: IntOrString::Int(port as i32),
            ..Default::default()
        };
        let e = http_get(&h, "127.0.0.1", &container(), Duration::from_secs(2))
            .await
            .unwrap_err();
        assert_eq!(e, "HTTP probe failed with statuscode: 500");
    }

    #[tokio::test]
    async fn tcp_probe_connects_or_fails() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let s = TCPSocketAction {
            port: IntOrString::Int(port as i32),
            host: None,
        };
        tcp(&s, "127.0.0.1", &container(), Duration::from_secs(1))
            .await
            .unwrap();
        drop(l);
        let e = tcp(&s, "127.0.0.1", &container(), Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(
            e.contains("connection refused") || e.contains("Connection refused"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn grpc_probe_against_a_health_server() {
        // A minimal grpc.health.v1 server built from the same messages over tonic's server.
        use tonic::codegen::*;
        #[derive(Clone)]
        struct Health(i32);
        impl Service<http::Request<tonic::body::Body>> for Health {
            type Response = http::Response<tonic::body::Body>;
            type Error = std::convert::Infallible;
            type Future = BoxFuture<Self::Response, Self::Error>;
            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
                Poll::Ready(Ok(()))
            }
            fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
                let status = self.0;
                Box::pin(async move {
                    struct Check(i32);
                    impl tonic::server::UnaryService<HealthCheckRequest> for Check {
                        type Response = HealthCheckResponse;
                        type Future = BoxFuture<tonic::Response<Self::Response>, tonic::Status>;
                        fn call(&mut self, _: tonic::Request<HealthCheckRequest>) -> Self::Future {
                            let s = self.0;
                            Box::pin(async move {
                                Ok(tonic::Response::new(HealthCheckResponse { status: s }))
                            })
                        }
                    }
                    let codec =
                        tonic_prost::ProstCodec::<HealthCheckResponse, HealthCheckRequest>::default(
                        );
                    let mut g = tonic::server::Grpc::new(codec);
                    Ok(g.unary(Check(status), req).await)
                })
            }
        }
        impl tonic::server::NamedService for Health {
            const NAME: &'static str = "grpc.health.v1.Health";
        }
        for (status, ok) in [(1, true), (2, false)] {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = l.local_addr().unwrap().port();
            let srv = tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(Health(status))
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
            );
            let r = grpc("127.0.0.1", port as i32, "", Duration::from_secs(3)).await;
            assert_eq!(r.is_ok(), ok, "{r:?}");
            if !ok {
                assert!(r.unwrap_err().contains("NOT_SERVING"));
            }
            srv.abort();
        }
    }
}
