use std::io;
use std::path::PathBuf;

use devicemapper::{DmError, errors};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("device-mapper: {context}: {source}")]
    Dm {
        context: String,
        #[source]
        source: DmError,
    },
    #[error("{context} {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("thin pool: {0}")]
    Pool(String),
    /// The pool is too full for a new snapshot.
    #[error("{0}")]
    PoolFull(String),
    #[error("thin device {device} is still in use (mounted?); unmount it first")]
    Busy { device: String },
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Mount(#[from] rustlayer_mount::Error),
    #[error("{command}: {detail}")]
    Mkfs { command: String, detail: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn dm(context: impl Into<String>, source: DmError) -> Self {
        Error::Dm {
            context: context.into(),
            source,
        }
    }

    pub fn io(context: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io {
            context,
            path,
            source,
        }
    }

    /// The errno of a failed device-mapper ioctl.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Dm { source, .. } => dm_errno(source),
            _ => None,
        }
    }
}

/// The errno behind a failed device-mapper ioctl, if that is what failed.
pub fn dm_errno(err: &DmError) -> Option<i32> {
    match err {
        DmError::Core(errors::Error::Ioctl(_, _, _, errno)) => Some(**errno as i32),
        _ => None,
    }
}

impl From<Error> for rustlayer_core::Error {
    fn from(err: Error) -> Self {
        use rustlayer_core::Error as E;
        if let Error::Mount(err) = err {
            return err.into();
        }
        match &err {
            Error::PoolFull(_) => E::ResourceExhausted(err.to_string()),
            Error::Busy { .. } => E::FailedPrecondition(err.to_string()),
            _ if err.errno() == Some(libc::ENOSPC) => E::ResourceExhausted(err.to_string()),
            Error::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC) => {
                E::ResourceExhausted(err.to_string())
            }
            _ => E::Internal(err.to_string()),
        }
    }
}
