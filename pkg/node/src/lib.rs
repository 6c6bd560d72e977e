//! Kubernetes node integration: while the daemon serves, its Node carries its ready
//! label (`rustlayer.io/ready=true` unless configured otherwise, so that two daemons
//! on one node each have their own), and Events on the Node report the snapshot root's
//! filesystem running short of inodes or the thin pool filling up, once per crossing.
//!
//! The only crate that knows Kubernetes. The daemon serves the same without it; every
//! API call runs in a background task, is bounded in time, and is retried with backoff.

mod api;
mod backoff;
mod error;
mod label;
mod settings;
mod task;
mod watch;

pub use api::{API_TIMEOUT, KubeNode, NodeApi, label_patch};
pub use backoff::Backoff;
pub use error::{Error, Result};
pub use label::{FIELD_MANAGER, READY_LABEL, ReadyLabel};
pub use settings::{
    DEFAULT_INTERVAL, Decision, Mode, SERVICE_HOST_ENV, Settings, Thresholds, decide,
};
pub use task::{InCluster, NodeIntegration, Sampler, UNLABEL_DEADLINE, start, start_in_cluster};
pub use watch::{
    Condition, EventType, HYSTERESIS_PERCENT, Inodes, NodeEvent, RECOVERED, Sample, Watcher,
};
