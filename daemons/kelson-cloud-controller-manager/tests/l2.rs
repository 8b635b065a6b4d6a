//! LoadBalancer end to end on a real L2 segment (issue 6, acceptance item 3): the address comes
//! from the pool and shows in `kubectl get svc`; a client on the same bridge reaches a server
//! on the announcing node after ARP; when that node's speaker stops, the address moves to the
//! other node, the client's neighbour entry follows the gratuitous ARP, and the connection
//! works again; marking the holder NotReady moves it back. The control-plane VIP rides on the
//! same speakers and fails over the same way.
//!
//! Needs root; `cargo build -p kelson-kv -p kelson-apiserver` first.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::core::v1::Service;
use kelson_testsupport::{ChildGuard, ControlPlane};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

const POOL_FIRST: &str = "10.77.0.100";
const VIP: &str = "10.77.0.50";

fn speaker_config(lab: &Lab) -> String {
    let _ = lab;
    format!("[vip]\naddress = \"{VIP}\"\ninterface = \"eth0\"\n")
}

fn start_speaker(cp: &ControlPlane, lab: &Lab, label: &str) -> ChildGuard {
    start_ccm(
        cp,
        &format!("speaker-{label}"),
        &speaker_config(lab),
        &[
            "--mode",
            "speaker",
            "--node-name",
            &format!("lb-{label}"),
            "--interface",
            "eth0",
            "--netns",
            &lab.host(label).netns,
            "--speaker-lease-duration",
            "3s",
        ],
    )
}

fn announcer(svc: &Service) -> Option<String> {
    svc.metadata
        .annotations
        .as_ref()?
        .get("kelson.io/announcing-node")
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadbalancer_ip_is_announced_and_fails_over() {
    require_root();
    let cp = ControlPlane::start().await.expect("control plane starts");
    let client = cp.client().await.unwrap();
    let lab = Lab::new(&[("n1", 11), ("n2", 12), ("client", 2)]);
    let tmp = tempfile::tempdir().unwrap();
    let _www1 = lab.http_server("n1", "lb-n1", tmp.path());
    let _www2 = lab.http_server("n2", "lb-n2", tmp.path());
    for n in ["lb-n1", "lb-n2"] {
        create_node(&client, n, json!(null)).await;
    }
    let ccm = start_ccm(
        &cp,
        "ccm",
        "[[pools]]\nname = \"lan\"\nranges = [\"10.77.0.100-10.77.0.110\"]\n",
        &["--leader-elect=false", "--speaker-lease-duration", "3s"],
    );
    let mut speakers: Vec<Option<ChildGuard>> = vec![None, None];
    let logs = || -> String {
        format!(
            "--- ccm ---\n{}\n--- speaker n1 ---\n{}\n--- speaker n2 ---\n{}",
            ccm.log_tail(30),
            std::fs::read_to_string(cp.dir().join("speaker-n1.log")).unwrap_or_default(),
            std::fs::read_to_string(cp.dir().join("speaker-n2.log")).unwrap_or_default(),
        )
    };

    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 8080, "targetPort": 8080}]}
    }))
    .unwrap();
    svcs.create(&PostParams::default(), &svc).await.unwrap();

    // Allocated from the pool (its first address), visible to kubectl.
    let first = wait("status.loadBalancer.ingress", 20, logs, || async {
        let s = svcs.get("web").await.ok()?;
        let ip = s.status?.load_balancer?.ingress?.first()?.ip.clone()?;
        Some(ip)
    })
    .await;
    assert_eq!(first, POOL_FIRST);
    let out = cp.kubectl_ok(&["get", "svc", "web"]).unwrap();
    let row = out.lines().find(|l| l.starts_with("web")).unwrap_or("");
    assert!(row.contains(POOL_FIRST), "EXTERNAL-IP missing:\n{out}");

    // Leftovers of a crashed speaker (the address on both nodes) are removed when the
    // speakers start, before the chosen one takes the address.
    for h in ["n1", "n2"] {
        run_ok(&[
            "ip",
            "-n",
            &lab.host(h).netns,
            "addr",
            "add",
            &format!("{POOL_FIRST}/32"),
            "dev",
            "eth0",
        ]);
    }
    speakers[0] = Some(start_speaker(&cp, &lab, "n1"));
    speakers[1] = Some(start_speaker(&cp, &lab, "n2"));

    // The chosen node holds it; the client reaches that node's server and caches its MAC.
    // With both speakers live the choice is the rendezvous hash over both nodes (before the
    // second speaker is seen it may briefly be the first one's).
    let expected = kelson_cloud_controller_manager::election::choose(
        POOL_FIRST.parse().unwrap(),
        ["lb-n1", "lb-n2"],
    )
    .unwrap();
    let holder = expected.strip_prefix("lb-").unwrap().to_string();
    let other = if holder == "n1" { "n2" } else { "n1" };
    wait(
        "the expected node alone to hold the address",
        20,
        logs,
        || async {
            let ann = announcer(&svcs.get("web").await.ok()?)?;
            (ann == format!("{POOL_FIRST}={expected}")
                && lab.has_address(&holder, POOL_FIRST)
                && !lab.has_address(other, POOL_FIRST))
            .then_some(())
        },
    )
    .await;
    let body = wait(
        "the LB address to answer from the client",
        20,
        logs,
        || async { lab.fetch("client", POOL_FIRST) },
    )
    .await;
    assert_eq!(body, format!("lb-{holder}"));
    assert_eq!(
        lab.neighbor_mac("client", POOL_FIRST).as_deref(),
        Some(lab.host(&holder).mac.as_str())
    );
    assert!(
        !lab.has_address(other, POOL_FIRST),
        "only one node may hold the address"
    );

    // Failover 1: the holder's speaker stops. The neighbour entry must switch by the
    // gratuitous ARP alone (checked before the client sends anything), then traffic follows.
    let t0 = Instant::now();
    let idx = if holder == "n1" { 0 } else { 1 };
    speakers[idx]
        .take()
        .unwrap()
        .terminate(Duration::from_secs(10))
        .expect("speaker stops on SIGTERM");
    assert!(
        !lab.has_address(&holder, POOL_FIRST),
        "a stopped speaker releases its address"
    );
    let want_mac = lab.host(other).mac.clone();
    wait(
        "client neighbour entry to follow the GARP",
        10,
        logs,
        || async {
            (lab.neighbor_mac("client", POOL_FIRST).as_deref() == Some(want_mac.as_str()))
                .then_some(())
        },
    )
    .await;
    let body = wait("the LB address to answer again", 10, logs, || async {
        lab.fetch("client", POOL_FIRST)
    })
    .await;
    let failover = t0.elapsed();
    assert_eq!(body, format!("lb-{other}"));
    assert!(
        failover < Duration::from_secs(8),
        "failover took {failover:?}"
    );
    eprintln!("failover after speaker stop: {failover:?}");

    // The old holder's speaker comes back: the choice depends only on the candidate set, so
    // the address returns to it (and the neighbour entry follows again).
    speakers[idx] = Some(start_speaker(&cp, &lab, &holder));
    let want_mac = lab.host(&holder).mac.clone();
    wait(
        "the address to return to the restarted speaker",
        15,
        logs,
        || async {
            (lab.neighbor_mac("client", POOL_FIRST).as_deref() == Some(want_mac.as_str()))
                .then_some(())
        },
    )
    .await;

    // Failover 2: the holder's node goes NotReady (its speaker still runs) and the address
    // moves off it.
    let t1 = Instant::now();
    set_ready(&client, &format!("lb-{holder}"), false).await;
    let want_mac = lab.host(other).mac.clone();
    wait(
        "the address to move off the NotReady node",
        15,
        logs,
        || async {
            (lab.neighbor_mac("client", POOL_FIRST).as_deref() == Some(want_mac.as_str()))
                .then_some(())
        },
    )
    .await;
    let body = wait(
        "the LB address to answer from the Ready node",
        10,
        logs,
        || async { lab.fetch("client", POOL_FIRST) },
    )
    .await;
    assert_eq!(body, format!("lb-{other}"));
    assert!(
        !lab.has_address(&holder, POOL_FIRST),
        "the NotReady node released the address"
    );
    eprintln!("failover after NotReady: {:?}", t1.elapsed());

    // The control-plane VIP is held by exactly one speaker and moves when it stops.
    let vip_holder = wait("a VIP holder", 20, logs, || async {
        let a = lab.has_address("n1", VIP);
        let b = lab.has_address("n2", VIP);
        match (a, b) {
            (true, false) => Some("n1"),
            (false, true) => Some("n2"),
            _ => None,
        }
    })
    .await;
    let body = wait("the VIP to answer", 10, logs, || async {
        lab.fetch("client", VIP)
    })
    .await;
    assert_eq!(body, format!("lb-{vip_holder}"));
    let vip_other = if vip_holder == "n1" { "n2" } else { "n1" };
    let vidx = if vip_holder == "n1" { 0 } else { 1 };
    // A clean stop hands the VIP over without a gap: the stopping holder keeps the address
    // until the successor holds the Lease, so a client fetching throughout never fails.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU32::new(0));
    let prober = {
        let (stop, answered) = (stop.clone(), answered.clone());
        let netns = lab.host("client").netns.clone();
        std::thread::spawn(move || {
            let (mut ok, mut failed, mut slowest) = (Vec::new(), 0u32, 0f64);
            for _ in 0..400 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let out = std::process::Command::new("ip")
                    .args(["netns", "exec", &netns, "curl", "-s", "--noproxy", "*"])
                    .args(["-w", "\n%{time_connect}", "-m", "3"])
                    .arg(format!("http://{VIP}:8080/"))
                    .output()
                    .expect("running curl");
                let text = String::from_utf8_lossy(&out.stdout).to_string();
                let (body, connect) = text.rsplit_once('\n').unwrap_or((&text, "0"));
                if out.status.success() {
                    ok.push(body.trim().to_string());
                    answered.fetch_add(1, Ordering::Relaxed);
                    slowest = slowest.max(connect.trim().parse::<f64>().unwrap_or(0.0));
                } else {
                    failed += 1;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (ok, failed, slowest)
        })
    };
    // Stop the holder only once the prober has been answered (by it).
    let t0 = Instant::now();
    while answered.load(Ordering::Relaxed) == 0 && t0.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        answered.load(Ordering::Relaxed) > 0,
        "the prober got no answer before the handover"
    );
    speakers[vidx]
        .take()
        .unwrap()
        .terminate(Duration::from_secs(10))
        .expect("speaker stops");
    let body = wait("the VIP to move", 15, logs, || async {
        lab.fetch("client", VIP)
            .filter(|b| *b == format!("lb-{vip_other}"))
    })
    .await;
    assert_eq!(body, format!("lb-{vip_other}"));
    stop.store(true, Ordering::Relaxed);
    let (answers, failed, slowest) = prober.join().expect("prober thread");
    assert_eq!(
        failed,
        0,
        "fetches through the VIP failed during a clean handover ({} answered)",
        answers.len()
    );
    // A gap (nobody holding the address) shows as a SYN retransmission: connect >= 1 s.
    assert!(
        slowest < 0.9,
        "a fetch needed {slowest:.2} s to connect during the handover: the VIP was unheld"
    );

    // Deleting the Service frees the address everywhere and the finalizer lets it go.
    svcs.delete("web", &DeleteParams::default()).await.unwrap();
    wait("the Service to be gone", 15, logs, || async {
        matches!(svcs.get_opt("web").await, Ok(None)).then_some(())
    })
    .await;
    wait("the address to be released", 10, logs, || async {
        (!lab.has_address("n1", POOL_FIRST) && !lab.has_address("n2", POOL_FIRST)).then_some(())
    })
    .await;
    drop(speakers);
}
