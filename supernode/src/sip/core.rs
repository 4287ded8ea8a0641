//! The SIP service's core: routes each incoming message to the transaction layer and
//! each new request to the registrar, the OPTIONS responder, or a refusal.
//!
//! Sans-IO like its parts: bytes and the flow they came on go in with the time,
//! datagrams to send come out of [`SipCore::poll_transmit`].

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use rsip::{Request, SipMessage};

use crate::metrics::Metrics;
use crate::sip::intake::{self, Intake, IntakeError};
use crate::sip::location::{LocalLocation, Location};
use crate::sip::message::{self, first, reply, Name, SERVER};
use crate::sip::registrar::{Accounts, Outcome, Registrar};
use crate::sip::transaction::{Event, Flow, TransactionLayer, Transmit, Transport};

/// Methods this node implements as a UAS, for Allow.
pub const ALLOW: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, REGISTER, INFO";

/// The SIP core of one node.
pub struct SipCore {
    transactions: TransactionLayer,
    registrar: Registrar<LocalLocation>,
    metrics: Arc<Metrics>,
    replies: Vec<Transmit>,
}

impl SipCore {
    /// A core around a transaction layer and a registrar.
    pub fn new(
        transactions: TransactionLayer,
        registrar: Registrar<LocalLocation>,
        metrics: Arc<Metrics>,
    ) -> Self {
        SipCore {
            transactions,
            registrar,
            metrics,
            replies: Vec::new(),
        }
    }

    /// The registrar (for loading persisted bindings and for tests).
    pub fn registrar_mut(&mut self) -> &mut Registrar<LocalLocation> {
        &mut self.registrar
    }

    /// One datagram, or one framed stream message, from `flow`.
    pub fn handle_bytes(&mut self, data: &[u8], flow: Flow, now: Instant, accounts: &dyn Accounts) {
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
        self.drain_events(now, accounts);
    }

    /// When [`SipCore::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.transactions.poll_timeout()
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.replies
            .pop()
            .or_else(|| self.transactions.poll_transmit())
    }

    fn drain_events(&mut self, now: Instant, accounts: &dyn Accounts) {
        while let Some(event) = self.transactions.poll_event() {
            if let Event::Request { key, request, flow } = event {
                let response = self.handle_request(&request, &flow, now, accounts);
                self.metrics.response(response.status_code.code());
                // A transaction that vanished meanwhile (transport error) has nobody to
                // answer; nothing else can fail here.
                let _ = self.transactions.respond(&key, response, now);
            }
        }
        self.metrics
            .bindings
            .set(self.registrar.location().len() as u64);
    }

    /// The transaction user: a new server transaction's request in, its response out.
    fn handle_request(
        &mut self,
        req: &Request,
        flow: &Flow,
        now: Instant,
        accounts: &dyn Accounts,
    ) -> rsip::Response {
        if let Some(mf) = first(&req.headers, Name::MaxForwards) {
            match mf.trim().parse::<u32>() {
                Ok(0)
                    if req.method != rsip::Method::Register
                        && req.method != rsip::Method::Options =>
                {
                    return reply(req, 483, Some("Too Many Hops"));
                }
                Ok(_) => {}
                Err(_) => return reply(req, 400, Some("Bad Max-Forwards")),
            }
        }
        match req.method {
            rsip::Method::Register => {
                let (resp, outcome) = self.registrar.handle(req, flow, now, accounts);
                if outcome == Outcome::AuthFailed || outcome == Outcome::Throttled {
                    self.metrics.auth_failures.inc();
                }
                resp
            }
            rsip::Method::Options if self.addressed_to_node(req, now) => {
                let mut resp = reply(req, 200, Some("OK"));
                message::push(&mut resp, message::other("Allow", ALLOW));
                message::push(&mut resp, message::other("Accept", "application/sdp"));
                message::push(&mut resp, message::other("Supported", "path, outbound"));
                resp
            }
            _ => self.route(req, now),
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

    /// Requests for users: until the proxy lands, a clear refusal that says so.
    fn route(&mut self, req: &Request, now: Instant) -> rsip::Response {
        let uri = req.uri.to_string();
        let Some(parts) = crate::sip::headers::uri_parts(&uri) else {
            return reply(req, 416, Some("Unsupported URI Scheme"));
        };
        if !self.registrar.is_local(parts.host) {
            return reply(req, 403, Some("Relaying Denied"));
        }
        let Some(aor) = self.registrar.aor_of(&uri) else {
            return reply(req, 404, Some("Not Found"));
        };
        if self.registrar.location().lookup(&aor, now).is_empty() {
            return reply(req, 404, Some("Not Found"));
        }
        reply(req, 480, Some("Proxying Not Available Yet"))
    }
}
