//! The vocabulary every other rustlayer crate speaks: snapshot ids and kinds, the
//! [`Backend`] trait that storage drivers implement, the error type whose [`Code`]
//! maps onto containerd's error classes, input validation, and containerd's filter
//! syntax for `List`.
//!
//! This crate deliberately knows nothing of gRPC, mounts, device-mapper or
//! Kubernetes, so that every layer above it can be tested without them.

mod backend;
mod check;
mod error;
pub mod filter;
mod idmap;
mod model;
mod observe;
pub mod reaper;
pub mod sync;
pub mod validate;

pub use backend::{Backend, LiveSnapshot, PoolStats, SnapshotRef, Staged};
pub use check::Check;
pub use error::{Code, Error, IoContext, LayerError, Result};
pub use filter::Filters;
pub use idmap::{GID_MAPPING_LABEL, IdMapping, IdRange, IdRanges, UID_MAPPING_LABEL};
pub use model::{
    Info, Kind, Labels, LimitStats, Limits, Measured, Mount, NEAR_LIMIT, SnapshotId, Usage,
    UsageMethod, saturating_i64,
};
pub use observe::{Method, NoopObserver, RequestObserver};
pub use validate::MAX_SIZE_LABEL;
