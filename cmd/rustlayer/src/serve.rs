use std::fs::{self, DirBuilder};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use rustlayer_core::Backend;
use rustlayer_devmapper::{DevmapperBackend, DevmapperOptions};
use rustlayer_metrics::{Collector, DEFAULT_INTERVAL, Health, Metrics};
use rustlayer_mount::LinuxMounter;
use rustlayer_overlay::{OverlayBackend, OverlayOptions, ensure_preflight, preflight};
use rustlayer_server::{NoopObserver, RequestObserver, SocketOptions, bind_socket};
use rustlayer_snapshotter::Snapshotter;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tracing::info;

use crate::config::{BackendKind, Config};

pub fn run(config: Config, node: Option<rustlayer_node::Settings>) -> Result<()> {
    info!(
        version = env!("CARGO_PKG_VERSION"),
        ?config,
        "starting rustlayer"
    );
    // Modes of everything we create must not depend on whoever started us.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    prepare_root(&config.root)?;
    let backend = open_backend(&config)?;
    let snapshotter = Arc::new(
        Snapshotter::open(&config.root, backend).context("cannot open the snapshot metadata")?,
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("rustlayer")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(&config, Arc::clone(&snapshotter), node))?;
    // Background collection may be mid-walk; it holds no state worth waiting for.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));

    info!("stopped accepting; requests in flight finished");
    // The write-ahead log already holds every acknowledged change; folding it into
    // the main file is tidiness, and it cannot happen on a full disk.
    if let Err(err) = snapshotter.close() {
        tracing::warn!(%err, "metadata left in its write-ahead log; it is replayed at next start");
    }
    if let Err(err) = fs::remove_file(&config.address) {
        tracing::warn!(path = %config.address.display(), %err, "cannot remove socket");
    }
    info!("shut down cleanly");
    Ok(())
}

/// The root holds every layer on the node: it must be ours alone. A symlink could be
/// repointed and a world-writable directory lets anyone plant storage in it.
pub fn root_problem(root: &Path) -> Option<String> {
    match fs::symlink_metadata(root) {
        Ok(meta) if meta.file_type().is_symlink() => Some(format!(
            "root {} is a symlink; give the real path",
            root.display()
        )),
        Ok(meta) if !meta.is_dir() => Some(format!("root {} is not a directory", root.display())),
        Ok(meta) if meta.permissions().mode() & 0o002 != 0 => Some(format!(
            "root {} is world-writable; make it 0700 and owned by root",
            root.display()
        )),
        Ok(_) => None,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
        Err(err) => Some(format!("cannot inspect root {}: {err}", root.display())),
    }
}

fn prepare_root(root: &Path) -> Result<()> {
    if let Some(problem) = root_problem(root) {
        bail!(problem);
    }
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
        .with_context(|| format!("cannot create root {}", root.display()))
}

fn open_backend(config: &Config) -> Result<Arc<dyn Backend>> {
    match config.backend {
        BackendKind::Overlay => {
            let checks = preflight(&config.root, &LinuxMounter, config.remap_ids);
            for check in &checks {
                info!(check = check.name, ok = check.ok, detail = %check.detail, "preflight");
            }
            ensure_preflight(&checks).with_context(|| {
                format!("root {} cannot hold overlay layers", config.root.display())
            })?;
            let backend = OverlayBackend::open(&OverlayOptions {
                root: config.root.clone(),
                remap_ids: config.remap_ids,
                size_limits: config.overlay.size_limits(),
            })?;
            Ok(Arc::new(backend))
        }
        BackendKind::Devmapper => {
            rustlayer_devmapper::kernel_support().map_err(anyhow::Error::msg)?;
            let backend = DevmapperBackend::open(&DevmapperOptions {
                root: config.root.clone(),
                config: config.devmapper.clone(),
                remap_ids: config.remap_ids,
            })
            .context("cannot open the devmapper backend")?;
            Ok(Arc::new(backend))
        }
    }
}

/// Serves gRPC (and metrics, when configured) until SIGTERM or SIGINT, then lets
/// requests in flight finish.
async fn serve(
    config: &Config,
    snapshotter: Arc<Snapshotter>,
    node: Option<rustlayer_node::Settings>,
) -> Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: shutting down"),
            _ = int.recv() => info!("SIGINT: shutting down"),
        }
        let _ = stop_tx.send(true);
    });

    let health = Arc::new(Health::new(Arc::clone(&snapshotter)));
    let mut observer: Arc<dyn RequestObserver> = Arc::new(NoopObserver);
    let mut metrics_server = None;
    if let Some(addr) = config.metrics_address {
        let metrics = Arc::new(Metrics::new(
            env!("CARGO_PKG_VERSION"),
            snapshotter.backend().name(),
        )?);
        let collector = Arc::new(Collector::new(
            Arc::clone(&metrics),
            Arc::clone(&snapshotter),
            config.root.clone(),
        ));
        tokio::spawn(collector.run(DEFAULT_INTERVAL));
        let listener = rustlayer_metrics::bind(addr).await?;
        metrics_server = Some(tokio::spawn(rustlayer_metrics::serve(
            listener,
            Arc::clone(&metrics),
            Arc::clone(&health),
            stopped(),
        )));
        observer = metrics;
    }

    let listener = bind_socket(
        &config.address,
        &SocketOptions {
            group: config.socket_group,
        },
    )?;
    health.set_serving(true);
    // Samples on its own: the metrics collector runs only when metrics are served.
    let node = node.map(|settings| {
        let root = config.root.clone();
        let snapshotter = Arc::clone(&snapshotter);
        let sample = move || rustlayer_node::Sample::gather(&root, snapshotter.backend());
        rustlayer_node::start_in_cluster(settings, sample)
    });
    let served = rustlayer_server::serve(snapshotter, observer, listener, stopped()).await;
    health.set_serving(false);
    if let Some(node) = node {
        node.shutdown().await;
    }
    served?;
    if let Some(server) = metrics_server {
        server.await.context("metrics server task")??;
    }
    Ok(())
}
