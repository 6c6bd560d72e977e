//! The on-disk layout. `user_version` records the schema so that an older binary
//! refuses a newer file instead of misreading it.

pub const VERSION: i64 = 1;

/// Ids come from AUTOINCREMENT so a deleted snapshot's id is never handed out again:
/// its storage may still be in the reaper's queue under that id.
pub const CREATE: &str = "
CREATE TABLE IF NOT EXISTS snapshots (
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
CREATE INDEX IF NOT EXISTS snapshots_by_parent ON snapshots(parent_id);
CREATE TABLE IF NOT EXISTS labels (
    snapshot_id INTEGER NOT NULL REFERENCES snapshots(id) ON DELETE CASCADE,
    name        TEXT    NOT NULL,
    value       TEXT    NOT NULL,
    PRIMARY KEY (snapshot_id, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
";
