//! `rustlayer check`: can this node run rustlayer, and is it running well? The same
//! preflight the daemon runs at start, plus what an operator looks at next.

use std::path::{Path, PathBuf};

use anyhow::Result;
use rustlayer_core::{Check, saturating_i64};
use rustlayer_mount::{LinuxMounter, LinuxProjectQuota, fs_stats};
use serde::Serialize;

use crate::config::{BackendKind, Config};
use crate::output::{Output, Table, human_bytes};
use crate::serve::root_problem;

/// Below this share of free space or inodes the node is about to fail pulls.
const LOW_FREE_RATIO: f64 = 0.05;

#[derive(Debug, Serialize)]
pub struct CheckResult {
    pub check: String,
    pub ok: bool,
    pub detail: String,
}

impl From<Check> for CheckResult {
    fn from(c: Check) -> Self {
        CheckResult {
            check: c.name.to_owned(),
            ok: c.ok,
            detail: c.detail,
        }
    }
}

fn result(check: &'static str, outcome: Result<String, String>) -> CheckResult {
    Check::new(check, outcome).into()
}

/// The root if it exists, else its nearest existing ancestor: the filesystem the
/// root will be created on is the one to check before the first start.
fn existing_base(root: &Path) -> PathBuf {
    root.ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"))
        .to_owned()
}

pub async fn check(config: &Config, output: Output) -> Result<bool> {
    let mut results = Vec::new();
    let uname = rustix::system::uname();
    results.push(result(
        "kernel",
        Ok(format!(
            "{} {}",
            uname.sysname().to_string_lossy(),
            uname.release().to_string_lossy()
        )),
    ));
    results.push(result(
        "root",
        match root_problem(&config.root) {
            Some(problem) => Err(problem),
            None if config.root.exists() => {
                Ok(format!("{} is a private directory", config.root.display()))
            }
            None => Ok(format!(
                "{} will be created at first start",
                config.root.display()
            )),
        },
    ));
    let base = existing_base(&config.root);
    match config.backend {
        BackendKind::Overlay => {
            let checks = rustlayer_overlay::preflight(&base, &LinuxMounter, config.remap_ids);
            results.extend(checks.into_iter().map(CheckResult::from));
            results.push(CheckResult::from(rustlayer_overlay::project_quota_check(
                &base,
                &LinuxProjectQuota,
                &config.overlay.size_limits(),
            )));
        }
        BackendKind::Devmapper => {
            let checks = rustlayer_devmapper::preflight(&config.root, &config.devmapper);
            results.extend(checks.into_iter().map(CheckResult::from));
        }
    }
    results.push(result("root filesystem", filesystem(&base)));
    results.push(result("daemon", daemon(&config.address).await));

    let ok = results.iter().all(|r| r.ok);
    match output {
        Output::Json => crate::output::print_json(&results)?,
        Output::Table => {
            let mut t = Table::new(&["CHECK", "RESULT", "DETAIL"]);
            for r in &results {
                t.row(vec![
                    r.check.clone(),
                    if r.ok { "ok" } else { "FAIL" }.into(),
                    r.detail.clone(),
                ]);
            }
            t.print();
        }
    }
    Ok(ok)
}

fn filesystem(path: &Path) -> Result<String, String> {
    let st = fs_stats(path).map_err(|e| e.to_string())?;
    if st.read_only {
        return Err(format!("{} is on a read-only filesystem", path.display()));
    }
    let space = ratio(st.bytes_available, st.bytes_total);
    let inodes = ratio(st.inodes_free, st.inodes_total);
    let detail = format!(
        "{} of {} available ({:.0}%), {} of {} inodes free ({:.0}%)",
        human_bytes(saturating_i64(st.bytes_available)),
        human_bytes(saturating_i64(st.bytes_total)),
        space * 100.0,
        st.inodes_free,
        st.inodes_total,
        inodes * 100.0
    );
    // Filesystems without a fixed inode table (btrfs) report zero inodes.
    if space < LOW_FREE_RATIO || (st.inodes_total > 0 && inodes < LOW_FREE_RATIO) {
        Err(format!("nearly full: {detail}"))
    } else {
        Ok(detail)
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        1.0
    } else {
        part as f64 / whole as f64
    }
}

async fn daemon(address: &Path) -> Result<String, String> {
    let mut client = rustlayer_server::connect(address)
        .await
        .map_err(|e| format!("not serving: {e}"))?;
    let mut stream = client
        .list(rustlayer_api::snapshots::ListSnapshotsRequest::default())
        .await
        .map_err(|e| format!("List failed: {e}"))?
        .into_inner();
    let mut count = 0usize;
    while let Some(batch) = tokio_stream::StreamExt::next(&mut stream).await {
        count += batch.map_err(|e| format!("List failed: {e}"))?.info.len();
    }
    Ok(format!(
        "serving at {} with {count} snapshots",
        address.display()
    ))
}
