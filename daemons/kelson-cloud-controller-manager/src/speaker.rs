//! Speaker mode (one per node) and the control-plane VIP holder.
//!
//! The speaker heartbeats a Lease `kelson-speaker-<node>` (label `kelson.io/speaker-node`) so
//! the controller knows it can announce, watches Services, and holds exactly the addresses
//! whose `kelson.io/announcing-node` annotation names its node: it adds each new one to its
//! interface and sends gratuitous ARP / unsolicited NA right away and twice more (after 1 s
//! and 3 s, as a lost first frame must not leave neighbours pointing at the old holder), and
//! removes addresses it no longer holds. On SIGTERM it drops every address and deletes its
//! Lease, so the controller moves the addresses at once instead of after the lease expires.
//!
//! The VIP holder uses the same announcer under its own leader election (Lease
//! `[vip].lease-name`): whoever leads holds the address. Run it next to each API server with a
//! kubeconfig that points at *that* API server (not at the VIP): a machine whose API server
//! is down cannot renew, steps down within the renew deadline, and the VIP moves to a healthy
//! one.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use kelson_kube::{run_leader_election, LeaderElectionConfig};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::json;
use tokio::sync::{watch, Notify};

use crate::announce::Announcer;
use crate::controller::SPEAKER_LABEL;
use crate::informer::{self, Tasks};
use crate::services::{parse_announcers, ANNOUNCER_ANNOTATION};
use crate::Shared;

/// When to repeat the announcement after taking an address over.
const REPEATS: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(3)];

/// Addresses held, each with when it was taken and how many repeats went out.
#[derive(Debug, Default)]
struct Held(BTreeMap<IpAddr, (Instant, usize)>);

impl Held {
    async fn converge(&mut self, want: &[IpAddr], ann: &Announcer, shared: &Shared) {
        let stale: Vec<IpAddr> = self
            .0
            .keys()
            .filter(|ip| !want.contains(ip))
            .copied()
            .collect();
        for ip in stale {
            match ann.del(ip).await {
                Ok(()) => {
                    tracing::info!(%ip, "released address");
                    self.0.remove(&ip);
                }
                Err(e) => tracing::warn!(%ip, error = %e, "removing address failed"),
            }
        }
        for ip in want {
            if self.0.contains_key(ip) {
                continue;
            }
            if let Err(e) = ann.add(*ip).await {
                tracing::warn!(%ip, error = %e, "adding address failed");
                continue;
            }
            if let Err(e) = ann.announce(*ip).await {
                tracing::warn!(%ip, error = %e, "sending announcement failed");
            }
            tracing::info!(%ip, iface = ann.interface(), "took address over and announced it");
            self.0.insert(*ip, (Instant::now(), 0));
        }
        for (ip, (since, sent)) in self.0.iter_mut() {
            if *sent < REPEATS.len() && since.elapsed() >= REPEATS[*sent] {
                *sent += 1;
                if let Err(e) = ann.announce(*ip).await {
                    tracing::warn!(%ip, error = %e, "repeating announcement failed");
                }
            }
        }
        *shared.announced.lock() = self.0.keys().copied().collect();
    }

    async fn release_all(&mut self, ann: &Announcer, shared: &Shared) {
        self.converge(&[], ann, shared).await;
    }
}

fn now_micro() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

async fn heartbeat(api: &Api<Lease>, node: &str, secs: i32) -> Result<(), kube::Error> {
    let name = format!("kelson-speaker-{node}");
    let body = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name, "labels": {SPEAKER_LABEL: node}},
        "spec": {"holderIdentity": node, "leaseDurationSeconds": secs, "renewTime": now_micro()}
    });
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&body))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => {
            let lease: Lease = serde_json::from_value(body).expect("static Lease shape");
            api.create(&PostParams::default(), &lease).await.map(|_| ())
        }
        Err(e) => Err(e),
    }
}

/// The addresses `node` should hold according to the Services' annotations.
pub fn wanted_for(services: &[Arc<Service>], node: &str) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = services
        .iter()
        .filter(|s| s.metadata.deletion_timestamp.is_none())
        .filter(|s| s.spec.as_ref().and_then(|sp| sp.type_.as_deref()) == Some("LoadBalancer"))
        .filter_map(|s| s.annotations().get(ANNOUNCER_ANNOTATION).cloned())
        .flat_map(|v| parse_announcers(&v))
        .filter(|(_, n)| n == node)
        .map(|(ip, _)| ip)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Every address any LoadBalancer Service has or is annotated with.
fn lb_addresses(services: &[Arc<Service>]) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = services
        .iter()
        .flat_map(|s| {
            let mut v = crate::services::status_ips(s);
            if let Some(a) = s.annotations().get(ANNOUNCER_ANNOTATION) {
                v.extend(parse_announcers(a).into_iter().map(|(ip, _)| ip));
            }
            v
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

pub async fn run_speaker(
    client: kube::Client,
    node: String,
    namespace: String,
    lease_duration: Duration,
    ann: Announcer,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), &namespace);
    let notify = Arc::new(Notify::new());
    let mut tasks = Tasks::default();
    let services = informer::start(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
        notify.clone(),
        &mut tasks,
    );
    tokio::select! {
        r = services.wait_until_ready() => r?,
        _ = shutdown.changed() => return Ok(()),
    }
    shared.synced.store(true, Ordering::Relaxed);
    tracing::info!(%node, iface = ann.interface(), mac = %crate::announce::format_mac(&ann.mac()), "speaker running");
    let secs = lease_duration.as_secs().max(1) as i32;
    let renew_every = lease_duration / 3;
    let mut last_beat: Option<Instant> = None;
    let mut held = Held::default();
    // A speaker that crashed (or was SIGKILLed) cannot have released its addresses. Whatever
    // LoadBalancer address now belongs elsewhere must not stay on this interface, or two
    // nodes would answer ARP for it.
    let want = wanted_for(&services.state(), &node);
    for ip in lb_addresses(&services.state()) {
        if !want.contains(&ip) {
            if let Err(e) = ann.del(ip).await {
                tracing::warn!(%ip, error = %e, "removing a leftover address failed");
            }
        }
    }
    loop {
        if last_beat.is_none_or(|t| t.elapsed() >= renew_every) {
            match heartbeat(&leases, &node, secs).await {
                Ok(()) => last_beat = Some(Instant::now()),
                Err(e) => tracing::warn!(error = %e, "speaker heartbeat failed"),
            }
        }
        let want = wanted_for(&services.state(), &node);
        held.converge(&want, &ann, &shared).await;
        tokio::select! {
            _ = notify.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = shutdown.changed() => break,
        }
    }
    held.release_all(&ann, &shared).await;
    let _ = leases
        .delete(&format!("kelson-speaker-{node}"), &DeleteParams::default())
        .await;
    tracing::info!("speaker stopped; addresses released");
    Ok(())
}

/// Holds `ip` while this candidate leads the VIP Lease.
pub async fn run_vip(
    client: kube::Client,
    ip: IpAddr,
    le: LeaderElectionConfig,
    ann: Announcer,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let api: Api<Lease> = Api::namespaced(client, &le.namespace);
    let (lease_name, identity) = (le.name.clone(), le.identity.clone());
    let (lead_tx, mut lead_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let election = tokio::spawn(run_leader_election(api.clone(), le, lead_tx, stop_rx));
    let mut held = Held::default();
    let vip_shared = Shared::default();
    loop {
        let leading = *lead_rx.borrow_and_update();
        shared
            .holds_vip
            .store(leading && held.0.contains_key(&ip), Ordering::Relaxed);
        let want: &[IpAddr] = if leading { &[ip] } else { &[] };
        held.converge(want, &ann, &vip_shared).await;
        shared
            .holds_vip
            .store(held.0.contains_key(&ip), Ordering::Relaxed);
        tokio::select! {
            r = lead_rx.changed() => if r.is_err() { break },
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.changed() => break,
        }
    }
    // Release the Lease first and keep answering on the address until another candidate holds
    // the Lease (bounded): the API server behind this address still serves while its speaker
    // stops (upgrade.yml stops the speaker before restarting anything), so clients see no gap.
    // Dropping the address first left it unanswered until the next holder's retry period
    // (2 s: "no route to host" for every request in between). Both hold the address for at
    // most one poll plus `SUCCESSOR_GRACE` after the successor announced it; both serve the
    // same API then.
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), election).await;
    if held.0.contains_key(&ip) {
        wait_for_other_holder(&api, &lease_name, &identity, HANDOVER_WAIT).await;
    }
    held.release_all(&ann, &vip_shared).await;
    shared.holds_vip.store(false, Ordering::Relaxed);
    Ok(())
}

/// How long a stopping VIP holder keeps the address for a successor to take the Lease: a bit
/// more than the candidates' retry period (2 s by default).
const HANDOVER_WAIT: Duration = Duration::from_secs(4);
/// Time a successor has from writing the Lease to holding and announcing the address.
const SUCCESSOR_GRACE: Duration = Duration::from_millis(300);

/// Polls the Lease until someone other than `identity` holds it, or `limit` passes.
async fn wait_for_other_holder(api: &Api<Lease>, name: &str, identity: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(lease)) = api.get_opt(name).await {
            let holder = lease
                .spec
                .and_then(|s| s.holder_identity)
                .unwrap_or_default();
            if !holder.is_empty() && holder != identity {
                // The successor writes the Lease, then adds the address and announces it:
                // give it that long before the address goes here.
                tokio::time::sleep(SUCCESSOR_GRACE).await;
                tracing::info!(successor = %holder, "VIP lease taken over; dropping the address");
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tracing::info!("no successor took the VIP lease; dropping the address anyway");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wanted_follows_the_annotation() {
        let svc = |name: &str, ty: &str, ann: &str| -> Arc<Service> {
            Arc::new(
                serde_json::from_value(json!({
                    "metadata": {"name": name, "namespace": "d", "annotations": {ANNOUNCER_ANNOTATION: ann}},
                    "spec": {"type": ty}
                }))
                .unwrap(),
            )
        };
        let s = vec![
            svc("a", "LoadBalancer", "10.0.0.2=n1"),
            svc("b", "LoadBalancer", "10.0.0.1=n1,fd00::1=n2"),
            svc("c", "ClusterIP", "10.0.0.3=n1"),
        ];
        assert_eq!(
            wanted_for(&s, "n1"),
            vec![
                "10.0.0.1".parse::<IpAddr>().unwrap(),
                "10.0.0.2".parse().unwrap()
            ]
        );
        assert_eq!(
            wanted_for(&s, "n2"),
            vec!["fd00::1".parse::<IpAddr>().unwrap()]
        );
        assert!(wanted_for(&s, "n3").is_empty());
    }
}
