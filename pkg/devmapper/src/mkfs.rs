//! Making the base device's filesystem, once per pool. mkfs is the one program the
//! backend runs: writing a filesystem is not something to reimplement.

use std::path::Path;
use std::process::Command;

use tracing::info;

use crate::config::FsType;
use crate::error::{Error, Result};

pub fn make_filesystem(fs: FsType, device: &Path, extra: &[String]) -> Result<()> {
    let attempts: Vec<Vec<String>> = match fs {
        // Thin devices read unwritten blocks as zeros, so ext4 need not zero its
        // inode tables; lazily zeroing them would instead write them again in
        // every snapshot. Older mke2fs lacks the option: zero them eagerly, once.
        FsType::Ext4 => vec![
            args(&["-q", "-F", "-E", "nodiscard,assume_storage_prezeroed=1"]),
            args(&[
                "-q",
                "-F",
                "-E",
                "nodiscard,lazy_itable_init=0,lazy_journal_init=0",
            ]),
        ],
        FsType::Xfs => vec![args(&["-q", "-f", "-K"])],
    };
    let program = format!("mkfs.{fs}");
    let mut last = String::new();
    for base in attempts {
        let output = Command::new(&program)
            .args(&base)
            .args(extra)
            .arg(device)
            .output()
            .map_err(|err| Error::Mkfs {
                command: program.clone(),
                detail: format!("cannot run it ({err}); install {}", fs.tools_package()),
            })?;
        if output.status.success() {
            info!(fs = %fs, device = %device.display(), "base filesystem made");
            return Ok(());
        }
        last = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    }
    Err(Error::Mkfs {
        command: format!("{program} {}", device.display()),
        detail: last,
    })
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}
