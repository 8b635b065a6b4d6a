//! The in-memory key index: user key -> the revisions at which it changed.
//!
//! As in etcd, a key's history is a list of *generations*: each runs from a create to a tombstone
//! (the last generation may still be live). Values are not kept here; a read finds the revision
//! through the index and fetches the value from RocksDB by revision.
//!
//! Memory is the constraint (1M keys must fit with room to spare), so the per-key record is a
//! 16-byte enum whose common case — a key written once and never touched again, or compacted down
//! to one live revision — stores that revision inline (`sub` fits in `u32` practically always).
//! Only keys with more history pay for a boxed `History`. The map itself is a
//! `BTreeMap<Box<[u8]>, KeyIndex>`: 32 bytes per slot plus the key's own heap allocation.

use crate::revision::Rev;

/// One generation: revisions in increasing order; if `tombstoned`, the last one is the delete.
/// `created` and `ver` are what a put needs to write the next `KeyValue` (its create_revision
/// and version) without reading the previous value back from RocksDB; they survive compaction
/// of the generation's older revisions, like etcd's `generation.created`/`ver`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generation {
    pub revs: Vec<Rev>,
    pub tombstoned: bool,
    /// Main revision of the put that started the generation (the keys' create_revision).
    pub created: i64,
    /// Version of the newest put of the generation (1 for the creating put).
    pub ver: i64,
}

impl Generation {
    fn new(rev: Rev, created: i64, ver: i64) -> Generation {
        Generation {
            revs: vec![rev],
            tombstoned: false,
            created,
            ver,
        }
    }
}

/// A key's full retained history. Invariants: no empty generation; every generation but the last
/// is tombstoned; revisions increase across generations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct History {
    pub gens: Vec<Generation>,
}

/// A key's revisions. `Single` is the compact common case: one live revision that created the
/// key (so create_revision = `main` and version = 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyIndex {
    Single { main: i64, sub: u32 },
    Multi(Box<History>),
}

impl KeyIndex {
    /// A key created at `rev`.
    pub fn new(rev: Rev) -> KeyIndex {
        match u32::try_from(rev.sub) {
            Ok(sub) => KeyIndex::Single {
                main: rev.main,
                sub,
            },
            Err(_) => KeyIndex::Multi(Box::new(History {
                gens: vec![Generation::new(rev, rev.main, 1)],
            })),
        }
    }

    /// A key whose oldest retained revision is `rev`, a put with the given create_revision and
    /// version (rebuilding the index from disk, where compaction may have dropped the put that
    /// created the key).
    pub fn loaded(rev: Rev, created: i64, ver: i64) -> KeyIndex {
        if created == rev.main && ver == 1 {
            return KeyIndex::new(rev);
        }
        KeyIndex::Multi(Box::new(History {
            gens: vec![Generation::new(rev, created, ver)],
        }))
    }

    /// A key whose only retained entry is a tombstone (only possible for a damaged history; kept
    /// so that compaction can still remove it).
    pub fn new_tombstone(rev: Rev) -> KeyIndex {
        KeyIndex::Multi(Box::new(History {
            gens: vec![Generation {
                revs: vec![rev],
                tombstoned: true,
                created: rev.main,
                ver: 0,
            }],
        }))
    }

    fn into_history(self) -> History {
        match self {
            KeyIndex::Single { main, sub } => History {
                gens: vec![Generation::new(Rev::new(main, i64::from(sub)), main, 1)],
            },
            KeyIndex::Multi(h) => *h,
        }
    }

    fn history_mut(&mut self) -> &mut History {
        if let KeyIndex::Single { .. } = self {
            let taken = std::mem::replace(self, KeyIndex::Single { main: 0, sub: 0 });
            *self = KeyIndex::Multi(Box::new(taken.into_history()));
        }
        match self {
            KeyIndex::Multi(h) => h,
            KeyIndex::Single { .. } => unreachable!("converted above"),
        }
    }

    /// Records a put at `rev` (starting a new generation if the key is deleted).
    pub fn put(&mut self, rev: Rev) {
        let h = self.history_mut();
        match h.gens.last_mut() {
            Some(g) if !g.tombstoned => {
                g.revs.push(rev);
                g.ver += 1;
            }
            _ => h.gens.push(Generation::new(rev, rev.main, 1)),
        }
    }

    /// Records a put at `rev` read back from disk, whose stored create_revision and version are
    /// authoritative (the loader's counterpart of [`KeyIndex::put`]).
    pub fn put_loaded(&mut self, rev: Rev, created: i64, ver: i64) {
        let h = self.history_mut();
        match h.gens.last_mut() {
            Some(g) if !g.tombstoned => {
                g.revs.push(rev);
                g.created = created;
                g.ver = ver;
            }
            _ => h.gens.push(Generation::new(rev, created, ver)),
        }
    }

    /// create_revision and version of the key's live generation, `None` if the key is deleted.
    pub fn live_gen(&self) -> Option<(i64, i64)> {
        match self {
            KeyIndex::Single { main, .. } => Some((*main, 1)),
            KeyIndex::Multi(h) => h
                .gens
                .last()
                .filter(|g| !g.tombstoned)
                .map(|g| (g.created, g.ver)),
        }
    }

    /// Records a delete at `rev`. The caller checks that the key is live; deleting a deleted key
    /// is ignored.
    pub fn tombstone(&mut self, rev: Rev) {
        let h = self.history_mut();
        if let Some(g) = h.gens.last_mut() {
            if !g.tombstoned {
                g.revs.push(rev);
                g.tombstoned = true;
            }
        }
    }

    /// The revision holding the key's value as of main revision `at`, or `None` if the key did
    /// not exist (or was deleted) then.
    pub fn get(&self, at: i64) -> Option<Rev> {
        match self {
            KeyIndex::Single { main, sub } => {
                (*main <= at).then(|| Rev::new(*main, i64::from(*sub)))
            }
            KeyIndex::Multi(h) => {
                for g in h.gens.iter().rev() {
                    let n = g.revs.partition_point(|r| r.main <= at);
                    if n == 0 {
                        continue;
                    }
                    if g.tombstoned && n == g.revs.len() {
                        return None;
                    }
                    return Some(g.revs[n - 1]);
                }
                None
            }
        }
    }

    /// The key's current revision if it is live.
    pub fn latest(&self) -> Option<Rev> {
        self.get(i64::MAX)
    }

    /// The newest revision strictly before `rev`, if the key was live there (the prev_kv of an
    /// event at `rev`).
    pub fn live_before(&self, rev: Rev) -> Option<Rev> {
        match self {
            KeyIndex::Single { main, sub } => {
                let r = Rev::new(*main, i64::from(*sub));
                (r < rev).then_some(r)
            }
            KeyIndex::Multi(h) => {
                for g in h.gens.iter().rev() {
                    let n = g.revs.partition_point(|r| *r < rev);
                    if n == 0 {
                        continue;
                    }
                    if g.tombstoned && n == g.revs.len() {
                        return None;
                    }
                    return Some(g.revs[n - 1]);
                }
                None
            }
        }
    }

    /// Compacts at main revision `at`: keeps the newest revision `<= at` and everything after,
    /// drops that one too if it is a tombstone. Dropped revisions are pushed to `dropped` with
    /// their tombstone flag. Returns true if nothing is left (the caller removes the key).
    pub fn compact(&mut self, at: i64, dropped: &mut Vec<(Rev, bool)>) -> bool {
        if matches!(self, KeyIndex::Single { .. }) {
            // A single live revision is either the newest at or below `at`, or above it: kept.
            return false;
        }
        let h = self.history_mut();
        // Locate the newest revision with main <= at: generation gi, position ri.
        let mut found = None;
        for (gi, g) in h.gens.iter().enumerate().rev() {
            let n = g.revs.partition_point(|r| r.main <= at);
            if n > 0 {
                found = Some((gi, n - 1));
                break;
            }
        }
        let Some((gi, ri)) = found else {
            return false;
        };
        for g in h.gens.drain(..gi) {
            let last = g.revs.len() - 1;
            for (i, r) in g.revs.into_iter().enumerate() {
                dropped.push((r, g.tombstoned && i == last));
            }
        }
        let g = &mut h.gens[0];
        let keep_from = if g.tombstoned && ri == g.revs.len() - 1 {
            ri + 1
        } else {
            ri
        };
        let last = g.revs.len() - 1;
        for (i, r) in g.revs.drain(..keep_from).enumerate() {
            dropped.push((r, g.tombstoned && i == last));
        }
        if g.revs.is_empty() {
            h.gens.remove(0);
        }
        if h.gens.is_empty() {
            return true;
        }
        // Collapse back to the compact form when it can say everything (the one revision left
        // is the put that created the key).
        let g = &h.gens[0];
        if h.gens.len() == 1
            && g.revs.len() == 1
            && !g.tombstoned
            && g.ver == 1
            && g.created == g.revs[0].main
        {
            let r = g.revs[0];
            *self = KeyIndex::new(r);
        }
        false
    }

    /// All retained revisions, oldest first, with their tombstone flag.
    pub fn revisions(&self) -> Vec<(Rev, bool)> {
        match self {
            KeyIndex::Single { main, sub } => vec![(Rev::new(*main, i64::from(*sub)), false)],
            KeyIndex::Multi(h) => {
                let mut out = Vec::new();
                for g in &h.gens {
                    let last = g.revs.len() - 1;
                    out.extend(
                        g.revs
                            .iter()
                            .enumerate()
                            .map(|(i, r)| (*r, g.tombstoned && i == last)),
                    );
                }
                out
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(main: i64) -> Rev {
        Rev::new(main, 0)
    }

    #[test]
    fn compact_enum_is_16_bytes() {
        assert_eq!(std::mem::size_of::<KeyIndex>(), 16);
    }

    #[test]
    fn get_across_generations() {
        let mut k = KeyIndex::new(r(2));
        assert_eq!(k.get(1), None);
        assert_eq!(k.get(2), Some(r(2)));
        k.put(r(4));
        k.tombstone(r(6));
        k.put(r(8));
        assert_eq!(k.get(3), Some(r(2)));
        assert_eq!(k.get(5), Some(r(4)));
        assert_eq!(k.get(6), None);
        assert_eq!(k.get(7), None);
        assert_eq!(k.get(8), Some(r(8)));
        assert_eq!(k.latest(), Some(r(8)));
        assert_eq!(k.live_before(r(6)), Some(r(4)));
        assert_eq!(k.live_before(r(8)), None);
        assert_eq!(k.live_before(r(2)), None);
    }

    #[test]
    fn compaction_keeps_newest_at_or_below() {
        let mut k = KeyIndex::new(r(2));
        k.put(r(4));
        k.tombstone(r(6));
        k.put(r(8));
        k.put(r(9));
        let mut dropped = vec![];
        assert!(!k.compact(5, &mut dropped));
        assert_eq!(dropped, vec![(r(2), false)]);
        assert_eq!(k.get(5), Some(r(4)));
        dropped.clear();
        // At 7 the newest is the tombstone at 6: it goes too, with 4.
        assert!(!k.compact(7, &mut dropped));
        assert_eq!(dropped, vec![(r(4), false), (r(6), true)]);
        assert_eq!(k.revisions(), vec![(r(8), false), (r(9), false)]);
        dropped.clear();
        assert!(!k.compact(9, &mut dropped));
        assert_eq!(dropped, vec![(r(8), false)]);
        // Only revision 9 is left, but it is version 2 of a key created at 8: the index keeps
        // saying so instead of collapsing to the compact form (which would mean "created at 9").
        assert_eq!(k.revisions(), vec![(r(9), false)]);
        assert_eq!(k.live_gen(), Some((8, 2)));
        let mut fresh = KeyIndex::new(r(2));
        fresh.tombstone(r(3));
        fresh.put(r(4));
        assert!(!fresh.compact(4, &mut dropped));
        assert!(matches!(fresh, KeyIndex::Single { main: 4, sub: 0 }));
    }

    #[test]
    fn generations_track_create_revision_and_version() {
        let mut k = KeyIndex::new(r(2));
        assert_eq!(k.live_gen(), Some((2, 1)));
        k.put(r(3));
        k.put(r(5));
        assert_eq!(k.live_gen(), Some((2, 3)));
        k.tombstone(r(6));
        assert_eq!(k.live_gen(), None);
        k.put(r(7));
        assert_eq!(k.live_gen(), Some((7, 1)));
        // Rebuilt from disk after compaction dropped the creating put.
        let mut l = KeyIndex::loaded(r(10), 4, 3);
        assert_eq!(l.live_gen(), Some((4, 3)));
        l.put_loaded(r(11), 4, 4);
        assert_eq!(l.live_gen(), Some((4, 4)));
        assert!(matches!(
            KeyIndex::loaded(r(9), 9, 1),
            KeyIndex::Single { .. }
        ));
    }

    #[test]
    fn compaction_of_deleted_key_removes_it() {
        let mut k = KeyIndex::new(r(2));
        k.tombstone(r(3));
        let mut dropped = vec![];
        assert!(!k.compact(2, &mut dropped));
        assert!(dropped.is_empty());
        assert!(k.compact(3, &mut dropped));
        assert_eq!(dropped, vec![(r(2), false), (r(3), true)]);
    }

    #[test]
    fn large_sub_does_not_truncate() {
        let big = Rev::new(5, i64::from(u32::MAX) + 1);
        let k = KeyIndex::new(big);
        assert_eq!(k.latest(), Some(big));
    }
}
