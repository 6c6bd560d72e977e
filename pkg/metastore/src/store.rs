use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use rustlayer_core::sync::lock;
use tracing::{debug, info};

use crate::error::{Error, Result};
use crate::schema;
use crate::tx::Tx;

/// How many idle read connections to keep; more are opened under load and dropped.
const IDLE_READERS: usize = 8;

/// Space set aside next to the metadata so that, on a full disk, the transactions
/// that free space (Remove) can still append to the write-ahead log.
const RESERVE_BYTES: u64 = 4 << 20;

#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The backend that owns this root; a root is never shared between backends.
    pub backend: String,
}

pub struct Store {
    path: PathBuf,
    uuid: String,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    reserve: PathBuf,
    reserve_missing: AtomicBool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating if absent) the metadata file, verifies it is intact and
    /// belongs to `options.backend`.
    pub fn open(path: &Path, options: &StoreOptions) -> Result<Store> {
        let existed = path.exists();
        let writer = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| classify(path, e))?;
        configure_writer(&writer).map_err(|e| classify(path, e))?;
        if existed {
            check_integrity(&writer, path)?;
        }
        migrate(&writer, path)?;
        bind_backend(&writer, path, &options.backend)?;
        let uuid = identity(&writer, path)?;
        info!(path = %path.display(), existed, %uuid, "metadata store open");
        let store = Store {
            path: path.to_owned(),
            uuid,
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
            reserve: reserve_path(path),
            reserve_missing: AtomicBool::new(true),
        };
        store.restore_reserve();
        Ok(store)
    }

    /// Gives the space reserve back to the filesystem, for a retry of a transaction
    /// that frees space. False if there was no reserve to give.
    pub fn release_reserve(&self) -> bool {
        match std::fs::remove_file(&self.reserve) {
            Ok(()) => {
                self.reserve_missing.store(true, Ordering::SeqCst);
                tracing::warn!(path = %self.reserve.display(), "disk full: released the metadata space reserve");
                true
            }
            Err(_) => false,
        }
    }

    /// Sets the space reserve aside again once there is room; cheap when it exists.
    pub fn restore_reserve(&self) {
        if !self.reserve_missing.load(Ordering::SeqCst) {
            return;
        }
        match allocate(&self.reserve, RESERVE_BYTES) {
            Ok(()) => self.reserve_missing.store(false, Ordering::SeqCst),
            Err(err) => {
                let _ = std::fs::remove_file(&self.reserve);
                debug!(%err, "metadata space reserve not set aside yet");
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// This root's identity: a random UUID made when the metadata was, kept with
    /// it, so it names the same snapshots across restarts and moves of the root.
    pub fn uuid(&self) -> &str {
        &self.uuid
    }

    /// Runs `f` in one immediate write transaction and commits it durably if `f`
    /// returns Ok; any error rolls everything back. The store's single writer lock is
    /// held throughout, so `f` may also do work that must not interleave with other
    /// writers (publishing storage under a freshly allocated id).
    pub fn write<T, E>(&self, f: impl FnOnce(&Tx<'_>) -> Result<T, E>) -> Result<T, E>
    where
        E: From<Error>,
    {
        let mut conn = lock(&self.writer);
        let txn = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| E::from(classify(&self.path, e)))?;
        let value = f(&Tx::new(&txn))?;
        txn.commit().map_err(|e| E::from(classify(&self.path, e)))?;
        Ok(value)
    }

    /// Runs `f` on a consistent snapshot of the metadata, concurrently with writers.
    pub fn read<T, E>(&self, f: impl FnOnce(&Tx<'_>) -> Result<T, E>) -> Result<T, E>
    where
        E: From<Error>,
    {
        let mut conn = match lock(&self.readers).pop() {
            Some(conn) => conn,
            None => self.open_reader().map_err(E::from)?,
        };
        let result = (|| {
            let txn = conn
                .transaction_with_behavior(TransactionBehavior::Deferred)
                .map_err(|e| E::from(Error::from(e)))?;
            let value = f(&Tx::new(&txn))?;
            // Reads change nothing; ending the transaction releases the WAL snapshot.
            txn.finish().map_err(|e| E::from(Error::from(e)))?;
            Ok(value)
        })();
        let mut idle = lock(&self.readers);
        if idle.len() < IDLE_READERS {
            idle.push(conn);
        }
        result
    }

    fn open_reader(&self) -> Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(30))?;
        conn.pragma_update(None, "query_only", true)?;
        debug!("opened metadata reader");
        Ok(conn)
    }

    /// Folds the write-ahead log into the main file; called at clean shutdown so the
    /// file is self-contained for backups.
    pub fn checkpoint(&self) -> Result<()> {
        let conn = lock(&self.writer);
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }
}

fn reserve_path(db: &Path) -> PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push(".reserve");
    db.with_file_name(name)
}

/// Real blocks, not a sparse file: a sparse reserve frees nothing when deleted.
fn allocate(path: &Path, len: u64) -> std::io::Result<()> {
    let file: File = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(path)?;
    rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, len)?;
    file.sync_all()
}

fn configure_writer(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(30))?;
    // WAL lets readers proceed during writes; FULL makes every commit fsync the log,
    // which is what "durable before the reply" requires.
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "journal_mode stayed {mode}: the filesystem refuses WAL"
        )));
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

fn check_integrity(conn: &Connection, path: &Path) -> Result<()> {
    let verdict: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(|e| corrupt_or(path, e))?;
    if verdict != "ok" {
        return Err(Error::Corrupt {
            path: path.to_owned(),
            detail: verdict,
        });
    }
    Ok(())
}

fn migrate(conn: &Connection, path: &Path) -> Result<()> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| corrupt_or(path, e))?;
    if version > schema::VERSION {
        return Err(Error::TooNew {
            path: path.to_owned(),
            found: version,
            supported: schema::VERSION,
        });
    }
    if version < schema::VERSION {
        let has_storage_column: bool = conn
            .query_row(
                "SELECT COUNT(*) FROM pragma_table_info('snapshots') WHERE name = 'storage'",
                [],
                |r| r.get(0),
            )
            .map_err(|e| corrupt_or(path, e))?;
        let upgrade = if has_storage_column {
            schema::UPGRADE_FROM_2
        } else {
            ""
        };
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {} {upgrade} PRAGMA user_version = {}; COMMIT;",
            schema::CREATE,
            schema::VERSION
        ))
        .map_err(|e| classify(path, e))?;
        if version > 0 {
            info!(path = %path.display(), from = version, to = schema::VERSION, "metadata schema upgraded");
        }
    }
    Ok(())
}

fn bind_backend(conn: &Connection, path: &Path, backend: &str) -> Result<()> {
    let found: Option<String> = conn
        .query_row(
            "SELECT value FROM settings WHERE name = 'backend'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    match found {
        Some(found) if found != backend => Err(Error::WrongBackend {
            path: path.to_owned(),
            found,
            expected: backend.to_owned(),
        }),
        Some(_) => Ok(()),
        None => {
            conn.execute(
                "INSERT INTO settings (name, value) VALUES ('backend', ?1)",
                [backend],
            )
            .map_err(|e| classify(path, e))?;
            Ok(())
        }
    }
}

fn identity(conn: &Connection, path: &Path) -> Result<String> {
    let found: Option<String> = conn
        .query_row("SELECT value FROM settings WHERE name = 'uuid'", [], |r| {
            r.get(0)
        })
        .optional()?;
    if let Some(uuid) = found {
        return Ok(uuid);
    }
    let uuid = random_uuid().map_err(|source| Error::Identity {
        path: path.to_owned(),
        source,
    })?;
    conn.execute(
        "INSERT INTO settings (name, value) VALUES ('uuid', ?1)",
        [&uuid],
    )
    .map_err(|e| classify(path, e))?;
    Ok(uuid)
}

/// A version 4 (random) UUID in its usual spelling, from the kernel's generator.
fn random_uuid() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    ))
}

fn corrupt_or(path: &Path, err: rusqlite::Error) -> Error {
    use rusqlite::ffi::ErrorCode;
    match &err {
        rusqlite::Error::SqliteFailure(e, _)
            if matches!(e.code, ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) =>
        {
            Error::Corrupt {
                path: path.to_owned(),
                detail: err.to_string(),
            }
        }
        _ => classify(path, err),
    }
}

/// Gives the failures an operator can act on (disk full, read-only, corrupt) their
/// own variants so they surface with the right gRPC code and a clear message.
pub(crate) fn classify(path: &Path, err: rusqlite::Error) -> Error {
    use rusqlite::ffi::ErrorCode;
    let code = match &err {
        rusqlite::Error::SqliteFailure(e, _) => Some(e.code),
        _ => None,
    };
    match code {
        Some(ErrorCode::DiskFull) => Error::Full {
            path: path.to_owned(),
            source: err,
        },
        Some(ErrorCode::ReadOnly) => Error::ReadOnly {
            path: path.to_owned(),
            source: err,
        },
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => Error::Corrupt {
            path: path.to_owned(),
            detail: err.to_string(),
        },
        _ => Error::Sqlite(err),
    }
}
