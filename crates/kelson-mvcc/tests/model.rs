//! Property-style test: random operations (seeded) against the store and a naive model that keeps
//! the whole keyspace at every revision; ranges at random revisions must agree, including across
//! restarts, compactions, and several entries applied in one batch before publishing.

mod common;

use std::collections::BTreeMap;

use common::{open_db, Fx};
use kelson_etcdpb::etcdserverpb::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    request_op::Request,
    CompactionRequest, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest,
};
use kelson_etcdpb::internal::{internal_request::Request as IReq, InternalRequest};
use kelson_etcdpb::mvccpb::KeyValue;
use kelson_mvcc::{Mvcc, MvccError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const KEYS: &[&str] = &["a", "ab", "abc", "b", "ba", "c", "d", "e"];

type Space = BTreeMap<Vec<u8>, KeyValue>;

struct Model {
    /// `states[r]` is the keyspace at revision r (index 0 unused).
    states: Vec<Space>,
    compact: i64,
}

impl Model {
    fn rev(&self) -> i64 {
        self.states.len() as i64 - 1
    }
    fn cur(&self) -> &Space {
        self.states.last().unwrap()
    }
    fn put(next: &mut Space, rev: i64, k: &[u8], v: &[u8]) {
        let kv = match next.get(k) {
            Some(old) => KeyValue {
                mod_revision: rev,
                version: old.version + 1,
                value: v.to_vec(),
                ..old.clone()
            },
            None => KeyValue {
                key: k.to_vec(),
                create_revision: rev,
                mod_revision: rev,
                version: 1,
                value: v.to_vec(),
                lease: 0,
            },
        };
        next.insert(k.to_vec(), kv);
    }
    fn in_range(k: &[u8], key: &[u8], end: &[u8]) -> bool {
        match end {
            [] => k == key,
            [0] => k >= key,
            e => k >= key && k < e,
        }
    }
    /// Applies a change function; commits a new revision only if it changed something.
    fn step(&mut self, f: impl FnOnce(&mut Space, i64) -> bool) {
        let mut next = self.cur().clone();
        let rev = self.rev() + 1;
        if f(&mut next, rev) {
            self.states.push(next);
        }
    }
}

fn random_range(rng: &mut StdRng) -> (Vec<u8>, Vec<u8>) {
    let k = KEYS[rng.gen_range(0..KEYS.len())].as_bytes().to_vec();
    let end = match rng.gen_range(0..4) {
        0 => vec![],
        1 => vec![0],
        _ => {
            let mut e = KEYS[rng.gen_range(0..KEYS.len())].as_bytes().to_vec();
            e.push(b'z');
            e
        }
    };
    (k, end)
}

/// `events_prev_kv = false` is the daemon's mode without prev_kv watchers: puts then take
/// create_revision/version/lease from the index instead of reading the previous value, and the
/// model checks every KeyValue field of the result, across compactions and reopens.
fn run(seed: u64, steps: usize, events_prev_kv: bool) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut fx = Fx::new();
    fx.m.set_events_prev_kv(events_prev_kv);
    let mut model = Model {
        states: vec![Space::new(), Space::new()],
        compact: 0,
    };
    let mut wb = rocksdb::WriteBatch::default();
    let mut unpublished = 0;
    for step in 0..steps {
        let op = rng.gen_range(0..100);
        let req = if op < 45 {
            let k = KEYS[rng.gen_range(0..KEYS.len())];
            let v = format!("v{step}");
            model.step(|s, rev| {
                Model::put(s, rev, k.as_bytes(), v.as_bytes());
                true
            });
            IReq::Put(PutRequest {
                key: k.into(),
                value: v.into(),
                ..Default::default()
            })
        } else if op < 65 {
            let (key, end) = random_range(&mut rng);
            model.step(|s, _| {
                let before = s.len();
                s.retain(|k, _| !Model::in_range(k, &key, &end));
                s.len() != before
            });
            IReq::DeleteRange(DeleteRangeRequest {
                key,
                range_end: end,
                prev_kv: false,
            })
        } else if op < 90 {
            // CAS on a key's mod revision, as Kubernetes does; half the time with a stale rev.
            let k = KEYS[rng.gen_range(0..KEYS.len())];
            let actual = model
                .cur()
                .get(k.as_bytes())
                .map_or(0, |kv| kv.mod_revision);
            let expect = if rng.gen_bool(0.5) {
                actual
            } else {
                actual + 1
            };
            let other = KEYS[rng.gen_range(0..KEYS.len())];
            let v = format!("t{step}");
            let ok = expect == actual;
            model.step(|s, rev| {
                if ok {
                    Model::put(s, rev, k.as_bytes(), v.as_bytes());
                    true
                } else {
                    s.remove(other.as_bytes()).is_some()
                }
            });
            IReq::Txn(TxnRequest {
                compare: vec![Compare {
                    result: CompareResult::Equal as i32,
                    target: CompareTarget::Mod as i32,
                    key: k.into(),
                    target_union: Some(TargetUnion::ModRevision(expect)),
                    range_end: vec![],
                }],
                success: vec![RequestOp {
                    request: Some(Request::RequestPut(PutRequest {
                        key: k.into(),
                        value: v.into(),
                        ..Default::default()
                    })),
                }],
                failure: vec![
                    RequestOp {
                        request: Some(Request::RequestRange(RangeRequest {
                            key: k.into(),
                            ..Default::default()
                        })),
                    },
                    RequestOp {
                        request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                            key: other.into(),
                            ..Default::default()
                        })),
                    },
                ],
            })
        } else {
            let rev = model.rev();
            let at = if rev > model.compact + 1 {
                rng.gen_range(model.compact + 1..=rev)
            } else {
                rev
            };
            if at > model.compact {
                model.compact = at;
            }
            IReq::Compaction(CompactionRequest {
                revision: at,
                physical: false,
            })
        };
        let a = fx.m.apply(
            &InternalRequest {
                id: step as u64,
                request: Some(req),
            },
            &mut wb,
        );
        assert_eq!(
            a.revision,
            model.rev(),
            "seed {seed} step {step}: {:?}",
            a.response
        );
        unpublished += 1;
        // Publish in batches of 1-3 entries, like a Raft Ready with several committed entries.
        if unpublished >= rng.gen_range(1..=3) {
            fx.db.write(std::mem::take(&mut wb)).unwrap();
            fx.m.publish();
            unpublished = 0;
        } else {
            continue;
        }
        if rng.gen_range(0..40) == 0 {
            fx = fx.reopen();
            fx.m.set_events_prev_kv(events_prev_kv);
        }
        check(&fx.m, &model, &mut rng, seed, step);
    }
}

fn check(m: &Mvcc, model: &Model, rng: &mut StdRng, seed: u64, step: usize) {
    let cur = model.rev();
    assert_eq!(m.current_revision(), cur);
    assert_eq!(m.compact_revision(), model.compact);
    assert_eq!(m.key_count(), model.cur().len());
    for _ in 0..3 {
        let lo = model.compact.max(1);
        let rev = rng.gen_range(lo..=cur);
        let (key, end) = random_range(rng);
        let limit = rng.gen_range(0..4);
        let resp = m
            .range(&RangeRequest {
                key: key.clone(),
                range_end: end.clone(),
                revision: rev,
                limit,
                ..Default::default()
            })
            .unwrap();
        let want: Vec<&KeyValue> = model.states[rev as usize]
            .iter()
            .filter(|(k, _)| Model::in_range(k, &key, &end))
            .map(|(_, kv)| kv)
            .collect();
        let ctx = format!("seed {seed} step {step} rev {rev} {key:?}..{end:?} limit {limit}");
        assert_eq!(resp.count, want.len() as i64, "{ctx}");
        let n = if limit > 0 {
            want.len().min(limit as usize)
        } else {
            want.len()
        };
        let want_kvs: Vec<KeyValue> = want[..n].iter().map(|kv| (*kv).clone()).collect();
        assert_eq!(resp.kvs, want_kvs, "{ctx}");
        assert_eq!(resp.more, n < want.len(), "{ctx}");
    }
    if model.compact > 1 {
        let r = m.range(&RangeRequest {
            key: b"a".to_vec(),
            revision: model.compact - 1,
            ..Default::default()
        });
        assert!(matches!(r, Err(MvccError::Compacted)));
    }
    // Events: per revision, one event per key that changed (by mod revision or presence).
    let from = model.compact.max(1) + 1;
    let evs = m.events(from, cur, 0).unwrap();
    let mut want = 0;
    for r in from..=cur {
        let (a, b) = (&model.states[r as usize - 1], &model.states[r as usize]);
        want += b.iter().filter(|(k, kv)| a.get(*k) != Some(kv)).count();
        want += a.keys().filter(|k| !b.contains_key(*k)).count();
    }
    assert_eq!(evs.len(), want, "seed {seed} step {step}: event count");
}

#[test]
fn random_ops_match_model() {
    for seed in [1, 2, 3] {
        run(seed, 300, true);
    }
}

#[test]
fn random_ops_match_model_without_reading_previous_values() {
    for seed in [1, 2, 3, 4] {
        run(seed, 300, false);
    }
}

#[test]
fn open_empty_db_at_revision_one() {
    let dir = tempfile::tempdir().unwrap();
    let m = Mvcc::open(open_db(dir.path())).unwrap();
    assert_eq!(
        (m.current_revision(), m.compact_revision(), m.key_count()),
        (1, 0, 0)
    );
}
