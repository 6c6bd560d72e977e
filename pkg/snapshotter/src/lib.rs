//! containerd's snapshot semantics over any [`Backend`]: who may have which parent,
//! which kinds may be committed, mounted or removed, and in which order metadata and
//! storage change so that a crash at any instant leaves an operation either complete
//! or without trace.
//!
//! Every method blocks (SQLite, filesystem); the gRPC layer runs them off the async
//! runtime.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustlayer_core::filter::Fields;
use rustlayer_core::sync::lock;
use rustlayer_core::{
    Backend, Code, Error, Filters, Info, Kind, Labels, LimitStats, Measured, Mount, Result,
    SnapshotId, SnapshotRef, Usage, validate,
};
use rustlayer_metastore::{KindCounts, NewSnapshot, Record, Store, StoreOptions, Tx};
use tracing::{debug, info, warn};

pub use rustlayer_metastore::KindCounts as SnapshotCounts;

/// The metadata file's name under the root.
pub const METADATA_FILE: &str = "metadata.db";

/// The kernel stacks at most this many overlay lower layers; deeper chains could be
/// created but never mounted, so they are refused at Prepare.
pub const MAX_CHAIN_DEPTH: usize = 500;

/// Ids are reserved this many at a time, so most Prepares pay no extra transaction.
const ID_BATCH: usize = 16;

pub struct Snapshotter {
    store: Store,
    backend: Arc<dyn Backend>,
    ids: Mutex<IdPool>,
}

/// Ids this process has reserved in the store: not yet handed out, or handed to a
/// Prepare that has not finished. Cleanup must leave both alone. Locked only inside
/// the store's write lock or on its own, never the other way round.
#[derive(Debug)]
struct IdPool {
    /// Highest first, so `pop` hands out the lowest.
    free: Vec<SnapshotId>,
    in_flight: HashSet<SnapshotId>,
    /// Where the next reservation starts looking: every id below it was in use or
    /// reserved when last seen, and only Cleanup frees ids (it lowers this). Without
    /// it each batch would read every id in use, under the write lock.
    search_from: SnapshotId,
}

impl Default for IdPool {
    fn default() -> Self {
        IdPool {
            free: Vec::new(),
            in_flight: HashSet::new(),
            search_from: SnapshotId::MIN,
        }
    }
}

/// Where a snapshot's usage comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageSource {
    /// Held by the metadata: a committed layer's, cached when it was sealed, or a
    /// view's, which owns nothing.
    Recorded(Usage),
    /// An active snapshot's layer, still being written: measure it with
    /// [`Snapshotter::measure_usage`].
    Active(SnapshotId),
}

impl std::fmt::Debug for Snapshotter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshotter")
            .field("store", &self.store)
            .field("backend", &self.backend.name())
            .finish()
    }
}

/// The mutable parts of a snapshot's info that Update may change.
#[derive(Debug, Clone, Default)]
pub struct InfoUpdate {
    pub name: String,
    pub labels: Labels,
    /// containerd's field mask: empty means "every mutable field"; otherwise
    /// `labels` or `labels.<key>`.
    pub paths: Vec<String>,
}

impl Snapshotter {
    /// Opens the metadata under `root` and removes whatever storage a crash left
    /// that the metadata does not know.
    pub fn open(root: &Path, backend: Arc<dyn Backend>) -> Result<Snapshotter> {
        let store = Store::open(
            &root.join(METADATA_FILE),
            &StoreOptions {
                backend: backend.name().to_owned(),
            },
        )?;
        let snapshotter = Snapshotter {
            store,
            backend,
            ids: Mutex::new(IdPool::default()),
        };
        let removed = snapshotter.cleanup()?;
        let snapshots = snapshotter.store.read(|tx| tx.live_snapshots())?;
        snapshotter.backend.resume(&snapshots)?;
        let counts = snapshotter.counts()?;
        info!(
            removed,
            committed = counts.committed,
            active = counts.active,
            view = counts.view,
            "snapshotter recovered"
        );
        Ok(snapshotter)
    }

    pub fn metadata_path(&self) -> PathBuf {
        self.store.path().to_owned()
    }

    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    /// The root's identity, a UUID kept with the metadata.
    pub fn uuid(&self) -> &str {
        self.store.uuid()
    }

    pub fn prepare(&self, key: &str, parent: &str, labels: &Labels) -> Result<Vec<Mount>> {
        self.create(Kind::Active, key, parent, labels)
    }

    pub fn view(&self, key: &str, parent: &str, labels: &Labels) -> Result<Vec<Mount>> {
        self.create(Kind::View, key, parent, labels)
    }

    fn create(&self, kind: Kind, key: &str, parent: &str, labels: &Labels) -> Result<Vec<Mount>> {
        validate::key("key", key)?;
        validate::parent(parent)?;
        validate::labels(labels)?;
        validate::id_mapping(labels)?;
        validate::max_size(labels)?;

        // Checked before staging so the common refusals cost no storage work; checked
        // again under the write lock because the world may change in between.
        let chain = self.store.read(|tx| {
            if tx.get(key)?.is_some() {
                return Err(Error::AlreadyExists(key.to_owned()));
            }
            parent_chain(tx, parent, Error::InvalidArgument)
        })?;
        if chain.len() > MAX_CHAIN_DEPTH {
            return Err(Error::FailedPrecondition(format!(
                "parent {parent:?} already stacks {} layers; the kernel mounts at most {MAX_CHAIN_DEPTH}",
                chain.len()
            )));
        }

        let id = self.take_id()?;
        let created = self.create_as(id, kind, key, parent, &chain, labels);
        // A failed id stays reserved in the store: storage may linger under it, and
        // Cleanup, not this Prepare, makes sure it is gone before the id is reused.
        lock(&self.ids).in_flight.remove(&id);
        created
    }

    fn create_as(
        &self,
        id: SnapshotId,
        kind: Kind,
        key: &str,
        parent: &str,
        chain: &[SnapshotId],
        labels: &Labels,
    ) -> Result<Vec<Mount>> {
        let staged = self
            .backend
            .stage(id, kind, chain, labels)
            .map_err(|err| self.unless_vanished(err, parent, chain.first().copied()))?;
        let mut published = false;
        let created = self.store.write(|tx| {
            if tx.get(key)?.is_some() {
                return Err(Error::AlreadyExists(key.to_owned()));
            }
            if parent_chain(tx, parent, Error::InvalidArgument)? != chain {
                return Err(Error::NotFound(parent.to_owned()));
            }
            tx.insert(&NewSnapshot {
                id,
                key,
                parent: chain.first().copied(),
                kind,
                labels,
                now: SystemTime::now(),
            })?;
            self.backend.publish(&staged, id)?;
            published = true;
            Ok(id)
        });
        let id = match created {
            Ok(id) => id,
            Err(err) => {
                // Published storage under an id whose transaction failed is debris that
                // Cleanup removes, since the id stays reserved.
                if !published {
                    self.backend.discard(staged);
                }
                return Err(err);
            }
        };
        debug!(key, %id, %kind, depth = chain.len(), "created");
        self.store.restore_reserve();
        self.backend.mounts(
            SnapshotRef {
                id,
                kind,
                parents: chain,
            },
            labels,
        )
    }

    /// An id durably reserved for a new snapshot, marked in flight.
    fn take_id(&self) -> Result<SnapshotId> {
        if let Some(id) = take_free(&mut lock(&self.ids)) {
            return Ok(id);
        }
        loop {
            let taken = self.store.write(|tx| {
                let mut pool = lock(&self.ids);
                // Another Prepare may have refilled the pool while we waited for the lock.
                if pool.free.is_empty() {
                    let fresh = tx.reserve_ids(ID_BATCH, pool.search_from, SnapshotId::MAX)?;
                    if let Some(last) = fresh.last() {
                        pool.search_from = SnapshotId::new(last.get() + 1);
                    }
                    // An id in flight is missing from the store only if the commit of
                    // its own reservation failed; it must never be handed out twice.
                    let fresh: Vec<SnapshotId> = fresh
                        .into_iter()
                        .rev()
                        .filter(|id| !pool.in_flight.contains(id))
                        .collect();
                    pool.free = fresh;
                }
                Ok::<_, Error>(take_free(&mut pool))
            })?;
            if let Some(id) = taken {
                return Ok(id);
            }
        }
    }

    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        validate::key("key", key)?;
        let (record, chain, labels) = self.store.read(|tx| {
            let record = get(tx, key)?;
            if record.kind == Kind::Committed {
                return Err(Error::FailedPrecondition(format!(
                    "snapshot {key:?} is committed; only active snapshots and views have mounts"
                )));
            }
            let chain = tx.ancestors(record.id)?;
            let labels = tx.labels(record.id)?;
            Ok((record, chain, labels))
        })?;
        self.backend.mounts(
            SnapshotRef {
                id: record.id,
                kind: record.kind,
                parents: &chain,
            },
            &labels,
        )
    }

    /// Commits the active snapshot `key` as the layer `name`. A non-empty `parent`
    /// is containerd's rebase (its unpacker, given the `rebase` capability, prepares
    /// each layer without a parent, unpacks them in parallel, then commits each onto
    /// the layer below). The refusals follow containerd's own metadata store
    /// (`CommitActive` in core/snapshots/storage/bolt.go, 2.2 and later):
    ///
    /// - `parent` equal to the snapshot's own parent: accepted, nothing changes;
    /// - a snapshot that already has another parent: `InvalidArgument`;
    /// - a `parent` that does not exist: `NotFound`; so is one naming the snapshot
    ///   itself (its key stops existing as the commit lands, its name exists only
    ///   after);
    /// - a `parent` that is active or a view: `FailedPrecondition`;
    /// - a backend that cannot rebase ([`Backend::supports_rebase`]):
    ///   `Unimplemented`, before any parent is looked up: no state makes it work.
    ///
    /// Like Prepare, a chain deeper than [`MAX_CHAIN_DEPTH`] is `FailedPrecondition`.
    /// The new parent is recorded in the transaction that commits, so a crash leaves
    /// either the active snapshot as it was or the layer committed onto its parent.
    pub fn commit(&self, name: &str, key: &str, parent: &str, labels: &Labels) -> Result<()> {
        validate::key("name", name)?;
        validate::key("key", key)?;
        validate::parent(parent)?;
        validate::labels(labels)?;

        let (record, rebase, chain) = self.store.read(|tx| {
            let record = committable(tx, key)?;
            if tx.get(name)?.is_some() {
                return Err(Error::AlreadyExists(name.to_owned()));
            }
            let rebase = self.rebase_target(tx, &record, key, name, parent)?;
            let chain = match &rebase {
                Some(chain) => chain.clone(),
                None => tx.ancestors(record.id)?,
            };
            Ok((record, rebase.is_some(), chain))
        })?;
        // Measuring the layer may take a while; it happens outside the write lock.
        let usage = self
            .backend
            .seal(SnapshotRef {
                id: record.id,
                kind: record.kind,
                parents: &chain,
            })
            .map_err(|err| self.unless_vanished(err, key, Some(record.id)))?;
        self.store.write(|tx| {
            let current = committable(tx, key)?;
            if current.id != record.id {
                return Err(Error::NotFound(key.to_owned()));
            }
            if tx.get(name)?.is_some() {
                return Err(Error::AlreadyExists(name.to_owned()));
            }
            let rebase_onto = if rebase {
                // The parent may have been removed, or removed and made again, while
                // the layer was sealed.
                if parent_chain(tx, parent, Error::FailedPrecondition)? != chain {
                    return Err(Error::NotFound(parent.to_owned()));
                }
                chain.first().copied()
            } else {
                None
            };
            tx.commit(
                record.id,
                name,
                rebase_onto,
                labels,
                usage,
                SystemTime::now(),
            )?;
            Ok(())
        })?;
        debug!(name, key, parent, rebase, id = %record.id, bytes = usage.bytes, inodes = usage.inodes, "committed");
        Ok(())
    }

    /// The chain a Commit's `parent` puts the layer on, nearest first, when the
    /// Commit is a rebase; `None` when it keeps the layer's own parent.
    fn rebase_target(
        &self,
        tx: &Tx<'_>,
        record: &Record,
        key: &str,
        name: &str,
        parent: &str,
    ) -> Result<Option<Vec<SnapshotId>>> {
        if parent.is_empty() {
            return Ok(None);
        }
        if let Some(own) = record.parent {
            let own_key = tx
                .get_by_id(own)?
                .ok_or_else(|| Error::Internal(format!("parent {own} of {key:?} is missing")))?
                .key;
            if own_key == parent {
                return Ok(None);
            }
            return Err(Error::InvalidArgument(format!(
                "snapshot {key:?} was prepared on {own_key:?}; its parent cannot change to {parent:?} on commit"
            )));
        }
        if !self.backend.supports_rebase() {
            return Err(Error::Unimplemented(format!(
                "the {} backend cannot commit a layer onto a parent it was not prepared on",
                self.backend.name()
            )));
        }
        if parent == key || parent == name {
            return Err(Error::NotFound(parent.to_owned()));
        }
        let chain = parent_chain(tx, parent, Error::FailedPrecondition)?;
        if chain.len() > MAX_CHAIN_DEPTH {
            return Err(Error::FailedPrecondition(format!(
                "parent {parent:?} already stacks {} layers; the kernel mounts at most {MAX_CHAIN_DEPTH}",
                chain.len()
            )));
        }
        Ok(Some(chain))
    }

    pub fn remove(&self, key: &str) -> Result<()> {
        validate::key("key", key)?;
        // Remove is how space comes back, so a full disk must not stop it: the store
        // keeps a reserve to give up for exactly this retry.
        let id = match self.forget(key) {
            Err(err) if err.code() == Code::ResourceExhausted && self.store.release_reserve() => {
                self.forget(key)?
            }
            other => other?,
        };
        // The metadata has forgotten the snapshot, durably: from here on its storage
        // is garbage, and a failure to detach it is Cleanup's to finish.
        if let Err(err) = self.backend.remove(id) {
            warn!(key, %id, %err, "snapshot removed but its storage stays until Cleanup");
        }
        debug!(key, %id, "removed");
        Ok(())
    }

    fn forget(&self, key: &str) -> Result<SnapshotId> {
        self.store.write(|tx| {
            let record = get(tx, key)?;
            if tx.has_children(record.id)? {
                return Err(Error::FailedPrecondition(format!(
                    "snapshot {key:?} has children; remove them first"
                )));
            }
            tx.delete(record.id)?;
            Ok(record.id)
        })
    }

    pub fn stat(&self, key: &str) -> Result<Info> {
        validate::key("key", key)?;
        self.store
            .read(|tx| tx.info(key)?.ok_or_else(|| Error::NotFound(key.to_owned())))
    }

    pub fn update(&self, update: &InfoUpdate) -> Result<Info> {
        let name = update.name.as_str();
        validate::key("name", name)?;
        validate::labels(&update.labels)?;
        self.store.write(|tx| {
            let record = get(tx, name)?;
            if update.paths.is_empty() {
                tx.replace_labels(record.id, &update.labels, SystemTime::now())?;
            } else {
                for path in &update.paths {
                    if path == "labels" {
                        tx.replace_labels(record.id, &update.labels, SystemTime::now())?;
                    } else if let Some(label) = path.strip_prefix("labels.") {
                        let value = update.labels.get(label).map_or("", String::as_str);
                        tx.set_label(record.id, label, value)?;
                    } else {
                        return Err(Error::InvalidArgument(format!(
                            "cannot update field {path:?} of snapshot {name:?}: only labels are mutable"
                        )));
                    }
                }
                tx.touch(record.id, SystemTime::now())?;
            }
            let info = tx.info(name)?.ok_or_else(|| Error::NotFound(name.to_owned()))?;
            validate::labels(&info.labels)?;
            validate::id_mapping(&info.labels)?;
            validate::max_size(&info.labels)?;
            Ok(info)
        })
    }

    /// Committed layers answer from the usage cached at Commit, in constant time;
    /// active ones are measured now, since they are still being written.
    pub fn usage(&self, key: &str) -> Result<Usage> {
        match self.usage_source(key)? {
            UsageSource::Recorded(usage) => Ok(usage),
            UsageSource::Active(id) => self.measure_usage(key, id),
        }
    }

    /// Where the usage of `key` comes from, found with one read of the metadata.
    pub fn usage_source(&self, key: &str) -> Result<UsageSource> {
        validate::key("key", key)?;
        let record = self.store.read(|tx| get(tx, key))?;
        Ok(match record.kind {
            Kind::Committed => UsageSource::Recorded(record.usage.unwrap_or_default()),
            Kind::View => UsageSource::Recorded(Usage::default()),
            Kind::Active => UsageSource::Active(record.id),
        })
    }

    /// Measures the layer of the active snapshot `id`, found under `key` by
    /// [`usage_source`](Self::usage_source): a walk of its files, or where the
    /// backend keeps counters (overlay on a root with project quotas), a read of them.
    pub fn measure_usage(&self, key: &str, id: SnapshotId) -> Result<Usage> {
        self.backend
            .usage(SnapshotRef {
                id,
                kind: Kind::Active,
                parents: &[],
            })
            .map_err(|err| self.unless_vanished(err, key, Some(id)))
    }

    /// [`measure_usage`](Self::measure_usage) with how the figure was found and the
    /// limits the snapshot's writes meet.
    pub fn measure(&self, key: &str, id: SnapshotId) -> Result<Measured> {
        self.backend
            .measure(SnapshotRef {
                id,
                kind: Kind::Active,
                parents: &[],
            })
            .map_err(|err| self.unless_vanished(err, key, Some(id)))
    }

    /// How many active snapshots are held to a size or inode limit and how many are
    /// near it; `None` where the backend enforces no limits.
    pub fn limit_stats(&self) -> Result<Option<LimitStats>> {
        let active = self.store.read(|tx| tx.ids_of_kind(Kind::Active))?;
        self.backend.limit_stats(&|id| active.contains(&id))
    }

    /// Storage work happens outside the write lock, so a concurrent Remove can take a
    /// snapshot away underneath it. The caller then deserves containerd's NotFound,
    /// not the I/O error the vanished storage caused. The key may already name a new
    /// snapshot (removed and made again meanwhile), so the id decides, not the name.
    fn unless_vanished(&self, err: Error, key: &str, worked_on: Option<SnapshotId>) -> Error {
        let Some(worked_on) = worked_on else {
            return err;
        };
        match self.store.read(|tx| tx.get(key)) {
            Ok(Some(record)) if record.id == worked_on => err,
            Ok(_) => Error::NotFound(key.to_owned()),
            Err(_) => err,
        }
    }

    /// Every snapshot any of `filters` matches, handed to `visit` in id order.
    pub fn list(&self, filters: &Filters, mut visit: impl FnMut(Info)) -> Result<()> {
        self.store.read(|tx| {
            tx.for_each_info(|info| {
                if filters.matches(&info as &dyn Fields) {
                    visit(info);
                }
            })
            .map_err(Error::from)
        })
    }

    /// Deletes all storage the metadata does not know, and ends the reservations of
    /// ids whose storage is confirmed gone. Holds the write lock so no storage is
    /// published meanwhile.
    pub fn cleanup(&self) -> Result<usize> {
        let (removed, emptied) = self.store.write(|tx| {
            let mut known: HashSet<SnapshotId> = tx.ids()?;
            {
                let pool = lock(&self.ids);
                known.extend(pool.free.iter().copied());
                known.extend(pool.in_flight.iter().copied());
            }
            let suspects: Vec<SnapshotId> = tx
                .reserved_ids()?
                .into_iter()
                .filter(|id| !known.contains(id))
                .collect();
            let removed = self.backend.cleanup(&|id| known.contains(&id), &suspects)?;
            Ok::<_, Error>((removed, suspects))
        })?;
        if !emptied.is_empty() {
            // Only bookkeeping is left: the ids stay reserved (never reused) until a
            // later Cleanup records them, which a full disk may delay.
            match self.store.write(|tx| tx.release_ids(&emptied)) {
                Ok(()) => {
                    if let Some(&lowest) = emptied.iter().min() {
                        let mut pool = lock(&self.ids);
                        pool.search_from = pool.search_from.min(lowest);
                    }
                }
                Err(err) => {
                    warn!(%err, ids = emptied.len(), "emptied ids stay reserved until the next Cleanup")
                }
            }
        }
        Ok(removed)
    }

    pub fn counts(&self) -> Result<KindCounts> {
        Ok(self.store.read(|tx| tx.counts())?)
    }

    /// Total cached usage of committed layers.
    pub fn committed_usage(&self) -> Result<Usage> {
        Ok(self.store.read(|tx| tx.committed_usage())?)
    }

    /// Clean shutdown: the backend lets go of what it attached, and the metadata is
    /// folded into its main file.
    pub fn close(&self) -> Result<()> {
        self.backend.shutdown();
        Ok(self.store.checkpoint()?)
    }
}

fn take_free(pool: &mut IdPool) -> Option<SnapshotId> {
    let id = pool.free.pop()?;
    pool.in_flight.insert(id);
    Some(id)
}

fn get(tx: &Tx<'_>, key: &str) -> Result<Record> {
    tx.get(key)?.ok_or_else(|| Error::NotFound(key.to_owned()))
}

fn committable(tx: &Tx<'_>, key: &str) -> Result<Record> {
    let record = get(tx, key)?;
    if record.kind != Kind::Active {
        return Err(Error::FailedPrecondition(format!(
            "snapshot {key:?} is {}; only active snapshots can be committed",
            record.kind
        )));
    }
    Ok(record)
}

/// The chain a new child of `parent` stacks on, nearest first; empty for no parent.
/// A parent that is not committed is refused with `not_committed`: containerd says
/// `InvalidArgument` at Prepare and `FailedPrecondition` at a Commit that rebases.
fn parent_chain(
    tx: &Tx<'_>,
    parent: &str,
    not_committed: fn(String) -> Error,
) -> Result<Vec<SnapshotId>> {
    if parent.is_empty() {
        return Ok(Vec::new());
    }
    let record = tx
        .get(parent)?
        .ok_or_else(|| Error::NotFound(parent.to_owned()))?;
    if record.kind != Kind::Committed {
        return Err(not_committed(format!(
            "parent {parent:?} is {}, not committed",
            record.kind
        )));
    }
    let mut chain = vec![record.id];
    chain.extend(tx.ancestors(record.id)?);
    Ok(chain)
}
