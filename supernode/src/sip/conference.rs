//! The conference UAS: answers `sip:ROOM@DOMAIN`, negotiates audio (see [`sdp`]), puts
//! each caller's RTP leg into the room's mixer room, and owns the dialogs (RFC 3261 §12,
//! §13.3, §14, §15) of every conference call of the node.
//!
//! # Sans-IO
//! [`Conference`] reads no clock, owns no socket and never calls the mixer: requests,
//! mixer events and the time go in, [`Action`]s come out, and [`Conference::poll_timeout`]
//! says when [`Conference::handle_timeout`] is next due. The mixer's handle assigns room
//! and leg ids itself, so the two commands that create something are answered by the
//! driver through [`Conference::room_created`] and [`Conference::leg_added`]; both may
//! return further actions, so the driver runs a work queue:
//!
//! ```ignore
//! let mut queue: VecDeque<Action> = conference.handle_request(key, &req, flow, room, now).into();
//! while let Some(action) = queue.pop_front() {
//!     match action {
//!         Action::Respond { key, response } => { let _ = transactions.respond(&key, response, now); }
//!         Action::Retransmit { response, flow } =>
//!             transactions.send_stateless(&SipMessage::Response(response), flow),
//!         Action::Request { request, flow } => { let _ = transactions.send_request(request, flow, now); }
//!         Action::Mixer(MixerCommand::CreateRoom { token, config }) => queue.extend(
//!             conference.room_created(token, mixer.create_room(config).map_err(|e| e.to_string()), now)),
//!         Action::Mixer(MixerCommand::AddLeg { dialog, room, config }) => {
//!             // One socket per dialog, bound on first use and kept until ReleaseMedia:
//!             // the mixer gets a clone, so moving the leg keeps its port.
//!             let result = media.socket(dialog).and_then(|s| s.try_clone())
//!                 .map_err(|e| e.to_string())
//!                 .and_then(|s| mixer.add_leg(room, config, s).map_err(|e| e.to_string()));
//!             queue.extend(conference.leg_added(dialog, result, now));
//!         }
//!         Action::Mixer(MixerCommand::ReleaseMedia { dialog }) => media.release(dialog),
//!         Action::Mixer(other) => { /* remove_leg, set_held, destroy_room */ }
//!     }
//! }
//! ```
//!
//! # Media ports
//! The driver binds one UDP socket per dialog from the RTP port range the first time an
//! `AddLeg` names the dialog, hands the mixer a `try_clone` of it, and keeps its own copy
//! until `ReleaseMedia`. Removing a leg then never frees the port, so a leg moved from
//! the PIN lobby into the room, or re-added after a codec change, keeps the port the
//! SDP answer announced. The 200 OK is sent from [`Conference::leg_added`], when the
//! port is known; the driver runs that call synchronously, so the caller sees no delay.
//!
//! # What is supported
//! * An initial INVITE must carry an SDP offer: one without gets 488 (offers in the 2xx
//!   are only made for re-INVITEs without SDP, whose answer then comes in the ACK).
//! * Unknown room 404, full room (`max_legs`, PIN lobby callers included) 486, no common
//!   codec or SRTP-only offer 488 with a Warning, unsupported `Require` 420.
//! * re-INVITE: hold (`sendonly`, `inactive`, `c=0.0.0.0`) and resume become
//!   `SetHeld`; a codec, payload type or address change re-adds the leg; target refresh.
//! * PIN rooms: the caller's leg first sits alone in a private lobby room of the mixer
//!   (it neither hears the room nor is heard); digits come as RFC 4733 events from the
//!   mixer or as SIP INFO (`application/dtmf-relay`, `application/dtmf`). A try ends
//!   with `#` or when as many digits as the PIN has were typed; `*` clears the entry.
//!   The right PIN moves the leg into the room; the third wrong try or the PIN timeout
//!   hangs up. While waiting, the caller hears the lobby's prompt: a 425 Hz beep each second.
//! * 2xx retransmission until the ACK (§13.3.1.4): T1 doubling to T2, BYE after 64·T1.
//! * BYE on RTP timeout (the mixer's `LegTimedOut`), wrong PIN, and [`Conference::shutdown`].
//!
//! Not supported: strict routing (a route set is used as loose routes), early media,
//! reliable provisionals (`100rel`), UPDATE, listen-only callers that send no RTP at all
//! (the mixer times them out like silent ones).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use mixer::{
    CodecKind, EncoderSettings, LegConfig, LegHandle, LegId, MixerEvent, RoomConfig, RoomEvent,
    RoomId,
};
use rsip::headers::UntypedHeader;
use rsip::{Header, Method, Request, Response};

use crate::sip::headers::{split_list, NameAddr};
use crate::sip::message::{self, cseq, first, reply, tag, values, Name, SERVER};
use crate::sip::sdp::{self, Direction, LocalSession, Negotiated, SdpError, Session};
use crate::sip::transaction::{new_branch, Flow, TransactionKey, Transport};
use crate::store::RoomRecord;

/// Methods the conference UAS answers, for Allow.
pub const ALLOW: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO";

/// Bodies the conference accepts, for Accept.
pub const ACCEPT: &str = "application/sdp, application/dtmf-relay, application/dtmf";

/// Settings of the conference UAS.
#[derive(Debug, Clone, PartialEq)]
pub struct ConferenceConfig {
    /// Our SIP address as peers must reach it: the Contact of our 2xx and the sent-by of
    /// the Via of our BYEs (the advertised address when the node binds 0.0.0.0).
    pub sip_addr: SocketAddr,
    /// The IP written into SDP answers (`c=` and `o=`): the advertised media address.
    pub media_ip: IpAddr,
    /// RFC 3261 T1, the start of the 2xx retransmission interval (64·T1 is the give-up).
    pub t1: Duration,
    /// RFC 3261 T2, the cap of the 2xx retransmission interval.
    pub t2: Duration,
    /// Wrong PINs a caller may type before being hung up on.
    pub max_pin_tries: u32,
    /// How long a caller may take, from the 200 OK, to type the right PIN.
    pub pin_timeout: Duration,
    /// Settings of the mixer rooms created (RTP timeout, speaker selection). Its
    /// `max_legs` is only the mixer's own bound: each room's `max_legs` from the store
    /// is enforced here, so an admin raising it takes effect for a running room.
    pub room: RoomConfig,
    /// Opus encoder settings of every leg.
    pub encoder: EncoderSettings,
}

impl ConferenceConfig {
    /// The defaults (RFC 3261 timers, 3 PIN tries, 60 s to type the PIN) for a node
    /// reachable at `sip_addr` with media on `media_ip`.
    pub fn new(sip_addr: SocketAddr, media_ip: IpAddr) -> Self {
        ConferenceConfig {
            sip_addr,
            media_ip,
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            max_pin_tries: 3,
            pin_timeout: Duration::from_secs(60),
            room: RoomConfig::default(),
            encoder: EncoderSettings::default(),
        }
    }
}

/// Names one conference dialog in mixer commands and their replies, so the driver can
/// keep the dialog's RTP socket under it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DialogId(u64);

impl DialogId {
    /// A dialog id for the driver's own tests (the conference makes the real ones).
    #[cfg(test)]
    pub(crate) fn for_tests(n: u64) -> Self {
        DialogId(n)
    }
}

impl std::fmt::Display for DialogId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A conference dialog as an operator sees it (the admin's live room view).
#[derive(Debug, Clone, PartialEq)]
pub struct DialogInfo {
    /// The dialog.
    pub id: DialogId,
    /// The room it called.
    pub room: String,
    /// Who called: the INVITE's From.
    pub remote: String,
    /// The negotiated codec.
    pub codec: CodecKind,
    /// Its leg in the room's mix, once it is there (not while joining or in the PIN
    /// lobby).
    pub leg: Option<(RoomId, LegId)>,
}

/// Names a mixer room the conference asked for, until the driver reports its
/// [`RoomId`] through [`Conference::room_created`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomToken(u64);

/// What the conference wants the mixer to do. The driver calls the `mixer::Mixer`
/// handle; the conference never touches it, so it stays testable.
#[derive(Debug, Clone, PartialEq)]
pub enum MixerCommand {
    /// `Mixer::create_room(config)`, then [`Conference::room_created`] with the result.
    CreateRoom {
        /// Passed back with the result.
        token: RoomToken,
        /// The room's settings.
        config: RoomConfig,
    },
    /// `Mixer::destroy_room`.
    DestroyRoom {
        /// The room.
        room: RoomId,
    },
    /// `Mixer::add_leg(room, config, socket)` with (a clone of) the dialog's RTP socket,
    /// bound from the RTP port range on first use; then [`Conference::leg_added`].
    AddLeg {
        /// Whose socket to use, and passed back with the result.
        dialog: DialogId,
        /// The room to join.
        room: RoomId,
        /// What was negotiated.
        config: LegConfig,
    },
    /// `Mixer::remove_leg`.
    RemoveLeg {
        /// The room.
        room: RoomId,
        /// The leg.
        leg: LegId,
    },
    /// `Mixer::set_held`.
    SetHeld {
        /// The room.
        room: RoomId,
        /// The leg.
        leg: LegId,
        /// On hold (not mixed, sent nothing, no RTP timeout) or back.
        held: bool,
    },
    /// The dialog is over: close its RTP socket (idempotent; it may have none).
    ReleaseMedia {
        /// The dialog.
        dialog: DialogId,
    },
}

/// What the conference asks its caller to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Answer a server transaction: `TransactionLayer::respond(&key, response, now)`.
    Respond {
        /// The transaction the request came in.
        key: TransactionKey,
        /// The response.
        response: Response,
    },
    /// Retransmit a 2xx to INVITE outside its transaction (§13.3.1.4):
    /// `TransactionLayer::send_stateless`.
    Retransmit {
        /// The 2xx, byte-for-byte the one sent first.
        response: Response,
        /// Where to send it.
        flow: Flow,
    },
    /// Send an in-dialog request (a BYE) as a new client transaction:
    /// `TransactionLayer::send_request(request, flow, now)`. Its responses need no
    /// routing back: the conference forgot the dialog when it sent the BYE.
    Request {
        /// The request, with a fresh Via branch.
        request: Request,
        /// The dialog's flow.
        flow: Flow,
    },
    /// A mixer command for the driver.
    Mixer(MixerCommand),
}

type Actions = Vec<Action>;

/// A mixer room's life as the conference sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MixerRoom {
    /// Asked for, id not reported yet.
    Creating(RoomToken),
    /// Exists in the mixer.
    Ready(RoomId),
}

/// A conference room of the store with dialogs in it.
#[derive(Debug)]
struct ConfRoom {
    /// Dialogs holding a seat: waiting for their leg, in the PIN lobby, or in the room.
    seats: usize,
    /// The mixer room, once somebody was admitted.
    mixer: Option<MixerRoom>,
}

/// Who asked for a room, so a late creation report finds its owner (or destroys the
/// room when the owner is gone).
#[derive(Debug, Clone, PartialEq, Eq)]
enum TokenOwner {
    Room(String),
    Lobby(DialogId),
}

/// Where a dialog's leg belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// Alone in a private mixer room until the PIN is typed.
    Lobby,
    /// In the conference room's mix.
    Room,
}

/// A dialog's mixer leg.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Leg {
    /// Waiting for its mixer room to be created.
    Waiting,
    /// `AddLeg` sent, the result not reported yet.
    Adding { room: RoomId, config: LegConfig },
    /// In the mixer.
    Active {
        room: RoomId,
        leg: LegId,
        config: LegConfig,
    },
}

/// The initial INVITE, until its leg exists and the 200 can carry the answer.
#[derive(Debug)]
struct PendingInvite {
    key: TransactionKey,
    /// The 200 OK without its body.
    ok: Response,
}

/// A 2xx to INVITE being retransmitted until its ACK.
#[derive(Debug)]
struct Retransmission {
    response: Response,
    cseq: u32,
    next: Instant,
    interval: Duration,
    give_up: Instant,
}

/// PIN entry of a caller in the lobby.
#[derive(Debug)]
struct PinEntry {
    pin: String,
    entered: String,
    wrong: u32,
    /// Set when the 200 OK goes out.
    deadline: Option<Instant>,
}

/// (Call-ID, local tag, remote tag): the dialog id of RFC 3261 §12.
type DialogKey = (String, String, String);

#[derive(Debug)]
struct Dialog {
    key: DialogKey,
    room: String,
    /// Our From in requests we send: the INVITE's To plus our tag.
    local_party: String,
    /// Our To in requests we send: the INVITE's From.
    remote_party: String,
    /// The peer's Contact URI (§12.1.1), refreshed by re-INVITEs.
    remote_target: String,
    /// Record-Route of the INVITE, in order (§12.1.1: the UAS keeps it as is).
    route_set: Vec<String>,
    /// The flow the last request of the peer came on; requests go back on it.
    flow: Flow,
    remote_cseq: u32,
    local_cseq: u32,
    invite: Option<PendingInvite>,
    /// The last INVITE's server transaction, so a CANCEL finds the dialog.
    invite_key: TransactionKey,
    retransmit: Option<Retransmission>,
    /// The session as last negotiated.
    media: Negotiated,
    sdp: LocalSession,
    /// The local address of the dialog's RTP socket, once known.
    local_rtp: Option<SocketAddr>,
    place: Place,
    lobby: Option<MixerRoom>,
    leg: Leg,
    pin: Option<PinEntry>,
    /// We offered in a 2xx (re-INVITE without SDP): the answer comes in the ACK.
    offer_in_ack: bool,
}

impl Dialog {
    fn next_deadline(&self) -> Option<Instant> {
        let retransmit = self.retransmit.as_ref().map(|r| r.next.min(r.give_up));
        let pin = self.pin.as_ref().and_then(|p| p.deadline);
        match (retransmit, pin) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// SplitMix64 over an OS seed: tags, SSRCs, sequence numbers and session ids need to be
/// unpredictable enough to be unique, not secret, and drawing them must not fail.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn from_os() -> Self {
        let mut seed = [0u8; 8];
        if getrandom::fill(&mut seed).is_err() {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u8(0);
            seed = h.finish().to_le_bytes();
        }
        Rng(u64::from_le_bytes(seed))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// The conference dialogs of one node.
#[derive(Debug)]
pub struct Conference {
    config: ConferenceConfig,
    rng: Rng,
    next_id: u64,
    dialogs: HashMap<DialogId, Dialog>,
    by_key: HashMap<DialogKey, DialogId>,
    by_leg: HashMap<LegId, DialogId>,
    by_invite: HashMap<TransactionKey, DialogId>,
    rooms: HashMap<String, ConfRoom>,
    tokens: HashMap<RoomToken, TokenOwner>,
    timers: BinaryHeap<Reverse<(Instant, DialogId)>>,
    closing: bool,
}

impl Conference {
    /// A conference UAS with no dialogs.
    pub fn new(config: ConferenceConfig) -> Self {
        Conference {
            config,
            rng: Rng::from_os(),
            next_id: 1,
            dialogs: HashMap::new(),
            by_key: HashMap::new(),
            by_leg: HashMap::new(),
            by_invite: HashMap::new(),
            rooms: HashMap::new(),
            tokens: HashMap::new(),
            timers: BinaryHeap::new(),
            closing: false,
        }
    }

    /// Dialogs alive (answered or being answered), for metrics.
    pub fn len(&self) -> usize {
        self.dialogs.len()
    }

    /// Whether no dialog is alive.
    pub fn is_empty(&self) -> bool {
        self.dialogs.is_empty()
    }

    /// Callers holding a seat in `room` (in the mix, in the PIN lobby, or joining).
    pub fn seats(&self, room: &str) -> usize {
        self.rooms.get(room).map_or(0, |r| r.seats)
    }

    /// Every dialog, ordered by id, for the operator's view.
    pub fn dialogs(&self) -> Vec<DialogInfo> {
        let mut list: Vec<DialogInfo> = self
            .dialogs
            .iter()
            .map(|(&id, d)| DialogInfo {
                id,
                room: d.room.clone(),
                remote: d.remote_party.clone(),
                codec: d.media.codec,
                leg: match (d.place, d.leg) {
                    (Place::Room, Leg::Active { room, leg, .. }) => Some((room, leg)),
                    _ => None,
                },
            })
            .collect();
        list.sort_by_key(|d| d.id);
        list
    }

    /// Ends one dialog on the operator's request: a BYE (or a 503 while its INVITE is
    /// unanswered), and its leg and seat released. An unknown id does nothing.
    pub fn kick(&mut self, id: DialogId, now: Instant) -> Actions {
        let _ = now;
        self.fail(id)
    }

    /// Whether an in-dialog request (ACK, BYE, re-INVITE, INFO, …) belongs to one of
    /// our dialogs, by Call-ID, To tag and From tag: how the core routes it here.
    pub fn owns(&self, req: &Request) -> bool {
        dialog_key(req).is_some_and(|k| self.by_key.contains_key(&k))
    }

    /// Whether a CANCEL's INVITE transaction (`Event::Cancel::invite`) is ours.
    pub fn owns_invite(&self, invite: &TransactionKey) -> bool {
        self.by_invite.contains_key(invite)
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn random_tag(&mut self) -> String {
        format!("{:016x}", self.rng.next())
    }

    fn arm(&mut self, id: DialogId) {
        if let Some(at) = self.dialogs.get(&id).and_then(Dialog::next_deadline) {
            self.timers.push(Reverse((at, id)));
        }
    }

    /// A request of a new server transaction for a room, or in one of our dialogs
    /// (see [`Conference::owns`]): INVITE, re-INVITE, BYE, INFO, OPTIONS, or any other
    /// method. `room` is the stored room the Request-URI names (`None` → 404); it is
    /// ignored for in-dialog requests. ACKs belong in [`Conference::handle_ack`] and
    /// CANCELs in [`Conference::handle_cancel`]: passed here, an ACK is handled the
    /// same, and a CANCEL gets 481 since its INVITE transaction is not known here.
    pub fn handle_request(
        &mut self,
        key: TransactionKey,
        req: &Request,
        flow: Flow,
        room: Option<&RoomRecord>,
        now: Instant,
    ) -> Actions {
        match req.method {
            Method::Ack => return self.handle_ack(req, flow, now),
            Method::Cancel => return self.handle_cancel(key, req, None, now),
            _ => {}
        }
        let to_tag = first(&req.headers, Name::To).and_then(tag);
        if to_tag.is_some() {
            return self.in_dialog(key, req, flow, now);
        }
        match req.method {
            Method::Invite => self.initial_invite(key, req, flow, room),
            Method::Options => {
                let mut resp = match room {
                    Some(_) => reply(req, 200, None),
                    None => reply(req, 404, None),
                };
                capabilities(&mut resp);
                vec![respond(key, resp)]
            }
            Method::Bye | Method::Info | Method::Update | Method::PRack => {
                vec![respond(key, reply(req, 481, None))]
            }
            _ => {
                let mut resp = reply(req, 405, None);
                message::push(&mut resp, Header::Allow(ALLOW.into()));
                vec![respond(key, resp)]
            }
        }
    }

    fn initial_invite(
        &mut self,
        key: TransactionKey,
        req: &Request,
        flow: Flow,
        room: Option<&RoomRecord>,
    ) -> Actions {
        let refuse = |code: u16| vec![respond(key, reply(req, code, None))];
        if self.closing {
            return refuse(503);
        }
        let Some(record) = room else {
            return refuse(404);
        };
        let (Some(call_id), Some(from), Some(to), Some((cseq_no, _))) = (
            first(&req.headers, Name::CallId),
            first(&req.headers, Name::From),
            first(&req.headers, Name::To),
            cseq(&req.headers),
        ) else {
            return refuse(400);
        };
        let remote_tag = tag(from).unwrap_or_default();
        if let Some(resp) = unsupported_require(req) {
            return vec![respond(key, resp)];
        }
        let Some(target) = first(&req.headers, Name::Contact)
            .and_then(NameAddr::parse)
            .map(|c| c.uri.to_string())
        else {
            return vec![respond(key, reply(req, 400, Some("Missing Contact")))];
        };
        let media = match self.offer(req) {
            Ok(Some(m)) => m,
            Ok(None) => {
                let mut resp = reply(req, 488, None);
                self.warn(&mut resp, 399, "An SDP offer is required");
                return vec![respond(key, resp)];
            }
            Err(resp) => return vec![respond(key, *resp)],
        };
        if self.seats(&record.name) >= record.max_legs as usize {
            return refuse(486);
        }
        // A second copy of an INVITE that forked upstream and reached us twice
        // (§8.2.2.2): same Call-ID, From tag and CSeq, other branch.
        let merged = self.dialogs.values().any(|d| {
            d.invite.is_some()
                && d.key.0 == call_id
                && d.key.2 == remote_tag
                && d.remote_cseq == cseq_no
        });
        if merged {
            return refuse(482);
        }

        let local_tag = self.random_tag();
        let id = DialogId(self.id());
        let mut ok = tagged_reply(req, 200, &local_tag);
        for h in req.headers.iter() {
            if let Header::RecordRoute(_) = h {
                message::push(&mut ok, h.clone());
            }
        }
        let contact = contact(&record.name, self.config.sip_addr, flow.transport);
        message::push(&mut ok, Header::Contact(contact.into()));
        capabilities(&mut ok);
        let route_set = values(&req.headers, Name::RecordRoute)
            .flat_map(split_list)
            .map(str::to_string)
            .collect();
        let pin = record
            .pin
            .as_ref()
            .filter(|p| !p.is_empty())
            .map(|p| PinEntry {
                pin: p.clone(),
                entered: String::new(),
                wrong: 0,
                deadline: None,
            });
        let dialog_key: DialogKey = (
            call_id.to_string(),
            local_tag.clone(),
            remote_tag.to_string(),
        );
        let session = LocalSession::new(self.rng.next(), self.config.media_ip);
        let dialog = Dialog {
            key: dialog_key.clone(),
            room: record.name.clone(),
            local_party: format!("{to};tag={local_tag}"),
            remote_party: from.to_string(),
            remote_target: target,
            route_set,
            flow,
            remote_cseq: cseq_no,
            local_cseq: 0,
            invite: Some(PendingInvite { key, ok }),
            invite_key: key,
            retransmit: None,
            media,
            sdp: session,
            local_rtp: None,
            place: if pin.is_some() {
                Place::Lobby
            } else {
                Place::Room
            },
            lobby: None,
            leg: Leg::Waiting,
            pin,
            offer_in_ack: false,
        };
        self.dialogs.insert(id, dialog);
        self.by_key.insert(dialog_key, id);
        self.by_invite.insert(key, id);
        self.rooms
            .entry(record.name.clone())
            .or_insert(ConfRoom {
                seats: 0,
                mixer: None,
            })
            .seats += 1;
        self.place_leg(id)
    }

    /// The SDP offer of a request: `Ok(None)` without a body, `Err` with the response
    /// refusing it.
    fn offer(&self, req: &Request) -> Result<Option<Negotiated>, Box<Response>> {
        self.offer_keeping(req, None)
    }

    fn offer_keeping(
        &self,
        req: &Request,
        keep: Option<CodecKind>,
    ) -> Result<Option<Negotiated>, Box<Response>> {
        if req.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        if content_type(req).as_deref() != Some("application/sdp") {
            let mut resp = reply(req, 415, None);
            message::push(&mut resp, Header::Accept("application/sdp".into()));
            return Err(Box::new(resp));
        }
        let refuse = |e: SdpError| {
            let mut resp = reply(req, e.status(), None);
            let (code, text) = e.warning();
            self.warn(&mut resp, code, text);
            Box::new(resp)
        };
        let text =
            std::str::from_utf8(&req.body).map_err(|_| refuse(SdpError::Malformed("not UTF-8")))?;
        let session = Session::parse(text).map_err(refuse)?;
        let media = sdp::negotiate(&session, keep).map_err(refuse)?;
        let ip = media.remote_rtp.ip();
        if !ip.is_unspecified() && ip.is_ipv4() != self.config.media_ip.is_ipv4() {
            return Err(refuse(SdpError::UnsupportedAddress));
        }
        Ok(Some(media))
    }

    fn warn(&self, resp: &mut Response, code: u16, text: &str) {
        let value = format!("{code} {} \"{text}\"", self.config.sip_addr.ip());
        message::push(resp, Header::Warning(value.into()));
    }

    /// Puts the dialog's leg where it belongs, creating the mixer room first if needed.
    fn place_leg(&mut self, id: DialogId) -> Actions {
        let Some(d) = self.dialogs.get_mut(&id) else {
            return Vec::new();
        };
        d.leg = Leg::Waiting;
        let (place, room_name) = (d.place, d.room.clone());
        let existing = match place {
            Place::Lobby => d.lobby,
            Place::Room => self.rooms.get(&room_name).and_then(|r| r.mixer),
        };
        match existing {
            Some(MixerRoom::Ready(room)) => self.add_leg(id, room),
            // The creation report places every leg waiting for it.
            Some(MixerRoom::Creating(_)) => Vec::new(),
            None => {
                let token = RoomToken(self.id());
                let creating = Some(MixerRoom::Creating(token));
                let (owner, config) = match place {
                    Place::Lobby => {
                        if let Some(d) = self.dialogs.get_mut(&id) {
                            d.lobby = creating;
                        }
                        // The caller hears a beep every second until the PIN is right.
                        let lobby = RoomConfig {
                            max_legs: 1,
                            prompt: Some(mixer::Prompt::default()),
                            ..self.config.room
                        };
                        (TokenOwner::Lobby(id), lobby)
                    }
                    Place::Room => {
                        if let Some(r) = self.rooms.get_mut(&room_name) {
                            r.mixer = creating;
                        }
                        (TokenOwner::Room(room_name), self.config.room)
                    }
                };
                self.tokens.insert(token, owner);
                vec![Action::Mixer(MixerCommand::CreateRoom { token, config })]
            }
        }
    }

    fn leg_config(&mut self, media: &Negotiated) -> LegConfig {
        let r = self.rng.next();
        LegConfig {
            codec: media.codec,
            payload_type: media.payload_type,
            telephone_event_pt: media.telephone_event.map(|t| t.payload_type),
            audio_level_ext: media.audio_level_ext,
            remote: media.remote_rtp,
            // A new SSRC per leg: a re-added leg restarts sequence and timestamp, which
            // RFC 3550 §8 wants announced as a new source.
            ssrc: r as u32,
            initial_sequence: (r >> 32) as u16,
            initial_timestamp: self.rng.next() as u32,
            encoder: self.config.encoder,
        }
    }

    fn add_leg(&mut self, id: DialogId, room: RoomId) -> Actions {
        let Some(media) = self.dialogs.get(&id).map(|d| d.media.clone()) else {
            return Vec::new();
        };
        let config = self.leg_config(&media);
        if let Some(d) = self.dialogs.get_mut(&id) {
            d.leg = Leg::Adding { room, config };
        }
        vec![Action::Mixer(MixerCommand::AddLeg {
            dialog: id,
            room,
            config,
        })]
    }

    /// The driver's report on a [`MixerCommand::CreateRoom`]: the mixer's id for the
    /// room, or why it could not be created (callers waiting for it get 503, or a BYE).
    pub fn room_created(
        &mut self,
        token: RoomToken,
        result: Result<RoomId, String>,
        now: Instant,
    ) -> Actions {
        // Time does not influence this; taken so every input has the same shape.
        let _ = now;
        let orphan = |result: Result<RoomId, String>| match result {
            Ok(room) => vec![Action::Mixer(MixerCommand::DestroyRoom { room })],
            Err(_) => Vec::new(),
        };
        let Some(owner) = self.tokens.remove(&token) else {
            return orphan(result);
        };
        let waiting: Vec<DialogId> = match &owner {
            TokenOwner::Room(name) => {
                let Some(r) = self
                    .rooms
                    .get_mut(name)
                    .filter(|r| r.mixer == Some(MixerRoom::Creating(token)))
                else {
                    return orphan(result);
                };
                r.mixer = result.as_ref().ok().map(|&id| MixerRoom::Ready(id));
                let mut w: Vec<DialogId> = self
                    .dialogs
                    .iter()
                    .filter(|(_, d)| {
                        d.room == *name && d.place == Place::Room && d.leg == Leg::Waiting
                    })
                    .map(|(id, _)| *id)
                    .collect();
                w.sort();
                w
            }
            TokenOwner::Lobby(id) => {
                let Some(d) = self
                    .dialogs
                    .get_mut(id)
                    .filter(|d| d.lobby == Some(MixerRoom::Creating(token)))
                else {
                    return orphan(result);
                };
                d.lobby = result.as_ref().ok().map(|&r| MixerRoom::Ready(r));
                vec![*id]
            }
        };
        let mut actions = Vec::new();
        for id in waiting {
            match result {
                Ok(room) => actions.extend(self.add_leg(id, room)),
                Err(_) => actions.extend(self.fail(id)),
            }
        }
        actions
    }

    /// The driver's report on a [`MixerCommand::AddLeg`]: the leg's handle (its local
    /// RTP address goes into the SDP answer, and the 200 OK of a new call goes out now),
    /// or why it could not be added (503 for a new call, BYE for an established one).
    pub fn leg_added(
        &mut self,
        dialog: DialogId,
        result: Result<LegHandle, String>,
        now: Instant,
    ) -> Actions {
        let Some(d) = self.dialogs.get_mut(&dialog) else {
            // The call ended while the leg was being added.
            let mut actions = Vec::new();
            if let Ok(h) = result {
                actions.push(Action::Mixer(MixerCommand::RemoveLeg {
                    room: h.room,
                    leg: h.leg,
                }));
            }
            actions.push(Action::Mixer(MixerCommand::ReleaseMedia { dialog }));
            return actions;
        };
        let Leg::Adding { room, config } = d.leg else {
            return match result {
                Ok(h) => vec![Action::Mixer(MixerCommand::RemoveLeg {
                    room: h.room,
                    leg: h.leg,
                })],
                Err(_) => Vec::new(),
            };
        };
        let h = match result {
            Ok(h) => h,
            Err(_) => return self.fail(dialog),
        };
        let mut actions = Vec::new();
        let target = match d.place {
            Place::Lobby => d.lobby,
            Place::Room => self.rooms.get(&d.room).and_then(|r| r.mixer),
        };
        if h.room != room || target != Some(MixerRoom::Ready(room)) {
            // The leg was meant for a room the dialog has left meanwhile (admitted
            // while its lobby leg was being re-added): take it out, place it anew.
            actions.push(Action::Mixer(MixerCommand::RemoveLeg {
                room: h.room,
                leg: h.leg,
            }));
            d.leg = Leg::Waiting;
            actions.extend(self.place_leg(dialog));
            return actions;
        }
        d.leg = Leg::Active {
            room,
            leg: h.leg,
            config,
        };
        d.local_rtp = Some(h.local);
        self.by_leg.insert(h.leg, dialog);
        if d.media.hold {
            actions.push(Action::Mixer(MixerCommand::SetHeld {
                room,
                leg: h.leg,
                held: true,
            }));
        }
        if !same_leg(&config, &d.media) {
            // The session changed while the leg was being added (a re-INVITE).
            actions.extend(self.readd(dialog));
        }
        let Some(d) = self.dialogs.get_mut(&dialog) else {
            return actions;
        };
        if let Some(pending) = d.invite.take() {
            let answer = d
                .sdp
                .render(&d.media, h.local.port(), d.media.answer_direction());
            let mut ok = pending.ok;
            set_body(&mut ok, "application/sdp", answer);
            let cseq_no = d.remote_cseq;
            actions.push(respond(pending.key, ok.clone()));
            self.start_retransmit(dialog, ok, cseq_no, now);
            if let Some(pin) = self.dialogs.get_mut(&dialog).and_then(|d| d.pin.as_mut()) {
                pin.deadline = Some(now + self.config.pin_timeout);
            }
            self.arm(dialog);
        }
        actions
    }

    fn start_retransmit(&mut self, id: DialogId, response: Response, cseq_no: u32, now: Instant) {
        let (t1, give_up) = (self.config.t1, now + self.config.t1 * 64);
        if let Some(d) = self.dialogs.get_mut(&id) {
            d.retransmit = Some(Retransmission {
                response,
                cseq: cseq_no,
                next: now + t1,
                interval: t1,
                give_up,
            });
        }
        self.arm(id);
    }

    /// Takes the dialog's leg out and adds it again with the current session.
    fn readd(&mut self, id: DialogId) -> Actions {
        let Some(d) = self.dialogs.get_mut(&id) else {
            return Vec::new();
        };
        let Leg::Active { room, leg, .. } = d.leg else {
            // Waiting or adding: `leg_added` compares and re-adds.
            return Vec::new();
        };
        d.leg = Leg::Waiting;
        self.by_leg.remove(&leg);
        let mut actions = vec![Action::Mixer(MixerCommand::RemoveLeg { room, leg })];
        actions.extend(self.place_leg(id));
        actions
    }

    /// A dialog that cannot go on: a 503 while its INVITE is unanswered, else a BYE.
    fn fail(&mut self, id: DialogId) -> Actions {
        let Some(d) = self.dialogs.get_mut(&id) else {
            return Vec::new();
        };
        let mut actions = Vec::new();
        match d.invite.take() {
            Some(p) => {
                let mut resp = p.ok;
                resp.status_code = rsip::StatusCode::Other(503, message::phrase(503).into());
                resp.headers
                    .retain(|h| !matches!(h, Header::Contact(_) | Header::RecordRoute(_)));
                actions.push(respond(p.key, resp));
            }
            None => actions.push(self.bye(id)),
        }
        actions.extend(self.terminate(id));
        actions
    }

    /// A BYE in the dialog (§15.1.1), to send before [`Conference::terminate`].
    fn bye(&mut self, id: DialogId) -> Action {
        let sip_addr = self.config.sip_addr;
        let branch = new_branch();
        let Some(d) = self.dialogs.get_mut(&id) else {
            // Not reachable: callers hold the id of a live dialog.
            return Action::Mixer(MixerCommand::ReleaseMedia { dialog: id });
        };
        d.local_cseq += 1;
        let uri = rsip::Uri::try_from(d.remote_target.as_str()).unwrap_or_else(|_| rsip::Uri {
            scheme: Some(rsip::Scheme::Sip),
            ..rsip::Uri::from(d.flow.remote)
        });
        let transport = match d.flow.transport {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        };
        let mut headers = rsip::Headers::default();
        headers.push(Header::Via(
            format!("SIP/2.0/{transport} {sip_addr};branch={branch};rport").into(),
        ));
        headers.push(Header::MaxForwards("70".into()));
        headers.push(Header::From(d.local_party.clone().into()));
        headers.push(Header::To(d.remote_party.clone().into()));
        headers.push(Header::CallId(d.key.0.clone().into()));
        headers.push(Header::CSeq(format!("{} BYE", d.local_cseq).into()));
        for r in &d.route_set {
            headers.push(Header::Route(r.clone().into()));
        }
        headers.push(Header::UserAgent(SERVER.into()));
        headers.push(Header::ContentLength("0".into()));
        Action::Request {
            request: Request {
                method: Method::Bye,
                uri,
                version: rsip::Version::V2,
                headers,
                body: Vec::new(),
            },
            flow: d.flow,
        }
    }

    /// Forgets a dialog: its leg, lobby, seat, socket and every index naming it.
    fn terminate(&mut self, id: DialogId) -> Actions {
        let Some(d) = self.dialogs.remove(&id) else {
            return Vec::new();
        };
        self.by_key.remove(&d.key);
        self.by_invite.remove(&d.invite_key);
        let mut actions = Vec::new();
        let lobby = match d.lobby {
            Some(MixerRoom::Ready(room)) => Some(room),
            // A lobby still being created is destroyed when its creation is reported.
            _ => None,
        };
        if let Leg::Active { room, leg, .. } = d.leg {
            self.by_leg.remove(&leg);
            if Some(room) != lobby {
                actions.push(Action::Mixer(MixerCommand::RemoveLeg { room, leg }));
            }
        }
        if let Some(room) = lobby {
            actions.push(Action::Mixer(MixerCommand::DestroyRoom { room }));
        }
        actions.push(Action::Mixer(MixerCommand::ReleaseMedia { dialog: id }));
        if let Some(r) = self.rooms.get_mut(&d.room) {
            r.seats = r.seats.saturating_sub(1);
            if r.seats == 0 {
                if let Some(MixerRoom::Ready(room)) = r.mixer {
                    actions.push(Action::Mixer(MixerCommand::DestroyRoom { room }));
                }
                // A room still being created is destroyed when its creation is
                // reported and finds no entry.
                self.rooms.remove(&d.room);
            }
        }
        actions
    }

    fn in_dialog(
        &mut self,
        key: TransactionKey,
        req: &Request,
        flow: Flow,
        now: Instant,
    ) -> Actions {
        let Some(&id) = dialog_key(req).and_then(|k| self.by_key.get(&k)) else {
            return vec![respond(key, reply(req, 481, None))];
        };
        let Some((cseq_no, _)) = cseq(&req.headers) else {
            return vec![respond(key, reply(req, 400, None))];
        };
        let Some(d) = self.dialogs.get_mut(&id) else {
            return vec![respond(key, reply(req, 481, None))];
        };
        // §12.2.2: requests of a dialog come in CSeq order.
        if cseq_no <= d.remote_cseq {
            let mut resp = reply(req, 500, Some("Out Of Order"));
            message::push(&mut resp, Header::RetryAfter("1".into()));
            return vec![respond(key, resp)];
        }
        d.remote_cseq = cseq_no;
        // Follow the peer's latest flow (NAT rebinding, a new TCP connection).
        d.flow = flow;
        match req.method {
            Method::Bye => {
                let mut actions = vec![respond(key, reply(req, 200, None))];
                actions.extend(self.terminate(id));
                actions
            }
            Method::Invite => self.reinvite(id, key, req, now),
            Method::Info => self.info(id, key, req),
            Method::Options => {
                let mut resp = reply(req, 200, None);
                capabilities(&mut resp);
                vec![respond(key, resp)]
            }
            _ => {
                let mut resp = reply(req, 405, None);
                message::push(&mut resp, Header::Allow(ALLOW.into()));
                vec![respond(key, resp)]
            }
        }
    }

    fn reinvite(
        &mut self,
        id: DialogId,
        key: TransactionKey,
        req: &Request,
        now: Instant,
    ) -> Actions {
        if let Some(resp) = unsupported_require(req) {
            return vec![respond(key, resp)];
        }
        let Some(d) = self.dialogs.get(&id) else {
            return Vec::new();
        };
        let (Some(local_rtp), None) = (d.local_rtp, &d.invite) else {
            // Cannot happen: the peer learns our tag from the 200, sent with the leg.
            return vec![respond(key, reply(req, 491, None))];
        };
        let offer = match self.offer_keeping(req, Some(d.media.codec)) {
            Ok(o) => o,
            // §14.2: a refused re-offer leaves the session as it was.
            Err(resp) => return vec![respond(key, *resp)],
        };
        let Some(d) = self.dialogs.get_mut(&id) else {
            return Vec::new();
        };
        // A new INVITE means the previous 2xx was ACKed (§14.1: no re-INVITE before).
        d.retransmit = None;
        if let Some(target) = first(&req.headers, Name::Contact).and_then(NameAddr::parse) {
            d.remote_target = target.uri.to_string();
        }
        self.by_invite.remove(&d.invite_key);
        d.invite_key = key;
        self.by_invite.insert(key, id);
        let mut actions = Vec::new();
        let body = match offer {
            Some(media) => {
                actions.extend(self.apply_media(id, media));
                let Some(d) = self.dialogs.get_mut(&id) else {
                    return actions;
                };
                d.offer_in_ack = false;
                d.sdp
                    .render(&d.media, local_rtp.port(), d.media.answer_direction())
            }
            None => {
                // No offer: we offer the session as it stands, sending and receiving;
                // the answer comes in the ACK (§13.2.1, §14.2).
                d.offer_in_ack = true;
                let offer = d.media.as_local_offer();
                d.sdp.render(&offer, local_rtp.port(), Direction::SendRecv)
            }
        };
        let Some(d) = self.dialogs.get(&id) else {
            return actions;
        };
        let mut ok = reply(req, 200, None);
        let contact = contact(&d.room, self.config.sip_addr, d.flow.transport);
        message::push(&mut ok, Header::Contact(contact.into()));
        capabilities(&mut ok);
        set_body(&mut ok, "application/sdp", body);
        let cseq_no = d.remote_cseq;
        actions.push(respond(key, ok.clone()));
        self.start_retransmit(id, ok, cseq_no, now);
        actions
    }

    /// Adopts a newly negotiated session: hold changes become `SetHeld`, anything the
    /// leg was configured with (codec, payload types, address) re-adds the leg.
    fn apply_media(&mut self, id: DialogId, mut media: Negotiated) -> Actions {
        let Some(d) = self.dialogs.get_mut(&id) else {
            return Vec::new();
        };
        if media.remote_rtp.ip().is_unspecified() {
            // Old-style hold says nothing about where the peer listens: keep what we
            // know, so resuming to the same address does not restart the leg.
            media.remote_rtp.set_ip(d.media.remote_rtp.ip());
        }
        let old = std::mem::replace(&mut d.media, media);
        match d.leg {
            Leg::Active { room, leg, config } => {
                if !same_leg(&config, &d.media) {
                    self.readd(id)
                } else if old.hold != d.media.hold {
                    vec![Action::Mixer(MixerCommand::SetHeld {
                        room,
                        leg,
                        held: d.media.hold,
                    })]
                } else {
                    Vec::new()
                }
            }
            // `leg_added` applies the new session when the leg arrives.
            Leg::Waiting | Leg::Adding { .. } => Vec::new(),
        }
    }

    /// The ACK of a 2xx (`Event::Ack` of the transaction layer) in one of our dialogs:
    /// stops the 2xx retransmission, and carries the answer when we offered in the 2xx.
    /// ACKs that are not ours return nothing.
    pub fn handle_ack(&mut self, req: &Request, flow: Flow, now: Instant) -> Actions {
        // Neither influences an ACK; taken so every input has the same shape.
        let _ = (flow, now);
        let Some(&id) = dialog_key(req).and_then(|k| self.by_key.get(&k)) else {
            return Vec::new();
        };
        let Some((cseq_no, _)) = cseq(&req.headers) else {
            return Vec::new();
        };
        let Some(d) = self.dialogs.get_mut(&id) else {
            return Vec::new();
        };
        let acked = d.retransmit.as_ref().is_some_and(|r| r.cseq == cseq_no);
        if !acked {
            // A retransmitted ACK, or one for an older INVITE.
            return Vec::new();
        }
        d.retransmit = None;
        if !d.offer_in_ack {
            return Vec::new();
        }
        d.offer_in_ack = false;
        let keep = Some(d.media.codec);
        match self.offer_keeping(req, keep) {
            Ok(Some(media)) => self.apply_media(id, media),
            // No answer: the session stays as it was.
            Ok(None) => Vec::new(),
            // An unusable answer ends the session (§13.2.2.4 from the UAS side).
            Err(_) => {
                let mut actions = vec![self.bye(id)];
                actions.extend(self.terminate(id));
                actions
            }
        }
    }

    /// A CANCEL (`Event::Cancel`): `cancel` is its own server transaction, `invite` the
    /// INVITE it targets. Answers the CANCEL (200, or 481 when it matches nothing of
    /// ours) and, while our INVITE is still unanswered, the INVITE with 487 (§9.2),
    /// dropping the call and its leg.
    pub fn handle_cancel(
        &mut self,
        cancel: TransactionKey,
        req: &Request,
        invite: Option<TransactionKey>,
        now: Instant,
    ) -> Actions {
        // Time does not influence this; taken so every input has the same shape.
        let _ = now;
        let Some(id) = invite.and_then(|k| self.by_invite.get(&k)).copied() else {
            return vec![respond(cancel, reply(req, 481, None))];
        };
        let Some(d) = self.dialogs.get_mut(&id) else {
            return vec![respond(cancel, reply(req, 481, None))];
        };
        // §9.2: the CANCEL's 200 carries the tag our INVITE responses carry.
        let ok = tagged_reply(req, 200, &d.key.1);
        let mut actions = vec![respond(cancel, ok)];
        if let Some(p) = d.invite.take() {
            let mut resp = p.ok;
            resp.status_code = rsip::StatusCode::Other(487, message::phrase(487).into());
            resp.headers
                .retain(|h| !matches!(h, Header::Contact(_) | Header::RecordRoute(_)));
            actions.push(respond(p.key, resp));
            actions.extend(self.terminate(id));
        }
        actions
    }

    fn info(&mut self, id: DialogId, key: TransactionKey, req: &Request) -> Actions {
        let body = String::from_utf8_lossy(&req.body);
        let digit = match content_type(req).as_deref() {
            _ if body.trim().is_empty() => None,
            // `Signal=5\r\nDuration=160` (Cisco, used by most phones).
            Some("application/dtmf-relay") => body
                .lines()
                .filter_map(|l| l.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("signal"))
                .and_then(|(_, v)| dtmf_digit(v.trim())),
            // Just the key (draft-kaplan-dispatch-info-dtmf-package style).
            Some("application/dtmf") => dtmf_digit(body.trim()),
            _ => {
                let mut resp = reply(req, 415, None);
                message::push(&mut resp, Header::Accept(ACCEPT.into()));
                return vec![respond(key, resp)];
            }
        };
        let mut actions = vec![respond(key, reply(req, 200, None))];
        if let Some(c) = digit {
            actions.extend(self.digit(id, c));
        }
        actions
    }

    /// One key press of a caller, by RFC 4733 or INFO: PIN entry while in the lobby,
    /// ignored once admitted.
    fn digit(&mut self, id: DialogId, c: char) -> Actions {
        let max = self.config.max_pin_tries;
        let Some(d) = self.dialogs.get_mut(&id) else {
            return Vec::new();
        };
        if d.invite.is_some() {
            return Vec::new();
        }
        let Some(pin) = d.pin.as_mut() else {
            return Vec::new();
        };
        let done = match c {
            '*' => {
                pin.entered.clear();
                false
            }
            // A lone `#` is a slip, not a try.
            '#' => !pin.entered.is_empty(),
            c => {
                pin.entered.push(c);
                pin.entered.len() >= pin.pin.len()
            }
        };
        if !done {
            return Vec::new();
        }
        if pin.entered == pin.pin {
            return self.admit(id);
        }
        pin.entered.clear();
        pin.wrong += 1;
        if pin.wrong < max {
            return Vec::new();
        }
        let mut actions = vec![self.bye(id)];
        actions.extend(self.terminate(id));
        actions
    }

    /// The right PIN: out of the lobby, into the room's mix.
    fn admit(&mut self, id: DialogId) -> Actions {
        let Some(d) = self.dialogs.get_mut(&id) else {
            return Vec::new();
        };
        d.pin = None;
        d.place = Place::Room;
        let mut actions = Vec::new();
        if let Leg::Active { leg, .. } = d.leg {
            self.by_leg.remove(&leg);
        }
        // Destroying the lobby removes the leg with it; the dialog's socket stays
        // with the driver, so the leg keeps its port in the room.
        if let Some(MixerRoom::Ready(room)) = d.lobby.take() {
            actions.push(Action::Mixer(MixerCommand::DestroyRoom { room }));
        }
        if matches!(d.leg, Leg::Active { .. }) {
            d.leg = Leg::Waiting;
        }
        if d.leg == Leg::Waiting {
            actions.extend(self.place_leg(id));
        }
        // An `Adding` leg is re-placed when its result comes (`leg_added`).
        actions
    }

    /// What the mixer reported (drained from `Mixer::events`): DTMF digits feed PIN
    /// entry, an RTP timeout hangs up; everything else needs nothing.
    pub fn handle_mixer_event(&mut self, event: &MixerEvent, now: Instant) -> Actions {
        // Time does not influence this; taken so every input has the same shape.
        let _ = now;
        let MixerEvent::Room { event, .. } = event else {
            return Vec::new();
        };
        match *event {
            RoomEvent::Dtmf { leg, digit } => match self.by_leg.get(&leg) {
                Some(&id) => self.digit(id, digit),
                None => Vec::new(),
            },
            RoomEvent::LegTimedOut(leg) => match self.by_leg.get(&leg) {
                Some(&id) => {
                    let mut actions = vec![self.bye(id)];
                    actions.extend(self.terminate(id));
                    actions
                }
                None => Vec::new(),
            },
            RoomEvent::TalkingStarted(_) | RoomEvent::TalkingStopped(_) => Vec::new(),
        }
    }

    /// Runs what is due: 2xx retransmissions, the 64·T1 give-up (BYE), PIN timeouts
    /// (BYE).
    pub fn handle_timeout(&mut self, now: Instant) -> Actions {
        let mut actions = Vec::new();
        while let Some(&Reverse((at, id))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            actions.extend(self.dialog_timeout(id, now));
        }
        actions
    }

    fn dialog_timeout(&mut self, id: DialogId, now: Instant) -> Actions {
        let t2 = self.config.t2;
        let Some(d) = self.dialogs.get_mut(&id) else {
            return Vec::new();
        };
        let mut hang_up = d
            .pin
            .as_ref()
            .and_then(|p| p.deadline)
            .is_some_and(|t| t <= now);
        let mut actions = Vec::new();
        if let Some(r) = d.retransmit.as_mut() {
            if r.give_up <= now {
                // §13.3.1.4: no ACK for 64·T1; the session ends with a BYE.
                d.retransmit = None;
                hang_up = true;
            } else if r.next <= now {
                actions.push(Action::Retransmit {
                    response: r.response.clone(),
                    flow: d.flow,
                });
                r.interval = (r.interval * 2).min(t2);
                r.next = now + r.interval;
            }
        }
        if hang_up {
            actions.push(self.bye(id));
            actions.extend(self.terminate(id));
        } else {
            self.arm(id);
        }
        actions
    }

    /// When [`Conference::handle_timeout`] is next due (it may be early: stale timers
    /// are dropped when they come up).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    /// Ends every call: BYE to every answered dialog, 503 to every unanswered INVITE,
    /// every leg and room released. New INVITEs get 503 from now on.
    pub fn shutdown(&mut self, now: Instant) -> Actions {
        // Time does not influence this; taken so every input has the same shape.
        let _ = now;
        self.closing = true;
        let mut ids: Vec<DialogId> = self.dialogs.keys().copied().collect();
        ids.sort();
        let mut actions = Vec::new();
        for id in ids {
            actions.extend(self.fail(id));
        }
        self.timers.clear();
        actions
    }
}

/// Whether a leg configured with `config` still matches the session `media`.
fn same_leg(config: &LegConfig, media: &Negotiated) -> bool {
    config.codec == media.codec
        && config.payload_type == media.payload_type
        && config.telephone_event_pt == media.telephone_event.map(|t| t.payload_type)
        && config.audio_level_ext == media.audio_level_ext
        && config.remote == media.remote_rtp
}

/// The dialog id of an in-dialog request as seen from our side.
fn dialog_key(req: &Request) -> Option<DialogKey> {
    let call_id = first(&req.headers, Name::CallId)?;
    let local = tag(first(&req.headers, Name::To)?)?;
    let remote = first(&req.headers, Name::From)
        .and_then(tag)
        .unwrap_or_default();
    Some((call_id.to_string(), local.to_string(), remote.to_string()))
}

fn respond(key: TransactionKey, response: Response) -> Action {
    Action::Respond { key, response }
}

/// A reply whose To carries `local_tag` when the request's To had no tag.
fn tagged_reply(req: &Request, code: u16, local_tag: &str) -> Response {
    let mut resp = reply(req, code, None);
    if let Some(to) = first(&req.headers, Name::To).filter(|to| tag(to).is_none()) {
        let tagged = format!("{to};tag={local_tag}");
        for h in resp.headers.iter_mut() {
            if let Header::To(v) = h {
                *v = tagged.clone().into();
            }
        }
    }
    resp
}

/// Allow, Accept: what the UAS can do (§11.2 for OPTIONS, and useful in every 2xx).
fn capabilities(resp: &mut Response) {
    message::push(resp, Header::Allow(ALLOW.into()));
    message::push(resp, Header::Accept(ACCEPT.into()));
}

/// A 420 naming the option tags of Require we do not support (§8.2.2.3): all of them.
fn unsupported_require(req: &Request) -> Option<Response> {
    let tags: Vec<&str> = values(&req.headers, Name::Require)
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    if tags.is_empty() {
        return None;
    }
    let mut resp = reply(req, 420, None);
    message::push(&mut resp, Header::Unsupported(tags.join(", ").into()));
    Some(resp)
}

/// Our Contact for a room's dialogs: the room's URI at our address, with the transport
/// the peer used so requests come back on it.
fn contact(room: &str, sip_addr: SocketAddr, transport: Transport) -> String {
    let transport = match transport {
        Transport::Udp => "",
        Transport::Tcp => ";transport=tcp",
        Transport::Tls => ";transport=tls",
    };
    format!("<sip:{room}@{sip_addr}{transport}>")
}

/// The media type of a request's body, lower-cased, without parameters.
fn content_type(req: &Request) -> Option<String> {
    req.headers.iter().find_map(|h| match h {
        Header::ContentType(v) => Some(
            v.value()
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase(),
        ),
        _ => None,
    })
}

/// Sets a response's body with its Content-Type and Content-Length.
fn set_body(resp: &mut Response, content_type: &str, body: String) {
    message::push(resp, Header::ContentType(content_type.into()));
    let len = body.len().to_string();
    for h in resp.headers.iter_mut() {
        if let Header::ContentLength(v) = h {
            *v = len.clone().into();
        }
    }
    resp.body = body.into_bytes();
}

/// A DTMF key from an INFO body: `0`-`9`, `*`, `#`, `A`-`D`, or the event codes 10 and
/// 11 some phones write for `*` and `#` (RFC 4733 §3.2 numbering).
fn dtmf_digit(v: &str) -> Option<char> {
    match v {
        "10" => Some('*'),
        "11" => Some('#'),
        _ => {
            let mut chars = v.chars();
            let c = chars.next()?.to_ascii_uppercase();
            (chars.next().is_none() && matches!(c, '0'..='9' | '*' | '#' | 'A'..='D')).then_some(c)
        }
    }
}

#[cfg(test)]
#[path = "conference_tests.rs"]
mod tests;
