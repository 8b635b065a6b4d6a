//! A reflector store fed by a watcher, plus a shared [`Notify`] poked on every event: the
//! controllers here are level-triggered passes over whole stores, so all they need to know is
//! "something changed, run a pass" and "the first list has arrived".

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;

use futures::StreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Aborts the watch tasks when dropped.
#[derive(Default)]
pub struct Tasks(pub Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

pub fn start<K>(
    api: Api<K>,
    cfg: watcher::Config,
    notify: Arc<Notify>,
    tasks: &mut Tasks,
) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let (store, writer) = reflector::store::<K>();
    let stream = reflector::reflector(writer, watcher(api, cfg)).default_backoff();
    tasks.0.push(tokio::spawn(async move {
        let mut s = stream.boxed();
        while let Some(ev) = s.next().await {
            if let Err(e) = ev {
                tracing::debug!(error = %e, "watch error (retrying with back-off)");
            }
            notify.notify_one();
        }
    }));
    store
}
