//! High availability: several kelson-apiserver processes over one kelson-kv store behave as
//! one API server. Each test starts a control plane (store + server "A") and one or two more
//! servers over the same store ([`ControlPlane::start_peer_apiserver`]), then checks, with the
//! real kubectl and the Rust client:
//! - a watch on one server sees creates, updates and deletes made through another within 1 s;
//! - SIGKILLing and restarting one server leaves clients of another undisturbed (zero failed
//!   requests, their watch stays open);
//! - concurrent Service creates across servers never hand out one ClusterIP or NodePort twice,
//!   and deletes release them (a second round fits a range the first one nearly filled);
//! - a CRD created through one server is served by the other within a couple of seconds, and
//!   stops being served there when it is deleted through the other;
//! - Lease updates are compare-and-swap across servers (leader election's foundation), and a
//!   ServiceAccount token issued by one server is accepted by the other.
//!
//! Needs `cargo build -p kelson-kv -p kelson-apiserver`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kelson_testsupport::{ControlPlane, ControlPlaneOpts};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::ResourceExt;
use serde_json::json;

/// How long a write through one server may take to show up in a watch on another.
const WATCH_DEADLINE: Duration = Duration::from_secs(1);

async fn namespace(cp: &ControlPlane, name: &str) -> anyhow::Result<()> {
    cp.kubectl_ok(&["create", "namespace", name])?;
    Ok(())
}

/// Waits (bounded by [`WATCH_DEADLINE`]) for the next event on `stream` and checks it is
/// `want` ("ADDED"/"MODIFIED"/"DELETED") for `name`; returns the object and the delay.
async fn next_event<S>(
    stream: &mut S,
    want: &str,
    name: &str,
    since: Instant,
) -> anyhow::Result<(ConfigMap, Duration)>
where
    S: futures::Stream<Item = kube::Result<WatchEvent<ConfigMap>>> + Unpin,
{
    loop {
        let left = WATCH_DEADLINE
            .checked_sub(since.elapsed())
            .with_context(|| format!("no {want} event for {name} within {WATCH_DEADLINE:?}"))?;
        let ev = tokio::time::timeout(left, stream.next())
            .await
            .with_context(|| format!("no {want} event for {name} within {WATCH_DEADLINE:?}"))?
            .context("the watch ended")??;
        let (kind, obj) = match ev {
            WatchEvent::Added(o) => ("ADDED", o),
            WatchEvent::Modified(o) => ("MODIFIED", o),
            WatchEvent::Deleted(o) => ("DELETED", o),
            WatchEvent::Bookmark(_) => continue,
            WatchEvent::Error(e) => bail!("watch error event: {e:?}"),
        };
        ensure!(
            kind == want && obj.name_any() == name,
            "expected {want} {name}, got {kind} {}",
            obj.name_any()
        );
        return Ok((obj, since.elapsed()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_on_one_server_sees_writes_through_another() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let b = cp.start_peer_apiserver("b", &[]).await?;
    namespace(&cp, "ha-watch").await?;
    let on_a: Api<ConfigMap> = Api::namespaced(cp.client().await?, "ha-watch");
    let on_b: Api<ConfigMap> = Api::namespaced(b.client().await?, "ha-watch");

    let rv = on_a
        .list(&ListParams::default())
        .await?
        .metadata
        .resource_version
        .context("list resourceVersion")?;
    let mut events = on_a
        .watch(&WatchParams::default().timeout(120), &rv)
        .await?
        .boxed();

    // Create with kubectl through B.
    b.kubectl_ok(&[
        "-n",
        "ha-watch",
        "create",
        "configmap",
        "cm1",
        "--from-literal=k=v1",
    ])?;
    let (cm, added) = next_event(&mut events, "ADDED", "cm1", Instant::now()).await?;
    ensure!(cm.data.unwrap_or_default().get("k").map(String::as_str) == Some("v1"));

    // Update with the Rust client through B.
    let t = Instant::now();
    let patched = on_b
        .patch(
            "cm1",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"k": "v2"}})),
        )
        .await?;
    let (cm, modified) = next_event(&mut events, "MODIFIED", "cm1", t).await?;
    ensure!(
        cm.data
            .as_ref()
            .and_then(|d| d.get("k"))
            .map(String::as_str)
            == Some("v2")
    );
    ensure!(
        cm.resource_version() == patched.resource_version(),
        "the watch on A and the write through B disagree on resourceVersion: {:?} vs {:?}",
        cm.resource_version(),
        patched.resource_version()
    );

    // Relabel with kubectl through B, then delete with the Rust client through B.
    b.kubectl_ok(&["-n", "ha-watch", "label", "configmap", "cm1", "tier=web"])?;
    let (cm, _) = next_event(&mut events, "MODIFIED", "cm1", Instant::now()).await?;
    ensure!(cm.labels().get("tier").map(String::as_str) == Some("web"));
    let t = Instant::now();
    on_b.delete("cm1", &DeleteParams::default()).await?;
    let (gone, deleted) = next_event(&mut events, "DELETED", "cm1", t).await?;
    drop(events);

    // resourceVersions are the store's, not a server's: a client that loses A resumes its
    // watch on B from the last version A sent, and gets what happened in between (cm-gap,
    // written through A while no watch was open) without a gap or a relist.
    let last = gone
        .resource_version()
        .context("deleted object's resourceVersion")?;
    let cm = |name: &str| -> ConfigMap {
        serde_json::from_value(json!({"metadata": {"name": name}, "data": {"k": "v"}})).unwrap()
    };
    on_a.create(&PostParams::default(), &cm("cm-gap")).await?;
    let mut resumed = on_b
        .watch(&WatchParams::default().timeout(60), &last)
        .await?
        .boxed();
    next_event(&mut resumed, "ADDED", "cm-gap", Instant::now()).await?;
    drop(resumed);

    // A paginated list started on A continues on B with A's continue token.
    for i in 0..4 {
        on_a.create(&PostParams::default(), &cm(&format!("page-{i}")))
            .await?;
    }
    let first = on_a.list(&ListParams::default().limit(2)).await?;
    let token = first
        .metadata
        .continue_
        .clone()
        .context("no continue token")?;
    let mut names: Vec<String> = first.items.iter().map(|c| c.name_any()).collect();
    let rest = on_b
        .list(&ListParams::default().limit(100).continue_token(&token))
        .await?;
    names.extend(rest.items.iter().map(|c| c.name_any()));
    ensure!(
        names == ["cm-gap", "page-0", "page-1", "page-2", "page-3"],
        "a list paginated across servers saw {names:?}"
    );

    // And the other way round, with kubectl's own watch on B.
    let mut watch = std::process::Command::new(kelson_testsupport::KUBECTL)
        .env("KUBECONFIG", b.kubeconfig_path())
        .env("HOME", cp.dir())
        .args(["-n", "ha-watch", "get", "configmaps", "-w", "-o", "name"])
        .args(["--request-timeout", "30s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let stdout = watch.stdout.take().context("kubectl stdout")?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // kubectl lists before it watches; give it a moment, then write through A.
    tokio::time::sleep(Duration::from_millis(500)).await;
    on_a.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
        "metadata": {"name": "cm2"}, "data": {"k": "v"}}))?,
    )
    .await?;
    let t = Instant::now();
    let seen = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(line) = rx.recv().await {
            if line.trim() == "configmap/cm2" {
                return true;
            }
        }
        false
    })
    .await;
    let _ = watch.kill();
    let _ = watch.wait();
    ensure!(
        seen == Ok(true),
        "kubectl get -w on B did not show configmap/cm2 created through A ({:?} after the write)",
        t.elapsed()
    );
    println!("watch on A after writes through B: added {added:?}, modified {modified:?}, deleted {deleted:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_server_leaves_clients_of_another_undisturbed() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let mut a = cp.start_peer_apiserver("a", &[]).await?;
    let b = cp.start_peer_apiserver("b", &[]).await?;
    namespace(&cp, "ha-kill").await?;
    let on_b: Api<ConfigMap> = Api::namespaced(b.client().await?, "ha-kill");

    // A watch on B that must stay open throughout.
    let rv = on_b
        .list(&ListParams::default())
        .await?
        .metadata
        .resource_version
        .context("list resourceVersion")?;
    let mut events = on_b
        .watch(&WatchParams::default().timeout(120), &rv)
        .await?
        .boxed();
    let watched = Arc::new(AtomicU64::new(0));
    let watch_task = {
        let watched = watched.clone();
        tokio::spawn(async move {
            let res: Result<(), String> = async {
                while let Some(ev) = events.next().await {
                    match ev {
                        Ok(WatchEvent::Added(_)) => {
                            watched.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(WatchEvent::Error(e)) => {
                            return Err(format!("watch error event: {e:?}"))
                        }
                        Ok(_) => {}
                        Err(e) => return Err(format!("watch failed: {e}")),
                    }
                }
                Err("the watch on B ended".to_string())
            }
            .await;
            res
        })
    };

    // A request loop on B: create, get, list, delete; every failure is recorded.
    let stop = Arc::new(AtomicBool::new(false));
    let loop_task = {
        let (stop, api) = (stop.clone(), on_b.clone());
        tokio::spawn(async move {
            let (mut ok, mut failures) = (0u64, Vec::new());
            let mut i = 0u64;
            // Bounded: at most 10 000 rounds even if `stop` never comes.
            while !stop.load(Ordering::Relaxed) && i < 10_000 {
                i += 1;
                let name = format!("loop-{i}");
                let cm: ConfigMap =
                    serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
                let r = async {
                    api.create(&PostParams::default(), &cm).await?;
                    api.get(&name).await?;
                    api.list(&ListParams::default().limit(5)).await?;
                    api.delete(&name, &DeleteParams::default()).await?;
                    Ok::<_, kube::Error>(())
                }
                .await;
                match r {
                    Ok(()) => ok += 1,
                    Err(e) => failures.push(format!("round {i}: {e}")),
                }
            }
            (ok, failures)
        })
    };

    tokio::time::sleep(Duration::from_secs(1)).await;
    a.kill9();
    ensure!(!a.is_running(), "A survived SIGKILL");
    ensure!(
        !a.kubectl(&["get", "--raw", "/readyz"]).status.success(),
        "A still answers after SIGKILL"
    );
    // kubectl through B while A is down.
    b.kubectl_ok(&["-n", "ha-kill", "get", "configmaps"])?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    a.restart().await?;
    // The restarted A serves what was written through B meanwhile.
    b.kubectl_ok(&["-n", "ha-kill", "create", "configmap", "after-restart"])?;
    a.kubectl_ok(&["-n", "ha-kill", "get", "configmap", "after-restart"])?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, failures) = tokio::time::timeout(Duration::from_secs(30), loop_task)
        .await
        .context("the request loop did not stop")??;
    ensure!(
        failures.is_empty(),
        "{} of {} rounds on B failed while A was killed and restarted: {:?}",
        failures.len(),
        ok + failures.len() as u64,
        &failures[..failures.len().min(5)]
    );
    ensure!(ok >= 5, "only {ok} request rounds ran on B");
    ensure!(
        !watch_task.is_finished(),
        "the watch on B ended: {:?}",
        watch_task.await
    );
    // Every create of the loop reaches the watch (the last ones may still be in flight).
    within(
        Duration::from_secs(3),
        "the watch on B sees every create",
        || watched.load(Ordering::Relaxed) >= ok,
    )
    .await
    .with_context(|| {
        format!(
            "the watch on B saw {} creates of {ok}",
            watched.load(Ordering::Relaxed)
        )
    })?;
    watch_task.abort();
    println!("request rounds on B while A was killed and restarted: {ok}, failures: 0");
    Ok(())
}

/// A NodePort service `name`.
fn nodeport_service(name: &str) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"type": "NodePort", "selector": {"app": name},
                 "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]}
    }))
    .unwrap()
}

/// Creates `names` through `api`, 16 at a time; returns (clusterIP, nodePort) per service.
async fn create_services(
    api: &Api<Service>,
    names: Vec<String>,
) -> anyhow::Result<Vec<(String, String, i32)>> {
    futures::stream::iter(names)
        .map(|n| async move {
            let svc = api
                .create(&PostParams::default(), &nodeport_service(&n))
                .await
                .with_context(|| format!("creating service {n}"))?;
            let spec = svc.spec.context("spec")?;
            let ip = spec.cluster_ip.context("clusterIP")?;
            let port = spec.ports.unwrap_or_default()[0]
                .node_port
                .context("nodePort")?;
            Ok::<_, anyhow::Error>((n, ip, port))
        })
        .buffer_unordered(16)
        .try_collect()
        .await
}

/// Every service gets its own IP and port; returns the IPs and ports.
fn assert_unique(all: &[(String, String, i32)]) -> anyhow::Result<(HashSet<String>, HashSet<i32>)> {
    let ips: HashSet<String> = all.iter().map(|(_, ip, _)| ip.clone()).collect();
    let ports: HashSet<i32> = all.iter().map(|(_, _, p)| *p).collect();
    ensure!(
        ips.len() == all.len(),
        "{} services share {} ClusterIPs: {all:?}",
        all.len(),
        ips.len()
    );
    ensure!(
        ports.len() == all.len(),
        "{} services share {} NodePorts: {all:?}",
        all.len(),
        ports.len()
    );
    Ok((ips, ports))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_service_creates_across_servers_never_share_an_ip_or_port() -> anyhow::Result<()>
{
    // Small ranges, so random picks collide often and only the store's create-if-absent keeps
    // two servers apart: 125 usable IPs and 120 ports for 100 services.
    let args = [
        "--service-cluster-ip-range",
        "10.0.0.0/25",
        "--service-node-port-range",
        "30000-30119",
    ];
    let cp = ControlPlane::start_with(ControlPlaneOpts {
        apiserver_args: args.iter().map(|s| s.to_string()).collect(),
    })
    .await?;
    let b = cp.start_peer_apiserver("b", &args).await?;
    namespace(&cp, "ha-svc").await?;
    let on_a: Api<Service> = Api::namespaced(cp.client().await?, "ha-svc");
    let on_b: Api<Service> = Api::namespaced(b.client().await?, "ha-svc");

    for round in 0..2 {
        let names = |srv: &str| {
            (0..50)
                .map(|i| format!("r{round}-{srv}-{i}"))
                .collect::<Vec<_>>()
        };
        let t = Instant::now();
        let (ra, rb) = tokio::join!(
            create_services(&on_a, names("a")),
            create_services(&on_b, names("b"))
        );
        let mut all = ra?;
        all.extend(rb?);
        let took = t.elapsed();
        let (ips, ports) = assert_unique(&all)?;
        // What the store holds, read through the other server, agrees with the responses.
        let listed = on_b.list(&ListParams::default()).await?;
        let stored: HashSet<String> = listed
            .items
            .iter()
            .filter_map(|s| s.spec.as_ref()?.cluster_ip.clone())
            .collect();
        ensure!(
            stored == ips,
            "listed ClusterIPs differ from the created ones"
        );
        for ip in &ips {
            let addr: std::net::Ipv4Addr = ip.parse()?;
            let n = u32::from(addr) - u32::from(std::net::Ipv4Addr::new(10, 0, 0, 0));
            ensure!(
                (2..127).contains(&n),
                "ClusterIP {ip} outside the usable range"
            );
        }
        ensure!(ports.iter().all(|p| (30000..=30119).contains(p)));
        println!("round {round}: 2x50 concurrent NodePort services in {took:?}, all IPs and ports distinct");

        // Delete them all, alternating servers: releases must free the values for round 2,
        // which could not fit 100 more services into 125 IPs / 120 ports otherwise.
        futures::stream::iter(all.iter().enumerate())
            .map(|(i, (n, _, _))| {
                let api = if i % 2 == 0 { &on_a } else { &on_b };
                async move { api.delete(n, &DeleteParams::default()).await.map(|_| ()) }
            })
            .buffer_unordered(16)
            .try_collect::<Vec<()>>()
            .await?;
    }

    // Both servers asking for the same explicit IP at once: exactly one gets it.
    for i in 0..5 {
        let ip = format!("10.0.0.{}", 100 + i);
        let svc = |srv: &str| -> Service {
            serde_json::from_value(json!({
                "metadata": {"name": format!("fixed-{i}-{srv}")},
                "spec": {"clusterIP": ip, "ports": [{"port": 80}]}
            }))
            .unwrap()
        };
        let (sa, sb, pp) = (svc("a"), svc("b"), PostParams::default());
        let (ra, rb) = tokio::join!(on_a.create(&pp, &sa), on_b.create(&pp, &sb));
        let wins = [&ra, &rb].iter().filter(|r| r.is_ok()).count();
        ensure!(wins == 1, "{wins} servers handed out {ip}: {ra:?} / {rb:?}");
        let loser = if ra.is_ok() { rb } else { ra };
        match loser {
            Err(kube::Error::Api(s)) if s.code == 422 => {}
            other => bail!("the losing create of {ip} should be 422 Invalid, got {other:?}"),
        }
    }
    Ok(())
}

const CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.ha.example.com
spec:
  group: ha.example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wdg]}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer, minimum: 1}
"#;

/// Polls `f` every 100 ms until it returns true, for at most `limit`; returns the time taken.
async fn within(
    limit: Duration,
    what: &str,
    mut f: impl FnMut() -> bool,
) -> anyhow::Result<Duration> {
    let t = Instant::now();
    loop {
        if f() {
            return Ok(t.elapsed());
        }
        if t.elapsed() > limit {
            bail!("{what}: not within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crds_created_through_one_server_are_served_by_the_other() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let b = cp.start_peer_apiserver("b", &[]).await?;
    namespace(&cp, "ha-crd").await?;
    let crd_file = cp.dir().join("crd.yaml");
    std::fs::write(&crd_file, CRD)?;
    let cr_file = cp.dir().join("cr.yaml");
    std::fs::write(
        &cr_file,
        "apiVersion: ha.example.com/v1\nkind: Widget\nmetadata: {name: w1, namespace: ha-crd}\nspec: {size: 3}\n",
    )?;
    let bad_file = cp.dir().join("bad.yaml");
    std::fs::write(
        &bad_file,
        "apiVersion: ha.example.com/v1\nkind: Widget\nmetadata: {name: bad, namespace: ha-crd}\nspec: {size: 0}\n",
    )?;

    cp.kubectl_ok(&["apply", "-f", &crd_file.display().to_string()])?;
    let served = within(Duration::from_secs(3), "B serves widgets", || {
        b.kubectl(&["-n", "ha-crd", "get", "wdg"]).status.success()
    })
    .await?;
    // Established is visible through B too, and B validates against the schema.
    b.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=10s",
        "crd/widgets.ha.example.com",
    ])?;
    b.kubectl_ok(&["create", "-f", &cr_file.display().to_string()])?;
    let out = b.kubectl(&["create", "-f", &bad_file.display().to_string()]);
    ensure!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("Invalid"),
        "B accepted a Widget that violates the schema: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = cp.kubectl_ok(&[
        "-n",
        "ha-crd",
        "get",
        "widget",
        "w1",
        "-o",
        "jsonpath={.spec.size}",
    ])?;
    ensure!(got == "3", "A reads w1's size as {got:?}");
    let resources = b.kubectl_ok(&["api-resources", "--api-group=ha.example.com", "-o", "name"])?;
    ensure!(
        resources.contains("widgets.ha.example.com"),
        "B's discovery: {resources}"
    );

    // Deleted through B: A stops serving it (instances go with it).
    b.kubectl_ok(&["delete", "crd", "widgets.ha.example.com", "--timeout=20s"])?;
    let gone = within(Duration::from_secs(5), "A stops serving widgets", || {
        !cp.kubectl(&["-n", "ha-crd", "get", "widgets.ha.example.com"])
            .status
            .success()
    })
    .await?;
    println!("CRD created through A served by B after {served:?}; deleted through B, gone on A after {gone:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_are_compare_and_swap_across_servers_and_tokens_work_everywhere(
) -> anyhow::Result<()> {
    // Every server signs and verifies ServiceAccount tokens with the same key, as a real HA
    // deployment configures them.
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("sa.key");
    std::fs::write(&key, rcgen::KeyPair::generate()?.serialize_pem())?;
    let args = [
        "--service-account-signing-key-file",
        key.to_str().context("key path")?,
    ];
    let cp = ControlPlane::start_with(ControlPlaneOpts {
        apiserver_args: args.iter().map(|s| s.to_string()).collect(),
    })
    .await?;
    let b = cp.start_peer_apiserver("b", &args).await?;
    namespace(&cp, "ha-lease").await?;
    let on_a: Api<Lease> = Api::namespaced(cp.client().await?, "ha-lease");
    let on_b: Api<Lease> = Api::namespaced(b.client().await?, "ha-lease");
    let lease = |holder: &str, rv: Option<String>| -> Lease {
        let mut l: Lease = serde_json::from_value(json!({
            "metadata": {"name": "leader"},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15}
        }))
        .unwrap();
        l.metadata.resource_version = rv;
        l
    };
    on_a.create(&PostParams::default(), &lease("nobody", None))
        .await?;

    // Both candidates read the same version and race to take it: exactly one wins each round,
    // the other gets 409 Conflict, and both servers then agree on the holder.
    for round in 0..10 {
        let (la, lb) = tokio::join!(on_a.get("leader"), on_b.get("leader"));
        let (la, lb) = (la?, lb?);
        ensure!(
            la.resource_version() == lb.resource_version(),
            "round {round}: A and B read different versions"
        );
        let pp = PostParams::default();
        let (wa, wb) = (
            lease(&format!("a-{round}"), la.resource_version()),
            lease(&format!("b-{round}"), lb.resource_version()),
        );
        let (ra, rb) = tokio::join!(
            on_a.replace("leader", &pp, &wa),
            on_b.replace("leader", &pp, &wb)
        );
        let winner = match (&ra, &rb) {
            (Ok(_), Err(kube::Error::Api(s))) if s.code == 409 => format!("a-{round}"),
            (Err(kube::Error::Api(s)), Ok(_)) if s.code == 409 => format!("b-{round}"),
            _ => bail!("round {round}: want exactly one winner and a 409, got {ra:?} / {rb:?}"),
        };
        for api in [&on_a, &on_b] {
            let holder = api
                .get("leader")
                .await?
                .spec
                .and_then(|s| s.holder_identity);
            ensure!(
                holder.as_deref() == Some(winner.as_str()),
                "round {round}: holder {holder:?}, winner {winner}"
            );
        }
    }

    // Authorization state is the store's: RBAC granted through A applies on B at once-ish,
    // and so does taking it away.
    let alice_on_a = cp.kubeconfig_for("alice", None)?;
    let alice = cp.dir().join("alice-on-b.kubeconfig");
    std::fs::write(
        &alice,
        std::fs::read_to_string(&alice_on_a)?.replace(&cp.server_url(), &b.server_url()),
    )?;
    let alice_lists = || {
        std::process::Command::new(kelson_testsupport::KUBECTL)
            .env("KUBECONFIG", &alice)
            .env("HOME", cp.dir())
            .args([
                "-n",
                "ha-lease",
                "get",
                "leases",
                "--request-timeout",
                "20s",
            ])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    ensure!(
        !alice_lists(),
        "alice lists leases through B before any grant"
    );
    cp.kubectl_ok(&[
        "-n",
        "ha-lease",
        "create",
        "role",
        "lease-reader",
        "--verb=get,list",
        "--resource=leases",
    ])?;
    cp.kubectl_ok(&[
        "-n",
        "ha-lease",
        "create",
        "rolebinding",
        "alice-reads",
        "--role=lease-reader",
        "--user=alice",
    ])?;
    let granted = within(
        Duration::from_secs(3),
        "B honours a RoleBinding made through A",
        alice_lists,
    )
    .await?;
    cp.kubectl_ok(&["-n", "ha-lease", "delete", "rolebinding", "alice-reads"])?;
    let revoked = within(
        Duration::from_secs(3),
        "B forgets a RoleBinding deleted through A",
        || !alice_lists(),
    )
    .await?;
    println!("RBAC through A effective on B after {granted:?}, revoked after {revoked:?}");

    // A token issued through A authenticates through B (and the reverse).
    cp.kubectl_ok(&["-n", "ha-lease", "create", "serviceaccount", "bot"])?;
    for (issuer, verifier) in [
        (cp.server_url(), b.server_url()),
        (b.server_url(), cp.server_url()),
    ] {
        let issue_cfg = if issuer == cp.server_url() {
            cp.kubeconfig_path().to_path_buf()
        } else {
            b.kubeconfig_path().to_path_buf()
        };
        let out = std::process::Command::new(kelson_testsupport::KUBECTL)
            .env("KUBECONFIG", &issue_cfg)
            .env("HOME", cp.dir())
            .args([
                "-n",
                "ha-lease",
                "create",
                "token",
                "bot",
                "--request-timeout",
                "20s",
            ])
            .output()?;
        ensure!(
            out.status.success(),
            "create token via {issuer}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = String::from_utf8(out.stdout)?.trim().to_string();
        let who = std::process::Command::new(kelson_testsupport::KUBECTL)
            .env("HOME", cp.dir())
            .env("KUBECONFIG", "/dev/null")
            .args(["--server", &verifier, "--token", &token])
            .arg(format!(
                "--certificate-authority={}",
                cp.dir().join("pki/ca.crt").display()
            ))
            .args([
                "auth",
                "whoami",
                "-o",
                "jsonpath={.status.userInfo.username}",
                "--request-timeout",
                "20s",
            ])
            .output()?;
        let user = String::from_utf8_lossy(&who.stdout);
        ensure!(
            who.status.success() && user == "system:serviceaccount:ha-lease:bot",
            "a token from {issuer} used at {verifier}: {user} {}",
            String::from_utf8_lossy(&who.stderr)
        );
    }
    Ok(())
}

/// Allocation markers in the store (`/registry/kelson/{serviceips,nodeports}/<value>`).
async fn markers(cp: &ControlPlane) -> anyhow::Result<(HashSet<String>, HashSet<i32>)> {
    let kv = cp.store().client().await?;
    let get = |prefix: &'static str| {
        // etcd_client::Client is a cheap handle; each lookup gets its own.
        let mut kv = kv.clone();
        async move {
            let resp = kv
                .get(
                    prefix,
                    Some(
                        etcd_client::GetOptions::new()
                            .with_prefix()
                            .with_keys_only(),
                    ),
                )
                .await?;
            Ok::<_, anyhow::Error>(
                resp.kvs()
                    .iter()
                    .filter_map(|k| k.key_str().ok()?.strip_prefix(prefix).map(String::from))
                    .collect::<Vec<String>>(),
            )
        }
    };
    let ips = get("/registry/kelson/serviceips/")
        .await?
        .into_iter()
        .collect();
    let ports = get("/registry/kelson/nodeports/")
        .await?
        .into_iter()
        .filter_map(|p| p.parse().ok())
        .collect();
    Ok((ips, ports))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_create_leaks_no_allocations() -> anyhow::Result<()> {
    let args = [
        "--service-cluster-ip-range",
        "10.0.0.0/25",
        "--service-node-port-range",
        "30000-30119",
        "--service-allocation-repair-interval",
        "1s",
    ];
    let cp = ControlPlane::start_with(ControlPlaneOpts {
        apiserver_args: args.iter().map(|s| s.to_string()).collect(),
    })
    .await?;
    let mut a = cp.start_peer_apiserver("a", &args).await?;
    namespace(&cp, "ha-leak").await?;
    let on_a: Api<Service> = Api::namespaced(a.client().await?, "ha-leak");
    let on_cp: Api<Service> = Api::namespaced(cp.client().await?, "ha-leak");

    // Many creates in flight on A when it is SIGKILLed: some have claimed an IP or port in the
    // store but not yet written their Service.
    let done = Arc::new(AtomicU64::new(0));
    let creates = {
        let done = done.clone();
        tokio::spawn(async move {
            futures::stream::iter(0..60)
                .map(|i| {
                    let (api, done) = (on_a.clone(), done.clone());
                    async move {
                        let r = api
                            .create(&PostParams::default(), &nodeport_service(&format!("s{i}")))
                            .await;
                        done.fetch_add(1, Ordering::Relaxed);
                        r.is_ok()
                    }
                })
                .buffer_unordered(16)
                .collect::<Vec<bool>>()
                .await
        })
    };
    let t = Instant::now();
    while done.load(Ordering::Relaxed) < 10 && t.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    a.kill9();
    let results = tokio::time::timeout(Duration::from_secs(60), creates)
        .await
        .context("the creates did not end")??;
    let ok = results.iter().filter(|r| **r).count();
    ensure!(ok >= 10, "only {ok} creates succeeded before the kill");

    // Whatever the kill left behind, the surviving server's repair makes the markers match
    // the stored Services again (a leak is released after it has been seen a few times).
    let in_use = || async {
        let svcs = on_cp.list(&ListParams::default()).await?;
        let mut ips: HashSet<String> = svcs
            .items
            .iter()
            .filter_map(|s| s.spec.as_ref()?.cluster_ip.clone())
            .collect();
        ips.insert("10.0.0.1".into()); // the kubernetes service
        let ports: HashSet<i32> = svcs
            .items
            .iter()
            .flat_map(|s| s.spec.clone().and_then(|s| s.ports).unwrap_or_default())
            .filter_map(|p| p.node_port)
            .collect();
        Ok::<_, anyhow::Error>((ips, ports))
    };
    let (ips0, ports0) = markers(&cp).await?;
    let (used_ips, used_ports) = in_use().await?;
    println!(
        "after the kill: {} services, {} leaked IPs, {} leaked ports",
        used_ports.len(),
        ips0.difference(&used_ips).count(),
        ports0.difference(&used_ports).count()
    );
    let t = Instant::now();
    loop {
        let (ips, ports) = markers(&cp).await?;
        let (used_ips, used_ports) = in_use().await?;
        if ips == used_ips && ports == used_ports {
            break;
        }
        if t.elapsed() > Duration::from_secs(15) {
            bail!(
                "allocations still differ from the services after {:?}: leaked IPs {:?}, ports {:?}; unrecorded IPs {:?}, ports {:?}",
                t.elapsed(),
                ips.difference(&used_ips).collect::<Vec<_>>(),
                ports.difference(&used_ports).collect::<Vec<_>>(),
                used_ips.difference(&ips).collect::<Vec<_>>(),
                used_ports.difference(&ports).collect::<Vec<_>>(),
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!("allocations repaired after {:?}", t.elapsed());

    // A Service whose marker is gone (a store restored from an older backup, a hand edit)
    // gets it back, so its IP cannot be handed out twice.
    let (used_ips, _) = in_use().await?;
    let victim = used_ips
        .iter()
        .find(|ip| *ip != "10.0.0.1")
        .context("no service IP to test with")?
        .clone();
    let mut kv = cp.store().client().await?;
    let key = format!("/registry/kelson/serviceips/{victim}");
    ensure!(
        kv.delete(key.as_str(), None).await?.deleted() == 1,
        "no marker at {key}"
    );
    let t = Instant::now();
    loop {
        if markers(&cp).await?.0.contains(&victim) {
            break;
        }
        ensure!(
            t.elapsed() < Duration::from_secs(10),
            "the marker of {victim} was not recorded again"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}
