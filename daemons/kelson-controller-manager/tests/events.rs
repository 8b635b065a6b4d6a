//! The event recorder against a real API server (kelson-kv + kelson-apiserver): event writes
//! that fail while the API server is unreachable are retried and land once it is back, and
//! writes the API server refuses for good (a namespace being terminated) are not retried.
//!
//! The recorder runs in the test process (the same `Recorder` the controller manager runs),
//! so the test can make an event at a chosen moment and read its counters. Its client reaches
//! the API server through [`Gate`], a TCP relay the test closes and opens: from the client's
//! side exactly an API server that went away (connections cut, new ones refused) and came
//! back, without restarting the server or its store. The retry pause is shortened to 1 s
//! (production: client-go's 10 s, checked by the unit tests in events.rs) to keep the test
//! fast; the retry logic is the same.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, Namespace, ObjectReference};
use kelson_controller_manager::events::{EventType, KubeSink, Recorder, RetryPolicy, Stats};
use kelson_testsupport::ControlPlane;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::Client;
use parking_lot::Mutex;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

/// A TCP relay to the API server that can be closed (relayed connections cut, new ones
/// dropped on accept) and opened again.
struct Gate {
    port: u16,
    open: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
    task: JoinHandle<()>,
}

impl Gate {
    async fn start(upstream: u16) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind gate");
        let port = listener.local_addr().expect("gate address").port();
        let open = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (o, c) = (open.clone(), conns.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                // Checked and registered under the lock, so `close` cannot miss a connection.
                let mut g = c.lock();
                if !o.load(Ordering::SeqCst) {
                    continue; // dropped: the client sees its connection closed
                }
                let relay = tokio::spawn(async move {
                    if let Ok(mut out) = TcpStream::connect(("127.0.0.1", upstream)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                g.push(relay.abort_handle());
            }
        });
        Gate {
            port,
            open,
            conns,
            task,
        }
    }

    fn close(&self) {
        let mut g = self.conns.lock();
        self.open.store(false, Ordering::SeqCst);
        for h in g.drain(..) {
            h.abort();
        }
    }

    fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.task.abort();
        self.close();
    }
}

/// A client of `cp` whose connections go through `gate` (the admin kubeconfig, re-pointed).
async fn client_through(cp: &ControlPlane, gate: &Gate) -> Client {
    let url = cp.server_url();
    let admin = std::fs::read_to_string(cp.kubeconfig_path()).expect("admin kubeconfig");
    let host = url.trim_start_matches("https://");
    assert!(admin.contains(host), "kubeconfig names {host}");
    let path = cp.dir().join("gate.kubeconfig");
    std::fs::write(
        &path,
        admin.replace(host, &format!("127.0.0.1:{}", gate.port)),
    )
    .expect("write kubeconfig");
    kelson_testsupport::client_for(&path)
        .await
        .expect("client through the gate")
}

fn object(ns: &str, name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("ConfigMap".into()),
        namespace: Some(ns.into()),
        name: Some(name.into()),
        uid: Some(format!("uid-{name}")),
        ..Default::default()
    }
}

/// The event of `reason` in `ns`, read straight from the API server (not through the gate).
async fn find(admin: &Client, ns: &str, reason: &str) -> Option<Event> {
    let api: Api<Event> = Api::namespaced(admin.clone(), ns);
    let list = api.list(&ListParams::default()).await.expect("list events");
    list.items
        .into_iter()
        .find(|e| e.reason.as_deref() == Some(reason))
}

/// Polls `f` every 100 ms for at most `secs`.
async fn until<F, Fut>(what: &str, secs: u64, stats: &Stats, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}; recorder counters: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn get(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_writes_are_retried_through_an_outage_and_not_when_refused() {
    let cp = ControlPlane::start().await.expect("control plane starts");
    let admin = cp.client().await.expect("admin client");
    let port: u16 = cp
        .server_url()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("API server port");
    let gate = Gate::start(port).await;
    let client = client_through(&cp, &gate).await;
    let policy = RetryPolicy {
        sleep: Duration::from_secs(1),
        ..RetryPolicy::default()
    };
    let rec = Recorder::start_with(KubeSink(client), "events-test".into(), policy);
    let st = rec.stats();
    let ev = |ns: &str, reason: &'static str, msg: &str| {
        rec.event_ref(
            "test-controller",
            object(ns, "cm"),
            EventType::Normal,
            reason,
            msg,
        )
    };

    // The path works.
    ev("default", "Before", "written while the API server is there");
    until("the first event", 30, &st, || async {
        find(&admin, "default", "Before").await.is_some()
    })
    .await;
    assert_eq!(get(&st.created), 1);

    // The API server goes away: the writes fail and are retried, not lost.
    gate.close();
    ev("default", "During", "written while the API server is away");
    ev("default", "During", "written while the API server is away");
    until("two failed retries", 30, &st, || async {
        get(&st.retried) >= 2
    })
    .await;
    assert!(
        find(&admin, "default", "During").await.is_none(),
        "nothing can have been written through a closed gate"
    );
    assert_eq!(get(&st.failed) + get(&st.rejected), 0, "{st:?}");

    // It comes back: the next retry writes the event, the repeat folded into it.
    gate.open();
    until("the event written during the outage", 30, &st, || async {
        find(&admin, "default", "During").await.is_some()
    })
    .await;
    let during = find(&admin, "default", "During").await.expect("event");
    assert_eq!(during.count, Some(2), "{during:?}");
    assert_eq!(get(&st.created), 2, "{st:?}");
    assert_eq!(get(&st.coalesced), 1, "{st:?}");
    assert_eq!(get(&st.patched), 0, "{st:?}");

    // A namespace being terminated (held by a finalizer): a 403 that no retry can fix.
    let nsapi: Api<Namespace> = Api::all(admin.clone());
    let doomed: Namespace = serde_json::from_value(json!({
        "metadata": {"name": "doomed", "finalizers": ["kelson.test/hold"]}
    }))
    .expect("namespace");
    nsapi
        .create(&PostParams::default(), &doomed)
        .await
        .expect("create namespace");
    nsapi
        .delete("doomed", &DeleteParams::default())
        .await
        .expect("delete namespace");
    until("the namespace to be terminating", 30, &st, || async {
        nsapi
            .get_opt("doomed")
            .await
            .ok()
            .flatten()
            .is_some_and(|n| n.metadata.deletion_timestamp.is_some())
    })
    .await;
    let retried = get(&st.retried);
    ev("doomed", "Refused", "written into a terminating namespace");
    until("the refusal", 30, &st, || async { get(&st.rejected) == 1 }).await;
    // Longer than a retry pause: no retry comes.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(get(&st.retried), retried, "{st:?}");
    assert_eq!(get(&st.failed), 0, "{st:?}");
    assert!(find(&admin, "doomed", "Refused").await.is_none());
}
