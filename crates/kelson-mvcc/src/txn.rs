//! Static checks of requests and the compare predicate, as etcd's API layer and applier do them.
//!
//! etcd validates a request before it reaches the store (`checkRangeRequest`, `checkPutRequest`,
//! `checkTxnRequest` with `checkIntervals`): empty keys, `ignore_value` with a value, and a txn
//! that writes a key twice (or puts a key a delete range covers) are rejected as a whole. We run
//! the same checks inside `apply` so that every member rejects the same entries, whatever the
//! proposer checked.

use kelson_etcdpb::etcdserverpb::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    request_op::Request,
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use kelson_etcdpb::mvccpb::KeyValue;

use crate::MvccError;

/// A key range as etcd interprets `(key, range_end)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyRange<'a> {
    /// `range_end` empty: the single key.
    Point(&'a [u8]),
    /// `[start, end)`, `end == None` meaning unbounded (`range_end == "\0"`).
    Span(&'a [u8], Option<&'a [u8]>),
}

impl<'a> KeyRange<'a> {
    pub fn new(key: &'a [u8], range_end: &'a [u8]) -> KeyRange<'a> {
        match range_end {
            [] => KeyRange::Point(key),
            [0] => KeyRange::Span(key, None),
            end => KeyRange::Span(key, Some(end)),
        }
    }

    pub fn contains(&self, k: &[u8]) -> bool {
        match *self {
            KeyRange::Point(p) => p == k,
            KeyRange::Span(s, e) => s <= k && e.is_none_or(|e| k < e),
        }
    }
}

pub fn check_range(r: &RangeRequest) -> Result<(), MvccError> {
    if r.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    Ok(())
}

pub fn check_put(p: &PutRequest) -> Result<(), MvccError> {
    if p.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    if p.ignore_value && !p.value.is_empty() {
        return Err(MvccError::ValueProvided);
    }
    if p.ignore_lease && p.lease != 0 {
        return Err(MvccError::LeaseProvided);
    }
    Ok(())
}

pub fn check_delete(d: &DeleteRangeRequest) -> Result<(), MvccError> {
    if d.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    Ok(())
}

/// Validates every op of both branches (recursively) and the duplicate-key rule.
pub fn check_txn(t: &TxnRequest) -> Result<(), MvccError> {
    for op in t.success.iter().chain(&t.failure) {
        match &op.request {
            Some(Request::RequestRange(r)) => check_range(r)?,
            Some(Request::RequestPut(p)) => check_put(p)?,
            Some(Request::RequestDeleteRange(d)) => check_delete(d)?,
            Some(Request::RequestTxn(t)) => check_txn(t)?,
            None => {}
        }
    }
    check_intervals(&t.success)?;
    check_intervals(&t.failure)?;
    Ok(())
}

/// etcd's `checkIntervals`: returns the keys put and ranges deleted by `ops` (including nested
/// txns); a key put twice, or put and covered by a delete, is a DuplicateKey. The success and
/// failure branches of a nested txn may put the same key, since only one of them runs.
fn check_intervals(ops: &[RequestOp]) -> Result<(Vec<&[u8]>, Vec<KeyRange<'_>>), MvccError> {
    let mut dels: Vec<KeyRange<'_>> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(Request::RequestDeleteRange(d)) => Some(KeyRange::new(&d.key, &d.range_end)),
            _ => None,
        })
        .collect();
    let mut puts: Vec<&[u8]> = Vec::new();
    let covered = |dels: &[KeyRange<'_>], k: &[u8]| dels.iter().any(|d| d.contains(k));
    for op in ops {
        let Some(Request::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || covered(&dels, k) {
                return Err(MvccError::DuplicateKey);
            }
            puts.push(k);
        }
        for k in &puts_else {
            if (puts.contains(k) && !puts_then.contains(k)) || covered(&dels, k) {
                return Err(MvccError::DuplicateKey);
            }
            if !puts.contains(k) {
                puts.push(k);
            }
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let Some(Request::RequestPut(p)) = &op.request else {
            continue;
        };
        let k = p.key.as_slice();
        if puts.contains(&k) || covered(&dels, k) {
            return Err(MvccError::DuplicateKey);
        }
        puts.push(k);
    }
    Ok((puts, dels))
}

/// True if the txn contains any put or delete, in either branch, at any depth.
pub fn has_writes(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(&t.failure)
        .any(|op| match &op.request {
            Some(Request::RequestPut(_)) | Some(Request::RequestDeleteRange(_)) => true,
            Some(Request::RequestTxn(t)) => has_writes(t),
            _ => false,
        })
}

/// True if the txn contains any put (what etcd's quota charges for, so NOSPACE rejects it).
pub fn has_puts(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(&t.failure)
        .any(|op| match &op.request {
            Some(Request::RequestPut(_)) => true,
            Some(Request::RequestTxn(t)) => has_puts(t),
            _ => false,
        })
}

/// etcd's `compareKV`: compares one key-value (the zero KeyValue for a missing key) against the
/// predicate. A target value of the wrong union variant compares against 0 / empty, as in etcd.
pub fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    use std::cmp::Ordering;
    let ord: Ordering = match CompareTarget::try_from(c.target) {
        Ok(CompareTarget::Value) => {
            let v: &[u8] = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_slice().cmp(v)
        }
        Ok(CompareTarget::Create) => kv.create_revision.cmp(&match c.target_union {
            Some(TargetUnion::CreateRevision(r)) => r,
            _ => 0,
        }),
        Ok(CompareTarget::Mod) => kv.mod_revision.cmp(&match c.target_union {
            Some(TargetUnion::ModRevision(r)) => r,
            _ => 0,
        }),
        Ok(CompareTarget::Version) => kv.version.cmp(&match c.target_union {
            Some(TargetUnion::Version(r)) => r,
            _ => 0,
        }),
        Ok(CompareTarget::Lease) => kv.lease.cmp(&match c.target_union {
            Some(TargetUnion::Lease(r)) => r,
            _ => 0,
        }),
        Err(_) => Ordering::Equal,
    };
    match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => ord.is_eq(),
        Ok(CompareResult::NotEqual) => ord.is_ne(),
        Ok(CompareResult::Greater) => ord.is_gt(),
        Ok(CompareResult::Less) => ord.is_lt(),
        Err(_) => true,
    }
}

/// etcd's `applyCompare` over the key-values the compare's range holds: VALUE on no keys is
/// false; otherwise every key must satisfy it (no keys: the zero KeyValue must).
pub fn compare_all(c: &Compare, kvs: &[KeyValue]) -> bool {
    if kvs.is_empty() {
        if c.target == CompareTarget::Value as i32 {
            return false;
        }
        return compare_kv(c, &KeyValue::default());
    }
    kvs.iter().all(|kv| compare_kv(c, kv))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: k.into(),
                value: b"v".to_vec(),
                ..Default::default()
            })),
        }
    }
    fn del(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                key: k.into(),
                range_end: end.into(),
                ..Default::default()
            })),
        }
    }
    fn txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
        TxnRequest {
            compare: vec![],
            success,
            failure,
        }
    }
    fn nested(t: TxnRequest) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestTxn(t)),
        }
    }

    #[test]
    fn duplicate_rules() {
        assert!(check_txn(&txn(vec![put("a"), put("b")], vec![put("a")])).is_ok());
        assert!(matches!(
            check_txn(&txn(vec![put("a"), put("a")], vec![])),
            Err(MvccError::DuplicateKey)
        ));
        assert!(matches!(
            check_txn(&txn(vec![put("b"), del("a", "c")], vec![])),
            Err(MvccError::DuplicateKey)
        ));
        assert!(matches!(
            check_txn(&txn(vec![del("a", "\0"), put("zzz")], vec![])),
            Err(MvccError::DuplicateKey)
        ));
        // Outside the deleted range is fine; two deletes may overlap.
        assert!(check_txn(&txn(vec![del("a", "c"), del("b", ""), put("c")], vec![])).is_ok());
        // Then/else of a nested txn may both put a key, but not alongside the outer level.
        let inner = txn(vec![put("x")], vec![put("x")]);
        assert!(check_txn(&txn(vec![nested(inner.clone())], vec![])).is_ok());
        assert!(matches!(
            check_txn(&txn(vec![nested(inner.clone()), put("x")], vec![])),
            Err(MvccError::DuplicateKey)
        ));
        assert!(matches!(
            check_txn(&txn(vec![nested(inner), del("x", "")], vec![])),
            Err(MvccError::DuplicateKey)
        ));
    }

    #[test]
    fn static_checks_recurse() {
        let bad = txn(
            vec![],
            vec![nested(txn(
                vec![RequestOp {
                    request: Some(Request::RequestPut(PutRequest {
                        key: b"k".to_vec(),
                        value: b"v".to_vec(),
                        ignore_value: true,
                        ..Default::default()
                    })),
                }],
                vec![],
            ))],
        );
        assert!(matches!(check_txn(&bad), Err(MvccError::ValueProvided)));
        assert!(matches!(
            check_txn(&txn(vec![put("")], vec![])),
            Err(MvccError::EmptyKey)
        ));
        assert!(has_writes(&bad) && has_puts(&bad));
        assert!(!has_puts(&txn(vec![del("a", "")], vec![])));
    }

    #[test]
    fn compare_semantics() {
        let kv = KeyValue {
            key: b"k".to_vec(),
            value: b"m".to_vec(),
            version: 3,
            create_revision: 2,
            mod_revision: 5,
            lease: 7,
        };
        let c = |target: CompareTarget, result: CompareResult, u: TargetUnion| Compare {
            result: result as i32,
            target: target as i32,
            key: b"k".to_vec(),
            target_union: Some(u),
            range_end: vec![],
        };
        use CompareResult::*;
        use CompareTarget as T;
        assert!(compare_kv(
            &c(T::Value, Equal, TargetUnion::Value(b"m".to_vec())),
            &kv
        ));
        assert!(compare_kv(
            &c(T::Value, Greater, TargetUnion::Value(b"a".to_vec())),
            &kv
        ));
        assert!(compare_kv(
            &c(T::Value, Less, TargetUnion::Value(b"z".to_vec())),
            &kv
        ));
        assert!(compare_kv(
            &c(T::Version, NotEqual, TargetUnion::Version(2)),
            &kv
        ));
        assert!(compare_kv(
            &c(T::Create, Equal, TargetUnion::CreateRevision(2)),
            &kv
        ));
        assert!(!compare_kv(
            &c(T::Mod, Less, TargetUnion::ModRevision(5)),
            &kv
        ));
        assert!(compare_kv(&c(T::Lease, Equal, TargetUnion::Lease(7)), &kv));
        // Missing key: VALUE always false, others compare against zero.
        assert!(!compare_all(
            &c(T::Value, NotEqual, TargetUnion::Value(b"x".to_vec())),
            &[]
        ));
        assert!(compare_all(
            &c(T::Mod, Equal, TargetUnion::ModRevision(0)),
            &[]
        ));
    }
}
