//! The SIP service's core: routes each incoming message to the transaction layer, each
//! new request to the registrar, the OPTIONS responder or the proxy, and every other
//! transaction event (responses, CANCEL, ACK, timeouts) to the proxy.
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
use crate::sip::proxy::{self, Env, Failure, Proxy, Verdict};
use crate::sip::registrar::{Accounts, Outcome, Registrar};
use crate::sip::transaction::{Event, Flow, TransactionKey, TransactionLayer, Transmit, Transport};

/// Methods this node implements as a UAS, for Allow.
pub const ALLOW: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, REGISTER, INFO";

/// The SIP core of one node.
pub struct SipCore {
    transactions: TransactionLayer,
    registrar: Registrar<LocalLocation>,
    proxy: Proxy,
    metrics: Arc<Metrics>,
    replies: Vec<Transmit>,
}

impl SipCore {
    /// A core around a transaction layer, a registrar and a proxy.
    pub fn new(
        transactions: TransactionLayer,
        registrar: Registrar<LocalLocation>,
        proxy: Proxy,
        metrics: Arc<Metrics>,
    ) -> Self {
        SipCore {
            transactions,
            registrar,
            proxy,
            metrics,
            replies: Vec::new(),
        }
    }

    /// The proxy (for tests and metrics).
    pub fn proxy(&self) -> &Proxy {
        &self.proxy
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
        let mut env = Env {
            transactions: &mut self.transactions,
            registrar: &self.registrar,
            accounts,
            now,
        };
        self.proxy.handle_timeout(&mut env);
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
        match (self.transactions.poll_timeout(), self.proxy.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
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
        self.metrics.dialogs.set(self.proxy.dialogs() as u64);
    }

    fn handle_event(&mut self, event: Event, now: Instant, accounts: &dyn Accounts) {
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
            rsip::Method::Options if self.addressed_to_node(&req, now) => {
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
    /// here, between the AOR and the location lookup.
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
        let uri = initial.request().uri.to_string();
        let Some(aor) = self.registrar.aor_of(&uri) else {
            return Some(reply(initial.request(), 404, Some("Not Found")));
        };
        let targets = self.registrar.location().lookup(&aor, now);
        if targets.is_empty() {
            return Some(reply(initial.request(), 404, Some("Not Found")));
        }
        self.proxy.fork(&mut env, key, initial, flow, &targets)
    }
}
