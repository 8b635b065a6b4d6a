//! Building a new data directory from a snapshot file (`kelsonctl kv snapshot restore`).
//!
//! Like `etcdutl snapshot restore`, this writes only the keyspace: the restored member starts a
//! brand-new Raft cluster (new cluster ID from its `--initial-cluster` and token) over the
//! restored data. Restore every member of the new cluster from the same file.

use std::path::Path;

use anyhow::{bail, Context};
use kelson_mvcc::Mvcc;

use crate::config::parse_initial_cluster;

pub fn restore_snapshot(
    snapshot: &Path,
    data_dir: &Path,
    name: &str,
    initial_cluster: &str,
    initial_cluster_token: &str,
    initial_advertise_peer_urls: &str,
) -> anyhow::Result<()> {
    if initial_cluster_token.is_empty() {
        bail!("--initial-cluster-token must not be empty");
    }
    if !initial_cluster.is_empty() {
        let cluster = parse_initial_cluster(initial_cluster)?;
        let mine = crate::config::split_urls(initial_advertise_peer_urls);
        if !cluster
            .iter()
            .any(|(n, urls)| n == name && mine.iter().all(|u| urls.contains(u)))
        {
            bail!("--initial-cluster does not contain {name}={initial_advertise_peer_urls}");
        }
    }
    if data_dir.exists() && std::fs::read_dir(data_dir)?.next().is_some() {
        bail!(
            "data dir {} already exists and is not empty; refusing to overwrite it",
            data_dir.display()
        );
    }
    let raw = std::fs::read(snapshot).with_context(|| format!("reading {}", snapshot.display()))?;
    let state = crate::maintenance::decode_snapshot(&raw)
        .map_err(|e| anyhow::anyhow!("{}: {e}", snapshot.display()))?;
    let db = crate::server::open_db(data_dir)?;
    let mut mvcc = Mvcc::open(db.clone())?;
    let mut wb = rocksdb::WriteBatch::default();
    mvcc.restore(state, &mut wb)
        .context("restoring the keyspace")?;
    let mut wo = rocksdb::WriteOptions::default();
    wo.set_sync(true);
    db.write_opt(wb, &wo)?;
    mvcc.publish();
    tracing::info!(
        revision = mvcc.current_revision(),
        keys = mvcc.key_count(),
        data_dir = %data_dir.display(),
        "restored snapshot"
    );
    Ok(())
}
