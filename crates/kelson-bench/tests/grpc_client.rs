//! kv-bench's lean h2 gRPC client (`src/grpc.rs`) against a real kelson-kv and a real etcd:
//! the same test body runs against both, so the client is held to etcd's wire behaviour and
//! not just to ours. It checks what the benchmark relies on: puts and (serializable) ranges
//! round-trip values and revisions, a server-side error arrives as its gRPC status and message,
//! an unknown method (a trailers-only response) is an error rather than a hang or a bogus
//! success, and hundreds of concurrent calls over one connection all complete.
//!
//! kv-bench is a binary crate, so the module is compiled into this test by path.

#[path = "../src/grpc.rs"]
mod grpc;

use std::path::Path;
use std::time::Duration;

use grpc::{Conn, GrpcError, PUT, RANGE};
use kelson_etcdpb::{PutRequest, PutResponse, RangeRequest, RangeResponse};
use kelson_testsupport::{bin_path, ClusterOpts, StoreCluster, StoreKind};

/// Bound on any single call in this test (a healthy loopback server answers in milliseconds).
const CALL: Duration = Duration::from_secs(15);

async fn put(conn: &Conn, key: &[u8], value: &[u8], lease: i64) -> Result<PutResponse, GrpcError> {
    let req = PutRequest {
        key: key.to_vec(),
        value: value.to_vec(),
        lease,
        ..Default::default()
    };
    tokio::time::timeout(CALL, conn.unary(PUT, &req))
        .await
        .expect("put timed out")
}

async fn range(conn: &Conn, req: RangeRequest) -> RangeResponse {
    tokio::time::timeout(CALL, conn.unary(RANGE, &req))
        .await
        .expect("range timed out")
        .expect("range")
}

fn revision_of(h: Option<&kelson_etcdpb::ResponseHeader>) -> i64 {
    h.expect("response header").revision
}

async fn exercise(kind: StoreKind) {
    match kind {
        StoreKind::Etcd => assert!(
            Path::new("/usr/bin/etcd").is_file(),
            "/usr/bin/etcd missing: run scripts/setup.sh"
        ),
        StoreKind::Kelson => {
            let bin = bin_path("kelson-kv");
            assert!(
                bin.is_file(),
                "{} missing: cargo build -p kelson-kv",
                bin.display()
            );
        }
    }
    let store = StoreCluster::start(kind, 1, ClusterOpts::default())
        .await
        .expect("starting the store");
    let addr = format!("127.0.0.1:{}", store.members()[0].client_port)
        .parse()
        .unwrap();
    let conn = tokio::time::timeout(CALL, Conn::connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect");
    let name = kind.name();

    // Put, then read it back; a second put moves the revision.
    let r1 = revision_of(
        put(&conn, b"lean/a", b"one", 0)
            .await
            .unwrap()
            .header
            .as_ref(),
    );
    let got = range(
        &conn,
        RangeRequest {
            key: b"lean/a".to_vec(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(got.kvs.len(), 1, "{name}: {got:?}");
    assert_eq!(got.kvs[0].value, b"one", "{name}");
    assert_eq!(got.kvs[0].mod_revision, r1, "{name}");
    assert_eq!(revision_of(got.header.as_ref()), r1, "{name}");
    let r2 = revision_of(
        put(&conn, b"lean/a", b"two", 0)
            .await
            .unwrap()
            .header
            .as_ref(),
    );
    assert!(r2 > r1, "{name}: revision {r2} after {r1}");
    let ser = range(
        &conn,
        RangeRequest {
            key: b"lean/a".to_vec(),
            serializable: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(ser.kvs.len(), 1, "{name}: {ser:?}");
    assert_eq!(ser.kvs[0].value, b"two", "{name}");
    assert_eq!(ser.kvs[0].mod_revision, r2, "{name}");
    assert_eq!(ser.kvs[0].version, 2, "{name}");

    // A server-side error is the server's status code and message.
    match put(&conn, b"lean/leased", b"x", 0x7eed_beef).await {
        Err(GrpcError::Status { code, message }) => {
            assert_eq!(code, 5, "{name}: NotFound expected, got {code}: {message}");
            assert!(
                message.contains("requested lease not found"),
                "{name}: {message}"
            );
        }
        other => panic!("{name}: a put with an unknown lease gave {other:?}"),
    }
    // An unknown method is answered trailers-only with Unimplemented.
    let unknown = tokio::time::timeout(
        CALL,
        conn.unary::<_, PutResponse>("/etcdserverpb.KV/NoSuchMethod", &PutRequest::default()),
    )
    .await
    .expect("unknown method timed out");
    assert!(
        matches!(unknown, Err(GrpcError::Status { code: 12, .. })),
        "{name}: {unknown:?}"
    );

    // Many concurrent calls multiplexed over one connection all complete.
    const TASKS: usize = 200;
    const PUTS: usize = 5;
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let conn = conn.clone();
        tasks.spawn(async move {
            for i in 0..PUTS {
                let key = format!("lean/many/{t:03}/{i}");
                put(&conn, key.as_bytes(), b"v", 0)
                    .await
                    .map_err(|e| format!("{key}: {e}"))?;
            }
            Ok::<(), String>(())
        });
    }
    let all = tokio::time::timeout(Duration::from_secs(60), async {
        let mut failures = Vec::new();
        while let Some(j) = tasks.join_next().await {
            if let Err(e) = j.expect("put task panicked") {
                failures.push(e);
            }
        }
        failures
    })
    .await
    .expect("concurrent puts did not finish within 60 s");
    assert!(
        all.is_empty(),
        "{name}: {} failed: {:?}",
        all.len(),
        &all[..all.len().min(5)]
    );
    let count = range(
        &conn,
        RangeRequest {
            key: b"lean/many/".to_vec(),
            range_end: b"lean/many0".to_vec(),
            count_only: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(count.count, (TASKS * PUTS) as i64, "{name}");
    // The failed leased put wrote nothing, so every revision since r2 is one of ours.
    assert_eq!(
        revision_of(count.header.as_ref()),
        r2 + (TASKS * PUTS) as i64,
        "{name}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lean_client_against_kelson_kv() {
    exercise(StoreKind::Kelson).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lean_client_against_etcd() {
    exercise(StoreKind::Etcd).await;
}
