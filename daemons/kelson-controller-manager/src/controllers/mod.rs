//! The controllers and the machinery they share.
//!
//! Each controller is a reconcile function over a [`WorkQueue`] of keys: informer handlers
//! map changes to keys, workers take keys off the queue and make the world match the spec,
//! returning either "done" (optionally "look again in N seconds") or an error, which re-queues
//! the key with back-off and is recorded as the controller's last error. Reconciles read the
//! shared informer caches and write through the API; they never assume a write is visible in
//! the cache yet (the replicaset controller's expectations cover the one place it matters).
//!
//! Controllers run only while this instance leads (see `crate::run`): the informers keep
//! running so a standby is warm, but no queue is worked.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet,
};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Namespace, Node, PersistentVolumeClaim, Pod, ResourceQuota, Secret,
    Service, ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Client;
use parking_lot::Mutex;

use crate::informer::Informer;
use crate::queue::WorkQueue;

pub mod cronjob;
pub mod csrapproving;
pub mod csrsigning;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub mod gc;
pub mod history;
pub mod job;
pub mod namespace;
pub mod nodelifecycle;
pub mod podcontrol;
pub mod quantity;
pub mod replicaset;
pub mod resourcequota;
pub mod statefulset;
pub mod tokencleaner;

/// What a reconcile can fail with; every failure is retried with back-off.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("encoding an object: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Is a kube error a 404 / 409?
pub fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// An API error as upstream's events print it (`%v` of a StatusError: its message).
pub fn err_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        e => e.to_string(),
    }
}

/// Merge-patches the status subresource of `name` with `patch` (`{"status": …}`, possibly
/// with a resourceVersion precondition). `Ok(false)`: the object is gone — not an error for a
/// controller, whose informer brings the deletion next.
pub async fn patch_status<K>(
    api: &kube::Api<K>,
    name: &str,
    patch: serde_json::Value,
) -> Result<bool>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api
        .patch_status(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(patch),
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if is_status(&e, 404) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Deletes `name` with `dp`. Gone already (404) is not an error, nor — when `dp` carries
/// preconditions — a 409: the object now under that name is not the one meant.
pub async fn delete_object<K>(
    api: &kube::Api<K>,
    name: &str,
    dp: &kube::api::DeleteParams,
) -> Result<()>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, dp).await {
        Ok(_) => Ok(()),
        Err(e) if is_status(&e, 404) => Ok(()),
        Err(e) if is_status(&e, 409) && dp.preconditions.is_some() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The shared informers (each started only if some enabled controller uses it).
#[derive(Clone)]
pub struct Informers {
    pub pods: Informer<Pod>,
    pub replicasets: Informer<ReplicaSet>,
    pub deployments: Informer<Deployment>,
    pub namespaces: Informer<Namespace>,
    pub serviceaccounts: Informer<ServiceAccount>,
    pub configmaps: Informer<ConfigMap>,
    pub services: Informer<Service>,
    pub endpoints: Informer<Endpoints>,
    pub endpointslices: Informer<EndpointSlice>,
    pub nodes: Informer<Node>,
    pub leases: Informer<Lease>,
    pub jobs: Informer<Job>,
    pub cronjobs: Informer<CronJob>,
    pub daemonsets: Informer<DaemonSet>,
    pub statefulsets: Informer<StatefulSet>,
    pub revisions: Informer<ControllerRevision>,
    pub pdbs: Informer<PodDisruptionBudget>,
    pub quotas: Informer<ResourceQuota>,
    pub pvcs: Informer<PersistentVolumeClaim>,
    pub secrets: Informer<Secret>,
    pub csrs: Informer<CertificateSigningRequest>,
}

impl Informers {
    pub fn new(client: &Client) -> Self {
        Informers {
            pods: Informer::new(client.clone()),
            replicasets: Informer::new(client.clone()),
            deployments: Informer::new(client.clone()),
            namespaces: Informer::new(client.clone()),
            serviceaccounts: Informer::new(client.clone()),
            configmaps: Informer::new(client.clone()),
            services: Informer::new(client.clone()),
            endpoints: Informer::new(client.clone()),
            endpointslices: Informer::new(client.clone()),
            nodes: Informer::new(client.clone()),
            leases: Informer::new(client.clone()),
            jobs: Informer::new(client.clone()),
            cronjobs: Informer::new(client.clone()),
            daemonsets: Informer::new(client.clone()),
            statefulsets: Informer::new(client.clone()),
            revisions: Informer::new(client.clone()),
            pdbs: Informer::new(client.clone()),
            quotas: Informer::new(client.clone()),
            pvcs: Informer::new(client.clone()),
            secrets: Informer::new(client.clone()),
            csrs: Informer::new(client.clone()),
        }
    }

    /// Starts the used informers and waits (at most `timeout`) until all have listed.
    pub async fn start_and_sync(&self, timeout: Duration) -> bool {
        macro_rules! each {
            ($f:ident) => {{
                let mut ok = true;
                $f!(self.pods, ok);
                $f!(self.replicasets, ok);
                $f!(self.deployments, ok);
                $f!(self.namespaces, ok);
                $f!(self.serviceaccounts, ok);
                $f!(self.configmaps, ok);
                $f!(self.services, ok);
                $f!(self.endpoints, ok);
                $f!(self.endpointslices, ok);
                $f!(self.nodes, ok);
                $f!(self.leases, ok);
                $f!(self.jobs, ok);
                $f!(self.cronjobs, ok);
                $f!(self.daemonsets, ok);
                $f!(self.statefulsets, ok);
                $f!(self.revisions, ok);
                $f!(self.pdbs, ok);
                $f!(self.quotas, ok);
                $f!(self.pvcs, ok);
                $f!(self.secrets, ok);
                $f!(self.csrs, ok);
                ok
            }};
        }
        macro_rules! start {
            ($i:expr, $ok:ident) => {
                let _ = &mut $ok;
                if $i.is_used() {
                    let _ = $i.start();
                }
            };
        }
        macro_rules! sync {
            ($i:expr, $ok:ident) => {
                if $i.is_used() {
                    $ok &= $i.wait_synced(timeout).await;
                }
            };
        }
        each!(start);
        each!(sync)
    }
}

/// Settings controllers read (from flags/config).
#[derive(Debug, Clone)]
pub struct Settings {
    pub root_ca_file: Option<PathBuf>,
    pub node_monitor_grace_period: Duration,
    pub node_monitor_period: Duration,
    pub cluster_cidr: Option<String>,
    pub node_cidr_mask_size: u8,
    pub unhealthy_zone_threshold: f64,
    /// `--node-eviction-rate`: nodes/s tainted NoExecute in a normal or fully disrupted zone.
    pub node_eviction_rate: f64,
    /// `--secondary-node-eviction-rate`: nodes/s in a partially disrupted large zone.
    pub secondary_node_eviction_rate: f64,
    /// `--large-cluster-size-threshold`.
    pub large_cluster_size_threshold: usize,
    /// The CA csrsigning issues with (`--cluster-signing-cert-file`/`-key-file`).
    pub cluster_signing: Option<Arc<csrsigning::ReloadingSigner>>,
}

/// What every reconcile gets.
#[derive(Clone)]
pub struct Ctx {
    pub client: Client,
    pub inf: Informers,
    pub settings: Arc<Settings>,
    /// The shared event recorder (best effort, never waits).
    pub events: crate::events::Recorder,
}

type Reconcile = Arc<
    dyn Fn(String) -> Pin<Box<dyn Future<Output = Result<Option<Duration>>> + Send>> + Send + Sync,
>;
type Resync = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

/// A controller wired to its queue.
pub struct Controller {
    pub name: &'static str,
    pub queue: WorkQueue,
    pub workers: usize,
    reconcile: Reconcile,
    resync: Option<(Duration, Resync)>,
}

impl Controller {
    pub fn new<F, Fut>(name: &'static str, queue: WorkQueue, workers: usize, f: F) -> Self
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Option<Duration>>> + Send + 'static,
    {
        Controller {
            name,
            queue,
            workers,
            reconcile: Arc::new(move |k| Box::pin(f(k))),
            resync: None,
        }
    }

    /// Re-queues the keys `f` returns every `every` (covers deletes missed across relists and
    /// time-based conditions nobody sends an event for).
    pub fn resync(
        mut self,
        every: Duration,
        f: impl Fn() -> Vec<String> + Send + Sync + 'static,
    ) -> Self {
        self.resync = Some((every, Arc::new(f)));
        self
    }

    /// Runs the workers until the queue shuts down.
    pub fn spawn(
        &self,
        stats: Arc<Mutex<BTreeMap<&'static str, WorkQueue>>>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        stats.lock().insert(self.name, self.queue.clone());
        let mut tasks = Vec::new();
        if let Some((every, f)) = self.resync.clone() {
            let q = self.queue.clone();
            tasks.push(tokio::spawn(async move {
                for k in f() {
                    q.add(k);
                }
                let mut t = tokio::time::interval(every);
                t.tick().await;
                loop {
                    t.tick().await;
                    for k in f() {
                        q.add(k);
                    }
                }
            }));
        }
        for _ in 0..self.workers.max(1) {
            let q = self.queue.clone();
            let rec = self.reconcile.clone();
            let name = self.name;
            tasks.push(tokio::spawn(async move {
                while let Some(key) = q.get().await {
                    let r = rec(key.clone()).await;
                    match r {
                        Ok(again) => {
                            q.forget(&key);
                            if let Some(d) = again {
                                q.add_after(key.clone(), d);
                            }
                        }
                        Err(e) => {
                            // A conflict only means our cache was behind: retry quietly.
                            let conflict = matches!(&e, Error::Kube(k) if is_status(k, 409));
                            if conflict {
                                tracing::debug!(controller = name, %key, error = %e, "conflict; retrying");
                            } else {
                                tracing::warn!(controller = name, %key, error = %e, "reconcile failed");
                                q.set_last_error(format!("{key}: {e}"));
                            }
                            q.add_rate_limited(&key);
                        }
                    }
                    q.done(&key);
                }
            }));
        }
        tasks
    }
}

/// Controller names as upstream (1.27+) spells them, with the old short aliases.
pub const ALL: &[(&str, &str)] = &[
    ("replicaset-controller", "replicaset"),
    ("deployment-controller", "deployment"),
    ("garbage-collector-controller", "garbagecollector"),
    ("namespace-controller", "namespace"),
    ("serviceaccount-controller", "serviceaccount"),
    (
        "root-ca-certificate-publisher-controller",
        "root-ca-cert-publisher",
    ),
    ("endpoints-controller", "endpoint"),
    ("endpointslice-controller", "endpointslice"),
    ("node-lifecycle-controller", "nodelifecycle"),
    ("pod-garbage-collector-controller", "podgc"),
    ("node-ipam-controller", "nodeipam"),
    ("job-controller", "job"),
    ("cronjob-controller", "cronjob"),
    ("ttl-after-finished-controller", "ttl-after-finished"),
    ("daemonset-controller", "daemonset"),
    ("statefulset-controller", "statefulset"),
    ("disruption-controller", "disruption"),
    ("resourcequota-controller", "resourcequota"),
    ("token-cleaner-controller", "tokencleaner"),
    (
        "certificatesigningrequest-approving-controller",
        "csrapproving",
    ),
    ("certificatesigningrequest-signing-controller", "csrsigning"),
];

/// Upstream `--controllers` semantics: `*` enables the defaults, `foo` enables foo, `-foo`
/// disables it; the last mention wins over `*`.
pub fn is_enabled(name: &str, alias: &str, list: &[String]) -> bool {
    let named = |n: &str| n == name || n == alias;
    if list.iter().any(|c| c.strip_prefix('-').is_some_and(named)) {
        return false;
    }
    if list.iter().any(|c| named(c)) {
        return true;
    }
    list.iter().any(|c| c == "*") && !DISABLED_BY_DEFAULT.contains(&name)
}

/// Controllers `*` does not enable (upstream's disabled-by-default list); name them to run them.
pub const DISABLED_BY_DEFAULT: &[&str] = &["token-cleaner-controller"];

/// Validates `--controllers` entries against the known names.
pub fn validate_list(list: &[String]) -> Result<(), String> {
    for c in list {
        let n = c.strip_prefix('-').unwrap_or(c);
        if n != "*" && !ALL.iter().any(|(a, b)| *a == n || *b == n) {
            return Err(format!("{c:?} is not in the list of known controllers"));
        }
    }
    Ok(())
}

/// Builds the enabled controllers (registering their informer handlers).
pub fn build(ctx: &Ctx, list: &[String]) -> Vec<Controller> {
    let mut out = Vec::new();
    let on = |i: usize| is_enabled(ALL[i].0, ALL[i].1, list);
    if on(0) {
        out.push(replicaset::controller(ctx));
    }
    if on(1) {
        out.push(deployment::controller(ctx));
    }
    if on(2) {
        out.push(gc::controller(ctx));
    }
    if on(3) {
        out.push(namespace::namespace_controller(ctx));
    }
    if on(4) {
        out.push(namespace::serviceaccount_controller(ctx));
    }
    if on(5) {
        out.push(namespace::root_ca_controller(ctx));
    }
    if on(6) {
        out.push(endpoints::endpoints_controller(ctx));
    }
    if on(7) {
        out.push(endpoints::endpointslice_controller(ctx));
    }
    if on(8) {
        out.push(nodelifecycle::controller(ctx));
    }
    if on(9) {
        out.push(nodelifecycle::podgc_controller(ctx));
    }
    if on(10) {
        out.push(nodelifecycle::ipam_controller(ctx));
    }
    if on(11) {
        out.push(job::controller(ctx));
    }
    if on(12) {
        out.push(cronjob::controller(ctx));
    }
    if on(13) {
        out.push(job::ttl_controller(ctx));
    }
    if on(14) {
        out.push(daemonset::controller(ctx));
    }
    if on(15) {
        out.push(statefulset::controller(ctx));
    }
    if on(16) {
        out.push(disruption::controller(ctx));
    }
    if on(17) {
        out.push(resourcequota::controller(ctx));
    }
    if on(18) {
        out.push(tokencleaner::controller(ctx));
    }
    if on(19) {
        out.push(csrapproving::controller(ctx));
    }
    // Upstream skips the signer when it has no CA to sign with; so do we.
    if on(20) && ctx.settings.cluster_signing.is_some() {
        out.push(csrsigning::controller(ctx));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(s: &str) -> Vec<String> {
        s.split(',').map(String::from).collect()
    }

    #[test]
    fn controllers_flag() {
        assert!(is_enabled("deployment-controller", "deployment", &l("*")));
        assert!(!is_enabled(
            "deployment-controller",
            "deployment",
            &l("*,-deployment")
        ));
        assert!(!is_enabled(
            "deployment-controller",
            "deployment",
            &l("*,-deployment-controller")
        ));
        assert!(is_enabled(
            "deployment-controller",
            "deployment",
            &l("deployment")
        ));
        assert!(!is_enabled(
            "replicaset-controller",
            "replicaset",
            &l("deployment")
        ));
        assert!(!is_enabled(
            "token-cleaner-controller",
            "tokencleaner",
            &l("*")
        ));
        assert!(is_enabled(
            "token-cleaner-controller",
            "tokencleaner",
            &l("*,tokencleaner")
        ));
        assert!(validate_list(&l("*,-nope")).is_err());
        assert!(validate_list(&l("*,-replicaset,endpointslice-controller")).is_ok());
    }
}
