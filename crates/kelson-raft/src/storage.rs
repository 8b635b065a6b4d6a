//! Raft storage over the shared RocksDB instance.
//!
//! Layout: `raft_log` maps an 8-byte big-endian index to a prost-encoded `Entry`, so the log is
//! ordered and a truncation is one range delete. `raft_meta` holds small keys: the hard state,
//! the conf state, the truncation point (index and term of the entry just before the first one
//! kept), the applied index, the membership (JSON), the newest snapshot's (index, term) and the
//! (cluster id, member id) pair this data belongs to.
//!
//! Writes never go through this type directly: the Ready loop *stages* changes into the write
//! batch that also carries the state machine's writes, performs one write, and only then updates
//! the in-memory [`Core`] that raft reads through the [`raft::Storage`] trait. Raft reads storage
//! only from the loop's thread, so it never observes a staged-but-unwritten state.
//!
//! Snapshots are files `snap/<term>-<index>.snap` (hex): `KSNP`, a version byte (2), the length
//! (u32 BE) of the prost-encoded raft `SnapshotMetadata`, the metadata, then the snapshot data
//! (this crate's frame, see `node`). The metadata comes first so the file can be written as a
//! stream, and so raft can be handed a snapshot without reading its data: the `Snapshot` raft
//! sees carries [`FILE_DATA`] instead, and the transport streams the file named by its
//! metadata from disk. Files are written atomically (tmp, fsync, rename, fsync dir) and the
//! newest two are kept. Files a peer is still sending (`*.snap.part-*`) and restore scratch
//! directories (`restore-*`) left by a crash are removed on open.
//!
//! A snapshot restore is bracketed by [`K_RESTORING`]: set (synced) once the snapshot has been
//! validated and before the state machine's old state is replaced, cleared in the synced batch
//! that records the snapshot in the raft state. Finding it on start means the restore was
//! interrupted; the node then redoes it from the (fsynced) file before raft starts.

use std::collections::VecDeque;
use std::fs;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use prost_011::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};
use rocksdb::{ColumnFamily, WriteBatch, DB};

use crate::{MemberInfo, RaftError};

pub(crate) const CF_LOG: &str = "raft_log";
pub(crate) const CF_META: &str = "raft_meta";

pub(crate) const K_HARD_STATE: &[u8] = b"hard_state";
pub(crate) const K_CONF_STATE: &[u8] = b"conf_state";
pub(crate) const K_TRUNCATED: &[u8] = b"truncated";
pub(crate) const K_APPLIED: &[u8] = b"applied";
pub(crate) const K_MEMBERS: &[u8] = b"members";
pub(crate) const K_SNAPSHOT: &[u8] = b"snapshot";
pub(crate) const K_IDS: &[u8] = b"ids";
/// JSON list of member ids removed from the cluster (their peer traffic is refused with
/// [`crate::transport::REMOVED`], which makes them stop).
pub(crate) const K_REMOVED: &[u8] = b"removed";
/// (index, term) of a snapshot whose restore has started and not yet been recorded (see the
/// module docs).
pub(crate) const K_RESTORING: &[u8] = b"restoring";

/// The `data` of every `Snapshot` this crate hands raft: the real data is in the snapshot file
/// its metadata names.
pub(crate) const FILE_DATA: &[u8] = b"kelson-raft snapshot file v2";
const SNAP_MAGIC: &[u8; 4] = b"KSNP";
const SNAP_VERSION: u8 = 2;
/// Bound for the metadata record at the head of a snapshot file (a conf state of a few ids).
const SNAP_META_MAX: u32 = 1 << 20;

/// Path of the snapshot file for (term, index) in `dir`.
pub(crate) fn snap_file(dir: &Path, term: u64, index: u64) -> PathBuf {
    dir.join(format!("{term:016x}-{index:016x}.snap"))
}

/// A snapshot file opened for reading: its metadata, and a reader positioned at its data.
pub(crate) struct SnapFile {
    pub meta: SnapshotMetadata,
    pub data: BufReader<fs::File>,
    /// Bytes of data after the head.
    pub data_len: u64,
}

/// Opens a snapshot file and reads its head.
pub(crate) fn open_snapshot_file(path: &Path) -> Result<SnapFile, RaftError> {
    let bad = |why: String| RaftError::Storage(format!("snapshot {}: {why}", path.display()));
    let f = fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let len = f.metadata().map_err(|e| bad(e.to_string()))?.len();
    let mut r = BufReader::with_capacity(1 << 20, f);
    let mut head = [0u8; 9];
    r.read_exact(&mut head)
        .map_err(|e| bad(format!("reading its head: {e}")))?;
    if &head[..4] != SNAP_MAGIC || head[4] != SNAP_VERSION {
        return Err(bad("not a snapshot file of this version".into()));
    }
    let n = u32::from_be_bytes([head[5], head[6], head[7], head[8]]);
    if n > SNAP_META_MAX || 9 + n as u64 > len {
        return Err(bad(format!("metadata length {n} out of bounds")));
    }
    let mut buf = vec![0u8; n as usize];
    r.read_exact(&mut buf)
        .map_err(|e| bad(format!("reading its metadata: {e}")))?;
    let meta = SnapshotMetadata::decode(&buf[..]).map_err(|e| bad(format!("metadata: {e}")))?;
    Ok(SnapFile {
        meta,
        data: r,
        data_len: len - 9 - n as u64,
    })
}

/// Writes the head of a snapshot file.
pub(crate) fn write_snapshot_head(
    w: &mut dyn Write,
    meta: &SnapshotMetadata,
) -> std::io::Result<()> {
    let m = meta.encode_to_vec();
    w.write_all(SNAP_MAGIC)?;
    w.write_all(&[SNAP_VERSION])?;
    w.write_all(&(m.len() as u32).to_be_bytes())?;
    w.write_all(&m)
}

/// Entries kept in memory at the tail of the log; followers and the apply path read recent
/// entries, so this avoids a RocksDB lookup per entry in the common case.
const CACHE_MAX: usize = 4096;
/// The entry cache is also bounded by size: with large entries (a 128-put txn is ~40 KB) a
/// count bound alone would keep hundreds of MB resident.
const CACHE_MAX_BYTES: usize = 8 << 20;

fn entry_bytes(e: &Entry) -> usize {
    e.data.len() + e.context.len() + 32
}

pub(crate) fn idx_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

pub(crate) fn pair(a: u64, b: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&a.to_be_bytes());
    k[8..].copy_from_slice(&b.to_be_bytes());
    k
}

pub(crate) fn unpair(what: &str, v: &[u8]) -> Result<(u64, u64), RaftError> {
    if v.len() != 16 {
        return Err(RaftError::Storage(format!(
            "corrupt raft_meta key {what}: {} bytes",
            v.len()
        )));
    }
    let mut a = [0u8; 8];
    let mut b = [0u8; 8];
    a.copy_from_slice(&v[..8]);
    b.copy_from_slice(&v[8..]);
    Ok((u64::from_be_bytes(a), u64::from_be_bytes(b)))
}

fn u64_of(what: &str, v: &[u8]) -> Result<u64, RaftError> {
    let b: [u8; 8] = v
        .try_into()
        .map_err(|_| RaftError::Storage(format!("corrupt raft_meta key {what}")))?;
    Ok(u64::from_be_bytes(b))
}

/// The in-memory view raft reads.
#[derive(Default)]
pub(crate) struct Core {
    pub hs: HardState,
    pub cs: ConfState,
    /// First index available in the log (truncated index + 1).
    pub first_index: u64,
    pub last_index: u64,
    /// Term of the entry at `first_index - 1`.
    pub truncated_term: u64,
    /// Newest snapshot file (index, term); (0, 0) when there is none.
    pub snap: (u64, u64),
    pub cache: VecDeque<Entry>,
    /// Sum of `entry_bytes` over `cache`.
    pub cache_bytes: usize,
    /// Set when a peer needs a snapshot newer than the newest file (one that covers the
    /// compacted log, or includes the peer itself in its conf state); the Ready loop takes one
    /// promptly. Snapshot files are only ever made on such demand.
    pub want_snapshot: bool,
}

/// What `open` found on disk besides the raft state itself.
#[derive(Debug, Default)]
pub(crate) struct Persisted {
    pub ids: Option<(u64, u64)>,
    pub applied: u64,
    pub members: Option<Vec<MemberInfo>>,
    /// A hard state or conf state exists: this is a restart.
    pub initialized: bool,
}

/// `raft::Storage` over RocksDB; cheap to clone (the loop keeps one, the RawNode another).
#[derive(Clone)]
pub struct RocksStorage {
    db: Arc<DB>,
    pub(crate) core: Arc<RwLock<Core>>,
    snap_dir: PathBuf,
}

impl RocksStorage {
    /// Loads the raft state from `db` (column families [`crate::CFS`] must exist).
    pub(crate) fn open(db: Arc<DB>, snap_dir: PathBuf) -> Result<(Self, Persisted), RaftError> {
        for cf in crate::CFS {
            if db.cf_handle(cf).is_none() {
                return Err(RaftError::Storage(format!(
                    "column family {cf} missing: open the DB with kelson_raft::CFS"
                )));
            }
        }
        fs::create_dir_all(&snap_dir)
            .map_err(|e| RaftError::Storage(format!("creating {}: {e}", snap_dir.display())))?;
        remove_leftovers(&snap_dir);
        let s = RocksStorage {
            db,
            core: Arc::new(RwLock::new(Core::default())),
            snap_dir,
        };
        let mut p = Persisted::default();
        let mut core = Core::default();
        if let Some(v) = s.meta_get(K_HARD_STATE)? {
            core.hs = HardState::decode(&v[..])
                .map_err(|e| RaftError::Storage(format!("corrupt raft_meta hard_state: {e}")))?;
            p.initialized = true;
        }
        if let Some(v) = s.meta_get(K_CONF_STATE)? {
            core.cs = ConfState::decode(&v[..])
                .map_err(|e| RaftError::Storage(format!("corrupt raft_meta conf_state: {e}")))?;
            p.initialized = true;
        }
        let (trunc_idx, trunc_term) = match s.meta_get(K_TRUNCATED)? {
            Some(v) => unpair("truncated", &v)?,
            None => (0, 0),
        };
        core.first_index = trunc_idx + 1;
        core.truncated_term = trunc_term;
        if let Some(v) = s.meta_get(K_SNAPSHOT)? {
            core.snap = unpair("snapshot", &v)?;
        }
        if let Some(v) = s.meta_get(K_APPLIED)? {
            p.applied = u64_of("applied", &v)?;
        }
        if let Some(v) = s.meta_get(K_IDS)? {
            p.ids = Some(unpair("ids", &v)?);
        }
        if let Some(v) = s.meta_get(K_MEMBERS)? {
            p.members = Some(
                serde_json::from_slice(&v)
                    .map_err(|e| RaftError::Storage(format!("corrupt raft_meta members: {e}")))?,
            );
        }
        core.last_index = trunc_idx;
        {
            let mut it = s.db.raw_iterator_cf(s.cf_log()?);
            it.seek_to_last();
            if let Some(k) = it.key() {
                core.last_index = u64_of("raft_log key", k)?.max(trunc_idx);
            }
            it.status()?;
        }
        if p.applied > core.hs.commit && p.initialized {
            return Err(RaftError::Storage(format!(
                "corrupt raft_meta: applied {} beyond commit {}",
                p.applied, core.hs.commit
            )));
        }
        *s.core.write() = core;
        Ok((s, p))
    }

    fn meta_get(&self, k: &[u8]) -> Result<Option<Vec<u8>>, RaftError> {
        Ok(self.db.get_cf(self.cf_meta()?, k)?)
    }

    pub(crate) fn cf_log(&self) -> Result<&ColumnFamily, RaftError> {
        self.db
            .cf_handle(CF_LOG)
            .ok_or_else(|| RaftError::Storage("column family raft_log missing".into()))
    }

    pub(crate) fn cf_meta(&self) -> Result<&ColumnFamily, RaftError> {
        self.db
            .cf_handle(CF_META)
            .ok_or_else(|| RaftError::Storage("column family raft_meta missing".into()))
    }

    pub(crate) fn db(&self) -> &Arc<DB> {
        &self.db
    }

    /// Stages appending `ents` (which may overwrite a conflicting tail) into `wb`.
    pub(crate) fn stage_entries(
        &self,
        wb: &mut WriteBatch,
        ents: &[Entry],
    ) -> Result<(), RaftError> {
        let (Some(first), Some(last)) = (ents.first(), ents.last()) else {
            return Ok(());
        };
        let core = self.core.read();
        if first.index < core.first_index {
            return Err(RaftError::Storage(format!(
                "append at {} overwrites compacted log (first index {})",
                first.index, core.first_index
            )));
        }
        if first.index > core.last_index + 1 {
            return Err(RaftError::Storage(format!(
                "append at {} leaves a gap after {}",
                first.index, core.last_index
            )));
        }
        let cf = self.cf_log()?;
        for e in ents {
            wb.put_cf(cf, idx_key(e.index), e.encode_to_vec());
        }
        if core.last_index > last.index {
            wb.delete_range_cf(cf, idx_key(last.index + 1), idx_key(core.last_index + 1));
        }
        Ok(())
    }

    /// Makes appended entries visible to raft once the batch holding them is written.
    pub(crate) fn commit_entries(&self, ents: &[Entry]) {
        let (Some(first), Some(last)) = (ents.first(), ents.last()) else {
            return;
        };
        let mut core = self.core.write();
        core.last_index = last.index;
        while core.cache.back().is_some_and(|e| e.index >= first.index) {
            if let Some(e) = core.cache.pop_back() {
                core.cache_bytes -= entry_bytes(&e);
            }
        }
        if core
            .cache
            .back()
            .is_some_and(|e| e.index + 1 != first.index)
        {
            core.cache.clear();
            core.cache_bytes = 0;
        }
        core.cache_bytes += ents.iter().map(entry_bytes).sum::<usize>();
        core.cache.extend(ents.iter().cloned());
        while core.cache.len() > CACHE_MAX || core.cache_bytes > CACHE_MAX_BYTES {
            match core.cache.pop_front() {
                Some(e) => core.cache_bytes -= entry_bytes(&e),
                None => break,
            }
        }
    }

    /// Drops log entries below `compact_to` (exclusive), remembering the term of the entry just
    /// before the new first index. Written immediately: losing it in a crash only keeps more log.
    pub(crate) fn compact(&self, compact_to: u64) -> Result<(), RaftError> {
        let (first, last) = {
            let c = self.core.read();
            (c.first_index, c.last_index)
        };
        if compact_to <= first || compact_to > last + 1 {
            return Ok(());
        }
        let term = raft::Storage::term(self, compact_to - 1)
            .map_err(|e| RaftError::Storage(format!("term of {}: {e}", compact_to - 1)))?;
        let mut wb = WriteBatch::default();
        wb.put_cf(self.cf_meta()?, K_TRUNCATED, pair(compact_to - 1, term));
        wb.delete_range_cf(self.cf_log()?, idx_key(0), idx_key(compact_to));
        self.db.write(wb)?;
        let mut core = self.core.write();
        core.first_index = compact_to;
        core.truncated_term = term;
        while core.cache.front().is_some_and(|e| e.index < compact_to) {
            if let Some(e) = core.cache.pop_front() {
                core.cache_bytes -= entry_bytes(&e);
            }
        }
        Ok(())
    }

    /// Path of the snapshot file for (term, index).
    pub(crate) fn snap_path(&self, term: u64, index: u64) -> PathBuf {
        snap_file(&self.snap_dir, term, index)
    }

    pub(crate) fn snap_dir(&self) -> &Path {
        &self.snap_dir
    }

    /// Writes a snapshot file whose data is in memory (the bootstrap snapshot).
    pub(crate) fn write_snapshot_file(&self, snap: &Snapshot) -> Result<(), RaftError> {
        self.write_snapshot_file_with(snap.get_metadata(), |w| {
            w.write_all(&snap.data)
                .map_err(|e| RaftError::Storage(format!("writing snapshot data: {e}")))
        })
    }

    /// Writes a snapshot file atomically, its data streamed by `write_data`, and keeps only the
    /// newest two.
    pub(crate) fn write_snapshot_file_with(
        &self,
        meta: &SnapshotMetadata,
        write_data: impl FnOnce(&mut dyn Write) -> Result<(), RaftError>,
    ) -> Result<(), RaftError> {
        let path = self.snap_path(meta.term, meta.index);
        let tmp = path.with_extension("snap.tmp");
        let io = |e: std::io::Error| RaftError::Storage(format!("writing {}: {e}", path.display()));
        let written = (|| {
            let mut w = BufWriter::with_capacity(1 << 20, fs::File::create(&tmp).map_err(io)?);
            write_snapshot_head(&mut w, meta).map_err(io)?;
            write_data(&mut w)?;
            let f = w.into_inner().map_err(|e| io(e.into_error()))?;
            f.sync_all().map_err(io)
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        fs::rename(&tmp, &path).map_err(io)?;
        sync_dir(&self.snap_dir).map_err(io)?;
        self.prune_snapshots(2);
        Ok(())
    }

    pub(crate) fn prune_snapshots(&self, keep: usize) {
        let Ok(rd) = fs::read_dir(&self.snap_dir) else {
            return;
        };
        let mut files: Vec<(u64, PathBuf)> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let p = e.path();
                let name = p.file_name()?.to_str()?.to_string();
                if let Some(stem) = name.strip_suffix(".snap.tmp") {
                    let _ = stem;
                    let _ = fs::remove_file(&p);
                    return None;
                }
                let stem = name.strip_suffix(".snap")?;
                let (_, idx) = stem.split_once('-')?;
                Some((u64::from_str_radix(idx, 16).ok()?, p))
            })
            .collect();
        files.sort();
        let n = files.len().saturating_sub(keep);
        for (_, p) in files.into_iter().take(n) {
            if let Err(e) = fs::remove_file(&p) {
                tracing::warn!(path = %p.display(), "removing old snapshot: {e}");
            }
        }
    }

    /// The newest snapshot as raft sees it: its metadata, read from the file's head, and
    /// [`FILE_DATA`] (the transport streams the file itself).
    pub(crate) fn load_snapshot(&self) -> Result<Option<Snapshot>, RaftError> {
        let (index, term) = self.core.read().snap;
        if index == 0 {
            return Ok(None);
        }
        let f = open_snapshot_file(&self.snap_path(term, index))?;
        if (f.meta.index, f.meta.term) != (index, term) {
            return Err(RaftError::Storage(format!(
                "snapshot file for {index}/{term} holds {}/{}",
                f.meta.index, f.meta.term
            )));
        }
        Ok(Some(Snapshot {
            data: FILE_DATA.to_vec(),
            metadata: Some(f.meta),
        }))
    }

    /// (index, term) of an interrupted restore (see the module docs).
    pub(crate) fn restore_mark(&self) -> Result<Option<(u64, u64)>, RaftError> {
        self.meta_get(K_RESTORING)?
            .map(|v| unpair("restoring", &v))
            .transpose()
    }

    fn read_entries(&self, low: u64, high: u64, max_size: Option<u64>) -> raft::Result<Vec<Entry>> {
        let mut out = Vec::with_capacity((high - low).min(1024) as usize);
        {
            let core = self.core.read();
            if let Some(front) = core.cache.front() {
                if front.index <= low {
                    let start = (low - front.index) as usize;
                    let end = ((high - front.index) as usize).min(core.cache.len());
                    out.extend(core.cache.range(start..end).cloned());
                }
            }
        }
        if out.is_empty() {
            let cf = self.cf_log().map_err(to_raft_err)?;
            let mut it = self.db.raw_iterator_cf(cf);
            it.seek(idx_key(low));
            let mut next = low;
            while next < high {
                let Some(v) = it.value() else { break };
                let e = Entry::decode(v).map_err(|e| {
                    to_raft_err(RaftError::Storage(format!("corrupt raft_log entry: {e}")))
                })?;
                if e.index != next {
                    return Err(to_raft_err(RaftError::Storage(format!(
                        "raft_log hole: wanted {next}, found {}",
                        e.index
                    ))));
                }
                out.push(e);
                next += 1;
                it.next();
            }
            it.status().map_err(|e| to_raft_err(e.into()))?;
        }
        if out.len() as u64 != high - low {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        raft::util::limit_size(&mut out, max_size);
        Ok(out)
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Removes what a crash can leave in the snapshot directory: partly received files, partly
/// written ones, and restore scratch directories.
fn remove_leftovers(dir: &Path) {
    let Ok(rd) = fs::read_dir(dir) else {
        return;
    };
    for e in rd.filter_map(|e| e.ok()) {
        let p = e.path();
        let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let res = if name.contains(".snap.part-") || name.ends_with(".snap.tmp") {
            fs::remove_file(&p)
        } else if name.starts_with("restore-") && p.is_dir() {
            fs::remove_dir_all(&p)
        } else {
            continue;
        };
        if let Err(e) = res {
            tracing::warn!(path = %p.display(), "removing a leftover: {e}");
        }
    }
}

/// Makes a received snapshot file (fsynced, at `part`) the snapshot file for its metadata.
pub(crate) fn publish_received(
    part: &Path,
    dir: &Path,
    meta: &SnapshotMetadata,
) -> Result<PathBuf, RaftError> {
    let path = snap_file(dir, meta.term, meta.index);
    let io = |e: std::io::Error| RaftError::Storage(format!("installing {}: {e}", path.display()));
    fs::rename(part, &path).map_err(io)?;
    sync_dir(dir).map_err(io)?;
    Ok(path)
}

fn to_raft_err(e: RaftError) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(e)))
}

impl raft::Storage for RocksStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let c = self.core.read();
        Ok(RaftState::new(c.hs.clone(), c.cs.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        {
            let c = self.core.read();
            if low < c.first_index {
                return Err(raft::Error::Store(StorageError::Compacted));
            }
            if high > c.last_index + 1 || low > high {
                return Err(raft::Error::Store(StorageError::Unavailable));
            }
        }
        if low == high {
            return Ok(Vec::new());
        }
        self.read_entries(low, high, max_size.into())
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        {
            let c = self.core.read();
            if idx + 1 == c.first_index {
                return Ok(c.truncated_term);
            }
            if idx < c.first_index {
                return Err(raft::Error::Store(StorageError::Compacted));
            }
            if idx > c.last_index {
                return Err(raft::Error::Store(StorageError::Unavailable));
            }
            if let Some(front) = c.cache.front() {
                if front.index <= idx {
                    if let Some(e) = c.cache.get((idx - front.index) as usize) {
                        return Ok(e.term);
                    }
                }
            }
        }
        Ok(self.read_entries(idx, idx + 1, None)?[0].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.core.read().first_index)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.core.read().last_index)
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let includes = |s: &Snapshot| {
            let cs = s.get_metadata().get_conf_state();
            [
                &cs.voters,
                &cs.learners,
                &cs.voters_outgoing,
                &cs.learners_next,
            ]
            .iter()
            .any(|ids| ids.contains(&to))
        };
        // The log is compacted independently of snapshot files (see `Loop::maybe_snapshot`),
        // so a file may predate the compaction point: the peer would then still miss entries.
        let truncated = self.core.read().first_index.saturating_sub(1);
        match self.load_snapshot() {
            // A snapshot that predates the peer's own addition is useless to it: raft-rs would
            // ignore it, so ask the loop for a fresh one and let raft retry.
            Ok(Some(s))
                if s.get_metadata().index >= request_index.max(truncated) && includes(&s) =>
            {
                Ok(s)
            }
            Ok(_) => {
                self.core.write().want_snapshot = true;
                Err(raft::Error::Store(
                    StorageError::SnapshotTemporarilyUnavailable,
                ))
            }
            Err(e) => {
                // E.g. a file of an older format: build a new one.
                tracing::warn!("loading snapshot for a peer: {e}; taking a new one");
                self.core.write().want_snapshot = true;
                Err(raft::Error::Store(
                    StorageError::SnapshotTemporarilyUnavailable,
                ))
            }
        }
    }
}
