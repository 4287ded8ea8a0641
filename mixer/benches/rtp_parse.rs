//! Receive-path RTP parsing: the mixer's zero-copy `RtpView` against the `rtp`
//! crate's `Packet::unmarshal`, on a typical Opus packet with a one-byte
//! RFC 8285 audio-level extension (12-byte header, 8-byte extension block,
//! 80-byte payload).
//!
//! Three variants read the same fields (sequence, timestamp, SSRC, payload
//! type, audio level of extension id 1, payload):
//!
//! * `rtp_view`: `RtpView::parse` straight on the socket buffer (`&[u8]`).
//! * `rtp_unmarshal_copy`: `Bytes::copy_from_slice` of the socket buffer,
//!   then `Packet::unmarshal`, which is what a receive path holding a `&[u8]`
//!   must do to use `rtp`.
//! * `rtp_unmarshal_shared`: `Packet::unmarshal` from a clone of a `Bytes`
//!   made once, the best case for `rtp`.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mixer::rtp::RtpView;
use webrtc_util::marshal::Unmarshal;

/// Extension id of the RFC 6464 audio level in the test packet.
const AUDIO_LEVEL_ID: u8 = 1;
/// Opus payload length.
const PAYLOAD_LEN: usize = 80;

/// The test datagram: V=2, X=1, PT 111, one-byte extension block with the
/// audio level (V=1, 42 -dBov) padded to one word, then the payload.
fn opus_packet() -> Vec<u8> {
    let mut p = Vec::with_capacity(20 + PAYLOAD_LEN);
    // V=2, X=1, PT 111, sequence 0x1234.
    p.extend_from_slice(&[0x90, 111, 0x12, 0x34]);
    // Timestamp 76800, SSRC.
    p.extend_from_slice(&[0x00, 0x01, 0x2c, 0x00, 0xde, 0xad, 0xbe, 0xef]);
    // Profile 0xBEDE, one word: id 1 len 1 (V=1, level 42), two padding bytes.
    p.extend_from_slice(&[0xbe, 0xde, 0x00, 0x01, 0x10, 0x80 | 42, 0x00, 0x00]);
    p.extend((0..PAYLOAD_LEN).map(|i| (i * 37 + 11) as u8));
    p
}

/// What each variant reads, folded into one value so nothing is optimised out.
fn fold(seq: u16, ts: u32, ssrc: u32, pt: u8, level: u8, payload: &[u8]) -> u64 {
    u64::from(seq)
        ^ u64::from(ts)
        ^ u64::from(ssrc)
        ^ u64::from(pt)
        ^ u64::from(level)
        ^ payload.len() as u64
        ^ u64::from(payload.first().copied().unwrap_or(0))
}

fn via_rtp_view(buf: &[u8]) -> u64 {
    let Ok(v) = RtpView::parse(buf) else {
        return 0;
    };
    let level = v.audio_level(AUDIO_LEVEL_ID).map_or(127, |l| l.level);
    fold(
        v.sequence(),
        v.timestamp(),
        v.ssrc(),
        v.payload_type(),
        level,
        v.payload(),
    )
}

fn via_rtp_crate(mut buf: Bytes) -> u64 {
    let Ok(p) = rtp::packet::Packet::unmarshal(&mut buf) else {
        return 0;
    };
    let level = p
        .header
        .get_extension(AUDIO_LEVEL_ID)
        .and_then(|e| e.first().copied())
        .map_or(127, |b| b & 0x7f);
    fold(
        p.header.sequence_number,
        p.header.timestamp,
        p.header.ssrc,
        p.header.payload_type,
        level,
        &p.payload,
    )
}

fn bench_parse(c: &mut Criterion) {
    let datagram = opus_packet();
    let shared = Bytes::copy_from_slice(&datagram);
    // All three must agree before their speed means anything.
    let expected = via_rtp_view(&datagram);
    assert_ne!(expected, 0);
    assert_eq!(via_rtp_crate(Bytes::copy_from_slice(&datagram)), expected);
    assert_eq!(via_rtp_crate(shared.clone()), expected);

    let mut g = c.benchmark_group("rtp_parse");
    g.throughput(Throughput::Elements(1));
    g.bench_function("rtp_view", |b| {
        b.iter(|| via_rtp_view(black_box(&datagram)))
    });
    g.bench_function("rtp_unmarshal_copy", |b| {
        b.iter(|| via_rtp_crate(Bytes::copy_from_slice(black_box(&datagram))))
    });
    g.bench_function("rtp_unmarshal_shared", |b| {
        b.iter(|| via_rtp_crate(black_box(&shared).clone()))
    });
    g.finish();
}

criterion_group!(benches, bench_parse);
criterion_main!(benches);
