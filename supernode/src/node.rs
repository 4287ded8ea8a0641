//! The composition root: binds the listeners, starts the mixer and the SIP service,
//! prints the bound addresses (one line each, so scripts never guess), and shuts down
//! cleanly on SIGINT or SIGTERM.
//!
//! The SIP driver is deliberately thin: one task owns the [`SipCore`] and the UDP
//! socket, TCP connections are tasks that frame messages and hand them over a channel,
//! and a persistence thread writes registrations behind.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

use crate::config::{Config, DigestAlgorithm, SipAuth};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::sip::core::SipCore;
use crate::sip::digest::{Algorithm, NonceConfig, Nonces};
use crate::sip::flood::{FloodGuard, Verdict};
use crate::sip::intake;
use crate::sip::location::{Binding, LocalLocation, PendingWrite};
use crate::sip::proxy::{Proxy, ProxyConfig, DEFAULT_NO_ANSWER};
use crate::sip::registrar::{Accounts, Registrar};
use crate::sip::transaction::{self, Flow, TransactionLayer, Transport};
use crate::store::{Account, Store};

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
}

/// What connection tasks tell the SIP task.
enum Inbound {
    Message(Bytes, Flow),
    Opened(u64, mpsc::Sender<Bytes>),
    Closed(u64),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// Binds UDP and TCP on the same address; with port 0, tries a few ports until both
/// bind.
async fn bind_sip(addr: SocketAddr) -> Result<(UdpSocket, TcpListener)> {
    let mut last = None;
    for _ in 0..20 {
        let udp = UdpSocket::bind(addr)
            .await
            .map_err(io(format!("binding SIP UDP {addr}")))?;
        let local = udp
            .local_addr()
            .map_err(io("reading the SIP UDP address"))?;
        match TcpListener::bind(local).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if addr.port() == 0 => last = Some(e),
            Err(e) => return Err(io(format!("binding SIP TCP {local}"))(e)),
        }
    }
    Err(io(format!("binding SIP TCP next to UDP on {addr}"))(
        last.unwrap_or_else(|| std::io::Error::other("no free port")),
    ))
}

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
    let (udp, tcp) = bind_sip(cfg.sip).await?;
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
    println!("turn not served yet: the relay comes with its issue");
    println!("admin not served yet: the admin UI comes with its issue");
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
    let mut core = SipCore::new(
        TransactionLayer::new(transaction::Config::default()),
        registrar,
        proxy,
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
                core.handle_timeout(Instant::now(), &store);
            }
            _ = nat_ping.tick() => {
                for flow in core.registrar_mut().location().udp_flows(Instant::now()) {
                    let _ = udp.try_send_to(b"\r\n\r\n", flow.remote);
                }
            }
            _ = int.recv() => break,
            _ = term.recv() => break,
        }
        // Sends everything queued; a transaction whose message could not go out (its TCP
        // connection is gone) is told so, which may queue more (the proxy's 480).
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
                core.handle_transport_error(key, Instant::now(), &store);
            }
        }
        if last_flush.elapsed() >= Duration::from_millis(100) {
            last_flush = Instant::now();
            let pending = core.registrar_mut().location_mut().take_pending();
            if !pending.is_empty() {
                let _ = persist_tx.send(pending);
            }
        }
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
    println!("stopped");
    Ok(())
}

/// The local address the host would send from when `bound` is the wildcard: found by
/// connecting a UDP socket (which sends nothing) towards a documentation address.
fn outward_ip(bound: std::net::IpAddr) -> std::net::IpAddr {
    if !bound.is_unspecified() {
        return bound;
    }
    let probe = std::net::UdpSocket::bind(("0.0.0.0", 0))
        .and_then(|s| s.connect(("192.0.2.1", 9)).map(|()| s))
        .and_then(|s| s.local_addr());
    match probe {
        Ok(a) if !a.ip().is_unspecified() => a.ip(),
        _ => std::net::IpAddr::from([127, 0, 0, 1]),
    }
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
