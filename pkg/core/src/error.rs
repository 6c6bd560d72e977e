use std::io;

/// The error classes containerd's client branches on. The gRPC layer maps each onto
/// its status code; containerd's unpacker and garbage collector depend on these
/// being exact (e.g. `AlreadyExists` from Prepare means "someone else unpacked it").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    NotFound,
    AlreadyExists,
    InvalidArgument,
    FailedPrecondition,
    ResourceExhausted,
    Unimplemented,
    Unavailable,
    Internal,
}

impl Code {
    pub const ALL: [Code; 8] = [
        Code::NotFound,
        Code::AlreadyExists,
        Code::InvalidArgument,
        Code::FailedPrecondition,
        Code::ResourceExhausted,
        Code::Unimplemented,
        Code::Unavailable,
        Code::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Code::NotFound => "not_found",
            Code::AlreadyExists => "already_exists",
            Code::InvalidArgument => "invalid_argument",
            Code::FailedPrecondition => "failed_precondition",
            Code::ResourceExhausted => "resource_exhausted",
            Code::Unimplemented => "unimplemented",
            Code::Unavailable => "unavailable",
            Code::Internal => "internal",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("snapshot {0:?} does not exist")]
    NotFound(String),
    #[error("snapshot {0:?} already exists")]
    AlreadyExists(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    #[error("resource exhausted: {0}")]
    ResourceExhausted(String),
    /// A request this backend cannot carry out at all, whatever the state (containerd's
    /// `ErrNotImplemented`): retrying never helps.
    #[error("not implemented: {0}")]
    Unimplemented(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// A lower layer's own error (the metadata store, a storage driver), kept whole.
    #[error(transparent)]
    Layer(LayerError),
    #[error("internal: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub fn code(&self) -> Code {
        match self {
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::Unimplemented(_) => Code::Unimplemented,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Io { source, .. } => io_code(source),
            Error::Layer(err) => err.code(),
            Error::Internal(_) => Code::Internal,
        }
    }
}

/// An error of a lower layer with the class containerd should see: the error itself
/// is kept, not its text, so its cause chain survives to the logs and a caller may
/// still downcast it.
#[derive(Debug)]
pub struct LayerError {
    code: Code,
    inner: Box<dyn std::error::Error + Send + Sync + 'static>,
}

impl LayerError {
    pub fn new(code: Code, err: impl std::error::Error + Send + Sync + 'static) -> Self {
        LayerError {
            code,
            inner: Box::new(err),
        }
    }

    pub fn code(&self) -> Code {
        self.code
    }

    /// The lower layer's error, for a caller that knows its type.
    pub fn get_ref(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self.inner.as_ref()
    }
}

impl std::fmt::Display for LayerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl std::error::Error for LayerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner.source()
    }
}

impl Error {
    /// Wraps a lower layer's error whole, as `code`.
    pub fn layer(code: Code, err: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Layer(LayerError::new(code, err))
    }
}

/// A full disk or quota is the caller's resource problem, not our bug: report it as
/// such so orchestrators back off instead of retrying blindly.
fn io_code(err: &io::Error) -> Code {
    match err.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => Code::ResourceExhausted,
        io::ErrorKind::ReadOnlyFilesystem => Code::FailedPrecondition,
        _ => Code::Internal,
    }
}

/// Attaches a human context to I/O results without spelling out `map_err` everywhere.
pub trait IoContext<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::io(what(), source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_full_is_resource_exhausted() {
        let err = Error::io("write", io::Error::from_raw_os_error(28));
        assert_eq!(err.code(), Code::ResourceExhausted);
        let err = Error::io("write", io::Error::from_raw_os_error(30));
        assert_eq!(err.code(), Code::FailedPrecondition);
        let err = Error::io("write", io::Error::from_raw_os_error(5));
        assert_eq!(err.code(), Code::Internal);
    }

    #[test]
    fn a_layer_error_keeps_its_class_text_and_causes() {
        #[derive(Debug, thiserror::Error)]
        #[error("store full")]
        struct Full(#[source] io::Error);
        let err = Error::layer(
            Code::ResourceExhausted,
            Full(io::Error::from_raw_os_error(28)),
        );
        assert_eq!(err.code(), Code::ResourceExhausted);
        assert_eq!(err.to_string(), "store full");
        let cause = std::error::Error::source(&err).expect("the cause survives");
        assert_eq!(
            cause
                .downcast_ref::<io::Error>()
                .and_then(io::Error::raw_os_error),
            Some(28)
        );
        let Error::Layer(layer) = &err else {
            panic!("{err:?}")
        };
        assert!(layer.get_ref().downcast_ref::<Full>().is_some());
    }
}
