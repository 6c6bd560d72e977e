use crate::{
    Kind, Labels, LimitStats, Limits, Measured, Mount, Result, SnapshotId, Usage, UsageMethod,
};

/// Storage made for a snapshot before the metadata knows its id. Only the backend
/// that staged it can interpret the name.
///
/// Both backends stage straight under the reserved id (overlay's directory, the thin
/// device's id), so their [`publish`](Backend::publish) only confirms it; the two
/// phases are for a backend that must stage under a temporary name and move it into
/// place inside the transaction, and `publish` is where tests inject a failure
/// between the row and the commit.
#[derive(Debug)]
pub struct Staged {
    name: String,
}

impl Staged {
    pub fn new(name: impl Into<String>) -> Self {
        Staged { name: name.into() }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A snapshot the metadata holds at start, as [`Backend::resume`] sees it: enough
/// to make its storage again as its Prepare made it (on which parent, for which
/// user namespace).
#[derive(Debug, Clone)]
pub struct LiveSnapshot {
    pub id: SnapshotId,
    pub kind: Kind,
    /// The snapshot it was prepared on, if any.
    pub parent: Option<SnapshotId>,
    pub labels: Labels,
}

/// A snapshot as a backend needs to see it: which storage, and on top of what.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotRef<'a> {
    pub id: SnapshotId,
    pub kind: Kind,
    /// The committed ancestors, nearest first.
    pub parents: &'a [SnapshotId],
}

/// A storage driver: overlay directories, thin devices. It never sees keys and never
/// decides anything about the snapshot graph; the snapshotter owns the metadata and
/// calls these hooks in an order that keeps a crash at any point recoverable:
///
/// 1. [`stage`](Backend::stage) outside any transaction (slow work, nothing visible),
///    under an id the store has durably reserved, so a crash leaves a reservation
///    that tells Cleanup where to look;
/// 2. [`publish`](Backend::publish) inside the metadata transaction, just before it
///    commits, so storage is visible under the id iff the metadata is durable;
/// 3. [`remove`](Backend::remove) only after the metadata forgot the snapshot (its
///    id stays reserved until Cleanup confirms the storage is gone);
/// 4. [`cleanup`](Backend::cleanup) deletes anything the metadata does not know.
///
/// Methods block (filesystem and ioctl work); callers run them off the async runtime,
/// except what a backend declares cheap ([`mounts_are_derived`](Backend::mounts_are_derived)).
pub trait Backend: Send + Sync + 'static {
    /// Short name for logs, metrics and `rustlayer check`.
    fn name(&self) -> &'static str;

    /// Creates a new snapshot's storage for the reserved id `id`, part of no snapshot
    /// until published. `parents` are the committed ancestors, nearest first;
    /// `labels` are already checked, a user-namespace mapping among them included.
    fn stage(
        &self,
        id: SnapshotId,
        kind: Kind,
        parents: &[SnapshotId],
        labels: &Labels,
    ) -> Result<Staged>;

    /// Puts staged storage in place under `id`, inside the transaction that records
    /// it. After a power loss the storage must be there, or be made again by
    /// [`resume`](Self::resume). Anything found under `id` beforehand is debris of a
    /// transaction that never committed and may be replaced.
    fn publish(&self, staged: &Staged, id: SnapshotId) -> Result<()>;

    /// Throws away staged storage that will never be published.
    fn discard(&self, staged: Staged);

    /// The mounts that materialise the snapshot's filesystem. `labels` are the
    /// snapshot's current labels, already checked: a user-namespace mapping among
    /// them ([`IdMapping`](crate::IdMapping)) may change the mounts.
    fn mounts(&self, snapshot: SnapshotRef<'_>, labels: &Labels) -> Result<Vec<Mount>>;

    /// True when [`mounts`](Self::mounts) only derives paths from ids and touches no
    /// storage, so it may run on the async runtime instead of a blocking thread.
    fn mounts_are_derived(&self) -> bool {
        false
    }

    /// Called just before an active snapshot becomes committed; returns the layer's
    /// usage, which the snapshotter caches with the committed record. `parents` are
    /// the chain the layer is committed onto: its own, or for a rebase the chain of
    /// the parent Commit names.
    fn seal(&self, snapshot: SnapshotRef<'_>) -> Result<Usage>;

    /// Whether a snapshot prepared without a parent can be committed onto one
    /// (containerd's `rebase` capability, which its unpacker uses to unpack layers in
    /// parallel). True only where a layer holds its own changes alone, so that
    /// placing it over a parent is metadata; a backend whose storage is a copy of its
    /// parent's (a thin snapshot) cannot. containerd never discovers this: an
    /// operator declares `capabilities = ["rebase"]` on the proxy plugin, which is
    /// right only where this is true.
    fn supports_rebase(&self) -> bool {
        false
    }

    /// Current usage of a snapshot whose layer may still change (active ones).
    fn usage(&self, snapshot: SnapshotRef<'_>) -> Result<Usage>;

    /// True when [`usage`](Self::usage) reads counters the filesystem keeps (project
    /// quotas) in constant time rather than measuring the layer.
    fn usage_is_counted(&self) -> bool {
        false
    }

    /// [`usage`](Self::usage) of an active snapshot, with how it was found and the
    /// limits its writes meet, for operators (`rustlayer usage`). Backends that
    /// enforce limits answer both from one read.
    fn measure(&self, snapshot: SnapshotRef<'_>) -> Result<Measured> {
        Ok(Measured {
            usage: self.usage(snapshot)?,
            method: UsageMethod::Measured,
            limits: Limits::default(),
        })
    }

    /// How many of the active snapshots `is_active` accepts are held to a limit and
    /// how many are near it, for metrics; `None` where the backend enforces none.
    /// Must be cheap enough for the metrics collector (one pass over counters, no
    /// walks).
    fn limit_stats(&self, is_active: &dyn Fn(SnapshotId) -> bool) -> Result<Option<LimitStats>> {
        let _ = is_active;
        Ok(None)
    }

    /// Detaches the storage of a snapshot the metadata has already forgotten.
    /// Must return quickly: heavy deletion is deferred.
    fn remove(&self, id: SnapshotId) -> Result<()>;

    /// Deletes every piece of storage whose id `is_known` rejects, plus staging
    /// debris, and makes sure nothing is left under any of `suspects` (reserved ids
    /// whose storage a crash or a Remove may have left behind; a backend that cannot
    /// list its storage relies on them). Returns how many pieces were removed.
    fn cleanup(
        &self,
        is_known: &dyn Fn(SnapshotId) -> bool,
        suspects: &[SnapshotId],
    ) -> Result<usize>;

    /// Called once at start, after Cleanup, with every snapshot the metadata holds,
    /// so that storage active snapshots and views need attached to be mounted is,
    /// and what a power loss took back of derived or unsynced storage is made again.
    fn resume(&self, snapshots: &[LiveSnapshot]) -> Result<()> {
        let _ = snapshots;
        Ok(())
    }

    /// Clean shutdown: release what the backend attached and nobody uses.
    fn shutdown(&self) {}

    /// Space figures of a shared pool the backend allocates from (dm-thin), for
    /// metrics and `rustlayer check`. Directory-based backends have none.
    fn pool_stats(&self) -> Result<Option<PoolStats>> {
        Ok(None)
    }
}

/// Use of a thin pool, in bytes, so data and metadata compare on one scale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStats {
    pub pool: String,
    pub data_used_bytes: u64,
    pub data_size_bytes: u64,
    pub metadata_used_bytes: u64,
    pub metadata_size_bytes: u64,
    pub thin_devices: u64,
}
