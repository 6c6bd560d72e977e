use std::path::Path;

use hyper_util::rt::TokioIo;
use rustlayer_api::snapshots::snapshots_client::SnapshotsClient;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::error::{Error, Result};

/// A client of the snapshots service on a unix socket, as containerd connects.
pub async fn connect(socket: &Path) -> Result<SnapshotsClient<Channel>> {
    Ok(SnapshotsClient::new(channel(socket).await?))
}

/// An HTTP/2 channel to a unix socket, for clients that speak gRPC below the typed
/// client (raw bodies, other services).
pub async fn channel(socket: &Path) -> Result<Channel> {
    let path = socket.to_owned();
    // The URI is never resolved; the connector below ignores it.
    Endpoint::from_static("http://rustlayer.invalid")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .map_err(|source| Error::Connect {
            path: socket.to_owned(),
            source,
        })
}
