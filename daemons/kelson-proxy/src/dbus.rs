//! `io.kelson.Proxy1`: the proxy's own D-Bus interface, next to `io.kelson.Daemon1`.
//! Properties are read live from [`Shared`], which the sync loop updates; `Sync()` asks the
//! loop for a sync and returns once one has completed (bounded).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::Shared;

pub struct Proxy1 {
    pub shared: Arc<Shared>,
}

#[zbus::interface(name = "io.kelson.Proxy1")]
impl Proxy1 {
    /// `nftables` or `userspace`.
    #[zbus(property)]
    fn mode(&self) -> String {
        self.shared.mode.lock().clone()
    }
    /// Service ports programmed.
    #[zbus(property)]
    fn service_count(&self) -> u32 {
        self.shared.service_count.load(Ordering::Relaxed) as u32
    }
    /// nftables rules programmed (userspace mode: listeners).
    #[zbus(property)]
    fn rule_count(&self) -> u32 {
        self.shared.rule_count.load(Ordering::Relaxed) as u32
    }
    /// Duration of the last sync in seconds.
    #[zbus(property)]
    fn last_sync_duration(&self) -> f64 {
        f64::from_bits(self.shared.last_sync_secs.load(Ordering::Relaxed))
    }
    /// Runs a sync now and waits (at most 30 s) until it has finished.
    async fn sync(&self) -> zbus::fdo::Result<()> {
        let mut done = self.shared.syncs_done.subscribe();
        let before = *done.borrow_and_update();
        self.shared.sync_requested.notify_one();
        let waited = tokio::time::timeout(Duration::from_secs(30), async {
            while *done.borrow_and_update() == before {
                if done.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
        match waited {
            Ok(()) => Ok(()),
            Err(_) => Err(zbus::fdo::Error::Failed(
                "sync did not finish in 30 s".into(),
            )),
        }
    }
}
