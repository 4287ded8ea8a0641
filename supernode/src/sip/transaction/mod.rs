//! SIP transaction layer (RFC 3261 §17, as updated by RFC 6026 and RFC 4320), written as a
//! sans-IO state machine.
//!
//! # Why sans-IO
//! The layer never reads a clock, opens a socket or spawns anything. The driver (the transport
//! task) feeds it parsed messages and the current time, then drains what it produced:
//!
//! * [`TransactionLayer::poll_transmit`] — bytes to put on a [`Flow`];
//! * [`TransactionLayer::poll_event`] — what the transaction user (TU: registrar, proxy core,
//!   UAS) must see;
//! * [`TransactionLayer::poll_timeout`] — when to call [`TransactionLayer::handle_timeout`].
//!
//! This keeps every timer of §17 testable with a fake clock and lets one task own hundreds of
//! thousands of transactions without a tokio timer per transaction.
//!
//! # State machines
//! * INVITE server (§17.2.1 + RFC 6026 §7.1): Proceeding → Completed → Confirmed, or
//!   Proceeding → Accepted after a 2xx. A `100 Trying` is sent per [`TryingPolicy`].
//! * non-INVITE server (§17.2.2): Trying → Proceeding → Completed. The layer never sends a
//!   `100` to a non-INVITE request by itself (RFC 4320 §4.1).
//! * INVITE client (§17.1.1 + RFC 6026 §7.2): Calling → Proceeding → Completed (the layer
//!   generates the ACK for a non-2xx itself, §17.1.1.3) or → Accepted after a 2xx (Timer M),
//!   in which further 2xx responses go to the TU, which ACKs them (§13.2.2.4).
//! * non-INVITE client (§17.1.2): Trying → Proceeding → Completed.
//!
//! A transaction is removed the moment it reaches Terminated; every transaction the layer ever
//! created is announced with exactly one [`Event::Terminated`], so a TU can key its own state
//! on [`TransactionKey`] and clean it up there.
//!
//! # Responsibilities left to the TU
//! * Retransmitting a 2xx to INVITE until the ACK arrives (§13.3.1.4) — the server transaction
//!   stays in Accepted to absorb INVITE retransmissions and to hand ACKs over, and
//!   [`TransactionLayer::respond`] accepts further 2xx in that state so the TU can resend.
//! * Sending the ACK for a 2xx (use [`TransactionLayer::send_stateless`]).
//! * Proxy Timer C (§16.6 step 11): an INVITE client transaction in Proceeding has no timer of
//!   its own; the TU calls [`TransactionLayer::cancel`] or [`TransactionLayer::terminate`].
//! * Every server transaction must eventually get a final response from the TU; until then it
//!   stays alive (§17.2.1, §17.2.2 define no timeout for Trying/Proceeding).
//!
//! # Matching
//! Server transactions (§17.2.3): top-Via branch with the `z9hG4bK` cookie + sent-by + method,
//! ACK keyed as INVITE, CANCEL its own transaction. Requests whose branch lacks the cookie
//! (RFC 2543 peers) use the §17.2.3 fallback: Call-ID, CSeq number, From, Request-URI and the
//! whole top Via (the To tag is left out; see `matching::server_key` for why that is safe).
//! Responses to client transactions (§17.1.3): top-Via branch + CSeq method.
//!
//! # Performance
//! Transactions live in a slab addressed by [`TransactionKey`] (index + generation, `Copy`, no
//! hashing on the TU path); the match string is one shared `Arc<str>` used by both the hash
//! index and the slab entry. Requests are not kept: a server transaction keeps only the last
//! response as serialized [`Bytes`], a client transaction keeps the serialized request only
//! while it may need retransmitting (unreliable transports). Timers sit in one binary heap with
//! lazy deletion (see `timers`).
//!
//! Measured on the 2-core dev machine (release build, throwaway probe): a live UDP non-INVITE
//! server transaction in Completed costs ~650 bytes including its stored 296-byte `200 OK`
//! (160 B slab entry, ~80 B match string, ~40 B index slot, ~32 B timer entry, response
//! buffer); `handle_request` + `respond` for a REGISTER take ~1.5–1.8 µs, absorbing a
//! retransmission ~1.3 µs (mostly dropping the parsed request), Timer J expiry ~0.4 µs.

mod client;
mod matching;
mod server;
mod timers;

#[cfg(test)]
mod tests;

use bytes::Bytes;
use rsip::{Header, Headers, Request, Response, StatusCode};
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use timers::{Entry, TimerQueue};

/// Timer values of RFC 3261 §17 (Table 4), configurable because networks with known RTTs
/// (RFC 3261 §17.1.1.1 allows raising T1) and tests with a fake clock need other values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// RTT estimate; base of Timers A, B, E, F, G, H, J, L, M (64·T1 is the 32 s lifetime).
    pub t1: Duration,
    /// Cap on non-INVITE request and INVITE final-response retransmission intervals.
    pub t2: Duration,
    /// How long the network may hold a message: Timers I and K on unreliable transports.
    pub t4: Duration,
    /// Timer D: how long an INVITE client transaction lingers after a non-2xx to re-ACK
    /// retransmitted responses; RFC 3261 requires at least 32 s on unreliable transports.
    pub timer_d: Duration,
    /// When the INVITE server transaction sends `100 Trying` on its own (§17.2.1).
    pub invite_trying: TryingPolicy,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
            timer_d: Duration::from_secs(32),
            invite_trying: TryingPolicy::Immediately,
        }
    }
}

/// When the INVITE server transaction sends `100 Trying` without being asked.
///
/// §17.2.1 requires a 100 unless the TU will respond within 200 ms; a proxy that forwards
/// INVITEs downstream cannot know that, so the default is to send it at once. A UAS that
/// usually answers fast can choose [`TryingPolicy::After`] to save the extra datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryingPolicy {
    /// Send `100 Trying` as soon as the INVITE creates the transaction.
    Immediately,
    /// Send it only if the TU has sent no response after this long (RFC 3261 suggests 200 ms).
    After(Duration),
    /// Never send it automatically (the TU takes responsibility).
    Never,
}

/// Transport protocol of a [`Flow`]; the layer only cares whether it is reliable, which turns
/// retransmissions off and sets Timers D, I, J, K to zero (§17.1.1.2, §17.2.1, §17.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// UDP: unreliable, so the layer retransmits.
    Udp,
    /// TCP: reliable.
    Tcp,
    /// TLS over TCP: reliable.
    Tls,
}

impl Transport {
    /// Whether the transport delivers reliably, which decides every retransmission rule of §17.
    pub fn is_reliable(self) -> bool {
        !matches!(self, Transport::Udp)
    }
}

/// Where a message came from or goes to. Opaque to the layer except for reliability; the
/// driver uses it to pick the socket or connection (§18.2.2 response routing is the driver's
/// job: a server transaction answers on the flow its request arrived on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow {
    /// Transport protocol.
    pub transport: Transport,
    /// Remote address (for UDP, the source address of the request, RFC 3581 style).
    pub remote: SocketAddr,
    /// Driver-assigned connection id for connection-oriented transports.
    pub connection: Option<u64>,
}

impl Flow {
    /// Whether messages on this flow need retransmission by the layer.
    pub fn is_reliable(&self) -> bool {
        self.transport.is_reliable()
    }
}

/// Handle of a live transaction, handed to the TU in events and used to respond, cancel or
/// correlate (e.g. a proxy maps a server key to its client keys). `Copy` and hash-free to look
/// up: it addresses the slab directly, and the generation makes a key of a terminated
/// transaction harmlessly unknown instead of aliasing a newer one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransactionKey {
    index: u32,
    generation: u32,
}

/// State of a live transaction (RFC 3261 §17 figures 5–8, RFC 6026 figures 5–7), exposed so a
/// TU can decide e.g. whether a CANCEL still applies (§9.2: only while Proceeding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// INVITE client: request sent, no response yet.
    Calling,
    /// Non-INVITE client or server: no provisional response yet.
    Trying,
    /// A provisional response was sent or received.
    Proceeding,
    /// A final (for INVITE: non-2xx) response was sent or received; absorbing retransmissions.
    Completed,
    /// INVITE server: ACK for the non-2xx received; absorbing further ACKs (Timer I).
    Confirmed,
    /// INVITE (RFC 6026): a 2xx was sent or received; Timer L (server) or M (client) running.
    Accepted,
    /// CANCEL client transaction created before the INVITE got a provisional response; it is
    /// sent when one arrives (§9.1: a CANCEL must not be sent before that).
    Waiting,
}

/// What the TU must learn from the layer. Returned by [`TransactionLayer::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A request created a new server transaction; the TU must answer it with
    /// [`TransactionLayer::respond`].
    Request {
        /// Server transaction to respond on.
        key: TransactionKey,
        /// The request, handed over whole: the layer keeps none of it.
        request: Request,
        /// Flow it arrived on.
        flow: Flow,
    },
    /// A CANCEL created a new (non-INVITE) server transaction. The TU answers it (200, or 481
    /// when `invite` is `None`) and, per §9.2, answers the INVITE with 487.
    Cancel {
        /// The CANCEL's own server transaction.
        key: TransactionKey,
        /// The CANCEL request.
        request: Request,
        /// Flow it arrived on.
        flow: Flow,
        /// The live INVITE server transaction it targets, found by the §9.2 matching rules.
        invite: Option<TransactionKey>,
    },
    /// An ACK the TU must handle: the ACK for a 2xx (its own transaction per §17, matching no
    /// server transaction), or one that an INVITE server transaction in Accepted passes up
    /// (RFC 6026 §7.1). A proxy forwards it statelessly; a UAS stops retransmitting its 2xx.
    Ack {
        /// The ACK.
        request: Request,
        /// Flow it arrived on.
        flow: Flow,
        /// INVITE server transaction in Accepted that it matched, if any (only RFC 2543
        /// peers reuse the INVITE branch for a 2xx ACK).
        invite: Option<TransactionKey>,
    },
    /// A response for a client transaction: provisional or final, plus retransmitted or forked
    /// 2xx responses while in Accepted (RFC 6026 §7.2), so the TU can ACK each of them.
    Response {
        /// Client transaction it belongs to.
        key: TransactionKey,
        /// The response.
        response: Response,
    },
    /// A response that matched no client transaction. §18.1.2 requires passing it to the core:
    /// a proxy forwards such 2xx statelessly, a UA may ACK a late 2xx.
    StrayResponse {
        /// The response.
        response: Response,
        /// Flow it arrived on.
        flow: Flow,
    },
    /// Timer B or F (client: no final response), H (INVITE server: the ACK never came), or
    /// the 64·T1 give-up after a CANCEL got no final response for the INVITE (§9.1). A proxy
    /// treats a client timeout as a 408 (§16.7 step 2). [`Event::Terminated`] follows.
    Timeout {
        /// Transaction that timed out.
        key: TransactionKey,
    },
    /// The driver reported a send failure ([`TransactionLayer::handle_transport_error`]);
    /// §17.1.4 and §17.2.4 treat it like a timeout. [`Event::Terminated`] follows.
    TransportError {
        /// Transaction whose message could not be sent.
        key: TransactionKey,
    },
    /// The transaction is gone; its key will never appear again. Emitted exactly once per
    /// transaction so the TU can drop whatever it keyed on it.
    Terminated {
        /// Transaction that ended.
        key: TransactionKey,
    },
}

/// Serialized message for the driver to send. Returned by [`TransactionLayer::poll_transmit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Transaction that sent it, so a send failure can be reported back through
    /// [`TransactionLayer::handle_transport_error`]; `None` for stateless sends.
    pub key: Option<TransactionKey>,
    /// Where to send it.
    pub flow: Flow,
    /// The wire bytes; retransmissions share the stored buffer instead of re-serializing.
    pub message: Bytes,
}

/// Why the layer refused a TU call or an incoming message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransactionError {
    /// The key names no live transaction (it terminated, or never existed).
    #[error("no live transaction for this key")]
    UnknownTransaction,
    /// The request lacks a header a transaction needs (top Via; CSeq for an INVITE, whose ACK
    /// and CANCEL reuse its number).
    #[error("request lacks a usable {0} header")]
    MalformedRequest(&'static str),
    /// Status codes outside 100–699 are not SIP responses (§7.2).
    #[error("status code {0} is outside 100-699")]
    InvalidStatus(u16),
    /// The operation is not allowed in the transaction's current state (e.g. a second final
    /// response, which §17.2 says must be discarded).
    #[error("{operation} is not allowed in state {state:?}")]
    InvalidState {
        /// Current state.
        state: State,
        /// What was attempted.
        operation: &'static str,
    },
    /// The operation needs another kind of transaction (e.g. `respond` on a client key).
    #[error("this operation needs a {0} transaction")]
    WrongKind(&'static str),
    /// Client requests must carry a top Via whose branch has the `z9hG4bK` cookie, since that
    /// branch is the client transaction's identity (§8.1.1.7, §17.1.3).
    #[error("top Via lacks a branch starting with z9hG4bK")]
    MissingBranch,
    /// A client transaction with the same branch and method is already live.
    #[error("a client transaction with this branch and method already exists")]
    DuplicateTransaction,
    /// An ACK is not a client transaction: the one for a non-2xx is sent by the INVITE
    /// transaction itself, the one for a 2xx via [`TransactionLayer::send_stateless`].
    #[error("ACK is not sent through a client transaction")]
    AckIsNotATransaction,
    /// [`TransactionLayer::cancel`] was already called for this INVITE.
    #[error("this INVITE transaction was already cancelled")]
    AlreadyCancelled,
}

/// Kind of transaction: picks the state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    InviteServer,
    NonInviteServer,
    InviteClient,
    NonInviteClient,
}

/// One live transaction. Kept small because hundreds of thousands are alive at once.
#[derive(Debug)]
struct Txn {
    /// Match string, shared with the hash index so it is stored once.
    match_key: Arc<str>,
    flow: Flow,
    /// Server: last response sent (retransmitted on request retransmissions and Timer G).
    /// Client: the request while it may be retransmitted, then the ACK (INVITE Completed).
    last: Option<Bytes>,
    /// Timer A/E/G, or the delayed `100 Trying`.
    retransmit_at: Option<Instant>,
    /// Timer B/D/F/H/I/J/K/L/M or the §9.1 CANCEL give-up timer.
    expire_at: Option<Instant>,
    /// Only for INVITE client transactions: what ACK and CANCEL are built from.
    invite: Option<Box<InviteClientData>>,
    kind: Kind,
    state: State,
    /// Retransmissions fired so far; the interval is derived from it instead of stored.
    retransmits: u8,
    /// INVITE server with [`TryingPolicy::After`]: `last` holds a 100 not yet sent.
    trying_pending: bool,
}

/// What an INVITE client transaction needs beyond the common fields.
#[derive(Debug)]
struct InviteClientData {
    /// The INVITE reduced to what ACK (§17.1.1.3) and CANCEL (§9.1) copy: Request-URI, top
    /// Via, Route, From, To, Call-ID.
    template: Request,
    /// CSeq number shared by the INVITE, its ACK and its CANCEL.
    cseq: u32,
    /// CANCEL client transaction created by [`TransactionLayer::cancel`].
    cancel: Option<TransactionKey>,
}

impl Txn {
    fn new(match_key: Arc<str>, kind: Kind, state: State, flow: Flow) -> Self {
        Txn {
            match_key,
            flow,
            last: None,
            retransmit_at: None,
            expire_at: None,
            invite: None,
            kind,
            state,
            retransmits: 0,
            trying_pending: false,
        }
    }
}

#[derive(Debug)]
struct SlabEntry {
    generation: u32,
    txn: Option<Txn>,
}

/// The transaction layer of one SIP element: every server and client transaction, their timers
/// and the queues of outgoing messages and TU events.
#[derive(Debug)]
pub struct TransactionLayer {
    config: Config,
    slab: Vec<SlabEntry>,
    free: Vec<u32>,
    index: HashMap<Arc<str>, u32>,
    timers: TimerQueue,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    /// Reused buffer for building match keys, so lookups of retransmissions do not allocate.
    key_buf: String,
    /// Reused serialization buffer; stored messages are copied out at their exact size.
    wire_buf: Vec<u8>,
    /// Incoming messages that could not be matched (see [`Self::dropped`]).
    dropped: u64,
}

impl TransactionLayer {
    /// Creates an empty layer with the given timer configuration.
    pub fn new(config: Config) -> Self {
        TransactionLayer {
            config,
            slab: Vec::new(),
            free: Vec::new(),
            index: HashMap::new(),
            timers: TimerQueue::default(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            key_buf: String::with_capacity(128),
            wire_buf: Vec::with_capacity(2048),
            dropped: 0,
        }
    }

    /// Feeds a request received from the network: creates a server transaction (announced by
    /// [`Event::Request`] or [`Event::Cancel`]), absorbs a retransmission (re-sending the last
    /// response, §17.2.1/§17.2.2), or passes an ACK up ([`Event::Ack`]).
    ///
    /// A request that cannot be matched at all (no parsable top Via; for RFC 2543 requests no
    /// CSeq/Call-ID/From) is dropped and counted in [`Self::dropped`]: rejecting malformed
    /// messages with 400 belongs to the parsing stage in front of this layer.
    pub fn handle_request(&mut self, request: Request, flow: Flow, now: Instant) {
        if self.server_request(request, flow, now).is_err() {
            self.dropped += 1;
        }
        self.prune_timers();
    }

    /// Feeds a response received from the network to its client transaction (§17.1.3), or
    /// hands it up as [`Event::StrayResponse`] when none matches (§18.1.2). Responses without a
    /// top Via or CSeq, or with a status outside 100–699, cannot be routed anywhere and are
    /// dropped and counted in [`Self::dropped`].
    pub fn handle_response(&mut self, response: Response, flow: Flow, now: Instant) {
        if self.client_response(response, flow, now).is_err() {
            self.dropped += 1;
        }
        self.prune_timers();
    }

    /// Messages dropped by [`Self::handle_request`] / [`Self::handle_response`] because they
    /// could not be matched, for metrics (a rising count points at a broken peer or parser).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The TU answers a server transaction. Provisional responses keep it in Proceeding; a
    /// final one completes it (a 2xx to INVITE moves it to Accepted, where further 2xx — the
    /// TU's own §13.3.1.4 retransmissions or other forks' answers — are still accepted).
    pub fn respond(
        &mut self,
        key: &TransactionKey,
        response: Response,
        now: Instant,
    ) -> Result<(), TransactionError> {
        let result = self.server_respond(*key, response, now);
        self.prune_timers();
        result
    }

    /// Starts a client transaction for `request`, which must already carry the TU's top Via
    /// with a fresh branch (see [`new_branch`]); the request is serialized and sent at once.
    pub fn send_request(
        &mut self,
        request: Request,
        flow: Flow,
        now: Instant,
    ) -> Result<TransactionKey, TransactionError> {
        let result = self.client_send(request, flow, now);
        self.prune_timers();
        result
    }

    /// Cancels an INVITE client transaction (§9.1): builds the CANCEL (same Request-URI, Call-ID,
    /// From, To, CSeq number and top Via/branch, plus Route) and starts it as its own non-INVITE
    /// client transaction, whose key is returned. Before any provisional response the CANCEL
    /// waits ([`State::Waiting`]) and is sent on the first 1xx, as §9.1 requires; it is dropped
    /// if the INVITE ends first. If no final response arrives within 64·T1 after the CANCEL is
    /// sent, the INVITE transaction is destroyed with [`Event::Timeout`] (§9.1).
    pub fn cancel(
        &mut self,
        key: &TransactionKey,
        now: Instant,
    ) -> Result<TransactionKey, TransactionError> {
        let result = self.client_cancel(*key, now);
        self.prune_timers();
        result
    }

    /// The driver could not send a message of this transaction (§17.1.4, §17.2.4): the TU gets
    /// [`Event::TransportError`] and the transaction terminates. Unknown keys are ignored,
    /// since a failure may be reported after the transaction already ended.
    pub fn handle_transport_error(&mut self, key: &TransactionKey, now: Instant) {
        // Time does not influence this transition; it is taken so every input has the same shape.
        let _ = now;
        if self.txn(key).is_some() {
            self.events.push_back(Event::TransportError { key: *key });
            self.terminate_txn(*key);
        }
        self.prune_timers();
    }

    /// Destroys a transaction at the TU's request without sending anything, e.g. a proxy
    /// giving up on a client transaction when Timer C fires (§16.8). [`Event::Terminated`] is
    /// still emitted. Unknown keys are ignored.
    pub fn terminate(&mut self, key: &TransactionKey) {
        self.terminate_txn(*key);
        self.prune_timers();
    }

    /// Sends a message outside any transaction: the ACK for a 2xx (§13.2.2.4), a 2xx
    /// retransmission by a UAS core, or a proxy's stateless forwarding (§16.11, §16.7 step 10
    /// for stray 2xx). Queued like every other output so the driver has one send path.
    pub fn send_stateless(&mut self, message: &rsip::SipMessage, flow: Flow) {
        let message = match message {
            rsip::SipMessage::Request(r) => encode_request(&mut self.wire_buf, r),
            rsip::SipMessage::Response(r) => encode_response(&mut self.wire_buf, r),
        };
        self.transmits.push_back(Transmit {
            key: None,
            flow,
            message,
        });
    }

    /// Fires every timer due at `now`. Call it when [`Self::poll_timeout`] says so (calling it
    /// early or late is harmless: nothing fires early, late timers fire now).
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(entry) = self.timers.pop_due(now) {
            let key = TransactionKey {
                index: entry.index,
                generation: entry.generation,
            };
            let Some(txn) = self.txn_mut(&key) else {
                continue;
            };
            let armed = match entry.slot {
                timers::Slot::Retransmit => &mut txn.retransmit_at,
                timers::Slot::Expire => &mut txn.expire_at,
            };
            if *armed != Some(entry.at) {
                continue; // cancelled or re-armed since: lazy deletion
            }
            *armed = None;
            match entry.slot {
                timers::Slot::Retransmit => self.on_retransmit_timer(key, now),
                timers::Slot::Expire => self.on_expire_timer(key),
            }
        }
        self.prune_timers();
    }

    /// Next message to send, if any. Output is queued rather than sent so the layer stays free
    /// of sockets; the driver drains this after every input.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Next event for the TU, if any. Queued for the same reason as transmits: the TU runs
    /// after the layer has finished its own state change, never re-entrantly inside it.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Earliest armed timer deadline: O(1), since cancelled timers at the top of the heap are
    /// pruned after every mutating call.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|e| e.at)
    }

    /// Number of live transactions (server and client), for metrics and leak checks.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether no transaction is live, e.g. to know when a draining node may shut down.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Current state of a live transaction, e.g. for a proxy deciding whether a CANCEL applies.
    pub fn state(&self, key: &TransactionKey) -> Option<State> {
        self.txn(key).map(|t| t.state)
    }

    /// The flow a transaction sends on (for server transactions, the one its request came on),
    /// so a TU holding only a key can address stateless messages (e.g. a UAS's 2xx
    /// retransmissions) to the same peer.
    pub fn flow(&self, key: &TransactionKey) -> Option<Flow> {
        self.txn(key).map(|t| t.flow)
    }

    /// The configuration in force, so the TU derives its own timers (2xx retransmission with
    /// T1/T2, §13.3.1.4; proxy Timer C) from the same values.
    pub fn config(&self) -> &Config {
        &self.config
    }

    // ---- slab, index and timer plumbing shared by server.rs and client.rs ----

    fn txn(&self, key: &TransactionKey) -> Option<&Txn> {
        let entry = self.slab.get(key.index as usize)?;
        if entry.generation == key.generation {
            entry.txn.as_ref()
        } else {
            None
        }
    }

    fn txn_mut(&mut self, key: &TransactionKey) -> Option<&mut Txn> {
        let entry = self.slab.get_mut(key.index as usize)?;
        if entry.generation == key.generation {
            entry.txn.as_mut()
        } else {
            None
        }
    }

    fn key_at(&self, index: u32) -> TransactionKey {
        TransactionKey {
            index,
            generation: self.slab[index as usize].generation,
        }
    }

    /// Looks up the transaction whose match string is in `key_buf`.
    fn lookup(&self) -> Option<TransactionKey> {
        self.index
            .get(self.key_buf.as_str())
            .map(|&index| self.key_at(index))
    }

    /// Inserts a transaction under the match string currently in `key_buf`.
    fn insert(&mut self, kind: Kind, state: State, flow: Flow) -> TransactionKey {
        let match_key: Arc<str> = Arc::from(self.key_buf.as_str());
        let txn = Txn::new(match_key.clone(), kind, state, flow);
        let index = match self.free.pop() {
            Some(index) => {
                self.slab[index as usize].txn = Some(txn);
                index
            }
            None => {
                // Slab indices are u32 to keep keys and timer entries small; 4 billion
                // concurrent transactions cannot fit in memory anyway.
                let index = u32::try_from(self.slab.len()).unwrap_or(u32::MAX);
                self.slab.push(SlabEntry {
                    generation: 0,
                    txn: Some(txn),
                });
                index
            }
        };
        self.index.insert(match_key, index);
        self.key_at(index)
    }

    /// Removes a transaction and announces it. A CANCEL still waiting for its INVITE's first
    /// provisional response dies with the INVITE: there is nothing left to cancel.
    fn terminate_txn(&mut self, key: TransactionKey) {
        let Some(entry) = self.slab.get_mut(key.index as usize) else {
            return;
        };
        if entry.generation != key.generation {
            return;
        }
        let Some(txn) = entry.txn.take() else {
            return;
        };
        entry.generation = entry.generation.wrapping_add(1);
        self.free.push(key.index);
        self.index.remove(&*txn.match_key);
        self.events.push_back(Event::Terminated { key });
        if let Some(cancel) = txn.invite.and_then(|i| i.cancel) {
            if self.state(&cancel) == Some(State::Waiting) {
                self.terminate_txn(cancel);
            }
        }
    }

    fn arm(&mut self, key: TransactionKey, slot: timers::Slot, at: Instant) {
        let Some(txn) = self.txn_mut(&key) else {
            return;
        };
        match slot {
            timers::Slot::Retransmit => txn.retransmit_at = Some(at),
            timers::Slot::Expire => txn.expire_at = Some(at),
        }
        self.timers.push(Entry {
            at,
            index: key.index,
            generation: key.generation,
            slot,
        });
    }

    fn transmit(&mut self, key: TransactionKey, flow: Flow, message: Bytes) {
        self.transmits.push_back(Transmit {
            key: Some(key),
            flow,
            message,
        });
    }

    /// Re-sends the stored message of a transaction, if it has one.
    fn retransmit_last(&mut self, key: TransactionKey) {
        if let Some(txn) = self.txn(&key) {
            if let Some(last) = txn.last.clone() {
                let flow = txn.flow;
                self.transmit(key, flow, last);
            }
        }
    }

    fn on_retransmit_timer(&mut self, key: TransactionKey, now: Instant) {
        match self.txn(&key).map(|t| t.kind) {
            Some(Kind::InviteServer | Kind::NonInviteServer) => {
                self.server_retransmit_timer(key, now)
            }
            Some(Kind::InviteClient | Kind::NonInviteClient) => {
                self.client_retransmit_timer(key, now)
            }
            None => {}
        }
    }

    fn on_expire_timer(&mut self, key: TransactionKey) {
        match self.txn(&key).map(|t| t.kind) {
            Some(Kind::InviteServer | Kind::NonInviteServer) => self.server_expire_timer(key),
            Some(Kind::InviteClient | Kind::NonInviteClient) => self.client_expire_timer(key),
            None => {}
        }
    }

    /// Pops cancelled timers off the top so [`Self::poll_timeout`] reports a live deadline.
    fn prune_timers(&mut self) {
        let slab = &self.slab;
        self.timers.prune(|e| {
            let Some(entry) = slab.get(e.index as usize) else {
                return true;
            };
            let Some(txn) = entry
                .txn
                .as_ref()
                .filter(|_| entry.generation == e.generation)
            else {
                return true;
            };
            let armed = match e.slot {
                timers::Slot::Retransmit => txn.retransmit_at,
                timers::Slot::Expire => txn.expire_at,
            };
            armed != Some(e.at)
        });
    }

    /// 64·T1: Timers B, F, H, J, L, M and the §9.1 CANCEL give-up.
    fn timer_64t1(&self) -> Duration {
        self.config.t1.saturating_mul(64)
    }

    /// Retransmission interval after `fired` retransmissions: T1·2^fired, capped at `cap`
    /// (T2 for E and G, none for A). At least 1 ms so a zero T1 cannot spin the timer loop.
    fn backoff(&self, fired: u8, cap: Option<Duration>) -> Duration {
        let doubled = self
            .config
            .t1
            .saturating_mul(1u32 << u32::from(fired.min(20)));
        let capped = match cap {
            Some(cap) => doubled.min(cap),
            None => doubled,
        };
        capped.max(Duration::from_millis(1))
    }

    /// Number of entries in the timer heap, live or stale (for tests and metrics).
    #[cfg(test)]
    fn timer_entries(&self) -> usize {
        self.timers.len()
    }
}

/// Builds a fresh RFC 3261 branch (`z9hG4bK` + 64 random-looking bits + a counter): unique
/// across space (random per process) and time (counter), as §8.1.1.7 requires of the branch
/// that identifies a client transaction. The TU puts it in the top Via before
/// [`TransactionLayer::send_request`].
pub fn new_branch() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static KEYS: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // RandomState is seeded from the OS, so the hash of the counter is unpredictable, while the
    // appended counter keeps branches of one process distinct even on a hash collision.
    let mut hasher = KEYS
        .get_or_init(std::collections::hash_map::RandomState::new)
        .build_hasher();
    hasher.write_u64(n);
    format!("{}{:016x}{:x}", matching::MAGIC_COOKIE, hasher.finish(), n)
}

/// Builds a response to `request` carrying the headers §8.2.6.2 requires to be copied (all
/// Via in order, From, To, Call-ID, CSeq; plus Timestamp for a 100, §8.2.6.1) and an empty
/// body. The layer uses it for `100 Trying`; a registrar or UAS starts its responses from it
/// and adds the To tag, Contact, Record-Route etc. itself.
pub fn response_for(request: &Request, status: StatusCode) -> Response {
    let is_trying = status.code() == 100;
    let mut headers: Vec<Header> = request
        .headers
        .iter()
        .filter(|h| match h {
            Header::Via(_) | Header::From(_) | Header::To(_) | Header::CallId(_) => true,
            Header::CSeq(_) => true,
            Header::Timestamp(_) => is_trying,
            // rsip leaves compact forms (§7.3.3) as unknown headers.
            Header::Other(name, _) => ["v", "f", "t", "i"]
                .iter()
                .any(|c| name.eq_ignore_ascii_case(c)),
            _ => false,
        })
        .cloned()
        .collect();
    headers.push(rsip::headers::ContentLength::default().into());
    Response {
        status_code: status,
        version: rsip::Version::V2,
        headers: Headers::from(headers),
        body: Vec::new(),
    }
}

/// Serializes a response once into exact-size [`Bytes`] (rsip's `Display` builds a `Vec` of
/// header strings and lossily re-encodes the body; this writes straight into a reused buffer).
fn encode_response(buf: &mut Vec<u8>, response: &Response) -> Bytes {
    buf.clear();
    // Writing into a Vec cannot fail.
    let _ = write!(buf, "{} {}\r\n", response.version, response.status_code);
    encode_tail(buf, &response.headers, &response.body)
}

/// Serializes a request once into exact-size [`Bytes`].
fn encode_request(buf: &mut Vec<u8>, request: &Request) -> Bytes {
    buf.clear();
    let _ = write!(
        buf,
        "{} {} {}\r\n",
        matching::method_name(request.method),
        request.uri,
        request.version
    );
    encode_tail(buf, &request.headers, &request.body)
}

fn encode_tail(buf: &mut Vec<u8>, headers: &Headers, body: &[u8]) -> Bytes {
    for header in headers.iter() {
        let _ = write!(buf, "{header}\r\n");
    }
    buf.extend_from_slice(b"\r\n");
    buf.extend_from_slice(body);
    Bytes::copy_from_slice(buf)
}
