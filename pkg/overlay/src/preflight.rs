//! Checks run before serving: a snapshotter that starts on a root where overlay
//! cannot work fails every container later, far from the cause.

use std::fs;
use std::path::Path;

use rustlayer_core::{Check, Mount};
use rustlayer_mount::{Mounter, supports_d_type};

use crate::error::{Error, Result, io_err};

#[derive(Debug, Clone, Default)]
pub struct PreflightReport {
    pub checks: Vec<Check>,
}

impl PreflightReport {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }

    /// Turns the first failed check into an error naming it.
    pub fn ensure(&self) -> Result<()> {
        match self.checks.iter().find(|c| !c.ok) {
            Some(c) => Err(Error::Preflight(format!("{}: {}", c.name, c.detail))),
            None => Ok(()),
        }
    }

    fn record(&mut self, name: &'static str, outcome: Result<String>) {
        self.checks.push(Check::new(name, outcome));
    }
}

/// Checks that `root` can hold overlay layers: the filesystem records d_type, and a
/// real two-layer overlay mounts there and shows the lower layers' files.
pub fn preflight(root: &Path, mounter: &dyn Mounter) -> PreflightReport {
    let mut report = PreflightReport::default();
    report.record("d_type", check_d_type(root));
    report.record("overlay mount", check_overlay_mount(root, mounter));
    report
}

fn check_d_type(root: &Path) -> Result<String> {
    if supports_d_type(root)? {
        Ok(format!(
            "{} records file types in directories",
            root.display()
        ))
    } else {
        Err(Error::Preflight(format!(
            "the filesystem of {} does not record file types in directories (d_type); \
             overlayfs needs it (xfs must be formatted with ftype=1)",
            root.display()
        )))
    }
}

fn check_overlay_mount(root: &Path, mounter: &dyn Mounter) -> Result<String> {
    let dir = root.join(format!(".preflight-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let result = try_overlay(&dir, mounter);
    let _ = fs::remove_dir_all(&dir);
    result
}

fn try_overlay(dir: &Path, mounter: &dyn Mounter) -> Result<String> {
    for sub in ["lower1", "lower2", "upper", "work", "merged"] {
        fs::create_dir_all(dir.join(sub)).map_err(io_err("create", dir.join(sub)))?;
    }
    fs::write(dir.join("lower1/probe"), b"lower").map_err(io_err("write", dir.join("lower1")))?;
    let mount = Mount {
        fs_type: "overlay".into(),
        source: "overlay".into(),
        options: vec![
            format!(
                "lowerdir={}:{}",
                dir.join("lower2").display(),
                dir.join("lower1").display()
            ),
            format!("upperdir={}", dir.join("upper").display()),
            format!("workdir={}", dir.join("work").display()),
        ],
    };
    let merged = dir.join("merged");
    mounter.mount(&mount, &merged).map_err(|err| {
        Error::Preflight(format!(
            "cannot mount overlayfs with several lower layers ({err}); \
             rustlayer needs root and a kernel with overlayfs"
        ))
    })?;
    let seen = fs::read(merged.join("probe"));
    mounter.unmount(&merged, true)?;
    match seen {
        Ok(content) if content == b"lower" => {
            Ok("overlayfs with several lower layers works".into())
        }
        other => Err(Error::Preflight(format!(
            "overlayfs mounted but does not show lower layers correctly: {other:?}"
        ))),
    }
}
