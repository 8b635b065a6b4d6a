//! One member: propose, apply, restart from disk keeps everything; config/data mismatches fail.
mod common;

use std::time::Duration;

use common::*;
use kelson_raft::{RaftError, RaftNode, Role};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn propose_apply_and_restart() {
    init_tracing();
    let (cfg, dir) = solo();
    let m = start(cfg.clone(), dir).await;
    assert!(wait_leader(&[&m.node], Duration::from_secs(3))
        .await
        .is_some());
    assert_eq!(m.node.status().role, Role::Leader);

    let mut last = 0;
    for i in 0..20 {
        let res = tokio::time::timeout(
            Duration::from_secs(5),
            m.node.propose(format!("k{i}=v{i}").into_bytes()),
        )
        .await
        .unwrap()
        .unwrap();
        let idx = u64::from_be_bytes(res.try_into().unwrap());
        assert!(idx > last, "apply indexes increase");
        last = idx;
        // The write is visible as soon as propose returns.
        assert_eq!(
            m.view.get(&format!("k{i}")).as_deref(),
            Some(&*format!("v{i}"))
        );
    }
    m.node.read_index().await.unwrap();
    assert_eq!(
        m.node.propose(vec![0; 2 << 20]).await,
        Err(RaftError::TooLarge)
    );
    let applied = m.node.status().applied_index;
    assert!(applied >= last);
    let id = m.node.id();
    let cid = m.node.cluster_id();
    // The member publishes its client URLs through the log shortly after it starts.
    assert!(
        wait_until(Duration::from_secs(3), || m.node.members()[0].client_urls
            == cfg.client_urls)
        .await,
        "attributes published: {:?}",
        m.node.members()
    );

    m.node.shutdown().await;
    m.node.shutdown().await; // idempotent
    assert_eq!(
        m.node.propose(b"x=y".to_vec()).await,
        Err(RaftError::Stopped)
    );
    let Member { dir, node, .. } = m;
    drop(node);

    // Restart from the same data dir.
    let m = start(cfg.clone(), dir).await;
    assert_eq!(m.node.id(), id);
    assert_eq!(m.node.cluster_id(), cid);
    assert_eq!(m.view.len(), 20);
    assert!(wait_leader(&[&m.node], Duration::from_secs(3))
        .await
        .is_some());
    assert!(m.node.status().applied_index >= applied);
    m.node.propose(b"after=restart".to_vec()).await.unwrap();
    assert_eq!(m.view.get("after").as_deref(), Some("restart"));
    // Attributes were published and survive restarts.
    let members = m.node.members();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].name, "solo");
    assert_eq!(members[0].client_urls, cfg.client_urls);
    m.node.shutdown().await;
    let Member { dir, node, .. } = m;
    drop(node);

    // Same data dir, different cluster description (a cluster grown by `member add` renders a
    // new one): like etcd, the initialized data dir wins and the flags are ignored.
    let mut other = cfg.clone();
    other.initial_cluster_token = "another-cluster".into();
    other
        .initial_cluster
        .push(("added".into(), vec!["http://127.0.0.1:9".into()]));
    let m = start(other, dir).await;
    assert_eq!(m.node.id(), id, "the member id comes from the data dir");
    assert_eq!(
        m.node.cluster_id(),
        cid,
        "the cluster id comes from the data dir"
    );
    assert_eq!(
        m.node.members().len(),
        1,
        "the member list comes from the data dir"
    );
    assert_eq!(m.view.get("after").as_deref(), Some("restart"));
    assert!(wait_leader(&[&m.node], Duration::from_secs(3))
        .await
        .is_some());
    m.node.propose(b"after=flags".to_vec()).await.unwrap();
    m.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_raft_meta_is_an_error() {
    let (cfg, dir) = solo();
    let db = open_db(dir.path());
    db.put_cf(
        db.cf_handle("raft_meta").unwrap(),
        b"hard_state",
        b"\xff\xff\xff garbage",
    )
    .unwrap();
    let (sm, _) = TestSm::open(db.clone());
    match RaftNode::start(db, cfg, sm).await {
        Err(RaftError::Storage(msg)) => assert!(msg.contains("hard_state"), "{msg}"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("started on corrupt raft_meta"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_proposals_share_batches() {
    let (cfg, dir) = solo();
    let m = start(cfg, dir).await;
    assert!(wait_leader(&[&m.node], Duration::from_secs(3))
        .await
        .is_some());
    let t0 = std::time::Instant::now();
    let mut tasks = Vec::new();
    for c in 0..256 {
        let node = m.node.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..4 {
                node.propose(format!("c{c}-{i}=v").into_bytes())
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(m.view.len(), 1024);
    // 1024 synced proposals in well under a second each: they must have shared fsyncs.
    assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());
    m.node.shutdown().await;
}
