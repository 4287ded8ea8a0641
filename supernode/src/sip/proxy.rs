//! The stateful forking proxy (RFC 3261 §16): what lets two phones registered here call
//! each other through the node.
//!
//! For every request the core hands over, the proxy validates it (§16.3: Max-Forwards,
//! loops), pre-processes its route information (§16.4: strict-router fix, popping the
//! Route that names us), forwards in-dialog requests along their route set, and
//! authenticates local users with `407` before the core routes an initial request. The
//! core then picks the target set (the AOR's bindings) and calls [`Proxy::fork`], which
//! starts one client transaction per contact (§16.6), each sent over the flow the
//! contact registered on, so a phone behind NAT is reached through its NAT binding.
//!
//! Responses come back through [`Proxy::handle_response`] and are chosen as §16.7 says:
//! provisional responses go upstream as they arrive, every 2xx at once (RFC 6026) with the
//! other branches cancelled, and when all branches failed the best final response.
//!
//! Sans-IO like the rest of the SIP service: the proxy holds no socket and reads no clock.
//! It acts through the [`TransactionLayer`] borrowed in an [`Env`], and its one timer (the
//! no-answer limit, §16.6 step 11's Timer C) is reported by [`Proxy::poll_timeout`].
//!
//! Deliberate simplifications, each with its reason:
//! * No DNS (RFC 3263) yet: a next hop must be a registered contact or an IP literal; a
//!   host name is answered `478 Unresolvable Destination` as Kamailio does. Requests for
//!   other domains and initial requests with a pre-loaded route beyond us are refused with
//!   `403 Relaying Denied` until the overlay brings inter-domain routing.
//! * Loop detection (§16.3 step 4) hashes the fields a spiral changes (Request-URI, Call-ID,
//!   tags, CSeq) but not the top Via: our own branches carry a random part, so including
//!   the Via would make every pass look new. A request that comes back unchanged is a loop.
//! * The no-answer limit runs from the fork and is not restarted by provisional responses
//!   (Kamailio's `fr_inv_timer`), so a phone that rings forever is cancelled on time.

use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rsip::headers::UntypedHeader;
use rsip::{Header, Headers, Method, Request, Response, StatusCode};

use crate::metrics::Metrics;
use crate::sip::auth_limit::AuthLimiter;
use crate::sip::digest::{self, Algorithm, Credentials, NonceCheck, Nonces};
use crate::sip::headers::{params, uri_parts, NameAddr};
use crate::sip::location::{Binding, Location};
use crate::sip::message::{self, first, reply, tag, values, Name};
use crate::sip::registrar::{Accounts, Registrar};
use crate::sip::transaction::{
    new_branch, Flow, State, TransactionKey, TransactionLayer, Transport,
};

/// How long an INVITE may go unanswered before its branches are cancelled and the caller
/// gets `408`: a minute is what Kamailio users know (`fr_inv_timer`), long enough for a
/// person to pick up and short enough that a forgotten call does not hold state.
pub const DEFAULT_NO_ANSWER: Duration = Duration::from_secs(60);

/// How long a dialog counted in [`Proxy::dialogs`] is remembered without its BYE: calls
/// whose BYE never passes through us (a phone that lost power) must not count forever.
const DIALOG_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// What the proxy needs to know about the node it runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// The address other elements reach us at (advertised IP, SIP port): written into our
    /// Via and Record-Route, and recognised in Route headers and in Vias (loops).
    pub address: SocketAddr,
    /// Whether requests claiming a local user in From must authenticate (`407`); off only
    /// with `--sip-auth none`.
    pub authenticate: bool,
    /// Digest challenges offered in Proxy-Authenticate, most preferred first (RFC 8760
    /// §2.4): the registrar's configured list, so a phone that registers can also call.
    pub digest_algorithms: Vec<Algorithm>,
    /// The no-answer limit for INVITE ([`DEFAULT_NO_ANSWER`]).
    pub no_answer: Duration,
}

impl ProxyConfig {
    /// A configuration for a node reachable at `address`, challenging with SHA-256 then
    /// MD5 and the default no-answer limit.
    pub fn new(address: SocketAddr) -> Self {
        ProxyConfig {
            address,
            authenticate: true,
            digest_algorithms: vec![Algorithm::Sha256, Algorithm::Md5],
            no_answer: DEFAULT_NO_ANSWER,
        }
    }
}

/// What the proxy borrows from the core for one call: the transaction layer it acts
/// through, the registrar (domain, aliases, location service), the account table and the
/// time. Borrowed rather than owned so the core keeps one transaction layer for the
/// registrar, the proxy and (later) the conference UAS.
pub struct Env<'a, L: Location> {
    /// Where client transactions are started and server transactions answered.
    pub transactions: &'a mut TransactionLayer,
    /// Our domain, our aliases and the location service.
    pub registrar: &'a Registrar<L>,
    /// Accounts, for Proxy-Authorization.
    pub accounts: &'a dyn Accounts,
    /// The current time.
    pub now: Instant,
}

/// What [`Proxy::handle_request`] decided.
#[derive(Debug)]
pub enum Verdict {
    /// Answer the request with this response (refusal or challenge).
    Reply(Response),
    /// The proxy forwarded it (an in-dialog request) and answers it when its branch does.
    Proxied,
    /// A valid, authenticated initial request for our domain: the core picks its targets
    /// and hands it back to [`Proxy::fork`] (or answers it as a UAS).
    Route(Initial),
}

/// An initial request that passed validation and authentication, with what forwarding
/// it needs from that stage (the loop-detection value of the request as received).
#[derive(Debug)]
pub struct Initial {
    request: Request,
    loop_tag: u64,
}

impl Initial {
    /// The request, Route naming us popped and our Proxy-Authorization consumed.
    pub fn request(&self) -> &Request {
        &self.request
    }

    /// The request, for a core that answers it itself instead of forking it.
    pub fn into_request(self) -> Request {
        self.request
    }
}

/// Why a client transaction ended without a response (the transaction layer's
/// [`Event::Timeout`](crate::sip::transaction::Event::Timeout) and
/// [`Event::TransportError`](crate::sip::transaction::Event::TransportError)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Timer B or F, or the §9.1 give-up after a CANCEL: counts as `408` (§16.7 step 2).
    Timeout,
    /// The driver could not send: counts as `480`, the phone is not reachable right now.
    Transport,
}

/// One client transaction of a forwarded request.
#[derive(Debug)]
struct Branch {
    key: TransactionKey,
    /// A final response (or a failure) arrived.
    done: bool,
    /// The transaction has not terminated yet: responses may still come.
    live: bool,
    /// Cancelled by the no-answer limit, so its `487` means "nobody answered": `408`.
    by_timer: bool,
}

/// The response context of one forwarded request (§16.7): keyed by its server
/// transaction, it collects the branches' answers until one goes upstream.
#[derive(Debug)]
struct Context {
    /// The request reduced to what a response needs (Vias, From, To, Call-ID, CSeq), for
    /// the responses we make ourselves (408, 480, 487).
    template: Request,
    /// The flow the request came on: where a late 2xx goes once the server transaction
    /// has ended (RFC 6026 §8.2, forwarded statelessly).
    upstream: Flow,
    server_alive: bool,
    branches: Vec<Branch>,
    /// Final non-2xx responses of finished branches, ready to go upstream.
    finals: Vec<Response>,
    /// A final response went upstream: later non-2xx are absorbed.
    answered: bool,
    /// The caller sent CANCEL: answer `487` once the branches report.
    cancelled: bool,
    /// When the no-answer limit fires, for INVITE.
    deadline: Option<Instant>,
    /// An initial INVITE: each 2xx establishes a dialog through us.
    forms_dialog: bool,
    /// A BYE: its final response ends this dialog.
    ends_dialog: Option<String>,
}

impl Context {
    fn new(request: &Request, upstream: Flow) -> Self {
        let headers: Vec<Header> = request
            .headers
            .iter()
            .filter(|h| {
                matches!(
                    h,
                    Header::Via(_)
                        | Header::From(_)
                        | Header::To(_)
                        | Header::CallId(_)
                        | Header::CSeq(_)
                )
            })
            .cloned()
            .collect();
        let in_dialog = has_to_tag(request);
        Context {
            template: Request {
                method: request.method,
                uri: request.uri.clone(),
                version: request.version.clone(),
                headers: Headers::from(headers),
                body: Vec::new(),
            },
            upstream,
            server_alive: true,
            branches: Vec::new(),
            finals: Vec::new(),
            answered: false,
            cancelled: false,
            deadline: None,
            forms_dialog: request.method == Method::Invite && !in_dialog,
            ends_dialog: (request.method == Method::Bye)
                .then(|| dialog_id(&request.headers))
                .flatten(),
        }
    }

    fn pending(&self) -> impl Iterator<Item = &Branch> {
        self.branches.iter().filter(|b| !b.done)
    }

    /// The response that goes upstream once every branch failed (§16.7 step 6).
    fn best(&mut self) -> Response {
        if self.cancelled && self.template.method == Method::Invite {
            // The caller asked for the end of this INVITE: whatever the branches said, it
            // gets the answer a UAS gives to a cancelled INVITE (§9.2).
            return reply(&self.template, 487, None);
        }
        let Some(i) = (0..self.finals.len()).min_by_key(|&i| {
            let code = self.finals[i].status_code.code();
            (preference(code), i)
        }) else {
            return reply(&self.template, 500, None);
        };
        let mut best = self.finals.swap_remove(i);
        match best.status_code.code() {
            // §16.7 step 6: a 503 must not make the caller think *we* are overloaded.
            503 => best.status_code = StatusCode::Other(500, message::phrase(500).into()),
            // §16.7 step 7: every challenge goes up, so the caller can answer all at once.
            401 | 407 => {
                for other in &self.finals {
                    for h in other.headers.iter() {
                        let challenge =
                            matches!(h, Header::WwwAuthenticate(_) | Header::ProxyAuthenticate(_));
                        if challenge && !best.headers.iter().any(|b| b == h) {
                            message::push(&mut best, h.clone());
                        }
                    }
                }
            }
            _ => {}
        }
        best
    }
}

/// The proxy core of one node: response contexts, the branches that feed them, the
/// no-answer timers, and the nonces of its `407` challenges.
pub struct Proxy {
    config: ProxyConfig,
    nonces: Nonces,
    metrics: Arc<Metrics>,
    /// By server transaction.
    contexts: HashMap<TransactionKey, Context>,
    /// Client transaction → the server transaction whose context it feeds.
    branches: HashMap<TransactionKey, TransactionKey>,
    /// No-answer deadlines, earliest first.
    timers: BTreeSet<(Instant, TransactionKey)>,
    /// Dialogs established through us (by Call-ID and tags) and since when.
    dialogs: HashMap<String, Instant>,
    /// Dialog-table size after the last sweep of lapsed entries.
    swept_at: usize,
    /// Failed Proxy-Authorization attempts, per source and per user.
    failures: AuthLimiter,
}

impl Proxy {
    /// A proxy with its own nonces: its challenges are independent of the registrar's,
    /// so neither can be used to replay the other's.
    pub fn new(config: ProxyConfig, nonces: Nonces, metrics: Arc<Metrics>) -> Self {
        Proxy {
            config,
            nonces,
            metrics,
            contexts: HashMap::new(),
            branches: HashMap::new(),
            timers: BTreeSet::new(),
            dialogs: HashMap::new(),
            swept_at: 0,
            failures: AuthLimiter::new(),
        }
    }

    /// The configuration in force, e.g. the address the node advertises.
    pub fn config(&self) -> &ProxyConfig {
        &self.config
    }

    /// Dialogs established through the proxy and not yet ended by a BYE, for the
    /// `dialogs` gauge.
    pub fn dialogs(&self) -> usize {
        self.dialogs.len()
    }

    /// Requests being forwarded right now (for leak checks in tests and metrics).
    pub fn pending(&self) -> usize {
        self.contexts.len()
    }

    /// When [`Proxy::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// A new request (not REGISTER, not for the node itself) on server transaction `key`:
    /// validation (§16.3), route pre-processing (§16.4), in-dialog forwarding, and the
    /// `407` challenge for local users.
    pub fn handle_request<L: Location>(
        &mut self,
        env: &mut Env<'_, L>,
        key: TransactionKey,
        mut request: Request,
        flow: Flow,
    ) -> Verdict {
        // §16.3 step 3.
        if max_forwards(&request) == Some(0) {
            return Verdict::Reply(reply(&request, 483, None));
        }
        // §16.3 step 4, on the request as received.
        let loop_tag = loop_hash(&request);
        if self.looped(&request, loop_tag) {
            return Verdict::Reply(reply(&request, 482, None));
        }
        self.fix_strict_route(&mut request, env.registrar);
        let popped = self.pop_own_routes(&mut request, env.registrar);
        if has_to_tag(&request) {
            // In-dialog: we are on the route set only if the request came through a Route
            // naming us. Never challenged: the dialog was authorised when it was created,
            // and phones repeat stale credentials here (baresip).
            if !popped {
                return Verdict::Reply(reply(&request, 404, Some("Not Here")));
            }
            strip_credentials(&mut request, env.registrar.domain());
            return self.forward_in_dialog(env, key, request, flow, loop_tag);
        }
        if first(&request.headers, Name::Route).is_some() {
            return Verdict::Reply(reply(&request, 403, Some("Relaying Denied")));
        }
        let uri = request.uri.to_string();
        match uri_parts(&uri) {
            None => return Verdict::Reply(reply(&request, 416, None)),
            Some(p) if !env.registrar.is_local(p.host) => {
                return Verdict::Reply(reply(&request, 403, Some("Relaying Denied")));
            }
            Some(_) => {}
        }
        if self.config.authenticate {
            if let Some(refusal) = self.authorize(env, &request, &flow) {
                return Verdict::Reply(refusal);
            }
        }
        strip_credentials(&mut request, env.registrar.domain());
        Verdict::Route(Initial { request, loop_tag })
    }

    /// Forwards an initial request to every target in parallel (§16.6), one client
    /// transaction each, over the flow each contact registered on. Returns the response
    /// to send at once when no branch could be started.
    pub fn fork<L: Location>(
        &mut self,
        env: &mut Env<'_, L>,
        key: TransactionKey,
        initial: Initial,
        upstream: Flow,
        targets: &[Binding],
    ) -> Option<Response> {
        let Initial { request, loop_tag } = initial;
        let mut ctx = Context::new(&request, upstream);
        let record_route = creates_dialog(request.method);
        for target in targets {
            // A contact rsip cannot represent (an IPv6 literal) is skipped, not fatal.
            let Ok(uri) = rsip::Uri::try_from(target.contact.as_str()) else {
                tracing::debug!("skipping unparsable contact {:?}", target.contact);
                continue;
            };
            let out = self.forward_copy(
                &request,
                Some(uri),
                &target.flow,
                &upstream,
                loop_tag,
                record_route,
            );
            match env.transactions.send_request(out, target.flow, env.now) {
                Ok(branch) => self.add_branch(&mut ctx, key, branch),
                Err(e) => tracing::warn!("forwarding to {}: {e}", target.contact),
            }
        }
        if ctx.branches.is_empty() {
            return Some(reply(&request, 480, None));
        }
        self.start(key, ctx, env.now);
        None
    }

    /// A CANCEL (§16.10): `200` for the CANCEL itself, CANCEL on every pending branch; the
    /// INVITE is answered `487` once they report. Unmatched CANCELs get `481`.
    pub fn handle_cancel<L: Location>(
        &mut self,
        env: &mut Env<'_, L>,
        key: TransactionKey,
        request: &Request,
        invite: Option<TransactionKey>,
    ) {
        let Some(invite) = invite else {
            self.respond(env, key, reply(request, 481, None));
            return;
        };
        self.respond(env, key, reply(request, 200, None));
        if let Some(ctx) = self.contexts.get_mut(&invite) {
            if !ctx.answered {
                ctx.cancelled = true;
                cancel_pending(ctx, env, false);
            }
        }
    }

    /// An ACK outside any server transaction: the ACK for a 2xx, which travels end to
    /// end along the route set and is forwarded statelessly (§16.11, RFC 6026).
    pub fn handle_ack<L: Location>(&mut self, env: &mut Env<'_, L>, mut request: Request) {
        if max_forwards(&request) == Some(0) {
            return;
        }
        self.fix_strict_route(&mut request, env.registrar);
        // Not routed through us: nothing to forward it along (it is never answered).
        if !self.pop_own_routes(&mut request, env.registrar) {
            return;
        }
        strip_credentials(&mut request, env.registrar.domain());
        let Some(next) = self.next_hop(env, &request) else {
            return;
        };
        let out = self.forward_copy(&request, None, &next, &next, 0, false);
        env.transactions
            .send_stateless(&rsip::SipMessage::Request(out), next);
    }

    /// A response for one of our client transactions (§16.7).
    pub fn handle_response<L: Location>(
        &mut self,
        env: &mut Env<'_, L>,
        key: TransactionKey,
        mut response: Response,
    ) {
        let Some(&server) = self.branches.get(&key) else {
            return; // our CANCEL's own response, or a context already gone
        };
        let Some(ctx) = self.contexts.get_mut(&server) else {
            return;
        };
        let Some(index) = ctx.branches.iter().position(|b| b.key == key) else {
            return;
        };
        // §16.7 step 3: our Via goes. What is left must be the Vias of the request as
        // we received it, so they are put back from there: the same for a correct UAS,
        // and right for one that built its 487 from our CANCEL (which has only our Via).
        restore_vias(&mut response, &ctx.template);
        readable_reason(&mut response);
        let code = response.status_code.code();
        match code {
            // Hop by hop: the server transaction sent its own.
            100 => {}
            101..=199 => {
                if !ctx.answered {
                    respond_upstream(ctx, env, &self.metrics, server, response);
                }
            }
            200..=299 => {
                ctx.branches[index].done = true;
                if ctx.forms_dialog {
                    if let Some(id) = dialog_id(&response.headers) {
                        self.dialogs.entry(id).or_insert(env.now);
                    }
                }
                if let Some(id) = &ctx.ends_dialog {
                    self.dialogs.remove(id);
                }
                // RFC 6026: every 2xx goes up, even after another answer, so the caller can
                // ACK (and BYE) each dialog.
                respond_upstream(ctx, env, &self.metrics, server, response);
                if !ctx.answered {
                    ctx.answered = true;
                    if let Some(at) = ctx.deadline.take() {
                        self.timers.remove(&(at, server));
                    }
                    // §16.7 step 10: the call is answered; the other phones stop ringing.
                    cancel_pending(ctx, env, false);
                }
                self.sweep_dialogs(env.now);
            }
            _ => {
                let branch = &mut ctx.branches[index];
                if branch.done {
                    return;
                }
                branch.done = true;
                if let Some(id) = &ctx.ends_dialog {
                    // Any final answer to a BYE ends the dialog (§15.1.2).
                    self.dialogs.remove(id);
                }
                if branch.by_timer && code == 487 {
                    ctx.finals.push(reply(&ctx.template, 408, None));
                } else {
                    ctx.finals.push(response);
                }
                if code >= 600 {
                    // §16.7 step 5: a 6xx is definitive; no other branch can do better.
                    cancel_pending(ctx, env, false);
                }
                self.finish(env, server);
            }
        }
    }

    /// A client transaction failed (§16.7 step 2: a timeout counts as `408`), or a server
    /// transaction could not send its response.
    pub fn handle_failure<L: Location>(
        &mut self,
        env: &mut Env<'_, L>,
        key: TransactionKey,
        failure: Failure,
    ) {
        if let Some(&server) = self.branches.get(&key) {
            let Some(ctx) = self.contexts.get_mut(&server) else {
                return;
            };
            let Some(branch) = ctx.branches.iter_mut().find(|b| b.key == key) else {
                return;
            };
            if branch.done {
                return;
            }
            branch.done = true;
            let code = match failure {
                Failure::Timeout => 408,
                Failure::Transport => 480,
            };
            ctx.finals.push(reply(&ctx.template, code, None));
            self.finish(env, server);
        } else if let Some(ctx) = self.contexts.get_mut(&key) {
            if failure == Failure::Transport {
                // The caller cannot be told anything any more: stop the phones ringing.
                ctx.server_alive = false;
                cancel_pending(ctx, env, false);
            }
        }
    }

    /// A transaction ended: its context goes once no branch can answer any more.
    pub fn handle_terminated<L: Location>(&mut self, env: &mut Env<'_, L>, key: TransactionKey) {
        let server = match self.branches.remove(&key) {
            Some(server) => {
                if let Some(b) = self
                    .contexts
                    .get_mut(&server)
                    .and_then(|ctx| ctx.branches.iter_mut().find(|b| b.key == key))
                {
                    b.live = false;
                }
                server
            }
            None => {
                if let Some(ctx) = self.contexts.get_mut(&key) {
                    ctx.server_alive = false;
                }
                key
            }
        };
        let finished = self
            .contexts
            .get(&server)
            .is_some_and(|ctx| ctx.branches.iter().all(|b| !b.live));
        if finished {
            // Every branch ends with a response or a failure before it terminates, so
            // this only guards the promise that each server transaction gets an answer.
            for branch in self
                .contexts
                .get_mut(&server)
                .into_iter()
                .flat_map(|c| c.branches.iter_mut())
            {
                branch.done = true;
            }
            self.finish(env, server);
            if let Some(ctx) = self.contexts.remove(&server) {
                if let Some(at) = ctx.deadline {
                    self.timers.remove(&(at, server));
                }
            }
        }
    }

    /// A response that matched no client transaction (§18.1.2). A 2xx to INVITE is
    /// forwarded statelessly along its Via (RFC 6026 §8.2: its transaction may have ended
    /// while the UAS still retransmits); anything else is dropped.
    pub fn handle_stray_response<L: Location>(
        &mut self,
        env: &mut Env<'_, L>,
        mut response: Response,
    ) {
        let code = response.status_code.code();
        let invite = message::cseq(&response.headers).is_some_and(|(_, m)| m == "INVITE");
        if !(200..300).contains(&code) || !invite {
            return;
        }
        let ours = first(&response.headers, Name::Via)
            .and_then(ViaParts::parse)
            .is_some_and(|v| self.is_us(v.host, v.port));
        if !ours || !pop_via(&mut response) {
            return;
        }
        let Some(next) = first(&response.headers, Name::Via).and_then(ViaParts::parse) else {
            return;
        };
        // Without the connection it came on, a stream peer cannot be reached statelessly.
        let Some(remote) = next.response_address().filter(|_| next.is_udp()) else {
            return;
        };
        readable_reason(&mut response);
        let flow = Flow {
            transport: Transport::Udp,
            remote,
            connection: None,
        };
        env.transactions
            .send_stateless(&rsip::SipMessage::Response(response), flow);
    }

    /// Runs the no-answer limits due at `env.now`: every branch still pending is
    /// cancelled, and the caller gets `408` once they report.
    pub fn handle_timeout<L: Location>(&mut self, env: &mut Env<'_, L>) {
        while let Some(&(at, server)) = self.timers.first() {
            if at > env.now {
                break;
            }
            self.timers.remove(&(at, server));
            if let Some(ctx) = self.contexts.get_mut(&server) {
                ctx.deadline = None;
                if !ctx.answered {
                    cancel_pending(ctx, env, true);
                }
            }
        }
    }

    // ---- forwarding ----

    /// §16.6 steps 1–8 for one target: the copy with its Request-URI, Max-Forwards,
    /// Record-Route and our Via. `uri` is `None` when the Request-URI stays (loose routing).
    fn forward_copy(
        &self,
        request: &Request,
        uri: Option<rsip::Uri>,
        out: &Flow,
        inbound: &Flow,
        loop_tag: u64,
        record_route: bool,
    ) -> Request {
        let mut copy = request.clone();
        if let Some(uri) = uri {
            copy.uri = uri;
        }
        let mut headers: Vec<Header> = std::mem::take(&mut copy.headers).into();
        let hops = max_forwards(request).map_or(70, |n| n.saturating_sub(1));
        let hops = Header::MaxForwards(rsip::headers::MaxForwards::new(hops.to_string()));
        match headers
            .iter()
            .position(|h| matches!(h, Header::MaxForwards(_)))
        {
            Some(i) => headers[i] = hops,
            None => headers.push(hops),
        }
        let first_via = headers
            .iter()
            .position(|h| matches!(h, Header::Via(_)))
            .unwrap_or(0);
        if record_route {
            // Above any existing Record-Route. Two entries when the transports differ
            // (Kamailio's double Record-Route), so each side's first route names the
            // transport it talks to us on; both are popped when the dialog comes back.
            let mut entries = vec![self.record_route(out.transport)];
            if inbound.transport != out.transport {
                entries.push(self.record_route(inbound.transport));
            }
            let after_vias = headers
                .iter()
                .rposition(|h| matches!(h, Header::Via(_)))
                .map_or(0, |i| i + 1);
            let at = headers
                .iter()
                .position(|h| matches!(h, Header::RecordRoute(_)))
                .unwrap_or(after_vias);
            for (i, rr) in entries.into_iter().enumerate() {
                headers.insert(at.min(headers.len()) + i, rr);
            }
        }
        // Our Via on top, with a branch that carries the loop-detection value.
        let via = format!(
            "SIP/2.0/{} {};branch={}.{loop_tag:x}",
            via_transport(out.transport),
            self.config.address,
            new_branch()
        );
        headers.insert(first_via, Header::Via(rsip::headers::Via::new(via)));
        copy.headers = Headers::from(headers);
        copy
    }

    fn record_route(&self, transport: Transport) -> Header {
        Header::RecordRoute(rsip::headers::RecordRoute::new(format!(
            "<sip:{};transport={};lr>",
            self.config.address,
            transport.name()
        )))
    }

    /// Forwards a request inside a dialog along its route set, statefully, to the next
    /// Route or (none left) the Request-URI.
    fn forward_in_dialog<L: Location>(
        &mut self,
        env: &mut Env<'_, L>,
        key: TransactionKey,
        request: Request,
        upstream: Flow,
        loop_tag: u64,
    ) -> Verdict {
        let Some(next) = self.next_hop(env, &request) else {
            return Verdict::Reply(reply(&request, 478, Some("Unresolvable Destination")));
        };
        let out = self.forward_copy(&request, None, &next, &upstream, loop_tag, false);
        let mut ctx = Context::new(&request, upstream);
        match env.transactions.send_request(out, next, env.now) {
            Ok(branch) => self.add_branch(&mut ctx, key, branch),
            Err(e) => {
                tracing::warn!("forwarding in-dialog {}: {e}", request.method);
                return Verdict::Reply(reply(&request, 500, None));
            }
        }
        self.start(key, ctx, env.now);
        Verdict::Proxied
    }

    /// Where a request routed by its first Route (or, with none, its Request-URI) goes: the
    /// flow of a registered contact with that host and port, so a phone behind NAT is
    /// reached through its NAT binding (and a TCP phone over its connection); otherwise
    /// UDP (TCP when the URI says so) to the IP literal. `None` for a host name.
    fn next_hop<L: Location>(&self, env: &Env<'_, L>, request: &Request) -> Option<Flow> {
        let route = first(&request.headers, Name::Route)
            .and_then(NameAddr::parse)
            .map(|n| n.uri.to_string());
        let target = route.unwrap_or_else(|| request.uri.to_string());
        let parts = uri_parts(&target)?;
        let port = parts.port.unwrap_or(default_port(parts.scheme));
        // Whose contact it may be: the To of a request along a dialog is the AOR of the
        // party it goes to; the target's own user part is the other good guess.
        let to_aor = first(&request.headers, Name::To)
            .and_then(NameAddr::parse)
            .and_then(|n| env.registrar.aor_of(n.uri));
        let user_aor = parts
            .user
            .map(|u| format!("{u}@{}", env.registrar.domain()));
        for aor in to_aor.iter().chain(user_aor.iter()) {
            for binding in env.registrar.location().lookup(aor, env.now) {
                let same = uri_parts(&binding.contact).is_some_and(|c| {
                    c.host.eq_ignore_ascii_case(parts.host)
                        && c.port.unwrap_or(default_port(c.scheme)) == port
                });
                if same {
                    return Some(binding.flow);
                }
            }
        }
        let ip: IpAddr = parts.host.parse().ok()?;
        let stream = parts.params.iter().any(|(n, v)| {
            n.eq_ignore_ascii_case("transport")
                && v.is_some_and(|v| v.eq_ignore_ascii_case("tcp") || v.eq_ignore_ascii_case("tls"))
        }) || parts.scheme.eq_ignore_ascii_case("sips");
        Some(Flow {
            transport: if stream {
                Transport::Tcp
            } else {
                Transport::Udp
            },
            remote: SocketAddr::new(ip, port),
            connection: None,
        })
    }

    fn add_branch(&mut self, ctx: &mut Context, server: TransactionKey, key: TransactionKey) {
        ctx.branches.push(Branch {
            key,
            done: false,
            live: true,
            by_timer: false,
        });
        self.branches.insert(key, server);
    }

    /// Stores a context whose branches are running, with its no-answer limit (INVITE).
    fn start(&mut self, server: TransactionKey, mut ctx: Context, now: Instant) {
        if ctx.template.method == Method::Invite {
            let at = now + self.config.no_answer;
            ctx.deadline = Some(at);
            self.timers.insert((at, server));
        }
        self.contexts.insert(server, ctx);
    }

    /// Sends the best final response once no branch is pending (§16.7 step 4).
    fn finish<L: Location>(&mut self, env: &mut Env<'_, L>, server: TransactionKey) {
        let Some(ctx) = self.contexts.get_mut(&server) else {
            return;
        };
        if ctx.answered || ctx.pending().next().is_some() {
            return;
        }
        ctx.answered = true;
        if let Some(at) = ctx.deadline.take() {
            self.timers.remove(&(at, server));
        }
        let best = ctx.best();
        respond_upstream(ctx, env, &self.metrics, server, best);
    }

    fn respond<L: Location>(&self, env: &mut Env<'_, L>, key: TransactionKey, response: Response) {
        self.metrics.response(response.status_code.code());
        // A transaction that vanished meanwhile has nobody to answer.
        let _ = env.transactions.respond(&key, response, env.now);
    }

    /// Forgets dialogs older than [`DIALOG_LIFETIME`], whenever the table has doubled
    /// since the last sweep, so the cost stays amortised O(1) per dialog.
    fn sweep_dialogs(&mut self, now: Instant) {
        if self.dialogs.len() < 1024 || self.dialogs.len() < self.swept_at * 2 {
            return;
        }
        self.dialogs
            .retain(|_, since| now.saturating_duration_since(*since) < DIALOG_LIFETIME);
        self.swept_at = self.dialogs.len();
    }

    // ---- validation and route pre-processing ----

    /// §16.3 step 4: one of the Vias is ours and carries the value this very request
    /// would get again, so it has been here in the same shape: a loop, not a spiral.
    fn looped(&self, request: &Request, loop_tag: u64) -> bool {
        let suffix = format!(".{loop_tag:x}");
        values(&request.headers, Name::Via)
            .filter_map(ViaParts::parse)
            .any(|v| {
                self.is_us(v.host, v.port)
                    && v.param("branch")
                        .flatten()
                        .is_some_and(|b| b.ends_with(&suffix))
            })
    }

    /// Whether `host:port` is this node's SIP address.
    fn is_us(&self, host: &str, port: Option<u16>) -> bool {
        let ours = self.config.address;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        host.parse::<IpAddr>().is_ok_and(|ip| ip == ours.ip())
            && port.unwrap_or(5060) == ours.port()
    }

    /// Whether a Route URI names us: our address, or our domain or an alias with our port
    /// (or no port, which means the default one, or DNS for the domain).
    fn names_us<L: Location>(&self, uri: &str, registrar: &Registrar<L>) -> bool {
        let Some(p) = uri_parts(uri) else {
            return false;
        };
        if self.is_us(p.host, p.port) {
            return true;
        }
        registrar.is_local(p.host)
            && match p.port {
                Some(port) => port == self.config.address.port(),
                None => {
                    p.host.eq_ignore_ascii_case(registrar.domain())
                        || self.config.address.port() == 5060
                }
            }
    }

    /// §16.4: a strict router upstream put our Record-Route URI into the Request-URI and
    /// the real target into the last Route; undo that.
    fn fix_strict_route<L: Location>(&self, request: &mut Request, registrar: &Registrar<L>) {
        let uri = request.uri.to_string();
        let is_ours =
            uri_parts(&uri).is_some_and(|p| p.user.is_none()) && self.names_us(&uri, registrar);
        if !is_ours {
            return;
        }
        let mut headers: Vec<Header> = std::mem::take(&mut request.headers).into();
        let last = headers.iter().rposition(|h| matches!(h, Header::Route(_)));
        if let Some(i) = last {
            let target = match &headers[i] {
                Header::Route(r) => {
                    NameAddr::parse(r.value()).and_then(|n| rsip::Uri::try_from(n.uri).ok())
                }
                _ => None,
            };
            if let Some(target) = target {
                request.uri = target;
                headers.remove(i);
            }
        }
        request.headers = Headers::from(headers);
    }

    /// §16.4: removes the Route values at the top that name us (two after a double
    /// Record-Route). Returns whether there was one.
    fn pop_own_routes<L: Location>(&self, request: &mut Request, registrar: &Registrar<L>) -> bool {
        let mut popped = false;
        loop {
            let top = request
                .headers
                .iter()
                .position(|h| matches!(h, Header::Route(_)));
            let Some(i) = top else {
                return popped;
            };
            let ours = match request.headers.iter().nth(i) {
                Some(Header::Route(r)) => {
                    NameAddr::parse(r.value()).is_some_and(|n| self.names_us(n.uri, registrar))
                }
                _ => false,
            };
            if !ours {
                return popped;
            }
            let mut headers: Vec<Header> = std::mem::take(&mut request.headers).into();
            headers.remove(i);
            request.headers = Headers::from(headers);
            popped = true;
        }
    }

    // ---- authentication ----

    /// §22.3: a request whose From claims one of our users must carry that user's valid
    /// Proxy-Authorization; returns the refusal to send otherwise. The digest `uri` is not
    /// compared with the Request-URI (sipp puts the proxy's address there; Kamailio does
    /// not compare either): the response still covers the method and our nonce.
    fn authorize<L: Location>(
        &mut self,
        env: &mut Env<'_, L>,
        request: &Request,
        flow: &Flow,
    ) -> Option<Response> {
        let from = first(&request.headers, Name::From).and_then(NameAddr::parse)?;
        let claimed = uri_parts(from.uri)?;
        if !env.registrar.is_local(claimed.host) {
            return None; // callers from elsewhere may call our users
        }
        let user = claimed.user?.to_string();
        let realm = env.registrar.domain().to_string();
        let creds = values(&request.headers, Name::ProxyAuthorization)
            .filter_map(|v| Credentials::parse(v).ok())
            .find(|c| c.realm.eq_ignore_ascii_case(&realm));
        let Some(creds) = creds else {
            return Some(self.challenge(request, &realm, env.now, false));
        };
        if self.failures.throttled(flow.remote.ip(), &user, env.now) {
            return Some(reply(request, 403, Some("Too Many Failed Attempts")));
        }
        if creds.username != user {
            self.failures.failed(flow.remote.ip(), &user, env.now);
            self.metrics.auth_failures.inc();
            return Some(reply(
                request,
                403,
                Some("Authentication ID Does Not Match From"),
            ));
        }
        let account = env.accounts.account(&user);
        // Unknown users are checked against a dummy HA1, so they cost and look the same
        // as a wrong password.
        let ha1 = match (&account, creds.algorithm) {
            (Some(a), Algorithm::Md5) => a.ha1_md5.clone(),
            (Some(a), Algorithm::Sha256) => a.ha1_sha256.clone(),
            (None, alg) => digest::dummy_ha1(alg).to_string(),
        };
        let method = request.method.to_string();
        if account.is_none() || !digest::verify(&creds, &method, &ha1) {
            self.failures.failed(flow.remote.ip(), &user, env.now);
            self.metrics.auth_failures.inc();
            tracing::warn!(
                target: "supernode::auth",
                "proxy auth failure: src={} user={:?} method={}",
                flow.remote.ip(),
                user,
                method
            );
            return Some(self.challenge(request, &realm, env.now, false));
        }
        match self.nonces.check(&creds.nonce, creds.nc, env.now) {
            NonceCheck::Fresh => None,
            NonceCheck::Stale => Some(self.challenge(request, &realm, env.now, true)),
            NonceCheck::Replayed | NonceCheck::Forged => {
                Some(self.challenge(request, &realm, env.now, false))
            }
        }
    }

    /// `407` with one Proxy-Authenticate per configured algorithm, in that order.
    fn challenge(&mut self, request: &Request, realm: &str, now: Instant, stale: bool) -> Response {
        let nonce = self.nonces.issue(now);
        let [sha256, md5] = digest::challenge(realm, &nonce, stale);
        let mut resp = reply(request, 407, None);
        for alg in &self.config.digest_algorithms {
            let value = match alg {
                Algorithm::Sha256 => sha256.clone(),
                Algorithm::Md5 => md5.clone(),
            };
            message::push(
                &mut resp,
                Header::ProxyAuthenticate(rsip::headers::ProxyAuthenticate::new(value)),
            );
        }
        resp
    }
}

/// Sends a response upstream on the context's server transaction, or statelessly to the
/// caller's flow when that transaction cannot take it any more (a 2xx after it ended or
/// after a non-2xx final, RFC 6026 §8.2).
fn respond_upstream<L: Location>(
    ctx: &Context,
    env: &mut Env<'_, L>,
    metrics: &Metrics,
    server: TransactionKey,
    response: Response,
) {
    let code = response.status_code.code();
    let is_2xx = (200..300).contains(&code);
    let open = ctx.server_alive
        && match env.transactions.state(&server) {
            Some(State::Trying | State::Proceeding) => true,
            Some(State::Accepted) => is_2xx,
            _ => false,
        };
    if open {
        metrics.response(code);
        // Cannot fail in these states; a transaction gone meanwhile has nobody to answer.
        let _ = env.transactions.respond(&server, response, env.now);
    } else if is_2xx && ctx.template.method == Method::Invite {
        metrics.response(code);
        env.transactions
            .send_stateless(&rsip::SipMessage::Response(response), ctx.upstream);
    }
    // Anything else is a late non-2xx, which §16.7 absorbs.
}

/// CANCELs every pending INVITE branch (§9.1; non-INVITE branches just run out).
/// `by_timer` marks them so their `487` counts as the `408` of a call nobody answered.
fn cancel_pending<L: Location>(ctx: &mut Context, env: &mut Env<'_, L>, by_timer: bool) {
    if ctx.template.method != Method::Invite {
        return;
    }
    for branch in ctx.branches.iter_mut().filter(|b| !b.done) {
        // Fails only when already cancelled or already final: nothing left to do then.
        if env.transactions.cancel(&branch.key, env.now).is_ok() {
            branch.by_timer = by_timer;
        }
    }
}

/// Removes the Proxy-Authorization values for our realm: they were meant for us alone
/// (and in-dialog they are stale copies), so they must not travel further.
fn strip_credentials(request: &mut Request, realm: &str) {
    request.headers.retain(|h| match h {
        Header::ProxyAuthorization(v) => {
            Credentials::parse(v.value()).map_or(true, |c| !c.realm.eq_ignore_ascii_case(realm))
        }
        _ => true,
    });
}

/// RFC 3581 §4 and RFC 3261 §18.2.1: notes in the top Via where the request really came
/// from (`received` when the sent-by host is not the source address, `rport` filled in
/// when asked for), so responses, ours and forwarded ones, reach a phone behind NAT.
pub fn note_received(request: &mut Request, flow: &Flow) {
    let Some(via) = request.headers.iter_mut().find_map(|h| match h {
        Header::Via(v) => Some(v),
        _ => None,
    }) else {
        return;
    };
    let Some(parts) = ViaParts::parse(via.value()) else {
        return;
    };
    let source = flow.remote.ip();
    let wants_rport = parts.param("rport") == Some(None);
    let same_host = parts
        .host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .is_ok_and(|ip| ip == source);
    // RFC 3581: with rport, `received` is added even when it equals the sent-by.
    if same_host && !wants_rport {
        return;
    }
    let mut value = parts.head.to_string();
    for (name, v) in &parts.params {
        if name.eq_ignore_ascii_case("received") {
            continue;
        }
        value.push(';');
        value.push_str(name);
        if name.eq_ignore_ascii_case("rport") {
            value.push_str(&format!("={}", flow.remote.port()));
        } else if let Some(v) = v {
            value.push('=');
            value.push_str(v);
        }
    }
    value.push_str(&format!(";received={source}"));
    *via = rsip::headers::Via::new(value);
}

/// The parts of one Via value the proxy reads.
struct ViaParts<'a> {
    /// `SIP/2.0/UDP host:port`, as written.
    head: &'a str,
    transport: &'a str,
    host: &'a str,
    port: Option<u16>,
    params: Vec<(&'a str, Option<&'a str>)>,
}

impl<'a> ViaParts<'a> {
    /// Parses a Via value as intake normalised it (`SIP/2.0/UDP host:port;params`).
    fn parse(value: &'a str) -> Option<Self> {
        let value = value.trim();
        let (head, rest) = match value.find(';') {
            Some(i) => (&value[..i], &value[i..]),
            None => (value, ""),
        };
        let mut words = head.split_whitespace();
        let protocol = words.next()?;
        let sent_by = words.next()?;
        let transport = protocol.rsplit('/').next()?;
        let (host, port) = if let Some(v6) = sent_by.strip_prefix('[') {
            let close = v6.find(']')?;
            let port = v6[close + 1..].strip_prefix(':');
            (&sent_by[..close + 2], port)
        } else {
            match sent_by.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (sent_by, None),
            }
        };
        let port = match port {
            Some(p) => Some(p.parse().ok()?),
            None => None,
        };
        Some(ViaParts {
            head,
            transport,
            host,
            port,
            params: params(rest),
        })
    }

    fn param(&self, name: &str) -> Option<Option<&'a str>> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }

    fn is_udp(&self) -> bool {
        self.transport.eq_ignore_ascii_case("udp")
    }

    /// §18.2.2 with RFC 3581: `received` (else sent-by host) and `rport` (else the port).
    fn response_address(&self) -> Option<SocketAddr> {
        let host = match self.param("received").flatten() {
            Some(r) => r,
            None => self.host,
        };
        let ip: IpAddr = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .ok()?;
        let port = match self.param("rport").flatten() {
            Some(p) => p.parse().ok()?,
            None => self.port.unwrap_or(5060),
        };
        Some(SocketAddr::new(ip, port))
    }
}

/// Replaces the Vias of a response by those of the request it answers.
fn restore_vias(response: &mut Response, request: &Request) {
    let mut headers: Vec<Header> = std::mem::take(&mut response.headers).into();
    let at = headers
        .iter()
        .position(|h| matches!(h, Header::Via(_)))
        .unwrap_or(0);
    headers.retain(|h| !matches!(h, Header::Via(_)));
    let vias = request
        .headers
        .iter()
        .filter(|h| matches!(h, Header::Via(_)))
        .cloned();
    let tail = headers.split_off(at.min(headers.len()));
    headers.extend(vias);
    headers.extend(tail);
    response.headers = Headers::from(headers);
}

/// Removes the top Via of a response; false when none is left (it was for us).
fn pop_via(response: &mut Response) -> bool {
    let mut headers: Vec<Header> = std::mem::take(&mut response.headers).into();
    if let Some(i) = headers.iter().position(|h| matches!(h, Header::Via(_))) {
        headers.remove(i);
    }
    let more = headers.iter().any(|h| matches!(h, Header::Via(_)));
    response.headers = Headers::from(headers);
    more
}

/// rsip forgets the reason phrase of codes it knows and prints its enum name instead
/// ("486 BusyHere"); forwarded responses get the RFC 3261 phrase back.
fn readable_reason(response: &mut Response) {
    if matches!(response.status_code, StatusCode::Other(..)) {
        return;
    }
    let code = response.status_code.code();
    let phrase = message::phrase(code);
    if phrase != "Unknown" {
        response.status_code = StatusCode::Other(code, phrase.to_string());
    }
}

/// The Max-Forwards value, if present and numeric.
fn max_forwards(request: &Request) -> Option<u32> {
    first(&request.headers, Name::MaxForwards)?
        .trim()
        .parse()
        .ok()
}

/// Whether the request is inside a dialog (its To has a tag).
fn has_to_tag(request: &Request) -> bool {
    first(&request.headers, Name::To).and_then(tag).is_some()
}

/// The methods whose initial request may create a dialog, and so get our Record-Route.
fn creates_dialog(method: Method) -> bool {
    matches!(
        method,
        Method::Invite | Method::Subscribe | Method::Refer | Method::Notify
    )
}

/// A dialog's identity independent of direction: Call-ID and both tags, sorted.
fn dialog_id(headers: &Headers) -> Option<String> {
    let call_id = first(headers, Name::CallId)?;
    let a = first(headers, Name::From).and_then(tag)?;
    let b = first(headers, Name::To).and_then(tag)?;
    let (a, b) = if a <= b { (a, b) } else { (b, a) };
    Some(format!("{call_id}\n{a}\n{b}"))
}

/// The loop-detection value (§16.3 step 4, §16.6 step 8) of a request as received: the
/// fields that tell one pass through us from the next (see the module comment for why
/// the top Via is not among them).
fn loop_hash(request: &Request) -> u64 {
    // SipHash with fixed keys: the same request gives the same value in this process,
    // which is all a Via that comes back to us needs.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    request.uri.to_string().hash(&mut h);
    first(&request.headers, Name::CallId).hash(&mut h);
    first(&request.headers, Name::From)
        .and_then(tag)
        .hash(&mut h);
    first(&request.headers, Name::To).and_then(tag).hash(&mut h);
    message::cseq(&request.headers).map(|(n, _)| n).hash(&mut h);
    h.finish()
}

/// §16.7 step 6 as an ordering, lower is better: 6xx, then the lowest class; within a
/// class, the answers a caller can act on first (credentials, fixable requests, busy),
/// and a timeout last, since "nobody answered" says the least.
fn preference(code: u16) -> (u8, u8) {
    let class = match code / 100 {
        6 => 0,
        3 => 1,
        4 => 2,
        5 => 3,
        _ => 4,
    };
    let within = match code {
        401 | 407 => 0,
        415 | 420 | 484 => 1,
        486 => 2,
        480 => 3,
        408 => 5,
        _ => 4,
    };
    (class, within)
}

fn via_transport(transport: Transport) -> &'static str {
    match transport {
        Transport::Udp => "UDP",
        Transport::Tcp => "TCP",
        Transport::Tls => "TLS",
    }
}

fn default_port(scheme: &str) -> u16 {
    if scheme.eq_ignore_ascii_case("sips") {
        5061
    } else {
        5060
    }
}

#[cfg(test)]
#[path = "proxy_tests.rs"]
mod tests;
