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
    /// Growing a new snapshot's filesystem ran the pool out of space.
    #[error(
        "growing the filesystem of thin device {thin} to {bytes} bytes ran thin pool {pool} out of space ({figures}): {source}; remove unused images or grow the pool"
    )]
    GrowOutOfSpace {
        thin: u32,
        bytes: u64,
        pool: String,
        figures: String,
        #[source]
        source: Box<Error>,
    },
    #[error("thin device {device} is still in use (mounted?); unmount it first")]
    Busy { device: String },
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    InvalidConfig(#[from] crate::config::InvalidConfig),
    #[error(transparent)]
    Mount(#[from] rustlayer_mount::Error),
    #[error("{command}: {detail}")]
    FsTool { command: String, detail: String },
    #[error("{program}: cannot run it ({source}); install {package}")]
    FsToolMissing {
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

/// Kept whole ([`rustlayer_core::Error::Layer`]): the ioctl's errno and the
/// device-mapper error stay reachable as the error's source, only the class is
/// decided here.
impl From<Error> for rustlayer_core::Error {
    fn from(err: Error) -> Self {
        use rustlayer_core::{Code, Error as E};
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
        let code = match &err {
            Error::PoolFull(_) | Error::GrowOutOfSpace { .. } => Code::ResourceExhausted,
            Error::FsTool { detail, .. } if detail.contains(crate::base::ENOSPC_MESSAGE) => {
                Code::ResourceExhausted
            }
            Error::Busy { .. } => Code::FailedPrecondition,
            _ if err.errno() == Some(libc::ENOSPC) => Code::ResourceExhausted,
            Error::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC) => {
                Code::ResourceExhausted
            }
            _ => Code::Internal,
        };
        E::layer(code, err)
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
    fn device_mapper_errors_reach_the_core_error_whole() {
        let core: rustlayer_core::Error =
            ioctl_error("message create_snap 2 1", libc::EEXIST).into();
        assert_eq!(core.code(), rustlayer_core::Code::Internal);
        let rustlayer_core::Error::Layer(layer) = &core else {
            panic!("not kept whole: {core:?}");
        };
        let err = layer
            .get_ref()
            .downcast_ref::<Error>()
            .expect("the device-mapper error is kept");
        assert_eq!(err.errno(), Some(libc::EEXIST));
        assert!(
            core.source()
                .is_some_and(|s| s.downcast_ref::<DmError>().is_some()),
            "the ioctl's error is the source: {core:?}"
        );
        let busy: rustlayer_core::Error = Error::Busy {
            device: "rustlayer-7".into(),
        }
        .into();
        assert_eq!(busy.code(), rustlayer_core::Code::FailedPrecondition);
        assert!(busy.to_string().contains("rustlayer-7"), "{busy}");
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
