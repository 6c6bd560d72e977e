//! The only crate that knows gRPC: containerd's `Snapshots` service mapped onto
//! [`Snapshotter`], and the `Introspection` service `ctr` asks, served on a unix
//! socket.

mod authority;
mod client;
mod convert;
mod error;
mod hpack;
mod introspection;
mod service;
mod socket;

pub use authority::AuthorityFix;
pub use client::{channel, connect};
pub use convert::{kind_from_pb, read_usage_details};
pub use error::{Error, Result};
pub use introspection::{IntrospectionService, SNAPSHOTTER_ID};
pub use rustlayer_core::{NoopObserver, RequestObserver};
pub use service::{SnapshotService, status_from};
pub use socket::{SocketOptions, bind_socket};

use std::future::Future;
use std::sync::Arc;

use rustlayer_api::introspection::introspection_server::IntrospectionServer;
use rustlayer_api::snapshots::snapshots_server::SnapshotsServer;
use rustlayer_snapshotter::Snapshotter;
use tokio::net::UnixListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnixListenerStream;

/// Serves until `shutdown` resolves, then stops accepting and waits for requests in
/// flight to finish.
pub async fn serve(
    snapshotter: Arc<Snapshotter>,
    observer: Arc<dyn RequestObserver>,
    listener: UnixListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let introspection = IntrospectionService::new(&snapshotter);
    let service = SnapshotService::new(snapshotter, observer);
    tonic::transport::Server::builder()
        .add_service(SnapshotsServer::new(service))
        .add_service(IntrospectionServer::new(introspection))
        .serve_with_incoming_shutdown(
            UnixListenerStream::new(listener).map(|accepted| accepted.map(AuthorityFix::new)),
            shutdown,
        )
        .await?;
    Ok(())
}
