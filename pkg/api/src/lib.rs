//! containerd's snapshots and introspection APIs as Rust types, generated at build
//! time from the protos vendored under `proto/`. Modules mirror the protobuf
//! packages because the generated code refers across them with relative paths.

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

        pub mod introspection {
            pub mod v1 {
                #![allow(clippy::all, clippy::pedantic)]
                tonic::include_proto!("containerd.services.introspection.v1");
            }
        }
    }
}

pub mod google {
    pub mod rpc {
        #![allow(clippy::all, clippy::pedantic)]
        tonic::include_proto!("google.rpc");
    }
}

pub use containerd::services::introspection::v1 as introspection;
pub use containerd::services::snapshots::v1 as snapshots;
pub use containerd::types;

/// The fully qualified service name containerd dials.
pub const SNAPSHOTS_SERVICE: &str = "containerd.services.snapshots.v1.Snapshots";

/// The service `ctr` (1.7 and later) asks for deprecation warnings at every command.
pub const INTROSPECTION_SERVICE: &str = "containerd.services.introspection.v1.Introspection";
