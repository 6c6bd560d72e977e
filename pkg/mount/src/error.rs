use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("mount {fs_type} at {target}: {source}")]
    Mount {
        fs_type: String,
        target: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("unmount {target}: {source}")]
    Unmount {
        target: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "mount {fs_type} at {target}: option data is {len} bytes even after shortening lower directories; the kernel takes one page"
    )]
    OptionsTooLong {
        fs_type: String,
        target: PathBuf,
        len: usize,
    },
    #[error("{what} {path}: {source}")]
    Fs {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for rustlayer_core::Error {
    fn from(err: Error) -> Self {
        use rustlayer_core::Error as CoreError;
        match err {
            Error::Mount {
                fs_type,
                target,
                source,
            } => CoreError::io(format!("mount {fs_type} at {}", target.display()), source),
            Error::Unmount { target, source } => {
                CoreError::io(format!("unmount {}", target.display()), source)
            }
            Error::Fs { what, path, source } => {
                CoreError::io(format!("{what} {}", path.display()), source)
            }
            err @ Error::OptionsTooLong { .. } => {
                CoreError::layer(rustlayer_core::Code::Internal, err)
            }
        }
    }
}
