//! Metrics: `GET /metrics` serves registered metrics with the right content type.

use std::time::Duration;

use kelson_runtime::metrics;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn http_get(addr: std::net::SocketAddr, path: &str, accept: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    out
}

#[tokio::test]
async fn serves_registered_counter() {
    let registry = metrics::new_registry();
    let requests: Counter = Counter::default();
    registry
        .lock()
        .register("kelson_test_requests", "Requests handled", requests.clone());
    requests.inc_by(3);

    let (addr, task) = metrics::serve("127.0.0.1:0".parse().unwrap(), registry)
        .await
        .unwrap();
    assert_ne!(addr.port(), 0);

    let resp = http_get(addr, "/metrics", "*/*").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let lower = resp.to_ascii_lowercase();
    assert!(
        lower.contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
        "{resp}"
    );
    assert!(resp.contains("kelson_test_requests_total 3"), "{resp}");
    assert!(resp.contains("process_resident_memory_bytes"), "{resp}");

    let resp = http_get(
        addr,
        "/metrics",
        "application/openmetrics-text; version=1.0.0",
    )
    .await;
    assert!(
        resp.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{resp}"
    );

    let resp = http_get(addr, "/other", "*/*").await;
    assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");
    task.abort();
}

#[tokio::test]
async fn bind_failure_is_an_error() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let taken = l.local_addr().unwrap();
    let err = metrics::serve(taken, metrics::registry())
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&taken.to_string()), "{err}");
}
