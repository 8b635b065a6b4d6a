//! Endpoints and EndpointSlices from Service selectors and pod readiness.
//!
//! For a Service with a selector, the selected pods that have an IP and are not finished are
//! its endpoints. Endpoints (the legacy object, same name as the Service) lists ready pods in
//! `addresses` and the others in `notReadyAddresses` (terminating pods are left out unless
//! `publishNotReadyAddresses`). The EndpointSlice (`<service>-<hash>`, labelled
//! `kubernetes.io/service-name` and managed-by `endpointslice-controller.k8s.io`) carries every
//! endpoint with the conditions ready (ready and not terminating), serving (ready) and
//! terminating, plus nodeName and the zone from the node's `topology.kubernetes.io/zone`
//! label. Ports: a named targetPort is resolved per pod from its container ports.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointPort as SlicePort, EndpointSlice,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, PostParams};

use super::{delete_object, err_message, is_status, Controller, Ctx, Result};
use crate::events::EventType;

/// Reporting controller names of upstream's endpoints and endpointslice controllers.
const ENDPOINTS_COMPONENT: &str = "endpoint-controller";
const SLICES_COMPONENT: &str = "endpoint-slice-controller";
use crate::informer::{key_of, split_key};
use crate::queue::WorkQueue;
use crate::util;

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// Wires services and pods (and, for slices, the slices themselves) to a queue of service keys.
fn wire(ctx: &Ctx, queue: &WorkQueue) {
    let q = queue.clone();
    ctx.inf.services.on_change(move |s, _| q.add(key_of(s)));
    let q = queue.clone();
    let svcs = ctx.inf.services.clone();
    ctx.inf.pods.on_change(move |p, _| {
        let ns = p.metadata.namespace.as_deref().unwrap_or_default();
        for s in svcs.list_ns(ns) {
            if let Some(sel) = s.spec.as_ref().and_then(|s| s.selector.as_ref()) {
                if !sel.is_empty()
                    && util::selector_matches(&util::map_selector(sel), p.metadata.labels.as_ref())
                {
                    q.add(key_of(&*s));
                }
            }
        }
    });
    ctx.inf.nodes.mark_used();
}

/// (name, port, protocol) of a service port resolved for one pod.
type ResolvedPort = (Option<String>, i32, String);

struct Selected {
    pod: Arc<Pod>,
    ip: String,
    ready: bool,
    terminating: bool,
}

fn selected(ctx: &Ctx, svc: &Service) -> Option<Vec<Selected>> {
    let ns = svc.metadata.namespace.as_deref().unwrap_or_default();
    let sel = svc
        .spec
        .as_ref()?
        .selector
        .as_ref()
        .filter(|s| !s.is_empty())?;
    let sel = util::map_selector(sel);
    let mut out: Vec<Selected> = ctx
        .inf
        .pods
        .list_ns(ns)
        .into_iter()
        .filter(|p| util::selector_matches(&sel, p.metadata.labels.as_ref()))
        .filter(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded") | Some("Failed")
            )
        })
        .filter_map(|p| {
            let ip = p
                .status
                .as_ref()?
                .pod_ip
                .clone()
                .filter(|i| !i.is_empty())?;
            Some(Selected {
                ready: util::is_pod_ready(&p),
                terminating: util::is_deleting(&p.metadata),
                ip,
                pod: p,
            })
        })
        .collect();
    out.sort_by(|a, b| a.ip.cmp(&b.ip));
    Some(out)
}

/// The port a service port reaches on `pod` (a named targetPort looks up container ports).
fn target_port(sp: &k8s_openapi::api::core::v1::ServicePort, pod: &Pod) -> Option<i32> {
    match &sp.target_port {
        None => Some(sp.port),
        Some(IntOrString::Int(i)) => Some(*i),
        Some(IntOrString::String(name)) => pod
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port),
    }
}

fn pod_ref(p: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        namespace: p.metadata.namespace.clone(),
        name: p.metadata.name.clone(),
        uid: p.metadata.uid.clone(),
        ..Default::default()
    }
}

pub fn endpoints_controller(ctx: &Ctx) -> Controller {
    let queue = WorkQueue::new();
    wire(ctx, &queue);
    let q = queue.clone();
    ctx.inf.endpoints.on_change(move |e, _| q.add(key_of(e)));
    let c = ctx.clone();
    let svcs = ctx.inf.services.clone();
    Controller::new("endpoints-controller", queue, 2, move |key| {
        let c = c.clone();
        async move { sync_endpoints(&c, &key).await }
    })
    .resync(Duration::from_secs(30), move || {
        svcs.list().iter().map(|s| key_of(&**s)).collect()
    })
}

async fn sync_endpoints(ctx: &Ctx, key: &str) -> Result<Option<Duration>> {
    let (Some(ns), name) = split_key(key) else {
        return Ok(None);
    };
    let api: Api<Endpoints> = Api::namespaced(ctx.client.clone(), ns);
    let existing = ctx.inf.endpoints.get(Some(ns), name);
    let Some(svc) = ctx.inf.services.get(Some(ns), name) else {
        if existing.is_some() {
            delete_object(&api, name, &DeleteParams::default()).await?;
        }
        return Ok(None);
    };
    let Some(pods) = selected(ctx, &svc) else {
        return Ok(None);
    };
    let publish = svc
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        == Some(true);
    let sports = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default();
    // Group addresses by their resolved port list, as upstream's subset repacking does.
    let mut subsets: BTreeMap<Vec<ResolvedPort>, (Vec<EndpointAddress>, Vec<EndpointAddress>)> =
        BTreeMap::new();
    for s in &pods {
        if s.terminating && !publish {
            continue;
        }
        let ports: Option<Vec<_>> = sports
            .iter()
            .map(|sp| {
                target_port(sp, &s.pod).map(|p| {
                    (
                        sp.name.clone(),
                        p,
                        sp.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    )
                })
            })
            .collect();
        let Some(ports) = ports else { continue };
        let addr = EndpointAddress {
            ip: s.ip.clone(),
            node_name: s.pod.spec.as_ref().and_then(|p| p.node_name.clone()),
            target_ref: Some(pod_ref(&s.pod)),
            ..Default::default()
        };
        let e = subsets.entry(ports).or_default();
        if s.ready || publish {
            e.0.push(addr);
        } else {
            e.1.push(addr);
        }
    }
    let subsets: Vec<EndpointSubset> = subsets
        .into_iter()
        .map(|(ports, (ready, not_ready))| EndpointSubset {
            addresses: (!ready.is_empty()).then_some(ready),
            not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
            ports: Some(
                ports
                    .into_iter()
                    .map(|(name, port, protocol)| EndpointPort {
                        name,
                        port,
                        protocol: Some(protocol),
                        ..Default::default()
                    })
                    .collect(),
            ),
        })
        .collect();
    let subsets = (!subsets.is_empty()).then_some(subsets);
    let labels = svc.metadata.labels.clone();
    match existing {
        Some(e) if e.subsets == subsets && e.metadata.labels == labels => Ok(None),
        Some(e) => {
            let mut e = (*e).clone();
            e.subsets = subsets;
            e.metadata.labels = labels;
            match api.replace(name, &PostParams::default(), &e).await {
                Ok(_) => Ok(None),
                Err(err) if is_status(&err, 409) || is_status(&err, 404) => Err(err.into()),
                Err(err) => {
                    ctx.events.event(
                        ENDPOINTS_COMPONENT,
                        &e,
                        EventType::Warning,
                        "FailedToUpdateEndpoint",
                        format!(
                            "Failed to update endpoint {ns}/{name}: {}",
                            err_message(&err)
                        ),
                    );
                    Err(err.into())
                }
            }
        }
        None => {
            let e = Endpoints {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    namespace: Some(ns.into()),
                    labels,
                    ..Default::default()
                },
                subsets,
            };
            match api.create(&PostParams::default(), &e).await {
                Ok(_) => Ok(None),
                Err(e) if is_status(&e, 409) => Ok(Some(Duration::from_millis(200))),
                // Forbidden: most likely the namespace is terminating (upstream stays quiet).
                Err(err) if is_status(&err, 403) => Err(err.into()),
                Err(err) => {
                    ctx.events.event(
                        ENDPOINTS_COMPONENT,
                        &e,
                        EventType::Warning,
                        "FailedToCreateEndpoint",
                        format!(
                            "Failed to create endpoint for service {ns}/{name}: {}",
                            err_message(&err)
                        ),
                    );
                    Err(err.into())
                }
            }
        }
    }
}

pub fn endpointslice_controller(ctx: &Ctx) -> Controller {
    let queue = WorkQueue::new();
    wire(ctx, &queue);
    let q = queue.clone();
    ctx.inf.endpointslices.on_change(move |s, _| {
        if let Some(svc) = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        {
            q.add(format!(
                "{}/{svc}",
                s.metadata.namespace.as_deref().unwrap_or_default()
            ));
        }
    });
    let c = ctx.clone();
    let svcs = ctx.inf.services.clone();
    Controller::new("endpointslice-controller", queue, 2, move |key| {
        let c = c.clone();
        async move {
            let r = sync_slices(&c, &key).await;
            if let Err(super::Error::Kube(e)) = &r {
                let (ns, name) = split_key(&key);
                if let Some(svc) = c.inf.services.get(ns, name) {
                    if !is_status(e, 409) && !is_status(e, 404) {
                        c.events.event(
                            SLICES_COMPONENT,
                            &*svc,
                            EventType::Warning,
                            "FailedToUpdateEndpointSlices",
                            format!(
                                "Error updating Endpoint Slices for Service {key}: {}",
                                err_message(e)
                            ),
                        );
                    }
                }
            }
            r
        }
    })
    .resync(Duration::from_secs(30), move || {
        svcs.list().iter().map(|s| key_of(&**s)).collect()
    })
}

/// Our slices for a service: `<service>-<hash of the service uid>` (one slice per service).
fn slice_name(svc: &Service) -> String {
    let uid = svc.metadata.uid.as_deref().unwrap_or_default();
    let h = util::safe_encode(&util::fnv32a(&[uid.as_bytes()]).to_string());
    format!(
        "{}-{}",
        svc.metadata.name.as_deref().unwrap_or_default(),
        &h[..h.len().min(5)]
    )
}

async fn sync_slices(ctx: &Ctx, key: &str) -> Result<Option<Duration>> {
    let (Some(ns), name) = split_key(key) else {
        return Ok(None);
    };
    let api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), ns);
    let ours: Vec<Arc<EndpointSlice>> = ctx
        .inf
        .endpointslices
        .list_ns(ns)
        .into_iter()
        .filter(|s| {
            let l = s.metadata.labels.clone().unwrap_or_default();
            l.get(SERVICE_NAME_LABEL).map(String::as_str) == Some(name)
                && l.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY)
        })
        .collect();
    let svc = ctx.inf.services.get(Some(ns), name);
    let pods = svc.as_ref().and_then(|s| selected(ctx, s));
    let (Some(svc), Some(pods)) = (svc, pods) else {
        // No service (or no selector): our slices go (the GC would too, via ownerReferences).
        for s in ours {
            let sn = s.metadata.name.as_deref().unwrap_or_default();
            delete_object(&api, sn, &DeleteParams::default()).await?;
        }
        return Ok(None);
    };
    let sports = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default();
    let mut endpoints = Vec::new();
    let mut ports: Option<Vec<SlicePort>> = None;
    for s in &pods {
        let node = s.pod.spec.as_ref().and_then(|p| p.node_name.clone());
        let zone = node
            .as_deref()
            .and_then(|n| ctx.inf.nodes.get(None, n))
            .and_then(|n| {
                n.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(ZONE_LABEL).cloned())
            });
        if ports.is_none() {
            ports = Some(
                sports
                    .iter()
                    .map(|sp| SlicePort {
                        name: Some(sp.name.clone().unwrap_or_default()),
                        port: target_port(sp, &s.pod),
                        protocol: Some(sp.protocol.clone().unwrap_or_else(|| "TCP".into())),
                        app_protocol: sp.app_protocol.clone(),
                    })
                    .collect(),
            );
        }
        endpoints.push(Endpoint {
            addresses: vec![s.ip.clone()],
            conditions: Some(EndpointConditions {
                ready: Some(s.ready && !s.terminating),
                serving: Some(s.ready),
                terminating: Some(s.terminating),
            }),
            node_name: node,
            zone,
            target_ref: Some(pod_ref(&s.pod)),
            ..Default::default()
        });
    }
    let ip_v6 = svc
        .spec
        .as_ref()
        .and_then(|s| s.ip_families.as_ref())
        .and_then(|f| f.first())
        .is_some_and(|f| f == "IPv6");
    let want_name = slice_name(&svc);
    let mut labels = svc.metadata.labels.clone().unwrap_or_default();
    labels.insert(SERVICE_NAME_LABEL.into(), name.into());
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    let slice = EndpointSlice {
        metadata: ObjectMeta {
            name: Some(want_name.clone()),
            namespace: Some(ns.into()),
            labels: Some(labels),
            owner_references: Some(vec![util::controller_ref("v1", "Service", &svc.metadata)]),
            ..Default::default()
        },
        address_type: if ip_v6 { "IPv6".into() } else { "IPv4".into() },
        endpoints,
        ports: Some(ports.unwrap_or_default()),
    };
    for s in &ours {
        if s.metadata.name.as_deref() != Some(want_name.as_str()) {
            let sn = s.metadata.name.as_deref().unwrap_or_default();
            delete_object(&api, sn, &DeleteParams::default()).await?;
        }
    }
    match ours
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(want_name.as_str()))
    {
        Some(cur)
            if cur.endpoints == slice.endpoints
                && cur.ports == slice.ports
                && cur.metadata.labels == slice.metadata.labels =>
        {
            Ok(None)
        }
        Some(cur) => {
            let mut s = slice;
            s.metadata.resource_version = cur.metadata.resource_version.clone();
            s.metadata.uid = cur.metadata.uid.clone();
            api.replace(&want_name, &PostParams::default(), &s).await?;
            Ok(None)
        }
        None => match api.create(&PostParams::default(), &slice).await {
            Ok(_) => Ok(None),
            Err(e) if is_status(&e, 409) => Ok(Some(Duration::from_millis(200))),
            Err(e) => Err(e.into()),
        },
    }
}
