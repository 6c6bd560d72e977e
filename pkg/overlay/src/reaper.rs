//! The overlay backend's deferred deletion: Remove renames storage into `trash/`
//! and hands the reaper (core's [`Reaper`]) a pass over it; the pass deletes
//! whatever is there. Anything left in `trash/` by a crash is picked up by the pass
//! made at start.

use std::fs;
use std::path::{Path, PathBuf};

use rustlayer_core::reaper::{Cancel, Reaper};
use tracing::{debug, warn};

/// The reaper of the trash directory `trash`, with a first pass handed over.
pub(crate) fn start(trash: PathBuf) -> std::io::Result<Reaper<()>> {
    let reaper = Reaper::start("rustlayer-reaper", move |(), cancel: &Cancel<'_>| {
        empty(&trash, cancel);
    })?;
    // Newly started: it cannot have finished.
    let _ = reaper.hand_over(());
    Ok(reaper)
}

fn empty(trash: &Path, cancel: &Cancel<'_>) {
    let entries = match fs::read_dir(trash) {
        Ok(entries) => entries,
        Err(err) => {
            warn!(path = %trash.display(), %err, "cannot list trash");
            return;
        }
    };
    for entry in entries.flatten() {
        if cancel.requested() {
            return;
        }
        let path = entry.path();
        let result = match entry.file_type() {
            Ok(t) if t.is_dir() => fs::remove_dir_all(&path),
            _ => fs::remove_file(&path),
        };
        match result {
            Ok(()) => debug!(path = %path.display(), "reaped"),
            Err(err) => warn!(path = %path.display(), %err, "cannot delete detached storage"),
        }
    }
}
