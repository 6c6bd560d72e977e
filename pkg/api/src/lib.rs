//! containerd's snapshots API as Rust types, generated at build time from the protos
//! vendored under `proto/`. Modules mirror the protobuf packages because the
//! generated code refers across them with relative paths.

pub mod containerd {
    pub mod types {
        #![allow(clippy::all, clippy::pedantic)]
        tonic::include_proto!("containerd.types");
    }

    pub mod services {
        pub mod snapshots {
            pub mod v1 {
                #![allow(clippy::all, clippy::pedantic)]
                tonic::include_proto!("containerd.services.snapshots.v1");
            }
        }
    }
}

pub use containerd::services::snapshots::v1 as snapshots;
pub use containerd::types;

/// The fully qualified service name containerd dials.
pub const SNAPSHOTS_SERVICE: &str = "containerd.services.snapshots.v1.Snapshots";
