use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{info, warn};

use crate::api::{KubeNode, NodeApi};
use crate::backoff::Backoff;
use crate::settings::{Settings, Thresholds};
use crate::watch::{EventType, NodeEvent, Sample, Watcher};

/// Label retries stretch to this: an API server down for long gets a request per
/// node every few minutes, not a storm.
const MAX_RETRY: Duration = Duration::from_secs(300);
/// Events not yet accepted are kept up to this many; older ones matter least.
const MAX_PENDING_EVENTS: usize = 32;
/// Removing the label happens inside the pod's termination grace period (30 s by
/// default), after requests in flight finished.
pub const UNLABEL_DEADLINE: Duration = Duration::from_secs(10);

/// Reads the figures the checks need; blocking, so it runs off the async runtime.
pub trait Sampler: Send + Sync + 'static {
    fn sample(&self) -> Sample;
}

impl<F: Fn() -> Sample + Send + Sync + 'static> Sampler for F {
    fn sample(&self) -> Sample {
        self()
    }
}

/// The running integration. Everything it does happens in its own tasks, and every
/// failure is logged and retried, so the daemon serves the same with the API server
/// down.
pub struct NodeIntegration<A: NodeApi> {
    api: Arc<A>,
    node_name: String,
    ready_label: String,
    label: JoinHandle<()>,
    watch: JoinHandle<()>,
}

/// Starts labelling the node and watching the thresholds. Call once the socket
/// serves: the label promises containerd can use us.
pub fn start<A: NodeApi>(api: A, sampler: impl Sampler, settings: &Settings) -> NodeIntegration<A> {
    let api = Arc::new(api);
    let label = tokio::spawn(label_ready(
        Arc::clone(&api),
        settings.node_name.clone(),
        settings.ready_label.to_string(),
    ));
    let watch = tokio::spawn(watch(
        Arc::clone(&api),
        Arc::new(sampler),
        settings.thresholds,
        settings.interval,
    ));
    NodeIntegration {
        api,
        node_name: settings.node_name.clone(),
        ready_label: settings.ready_label.to_string(),
        label,
        watch,
    }
}

/// [`start`] against the cluster's API server, connecting in the background so the
/// socket serves meanwhile. Without a usable client configuration the daemon goes
/// on without the integration.
pub fn start_in_cluster(settings: Settings, sampler: impl Sampler) -> InCluster {
    InCluster(tokio::spawn(async move {
        match KubeNode::connect(&settings.node_name, &settings.ready_label).await {
            Ok(api) => {
                info!(
                    node = %settings.node_name,
                    label = %settings.ready_label,
                    inode_free_threshold_percent = settings.thresholds.inode_free_percent,
                    thin_pool_used_threshold_percent = settings.thresholds.pool_used_percent,
                    "node integration on"
                );
                Some(start(api, sampler, &settings))
            }
            Err(err) => {
                warn!(%err, "node integration off: no Kubernetes client");
                None
            }
        }
    }))
}

/// The integration [`start_in_cluster`] started, or is still starting.
pub struct InCluster(JoinHandle<Option<NodeIntegration<KubeNode>>>);

impl InCluster {
    /// As [`NodeIntegration::shutdown`]; a connection still being made is dropped,
    /// and with it the label it never set.
    pub async fn shutdown(self) {
        if !self.0.is_finished() {
            self.0.abort();
        }
        if let Ok(Some(running)) = self.0.await {
            running.shutdown().await;
        }
    }
}

impl<A: NodeApi> NodeIntegration<A> {
    /// Stops watching and removes the label, giving up after [`UNLABEL_DEADLINE`].
    /// Events still queued are dropped: the label going away says more.
    pub async fn shutdown(self) {
        self.label.abort();
        self.watch.abort();
        let _ = self.label.await;
        let _ = self.watch.await;
        let node = self.node_name;
        let label = self.ready_label;
        let deadline = Instant::now() + UNLABEL_DEADLINE;
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(2));
        loop {
            let err = match tokio::time::timeout_at(deadline, self.api.set_ready_label(false)).await
            {
                Ok(Ok(())) => {
                    info!(%node, %label, "node label removed");
                    return;
                }
                Ok(Err(err)) => err.to_string(),
                Err(_) => "no answer".to_owned(),
            };
            let delay = backoff.next_delay();
            if Instant::now() + delay >= deadline {
                warn!(%node, %label, %err, "cannot remove the node label; it stays until the next start");
                return;
            }
            warn!(%node, %label, %err, retry_in = ?delay, "cannot remove the node label; retrying");
            tokio::time::sleep(delay).await;
        }
    }
}

async fn label_ready<A: NodeApi>(api: Arc<A>, node: String, label: String) {
    let mut backoff = Backoff::new(Duration::from_secs(1), MAX_RETRY);
    loop {
        match api.set_ready_label(true).await {
            Ok(()) => {
                info!(%node, %label, "node labelled ready");
                return;
            }
            Err(err) => {
                let delay = backoff.next_delay();
                warn!(%node, %label, %err, retry_in = ?delay, "cannot label the node; retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

async fn watch<A: NodeApi, S: Sampler>(
    api: Arc<A>,
    sampler: Arc<S>,
    thresholds: Thresholds,
    interval: Duration,
) {
    let mut watcher = Watcher::new(thresholds);
    let mut pending = VecDeque::new();
    let mut backoff = Backoff::new(interval, MAX_RETRY);
    let mut retry_at = Instant::now();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let sampler = Arc::clone(&sampler);
        match tokio::task::spawn_blocking(move || sampler.sample()).await {
            Ok(sample) => {
                for event in watcher.observe(&sample) {
                    log_locally(&event);
                    if pending.len() == MAX_PENDING_EVENTS {
                        pending.pop_front();
                        warn!("node events queue full; dropped the oldest");
                    }
                    pending.push_back(event);
                }
            }
            Err(err) => warn!(%err, "node checks panicked"),
        }
        if Instant::now() < retry_at {
            continue;
        }
        while let Some(event) = pending.front() {
            match api.publish(event).await {
                Ok(()) => {
                    pending.pop_front();
                    backoff.reset();
                }
                Err(err) => {
                    let delay = backoff.next_delay();
                    retry_at = Instant::now() + delay;
                    warn!(%err, reason = event.reason, queued = pending.len(), retry_in = ?delay, "cannot post node event; retrying");
                    break;
                }
            }
        }
    }
}

/// The same news in the daemon's own log, which works with no API server at all.
fn log_locally(event: &NodeEvent) {
    match event.type_ {
        EventType::Warning => warn!(reason = event.reason, "{}", event.note),
        EventType::Normal => info!(reason = event.reason, "{}", event.note),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;
    use crate::error::{Error, Result};
    use crate::label::ReadyLabel;
    use crate::watch::Inodes;

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Call {
        Label(bool),
        Event(&'static str),
    }

    /// The labels of one Node, shared by the daemons on it.
    type NodeLabels = Arc<Mutex<BTreeMap<String, String>>>;

    /// Records every call; fails the next `fail_*` calls, or never answers. A
    /// label call that succeeds sets or removes its label on the shared Node,
    /// as the merge patch of the real API does.
    #[derive(Default)]
    struct FakeApi {
        label: ReadyLabel,
        node_labels: NodeLabels,
        calls: Mutex<Vec<(Call, bool)>>,
        fail_label: AtomicUsize,
        fail_publish: AtomicUsize,
        hang: AtomicBool,
    }

    impl FakeApi {
        async fn call(&self, call: Call, failures: &AtomicUsize) -> Result<()> {
            if self.hang.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            let fail = failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            self.calls.lock().unwrap().push((call, !fail));
            if fail {
                Err(Error::Timeout {
                    what: "fake",
                    timeout: Duration::ZERO,
                })
            } else {
                Ok(())
            }
        }

        /// Calls that succeeded, in order.
        fn done(&self) -> Vec<Call> {
            let calls = self.calls.lock().unwrap();
            calls
                .iter()
                .filter(|(_, ok)| *ok)
                .map(|(c, _)| c.clone())
                .collect()
        }

        fn attempts(&self) -> usize {
            self.calls.lock().unwrap().len()
        }
    }

    impl NodeApi for Arc<FakeApi> {
        async fn set_ready_label(&self, ready: bool) -> Result<()> {
            self.call(Call::Label(ready), &self.fail_label).await?;
            let mut labels = self.node_labels.lock().unwrap();
            if ready {
                labels.insert(self.label.to_string(), "true".to_owned());
            } else {
                labels.remove(self.label.as_str());
            }
            Ok(())
        }

        async fn publish(&self, event: &NodeEvent) -> Result<()> {
            self.call(Call::Event(event.reason), &self.fail_publish)
                .await
        }
    }

    /// One daemon's view of the node: its API client and its root's figures.
    struct Node {
        api: Arc<FakeApi>,
        settings: Settings,
        free_inodes: Arc<Mutex<u64>>,
    }

    impl Node {
        fn new() -> Node {
            Node::sharing(NodeLabels::default(), ReadyLabel::default())
        }

        /// Another daemon on the same Node, with its own label.
        fn sharing(node_labels: NodeLabels, label: ReadyLabel) -> Node {
            Node {
                api: Arc::new(FakeApi {
                    label: label.clone(),
                    node_labels,
                    ..FakeApi::default()
                }),
                settings: Settings {
                    ready_label: label,
                    ..Settings::new("node-a", Thresholds::default())
                },
                free_inodes: Arc::new(Mutex::new(500)),
            }
        }

        fn start(&self) -> NodeIntegration<Arc<FakeApi>> {
            let free = Arc::clone(&self.free_inodes);
            let sampler = move || Sample {
                root_inodes: Some(Inodes {
                    total: 1000,
                    free: *free.lock().unwrap(),
                }),
                pool: None,
            };
            start(Arc::clone(&self.api), sampler, &self.settings)
        }

        fn set_free_inodes(&self, free: u64) {
            *self.free_inodes.lock().unwrap() = free;
        }
    }

    async fn wait(secs: u64) {
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }

    fn labels(node_labels: &NodeLabels) -> Vec<String> {
        node_labels.lock().unwrap().keys().cloned().collect()
    }

    #[tokio::test(start_paused = true)]
    async fn two_daemons_with_their_own_labels_leave_each_other_alone() {
        let node_labels = NodeLabels::default();
        let default = Node::sharing(Arc::clone(&node_labels), ReadyLabel::default());
        let limited_label = ReadyLabel::new("rustlayer.io/ready-rustlayer-limited").unwrap();
        let limited = Node::sharing(Arc::clone(&node_labels), limited_label);

        let first = default.start();
        wait(1).await;
        let second = limited.start();
        wait(1).await;
        assert_eq!(
            labels(&node_labels),
            ["rustlayer.io/ready", "rustlayer.io/ready-rustlayer-limited"]
        );

        // The second one's clean shutdown leaves the first one's label standing.
        second.shutdown().await;
        assert_eq!(labels(&node_labels), ["rustlayer.io/ready"]);
        assert_eq!(limited.api.done(), [Call::Label(true), Call::Label(false)]);
        assert_eq!(default.api.done(), [Call::Label(true)]);

        // And the other way round, with the second one back.
        let second = limited.start();
        wait(1).await;
        first.shutdown().await;
        assert_eq!(
            labels(&node_labels),
            ["rustlayer.io/ready-rustlayer-limited"]
        );
        second.shutdown().await;
        assert!(labels(&node_labels).is_empty());
        assert_eq!(default.api.done(), [Call::Label(true), Call::Label(false)]);
    }

    #[tokio::test(start_paused = true)]
    async fn labels_then_reports_each_crossing_once_then_unlabels() {
        let node = Node::new();
        let running = node.start();
        wait(1).await;
        assert_eq!(node.api.done(), [Call::Label(true)]);

        node.set_free_inodes(50);
        wait(10).await;
        assert_eq!(
            node.api.done(),
            [Call::Label(true), Call::Event("InodesLow")]
        );
        // Staying short for a minute is no news.
        wait(60).await;
        assert_eq!(node.api.attempts(), 2);

        node.set_free_inodes(300);
        wait(10).await;
        running.shutdown().await;
        assert_eq!(
            node.api.done(),
            [
                Call::Label(true),
                Call::Event("InodesLow"),
                Call::Event("Recovered"),
                Call::Label(false),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_label_is_retried_with_backoff_until_it_sticks() {
        let node = Node::new();
        node.api.fail_label.store(3, Ordering::SeqCst);
        let running = node.start();
        // Waits of 1, 2 and 4 s, each at most 25 % longer.
        wait(5).await;
        assert!(node.api.done().is_empty());
        wait(5).await;
        assert_eq!(node.api.done(), [Call::Label(true)]);
        assert_eq!(node.api.attempts(), 4);
        running.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn events_wait_out_an_outage_and_keep_their_order() {
        let node = Node::new();
        node.api.fail_publish.store(3, Ordering::SeqCst);
        let running = node.start();
        node.set_free_inodes(10);
        wait(30).await;
        node.set_free_inodes(900);
        // Sampling goes on during the outage: the recovery is seen and queued too.
        wait(300).await;
        assert_eq!(
            node.api.done(),
            [
                Call::Label(true),
                Call::Event("InodesLow"),
                Call::Event("Recovered"),
            ]
        );
        // Three failed attempts, then both went through: no event was posted twice.
        assert_eq!(node.api.attempts(), 6);
        running.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_gives_up_by_the_deadline_on_a_failing_api() {
        let node = Node::new();
        let running = node.start();
        wait(1).await;
        node.api.fail_label.store(usize::MAX, Ordering::SeqCst);
        let began = Instant::now();
        running.shutdown().await;
        assert!(began.elapsed() <= UNLABEL_DEADLINE);
        assert!(node.api.attempts() > 2, "removal was retried");
        assert_eq!(node.api.done(), [Call::Label(true)]);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_gives_up_by_the_deadline_on_a_silent_api() {
        let node = Node::new();
        node.api.hang.store(true, Ordering::SeqCst);
        let running = node.start();
        node.set_free_inodes(1);
        wait(30).await;
        let began = Instant::now();
        running.shutdown().await;
        assert_eq!(began.elapsed(), UNLABEL_DEADLINE);
        assert_eq!(node.api.attempts(), 0);
    }
}
