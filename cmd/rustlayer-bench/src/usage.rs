//! Row 4: Usage of a committed layer holding many small files. containerd asks for
//! it whenever it accounts disk space; a snapshotter that walks the layer each time
//! pays per file, one that measured at Commit answers in constant time.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::mount::Mounted;
use crate::results::Sink;
use crate::stats::Samples;
use crate::target::{Target, unique_prefix};

pub const ROW: &str = "4 Usage, many files";

pub struct Layer {
    pub name: String,
}

/// Prepares a layer, writes `files` small files into it through its mount, and
/// commits it. Records how long a Usage of the active layer (a walk) and the
/// Commit took.
pub async fn setup(
    target: &mut Target,
    files: usize,
    workdir: &Path,
    sink: &Sink<'_>,
) -> Result<Layer> {
    let prefix = unique_prefix("usage", &target.label);
    let active = format!("{prefix}-active");
    let name = format!("{prefix}-layer");
    let label = target.label.clone();
    let mounts = target.prepare(&active, "").await?;
    let mountpoint = workdir.join(format!("usage-{label}"));
    let mounted = Mounted::new(&mounts, &mountpoint)?;
    // Not timed: it is the filesystem's work, the same for every snapshotter here.
    write_files(mounted.path(), files)?;
    mounted.unmount()?;

    let started = Instant::now();
    let (_, inodes) = target.usage(&active).await?;
    sink.value(
        ROW,
        "Usage of the active layer (walks it)",
        &label,
        "ms",
        started.elapsed().as_secs_f64() * 1e3,
        0,
        false,
    )?;
    anyhow::ensure!(
        inodes as usize >= files,
        "{label}: Usage of the active layer counts {inodes} inodes, fewer than the {files} files written"
    );

    let started = Instant::now();
    target.commit(&name, &active).await?;
    sink.value(
        ROW,
        &format!("Commit of the {files}-file layer"),
        &label,
        "ms",
        started.elapsed().as_secs_f64() * 1e3,
        0,
        false,
    )?;
    Ok(Layer { name })
}

/// `calls` Usage calls on the committed layer.
pub async fn time_usage(target: &mut Target, layer: &Layer, calls: usize) -> Result<Samples> {
    let mut samples = Samples::default();
    target.usage(&layer.name).await?;
    for _ in 0..calls {
        let started = Instant::now();
        target.usage(&layer.name).await?;
        samples.push(started.elapsed());
    }
    Ok(samples)
}

pub fn record(sink: &Sink<'_>, label: &str, samples: &Samples, round: u32) -> Result<()> {
    let main = label != crate::target::DIRECT;
    sink.value(
        ROW,
        "Usage of the committed layer p50",
        label,
        "µs",
        samples.percentile_ms(50.0) * 1e3,
        round,
        main,
    )?;
    sink.value(
        ROW,
        "Usage of the committed layer p99",
        label,
        "µs",
        samples.percentile_ms(99.0) * 1e3,
        round,
        false,
    )
}

/// Small files, a thousand to a directory, as a package manager leaves them.
pub fn write_files(root: &Path, files: usize) -> Result<()> {
    let body = b"rustlayer-bench: a small file, like most files in an image layer\n";
    for n in 0..files {
        let dir = root.join(format!("d{:04}", n / 1000));
        if n % 1000 == 0 {
            std::fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
        }
        let path = dir.join(format!("f{n:06}"));
        std::fs::write(&path, body).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}
