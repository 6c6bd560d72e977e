//! Kubernetes' Container Runtime Interface (`runtime.v1`), client side, for tests
//! that drive containerd's CRI plugin the way the kubelet does.

use std::path::Path;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

pub mod runtime {
    pub mod v1 {
        #![allow(clippy::all, clippy::pedantic)]
        tonic::include_proto!("runtime.v1");
    }
}

pub use runtime::v1;

/// A channel to a CRI endpoint on a unix socket (containerd's main socket).
pub async fn connect(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = socket.to_owned();
    // The URI is never resolved; the connector ignores it.
    Endpoint::from_static("http://cri.invalid")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
}
