//! Membership changes seen from the member they happen to: a member removed with MemberRemove
//! stops itself like etcd ("the member has been permanently removed from the cluster", non-zero
//! exit), the rest of the cluster keeps serving, and the removed member refuses to come back on
//! its old data dir. A member asked to remove *itself* answers the MemberRemove first and then
//! stops (etcd's behaviour): a client connected only to it gets the remaining member list.

use std::time::{Duration, Instant};

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

/// The member list as `(id, name)` pairs and the leader, through member `i`.
async fn view(cluster: &StoreCluster, i: usize) -> (Vec<(u64, String)>, u64) {
    let mut c = cluster.member_client(i).await.expect("client");
    let leader = c.status().await.expect("status").leader();
    let members = c
        .member_list()
        .await
        .expect("member list")
        .members()
        .iter()
        .map(|m| (m.id(), m.name().to_string()))
        .collect();
    (members, leader)
}

/// Member `name`'s index in the cluster.
fn index_of(cluster: &StoreCluster, name: &str) -> usize {
    cluster
        .members()
        .iter()
        .position(|m| m.name == name)
        .expect("one of ours")
}

/// Asks member `idx` (and only it) to remove itself; asserts the OK reply and its member list,
/// then that the member exits non-zero saying why.
async fn remove_itself(cluster: &mut StoreCluster, idx: usize, id: u64, remaining: usize) {
    let mut only_it = etcd_client::Client::connect(
        [cluster.endpoint(idx)],
        Some(cluster.connect_options().unwrap()),
    )
    .await
    .expect("client to the member being removed");
    let t = Instant::now();
    let left = only_it.member_remove(id).await.unwrap_or_else(|e| {
        panic!(
            "MemberRemove sent to the member being removed failed after {:?}: {e}\n{}",
            t.elapsed(),
            cluster.logs()
        )
    });
    eprintln!(
        "member {id:x} answered its own removal in {:?}",
        t.elapsed()
    );
    let ids: Vec<u64> = left.members().iter().map(|m| m.id()).collect();
    assert_eq!(ids.len(), remaining, "members after the removal: {ids:x?}");
    assert!(
        !ids.contains(&id),
        "the removed member is still listed: {ids:x?}"
    );
    assert!(left.header().is_some(), "the reply has a header");
    drop(only_it);

    let exit = cluster
        .wait_exit(idx, Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("removed member did not stop: {e}\n{}", cluster.logs()));
    assert!(
        !exit.success(),
        "a removed member exits non-zero, got {exit}"
    );
    let log = cluster.log(idx);
    assert!(log.contains(REMOVED), "the removed member says why:\n{log}");
}

/// Puts through a client connected to `endpoints`, retrying (bounded) while a new leader is
/// elected.
async fn put_eventually(cluster: &StoreCluster, endpoints: Vec<String>, key: &str) {
    let mut c = etcd_client::Client::connect(endpoints, Some(cluster.connect_options().unwrap()))
        .await
        .expect("client to the remaining members");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match c.put(key, "v", None).await {
            Ok(_) => return,
            Err(e) if Instant::now() < deadline => {
                eprintln!("put {key}: {e} (retrying)");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("put {key} after the removal: {e}\n{}", cluster.logs()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_asked_to_remove_itself_answers_then_stops() {
    let mut cluster = StoreCluster::start(StoreKind::Kelson, 3, ClusterOpts::default())
        .await
        .expect("3-member kelson-kv cluster");
    let mut client = cluster.client().await.expect("client");
    client.put("before", "1", None).await.expect("put before");
    drop(client);

    // A follower removes itself (3 -> 2): the leader stops replicating to it as soon as it
    // applies the change, yet the follower must learn the outcome and answer.
    let (members, leader) = view(&cluster, 0).await;
    let (fid, fname) = members
        .iter()
        .find(|(id, _)| *id != leader)
        .cloned()
        .expect("a follower");
    let f = index_of(&cluster, &fname);
    remove_itself(&mut cluster, f, fid, 2).await;
    let rest: Vec<usize> = (0..3).filter(|&i| i != f).collect();
    put_eventually(
        &cluster,
        rest.iter().map(|&i| cluster.endpoint(i)).collect(),
        "after1",
    )
    .await;

    // The leader removes itself (2 -> 1): it answers, stops, and the last member — which
    // must learn that the removal committed, or it would wait forever for a quorum of two —
    // leads alone and serves.
    let (members, leader) = view(&cluster, rest[0]).await;
    assert_eq!(members.len(), 2, "{members:x?}");
    let lname = &members
        .iter()
        .find(|(id, _)| *id == leader)
        .expect("the leader is listed")
        .1;
    let l = index_of(&cluster, lname);
    remove_itself(&mut cluster, l, leader, 1).await;
    let last = *rest.iter().find(|&&i| i != l).expect("one member left");
    put_eventually(&cluster, vec![cluster.endpoint(last)], "after2").await;
    let mut c = cluster.member_client(last).await.expect("client");
    let got = c.get("before", None).await.expect("get");
    assert_eq!(got.kvs()[0].value(), b"1");
    let (members, _) = view(&cluster, last).await;
    assert_eq!(members.len(), 1, "{members:x?}");
}
