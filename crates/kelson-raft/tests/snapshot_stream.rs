//! The snapshot stream of the peer transport under bad input, and the restore mark.
//!
//! A snapshot arrives as its file, in chunks; the receiver must refuse (with a gRPC error, so
//! the sender reports the snapshot as failed and raft retries) a gap between chunks, a
//! checksum or size mismatch, a stream that ends before its last chunk (the sender died), a
//! file that is not the snapshot its message describes, and a snapshot message on the
//! ordinary message stream — and leave no part file and no state change behind.
//!
//! A member that crashed in the middle of a restore finds the restore mark on start and
//! redoes the restore from the snapshot file before raft starts.
mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use kelson_raft::transport::pb::{raft_peer_client::RaftPeerClient, MessageBatch, SnapshotChunk};
use kelson_raft::Role;
use prost_011::Message as _;
use raft::eraftpb::{ConfState, Message, MessageType, Snapshot, SnapshotMetadata};
use sha2::{Digest, Sha256};

/// What the transport puts in a snapshot message's data (see `storage::FILE_DATA`).
const FILE_DATA: &[u8] = b"kelson-raft snapshot file v2";

fn snapshot_message(from: u64, to: u64, data: &[u8]) -> Vec<u8> {
    let mut m = Message {
        from,
        to,
        term: 50,
        ..Default::default()
    };
    m.set_msg_type(MessageType::MsgSnapshot);
    m.snapshot = Some(Snapshot {
        data: data.to_vec(),
        metadata: Some(SnapshotMetadata {
            conf_state: Some(ConfState {
                voters: vec![to, from],
                ..Default::default()
            }),
            index: 1000,
            term: 50,
        }),
    });
    m.encode_to_vec()
}

fn snap_dir_entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join("snap"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_snapshot_streams_are_refused_and_leave_nothing() {
    init_tracing();
    let a = &lone_leader().await;
    a.node.propose(b"before=1".to_vec()).await.unwrap();
    let files_before = snap_dir_entries(a.dir.path());
    let mut client = RaftPeerClient::connect(url(a.addr)).await.unwrap();
    let (cid, me, from) = (a.node.cluster_id(), a.node.id(), 7u64);
    let header = snapshot_message(from, me, FILE_DATA);
    let chunk = |data: &[u8], offset: u64, last: bool, total: u64, sha: Vec<u8>| SnapshotChunk {
        cluster_id: cid,
        from,
        to: me,
        message: if offset == 0 {
            header.clone()
        } else {
            Vec::new()
        },
        data: data.to_vec(),
        offset,
        last,
        total_size: total,
        sha256: sha,
    };
    let sha = |b: &[u8]| Sha256::digest(b).to_vec();
    let body = vec![5u8; 3000];

    let cases: Vec<(&str, Vec<SnapshotChunk>, tonic::Code)> = vec![
        (
            "a gap between chunks",
            vec![
                chunk(&body[..1000], 0, false, 0, vec![]),
                chunk(&body[2000..], 2000, true, 3000, sha(&body)),
            ],
            tonic::Code::InvalidArgument,
        ),
        (
            "a checksum mismatch",
            vec![
                chunk(&body[..1000], 0, false, 0, vec![]),
                chunk(&body[1000..], 1000, true, 3000, sha(b"something else")),
            ],
            tonic::Code::DataLoss,
        ),
        (
            "a size mismatch",
            vec![chunk(&body, 0, true, 4000, sha(&body))],
            tonic::Code::InvalidArgument,
        ),
        (
            "a stream that ends before its last chunk (the sender died)",
            vec![
                chunk(&body[..1000], 0, false, 0, vec![]),
                chunk(&body[1000..2000], 1000, false, 0, vec![]),
            ],
            tonic::Code::InvalidArgument,
        ),
        (
            "a complete, intact file that is not a snapshot file",
            vec![chunk(&body, 0, true, 3000, sha(&body))],
            tonic::Code::InvalidArgument,
        ),
        (
            "a message whose data is inline instead of in the file",
            vec![SnapshotChunk {
                message: snapshot_message(from, me, b"inline state"),
                ..chunk(&body, 0, true, 3000, sha(&body))
            }],
            tonic::Code::InvalidArgument,
        ),
        (
            "another cluster's snapshot",
            vec![SnapshotChunk {
                cluster_id: cid ^ 1,
                ..chunk(&body, 0, true, 3000, sha(&body))
            }],
            tonic::Code::FailedPrecondition,
        ),
    ];
    for (what, chunks, code) in cases {
        let err = client
            .snapshot(tokio_stream::iter(chunks))
            .await
            .expect_err(what);
        assert_eq!(err.code(), code, "{what}: {err}");
        assert_eq!(
            snap_dir_entries(a.dir.path()),
            files_before,
            "{what}: the snapshot directory is unchanged"
        );
    }

    // A snapshot message on the ordinary stream would name a file never received.
    let batch = MessageBatch {
        cluster_id: cid,
        from,
        to: me,
        messages: vec![snapshot_message(from, me, FILE_DATA)],
    };
    let err = client
        .send_messages(tokio_stream::iter(vec![batch]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");

    // Nothing was installed, and the member keeps serving.
    assert_eq!(a.view.restores(), 0);
    a.node.propose(b"after=2".to_vec()).await.unwrap();
    assert_eq!(a.view.get("before").as_deref(), Some("1"));
    assert_eq!(a.view.get("after").as_deref(), Some("2"));
    assert_eq!(a.node.status().role, Role::Leader);
    a.node.shutdown().await;
}

/// A member that crashes between replacing its state and recording the snapshot (the restore
/// mark is still set) redoes the restore from the snapshot file when it starts again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_restore_is_redone_on_start() {
    init_tracing();
    let (mut ms, li) = cluster_with_leader(3, 20).await;
    let leader = ms[li].node.id();
    let fi = (li + 1) % 3;
    let behind = ms.remove(fi);
    behind.node.shutdown().await;
    let li = ms.iter().position(|m| m.node.id() == leader).unwrap();
    for i in 0..80 {
        ms[li]
            .node
            .propose(format!("k{i}=v{i}").into_bytes())
            .await
            .unwrap();
    }

    // Catch up by snapshot, then stop.
    let back = behind.restart().await;
    assert!(
        wait_until(Duration::from_secs(10), || back.view.len() == 80).await,
        "caught up: {}",
        back.view.len()
    );
    assert_eq!(back.view.restores(), 1, "caught up by one snapshot");
    let (cfg, dir) = back.stop().await;

    // Simulate the crash: the mark names the installed snapshot, and the state machine's
    // state is half gone (as if the old state had been deleted and the new one not written).
    let newest = snap_dir_entries(dir.path())
        .into_iter()
        .filter_map(|n| {
            let stem = n.strip_suffix(".snap")?;
            let (t, i) = stem.split_once('-')?;
            Some((
                u64::from_str_radix(i, 16).ok()?,
                u64::from_str_radix(t, 16).ok()?,
            ))
        })
        .max()
        .expect("a snapshot file");
    {
        let db = open_db(dir.path());
        let meta = db.cf_handle("raft_meta").unwrap();
        let mut mark = newest.0.to_be_bytes().to_vec();
        mark.extend_from_slice(&newest.1.to_be_bytes());
        db.put_cf(meta, b"restoring", mark).unwrap();
        let sm = db.cf_handle(SM_CF).unwrap();
        for i in 0..40 {
            db.delete_cf(sm, format!("k{i}")).unwrap();
        }
        db.flush_cf(sm).unwrap();
        db.flush_cf(meta).unwrap();
    }

    // A real crash inside the restore leaves the log as it was before the snapshot, so the
    // member never acknowledged anything past it. This one did (the leader's snapshot need not
    // end at its last entry, and entries after it were appended and acknowledged), and the
    // redone restore ends its log at the snapshot: the running leader would then send it a
    // commit index beyond its log, which raft rightly treats as lost data. The other members
    // restart too, so whichever leads next learns this member's log afresh.
    let mut rest = Vec::new();
    for m in ms {
        rest.push(m.stop().await);
    }
    let again = start(cfg, dir).await;
    assert_eq!(again.view.restores(), 1, "the restore was redone on start");
    assert_eq!(again.view.get("k3").as_deref(), Some("v3"));
    let mut ms = Vec::new();
    for (cfg, dir) in rest {
        ms.push(start(cfg, dir).await);
    }
    assert!(
        wait_until(Duration::from_secs(10), || again.view.len() == 80).await,
        "state complete again: {}",
        again.view.len()
    );
    // It keeps following the cluster.
    let nodes: Vec<_> = ms
        .iter()
        .chain(std::iter::once(&again))
        .map(|m| m.node.clone())
        .collect();
    let leader = wait_leader(&nodes.iter().collect::<Vec<_>>(), Duration::from_secs(10))
        .await
        .expect("a leader after the restart");
    let ln = nodes.iter().find(|n| n.id() == leader).unwrap();
    ln.propose(b"after=1".to_vec()).await.unwrap();
    assert!(wait_until(Duration::from_secs(5), || again.view.get("after").is_some()).await);
    shutdown_all(ms.iter().chain(std::iter::once(&again))).await;
}
