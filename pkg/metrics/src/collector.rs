use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustlayer_snapshotter::Snapshotter;
use tracing::warn;

use crate::registry::Metrics;

/// Often enough for alerts that fire over minutes, cheap enough to forget about.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// Gathers the figures that cost I/O (metadata counts, statvfs, pool status) in the
/// background, so a scrape never touches the disk.
pub struct Collector {
    metrics: Arc<Metrics>,
    snapshotter: Arc<Snapshotter>,
    root: PathBuf,
}

impl Collector {
    pub fn new(metrics: Arc<Metrics>, snapshotter: Arc<Snapshotter>, root: PathBuf) -> Self {
        Collector {
            metrics,
            snapshotter,
            root,
        }
    }

    /// One collection; blocking. Each figure is set independently, so one failing
    /// source does not blank the others; the timestamp moves only if all succeeded.
    pub fn collect_once(&self) -> bool {
        let mut ok = true;
        match self.snapshotter.counts() {
            Ok(counts) => self.metrics.set_snapshots(counts),
            Err(err) => ok = failed("snapshot counts", &err),
        }
        match self.snapshotter.committed_usage() {
            Ok(usage) => self.metrics.set_committed_usage(usage),
            Err(err) => ok = failed("committed usage", &err),
        }
        match rustlayer_mount::fs_stats(&self.root) {
            Ok(stats) => self.metrics.set_root_filesystem(stats),
            Err(err) => ok = failed("root filesystem", &err),
        }
        self.metrics
            .set_project_quotas(self.snapshotter.backend().usage_is_counted());
        match self.snapshotter.limit_stats() {
            Ok(stats) => self.metrics.set_limit_stats(stats.unwrap_or_default()),
            Err(err) => ok = failed("snapshot limits", &err),
        }
        match self.snapshotter.backend().pool_stats() {
            Ok(Some(pool)) => self.metrics.set_pool(&pool),
            Ok(None) => {}
            Err(err) => ok = failed("pool", &err),
        }
        if ok {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            self.metrics.mark_collected(now);
        }
        ok
    }

    /// Collects every `interval` until the task is dropped.
    pub async fn run(self: Arc<Self>, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let collector = Arc::clone(&self);
            if let Err(err) = tokio::task::spawn_blocking(move || collector.collect_once()).await {
                warn!(%err, "metrics collection panicked");
            }
        }
    }
}

fn failed(what: &str, err: &dyn std::fmt::Display) -> bool {
    warn!(%err, "cannot collect {what}");
    false
}
