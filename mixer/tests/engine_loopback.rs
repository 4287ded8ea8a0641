//! Drives the threaded [`mixer::Mixer`] through real UDP sockets on loopback.
//!
//! Each "phone" is a plain `std::net::UdpSocket` on 127.0.0.1 that sends Opus RTP
//! (a tone of its own, with an RFC 6464 audio level) to its leg's socket every 20 ms
//! and collects what the mixer sends back. The mixer runs real threads in real time,
//! so the tests assert on content and counts with generous bounds, never on speed;
//! every wait is bounded (`recv_timeout`, non-blocking reads, deadlines).

use std::collections::HashSet;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mixer::codec::{AudioDecoder, AudioEncoder};
use mixer::rtp::{AudioLevel, RtpHeader, RtpView};
use mixer::signal::{dbov, goertzel_power, Tone};
use mixer::{
    CodecKind, EncoderSettings, LegConfig, LegHandle, LegId, Mixer, MixerConfig, MixerEvent,
    RoomConfig, RoomEvent, RoomId,
};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// Dynamic payload type of Opus in these calls.
const OPUS_PT: u8 = 111;
/// Payload type of RFC 4733 telephone-event in these calls.
const DTMF_PT: u8 = 101;
/// Extension id of the RFC 6464 audio level the phones send.
const LEVEL_EXT: u8 = 1;
/// Samples in a 20 ms Opus frame (48 kHz), also its RTP timestamp step.
const FRAME: usize = 960;
/// The phones' pacing.
const PTIME: Duration = Duration::from_millis(20);
/// A room id no test ever creates.
const UNKNOWN_ROOM: RoomId = RoomId(1 << 40);

/// A SIP phone's media side: one socket, an Opus encoder fed with a tone, and
/// everything the mixer sent back.
struct Phone {
    socket: UdpSocket,
    encoder: AudioEncoder,
    tone: Tone,
    ssrc: u32,
    sequence: u16,
    timestamp: u32,
    /// Datagrams received, with their source address.
    received: Vec<(SocketAddr, Vec<u8>)>,
}

impl Phone {
    fn new(freq: f32, ssrc: u32) -> Self {
        let socket = UdpSocket::bind((LOCALHOST, 0)).expect("binding a phone socket");
        socket
            .set_nonblocking(true)
            .expect("making a phone socket non-blocking");
        Phone {
            socket,
            encoder: AudioEncoder::new(CodecKind::Opus, &EncoderSettings::default())
                .expect("creating the phone's Opus encoder"),
            tone: Tone::new(freq, 48_000, 0.3),
            ssrc,
            sequence: (ssrc as u16).wrapping_mul(7),
            timestamp: ssrc.wrapping_mul(13),
            received: Vec::new(),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.socket
            .local_addr()
            .expect("reading the phone's address")
    }

    /// What the SIP service would negotiate for this phone, except that the SDP's
    /// port is wrong on purpose (9, discard): the mixer must latch onto the address
    /// the RTP really comes from (symmetric RTP).
    fn leg_config(&self, mixer_ssrc: u32) -> LegConfig {
        LegConfig {
            codec: CodecKind::Opus,
            payload_type: OPUS_PT,
            telephone_event_pt: Some(DTMF_PT),
            audio_level_ext: Some(LEVEL_EXT),
            remote: SocketAddr::new(self.addr().ip(), 9),
            ssrc: mixer_ssrc,
            initial_sequence: 1000,
            initial_timestamp: 5000,
            encoder: EncoderSettings::default(),
        }
    }

    fn next_header(
        &mut self,
        payload_type: u8,
        marker: bool,
        level: Option<AudioLevel>,
    ) -> RtpHeader {
        let header = RtpHeader {
            marker,
            payload_type,
            sequence: self.sequence,
            timestamp: self.timestamp,
            ssrc: self.ssrc,
            audio_level: level.map(|l| (LEVEL_EXT, l)),
        };
        self.sequence = self.sequence.wrapping_add(1);
        header
    }

    /// Sends the next 20 ms of the tone as one Opus RTP packet.
    fn send_audio(&mut self, to: SocketAddr) {
        let mut pcm = [0.0f32; FRAME];
        self.tone.fill(&mut pcm);
        let level = AudioLevel::from_dbov(dbov(&pcm), true);
        let header = self.next_header(OPUS_PT, false, Some(level));
        let mut packet = [0u8; 1500];
        let h = header.write(&mut packet).expect("writing an RTP header");
        let n = self
            .encoder
            .encode(&pcm, &mut packet[h..])
            .expect("encoding a phone frame");
        self.socket
            .send_to(&packet[..h + n], to)
            .expect("sending audio to the leg");
        self.timestamp = self.timestamp.wrapping_add(FRAME as u32);
    }

    /// Sends one RFC 4733 telephone-event packet of the key press that started at
    /// `start` (its RTP timestamp).
    fn send_dtmf(&mut self, to: SocketAddr, start: u32, event: u8, end: bool, duration: u16) {
        // The marker bit flags the first packet of the event (RFC 4733 §2.5.1.1).
        let first = !end && u32::from(duration) == FRAME as u32;
        let header = RtpHeader {
            timestamp: start,
            ..self.next_header(DTMF_PT, first, None)
        };
        let mut packet = [0u8; 16];
        let h = header.write(&mut packet).expect("writing an RTP header");
        let volume = 10u8;
        packet[h] = event;
        packet[h + 1] = volume | if end { 0x80 } else { 0 };
        packet[h + 2..h + 4].copy_from_slice(&duration.to_be_bytes());
        self.socket
            .send_to(&packet[..h + 4], to)
            .expect("sending DTMF to the leg");
    }

    /// A whole key press as a phone sends it: updates every 20 ms with a growing
    /// duration, then the end packet three times. The media clock moves on by the
    /// event's duration.
    fn press_key(&mut self, to: SocketAddr, event: u8) {
        let start = self.timestamp;
        let mut duration = 0u16;
        for _ in 0..4 {
            duration += FRAME as u16;
            self.send_dtmf(to, start, event, false, duration);
            std::thread::sleep(PTIME);
        }
        for _ in 0..3 {
            self.send_dtmf(to, start, event, true, duration);
        }
        self.timestamp = self.timestamp.wrapping_add(u32::from(duration));
    }

    /// Reads everything already waiting on the socket; returns how many datagrams.
    fn drain(&mut self) -> usize {
        let mut buf = [0u8; 2048];
        let mut n = 0;
        loop {
            match self.socket.recv_from(&mut buf) {
                Ok((len, from)) => {
                    self.received.push((from, buf[..len].to_vec()));
                    n += 1;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // An ICMP error from an earlier send (the leg went away): keep reading.
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
                Err(e) => panic!("phone socket: {e}"),
            }
        }
    }

    /// Forgets what was received so far (after draining the socket).
    fn discard(&mut self) -> usize {
        self.drain();
        std::mem::take(&mut self.received).len()
    }

    /// Decodes the received RTP (in arrival order, which on loopback is the send
    /// order) into 48 kHz PCM, checking every packet on the way.
    fn decode_received(&self, leg: &LegHandle, mixer_ssrc: u32) -> Vec<f32> {
        let mut decoder =
            AudioDecoder::new(CodecKind::Opus).expect("creating the phone's Opus decoder");
        let mut pcm = Vec::with_capacity(self.received.len() * FRAME);
        let mut frame = [0.0f32; FRAME];
        let mut last_seq: Option<u16> = None;
        for (from, data) in &self.received {
            assert_eq!(
                *from, leg.local,
                "media must come from the leg's own socket"
            );
            let rtp = RtpView::parse(data).expect("the mixer sent a datagram that is not RTP");
            assert_eq!(rtp.payload_type(), OPUS_PT);
            assert_eq!(rtp.ssrc(), mixer_ssrc);
            if let Some(prev) = last_seq {
                assert_eq!(
                    rtp.sequence(),
                    prev.wrapping_add(1),
                    "sequence must be continuous"
                );
            }
            last_seq = Some(rtp.sequence());
            decoder
                .decode(rtp.payload(), &mut frame)
                .expect("the mixer sent Opus that does not decode");
            pcm.extend_from_slice(&frame);
        }
        pcm
    }
}

/// Sleeps until `start + ticks × 20 ms` (no drift however long each round took).
fn pace(start: Instant, ticks: u32) {
    let due = start + PTIME * ticks;
    let now = Instant::now();
    if due > now {
        std::thread::sleep(due - now);
    }
}

/// Bind the leg's socket the way the SIP service does (from its port range; here an
/// ephemeral loopback port) and hand it to the mixer.
fn add_leg(mixer: &Mixer, room: RoomId, phone: &Phone, mixer_ssrc: u32) -> LegHandle {
    let socket = UdpSocket::bind((LOCALHOST, 0)).expect("binding a leg socket");
    let handle = mixer
        .add_leg(room, phone.leg_config(mixer_ssrc), socket)
        .expect("adding a leg");
    assert_eq!(handle.room, room);
    assert_eq!(handle.local.ip(), LOCALHOST);
    handle
}

fn one_shard() -> Mixer {
    Mixer::start(MixerConfig {
        shards: 1,
        ..MixerConfig::default()
    })
    .expect("starting the mixer")
}

/// Waits (bounded) for the first event matching `pred`, looking first at the events
/// already seen; events that do not match are kept in `log`.
fn wait_event(
    mixer: &Mixer,
    log: &mut Vec<MixerEvent>,
    timeout: Duration,
    pred: impl Fn(&MixerEvent) -> bool,
) -> Option<MixerEvent> {
    if let Some(i) = log.iter().position(&pred) {
        return Some(log.remove(i));
    }
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match mixer.events().recv_timeout(left) {
            Ok(ev) if pred(&ev) => return Some(ev),
            Ok(ev) => log.push(ev),
            Err(_) => return None,
        }
    }
}

/// Moves every event already queued into `log`.
fn collect_events(mixer: &Mixer, log: &mut Vec<MixerEvent>) {
    log.extend(mixer.events().try_iter());
}

#[test]
fn three_phones_hear_each_other_through_real_sockets() {
    let mixer = one_shard();
    let room = mixer.create_room(RoomConfig::default()).unwrap();
    let freqs = [440.0f32, 660.0, 880.0];
    let mut phones: Vec<Phone> = (0..3u32)
        .map(|i| Phone::new(freqs[i as usize], 0x1000 + i))
        .collect();
    let mixer_ssrcs = [0xA000u32, 0xA001, 0xA002];
    let legs: Vec<LegHandle> = phones
        .iter()
        .zip(mixer_ssrcs)
        .map(|(p, ssrc)| add_leg(&mixer, room, p, ssrc))
        .collect();

    // 1.5 s of talking, all three at once.
    let start = Instant::now();
    for tick in 0..75 {
        for (phone, leg) in phones.iter_mut().zip(&legs) {
            phone.send_audio(leg.local);
            phone.drain();
        }
        pace(start, tick + 1);
    }
    std::thread::sleep(Duration::from_millis(150));
    for phone in &mut phones {
        phone.drain();
    }

    for (i, (phone, leg)) in phones.iter().zip(&legs).enumerate() {
        let got = phone.received.len();
        assert!(got >= 40, "phone {i} received only {got} packets");
        let pcm = phone.decode_received(leg, mixer_ssrcs[i]);
        // The second half: the room has latched, buffered and selected everyone.
        let tail = &pcm[pcm.len() / 2..];
        let power: Vec<f32> = freqs
            .iter()
            .map(|&f| goertzel_power(tail, 48_000, f))
            .collect();
        let own = power[i];
        eprintln!(
            "phone {i} ({} Hz): {got} packets, tone powers {power:?}",
            freqs[i]
        );
        for (j, &p) in power.iter().enumerate() {
            if j == i {
                continue;
            }
            // A 0.3-peak sine alone gives 0.0225; the mix is limited, so ask for a
            // tenth of a fully present tone, and ten times the talker's own tone
            // (mix-minus: a talker must not hear itself).
            assert!(
                p > 2e-3 && p > 10.0 * own,
                "phone {i} ({} Hz): {} Hz power {p:e}, own tone power {own:e} (all {power:?})",
                freqs[i],
                freqs[j]
            );
        }
    }
    assert_eq!(mixer.dropped_events(), 0);
    mixer.shutdown();
}

#[test]
fn events_dtmf_stats_and_removal() {
    let mixer = one_shard();
    let mut log = Vec::new();
    let room = mixer.create_room(RoomConfig::default()).unwrap();
    let mut a = Phone::new(440.0, 0x2000);
    let b = Phone::new(660.0, 0x2001);
    let leg_a = add_leg(&mixer, room, &a, 0xB000);
    let leg_b = add_leg(&mixer, room, &b, 0xB001);

    // A talks for 0.6 s: it becomes a talker.
    let start = Instant::now();
    let audio_packets = 30u64;
    for tick in 0..audio_packets as u32 {
        a.send_audio(leg_a.local);
        a.discard();
        pace(start, tick + 1);
    }
    let talking = wait_event(
        &mixer,
        &mut log,
        Duration::from_secs(1),
        |e| matches!(e, MixerEvent::Room { room: r, event: RoomEvent::TalkingStarted(l) } if *r == room && *l == leg_a.leg),
    );
    assert!(
        talking.is_some(),
        "no TalkingStarted for A; events: {log:?}"
    );

    // A presses 5.
    a.press_key(leg_a.local, 5);
    let dtmf = wait_event(&mixer, &mut log, Duration::from_secs(2), |e| {
        matches!(
            e,
            MixerEvent::Room {
                event: RoomEvent::Dtmf { .. },
                ..
            }
        )
    });
    assert_eq!(
        dtmf,
        Some(MixerEvent::Room {
            room,
            event: RoomEvent::Dtmf {
                leg: leg_a.leg,
                digit: '5'
            }
        }),
        "events: {log:?}"
    );

    // Counters on request.
    mixer.request_stats(room, leg_a.leg).unwrap();
    let stats = wait_event(&mixer, &mut log, Duration::from_secs(2), |e| {
        matches!(e, MixerEvent::Stats { .. })
    });
    let Some(MixerEvent::Stats {
        room: r,
        leg,
        stats,
    }) = stats
    else {
        panic!("no Stats; events: {log:?}");
    };
    assert_eq!((r, leg), (room, leg_a.leg));
    assert!(stats.jitter.received > 0);
    // Everything sent arrived (loopback), the DTMF packets are not audio.
    assert!(
        stats.jitter.received >= audio_packets / 2 && stats.jitter.received <= audio_packets,
        "{stats:?}"
    );
    assert_eq!(stats.dtmf_digits, 1, "{stats:?}");
    assert_eq!(stats.malformed + stats.unknown_payload_type, 0, "{stats:?}");
    assert!(stats.packets_sent > 0, "{stats:?}");

    // Stats of a leg the room does not have.
    mixer.request_stats(room, LegId(1 << 41)).unwrap();
    let failed = wait_event(&mixer, &mut log, Duration::from_secs(2), |e| {
        matches!(e, MixerEvent::CommandFailed { .. })
    });
    assert!(
        matches!(&failed, Some(MixerEvent::CommandFailed { room: r, .. }) if *r == room),
        "{failed:?}"
    );

    // Removing A reports its final counters.
    mixer.remove_leg(room, leg_a.leg).unwrap();
    let removed = wait_event(&mixer, &mut log, Duration::from_secs(2), |e| {
        matches!(e, MixerEvent::LegRemoved { .. })
    });
    let Some(MixerEvent::LegRemoved {
        room: r,
        leg,
        stats: last,
    }) = removed
    else {
        panic!("no LegRemoved; events: {log:?}");
    };
    assert_eq!((r, leg), (room, leg_a.leg));
    assert!(last.jitter.received >= stats.jitter.received, "{last:?}");
    assert_eq!(last.dtmf_digits, 1);
    assert!(last.packets_sent >= stats.packets_sent);

    // Destroying the room removes everyone left in it.
    let c = Phone::new(880.0, 0x2002);
    let leg_c = add_leg(&mixer, room, &c, 0xB002);
    mixer.destroy_room(room).unwrap();
    let mut gone = HashSet::new();
    for _ in 0..2 {
        match wait_event(&mixer, &mut log, Duration::from_secs(2), |e| {
            matches!(e, MixerEvent::LegRemoved { .. })
        }) {
            Some(MixerEvent::LegRemoved { room: r, leg, .. }) => {
                assert_eq!(r, room);
                assert!(gone.insert(leg), "{leg:?} removed twice");
            }
            other => panic!("expected LegRemoved, got {other:?}; events: {log:?}"),
        }
    }
    assert_eq!(gone, HashSet::from([leg_b.leg, leg_c.leg]));

    // Commands on rooms that do not exist (never created, or destroyed) fail.
    let dummy = UdpSocket::bind((LOCALHOST, 0)).unwrap();
    mixer
        .add_leg(UNKNOWN_ROOM, b.leg_config(0xB003), dummy)
        .unwrap();
    mixer.set_muted(UNKNOWN_ROOM, leg_b.leg, true).unwrap();
    mixer.set_held(UNKNOWN_ROOM, leg_b.leg, true).unwrap();
    mixer.request_stats(UNKNOWN_ROOM, leg_b.leg).unwrap();
    mixer.remove_leg(UNKNOWN_ROOM, leg_b.leg).unwrap();
    mixer.destroy_room(UNKNOWN_ROOM).unwrap();
    mixer.request_stats(room, leg_b.leg).unwrap();
    mixer.destroy_room(room).unwrap();
    let (mut unknown, mut destroyed) = (0, 0);
    for _ in 0..8 {
        match wait_event(&mixer, &mut log, Duration::from_secs(2), |e| {
            matches!(e, MixerEvent::CommandFailed { .. })
        }) {
            Some(MixerEvent::CommandFailed { room: r, reason }) => {
                assert!(!reason.is_empty());
                if r == UNKNOWN_ROOM {
                    unknown += 1;
                } else if r == room {
                    destroyed += 1;
                } else {
                    panic!("CommandFailed for {r:?}: {reason}");
                }
            }
            other => panic!("expected CommandFailed, got {other:?}; events: {log:?}"),
        }
    }
    assert_eq!((unknown, destroyed), (6, 2));
    collect_events(&mixer, &mut log);
    assert!(
        !log.iter().any(|e| matches!(
            e,
            MixerEvent::LegRemoved { .. }
                | MixerEvent::Stats { .. }
                | MixerEvent::CommandFailed { .. }
        )),
        "unexpected events: {log:?}"
    );
    assert_eq!(mixer.dropped_events(), 0);
    mixer.shutdown();
}

/// Both phones of the hold test send for `ticks` ticks (a held phone may keep
/// sending, e.g. music on hold); returns how many packets each received meanwhile.
fn run(
    a: &mut Phone,
    b: &mut Phone,
    leg_a: &LegHandle,
    leg_b: &LegHandle,
    ticks: u32,
) -> (usize, usize) {
    a.discard();
    b.discard();
    let start = Instant::now();
    for tick in 0..ticks {
        a.send_audio(leg_a.local);
        b.send_audio(leg_b.local);
        a.drain();
        b.drain();
        pace(start, tick + 1);
    }
    (a.discard(), b.discard())
}

#[test]
fn hold_stops_sending() {
    let mixer = one_shard();
    let room = mixer.create_room(RoomConfig::default()).unwrap();
    let mut a = Phone::new(440.0, 0x3000);
    let mut b = Phone::new(660.0, 0x3001);
    let leg_a = add_leg(&mixer, room, &a, 0xC000);
    let leg_b = add_leg(&mixer, room, &b, 0xC001);

    let (got_a, got_b) = run(&mut a, &mut b, &leg_a, &leg_b, 25);
    assert!(got_a >= 10 && got_b >= 10, "before hold: {got_a}, {got_b}");

    mixer.set_held(room, leg_a.leg, true).unwrap();
    run(&mut a, &mut b, &leg_a, &leg_b, 10); // grace for the command and packets in flight
    let (held_a, held_b) = run(&mut a, &mut b, &leg_a, &leg_b, 25);
    assert_eq!(held_a, 0, "a held phone must not be sent to");
    assert!(
        held_b >= 10,
        "the other phone still hears the room: {held_b}"
    );

    mixer.set_held(room, leg_a.leg, false).unwrap();
    run(&mut a, &mut b, &leg_a, &leg_b, 5);
    let (back_a, back_b) = run(&mut a, &mut b, &leg_a, &leg_b, 25);
    assert!(back_a >= 10, "after resume A received only {back_a}");
    assert!(back_b >= 10, "{back_b}");
    mixer.shutdown();
}

#[test]
fn shutdown_joins_threads() {
    let mixer = Mixer::start(MixerConfig {
        shards: 2,
        ..MixerConfig::default()
    })
    .unwrap();
    let rooms = [
        mixer.create_room(RoomConfig::default()).unwrap(),
        mixer.create_room(RoomConfig::default()).unwrap(),
    ];
    let mut phones: Vec<Phone> = (0..4u32)
        .map(|i| Phone::new(440.0 + 110.0 * i as f32, 0x4000 + i))
        .collect();
    let legs: Vec<LegHandle> = phones
        .iter()
        .enumerate()
        .map(|(i, p)| add_leg(&mixer, rooms[i % 2], p, 0xD000 + i as u32))
        .collect();
    let start = Instant::now();
    for tick in 0..15 {
        for (p, l) in phones.iter_mut().zip(&legs) {
            p.send_audio(l.local);
            p.drain();
        }
        pace(start, tick + 1);
    }
    for (i, p) in phones.iter_mut().enumerate() {
        let got = p.discard();
        assert!(got > 0, "phone {i} heard nothing before shutdown");
    }

    let (tx, rx) = mpsc::channel();
    let stopper = std::thread::spawn(move || {
        let t = Instant::now();
        mixer.shutdown();
        let _ = tx.send(t.elapsed());
    });
    let took = rx
        .recv_timeout(Duration::from_secs(3))
        .expect("shutdown did not return within 3 s");
    stopper.join().unwrap();
    eprintln!("shutdown took {took:?}");

    // The shards are gone and their sockets closed: nothing answers any more.
    std::thread::sleep(Duration::from_millis(50));
    for p in &mut phones {
        p.discard();
    }
    for (p, l) in phones.iter_mut().zip(&legs) {
        p.send_audio(l.local);
    }
    std::thread::sleep(Duration::from_millis(200));
    for (i, p) in phones.iter_mut().enumerate() {
        assert_eq!(p.discard(), 0, "phone {i} still hears a shut-down mixer");
    }
}

/// Regression: `Mixer::stop` once sent `Shutdown` with `try_send` and dropped it when
/// the queue was full, so the join never returned.
#[test]
fn shutdown_returns_with_a_full_command_queue() {
    for attempt in 0..20 {
        let mixer = Mixer::start(MixerConfig {
            shards: 1,
            command_queue: 1,
            ..MixerConfig::default()
        })
        .unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Fills the queue (one slot) unless the shard drains it first, then at once
            // asks to shut down, as an owner hanging up everything would.
            mixer.create_room(RoomConfig::default()).unwrap();
            mixer.shutdown();
            let _ = tx.send(());
        });
        assert!(
            rx.recv_timeout(Duration::from_secs(1)).is_ok(),
            "attempt {attempt}: shutdown did not return within 1 s (the hung thread is leaked)"
        );
    }
}
