//! Row 1: the snapshot lifecycle a container goes through, one step after the
//! other: Prepare, Commit, Prepare a child, Mounts, Remove the child, Remove the
//! layer.

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::results::Sink;
use crate::stats::Samples;
use crate::target::{Target, unique_prefix};

pub const ROW: &str = "1 snapshot cycle";

const OPS: [&str; 6] = [
    "Prepare",
    "Commit",
    "Prepare child",
    "Mounts",
    "Remove child",
    "Remove layer",
];

/// Requests timed for the round-trip floor.
const ROUND_TRIPS: usize = 100;

pub struct CycleResult {
    pub total: Samples,
    pub ops: [Samples; 6],
    /// Usage of a missing key: no storage work, no write; transport and lookup only.
    pub round_trip: Samples,
}

pub async fn run(target: &mut Target, iterations: usize, warmup: usize) -> Result<CycleResult> {
    let prefix = unique_prefix("cycle", &target.label);
    let mut result = CycleResult {
        total: Samples::default(),
        ops: Default::default(),
        round_trip: Samples::default(),
    };
    for i in 0..warmup + iterations {
        let active = format!("{prefix}-{i}-active");
        let layer = format!("{prefix}-{i}-layer");
        let child = format!("{prefix}-{i}-child");
        let mut times = [Duration::ZERO; 6];
        let start = Instant::now();
        let mut last = start;
        let mut lap = |n: usize| {
            let now = Instant::now();
            times[n] = now - last;
            last = now;
        };
        target.prepare(&active, "").await?;
        lap(0);
        target.commit(&layer, &active).await?;
        lap(1);
        target.prepare(&child, &layer).await?;
        lap(2);
        target.mounts(&child).await?;
        lap(3);
        target.remove(&child).await?;
        lap(4);
        target.remove(&layer).await?;
        lap(5);
        if i >= warmup {
            result.total.push(start.elapsed());
            for (samples, t) in result.ops.iter_mut().zip(times) {
                samples.push(t);
            }
        }
    }
    let missing = format!("{prefix}-missing");
    for i in 0..warmup + ROUND_TRIPS {
        let start = Instant::now();
        target.usage_missing(&missing).await?;
        if i >= warmup {
            result.round_trip.push(start.elapsed());
        }
    }
    Ok(result)
}

pub fn record(
    sink: &Sink<'_>,
    row: &str,
    label: &str,
    result: &CycleResult,
    round: u32,
) -> Result<()> {
    let main = label != crate::target::DIRECT;
    sink.value(
        row,
        "cycle p50",
        label,
        "ms",
        result.total.percentile_ms(50.0),
        round,
        main,
    )?;
    sink.value(
        row,
        "cycle p99",
        label,
        "ms",
        result.total.percentile_ms(99.0),
        round,
        main,
    )?;
    sink.value(
        row,
        "cycle mean",
        label,
        "ms",
        result.total.mean_ms(),
        round,
        false,
    )?;
    sink.value(
        row,
        "round trip: Usage of a missing key p50",
        label,
        "ms",
        result.round_trip.percentile_ms(50.0),
        round,
        false,
    )?;
    for (name, samples) in OPS.iter().zip(&result.ops) {
        sink.value(
            row,
            &format!("{name} p50"),
            label,
            "ms",
            samples.percentile_ms(50.0),
            round,
            false,
        )?;
    }
    Ok(())
}
