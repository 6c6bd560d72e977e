use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use rustlayer_snapshotter::Snapshotter;
use tracing::info;

use crate::error::{Error, Result};
use crate::registry::Metrics;

/// Liveness: the metadata answers. Readiness: additionally, the gRPC socket is
/// accepting, so containerd can be pointed at us.
pub struct Health {
    snapshotter: Arc<Snapshotter>,
    serving: AtomicBool,
}

impl Health {
    pub fn new(snapshotter: Arc<Snapshotter>) -> Self {
        Health {
            snapshotter,
            serving: AtomicBool::new(false),
        }
    }

    pub fn set_serving(&self, serving: bool) {
        self.serving.store(serving, Ordering::SeqCst);
    }

    fn alive(&self) -> std::result::Result<(), Unhealthy> {
        self.snapshotter
            .counts()
            .map(drop)
            .map_err(Unhealthy::MetadataUnreadable)
    }
}

/// Why a probe answers 503; its text is the probe's body.
#[derive(Debug, thiserror::Error)]
enum Unhealthy {
    #[error("metadata unreadable: {0}")]
    MetadataUnreadable(#[source] rustlayer_core::Error),
    #[error("gRPC socket not serving")]
    NotServing,
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// Binds the metrics listener; done before serving so a taken port fails the start.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Listen { addr, source })?;
    info!(%addr, "metrics endpoint listening");
    Ok(listener)
}

/// Serves `/metrics`, `/healthz` and `/readyz` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState { metrics, health });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(Error::Serve)
}

async fn metrics_page(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

async fn probe(health: Arc<Health>, need_serving: bool) -> (StatusCode, String) {
    let checked = tokio::task::spawn_blocking(move || {
        health.alive()?;
        if need_serving && !health.serving.load(Ordering::SeqCst) {
            return Err(Unhealthy::NotServing);
        }
        Ok(())
    })
    .await;
    match checked {
        Ok(Ok(())) => (StatusCode::OK, "ok\n".into()),
        Ok(Err(why)) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        Err(err) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("check failed: {err}\n"),
        ),
    }
}

async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    probe(state.health, false).await
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    probe(state.health, true).await
}
