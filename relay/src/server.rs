//! The TURN server core (RFC 8656, answering RFC 5766 clients too), sans-IO.
//!
//! How a driver runs it:
//! - every datagram (or TCP frame, see [`crate::stun::stream_frame_len`]) from a
//!   client goes to [`TurnServer::handle_datagram`]; every datagram arriving on a relay
//!   socket goes to [`TurnServer::handle_relay_datagram`]. Both return at most one
//!   [`Transmit`] whose payload borrows the input or the caller's `out` buffer, so the
//!   data path allocates nothing;
//! - after each call, drain [`TurnServer::poll_event`]: [`Event::OpenRelay`] asks for a
//!   relay socket (answer with [`TurnServer::relay_opened`] or
//!   [`TurnServer::relay_failed`], which return the Allocate response), and
//!   [`Event::CloseRelay`] says a socket may be closed;
//! - call [`TurnServer::handle_timeout`] when [`TurnServer::poll_timeout`] says.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;

use crate::allocation::{Allocation, Bucket, Channel};
use crate::policy::PeerPolicy;
use crate::stun::{
    attr, ChannelData, Class, Message, MessageWriter, Method, CHANNEL_MAX, CHANNEL_MIN,
};

/// The transport between client and server; ChannelData is padded on TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    /// UDP.
    Udp,
    /// TCP (or TLS, framed the same way).
    Tcp,
}

/// The client side of an allocation: transport, client address, server address.
/// RFC 8656 keys allocations by this 5-tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FiveTuple {
    /// UDP or TCP.
    pub transport: Transport,
    /// Where the client's packets come from.
    pub client: SocketAddr,
    /// The listening address they reached.
    pub server: SocketAddr,
}

/// Names an allocation between an [`Event::OpenRelay`] and the driver's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AllocationId(pub u64);

/// The long-term credential key, MD5(username ":" realm ":" password). For SIP
/// accounts with realm = domain this is exactly the digest HA1, so stored HA1s work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LongTermKey(pub [u8; 16]);

impl LongTermKey {
    /// Derives the key from a clear-text password.
    pub fn from_password(username: &str, realm: &str, password: &str) -> LongTermKey {
        LongTermKey(Md5::digest(format!("{username}:{realm}:{password}")).into())
    }

    /// Reads a SIP HA1 in lower- or upper-case hex (32 digits).
    pub fn from_ha1_hex(hex: &str) -> Option<LongTermKey> {
        let b = hex.as_bytes();
        if b.len() != 32 {
            return None;
        }
        let mut k = [0u8; 16];
        for (i, out) in k.iter_mut().enumerate() {
            let s = std::str::from_utf8(&b[2 * i..2 * i + 2]).ok()?;
            *out = u8::from_str_radix(s, 16).ok()?;
        }
        Some(LongTermKey(k))
    }
}

/// Where the long-term keys come from. The caller implements it (SIP accounts,
/// [`RestSecret`], or both as a tuple).
pub trait Credentials {
    /// The key for `username` in `realm`, or `None` if the user is unknown or its
    /// credential has expired; `unix_time` is the wall-clock second the driver gave.
    fn long_term_key(&self, username: &str, realm: &str, unix_time: u64) -> Option<LongTermKey>;
}

impl<F: Fn(&str, &str, u64) -> Option<LongTermKey>> Credentials for F {
    fn long_term_key(&self, username: &str, realm: &str, unix_time: u64) -> Option<LongTermKey> {
        self(username, realm, unix_time)
    }
}

impl<A: Credentials, B: Credentials> Credentials for (A, B) {
    fn long_term_key(&self, username: &str, realm: &str, unix_time: u64) -> Option<LongTermKey> {
        self.0
            .long_term_key(username, realm, unix_time)
            .or_else(|| self.1.long_term_key(username, realm, unix_time))
    }
}

/// coturn-compatible time-limited credentials ("TURN REST API"): the username is
/// `expiry:user` and the password base64(HMAC-SHA1(secret, username)), so a web
/// service sharing the secret can hand out credentials without calling us.
#[derive(Debug, Clone)]
pub struct RestSecret {
    /// The shared secret (coturn's `static-auth-secret`).
    pub secret: Vec<u8>,
}

impl RestSecret {
    /// The password a client must use for `username` (what the web service issues).
    pub fn password(&self, username: &str) -> String {
        let Ok(mut mac) = <Hmac<Sha1> as Mac>::new_from_slice(&self.secret) else {
            return String::new();
        };
        mac.update(username.as_bytes());
        base64(&mac.finalize().into_bytes())
    }
}

impl Credentials for RestSecret {
    fn long_term_key(&self, username: &str, realm: &str, unix_time: u64) -> Option<LongTermKey> {
        let (expiry, _) = username.split_once(':')?;
        let expiry: u64 = expiry.parse().ok()?;
        if expiry <= unix_time {
            return None;
        }
        Some(LongTermKey::from_password(
            username,
            realm,
            &self.password(username),
        ))
    }
}

fn base64(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(b.len().div_ceil(3) * 4);
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                s.push(char::from(T[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// The key that protected a request, reused to protect its response.
#[derive(Debug, Clone, Copy)]
pub struct AuthKey {
    key: LongTermKey,
    sha256: bool,
}

/// Settings of the core; defaults follow RFC 8656 and coturn.
#[derive(Debug, Clone)]
pub struct Config {
    /// The realm for long-term credentials (the SIP domain).
    pub realm: String,
    /// SOFTWARE in responses.
    pub software: String,
    /// Secret for nonces and reservation tokens; fill it from the OS RNG.
    pub secret: [u8; 32],
    /// How long a nonce stays valid before 438 Stale Nonce.
    pub nonce_lifetime: Duration,
    /// Allocation lifetime when the client asks for less or nothing (RFC: 600 s).
    pub default_lifetime: u32,
    /// Longest allocation lifetime granted (RFC: 3600 s).
    pub max_lifetime: u32,
    /// Permission lifetime (RFC: 300 s).
    pub permission_lifetime: Duration,
    /// Channel binding lifetime (RFC: 600 s).
    pub channel_lifetime: Duration,
    /// Total allocations before 508.
    pub max_allocations: usize,
    /// Allocations per username before 486.
    pub max_allocations_per_user: u32,
    /// Permissions and channels per allocation before 508 (bounds memory per client).
    pub max_permissions_per_allocation: usize,
    /// Per-allocation relayed bytes per second (both directions), `None` = unlimited.
    pub bandwidth_limit: Option<u64>,
    /// Whether IPv6 relayed addresses can be allocated.
    pub ipv6: bool,
    /// The peer address policy.
    pub policy: PeerPolicy,
    /// The IPv4 address clients see in XOR-RELAYED-ADDRESS (1:1 NAT), if not the socket's.
    pub advertised_ipv4: Option<Ipv4Addr>,
    /// The IPv6 address clients see in XOR-RELAYED-ADDRESS, if not the socket's.
    pub advertised_ipv6: Option<Ipv6Addr>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            realm: "supernode".into(),
            software: "supernode relay".into(),
            secret: [0; 32],
            nonce_lifetime: Duration::from_secs(600),
            default_lifetime: 600,
            max_lifetime: 3600,
            permission_lifetime: Duration::from_secs(300),
            channel_lifetime: Duration::from_secs(600),
            max_allocations: 10_000,
            max_allocations_per_user: 10,
            max_permissions_per_allocation: 64,
            bandwidth_limit: None,
            ipv6: true,
            policy: PeerPolicy::default(),
            advertised_ipv4: None,
            advertised_ipv6: None,
        }
    }
}

/// Counters for the metrics registry; plain fields the driver copies out.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Allocations alive now.
    pub allocations_active: u64,
    /// Allocations ever created.
    pub allocations_created: u64,
    /// Permissions installed or refreshed.
    pub permissions_created: u64,
    /// Channel bindings made or refreshed.
    pub channels_bound: u64,
    /// Datagrams relayed client → peer.
    pub packets_to_peer: u64,
    /// Payload bytes relayed client → peer.
    pub bytes_to_peer: u64,
    /// Datagrams relayed peer → client.
    pub packets_to_client: u64,
    /// Payload bytes relayed peer → client.
    pub bytes_to_client: u64,
    /// Peers refused by the policy (403).
    pub denied_peers: u64,
    /// Wrong or unknown credentials (401 after a MESSAGE-INTEGRITY was sent).
    pub auth_failures: u64,
    /// 438 answers.
    pub stale_nonces: u64,
    /// 486 answers.
    pub quota_hits: u64,
    /// 508 answers.
    pub capacity_hits: u64,
    /// Input that was not STUN/ChannelData or failed to parse.
    pub malformed: u64,
    /// Data dropped for lack of a permission or channel.
    pub dropped_no_permission: u64,
    /// Data dropped by the bandwidth cap.
    pub dropped_bandwidth: u64,
    /// Binding requests answered.
    pub binding_requests: u64,
}

/// How the relay port should be chosen (EVEN-PORT / RESERVATION-TOKEN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortRequest {
    /// Any port from the range.
    Any,
    /// An even port; with `reserve_next` the driver also holds port+1 for a later
    /// Allocate carrying the RESERVATION-TOKEN.
    Even {
        /// Whether to hold the next port too.
        reserve_next: bool,
    },
    /// The port+1 the driver held for an earlier EVEN-PORT allocation.
    Reserved(SocketAddr),
}

/// Things the driver must do besides sending packets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Open a relay socket; answer with `relay_opened` or `relay_failed`.
    OpenRelay {
        /// Which allocation it is for.
        id: AllocationId,
        /// IPv6 (true) or IPv4.
        ipv6: bool,
        /// Port constraints.
        port: PortRequest,
        /// Set DF (`IP_PMTUDISC_DO`) on the socket: the client sent DONT-FRAGMENT.
        dont_fragment: bool,
    },
    /// Close this relay socket (allocation deleted or expired, or a reserved port
    /// was never claimed): its port is free again.
    CloseRelay {
        /// The socket's bound address.
        relay: SocketAddr,
    },
}

/// Where a [`Transmit`] goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// Back to a client on its 5-tuple.
    Client(FiveTuple),
    /// Out of a relay socket to a peer.
    Peer {
        /// The relay socket to send from.
        relay: SocketAddr,
        /// The peer to send to.
        peer: SocketAddr,
        /// Send with DF set.
        dont_fragment: bool,
    },
}

/// One datagram for the driver to send; the payload borrows the input or `out`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit<'a> {
    /// Where to send.
    pub destination: Destination,
    /// What to send.
    pub payload: &'a [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Allocation(AllocationId),
    Reservation([u8; 8]),
}

/// The TURN server state machine.
#[derive(Debug)]
pub struct TurnServer<C> {
    config: Config,
    credentials: C,
    epoch: Instant,
    unix_at_epoch: u64,
    allocations: HashMap<FiveTuple, Allocation>,
    by_id: HashMap<AllocationId, FiveTuple>,
    by_relay: HashMap<SocketAddr, FiveTuple>,
    per_user: HashMap<String, u32>,
    reservations: HashMap<[u8; 8], (SocketAddr, Instant)>,
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    events: VecDeque<Event>,
    next_id: u64,
    next_tid: u64,
    stats: Stats,
}

/// Outcome of request authentication: the key, or the error code to answer.
type AuthResult<'m> = Result<(&'m str, AuthKey), u16>;

fn reason(code: u16) -> &'static str {
    match code {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        420 => "Unknown Attribute",
        437 => "Allocation Mismatch",
        438 => "Stale Nonce",
        440 => "Address Family not Supported",
        441 => "Wrong Credentials",
        442 => "Unsupported Transport Protocol",
        443 => "Peer Address Family Mismatch",
        486 => "Allocation Quota Reached",
        508 => "Insufficient Capacity",
        _ => "Server Error",
    }
}

impl<C: Credentials> TurnServer<C> {
    /// A server with no allocations. `unix_time` is the wall-clock second at `now`,
    /// used only for REST credential expiry.
    pub fn new(config: Config, credentials: C, now: Instant, unix_time: u64) -> Self {
        TurnServer {
            config,
            credentials,
            epoch: now,
            unix_at_epoch: unix_time,
            allocations: HashMap::new(),
            by_id: HashMap::new(),
            by_relay: HashMap::new(),
            per_user: HashMap::new(),
            reservations: HashMap::new(),
            timers: BinaryHeap::new(),
            events: VecDeque::new(),
            next_id: 1,
            next_tid: 1,
            stats: Stats::default(),
        }
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether the allocation behind this relay address asked for DONT-FRAGMENT.
    pub fn relay_dont_fragment(&self, relay: SocketAddr) -> Option<bool> {
        let ft = self.by_relay.get(&relay)?;
        self.allocations.get(ft).map(|a| a.dont_fragment)
    }

    /// The relay address of the allocation on this 5-tuple, once opened.
    pub fn relay_of(&self, client: &FiveTuple) -> Option<SocketAddr> {
        self.allocations.get(client).and_then(|a| a.relay)
    }

    /// The next thing the driver must do, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`TurnServer::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _))| *t)
    }

    /// Expires allocations, permissions, channels and reservations due by `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((t, timer))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            match timer {
                Timer::Reservation(token) => {
                    if let Some(&(addr, exp)) = self.reservations.get(&token) {
                        if exp <= now {
                            self.reservations.remove(&token);
                            self.events.push_back(Event::CloseRelay { relay: addr });
                        }
                    }
                }
                Timer::Allocation(id) => {
                    let Some(ft) = self.by_id.get(&id).copied() else {
                        continue;
                    };
                    let Some(a) = self.allocations.get_mut(&ft) else {
                        continue;
                    };
                    if a.expires <= now {
                        self.remove_allocation(&ft);
                    } else {
                        let next = a.sweep(now);
                        a.next_wake = next;
                        self.timers.push(Reverse((next, Timer::Allocation(id))));
                    }
                }
            }
        }
    }

    fn schedule(&mut self, ft: &FiveTuple, at: Instant) {
        if let Some(a) = self.allocations.get_mut(ft) {
            if at < a.next_wake {
                a.next_wake = at;
                self.timers.push(Reverse((at, Timer::Allocation(a.id))));
            }
        }
    }

    fn remove_allocation(&mut self, ft: &FiveTuple) {
        let Some(a) = self.allocations.remove(ft) else {
            return;
        };
        self.by_id.remove(&a.id);
        if let Some(relay) = a.relay {
            self.by_relay.remove(&relay);
            self.events.push_back(Event::CloseRelay { relay });
        }
        if let Some(n) = self.per_user.get_mut(&a.username) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_user.remove(&a.username);
            }
        }
        self.stats.allocations_active = self.stats.allocations_active.saturating_sub(1);
    }

    fn unix_now(&self, now: Instant) -> u64 {
        self.unix_at_epoch + now.saturating_duration_since(self.epoch).as_secs()
    }

    fn nonce_mac(&self, expiry: u64, ft: &FiveTuple) -> [u8; 8] {
        let mut out = [0u8; 8];
        if let Ok(mut mac) = <Hmac<Sha1> as Mac>::new_from_slice(&self.config.secret) {
            mac.update(&expiry.to_be_bytes());
            mac.update(format!("{:?}", ft).as_bytes());
            out.copy_from_slice(&mac.finalize().into_bytes()[..8]);
        }
        out
    }

    /// A nonce naming its own expiry, MACed with the secret and bound to the 5-tuple,
    /// so nonces need no table.
    fn make_nonce(&self, ft: &FiveTuple, now: Instant) -> String {
        let expiry = now.saturating_duration_since(self.epoch).as_secs()
            + self.config.nonce_lifetime.as_secs();
        let mac = self.nonce_mac(expiry, ft);
        let mut s = format!("{expiry:016x}");
        for b in mac {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// `Ok(true)` fresh, `Ok(false)` stale, `Err` not ours at all.
    fn check_nonce(&self, nonce: &str, ft: &FiveTuple, now: Instant) -> Result<bool, ()> {
        if nonce.len() != 32 || !nonce.is_ascii() {
            return Err(());
        }
        let expiry = u64::from_str_radix(&nonce[..16], 16).map_err(|_| ())?;
        let mac = self.nonce_mac(expiry, ft);
        let mut hex = String::with_capacity(16);
        for b in mac {
            hex.push_str(&format!("{b:02x}"));
        }
        if hex != nonce[16..] {
            return Err(());
        }
        Ok(expiry > now.saturating_duration_since(self.epoch).as_secs())
    }

    /// Handles one datagram (or TCP frame) from a client.
    pub fn handle_datagram<'a>(
        &mut self,
        from: FiveTuple,
        bytes: &'a [u8],
        now: Instant,
        out: &'a mut Vec<u8>,
    ) -> Option<Transmit<'a>> {
        match bytes.first()? >> 6 {
            0 => {}
            1 => return self.client_channel_data(from, bytes, now),
            _ => {
                self.stats.malformed += 1;
                return None;
            }
        }
        let Ok(msg) = Message::parse(bytes) else {
            self.stats.malformed += 1;
            return None;
        };
        match (msg.class(), msg.method()) {
            (Class::Request, _) => {
                self.handle_request(from, &msg, now, out)?;
                Some(Transmit {
                    destination: Destination::Client(from),
                    payload: out,
                })
            }
            (Class::Indication, Method::Send) => self.send_indication(from, &msg, now),
            _ => None,
        }
    }

    fn client_channel_data<'a>(
        &mut self,
        from: FiveTuple,
        bytes: &'a [u8],
        now: Instant,
    ) -> Option<Transmit<'a>> {
        let Ok((cd, _)) = ChannelData::parse(bytes, from.transport == Transport::Tcp) else {
            self.stats.malformed += 1;
            return None;
        };
        let a = self.allocations.get_mut(&from)?;
        let relay = a.relay?;
        if a.expires <= now {
            return None;
        }
        let Some(peer) = a.channel_by_number(cd.channel, now).map(|c| c.peer) else {
            self.stats.dropped_no_permission += 1;
            return None;
        };
        if !a.permitted(peer.ip(), now) {
            self.stats.dropped_no_permission += 1;
            return None;
        }
        if let Some(b) = a.bucket.as_mut() {
            if !b.take(cd.data.len(), now) {
                self.stats.dropped_bandwidth += 1;
                return None;
            }
        }
        let dont_fragment = a.dont_fragment;
        self.stats.packets_to_peer += 1;
        self.stats.bytes_to_peer += cd.data.len() as u64;
        Some(Transmit {
            destination: Destination::Peer {
                relay,
                peer,
                dont_fragment,
            },
            payload: cd.data,
        })
    }

    fn send_indication<'a>(
        &mut self,
        from: FiveTuple,
        msg: &Message<'a>,
        now: Instant,
    ) -> Option<Transmit<'a>> {
        let a = self.allocations.get_mut(&from)?;
        let relay = a.relay?;
        if a.expires <= now {
            return None;
        }
        let peer = msg.xor_address(attr::XOR_PEER_ADDRESS).ok()??;
        let data = msg.get(attr::DATA)?;
        if !a.permitted(peer.ip(), now) {
            self.stats.dropped_no_permission += 1;
            return None;
        }
        if let Some(b) = a.bucket.as_mut() {
            if !b.take(data.len(), now) {
                self.stats.dropped_bandwidth += 1;
                return None;
            }
        }
        let dont_fragment = a.dont_fragment || msg.get(attr::DONT_FRAGMENT).is_some();
        self.stats.packets_to_peer += 1;
        self.stats.bytes_to_peer += data.len() as u64;
        Some(Transmit {
            destination: Destination::Peer {
                relay,
                peer,
                dont_fragment,
            },
            payload: data,
        })
    }

    /// Handles a datagram a peer sent to a relay socket: it goes to the client as
    /// ChannelData (if a channel is bound) or a Data indication, written into `out`.
    pub fn handle_relay_datagram<'a>(
        &mut self,
        relay: SocketAddr,
        peer: SocketAddr,
        bytes: &[u8],
        now: Instant,
        out: &'a mut Vec<u8>,
    ) -> Option<Transmit<'a>> {
        let ft = *self.by_relay.get(&relay)?;
        let a = self.allocations.get_mut(&ft)?;
        if a.expires <= now || !a.permitted(peer.ip(), now) {
            self.stats.dropped_no_permission += 1;
            return None;
        }
        if let Some(b) = a.bucket.as_mut() {
            if !b.take(bytes.len(), now) {
                self.stats.dropped_bandwidth += 1;
                return None;
            }
        }
        let stream = ft.transport == Transport::Tcp;
        if let Some(ch) = a.channel_by_peer(peer, now) {
            ChannelData::write(out, ch.number, bytes, stream).ok()?;
        } else {
            if bytes.len() > usize::from(u16::MAX) - 64 {
                return None;
            }
            self.next_tid = self.next_tid.wrapping_add(1);
            let mut tid = [0u8; 12];
            tid[..8].copy_from_slice(&self.next_tid.to_be_bytes());
            tid[8..].copy_from_slice(&self.config.secret[..4]);
            MessageWriter::new(out, Method::Data, Class::Indication, tid)
                .add_xor_address(attr::XOR_PEER_ADDRESS, peer)
                .add(attr::DATA, bytes);
        }
        self.stats.packets_to_client += 1;
        self.stats.bytes_to_client += bytes.len() as u64;
        Some(Transmit {
            destination: Destination::Client(ft),
            payload: out,
        })
    }

    fn finish(w: &mut MessageWriter<'_>, key: Option<&AuthKey>, fingerprint: bool) {
        if let Some(k) = key {
            if k.sha256 {
                w.add_message_integrity_sha256(&k.key.0);
            } else {
                w.add_message_integrity(&k.key.0);
            }
        }
        if fingerprint {
            w.add_fingerprint();
        }
    }

    fn error(
        &self,
        out: &mut Vec<u8>,
        from: &FiveTuple,
        msg: &Message<'_>,
        code: u16,
        key: Option<&AuthKey>,
        now: Instant,
    ) -> Option<()> {
        let mut w = MessageWriter::new(out, msg.method(), Class::Error, msg.transaction_id());
        w.add_error_code(code, reason(code));
        if code == 401 || code == 438 {
            w.add(attr::REALM, self.config.realm.as_bytes());
            w.add(attr::NONCE, self.make_nonce(from, now).as_bytes());
        }
        if code == 420 {
            w.add_unknown_attributes(msg.unknown_required());
        }
        w.add(attr::SOFTWARE, self.config.software.as_bytes());
        Self::finish(&mut w, key, msg.has_fingerprint());
        Some(())
    }

    fn authenticate<'m>(
        &mut self,
        from: &FiveTuple,
        msg: &Message<'m>,
        now: Instant,
    ) -> AuthResult<'m> {
        if !msg.has_integrity() {
            return Err(401);
        }
        let (Ok(Some(user)), Ok(Some(realm)), Ok(Some(nonce))) = (
            msg.text(attr::USERNAME),
            msg.text(attr::REALM),
            msg.text(attr::NONCE),
        ) else {
            return Err(400);
        };
        match self.check_nonce(nonce, from, now) {
            Ok(true) => {}
            Ok(false) => {
                self.stats.stale_nonces += 1;
                return Err(438);
            }
            Err(()) => {
                // Not a nonce we issued (e.g. from before a restart): treat as stale so
                // the client retries with a fresh one.
                self.stats.stale_nonces += 1;
                return Err(438);
            }
        }
        if realm != self.config.realm {
            self.stats.auth_failures += 1;
            return Err(401);
        }
        let Some(key) = self
            .credentials
            .long_term_key(user, realm, self.unix_now(now))
        else {
            self.stats.auth_failures += 1;
            return Err(401);
        };
        if msg.verify_integrity(&key.0).is_err() {
            self.stats.auth_failures += 1;
            return Err(401);
        }
        if let Some(a) = self.allocations.get(from) {
            if a.username != user {
                return Err(441);
            }
        }
        Ok((
            user,
            AuthKey {
                key,
                sha256: msg.uses_sha256(),
            },
        ))
    }

    fn handle_request(
        &mut self,
        from: FiveTuple,
        msg: &Message<'_>,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Option<()> {
        if msg.unknown_required().next().is_some() {
            return self.error(out, &from, msg, 420, None, now);
        }
        if msg.method() == Method::Binding {
            self.stats.binding_requests += 1;
            let mut w =
                MessageWriter::new(out, Method::Binding, Class::Success, msg.transaction_id());
            w.add_xor_address(attr::XOR_MAPPED_ADDRESS, from.client);
            w.add(attr::SOFTWARE, self.config.software.as_bytes());
            Self::finish(&mut w, None, msg.has_fingerprint());
            return Some(());
        }
        if matches!(msg.method(), Method::Other(_) | Method::Send | Method::Data) {
            return self.error(out, &from, msg, 400, None, now);
        }
        // A retransmitted Allocate is answered again without re-authenticating.
        if msg.method() == Method::Allocate {
            if let Some(a) = self.allocations.get(&from) {
                if a.allocate_tid == msg.transaction_id() {
                    // Still waiting for the relay socket: the answer comes from relay_opened.
                    a.relay?;
                    let key = a.allocate_key;
                    return self.allocate_success(&from, &key, msg.has_fingerprint(), now, out);
                }
            }
        }
        let (user, key) = match self.authenticate(&from, msg, now) {
            Ok(ok) => ok,
            Err(code) => return self.error(out, &from, msg, code, None, now),
        };
        let result = match msg.method() {
            Method::Allocate => self.allocate(from, msg, user, key, now),
            Method::Refresh => self.refresh(from, msg, now),
            Method::CreatePermission => self.create_permission(from, msg, now),
            Method::ChannelBind => self.channel_bind(from, msg, now),
            _ => Err(400),
        };
        match result {
            Ok(Reply::Pending) => None,
            Ok(Reply::Lifetime(l)) => {
                let mut w =
                    MessageWriter::new(out, msg.method(), Class::Success, msg.transaction_id());
                w.add_u32(attr::LIFETIME, l);
                w.add(attr::SOFTWARE, self.config.software.as_bytes());
                Self::finish(&mut w, Some(&key), msg.has_fingerprint());
                Some(())
            }
            Ok(Reply::Empty) => {
                let mut w =
                    MessageWriter::new(out, msg.method(), Class::Success, msg.transaction_id());
                w.add(attr::SOFTWARE, self.config.software.as_bytes());
                Self::finish(&mut w, Some(&key), msg.has_fingerprint());
                Some(())
            }
            Err(code) => self.error(out, &from, msg, code, Some(&key), now),
        }
    }

    fn lifetime(&self, msg: &Message<'_>) -> Result<u32, u16> {
        let requested = msg.u32_attr(attr::LIFETIME).map_err(|_| 400u16)?;
        Ok(match requested {
            Some(0) => 0,
            Some(l) => l.clamp(self.config.default_lifetime, self.config.max_lifetime),
            None => self.config.default_lifetime,
        })
    }

    fn allocate(
        &mut self,
        from: FiveTuple,
        msg: &Message<'_>,
        user: &str,
        key: AuthKey,
        now: Instant,
    ) -> Result<Reply, u16> {
        if self.allocations.contains_key(&from) {
            return Err(437);
        }
        match msg.get(attr::REQUESTED_TRANSPORT) {
            None => return Err(400),
            Some(v) if v.len() != 4 => return Err(400),
            Some(v) if v[0] != 17 => return Err(442),
            Some(_) => {}
        }
        let dont_fragment = msg.get(attr::DONT_FRAGMENT).is_some();
        let even = match msg.get(attr::EVEN_PORT) {
            None => None,
            Some(v) if v.len() == 1 || v.len() == 4 => Some(v[0] & 0x80 != 0),
            Some(_) => return Err(400),
        };
        let family = msg.get(attr::REQUESTED_ADDRESS_FAMILY);
        let token = msg.get(attr::RESERVATION_TOKEN);
        if token.is_some() && (even.is_some() || family.is_some()) {
            return Err(400);
        }
        let mut ipv6 = match family {
            None => false,
            Some(v) if v.len() == 4 && v[0] == 0x01 => false,
            Some(v) if v.len() == 4 && v[0] == 0x02 => true,
            Some(v) if v.len() == 4 => return Err(440),
            Some(_) => return Err(400),
        };
        if ipv6 && !self.config.ipv6 {
            return Err(440);
        }
        let lifetime = match self.lifetime(msg)? {
            0 => self.config.default_lifetime,
            l => l,
        };
        let port = match token {
            Some(t) => {
                let t: [u8; 8] = t.try_into().map_err(|_| 400u16)?;
                let Some((addr, _)) = self.reservations.remove(&t) else {
                    self.stats.capacity_hits += 1;
                    return Err(508);
                };
                ipv6 = addr.is_ipv6();
                PortRequest::Reserved(addr)
            }
            None => match even {
                Some(reserve_next) => PortRequest::Even { reserve_next },
                None => PortRequest::Any,
            },
        };
        if self.allocations.len() >= self.config.max_allocations {
            self.stats.capacity_hits += 1;
            return Err(508);
        }
        let count = self.per_user.get(user).copied().unwrap_or(0);
        if count >= self.config.max_allocations_per_user {
            self.stats.quota_hits += 1;
            return Err(486);
        }
        *self.per_user.entry(user.to_string()).or_insert(0) += 1;
        let id = AllocationId(self.next_id);
        self.next_id += 1;
        // Until the driver opens the relay the allocation lives 30 s; if the driver
        // never answers, the timer removes it.
        let pending_expiry = now + Duration::from_secs(30);
        self.allocations.insert(
            from,
            Allocation {
                id,
                username: user.to_string(),
                relay: None,
                ipv6,
                expires: pending_expiry,
                dont_fragment,
                permissions: Vec::new(),
                channels: Vec::new(),
                bucket: self.config.bandwidth_limit.map(|r| Bucket::new(r, now)),
                allocate_tid: msg.transaction_id(),
                allocate_key: key,
                allocate_fingerprint: msg.has_fingerprint(),
                lifetime,
                reserve_next: matches!(port, PortRequest::Even { reserve_next: true }),
                reservation_token: None,
                next_wake: pending_expiry,
            },
        );
        self.by_id.insert(id, from);
        self.timers
            .push(Reverse((pending_expiry, Timer::Allocation(id))));
        self.stats.allocations_active += 1;
        self.events.push_back(Event::OpenRelay {
            id,
            ipv6,
            port,
            dont_fragment,
        });
        Ok(Reply::Pending)
    }

    /// The driver opened the relay socket for `id` at `relay`; returns the Allocate
    /// success response to send. With `PortRequest::Even { reserve_next: true }` the
    /// driver must also hold `relay.port() + 1` until a `CloseRelay` for it.
    pub fn relay_opened<'a>(
        &mut self,
        id: AllocationId,
        relay: SocketAddr,
        now: Instant,
        out: &'a mut Vec<u8>,
    ) -> Option<Transmit<'a>> {
        let Some(ft) = self.by_id.get(&id).copied() else {
            // The allocation is gone (expired while pending): the socket is not needed.
            self.events.push_back(Event::CloseRelay { relay });
            return None;
        };
        let a = self.allocations.get_mut(&ft)?;
        if a.relay.is_some() {
            return None;
        }
        a.relay = Some(relay);
        a.expires = now + Duration::from_secs(u64::from(a.lifetime));
        let key = a.allocate_key;
        let fp = a.allocate_fingerprint;
        if a.reserve_next {
            let mut token = [0u8; 8];
            if let Ok(mut mac) = <Hmac<Sha1> as Mac>::new_from_slice(&self.config.secret) {
                mac.update(&id.0.to_be_bytes());
                mac.update(b"reservation");
                token.copy_from_slice(&mac.finalize().into_bytes()[..8]);
            }
            a.reservation_token = Some(token);
            let next = SocketAddr::new(relay.ip(), relay.port().wrapping_add(1));
            let exp = now + Duration::from_secs(30);
            self.reservations.insert(token, (next, exp));
            self.timers.push(Reverse((exp, Timer::Reservation(token))));
        }
        self.by_relay.insert(relay, ft);
        self.stats.allocations_created += 1;
        self.allocate_success(&ft, &key, fp, now, out)?;
        Some(Transmit {
            destination: Destination::Client(ft),
            payload: out,
        })
    }

    /// The driver could not open a relay socket for `id`; returns the 508 response.
    pub fn relay_failed<'a>(
        &mut self,
        id: AllocationId,
        now: Instant,
        out: &'a mut Vec<u8>,
    ) -> Option<Transmit<'a>> {
        let ft = self.by_id.get(&id).copied()?;
        let a = self.allocations.get(&ft)?;
        let (tid, key, fp) = (a.allocate_tid, a.allocate_key, a.allocate_fingerprint);
        self.remove_allocation(&ft);
        self.stats.capacity_hits += 1;
        let _ = now;
        let mut w = MessageWriter::new(out, Method::Allocate, Class::Error, tid);
        w.add_error_code(508, reason(508));
        w.add(attr::SOFTWARE, self.config.software.as_bytes());
        Self::finish(&mut w, Some(&key), fp);
        Some(Transmit {
            destination: Destination::Client(ft),
            payload: out,
        })
    }

    fn allocate_success(
        &self,
        ft: &FiveTuple,
        key: &AuthKey,
        fp: bool,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Option<()> {
        let a = self.allocations.get(ft)?;
        let relay = a.relay?;
        let advertised = match relay.ip() {
            IpAddr::V4(ip) => IpAddr::V4(self.config.advertised_ipv4.unwrap_or(ip)),
            IpAddr::V6(ip) => IpAddr::V6(self.config.advertised_ipv6.unwrap_or(ip)),
        };
        let remaining = a.expires.saturating_duration_since(now).as_secs() as u32;
        let mut w = MessageWriter::new(out, Method::Allocate, Class::Success, a.allocate_tid);
        w.add_xor_address(
            attr::XOR_RELAYED_ADDRESS,
            SocketAddr::new(advertised, relay.port()),
        );
        w.add_u32(attr::LIFETIME, remaining);
        w.add_xor_address(attr::XOR_MAPPED_ADDRESS, ft.client);
        if let Some(t) = a.reservation_token {
            w.add(attr::RESERVATION_TOKEN, &t);
        }
        w.add(attr::SOFTWARE, self.config.software.as_bytes());
        Self::finish(&mut w, Some(key), fp);
        Some(())
    }

    fn refresh(&mut self, from: FiveTuple, msg: &Message<'_>, now: Instant) -> Result<Reply, u16> {
        let Some(a) = self.allocations.get_mut(&from) else {
            return Err(437);
        };
        if a.relay.is_none() {
            return Err(437);
        }
        if let Some(v) = msg.get(attr::REQUESTED_ADDRESS_FAMILY) {
            let want_v6 = v.first() == Some(&0x02);
            if want_v6 != a.ipv6 {
                return Err(443);
            }
        }
        let requested = msg.u32_attr(attr::LIFETIME).map_err(|_| 400u16)?;
        let lifetime = match requested {
            Some(0) => 0,
            Some(l) => l.clamp(self.config.default_lifetime, self.config.max_lifetime),
            None => self.config.default_lifetime,
        };
        if lifetime == 0 {
            self.remove_allocation(&from);
            return Ok(Reply::Lifetime(0));
        }
        a.expires = now + Duration::from_secs(u64::from(lifetime));
        Ok(Reply::Lifetime(lifetime))
    }

    /// Checks one peer for CreatePermission/ChannelBind: family, then policy.
    fn check_peer(
        &mut self,
        from: &FiveTuple,
        peer: SocketAddr,
        server_ip: IpAddr,
    ) -> Result<(), u16> {
        let Some(a) = self.allocations.get(from) else {
            return Err(437);
        };
        if peer.is_ipv6() != a.ipv6 {
            return Err(443);
        }
        let own = a.relay.map(|r| r.ip());
        let ip = peer.ip().to_canonical();
        if !self.config.policy.permits(peer.ip())
            || (!self.config.policy.allow.iter().any(|c| c.contains(ip))
                && (Some(ip) == own.map(|o| o.to_canonical()) || ip == server_ip.to_canonical()))
        {
            self.stats.denied_peers += 1;
            return Err(403);
        }
        Ok(())
    }

    fn create_permission(
        &mut self,
        from: FiveTuple,
        msg: &Message<'_>,
        now: Instant,
    ) -> Result<Reply, u16> {
        match self.allocations.get(&from) {
            Some(a) if a.relay.is_some() => {}
            _ => return Err(437),
        }
        let mut n = 0;
        for peer in msg.xor_peer_addresses() {
            let peer = peer.map_err(|_| 400u16)?;
            self.check_peer(&from, peer, from.server.ip())?;
            n += 1;
        }
        if n == 0 {
            return Err(400);
        }
        let expires = now + self.config.permission_lifetime;
        let max = self.config.max_permissions_per_allocation;
        let Some(a) = self.allocations.get_mut(&from) else {
            return Err(437);
        };
        for peer in msg.xor_peer_addresses().flatten() {
            if a.permissions.len() >= max && !a.permissions.iter().any(|p| p.ip == peer.ip()) {
                self.stats.capacity_hits += 1;
                return Err(508);
            }
            a.permit(peer.ip(), expires);
            self.stats.permissions_created += 1;
        }
        self.schedule(&from, expires);
        Ok(Reply::Empty)
    }

    fn channel_bind(
        &mut self,
        from: FiveTuple,
        msg: &Message<'_>,
        now: Instant,
    ) -> Result<Reply, u16> {
        match self.allocations.get(&from) {
            Some(a) if a.relay.is_some() => {}
            _ => return Err(437),
        }
        let number = match msg.get(attr::CHANNEL_NUMBER) {
            Some(v) if v.len() == 4 => u16::from_be_bytes([v[0], v[1]]),
            _ => return Err(400),
        };
        if !(CHANNEL_MIN..=CHANNEL_MAX).contains(&number) {
            return Err(400);
        }
        let peer = match msg.xor_address(attr::XOR_PEER_ADDRESS) {
            Ok(Some(p)) => p,
            _ => return Err(400),
        };
        self.check_peer(&from, peer, from.server.ip())?;
        let channel_exp = now + self.config.channel_lifetime;
        let perm_exp = now + self.config.permission_lifetime;
        let max = self.config.max_permissions_per_allocation;
        let Some(a) = self.allocations.get_mut(&from) else {
            return Err(437);
        };
        // §12: a number is bound to one peer and a peer to one number.
        if a.channels
            .iter()
            .any(|c| (c.number == number) != (c.peer == peer))
        {
            return Err(400);
        }
        match a.channels.iter_mut().find(|c| c.number == number) {
            Some(c) => c.expires = channel_exp,
            None => {
                if a.channels.len() >= max {
                    self.stats.capacity_hits += 1;
                    return Err(508);
                }
                a.channels.push(Channel {
                    number,
                    peer,
                    expires: channel_exp,
                });
            }
        }
        a.permit(peer.ip(), perm_exp);
        self.stats.channels_bound += 1;
        self.stats.permissions_created += 1;
        self.schedule(&from, perm_exp);
        Ok(Reply::Empty)
    }
}

enum Reply {
    /// The response comes later (Allocate waits for the relay socket).
    Pending,
    /// Success with a LIFETIME attribute (Refresh).
    Lifetime(u32),
    /// Plain success.
    Empty,
}
