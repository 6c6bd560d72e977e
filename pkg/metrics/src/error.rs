#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("metric registration: {0}")]
    Registry(#[from] prometheus::Error),
    #[error("metrics listener on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("metrics server: {0}")]
    Serve(#[source] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
