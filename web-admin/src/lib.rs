//! The web admin: an axum router serving the operator's UI, the JSON API,
//! `/metrics` and `/healthz`.
//!
//! It will define the traits it needs (`Rooms`, `Directory`, `Mailboxes`, `Overlay`,
//! `Relays`), which the `supernode` crate implements, so that this crate never imports
//! the service it manages. Its issue has not been taken yet, so it holds no code.
