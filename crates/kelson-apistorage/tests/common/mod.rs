//! What the storage and watch cache suites share: the per-store-kind fixture (each scenario
//! runs against the real etcd and against kelson-kv, each on its own single-member cluster on
//! loopback ports in a temp dir), the connection with test tunables, and small object helpers.
#![allow(dead_code)] // each test crate uses its own subset

use std::time::Duration;

use anyhow::{Context, Result};
use kelson_apistorage::{EtcdTls, Storage, StorageConfig};
use kelson_testsupport::{ClusterOpts, StoreCluster, StoreKind};
use serde_json::Value;

/// Runs `$name(kind)` as two tests, `$name::etcd` and `$name::kelson`.
macro_rules! both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use kelson_testsupport::StoreKind;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn etcd() {
                super::$name(StoreKind::Etcd).await.unwrap();
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn kelson() {
                super::$name(StoreKind::Kelson).await.unwrap();
            }
        }
    )*};
}

/// A one-member cluster of `kind` and a storage on it (mutual TLS when `opts.tls`).
/// `bookmark_interval` is also how often a watch cache asks the store for progress.
pub async fn start(
    kind: StoreKind,
    opts: ClusterOpts,
    bookmark_interval: Duration,
) -> Result<(StoreCluster, Storage)> {
    let tls = opts.tls;
    let cluster = StoreCluster::start(kind, 1, opts).await?;
    let tls = if tls {
        let p = cluster.pki().context("tls cluster without pki")?;
        Some(EtcdTls {
            ca: p.ca_cert.clone(),
            cert: Some(p.client_cert.clone()),
            key: Some(p.client_key.clone()),
        })
    } else {
        None
    };
    let config = StorageConfig {
        bookmark_interval,
        request_timeout: Duration::from_secs(5),
        ..StorageConfig::default()
    };
    let storage = Storage::connect_with(&cluster.endpoints(), tls, config).await?;
    Ok((cluster, storage))
}

/// The key of pod `name` in namespace `ns`.
pub fn key(name: &str) -> String {
    format!("/registry/pods/ns/{name}")
}

/// An object's resourceVersion as a number (-1 when missing or malformed).
pub fn rv(o: &Value) -> i64 {
    o["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(-1)
}
