//! A snapshot transfer whose sender dies midway (issue 2): the receiving member drops the
//! part file, keeps its old state, and catches up later by the next leader's snapshot, ending
//! with exactly the same data as the rest of the cluster.
//!
//! To kill the sender mid-transfer deterministically, the members pause 200 ms after every
//! 1 MiB chunk they send (`KELSON_RAFT_SNAPSHOT_CHUNK_DELAY_MS`, a fault-injection knob of the
//! peer transport), so the ~10 MiB snapshot takes about two seconds to send; the test waits
//! until the receiver has a part file and then SIGKILLs the leader.
//! (The environment variable is set for this test binary only: it is the only test here.)

use std::path::Path;
use std::time::{Duration, Instant};

mod common;

use common::{dump, put_retry, value, wait_caught_up};
use etcd_client::{Client, GetOptions};
use kelson_testsupport::{ClusterOpts, StoreCluster, StoreKind};

const VALUE: usize = 16 << 10;
const KEYS: usize = 640;

fn part_files(snap_dir: &Path) -> Vec<String> {
    std::fs::read_dir(snap_dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.contains(".snap.part-"))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_catches_up_after_the_snapshot_sender_dies_mid_transfer() {
    // Inherited by the members this test starts (and read only by snapshot senders).
    std::env::set_var("KELSON_RAFT_SNAPSHOT_CHUNK_DELAY_MS", "200");
    let mut cluster = StoreCluster::start(
        StoreKind::Kelson,
        3,
        ClusterOpts {
            snapshot_count: Some(50),
            ..ClusterOpts::default()
        },
    )
    .await
    .expect("3-member kelson-kv cluster");
    let lagging = 2;
    cluster.kill9(lagging);
    let client = Client::connect([cluster.endpoint(0), cluster.endpoint(1)], None)
        .await
        .expect("client");
    let mut tasks = Vec::new();
    for w in 0..8usize {
        let mut c = client.clone();
        tasks.push(tokio::spawn(async move {
            for k in (w..KEYS).step_by(8) {
                put_retry(&mut c, format!("k/{k:04}"), value(k as u64, VALUE)).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let mut c = client.clone();
    for k in 0..40u64 {
        put_retry(&mut c, format!("k/{k:04}"), format!("v2 {k}").into_bytes()).await;
    }
    for k in 40..60u64 {
        c.delete(format!("k/{k:04}"), None).await.expect("delete");
    }
    let rev = c
        .put("last", "1", None)
        .await
        .expect("last put")
        .header()
        .expect("header")
        .revision();

    // Which member leads (and will send the snapshot)?
    let leader_id = c.status().await.expect("status").leader();
    let members = c.member_list().await.expect("member list");
    let leader_name = members
        .members()
        .iter()
        .find(|m| m.id() == leader_id)
        .expect("leader in the member list")
        .name()
        .to_string();
    let leader = cluster
        .members()
        .iter()
        .position(|m| m.name == leader_name)
        .expect("leader is one of ours");
    assert_ne!(leader, lagging, "the killed member cannot lead");
    let survivor = 1 - leader;

    cluster
        .restart(lagging)
        .expect("restart the lagging member");
    let snap_dir = cluster.members()[lagging].data_dir.join("snap");
    let deadline = Instant::now() + Duration::from_secs(60);
    while part_files(&snap_dir).is_empty() {
        assert!(
            Instant::now() < deadline,
            "no snapshot transfer to the lagging member started:\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Mid-transfer: the sender dies.
    cluster.kill9(leader);

    let deadline = Instant::now() + Duration::from_secs(30);
    while !cluster.log(lagging).contains("receiving snapshot failed") {
        assert!(
            Instant::now() < deadline,
            "the receiver did not notice the broken transfer:\n{}",
            cluster.log(lagging)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The survivor leads (with the lagging member's vote) and sends its own snapshot.
    wait_caught_up(&cluster, lagging, rev, Duration::from_secs(120)).await;
    let log = cluster.log(lagging);
    assert!(
        log.contains("installed snapshot from leader"),
        "caught up by a snapshot:\n{log}"
    );
    assert!(
        part_files(&snap_dir).is_empty(),
        "no part file is left behind: {:?}",
        part_files(&snap_dir)
    );

    let mut a = cluster
        .member_client(survivor)
        .await
        .expect("survivor client");
    let mut b = cluster
        .member_client(lagging)
        .await
        .expect("lagging client");
    let (ha, hb) = (
        a.hash_kv(rev).await.expect("hash survivor"),
        b.hash_kv(rev).await.expect("hash lagging"),
    );
    assert_eq!(
        ha.hash(),
        hb.hash(),
        "HashKV over every revision up to {rev}"
    );
    let (da, db) = (dump(&mut a, 100).await, dump(&mut b, 100).await);
    assert_eq!(da.len(), KEYS - 20 + 1, "live keys");
    assert!(da == db, "the caught-up member holds different data");
    // Reads at an older revision agree too (history, not just the latest values).
    let old = rev - 30;
    let at = |c: &mut Client| {
        let mut c = c.clone();
        async move {
            c.get(
                "k/",
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_revision(old)
                        .with_serializable()
                        .with_keys_only(),
                ),
            )
            .await
            .expect("range at an old revision")
            .kvs()
            .iter()
            .map(|kv| (kv.key().to_vec(), kv.mod_revision(), kv.version()))
            .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        at(&mut a).await,
        at(&mut b).await,
        "Range at revision {old}"
    );
}
