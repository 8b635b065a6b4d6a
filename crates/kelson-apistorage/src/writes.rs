//! What this server has written: the revisions a watch cache must reach before it may answer
//! a read-your-own-writes read.
//!
//! Every [`crate::Storage`] clone shares one [`Writes`]. It keeps the newest revision any write
//! (or failed compare) has seen, and — per key prefix a watch cache registered — the revision
//! of the newest *successful* write under that prefix. A cache waits for its own prefix's mark,
//! not the global one: a read of namespaces is then not held up (nor made to ask the store for
//! a progress notification) by the pods this server writes a thousand times a second. Writes
//! under a prefix before its cache registered are covered by the cache's initial LIST, which is
//! at least as new as any write that completed before it.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

#[derive(Debug, Default)]
pub(crate) struct Writes {
    newest: AtomicI64,
    /// (prefix, newest successful write under it). A handful of dozen entries at most (one per
    /// resource), scanned per write: cheaper than hashing each of the key's parent prefixes.
    marks: RwLock<Vec<(String, Arc<AtomicI64>)>>,
}

impl Writes {
    /// The newest revision any write has observed (0 before the first).
    pub(crate) fn newest(&self) -> i64 {
        self.newest.load(Ordering::Acquire)
    }

    /// The mark of `prefix` (a prepared key prefix ending in "/"), registered on first use.
    pub(crate) fn mark(&self, prefix: &str) -> Arc<AtomicI64> {
        if let Ok(marks) = self.marks.read() {
            if let Some((_, m)) = marks.iter().find(|(p, _)| p == prefix) {
                return m.clone();
            }
        }
        let mut marks = match self.marks.write() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some((_, m)) = marks.iter().find(|(p, _)| p == prefix) {
            return m.clone();
        }
        // Anything written before now is in the registering cache's initial LIST.
        let m = Arc::new(AtomicI64::new(0));
        marks.push((prefix.to_string(), m.clone()));
        m
    }

    /// Records a transaction's answer on `key` at revision `rev`.
    pub(crate) fn note(&self, key: &str, rev: i64, succeeded: bool) {
        self.newest.fetch_max(rev, Ordering::AcqRel);
        if !succeeded {
            return;
        }
        if let Ok(marks) = self.marks.read() {
            for (p, m) in marks.iter() {
                if key.starts_with(p.as_str()) {
                    m.fetch_max(rev, Ordering::AcqRel);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_follow_successful_writes_under_their_prefix() {
        let w = Writes::default();
        let pods = w.mark("/registry/pods/");
        let ns = w.mark("/registry/namespaces/");
        assert!(Arc::ptr_eq(&pods, &w.mark("/registry/pods/")));
        w.note("/registry/pods/a/p", 5, true);
        w.note("/registry/namespaces/a", 7, false);
        assert_eq!(pods.load(Ordering::Acquire), 5);
        assert_eq!(
            ns.load(Ordering::Acquire),
            0,
            "a failed compare wrote nothing"
        );
        assert_eq!(w.newest(), 7);
        w.note("/registry/namespaces/a", 9, true);
        w.note("/registry/pods/a/q", 8, true);
        assert_eq!(ns.load(Ordering::Acquire), 9);
        assert_eq!(pods.load(Ordering::Acquire), 8);
        // A prefix of another resource's name does not match it.
        let p = w.mark("/registry/pod/");
        w.note("/registry/pods/a/r", 10, true);
        assert_eq!(p.load(Ordering::Acquire), 0);
    }
}
