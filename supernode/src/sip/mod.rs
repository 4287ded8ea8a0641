//! The SIP service: intake (normalisation before rsip), transactions (RFC 3261 §17,
//! RFC 6026), digest authentication, the registrar and its location service, and the
//! core that routes requests among them.

pub mod auth_limit;
pub mod conference;
pub mod core;
pub mod digest;
pub mod flood;
pub mod headers;
pub mod intake;
pub mod location;
pub mod message;
pub mod proxy;
pub mod registrar;
pub mod sdp;
pub mod stun_keepalive;
pub mod transaction;
