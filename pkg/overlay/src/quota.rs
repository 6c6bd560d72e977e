//! Size limits and constant-time usage through project quotas.
//!
//! On a root whose filesystem keeps project quotas (xfs mounted `prjquota`; ext4
//! with the `quota,project` features, mounted `prjquota`), an active snapshot's
//! `fs` and `work` directories are tagged at Prepare, before anything is written
//! into them, with the snapshot's id as project id (ids fit the 24 bits the
//! snapshot ids are bounded by), inherited by everything created below. Both
//! directories: overlay copies a file up by creating it in `work` and renaming it
//! into `fs`, and both filesystems refuse a rename into a tree of another project.
//!
//! `containerd.io/snapshot/max-size` (or the configured default) is the project's
//! hard block limit, so a write past it fails with EDQUOT in that snapshot alone;
//! Usage and Commit read the project's counters instead of walking the layer (they
//! count `work` too: overlay's scratch directory, a couple of inodes). Remove clears
//! the limits; Cleanup clears any left on a project no snapshot owns, which is all a
//! crash can leak since the id itself stays reserved until Cleanup.
//!
//! The root must be the only user of project ids on its filesystem: ids 1 to 2^24-1
//! are rustlayer's there.
//!
//! Without project quotas, usage is walked as before and `max-size` is ignored,
//! said at start, in `rustlayer check` and in a metric; with `enforce_size` it is
//! refused instead.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustlayer_core::{
    Check, Error as CoreError, Kind, Labels, LimitStats, Limits, MAX_SIZE_LABEL, NEAR_LIMIT,
    SnapshotId, Usage, validate,
};
use rustlayer_mount::{ProjectLimits, ProjectQuota};
use tracing::{info, warn};

use crate::error::{Error, Result};

/// The check's name in logs and `rustlayer check`.
pub const PROJECT_QUOTAS: &str = "project quotas";

/// What the operator configured about layer sizes (`[overlay]` in the config file).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SizeLimits {
    /// The byte limit of an active snapshot without `max-size`; none when unset.
    pub default_size: Option<u64>,
    /// The inode limit of every active snapshot; none when unset.
    pub default_inodes: Option<u64>,
    /// Refuse `max-size` (FailedPrecondition) where it cannot be enforced, instead of
    /// ignoring it, and refuse to start with a default that cannot be.
    pub enforce_size: bool,
}

impl SizeLimits {
    fn wanted(&self) -> bool {
        self.default_size.is_some() || self.default_inodes.is_some()
    }
}

/// Project quotas on the root, or why there are none.
pub(crate) struct Quotas {
    root: PathBuf,
    limits: SizeLimits,
    support: std::result::Result<Arc<dyn ProjectQuota>, String>,
    /// Active snapshots whose layer was made without a project (before the root had
    /// quotas): their counters mean nothing, so they are walked.
    uncounted: Mutex<HashSet<SnapshotId>>,
}

impl std::fmt::Debug for Quotas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quotas")
            .field("root", &self.root)
            .field("limits", &self.limits)
            .field("counted", &self.support.is_ok())
            .finish_non_exhaustive()
    }
}

/// What [`project_quota_check`] and the start-up log say.
fn describe(support: &std::result::Result<(), String>, limits: &SizeLimits) -> (bool, String) {
    match support {
        Ok(()) => (
            true,
            format!(
                "on: usage of active snapshots is read from quota counters, {MAX_SIZE_LABEL} \
                 is enforced{}",
                match limits.default_size {
                    Some(bytes) => format!(", default size {bytes} bytes"),
                    None => String::new(),
                },
            ),
        ),
        Err(reason) => {
            let consequence = if limits.enforce_size {
                format!("{MAX_SIZE_LABEL} is refused (enforce_size is on)")
            } else {
                format!("{MAX_SIZE_LABEL} is ignored (set enforce_size to refuse it)")
            };
            // A default nobody can enforce, with enforcement asked for, is a
            // configuration the daemon cannot honour at all.
            let ok = !(limits.enforce_size && limits.wanted());
            let defaults = if limits.wanted() {
                "; the configured default size cannot be applied"
            } else {
                ""
            };
            (
                ok,
                format!(
                    "off ({reason}): usage is measured by walking layers, {consequence}{defaults}; \
                     project quotas need xfs mounted prjquota or ext4 with the quota and project \
                     features mounted prjquota"
                ),
            )
        }
    }
}

/// Whether the filesystem of `root` keeps project quotas, as a check for
/// `rustlayer check` and the start-up log. It fails only when `enforce_size` asks
/// for a default size the root cannot enforce.
pub fn project_quota_check(root: &Path, quota: &dyn ProjectQuota, limits: &SizeLimits) -> Check {
    let support = quota.probe(root).map_err(|err| err.to_string());
    let (ok, detail) = describe(&support, limits);
    Check {
        name: PROJECT_QUOTAS,
        ok,
        detail,
    }
}

fn project(id: SnapshotId) -> u32 {
    // Snapshot ids are bounded by 2^24 - 1, so they always fit.
    u32::try_from(id.get()).unwrap_or(u32::MAX)
}

impl Quotas {
    pub(crate) fn new(
        root: &Path,
        quota: Arc<dyn ProjectQuota>,
        limits: SizeLimits,
    ) -> Result<Quotas> {
        let support = match quota.probe(root) {
            Ok(()) => Ok(quota),
            Err(err) => Err(err.to_string()),
        };
        let probed = support.as_ref().map(|_| ()).map_err(Clone::clone);
        let (ok, detail) = describe(&probed, &limits);
        if !ok {
            return Err(Error::Preflight(format!("{PROJECT_QUOTAS}: {detail}")));
        }
        if probed.is_ok() {
            info!(root = %root.display(), "{PROJECT_QUOTAS}: {detail}");
        } else {
            warn!(root = %root.display(), "{PROJECT_QUOTAS}: {detail}");
        }
        Ok(Quotas {
            root: root.to_owned(),
            limits,
            support,
            uncounted: Mutex::default(),
        })
    }

    pub(crate) fn counted(&self) -> bool {
        self.support.is_ok()
    }

    /// The limits a new snapshot gets, checked before any storage is made: `None`
    /// when it gets no project (a view, or no quotas on the root).
    pub(crate) fn limits_for(
        &self,
        kind: Kind,
        labels: &Labels,
    ) -> rustlayer_core::Result<Option<ProjectLimits>> {
        let asked = validate::max_size(labels)?;
        if self.support.is_err() {
            if asked.is_some() && self.limits.enforce_size {
                return Err(CoreError::FailedPrecondition(format!(
                    "label {MAX_SIZE_LABEL} cannot be enforced: the filesystem of {} has no \
                     project quotas (enforce_size is on)",
                    self.root.display()
                )));
            }
            return Ok(None);
        }
        if kind != Kind::Active {
            // Views and committed layers are never written through a mount.
            return Ok(None);
        }
        Ok(Some(ProjectLimits {
            bytes: asked.or(self.limits.default_size),
            inodes: self.limits.default_inodes,
        }))
    }

    /// Tags a new, empty directory of snapshot `id` with its project.
    pub(crate) fn assign(&self, dir: &Path, id: SnapshotId) -> Result<()> {
        match &self.support {
            Ok(quota) => Ok(quota.assign(dir, project(id))?),
            Err(_) => Ok(()),
        }
    }

    /// Whether a reused id's project still holds something (a previous life's
    /// storage the reaper has not deleted yet).
    pub(crate) fn holds_anything(&self, id: SnapshotId) -> Result<bool> {
        match &self.support {
            Ok(quota) => {
                let usage = quota.usage(&self.root, project(id))?;
                Ok(usage.bytes > 0 || usage.inodes > 0)
            }
            Err(_) => Ok(false),
        }
    }

    /// Sets the project's limits (overwriting whatever a previous life left).
    pub(crate) fn set_limits(&self, id: SnapshotId, limits: ProjectLimits) -> Result<()> {
        match &self.support {
            Ok(quota) => Ok(quota.set_limits(&self.root, project(id), limits)?),
            Err(_) => Ok(()),
        }
    }

    /// Clears the limits of a snapshot that is gone. A failure only delays it to the
    /// next Cleanup, which clears limits no snapshot owns.
    pub(crate) fn release(&self, id: SnapshotId) {
        rustlayer_core::sync::lock(&self.uncounted).remove(&id);
        if let Err(err) = self.set_limits(id, ProjectLimits::NONE) {
            warn!(%id, %err, "cannot clear the project quota of a removed snapshot; Cleanup will");
        }
    }

    /// The layer's usage from the counters, or `None` where it must be walked.
    pub(crate) fn usage(&self, id: SnapshotId) -> Result<Option<Usage>> {
        Ok(self.usage_and_limits(id)?.map(|(usage, _)| usage))
    }

    /// The layer's usage and the limits its project is held to, from one read of
    /// the counters, or `None` where it must be walked (and nothing is enforced).
    pub(crate) fn usage_and_limits(&self, id: SnapshotId) -> Result<Option<(Usage, Limits)>> {
        let Ok(quota) = &self.support else {
            return Ok(None);
        };
        if rustlayer_core::sync::lock(&self.uncounted).contains(&id) {
            return Ok(None);
        }
        let counted = quota.usage(&self.root, project(id))?;
        Ok(Some((
            Usage {
                bytes: counted.bytes,
                inodes: counted.inodes,
            },
            Limits {
                bytes: counted.limits.bytes,
                inodes: counted.limits.inodes,
            },
        )))
    }

    /// One pass over the filesystem's project records: the active snapshots held to
    /// a limit and those at [`NEAR_LIMIT`] of it or more. `None` without quotas.
    pub(crate) fn limit_stats(
        &self,
        is_active: &dyn Fn(SnapshotId) -> bool,
    ) -> Result<Option<LimitStats>> {
        let Ok(quota) = &self.support else {
            return Ok(None);
        };
        let mut stats = LimitStats::default();
        for (id, counted) in quota.projects(&self.root, 1)? {
            if u64::from(id) > SnapshotId::MAX.get() {
                break;
            }
            // A committed layer keeps its project's limit but is never written again.
            if counted.limits.is_none() || !is_active(SnapshotId::new(u64::from(id))) {
                continue;
            }
            let limits = Limits {
                bytes: counted.limits.bytes,
                inodes: counted.limits.inodes,
            };
            let usage = Usage {
                bytes: counted.bytes,
                inodes: counted.inodes,
            };
            stats.limited += 1;
            if limits.fraction_used(usage).is_some_and(|f| f >= NEAR_LIMIT) {
                stats.near_limit += 1;
            }
        }
        Ok(Some(stats))
    }

    /// At start: active snapshots whose upper directory does not carry their project
    /// (made before the root had quotas) are walked from now on.
    pub(crate) fn find_uncounted(
        &self,
        upper_of: impl Fn(SnapshotId) -> PathBuf,
        active: &[SnapshotId],
    ) -> Result<usize> {
        let Ok(quota) = &self.support else {
            return Ok(0);
        };
        let mut uncounted = rustlayer_core::sync::lock(&self.uncounted);
        for &id in active {
            if quota.project_of(&upper_of(id))? != project(id) {
                uncounted.insert(id);
            }
        }
        if !uncounted.is_empty() {
            warn!(
                snapshots = uncounted.len(),
                "active snapshots made before the root had project quotas are measured by walking and have no size limit"
            );
        }
        Ok(uncounted.len())
    }

    /// Clears the limits of every project in the snapshot id range that no snapshot
    /// owns: what a crash between a Remove's metadata and its storage, or in the
    /// middle of a Prepare, leaves behind. Returns how many were cleared.
    pub(crate) fn clear_leaked(&self, is_known: &dyn Fn(SnapshotId) -> bool) -> Result<usize> {
        let Ok(quota) = &self.support else {
            return Ok(0);
        };
        let mut cleared = 0;
        for (id, usage) in quota.projects(&self.root, 1)? {
            if u64::from(id) > SnapshotId::MAX.get() {
                break;
            }
            let id = SnapshotId::new(u64::from(id));
            if !usage.limits.is_none() && !is_known(id) {
                quota.set_limits(&self.root, project(id), ProjectLimits::NONE)?;
                cleared += 1;
            }
        }
        if cleared > 0 {
            info!(cleared, "cleared project quota limits no snapshot owns");
        }
        Ok(cleared)
    }
}
