//! Three members in one process on loopback: election, forwarding, failover, catch-up by
//! snapshot, linearizable reads on followers, membership changes, hostile peer input.
mod common;

use std::time::Duration;

use common::*;
use kelson_raft::transport::pb::{raft_peer_client::RaftPeerClient, MessageBatch};
use kelson_raft::{RaftError, Role};

async fn propose_ok(node: &kelson_raft::RaftNode, kv: String) {
    for _ in 0..50 {
        match tokio::time::timeout(
            Duration::from_secs(3),
            node.propose(kv.clone().into_bytes()),
        )
        .await
        {
            Ok(Ok(_)) => return,
            Ok(Err(RaftError::NoLeader)) | Ok(Err(RaftError::Timeout)) | Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Ok(Err(e)) => panic!("propose {kv}: {e}"),
        }
    }
    panic!("propose {kv}: no success after retries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_and_snapshot_catch_up() {
    init_tracing();
    let (mut ms, li) = cluster_with_leader(3, 20).await;
    let leader = ms[li].node.id();
    assert_eq!(ms[li].node.status().role, Role::Leader);

    // Propose through followers (forwarded to the leader).
    for i in 0..10 {
        let f = &ms[(li + 1 + i % 2) % 3].node;
        let res = f.propose(format!("a{i}=x").into_bytes()).await.unwrap();
        assert_eq!(res.len(), 8, "the follower got the state machine's answer");
    }

    // Stop the leader; the survivors elect a new one within 3 s.
    let stopped = ms.remove(li);
    stopped.node.shutdown().await;
    let survivors: Vec<_> = ms.iter().map(|m| m.node.clone()).collect();
    let t0 = std::time::Instant::now();
    let mut new_leader = 0;
    let elected = wait_until(Duration::from_secs(3), || {
        let l = survivors[0].status().leader_id;
        new_leader = l;
        l != 0 && l != leader && survivors.iter().all(|s| s.status().leader_id == l)
    })
    .await;
    assert!(elected, "new leader within 3 s");
    assert!(t0.elapsed() < Duration::from_secs(3));

    // Enough writes that the log is compacted past the stopped member's position.
    for i in 0..80 {
        propose_ok(&ms[i % 2].node, format!("b{i}=y")).await;
    }
    for m in &ms {
        assert!(
            wait_until(Duration::from_secs(3), || m.view.len() == 90).await,
            "{} has {}",
            m.name,
            m.view.len()
        );
        assert_eq!(m.view.get("a3").as_deref(), Some("x"));
        assert!(m.node.status().snapshot_index > 1, "snapshots were taken");
    }

    // Restart the stopped member: it must catch up through a snapshot.
    let back = stopped.restart().await;
    assert!(
        wait_until(Duration::from_secs(5), || back.view.len() == 90).await,
        "restarted member caught up: {}",
        back.view.len()
    );
    assert!(back.view.restores() >= 1, "caught up by snapshot");
    assert!(back.node.status().snapshots_installed >= 1);
    assert_eq!(back.view.get("b79").as_deref(), Some("y"));
    // And it keeps following new writes.
    propose_ok(&back.node, "c=z".into()).await;
    for m in ms.iter().chain(std::iter::once(&back)) {
        assert!(wait_until(Duration::from_secs(3), || m.view.get("c").is_some()).await);
    }
    shutdown_all(ms.iter().chain(std::iter::once(&back))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_index_on_follower_sees_acked_write() {
    init_tracing();
    let (ms, li) = cluster_with_leader(3, 10_000).await;
    let f = &ms[(li + 1) % 3];
    for i in 0..20 {
        ms[li]
            .node
            .propose(format!("r{i}={i}").into_bytes())
            .await
            .unwrap();
        // Concurrent readers share rounds; each must see the acknowledged write.
        let reads: Vec<_> = (0..4).map(|_| f.node.read_index()).collect();
        for r in futures::future::join_all(reads).await {
            r.unwrap();
        }
        assert_eq!(f.view.get(&format!("r{i}")), Some(i.to_string()));
    }
    shutdown_all(&ms).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_promote_remove_member() {
    init_tracing();
    let a = &lone_leader().await;
    for i in 0..5 {
        a.node
            .propose(format!("m{i}=1").into_bytes())
            .await
            .unwrap();
    }

    let b_addr = free_addr();
    let (added, members) = a.node.add_member(vec![url(b_addr)], true).await.unwrap();
    assert!(added.is_learner);
    assert_eq!(members.len(), 2);
    assert!(matches!(
        a.node.add_member(vec![url(b_addr)], true).await,
        Err(RaftError::PeerUrlExists)
    ));
    assert!(matches!(
        a.node.add_member(vec![url(free_addr())], true).await,
        Err(RaftError::TooManyLearners)
    ));
    assert!(matches!(
        a.node.promote_member(a.node.id()).await,
        Err(RaftError::NotLearner)
    ));

    let b = start_joiner(a, "b", b_addr).await;
    assert_eq!(b.node.id(), added.id);
    assert_eq!(b.node.cluster_id(), a.node.cluster_id());
    assert!(
        wait_until(Duration::from_secs(5), || b.view.len() == 5).await,
        "learner caught up"
    );
    assert!(b.node.status().is_learner);

    // Update the learner's peer URLs (a learner is outside the quorum, so this commits even
    // though nothing listens there), then point them back.
    let new_url = url(free_addr());
    let members = a
        .node
        .update_member(added.id, vec![new_url.clone()])
        .await
        .unwrap();
    assert_eq!(
        members.iter().find(|m| m.id == added.id).unwrap().peer_urls,
        vec![new_url]
    );
    assert!(matches!(
        a.node.update_member(added.id, vec![url(a.addr)]).await,
        Err(RaftError::PeerUrlExists)
    ));
    assert!(matches!(
        a.node.update_member(12345, vec![url(free_addr())]).await,
        Err(RaftError::MemberNotFound)
    ));
    a.node
        .update_member(added.id, vec![url(b_addr)])
        .await
        .unwrap();

    // Promote (retry while the learner is still catching up).
    let mut promoted = false;
    for _ in 0..50 {
        match a.node.promote_member(added.id).await {
            Ok(members) => {
                assert!(members.iter().all(|m| !m.is_learner));
                promoted = true;
                break;
            }
            Err(RaftError::LearnerNotReady) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("promote: {e}"),
        }
    }
    assert!(promoted);
    assert!(wait_until(Duration::from_secs(3), || !b.node.status().is_learner).await);

    // Both members' attributes are published and visible everywhere.
    let published = |n: &kelson_raft::RaftNode| {
        let ms = n.members();
        ms.len() == 2
            && ms
                .iter()
                .all(|m| !m.name.is_empty() && !m.client_urls.is_empty())
    };
    assert!(
        wait_until(Duration::from_secs(5), || published(&a.node)
            && published(&b.node))
        .await,
        "{:?}",
        b.node.members()
    );
    let mb = a
        .node
        .members()
        .into_iter()
        .find(|m| m.id == added.id)
        .unwrap();
    assert_eq!(mb.name, "b");
    assert_eq!(mb.client_urls, b.cfg.client_urls);

    // Writes now need both voters; then update and remove b.
    a.node.propose(b"two=voters".to_vec()).await.unwrap();
    assert!(wait_until(Duration::from_secs(3), || b.view.get("two").is_some()).await);
    let members = a.node.remove_member(added.id).await.unwrap();
    assert_eq!(members.len(), 1);
    assert!(matches!(
        a.node.remove_member(added.id).await,
        Err(RaftError::MemberNotFound)
    ));
    // With b gone the single remaining voter commits alone again.
    tokio::time::timeout(Duration::from_secs(5), a.node.propose(b"alone=1".to_vec()))
        .await
        .unwrap()
        .unwrap();
    b.node.shutdown().await;
    a.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_peer_messages_are_rejected() {
    init_tracing();
    let a = &lone_leader().await;
    let mut client = RaftPeerClient::connect(url(a.addr)).await.unwrap();

    let garbage = MessageBatch {
        cluster_id: a.node.cluster_id(),
        from: 7,
        to: a.node.id(),
        messages: vec![vec![0xff, 0xff, 0xff, 0x01]],
    };
    let err = client
        .send_messages(tokio_stream::iter(vec![garbage]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");

    let wrong_cluster = MessageBatch {
        cluster_id: a.node.cluster_id() ^ 1,
        from: 7,
        to: a.node.id(),
        messages: vec![],
    };
    let err = client
        .send_messages(tokio_stream::iter(vec![wrong_cluster]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");

    // A well-formed message with an unknown type is refused too (raft-rs would panic on it).
    let m = raft::eraftpb::Message {
        msg_type: 999,
        from: 7,
        to: a.node.id(),
        ..Default::default()
    };
    let bad_type = MessageBatch {
        cluster_id: a.node.cluster_id(),
        from: 7,
        to: a.node.id(),
        messages: vec![prost_011::Message::encode_to_vec(&m)],
    };
    let err = client
        .send_messages(tokio_stream::iter(vec![bad_type]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");

    // The node keeps serving.
    a.node.propose(b"still=alive".to_vec()).await.unwrap();
    assert_eq!(a.view.get("still").as_deref(), Some("alive"));
    assert_eq!(a.node.status().role, Role::Leader);
    a.node.shutdown().await;
}

/// Sends one (empty) batch to `to_addr` claiming to come from `from`; the gRPC outcome.
async fn knock(
    to_addr: std::net::SocketAddr,
    cluster_id: u64,
    from: u64,
    to: u64,
) -> tonic::Status {
    let mut client = RaftPeerClient::connect(url(to_addr)).await.unwrap();
    let batch = MessageBatch {
        cluster_id,
        from,
        to,
        messages: vec![],
    };
    match client.send_messages(tokio_stream::iter(vec![batch])).await {
        Ok(_) => tonic::Status::ok("accepted"),
        Err(s) => s,
    }
}

/// The removed-member list is replicated state: a member that joins after a removal, by
/// snapshot, refuses the removed member's traffic too — and still does after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_ids_travel_in_snapshots() {
    init_tracing();
    let (mut ms, li) = cluster_with_leader(2, 10_000).await;
    let gone = ms.remove(1 - li);
    let a = &ms[0];
    propose_ok(&a.node, "k=1".into()).await;
    let gone_id = gone.node.id();
    let left = a.node.remove_member(gone_id).await.unwrap();
    assert_eq!(left.len(), 1);
    gone.node.shutdown().await;
    // The member that applied the removal refuses it.
    let st = knock(a.addr, a.node.cluster_id(), gone_id, a.node.id()).await;
    assert_eq!(st.code(), tonic::Code::PermissionDenied, "{st:?}");

    // A new member joins; it starts empty and catches up by snapshot (the removal is in the
    // leader's log, not in anything the new member replays).
    let c_addr = free_addr();
    let (added, _) = a.node.add_member(vec![url(c_addr)], true).await.unwrap();
    let c = start_joiner(a, "c", c_addr).await;
    assert_eq!(c.node.id(), added.id);
    assert!(
        wait_until(Duration::from_secs(5), || c.view.get("k").is_some()).await,
        "the new member caught up"
    );
    assert!(
        c.node.status().snapshots_installed >= 1,
        "joined by snapshot: {:?}",
        c.node.status()
    );
    let st = knock(c.addr, c.node.cluster_id(), gone_id, c.node.id()).await;
    assert_eq!(
        st.code(),
        tonic::Code::PermissionDenied,
        "a member that joined by snapshot accepted a removed member: {st:?}"
    );
    assert!(st.message().contains("permanently removed"), "{st:?}");
    // A member that was never removed is still welcome (the check is not a blanket refusal).
    let st = knock(c.addr, c.node.cluster_id(), a.node.id(), c.node.id()).await;
    assert_eq!(st.code(), tonic::Code::Ok, "{st:?}");

    // Persisted: after a restart from disk the new member still refuses it.
    let c = c.restart().await;
    let st = knock(c.addr, c.node.cluster_id(), gone_id, c.node.id()).await;
    assert_eq!(
        st.code(),
        tonic::Code::PermissionDenied,
        "after restart: {st:?}"
    );
    c.node.shutdown().await;
    a.node.shutdown().await;
}

/// A snapshot for a peer is serialized off the Raft thread: while a (slow) build runs, the
/// leader keeps committing writes promptly; the peer then installs the snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_for_a_peer_is_built_off_the_raft_thread() {
    init_tracing();
    let a = &lone_leader().await;
    for i in 0..5 {
        propose_ok(&a.node, format!("s{i}=1")).await;
    }
    a.view
        .snapshot_delay_ms
        .store(3000, std::sync::atomic::Ordering::SeqCst);
    let b_addr = free_addr();
    let (added, _) = a.node.add_member(vec![url(b_addr)], true).await.unwrap();
    let b = start_joiner(a, "b", b_addr).await;
    assert_eq!(b.node.id(), added.id);
    // Let the leader notice that b needs a snapshot and start building it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..10 {
        let t = std::time::Instant::now();
        tokio::time::timeout(
            Duration::from_secs(5),
            a.node.propose(format!("during{i}=1").into_bytes()),
        )
        .await
        .expect("write during the snapshot build timed out")
        .expect("write during the snapshot build");
        assert!(
            t.elapsed() < Duration::from_millis(1000),
            "write {i} took {:?}: the Raft thread was blocked",
            t.elapsed()
        );
    }
    assert_eq!(
        b.node.status().snapshots_installed,
        0,
        "the writes above must have happened while the snapshot was still being built"
    );
    assert!(
        wait_until(Duration::from_secs(15), || b.view.get("during9").is_some()).await,
        "the learner caught up after the build: {:?}",
        b.node.status()
    );
    assert!(b.node.status().snapshots_installed >= 1);
    b.node.shutdown().await;
    a.node.shutdown().await;
}
