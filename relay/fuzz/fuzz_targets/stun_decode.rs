//! Feeds arbitrary bytes to the STUN decoder, the ChannelData parser and the TURN
//! server core (as a client datagram, over UDP and TCP, and as a relay datagram).
#![no_main]

use std::net::SocketAddr;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use relay::server::{Config, FiveTuple, LongTermKey, Transport, TurnServer};
use relay::stun::{stream_frame_len, ChannelData, Message};

fn creds(user: &str, realm: &str, _t: u64) -> Option<LongTermKey> {
    Some(LongTermKey::from_password(user, realm, "pw"))
}

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::parse(data) {
        let _ = m.attributes().count();
        let _ = m.xor_peer_addresses().count();
        let _ = m.error_code();
        let _ = m.verify_integrity(b"key");
    }
    let _ = ChannelData::parse(data, true);
    let _ = ChannelData::parse(data, false);
    let _ = stream_frame_len(data);

    let now = Instant::now();
    let mut srv = TurnServer::new(Config::default(), creds, now, 0);
    let client: SocketAddr = "203.0.113.1:4000".parse().unwrap_or_else(|_| unreachable!());
    let server: SocketAddr = "198.51.100.1:3478".parse().unwrap_or_else(|_| unreachable!());
    let mut out = Vec::new();
    for transport in [Transport::Udp, Transport::Tcp] {
        let ft = FiveTuple { transport, client, server };
        let _ = srv.handle_datagram(ft, data, now, &mut out);
    }
    let _ = srv.handle_relay_datagram(server, client, data, now, &mut out);
    while srv.poll_event().is_some() {}
});
