//! Create, get, list, guaranteed update and delete: upstream's etcd3 `store.go`, step by step.
//!
//! The update and delete loops keep upstream's state machine: a working copy of the object
//! (`ObjState`), whether that copy is known current (`is_current`: read from the store in this
//! call, rather than passed in by the caller), and the rules "an error on a possibly stale copy
//! is only final once a fresh read shows the same revision" and "a conflict's `Else(Get)` is the
//! fresh copy". Dry runs follow upstream's `DryRunnableStorage`: read, check, never write.
//!
//! A write whose answer is lost (the store timed out the proposal, or our request timeout
//! fired, or the connection broke) may still be applied. Reporting that as a retryable 503/504
//! makes clients, which retry those, see `409 AlreadyExists` for their own create, or a
//! Conflict for their own update. So an ambiguous failure is resolved here: the key is read
//! again, and if it holds exactly the bytes this call wrote, the write succeeded; if the key
//! is still untouched, the write is tried again (the compare on `mod_revision` makes a late
//! apply of the first attempt fail harmlessly).

use std::future::Future;

use etcd_client::{Compare, CompareOp, GetOptions, GetResponse, Txn, TxnOp, TxnOpResponse};
use serde_json::Value;
use tracing::debug;

use crate::codec::{self, decode, encode, parse_resource_version, set_resource_version};
use crate::continue_token::{decode_continue, encode_continue};
use crate::error::{classify, etcd_error, EtcdFailure};
use crate::{
    ListFilter, ListOptions, ListResult, Preconditions, ResourceVersionMatch, Storage,
    StorageError, UpdateError, UpdateOptions,
};

/// Upstream's cap on the doubled page size when a filter drops items.
const MAX_LIMIT: i64 = 10_000;

const LIST_EXPIRED: &str = "The resourceVersion for the provided list is too old.";
const CONTINUE_EXPIRED: &str = "The provided continue parameter is too old to display a \
    consistent list result. You can start a new list without the continue parameter.";
const INCONSISTENT_CONTINUE: &str = "The provided continue parameter is too old to display a \
    consistent list result. You can start a new list without the continue parameter, or use \
    the continue token in this response to retrieve the remainder of the results. Continuing \
    with the provided token results in an inconsistent list - objects that were created, \
    modified, or deleted between the time the first chunk was returned and now may show up in \
    the list.";
/// Compaction cannot happen to a read of the latest revision; if it is reported anyway the
/// message says so.
const UNEXPECTED: &str = "unexpected compaction on a read of the latest revision";

/// How often an ambiguous write failure is resolved by re-reading before it is reported.
const AMBIGUOUS_RETRIES: usize = 3;

/// Whether a failed write may have been applied anyway (its answer was lost, not refused).
fn is_ambiguous(e: &StorageError) -> bool {
    matches!(e, StorageError::Timeout(_) | StorageError::Unavailable(_))
}

/// The object an update or delete works on. `obj == None` is an absent key (rev 0).
struct ObjState {
    obj: Option<Value>,
    /// The stored bytes, decrypted.
    data: Vec<u8>,
    rev: i64,
    /// Stored with an older key or unencrypted: rewrite on update even if unchanged.
    stale: bool,
}

/// The first key after every key that starts with `prefix` (etcd's range end for a prefix).
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): to the end of the keyspace.
    vec![0]
}

impl Storage {
    /// Prefixes the key and refuses path traversal, as upstream's `prepareKey`.
    pub(crate) fn prepare_key(&self, key: &str) -> Result<String, StorageError> {
        if key == ".."
            || key.starts_with("../")
            || key.ends_with("/..")
            || key.contains("/../")
            || key.is_empty()
        {
            return Err(StorageError::BadRequest(format!("invalid key: {key:?}")));
        }
        Ok(format!("{}{key}", self.config.prefix))
    }

    /// Bounds a store call by the request timeout.
    pub(crate) async fn timed<T>(
        &self,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<Result<T, etcd_client::Error>, StorageError> {
        tokio::time::timeout(self.config.request_timeout, fut)
            .await
            .map_err(|_| {
                StorageError::Timeout(format!(
                    "no answer from the store within {:?}",
                    self.config.request_timeout
                ))
            })
    }

    async fn range(&self, key: &str, opts: GetOptions) -> Result<GetResponse, StorageError> {
        let mut attempt = 0;
        loop {
            let mut kv = self.client.kv_client();
            match self.timed(kv.get(key, Some(opts.clone()))).await? {
                Ok(r) => return Ok(r),
                // A read is always safe to repeat: a member that is restarting (its connection
                // cancelled or refused) is not an answer while the others can give one.
                Err(e) if attempt < STORE_RETRIES && retryable_read(&e) => {
                    tracing::debug!(error = %e, attempt, "store read failed; retrying");
                }
                Err(e) => return Err(etcd_error(e, UNEXPECTED)),
            }
            attempt += 1;
            tokio::time::sleep(retry_backoff(attempt)).await;
        }
    }

    /// One transaction on `key` (every write is one: its header revision is at least the
    /// write's, which the watch caches' read-your-own-writes marks record).
    async fn txn(&self, key: &str, txn: Txn) -> Result<etcd_client::TxnResponse, StorageError> {
        let mut attempt = 0;
        let resp = loop {
            let mut kv = self.client.kv_client();
            match self.timed(kv.txn(txn.clone())).await? {
                Ok(r) => break r,
                // A write is repeated only when it provably never left this process (the
                // connection to the chosen member could not be made): any later failure is
                // ambiguous, and repeating a create or a compare-and-swap that did apply would
                // answer with a wrong conflict (etcd's clientv3 draws the same line).
                Err(e) if attempt < STORE_RETRIES && never_sent(&e) => {
                    tracing::debug!(error = %e, attempt, "store write not sent; retrying");
                }
                Err(e) => return Err(etcd_error(e, UNEXPECTED)),
            }
            attempt += 1;
            tokio::time::sleep(retry_backoff(attempt)).await;
        };
        if let Some(h) = resp.header() {
            self.last_write.note(key, h.revision(), resp.succeeded());
        }
        Ok(resp)
    }

    /// The read-your-own-writes mark of a (prepared) key prefix ([`crate::writes`]).
    pub(crate) fn write_mark(&self, prefix: &str) -> std::sync::Arc<std::sync::atomic::AtomicI64> {
        self.last_write.mark(prefix)
    }

    /// The store's current revision (also a reachability check: a linearizable read).
    pub async fn current_revision(&self) -> Result<i64, StorageError> {
        // A range over one key that never exists is the cheapest linearizable read.
        let resp = self
            .range(
                &format!("{}/kelson-apistorage-revision-probe", self.config.prefix),
                GetOptions::new().with_keys_only(),
            )
            .await?;
        header_revision(resp.header())
    }

    /// Compacts the store's history up to `rev` (physical compaction is waited for).
    pub async fn compact(&self, rev: i64) -> Result<(), StorageError> {
        let mut kv = self.client.kv_client();
        self.timed(kv.compact(
            rev,
            Some(etcd_client::CompactionOptions::new().with_physical()),
        ))
        .await?
        .map_err(|e| etcd_error(e, &format!("revision {rev} is already compacted")))?;
        Ok(())
    }

    /// Creates `key` only if absent; returns the object with its new resourceVersion.
    pub async fn create(
        &self,
        key: &str,
        mut obj: Value,
        dry_run: bool,
    ) -> Result<Value, StorageError> {
        let key = self.prepare_key(key)?;
        let rv = codec::meta_str(Some(&obj), "resourceVersion");
        // As upstream: only a version that parses to non-zero counts as "set".
        if rv.parse::<u64>().is_ok_and(|v| v != 0) {
            return Err(StorageError::ResourceVersionSetOnCreate);
        }
        let data = self.seal(&key, encode(&mut obj)?)?;
        if dry_run {
            let resp = self.range(&key, GetOptions::new().with_keys_only()).await?;
            if !resp.kvs().is_empty() {
                return Err(StorageError::AlreadyExists { key });
            }
            return Ok(obj);
        }
        let resp = match self.txn(&key, create_txn(&key, &data)).await {
            Ok(r) => r,
            Err(e) if is_ambiguous(&e) => return self.resolve_create(&key, obj, &data, e).await,
            Err(e) => return Err(e),
        };
        if !resp.succeeded() {
            return Err(StorageError::AlreadyExists { key });
        }
        set_resource_version(&mut obj, header_revision(resp.header())?);
        Ok(obj)
    }

    /// Settles a create whose outcome is unknown: the key holding our bytes means it was
    /// applied; an absent key is created again; anything else is AlreadyExists. `first` is
    /// reported if the store stays unreachable.
    pub(crate) async fn resolve_create(
        &self,
        key: &str,
        mut obj: Value,
        data: &[u8],
        first: StorageError,
    ) -> Result<Value, StorageError> {
        debug!(key, error = %first, "create: outcome unknown, reading back");
        for attempt in 0..AMBIGUOUS_RETRIES {
            if attempt > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            let resp = match self.range(key, GetOptions::new()).await {
                Ok(r) => r,
                Err(e) if is_ambiguous(&e) => continue,
                Err(e) => return Err(e),
            };
            match resp.kvs().first() {
                Some(kv) if kv.value() == data => {
                    // Our first attempt was applied after all: record it as our write.
                    self.last_write.note(key, kv.mod_revision(), true);
                    set_resource_version(&mut obj, kv.mod_revision());
                    return Ok(obj);
                }
                Some(_) => {
                    return Err(StorageError::AlreadyExists {
                        key: key.to_string(),
                    })
                }
                None => match self.txn(key, create_txn(key, data)).await {
                    Ok(r) if r.succeeded() => {
                        set_resource_version(&mut obj, header_revision(r.header())?);
                        return Ok(obj);
                    }
                    // Created meanwhile (perhaps by the first attempt): look again.
                    Ok(_) => continue,
                    Err(e) if is_ambiguous(&e) => continue,
                    Err(e) => return Err(e),
                },
            }
        }
        Err(first)
    }

    /// Reads one object. `rv` None/"" is a linearizable read; "0" allows a serializable
    /// (possibly stale, local) read; any other value must not be newer than the store.
    pub async fn get(&self, key: &str, rv: Option<&str>) -> Result<Value, StorageError> {
        let key = self.prepare_key(key)?;
        let rv = rv.filter(|s| !s.is_empty());
        let min = rv.map(parse_resource_version).transpose()?;
        let mut opts = GetOptions::new();
        if rv == Some("0") {
            opts = opts.with_serializable();
        }
        let resp = self.range(&key, opts).await?;
        let current = header_revision(resp.header())?;
        validate_minimum(min, current)?;
        let kv = resp
            .kvs()
            .first()
            .ok_or(StorageError::NotFound { key: key.clone() })?;
        self.decode_kv(kv.key(), kv.value(), kv.mod_revision())
    }

    /// Lists the objects under `prefix` (a trailing "/" is added if missing), keeping those
    /// `filter` accepts, with paging, continue tokens and resourceVersion semantics as upstream.
    pub async fn list(
        &self,
        prefix: &str,
        opts: &ListOptions,
        filter: ListFilter<'_>,
    ) -> Result<ListResult, StorageError> {
        let mut prefix = self.prepare_key(prefix)?;
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        let range_end = prefix_end(prefix.as_bytes());
        let rv = opts.resource_version.as_deref().filter(|s| !s.is_empty());
        let continuing = opts
            .continue_token
            .as_deref()
            .is_some_and(|c| !c.is_empty());

        // ValidateListOptions: the revision to read at, and where to start.
        let mut with_rev: i64 = 0;
        let mut continue_key: Option<String> = None;
        if let Some(m) = opts.resource_version_match {
            if rv.is_none() {
                return Err(StorageError::BadRequest(
                    "resourceVersionMatch is forbidden unless resourceVersion is provided".into(),
                ));
            }
            if continuing {
                return Err(StorageError::BadRequest(
                    "resourceVersionMatch is forbidden when continue is provided".into(),
                ));
            }
            if m == ResourceVersionMatch::Exact && rv == Some("0") {
                return Err(StorageError::BadRequest(
                    "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"".into(),
                ));
            }
        }
        if continuing {
            let token = opts.continue_token.as_deref().unwrap_or_default();
            let (key, token_rv) = decode_continue(token, &prefix)?;
            if rv.is_some_and(|v| v != "0") {
                return Err(StorageError::BadRequest(
                    "specifying resource version is not allowed when using continue".into(),
                ));
            }
            // rv < 0: the token was issued after a compaction; continue at the latest revision.
            if token_rv > 0 {
                with_rev = token_rv;
            }
            continue_key = Some(key);
        } else if let Some(rv) = rv {
            let parsed = parse_resource_version(rv)? as i64;
            match opts.resource_version_match {
                Some(ResourceVersionMatch::NotOlderThan) => {}
                Some(ResourceVersionMatch::Exact) => with_rev = parsed,
                // Legacy: a paged list at a given version reads exactly there.
                None => {
                    if opts.limit > 0 && parsed > 0 {
                        with_rev = parsed
                    }
                }
            }
        }
        let min_rv = rv.map(parse_resource_version).transpose()?;
        // Only an explicit "any version" read may be served from a member's local state.
        let serializable = rv == Some("0") && with_rev == 0;

        let paging = opts.limit > 0;
        let mut limit = opts.limit.max(0);
        let mut items = Vec::new();
        let mut last_key: Option<Vec<u8>> = None;
        let mut has_more;
        let mut count;
        let mut first = true;
        loop {
            let start = continue_key.clone().unwrap_or_else(|| prefix.clone());
            let mut g = GetOptions::new().with_range(range_end.clone());
            if limit > 0 {
                g = g.with_limit(limit);
            }
            if with_rev > 0 {
                g = g.with_revision(with_rev);
            } else if serializable && first {
                g = g.with_serializable();
            }
            first = false;
            // Unpaged lists answer in one range response: lift tonic's 4 MiB decode limit
            // (10k pods are ~18 MB), as kube-apiserver sets MaxCallRecvMsgSize to MaxInt32.
            let mut kv = self
                .client
                .kv_client()
                .max_decoding_message_size(i32::MAX as usize);
            let resp = match self.timed(kv.get(start.as_str(), Some(g))).await? {
                Ok(r) => r,
                Err(e) => {
                    return Err(list_error(
                        e,
                        continuing,
                        continue_key.as_deref(),
                        &prefix,
                        with_rev,
                    ))
                }
            };
            let header_rev = header_revision(resp.header())?;
            validate_minimum(min_rv, header_rev)?;
            has_more = resp.more();
            count = resp.count();
            if resp.kvs().is_empty() && resp.more() {
                return Err(StorageError::Internal(
                    "no results were found, but etcd indicated there were more values remaining"
                        .into(),
                ));
            }
            // Every further page is read at the first page's revision: one consistent list.
            if with_rev == 0 {
                with_rev = header_rev;
            }
            for kv in resp.kvs() {
                if paging && items.len() as i64 >= opts.limit {
                    has_more = true;
                    break;
                }
                last_key = Some(kv.key().to_vec());
                let obj = self.decode_kv(kv.key(), kv.value(), kv.mod_revision())?;
                if filter.is_none_or(|f| f(&obj)) {
                    items.push(obj);
                }
            }
            if !has_more || !paging || items.len() as i64 >= opts.limit {
                break;
            }
            // The filter dropped items: fetch bigger pages until the bucket is full.
            if limit < MAX_LIMIT {
                limit = (limit * 2).min(MAX_LIMIT);
            }
            continue_key = last_key.as_ref().map(|k| next_key(k));
        }

        let mut continue_token = None;
        let mut remaining_item_count = None;
        if has_more {
            if let Some(k) = &last_key {
                continue_token = Some(encode_continue(&next_key(k), &prefix, with_rev)?);
                // The count includes items a filter would drop: only exact without one.
                if filter.is_none() && count > 0 {
                    remaining_item_count = Some(count - opts.limit);
                }
            }
        }
        Ok(ListResult {
            items,
            resource_version: with_rev,
            continue_token,
            remaining_item_count,
        })
    }

    /// Reads the current state of `key` (linearizable).
    async fn current_state(
        &self,
        key: &str,
        ignore_not_found: bool,
    ) -> Result<ObjState, StorageError> {
        let resp = self.range(key, GetOptions::new()).await?;
        state_from_range(self, key, &resp, ignore_not_found)
    }

    /// Reads, transforms with `f` and writes back `key`, retrying on conflict with the fresh
    /// object; an unchanged object is not written. Returns the stored object.
    pub async fn guaranteed_update<F, E>(
        &self,
        key: &str,
        pre: &Preconditions,
        dry_run: bool,
        mut f: F,
    ) -> Result<Value, UpdateError<E>>
    where
        F: FnMut(Value) -> Result<Value, E> + Send,
        E: Send,
    {
        let opts = UpdateOptions {
            preconditions: pre.clone(),
            dry_run,
            ..UpdateOptions::default()
        };
        self.update_loop(key, opts, |cur: Option<Value>| match cur {
            Some(v) => f(v).map_err(UpdateError::Rejected),
            // Unreachable without ignore_not_found, but an error is better than a panic.
            None => Err(UpdateError::Storage(StorageError::NotFound {
                key: key.to_string(),
            })),
        })
        .await
    }

    /// [`Storage::guaranteed_update`] with update-create (`ignore_not_found`: `f` gets `None`
    /// for a missing object) and a cached starting object.
    pub async fn guaranteed_update_with<F, E>(
        &self,
        key: &str,
        opts: UpdateOptions,
        mut f: F,
    ) -> Result<Value, UpdateError<E>>
    where
        F: FnMut(Option<Value>) -> Result<Value, E> + Send,
        E: Send,
    {
        self.update_loop(key, opts, |cur| f(cur).map_err(UpdateError::Rejected))
            .await
    }

    async fn update_loop<F, E>(
        &self,
        key: &str,
        opts: UpdateOptions,
        mut f: F,
    ) -> Result<Value, UpdateError<E>>
    where
        F: FnMut(Option<Value>) -> Result<Value, UpdateError<E>> + Send,
        E: Send,
    {
        let key = self.prepare_key(key)?;
        let pre = &opts.preconditions;
        if opts.dry_run {
            let state = self.current_state(&key, opts.ignore_not_found).await?;
            pre.check(&key, state.obj.as_ref())?;
            let mut new = f(state.obj)?;
            encode(&mut new)?;
            if state.rev > 0 {
                set_resource_version(&mut new, state.rev);
            }
            return Ok(new);
        }
        let (mut state, mut is_current) = match opts.cached {
            Some(c) => (state_from_object(c)?, false),
            None => (self.current_state(&key, opts.ignore_not_found).await?, true),
        };
        let mut resolved_ambiguity = false;
        for _ in 0..self.config.max_conflict_retries.max(1) {
            if let Err(e) = pre.check(&key, state.obj.as_ref()) {
                if is_current {
                    return Err(e.into());
                }
                state = self.current_state(&key, opts.ignore_not_found).await?;
                is_current = true;
                continue;
            }
            let mut new = match f(state.obj.clone()) {
                Ok(v) => v,
                Err(e) => {
                    if is_current {
                        return Err(e);
                    }
                    // The error may come from stale data: final only if the fresh read is
                    // the same revision.
                    let cached_rev = state.rev;
                    state = self.current_state(&key, opts.ignore_not_found).await?;
                    is_current = true;
                    if state.rev == cached_rev {
                        return Err(e);
                    }
                    continue;
                }
            };
            let data = encode(&mut new)?;
            // A no-op against a cached copy proves nothing: refresh and redo. The cached
            // copy's bytes are never encoded (that would cost an encode per update): its
            // tree is compared instead. Equal trees with different bytes (key order) only
            // cost the refresh, after which the byte comparison below decides as always.
            if !is_current && state.obj.as_ref().is_some_and(|o| same_object(o, &new)) {
                state = self.current_state(&key, opts.ignore_not_found).await?;
                is_current = true;
                continue;
            }
            // A stale value (older key, or plaintext) is rewritten even when unchanged.
            if is_current && state.obj.is_some() && data == state.data && !state.stale {
                debug!(
                    key,
                    rev = state.rev,
                    "guaranteed update: unchanged, not written"
                );
                return state.obj.ok_or_else(|| {
                    UpdateError::Storage(StorageError::Internal("lost current object".into()))
                });
            }
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.as_str(),
                    CompareOp::Equal,
                    state.rev,
                )])
                .and_then([TxnOp::put(
                    key.as_str(),
                    self.seal(&key, data.clone())?,
                    None,
                )])
                .or_else([TxnOp::get(key.as_str(), None)]);
            let resp = match self.txn(&key, txn).await {
                Ok(r) => r,
                Err(e) if is_ambiguous(&e) && !resolved_ambiguity => {
                    // The write may have been applied: the fresh object tells.
                    debug!(key, error = %e, "guaranteed update: outcome unknown, reading back");
                    resolved_ambiguity = true;
                    let fresh = self.current_state(&key, opts.ignore_not_found).await?;
                    if fresh.obj.is_some() && fresh.data == data {
                        self.last_write.note(&key, fresh.rev, true);
                        set_resource_version(&mut new, fresh.rev);
                        return Ok(new);
                    }
                    state = fresh;
                    is_current = true;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            if !resp.succeeded() {
                debug!(
                    key,
                    rev = state.rev,
                    "guaranteed update: conflict, retrying"
                );
                state = state_from_else(self, &key, &resp, opts.ignore_not_found)?;
                is_current = true;
                continue;
            }
            set_resource_version(&mut new, header_revision(resp.header())?);
            return Ok(new);
        }
        Err(StorageError::Conflict {
            key: key.clone(),
            message: format!(
                "too many concurrent updates to {key} ({} attempts), please retry",
                self.config.max_conflict_retries
            ),
        }
        .into())
    }

    /// Deletes `key` if `pre` holds and `check` accepts the current object, retrying on
    /// conflict. Returns the deleted object with resourceVersion = the deletion's revision.
    pub async fn delete<F, E>(
        &self,
        key: &str,
        pre: &Preconditions,
        dry_run: bool,
        mut check: F,
    ) -> Result<Value, UpdateError<E>>
    where
        F: FnMut(&Value) -> Result<(), E> + Send,
        E: Send,
    {
        let key = self.prepare_key(key)?;
        let mut state = self.current_state(&key, false).await?;
        if dry_run {
            let obj = state
                .obj
                .ok_or_else(|| StorageError::NotFound { key: key.clone() })?;
            pre.check(&key, Some(&obj))?;
            check(&obj).map_err(UpdateError::Rejected)?;
            return Ok(obj);
        }
        for _ in 0..self.config.max_conflict_retries.max(1) {
            let obj = state
                .obj
                .as_ref()
                .ok_or_else(|| StorageError::NotFound { key: key.clone() })?;
            // The state is always current here (read or Else(Get)), so errors are final.
            pre.check(&key, Some(obj))?;
            check(obj).map_err(UpdateError::Rejected)?;
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.as_str(),
                    CompareOp::Equal,
                    state.rev,
                )])
                .and_then([TxnOp::delete(key.as_str(), None)])
                .or_else([TxnOp::get(key.as_str(), None)]);
            let resp = self.txn(&key, txn).await?;
            if !resp.succeeded() {
                debug!(key, rev = state.rev, "delete: conflict, retrying");
                state = state_from_else(self, &key, &resp, false)?;
                continue;
            }
            let rev = header_revision(resp.header())?;
            return Ok(decode(key.as_bytes(), &state.data, rev)?);
        }
        Err(StorageError::Conflict {
            key: key.clone(),
            message: format!(
                "too many concurrent updates to {key} ({} attempts), please retry",
                self.config.max_conflict_retries
            ),
        }
        .into())
    }
}

/// `If(mod_revision == 0) Then(Put)`: create only if absent.
fn create_txn(key: &str, data: &[u8]) -> Txn {
    Txn::new()
        .when([Compare::mod_revision(key, CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key, data.to_vec(), None)])
}

fn header_revision(h: Option<&etcd_client::ResponseHeader>) -> Result<i64, StorageError> {
    h.map(|h| h.revision())
        .ok_or_else(|| StorageError::Internal("etcd response without a header".into()))
}

fn validate_minimum(min: Option<u64>, current: i64) -> Result<(), StorageError> {
    if let Some(min) = min {
        let current = current.max(0) as u64;
        if min > current {
            return Err(StorageError::TooLargeResourceVersion {
                requested: min,
                current,
            });
        }
    }
    Ok(())
}

fn next_key(k: &[u8]) -> String {
    let mut s = String::from_utf8_lossy(k).into_owned();
    s.push('\0');
    s
}

/// Upstream's `interpretListError`: a compacted revision is 410, and on a continued list the
/// Status carries a token that continues at the latest revision.
fn list_error(
    e: etcd_client::Error,
    continuing: bool,
    continue_key: Option<&str>,
    prefix: &str,
    with_rev: i64,
) -> StorageError {
    match classify(e) {
        EtcdFailure::Compacted if continuing => {
            let key = continue_key.unwrap_or(prefix);
            match encode_continue(key, prefix, -1) {
                Ok(token) => StorageError::Expired {
                    message: INCONSISTENT_CONTINUE.into(),
                    continue_token: Some(token),
                },
                Err(_) => StorageError::Expired {
                    message: CONTINUE_EXPIRED.into(),
                    continue_token: None,
                },
            }
        }
        EtcdFailure::Compacted => StorageError::Expired {
            message: LIST_EXPIRED.into(),
            continue_token: None,
        },
        EtcdFailure::FutureRevision => StorageError::TooLargeResourceVersion {
            requested: with_rev.max(0) as u64,
            current: 0,
        },
        EtcdFailure::Other(e) => e,
    }
}

fn state_from_range(
    s: &Storage,
    key: &str,
    resp: &GetResponse,
    ignore_not_found: bool,
) -> Result<ObjState, StorageError> {
    match resp.kvs().first() {
        Some(kv) => {
            // `data` is the plaintext: "unchanged" compares objects, not ciphertexts.
            let (plain, stale) = s.open(kv.key(), kv.value())?;
            Ok(ObjState {
                obj: Some(decode(kv.key(), &plain, kv.mod_revision())?),
                data: plain.into_owned(),
                rev: kv.mod_revision(),
                stale,
            })
        }
        None if ignore_not_found => Ok(ObjState {
            obj: None,
            data: Vec::new(),
            rev: 0,
            stale: false,
        }),
        None => Err(StorageError::NotFound {
            key: key.to_string(),
        }),
    }
}

fn state_from_else(
    s: &Storage,
    key: &str,
    resp: &etcd_client::TxnResponse,
    ignore_not_found: bool,
) -> Result<ObjState, StorageError> {
    match resp.op_responses().into_iter().next() {
        Some(TxnOpResponse::Get(r)) => state_from_range(s, key, &r, ignore_not_found),
        _ => Err(StorageError::Internal(
            "failed transaction without its Else(Get) response".into(),
        )),
    }
}

/// A caller's (cached) copy as the loop's starting state. Its `data` stays empty: the loop
/// compares a cached copy by tree ([`same_object`]), never by bytes, so it is not encoded.
fn state_from_object(mut obj: Value) -> Result<ObjState, StorageError> {
    let rv = parse_resource_version(codec::meta_str(Some(&obj), "resourceVersion"))? as i64;
    set_resource_version(&mut obj, rv);
    Ok(ObjState {
        obj: Some(obj),
        data: Vec::new(),
        rev: rv,
        stale: false,
    })
}

/// Whether `new` (as [`encode`] left it: no resourceVersion, no selfLink) is the object
/// `old` (as decoded: with its resourceVersion) apart from those two fields. Compares in
/// place, so an update from a cached copy needs neither a clone nor an encode of it.
fn same_object(old: &Value, new: &Value) -> bool {
    let (Some(o), Some(n)) = (old.as_object(), new.as_object()) else {
        return false;
    };
    let ignored = |k: &str| k == "resourceVersion" || k == "selfLink";
    let meta_eq = |om: Option<&Value>, nm: Option<&Value>| match (om, nm) {
        (Some(Value::Object(om)), Some(Value::Object(nm))) => {
            om.keys().filter(|k| !ignored(k.as_str())).count()
                == nm.keys().filter(|k| !ignored(k.as_str())).count()
                && om
                    .iter()
                    .filter(|(k, _)| !ignored(k.as_str()))
                    .all(|(k, v)| nm.get(k) == Some(v))
        }
        (om, nm) => om == nm,
    };
    o.len() == n.len()
        && o.iter().all(|(k, v)| {
            if k == "metadata" {
                meta_eq(Some(v), n.get("metadata"))
            } else {
                n.get(k) == Some(v)
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_object_ignores_only_resource_version_and_self_link() {
        let old = serde_json::json!({"kind": "Pod", "metadata": {"name": "a", "resourceVersion": "7", "labels": {"x": "1"}}, "spec": {"n": 1}});
        let mut new = old.clone();
        encode(&mut new).unwrap();
        assert!(same_object(&old, &new));
        let mut changed = new.clone();
        changed["spec"]["n"] = serde_json::json!(2);
        assert!(!same_object(&old, &changed));
        let mut label = new.clone();
        label["metadata"]["labels"]["y"] = serde_json::json!("2");
        assert!(!same_object(&old, &label));
        let mut extra = new.clone();
        extra["status"] = serde_json::json!({});
        assert!(!same_object(&old, &extra));
        let mut meta_extra = new.clone();
        meta_extra["metadata"]["generation"] = serde_json::json!(1);
        assert!(!same_object(&old, &meta_extra));
        let mut no_meta = new.clone();
        no_meta.as_object_mut().unwrap().remove("metadata");
        assert!(!same_object(&old, &no_meta));
    }

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end(b"/registry/pods/"), b"/registry/pods0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }

    #[test]
    fn minimum_resource_version() {
        assert!(validate_minimum(None, 3).is_ok());
        assert!(validate_minimum(Some(3), 3).is_ok());
        assert_eq!(
            validate_minimum(Some(4), 3).unwrap_err(),
            StorageError::TooLargeResourceVersion {
                requested: 4,
                current: 3
            }
        );
    }
}

/// Extra attempts of a store call that failed on the way to one member (the balanced client
/// picks another member, or the same one after it came back).
const STORE_RETRIES: u32 = 3;

fn retry_backoff(attempt: u32) -> std::time::Duration {
    std::time::Duration::from_millis(50 * u64::from(attempt))
}

/// The message of a transport-level failure, wherever etcd-client put it.
fn failure_text(e: &etcd_client::Error) -> Option<String> {
    match e {
        etcd_client::Error::GRpcStatus(s) => match s.code() {
            tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown => {
                Some(format!("{:?}: {}", s.code(), s.message()))
            }
            _ => None,
        },
        etcd_client::Error::TransportError(t) => Some(format!("transport: {t:?}")),
        etcd_client::Error::IoError(io) => Some(format!("io: {io}")),
        _ => None,
    }
}

/// Reads are repeated after any transport failure or a member's refusal (Unavailable,
/// Cancelled, a reset connection), never after an answer such as "compacted".
fn retryable_read(e: &etcd_client::Error) -> bool {
    failure_text(e).is_some()
}

/// True when the request cannot have reached a member: the connection was never made.
fn never_sent(e: &etcd_client::Error) -> bool {
    failure_text(e).is_some_and(|t| {
        let t = t.to_ascii_lowercase();
        t.contains("connect error")
            || t.contains("error trying to connect")
            || t.contains("connection refused")
            || t.contains("refused_stream")
            || t.contains("refused stream")
    })
}

#[cfg(test)]
mod retry_tests {
    use super::*;

    #[test]
    fn reads_retry_on_transport_failures_only() {
        let cancelled = etcd_client::Error::GRpcStatus(tonic::Status::cancelled("h2 reset"));
        let compacted = etcd_client::Error::GRpcStatus(tonic::Status::out_of_range(
            "etcdserver: mvcc: required revision has been compacted",
        ));
        assert!(retryable_read(&cancelled));
        assert!(!retryable_read(&compacted));
    }

    #[test]
    fn writes_retry_only_when_never_sent() {
        let refused = etcd_client::Error::GRpcStatus(tonic::Status::unavailable(
            "error trying to connect: tcp connect error: Connection refused (os error 111)",
        ));
        let cancelled = etcd_client::Error::GRpcStatus(tonic::Status::cancelled("h2 reset"));
        let no_leader =
            etcd_client::Error::GRpcStatus(tonic::Status::unavailable("etcdserver: no leader"));
        assert!(never_sent(&refused));
        assert!(!never_sent(&cancelled));
        assert!(!never_sent(&no_leader));
        // Not repeated blindly, but not a final answer either: a cancelled create or update is
        // resolved by reading the key back (it may have been applied).
        assert!(is_ambiguous(&etcd_error(cancelled, UNEXPECTED)));
    }
}
