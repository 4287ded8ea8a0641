//! ITU-T G.711 companding: PCMU (µ-law) and PCMA (A-law).
//!
//! SIP and WebRTC telephony legs still arrive as G.711, so every room has to
//! translate between these 8-bit codes and the mixer's linear 16-bit PCM. The
//! behaviour matches the classic Sun Microsystems `g711.c` reference (µ-law
//! bias 0x84 with clipping at 32635, A-law even-bit inversion with 0x55), which
//! is what every deployed gateway produces, so our output is bit-compatible.
//!
//! Decoding is a lookup into 256-entry tables computed at compile time; encoding
//! finds the segment with `leading_zeros`, so neither direction branches on the
//! sample value beyond the sign and both are allocation-free.

/// µ-law adds this bias before finding the segment, so that the segment
/// boundaries fall on powers of two and the encoder needs only a bit scan.
const ULAW_BIAS: i32 = 0x84;

/// Largest magnitude µ-law can represent once the bias is added without
/// overflowing the top segment; louder samples saturate instead of wrapping.
const ULAW_CLIP: i32 = 32635;

/// A-law transmits with every even bit inverted (historically to keep enough
/// ones density on T1/E1 lines), so codes are XORed with this on the wire.
const ALAW_XOR: u8 = 0x55;

/// Reference µ-law expansion for one code, usable in `const` context so the
/// lookup table below is built by the compiler rather than at startup.
const fn ulaw_expand(code: u8) -> i16 {
    // µ-law codes are transmitted inverted so that silence is 0xFF.
    let u = !code;
    let mantissa = (u & 0x0F) as i32;
    let segment = ((u >> 4) & 0x07) as i32;
    let magnitude = (((mantissa << 3) + ULAW_BIAS) << segment) - ULAW_BIAS;
    if u & 0x80 != 0 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

/// Reference A-law expansion for one code, usable in `const` context so the
/// lookup table below is built by the compiler rather than at startup.
const fn alaw_expand(code: u8) -> i16 {
    let a = code ^ ALAW_XOR;
    let mantissa = ((a & 0x0F) as i32) << 4;
    let segment = ((a >> 4) & 0x07) as i32;
    // Each value is reconstructed at the middle of its quantization interval,
    // hence the "+ 8" (half of the 16-wide lowest step) folded in below.
    let magnitude = match segment {
        0 => mantissa + 8,
        _ => (mantissa + 0x108) << (segment - 1),
    };
    // A-law's sign bit is set for positive values, the opposite of µ-law.
    if a & 0x80 != 0 {
        magnitude as i16
    } else {
        -magnitude as i16
    }
}

/// Builds the µ-law decode table at compile time, so decoding is one load.
const fn build_ulaw_table() -> [i16; 256] {
    let mut table = [0i16; 256];
    let mut code = 0usize;
    while code < 256 {
        table[code] = ulaw_expand(code as u8);
        code += 1;
    }
    table
}

/// Builds the A-law decode table at compile time, so decoding is one load.
const fn build_alaw_table() -> [i16; 256] {
    let mut table = [0i16; 256];
    let mut code = 0usize;
    while code < 256 {
        table[code] = alaw_expand(code as u8);
        code += 1;
    }
    table
}

/// Decoded linear value of every µ-law code, indexed by the code.
static ULAW_TABLE: [i16; 256] = build_ulaw_table();

/// Decoded linear value of every A-law code, indexed by the code.
static ALAW_TABLE: [i16; 256] = build_alaw_table();

/// Compresses one linear sample to a PCMU code, for legs that negotiated
/// G.711 µ-law (the default in North America and Japan).
#[inline]
#[must_use]
pub fn ulaw_encode(sample: i16) -> u8 {
    let sample = i32::from(sample);
    // Widened to i32 so that negating -32768 cannot overflow.
    let (sign, magnitude) = if sample < 0 {
        (0x80u8, -sample)
    } else {
        (0x00u8, sample)
    };
    // After biasing, the value lies in 132..=32767, whose top set bit (7..=14)
    // directly names the segment 0..=7.
    let biased = magnitude.min(ULAW_CLIP) + ULAW_BIAS;
    let segment = 24 - (biased as u32).leading_zeros();
    let mantissa = ((biased >> (segment + 3)) & 0x0F) as u8;
    !(sign | ((segment as u8) << 4) | mantissa)
}

/// Expands one PCMU code to linear PCM, for mixing a G.711 µ-law leg.
#[inline]
#[must_use]
pub fn ulaw_decode(code: u8) -> i16 {
    ULAW_TABLE[usize::from(code)]
}

/// Compresses one linear sample to a PCMA code, for legs that negotiated
/// G.711 A-law (the default in Europe and most of the rest of the world).
#[inline]
#[must_use]
pub fn alaw_encode(sample: i16) -> u8 {
    // A-law quantizes 13-bit audio; the arithmetic shift rounds toward
    // negative infinity, and the one's complement then maps -1..=-4096 onto
    // magnitudes 0..=4095, which is how the reference encoder treats negatives.
    let coarse = i32::from(sample) >> 3;
    let (mask, magnitude) = if coarse >= 0 {
        (0x80 ^ ALAW_XOR, coarse)
    } else {
        (ALAW_XOR, !coarse)
    };
    // Magnitudes below 32 share segment 0; above that the top set bit (5..=11)
    // names segment 1..=7. Segments 0 and 1 have the same step size.
    let segment = 27u32.saturating_sub((magnitude as u32).leading_zeros());
    let shift = segment.max(1);
    let mantissa = ((magnitude >> shift) & 0x0F) as u8;
    (((segment as u8) << 4) | mantissa) ^ mask
}

/// Expands one PCMA code to linear PCM, for mixing a G.711 A-law leg.
#[inline]
#[must_use]
pub fn alaw_decode(code: u8) -> i16 {
    ALAW_TABLE[usize::from(code)]
}

/// Decodes a whole PCMU frame (160 codes per 20 ms) in one call so the hot
/// path has no per-sample call overhead; converts `min(src.len(), dst.len())`
/// samples.
pub fn decode_ulaw(src: &[u8], dst: &mut [i16]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = ulaw_decode(s);
    }
}

/// Encodes a whole frame of linear PCM to PCMU for sending to a G.711 leg;
/// converts `min(src.len(), dst.len())` samples.
pub fn encode_ulaw(src: &[i16], dst: &mut [u8]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = ulaw_encode(s);
    }
}

/// Decodes a whole PCMA frame (160 codes per 20 ms) in one call so the hot
/// path has no per-sample call overhead; converts `min(src.len(), dst.len())`
/// samples.
pub fn decode_alaw(src: &[u8], dst: &mut [i16]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = alaw_decode(s);
    }
}

/// Encodes a whole frame of linear PCM to PCMA for sending to a G.711 leg;
/// converts `min(src.len(), dst.len())` samples.
pub fn encode_alaw(src: &[i16], dst: &mut [u8]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = alaw_encode(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Straight port of Sun's `linear2ulaw` (16-bit variant, table search),
    /// kept independent of the bit-scan encoder so the two can be compared.
    fn sun_linear2ulaw(pcm: i16) -> u8 {
        const SEG_END: [i32; 8] = [0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF, 0x3FFF, 0x7FFF];
        let mut v = i32::from(pcm);
        let mask: u8 = if v < 0 {
            v = -v;
            0x7F
        } else {
            0xFF
        };
        if v > 32635 {
            v = 32635;
        }
        v += 0x84;
        let seg = SEG_END.iter().position(|&e| v <= e).unwrap_or(8);
        if seg >= 8 {
            return 0x7F ^ mask;
        }
        let uval = ((seg as u8) << 4) | (((v >> (seg + 3)) & 0xF) as u8);
        uval ^ mask
    }

    /// Straight port of Sun's `linear2alaw` (13-bit variant, table search).
    fn sun_linear2alaw(pcm: i16) -> u8 {
        const SEG_AEND: [i32; 8] = [0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF];
        let mut v = i32::from(pcm) >> 3;
        let mask: u8 = if v >= 0 {
            0xD5
        } else {
            v = -v - 1;
            0x55
        };
        let seg = SEG_AEND.iter().position(|&e| v <= e).unwrap_or(8);
        if seg >= 8 {
            return 0x7F ^ mask;
        }
        let mut aval = (seg as u8) << 4;
        if seg < 2 {
            aval |= ((v >> 1) & 0xF) as u8;
        } else {
            aval |= ((v >> seg) & 0xF) as u8;
        }
        aval ^ mask
    }

    /// µ-law step size (16-bit scale) of the segment a code belongs to.
    fn ulaw_step(code: u8) -> i32 {
        let segment = i32::from((!code >> 4) & 0x07);
        1 << (segment + 3)
    }

    /// A-law step size (16-bit scale) of the segment a code belongs to.
    fn alaw_step(code: u8) -> i32 {
        let segment = i32::from(((code ^ ALAW_XOR) >> 4) & 0x07);
        16 << (segment - 1).max(0)
    }

    #[test]
    fn known_vectors() {
        assert_eq!(ulaw_decode(0xFF), 0);
        assert_eq!(ulaw_decode(0x7F), 0);
        assert_eq!(ulaw_decode(0x00), -32124);
        assert_eq!(ulaw_decode(0x80), 32124);
        assert_eq!(ulaw_decode(0xFE), 8);
        assert_eq!(ulaw_decode(0x7E), -8);
        assert_eq!(alaw_decode(0xD5), 8);
        assert_eq!(alaw_decode(0x55), -8);
        assert_eq!(alaw_decode(0xAA), 32256);
        assert_eq!(alaw_decode(0x2A), -32256);
        assert_eq!(ulaw_encode(0), 0xFF);
        assert_eq!(ulaw_encode(-1), 0x7F);
        assert_eq!(ulaw_encode(i16::MAX), 0x80);
        assert_eq!(ulaw_encode(i16::MIN), 0x00);
        assert_eq!(alaw_encode(0), 0xD5);
        assert_eq!(alaw_encode(-1), 0x55);
        assert_eq!(alaw_encode(i16::MAX), 0xAA);
        assert_eq!(alaw_encode(i16::MIN), 0x2A);
    }

    #[test]
    fn encoders_match_reference_for_every_sample() {
        for s in i16::MIN..=i16::MAX {
            assert_eq!(ulaw_encode(s), sun_linear2ulaw(s), "ulaw sample {s}");
            assert_eq!(alaw_encode(s), sun_linear2alaw(s), "alaw sample {s}");
        }
    }

    #[test]
    fn decode_encode_decode_is_identity_for_all_codes() {
        for c in 0..=255u8 {
            let u = ulaw_decode(c);
            assert_eq!(ulaw_decode(ulaw_encode(u)), u, "ulaw code {c:#04x}");
            let a = alaw_decode(c);
            assert_eq!(alaw_decode(alaw_encode(a)), a, "alaw code {c:#04x}");
        }
        // Every code except µ-law's negative zero (0x7F) re-encodes to itself.
        for c in 0..=255u8 {
            if c != 0x7F {
                assert_eq!(ulaw_encode(ulaw_decode(c)), c, "ulaw code {c:#04x}");
            }
            assert_eq!(alaw_encode(alaw_decode(c)), c, "alaw code {c:#04x}");
        }
    }

    #[test]
    fn decode_is_monotonic_in_segment_order() {
        // Index i = (segment << 4) | mantissa orders magnitudes; walking the
        // negative codes from loudest to quietest and then the positive ones
        // from quietest to loudest must never go down.
        let order = |neg: fn(u8) -> u8, pos: fn(u8) -> u8| -> Vec<u8> {
            (0..128u8)
                .rev()
                .map(neg)
                .chain((0..128u8).map(pos))
                .collect()
        };
        let ulaw = order(|i| i ^ 0x7F, |i| i ^ 0xFF);
        let alaw = order(|i| i ^ 0x55, |i| i ^ 0xD5);
        for w in ulaw.windows(2) {
            let (a, b) = (ulaw_decode(w[0]), ulaw_decode(w[1]));
            // The only tie is µ-law's two zeros.
            assert!(
                a < b || (a == 0 && b == 0),
                "ulaw {:#04x}->{a} {:#04x}->{b}",
                w[0],
                w[1]
            );
        }
        for w in alaw.windows(2) {
            let (a, b) = (alaw_decode(w[0]), alaw_decode(w[1]));
            assert!(a < b, "alaw {:#04x}->{a} {:#04x}->{b}", w[0], w[1]);
        }
        // Both tables cover 256 distinct codes with 255 (µ) / 256 (A) levels.
        let mut u: Vec<i16> = ULAW_TABLE.to_vec();
        u.sort_unstable();
        u.dedup();
        assert_eq!(u.len(), 255);
    }

    #[test]
    fn quantizer_is_monotonic_over_all_samples() {
        let mut prev_u = i16::MIN;
        let mut prev_a = i16::MIN;
        for s in i16::MIN..=i16::MAX {
            let u = ulaw_decode(ulaw_encode(s));
            let a = alaw_decode(alaw_encode(s));
            assert!(u >= prev_u && a >= prev_a, "sample {s}");
            prev_u = u;
            prev_a = a;
        }
    }

    #[test]
    fn slice_forms_match_scalar_and_stop_at_shorter() {
        let pcm: Vec<i16> = (0..200)
            .map(|i| ((i * 331) % 65536 - 32768) as i16)
            .collect();
        let mut codes = [0u8; 160];
        let mut back = [0i16; 180];
        encode_ulaw(&pcm, &mut codes);
        decode_ulaw(&codes, &mut back);
        for i in 0..160 {
            assert_eq!(codes[i], ulaw_encode(pcm[i]));
            assert_eq!(back[i], ulaw_decode(codes[i]));
        }
        assert!(back[160..].iter().all(|&v| v == 0));
        encode_alaw(&pcm, &mut codes);
        decode_alaw(&codes, &mut back);
        for i in 0..160 {
            assert_eq!(codes[i], alaw_encode(pcm[i]));
            assert_eq!(back[i], alaw_decode(codes[i]));
        }
        assert!(back[160..].iter().all(|&v| v == 0));
    }

    proptest! {
        #[test]
        fn ulaw_error_within_half_step(s in any::<i16>()) {
            let code = ulaw_encode(s);
            let err = (i32::from(ulaw_decode(code)) - i32::from(s)).abs();
            if i32::from(s).abs() <= ULAW_CLIP {
                // Reconstruction sits mid-interval, so error is at most half
                // the segment's step.
                prop_assert!(err <= ulaw_step(code) / 2, "s={s} code={code:#04x} err={err}");
            } else {
                // Beyond the clip level the loudest code of that sign is used.
                prop_assert_eq!(code, if s < 0 { 0x00 } else { 0x80 });
            }
        }

        #[test]
        fn alaw_error_within_half_step(s in any::<i16>()) {
            let code = alaw_encode(s);
            let err = (i32::from(alaw_decode(code)) - i32::from(s)).abs();
            prop_assert!(err <= alaw_step(code) / 2, "s={s} code={code:#04x} err={err}");
        }
    }
}
