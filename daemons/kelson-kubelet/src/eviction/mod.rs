//! Node-pressure eviction, as upstream's kubelet eviction manager.
//!
//! Every `housekeeping-interval` the manager observes the signals ([`signals`]), runs them
//! through the thresholds ([`thresholds`], [`state`]) and then:
//! - publishes the node conditions MemoryPressure / DiskPressure / PIDPressure (the node
//!   status task posts them at once when they change);
//! - leaves the matching `node.kubernetes.io/{memory,disk,pid}-pressure:NoSchedule` taints to
//!   the node lifecycle controller, as upstream (TaintNodesByCondition): the API server's
//!   NodeRestriction admission forbids a node to change its own taints;
//! - for the most urgent threshold met: disk pressure first removes unused images (image GC)
//!   and stops there if that relieved it; otherwise one pod is evicted, ranked per
//!   [`rank`], and the manager waits (up to 30 s) for the pod's worker to have killed it before
//!   the next pass — upstream evicts at most one pod per pass for the same reason: the next
//!   decision should see the effect of the last one.
//!
//! Eviction itself is the pod worker's job (it owns the pod's containers): the manager posts
//! an [`EvictRequest`] in [`crate::worker::Shared`], the worker stops the containers (grace 1 s
//! for hard thresholds, `eviction-max-pod-grace-period` capped by the pod's own for soft ones),
//! stops the sandbox and reports phase Failed, reason `Evicted`, upstream's message, a
//! `DisruptionTarget` condition and an `Evicted` event.
//!
//! Before the node-pressure thresholds, each pass checks the pods' own ephemeral-storage
//! limits (emptyDir `sizeLimit`, `limits.ephemeral-storage`; [`local_storage`]) and evicts
//! every pod over them at once; a pass that evicted for that reason stops there, as upstream.
//!
//! New pods are admitted as upstream: under memory pressure only non-BestEffort pods (or ones
//! tolerating the memory-pressure taint), under disk or PID pressure none (critical pods
//! always) — a rejected pod fails with reason `Evicted`, "The node had condition: [...]".

pub mod local_storage;
pub mod rank;
pub mod signals;
pub mod state;
pub mod thresholds;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use tokio::sync::{watch, Notify};

use crate::config::KubeletConfig;
use crate::image_gc::{ImageGc, Policy};
use crate::pod as podspec;
use crate::worker::Shared;
use rank::Candidate;
use signals::{PodRef, SignalSource};
pub use state::Pressure;
use thresholds::{PressureKind, Threshold, ThresholdError};

/// The taint the node lifecycle controller puts on a node with MemoryPressure (a BestEffort
/// pod tolerating it is admitted under memory pressure).
pub const TAINT_MEMORY: &str = "node.kubernetes.io/memory-pressure";
/// Upstream's grace for pods evicted by a hard threshold.
const IMMEDIATE_GRACE: i64 = 1;
/// How long the manager waits for an evicted pod to be killed (upstream's podCleanupTimeout).
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);

/// The eviction settings (reloadable).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub thresholds: Vec<Threshold>,
    pub transition: Duration,
    pub max_pod_grace: i64,
    pub interval: Duration,
    pub image_gc: Policy,
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(transparent)]
    Threshold(#[from] ThresholdError),
    #[error(transparent)]
    ImageGc(#[from] crate::image_gc::PolicyError),
}

impl Settings {
    pub fn from_config(cfg: &KubeletConfig) -> Result<Settings, SettingsError> {
        let thresholds = thresholds::parse_thresholds(
            cfg.eviction_hard.as_deref(),
            cfg.eviction_soft.as_deref(),
            cfg.eviction_soft_grace_period.as_deref(),
            cfg.eviction_minimum_reclaim.as_deref(),
        )?;
        let image_gc = Policy {
            high: cfg.image_gc_high_threshold,
            low: cfg.image_gc_low_threshold,
            min_age: Duration::from_secs(cfg.image_minimum_gc_age),
            period: Duration::from_secs(cfg.image_gc_period.max(1)),
            keep: cfg.pod_infra_container_image.iter().cloned().collect(),
        };
        image_gc.validate()?;
        Ok(Settings {
            thresholds,
            transition: Duration::from_secs(cfg.eviction_pressure_transition_period),
            max_pod_grace: cfg.eviction_max_pod_grace_period,
            interval: Duration::from_secs(cfg.housekeeping_interval.max(1)),
            image_gc,
        })
    }
}

/// A request to a pod worker to evict its pod.
#[derive(Debug, Clone, PartialEq)]
pub struct EvictRequest {
    pub message: String,
    /// Grace period for stopping the containers.
    pub grace: i64,
    /// Whether the pod gets a `DisruptionTarget` condition (node pressure: yes; a pod over its
    /// own storage limits: no, as upstream).
    pub disruption: bool,
}

/// Whether a new pod may start under `p` (upstream's eviction admission); `Err` is the
/// rejection message.
pub fn admit(p: Pressure, pod: &Pod) -> Result<(), String> {
    if p == Pressure::default() || rank::is_critical(pod) {
        return Ok(());
    }
    let only_memory = p.memory && !p.disk && !p.pid;
    if only_memory {
        let spec = pod.spec.clone().unwrap_or_default();
        let tolerates = spec.tolerations.iter().flatten().any(|t| {
            t.key.as_deref() == Some(TAINT_MEMORY)
                && t.effect
                    .as_deref()
                    .is_none_or(|e| e.is_empty() || e == "NoSchedule")
                || (t.key.is_none() && t.operator.as_deref() == Some("Exists"))
        });
        if crate::resources::qos_class(&spec) != "BestEffort" || tolerates {
            return Ok(());
        }
    }
    Err(format!(
        "The node had condition: [{}]. ",
        p.names().join(", ")
    ))
}

/// What the manager needs besides the settings.
pub struct Manager {
    pub shared: Arc<Shared>,
    pub source: Arc<dyn SignalSource>,
    pub gc: Option<Arc<ImageGc>>,
    /// Woken when the conditions change, so the node status goes out at once.
    pub status_wake: Arc<Notify>,
}

impl Manager {
    /// Runs until `stop`.
    pub async fn run(
        self,
        mut settings: watch::Receiver<Settings>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut st = state::State::default();
        loop {
            let s = settings.borrow_and_update().clone();
            let obs = self.source.observe();
            let d = st.update(&s.thresholds, s.transition, &obs, Instant::now());
            let before = std::mem::replace(&mut *self.shared.pressure.lock(), d.pressure);
            if before != d.pressure {
                tracing::info!(conditions = ?d.pressure.names(), "node pressure changed");
                self.status_wake.notify_one();
            }
            let over_limits = self.local_storage().await;
            if let Some((t, o)) = d.act.first().cloned().filter(|_| !over_limits) {
                self.reclaim(&s, &t, o, &mut stop).await;
            }
            tokio::select! {
                _ = tokio::time::sleep(s.interval) => {}
                r = settings.changed() => { if r.is_err() { return; } }
                _ = stop.changed() => return,
            }
        }
    }

    /// Evicts every pod over its own ephemeral-storage limits; true if any was.
    async fn local_storage(&self) -> bool {
        let pods: Vec<Arc<Pod>> = {
            let evicting = self.shared.evictions.lock();
            self.shared
                .pods
                .lock()
                .values()
                .filter(|p| local_storage::has_limits(p))
                .filter(|p| !evicting.contains_key(&podspec::uid(p)))
                .cloned()
                .collect()
        };
        if pods.is_empty() {
            return false;
        }
        // Writable layers by (pod UID, container name), newest instance (highest attempt).
        let mut writable: HashMap<(String, String), (u32, i128)> = HashMap::new();
        match self.shared.cri.list_container_stats().await {
            Ok(stats) => {
                for st in stats {
                    let Some(a) = st.attributes else { continue };
                    let (Some(uid), Some(name)) = (
                        a.labels.get(podspec::LABEL_POD_UID),
                        a.labels.get(podspec::LABEL_CONTAINER_NAME),
                    ) else {
                        continue;
                    };
                    let attempt = a.metadata.map(|m| m.attempt).unwrap_or(0);
                    let used = st
                        .writable_layer
                        .and_then(|w| w.used_bytes)
                        .map_or(0, |u| u.value as i128);
                    let e = writable
                        .entry((uid.clone(), name.clone()))
                        .or_insert((attempt, used));
                    if attempt > e.0 {
                        *e = (attempt, used);
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "container stats for local storage limits"),
        }
        let writable: HashMap<(String, String), i128> =
            writable.into_iter().map(|(k, (_, v))| (k, v)).collect();
        let mut evicted = false;
        for pod in pods {
            let ctx = self.shared.ctx.clone();
            let (p, w) = (pod.clone(), writable.clone());
            // Walking directories is blocking work.
            let usage = tokio::task::spawn_blocking(move || local_storage::measure(&ctx, &p, &w))
                .await
                .unwrap_or_default();
            let Some(message) = local_storage::violation(&pod, &usage) else {
                continue;
            };
            let uid = podspec::uid(&pod);
            tracing::info!(pod = %podspec::name(&pod), namespace = %podspec::namespace(&pod), %message, "evicting pod over its ephemeral-storage limits");
            self.shared.evictions.lock().insert(
                uid.clone(),
                EvictRequest {
                    message,
                    grace: 0,
                    disruption: false,
                },
            );
            self.shared.wake_pod(&uid);
            evicted = true;
        }
        evicted
    }

    async fn reclaim(
        &self,
        s: &Settings,
        t: &Threshold,
        mut observed: signals::Observation,
        stop: &mut watch::Receiver<bool>,
    ) {
        if t.signal.pressure() == PressureKind::Disk {
            if let Some(gc) = &self.gc {
                let r = gc.delete_unused(&s.image_gc).await;
                if !r.removed.is_empty() {
                    tracing::info!(signal = %t.signal, images = r.removed.len(), freed = r.freed, "reclaimed disk by removing unused images");
                    let obs = self.source.observe();
                    match state::is_met(t, &obs, true) {
                        None => return,
                        Some(o) => observed = o,
                    }
                }
            }
        }
        let Some((cand, msg)) = self.pick(t, observed).await else {
            tracing::warn!(signal = %t.signal, "eviction threshold met but no pod can be evicted");
            return;
        };
        let grace = if t.hard {
            IMMEDIATE_GRACE
        } else {
            let own = cand
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
                .unwrap_or(30);
            s.max_pod_grace.min(own).max(0)
        };
        let uid = podspec::uid(&cand.pod);
        tracing::info!(pod = %podspec::name(&cand.pod), namespace = %podspec::namespace(&cand.pod), signal = %t.signal, message = %msg, "evicting pod");
        self.shared.evictions.lock().insert(
            uid.clone(),
            EvictRequest {
                message: msg,
                grace,
                disruption: true,
            },
        );
        self.shared.wake_pod(&uid);
        // Wait for the worker to have killed the pod (or for it to be gone).
        let deadline = Instant::now() + CLEANUP_TIMEOUT + Duration::from_secs(grace as u64);
        while Instant::now() < deadline {
            let pending = self.shared.evictions.lock().contains_key(&uid);
            if !pending || !self.shared.pods.lock().contains_key(&uid) {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// The first pod in eviction order, with its message.
    async fn pick(
        &self,
        t: &Threshold,
        observed: signals::Observation,
    ) -> Option<(Candidate, String)> {
        let pods: Vec<Arc<Pod>> = self
            .shared
            .pods
            .lock()
            .values()
            .filter(|p| !rank::is_critical(p))
            .cloned()
            .collect();
        if pods.is_empty() {
            return None;
        }
        // Running containers by pod UID (one CRI call for all pods).
        let mut running: HashMap<String, Vec<(String, String)>> = HashMap::new();
        match self.shared.cri.list_containers(None, HashMap::new()).await {
            Ok(cs) => {
                for c in cs {
                    if c.state != k8s_cri::v1::ContainerState::ContainerRunning as i32 {
                        continue;
                    }
                    if let (Some(uid), Some(name)) = (
                        c.labels.get(podspec::LABEL_POD_UID),
                        c.labels.get(podspec::LABEL_CONTAINER_NAME),
                    ) {
                        running
                            .entry(uid.clone())
                            .or_default()
                            .push((name.clone(), c.id.clone()));
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "listing containers for eviction ranking"),
        }
        let ctx = &self.shared.ctx;
        let mut cands: Vec<Candidate> = pods
            .into_iter()
            .map(|pod| {
                let uid = podspec::uid(&pod);
                let r = PodRef {
                    cgroup: podspec::cgroup_parent(ctx, &pod)
                        .trim_start_matches('/')
                        .to_string(),
                    containers: running.remove(&uid).unwrap_or_default(),
                    dirs: vec![podspec::pod_dir(ctx, &uid), podspec::log_dir(ctx, &pod)],
                    uid,
                };
                Candidate {
                    usage: self.source.pod_usage(&r),
                    pod,
                }
            })
            .collect();
        rank::rank(t.signal, &mut cands);
        let first = cands.into_iter().next()?;
        let msg = rank::message(t, observed, &first);
        Some((first, msg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).unwrap()
    }

    #[test]
    fn admission_follows_upstream() {
        let be = pod(json!({"containers": [{"name": "c"}]}));
        let burst = pod(
            json!({"containers": [{"name": "c", "resources": {"requests": {"memory": "1Mi"}}}]}),
        );
        let tolerant = pod(
            json!({"containers": [{"name": "c"}], "tolerations": [{"key": TAINT_MEMORY, "operator": "Exists", "effect": "NoSchedule"}]}),
        );
        let mem = Pressure {
            memory: true,
            ..Default::default()
        };
        let disk = Pressure {
            disk: true,
            ..Default::default()
        };
        assert!(admit(Pressure::default(), &be).is_ok());
        assert_eq!(
            admit(mem, &be),
            Err("The node had condition: [MemoryPressure]. ".into())
        );
        assert!(admit(mem, &burst).is_ok());
        assert!(admit(mem, &tolerant).is_ok());
        assert!(admit(disk, &burst).is_err());
    }
}
