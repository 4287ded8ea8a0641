//! A conference room: the sans-IO core that mixes its legs every 20 ms.
//!
//! Drive it like this: feed every datagram of a leg to [`Room::handle_packet`], call
//! [`Room::tick`] whenever [`Room::poll_timeout`] is due, send what the tick put in the
//! [`Outbox`], then drain [`Room::poll_event`]. Time is always passed in, so tests run
//! a thirty-second call in milliseconds.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::codec::{AudioEncoder, CodecKind, EncoderSettings, MAX_PAYLOAD};
use crate::error::{MixerError, Result};
use crate::leg::{Leg, LegConfig, LegId, LegStats, Received};
use crate::limiter::Limiter;
use crate::outbox::Outbox;
use crate::resample::Resampler;
use crate::signal::Tone;
use crate::simd;
use crate::speaker::{SpeakerConfig, SpeakerSelector, TalkerChange};

/// Identifies a room across the mixer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomId(pub u64);

/// The mixer's tick: one 20 ms frame.
pub const TICK: Duration = Duration::from_millis(20);

/// Ticks of silence after which a selected talker shares the listeners' encode
/// (60 ms: longer than a stop consonant, so a talker does not flip at every syllable).
pub const QUIET_TALKER_TICKS: u32 = 3;

/// How a room turns N inputs into N outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MixStrategy {
    /// Mix the K selected talkers; every talker gets its own mix-minus, every other
    /// participant shares one encode of the full mix per (codec, settings) group.
    #[default]
    Shared,
    /// The way Janus AudioBridge works: decode every leg, and build and encode a
    /// separate mix-minus for every participant. Kept for side-by-side benchmarks.
    PerLeg,
}

/// Settings of one room.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoomConfig {
    /// Speaker selection (K and its hysteresis).
    pub speakers: SpeakerConfig,
    /// Mixing strategy.
    pub strategy: MixStrategy,
    /// A leg that sends no RTP for this long (and is not on hold) times out.
    pub rtp_timeout: Duration,
    /// Most legs the room admits.
    pub max_legs: usize,
    /// A tone everyone in the room hears, e.g. the "enter your PIN" prompt of a lobby.
    pub prompt: Option<Prompt>,
}

/// A repeating tone mixed into a room's output as if someone were talking: the prompt a
/// caller waiting for a PIN hears (tones are the whole vocabulary of this mixer).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prompt {
    /// Tone frequency in Hz.
    pub freq_hz: f32,
    /// Peak level, 0.0..=1.0.
    pub level: f32,
    /// How long each beep lasts.
    pub on: Duration,
    /// The silence between beeps.
    pub off: Duration,
}

impl Default for Prompt {
    fn default() -> Self {
        Prompt {
            freq_hz: 425.0,
            level: 0.2,
            on: Duration::from_millis(200),
            off: Duration::from_millis(800),
        }
    }
}

impl Default for RoomConfig {
    fn default() -> Self {
        RoomConfig {
            speakers: SpeakerConfig::default(),
            strategy: MixStrategy::Shared,
            rtp_timeout: Duration::from_secs(30),
            max_legs: 1000,
            prompt: None,
        }
    }
}

/// What a room reports to its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomEvent {
    /// A participant joined the set of mixed talkers.
    TalkingStarted(LegId),
    /// A participant left the set of mixed talkers.
    TalkingStopped(LegId),
    /// A participant pressed a key (RFC 4733), e.g. for a PIN.
    Dtmf {
        /// Who pressed it.
        leg: LegId,
        /// `0`–`9`, `*`, `#`, `A`–`D`.
        digit: char,
    },
    /// A participant sent no RTP for the room's timeout: its owner should hang up.
    LegTimedOut(LegId),
}

/// One shared encode of the full mix, for all listeners with the same codec and
/// settings.
struct EncodeGroup {
    codec: CodecKind,
    settings: EncoderSettings,
    encoder: AudioEncoder,
    down: Resampler,
    limiter: Limiter,
    /// Legs that joined with this codec and settings.
    members: usize,
    /// Of those, the ones listening (not talking, not held) this tick.
    listeners: usize,
}

/// A conference room.
pub struct Room {
    id: RoomId,
    config: RoomConfig,
    legs: Vec<Leg>,
    index: HashMap<LegId, usize>,
    groups: Vec<EncodeGroup>,
    selector: SpeakerSelector,
    rate: u32,
    next_tick: Option<Instant>,
    mix: Vec<f32>,
    prompt: Option<Tone>,
    scratch: Vec<f32>,
    native: Vec<f32>,
    payload: Box<[u8; MAX_PAYLOAD]>,
    events: VecDeque<RoomEvent>,
    ticks: u64,
}

impl Room {
    /// An empty room. It costs nothing until a leg joins.
    pub fn new(id: RoomId, config: RoomConfig) -> Self {
        Room {
            id,
            config,
            legs: Vec::new(),
            index: HashMap::new(),
            groups: Vec::new(),
            selector: SpeakerSelector::new(config.speakers),
            rate: 8_000,
            next_tick: None,
            mix: vec![0.0; 160],
            prompt: config
                .prompt
                .map(|p| Tone::new(p.freq_hz, 8_000, p.level.clamp(0.0, 1.0))),
            scratch: vec![0.0; 160],
            native: vec![0.0; 960],
            payload: Box::new([0; MAX_PAYLOAD]),
            events: VecDeque::with_capacity(64),
            ticks: 0,
        }
    }

    /// The room's id.
    pub fn id(&self) -> RoomId {
        self.id
    }
    /// Number of legs.
    pub fn len(&self) -> usize {
        self.legs.len()
    }
    /// Whether no leg is in the room.
    pub fn is_empty(&self) -> bool {
        self.legs.is_empty()
    }
    /// The mixing rate: 48 kHz when any leg speaks Opus, else 8 kHz.
    pub fn rate(&self) -> u32 {
        self.rate
    }
    /// Ticks run so far.
    pub fn ticks(&self) -> u64 {
        self.ticks
    }
    /// The ids of the legs.
    pub fn leg_ids(&self) -> impl Iterator<Item = LegId> + '_ {
        self.legs.iter().map(|l| l.id)
    }
    /// Number of shared encode groups in use (for tests and stats).
    pub fn encode_groups(&self) -> usize {
        self.groups.iter().filter(|g| g.members > 0).count()
    }
    /// A leg's counters.
    pub fn leg_stats(&self, leg: LegId) -> Option<LegStats> {
        self.index.get(&leg).map(|&i| self.legs[i].stats())
    }
    /// Where a leg's RTP goes now (the latched source once RTP has arrived).
    pub fn leg_remote(&self, leg: LegId) -> Option<SocketAddr> {
        self.index.get(&leg).map(|&i| self.legs[i].remote)
    }
    /// Whether a leg is currently mixed as a talker.
    pub fn is_talking(&self, leg: LegId) -> bool {
        self.index
            .get(&leg)
            .is_some_and(|&i| self.selector.is_selected(i))
    }

    /// Adds a participant. Allocates its codec state and buffers here, so that ticks
    /// never allocate.
    pub fn add_leg(&mut self, id: LegId, config: LegConfig, now: Instant) -> Result<()> {
        if self.index.contains_key(&id) {
            return Err(MixerError::DuplicateId(id.0));
        }
        if self.legs.len() >= self.config.max_legs {
            return Err(MixerError::RoomFull(self.id.0));
        }
        if config.payload_type > 127 || config.telephone_event_pt.is_some_and(|pt| pt > 127) {
            return Err(MixerError::InvalidSetting("RTP payload types are 0..=127"));
        }
        let rate = if config.codec == CodecKind::Opus {
            48_000
        } else {
            self.rate
        };
        let mut leg = Leg::new(id, config, rate, now)?;
        leg.group = self.join_group(config.codec, config.encoder, rate)?;
        if rate != self.rate {
            self.set_rate(rate)?;
        }
        self.index.insert(id, self.legs.len());
        self.legs.push(leg);
        self.selector.push();
        if self.next_tick.is_none() {
            self.next_tick = Some(now + TICK);
        }
        Ok(())
    }

    fn join_group(
        &mut self,
        codec: CodecKind,
        settings: EncoderSettings,
        rate: u32,
    ) -> Result<usize> {
        // G.711 has no settings: all its listeners share one group.
        let settings = if codec == CodecKind::Opus {
            settings
        } else {
            EncoderSettings::default()
        };
        if let Some(i) = self
            .groups
            .iter()
            .position(|g| g.codec == codec && g.settings == settings)
        {
            self.groups[i].members += 1;
            return Ok(i);
        }
        self.groups.push(EncodeGroup {
            codec,
            settings,
            encoder: AudioEncoder::new(codec, &settings)?,
            down: Resampler::new(rate, codec.native_rate())?,
            limiter: Limiter::new(),
            members: 1,
            listeners: 0,
        });
        Ok(self.groups.len() - 1)
    }

    fn set_rate(&mut self, rate: u32) -> Result<()> {
        self.rate = rate;
        let frame = (rate / 50) as usize;
        self.mix = vec![0.0; frame];
        self.scratch = vec![0.0; frame];
        self.prompt = self
            .config
            .prompt
            .map(|p| Tone::new(p.freq_hz, rate, p.level.clamp(0.0, 1.0)));
        for leg in &mut self.legs {
            leg.set_room_rate(rate)?;
        }
        for g in &mut self.groups {
            g.down = Resampler::new(rate, g.codec.native_rate())?;
        }
        Ok(())
    }

    /// Removes a participant and returns its final counters.
    pub fn remove_leg(&mut self, id: LegId) -> Result<LegStats> {
        let i = self.index.remove(&id).ok_or(MixerError::NoSuchLeg(id.0))?;
        if self.selector.is_selected(i) {
            self.events.push_back(RoomEvent::TalkingStopped(id));
        }
        let leg = self.legs.swap_remove(i);
        self.selector.swap_remove(i);
        if let Some(moved) = self.legs.get(i) {
            self.index.insert(moved.id, i);
        }
        if let Some(g) = self.groups.get_mut(leg.group) {
            g.members = g.members.saturating_sub(1);
        }
        if self.legs.is_empty() {
            self.next_tick = None;
        } else if self.rate == 48_000
            && !self.legs.iter().any(|l| l.config.codec == CodecKind::Opus)
        {
            self.set_rate(8_000)?;
        }
        Ok(leg.stats())
    }

    /// Mutes or unmutes a participant: a muted one still hears the room.
    pub fn set_muted(&mut self, id: LegId, muted: bool) -> Result<()> {
        let i = *self.index.get(&id).ok_or(MixerError::NoSuchLeg(id.0))?;
        self.legs[i].muted = muted;
        if muted {
            if let Some(TalkerChange::Stopped(_)) = self.selector.clear(i) {
                self.events.push_back(RoomEvent::TalkingStopped(id));
            }
        }
        Ok(())
    }

    /// Puts a participant on hold or resumes it: on hold it is neither mixed nor sent
    /// to, and never times out.
    pub fn set_held(&mut self, id: LegId, held: bool, now: Instant) -> Result<()> {
        let i = *self.index.get(&id).ok_or(MixerError::NoSuchLeg(id.0))?;
        self.legs[i].hold(held, now);
        if held {
            if let Some(TalkerChange::Stopped(_)) = self.selector.clear(i) {
                self.events.push_back(RoomEvent::TalkingStopped(id));
            }
        }
        Ok(())
    }

    /// Feeds one datagram received on a leg's socket from `from`. Malformed input is
    /// counted in the leg's stats and dropped; the only error is an unknown leg.
    pub fn handle_packet(
        &mut self,
        id: LegId,
        from: SocketAddr,
        data: &[u8],
        now: Instant,
    ) -> Result<()> {
        let i = *self.index.get(&id).ok_or(MixerError::NoSuchLeg(id.0))?;
        if let Received::Digit(digit) = self.legs[i].receive(from, data, now) {
            self.events.push_back(RoomEvent::Dtmf { leg: id, digit });
        }
        Ok(())
    }

    /// When the room next wants [`Room::tick`]: `None` for an empty room, which
    /// therefore never wakes anyone.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_tick
    }

    /// The next event for the room's owner.
    pub fn poll_event(&mut self) -> Option<RoomEvent> {
        self.events.pop_front()
    }

    /// Mixes one 20 ms frame and writes one RTP packet per listening leg into `out`
    /// (which the caller clears between sends). Allocates nothing once warmed up.
    pub fn tick(&mut self, now: Instant, out: &mut Outbox) {
        let Some(due) = self.next_tick else {
            return;
        };
        // Catch up by one tick at a time, but never replay a long stall.
        self.next_tick = Some(if now.saturating_duration_since(due) > TICK * 10 {
            now + TICK
        } else {
            due + TICK
        });
        self.ticks += 1;
        self.check_timeouts(now);
        match self.config.strategy {
            MixStrategy::Shared => self.tick_shared(now, out),
            MixStrategy::PerLeg => self.tick_per_leg(now, out),
        }
    }

    /// Adds the prompt tone to the mix when this tick falls in a beep; returns whether it
    /// did. Time is counted in ticks, so the cadence needs no clock.
    fn add_prompt(&mut self) -> bool {
        let (Some(p), Some(tone)) = (self.config.prompt, self.prompt.as_mut()) else {
            return false;
        };
        let tick_ms = TICK.as_millis() as u64;
        let on = (p.on.as_millis() as u64 / tick_ms).max(1);
        let period = on + p.off.as_millis() as u64 / tick_ms;
        if self.ticks % period.max(1) >= on {
            return false;
        }
        tone.fill(&mut self.scratch);
        simd::add_into(&mut self.mix, &self.scratch);
        true
    }

    fn check_timeouts(&mut self, now: Instant) {
        for leg in &mut self.legs {
            if !leg.held
                && !leg.timed_out
                && now.saturating_duration_since(leg.last_rtp) > self.config.rtp_timeout
            {
                leg.timed_out = true;
                self.events.push_back(RoomEvent::LegTimedOut(leg.id));
            }
        }
    }

    fn tick_shared(&mut self, now: Instant, out: &mut Outbox) {
        // 1. Levels: from RFC 6464 where the leg sends it (no decoding), else decode.
        let threshold = self.config.speakers.activity_threshold_dbov;
        for leg in &mut self.legs {
            leg.decoded = false;
            leg.level = if !leg.can_talk() {
                None
            } else if let Some(level) = leg.peek_level(now) {
                Some(level)
            } else {
                Some(leg.decode(now))
            };
            if leg.level.is_some_and(|l| l > threshold) {
                leg.quiet_ticks = 0;
            } else {
                leg.quiet_ticks = leg.quiet_ticks.saturating_add(1);
            }
        }
        // 2. Speaker selection.
        let legs = &self.legs;
        let events = &mut self.events;
        self.selector.tick(
            now,
            |i| legs[i].level,
            |change| {
                events.push_back(match change {
                    TalkerChange::Started(i) => RoomEvent::TalkingStarted(legs[i].id),
                    TalkerChange::Stopped(i) => RoomEvent::TalkingStopped(legs[i].id),
                })
            },
        );
        // 3. Decode the talkers not decoded yet; everyone else just advances. A talker
        //    pausing inside its turn is, for this tick, a silent leg like any other: its
        //    level says so without decoding, and it hears the shared mix (step 4).
        self.mix.fill(0.0);
        let mut talkers = 0;
        for (i, leg) in self.legs.iter_mut().enumerate() {
            let selected = self.selector.is_selected(i);
            let pausing = selected && leg.quiet_ticks >= QUIET_TALKER_TICKS;
            if selected && !pausing && !leg.decoded {
                leg.decode(now);
            } else if !leg.decoded && !leg.held {
                leg.skip(now);
            }
            if selected && (leg.decoded || !pausing) {
                simd::add_into(&mut self.mix, &leg.pcm_room);
                talkers += 1;
            }
        }
        let prompting = self.add_prompt();
        // 4. Talkers: their own mix-minus, encoded for them alone. A talker whose own
        //    frames have been below the activity threshold for a while (a pause inside
        //    its turn) would get a mix-minus equal to the full mix less near-silence, so
        //    it shares the listeners' encode instead, as FreeSWITCH's conference does
        //    for members that are not speaking. It is back on its own mix-minus in the
        //    very tick its voice returns, so it never hears itself speak.
        for g in &mut self.groups {
            g.listeners = 0;
        }
        for (i, leg) in self.legs.iter_mut().enumerate() {
            if leg.held {
                leg.skip_frame();
                continue;
            }
            if !self.selector.is_selected(i) || leg.quiet_ticks >= QUIET_TALKER_TICKS {
                self.groups[leg.group].listeners += 1;
                continue;
            }
            simd::sub(&mut self.scratch, &self.mix, &leg.pcm_room);
            leg.limiter.process(&mut self.scratch);
            let silent = talkers <= 1 && !prompting;
            match leg.encode_own(&self.scratch, &mut self.payload) {
                Ok(n) => out.push_rtp(leg, silent, &self.payload[..n]),
                Err(_) => leg.stats.encode_errors += 1,
            }
        }
        // 5. Everyone else: one encode per group, one header per member.
        let silent = talkers == 0 && !prompting;
        for (gi, g) in self.groups.iter_mut().enumerate() {
            if g.listeners == 0 {
                continue;
            }
            self.scratch.copy_from_slice(&self.mix);
            g.limiter.process(&mut self.scratch);
            let result = if g.down.from_rate() == g.down.to_rate() {
                g.encoder.encode(&self.scratch, &mut self.payload[..])
            } else {
                let n = g.codec.frame_samples();
                g.down.process(&self.scratch, &mut self.native[..n]);
                g.encoder.encode(&self.native[..n], &mut self.payload[..])
            };
            let Ok(n) = result else {
                for leg in self.legs.iter_mut().filter(|l| l.group == gi) {
                    leg.stats.encode_errors += 1;
                }
                continue;
            };
            for (i, leg) in self.legs.iter_mut().enumerate() {
                let listening =
                    !self.selector.is_selected(i) || leg.quiet_ticks >= QUIET_TALKER_TICKS;
                if leg.group == gi && !leg.held && listening {
                    out.push_rtp(leg, silent, &self.payload[..n]);
                }
            }
        }
    }

    fn tick_per_leg(&mut self, now: Instant, out: &mut Outbox) {
        self.mix.fill(0.0);
        let threshold = self.config.speakers.activity_threshold_dbov;
        let mut active = 0;
        for leg in &mut self.legs {
            leg.decoded = false;
            leg.level = None;
            if leg.can_talk() {
                let level = leg.decode(now);
                leg.level = Some(level);
                active += usize::from(level > threshold);
                simd::add_into(&mut self.mix, &leg.pcm_room);
            } else if !leg.held {
                leg.skip(now);
            }
        }
        let prompting = self.add_prompt();
        for leg in &mut self.legs {
            if leg.held {
                leg.skip_frame();
                continue;
            }
            let own = usize::from(leg.level.is_some_and(|l| l > threshold));
            let silent = active - own == 0 && !prompting;
            if leg.decoded {
                simd::sub(&mut self.scratch, &self.mix, &leg.pcm_room);
            } else {
                self.scratch.copy_from_slice(&self.mix);
            }
            leg.limiter.process(&mut self.scratch);
            match leg.encode_own(&self.scratch, &mut self.payload) {
                Ok(n) => out.push_rtp(leg, silent, &self.payload[..n]),
                Err(_) => leg.stats.encode_errors += 1,
            }
        }
    }
}

#[cfg(test)]
#[path = "room_tests.rs"]
mod tests;
