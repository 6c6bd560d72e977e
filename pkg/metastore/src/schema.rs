//! The on-disk layout. `user_version` records the schema so that an older binary
//! refuses a newer file instead of misreading it.

pub const VERSION: i64 = 3;

/// Ids are handed out by the store before any storage exists (see `reserved_ids`),
/// lowest free first, so they stay small enough to name thin devices (24 bits). An id
/// is reused only once nothing of its old storage can remain.
pub const CREATE: &str = "
CREATE TABLE IF NOT EXISTS snapshots (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    key         TEXT    NOT NULL UNIQUE,
    parent_id   INTEGER REFERENCES snapshots(id) ON DELETE RESTRICT,
    kind        TEXT    NOT NULL CHECK (kind IN ('view', 'active', 'committed')),
    created_ns  INTEGER NOT NULL,
    updated_ns  INTEGER NOT NULL,
    size_bytes  INTEGER,
    inodes      INTEGER
);
CREATE INDEX IF NOT EXISTS snapshots_by_parent ON snapshots(parent_id);
CREATE TABLE IF NOT EXISTS labels (
    snapshot_id INTEGER NOT NULL REFERENCES snapshots(id) ON DELETE CASCADE,
    name        TEXT    NOT NULL,
    value       TEXT    NOT NULL,
    PRIMARY KEY (snapshot_id, name)
) WITHOUT ROWID;
-- Ids that may own storage without a snapshot row: handed to a Prepare that is
-- still creating its storage ('staging'), or left by a Remove whose storage is
-- still being deleted ('removed'). Cleanup deletes their storage, then the row.
CREATE TABLE IF NOT EXISTS reserved_ids (
    id      INTEGER PRIMARY KEY,
    reason  TEXT NOT NULL CHECK (reason IN ('staging', 'removed'))
);
CREATE TABLE IF NOT EXISTS settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
";

/// Brings a file of an older version up to [`VERSION`], after [`CREATE`] has added
/// the tables it lacked. Version 2 and older had a `storage` column on `snapshots`
/// that no backend ever wrote.
pub const UPGRADE_FROM_2: &str = "ALTER TABLE snapshots DROP COLUMN storage;";
