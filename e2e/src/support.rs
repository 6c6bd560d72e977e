//! Small tools the e2e tests share: a deterministic random source, environment
//! knobs, and the storage-agrees-with-metadata check every crash and fault test ends
//! with.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rustlayer_api::snapshots as pb;
use tonic::Code;

use crate::{Client, Mounted};

/// Commits a chain of `layers` layers as containerd's unpack names them
/// (`default/N/sha256:…`, each extracted from `default/N/extract-N …`), with a
/// file `layer-N` holding N in the first and the last; returns the top's name.
/// The real mounts of the long chains the overlay tests need.
pub async fn commit_chain(c: &Client, layers: usize) -> String {
    let mut parent = String::new();
    for i in 0..layers {
        let key = format!("default/{i}/extract-{i} sha256:{i:064x}");
        let mounts = c.prepare(&key, &parent).await.unwrap();
        if i == 0 || i + 1 == layers {
            let m = Mounted::new(&mounts);
            fs::write(m.path().join(format!("layer-{i}")), i.to_string()).unwrap();
        }
        let name = format!("default/{i}/sha256:{i:064x}");
        c.commit(&name, &key).await.unwrap();
        parent = name;
    }
    parent
}

/// xorshift64*: deterministic and dependency-free, so a failing seed replays.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// A numeric knob from the environment, e.g. to run a torture test longer.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn code_of<T>(r: &Result<T, tonic::Status>) -> Code {
    r.as_ref().map_or_else(|s| s.code(), |_| Code::Ok)
}

pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn count_entries(dir: &Path) -> usize {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .count()
}

/// Waits (bounded) for the background reaper to delete detached storage.
pub async fn trash_drains(root: &Path) {
    let trash = root.join("trash");
    let started = Instant::now();
    loop {
        let left = count_entries(&trash);
        if left == 0 {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "trash/ still holds {left} entries after 20 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn sorted_infos(c: &Client) -> Vec<pb::Info> {
    let mut all = c.list(&[]).await.expect("list");
    all.sort_by(|a, b| a.name.cmp(&b.name));
    all
}

/// After Cleanup, the overlay root holds exactly what the metadata knows: one
/// numbered directory per snapshot, a link per committed layer (and at most one
/// per snapshot: a crash between linking and committing leaves one on an active
/// snapshot), no staging debris, every parent present and committed, and the
/// trash drains.
pub async fn storage_matches_metadata(c: &Client, root: &Path, when: &str) {
    c.cleanup()
        .await
        .unwrap_or_else(|s| panic!("{when}: Cleanup: {s:?}"));
    let all = sorted_infos(c).await;
    let dirs: Vec<String> = fs::read_dir(root.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        dirs.len(),
        all.len(),
        "{when}: snapshots/ holds {dirs:?} for {} snapshots",
        all.len()
    );
    assert!(
        dirs.iter().all(|d| d.bytes().all(|b| b.is_ascii_digit())),
        "{when}: {dirs:?}"
    );
    assert_eq!(
        count_entries(&root.join("staging")),
        0,
        "{when}: staging/ debris"
    );
    let committed = all
        .iter()
        .filter(|i| i.kind == pb::Kind::Committed as i32)
        .count();
    let links = count_entries(&root.join("l"));
    assert!(
        links >= committed && links <= all.len(),
        "{when}: {links} links for {committed} committed of {} snapshots",
        all.len()
    );
    for info in all.iter().filter(|i| !i.parent.is_empty()) {
        assert!(
            all.iter()
                .any(|p| p.name == info.parent && p.kind == pb::Kind::Committed as i32),
            "{when}: {} lost its parent",
            info.name
        );
    }
    trash_drains(root).await;
}

/// After Cleanup, a self-managed thin pool holds exactly the base device (thin id 0)
/// and one thin device per snapshot the metadata knows, under the snapshot's id;
/// every active snapshot and view is activated, and no device of this root is
/// active that the metadata does not know. The ids come from the metadata file
/// itself (read-only), the pool's devices from its on-disk metadata (a metadata
/// snapshot read with `thin_ls`), so neither side is taken from the daemon's word.
pub async fn thin_pool_matches_metadata(c: &Client, root: &Path, when: &str) {
    c.cleanup()
        .await
        .unwrap_or_else(|s| panic!("{when}: Cleanup: {s:?}"));
    let rows = metadata_rows(root);
    let listed: BTreeMap<String, i32> = c
        .list(&[])
        .await
        .expect("list")
        .into_iter()
        .map(|i| (i.name, i.kind))
        .collect();
    let stored: BTreeMap<String, i32> = rows.values().cloned().collect();
    assert_eq!(
        listed, stored,
        "{when}: List disagrees with the metadata file"
    );

    let root = fs::canonicalize(root).expect("canonical root");
    let prefix = rustlayer_devmapper::device_prefix(&root);
    let pool = format!("{prefix}-pool");
    let mut expected: Vec<u64> = rows.keys().copied().chain([0]).collect();
    expected.sort_unstable();
    let in_pool = thin_ids_in_pool(&pool);
    assert_eq!(
        in_pool, expected,
        "{when}: the pool's thin devices (left) are not the base plus one per snapshot (right)"
    );

    // A device's size record (max-size) lives exactly as long as its device.
    let recorded: Vec<u64> = fs::read_dir(root.join("devmapper").join("sizes"))
        .expect("the size records")
        .filter_map(|e| e.expect("a size record").file_name().to_str()?.parse().ok())
        .collect();
    for id in recorded {
        assert!(
            rows.contains_key(&id),
            "{when}: a size record for thin device {id}, which no snapshot owns"
        );
    }

    let active: BTreeSet<u64> = dm_names()
        .iter()
        .filter_map(|name| name.strip_prefix(&format!("{prefix}-")))
        .filter_map(|id| id.parse().ok())
        .collect();
    for id in &active {
        assert!(
            rows.contains_key(id),
            "{when}: device {prefix}-{id} is active but the metadata has no snapshot {id}"
        );
    }
    for (id, (key, kind)) in &rows {
        if *kind != pb::Kind::Committed as i32 {
            assert!(
                active.contains(id),
                "{when}: {key} (id {id}) is not activated"
            );
        }
    }
}

/// Snapshot id → (key, kind) straight from the metadata file, read-only (the
/// daemon keeps it open; SQLite's WAL lets a reader in beside it).
fn metadata_rows(root: &Path) -> BTreeMap<u64, (String, i32)> {
    let db = rusqlite::Connection::open_with_flags(
        root.join("metadata.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open the metadata read-only");
    let mut query = db
        .prepare("SELECT id, key, kind FROM snapshots")
        .expect("query the metadata");
    query
        .query_map([], |row| {
            let kind: String = row.get(2)?;
            let kind = match kind.as_str() {
                "active" => pb::Kind::Active,
                "view" => pb::Kind::View,
                _ => pb::Kind::Committed,
            };
            Ok((row.get::<_, i64>(0)? as u64, (row.get(1)?, kind as i32)))
        })
        .expect("read the metadata")
        .map(|row| row.expect("a metadata row"))
        .collect()
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .env("DM_DISABLE_UDEV", "1")
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn dm_names() -> Vec<String> {
    let out = run("dmsetup", &["ls"]);
    if out.trim() == "No devices found" {
        return Vec::new();
    }
    out.lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// The thin ids a pool holds, read from a metadata snapshot of the live pool.
fn thin_ids_in_pool(pool: &str) -> Vec<u64> {
    // "0 <len> thin-pool <metadata major:minor> <data major:minor> ..."
    let table = run("dmsetup", &["table", pool]);
    let metadata = table
        .split_whitespace()
        .nth(3)
        .unwrap_or_else(|| panic!("thin-pool table of {pool}: {table}"));
    let uevent = fs::read_to_string(format!("/sys/dev/block/{metadata}/uevent"))
        .unwrap_or_else(|e| panic!("metadata device {metadata}: {e}"));
    let devname = uevent
        .lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))
        .unwrap_or_else(|| panic!("no DEVNAME for {metadata}: {uevent}"));
    let device = format!("/dev/{devname}");
    run("dmsetup", &["message", pool, "0", "reserve_metadata_snap"]);
    let listed = Command::new("thin_ls")
        .args(["--no-headers", "-o", "DEV", "-m", &device])
        .output();
    run("dmsetup", &["message", pool, "0", "release_metadata_snap"]);
    let listed = listed.unwrap_or_else(|e| panic!("thin_ls: {e}"));
    assert!(
        listed.status.success(),
        "thin_ls {device}: {}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let mut ids: Vec<u64> = String::from_utf8_lossy(&listed.stdout)
        .split_whitespace()
        .map(|id| id.parse().expect("a thin id"))
        .collect();
    ids.sort_unstable();
    ids
}

/// Fails the test unless it runs as root on a kernel with device-mapper, with the
/// daemon's binary built.
#[track_caller]
pub fn require_device_mapper() {
    crate::require_root();
    rustlayer_devmapper::testing::require_device_mapper("the daemon makes a dm-thin pool");
}

/// A loopback port nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET `path` from 127.0.0.1:`port`: the status and the body.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to metrics");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of `series` (name and labels, exactly) in Prometheus text.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
