//! Row 8: what accounting active layers costs on a root with project quotas, where
//! rustlayer reads a layer's usage from its project's quota counters and a walking
//! snapshotter stats every file. Run in a VM (`hack/bench/quota-guest.sh`): this
//! machine's kernel may have no project quotas.
//!
//! Two measures, through containerd:
//! - Usage of one active layer holding many small files;
//! - one stats pass as containerd's CRI makes it every 10 s for every snapshotter it
//!   serves (the snapshots syncer of containerd 2.x's CRI image service): Walk the
//!   snapshotter, then Usage of each active snapshot. It runs here over many
//!   active container layers, and the figure is the CPU the pass costs the node's
//!   daemons: containerd, plus the snapshotter's own process where it has one. The
//!   client issuing the pass stands in for CRI's syncer, which runs inside
//!   containerd; its own CPU is the same whichever snapshotter it asks, and is left out.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::mount::Mounted;
use crate::results::Sink;
use crate::target::{Target, unique_prefix};
use crate::usage::write_files;

pub const ROW: &str = "8 Usage on a project-quota root (VM)";

/// Active layers of one target, each written through its mount.
pub struct ActiveLayers {
    keys: Vec<String>,
}

impl ActiveLayers {
    /// `count` active layers of `files_each` small files each.
    pub async fn make(
        target: &mut Target,
        what: &str,
        count: usize,
        files_each: usize,
        workdir: &Path,
    ) -> Result<ActiveLayers> {
        let prefix = unique_prefix(what, &target.label);
        let mut layers = ActiveLayers { keys: Vec::new() };
        for n in 0..count {
            let key = format!("{prefix}-{n}");
            let mounts = target.prepare(&key, "").await?;
            layers.keys.push(key);
            let mountpoint = workdir.join(format!("{what}-{}", target.label));
            let mounted = Mounted::new(&mounts, &mountpoint)?;
            // Not timed: the filesystem's work, the same for every snapshotter.
            write_files(mounted.path(), files_each)?;
            mounted.unmount()?;
        }
        Ok(layers)
    }

    pub async fn remove(self, target: &mut Target) -> Result<()> {
        for key in &self.keys {
            target.remove(key).await?;
        }
        Ok(())
    }
}

/// Usage of the one layer of `layer`, `calls` times after one untimed call; records
/// the median in milliseconds. Fails if the layer's inode count misses files.
pub async fn time_layer_usage(
    target: &mut Target,
    layer: &ActiveLayers,
    files: usize,
    calls: usize,
    sink: &Sink<'_>,
    round: u32,
) -> Result<()> {
    let key = layer.keys.first().context("no layer made")?;
    let (_, inodes) = target.usage(key).await?;
    anyhow::ensure!(
        inodes as usize >= files,
        "{}: Usage of the active layer counts {inodes} inodes, fewer than the {files} files written",
        target.label
    );
    let mut took = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        target.usage(key).await?;
        took.push(started.elapsed().as_secs_f64() * 1e3);
    }
    sink.value(
        ROW,
        &format!("Usage of an active {files}-file layer"),
        &target.label,
        "ms",
        crate::stats::median(&took),
        round,
        true,
    )
}

/// The processes a stats pass costs CPU in: containerd always, and the
/// snapshotter's own daemon where it is a proxy plugin.
pub struct Daemons {
    pub containerd: u32,
    pub snapshotter: Option<u32>,
}

impl Daemons {
    /// The CPU ticks each has used so far: containerd's, and the snapshotter
    /// daemon's (0 without one).
    fn ticks(&self) -> Result<(u64, u64)> {
        let snapshotter = self.snapshotter.map(cpu_ticks).transpose()?;
        Ok((cpu_ticks(self.containerd)?, snapshotter.unwrap_or(0)))
    }
}

/// `passes` stats passes (Walk, then Usage of every snapshot; all of them are active
/// here); records the CPU each pass cost the daemons (and containerd's share) and
/// its wall time. Fails if the passes did not see every layer's files.
#[allow(clippy::too_many_arguments)]
pub async fn time_stats_passes(
    target: &mut Target,
    containers: usize,
    files_each: usize,
    passes: u32,
    daemons: &Daemons,
    sink: &Sink<'_>,
    round: u32,
) -> Result<()> {
    let ticks = clock_ticks_per_second()?;
    let (containerd_before, snapshotter_before) = daemons.ticks()?;
    let started = Instant::now();
    for _ in 0..passes {
        let snapshots = target.list().await?;
        anyhow::ensure!(
            snapshots.len() == containers,
            "{}: the walk found {} snapshots, expected {containers}",
            target.label,
            snapshots.len()
        );
        let mut inodes = 0;
        for (name, _) in &snapshots {
            inodes += target.usage(name).await?.1;
        }
        anyhow::ensure!(
            inodes as usize >= containers * files_each,
            "{}: the pass counted {inodes} inodes, fewer than the {} files written",
            target.label,
            containers * files_each
        );
    }
    let wall = started.elapsed().as_secs_f64() * 1e3 / f64::from(passes);
    let per_pass_ms =
        |now: u64, before: u64| (now - before) as f64 * 1e3 / ticks / f64::from(passes);
    let (containerd_after, snapshotter_after) = daemons.ticks()?;
    let containerd_cpu = per_pass_ms(containerd_after, containerd_before);
    let cpu = containerd_cpu + per_pass_ms(snapshotter_after, snapshotter_before);
    sink.value(
        ROW,
        &format!(
            "CPU of one stats pass over {containers} active layers (containerd + snapshotter)"
        ),
        &target.label,
        "ms",
        cpu,
        round,
        true,
    )?;
    sink.value(
        ROW,
        &format!("CPU of one stats pass over {containers} active layers: containerd's share"),
        &target.label,
        "ms",
        containerd_cpu,
        round,
        false,
    )?;
    sink.value(
        ROW,
        &format!("Wall time of one stats pass over {containers} active layers"),
        &target.label,
        "ms",
        wall,
        round,
        false,
    )
}

/// Writes every filesystem's dirty data out (sync(1)), and waits for it.
pub fn sync_filesystems() -> Result<()> {
    let status = std::process::Command::new("sync")
        .status()
        .context("run sync")?;
    anyhow::ensure!(status.success(), "sync exited with {status}");
    Ok(())
}

/// User plus system CPU of a process, in clock ticks (fields 14 and 15 of
/// /proc/PID/stat, counted after the command name, which may hold spaces).
fn cpu_ticks(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("{path}: no command name"))?;
    // After the name: state is field 3, so utime (14) and stime (15) are the
    // 12th and 13th words.
    let words: Vec<&str> = after_name.split_whitespace().collect();
    let mut total = 0;
    for index in [11, 12] {
        total += words
            .get(index)
            .and_then(|w| w.parse::<u64>().ok())
            .with_context(|| format!("{path}: no CPU time in field {}", index + 3))?;
    }
    Ok(total)
}

/// The unit of /proc's CPU times (USER_HZ), as the C library reports it.
fn clock_ticks_per_second() -> Result<f64> {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .context("run getconf CLK_TCK")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|t| *t > 0.0)
        .with_context(|| format!("getconf CLK_TCK printed {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_ticks_and_the_clock_has_a_rate() {
        // Burn some CPU so the count cannot be zero by chance of a fresh process.
        let started = Instant::now();
        let mut x = 0u64;
        while started.elapsed().as_millis() < 50 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let me = std::process::id();
        assert!(cpu_ticks(me).unwrap() > 0);
        assert!(clock_ticks_per_second().unwrap() >= 1.0);
        assert!(cpu_ticks(u32::MAX).is_err());
    }
}
