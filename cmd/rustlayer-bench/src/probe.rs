//! Row 0: what a durable write costs on the disk under the roots, which bounds
//! every snapshotter that syncs before it replies.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::results::Sink;
use crate::stats::Samples;

pub const ROW: &str = "0 disk";

pub fn run(dir: &Path, count: usize, sink: &Sink<'_>) -> Result<()> {
    let scratch =
        tempfile::tempdir_in(dir).with_context(|| format!("temp dir in {}", dir.display()))?;
    let path = scratch.path().join("probe");
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("create {}", path.display()))?;
    let block = vec![0x5a_u8; 4096];
    let mut data = Samples::default();
    for _ in 0..count {
        let started = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        data.push(started.elapsed());
    }
    // Rewriting a block in place, as SQLite rewrites its write-ahead log once a
    // checkpoint has reset it: fsync also commits the inode's new mtime to the
    // journal, fdatasync need not.
    let mut overwrite_fsync = Samples::default();
    let mut overwrite_fdatasync = Samples::default();
    for n in 0..count * 2 {
        let started = Instant::now();
        file.write_all_at(&block, 0)?;
        if n % 2 == 0 {
            file.sync_all()?;
            overwrite_fsync.push(started.elapsed());
        } else {
            file.sync_data()?;
            overwrite_fdatasync.push(started.elapsed());
        }
    }
    let mut dirs = Samples::default();
    for n in 0..count {
        let started = Instant::now();
        std::fs::create_dir(scratch.path().join(format!("d{n}")))?;
        File::open(scratch.path())?.sync_all()?;
        dirs.push(started.elapsed());
    }
    let target = "host";
    sink.value(
        ROW,
        "4 KiB append + fdatasync p50",
        target,
        "ms",
        data.percentile_ms(50.0),
        0,
        false,
    )?;
    sink.value(
        ROW,
        "4 KiB overwrite + fsync p50",
        target,
        "ms",
        overwrite_fsync.percentile_ms(50.0),
        0,
        false,
    )?;
    sink.value(
        ROW,
        "4 KiB overwrite + fdatasync p50",
        target,
        "ms",
        overwrite_fdatasync.percentile_ms(50.0),
        0,
        false,
    )?;
    sink.value(
        ROW,
        "mkdir + directory fsync p50",
        target,
        "ms",
        dirs.percentile_ms(50.0),
        0,
        false,
    )?;
    Ok(())
}
