//! Kubernetes storage semantics over an etcd v3 store (kelson-kv or etcd).
//!
//! Follows docs/apiserver-design.md (the `Storage` interface kelson-apistorage is to export) so
//! the handlers can switch to that crate unchanged. How upstream maps onto etcd:
//! - objects are JSON values without `metadata.resourceVersion`; on read it is set from the
//!   key's `mod_revision` (so it can never be stale inside the value);
//! - create is `Txn(If(CreateRevision(key) == 0)).Then(Put)` → AlreadyExists on failure;
//! - update/delete are "guaranteed updates": read, compute, `Txn(If(ModRevision == rev))`, retry
//!   with a fresh read on conflict (bounded), preconditions checked on every pass, identical
//!   bytes are not written (so a no-op apply does not bump resourceVersion);
//! - lists read one consistent revision; `continue` tokens carry that revision and the next key;
//! - watches start at `rv + 1` with `prev_kv`, so a filtered watch can turn "stopped matching"
//!   into DELETED and "started matching" into ADDED; a compacted start is a 410.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    TlsOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use futures::stream::BoxStream;
use futures::StreamExt;
use serde_json::Value;

use crate::error::ApiError;

/// How often a watch that allows bookmarks asks the store for progress.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(2);

/// How many times a guaranteed update re-reads after a lost race before giving up.
const MAX_UPDATE_ATTEMPTS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("not found")]
    NotFound,
    #[error("already exists")]
    AlreadyExists,
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Compacted(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Api(#[from] ApiError),
}

impl StorageError {
    /// The API error a handler answers with; `group/resource/name` make the messages.
    pub fn into_api(self, group: &str, resource: &str, name: &str) -> ApiError {
        match self {
            StorageError::NotFound => ApiError::not_found(group, resource, name),
            StorageError::AlreadyExists => ApiError::already_exists(group, resource, name),
            StorageError::Conflict(m) => ApiError::conflict(group, resource, name, &m),
            StorageError::Compacted(m) => ApiError::expired(m),
            StorageError::Unavailable(m) => ApiError::service_unavailable(m),
            StorageError::Internal(m) => ApiError::internal(m),
            StorageError::Api(e) => e,
        }
    }
}

impl From<etcd_client::Error> for StorageError {
    fn from(e: etcd_client::Error) -> Self {
        let s = e.to_string();
        if s.contains("compacted") {
            StorageError::Compacted("The resourceVersion for the provided list is too old.".into())
        } else if s.contains("too large") {
            StorageError::Api(ApiError::too_large(s))
        } else {
            StorageError::Unavailable(format!("etcd: {s}"))
        }
    }
}

/// TLS material for the store connection (`--etcd-cafile/--etcd-certfile/--etcd-keyfile`).
#[derive(Debug, Clone)]
pub struct EtcdTls {
    pub ca: Vec<u8>,
    pub cert: Option<(Vec<u8>, Vec<u8>)>,
}

/// Preconditions of an update or delete.
#[derive(Debug, Clone, Default)]
pub struct Preconditions {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

/// List options the storage layer understands.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    pub limit: i64,
    pub continue_token: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ListResult {
    pub items: Vec<Value>,
    pub resource_version: i64,
    pub continue_token: Option<String>,
    pub remaining: Option<i64>,
}

#[derive(Debug, Clone)]
pub enum WatchEvent {
    Added(Value),
    Modified(Value),
    Deleted(Value),
    Bookmark(i64),
    Error(ApiError),
}

#[derive(Clone)]
pub struct Storage {
    client: Client,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Storage")
    }
}

/// The value with `metadata.resourceVersion` set to `rev`.
pub fn with_rv(mut obj: Value, rev: i64) -> Value {
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert("resourceVersion".into(), Value::String(rev.to_string()));
    }
    obj
}

fn strip_rv(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    o
}

fn decode(kv: &etcd_client::KeyValue) -> Result<Value, StorageError> {
    let v: Value = serde_json::from_slice(kv.value()).map_err(|e| {
        StorageError::Internal(format!(
            "undecodable object at {:?}: {e}",
            String::from_utf8_lossy(kv.key())
        ))
    })?;
    Ok(with_rv(v, kv.mod_revision()))
}

fn encode(obj: &Value) -> Result<Vec<u8>, StorageError> {
    serde_json::to_vec(&strip_rv(obj)).map_err(|e| StorageError::Internal(e.to_string()))
}

/// The end of the key range holding every key with this prefix.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn check_pre(pre: &Preconditions, cur: &Value) -> Result<(), StorageError> {
    let meta = &cur["metadata"];
    if let Some(uid) = &pre.uid {
        let have = meta["uid"].as_str().unwrap_or_default();
        if have != uid {
            return Err(StorageError::Conflict(format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {have}"
            )));
        }
    }
    if let Some(rv) = &pre.resource_version {
        let have = meta["resourceVersion"].as_str().unwrap_or_default();
        if have != rv {
            return Err(StorageError::Conflict(
                "the object has been modified; please apply your changes to the latest version and try again".into(),
            ));
        }
    }
    Ok(())
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    v: String,
    rv: i64,
    start: String,
}

impl Storage {
    pub async fn connect(
        endpoints: &[String],
        tls: Option<EtcdTls>,
    ) -> Result<Storage, StorageError> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(30))
            .with_keep_alive(Duration::from_secs(30), Duration::from_secs(10));
        if let Some(t) = tls {
            let mut to = TlsOptions::new().ca_certificate(Certificate::from_pem(t.ca));
            if let Some((c, k)) = t.cert {
                to = to.identity(Identity::from_pem(c, k));
            }
            opts = opts.with_tls(to);
        }
        let client = Client::connect(endpoints, Some(opts)).await?;
        Ok(Storage { client })
    }

    pub async fn current_revision(&self) -> Result<i64, StorageError> {
        let r = self
            .client
            .kv_client()
            .get("/", Some(GetOptions::new().with_count_only()))
            .await?;
        Ok(r.header().map(|h| h.revision()).unwrap_or_default())
    }

    pub async fn create(
        &self,
        key: &str,
        obj: Value,
        dry_run: bool,
    ) -> Result<Value, StorageError> {
        let data = encode(&obj)?;
        if dry_run {
            let r = self.client.kv_client().get(key, None).await?;
            if !r.kvs().is_empty() {
                return Err(StorageError::AlreadyExists);
            }
            return Ok(strip_rv(&obj));
        }
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, data, None)]);
        let r = self.client.kv_client().txn(txn).await?;
        if !r.succeeded() {
            return Err(StorageError::AlreadyExists);
        }
        let rev = r.header().map(|h| h.revision()).unwrap_or_default();
        Ok(with_rv(obj, rev))
    }

    async fn get_raw(&self, key: &str) -> Result<Option<(Value, i64)>, StorageError> {
        let r = self.client.kv_client().get(key, None).await?;
        match r.kvs().first() {
            Some(kv) => Ok(Some((decode(kv)?, kv.mod_revision()))),
            None => Ok(None),
        }
    }

    pub async fn get(&self, key: &str, _rv: Option<&str>) -> Result<Value, StorageError> {
        self.get_raw(key)
            .await?
            .map(|(v, _)| v)
            .ok_or(StorageError::NotFound)
    }

    /// Lists `prefix` at one revision, keeping the objects `filter` accepts. With a limit,
    /// reads pages until `limit` matching items are found or the range ends.
    pub async fn list(
        &self,
        prefix: &str,
        opts: &ListOptions,
        filter: &(dyn Fn(&Value) -> bool + Send + Sync),
    ) -> Result<ListResult, StorageError> {
        let end = prefix_end(prefix);
        let (mut start, mut rev) = match &opts.continue_token {
            Some(tok) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(tok)
                    .map_err(|_| {
                        StorageError::Api(ApiError::bad_request("continue key is not valid"))
                    })?;
                let t: ContinueToken = serde_json::from_slice(&bytes).map_err(|_| {
                    StorageError::Api(ApiError::bad_request("continue key is not valid"))
                })?;
                if !t.start.starts_with(prefix.trim_end_matches('/')) && !t.start.is_empty() {
                    return Err(StorageError::Api(ApiError::bad_request(
                        "continue key is not valid",
                    )));
                }
                (t.start.into_bytes(), t.rv)
            }
            None => (prefix.as_bytes().to_vec(), 0),
        };
        let limit = opts.limit.max(0);
        let mut items = Vec::new();
        let mut kv = self.client.kv_client();
        loop {
            let mut go = GetOptions::new().with_range(end.clone());
            if rev > 0 {
                go = go.with_revision(rev);
            }
            let page = if limit > 0 {
                (limit - items.len() as i64).max(1) + 1
            } else {
                0
            };
            if page > 0 {
                go = go.with_limit(page.max(2));
            }
            let r = kv.get(start.clone(), Some(go)).await.map_err(|e| {
                let s = e.to_string();
                if s.contains("compacted") {
                    StorageError::Compacted("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.".into())
                } else {
                    e.into()
                }
            })?;
            if rev == 0 {
                rev = r.header().map(|h| h.revision()).unwrap_or_default();
            }
            let kvs = r.kvs();
            for (i, kvp) in kvs.iter().enumerate() {
                let v = decode(kvp)?;
                if filter(&v) {
                    items.push(v);
                }
                if limit > 0 && items.len() as i64 >= limit {
                    let more = i + 1 < kvs.len() || r.more();
                    if more {
                        let mut next = kvp.key().to_vec();
                        next.push(0);
                        let tok = ContinueToken {
                            v: "meta.k8s.io/v1".into(),
                            rv: rev,
                            start: String::from_utf8_lossy(&next).into_owned(),
                        };
                        let tok = base64::engine::general_purpose::STANDARD
                            .encode(serde_json::to_vec(&tok).unwrap_or_default());
                        let remaining = (r.count() - (i as i64 + 1)).max(0);
                        return Ok(ListResult {
                            items,
                            resource_version: rev,
                            continue_token: Some(tok),
                            remaining: Some(remaining),
                        });
                    }
                    return Ok(ListResult {
                        items,
                        resource_version: rev,
                        continue_token: None,
                        remaining: None,
                    });
                }
            }
            if !r.more() || kvs.is_empty() {
                return Ok(ListResult {
                    items,
                    resource_version: rev,
                    continue_token: None,
                    remaining: None,
                });
            }
            let mut next = kvs[kvs.len() - 1].key().to_vec();
            next.push(0);
            start = next;
        }
    }

    /// Read-modify-write with optimistic concurrency. `f` gets the current object (with its
    /// resourceVersion) and returns the new one; on a lost race it runs again on the fresh one.
    pub async fn guaranteed_update<F>(
        &self,
        key: &str,
        pre: &Preconditions,
        dry_run: bool,
        mut f: F,
    ) -> Result<Value, StorageError>
    where
        F: FnMut(Value) -> Result<Value, ApiError> + Send,
    {
        let mut cached = self.get_raw(key).await?;
        for _ in 0..MAX_UPDATE_ATTEMPTS {
            let Some((cur, rev)) = cached.take() else {
                return Err(StorageError::NotFound);
            };
            check_pre(pre, &cur)?;
            let new = f(cur.clone())?;
            let data = encode(&new)?;
            if data == encode(&cur)? {
                return Ok(cur);
            }
            if dry_run {
                return Ok(with_rv(new, rev));
            }
            let txn = Txn::new()
                .when([Compare::mod_revision(key, CompareOp::Equal, rev)])
                .and_then([TxnOp::put(key, data, None)])
                .or_else([TxnOp::get(key, None)]);
            let r = self.client.kv_client().txn(txn).await?;
            if r.succeeded() {
                let nrev = r.header().map(|h| h.revision()).unwrap_or_default();
                return Ok(with_rv(new, nrev));
            }
            cached = fresh_from_else(&r.op_responses())?;
        }
        Err(StorageError::Conflict(
            "too many concurrent updates; please try again".into(),
        ))
    }

    /// Deletes `key` once `check` accepts the current object; returns the deleted object with
    /// the deletion's revision as its resourceVersion (what DELETED watch events carry).
    pub async fn delete<F>(
        &self,
        key: &str,
        pre: &Preconditions,
        dry_run: bool,
        mut check: F,
    ) -> Result<Value, StorageError>
    where
        F: FnMut(&Value) -> Result<(), ApiError> + Send,
    {
        let mut cached = self.get_raw(key).await?;
        for _ in 0..MAX_UPDATE_ATTEMPTS {
            let Some((cur, rev)) = cached.take() else {
                return Err(StorageError::NotFound);
            };
            check_pre(pre, &cur)?;
            check(&cur)?;
            if dry_run {
                return Ok(cur);
            }
            let txn = Txn::new()
                .when([Compare::mod_revision(key, CompareOp::Equal, rev)])
                .and_then([TxnOp::delete(key, None)])
                .or_else([TxnOp::get(key, None)]);
            let r = self.client.kv_client().txn(txn).await?;
            if r.succeeded() {
                let nrev = r.header().map(|h| h.revision()).unwrap_or_default();
                return Ok(with_rv(cur, nrev));
            }
            cached = fresh_from_else(&r.op_responses())?;
        }
        Err(StorageError::Conflict(
            "too many concurrent updates; please try again".into(),
        ))
    }

    /// Raw create-if-absent of a small marker value (allocations); false if it exists.
    pub async fn claim(&self, key: &str, value: &str) -> Result<bool, StorageError> {
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value, None)]);
        Ok(self.client.kv_client().txn(txn).await?.succeeded())
    }

    /// Raw delete of a marker key.
    pub async fn release(&self, key: &str) -> Result<(), StorageError> {
        self.client.kv_client().delete(key, None).await?;
        Ok(())
    }

    /// Raw read of a marker key's value.
    pub async fn raw_get(&self, key: &str) -> Result<Option<String>, StorageError> {
        let r = self.client.kv_client().get(key, None).await?;
        Ok(r.kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    /// Watches `key` (a prefix when `recursive`) from revision `from_rv + 1`.
    pub async fn watch(
        &self,
        key: &str,
        recursive: bool,
        from_rv: i64,
        filter: Arc<dyn Fn(&Value) -> bool + Send + Sync>,
        bookmarks: bool,
    ) -> Result<BoxStream<'static, WatchEvent>, StorageError> {
        let mut wo = WatchOptions::new()
            .with_prev_key()
            .with_start_revision(from_rv + 1);
        if recursive {
            wo = wo.with_range(prefix_end(key));
        }
        if bookmarks {
            wo = wo.with_progress_notify();
        }
        let ws = self.client.watch_client().watch(key, Some(wo)).await?;
        let (mut requests, mut responses) = ws.split();
        let s = async_stream::stream! {
            // Bookmarks: ask the store for a progress notification now and then; it answers
            // with the revision the watch has caught up to, once every event up to it was sent.
            let mut tick = tokio::time::interval(BOOKMARK_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                let next = tokio::select! {
                    m = responses.message() => m,
                    _ = tick.tick(), if bookmarks => {
                        if let Err(e) = requests.request_progress().await {
                            tracing::debug!(error = %e, "watch progress request");
                        }
                        continue;
                    }
                };
                let msg = match next {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(e) => {
                        yield WatchEvent::Error(ApiError::internal(format!("watch: {e}")));
                        break;
                    }
                };
                if msg.compact_revision() > 0 || (msg.canceled() && msg.cancel_reason().contains("compacted")) {
                    yield WatchEvent::Error(ApiError::expired(format!(
                        "too old resource version: {} ({})", from_rv, msg.compact_revision()
                    )));
                    break;
                }
                if msg.canceled() {
                    yield WatchEvent::Error(ApiError::internal(format!("watch canceled: {}", msg.cancel_reason())));
                    break;
                }
                if msg.events().is_empty() {
                    if bookmarks && !msg.created() {
                        if let Some(h) = msg.header() {
                            yield WatchEvent::Bookmark(h.revision());
                        }
                    }
                    continue;
                }
                for ev in msg.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let prev = ev.prev_kv().and_then(|p| decode(p).ok());
                    let prev_match = prev.as_ref().map(|p| filter(p)).unwrap_or(false);
                    match ev.event_type() {
                        EventType::Put => {
                            let Ok(cur) = decode(kv) else { continue };
                            let cur_match = filter(&cur);
                            match (prev.is_some() && prev_match, cur_match) {
                                (false, true) => yield WatchEvent::Added(cur),
                                (true, true) => yield WatchEvent::Modified(cur),
                                (true, false) => yield WatchEvent::Deleted(cur),
                                (false, false) => {}
                            }
                        }
                        EventType::Delete => {
                            if let Some(p) = prev {
                                if prev_match {
                                    yield WatchEvent::Deleted(with_rv(p, kv.mod_revision()));
                                }
                            }
                        }
                    }
                }
            }
        };
        Ok(s.boxed())
    }
}

fn fresh_from_else(ops: &[TxnOpResponse]) -> Result<Option<(Value, i64)>, StorageError> {
    for op in ops {
        if let TxnOpResponse::Get(g) = op {
            return match g.kvs().first() {
                Some(kv) => Ok(Some((decode(kv)?, kv.mod_revision()))),
                None => Ok(None),
            };
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_last_byte() {
        assert_eq!(prefix_end("/registry/pods/"), b"/registry/pods0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
    }

    #[test]
    fn preconditions_compare_uid_and_rv() {
        let obj = serde_json::json!({"metadata": {"uid": "u1", "resourceVersion": "5"}});
        assert!(check_pre(&Preconditions::default(), &obj).is_ok());
        let p = Preconditions {
            uid: Some("u2".into()),
            resource_version: None,
        };
        assert!(matches!(
            check_pre(&p, &obj),
            Err(StorageError::Conflict(_))
        ));
        let p = Preconditions {
            uid: None,
            resource_version: Some("4".into()),
        };
        assert!(matches!(
            check_pre(&p, &obj),
            Err(StorageError::Conflict(_))
        ));
        let p = Preconditions {
            uid: Some("u1".into()),
            resource_version: Some("5".into()),
        };
        assert!(check_pre(&p, &obj).is_ok());
    }

    #[test]
    fn rv_lives_outside_the_stored_value() {
        let obj = serde_json::json!({"metadata": {"name": "a", "resourceVersion": "9"}});
        let bytes = encode(&obj).unwrap();
        assert!(!String::from_utf8(bytes)
            .unwrap()
            .contains("resourceVersion"));
        assert_eq!(with_rv(obj, 12)["metadata"]["resourceVersion"], "12");
    }
}
