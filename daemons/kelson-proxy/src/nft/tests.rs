//! Rule generation tests: the pure functions against expected lines.

use super::*;
use crate::model::{Endpoint, Protocol, ServiceInfo, ServicePortName};

fn spn(name: &str) -> ServicePortName {
    ServicePortName {
        namespace: "ns".into(),
        name: name.into(),
        port_name: "http".into(),
        protocol: Protocol::Tcp,
    }
}

fn ep(last: u8, local: bool) -> Endpoint {
    Endpoint {
        ip: IpAddr::from([10, 244, 0, last]),
        port: 8080,
        ready: true,
        serving: true,
        terminating: false,
        local,
    }
}

fn info(eps: Vec<Endpoint>) -> ServiceInfo {
    ServiceInfo {
        cluster_ips: vec!["10.96.0.10".parse().unwrap()],
        port: 80,
        endpoints: eps,
        ..Default::default()
    }
}

fn ctx() -> Ctx {
    Ctx::new(Family::V4, &["10.244.0.0/16".into()], false, &[])
}

#[test]
fn cluster_ip_balances_over_ready_endpoints() {
    let r = render_service(
        &ctx(),
        &spn("web"),
        &info(vec![ep(1, true), ep(2, false), ep(3, false)]),
    );
    let svc = r
        .chains
        .iter()
        .find(|(c, _)| c.starts_with("service-") && c.ends_with("-ns/web/tcp/http"))
        .expect("service chain");
    assert_eq!(svc.1.len(), 2, "{:?}", svc.1);
    assert_eq!(
        svc.1[0],
        "ip daddr 10.96.0.10 tcp dport 80 ip saddr != 10.244.0.0/16 jump mark-for-masquerade"
    );
    assert_eq!(
        svc.1[1],
        "meta l4proto tcp dnat to numgen random mod 3 map { 0 : 10.244.0.1 . 8080, 1 : 10.244.0.2 . 8080, 2 : 10.244.0.3 . 8080 }"
    );
    assert_eq!(r.chains.len(), 1, "no endpoint chains without affinity");
    assert!(r
        .elements
        .contains_key(&("hairpin-endpoints", "10.244.0.2 . 10.244.0.2".to_string())));
    assert_eq!(
        r.elements
            .get(&("service-ips", "10.96.0.10 . tcp . 80".to_string())),
        Some(&Some(format!("goto {}", svc.0)))
    );
    assert!(r
        .elements
        .contains_key(&("cluster-ips", "10.96.0.10".to_string())));
    assert!(r.sets.is_empty());
}

#[test]
fn no_endpoints_reject_and_unready_not_used() {
    let mut unready = ep(1, true);
    unready.ready = false;
    unready.serving = false;
    let r = render_service(&ctx(), &spn("empty"), &info(vec![unready]));
    assert!(r.chains.is_empty(), "{:?}", r.chains);
    assert_eq!(
        r.elements
            .get(&("no-endpoint-services", "10.96.0.10 . tcp . 80".to_string())),
        Some(&Some("goto reject-chain".to_string()))
    );
    assert!(!r.elements.keys().any(|(m, _)| *m == "service-ips"));
}

#[test]
fn nodeport_external_local_and_affinity() {
    let mut i = info(vec![ep(1, true), ep(2, false)]);
    i.node_port = Some(30080);
    i.external_policy_local = true;
    i.affinity_timeout = Some(60);
    i.load_balancer_ips = vec!["192.0.2.7".parse().unwrap()];
    i.load_balancer_source_ranges = vec!["198.51.100.0/24".into()];
    let r = render_service(&ctx(), &spn("np"), &i);
    let ext = r
        .chains
        .iter()
        .find(|(c, _)| c.starts_with("external-"))
        .expect("external chain");
    let svc = r.chains.keys().find(|c| c.starts_with("service-")).unwrap();
    let local = r.chains.keys().find(|c| c.starts_with("local-")).unwrap();
    assert_eq!(
        ext.1,
        &vec![
            format!("ip saddr 10.244.0.0/16 goto {svc}"),
            "fib saddr type local jump mark-for-masquerade".to_string(),
            format!("fib saddr type local goto {svc}"),
            format!("goto {local}"),
        ]
    );
    let local_rules = &r.chains[local];
    assert!(local_rules
        .last()
        .unwrap()
        .starts_with("numgen random mod 1 vmap { 0 : goto endpoint-"));
    let e1 = r
        .chains
        .iter()
        .find(|(c, _)| c.ends_with("__10.244.0.1/8080"))
        .unwrap();
    assert!(e1.0.starts_with("endpoint-"));
    assert_eq!(
        e1.1.last().unwrap(),
        "meta l4proto tcp dnat to 10.244.0.1:8080"
    );
    assert_eq!(
        local_rules
            .iter()
            .filter(|l| l.contains("@affinity-"))
            .count(),
        1
    );
    assert_eq!(r.sets.len(), 2, "one affinity set per endpoint");
    assert!(r.sets.values().all(|d| d.contains("timeout 60s")));
    assert!(r.chains.iter().any(|(c, rules)| c.starts_with("endpoint-")
        && rules.iter().any(|l| l.starts_with("update @affinity-"))));
    assert_eq!(
        r.elements
            .get(&("service-nodeports", "tcp . 30080".to_string())),
        Some(&Some(format!("goto {}", ext.0)))
    );
    assert_eq!(
        r.elements
            .get(&("service-ips", "192.0.2.7 . tcp . 80".to_string())),
        Some(&Some(format!("goto {}", ext.0)))
    );
    let fw = r
        .chains
        .iter()
        .find(|(c, _)| c.starts_with("firewall-"))
        .unwrap();
    assert_eq!(fw.1, &vec!["ip saddr != 198.51.100.0/24 drop".to_string()]);

    // No local endpoint: external traffic is dropped, cluster traffic still works.
    let mut i2 = i.clone();
    i2.endpoints = vec![ep(2, false)];
    let r2 = render_service(&ctx(), &spn("np"), &i2);
    assert_eq!(
        r2.elements
            .get(&("no-endpoint-nodeports", "tcp . 30080".to_string())),
        Some(&Some("drop".to_string()))
    );
    assert!(r2
        .elements
        .keys()
        .any(|(m, k)| *m == "service-ips" && k.starts_with("10.96.0.10 ")));
}

#[test]
fn other_family_renders_nothing_and_v6_dnat_is_bracketed() {
    let v6 = Ctx::new(Family::V6, &["10.244.0.0/16".into()], false, &[]);
    assert!(v6.cluster_cidrs.is_empty());
    let r = render_service(&v6, &spn("web"), &info(vec![ep(1, true)]));
    assert_eq!(r, ServiceRules::default());
    let mut i = info(vec![Endpoint {
        ip: "fd00::5".parse().unwrap(),
        ..ep(1, true)
    }]);
    i.cluster_ips = vec!["fd00:96::10".parse().unwrap()];
    i.affinity_timeout = Some(10);
    let r = render_service(&v6, &spn("web"), &i);
    let e = r
        .chains
        .iter()
        .find(|(c, _)| c.starts_with("endpoint-"))
        .unwrap();
    assert!(!e.0.contains(':'), "chain names carry no ':' ({})", e.0);
    assert_eq!(
        e.1.last().unwrap(),
        "meta l4proto tcp dnat to [fd00::5]:8080"
    );
}

fn programmed(state: &[(&str, Vec<Endpoint>)]) -> Programmed {
    let st: State = state
        .iter()
        .enumerate()
        .map(|(i, (n, eps))| {
            let mut inf = info(eps.clone());
            inf.cluster_ips = vec![IpAddr::from([10, 96, 0, 10 + i as u8])];
            (spn(n), inf)
        })
        .collect();
    render_all(&ctx(), &st)
}

#[test]
fn diff_touches_only_the_changed_service() {
    let old = programmed(&[
        ("a", vec![ep(1, true), ep(2, true)]),
        ("b", vec![ep(3, true)]),
    ]);
    assert_eq!(diff_script(&ctx(), &old, &old), "");
    // Removing endpoint 2 from service a.
    let new = programmed(&[("a", vec![ep(1, true)]), ("b", vec![ep(3, true)])]);
    let d = diff_script(&ctx(), &old, &new);
    let lines: Vec<&str> = d.lines().collect();
    assert!(!d.contains("/b/"), "service b untouched:\n{d}");
    assert!(
        lines[0].starts_with("flush chain ip kelson-proxy service-"),
        "{d}"
    );
    assert!(lines[1].ends_with("jump mark-for-masquerade"), "{d}");
    assert!(lines[2].contains("dnat to numgen random mod 1 map { 0 : 10.244.0.1 . 8080 }"));
    assert_eq!(
        lines[3],
        "delete element ip kelson-proxy hairpin-endpoints { 10.244.0.2 . 10.244.0.2 }"
    );
    assert_eq!(lines.len(), 4, "{d}");

    // With affinity, endpoint chains come and go; a removed one is deleted after its
    // referrer was rewritten.
    let aff = |eps: Vec<Endpoint>| {
        let mut i = info(eps);
        i.affinity_timeout = Some(30);
        render_all(&ctx(), &[(spn("a"), i)].into_iter().collect())
    };
    let d = diff_script(
        &ctx(),
        &aff(vec![ep(1, true), ep(2, true)]),
        &aff(vec![ep(1, true)]),
    );
    let lines: Vec<&str> = d.lines().collect();
    let del: Vec<_> = lines
        .iter()
        .filter(|l| l.starts_with("delete chain"))
        .collect();
    assert_eq!(del.len(), 1, "{d}");
    assert!(del[0].ends_with("__10.244.0.2/8080"));
    assert!(d.contains("delete set ip kelson-proxy affinity-"));
    let pos = |p: &str| lines.iter().position(|l| l.starts_with(p)).unwrap();
    assert!(pos("add rule") < pos("delete chain"));

    // Service b loses all endpoints: element moves to no-endpoint-services.
    let new2 = programmed(&[("a", vec![ep(1, true)]), ("b", vec![])]);
    let d2 = diff_script(&ctx(), &new, &new2);
    assert!(
        d2.contains("delete element ip kelson-proxy service-ips { 10.96.0.11 . tcp . 80 }"),
        "{d2}"
    );
    assert!(d2.contains("add element ip kelson-proxy no-endpoint-services { 10.96.0.11 . tcp . 80 : goto reject-chain }"));
    assert!(!d2.contains("10.96.0.10"), "{d2}");

    // Two services claiming the same key: the first in name order owns it.
    let mut st: State = [spn("x"), spn("y")]
        .into_iter()
        .map(|k| (k, info(vec![ep(1, true)])))
        .collect();
    let p = render_all(&ctx(), &st);
    let owner = p.elements[&("service-ips", "10.96.0.10 . tcp . 80".to_string())].clone();
    assert!(owner.unwrap().ends_with("-ns/x/tcp/http"));
    st.remove(&spn("x"));
    let d3 = diff_script(&ctx(), &p, &render_all(&ctx(), &st));
    assert!(
        d3.contains("-ns/y/tcp/http }"),
        "y takes the key over: {d3}"
    );
}

#[test]
fn full_script_declares_before_use() {
    let p = programmed(&[("a", vec![ep(1, true)])]);
    let s = full_script(&ctx(), &p);
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(lines[0], "add table ip kelson-proxy");
    assert_eq!(lines[1], "delete table ip kelson-proxy");
    let first_rule = lines
        .iter()
        .position(|l| l.starts_with("add rule"))
        .unwrap();
    let last_chain = lines
        .iter()
        .rposition(|l| l.starts_with("add chain"))
        .unwrap();
    assert!(last_chain < first_rule);
    assert!(s.contains("add rule ip kelson-proxy services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports"));
    assert_eq!(p.rule_count(&ctx()), base_rules(&ctx()).len() + 2);
}
