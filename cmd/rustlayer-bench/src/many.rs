//! Row 6: many snapshots. How long List takes once there are thousands, and what
//! the daemons keep resident for them once idle.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::results::Sink;
use crate::target::{Target, unique_prefix};

pub const ROW: &str = "6 many snapshots";

/// Creates `count` active snapshots with `concurrency` requests in flight.
pub async fn create(
    target: &Target,
    count: usize,
    concurrency: usize,
    sink: &Sink<'_>,
) -> Result<()> {
    let prefix = unique_prefix("many", &target.label);
    let concurrency = concurrency.clamp(1, count.max(1));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let mut target = target.clone();
        let prefix = prefix.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = worker;
            while n < count {
                target.prepare(&format!("{prefix}-{n}"), "").await?;
                n += concurrency;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await.context("creating worker")??;
    }
    let took = started.elapsed().as_secs_f64();
    sink.value(
        ROW,
        &format!("create {count} (Prepare, {concurrency} in flight)"),
        &target.label,
        "s",
        took,
        0,
        false,
    )
}

/// One List of everything; returns how many it saw.
pub async fn list(target: &mut Target, sink: &Sink<'_>, count: usize, round: u32) -> Result<usize> {
    let started = Instant::now();
    let seen = target.list().await?.len();
    let took = started.elapsed();
    anyhow::ensure!(
        seen >= count,
        "{}: List returned {seen} snapshots, fewer than the {count} created",
        target.label
    );
    let main = target.label != crate::target::DIRECT;
    sink.value(
        ROW,
        &format!("List of {count}"),
        &target.label,
        "ms",
        took.as_secs_f64() * 1e3,
        round,
        main,
    )?;
    Ok(seen)
}

/// VmRSS of a process, in MiB.
pub fn rss_mib(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no VmRSS in {path}"))?;
    Ok(kib / 1024.0)
}

/// Lets the daemons settle (background work, a garbage collection) before a reading.
pub async fn idle(seconds: u64) {
    tokio::time::sleep(Duration::from_secs(seconds)).await;
}
