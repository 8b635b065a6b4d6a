//! A connection shim that repairs the HTTP/2 `:authority` pseudo-header before h2 sees it.
//!
//! Why: some etcd clients send an `:authority` that is not an RFC 3986 authority —
//! etcdctl 3.4 dials single endpoints with `:authority: http://127.0.0.1:2379`, Go clients
//! 3.5.0–3.5.9 send `#initially=[...]` (etcd issue 13192). Go's gRPC server ignores it; the Rust
//! `h2` crate resets such a stream with `PROTOCOL_ERROR` ("malformed authority") and has no
//! option to relax that (h2 issue 525). gRPC routes by `:path` and never needs the authority, so
//! we fix the header on the wire, below tonic/hyper/h2.
//!
//! How: [`AuthorityFix`] wraps an accepted connection (plain TCP or TLS). Server→client bytes
//! pass through untouched. Client→server bytes are parsed as HTTP/2: the 24-byte preface, then
//! frames. Every frame other than HEADERS/CONTINUATION is forwarded as it came, its payload
//! copied without inspection (large DATA frames are even read straight into hyper's buffer).
//! A header block (HEADERS plus CONTINUATION frames up to END_HEADERS) is reassembled, padding
//! and priority fields removed, and decoded with an HPACK decoder that mirrors the *client's*
//! encoder (dynamic table limit 4096, the SETTINGS_HEADER_TABLE_SIZE h2 advertises by
//! default). Then:
//!
//! - while every `:authority` seen on the connection was valid, the block is forwarded
//!   byte-identical (re-framed), so h2's decoder tracks the client's dynamic table as usual and
//!   well-behaved clients (etcd-client, the API server) see no change at all;
//! - from the first block that needs a repair on, every block is re-encoded with literal
//!   "without indexing" representations only. Such blocks never touch h2's dynamic table, so
//!   h2's table stays frozen at the state it had when we switched and nothing ever refers to it
//!   again — both sides stay consistent whatever the client's encoder does next (indexing,
//!   eviction, table size updates, which we consume).
//!
//! Repair = strip a leading `scheme://`; if the rest is still not an authority (parsed with
//! [`http::uri::Authority`], as h2 does), drop the header. Re-encoded blocks are emitted as a
//! HEADERS frame plus CONTINUATION frames of at most 16384 bytes (h2's default
//! SETTINGS_MAX_FRAME_SIZE) with the original stream id and END_STREAM flag.
//!
//! Anything we cannot parse (a wrong preface, a CONTINUATION out of place, an HPACK error, a
//! header block over [`MAX_HEADER_BLOCK`] bytes, a decoded header list over
//! [`MAX_HEADER_LIST`]) ends the connection with an `InvalidData` I/O error, which is what h2
//! would do with a broken peer anyway; nothing here panics on input.

use std::borrow::Cow;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use loona_hpack::Decoder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Largest header block (all fragments of one HEADERS+CONTINUATION sequence) we accept.
pub const MAX_HEADER_BLOCK: usize = 1 << 20;
/// Largest decoded header list (RFC 9113 size: name + value + 32 per field) we accept; bounds
/// what a small block of indexed references to a big dynamic-table entry can expand to.
pub const MAX_HEADER_LIST: usize = 1 << 20;
/// Frame size we re-emit header blocks in: h2's default SETTINGS_MAX_FRAME_SIZE, which the
/// server never raises.
pub const MAX_FRAME_SIZE: usize = 16_384;
/// The dynamic table size the client's encoder starts with and may not exceed (h2's default
/// SETTINGS_HEADER_TABLE_SIZE; tonic does not change it).
pub const HEADER_TABLE_SIZE: usize = 4096;

const FRAME_HEADER_LEN: usize = 9;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// Read buffer for frame headers and small frames; grows only for big header frames.
const INPUT_CHUNK: usize = 16 * 1024;
/// Largest header block whose outcome [`Rewriter`] remembers (gRPC request blocks are ~100 B).
const CACHE_BLOCK_MAX: usize = 1024;
/// Outcomes remembered per connection (about one per distinct method called).
const CACHE_ENTRIES: usize = 32;

/// Why a client connection was refused.
#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    #[error("not an HTTP/2 connection preface")]
    BadPreface,
    #[error("header block of {size} bytes exceeds the {MAX_HEADER_BLOCK}-byte limit")]
    HeaderBlockTooLarge { size: usize },
    #[error("decoded header list exceeds the {MAX_HEADER_LIST}-byte limit")]
    HeaderListTooLarge,
    #[error("frame type {frame_type:#x} on stream {stream_id} inside a header block of stream {expected}")]
    ExpectedContinuation {
        frame_type: u8,
        stream_id: u32,
        expected: u32,
    },
    #[error("CONTINUATION frame outside a header block")]
    UnexpectedContinuation,
    #[error("HEADERS frame on stream 0")]
    HeadersOnStreamZero,
    #[error("HEADERS frame padding or priority longer than the frame")]
    BadPadding,
    #[error("HPACK: {0}")]
    Hpack(#[from] loona_hpack::decoder::DecoderError),
}

impl From<RewriteError> for io::Error {
    fn from(e: RewriteError) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// What to do with an `:authority` value.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthorityFixup<'a> {
    /// Valid as sent.
    Keep,
    /// Valid after removing a `scheme://` prefix: send this instead.
    Replace(&'a [u8]),
    /// Not repairable: leave the header out.
    Drop,
}

/// Decides how to repair an `:authority` value so that h2 accepts it.
pub fn fix_authority(value: &[u8]) -> AuthorityFixup<'_> {
    if is_valid_authority(value) {
        return AuthorityFixup::Keep;
    }
    if let Some(pos) = find_scheme_separator(value) {
        let rest = &value[pos + 3..];
        if is_valid_authority(rest) {
            return AuthorityFixup::Replace(rest);
        }
    }
    AuthorityFixup::Drop
}

/// The same check h2 applies (`Authority::from_maybe_shared`), which also refuses "".
fn is_valid_authority(v: &[u8]) -> bool {
    http::uri::Authority::try_from(v).is_ok()
}

/// Position of `://` after a leading RFC 3986 scheme (`ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )`).
fn find_scheme_separator(v: &[u8]) -> Option<usize> {
    let pos = v.windows(3).position(|w| w == b"://")?;
    let scheme = &v[..pos];
    let first_ok = scheme.first().is_some_and(u8::is_ascii_alphabetic);
    let rest_ok = scheme
        .iter()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'));
    (first_ok && rest_ok).then_some(pos)
}

/// HPACK literal header field without indexing, new name (RFC 7541 §6.2.2), no Huffman.
fn encode_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    encode_string(out, name);
    encode_string(out, value);
}

fn encode_string(out: &mut Vec<u8>, s: &[u8]) {
    // Writing into a Vec cannot fail.
    let _ = loona_hpack::encoder::encode_integer_into(s.len(), 7, 0, out);
    out.extend_from_slice(s);
}

fn push_frame_header(out: &mut Vec<u8>, len: usize, ty: u8, flags: u8, stream_id: u32) {
    let len = len as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(ty);
    out.push(flags);
    out.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
}

/// Emits `block` as HEADERS (+ CONTINUATION) frames no larger than [`MAX_FRAME_SIZE`].
fn emit_header_block(out: &mut Vec<u8>, stream_id: u32, end_stream: bool, block: &[u8]) {
    let n_frames = block.len().div_ceil(MAX_FRAME_SIZE).max(1);
    out.reserve(block.len() + n_frames * FRAME_HEADER_LEN);
    let mut chunks = block.chunks(MAX_FRAME_SIZE);
    for i in 0..n_frames {
        let chunk = chunks.next().unwrap_or(&[]);
        let last = i + 1 == n_frames;
        let (ty, mut flags) = if i == 0 {
            let es = if end_stream { FLAG_END_STREAM } else { 0 };
            (TYPE_HEADERS, es)
        } else {
            (TYPE_CONTINUATION, 0)
        };
        if last {
            flags |= FLAG_END_HEADERS;
        }
        push_frame_header(out, chunk.len(), ty, flags, stream_id);
        out.extend_from_slice(chunk);
    }
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// Expecting the connection preface.
    Preface,
    /// Expecting a 9-byte frame header.
    FrameHeader,
    /// Forwarding this many payload bytes unchanged.
    PassThrough(usize),
    /// Collecting the whole payload of a HEADERS/CONTINUATION frame.
    HeaderPayload { len: usize, ty: u8, flags: u8 },
}

/// The open header block: its stream, END_STREAM, and the fragments so far.
struct PendingBlock {
    stream_id: u32,
    end_stream: bool,
}

/// The sans-I/O core: consumes client bytes, appends what h2 should see to an output buffer.
pub struct Rewriter {
    state: State,
    decoder: Decoder<'static>,
    pending: Option<PendingBlock>,
    block: Vec<u8>,
    reencoded: Vec<u8>,
    /// Set at the first block that needed a repair; from then on every block is re-encoded.
    rewriting: bool,
    /// Outcomes of recent table-neutral blocks (see [`table_neutral`]): the block's bytes and
    /// `None` (forward it unchanged) or `Some(re-encoding)`. Valid only while the dynamic table
    /// is unchanged, so any block that may change it clears this.
    cache: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl Default for Rewriter {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Rewriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rewriter")
            .field("state", &self.state)
            .field("rewriting", &self.rewriting)
            .finish()
    }
}

impl Rewriter {
    pub fn new() -> Self {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
        Self {
            state: State::Preface,
            decoder,
            pending: None,
            block: Vec::new(),
            reencoded: Vec::new(),
            rewriting: false,
            cache: Vec::new(),
        }
    }

    /// Whether header blocks are being re-encoded (some `:authority` needed a repair).
    pub fn is_rewriting(&self) -> bool {
        self.rewriting
    }

    /// Payload bytes of the current frame that may be forwarded without looking at them.
    pub fn passthrough_remaining(&self) -> usize {
        match self.state {
            State::PassThrough(n) => n,
            _ => 0,
        }
    }

    /// Records that `n` (≤ [`Self::passthrough_remaining`]) payload bytes were forwarded.
    pub fn skip_passthrough(&mut self, n: usize) {
        if let State::PassThrough(rem) = self.state {
            let rem = rem.saturating_sub(n);
            self.state = if rem == 0 {
                State::FrameHeader
            } else {
                State::PassThrough(rem)
            };
        }
    }

    /// How many contiguous input bytes the next step needs before it can make progress.
    pub fn needed(&self) -> usize {
        match self.state {
            State::Preface => PREFACE.len(),
            State::FrameHeader => FRAME_HEADER_LEN,
            State::PassThrough(_) => 1,
            State::HeaderPayload { len, .. } => len.max(1),
        }
    }

    /// Consumes as much of `input` as forms complete units and appends the bytes to forward to
    /// `out`. Returns how many input bytes were consumed (the rest must be offered again, with
    /// more data appended).
    pub fn process(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, RewriteError> {
        let mut pos = 0;
        loop {
            let avail = &input[pos..];
            match self.state {
                State::Preface => {
                    if avail.len() < PREFACE.len() {
                        // Reject early garbage without waiting for 24 bytes.
                        if !PREFACE.starts_with(avail) {
                            return Err(RewriteError::BadPreface);
                        }
                        return Ok(pos);
                    }
                    if &avail[..PREFACE.len()] != PREFACE {
                        return Err(RewriteError::BadPreface);
                    }
                    out.extend_from_slice(PREFACE);
                    pos += PREFACE.len();
                    self.state = State::FrameHeader;
                }
                State::FrameHeader => {
                    if avail.len() < FRAME_HEADER_LEN {
                        return Ok(pos);
                    }
                    let hdr = &avail[..FRAME_HEADER_LEN];
                    let len = u32::from_be_bytes([0, hdr[0], hdr[1], hdr[2]]) as usize;
                    let ty = hdr[3];
                    let flags = hdr[4];
                    let stream_id =
                        u32::from_be_bytes([hdr[5], hdr[6], hdr[7], hdr[8]]) & 0x7fff_ffff;
                    pos += FRAME_HEADER_LEN;
                    if let Some(p) = &self.pending {
                        if ty != TYPE_CONTINUATION || stream_id != p.stream_id {
                            return Err(RewriteError::ExpectedContinuation {
                                frame_type: ty,
                                stream_id,
                                expected: p.stream_id,
                            });
                        }
                    }
                    match ty {
                        TYPE_HEADERS | TYPE_CONTINUATION => {
                            if ty == TYPE_CONTINUATION && self.pending.is_none() {
                                return Err(RewriteError::UnexpectedContinuation);
                            }
                            if ty == TYPE_HEADERS {
                                if stream_id == 0 {
                                    return Err(RewriteError::HeadersOnStreamZero);
                                }
                                self.pending = Some(PendingBlock {
                                    stream_id,
                                    end_stream: flags & FLAG_END_STREAM != 0,
                                });
                                self.block.clear();
                            }
                            // Refuse before buffering: the payload bounds the fragment.
                            let size = self.block.len() + len;
                            if size > MAX_HEADER_BLOCK + 256 {
                                return Err(RewriteError::HeaderBlockTooLarge { size });
                            }
                            self.state = State::HeaderPayload { len, ty, flags };
                        }
                        _ => {
                            out.extend_from_slice(hdr);
                            self.state = if len == 0 {
                                State::FrameHeader
                            } else {
                                State::PassThrough(len)
                            };
                        }
                    }
                }
                State::PassThrough(rem) => {
                    if avail.is_empty() {
                        return Ok(pos);
                    }
                    let n = rem.min(avail.len());
                    out.extend_from_slice(&avail[..n]);
                    pos += n;
                    self.skip_passthrough(n);
                }
                State::HeaderPayload { len, ty, flags } => {
                    if avail.len() < len {
                        return Ok(pos);
                    }
                    let payload = &avail[..len];
                    pos += len;
                    self.state = State::FrameHeader;
                    self.header_fragment(payload, ty, flags, out)?;
                }
            }
        }
    }

    fn header_fragment(
        &mut self,
        payload: &[u8],
        ty: u8,
        flags: u8,
        out: &mut Vec<u8>,
    ) -> Result<(), RewriteError> {
        let fragment = if ty == TYPE_HEADERS {
            let mut start = 0;
            let mut pad = 0;
            if flags & FLAG_PADDED != 0 {
                pad = *payload.first().ok_or(RewriteError::BadPadding)? as usize;
                start = 1;
            }
            if flags & FLAG_PRIORITY != 0 {
                start += 5;
            }
            if start + pad > payload.len() {
                return Err(RewriteError::BadPadding);
            }
            &payload[start..payload.len() - pad]
        } else {
            payload
        };
        if self.block.len() + fragment.len() > MAX_HEADER_BLOCK {
            return Err(RewriteError::HeaderBlockTooLarge {
                size: self.block.len() + fragment.len(),
            });
        }
        if flags & FLAG_END_HEADERS == 0 {
            self.block.extend_from_slice(fragment);
            return Ok(());
        }
        let Some(p) = self.pending.take() else {
            return Err(RewriteError::UnexpectedContinuation);
        };
        // The common case, one HEADERS frame: decode straight from the input.
        let block: &[u8] = if self.block.is_empty() {
            fragment
        } else {
            self.block.extend_from_slice(fragment);
            &self.block
        };
        // Fast path: a client sends the same header block for every call of a method once its
        // encoder has indexed the headers (gRPC unary calls: all fields indexed). Such a block
        // neither reads nor writes anything but the dynamic table, so with the table unchanged
        // since it was last seen it decodes to the same list and gets the same outcome. This
        // skips the HPACK decoder (whose Huffman decoding builds a table per string: a quarter
        // of the server's CPU under small-write load) for nearly every request.
        let neutral = block.len() <= CACHE_BLOCK_MAX && table_neutral(block);
        let cached = if neutral {
            self.cache.iter().find(|(b, _)| b.as_slice() == block)
        } else {
            None
        };
        if let Some((_, outcome)) = cached {
            match outcome {
                Some(re) => emit_header_block(out, p.stream_id, p.end_stream, re),
                None => emit_header_block(out, p.stream_id, p.end_stream, block),
            }
        } else {
            let rewrite = rewrite_block(
                &mut self.decoder,
                block,
                &mut self.reencoded,
                self.rewriting,
            )?;
            if !neutral || (rewrite && !self.rewriting) {
                // The table may have changed, or "forward unchanged" outcomes no longer hold.
                self.cache.clear();
            }
            if rewrite {
                self.rewriting = true;
                emit_header_block(out, p.stream_id, p.end_stream, &self.reencoded);
            } else {
                emit_header_block(out, p.stream_id, p.end_stream, block);
            }
            if neutral {
                if self.cache.len() >= CACHE_ENTRIES {
                    self.cache.remove(0);
                }
                let outcome = rewrite.then(|| self.reencoded.clone());
                self.cache.push((block.to_vec(), outcome));
            }
        }
        self.block.clear();
        if self.block.capacity() > 4 * MAX_FRAME_SIZE {
            self.block = Vec::new();
        }
        self.reencoded.clear();
        if self.reencoded.capacity() > 4 * MAX_FRAME_SIZE {
            self.reencoded = Vec::new();
        }
        Ok(())
    }
}

/// Reads an HPACK integer with an `n`-bit prefix (RFC 7541 §5.1): (value, bytes used).
/// `None` when truncated or implausibly long (the real decoder then reports the error).
fn hpack_int(buf: &[u8], n: u8) -> Option<(usize, usize)> {
    let mask = (1usize << n) - 1;
    let mut v = (*buf.first()? as usize) & mask;
    if v < mask {
        return Some((v, 1));
    }
    // At most 4 continuation bytes (28 bits): far beyond any length a block can hold.
    for (i, &b) in buf.iter().enumerate().skip(1).take(4) {
        v += ((b & 0x7f) as usize) << (7 * (i - 1));
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// Skips an HPACK string literal (H bit + 7-bit-prefix length + octets) without decoding it.
fn skip_string(buf: &[u8]) -> Option<usize> {
    let (len, used) = hpack_int(buf, 7)?;
    let end = used.checked_add(len)?;
    (end <= buf.len()).then_some(end)
}

/// Whether decoding `block` can neither change the HPACK dynamic table nor depend on anything
/// but it: only indexed fields and literals without indexing / never indexed, no table size
/// updates. Walks field boundaries only (no Huffman decoding). Malformed input is "not
/// neutral", so it goes to the real decoder, which reports it.
fn table_neutral(block: &[u8]) -> bool {
    let mut pos = 0;
    while pos < block.len() {
        let rest = &block[pos..];
        let b = rest[0];
        let used = if b & 0x80 != 0 {
            // Indexed field (index 0 is invalid: leave that to the decoder).
            match hpack_int(rest, 7) {
                Some((idx, used)) if idx > 0 => Some(used),
                _ => None,
            }
        } else if b & 0xc0 == 0x40 || b & 0xe0 == 0x20 {
            // Literal with incremental indexing, or a dynamic table size update.
            None
        } else {
            // Literal without indexing (0000xxxx) or never indexed (0001xxxx).
            hpack_int(rest, 4).and_then(|(name_idx, mut used)| {
                if name_idx == 0 {
                    used += skip_string(&rest[used..])?;
                }
                Some(used + skip_string(&rest[used..])?)
            })
        };
        match used {
            Some(n) => pos += n,
            None => return false,
        }
    }
    true
}

/// Decodes `block` (updating the mirror of the client's table) and, when `force` is set or an
/// `:authority` needs a repair, writes a literal-only re-encoding to `reencoded`. Returns
/// whether the re-encoding is to be sent instead of the original block.
fn rewrite_block(
    decoder: &mut Decoder<'static>,
    block: &[u8],
    reencoded: &mut Vec<u8>,
    force: bool,
) -> Result<bool, RewriteError> {
    let mut list_size = 0usize;
    let mut needs_fix = false;
    // Encode optimistically while decoding (one pass); a block that turns out to be fine and
    // `!force` just discards the encoding.
    decoder.decode_with_cb(block, |name: Cow<[u8]>, value: Cow<[u8]>| {
        list_size = list_size.saturating_add(name.len() + value.len() + 32);
        if list_size > MAX_HEADER_LIST {
            return;
        }
        if name.as_ref() == b":authority" {
            match fix_authority(&value) {
                AuthorityFixup::Keep => encode_literal(reencoded, &name, &value),
                AuthorityFixup::Replace(v) => {
                    needs_fix = true;
                    encode_literal(reencoded, &name, v);
                }
                AuthorityFixup::Drop => needs_fix = true,
            }
        } else {
            encode_literal(reencoded, &name, &value);
        }
    })?;
    if list_size > MAX_HEADER_LIST {
        return Err(RewriteError::HeaderListTooLarge);
    }
    if needs_fix {
        tracing::debug!("repairing an HTTP/2 :authority the h2 server would refuse");
    }
    Ok(force || needs_fix)
}

/// A client connection whose HTTP/2 header blocks get their `:authority` repaired (see the
/// module docs). Delegates writes and connection info to the inner stream.
pub struct AuthorityFix<S> {
    inner: S,
    rewriter: Rewriter,
    /// Raw client bytes not yet processed: `input[lo..hi]`.
    input: Vec<u8>,
    lo: usize,
    hi: usize,
    /// Processed bytes not yet handed to the reader: `output[out_pos..]`.
    output: Vec<u8>,
    out_pos: usize,
    failed: bool,
}

impl<S> std::fmt::Debug for AuthorityFix<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorityFix")
            .field("rewriter", &self.rewriter)
            .finish_non_exhaustive()
    }
}

impl<S> AuthorityFix<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            rewriter: Rewriter::new(),
            input: Vec::new(),
            lo: 0,
            hi: 0,
            output: Vec::new(),
            out_pos: 0,
            failed: false,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    pub fn into_inner(self) -> S {
        self.inner
    }

    /// Whether this connection's header blocks are being re-encoded.
    pub fn is_rewriting(&self) -> bool {
        self.rewriter.is_rewriting()
    }

    /// Makes room for at least `need` contiguous unprocessed bytes plus some read space.
    fn make_room(&mut self, need: usize) {
        if self.lo == self.hi {
            self.lo = 0;
            self.hi = 0;
            // Give back the memory of an exceptional big header frame.
            if self.input.len() > 4 * INPUT_CHUNK {
                self.input = Vec::new();
            }
        }
        let want = need.max(INPUT_CHUNK);
        if self.input.len() - self.lo < want || self.hi == self.input.len() {
            self.input.copy_within(self.lo..self.hi, 0);
            self.hi -= self.lo;
            self.lo = 0;
        }
        if self.input.len() < want {
            self.input.resize(want, 0);
        }
    }
}

impl<S: Connected> Connected for AuthorityFix<S> {
    type ConnectInfo = S::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "connection refused by the HTTP/2 authority filter",
            )));
        }
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.out_pos < this.output.len() {
                let n = buf.remaining().min(this.output.len() - this.out_pos);
                buf.put_slice(&this.output[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.output.len() {
                    this.output.clear();
                    this.out_pos = 0;
                    // Give back the memory of an exceptional big header block.
                    if this.output.capacity() > 4 * INPUT_CHUNK {
                        this.output = Vec::new();
                    }
                }
                return Poll::Ready(Ok(()));
            }
            let pt = this.rewriter.passthrough_remaining();
            if pt > 0 {
                if this.lo < this.hi {
                    let n = pt.min(this.hi - this.lo).min(buf.remaining());
                    buf.put_slice(&this.input[this.lo..this.lo + n]);
                    this.lo += n;
                    this.rewriter.skip_passthrough(n);
                    return Poll::Ready(Ok(()));
                }
                if buf.remaining() <= pt {
                    // The bulk of a big DATA frame: straight into the caller's buffer.
                    let before = buf.filled().len();
                    ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
                    let n = buf.filled().len() - before;
                    this.rewriter.skip_passthrough(n);
                    return Poll::Ready(Ok(()));
                }
            } else if this.lo < this.hi {
                let consumed = match this
                    .rewriter
                    .process(&this.input[this.lo..this.hi], &mut this.output)
                {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::debug!(error = %e, "closing a client connection");
                        this.failed = true;
                        return Poll::Ready(Err(e.into()));
                    }
                };
                this.lo += consumed;
                if this.lo == this.hi {
                    this.lo = 0;
                    this.hi = 0;
                }
                if consumed > 0 || this.out_pos < this.output.len() {
                    continue;
                }
            }
            // Need more client bytes.
            let need = (this.hi - this.lo).max(this.rewriter.needed());
            this.make_room(need);
            let mut rb = ReadBuf::new(&mut this.input[this.hi..]);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            let n = rb.filled().len();
            if n == 0 {
                // EOF. A partial frame left over is h2's to notice (it sees EOF mid-connection).
                return Poll::Ready(Ok(()));
            }
            this.hi += n;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use loona_hpack::Encoder;
    use tokio::io::AsyncReadExt;

    use super::*;

    /// Yields the given chunks one per read (split further if the caller's buffer is smaller).
    struct Chunked(VecDeque<Vec<u8>>);

    impl AsyncRead for Chunked {
        fn poll_read(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            // An empty chunk would read as EOF: skip it.
            while this.0.front().is_some_and(Vec::is_empty) {
                this.0.pop_front();
            }
            if let Some(mut c) = this.0.pop_front() {
                let n = c.len().min(buf.remaining());
                buf.put_slice(&c[..n]);
                if n < c.len() {
                    this.0.push_front(c.split_off(n));
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    /// Runs `chunks` through the shim, reading with buffers of `read_size` bytes.
    async fn run(chunks: Vec<Vec<u8>>, read_size: usize) -> io::Result<Vec<u8>> {
        let mut fix = AuthorityFix::new(Chunked(chunks.into()));
        let mut out = Vec::new();
        let mut buf = vec![0u8; read_size];
        // Bounded: every read makes progress or ends the stream.
        for _ in 0..1_000_000 {
            let n = fix.read(&mut buf).await?;
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&buf[..n]);
        }
        panic!("shim did not reach EOF");
    }

    fn frame(ty: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        push_frame_header(&mut v, payload.len(), ty, flags, stream_id);
        v.extend_from_slice(payload);
        v
    }

    #[derive(Debug, PartialEq)]
    struct Frame {
        ty: u8,
        flags: u8,
        stream_id: u32,
        payload: Vec<u8>,
    }

    fn parse_frames(bytes: &[u8]) -> Vec<Frame> {
        assert_eq!(&bytes[..24], PREFACE, "preface forwarded first");
        let mut rest = &bytes[24..];
        let mut frames = Vec::new();
        while !rest.is_empty() {
            let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
            frames.push(Frame {
                ty: rest[3],
                flags: rest[4],
                stream_id: u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]),
                payload: rest[9..9 + len].to_vec(),
            });
            rest = &rest[9 + len..];
        }
        frames
    }

    type Headers = Vec<(Vec<u8>, Vec<u8>)>;

    /// Decodes the header blocks of `frames` the way h2 would: one decoder for the connection.
    fn server_decode(frames: &[Frame]) -> Vec<(u32, bool, Headers)> {
        let mut dec = Decoder::new();
        let mut out = Vec::new();
        let mut block = Vec::new();
        let mut cur = None;
        for f in frames {
            match f.ty {
                TYPE_HEADERS => {
                    assert_eq!(f.flags & (FLAG_PADDED | FLAG_PRIORITY), 0);
                    assert!(cur.is_none());
                    cur = Some((f.stream_id, f.flags & FLAG_END_STREAM != 0));
                    block = f.payload.clone();
                }
                TYPE_CONTINUATION => {
                    assert_eq!(cur.unwrap().0, f.stream_id);
                    block.extend_from_slice(&f.payload);
                }
                _ => continue,
            }
            assert!(f.payload.len() <= MAX_FRAME_SIZE);
            if f.flags & FLAG_END_HEADERS != 0 {
                let (sid, es) = cur.take().unwrap();
                out.push((sid, es, dec.decode(&block).unwrap()));
            }
        }
        out
    }

    fn request(authority: &str, path: &str) -> Headers {
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("user-agent", "grpc-go/1.26.0"),
        ]
        .iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
    }

    fn encode(enc: &mut Encoder<'_>, h: &Headers) -> Vec<u8> {
        enc.encode(h.iter().map(|(n, v)| (&n[..], &v[..])))
    }

    fn authority(h: &Headers) -> Option<&[u8]> {
        h.iter()
            .find(|(n, _)| n == b":authority")
            .map(|(_, v)| &v[..])
    }

    fn without_authority(h: &Headers) -> Headers {
        h.iter()
            .filter(|(n, _)| n != b":authority")
            .cloned()
            .collect()
    }

    fn settings() -> Vec<u8> {
        // SETTINGS_ENABLE_PUSH = 0, SETTINGS_INITIAL_WINDOW_SIZE = 1 MiB.
        frame(0x4, 0, 0, &[0, 2, 0, 0, 0, 0, 0, 4, 0, 0x10, 0, 0])
    }

    #[test]
    fn authority_fixups() {
        assert_eq!(fix_authority(b"127.0.0.1:2379"), AuthorityFixup::Keep);
        assert_eq!(fix_authority(b"[::1]:2379"), AuthorityFixup::Keep);
        assert_eq!(fix_authority(b"etcd.example:2379"), AuthorityFixup::Keep);
        assert_eq!(
            fix_authority(b"http://127.0.0.1:2379"),
            AuthorityFixup::Replace(b"127.0.0.1:2379")
        );
        assert_eq!(
            fix_authority(b"https://etcd-0.local:2379"),
            AuthorityFixup::Replace(b"etcd-0.local:2379")
        );
        assert_eq!(
            fix_authority(b"#initially=[http://127.0.0.1:2379]"),
            AuthorityFixup::Drop
        );
        assert_eq!(
            fix_authority(b"http://127.0.0.1:2379/"),
            AuthorityFixup::Drop
        );
        assert_eq!(
            fix_authority(b"unix:///run/etcd.sock"),
            AuthorityFixup::Drop
        );
        assert_eq!(fix_authority(b"://x"), AuthorityFixup::Drop);
        assert_eq!(fix_authority(b""), AuthorityFixup::Drop);
    }

    /// Every field as "literal with incremental indexing, new name", as aggressive encoders do.
    fn encode_indexing(h: &Headers) -> Vec<u8> {
        let mut out = Vec::new();
        for (n, v) in h {
            out.push(0x40);
            encode_string(&mut out, n);
            encode_string(&mut out, v);
        }
        out
    }

    #[tokio::test]
    async fn http_authority_is_repaired_and_tables_stay_consistent() {
        let mut input = PREFACE.to_vec();
        input.extend(settings());
        // The same request twice on one connection: the second block is nothing but references
        // into the client's dynamic table (newest entry = 62), which h2 never gets to see.
        let r = request("http://127.0.0.1:2379", "/etcdserverpb.Maintenance/Status");
        let b1 = encode_indexing(&r);
        let b2: Vec<u8> = (0..r.len())
            .map(|i| 0x80 | (62 + r.len() - 1 - i) as u8)
            .collect();
        // A third one from an ordinary encoder state: a size update, then literals again.
        let mut b3 = vec![0x3f, 0xe1, 0x1f]; // table size update to 4096
        b3.extend(encode_indexing(&r));
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &b1));
        input.extend(frame(0x0, FLAG_END_STREAM, 1, b"\0\0\0\0\0"));
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS | FLAG_END_STREAM,
            3,
            &b2,
        ));
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS | FLAG_END_STREAM,
            5,
            &b3,
        ));
        let out = run(vec![input], 4096).await.unwrap();
        let frames = parse_frames(&out);
        assert_eq!(frames[0].ty, 0x4, "SETTINGS forwarded");
        assert_eq!(frames[2].payload, b"\0\0\0\0\0", "DATA forwarded");
        let decoded = server_decode(&frames);
        assert_eq!(decoded.len(), 3);
        for ((sid, es, h), (want_sid, want_es)) in
            decoded.iter().zip([(1, false), (3, true), (5, true)])
        {
            assert_eq!((*sid, *es), (want_sid, want_es));
            assert_eq!(authority(h), Some(&b"127.0.0.1:2379"[..]));
            assert_eq!(without_authority(h), without_authority(&r));
            assert!(http::uri::Authority::try_from(authority(h).unwrap()).is_ok());
        }
    }

    #[test]
    fn table_neutral_blocks() {
        // Indexed fields only, incl. a multi-byte index (62 + 127 = 189 → 0xff 0x3e).
        assert!(table_neutral(&[0x82, 0x86, 0xbe, 0xff, 0x3e]));
        // Literal without indexing (indexed name 4 = :path) and never indexed (new name).
        let mut b = vec![0x04];
        encode_string(&mut b, b"/etcdserverpb.KV/Put");
        b.push(0x10);
        encode_string(&mut b, b"x-name");
        b.push(0x80 | 2); // a Huffman-flagged 2-byte value: only its length matters here
        b.extend([0xff, 0xff]);
        assert!(table_neutral(&b));
        assert!(table_neutral(&[]));
        // Anything that may change the table, and anything malformed, is not neutral.
        assert!(!table_neutral(&[0x82, 0x40, 0x01, b'a', 0x01, b'b']));
        assert!(!table_neutral(&[0x3f, 0xe1, 0x1f]));
        assert!(!table_neutral(&[0x80]), "index 0");
        assert!(!table_neutral(&[0x04, 0x05, b'a']), "string past the end");
        assert!(
            !table_neutral(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            "endless integer"
        );
    }

    /// The outcome cache must never outlive the dynamic table state it was computed under: the
    /// same indexed block means something else after an insertion.
    #[test]
    fn cached_outcomes_follow_the_dynamic_table() {
        let good = request("127.0.0.1:2379", "/etcdserverpb.KV/Put");
        let b1 = encode_indexing(&good);
        // All of `good` by reference (newest entry is 62).
        let b2: Vec<u8> = (0..good.len())
            .map(|i| 0x80 | (62 + good.len() - 1 - i) as u8)
            .collect();
        // Inserts a bad :authority at 62, shifting everything b2 refers to.
        let mut b3 = vec![0x83, 0x40];
        encode_string(&mut b3, b":authority");
        encode_string(&mut b3, b"http://127.0.0.1:2379");
        let blocks = [&b1, &b2, &b2, &b3, &b2, &b2];
        let mut input = PREFACE.to_vec();
        for (i, b) in blocks.iter().enumerate() {
            input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1 + 2 * i as u32, b));
        }
        let mut rw = Rewriter::new();
        let mut out = Vec::new();
        assert_eq!(rw.process(&input, &mut out).unwrap(), input.len());
        assert!(rw.is_rewriting());
        assert_eq!(rw.cache.len(), 1, "b2 cached again under the new table");

        // Oracle: the client's own view of each block, with the authority repaired.
        let mut client = Decoder::new();
        let want: Vec<Headers> = blocks
            .iter()
            .map(|b| {
                client
                    .decode(b)
                    .unwrap()
                    .into_iter()
                    .filter_map(|(n, v)| {
                        if n != b":authority" {
                            return Some((n, v));
                        }
                        match fix_authority(&v) {
                            AuthorityFixup::Keep => Some((n, v)),
                            AuthorityFixup::Replace(r) => Some((n, r.to_vec())),
                            AuthorityFixup::Drop => None,
                        }
                    })
                    .collect()
            })
            .collect();
        let got: Vec<Headers> = server_decode(&parse_frames(&out))
            .into_iter()
            .map(|(_, _, h)| h)
            .collect();
        assert_eq!(got, want);
        assert_eq!(got[1], good);
        assert_eq!(authority(&got[4]), Some(&b"127.0.0.1:2379"[..]));
        assert_ne!(got[4], good, "b2 decodes differently after the insertion");
    }

    #[tokio::test]
    async fn unrepairable_authority_is_dropped() {
        let mut enc = Encoder::new();
        let r = request("#initially=[http://127.0.0.1:2379]", "/etcdserverpb.KV/Put");
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            1,
            &encode(&mut enc, &r),
        ));
        let out = run(vec![input], 4096).await.unwrap();
        let decoded = server_decode(&parse_frames(&out));
        assert_eq!(decoded[0].2, without_authority(&r));
    }

    #[tokio::test]
    async fn valid_authority_passes_byte_identical_until_a_repair() {
        let mut enc = Encoder::new();
        let good = request("127.0.0.1:2379", "/etcdserverpb.KV/Range");
        let bad = request("http://127.0.0.1:2379", "/etcdserverpb.KV/Range");
        let mut input = PREFACE.to_vec();
        input.extend(settings());
        let g1 = frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &encode(&mut enc, &good));
        input.extend(&g1);
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            3,
            &encode(&mut enc, &good),
        ));
        let out = run(vec![input.clone()], 4096).await.unwrap();
        assert_eq!(out, input, "well-behaved clients see no change");

        // After a repair every block is literal-only, including good ones that the client
        // encodes as dynamic-table references.
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            5,
            &encode(&mut enc, &bad),
        ));
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            7,
            &encode(&mut enc, &good),
        ));
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            9,
            &encode(&mut enc, &bad),
        ));
        let out = run(vec![input], 4096).await.unwrap();
        let frames = parse_frames(&out);
        assert_eq!(
            frames[1].payload,
            g1[9..],
            "blocks before the repair untouched"
        );
        let decoded = server_decode(&frames);
        assert_eq!(decoded.len(), 5);
        for (_, _, h) in &decoded {
            assert_eq!(authority(h), Some(&b"127.0.0.1:2379"[..]));
            assert_eq!(without_authority(h), without_authority(&good));
        }
        // Literal without indexing (0x00 first octet) for every field of the rewritten blocks.
        for f in &frames[3..] {
            assert_eq!(f.payload[0], 0x00);
        }
    }

    #[tokio::test]
    async fn continuation_padding_and_priority_are_reassembled() {
        let mut enc = Encoder::new();
        let r = request("http://127.0.0.1:2379", "/etcdserverpb.Watch/Watch");
        let block = encode(&mut enc, &r);
        let (a, rest) = block.split_at(10);
        let (b, c) = rest.split_at(7);
        // HEADERS with PADDED (3 bytes of padding) and PRIORITY (5 bytes), then 2 CONTINUATIONs.
        let mut p = vec![3u8];
        p.extend_from_slice(&[0x80, 0, 0, 0, 15]);
        p.extend_from_slice(a);
        p.extend_from_slice(&[0, 0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_PADDED | FLAG_PRIORITY | FLAG_END_STREAM,
            1,
            &p,
        ));
        input.extend(frame(TYPE_CONTINUATION, 0, 1, b));
        input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, c));
        let out = run(vec![input], 4096).await.unwrap();
        let frames = parse_frames(&out);
        assert_eq!(frames.len(), 1, "one HEADERS frame out");
        assert_eq!(frames[0].flags, FLAG_END_HEADERS | FLAG_END_STREAM);
        let decoded = server_decode(&frames);
        assert_eq!(decoded[0].0, 1);
        assert!(decoded[0].1, "END_STREAM kept");
        assert_eq!(authority(&decoded[0].2), Some(&b"127.0.0.1:2379"[..]));
    }

    #[tokio::test]
    async fn big_blocks_are_split_into_continuations() {
        let mut enc = Encoder::new();
        let mut r = request("http://127.0.0.1:2379", "/etcdserverpb.KV/Range");
        r.push((b"x-big".to_vec(), vec![b'v'; 40_000]));
        let block = encode(&mut enc, &r);
        let mut input = PREFACE.to_vec();
        // The client sends it in legal 16 KiB frames too.
        let mut chunks = block.chunks(MAX_FRAME_SIZE).peekable();
        let mut first = true;
        while let Some(c) = chunks.next() {
            let flags = if chunks.peek().is_none() {
                FLAG_END_HEADERS
            } else {
                0
            };
            let ty = if first {
                TYPE_HEADERS
            } else {
                TYPE_CONTINUATION
            };
            first = false;
            input.extend(frame(ty, flags, 1, c));
        }
        let out = run(vec![input], 1000).await.unwrap();
        let frames = parse_frames(&out);
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0].ty, TYPE_HEADERS);
        assert!(frames[1..].iter().all(|f| f.ty == TYPE_CONTINUATION));
        assert_eq!(frames[2].flags, FLAG_END_HEADERS);
        assert_eq!(frames[0].flags & FLAG_END_HEADERS, 0);
        let decoded = server_decode(&frames);
        assert_eq!(authority(&decoded[0].2), Some(&b"127.0.0.1:2379"[..]));
        assert_eq!(decoded[0].2.last().unwrap().1.len(), 40_000);
    }

    #[tokio::test]
    async fn data_frames_pass_untouched() {
        let payload: Vec<u8> = (0..200_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let mut enc = Encoder::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            1,
            &encode(&mut enc, &request("127.0.0.1:1", "/p")),
        ));
        // A frame bigger than the reader's buffer exercises the direct-read path.
        input.extend(frame(0x0, 0, 1, &payload[..150_000]));
        input.extend(frame(0x8, 0, 1, &[0, 0, 1, 0])); // WINDOW_UPDATE
        input.extend(frame(0x0, FLAG_END_STREAM, 1, &payload[150_000..]));
        let chunks: Vec<Vec<u8>> = input.chunks(7_000).map(<[u8]>::to_vec).collect();
        for read_size in [1, 100, 8192, 65_536] {
            let out = run(chunks.clone(), read_size).await.unwrap();
            assert_eq!(out, input, "read size {read_size}");
        }
    }

    /// A conversation touching every state: preface, SETTINGS, padded HEADERS with CONTINUATION,
    /// DATA, a second HEADERS, PING.
    fn conversation() -> Vec<u8> {
        let mut enc = Encoder::new();
        let r1 = encode(&mut enc, &request("http://127.0.0.1:2379", "/a"));
        let r2 = encode(&mut enc, &request("http://127.0.0.1:2379", "/b"));
        let mut input = PREFACE.to_vec();
        input.extend(settings());
        let mut p = vec![2u8];
        p.extend_from_slice(&r1[..5]);
        p.extend_from_slice(&[0, 0]);
        input.extend(frame(TYPE_HEADERS, FLAG_PADDED, 1, &p));
        input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &r1[5..]));
        input.extend(frame(0x0, FLAG_END_STREAM, 1, b"0123456789abcdef"));
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS | FLAG_END_STREAM,
            3,
            &r2,
        ));
        input.extend(frame(0x6, 0, 0, b"pingping"));
        input
    }

    #[tokio::test]
    async fn split_reads_at_every_byte_boundary() {
        let input = conversation();
        let whole = run(vec![input.clone()], 65_536).await.unwrap();
        assert_eq!(server_decode(&parse_frames(&whole)).len(), 2);
        for k in 0..=input.len() {
            let parts = vec![input[..k].to_vec(), input[k..].to_vec()];
            assert_eq!(run(parts, 65_536).await.unwrap(), whole, "split at {k}");
        }
        // And one byte at a time, both from the socket and into the reader.
        let bytes: Vec<Vec<u8>> = input.iter().map(|b| vec![*b]).collect();
        assert_eq!(run(bytes.clone(), 65_536).await.unwrap(), whole);
        assert_eq!(run(bytes, 1).await.unwrap(), whole);
    }

    async fn refused(input: Vec<u8>) -> io::Error {
        let e = run(vec![input], 4096).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        e
    }

    #[tokio::test]
    async fn garbage_closes_the_connection() {
        // Not HTTP/2 at all (refused at the first byte, without waiting for 24).
        let e = refused(b"GET / HTTP/1.1\r\n".to_vec()).await;
        assert!(e.to_string().contains("preface"), "{e}");

        // CONTINUATION without HEADERS.
        let mut i = PREFACE.to_vec();
        i.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &[0x82]));
        refused(i).await;

        // Another frame in the middle of a header block.
        let mut i = PREFACE.to_vec();
        i.extend(frame(TYPE_HEADERS, 0, 1, &[0x82]));
        i.extend(frame(0x0, 0, 1, b"x"));
        refused(i).await;

        // Padding longer than the frame.
        let mut i = PREFACE.to_vec();
        i.extend(frame(
            TYPE_HEADERS,
            FLAG_PADDED | FLAG_END_HEADERS,
            1,
            &[9, 0x82],
        ));
        refused(i).await;

        // HPACK garbage: an index beyond both tables, and a truncated string.
        for block in [&[0xff, 0x80, 0x01][..], &[0x00, 0x05, b'a'][..]] {
            let mut i = PREFACE.to_vec();
            i.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, block));
            refused(i).await;
        }

        // Table size update above the advertised 4096.
        let mut i = PREFACE.to_vec();
        i.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            1,
            &[0x3f, 0xe1, 0x3f, 0x82],
        ));
        refused(i).await;

        // HEADERS on stream 0.
        let mut i = PREFACE.to_vec();
        i.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 0, &[0x82]));
        refused(i).await;
    }

    #[tokio::test]
    async fn oversized_header_blocks_close_the_connection() {
        // One huge frame is refused from its header, before the payload is buffered.
        let mut i = PREFACE.to_vec();
        push_frame_header(&mut i, (1 << 24) - 1, TYPE_HEADERS, 0, 1);
        let e = refused(i).await;
        assert!(e.to_string().contains("exceeds"), "{e}");

        // Many CONTINUATIONs adding up past 1 MiB.
        let mut i = PREFACE.to_vec();
        i.extend(frame(TYPE_HEADERS, 0, 1, &[0x82]));
        for _ in 0..70 {
            i.extend(frame(TYPE_CONTINUATION, 0, 1, &[0x82; MAX_FRAME_SIZE]));
        }
        refused(i).await;

        // A small block expanding to a huge header list through the dynamic table.
        let mut block = vec![0x40, 1, b'x'];
        encode_string(&mut block, &[b'v'; 4000]);
        let mut i = PREFACE.to_vec();
        i.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &block));
        // 62 is the entry just added; 300 000 references ≈ 1.2 GB decoded.
        let refs = vec![0x80 | 62; 300_000];
        for c in refs.chunks(MAX_FRAME_SIZE) {
            i.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 3, c));
        }
        let e = refused(i).await;
        assert!(e.to_string().contains("header list"), "{e}");
    }
}
