//! The crate's one error type: each variant says what to fix.

use std::path::PathBuf;

/// Why a supernode operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The SQLite database refused an operation.
    #[error("database: {0}")]
    Database(#[from] rusqlite::Error),
    /// The data directory cannot be created or read.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The database was written by a newer supernode.
    #[error("the database has schema version {found}, this supernode knows up to {known}: upgrade supernode")]
    SchemaTooNew {
        /// Version found.
        found: i64,
        /// Newest version this build knows.
        known: i64,
    },
    /// The data directory serves another domain (digest HA1 values depend on it).
    #[error("the data directory belongs to domain {stored:?}, not {asked:?}: pass --domain {stored} or use another --data directory")]
    DomainMismatch {
        /// The domain recorded in the data directory.
        stored: String,
        /// The domain asked for.
        asked: String,
    },
    /// Not a usable user part of a SIP URI.
    #[error("invalid name {0:?}: use 1-64 letters, digits or - _ . ! ~ * ' +")]
    InvalidName(String),
    /// A name reserved for the node's own services.
    #[error("{0:?} is reserved")]
    ReservedName(String),
    /// Rooms and users share one namespace.
    #[error("{0:?} is already a user or a room")]
    NameTaken(String),
    /// A room PIN must be digits.
    #[error("a PIN is 1-16 digits")]
    InvalidPin,
    /// A room must admit someone.
    #[error("--max must be at least 1")]
    InvalidRoomSize,
    /// The configuration file or a flag is wrong.
    #[error("configuration: {0}")]
    Config(String),
    /// A socket or file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What the node was doing.
        context: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The mixer failed.
    #[error(transparent)]
    Mixer(#[from] mixer::MixerError),
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
