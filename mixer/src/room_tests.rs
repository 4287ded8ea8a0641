//! Whole-room tests. Simulated phones send 20 ms frames of a tone through a seeded
//! [`Netem`] to the room, the room mixes on a fake clock (`t0 + TICK * k`), and every
//! phone decodes what the room sends it into a recording. Who hears whom is measured
//! with the Goertzel algorithm, one tone per talker.

use std::collections::VecDeque;

use super::*;
use crate::codec::AudioDecoder;
use crate::netem::{Netem, NetemConfig};
use crate::outbox::OutPacket;
use crate::rtp::{AudioLevel, RtpHeader, RtpView};
use crate::signal::{dbov, goertzel_power, Tone};

/// Dynamic payload type the phones use for Opus.
const OPUS_PT: u8 = 111;
/// Payload type of RFC 4733 telephone-event.
const DTMF_PT: u8 = 101;
/// RFC 6464 audio-level extension id.
const LEVEL_EXT: u8 = 1;
/// Peak amplitude of the talkers' tones (about −13.5 dBov).
const AMP: f32 = 0.3;
/// A frequency no talker uses: the noise floor of a recording is measured here.
const OFF_FREQ: f32 = 1230.0;
/// Seconds at the end of a recording that the tone checks analyse.
const ANALYSIS_SECS: u32 = 2;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// One RTP packet as a phone received it.
#[derive(Debug, Clone)]
struct Rx {
    /// The tick that produced it.
    tick: u64,
    sequence: u16,
    timestamp: u32,
    ssrc: u32,
    marker: bool,
    payload_type: u8,
    payload: Vec<u8>,
    destination: SocketAddr,
    /// Where its decoded frame starts in the phone's recording.
    at: usize,
}

/// One key-press packet waiting in a phone (RFC 4733).
#[derive(Debug, Clone, Copy)]
struct DtmfPacket {
    event: u8,
    end: bool,
    duration: u16,
    /// First packet of the press: takes the current timestamp and the marker bit.
    first: bool,
}

/// A simulated phone on one leg.
struct Phone {
    leg: LegId,
    codec: CodecKind,
    payload_type: u8,
    /// Where its datagrams come from.
    from: SocketAddr,
    /// What the room's leg is configured with as the remote (before latching).
    remote: SocketAddr,
    tone: Tone,
    /// Sends its tone (true) or encoded silence (false).
    talking: bool,
    /// Sends anything at all; the RTP clock runs on while it does not.
    sending: bool,
    level_ext: Option<u8>,
    encoder: AudioEncoder,
    decoder: AudioDecoder,
    ssrc: u32,
    sequence: u16,
    timestamp: u32,
    last_sent_talking: bool,
    net: Netem<Vec<u8>>,
    /// Sent instead of the next encoded frame, with the frame's own header.
    replace_payload: Option<Vec<u8>>,
    dtmf: VecDeque<DtmfPacket>,
    dtmf_timestamp: u32,
    frame: Vec<f32>,
    recording: Vec<f32>,
    rx: Vec<Rx>,
    /// Initial sequence number of the room's stream towards this phone.
    room_initial_sequence: u16,
}

impl Phone {
    /// A talker on `codec` sending a tone of `freq` Hz with RFC 6464 levels over a
    /// perfect link.
    fn new(leg: u64, codec: CodecKind, freq: f32) -> Phone {
        let frame = codec.frame_samples();
        let from = addr(40_000 + leg as u16 * 2);
        Phone {
            leg: LegId(leg),
            codec,
            payload_type: codec.static_payload_type().unwrap_or(OPUS_PT),
            from,
            remote: from,
            tone: Tone::new(freq, codec.native_rate(), AMP),
            talking: true,
            sending: true,
            level_ext: Some(LEVEL_EXT),
            encoder: AudioEncoder::new(codec, &EncoderSettings::default()).unwrap(),
            decoder: AudioDecoder::new(codec).unwrap(),
            ssrc: 0x1000_0000 | leg as u32,
            sequence: (leg as u16).wrapping_mul(7919),
            timestamp: (leg as u32).wrapping_mul(1_000_003),
            last_sent_talking: false,
            net: Netem::new(NetemConfig::default(), leg),
            replace_payload: None,
            dtmf: VecDeque::new(),
            dtmf_timestamp: 0,
            frame: vec![0.0; frame],
            recording: Vec::new(),
            rx: Vec::new(),
            room_initial_sequence: (leg as u16).wrapping_mul(4099),
        }
    }

    /// A listener: sends encoded silence (level 127).
    fn listener(leg: u64, codec: CodecKind) -> Phone {
        Phone {
            talking: false,
            ..Phone::new(leg, codec, 100.0)
        }
    }

    fn with_tone(mut self, freq: f32, amplitude: f32) -> Phone {
        self.tone = Tone::new(freq, self.codec.native_rate(), amplitude);
        self
    }

    fn link(mut self, config: NetemConfig, seed: u64) -> Phone {
        self.net = Netem::new(config, seed);
        self
    }

    fn without_levels(mut self) -> Phone {
        self.level_ext = None;
        self
    }

    fn room_ssrc(&self) -> u32 {
        0xA000_0000 | self.leg.0 as u32
    }

    fn leg_config(&self) -> LegConfig {
        LegConfig {
            codec: self.codec,
            payload_type: self.payload_type,
            telephone_event_pt: Some(DTMF_PT),
            audio_level_ext: self.level_ext,
            remote: self.remote,
            ssrc: self.room_ssrc(),
            initial_sequence: self.room_initial_sequence,
            initial_timestamp: (self.leg.0 as u32).wrapping_mul(2_654_435_761),
            encoder: EncoderSettings::default(),
        }
    }

    /// Queues one key press: five updates, then the end packet three times.
    fn press(&mut self, event: u8) {
        for i in 1..=5u16 {
            self.dtmf.push_back(DtmfPacket {
                event,
                end: false,
                duration: i * 160,
                first: i == 1,
            });
        }
        for _ in 0..3 {
            self.dtmf.push_back(DtmfPacket {
                event,
                end: true,
                duration: 6 * 160,
                first: false,
            });
        }
    }

    fn header(&mut self, marker: bool, payload_type: u8, timestamp: u32) -> RtpHeader {
        let header = RtpHeader {
            marker,
            payload_type,
            sequence: self.sequence,
            timestamp,
            ssrc: self.ssrc,
            audio_level: None,
        };
        self.sequence = self.sequence.wrapping_add(1);
        header
    }

    /// Produces this tick's frame and hands it to the link.
    fn send(&mut self, now: Instant) {
        if self.talking {
            self.tone.fill(&mut self.frame);
        } else {
            self.frame.fill(0.0);
        }
        let timestamp = self.timestamp;
        self.timestamp = self
            .timestamp
            .wrapping_add(self.codec.frame_samples() as u32);
        if !self.sending {
            return;
        }
        if let Some(d) = self.dtmf.pop_front() {
            if d.first {
                self.dtmf_timestamp = timestamp;
            }
            let header = self.header(d.first, DTMF_PT, self.dtmf_timestamp);
            let flags = if d.end { 0x80 } else { 0 } | 10;
            let [hi, lo] = d.duration.to_be_bytes();
            let mut buf = vec![0u8; header.len() + 4];
            let n = header.write(&mut buf).unwrap();
            buf[n..].copy_from_slice(&[d.event, flags, hi, lo]);
            self.net.send(now, buf);
            self.last_sent_talking = false;
            return;
        }
        let mut payload = [0u8; MAX_PAYLOAD];
        let n = self.encoder.encode(&self.frame, &mut payload).unwrap();
        let payload = self
            .replace_payload
            .take()
            .unwrap_or_else(|| payload[..n].to_vec());
        let level = dbov(&self.frame);
        let marker = self.talking && !self.last_sent_talking;
        self.last_sent_talking = self.talking;
        let mut header = self.header(marker, self.payload_type, timestamp);
        header.audio_level = self
            .level_ext
            .map(|id| (id, AudioLevel::from_dbov(level, level > -50.0)));
        let mut buf = vec![0u8; header.len() + payload.len()];
        let h = header.write(&mut buf).unwrap();
        buf[h..].copy_from_slice(&payload);
        self.net.send(now, buf);
    }

    /// Hands the room every datagram the link delivers by `now`, at its arrival time.
    fn deliver(&mut self, room: &mut Room, now: Instant) {
        while let Some(at) = self.net.poll_timeout().filter(|&at| at <= now) {
            let datagram = self.net.recv(at).unwrap();
            room.handle_packet(self.leg, self.from, &datagram, at)
                .unwrap();
        }
    }

    /// Decodes one packet from the room into the recording.
    fn receive(&mut self, tick: u64, packet: &OutPacket, bytes: &[u8]) {
        let rtp = RtpView::parse(bytes).unwrap();
        let at = self.recording.len();
        self.recording.resize(at + self.codec.frame_samples(), 0.0);
        self.decoder
            .decode(rtp.payload(), &mut self.recording[at..])
            .unwrap();
        self.rx.push(Rx {
            tick,
            sequence: rtp.sequence(),
            timestamp: rtp.timestamp(),
            ssrc: rtp.ssrc(),
            marker: rtp.marker(),
            payload_type: rtp.payload_type(),
            payload: rtp.payload().to_vec(),
            destination: packet.destination,
            at,
        });
    }

    /// The last [`ANALYSIS_SECS`] of the recording.
    fn tail(&self) -> &[f32] {
        let n = (self.codec.native_rate() * ANALYSIS_SECS) as usize;
        assert!(
            self.recording.len() >= n,
            "leg {} recorded only {} samples",
            self.leg.0,
            self.recording.len()
        );
        &self.recording[self.recording.len() - n..]
    }

    /// Power at `freq` over the analysis window (0.25 for a full-scale sine).
    fn power(&self, freq: f32) -> f32 {
        goertzel_power(self.tail(), self.codec.native_rate(), freq)
    }

    /// Power at `freq` in the frame received at `tick`.
    fn frame_power(&self, tick: u64, freq: f32) -> Option<f32> {
        let rx = self.rx.iter().find(|r| r.tick == tick)?;
        let n = self.codec.frame_samples();
        Some(goertzel_power(
            &self.recording[rx.at..rx.at + n],
            self.codec.native_rate(),
            freq,
        ))
    }

    fn payload_at(&self, tick: u64) -> Option<&[u8]> {
        self.rx
            .iter()
            .find(|r| r.tick == tick)
            .map(|r| r.payload.as_slice())
    }
}

/// Asserts over the analysis window that `phone` hears each tone of `heard` (power
/// above 1e-4, i.e. within 23 dB of an undisturbed 0.3 tone at 0.0225, and 30× above
/// the floor at [`OFF_FREQ`]) and that each tone of `absent` is at least 20 dB (100×
/// in power) below the weakest heard one.
fn check_hears(phone: &Phone, heard: &[f32], absent: &[f32]) {
    let floor = phone.power(OFF_FREQ);
    let mut weakest = f32::INFINITY;
    for &f in heard {
        let p = phone.power(f);
        assert!(
            p > 1e-4 && p > 30.0 * floor,
            "leg {} should hear {f} Hz: power {p:.2e}, floor {floor:.2e}",
            phone.leg.0
        );
        weakest = weakest.min(p);
    }
    for &f in absent {
        let p = phone.power(f);
        assert!(
            p * 100.0 < weakest,
            "leg {} should not hear {f} Hz: power {p:.2e}, weakest heard {weakest:.2e}",
            phone.leg.0
        );
    }
}

/// A room, its phones and a fake clock.
struct Sim {
    t0: Instant,
    /// The next tick to run.
    k: u64,
    room: Room,
    out: Outbox,
    phones: Vec<Phone>,
    events: Vec<(u64, RoomEvent)>,
}

impl Sim {
    fn new(config: RoomConfig, phones: Vec<Phone>) -> Sim {
        let t0 = Instant::now();
        let mut room = Room::new(RoomId(1), config);
        for p in &phones {
            room.add_leg(p.leg, p.leg_config(), t0).unwrap();
        }
        Sim {
            t0,
            k: 0,
            room,
            out: Outbox::with_capacity(16),
            phones,
            events: Vec::new(),
        }
    }

    fn at(&self, k: u64) -> Instant {
        self.t0 + TICK * k as u32
    }

    /// The time of the next tick.
    fn now(&self) -> Instant {
        self.at(self.k)
    }

    fn phone(&mut self, leg: u64) -> &mut Phone {
        self.phones.iter_mut().find(|p| p.leg.0 == leg).unwrap()
    }

    fn get(&self, leg: u64) -> &Phone {
        self.phones.iter().find(|p| p.leg.0 == leg).unwrap()
    }

    fn stats(&self, leg: u64) -> LegStats {
        self.room.leg_stats(LegId(leg)).unwrap()
    }

    /// Feeds a datagram to a leg directly (not through its link) at the next tick's time.
    fn inject(&mut self, leg: u64, datagram: &[u8]) {
        let now = self.now();
        let from = self.get(leg).from;
        self.room
            .handle_packet(LegId(leg), from, datagram, now)
            .unwrap();
    }

    /// One 20 ms tick.
    fn step(&mut self) {
        let now = self.now();
        for p in &mut self.phones {
            p.send(now);
        }
        for p in &mut self.phones {
            p.deliver(&mut self.room, now);
        }
        if self.room.poll_timeout().is_some_and(|t| t <= now) {
            self.room.tick(now, &mut self.out);
        }
        for (packet, bytes) in self.out.iter() {
            let phone = self
                .phones
                .iter_mut()
                .find(|p| p.leg == packet.leg)
                .unwrap();
            phone.receive(self.k, packet, bytes);
        }
        self.out.clear();
        while let Some(e) = self.room.poll_event() {
            self.events.push((self.k, e));
        }
        self.k += 1;
    }

    /// Runs until tick `k` (exclusive).
    fn run_until(&mut self, k: u64) {
        while self.k < k {
            self.step();
        }
    }

    fn events_of(&self, leg: u64) -> Vec<(u64, RoomEvent)> {
        self.events
            .iter()
            .copied()
            .filter(|(_, e)| match *e {
                RoomEvent::TalkingStarted(l)
                | RoomEvent::TalkingStopped(l)
                | RoomEvent::LegTimedOut(l)
                | RoomEvent::Dtmf { leg: l, .. } => l.0 == leg,
            })
            .collect()
    }
}

const TALKER_TONES: [f32; 3] = [440.0, 660.0, 880.0];

/// Three Opus talkers on 440, 660 and 880 Hz plus three silent Opus listeners, 3 s.
fn three_talkers(strategy: MixStrategy) -> Sim {
    let mut phones: Vec<Phone> = TALKER_TONES
        .iter()
        .enumerate()
        .map(|(i, &f)| Phone::new(i as u64 + 1, CodecKind::Opus, f))
        .collect();
    phones.extend((4..=6).map(|l| Phone::listener(l, CodecKind::Opus)));
    let mut sim = Sim::new(
        RoomConfig {
            strategy,
            ..RoomConfig::default()
        },
        phones,
    );
    sim.run_until(150);
    sim
}

/// Talker i (legs 1..=3) hears the other two tones and not its own; legs 4..=6 hear all.
fn check_three_talkers(sim: &Sim) {
    for (i, &own) in TALKER_TONES.iter().enumerate() {
        let others: Vec<f32> = TALKER_TONES.iter().copied().filter(|&f| f != own).collect();
        check_hears(sim.get(i as u64 + 1), &others, &[own]);
    }
    for l in 4..=6 {
        check_hears(sim.get(l), &TALKER_TONES, &[]);
    }
}

#[test]
fn three_talkers_each_hear_the_other_two_and_listeners_hear_all() {
    let sim = three_talkers(MixStrategy::Shared);
    check_three_talkers(&sim);
    for l in 1..=3 {
        assert!(sim.room.is_talking(LegId(l)), "leg {l} should be mixed");
    }
    for l in 4..=6 {
        assert!(!sim.room.is_talking(LegId(l)));
    }
    // One packet per tick per leg (the room ticked 149 times: k = 1..150).
    for p in &sim.phones {
        assert_eq!(p.rx.len(), 149, "leg {}", p.leg.0);
    }
}

#[test]
fn per_leg_strategy_gives_the_same_audible_result() {
    let sim = three_talkers(MixStrategy::PerLeg);
    check_three_talkers(&sim);
    for p in &sim.phones {
        assert_eq!(p.rx.len(), 149, "leg {}", p.leg.0);
    }
}

#[test]
fn mixed_opus_and_pcmu_room() {
    // Talkers: 1 Opus 440 Hz, 2 PCMU 660 Hz, 3 Opus 880 Hz.
    // Listeners: 4, 5 Opus; 6, 7 PCMU.
    let phones = vec![
        Phone::new(1, CodecKind::Opus, 440.0),
        Phone::new(2, CodecKind::Pcmu, 660.0),
        Phone::new(3, CodecKind::Opus, 880.0),
        Phone::listener(4, CodecKind::Opus),
        Phone::listener(5, CodecKind::Opus),
        Phone::listener(6, CodecKind::Pcmu),
        Phone::listener(7, CodecKind::Pcmu),
    ];
    let mut sim = Sim::new(RoomConfig::default(), phones);
    assert_eq!(sim.room.rate(), 48_000);
    // One shared group per codec.
    assert_eq!(sim.room.encode_groups(), 2);
    sim.run_until(150);
    assert_eq!(sim.room.rate(), 48_000);

    for (leg, own) in [(1, 440.0), (2, 660.0), (3, 880.0)] {
        let others: Vec<f32> = TALKER_TONES.iter().copied().filter(|&f| f != own).collect();
        check_hears(sim.get(leg), &others, &[own]);
    }
    for l in 4..=7 {
        check_hears(sim.get(l), &TALKER_TONES, &[]);
    }
    assert_eq!(sim.get(2).rx[0].payload.len(), 160, "PCMU at 8 kHz");
    assert_eq!(sim.get(6).rx[0].payload_type, 0);

    // Shared encode: listeners of one codec get byte-identical payloads every tick,
    // and the talkers' own mix-minus payloads differ from them.
    for (a, b, talker) in [(4, 5, 1), (6, 7, 2)] {
        let (pa, pb) = (sim.get(a), sim.get(b));
        assert_eq!(pa.rx.len(), 149);
        assert_eq!(pb.rx.len(), 149);
        for (x, y) in pa.rx.iter().zip(&pb.rx) {
            assert_eq!(x.tick, y.tick);
            assert_eq!(x.payload, y.payload, "legs {a} and {b} at tick {}", x.tick);
        }
        let differs = (50..150)
            .filter(|&k| sim.get(talker).payload_at(k) != pa.payload_at(k))
            .count();
        assert_eq!(differs, 100, "talker {talker} should get its own encode");
    }
}

#[test]
fn all_pcmu_room_mixes_at_8k() {
    // Tones up to 3.1 kHz, all below the 4 kHz Nyquist limit of G.711.
    let tones = [500.0, 1700.0, 3100.0];
    let mut phones: Vec<Phone> = tones
        .iter()
        .enumerate()
        .map(|(i, &f)| Phone::new(i as u64 + 1, CodecKind::Pcmu, f))
        .collect();
    phones.push(Phone::listener(4, CodecKind::Pcmu));
    phones.push(Phone::listener(5, CodecKind::Pcma));
    let mut sim = Sim::new(RoomConfig::default(), phones);
    sim.run_until(150);
    assert_eq!(sim.room.rate(), 8_000);
    for (i, &own) in tones.iter().enumerate() {
        let others: Vec<f32> = tones.iter().copied().filter(|&f| f != own).collect();
        check_hears(sim.get(i as u64 + 1), &others, &[own]);
    }
    check_hears(sim.get(4), &tones, &[]);
    check_hears(sim.get(5), &tones, &[]);
    assert_eq!(sim.get(5).rx[0].payload_type, 8);
}

#[test]
fn five_percent_loss_is_mostly_repaired_by_fec() {
    let lossy = NetemConfig {
        loss: 0.05,
        ..NetemConfig::default()
    };
    let phones = vec![
        Phone::new(1, CodecKind::Opus, 440.0).link(lossy, 0xF0C),
        Phone::listener(2, CodecKind::Opus),
        Phone::listener(3, CodecKind::Opus),
    ];
    let mut sim = Sim::new(RoomConfig::default(), phones);
    sim.run_until(500); // 10 s
    let dropped = sim.get(1).net.dropped();
    let s = sim.stats(1);
    assert!(
        dropped >= 10,
        "the link should drop ~25 of 500, dropped {dropped}"
    );
    assert!(s.jitter.lost > 0, "{s:?}");
    assert!(
        s.jitter.lost <= dropped,
        "lost {} > dropped {dropped}",
        s.jitter.lost
    );
    // At least half of the lost frames rebuilt from the next packet's in-band FEC.
    assert!(
        2 * s.fec_recovered >= s.jitter.lost,
        "fec {} of lost {}",
        s.fec_recovered,
        s.jitter.lost
    );
    for l in 2..=3 {
        check_hears(sim.get(l), &[440.0], &[]);
    }
}

#[test]
fn reordering_jitter_and_duplicates_do_not_disturb_the_mix() {
    let rough = NetemConfig {
        delay: Duration::from_millis(40),
        jitter: Duration::from_millis(15),
        loss: 0.0,
        duplicate: 0.05,
        reorder: 0.05,
    };
    let mut phones: Vec<Phone> = TALKER_TONES
        .iter()
        .enumerate()
        .map(|(i, &f)| Phone::new(i as u64 + 1, CodecKind::Opus, f).link(rough, 100 + i as u64))
        .collect();
    phones.push(Phone::listener(4, CodecKind::Opus).link(rough, 104));
    let mut sim = Sim::new(RoomConfig::default(), phones);
    sim.run_until(250); // 5 s
    check_three_talkers_subset(&sim, 4);
    for l in 1..=4 {
        let s = sim.stats(l);
        let dup = sim.get(l).net.duplicated();
        let sent = sim.get(l).net.sent();
        assert!(dup > 0, "seed should duplicate something on leg {l}");
        // Every injected copy is recognised as a duplicate, unless it came so late that
        // it was counted late instead.
        assert!(
            s.jitter.duplicated <= dup && s.jitter.duplicated + s.jitter.late >= dup,
            "leg {l}: duplicated {} late {} of {dup} copies",
            s.jitter.duplicated,
            s.jitter.late
        );
        // The buffer grew beyond its 20 ms minimum to absorb ±15 ms of jitter.
        assert!(
            s.jitter.depth_ms >= 40,
            "leg {l}: depth {} ms",
            s.jitter.depth_ms
        );
        // Nothing was lost on the wire: the buffer gives up at most 2 % of the frames.
        assert!(
            s.jitter.lost * 50 <= sent,
            "leg {l}: lost {} of {sent}",
            s.jitter.lost
        );
    }
}

/// Talkers 1..=3 on [`TALKER_TONES`] hear the other two; `listener` hears all three.
fn check_three_talkers_subset(sim: &Sim, listener: u64) {
    for (i, &own) in TALKER_TONES.iter().enumerate() {
        let others: Vec<f32> = TALKER_TONES.iter().copied().filter(|&f| f != own).collect();
        check_hears(sim.get(i as u64 + 1), &others, &[own]);
    }
    check_hears(sim.get(listener), &TALKER_TONES, &[]);
}

/// A 12-byte RTP header with these fields and no extension.
fn raw_rtp(first_byte: u8, payload_type: u8, sequence: u16, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![first_byte, payload_type];
    v.extend_from_slice(&sequence.to_be_bytes());
    v.extend_from_slice(&12_345u32.to_be_bytes());
    v.extend_from_slice(&ssrc.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

#[test]
fn bad_input_is_counted_and_never_disturbs_other_legs() {
    let mut phones: Vec<Phone> = TALKER_TONES
        .iter()
        .enumerate()
        .map(|(i, &f)| Phone::new(i as u64 + 1, CodecKind::Opus, f))
        .collect();
    // This listener sends no levels, so the room decodes it every tick.
    phones.push(Phone::listener(4, CodecKind::Opus).without_levels());
    let mut sim = Sim::new(RoomConfig::default(), phones);
    sim.run_until(60);
    assert!(sim.room.is_talking(LegId(1)));
    let before = sim.stats(1);

    // Garbage (version 0, like STUN), a truncated header, an RTP version 1 packet,
    // an empty datagram: four malformed.
    sim.inject(
        1,
        &[
            0x00, 0x01, 0x00, 0x08, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6,
        ],
    );
    sim.step();
    sim.inject(1, &[0x80, 0x6f, 0x00, 0x01, 0x00]);
    sim.step();
    sim.inject(
        1,
        &raw_rtp(0x40, OPUS_PT, 1, 0x1000_0001, &[0xf8, 0xff, 0xfe]),
    );
    sim.step();
    sim.inject(1, &[]);
    sim.step();
    // A payload type that was not negotiated.
    sim.inject(1, &raw_rtp(0x80, 96, 2, 0x1000_0001, &[0xf8, 0xff, 0xfe]));
    sim.step();
    // A datagram larger than any RTP packet.
    let mut big = raw_rtp(0x80, OPUS_PT, 3, 0x1000_0001, &[]);
    big.resize(2000, 0x55);
    sim.inject(1, &big);
    sim.step();
    // One packet of a foreign SSRC mid-stream: held on probation, then dropped when the
    // real stream continues.
    let seq = sim.get(1).sequence;
    sim.inject(
        1,
        &raw_rtp(0x80, OPUS_PT, seq, 0xBAD_55C, &[0xf8, 0xff, 0xfe]),
    );
    sim.step();
    sim.step();
    // An Opus payload libopus rejects (TOC code 3 with zero frames), in sequence so
    // the jitter buffer plays it to the decoder.
    sim.phone(1).replace_payload = Some(vec![0x03, 0x00]);
    sim.run_until(150);

    let s = sim.stats(1);
    assert_eq!(s.malformed - before.malformed, 4, "{s:?}");
    assert_eq!(s.unknown_payload_type - before.unknown_payload_type, 1);
    assert_eq!(s.oversize - before.oversize, 1);
    assert_eq!(s.jitter.foreign_ssrc - before.jitter.foreign_ssrc, 1);
    assert_eq!(s.decode_errors - before.decode_errors, 1);
    assert_eq!(
        s.jitter.ssrc_changes, 0,
        "the foreign SSRC must not take over"
    );
    for l in 2..=4 {
        let o = sim.stats(l);
        assert_eq!(
            (
                o.malformed,
                o.unknown_payload_type,
                o.oversize,
                o.decode_errors
            ),
            (0, 0, 0, 0),
            "leg {l}"
        );
        assert_eq!(o.jitter.foreign_ssrc, 0);
    }
    // The room went on ticking for everyone, and the tones are intact.
    for p in &sim.phones {
        assert_eq!(p.rx.len(), 149, "leg {}", p.leg.0);
    }
    check_three_talkers_subset(&sim, 4);
}

#[test]
fn dtmf_digits_surface_once_as_events() {
    let phones = vec![
        Phone::new(1, CodecKind::Opus, 440.0),
        Phone::new(2, CodecKind::Pcmu, 660.0),
        Phone::listener(3, CodecKind::Opus),
    ];
    let mut sim = Sim::new(RoomConfig::default(), phones);
    // Presses (8 packets each, one per tick; the first end packet is the 6th).
    let presses = [(20, 1, 1), (30, 2, 9), (40, 1, 2), (60, 1, 11)];
    for (tick, leg, event) in presses {
        sim.run_until(tick);
        sim.phone(leg).press(event);
    }
    sim.run_until(100);
    let digits: Vec<(u64, RoomEvent)> = sim
        .events
        .iter()
        .copied()
        .filter(|(_, e)| matches!(e, RoomEvent::Dtmf { .. }))
        .collect();
    let dtmf = |leg, digit| RoomEvent::Dtmf {
        leg: LegId(leg),
        digit,
    };
    assert_eq!(
        digits,
        vec![
            (25, dtmf(1, '1')),
            (35, dtmf(2, '9')),
            (45, dtmf(1, '2')),
            (65, dtmf(1, '#')),
        ]
    );
    assert_eq!(sim.stats(1).dtmf_digits, 3);
    assert_eq!(sim.stats(2).dtmf_digits, 1);
    for l in 1..=2 {
        let s = sim.stats(l);
        assert_eq!((s.malformed, s.unknown_payload_type), (0, 0), "leg {l}");
    }
}

#[test]
fn speaker_events_follow_the_talkers() {
    // One talker: starts at tick 20, stops at tick 100.
    let mut sim = Sim::new(
        RoomConfig::default(),
        vec![
            Phone::listener(1, CodecKind::Opus).with_tone(440.0, AMP),
            Phone::listener(2, CodecKind::Opus),
        ],
    );
    sim.run_until(20);
    assert!(sim.events.is_empty(), "{:?}", sim.events);
    sim.phone(1).talking = true;
    sim.run_until(100);
    assert!(sim.room.is_talking(LegId(1)));
    sim.phone(1).talking = false;
    sim.run_until(120);
    assert!(sim.room.is_talking(LegId(1)), "still within the hangover");
    sim.run_until(160);
    assert!(!sim.room.is_talking(LegId(1)));
    let ev = sim.events_of(1);
    assert_eq!(ev.len(), 2, "{ev:?}");
    let (started, stopped) = (ev[0], ev[1]);
    assert_eq!(started.1, RoomEvent::TalkingStarted(LegId(1)));
    assert_eq!(stopped.1, RoomEvent::TalkingStopped(LegId(1)));
    // Started within 2 ticks (one of jitter-buffer depth, one of rounding).
    assert!((20..=22).contains(&started.0), "{started:?}");
    // Stopped after the 500 ms (25 tick) hangover, plus at most 3 ticks of buffering.
    let hangover = 25;
    assert!(
        (100 + hangover..=100 + hangover + 3).contains(&stopped.0),
        "{stopped:?}"
    );
    assert!(sim.events_of(2).is_empty());

    // Four talkers, K = 3: the three loudest are mixed, the quietest is not.
    let amps = [0.3, 0.2, 0.12, 0.05];
    let freqs = [440.0, 660.0, 880.0, 1100.0];
    let mut phones: Vec<Phone> = (0..4)
        .map(|i| Phone::new(i as u64 + 1, CodecKind::Opus, 0.0).with_tone(freqs[i], amps[i]))
        .collect();
    phones.push(Phone::listener(5, CodecKind::Opus));
    let mut sim = Sim::new(RoomConfig::default(), phones);
    assert_eq!(sim.room.config.speakers.max_talkers, 3);
    while sim.k < 120 {
        sim.step();
        let talking = (1..=5).filter(|&l| sim.room.is_talking(LegId(l))).count();
        assert!(talking <= 3, "tick {}: {talking} talkers", sim.k);
        if sim.k > 5 {
            assert_eq!(talking, 3, "tick {}", sim.k);
        }
    }
    for l in 1..=3 {
        assert!(sim.room.is_talking(LegId(l)), "leg {l}");
    }
    assert!(!sim.room.is_talking(LegId(4)));
    assert!(sim.events_of(4).is_empty(), "{:?}", sim.events_of(4));
    // The quietest talker's tone is not in the mix: if it were it would be at
    // (0.05/0.12)² ≈ 17 % of the weakest mixed tone's power, not below 1 %.
    check_hears(sim.get(5), &freqs[..3], &freqs[3..]);

    // The loudest stops at tick 120. Once its score stops being held (400 ms, 20
    // ticks) it falls below the waiting fourth talker's, which takes its place in
    // the same tick, before the 500 ms hangover would have ended its turn.
    sim.phone(1).talking = false;
    sim.run_until(180);
    assert!(!sim.room.is_talking(LegId(1)));
    assert!(sim.room.is_talking(LegId(4)));
    let stop = sim.events_of(1).last().copied().unwrap();
    let start = sim.events_of(4).first().copied().unwrap();
    assert_eq!(stop.1, RoomEvent::TalkingStopped(LegId(1)));
    assert_eq!(start.1, RoomEvent::TalkingStarted(LegId(4)));
    assert_eq!(stop.0, start.0, "the place is refilled in the same tick");
    assert!((140..=143).contains(&stop.0), "{stop:?}");
}

#[test]
fn outgoing_streams_are_continuous_across_talker_changes() {
    let mut a = Phone::new(1, CodecKind::Opus, 440.0);
    a.talking = false;
    // Start near the wrap so sequence numbers wrap mid-test.
    a.room_initial_sequence = 65_300;
    let mut b = Phone::new(2, CodecKind::Opus, 660.0);
    b.talking = false;
    let mut sim = Sim::new(
        RoomConfig::default(),
        vec![a, b, Phone::listener(3, CodecKind::Opus)],
    );
    // (tick, leg, talking): A talks in [100,200) and [300,400); B in [50,150),
    // [250,340) and [360,440). B starts its spurts while A listens (50, 250) and while
    // A talks alone (360); A joins (100, 300) and leaves (200, 400) the talkers both
    // while B talks and while it does not.
    let schedule = [
        (50, 2, true),
        (100, 1, true),
        (150, 2, false),
        (200, 1, false),
        (250, 2, true),
        (300, 1, true),
        (340, 2, false),
        (360, 2, true),
        (400, 1, false),
        (440, 2, false),
    ];
    for (tick, leg, talking) in schedule {
        sim.run_until(tick);
        sim.phone(leg).talking = talking;
    }
    sim.run_until(500);

    let a = sim.get(1);
    assert_eq!(a.rx.len(), 499);
    let config = a.leg_config();
    assert_eq!(a.rx[0].sequence, config.initial_sequence);
    assert_eq!(a.rx[0].timestamp, config.initial_timestamp);
    for w in a.rx.windows(2) {
        assert_eq!(
            w[1].sequence,
            w[0].sequence.wrapping_add(1),
            "tick {}",
            w[1].tick
        );
        assert_eq!(
            w[1].timestamp,
            w[0].timestamp.wrapping_add(960),
            "tick {}",
            w[1].tick
        );
    }
    assert!(a
        .rx
        .iter()
        .all(|r| r.ssrc == config.ssrc && r.payload_type == OPUS_PT));

    // A hears a talk spurt exactly when B starts one (A alone is silence to A): three
    // spurts, each marked once, within 4 ticks of B starting. A joining or leaving
    // the talkers while B speaks does not start a spurt.
    let markers: Vec<u64> = a.rx.iter().filter(|r| r.marker).map(|r| r.tick).collect();
    assert_eq!(markers.len(), 3, "markers at {markers:?}");
    for (m, start) in markers.iter().zip([50, 250, 360]) {
        assert!(
            (start..=start + 4).contains(m),
            "marker at {m}, spurt at {start}"
        );
    }

    // A really switched between the shared encode (same bytes as listener 3) and its
    // own mix-minus.
    let l = sim.get(3);
    let (mut shared, mut own) = (0, 0);
    for r in &a.rx {
        if l.payload_at(r.tick) == Some(r.payload.as_slice()) {
            shared += 1;
        } else {
            own += 1;
        }
    }
    assert!(shared > 200 && own > 100, "shared {shared}, own {own}");
    // Listener 3's stream is continuous too.
    for w in l.rx.windows(2) {
        assert_eq!(w[1].sequence, w[0].sequence.wrapping_add(1));
        assert_eq!(w[1].timestamp, w[0].timestamp.wrapping_add(960));
    }
}

#[test]
fn leg_times_out_without_rtp_but_not_on_hold() {
    let config = RoomConfig {
        rtp_timeout: Duration::from_secs(2),
        ..RoomConfig::default()
    };
    let phones = vec![
        Phone::new(1, CodecKind::Opus, 440.0),
        Phone::new(2, CodecKind::Opus, 660.0),
        Phone::listener(3, CodecKind::Opus),
    ];
    let mut sim = Sim::new(config, phones);
    sim.run_until(50);
    // Leg 1 goes quiet on the wire; leg 2 is put on hold and sends nothing either.
    sim.phone(1).sending = false;
    sim.phone(2).sending = false;
    let now = sim.now();
    sim.room.set_held(LegId(2), true, now).unwrap();
    sim.run_until(300); // 5 s on hold, 2.5× the timeout
    sim.room.set_held(LegId(2), false, sim.at(300)).unwrap();
    sim.phone(2).sending = true;
    sim.run_until(400);

    let timeouts: Vec<(u64, RoomEvent)> = sim
        .events
        .iter()
        .copied()
        .filter(|(_, e)| matches!(e, RoomEvent::LegTimedOut(_)))
        .collect();
    // Leg 1's last packet arrived at tick 49; the first tick more than 2 s later is 150.
    assert_eq!(timeouts, vec![(150, RoomEvent::LegTimedOut(LegId(1)))]);

    let held = sim.get(2);
    assert!(
        held.rx.iter().all(|r| !(50..300).contains(&r.tick)),
        "a held leg is not sent to"
    );
    assert_eq!(held.rx.iter().filter(|r| r.tick >= 300).count(), 100);
    // After resuming its tone is mixed again.
    check_hears(sim.get(3), &[660.0], &[]);
}

#[test]
fn muted_leg_hears_but_is_not_heard() {
    let mut phones: Vec<Phone> = TALKER_TONES
        .iter()
        .enumerate()
        .map(|(i, &f)| Phone::new(i as u64 + 1, CodecKind::Opus, f))
        .collect();
    phones.push(Phone::listener(4, CodecKind::Opus));
    let mut sim = Sim::new(RoomConfig::default(), phones);
    sim.room.set_muted(LegId(2), true).unwrap();
    sim.run_until(150);
    assert!(!sim.room.is_talking(LegId(2)));
    assert!(sim.events_of(2).is_empty(), "{:?}", sim.events_of(2));
    check_hears(sim.get(1), &[880.0], &[440.0, 660.0]);
    check_hears(sim.get(3), &[440.0], &[660.0, 880.0]);
    check_hears(sim.get(4), &[440.0, 880.0], &[660.0]);
    // The muted one still hears the room.
    check_hears(sim.get(2), &[440.0, 880.0], &[660.0]);
}

#[test]
fn symmetric_rtp_latching() {
    let mut phone = Phone::new(1, CodecKind::Opus, 440.0);
    phone.remote = addr(9);
    phone.sending = false;
    assert_eq!(phone.from, addr(40_002));
    let mut sim = Sim::new(RoomConfig::default(), vec![phone]);
    sim.run_until(4);
    assert_eq!(sim.room.leg_remote(LegId(1)), Some(addr(9)));
    assert!(sim.get(1).rx.iter().all(|r| r.destination == addr(9)));
    assert_eq!(sim.get(1).rx.len(), 3);

    sim.phone(1).sending = true;
    sim.run_until(10);
    assert_eq!(sim.room.leg_remote(LegId(1)), Some(addr(40_002)));
    let after: Vec<SocketAddr> = sim.get(1).rx[3..].iter().map(|r| r.destination).collect();
    assert_eq!(after, vec![addr(40_002); 6]);
    assert_eq!(
        sim.stats(1).relatched,
        0,
        "the first latch is not a re-latch"
    );

    // A NAT rebinding moves the source port: the leg follows it.
    sim.phone(1).from = addr(40_100);
    sim.run_until(12);
    assert_eq!(sim.room.leg_remote(LegId(1)), Some(addr(40_100)));
    assert_eq!(sim.get(1).rx.last().unwrap().destination, addr(40_100));
    assert_eq!(sim.stats(1).relatched, 1);
}

#[test]
fn empty_room_never_asks_for_a_tick() {
    let t0 = Instant::now();
    let mut room = Room::new(
        RoomId(9),
        RoomConfig {
            max_legs: 2,
            ..RoomConfig::default()
        },
    );
    assert_eq!(room.poll_timeout(), None);
    assert!(room.is_empty());
    let config = Phone::new(1, CodecKind::Pcmu, 440.0).leg_config();
    room.add_leg(LegId(1), config, t0).unwrap();
    assert_eq!(room.poll_timeout(), Some(t0 + TICK));
    assert!(matches!(
        room.add_leg(LegId(1), config, t0),
        Err(MixerError::DuplicateId(1))
    ));
    room.add_leg(LegId(2), config, t0).unwrap();
    assert!(matches!(
        room.add_leg(LegId(3), config, t0),
        Err(MixerError::RoomFull(9))
    ));
    assert_eq!(room.len(), 2);
    assert!(matches!(
        room.remove_leg(LegId(77)),
        Err(MixerError::NoSuchLeg(77))
    ));
    let mut out = Outbox::new();
    room.tick(t0 + TICK, &mut out);
    assert_eq!(out.len(), 2);
    out.clear();
    room.remove_leg(LegId(1)).unwrap();
    assert!(room.poll_timeout().is_some());
    room.remove_leg(LegId(2)).unwrap();
    assert_eq!(room.poll_timeout(), None);
    assert!(room.is_empty());
    // Ticking an empty room anyway does nothing.
    room.tick(t0 + TICK * 2, &mut out);
    assert!(out.is_empty());
    assert_eq!(room.ticks(), 1);
    assert_eq!(room.poll_event(), None);
    assert!(matches!(
        room.handle_packet(LegId(1), addr(1), &[], t0),
        Err(MixerError::NoSuchLeg(1))
    ));
}

#[test]
fn ten_seconds_of_silence_then_speech() {
    let phones = vec![
        Phone::new(1, CodecKind::Opus, 440.0),
        Phone::new(2, CodecKind::Opus, 660.0),
        Phone::listener(3, CodecKind::Opus),
    ];
    let mut sim = Sim::new(RoomConfig::default(), phones);
    sim.run_until(100);
    let lost_before = sim.stats(1).jitter.lost;
    // No packets at all for 10 s; the phone's RTP clock runs on, its sequence does not.
    sim.phone(1).sending = false;
    sim.run_until(600);
    sim.phone(1).sending = true;
    sim.run_until(700);

    let l = sim.get(3);
    // 440 Hz in a 20 ms frame: about 0.02 when heard, far below 1e-3 when not.
    let heard = |k: u64| l.frame_power(k, 440.0).unwrap() > 1e-3;
    assert!((50..100).all(heard), "heard before the silence");
    assert!((150..600).all(|k| !heard(k)), "silent during the silence");
    let back = (600..700).find(|&k| heard(k)).unwrap();
    assert!(
        back <= 610,
        "heard again at tick {back}, 10 ticks = 200 ms after 600"
    );
    assert!((back + 5..700).all(heard));
    let lost = sim.stats(1).jitter.lost - lost_before;
    assert!(lost <= 3, "the silence counted as {lost} lost frames");
    let b = sim.stats(2);
    assert_eq!(b.jitter.lost, 0);
}

/// Regression: the RTP timestamp keeps running while a leg is held (RFC 3550 §5.1).
#[test]
fn held_leg_resumes_with_a_timestamp_that_kept_running() {
    let phones = vec![
        Phone::new(1, CodecKind::Opus, 440.0),
        Phone::new(2, CodecKind::Opus, 660.0),
    ];
    let mut sim = Sim::new(RoomConfig::default(), phones);
    sim.run_until(50);
    let now = sim.now();
    sim.room.set_held(LegId(2), true, now).unwrap();
    sim.run_until(300);
    sim.room.set_held(LegId(2), false, sim.at(300)).unwrap();
    sim.run_until(350);

    let h = sim.get(2);
    let before = h.rx.iter().rfind(|r| r.tick < 50).unwrap();
    let after = h.rx.iter().find(|r| r.tick >= 300).unwrap();
    assert_eq!((before.tick, after.tick), (49, 300));
    // No packet was lost, so the sequence number continues...
    assert_eq!(after.sequence, before.sequence.wrapping_add(1));
    // ...but the media clock ran on through the 5 s hold: RFC 3550 §5.1 has the
    // timestamp advance for every block "regardless of whether the block is
    // transmitted in a packet or dropped as silent".
    let elapsed = (after.tick - before.tick) as u32 * 960;
    assert_eq!(
        after.timestamp.wrapping_sub(before.timestamp),
        elapsed,
        "timestamp jumped by {} for {} ms",
        after.timestamp.wrapping_sub(before.timestamp),
        (after.tick - before.tick) * 20
    );

    // The harm: a phone computing the RFC 3550 A.8 interarrival jitter over this
    // perfect network (arrival = tick × 960 units) sees the frozen clock as 5 s of
    // jitter, reports it in its RTCP receiver reports and sizes its buffer on it.
    // It should stay below 1 ms (48 units).
    let mut jitter = 0.0f64;
    let mut worst = 0.0f64;
    for w in h.rx.windows(2) {
        let arrival = (w[1].tick - w[0].tick) as f64 * 960.0;
        let sent = f64::from(w[1].timestamp.wrapping_sub(w[0].timestamp));
        jitter += ((arrival - sent).abs() - jitter) / 16.0;
        worst = worst.max(jitter);
    }
    assert!(worst < 48.0, "RFC 3550 jitter reached {worst:.0} units");
}

#[test]
fn a_prompt_room_beeps_to_its_caller() {
    let config = RoomConfig {
        prompt: Some(crate::room::Prompt::default()),
        ..RoomConfig::default()
    };
    let mut sim = Sim::new(config, vec![Phone::listener(1, CodecKind::Opus)]);
    sim.run_until(150);
    let beep = sim.get(1).power(425.0);
    let other = sim.get(1).power(1000.0);
    // A 0.2-amplitude tone about a fifth of the time: clearly there, and nothing else.
    assert!(
        beep > 1e-4 && beep > 100.0 * other,
        "beep {beep:e} other {other:e}"
    );
    // Without a prompt the same caller hears silence.
    let mut quiet = Sim::new(
        RoomConfig::default(),
        vec![Phone::listener(1, CodecKind::Opus)],
    );
    quiet.run_until(150);
    assert!(quiet.get(1).power(425.0) < 1e-6);
}
