//! Row 5: a chain of many committed layers, and a container's snapshot on top of
//! it: Prepare, then mount with every layer as a lower directory. The kernel
//! stacks at most 500 lower layers, and takes one page of mount options.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::mount::Mounted;
use crate::results::Sink;
use crate::target::{Target, unique_prefix};

pub const ROW: &str = "5 layer chain";

const MARKER: &str = "bottom-layer-marker";

pub struct Chain {
    prefix: String,
    /// Committed layer names, bottom first.
    pub layers: Vec<String>,
}

/// Builds `layers` committed layers, one on the other; the bottom one holds a
/// marker file the top mount must show. Records the build time.
pub async fn build(
    target: &mut Target,
    layers: usize,
    workdir: &Path,
    sink: &Sink<'_>,
) -> Result<Chain> {
    let prefix = unique_prefix("chain", &target.label);
    let mut chain = Chain {
        prefix: prefix.clone(),
        layers: Vec::with_capacity(layers),
    };
    let started = Instant::now();
    for n in 0..layers {
        let active = format!("{prefix}-{n}-active");
        let name = format!("{prefix}-{n}");
        let parent = chain.layers.last().cloned().unwrap_or_default();
        let mounts = target.prepare(&active, &parent).await?;
        if n == 0 {
            let at = workdir.join(format!("chain-bottom-{}", target.label));
            let mounted = Mounted::new(&mounts, &at)?;
            std::fs::write(mounted.path().join(MARKER), b"bottom\n")
                .context("write the marker into the bottom layer")?;
            mounted.unmount()?;
        }
        target.commit(&name, &active).await?;
        chain.layers.push(name);
    }
    let took = started.elapsed().as_secs_f64();
    sink.value(
        ROW,
        &format!("build {layers} layers (Prepare+Commit each)"),
        &target.label,
        "s",
        took,
        0,
        false,
    )?;
    Ok(chain)
}

/// Prepare on top of the chain and mount it; records each, or what failed. A
/// failure is a finding here, not an error of the bench.
pub async fn top(
    target: &mut Target,
    chain: &Chain,
    workdir: &Path,
    sink: &Sink<'_>,
    round: u32,
) -> Result<()> {
    let depth = chain.layers.len();
    let label = target.label.clone();
    let key = format!("{}-top-{round}", chain.prefix);
    let parent = chain.layers.last().cloned().unwrap_or_default();
    let prepare_metric = format!("Prepare on top of {depth} layers");
    let mount_metric = format!("mount of that ({depth} lower layers)");

    let started = Instant::now();
    let mounts = match target.prepare(&key, &parent).await {
        Ok(m) => m,
        Err(err) => {
            let note = format!("Prepare failed: {}", short(&err));
            sink.note(ROW, &prepare_metric, &label, &note, round, true)?;
            sink.note(ROW, &mount_metric, &label, "not tried", round, true)?;
            return Ok(());
        }
    };
    sink.value(
        ROW,
        &prepare_metric,
        &label,
        "ms",
        started.elapsed().as_secs_f64() * 1e3,
        round,
        true,
    )?;

    let at = workdir.join(format!("chain-top-{label}"));
    let started = Instant::now();
    let mounted = Mounted::new(&mounts, &at);
    let took = started.elapsed().as_secs_f64() * 1e3;
    match mounted {
        Ok(mounted) => {
            let visible = mounted.path().join(MARKER).exists();
            mounted.unmount()?;
            if visible {
                sink.value(ROW, &mount_metric, &label, "ms", took, round, true)?;
            } else {
                let note = "mounted, but the bottom layer's file is missing";
                sink.note(ROW, &mount_metric, &label, note, round, true)?;
            }
        }
        Err(err) => {
            let bytes: usize = mounts
                .iter()
                .flat_map(|m| &m.options)
                .map(|o| o.len() + 1)
                .sum();
            let note = format!("mount failed ({bytes} bytes of options): {}", short(&err));
            sink.note(ROW, &mount_metric, &label, &note, round, true)?;
        }
    }
    target.remove(&key).await?;
    Ok(())
}

/// Removes the chain, top first.
pub async fn remove(target: &mut Target, chain: Chain) -> Result<()> {
    for name in chain.layers.iter().rev() {
        target.remove(name).await?;
    }
    Ok(())
}

/// What went wrong, in a few words for a table cell: a gRPC status's message, or
/// the innermost cause without the path it names.
pub fn short(err: &anyhow::Error) -> String {
    let text = match err.chain().find_map(|e| e.downcast_ref::<tonic::Status>()) {
        Some(status) => status.message().to_owned(),
        None => {
            let cause = err.root_cause().to_string();
            match cause.split_once(": ") {
                Some((head, tail)) if head.contains('/') => tail.to_owned(),
                _ => cause,
            }
        }
    };
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.chars().count() > 160 {
        let cut: String = text.chars().take(157).collect();
        format!("{cut}...")
    } else {
        text
    }
}
