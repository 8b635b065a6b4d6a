//! `kelsonctl lab` with workers: three control-plane machines (systemd-nspawn, zones a/b/c)
//! and two workers that are QEMU/TCG virtual machines (zones a and b), every machine
//! provisioned by `ansible/site.yml` over ssh. Issue 9, acceptance 1 (and the worker half of 4):
//!
//! 1. `lab up` → the generated inventory lists the workers in group `workers` with their
//!    zones, `site.yml --limit workers` provisioned both (changed, nothing failed or
//!    unreachable), and `kubectl get nodes` shows both workers Ready with their zone labels;
//!    their pod CIDRs are routed through the lab's router.
//! 2. A Deployment spread over the zones (hard `topologySpreadConstraints` on
//!    `topology.kubernetes.io/zone`) runs real containers (containerd + runc inside the VMs) on
//!    both workers, and its ClusterIP Service answers from a pod with both backends (so
//!    traffic crosses zones: pod → kelson-proxy's DNAT → router → the other VM → its pod).
//!    Its LoadBalancer Service gets an address from the description's pool (on the VIP's
//!    segment, where every worker has a NIC) and answers the host with both backends.
//! 3. `lab kill worker-b` (SIGKILL to QEMU: power loss) → the node goes Ready=Unknown within
//!    the controller-manager's grace period, and a pod that preferred worker-b and tolerates an
//!    unreachable node for 5 s is evicted and runs on worker-a (acceptance 4: zone b is fully
//!    down while zone a is healthy, so upstream's rules evict there at the normal rate; the
//!    rate limit and "a cluster-wide outage evicts nothing" are shown by the
//!    controller-manager's `node_lifecycle_taints_and_evicts`); `lab start worker-b` boots the
//!    same disk again → the node is Ready, worker-b runs a new container, and both Services
//!    answer from both zones again.
//! 4. `lab ansible remove-node.yml -e kelson_node=worker-b` → the Node is gone, worker-b's node
//!    units are stopped and disabled, and web's pods both run on worker-a (answering through the
//!    ClusterIP); `lab ansible add-node.yml -e kelson_node=worker-b` → worker-b Ready again with
//!    its zone label, its units enabled and running, and a third web replica runs on it.
//! 5. `lab down` → no QEMU process, namespace, tap, overlay or image of the lab is left.
//!
//! `lab up`'s default provisioning is Ansible: `site.yml --limit control_plane` once the
//! nspawn machines are booted, `site.yml --limit workers` once the VMs are (see docs/lab.md).
//!
//! Takes about 20–22 minutes on 2 cores at load 2–9 (TCG boots, a debug kubelet under emulation, and
//! three Ansible runs on the VMs: 1315 s in session 6, remove-node 182 s, add-node 155 s); the
//! first run also builds the cached images (scripts/nspawn-rootfs.sh, scripts/vm-image.sh: a
//! few minutes each, network to a Debian mirror) and fetches QEMU (scripts/qemu-fetch.sh).
//! Needs root, every Kelson binary in target/debug, kubectl, ssh and qemu-img.

mod common;

use std::time::{Duration, Instant};

use common::lab::{ansible_rootfs, bin_dir, is_root, require_tool, script, text, wait_for, Lab};
use kelson_testsupport::workspace_root;

/// 10.216.x is this test's (lab.rs uses 10.213 and 10.214; the lab refuses routed subnets).
const CLUSTER: &str = r#"name = "labw"

[vip]
address = "10.216.100.100"
interface = "vip0"

[[zones]]
name = "a"
subnet = "10.216.1.0/24"

[[zones]]
name = "b"
subnet = "10.216.2.0/24"

[[zones]]
name = "c"
subnet = "10.216.3.0/24"

[[control_plane]]
name = "cp-a"
zone = "a"
address = "10.216.1.11"

[[control_plane]]
name = "cp-b"
zone = "b"
address = "10.216.2.11"

[[control_plane]]
name = "cp-c"
zone = "c"
address = "10.216.3.11"

[[workers]]
name = "worker-a"
zone = "a"
address = "10.216.1.21"

[[workers]]
name = "worker-b"
zone = "b"
address = "10.216.2.21"

# On the VIP's segment (stretched over the zones): every worker has a NIC there.
[[lb_pools]]
name = "lab"
ranges = ["10.216.100.200-10.216.100.210"]
"#;

/// Two replicas, one per zone (hard spread), each serving its own pod name over HTTP.
const WEB: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      topologySpreadConstraints:
      - maxSkew: 1
        topologyKey: topology.kubernetes.io/zone
        whenUnsatisfiable: DoNotSchedule
        labelSelector:
          matchLabels: {app: web}
      containers:
      - name: web
        image: kelson.local/busybox:latest
        command: ["sh", "-c", "hostname > /tmp/index.html; exec httpd -f -p 8080 -h /tmp"]
        ports:
        - containerPort: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
  - port: 80
    targetPort: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: web-lb
spec:
  type: LoadBalancer
  selector: {app: web}
  ports:
  - port: 80
    targetPort: 8080
"#;

/// Acceptance 4: a pod that prefers zone b and tolerates an unreachable node for 5 s only.
/// When worker-b dies it is evicted (zone b is fully down while zone a is healthy, so upstream's
/// node lifecycle rules evict there at the normal rate) and its replacement runs on worker-a.
const MOVER: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: mover
spec:
  replicas: 1
  selector:
    matchLabels: {app: mover}
  template:
    metadata:
      labels: {app: mover}
    spec:
      terminationGracePeriodSeconds: 1
      tolerations:
      - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 5}
      - {key: node.kubernetes.io/not-ready, operator: Exists, effect: NoExecute, tolerationSeconds: 5}
      affinity:
        nodeAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
          - weight: 100
            preference:
              matchExpressions:
              - {key: topology.kubernetes.io/zone, operator: In, values: [b]}
      containers:
      - name: c
        image: kelson.local/busybox:latest
        command: ["sleep", "3600"]
"#;

/// (pod name, node, phase, deletionTimestamp) of the mover's pods.
fn mover_pods(lab: &Lab) -> Result<Vec<(String, String, String, String)>, String> {
    let s = lab.get(&[
        "get",
        "pods",
        "-l",
        "app=mover",
        "-o",
        r#"jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} {.status.phase} {.metadata.deletionTimestamp}{"\n"}{end}"#,
    ])?;
    Ok(s.lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let g = |i: usize| f.get(i).copied().unwrap_or_default().to_string();
            (g(0), g(1), g(2), g(3))
        })
        .collect())
}

/// (node, Ready status, zone label) of every node.
fn nodes(lab: &Lab) -> Result<Vec<(String, String, String)>, String> {
    let s = lab.get(&[
        "get",
        "nodes",
        "-o",
        r#"jsonpath={range .items[*]}{.metadata.name} {.status.conditions[?(@.type=="Ready")].status} {.metadata.labels.topology\.kubernetes\.io/zone}{"\n"}{end}"#,
    ])?;
    Ok(s.lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let g = |i: usize| f.get(i).copied().unwrap_or_default().to_string();
            (g(0), g(1), g(2))
        })
        .collect())
}

/// (pod, node, phase, container startedAt) of the web pods.
fn web_pods(lab: &Lab) -> Result<Vec<(String, String, String, String)>, String> {
    let s = lab.get(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        r#"jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} {.status.phase} {.status.containerStatuses[0].state.running.startedAt}{"\n"}{end}"#,
    ])?;
    Ok(s.lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let g = |i: usize| f.get(i).copied().unwrap_or_default().to_string();
            (g(0), g(1), g(2), g(3))
        })
        .collect())
}

/// Both web pods Running, one on each worker, and worker-b's container not the one started at
/// `not_b` (after a reboot the API keeps showing the dead container as running until the
/// kubelet reports the new one); returns (pod on worker-a, pod on worker-b, b's startedAt).
fn web_on_both(lab: &Lab, not_b: &str) -> Result<(String, String, String), String> {
    let pods = web_pods(lab)?;
    let on = |n: &str| {
        pods.iter()
            .find(|(_, node, phase, started)| {
                node == n && phase == "Running" && !started.is_empty()
            })
            .cloned()
    };
    match (on("worker-a"), on("worker-b")) {
        (Some(a), Some(b)) if b.3 != not_b => Ok((a.0, b.0, b.3)),
        _ => Err(format!("{pods:?}")),
    }
}

/// From `client` (a pod), requests the Service's ClusterIP until both backends answered.
fn clusterip_reaches_both(
    lab: &Lab,
    client: &str,
    ip: &str,
    a: &str,
    b: &str,
) -> Result<(), String> {
    // busybox wget's own -T crashes (busybox 1.35 bug, also on the host): bound with timeout.
    let cmd = format!(
        "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do timeout 5 wget -q -O - http://{ip}/index.html; done"
    );
    let out = lab.kubectl(&["exec", client, "--", "sh", "-c", &cmd]);
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    if s.contains(a) && s.contains(b) {
        Ok(())
    } else {
        Err(format!("answers {s:?} ({})", text(&out).trim()))
    }
}

/// One HTTP/1.0 GET from the host (bounded); returns the body.
fn http_get(ip: &str, path: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let addr: std::net::SocketAddr = format!("{ip}:80").parse().map_err(|e| format!("{e}"))?;
    let mut c = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut s = String::new();
    c.read_to_string(&mut s).map_err(|e| e.to_string())?;
    Ok(s.split("\r\n\r\n").nth(1).unwrap_or_default().to_string())
}

/// From the host, requests the LoadBalancer address until both backends answered.
fn lb_reaches_both(ip: &str, a: &str, b: &str) -> Result<(), String> {
    let mut seen = Vec::new();
    for _ in 0..16 {
        match http_get(ip, "/index.html") {
            Ok(body) => seen.push(body.trim().to_string()),
            Err(e) => seen.push(e),
        }
        if seen.iter().any(|s| s == a) && seen.iter().any(|s| s == b) {
            return Ok(());
        }
    }
    Err(format!("answers {seen:?}"))
}

#[test]
fn workers_as_vms_serve_a_zone_spread_deployment() {
    let started = Instant::now();
    assert!(
        is_root(),
        "the lab test needs root (namespaces, taps, QEMU)"
    );
    require_tool("/usr/bin/systemd-nspawn", "systemd-container");
    require_tool("/usr/sbin/debootstrap", "debootstrap");
    require_tool("/usr/bin/qemu-img", "qemu-utils");
    require_tool("/usr/bin/ssh", "openssh-client");
    require_tool(
        "/usr/bin/kubectl",
        "kubectl (preinstalled on these machines)",
    );
    require_tool("/usr/bin/ansible-playbook", "ansible-core");
    let bin_dir = bin_dir().display().to_string();
    let target = workspace_root().join("target");
    // Every machine is provisioned by ansible/site.yml (python3 and sshd in the control-plane
    // rootfs and in the worker image).
    let rootfs = ansible_rootfs().display().to_string();
    let ansible = workspace_root().join("ansible").display().to_string();
    script("vm-image.sh", &[&target.join("vm-image")]);
    let qemu = script("qemu-fetch.sh", &[&target.join("qemu")]);
    let qemu = qemu
        .lines()
        .last()
        .expect("qemu-fetch.sh prints the QEMU path");
    eprintln!("lab: images and QEMU ready after {:?}", started.elapsed());

    let mut lab = Lab::new("kelson-labw-", CLUSTER);
    let vm_image = target.join("vm-image").display().to_string();
    let up = lab.ctl_ok(
        900,
        &[
            "up",
            "--rootfs",
            &rootfs,
            "--bin-dir",
            &bin_dir,
            "--vm-image",
            &vm_image,
            "--qemu",
            qemu,
            "--ansible",
            &ansible,
        ],
    );
    eprintln!("lab: up after {:?}\n{up}", started.elapsed());
    let status = lab.ctl_ok(30, &["status"]);
    let id = lab.id();
    assert!(
        status.contains("machine worker-a zone a 10.216.1.21 running"),
        "{status}"
    );
    // exec on a worker goes over ssh: the VM's own address and kernel.
    let ip = lab.ctl_ok(
        30,
        &[
            "exec", "worker-b", "--", "ip", "-4", "-o", "addr", "show", "eth0",
        ],
    );
    assert!(ip.contains("10.216.2.21/24"), "{ip}");

    // 1. The workers are Ansible-managed hosts of the inventory, provisioned by site.yml.
    let inventory = std::fs::read_to_string(lab.lab_dir().join("inventory.yml")).unwrap();
    let workers_group = &inventory[inventory.find("    workers:\n").expect("workers group")..];
    for (m, zone, addr) in [
        ("worker-a", "a", "10.216.1.21"),
        ("worker-b", "b", "10.216.2.21"),
    ] {
        assert!(
            workers_group.contains(&format!(
                "        {m}:\n          ansible_host: {addr}\n          zone: \"{zone}\"\n"
            )),
            "{inventory}"
        );
    }
    let site = std::fs::read_to_string(lab.lab_dir().join("ansible-workers.log"))
        .expect("lab up keeps the workers' site.yml log");
    for m in ["worker-a", "worker-b"] {
        let r = common::ansible::recap(&site, m);
        assert_eq!((r["failed"], r["unreachable"]), (0, 0), "{m}: {r:?}");
        assert!(r["changed"] > 0, "site.yml changed nothing on {m}: {r:?}");
    }
    // The control-plane machines were not part of the workers' run.
    assert!(
        !site.contains("cp-a "),
        "site.yml --limit workers touched cp-a:\n{site}"
    );
    let enabled = lab.ctl_ok(
        60,
        &[
            "exec",
            "worker-a",
            "--",
            "systemctl",
            "is-enabled",
            "kelson-kubelet",
            "kelson-speaker",
        ],
    );
    assert_eq!(
        enabled.split_whitespace().collect::<Vec<_>>(),
        ["enabled", "enabled"]
    );

    // Both workers Ready with their zones.
    let ns = wait_for("workers Ready", Duration::from_secs(60), || {
        let ns = nodes(&lab)?;
        let ok = |n: &str, z: &str| ns.iter().any(|x| x.0 == n && x.1 == "True" && x.2 == z);
        if ok("worker-a", "a") && ok("worker-b", "b") {
            Ok(ns)
        } else {
            Err(format!("{ns:?}"))
        }
    });
    eprintln!("lab: nodes {ns:?}");

    // 2. A zone-spread Deployment on real containers, through its ClusterIP from a pod.
    let manifest = lab.dir.path().join("web.yaml");
    std::fs::write(&manifest, WEB).unwrap();
    lab.kubectl_ok(&["apply", "-f", &manifest.display().to_string()]);
    let t = Instant::now();
    let (pa, pb, started_b) = wait_for(
        "web Running on both workers",
        Duration::from_secs(300),
        || web_on_both(&lab, ""),
    );
    eprintln!(
        "lab: web Running on both workers {:?} after apply",
        t.elapsed()
    );
    let cluster_ip = lab.kubectl_ok(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    let t = Instant::now();
    wait_for(
        "the ClusterIP answers from both zones",
        Duration::from_secs(120),
        || clusterip_reaches_both(&lab, &pa, &cluster_ip, &pa, &pb),
    );
    eprintln!(
        "lab: ClusterIP {cluster_ip} answered from both pods after {:?}",
        t.elapsed()
    );
    // The LoadBalancer address: assigned from the pool by the cloud-controller-manager,
    // announced by a worker's speaker on the VIP segment, reached from the host through the
    // lab's router.
    let t = Instant::now();
    let lb_ip = wait_for("a LoadBalancer address", Duration::from_secs(120), || {
        let ip = lab.get(&[
            "get",
            "svc",
            "web-lb",
            "-o",
            "jsonpath={.status.loadBalancer.ingress[0].ip}",
        ])?;
        if ip.starts_with("10.216.100.") {
            Ok(ip)
        } else {
            Err(format!("ingress {ip:?}"))
        }
    });
    wait_for(
        "the LoadBalancer address answers from both zones",
        Duration::from_secs(120),
        || lb_reaches_both(&lb_ip, &pa, &pb),
    );
    eprintln!(
        "lab: LoadBalancer {lb_ip} answered from both pods after {:?}",
        t.elapsed()
    );

    // 3. Power loss of worker-b: the node goes Unknown, the mover's pod is rescheduled on
    // worker-a (acceptance 4); booting worker-b again brings it back.
    let mover = lab.dir.path().join("mover.yaml");
    std::fs::write(&mover, MOVER).unwrap();
    lab.kubectl_ok(&["apply", "-f", &mover.display().to_string()]);
    wait_for(
        "mover Running on worker-b",
        Duration::from_secs(180),
        || {
            let p = mover_pods(&lab)?;
            if p.iter().any(|p| p.1 == "worker-b" && p.2 == "Running") {
                Ok(())
            } else {
                Err(format!("{p:?}"))
            }
        },
    );
    let t = Instant::now();
    lab.ctl_ok(60, &["kill", "worker-b"]);
    let st = lab.ctl(30, &["status"]);
    assert!(
        text(&st).contains("machine worker-b zone b 10.216.2.21 stopped"),
        "{}",
        text(&st)
    );
    // The controller-manager's node-monitor-grace-period is 50 s; bounded with slack for
    // the loaded host.
    wait_for("worker-b Ready=Unknown", Duration::from_secs(120), || {
        let ns = nodes(&lab)?;
        if ns.iter().any(|n| n.0 == "worker-b" && n.1 == "Unknown") {
            Ok(())
        } else {
            Err(format!("{ns:?}"))
        }
    });
    eprintln!("lab: worker-b Unknown {:?} after the kill", t.elapsed());
    let t_unknown = Instant::now();
    wait_for(
        "mover evicted from worker-b and Running on worker-a",
        Duration::from_secs(180),
        || {
            let p = mover_pods(&lab)?;
            let evicted = p.iter().all(|p| p.1 != "worker-b" || !p.3.is_empty());
            let moved = p
                .iter()
                .any(|p| p.1 == "worker-a" && p.2 == "Running" && p.3.is_empty());
            if evicted && moved {
                Ok(())
            } else {
                Err(format!("{p:?}"))
            }
        },
    );
    eprintln!(
        "lab: mover rescheduled on worker-a {:?} after worker-b went Unknown",
        t_unknown.elapsed()
    );
    let t = Instant::now();
    lab.ctl_ok(400, &["start", "worker-b"]);
    eprintln!("lab: worker-b booted again in {:?}", t.elapsed());
    wait_for("worker-b Ready again", Duration::from_secs(180), || {
        let ns = nodes(&lab)?;
        if ns.iter().any(|n| n.0 == "worker-b" && n.1 == "True") {
            Ok(())
        } else {
            Err(format!("{ns:?}"))
        }
    });
    // Measured: the new container on worker-b ran ~3 min after `lab start` at load 10.
    let (pa, pb, _) = wait_for(
        "web's container on worker-b started again after the restart",
        Duration::from_secs(420),
        || web_on_both(&lab, &started_b),
    );
    wait_for(
        "the ClusterIP answers from both zones after the restart",
        Duration::from_secs(120),
        || clusterip_reaches_both(&lab, &pa, &cluster_ip, &pa, &pb),
    );
    wait_for(
        "the LoadBalancer address answers from both zones after the restart",
        Duration::from_secs(120),
        || lb_reaches_both(&lb_ip, &pa, &pb),
    );
    eprintln!(
        "lab: worker-b serving again {:?} after its start",
        t.elapsed()
    );

    // 4. The playbooks' worker path (issue 9): remove-node.yml drains worker-b, deletes its
    // Node and stops and disables its units; web's replacement lands on worker-a (zone b has no
    // node left, so the hard spread allows it). add-node.yml brings the same machine back:
    // Ready with its zone label, and a third web replica must land on it (zone a already has
    // two, so the hard spread allows only zone b).
    let node_units = ["kelson-kubelet", "kelson-proxy", "kelson-speaker"];
    let unit_states = |verb: &str| -> Vec<String> {
        // is-active/is-enabled exit non-zero for a stopped/disabled unit: read stdout regardless.
        let mut args = vec!["exec", "worker-b", "--", "systemctl", verb];
        args.extend(node_units);
        let out = lab.ctl(60, &args);
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    let cidr_before =
        lab.kubectl_ok(&["get", "node", "worker-b", "-o", "jsonpath={.spec.podCIDR}"]);
    let t = Instant::now();
    let out = lab.ctl(
        420,
        &["ansible", "remove-node.yml", "-e", "kelson_node=worker-b"],
    );
    let log = text(&out);
    assert!(out.status.success(), "remove-node.yml failed:\n{log}");
    let r = common::ansible::recap(&log, "worker-b");
    assert!(
        r["changed"] > 0 && r["failed"] == 0 && r["unreachable"] == 0,
        "worker-b: remove-node.yml recap {r:?}:\n{log}"
    );
    eprintln!("lab: remove-node.yml worker-b in {:?}", t.elapsed());
    let ns = nodes(&lab).expect("kubectl get nodes");
    assert!(
        ns.iter().all(|n| n.0 != "worker-b"),
        "worker-b is still a node after remove-node.yml: {ns:?}"
    );
    assert_eq!(
        unit_states("is-active"),
        ["inactive", "inactive", "inactive"],
        "worker-b's node units must be stopped"
    );
    assert_eq!(
        unit_states("is-enabled"),
        ["disabled", "disabled", "disabled"],
        "worker-b's node units must be disabled"
    );
    let t = Instant::now();
    let on_a = wait_for(
        "web's two pods Running on worker-a",
        Duration::from_secs(240),
        || {
            let pods = web_pods(&lab)?;
            let on_a: Vec<String> = pods
                .iter()
                .filter(|p| p.1 == "worker-a" && p.2 == "Running" && !p.3.is_empty())
                .map(|p| p.0.clone())
                .collect();
            if pods.len() == 2 && on_a.len() == 2 {
                Ok(on_a)
            } else {
                Err(format!("{pods:?}"))
            }
        },
    );
    eprintln!(
        "lab: web's pods both on worker-a {:?} after remove-node.yml",
        t.elapsed()
    );
    wait_for(
        "the ClusterIP answers from both pods on worker-a",
        Duration::from_secs(120),
        || clusterip_reaches_both(&lab, &on_a[0], &cluster_ip, &on_a[0], &on_a[1]),
    );

    let t = Instant::now();
    let out = lab.ctl(
        600,
        &["ansible", "add-node.yml", "-e", "kelson_node=worker-b"],
    );
    let log = text(&out);
    assert!(out.status.success(), "add-node.yml failed:\n{log}");
    let r = common::ansible::recap(&log, "worker-b");
    assert!(
        r["changed"] > 0 && r["failed"] == 0 && r["unreachable"] == 0,
        "worker-b: add-node.yml recap {r:?}:\n{log}"
    );
    eprintln!("lab: add-node.yml worker-b in {:?}", t.elapsed());
    // add-node.yml itself waited for Ready; the zone label comes from the rendered kubelet
    // configuration.
    let ns = wait_for(
        "worker-b Ready again with zone b",
        Duration::from_secs(60),
        || {
            let ns = nodes(&lab)?;
            if ns
                .iter()
                .any(|n| n.0 == "worker-b" && n.1 == "True" && n.2 == "b")
            {
                Ok(ns)
            } else {
                Err(format!("{ns:?}"))
            }
        },
    );
    eprintln!("lab: nodes {ns:?}");
    assert_eq!(
        unit_states("is-active"),
        ["active", "active", "active"],
        "worker-b's node units must run again"
    );
    assert_eq!(
        unit_states("is-enabled"),
        ["enabled", "enabled", "enabled"],
        "worker-b's node units must be enabled again"
    );
    // A re-registered Node gets its pod CIDR from node IPAM again; the lab routed the old one
    // at `lab up` (only pod-to-pod traffic across zones depends on it, not what follows).
    let cidr_after = lab.kubectl_ok(&["get", "node", "worker-b", "-o", "jsonpath={.spec.podCIDR}"]);
    eprintln!("lab: worker-b's pod CIDR {cidr_before} before, {cidr_after} after");
    let t = Instant::now();
    lab.kubectl_ok(&["scale", "deployment", "web", "--replicas=3"]);
    let on_b = wait_for(
        "web's third pod Running on worker-b",
        Duration::from_secs(300),
        || {
            let pods = web_pods(&lab)?;
            pods.iter()
                .find(|p| p.1 == "worker-b" && p.2 == "Running" && !p.3.is_empty())
                .map(|p| p.0.clone())
                .ok_or_else(|| format!("{pods:?}"))
        },
    );
    eprintln!(
        "lab: web pod {on_b} Running on the re-added worker-b {:?} after the scale",
        t.elapsed()
    );

    // 5. Down leaves nothing.
    lab.down_and_check(&id);
    eprintln!("lab: all checks done after {:?}", started.elapsed());
}
