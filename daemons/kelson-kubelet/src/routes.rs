//! Routes to other nodes' podCIDRs, so pods on different machines of one L2 segment reach
//! each other without an overlay (what upstream leaves to a cloud route controller or a CNI
//! daemon like flannel's host-gw backend).
//!
//! A watch on Nodes keeps the wanted set: for every *other* node with a podCIDR and an
//! InternalIP that is on a directly connected subnet (the kernel's `ip route get` answers
//! without a gateway and not via `lo`), `<podCIDR> via <InternalIP>`. Each change is applied
//! level-triggered: routes are installed with `ip route replace … proto <ROUTE_PROTO>`, and
//! every route of that protocol number that is not wanted any more (node deleted, podCIDR or
//! address changed, or left by a previous kubelet run) is deleted. The protocol number is the
//! kubelet's mark on its own routes, so nothing else in the table is ever touched.
//!
//! The `ip` command is used rather than the `rtnetlink` crate: `ip -n <netns>` applies the
//! same operations inside a named network namespace (what the tests use, and what
//! `pod-routes-netns` offers), whereas netlink from a multi-threaded tokio process would need
//! a dedicated thread that `setns`es; the handful of route changes per node event do not
//! justify that, nor a new dependency.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::Command;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use tokio::sync::watch;

/// The `proto` number marking kelson-kubelet's routes (unassigned in /etc/iproute2/rt_protos).
pub const ROUTE_PROTO: u8 = 77;

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("running ip {args:?}: {source}")]
    Spawn {
        args: Vec<String>,
        #[source]
        source: std::io::Error,
    },
    #[error("ip {args:?} failed: {stderr}")]
    Failed { args: Vec<String>, stderr: String },
}

/// Runs `ip` (in `netns` when given) and returns stdout.
fn ip(netns: Option<&str>, args: &[&str]) -> Result<String, RouteError> {
    let mut full: Vec<String> = Vec::new();
    if let Some(ns) = netns {
        full.extend(["-n".to_string(), ns.to_string()]);
    }
    full.extend(args.iter().map(|s| s.to_string()));
    let out = Command::new("ip")
        .args(&full)
        .output()
        .map_err(|source| RouteError::Spawn {
            args: full.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(RouteError::Failed {
            args: full,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A node's InternalIP and podCIDR, if it has both.
pub fn node_route(n: &Node) -> Option<(String, IpAddr)> {
    let cidr = n
        .spec
        .as_ref()?
        .pod_cidr
        .clone()
        .filter(|c| !c.is_empty())?;
    let ip = n
        .status
        .as_ref()?
        .addresses
        .iter()
        .flatten()
        .find(|a| a.type_ == "InternalIP")?
        .address
        .parse()
        .ok()?;
    Some((cidr, ip))
}

/// The wanted routes (podCIDR → via) for every other node, before the reachability check.
pub fn wanted(nodes: &BTreeMap<String, Node>, me: &str) -> BTreeMap<String, IpAddr> {
    nodes
        .iter()
        .filter(|(name, _)| name.as_str() != me)
        .filter_map(|(_, n)| node_route(n))
        .filter(|(cidr, ip)| cidr.contains(':') == ip.is_ipv6())
        .collect()
}

/// Whether `ip` is on a directly connected subnet (no gateway, not loopback).
fn directly_connected(netns: Option<&str>, addr: IpAddr) -> bool {
    if addr.is_loopback() || addr.is_unspecified() {
        return false;
    }
    match ip(netns, &["-o", "route", "get", &addr.to_string()]) {
        Ok(out) => !out.contains(" via ") && !out.contains(" dev lo "),
        Err(_) => false,
    }
}

/// Our routes currently in the table: destination → via.
fn current(netns: Option<&str>) -> Result<BTreeMap<String, String>, RouteError> {
    let mut out = BTreeMap::new();
    for fam in ["-4", "-6"] {
        let text = ip(
            netns,
            &[
                fam,
                "-o",
                "route",
                "show",
                "proto",
                &ROUTE_PROTO.to_string(),
            ],
        )?;
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let Some(dst) = f.first() else { continue };
            let via = f
                .iter()
                .position(|w| *w == "via")
                .and_then(|i| f.get(i + 1))
                .unwrap_or(&"");
            out.insert(dst.to_string(), via.to_string());
        }
    }
    Ok(out)
}

/// Makes the table hold exactly the wanted routes that are reachable; returns them.
pub fn apply(
    netns: Option<&str>,
    want: &BTreeMap<String, IpAddr>,
) -> Result<BTreeMap<String, String>, RouteError> {
    let mut applied = BTreeMap::new();
    for (cidr, via) in want {
        if !directly_connected(netns, *via) {
            tracing::debug!(%cidr, %via, "not on a directly connected subnet; no route");
            continue;
        }
        let proto = ROUTE_PROTO.to_string();
        let via_s = via.to_string();
        ip(
            netns,
            &["route", "replace", cidr, "via", &via_s, "proto", &proto],
        )?;
        applied.insert(cidr.clone(), via_s);
    }
    for (dst, via) in current(netns)? {
        if applied.get(&dst) != Some(&via) {
            let proto = ROUTE_PROTO.to_string();
            if let Err(e) = ip(netns, &["route", "del", &dst, "proto", &proto]) {
                tracing::warn!(%dst, error = %e, "removing a stale pod route");
            }
        }
    }
    Ok(applied)
}

/// Watches Nodes and keeps the routes until `shutdown`.
pub async fn run(
    client: kube::Client,
    me: String,
    netns: Option<String>,
    mut shutdown: watch::Receiver<bool>,
) {
    let api: Api<Node> = Api::all(client);
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    let mut listing: Option<BTreeMap<String, Node>> = None;
    let mut last: Option<BTreeMap<String, IpAddr>> = None;
    loop {
        let ev = tokio::select! {
            ev = stream.next() => ev,
            _ = shutdown.changed() => return,
        };
        let Some(ev) = ev else { return };
        let settled = match ev {
            Ok(Event::Apply(n)) => {
                nodes.insert(n.metadata.name.clone().unwrap_or_default(), n);
                true
            }
            Ok(Event::Delete(n)) => {
                nodes.remove(n.metadata.name.as_deref().unwrap_or(""));
                true
            }
            Ok(Event::Init) => {
                listing = Some(BTreeMap::new());
                false
            }
            Ok(Event::InitApply(n)) => {
                if let Some(l) = listing.as_mut() {
                    l.insert(n.metadata.name.clone().unwrap_or_default(), n);
                }
                false
            }
            Ok(Event::InitDone) => {
                nodes = listing.take().unwrap_or_default();
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "node watch failed; relisting");
                false
            }
        };
        if !settled {
            continue;
        }
        let want = wanted(&nodes, &me);
        if last.as_ref() == Some(&want) {
            continue;
        }
        let ns = netns.clone();
        let w = want.clone();
        match tokio::task::spawn_blocking(move || apply(ns.as_deref(), &w)).await {
            Ok(Ok(applied)) => {
                tracing::info!(routes = ?applied, "pod routes to other nodes");
                last = Some(want);
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "applying pod routes"),
            Err(e) => tracing::warn!(error = %e, "pod route task"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cidr: Option<&str>, ip: Option<&str>) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"podCIDR": cidr},
            "status": {"addresses": ip.map(|i| vec![
                serde_json::json!({"type": "Hostname", "address": name}),
                serde_json::json!({"type": "InternalIP", "address": i}),
            ])},
        }))
        .unwrap()
    }

    #[test]
    fn wanted_routes_skip_self_and_incomplete_nodes() {
        let nodes: BTreeMap<String, Node> = [
            node("me", Some("10.1.0.0/24"), Some("192.0.2.1")),
            node("b", Some("10.1.1.0/24"), Some("192.0.2.2")),
            node("c", None, Some("192.0.2.3")),
            node("d", Some("10.1.3.0/24"), None),
            node("e", Some("fd00::/64"), Some("192.0.2.5")),
        ]
        .into_iter()
        .map(|n| (n.metadata.name.clone().unwrap(), n))
        .collect();
        let w = wanted(&nodes, "me");
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w["10.1.1.0/24"], "192.0.2.2".parse::<IpAddr>().unwrap());
    }
}
