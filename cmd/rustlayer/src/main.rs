//! `rustlayer`: the snapshotter daemon and its operator commands.

mod check;
mod config;
mod inspect;
mod logging;
mod output;
mod serve;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{BackendKind, Config, LogFormat, default_toml};
use crate::output::Output;

#[derive(Debug, Parser)]
#[command(name = "rustlayer", version, about = "A containerd snapshotter")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve containerd's snapshots API on a unix socket.
    Serve(ServeArgs),
    /// List the snapshots of a running daemon.
    Ls {
        #[command(flatten)]
        client: ClientArgs,
        /// containerd filter, e.g. kind==committed or labels."a.b"==c (repeat to OR)
        #[arg(long = "filter")]
        filters: Vec<String>,
    },
    /// Show the layer tree of a running daemon: each layer under its parent.
    Tree {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show disk and inode use per snapshot (all, or the keys given).
    Usage {
        #[command(flatten)]
        client: ClientArgs,
        keys: Vec<String>,
    },
    /// Check that this node can run rustlayer and that the daemon is healthy.
    Check {
        #[command(flatten)]
        client: ClientArgs,
        /// Root to check [default: from the configuration]
        #[arg(long)]
        root: Option<PathBuf>,
        /// Backend to check [default: from the configuration]
        #[arg(long, value_enum)]
        backend: Option<BackendKind>,
    },
    /// Configuration helpers.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Args)]
struct ClientArgs {
    /// The daemon's socket [default: from the configuration]
    #[arg(long)]
    address: Option<PathBuf>,
    /// Configuration file to take the socket from [default: /etc/rustlayer/config.toml if present]
    #[arg(long)]
    config: Option<PathBuf>,
    /// Output format
    #[arg(long, short, value_enum, default_value_t = Output::Table)]
    output: Output,
}

impl ClientArgs {
    fn resolve(&self) -> anyhow::Result<Config> {
        let mut config = Config::load(self.config.as_deref())?;
        if let Some(address) = &self.address {
            config.address = address.clone();
        }
        Ok(config)
    }
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the default configuration file.
    Default,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Directory holding snapshots and metadata [default: /var/lib/rustlayer]
    #[arg(long)]
    root: Option<PathBuf>,
    /// Unix socket to serve on [default: /run/rustlayer/rustlayer.sock]
    #[arg(long)]
    address: Option<PathBuf>,
    /// Storage backend [default: overlay]
    #[arg(long, value_enum)]
    backend: Option<BackendKind>,
    /// Configuration file (TOML) [default: /etc/rustlayer/config.toml if present]
    #[arg(long)]
    config: Option<PathBuf>,
    /// Serve Prometheus metrics, /healthz and /readyz on HOST:PORT
    #[arg(long)]
    metrics_address: Option<SocketAddr>,
    /// Log format [default: text]
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    #[command(flatten)]
    node: NodeArgs,
}

/// Kubernetes node integration. Flags and environment rather than the
/// configuration file: the DaemonSet knows the node, the file is the same on all.
#[derive(Debug, Args)]
struct NodeArgs {
    /// This Kubernetes node's name, for its label and Events
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// Label the Node with [node] ready_label (rustlayer.io/ready) = true while serving
    /// and post Events on it: auto (on when KUBERNETES_SERVICE_HOST and the node name
    /// are set), on, off
    #[arg(long, default_value = "auto", value_name = "auto|on|off")]
    node_integration: rustlayer_node::Mode,
    /// Warn on the Node when free inodes of the root's filesystem fall under this (0: never)
    #[arg(long, value_name = "PERCENT", default_value_t = 10,
          value_parser = clap::value_parser!(u8).range(0..=100))]
    inode_free_threshold_percent: u8,
    /// Warn on the Node when thin-pool data or metadata use goes over this (100: never)
    #[arg(long, value_name = "PERCENT", default_value_t = 90,
          value_parser = clap::value_parser!(u8).range(0..=100))]
    thin_pool_used_threshold_percent: u8,
}

impl NodeArgs {
    /// The integration's settings, or `None` (said in the log) when it stays off.
    fn resolve(
        &self,
        config: &config::NodeConfig,
    ) -> anyhow::Result<Option<rustlayer_node::Settings>> {
        let service_host = std::env::var(rustlayer_node::SERVICE_HOST_ENV).ok();
        let decision = rustlayer_node::decide(
            self.node_integration,
            self.node_name.as_deref(),
            service_host.as_deref(),
        )?;
        match decision {
            rustlayer_node::Decision::On { node_name } => {
                let thresholds = rustlayer_node::Thresholds {
                    inode_free_percent: self.inode_free_threshold_percent,
                    pool_used_percent: self.thin_pool_used_threshold_percent,
                };
                Ok(Some(rustlayer_node::Settings {
                    ready_label: config.ready_label.clone(),
                    ..rustlayer_node::Settings::new(node_name, thresholds)
                }))
            }
            rustlayer_node::Decision::Off { why } => {
                tracing::info!("node integration off: {why}");
                Ok(None)
            }
        }
    }
}

impl ServeArgs {
    /// The configuration file's settings with the flags given laid over them.
    fn resolve(&self) -> anyhow::Result<Config> {
        let mut config = Config::load(self.config.as_deref())?;
        if let Some(root) = &self.root {
            config.root = root.clone();
        }
        if let Some(address) = &self.address {
            config.address = address.clone();
        }
        if let Some(backend) = self.backend {
            config.backend = backend;
        }
        if let Some(metrics) = self.metrics_address {
            config.metrics_address = Some(metrics);
        }
        if let Some(format) = self.log_format {
            config.log_format = format;
        }
        Ok(config)
    }
}

fn block_on<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

/// A failed check is an answer, not an error: exit 2 without an error message.
fn return_code(code: u8) -> anyhow::Result<()> {
    std::process::exit(i32::from(code))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Config(ConfigCommand::Default) => {
            print!("{}", default_toml());
            Ok(())
        }
        Command::Serve(args) => args.resolve().and_then(|config| {
            logging::init(config.log_format);
            let node = args.node.resolve(&config.node)?;
            serve::run(config, node)
        }),
        Command::Ls { client, filters } => client
            .resolve()
            .and_then(|config| block_on(inspect::ls(&config.address, &filters, client.output))),
        Command::Tree { client } => client
            .resolve()
            .and_then(|config| block_on(inspect::tree(&config.address, client.output))),
        Command::Usage { client, keys } => client.resolve().and_then(|config| {
            block_on(inspect::usage_report(&config.address, &keys, client.output))
        }),
        Command::Check {
            client,
            root,
            backend,
        } => client.resolve().and_then(|mut config| {
            if let Some(root) = root {
                config.root = root;
            }
            if let Some(backend) = backend {
                config.backend = backend;
            }
            match block_on(check::check(&config, client.output)) {
                Ok(true) => Ok(()),
                Ok(false) => return_code(2),
                Err(err) => Err(err),
            }
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("rustlayer: {err:#}");
            ExitCode::FAILURE
        }
    }
}
