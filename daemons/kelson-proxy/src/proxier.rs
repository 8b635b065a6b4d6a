//! The nftables proxier: keeps what was programmed per table and turns each desired state
//! into the smallest transaction.
//!
//! Rendering is cached per service port: a service whose [`ServiceInfo`] did not change
//! reuses its previous [`ServiceRules`] (an `Arc`, so no copy), which keeps a sync with 10k
//! services dominated by the one that changed. The transaction is a diff against the last
//! *successfully applied* state; after a failure the next sync recreates the whole table.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::model::{ServiceInfo, ServicePortName, State};
use crate::nft::{self, Ctx, Family, Nft, NftError, Programmed, ServiceRules};

struct Table {
    ctx: Ctx,
    programmed: Option<Programmed>,
    cache: HashMap<ServicePortName, (ServiceInfo, Arc<ServiceRules>)>,
}

/// What one sync did.
#[derive(Debug, Clone, Copy, Default)]
pub struct SyncStats {
    /// Rules in all tables after the sync.
    pub rules: usize,
    /// Time spent rendering and diffing.
    pub render: Duration,
    /// Time spent in `nft`.
    pub apply: Duration,
    /// Bytes of nft script sent.
    pub script_bytes: usize,
    /// Whether the tables were recreated.
    pub full: bool,
}

/// Programs one `ip` and one `ip6` table.
pub struct NftProxier {
    nft: Nft,
    tables: Vec<Table>,
}

impl std::fmt::Debug for NftProxier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NftProxier")
            .field("nft", &self.nft)
            .finish()
    }
}

impl NftProxier {
    pub fn new(
        nft: Nft,
        cluster_cidrs: &[String],
        masquerade_all: bool,
        nodeport_cidrs: &[String],
    ) -> NftProxier {
        let tables = [Family::V4, Family::V6]
            .into_iter()
            .map(|f| Table {
                ctx: Ctx::new(f, cluster_cidrs, masquerade_all, nodeport_cidrs),
                programmed: None,
                cache: HashMap::new(),
            })
            .collect();
        NftProxier { nft, tables }
    }

    /// Brings the tables to `state`; `full` recreates them.
    pub async fn sync(&mut self, state: &State, full: bool) -> Result<SyncStats, NftError> {
        let mut stats = SyncStats::default();
        for t in &mut self.tables {
            let t0 = Instant::now();
            let is_full = full || t.programmed.is_none();
            // Only services whose info changed are rendered (and cloned into the cache).
            let mut changes: Vec<(ServicePortName, Option<Arc<ServiceRules>>)> = Vec::new();
            for (spn, info) in state {
                match t.cache.get(spn) {
                    Some((old, _)) if old == info => {}
                    _ => {
                        let r = Arc::new(nft::render_service(&t.ctx, spn, info));
                        t.cache.insert(spn.clone(), (info.clone(), r.clone()));
                        changes.push((spn.clone(), Some(r)));
                    }
                }
            }
            if t.cache.len() > state.len() {
                let gone: Vec<ServicePortName> = t
                    .cache
                    .keys()
                    .filter(|k| !state.contains_key(*k))
                    .cloned()
                    .collect();
                for k in gone {
                    t.cache.remove(&k);
                    changes.push((k, None));
                }
            }
            let (script, new) = if is_full {
                let p = Programmed::from_services(
                    t.cache
                        .iter()
                        .map(|(k, (_, r))| (k.clone(), r.clone()))
                        .collect(),
                );
                (nft::full_script(&t.ctx, &p), p)
            } else {
                let mut p = t.programmed.take().unwrap_or_default();
                (p.update(&t.ctx, changes), p)
            };
            stats.render += t0.elapsed();
            stats.full |= is_full;
            stats.script_bytes += script.len();
            let t1 = Instant::now();
            // On failure `programmed` stays None: the kernel may hold the old state, and the
            // next sync recreates the table from scratch.
            t.programmed = None;
            match self.nft.apply(&script).await {
                Ok(()) => t.programmed = Some(new),
                Err(e) => {
                    tracing::debug!(script_head = %script.lines().take(20).collect::<Vec<_>>().join("\n"), "failed transaction");
                    return Err(e);
                }
            }
            stats.apply += t1.elapsed();
            stats.rules += t
                .programmed
                .as_ref()
                .map(|p| p.rule_count(&t.ctx))
                .unwrap_or(0);
        }
        Ok(stats)
    }
}
