//! The service controller: LoadBalancer addresses from the configured pools, and the choice of
//! the node that announces each one.
//!
//! Level-triggered: every pass looks at all Services and converges each one, so a missed watch
//! event or a failed write is repaired on the next pass. Per Service of type LoadBalancer
//! (without a `loadBalancerClass`, which upstream reserves for other implementations):
//! 1. add the finalizer `service.kubernetes.io/load-balancer-cleanup` (upstream's) first, so a
//!    deletion always passes through here and frees the address;
//! 2. keep the addresses it already holds if they still satisfy the request, else allocate:
//!    the annotation `kelson.io/loadbalancer-ips` (comma-separated) or `spec.loadBalancerIP`
//!    names exact addresses; `kelson.io/address-pool` restricts to one pool; otherwise the
//!    lowest free address of the first pool with one, of the Service's first IP family;
//! 3. on a conflict (address in use, outside the pools, pool exhausted) write a Warning event
//!    `SyncLoadBalancerFailed` (once per distinct message) and leave the status empty;
//! 4. write `status.loadBalancer.ingress`;
//! 5. choose the announcing node per address (rendezvous hash over healthy candidates, see
//!    [`crate::election`]) and record it in the annotation `kelson.io/announcing-node`
//!    (`ip=node,...`). The controller decides and the speakers follow the annotation, rather
//!    than every speaker hashing on its own view (MetalLB's way): one leader-elected decision
//!    can never have two speakers disagree about who holds an address because their caches
//!    differ, and `kubectl get svc -o yaml` shows where an address lives.
//!
//! Deleting a Service, or changing its type away from LoadBalancer, frees its addresses,
//! clears the status and the annotation and removes the finalizer.
//!
//! Allocations survive restarts because they are rebuilt from the Services' status when this
//! instance becomes leader ([`ServiceController::rebuild`]); the oldest Service wins a
//! duplicate.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ObjectReference, Service};
use kube::api::{Api, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::json;

use crate::election;
use crate::events;
use crate::pools::{AllocError, Allocator};

pub const FINALIZER: &str = "service.kubernetes.io/load-balancer-cleanup";
pub const IPS_ANNOTATION: &str = "kelson.io/loadbalancer-ips";
pub const POOL_ANNOTATION: &str = "kelson.io/address-pool";
pub const ANNOUNCER_ANNOTATION: &str = "kelson.io/announcing-node";

/// A node that may announce addresses: Ready, with a live speaker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    pub zone: Option<String>,
}

pub struct ServiceController {
    client: kube::Client,
    pub alloc: Allocator,
    /// Last error message per Service, so a persisting conflict is reported once.
    last_error: HashMap<String, String>,
    /// Addresses last reported as having no announcer, same purpose.
    no_announcer: HashSet<IpAddr>,
}

fn key(s: &Service) -> String {
    format!("{}/{}", s.namespace().unwrap_or_default(), s.name_any())
}

fn is_managed_lb(s: &Service) -> bool {
    s.spec.as_ref().is_some_and(|sp| {
        sp.type_.as_deref() == Some("LoadBalancer") && sp.load_balancer_class.is_none()
    })
}

/// The addresses in `status.loadBalancer.ingress` (hostnames ignored).
pub fn status_ips(s: &Service) -> Vec<IpAddr> {
    s.status
        .as_ref()
        .and_then(|st| st.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|ing| {
            ing.iter()
                .filter_map(|i| i.ip.as_deref().and_then(|ip| ip.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}

/// Parses `ip=node,ip=node`.
pub fn parse_announcers(v: &str) -> Vec<(IpAddr, String)> {
    v.split(',')
        .filter_map(|p| {
            let (ip, node) = p.trim().split_once('=')?;
            Some((ip.trim().parse().ok()?, node.trim().to_string()))
        })
        .collect()
}

fn requested_ips(s: &Service) -> Result<Vec<IpAddr>, AllocError> {
    let raw = s
        .annotations()
        .get(IPS_ANNOTATION)
        .cloned()
        .or_else(|| s.spec.as_ref().and_then(|sp| sp.load_balancer_ip.clone()))
        .unwrap_or_default();
    raw.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(|x| x.parse().map_err(|_| AllocError::BadAddress(x.to_string())))
        .collect()
}

fn svc_ref(s: &Service) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Service".into()),
        name: s.metadata.name.clone(),
        namespace: s.metadata.namespace.clone(),
        uid: s.metadata.uid.clone(),
        resource_version: s.metadata.resource_version.clone(),
        ..Default::default()
    }
}

impl ServiceController {
    pub fn new(client: kube::Client, alloc: Allocator) -> ServiceController {
        ServiceController {
            client,
            alloc,
            last_error: HashMap::new(),
            no_announcer: HashSet::new(),
        }
    }

    /// Rebuilds the allocations from the Services' status (on becoming leader): the oldest
    /// Service keeps a contested address; a later holder is re-allocated on the next pass.
    pub fn rebuild(&mut self, services: &[Arc<Service>]) {
        self.alloc.clear();
        self.last_error.clear();
        self.no_announcer.clear();
        let mut lbs: Vec<&Arc<Service>> = services
            .iter()
            .filter(|s| is_managed_lb(s) && s.metadata.deletion_timestamp.is_none())
            .collect();
        lbs.sort_by_key(|s| (s.metadata.creation_timestamp.clone().map(|t| t.0), key(s)));
        for s in lbs {
            let k = key(s);
            let pool = s.annotations().get(POOL_ANNOTATION).cloned();
            for ip in status_ips(s) {
                if let Err(e) = self.alloc.assign(&k, ip, pool.as_deref()) {
                    tracing::warn!(service = %k, %ip, error = %e, "not keeping address from status");
                }
            }
        }
        tracing::info!(
            allocations = self.alloc.all().len(),
            "rebuilt allocations from Service status"
        );
    }

    /// One pass over all Services.
    pub async fn reconcile(&mut self, services: &[Arc<Service>], candidates: &[Candidate]) {
        let mut present = HashSet::new();
        // Oldest first (name breaks ties), as in rebuild(): when Services contend for the
        // last address of a pool, the outcome does not depend on cache iteration order.
        let mut services: Vec<&Arc<Service>> = services.iter().collect();
        services.sort_by_key(|s| (s.metadata.creation_timestamp.clone().map(|t| t.0), key(s)));
        for s in services {
            let k = key(s);
            present.insert(k.clone());
            if let Err(e) = self.reconcile_one(s, &k, candidates).await {
                tracing::warn!(service = %k, error = %e, "service sync failed; retrying");
            }
        }
        // Services deleted behind our back (no finalizer, e.g. created before we ran).
        let gone: Vec<String> = self
            .alloc
            .all()
            .values()
            .filter(|o| !present.contains(*o))
            .cloned()
            .collect();
        for o in gone {
            let freed = self.alloc.release(&o);
            tracing::info!(service = %o, ?freed, "service gone; addresses freed");
        }
        self.last_error.retain(|k, _| present.contains(k));
        let held: HashSet<IpAddr> = self.alloc.all().keys().copied().collect();
        self.no_announcer.retain(|ip| held.contains(ip));
    }

    async fn reconcile_one(
        &mut self,
        s: &Service,
        k: &str,
        candidates: &[Candidate],
    ) -> Result<(), kube::Error> {
        let ns = s.namespace().unwrap_or_default();
        let name = s.name_any();
        let api: Api<Service> = Api::namespaced(self.client.clone(), &ns);
        let has_fin = s.finalizers().iter().any(|f| f == FINALIZER);
        let deleting = s.metadata.deletion_timestamp.is_some();
        if !is_managed_lb(s) || deleting {
            if !has_fin {
                self.alloc.release(k);
                return Ok(());
            }
            let freed = self.alloc.release(k);
            self.last_error.remove(k);
            if !deleting && !status_ips(s).is_empty() {
                set_ingress(&api, &name, &[]).await?;
            }
            let fins: Vec<String> = s
                .finalizers()
                .iter()
                .filter(|f| *f != FINALIZER)
                .cloned()
                .collect();
            let mut meta =
                json!({"finalizers": fins, "resourceVersion": s.metadata.resource_version});
            if s.annotations().contains_key(ANNOUNCER_ANNOTATION) {
                meta["annotations"] = json!({ ANNOUNCER_ANNOTATION: null });
            }
            api.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": meta})),
            )
            .await?;
            tracing::info!(service = %k, ?freed, "load balancer removed");
            events::emit(
                &self.client,
                &ns,
                svc_ref(s),
                "Normal",
                "DeletedLoadBalancer",
                "Deleted load balancer",
            )
            .await;
            return Ok(());
        }

        if !has_fin {
            let mut fins = s.finalizers().to_vec();
            fins.push(FINALIZER.into());
            api.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"finalizers": fins, "resourceVersion": s.metadata.resource_version}})),
            )
            .await?;
            // The next pass (triggered by this write) continues from the updated object.
            return Ok(());
        }

        let wanted = match self.ensure_addresses(s, k) {
            Ok(ips) => {
                self.last_error.remove(k);
                ips
            }
            Err(e) => {
                let msg = format!("Error syncing load balancer: {e}");
                if self.last_error.get(k) != Some(&msg) {
                    tracing::warn!(service = %k, error = %e, "cannot allocate a load balancer address");
                    events::emit(
                        &self.client,
                        &ns,
                        svc_ref(s),
                        "Warning",
                        "SyncLoadBalancerFailed",
                        &msg,
                    )
                    .await;
                    self.last_error.insert(k.to_string(), msg);
                }
                if !status_ips(s).is_empty() {
                    set_ingress(&api, &name, &[]).await?;
                }
                if s.annotations().contains_key(ANNOUNCER_ANNOTATION) {
                    api.patch(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(
                            json!({"metadata": {"annotations": {ANNOUNCER_ANNOTATION: null}}}),
                        ),
                    )
                    .await?;
                }
                return Ok(());
            }
        };

        if status_ips(s) != wanted {
            set_ingress(&api, &name, &wanted).await?;
            let list: Vec<String> = wanted.iter().map(ToString::to_string).collect();
            tracing::info!(service = %k, ips = %list.join(","), "load balancer address assigned");
            events::emit(
                &self.client,
                &ns,
                svc_ref(s),
                "Normal",
                "EnsuredLoadBalancer",
                &format!("Ensured load balancer {}", list.join(",")),
            )
            .await;
        }

        let mut pairs = Vec::new();
        for (ip, choice) in choose_announcers(&self.alloc, &wanted, candidates) {
            match choice {
                Ok(n) => {
                    self.no_announcer.remove(&ip);
                    pairs.push(format!("{ip}={n}"));
                }
                Err(zone) => {
                    if self.no_announcer.insert(ip) {
                        events::emit(
                            &self.client,
                            &ns,
                            svc_ref(s),
                            "Warning",
                            "NoAnnouncingNode",
                            &format!(
                                "no Ready node with a running speaker{} can announce {ip}",
                                zone.map(|z| format!(" in zone {z}")).unwrap_or_default()
                            ),
                        )
                        .await;
                    }
                }
            }
        }
        let want_ann = (!pairs.is_empty()).then(|| pairs.join(","));
        if s.annotations().get(ANNOUNCER_ANNOTATION) != want_ann.as_ref() {
            api.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"metadata": {"annotations": {ANNOUNCER_ANNOTATION: want_ann}}}),
                ),
            )
            .await?;
            tracing::info!(service = %k, announcers = ?want_ann, "announcing node(s) chosen");
        }
        Ok(())
    }

    /// The addresses the Service should have, allocating or re-allocating as needed.
    fn ensure_addresses(&mut self, s: &Service, k: &str) -> Result<Vec<IpAddr>, AllocError> {
        let requested = requested_ips(s)?;
        let pool = s.annotations().get(POOL_ANNOTATION).cloned();
        let current = self.alloc.owned_by(k);
        let fits = |alloc: &Allocator, ip: &IpAddr| match &pool {
            Some(p) => alloc.pool_of(*ip).is_some_and(|x| &x.name == p),
            None => alloc.pool_of(*ip).is_some(),
        };
        if !current.is_empty() && current.iter().all(|ip| fits(&self.alloc, ip)) {
            let mut req_sorted = requested.clone();
            req_sorted.sort();
            if requested.is_empty() || req_sorted == current {
                return Ok(current);
            }
        }
        self.alloc.release(k);
        if requested.is_empty() {
            let v6 = s
                .spec
                .as_ref()
                .and_then(|sp| sp.ip_families.as_ref())
                .and_then(|f| f.first())
                .is_some_and(|f| f == "IPv6");
            return Ok(vec![self.alloc.allocate(k, pool.as_deref(), v6)?]);
        }
        for ip in &requested {
            if let Err(e) = self.alloc.assign(k, *ip, pool.as_deref()) {
                self.alloc.release(k);
                return Err(e);
            }
        }
        // Sorted like owned_by() returns them, so the next pass sees no difference.
        let mut ips = requested;
        ips.sort();
        Ok(ips)
    }

    /// Snapshot for D-Bus and metrics.
    pub fn allocations(&self) -> BTreeMap<IpAddr, String> {
        self.alloc.all().clone()
    }
}

/// The announcing node per address: candidates in the address's pool zone (any candidate for
/// a pool without one), rendezvous-hashed. `Err(zone)` when no candidate qualifies.
pub fn choose_announcers(
    alloc: &Allocator,
    ips: &[IpAddr],
    candidates: &[Candidate],
) -> Vec<(IpAddr, Result<String, Option<String>>)> {
    ips.iter()
        .map(|ip| {
            let zone = alloc.pool_of(*ip).and_then(|p| p.zone.clone());
            let eligible = candidates
                .iter()
                .filter(|c| zone.is_none() || c.zone == zone)
                .map(|c| c.name.as_str());
            let choice = election::choose(*ip, eligible)
                .map(str::to_string)
                .ok_or(zone);
            (*ip, choice)
        })
        .collect()
}

async fn set_ingress(api: &Api<Service>, name: &str, ips: &[IpAddr]) -> Result<(), kube::Error> {
    let ingress = if ips.is_empty() {
        serde_json::Value::Null
    } else {
        json!(ips
            .iter()
            .map(|ip| json!({"ip": ip.to_string(), "ipMode": "VIP"}))
            .collect::<Vec<_>>())
    };
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": ingress}}})),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcer_annotation_round_trip() {
        let v = parse_announcers("10.0.0.1=node-a, fd00::1=node-b,garbage,=x");
        assert_eq!(
            v,
            vec![
                ("10.0.0.1".parse().unwrap(), "node-a".to_string()),
                ("fd00::1".parse().unwrap(), "node-b".to_string())
            ]
        );
    }

    #[test]
    fn zoned_pools_are_announced_in_their_zone() {
        use crate::config::PoolConfig;
        use crate::pools::Pool;
        let pool = |name: &str, range: &str, zone: Option<&str>| {
            Pool::from_config(&PoolConfig {
                name: name.into(),
                cidr: None,
                ranges: vec![range.into()],
                zone: zone.map(Into::into),
            })
            .unwrap()
        };
        let alloc = Allocator::new(vec![
            pool("any", "10.0.0.1-10.0.0.50", None),
            pool("za", "10.0.1.1-10.0.1.50", Some("a")),
            pool("zc", "10.0.2.1-10.0.2.50", Some("c")),
        ]);
        let cands = vec![
            Candidate {
                name: "n-a1".into(),
                zone: Some("a".into()),
            },
            Candidate {
                name: "n-a2".into(),
                zone: Some("a".into()),
            },
            Candidate {
                name: "n-b".into(),
                zone: Some("b".into()),
            },
        ];
        let mut seen_any = std::collections::HashSet::new();
        for i in 1..=50 {
            let any: IpAddr = format!("10.0.0.{i}").parse().unwrap();
            let za: IpAddr = format!("10.0.1.{i}").parse().unwrap();
            let zc: IpAddr = format!("10.0.2.{i}").parse().unwrap();
            let got = choose_announcers(&alloc, &[any, za, zc], &cands);
            seen_any.insert(got[0].1.clone().unwrap());
            assert!(got[1].1.as_ref().unwrap().starts_with("n-a"), "{got:?}");
            assert_eq!(got[2].1, Err(Some("c".to_string())));
        }
        assert_eq!(seen_any.len(), 3, "unzoned addresses may go to any node");
    }

    #[test]
    fn requested_addresses() {
        let mut s: Service = serde_json::from_value(json!({
            "metadata": {"name": "a", "namespace": "d"},
            "spec": {"type": "LoadBalancer", "loadBalancerIP": "10.0.0.7"}
        }))
        .unwrap();
        assert_eq!(
            requested_ips(&s).unwrap(),
            vec!["10.0.0.7".parse::<IpAddr>().unwrap()]
        );
        s.metadata.annotations =
            Some([(IPS_ANNOTATION.to_string(), "10.0.0.8, fd00::8".to_string())].into());
        assert_eq!(requested_ips(&s).unwrap().len(), 2);
        s.metadata.annotations = Some([(IPS_ANNOTATION.to_string(), "ten".to_string())].into());
        assert_eq!(requested_ips(&s), Err(AllocError::BadAddress("ten".into())));
        assert!(is_managed_lb(&s));
        s.spec.as_mut().unwrap().load_balancer_class = Some("other".into());
        assert!(!is_managed_lb(&s));
    }
}
