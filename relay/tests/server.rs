//! Full TURN client flows against the sans-IO core, with a fake clock and the relay
//! "sockets" simulated by the test.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use relay::policy::PeerPolicy;
use relay::server::{
    Config, Destination, Event, FiveTuple, LongTermKey, PortRequest, RestSecret, Transport,
    TurnServer,
};
use relay::stun::{attr, ChannelData, Class, Message, MessageWriter, Method};

const REALM: &str = "example.org";
const SERVER: &str = "198.41.0.4:3478";

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("addr")
}

fn accounts(user: &str, realm: &str, _t: u64) -> Option<LongTermKey> {
    match user {
        "alice" | "bob" => Some(LongTermKey::from_password(user, realm, "secret")),
        _ => None,
    }
}

type Creds = fn(&str, &str, u64) -> Option<LongTermKey>;

struct Client {
    ft: FiveTuple,
    user: String,
    key: LongTermKey,
    nonce: String,
    tid: u8,
}

struct Net {
    srv: TurnServer<(Creds, RestSecret)>,
    now: Instant,
    out: Vec<u8>,
    next_port: u16,
}

fn config() -> Config {
    Config {
        realm: REALM.into(),
        max_allocations_per_user: 2,
        max_allocations: 3,
        ..Config::default()
    }
}

impl Net {
    fn new(config: Config) -> Net {
        let now = Instant::now();
        let creds: (Creds, RestSecret) = (
            accounts,
            RestSecret {
                secret: b"shared".to_vec(),
            },
        );
        Net {
            srv: TurnServer::new(config, creds, now, 1_700_000_000),
            now,
            out: Vec::new(),
            next_port: 50000,
        }
    }

    fn client(&self, port: u16, user: &str, password: &str) -> Client {
        Client {
            ft: FiveTuple {
                transport: Transport::Udp,
                client: addr(&format!("203.0.113.50:{port}")),
                server: addr(SERVER),
            },
            user: user.into(),
            key: LongTermKey::from_password(user, REALM, password),
            nonce: String::new(),
            tid: 0,
        }
    }

    /// Sends a request built by `f`, signed if the client has a nonce; returns the
    /// response bytes (if any).
    fn request(
        &mut self,
        c: &mut Client,
        method: Method,
        f: impl Fn(&mut MessageWriter<'_>),
    ) -> Option<Vec<u8>> {
        c.tid = c.tid.wrapping_add(1);
        let mut req = Vec::new();
        let mut w = MessageWriter::new(&mut req, method, Class::Request, [c.tid; 12]);
        f(&mut w);
        if !c.nonce.is_empty() {
            w.add(attr::USERNAME, c.user.as_bytes())
                .add(attr::REALM, REALM.as_bytes())
                .add(attr::NONCE, c.nonce.as_bytes())
                .add_message_integrity(&c.key.0);
        }
        w.add_fingerprint();
        let t = self
            .srv
            .handle_datagram(c.ft, &req, self.now, &mut self.out)?;
        assert_eq!(t.destination, Destination::Client(c.ft));
        Some(t.payload.to_vec())
    }

    /// Drains events, opening relay sockets; returns the Allocate response if one was made.
    fn drive(&mut self) -> Option<Vec<u8>> {
        let mut resp = None;
        while let Some(ev) = self.srv.poll_event() {
            if let Event::OpenRelay { id, ipv6, port, .. } = ev {
                let ip = if ipv6 { "2001:500::1" } else { "198.41.0.4" };
                let p = match port {
                    PortRequest::Reserved(a) => a.port(),
                    _ => {
                        self.next_port += 2;
                        self.next_port
                    }
                };
                let t = self.srv.relay_opened(
                    id,
                    SocketAddr::new(ip.parse().expect("ip"), p),
                    self.now,
                    &mut self.out,
                );
                resp = t.map(|t| t.payload.to_vec());
            }
        }
        resp
    }

    /// Allocate with the 401 dance; returns the final response.
    fn allocate(&mut self, c: &mut Client, extra: impl Fn(&mut MessageWriter<'_>)) -> Vec<u8> {
        let build = |w: &mut MessageWriter<'_>| {
            w.add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            extra(w);
        };
        if c.nonce.is_empty() {
            let r = self.request(c, Method::Allocate, build).expect("401");
            let m = Message::parse(&r).expect("parse");
            assert_eq!(m.error_code().expect("ec").map(|e| e.0), Some(401));
            assert_eq!(m.text(attr::REALM).expect("r"), Some(REALM));
            c.nonce = m.text(attr::NONCE).expect("n").expect("nonce").to_string();
        }
        match self.request(c, Method::Allocate, build) {
            Some(r) => r,
            None => self.drive().expect("allocate response"),
        }
    }
}

fn code(r: &[u8]) -> Option<u16> {
    Message::parse(r)
        .expect("parse")
        .error_code()
        .expect("ec")
        .map(|e| e.0)
}

fn relayed(r: &[u8]) -> SocketAddr {
    let m = Message::parse(r).expect("parse");
    assert_eq!(m.class(), Class::Success, "error {:?}", m.error_code());
    m.xor_address(attr::XOR_RELAYED_ADDRESS)
        .expect("x")
        .expect("relayed")
}

fn peer_attr(p: SocketAddr) -> impl Fn(&mut MessageWriter<'_>) {
    move |w| {
        w.add_xor_address(attr::XOR_PEER_ADDRESS, p);
    }
}

#[test]
fn binding_returns_xor_mapped_address() {
    let mut net = Net::new(config());
    let mut c = net.client(4000, "alice", "secret");
    let r = net.request(&mut c, Method::Binding, |_| {}).expect("resp");
    let m = Message::parse(&r).expect("p");
    assert_eq!(
        m.xor_address(attr::XOR_MAPPED_ADDRESS).expect("x"),
        Some(c.ft.client)
    );
    assert!(m.has_fingerprint());
    assert!(m.get(attr::SOFTWARE).is_some());
}

#[test]
fn allocate_401_then_success_with_relayed_address_and_integrity() {
    let mut net = Net::new(config());
    let mut c = net.client(4000, "alice", "secret");
    let r = net.allocate(&mut c, |_| {});
    let m = Message::parse(&r).expect("p");
    m.verify_integrity(&c.key.0).expect("response integrity");
    assert!(m.has_fingerprint());
    assert_eq!(
        relayed(&r).ip(),
        "198.41.0.4".parse::<std::net::IpAddr>().expect("ip")
    );
    assert_eq!(m.u32_attr(attr::LIFETIME).expect("l"), Some(600));
    assert_eq!(
        m.xor_address(attr::XOR_MAPPED_ADDRESS).expect("x"),
        Some(c.ft.client)
    );
    assert_eq!(net.srv.stats().allocations_active, 1);
    // A second Allocate on the same 5-tuple with a new transaction: 437.
    let r = net.request(&mut c, Method::Allocate, |w| {
        w.add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    assert_eq!(code(&r.expect("resp")), Some(437));
}

#[test]
fn tcp_transport_442_and_lifetime_clamped() {
    let mut net = Net::new(config());
    let mut c = net.client(4000, "alice", "secret");
    let tcp = |w: &mut MessageWriter<'_>| {
        w.add(attr::REQUESTED_TRANSPORT, &[6, 0, 0, 0]);
    };
    let r = net.request(&mut c, Method::Allocate, tcp).expect("401");
    c.nonce = Message::parse(&r)
        .expect("p")
        .text(attr::NONCE)
        .expect("n")
        .expect("n")
        .into();
    assert_eq!(
        code(&net.request(&mut c, Method::Allocate, tcp).expect("r")),
        Some(442)
    );
    let r = net.allocate(&mut c, |w| {
        w.add_u32(attr::LIFETIME, 99_999);
    });
    assert_eq!(
        Message::parse(&r)
            .expect("p")
            .u32_attr(attr::LIFETIME)
            .expect("l"),
        Some(3600)
    );
}

#[test]
fn send_indication_relayed_and_peer_data_comes_back_as_data_indication() {
    let mut net = Net::new(config());
    let mut c = net.client(4000, "alice", "secret");
    let relay = relayed(&net.allocate(&mut c, |_| {}));
    let peer = addr("93.184.216.34:7000");
    let r = net
        .request(&mut c, Method::CreatePermission, peer_attr(peer))
        .expect("resp");
    assert_eq!(Message::parse(&r).expect("p").class(), Class::Success);
    let mut ind = Vec::new();
    MessageWriter::new(&mut ind, Method::Send, Class::Indication, [1; 12])
        .add_xor_address(attr::XOR_PEER_ADDRESS, peer)
        .add(attr::DATA, b"hello peer");
    let t = net
        .srv
        .handle_datagram(c.ft, &ind, net.now, &mut net.out)
        .expect("relayed");
    assert_eq!(
        t.destination,
        Destination::Peer {
            relay,
            peer,
            dont_fragment: false
        }
    );
    assert_eq!(t.payload, b"hello peer");
    // The peer answers on the relay socket.
    let t = net
        .srv
        .handle_relay_datagram(relay, peer, b"hello client", net.now, &mut net.out)
        .expect("back");
    assert_eq!(t.destination, Destination::Client(c.ft));
    let m = Message::parse(t.payload).expect("data ind");
    assert_eq!((m.method(), m.class()), (Method::Data, Class::Indication));
    assert_eq!(m.get(attr::DATA), Some(&b"hello client"[..]));
    assert_eq!(
        m.xor_address(attr::XOR_PEER_ADDRESS).expect("x"),
        Some(peer)
    );
    // A peer without permission is dropped.
    assert!(net
        .srv
        .handle_relay_datagram(
            relay,
            addr("93.184.216.35:7000"),
            b"x",
            net.now,
            &mut net.out
        )
        .is_none());
    let s = net.srv.stats();
    assert_eq!(
        (
            s.packets_to_peer,
            s.packets_to_client,
            s.dropped_no_permission
        ),
        (1, 1, 1)
    );
    // Permissions expire after 300 s.
    net.now += Duration::from_secs(301);
    net.srv.handle_timeout(net.now);
    assert!(net
        .srv
        .handle_datagram(c.ft, &ind, net.now, &mut net.out)
        .is_none());
}

#[test]
fn channel_bind_then_channel_data_both_ways() {
    let mut net = Net::new(config());
    let mut c = net.client(4000, "alice", "secret");
    let relay = relayed(&net.allocate(&mut c, |_| {}));
    let peer = addr("93.184.216.34:7000");
    let bind = |n: u16, p: SocketAddr| {
        move |w: &mut MessageWriter<'_>| {
            w.add(attr::CHANNEL_NUMBER, &[(n >> 8) as u8, n as u8, 0, 0]);
            w.add_xor_address(attr::XOR_PEER_ADDRESS, p);
        }
    };
    assert_eq!(
        code(
            &net.request(&mut c, Method::ChannelBind, bind(0x3fff, peer))
                .expect("r")
        ),
        Some(400)
    );
    assert_eq!(
        code(
            &net.request(&mut c, Method::ChannelBind, bind(0x4001, peer))
                .expect("r")
        ),
        None
    );
    // The same number for another peer, or another number for the same peer: 400.
    assert_eq!(
        code(
            &net.request(
                &mut c,
                Method::ChannelBind,
                bind(0x4001, addr("93.184.216.35:1"))
            )
            .expect("r")
        ),
        Some(400)
    );
    assert_eq!(
        code(
            &net.request(&mut c, Method::ChannelBind, bind(0x4002, peer))
                .expect("r")
        ),
        Some(400)
    );
    let mut cd = Vec::new();
    ChannelData::write(&mut cd, 0x4001, b"to peer", false).expect("w");
    let t = net
        .srv
        .handle_datagram(c.ft, &cd, net.now, &mut net.out)
        .expect("out");
    assert_eq!(
        t.destination,
        Destination::Peer {
            relay,
            peer,
            dont_fragment: false
        }
    );
    assert_eq!(t.payload, b"to peer");
    let t = net
        .srv
        .handle_relay_datagram(relay, peer, b"to client", net.now, &mut net.out)
        .expect("in");
    let (frame, _) = ChannelData::parse(t.payload, false).expect("cd");
    assert_eq!((frame.channel, frame.data), (0x4001, &b"to client"[..]));
    // Unbound channel numbers are dropped; a ChannelData length past the datagram too.
    ChannelData::write(&mut cd, 0x4005, b"x", false).expect("w");
    assert!(net
        .srv
        .handle_datagram(c.ft, &cd, net.now, &mut net.out)
        .is_none());
    assert!(net
        .srv
        .handle_datagram(c.ft, &[0x40, 0x01, 0x00, 0xff, 1, 2], net.now, &mut net.out)
        .is_none());
    assert_eq!(net.srv.stats().malformed, 1);
}

#[test]
fn refresh_zero_frees_the_port_and_expiry_frees_too() {
    let mut net = Net::new(config());
    let mut c = net.client(4000, "alice", "secret");
    let relay = relayed(&net.allocate(&mut c, |_| {}));
    let r = net.request(&mut c, Method::Refresh, |w| {
        w.add_u32(attr::LIFETIME, 0);
    });
    let m = Message::parse(r.as_deref().expect("r")).expect("p");
    assert_eq!(m.u32_attr(attr::LIFETIME).expect("l"), Some(0));
    assert_eq!(net.srv.poll_event(), Some(Event::CloseRelay { relay }));
    assert_eq!(net.srv.stats().allocations_active, 0);
    // Refresh without an allocation: 437.
    let r = net.request(&mut c, Method::Refresh, |_| {});
    assert_eq!(code(&r.expect("r")), Some(437));

    let mut d = net.client(4001, "bob", "secret");
    let relay = relayed(&net.allocate(&mut d, |_| {}));
    let deadline = net.srv.poll_timeout().expect("timer");
    assert!(deadline <= net.now + Duration::from_secs(600));
    net.now += Duration::from_secs(601);
    net.srv.handle_timeout(net.now);
    assert_eq!(net.srv.poll_event(), Some(Event::CloseRelay { relay }));
    assert_eq!(net.srv.stats().allocations_active, 0);
    assert!(net.srv.relay_of(&d.ft).is_none());
}

#[test]
fn stale_nonce_438_and_recovery() {
    let mut net = Net::new(config());
    let mut c = net.client(4000, "alice", "secret");
    relayed(&net.allocate(&mut c, |_| {}));
    net.now += Duration::from_secs(601);
    let r = net.request(&mut c, Method::Refresh, |_| {}).expect("r");
    let m = Message::parse(&r).expect("p");
    assert_eq!(m.error_code().expect("e").map(|e| e.0), Some(438));
    assert_eq!(m.text(attr::REALM).expect("r"), Some(REALM));
    c.nonce = m.text(attr::NONCE).expect("n").expect("nonce").into();
    let r = net.request(&mut c, Method::Refresh, |_| {}).expect("r");
    assert_eq!(code(&r), None);
    assert_eq!(net.srv.stats().stale_nonces, 1);
}

#[test]
fn wrong_password_401_is_counted() {
    let mut net = Net::new(config());
    let mut c = net.client(4000, "alice", "wrong");
    let r = net.request(&mut c, Method::Allocate, |w| {
        w.add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    c.nonce = Message::parse(&r.expect("r"))
        .expect("p")
        .text(attr::NONCE)
        .expect("n")
        .expect("n")
        .into();
    let r = net.request(&mut c, Method::Allocate, |w| {
        w.add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    assert_eq!(code(&r.expect("r")), Some(401));
    let mut u = net.client(4001, "mallory", "x");
    assert_eq!(code(&net.allocate(&mut u, |_| {})), Some(401));
    assert_eq!(net.srv.stats().auth_failures, 2);
}

#[test]
fn quota_486_and_capacity_508() {
    let mut net = Net::new(config());
    for port in [4000, 4001] {
        let mut c = net.client(port, "alice", "secret");
        relayed(&net.allocate(&mut c, |_| {}));
    }
    let mut c = net.client(4002, "alice", "secret");
    assert_eq!(code(&net.allocate(&mut c, |_| {})), Some(486));
    let mut b = net.client(4003, "bob", "secret");
    relayed(&net.allocate(&mut b, |_| {}));
    let mut b2 = net.client(4004, "bob", "secret");
    assert_eq!(code(&net.allocate(&mut b2, |_| {})), Some(508));
    assert_eq!(
        (net.srv.stats().quota_hits, net.srv.stats().capacity_hits),
        (1, 1)
    );
}

fn peer_codes(net: &mut Net, c: &mut Client, peers: &[&str]) -> Vec<Option<u16>> {
    peers
        .iter()
        .map(|p| {
            code(
                &net.request(c, Method::CreatePermission, peer_attr(addr(p)))
                    .expect("r"),
            )
        })
        .collect()
}

#[test]
fn denied_peers_403_and_other_family_443() {
    let mut net = Net::new(config());
    let mut c = net.client(4000, "alice", "secret");
    let relay = relayed(&net.allocate(&mut c, |_| {}));
    let own = SocketAddr::new(relay.ip(), 9).to_string();
    let got = peer_codes(
        &mut net,
        &mut c,
        &[
            "127.0.0.1:1",
            "10.0.0.1:1",
            "192.168.1.1:1",
            &own,
            "[2001:4860::8888]:1",
            "8.8.8.8:53",
        ],
    );
    assert_eq!(
        got,
        vec![Some(403), Some(403), Some(403), Some(403), Some(443), None]
    );
    assert_eq!(net.srv.stats().denied_peers, 4);
    // ChannelBind follows the same policy.
    let r = net.request(&mut c, Method::ChannelBind, |w| {
        w.add(attr::CHANNEL_NUMBER, &[0x40, 0, 0, 0]);
        w.add_xor_address(attr::XOR_PEER_ADDRESS, addr("127.0.0.1:5"));
    });
    assert_eq!(code(&r.expect("r")), Some(403));

    let mut v6 = net.client(4001, "bob", "secret");
    let r = net.allocate(&mut v6, |w| {
        w.add(attr::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0]);
    });
    assert!(relayed(&r).is_ipv6());
    let got = peer_codes(
        &mut net,
        &mut v6,
        &[
            "[::1]:1",
            "[::ffff:127.0.0.1]:1",
            "8.8.8.8:1",
            "[2001:4860::8888]:1",
        ],
    );
    assert_eq!(got, vec![Some(403), Some(403), Some(443), None]);
}

#[test]
fn allow_cidr_wins_over_deny_and_own_address() {
    let policy = PeerPolicy {
        allow: vec![
            "127.0.0.0/8".parse().expect("c"),
            "198.41.0.0/16".parse().expect("c"),
        ],
        ..Default::default()
    };
    let mut net = Net::new(Config { policy, ..config() });
    let mut c = net.client(4000, "alice", "secret");
    relayed(&net.allocate(&mut c, |_| {}));
    let got = peer_codes(
        &mut net,
        &mut c,
        &["127.0.0.1:1", "198.41.0.4:9", "10.0.0.1:1"],
    );
    assert_eq!(got, vec![None, None, Some(403)]);
}

#[test]
fn rest_credentials_valid_and_expired() {
    let mut net = Net::new(config());
    let secret = RestSecret {
        secret: b"shared".to_vec(),
    };
    let user = "1700000100:carol";
    let mut c = net.client(4000, user, &secret.password(user));
    relayed(&net.allocate(&mut c, |_| {}));
    let expired = "1699999999:carol";
    let mut e = net.client(4001, expired, &secret.password(expired));
    assert_eq!(code(&net.allocate(&mut e, |_| {})), Some(401));
    // After its expiry a valid one stops working too.
    net.now += Duration::from_secs(101);
    let mut c2 = net.client(4002, user, &secret.password(user));
    assert_eq!(code(&net.allocate(&mut c2, |_| {})), Some(401));
}

#[test]
fn dont_fragment_accepted_and_flagged() {
    let mut net = Net::new(config());
    let mut c = net.client(4000, "alice", "secret");
    let r = net.request(&mut c, Method::Allocate, |w| {
        w.add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    c.nonce = Message::parse(&r.expect("r"))
        .expect("p")
        .text(attr::NONCE)
        .expect("n")
        .expect("n")
        .into();
    assert!(net
        .request(&mut c, Method::Allocate, |w| {
            w.add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
                .add(attr::DONT_FRAGMENT, &[]);
        })
        .is_none());
    let ev = net.srv.poll_event().expect("open");
    let Event::OpenRelay {
        id, dont_fragment, ..
    } = ev
    else {
        panic!("{ev:?}")
    };
    assert!(dont_fragment);
    let relay = addr("198.41.0.4:50002");
    let t = net
        .srv
        .relay_opened(id, relay, net.now, &mut net.out)
        .expect("resp");
    assert_eq!(code(t.payload), None);
    assert_eq!(net.srv.relay_dont_fragment(relay), Some(true));
}

#[test]
fn even_port_reservation_token_and_advertised_address() {
    let mut net = Net::new(Config {
        advertised_ipv4: Some("192.0.2.77".parse().expect("ip")),
        ..config()
    });
    let mut c = net.client(4000, "alice", "secret");
    let r = net.allocate(&mut c, |w| {
        w.add(attr::EVEN_PORT, &[0x80, 0, 0, 0]);
    });
    let first = relayed(&r);
    assert_eq!(first.ip().to_string(), "192.0.2.77");
    let token = Message::parse(&r)
        .expect("p")
        .get(attr::RESERVATION_TOKEN)
        .expect("token")
        .to_vec();
    let mut d = net.client(4001, "alice", "secret");
    let r = net.allocate(&mut d, |w| {
        w.add(attr::RESERVATION_TOKEN, &token);
    });
    assert_eq!(relayed(&r).port(), first.port() + 1);
}

#[test]
fn unknown_comprehension_required_attribute_420() {
    let mut net = Net::new(config());
    let mut c = net.client(4000, "alice", "secret");
    let r = net.request(&mut c, Method::Allocate, |w| {
        w.add(0x0077, b"what");
    });
    let r = r.expect("r");
    let m = Message::parse(&r).expect("p");
    assert_eq!(m.error_code().expect("e").map(|e| e.0), Some(420));
    assert_eq!(m.unknown_attributes().collect::<Vec<_>>(), vec![0x0077]);
}

#[test]
fn bandwidth_cap_drops_excess() {
    let mut net = Net::new(Config {
        bandwidth_limit: Some(1000),
        ..config()
    });
    let mut c = net.client(4000, "alice", "secret");
    let relay = relayed(&net.allocate(&mut c, |_| {}));
    let peer = addr("93.184.216.34:7000");
    net.request(&mut c, Method::CreatePermission, peer_attr(peer));
    let payload = [0u8; 400];
    let sent = (0..5)
        .filter(|_| {
            net.srv
                .handle_relay_datagram(relay, peer, &payload, net.now, &mut net.out)
                .is_some()
        })
        .count();
    assert_eq!(sent, 2);
    net.now += Duration::from_secs(1);
    assert!(net
        .srv
        .handle_relay_datagram(relay, peer, &payload, net.now, &mut net.out)
        .is_some());
    assert_eq!(net.srv.stats().dropped_bandwidth, 3);
}

proptest! {
    #[test]
    fn arbitrary_datagrams_never_panic(b in proptest::collection::vec(any::<u8>(), 0..400), tcp in any::<bool>()) {
        let mut net = Net::new(config());
        let mut c = net.client(4000, "alice", "secret");
        relayed(&net.allocate(&mut c, |_| {}));
        if tcp { c.ft.transport = Transport::Tcp; }
        let _ = net.srv.handle_datagram(c.ft, &b, net.now, &mut net.out);
        let relay = net.srv.relay_of(&c.ft);
        if let Some(relay) = relay {
            let _ = net.srv.handle_relay_datagram(relay, addr("8.8.8.8:1"), &b, net.now, &mut net.out);
        }
    }
}
