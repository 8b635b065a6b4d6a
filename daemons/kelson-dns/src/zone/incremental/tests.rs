//! The incremental zone against a from-scratch build after random event sequences.

use super::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::collections::BTreeSet;

/// A zone in a comparable form: name → sorted record texts per kind; PTR name → records.
type Canon = (
    BTreeMap<String, [BTreeSet<String>; 5]>,
    BTreeMap<String, BTreeSet<String>>,
    usize,
);

fn canon(z: &Zone) -> Canon {
    let set = |v: &[Record]| v.iter().map(|r| r.to_string()).collect::<BTreeSet<_>>();
    let names = z
        .names
        .iter()
        .map(|(k, n)| {
            (
                k.to_string(),
                [
                    set(&n.a),
                    set(&n.aaaa),
                    set(&n.srv),
                    set(&n.srv_extra),
                    n.cname.iter().map(|r| r.to_string()).collect(),
                ],
            )
        })
        .collect();
    let ptr = z.ptr.iter().map(|(k, v)| (k.to_string(), set(v))).collect();
    (names, ptr, z.record_count())
}

const NAMESPACES: [&str; 2] = ["default", "prod"];
const NAMES: [&str; 4] = ["web", "db", "api", "ext"];

fn random_service(rng: &mut StdRng) -> Service {
    let ns = NAMESPACES[rng.gen_range(0..2)];
    let name = NAMES[rng.gen_range(0..4)];
    let ip = |rng: &mut StdRng| format!("10.96.0.{}", rng.gen_range(1..6));
    let (pn, proto) = (
        ["http", "grpc"][rng.gen_range(0..2)],
        ["TCP", "UDP"][rng.gen_range(0..2)],
    );
    let ports =
        json!([{"name": pn, "port": rng.gen_range(80..83), "protocol": proto}, {"port": 9}]);
    let spec = match rng.gen_range(0..4) {
        0 => {
            let a = ip(rng);
            json!({"clusterIP": a, "clusterIPs": [a, "fd00::10"], "ports": ports})
        }
        1 => json!({"clusterIP": ip(rng), "ports": ports}),
        2 => json!({"clusterIP": "None", "ports": ports,
                     "publishNotReadyAddresses": rng.gen_bool(0.3)}),
        _ => json!({"type": "ExternalName",
                     "externalName": format!("{}.example.test.", rng.gen_range(0..3))}),
    };
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns}, "spec": spec}))
        .unwrap()
}

fn random_slice(rng: &mut StdRng) -> EndpointSlice {
    let ns = NAMESPACES[rng.gen_range(0..2)];
    let svc = NAMES[rng.gen_range(0..4)];
    let n = rng.gen_range(0..4);
    let pn = ["http", "grpc"][rng.gen_range(0..2)];
    let endpoints: Vec<serde_json::Value> = (0..n)
        .map(|_| {
            // Few addresses, so the same pod IP shows up behind several Services (shared PTR).
            let mut e = json!({"addresses": [format!("10.244.0.{}", rng.gen_range(1..5))],
                               "conditions": {"ready": rng.gen_bool(0.7)}});
            if rng.gen_bool(0.3) {
                let h = ["a", "b"][rng.gen_range(0..2)];
                e["hostname"] = json!(h);
            }
            e
        })
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": format!("s{}", rng.gen_range(0..3)), "namespace": ns,
                      "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "ports": [{"name": pn, "port": rng.gen_range(8080..8082), "protocol": "TCP"}],
        "endpoints": endpoints
    }))
    .unwrap()
}

/// The objects the API server holds, as a reflector store would.
#[derive(Default)]
struct Truth {
    services: BTreeMap<SvcKey, Service>,
    slices: BTreeMap<SvcKey, EndpointSlice>,
}

impl Truth {
    fn build(&self) -> Zone {
        let s: Vec<&Service> = self.services.values().collect();
        let e: Vec<&EndpointSlice> = self.slices.values().collect();
        Zone::build("cluster.local", 5, &s, &e, true)
    }
}

fn run(seed: u64, steps: usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut truth = Truth::default();
    let mut z = ZoneState::new("cluster.local", 5);
    for step in 0..steps {
        match rng.gen_range(0..10) {
            0..=2 => {
                let s = random_service(&mut rng);
                truth
                    .services
                    .insert(key_of(&s.metadata).unwrap(), s.clone());
                z.apply_service(s);
            }
            3 => {
                if let Some(k) = truth.services.keys().nth(rng.gen_range(0..8)).cloned() {
                    let s = truth.services.remove(&k).unwrap();
                    z.delete_service(&s);
                }
            }
            4..=6 => {
                let s = random_slice(&mut rng);
                truth.slices.insert(key_of(&s.metadata).unwrap(), s.clone());
                z.apply_slice(s);
            }
            7 => {
                if let Some(k) = truth.slices.keys().nth(rng.gen_range(0..8)).cloned() {
                    let s = truth.slices.remove(&k).unwrap();
                    z.delete_slice(&s);
                }
            }
            _ => {
                // A watch restart: the world changed while it was down; the relist delivers
                // the new complete list, and what is missing from it was deleted.
                for _ in 0..rng.gen_range(0..4) {
                    if let Some(k) = truth.services.keys().nth(rng.gen_range(0..8)).cloned() {
                        truth.services.remove(&k);
                    }
                    if let Some(k) = truth.slices.keys().nth(rng.gen_range(0..8)).cloned() {
                        truth.slices.remove(&k);
                    }
                    let s = random_service(&mut rng);
                    truth.services.insert(key_of(&s.metadata).unwrap(), s);
                }
                z.services_relist_begin();
                for s in truth.services.values() {
                    z.apply_service(s.clone());
                }
                z.services_relist_end();
                z.slices_relist_begin();
                for s in truth.slices.values() {
                    z.apply_slice(s.clone());
                }
                z.slices_relist_end();
            }
        }
        let got = canon(&z.snapshot(true));
        let want = canon(&truth.build());
        assert_eq!(got, want, "seed {seed}, step {step}");
        assert_eq!(z.record_count(), want.2, "seed {seed}, step {step}");
    }
}

#[test]
fn incremental_equals_full_build_after_random_events() {
    for seed in 0..40 {
        run(seed, 150);
    }
}

#[test]
fn deleting_everything_leaves_the_apex_only() {
    let mut rng = StdRng::seed_from_u64(7);
    let mut z = ZoneState::new("cluster.local", 5);
    let mut svcs = Vec::new();
    let mut slices = Vec::new();
    for _ in 0..30 {
        let s = random_service(&mut rng);
        svcs.push(s.clone());
        z.apply_service(s);
        let e = random_slice(&mut rng);
        slices.push(e.clone());
        z.apply_slice(e);
    }
    assert!(z.record_count() > 0);
    for s in &svcs {
        z.delete_service(s);
    }
    for e in &slices {
        z.delete_slice(e);
    }
    let snap = z.snapshot(true);
    assert_eq!(snap.record_count(), 0);
    assert_eq!(
        snap.names
            .iter()
            .map(|(k, _)| k.to_string())
            .collect::<Vec<_>>(),
        ["cluster.local"]
    );
    assert!(snap.ptr.is_empty());
    assert!(z.contributions.is_empty() && z.name_refs.is_empty());
    assert!(z.name_holders.is_empty() && z.ptr_holders.is_empty());
}

#[test]
fn endpoint_change_behind_a_cluster_ip_publishes_the_same_nodes() {
    let mut z = ZoneState::new("cluster.local", 5);
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80}]}
    }))
    .unwrap();
    z.apply_service(svc);
    let before = z.snapshot(true);
    let mut rng = StdRng::seed_from_u64(1);
    let mut slice = random_slice(&mut rng);
    slice.metadata.namespace = Some("default".into());
    slice
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert(SERVICE_NAME_LABEL.into(), "web".into());
    z.apply_slice(slice);
    let after = z.snapshot(true);
    let n = "web.default.svc.cluster.local";
    // The very same node (no recomputed copy): endpoints do not change a ClusterIP's records.
    assert!(Arc::ptr_eq(
        before.names.get(n).unwrap(),
        after.names.get(n).unwrap()
    ));
}
