//! `Transport::Http2` against a real TLS server offering h2 and http/1.1 by ALPN (as
//! kube-apiserver and kelson-apiserver do): the client negotiates h2 and multiplexes
//! concurrent requests over a single connection; `Transport::Http1` (the stock kube-rs client)
//! speaks HTTP/1.1 with a connection per concurrent request. The server answers every request
//! with the HTTP version it saw and counts the TLS connections it accepted.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use kelson_kube::{client_from_kubeconfig_with, Transport};
use kelson_pki::{Ca, CertRequest, Usage};
use tokio_rustls::rustls;

/// Serves on an ephemeral loopback port; returns the port and the accepted-connection count.
async fn serve(dir: &Path, ca: &Ca) -> (u16, Arc<AtomicUsize>) {
    let mut req = CertRequest::new("apiserver", Usage::Server);
    req.ip_addresses = vec!["127.0.0.1".parse().unwrap()];
    let (cert, key) = ca.issue(&req).unwrap().write_pair(dir, "server").unwrap();
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        kelson_pki::load_certs(&cert).unwrap(),
        kelson_pki::load_private_key(&key).unwrap(),
    )
    .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let conns = Arc::new(AtomicUsize::new(0));
    let counter = conns.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        // Slow enough that concurrent requests overlap on the wire.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        let body = format!("{:?}", req.version());
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from(body),
                        )))
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (port, conns)
}

fn kubeconfig(dir: &Path, ca: &Ca, port: u16) -> std::path::PathBuf {
    ca.pair().write_pair(dir, "ca").unwrap();
    ca.issue(&CertRequest::new("u", Usage::Client))
        .unwrap()
        .write_pair(dir, "u")
        .unwrap();
    let kc = dir.join("k.kubeconfig");
    std::fs::write(
        &kc,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority: ca.crt\nusers:\n- name: u\n  user:\n    client-certificate: u.crt\n    client-key: u.key\ncontexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n"
        ),
    )
    .unwrap();
    kc
}

/// Sends `n` concurrent GETs; returns the versions the server saw.
async fn versions(client: &kube::Client, n: usize) -> Vec<String> {
    let reqs = (0..n).map(|i| {
        let client = client.clone();
        async move {
            let req = http::Request::get(format!("/api/v1/namespaces/default/pods/p{i}"))
                .body(Vec::new())
                .unwrap();
            client.request_text(req).await
        }
    });
    let out = tokio::time::timeout(Duration::from_secs(20), futures_join_all(reqs))
        .await
        .expect("requests did not finish within 20 s");
    out.into_iter()
        .map(|r| r.expect("request failed"))
        .collect()
}

async fn futures_join_all<F>(fs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = fs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("request task panicked"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_multiplexes_over_one_connection_and_http1_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::generate("test-ca").unwrap();
    let (port, conns) = serve(dir.path(), &ca).await;
    let kc = kubeconfig(dir.path(), &ca, port);

    let h2 = client_from_kubeconfig_with(&kc, Transport::Http2)
        .await
        .unwrap();
    // One request first: until a connection has negotiated h2 the client cannot know it will
    // be shared, so a cold burst may handshake a few extra connections (dropped at once).
    assert_eq!(versions(&h2, 1).await, ["HTTP/2.0"]);
    let seen = versions(&h2, 20).await;
    assert!(seen.iter().all(|v| v == "HTTP/2.0"), "{seen:?}");
    assert_eq!(
        conns.load(Ordering::SeqCst),
        1,
        "21 HTTP/2 requests, 20 of them concurrent, must share one connection"
    );

    let h1 = client_from_kubeconfig_with(&kc, Transport::Http1)
        .await
        .unwrap();
    let before = conns.load(Ordering::SeqCst);
    let seen = versions(&h1, 8).await;
    assert!(seen.iter().all(|v| v == "HTTP/1.1"), "{seen:?}");
    assert!(
        conns.load(Ordering::SeqCst) - before > 1,
        "the HTTP/1.1 client opens a connection per concurrent request"
    );
}
