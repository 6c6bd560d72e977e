//! rustlayer-bench: the client side of `hack/bench.sh`. It times snapshot
//! operations against containerd's snapshots service (any snapshotter containerd
//! knows, rustlayer included as a proxy plugin) or straight against rustlayer's
//! socket, appends each figure to a JSON-lines file, and turns that file into the
//! report. It prints figures; it never judges them.

mod chain;
mod cycle;
mod floor;
mod many;
mod mount;
mod probe;
mod report;
mod results;
mod stats;
mod stats_pass;
mod target;
mod usage;
mod wipe;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::results::{Record, Sink};
use crate::target::{DIRECT, Target, Via};

#[derive(Debug, Parser)]
#[command(name = "rustlayer-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Row 1: Prepare, Commit, Prepare child, Mounts, Remove, Remove; p50 and p99.
    Cycle {
        #[command(flatten)]
        targets: TargetArgs,
        /// Timed cycles per target
        #[arg(long, default_value_t = 200)]
        iterations: usize,
        /// Untimed cycles first
        #[arg(long, default_value_t = 10)]
        warmup: usize,
        /// Round number to file the figures under
        #[arg(long, default_value_t = 0)]
        round: u32,
        /// Row to file the figures under (the devmapper row runs the same cycle)
        #[arg(long, default_value = cycle::ROW)]
        row: String,
        #[command(flatten)]
        out: OutArgs,
    },
    /// Row 4: Usage of a committed layer holding many small files.
    Usage {
        #[command(flatten)]
        targets: TargetArgs,
        /// Files written into the layer
        #[arg(long, default_value_t = 100_000)]
        files: usize,
        /// Timed Usage calls per target and round
        #[arg(long, default_value_t = 200)]
        calls: usize,
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Where to mount layers
        #[arg(long)]
        workdir: PathBuf,
        #[command(flatten)]
        out: OutArgs,
    },
    /// Row 8: on a root with project quotas, Usage of an active layer with many
    /// files, and the CPU of a CRI stats pass over many active container layers.
    ActiveUsage {
        #[command(flatten)]
        targets: TargetArgs,
        /// Files written into the one large active layer
        #[arg(long, default_value_t = 100_000)]
        files: usize,
        /// Timed Usage calls of the large layer per target and round
        #[arg(long, default_value_t = 3)]
        calls: usize,
        /// Active container layers the stats pass goes over
        #[arg(long, default_value_t = 50)]
        containers: usize,
        /// Files written into each container layer
        #[arg(long, default_value_t = 2_000)]
        files_each: usize,
        /// Stats passes per target and round (the CPU figure is their mean)
        #[arg(long, default_value_t = 3)]
        passes: u32,
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// containerd's pid: its CPU is counted for every target
        #[arg(long)]
        containerd_pid: u32,
        /// rustlayer's pid: its CPU is counted for the target "rustlayer"
        #[arg(long)]
        rustlayer_pid: u32,
        /// Where to mount layers
        #[arg(long)]
        workdir: PathBuf,
        #[command(flatten)]
        out: OutArgs,
    },
    /// Row 5: a chain of committed layers; Prepare and mount on top of it.
    Chain {
        #[command(flatten)]
        targets: TargetArgs,
        #[arg(long, default_value_t = 500)]
        layers: usize,
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Where to mount layers
        #[arg(long)]
        workdir: PathBuf,
        #[command(flatten)]
        out: OutArgs,
    },
    /// Row 6: create many snapshots, then time List and read resident memory.
    Many {
        #[command(flatten)]
        targets: TargetArgs,
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        /// Prepares in flight while creating
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// rustlayer's pid, for its VmRSS
        #[arg(long)]
        rustlayer_pid: Option<u32>,
        /// containerd's pid, for its VmRSS
        #[arg(long)]
        containerd_pid: Option<u32>,
        /// Seconds to wait before reading memory
        #[arg(long, default_value_t = 5)]
        idle_seconds: u64,
        #[command(flatten)]
        out: OutArgs,
    },
    /// What an fdatasync and a directory fsync cost on the disk holding DIR.
    FsyncProbe {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 200)]
        count: usize,
        #[command(flatten)]
        out: OutArgs,
    },
    /// Serve the proxy floor on SOCKET: containerd's snapshots API from memory, no
    /// I/O, for containerd to reach as a proxy plugin (what the proxy path alone costs).
    ProxyFloor {
        #[arg(long)]
        socket: PathBuf,
    },
    /// Remove every snapshot of the snapshotters given, children first.
    Wipe {
        #[command(flatten)]
        targets: TargetArgs,
    },
    /// Append one figure (or, without --value, a note) to the results.
    Record {
        #[arg(long)]
        row: String,
        #[arg(long)]
        metric: String,
        #[arg(long)]
        target: String,
        #[arg(long, default_value = "")]
        unit: String,
        #[arg(long)]
        value: Option<f64>,
        #[arg(long)]
        note: Option<String>,
        #[arg(long, default_value_t = 0)]
        round: u32,
        /// Show it in the summary table
        #[arg(long)]
        main: bool,
        #[command(flatten)]
        out: OutArgs,
    },
    /// Print the summary table and write both tables as markdown.
    Report {
        /// JSON-lines results of the run
        #[arg(long)]
        results: PathBuf,
        /// Markdown file to write
        #[arg(long)]
        output: Option<PathBuf>,
        /// Lines to put above the tables (machine, versions, mode)
        #[arg(long = "context")]
        context: Vec<String>,
    },
}

#[derive(Clone, Debug, Args)]
struct TargetArgs {
    /// containerd's socket
    #[arg(long)]
    containerd: Option<PathBuf>,
    /// containerd namespace the requests run in
    #[arg(long, default_value = "bench")]
    namespace: String,
    /// Snapshotter to measure through containerd (repeat for several)
    #[arg(long = "snapshotter")]
    snapshotters: Vec<String>,
    /// rustlayer's own socket: also measure it directly, without containerd
    #[arg(long)]
    rustlayer: Option<PathBuf>,
}

impl TargetArgs {
    /// The same targets, their requests in another containerd namespace.
    fn in_namespace(&self, namespace: String) -> TargetArgs {
        TargetArgs {
            namespace,
            ..self.clone()
        }
    }

    async fn connect(&self) -> Result<Vec<Target>> {
        let mut targets = Vec::new();
        if !self.snapshotters.is_empty() {
            let socket = self
                .containerd
                .clone()
                .context("--snapshotter needs --containerd")?;
            for name in &self.snapshotters {
                let via = Via::Containerd {
                    socket: socket.clone(),
                    namespace: self.namespace.clone(),
                };
                targets.push(Target::connect(name, name, via).await?);
            }
        }
        if let Some(socket) = &self.rustlayer {
            let via = Via::Direct {
                socket: socket.clone(),
            };
            targets.push(Target::connect(DIRECT, "rustlayer", via).await?);
        }
        anyhow::ensure!(
            !targets.is_empty(),
            "nothing to measure: give --containerd with --snapshotter, or --rustlayer"
        );
        Ok(targets)
    }
}

#[derive(Debug, Args)]
struct OutArgs {
    /// JSON-lines file to append the figures to
    #[arg(long)]
    results: Option<PathBuf>,
}

/// Targets in turn, the order reversed every other round, so drift over the run
/// (page cache, a garbage collection) does not always favour the same one.
fn order(len: usize, round: u32) -> Vec<usize> {
    let mut v: Vec<usize> = (0..len).collect();
    if round % 2 == 1 {
        v.reverse();
    }
    v
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run(cli.command))
}

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Cycle {
            targets,
            iterations,
            warmup,
            round,
            row,
            out,
        } => {
            let sink = Sink::new(out.results.as_deref());
            let mut targets = targets.connect().await?;
            for i in order(targets.len(), round) {
                let target = &mut targets[i];
                let result = cycle::run(target, iterations, warmup).await?;
                cycle::record(&sink, &row, &target.label, &result, round)?;
            }
        }
        Command::Usage {
            targets,
            files,
            calls,
            rounds,
            workdir,
            out,
        } => {
            let sink = Sink::new(out.results.as_deref());
            let mut targets = targets.connect().await?;
            let mut layers = Vec::new();
            for target in &mut targets {
                layers.push(usage::setup(target, files, &workdir, &sink).await?);
            }
            for round in 0..rounds {
                for i in order(targets.len(), round) {
                    let samples = usage::time_usage(&mut targets[i], &layers[i], calls).await?;
                    usage::record(&sink, &targets[i].label, &samples, round)?;
                }
            }
            for (target, layer) in targets.iter_mut().zip(&layers) {
                target.remove(&layer.name).await?;
            }
        }
        Command::ActiveUsage {
            targets,
            files,
            calls,
            containers,
            files_each,
            passes,
            rounds,
            containerd_pid,
            rustlayer_pid,
            workdir,
            out,
        } => {
            let sink = Sink::new(out.results.as_deref());
            // The large layer lives in a namespace of its own: the stats pass walks
            // every snapshot of its namespace, and must find the container layers alone.
            let mut large_targets = targets
                .in_namespace(format!("{}-large", targets.namespace))
                .connect()
                .await?;
            let mut targets = targets.connect().await?;
            let mut large = Vec::new();
            let mut fleets = Vec::new();
            for (target, large_target) in targets.iter_mut().zip(&mut large_targets) {
                large.push(
                    stats_pass::ActiveLayers::make(large_target, "large", 1, files, &workdir)
                        .await?,
                );
                fleets.push(
                    stats_pass::ActiveLayers::make(
                        target,
                        "container",
                        containers,
                        files_each,
                        &workdir,
                    )
                    .await?,
                );
            }
            // Everything written reaches the disk before anything is timed, so no
            // measure pays for another's writeback.
            stats_pass::sync_filesystems()?;
            for round in 0..rounds {
                for i in order(targets.len(), round) {
                    stats_pass::time_layer_usage(
                        &mut large_targets[i],
                        &large[i],
                        files,
                        calls,
                        &sink,
                        round,
                    )
                    .await?;
                }
            }
            for round in 0..rounds {
                for i in order(targets.len(), round) {
                    let target = &mut targets[i];
                    let daemons = stats_pass::Daemons {
                        containerd: containerd_pid,
                        snapshotter: (target.snapshotter == "rustlayer").then_some(rustlayer_pid),
                    };
                    stats_pass::time_stats_passes(
                        target, containers, files_each, passes, &daemons, &sink, round,
                    )
                    .await?;
                }
            }
            for (target, layer) in large_targets.iter_mut().zip(large) {
                layer.remove(target).await?;
            }
            for (target, fleet) in targets.iter_mut().zip(fleets) {
                fleet.remove(target).await?;
            }
        }
        Command::Chain {
            targets,
            layers,
            rounds,
            workdir,
            out,
        } => {
            let sink = Sink::new(out.results.as_deref());
            let mut targets = targets.connect().await?;
            let mut chains = Vec::new();
            for target in &mut targets {
                chains.push(chain::build(target, layers, &workdir, &sink).await?);
            }
            for round in 0..rounds {
                for i in order(targets.len(), round) {
                    chain::top(&mut targets[i], &chains[i], &workdir, &sink, round).await?;
                }
            }
            for (target, built) in targets.iter_mut().zip(chains) {
                chain::remove(target, built).await?;
            }
        }
        Command::Many {
            targets,
            count,
            concurrency,
            rounds,
            rustlayer_pid,
            containerd_pid,
            idle_seconds,
            out,
        } => {
            let sink = Sink::new(out.results.as_deref());
            let mut targets = targets.connect().await?;
            many_row(
                &mut targets,
                &sink,
                count,
                concurrency,
                rounds,
                rustlayer_pid,
                containerd_pid,
                idle_seconds,
            )
            .await?;
        }
        Command::FsyncProbe { dir, count, out } => {
            probe::run(&dir, count, &Sink::new(out.results.as_deref()))?;
        }
        Command::ProxyFloor { socket } => floor::serve(&socket).await?,
        Command::Wipe { targets } => {
            for mut target in targets.connect().await? {
                let removed = wipe::run(&mut target).await?;
                println!("{}: removed {removed}", target.label);
            }
        }
        Command::Record {
            row,
            metric,
            target,
            unit,
            value,
            note,
            round,
            main,
            out,
        } => {
            anyhow::ensure!(
                value.is_some() || note.is_some(),
                "record needs --value or --note"
            );
            Sink::new(out.results.as_deref()).put(Record {
                row,
                metric,
                target,
                unit,
                value,
                note,
                round,
                main,
            })?;
        }
        Command::Report {
            results,
            output,
            context,
        } => {
            let records = results::load(&results)?;
            let report = report::Report::new(&records);
            let summary = report.summary();
            println!("{summary}");
            let floor = report.proxy_floor();
            if let Some(floor) = &floor {
                println!("{floor}");
            }
            if let Some(path) = output {
                let mut md = String::from("# rustlayer benchmark results\n\n");
                for line in &context {
                    md.push_str(&format!("- {line}\n"));
                }
                md.push_str(
                    "\nMedians over rounds; ratio = rustlayer / built-in (below 1 is faster).\n\n",
                );
                md.push_str("## Summary\n\n");
                md.push_str(&summary);
                if let Some(floor) = &floor {
                    md.push_str(
                        "\n## The proxy path\n\nThe same measure through containerd on a proxy that keeps its snapshots in memory and does no I/O (`rustlayer-bench proxy-floor`): what containerd's proxy path costs by itself.\n\n",
                    );
                    md.push_str(floor);
                }
                md.push_str(
                    "\n## Details\n\nMedian over rounds, then (min–max, n=rounds) where there were several.\n\n",
                );
                md.push_str(&report.details());
                std::fs::write(&path, md).with_context(|| format!("write {}", path.display()))?;
            }
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn many_row(
    targets: &mut [Target],
    sink: &Sink<'_>,
    count: usize,
    concurrency: usize,
    rounds: u32,
    rustlayer_pid: Option<u32>,
    containerd_pid: Option<u32>,
    idle_seconds: u64,
) -> Result<()> {
    let row = many::ROW;
    let through_containerd = targets.iter().any(|t| !t.is_direct());
    for target in targets.iter() {
        if through_containerd && target.is_direct() {
            // It lists what went in through containerd.
            continue;
        }
        let label = target.label.clone();
        let is_ours = label == "rustlayer" || label == DIRECT;
        let rl_before = rustlayer_pid.map(many::rss_mib).transpose()?;
        let cd_before = containerd_pid.map(many::rss_mib).transpose()?;
        many::create(target, count, concurrency, sink).await?;
        many::idle(idle_seconds).await;
        if let (Some(pid), Some(before)) = (containerd_pid, cd_before) {
            let after = many::rss_mib(pid)?;
            let metric = format!("containerd RSS growth creating {count}");
            sink.value(row, &metric, &label, "MiB", after - before, 0, true)?;
            let metric = format!("containerd RSS, idle, after creating {count}");
            sink.value(row, &metric, &label, "MiB", after, 0, false)?;
        }
        if let (true, Some(pid), Some(before)) = (is_ours, rustlayer_pid, rl_before) {
            let after = many::rss_mib(pid)?;
            let metric = format!("rustlayer daemon RSS, idle, after creating {count}");
            sink.value(row, &metric, &label, "MiB", after, 0, true)?;
            let metric = "rustlayer daemon RSS before creating them";
            sink.value(row, metric, &label, "MiB", before, 0, false)?;
        }
    }
    for round in 0..rounds {
        for i in order(targets.len(), round) {
            many::list(&mut targets[i], sink, count, round).await?;
        }
    }
    Ok(())
}
