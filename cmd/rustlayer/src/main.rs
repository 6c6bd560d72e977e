//! `rustlayer`: the snapshotter daemon and its operator commands.

mod config;
mod logging;
mod serve;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{BackendKind, Config, DEFAULT_TOML, LogFormat};

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
    /// Configuration helpers.
    #[command(subcommand)]
    Config(ConfigCommand),
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Config(ConfigCommand::Default) => {
            print!("{DEFAULT_TOML}");
            Ok(())
        }
        Command::Serve(args) => args.resolve().and_then(|config| {
            logging::init(config.log_format);
            serve::run(config)
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
