//! `RaftNode::watch_role` changes with leadership, not with every commit (the full status
//! watch does), so leadership watchers are not woken by every Ready cycle.
mod common;

use std::time::Duration;

use common::*;
use kelson_raft::Role;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_watch_ignores_commits_but_not_leadership() {
    init_tracing();
    let (cfg, dir) = solo();
    let m = start(cfg, dir).await;
    let mut role = m.node.watch_role();
    // Leadership arrives through the role watch.
    tokio::time::timeout(
        Duration::from_secs(5),
        role.wait_for(|s| s.role == Role::Leader && s.leader_id == m.node.id()),
    )
    .await
    .expect("the role watch reports leadership within 5 s")
    .unwrap();
    // The member publishes its attributes through the log right after it starts: let that
    // settle so only the proposals below commit.
    assert!(
        wait_until(Duration::from_secs(3), || !m.node.members()[0]
            .client_urls
            .is_empty())
        .await
    );
    role.borrow_and_update();
    let mut status = m.node.watch_status();
    status.borrow_and_update();
    let before = m.node.status().applied_index;

    for i in 0..20 {
        tokio::time::timeout(
            Duration::from_secs(5),
            m.node.propose(format!("k{i}=v{i}").into_bytes()),
        )
        .await
        .unwrap()
        .unwrap();
    }
    // The status is published after the Ready cycle that answered the last proposal.
    assert!(
        wait_until(Duration::from_secs(3), || m.node.status().applied_index
            >= before + 20)
        .await,
        "applied index advanced by the 20 proposals"
    );
    assert!(
        status.has_changed().unwrap(),
        "the full status changes with commits"
    );
    assert!(
        !role.has_changed().unwrap(),
        "20 commits must not change the role watch"
    );
    // Its value is still current for what it reports.
    let r = role.borrow().clone();
    let s = m.node.status();
    assert_eq!(
        (r.leader_id, r.term, r.role, r.removed),
        (s.leader_id, s.term, s.role, s.removed)
    );
    m.node.shutdown().await;
}
