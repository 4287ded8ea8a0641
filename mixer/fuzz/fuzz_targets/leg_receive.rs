//! Fuzzes a room's receive path end to end: datagrams from three legs (Opus
//! with an RFC 6464 audio level and telephone-event, PCMU with
//! telephone-event, PCMA) go through `Room::handle_packet` into the jitter
//! buffers, decoders and DTMF detectors, with ticks on a fake clock in
//! between. Nothing a participant sends may panic the room.
//!
//! Input format, repeated until the data runs out:
//!
//! ```text
//! ctrl: u8        bits 0-1 leg (0 Opus, 1 PCMU, 2 PCMA, 3 control op)
//!                 bit  2   prepend a valid RTP header (else raw datagram)
//!                 bit  3   as telephone-event (synthesized header only)
//!                 bits 4-5 clock step after the datagram: 0, 7, 20, 60 ms
//!                 bit  6   from the alternate source address
//!                 bit  7   synthesized header carries an audio level
//! len:  u16 le    datagram (or payload) length, clamped to what is left
//! mods: u8        synthesized header only: bits 0-2 sequence offset -3..=4,
//!                 bit 3 alternate SSRC, bit 4 marker, bit 5 new DTMF event,
//!                 bits 6-7 timestamp skew
//! level: u8       synthesized header with bit 7 only: V flag and -dBov
//! bytes           the datagram / payload
//! ```
//!
//! Control ops (leg 3) read one byte: bits 0-1 target leg, bits 2-3 op
//! (mute toggle, hold toggle, clock jump of up to ~40 s, unknown leg).

#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use mixer::rtp::{AudioLevel, RtpHeader, RtpView};
use mixer::{
    CodecKind, EncoderSettings, LegConfig, LegId, Outbox, Room, RoomConfig, RoomEvent, RoomId,
};

/// Telephone-event payload type negotiated on the legs that have one.
const TE_PT: u8 = 101;
/// Ticks run per input at most, so one input cannot run for seconds.
const MAX_TICKS: usize = 200;

struct LegSpec {
    id: LegId,
    codec: CodecKind,
    payload_type: u8,
    telephone_event_pt: Option<u8>,
    audio_level_ext: Option<u8>,
}

const LEGS: [LegSpec; 3] = [
    LegSpec {
        id: LegId(1),
        codec: CodecKind::Opus,
        payload_type: 111,
        telephone_event_pt: Some(TE_PT),
        audio_level_ext: Some(1),
    },
    LegSpec {
        id: LegId(2),
        codec: CodecKind::Pcmu,
        payload_type: 0,
        telephone_event_pt: Some(TE_PT),
        audio_level_ext: None,
    },
    LegSpec {
        id: LegId(3),
        codec: CodecKind::Pcma,
        payload_type: 8,
        telephone_event_pt: None,
        audio_level_ext: None,
    },
];

/// What the fuzzer's sender remembers per leg to build plausible headers.
#[derive(Clone, Copy)]
struct Sender {
    sequence: u16,
    timestamp: u32,
    dtmf_timestamp: u32,
    muted: bool,
    held: bool,
}

struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.data.split_first()?;
        self.data = rest;
        Some(b)
    }
    fn u16(&mut self) -> Option<u16> {
        let (&b, rest) = self.data.split_first_chunk::<2>()?;
        self.data = rest;
        Some(u16::from_le_bytes(b))
    }
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }
}

fn addr(alternate: bool) -> SocketAddr {
    if alternate {
        SocketAddr::from(([10, 0, 0, 2], 40_002))
    } else {
        SocketAddr::from(([10, 0, 0, 1], 40_000))
    }
}

/// Runs every tick that is due, checks what it produced, drains the events.
fn run_ticks(room: &mut Room, now: Instant, out: &mut Outbox, ticks: &mut usize) {
    while let Some(due) = room.poll_timeout() {
        if due > now || *ticks >= MAX_TICKS {
            break;
        }
        *ticks += 1;
        out.clear();
        room.tick(now, out);
        for (packet, bytes) in out.iter() {
            let spec = LEGS.iter().find(|s| s.id == packet.leg);
            assert!(spec.is_some(), "packet for an unknown leg");
            let view = RtpView::parse(bytes);
            assert!(
                view.is_ok_and(|v| spec.is_some_and(|s| v.payload_type() == s.payload_type)),
                "the room sent a malformed packet"
            );
        }
    }
    while let Some(event) = room.poll_event() {
        match event {
            RoomEvent::Dtmf { leg, digit } => {
                assert!(LEGS.iter().any(|s| s.id == leg));
                assert!(
                    digit.is_ascii_digit() || matches!(digit, '*' | '#' | 'A'..='D'),
                    "bad digit {digit:?}"
                );
            }
            RoomEvent::TalkingStarted(leg)
            | RoomEvent::TalkingStopped(leg)
            | RoomEvent::LegTimedOut(leg) => assert!(LEGS.iter().any(|s| s.id == leg)),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut now = Instant::now();
    let mut room = Room::new(RoomId(1), RoomConfig::default());
    let mut senders = [Sender {
        sequence: 1000,
        timestamp: 0,
        dtmf_timestamp: 0,
        muted: false,
        held: false,
    }; 3];
    for (i, spec) in LEGS.iter().enumerate() {
        let config = LegConfig {
            codec: spec.codec,
            payload_type: spec.payload_type,
            telephone_event_pt: spec.telephone_event_pt,
            audio_level_ext: spec.audio_level_ext,
            remote: addr(false),
            ssrc: 0x5000 + i as u32,
            initial_sequence: 1,
            initial_timestamp: 0,
            // Complexity 0 keeps the listeners' encodes cheap; the encoder is
            // not what this target is about.
            encoder: EncoderSettings {
                complexity: 0,
                ..EncoderSettings::default()
            },
        };
        room.add_leg(spec.id, config, now).expect("add_leg");
    }
    let mut out = Outbox::new();
    let mut ticks = 0usize;
    let mut input = Input { data };
    let mut packet = [0u8; 2048];

    while let Some(ctrl) = input.byte() {
        let which = usize::from(ctrl & 3);
        if which == 3 {
            let Some(op) = input.byte() else { break };
            let target = usize::from(op & 3) % 3;
            let id = LEGS[target].id;
            match (op >> 2) & 3 {
                0 => {
                    senders[target].muted ^= true;
                    assert!(room.set_muted(id, senders[target].muted).is_ok());
                }
                1 => {
                    senders[target].held ^= true;
                    assert!(room.set_held(id, senders[target].held, now).is_ok());
                }
                2 => now += Duration::from_millis(u64::from(op >> 4) * 2_500),
                _ => {
                    assert!(room
                        .handle_packet(LegId(99), addr(false), &packet[..12], now)
                        .is_err());
                }
            }
            run_ticks(&mut room, now, &mut out, &mut ticks);
            continue;
        }
        let spec = &LEGS[which];
        let Some(len) = input.u16() else { break };
        let len = usize::from(len);
        let synthesize = ctrl & 0x04 != 0;
        let from = addr(ctrl & 0x40 != 0);

        let datagram: &[u8] = if synthesize {
            let Some(mods) = input.byte() else { break };
            let level = if ctrl & 0x80 != 0 {
                let Some(level) = input.byte() else { break };
                Some(level)
            } else {
                None
            };
            let payload = input.bytes(len.min(packet.len() - 20));
            let sender = &mut senders[which];
            let dtmf = ctrl & 0x08 != 0;
            let offset = i16::from(mods & 7) - 3;
            let sequence = sender.sequence.wrapping_add_signed(offset);
            let skew = u32::from(mods >> 6) * 7;
            let timestamp = if dtmf {
                if mods & 0x20 != 0 {
                    sender.dtmf_timestamp = sender.timestamp;
                }
                sender.dtmf_timestamp
            } else {
                sender.timestamp.wrapping_add(skew)
            };
            let header = RtpHeader {
                marker: mods & 0x10 != 0,
                payload_type: if dtmf {
                    spec.telephone_event_pt.unwrap_or(TE_PT)
                } else {
                    spec.payload_type
                },
                sequence,
                timestamp,
                ssrc: if mods & 0x08 != 0 {
                    0xdead_beef
                } else {
                    0x1234 + which as u32
                },
                audio_level: level.map(|level| {
                    (
                        spec.audio_level_ext.unwrap_or(2),
                        AudioLevel {
                            voice: level & 0x80 != 0,
                            level: level & 0x7f,
                        },
                    )
                }),
            };
            sender.sequence = sender.sequence.wrapping_add(1);
            if !dtmf {
                sender.timestamp = sender
                    .timestamp
                    .wrapping_add(spec.codec.frame_samples() as u32);
            }
            let hlen = header.write(&mut packet).expect("header write");
            packet[hlen..hlen + payload.len()].copy_from_slice(payload);
            &packet[..hlen + payload.len()]
        } else {
            input.bytes(len)
        };

        assert!(room.handle_packet(spec.id, from, datagram, now).is_ok());

        now += match (ctrl >> 4) & 3 {
            0 => Duration::ZERO,
            1 => Duration::from_millis(7),
            2 => Duration::from_millis(20),
            _ => Duration::from_millis(60),
        };
        run_ticks(&mut room, now, &mut out, &mut ticks);
    }

    // Play out what is still buffered (decoders and concealment), bounded.
    for _ in 0..12 {
        now += Duration::from_millis(20);
        run_ticks(&mut room, now, &mut out, &mut ticks);
    }
    for spec in &LEGS {
        let stats = room.leg_stats(spec.id);
        assert!(stats.is_some());
    }
});
