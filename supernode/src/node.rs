//! The composition root: binds the listeners, starts the mixer and the SIP service,
//! prints the bound addresses (one line each, so scripts never guess), and shuts down
//! cleanly on SIGINT or SIGTERM.
//!
//! The SIP driver is deliberately thin: one task owns the [`SipCore`] and the UDP
//! socket, TCP connections are tasks that frame messages and hand them over a channel,
//! and a persistence thread writes registrations behind. The same task executes the
//! conference's mixer commands (binding one RTP socket per conference dialog) and feeds
//! the mixer's events back on its 10 ms ticker.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

use crate::config::{Config, DigestAlgorithm, PortRange, SipAuth};
use crate::error::Result;
use crate::metrics::Metrics;
use crate::net::{bind_udp_tcp, io, outward_ip};
use crate::sip::conference::{Conference, ConferenceConfig, DialogId, MixerCommand};
use crate::sip::core::SipCore;
use crate::sip::digest::{Algorithm, NonceConfig, Nonces};
use crate::sip::flood::{FloodGuard, Verdict};
use crate::sip::intake;
use crate::sip::location::{Binding, LocalLocation, PendingWrite};
use crate::sip::proxy::{Proxy, ProxyConfig, DEFAULT_NO_ANSWER};
use crate::sip::registrar::{Accounts, Registrar};
use crate::sip::transaction::{self, Flow, TransactionLayer, Transport};
use crate::store::{Account, RoomRecord, Store};

impl Accounts for Store {
    fn account(&self, name: &str) -> Option<Account> {
        match Store::account(self, name) {
            Ok(a) => a,
            Err(e) => {
                tracing::error!("reading account {name:?}: {e}");
                None
            }
        }
    }

    fn room(&self, name: &str) -> Option<RoomRecord> {
        match Store::room(self, name) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("reading room {name:?}: {e}");
                None
            }
        }
    }
}

/// The RTP sockets of the conference dialogs: one per dialog, bound from the RTP port
/// range the first time a leg of the dialog is added and kept until the dialog's
/// `ReleaseMedia`, so a leg moved between mixer rooms keeps the port its SDP announced.
struct Media {
    ip: IpAddr,
    range: PortRange,
    /// Where the next search for a free port starts (even ports only, RFC 3550 §11).
    next: u16,
    sockets: HashMap<DialogId, std::net::UdpSocket>,
}

impl Media {
    fn new(ip: IpAddr, range: PortRange) -> Self {
        Media {
            ip,
            range,
            next: range.low,
            sockets: HashMap::new(),
        }
    }

    /// The dialog's socket, bound on first use: the range is searched from where the
    /// last search ended, so ports are not reused at once.
    fn socket(&mut self, dialog: DialogId) -> std::io::Result<&std::net::UdpSocket> {
        if !self.sockets.contains_key(&dialog) {
            let socket = self.bind()?;
            self.sockets.insert(dialog, socket);
        }
        Ok(&self.sockets[&dialog])
    }

    fn bind(&mut self) -> std::io::Result<std::net::UdpSocket> {
        let low = u32::from(self.range.low.max(1).next_multiple_of(2));
        let high = u32::from(self.range.high);
        if low > high {
            return Err(std::io::Error::other(
                "the RTP port range holds no even port",
            ));
        }
        let slots = (high - low) / 2 + 1;
        let start = (u32::from(self.next).clamp(low, high) - low) / 2;
        for i in 0..slots {
            let port = (low + ((start + i) % slots) * 2) as u16;
            if let Ok(socket) = std::net::UdpSocket::bind((self.ip, port)) {
                self.next = port.saturating_add(2);
                return Ok(socket);
            }
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("no free RTP port in {}-{}", self.range.low, self.range.high),
        ))
    }

    fn release(&mut self, dialog: DialogId) {
        self.sockets.remove(&dialog);
    }
}

/// Executes the conference's mixer commands until none is left; creating a room and
/// adding a leg are reported back at once, which may queue more.
fn run_mixer(core: &mut SipCore, mixer: &mixer::Mixer, media: &mut Media) {
    while let Some(cmd) = core.poll_mixer_command() {
        let now = Instant::now();
        match cmd {
            MixerCommand::CreateRoom { token, config } => {
                let result = mixer.create_room(config).map_err(|e| e.to_string());
                core.room_created(token, result, now);
            }
            MixerCommand::AddLeg {
                dialog,
                room,
                config,
            } => {
                // The mixer gets a clone: the socket stays open here until ReleaseMedia.
                let result = media
                    .socket(dialog)
                    .and_then(|s| s.try_clone())
                    .map_err(|e| e.to_string())
                    .and_then(|s| mixer.add_leg(room, config, s).map_err(|e| e.to_string()));
                if let Err(e) = &result {
                    tracing::warn!("adding a conference leg: {e}");
                }
                core.leg_added(dialog, result, now);
            }
            MixerCommand::RemoveLeg { room, leg } => {
                if let Err(e) = mixer.remove_leg(room, leg) {
                    tracing::debug!("removing leg {leg:?}: {e}");
                }
            }
            MixerCommand::SetHeld { room, leg, held } => {
                if let Err(e) = mixer.set_held(room, leg, held) {
                    tracing::debug!("holding leg {leg:?}: {e}");
                }
            }
            MixerCommand::DestroyRoom { room } => {
                if let Err(e) = mixer.destroy_room(room) {
                    tracing::debug!("destroying room {room:?}: {e}");
                }
            }
            MixerCommand::ReleaseMedia { dialog } => media.release(dialog),
        }
    }
}

/// Feeds what the mixer reported (DTMF, RTP timeouts) to the core, without blocking.
fn drain_mixer_events(core: &mut SipCore, mixer: &mixer::Mixer, live: &mut crate::admin::Live) {
    // Bounded, so a flood of events cannot starve SIP; the rest waits for the next tick.
    for _ in 0..1024 {
        match mixer.events().try_recv() {
            Ok(event) => {
                live.observe(&event);
                core.handle_mixer_event(&event, Instant::now());
            }
            Err(_) => break,
        }
    }
}

/// Sends everything the core queued; a transaction whose message could not go out (its
/// TCP connection is gone) is told so, which may queue more (the proxy's 480).
async fn transmit(
    core: &mut SipCore,
    udp: &UdpSocket,
    connections: &HashMap<u64, mpsc::Sender<Bytes>>,
    store: &Store,
) {
    let mut failed = Vec::new();
    loop {
        while let Some(t) = core.poll_transmit() {
            let sent = match t.flow.transport {
                Transport::Udp => {
                    udp.try_send_to(&t.message, t.flow.remote).is_ok()
                        || udp.send_to(&t.message, t.flow.remote).await.is_ok()
                }
                Transport::Tcp | Transport::Tls => t
                    .flow
                    .connection
                    .and_then(|id| connections.get(&id))
                    .is_some_and(|tx| tx.try_send(t.message).is_ok()),
            };
            if let (false, Some(key)) = (sent, t.key) {
                failed.push(key);
            }
        }
        if failed.is_empty() {
            break;
        }
        for key in failed.drain(..) {
            core.handle_transport_error(key, Instant::now(), store);
        }
    }
}

/// What connection tasks tell the SIP task.
enum Inbound {
    Message(Bytes, Flow),
    Opened(u64, mpsc::Sender<Bytes>),
    Closed(u64),
}

/// How long a stopping node waits for the answers to the BYEs of its conference calls.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(1);

/// Runs the node until SIGINT or SIGTERM.
pub async fn run(cfg: Config, store: Store) -> Result<()> {
    // Before anything is printed: a script that reads our addresses may signal at once.
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(io("installing the SIGTERM handler"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(io("installing the SIGINT handler"))?;
    let metrics = Arc::new(Metrics::default());
    let mixer = mixer::Mixer::start(mixer::MixerConfig {
        shards: cfg.mixer_threads,
        ..Default::default()
    })?;
    let (udp, tcp) = bind_udp_tcp(cfg.sip, "SIP").await?;
    let local = udp.local_addr().map_err(io("reading the SIP address"))?;
    let domain = cfg.domain();
    println!("sip udp {local}");
    println!("sip tcp {local}");
    println!("domain {domain}");
    println!(
        "mixer {} threads, simd {}",
        mixer.shards(),
        mixer::simd::active_isa().name()
    );
    // The TURN relay: its own task owning its sockets; prints `turn udp/tcp ADDR`.
    let turn = crate::turn::start(&cfg, metrics.clone()).await?;
    let admin = crate::admin::serve(
        &cfg,
        crate::admin::AdminContext {
            domain: domain.clone(),
            listeners: vec![
                web_admin::Listener {
                    service: "sip".into(),
                    transport: "udp".into(),
                    addr: local.to_string(),
                },
                web_admin::Listener {
                    service: "sip".into(),
                    transport: "tcp".into(),
                    addr: local.to_string(),
                },
                web_admin::Listener {
                    service: "turn".into(),
                    transport: "udp".into(),
                    addr: turn.udp.to_string(),
                },
                web_admin::Listener {
                    service: "turn".into(),
                    transport: "tcp".into(),
                    addr: turn.tcp.to_string(),
                },
            ],
            metrics: metrics.clone(),
            mixer_shards: mixer.shards(),
            relay: crate::admin::RelayState::Up,
            turn_secret: cfg.turn_secret.clone().map(String::into_bytes),
            turn_uris: vec![
                format!("turn:{}?transport=udp", turn.udp),
                format!("turn:{}?transport=tcp", turn.tcp),
            ],
        },
    )
    .await?;
    let (mut live, mut admin_rx) = (admin.live, admin.commands);
    println!("p2p not served yet: the overlay comes with its issue");
    if cfg.sip_auth == SipAuth::None {
        println!("sip auth none: every REGISTER is accepted (benchmarks only)");
    }
    use std::io::Write as _;
    let _ = std::io::stdout().flush();

    // The address written into Via and Record-Route: one others can send to, so never
    // the unspecified address a wildcard bind reports.
    let advertised = SocketAddr::new(
        cfg.advertise.unwrap_or_else(|| outward_ip(local.ip())),
        local.port(),
    );
    let mut aliases = vec![local.ip().to_string()];
    if let Some(ip) = cfg.advertise {
        aliases.push(ip.to_string());
    }
    if !aliases.contains(&advertised.ip().to_string()) {
        aliases.push(advertised.ip().to_string());
    }
    if local.ip().is_unspecified() || local.ip().is_loopback() {
        aliases.extend(["127.0.0.1".to_string(), "localhost".to_string()]);
    }
    let now = Instant::now();
    let mut location = LocalLocation::new(now, SystemTime::now());
    let unix_now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let mut restored = 0;
    for b in store.live_bindings(unix_now)? {
        let Ok(remote) = b.remote.parse() else {
            continue;
        };
        let transport = match b.transport.as_str() {
            "tcp" => Transport::Tcp,
            "tls" => Transport::Tls,
            _ => Transport::Udp,
        };
        location.restore(Binding {
            expires: location.instant_of(b.expires_unix),
            aor: b.aor,
            contact: b.contact,
            q: b.q,
            call_id: b.call_id,
            cseq: b.cseq,
            flow: Flow {
                transport,
                remote,
                connection: None,
            },
            instance: b.instance,
        });
        restored += 1;
    }
    if restored > 0 {
        println!("restored {restored} registrations");
    }
    let registrar = Registrar::new(
        cfg.registrar.clone(),
        &domain,
        aliases,
        cfg.sip_auth == SipAuth::Digest,
        Nonces::with_random_secret(NonceConfig::default(), now),
        location,
    );
    let proxy = Proxy::new(
        ProxyConfig {
            address: advertised,
            authenticate: cfg.sip_auth == SipAuth::Digest,
            digest_algorithms: cfg
                .registrar
                .digest_algorithms
                .iter()
                .map(|a| match a {
                    DigestAlgorithm::Sha256 => Algorithm::Sha256,
                    DigestAlgorithm::Md5 => Algorithm::Md5,
                })
                .collect(),
            no_answer: DEFAULT_NO_ANSWER,
        },
        Nonces::with_random_secret(NonceConfig::default(), now),
        metrics.clone(),
    );
    let conference = Conference::new(ConferenceConfig::new(advertised, advertised.ip()));
    let mut media = Media::new(local.ip(), cfg.rtp_ports);
    let mut core = SipCore::new(
        TransactionLayer::new(transaction::Config::default()),
        registrar,
        proxy,
        conference,
        metrics.clone(),
    );

    // Registrations are written behind by a thread with its own connection, in one
    // transaction per batch.
    let (persist_tx, persist_rx) = std::sync::mpsc::channel::<Vec<PendingWrite>>();
    let mut writer = Store::open(&cfg.data)?;
    let persister = std::thread::Builder::new()
        .name("persist".into())
        .spawn(move || {
            for batch in persist_rx {
                let mut puts = Vec::new();
                let mut dels = Vec::new();
                for w in batch {
                    match w {
                        PendingWrite::Put(b) => puts.push(b),
                        PendingWrite::Remove(a, c) => dels.push((a, c)),
                    }
                }
                if let Err(e) = writer.apply_bindings(&puts, &dels) {
                    tracing::error!("persisting registrations: {e}");
                }
            }
        })
        .map_err(io("starting the persistence thread"))?;

    let (in_tx, mut in_rx) = mpsc::channel::<Inbound>(4096);
    tokio::spawn(accept_loop(tcp, in_tx));

    let mut ticker = tokio::time::interval(Duration::from_millis(10));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut connections: HashMap<u64, mpsc::Sender<Bytes>> = HashMap::new();
    let mut buf = vec![0u8; intake::MAX_MESSAGE + 1];
    let mut flood = FloodGuard::new(cfg.flood.clone());
    // Drops what a flooding source sends before any parsing; logs each ban once, in one
    // stable line that fail2ban can match.
    let mut admit = |ip: std::net::IpAddr, now: Instant| match flood.check(ip, now) {
        Verdict::Allow => true,
        Verdict::Ban => {
            metrics.rate_limited.inc();
            metrics.banned_sources.set(flood.banned(now) as u64);
            tracing::warn!(target: "supernode::flood", "flood: banned src={ip} for {} s", cfg.flood.ban_seconds);
            false
        }
        Verdict::Drop => {
            metrics.rate_limited.inc();
            false
        }
    };
    let mut last_flush = Instant::now();
    // Keeps the NAT bindings of UDP phones open between their registrations (like
    // Kamailio's nathelper): a CRLF-CRLF every 25 s, which phones ignore.
    let ping_every = Duration::from_secs(cfg.registrar.nat_keepalive_seconds);
    let mut nat_ping =
        tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    nat_ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = udp.recv_from(&mut buf) => {
                let now = Instant::now();
                if let Ok((n, from)) = r.map_err(drop).and_then(|(n, from)| if admit(from.ip(), now) { Ok((n, from)) } else { Err(()) }) {
                    core.handle_bytes(&buf[..n], Flow { transport: Transport::Udp, remote: from, connection: None }, now, &store);
                }
                // Drain what else is queued before going back to select.
                for _ in 0..64 {
                    match udp.try_recv_from(&mut buf) {
                        Ok((_, from)) if !admit(from.ip(), now) => {}
                        Ok((n, from)) => core.handle_bytes(&buf[..n], Flow { transport: Transport::Udp, remote: from, connection: None }, now, &store),
                        Err(_) => break,
                    }
                }
            }
            Some(msg) = in_rx.recv() => match msg {
                Inbound::Message(bytes, flow) => {
                    let now = Instant::now();
                    if admit(flow.remote.ip(), now) {
                        core.handle_bytes(&bytes, flow, now, &store);
                    }
                }
                Inbound::Opened(id, tx) => { connections.insert(id, tx); }
                Inbound::Closed(id) => { connections.remove(&id); }
            },
            _ = ticker.tick() => {
                drain_mixer_events(&mut core, &mixer, &mut live);
                live.tick(&mut core, &mixer, Instant::now());
                core.handle_timeout(Instant::now(), &store);
            }
            _ = nat_ping.tick() => {
                for flow in core.registrar_mut().location().udp_flows(Instant::now()) {
                    let _ = udp.try_send_to(b"\r\n\r\n", flow.remote);
                }
            }
            Some(cmd) = admin_rx.recv() => live.command(cmd, &mut core, &mixer, Instant::now()),
            _ = int.recv() => break,
            _ = term.recv() => break,
        }
        run_mixer(&mut core, &mixer, &mut media);
        transmit(&mut core, &udp, &connections, &store).await;
        if last_flush.elapsed() >= Duration::from_millis(100) {
            last_flush = Instant::now();
            let pending = core.registrar_mut().location_mut().take_pending();
            if !pending.is_empty() {
                let _ = persist_tx.send(pending);
            }
        }
    }
    // Conference calls end with a BYE each: sent now, and the SIP service kept running
    // (bounded) until they are answered, so phones learn the call is over.
    core.shutdown_conference(Instant::now());
    let deadline = tokio::time::Instant::now() + SHUTDOWN_FLUSH;
    loop {
        run_mixer(&mut core, &mixer, &mut media);
        transmit(&mut core, &udp, &connections, &store).await;
        if core.pending_conference_requests() == 0 {
            break;
        }
        tokio::select! {
            r = udp.recv_from(&mut buf) => {
                if let Ok((n, from)) = r {
                    core.handle_bytes(&buf[..n], Flow { transport: Transport::Udp, remote: from, connection: None }, Instant::now(), &store);
                }
            }
            Some(msg) = in_rx.recv() => match msg {
                Inbound::Message(bytes, flow) => core.handle_bytes(&bytes, flow, Instant::now(), &store),
                Inbound::Opened(id, tx) => { connections.insert(id, tx); }
                Inbound::Closed(id) => { connections.remove(&id); }
            },
            _ = ticker.tick() => core.handle_timeout(Instant::now(), &store),
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    // Stream writers get a moment to put the last BYEs on the wire.
    if !connections.is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pending = core.registrar_mut().location_mut().take_pending();
    if !pending.is_empty() {
        let _ = persist_tx.send(pending);
    }
    drop(persist_tx);
    let _ = tokio::task::spawn_blocking(move || {
        let _ = persister.join();
        mixer.shutdown();
    })
    .await;
    turn.shutdown().await;
    println!("stopped");
    Ok(())
}

async fn accept_loop(listener: TcpListener, inbound: mpsc::Sender<Inbound>) {
    let mut next_id = 1u64;
    loop {
        let Ok((stream, remote)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let id = next_id;
        next_id += 1;
        tokio::spawn(connection(stream, remote, id, inbound.clone()));
    }
}

/// One TCP connection: frames messages by Content-Length (RFC 3261 §18.3) and writes
/// whatever the core sends to this connection.
async fn connection(
    stream: TcpStream,
    remote: SocketAddr,
    id: u64,
    inbound: mpsc::Sender<Inbound>,
) {
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Bytes>(256);
    if inbound.send(Inbound::Opened(id, tx)).await.is_err() {
        return;
    }
    let writer = tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if wr.write_all(&b).await.is_err() {
                break;
            }
        }
    });
    let flow = Flow {
        transport: Transport::Tcp,
        remote,
        connection: Some(id),
    };
    let mut buf = BytesMut::with_capacity(8192);
    'read: loop {
        match rd.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        loop {
            match intake::frame_stream(&buf) {
                Ok(Some(n)) => {
                    let msg = buf.split_to(n).freeze();
                    if inbound.send(Inbound::Message(msg, flow)).await.is_err() {
                        break 'read;
                    }
                }
                Ok(None) => break,
                // A stream whose framing is lost cannot be resynchronised: close it.
                Err(_) => break 'read,
            }
        }
    }
    let _ = inbound.send(Inbound::Closed(id)).await;
    writer.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dialog(n: u64) -> DialogId {
        DialogId::for_tests(n)
    }

    #[test]
    fn media_binds_even_ports_of_the_range_once_per_dialog_until_released() {
        // A range of its own, on loopback; ports some other process holds are skipped.
        let range = PortRange {
            low: 43001,
            high: 43011,
        };
        let mut media = Media::new(IpAddr::from([127, 0, 0, 1]), range);
        let a = media.socket(dialog(1)).unwrap().local_addr().unwrap();
        let again = media.socket(dialog(1)).unwrap().local_addr().unwrap();
        assert_eq!(a, again, "one socket per dialog");
        let b = media.socket(dialog(2)).unwrap().local_addr().unwrap();
        assert_ne!(a.port(), b.port());
        for p in [a.port(), b.port()] {
            assert!(p % 2 == 0 && (43002..=43010).contains(&p), "{p}");
        }
        // Five even ports: the range runs out while all are held, and frees on release.
        let mut held = Vec::new();
        for n in 3..10 {
            match media.socket(dialog(n)) {
                Ok(_) => held.push(n),
                Err(e) => {
                    assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
                    break;
                }
            }
        }
        assert!(held.len() <= 3, "{held:?}");
        assert!(media.socket(dialog(100)).is_err());
        media.release(dialog(1));
        assert!(media.socket(dialog(100)).is_ok());
    }
}
