//! The overlayfs backend, the overlay2 way: every snapshot owns `snapshots/<id>/fs`
//! (its layer, the upper directory while active) and `snapshots/<id>/work`; the
//! kernel's whiteouts and opaque markers live in the layers themselves, so a
//! committed layer already holds its deletions for containerd's differ.
//!
//! On-disk layout under the root:
//!
//! ```text
//! snapshots/<id>/{fs,work}  one directory per snapshot, named by id, never by key
//! l/<base36 id>             short link to snapshots/<id>/fs, used in lowerdir=
//! staging/<name>            storage being prepared, invisible until published
//! trash/<name>              detached storage, deleted in the background
//! empty/                    always empty: the lower layer of parentless active snapshots
//! ```
//!
//! The short links are what keep a 500-layer `lowerdir=` inside the one page the
//! kernel accepts once containerd rewrites it relative to `l/`.
//!
//! On a root with project quotas, each active snapshot's `fs` and `work` are a
//! project numbered by its id: `containerd.io/snapshot/max-size` is its hard limit
//! and its usage is read from the filesystem's counters ([`project_quota_check`]
//! says whether the root has them).

mod backend;
mod error;
mod layout;
mod preflight;
mod quota;
mod reaper;
mod usage;

pub use backend::{OverlayBackend, OverlayOptions};
pub use error::{Error, Result};
pub use preflight::{IDMAPPED_LAYERS, ensure as ensure_preflight, preflight};
pub use quota::{PROJECT_QUOTAS, SizeLimits, project_quota_check};
pub use usage::disk_usage;
