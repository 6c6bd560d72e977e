use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "metadata file {path} is corrupt ({detail}); refusing to start rather than reset it: restore it from a backup or move it away to start empty"
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "metadata file {path} has schema version {found}, newer than this rustlayer understands ({supported}); upgrade rustlayer"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error(
        "metadata file {path} belongs to backend {found:?}, not {expected:?}; use a separate root per backend"
    )]
    WrongBackend {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("metadata file {path} is full or its disk is: {source}")]
    Full {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("metadata file {path} is on a read-only filesystem: {source}")]
    ReadOnly {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot make an identity for metadata file {path}: {source}")]
    Identity {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("all {max} snapshot ids are in use or awaiting cleanup")]
    IdsExhausted { max: u64 },
    #[error("metadata: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("metadata holds an invalid {what}: {value}")]
    Invalid { what: &'static str, value: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for rustlayer_core::Error {
    fn from(err: Error) -> Self {
        use rusqlite::ffi::ErrorCode;
        use rustlayer_core::Code;
        let code = match &err {
            Error::Full { .. } | Error::IdsExhausted { .. } => Code::ResourceExhausted,
            Error::ReadOnly { .. } => Code::FailedPrecondition,
            Error::Sqlite(rusqlite::Error::SqliteFailure(e, _))
                if e.code == ErrorCode::DiskFull =>
            {
                Code::ResourceExhausted
            }
            Error::Sqlite(rusqlite::Error::SqliteFailure(e, _))
                if e.code == ErrorCode::ReadOnly =>
            {
                Code::FailedPrecondition
            }
            _ => Code::Internal,
        };
        rustlayer_core::Error::layer(code, err)
    }
}
