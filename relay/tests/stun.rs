//! STUN coding against the RFC 5769 test vectors, round trips and hostile input.

use std::net::SocketAddr;

use md5::{Digest, Md5};
use proptest::prelude::*;
use relay::stun::{attr, stream_frame_len, ChannelData, Class, Message, MessageWriter, Method};
use relay::Error;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

// RFC 5769 §2.1 (short-term password "VOkJxbRl1RmTxUk/WvJxBt").
const SAMPLE_REQUEST: &str = "000100582112a442b7e7a701bc34d686fa87dfae802200105354554e20746573
    7420636c69656e74002400046e0001ff80290008932ff9b151263b36000600096576746a3a68367659202020
    000800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a280280004e57a3bcf";
// RFC 5769 §2.2.
const SAMPLE_IPV4_RESPONSE: &str = "0101003c2112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563
    746f7220002000080001a147e112a643000800142b91f599fd9e90c38c7489f92af9ba53f06be7d780280004c07d4c96";
// RFC 5769 §2.3.
const SAMPLE_IPV6_RESPONSE: &str =
    "010100482112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563
    746f7220002000140002a1470113a9faa5d3f179bc25f4b5bed2b9d900080014a382954e4be67bf11784c97c8292c275
    bfe3ed4180280004c8fb0b4c";
// RFC 5769 §2.4 (long-term: user "マトリックス", realm "example.org", password "TheMatrIX").
const SAMPLE_LONG_TERM: &str = "000100602112a44278ad3433c6ad72c029da412e
    00060012e3839ee38388e383aae38383e382afe382b90000
    0015001c662f2f3439396b393534643 64f4c33346f4c394653547679363473 41
    0014000b6578616d706c652e6f726700
    00080014f67024656dd64a3e02b8e0712e85c9a28ca89666";

const SHORT_TERM: &[u8] = b"VOkJxbRl1RmTxUk/WvJxBt";

#[test]
fn rfc5769_sample_request_verifies() {
    let b = hex(SAMPLE_REQUEST);
    let m = Message::parse(&b).expect("parse");
    assert_eq!(m.method(), Method::Binding);
    assert_eq!(m.class(), Class::Request);
    assert!(m.has_fingerprint());
    assert_eq!(m.text(attr::USERNAME).expect("utf8"), Some("evtj:h6vY"));
    assert_eq!(
        m.text(attr::SOFTWARE).expect("utf8"),
        Some("STUN test client")
    );
    m.verify_integrity(SHORT_TERM).expect("integrity");
    assert_eq!(m.verify_integrity(b"wrong"), Err(Error::IntegrityMismatch));
}

#[test]
fn rfc5769_ipv4_response_verifies() {
    let b = hex(SAMPLE_IPV4_RESPONSE);
    let m = Message::parse(&b).expect("parse");
    assert_eq!(m.class(), Class::Success);
    let a = m.xor_address(attr::XOR_MAPPED_ADDRESS).expect("addr");
    assert_eq!(a, Some("192.0.2.1:32853".parse().expect("addr")));
    m.verify_integrity(SHORT_TERM).expect("integrity");
}

#[test]
fn rfc5769_ipv6_response_verifies() {
    let b = hex(SAMPLE_IPV6_RESPONSE);
    let m = Message::parse(&b).expect("parse");
    let a = m.xor_address(attr::XOR_MAPPED_ADDRESS).expect("addr");
    let want: SocketAddr = "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
        .parse()
        .expect("addr");
    assert_eq!(a, Some(want));
    m.verify_integrity(SHORT_TERM).expect("integrity");
}

#[test]
fn rfc5769_long_term_request_verifies() {
    let b = hex(SAMPLE_LONG_TERM);
    let m = Message::parse(&b).expect("parse");
    let user = m.text(attr::USERNAME).expect("utf8").expect("user");
    assert_eq!(user, "マトリックス");
    assert_eq!(m.text(attr::REALM).expect("utf8"), Some("example.org"));
    assert_eq!(
        m.text(attr::NONCE).expect("utf8"),
        Some("f//499k954d6OL34oL9FSTvy64sA")
    );
    let key: [u8; 16] = Md5::digest(format!("{user}:example.org:TheMatrIX")).into();
    m.verify_integrity(&key).expect("integrity");
}

#[test]
fn round_trip_all_kinds_with_both_integrities() {
    let mut buf = Vec::new();
    let tid = [7u8; 12];
    let peer4: SocketAddr = "203.0.113.9:5000".parse().expect("a");
    let peer6: SocketAddr = "[2001:db8::1]:6000".parse().expect("a");
    let mut w = MessageWriter::new(&mut buf, Method::CreatePermission, Class::Request, tid);
    w.add_xor_address(attr::XOR_PEER_ADDRESS, peer4)
        .add_xor_address(attr::XOR_PEER_ADDRESS, peer6)
        .add(attr::USERNAME, b"alice")
        .add_u32(attr::LIFETIME, 600)
        .add_error_code(438, "Stale Nonce")
        .add_unknown_attributes([0x7777u16, 0x0033, 0x0044].into_iter())
        .add_mapped_address(peer4)
        .add_message_integrity(b"key")
        .add_message_integrity_sha256(b"key")
        .add_fingerprint();
    let m = Message::parse(&buf).expect("parse");
    assert_eq!(m.method(), Method::CreatePermission);
    assert_eq!(m.transaction_id(), tid);
    let peers: Vec<_> = m
        .xor_peer_addresses()
        .collect::<Result<_, _>>()
        .expect("peers");
    assert_eq!(peers, vec![peer4, peer6]);
    assert_eq!(m.u32_attr(attr::LIFETIME).expect("l"), Some(600));
    assert_eq!(m.error_code().expect("e"), Some((438, "Stale Nonce")));
    assert_eq!(
        m.unknown_attributes().collect::<Vec<_>>(),
        vec![0x7777, 0x0033, 0x0044]
    );
    assert_eq!(m.mapped_address().expect("m"), Some(peer4));
    assert!(m.uses_sha256());
    m.verify_integrity(b"key").expect("sha256 integrity");
    assert!(m.verify_integrity(b"nope").is_err());
}

#[test]
fn round_trip_sha1_integrity() {
    let mut buf = Vec::new();
    MessageWriter::new(&mut buf, Method::Allocate, Class::Success, [1; 12])
        .add(attr::SOFTWARE, b"x")
        .add_message_integrity(b"k")
        .add_fingerprint();
    let m = Message::parse(&buf).expect("parse");
    m.verify_integrity(b"k").expect("ok");
    assert_eq!(m.method(), Method::Allocate);
    assert_eq!(m.class(), Class::Success);
}

#[test]
fn truncated_messages_are_errors() {
    let b = hex(SAMPLE_REQUEST);
    for n in 0..b.len() {
        assert!(Message::parse(&b[..n]).is_err(), "prefix {n} parsed");
    }
}

#[test]
fn wrong_fingerprint_is_an_error() {
    let mut b = hex(SAMPLE_REQUEST);
    let last = b.len() - 1;
    b[last] ^= 1;
    assert_eq!(Message::parse(&b).err(), Some(Error::BadFingerprint));
}

#[test]
fn absurd_attribute_length_is_an_error() {
    let mut buf = Vec::new();
    MessageWriter::new(&mut buf, Method::Binding, Class::Request, [0; 12])
        .add(attr::USERNAME, b"abcd");
    buf[22..24].copy_from_slice(&0xfff0u16.to_be_bytes());
    assert_eq!(
        Message::parse(&buf).err(),
        Some(Error::AttributeOverrun(attr::USERNAME))
    );
    // A length not a multiple of four in the header.
    let mut b = hex(SAMPLE_REQUEST);
    b[3] = 0x57;
    assert_eq!(Message::parse(&b).err(), Some(Error::BadLength(0x57)));
}

#[test]
fn channel_data_round_trip_and_overrun() {
    let mut buf = Vec::new();
    ChannelData::write(&mut buf, 0x4001, b"hello", true).expect("w");
    assert_eq!(buf.len(), 12);
    assert_eq!(stream_frame_len(&buf), Ok(Some(12)));
    let (cd, used) = ChannelData::parse(&buf, true).expect("p");
    assert_eq!((cd.channel, cd.data, used), (0x4001, &b"hello"[..], 12));
    // Length past the datagram.
    buf[3] = 200;
    assert!(matches!(
        ChannelData::parse(&buf, false),
        Err(Error::Truncated { .. })
    ));
    // Bad channel number.
    assert_eq!(
        ChannelData::parse(&[0x80, 0, 0, 0], false).err(),
        Some(Error::BadChannelNumber(0x8000))
    );
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(m) = Message::parse(&b) {
            for a in m.attributes() { let _ = a.value.len(); }
            let _ = m.xor_peer_addresses().count();
            let _ = m.error_code();
            let _ = m.unknown_attributes().count();
            let _ = m.verify_integrity(b"k");
            let _ = m.mapped_address();
        }
        let _ = ChannelData::parse(&b, true);
        let _ = ChannelData::parse(&b, false);
        let _ = stream_frame_len(&b);
    }

    #[test]
    fn stun_header_with_random_attributes_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut b = hex(SAMPLE_REQUEST)[..20].to_vec();
        let n = tail.len() & !3;
        b[2..4].copy_from_slice(&(n as u16).to_be_bytes());
        b.extend_from_slice(&tail[..n]);
        if let Ok(m) = Message::parse(&b) {
            let _ = m.attributes().count();
            let _ = m.verify_integrity(b"k");
            let _ = m.xor_address(attr::XOR_PEER_ADDRESS);
        }
    }
}
