//! A metadata file written by an older release opens and keeps its snapshots; the
//! upgrade is recorded so the file is not upgraded twice.

use rusqlite::Connection;
use rustlayer_core::{Kind, SnapshotId, Usage};
use rustlayer_metastore::{Store, StoreOptions};

/// The layout of schema version 2, as that release created it.
const VERSION_2: &str = "
CREATE TABLE snapshots (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    key         TEXT    NOT NULL UNIQUE,
    parent_id   INTEGER REFERENCES snapshots(id) ON DELETE RESTRICT,
    kind        TEXT    NOT NULL CHECK (kind IN ('view', 'active', 'committed')),
    created_ns  INTEGER NOT NULL,
    updated_ns  INTEGER NOT NULL,
    size_bytes  INTEGER,
    inodes      INTEGER,
    storage     TEXT
);
CREATE INDEX snapshots_by_parent ON snapshots(parent_id);
CREATE TABLE labels (
    snapshot_id INTEGER NOT NULL REFERENCES snapshots(id) ON DELETE CASCADE,
    name        TEXT    NOT NULL,
    value       TEXT    NOT NULL,
    PRIMARY KEY (snapshot_id, name)
) WITHOUT ROWID;
CREATE TABLE reserved_ids (
    id      INTEGER PRIMARY KEY,
    reason  TEXT NOT NULL CHECK (reason IN ('staging', 'removed'))
);
CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
INSERT INTO settings VALUES ('backend', 'overlay'), ('uuid', '0a1b2c3d-0000-4000-8000-000000000001');
INSERT INTO snapshots VALUES (1, 'base', NULL, 'committed', 10, 20, 4096, 3, NULL);
INSERT INTO snapshots VALUES (2, 'work', 1, 'active', 30, 40, NULL, NULL, NULL);
INSERT INTO labels VALUES (2, 'containerd.io/gc.root', 'yes');
INSERT INTO reserved_ids VALUES (3, 'removed');
PRAGMA user_version = 2;
";

fn user_version_and_columns(path: &std::path::Path) -> (i64, Vec<String>) {
    let conn = Connection::open(path).unwrap();
    let version = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    let mut stmt = conn
        .prepare("SELECT name FROM pragma_table_info('snapshots') ORDER BY cid")
        .unwrap();
    let columns = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    (version, columns)
}

#[test]
fn a_version_2_file_opens_with_its_snapshots_and_loses_the_unused_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metadata.db");
    Connection::open(&path)
        .unwrap()
        .execute_batch(VERSION_2)
        .unwrap();
    let options = StoreOptions {
        backend: "overlay".into(),
    };

    for open in ["upgrade", "reopen"] {
        let store = Store::open(&path, &options).unwrap();
        assert_eq!(
            store.uuid(),
            "0a1b2c3d-0000-4000-8000-000000000001",
            "{open}"
        );
        let base = store.read(|tx| tx.get("base")).unwrap().unwrap();
        assert_eq!(base.id, SnapshotId::new(1), "{open}");
        assert_eq!(base.kind, Kind::Committed, "{open}");
        assert_eq!(
            base.usage,
            Some(Usage {
                bytes: 4096,
                inodes: 3
            }),
            "{open}"
        );
        let work = store.read(|tx| tx.get("work")).unwrap().unwrap();
        assert_eq!(work.parent, Some(SnapshotId::new(1)), "{open}");
        let labels = store.read(|tx| tx.labels(work.id)).unwrap();
        assert_eq!(
            labels.get("containerd.io/gc.root").map(String::as_str),
            Some("yes"),
            "{open}"
        );
        let reserved = store.read(|tx| tx.reserved_ids()).unwrap();
        assert_eq!(reserved, [SnapshotId::new(3)], "{open}");
        drop(store);

        let (version, columns) = user_version_and_columns(&path);
        assert_eq!(version, 3, "{open}");
        assert_eq!(
            columns,
            [
                "id",
                "key",
                "parent_id",
                "kind",
                "created_ns",
                "updated_ns",
                "size_bytes",
                "inodes"
            ],
            "{open}"
        );
    }
}
