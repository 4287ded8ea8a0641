//! One participant's RTP stream in each direction.

use std::net::SocketAddr;
use std::time::Instant;

use crate::codec::{AudioDecoder, AudioEncoder, CodecKind, Decoded, EncoderSettings, MAX_PAYLOAD};
use crate::dtmf::{DtmfDetector, TelephoneEvent};
use crate::error::Result;
use crate::jitter::{Arrival, JitterBuffer, JitterConfig, JitterStats, Playout, PushOutcome};
use crate::limiter::Limiter;
use crate::resample::Resampler;
use crate::rtp::{RtpHeader, RtpView};
use crate::simd;
use crate::speaker::SILENCE_DBOV;

/// Identifies a leg across the mixer (chosen by the mixer's handle, unique per process).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LegId(pub u64);

/// What was negotiated for a leg (by SDP offer/answer in the SIP service).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LegConfig {
    /// The audio codec.
    pub codec: CodecKind,
    /// Payload type of the audio codec, both directions.
    pub payload_type: u8,
    /// Payload type of RFC 4733 telephone-event, if negotiated.
    pub telephone_event_pt: Option<u8>,
    /// Extension id of the RFC 6464 audio level, if negotiated.
    pub audio_level_ext: Option<u8>,
    /// Where to send until RTP arrives (the SDP's connection address and port). Once the
    /// leg's RTP arrives, the leg answers to the address it actually comes from.
    pub remote: SocketAddr,
    /// Our SSRC towards this participant.
    pub ssrc: u32,
    /// First sequence number we send (random, RFC 3550 §5.1).
    pub initial_sequence: u16,
    /// First timestamp we send (random, RFC 3550 §5.1).
    pub initial_timestamp: u32,
    /// Encoder settings for Opus (ignored by G.711).
    pub encoder: EncoderSettings,
}

/// Per-leg counters: what arrived, what was wrong with it, what was repaired and sent.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LegStats {
    /// The jitter buffer's counters (received, lost, late, duplicated, jitter, depth).
    pub jitter: JitterStats,
    /// Datagrams that are not RTP (too short, bad version, bad CSRC, extension or padding).
    pub malformed: u64,
    /// RTP packets with a payload type that was not negotiated.
    pub unknown_payload_type: u64,
    /// Datagrams larger than any RTP packet we accept.
    pub oversize: u64,
    /// Payloads the decoder rejected (concealed instead).
    pub decode_errors: u64,
    /// Frames that failed to encode (not sent).
    pub encode_errors: u64,
    /// Frames decoded from a packet.
    pub decoded: u64,
    /// Lost frames rebuilt from Opus in-band FEC.
    pub fec_recovered: u64,
    /// Lost frames concealed (PLC or fade-out).
    pub concealed: u64,
    /// DTMF digits received.
    pub dtmf_digits: u64,
    /// Times the leg's media source address changed (symmetric RTP latching).
    pub relatched: u64,
    /// RTP packets sent to the participant.
    pub packets_sent: u64,
    /// Payload and header bytes sent.
    pub bytes_sent: u64,
}

/// Largest datagram the receive path accepts (an Ethernet MTU).
pub const MAX_DATAGRAM: usize = 1500;

/// What the receive path made of a datagram, for the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Received {
    /// Audio went into the jitter buffer, or was counted and dropped.
    Audio,
    /// A DTMF key press completed.
    Digit(char),
    /// Nothing usable.
    Nothing,
}

pub(crate) struct Leg {
    pub(crate) id: LegId,
    pub(crate) config: LegConfig,
    jitter: JitterBuffer,
    decoder: AudioDecoder,
    pub(crate) encoder: AudioEncoder,
    up: Resampler,
    pub(crate) down: Resampler,
    pub(crate) limiter: Limiter,
    pcm_native: Vec<f32>,
    /// This tick's decoded frame at the room's rate.
    pub(crate) pcm_room: Vec<f32>,
    pub(crate) decoded: bool,
    /// This tick's level (dBov) for speaker selection; `None` if it may not talk.
    pub(crate) level: Option<f32>,
    /// Consecutive ticks whose frame was below the activity threshold.
    pub(crate) quiet_ticks: u32,
    pub(crate) group: usize,
    pub(crate) remote: SocketAddr,
    latched: bool,
    pub(crate) muted: bool,
    pub(crate) held: bool,
    pub(crate) last_rtp: Instant,
    pub(crate) timed_out: bool,
    sequence: u16,
    timestamp: u32,
    last_sent_silent: bool,
    dtmf: DtmfDetector,
    pub(crate) stats: LegStats,
}

impl Leg {
    pub(crate) fn new(id: LegId, config: LegConfig, room_rate: u32, now: Instant) -> Result<Self> {
        let native = config.codec.native_rate();
        let room_frame = (room_rate / 50) as usize;
        Ok(Leg {
            id,
            jitter: JitterBuffer::new(JitterConfig::new(config.codec.clock_rate())),
            decoder: AudioDecoder::new(config.codec)?,
            encoder: AudioEncoder::new(config.codec, &config.encoder)?,
            up: Resampler::new(native, room_rate)?,
            down: Resampler::new(room_rate, native)?,
            limiter: Limiter::new(),
            pcm_native: vec![0.0; config.codec.frame_samples()],
            pcm_room: vec![0.0; room_frame],
            decoded: false,
            level: None,
            quiet_ticks: 0,
            group: 0,
            remote: config.remote,
            latched: false,
            muted: false,
            held: false,
            last_rtp: now,
            timed_out: false,
            sequence: config.initial_sequence,
            timestamp: config.initial_timestamp,
            last_sent_silent: true,
            dtmf: DtmfDetector::new(),
            stats: LegStats::default(),
            config,
        })
    }

    /// Rebuilds the rate converters when the room's mixing rate changes.
    pub(crate) fn set_room_rate(&mut self, room_rate: u32) -> Result<()> {
        let native = self.config.codec.native_rate();
        self.up = Resampler::new(native, room_rate)?;
        self.down = Resampler::new(room_rate, native)?;
        self.pcm_room = vec![0.0; (room_rate / 50) as usize];
        Ok(())
    }

    pub(crate) fn can_talk(&self) -> bool {
        !self.muted && !self.held
    }

    pub(crate) fn stats(&self) -> LegStats {
        LegStats {
            jitter: self.jitter.stats(),
            ..self.stats
        }
    }

    pub(crate) fn hold(&mut self, held: bool, now: Instant) {
        if self.held != held {
            self.held = held;
            self.jitter.reset();
            self.last_rtp = now;
            self.timed_out = false;
        }
    }

    /// The receive path: every datagram of the leg comes through here. Bad input is
    /// counted and dropped; it never reaches the decoder or disturbs other legs.
    pub(crate) fn receive(&mut self, from: SocketAddr, data: &[u8], now: Instant) -> Received {
        if data.len() > MAX_DATAGRAM {
            self.stats.oversize += 1;
            return Received::Nothing;
        }
        let Ok(rtp) = RtpView::parse(data) else {
            self.stats.malformed += 1;
            return Received::Nothing;
        };
        let pt = rtp.payload_type();
        if Some(pt) == self.config.telephone_event_pt {
            self.last_rtp = now;
            self.latch(from);
            let Some(event) = TelephoneEvent::parse(rtp.payload()) else {
                self.stats.malformed += 1;
                return Received::Nothing;
            };
            return match self.dtmf.push(rtp.timestamp(), &event) {
                Some(d) => {
                    self.stats.dtmf_digits += 1;
                    Received::Digit(d)
                }
                None => Received::Nothing,
            };
        }
        if pt != self.config.payload_type {
            self.stats.unknown_payload_type += 1;
            return Received::Nothing;
        }
        if self.held {
            // On hold the caller may still send (music on hold): it keeps the leg alive
            // but is not mixed.
            self.last_rtp = now;
            return Received::Audio;
        }
        let level = self
            .config
            .audio_level_ext
            .and_then(|id| rtp.audio_level(id))
            .map(|l| l.level);
        let arrival = Arrival {
            ssrc: rtp.ssrc(),
            sequence: rtp.sequence(),
            timestamp: rtp.timestamp(),
            marker: rtp.marker(),
            payload: rtp.payload(),
            level,
        };
        match self.jitter.push(&arrival, now) {
            PushOutcome::Accepted | PushOutcome::SsrcChanged => {
                self.last_rtp = now;
                self.timed_out = false;
                self.latch(from);
            }
            PushOutcome::Duplicate | PushOutcome::Late | PushOutcome::Probation => {
                self.last_rtp = now;
            }
            PushOutcome::ForeignSsrc | PushOutcome::TooLarge => {}
        }
        Received::Audio
    }

    fn latch(&mut self, from: SocketAddr) {
        if from != self.remote {
            if self.latched {
                self.stats.relatched += 1;
            }
            self.remote = from;
        }
        self.latched = true;
    }

    /// The level of this tick's frame from its RFC 6464 extension, without decoding;
    /// `None` when the leg does not send levels or the frame carries none.
    pub(crate) fn peek_level(&self, now: Instant) -> Option<f32> {
        self.config.audio_level_ext?;
        self.jitter.peek_level(now).map(|l| -f32::from(l.min(127)))
    }

    /// Takes this tick's frame out of the jitter buffer and decodes it (or repairs a
    /// loss) into `pcm_room`. Returns its level in dBov.
    pub(crate) fn decode(&mut self, now: Instant) -> f32 {
        self.decoded = true;
        let outcome = match self.jitter.pop(now) {
            Playout::Frame { payload, .. } => self.decoder.decode(payload, &mut self.pcm_native),
            Playout::Lost { next } => Ok(self.decoder.recover(next, &mut self.pcm_native)),
            Playout::Silence => {
                self.pcm_room.fill(0.0);
                return SILENCE_DBOV;
            }
        };
        match outcome {
            Ok(Decoded::Packet) => self.stats.decoded += 1,
            Ok(Decoded::Fec) => self.stats.fec_recovered += 1,
            Ok(Decoded::Concealed) => self.stats.concealed += 1,
            Err(_) => {
                self.stats.decode_errors += 1;
                self.stats.concealed += 1;
            }
        }
        self.up.process(&self.pcm_native, &mut self.pcm_room);
        let level = simd::level(&self.pcm_native);
        let ms = level.sum_squares / self.pcm_native.len().max(1) as f32;
        if ms > 0.0 {
            (10.0 * ms.log10()).max(SILENCE_DBOV)
        } else {
            SILENCE_DBOV
        }
    }

    /// Advances the jitter buffer without decoding (a silent participant).
    pub(crate) fn skip(&mut self, now: Instant) {
        let _ = self.jitter.pop(now);
    }

    /// The RTP header for the next packet to this participant, advancing the sequence
    /// number and timestamp so they stay continuous whatever stream the payload came
    /// from; the marker bit starts a talk spurt.
    pub(crate) fn next_header(&mut self, silent: bool) -> RtpHeader {
        let header = RtpHeader {
            marker: !silent && self.last_sent_silent,
            payload_type: self.config.payload_type,
            sequence: self.sequence,
            timestamp: self.timestamp,
            ssrc: self.config.ssrc,
            audio_level: None,
        };
        self.last_sent_silent = silent;
        self.sequence = self.sequence.wrapping_add(1);
        self.timestamp = self
            .timestamp
            .wrapping_add(self.config.codec.frame_samples() as u32);
        header
    }

    /// Lets a frame pass unsent (the leg is on hold): RFC 3550 §5.1 has the timestamp
    /// advance for every frame whether it is sent or not, and the next packet starts a
    /// talk spurt.
    pub(crate) fn skip_frame(&mut self) {
        self.last_sent_silent = true;
        self.timestamp = self
            .timestamp
            .wrapping_add(self.config.codec.frame_samples() as u32);
    }

    /// Encodes this participant's own mix (`pcm` at the room rate, limited) into
    /// `payload`, converting to the codec's rate. Returns the payload length.
    pub(crate) fn encode_own(
        &mut self,
        pcm: &[f32],
        payload: &mut [u8; MAX_PAYLOAD],
    ) -> Result<usize> {
        let native = self.config.codec.frame_samples();
        if self.down.from_rate() == self.down.to_rate() {
            self.encoder.encode(pcm, payload)
        } else {
            self.down.process(pcm, &mut self.pcm_native);
            self.encoder.encode(&self.pcm_native[..native], payload)
        }
    }
}
