//! The crate's one error type.

/// Why a STUN message, a ChannelData frame or a configuration value was refused.
///
/// Every variant names a cause the network (or the operator) produced; the server
/// core maps them to STUN error responses or silent drops, never to panics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The input ended before the header or an attribute it announced.
    #[error("truncated: needed {needed} bytes, had {had}")]
    Truncated {
        /// Bytes the structure needs.
        needed: usize,
        /// Bytes that were there.
        had: usize,
    },
    /// The first two bits were not zero or the magic cookie was wrong: not STUN.
    #[error("not a STUN message")]
    NotStun,
    /// The header's length is not a multiple of 4 or disagrees with the datagram.
    #[error("bad STUN message length {0}")]
    BadLength(usize),
    /// An attribute's length runs past the end of the message.
    #[error("attribute 0x{0:04x} runs past the end of the message")]
    AttributeOverrun(u16),
    /// An attribute value has the wrong size or content for its type.
    #[error("malformed attribute 0x{0:04x}")]
    BadAttribute(u16),
    /// FINGERPRINT did not match the CRC-32 of the message.
    #[error("FINGERPRINT mismatch")]
    BadFingerprint,
    /// An attribute followed FINGERPRINT, which must be last.
    #[error("attribute after FINGERPRINT")]
    FingerprintNotLast,
    /// MESSAGE-INTEGRITY(-SHA256) is absent.
    #[error("no MESSAGE-INTEGRITY")]
    NoIntegrity,
    /// MESSAGE-INTEGRITY(-SHA256) did not verify with the key.
    #[error("MESSAGE-INTEGRITY mismatch")]
    IntegrityMismatch,
    /// A ChannelData channel number outside 0x4000-0x7FFF.
    #[error("channel number 0x{0:04x} outside 0x4000-0x7FFF")]
    BadChannelNumber(u16),
    /// A message grew past the 16-bit STUN length field.
    #[error("message too long to encode")]
    TooLong,
    /// A CIDR string could not be parsed.
    #[error("bad CIDR {0:?}")]
    BadCidr(String),
}
