use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("overlay preflight: {0}")]
    Preflight(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Mount(#[from] rustlayer_mount::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err(
    what: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { what, path, source }
}

impl From<Error> for rustlayer_core::Error {
    fn from(err: Error) -> Self {
        use rustlayer_core::Error as CoreError;
        match err {
            Error::Io { what, path, source } => {
                CoreError::io(format!("{what} {}", path.display()), source)
            }
            Error::Mount(err) => err.into(),
            err @ Error::Preflight(_) => {
                CoreError::layer(rustlayer_core::Code::FailedPrecondition, err)
            }
        }
    }
}
