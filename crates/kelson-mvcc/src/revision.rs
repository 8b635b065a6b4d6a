//! Revisions and their on-disk encoding.
//!
//! A revision is `(main, sub)`: `main` is bumped once per write request, `sub` numbers the changes
//! inside it. The "kv" column family is keyed by the revision, encoded big-endian so that RocksDB's
//! bytewise order is revision order — which is what makes `events()` a plain forward scan and lets
//! compaction delete precise keys. A tombstone's key carries a trailing `b't'` (etcd's layout), so a
//! scan can tell a delete from a put without decoding the value.

use crate::MvccError;

/// Length of a revision key without the tombstone marker.
pub const REV_KEY_LEN: usize = 17;
const TOMBSTONE_MARK: u8 = b't';

/// A `(main, sub)` revision. Ordered by `main`, then `sub`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Rev {
    pub main: i64,
    pub sub: i64,
}

impl Rev {
    pub const fn new(main: i64, sub: i64) -> Rev {
        Rev { main, sub }
    }

    /// The "kv" key of this revision; `tombstone` appends the marker.
    pub fn to_key(self, tombstone: bool) -> Vec<u8> {
        let mut k = Vec::with_capacity(REV_KEY_LEN + 1);
        k.extend_from_slice(&self.main.to_be_bytes());
        k.push(b'_');
        k.extend_from_slice(&self.sub.to_be_bytes());
        if tombstone {
            k.push(TOMBSTONE_MARK);
        }
        k
    }

    /// Decodes a "kv" key into the revision and whether it marks a tombstone.
    pub fn from_key(k: &[u8]) -> Result<(Rev, bool), MvccError> {
        let tombstone = match k.len() {
            REV_KEY_LEN => false,
            n if n == REV_KEY_LEN + 1 && k[REV_KEY_LEN] == TOMBSTONE_MARK => true,
            _ => return Err(MvccError::Corrupt(format!("bad revision key {k:02x?}"))),
        };
        if k[8] != b'_' {
            return Err(MvccError::Corrupt(format!("bad revision key {k:02x?}")));
        }
        let main = i64::from_be_bytes(k[0..8].try_into().expect("8 bytes"));
        let sub = i64::from_be_bytes(k[9..17].try_into().expect("8 bytes"));
        Ok((Rev { main, sub }, tombstone))
    }

    /// The smallest "kv" key of main revision `main` (scan bound).
    pub fn start_key(main: i64) -> Vec<u8> {
        Rev::new(main, 0).to_key(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_roundtrip_and_order() {
        let a = Rev::new(2, 7);
        let b = Rev::new(3, 0);
        for t in [false, true] {
            assert_eq!(Rev::from_key(&a.to_key(t)).unwrap(), (a, t));
        }
        // Bytewise order of keys follows revision order, and a tombstone sorts right after its
        // live twin (never after the next revision).
        assert!(a.to_key(false) < a.to_key(true));
        assert!(a.to_key(true) < b.to_key(false));
        assert!(Rev::new(255, 0).to_key(false) < Rev::new(256, 0).to_key(false));
    }

    #[test]
    fn bad_keys_are_errors() {
        assert!(Rev::from_key(b"short").is_err());
        let mut k = Rev::new(1, 1).to_key(false);
        k.push(b'x');
        assert!(Rev::from_key(&k).is_err());
        k.truncate(REV_KEY_LEN);
        k[8] = b'-';
        assert!(Rev::from_key(&k).is_err());
    }
}
