//! The daemonset controller: one pod per eligible node.
//!
//! A node is eligible when the pod template's nodeSelector and required node affinity match
//! it and every NoSchedule/NoExecute taint is tolerated — by the template's tolerations plus
//! the ones upstream adds to every daemon pod (not-ready and unreachable NoExecute; disk,
//! memory and pid pressure and unschedulable NoSchedule; network-unavailable for host network
//! pods). Pods are not bound here: as upstream since 1.12 they carry a required node affinity
//! `matchFields metadata.name In [<node>]` and the scheduler places them.
//!
//! Updates: each template is a ControllerRevision (see `history`); pods carry its hash.
//! RollingUpdate replaces old pods while at most `maxUnavailable` nodes lack an available
//! pod, or, with `maxSurge`, starts the new pod next to the old one and deletes the old one
//! once the new one is available. OnDelete only uses the new template for pods it recreates.
//! Status as upstream: desired/current/misscheduled/ready/updated/available/unavailable and
//! observedGeneration.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    PodTemplateSpec, Toleration,
};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams};
use serde_json::json;

use super::history::revision_hash as hash_of;
use super::podcontrol::{self, Expectations};
use super::{history, patch_status, Controller, Ctx, Result};
use crate::informer::{key_of, split_key};
use crate::queue::WorkQueue;
use crate::util;

/// The reporting controller name of upstream's daemonset controller.
const COMPONENT: &str = "daemonset-controller";

pub fn controller(ctx: &Ctx) -> Controller {
    let queue = WorkQueue::new();
    let q = queue.clone();
    ctx.inf.daemonsets.on_change(move |d, _| q.add(key_of(d)));
    let q = queue.clone();
    ctx.inf.pods.on_change(move |pod, _| {
        if let Some(r) = util::controller_of(&pod.metadata) {
            if r.kind == "DaemonSet" {
                let ns = pod.metadata.namespace.clone().unwrap_or_default();
                q.add(format!("{ns}/{}", r.name));
            }
        }
    });
    let q = queue.clone();
    let dss = ctx.inf.daemonsets.clone();
    ctx.inf.nodes.on_change(move |_, _| {
        for d in dss.list() {
            q.add(key_of(&*d));
        }
    });
    ctx.inf.revisions.mark_used();
    let c = ctx.clone();
    let exp = Expectations::default();
    let dss = ctx.inf.daemonsets.clone();
    Controller::new(COMPONENT, queue, 2, move |key| {
        let (c, exp) = (c.clone(), exp.clone());
        async move { reconcile(&c, &exp, &key).await }
    })
    .resync(Duration::from_secs(30), move || {
        dss.list().iter().map(|d| key_of(&**d)).collect()
    })
}

/// The tolerations upstream adds to every daemon pod (`AddOrUpdateDaemonPodTolerations`).
pub fn daemon_tolerations(host_network: bool) -> Vec<Toleration> {
    let t = |key: &str, effect: &str| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Default::default()
    };
    let mut v = vec![
        t("node.kubernetes.io/not-ready", "NoExecute"),
        t("node.kubernetes.io/unreachable", "NoExecute"),
        t("node.kubernetes.io/disk-pressure", "NoSchedule"),
        t("node.kubernetes.io/memory-pressure", "NoSchedule"),
        t("node.kubernetes.io/pid-pressure", "NoSchedule"),
        t("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if host_network {
        v.push(t("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    v
}

fn tolerates(tols: &[Toleration], key: &str, value: &str, effect: &str) -> bool {
    tols.iter().any(|t| {
        let eff_ok = t
            .effect
            .as_deref()
            .is_none_or(|e| e.is_empty() || e == effect);
        let key_ok = t.key.as_deref().is_none_or(|k| k.is_empty() || k == key);
        let val_ok = match t.operator.as_deref() {
            Some("Exists") => true,
            _ => t.value.as_deref().unwrap_or_default() == value && t.key.is_some(),
        };
        eff_ok && key_ok && val_ok
    })
}

fn term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let name = node.metadata.name.clone().unwrap_or_default();
    let req_ok = |r: &NodeSelectorRequirement, got: Option<&String>| {
        let vals = r.values.clone().unwrap_or_default();
        match r.operator.as_str() {
            "In" => got.is_some_and(|g| vals.contains(g)),
            "NotIn" => got.is_none_or(|g| !vals.contains(g)),
            "Exists" => got.is_some(),
            "DoesNotExist" => got.is_none(),
            "Gt" | "Lt" => {
                let (Some(g), Some(v)) = (
                    got.and_then(|g| g.parse::<i64>().ok()),
                    vals.first().and_then(|v| v.parse::<i64>().ok()),
                ) else {
                    return false;
                };
                if r.operator == "Gt" {
                    g > v
                } else {
                    g < v
                }
            }
            _ => false,
        }
    };
    let exprs = term.match_expressions.clone().unwrap_or_default();
    let fields = term.match_fields.clone().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs.iter().all(|r| req_ok(r, labels.get(&r.key)))
        && fields
            .iter()
            .all(|r| r.key == "metadata.name" && req_ok(r, Some(&name)))
}

/// Upstream's `NodeShouldRunDaemonPod` (predicates part).
pub fn should_run(tmpl: &PodTemplateSpec, node: &Node) -> bool {
    let spec = tmpl.spec.clone().unwrap_or_default();
    let labels = node.metadata.labels.clone().unwrap_or_default();
    if let Some(sel) = &spec.node_selector {
        if sel.iter().any(|(k, v)| labels.get(k) != Some(v)) {
            return false;
        }
    }
    if let Some(req) = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
    {
        if !req
            .node_selector_terms
            .iter()
            .any(|t| term_matches(t, node))
        {
            return false;
        }
    }
    let mut tols = spec.tolerations.clone().unwrap_or_default();
    tols.extend(daemon_tolerations(spec.host_network == Some(true)));
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .all(|t| {
            tolerates(
                &tols,
                &t.key,
                t.value.as_deref().unwrap_or_default(),
                &t.effect,
            )
        })
}

/// The node a daemon pod is for: its nodeName, or the matchFields affinity we set.
pub fn pod_node(p: &Pod) -> Option<String> {
    let spec = p.spec.as_ref()?;
    if let Some(n) = spec.node_name.as_ref().filter(|n| !n.is_empty()) {
        return Some(n.clone());
    }
    spec.affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|r| r.key == "metadata.name" && r.operator == "In")
        .and_then(|r| r.values.as_ref()?.first().cloned())
}

async fn reconcile(ctx: &Ctx, exp: &Expectations, key: &str) -> Result<Option<Duration>> {
    let (Some(ns), name) = split_key(key) else {
        return Ok(None);
    };
    let Some(ds) = ctx.inf.daemonsets.get(Some(ns), name) else {
        exp.forget(key);
        return Ok(None);
    };
    let uid = ds.metadata.uid.clone().unwrap_or_default();
    let spec = ds.spec.clone().unwrap_or_default();
    let tmpl = spec.template.clone();
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let deleting = util::is_deleting(&ds.metadata);

    // Current revision.
    let tjson = serde_json::to_value(&tmpl)?;
    let sel_labels = spec.selector.match_labels.clone().unwrap_or_default();
    let (rev_name, _) = if deleting {
        (history::revision_name(name, &history::snapshot(&tjson)), 0)
    } else {
        history::ensure(
            ctx,
            "apps/v1",
            "DaemonSet",
            &ds.metadata,
            &sel_labels,
            &tjson,
        )
        .await?
    };
    let hash = rev_name.rsplit('-').next().unwrap_or_default().to_string();

    let mut by_node: HashMap<String, Vec<Arc<Pod>>> = HashMap::new();
    // Expectations before the pods are listed (see the job controller).
    let satisfied = exp.satisfied(key, ns, ctx);
    for p in ctx.inf.pods.list_ns(ns) {
        if util::controller_of(&p.metadata).is_some_and(|r| r.uid == uid)
            && !util::is_deleting(&p.metadata)
        {
            if let Some(n) = pod_node(&p) {
                by_node.entry(n).or_default().push(p);
            }
        }
    }
    let nodes = ctx.inf.nodes.list();
    let now = Timestamp::now();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let available = |p: &Pod| util::is_pod_available(p, min_ready, now);

    let mut create_on: Vec<String> = Vec::new();
    let mut delete: Vec<Arc<Pod>> = Vec::new();
    let mut desired = 0;
    let mut eligible: Vec<(String, Vec<Arc<Pod>>)> = Vec::new();
    for node in &nodes {
        let nn = node.metadata.name.clone().unwrap_or_default();
        let mut pods = by_node.remove(&nn).unwrap_or_default();
        if should_run(&tmpl, node) {
            desired += 1;
            // Failed pods are replaced; extra pods beyond one (oldest kept) deleted.
            let (failed, mut ok): (Vec<_>, Vec<_>) = pods.into_iter().partition(|p| {
                p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed")
            });
            delete.extend(failed);
            ok.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
            if ok.is_empty() {
                create_on.push(nn.clone());
            }
            // Keep an old+new pair during a surge; otherwise one pod.
            let keep = if ok.len() == 2 && hash_of(&ok[0]) != hash_of(&ok[1]) {
                2
            } else {
                1
            };
            if ok.len() > keep {
                delete.extend(ok.split_off(keep));
            }
            pods = ok;
            eligible.push((nn, pods));
        } else {
            delete.extend(pods);
        }
    }
    // Pods for nodes that no longer exist.
    for (_, pods) in by_node {
        delete.extend(pods);
    }

    // Rolling update.
    let ru_type = spec
        .update_strategy
        .as_ref()
        .and_then(|u| u.type_.clone())
        .unwrap_or_else(|| "RollingUpdate".into());
    if ru_type == "RollingUpdate" && !deleting {
        let ru = spec
            .update_strategy
            .as_ref()
            .and_then(|u| u.rolling_update.clone())
            .unwrap_or_default();
        let max_surge = util::scaled_value(ru.max_surge.as_ref(), desired, "0", true);
        let mut max_unavail = util::scaled_value(ru.max_unavailable.as_ref(), desired, "1", true);
        if max_surge == 0 && max_unavail == 0 {
            max_unavail = 1;
        }
        let unavailable = eligible
            .iter()
            .filter(|(_, ps)| !ps.iter().any(|p| available(p)))
            .count() as i32;
        let mut budget = max_unavail - unavailable;
        let mut surging = eligible.iter().filter(|(_, ps)| ps.len() == 2).count() as i32;
        for (nn, ps) in &eligible {
            let old: Vec<&Arc<Pod>> = ps.iter().filter(|p| hash_of(p) != Some(&hash)).collect();
            let new: Vec<&Arc<Pod>> = ps.iter().filter(|p| hash_of(p) == Some(&hash)).collect();
            if old.is_empty() {
                continue;
            }
            if !new.is_empty() {
                // Surge pair: the old pod goes once the new one is available.
                if new.iter().any(|p| available(p)) {
                    delete.extend(old.into_iter().cloned());
                }
                continue;
            }
            let old_available = old.iter().any(|p| available(p));
            if !old_available {
                // Replacing an unavailable pod costs no availability.
                delete.extend(old.into_iter().cloned());
            } else if max_surge > 0 {
                if surging < max_surge {
                    surging += 1;
                    create_on.push(nn.clone());
                }
            } else if budget > 0 {
                budget -= 1;
                delete.extend(old.into_iter().cloned());
            }
        }
    }

    if !deleting && satisfied {
        let mut created = Vec::new();
        let mut err = None;
        for nn in &create_on {
            let pod = daemon_pod(&ds, &tmpl, nn, &hash);
            match podcontrol::create_pod(ctx, &pods_api, COMPONENT, &*ds, &pod).await {
                Ok(n) => created.push(n),
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        let mut deleted = Vec::new();
        if err.is_none() {
            let dp = DeleteParams::background();
            for p in &delete {
                let pn = p.metadata.name.clone().unwrap_or_default();
                match podcontrol::delete_pod(ctx, &pods_api, COMPONENT, &*ds, &pn, &dp).await {
                    Ok(true) => deleted.push(pn),
                    Ok(false) => {}
                    Err(e) => {
                        err = Some(e);
                        break;
                    }
                }
            }
        }
        exp.expect(key, created, deleted);
        if let Some(e) = err {
            return Err(e.into());
        }
    }

    // History.
    if !deleting {
        let used: Vec<&Pod> = eligible
            .iter()
            .flat_map(|(_, ps)| ps.iter().map(|p| &**p))
            .collect();
        history::truncate(
            ctx,
            ns,
            &ds.metadata,
            spec.revision_history_limit.unwrap_or(10),
            &[&rev_name],
            &used,
        )
        .await?;
    }

    // Status.
    let scheduled_on = |nn: &str, p: &Pod| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| n == nn)
    };
    let mut st = DaemonSetStatus {
        desired_number_scheduled: desired,
        observed_generation: ds.metadata.generation,
        ..Default::default()
    };
    let (mut current, mut ready, mut avail, mut updated) = (0, 0, 0, 0);
    for (nn, ps) in &eligible {
        if ps.iter().any(|p| scheduled_on(nn, p)) {
            current += 1;
        }
        if ps.iter().any(|p| util::is_pod_ready(p)) {
            ready += 1;
        }
        if ps.iter().any(|p| available(p)) {
            avail += 1;
        }
        if ps
            .iter()
            .any(|p| hash_of(p) == Some(&hash) && scheduled_on(nn, p))
        {
            updated += 1;
        }
    }
    let eligible_names: HashSet<&str> = eligible.iter().map(|(n, _)| n.as_str()).collect();
    let missched: HashSet<String> = delete
        .iter()
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .filter(|n| !eligible_names.contains(n.as_str()))
        .collect();
    st.current_number_scheduled = current;
    st.number_misscheduled = missched.len() as i32;
    st.number_ready = ready;
    st.updated_number_scheduled = Some(updated);
    st.number_available = Some(avail);
    st.number_unavailable = Some(desired - avail);
    st.collision_count = ds.status.as_ref().and_then(|s| s.collision_count);
    st.conditions = ds.status.as_ref().and_then(|s| s.conditions.clone());
    if ds.status.as_ref() != Some(&st) {
        let api: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), ns);
        if !patch_status(&api, name, json!({"status": st})).await? {
            return Ok(None);
        }
    }
    // Pods become available after minReadySeconds without an event.
    Ok((min_ready > 0 && avail < ready).then(|| Duration::from_secs(min_ready as u64)))
}

/// The pod `ds` runs on `node`: its template at revision `hash`, pinned to the node.
fn daemon_pod(ds: &DaemonSet, tmpl: &PodTemplateSpec, node: &str, hash: &str) -> Pod {
    let mut pod = podcontrol::pod_from_template(
        tmpl,
        &ds.metadata,
        "apps/v1",
        "DaemonSet",
        format!("{}-", ds.metadata.name.as_deref().unwrap_or_default()),
    );
    let meta = &mut pod.metadata;
    let spec = pod.spec.get_or_insert_with(Default::default);
    let labels = meta.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(history::REVISION_HASH.into(), hash.into());
    labels.insert(
        "pod-template-generation".into(),
        ds.metadata.generation.unwrap_or(1).to_string(),
    );
    // Upstream's ReplaceDaemonSetPodNodeNameNodeAffinity: one term naming the node.
    let aff = spec.affinity.get_or_insert_with(Affinity::default);
    let na = aff.node_affinity.get_or_insert_with(NodeAffinity::default);
    na.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
        node_selector_terms: vec![NodeSelectorTerm {
            match_expressions: None,
            match_fields: Some(vec![NodeSelectorRequirement {
                key: "metadata.name".into(),
                operator: "In".into(),
                values: Some(vec![node.into()]),
            }]),
        }],
    });
    let tols = spec.tolerations.get_or_insert_with(Vec::new);
    for t in daemon_tolerations(spec.host_network == Some(true)) {
        if !tols.iter().any(|x| x.key == t.key && x.effect == t.effect) {
            tols.push(t);
        }
    }
    pod
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(labels: serde_json::Value, taints: serde_json::Value) -> Node {
        serde_json::from_value(
            json!({"metadata": {"name": "n1", "labels": labels}, "spec": {"taints": taints}}),
        )
        .unwrap()
    }

    #[test]
    fn eligibility() {
        let t: PodTemplateSpec = serde_json::from_value(
            json!({"spec": {"containers": [], "nodeSelector": {"role": "edge"}}}),
        )
        .unwrap();
        assert!(should_run(&t, &node(json!({"role": "edge"}), json!([]))));
        assert!(!should_run(&t, &node(json!({"role": "core"}), json!([]))));
        // Automatic tolerations cover unschedulable and not-ready, not a custom taint.
        let t: PodTemplateSpec =
            serde_json::from_value(json!({"spec": {"containers": []}})).unwrap();
        assert!(should_run(
            &t,
            &node(
                json!({}),
                json!([{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}])
            )
        ));
        assert!(!should_run(
            &t,
            &node(
                json!({}),
                json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}])
            )
        ));
        assert!(should_run(
            &t,
            &node(
                json!({}),
                json!([{"key": "dedicated", "value": "db", "effect": "PreferNoSchedule"}])
            )
        ));
        let t: PodTemplateSpec = serde_json::from_value(json!({"spec": {"containers": [], "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}]}})).unwrap();
        assert!(should_run(
            &t,
            &node(
                json!({}),
                json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}])
            )
        ));
        // Required node affinity on labels and fields.
        let t: PodTemplateSpec = serde_json::from_value(json!({"spec": {"containers": [], "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["n1"]}]}]}}}}})).unwrap();
        assert!(!should_run(&t, &node(json!({}), json!([]))));
    }
}
