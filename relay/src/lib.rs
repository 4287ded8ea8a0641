//! The relay: a TURN server (RFC 8656) and media anchoring for phones behind NAT.
//!
//! This crate owns the sans-IO TURN core: STUN message coding ([`stun`]), the peer
//! address policy ([`policy`]) and the TURN server state machine ([`server`]). No sockets, clocks or
//! threads live here: the driver passes bytes and `now` in and sends what comes out.

mod allocation;
mod error;
pub mod policy;
pub mod server;
pub mod stun;

pub use error::Error;
