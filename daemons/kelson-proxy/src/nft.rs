//! nftables rule generation (pure) and application (`nft -f -`, or netlink batches for
//! incremental syncs).
//!
//! Structure copied from upstream kube-proxy's nftables mode, in one table of our own per
//! family (`ip kelson-proxy`, `ip6 kelson-proxy`; separate tables because the address types of
//! the maps differ and `dnat to` needs no family qualifier there):
//!
//! - verdict maps `service-ips` (`addr . proto . port : goto <chain>`), `service-nodeports`
//!   (`proto . port`), `no-endpoint-services` / `no-endpoint-nodeports` (`goto reject-chain`, or
//!   `drop` when endpoints exist but the traffic policy leaves none usable), `firewall-ips`, and
//!   the set `cluster-ips` (traffic to a ClusterIP on a port no service has is rejected);
//! - base chains hooked at nat prerouting/output/postrouting and filter
//!   prerouting/input/forward/output, which only dispatch through those maps, so adding a
//!   service never touches a base chain;
//! - per service port: `service-H-ns/name/proto/port` (cluster policy) and `local-…` (node-local
//!   endpoints) each `numgen random mod N vmap` over endpoint chains (equal probability),
//!   preceded by `ip saddr @affinity-…` lookups for sessionAffinity ClientIP; `external-…`
//!   for NodePort/LB/externalIP traffic (masquerade, or for externalTrafficPolicy Local: pod
//!   and node-originated traffic to the cluster chain, the rest to local endpoints unmasqueraded);
//!   `firewall-…` for loadBalancerSourceRanges. One deliberate departure: upstream has an
//!   `endpoint-…` chain per endpoint; here only sessionAffinity services get them (to refresh
//!   the affinity set before DNAT). Others DNAT with `dnat to numgen random mod N map { i :
//!   addr . port }`, and hairpin traffic is found in postrouting by the `hairpin-endpoints`
//!   set (`saddr . daddr` of an endpoint reaching itself) — a tenth of the chains, and `nft`
//!   dumps every chain of the table before each transaction, so chains are what an
//!   incremental sync at 10k services pays for.
//!
//! Why text: it is exactly what upstream's knftables sends to `nft -f -` (one transaction per
//! batch, atomic in the kernel), the text form is what an operator reads in `nft list
//! table`, and the generator stays a pure `state → String` function that unit tests can
//! compare against expected lines. Full syncs go to `nft -f -` as text.
//!
//! Incremental syncs do not: `nft` 1.0.6 fills its cache (every chain and set of the table)
//! before each transaction, about two thirds of the ~100 ms of CPU an add-one cost at 10k
//! services (docs/benchmarks.md), and libnftables in-process would not help (1.0.6 drops its
//! cache whenever the ruleset generation moved, and our own commits move it). So [`batch`]
//! compiles the incremental script into the nf_tables netlink batch `nft` would have sent
//! and [`netlink`] commits it on a `NETLINK_NETFILTER` socket; what is left is the kernel's
//! own work (mostly the table validation a new `goto` triggers). The text stays the single
//! source of truth: the encoder accepts only the forms this module emits, anything else goes
//! through `nft`, and tests/netlink.rs checks that both paths leave the same ruleset.
//!
//! Incremental updates: [`render_service`] turns one service port into its chains, sets and
//! map elements ([`ServiceRules`]); [`diff_script`] compares the previously programmed
//! [`Programmed`] with the new one and emits only the chains of changed services, the map
//! elements that differ and the deletions, ordered so every reference is valid inside the one
//! transaction. [`full_script`] recreates the whole table atomically (`add`+`delete`+`add
//! table` in one batch) for the first sync and after a failed incremental one.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::model::{Endpoint, ServiceInfo, ServicePortName, State};

/// Address family of one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn table_family(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }
    fn addr_type(self) -> &'static str {
        match self {
            Family::V4 => "ipv4_addr",
            Family::V6 => "ipv6_addr",
        }
    }
    /// The payload keyword (`ip saddr`, `ip6 saddr`).
    fn kw(self) -> &'static str {
        self.table_family()
    }
    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1",
        }
    }
    pub fn matches(self, ip: &IpAddr) -> bool {
        matches!(
            (self, ip),
            (Family::V4, IpAddr::V4(_)) | (Family::V6, IpAddr::V6(_))
        )
    }
    fn matches_cidr(self, cidr: &str) -> bool {
        cidr.split('/')
            .next()
            .and_then(|a| a.parse::<IpAddr>().ok())
            .is_some_and(|ip| self.matches(&ip))
    }
}

/// Node-wide settings the rules depend on.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub family: Family,
    pub table: String,
    /// Pod CIDRs of this family; ClusterIP traffic from outside them is masqueraded.
    pub cluster_cidrs: Vec<String>,
    pub masquerade_all: bool,
    /// NodePorts only on local addresses inside these (empty: every local address).
    pub nodeport_cidrs: Vec<String>,
}

impl Ctx {
    pub fn new(
        family: Family,
        cluster_cidrs: &[String],
        masquerade_all: bool,
        nodeport_cidrs: &[String],
    ) -> Ctx {
        let pick = |v: &[String]| -> Vec<String> {
            v.iter()
                .filter(|c| family.matches_cidr(c))
                .cloned()
                .collect()
        };
        Ctx {
            family,
            table: "kelson-proxy".into(),
            cluster_cidrs: pick(cluster_cidrs),
            masquerade_all,
            nodeport_cidrs: pick(nodeport_cidrs),
        }
    }
    fn t(&self) -> String {
        format!("{} {}", self.family.table_family(), self.table)
    }
}

/// A map or set element: (set name, key) → verdict (None for plain sets).
pub type Elements = BTreeMap<(&'static str, String), Option<String>>;

/// Everything one service port contributes to the table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceRules {
    /// Chain name → rules (without the `add rule <table> <chain>` prefix).
    pub chains: BTreeMap<String, Vec<String>>,
    /// Set name → declaration body (`{ type …; }`).
    pub sets: BTreeMap<String, String>,
    pub elements: Elements,
}

/// Who claims a map/set key: service port → value.
type Claims = BTreeMap<(&'static str, String), BTreeMap<ServicePortName, Option<String>>>;

/// What is (to be) programmed in one table.
#[derive(Debug, Clone, Default)]
pub struct Programmed {
    /// Shared so a sync reuses unchanged services' renderings without copying them.
    pub services: BTreeMap<ServicePortName, Arc<ServiceRules>>,
    /// The elements in the table: on a key two services both claim (e.g. the same externalIP
    /// and port) the first service in name order wins, so the map stays consistent.
    pub elements: Elements,
    claims: Claims,
}

impl Programmed {
    pub fn from_services(services: BTreeMap<ServicePortName, Arc<ServiceRules>>) -> Programmed {
        let mut claims = Claims::new();
        for (spn, r) in &services {
            for (k, v) in &r.elements {
                claims
                    .entry(k.clone())
                    .or_default()
                    .insert(spn.clone(), v.clone());
            }
        }
        let elements = claims
            .iter()
            .filter_map(|(k, c)| Some((k.clone(), c.values().next()?.clone())))
            .collect();
        Programmed {
            services,
            elements,
            claims,
        }
    }

    /// Rules in the table, base chains included.
    pub fn rule_count(&self, ctx: &Ctx) -> usize {
        base_rules(ctx).len()
            + self
                .services
                .values()
                .flat_map(|s| s.chains.values())
                .map(Vec::len)
                .sum::<usize>()
    }

    /// Applies `changes` (service port → new rules, None = gone) in memory and returns the
    /// transaction that does the same to the kernel. Work is proportional to the changes, not
    /// to the table: unchanged services are never looked at.
    pub fn update(
        &mut self,
        ctx: &Ctx,
        changes: Vec<(ServicePortName, Option<Arc<ServiceRules>>)>,
    ) -> String {
        let empty = Arc::new(ServiceRules::default());
        let mut pairs: Vec<(Arc<ServiceRules>, Arc<ServiceRules>)> = Vec::new();
        let mut touched: Vec<(&'static str, String)> = Vec::new();
        for (spn, new) in changes {
            let old = self.services.get(&spn).cloned();
            let same = match (&old, &new) {
                (Some(o), Some(n)) => Arc::ptr_eq(o, n) || o == n,
                (None, None) => true,
                _ => false,
            };
            if same {
                continue;
            }
            if let Some(o) = &old {
                for k in o.elements.keys() {
                    if let Some(c) = self.claims.get_mut(k) {
                        c.remove(&spn);
                    }
                    touched.push(k.clone());
                }
            }
            if let Some(n) = &new {
                for (k, v) in &n.elements {
                    self.claims
                        .entry(k.clone())
                        .or_default()
                        .insert(spn.clone(), v.clone());
                    touched.push(k.clone());
                }
            }
            match &new {
                Some(n) => self.services.insert(spn, n.clone()),
                None => self.services.remove(&spn),
            };
            pairs.push((
                old.unwrap_or_else(|| empty.clone()),
                new.unwrap_or_else(|| empty.clone()),
            ));
        }
        touched.sort();
        touched.dedup();
        let mut dels: Elements = Elements::new();
        let mut adds: Elements = Elements::new();
        for k in touched {
            let winner = match self.claims.get(&k) {
                Some(c) if !c.is_empty() => Some(c.values().next().cloned().flatten()),
                _ => {
                    self.claims.remove(&k);
                    None
                }
            };
            let before = self.elements.get(&k).cloned();
            if before == winner {
                continue;
            }
            if let Some(b) = before {
                dels.insert(k.clone(), b);
                self.elements.remove(&k);
            }
            if let Some(w) = winner {
                adds.insert(k.clone(), w.clone());
                self.elements.insert(k, w);
            }
        }
        let refs: Vec<(&ServiceRules, &ServiceRules)> =
            pairs.iter().map(|(o, n)| (&**o, &**n)).collect();
        change_script(ctx, &refs, &dels, &adds)
    }
}

/// Upstream's naming: a hash keeps names unique (and stable) while the readable part says
/// which service they belong to.
fn hashed(s: &str) -> String {
    let d = Sha256::digest(s.as_bytes());
    let mut out = String::with_capacity(8 + 1 + s.len());
    for b in &d[..4] {
        let _ = write!(out, "{b:02X}");
    }
    out.push('-');
    // nft identifiers allow [A-Za-z0-9/_.-]; ':' (IPv6) and anything else become '.'.
    out.extend(s.chars().map(|c| {
        if c.is_ascii_alphanumeric() || "/_.-".contains(c) {
            c
        } else {
            '.'
        }
    }));
    out
}

fn ip_for_dnat(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    }
}

fn set_literal<T: std::fmt::Display>(items: &[T]) -> String {
    match items {
        [one] => one.to_string(),
        _ => {
            let v: Vec<String> = items.iter().map(|i| i.to_string()).collect();
            format!("{{ {} }}", v.join(", "))
        }
    }
}

const MASQ_MARK: &str = "0x4000";

/// The rules of the base chains, as `(chain, rule)`.
fn base_rules(ctx: &Ctx) -> Vec<(&'static str, String)> {
    let kw = ctx.family.kw();
    let nodeport_match = if ctx.nodeport_cidrs.is_empty() {
        Some(format!(
            "fib daddr type local {kw} daddr != {}",
            ctx.family.loopback()
        ))
    } else {
        Some(format!(
            "{kw} daddr {} fib daddr type local",
            set_literal(&ctx.nodeport_cidrs)
        ))
    };
    let mut v = vec![
        ("nat-prerouting", "jump services".to_string()),
        ("nat-output", "jump services".to_string()),
        (
            "nat-postrouting",
            format!(
                "ct status dnat {kw} saddr . {kw} daddr @hairpin-endpoints jump mark-for-masquerade"
            ),
        ),
        ("nat-postrouting", "jump masquerading".to_string()),
        (
            "filter-prerouting",
            "ct state new jump firewall-check".to_string(),
        ),
        (
            "filter-input",
            "ct state new jump nodeport-endpoints-check".to_string(),
        ),
        (
            "filter-input",
            "ct state new jump service-endpoints-check".to_string(),
        ),
        (
            "filter-forward",
            "ct state new jump service-endpoints-check".to_string(),
        ),
        (
            "filter-forward",
            "ct state new jump cluster-ips-check".to_string(),
        ),
        (
            "filter-output",
            "ct state new jump service-endpoints-check".to_string(),
        ),
        (
            "filter-output",
            "ct state new jump firewall-check".to_string(),
        ),
        (
            "filter-output-post-dnat",
            "ct state new jump cluster-ips-check".to_string(),
        ),
        (
            "mark-for-masquerade",
            format!("mark set mark or {MASQ_MARK}"),
        ),
        ("masquerading", format!("mark and {MASQ_MARK} == 0 return")),
        ("masquerading", format!("mark set mark xor {MASQ_MARK}")),
        ("masquerading", "masquerade fully-random".to_string()),
        (
            "services",
            format!("{kw} daddr . meta l4proto . th dport vmap @service-ips"),
        ),
        (
            "service-endpoints-check",
            format!("{kw} daddr . meta l4proto . th dport vmap @no-endpoint-services"),
        ),
        (
            "firewall-check",
            format!("{kw} daddr . meta l4proto . th dport vmap @firewall-ips"),
        ),
        ("reject-chain", "reject".to_string()),
        (
            "cluster-ips-check",
            format!("{kw} daddr @cluster-ips reject"),
        ),
    ];
    if ctx.family == Family::V6 {
        // TCP over IPv6 gets a reset: an ICMPv6 port-unreachable answering the SYN arrives
        // while connect() still holds the socket, counts as a soft error, and the client
        // only fails after its SYN retransmit a second later (tests/ipv6.rs measured 1.02 s).
        let at = v
            .iter()
            .position(|(c, _)| *c == "reject-chain")
            .unwrap_or(v.len());
        v.insert(
            at,
            (
                "reject-chain",
                "meta l4proto tcp reject with tcp reset".to_string(),
            ),
        );
    }
    if let Some(m) = nodeport_match {
        v.push((
            "services",
            format!("{m} meta l4proto . th dport vmap @service-nodeports"),
        ));
        v.push((
            "nodeport-endpoints-check",
            format!("{m} meta l4proto . th dport vmap @no-endpoint-nodeports"),
        ));
    }
    v
}

/// Base chains: (name, hook spec or "" for a regular chain).
const BASE_CHAINS: &[(&str, &str)] = &[
    (
        "nat-prerouting",
        "type nat hook prerouting priority dstnat ;",
    ),
    ("nat-output", "type nat hook output priority -100 ;"),
    (
        "nat-postrouting",
        "type nat hook postrouting priority srcnat ;",
    ),
    // Before DNAT (-100), so the firewall sees the LoadBalancer IP.
    (
        "filter-prerouting",
        "type filter hook prerouting priority -110 ;",
    ),
    ("filter-input", "type filter hook input priority -110 ;"),
    ("filter-forward", "type filter hook forward priority -110 ;"),
    ("filter-output", "type filter hook output priority -110 ;"),
    (
        "filter-output-post-dnat",
        "type filter hook output priority -90 ;",
    ),
    ("mark-for-masquerade", ""),
    ("masquerading", ""),
    ("services", ""),
    ("service-endpoints-check", ""),
    ("nodeport-endpoints-check", ""),
    ("firewall-check", ""),
    ("reject-chain", ""),
    ("cluster-ips-check", ""),
];

fn base_sets(ctx: &Ctx) -> Vec<(&'static str, String)> {
    let a = ctx.family.addr_type();
    vec![
        (
            "map",
            format!("service-ips {{ type {a} . inet_proto . inet_service : verdict ; }}"),
        ),
        (
            "map",
            "service-nodeports { type inet_proto . inet_service : verdict ; }".to_string(),
        ),
        (
            "map",
            format!("no-endpoint-services {{ type {a} . inet_proto . inet_service : verdict ; }}"),
        ),
        (
            "map",
            "no-endpoint-nodeports { type inet_proto . inet_service : verdict ; }".to_string(),
        ),
        (
            "map",
            format!("firewall-ips {{ type {a} . inet_proto . inet_service : verdict ; }}"),
        ),
        ("set", format!("cluster-ips {{ type {a} ; }}")),
        ("set", format!("hairpin-endpoints {{ type {a} . {a} ; }}")),
    ]
}

/// One service port → its chains, sets and elements in `ctx`'s family (empty when the service
/// has no ClusterIP of that family).
pub fn render_service(ctx: &Ctx, spn: &ServicePortName, info: &ServiceInfo) -> ServiceRules {
    let fam = ctx.family;
    let kw = fam.kw();
    let mut out = ServiceRules::default();
    let cips: Vec<IpAddr> = info
        .cluster_ips
        .iter()
        .filter(|i| fam.matches(i))
        .copied()
        .collect();
    if cips.is_empty() {
        return out;
    }
    let ext_ips: Vec<IpAddr> = info
        .external_ips
        .iter()
        .chain(&info.load_balancer_ips)
        .filter(|i| fam.matches(i))
        .copied()
        .collect();
    let proto = spn.protocol.nft();
    let port = info.port;
    let name = spn.to_string();
    let base = hashed(&name);
    let svc_chain = format!("service-{base}");
    let local_chain = format!("local-{base}");
    let ext_chain = format!("external-{base}");
    let fw_chain = format!("firewall-{base}");

    let of_family = |v: Vec<&Endpoint>| -> Vec<Endpoint> {
        v.into_iter()
            .filter(|e| fam.matches(&e.ip))
            .cloned()
            .collect()
    };
    let cluster_eps = of_family(info.cluster_endpoints());
    let local_eps = of_family(info.local_endpoints());
    let has_external = info.node_port.is_some() || !ext_ips.is_empty();
    let internal_eps = if info.internal_policy_local {
        &local_eps
    } else {
        &cluster_eps
    };
    let external_eps = if info.external_policy_local {
        &local_eps
    } else {
        &cluster_eps
    };
    let internal_target = if info.internal_policy_local {
        &local_chain
    } else {
        &svc_chain
    };
    // No usable endpoint at all: reject (the client learns at once). Endpoints exist but the
    // traffic policy leaves none for this path: drop, as upstream.
    let no_ep_verdict = if cluster_eps.is_empty() && local_eps.is_empty() {
        "goto reject-chain"
    } else {
        "drop"
    };

    let ep_base = |e: &Endpoint| hashed(&format!("{name}__{}/{}", e.ip, e.port));
    let masq_rule = if ctx.masquerade_all {
        Some(format!(
            "{kw} daddr {} {proto} dport {port} jump mark-for-masquerade",
            set_literal(&cips)
        ))
    } else if !ctx.cluster_cidrs.is_empty() {
        Some(format!(
            "{kw} daddr {} {proto} dport {port} {kw} saddr != {} jump mark-for-masquerade",
            set_literal(&cips),
            set_literal(&ctx.cluster_cidrs)
        ))
    } else {
        None
    };
    let balance_chain = |eps: &[Endpoint]| -> Vec<String> {
        let mut rules: Vec<String> = masq_rule.iter().cloned().collect();
        if info.affinity_timeout.is_some() {
            for e in eps {
                let b = ep_base(e);
                rules.push(format!("{kw} saddr @affinity-{b} goto endpoint-{b}"));
            }
            let arms: Vec<String> = eps
                .iter()
                .enumerate()
                .map(|(i, e)| format!("{i} : goto endpoint-{}", ep_base(e)))
                .collect();
            rules.push(format!(
                "numgen random mod {} vmap {{ {} }}",
                eps.len(),
                arms.join(", ")
            ));
        } else {
            // No per-endpoint chain: the DNAT target comes straight out of a numgen map.
            // Endpoint chains would multiply the table's chains by the endpoint count, and
            // `nft` dumps every chain of the table before each transaction, so they dominate
            // the cost of an incremental sync at 10k services.
            let arms: Vec<String> = eps
                .iter()
                .enumerate()
                .map(|(i, e)| format!("{i} : {} . {}", e.ip, e.port))
                .collect();
            rules.push(format!(
                "meta l4proto {proto} dnat to numgen random mod {} map {{ {} }}",
                eps.len(),
                arms.join(", ")
            ));
        }
        rules
    };

    let need_local = info.internal_policy_local || (info.external_policy_local && has_external);
    if !cluster_eps.is_empty() {
        out.chains
            .insert(svc_chain.clone(), balance_chain(&cluster_eps));
    }
    if need_local && !local_eps.is_empty() {
        out.chains
            .insert(local_chain.clone(), balance_chain(&local_eps));
    }
    // Every endpoint some balancing chain can pick: hairpin detection (an endpoint reaching
    // itself through the service is masqueraded, else it would answer itself directly), and
    // for sessionAffinity the endpoint chains that remember the client.
    let mut used: Vec<&Endpoint> = cluster_eps.iter().collect();
    if need_local {
        used.extend(local_eps.iter());
    }
    used.sort();
    used.dedup();
    for e in &used {
        out.elements
            .insert(("hairpin-endpoints", format!("{} . {}", e.ip, e.ip)), None);
    }
    for e in used.into_iter().filter(|_| info.affinity_timeout.is_some()) {
        let b = ep_base(e);
        let mut rules = Vec::new();
        if let Some(t) = info.affinity_timeout {
            out.sets.insert(
                format!("affinity-{b}"),
                format!(
                    "{{ type {} ; flags dynamic,timeout ; timeout {t}s ; }}",
                    fam.addr_type()
                ),
            );
            rules.push(format!("update @affinity-{b} {{ {kw} saddr }}"));
        }
        rules.push(format!(
            "meta l4proto {proto} dnat to {}:{}",
            ip_for_dnat(&e.ip),
            e.port
        ));
        out.chains.insert(format!("endpoint-{b}"), rules);
    }
    if has_external && !external_eps.is_empty() {
        let mut rules = Vec::new();
        if info.external_policy_local {
            if !ctx.cluster_cidrs.is_empty() {
                rules.push(format!(
                    "{kw} saddr {} goto {svc_chain}",
                    set_literal(&ctx.cluster_cidrs)
                ));
            }
            rules.push("fib saddr type local jump mark-for-masquerade".into());
            rules.push(format!("fib saddr type local goto {svc_chain}"));
            rules.push(format!("goto {local_chain}"));
        } else {
            rules.push("jump mark-for-masquerade".into());
            rules.push(format!("goto {svc_chain}"));
        }
        out.chains.insert(ext_chain.clone(), rules);
    }
    let fw_ranges: Vec<&String> = info
        .load_balancer_source_ranges
        .iter()
        .filter(|c| fam.matches_cidr(c))
        .collect();
    let lb_ips: Vec<IpAddr> = info
        .load_balancer_ips
        .iter()
        .filter(|i| fam.matches(i))
        .copied()
        .collect();
    if !fw_ranges.is_empty() && !lb_ips.is_empty() {
        out.chains.insert(
            fw_chain.clone(),
            vec![format!("{kw} saddr != {} drop", set_literal(&fw_ranges))],
        );
        for ip in &lb_ips {
            out.elements.insert(
                ("firewall-ips", format!("{ip} . {proto} . {port}")),
                Some(format!("goto {fw_chain}")),
            );
        }
    }

    for ip in &cips {
        out.elements.insert(("cluster-ips", ip.to_string()), None);
        let key = format!("{ip} . {proto} . {port}");
        if internal_eps.is_empty() {
            out.elements.insert(
                ("no-endpoint-services", key),
                Some(no_ep_verdict.to_string()),
            );
        } else {
            out.elements.insert(
                ("service-ips", key),
                Some(format!("goto {internal_target}")),
            );
        }
    }
    for ip in &ext_ips {
        let key = format!("{ip} . {proto} . {port}");
        if external_eps.is_empty() {
            out.elements.insert(
                ("no-endpoint-services", key),
                Some(no_ep_verdict.to_string()),
            );
        } else {
            out.elements
                .insert(("service-ips", key), Some(format!("goto {ext_chain}")));
        }
    }
    if let Some(np) = info.node_port {
        let key = format!("{proto} . {np}");
        if external_eps.is_empty() {
            out.elements.insert(
                ("no-endpoint-nodeports", key),
                Some(no_ep_verdict.to_string()),
            );
        } else {
            out.elements.insert(
                ("service-nodeports", key),
                Some(format!("goto {ext_chain}")),
            );
        }
    }
    out
}

/// Renders every service port of `state`.
pub fn render_all(ctx: &Ctx, state: &State) -> Programmed {
    Programmed::from_services(
        state
            .iter()
            .map(|(k, v)| (k.clone(), Arc::new(render_service(ctx, k, v))))
            .collect(),
    )
}

/// Elements per command: big enough to amortise parsing, small enough for netlink messages.
const ELEMENT_CHUNK: usize = 1000;

fn push_elements<'a>(
    out: &mut String,
    t: &str,
    verb: &str,
    with_values: bool,
    items: impl Iterator<Item = (&'a (&'static str, String), &'a Option<String>)>,
) {
    let mut by_set: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for ((set, key), val) in items {
        let e = match (with_values, val) {
            (true, Some(v)) => format!("{key} : {v}"),
            _ => key.clone(),
        };
        by_set.entry(set).or_default().push(e);
    }
    for (set, elems) in by_set {
        for chunk in elems.chunks(ELEMENT_CHUNK) {
            let _ = writeln!(out, "{verb} element {t} {set} {{ {} }}", chunk.join(", "));
        }
    }
}

/// The whole table, recreated atomically.
pub fn full_script(ctx: &Ctx, p: &Programmed) -> String {
    let t = ctx.t();
    let mut out = String::new();
    // `add` first so the `delete` cannot fail on a missing table; all in one transaction.
    let _ = writeln!(out, "add table {t}\ndelete table {t}\nadd table {t}");
    for (kind, decl) in base_sets(ctx) {
        let _ = writeln!(out, "add {kind} {t} {decl}");
    }
    for (c, hook) in BASE_CHAINS {
        if hook.is_empty() {
            let _ = writeln!(out, "add chain {t} {c}");
        } else {
            let _ = writeln!(out, "add chain {t} {c} {{ {hook} }}");
        }
    }
    for r in p.services.values() {
        for c in r.chains.keys() {
            let _ = writeln!(out, "add chain {t} {c}");
        }
        for (s, decl) in &r.sets {
            let _ = writeln!(out, "add set {t} {s} {decl}");
        }
    }
    for (c, rule) in base_rules(ctx) {
        let _ = writeln!(out, "add rule {t} {c} {rule}");
    }
    for r in p.services.values() {
        for (c, rules) in &r.chains {
            for rule in rules {
                let _ = writeln!(out, "add rule {t} {c} {rule}");
            }
        }
    }
    push_elements(&mut out, &t, "add", true, p.elements.iter());
    out
}

/// The transaction that turns `old` into `new` (empty when nothing changed).
pub fn diff_script(ctx: &Ctx, old: &Programmed, new: &Programmed) -> String {
    let mut changes = Vec::new();
    for (k, n) in &new.services {
        if old.services.get(k) != Some(n) {
            changes.push((k.clone(), Some(n.clone())));
        }
    }
    for k in old.services.keys() {
        if !new.services.contains_key(k) {
            changes.push((k.clone(), None));
        }
    }
    old.clone().update(ctx, changes)
}

/// The transaction for changed services `(old, new)` and element changes, ordered so every
/// reference is valid: new chains/sets, rewritten rules, element deletions then additions,
/// and last the chains/sets nothing refers to any more.
fn change_script(
    ctx: &Ctx,
    changed: &[(&ServiceRules, &ServiceRules)],
    dels: &Elements,
    adds: &Elements,
) -> String {
    let t = ctx.t();
    let mut out = String::new();
    // 1. New chains and sets exist before anything refers to them.
    for (o, n) in changed {
        for c in n.chains.keys().filter(|c| !o.chains.contains_key(*c)) {
            let _ = writeln!(out, "add chain {t} {c}");
        }
        for (s, decl) in n.sets.iter().filter(|(s, _)| !o.sets.contains_key(*s)) {
            let _ = writeln!(out, "add set {t} {s} {decl}");
        }
    }
    // 2. Flush kept chains whose rules change (all of the service's kept chains when one of
    //    its sets is redeclared, so nothing refers to the set while it is replaced).
    let mut rewrite: Vec<(&String, &Vec<String>)> = Vec::new();
    for (o, n) in changed {
        let sets_changed = n
            .sets
            .iter()
            .any(|(s, d)| o.sets.get(s).is_some_and(|od| od != d));
        for (c, rules) in &n.chains {
            match o.chains.get(c) {
                None => rewrite.push((c, rules)),
                Some(or) if or != rules || sets_changed => {
                    let _ = writeln!(out, "flush chain {t} {c}");
                    rewrite.push((c, rules));
                }
                Some(_) => {}
            }
        }
        // 3. Redeclare changed sets.
        for (s, d) in &n.sets {
            if o.sets.get(s).is_some_and(|od| od != d) {
                let _ = writeln!(out, "delete set {t} {s}\nadd set {t} {s} {d}");
            }
        }
    }
    // 4. Rules of new and flushed chains.
    for (c, rules) in rewrite {
        for rule in rules {
            let _ = writeln!(out, "add rule {t} {c} {rule}");
        }
    }
    // 5./6. Map elements: remove stale or changed ones, then add.
    push_elements(&mut out, &t, "delete", false, dels.iter());
    push_elements(&mut out, &t, "add", true, adds.iter());
    // 7. Chains and sets that went away: flush all first (they may refer to each other),
    //    then delete.
    let mut gone_chains = Vec::new();
    let mut gone_sets = Vec::new();
    for (o, n) in changed {
        gone_chains.extend(o.chains.keys().filter(|c| !n.chains.contains_key(*c)));
        gone_sets.extend(o.sets.keys().filter(|s| !n.sets.contains_key(*s)));
    }
    for c in &gone_chains {
        let _ = writeln!(out, "flush chain {t} {c}");
    }
    for c in &gone_chains {
        let _ = writeln!(out, "delete chain {t} {c}");
    }
    for s in &gone_sets {
        let _ = writeln!(out, "delete set {t} {s}");
    }
    out
}

/// Why `nft` failed.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run {path}: {source}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} {args} failed ({status}): {stderr}")]
    Failed {
        path: PathBuf,
        args: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// Runs the `nft` binary.
#[derive(Debug, Clone)]
pub struct Nft {
    pub path: PathBuf,
    /// Arguments before nft's own (with `path = "nsenter"`: `--net=/run/netns/NAME nft`), so
    /// tests and the benchmark can program a network namespace they created.
    pub pre_args: Vec<String>,
    /// The network namespace `nft` runs in when not the process's own (`/run/netns/NAME`),
    /// for the netlink socket of incremental syncs.
    pub netns: Option<PathBuf>,
}

impl Nft {
    pub fn new(path: impl Into<PathBuf>) -> Nft {
        Nft {
            path: path.into(),
            pre_args: Vec::new(),
            netns: None,
        }
    }

    /// `nft` inside the named network namespace. `nsenter --net` only switches the network
    /// namespace; `ip netns exec` also makes a mount namespace and remounts /sys, which cost
    /// 0–110 ms per call on a loaded machine here — noise the daemon (already running in
    /// its namespace) never pays, so the benchmark must not either.
    pub fn in_netns(ns: &str) -> Nft {
        Nft {
            path: "nsenter".into(),
            pre_args: vec![format!("--net=/run/netns/{ns}"), "nft".into()],
            netns: Some(format!("/run/netns/{ns}").into()),
        }
    }

    async fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<String, NftError> {
        use tokio::io::AsyncWriteExt;
        let spawn_err = |source| NftError::Spawn {
            path: self.path.clone(),
            source,
        };
        let mut child = tokio::process::Command::new(&self.path)
            .args(&self.pre_args)
            .args(args)
            .stdin(if stdin.is_some() {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(spawn_err)?;
        if let (Some(text), Some(mut w)) = (stdin, child.stdin.take()) {
            w.write_all(text.as_bytes()).await.map_err(spawn_err)?;
            drop(w); // EOF ends the batch
        }
        let out = child.wait_with_output().await.map_err(spawn_err)?;
        if !out.status.success() {
            let mut stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            stderr.truncate(4000);
            return Err(NftError::Failed {
                path: self.path.clone(),
                args: args.join(" "),
                status: out.status,
                stderr,
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Whether nftables works here (the binary exists and the kernel answers).
    pub async fn probe(&self) -> Result<(), NftError> {
        self.run(&["list", "tables"], None).await.map(|_| ())
    }

    /// Applies `script` as one atomic transaction.
    pub async fn apply(&self, script: &str) -> Result<(), NftError> {
        if script.is_empty() {
            return Ok(());
        }
        self.run(&["-f", "-"], Some(script)).await.map(|_| ())
    }

    /// `nft list table <family> <name>` (for diagnostics and tests).
    pub async fn list_table(&self, family: Family, name: &str) -> Result<String, NftError> {
        self.run(&["list", "table", family.table_family(), name], None)
            .await
    }

    /// Removes our table (ignoring "not found").
    pub async fn delete_table(&self, family: Family, name: &str) -> Result<(), NftError> {
        let t = format!("{} {name}", family.table_family());
        self.apply(&format!("add table {t}\ndelete table {t}\n"))
            .await
    }
}

pub mod batch;
pub mod netlink;
#[cfg(test)]
mod tests;
