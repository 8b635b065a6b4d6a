//! WebSocket streaming for `/exec`, `/attach` and `/portForward`, translated to the SPDY
//! streams of the runtime's stream server (containerd 1.6 speaks SPDY only to clients that
//! need stdin close).
//!
//! Design (upstream's `wsstream` channel protocols and KEP-4006):
//! - exec/attach: `v5.channel.k8s.io` (kubectl 1.30+, which asks for nothing else) and
//!   `v4.channel.k8s.io` (the official Python client, among others). Every binary message is
//!   `[channel, bytes...]`: stdin 0, stdout 1, stderr 2, error 3, resize 4; v5 adds 255, whose
//!   payload names a channel the client has closed (stdin: the command sees EOF). The kubelet
//!   opens one SPDY connection to the runtime with `v4.channel.k8s.io` and one SPDY stream per
//!   channel (the ones the request asked for, as the CRI `Exec`/`Attach` call did), then moves
//!   bytes: client channel 0/4 → the stdin/resize stream, SPDY stdout/stderr/error data →
//!   channels 1/2/3, v5 close → `FLAG_FIN` on stdin. The error stream already carries the v4
//!   `metav1.Status` JSON (exit code in `details.causes`), which v4 and v5 both expect on
//!   channel 3. When the runtime closes the connection (the command ended and its status was
//!   written), the WebSocket is closed normally; a client that goes away closes the runtime's
//!   connection.
//! - port-forward: kubectl 1.31+ tunnels SPDY through the WebSocket
//!   (`SPDY/3.1+portforward.k8s.io`): binary messages carry the SPDY byte stream, so the
//!   kubelet opens a `portforward.k8s.io` SPDY upgrade to the runtime and copies bytes both
//!   ways without looking at them. Other clients (the Python client's `portforward()`) speak
//!   upstream's `v4.channel.k8s.io` port-forward: the ports come from the query, port `i`
//!   has data channel `2i` and error channel `2i+1`, each opened by the server with the port
//!   number (2 bytes, little endian). The kubelet opens a SPDY error + data stream pair per
//!   port (`port`, `requestid` headers, as client-go does) and relays; once every data stream
//!   has been closed by the runtime the WebSocket is closed, as upstream's handler returns.
//! - The two directions run as separate tasks, so a client that stops reading cannot stop
//!   stdin from flowing (and the reverse) — no buffer beyond one frame/message per direction.
//! - `tokio-tungstenite` does the WebSocket framing (it is already in the graph through kube's
//!   `ws` feature); the HTTP handshake is answered by hyper, as the request arrives there.

use std::sync::Arc;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::spdy::{self, Frame, HeaderWriter};
use super::stream::Kind;
use super::Body;

pub const V5: &str = "v5.channel.k8s.io";
pub const V4: &str = "v4.channel.k8s.io";
pub const PORT_FORWARD_TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;
/// How long a finished `v4.channel.k8s.io` port-forward stays open before the close.
const PORT_FORWARD_LINGER: std::time::Duration = std::time::Duration::from_millis(500);

/// Whether the request asks for a WebSocket.
pub fn is_websocket(h: &HeaderMap) -> bool {
    h.get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// The subprotocol we serve for `kind`: the client's first offer we support.
pub fn negotiate(h: &HeaderMap, kind: Kind) -> Option<&'static str> {
    let supported: &[&'static str] = match kind {
        Kind::Exec | Kind::Attach => &[V5, V4],
        Kind::PortForward => &[PORT_FORWARD_TUNNEL, V4],
    };
    h.get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find_map(|offer| supported.iter().find(|s| **s == offer).copied())
}

/// What the request offered, for the refusal message.
pub fn offered(h: &HeaderMap) -> String {
    h.get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `Sec-WebSocket-Accept` for a version-13 handshake, or `None` if the request is not one.
pub fn accept_key(h: &HeaderMap) -> Option<String> {
    let version_ok = h
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v.as_bytes() == b"13");
    let key = h.get(header::SEC_WEBSOCKET_KEY)?;
    version_ok.then(|| tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()))
}

/// The `101 Switching Protocols` answer.
pub fn switching(accept: &str, protocol: &str) -> Response<Body> {
    let mut r = Response::new(super::full(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Ok(v) = HeaderValue::from_str(protocol) {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, v);
    }
    r
}

/// Which channels an exec/attach session has (as asked for in the CRI call).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Channels {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl Channels {
    /// `(SPDY stream id, channel, streamType)` in the order client-go opens them; client
    /// stream ids are odd and increasing.
    fn streams(&self) -> Vec<(u32, u8, &'static str)> {
        let mut wanted = vec![(ERROR, "error")];
        if self.stdin {
            wanted.push((STDIN, "stdin"));
        }
        if self.stdout {
            wanted.push((STDOUT, "stdout"));
        }
        if self.stderr && !self.tty {
            wanted.push((STDERR, "stderr"));
        }
        if self.tty {
            wanted.push((RESIZE, "resize"));
        }
        wanted
            .into_iter()
            .enumerate()
            .map(|(i, (ch, ty))| (2 * i as u32 + 1, ch, ty))
            .collect()
    }

    /// Upstream announces the session with an empty message on the lowest writable channel.
    fn first_channel(&self) -> u8 {
        if self.stdout {
            STDOUT
        } else if self.stderr && !self.tty {
            STDERR
        } else {
            ERROR
        }
    }
}

type Ws = WebSocketStream<TokioIo<Upgraded>>;

/// Runs one exec/attach session until either side ends it.
pub async fn run_exec(client: Upgraded, runtime: Upgraded, protocol: &'static str, ch: Channels) {
    let ws: Ws = WebSocketStream::from_raw_socket(TokioIo::new(client), Role::Server, None).await;
    let (mut ws_tx, mut ws_rx) = ws.split();
    let (mut sp_rx, sp_tx) = tokio::io::split(TokioIo::new(runtime));
    let sp_tx = Arc::new(tokio::sync::Mutex::new(sp_tx));
    let streams = ch.streams();
    let id_of = |c: u8| streams.iter().find(|s| s.1 == c).map(|s| s.0);
    let (stdin_id, resize_id) = (id_of(STDIN), id_of(RESIZE));

    let mut hw = HeaderWriter::default();
    let mut open = Vec::new();
    for (id, _, ty) in &streams {
        open.extend(hw.syn_stream(*id, &[("streamtype", *ty)]));
    }
    if let Err(e) = sp_tx.lock().await.write_all(&open).await {
        tracing::debug!(error = %e, "opening the runtime's streams");
        return;
    }
    if ws_tx
        .send(Message::Binary(Bytes::from(vec![ch.first_channel()])))
        .await
        .is_err()
    {
        return;
    }

    let v5 = protocol == V5;
    let up_tx = sp_tx.clone();
    let mut up = tokio::spawn(async move {
        let mut stdin_open = stdin_id.is_some();
        while let Some(msg) = ws_rx.next().await {
            let data: Bytes = match msg {
                Ok(Message::Binary(b)) => b,
                Ok(Message::Text(t)) => t.into(),
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => continue,
            };
            let Some((&channel, payload)) = data.split_first() else {
                continue;
            };
            let frames = match (channel, stdin_id, resize_id) {
                (CLOSE, Some(id), _) if v5 && payload.first() == Some(&STDIN) && stdin_open => {
                    stdin_open = false;
                    spdy::data_frame(id, true, &[])
                }
                (STDIN, Some(id), _) if stdin_open && !payload.is_empty() => payload
                    .chunks(spdy::MAX_DATA)
                    .flat_map(|c| spdy::data_frame(id, false, c))
                    .collect(),
                (RESIZE, _, Some(id)) if !payload.is_empty() => {
                    spdy::data_frame(id, false, payload)
                }
                _ => continue,
            };
            if up_tx.lock().await.write_all(&frames).await.is_err() {
                break;
            }
        }
    });
    let mut down = tokio::spawn(async move {
        loop {
            let f = spdy::read_frame(&mut sp_rx).await;
            tracing::trace!(frame = ?f, "from the runtime");
            match f {
                Ok(Some(Frame::Data { stream, data, .. })) => {
                    let Some(channel) = streams.iter().find(|s| s.0 == stream).map(|s| s.1) else {
                        continue;
                    };
                    if data.is_empty() || !matches!(channel, STDOUT | STDERR | ERROR) {
                        continue;
                    }
                    let mut m = Vec::with_capacity(data.len() + 1);
                    m.push(channel);
                    m.extend_from_slice(&data);
                    if ws_tx.send(Message::Binary(m.into())).await.is_err() {
                        return;
                    }
                }
                Ok(Some(
                    f @ Frame::Control {
                        kind: spdy::PING, ..
                    },
                )) => {
                    if sp_tx.lock().await.write_all(&f.encode()).await.is_err() {
                        break;
                    }
                }
                Ok(Some(Frame::Control {
                    kind: spdy::RST_STREAM,
                    body,
                    ..
                })) => {
                    tracing::debug!(stream = ?spdy::control_stream(&body), "runtime reset a stream");
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "runtime stream connection ended");
                    break;
                }
            }
        }
        close(&mut ws_tx).await;
    });
    tokio::select! {
        _ = &mut up => down.abort(),
        _ = &mut down => up.abort(),
    }
}

async fn close<S>(ws_tx: &mut S)
where
    S: futures::Sink<Message> + Unpin,
{
    let _ = ws_tx
        .send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        })))
        .await;
}

/// Runs a `v4.channel.k8s.io` port-forward of `ports` until either side ends it.
pub async fn run_port_forward(client: Upgraded, runtime: Upgraded, ports: Vec<u16>) {
    let ws: Ws = WebSocketStream::from_raw_socket(TokioIo::new(client), Role::Server, None).await;
    let (mut ws_tx, mut ws_rx) = ws.split();
    let (mut sp_rx, sp_tx) = tokio::io::split(TokioIo::new(runtime));
    let sp_tx = Arc::new(tokio::sync::Mutex::new(sp_tx));
    // Per port i: error stream 4i+1, data stream 4i+3 (client-go opens the error one first).
    let error_id = |i: usize| 4 * i as u32 + 1;
    let data_id = |i: usize| 4 * i as u32 + 3;
    let mut hw = HeaderWriter::default();
    let mut open = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let (p, r) = (port.to_string(), i.to_string());
        for (id, ty) in [(error_id(i), "error"), (data_id(i), "data")] {
            open.extend(hw.syn_stream(id, &[("streamtype", ty), ("port", &p), ("requestid", &r)]));
        }
    }
    if let Err(e) = sp_tx.lock().await.write_all(&open).await {
        tracing::debug!(error = %e, "opening the runtime's port-forward streams");
        return;
    }
    for (i, port) in ports.iter().enumerate() {
        for channel in [2 * i as u8, 2 * i as u8 + 1] {
            let [lo, hi] = port.to_le_bytes();
            let m = Message::Binary(Bytes::from(vec![channel, lo, hi]));
            if ws_tx.send(m).await.is_err() {
                return;
            }
        }
    }
    let n = ports.len();
    let up_tx = sp_tx.clone();
    let mut up = tokio::spawn(async move {
        while let Some(msg) = ws_rx.next().await {
            let data: Bytes = match msg {
                Ok(Message::Binary(b)) => b,
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => continue,
            };
            let Some((&channel, payload)) = data.split_first() else {
                continue;
            };
            let i = channel as usize / 2;
            if channel % 2 != 0 || i >= n || payload.is_empty() {
                continue;
            }
            let frames: Vec<u8> = payload
                .chunks(spdy::MAX_DATA)
                .flat_map(|c| spdy::data_frame(data_id(i), false, c))
                .collect();
            if up_tx.lock().await.write_all(&frames).await.is_err() {
                break;
            }
        }
    });
    let mut down = tokio::spawn(async move {
        let mut open_data = n;
        while open_data > 0 {
            match spdy::read_frame(&mut sp_rx).await {
                Ok(Some(Frame::Data { stream, fin, data })) => {
                    let i = ((stream as usize).saturating_sub(1)) / 4;
                    if i >= n {
                        continue;
                    }
                    let channel = if stream == data_id(i) {
                        2 * i as u8
                    } else {
                        2 * i as u8 + 1
                    };
                    if !data.is_empty() {
                        let mut m = Vec::with_capacity(data.len() + 1);
                        m.push(channel);
                        m.extend_from_slice(&data);
                        if ws_tx.send(Message::Binary(m.into())).await.is_err() {
                            return;
                        }
                    }
                    if fin && stream == data_id(i) {
                        open_data -= 1;
                    }
                }
                Ok(Some(
                    f @ Frame::Control {
                        kind: spdy::PING, ..
                    },
                )) => {
                    if sp_tx.lock().await.write_all(&f.encode()).await.is_err() {
                        break;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        if open_data == 0 {
            // The Python client hands data it has read to the application only in its next
            // loop pass, and drops it if it sees the connection closed first: linger a moment
            // (ending at once if the client closes) so the last bytes get through.
            tokio::time::sleep(PORT_FORWARD_LINGER).await;
        }
        close(&mut ws_tx).await;
    });
    tokio::select! {
        _ = &mut up => down.abort(),
        _ = &mut down => up.abort(),
    }
}

/// Runs a SPDY-over-WebSocket tunnel (kubectl port-forward) until either side ends it.
pub async fn run_tunnel(client: Upgraded, runtime: Upgraded) {
    let ws: Ws = WebSocketStream::from_raw_socket(TokioIo::new(client), Role::Server, None).await;
    let (mut ws_tx, mut ws_rx) = ws.split();
    let (mut sp_rx, mut sp_tx) = tokio::io::split(TokioIo::new(runtime));
    let mut up = tokio::spawn(async move {
        while let Some(msg) = ws_rx.next().await {
            let data: Bytes = match msg {
                Ok(Message::Binary(b)) => b,
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => continue,
            };
            if sp_tx.write_all(&data).await.is_err() {
                break;
            }
        }
        let _ = sp_tx.shutdown().await;
    });
    let mut down = tokio::spawn(async move {
        let mut buf = vec![0u8; spdy::MAX_DATA];
        loop {
            match sp_rx.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let m = Message::Binary(Bytes::copy_from_slice(&buf[..n]));
                    if ws_tx.send(m).await.is_err() {
                        return;
                    }
                }
            }
        }
        close(&mut ws_tx).await;
    });
    tokio::select! {
        _ = &mut up => down.abort(),
        _ = &mut down => up.abort(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn negotiates_the_first_supported_offer() {
        let h = headers(&[("sec-websocket-protocol", "v5.channel.k8s.io")]);
        assert_eq!(negotiate(&h, Kind::Exec), Some(V5));
        let h = headers(&[(
            "sec-websocket-protocol",
            "base64.channel.k8s.io, v4.channel.k8s.io",
        )]);
        assert_eq!(negotiate(&h, Kind::Attach), Some(V4));
        assert_eq!(negotiate(&h, Kind::PortForward), Some(V4));
        let h = headers(&[("sec-websocket-protocol", "v5.channel.k8s.io")]);
        assert_eq!(negotiate(&h, Kind::PortForward), None);
        let h = headers(&[("sec-websocket-protocol", PORT_FORWARD_TUNNEL)]);
        assert_eq!(negotiate(&h, Kind::PortForward), Some(PORT_FORWARD_TUNNEL));
        assert_eq!(negotiate(&HeaderMap::new(), Kind::Exec), None);
    }

    #[test]
    fn accept_key_follows_rfc6455() {
        // The example handshake of RFC 6455 section 1.3.
        let h = headers(&[
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-version", "13"),
        ]);
        assert_eq!(
            accept_key(&h).as_deref(),
            Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        );
        let old = headers(&[
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-version", "8"),
        ]);
        assert_eq!(accept_key(&old), None);
    }

    #[test]
    fn streams_follow_client_go_order_and_tty_rules() {
        let all = Channels {
            stdin: true,
            stdout: true,
            stderr: true,
            tty: false,
        };
        assert_eq!(
            all.streams(),
            vec![
                (1, ERROR, "error"),
                (3, STDIN, "stdin"),
                (5, STDOUT, "stdout"),
                (7, STDERR, "stderr")
            ]
        );
        let tty = Channels { tty: true, ..all };
        assert_eq!(
            tty.streams(),
            vec![
                (1, ERROR, "error"),
                (3, STDIN, "stdin"),
                (5, STDOUT, "stdout"),
                (7, RESIZE, "resize")
            ]
        );
        let err_only = Channels {
            stdin: false,
            stdout: false,
            stderr: true,
            tty: false,
        };
        assert_eq!(err_only.first_channel(), STDERR);
    }
}
