//! Per-leg adaptive jitter buffer.
//!
//! The mixer ticks every frame (20 ms) and needs exactly one frame per leg per
//! tick, while packets arrive early, late, out of order, twice or never. This
//! buffer absorbs that: it reorders, drops duplicates and late packets, adapts
//! its depth to the measured jitter and tells the mixer when to conceal and
//! when the talker is simply silent. It is sans-IO (time is passed in) and does
//! not allocate in steady state: a fixed ring of slots whose payload buffers
//! only grow when a larger payload first arrives.
//!
//! # Rules
//!
//! * Sequence numbers and timestamps are extended to 64 bits relative to the
//!   highest seen (RFC 3550 A.1), so 16/32-bit wrap-around is invisible.
//! * Playout is by sequence number, one frame per [`JitterBuffer::pop`].
//! * **Target depth** (how many frames are buffered beyond the one being
//!   played) is `clamp(ceil((3 × J + frame) / frame), min, max)` frames, where
//!   `J` is the RFC 3550 A.8 interarrival jitter. Playout starts (and restarts
//!   after silence) when the buffered span reaches the target, or when the
//!   oldest buffered packet has waited the target time.
//! * **Missing frame**: if the frames buffered after it already cover the
//!   target, or it has been waited for [`MAX_WAIT`] ticks, it is given up:
//!   `Lost { next }` and counted in `lost`. Otherwise the buffer conceals
//!   without advancing (`Lost { next: None }`, not counted): the frame is
//!   probably just late, and waiting for it is how the delay grows towards the
//!   target when jitter rises.
//! * **Empty buffer**: up to [`MAX_WAIT`] concealed ticks (end-of-burst loss or
//!   a late packet), then `Silence` and back to buffering. The position is
//!   kept, so a talk spurt that resumes with the next sequence number after a
//!   long silence is accepted and no loss is counted for the silence.
//! * **Shrinking**: when more than target + 2 frames stay buffered for
//!   [`SHRINK_TICKS`] consecutive ticks, the oldest frame is dropped
//!   (`dropped_for_depth`).
//! * **Duplicate vs late**: a packet already buffered, or played or dropped
//!   within the last 64 sequence numbers, is `Duplicate`; any other packet
//!   behind the playout position (given up as lost, skipped, or too old to
//!   tell) is `Late`.
//! * **Sequence jumps**: a packet that does not fit the ring ahead, or is more
//!   than 100 behind, is treated as a sender restart: while idle it re-anchors
//!   at once; while playing it needs a second packet in sequence (RFC 3550 A.1
//!   `bad_seq`), the first returning `Probation`.
//! * **SSRC**: the first SSRC is adopted at once. Another SSRC must deliver two
//!   packets in sequence (RFC 3550 A.1 probation, `MIN_SEQUENTIAL = 2`); then
//!   the buffer resets onto it, keeping both packets. A candidate that is not
//!   continued by the very next packet is dropped and counted in
//!   `foreign_ssrc`. Packets of the SSRC just replaced are refused outright for
//!   one second so in-flight stragglers cannot flip the stream back.

use std::time::{Duration, Instant};

/// Ticks the buffer conceals while waiting for a missing frame before giving
/// it up (buffer not empty) or going silent (buffer empty): 60 ms of PLC covers
/// loss at the end of a burst without concealing into a real silence.
pub const MAX_WAIT: u32 = 3;
/// Consecutive ticks the buffer must stay above target + [`SHRINK_SLACK`]
/// before one frame is dropped: half a second, so bursts do not cause drops.
pub const SHRINK_TICKS: u32 = 25;
/// Frames above the target tolerated before shrinking, to avoid oscillation.
pub const SHRINK_SLACK: u32 = 2;
/// A packet this many sequence numbers behind the playout position is a
/// sender restart rather than a late packet (RFC 3550 A.1 `MAX_MISORDER`).
const MAX_MISORDER: u64 = 100;
/// Sequence numbers behind the playout position whose fate (played or not) is
/// remembered, to tell duplicates from late packets.
const HISTORY: u64 = 64;
/// Smallest ring: 200 ms (10 frames) of depth plus as much again and more of
/// reordering headroom.
const MIN_RING: usize = 32;
/// Upper bound on the depth in frames, bounding the ring a config can ask for.
const MAX_FRAMES: u32 = 500;
/// Extended sequence numbers start here so unwrapping backwards never
/// underflows; a multiple of 2^16 so the low bits equal the wire value.
const SEQ_BASE: u64 = 1 << 32;
/// As [`SEQ_BASE`], for timestamps (a multiple of 2^32).
const TS_BASE: u64 = 1 << 40;
/// How long packets of a replaced SSRC are refused without probation.
const PREVIOUS_SSRC_GRACE: Duration = Duration::from_secs(1);

/// Settings with documented defaults.
///
/// Exists so a leg can be configured per codec (clock rate) and per room
/// policy (latency bounds) without touching the algorithm.
#[derive(Debug, Clone, Copy)]
pub struct JitterConfig {
    /// RTP clock rate in Hz (48000 for Opus, 8000 for G.711); converts arrival
    /// times into timestamp units for the jitter estimate. 0 is treated as 1.
    pub clock_rate: u32,
    /// Packet duration (ptime), default 20 ms; clamped to 1 ms..=1 s.
    pub frame: Duration,
    /// Smallest target depth, default 20 ms (rounded up to whole frames, at
    /// least one): one frame of look-ahead lets a lost frame be recovered from
    /// the next packet's FEC.
    pub min_depth: Duration,
    /// Largest target depth, default 200 ms (rounded down to whole frames, at
    /// least `min_depth`): bounds the latency a jittery leg can add.
    pub max_depth: Duration,
    /// Largest payload accepted, default 1500 bytes; bounds the memory a
    /// hostile sender can make the ring grow to.
    pub max_payload: usize,
    /// Bytes reserved up front in every slot, default 320 (a 20 ms Opus frame at
    /// 128 kb/s, or G.711): payloads up to this size never allocate, even when their
    /// sizes vary as Opus' do; a larger one grows its slot once.
    pub payload_capacity: usize,
}

impl JitterConfig {
    /// The defaults (20 ms frames, 20..=200 ms depth, 1500-byte payloads) for
    /// a codec with the given RTP clock rate.
    pub fn new(clock_rate: u32) -> Self {
        JitterConfig {
            clock_rate,
            frame: Duration::from_millis(20),
            min_depth: Duration::from_millis(20),
            max_depth: Duration::from_millis(200),
            max_payload: 1500,
            payload_capacity: 320,
        }
    }
}

impl Default for JitterConfig {
    /// Opus at 48 kHz, the mixer's usual codec.
    fn default() -> Self {
        JitterConfig::new(48_000)
    }
}

/// One arriving packet, already parsed by the caller (borrowed payload).
///
/// Exists so the buffer is independent of any RTP parsing library and copies
/// the payload only once, into its own slot.
#[derive(Debug, Clone, Copy)]
pub struct Arrival<'a> {
    /// RTP SSRC; identifies the stream, a change means a new sender.
    pub ssrc: u32,
    /// RTP sequence number, the playout order.
    pub sequence: u16,
    /// RTP timestamp, used for the jitter estimate.
    pub timestamp: u32,
    /// RTP marker bit (start of a talk spurt), passed through to playout.
    pub marker: bool,
    /// The codec payload.
    pub payload: &'a [u8],
    /// RFC 6464 audio level (-dBov) if the packet carried one, so the mixer
    /// can pick talkers without decoding.
    pub level: Option<u8>,
}

/// What happened to a pushed packet.
///
/// Exists so callers and tests can see each packet's fate; the same events are
/// also counted in [`JitterStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// Buffered for playout.
    Accepted,
    /// A copy of a packet already buffered or recently played: dropped.
    Duplicate,
    /// Behind the playout position and not a duplicate: dropped.
    Late,
    /// From an SSRC that is not allowed to take over (the one just replaced):
    /// dropped.
    ForeignSsrc,
    /// First packet of a possible new stream (another SSRC, or a sequence jump
    /// while playing): held back until the next packet confirms or refutes it.
    Probation,
    /// Completed probation of a new SSRC: the buffer was reset onto it and
    /// this packet (and the probation one) buffered.
    SsrcChanged,
    /// Payload larger than `max_payload`: dropped.
    TooLarge,
}

/// What the mixer plays this tick.
#[derive(Debug, PartialEq)]
pub enum Playout<'a> {
    /// A packet to decode.
    Frame {
        /// The codec payload.
        payload: &'a [u8],
        /// RFC 6464 level if the packet carried one.
        level: Option<u8>,
        /// RTP marker bit.
        marker: bool,
    },
    /// The frame due now is missing: conceal it. `next` is the following packet
    /// if it is already buffered (its payload carries Opus in-band FEC for this
    /// frame). `next` is always `None` while the buffer is still waiting for a
    /// late frame (it may yet be played), so FEC is only used for frames given up.
    Lost {
        /// The following packet's payload, for FEC decoding.
        next: Option<&'a [u8]>,
    },
    /// Nothing to play: not started, buffering, or the talker is silent (no
    /// packets): play silence, do not conceal.
    Silence,
}

/// Counters reported per leg.
///
/// Exists for RTCP reports, the admin UI and tests; counters survive
/// [`JitterBuffer::reset`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct JitterStats {
    /// Every packet passed to `push`, whatever its outcome.
    pub received: u64,
    /// Frames given up as lost (reported `Lost` and skipped). Concealment
    /// while waiting for a late frame and gaps skipped when playout restarts
    /// after silence are not counted.
    pub lost: u64,
    /// Packets dropped as [`PushOutcome::Late`].
    pub late: u64,
    /// Packets dropped as [`PushOutcome::Duplicate`].
    pub duplicated: u64,
    /// Packets of another SSRC that did not complete probation, plus
    /// [`PushOutcome::ForeignSsrc`] packets.
    pub foreign_ssrc: u64,
    /// Packets dropped as [`PushOutcome::TooLarge`].
    pub too_large: u64,
    /// Times the stream switched to a new SSRC.
    pub ssrc_changes: u64,
    /// Buffered frames discarded unplayed to cut latency (shrinking, or a
    /// re-anchor on a sequence jump).
    pub dropped_for_depth: u64,
    /// RFC 3550 A.8 interarrival jitter in timestamp units.
    pub jitter: f64,
    /// Current target depth in milliseconds.
    pub depth_ms: u32,
    /// Packets currently buffered.
    pub buffered: u32,
}

/// One ring entry; the payload buffer is reused so steady state does not allocate.
#[derive(Debug, Default)]
struct Slot {
    filled: bool,
    seq: u64,
    marker: bool,
    level: Option<u8>,
    payload: Vec<u8>,
}

/// The first packet of an SSRC on probation, kept so it can be played if the
/// SSRC takes over.
#[derive(Debug, Default)]
struct Candidate {
    valid: bool,
    ssrc: u32,
    sequence: u16,
    timestamp: u32,
    marker: bool,
    level: Option<u8>,
    payload: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Not playing: collecting packets until the target depth is reached.
    Buffering,
    /// Playing one frame per tick from `next_play`.
    Playing,
}

/// The decision `pop` would take; computed without mutation so `peek_level`
/// and `pop` cannot disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Stay silent (buffering).
    Silence,
    /// Buffer ran dry for too long: go silent and back to buffering.
    Idle,
    /// Start playout at this extended sequence number.
    Start(u64),
    /// Play the frame at `next_play`, dropping it first and playing the one
    /// after if the buffer has been too deep for too long.
    Play { drop_first: bool },
    /// Conceal without advancing: the due frame may still arrive.
    Wait,
    /// Give up the due frame as lost.
    Skip,
}

/// Where a packet of the current stream goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Insert,
    Duplicate,
    Late,
    /// Sequence jump while playing: needs confirmation.
    Jump,
    /// Sequence jump while idle: restart on it now.
    Reanchor,
}

/// Per-leg adaptive jitter buffer; see the module documentation for the rules.
///
/// Exists so each leg turns an irregular packet stream into exactly one
/// decision per mixer tick: a frame, a concealment, or silence.
#[derive(Debug)]
pub struct JitterBuffer {
    config: JitterConfig,
    frame_ns: u64,
    min_frames: u32,
    max_frames: u32,
    /// Current target depth in frames beyond the frame being played.
    target: u32,
    slots: Vec<Slot>,
    count: u32,
    mode: Mode,
    ssrc: Option<u32>,
    /// Highest extended sequence number buffered since the stream was anchored.
    highest: u64,
    /// Highest extended timestamp seen since the stream was anchored.
    highest_ts: u64,
    /// Lowest buffered sequence number while buffering (where playout starts).
    lowest: u64,
    /// Next sequence number to play; while buffering after playout, the floor
    /// below which packets are late. `None` for a fresh stream.
    next_play: Option<u64>,
    /// Bit i set: sequence `next_play - 1 - i` was played or dropped.
    played: u64,
    waits: u32,
    excess: u32,
    buffering_since: Option<Instant>,
    bad_seq: Option<u16>,
    candidate: Candidate,
    previous: Option<(u32, Instant)>,
    epoch: Option<Instant>,
    last_transit: Option<i128>,
    jitter: f64,
    counters: JitterStats,
}

impl JitterBuffer {
    /// An empty buffer; allocates the ring once, sized for `max_depth` plus
    /// reordering headroom.
    pub fn new(config: JitterConfig) -> Self {
        let mut config = config;
        config.clock_rate = config.clock_rate.max(1);
        let frame_ns = u64::try_from(config.frame.as_nanos())
            .unwrap_or(u64::MAX)
            .clamp(1_000_000, 1_000_000_000);
        config.frame = Duration::from_nanos(frame_ns);
        let frames = |d: Duration, round_up: bool| -> u32 {
            let ns = d.as_nanos();
            let f = u128::from(frame_ns);
            let n = if round_up { ns.div_ceil(f) } else { ns / f };
            u32::try_from(n).unwrap_or(u32::MAX)
        };
        let min_frames = frames(config.min_depth, true).clamp(1, MAX_FRAMES);
        let max_frames = frames(config.max_depth, false).clamp(min_frames, MAX_FRAMES);
        let ring = MIN_RING.max(2 * max_frames as usize + 12);
        let mut slots = Vec::with_capacity(ring);
        let reserve = config.payload_capacity.min(config.max_payload);
        slots.resize_with(ring, || Slot {
            payload: Vec::with_capacity(reserve),
            ..Slot::default()
        });
        JitterBuffer {
            config,
            frame_ns,
            min_frames,
            max_frames,
            target: min_frames,
            slots,
            count: 0,
            mode: Mode::Buffering,
            ssrc: None,
            highest: SEQ_BASE,
            highest_ts: TS_BASE,
            lowest: SEQ_BASE,
            next_play: None,
            played: 0,
            waits: 0,
            excess: 0,
            buffering_since: None,
            bad_seq: None,
            candidate: Candidate {
                payload: Vec::with_capacity(reserve),
                ..Candidate::default()
            },
            previous: None,
            epoch: None,
            last_transit: None,
            jitter: 0.0,
            counters: JitterStats::default(),
        }
    }

    /// Offers an arriving packet; `now` is its arrival time (used for the
    /// jitter estimate and to time the playout start).
    pub fn push(&mut self, packet: &Arrival<'_>, now: Instant) -> PushOutcome {
        self.counters.received = self.counters.received.saturating_add(1);
        if packet.payload.len() > self.config.max_payload {
            self.counters.too_large = self.counters.too_large.saturating_add(1);
            return PushOutcome::TooLarge;
        }
        let epoch = *self.epoch.get_or_insert(now);
        match self.ssrc {
            None => {
                self.ssrc = Some(packet.ssrc);
                self.anchor(packet.sequence, packet.timestamp);
                self.insert_arrival(SEQ_BASE + u64::from(packet.sequence), packet, now);
                self.observe(self.highest_ts, now, epoch);
                return PushOutcome::Accepted;
            }
            Some(current) if current != packet.ssrc => return self.foreign(packet, now, epoch),
            Some(_) => {}
        }
        if self.candidate.valid {
            // The candidate was not continued by the very next packet: a stray.
            self.candidate.valid = false;
            self.count_foreign();
        }
        let ext = extend(self.highest, u64::from(packet.sequence), 16);
        let ext_ts = extend(self.highest_ts, u64::from(packet.timestamp), 32);
        match self.classify(ext) {
            Verdict::Insert => {
                self.insert_arrival(ext, packet, now);
                self.highest_ts = self.highest_ts.max(ext_ts);
                self.observe(ext_ts, now, epoch);
                PushOutcome::Accepted
            }
            Verdict::Duplicate => {
                self.counters.duplicated = self.counters.duplicated.saturating_add(1);
                PushOutcome::Duplicate
            }
            Verdict::Late => {
                self.counters.late = self.counters.late.saturating_add(1);
                // A late packet is exactly the evidence the jitter estimate needs.
                self.observe(ext_ts, now, epoch);
                PushOutcome::Late
            }
            Verdict::Jump if self.bad_seq != Some(packet.sequence) => {
                self.bad_seq = Some(packet.sequence.wrapping_add(1));
                PushOutcome::Probation
            }
            Verdict::Jump | Verdict::Reanchor => {
                self.discard_buffered(true);
                self.anchor(packet.sequence, packet.timestamp);
                self.insert_arrival(SEQ_BASE + u64::from(packet.sequence), packet, now);
                self.observe(self.highest_ts, now, epoch);
                PushOutcome::Accepted
            }
        }
    }

    /// The decision for this tick; called once per 20 ms tick.
    pub fn pop(&mut self, now: Instant) -> Playout<'_> {
        match self.decide(now) {
            Step::Silence => Playout::Silence,
            Step::Idle => {
                self.mode = Mode::Buffering;
                self.waits = 0;
                self.excess = 0;
                self.buffering_since = None;
                Playout::Silence
            }
            Step::Start(at) => {
                self.played = match self.next_play {
                    Some(floor) if at >= floor && at - floor < HISTORY => {
                        self.played << (at - floor)
                    }
                    _ => 0,
                };
                self.next_play = Some(at);
                self.mode = Mode::Playing;
                self.excess = 0;
                self.play(false)
            }
            Step::Play { drop_first } => self.play(drop_first),
            Step::Wait => {
                self.waits += 1;
                self.excess = 0;
                Playout::Lost { next: None }
            }
            Step::Skip => {
                self.excess = 0;
                self.counters.lost = self.counters.lost.saturating_add(1);
                let np = self.advance(false);
                match self.slot_of(np) {
                    Some(i) => Playout::Lost {
                        next: Some(&self.slots[i].payload),
                    },
                    None => Playout::Lost { next: None },
                }
            }
        }
    }

    /// The level of the frame the next pop() would return, without consuming
    /// it, so the mixer can choose talkers before decoding anyone. None if no
    /// frame is due or it carried no level.
    pub fn peek_level(&self, now: Instant) -> Option<u8> {
        let seq = match self.decide(now) {
            Step::Start(at) => at,
            Step::Play { drop_first } => self.next_play? + u64::from(drop_first),
            _ => return None,
        };
        self.slots[self.slot_of(seq)?].level
    }

    /// Counters plus the current jitter, depth and fill.
    pub fn stats(&self) -> JitterStats {
        let depth_ns = u64::from(self.target) * self.frame_ns;
        JitterStats {
            jitter: self.jitter,
            depth_ms: u32::try_from(depth_ns / 1_000_000).unwrap_or(u32::MAX),
            buffered: self.count,
            ..self.counters
        }
    }

    /// Forget everything but the counters (hold/resume, re-INVITE): the next
    /// packet is adopted as a new stream whatever its SSRC, and the jitter
    /// estimate starts again because the path may have changed.
    pub fn reset(&mut self) {
        self.discard_buffered(false);
        self.mode = Mode::Buffering;
        self.ssrc = None;
        self.next_play = None;
        self.played = 0;
        self.waits = 0;
        self.excess = 0;
        self.buffering_since = None;
        self.bad_seq = None;
        self.candidate.valid = false;
        self.previous = None;
        self.epoch = None;
        self.last_transit = None;
        self.jitter = 0.0;
        self.target = self.min_frames;
    }

    fn decide(&self, now: Instant) -> Step {
        let target = u64::from(self.target);
        match (self.mode, self.next_play) {
            (Mode::Buffering, _) => {
                if self.count == 0 {
                    return Step::Silence;
                }
                let span = self.highest.saturating_sub(self.lowest);
                let waited = self
                    .buffering_since
                    .map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
                let target_time = Duration::from_nanos(target.saturating_mul(self.frame_ns));
                if span >= target || waited >= target_time {
                    Step::Start(self.lowest)
                } else {
                    Step::Silence
                }
            }
            (Mode::Playing, None) => Step::Idle,
            (Mode::Playing, Some(np)) => {
                let lookahead = self.highest.saturating_sub(np);
                if self.slot_of(np).is_some() {
                    let drop_first = self.excess.saturating_add(1) >= SHRINK_TICKS
                        && lookahead > target + u64::from(SHRINK_SLACK)
                        && self.slot_of(np + 1).is_some();
                    Step::Play { drop_first }
                } else if self.count == 0 {
                    if self.waits < MAX_WAIT {
                        Step::Wait
                    } else {
                        Step::Idle
                    }
                } else if lookahead >= target || self.waits >= MAX_WAIT {
                    Step::Skip
                } else {
                    Step::Wait
                }
            }
        }
    }

    fn play(&mut self, drop_first: bool) -> Playout<'_> {
        let Some(np) = self.next_play else {
            return Playout::Silence;
        };
        let lookahead = self.highest.saturating_sub(np);
        if lookahead > u64::from(self.target + SHRINK_SLACK) {
            self.excess = self.excess.saturating_add(1);
        } else {
            self.excess = 0;
        }
        if drop_first {
            self.take(np);
            self.advance(true);
            self.counters.dropped_for_depth = self.counters.dropped_for_depth.saturating_add(1);
            self.excess = 0;
        }
        let Some(np) = self.next_play else {
            return Playout::Silence;
        };
        let Some(i) = self.take(np) else {
            // Unreachable by construction (decide checked the slot); stay safe.
            return Playout::Silence;
        };
        self.advance(true);
        self.waits = 0;
        let slot = &self.slots[i];
        Playout::Frame {
            payload: &slot.payload,
            level: slot.level,
            marker: slot.marker,
        }
    }

    /// Moves the playout position on by one, remembering whether the
    /// sequence number left behind was played; returns the new position.
    fn advance(&mut self, played: bool) -> u64 {
        let np = self.next_play.unwrap_or(self.lowest).wrapping_add(1);
        self.next_play = Some(np);
        self.played = (self.played << 1) | u64::from(played);
        np
    }

    fn classify(&self, ext: u64) -> Verdict {
        let ring = self.slots.len() as u64;
        let behind = |floor: u64, jump: Verdict| {
            let back = floor - ext;
            if back <= HISTORY && (self.played >> (back - 1)) & 1 == 1 {
                Verdict::Duplicate
            } else if back > MAX_MISORDER {
                jump
            } else {
                Verdict::Late
            }
        };
        match (self.mode, self.next_play) {
            (Mode::Playing, Some(np)) => {
                if ext < np {
                    behind(np, Verdict::Jump)
                } else if ext - np >= ring {
                    Verdict::Jump
                } else if self.slot_of(ext).is_some() {
                    Verdict::Duplicate
                } else {
                    Verdict::Insert
                }
            }
            (_, floor) => {
                if let Some(f) = floor.filter(|&f| ext < f) {
                    return behind(f, Verdict::Reanchor);
                }
                if self.count == 0 {
                    return Verdict::Insert;
                }
                if self.slot_of(ext).is_some() {
                    return Verdict::Duplicate;
                }
                let lo = self.lowest.min(ext);
                let hi = self.highest.max(ext);
                if hi - lo < ring {
                    Verdict::Insert
                } else if ext > self.lowest {
                    Verdict::Reanchor
                } else {
                    Verdict::Late
                }
            }
        }
    }

    /// Starts a fresh stream position at this packet (new SSRC, restart).
    fn anchor(&mut self, sequence: u16, timestamp: u32) {
        self.mode = Mode::Buffering;
        self.next_play = None;
        self.played = 0;
        self.waits = 0;
        self.excess = 0;
        self.buffering_since = None;
        self.bad_seq = None;
        self.highest = SEQ_BASE + u64::from(sequence);
        self.lowest = self.highest;
        self.highest_ts = TS_BASE + u64::from(timestamp);
        // The timestamp base may have moved: do not difference across it.
        self.last_transit = None;
    }

    fn insert_arrival(&mut self, ext: u64, packet: &Arrival<'_>, now: Instant) {
        let i = self.claim(ext, packet.marker, packet.level, now);
        let payload = &mut self.slots[i].payload;
        payload.clear();
        payload.extend_from_slice(packet.payload);
    }

    /// Marks the slot for `ext` filled and updates the bookkeeping; the caller
    /// fills in the payload.
    fn claim(&mut self, ext: u64, marker: bool, level: Option<u8>, now: Instant) -> usize {
        let i = self.index(ext);
        if self.mode == Mode::Buffering {
            if self.count == 0 {
                self.lowest = ext;
                self.buffering_since = Some(now);
            } else {
                self.lowest = self.lowest.min(ext);
            }
        }
        if self.count == 0 {
            self.highest = ext;
        } else {
            self.highest = self.highest.max(ext);
        }
        let slot = &mut self.slots[i];
        if !slot.filled {
            self.count += 1;
        }
        slot.filled = true;
        slot.seq = ext;
        slot.marker = marker;
        slot.level = level;
        i
    }

    fn foreign(&mut self, packet: &Arrival<'_>, now: Instant, epoch: Instant) -> PushOutcome {
        if let Some((previous, since)) = self.previous {
            if previous == packet.ssrc && now.saturating_duration_since(since) < PREVIOUS_SSRC_GRACE
            {
                self.count_foreign();
                return PushOutcome::ForeignSsrc;
            }
        }
        let c = &self.candidate;
        if c.valid && c.ssrc == packet.ssrc && c.sequence.wrapping_add(1) == packet.sequence {
            self.previous = self.ssrc.map(|s| (s, now));
            self.ssrc = Some(packet.ssrc);
            self.counters.ssrc_changes = self.counters.ssrc_changes.saturating_add(1);
            self.discard_buffered(false);
            self.candidate.valid = false;
            let (seq, ts) = (self.candidate.sequence, self.candidate.timestamp);
            let (marker, level) = (self.candidate.marker, self.candidate.level);
            self.anchor(seq, ts);
            let first = SEQ_BASE + u64::from(seq);
            let i = self.claim(first, marker, level, now);
            // Swap buffers instead of copying: no allocation, the candidate
            // inherits the slot's old buffer for next time.
            std::mem::swap(&mut self.slots[i].payload, &mut self.candidate.payload);
            let ext = extend(self.highest, u64::from(packet.sequence), 16);
            let ext_ts = extend(self.highest_ts, u64::from(packet.timestamp), 32);
            self.insert_arrival(ext, packet, now);
            self.highest_ts = self.highest_ts.max(ext_ts);
            self.observe(ext_ts, now, epoch);
            return PushOutcome::SsrcChanged;
        }
        if self.candidate.valid {
            self.count_foreign();
        }
        let c = &mut self.candidate;
        c.valid = true;
        c.ssrc = packet.ssrc;
        c.sequence = packet.sequence;
        c.timestamp = packet.timestamp;
        c.marker = packet.marker;
        c.level = packet.level;
        c.payload.clear();
        c.payload.extend_from_slice(packet.payload);
        PushOutcome::Probation
    }

    fn count_foreign(&mut self) {
        self.counters.foreign_ssrc = self.counters.foreign_ssrc.saturating_add(1);
    }

    /// Empties the ring (keeping payload capacity); `count_drops` charges the
    /// discarded frames to `dropped_for_depth`.
    fn discard_buffered(&mut self, count_drops: bool) {
        if count_drops {
            self.counters.dropped_for_depth = self
                .counters
                .dropped_for_depth
                .saturating_add(u64::from(self.count));
        }
        for slot in &mut self.slots {
            slot.filled = false;
        }
        self.count = 0;
    }

    /// RFC 3550 A.8 jitter update, then the target depth derived from it.
    fn observe(&mut self, ext_ts: u64, now: Instant, epoch: Instant) {
        let rate = u128::from(self.config.clock_rate);
        let arrival = now.saturating_duration_since(epoch).as_nanos() * rate / 1_000_000_000;
        let transit = i128::try_from(arrival).unwrap_or(i128::MAX / 2) - i128::from(ext_ts);
        if let Some(last) = self.last_transit {
            let d = (transit - last).abs();
            // A jump of over a second is a discontinuity (sender restart, a
            // timestamp not advanced over silence), not network jitter.
            if d <= i128::from(self.config.clock_rate) {
                self.jitter += (d as f64 - self.jitter) / 16.0;
            }
        }
        self.last_transit = Some(transit);
        let jitter_ns = self.jitter * 1e9 / f64::from(self.config.clock_rate);
        let frame = self.frame_ns as f64;
        let frames = ((3.0 * jitter_ns + frame) / frame).ceil();
        // `as` saturates (and maps NaN to 0), then the clamp bounds it.
        self.target = (frames as u32).clamp(self.min_frames, self.max_frames);
    }

    fn index(&self, ext: u64) -> usize {
        (ext % self.slots.len() as u64) as usize
    }

    /// The slot holding `ext`, if buffered.
    fn slot_of(&self, ext: u64) -> Option<usize> {
        let i = self.index(ext);
        let slot = &self.slots[i];
        (slot.filled && slot.seq == ext).then_some(i)
    }

    /// Empties the slot holding `ext`, returning its index (the payload stays
    /// readable until the slot is reused).
    fn take(&mut self, ext: u64) -> Option<usize> {
        let i = self.slot_of(ext)?;
        self.slots[i].filled = false;
        self.count = self.count.saturating_sub(1);
        Some(i)
    }
}

/// Extends a `bits`-wide wire value to the 64-bit value nearest to `reference`
/// (RFC 3550 A.1 style unwrap), so wrap-around in either direction is seamless.
fn extend(reference: u64, value: u64, bits: u32) -> u64 {
    let modulus = 1u64 << bits;
    let mask = modulus - 1;
    let delta = value.wrapping_sub(reference) & mask;
    if delta < modulus / 2 {
        reference.wrapping_add(delta)
    } else {
        reference.wrapping_sub(modulus - delta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netem::{Netem, NetemConfig, Rng};
    use proptest::prelude::*;

    /// Timestamp units per 20 ms frame at 48 kHz.
    const TPF: u32 = 960;
    const SSRC: u32 = 0x1234_5678;

    #[derive(Debug, Clone)]
    struct Pkt {
        ssrc: u32,
        seq: u16,
        ts: u32,
        level: Option<u8>,
        payload: Vec<u8>,
    }

    /// Frame `k` of a stream; the payload carries `k` so playout can be checked.
    fn frame(ssrc: u32, seq0: u16, ts0: u32, k: u64) -> Pkt {
        Pkt {
            ssrc,
            seq: seq0.wrapping_add(k as u16),
            ts: ts0.wrapping_add((k as u32).wrapping_mul(TPF)),
            level: Some((k % 127) as u8),
            payload: k.to_le_bytes().to_vec(),
        }
    }

    fn id(payload: &[u8]) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&payload[..8]);
        u64::from_le_bytes(b)
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Ev {
        Frame(u64),
        Lost(Option<u64>),
        Silence,
    }

    struct Harness {
        t0: Instant,
        jb: JitterBuffer,
        link: Netem<Pkt>,
        outcomes: Vec<(u64, PushOutcome)>,
    }

    impl Harness {
        fn new(net: NetemConfig, seed: u64) -> Self {
            Harness {
                t0: Instant::now(),
                jb: JitterBuffer::new(JitterConfig::new(48_000)),
                link: Netem::new(net, seed),
                outcomes: Vec::new(),
            }
        }

        fn at(&self, ms: u64) -> Instant {
            self.t0 + Duration::from_millis(ms)
        }

        fn send(&mut self, ms: u64, p: Pkt) {
            let now = self.at(ms);
            self.link.send(now, p);
        }

        fn push_now(&mut self, p: &Pkt, now: Instant) -> PushOutcome {
            let arrival = Arrival {
                ssrc: p.ssrc,
                sequence: p.seq,
                timestamp: p.ts,
                marker: false,
                payload: &p.payload,
                level: p.level,
            };
            let o = self.jb.push(&arrival, now);
            self.outcomes.push((id(&p.payload), o));
            o
        }

        /// Delivers everything due by tick `k` at its own arrival time, then pops.
        fn tick(&mut self, k: u64) -> Ev {
            let now = self.at(20 * k);
            while let Some(at) = self.link.poll_timeout().filter(|&a| a <= now) {
                while let Some(p) = self.link.recv(at) {
                    self.push_now(&p, at);
                }
            }
            let peek = self.jb.peek_level(now);
            let ev = match self.jb.pop(now) {
                Playout::Frame { payload, level, .. } => {
                    assert_eq!(peek, level, "peek_level disagrees with pop");
                    Ev::Frame(id(payload))
                }
                Playout::Lost { next } => {
                    assert_eq!(peek, None);
                    Ev::Lost(next.map(id))
                }
                Playout::Silence => {
                    assert_eq!(peek, None);
                    Ev::Silence
                }
            };
            let s = self.jb.stats();
            assert!(s.buffered as usize <= self.jb.slots.len());
            assert!((20..=200).contains(&s.depth_ms));
            ev
        }

        /// Sends frames `range` of a stream (one per tick) and pops each tick.
        fn run(
            &mut self,
            ticks: std::ops::Range<u64>,
            mut source: impl FnMut(u64) -> Option<Pkt>,
        ) -> Vec<Ev> {
            let mut evs = Vec::new();
            for k in ticks {
                if let Some(p) = source(k) {
                    self.send(20 * k, p);
                }
                evs.push(self.tick(k));
            }
            evs
        }
    }

    fn played(evs: &[Ev]) -> Vec<u64> {
        evs.iter()
            .filter_map(|e| match e {
                Ev::Frame(k) => Some(*k),
                _ => None,
            })
            .collect()
    }

    fn assert_increasing(frames: &[u64]) {
        assert!(
            frames.windows(2).all(|w| w[0] < w[1]),
            "frames out of order or replayed: {frames:?}"
        );
    }

    fn assert_consecutive(frames: &[u64], from: u64, to: u64) {
        let expected: Vec<u64> = (from..to).collect();
        let got: Vec<u64> = frames
            .iter()
            .copied()
            .filter(|k| (from..to).contains(k))
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn extend_unwraps_both_ways() {
        assert_eq!(extend(SEQ_BASE + 65_535, 0, 16), SEQ_BASE + 65_536);
        assert_eq!(extend(SEQ_BASE + 65_536, 65_535, 16), SEQ_BASE + 65_535);
        assert_eq!(extend(TS_BASE + 10, u64::from(u32::MAX), 32), TS_BASE - 1);
        assert_eq!(
            extend(TS_BASE + u64::from(u32::MAX), 5, 32),
            TS_BASE + (1 << 32) + 5
        );
    }

    #[test]
    fn in_order_stream_plays_every_frame_with_fixed_latency() {
        let net = NetemConfig {
            delay: Duration::from_millis(30),
            ..Default::default()
        };
        let mut h = Harness::new(net, 1);
        let evs = h.run(0..1000, |k| Some(frame(SSRC, 100, 5000, k)));
        let mut latency = None;
        for (tick, ev) in evs.iter().enumerate() {
            if let Ev::Frame(k) = ev {
                let l = tick as u64 - k;
                assert_eq!(*latency.get_or_insert(l), l, "latency changed");
            } else {
                assert_eq!(*ev, Ev::Silence);
                assert!(latency.is_none(), "gap after playout started: {ev:?}");
            }
        }
        // 30 ms network + one frame of look-ahead: two ticks behind the sender.
        assert_eq!(latency, Some(3));
        assert_consecutive(&played(&evs), 0, 997);
        let s = h.jb.stats();
        assert_eq!(
            (s.lost, s.late, s.duplicated, s.dropped_for_depth),
            (0, 0, 0, 0)
        );
        // The last two are still in flight.
        assert_eq!(s.received, 998);
        assert_eq!(s.depth_ms, 20);
        assert_eq!(s.jitter, 0.0);
    }

    #[test]
    fn swapped_pairs_play_in_order() {
        let mut h = Harness::new(NetemConfig::default(), 1);
        // Frame k is sent in the slot of its pair partner.
        let evs = h.run(0..1000, |k| Some(frame(SSRC, 0, 0, k ^ 1)));
        let frames = played(&evs);
        assert_consecutive(&frames, 0, 998);
        assert!(!evs.iter().any(|e| matches!(e, Ev::Lost(_))));
        let s = h.jb.stats();
        assert_eq!((s.lost, s.late), (0, 0));
    }

    #[test]
    fn random_reordering_within_60ms_plays_every_frame_in_order() {
        let spread = NetemConfig {
            delay: Duration::from_millis(40),
            jitter: Duration::from_millis(30),
            ..Default::default()
        };
        // 10% of packets held back by jitter + one frame (30 to 50 ms).
        let held = NetemConfig {
            delay: Duration::from_millis(40),
            jitter: Duration::from_millis(10),
            reorder: 0.1,
            ..Default::default()
        };
        for (net, seed) in [spread, held]
            .into_iter()
            .flat_map(|n| (0..5).map(move |s| (n, s)))
        {
            let mut h = Harness::new(net, seed);
            let evs = h.run(0..1500, |k| Some(frame(SSRC, 7, 9, k)));
            let frames = played(&evs);
            assert_consecutive(&frames, 0, 1490);
            let s = h.jb.stats();
            assert_eq!((s.lost, s.late), (0, 0), "seed {seed}: {s:?}");
            assert!(s.depth_ms > 20 && s.depth_ms <= 120, "seed {seed}: {s:?}");
        }
    }

    #[test]
    fn random_loss_reported_as_lost_with_fec_source() {
        let net = NetemConfig {
            delay: Duration::from_millis(25),
            loss: 0.05,
            ..Default::default()
        };
        let mut h = Harness::new(net, 5);
        let n = 4000;
        let evs = h.run(0..n + 10, |k| (k < n).then(|| frame(SSRC, 0, 0, k)));
        let frames = played(&evs);
        assert_increasing(&frames);
        let first = frames[0];
        let last = *frames.last().unwrap_or(&0);
        let delivered: std::collections::HashSet<u64> =
            h.outcomes.iter().map(|&(k, _)| k).collect();
        let missing: Vec<u64> = (first..=last).filter(|k| !delivered.contains(k)).collect();
        assert!(
            missing.len() > 150,
            "netem lost too little: {}",
            missing.len()
        );
        // Every frame that arrived was played; every missing one was reported lost.
        assert_eq!(frames.len() + missing.len(), (last - first + 1) as usize);
        let s = h.jb.stats();
        assert_eq!(s.lost as usize, missing.len());
        assert_eq!(s.lost + s.received, n - h.link.dropped() + s.lost);
        let lost_reports: Vec<Option<u64>> = evs
            .iter()
            .filter_map(|e| match e {
                Ev::Lost(next) => Some(*next),
                _ => None,
            })
            .collect();
        let with_fec = lost_reports.iter().filter(|n| n.is_some()).count();
        assert!(
            with_fec * 100 >= missing.len() * 90,
            "FEC source for {with_fec} of {}",
            missing.len()
        );
        // `next` is always the frame after the lost one.
        for w in evs.windows(2) {
            if let [Ev::Lost(Some(n)), next] = w {
                assert_eq!(*next, Ev::Frame(*n));
            }
        }
        assert_eq!(s.depth_ms, 20);
    }

    #[test]
    fn duplicates_dropped_and_counted() {
        let net = NetemConfig {
            delay: Duration::from_millis(20),
            jitter: Duration::from_millis(15),
            duplicate: 0.1,
            ..Default::default()
        };
        let mut h = Harness::new(net, 9);
        let evs = h.run(0..1000, |k| Some(frame(SSRC, 0, 0, k)));
        let frames = played(&evs);
        assert_increasing(&frames);
        let s = h.jb.stats();
        assert!(h.link.duplicated() > 50);
        // Every injected copy is caught, whether still buffered or already played.
        assert_eq!(s.duplicated, h.link.duplicated());
        let dups = h
            .outcomes
            .iter()
            .filter(|(_, o)| *o == PushOutcome::Duplicate)
            .count() as u64;
        assert_eq!(dups, s.duplicated);
    }

    #[test]
    fn late_burst_counted_and_never_replayed() {
        let mut h = Harness::new(NetemConfig::default(), 0);
        let mut evs = Vec::new();
        let mut held = Vec::new();
        for k in 0..400u64 {
            let p = frame(SSRC, 0, 0, k);
            if (200..210).contains(&k) {
                held.push(p);
            } else {
                h.send(20 * k, p);
            }
            if k == 230 {
                // The burst finally arrives, 600 ms late.
                for p in held.drain(..) {
                    h.send(20 * k, p);
                }
            }
            evs.push(h.tick(k));
        }
        let frames = played(&evs);
        assert_increasing(&frames);
        assert!(!frames.iter().any(|k| (200..210).contains(k)));
        assert_consecutive(&frames, 210, 398);
        let s = h.jb.stats();
        assert_eq!(s.late, 10);
        let late = h
            .outcomes
            .iter()
            .filter(|(_, o)| *o == PushOutcome::Late)
            .count();
        assert_eq!(late, 10);
    }

    #[test]
    fn sequence_and_timestamp_wrap_play_continuously() {
        let net = NetemConfig {
            delay: Duration::from_millis(10),
            jitter: Duration::from_millis(5),
            ..Default::default()
        };
        let mut h = Harness::new(net, 3);
        let evs = h.run(0..2000, |k| Some(frame(SSRC, 65_500, u32::MAX - 5000, k)));
        let frames = played(&evs);
        assert_consecutive(&frames, frames[0], 1995);
        assert!(frames[0] <= 3);
        let s = h.jb.stats();
        assert_eq!((s.lost, s.late, s.dropped_for_depth), (0, 0, 0));
    }

    #[test]
    fn new_ssrc_takes_over_after_probation() {
        let mut h = Harness::new(NetemConfig::default(), 0);
        let source = |k| {
            Some(if k < 200 {
                frame(SSRC, 10, 10, k)
            } else {
                frame(0xBEEF, 40_000, 77, k)
            })
        };
        let mut evs = h.run(0..230, source);
        let o: Vec<PushOutcome> = h.outcomes.iter().map(|&(_, o)| o).collect();
        assert_eq!(o[200], PushOutcome::Probation);
        assert_eq!(o[201], PushOutcome::SsrcChanged);
        assert!(o[202..].iter().all(|&o| o == PushOutcome::Accepted));

        // Stragglers of the replaced SSRC, even in sequence, cannot flip it back.
        let now = h.at(20 * 230);
        let o1 = h.push_now(&frame(SSRC, 10, 10, 200), now);
        let o2 = h.push_now(&frame(SSRC, 10, 10, 201), now);
        assert_eq!(
            (o1, o2),
            (PushOutcome::ForeignSsrc, PushOutcome::ForeignSsrc)
        );

        evs.extend(h.run(230..400, source));
        let frames = played(&evs);
        assert_increasing(&frames);
        // The old stream's last buffered frame is discarded; the new one plays
        // from its very first (probation) packet.
        assert_consecutive(&frames, 0, 199);
        assert_consecutive(&frames, 200, 399);
        let s = h.jb.stats();
        assert_eq!((s.ssrc_changes, s.foreign_ssrc, s.lost), (1, 2, 0));
    }

    #[test]
    fn stray_foreign_packet_is_dropped_without_disturbing_playout() {
        let mut h = Harness::new(NetemConfig::default(), 0);
        let mut evs = Vec::new();
        for k in 0..400u64 {
            h.send(20 * k, frame(SSRC, 1, 1, k));
            if k == 150 {
                h.send(20 * k, frame(0xD00D, 555, 1, 9999));
            }
            evs.push(h.tick(k));
        }
        let frames = played(&evs);
        assert_consecutive(&frames, 0, 399);
        assert!(!frames.contains(&9999));
        let s = h.jb.stats();
        assert_eq!((s.foreign_ssrc, s.ssrc_changes, s.lost), (1, 0, 0));
        assert!(h.outcomes.contains(&(9999, PushOutcome::Probation)));
    }

    #[test]
    fn long_silence_then_new_spurt() {
        let net = NetemConfig {
            delay: Duration::from_millis(30),
            jitter: Duration::from_millis(10),
            ..Default::default()
        };
        let mut h = Harness::new(net, 2);
        let silence = 500; // 10 s of ticks
        let evs = h.run(0..1200, |k| match k {
            0..200 => Some(frame(SSRC, 1000, 0, k)),
            // Sequence continues, timestamp jumps by the 10 s of silence.
            k if k >= 200 + silence => {
                let mut p = frame(SSRC, 1000, 0, k - silence);
                p.ts = p.ts.wrapping_add(silence as u32 * TPF);
                p.payload = k.to_le_bytes().to_vec();
                Some(p)
            }
            _ => None,
        });
        let frames = played(&evs);
        assert_consecutive(&frames, 0, 200);
        assert_consecutive(&frames, 700, 1195);
        let s = h.jb.stats();
        assert_eq!(s.lost, 0, "{s:?}");
        assert_eq!(s.late, 0);
        // During the silence: at most MAX_WAIT concealed ticks, then silence.
        let quiet = &evs[205..700];
        let concealed = quiet.iter().filter(|e| matches!(e, Ev::Lost(_))).count();
        assert!(concealed <= MAX_WAIT as usize);
        assert!(quiet[10..].iter().all(|e| *e == Ev::Silence));
        // The new spurt plays within network delay + jitter + target depth.
        let first = evs.iter().position(|e| *e == Ev::Frame(700));
        let depth_ticks = u64::from(s.depth_ms / 20);
        assert!(
            first.is_some_and(|t| (t as u64) <= 700 + 2 + depth_ticks + 1),
            "new spurt started at tick {first:?}"
        );
    }

    /// Runs a stream through `phases` of (netem, ticks) and returns the events
    /// and the buffer's stats after each phase.
    fn phased(phases: &[(NetemConfig, u64)], seed: u64) -> (Vec<Ev>, Vec<JitterStats>) {
        let mut h = Harness::new(NetemConfig::default(), seed);
        let mut evs = Vec::new();
        let mut stats = Vec::new();
        let mut links: Vec<Netem<Pkt>> = Vec::new();
        let mut k = 0u64;
        for (i, &(net, ticks)) in phases.iter().enumerate() {
            links.push(Netem::new(net, seed + i as u64));
            for _ in 0..ticks {
                let now = h.at(20 * k);
                if let Some(l) = links.last_mut() {
                    l.send(now, frame(SSRC, 0, 0, k));
                }
                // Deliver from all links in arrival order.
                loop {
                    let due = links
                        .iter()
                        .enumerate()
                        .filter_map(|(j, l)| l.poll_timeout().map(|t| (t, j)))
                        .filter(|&(t, _)| t <= now)
                        .min();
                    let Some((at, j)) = due else { break };
                    if let Some(p) = links[j].recv(at) {
                        h.push_now(&p, at);
                    }
                }
                evs.push(h.tick(k));
                k += 1;
            }
            stats.push(h.jb.stats());
        }
        (evs, stats)
    }

    #[test]
    fn zero_jitter_keeps_minimum_depth() {
        let calm = NetemConfig {
            delay: Duration::from_millis(45),
            ..Default::default()
        };
        let (evs, stats) = phased(&[(calm, 1000)], 4);
        assert_eq!(stats[0].depth_ms, 20);
        assert_eq!(stats[0].jitter, 0.0);
        assert!(stats[0].buffered <= 2);
        assert_consecutive(&played(&evs), 0, 990);
    }

    #[test]
    fn depth_grows_with_jitter_and_shrinks_when_it_drops() {
        let calm = NetemConfig {
            delay: Duration::from_millis(20),
            ..Default::default()
        };
        // Congestion: queueing delay rises and varies by ±40 ms ...
        let rough = NetemConfig {
            delay: Duration::from_millis(100),
            jitter: Duration::from_millis(40),
            ..Default::default()
        };
        // ... then the queue drains again.
        let (evs, stats) = phased(&[(calm, 250), (rough, 3000), (calm, 1500)], 8);
        assert_eq!(stats[0].depth_ms, 20);
        // ±40 ms: J ≈ 80/3 ms, so the target is about 3J + 20 ≈ 100 ms.
        assert!(
            (60..=140).contains(&stats[1].depth_ms),
            "depth under jitter: {:?}",
            stats[1]
        );
        // Losses from lateness are rare once adapted (second half of the rough phase).
        let rough_late = &evs[1750..3250];
        let concealed = rough_late
            .iter()
            .filter(|e| matches!(e, Ev::Lost(_)))
            .count();
        assert!(
            concealed <= 3,
            "concealed {concealed} of {}",
            rough_late.len()
        );
        assert!(stats[1].lost <= 5, "{:?}", stats[1]);
        // Calm again: the estimate decays and the buffer drains back to the minimum.
        assert_eq!(stats[2].depth_ms, 20, "{:?}", stats[2]);
        assert!(stats[2].dropped_for_depth >= 3, "{:?}", stats[2]);
        assert_eq!(stats[2].lost, stats[1].lost);
        let latency = |tick: usize| match evs[tick] {
            Ev::Frame(k) => tick as u64 - k,
            e => panic!("tick {tick}: {e:?}"),
        };
        let rough_latency = latency(3240);
        let calm_latency = latency(evs.len() - 1);
        assert!(rough_latency >= 7, "rough latency {rough_latency}");
        // 20 ms network + one frame of look-ahead, plus the tolerated slack.
        assert!(
            calm_latency <= 2 + SHRINK_SLACK as u64 + 1,
            "latency {rough_latency} -> {calm_latency}"
        );
        assert_increasing(&played(&evs));
    }

    #[test]
    fn oversize_payload_rejected() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::new(8000));
        let big = vec![0u8; 1501];
        let ok = vec![1u8; 1500];
        let mut a = Arrival {
            ssrc: 1,
            sequence: 1,
            timestamp: 0,
            marker: true,
            payload: &big,
            level: None,
        };
        assert_eq!(jb.push(&a, t0), PushOutcome::TooLarge);
        a.payload = &ok;
        assert_eq!(jb.push(&a, t0), PushOutcome::Accepted);
        let s = jb.stats();
        assert_eq!((s.too_large, s.received, s.buffered), (1, 2, 1));
        let later = t0 + Duration::from_millis(20);
        assert_eq!(
            jb.pop(later),
            Playout::Frame {
                payload: &ok,
                level: None,
                marker: true
            }
        );
    }

    #[test]
    fn reset_forgets_stream_but_keeps_counters() {
        let mut h = Harness::new(NetemConfig::default(), 0);
        h.run(0..100, |k| Some(frame(SSRC, 0, 0, k)));
        let before = h.jb.stats();
        h.jb.reset();
        let after = h.jb.stats();
        assert_eq!(after.received, before.received);
        assert_eq!(after.buffered, 0);
        // Any SSRC is adopted at once after a reset.
        let evs = h.run(100..200, |k| Some(frame(0xAAAA, 9000, 0, k)));
        assert_consecutive(&played(&evs), 101, 199);
        assert_eq!(h.jb.stats().ssrc_changes, 0);
    }

    #[test]
    fn sender_restart_with_sequence_jump_recovers() {
        let mut h = Harness::new(NetemConfig::default(), 0);
        let evs = h.run(0..400, |k| {
            Some(if k < 200 {
                frame(SSRC, 0, 0, k)
            } else {
                frame(SSRC, 30_000, 123_456, k)
            })
        });
        let frames = played(&evs);
        assert_increasing(&frames);
        // The jump needs one confirming packet, then the new numbering plays.
        assert_consecutive(&frames, 202, 399);
    }

    #[test]
    fn rng_is_reproducible_for_tests_elsewhere() {
        let mut a = Rng::new(99);
        let mut b = Rng::new(99);
        assert!((0..100).all(|_| a.next_u64() == b.next_u64()));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push {
            ssrc: u32,
            seq: u16,
            ts: u32,
            len: usize,
            at: u64,
        },
        Pop {
            at: u64,
        },
        Reset,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u32..3, any::<u16>(), any::<u32>(), 0usize..1700, 0u64..100_000)
                .prop_map(|(ssrc, seq, ts, len, at)| Op::Push { ssrc, seq, ts, len, at }),
            // Mostly near-sequential pushes, so the interesting states are reached.
            6 => (0u16..40, 0u32..3, 0usize..200).prop_map(|(seq, ts, len)| Op::Push {
                ssrc: 0,
                seq,
                ts: ts * TPF,
                len,
                at: u64::from(seq) * 20,
            }),
            4 => (0u64..100_000).prop_map(|at| Op::Pop { at }),
            1 => Just(Op::Reset),
        ]
    }

    fn check_invariants(jb: &JitterBuffer) {
        let filled = jb.slots.iter().filter(|s| s.filled).count();
        assert_eq!(filled, jb.count as usize);
        assert!(filled <= jb.slots.len());
        for (i, s) in jb.slots.iter().enumerate().filter(|(_, s)| s.filled) {
            assert_eq!(jb.index(s.seq), i);
            assert!(s.seq <= jb.highest);
            if let (Mode::Playing, Some(np)) = (jb.mode, jb.next_play) {
                assert!(s.seq >= np && s.seq - np < jb.slots.len() as u64);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn arbitrary_input_never_panics(ops in proptest::collection::vec(op(), 0..300),
                                        clock_rate in prop_oneof![Just(48_000u32), Just(8000), any::<u32>()],
                                        max_ms in 0u64..2000, min_ms in 0u64..500, frame_ms in 0u64..100) {
            let t0 = Instant::now();
            let config = JitterConfig {
                clock_rate,
                frame: Duration::from_millis(frame_ms),
                min_depth: Duration::from_millis(min_ms),
                max_depth: Duration::from_millis(max_ms),
                max_payload: 1500,
                payload_capacity: 320,
            };
            let mut jb = JitterBuffer::new(config);
            let payload = vec![0xA5u8; 1700];
            for op in ops {
                match op {
                    Op::Push { ssrc, seq, ts, len, at } => {
                        let a = Arrival {
                            ssrc,
                            sequence: seq,
                            timestamp: ts,
                            marker: false,
                            payload: &payload[..len],
                            level: Some(3),
                        };
                        let o = jb.push(&a, t0 + Duration::from_millis(at));
                        prop_assert!(len <= 1500 || o == PushOutcome::TooLarge);
                    }
                    Op::Pop { at } => {
                        let now = t0 + Duration::from_millis(at);
                        let peek = jb.peek_level(now);
                        if let Playout::Frame { level, .. } = jb.pop(now) {
                            prop_assert_eq!(level, peek);
                        } else {
                            prop_assert_eq!(peek, None);
                        }
                    }
                    Op::Reset => jb.reset(),
                }
                check_invariants(&jb);
                let s = jb.stats();
                prop_assert!(s.buffered as usize <= jb.slots.len());
                prop_assert!(s.jitter.is_finite() && s.jitter >= 0.0);
            }
        }
    }
}
