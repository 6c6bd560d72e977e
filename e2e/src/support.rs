//! Small tools the e2e tests share: a deterministic random source, environment
//! knobs, and the storage-agrees-with-metadata check every crash and fault test ends
//! with.

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use rustlayer_api::snapshots as pb;
use tonic::Code;

use crate::Client;

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

pub fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
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
