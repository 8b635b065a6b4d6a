//! Test fixture: a RocksDB with the MVCC column families in a temp dir, and helpers that apply a
//! request the way the daemon does (apply into a batch, write it, publish).
#![allow(dead_code)]

use std::sync::Arc;

use kelson_etcdpb::etcdserverpb::*;
use kelson_etcdpb::internal::{internal_request::Request as IReq, InternalRequest};
use kelson_etcdpb::mvccpb::KeyValue;
use kelson_mvcc::{Applied, Mvcc, CFS};
use rocksdb::{Options, WriteBatch, DB};

pub fn open_db(path: &std::path::Path) -> Arc<DB> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    Arc::new(DB::open_cf(&opts, path, CFS).expect("open rocksdb"))
}

pub struct Fx {
    pub dir: tempfile::TempDir,
    pub db: Arc<DB>,
    pub m: Mvcc,
}

impl Fx {
    pub fn new() -> Fx {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path());
        let m = Mvcc::open(db.clone()).unwrap();
        Fx { dir, db, m }
    }

    /// Drops the store and the DB, opens both again from disk.
    pub fn reopen(self) -> Fx {
        let Fx { dir, db, m } = self;
        drop(m);
        drop(db);
        let db = open_db(dir.path());
        let m = Mvcc::open(db.clone()).unwrap();
        Fx { dir, db, m }
    }

    pub fn apply(&mut self, r: IReq) -> Applied {
        let mut wb = WriteBatch::default();
        let a = self.m.apply(
            &InternalRequest {
                id: 1,
                request: Some(r),
            },
            &mut wb,
        );
        self.db.write(wb).unwrap();
        self.m.publish();
        a
    }

    pub fn put(&mut self, k: &str, v: &str) -> Applied {
        let a = self.apply(IReq::Put(PutRequest {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        }));
        assert_eq!(a.response.error, "", "put {k}");
        a
    }

    pub fn put_lease(&mut self, k: &str, v: &str, lease: i64) -> Applied {
        self.apply(IReq::Put(PutRequest {
            key: k.into(),
            value: v.into(),
            lease,
            ..Default::default()
        }))
    }

    pub fn del(&mut self, k: &str, end: &str) -> Applied {
        let a = self.apply(IReq::DeleteRange(DeleteRangeRequest {
            key: k.into(),
            range_end: end.into(),
            prev_kv: true,
        }));
        assert_eq!(a.response.error, "");
        a
    }

    pub fn compact(&mut self, rev: i64) -> Applied {
        self.apply(IReq::Compaction(CompactionRequest {
            revision: rev,
            physical: true,
        }))
    }

    pub fn grant(&mut self, id: i64, ttl: i64) -> Applied {
        self.apply(IReq::LeaseGrant(LeaseGrantRequest { id, ttl }))
    }

    pub fn revoke(&mut self, id: i64) -> Applied {
        self.apply(IReq::LeaseRevoke(LeaseRevokeRequest { id }))
    }

    pub fn get(&self, k: &str) -> Option<KeyValue> {
        self.get_at(k, 0)
    }

    pub fn get_at(&self, k: &str, rev: i64) -> Option<KeyValue> {
        self.m
            .range(&RangeRequest {
                key: k.into(),
                revision: rev,
                ..Default::default()
            })
            .unwrap()
            .kvs
            .pop()
    }

    /// Every key at `rev`, full key-values.
    pub fn all_at(&self, rev: i64) -> Vec<KeyValue> {
        self.m
            .range(&RangeRequest {
                key: vec![0],
                range_end: vec![0],
                revision: rev,
                ..Default::default()
            })
            .unwrap()
            .kvs
    }
}

pub fn keys(kvs: &[KeyValue]) -> Vec<String> {
    kvs.iter()
        .map(|kv| String::from_utf8(kv.key.clone()).unwrap())
        .collect()
}
