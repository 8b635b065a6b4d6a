//! Leader failover on a 3-member cluster with default (etcd) timings, for etcd and kelson-kv.
//!
//! One writer task does sequential puts of distinct keys, each with a 1 s timeout, recording
//! which were acknowledged. The leader is SIGKILLed mid-stream. Then:
//! - a new leader must serve writes within 3 s of the kill (time from the kill to the first
//!   acknowledged write that started after it; printed);
//! - every acknowledged write is on both survivors (serializable reads against each);
//! - the killed member, restarted after more than `--snapshot-count` writes, catches up: every
//!   acknowledged key, and the same `hash_kv` at the same revision as the others (for kelson-kv
//!   its log must show it installed a snapshot from the leader: the log alone could not
//!   catch it up);
//! - after all members are stopped and restarted from disk, every acknowledged write is there.
//!
//! Owned by the compatibility-suite engineer.

#[macro_use]
mod compat_support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use compat_support::{leader_index, start};
use etcd_client::{Client, GetOptions};
use kelson_testsupport::{wait_for, ClusterOpts, StoreCluster, StoreKind};

store_tests!(kill_leader_during_writes);

const SNAPSHOT_COUNT: u64 = 100;
/// Acknowledged writes required after the kill: well over `SNAPSHOT_COUNT`, so the leader has
/// compacted its log past what the dead member has.
const WRITES_WHILE_DOWN: usize = 3 * SNAPSHOT_COUNT as usize;

#[derive(Debug, Clone)]
struct Ack {
    key: String,
    started: Instant,
    done: Instant,
}

/// All keys under `fo/` that member `i` has applied, read serializably (from its own state).
async fn member_keys(c: &StoreCluster, i: usize) -> anyhow::Result<(BTreeSet<String>, i64)> {
    let mut cl = c.member_client(i).await?;
    let r = cl
        .get(
            "fo/",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_keys_only()
                    .with_serializable(),
            ),
        )
        .await?;
    let rev = r.header().map(|h| h.revision()).unwrap_or(0);
    let keys = r
        .kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect();
    Ok((keys, rev))
}

/// Waits until member `i` has every acknowledged key.
async fn has_all(
    c: &StoreCluster,
    i: usize,
    acked: &[Ack],
    timeout: Duration,
) -> anyhow::Result<()> {
    wait_for(
        timeout,
        &format!("member {i} to have all acked keys"),
        || async move {
            let (keys, rev) = member_keys(c, i).await?;
            let missing: Vec<&str> = acked
                .iter()
                .map(|a| a.key.as_str())
                .filter(|k| !keys.contains(*k))
                .collect();
            if !missing.is_empty() {
                bail!(
                    "member {i} at revision {rev} lacks {} of {} acked keys, e.g. {:?}",
                    missing.len(),
                    acked.len(),
                    &missing[..missing.len().min(5)]
                );
            }
            Ok(())
        },
    )
    .await
}

fn spawn_writer(
    client: Client,
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<Ack>>>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut client = client;
        let mut failures = 0;
        // Bounded in count as well as by the stop flag.
        for i in 0..20_000 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let key = format!("fo/{i:06}");
            let started = Instant::now();
            let r = tokio::time::timeout(
                Duration::from_secs(1),
                client.put(key.clone(), format!("value-{i}"), None),
            )
            .await;
            match r {
                Ok(Ok(_)) => acks.lock().unwrap().push(Ack {
                    key,
                    started,
                    done: Instant::now(),
                }),
                _ => {
                    failures += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        failures
    })
}

async fn kill_leader_during_writes(kind: StoreKind) {
    let opts = ClusterOpts {
        fast_timings: false,
        snapshot_count: Some(SNAPSHOT_COUNT),
        ..ClusterOpts::default()
    };
    let mut c = start(kind, 3, opts).await;
    let leader = leader_index(&c, &[0, 1, 2])
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();

    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(Mutex::new(Vec::new()));
    let writer = spawn_writer(c.client().await.unwrap(), stop.clone(), acks.clone());
    let n_acked = || acks.lock().unwrap().len();

    let deadline = Instant::now() + Duration::from_secs(10);
    while n_acked() < 50 {
        assert!(
            Instant::now() < deadline,
            "writes too slow before the kill\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let killed_at = Instant::now();
    c.kill9(leader);
    println!(
        "{}: killed leader m{leader} after {} acked writes",
        kind.name(),
        n_acked()
    );

    // Wait for enough writes after the kill (bounded), then stop the writer.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let after = acks
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.started >= killed_at)
            .count();
        if after >= WRITES_WHILE_DOWN {
            break;
        }
        if Instant::now() >= deadline {
            stop.store(true, Ordering::Relaxed);
            panic!(
                "only {after} writes acknowledged in 20 s after killing the leader\n{}",
                c.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let failures = tokio::time::timeout(Duration::from_secs(5), writer)
        .await
        .expect("writer did not stop")
        .expect("writer panicked");
    let acked: Vec<Ack> = acks.lock().unwrap().clone();
    let first_after = acked
        .iter()
        .find(|a| a.started >= killed_at)
        .map(|a| a.done - killed_at)
        .expect("a write after the kill");
    println!(
        "{}: first write acknowledged {first_after:?} after killing the leader \
         ({} acked, {failures} failed/timed out)",
        kind.name(),
        acked.len()
    );
    // The 3 s bound is issue 2's requirement on kelson-kv. Real etcd is the oracle for what
    // must hold (a new leader, no lost acknowledged write), not for timing: on 2 loaded cores
    // its randomized election sometimes needs ~4-5 s, so it only has to recover.
    let bound = match kind {
        StoreKind::Kelson => Duration::from_secs(3),
        StoreKind::Etcd => Duration::from_secs(10),
    };
    assert!(
        first_after <= bound,
        "{}: new leader took {first_after:?} (> {bound:?}) to serve a write\n{}",
        kind.name(),
        c.logs()
    );

    for &i in &survivors {
        if let Err(e) = has_all(&c, i, &acked, Duration::from_secs(5)).await {
            panic!("survivor m{i}: {e:#}\n{}", c.logs());
        }
    }

    // The killed member comes back and catches up.
    c.restart(leader).unwrap();
    if let Err(e) = c.wait_healthy(Duration::from_secs(20)).await {
        panic!("cluster not healthy after restarting m{leader}: {e:#}");
    }
    if let Err(e) = has_all(&c, leader, &acked, Duration::from_secs(15)).await {
        panic!("restarted m{leader} did not catch up: {e:#}\n{}", c.logs());
    }
    let rev = {
        let mut cl = c.client().await.unwrap();
        let r = cl.get("fo/", None).await.expect("linearizable get");
        r.header().map(|h| h.revision()).unwrap_or(0)
    };
    let mut hashes = Vec::new();
    for i in 0..3 {
        let h = wait_for(
            Duration::from_secs(10),
            &format!("hash_kv({rev}) on m{i}"),
            || async {
                let mut cl = c.member_client(i).await?;
                let h = cl.hash_kv(rev).await.context("hash_kv")?;
                Ok((h.hash(), h.compact_version()))
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
        hashes.push(h);
    }
    assert!(
        hashes.iter().all(|h| *h == hashes[0]),
        "hash_kv({rev}) differs between members (hash, compact revision): {hashes:?}\n{}",
        c.logs()
    );
    if kind == StoreKind::Kelson {
        let log = c.log(leader);
        assert!(
            log.contains("installed snapshot from leader"),
            "restarted m{leader} missed > {SNAPSHOT_COUNT} entries but its log shows no \
             snapshot install:\n{}",
            c.logs()
        );
    }

    // Full stop, restart from disk: nothing acknowledged is lost.
    for i in 0..3 {
        match c.terminate(i) {
            Ok(st) => println!("{}: m{i} stopped: {st}", kind.name()),
            Err(e) => panic!("m{i} did not stop on SIGTERM: {e:#}"),
        }
    }
    for i in 0..3 {
        c.restart(i).unwrap();
    }
    if let Err(e) = c.wait_healthy(Duration::from_secs(30)).await {
        panic!("cluster not healthy after a full restart: {e:#}");
    }
    for i in 0..3 {
        if let Err(e) = has_all(&c, i, &acked, Duration::from_secs(10)).await {
            panic!("after a full restart: {e:#}\n{}", c.logs());
        }
    }
    let cl = c.client().await.unwrap();
    let r = wait_for(
        Duration::from_secs(10),
        "a linearizable read after restart",
        || {
            let mut cl = cl.clone();
            async move {
                Ok(cl
                    .get(
                        "fo/",
                        Some(GetOptions::new().with_prefix().with_count_only()),
                    )
                    .await?)
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    let now = r.header().map(|h| h.revision()).unwrap_or(0);
    assert!(
        now >= rev,
        "revision went back from {rev} to {now} across a restart"
    );
    assert!(
        r.count() as usize >= acked.len(),
        "count {} < acked {}",
        r.count(),
        acked.len()
    );
}
