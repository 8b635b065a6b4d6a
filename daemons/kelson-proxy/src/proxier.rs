//! The nftables proxier: keeps what was programmed per table and turns each desired state
//! into the smallest transaction.
//!
//! Rendering is cached per service port: a service whose [`ServiceInfo`] did not change
//! reuses its previous [`ServiceRules`] (an `Arc`, so no copy), which keeps a sync with 10k
//! services dominated by the one that changed. The transaction is a diff against the last
//! *successfully applied* state; after a failure the next sync recreates the whole table.
//!
//! Full syncs go through `nft -f`. Incremental ones are compiled into a netlink batch
//! ([`nft::batch`]) and committed on a `NETLINK_NETFILTER` socket ([`nft::netlink`]),
//! skipping `nft`'s cache fill; a script the encoder does not know goes through `nft -f`, and
//! a netlink failure is logged and answered by recreating the table with `nft` at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::model::{ServiceInfo, ServicePortName, State};
use crate::nft::{self, batch, netlink, Ctx, Family, Nft, NftError, Programmed, ServiceRules};

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
    /// Time spent applying (`nft` or the netlink transaction).
    pub apply: Duration,
    /// Bytes of nft script the transactions correspond to.
    pub script_bytes: usize,
    /// Whether the tables were recreated.
    pub full: bool,
    /// Tables whose incremental change went over netlink.
    pub netlink: usize,
    /// Incremental changes that went through `nft` instead (a form the netlink encoder does
    /// not know, or a netlink failure, which also recreates the table).
    pub nft_fallbacks: usize,
}

/// How incremental syncs reach the kernel.
#[derive(Debug)]
struct Netlink {
    /// Off: always `nft -f` (the fallback, and the benchmark's "before").
    on: bool,
    /// Opened at the first incremental sync; kept while `on` is toggled.
    socket: Option<netlink::Socket>,
}

/// Programs one `ip` and one `ip6` table.
pub struct NftProxier {
    nft: Nft,
    netlink: Netlink,
    tables: Vec<Table>,
}

impl std::fmt::Debug for NftProxier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NftProxier")
            .field("nft", &self.nft)
            .field("netlink", &self.netlink)
            .finish()
    }
}

/// Outcome of an incremental transaction.
enum Incremental {
    Applied,
    /// Netlink failed: the kernel state is unknown, recreate the table.
    NeedFull,
}

/// Applies an incremental `script` over netlink when it can be encoded, else with `nft`.
async fn apply_incremental(
    nft: &Nft,
    nl: &mut Netlink,
    ctx: &Ctx,
    script: &str,
    stats: &mut SyncStats,
) -> Result<Incremental, NftError> {
    if script.is_empty() {
        return Ok(Incremental::Applied);
    }
    if nl.on && nl.socket.is_none() {
        match netlink::Socket::open(nft.netns.as_deref()) {
            Ok(s) => nl.socket = Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "no netlink socket; incremental syncs use nft");
                nl.on = false;
            }
        }
    }
    if let (true, Some(sock)) = (nl.on, nl.socket.as_mut()) {
        match batch::compile(ctx.family, &ctx.table, script, sock.next_seq()) {
            Ok(b) => {
                let lines: Vec<&str> = script.lines().collect();
                return match sock.commit(&b, &lines) {
                    Ok(()) => {
                        stats.netlink += 1;
                        Ok(Incremental::Applied)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, table = %ctx.table, family = ?ctx.family,
                            "incremental netlink sync failed; recreating the table with nft");
                        stats.nft_fallbacks += 1;
                        Ok(Incremental::NeedFull)
                    }
                };
            }
            Err(e) => {
                tracing::debug!(error = %e, "incremental sync through nft");
                stats.nft_fallbacks += 1;
            }
        }
    }
    nft.apply(script).await.map(|()| Incremental::Applied)
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
        NftProxier {
            nft,
            netlink: Netlink {
                on: true,
                socket: None,
            },
            tables,
        }
    }

    /// Whether incremental syncs go over netlink (default) or through `nft -f`.
    pub fn set_netlink(&mut self, on: bool) {
        self.netlink.on = on;
    }

    /// Brings the tables to `state`; `full` recreates them.
    pub async fn sync(&mut self, state: &State, full: bool) -> Result<SyncStats, NftError> {
        let mut stats = SyncStats::default();
        let NftProxier {
            nft,
            netlink: nl,
            tables,
        } = self;
        for t in tables.iter_mut() {
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
            let full_of = |t: &Table| {
                let p = Programmed::from_services(
                    t.cache
                        .iter()
                        .map(|(k, (_, r))| (k.clone(), r.clone()))
                        .collect(),
                );
                (nft::full_script(&t.ctx, &p), p)
            };
            let (script, new) = if is_full {
                full_of(&*t)
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
            let res = if is_full {
                nft.apply(&script).await.map(|()| new)
            } else {
                match apply_incremental(nft, nl, &t.ctx, &script, &mut stats).await {
                    Ok(Incremental::Applied) => Ok(new),
                    Ok(Incremental::NeedFull) => {
                        let (script, p) = full_of(&*t);
                        stats.full = true;
                        nft.apply(&script).await.map(|()| p)
                    }
                    Err(e) => Err(e),
                }
            };
            match res {
                Ok(p) => t.programmed = Some(p),
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
