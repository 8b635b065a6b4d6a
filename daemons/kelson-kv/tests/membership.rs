//! Membership changes seen from the member they happen to: a member removed with MemberRemove
//! stops itself like etcd ("the member has been permanently removed from the cluster", non-zero
//! exit), the rest of the cluster keeps serving, and the removed member refuses to come back on
//! its old data dir.

use std::time::Duration;

use kelson_testsupport::{ClusterOpts, StoreCluster, StoreKind};

const REMOVED: &str = "the member has been permanently removed from the cluster";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_member_stops_itself_and_stays_out() {
    let mut cluster = StoreCluster::start(StoreKind::Kelson, 3, ClusterOpts::default())
        .await
        .expect("3-member kelson-kv cluster");
    let mut client = cluster.client().await.expect("client");
    client.put("before", "1", None).await.expect("put before");

    // Remove a follower (the common case; the leader removing itself is raft's business).
    let status = client.status().await.expect("status");
    let leader = status.leader();
    let members = client.member_list().await.expect("member list");
    let victim = members
        .members()
        .iter()
        .find(|m| m.id() != leader)
        .expect("a follower");
    let (victim_id, victim_name) = (victim.id(), victim.name().to_string());
    let idx = cluster
        .members()
        .iter()
        .position(|m| m.name == victim_name)
        .expect("victim is one of ours");
    // Through the leader: a member asked to remove itself applies the change and stops, and
    // the in-flight reply can be lost with it (the client then times out). Which member a
    // load-balanced client picks is chance, so ask one that stays.
    let leader_name = members
        .members()
        .iter()
        .find(|m| m.id() == leader)
        .expect("the leader is a member")
        .name()
        .to_string();
    let leader_idx = cluster
        .members()
        .iter()
        .position(|m| m.name == leader_name)
        .expect("leader is one of ours");
    let mut via_leader = etcd_client::Client::connect(
        [cluster.endpoint(leader_idx)],
        Some(cluster.connect_options().unwrap()),
    )
    .await
    .expect("client to the leader");
    let left = via_leader
        .member_remove(victim_id)
        .await
        .expect("member remove");
    assert_eq!(left.members().len(), 2, "member list after the removal");

    let exit = cluster
        .wait_exit(idx, Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("removed member did not stop: {e}\n{}", cluster.logs()));
    assert!(
        !exit.success(),
        "a removed member exits non-zero like etcd, got {exit}"
    );
    let log = cluster.log(idx);
    assert!(
        log.contains(REMOVED),
        "the removed member says why it stops:\n{log}"
    );

    // The remaining two members still form a quorum and serve writes and reads.
    let ep: Vec<String> = (0..3)
        .filter(|&i| i != idx)
        .map(|i| cluster.endpoint(i))
        .collect();
    let mut rest = etcd_client::Client::connect(ep, Some(cluster.connect_options().unwrap()))
        .await
        .expect("client to the remaining members");
    rest.put("after", "2", None).await.expect("put after");
    let got = rest.get("before", None).await.expect("get");
    assert_eq!(got.kvs()[0].value(), b"1");

    // Starting it again on its data dir does not bring it back: it stops again, non-zero.
    cluster.restart(idx).expect("respawn");
    let exit = cluster
        .wait_exit(idx, Duration::from_secs(20))
        .unwrap_or_else(|e| {
            panic!(
                "restarted removed member kept running: {e}\n{}",
                cluster.logs()
            )
        });
    assert!(!exit.success(), "restart of a removed member: {exit}");
    assert!(cluster.log(idx).contains(REMOVED), "{}", cluster.log(idx));
}
