//! A minimal unary gRPC client written directly over the `h2` crate: kv-bench's default load
//! generator for the put and range rows.
//!
//! Why not `etcd-client` (tonic): the load generator runs on the same two cores as the server
//! under test, so whatever it spends per request is taken from the server, and its own latency
//! adds to every measured request. tonic's `Channel` puts a tower `Buffer` in front of the
//! connection, i.e. one extra task hop per request, and its layers cost several tokio wake-ups
//! per request; measured, the stock client spent about as much CPU per put as kelson-kv's
//! server did, and at 64 clients the row was decided by the generator's latency, not by the
//! server. etcd's own `benchmark` tool is a thin Go gRPC client; this is the equivalent here.
//!
//! What it does per request: wait for the shared [`h2::client::SendRequest`] to be ready (that
//! is where HTTP/2 flow control and the server's `MAX_CONCURRENT_STREAMS` apply), send the
//! request headers and one DATA frame (1-byte compression flag 0, 4-byte big-endian length, the
//! prost-encoded message) with END_STREAM, then read the response: HTTP status 200, DATA frames
//! (returning flow-control credit as they are consumed), then trailers. `grpc-status` is taken
//! from the trailers, or from the response headers for a trailers-only response; a missing
//! status is an error. `grpc-message` is percent-decoded (the gRPC spec's encoding), invalid
//! UTF-8 replaced. The only tasks involved are the caller's and the one connection driver task
//! per connection that h2 needs.
//!
//! Scope, deliberately: plaintext loopback benchmarks only. No TLS, no retries, no reconnects,
//! no compression, no deadlines (`grpc-timeout`) — the caller bounds each request with
//! `tokio::time::timeout`. A [`Conn`] is cheap to clone; all clones multiplex streams over one
//! HTTP/2 connection, which closes when the last clone is dropped.

use std::net::SocketAddr;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use h2::client::SendRequest;
use http::header::{HeaderMap, HeaderValue, CONTENT_TYPE, TE};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, StatusCode, Uri};
use tokio::net::TcpStream;

/// etcd's KV service paths.
pub const PUT: &str = "/etcdserverpb.KV/Put";
pub const RANGE: &str = "/etcdserverpb.KV/Range";

/// Receive windows like hyper's HTTP/2 client defaults (which tonic uses), so responses are
/// never throttled by flow control more than with the stock client.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONN_WINDOW: u32 = 5 * 1024 * 1024;

/// Length-prefixed message header: compression flag + big-endian length.
const PREFIX_LEN: usize = 5;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP/2: {0}")]
    H2(#[from] h2::Error),
    #[error("building the request: {0}")]
    Request(#[from] http::Error),
    #[error("HTTP status {0}, expected 200")]
    HttpStatus(StatusCode),
    /// The server answered with a non-zero `grpc-status`.
    #[error("grpc-status {code}: {message}")]
    Status { code: i32, message: String },
    #[error("response has no grpc-status")]
    MissingStatus,
    #[error("malformed response: {0}")]
    Malformed(String),
    #[error("decoding the response message: {0}")]
    Decode(#[from] prost::DecodeError),
}

/// One HTTP/2 connection to a gRPC server; clones share it.
#[derive(Clone, Debug)]
pub struct Conn {
    send: SendRequest<Bytes>,
    authority: Authority,
}

impl Conn {
    /// Connects over plaintext TCP (Nagle off: every request is a small write that must leave
    /// at once), performs the HTTP/2 handshake and spawns the connection driver task, which
    /// ends when every clone of the returned `Conn` has been dropped.
    pub async fn connect(addr: SocketAddr) -> Result<Conn, GrpcError> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| GrpcError::Connect { addr, source })?;
        tcp.set_nodelay(true)
            .map_err(|source| GrpcError::Connect { addr, source })?;
        let (send, connection) = h2::client::Builder::new()
            .enable_push(false)
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONN_WINDOW)
            .handshake::<_, Bytes>(tcp)
            .await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("gRPC connection to {addr} ended: {e}");
            }
        });
        let authority = Authority::try_from(addr.to_string())
            .map_err(|e| GrpcError::Malformed(format!("authority {addr}: {e}")))?;
        Ok(Conn { send, authority })
    }

    /// One unary call: `req` to `path` (e.g. [`PUT`]), the decoded response or why not.
    pub async fn unary<Req, Resp>(&self, path: &'static str, req: &Req) -> Result<Resp, GrpcError>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let body = frame(req)?;
        let uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(self.authority.clone())
            .path_and_query(PathAndQuery::from_static(path))
            .build()?;
        let request = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/grpc"))
            .header(TE, HeaderValue::from_static("trailers"))
            .body(())?;

        // `ready` waits for a stream slot (the server's MAX_CONCURRENT_STREAMS) on a clone,
        // so concurrent callers never contend on a lock of their own.
        let mut send = self.send.clone().ready().await?;
        let (response, mut stream) = send.send_request(request, false)?;
        // Small messages fit the default 64 KiB send window; h2 buffers anything beyond it
        // and sends it as the server grants credit.
        stream.send_data(body, true)?;

        let (parts, mut recv) = response.await?.into_parts();
        if parts.status != StatusCode::OK {
            return Err(GrpcError::HttpStatus(parts.status));
        }
        if parts.headers.contains_key("grpc-status") {
            // Trailers-only response: no message can follow.
            check_status(&parts.headers)?;
            return Err(GrpcError::Malformed(
                "grpc-status 0 without a response message".into(),
            ));
        }

        // Nearly every response is one DATA frame: keep it as is, copy only when split.
        let mut first: Option<Bytes> = None;
        let mut joined = BytesMut::new();
        while let Some(chunk) = recv.data().await {
            let chunk = chunk?;
            // Return the credit at once; the bytes are already ours.
            recv.flow_control().release_capacity(chunk.len())?;
            match first.take() {
                None if joined.is_empty() => first = Some(chunk),
                Some(f) => {
                    joined.extend_from_slice(&f);
                    joined.extend_from_slice(&chunk);
                }
                None => joined.extend_from_slice(&chunk),
            }
        }
        let trailers = recv.trailers().await?.ok_or(GrpcError::MissingStatus)?;
        check_status(&trailers)?;
        let data = first.unwrap_or_else(|| joined.freeze());
        decode(data)
    }
}

/// The request body: one uncompressed length-prefixed message.
fn frame<M: prost::Message>(msg: &M) -> Result<Bytes, GrpcError> {
    let len = msg.encoded_len();
    let len32 = u32::try_from(len)
        .map_err(|_| GrpcError::Malformed(format!("request of {len} bytes is too large")))?;
    let mut buf = BytesMut::with_capacity(PREFIX_LEN + len);
    buf.put_u8(0);
    buf.put_u32(len32);
    msg.encode(&mut buf)
        .map_err(|e| GrpcError::Malformed(format!("encoding the request: {e}")))?;
    Ok(buf.freeze())
}

/// Exactly one uncompressed length-prefixed message.
fn decode<M: prost::Message + Default>(mut data: Bytes) -> Result<M, GrpcError> {
    if data.len() < PREFIX_LEN {
        return Err(GrpcError::Malformed(format!(
            "{} bytes of response body, a message needs at least {PREFIX_LEN}",
            data.len()
        )));
    }
    let compressed = data.get_u8();
    if compressed != 0 {
        // We never offer grpc-accept-encoding, so a compressed message is a server bug.
        return Err(GrpcError::Malformed(format!(
            "compressed message (flag {compressed}) without negotiation"
        )));
    }
    let len = data.get_u32() as usize;
    if data.len() != len {
        return Err(GrpcError::Malformed(format!(
            "message length prefix {len}, but {} bytes follow",
            data.len()
        )));
    }
    Ok(M::decode(data)?)
}

/// `Ok` for `grpc-status: 0`, the status as an error otherwise.
fn check_status(headers: &HeaderMap) -> Result<(), GrpcError> {
    let raw = headers.get("grpc-status").ok_or(GrpcError::MissingStatus)?;
    let code: i32 = raw
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| GrpcError::Malformed(format!("grpc-status {raw:?}")))?;
    if code == 0 {
        return Ok(());
    }
    let message = headers
        .get("grpc-message")
        .map(|m| percent_decode(m.as_bytes()))
        .unwrap_or_default();
    Err(GrpcError::Status { code, message })
}

/// `grpc-message` is percent-encoded UTF-8 (gRPC over HTTP/2 spec); a malformed escape is kept
/// literally, as the spec asks of clients (`percent_encoding` does that), and invalid UTF-8 is
/// replaced.
fn percent_decode(raw: &[u8]) -> String {
    percent_encoding::percent_decode(raw)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kelson_etcdpb::{PutRequest, RangeResponse};

    #[test]
    fn frames_round_trip_and_bad_bodies_are_errors() {
        let req = PutRequest {
            key: b"k".to_vec(),
            value: vec![b'v'; 300],
            ..Default::default()
        };
        let body = frame(&req).unwrap();
        assert_eq!(body[0], 0);
        assert_eq!(
            u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize,
            body.len() - 5
        );
        let back: PutRequest = decode(body.clone()).unwrap();
        assert_eq!(back, req);

        assert!(matches!(
            decode::<RangeResponse>(Bytes::from_static(&[0, 0, 0])),
            Err(GrpcError::Malformed(_))
        ));
        let mut compressed = body.to_vec();
        compressed[0] = 1;
        assert!(decode::<PutRequest>(Bytes::from(compressed)).is_err());
        let truncated = body.slice(..body.len() - 1);
        assert!(decode::<PutRequest>(truncated).is_err());
        // An empty message is valid protobuf: the all-defaults response.
        let empty: RangeResponse = decode(Bytes::from_static(&[0, 0, 0, 0, 0])).unwrap();
        assert_eq!(empty, RangeResponse::default());
    }

    #[test]
    fn status_and_message_are_read_from_headers() {
        let mut h = HeaderMap::new();
        assert!(matches!(check_status(&h), Err(GrpcError::MissingStatus)));
        h.insert("grpc-status", HeaderValue::from_static("0"));
        assert!(check_status(&h).is_ok());
        h.insert("grpc-status", HeaderValue::from_static("5"));
        h.insert(
            "grpc-message",
            HeaderValue::from_static("etcdserver: requested lease not found%20%E2%9C%93"),
        );
        match check_status(&h) {
            Err(GrpcError::Status { code, message }) => {
                assert_eq!(code, 5);
                assert_eq!(message, "etcdserver: requested lease not found \u{2713}");
            }
            other => panic!("{other:?}"),
        }
        h.insert("grpc-status", HeaderValue::from_static("x"));
        assert!(matches!(check_status(&h), Err(GrpcError::Malformed(_))));
        assert_eq!(percent_decode(b"100%"), "100%");
        assert_eq!(percent_decode(b"%zz%4"), "%zz%4");
        assert_eq!(percent_decode(b"a%41"), "aA");
    }
}
