//! The crate's one error type.

use crate::codec::CodecKind;

/// Why a mixer operation failed. Each variant names something a caller can act on.
#[derive(Debug, thiserror::Error)]
pub enum MixerError {
    /// libopus refused a call: the message says which and why.
    #[error("opus {context}: {source}")]
    Opus {
        /// What the mixer was doing.
        context: &'static str,
        /// libopus' own error.
        #[source]
        source: opus::Error,
    },
    /// An encoder setting is outside what the codec accepts.
    #[error("invalid encoder setting: {0}")]
    InvalidSetting(&'static str),
    /// The codec cannot run at the rate asked for.
    #[error("codec {codec:?} cannot run at {rate} Hz")]
    UnsupportedRate {
        /// The codec.
        codec: CodecKind,
        /// The rate asked for.
        rate: u32,
    },
    /// A rate conversion the resampler does not provide.
    #[error(transparent)]
    Resample(#[from] crate::resample::ResampleError),
    /// No room with this id exists (already destroyed, or never created).
    #[error("no room {0}")]
    NoSuchRoom(u64),
    /// No leg with this id exists in the room.
    #[error("no leg {0}")]
    NoSuchLeg(u64),
    /// A leg or room with this id exists already.
    #[error("id {0} is already in use")]
    DuplicateId(u64),
    /// The room holds as many legs as it was created for.
    #[error("room {0} is full")]
    RoomFull(u64),
    /// The mixer threads have stopped, so commands cannot reach them.
    #[error("the mixer has shut down")]
    ShutDown,
    /// A shard's command queue is full: the caller should retry later rather than block.
    #[error("mixer shard {0} is busy (command queue full)")]
    Busy(usize),
    /// A socket or thread operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What the mixer was doing.
        context: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

impl MixerError {
    pub(crate) fn opus(context: &'static str) -> impl FnOnce(opus::Error) -> MixerError {
        move |source| MixerError::Opus { context, source }
    }
    pub(crate) fn io(context: &'static str) -> impl FnOnce(std::io::Error) -> MixerError {
        move |source| MixerError::Io { context, source }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = MixerError> = std::result::Result<T, E>;
