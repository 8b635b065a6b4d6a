//! `io.kelson.APIServer1`: the API server's own D-Bus interface, next to `io.kelson.Daemon1`.
//!
//! Read-only properties, read live on every Get: how many requests were served, how many
//! watches are open, and which store endpoints the server talks to.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::server::Api;

pub struct ApiServer1 {
    pub api: Arc<Api>,
}

#[zbus::interface(name = "io.kelson.APIServer1")]
impl ApiServer1 {
    /// Requests served since start.
    #[zbus(property)]
    fn requests(&self) -> u64 {
        self.api.stats.requests.load(Ordering::Relaxed)
    }
    /// Watches open now.
    #[zbus(property)]
    fn watch_count(&self) -> i64 {
        self.api.stats.watches.load(Ordering::Relaxed)
    }
    /// The `--etcd-servers` list.
    #[zbus(property)]
    fn etcd_servers(&self) -> Vec<String> {
        self.api.etcd_servers.clone()
    }
}
