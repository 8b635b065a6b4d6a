//! What every Kelson component that is an ordinary Kubernetes API client shares: building a
//! client from a kubeconfig file that follows certificate renewals ([`client`]), and leader election on a `coordination.k8s.io/v1` Lease.
//!
//! Leader election follows client-go's `leaderelection` package, so Kelson daemons and upstream
//! ones interoperate on the same Lease: the holder renews `renewTime` every `retry_period`; a
//! candidate takes the Lease over only when `renewTime + leaseDurationSeconds` has passed (as seen
//! on its own clock since it last observed a change, never by comparing clocks across machines);
//! every write is an optimistic-concurrency update on the Lease's resourceVersion, so two
//! candidates can never both win. Defaults are upstream's: lease 15 s, renew deadline 10 s,
//! retry 2 s.

pub mod client;
pub mod duration;
pub mod flags;

pub use client::{client_from_kubeconfig, client_from_kubeconfig_with, Transport};
pub use flags::LeaderElectFlags;

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("reading kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        source: kube::config::KubeconfigError,
    },
    #[error("building the API client: {0}")]
    Client(#[from] kube::Error),
    #[error("building the API client's transport: {0}")]
    Transport(String),
}

/// Leader election settings (flags named like upstream's `--leader-elect-*`).
#[derive(Debug, Clone)]
pub struct LeaderElectionConfig {
    pub namespace: String,
    pub name: String,
    /// This candidate's identity (upstream: hostname + "_" + a unique suffix).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl LeaderElectionConfig {
    pub fn new(namespace: &str, name: &str, identity: &str) -> Self {
        LeaderElectionConfig {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

fn now_micro() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

/// Runs leader election until `shutdown` fires; publishes `true` while this candidate leads.
///
/// A leader that cannot renew within `renew_deadline` steps down (publishes `false`) before its
/// lease can expire for others, so two leaders never act at once as long as clocks run at the
/// same rate.
pub async fn run_leader_election(
    api: Api<Lease>,
    cfg: LeaderElectionConfig,
    leading: watch::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    // What we last saw of someone else's lease, and when (on our clock).
    let mut observed: Option<(String, Instant)> = None;
    let mut last_renew = Instant::now();
    loop {
        let is_leader = *leading.borrow();
        match try_acquire_or_renew(&api, &cfg, &mut observed).await {
            Ok(true) => {
                last_renew = Instant::now();
                if !is_leader {
                    tracing::info!(lease = %cfg.name, identity = %cfg.identity, "became leader");
                    let _ = leading.send(true);
                }
            }
            Ok(false) => {
                if is_leader {
                    tracing::warn!(lease = %cfg.name, "lost the lease to another candidate");
                    let _ = leading.send(false);
                }
            }
            Err(e) => {
                tracing::warn!(lease = %cfg.name, error = %e, "leader election round failed");
                if is_leader && last_renew.elapsed() > cfg.renew_deadline {
                    tracing::warn!(lease = %cfg.name, "could not renew within the deadline; stepping down");
                    let _ = leading.send(false);
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(cfg.retry_period) => {}
            _ = shutdown.changed() => {
                if *leading.borrow() {
                    release(&api, &cfg).await;
                    let _ = leading.send(false);
                }
                return;
            }
        }
    }
}

/// One round: create the Lease, renew ours, or take over an expired one. Ok(true) = we hold it.
async fn try_acquire_or_renew(
    api: &Api<Lease>,
    cfg: &LeaderElectionConfig,
    observed: &mut Option<(String, Instant)>,
) -> Result<bool, kube::Error> {
    let secs = cfg.lease_duration.as_secs() as i32;
    let existing = match api.get_opt(&cfg.name).await? {
        Some(l) => l,
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.name.clone()),
                    namespace: Some(cfg.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(cfg.identity.clone()),
                    lease_duration_seconds: Some(secs),
                    acquire_time: Some(now_micro()),
                    renew_time: Some(now_micro()),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        }
    };
    let spec = existing.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let ours = holder == cfg.identity;
    if !ours && !holder.is_empty() {
        // Track changes of the record by its renew time, timed on our own clock.
        let stamp = format!("{holder}/{:?}", spec.renew_time.as_ref().map(|t| t.0));
        let changed = observed.as_ref().map(|(s, _)| s != &stamp).unwrap_or(true);
        if changed {
            *observed = Some((stamp, Instant::now()));
        }
        let dur = spec
            .lease_duration_seconds
            .map(|s| s.max(1) as u64)
            .unwrap_or(secs as u64);
        let since = observed
            .as_ref()
            .map(|(_, t)| t.elapsed())
            .unwrap_or_default();
        if since < Duration::from_secs(dur) {
            return Ok(false);
        }
        tracing::info!(lease = %cfg.name, previous = %holder, "lease expired; taking over");
    }
    let mut lease = existing;
    let transitions = spec.lease_transitions.unwrap_or(0) + if ours { 0 } else { 1 };
    lease.spec = Some(LeaseSpec {
        holder_identity: Some(cfg.identity.clone()),
        lease_duration_seconds: Some(secs),
        acquire_time: if ours {
            spec.acquire_time
        } else {
            Some(now_micro())
        },
        renew_time: Some(now_micro()),
        lease_transitions: Some(transitions),
        ..spec
    });
    // `replace` carries the resourceVersion we read: a concurrent writer makes this a 409.
    match api.replace(&cfg.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Gives the lease up on clean shutdown so a standby takes over at once (upstream's
/// `ReleaseOnCancel`).
async fn release(api: &Api<Lease>, cfg: &LeaderElectionConfig) {
    if let Ok(Some(mut lease)) = api.get_opt(&cfg.name).await {
        if let Some(spec) = lease.spec.as_mut() {
            if spec.holder_identity.as_deref() == Some(cfg.identity.as_str()) {
                spec.holder_identity = None;
                spec.lease_duration_seconds = Some(1);
                spec.renew_time = Some(now_micro());
                let _ = api.replace(&cfg.name, &PostParams::default(), &lease).await;
            }
        }
    }
}

/// Upstream's default identity: hostname + "_" + a random suffix.
pub fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    let suffix: u64 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ u64::from(std::process::id());
    format!("{host}_{suffix:x}")
}
