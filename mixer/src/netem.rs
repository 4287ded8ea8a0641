//! Seeded in-memory network for deterministic tests.
//!
//! Every RTP test (jitter buffer, whole mixer rooms) and the load generator run
//! over this simulated link so that loss, reordering, duplication and jitter hit
//! the same packets every time a given seed is used: a failure seen once can be
//! replayed exactly. It is sans-IO like the rest of the mixer: the caller passes
//! the time in, nothing sleeps and no clock is read.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// Extra hold-back of a reordered packet on top of `jitter`: one 20 ms packet
/// time (the mixer's ptime), so a held packet really lands behind its successor
/// even when `jitter` is zero.
const REORDER_FRAME: Duration = Duration::from_millis(20);

/// Impairments, all off by default.
///
/// Exists so that each test states the network it needs in one literal, e.g.
/// `NetemConfig { loss: 0.05, ..Default::default() }`.
#[derive(Debug, Clone, Copy, Default)]
pub struct NetemConfig {
    /// Fixed one-way delay added to every datagram.
    pub delay: Duration,
    /// Uniform random variation of the delay, `±jitter` (a delivery time is
    /// never earlier than the send time).
    pub jitter: Duration,
    /// Probability in `0..=1` that a datagram is dropped.
    pub loss: f64,
    /// Probability in `0..=1` that a datagram is delivered twice (the copy gets
    /// its own delay draw).
    pub duplicate: f64,
    /// Probability in `0..=1` that a datagram is held back by an extra
    /// `jitter` + 20 ms, which reorders it behind later ones.
    pub reorder: f64,
}

/// The seeded PRNG behind [`Netem`], public so tests elsewhere can draw
/// reproducible numbers too.
///
/// SplitMix64: tiny, fast, passes BigCrush, and any seed (including 0) is fine,
/// which is all deterministic tests need. Not for cryptography.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator whose whole output is fixed by `seed`, so runs repeat.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits; the primitive every other draw is built on.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`, for comparing against probabilities.
    pub fn next_f64(&mut self) -> f64 {
        // 53 bits fill an f64 mantissa exactly, so every value is equally likely.
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in the half-open range `[lo, hi)`; returns `lo` when the range is
    /// empty (`hi <= lo`) rather than panicking, so callers can pass computed
    /// bounds unchecked.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        if hi <= lo {
            return lo;
        }
        let span = (i128::from(hi) - i128::from(lo)) as u128;
        // Multiply-shift instead of modulo: no bias worth mentioning and no division.
        let offset = (u128::from(self.next_u64()) * span) >> 64;
        (i128::from(lo) + offset as i128) as i64
    }
}

/// A datagram in flight, ordered by delivery time and then by send order so
/// that equal delivery times keep FIFO order (deterministic ties).
#[derive(Debug)]
struct InFlight<T> {
    at: Instant,
    order: u64,
    datagram: T,
}

impl<T> PartialEq for InFlight<T> {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at && self.order == other.order
    }
}

impl<T> Eq for InFlight<T> {}

impl<T> PartialOrd for InFlight<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for InFlight<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: BinaryHeap is a max-heap and we want the earliest first.
        (other.at, other.order).cmp(&(self.at, self.order))
    }
}

/// A seeded one-way link carrying datagrams of type `T`.
///
/// Exists so RTP tests get a realistic, impaired, yet exactly repeatable
/// network without sockets or threads.
#[derive(Debug)]
pub struct Netem<T> {
    config: NetemConfig,
    rng: Rng,
    queue: BinaryHeap<InFlight<T>>,
    order: u64,
    sent: u64,
    dropped: u64,
    duplicated: u64,
}

impl<T: Clone> Netem<T> {
    /// A link with the given impairments whose random choices are fixed by `seed`.
    pub fn new(config: NetemConfig, seed: u64) -> Self {
        Netem {
            config,
            rng: Rng::new(seed),
            queue: BinaryHeap::new(),
            order: 0,
            sent: 0,
            dropped: 0,
            duplicated: 0,
        }
    }

    /// Hands a datagram to the link at time `now`; it may be dropped,
    /// duplicated, delayed or held back according to the configuration.
    pub fn send(&mut self, now: Instant, datagram: T) {
        self.sent += 1;
        // Always make the same five draws per datagram, whatever the config, so
        // that changing one impairment does not reshuffle the others' schedule.
        let lose = self.rng.next_f64() < self.config.loss;
        let duplicate = self.rng.next_f64() < self.config.duplicate;
        let reorder = self.rng.next_f64() < self.config.reorder;
        let first = self.draw_delay();
        let second = self.draw_delay();
        if lose {
            self.dropped += 1;
            return;
        }
        let hold = if reorder {
            self.config.jitter.saturating_add(REORDER_FRAME)
        } else {
            Duration::ZERO
        };
        if duplicate {
            self.duplicated += 1;
            self.enqueue(now, second, datagram.clone());
        }
        self.enqueue(now, first.saturating_add(hold), datagram);
    }

    /// Next datagram due at or before `now`, in delivery order.
    pub fn recv(&mut self, now: Instant) -> Option<T> {
        if self.queue.peek()?.at <= now {
            self.queue.pop().map(|f| f.datagram)
        } else {
            None
        }
    }

    /// When the next datagram becomes deliverable, so a test loop can advance
    /// its fake clock straight to it; `None` when nothing is in flight.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.queue.peek().map(|f| f.at)
    }

    /// Datagrams handed to [`Netem::send`], for loss-ratio assertions.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Datagrams the link lost on purpose, so tests can reconcile counters.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Extra copies the link injected, so tests can reconcile counters.
    pub fn duplicated(&self) -> u64 {
        self.duplicated
    }

    /// `delay ± jitter`, floored at zero.
    fn draw_delay(&mut self) -> Duration {
        let cap = i64::MAX / 4;
        let jitter = i64::try_from(self.config.jitter.as_nanos()).map_or(cap, |j| j.min(cap));
        let delay = i64::try_from(self.config.delay.as_nanos()).map_or(cap, |d| d.min(cap));
        let offset = self.rng.range(-jitter, jitter.saturating_add(1));
        let total = delay.saturating_add(offset).max(0);
        Duration::from_nanos(u64::try_from(total).unwrap_or(0))
    }

    fn enqueue(&mut self, now: Instant, delay: Duration, datagram: T) {
        // An absurd delay that overflows Instant is delivered "now" rather than panicking.
        let at = now.checked_add(delay).unwrap_or(now);
        self.order += 1;
        self.queue.push(InFlight {
            at,
            order: self.order,
            datagram,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(seed: u64, config: NetemConfig) -> Vec<(u32, Duration)> {
        let t0 = Instant::now();
        let mut link = Netem::new(config, seed);
        for k in 0..1000u32 {
            link.send(t0 + Duration::from_millis(20 * u64::from(k)), k);
        }
        let mut out = Vec::new();
        while let Some(at) = link.poll_timeout() {
            while let Some(k) = link.recv(at) {
                out.push((k, at - t0));
            }
        }
        out
    }

    fn impaired() -> NetemConfig {
        NetemConfig {
            delay: Duration::from_millis(50),
            jitter: Duration::from_millis(30),
            loss: 0.1,
            duplicate: 0.05,
            reorder: 0.05,
        }
    }

    #[test]
    fn same_seed_same_schedule() {
        let a = schedule(7, impaired());
        let b = schedule(7, impaired());
        let c = schedule(8, impaired());
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn loss_and_duplicate_ratios_near_config() {
        let t0 = Instant::now();
        let config = NetemConfig {
            loss: 0.1,
            duplicate: 0.05,
            ..Default::default()
        };
        let mut link = Netem::new(config, 42);
        for k in 0..20_000u32 {
            link.send(t0, k);
        }
        let mut delivered = 0u64;
        while link.recv(t0).is_some() {
            delivered += 1;
        }
        assert_eq!(link.sent(), 20_000);
        let loss = link.dropped() as f64 / 20_000.0;
        assert!((0.09..0.11).contains(&loss), "loss {loss}");
        let dup = link.duplicated() as f64 / 20_000.0;
        assert!((0.04..0.06).contains(&dup), "duplicate {dup}");
        assert_eq!(delivered, link.sent() - link.dropped() + link.duplicated());
    }

    #[test]
    fn delay_and_jitter_bounds_respected() {
        let config = NetemConfig {
            delay: Duration::from_millis(50),
            jitter: Duration::from_millis(30),
            ..Default::default()
        };
        let out = schedule(3, config);
        assert_eq!(out.len(), 1000);
        let mut reordered = 0;
        for (i, &(k, at)) in out.iter().enumerate() {
            let sent = Duration::from_millis(20 * u64::from(k));
            let delay = at - sent;
            assert!(delay >= Duration::from_millis(20) && delay <= Duration::from_millis(80));
            if i > 0 && out[i - 1].0 > k {
                reordered += 1;
            }
        }
        // ±30 ms around 20 ms spacing must reorder some packets.
        assert!(reordered > 10);
        // Delivery order is by time.
        assert!(out.windows(2).all(|w| w[0].1 <= w[1].1));
    }

    #[test]
    fn reorder_holds_packets_back() {
        let config = NetemConfig {
            reorder: 0.2,
            ..Default::default()
        };
        let out = schedule(11, config);
        let held = out
            .iter()
            .filter(|&&(k, at)| at > Duration::from_millis(20 * u64::from(k)))
            .count();
        assert!((150..250).contains(&held), "held {held}");
    }

    #[test]
    fn rng_range_is_total() {
        let mut rng = Rng::new(0);
        assert_eq!(rng.range(5, 5), 5);
        assert_eq!(rng.range(5, -5), 5);
        for _ in 0..1000 {
            let v = rng.range(i64::MIN, i64::MAX);
            assert!(v < i64::MAX);
            let w = rng.range(-3, 3);
            assert!((-3..3).contains(&w));
            let f = rng.next_f64();
            assert!((0.0..1.0).contains(&f));
        }
    }
}
