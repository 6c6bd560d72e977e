//! Compiles the vendored containerd protos with protox (a pure-Rust protobuf
//! compiler), so building needs no system `protoc`.

use std::path::Path;

const PROTOS: &[&str] = &[
    "github.com/containerd/containerd/api/types/mount.proto",
    "github.com/containerd/containerd/api/services/snapshots/v1/snapshots.proto",
    "github.com/containerd/containerd/api/services/introspection/v1/introspection.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let include = Path::new("proto");
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(PROTOS, [include])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Labels are ordered maps throughout rustlayer: the same type on the wire
        // and inside, so a List of thousands moves them instead of rehashing each.
        .btree_map(".")
        .compile_fds(descriptors)?;
    Ok(())
}
