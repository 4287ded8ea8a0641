//! Audio codecs a leg can negotiate: Opus (48 kHz, used mono), PCMU and PCMA.
//!
//! Decoders and encoders work on `f32` frames of one 20 ms packet time at the codec's
//! native rate, so the room converts rates once and the SIMD kernels see one format.

use crate::error::{MixerError, Result};
use crate::{g711, simd};

/// Packet time of every leg: 20 ms, the SDP default phones use.
pub const FRAME_MS: u32 = 20;
/// Largest Opus packet (RFC 6716 §3.2.1): the payload buffers are sized for it.
pub const MAX_OPUS_PACKET: usize = 1275;
/// Largest payload the send path writes.
pub const MAX_PAYLOAD: usize = 1500;

/// Which codec a leg negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CodecKind {
    /// Opus (RFC 6716, RTP payload format RFC 7587), always 48 kHz RTP clock.
    Opus,
    /// G.711 µ-law.
    Pcmu,
    /// G.711 A-law.
    Pcma,
}

impl CodecKind {
    /// The sample rate the codec decodes to and encodes from.
    pub fn native_rate(self) -> u32 {
        match self {
            CodecKind::Opus => 48_000,
            CodecKind::Pcmu | CodecKind::Pcma => 8_000,
        }
    }
    /// The RTP clock rate (equal to the native rate for all three).
    pub fn clock_rate(self) -> u32 {
        self.native_rate()
    }
    /// Samples in one 20 ms frame at the native rate.
    pub fn frame_samples(self) -> usize {
        (self.native_rate() / 1000 * FRAME_MS) as usize
    }
    /// The static payload type of RFC 3551, where there is one.
    pub fn static_payload_type(self) -> Option<u8> {
        match self {
            CodecKind::Opus => None,
            CodecKind::Pcmu => Some(0),
            CodecKind::Pcma => Some(8),
        }
    }
    /// The name used in SDP and in reports.
    pub fn name(self) -> &'static str {
        match self {
            CodecKind::Opus => "opus",
            CodecKind::Pcmu => "PCMU",
            CodecKind::Pcma => "PCMA",
        }
    }
}

/// Opus encoder settings. Legs whose settings are equal share one encode of the room mix.
///
/// The defaults are the ones `docs/decisions.md` argues for: complexity 1 costs about
/// a third of complexity 10 per frame with no measurable loss on speech at 32 kb/s,
/// in-band FEC on with 5 % expected loss so receivers can rebuild a lost frame
/// (RFC 7587 `useinbandfec=1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EncoderSettings {
    /// libopus complexity, 0 (cheapest) to 10.
    pub complexity: u8,
    /// Target bitrate in bits per second.
    pub bitrate: u32,
    /// In-band forward error correction (only SILK and hybrid frames carry it).
    pub inband_fec: bool,
    /// Expected packet loss in percent; libopus spends FEC bits in proportion.
    pub expected_loss: u8,
    /// Discontinuous transmission during silence.
    pub dtx: bool,
}

impl Default for EncoderSettings {
    fn default() -> Self {
        EncoderSettings {
            complexity: 1,
            bitrate: 32_000,
            inband_fec: true,
            expected_loss: 5,
            dtx: false,
        }
    }
}

impl EncoderSettings {
    /// Checks the values libopus would reject, so a bad setting fails at room creation.
    pub fn validate(&self) -> Result<()> {
        if self.complexity > 10 {
            return Err(MixerError::InvalidSetting("complexity must be 0..=10"));
        }
        if !(6_000..=510_000).contains(&self.bitrate) {
            return Err(MixerError::InvalidSetting(
                "bitrate must be 6000..=510000 b/s",
            ));
        }
        if self.expected_loss > 100 {
            return Err(MixerError::InvalidSetting(
                "expected loss must be 0..=100 %",
            ));
        }
        Ok(())
    }
}

/// Decodes one leg's payloads to `f32` at the codec's native rate.
pub enum AudioDecoder {
    /// libopus decoder at 48 kHz mono (a stereo sender is down-mixed by libopus).
    Opus(opus::Decoder),
    /// G.711 has no decoder state but the last frame, kept for concealment.
    G711 {
        /// A-law or µ-law.
        alaw: bool,
        /// The last good frame, faded out to conceal losses.
        last: Box<[f32; 160]>,
        /// Consecutive frames concealed so far.
        concealed: u32,
    },
}

/// How a frame came out of the decoder, for the leg's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded {
    /// A real packet was decoded.
    Packet,
    /// A lost frame was rebuilt from the next packet's in-band FEC.
    Fec,
    /// A lost frame was concealed (libopus PLC, or G.711 fade-out).
    Concealed,
}

impl AudioDecoder {
    /// A decoder for the codec.
    pub fn new(codec: CodecKind) -> Result<Self> {
        Ok(match codec {
            CodecKind::Opus => AudioDecoder::Opus(
                opus::Decoder::new(48_000, opus::Channels::Mono)
                    .map_err(MixerError::opus("creating decoder"))?,
            ),
            CodecKind::Pcmu | CodecKind::Pcma => AudioDecoder::G711 {
                alaw: codec == CodecKind::Pcma,
                last: Box::new([0.0; 160]),
                concealed: 0,
            },
        })
    }

    /// Decodes one packet into `out` (one frame at the native rate). A payload that does
    /// not decode is an error the caller counts; `out` then holds a concealed frame.
    pub fn decode(&mut self, payload: &[u8], out: &mut [f32]) -> Result<Decoded> {
        match self {
            AudioDecoder::Opus(dec) => match dec.decode_float(payload, out, false) {
                Ok(n) if n == out.len() => Ok(Decoded::Packet),
                Ok(_) => {
                    // A packet of another duration than the negotiated 20 ms: what was
                    // decoded is kept, the rest of the frame is silence.
                    Ok(Decoded::Packet)
                }
                Err(e) => {
                    self.conceal(out);
                    Err(MixerError::Opus {
                        context: "decoding a packet",
                        source: e,
                    })
                }
            },
            AudioDecoder::G711 {
                alaw,
                last,
                concealed,
            } => {
                let n = payload.len().min(160).min(out.len());
                let mut pcm = [0i16; 160];
                if *alaw {
                    g711::decode_alaw(&payload[..n], &mut pcm[..n]);
                } else {
                    g711::decode_ulaw(&payload[..n], &mut pcm[..n]);
                }
                simd::i16_to_f32(&mut out[..n], &pcm[..n]);
                out[n..].fill(0.0);
                last[..out.len().min(160)].copy_from_slice(&out[..out.len().min(160)]);
                *concealed = 0;
                Ok(Decoded::Packet)
            }
        }
    }

    /// Rebuilds a lost frame: from `next`'s in-band FEC when the codec has it, else by
    /// concealment.
    pub fn recover(&mut self, next: Option<&[u8]>, out: &mut [f32]) -> Decoded {
        if let (AudioDecoder::Opus(dec), Some(next)) = (&mut *self, next) {
            if let Ok(n) = dec.decode_float(next, out, true) {
                if n == out.len() {
                    return Decoded::Fec;
                }
            }
        }
        self.conceal(out);
        Decoded::Concealed
    }

    /// Conceals one lost frame: libopus packet-loss concealment, or for G.711 the last
    /// frame repeated at falling gain (−6 dB per frame, silent after 60 ms) so a lost
    /// packet is a dip, not a click.
    pub fn conceal(&mut self, out: &mut [f32]) {
        match self {
            AudioDecoder::Opus(dec) => {
                if dec.decode_float(&[], out, false).is_err() {
                    out.fill(0.0);
                }
            }
            AudioDecoder::G711 {
                last, concealed, ..
            } => {
                *concealed += 1;
                let gain = match *concealed {
                    1 => 0.5,
                    2 => 0.25,
                    3 => 0.125,
                    _ => 0.0,
                };
                let n = out.len().min(160);
                out[..n].copy_from_slice(&last[..n]);
                simd::scale(&mut out[..n], gain);
                out[n..].fill(0.0);
            }
        }
    }
}

/// Encodes `f32` frames at the codec's native rate into payloads.
pub enum AudioEncoder {
    /// libopus encoder, 48 kHz mono, VoIP application.
    Opus(opus::Encoder),
    /// G.711, stateless.
    G711 {
        /// A-law or µ-law.
        alaw: bool,
    },
}

impl AudioEncoder {
    /// An encoder for the codec with these settings (ignored by G.711).
    pub fn new(codec: CodecKind, settings: &EncoderSettings) -> Result<Self> {
        Ok(match codec {
            CodecKind::Opus => {
                settings.validate()?;
                let mut enc =
                    opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip)
                        .map_err(MixerError::opus("creating encoder"))?;
                let e = MixerError::opus("configuring encoder");
                enc.set_complexity(i32::from(settings.complexity))
                    .map_err(e)?;
                enc.set_bitrate(opus::Bitrate::Bits(settings.bitrate as i32))
                    .map_err(MixerError::opus("setting bitrate"))?;
                enc.set_inband_fec(settings.inband_fec)
                    .map_err(MixerError::opus("setting in-band FEC"))?;
                enc.set_packet_loss_perc(i32::from(settings.expected_loss))
                    .map_err(MixerError::opus("setting expected loss"))?;
                enc.set_dtx(settings.dtx)
                    .map_err(MixerError::opus("setting DTX"))?;
                enc.set_signal(opus::Signal::Voice)
                    .map_err(MixerError::opus("setting signal type"))?;
                AudioEncoder::Opus(enc)
            }
            CodecKind::Pcmu => AudioEncoder::G711 { alaw: false },
            CodecKind::Pcma => AudioEncoder::G711 { alaw: true },
        })
    }

    /// Encodes one frame into `out`, returning the payload length.
    pub fn encode(&mut self, pcm: &[f32], out: &mut [u8]) -> Result<usize> {
        match self {
            AudioEncoder::Opus(enc) => enc
                .encode_float(pcm, out)
                .map_err(MixerError::opus("encoding a frame")),
            AudioEncoder::G711 { alaw } => {
                let n = pcm.len().min(160).min(out.len());
                let mut lin = [0i16; 160];
                simd::f32_to_i16(&mut lin[..n], &pcm[..n]);
                if *alaw {
                    g711::encode_alaw(&lin[..n], &mut out[..n]);
                } else {
                    g711::encode_ulaw(&lin[..n], &mut out[..n]);
                }
                Ok(n)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::{goertzel_power, Tone};

    fn tone_frames(rate: u32, freq: f32, frames: usize) -> Vec<Vec<f32>> {
        let mut t = Tone::new(freq, rate, 0.3);
        (0..frames)
            .map(|_| {
                let mut f = vec![0.0; (rate / 50) as usize];
                t.fill(&mut f);
                f
            })
            .collect()
    }

    #[test]
    fn opus_round_trip_keeps_the_tone() {
        let mut enc = AudioEncoder::new(CodecKind::Opus, &EncoderSettings::default()).unwrap();
        let mut dec = AudioDecoder::new(CodecKind::Opus).unwrap();
        let mut pkt = [0u8; MAX_PAYLOAD];
        let mut out = vec![0.0; 960];
        let mut all = Vec::new();
        for f in tone_frames(48_000, 440.0, 25) {
            let n = enc.encode(&f, &mut pkt).unwrap();
            assert!(n > 0 && n <= MAX_OPUS_PACKET);
            assert_eq!(dec.decode(&pkt[..n], &mut out).unwrap(), Decoded::Packet);
            all.extend_from_slice(&out);
        }
        let tail = &all[all.len() - 9600..];
        let on = goertzel_power(tail, 48_000, 440.0);
        let off = goertzel_power(tail, 48_000, 700.0);
        assert!(on > 100.0 * off, "440 Hz {on} vs 700 Hz {off}");
    }

    #[test]
    fn g711_round_trip_keeps_the_tone() {
        for codec in [CodecKind::Pcmu, CodecKind::Pcma] {
            let mut enc = AudioEncoder::new(codec, &EncoderSettings::default()).unwrap();
            let mut dec = AudioDecoder::new(codec).unwrap();
            let mut pkt = [0u8; 160];
            let mut out = vec![0.0; 160];
            let mut all = Vec::new();
            for f in tone_frames(8_000, 1000.0, 10) {
                assert_eq!(enc.encode(&f, &mut pkt).unwrap(), 160);
                dec.decode(&pkt, &mut out).unwrap();
                all.extend_from_slice(&out);
            }
            let on = goertzel_power(&all, 8_000, 1000.0);
            let off = goertzel_power(&all, 8_000, 1500.0);
            assert!(on > 1000.0 * off, "{codec:?}: {on} vs {off}");
        }
    }

    #[test]
    fn g711_concealment_fades_out() {
        let mut dec = AudioDecoder::new(CodecKind::Pcmu).unwrap();
        let mut out = vec![0.0; 160];
        let loud = [0x80u8; 160]; // µ-law 0x80: the largest positive value
        dec.decode(&loud, &mut out).unwrap();
        let first = out[0];
        let mut peaks = Vec::new();
        for _ in 0..4 {
            dec.conceal(&mut out);
            peaks.push(out[0]);
        }
        assert!(first > 0.9);
        assert!(peaks[0] < first && peaks[1] < peaks[0] && peaks[2] < peaks[1]);
        assert_eq!(peaks[3], 0.0);
    }

    #[test]
    fn garbage_opus_payload_is_an_error_and_conceals() {
        let mut dec = AudioDecoder::new(CodecKind::Opus).unwrap();
        let mut out = vec![1.0; 960];
        // TOC byte code 3 with a frame count of 0 is invalid (RFC 6716 §3.2.5).
        assert!(dec.decode(&[0x03, 0x00], &mut out).is_err());
        assert!(out.iter().all(|s| s.is_finite() && s.abs() <= 1.0));
    }

    #[test]
    fn bad_settings_are_refused() {
        let s = EncoderSettings {
            complexity: 11,
            ..Default::default()
        };
        assert!(AudioEncoder::new(CodecKind::Opus, &s).is_err());
        let s = EncoderSettings {
            bitrate: 10,
            ..Default::default()
        };
        assert!(s.validate().is_err());
    }
}
