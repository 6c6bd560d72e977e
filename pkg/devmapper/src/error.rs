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
    #[error("/dev/mapper/control is missing: the kernel has no device-mapper (modprobe dm_mod)")]
    NoDeviceMapper,
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
    InvalidConfig(#[from] crate::config::InvalidConfig),
    #[error(transparent)]
    Mount(#[from] rustlayer_mount::Error),
    #[error("{command}: {detail}")]
    Mkfs { command: String, detail: String },
    #[error("{program}: cannot run it ({source}); install {package}")]
    MkfsMissing {
        program: String,
        package: &'static str,
        #[source]
        source: io::Error,
    },
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
        let err = match err {
            Error::Mount(err) => return err.into(),
            Error::Io {
                context,
                path,
                source,
            } if source.raw_os_error() != Some(libc::ENOSPC) => {
                return E::io(format!("{context} {}", path.display()), source);
            }
            err => err,
        };
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

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;
    use crate::recording_dm::ioctl_error;

    #[test]
    fn io_errors_keep_their_source_through_the_core_error() {
        let err = Error::io("open", "/pool/data")(io::Error::from_raw_os_error(libc::EACCES));
        let core: rustlayer_core::Error = err.into();
        assert_eq!(core.code(), rustlayer_core::Code::Internal);
        let source = core
            .source()
            .and_then(|s| s.downcast_ref::<io::Error>())
            .expect("the io::Error is kept");
        assert_eq!(source.raw_os_error(), Some(libc::EACCES));
        assert!(core.to_string().contains("/pool/data"), "{core}");
    }

    #[test]
    fn a_full_pool_or_disk_is_resource_exhausted() {
        for err in [
            Error::io("write", "/pool/data")(io::Error::from_raw_os_error(libc::ENOSPC)),
            ioctl_error("message create_snap 2 1", libc::ENOSPC),
            Error::PoolFull("nearly full".into()),
        ] {
            let core: rustlayer_core::Error = err.into();
            assert_eq!(
                core.code(),
                rustlayer_core::Code::ResourceExhausted,
                "{core}"
            );
        }
    }

    #[test]
    fn the_errno_of_a_failed_ioctl_is_read_back() {
        assert_eq!(
            ioctl_error("create", libc::EEXIST).errno(),
            Some(libc::EEXIST)
        );
        assert_eq!(Error::Pool("no table".into()).errno(), None);
    }
}
