//! Compiles the vendored CRI proto with protox, like pkg/api: no system `protoc`.

use std::path::Path;

const PROTO: &str = "k8s.io/cri-api/pkg/apis/runtime/v1/api.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile([PROTO], [Path::new("proto")])?;
    // The tests play kubelet: a client is all they need.
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(descriptors)?;
    Ok(())
}
