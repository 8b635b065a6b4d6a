//! Kubernetes storage semantics over any etcd v3 store (kelson-kv or a real etcd), through the
//! stock `etcd-client`: create / get / list / guaranteed update / delete / watch, with the
//! behaviour of upstream's `k8s.io/apiserver/pkg/storage/etcd3` store.
//!
//! Design:
//! - Objects travel as `serde_json::Value`. What is stored is the object's JSON with
//!   `metadata.resourceVersion` removed; on every read it is set from the key's `mod_revision`
//!   ([`codec`]). A list's resource version is the revision the range was read at.
//! - Every write is a compare-and-swap transaction on the key's `mod_revision`, so concurrent
//!   API servers (or an external writer) can never lose an update: create is
//!   `If(mod == 0) Then(Put)`, update/delete are `If(mod == rev) Then(Put|Delete) Else(Get)` and
//!   retry with the fresh value from the `Else` branch.
//! - Errors are classified once, at this boundary ([`StorageError`]); the API server adds the
//!   group/resource/name when it turns them into `metav1.Status`. Callback errors come back
//!   untouched inside [`UpdateError::Rejected`].
//! - Watches translate etcd events with `prev_kv` into ADDED/MODIFIED/DELETED, including the
//!   synthetic transitions of a filtered watch, and etcd progress notifications into bookmarks
//!   ([`watch`]).
//! - The watch cache ([`cache`]) serves LIST and watch from one store watch per resource,
//!   with objects encoded once per write.

pub mod cache;
mod codec;
mod continue_token;
pub mod encryption;
mod error;
mod etcd_tls;
mod store;
mod watch;
mod writes;

use std::path::PathBuf;
use std::time::Duration;

use etcd_client::Client;

pub use cache::{CacheWatchEvent, CachedList, CachedObject, WatchCache, WatchCaches, WatchStart};
pub use continue_token::{decode_continue, encode_continue};
pub use error::{StorageError, UpdateError};
pub use watch::{WatchEvent, WatchFilter};

/// TLS material for the store connection (PEM files). `cert`/`key` give a client certificate
/// for mutual TLS; both or neither must be set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// Tunables; the defaults suit production.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// Prepended to every key (like kube-apiserver's `--etcd-prefix`, but keys passed to this
    /// crate already start with `/registry/`, so the default is empty).
    pub prefix: String,
    /// How often a watch with bookmarks asks the store for a progress notification. Upstream
    /// sends a bookmark to each watcher about once a minute.
    pub bookmark_interval: Duration,
    /// Bound on compare-and-swap attempts of one guaranteed update or delete (upstream loops
    /// forever; a bound turns a pathological hot key into a 409 instead of a stuck request).
    pub max_conflict_retries: usize,
    /// Bound on each unary store request.
    pub request_timeout: Duration,
    /// Bound on establishing a connection to a store endpoint.
    pub connect_timeout: Duration,
    /// Encryption at rest of the values under some key prefixes ([`encryption`]): applied to
    /// the encoded bytes on every write, removed on every read.
    pub encryption: Option<std::sync::Arc<encryption::Encryption>>,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            prefix: String::new(),
            bookmark_interval: Duration::from_secs(60),
            max_conflict_retries: 100,
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            encryption: None,
        }
    }
}

/// Preconditions of an update or delete, checked against the current object on every pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Preconditions {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

impl Preconditions {
    /// Upstream's `storage.Preconditions.Check` (an absent object has empty uid and version).
    pub fn check(&self, key: &str, obj: Option<&serde_json::Value>) -> Result<(), StorageError> {
        if let Some(uid) = &self.uid {
            let actual = codec::meta_str(obj, "uid");
            if uid != actual {
                return Err(StorageError::Conflict {
                    key: key.to_string(),
                    message: format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {actual}"
                    ),
                });
            }
        }
        if let Some(rv) = &self.resource_version {
            let actual = codec::meta_str(obj, "resourceVersion");
            if rv != actual {
                return Err(StorageError::Conflict {
                    key: key.to_string(),
                    message: format!(
                        "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {actual}"
                    ),
                });
            }
        }
        Ok(())
    }
}

/// `resourceVersionMatch` of a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceVersionMatch {
    NotOlderThan,
    Exact,
}

impl std::str::FromStr for ResourceVersionMatch {
    type Err = StorageError;
    fn from_str(s: &str) -> Result<Self, StorageError> {
        match s {
            "NotOlderThan" => Ok(ResourceVersionMatch::NotOlderThan),
            "Exact" => Ok(ResourceVersionMatch::Exact),
            other => Err(StorageError::BadRequest(format!(
                "unknown ResourceVersionMatch value: {other}"
            ))),
        }
    }
}

/// Options of a list, as the query parameters of the same names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// `resourceVersion`: None/"" = latest (linearizable); "0" = any (a serializable read).
    pub resource_version: Option<String>,
    pub resource_version_match: Option<ResourceVersionMatch>,
    /// `limit`: 0 = no paging.
    pub limit: i64,
    /// `continue`.
    pub continue_token: Option<String>,
}

/// One page of a list.
#[derive(Debug, Clone, PartialEq)]
pub struct ListResult {
    /// Objects (each with its `metadata.resourceVersion`), in key order.
    pub items: Vec<serde_json::Value>,
    /// The revision the list was read at (`ListMeta.resourceVersion`).
    pub resource_version: i64,
    /// Set when more items remain (`ListMeta.continue`).
    pub continue_token: Option<String>,
    /// Set only for unfiltered paged lists with more items (`ListMeta.remainingItemCount`).
    pub remaining_item_count: Option<i64>,
}

/// A list filter (field/label selectors), evaluated on decoded objects. `None` matches all.
pub type ListFilter<'a> = Option<&'a (dyn Fn(&serde_json::Value) -> bool + Send + Sync)>;

/// Options of [`Storage::guaranteed_update_with`].
#[derive(Debug, Clone, Default)]
pub struct UpdateOptions {
    pub preconditions: Preconditions,
    pub dry_run: bool,
    /// The callback is called with `None` for a missing object (update-creates); without this
    /// a missing object is `NotFound`.
    pub ignore_not_found: bool,
    /// A possibly stale copy of the current object (with its resourceVersion) to try first,
    /// saving a read; a conflict or a callback error on it falls back to a fresh read.
    pub cached: Option<serde_json::Value>,
}

/// Kubernetes storage over an etcd v3 store. Cheap to clone (clones share connections).
#[derive(Clone)]
pub struct Storage {
    client: Client,
    config: StorageConfig,
    /// What writes through this storage (any clone) have seen: what a watch cache must reach
    /// for this server to read its own writes ([`writes`]).
    last_write: std::sync::Arc<writes::Writes>,
    /// Whether the store orders a RequestProgress answer after the events it covers (see
    /// [`Storage::progress_is_ordered`]); set by the first answer.
    progress_ordered: std::sync::Arc<std::sync::OnceLock<bool>>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("config", &self.config)
            .finish()
    }
}

impl Storage {
    /// Connects with the default [`StorageConfig`]. Endpoints are URLs (`http://` or
    /// `https://`; with `tls` set, scheme-less endpoints use https). The connection is made
    /// lazily: use [`Storage::current_revision`] to check the store is reachable.
    pub async fn connect(
        endpoints: &[String],
        tls: Option<EtcdTls>,
    ) -> Result<Storage, StorageError> {
        Self::connect_with(endpoints, tls, StorageConfig::default()).await
    }

    /// Connects with explicit tunables.
    pub async fn connect_with(
        endpoints: &[String],
        tls: Option<EtcdTls>,
        config: StorageConfig,
    ) -> Result<Storage, StorageError> {
        if endpoints.is_empty() {
            return Err(StorageError::BadRequest(
                "no etcd endpoints configured".into(),
            ));
        }
        // With TLS the client follows renewed certificate files (etcd_tls module docs).
        let settings = etcd_tls::EndpointSettings {
            connect_timeout: config.connect_timeout,
            keep_alive: (Duration::from_secs(10), Duration::from_secs(5)),
        };
        let client = etcd_tls::connect(endpoints, tls.as_ref(), settings).await?;
        Ok(Storage {
            client,
            config,
            last_write: Default::default(),
            progress_ordered: Default::default(),
        })
    }

    /// Whether a progress notification the store sends on request can be trusted to mean "every
    /// event up to this revision was sent": etcd before 3.4.25 / 3.5.8 could answer a
    /// RequestProgress ahead of events it had not sent yet (etcd-io/etcd#15220), so a watch
    /// cache following it may believe itself fresh while events are still in flight. Like
    /// kube-apiserver's feature-support checker (RequestWatchProgress: etcd 3.4.31+, 3.5.13+,
    /// 3.6+), consistent reads are served from the cache only when the store's version has the
    /// fix, and from the store otherwise. Asked until the store answers (Maintenance Status);
    /// meanwhile an error counts as "no", which only costs a store read.
    pub async fn progress_is_ordered(&self) -> bool {
        if let Some(known) = self.progress_ordered.get() {
            return *known;
        }
        let mut m = self.client.maintenance_client();
        match self.timed(m.status()).await {
            Ok(Ok(st)) => {
                let ok = request_progress_supported(st.version());
                if !ok {
                    tracing::info!(
                        version = st.version(),
                        "store does not order progress notifications after events \
                         (etcd-io/etcd#15220): consistent reads go to the store"
                    );
                }
                let _ = self.progress_ordered.set(ok);
                ok
            }
            // Not remembered: a store that is not up yet is asked again next time.
            _ => false,
        }
    }

    /// The bytes to store for the encoded object `plain` at (prefixed) `key`.
    pub(crate) fn seal(&self, key: &str, plain: Vec<u8>) -> Result<Vec<u8>, StorageError> {
        match &self.config.encryption {
            Some(e) => e.to_storage(key, plain),
            None => Ok(plain),
        }
    }

    /// The encoded object stored as `data` at `key`, and whether it should be rewritten.
    pub(crate) fn open<'a>(
        &self,
        key: &[u8],
        data: &'a [u8],
    ) -> Result<(std::borrow::Cow<'a, [u8]>, bool), StorageError> {
        match &self.config.encryption {
            Some(e) => e
                .from_storage(key, data)
                .map(|(p, stale)| (std::borrow::Cow::Owned(p), stale)),
            None => Ok((std::borrow::Cow::Borrowed(data), false)),
        }
    }

    /// [`codec::decode`] of a stored value (decrypted first).
    pub(crate) fn decode_kv(
        &self,
        key: &[u8],
        data: &[u8],
        rev: i64,
    ) -> Result<serde_json::Value, StorageError> {
        codec::decode(key, &self.open(key, data)?.0, rev)
    }

    /// The newest revision any write through this storage has observed (0 before the first).
    pub fn last_write_revision(&self) -> i64 {
        self.last_write.newest()
    }

    /// The configuration this storage runs with.
    pub fn config(&self) -> &StorageConfig {
        &self.config
    }
}

/// Whether etcd `version` ("major.minor.patch", maybe with a suffix) answers RequestProgress
/// in order with its events: 3.4.31+, 3.5.13+ or 3.6+ (the versions kube-apiserver requires
/// for RequestWatchProgress).
fn request_progress_supported(version: &str) -> bool {
    let mut parts = version
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let (major, minor, patch) = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    match (major, minor) {
        (3, 4) => patch >= 31,
        (3, 5) => patch >= 13,
        (3, m) => m >= 6,
        (m, _) => m > 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_progress_support_follows_the_etcd_versions_with_the_fix() {
        for v in [
            "3.4.31",
            "3.4.34",
            "3.5.13",
            "3.5.17",
            "3.6.0",
            "3.6.5-rc.0",
            "4.0.0",
        ] {
            assert!(request_progress_supported(v), "{v}");
        }
        for v in [
            "3.4.23", "3.4.30", "3.5.0", "3.5.12", "3.3.27", "", "garbage",
        ] {
            assert!(!request_progress_supported(v), "{v}");
        }
    }
    use serde_json::json;

    #[test]
    fn preconditions_use_upstream_messages() {
        let obj = json!({"metadata":{"uid":"u1","resourceVersion":"5"}});
        let p = Preconditions {
            uid: Some("u2".into()),
            resource_version: None,
        };
        let e = p.check("k", Some(&obj)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Precondition failed: UID in precondition: u2, UID in object meta: u1"
        );
        assert_eq!(e.http_code(), 409);
        let p = Preconditions {
            uid: Some("u1".into()),
            resource_version: Some("4".into()),
        };
        assert_eq!(
            p.check("k", Some(&obj)).unwrap_err().to_string(),
            "Precondition failed: ResourceVersion in precondition: 4, ResourceVersion in object meta: 5"
        );
        let ok = Preconditions {
            uid: Some("u1".into()),
            resource_version: Some("5".into()),
        };
        assert!(ok.check("k", Some(&obj)).is_ok());
        assert!(Preconditions::default().check("k", None).is_ok());
        assert!(ok.check("k", None).is_err());
    }

    #[test]
    fn resource_version_match_parses() {
        assert_eq!(
            "Exact".parse::<ResourceVersionMatch>().unwrap(),
            ResourceVersionMatch::Exact
        );
        assert_eq!(
            "NotOlderThan".parse::<ResourceVersionMatch>().unwrap(),
            ResourceVersionMatch::NotOlderThan
        );
        assert!("exact".parse::<ResourceVersionMatch>().is_err());
    }

    /// Compile-time check: every operation's future is `Send`, so the API server can run them
    /// on a multi-threaded runtime (axum handlers require it).
    #[allow(dead_code)]
    fn futures_are_send(s: &Storage) {
        fn is_send<T: Send>(_: &T) {}
        let keep = |_: &serde_json::Value| true;
        let o = ListOptions::default();
        is_send(&s.list("/p/", &o, Some(&keep)));
        is_send(&s.create("/k", json!({}), false));
        is_send(&s.get("/k", None));
        let p = Preconditions::default();
        is_send(&s.guaranteed_update("/k", &p, false, Ok::<_, String>));
        is_send(&s.delete("/k", &p, false, |_| Ok::<_, String>(())));
        is_send(&s.watch("/p/", true, 0, None, true));
    }

    #[tokio::test]
    async fn connect_rejects_bad_tls_and_empty_endpoints() {
        assert!(Storage::connect(&[], None).await.is_err());
        let tls = EtcdTls {
            ca: "/nonexistent/ca.pem".into(),
            cert: None,
            key: None,
        };
        let e = Storage::connect(&["https://127.0.0.1:1".into()], Some(tls))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    }
}
