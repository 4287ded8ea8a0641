//! Test signals and a tone detector, shared by the tests and by `loadtest`.
//!
//! Conference tests prove who hears whom by giving each talker its own tone and
//! measuring each listener's output with the Goertzel algorithm; the benchmark feeds a
//! speech-like signal so codecs spend what they spend on real voices.

use std::f32::consts::TAU;

/// A sine generator that keeps its phase across frames.
#[derive(Debug, Clone)]
pub struct Tone {
    phase: f32,
    step: f32,
    amplitude: f32,
}

impl Tone {
    /// A tone of `freq` Hz at sample rate `rate`, peak `amplitude` (1.0 = full scale).
    pub fn new(freq: f32, rate: u32, amplitude: f32) -> Self {
        Tone {
            phase: 0.0,
            step: TAU * freq / rate as f32,
            amplitude,
        }
    }
    /// Writes the next `out.len()` samples.
    pub fn fill(&mut self, out: &mut [f32]) {
        for s in out {
            *s = self.amplitude * self.phase.sin();
            self.phase += self.step;
            if self.phase > TAU {
                self.phase -= TAU;
            }
        }
    }
}

/// A voiced, syllable-modulated signal with a speech-like spectrum: a gliding pitch of
/// 100–180 Hz with harmonics shaped by three formants, syllables at about 4 Hz, and a
/// short pause every couple of seconds. Deterministic for a seed.
#[derive(Debug, Clone)]
pub struct SpeechLike {
    rate: f32,
    n: u64,
    phase: f32,
    seed: u64,
    amplitude: f32,
}

impl SpeechLike {
    /// A generator at `rate` Hz with peak level about `amplitude`; `seed` varies pitch
    /// and rhythm so several talkers do not sound (or compress) alike.
    pub fn new(rate: u32, amplitude: f32, seed: u64) -> Self {
        SpeechLike {
            rate: rate as f32,
            n: 0,
            phase: 0.0,
            seed,
            amplitude,
        }
    }

    /// Writes the next `out.len()` samples.
    pub fn fill(&mut self, out: &mut [f32]) {
        let jitter = (self.seed % 7) as f32 * 0.11;
        for s in out {
            let t = self.n as f32 / self.rate;
            let f0 = 140.0 + 40.0 * (TAU * (0.3 + jitter * 0.1) * t + jitter).sin();
            self.phase += TAU * f0 / self.rate;
            if self.phase > TAU {
                self.phase -= TAU;
            }
            // Syllables at ~4 Hz; a 300 ms pause in every 2.5 s "phrase".
            let syll = (TAU * (3.7 + jitter) * t).sin().abs().sqrt();
            let phrase = (t + jitter) % 2.5;
            let gate = if phrase > 2.2 { 0.0 } else { 1.0 };
            let mut v = 0.0;
            let mut weights = 0.0;
            let mut k = 1.0f32;
            while k * f0 < self.rate.min(16_000.0) * 0.5 && k <= 40.0 {
                let f = k * f0;
                let formant = 1.0 / (1.0 + ((f - 500.0) / 200.0).powi(2))
                    + 0.6 / (1.0 + ((f - 1500.0) / 300.0).powi(2))
                    + 0.3 / (1.0 + ((f - 2500.0) / 400.0).powi(2));
                v += formant * (k * self.phase).sin();
                weights += formant;
                k += 1.0;
            }
            // Normalised by the harmonics' total weight, so the peak never exceeds the
            // amplitude asked for (all harmonics in phase) and is typically near it.
            let shaped = if weights > 0.0 {
                2.0 * v / weights
            } else {
                0.0
            };
            *s = self.amplitude * shaped.clamp(-1.0, 1.0) * syll * gate;
            self.n += 1;
        }
    }
}

/// Power of the component at `freq` in `samples` (Goertzel), normalised so that a full
/// scale sine of that frequency gives about 0.25 whatever the length.
pub fn goertzel_power(samples: &[f32], rate: u32, freq: f32) -> f32 {
    if samples.is_empty() {
        return 0.0;
    }
    let w = TAU * freq / rate as f32;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in samples {
        let s0 = f64::from(x) + f64::from(coeff) * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let p = s1 * s1 + s2 * s2 - f64::from(coeff) * s1 * s2;
    let n = samples.len() as f64;
    (p / (n * n)) as f32
}

/// The level of `samples` in dBov (0 = full-scale square wave), as RFC 6464 measures it.
pub fn dbov(samples: &[f32]) -> f32 {
    if samples.is_empty() {
        return -127.0;
    }
    let ms: f32 = samples.iter().map(|x| x * x).sum::<f32>() / samples.len() as f32;
    if ms <= 0.0 {
        -127.0
    } else {
        (10.0 * ms.log10()).max(-127.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goertzel_finds_the_tone_and_not_others() {
        let mut t = Tone::new(660.0, 48_000, 1.0);
        let mut buf = vec![0.0; 9600];
        t.fill(&mut buf);
        let on = goertzel_power(&buf, 48_000, 660.0);
        assert!((on - 0.25).abs() < 0.01, "{on}");
        assert!(goertzel_power(&buf, 48_000, 440.0) < on / 1000.0);
        assert!(goertzel_power(&buf, 48_000, 880.0) < on / 1000.0);
    }

    #[test]
    fn speech_like_is_loud_with_pauses() {
        let mut s = SpeechLike::new(48_000, 0.5, 0); // seed 0: no phase offset
        let mut buf = vec![0.0; 48_000 * 3];
        s.fill(&mut buf);
        let peak = buf.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        assert!(peak > 0.2 && peak <= 1.0, "{peak}");
        let loud = dbov(&buf[..48_000]);
        assert!(loud > -30.0, "{loud}");
        // The phrase pause (2.2–2.5 s) is silent.
        assert!(dbov(&buf[48_000 * 22 / 10 + 100..48_000 * 25 / 10 - 100]) < -100.0);
    }

    #[test]
    fn dbov_of_full_scale_sine_is_minus_3() {
        let mut t = Tone::new(1000.0, 8000, 1.0);
        let mut buf = vec![0.0; 8000];
        t.fill(&mut buf);
        assert!((dbov(&buf) + 3.01).abs() < 0.05);
    }
}
