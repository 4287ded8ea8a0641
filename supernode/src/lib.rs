//! The supernode service: the composition root that runs the SIP service
//! (transport, transactions, registrar with digest authentication), the TURN relay
//! (`turn`), the conference mixer, and the typed configuration, with its data in SQLite.
//!
//! Protocol cores are sans-IO (`sip::intake`, `sip::transaction`, `sip::registrar`,
//! `sip::core`); `node` is the thin tokio driver that owns the sockets.

pub mod admin;
pub mod config;
pub mod error;
pub mod metrics;
mod net;
pub mod node;
pub mod sip;
pub mod store;
pub mod turn;

pub use error::{Error, Result};
