//! One worker task per pod: drive the runtime towards the spec, report status, tear down.
//!
//! The worker is a level-triggered loop. Each pass (on a pod update, or every second) it looks
//! at what the runtime has for this pod — found by the pod-UID label, so a restarted kubelet
//! adopts running sandboxes and containers instead of restarting them — and does the next
//! step: write the CNI config, run the sandbox, run init containers one at a time, then start
//! or restart containers per `restartPolicy`. It then computes the pod status from the runtime
//! state and patches `pods/status` when it changed.
//!
//! Volume contents are refreshed every `VOLUME_RESYNC` (a failed set-up every pass); probes
//! run in their own tasks ([`crate::probe`]) and wake the worker when a result changes.
//!
//! Restarts back off like upstream: the first restart is immediate, then 10 s, doubling to
//! 5 min, measured from the container's finish time; while backing off the container reports
//! `Waiting/CrashLoopBackOff`. Image and config errors are remembered per container and shown
//! as its waiting reason (`ErrImageNeverPull`, `ErrImagePull`, `CreateContainerConfigError`).
//!
//! Deletion: when the pod gets a deletionTimestamp the worker stops all containers with the
//! grace period (StopContainer's timeout: SIGTERM, then SIGKILL), removes them, stops and
//! removes the sandbox, removes the pod's volume dir and finally deletes the Pod with grace 0
//! and a UID precondition. A pod that vanished from the API is torn down the same way, quickly.
//!
//! Eviction ([`crate::eviction`]): the eviction manager leaves an `EvictRequest` in [`Shared`]
//! and wakes the worker, which kills the pod with the request's grace, stops its sandbox and
//! reports it Failed/Evicted — the worker does it because it alone drives this pod's
//! containers, so nothing can restart them in between. A new pod (no sandbox, never started)
//! first passes the eviction admission check under node pressure.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::cni::{write_conf, CniSettings};
use crate::cri::Cri;
use crate::events::Recorder;
use crate::pod::{self as podspec, ContainerFailure, ContainerInputs, Lookups, PodContext};
use crate::probe::{self, ContainerProbers};

const BACKOFF_INITIAL: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// How often a worker re-checks the runtime without a pod update.
pub const RESYNC: Duration = Duration::from_secs(1);
/// How often configMap/secret/downwardAPI/projected volume contents are refreshed (upstream
/// refreshes them on its pod sync, about once a minute); a failed set-up is retried every pass.
/// Reading the objects on every 1 s pass cost one GET per volume per pod per second.
const VOLUME_RESYNC: Duration = Duration::from_secs(10);
/// Grace used when a pod disappeared from the API without a graceful delete.
const ORPHAN_GRACE: i64 = 2;

/// What every worker shares.
pub struct Shared {
    pub cri: Cri,
    pub client: kube::Client,
    pub ctx: PodContext,
    /// CNI settings once the node's podCIDR is known.
    pub cni: Mutex<Option<CniSettings>>,
    pub cni_conf_dir: std::path::PathBuf,
    /// Last phase each pod reported (for the RunningPods D-Bus property).
    pub phases: Mutex<HashMap<String, String>>,
    /// Events about pods (probe failures, kills, hook failures).
    pub recorder: Recorder,
    /// Projected service account tokens, shared by all workers (refreshed at 80% of life).
    pub tokens: crate::volumes::TokenCache,
    /// Pods whose workers run them (not terminal), for eviction ranking.
    pub pods: Mutex<HashMap<String, Arc<Pod>>>,
    /// Evictions the eviction manager asked for, by pod UID; the worker removes its entry once
    /// the pod is killed and reported Failed.
    pub evictions: Mutex<HashMap<String, crate::eviction::EvictRequest>>,
    /// The node conditions from the eviction signals (admission and node status).
    pub pressure: Mutex<crate::eviction::Pressure>,
    /// Each worker's wake-up, so a request reaches it without waiting for its resync.
    pub wakers: Mutex<HashMap<String, Arc<tokio::sync::Notify>>>,
}

impl Shared {
    /// Wakes the worker of `uid` (if any).
    pub fn wake_pod(&self, uid: &str) {
        if let Some(w) = self.wakers.lock().get(uid) {
            w.notify_one();
        }
    }

    pub fn running_pods(&self) -> u32 {
        self.phases
            .lock()
            .values()
            .filter(|p| *p == "Running")
            .count() as u32
    }
}

#[derive(Default, Debug)]
struct ContainerState {
    /// Current back-off step (None before the first restart).
    backoff: Option<Duration>,
    /// Why the container is not running, if we know better than the runtime.
    failure: Option<ContainerFailure>,
    /// When an image pull last failed (for ImagePullBackOff).
    pull_failed_at: Option<Instant>,
}

/// The runtime's view of one container name in the current sandbox.
#[derive(Debug, Clone)]
struct Observed {
    latest: cri::ContainerStatus,
    previous: Option<cri::ContainerStatus>,
    restart_count: u32,
}

pub struct Worker {
    shared: Arc<Shared>,
    uid: String,
    rx: watch::Receiver<Option<Arc<Pod>>>,
    containers: HashMap<String, ContainerState>,
    sandbox: Option<(String, String)>,
    last_status: Option<Value>,
    start_time: Option<String>,
    terminal: bool,
    /// Back-off for failed RunPodSandbox: (next attempt, current step).
    sandbox_retry: Option<(Instant, Duration)>,
    /// The runtime state `sync` saw, reused by `report` when `acted` stayed false (one CRI
    /// round per pass instead of two for a pod that is just running).
    observed: Option<HashMap<String, Observed>>,
    acted: AtomicBool,
    /// The last volume set-up error reported as a FailedMount event.
    mount_error: Option<String>,
    /// Volumes prepared at: contents are refreshed every VOLUME_RESYNC, not every pass.
    volumes: Option<(Instant, HashMap<String, std::path::PathBuf>)>,
    /// Probe tasks per container name, for the container instance they were started for.
    probers: HashMap<String, ContainerProbers>,
    /// Probe results (and eviction requests) wake the worker at once.
    wake: Arc<tokio::sync::Notify>,
    /// Passed eviction admission (or adopted from a previous run).
    admitted: bool,
}

fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn ns_to_rfc3339(ns: i64) -> Option<String> {
    if ns <= 0 {
        return None;
    }
    k8s_openapi::jiff::Timestamp::from_nanosecond(ns as i128)
        .ok()
        .and_then(|t| t.round(k8s_openapi::jiff::Unit::Second).ok())
        .map(|t| t.to_string())
}

fn state_of(s: &cri::ContainerStatus) -> cri::ContainerState {
    cri::ContainerState::try_from(s.state).unwrap_or(cri::ContainerState::ContainerUnknown)
}

fn restart_count_of(s: &cri::ContainerStatus) -> u32 {
    s.annotations
        .get(podspec::ANN_RESTART_COUNT)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

impl Worker {
    pub fn new(shared: Arc<Shared>, uid: String, rx: watch::Receiver<Option<Arc<Pod>>>) -> Self {
        Worker {
            shared,
            uid,
            rx,
            containers: HashMap::new(),
            sandbox: None,
            last_status: None,
            start_time: None,
            terminal: false,
            sandbox_retry: None,
            probers: HashMap::new(),
            volumes: None,
            observed: None,
            acted: AtomicBool::new(false),
            mount_error: None,
            wake: Arc::new(tokio::sync::Notify::new()),
            admitted: false,
        }
    }

    /// Runs until the pod is gone (deleted in the API, or vanished).
    pub async fn run(mut self) {
        self.shared
            .wakers
            .lock()
            .insert(self.uid.clone(), self.wake.clone());
        self.run_loop().await;
        self.shared.wakers.lock().remove(&self.uid);
        self.shared.pods.lock().remove(&self.uid);
        self.shared.evictions.lock().remove(&self.uid);
    }

    async fn run_loop(&mut self) {
        loop {
            let pod = self.rx.borrow_and_update().clone();
            match pod {
                None => {
                    self.teardown(ORPHAN_GRACE).await;
                    self.shared.phases.lock().remove(&self.uid);
                    return;
                }
                Some(p) if p.metadata.deletion_timestamp.is_some() => {
                    let grace = p
                        .metadata
                        .deletion_grace_period_seconds
                        .or(p
                            .spec
                            .as_ref()
                            .and_then(|s| s.termination_grace_period_seconds))
                        .unwrap_or(30);
                    self.probers.clear();
                    self.teardown_pod(Some(&p), grace).await;
                    if !podspec::is_static(&p) {
                        self.delete_pod(&p).await;
                    }
                    self.shared.phases.lock().remove(&self.uid);
                    return;
                }
                Some(p) => {
                    let eviction = self.shared.evictions.lock().get(&self.uid).cloned();
                    match eviction {
                        Some(req) if !self.terminal => self.evict(&p, req).await,
                        _ => {
                            if let Err(e) = self.sync(&p, &p).await {
                                tracing::warn!(pod = %podspec::name(&p), namespace = %podspec::namespace(&p), error = %e, "pod sync failed");
                            }
                            self.report(&p).await;
                        }
                    }
                    if self.terminal {
                        self.shared.pods.lock().remove(&self.uid);
                        self.shared.evictions.lock().remove(&self.uid);
                    } else {
                        self.shared.pods.lock().insert(self.uid.clone(), p.clone());
                    }
                }
            }
            tokio::select! {
                r = self.rx.changed() => {
                    if r.is_err() {
                        // The manager dropped us (shutdown): leave containers running.
                        return;
                    }
                }
                _ = tokio::time::sleep(RESYNC) => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    fn uid_labels(&self) -> HashMap<String, String> {
        HashMap::from([(podspec::LABEL_POD_UID.to_string(), self.uid.clone())])
    }

    /// The newest ready sandbox of this pod, adopting one from a previous kubelet run.
    async fn find_sandbox(&self) -> Result<Option<(String, String)>, crate::cri::CriError> {
        let mut sbs = self
            .shared
            .cri
            .list_pod_sandboxes(self.uid_labels())
            .await?;
        sbs.sort_by_key(|s| std::cmp::Reverse(s.created_at));
        for sb in sbs {
            if sb.state == cri::PodSandboxState::SandboxReady as i32 {
                let st = self.shared.cri.pod_sandbox_status(&sb.id).await?;
                let ip = st.network.map(|n| n.ip).unwrap_or_default();
                return Ok(Some((sb.id, ip)));
            }
        }
        Ok(None)
    }

    async fn sync(&mut self, pod: &Pod, pod_arc: &Arc<Pod>) -> anyhow::Result<()> {
        self.observed = None;
        let spec = pod.spec.clone().unwrap_or_default();
        if self.terminal {
            return Ok(());
        }
        let phase_in_api = pod.status.as_ref().and_then(|s| s.phase.clone());
        if matches!(phase_in_api.as_deref(), Some("Succeeded" | "Failed")) {
            // Terminal phases are final: make sure nothing runs (the sandbox neither: its IP
            // goes back to the pool), keep the status and the containers (logs).
            self.terminal = true;
            self.stop_all(None, 0).await;
            if let Ok(sbs) = self.shared.cri.list_pod_sandboxes(self.uid_labels()).await {
                for sb in sbs {
                    if sb.state == cri::PodSandboxState::SandboxReady as i32 {
                        let _ = self.shared.cri.stop_pod_sandbox(&sb.id).await;
                    }
                }
            }
            self.sandbox = None;
            return Ok(());
        }
        // 1. Sandbox.
        if self.sandbox.is_none() {
            self.sandbox = self.find_sandbox().await?;
            if !self.admitted {
                let started = pod.status.as_ref().and_then(|s| s.start_time.as_ref());
                if self.sandbox.is_none() && started.is_none() {
                    let pressure = *self.shared.pressure.lock();
                    if let Err(msg) = crate::eviction::admit(pressure, pod) {
                        self.reject(pod, msg).await;
                        return Ok(());
                    }
                }
                self.admitted = true;
            }
        } else if let Some((id, _)) = &self.sandbox {
            let st = self.shared.cri.pod_sandbox_status(id).await;
            if !st.is_ok_and(|s| s.state == cri::PodSandboxState::SandboxReady as i32) {
                self.sandbox = None;
            }
        }
        let sandbox_cfg_attempt = 0;
        if self.sandbox.is_none()
            && self
                .sandbox_retry
                .is_some_and(|(at, _)| Instant::now() < at)
        {
            return Ok(());
        }
        if self.sandbox.is_none() {
            let host_net = spec.host_network.unwrap_or(false);
            if !host_net {
                let cni = self.shared.cni.lock().clone();
                match cni {
                    Some(c) => {
                        write_conf(&self.shared.cni_conf_dir, &c)?;
                    }
                    None => {
                        self.fail_all(&spec, ContainerFailure::new(
                            "ContainerCreating",
                            "network is not ready: the node has no podCIDR (set Node.spec.podCIDR or --pod-cidr)",
                        ));
                        return Ok(());
                    }
                }
            }
            // A sandbox that died takes its containers with it (upstream: a new sandbox
            // restarts every container); clear out leftovers first.
            self.remove_dead_sandboxes().await;
            let cfg = podspec::sandbox_config(&self.shared.ctx, pod, sandbox_cfg_attempt);
            if let (_, Some(w)) = podspec::dns_config(&self.shared.ctx, pod, &Default::default()) {
                self.shared
                    .recorder
                    .pod_event(pod, None, true, "MissingClusterDNS", w);
            }
            if let Err(e) = std::fs::create_dir_all(&cfg.log_directory) {
                tracing::warn!(dir = %cfg.log_directory, error = %e, "creating the pod log dir");
            }
            let id = match self.shared.cri.run_pod_sandbox(cfg).await {
                Ok(id) => {
                    self.sandbox_retry = None;
                    id
                }
                Err(e) => {
                    // Retry after 2 s, doubling up to 1 min: a broken runtime config must not
                    // turn into a tight loop of failing runc invocations.
                    let step = self
                        .sandbox_retry
                        .map(|(_, d)| (d * 2).min(Duration::from_secs(60)))
                        .unwrap_or(Duration::from_secs(2));
                    self.sandbox_retry = Some((Instant::now() + step, step));
                    self.fail_all(
                        &spec,
                        ContainerFailure::new(
                            "ContainerCreating",
                            format!("Failed to create pod sandbox: {}", e.message()),
                        ),
                    );
                    return Err(e.into());
                }
            };
            let st = self.shared.cri.pod_sandbox_status(&id).await?;
            let ip = st.network.map(|n| n.ip).unwrap_or_default();
            tracing::info!(pod = %podspec::name(pod), sandbox = %id, %ip, "sandbox running");
            self.sandbox = Some((id, ip));
        }
        let (sb_id, pod_ip) = self.sandbox.clone().unwrap_or_default();

        // 2. Volumes (re-done each pass: configMap/secret contents follow their objects).
        let mut look = Lookups::new(self.shared.client.clone(), podspec::namespace(pod));
        let fresh = self
            .volumes
            .as_ref()
            .filter(|(at, _)| at.elapsed() < VOLUME_RESYNC)
            .map(|(_, v)| v.clone());
        let volumes = match fresh {
            Some(v) => v,
            None => match podspec::prepare_volumes(
                &self.shared.ctx,
                pod,
                &pod_ip,
                &mut look,
                &self.shared.tokens,
            )
            .await
            {
                Ok(v) => {
                    self.volumes = Some((Instant::now(), v.clone()));
                    v
                }
                Err(f) => {
                    // Upstream's FailedMount event, once per distinct error (the set-up is
                    // retried every pass).
                    if self.mount_error.as_deref() != Some(f.message.as_str()) {
                        self.mount_error = Some(f.message.clone());
                        self.shared.recorder.pod_event(
                            pod,
                            None,
                            true,
                            "FailedMount",
                            f.message.clone(),
                        );
                    }
                    self.fail_all(&spec, f);
                    return Ok(());
                }
            },
        };
        self.mount_error = None;
        let observed = self.observe(&sb_id).await?;
        self.acted.store(false, Ordering::Relaxed);
        self.observed = Some(observed.clone());
        let policy = spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into());

        // 3. Init containers, in order, one at a time.
        for c in spec.init_containers.iter().flatten() {
            match observed.get(&c.name) {
                Some(o) => match state_of(&o.latest) {
                    cri::ContainerState::ContainerExited if o.latest.exit_code == 0 => continue,
                    cri::ContainerState::ContainerExited => {
                        if policy == "Never" {
                            return Ok(()); // the pod is Failed; status says so
                        }
                        self.maybe_restart(pod, c, &sb_id, &pod_ip, &volumes, &mut look, Some(o))
                            .await;
                        return Ok(());
                    }
                    cri::ContainerState::ContainerCreated => {
                        self.start_existing(c, &o.latest.id).await;
                        return Ok(());
                    }
                    _ => return Ok(()),
                },
                None => {
                    self.start_new(pod, c, &sb_id, &pod_ip, &volumes, &mut look, 0)
                        .await;
                    return Ok(());
                }
            }
        }

        // 4. Containers.
        for c in &spec.containers {
            match observed.get(&c.name) {
                None => {
                    self.start_new(pod, c, &sb_id, &pod_ip, &volumes, &mut look, 0)
                        .await;
                }
                Some(o) => match state_of(&o.latest) {
                    cri::ContainerState::ContainerRunning => {
                        self.containers.entry(c.name.clone()).or_default().failure = None;
                        self.run_probes(pod_arc, c, &o.latest, &pod_ip).await;
                    }
                    cri::ContainerState::ContainerCreated => {
                        self.start_existing(c, &o.latest.id).await
                    }
                    cri::ContainerState::ContainerExited => {
                        self.probers.remove(&c.name);
                        let restart = match policy.as_str() {
                            "Never" => false,
                            "OnFailure" => o.latest.exit_code != 0,
                            _ => true,
                        };
                        if restart {
                            self.maybe_restart(
                                pod,
                                c,
                                &sb_id,
                                &pod_ip,
                                &volumes,
                                &mut look,
                                Some(o),
                            )
                            .await;
                        }
                    }
                    cri::ContainerState::ContainerUnknown => {}
                },
            }
        }
        Ok(())
    }

    /// Starts the probes of a running container instance (once per instance) and acts on a
    /// failed liveness/startup probe: "Killing" event, preStop, stop; restartPolicy and
    /// back-off then decide on the restart.
    async fn run_probes(
        &mut self,
        pod: &Arc<Pod>,
        c: &Container,
        st: &cri::ContainerStatus,
        pod_ip: &str,
    ) {
        let has_probes =
            c.liveness_probe.is_some() || c.readiness_probe.is_some() || c.startup_probe.is_some();
        if !has_probes {
            self.probers.remove(&c.name);
            return;
        }
        if self.probers.get(&c.name).map(|p| p.container_id.as_str()) != Some(st.id.as_str()) {
            let target = probe::Target {
                cri: self.shared.cri.clone(),
                container: c.clone(),
                container_id: st.id.clone(),
                pod_ip: self.probe_ip(pod, pod_ip),
            };
            let p = ContainerProbers::spawn(
                target,
                pod.clone(),
                st.started_at,
                self.shared.recorder.clone(),
                self.wake.clone(),
            );
            self.probers.insert(c.name.clone(), p);
        }
        let kill = self.probers.get(&c.name).and_then(|p| p.status.lock().kill);
        let Some(kind) = kill else { return };
        let which = match kind {
            probe::Kind::Startup => "startup",
            _ => "liveness",
        };
        self.shared.recorder.pod_event(
            pod,
            Some(&c.name),
            false,
            "Killing",
            format!(
                "Container {} failed {which} probe, will be restarted",
                c.name
            ),
        );
        let probe_grace = match kind {
            probe::Kind::Startup => c.startup_probe.as_ref(),
            _ => c.liveness_probe.as_ref(),
        }
        .and_then(|p| p.termination_grace_period_seconds);
        let grace = probe_grace.unwrap_or_else(|| pod_grace(pod));
        self.probers.remove(&c.name);
        self.kill_container(pod, Some(c), &st.id, pod_ip, grace)
            .await;
    }

    /// The address probes and hooks use: the pod IP, or the node's for hostNetwork pods.
    fn probe_ip(&self, pod: &Pod, pod_ip: &str) -> String {
        let host_net = pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        if host_net || pod_ip.is_empty() {
            self.shared.ctx.node_ip.clone()
        } else {
            pod_ip.to_string()
        }
    }

    /// preStop (when the container has one) then StopContainer with what is left of the
    /// grace period — upstream counts the hook against the grace and gives the runtime at
    /// least 2 s more.
    async fn kill_container(
        &self,
        pod: &Pod,
        c: Option<&Container>,
        id: &str,
        pod_ip: &str,
        grace: i64,
    ) {
        self.acted.store(true, Ordering::Relaxed);
        let grace = grace.max(0);
        let started = Instant::now();
        if let Some(h) = c
            .and_then(|c| c.lifecycle.as_ref())
            .and_then(|l| l.pre_stop.as_ref())
            .filter(|_| grace > 0)
        {
            let c = c.cloned().unwrap_or_default();
            let target = probe::Target {
                cri: self.shared.cri.clone(),
                container: c.clone(),
                container_id: id.to_string(),
                pod_ip: self.probe_ip(pod, pod_ip),
            };
            let limit = Duration::from_secs(grace as u64);
            match tokio::time::timeout(limit, probe::run_hook(h, &target, limit)).await {
                Ok(Ok(())) => {}
                Ok(Err(msg)) => self.shared.recorder.pod_event(
                    pod,
                    Some(&c.name),
                    true,
                    "FailedPreStopHook",
                    msg,
                ),
                Err(_) => self.shared.recorder.pod_event(
                    pod,
                    Some(&c.name),
                    true,
                    "FailedPreStopHook",
                    format!("PreStopHook failed to complete within the grace period ({grace}s)"),
                ),
            }
        }
        let left = if grace == 0 {
            0
        } else {
            (grace - started.elapsed().as_secs() as i64).max(2)
        };
        if let Err(e) = self.shared.cri.stop_container(id, left).await {
            if !e.is_not_found() {
                tracing::warn!(container = %id, error = %e, "stopping a container");
            }
        }
    }

    fn fail_all(&mut self, spec: &k8s_openapi::api::core::v1::PodSpec, f: ContainerFailure) {
        for c in spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
        {
            self.containers.entry(c.name.clone()).or_default().failure = Some(f.clone());
        }
    }

    /// Latest and previous container per name in the sandbox (older ones are removed).
    async fn observe(&self, sb_id: &str) -> anyhow::Result<HashMap<String, Observed>> {
        let list = self
            .shared
            .cri
            .list_containers(Some(sb_id), self.uid_labels())
            .await?;
        let mut by_name: HashMap<String, Vec<cri::Container>> = HashMap::new();
        for c in list {
            let name = c
                .labels
                .get(podspec::LABEL_CONTAINER_NAME)
                .cloned()
                .unwrap_or_default();
            by_name.entry(name).or_default().push(c);
        }
        let mut out = HashMap::new();
        for (name, mut cs) in by_name {
            cs.sort_by_key(|c| std::cmp::Reverse(c.created_at));
            // Upstream keeps one dead instance for `logs --previous`; older ones go.
            for old in cs.iter().skip(2) {
                let _ = self.shared.cri.remove_container(&old.id).await;
            }
            let latest = match self.shared.cri.container_status(&cs[0].id).await {
                Ok(s) => s,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e.into()),
            };
            let previous = match cs.get(1) {
                Some(p) => self.shared.cri.container_status(&p.id).await.ok(),
                None => None,
            };
            let restart_count = restart_count_of(&latest);
            out.insert(
                name,
                Observed {
                    latest,
                    previous,
                    restart_count,
                },
            );
        }
        Ok(out)
    }

    async fn start_existing(&mut self, c: &Container, id: &str) {
        self.acted.store(true, Ordering::Relaxed);
        if let Err(e) = self.shared.cri.start_container(id).await {
            self.containers.entry(c.name.clone()).or_default().failure =
                Some(ContainerFailure::new("RunContainerError", e.message()));
        }
    }

    /// Restart an exited container unless it is backing off.
    #[allow(clippy::too_many_arguments)]
    async fn maybe_restart(
        &mut self,
        pod: &Pod,
        c: &Container,
        sb_id: &str,
        pod_ip: &str,
        volumes: &HashMap<String, std::path::PathBuf>,
        look: &mut Lookups,
        o: Option<&Observed>,
    ) {
        let finished = o.map(|o| o.latest.finished_at).unwrap_or(0);
        let st = self.containers.entry(c.name.clone()).or_default();
        if let Some(b) = st.backoff {
            let now_ns = k8s_openapi::jiff::Timestamp::now().as_nanosecond() as i64;
            let elapsed = Duration::from_nanos(now_ns.saturating_sub(finished).max(0) as u64);
            if elapsed < b {
                st.failure = Some(ContainerFailure::new(
                    "CrashLoopBackOff",
                    format!(
                        "back-off {}s restarting failed container={} pod={}_{}({})",
                        b.as_secs(),
                        c.name,
                        podspec::name(pod),
                        podspec::namespace(pod),
                        self.uid
                    ),
                ));
                return;
            }
        }
        st.backoff = Some(match st.backoff {
            None => BACKOFF_INITIAL,
            Some(b) => (b * 2).min(BACKOFF_MAX),
        });
        let next = o.map(|o| o.restart_count + 1).unwrap_or(0);
        self.start_new(pod, c, sb_id, pod_ip, volumes, look, next)
            .await;
    }

    /// Image, env, mounts, CreateContainer, StartContainer; failures become waiting reasons.
    #[allow(clippy::too_many_arguments)]
    async fn start_new(
        &mut self,
        pod: &Pod,
        c: &Container,
        sb_id: &str,
        pod_ip: &str,
        volumes: &HashMap<String, std::path::PathBuf>,
        look: &mut Lookups,
        restart_count: u32,
    ) {
        self.acted.store(true, Ordering::Relaxed);
        let result = self
            .create_and_start(pod, c, sb_id, pod_ip, volumes, look, restart_count)
            .await;
        let st = self.containers.entry(c.name.clone()).or_default();
        match result {
            Ok(id) => {
                st.failure = None;
                tracing::info!(pod = %podspec::name(pod), container = %c.name, id = %id, restart_count, "container started");
            }
            Err(f) => {
                tracing::info!(pod = %podspec::name(pod), container = %c.name, reason = %f.reason, message = %f.message, "container not started");
                if f.reason == "ErrImagePull" {
                    st.pull_failed_at = Some(Instant::now());
                }
                st.failure = Some(f);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn create_and_start(
        &mut self,
        pod: &Pod,
        c: &Container,
        sb_id: &str,
        pod_ip: &str,
        volumes: &HashMap<String, std::path::PathBuf>,
        look: &mut Lookups,
        restart_count: u32,
    ) -> Result<String, ContainerFailure> {
        let image_id = self.ensure_image(c).await?;
        let envs = podspec::resolve_env(&self.shared.ctx, pod, c, pod_ip, look).await?;
        let mounts = podspec::mounts(c, volumes)?;
        let inputs = ContainerInputs {
            image_id,
            envs,
            mounts,
            restart_count,
        };
        let cfg = podspec::container_config(&self.shared.ctx, pod, c, &inputs);
        let sb_cfg = podspec::sandbox_config(&self.shared.ctx, pod, 0);
        let id = self
            .shared
            .cri
            .create_container(sb_id, cfg, sb_cfg)
            .await
            .map_err(|e| ContainerFailure::new("CreateContainerError", e.message()))?;
        self.shared
            .cri
            .start_container(&id)
            .await
            .map_err(|e| ContainerFailure::new("RunContainerError", e.message()))?;
        if let Some(h) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()) {
            let target = probe::Target {
                cri: self.shared.cri.clone(),
                container: c.clone(),
                container_id: id.clone(),
                pod_ip: self.probe_ip(pod, pod_ip),
            };
            // Upstream runs postStart synchronously; bound it so a hung hook cannot wedge
            // the pod worker forever.
            let limit = Duration::from_secs(120);
            if let Err(msg) = probe::run_hook(h, &target, limit).await {
                self.shared.recorder.pod_event(
                    pod,
                    Some(&c.name),
                    true,
                    "FailedPostStartHook",
                    msg.clone(),
                );
                self.kill_container(pod, Some(c), &id, pod_ip, pod_grace(pod))
                    .await;
                return Err(ContainerFailure::new("PostStartHookError", msg));
            }
        }
        Ok(id)
    }

    /// The image per pull policy against what the runtime has. With pulls disabled
    /// (air-gapped nodes, the default) a missing image fails without contacting a registry.
    async fn ensure_image(&mut self, c: &Container) -> Result<String, ContainerFailure> {
        let image = c.image.clone().unwrap_or_default();
        if image.is_empty() {
            return Err(ContainerFailure::new("InvalidImageName", "image is empty"));
        }
        let policy = podspec::pull_policy(c);
        let present = self
            .shared
            .cri
            .image_status(&image)
            .await
            .map_err(|e| ContainerFailure::new("ErrImageInspect", e.message()))?;
        if let Some(img) = &present {
            if policy != "Always" || !self.shared.ctx.allow_image_pull {
                return Ok(img.id.clone());
            }
        }
        if policy == "Never" {
            return Err(ContainerFailure::new(
                "ErrImageNeverPull",
                format!("Container image \"{image}\" is not present with pull policy of Never"),
            ));
        }
        let st = self.containers.entry(c.name.clone()).or_default();
        if let Some(at) = st.pull_failed_at {
            if at.elapsed() < BACKOFF_INITIAL {
                return Err(ContainerFailure::new(
                    "ImagePullBackOff",
                    format!("Back-off pulling image \"{image}\""),
                ));
            }
        }
        if !self.shared.ctx.allow_image_pull {
            return Err(ContainerFailure::new(
                "ErrImagePull",
                format!(
                    "failed to pull image \"{image}\": the image is not present on the node and image pulls are disabled (allow-image-pull = false); import it with `kelsonctl images import`"
                ),
            ));
        }
        match self.shared.cri.pull_image(&image).await {
            Ok(r) => Ok(r),
            Err(e) => match present {
                Some(img) => {
                    tracing::warn!(%image, error = %e.message(), "pull failed; using the local image");
                    Ok(img.id)
                }
                None => Err(ContainerFailure::new("ErrImagePull", e.message())),
            },
        }
    }

    async fn remove_dead_sandboxes(&self) {
        let Ok(sbs) = self.shared.cri.list_pod_sandboxes(self.uid_labels()).await else {
            return;
        };
        for sb in sbs {
            if sb.state != cri::PodSandboxState::SandboxReady as i32 {
                if let Ok(cs) = self
                    .shared
                    .cri
                    .list_containers(Some(&sb.id), HashMap::new())
                    .await
                {
                    for c in cs {
                        let _ = self.shared.cri.remove_container(&c.id).await;
                    }
                }
                let _ = self.shared.cri.stop_pod_sandbox(&sb.id).await;
                let _ = self.shared.cri.remove_pod_sandbox(&sb.id).await;
            }
        }
    }

    /// Stops every running container of the pod concurrently: each runs its preStop hook (if
    /// the spec is known) and is stopped with what is left of `grace`.
    async fn stop_all(&self, pod: Option<&Pod>, grace: i64) {
        let Ok(cs) = self
            .shared
            .cri
            .list_containers(None, self.uid_labels())
            .await
        else {
            return;
        };
        let spec = pod.and_then(|p| p.spec.as_ref());
        let pod_ip = self
            .sandbox
            .as_ref()
            .map(|(_, ip)| ip.clone())
            .unwrap_or_default();
        let empty = Pod::default();
        let stops = cs
            .iter()
            .filter(|c| c.state == cri::ContainerState::ContainerRunning as i32)
            .map(|cr| {
                let name = cr.labels.get(podspec::LABEL_CONTAINER_NAME);
                let c = spec.and_then(|s| {
                    s.containers
                        .iter()
                        .chain(s.init_containers.iter().flatten())
                        .find(|c| Some(&c.name) == name)
                });
                if let (Some(p), Some(c)) = (pod, c) {
                    self.shared.recorder.pod_event(
                        p,
                        Some(&c.name),
                        false,
                        "Killing",
                        format!("Stopping container {}", c.name),
                    );
                }
                self.kill_container(pod.unwrap_or(&empty), c, &cr.id, &pod_ip, grace)
            });
        futures::future::join_all(stops).await;
    }

    /// Stop (grace), remove containers, stop and remove sandboxes, remove the pod's dirs.
    async fn teardown(&mut self, grace: i64) {
        self.teardown_pod(None, grace).await
    }

    async fn teardown_pod(&mut self, pod: Option<&Pod>, grace: i64) {
        self.probers.clear();
        self.stop_all(pod, grace.max(0)).await;
        if let Ok(cs) = self
            .shared
            .cri
            .list_containers(None, self.uid_labels())
            .await
        {
            for c in cs {
                if let Err(e) = self.shared.cri.remove_container(&c.id).await {
                    tracing::warn!(container = %c.id, error = %e, "removing a container");
                }
            }
        }
        if let Ok(sbs) = self.shared.cri.list_pod_sandboxes(self.uid_labels()).await {
            for sb in sbs {
                if let Err(e) = self.shared.cri.stop_pod_sandbox(&sb.id).await {
                    tracing::warn!(sandbox = %sb.id, error = %e, "stopping a sandbox");
                }
                if let Err(e) = self.shared.cri.remove_pod_sandbox(&sb.id).await {
                    tracing::warn!(sandbox = %sb.id, error = %e, "removing a sandbox");
                }
            }
        }
        let dir = podspec::pod_dir(&self.shared.ctx, &self.uid);
        if dir.exists() {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "removing the pod dir");
            }
        }
        remove_pod_cgroups(&self.shared.ctx.cgroup_root, &self.uid);
        self.shared.tokens.forget_pod(&self.uid);
        self.sandbox = None;
        tracing::info!(uid = %self.uid, "pod torn down");
    }

    /// Evicts the pod for the eviction manager: kill (with the request's grace), stop the
    /// sandbox, report Failed/Evicted with upstream's message and a DisruptionTarget
    /// condition, and post the Evicted event. Containers stay (for logs) until the pod is
    /// deleted, like any finished pod's.
    async fn evict(&mut self, pod: &Pod, req: crate::eviction::EvictRequest) {
        tracing::info!(pod = %podspec::name(pod), namespace = %podspec::namespace(pod), message = %req.message, "evicting");
        self.shared
            .recorder
            .pod_event(pod, None, true, "Evicted", req.message.clone());
        self.probers.clear();
        self.stop_all(Some(pod), req.grace).await;
        let observed = match &self.sandbox {
            Some((id, _)) => self.observe(id).await.unwrap_or_default(),
            None => HashMap::new(),
        };
        let mut status = self.build_status(pod, &observed);
        status["phase"] = json!("Failed");
        status["reason"] = json!("Evicted");
        status["message"] = json!(req.message);
        let t = now_rfc3339();
        if let Some(conds) = status["conditions"]
            .as_array_mut()
            .filter(|_| req.disruption)
        {
            conds.retain(|c| c["type"] != "DisruptionTarget");
            conds.push(json!({
                "type": "DisruptionTarget", "status": "True", "lastProbeTime": null,
                "lastTransitionTime": t, "reason": "TerminationByKubelet", "message": req.message,
            }));
        }
        if let Some((id, _)) = self.sandbox.take() {
            let _ = self.shared.cri.stop_pod_sandbox(&id).await;
        }
        self.terminal = true;
        self.shared
            .phases
            .lock()
            .insert(self.uid.clone(), "Failed".into());
        self.patch_final(pod, status).await;
    }

    /// Refuses a new pod under node pressure (upstream's eviction admission).
    async fn reject(&mut self, pod: &Pod, message: String) {
        tracing::info!(pod = %podspec::name(pod), %message, "pod rejected: node under pressure");
        self.shared
            .recorder
            .pod_event(pod, None, true, "Evicted", message.clone());
        self.terminal = true;
        self.shared
            .phases
            .lock()
            .insert(self.uid.clone(), "Failed".into());
        let status = json!({
            "phase": "Failed", "reason": "Evicted", "message": message,
            "hostIP": self.shared.ctx.node_ip, "startTime": now_rfc3339(),
        });
        self.patch_final(pod, status).await;
    }

    /// Patches a terminal status, retrying a few times: nothing else will report this pod.
    async fn patch_final(&mut self, pod: &Pod, status: Value) {
        let api: Api<Pod> = Api::namespaced(self.shared.client.clone(), &podspec::namespace(pod));
        let patch = json!({"status": status});
        for attempt in 0..5 {
            match api
                .patch_status(
                    &podspec::name(pod),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            {
                Ok(_) => {
                    self.last_status = Some(status);
                    return;
                }
                Err(kube::Error::Api(e)) if e.code == 404 => return,
                Err(e) => {
                    tracing::warn!(pod = %podspec::name(pod), attempt, error = %e, "reporting the pod Failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    async fn delete_pod(&self, pod: &Pod) {
        let api: Api<Pod> = Api::namespaced(self.shared.client.clone(), &podspec::namespace(pod));
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&podspec::name(pod), &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => {
                tracing::warn!(pod = %podspec::name(pod), error = %e, "deleting the pod object")
            }
        }
    }

    /// Computes the status from the runtime and patches it if it changed.
    async fn report(&mut self, pod: &Pod) {
        if self.terminal {
            return;
        }
        // Reuse this pass's observation unless the pass changed something.
        let cached = self.observed.take();
        let observed = match (&self.sandbox, cached) {
            (Some(_), Some(o)) if !self.acted.swap(false, Ordering::Relaxed) => o,
            (Some((id, _)), _) => self.observe(id).await.unwrap_or_default(),
            (None, _) => HashMap::new(),
        };
        let status = self.build_status(pod, &observed);
        let phase = status["phase"].as_str().unwrap_or("").to_string();
        self.shared
            .phases
            .lock()
            .insert(self.uid.clone(), phase.clone());
        if self.last_status.as_ref() == Some(&status) {
            return;
        }
        let api: Api<Pod> = Api::namespaced(self.shared.client.clone(), &podspec::namespace(pod));
        let patch = json!({"status": status});
        match api
            .patch_status(
                &podspec::name(pod),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => {
                self.last_status = Some(status);
                if phase == "Succeeded" || phase == "Failed" {
                    self.terminal = true;
                    // Upstream kills the sandbox of a finished pod; keep the containers for logs.
                    if let Some((id, _)) = self.sandbox.take() {
                        let _ = self.shared.cri.stop_pod_sandbox(&id).await;
                    }
                }
            }
            Err(e) => tracing::warn!(pod = %podspec::name(pod), error = %e, "updating pod status"),
        }
    }

    fn container_status(&self, c: &Container, o: Option<&Observed>, default_wait: &str) -> Value {
        let failure = self.containers.get(&c.name).and_then(|s| s.failure.clone());
        let terminated = |s: &cri::ContainerStatus| {
            json!({"terminated": {
                "exitCode": s.exit_code,
                "reason": if s.reason.is_empty() { if s.exit_code == 0 { "Completed" } else { "Error" } } else { s.reason.as_str() },
                "message": (!s.message.is_empty()).then(|| s.message.clone()),
                "startedAt": ns_to_rfc3339(s.started_at),
                "finishedAt": ns_to_rfc3339(s.finished_at),
                "containerID": format!("containerd://{}", s.id),
            }})
        };
        let mut out = json!({
            "name": c.name,
            "image": c.image.clone().unwrap_or_default(),
            "imageID": "",
            "ready": false,
            "restartCount": 0,
            "started": false,
            "lastState": {},
        });
        match o {
            None => {
                let (reason, message) = match failure {
                    Some(f) => (f.reason, Some(f.message)),
                    None => (default_wait.to_string(), None),
                };
                out["state"] = json!({"waiting": {"reason": reason, "message": message}});
            }
            Some(o) => {
                let s = &o.latest;
                out["restartCount"] = json!(o.restart_count);
                out["containerID"] = json!(format!("containerd://{}", s.id));
                out["imageID"] = json!(s.image_ref);
                if let Some(p) = &o.previous {
                    if state_of(p) == cri::ContainerState::ContainerExited {
                        out["lastState"] = terminated(p);
                    }
                }
                match state_of(s) {
                    cri::ContainerState::ContainerRunning => {
                        out["state"] =
                            json!({"running": {"startedAt": ns_to_rfc3339(s.started_at)}});
                        // Probe results count only for the instance they probe; before its
                        // probers exist a probed container is neither started nor ready.
                        let probed = c.readiness_probe.is_some() || c.startup_probe.is_some();
                        let (started, ready) = match self.probers.get(&c.name) {
                            Some(p) if p.container_id == s.id => {
                                let st = p.status.lock();
                                (st.started, st.started && st.ready && st.kill.is_none())
                            }
                            _ => (!probed || c.startup_probe.is_none(), !probed),
                        };
                        out["ready"] = json!(ready);
                        out["started"] = json!(started);
                    }
                    cri::ContainerState::ContainerExited => match failure {
                        Some(f) => {
                            out["state"] =
                                json!({"waiting": {"reason": f.reason, "message": f.message}});
                            out["lastState"] = terminated(s);
                        }
                        None => out["state"] = terminated(s),
                    },
                    _ => {
                        let (reason, message) = match failure {
                            Some(f) => (f.reason, Some(f.message)),
                            None => ("ContainerCreating".to_string(), None),
                        };
                        out["state"] = json!({"waiting": {"reason": reason, "message": message}});
                    }
                }
            }
        }
        out
    }

    fn build_status(&mut self, pod: &Pod, observed: &HashMap<String, Observed>) -> Value {
        let spec = pod.spec.clone().unwrap_or_default();
        let policy = spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into());
        let inits: Vec<&Container> = spec.init_containers.iter().flatten().collect();
        let mut init_statuses = Vec::new();
        let mut init_done = true;
        let mut init_failed = false;
        for c in &inits {
            let o = observed.get(&c.name);
            init_statuses.push(self.container_status(c, o, "PodInitializing"));
            match o.map(|o| (state_of(&o.latest), o.latest.exit_code)) {
                Some((cri::ContainerState::ContainerExited, 0)) => {}
                Some((cri::ContainerState::ContainerExited, _)) => {
                    init_done = false;
                    if policy == "Never" {
                        init_failed = true;
                    }
                }
                _ => init_done = false,
            }
        }
        let default_wait = if init_done {
            "ContainerCreating"
        } else {
            "PodInitializing"
        };
        let statuses: Vec<Value> = spec
            .containers
            .iter()
            .map(|c| self.container_status(c, observed.get(&c.name), default_wait))
            .collect();

        // Upstream getPhase.
        let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
        for s in &statuses {
            if s["state"]["running"].is_object() {
                running += 1;
            } else if s["state"]["terminated"].is_object() {
                stopped += 1;
                if s["state"]["terminated"]["exitCode"] == 0 {
                    succeeded += 1;
                }
            } else if s["lastState"]["terminated"].is_object() {
                stopped += 1;
            } else {
                waiting += 1;
            }
        }
        let phase = if init_failed {
            "Failed"
        } else if !init_done || waiting > 0 {
            "Pending"
        } else if running > 0 {
            "Running"
        } else if stopped > 0 {
            match policy.as_str() {
                "Always" => "Running",
                "OnFailure" if stopped == succeeded => "Succeeded",
                "OnFailure" => "Running",
                _ if stopped == succeeded => "Succeeded",
                _ => "Failed",
            }
        } else {
            "Pending"
        };
        let all_ready = !statuses.is_empty() && statuses.iter().all(|s| s["ready"] == true);
        let t = now_rfc3339();
        let prev_conds = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        let cond = |ty: &str, ok: bool, reason: Option<&str>| {
            let st = if ok { "True" } else { "False" };
            let transition = prev_conds
                .iter()
                .find(|c| c.type_ == ty && c.status == st)
                .and_then(|c| c.last_transition_time.as_ref())
                .map(|t| t.0.to_string())
                .unwrap_or_else(|| t.clone());
            let mut v = json!({"type": ty, "status": st, "lastProbeTime": null, "lastTransitionTime": transition});
            if let Some(r) = reason.filter(|_| !ok) {
                v["reason"] = json!(r);
            }
            v
        };
        let not_ready_reason = if phase == "Succeeded" || phase == "Failed" {
            "PodCompleted"
        } else {
            "ContainersNotReady"
        };
        let ready = all_ready && phase == "Running";
        let mut conditions = vec![
            cond("PodReadyToStartContainers", self.sandbox.is_some(), None),
            cond(
                "Initialized",
                init_done,
                Some(if phase == "Succeeded" || phase == "Failed" {
                    "PodCompleted"
                } else {
                    "ContainersNotInitialized"
                }),
            ),
            cond("Ready", ready, Some(not_ready_reason)),
            cond("ContainersReady", ready, Some(not_ready_reason)),
        ];
        // The scheduler's condition is the scheduler's: keep it as it is.
        let scheduled = prev_conds
            .iter()
            .find(|c| c.type_ == "PodScheduled")
            .map(|c| serde_json::to_value(c).unwrap_or(Value::Null))
            .unwrap_or_else(|| cond("PodScheduled", true, None));
        conditions.push(scheduled);
        if self.start_time.is_none() {
            self.start_time = pod
                .status
                .as_ref()
                .and_then(|s| s.start_time.as_ref())
                .map(|t| t.0.to_string())
                .or_else(|| Some(t.clone()));
        }
        let pod_ip = if spec.host_network.unwrap_or(false) {
            self.shared.ctx.node_ip.clone()
        } else {
            self.sandbox
                .as_ref()
                .map(|(_, ip)| ip.clone())
                .unwrap_or_default()
        };
        let mut status = json!({
            "phase": phase,
            "conditions": conditions,
            "hostIP": self.shared.ctx.node_ip,
            "hostIPs": [{"ip": self.shared.ctx.node_ip}],
            "startTime": self.start_time,
            "containerStatuses": statuses,
            "qosClass": crate::resources::qos_class(&spec),
        });
        if !init_statuses.is_empty() {
            status["initContainerStatuses"] = json!(init_statuses);
        }
        if !pod_ip.is_empty() {
            status["podIP"] = json!(pod_ip);
            status["podIPs"] = json!([{"ip": pod_ip}]);
        }
        status
    }
}

/// The pod's termination grace period (spec, else upstream's default 30 s).
fn pod_grace(pod: &Pod) -> i64 {
    pod.spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(30)
}

/// Removes the pod's (now empty) cgroup directories in every hierarchy, cgroup v1 and v2.
/// runc removes the containers' own cgroups; the pod-level parent is the kubelet's to clean.
/// Only `rmdir` is used, so a cgroup that still has processes or children is left alone.
pub fn remove_pod_cgroups(cgroup_root: &str, uid: &str) {
    let root = cgroup_root.trim_matches('/');
    let rels = [
        format!("{root}/pod{uid}"),
        format!("{root}/burstable/pod{uid}"),
        format!("{root}/besteffort/pod{uid}"),
    ];
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    let mut bases: Vec<std::path::PathBuf> = vec!["/sys/fs/cgroup".into()];
    bases.extend(hierarchies.filter_map(|e| e.ok()).map(|e| e.path()));
    for base in bases {
        for rel in &rels {
            let dir = base.join(rel);
            if dir.is_dir() {
                if let Err(e) = std::fs::remove_dir(&dir) {
                    tracing::debug!(dir = %dir.display(), error = %e, "removing a pod cgroup");
                }
            }
        }
    }
}

/// Summary of a status for tests/logs: phase and each container's state key and reason.
pub fn summarize(status: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    out.insert(
        "phase".into(),
        status["phase"].as_str().unwrap_or("").into(),
    );
    for c in status["containerStatuses"].as_array().into_iter().flatten() {
        let st = c["state"].as_object().and_then(|m| m.iter().next());
        let text = match st {
            Some((k, v)) => format!("{k}:{}", v["reason"].as_str().unwrap_or("")),
            None => String::new(),
        };
        out.insert(c["name"].as_str().unwrap_or("").into(), text);
    }
    out
}
