//! The conference mixer of supernode: rooms, legs, jitter buffers, codecs, the SIMD
//! mix, speaker selection and RTP packetization. No SIP in here.
//!
//! A [`Room`] is a sans-IO state machine: datagrams and time go in, RTP packets and
//! events come out. Its cost grows with the number of talkers K, not with the number
//! of participants: the K loudest legs (chosen from their RFC 6464 levels without
//! decoding anyone else) are mixed, each talker gets its own mix-minus, and every other
//! participant shares one encode of the full mix per codec and encoder settings.
//! [`Mixer`] runs rooms on sharded threads that own their legs' sockets.
//!
//! ```
//! use std::time::Instant;
//! use mixer::{CodecKind, EncoderSettings, LegConfig, LegId, Outbox, Room, RoomConfig, RoomId};
//!
//! let now = Instant::now();
//! let mut room = Room::new(RoomId(1), RoomConfig::default());
//! room.add_leg(LegId(7), LegConfig {
//!     codec: CodecKind::Pcmu,
//!     payload_type: 0,
//!     telephone_event_pt: Some(101),
//!     audio_level_ext: None,
//!     remote: "127.0.0.1:40000".parse().unwrap(),
//!     ssrc: 0x1234,
//!     initial_sequence: 1,
//!     initial_timestamp: 0,
//!     encoder: EncoderSettings::default(),
//! }, now).unwrap();
//! let mut out = Outbox::new();
//! let due = room.poll_timeout().unwrap();
//! room.tick(due, &mut out);
//! assert_eq!(out.len(), 1); // the listener hears the (silent) room
//! ```

pub mod codec;
pub mod dtmf;
mod engine;
pub mod error;
pub mod g711;
pub mod jitter;
mod leg;
pub mod limiter;
pub mod netem;
mod outbox;
pub mod resample;
mod room;
pub mod rtp;
pub mod signal;
#[allow(unsafe_code)]
pub mod simd;
pub mod speaker;

pub use codec::{CodecKind, EncoderSettings};
pub use engine::{LegHandle, Mixer, MixerConfig, MixerEvent};
pub use error::{MixerError, Result};
pub use leg::{LegConfig, LegId, LegStats};
pub use outbox::{OutPacket, Outbox};
pub use room::{MixStrategy, Prompt, Room, RoomConfig, RoomEvent, RoomId, TICK};
