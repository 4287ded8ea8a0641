//! The traits supernode implements for the admin, and the plain data they exchange.
//!
//! All traits are synchronous: the backing stores are SQLite and in-memory state, so a
//! call is short. Handlers call them directly; an implementation must not block for long.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::AdminResult;

/// A conference room as configured, with its dial-in URI.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Room {
    /// Room name; the user part of its SIP URI.
    pub name: String,
    /// SIP URI callers dial, `sip:<name>@<domain>`.
    pub uri: String,
    /// PIN asked by DTMF on entry, if any.
    pub pin: Option<String>,
    /// Most participants allowed at once, if limited.
    pub max_participants: Option<u32>,
    /// Participants connected now.
    pub participants: u32,
}

/// What the operator sends to create a room.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NewRoom {
    /// Room name: a SIP user part (letters, digits, `.`, `_`, `-`, `~`; 1-64 characters,
    /// starting with a letter or digit).
    pub name: String,
    /// Optional PIN of 4 to 12 digits.
    #[serde(default)]
    pub pin: Option<String>,
    /// Optional participant limit, 2 to 1000.
    #[serde(default)]
    pub max_participants: Option<u32>,
}

/// What the operator sends to change a room (its name stays).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RoomUpdate {
    /// New PIN, or none to remove it.
    #[serde(default)]
    pub pin: Option<String>,
    /// New participant limit, or none to remove it.
    #[serde(default)]
    pub max_participants: Option<u32>,
}

/// One participant connected to a room right now, as the mixer sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Participant {
    /// Stable identifier of the leg within the room (used by mute and kick).
    pub id: String,
    /// Who it is: the caller's SIP URI or display name.
    pub from: String,
    /// Negotiated codec (`opus`, `PCMU`, `PCMA`).
    pub codec: String,
    /// Whether the participant is talking (voice activity) now.
    pub talking: bool,
    /// Input level, 0 (silence) to 100 (full scale).
    pub level: u8,
    /// Packet loss over the last interval, in percent.
    pub loss_pct: f32,
    /// Interarrival jitter, in milliseconds.
    pub jitter_ms: f32,
    /// Whether the operator muted this participant.
    pub muted: bool,
}

/// Rooms and their live conferences: supernode implements it over its store and mixer.
pub trait Rooms: Send + Sync + 'static {
    /// All rooms, sorted by name.
    fn list(&self) -> AdminResult<Vec<Room>>;
    /// One room, or `None`.
    fn get(&self, name: &str) -> AdminResult<Option<Room>>;
    /// Create a room (input is already validated by the admin); `Conflict` if it exists.
    fn create(&self, room: &NewRoom) -> AdminResult<Room>;
    /// Change PIN and limit; `NotFound` if absent.
    fn update(&self, name: &str, update: &RoomUpdate) -> AdminResult<Room>;
    /// Delete a room, ending its conference; `NotFound` if absent.
    fn delete(&self, name: &str) -> AdminResult<()>;
    /// Live participants of a room; `NotFound` if the room does not exist.
    fn participants(&self, name: &str) -> AdminResult<Vec<Participant>>;
    /// Mute or unmute a participant; `NotFound` for an unknown room or participant.
    fn set_muted(&self, room: &str, participant: &str, muted: bool) -> AdminResult<()>;
    /// Remove a participant (the node sends BYE); `NotFound` if unknown.
    fn kick(&self, room: &str, participant: &str) -> AdminResult<()>;
}

/// A SIP account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Account {
    /// User part of the account's address of record.
    pub user: String,
    /// Address of record, `sip:<user>@<domain>`.
    pub aor: String,
    /// Registrations bound now.
    pub registrations: u32,
}

/// What the operator sends to add a SIP account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NewAccount {
    /// SIP user part (same rules as room names).
    pub user: String,
    /// Digest password, 8 to 128 characters.
    pub password: String,
}

/// A new password for an account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PasswordReset {
    /// Digest password, 8 to 128 characters.
    pub password: String,
}

/// One current registration (binding) of an account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Registration {
    /// Contact URI the UA registered.
    pub contact: String,
    /// Seconds until the binding expires.
    pub expires_in_s: u32,
    /// Transport it registered over (`udp`, `tcp`, `tls`, `ws`).
    pub transport: String,
    /// The UA's User-Agent header, if it sent one.
    pub user_agent: Option<String>,
}

/// SIP accounts and registrations: supernode implements it over its registrar.
pub trait Directory: Send + Sync + 'static {
    /// All accounts, sorted by user.
    fn list(&self) -> AdminResult<Vec<Account>>;
    /// Add an account; `Conflict` if the user exists.
    fn add(&self, user: &str, password: &str) -> AdminResult<Account>;
    /// Replace an account's password; `NotFound` if absent.
    fn set_password(&self, user: &str, password: &str) -> AdminResult<()>;
    /// Delete an account and its bindings; `NotFound` if absent.
    fn delete(&self, user: &str) -> AdminResult<()>;
    /// Current registrations of a user; `NotFound` if the account does not exist.
    fn registrations(&self, user: &str) -> AdminResult<Vec<Registration>>;
}

/// One TURN allocation held by the relay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Allocation {
    /// Client transport address, `ip:port`.
    pub client: String,
    /// Relayed transport address, `ip:port`.
    pub relayed: String,
    /// TURN username that authenticated it.
    pub username: String,
    /// Seconds left before it expires unless refreshed.
    pub expires_in_s: u32,
    /// Installed permissions.
    pub permissions: u32,
    /// Bound channels.
    pub channels: u32,
    /// Bytes relayed from the client to peers.
    pub bytes_out: u64,
    /// Bytes relayed from peers to the client.
    pub bytes_in: u64,
}

/// One media session anchored by the node (RTP forwarded between two legs of a call).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AnchoredSession {
    /// SIP Call-ID of the call.
    pub call_id: String,
    /// First leg's remote media address.
    pub a: String,
    /// Second leg's remote media address.
    pub b: String,
    /// Packets forwarded so far.
    pub packets: u64,
    /// Seconds since the session started.
    pub age_s: u64,
}

/// Relay status and the shared secret for TURN REST credentials.
pub trait Relays: Send + Sync + 'static {
    /// Current TURN allocations.
    fn allocations(&self) -> AdminResult<Vec<Allocation>>;
    /// Current anchored media sessions.
    fn sessions(&self) -> AdminResult<Vec<AnchoredSession>>;
    /// The TURN REST shared secret (coturn's `static-auth-secret`), or `None` when the
    /// relay does not accept REST credentials (the endpoint then answers 503).
    fn turn_secret(&self) -> Option<Vec<u8>>;
    /// TURN URIs clients should use (`turn:host:3478?transport=udp`, ...).
    fn turn_uris(&self) -> Vec<String>;
}

/// A bound listener, as printed at start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Listener {
    /// Service name (`sip`, `turn`, `admin`, `p2p`).
    pub service: String,
    /// Transport (`udp`, `tcp`, `http`, ...).
    pub transport: String,
    /// Bound address.
    pub addr: String,
}

/// Counts shown on the dashboard.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Counts {
    /// Active SIP registrations.
    pub registrations: u64,
    /// Calls in progress.
    pub active_calls: u64,
    /// Configured rooms.
    pub rooms: u64,
    /// Participants in all rooms.
    pub participants: u64,
    /// TURN allocations.
    pub relay_allocations: u64,
}

/// Load of one mixer shard (thread).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ShardLoad {
    /// Shard index.
    pub shard: u32,
    /// Rooms placed on it.
    pub rooms: u32,
    /// Participants mixed by it.
    pub participants: u32,
    /// Share of the 20 ms frame budget used, in percent.
    pub load_pct: f32,
}

/// Node identity and state for the dashboard and `GET /api/v1/node`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NodeStatus {
    /// Overlay node identifier.
    pub node_id: String,
    /// SIP domain served (room and account URIs use it).
    pub domain: String,
    /// Software version.
    pub version: String,
    /// Seconds since start.
    pub uptime_s: u64,
    /// Bound listeners.
    pub listeners: Vec<Listener>,
    /// Current counts.
    pub counts: Counts,
    /// Mixer load per shard.
    pub mixer_shards: Vec<ShardLoad>,
}

/// Whether one service is up, for `/healthz`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ComponentHealth {
    /// Service name (`sip`, `relay`, `mixer`).
    pub name: String,
    /// True when it is serving.
    pub up: bool,
    /// What is wrong when it is down.
    pub detail: Option<String>,
}

/// Node identity, health and metrics: supernode implements it over its services.
pub trait Node: Send + Sync + 'static {
    /// Identity, uptime, listeners, counts and mixer load.
    fn status(&self) -> NodeStatus;
    /// Health of each service (at least `sip`, `relay`, `mixer`).
    fn health(&self) -> Vec<ComponentHealth>;
    /// Prometheus text exposition of every service's counters (`supernode_<service>_…`),
    /// with HELP and TYPE lines; the admin appends its own `supernode_admin_…` counters.
    fn metrics(&self) -> String;
}

/// An API token as stored: only its hash is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApiToken {
    /// Public identifier (shown in listings, used to revoke).
    pub id: String,
    /// Operator's label for it.
    pub name: String,
    /// Hex SHA-256 of the secret token (see [`crate::auth::hash_token`]).
    #[serde(skip_serializing)]
    pub hash: String,
    /// Creation time, seconds since the Unix epoch.
    pub created_unix: u64,
}

/// Where the admin password hash and API tokens are stored (supernode: SQLite).
pub trait AdminAuth: Send + Sync + 'static {
    /// The argon2 PHC string of the admin password, or `None` when none is set.
    fn password_hash(&self) -> AdminResult<Option<String>>;
    /// Store a new argon2 PHC string (from [`crate::auth::hash_password`]).
    fn set_password_hash(&self, phc: &str) -> AdminResult<()>;
    /// All API tokens.
    fn tokens(&self) -> AdminResult<Vec<ApiToken>>;
    /// Store a token (from [`crate::auth::new_api_token`]).
    fn add_token(&self, token: &ApiToken) -> AdminResult<()>;
    /// Revoke a token by id; `NotFound` if absent.
    fn revoke_token(&self, id: &str) -> AdminResult<()>;
}
