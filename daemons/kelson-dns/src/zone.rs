//! The cluster zone: DNS records computed from Services and EndpointSlices, following the
//! Kubernetes DNS-based service discovery specification (as CoreDNS's `kubernetes` plugin
//! implements it).
//!
//! Design: a [`Zone`] is an immutable snapshot that queries read; the daemon maintains the
//! zone incrementally from watch events in a [`ZoneState`] (submodule `incremental`: only the
//! changed Service's records are recomputed) and publishes a new snapshot after each burst of
//! events. [`Zone::build`] computes the same zone from scratch, with the same per-Service code
//! ([`Build::add_service`]); the tests use it as the oracle for the incremental one. Queries look names up in a
//! hash map keyed by the lower-case name, and answers borrow the prebuilt `Record`s of the
//! snapshot, so the hot path does no record construction — except for pod records
//! (`a-b-c-d.<ns>.pod.<domain>`), which are synthesized from the name itself ("pods insecure",
//! the kubeadm default: any well-formed address answers).
//!
//! What exists (for NXDOMAIN versus NODATA): every owner name of a record, and every ancestor
//! of one up to the zone apex (empty non-terminals, RFC 8020), so `_tcp.web.ns.svc.<domain>`
//! or `ns.svc.<domain>` answer NOERROR without records when some service lives below them.
//!
//! Records:
//! - ClusterIP services: A/AAAA `<svc>.<ns>.svc.<domain>` → spec.clusterIPs; SRV
//!   `_<port>._<proto>.<svc>.<ns>.svc.<domain>` → `0 100 <port> <svc>.<ns>.svc.<domain>` per
//!   named port; PTR for each cluster IP.
//! - Headless services (clusterIP None): A/AAAA → the ready endpoint addresses (all of them
//!   with publishNotReadyAddresses); `<hostname>.<svc>…` (or `<a-b-c-d>.<svc>…` when the
//!   endpoint has no hostname) → that endpoint; SRV per named port and endpoint, targeting the
//!   endpoint names; PTR for endpoint addresses.
//! - ExternalName services: CNAME `<svc>.<ns>.svc.<domain>` → spec.externalName, for every
//!   query type.
//! - The apex carries the SOA used in negative answers (TTL and minimum = the record TTL, so
//!   a negative answer is not cached longer than a positive one would be).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use hickory_proto::rr::rdata::{A, AAAA, CNAME, PTR, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

mod incremental;
pub use incremental::ZoneState;

/// The label on an EndpointSlice that names its Service.
pub(crate) const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Shards of a [`Sharded`] map.
const SHARDS: usize = 256;

/// A hash map split into shards behind `Arc`s: cloning it (publishing a snapshot) copies 256
/// pointers, and changing a name copies only that name's shard when a snapshot still shares
/// it (`Arc::make_mut`) — about 1/256 of the map. A persistent map crate (`imbl`) would do
/// the same with more machinery; the zone needs only get/insert/remove/iterate.
#[derive(Debug, Clone)]
pub(crate) struct Sharded<V> {
    shards: Vec<Arc<HashMap<Arc<str>, V>>>,
    hasher: std::collections::hash_map::RandomState,
}

impl<V: Clone> Sharded<V> {
    pub(crate) fn new() -> Sharded<V> {
        Sharded {
            shards: (0..SHARDS).map(|_| Arc::new(HashMap::new())).collect(),
            hasher: Default::default(),
        }
    }

    fn shard(&self, key: &str) -> usize {
        use std::hash::BuildHasher;
        (self.hasher.hash_one(key) as usize) % SHARDS
    }

    pub(crate) fn get(&self, key: &str) -> Option<&V> {
        self.shards[self.shard(key)].get(key)
    }

    pub(crate) fn insert(&mut self, key: Arc<str>, v: V) -> Option<V> {
        let i = self.shard(&key);
        Arc::make_mut(&mut self.shards[i]).insert(key, v)
    }

    pub(crate) fn remove(&mut self, key: &str) -> Option<V> {
        let i = self.shard(key);
        if !self.shards[i].contains_key(key) {
            return None;
        }
        Arc::make_mut(&mut self.shards[i]).remove(key)
    }

    #[cfg(test)]
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &V)> {
        self.shards.iter().flat_map(|s| s.iter())
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.shards.iter().all(|s| s.is_empty())
    }
}

impl<V: Clone> FromIterator<(Arc<str>, V)> for Sharded<V> {
    fn from_iter<I: IntoIterator<Item = (Arc<str>, V)>>(iter: I) -> Self {
        let mut m = Sharded::new();
        for (k, v) in iter {
            m.insert(k, v);
        }
        m
    }
}

/// Records owned by one name.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Node {
    a: Vec<Record>,
    aaaa: Vec<Record>,
    srv: Vec<Record>,
    /// A/AAAA of the SRV targets, for the additional section.
    srv_extra: Vec<Record>,
    cname: Option<Record>,
}

impl Node {
    /// Records counted by [`Zone::record_count`] (the additionals are copies).
    fn count(&self) -> usize {
        self.a.len() + self.aaaa.len() + self.srv.len() + self.cname.is_some() as usize
    }

    fn is_empty(&self) -> bool {
        self.count() == 0
    }
}

/// The apex SOA used in negative answers; the serial is the time it was made.
fn soa_record(domain: &str, ttl: u32) -> Record {
    let apex = fqdn(domain).unwrap_or_else(Name::root);
    let mname = fqdn(&format!("ns.dns.{domain}")).unwrap_or_else(Name::root);
    let rname = fqdn(&format!("hostmaster.{domain}")).unwrap_or_else(Name::root);
    let serial = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(1);
    rec(
        &apex,
        ttl,
        RData::SOA(SOA::new(mname, rname, serial, 7200, 1800, 86400, ttl)),
    )
}

/// An immutable snapshot of the cluster zone.
#[derive(Debug)]
pub struct Zone {
    domain: String,
    synced: bool,
    /// Shared keys and nodes: publishing a snapshot of an incrementally maintained zone
    /// ([`ZoneState::snapshot`]) copies the maps' pointers, not their records.
    names: Sharded<Arc<Node>>,
    /// Reverse names (`4.3.2.1.in-addr.arpa`) → PTR records.
    ptr: Sharded<Arc<Vec<Record>>>,
    soa: Record,
    ttl: u32,
    records: usize,
}

/// What the zone says about one question.
#[derive(Debug)]
pub enum Answer<'a> {
    /// Not in the cluster zone (and not a known reverse name): forward it.
    NotOurs,
    /// The zone is not synced with the API server yet: SERVFAIL, so clients retry instead of
    /// caching a wrong NXDOMAIN.
    NotReady,
    /// NOERROR with these records (NODATA when `answers` is empty; then `soa` is set).
    Records {
        answers: Cow<'a, [Record]>,
        additionals: &'a [Record],
        soa: Option<&'a Record>,
    },
    /// The name does not exist in the zone.
    NxDomain { soa: &'a Record },
}

impl Answer<'_> {
    /// The response code this answer is sent with.
    pub fn is_nxdomain(&self) -> bool {
        matches!(self, Answer::NxDomain { .. })
    }
}

fn fqdn(s: &str) -> Option<Name> {
    let mut n = Name::from_ascii(s).ok()?;
    n.set_fqdn(true);
    Some(n)
}

fn rec(name: &Name, ttl: u32, rdata: RData) -> Record {
    Record::from_rdata(name.clone(), ttl, rdata)
}

fn addr_record(name: &Name, ttl: u32, ip: IpAddr) -> Record {
    match ip {
        IpAddr::V4(v4) => rec(name, ttl, RData::A(A(v4))),
        IpAddr::V6(v6) => rec(name, ttl, RData::AAAA(AAAA(v6))),
    }
}

/// `10.0.0.1` → `10-0-0-1`; `fd00::1` → `fd00--1` (the endpoint and pod name form).
pub fn dashed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => v6.to_string().replace(':', "-"),
    }
}

/// Inverse of [`dashed`], for pod names.
fn undashed(label: &str) -> Option<IpAddr> {
    if label.matches('-').count() == 3 {
        if let Ok(v4) = label.replace('-', ".").parse::<Ipv4Addr>() {
            return Some(IpAddr::V4(v4));
        }
    }
    label
        .replace('-', ":")
        .parse::<Ipv6Addr>()
        .ok()
        .map(IpAddr::V6)
}

/// The reverse-lookup name of an address, lower case, without the trailing dot.
pub fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut s = String::with_capacity(72);
            for b in v6.octets().iter().rev() {
                s.push_str(&format!("{:x}.{:x}.", b & 0xf, b >> 4));
            }
            s.push_str("ip6.arpa");
            s
        }
    }
}

/// Builder state while a snapshot (or one service's part of it) is computed.
pub(crate) struct Build {
    domain: String,
    ttl: u32,
    names: HashMap<String, Node>,
    ptr: HashMap<String, Vec<Record>>,
}

impl Build {
    fn node(&mut self, name: &str) -> &mut Node {
        if !self.names.contains_key(name) {
            // Register the empty non-terminals between this name and the apex.
            let mut rest = name;
            while let Some((_, parent)) = rest.split_once('.') {
                if parent.len() < self.domain.len() {
                    break;
                }
                self.names.entry(parent.to_string()).or_default();
                if parent == self.domain {
                    break;
                }
                rest = parent;
            }
        }
        self.names.entry(name.to_string()).or_default()
    }

    fn add_addr(&mut self, owner: &str, ip: IpAddr) {
        let Some(name) = fqdn(owner) else { return };
        let r = addr_record(&name, self.ttl, ip);
        let node = self.node(owner);
        let list = if ip.is_ipv4() {
            &mut node.a
        } else {
            &mut node.aaaa
        };
        if !list.contains(&r) {
            list.push(r);
        }
    }

    fn add_ptr(&mut self, ip: IpAddr, target: &str) {
        let (Some(owner), Some(target)) = (fqdn(&reverse_name(ip)), fqdn(target)) else {
            return;
        };
        let r = rec(&owner, self.ttl, RData::PTR(PTR(target)));
        let list = self.ptr.entry(reverse_name(ip)).or_default();
        if !list.contains(&r) {
            list.push(r);
        }
    }

    /// One SRV record `owner → target:port`, with the target's addresses as additionals.
    fn add_srv(&mut self, owner: &str, port: u16, target: &str, target_ips: &[IpAddr]) {
        let (Some(o), Some(t)) = (fqdn(owner), fqdn(target)) else {
            return;
        };
        let ttl = self.ttl;
        let srv = rec(&o, ttl, RData::SRV(SRV::new(0, 100, port, t.clone())));
        let extra: Vec<Record> = target_ips
            .iter()
            .map(|ip| addr_record(&t, ttl, *ip))
            .collect();
        let node = self.node(owner);
        if !node.srv.contains(&srv) {
            node.srv.push(srv);
            node.srv_extra.extend(extra);
        }
    }

    /// Adds the records of one Service (with the EndpointSlices labelled with its name).
    pub(crate) fn add_service(&mut self, svc: &Service, slices: &[&EndpointSlice]) {
        let domain = self.domain.clone();
        let ttl = self.ttl;
        let b = self;
        let (Some(name), Some(ns)) = (
            svc.metadata.name.as_deref(),
            svc.metadata.namespace.as_deref(),
        ) else {
            return;
        };
        let Some(spec) = svc.spec.as_ref() else {
            return;
        };
        let base = format!("{name}.{ns}.svc.{domain}").to_ascii_lowercase();
        let Some(base_name) = fqdn(&base) else {
            return;
        };
        let typ = spec.type_.as_deref().unwrap_or("ClusterIP");
        if typ == "ExternalName" {
            let target = spec.external_name.as_deref().unwrap_or("");
            if let Some(t) = fqdn(target.trim_end_matches('.')) {
                let r = rec(&base_name, ttl, RData::CNAME(CNAME(t)));
                b.node(&base).cname = Some(r);
            }
            return;
        }
        let headless = spec.cluster_ip.as_deref() == Some("None");
        if headless {
            let eps = endpoints(svc, slices);
            // The service name itself exists even without endpoints (NODATA, not NXDOMAIN).
            b.node(&base);
            for (ep, ips) in &eps {
                let owner = format!("{ep}.{base}");
                for ip in ips {
                    b.add_addr(&base, *ip);
                    b.add_addr(&owner, *ip);
                    b.add_ptr(*ip, &owner);
                }
            }
            // Named ports come from the slices (the target ports endpoints listen on).
            let mut ports: BTreeSet<(String, String, u16)> = BTreeSet::new();
            for s in slices {
                for p in s.ports.iter().flatten() {
                    if let (Some(pn), Some(port)) = (p.name.as_deref(), p.port) {
                        if !pn.is_empty() {
                            let proto = p.protocol.as_deref().unwrap_or("TCP");
                            ports.insert((
                                pn.to_ascii_lowercase(),
                                proto.to_ascii_lowercase(),
                                port as u16,
                            ));
                        }
                    }
                }
            }
            for (pn, proto, port) in &ports {
                let owner = format!("_{pn}._{proto}.{base}");
                for (ep, ips) in &eps {
                    b.add_srv(&owner, *port, &format!("{ep}.{base}"), ips);
                }
            }
            return;
        }
        let mut ips: Vec<IpAddr> = spec
            .cluster_ips
            .iter()
            .flatten()
            .chain(spec.cluster_ip.iter())
            .filter_map(|s| s.parse().ok())
            .collect();
        ips.dedup();
        if ips.is_empty() {
            return;
        }
        for ip in &ips {
            b.add_addr(&base, *ip);
            b.add_ptr(*ip, &base);
        }
        for p in spec.ports.iter().flatten() {
            let Some(pn) = p.name.as_deref().filter(|n| !n.is_empty()) else {
                return;
            };
            let proto = p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
            let owner = format!("_{}._{proto}.{base}", pn.to_ascii_lowercase());
            b.add_srv(&owner, p.port as u16, &base, &ips);
        }
    }
}

/// The ready addresses of a headless service's endpoints: (endpoint name, addresses).
fn endpoints(svc: &Service, slices: &[&EndpointSlice]) -> BTreeMap<String, Vec<IpAddr>> {
    let publish_not_ready = svc
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    let mut out: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
    for slice in slices {
        for ep in &slice.endpoints {
            // `ready` unset means ready (EndpointSlice API semantics).
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if !ready && !publish_not_ready {
                continue;
            }
            for a in &ep.addresses {
                let Ok(ip) = a.parse::<IpAddr>() else {
                    continue;
                };
                let name = ep
                    .hostname
                    .clone()
                    .filter(|h| !h.is_empty())
                    .unwrap_or_else(|| dashed(ip))
                    .to_ascii_lowercase();
                let list = out.entry(name).or_default();
                if !list.contains(&ip) {
                    list.push(ip);
                }
            }
        }
    }
    out
}

impl Zone {
    /// An empty zone for `domain`; `synced` false makes cluster names SERVFAIL until the first
    /// real snapshot.
    pub fn empty(domain: &str, ttl: u32) -> Zone {
        Zone::build(domain, ttl, &[], &[], false)
    }

    /// Computes the zone from the current Services and EndpointSlices.
    pub fn build(
        domain: &str,
        ttl: u32,
        services: &[&Service],
        slices: &[&EndpointSlice],
        synced: bool,
    ) -> Zone {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let mut b = Build {
            domain: domain.clone(),
            ttl,
            names: HashMap::with_capacity(services.len() * 2 + 1),
            ptr: HashMap::new(),
        };
        b.names.insert(domain.clone(), Node::default());

        // EndpointSlices by (namespace, service name).
        let mut by_svc: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
        for s in slices {
            let ns = s.metadata.namespace.as_deref().unwrap_or("");
            if let Some(svc) = s
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
            {
                by_svc.entry((ns, svc.as_str())).or_default().push(s);
            }
        }

        for svc in services {
            let key = (
                svc.metadata.namespace.as_deref().unwrap_or(""),
                svc.metadata.name.as_deref().unwrap_or(""),
            );
            let slices = by_svc.get(&key).map(Vec::as_slice).unwrap_or(&[]);
            b.add_service(svc, slices);
        }

        let records = b.names.values().map(Node::count).sum::<usize>()
            + b.ptr.values().map(Vec::len).sum::<usize>();
        Zone {
            soa: soa_record(&domain, ttl),
            domain,
            synced,
            names: b
                .names
                .into_iter()
                .map(|(k, v)| (Arc::from(k), Arc::new(v)))
                .collect(),
            ptr: b
                .ptr
                .into_iter()
                .map(|(k, v)| (Arc::from(k), Arc::new(v)))
                .collect(),
            ttl,
            records,
        }
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Number of records (A, AAAA, SRV, CNAME, PTR) in the snapshot, pod records not counted.
    pub fn record_count(&self) -> usize {
        self.records
    }

    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// Whether `name` (lower case, no trailing dot) is at or below the cluster domain.
    pub fn contains(&self, name: &str) -> bool {
        name == self.domain
            || (name.len() > self.domain.len()
                && name.ends_with(&self.domain)
                && name.as_bytes()[name.len() - self.domain.len() - 1] == b'.')
    }

    /// Answers `qtype` for `name` (lower case, without the trailing dot).
    pub fn lookup(&self, name: &str, qtype: RecordType) -> Answer<'_> {
        if qtype == RecordType::PTR
            && (name.ends_with(".in-addr.arpa") || name.ends_with(".ip6.arpa"))
        {
            return match self.ptr.get(name) {
                Some(list) => Answer::Records {
                    answers: Cow::Borrowed(list.as_slice()),
                    additionals: &[],
                    soa: None,
                },
                // Reverse names of addresses we do not know go upstream (CoreDNS's
                // `fallthrough in-addr.arpa ip6.arpa`).
                None => Answer::NotOurs,
            };
        }
        if !self.contains(name) {
            return Answer::NotOurs;
        }
        if !self.synced {
            return Answer::NotReady;
        }
        if let Some(node) = self.names.get(name) {
            if let Some(c) = &node.cname {
                return Answer::Records {
                    answers: Cow::Borrowed(std::slice::from_ref(c)),
                    additionals: &[],
                    soa: None,
                };
            }
            let (answers, additionals): (&[Record], &[Record]) = match qtype {
                RecordType::A => (&node.a, &[]),
                RecordType::AAAA => (&node.aaaa, &[]),
                RecordType::SRV => (&node.srv, &node.srv_extra),
                RecordType::SOA if name == self.domain => (std::slice::from_ref(&self.soa), &[]),
                RecordType::ANY => (&node.a, &[]),
                _ => (&[], &[]),
            };
            return Answer::Records {
                answers: Cow::Borrowed(answers),
                additionals,
                soa: answers.is_empty().then_some(&self.soa),
            };
        }
        if let Some(ans) = self.pod(name, qtype) {
            return ans;
        }
        Answer::NxDomain { soa: &self.soa }
    }

    /// `<a-b-c-d>.<ns>.pod.<domain>`, and the names above it.
    fn pod(&self, name: &str, qtype: RecordType) -> Option<Answer<'_>> {
        let rel = name.strip_suffix(&self.domain)?.strip_suffix('.')?;
        let labels: Vec<&str> = rel.split('.').collect();
        let nodata = || Answer::Records {
            answers: Cow::Borrowed(&[]),
            additionals: &[],
            soa: Some(&self.soa),
        };
        match labels.as_slice() {
            ["pod"] | [_, "pod"] => Some(nodata()),
            [ip, _ns, "pod"] => {
                let ip = undashed(ip)?;
                let want = match ip {
                    IpAddr::V4(_) => RecordType::A,
                    IpAddr::V6(_) => RecordType::AAAA,
                };
                if qtype != want {
                    return Some(nodata());
                }
                let r = addr_record(&fqdn(name)?, self.ttl, ip);
                Some(Answer::Records {
                    answers: Cow::Owned(vec![r]),
                    additionals: &[],
                    soa: None,
                })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).unwrap()
    }

    fn zone() -> Zone {
        let web = svc(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00::10"],
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP"}, {"port": 81}]}
        }));
        let db = svc(json!({
            "metadata": {"name": "db", "namespace": "prod"},
            "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}
        }));
        let ext = svc(json!({
            "metadata": {"name": "ext", "namespace": "default"},
            "spec": {"type": "ExternalName", "externalName": "example.test."}
        }));
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "db-1", "namespace": "prod",
                          "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "IPv4",
            "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.244.0.5"], "hostname": "db-0", "conditions": {"ready": true}},
                {"addresses": ["10.244.0.6"]},
                {"addresses": ["10.244.0.7"], "conditions": {"ready": false}}
            ]
        }))
        .unwrap();
        Zone::build("cluster.local", 5, &[&web, &db, &ext], &[&slice], true)
    }

    fn ips(a: &Answer<'_>) -> Vec<String> {
        match a {
            Answer::Records { answers, .. } => answers
                .iter()
                .map(|r| match &r.data {
                    RData::A(a) => a.0.to_string(),
                    RData::AAAA(a) => a.0.to_string(),
                    RData::CNAME(c) => c.0.to_string(),
                    RData::PTR(p) => p.0.to_string(),
                    RData::SRV(s) => format!("{} {}", s.port, s.target),
                    other => format!("{other:?}"),
                })
                .collect(),
            other => panic!("not records: {other:?}"),
        }
    }

    #[test]
    fn cluster_ip_service() {
        let z = zone();
        assert_eq!(
            ips(&z.lookup("web.default.svc.cluster.local", RecordType::A)),
            ["10.96.0.10"]
        );
        assert_eq!(
            ips(&z.lookup("web.default.svc.cluster.local", RecordType::AAAA)),
            ["fd00::10"]
        );
        assert_eq!(
            ips(&z.lookup("_http._tcp.web.default.svc.cluster.local", RecordType::SRV)),
            ["80 web.default.svc.cluster.local."]
        );
        assert_eq!(
            ips(&z.lookup("10.0.96.10.in-addr.arpa", RecordType::PTR)),
            ["web.default.svc.cluster.local."]
        );
        // An unnamed port has no SRV name.
        assert!(z
            .lookup("_81._tcp.web.default.svc.cluster.local", RecordType::SRV)
            .is_nxdomain());
        // NODATA for another type; empty non-terminals exist.
        for (n, t) in [
            ("web.default.svc.cluster.local", RecordType::MX),
            ("_tcp.web.default.svc.cluster.local", RecordType::A),
            ("default.svc.cluster.local", RecordType::A),
            ("svc.cluster.local", RecordType::A),
        ] {
            match z.lookup(n, t) {
                Answer::Records { answers, soa, .. } => {
                    assert!(answers.is_empty(), "{n}");
                    assert!(soa.is_some(), "{n}");
                }
                other => panic!("{n}: {other:?}"),
            }
        }
        assert!(z
            .lookup("nope.default.svc.cluster.local", RecordType::A)
            .is_nxdomain());
        assert!(matches!(
            z.lookup("example.test", RecordType::A),
            Answer::NotOurs
        ));
        assert!(matches!(
            z.lookup("9.9.9.9.in-addr.arpa", RecordType::PTR),
            Answer::NotOurs
        ));
        // web: A, AAAA, SRV, 2 PTR; db: 2 A, 2 endpoint A, 2 SRV, 2 PTR; ext: CNAME.
        assert_eq!(z.record_count(), 5 + 8 + 1);
    }

    #[test]
    fn headless_service() {
        let z = zone();
        let mut got = ips(&z.lookup("db.prod.svc.cluster.local", RecordType::A));
        got.sort();
        assert_eq!(got, ["10.244.0.5", "10.244.0.6"]);
        assert_eq!(
            ips(&z.lookup("db-0.db.prod.svc.cluster.local", RecordType::A)),
            ["10.244.0.5"]
        );
        assert_eq!(
            ips(&z.lookup("10-244-0-6.db.prod.svc.cluster.local", RecordType::A)),
            ["10.244.0.6"]
        );
        let mut srv = ips(&z.lookup("_pg._tcp.db.prod.svc.cluster.local", RecordType::SRV));
        srv.sort();
        assert_eq!(
            srv,
            [
                "5432 10-244-0-6.db.prod.svc.cluster.local.",
                "5432 db-0.db.prod.svc.cluster.local."
            ]
        );
        assert_eq!(
            ips(&z.lookup("5.0.244.10.in-addr.arpa", RecordType::PTR)),
            ["db-0.db.prod.svc.cluster.local."]
        );
    }

    #[test]
    fn external_name_and_pods() {
        let z = zone();
        assert_eq!(
            ips(&z.lookup("ext.default.svc.cluster.local", RecordType::A)),
            ["example.test."]
        );
        assert_eq!(
            ips(&z.lookup("10-244-1-9.default.pod.cluster.local", RecordType::A)),
            ["10.244.1.9"]
        );
        assert_eq!(
            ips(&z.lookup("fd00--9.default.pod.cluster.local", RecordType::AAAA)),
            ["fd00::9"]
        );
        assert!(z
            .lookup("not-an-ip.default.pod.cluster.local", RecordType::A)
            .is_nxdomain());
        assert!(matches!(
            Zone::empty("cluster.local", 5).lookup("a.b.svc.cluster.local", RecordType::A),
            Answer::NotReady
        ));
    }

    #[test]
    fn names() {
        assert_eq!(
            reverse_name("fd00::1".parse().unwrap()),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa"
        );
        assert_eq!(undashed("1-2-3-4"), Some("1.2.3.4".parse().unwrap()));
        assert_eq!(dashed("fd00::1".parse().unwrap()), "fd00--1");
        let z = zone();
        assert!(z.contains("cluster.local"));
        assert!(z.contains("a.cluster.local"));
        assert!(!z.contains("xcluster.local"));
    }
}
