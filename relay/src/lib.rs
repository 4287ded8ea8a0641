//! The relay: a TURN server (RFC 8656) and media anchoring for phones behind NAT.
//!
//! This crate will own the allocation table and TURN message handling as a sans-IO
//! core, the batched UDP data path (ChannelData, Send and Data indications), and the
//! SDP-rewritten media-anchoring sessions used for callers that do not speak ICE.
//! Its issue has not been taken yet, so it holds no code.
