//! A rate-limited work queue of object keys, like client-go's `workqueue`.
//!
//! Controllers never act on events directly: an event only *names* an object (its
//! `namespace/name` key) and the key goes into the queue. The properties that make this safe:
//!
//! - a key is queued at most once (a burst of events for one object is one reconcile);
//! - a key being processed is never handed to a second worker; if it is added meanwhile it is
//!   marked dirty and re-queued when the worker is done, so the newest state is always seen;
//! - failures are retried with per-key exponential back-off (5 ms doubling up to 1000 s, as
//!   upstream's default controller rate limiter), reset by [`WorkQueue::forget`];
//! - `add_after` schedules a key for later (minReadySeconds, progress deadlines, grace periods).
//!
//! The queue depth and the last error are exported for D-Bus and metrics.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

const BASE_DELAY: Duration = Duration::from_millis(5);
const MAX_DELAY: Duration = Duration::from_secs(1000);

#[derive(Default)]
struct Inner {
    queue: VecDeque<String>,
    queued: HashSet<String>,
    processing: HashSet<String>,
    dirty: HashSet<String>,
    failures: HashMap<String, u32>,
    shutdown: bool,
}

/// A deduplicating, rate-limited queue of keys (cheap to clone).
#[derive(Clone, Default)]
pub struct WorkQueue {
    inner: Arc<Mutex<Inner>>,
    notify: Arc<Notify>,
    last_error: Arc<Mutex<String>>,
}

impl std::fmt::Debug for WorkQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkQueue")
            .field("len", &self.len())
            .finish()
    }
}

impl WorkQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues `key` unless it is already queued; a key being processed is re-queued after.
    pub fn add(&self, key: impl Into<String>) {
        let key = key.into();
        let mut g = self.inner.lock();
        if g.shutdown || g.queued.contains(&key) {
            return;
        }
        if g.processing.contains(&key) {
            g.dirty.insert(key);
            return;
        }
        g.queued.insert(key.clone());
        g.queue.push_back(key);
        drop(g);
        self.notify.notify_one();
    }

    /// Queues `key` after `delay`.
    pub fn add_after(&self, key: impl Into<String>, delay: Duration) {
        let key = key.into();
        if delay.is_zero() {
            return self.add(key);
        }
        let me = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            me.add(key);
        });
    }

    /// Queues `key` after its next back-off delay (failure count grows each call).
    pub fn add_rate_limited(&self, key: &str) {
        let n = {
            let mut g = self.inner.lock();
            let n = g.failures.entry(key.to_string()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        self.add_after(key.to_string(), backoff(n));
    }

    /// Resets `key`'s back-off after a successful reconcile.
    pub fn forget(&self, key: &str) {
        self.inner.lock().failures.remove(key);
    }

    /// The next key to process, or `None` once shut down. Call [`WorkQueue::done`] after.
    pub async fn get(&self) -> Option<String> {
        loop {
            // Register interest before checking, so an add between check and wait is not lost.
            let notified = self.notify.notified();
            {
                let mut g = self.inner.lock();
                if g.shutdown {
                    return None;
                }
                if let Some(k) = g.queue.pop_front() {
                    g.queued.remove(&k);
                    g.processing.insert(k.clone());
                    return Some(k);
                }
            }
            notified.await;
        }
    }

    /// Marks `key` processed; re-queues it if it was added while being processed.
    pub fn done(&self, key: &str) {
        let mut g = self.inner.lock();
        g.processing.remove(key);
        if g.dirty.remove(key) && !g.queued.contains(key) && !g.shutdown {
            g.queued.insert(key.to_string());
            g.queue.push_back(key.to_string());
            drop(g);
            self.notify.notify_one();
        }
    }

    /// Keys waiting to be processed (not counting delayed ones).
    pub fn len(&self) -> usize {
        self.inner.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops handing out keys; pending `get`s return `None`.
    pub fn shutdown(&self) {
        self.inner.lock().shutdown = true;
        self.notify.notify_waiters();
    }

    pub fn set_last_error(&self, e: String) {
        *self.last_error.lock() = e;
    }

    pub fn last_error(&self) -> String {
        self.last_error.lock().clone()
    }
}

/// Upstream's exponential failure back-off: 5 ms · 2^(n-1), at most 1000 s.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(30);
    BASE_DELAY
        .checked_mul(1u32 << exp)
        .map_or(MAX_DELAY, |d| d.min(MAX_DELAY))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dedups_and_requeues_dirty_keys() {
        let q = WorkQueue::new();
        q.add("a");
        q.add("a");
        q.add("b");
        assert_eq!(q.len(), 2);
        let k = q.get().await.unwrap();
        assert_eq!(k, "a");
        // Added while processing: not handed out twice, re-queued on done.
        q.add("a");
        assert_eq!(q.len(), 1);
        assert_eq!(q.get().await.unwrap(), "b");
        q.done("b");
        q.done("a");
        assert_eq!(q.len(), 1);
        assert_eq!(q.get().await.unwrap(), "a");
    }

    #[tokio::test]
    async fn shutdown_wakes_getters() {
        let q = WorkQueue::new();
        let q2 = q.clone();
        let h = tokio::spawn(async move { q2.get().await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        q.shutdown();
        let r = tokio::time::timeout(Duration::from_secs(2), h)
            .await
            .unwrap()
            .unwrap();
        assert!(r.is_none());
    }

    #[tokio::test]
    async fn rate_limited_adds_back_off() {
        let q = WorkQueue::new();
        q.add_rate_limited("k");
        assert_eq!(q.len(), 0, "a failed key waits for its back-off");
        for _ in 0..200 {
            if q.len() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(q.len(), 1);
        q.forget("k");
        assert_eq!(backoff(1), Duration::from_millis(5));
        assert_eq!(backoff(4), Duration::from_millis(40));
        assert_eq!(backoff(40), MAX_DELAY);
    }
}
