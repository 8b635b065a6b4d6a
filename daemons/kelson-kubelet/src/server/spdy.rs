//! The client side of SPDY/3.1 as far as Kubernetes streaming needs it: the kubelet speaks it
//! to the runtime's stream server when it translates a WebSocket client ([`super::websocket`]).
//!
//! Design:
//! - No maintained Rust SPDY crate exists (the protocol was retired for HTTP/2), and the part
//!   Kubernetes uses is small: the client opens streams with `SYN_STREAM` (a `streamtype`
//!   header says stdin/stdout/stderr/error/resize), moves bytes in `DATA` frames and ends a
//!   direction with `FLAG_FIN`. The server's `SYN_REPLY` headers carry nothing we need, so
//!   they are skipped without being decompressed, and the only control frame answered is
//!   `PING` (echoed, as SPDY requires).
//! - Header blocks must be a zlib stream shared by all frames of the connection. Ours are
//!   written as *stored* (uncompressed) deflate blocks, one per frame, without the SPDY preset
//!   dictionary (a zlib header without FDICT): every inflater reads that, Go's
//!   (`moby/spdystream`, containerd's stream server) included, and it needs no zlib binding.
//!   Each block is byte aligned, and each frame's header block ends with an empty stored
//!   block, exactly what a zlib sync flush leaves (Go's inflater releases data only there).
//! - Flow control (`WINDOW_UPDATE`) is not sent: `spdystream` does not enforce windows.

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// SPDY version on every control frame.
const VERSION: u16 = 3;
pub const SYN_STREAM: u16 = 1;
pub const SYN_REPLY: u16 = 2;
pub const RST_STREAM: u16 = 3;
pub const PING: u16 = 6;
pub const GOAWAY: u16 = 7;
pub const FLAG_FIN: u8 = 0x01;
/// Largest DATA payload we send in one frame (the wire allows 2^24-1).
pub const MAX_DATA: usize = 32 * 1024;

/// One frame read from the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Data { stream: u32, fin: bool, data: Bytes },
    Control { kind: u16, flags: u8, body: Bytes },
}

impl Frame {
    /// The frame as it goes on the wire (used to echo PINGs).
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Frame::Data { stream, fin, data } => data_frame(*stream, *fin, data),
            Frame::Control { kind, flags, body } => control_frame(*kind, *flags, body),
        }
    }
}

fn put_len(out: &mut Vec<u8>, flags: u8, len: usize) {
    out.push(flags);
    let len = len as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
}

fn control_frame(kind: u16, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + body.len());
    out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    put_len(&mut out, flags, body.len());
    out.extend_from_slice(body);
    out
}

/// A DATA frame; `data` must not exceed 2^24-1 bytes (callers chunk by [`MAX_DATA`]).
pub fn data_frame(stream: u32, fin: bool, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + data.len());
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    put_len(&mut out, if fin { FLAG_FIN } else { 0 }, data.len());
    out.extend_from_slice(data);
    out
}

/// Writes the connection's outgoing header blocks (see the module doc for the encoding).
#[derive(Debug, Default)]
pub struct HeaderWriter {
    started: bool,
}

impl HeaderWriter {
    /// The compressed header block of the next frame.
    pub fn block(&mut self, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut raw = BytesMut::new();
        raw.put_u32(headers.len() as u32);
        for (k, v) in headers {
            // SPDY/3 requires lowercase names; Go's reader rejects anything else.
            let k = k.to_ascii_lowercase();
            raw.put_u32(k.len() as u32);
            raw.put_slice(k.as_bytes());
            raw.put_u32(v.len() as u32);
            raw.put_slice(v.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 16);
        if !self.started {
            // zlib: deflate with a 32 KiB window, no preset dictionary; (0x78 << 8 | 0x01) % 31 == 0.
            out.extend_from_slice(&[0x78, 0x01]);
            self.started = true;
        }
        for chunk in raw.chunks(u16::MAX as usize) {
            let n = chunk.len() as u16;
            // BFINAL 0, BTYPE 00 (stored), padded to the byte; then LEN and its complement.
            out.push(0x00);
            out.extend_from_slice(&n.to_le_bytes());
            out.extend_from_slice(&(!n).to_le_bytes());
            out.extend_from_slice(chunk);
        }
        // The empty stored block a sync flush ends with: Go's inflater hands out what it has
        // decoded only when it sees one (or the end of the stream), so without it the peer
        // would wait for more header bytes forever.
        out.extend_from_slice(&[0x00, 0x00, 0x00, 0xff, 0xff]);
        out
    }

    /// A `SYN_STREAM` opening client stream `id` with `headers`.
    pub fn syn_stream(&mut self, id: u32, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
        body.extend_from_slice(&0u32.to_be_bytes()); // associated-to stream
        body.extend_from_slice(&[0, 0]); // priority, slot
        body.extend_from_slice(&self.block(headers));
        control_frame(SYN_STREAM, 0, &body)
    }
}

/// Reads the next frame; `None` at a clean end of the connection between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<Frame>> {
    let mut head = [0u8; 8];
    let n = r.read(&mut head[..1]).await?;
    if n == 0 {
        return Ok(None);
    }
    r.read_exact(&mut head[1..]).await?;
    let flags = head[4];
    let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    let body = Bytes::from(body);
    if head[0] & 0x80 != 0 {
        Ok(Some(Frame::Control {
            kind: u16::from_be_bytes([head[2], head[3]]),
            flags,
            body,
        }))
    } else {
        Ok(Some(Frame::Data {
            stream: u32::from_be_bytes([head[0], head[1], head[2], head[3]]) & 0x7fff_ffff,
            fin: flags & FLAG_FIN != 0,
            data: body,
        }))
    }
}

/// The stream a `SYN_REPLY`/`RST_STREAM` control frame is about.
pub fn control_stream(body: &[u8]) -> Option<u32> {
    body.get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inflates a stored-block-only zlib stream (what [`HeaderWriter`] emits).
    fn inflate_stored(mut z: &[u8], first: bool) -> Vec<u8> {
        if first {
            assert_eq!(((z[0] as u16) << 8 | z[1] as u16) % 31, 0);
            assert_eq!(z[1] & 0x20, 0, "no preset dictionary");
            z = &z[2..];
        }
        let mut out = Vec::new();
        while !z.is_empty() {
            assert_eq!(z[0], 0, "stored, not final");
            let n = u16::from_le_bytes([z[1], z[2]]);
            assert_eq!(!n, u16::from_le_bytes([z[3], z[4]]));
            out.extend_from_slice(&z[5..5 + n as usize]);
            z = &z[5 + n as usize..];
        }
        out
    }

    #[test]
    fn syn_stream_carries_lowercase_headers_in_a_zlib_stream() {
        let mut w = HeaderWriter::default();
        let f = w.syn_stream(3, &[("streamType", "stdout")]);
        assert_eq!(&f[..4], &[0x80, 0x03, 0x00, 0x01]);
        let len = u32::from_be_bytes([0, f[5], f[6], f[7]]) as usize;
        assert_eq!(len, f.len() - 8);
        assert_eq!(control_stream(&f[8..]), Some(3));
        let raw = inflate_stored(&f[18..], true);
        let mut want = vec![0, 0, 0, 1, 0, 0, 0, 10];
        want.extend_from_slice(b"streamtype");
        want.extend_from_slice(&[0, 0, 0, 6]);
        want.extend_from_slice(b"stdout");
        assert_eq!(raw, want);
        // Later blocks continue the same zlib stream: no second zlib header.
        let g = w.syn_stream(5, &[("streamtype", "error")]);
        assert_eq!(inflate_stored(&g[18..], false)[..4], [0, 0, 0, 1]);
    }

    #[tokio::test]
    async fn frames_round_trip() {
        let mut wire = data_frame(5, true, b"hello");
        wire.extend(control_frame(PING, 0, &[0, 0, 0, 2]));
        let mut r = &wire[..];
        assert_eq!(
            read_frame(&mut r).await.unwrap(),
            Some(Frame::Data {
                stream: 5,
                fin: true,
                data: Bytes::from_static(b"hello")
            })
        );
        let ping = read_frame(&mut r).await.unwrap().unwrap();
        assert!(matches!(ping, Frame::Control { kind: PING, .. }));
        assert_eq!(ping.encode(), control_frame(PING, 0, &[0, 0, 0, 2]));
        assert_eq!(read_frame(&mut r).await.unwrap(), None);
    }
}
