//! The zone kept up to date by watch events, one Service at a time.
//!
//! Rebuilding the whole zone per change costs O(all services) (486 ms at 10k services in a
//! debug build), so a busy cluster would spend its DNS server's CPU on rebuilds. Instead,
//! [`ZoneState`] remembers what each Service contributed (its *contribution*: the names and
//! PTR records [`Build::add_service`] makes for it, computed by the same code as a full
//! build) and, when a Service or one of its EndpointSlices changes, recomputes only that
//! Service's contribution and patches the merged maps where the old or new contribution has
//! a name:
//!
//! - a name's node is the union of the nodes all contributions have there. In practice only
//!   one Service owns a non-empty name (`<svc>.<ns>.svc.<domain>` and everything below it);
//!   shared names are the empty non-terminals above (`<ns>.svc.<domain>`), which are kept by a
//!   reference count so the name disappears with its last Service (NXDOMAIN again);
//! - PTR names can be shared (the same pod IP behind two headless Services), so they keep the
//!   list of Services that hold records there and are re-merged from those.
//!
//! Publishing a snapshot ([`ZoneState::snapshot`]) copies the two sharded maps' 256 shard
//! pointers each; the next change copies only the shards it touches (copy-on-write), and
//! queries keep reading the previous immutable [`Zone`] meanwhile. The unit tests check that after random sequences
//! of events (including relists and slices moving between Services) the incremental zone
//! equals a from-scratch [`Zone::build`] of the same objects.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use hickory_proto::rr::Record;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::{soa_record, Build, Node, Sharded, Zone, SERVICE_NAME_LABEL};

/// (namespace, name) of a Service.
pub type SvcKey = (String, String);

/// What one Service puts into the zone.
#[derive(Debug, Default, PartialEq)]
struct Contribution {
    /// Every name it makes exist (empty non-terminals up to the apex included).
    names: HashMap<Arc<str>, Arc<Node>>,
    ptr: HashMap<Arc<str>, Vec<Record>>,
}

impl Contribution {
    fn compute(domain: &str, ttl: u32, svc: &Service, slices: &[&EndpointSlice]) -> Contribution {
        let mut b = Build {
            domain: domain.to_string(),
            ttl,
            names: HashMap::new(),
            ptr: HashMap::new(),
        };
        b.add_service(svc, slices);
        Contribution {
            names: b
                .names
                .into_iter()
                .map(|(k, v)| (Arc::from(k), Arc::new(v)))
                .collect(),
            ptr: b.ptr.into_iter().map(|(k, v)| (Arc::from(k), v)).collect(),
        }
    }
}

/// The cluster zone maintained from watch events; [`ZoneState::snapshot`] publishes it.
#[derive(Debug)]
pub struct ZoneState {
    domain: String,
    ttl: u32,
    services: HashMap<SvcKey, Arc<Service>>,
    /// EndpointSlices by the Service their label names, then by slice name.
    slices: HashMap<SvcKey, BTreeMap<String, Arc<EndpointSlice>>>,
    /// (namespace, slice name) → the Service it was filed under.
    slice_owner: HashMap<SvcKey, SvcKey>,
    contributions: HashMap<SvcKey, Contribution>,
    /// How many contributions make a name exist.
    name_refs: HashMap<Arc<str>, usize>,
    /// Contributions with records at a name.
    name_holders: HashMap<Arc<str>, Vec<SvcKey>>,
    ptr_holders: HashMap<Arc<str>, Vec<SvcKey>>,
    names: Sharded<Arc<Node>>,
    ptr: Sharded<Arc<Vec<Record>>>,
    records: usize,
    empty: Arc<Node>,
    /// Keys seen since a relist began (watch restarts deliver the whole list again; what
    /// is not in it any more was deleted while the watch was down).
    relist_services: Option<HashSet<SvcKey>>,
    relist_slices: Option<HashSet<SvcKey>>,
}

fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<SvcKey> {
    Some((meta.namespace.clone()?, meta.name.clone()?))
}

/// Union of nodes, without duplicate records (as a full build dedups them).
fn merge<'a>(nodes: impl Iterator<Item = &'a Node>) -> Node {
    fn add(to: &mut Vec<Record>, from: &[Record]) {
        for r in from {
            if !to.contains(r) {
                to.push(r.clone());
            }
        }
    }
    let mut out = Node::default();
    for n in nodes {
        add(&mut out.a, &n.a);
        add(&mut out.aaaa, &n.aaaa);
        add(&mut out.srv, &n.srv);
        add(&mut out.srv_extra, &n.srv_extra);
        if out.cname.is_none() {
            out.cname = n.cname.clone();
        }
    }
    out
}

impl ZoneState {
    pub fn new(domain: &str, ttl: u32) -> ZoneState {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let empty = Arc::new(Node::default());
        let mut names = Sharded::new();
        // The apex always exists (it carries the SOA).
        names.insert(Arc::from(domain.as_str()), empty.clone());
        ZoneState {
            domain,
            ttl,
            services: HashMap::new(),
            slices: HashMap::new(),
            slice_owner: HashMap::new(),
            contributions: HashMap::new(),
            name_refs: HashMap::new(),
            name_holders: HashMap::new(),
            ptr_holders: HashMap::new(),
            names,
            ptr: Sharded::new(),
            records: 0,
            empty,
            relist_services: None,
            relist_slices: None,
        }
    }

    /// The current zone as an immutable snapshot for queries.
    pub fn snapshot(&self, synced: bool) -> Zone {
        Zone {
            domain: self.domain.clone(),
            synced,
            names: self.names.clone(),
            ptr: self.ptr.clone(),
            soa: soa_record(&self.domain, self.ttl),
            ttl: self.ttl,
            records: self.records,
        }
    }

    pub fn record_count(&self) -> usize {
        self.records
    }

    /// A Service was created or changed.
    pub fn apply_service(&mut self, svc: Service) {
        let Some(k) = key_of(&svc.metadata) else {
            return;
        };
        if let Some(seen) = &mut self.relist_services {
            seen.insert(k.clone());
        }
        self.services.insert(k.clone(), Arc::new(svc));
        self.recompute(&k);
    }

    /// A Service was deleted.
    pub fn delete_service(&mut self, svc: &Service) {
        let Some(k) = key_of(&svc.metadata) else {
            return;
        };
        if self.services.remove(&k).is_some() {
            self.recompute(&k);
        }
    }

    /// An EndpointSlice was created or changed (its service label may have changed too).
    pub fn apply_slice(&mut self, slice: EndpointSlice) {
        let Some(sk) = key_of(&slice.metadata) else {
            return;
        };
        if let Some(seen) = &mut self.relist_slices {
            seen.insert(sk.clone());
        }
        let owner = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .map(|svc| (sk.0.clone(), svc.clone()));
        if let Some(prev) = self.slice_owner.remove(&sk) {
            if Some(&prev) != owner.as_ref() {
                self.unfile_slice(&prev, &sk.1);
                self.recompute(&prev);
            }
        }
        if let Some(o) = owner {
            self.slices
                .entry(o.clone())
                .or_default()
                .insert(sk.1.clone(), Arc::new(slice));
            self.slice_owner.insert(sk, o.clone());
            self.recompute(&o);
        }
    }

    /// An EndpointSlice was deleted.
    pub fn delete_slice(&mut self, slice: &EndpointSlice) {
        let Some(sk) = key_of(&slice.metadata) else {
            return;
        };
        self.delete_slice_key(&sk);
    }

    fn delete_slice_key(&mut self, sk: &SvcKey) {
        if let Some(prev) = self.slice_owner.remove(sk) {
            self.unfile_slice(&prev, &sk.1);
            self.recompute(&prev);
        }
    }

    fn unfile_slice(&mut self, owner: &SvcKey, name: &str) {
        if let Some(m) = self.slices.get_mut(owner) {
            m.remove(name);
            if m.is_empty() {
                self.slices.remove(owner);
            }
        }
    }

    /// A watch (re)started: the objects that follow are the complete list.
    pub fn services_relist_begin(&mut self) {
        self.relist_services = Some(HashSet::new());
    }

    /// The list is complete: Services not in it were deleted meanwhile.
    pub fn services_relist_end(&mut self) {
        let Some(seen) = self.relist_services.take() else {
            return;
        };
        let gone: Vec<SvcKey> = self
            .services
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        for k in gone {
            self.services.remove(&k);
            self.recompute(&k);
        }
    }

    pub fn slices_relist_begin(&mut self) {
        self.relist_slices = Some(HashSet::new());
    }

    pub fn slices_relist_end(&mut self) {
        let Some(seen) = self.relist_slices.take() else {
            return;
        };
        let gone: Vec<SvcKey> = self
            .slice_owner
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        for sk in gone {
            self.delete_slice_key(&sk);
        }
    }

    /// Replaces the contribution of Service `k` with one computed from its current objects,
    /// and patches the merged maps where either has a name.
    fn recompute(&mut self, k: &SvcKey) {
        let new = match self.services.get(k) {
            Some(svc) => {
                let slices: Vec<&EndpointSlice> = self
                    .slices
                    .get(k)
                    .map(|m| m.values().map(|s| &**s).collect())
                    .unwrap_or_default();
                Contribution::compute(&self.domain, self.ttl, svc, &slices)
            }
            None => Contribution::default(),
        };
        let old = self.contributions.remove(k).unwrap_or_default();
        if old == new {
            // E.g. an endpoint change behind a ClusterIP: no record depends on it.
            if !old.names.is_empty() || !old.ptr.is_empty() {
                self.contributions.insert(k.clone(), old);
            }
            return;
        }
        let mut names: Vec<Arc<str>> = Vec::new();
        for (name, node) in &old.names {
            if let Some(r) = self.name_refs.get_mut(name) {
                *r -= 1;
            }
            if !node.is_empty() {
                remove_holder(&mut self.name_holders, name, k);
            }
            names.push(name.clone());
        }
        for (name, node) in &new.names {
            *self.name_refs.entry(name.clone()).or_insert(0) += 1;
            if !node.is_empty() {
                self.name_holders
                    .entry(name.clone())
                    .or_default()
                    .push(k.clone());
            }
            names.push(name.clone());
        }
        let mut ptrs: Vec<Arc<str>> = Vec::new();
        for name in old.ptr.keys() {
            remove_holder(&mut self.ptr_holders, name, k);
            ptrs.push(name.clone());
        }
        for name in new.ptr.keys() {
            self.ptr_holders
                .entry(name.clone())
                .or_default()
                .push(k.clone());
            ptrs.push(name.clone());
        }
        if !new.names.is_empty() || !new.ptr.is_empty() {
            self.contributions.insert(k.clone(), new);
        }
        names.sort();
        names.dedup();
        for n in &names {
            self.refresh_name(n);
        }
        ptrs.sort();
        ptrs.dedup();
        for p in &ptrs {
            self.refresh_ptr(p);
        }
    }

    fn refresh_name(&mut self, name: &Arc<str>) {
        let refs = self.name_refs.get(name).copied().unwrap_or(0);
        if refs == 0 {
            self.name_refs.remove(name);
        }
        let node = if refs == 0 && **name != *self.domain {
            None
        } else {
            Some(match self.name_holders.get(name).map(Vec::as_slice) {
                None | Some([]) => self.empty.clone(),
                Some([one]) => self.contributions[one].names[name].clone(),
                Some(many) => Arc::new(merge(
                    many.iter().map(|h| &*self.contributions[h].names[name]),
                )),
            })
        };
        self.records += node.as_ref().map_or(0, |n| n.count());
        let old = match node {
            Some(n) => self.names.insert(name.clone(), n),
            None => self.names.remove(name),
        };
        self.records -= old.map_or(0, |n| n.count());
    }

    fn refresh_ptr(&mut self, name: &Arc<str>) {
        let list: Vec<Record> = match self.ptr_holders.get(name) {
            None => Vec::new(),
            Some(holders) => {
                let mut out: Vec<Record> = Vec::new();
                for h in holders {
                    for r in &self.contributions[h].ptr[name] {
                        if !out.contains(r) {
                            out.push(r.clone());
                        }
                    }
                }
                out
            }
        };
        self.records += list.len();
        let old = if list.is_empty() {
            self.ptr.remove(name)
        } else {
            self.ptr.insert(name.clone(), Arc::new(list))
        };
        self.records -= old.map_or(0, |l| l.len());
    }
}

fn remove_holder(map: &mut HashMap<Arc<str>, Vec<SvcKey>>, name: &Arc<str>, k: &SvcKey) {
    if let Some(v) = map.get_mut(name) {
        v.retain(|h| h != k);
        if v.is_empty() {
            map.remove(name);
        }
    }
}

#[cfg(test)]
mod tests;
