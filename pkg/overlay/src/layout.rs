use std::path::{Path, PathBuf};

use rustlayer_core::SnapshotId;

/// Where everything lives under the backend's root. Paths are built from ids only.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: &Path) -> Self {
        Layout {
            root: root.to_owned(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn snapshots(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    pub fn links(&self) -> PathBuf {
        self.root.join("l")
    }

    pub fn staging(&self) -> PathBuf {
        self.root.join("staging")
    }

    pub fn trash(&self) -> PathBuf {
        self.root.join("trash")
    }

    /// An empty directory, the lower layer of active snapshots without a parent.
    pub fn empty(&self) -> PathBuf {
        self.root.join("empty")
    }

    pub fn snapshot(&self, id: SnapshotId) -> PathBuf {
        self.snapshots().join(id.to_string())
    }

    pub fn upper(&self, id: SnapshotId) -> PathBuf {
        self.snapshot(id).join("fs")
    }

    pub fn work(&self, id: SnapshotId) -> PathBuf {
        self.snapshot(id).join("work")
    }

    pub fn link(&self, id: SnapshotId) -> PathBuf {
        self.links().join(id.short_name())
    }

    /// The link's target, relative so the root can move without breaking links.
    pub fn link_target(id: SnapshotId) -> PathBuf {
        Path::new("../snapshots").join(id.to_string()).join("fs")
    }
}
