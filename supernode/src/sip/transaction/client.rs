//! Client transactions: INVITE (RFC 3261 §17.1.1, RFC 6026 §7.2) with its ACK for non-2xx
//! responses and CANCEL (§9.1), and non-INVITE (§17.1.2).

use super::matching::{self, MAGIC_COOKIE};
use super::timers::Slot;
use super::{
    encode_request, Event, Flow, InviteClientData, Kind, State, TransactionError, TransactionKey,
    TransactionLayer,
};
use rsip::{Header, Headers, Method, Request, Response};
use std::time::{Duration, Instant};

impl TransactionLayer {
    pub(super) fn client_send(
        &mut self,
        request: Request,
        flow: Flow,
        now: Instant,
    ) -> Result<TransactionKey, TransactionError> {
        if request.method == Method::Ack {
            return Err(TransactionError::AckIsNotATransaction);
        }
        let via =
            matching::top_via(&request.headers).ok_or(TransactionError::MalformedRequest("Via"))?;
        let branch = via
            .branch
            .filter(|b| b.starts_with(MAGIC_COOKIE))
            .ok_or(TransactionError::MissingBranch)?;
        matching::client_key(&mut self.key_buf, branch, request.method);
        if self.index.contains_key(self.key_buf.as_str()) {
            return Err(TransactionError::DuplicateTransaction);
        }
        let invite = if request.method == Method::Invite {
            let (cseq, _) = matching::cseq(&request.headers)
                .ok_or(TransactionError::MalformedRequest("CSeq"))?;
            Some(Box::new(InviteClientData {
                template: invite_template(&request, via.raw),
                cseq,
                cancel: None,
            }))
        } else {
            None
        };

        let bytes = encode_request(&mut self.wire_buf, &request);
        let (kind, state) = match invite {
            Some(_) => (Kind::InviteClient, State::Calling),
            None => (Kind::NonInviteClient, State::Trying),
        };
        let key = self.insert(kind, state, flow);
        if let Some(txn) = self.txn_mut(&key) {
            txn.invite = invite;
            // Over reliable transports the request is never retransmitted, so not kept.
            if !flow.is_reliable() {
                txn.last = Some(bytes.clone());
            }
        }
        self.transmit(key, flow, bytes);
        self.start_client_timers(key, flow, now);
        Ok(key)
    }

    /// Timer A/E (first interval T1, unreliable only) and Timer B/F (64·T1): §17.1.1.2, §17.1.2.2.
    fn start_client_timers(&mut self, key: TransactionKey, flow: Flow, now: Instant) {
        if !flow.is_reliable() {
            let first = self.backoff(0, None);
            self.arm(key, Slot::Retransmit, now + first);
        }
        let lifetime = self.timer_64t1();
        self.arm(key, Slot::Expire, now + lifetime);
    }

    pub(super) fn client_response(
        &mut self,
        response: Response,
        flow: Flow,
        now: Instant,
    ) -> Result<(), TransactionError> {
        let code = response.status_code.code();
        if !(100..=699).contains(&code) {
            return Err(TransactionError::InvalidStatus(code));
        }
        let via = matching::top_via(&response.headers)
            .ok_or(TransactionError::MalformedRequest("Via"))?;
        let (_, method) =
            matching::cseq(&response.headers).ok_or(TransactionError::MalformedRequest("CSeq"))?;
        let key = match via.branch {
            Some(branch) => {
                matching::client_key(&mut self.key_buf, branch, method);
                self.lookup()
            }
            None => None,
        };
        let Some(key) = key else {
            self.events
                .push_back(Event::StrayResponse { response, flow });
            return Ok(());
        };
        match self.txn(&key).map(|t| t.kind) {
            Some(Kind::InviteClient) => self.client_invite_response(key, response, code, now),
            Some(Kind::NonInviteClient) => {
                self.client_non_invite_response(key, response, code, now)
            }
            _ => {}
        }
        Ok(())
    }

    fn client_invite_response(
        &mut self,
        key: TransactionKey,
        response: Response,
        code: u16,
        now: Instant,
    ) {
        let lifetime = self.timer_64t1();
        let timer_d = self.config.timer_d;
        let Some(txn) = self.txn_mut(&key) else {
            return;
        };
        let reliable = txn.flow.is_reliable();
        match (txn.state, code) {
            (State::Calling | State::Proceeding, 100..=199) => {
                let was_calling = txn.state == State::Calling;
                txn.state = State::Proceeding;
                // §17.1.1.2: a provisional response stops Timer A, and Timer B only applies
                // in Calling; the request is no longer needed.
                txn.retransmit_at = None;
                txn.last = None;
                if was_calling {
                    txn.expire_at = None;
                    let pending_cancel = txn.invite.as_ref().and_then(|i| i.cancel);
                    if let Some(cancel) = pending_cancel {
                        // §9.1: the CANCEL was held back until this first provisional response.
                        self.start_waiting_cancel(cancel, now);
                        self.arm(key, Slot::Expire, now + lifetime);
                    }
                }
                self.events.push_back(Event::Response { key, response });
            }
            (State::Calling | State::Proceeding, 200..=299) => {
                // RFC 6026 §7.2: Accepted, Timer M = 64·T1, so 2xx retransmissions and other
                // forks' 2xx still reach the TU, which ACKs each (§13.2.2.4).
                txn.state = State::Accepted;
                txn.retransmit_at = None;
                txn.last = None;
                self.drop_waiting_cancel(key);
                self.arm(key, Slot::Expire, now + lifetime);
                self.events.push_back(Event::Response { key, response });
            }
            (State::Calling | State::Proceeding, _) => {
                // §17.1.1.3: the transaction itself ACKs a non-2xx, on the same branch.
                txn.state = State::Completed;
                txn.retransmit_at = None;
                txn.expire_at = None;
                let ack = txn.invite.as_ref().map(|i| build_ack(i, &response));
                let flow = txn.flow;
                let ack = ack.map(|ack| encode_request(&mut self.wire_buf, &ack));
                if let Some(ack) = &ack {
                    self.transmit(key, flow, ack.clone());
                }
                self.drop_waiting_cancel(key);
                self.events.push_back(Event::Response { key, response });
                if reliable {
                    // Timer D is zero on reliable transports: no response retransmissions.
                    self.terminate_txn(key);
                } else {
                    if let Some(txn) = self.txn_mut(&key) {
                        txn.last = ack;
                    }
                    self.arm(key, Slot::Expire, now + timer_d);
                }
            }
            // §17.1.1.2: a retransmitted final response in Completed is re-ACKed, not passed up.
            (State::Completed, 300..=699) => self.retransmit_last(key),
            // RFC 6026 §7.2: every 2xx in Accepted goes to the TU. A 2xx after a non-2xx
            // (Completed) would mean a broken downstream; passing it up still lets the TU ACK
            // and BYE the session it created.
            (State::Accepted | State::Completed, 200..=299) => {
                self.events.push_back(Event::Response { key, response });
            }
            // Late provisional responses, and non-2xx after a 2xx, change nothing.
            _ => {}
        }
    }

    fn client_non_invite_response(
        &mut self,
        key: TransactionKey,
        response: Response,
        code: u16,
        now: Instant,
    ) {
        let t4 = self.config.t4;
        let Some(txn) = self.txn_mut(&key) else {
            return;
        };
        match (txn.state, code) {
            (State::Trying | State::Proceeding, 100..=199) => {
                // §17.1.2.2: Proceeding; Timer E keeps running but its next intervals are T2.
                txn.state = State::Proceeding;
                self.events.push_back(Event::Response { key, response });
            }
            (State::Trying | State::Proceeding, _) => {
                txn.state = State::Completed;
                txn.retransmit_at = None;
                txn.expire_at = None;
                txn.last = None;
                let reliable = txn.flow.is_reliable();
                self.events.push_back(Event::Response { key, response });
                if reliable {
                    // Timer K is zero on reliable transports.
                    self.terminate_txn(key);
                } else {
                    // Timer K = T4: absorb retransmitted final responses (§17.1.2.2).
                    self.arm(key, Slot::Expire, now + t4);
                }
            }
            // Completed absorbs retransmissions; a Waiting CANCEL was never sent.
            _ => {}
        }
    }

    pub(super) fn client_cancel(
        &mut self,
        key: TransactionKey,
        now: Instant,
    ) -> Result<TransactionKey, TransactionError> {
        let txn = self.txn(&key).ok_or(TransactionError::UnknownTransaction)?;
        let invite = match (&txn.invite, txn.kind) {
            (Some(invite), Kind::InviteClient) => invite,
            _ => return Err(TransactionError::WrongKind("INVITE client")),
        };
        let state = txn.state;
        if !matches!(state, State::Calling | State::Proceeding) {
            // §9.1: after a final response there is nothing left to cancel.
            return Err(TransactionError::InvalidState {
                state,
                operation: "cancel",
            });
        }
        if invite.cancel.is_some() {
            return Err(TransactionError::AlreadyCancelled);
        }
        let flow = txn.flow;
        let cancel = build_cancel(invite);
        let branch = matching::top_via(&invite.template.headers)
            .and_then(|v| v.branch)
            .ok_or(TransactionError::MissingBranch)?
            .to_owned(); // CANCELs are rare; copying beats fighting the borrow of the slab.
        matching::client_key(&mut self.key_buf, &branch, Method::Cancel);
        if self.index.contains_key(self.key_buf.as_str()) {
            return Err(TransactionError::DuplicateTransaction);
        }
        let bytes = encode_request(&mut self.wire_buf, &cancel);
        let cancel_key = self.insert(Kind::NonInviteClient, State::Waiting, flow);
        if let Some(txn) = self.txn_mut(&cancel_key) {
            txn.last = Some(bytes);
        }
        if let Some(invite) = self.txn_mut(&key).and_then(|t| t.invite.as_mut()) {
            invite.cancel = Some(cancel_key);
        }
        if state == State::Proceeding {
            self.start_waiting_cancel(cancel_key, now);
            // §9.1: if the INVITE gets no final response within 64·T1 of the CANCEL, give up.
            let lifetime = self.timer_64t1();
            self.arm(key, Slot::Expire, now + lifetime);
        }
        Ok(cancel_key)
    }

    /// Sends a CANCEL held in [`State::Waiting`] and starts its non-INVITE timers.
    fn start_waiting_cancel(&mut self, cancel: TransactionKey, now: Instant) {
        let Some(txn) = self.txn_mut(&cancel) else {
            return;
        };
        if txn.state != State::Waiting {
            return;
        }
        txn.state = State::Trying;
        let flow = txn.flow;
        let bytes = if flow.is_reliable() {
            txn.last.take()
        } else {
            txn.last.clone()
        };
        if let Some(bytes) = bytes {
            self.transmit(cancel, flow, bytes);
        }
        self.start_client_timers(cancel, flow, now);
    }

    /// The INVITE got its final response before any provisional one: a CANCEL still waiting is
    /// pointless and is dropped unsent.
    fn drop_waiting_cancel(&mut self, invite: TransactionKey) {
        let cancel = self
            .txn(&invite)
            .and_then(|t| t.invite.as_ref())
            .and_then(|i| i.cancel);
        if let Some(cancel) = cancel {
            if self.state(&cancel) == Some(State::Waiting) {
                self.terminate_txn(cancel);
            }
        }
    }

    /// Retransmit-slot timer of a client transaction: Timer A or E.
    pub(super) fn client_retransmit_timer(&mut self, key: TransactionKey, now: Instant) {
        let t2 = self.config.t2;
        let Some(txn) = self.txn_mut(&key) else {
            return;
        };
        let next = match (txn.kind, txn.state) {
            // Timer A doubles without a cap; Timer B ends it at 64·T1 (§17.1.1.2).
            (Kind::InviteClient, State::Calling) => {
                txn.retransmits = txn.retransmits.saturating_add(1);
                let fired = txn.retransmits;
                self.backoff(fired, None)
            }
            // Timer E doubles up to T2 in Trying (§17.1.2.2) …
            (Kind::NonInviteClient, State::Trying) => {
                txn.retransmits = txn.retransmits.saturating_add(1);
                let fired = txn.retransmits;
                self.backoff(fired, Some(t2))
            }
            // … and is reset to T2 in Proceeding.
            (Kind::NonInviteClient, State::Proceeding) => t2.max(Duration::from_millis(1)),
            _ => return,
        };
        self.retransmit_last(key);
        self.arm(key, Slot::Retransmit, now + next);
    }

    /// Expire-slot timer of a client transaction.
    pub(super) fn client_expire_timer(&mut self, key: TransactionKey) {
        let Some(txn) = self.txn(&key) else {
            return;
        };
        match txn.state {
            // Timer B (Calling), the §9.1 CANCEL give-up (INVITE Proceeding), Timer F.
            State::Calling | State::Trying | State::Proceeding => {
                self.events.push_back(Event::Timeout { key });
            }
            // Timer D, K or M: the lingering state is over.
            _ => {}
        }
        self.terminate_txn(key);
    }
}

/// Keeps what ACK and CANCEL copy from the INVITE: Request-URI, the top Via only, Route, From,
/// To and Call-ID (§17.1.1.3, §9.1). CSeq is rebuilt from its number; everything else (body,
/// Contact, …) is dropped so the transaction holds as little as possible.
fn invite_template(request: &Request, top_via: &str) -> Request {
    let mut headers: Vec<Header> = Vec::with_capacity(6);
    headers.push(Header::Via(rsip::headers::Via::from(top_via)));
    headers.extend(
        request
            .headers
            .iter()
            .filter(|h| {
                matches!(
                    h,
                    Header::Route(_) | Header::From(_) | Header::To(_) | Header::CallId(_)
                )
            })
            .cloned(),
    );
    Request {
        method: Method::Invite,
        uri: request.uri.clone(),
        version: request.version.clone(),
        headers: Headers::from(headers),
        body: Vec::new(),
    }
}

/// Builds a request of `method` from the template, with `to` replacing the template's To when
/// given, a CSeq of the INVITE's number, Max-Forwards and an empty body.
fn from_template(invite: &InviteClientData, method: Method, to: Option<&Header>) -> Request {
    let template = &invite.template;
    let mut headers: Vec<Header> = Vec::with_capacity(template.headers.iter().count() + 3);
    for header in template.headers.iter() {
        match (header, to) {
            (Header::To(_), Some(to)) => headers.push(to.clone()),
            _ => headers.push(header.clone()),
        }
    }
    headers.push(Header::CSeq(rsip::headers::CSeq::from(format!(
        "{} {}",
        invite.cseq,
        matching::method_name(method)
    ))));
    headers.push(rsip::headers::MaxForwards::default().into());
    headers.push(rsip::headers::ContentLength::default().into());
    Request {
        method,
        uri: template.uri.clone(),
        version: template.version.clone(),
        headers: Headers::from(headers),
        body: Vec::new(),
    }
}

/// §17.1.1.3: the ACK for a non-2xx has the INVITE's Request-URI, Call-ID, From, CSeq number,
/// top Via (same branch) and Route, and the To of the response (with the UAS's tag).
fn build_ack(invite: &InviteClientData, response: &Response) -> Request {
    let to = response.headers.iter().find(|h| matches!(h, Header::To(_)));
    from_template(invite, Method::Ack, to)
}

/// §9.1: the CANCEL copies Request-URI, Call-ID, To, From, CSeq number, top Via and Route.
fn build_cancel(invite: &InviteClientData) -> Request {
    from_template(invite, Method::Cancel, None)
}
