//! What the gRPC layer reports about each request to whoever watches (the metrics
//! exporter), in terms that need neither gRPC nor Prometheus, so the exporter sits
//! below the server instead of beside it.

use std::fmt;
use std::time::Duration;

/// A method of containerd's snapshots API, ordered as [`Method::ALL`] lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Method {
    Prepare,
    View,
    Mounts,
    Commit,
    Remove,
    Stat,
    Update,
    Usage,
    List,
    Cleanup,
}

impl Method {
    pub const ALL: [Method; 10] = [
        Method::Prepare,
        Method::View,
        Method::Mounts,
        Method::Commit,
        Method::Remove,
        Method::Stat,
        Method::Update,
        Method::Usage,
        Method::List,
        Method::Cleanup,
    ];

    /// The method's name in the API, as logs and metrics label it.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Prepare => "Prepare",
            Method::View => "View",
            Method::Mounts => "Mounts",
            Method::Commit => "Commit",
            Method::Remove => "Remove",
            Method::Stat => "Stat",
            Method::Update => "Update",
            Method::Usage => "Usage",
            Method::List => "List",
            Method::Cleanup => "Cleanup",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Sees every request's outcome. `code` is the gRPC status code's canonical name
/// ("OK", "NotFound", "Canceled", ...), as grpc-go and containerd print them.
pub trait RequestObserver: Send + Sync {
    fn observe(&self, method: Method, code: &'static str, elapsed: Duration);
}

/// For a daemon that exports no metrics.
#[derive(Debug, Default)]
pub struct NoopObserver;

impl RequestObserver for NoopObserver {
    fn observe(&self, _: Method, _: &'static str, _: Duration) {}
}
