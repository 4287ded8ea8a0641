//! Server transactions: INVITE (RFC 3261 §17.2.1, RFC 6026 §7.1) and non-INVITE (§17.2.2,
//! RFC 4320), plus the handling of ACK and CANCEL on the server side.

use super::matching::{self, KeyError};
use super::timers::Slot;
use super::{
    encode_response, response_for, Event, Flow, Kind, State, TransactionError, TransactionKey,
    TransactionLayer, TryingPolicy,
};
use rsip::{Method, Request, Response, StatusCode};
use std::time::Instant;

impl KeyError {
    fn header(self) -> &'static str {
        match self {
            KeyError::Via => "Via",
            KeyError::CSeq => "CSeq",
            KeyError::CallId => "Call-ID",
            KeyError::From => "From",
        }
    }
}

impl TransactionLayer {
    pub(super) fn server_request(
        &mut self,
        request: Request,
        flow: Flow,
        now: Instant,
    ) -> Result<(), TransactionError> {
        // §17.2.3: the ACK for a non-2xx carries the INVITE's branch and belongs to the INVITE
        // transaction, so it is keyed as INVITE.
        let key_method = match request.method {
            Method::Ack => Method::Invite,
            m => m,
        };
        matching::server_key(&mut self.key_buf, &request, key_method)
            .map_err(|e| TransactionError::MalformedRequest(e.header()))?;

        if let Some(key) = self.lookup() {
            if request.method == Method::Ack {
                self.server_ack(key, request, flow, now);
            } else {
                self.server_retransmission(key);
            }
            return Ok(());
        }

        match request.method {
            // No transaction: the ACK for a 2xx (its own transaction, §17) or a stray one. Either
            // way the TU decides (a proxy forwards it, a UAS matches it to its dialog).
            Method::Ack => self.events.push_back(Event::Ack {
                request,
                flow,
                invite: None,
            }),
            Method::Cancel => {
                let key = self.insert(Kind::NonInviteServer, State::Trying, flow);
                // §9.2: the CANCEL matches the INVITE with the same branch and sent-by (or, for
                // RFC 2543 peers, the same legacy fields), i.e. the same key with method INVITE.
                matching::rekey_method(&mut self.key_buf, Method::Invite);
                let invite = self.lookup();
                self.events.push_back(Event::Cancel {
                    key,
                    request,
                    flow,
                    invite,
                });
            }
            Method::Invite => {
                let key = self.insert(Kind::InviteServer, State::Proceeding, flow);
                match self.config.invite_trying {
                    TryingPolicy::Immediately => {
                        let trying = self.encode_trying(&request);
                        if let Some(txn) = self.txn_mut(&key) {
                            txn.last = Some(trying.clone());
                        }
                        self.transmit(key, flow, trying);
                    }
                    TryingPolicy::After(delay) => {
                        // Built now because the request is handed to the TU below; sent only if
                        // the TU stays silent for `delay` (§17.2.1).
                        let trying = self.encode_trying(&request);
                        if let Some(txn) = self.txn_mut(&key) {
                            txn.last = Some(trying);
                            txn.trying_pending = true;
                        }
                        self.arm(key, Slot::Retransmit, now + delay);
                    }
                    TryingPolicy::Never => {}
                }
                self.events.push_back(Event::Request { key, request, flow });
            }
            _ => {
                let key = self.insert(Kind::NonInviteServer, State::Trying, flow);
                self.events.push_back(Event::Request { key, request, flow });
            }
        }
        Ok(())
    }

    fn encode_trying(&mut self, request: &Request) -> bytes::Bytes {
        let trying = response_for(request, StatusCode::Trying);
        encode_response(&mut self.wire_buf, &trying)
    }

    /// A retransmitted request: never passed to the TU again; the last response (if any) is
    /// re-sent so a client whose response was lost gets it (§17.2.1, §17.2.2).
    fn server_retransmission(&mut self, key: TransactionKey) {
        let Some(txn) = self.txn_mut(&key) else {
            return;
        };
        match (txn.kind, txn.state) {
            (Kind::InviteServer, State::Proceeding) => {
                if txn.trying_pending {
                    // The client is already retransmitting, so the delayed 100 is overdue: send
                    // it now rather than wait for the 200 ms timer.
                    txn.trying_pending = false;
                    txn.retransmit_at = None;
                }
                self.retransmit_last(key);
            }
            (Kind::InviteServer, State::Completed) => self.retransmit_last(key),
            // Confirmed absorbs everything; Accepted absorbs INVITE retransmissions because the
            // TU retransmits the 2xx itself (RFC 6026 §7.1).
            (Kind::InviteServer, _) => {}
            // Trying: nothing sent yet, so nothing to repeat.
            (Kind::NonInviteServer, State::Trying) => {}
            (Kind::NonInviteServer, _) => self.retransmit_last(key),
            (Kind::InviteClient | Kind::NonInviteClient, _) => {}
        }
    }

    fn server_ack(&mut self, key: TransactionKey, request: Request, flow: Flow, now: Instant) {
        let t4 = self.config.t4;
        let Some(txn) = self.txn_mut(&key) else {
            return;
        };
        match txn.state {
            State::Completed => {
                // §17.2.1: ACK for our non-2xx. Stop Timer G, drop Timer H, and linger for
                // Timer I (T4) to absorb ACK retransmissions — zero on reliable transports.
                txn.state = State::Confirmed;
                txn.retransmit_at = None;
                txn.expire_at = None;
                txn.last = None;
                if txn.flow.is_reliable() {
                    self.terminate_txn(key);
                } else {
                    self.arm(key, Slot::Expire, now + t4);
                }
            }
            // RFC 6026 §7.1: in Accepted the ACK (for the 2xx) goes to the TU.
            State::Accepted => self.events.push_back(Event::Ack {
                request,
                flow,
                invite: Some(key),
            }),
            // Confirmed: absorb retransmitted ACKs. Proceeding: an ACK before any final
            // response acknowledges nothing; drop it.
            _ => {}
        }
    }

    pub(super) fn server_respond(
        &mut self,
        key: TransactionKey,
        response: Response,
        now: Instant,
    ) -> Result<(), TransactionError> {
        let code = response.status_code.code();
        if !(100..=699).contains(&code) {
            return Err(TransactionError::InvalidStatus(code));
        }
        let txn = self.txn(&key).ok_or(TransactionError::UnknownTransaction)?;
        let (kind, state, flow) = (txn.kind, txn.state, txn.flow);
        let invalid = TransactionError::InvalidState {
            state,
            operation: "respond",
        };
        match (kind, state) {
            (Kind::InviteServer, State::Proceeding) => {}
            // RFC 6026 §7.1: further 2xx from the TU are sent in Accepted (its own
            // retransmissions, or a proxy forwarding other forks' 2xx).
            (Kind::InviteServer, State::Accepted) if (200..300).contains(&code) => {}
            (Kind::NonInviteServer, State::Trying | State::Proceeding) => {}
            // §17.2.1/§17.2.2: once final, further responses from the TU are discarded.
            (Kind::InviteServer | Kind::NonInviteServer, _) => return Err(invalid),
            _ => return Err(TransactionError::WrongKind("server")),
        }

        let bytes = encode_response(&mut self.wire_buf, &response);
        self.transmit(key, flow, bytes.clone());
        let reliable = flow.is_reliable();
        let t1 = self.config.t1;
        let lifetime = self.timer_64t1();
        let Some(txn) = self.txn_mut(&key) else {
            return Ok(());
        };

        match kind {
            Kind::InviteServer => {
                if state == State::Accepted {
                    return Ok(());
                }
                txn.trying_pending = false;
                txn.retransmit_at = None;
                match code {
                    100..=199 => txn.last = Some(bytes),
                    200..=299 => {
                        // RFC 6026 §7.1: Accepted, Timer L = 64·T1. The 2xx is not stored —
                        // retransmitting it is the TU's job (§13.3.1.4).
                        txn.state = State::Accepted;
                        txn.last = None;
                        self.arm(key, Slot::Expire, now + lifetime);
                    }
                    _ => {
                        // §17.2.1: Completed; Timer G retransmits on unreliable transports,
                        // Timer H bounds the wait for the ACK on all transports.
                        txn.state = State::Completed;
                        txn.last = Some(bytes);
                        txn.retransmits = 0;
                        if !reliable {
                            self.arm(key, Slot::Retransmit, now + t1);
                        }
                        self.arm(key, Slot::Expire, now + lifetime);
                    }
                }
            }
            _ => {
                if code < 200 {
                    txn.state = State::Proceeding;
                    txn.last = Some(bytes);
                } else if reliable {
                    // §17.2.2: Timer J is zero on reliable transports, where no request
                    // retransmission can arrive.
                    self.terminate_txn(key);
                } else {
                    // Timer J = 64·T1: absorb retransmissions of the request for as long as
                    // the client's Timer F could produce them.
                    txn.state = State::Completed;
                    txn.last = Some(bytes);
                    self.arm(key, Slot::Expire, now + lifetime);
                }
            }
        }
        Ok(())
    }

    /// Retransmit-slot timer of a server transaction: the delayed `100 Trying` or Timer G.
    pub(super) fn server_retransmit_timer(&mut self, key: TransactionKey, now: Instant) {
        let Some(txn) = self.txn_mut(&key) else {
            return;
        };
        match (txn.kind, txn.state) {
            (Kind::InviteServer, State::Proceeding) if txn.trying_pending => {
                txn.trying_pending = false;
                self.retransmit_last(key);
            }
            (Kind::InviteServer, State::Completed) => {
                // Timer G: T1, 2·T1, 4·T1 … capped at T2 (§17.2.1).
                txn.retransmits = txn.retransmits.saturating_add(1);
                let fired = txn.retransmits;
                self.retransmit_last(key);
                let next = self.backoff(fired, Some(self.config.t2));
                self.arm(key, Slot::Retransmit, now + next);
            }
            _ => {}
        }
    }

    /// Expire-slot timer of a server transaction.
    pub(super) fn server_expire_timer(&mut self, key: TransactionKey) {
        let Some(txn) = self.txn(&key) else {
            return;
        };
        if txn.kind == Kind::InviteServer && txn.state == State::Completed {
            // Timer H: the ACK never came (§17.2.1).
            self.events.push_back(Event::Timeout { key });
        }
        // Otherwise Timer I (Confirmed), L (Accepted) or J (non-INVITE Completed): done.
        self.terminate_txn(key);
    }
}
