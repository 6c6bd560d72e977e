//! Kubernetes' Container Runtime Interface (`runtime.v1`), client side, for tests
//! that drive containerd's CRI plugin the way the kubelet does.

use std::path::Path;

use tonic::transport::Channel;

pub mod runtime {
    pub mod v1 {
        #![allow(clippy::all, clippy::pedantic)]
        tonic::include_proto!("runtime.v1");
    }
}

pub use runtime::v1;

/// A channel to a CRI endpoint on a unix socket (containerd's main socket).
pub async fn connect(socket: &Path) -> Result<Channel, rustlayer_server::Error> {
    rustlayer_server::channel(socket).await
}
