use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rustlayer_core::Mount;

use crate::{Mounter, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountCall {
    Mount { mount: Mount, target: PathBuf },
    Unmount { target: PathBuf, lazy: bool },
}

/// A [`Mounter`] that only remembers what it was asked, for tests without root.
#[derive(Debug, Default)]
pub struct RecordingMounter {
    calls: Mutex<Vec<MountCall>>,
}

impl RecordingMounter {
    pub fn calls(&self) -> Vec<MountCall> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    fn record(&self, call: MountCall) {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(call);
        }
    }
}

impl Mounter for RecordingMounter {
    fn mount(&self, mount: &Mount, target: &Path) -> Result<()> {
        self.record(MountCall::Mount {
            mount: mount.clone(),
            target: target.to_owned(),
        });
        Ok(())
    }

    fn unmount(&self, target: &Path, lazy: bool) -> Result<()> {
        self.record(MountCall::Unmount {
            target: target.to_owned(),
            lazy,
        });
        Ok(())
    }
}
