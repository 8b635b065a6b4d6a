//! Observing a daemon the way systemd and a Prometheus scraper do: its sd_notify datagrams and
//! a plain HTTP GET on its metrics listener.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

/// Reads sd_notify datagrams from `sock` until one has the line `want` (e.g. `READY=1`);
/// returns everything seen. Panics with what was seen if `timeout` passes first.
pub fn wait_notify(sock: &UnixDatagram, want: &str, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            let done = msg.lines().any(|l| l == want);
            seen.push(msg);
            if done {
                return seen;
            }
        }
    }
    panic!("no {want} within {timeout:?}; saw {seen:?}");
}

/// `GET path` over plain HTTP/1.1 on `addr` (a metrics listener); the whole response, headers
/// included. Bounded to 5 s.
pub async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .expect("HTTP answer in time")
        .unwrap();
    out
}
