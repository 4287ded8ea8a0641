//! The SIP service's core: routes each incoming message to the transaction layer, each
//! new request to the registrar, the OPTIONS responder, the conference UAS or the proxy,
//! and every other transaction event (responses, CANCEL, ACK, timeouts) to the proxy or
//! the conference.
//!
//! Routing to the conference follows the contract of [`crate::sip::conference`]:
//! in-dialog requests and ACKs of its dialogs, CANCELs of its INVITEs, and initial
//! requests whose Request-URI user is a room of our domain (looked up through
//! [`Accounts::room`] after the proxy validated and authenticated the request, before
//! the AOR lookup: rooms and users share one namespace).
//!
//! Sans-IO like its parts: bytes and the flow they came on go in with the time,
//! datagrams to send come out of [`SipCore::poll_transmit`], and what the conference
//! wants of the mixer comes out of [`SipCore::poll_mixer_command`]; the driver reports
//! the results back through [`SipCore::room_created`] and [`SipCore::leg_added`], and
//! the mixer's events through [`SipCore::handle_mixer_event`].

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use mixer::{LegHandle, MixerEvent, RoomId};
use rsip::{Request, SipMessage};

use crate::metrics::Metrics;
use crate::sip::conference::{Action, Conference, DialogId, MixerCommand, RoomToken};
use crate::sip::headers::uri_parts;
use crate::sip::intake::{self, Intake, IntakeError};
use crate::sip::location::{LocalLocation, Location};
use crate::sip::message::{self, first, reply, Name, SERVER};
use crate::sip::proxy::{self, Env, Failure, Proxy, Verdict};
use crate::sip::registrar::{Accounts, Outcome, Registrar};
use crate::sip::stun_keepalive;
use crate::sip::transaction::{Event, Flow, TransactionKey, TransactionLayer, Transmit, Transport};
use crate::store::RoomRecord;

/// Methods this node implements as a UAS, for Allow.
pub const ALLOW: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, REGISTER, INFO";

/// The SIP core of one node.
pub struct SipCore {
    transactions: TransactionLayer,
    registrar: Registrar<LocalLocation>,
    proxy: Proxy,
    conference: Conference,
    /// Mixer commands of the conference, in order, for the driver.
    mixer_commands: VecDeque<MixerCommand>,
    /// The conference's own client transactions (its BYEs) not finished yet.
    conference_requests: HashSet<TransactionKey>,
    metrics: Arc<Metrics>,
    replies: Vec<Transmit>,
}

impl SipCore {
    /// A core around a transaction layer, a registrar, a proxy and the conference UAS.
    pub fn new(
        transactions: TransactionLayer,
        registrar: Registrar<LocalLocation>,
        proxy: Proxy,
        conference: Conference,
        metrics: Arc<Metrics>,
    ) -> Self {
        SipCore {
            transactions,
            registrar,
            proxy,
            conference,
            mixer_commands: VecDeque::new(),
            conference_requests: HashSet::new(),
            metrics,
            replies: Vec::new(),
        }
    }

    /// The proxy (for tests and metrics).
    pub fn proxy(&self) -> &Proxy {
        &self.proxy
    }

    /// The conference UAS (for tests and metrics).
    pub fn conference(&self) -> &Conference {
        &self.conference
    }

    /// The next command the conference has for the mixer, oldest first. The driver
    /// executes it with the `mixer::Mixer` handle and answers `CreateRoom` with
    /// [`SipCore::room_created`] and `AddLeg` with [`SipCore::leg_added`] at once, which
    /// may queue further commands: drain until `None`.
    pub fn poll_mixer_command(&mut self) -> Option<MixerCommand> {
        self.mixer_commands.pop_front()
    }

    /// The driver's report on a [`MixerCommand::CreateRoom`].
    pub fn room_created(&mut self, token: RoomToken, result: Result<RoomId, String>, now: Instant) {
        let actions = self.conference.room_created(token, result, now);
        self.run_conference(actions, now);
    }

    /// The driver's report on a [`MixerCommand::AddLeg`] (the 200 OK of a new call goes
    /// out from here).
    pub fn leg_added(&mut self, dialog: DialogId, result: Result<LegHandle, String>, now: Instant) {
        let actions = self.conference.leg_added(dialog, result, now);
        self.run_conference(actions, now);
    }

    /// One event of the mixer (DTMF for PIN entry, RTP timeouts).
    pub fn handle_mixer_event(&mut self, event: &MixerEvent, now: Instant) {
        let actions = self.conference.handle_mixer_event(event, now);
        self.run_conference(actions, now);
    }

    /// Ends one conference call on the operator's request (see [`Conference::kick`]).
    pub fn kick_conference(&mut self, dialog: DialogId, now: Instant) {
        let actions = self.conference.kick(dialog, now);
        self.run_conference(actions, now);
    }

    /// Ends every conference call (BYE, or 503 to an unanswered INVITE) and refuses new
    /// ones: for a node shutting down. The BYEs go out through
    /// [`SipCore::poll_transmit`]; [`SipCore::pending_conference_requests`] tells when
    /// they were answered.
    pub fn shutdown_conference(&mut self, now: Instant) {
        let actions = self.conference.shutdown(now);
        self.run_conference(actions, now);
    }

    /// Requests of the conference (BYEs) still waiting for their final response.
    pub fn pending_conference_requests(&self) -> usize {
        self.conference_requests.len()
    }

    /// Carries out what the conference asked for: responses and requests through the
    /// transaction layer, mixer commands queued for the driver.
    fn run_conference(&mut self, actions: Vec<Action>, now: Instant) {
        for action in actions {
            match action {
                Action::Respond { key, response } => {
                    self.metrics.response(response.status_code.code());
                    // A transaction that vanished meanwhile has nobody to answer.
                    let _ = self.transactions.respond(&key, response, now);
                }
                Action::Retransmit { response, flow } => self
                    .transactions
                    .send_stateless(&SipMessage::Response(response), flow),
                Action::Request { request, flow } => {
                    self.metrics.request(&request.method.to_string());
                    match self.transactions.send_request(request, flow, now) {
                        Ok(key) => {
                            self.conference_requests.insert(key);
                        }
                        Err(e) => tracing::warn!("conference request not sent: {e}"),
                    }
                }
                Action::Mixer(cmd) => self.mixer_commands.push_back(cmd),
            }
        }
        self.metrics
            .dialogs
            .set((self.proxy.dialogs() + self.conference.len()) as u64);
    }

    /// The stored room a Request-URI names: its user part, on a host of our domain.
    fn room_of(&self, req: &Request, accounts: &dyn Accounts) -> Option<RoomRecord> {
        let uri = req.uri.to_string();
        let parts = uri_parts(&uri)?;
        let user = parts.user?;
        if !self.registrar.is_local(parts.host) {
            return None;
        }
        accounts.room(user)
    }

    /// The registrar (for loading persisted bindings and for tests).
    pub fn registrar_mut(&mut self) -> &mut Registrar<LocalLocation> {
        &mut self.registrar
    }

    /// One datagram, or one framed stream message, from `flow`.
    pub fn handle_bytes(&mut self, data: &[u8], flow: Flow, now: Instant, accounts: &dyn Accounts) {
        if flow.transport == Transport::Udp && stun_keepalive::is_stun(data) {
            self.metrics.keepalives.inc();
            if let Some(pong) = stun_keepalive::binding_response(data, flow.remote) {
                self.replies.push(Transmit {
                    key: None,
                    flow,
                    message: Bytes::from(pong),
                });
            }
            return;
        }
        match intake::parse(data) {
            Ok(Intake::Keepalive) => {
                self.metrics.keepalives.inc();
                // RFC 5626 §3.5.1: a double-CRLF ping on a stream gets a single CRLF pong.
                if flow.transport != Transport::Udp {
                    self.replies.push(Transmit {
                        key: None,
                        flow,
                        message: Bytes::from_static(b"\r\n"),
                    });
                }
            }
            // A single CRLF answers our own ping, or is stray: never answered.
            Ok(Intake::Pong) => {}
            Ok(Intake::Message(SipMessage::Request(req))) => {
                self.metrics.request(&req.method.to_string());
                self.transactions.handle_request(req, flow, now);
            }
            Ok(Intake::Message(SipMessage::Response(resp))) => {
                self.transactions.handle_response(resp, flow, now);
            }
            Err(e) => self.refuse(e, flow),
        }
        self.drain_events(now, accounts);
    }

    fn refuse(&mut self, e: IntakeError, flow: Flow) {
        self.metrics.parse_errors.inc();
        match e.reply() {
            Some((code, reason, ctx)) => {
                self.metrics.response(code);
                self.replies.push(Transmit {
                    key: None,
                    flow,
                    message: Bytes::from(ctx.response(code, reason, "bad1", SERVER)),
                });
            }
            None => self.metrics.dropped.inc(),
        }
    }

    /// Runs expired timers.
    pub fn handle_timeout(&mut self, now: Instant, accounts: &dyn Accounts) {
        self.transactions.handle_timeout(now);
        let mut env = Env {
            transactions: &mut self.transactions,
            registrar: &self.registrar,
            accounts,
            now,
        };
        self.proxy.handle_timeout(&mut env);
        let actions = self.conference.handle_timeout(now);
        self.run_conference(actions, now);
        self.drain_events(now, accounts);
    }

    /// The driver could not send a message of transaction `key` (the TCP connection is
    /// gone, the UDP send failed): the transaction fails as §17.1.4 says.
    pub fn handle_transport_error(
        &mut self,
        key: TransactionKey,
        now: Instant,
        accounts: &dyn Accounts,
    ) {
        self.transactions.handle_transport_error(&key, now);
        self.drain_events(now, accounts);
    }

    /// When [`SipCore::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.transactions.poll_timeout(),
            self.proxy.poll_timeout(),
            self.conference.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.replies
            .pop()
            .or_else(|| self.transactions.poll_transmit())
    }

    fn drain_events(&mut self, now: Instant, accounts: &dyn Accounts) {
        while let Some(event) = self.transactions.poll_event() {
            self.handle_event(event, now, accounts);
        }
        self.metrics
            .bindings
            .set(self.registrar.location().len() as u64);
        self.metrics
            .dialogs
            .set((self.proxy.dialogs() + self.conference.len()) as u64);
    }

    fn handle_event(&mut self, event: Event, now: Instant, accounts: &dyn Accounts) {
        let event = match self.conference_event(event, now) {
            Some(event) => event,
            None => return,
        };
        if let Event::Request {
            key,
            mut request,
            flow,
        } = event
        {
            proxy::note_received(&mut request, &flow);
            if let Some(response) = self.handle_request(key, request, flow, now, accounts) {
                self.metrics.response(response.status_code.code());
                // A transaction that vanished meanwhile (transport error) has nobody to
                // answer; nothing else can fail here.
                let _ = self.transactions.respond(&key, response, now);
            }
            return;
        }
        let mut env = Env {
            transactions: &mut self.transactions,
            registrar: &self.registrar,
            accounts,
            now,
        };
        match event {
            Event::Request { .. } => {}
            Event::Cancel {
                key,
                request,
                invite,
                ..
            } => self.proxy.handle_cancel(&mut env, key, &request, invite),
            Event::Ack {
                mut request, flow, ..
            } => {
                proxy::note_received(&mut request, &flow);
                self.proxy.handle_ack(&mut env, request);
            }
            Event::Response { key, response } => {
                self.proxy.handle_response(&mut env, key, response)
            }
            Event::StrayResponse { response, .. } => {
                self.proxy.handle_stray_response(&mut env, response)
            }
            Event::Timeout { key } => self.proxy.handle_failure(&mut env, key, Failure::Timeout),
            Event::TransportError { key } => {
                self.proxy.handle_failure(&mut env, key, Failure::Transport)
            }
            Event::Terminated { key } => self.proxy.handle_terminated(&mut env, key),
        }
    }

    /// Hands the conference what belongs to its dialogs (in-dialog requests, ACKs,
    /// CANCELs of its INVITEs, the outcome of its BYEs); returns every other event.
    fn conference_event(&mut self, event: Event, now: Instant) -> Option<Event> {
        let actions = match event {
            Event::Request {
                key,
                mut request,
                flow,
            } if self.conference.owns(&request) => {
                // In one of our conference dialogs (BYE, re-INVITE, INFO, …): the
                // conference is the UAS, the proxy never sees it.
                proxy::note_received(&mut request, &flow);
                self.conference
                    .handle_request(key, &request, flow, None, now)
            }
            Event::Ack { request, flow, .. } if self.conference.owns(&request) => {
                self.conference.handle_ack(&request, flow, now)
            }
            Event::Cancel {
                key,
                request,
                invite,
                ..
            } if invite.is_some_and(|k| self.conference.owns_invite(&k)) => {
                self.conference.handle_cancel(key, &request, invite, now)
            }
            // The conference's BYEs: their answers need no routing (the dialog is gone),
            // only the bookkeeping of what is still in flight.
            Event::Response { key, response } if self.conference_requests.contains(&key) => {
                if response.status_code.code() >= 200 {
                    self.conference_requests.remove(&key);
                }
                Vec::new()
            }
            Event::Timeout { key } | Event::TransportError { key } | Event::Terminated { key }
                if self.conference_requests.contains(&key) =>
            {
                self.conference_requests.remove(&key);
                Vec::new()
            }
            other => return Some(other),
        };
        self.run_conference(actions, now);
        None
    }

    /// The transaction user for a new server transaction: its response, or `None` when
    /// the proxy took the request and answers it later.
    fn handle_request(
        &mut self,
        key: TransactionKey,
        req: Request,
        flow: Flow,
        now: Instant,
        accounts: &dyn Accounts,
    ) -> Option<rsip::Response> {
        if let Some(mf) = first(&req.headers, Name::MaxForwards) {
            match mf.trim().parse::<u32>() {
                Ok(0)
                    if req.method != rsip::Method::Register
                        && req.method != rsip::Method::Options =>
                {
                    return Some(reply(&req, 483, Some("Too Many Hops")));
                }
                Ok(_) => {}
                Err(_) => return Some(reply(&req, 400, Some("Bad Max-Forwards"))),
            }
        }
        match req.method {
            rsip::Method::Register => {
                let (resp, outcome) = self.registrar.handle(&req, &flow, now, accounts);
                if outcome == Outcome::AuthFailed || outcome == Outcome::Throttled {
                    self.metrics.auth_failures.inc();
                }
                Some(resp)
            }
            rsip::Method::Options
                if self.addressed_to_node(&req, now) && self.room_of(&req, accounts).is_none() =>
            {
                let mut resp = reply(&req, 200, Some("OK"));
                message::push(&mut resp, message::other("Allow", ALLOW));
                message::push(&mut resp, message::other("Accept", "application/sdp"));
                message::push(&mut resp, message::other("Supported", "path, outbound"));
                Some(resp)
            }
            _ => self.route(key, req, flow, now, accounts),
        }
    }

    /// Whether the Request-URI names the node itself rather than a user.
    fn addressed_to_node(&self, req: &Request, now: Instant) -> bool {
        let uri = req.uri.to_string();
        match crate::sip::headers::uri_parts(&uri) {
            Some(p) => {
                self.registrar.is_local(p.host)
                    && p.user.is_none_or(|u| {
                        self.registrar
                            .location()
                            .lookup(&format!("{u}@{}", self.registrar.domain()), now)
                            .is_empty()
                    })
            }
            None => false,
        }
    }

    /// Requests for users. The proxy validates them, forwards in-dialog ones along their
    /// route set and authenticates local callers; what is left is an initial request for
    /// a user of our domain, routed here by its Request-URI to the AOR's registered
    /// contacts. A user name the node answers itself (a conference room) is decided
    /// here, between the AOR and the location lookup: the conference answers it.
    fn route(
        &mut self,
        key: TransactionKey,
        req: Request,
        flow: Flow,
        now: Instant,
        accounts: &dyn Accounts,
    ) -> Option<rsip::Response> {
        let mut env = Env {
            transactions: &mut self.transactions,
            registrar: &self.registrar,
            accounts,
            now,
        };
        let initial = match self.proxy.handle_request(&mut env, key, req, flow) {
            Verdict::Reply(response) => return Some(response),
            Verdict::Proxied => return None,
            Verdict::Route(initial) => initial,
        };
        if let Some(room) = self.room_of(initial.request(), accounts) {
            let actions =
                self.conference
                    .handle_request(key, initial.request(), flow, Some(&room), now);
            self.run_conference(actions, now);
            return None;
        }
        let uri = initial.request().uri.to_string();
        let Some(aor) = self.registrar.aor_of(&uri) else {
            return Some(reply(initial.request(), 404, Some("Not Found")));
        };
        let targets = self.registrar.location().lookup(&aor, now);
        if targets.is_empty() {
            return Some(reply(initial.request(), 404, Some("Not Found")));
        }
        let mut env = Env {
            transactions: &mut self.transactions,
            registrar: &self.registrar,
            accounts,
            now,
        };
        self.proxy.fork(&mut env, key, initial, flow, &targets)
    }
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
