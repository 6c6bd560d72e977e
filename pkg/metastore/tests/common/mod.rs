//! What the store's integration tests share: a store in a temporary directory and
//! a snapshot row written in its own transaction.

use std::path::Path;
use std::time::SystemTime;

use rustlayer_core::{Kind, Labels, SnapshotId};
use rustlayer_metastore::{NewSnapshot, Store, StoreOptions};

/// The store under `dir`, made on first open.
pub fn open(dir: &Path) -> Store {
    Store::open(
        &dir.join("metadata.db"),
        &StoreOptions {
            backend: "overlay".into(),
        },
    )
    .unwrap()
}

/// A parentless snapshot row, committed at once.
pub fn insert(store: &Store, id: SnapshotId, key: &str, kind: Kind, labels: &Labels) {
    store
        .write(|tx| {
            tx.insert(&NewSnapshot {
                id,
                key,
                parent: None,
                kind,
                labels,
                now: SystemTime::now(),
            })
            .map(|_| ())
        })
        .unwrap();
}
