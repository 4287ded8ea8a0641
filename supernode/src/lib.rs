//! The supernode service: the composition root that will hold the SIP service
//! (transport, transactions, registrar, proxy, conference UAS), the location service
//! behind the DHT overlay, voicemail and the typed configuration.
//!
//! Today it only starts the conference mixer (the `mixer` crate); the SIP service and
//! the other parts arrive with their issues.
