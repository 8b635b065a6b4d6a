//! Certificate renewal without a restart (issue 8), for kelson-kv's client and peer sides.
//!
//! A 3-member mutual-TLS cluster gets short-lived serving and peer certificates (renewed in
//! place, as `kelsonctl pki renew` does: atomic renames of new files with new serials), then
//! renewed ones, while a client keeps writing. Asserted:
//! - zero failed writes throughout;
//! - a fresh TLS handshake on every member's client port AND peer port sees the newest serial
//!   (the peer listener used to read its certificate once, through tonic's `ServerTlsConfig`);
//! - after the short-lived certificates have expired, a member killed and restarted rejoins and
//!   catches up. That needs new peer connections in both directions, which only succeed if the
//!   other members' peer *client* side presents the renewed certificate (an expired one is
//!   refused by the restarted member's handshake).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

mod common;

use common::tls::{connector, renew, serial_of, served_serial};
use kelson_testsupport::{ClusterOpts, StoreCluster, StoreKind};
use tokio_rustls::TlsConnector;

/// Lifetime of the first renewal: long enough to see it served everywhere, short enough to
/// expire within the test.
const SHORT: Duration = Duration::from_secs(12);

/// Waits (bounded) until every member's client port serves `server` and peer port serves
/// `peer`. The members check their files at most every 3 s, on a handshake.
async fn wait_served(cluster: &StoreCluster, connector: &TlsConnector, server: &str, peer: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut wrong = Vec::new();
        for m in cluster.members() {
            for (port, want, what) in [
                (m.client_port, server, "client"),
                (m.peer_port, peer, "peer"),
            ] {
                match served_serial(connector, port).await {
                    Ok(s) if s == want => {}
                    other => wrong.push(format!("{} {what} port: {other:?}", m.name)),
                }
            }
        }
        if wrong.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "renewed certificates not served (want server {server}, peer {peer}):\n{}\n{}",
            wrong.join("\n"),
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_certificates_are_used_without_restart() {
    let mut cluster = StoreCluster::start(
        StoreKind::Kelson,
        3,
        ClusterOpts {
            tls: true,
            ..ClusterOpts::default()
        },
    )
    .await
    .expect("3-member TLS cluster");
    let pki = cluster.pki().expect("TLS cluster has a PKI").clone();
    let connector = connector(&pki);
    let original = served_serial(&connector, cluster.members()[0].peer_port)
        .await
        .expect("handshake with a peer port");
    assert_eq!(original, serial_of(&pki.peer_cert));

    // Write through the leader for the whole test, counting failures.
    let mut c = cluster.client().await.expect("client");
    let leader = c.status().await.expect("status").leader();
    let names: Vec<(u64, String)> = c
        .member_list()
        .await
        .expect("member list")
        .members()
        .iter()
        .map(|m| (m.id(), m.name().to_string()))
        .collect();
    let lname = &names
        .iter()
        .find(|(id, _)| *id == leader)
        .expect("leader")
        .1;
    let li = cluster
        .members()
        .iter()
        .position(|m| &m.name == lname)
        .expect("leader is ours");
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, last) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let writer = {
        let mut w = cluster
            .member_client(li)
            .await
            .expect("client to the leader");
        let (stop, ok, last) = (stop.clone(), ok.clone(), last.clone());
        tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                match w.put(format!("w{i}"), i.to_string(), None).await {
                    Ok(_) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        last.store(i, Ordering::Relaxed);
                    }
                    Err(e) => failures.push(format!("put w{i}: {e}")),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            failures
        })
    };

    // Short-lived certificates, then their renewal, each served everywhere without a restart.
    let short_issued = SystemTime::now();
    let (s1, p1) = renew(&pki, SHORT);
    assert_ne!(p1, original);
    wait_served(&cluster, &connector, &s1, &p1).await;
    let (s2, p2) = renew(&pki, Duration::from_secs(24 * 3600));
    wait_served(&cluster, &connector, &s2, &p2).await;
    eprintln!("renewed twice in {:?}", short_issued.elapsed().unwrap());

    // Let the short-lived ones expire (kelson-pki backdates notBefore, not notAfter).
    let expired_at = short_issued + SHORT + Duration::from_secs(1);
    if let Ok(left) = expired_at.duration_since(SystemTime::now()) {
        tokio::time::sleep(left).await;
    }

    // A follower crashes and comes back: every peer connection to and from it is new now.
    let k = (0..3).find(|&i| i != li).expect("a follower");
    cluster.restart(k).expect("restart the follower");
    let before = last.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(15);
    let caught_up = loop {
        let seen = async {
            let mut kc = cluster.member_client(k).await?;
            // Serializable: answered from the restarted member's own state.
            let r = kc
                .get(
                    format!("w{before}"),
                    Some(etcd_client::GetOptions::new().with_serializable()),
                )
                .await?;
            anyhow::Ok(!r.kvs().is_empty())
        }
        .await;
        if matches!(seen, Ok(true)) {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        caught_up,
        "restarted member did not catch up after the old certificates expired\n{}",
        cluster.logs()
    );
    cluster
        .wait_healthy(Duration::from_secs(10))
        .await
        .expect("cluster healthy after the old certificates expired");
    // A linearizable read through the restarted member needs the leader (ReadIndex).
    let mut kc = cluster.member_client(k).await.expect("client");
    kc.get("w1", None)
        .await
        .expect("linearizable read via the restarted member");

    stop.store(true, Ordering::Relaxed);
    let failures = writer.await.expect("writer");
    let done = ok.load(Ordering::Relaxed);
    eprintln!("{done} writes, {} failed", failures.len());
    assert!(
        failures.is_empty(),
        "failed writes during rotation:\n{}",
        failures.join("\n")
    );
    assert!(done > 100, "too few writes to mean anything: {done}");
    // And the restarted member serves the renewed certificate on both ports.
    let m = &cluster.members()[k];
    assert_eq!(served_serial(&connector, m.client_port).await.unwrap(), s2);
    assert_eq!(served_serial(&connector, m.peer_port).await.unwrap(), p2);
}
