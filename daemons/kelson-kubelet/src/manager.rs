//! The pod manager: watches this node's pods and hands each to its worker.
//!
//! A `kube::runtime::watcher` on `pods?fieldSelector=spec.nodeName=<node>` (relisting with
//! back-off after errors) feeds a map UID → worker. Each worker gets the latest Pod through a
//! `watch` channel, so a burst of updates costs it one sync, and `None` means "gone from the
//! API": a pod deleted while the kubelet was down, or deleted with grace 0 by someone else.
//!
//! After each (re)list the manager knows the full set of this node's pods, so it
//!   - tells workers whose pod is no longer listed that it is gone, and
//!   - on the first list, removes (in a task of its own, so new pods never wait behind it)
//!     sandboxes labelled with this node whose pod UID is unknown (pods deleted while the
//!     kubelet was down), and reports "caches synced".
//!
//! Mirror pods (static pods' API objects) are skipped: [`crate::static_pods`] runs those.
//!
//! On shutdown the workers are dropped without touching containers: a kubelet restart must not
//! restart running pods.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::pod as podspec;
use crate::worker::{Shared, Worker};

struct Entry {
    tx: watch::Sender<Option<Arc<Pod>>>,
    handle: JoinHandle<()>,
}

/// Runs until `shutdown` fires. `synced` is set to true after the first full list.
pub async fn run(
    shared: Arc<Shared>,
    node_name: String,
    synced: watch::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let api: Api<Pod> = Api::all(shared.client.clone());
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={node_name}"));
    let mut stream = watcher::watcher(api, cfg).default_backoff().boxed();
    let mut workers: HashMap<String, Entry> = HashMap::new();
    let mut listing: Option<HashSet<String>> = None;
    let mut first_list_done = false;
    loop {
        let ev = tokio::select! {
            ev = stream.next() => ev,
            _ = shutdown.changed() => break,
        };
        let Some(ev) = ev else { break };
        match ev {
            Ok(Event::Apply(pod)) => dispatch(&shared, &mut workers, pod),
            Ok(Event::Delete(pod)) => {
                let uid = podspec::uid(&pod);
                if let Some(e) = workers.get(&uid) {
                    let _ = e.tx.send(None);
                }
            }
            Ok(Event::Init) => listing = Some(HashSet::new()),
            Ok(Event::InitApply(pod)) => {
                if let Some(l) = listing.as_mut() {
                    l.insert(podspec::uid(&pod));
                }
                dispatch(&shared, &mut workers, pod);
            }
            Ok(Event::InitDone) => {
                let seen = listing.take().unwrap_or_default();
                for (uid, e) in &workers {
                    if !seen.contains(uid) {
                        let _ = e.tx.send(None);
                    }
                }
                if !first_list_done {
                    first_list_done = true;
                    // Off the loop: tearing down the sandboxes of pods deleted while the
                    // kubelet was down (after a reboot: dead containers, vanished network
                    // namespaces) can take long, and new pods must not wait behind it.
                    let (shared, node_name) = (shared.clone(), node_name.clone());
                    let known = seen.clone();
                    tokio::spawn(async move { remove_orphans(&shared, &node_name, &known).await });
                    let _ = synced.send(true);
                    tracing::info!(pods = seen.len(), "pod cache synced");
                }
            }
            Err(e) => tracing::warn!(error = %e, "pod watch failed; relisting"),
        }
        workers.retain(|_, e| !e.handle.is_finished() || !e.tx.borrow().is_none());
    }
    // Dropping the senders ends the workers without tearing anything down.
    for (_, e) in workers {
        drop(e.tx);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), e.handle).await;
    }
}

fn dispatch(shared: &Arc<Shared>, workers: &mut HashMap<String, Entry>, pod: Pod) {
    let uid = podspec::uid(&pod);
    // Mirror pods stand for static pods, which the static pod source runs.
    if uid.is_empty() || crate::static_pods::is_mirror(&pod) {
        return;
    }
    let pod = Arc::new(pod);
    if let Some(e) = workers.get(&uid) {
        if !e.handle.is_finished() {
            let _ = e.tx.send(Some(pod));
            return;
        }
    }
    let (tx, rx) = watch::channel(Some(pod));
    let worker = Worker::new(shared.clone(), uid.clone(), rx);
    let handle = tokio::spawn(worker.run());
    workers.insert(uid, Entry { tx, handle });
}

/// Tears down sandboxes of this node whose pod is not in the API any more.
async fn remove_orphans(shared: &Arc<Shared>, node_name: &str, known: &HashSet<String>) {
    let labels = HashMap::from([(podspec::LABEL_NODE.to_string(), node_name.to_string())]);
    let sbs = match shared.cri.list_pod_sandboxes(labels).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "listing sandboxes for orphan clean-up");
            return;
        }
    };
    let orphans: HashSet<String> = sbs
        .iter()
        // Static pods are not in the API (only their mirrors): the static source owns them.
        .filter(|s| {
            s.annotations
                .get(podspec::ANN_CONFIG_SOURCE)
                .is_none_or(|v| v == "api")
        })
        .filter_map(|s| s.labels.get(podspec::LABEL_POD_UID).cloned())
        .filter(|uid| !known.contains(uid))
        .collect();
    for uid in orphans {
        tracing::info!(%uid, "removing the sandbox of a pod deleted while the kubelet was down");
        let (tx, rx) = watch::channel(None);
        Worker::new(shared.clone(), uid, rx).run().await;
        drop(tx);
    }
}
