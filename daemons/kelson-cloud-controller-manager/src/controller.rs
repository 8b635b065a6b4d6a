//! Controller mode: watches Nodes, Services and the speakers' heartbeat Leases, and — while
//! this instance leads — runs the node and service controllers in one level-triggered pass
//! after every change and at least twice a second (speaker heartbeats expire by time, not by
//! events).
//!
//! Which nodes may announce: Ready (condition `Ready=True`), not labelled
//! `node.kubernetes.io/exclude-from-external-load-balancers` (upstream's opt-out), and with a
//! live speaker. A speaker is live while its Lease `kelson-speaker-<node>` keeps changing: the
//! controller times each renewal on its own clock (as client-go's leader election does), so
//! clocks of different machines are never compared. A speaker that stops cleanly deletes its
//! Lease and is dropped at once; one that dies is dropped after its lease duration.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Service};
use kube::runtime::watcher;
use kube::Api;
use tokio::sync::{watch, Notify};

use crate::config::{CcmConfig, InventoryNode};
use crate::informer::{self, Tasks};
use crate::nodes::{NodeController, ZONE_LABEL};
use crate::pools::{Allocator, Pool};
use crate::services::{Candidate, ServiceController};
use crate::Shared;

pub const SPEAKER_LABEL: &str = "kelson.io/speaker-node";
pub const EXCLUDE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";

/// Speaker heartbeats as observed on this clock.
#[derive(Debug, Default)]
pub struct SpeakerLiveness {
    seen: HashMap<String, (String, Instant)>,
}

impl SpeakerLiveness {
    /// Records the current Leases; returns the nodes whose speaker is live.
    pub fn observe(&mut self, leases: &[Arc<Lease>], now: Instant) -> Vec<String> {
        let mut live = Vec::new();
        let mut keep = HashMap::new();
        for l in leases {
            let Some(node) = l
                .metadata
                .labels
                .as_ref()
                .and_then(|m| m.get(SPEAKER_LABEL))
            else {
                continue;
            };
            let spec = l.spec.clone().unwrap_or_default();
            let stamp = format!("{:?}", spec.renew_time.map(|t| t.0));
            let since = match self.seen.get(node) {
                Some((s, t)) if *s == stamp => *t,
                _ => now,
            };
            let dur = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(6).max(1) as u64);
            if now.duration_since(since) < dur {
                live.push(node.clone());
            }
            keep.insert(node.clone(), (stamp, since));
        }
        self.seen = keep;
        live.sort();
        live
    }
}

fn is_ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Candidates to announce: Ready, not excluded, speaker live.
pub fn candidates(nodes: &[Arc<Node>], live_speakers: &[String]) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = nodes
        .iter()
        .filter(|n| is_ready(n))
        .filter(|n| {
            !n.metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key(EXCLUDE_LABEL))
        })
        .filter_map(|n| {
            let name = n.metadata.name.clone()?;
            live_speakers.contains(&name).then(|| Candidate {
                zone: n
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(ZONE_LABEL).cloned()),
                name,
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

pub async fn run(
    client: kube::Client,
    cfg: CcmConfig,
    shared: Arc<Shared>,
    mut leading: watch::Receiver<bool>,
    mut reloaded: watch::Receiver<(Vec<Pool>, Vec<InventoryNode>)>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let pools = cfg.build_pools()?;
    let mut reload_open = true;
    let mut reload_pending = false;
    let notify = Arc::new(Notify::new());
    let mut tasks = Tasks::default();
    let wcfg = watcher::Config::default();
    let nodes = informer::start(
        Api::<Node>::all(client.clone()),
        wcfg.clone(),
        notify.clone(),
        &mut tasks,
    );
    let services = informer::start(
        Api::<Service>::all(client.clone()),
        wcfg.clone(),
        notify.clone(),
        &mut tasks,
    );
    let leases = informer::start(
        Api::<Lease>::namespaced(client.clone(), &cfg.speaker_namespace),
        wcfg.labels(SPEAKER_LABEL),
        notify.clone(),
        &mut tasks,
    );
    tokio::select! {
        r = async {
            nodes.wait_until_ready().await?;
            services.wait_until_ready().await?;
            leases.wait_until_ready().await
        } => r?,
        _ = shutdown.changed() => return Ok(()),
    }
    shared.synced.store(true, Ordering::Relaxed);
    tracing::info!("caches synced");

    let mut node_ctl = NodeController::new(client.clone(), &cfg.nodes);
    let mut svc_ctl = ServiceController::new(client.clone(), Allocator::new(pools));
    let mut liveness = SpeakerLiveness::default();
    let mut was_leader = false;
    loop {
        // changed() in the select below marks the value seen, hence the flag.
        if reload_pending || (reload_open && reloaded.has_changed().unwrap_or(false)) {
            reload_pending = false;
            // New pools or inventory: start over from the Services' status, which drops (and
            // so re-allocates) addresses no longer in any pool.
            let (pools, inventory) = reloaded.borrow_and_update().clone();
            node_ctl = NodeController::new(client.clone(), &inventory);
            svc_ctl = ServiceController::new(client.clone(), Allocator::new(pools));
            was_leader = false;
            tracing::info!("pools and inventory reloaded");
        }
        let leader = *leading.borrow_and_update();
        shared.is_leader.store(leader, Ordering::Relaxed);
        let live = liveness.observe(&leases.state(), Instant::now());
        if leader {
            if !was_leader {
                svc_ctl.rebuild(&services.state());
            }
            node_ctl.reconcile(&nodes.state()).await;
            let cands = candidates(&nodes.state(), &live);
            svc_ctl.reconcile(&services.state(), &cands).await;
            *shared.allocations.lock() = svc_ctl.allocations();
            *shared.usage.lock() = svc_ctl.alloc.usage();
        }
        was_leader = leader;
        tokio::select! {
            _ = notify.notified() => {
                // Let a burst of events (our own writes echoing back) settle into one pass.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            r = leading.changed() => {
                if r.is_err() {
                    // No election (leader-elect=false): the sender is gone and we lead for good.
                    leading = watch::channel(true).1;
                }
            }
            r = reloaded.changed(), if reload_open => {
                reload_open = r.is_ok();
                reload_pending = reload_open;
            }
            _ = shutdown.changed() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lease(node: &str, renew: &str) -> Arc<Lease> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": format!("kelson-speaker-{node}"), "labels": {SPEAKER_LABEL: node}},
                "spec": {"leaseDurationSeconds": 2, "renewTime": renew}
            }))
            .unwrap(),
        )
    }

    #[test]
    fn liveness_uses_the_local_clock() {
        let mut l = SpeakerLiveness::default();
        let t0 = Instant::now();
        let a1 = lease("a", "2020-01-01T00:00:00.000000Z");
        let b1 = lease("b", "2020-01-01T00:00:00.000000Z");
        // Old renew times do not matter: first sight counts as a renewal now.
        assert_eq!(l.observe(&[a1.clone(), b1.clone()], t0), vec!["a", "b"]);
        let a2 = lease("a", "2020-01-01T00:00:01.000000Z");
        // b stops renewing; 3 s later only a (which renewed) is live.
        assert_eq!(
            l.observe(&[a2.clone(), b1.clone()], t0 + Duration::from_secs(1)),
            vec!["a", "b"]
        );
        assert_eq!(
            l.observe(&[a2.clone(), b1], t0 + Duration::from_millis(2500)),
            vec!["a"]
        );
        // A deleted Lease is gone at once.
        assert!(l.observe(&[], t0 + Duration::from_secs(3)).is_empty());
    }

    #[test]
    fn candidates_need_ready_and_speaker() {
        let node = |name: &str, ready: &str, extra: serde_json::Value| -> Arc<Node> {
            let mut labels = json!({ZONE_LABEL: "z1"});
            if let Some(m) = extra.as_object() {
                for (k, v) in m {
                    labels[k] = v.clone();
                }
            }
            Arc::new(
                serde_json::from_value(json!({
                    "metadata": {"name": name, "labels": labels},
                    "status": {"conditions": [{"type": "Ready", "status": ready}]}
                }))
                .unwrap(),
            )
        };
        let nodes = vec![
            node("a", "True", json!({})),
            node("b", "False", json!({})),
            node("c", "True", json!({EXCLUDE_LABEL: ""})),
            node("d", "True", json!({})),
        ];
        let live: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let c = candidates(&nodes, &live);
        assert_eq!(
            c,
            vec![Candidate {
                name: "a".into(),
                zone: Some("z1".into())
            }]
        );
    }
}
