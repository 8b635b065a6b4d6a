//! Shared informers: one watch per resource type for the whole process.
//!
//! Every controller that cares about pods reads the same cache and hears about the same
//! changes, as with client-go's shared informer factory: an [`Informer`] runs
//! `kube::runtime::watcher` through a `reflector` into a [`Store`], and calls the handlers the
//! controllers registered before start. Handlers only translate an object into queue keys, so
//! they are cheap and run inline on the informer task. After a relist the watcher does not
//! report objects deleted while disconnected; controllers cover that with a periodic resync of
//! their primary objects (see `controllers::spawn`).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Client, Resource};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;

/// An object change as the handlers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Added or modified (or seen again on relist).
    Applied,
    /// Deleted; the object is its last known state.
    Deleted,
}

type Handler<K> = Box<dyn Fn(&K, Change) + Send + Sync>;

/// Bounds for objects an informer can cache.
pub trait Object:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static
{
}
impl<K> Object for K where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static
{
}

/// A cache of all objects of one type plus change handlers (cheap to clone).
pub struct Informer<K: Object> {
    api: Api<K>,
    store: Store<K>,
    writer: Arc<Mutex<Option<reflector::store::Writer<K>>>>,
    handlers: Arc<Mutex<Vec<Handler<K>>>>,
    used: Arc<Mutex<bool>>,
}

impl<K: Object> Clone for Informer<K> {
    fn clone(&self) -> Self {
        Informer {
            api: self.api.clone(),
            store: self.store.clone(),
            writer: self.writer.clone(),
            handlers: self.handlers.clone(),
            used: self.used.clone(),
        }
    }
}

impl<K: Object> Informer<K> {
    /// An informer over every namespace.
    pub fn new(client: Client) -> Self {
        let (store, writer) = reflector::store();
        Informer {
            api: Api::all(client),
            store,
            writer: Arc::new(Mutex::new(Some(writer))),
            handlers: Arc::new(Mutex::new(Vec::new())),
            used: Arc::new(Mutex::new(false)),
        }
    }

    /// Registers a handler (before [`Informer::start`]); also marks the informer as needed.
    pub fn on_change(&self, f: impl Fn(&K, Change) + Send + Sync + 'static) {
        self.handlers.lock().push(Box::new(f));
        self.mark_used();
    }

    /// Marks the informer as needed by a controller that only reads its cache.
    pub fn mark_used(&self) {
        *self.used.lock() = true;
    }

    pub fn is_used(&self) -> bool {
        *self.used.lock()
    }

    /// Starts the watch; returns `None` if already started.
    pub fn start(&self) -> Option<JoinHandle<()>> {
        let writer = self.writer.lock().take()?;
        let api = self.api.clone();
        let handlers = self.handlers.clone();
        Some(tokio::spawn(async move {
            let cfg = watcher::Config::default();
            let stream = reflector::reflector(writer, watcher::watcher(api, cfg)).default_backoff();
            futures::pin_mut!(stream);
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(Event::Apply(o)) | Ok(Event::InitApply(o)) => {
                        for h in handlers.lock().iter() {
                            h(&o, Change::Applied);
                        }
                    }
                    Ok(Event::Delete(o)) => {
                        for h in handlers.lock().iter() {
                            h(&o, Change::Deleted);
                        }
                    }
                    Ok(Event::Init) | Ok(Event::InitDone) => {}
                    Err(e) => {
                        tracing::warn!(kind = %K::kind(&()), error = %e, "watch failed; retrying")
                    }
                }
            }
        }))
    }

    /// Waits for the first full list, at most `timeout`.
    pub async fn wait_synced(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.store.wait_until_ready())
            .await
            .is_ok_and(|r| r.is_ok())
    }

    pub fn store(&self) -> &Store<K> {
        &self.store
    }

    /// A snapshot of every cached object.
    pub fn list(&self) -> Vec<Arc<K>> {
        self.store.state()
    }

    /// Cached objects in `ns`.
    pub fn list_ns(&self, ns: &str) -> Vec<Arc<K>> {
        self.store
            .state()
            .into_iter()
            .filter(|o| o.meta().namespace.as_deref() == Some(ns))
            .collect()
    }

    pub fn get(&self, ns: Option<&str>, name: &str) -> Option<Arc<K>> {
        let mut r = ObjectRef::new(name);
        if let Some(ns) = ns {
            r = r.within(ns);
        }
        self.store.get(&r)
    }
}

/// `namespace/name` (or `name` for cluster-scoped objects), the queue key of an object.
pub fn key_of<K: Resource>(o: &K) -> String {
    let m = o.meta();
    match &m.namespace {
        Some(ns) => format!("{ns}/{}", m.name.as_deref().unwrap_or_default()),
        None => m.name.clone().unwrap_or_default(),
    }
}

/// Splits a queue key back into `(namespace, name)`.
pub fn split_key(key: &str) -> (Option<&str>, &str) {
    match key.split_once('/') {
        Some((ns, n)) => (Some(ns), n),
        None => (None, key),
    }
}
