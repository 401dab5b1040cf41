//! The core's error type. Every fallible core call returns [`Error`]; the binding layer maps
//! each variant onto one Python exception class in one place (`py.rs`).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "dimension mismatch: {what} has {got} values per vector, the index has dim={expected}"
    )]
    DimensionMismatch {
        what: &'static str,
        expected: usize,
        got: usize,
    },

    #[error("invalid vector: {0}")]
    InvalidVector(String),

    #[error("duplicate key {key} in one call (rows {first} and {second}): pass each key once")]
    DuplicateKey {
        key: u64,
        first: usize,
        second: usize,
    },

    #[error("{0}")]
    KeyNotFound(String),

    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    #[error("corrupt index file {path}: {reason}")]
    CorruptIndex { path: PathBuf, reason: String },

    #[error("index file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "this index is a read-only memory-mapped view of {0}: load it with Index.load to modify it"
    )]
    ReadOnly(PathBuf),

    #[error("version conflict: expected version {expected}, the slot holds version {actual}")]
    VersionConflict { expected: u64, actual: u64 },

    #[error("usearch: {0}")]
    Engine(String),
}

impl Error {
    pub(crate) fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::CorruptIndex {
            path: path.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

impl From<cxx::Exception> for Error {
    fn from(e: cxx::Exception) -> Self {
        Error::Engine(e.what().to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
