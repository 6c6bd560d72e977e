use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{OptionalExtension, Row, Transaction, params};
use rustlayer_core::{Info, Kind, Labels, LiveSnapshot, SnapshotId, Usage, saturating_i64};

use crate::error::{Error, Result};

/// One snapshot's row, without labels (they are fetched only when asked for).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub id: SnapshotId,
    pub key: String,
    pub parent: Option<SnapshotId>,
    pub kind: Kind,
    pub created: SystemTime,
    pub updated: SystemTime,
    /// Cached at Commit; `None` for snapshots whose layer may still change.
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone)]
pub struct NewSnapshot<'a> {
    /// An id from [`Tx::reserve_ids`]; inserting the row ends its reservation.
    pub id: SnapshotId,
    pub key: &'a str,
    pub parent: Option<SnapshotId>,
    pub kind: Kind,
    pub labels: &'a Labels,
    pub now: SystemTime,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KindCounts {
    pub view: u64,
    pub active: u64,
    pub committed: u64,
}

/// A transaction on the metadata; what it may do depends on whether the store
/// handed it out for reading or writing (a write on a reader fails in SQLite).
pub struct Tx<'c> {
    txn: &'c Transaction<'c>,
}

const RECORD_COLUMNS: &str = "id, key, parent_id, kind, created_ns, updated_ns, size_bytes, inodes";

impl<'c> Tx<'c> {
    pub(crate) fn new(txn: &'c Transaction<'c>) -> Self {
        Tx { txn }
    }

    pub fn get(&self, key: &str) -> Result<Option<Record>> {
        let mut stmt = self.txn.prepare_cached(&format!(
            "SELECT {RECORD_COLUMNS} FROM snapshots WHERE key = ?1"
        ))?;
        stmt.query_row([key], record_from_row)
            .optional()
            .map_err(Error::from)
            .and_then(|r| r.transpose())
    }

    pub fn get_by_id(&self, id: SnapshotId) -> Result<Option<Record>> {
        let mut stmt = self.txn.prepare_cached(&format!(
            "SELECT {RECORD_COLUMNS} FROM snapshots WHERE id = ?1"
        ))?;
        stmt.query_row([sql_id(id)], record_from_row)
            .optional()
            .map_err(Error::from)
            .and_then(|r| r.transpose())
    }

    /// The committed ancestors of `id`, nearest first.
    pub fn ancestors(&self, id: SnapshotId) -> Result<Vec<SnapshotId>> {
        let mut stmt = self.txn.prepare_cached(
            "WITH RECURSIVE chain(id, parent_id, depth) AS (
                 SELECT id, parent_id, 0 FROM snapshots WHERE id = ?1
                 UNION ALL
                 SELECT s.id, s.parent_id, chain.depth + 1
                   FROM snapshots s JOIN chain ON s.id = chain.parent_id
             )
             SELECT id FROM chain WHERE depth > 0 ORDER BY depth",
        )?;
        let rows = stmt.query_map([sql_id(id)], |r| r.get::<_, i64>(0))?;
        rows.map(|r| id_from_sql(r?)).collect()
    }

    pub fn labels(&self, id: SnapshotId) -> Result<Labels> {
        let mut stmt = self
            .txn
            .prepare_cached("SELECT name, value FROM labels WHERE snapshot_id = ?1")?;
        let rows = stmt.query_map([sql_id(id)], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<Labels>>()?)
    }

    /// containerd's view of a snapshot, or None if the key is unknown.
    pub fn info(&self, key: &str) -> Result<Option<Info>> {
        let Some(record) = self.get(key)? else {
            return Ok(None);
        };
        let parent = match record.parent {
            Some(parent) => Some(
                self.get_by_id(parent)?
                    .ok_or_else(|| Error::Invalid {
                        what: "parent reference",
                        value: parent.to_string(),
                    })?
                    .key,
            ),
            None => None,
        };
        let labels = self.labels(record.id)?;
        Ok(Some(Info {
            name: record.key,
            parent,
            kind: record.kind,
            created: record.created,
            updated: record.updated,
            labels,
        }))
    }

    /// Every snapshot's info, in id order, handed to `visit` one by one so a large
    /// listing is never held twice in memory.
    pub fn for_each_info(&self, mut visit: impl FnMut(Info)) -> Result<()> {
        // Both in id order (the labels' primary key starts with the id), merged as
        // they stream: no map of every label, whatever the number of snapshots.
        let mut label_stmt = self.txn.prepare_cached(
            "SELECT snapshot_id, name, value FROM labels ORDER BY snapshot_id, name",
        )?;
        let mut label_rows = label_stmt.query([])?;
        let mut next_label = || -> Result<Option<(i64, String, String)>> {
            match label_rows.next()? {
                Some(row) => Ok(Some((row.get(0)?, row.get(1)?, row.get(2)?))),
                None => Ok(None),
            }
        };
        let mut pending = next_label()?;
        let mut stmt = self.txn.prepare_cached(
            "SELECT s.id, s.key, p.key, s.kind, s.created_ns, s.updated_ns
               FROM snapshots s LEFT JOIN snapshots p ON p.id = s.parent_id
              ORDER BY s.id",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let id: i64 = row.get(0)?;
            let mut labels = Labels::new();
            while let Some((owner, _, _)) = &pending
                && *owner <= id
            {
                // A label row always has its snapshot (a foreign key); one of a
                // smaller id cannot be left over, but is skipped rather than misfiled.
                if let Some((owner, name, value)) = pending.take()
                    && owner == id
                {
                    labels.insert(name, value);
                }
                pending = next_label()?;
            }
            visit(Info {
                name: row.get(1)?,
                parent: row.get(2)?,
                kind: kind_from_sql(&row.get::<_, String>(3)?)?,
                created: time_from_sql(row.get(4)?),
                updated: time_from_sql(row.get(5)?),
                labels,
            });
        }
        Ok(())
    }

    pub fn ids(&self) -> Result<HashSet<SnapshotId>> {
        let mut stmt = self.txn.prepare_cached("SELECT id FROM snapshots")?;
        let rows = stmt.query_map([], |r| r.get::<_, i64>(0))?;
        rows.map(|r| id_from_sql(r?)).collect()
    }

    /// The ids of the snapshots of `kind`: for the metrics collector, every 10 s.
    pub fn ids_of_kind(&self, kind: Kind) -> Result<HashSet<SnapshotId>> {
        let mut stmt = self
            .txn
            .prepare_cached("SELECT id FROM snapshots WHERE kind = ?1")?;
        let rows = stmt.query_map([kind.as_str()], |r| r.get::<_, i64>(0))?;
        rows.map(|r| id_from_sql(r?)).collect()
    }

    /// Every snapshot with its parent and labels, by id: what a backend needs at
    /// start to make storage a power loss took again.
    pub fn live_snapshots(&self) -> Result<Vec<LiveSnapshot>> {
        let mut stmt = self
            .txn
            .prepare_cached("SELECT id, kind, parent_id FROM snapshots ORDER BY id")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<i64>>(2)?,
            ))
        })?;
        let mut live = Vec::new();
        for row in rows {
            let (id, kind, parent) = row?;
            let id = id_from_sql(id)?;
            live.push(LiveSnapshot {
                id,
                kind: kind_from_sql(&kind)?,
                parent: parent.map(id_from_sql).transpose()?,
                labels: self.labels(id)?,
            });
        }
        Ok(live)
    }

    pub fn has_children(&self, id: SnapshotId) -> Result<bool> {
        let mut stmt = self
            .txn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM snapshots WHERE parent_id = ?1)")?;
        Ok(stmt.query_row([sql_id(id)], |r| r.get(0))?)
    }

    pub fn counts(&self) -> Result<KindCounts> {
        let mut stmt = self
            .txn
            .prepare_cached("SELECT kind, COUNT(*) FROM snapshots GROUP BY kind")?;
        let mut counts = KindCounts::default();
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let n: i64 = row.get(1)?;
            let n = u64::try_from(n).unwrap_or(0);
            match kind_from_sql(&row.get::<_, String>(0)?)? {
                Kind::View => counts.view = n,
                Kind::Active => counts.active = n,
                Kind::Committed => counts.committed = n,
            }
        }
        Ok(counts)
    }

    /// The cached usage of all committed layers together.
    pub fn committed_usage(&self) -> Result<Usage> {
        let mut stmt = self.txn.prepare_cached(
            "SELECT COALESCE(SUM(size_bytes), 0), COALESCE(SUM(inodes), 0)
               FROM snapshots WHERE kind = 'committed'",
        )?;
        let (bytes, inodes): (i64, i64) = stmt.query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(Usage {
            bytes: u64::try_from(bytes).unwrap_or(0),
            inodes: u64::try_from(inodes).unwrap_or(0),
        })
    }

    pub fn insert(&self, new: &NewSnapshot<'_>) -> Result<SnapshotId> {
        let now = time_to_sql(new.now);
        let mut stmt = self.txn.prepare_cached(
            "INSERT INTO snapshots (id, key, parent_id, kind, created_ns, updated_ns)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
        )?;
        stmt.execute(params![
            sql_id(new.id),
            new.key,
            new.parent.map(sql_id),
            new.kind.as_str(),
            now
        ])?;
        let id = new.id;
        self.release_ids(&[id])?;
        self.write_labels(id, new.labels)?;
        Ok(id)
    }

    /// Sets aside the `count` lowest ids from `from` on that neither name a snapshot
    /// nor are reserved already, for Prepares to create storage under before their
    /// row exists. `from` spares scanning every id in use when the caller knows the
    /// ids below it are taken; it is only a hint, so when too few remain above it the
    /// search starts again at [`SnapshotId::MIN`]. Fails with `IdsExhausted` when
    /// fewer than `count` remain below `max`.
    pub fn reserve_ids(
        &self,
        count: usize,
        from: SnapshotId,
        max: SnapshotId,
    ) -> Result<Vec<SnapshotId>> {
        let mut free = self.unused_ids(count, from.max(SnapshotId::MIN), max)?;
        if free.len() < count && from > SnapshotId::MIN {
            free = self.unused_ids(count, SnapshotId::MIN, max)?;
        }
        if free.len() < count {
            return Err(Error::IdsExhausted { max: max.get() });
        }
        let mut insert = self
            .txn
            .prepare_cached("INSERT INTO reserved_ids (id, reason) VALUES (?1, 'staging')")?;
        for id in &free {
            insert.execute([sql_id(*id)])?;
        }
        Ok(free)
    }

    /// Up to `count` ids in `from..=max`, lowest first, that neither name a snapshot
    /// nor are reserved. Both tables are keyed by id, so this reads only the ids in
    /// use from `from` on.
    fn unused_ids(
        &self,
        count: usize,
        from: SnapshotId,
        max: SnapshotId,
    ) -> Result<Vec<SnapshotId>> {
        let mut taken = self.txn.prepare_cached(
            "SELECT id FROM snapshots WHERE id >= ?1 \
             UNION SELECT id FROM reserved_ids WHERE id >= ?1 ORDER BY 1",
        )?;
        let mut rows = taken.query([sql_id(from)])?;
        let mut free = Vec::with_capacity(count);
        let mut candidate = from.get();
        'scan: while free.len() < count {
            let next_taken = match rows.next()? {
                Some(row) => id_from_sql(row.get(0)?)?.get(),
                None => u64::MAX,
            };
            while candidate < next_taken {
                if candidate > max.get() {
                    break 'scan;
                }
                free.push(SnapshotId::new(candidate));
                candidate += 1;
                if free.len() == count {
                    break 'scan;
                }
            }
            candidate = next_taken.saturating_add(1);
            if next_taken == u64::MAX {
                break;
            }
        }
        Ok(free)
    }

    /// Every reserved id, in id order. Why each is reserved is kept in the file for
    /// whoever reads it by hand; Cleanup treats both reasons alike.
    pub fn reserved_ids(&self) -> Result<Vec<SnapshotId>> {
        let mut stmt = self
            .txn
            .prepare_cached("SELECT id FROM reserved_ids ORDER BY id")?;
        let rows = stmt.query_map([], |r| r.get::<_, i64>(0))?;
        rows.map(|row| id_from_sql(row?)).collect()
    }

    /// Ends reservations: the id names a snapshot now, or its old storage is gone.
    pub fn release_ids(&self, ids: &[SnapshotId]) -> Result<()> {
        let mut stmt = self
            .txn
            .prepare_cached("DELETE FROM reserved_ids WHERE id = ?1")?;
        for id in ids {
            stmt.execute([sql_id(*id)])?;
        }
        Ok(())
    }

    /// Turns an active snapshot into a committed one under a new key, keeping its id
    /// (and so its storage) and caching its usage. With `rebase_onto`, the layer
    /// (prepared without a parent) is placed on that committed parent in the same
    /// statement, so no instant sees it committed without it; without, it keeps the
    /// parent it has.
    pub fn commit(
        &self,
        id: SnapshotId,
        name: &str,
        rebase_onto: Option<SnapshotId>,
        labels: &Labels,
        usage: Usage,
        now: SystemTime,
    ) -> Result<()> {
        let now = time_to_sql(now);
        let mut stmt = self.txn.prepare_cached(
            "UPDATE snapshots
                SET key = ?2, kind = 'committed', created_ns = ?3, updated_ns = ?3,
                    size_bytes = ?4, inodes = ?5, parent_id = COALESCE(?6, parent_id)
              WHERE id = ?1",
        )?;
        stmt.execute(params![
            sql_id(id),
            name,
            now,
            saturating_i64(usage.bytes),
            saturating_i64(usage.inodes),
            rebase_onto.map(sql_id)
        ])?;
        self.clear_labels(id)?;
        self.write_labels(id, labels)
    }

    /// Replaces the whole label set.
    pub fn replace_labels(&self, id: SnapshotId, labels: &Labels, now: SystemTime) -> Result<()> {
        self.clear_labels(id)?;
        self.write_labels(id, labels)?;
        self.touch(id, now)
    }

    /// Sets one label; an empty value removes it, as in containerd.
    pub fn set_label(&self, id: SnapshotId, name: &str, value: &str) -> Result<()> {
        if value.is_empty() {
            let mut stmt = self
                .txn
                .prepare_cached("DELETE FROM labels WHERE snapshot_id = ?1 AND name = ?2")?;
            stmt.execute(params![sql_id(id), name])?;
        } else {
            let mut stmt = self.txn.prepare_cached(
                "INSERT INTO labels (snapshot_id, name, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (snapshot_id, name) DO UPDATE SET value = excluded.value",
            )?;
            stmt.execute(params![sql_id(id), name, value])?;
        }
        Ok(())
    }

    pub fn touch(&self, id: SnapshotId, now: SystemTime) -> Result<()> {
        let mut stmt = self
            .txn
            .prepare_cached("UPDATE snapshots SET updated_ns = ?2 WHERE id = ?1")?;
        stmt.execute(params![sql_id(id), time_to_sql(now)])?;
        Ok(())
    }

    /// Deletes the record and its labels. The caller has checked it has no children;
    /// the foreign key would refuse otherwise.
    /// Forgets a snapshot. Its id stays reserved until Cleanup has made sure its
    /// storage is gone, so a new snapshot never inherits the old one's device.
    pub fn delete(&self, id: SnapshotId) -> Result<()> {
        let mut stmt = self
            .txn
            .prepare_cached("DELETE FROM snapshots WHERE id = ?1")?;
        stmt.execute([sql_id(id)])?;
        let mut retire = self.txn.prepare_cached(
            "INSERT OR REPLACE INTO reserved_ids (id, reason) VALUES (?1, 'removed')",
        )?;
        retire.execute([sql_id(id)])?;
        Ok(())
    }

    fn clear_labels(&self, id: SnapshotId) -> Result<()> {
        let mut stmt = self
            .txn
            .prepare_cached("DELETE FROM labels WHERE snapshot_id = ?1")?;
        stmt.execute([sql_id(id)])?;
        Ok(())
    }

    /// Empty values are not stored: containerd treats them as "no such label".
    fn write_labels(&self, id: SnapshotId, labels: &Labels) -> Result<()> {
        let mut stmt = self
            .txn
            .prepare_cached("INSERT INTO labels (snapshot_id, name, value) VALUES (?1, ?2, ?3)")?;
        for (name, value) in labels.iter().filter(|(_, v)| !v.is_empty()) {
            stmt.execute(params![sql_id(id), name, value])?;
        }
        Ok(())
    }
}

fn record_from_row(row: &Row<'_>) -> rusqlite::Result<Result<Record>> {
    let id: i64 = row.get(0)?;
    let key: String = row.get(1)?;
    let parent: Option<i64> = row.get(2)?;
    let kind: String = row.get(3)?;
    let created: i64 = row.get(4)?;
    let updated: i64 = row.get(5)?;
    let size: Option<i64> = row.get(6)?;
    let inodes: Option<i64> = row.get(7)?;
    Ok((|| {
        Ok(Record {
            id: id_from_sql(id)?,
            key,
            parent: parent.map(id_from_sql).transpose()?,
            kind: kind_from_sql(&kind)?,
            created: time_from_sql(created),
            updated: time_from_sql(updated),
            usage: match (size, inodes) {
                (Some(bytes), Some(inodes)) => Some(Usage {
                    bytes: u64::try_from(bytes).unwrap_or(0),
                    inodes: u64::try_from(inodes).unwrap_or(0),
                }),
                _ => None,
            },
        })
    })())
}

fn sql_id(id: SnapshotId) -> i64 {
    // Ids only ever come from SQLite's rowids, which are positive i64.
    saturating_i64(id.get())
}

fn id_from_sql(raw: i64) -> Result<SnapshotId> {
    u64::try_from(raw)
        .ok()
        .filter(|&n| n > 0)
        .map(SnapshotId::new)
        .ok_or(Error::Invalid {
            what: "snapshot id",
            value: raw.to_string(),
        })
}

fn kind_from_sql(raw: &str) -> Result<Kind> {
    Kind::parse(raw).ok_or_else(|| Error::Invalid {
        what: "kind",
        value: raw.to_owned(),
    })
}

fn time_to_sql(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| saturating_i64(d.as_nanos()))
        .unwrap_or(0)
}

fn time_from_sql(ns: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(u64::try_from(ns).unwrap_or(0))
}
