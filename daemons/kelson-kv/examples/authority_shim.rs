//! Cost of the HTTP/2 `:authority` shim (`kelson_kv::authority::AuthorityFix`) per request and
//! per byte, measured on an in-memory client byte stream so only the shim's work is timed.
//!
//! Run: `cargo run --release -p kelson-kv --example authority_shim`. Prints a table: for each
//! stream shape, the time to read it raw (baseline, a plain copy) and through the shim.

use std::time::{Duration, Instant};

use kelson_kv::authority::{AuthorityFix, PREFACE};
use tokio::io::{AsyncRead, AsyncReadExt};

fn frame(out: &mut Vec<u8>, ty: u8, flags: u8, stream_id: u32, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.push(ty);
    out.push(flags);
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.extend_from_slice(payload);
}

fn literal_indexed(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0x40);
    for s in [name, value] {
        // All strings here are < 127 bytes: one length octet.
        out.push(s.len() as u8);
        out.extend_from_slice(s.as_bytes());
    }
}

/// A connection carrying `requests` unary gRPC calls shaped like an HTTP/2 client sends them:
/// the first header block adds 7 fields to the dynamic table, later ones refer to them.
fn connection(authority: &str, requests: u32, body: usize) -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    frame(&mut out, 0x4, 0, 0, &[]);
    let fields = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/etcdserverpb.KV/Put"),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("user-agent", "grpc-go/1.26.0"),
    ];
    let mut first = Vec::new();
    for (n, v) in fields {
        literal_indexed(&mut first, n, v);
    }
    let again: Vec<u8> = (0..fields.len() as u8).map(|i| 0x80 | (68 - i)).collect();
    let data = vec![7u8; body];
    for i in 0..requests {
        let sid = 1 + 2 * i;
        let block = if i == 0 { &first } else { &again };
        frame(&mut out, 0x1, 0x4, sid, block);
        frame(&mut out, 0x0, 0x1, sid, &data);
    }
    out
}

async fn drain<R: AsyncRead + Unpin>(mut r: R) -> usize {
    // hyper reads into an 8 KiB buffer at first and grows it for bulk transfers.
    let mut buf = vec![0u8; 8192];
    let mut total = 0;
    loop {
        let n = r.read(&mut buf).await.expect("read");
        if n == 0 {
            return total;
        }
        total += n;
    }
}

fn time<F: FnMut()>(mut f: F) -> Duration {
    f(); // warm-up
    let start = Instant::now();
    let rounds = 5;
    for _ in 0..rounds {
        f();
    }
    start.elapsed() / rounds
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let requests = 100_000u32;
    println!("| stream | bytes | raw copy | through shim | shim cost per request |");
    println!("| --- | --- | --- | --- | --- |");
    for (name, authority, body) in [
        ("valid authority, 300 B bodies", "127.0.0.1:2379", 300),
        (
            "http:// authority (rewritten), 300 B bodies",
            "http://127.0.0.1:2379",
            300,
        ),
        ("valid authority, 64 KiB bodies", "127.0.0.1:2379", 65_536),
    ] {
        let n = if body > 10_000 {
            requests / 50
        } else {
            requests
        };
        let input = connection(authority, n, body);
        let raw = time(|| {
            assert_eq!(rt.block_on(drain(&input[..])), input.len());
        });
        let mut out_len = 0;
        let shim = time(|| {
            out_len = rt.block_on(drain(AuthorityFix::new(&input[..])));
        });
        assert!(out_len >= input.len() - 100, "shim output is complete");
        let per_req = shim.saturating_sub(raw).as_nanos() as f64 / f64::from(n);
        println!(
            "| {name} | {} MB | {:.1} ms | {:.1} ms | {per_req:.0} ns |",
            input.len() / 1_000_000,
            raw.as_secs_f64() * 1e3,
            shim.as_secs_f64() * 1e3,
        );
    }
}
