//! A soft limiter for mixed audio.
//!
//! Summing three loud talkers can exceed full scale. Converting that to 16 bits must
//! never wrap around (a sign flip is a loud click), and hard clipping distorts, so every
//! mixed output passes through this limiter: a gain envelope that follows the frame's
//! peak down at once and recovers slowly, ramped across the frame, and a soft knee for
//! the samples that still exceed the threshold.

use crate::simd;

/// Level above which the limiter acts (linear, 1.0 = full scale).
pub const THRESHOLD: f32 = 0.9;

/// Per-output limiter state (one per encoded stream, so streams do not pump each other).
#[derive(Debug, Clone, Copy)]
pub struct Limiter {
    gain: f32,
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter { gain: 1.0 }
    }
}

impl Limiter {
    /// A limiter at unity gain.
    pub fn new() -> Self {
        Self::default()
    }

    /// The gain applied at the end of the last frame.
    pub fn gain(&self) -> f32 {
        self.gain
    }

    /// Limits one frame in place; afterwards every sample is within ±1.0.
    pub fn process(&mut self, frame: &mut [f32]) {
        if frame.is_empty() {
            return;
        }
        let level = simd::level(frame);
        // The peak skips NaN; the sum of squares does not, so it tells us to clean up.
        let peak = if level.sum_squares.is_nan() {
            f32::NAN
        } else {
            level.peak
        };
        let target = if peak * self.gain > THRESHOLD {
            THRESHOLD / peak
        } else {
            // Release: recover a tenth of the way to unity each 20 ms frame.
            self.gain + 0.1 * (1.0 - self.gain)
        }
        .min(1.0);
        let start = self.gain;
        self.gain = target;
        if start == 1.0 && target == 1.0 {
            if peak.is_nan() || peak > THRESHOLD {
                soft_knee(frame);
            }
            return;
        }
        if (start - target).abs() < 1e-6 {
            simd::scale(frame, target);
        } else {
            // A ramp across the frame avoids a step in gain, which would be audible.
            let step = (target - start) / frame.len() as f32;
            let mut g = start;
            for s in frame.iter_mut() {
                g += step;
                *s *= g;
            }
        }
        soft_knee(frame);
    }
}

/// Bends samples above the threshold smoothly towards ±1.0 instead of clipping them.
fn soft_knee(frame: &mut [f32]) {
    const HEADROOM: f32 = 1.0 - THRESHOLD;
    for s in frame.iter_mut() {
        let a = s.abs();
        if a > THRESHOLD {
            let over = (a - THRESHOLD) / HEADROOM;
            let bent = THRESHOLD + HEADROOM * (over / (1.0 + over));
            *s = bent.copysign(*s);
        } else if a.is_nan() {
            *s = 0.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_frames_pass_unchanged() {
        let mut l = Limiter::new();
        let mut f: Vec<f32> = (0..960).map(|i| 0.5 * (i as f32 * 0.05).sin()).collect();
        let orig = f.clone();
        l.process(&mut f);
        assert_eq!(f, orig);
    }

    #[test]
    fn loud_sums_stay_within_full_scale_and_keep_their_sign() {
        let mut l = Limiter::new();
        for k in 0..20 {
            let mut f: Vec<f32> = (0..960)
                .map(|i| 3.0 * (i as f32 * 0.03 + k as f32).sin())
                .collect();
            let signs: Vec<bool> = f.iter().map(|s| *s >= 0.0).collect();
            l.process(&mut f);
            for (s, pos) in f.iter().zip(signs) {
                assert!(s.abs() <= 1.0, "{s}");
                assert_eq!(*s >= 0.0, pos, "sign flipped");
            }
        }
        assert!(l.gain() < 0.5);
    }

    #[test]
    fn gain_recovers_after_a_loud_burst() {
        let mut l = Limiter::new();
        let mut loud = vec![2.0f32; 960];
        l.process(&mut loud);
        let low = l.gain();
        for _ in 0..50 {
            let mut quiet = vec![0.01f32; 960];
            l.process(&mut quiet);
        }
        assert!(low < 0.5 && l.gain() > 0.99, "{low} {}", l.gain());
    }

    #[test]
    fn nan_becomes_silence() {
        let mut l = Limiter::new();
        let mut f = vec![0.1f32; 10];
        f[3] = f32::NAN;
        l.process(&mut f);
        assert!(f.iter().all(|s| s.is_finite()));
    }
}
