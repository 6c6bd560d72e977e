use std::time::Duration;

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use rustlayer_core::{Kind, LimitStats, Method, PoolStats, RequestObserver, Usage, saturating_i64};
use rustlayer_mount::FsStats;
use rustlayer_snapshotter::SnapshotCounts;

use crate::error::Result;

/// From 0.5 ms (a Stat) to 30 s (a Commit measuring a huge layer).
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    snapshots: IntGaugeVec,
    committed_bytes: IntGauge,
    committed_inodes: IntGauge,
    root_size: IntGauge,
    root_free: IntGauge,
    root_available: IntGauge,
    root_inodes: IntGauge,
    root_inodes_free: IntGauge,
    pool_data_used: IntGaugeVec,
    pool_data_size: IntGaugeVec,
    pool_metadata_used: IntGaugeVec,
    pool_metadata_size: IntGaugeVec,
    thin_devices: IntGaugeVec,
    project_quotas: IntGauge,
    limited_snapshots: IntGauge,
    snapshots_near_limit: IntGauge,
    last_collection: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn gauge(registry: &Registry, name: &str, help: &str) -> Result<IntGauge> {
    let g = IntGauge::new(name, help)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

fn pool_gauge(registry: &Registry, name: &str, help: &str) -> Result<IntGaugeVec> {
    let g = IntGaugeVec::new(Opts::new(name, help), &["pool"])?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

impl Metrics {
    pub fn new(version: &str, backend: &str) -> Result<Metrics> {
        let registry = Registry::new();
        let build_info = IntGaugeVec::new(
            Opts::new(
                "rustlayer_build_info",
                "Always 1; labels say which build and backend run.",
            ),
            &["version", "backend"],
        )?;
        registry.register(Box::new(build_info.clone()))?;
        build_info.with_label_values(&[version, backend]).set(1);

        let requests = IntCounterVec::new(
            Opts::new(
                "rustlayer_grpc_requests_total",
                "Snapshots API requests handled, by method and gRPC status code.",
            ),
            &["method", "code"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "rustlayer_grpc_request_duration_seconds",
                "Time to handle a snapshots API request, by method.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["method"],
        )?;
        registry.register(Box::new(latency.clone()))?;
        // Every series exists from the start, so rate() has a zero to start from.
        for method in Method::ALL {
            requests.with_label_values(&[method.as_str(), "OK"]);
            latency.with_label_values(&[method.as_str()]);
        }

        let snapshots = IntGaugeVec::new(
            Opts::new("rustlayer_snapshots", "Snapshots in the metadata, by kind."),
            &["kind"],
        )?;
        registry.register(Box::new(snapshots.clone()))?;

        let r = &registry;
        Ok(Metrics {
            requests,
            latency,
            snapshots,
            committed_bytes: gauge(
                r,
                "rustlayer_committed_layers_bytes",
                "Disk bytes of all committed layers together (cached at Commit).",
            )?,
            committed_inodes: gauge(
                r,
                "rustlayer_committed_layers_inodes",
                "Inodes of all committed layers together (cached at Commit).",
            )?,
            root_size: gauge(
                r,
                "rustlayer_root_filesystem_size_bytes",
                "Size of the filesystem holding the root.",
            )?,
            root_free: gauge(
                r,
                "rustlayer_root_filesystem_free_bytes",
                "Free bytes on the filesystem holding the root.",
            )?,
            root_available: gauge(
                r,
                "rustlayer_root_filesystem_available_bytes",
                "Bytes available to unprivileged users on the filesystem holding the root.",
            )?,
            root_inodes: gauge(
                r,
                "rustlayer_root_filesystem_inodes",
                "Inodes of the filesystem holding the root.",
            )?,
            root_inodes_free: gauge(
                r,
                "rustlayer_root_filesystem_inodes_free",
                "Free inodes on the filesystem holding the root.",
            )?,
            pool_data_used: pool_gauge(
                r,
                "rustlayer_thin_pool_data_used_bytes",
                "Thin-pool data space in use.",
            )?,
            pool_data_size: pool_gauge(
                r,
                "rustlayer_thin_pool_data_size_bytes",
                "Thin-pool data space in all.",
            )?,
            pool_metadata_used: pool_gauge(
                r,
                "rustlayer_thin_pool_metadata_used_bytes",
                "Thin-pool metadata space in use.",
            )?,
            pool_metadata_size: pool_gauge(
                r,
                "rustlayer_thin_pool_metadata_size_bytes",
                "Thin-pool metadata space in all.",
            )?,
            thin_devices: pool_gauge(r, "rustlayer_thin_devices", "Thin devices in the pool.")?,
            project_quotas: gauge(
                r,
                "rustlayer_project_quotas",
                "1 when active snapshots' usage is read from project quota counters and \
                 containerd.io/snapshot/max-size is enforced; 0 when usage is measured by \
                 walking layers.",
            )?,
            limited_snapshots: gauge(
                r,
                "rustlayer_limited_snapshots",
                "Active snapshots held to a size or inode limit (project quotas).",
            )?,
            snapshots_near_limit: gauge(
                r,
                "rustlayer_snapshots_near_limit",
                "Active snapshots that have used 90 % or more of their size or inode limit: \
                 containers about to see writes fail with ENOSPC or EDQUOT.",
            )?,
            last_collection: {
                let g = Gauge::new(
                    "rustlayer_collector_last_success_timestamp_seconds",
                    "Unix time of the last successful collection of the figures above.",
                )?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            registry,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        let families = self.registry.gather();
        if let Err(err) = TextEncoder::new().encode(&families, &mut out) {
            tracing::error!(%err, "cannot encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }

    pub fn set_snapshots(&self, counts: SnapshotCounts) {
        for kind in Kind::ALL {
            let n = match kind {
                Kind::View => counts.view,
                Kind::Active => counts.active,
                Kind::Committed => counts.committed,
            };
            self.snapshots
                .with_label_values(&[kind.as_str()])
                .set(saturating_i64(n));
        }
    }

    pub fn set_committed_usage(&self, usage: Usage) {
        self.committed_bytes.set(saturating_i64(usage.bytes));
        self.committed_inodes.set(saturating_i64(usage.inodes));
    }

    pub fn set_root_filesystem(&self, fs: FsStats) {
        self.root_size.set(saturating_i64(fs.bytes_total));
        self.root_free.set(saturating_i64(fs.bytes_free));
        self.root_available.set(saturating_i64(fs.bytes_available));
        self.root_inodes.set(saturating_i64(fs.inodes_total));
        self.root_inodes_free.set(saturating_i64(fs.inodes_free));
    }

    pub fn set_pool(&self, pool: &PoolStats) {
        let l = [pool.pool.as_str()];
        self.pool_data_used
            .with_label_values(&l)
            .set(saturating_i64(pool.data_used_bytes));
        self.pool_data_size
            .with_label_values(&l)
            .set(saturating_i64(pool.data_size_bytes));
        self.pool_metadata_used
            .with_label_values(&l)
            .set(saturating_i64(pool.metadata_used_bytes));
        self.pool_metadata_size
            .with_label_values(&l)
            .set(saturating_i64(pool.metadata_size_bytes));
        self.thin_devices
            .with_label_values(&l)
            .set(saturating_i64(pool.thin_devices));
    }

    pub fn set_project_quotas(&self, counted: bool) {
        self.project_quotas.set(i64::from(counted));
    }

    /// Active snapshots with a limit and those near it; zero where nothing is limited.
    pub fn set_limit_stats(&self, stats: LimitStats) {
        self.limited_snapshots.set(saturating_i64(stats.limited));
        self.snapshots_near_limit
            .set(saturating_i64(stats.near_limit));
    }

    pub fn mark_collected(&self, unix_seconds: f64) {
        self.last_collection.set(unix_seconds);
    }
}

impl RequestObserver for Metrics {
    fn observe(&self, method: Method, code: &'static str, elapsed: Duration) {
        self.requests
            .with_label_values(&[method.as_str(), code])
            .inc();
        self.latency
            .with_label_values(&[method.as_str()])
            .observe(elapsed.as_secs_f64());
    }
}
