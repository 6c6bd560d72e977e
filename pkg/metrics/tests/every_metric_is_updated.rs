//! Every metric the exporter declares gets a value from real work, so a dashboard
//! panel can never be silently empty because a metric was declared and forgotten.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use rustlayer_core::{
    Backend, Kind, Labels, Mount, PoolStats, SnapshotId, SnapshotRef, Staged, Usage,
};
use rustlayer_core::{Method, RequestObserver};
use rustlayer_metrics::{Collector, Metrics};
use rustlayer_overlay::{OverlayBackend, OverlayOptions};
use rustlayer_snapshotter::Snapshotter;

/// The overlay backend plus fixed pool figures, standing in for a thin pool so the
/// pool series are exercised without device-mapper.
struct WithPool(OverlayBackend);

impl Backend for WithPool {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn stage(
        &self,
        id: SnapshotId,
        k: Kind,
        p: &[SnapshotId],
        l: &Labels,
    ) -> rustlayer_core::Result<Staged> {
        self.0.stage(id, k, p, l)
    }
    fn publish(&self, s: &Staged, id: SnapshotId) -> rustlayer_core::Result<()> {
        self.0.publish(s, id)
    }
    fn discard(&self, s: Staged) {
        self.0.discard(s)
    }
    fn mounts(&self, s: SnapshotRef<'_>, l: &Labels) -> rustlayer_core::Result<Vec<Mount>> {
        self.0.mounts(s, l)
    }
    fn seal(&self, s: SnapshotRef<'_>) -> rustlayer_core::Result<Usage> {
        self.0.seal(s)
    }
    fn usage(&self, s: SnapshotRef<'_>) -> rustlayer_core::Result<Usage> {
        self.0.usage(s)
    }
    fn remove(&self, id: SnapshotId) -> rustlayer_core::Result<()> {
        self.0.remove(id)
    }
    fn cleanup(
        &self,
        k: &dyn Fn(SnapshotId) -> bool,
        suspects: &[SnapshotId],
    ) -> rustlayer_core::Result<usize> {
        self.0.cleanup(k, suspects)
    }
    fn pool_stats(&self) -> rustlayer_core::Result<Option<PoolStats>> {
        Ok(Some(PoolStats {
            pool: "test-pool".into(),
            data_used_bytes: 1 << 20,
            data_size_bytes: 1 << 30,
            metadata_used_bytes: 1 << 12,
            metadata_size_bytes: 1 << 22,
            thin_devices: 3,
        }))
    }
}

fn sample_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
        .collect()
}

fn declared_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap().to_owned())
        .collect()
}

#[test]
fn every_declared_metric_has_a_sample_after_real_work() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let backend = OverlayBackend::open(&OverlayOptions {
        root: root.clone(),
        remap_ids: false,
        size_limits: Default::default(),
    })
    .unwrap();
    let snapshotter = Arc::new(Snapshotter::open(&root, Arc::new(WithPool(backend))).unwrap());
    snapshotter.prepare("a", "", &Labels::new()).unwrap();
    let mounts = snapshotter.mounts("a").unwrap();
    let upper = mounts[0]
        .options
        .iter()
        .find_map(|o| o.strip_prefix("upperdir="))
        .expect("an active snapshot has an upper directory");
    std::fs::write(std::path::Path::new(upper).join("f"), vec![1u8; 50_000]).unwrap();
    snapshotter.commit("c", "a", "", &Labels::new()).unwrap();
    snapshotter.view("v", "c", &Labels::new()).unwrap();

    let metrics = Arc::new(Metrics::new("test", "overlay").unwrap());
    metrics.observe(Method::Prepare, "OK", Duration::from_millis(3));
    metrics.observe(Method::Prepare, "AlreadyExists", Duration::from_millis(1));
    let collector = Collector::new(Arc::clone(&metrics), snapshotter, root);
    assert!(collector.collect_once());

    let text = metrics.encode();
    let samples = sample_names(&text);
    for name in declared_names(&text) {
        let present = samples.contains(&name)
            || samples.contains(&format!("{name}_bucket"))
            || samples.contains(&format!("{name}_count"));
        assert!(present, "{name} is declared but never set:\n{text}");
    }
    for expected in [
        "rustlayer_build_info{backend=\"overlay\",version=\"test\"} 1",
        "rustlayer_snapshots{kind=\"committed\"} 1",
        "rustlayer_snapshots{kind=\"view\"} 1",
        "rustlayer_snapshots{kind=\"active\"} 0",
        "rustlayer_committed_layers_inodes 2",
        "rustlayer_grpc_requests_total{code=\"AlreadyExists\",method=\"Prepare\"} 1",
        "rustlayer_grpc_request_duration_seconds_count{method=\"Prepare\"} 2",
        "rustlayer_thin_devices{pool=\"test-pool\"} 3",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    let bytes_line = text
        .lines()
        .find(|l| l.starts_with("rustlayer_committed_layers_bytes "))
        .unwrap();
    let bytes: u64 = bytes_line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(bytes >= 50_000, "{bytes_line}");
    let inodes_line = text
        .lines()
        .find(|l| l.starts_with("rustlayer_root_filesystem_inodes "))
        .unwrap();
    assert!(!inodes_line.ends_with(" 0"), "{inodes_line}");
}
