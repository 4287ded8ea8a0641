//! `loadtest mix-bench`: the mixer engine under a synthetic conference load.
//!
//! Every leg sends real RTP packets (payloads encoded ahead of time from speech-like
//! signals, as the phones would, with RFC 6464 levels); the rooms run jitter buffer,
//! selection, decode, mix, encode and packetization on fake time, as fast as the cores
//! allow. CPU time is read per worker thread, so the figure is participants served in
//! real time per fully used core.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use mixer::codec::{AudioEncoder, CodecKind, EncoderSettings};
use mixer::netem::Rng;
use mixer::rtp::{AudioLevel, RtpHeader};
use mixer::signal::{dbov, SpeechLike};
use mixer::{LegConfig, LegId, LegStats, MixStrategy, Outbox, Room, RoomConfig, RoomId, TICK};
use stats_alloc::{Region, StatsAlloc};

/// Audio-level extension id the synthetic legs negotiate.
const LEVEL_EXT: u8 = 1;
/// Distinct frames of talker audio encoded ahead of time, then looped.
const TRACK_FRAMES: usize = 250;

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub(crate) enum CodecArg {
    Opus,
    Pcmu,
    Pcma,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub(crate) enum StrategyArg {
    /// Ours: K talkers decoded, one encode per codec group plus one per talker.
    Shared,
    /// Janus AudioBridge's way: decode all, one mix-minus encode per participant.
    PerLeg,
}

/// Arguments of `loadtest mix-bench`.
#[derive(Args, Debug)]
pub(crate) struct MixBenchArgs {
    /// Number of rooms.
    #[arg(long, default_value_t = 20)]
    rooms: usize,
    /// Participants per room.
    #[arg(long, default_value_t = 20)]
    size: usize,
    /// Participants per room that talk (the rest send silence).
    #[arg(long, default_value_t = 3)]
    talkers: usize,
    /// Codec every participant uses.
    #[arg(long, value_enum, default_value_t = CodecArg::Opus)]
    codec: CodecArg,
    /// Seconds of audio to mix.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Mixing strategy.
    #[arg(long, value_enum, default_value_t = StrategyArg::Shared)]
    strategy: StrategyArg,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Random packet loss on every leg's input, in percent.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Opus encoder complexity (0-10), the same for both strategies.
    #[arg(long, default_value_t = EncoderSettings::default().complexity)]
    complexity: u8,
    /// Opus bitrate in bits per second.
    #[arg(long, default_value_t = EncoderSettings::default().bitrate)]
    bitrate: u32,
}

impl MixBenchArgs {
    fn check(&self) -> anyhow::Result<()> {
        if self.rooms == 0 || self.size == 0 {
            bail!("--rooms and --size must be at least 1");
        }
        if self.talkers > self.size {
            bail!(
                "--talkers ({}) cannot exceed --size ({})",
                self.talkers,
                self.size
            );
        }
        if !(self.seconds > 0.0 && self.seconds <= 3600.0) {
            bail!("--seconds must be more than 0 and at most 3600");
        }
        if !(0.0..=100.0).contains(&self.loss) {
            bail!("--loss is a percentage: 0 to 100");
        }
        if self.threads == Some(0) {
            bail!("--threads must be at least 1");
        }
        self.settings()
            .validate()
            .context("check --complexity (0-10) and --bitrate (6000-510000)")?;
        Ok(())
    }

    fn codec(&self) -> CodecKind {
        match self.codec {
            CodecArg::Opus => CodecKind::Opus,
            CodecArg::Pcmu => CodecKind::Pcmu,
            CodecArg::Pcma => CodecKind::Pcma,
        }
    }

    fn settings(&self) -> EncoderSettings {
        EncoderSettings {
            complexity: self.complexity,
            bitrate: self.bitrate,
            ..EncoderSettings::default()
        }
    }
}

/// Encoded frames of one sender, looped.
struct Track {
    frames: Vec<(Vec<u8>, AudioLevel)>,
}

fn encode_track(
    codec: CodecKind,
    settings: &EncoderSettings,
    seed: Option<u64>,
) -> anyhow::Result<Track> {
    let mut enc = AudioEncoder::new(codec, settings)?;
    let rate = codec.native_rate();
    let mut speech = seed.map(|s| SpeechLike::new(rate, 0.5, s));
    // Silent participants send what an open microphone in a quiet room picks up: a
    // noise floor near -70 dBov, far below voice activity, not digital zeros.
    let mut noise = Rng::new(0x0ff1ce);
    let mut pcm = vec![0.0f32; codec.frame_samples()];
    let mut out = [0u8; mixer::codec::MAX_PAYLOAD];
    let n = if speech.is_some() { TRACK_FRAMES } else { 50 };
    let mut frames = Vec::with_capacity(n);
    for _ in 0..n {
        match &mut speech {
            Some(s) => s.fill(&mut pcm),
            None => pcm
                .iter_mut()
                .for_each(|x| *x = (noise.next_f64() as f32 - 0.5) * 0.001),
        }
        let len = enc.encode(&pcm, &mut out)?;
        let level = dbov(&pcm);
        frames.push((
            out[..len].to_vec(),
            AudioLevel::from_dbov(level, level > -50.0),
        ));
    }
    Ok(Track { frames })
}

struct SimLeg {
    id: LegId,
    from: SocketAddr,
    ssrc: u32,
    seq: u16,
    ts: u32,
    track: usize,
    offset: usize,
}

struct SimRoom {
    room: Room,
    legs: Vec<SimLeg>,
}

#[derive(Default)]
struct WorkerReport {
    cpu: Duration,
    room_ticks: u64,
    packets_out: u64,
    bytes_out: u64,
    stats: LegStats,
}

fn thread_cpu() -> anyhow::Result<Duration> {
    use std::io::Read;
    // Read into a stack buffer: this runs inside the allocation-counted region.
    let mut buf = [0u8; 128];
    let n = std::fs::File::open("/proc/thread-self/schedstat")
        .and_then(|mut f| f.read(&mut buf))
        .context("reading /proc/thread-self/schedstat (Linux only)")?;
    let ns: u64 = std::str::from_utf8(&buf[..n])
        .ok()
        .and_then(|s| s.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("parsing /proc/thread-self/schedstat")?;
    Ok(Duration::from_nanos(ns))
}

fn add_stats(total: &mut LegStats, s: &LegStats) {
    total.jitter.received += s.jitter.received;
    total.jitter.lost += s.jitter.lost;
    total.fec_recovered += s.fec_recovered;
    total.concealed += s.concealed;
    total.decoded += s.decoded;
    total.decode_errors += s.decode_errors;
    total.encode_errors += s.encode_errors;
    total.malformed += s.malformed;
}

/// Runs the benchmark and prints the summary and the JSON line.
pub(crate) fn run(
    args: &MixBenchArgs,
    alloc: &'static StatsAlloc<std::alloc::System>,
) -> anyhow::Result<()> {
    args.check()?;
    let codec = args.codec();
    let settings = args.settings();
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .min(args.rooms);
    let ticks = (args.seconds * 50.0).round().max(1.0) as u64;
    let warmup = (ticks / 10).clamp(1, 50);

    let mut tracks = Vec::new();
    for k in 0..args.talkers.max(1) {
        tracks.push(encode_track(codec, &settings, Some(k as u64 + 1))?);
    }
    let silence = encode_track(codec, &settings, None)?;
    let tracks = Arc::new((tracks, silence));
    let strategy = match args.strategy {
        StrategyArg::Shared => MixStrategy::Shared,
        StrategyArg::PerLeg => MixStrategy::PerLeg,
    };

    let start = Instant::now();
    let mut rooms: Vec<Vec<SimRoom>> = (0..threads).map(|_| Vec::new()).collect();
    let mut next_id = 1u64;
    for r in 0..args.rooms {
        let mut room = Room::new(
            RoomId(r as u64),
            RoomConfig {
                strategy,
                speakers: mixer::speaker::SpeakerConfig {
                    max_talkers: args.talkers.max(1),
                    ..Default::default()
                },
                ..Default::default()
            },
        );
        let mut legs = Vec::new();
        for p in 0..args.size {
            let id = LegId(next_id);
            next_id += 1;
            let from = SocketAddr::new(
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                10_000 + (next_id % 50_000) as u16,
            );
            room.add_leg(
                id,
                LegConfig {
                    codec,
                    payload_type: codec.static_payload_type().unwrap_or(111),
                    telephone_event_pt: Some(101),
                    audio_level_ext: Some(LEVEL_EXT),
                    remote: from,
                    ssrc: 0x5000_0000 + next_id as u32,
                    initial_sequence: next_id as u16,
                    initial_timestamp: (next_id as u32).wrapping_mul(7919),
                    encoder: settings,
                },
                start,
            )?;
            legs.push(SimLeg {
                id,
                from,
                ssrc: 0x1000_0000 + next_id as u32,
                seq: (next_id as u16).wrapping_mul(31),
                ts: (next_id as u32).wrapping_mul(104_729),
                track: if p < args.talkers { p } else { usize::MAX },
                offset: r * 37 + p,
            });
        }
        rooms[r % threads].push(SimRoom { room, legs });
    }

    // Warm-up, then a barrier at which the allocation counter is read, then the run.
    let barrier = Arc::new(Barrier::new(threads + 1));
    let mut handles = Vec::new();
    for (t, mut mine) in rooms.into_iter().enumerate() {
        let barrier = barrier.clone();
        let tracks = tracks.clone();
        let loss = args.loss / 100.0;
        handles.push(std::thread::spawn(
            move || -> anyhow::Result<WorkerReport> {
                let mut rng = Rng::new(0x5eed ^ t as u64);
                let mut outbox = Outbox::with_capacity(1024);
                let mut packet = [0u8; 1600];
                let mut report = WorkerReport::default();
                let mut cpu_start = Duration::ZERO;
                for tick in 0..ticks + warmup {
                    if tick == warmup {
                        // Once: everyone has warmed up; twice: the counter has been read.
                        barrier.wait();
                        barrier.wait();
                        cpu_start = thread_cpu()?;
                    }
                    let now = start + TICK * tick as u32;
                    for sim in &mut mine {
                        for leg in &mut sim.legs {
                            let (payload, level) = if leg.track == usize::MAX {
                                let f = &tracks.1.frames;
                                &f[(tick as usize + leg.offset) % f.len()]
                            } else {
                                let f = &tracks.0[leg.track].frames;
                                &f[(tick as usize + leg.offset) % f.len()]
                            };
                            let header = RtpHeader {
                                marker: false,
                                payload_type: codec.static_payload_type().unwrap_or(111),
                                sequence: leg.seq,
                                timestamp: leg.ts,
                                ssrc: leg.ssrc,
                                audio_level: Some((LEVEL_EXT, *level)),
                            };
                            leg.seq = leg.seq.wrapping_add(1);
                            leg.ts = leg.ts.wrapping_add(codec.frame_samples() as u32);
                            if loss > 0.0 && rng.next_f64() < loss {
                                continue;
                            }
                            let h = header.write(&mut packet).context("RTP header")?;
                            packet[h..h + payload.len()].copy_from_slice(payload);
                            sim.room.handle_packet(
                                leg.id,
                                leg.from,
                                &packet[..h + payload.len()],
                                now,
                            )?;
                        }
                        sim.room.tick(now, &mut outbox);
                        if tick >= warmup {
                            report.room_ticks += 1;
                            report.packets_out += outbox.len() as u64;
                            report.bytes_out += outbox.bytes() as u64;
                        }
                        outbox.clear();
                        while sim.room.poll_event().is_some() {}
                    }
                }
                report.cpu = thread_cpu()? - cpu_start;
                barrier.wait();
                for sim in &mine {
                    for leg in &sim.legs {
                        if let Some(s) = sim.room.leg_stats(leg.id) {
                            add_stats(&mut report.stats, &s);
                        }
                    }
                }
                Ok(report)
            },
        ));
    }
    barrier.wait();
    let region = Region::new(alloc);
    barrier.wait();
    let wall = Instant::now();
    barrier.wait();
    let wall = wall.elapsed();
    let allocs = region.change();

    let mut total = WorkerReport::default();
    for h in handles {
        let r = h
            .join()
            .map_err(|_| anyhow::anyhow!("a benchmark thread panicked"))??;
        total.cpu += r.cpu;
        total.room_ticks += r.room_ticks;
        total.packets_out += r.packets_out;
        total.bytes_out += r.bytes_out;
        add_stats(&mut total.stats, &r.stats);
    }
    let audio_seconds = ticks as f64 * TICK.as_secs_f64();
    let cpu_seconds = total.cpu.as_secs_f64();
    let participants = (args.rooms * args.size) as f64;
    let per_core = if cpu_seconds > 0.0 {
        participants * audio_seconds / cpu_seconds
    } else {
        0.0
    };
    let allocations = allocs.allocations + allocs.reallocations;
    let per_tick = allocations as f64 / total.room_ticks.max(1) as f64;
    let strategy_name = match args.strategy {
        StrategyArg::Shared => "shared",
        StrategyArg::PerLeg => "per-leg",
    };
    let s = &total.stats;
    println!(
        "mix-bench: {} rooms x {} participants, {} talkers, {} ({}), {} strategy, {} threads, isa {}",
        args.rooms,
        args.size,
        args.talkers,
        codec.name(),
        if codec == CodecKind::Opus {
            format!("complexity {}, {} b/s, FEC on, loss {}%", settings.complexity, settings.bitrate, settings.expected_loss)
        } else {
            "G.711".to_string()
        },
        strategy_name,
        threads,
        mixer::simd::active_isa().name(),
    );
    println!(
        "  {audio_seconds:.1} s of audio in {:.2} s wall, {cpu_seconds:.2} s CPU: {per_core:.0} participants per core ({:.1} us per room tick)",
        wall.as_secs_f64(),
        total.cpu.as_secs_f64() * 1e6 / total.room_ticks.max(1) as f64,
    );
    println!(
        "  sent {} packets ({} bytes); received {}, lost {}, FEC-recovered {}, concealed {}, decode errors {}; {} allocations in steady state ({per_tick:.3} per room tick)",
        total.packets_out, total.bytes_out, s.jitter.received, s.jitter.lost, s.fec_recovered, s.concealed, s.decode_errors, allocations
    );
    let json = serde_json::json!({
        "bench": "mix-bench",
        "codec": codec.name(),
        "strategy": strategy_name,
        "rooms": args.rooms,
        "size": args.size,
        "talkers": args.talkers,
        "threads": threads,
        "complexity": settings.complexity,
        "bitrate": settings.bitrate,
        "loss_percent": args.loss,
        "isa": mixer::simd::active_isa().name(),
        "participants_per_core": (per_core * 10.0).round() / 10.0,
        "cpu_seconds": (cpu_seconds * 1000.0).round() / 1000.0,
        "wall_seconds": (wall.as_secs_f64() * 1000.0).round() / 1000.0,
        "audio_seconds": audio_seconds,
        "ticks": ticks,
        "room_ticks": total.room_ticks,
        "allocations_per_tick": per_tick,
        "packets_out": total.packets_out,
        "decodes_per_room_tick": (s.decoded + s.fec_recovered + s.concealed) as f64 / (total.room_ticks + warmup * args.rooms as u64).max(1) as f64,
        "fec_recovered": s.fec_recovered,
        "concealed": s.concealed,
    });
    println!("{json}");
    Ok(())
}
