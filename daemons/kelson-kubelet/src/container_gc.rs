//! Garbage collection of dead containers and sandboxes, as upstream's `containerGC` with its
//! defaults: MinAge 0, MaxPerPodContainer 1, MaxContainers -1 (no node-wide cap).
//!
//! Design:
//! - Every `container-gc-period` (upstream's fixed minute) one pass lists the runtime's
//!   containers and sandboxes, then takes the set of pods that have a worker ([`Shared`]'s
//!   wakers: API pods and static pods alike). Listing first matters: a worker registers before
//!   it creates anything, so every container listed belongs to a pod in the set unless that
//!   pod has gone since. The first pass waits for the pod manager's first full list, so a
//!   restarted kubelet does not take every pod for deleted.
//! - Per (pod, container name), running containers are never touched. For a pod that exists,
//!   the newest instance is the current one whatever its state, and one dead instance before
//!   it is kept (MaxPerPodContainer 1): the exited container a CrashLoopBackOff status reports
//!   and the one `kubectl logs --previous` reads both stay. Upstream counts the newest
//!   instance among the dead ones when it has exited; this kubelet's `--previous` addresses
//!   the instance before the newest, so keeping it is what keeps `--previous` working while a
//!   container backs off. Older dead instances are removed with CRI `RemoveContainer`.
//! - For a pod that no longer exists every dead container goes, and so does every sandbox that
//!   is not ready (a ready one is its worker's teardown's or the start-up orphan clean-up's
//!   business). For a pod that exists, not-ready sandboxes other than its newest go once no
//!   kept container is in them (a sandbox recreated after its death leaves the old one).
//! - Static pods whose worker is gone are the static source's: left alone.
//! - Evicted and finished pods keep their newest containers (logs) until the pod is deleted;
//!   their worker's teardown removes everything then.
//! - The decision is a pure function ([`plan`]) over what the runtime listed, unit-tested;
//!   [`run`] applies it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1 as cri;
use tokio::sync::watch;

use crate::pod as podspec;
use crate::worker::Shared;

/// Upstream's `MaxPerPodContainer` default: dead instances kept besides the current one.
pub const MAX_PER_POD_CONTAINER: usize = 1;

/// A container as GC sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ctr {
    pub id: String,
    pub uid: String,
    pub name: String,
    pub sandbox: String,
    pub created_at: i64,
    pub running: bool,
}

/// A sandbox as GC sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sb {
    pub id: String,
    pub uid: String,
    pub created_at: i64,
    pub ready: bool,
    /// From the API (not a static pod).
    pub api: bool,
}

/// What one pass removes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub containers: Vec<String>,
    pub sandboxes: Vec<String>,
}

/// Decides one pass (see the module doc); `live` are the pods that have a worker.
pub fn plan(containers: &[Ctr], sandboxes: &[Sb], live: &HashSet<String>) -> Plan {
    let mut out = Plan::default();
    let static_uids: HashSet<&str> = sandboxes
        .iter()
        .filter(|s| !s.api)
        .map(|s| s.uid.as_str())
        .collect();
    let mut groups: HashMap<(&str, &str), Vec<&Ctr>> = HashMap::new();
    for c in containers.iter().filter(|c| !c.uid.is_empty()) {
        groups
            .entry((c.uid.as_str(), c.name.as_str()))
            .or_default()
            .push(c);
    }
    let mut kept_in: HashSet<&str> = HashSet::new();
    for ((uid, _), mut cs) in groups {
        if !live.contains(uid) && static_uids.contains(uid) {
            kept_in.extend(cs.iter().map(|c| c.sandbox.as_str()));
            continue;
        }
        cs.sort_by_key(|c| std::cmp::Reverse(c.created_at));
        let keep_dead = if live.contains(uid) {
            MAX_PER_POD_CONTAINER
        } else {
            0
        };
        let mut dead_kept = 0;
        for (i, c) in cs.iter().enumerate() {
            let current = i == 0 && live.contains(uid);
            if c.running || current {
                kept_in.insert(&c.sandbox);
            } else if dead_kept < keep_dead {
                dead_kept += 1;
                kept_in.insert(&c.sandbox);
            } else {
                out.containers.push(c.id.clone());
            }
        }
    }
    let mut newest: HashMap<&str, &Sb> = HashMap::new();
    for s in sandboxes {
        let e = newest.entry(s.uid.as_str()).or_insert(s);
        if s.created_at > e.created_at {
            *e = s;
        }
    }
    for s in sandboxes.iter().filter(|s| !s.ready && s.api) {
        let removable = if live.contains(s.uid.as_str()) {
            newest.get(s.uid.as_str()).map(|n| n.id.as_str()) != Some(s.id.as_str())
                && !kept_in.contains(s.id.as_str())
        } else {
            !kept_in.contains(s.id.as_str())
        };
        if removable {
            out.sandboxes.push(s.id.clone());
        }
    }
    out.containers.sort();
    out.sandboxes.sort();
    out
}

/// One pass against the runtime.
pub async fn collect(shared: &Shared) -> Result<Plan, crate::cri::CriError> {
    let node = HashMap::from([(
        podspec::LABEL_NODE.to_string(),
        shared.ctx.node_name.clone(),
    )]);
    let sbs = shared.cri.list_pod_sandboxes(node.clone()).await?;
    let cs = shared.cri.list_containers(None, node).await?;
    let live: HashSet<String> = shared.wakers.lock().keys().cloned().collect();
    let sbs: Vec<Sb> = sbs
        .into_iter()
        .map(|s| Sb {
            uid: s
                .labels
                .get(podspec::LABEL_POD_UID)
                .cloned()
                .unwrap_or_default(),
            api: s
                .annotations
                .get(podspec::ANN_CONFIG_SOURCE)
                .is_none_or(|v| v == "api"),
            ready: s.state == cri::PodSandboxState::SandboxReady as i32,
            created_at: s.created_at,
            id: s.id,
        })
        .collect();
    let cs: Vec<Ctr> = cs
        .into_iter()
        .map(|c| Ctr {
            uid: c
                .labels
                .get(podspec::LABEL_POD_UID)
                .cloned()
                .unwrap_or_default(),
            name: c
                .labels
                .get(podspec::LABEL_CONTAINER_NAME)
                .cloned()
                .unwrap_or_default(),
            running: c.state == cri::ContainerState::ContainerRunning as i32,
            created_at: c.created_at,
            sandbox: c.pod_sandbox_id,
            id: c.id,
        })
        .collect();
    let p = plan(&cs, &sbs, &live);
    for id in &p.containers {
        match shared.cri.remove_container(id).await {
            Ok(()) => tracing::debug!(container = %id, "removed a dead container"),
            Err(e) if e.is_not_found() => {}
            Err(e) => tracing::warn!(container = %id, error = %e, "container GC"),
        }
    }
    for id in &p.sandboxes {
        match shared.cri.remove_pod_sandbox(id).await {
            Ok(()) => tracing::debug!(sandbox = %id, "removed a dead sandbox"),
            Err(e) if e.is_not_found() => {}
            Err(e) => tracing::warn!(sandbox = %id, error = %e, "sandbox GC"),
        }
    }
    if !p.containers.is_empty() || !p.sandboxes.is_empty() {
        tracing::info!(
            containers = p.containers.len(),
            sandboxes = p.sandboxes.len(),
            "container garbage collected"
        );
    }
    Ok(p)
}

/// Runs a pass every `period` once `synced` (the pod manager's first list), until `stop`.
pub async fn run(
    shared: Arc<Shared>,
    period: Duration,
    mut synced: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) {
    tokio::select! {
        r = synced.wait_for(|s| *s) => { if r.is_err() { return; } }
        _ = stop.changed() => return,
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = stop.changed() => return,
        }
        if let Err(e) = collect(&shared).await {
            tracing::warn!(error = %e, "container GC");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str, uid: &str, name: &str, sb: &str, at: i64, running: bool) -> Ctr {
        Ctr {
            id: id.into(),
            uid: uid.into(),
            name: name.into(),
            sandbox: sb.into(),
            created_at: at,
            running,
        }
    }

    fn sb(id: &str, uid: &str, at: i64, ready: bool) -> Sb {
        Sb {
            id: id.into(),
            uid: uid.into(),
            created_at: at,
            ready,
            api: true,
        }
    }

    fn live(uids: &[&str]) -> HashSet<String> {
        uids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn keeps_the_current_instance_and_one_dead_per_container() {
        let sbs = [sb("s1", "p", 1, true)];
        // Running current: the newest dead one stays, older ones go.
        let cs = [
            c("c3", "p", "app", "s1", 3, true),
            c("c2", "p", "app", "s1", 2, false),
            c("c1", "p", "app", "s1", 1, false),
            c("c0", "p", "app", "s1", 0, false),
            c("o1", "p", "other", "s1", 1, false),
        ];
        let p = plan(&cs, &sbs, &live(&["p"]));
        assert_eq!(p.containers, vec!["c0", "c1"]);
        assert!(p.sandboxes.is_empty());
        // Exited current (backing off): it and the one before stay.
        let cs = [
            c("c2", "p", "app", "s1", 2, false),
            c("c1", "p", "app", "s1", 1, false),
            c("c0", "p", "app", "s1", 0, false),
        ];
        assert_eq!(plan(&cs, &sbs, &live(&["p"])).containers, vec!["c0"]);
    }

    #[test]
    fn deleted_pods_lose_dead_containers_and_dead_sandboxes() {
        let sbs = [sb("s1", "gone", 1, false), sb("s2", "gone2", 1, true)];
        let cs = [
            c("a", "gone", "app", "s1", 1, false),
            c("b", "gone2", "app", "s2", 1, true),
        ];
        let p = plan(&cs, &sbs, &live(&[]));
        assert_eq!(p.containers, vec!["a"]);
        // The ready sandbox (and its running container) is teardown's business.
        assert_eq!(p.sandboxes, vec!["s1"]);
    }

    #[test]
    fn old_dead_sandboxes_of_live_pods_go_when_empty() {
        let sbs = [
            sb("old", "p", 1, false),
            sb("older", "p", 0, false),
            sb("new", "p", 2, true),
        ];
        let cs = [
            c("cur", "p", "app", "new", 5, true),
            // The kept dead instance lives in the old sandbox: it stays.
            c("prev", "p", "app", "old", 4, false),
            c("ancient", "p", "app", "older", 3, false),
        ];
        let p = plan(&cs, &sbs, &live(&["p"]));
        assert_eq!(p.containers, vec!["ancient"]);
        assert_eq!(p.sandboxes, vec!["older"]);
        // The newest sandbox stays even when it is not ready (the pod finished).
        let sbs = [sb("only", "p", 1, false)];
        let cs = [c("x", "p", "app", "only", 1, false)];
        assert_eq!(plan(&cs, &sbs, &live(&["p"])), Plan::default());
    }

    #[test]
    fn static_pods_without_a_worker_are_left_to_the_static_source() {
        let mut s = sb("s", "st", 1, false);
        s.api = false;
        let cs = [c("x", "st", "app", "s", 1, false)];
        assert_eq!(plan(&cs, &[s], &live(&[])), Plan::default());
    }
}
