//! Image garbage collection, as upstream's image GC manager.
//!
//! Every detection pass lists the runtime's images and containers and keeps, per image ID,
//! when it was first seen and when a container (running or exited) last used it. Every
//! `image-gc-period` the image filesystem's usage is checked: at or above
//! `image-gc-high-threshold` percent, unused images are removed through CRI `RemoveImage`,
//! least recently used first (never-used ones before any used one, then oldest first seen),
//! until usage is back to `image-gc-low-threshold` percent. Images younger than
//! `image-minimum-gc-age` (since first seen), pinned images and the sandbox (pause) image are
//! never removed. Disk pressure eviction asks for the same removal with no target
//! ([`ImageGc::delete_unused`]) before it evicts pods.
//!
//! The filesystem is the one CRI `ImageFsInfo` names (its mount point), measured with statvfs
//! like the eviction signals ([`crate::eviction::signals::fs_stats`]).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use parking_lot::Mutex;

use crate::cri::{Cri, CriError};
use crate::eviction::signals::fs_stats;

/// The GC settings (reloadable).
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Usage percent at which GC starts (100 disables it).
    pub high: u8,
    /// Usage percent GC frees down to.
    pub low: u8,
    pub min_age: Duration,
    pub period: Duration,
    /// Image references never removed besides the runtime's sandbox image.
    pub keep: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PolicyError {
    #[error("image-gc-high-threshold must be at most 100, got {0}")]
    High(u8),
    #[error("image-gc-low-threshold ({low}) must be less than image-gc-high-threshold ({high})")]
    Low { low: u8, high: u8 },
}

impl Policy {
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.high > 100 {
            return Err(PolicyError::High(self.high));
        }
        if self.low >= self.high && self.high != 100 {
            return Err(PolicyError::Low {
                low: self.low,
                high: self.high,
            });
        }
        Ok(())
    }

    /// Bytes to free on a filesystem of `capacity` with `available` left, if GC is due.
    pub fn to_free(&self, capacity: i128, available: i128) -> Option<i128> {
        if self.high >= 100 || capacity <= 0 {
            return None;
        }
        let usage = 100 - available * 100 / capacity;
        if usage < self.high as i128 {
            return None;
        }
        Some((capacity * (100 - self.low as i128) / 100 - available).max(0))
    }
}

#[derive(Debug, Clone)]
struct Record {
    first_detected: Instant,
    last_used: Option<Instant>,
    size: u64,
    tags: Vec<String>,
    pinned: bool,
}

/// What one collection did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub freed: u64,
    pub removed: Vec<String>,
}

pub struct ImageGc {
    cri: Cri,
    records: Mutex<HashMap<String, Record>>,
    sandbox_image: Mutex<Option<String>>,
    in_use: Mutex<HashSet<String>>,
}

impl ImageGc {
    pub fn new(cri: Cri) -> Self {
        ImageGc {
            cri,
            records: Mutex::new(HashMap::new()),
            sandbox_image: Mutex::new(None),
            in_use: Mutex::new(HashSet::new()),
        }
    }

    /// The image filesystem's mount point (for the imagefs eviction signals too).
    pub async fn image_fs(&self) -> Option<PathBuf> {
        match self.cri.image_fs_info().await {
            Ok(fs) => fs
                .into_iter()
                .filter_map(|f| f.fs_id.map(|i| i.mountpoint))
                .find(|m| !m.is_empty())
                .map(PathBuf::from),
            Err(e) => {
                tracing::warn!(error = %e, "asking the runtime for its image filesystem");
                None
            }
        }
    }

    /// Refreshes the records from the runtime.
    pub async fn detect(&self) -> Result<(), CriError> {
        if self.sandbox_image.lock().is_none() {
            if let Ok(Some(s)) = self.cri.sandbox_image().await {
                *self.sandbox_image.lock() = Some(s);
            }
        }
        let images = self.cri.list_images().await?;
        let containers = self.cri.list_containers(None, HashMap::new()).await?;
        let used: HashSet<String> = containers
            .iter()
            .flat_map(|c| {
                [
                    c.image_ref.clone(),
                    c.image
                        .as_ref()
                        .map(|i| i.image.clone())
                        .unwrap_or_default(),
                ]
            })
            .filter(|s| !s.is_empty())
            .collect();
        let now = Instant::now();
        let mut recs = self.records.lock();
        let present: HashSet<&str> = images.iter().map(|i| i.id.as_str()).collect();
        recs.retain(|id, _| present.contains(id.as_str()));
        let mut in_use = HashSet::new();
        for img in &images {
            let r = recs.entry(img.id.clone()).or_insert_with(|| Record {
                first_detected: now,
                last_used: None,
                size: 0,
                tags: vec![],
                pinned: false,
            });
            r.size = img.size;
            r.tags = img.repo_tags.clone();
            r.pinned = img.pinned;
            if is_used(img, &used) {
                r.last_used = Some(now);
                in_use.insert(img.id.clone());
            }
        }
        *self.in_use.lock() = in_use;
        Ok(())
    }

    /// Removal candidates, in removal order, for `min_age` and the kept references.
    fn candidates(&self, min_age: Duration, keep: &[String]) -> Vec<(String, Record)> {
        let now = Instant::now();
        let sandbox = self.sandbox_image.lock().clone();
        let in_use = self.in_use.lock().clone();
        let mut c: Vec<(String, Record)> = self
            .records
            .lock()
            .iter()
            .filter(|(id, r)| {
                !in_use.contains(*id)
                    && !r.pinned
                    && now.duration_since(r.first_detected) >= min_age
                    && !r
                        .tags
                        .iter()
                        .any(|t| Some(t) == sandbox.as_ref() || keep.contains(t))
            })
            .map(|(id, r)| (id.clone(), r.clone()))
            .collect();
        c.sort_by_key(|(_, r)| (r.last_used, r.first_detected));
        c
    }

    /// Removes candidates until `bytes` are freed (or none is left).
    pub async fn free(&self, bytes: i128, policy: &Policy) -> Report {
        let mut report = Report::default();
        for (id, r) in self.candidates(policy.min_age, &policy.keep) {
            if report.freed as i128 >= bytes {
                break;
            }
            match self.cri.remove_image(&id).await {
                Ok(()) => {
                    tracing::info!(image = %id, tags = ?r.tags, size = r.size, "image garbage collected");
                    self.records.lock().remove(&id);
                    report.freed += r.size;
                    report.removed.push(id);
                }
                // An image a container started to use since detection is refused: skip it.
                Err(e) => tracing::warn!(image = %id, error = %e, "removing an image"),
            }
        }
        report
    }

    /// Every unused image old enough (disk pressure: before evicting pods).
    pub async fn delete_unused(&self, policy: &Policy) -> Report {
        if let Err(e) = self.detect().await {
            tracing::warn!(error = %e, "detecting images");
            return Report::default();
        }
        self.free(i128::MAX, policy).await
    }

    /// One GC pass: detect, then free down to the low threshold if usage is at the high one.
    pub async fn collect(&self, policy: &Policy) -> Result<Report, CriError> {
        self.detect().await?;
        let Some(fs) = self.image_fs().await else {
            return Ok(Report::default());
        };
        let Some((avail, cap, _, _)) = fs_stats(&fs) else {
            return Ok(Report::default());
        };
        let Some(amount) = policy.to_free(cap, avail) else {
            return Ok(Report::default());
        };
        tracing::info!(
            usage_percent = 100 - avail * 100 / cap.max(1),
            high = policy.high,
            bytes_to_free = amount as i64,
            "image filesystem over the GC threshold"
        );
        let r = self.free(amount, policy).await;
        if (r.freed as i128) < amount {
            tracing::warn!(
                freed = r.freed,
                wanted = amount as i64,
                "image GC could not free enough space"
            );
        }
        Ok(r)
    }
}

fn is_used(img: &cri::Image, used: &HashSet<String>) -> bool {
    used.contains(&img.id)
        || img.repo_tags.iter().any(|t| used.contains(t))
        || img.repo_digests.iter().any(|d| used.contains(d))
}

/// Runs detection every 30 s (or the period, if shorter) and collection every period.
pub async fn run(
    gc: std::sync::Arc<ImageGc>,
    mut policy: tokio::sync::watch::Receiver<Policy>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut last_gc: Option<Instant> = None;
    loop {
        let p = policy.borrow_and_update().clone();
        if last_gc.is_none_or(|t| t.elapsed() >= p.period) {
            last_gc = Some(Instant::now());
            if let Err(e) = gc.collect(&p).await {
                tracing::warn!(error = %e, "image garbage collection");
            }
        } else if let Err(e) = gc.detect().await {
            tracing::debug!(error = %e, "detecting images");
        }
        let tick = p
            .period
            .min(Duration::from_secs(30))
            .max(Duration::from_secs(1));
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            r = policy.changed() => { if r.is_err() { return; } last_gc = None; }
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(high: u8, low: u8) -> Policy {
        Policy {
            high,
            low,
            min_age: Duration::ZERO,
            period: Duration::from_secs(1),
            keep: vec![],
        }
    }

    #[test]
    fn thresholds_decide_how_much_to_free() {
        // 90% used, high 85, low 80: free down to 80% used (200 available of 1000).
        assert_eq!(policy(85, 80).to_free(1000, 100), Some(100));
        assert_eq!(policy(85, 80).to_free(1000, 200), None);
        assert_eq!(policy(100, 80).to_free(1000, 0), None, "100 disables GC");
        assert_eq!(policy(1, 0).to_free(1000, 900), Some(100));
        assert!(policy(85, 80).validate().is_ok());
        assert_eq!(
            policy(80, 85).validate(),
            Err(PolicyError::Low { low: 85, high: 80 })
        );
        assert_eq!(policy(101, 0).validate(), Err(PolicyError::High(101)));
    }
}
