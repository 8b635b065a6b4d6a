//! Streaming snapshots: writing the blob of a [`SnapshotView`] to any `Write`, and restoring a
//! blob read from any `Read` without holding it in memory.
//!
//! A restore has two steps so the caller can put a durable "restore in progress" mark between
//! them (the Raft layer does, to redo an interrupted restore on restart):
//!
//! 1. [`Mvcc::prepare_restore`] reads the blob once, front to back, and touches nothing live:
//!    it rebuilds the in-memory state (key index, leases, revisions) with the same `Loader` that
//!    `open` uses, and writes each column family's records into an SST file of its own with
//!    RocksDB's `SstFileWriter` (the blob lists every family's records in key order, which is
//!    what an SST file needs). Memory is bounded by the index, which the store keeps in memory
//!    anyway, plus one record; the values go to disk. Any error — bad checksum, truncation,
//!    unknown column family, keys out of order — fails here, while the old state is intact.
//! 2. [`Mvcc::install_restore`] deletes every key of our column families (range tombstones)
//!    and ingests the prepared files, then swaps the in-memory state. Ingesting moves finished
//!    files into the LSM tree instead of writing every record through memtables: restoring a
//!    snapshot of hundreds of MB neither fills the memtables (the daemon's RSS) nor rewrites
//!    the data through the WAL. Step 2 is idempotent, so an interrupted one can simply be
//!    prepared and installed again from the same blob.
//!
//! Why SST ingestion rather than write batches: batches of a bounded size would keep memory
//! bounded too, but every byte would pass through a memtable (up to the daemon's memtable cap,
//! 64 MiB, resident) and be flushed into many small level-0 files that compaction must then
//! merge; ingestion writes each byte once.

use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use rocksdb::{IngestExternalFileOptions, IteratorMode, Options, SstFileWriter, WriteBatch};

use super::{Loader, Mvcc, SnapshotView, State, DELETE_ALL_END};
use crate::snapshot::{read_stream, Item, StreamWriter};
use crate::{MvccError, CFS};

/// A validated snapshot ready to replace the store (see the module docs). Dropping it removes
/// its files.
pub struct PreparedRestore {
    st: State,
    /// (column family, SST file) for every family with records.
    files: Vec<(String, PathBuf)>,
    dir: PathBuf,
}

impl std::fmt::Debug for PreparedRestore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedRestore")
            .field("revision", &self.st.current_rev)
            .field("keys", &self.st.live_keys)
            .field("files", &self.files)
            .finish()
    }
}

impl PreparedRestore {
    /// The revision the store will be at once installed.
    pub fn revision(&self) -> i64 {
        self.st.current_rev
    }

    /// Live keys the store will hold once installed.
    pub fn key_count(&self) -> usize {
        self.st.live_keys
    }
}

impl Drop for PreparedRestore {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.dir.display(), "removing restore files: {e}");
            }
        }
    }
}

fn io(what: &str, e: std::io::Error) -> MvccError {
    MvccError::Corrupt(format!("{what}: {e}"))
}

impl SnapshotView {
    /// Streams the blob of [`SnapshotView::encode`] (byte-identical) into `w` without building
    /// it in memory: each column family is scanned twice in the (immutable) RocksDB snapshot,
    /// once to count its records (the format puts the count first) and once to write them.
    pub fn write_to(&self, w: &mut dyn Write) -> Result<(), MvccError> {
        let mut out = StreamWriter::new(BufWriter::with_capacity(1 << 20, w))?;
        for name in CFS {
            let cf = self
                .db
                .cf_handle(name)
                .ok_or_else(|| MvccError::Corrupt(format!("column family {name} missing")))?;
            let mut count = 0u64;
            for item in self.snap.iterator_cf(&cf, IteratorMode::Start) {
                item?;
                count += 1;
            }
            out.section(name, count)?;
            let mut written = 0u64;
            for item in self.snap.iterator_cf(&cf, IteratorMode::Start) {
                let (k, v) = item?;
                out.record(&k, &v)?;
                written += 1;
            }
            if written != count {
                // Cannot happen with a RocksDB snapshot; never emit a blob that lies about it.
                return Err(MvccError::Corrupt(format!(
                    "column family {name} changed under its snapshot ({count} then {written} records)"
                )));
            }
        }
        out.finish()?.flush().map_err(|e| io("writing snapshot", e))
    }
}

/// The SST file being written for the current section.
struct Open {
    cf: String,
    path: PathBuf,
    records: u64,
}

/// Finishes the current section's file, if it got any record.
fn finish_file(
    open: Option<Open>,
    writer: &mut SstFileWriter<'_>,
    files: &mut Vec<(String, PathBuf)>,
) -> Result<(), MvccError> {
    if let Some(o) = open {
        if o.records > 0 {
            writer.finish()?;
            files.push((o.cf, o.path));
        }
    }
    Ok(())
}

impl Mvcc {
    /// Step 1 of a streaming restore (see the module docs): reads a blob of `len` bytes from `r`
    /// and prepares it under `dir` (created; removed again when the result is dropped). Does
    /// not touch the store, so it needs no `&self` and may run on any thread.
    pub fn prepare_restore(
        r: &mut dyn Read,
        len: u64,
        dir: &Path,
    ) -> Result<PreparedRestore, MvccError> {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("clearing the restore directory", e)),
        }
        std::fs::create_dir_all(dir).map_err(|e| io("creating the restore directory", e))?;
        let mut prepared = PreparedRestore {
            st: State::default(),
            files: Vec::new(),
            dir: dir.to_path_buf(),
        };
        // The families' own options only tune how they store files; the default (bytewise)
        // comparator is what they all use, and that is what an ingested file must match.
        let opts = Options::default();
        let mut writer = SstFileWriter::create(&opts);
        let mut open: Option<Open> = None;
        let mut seen: Vec<String> = Vec::new();
        let mut loader = Loader::default();
        read_stream(r, len, |item| match item {
            Item::Section(name) => {
                if !CFS.contains(&name) {
                    return Err(MvccError::Corrupt(format!(
                        "snapshot has unknown column family: {name}"
                    )));
                }
                if seen.iter().any(|s| s == name) {
                    return Err(MvccError::Corrupt(format!(
                        "snapshot lists column family {name} twice"
                    )));
                }
                seen.push(name.to_string());
                finish_file(open.take(), &mut writer, &mut prepared.files)?;
                // A fresh writer per file: one that was opened but never finished (an empty
                // section) must not carry over.
                writer = SstFileWriter::create(&opts);
                open = Some(Open {
                    cf: name.to_string(),
                    path: dir.join(format!("{name}.sst")),
                    records: 0,
                });
                Ok(())
            }
            Item::Record(k, v) => {
                let Some(o) = open.as_mut() else {
                    return Err(MvccError::Corrupt("record before any section".into()));
                };
                loader.record(&o.cf, k, v)?;
                if o.records == 0 {
                    writer.open(&o.path)?;
                }
                // Fails on keys out of order, which a blob from a RocksDB scan never has.
                writer.put(k, v)?;
                o.records += 1;
                Ok(())
            }
        })?;
        finish_file(open.take(), &mut writer, &mut prepared.files)?;
        prepared.st = loader.finish();
        tracing::info!(
            revision = prepared.st.current_rev,
            keys = prepared.st.live_keys,
            "snapshot validated and prepared for restore"
        );
        Ok(prepared)
    }

    /// Step 2 of a streaming restore: replaces every record of our column families with the
    /// prepared ones and swaps the in-memory state. The range deletions go through the WAL
    /// unsynced (the caller's next synced write makes them durable; until then an interrupted
    /// restore is redone from its mark); ingested files are durable when this returns. Readers
    /// get `Restoring` until `publish()`, as after [`Mvcc::restore`].
    pub fn install_restore(&mut self, mut p: PreparedRestore) -> Result<(), MvccError> {
        let mut wb = WriteBatch::default();
        for name in CFS {
            let cf = self
                .db
                .cf_handle(name)
                .ok_or_else(|| MvccError::Corrupt(format!("column family {name} missing")))?;
            wb.delete_range_cf(&cf, &[][..], &DELETE_ALL_END[..]);
        }
        self.db.write(wb)?;
        let mut opts = IngestExternalFileOptions::default();
        // The files are ours and on the same filesystem: link them in instead of copying.
        opts.set_move_files(true);
        for (name, path) in &p.files {
            let cf = self
                .db
                .cf_handle(name)
                .ok_or_else(|| MvccError::Corrupt(format!("column family {name} missing")))?;
            self.db
                .ingest_external_file_cf_opts(&cf, &opts, vec![path])?;
        }
        self.st = std::mem::take(&mut p.st);
        self.pending.clear();
        self.restoring = true;
        tracing::info!(
            revision = self.st.current_rev,
            keys = self.st.live_keys,
            "mvcc state restored from snapshot"
        );
        Ok(())
    }
}
