//! One watcher: what it selects (key range, filters) and where it is (its next revision).
//!
//! A watcher is deliberately nothing more than a cursor plus a predicate: the stream task asks
//! the hub for everything from `next_rev` on, keeps the events the predicate accepts, and moves
//! the cursor past what it read. Whether the events came from memory or from the store does not
//! matter to the watcher, which is what makes the synced/unsynced switch gap- and duplicate-free.

use kelson_etcdpb::etcdserverpb::watch_create_request::FilterType;
use kelson_etcdpb::etcdserverpb::WatchCreateRequest;
use kelson_etcdpb::mvccpb::event::EventType;
use kelson_etcdpb::mvccpb::Event;

/// The key selection of a watch, decoded from etcd's `key`/`range_end` convention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRange {
    /// `range_end` empty: exactly this key.
    Single(Vec<u8>),
    /// `range_end == "\0"`: every key `>= key`.
    FromKey(Vec<u8>),
    /// `[key, range_end)` (a prefix watch is the range up to the prefix's successor).
    Range(Vec<u8>, Vec<u8>),
}

/// etcd's reason for a range that can match nothing (`key >= range_end`).
pub const ERR_EMPTY_RANGE: &str = "mvcc: watcher range is empty";

impl KeyRange {
    /// Decodes etcd's convention; an empty key means the smallest key, `"\0"`, as in etcd.
    pub fn from_request(key: &[u8], range_end: &[u8]) -> Result<Self, &'static str> {
        let key = if key.is_empty() {
            vec![0]
        } else {
            key.to_vec()
        };
        match range_end {
            [] => Ok(KeyRange::Single(key)),
            [0] => Ok(KeyRange::FromKey(key)),
            end if key.as_slice() >= end => Err(ERR_EMPTY_RANGE),
            end => Ok(KeyRange::Range(key, end.to_vec())),
        }
    }

    /// Whether `key` is selected.
    pub fn contains(&self, key: &[u8]) -> bool {
        match self {
            KeyRange::Single(k) => k.as_slice() == key,
            KeyRange::FromKey(k) => key >= k.as_slice(),
            KeyRange::Range(k, end) => key >= k.as_slice() && key < end.as_slice(),
        }
    }
}

/// A live watcher of one stream.
#[derive(Debug)]
pub(crate) struct Watcher {
    pub(crate) id: i64,
    pub(crate) range: KeyRange,
    pub(crate) no_put: bool,
    pub(crate) no_delete: bool,
    pub(crate) prev_kv: bool,
    pub(crate) fragment: bool,
    pub(crate) progress_notify: bool,
    /// The lowest revision not yet delivered (or filtered out) to the client.
    pub(crate) next_rev: i64,
    /// Events were sent since the last progress tick, so the next progress notify is elided
    /// (etcd does the same: a client that just got events knows it is current).
    pub(crate) sent_since_tick: bool,
    /// Set for `prev_kv` watchers: keeps the hub's count of them (see `hub`).
    pub(crate) prev_kv_guard: Option<crate::hub::PrevKvGuard>,
}

impl Watcher {
    /// Builds a watcher from a create request. `next_rev` is decided by the caller.
    pub(crate) fn new(id: i64, req: &WatchCreateRequest, range: KeyRange, next_rev: i64) -> Self {
        let has = |f: FilterType| req.filters.contains(&(f as i32));
        Watcher {
            id,
            range,
            no_put: has(FilterType::Noput),
            no_delete: has(FilterType::Nodelete),
            prev_kv: req.prev_kv,
            fragment: req.fragment,
            progress_notify: req.progress_notify,
            next_rev,
            sent_since_tick: false,
            prev_kv_guard: None,
        }
    }

    /// Whether the event is selected (key range and type filters).
    pub(crate) fn accepts(&self, ev: &Event) -> bool {
        let Some(kv) = ev.kv.as_ref() else {
            return false;
        };
        let is_delete = ev.r#type == EventType::Delete as i32;
        self.range.contains(&kv.key)
            && !((is_delete && self.no_delete) || (!is_delete && self.no_put))
    }

    /// The event as this watcher's client should see it, or `None` if it is not selected.
    /// Builds the copy field by field so an unwanted `prev_kv` is never cloned.
    pub(crate) fn project(&self, ev: &Event) -> Option<Event> {
        if !self.accepts(ev) {
            return None;
        }
        let kv = ev.kv.as_ref()?;
        Some(Event {
            r#type: ev.r#type,
            kv: Some(kv.clone()),
            prev_kv: if self.prev_kv {
                ev.prev_kv.clone()
            } else {
                None
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_etcd_conventions() {
        let single = KeyRange::from_request(b"a", b"").unwrap();
        assert!(single.contains(b"a"));
        assert!(!single.contains(b"ab"));

        let from = KeyRange::from_request(b"b", b"\0").unwrap();
        assert!(from.contains(b"b") && from.contains(b"zzz"));
        assert!(!from.contains(b"a"));

        let prefix = KeyRange::from_request(b"foo/", b"foo0").unwrap();
        assert!(prefix.contains(b"foo/") && prefix.contains(b"foo/bar"));
        assert!(!prefix.contains(b"foo0") && !prefix.contains(b"fo"));

        // Empty key with "\0" is etcd's "all keys".
        let all = KeyRange::from_request(b"", b"\0").unwrap();
        assert!(all.contains(b"\0") && all.contains(b"x"));

        assert_eq!(KeyRange::from_request(b"b", b"a"), Err(ERR_EMPTY_RANGE));
        assert_eq!(KeyRange::from_request(b"a", b"a"), Err(ERR_EMPTY_RANGE));
    }

    #[test]
    fn project_applies_filters_and_strips_prev_kv() {
        use kelson_etcdpb::mvccpb::KeyValue;
        let kv = |v: &[u8]| KeyValue {
            key: b"k".to_vec(),
            value: v.to_vec(),
            mod_revision: 2,
            ..Default::default()
        };
        let put = Event {
            r#type: EventType::Put as i32,
            kv: Some(kv(b"new")),
            prev_kv: Some(kv(b"old")),
        };
        let del = Event {
            r#type: EventType::Delete as i32,
            kv: Some(kv(b"")),
            prev_kv: None,
        };
        let mut req = WatchCreateRequest {
            key: b"k".to_vec(),
            ..Default::default()
        };
        let range = KeyRange::from_request(b"k", b"").unwrap();
        let w = Watcher::new(0, &req, range.clone(), 1);
        assert_eq!(w.project(&put).unwrap().prev_kv, None);
        assert!(w.project(&del).is_some());

        req.prev_kv = true;
        req.filters = vec![FilterType::Nodelete as i32];
        let w = Watcher::new(0, &req, range.clone(), 1);
        assert_eq!(w.project(&put).unwrap().prev_kv.unwrap().value, b"old");
        assert!(w.project(&del).is_none());

        req.filters = vec![FilterType::Noput as i32];
        let w = Watcher::new(0, &req, range, 1);
        assert!(w.project(&put).is_none());
        assert!(w.project(&del).is_some());
    }
}
