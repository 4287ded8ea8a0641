//! The TURN service (RFC 8656): the thin tokio driver around the sans-IO
//! [`relay::server::TurnServer`].
//!
//! One task owns the server, the UDP listener and every relay socket's send side, so
//! no allocation state is shared or locked. TCP connections are tasks that frame
//! STUN/ChannelData ([`relay::stun::stream_frame_len`]) and hand frames over a bounded
//! channel; each relay socket has a small reader task that hands `(relay, peer, bytes)`
//! over the same channel (see `docs/decisions.md` for why tasks, not a poller of our
//! own). Relay sockets come from the RTP port range on the listener's address and are
//! closed when the core says `CloseRelay`.
//!
//! Credentials: SIP accounts (their stored MD5 HA1 is the long-term key for realm =
//! domain) and, if configured, a coturn-style REST shared secret.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use relay::policy::{Cidr, PeerPolicy};
use relay::server::{
    Config as CoreConfig, Credentials, Destination, Event, FiveTuple, LongTermKey, PortRequest,
    RestSecret, Stats, Transmit, Transport, TurnServer,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::config::{Config, PortRange};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::net::{bind_udp_tcp, io, outward_ip};
use crate::store::Store;

/// Largest datagram read from a listener or relay socket.
const MAX_DATAGRAM: usize = 65_536;
/// Depth of the channel from connection and relay reader tasks to the owner task.
const INBOUND_DEPTH: usize = 8192;
/// How often the metrics are refreshed from the core's counters (and the longest the
/// owner task sleeps).
const METRICS_EVERY: Duration = Duration::from_secs(1);

/// The long-term keys the node knows: SIP accounts and, optionally, REST credentials.
pub struct NodeCredentials {
    store: Store,
    realm: String,
    rest: Option<RestSecret>,
}

impl NodeCredentials {
    /// Keys from the SIP accounts in `store` for `realm`, and from `rest_secret` if set.
    pub fn new(store: Store, realm: &str, rest_secret: Option<&str>) -> Self {
        NodeCredentials {
            store,
            realm: realm.to_string(),
            rest: rest_secret.map(|s| RestSecret {
                secret: s.as_bytes().to_vec(),
            }),
        }
    }
}

impl Credentials for NodeCredentials {
    fn long_term_key(&self, username: &str, realm: &str, unix_time: u64) -> Option<LongTermKey> {
        if realm != self.realm {
            return None;
        }
        // REST usernames are `EXPIRY:NAME`, never a valid account name.
        if username.contains(':') {
            return self
                .rest
                .as_ref()
                .and_then(|r| r.long_term_key(username, realm, unix_time));
        }
        match self.store.account(username) {
            Ok(Some(a)) => LongTermKey::from_ha1_hex(&a.ha1_md5),
            Ok(None) => None,
            Err(e) => {
                tracing::debug!("TURN user {username:?}: {e}");
                None
            }
        }
    }
}

/// Builds the peer policy: the built-in deny list, the node's own addresses, and the
/// operator's `--allow-peer` networks (refused with a clear message if malformed).
pub fn peer_policy(allow_peer: &[String], own: Vec<IpAddr>) -> Result<PeerPolicy> {
    let allow = allow_peer
        .iter()
        .map(|s| {
            s.parse::<Cidr>().map_err(|_| {
                Error::Config(format!(
                    "--allow-peer {s:?} is not a network: write ADDRESS/PREFIX, e.g. 127.0.0.0/8"
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(PeerPolicy {
        allow,
        deny: Vec::new(),
        own,
    })
}

/// A running TURN service.
pub struct TurnService {
    /// The UDP listener's address.
    pub udp: SocketAddr,
    /// The TCP listener's address (same port as UDP).
    pub tcp: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
    acceptor: JoinHandle<()>,
}

impl TurnService {
    /// Stops the service: the listeners and every relay socket are closed.
    pub async fn shutdown(self) {
        self.acceptor.abort();
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Binds the TURN listeners on `cfg.turn`, prints `turn udp ADDR` and `turn tcp ADDR`,
/// and starts the service; the counters go into `metrics.relay`.
pub async fn start(cfg: &Config, metrics: Arc<Metrics>) -> Result<TurnService> {
    let (udp, tcp) = bind_udp_tcp(cfg.turn, "TURN").await?;
    let local = udp
        .local_addr()
        .map_err(io("reading the TURN UDP address"))?;
    let domain = cfg.domain();
    let advertised = cfg.advertise.unwrap_or_else(|| outward_ip(local.ip()));
    let mut own = vec![advertised];
    if !local.ip().is_unspecified() {
        own.push(local.ip());
    }
    let policy = peer_policy(&cfg.allow_peer, own)?;
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret)
        .map_err(|e| Error::Config(format!("no randomness for TURN nonces: {e}")))?;
    let r = &cfg.relay;
    let core = CoreConfig {
        realm: domain.clone(),
        software: format!("supernode {}", env!("CARGO_PKG_VERSION")),
        secret,
        max_lifetime: r.max_lifetime,
        max_allocations: r.max_allocations,
        max_allocations_per_user: r.max_allocations_per_user,
        max_permissions_per_allocation: r.max_permissions_per_allocation,
        bandwidth_limit: (r.bandwidth_limit > 0).then_some(r.bandwidth_limit),
        ipv6: local.ip().is_ipv6(),
        policy,
        advertised_ipv4: match advertised {
            IpAddr::V4(a) if a != Ipv4Addr::UNSPECIFIED => Some(a),
            _ => None,
        },
        advertised_ipv6: match advertised {
            IpAddr::V6(a) if a != Ipv6Addr::UNSPECIFIED => Some(a),
            _ => None,
        },
        ..CoreConfig::default()
    };
    let credentials =
        NodeCredentials::new(Store::open(&cfg.data)?, &domain, cfg.turn_secret.as_deref());
    let unix = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let server = TurnServer::new(core, credentials, Instant::now(), unix);
    println!("turn udp {local}");
    println!("turn tcp {local}");

    let (in_tx, in_rx) = mpsc::channel(INBOUND_DEPTH);
    let acceptor = tokio::spawn(accept_loop(tcp, in_tx.clone()));
    let (stop, stop_rx) = oneshot::channel();
    let driver = Driver {
        server,
        udp,
        local,
        conns: HashMap::new(),
        relays: HashMap::new(),
        reserved: HashMap::new(),
        ports: Ports::new(local.ip(), cfg.rtp_ports),
        inbound: in_tx,
        out: Vec::with_capacity(1500),
        metrics,
    };
    let task = tokio::spawn(driver.run(in_rx, stop_rx));
    Ok(TurnService {
        udp: local,
        tcp: local,
        stop,
        task,
        acceptor,
    })
}

/// What connection and relay reader tasks tell the owner task.
enum Inbound {
    /// A datagram a peer sent to a relay socket.
    Relay {
        relay: SocketAddr,
        peer: SocketAddr,
        data: Bytes,
    },
    /// One STUN or ChannelData frame from a TCP client.
    Frame { client: SocketAddr, data: Bytes },
    /// A TCP client connected; frames for it go to `tx`.
    Opened {
        client: SocketAddr,
        tx: mpsc::Sender<Bytes>,
    },
    /// A TCP client is gone.
    Closed { client: SocketAddr },
}

/// A relay socket: the owner sends on it, its reader task receives.
struct RelaySocket {
    socket: Arc<UdpSocket>,
    reader: JoinHandle<()>,
}

impl Drop for RelaySocket {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Picks relay ports from the RTP range, searching on from where the last search
/// ended so a port is not reused at once.
struct Ports {
    ip: IpAddr,
    range: PortRange,
    next: u16,
}

impl Ports {
    fn new(ip: IpAddr, range: PortRange) -> Self {
        Ports {
            ip,
            range,
            next: range.low,
        }
    }

    /// Binds a port on `ip` (even if `even`; with `pair` also port+1, returned second).
    fn bind(
        &mut self,
        ip: IpAddr,
        even: bool,
        pair: bool,
    ) -> std::io::Result<(std::net::UdpSocket, Option<std::net::UdpSocket>)> {
        let (low, high) = (u32::from(self.range.low), u32::from(self.range.high));
        let span = high - low + 1;
        let start = u32::from(self.next).clamp(low, high) - low;
        for i in 0..span {
            let port = low + (start + i) % span;
            if (even && port % 2 != 0) || (pair && port + 1 > high) {
                continue;
            }
            let Ok(first) = std::net::UdpSocket::bind((ip, port as u16)) else {
                continue;
            };
            let second = if pair {
                match std::net::UdpSocket::bind((ip, (port + 1) as u16)) {
                    Ok(s) => Some(s),
                    Err(_) => continue,
                }
            } else {
                None
            };
            self.next = (port + if pair { 2 } else { 1 }).min(high) as u16;
            return Ok((first, second));
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!(
                "no free relay port in {}-{}",
                self.range.low, self.range.high
            ),
        ))
    }
}

/// The owner task's state.
struct Driver {
    server: TurnServer<NodeCredentials>,
    udp: UdpSocket,
    local: SocketAddr,
    conns: HashMap<SocketAddr, mpsc::Sender<Bytes>>,
    relays: HashMap<SocketAddr, RelaySocket>,
    /// Ports held for a later Allocate with a RESERVATION-TOKEN.
    reserved: HashMap<SocketAddr, std::net::UdpSocket>,
    ports: Ports,
    inbound: mpsc::Sender<Inbound>,
    out: Vec<u8>,
    metrics: Arc<Metrics>,
}

/// Sends one transmit of the core: to a client over UDP or its TCP connection, or to a
/// peer from a relay socket. Sending is best effort, as UDP is.
async fn deliver(
    udp: &UdpSocket,
    conns: &HashMap<SocketAddr, mpsc::Sender<Bytes>>,
    relays: &HashMap<SocketAddr, RelaySocket>,
    t: Transmit<'_>,
) {
    match t.destination {
        Destination::Client(ft) => match ft.transport {
            Transport::Udp => {
                if udp.try_send_to(t.payload, ft.client).is_err() {
                    let _ = udp.send_to(t.payload, ft.client).await;
                }
            }
            Transport::Tcp => {
                if let Some(tx) = conns.get(&ft.client) {
                    let _ = tx.try_send(Bytes::copy_from_slice(t.payload));
                }
            }
        },
        Destination::Peer { relay, peer, .. } => {
            if let Some(r) = relays.get(&relay) {
                if r.socket.try_send_to(t.payload, peer).is_err() {
                    let _ = r.socket.send_to(t.payload, peer).await;
                }
            }
        }
    }
}

impl Driver {
    async fn run(mut self, mut inbound: mpsc::Receiver<Inbound>, mut stop: oneshot::Receiver<()>) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut next_metrics = Instant::now() + METRICS_EVERY;
        loop {
            let wake = self
                .server
                .poll_timeout()
                .map_or(next_metrics, |t| t.min(next_metrics));
            tokio::select! {
                r = self.udp.recv_from(&mut buf) => {
                    if let Ok((n, from)) = r {
                        self.client_datagram(Transport::Udp, from, &buf[..n]).await;
                    }
                    // Drain what else is queued before going back to select.
                    for _ in 0..64 {
                        match self.udp.try_recv_from(&mut buf) {
                            Ok((n, from)) => self.client_datagram(Transport::Udp, from, &buf[..n]).await,
                            Err(_) => break,
                        }
                    }
                }
                Some(msg) = inbound.recv() => {
                    self.inbound(msg).await;
                    for _ in 0..64 {
                        match inbound.try_recv() {
                            Ok(msg) => self.inbound(msg).await,
                            Err(_) => break,
                        }
                    }
                }
                _ = tokio::time::sleep_until(wake.into()) => {
                    let now = Instant::now();
                    self.server.handle_timeout(now);
                    self.events(now).await;
                    if now >= next_metrics {
                        next_metrics = now + METRICS_EVERY;
                        self.publish();
                    }
                }
                _ = &mut stop => break,
            }
        }
        self.publish();
        self.metrics.relay.allocations.set(0);
    }

    async fn inbound(&mut self, msg: Inbound) {
        match msg {
            Inbound::Relay { relay, peer, data } => {
                let now = Instant::now();
                let t = self
                    .server
                    .handle_relay_datagram(relay, peer, &data, now, &mut self.out);
                if let Some(t) = t {
                    deliver(&self.udp, &self.conns, &self.relays, t).await;
                }
            }
            Inbound::Frame { client, data } => {
                self.client_datagram(Transport::Tcp, client, &data).await;
            }
            Inbound::Opened { client, tx } => {
                self.conns.insert(client, tx);
            }
            Inbound::Closed { client } => {
                self.conns.remove(&client);
            }
        }
    }

    async fn client_datagram(&mut self, transport: Transport, client: SocketAddr, bytes: &[u8]) {
        let now = Instant::now();
        let from = FiveTuple {
            transport,
            client,
            server: self.local,
        };
        if let Some(t) = self.server.handle_datagram(from, bytes, now, &mut self.out) {
            deliver(&self.udp, &self.conns, &self.relays, t).await;
        }
        self.events(now).await;
    }

    /// Carries out what the core asked for: open or close relay sockets.
    async fn events(&mut self, now: Instant) {
        while let Some(event) = self.server.poll_event() {
            match event {
                Event::OpenRelay {
                    id,
                    ipv6,
                    port,
                    dont_fragment,
                } => {
                    let t = match self.open_relay(ipv6, port, dont_fragment) {
                        Ok(addr) => self.server.relay_opened(id, addr, now, &mut self.out),
                        Err(e) => {
                            tracing::warn!("TURN: opening a relay socket: {e}");
                            self.server.relay_failed(id, now, &mut self.out)
                        }
                    };
                    if let Some(t) = t {
                        deliver(&self.udp, &self.conns, &self.relays, t).await;
                    }
                }
                Event::CloseRelay { relay } => {
                    self.relays.remove(&relay);
                    self.reserved.remove(&relay);
                }
            }
        }
    }

    /// Binds a relay socket as asked and starts its reader; returns its address.
    fn open_relay(
        &mut self,
        ipv6: bool,
        port: PortRequest,
        dont_fragment: bool,
    ) -> std::io::Result<SocketAddr> {
        let ip = match (self.ports.ip, ipv6) {
            (IpAddr::V4(_), false) | (IpAddr::V6(_), true) => self.ports.ip,
            (IpAddr::V4(a), true) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            (IpAddr::V6(a), false) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            _ => {
                return Err(std::io::Error::other(
                    "the relay address family differs from the listener's",
                ))
            }
        };
        let socket = match port {
            PortRequest::Any => self.ports.bind(ip, false, false)?.0,
            PortRequest::Even { reserve_next } => {
                let (first, second) = self.ports.bind(ip, true, reserve_next)?;
                if let Some(s) = second {
                    self.reserved.insert(s.local_addr()?, s);
                }
                first
            }
            PortRequest::Reserved(addr) => self
                .reserved
                .remove(&addr)
                .ok_or_else(|| std::io::Error::other("the reserved port is gone"))?,
        };
        if dont_fragment {
            set_dont_fragment(&socket)?;
        }
        socket.set_nonblocking(true)?;
        let socket = Arc::new(UdpSocket::from_std(socket)?);
        let addr = socket.local_addr()?;
        let reader = tokio::spawn(read_relay(socket.clone(), addr, self.inbound.clone()));
        self.relays.insert(addr, RelaySocket { socket, reader });
        Ok(addr)
    }

    /// Copies the core's counters into the shared metrics.
    fn publish(&self) {
        let s: &Stats = self.server.stats();
        let m = &self.metrics.relay;
        m.allocations.set(s.allocations_active);
        m.allocations_created.set(s.allocations_created);
        m.permissions.set(s.permissions_created);
        m.channels.set(s.channels_bound);
        m.packets_to_peer.set(s.packets_to_peer);
        m.bytes_to_peer.set(s.bytes_to_peer);
        m.packets_to_client.set(s.packets_to_client);
        m.bytes_to_client.set(s.bytes_to_client);
        m.denied_peers.set(s.denied_peers);
        m.auth_failures.set(s.auth_failures);
        m.stale_nonces.set(s.stale_nonces);
        m.quota_hits.set(s.quota_hits);
        m.capacity_hits.set(s.capacity_hits);
        m.malformed.set(s.malformed);
        m.dropped_no_permission.set(s.dropped_no_permission);
        m.dropped_bandwidth.set(s.dropped_bandwidth);
        m.binding_requests.set(s.binding_requests);
    }
}

/// Sets DF on everything the socket sends (`IP_PMTUDISC_DO`), as DONT-FRAGMENT asks.
fn set_dont_fragment(socket: &std::net::UdpSocket) -> std::io::Result<()> {
    use rustix::net::sockopt;
    if socket.local_addr()?.is_ipv4() {
        sockopt::set_ip_mtu_discover(socket, sockopt::Ipv4PathMtuDiscovery::DO)?;
    } else {
        sockopt::set_ipv6_mtu_discover(socket, sockopt::Ipv6PathMtuDiscovery::DO)?;
    }
    Ok(())
}

/// Reads one relay socket until the owner drops it (aborting this task).
async fn read_relay(socket: Arc<UdpSocket>, relay: SocketAddr, inbound: mpsc::Sender<Inbound>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((n, peer)) => {
                let data = Bytes::copy_from_slice(&buf[..n]);
                if inbound
                    .send(Inbound::Relay { relay, peer, data })
                    .await
                    .is_err()
                {
                    break;
                }
            }
            // ICMP errors surface here on some systems; the socket stays usable.
            Err(_) => tokio::task::yield_now().await,
        }
    }
}

async fn accept_loop(listener: TcpListener, inbound: mpsc::Sender<Inbound>) {
    loop {
        let Ok((stream, client)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(stream, client, inbound.clone()));
    }
}

/// One TCP client: frames STUN messages and ChannelData and writes what the owner
/// sends back.
async fn connection(stream: TcpStream, client: SocketAddr, inbound: mpsc::Sender<Inbound>) {
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Bytes>(1024);
    if inbound.send(Inbound::Opened { client, tx }).await.is_err() {
        return;
    }
    let writer = tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if wr.write_all(&b).await.is_err() {
                break;
            }
        }
    });
    let mut buf = BytesMut::with_capacity(4096);
    'read: loop {
        match rd.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        loop {
            match relay::stun::stream_frame_len(&buf) {
                Ok(Some(n)) if n <= buf.len() => {
                    let data = buf.split_to(n).freeze();
                    if inbound.send(Inbound::Frame { client, data }).await.is_err() {
                        break 'read;
                    }
                }
                Ok(_) => break,
                // A stream whose framing is lost cannot be resynchronised: close it.
                Err(_) => break 'read,
            }
        }
    }
    let _ = inbound.send(Inbound::Closed { client }).await;
    writer.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_allow_peer_is_refused_with_the_value() {
        let e = peer_policy(&["127.0.0.0/8".into(), "nonsense".into()], vec![])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("nonsense"), "{e}");
        let p = peer_policy(&["127.0.0.0/8".into()], vec![]).unwrap();
        assert!(p.permits(IpAddr::from([127, 0, 0, 1])));
        assert!(!peer_policy(&[], vec![])
            .unwrap()
            .permits(IpAddr::from([127, 0, 0, 1])));
    }

    #[test]
    fn ports_bind_even_pairs_inside_the_range() {
        let range = PortRange {
            low: 43101,
            high: 43121,
        };
        let mut ports = Ports::new(IpAddr::from([127, 0, 0, 1]), range);
        let (a, b) = ports.bind(ports.ip, true, true).unwrap();
        let pa = a.local_addr().unwrap().port();
        let pb = b.unwrap().local_addr().unwrap().port();
        assert_eq!(pa % 2, 0);
        assert_eq!(pb, pa + 1);
        let (c, _) = ports.bind(ports.ip, false, false).unwrap();
        let pc = c.local_addr().unwrap().port();
        assert!((43101..=43121).contains(&pc) && pc != pa && pc != pb);
    }

    #[test]
    fn dont_fragment_sets_pmtudisc_do() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        set_dont_fragment(&s).unwrap();
        assert_eq!(
            rustix::net::sockopt::ip_mtu_discover(&s).unwrap(),
            rustix::net::sockopt::Ipv4PathMtuDiscovery::DO
        );
    }
}
