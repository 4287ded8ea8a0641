//! The web admin wired to the node: the `web_admin` traits implemented over the SQLite
//! [`Store`] (rooms, accounts, the admin password and API tokens) and over a snapshot of
//! the live state the SIP task owns (registrations, conference participants, mixer leg
//! counters), which the SIP task publishes every 250 ms.
//!
//! The admin never touches the SIP task's state: mute, kick, ending a deleted room's
//! conference and dropping a deleted account's bindings are [`AdminCommand`]s it sends
//! over a channel, which the SIP task carries out ([`Live::command`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use mixer::{CodecKind, LegId, MixerEvent, RoomEvent};
use tokio::sync::mpsc;
use web_admin::{
    Account as AdminAccount, AdminAuth, AdminError, AdminResult, Allocation, AnchoredSession,
    ApiToken, ComponentHealth, Counts, Directory, Listener, NewRoom, Node, NodeStatus, Participant,
    Registration, Relays, Room, RoomUpdate, Rooms, ShardLoad,
};

use crate::error::Error;
use crate::metrics::Metrics;
use crate::sip::core::SipCore;
use crate::sip::location::Location;
use crate::store::{Account, RoomRecord, Store};

/// Room size when the operator gives none (the CLI's default too).
pub const DEFAULT_MAX_LEGS: u32 = 100;

/// How often the SIP task publishes its [`Snapshot`].
pub const PUBLISH_EVERY: Duration = Duration::from_millis(250);

/// How often the SIP task asks the mixer for the counters of every leg.
const STATS_EVERY: Duration = Duration::from_secs(1);

/// The key of the admin password hash in the store's `admin` table.
const PASSWORD_KEY: &str = "password_hash";

/// The live state of the SIP task, as last published.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// When it was taken (`None` before the first publish).
    pub taken: Option<Instant>,
    /// Participants in the mix, by room name.
    pub rooms: BTreeMap<String, Vec<Participant>>,
    /// Registrations by AOR (`user@domain`).
    pub registrations: HashMap<String, Vec<Registration>>,
    /// Live registrations in all.
    pub bindings: u64,
    /// Calls through the proxy.
    pub proxied_calls: u64,
}

/// What the admin asks of the SIP task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminCommand {
    /// End one participant's call (BYE).
    Kick {
        /// Room name.
        room: String,
        /// Participant id (the conference dialog id).
        participant: String,
    },
    /// Mute or unmute one participant in the mix.
    Mute {
        /// Room name.
        room: String,
        /// Participant id.
        participant: String,
        /// Muted or not.
        muted: bool,
    },
    /// End every call in a room (it was deleted).
    EndRoom {
        /// Room name.
        room: String,
    },
    /// Drop every binding of an AOR (its account was deleted).
    DropBindings {
        /// `user@domain`.
        aor: String,
    },
}

/// Counters of one leg, kept by the SIP task between stats reports.
#[derive(Debug, Clone, Copy, Default)]
struct LegCounters {
    received: u64,
    lost: u64,
    loss_pct: f32,
    /// Interarrival jitter in RTP timestamp units.
    jitter: f64,
}

/// The SIP task's side: tracks talking and leg counters from mixer events, publishes
/// the [`Snapshot`] and carries out [`AdminCommand`]s.
pub struct Live {
    snapshot: Arc<RwLock<Snapshot>>,
    talking: HashSet<LegId>,
    muted: HashSet<LegId>,
    counters: HashMap<LegId, LegCounters>,
    last_publish: Option<Instant>,
    last_stats: Option<Instant>,
}

impl Live {
    /// A tracker publishing into `snapshot`.
    pub fn new(snapshot: Arc<RwLock<Snapshot>>) -> Self {
        Live {
            snapshot,
            talking: HashSet::new(),
            muted: HashSet::new(),
            counters: HashMap::new(),
            last_publish: None,
            last_stats: None,
        }
    }

    /// Notes what a mixer event tells about a leg (call for every event drained).
    pub fn observe(&mut self, event: &MixerEvent) {
        match event {
            MixerEvent::Room { event, .. } => match *event {
                RoomEvent::TalkingStarted(leg) => {
                    self.talking.insert(leg);
                }
                RoomEvent::TalkingStopped(leg) => {
                    self.talking.remove(&leg);
                }
                _ => {}
            },
            MixerEvent::Stats { leg, stats, .. } => {
                let c = self.counters.entry(*leg).or_default();
                let received = stats.jitter.received.saturating_sub(c.received);
                let lost = stats.jitter.lost.saturating_sub(c.lost);
                let expected = received + lost;
                c.loss_pct = if expected == 0 {
                    0.0
                } else {
                    (lost as f64 * 100.0 / expected as f64) as f32
                };
                c.received = stats.jitter.received;
                c.lost = stats.jitter.lost;
                c.jitter = stats.jitter.jitter;
            }
            MixerEvent::LegRemoved { leg, .. } => {
                self.talking.remove(leg);
                self.muted.remove(leg);
                self.counters.remove(leg);
            }
            MixerEvent::CommandFailed { .. } => {}
        }
    }

    /// On the SIP task's ticker: asks for leg counters every second and publishes the
    /// snapshot every [`PUBLISH_EVERY`].
    pub fn tick(&mut self, core: &mut SipCore, mixer: &mixer::Mixer, now: Instant) {
        if self
            .last_stats
            .is_none_or(|t| now.duration_since(t) >= STATS_EVERY)
        {
            self.last_stats = Some(now);
            for d in core.conference().dialogs() {
                if let Some((room, leg)) = d.leg {
                    let _ = mixer.request_stats(room, leg);
                }
            }
        }
        if self
            .last_publish
            .is_some_and(|t| now.duration_since(t) < PUBLISH_EVERY)
        {
            return;
        }
        self.last_publish = Some(now);
        let mut rooms: BTreeMap<String, Vec<Participant>> = BTreeMap::new();
        for d in core.conference().dialogs() {
            let Some((_, leg)) = d.leg else { continue };
            let c = self.counters.get(&leg).copied().unwrap_or_default();
            let khz = match d.codec {
                CodecKind::Opus => 48.0,
                CodecKind::Pcmu | CodecKind::Pcma => 8.0,
            };
            let talking = self.talking.contains(&leg);
            rooms.entry(d.room.clone()).or_default().push(Participant {
                id: d.id.to_string(),
                from: d.remote.clone(),
                codec: codec_name(d.codec).to_string(),
                talking,
                // The mixer reports voice activity, not levels: a talker shows as loud.
                level: if talking { 60 } else { 0 },
                loss_pct: c.loss_pct,
                jitter_ms: (c.jitter / khz) as f32,
                muted: self.muted.contains(&leg),
            });
        }
        let mut registrations: HashMap<String, Vec<Registration>> = HashMap::new();
        let mut bindings = 0;
        for b in core.registrar_mut().location().bindings() {
            if b.expires <= now {
                continue;
            }
            bindings += 1;
            registrations
                .entry(b.aor.clone())
                .or_default()
                .push(Registration {
                    contact: b.contact.clone(),
                    expires_in_s: u32::try_from(b.remaining(now)).unwrap_or(u32::MAX),
                    transport: b.flow.transport.name().to_string(),
                    user_agent: None,
                });
        }
        let snapshot = Snapshot {
            taken: Some(now),
            rooms,
            registrations,
            bindings,
            proxied_calls: core.proxy().dialogs() as u64,
        };
        if let Ok(mut s) = self.snapshot.write() {
            *s = snapshot;
        }
    }

    /// Carries out a command of the admin.
    pub fn command(
        &mut self,
        cmd: AdminCommand,
        core: &mut SipCore,
        mixer: &mixer::Mixer,
        now: Instant,
    ) {
        let dialogs = core.conference().dialogs();
        match cmd {
            AdminCommand::Kick { room, participant } => {
                if let Some(d) = dialogs
                    .iter()
                    .find(|d| d.room == room && d.id.to_string() == participant)
                {
                    core.kick_conference(d.id, now);
                }
            }
            AdminCommand::Mute {
                room,
                participant,
                muted,
            } => {
                let found = dialogs
                    .iter()
                    .find(|d| d.room == room && d.id.to_string() == participant)
                    .and_then(|d| d.leg);
                if let Some((mroom, leg)) = found {
                    if mixer.set_muted(mroom, leg, muted).is_ok() {
                        if muted {
                            self.muted.insert(leg);
                        } else {
                            self.muted.remove(&leg);
                        }
                    }
                }
            }
            AdminCommand::EndRoom { room } => {
                for d in dialogs.iter().filter(|d| d.room == room) {
                    core.kick_conference(d.id, now);
                }
            }
            AdminCommand::DropBindings { aor } => {
                core.registrar_mut().location_mut().remove_all(&aor);
            }
        }
        // The next tick publishes what changed.
        self.last_publish = None;
    }
}

fn codec_name(codec: CodecKind) -> &'static str {
    match codec {
        CodecKind::Opus => "opus",
        CodecKind::Pcmu => "PCMU",
        CodecKind::Pcma => "PCMA",
    }
}

/// Whether the relay runs, for health and the dashboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayState {
    /// Not started on this node (not an error: health reports it up with a note).
    NotServed,
    /// Serving.
    Up,
}

/// What the admin backend needs of the node besides the store.
pub struct AdminContext {
    /// The served domain.
    pub domain: String,
    /// Listeners as printed at start.
    pub listeners: Vec<Listener>,
    /// Node counters.
    pub metrics: Arc<Metrics>,
    /// Mixer threads.
    pub mixer_shards: usize,
    /// The relay's state.
    pub relay: RelayState,
    /// TURN REST shared secret, if configured.
    pub turn_secret: Option<Vec<u8>>,
    /// TURN URIs for clients.
    pub turn_uris: Vec<String>,
}

/// The admin's services: one object implementing every `web_admin` trait.
pub struct Backend {
    store: Mutex<Store>,
    ctx: AdminContext,
    started: Instant,
    snapshot: Arc<RwLock<Snapshot>>,
    commands: mpsc::Sender<AdminCommand>,
}

impl Backend {
    /// A backend over its own store connection, reading `snapshot` and sending to the
    /// SIP task on `commands`.
    pub fn new(
        store: Store,
        ctx: AdminContext,
        snapshot: Arc<RwLock<Snapshot>>,
        commands: mpsc::Sender<AdminCommand>,
    ) -> Self {
        Backend {
            store: Mutex::new(store),
            ctx,
            started: Instant::now(),
            snapshot,
            commands,
        }
    }

    /// The services to hand to `web_admin::router`.
    pub fn services(self: &Arc<Self>) -> web_admin::AdminServices {
        web_admin::AdminServices {
            rooms: self.clone(),
            directory: self.clone(),
            relays: self.clone(),
            node: self.clone(),
            auth: self.clone(),
        }
    }

    fn with_store<T>(&self, f: impl FnOnce(&Store) -> crate::Result<T>) -> AdminResult<T> {
        let store = self
            .store
            .lock()
            .map_err(|_| AdminError::Internal("the store lock is poisoned".into()))?;
        f(&store).map_err(admin_error)
    }

    fn live<T>(&self, f: impl FnOnce(&Snapshot) -> T) -> T {
        match self.snapshot.read() {
            Ok(s) => f(&s),
            Err(e) => f(&e.into_inner()),
        }
    }

    fn send(&self, cmd: AdminCommand) -> AdminResult<()> {
        self.commands
            .try_send(cmd)
            .map_err(|e| AdminError::Unavailable(format!("the SIP service is busy or down: {e}")))
    }

    fn room_view(&self, r: RoomRecord) -> Room {
        let participants = self.live(|s| s.rooms.get(&r.name).map_or(0, Vec::len));
        Room {
            uri: format!("sip:{}@{}", r.name, self.ctx.domain),
            pin: r.pin,
            max_participants: Some(r.max_legs),
            participants: u32::try_from(participants).unwrap_or(u32::MAX),
            name: r.name,
        }
    }

    fn require_room(&self, name: &str) -> AdminResult<RoomRecord> {
        self.with_store(|s| s.room(name))?
            .ok_or_else(|| AdminError::NotFound(format!("room {name:?}")))
    }

    fn find_participant(&self, room: &str, participant: &str) -> AdminResult<()> {
        self.require_room(room)?;
        let found = self.live(|s| {
            s.rooms
                .get(room)
                .is_some_and(|ps| ps.iter().any(|p| p.id == participant))
        });
        if found {
            Ok(())
        } else {
            Err(AdminError::NotFound(format!(
                "participant {participant:?} in room {room:?}"
            )))
        }
    }

    fn aor(&self, user: &str) -> String {
        format!("{user}@{}", self.ctx.domain)
    }
}

/// Maps a store error to the admin's.
fn admin_error(e: Error) -> AdminError {
    match e {
        Error::InvalidName(_) | Error::ReservedName(_) => {
            AdminError::invalid("name", e.to_string())
        }
        Error::NameTaken(_) => AdminError::Conflict(e.to_string()),
        Error::InvalidPin => AdminError::invalid("pin", e.to_string()),
        Error::InvalidRoomSize => AdminError::invalid("max_participants", e.to_string()),
        other => AdminError::Internal(other.to_string()),
    }
}

impl Rooms for Backend {
    fn list(&self) -> AdminResult<Vec<Room>> {
        let rooms = self.with_store(|s| s.rooms())?;
        Ok(rooms.into_iter().map(|r| self.room_view(r)).collect())
    }

    fn get(&self, name: &str) -> AdminResult<Option<Room>> {
        Ok(self
            .with_store(|s| s.room(name))?
            .map(|r| self.room_view(r)))
    }

    fn create(&self, room: &NewRoom) -> AdminResult<Room> {
        let record = RoomRecord {
            name: room.name.clone(),
            pin: room.pin.clone(),
            max_legs: room.max_participants.unwrap_or(DEFAULT_MAX_LEGS),
        };
        self.with_store(|s| {
            if s.room(&record.name)?.is_some() {
                return Err(Error::NameTaken(record.name.clone()));
            }
            s.put_room(&record)
        })?;
        Ok(self.room_view(record))
    }

    fn update(&self, name: &str, update: &RoomUpdate) -> AdminResult<Room> {
        self.require_room(name)?;
        let record = RoomRecord {
            name: name.to_string(),
            pin: update.pin.clone(),
            max_legs: update.max_participants.unwrap_or(DEFAULT_MAX_LEGS),
        };
        self.with_store(|s| s.put_room(&record))?;
        Ok(self.room_view(record))
    }

    fn delete(&self, name: &str) -> AdminResult<()> {
        if !self.with_store(|s| s.delete_room(name))? {
            return Err(AdminError::NotFound(format!("room {name:?}")));
        }
        self.send(AdminCommand::EndRoom {
            room: name.to_string(),
        })
    }

    fn participants(&self, name: &str) -> AdminResult<Vec<Participant>> {
        self.require_room(name)?;
        Ok(self.live(|s| s.rooms.get(name).cloned().unwrap_or_default()))
    }

    fn set_muted(&self, room: &str, participant: &str, muted: bool) -> AdminResult<()> {
        self.find_participant(room, participant)?;
        self.send(AdminCommand::Mute {
            room: room.to_string(),
            participant: participant.to_string(),
            muted,
        })?;
        // Shown at once; the SIP task's next snapshot confirms it.
        if let Ok(mut s) = self.snapshot.write() {
            if let Some(p) = s
                .rooms
                .get_mut(room)
                .and_then(|ps| ps.iter_mut().find(|p| p.id == participant))
            {
                p.muted = muted;
            }
        }
        Ok(())
    }

    fn kick(&self, room: &str, participant: &str) -> AdminResult<()> {
        self.find_participant(room, participant)?;
        self.send(AdminCommand::Kick {
            room: room.to_string(),
            participant: participant.to_string(),
        })?;
        if let Ok(mut s) = self.snapshot.write() {
            if let Some(ps) = s.rooms.get_mut(room) {
                ps.retain(|p| p.id != participant);
            }
        }
        Ok(())
    }
}

impl Directory for Backend {
    fn list(&self) -> AdminResult<Vec<AdminAccount>> {
        let names = self.with_store(|s| s.account_names())?;
        Ok(names
            .into_iter()
            .map(|user| {
                let aor = self.aor(&user);
                let registrations =
                    self.live(|s| s.registrations.get(&aor).map_or(0, Vec::len)) as u32;
                AdminAccount {
                    aor: format!("sip:{aor}"),
                    user,
                    registrations,
                }
            })
            .collect())
    }

    fn add(&self, user: &str, password: &str) -> AdminResult<AdminAccount> {
        let account = Account::with_password(user, &self.ctx.domain, password);
        self.with_store(|s| {
            if s.account(user)?.is_some() {
                return Err(Error::NameTaken(user.to_string()));
            }
            s.put_account(&account)
        })?;
        Ok(AdminAccount {
            user: user.to_string(),
            aor: format!("sip:{}", self.aor(user)),
            registrations: 0,
        })
    }

    fn set_password(&self, user: &str, password: &str) -> AdminResult<()> {
        let account = Account::with_password(user, &self.ctx.domain, password);
        self.with_store(|s| {
            if s.account(user)?.is_none() {
                return Ok(false);
            }
            s.put_account(&account).map(|()| true)
        })?
        .then_some(())
        .ok_or_else(|| AdminError::NotFound(format!("user {user:?}")))
    }

    fn delete(&self, user: &str) -> AdminResult<()> {
        let domain = self.ctx.domain.clone();
        if !self.with_store(|s| s.delete_account(user, &domain))? {
            return Err(AdminError::NotFound(format!("user {user:?}")));
        }
        self.send(AdminCommand::DropBindings {
            aor: self.aor(user),
        })
    }

    fn registrations(&self, user: &str) -> AdminResult<Vec<Registration>> {
        if self.with_store(|s| s.account(user))?.is_none() {
            return Err(AdminError::NotFound(format!("user {user:?}")));
        }
        let aor = self.aor(user);
        Ok(self.live(|s| s.registrations.get(&aor).cloned().unwrap_or_default()))
    }
}

impl Relays for Backend {
    fn allocations(&self) -> AdminResult<Vec<Allocation>> {
        // The TURN service does not report its allocations to the admin yet.
        Ok(Vec::new())
    }

    fn sessions(&self) -> AdminResult<Vec<AnchoredSession>> {
        // The node does not anchor media of proxied calls.
        Ok(Vec::new())
    }

    fn turn_secret(&self) -> Option<Vec<u8>> {
        self.ctx.turn_secret.clone()
    }

    fn turn_uris(&self) -> Vec<String> {
        self.ctx.turn_uris.clone()
    }
}

impl Node for Backend {
    fn status(&self) -> NodeStatus {
        let rooms = self.with_store(|s| s.rooms()).map_or(0, |r| r.len() as u64);
        let (registrations, participants, proxied) = self.live(|s| {
            (
                s.bindings,
                s.rooms.values().map(Vec::len).sum::<usize>() as u64,
                s.proxied_calls,
            )
        });
        NodeStatus {
            // The overlay is not served yet: the node has no overlay id.
            node_id: String::new(),
            domain: self.ctx.domain.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_s: self.started.elapsed().as_secs(),
            listeners: self.ctx.listeners.clone(),
            counts: Counts {
                registrations,
                active_calls: proxied + participants,
                rooms,
                participants,
                relay_allocations: 0,
            },
            // The mixer does not report per-shard load: every shard shows zero.
            mixer_shards: (0..self.ctx.mixer_shards)
                .map(|i| ShardLoad {
                    shard: i as u32,
                    rooms: 0,
                    participants: 0,
                    load_pct: 0.0,
                })
                .collect(),
        }
    }

    fn health(&self) -> Vec<ComponentHealth> {
        let age = self.live(|s| s.taken.map(|t| t.elapsed()));
        let sip = match age {
            Some(a) if a < Duration::from_secs(5) => ComponentHealth {
                name: "sip".into(),
                up: true,
                detail: None,
            },
            Some(a) => ComponentHealth {
                name: "sip".into(),
                up: false,
                detail: Some(format!(
                    "the SIP task has not reported for {} s",
                    a.as_secs()
                )),
            },
            None if self.started.elapsed() < Duration::from_secs(5) => ComponentHealth {
                name: "sip".into(),
                up: true,
                detail: Some("starting".into()),
            },
            None => ComponentHealth {
                name: "sip".into(),
                up: false,
                detail: Some("the SIP task never reported".into()),
            },
        };
        let relay = ComponentHealth {
            name: "relay".into(),
            up: true,
            detail: match self.ctx.relay {
                RelayState::Up => None,
                RelayState::NotServed => Some("not served on this node".into()),
            },
        };
        vec![
            sip,
            ComponentHealth {
                name: "mixer".into(),
                up: true,
                detail: None,
            },
            relay,
        ]
    }

    fn metrics(&self) -> String {
        let mut text = self.ctx.metrics.render();
        let (rooms, participants) =
            self.live(|s| (s.rooms.len(), s.rooms.values().map(Vec::len).sum::<usize>()));
        for (name, help, v) in [
            (
                "supernode_mixer_shards",
                "Mixer threads.",
                self.ctx.mixer_shards,
            ),
            (
                "supernode_conference_rooms_active",
                "Rooms with participants in the mix.",
                rooms,
            ),
            (
                "supernode_conference_participants",
                "Participants in all rooms.",
                participants,
            ),
        ] {
            text.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n"
            ));
        }
        text
    }
}

impl AdminAuth for Backend {
    fn password_hash(&self) -> AdminResult<Option<String>> {
        self.with_store(|s| s.admin_value(PASSWORD_KEY))
    }

    fn set_password_hash(&self, phc: &str) -> AdminResult<()> {
        self.with_store(|s| s.set_admin_value(PASSWORD_KEY, phc))
    }

    fn tokens(&self) -> AdminResult<Vec<ApiToken>> {
        let rows = self.with_store(|s| s.api_tokens())?;
        Ok(rows
            .into_iter()
            .map(|(id, name, hash, created)| ApiToken {
                id,
                name,
                hash,
                created_unix: u64::try_from(created).unwrap_or(0),
            })
            .collect())
    }

    fn add_token(&self, token: &ApiToken) -> AdminResult<()> {
        let created = i64::try_from(token.created_unix).unwrap_or(i64::MAX);
        self.with_store(|s| s.add_api_token(&token.id, &token.name, &token.hash, created))
    }

    fn revoke_token(&self, id: &str) -> AdminResult<()> {
        if self.with_store(|s| s.delete_api_token(id))? {
            Ok(())
        } else {
            Err(AdminError::NotFound(format!("token {id:?}")))
        }
    }
}

/// The running admin, as the SIP task sees it.
pub struct AdminHandle {
    /// The bound address.
    pub addr: std::net::SocketAddr,
    /// The SIP task's tracker, publishing into the admin's snapshot.
    pub live: Live,
    /// Commands of the admin for the SIP task.
    pub commands: mpsc::Receiver<AdminCommand>,
}

/// Binds the admin on `cfg.admin` (port 0: a free port), makes sure an admin password
/// is set (refusing a non-loopback address without one), prints `admin http://ADDR`
/// and serves it on a task of its own.
pub async fn serve(cfg: &crate::config::Config, ctx: AdminContext) -> crate::Result<AdminHandle> {
    let io = |context: String| move |source| Error::Io { context, source };
    let store = Store::open(&cfg.data)?;
    let snapshot = Arc::new(RwLock::new(Snapshot::default()));
    let (tx, rx) = mpsc::channel(256);
    let listener = tokio::net::TcpListener::bind(cfg.admin)
        .await
        .map_err(io(format!("binding the admin on {}", cfg.admin)))?;
    let addr = listener
        .local_addr()
        .map_err(io("reading the admin address".into()))?;
    let mut ctx = ctx;
    ctx.listeners.push(Listener {
        service: "admin".into(),
        transport: "http".into(),
        addr: addr.to_string(),
    });
    let backend = Arc::new(Backend::new(store, ctx, snapshot.clone(), tx));
    let services = backend.services();
    match web_admin::ensure_admin_password(&*services.auth, addr, &cfg.data) {
        Ok(Some(path)) => println!("admin password written to {}", path.display()),
        Ok(None) => {}
        Err(e) => {
            return Err(Error::Config(match e {
                AdminError::Conflict(msg) => msg,
                other => other.to_string(),
            }))
        }
    }
    println!("admin http://{addr}");
    let app = web_admin::router(web_admin::AdminState::new(
        services,
        web_admin::AdminConfig::default(),
    ));
    tokio::spawn(async move {
        let service = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
        if let Err(e) = axum::serve(listener, service).await {
            tracing::error!("the admin stopped: {e}");
        }
    });
    Ok(AdminHandle {
        addr,
        live: Live::new(snapshot),
        commands: rx,
    })
}

/// Sets the admin password (the CLI's `admin set-password`): only its argon2 hash is
/// stored.
pub fn set_password(store: &Store, password: &str) -> anyhow::Result<()> {
    if password.chars().count() < 8 {
        anyhow::bail!("the admin password must have at least 8 characters");
    }
    let phc = web_admin::auth::hash_password(password)?;
    store.set_admin_value(PASSWORD_KEY, &phc)?;
    Ok(())
}

/// Creates an API token named `name` (the CLI's `admin token create`); returns the
/// secret, which is shown once and never stored.
pub fn create_token(store: &Store, name: &str) -> anyhow::Result<(String, ApiToken)> {
    if name.trim().is_empty() || name.len() > 64 {
        anyhow::bail!("a token name is 1-64 characters");
    }
    let (secret, token) = web_admin::auth::new_api_token(name);
    let created = i64::try_from(token.created_unix).unwrap_or(i64::MAX);
    store.add_api_token(&token.id, &token.name, &token.hash, created)?;
    Ok((secret, token))
}

/// Seconds since the Unix epoch (for callers without a clock of their own).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend() -> (
        tempfile::TempDir,
        Arc<Backend>,
        mpsc::Receiver<AdminCommand>,
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let (tx, rx) = mpsc::channel(8);
        let ctx = AdminContext {
            domain: "example.org".into(),
            listeners: Vec::new(),
            metrics: Arc::new(Metrics::default()),
            mixer_shards: 2,
            relay: RelayState::NotServed,
            turn_secret: None,
            turn_uris: Vec::new(),
        };
        let b = Arc::new(Backend::new(
            store,
            ctx,
            Arc::new(RwLock::new(Snapshot::default())),
            tx,
        ));
        (dir, b, rx)
    }

    #[test]
    fn rooms_crud_with_not_found_and_conflict() {
        let (_d, b, mut rx) = backend();
        let room = NewRoom {
            name: "team".into(),
            pin: Some("1234".into()),
            max_participants: None,
        };
        let created = Rooms::create(&*b, &room).expect("create");
        assert_eq!(created.uri, "sip:team@example.org");
        assert_eq!(created.max_participants, Some(DEFAULT_MAX_LEGS));
        assert!(matches!(
            Rooms::create(&*b, &room),
            Err(AdminError::Conflict(_))
        ));
        let upd = RoomUpdate {
            pin: None,
            max_participants: Some(5),
        };
        assert_eq!(
            Rooms::update(&*b, "team", &upd)
                .expect("update")
                .max_participants,
            Some(5)
        );
        assert!(matches!(
            Rooms::update(&*b, "nope", &upd),
            Err(AdminError::NotFound(_))
        ));
        assert_eq!(Rooms::list(&*b).expect("list").len(), 1);
        assert!(matches!(
            Rooms::kick(&*b, "team", "7"),
            Err(AdminError::NotFound(_))
        ));
        Rooms::delete(&*b, "team").expect("delete");
        assert_eq!(
            rx.try_recv().expect("command"),
            AdminCommand::EndRoom {
                room: "team".into()
            }
        );
        assert!(matches!(
            Rooms::delete(&*b, "team"),
            Err(AdminError::NotFound(_))
        ));
        assert!(matches!(
            Rooms::participants(&*b, "team"),
            Err(AdminError::NotFound(_))
        ));
    }

    #[test]
    fn accounts_and_auth() {
        let (_d, b, _rx) = backend();
        Directory::add(&*b, "alice", "secret-pw").expect("add");
        assert!(matches!(
            Directory::add(&*b, "alice", "secret-pw"),
            Err(AdminError::Conflict(_))
        ));
        assert!(matches!(
            Directory::set_password(&*b, "bob", "secret-pw"),
            Err(AdminError::NotFound(_))
        ));
        Directory::set_password(&*b, "alice", "other-pw").expect("set");
        assert_eq!(
            Directory::list(&*b).expect("list")[0].aor,
            "sip:alice@example.org"
        );
        assert!(Directory::registrations(&*b, "alice")
            .expect("regs")
            .is_empty());
        Directory::delete(&*b, "alice").expect("delete");
        assert!(matches!(
            Directory::delete(&*b, "alice"),
            Err(AdminError::NotFound(_))
        ));

        assert_eq!(b.password_hash().expect("hash"), None);
        b.set_password_hash("$argon2id$x").expect("set");
        assert_eq!(
            b.password_hash().expect("hash").as_deref(),
            Some("$argon2id$x")
        );
        let (_secret, token) = web_admin::auth::new_api_token("ci");
        b.add_token(&token).expect("add");
        assert_eq!(b.tokens().expect("tokens"), vec![token.clone()]);
        b.revoke_token(&token.id).expect("revoke");
        assert!(matches!(
            b.revoke_token(&token.id),
            Err(AdminError::NotFound(_))
        ));
    }

    #[test]
    fn health_and_metrics() {
        let (_d, b, _rx) = backend();
        assert!(b.health().iter().all(|c| c.up));
        let m = b.metrics();
        assert!(m.contains("supernode_sip_requests_total"));
        assert!(m.contains("supernode_mixer_shards 2"));
        assert_eq!(b.status().mixer_shards.len(), 2);
    }
}
