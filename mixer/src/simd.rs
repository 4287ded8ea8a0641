//! SIMD sample kernels with runtime CPU dispatch.
//!
//! Mixing a room means, every 20 ms and for every leg, converting PCM, summing
//! and subtracting frames, applying gains and metering levels. Those loops are
//! the mixer's hot path, so they live here in vectorised form, picked once per
//! process from what the CPU offers. This is the one module of the crate that
//! may use `unsafe`: intrinsics and unaligned vector loads need it, and keeping
//! them in one place keeps the audit small.
//!
//! Every kernel is bit-exact with its [`scalar`] reference, except the
//! `sum_squares` of [`level`], whose lanes add in a different order (the peak is
//! still exact). The vector paths never use FMA, so each element goes through
//! the same IEEE operations as the scalar code.

use std::sync::atomic::{AtomicU8, Ordering};

/// Which instruction set the dispatcher picked.
///
/// Exposed so that logs, metrics and benchmarks can say which code path a
/// process actually runs, since results are identical and speed is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// x86_64 with AVX2: 8 `f32` lanes.
    Avx2,
    /// x86_64 without AVX2: SSE2 is part of the x86_64 baseline, 4 lanes.
    Sse2,
    /// aarch64: NEON is part of the baseline, 4 lanes.
    Neon,
    /// Any other target: the portable reference loops.
    Scalar,
}

impl Isa {
    /// A stable lowercase label, so logs and metric labels don't depend on `Debug` output.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx2 => "avx2",
            Isa::Sse2 => "sse2",
            Isa::Neon => "neon",
            Isa::Scalar => "scalar",
        }
    }
}

/// Value of [`ACTIVE`] before detection ran; the other values are `Isa` codes.
const UNDETECTED: u8 = 0;

/// The detected ISA, cached so that dispatch is one relaxed load and a match:
/// no lock and no allocation on the per-frame path.
static ACTIVE: AtomicU8 = AtomicU8::new(UNDETECTED);

/// The instruction set every dispatched kernel uses in this process.
///
/// Detection runs on first use and is cached; it is idempotent, so a race
/// between two first callers only means both detect and store the same value.
#[inline]
pub fn active_isa() -> Isa {
    match ACTIVE.load(Ordering::Relaxed) {
        1 => Isa::Avx2,
        2 => Isa::Sse2,
        3 => Isa::Neon,
        4 => Isa::Scalar,
        _ => {
            let isa = detect();
            let code = match isa {
                Isa::Avx2 => 1,
                Isa::Sse2 => 2,
                Isa::Neon => 3,
                Isa::Scalar => 4,
            };
            ACTIVE.store(code, Ordering::Relaxed);
            isa
        }
    }
}

/// Asks the CPU what it supports. Only `Avx2` needs a runtime check: the
/// other vector ISAs are part of their architecture's baseline.
fn detect() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            Isa::Avx2
        } else {
            Isa::Sse2
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        Isa::Neon
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        Isa::Scalar
    }
}

/// Calls the implementation of `$f` for the cached ISA.
macro_rules! dispatch {
    ($f:ident($($arg:expr),*)) => {
        match active_isa() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Isa::Avx2` is only cached after `is_x86_feature_detected!("avx2")`
            // returned true on this CPU, which is the AVX2 functions' only precondition.
            Isa::Avx2 => unsafe { avx2::$f($($arg),*) },
            #[cfg(target_arch = "x86_64")]
            Isa::Sse2 => sse2::$f($($arg),*),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => neon::$f($($arg),*),
            _ => scalar::$f($($arg),*),
        }
    };
}

/// Sum of squares and peak absolute value of a block.
///
/// Returned together because metering needs both and one pass over the
/// samples is cheaper than two.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Level {
    /// Sum of `x * x` over the block; the RMS needs the block length too, see [`Level::rms`].
    pub sum_squares: f32,
    /// Largest `|x|` in the block; NaN samples are ignored, so this is never NaN.
    pub peak: f32,
}

impl Level {
    /// Root mean square over `len` samples; the length is a parameter because
    /// callers often merge sums of several blocks. An empty block has RMS 0.
    pub fn rms(&self, len: usize) -> f32 {
        if len == 0 {
            0.0
        } else {
            (self.sum_squares / len as f32).sqrt()
        }
    }
}

/// Mixes `src` into `acc`: `acc[i] += src[i]` for `i < min(acc.len(), src.len())`.
///
/// The core of summing legs into a room mix.
#[inline]
pub fn add_into(acc: &mut [f32], src: &[f32]) {
    dispatch!(add_into(acc, src))
}

/// `out[i] = a[i] - b[i]` for `i` below the shortest of the three lengths.
///
/// Lets a leg hear the room mix minus its own contribution.
#[inline]
pub fn sub(out: &mut [f32], a: &[f32], b: &[f32]) {
    dispatch!(sub(out, a, b))
}

/// `buf[i] *= gain`, for per-leg and master gain.
#[inline]
pub fn scale(buf: &mut [f32], gain: f32) {
    dispatch!(scale(buf, gain))
}

/// PCM to float: `dst[i] = src[i] as f32 / 32768.0` for `i < min(len)`.
///
/// Decoders and RTP payloads carry `i16`; mixing is done in `f32` for headroom.
#[inline]
pub fn i16_to_f32(dst: &mut [f32], src: &[i16]) {
    dispatch!(i16_to_f32(dst, src))
}

/// Float to PCM: `round_half_to_even(src[i] * 32768.0)` saturated to
/// `[-32768, 32767]`, NaN giving 0, for `i < min(len)`.
///
/// Saturating instead of wrapping turns an overloaded mix into clipping
/// rather than loud garbage.
#[inline]
pub fn f32_to_i16(dst: &mut [i16], src: &[f32]) {
    dispatch!(f32_to_i16(dst, src))
}

/// Level of a block, for meters, voice activity and loudest-speaker selection.
///
/// `sum_squares` may differ from [`scalar::level`] by rounding (lanes add in
/// another order); `peak` is exact.
#[inline]
pub fn level(src: &[f32]) -> Level {
    dispatch!(level(src))
}

/// The scalar reference implementations, same signatures as the dispatched ones.
///
/// They define the results the vector paths must reproduce, serve as the
/// fallback on other targets and handle the tails shorter than a vector.
pub mod scalar {
    use super::Level;

    /// Reference for [`super::add_into`].
    pub fn add_into(acc: &mut [f32], src: &[f32]) {
        for (a, s) in acc.iter_mut().zip(src) {
            *a += *s;
        }
    }

    /// Reference for [`super::sub`].
    pub fn sub(out: &mut [f32], a: &[f32], b: &[f32]) {
        for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
            *o = *x - *y;
        }
    }

    /// Reference for [`super::scale`].
    pub fn scale(buf: &mut [f32], gain: f32) {
        for x in buf {
            *x *= gain;
        }
    }

    /// Reference for [`super::i16_to_f32`].
    pub fn i16_to_f32(dst: &mut [f32], src: &[i16]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = f32::from(*s) / 32768.0;
        }
    }

    /// Reference for [`super::f32_to_i16`].
    pub fn f32_to_i16(dst: &mut [i16], src: &[f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            let y = (*s * 32768.0).round_ties_even();
            // Spelled out although `as` already saturates and maps NaN to 0:
            // this is the specification the vector paths are tested against.
            *d = if y.is_nan() {
                0
            } else {
                y.clamp(-32768.0, 32767.0) as i16
            };
        }
    }

    /// Reference for [`super::level`]: sums in index order.
    pub fn level(src: &[f32]) -> Level {
        let mut sum_squares = 0.0f32;
        let mut peak = 0.0f32;
        for &x in src {
            sum_squares += x * x;
            // `f32::max` ignores a NaN operand, and `peak` never is one.
            peak = peak.max(x.abs());
        }
        Level { sum_squares, peak }
    }
}

/// AVX2 paths (8 lanes). Every function requires AVX2 on the running CPU.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{scalar, Level};
    use std::arch::x86_64::*;

    /// `f32` lanes per vector.
    const W: usize = 8;

    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn add_into(acc: &mut [f32], src: &[f32]) {
        let n = acc.len().min(src.len());
        let (acc, src) = (&mut acc[..n], &src[..n]);
        for (a, s) in acc.chunks_exact_mut(W).zip(src.chunks_exact(W)) {
            // SAFETY: both chunks hold exactly W elements, so the unaligned
            // 8-lane load/store stay in bounds; AVX2 is this fn's precondition.
            unsafe {
                let v = _mm256_add_ps(_mm256_loadu_ps(a.as_ptr()), _mm256_loadu_ps(s.as_ptr()));
                _mm256_storeu_ps(a.as_mut_ptr(), v);
            }
        }
        let body = n - n % W;
        scalar::add_into(&mut acc[body..], &src[body..]);
    }

    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn sub(out: &mut [f32], a: &[f32], b: &[f32]) {
        let n = out.len().min(a.len()).min(b.len());
        let (out, a, b) = (&mut out[..n], &a[..n], &b[..n]);
        for ((o, x), y) in out
            .chunks_exact_mut(W)
            .zip(a.chunks_exact(W))
            .zip(b.chunks_exact(W))
        {
            // SAFETY: all three chunks hold exactly W elements, so the unaligned
            // 8-lane loads/store stay in bounds; AVX2 is this fn's precondition.
            unsafe {
                let v = _mm256_sub_ps(_mm256_loadu_ps(x.as_ptr()), _mm256_loadu_ps(y.as_ptr()));
                _mm256_storeu_ps(o.as_mut_ptr(), v);
            }
        }
        let body = n - n % W;
        scalar::sub(&mut out[body..], &a[body..], &b[body..]);
    }

    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn scale(buf: &mut [f32], gain: f32) {
        let n = buf.len();
        for x in buf.chunks_exact_mut(W) {
            // SAFETY: the chunk holds exactly W elements, so the unaligned
            // 8-lane load/store stay in bounds; AVX2 is this fn's precondition.
            unsafe {
                let v = _mm256_mul_ps(_mm256_loadu_ps(x.as_ptr()), _mm256_set1_ps(gain));
                _mm256_storeu_ps(x.as_mut_ptr(), v);
            }
        }
        let body = n - n % W;
        scalar::scale(&mut buf[body..], gain);
    }

    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn i16_to_f32(dst: &mut [f32], src: &[i16]) {
        let n = dst.len().min(src.len());
        let (dst, src) = (&mut dst[..n], &src[..n]);
        for (d, s) in dst.chunks_exact_mut(W).zip(src.chunks_exact(W)) {
            // SAFETY: `s` holds exactly 8 `i16` (16 bytes, one unaligned 128-bit
            // load) and `d` exactly 8 `f32` (one unaligned 256-bit store); AVX2
            // is this fn's precondition. Multiplying by 2^-15 is exactly the
            // scalar division by 32768: a power-of-two scale of a small integer.
            unsafe {
                let pcm = _mm_loadu_si128(s.as_ptr().cast());
                let f = _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(pcm));
                let v = _mm256_mul_ps(f, _mm256_set1_ps(1.0 / 32768.0));
                _mm256_storeu_ps(d.as_mut_ptr(), v);
            }
        }
        let body = n - n % W;
        scalar::i16_to_f32(&mut dst[body..], &src[body..]);
    }

    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn f32_to_i16(dst: &mut [i16], src: &[f32]) {
        let n = dst.len().min(src.len());
        let (dst, src) = (&mut dst[..n], &src[..n]);
        for (d, s) in dst.chunks_exact_mut(W).zip(src.chunks_exact(W)) {
            // SAFETY: `s` holds exactly 8 `f32` (one unaligned 256-bit load) and
            // `d` exactly 8 `i16` (one unaligned 128-bit store); AVX2 is this
            // fn's precondition.
            unsafe {
                let x = _mm256_mul_ps(_mm256_loadu_ps(s.as_ptr()), _mm256_set1_ps(32768.0));
                // Clamping to integral bounds before rounding gives the same
                // result as the scalar round-then-clamp, and keeps the
                // conversion away from its 0x80000000 overflow value.
                let lo = _mm256_set1_ps(-32768.0);
                let hi = _mm256_set1_ps(32767.0);
                // `max_ps` returns its second operand when the first is NaN,
                // so NaN lanes come out as -32768.0 here: mask them to +0.0.
                let ordered = _mm256_cmp_ps(x, x, _CMP_ORD_Q);
                let clamped = _mm256_and_ps(_mm256_min_ps(_mm256_max_ps(x, lo), hi), ordered);
                // Rounds to nearest-even under the default MXCSR, which Rust
                // code may assume.
                let int = _mm256_cvtps_epi32(clamped);
                let pcm = _mm_packs_epi32(
                    _mm256_castsi256_si128(int),
                    _mm256_extracti128_si256(int, 1),
                );
                _mm_storeu_si128(d.as_mut_ptr().cast(), pcm);
            }
        }
        let body = n - n % W;
        scalar::f32_to_i16(&mut dst[body..], &src[body..]);
    }

    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn level(src: &[f32]) -> Level {
        // Four independent accumulators hide the add latency.
        const U: usize = 4 * W;
        let blocks = src.chunks_exact(U);
        let rest = blocks.remainder();
        let vectors = rest.chunks_exact(W);
        let tail = vectors.remainder();
        let mut sums = [0.0f32; W];
        let mut peaks = [0.0f32; W];
        // SAFETY: every load reads a chunk or sub-chunk of exactly W elements
        // and every store writes an array of exactly W elements, all unaligned
        // forms; AVX2 is this fn's precondition.
        unsafe {
            let sign = _mm256_set1_ps(-0.0);
            let mut s = [_mm256_setzero_ps(); 4];
            let mut p = [_mm256_setzero_ps(); 4];
            for block in blocks {
                for k in 0..4 {
                    let x = _mm256_loadu_ps(block.as_ptr().add(k * W));
                    s[k] = _mm256_add_ps(s[k], _mm256_mul_ps(x, x));
                    // `p` is never NaN, and `max_ps` returns its second operand
                    // when the first is NaN: NaN samples are skipped, as in scalar.
                    p[k] = _mm256_max_ps(_mm256_andnot_ps(sign, x), p[k]);
                }
            }
            for v in vectors {
                let x = _mm256_loadu_ps(v.as_ptr());
                s[0] = _mm256_add_ps(s[0], _mm256_mul_ps(x, x));
                p[0] = _mm256_max_ps(_mm256_andnot_ps(sign, x), p[0]);
            }
            let s = _mm256_add_ps(_mm256_add_ps(s[0], s[1]), _mm256_add_ps(s[2], s[3]));
            let p = _mm256_max_ps(_mm256_max_ps(p[0], p[1]), _mm256_max_ps(p[2], p[3]));
            _mm256_storeu_ps(sums.as_mut_ptr(), s);
            _mm256_storeu_ps(peaks.as_mut_ptr(), p);
        }
        let t = scalar::level(tail);
        Level {
            sum_squares: sums.iter().sum::<f32>() + t.sum_squares,
            peak: peaks.iter().fold(t.peak, |m, &x| m.max(x)),
        }
    }
}

/// SSE2 paths (4 lanes). SSE2 is part of the x86_64 baseline, so these are
/// safe to call on any x86_64 CPU.
#[cfg(target_arch = "x86_64")]
mod sse2 {
    use super::{scalar, Level};
    use std::arch::x86_64::*;

    /// `f32` lanes per vector.
    const W: usize = 4;

    pub(super) fn add_into(acc: &mut [f32], src: &[f32]) {
        let n = acc.len().min(src.len());
        let (acc, src) = (&mut acc[..n], &src[..n]);
        for (a, s) in acc.chunks_exact_mut(W).zip(src.chunks_exact(W)) {
            // SAFETY: both chunks hold exactly W elements, so the unaligned
            // 4-lane load/store stay in bounds; SSE2 is baseline on x86_64.
            unsafe {
                let v = _mm_add_ps(_mm_loadu_ps(a.as_ptr()), _mm_loadu_ps(s.as_ptr()));
                _mm_storeu_ps(a.as_mut_ptr(), v);
            }
        }
        let body = n - n % W;
        scalar::add_into(&mut acc[body..], &src[body..]);
    }

    pub(super) fn sub(out: &mut [f32], a: &[f32], b: &[f32]) {
        let n = out.len().min(a.len()).min(b.len());
        let (out, a, b) = (&mut out[..n], &a[..n], &b[..n]);
        for ((o, x), y) in out
            .chunks_exact_mut(W)
            .zip(a.chunks_exact(W))
            .zip(b.chunks_exact(W))
        {
            // SAFETY: all three chunks hold exactly W elements, so the unaligned
            // 4-lane loads/store stay in bounds; SSE2 is baseline on x86_64.
            unsafe {
                let v = _mm_sub_ps(_mm_loadu_ps(x.as_ptr()), _mm_loadu_ps(y.as_ptr()));
                _mm_storeu_ps(o.as_mut_ptr(), v);
            }
        }
        let body = n - n % W;
        scalar::sub(&mut out[body..], &a[body..], &b[body..]);
    }

    pub(super) fn scale(buf: &mut [f32], gain: f32) {
        let n = buf.len();
        for x in buf.chunks_exact_mut(W) {
            // SAFETY: the chunk holds exactly W elements, so the unaligned
            // 4-lane load/store stay in bounds; SSE2 is baseline on x86_64.
            unsafe {
                let v = _mm_mul_ps(_mm_loadu_ps(x.as_ptr()), _mm_set1_ps(gain));
                _mm_storeu_ps(x.as_mut_ptr(), v);
            }
        }
        let body = n - n % W;
        scalar::scale(&mut buf[body..], gain);
    }

    pub(super) fn i16_to_f32(dst: &mut [f32], src: &[i16]) {
        const P: usize = 8;
        let n = dst.len().min(src.len());
        let (dst, src) = (&mut dst[..n], &src[..n]);
        for (d, s) in dst.chunks_exact_mut(P).zip(src.chunks_exact(P)) {
            // SAFETY: `s` holds exactly 8 `i16` (one unaligned 128-bit load) and
            // `d` exactly 8 `f32` (two unaligned 4-lane stores at 0 and 4);
            // SSE2 is baseline on x86_64. Multiplying by 2^-15 is exactly the
            // scalar division by 32768.
            unsafe {
                let pcm = _mm_loadu_si128(s.as_ptr().cast());
                // SSE2 has no sign-extending widen: duplicate each i16 into
                // both halves of a 32-bit lane, then shift arithmetically.
                let lo = _mm_srai_epi32(_mm_unpacklo_epi16(pcm, pcm), 16);
                let hi = _mm_srai_epi32(_mm_unpackhi_epi16(pcm, pcm), 16);
                let k = _mm_set1_ps(1.0 / 32768.0);
                _mm_storeu_ps(d.as_mut_ptr(), _mm_mul_ps(_mm_cvtepi32_ps(lo), k));
                _mm_storeu_ps(d.as_mut_ptr().add(4), _mm_mul_ps(_mm_cvtepi32_ps(hi), k));
            }
        }
        let body = n - n % P;
        scalar::i16_to_f32(&mut dst[body..], &src[body..]);
    }

    pub(super) fn f32_to_i16(dst: &mut [i16], src: &[f32]) {
        const P: usize = 8;
        let n = dst.len().min(src.len());
        let (dst, src) = (&mut dst[..n], &src[..n]);
        for (d, s) in dst.chunks_exact_mut(P).zip(src.chunks_exact(P)) {
            // SAFETY: `s` holds exactly 8 `f32` (two unaligned 4-lane loads at 0
            // and 4) and `d` exactly 8 `i16` (one unaligned 128-bit store); SSE2
            // is baseline on x86_64.
            unsafe {
                let k = _mm_set1_ps(32768.0);
                let lo = _mm_set1_ps(-32768.0);
                let hi = _mm_set1_ps(32767.0);
                let a = _mm_mul_ps(_mm_loadu_ps(s.as_ptr()), k);
                let b = _mm_mul_ps(_mm_loadu_ps(s.as_ptr().add(4)), k);
                // Clamp before rounding (same result as scalar round-then-clamp)
                // and zero NaN lanes, which `max_ps` would turn into -32768.
                let a = _mm_and_ps(_mm_min_ps(_mm_max_ps(a, lo), hi), _mm_cmpord_ps(a, a));
                let b = _mm_and_ps(_mm_min_ps(_mm_max_ps(b, lo), hi), _mm_cmpord_ps(b, b));
                // Nearest-even under the default MXCSR, which Rust code may assume.
                let pcm = _mm_packs_epi32(_mm_cvtps_epi32(a), _mm_cvtps_epi32(b));
                _mm_storeu_si128(d.as_mut_ptr().cast(), pcm);
            }
        }
        let body = n - n % P;
        scalar::f32_to_i16(&mut dst[body..], &src[body..]);
    }

    pub(super) fn level(src: &[f32]) -> Level {
        // Four independent accumulators hide the add latency.
        const U: usize = 4 * W;
        let blocks = src.chunks_exact(U);
        let rest = blocks.remainder();
        let vectors = rest.chunks_exact(W);
        let tail = vectors.remainder();
        let mut sums = [0.0f32; W];
        let mut peaks = [0.0f32; W];
        // SAFETY: every load reads a chunk or sub-chunk of exactly W elements
        // and every store writes an array of exactly W elements, all unaligned
        // forms; SSE2 is baseline on x86_64.
        unsafe {
            let sign = _mm_set1_ps(-0.0);
            let mut s = [_mm_setzero_ps(); 4];
            let mut p = [_mm_setzero_ps(); 4];
            for block in blocks {
                for k in 0..4 {
                    let x = _mm_loadu_ps(block.as_ptr().add(k * W));
                    s[k] = _mm_add_ps(s[k], _mm_mul_ps(x, x));
                    // `p` is never NaN, and `max_ps` returns its second operand
                    // when the first is NaN: NaN samples are skipped, as in scalar.
                    p[k] = _mm_max_ps(_mm_andnot_ps(sign, x), p[k]);
                }
            }
            for v in vectors {
                let x = _mm_loadu_ps(v.as_ptr());
                s[0] = _mm_add_ps(s[0], _mm_mul_ps(x, x));
                p[0] = _mm_max_ps(_mm_andnot_ps(sign, x), p[0]);
            }
            let s = _mm_add_ps(_mm_add_ps(s[0], s[1]), _mm_add_ps(s[2], s[3]));
            let p = _mm_max_ps(_mm_max_ps(p[0], p[1]), _mm_max_ps(p[2], p[3]));
            _mm_storeu_ps(sums.as_mut_ptr(), s);
            _mm_storeu_ps(peaks.as_mut_ptr(), p);
        }
        let t = scalar::level(tail);
        Level {
            sum_squares: sums.iter().sum::<f32>() + t.sum_squares,
            peak: peaks.iter().fold(t.peak, |m, &x| m.max(x)),
        }
    }
}

/// NEON paths (4 lanes). NEON is part of the aarch64 baseline, so these are
/// safe to call on any aarch64 CPU.
#[cfg(target_arch = "aarch64")]
mod neon {
    use super::{scalar, Level};
    use std::arch::aarch64::*;

    /// `f32` lanes per vector.
    const W: usize = 4;

    pub(super) fn add_into(acc: &mut [f32], src: &[f32]) {
        let n = acc.len().min(src.len());
        let (acc, src) = (&mut acc[..n], &src[..n]);
        for (a, s) in acc.chunks_exact_mut(W).zip(src.chunks_exact(W)) {
            // SAFETY: both chunks hold exactly W elements, so the 4-lane
            // load/store (no alignment needed) stay in bounds; NEON is baseline.
            unsafe {
                let v = vaddq_f32(vld1q_f32(a.as_ptr()), vld1q_f32(s.as_ptr()));
                vst1q_f32(a.as_mut_ptr(), v);
            }
        }
        let body = n - n % W;
        scalar::add_into(&mut acc[body..], &src[body..]);
    }

    pub(super) fn sub(out: &mut [f32], a: &[f32], b: &[f32]) {
        let n = out.len().min(a.len()).min(b.len());
        let (out, a, b) = (&mut out[..n], &a[..n], &b[..n]);
        for ((o, x), y) in out
            .chunks_exact_mut(W)
            .zip(a.chunks_exact(W))
            .zip(b.chunks_exact(W))
        {
            // SAFETY: all three chunks hold exactly W elements, so the 4-lane
            // loads/store stay in bounds; NEON is baseline on aarch64.
            unsafe {
                let v = vsubq_f32(vld1q_f32(x.as_ptr()), vld1q_f32(y.as_ptr()));
                vst1q_f32(o.as_mut_ptr(), v);
            }
        }
        let body = n - n % W;
        scalar::sub(&mut out[body..], &a[body..], &b[body..]);
    }

    pub(super) fn scale(buf: &mut [f32], gain: f32) {
        let n = buf.len();
        for x in buf.chunks_exact_mut(W) {
            // SAFETY: the chunk holds exactly W elements, so the 4-lane
            // load/store stay in bounds; NEON is baseline on aarch64.
            unsafe {
                let v = vmulq_f32(vld1q_f32(x.as_ptr()), vdupq_n_f32(gain));
                vst1q_f32(x.as_mut_ptr(), v);
            }
        }
        let body = n - n % W;
        scalar::scale(&mut buf[body..], gain);
    }

    pub(super) fn i16_to_f32(dst: &mut [f32], src: &[i16]) {
        const P: usize = 8;
        let n = dst.len().min(src.len());
        let (dst, src) = (&mut dst[..n], &src[..n]);
        for (d, s) in dst.chunks_exact_mut(P).zip(src.chunks_exact(P)) {
            // SAFETY: `s` holds exactly 8 `i16` (one 8-lane load) and `d`
            // exactly 8 `f32` (two 4-lane stores at 0 and 4); NEON is baseline.
            // Multiplying by 2^-15 is exactly the scalar division by 32768.
            unsafe {
                let pcm = vld1q_s16(s.as_ptr());
                let k = vdupq_n_f32(1.0 / 32768.0);
                let lo = vcvtq_f32_s32(vmovl_s16(vget_low_s16(pcm)));
                let hi = vcvtq_f32_s32(vmovl_high_s16(pcm));
                vst1q_f32(d.as_mut_ptr(), vmulq_f32(lo, k));
                vst1q_f32(d.as_mut_ptr().add(4), vmulq_f32(hi, k));
            }
        }
        let body = n - n % P;
        scalar::i16_to_f32(&mut dst[body..], &src[body..]);
    }

    pub(super) fn f32_to_i16(dst: &mut [i16], src: &[f32]) {
        const P: usize = 8;
        let n = dst.len().min(src.len());
        let (dst, src) = (&mut dst[..n], &src[..n]);
        for (d, s) in dst.chunks_exact_mut(P).zip(src.chunks_exact(P)) {
            // SAFETY: `s` holds exactly 8 `f32` (two 4-lane loads at 0 and 4)
            // and `d` exactly 8 `i16` (one 8-lane store); NEON is baseline.
            unsafe {
                let k = vdupq_n_f32(32768.0);
                let a = vmulq_f32(vld1q_f32(s.as_ptr()), k);
                let b = vmulq_f32(vld1q_f32(s.as_ptr().add(4)), k);
                // FCVTNS rounds to nearest-even, saturates to i32 and maps NaN
                // to 0; SQXTN then saturates to i16. Rounding is monotone and
                // keeps integers, so this equals the scalar round-then-clamp.
                let pcm = vqmovn_high_s32(vqmovn_s32(vcvtnq_s32_f32(a)), vcvtnq_s32_f32(b));
                vst1q_s16(d.as_mut_ptr(), pcm);
            }
        }
        let body = n - n % P;
        scalar::f32_to_i16(&mut dst[body..], &src[body..]);
    }

    pub(super) fn level(src: &[f32]) -> Level {
        // Four independent accumulators hide the add latency.
        const U: usize = 4 * W;
        let blocks = src.chunks_exact(U);
        let rest = blocks.remainder();
        let vectors = rest.chunks_exact(W);
        let tail = vectors.remainder();
        let mut sums = [0.0f32; W];
        let mut peaks = [0.0f32; W];
        // SAFETY: every load reads a chunk or sub-chunk of exactly W elements
        // and every store writes an array of exactly W elements; NEON is
        // baseline on aarch64.
        unsafe {
            let mut s = [vdupq_n_f32(0.0); 4];
            let mut p = [vdupq_n_f32(0.0); 4];
            for block in blocks {
                for k in 0..4 {
                    let x = vld1q_f32(block.as_ptr().add(k * W));
                    s[k] = vaddq_f32(s[k], vmulq_f32(x, x));
                    // FMAXNM returns the number when one operand is a quiet
                    // NaN: NaN samples are skipped, as in scalar.
                    p[k] = vmaxnmq_f32(p[k], vabsq_f32(x));
                }
            }
            for v in vectors {
                let x = vld1q_f32(v.as_ptr());
                s[0] = vaddq_f32(s[0], vmulq_f32(x, x));
                p[0] = vmaxnmq_f32(p[0], vabsq_f32(x));
            }
            let s = vaddq_f32(vaddq_f32(s[0], s[1]), vaddq_f32(s[2], s[3]));
            let p = vmaxnmq_f32(vmaxnmq_f32(p[0], p[1]), vmaxnmq_f32(p[2], p[3]));
            vst1q_f32(sums.as_mut_ptr(), s);
            vst1q_f32(peaks.as_mut_ptr(), p);
        }
        let t = scalar::level(tail);
        Level {
            sum_squares: sums.iter().sum::<f32>() + t.sum_squares,
            peak: peaks.iter().fold(t.peak, |m, &x| m.max(x)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Longest block the properties try.
    const MAX_LEN: usize = 300;
    /// Start offsets 0..8 put slices at every 4-byte misalignment of a 32-byte vector.
    const MAX_OFF: usize = 8;
    /// Backing buffer length so that any `off..off + len` fits.
    const BUF: usize = MAX_LEN + MAX_OFF;

    /// Every implementation of kernel `$f` runnable on this machine, named for
    /// failure messages: the dispatched entry point plus each per-ISA path.
    macro_rules! impls {
        ($f:ident: $ty:ty, |$($arg:ident),*|) => {{
            let mut v: Vec<(&'static str, $ty)> = vec![("dispatched", super::$f as $ty)];
            #[cfg(target_arch = "x86_64")]
            {
                v.push(("sse2", super::sse2::$f as $ty));
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: only reachable after AVX2 was detected on this CPU.
                    let f: $ty = |$($arg),*| unsafe { super::avx2::$f($($arg),*) };
                    v.push(("avx2", f));
                }
            }
            #[cfg(target_arch = "aarch64")]
            v.push(("neon", super::neon::$f as $ty));
            v
        }};
    }

    type AddInto = fn(&mut [f32], &[f32]);
    type Sub = fn(&mut [f32], &[f32], &[f32]);
    type Scale = fn(&mut [f32], f32);
    type I16ToF32 = fn(&mut [f32], &[i16]);
    type F32ToI16 = fn(&mut [i16], &[f32]);
    type LevelFn = fn(&[f32]) -> Level;

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    fn audio_buf() -> impl Strategy<Value = Vec<f32>> {
        prop::collection::vec(-4.0f32..4.0, BUF)
    }

    /// Floats that stress the conversion: audio, overload, exact ties at
    /// the i16 grid, grid points, and special values.
    fn pcm_float() -> impl Strategy<Value = f32> {
        prop_oneof![
            4 => -4.0f32..4.0,
            1 => -1.0e6f32..1.0e6,
            2 => (-70_000i32..70_000).prop_map(|k| (k as f32 + 0.5) / 32768.0),
            1 => (-70_000i32..70_000).prop_map(|k| k as f32 / 32768.0),
            1 => prop::sample::select(vec![
                f32::NAN,
                -f32::NAN,
                f32::INFINITY,
                f32::NEG_INFINITY,
                f32::MAX,
                f32::MIN,
                0.0,
                -0.0,
                1.0,
                -1.0,
                32767.5 / 32768.0,
                -32768.5 / 32768.0,
                f32::MIN_POSITIVE,
            ]),
        ]
    }

    proptest! {
        #[test]
        fn add_into_matches_scalar(
            acc0 in audio_buf(), src in audio_buf(),
            la in 0..=MAX_LEN, ls in 0..=MAX_LEN, oa in 0..MAX_OFF, os in 0..MAX_OFF,
        ) {
            let mut want = acc0.clone();
            scalar::add_into(&mut want[oa..oa + la], &src[os..os + ls]);
            for (name, f) in impls!(add_into: AddInto, |a, s|) {
                let mut got = acc0.clone();
                f(&mut got[oa..oa + la], &src[os..os + ls]);
                prop_assert_eq!(bits(&got), bits(&want), "{}", name);
            }
        }

        #[test]
        fn sub_matches_scalar(
            out0 in audio_buf(), a in audio_buf(), b in audio_buf(),
            lo in 0..=MAX_LEN, la in 0..=MAX_LEN, lb in 0..=MAX_LEN,
            oo in 0..MAX_OFF, oa in 0..MAX_OFF, ob in 0..MAX_OFF,
        ) {
            let mut want = out0.clone();
            scalar::sub(&mut want[oo..oo + lo], &a[oa..oa + la], &b[ob..ob + lb]);
            for (name, f) in impls!(sub: Sub, |o, x, y|) {
                let mut got = out0.clone();
                f(&mut got[oo..oo + lo], &a[oa..oa + la], &b[ob..ob + lb]);
                prop_assert_eq!(bits(&got), bits(&want), "{}", name);
            }
        }

        #[test]
        fn scale_matches_scalar(
            buf0 in audio_buf(), gain in -8.0f32..8.0, len in 0..=MAX_LEN, off in 0..MAX_OFF,
        ) {
            let mut want = buf0.clone();
            scalar::scale(&mut want[off..off + len], gain);
            for (name, f) in impls!(scale: Scale, |b, g|) {
                let mut got = buf0.clone();
                f(&mut got[off..off + len], gain);
                prop_assert_eq!(bits(&got), bits(&want), "{}", name);
            }
        }

        #[test]
        fn i16_to_f32_matches_scalar(
            dst0 in audio_buf(), src in prop::collection::vec(any::<i16>(), BUF),
            ld in 0..=MAX_LEN, ls in 0..=MAX_LEN, od in 0..MAX_OFF, os in 0..MAX_OFF,
        ) {
            let mut want = dst0.clone();
            scalar::i16_to_f32(&mut want[od..od + ld], &src[os..os + ls]);
            for (name, f) in impls!(i16_to_f32: I16ToF32, |d, s|) {
                let mut got = dst0.clone();
                f(&mut got[od..od + ld], &src[os..os + ls]);
                prop_assert_eq!(bits(&got), bits(&want), "{}", name);
            }
        }

        #[test]
        fn f32_to_i16_matches_scalar(
            dst0 in prop::collection::vec(any::<i16>(), BUF),
            src in prop::collection::vec(pcm_float(), BUF),
            ld in 0..=MAX_LEN, ls in 0..=MAX_LEN, od in 0..MAX_OFF, os in 0..MAX_OFF,
        ) {
            let mut want = dst0.clone();
            scalar::f32_to_i16(&mut want[od..od + ld], &src[os..os + ls]);
            for (name, f) in impls!(f32_to_i16: F32ToI16, |d, s|) {
                let mut got = dst0.clone();
                f(&mut got[od..od + ld], &src[os..os + ls]);
                prop_assert_eq!(&got, &want, "{}", name);
            }
        }

        /// Tolerance: |simd - scalar| <= 1e-4 * max(1, scalar) on `sum_squares`
        /// (at most 300 terms of at most 16, so worst-case reordering error is
        /// about 2 * 300 * 2^-24 relative); `peak` must be bit-exact.
        #[test]
        fn level_matches_scalar(src in audio_buf(), len in 0..=MAX_LEN, off in 0..MAX_OFF) {
            let block = &src[off..off + len];
            let want = scalar::level(block);
            for (name, f) in impls!(level: LevelFn, |s|) {
                let got = f(block);
                prop_assert_eq!(got.peak.to_bits(), want.peak.to_bits(), "{} peak", name);
                let tol = 1e-4 * want.sum_squares.max(1.0);
                prop_assert!(
                    (got.sum_squares - want.sum_squares).abs() <= tol,
                    "{}: {} vs {}", name, got.sum_squares, want.sum_squares
                );
            }
        }
    }

    // The hand-computed cases use 11 or 17 elements so that every path runs
    // both its vector loop and its scalar tail.

    #[test]
    fn add_into_by_hand() {
        let src = [1.0, 1.0, 0.25, -0.25, -2.0, 3.0, -0.0, 0.5, 1.0, 0.5, 1.5];
        let want = [
            2.0, 0.0, 0.75, 0.0, 0.0, 0.0, 0.0, 10.5, 8.0, 0.0, 3.0, 99.0,
        ];
        for (name, f) in impls!(add_into: AddInto, |a, s|) {
            let mut acc = [
                1.0, -1.0, 0.5, 0.25, 2.0, -3.0, 0.0, 10.0, 7.0, -0.5, 1.5, 99.0,
            ];
            f(&mut acc, &src);
            assert_eq!(acc, want, "{name}");
        }
    }

    #[test]
    fn sub_by_hand() {
        let a = [
            5.0, 1.0, 0.5, 0.0, -1.0, 2.0, 4.0, 8.0, 1.5, -2.5, 3.0, 100.0,
        ];
        let b = [2.0, 1.0, 0.25, 1.0, -1.0, -2.0, 0.5, 8.5, 0.5, -2.5, 4.0];
        let want = [
            3.0, 0.0, 0.25, -1.0, 0.0, 4.0, 3.5, -0.5, 1.0, 0.0, -1.0, 42.0, 42.0,
        ];
        for (name, f) in impls!(sub: Sub, |o, x, y|) {
            let mut out = [42.0; 13];
            f(&mut out, &a, &b);
            assert_eq!(out, want, "{name}");
        }
    }

    #[test]
    fn scale_by_hand() {
        let want = [0.5, -1.0, 0.0, 2.0, 0.125, -4.0, 1.5, 0.25, 3.0, -0.5, 50.0];
        for (name, f) in impls!(scale: Scale, |b, g|) {
            let mut buf = [1.0, -2.0, 0.0, 4.0, 0.25, -8.0, 3.0, 0.5, 6.0, -1.0, 100.0];
            f(&mut buf, 0.5);
            assert_eq!(buf, want, "{name}");
        }
    }

    #[test]
    fn i16_to_f32_by_hand() {
        let src = [0, 1, -1, 16384, -16384, 32767, -32768, 8192, -8192, 2, 3];
        let want = [
            0.0,
            3.051_757_8e-5,
            -3.051_757_8e-5,
            0.5,
            -0.5,
            0.999_969_5,
            -1.0,
            0.25,
            -0.25,
            6.103_515_6e-5,
            9.155_273_4e-5,
        ];
        for (name, f) in impls!(i16_to_f32: I16ToF32, |d, s|) {
            let mut dst = [7.0f32; 11];
            f(&mut dst, &src);
            assert_eq!(dst, want, "{name}");
        }
    }

    #[test]
    fn f32_to_i16_by_hand() {
        let q = 1.0 / 32768.0;
        let src = [
            0.0,
            0.5,
            -0.5,
            1.0,
            -1.0,
            2.0,
            f32::NAN,
            0.5 * q,       // tie: rounds to even 0
            1.5 * q,       // tie: rounds to even 2
            -2.5 * q,      // tie: rounds to even -2
            32767.5 * q,   // tie up to 32768, saturates to 32767
            -1.0e6,        // saturates
            f32::INFINITY, // saturates
            q,             // one LSB
            -32768.5 * q,  // tie to even -32768
            f32::NEG_INFINITY,
            f32::NAN, // in every path's scalar tail
        ];
        let want: [i16; 17] = [
            0, 16384, -16384, 32767, -32768, 32767, 0, 0, 2, -2, 32767, -32768, 32767, 1, -32768,
            -32768, 0,
        ];
        for (name, f) in impls!(f32_to_i16: F32ToI16, |d, s|) {
            let mut dst = [123i16; 17];
            f(&mut dst, &src);
            assert_eq!(dst, want, "{name}");
        }
    }

    #[test]
    fn level_by_hand() {
        // Squares are exact binary fractions, so every summation order gives 36.5625.
        let src = [3.0, -4.0, 0.5, -0.5, 1.0, 2.0, -2.0, 0.0, 1.0, -1.0, 0.25];
        for (name, f) in impls!(level: LevelFn, |s|) {
            let l = f(&src);
            assert_eq!(l.sum_squares, 36.5625, "{name}");
            assert_eq!(l.peak, 4.0, "{name}");
        }
    }

    #[test]
    fn level_peak_skips_nan_in_every_lane_position() {
        // 75 samples run every path's unrolled loop, single-vector loop and
        // tail. The unique peak sits at every position relative to a NaN,
        // including earlier in the same lane, where a NaN-propagating max
        // would lose it.
        const N: usize = 75;
        for nan in 0..N {
            for top in (0..N).filter(|&i| i != nan) {
                let mut src = [0.125f32; N];
                src[nan] = f32::NAN;
                src[top] = -0.875;
                assert_eq!(scalar::level(&src).peak, 0.875, "scalar");
                for (name, f) in impls!(level: LevelFn, |s|) {
                    let l = f(&src);
                    assert_eq!(l.peak, 0.875, "{name}, NaN at {nan}, peak at {top}");
                    assert!(l.sum_squares.is_nan(), "{name}, NaN at {nan}");
                }
            }
        }
    }

    #[test]
    fn empty_inputs_are_no_ops() {
        assert_eq!(level(&[]), Level::default());
        let mut acc = [1.0f32; 9];
        add_into(&mut acc, &[]);
        sub(&mut acc, &[], &[2.0; 9]);
        assert_eq!(acc, [1.0; 9]);
    }

    #[test]
    fn rms_by_hand() {
        let l = Level {
            sum_squares: 8.0,
            peak: 2.0,
        };
        assert_eq!(l.rms(2), 2.0);
        assert_eq!(l.rms(0), 0.0);
        assert_eq!(Level::default().rms(10), 0.0);
    }

    #[test]
    fn active_isa_is_cached_and_matches_the_cpu() {
        let first = active_isa();
        assert_eq!(active_isa(), first);
        assert_eq!(first, detect());
        #[cfg(target_arch = "x86_64")]
        {
            let want = if std::arch::is_x86_feature_detected!("avx2") {
                Isa::Avx2
            } else {
                Isa::Sse2
            };
            assert_eq!(first, want);
        }
        let names: Vec<_> = [Isa::Avx2, Isa::Sse2, Isa::Neon, Isa::Scalar]
            .into_iter()
            .map(Isa::name)
            .collect();
        assert_eq!(names, ["avx2", "sse2", "neon", "scalar"]);
    }
}
