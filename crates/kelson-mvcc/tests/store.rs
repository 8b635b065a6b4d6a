//! Behaviour of the MVCC store as etcd clients observe it.

mod common;

use common::{keys, Fx};
use kelson_etcdpb::etcdserverpb::{
    alarm_request::AlarmAction,
    compare::{CompareResult, CompareTarget, TargetUnion},
    range_request::{SortOrder, SortTarget},
    request_op::Request,
    response_op::Response as OpResponse,
    AlarmRequest, AlarmType, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest, TxnResponse,
};
use kelson_etcdpb::internal::{internal_request::Request as IReq, internal_response::Response};
use kelson_etcdpb::mvccpb::event::EventType;
use kelson_mvcc::{Applied, MvccError};

fn put_op(k: &str, v: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestPut(PutRequest {
            key: k.into(),
            value: v.into(),
            prev_kv: true,
            ..Default::default()
        })),
    }
}

fn get_op(k: &str, end: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestRange(RangeRequest {
            key: k.into(),
            range_end: end.into(),
            ..Default::default()
        })),
    }
}

fn del_op(k: &str, end: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
            key: k.into(),
            range_end: end.into(),
            prev_kv: true,
        })),
    }
}

fn cmp(k: &str, target: CompareTarget, result: CompareResult, u: TargetUnion) -> Compare {
    Compare {
        result: result as i32,
        target: target as i32,
        key: k.into(),
        target_union: Some(u),
        range_end: vec![],
    }
}

fn txn_resp(a: &Applied) -> TxnResponse {
    match &a.response.response {
        Some(Response::Txn(t)) => t.clone(),
        other => panic!("not a txn response: {other:?} / {}", a.response.error),
    }
}

#[test]
fn revisions_versions_and_tombstones() {
    let mut fx = Fx::new();
    assert_eq!(fx.m.current_revision(), 1, "empty store is at revision 1");
    let a = fx.put("a", "1");
    assert_eq!(a.revision, 2);
    let kv = fx.get("a").unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 2, 1));
    fx.put("a", "2");
    let kv = fx.get("a").unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
    assert_eq!(kv.value, b"2");

    let d = fx.del("a", "");
    assert_eq!(d.revision, 4);
    match &d.response.response {
        Some(Response::DeleteRange(r)) => {
            assert_eq!(r.deleted, 1);
            assert_eq!(r.prev_kvs[0].value, b"2");
            assert_eq!(r.header.as_ref().unwrap().revision, 4);
        }
        other => panic!("{other:?}"),
    }
    assert!(fx.get("a").is_none());
    // Deleting nothing does not take a revision.
    let d = fx.del("a", "");
    assert_eq!(d.revision, 4);
    assert!(d.events.is_empty());
    assert_eq!(fx.m.current_revision(), 4);

    fx.put("a", "3");
    let kv = fx.get("a").unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (5, 5, 1));
    // History.
    assert_eq!(fx.get_at("a", 1), None);
    assert_eq!(fx.get_at("a", 2).unwrap().value, b"1");
    assert_eq!(fx.get_at("a", 3).unwrap().version, 2);
    assert_eq!(fx.get_at("a", 4), None);
    assert_eq!(fx.m.key_count(), 1);

    // Put's prev_kv.
    let a = fx.apply(IReq::Put(PutRequest {
        key: "a".into(),
        value: "4".into(),
        prev_kv: true,
        ..Default::default()
    }));
    match &a.response.response {
        Some(Response::Put(p)) => {
            assert_eq!(p.prev_kv.as_ref().unwrap().value, b"3");
            assert_eq!(p.header.as_ref().unwrap().revision, 6);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn put_validation_errors() {
    let mut fx = Fx::new();
    let err = |a: Applied| (a.response.error, a.response.error_code);
    let put = |k: &str, v: &str, lease: i64, iv: bool, il: bool| {
        IReq::Put(PutRequest {
            key: k.into(),
            value: v.into(),
            lease,
            ignore_value: iv,
            ignore_lease: il,
            prev_kv: false,
        })
    };
    assert_eq!(
        err(fx.apply(put("", "v", 0, false, false))),
        ("etcdserver: key is not provided".into(), 3)
    );
    assert_eq!(
        err(fx.apply(put("k", "v", 99, false, false))),
        ("etcdserver: requested lease not found".into(), 5)
    );
    assert_eq!(
        err(fx.apply(put("k", "", 0, true, false))),
        ("etcdserver: key not found".into(), 3)
    );
    assert_eq!(
        err(fx.apply(put("k", "v", 0, true, false))).0,
        "etcdserver: value is provided"
    );
    assert_eq!(
        err(fx.apply(put("k", "", 5, false, true))).0,
        "etcdserver: lease is provided"
    );
    assert_eq!(
        fx.m.current_revision(),
        1,
        "failed requests take no revision"
    );

    fx.grant(5, 60);
    fx.put_lease("k", "v", 5);
    // ignore_value keeps the value, ignore_lease keeps the lease.
    let a = fx.apply(put("k", "", 0, true, true));
    assert_eq!(a.response.error, "");
    let kv = fx.get("k").unwrap();
    assert_eq!(
        (kv.value.as_slice(), kv.lease, kv.version),
        (&b"v"[..], 5, 2)
    );
    fx.apply(put("k", "w", 0, false, true));
    let kv = fx.get("k").unwrap();
    assert_eq!((kv.value.as_slice(), kv.lease), (&b"w"[..], 5));
    fx.apply(put("k", "x", 0, false, false));
    assert_eq!(fx.get("k").unwrap().lease, 0);
    assert!(
        fx.m.lease_keys(5).is_empty(),
        "re-put without lease detaches"
    );
}

fn seed_range_data(fx: &mut Fx) {
    // rev 2..: a b c d e, then update b twice, c once.
    for (k, v) in [("a", "5"), ("b", "4"), ("c", "3"), ("d", "2"), ("e", "1")] {
        fx.put(k, v);
    }
    fx.put("b", "4b"); // 7
    fx.put("b", "4c"); // 8
    fx.put("c", "3b"); // 9
    fx.put("foo/1", "x"); // 10
    fx.put("foo/2", "y"); // 11
    fx.put("fop", "z"); // 12
}

fn rr(key: &str, end: &str) -> RangeRequest {
    RangeRequest {
        key: key.into(),
        range_end: end.into(),
        ..Default::default()
    }
}

#[test]
fn range_options() {
    let mut fx = Fx::new();
    seed_range_data(&mut fx);
    let r = |req: RangeRequest| fx.m.range(&req).unwrap();

    // Single key, prefix, from-key, all.
    assert_eq!(keys(&r(rr("b", "")).kvs), ["b"]);
    assert_eq!(keys(&r(rr("foo/", "foo0")).kvs), ["foo/1", "foo/2"]);
    assert_eq!(keys(&r(rr("e", "\0")).kvs), ["e", "foo/1", "foo/2", "fop"]);
    assert_eq!(r(rr("\0", "\0")).count, 8);
    assert!(r(rr("z", "a")).kvs.is_empty(), "end before key is empty");
    assert_eq!(r(rr("a", "")).header.unwrap().revision, 12);

    // limit / more / count.
    let resp = r(RangeRequest {
        limit: 3,
        ..rr("a", "\0")
    });
    assert_eq!(keys(&resp.kvs), ["a", "b", "c"]);
    assert!(resp.more);
    assert_eq!(resp.count, 8);
    let resp = r(RangeRequest {
        limit: 8,
        ..rr("a", "\0")
    });
    assert!(!resp.more);
    assert_eq!(resp.kvs.len(), 8);

    // count_only and keys_only.
    let resp = r(RangeRequest {
        count_only: true,
        ..rr("a", "e")
    });
    assert!(resp.kvs.is_empty() && !resp.more);
    assert_eq!(resp.count, 4);
    let resp = r(RangeRequest {
        keys_only: true,
        ..rr("a", "c")
    });
    assert_eq!(keys(&resp.kvs), ["a", "b"]);
    assert!(resp
        .kvs
        .iter()
        .all(|kv| kv.value.is_empty() && kv.version > 0));

    // Sorting.
    let sorted = |order: SortOrder, target: SortTarget, limit: i64| {
        let resp =
            fx.m.range(&RangeRequest {
                sort_order: order as i32,
                sort_target: target as i32,
                limit,
                ..rr("a", "f")
            })
            .unwrap();
        (keys(&resp.kvs), resp.more)
    };
    assert_eq!(
        sorted(SortOrder::Descend, SortTarget::Key, 0).0,
        ["e", "d", "c", "b", "a"]
    );
    assert_eq!(
        sorted(SortOrder::Ascend, SortTarget::Value, 0).0,
        ["e", "d", "c", "b", "a"]
    );
    // NONE with a non-key target sorts ascending, as etcd.
    assert_eq!(
        sorted(SortOrder::None, SortTarget::Value, 0).0,
        ["e", "d", "c", "b", "a"]
    );
    assert_eq!(
        sorted(SortOrder::Descend, SortTarget::Version, 2),
        (vec!["b".to_string(), "c".to_string()], true)
    );
    assert_eq!(sorted(SortOrder::Descend, SortTarget::Mod, 1).0, ["c"]);
    assert_eq!(
        sorted(SortOrder::Ascend, SortTarget::Create, 0).0,
        ["a", "b", "c", "d", "e"]
    );
    assert_eq!(
        sorted(SortOrder::Descend, SortTarget::Create, 0).0,
        ["e", "d", "c", "b", "a"]
    );

    // Revision filters (applied after the index count, like etcd).
    let resp = r(RangeRequest {
        min_mod_revision: 7,
        ..rr("a", "f")
    });
    assert_eq!(keys(&resp.kvs), ["b", "c"]);
    assert_eq!(resp.count, 5);
    let resp = r(RangeRequest {
        max_mod_revision: 6,
        ..rr("a", "f")
    });
    assert_eq!(keys(&resp.kvs), ["a", "d", "e"]);
    let resp = r(RangeRequest {
        min_create_revision: 4,
        max_create_revision: 5,
        ..rr("a", "f")
    });
    assert_eq!(keys(&resp.kvs), ["c", "d"]);
    let resp = r(RangeRequest {
        min_create_revision: 3,
        limit: 1,
        ..rr("a", "f")
    });
    assert_eq!((keys(&resp.kvs), resp.more), (vec!["b".to_string()], true));

    // Historical read: b at 7 was "4b"; count of the whole range at rev 4 is 3.
    assert_eq!(fx.get_at("b", 7).unwrap().value, b"4b");
    let resp = r(RangeRequest {
        revision: 4,
        ..rr("\0", "\0")
    });
    assert_eq!(keys(&resp.kvs), ["a", "b", "c"]);
    assert_eq!(
        resp.header.unwrap().revision,
        12,
        "header is the current revision"
    );

    // Errors.
    assert!(matches!(
        fx.m.range(&RangeRequest {
            revision: 13,
            ..rr("a", "")
        }),
        Err(MvccError::FutureRev)
    ));
    assert!(matches!(fx.m.range(&rr("", "")), Err(MvccError::EmptyKey)));
}

#[test]
fn compaction_and_compacted_errors() {
    let mut fx = Fx::new();
    fx.put("a", "1"); // 2
    fx.put("a", "2"); // 3
    fx.put("b", "1"); // 4
    fx.del("b", ""); // 5
    fx.put("c", "1"); // 6
    let hash_before = fx.m.hash_kv(6).unwrap();

    let a = fx.compact(7);
    assert_eq!(
        a.response.error,
        "etcdserver: mvcc: required revision is a future revision"
    );
    assert_eq!(a.response.error_code, 11);
    let a = fx.compact(5);
    assert_eq!(a.response.error, "");
    assert_eq!(a.revision, 6, "compaction takes no revision");
    assert_eq!(fx.m.compact_revision(), 5);
    let a = fx.compact(5);
    assert_eq!(
        a.response.error,
        "etcdserver: mvcc: required revision has been compacted"
    );
    let a = fx.compact(3);
    assert_eq!(a.response.error_code, 11);

    // Reads below 5 fail, at 5 and above see the same as before.
    let err =
        fx.m.range(&RangeRequest {
            revision: 4,
            ..rr("a", "")
        })
        .unwrap_err();
    assert!(matches!(err, MvccError::Compacted));
    assert_eq!(
        err.to_string(),
        "etcdserver: mvcc: required revision has been compacted"
    );
    assert_eq!(fx.get_at("a", 5).unwrap().value, b"2");
    assert_eq!(fx.get_at("b", 5), None);
    assert_eq!(keys(&fx.all_at(5)), ["a"]);
    assert_eq!(keys(&fx.all_at(6)), ["a", "c"]);
    // Only the kept revisions remain on disk: a@3 and c@6 (b's put and tombstone are gone).
    let cf = fx.db.cf_handle("kv").unwrap();
    let n = fx.db.iterator_cf(&cf, rocksdb::IteratorMode::Start).count();
    assert_eq!(n, 2);
    // etcd refuses only revisions below the compact revision (a watch may start at it).
    assert!(matches!(fx.m.events(4, 6, 0), Err(MvccError::Compacted)));
    assert!(fx.m.events(5, 6, 0).is_ok());
    assert_eq!(fx.m.events(6, 6, 0).unwrap().len(), 1);
    assert!(matches!(fx.m.hash_kv(4), Err(MvccError::Compacted)));
    assert_ne!(fx.m.hash_kv(6).unwrap().0, hash_before.0);
    assert_eq!(fx.m.hash_kv(0).unwrap().1, 5);

    // Compacting at the current revision, then writing on.
    assert_eq!(fx.compact(6).response.error, "");
    fx.put("a", "3");
    assert_eq!(
        fx.get("a").unwrap().version,
        3,
        "version survives compaction"
    );
    assert_eq!(fx.get("a").unwrap().create_revision, 2);
}

#[test]
fn txn_compares_branches_and_own_writes() {
    let mut fx = Fx::new();
    fx.put("k", "v"); // 2
    fx.put("k", "v2"); // 3, create 2, version 2
    fx.put("r1", "x"); // 4
    fx.put("r2", "x"); // 5
    use CompareResult::*;
    use CompareTarget as T;
    let cases = [
        (
            cmp("k", T::Value, Equal, TargetUnion::Value("v2".into())),
            true,
        ),
        (
            cmp("k", T::Value, Greater, TargetUnion::Value("v1".into())),
            true,
        ),
        (
            cmp("k", T::Value, Less, TargetUnion::Value("v1".into())),
            false,
        ),
        (
            cmp("k", T::Value, NotEqual, TargetUnion::Value("v2".into())),
            false,
        ),
        (cmp("k", T::Version, Equal, TargetUnion::Version(2)), true),
        (
            cmp("k", T::Version, Greater, TargetUnion::Version(2)),
            false,
        ),
        (
            cmp("k", T::Create, Equal, TargetUnion::CreateRevision(2)),
            true,
        ),
        (
            cmp("k", T::Create, Less, TargetUnion::CreateRevision(3)),
            true,
        ),
        (cmp("k", T::Mod, Equal, TargetUnion::ModRevision(3)), true),
        (
            cmp("k", T::Mod, NotEqual, TargetUnion::ModRevision(3)),
            false,
        ),
        (cmp("k", T::Lease, Equal, TargetUnion::Lease(0)), true),
        (
            cmp("missing", T::Mod, Equal, TargetUnion::ModRevision(0)),
            true,
        ),
        (
            cmp("missing", T::Version, Greater, TargetUnion::Version(0)),
            false,
        ),
        (
            cmp(
                "missing",
                T::Value,
                NotEqual,
                TargetUnion::Value("a".into()),
            ),
            false,
        ),
    ];
    for (c, want) in cases {
        let t = TxnRequest {
            compare: vec![c.clone()],
            success: vec![get_op("k", "")],
            failure: vec![],
        };
        // The read-only path and the applied path agree.
        let ro = fx.m.txn_read_only(&t).unwrap();
        assert_eq!(ro.succeeded, want, "{c:?}");
        let ap = txn_resp(&fx.apply(IReq::Txn(t)));
        assert_eq!(ap.succeeded, want, "{c:?}");
        assert_eq!(
            ap.header.unwrap().revision,
            5,
            "read-only txn takes no revision"
        );
    }
    // Range compare: every key must satisfy it.
    let mut c = cmp("r1", T::Value, Equal, TargetUnion::Value("x".into()));
    c.range_end = "r3".into();
    let t = TxnRequest {
        compare: vec![c.clone()],
        ..Default::default()
    };
    assert!(fx.m.txn_read_only(&t).unwrap().succeeded);
    fx.put("r2", "y");
    assert!(!fx.m.txn_read_only(&t).unwrap().succeeded);

    // Writes: the failure branch runs, puts share one main revision with increasing subs, and
    // a read inside the txn sees the txn's own writes.
    let rev0 = fx.m.current_revision();
    let t = TxnRequest {
        compare: vec![cmp("k", T::Value, Equal, TargetUnion::Value("nope".into()))],
        success: vec![put_op("s", "1")],
        failure: vec![
            put_op("f1", "1"),
            put_op("f2", "2"),
            get_op("f", "g"),
            del_op("r1", ""),
        ],
    };
    let a = fx.apply(IReq::Txn(t));
    let resp = txn_resp(&a);
    assert!(!resp.succeeded);
    assert_eq!(a.revision, rev0 + 1);
    assert_eq!(resp.header.unwrap().revision, rev0 + 1);
    match &resp.responses[2].response {
        Some(OpResponse::ResponseRange(r)) => assert_eq!(keys(&r.kvs), ["f1", "f2"]),
        other => panic!("{other:?}"),
    }
    assert_eq!(a.events.len(), 3);
    assert!(a
        .events
        .iter()
        .all(|e| e.kv.as_ref().unwrap().mod_revision == rev0 + 1));
    assert_eq!(a.events[2].r#type, EventType::Delete as i32);
    assert!(fx.get("s").is_none());
    assert_eq!(fx.get("f2").unwrap().mod_revision, rev0 + 1);

    // Nested txns: the inner compare is evaluated against the state before the outer txn.
    let inner = TxnRequest {
        compare: vec![cmp("n", T::Version, Equal, TargetUnion::Version(0))],
        success: vec![put_op("inner-yes", "1")],
        failure: vec![put_op("inner-no", "1")],
    };
    let outer = TxnRequest {
        compare: vec![],
        success: vec![
            put_op("n", "1"),
            RequestOp {
                request: Some(Request::RequestTxn(inner)),
            },
        ],
        failure: vec![],
    };
    let resp = txn_resp(&fx.apply(IReq::Txn(outer)));
    assert!(resp.succeeded);
    match &resp.responses[1].response {
        Some(OpResponse::ResponseTxn(t)) => assert!(t.succeeded),
        other => panic!("{other:?}"),
    }
    assert!(fx.get("inner-yes").is_some() && fx.get("inner-no").is_none());

    // Duplicate keys reject the whole txn.
    let rev = fx.m.current_revision();
    let a = fx.apply(IReq::Txn(TxnRequest {
        compare: vec![],
        success: vec![put_op("d", "1"), put_op("d", "2")],
        failure: vec![],
    }));
    assert_eq!(
        a.response.error,
        "etcdserver: duplicate key given in txn request"
    );
    assert_eq!(a.response.error_code, 3);
    assert_eq!(fx.m.current_revision(), rev);
    assert!(fx.get("d").is_none());

    // A failing check on the taken path (missing lease) rejects it all, nothing written.
    let a = fx.apply(IReq::Txn(TxnRequest {
        compare: vec![],
        success: vec![
            put_op("ok", "1"),
            RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: "bad".into(),
                    lease: 42,
                    ..Default::default()
                })),
            },
        ],
        failure: vec![],
    }));
    assert_eq!(a.response.error, "etcdserver: requested lease not found");
    assert!(fx.get("ok").is_none());
    assert!(matches!(
        fx.m.txn_read_only(&TxnRequest {
            success: vec![put_op("x", "1")],
            ..Default::default()
        }),
        Err(MvccError::NotReadOnly)
    ));
}

#[test]
fn events_in_order_with_prev_kv_and_whole_revisions() {
    let mut fx = Fx::new();
    fx.put("a", "1"); // 2
    fx.put("a", "2"); // 3
    fx.apply(IReq::Txn(TxnRequest {
        success: vec![put_op("b", "1"), put_op("c", "1"), put_op("d", "1")],
        ..Default::default()
    })); // 4 (3 events)
    let d = fx.del("a", "c"); // 5: a, b
    assert_eq!(d.events.len(), 2);
    let evs = fx.m.events(2, 100, 0).unwrap();
    let summary: Vec<(i64, i32, String)> = evs
        .iter()
        .map(|e| {
            let kv = e.kv.as_ref().unwrap();
            (
                kv.mod_revision,
                e.r#type,
                String::from_utf8(kv.key.clone()).unwrap(),
            )
        })
        .collect();
    let (put, del) = (EventType::Put as i32, EventType::Delete as i32);
    assert_eq!(
        summary,
        vec![
            (2, put, "a".into()),
            (3, put, "a".into()),
            (4, put, "b".into()),
            (4, put, "c".into()),
            (4, put, "d".into()),
            (5, del, "a".into()),
            (5, del, "b".into()),
        ]
    );
    assert!(evs[0].prev_kv.is_none());
    assert_eq!(evs[1].prev_kv.as_ref().unwrap().value, b"1");
    assert_eq!(evs[5].prev_kv.as_ref().unwrap().value, b"2");
    assert_eq!(evs[6].prev_kv.as_ref().unwrap().mod_revision, 4);
    // Tombstone events carry only key and mod revision.
    let t = evs[5].kv.as_ref().unwrap();
    assert_eq!((t.version, t.create_revision, t.value.len()), (0, 0, 0));
    // Applied events equal the stored ones.
    assert_eq!(d.events, evs[5..]);

    // limit 3 from rev 3: a@3, then revision 4 is finished (3 events) → 4 events.
    assert_eq!(fx.m.events(3, 100, 3).unwrap().len(), 4);
    assert_eq!(fx.m.events(3, 100, 1).unwrap().len(), 1);
    assert_eq!(fx.m.events(4, 4, 0).unwrap().len(), 3);
    assert!(fx.m.events(6, 100, 0).unwrap().is_empty());
}

#[test]
fn unpublished_revisions_are_invisible_and_batch_sees_itself() {
    let mut fx = Fx::new();
    fx.put("a", "1"); // 2
    let mut wb = rocksdb::WriteBatch::default();
    let req = |r| kelson_etcdpb::internal::InternalRequest {
        id: 7,
        request: Some(r),
    };
    let a1 = fx.m.apply(
        &req(IReq::Put(PutRequest {
            key: "a".into(),
            value: "2".into(),
            ..Default::default()
        })),
        &mut wb,
    );
    // A second entry in the same batch sees the first one's value (not yet on disk).
    let a2 = fx.m.apply(
        &req(IReq::Put(PutRequest {
            key: "a".into(),
            value: "3".into(),
            prev_kv: true,
            ..Default::default()
        })),
        &mut wb,
    );
    assert_eq!((a1.revision, a2.revision), (3, 4));
    assert_eq!(a2.events[0].prev_kv.as_ref().unwrap().value, b"2");
    assert_eq!(a2.events[0].kv.as_ref().unwrap().version, 3);
    // Readers still see revision 2.
    assert_eq!(fx.m.current_revision(), 2);
    assert_eq!(fx.get("a").unwrap().value, b"1");
    assert!(fx.m.events(3, 10, 0).unwrap().is_empty());
    assert!(matches!(
        fx.m.range(&RequestRange::at("a", 3)),
        Err(MvccError::FutureRev)
    ));
    fx.db.write(wb).unwrap();
    // Durable but not published: still invisible.
    assert_eq!(fx.get("a").unwrap().value, b"1");
    fx.m.publish();
    assert_eq!(fx.m.current_revision(), 4);
    assert_eq!(fx.get("a").unwrap().value, b"3");
    assert_eq!(fx.m.events(3, 10, 0).unwrap().len(), 2);
}

struct RequestRange;
impl RequestRange {
    fn at(k: &str, rev: i64) -> RangeRequest {
        RangeRequest {
            key: k.into(),
            revision: rev,
            ..Default::default()
        }
    }
}

#[test]
fn leases_grant_attach_revoke() {
    let mut fx = Fx::new();
    assert_eq!(fx.grant(7, 30).response.error, "");
    let a = fx.grant(7, 30);
    assert_eq!(a.response.error, "etcdserver: lease already exists");
    assert_eq!(a.response.error_code, 9);
    assert_eq!(fx.grant(0, 30).response.error_code, 3);
    fx.grant(8, 60);
    assert_eq!(fx.m.leases(), vec![(7, 30), (8, 60)]);
    assert_eq!(fx.m.current_revision(), 1, "grants take no revision");

    fx.put_lease("x", "1", 7); // 2
    fx.put_lease("y", "1", 7); // 3
    fx.put_lease("z", "1", 8); // 4
    fx.put("w", "1"); // 5
    assert_eq!(fx.m.lease_keys(7), vec![b"x".to_vec(), b"y".to_vec()]);

    let a = fx.revoke(7);
    assert_eq!(a.response.error, "");
    assert_eq!(a.revision, 6, "all attached keys go in one revision");
    assert_eq!(a.events.len(), 2);
    assert!(a
        .events
        .iter()
        .all(|e| e.r#type == EventType::Delete as i32 && e.prev_kv.is_some()));
    assert!(fx.get("x").is_none() && fx.get("y").is_none());
    assert!(fx.get("z").is_some() && fx.get("w").is_some());
    assert_eq!(fx.m.leases(), vec![(8, 60)]);
    let a = fx.revoke(7);
    assert_eq!(a.response.error, "etcdserver: requested lease not found");
    assert_eq!(a.response.error_code, 5);

    // Deleting a key detaches it; leases and attachments survive a restart.
    fx.put_lease("v", "1", 8);
    fx.del("z", "");
    let fx = fx.reopen();
    assert_eq!(fx.m.leases(), vec![(8, 60)]);
    assert_eq!(fx.m.lease_keys(8), vec![b"v".to_vec()]);
    let mut fx = fx;
    assert_eq!(fx.revoke(8).events.len(), 1);
    assert!(fx.m.leases().is_empty());
}

/// Puts without a read of the previous value (`set_events_prev_kv(false)`, the daemon's mode
/// while no watcher wants prev_kv): leases move between keys from the in-memory `lease_of`,
/// `ignore_lease` keeps the old one, and all of it survives a reopen.
#[test]
fn leases_move_without_reading_previous_values() {
    let mut fx = Fx::new();
    fx.m.set_events_prev_kv(false);
    fx.grant(1, 30);
    fx.grant(2, 30);
    fx.put_lease("k", "a", 1);
    let a = fx.put("k", "b"); // no lease: detached from 1
    assert!(a.events[0].prev_kv.is_none(), "no prev_kv asked for");
    assert!(fx.m.lease_keys(1).is_empty());
    let kv = fx.get("k").unwrap();
    assert_eq!((kv.version, kv.lease, kv.create_revision), (2, 0, 2));
    fx.put_lease("k", "c", 2);
    let a = fx.apply(IReq::Put(PutRequest {
        key: "k".into(),
        value: "d".into(),
        ignore_lease: true,
        ..Default::default()
    }));
    assert_eq!(a.response.error, "");
    assert_eq!(
        fx.get("k").unwrap().lease,
        2,
        "ignore_lease keeps the old lease"
    );
    assert_eq!(fx.m.lease_keys(2), vec![b"k".to_vec()]);
    // A put asking for prev_kv still gets it (and its event carries it).
    let a = fx.apply(IReq::Put(PutRequest {
        key: "k".into(),
        value: "e".into(),
        lease: 2,
        prev_kv: true,
        ..Default::default()
    }));
    match a.response.response {
        Some(Response::Put(p)) => assert_eq!(p.prev_kv.unwrap().value, b"d"),
        other => panic!("{other:?}"),
    }

    let mut fx = fx.reopen();
    fx.m.set_events_prev_kv(false);
    let a = fx.apply(IReq::Put(PutRequest {
        key: "k".into(),
        value: "f".into(),
        ignore_lease: true,
        ..Default::default()
    }));
    assert_eq!(a.response.error, "");
    let kv = fx.get("k").unwrap();
    assert_eq!((kv.version, kv.lease, kv.create_revision), (6, 2, 2));
    // Revoking the lease deletes the key it still holds.
    assert_eq!(fx.revoke(2).events.len(), 1);
    assert!(fx.get("k").is_none());
    // A new generation starts at version 1 again.
    fx.put("k", "g");
    let kv = fx.get("k").unwrap();
    assert_eq!((kv.version, kv.create_revision), (1, kv.mod_revision));
}

#[test]
fn nospace_alarm_blocks_puts_only() {
    let mut fx = Fx::new();
    fx.put("a", "1");
    let alarm = |action: AlarmAction| {
        IReq::Alarm(AlarmRequest {
            action: action as i32,
            member_id: 11,
            alarm: AlarmType::Nospace as i32,
        })
    };
    let a = fx.apply(alarm(AlarmAction::Activate));
    match &a.response.response {
        Some(Response::Alarm(r)) => assert_eq!(r.alarms.len(), 1),
        other => panic!("{other:?}"),
    }
    assert_eq!(fx.m.alarms(), vec![AlarmType::Nospace as i32]);
    let a = fx.apply(IReq::Put(PutRequest {
        key: "b".into(),
        ..Default::default()
    }));
    assert_eq!(
        a.response.error,
        "etcdserver: mvcc: database space exceeded"
    );
    assert_eq!(a.response.error_code, 8);
    let a = fx.apply(IReq::Txn(TxnRequest {
        success: vec![put_op("b", "1")],
        ..Default::default()
    }));
    assert_eq!(
        a.response.error,
        "etcdserver: mvcc: database space exceeded"
    );
    assert_eq!(fx.grant(1, 10).response.error_code, 8);
    // Deletes, read txns and compaction still work.
    fx.del("a", "");
    assert_eq!(fx.compact(2).response.error, "");
    let a = fx.apply(IReq::Txn(TxnRequest {
        success: vec![get_op("a", "")],
        ..Default::default()
    }));
    assert_eq!(a.response.error, "");

    // Survives restart; GET lists it; deactivate clears it.
    let mut fx = fx.reopen();
    assert_eq!(fx.m.alarms(), vec![AlarmType::Nospace as i32]);
    let a = fx.apply(IReq::Alarm(AlarmRequest {
        action: AlarmAction::Get as i32,
        member_id: 0,
        alarm: AlarmType::None as i32,
    }));
    match &a.response.response {
        Some(Response::Alarm(r)) => assert_eq!(r.alarms[0].member_id, 11),
        other => panic!("{other:?}"),
    }
    fx.apply(alarm(AlarmAction::Deactivate));
    assert!(fx.m.alarms().is_empty());
    fx.put("b", "1");
}

/// Everything a client can observe, for comparing two stores.
fn observe(fx: &Fx) -> impl PartialEq + std::fmt::Debug {
    let cur = fx.m.current_revision();
    let from = fx.m.compact_revision().max(1);
    let snapshots: Vec<_> = (from..=cur).map(|r| fx.all_at(r)).collect();
    (
        cur,
        fx.m.compact_revision(),
        snapshots,
        fx.m.events(fx.m.compact_revision() + 1, cur, 0).unwrap(),
        fx.m.hash_kv(0).unwrap(),
        fx.m.leases(),
        fx.m.leases()
            .iter()
            .map(|(id, _)| fx.m.lease_keys(*id))
            .collect::<Vec<_>>(),
        fx.m.alarms(),
        fx.m.key_count(),
    )
}

fn busy_history(fx: &mut Fx) {
    fx.grant(3, 100);
    for i in 0..20 {
        fx.put(&format!("k{}", i % 7), &format!("v{i}"));
    }
    fx.put_lease("leased", "1", 3);
    fx.del("k1", "k3");
    fx.compact(10);
    fx.apply(IReq::Txn(TxnRequest {
        success: vec![put_op("t1", "1"), del_op("k5", "")],
        ..Default::default()
    }));
    fx.put("k1", "again");
    fx.apply(IReq::Alarm(AlarmRequest {
        action: AlarmAction::Activate as i32,
        member_id: 2,
        alarm: AlarmType::Corrupt as i32,
    }));
}

#[test]
fn reopen_rebuilds_identical_state() {
    let mut fx = Fx::new();
    busy_history(&mut fx);
    let before = observe(&fx);
    let fx = fx.reopen();
    assert_eq!(observe(&fx), before);
}

#[test]
fn snapshot_restore_gives_identical_store() {
    let mut src = Fx::new();
    busy_history(&mut src);
    let blob = src.m.snapshot().unwrap();

    // Into a fresh store, and into one with unrelated content that must vanish.
    let mut dst = Fx::new();
    dst.put("stale", "x");
    dst.grant(99, 5);
    let mut wb = rocksdb::WriteBatch::default();
    dst.m.restore(&blob, &mut wb).unwrap();
    assert!(matches!(
        dst.m.range(&rr("a", "")),
        Err(MvccError::Restoring)
    ));
    dst.db.write(wb).unwrap();
    dst.m.publish();
    assert_eq!(observe(&dst), observe(&src));
    assert!(dst.get("stale").is_none());
    // And the restored data is what is on disk.
    let dst = dst.reopen();
    assert_eq!(observe(&dst), observe(&src));

    // A damaged blob is rejected and changes nothing.
    let mut bad = blob.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x40;
    let mut dst = dst;
    let mut wb = rocksdb::WriteBatch::default();
    assert!(matches!(
        dst.m.restore(&bad, &mut wb),
        Err(MvccError::Corrupt(_))
    ));
    assert!(wb.is_empty());
    assert_eq!(observe(&dst), observe(&src));
}

#[test]
fn equal_histories_hash_equal() {
    let mut a = Fx::new();
    let mut b = Fx::new();
    busy_history(&mut a);
    busy_history(&mut b);
    assert_eq!(a.m.hash_kv(0).unwrap(), b.m.hash_kv(0).unwrap());
    assert_eq!(a.m.hash_kv(12).unwrap(), b.m.hash_kv(12).unwrap());
    b.put("extra", "1");
    let rev = a.m.current_revision();
    assert_eq!(
        a.m.hash_kv(rev).unwrap(),
        b.m.hash_kv(rev).unwrap(),
        "same prefix"
    );
    assert_ne!(a.m.hash_kv(0).unwrap().0, b.m.hash_kv(0).unwrap().0);
    assert!(matches!(a.m.hash_kv(rev + 1), Err(MvccError::FutureRev)));
    assert!(a.m.db_size_bytes() > 0);
}

#[test]
fn snapshot_view_is_the_state_when_taken() {
    let mut src = Fx::new();
    busy_history(&mut src);
    let before = observe(&src);
    let view = src.m.snapshot_view();
    // Writes after the view was taken are not in it, even though it is encoded afterwards
    // (and on another thread, as the Raft layer does).
    src.put("later", "1");
    src.del("k1", "");
    let blob = std::thread::spawn(move || view.encode().unwrap())
        .join()
        .unwrap();
    let mut dst = Fx::new();
    let mut wb = rocksdb::WriteBatch::default();
    dst.m.restore(&blob, &mut wb).unwrap();
    dst.db.write(wb).unwrap();
    dst.m.publish();
    assert_eq!(observe(&dst), before);
    assert!(dst.get("later").is_none());
}
