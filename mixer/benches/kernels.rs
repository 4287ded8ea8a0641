//! Scalar reference vs dispatched SIMD kernels, at the sizes the mixer uses:
//! 960 samples (one 20 ms frame at 48 kHz) and 160 (20 ms at 8 kHz).
//!
//! Exists to show the dispatched paths are worth their `unsafe`, and to catch
//! a regression that makes them slower than the reference.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mixer::simd::{self, scalar};

/// Frame sizes in samples.
const SIZES: [usize; 2] = [960, 160];

/// Deterministic audio-like input in [-1, 1), with no dependency on a RNG crate.
fn signal(n: usize, seed: u32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}

fn pcm(n: usize) -> Vec<i16> {
    signal(n, 7).iter().map(|&x| (x * 32767.0) as i16).collect()
}

fn bench_add_into(c: &mut Criterion) {
    let mut g = c.benchmark_group("add_into");
    let isa = simd::active_isa().name();
    for n in SIZES {
        let src = signal(n, 1);
        let mut acc = signal(n, 2);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("scalar", n), &n, |b, _| {
            b.iter(|| scalar::add_into(black_box(&mut acc), black_box(&src)))
        });
        g.bench_with_input(BenchmarkId::new(isa, n), &n, |b, _| {
            b.iter(|| simd::add_into(black_box(&mut acc), black_box(&src)))
        });
    }
    g.finish();
}

fn bench_sub(c: &mut Criterion) {
    let mut g = c.benchmark_group("sub");
    let isa = simd::active_isa().name();
    for n in SIZES {
        let a = signal(n, 1);
        let bb = signal(n, 2);
        let mut out = vec![0.0f32; n];
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("scalar", n), &n, |b, _| {
            b.iter(|| scalar::sub(black_box(&mut out), black_box(&a), black_box(&bb)))
        });
        g.bench_with_input(BenchmarkId::new(isa, n), &n, |b, _| {
            b.iter(|| simd::sub(black_box(&mut out), black_box(&a), black_box(&bb)))
        });
    }
    g.finish();
}

fn bench_scale(c: &mut Criterion) {
    let mut g = c.benchmark_group("scale");
    let isa = simd::active_isa().name();
    for n in SIZES {
        // Gain 1.0 keeps the buffer's values stable across iterations.
        let mut buf = signal(n, 3);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("scalar", n), &n, |b, _| {
            b.iter(|| scalar::scale(black_box(&mut buf), black_box(1.0)))
        });
        g.bench_with_input(BenchmarkId::new(isa, n), &n, |b, _| {
            b.iter(|| simd::scale(black_box(&mut buf), black_box(1.0)))
        });
    }
    g.finish();
}

fn bench_i16_to_f32(c: &mut Criterion) {
    let mut g = c.benchmark_group("i16_to_f32");
    let isa = simd::active_isa().name();
    for n in SIZES {
        let src = pcm(n);
        let mut dst = vec![0.0f32; n];
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("scalar", n), &n, |b, _| {
            b.iter(|| scalar::i16_to_f32(black_box(&mut dst), black_box(&src)))
        });
        g.bench_with_input(BenchmarkId::new(isa, n), &n, |b, _| {
            b.iter(|| simd::i16_to_f32(black_box(&mut dst), black_box(&src)))
        });
    }
    g.finish();
}

fn bench_f32_to_i16(c: &mut Criterion) {
    let mut g = c.benchmark_group("f32_to_i16");
    let isa = simd::active_isa().name();
    for n in SIZES {
        let src = signal(n, 4);
        let mut dst = vec![0i16; n];
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("scalar", n), &n, |b, _| {
            b.iter(|| scalar::f32_to_i16(black_box(&mut dst), black_box(&src)))
        });
        g.bench_with_input(BenchmarkId::new(isa, n), &n, |b, _| {
            b.iter(|| simd::f32_to_i16(black_box(&mut dst), black_box(&src)))
        });
    }
    g.finish();
}

fn bench_level(c: &mut Criterion) {
    let mut g = c.benchmark_group("level");
    let isa = simd::active_isa().name();
    for n in SIZES {
        let src = signal(n, 5);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("scalar", n), &n, |b, _| {
            b.iter(|| scalar::level(black_box(&src)))
        });
        g.bench_with_input(BenchmarkId::new(isa, n), &n, |b, _| {
            b.iter(|| simd::level(black_box(&src)))
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    bench_add_into,
    bench_sub,
    bench_scale,
    bench_i16_to_f32,
    bench_f32_to_i16,
    bench_level
);
criterion_main!(benches);
