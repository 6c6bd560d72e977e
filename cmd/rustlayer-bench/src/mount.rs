//! Mounting what a snapshotter hands back, the way containerd would (rustlayer's
//! mount package does what containerd's does, including rewriting a long overlay
//! `lowerdir=` relative to its common directory), so every snapshotter's mounts
//! are treated alike.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rustlayer_core::Mount;
use rustlayer_mount::{LinuxMounter, Mounter, mount_all};

pub struct Mounted {
    target: PathBuf,
    layers: usize,
}

impl Mounted {
    pub fn new(mounts: &[Mount], target: &Path) -> Result<Mounted> {
        std::fs::create_dir_all(target).with_context(|| format!("create {}", target.display()))?;
        mount_all(&LinuxMounter, mounts, target)
            .with_context(|| format!("mount {} at {}", describe(mounts), target.display()))?;
        Ok(Mounted {
            target: target.to_owned(),
            layers: mounts.len(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.target
    }

    pub fn unmount(mut self) -> Result<()> {
        self.release()
    }

    fn release(&mut self) -> Result<()> {
        while self.layers > 0 {
            LinuxMounter
                .unmount(&self.target, false)
                .with_context(|| format!("unmount {}", self.target.display()))?;
            self.layers -= 1;
        }
        Ok(())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        while self.layers > 0 {
            let _ = LinuxMounter.unmount(&self.target, true);
            self.layers -= 1;
        }
    }
}

fn describe(mounts: &[Mount]) -> String {
    mounts
        .iter()
        .map(|m| {
            let len: usize = m.options.iter().map(|o| o.len() + 1).sum();
            format!("{} ({} bytes of options)", m.fs_type, len)
        })
        .collect::<Vec<_>>()
        .join(" + ")
}
