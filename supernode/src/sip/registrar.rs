//! The registrar (RFC 3261 §10.3): digest authentication, bindings with q-values and
//! expiry, `*` removal, 423 with Min-Expires, and the flow each contact came on.
//!
//! Sans-IO: a REGISTER, the flow it arrived on and the time go in, a response comes
//! out; accounts are read through [`Accounts`] and bindings kept in a [`Location`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rsip::headers::UntypedHeader;
use rsip::{Request, Response};

use crate::config::{DigestAlgorithm, RegistrarConfig};
use crate::sip::auth_limit::AuthLimiter;
use crate::sip::digest::{self, Algorithm, Credentials, NonceCheck, Nonces};
use crate::sip::headers::{split_list, uri_parts, NameAddr};
use crate::sip::location::{Binding, Location};
use crate::sip::message::{self, first, reply, values, Name};
use crate::sip::transaction::Flow;
use crate::store::{Account, RoomRecord};

/// Where the SIP service reads the user namespace of its domain (the store, or a test
/// table): accounts for the registrar and the proxy, rooms for the conference UAS. Rooms
/// and users share one namespace, so at most one of the two answers for a name.
pub trait Accounts {
    /// The account with this user name, if any.
    fn account(&self, name: &str) -> Option<Account>;

    /// The conference room with this name, if any. A table without rooms (the
    /// registrar's tests) keeps the default.
    fn room(&self, name: &str) -> Option<RoomRecord> {
        let _ = name;
        None
    }
}

impl Accounts for HashMap<String, Account> {
    fn account(&self, name: &str) -> Option<Account> {
        self.get(name).cloned()
    }
}

pub use crate::sip::auth_limit::{FAILURE_WINDOW, MAX_FAILURES};

/// What the registrar did, beyond the response, for counters and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Bindings stored, refreshed, removed or listed.
    Registered,
    /// A challenge was sent (no or stale credentials).
    Challenged,
    /// Credentials were wrong, or the user unknown (indistinguishable on the wire).
    AuthFailed,
    /// Refused after too many failures from this source or for this user.
    Throttled,
    /// Refused for another reason (foreign domain, bad request, too brief).
    Refused,
}

/// The registrar of one domain.
pub struct Registrar<L: Location> {
    config: RegistrarConfig,
    domain: String,
    aliases: Vec<String>,
    authenticate: bool,
    nonces: Nonces,
    location: L,
    failures: AuthLimiter,
}

impl<L: Location> Registrar<L> {
    /// A registrar for `domain`; `aliases` are the node's own addresses, which count as
    /// the domain too (like Kamailio's `myself`).
    pub fn new(
        config: RegistrarConfig,
        domain: &str,
        aliases: Vec<String>,
        authenticate: bool,
        nonces: Nonces,
        location: L,
    ) -> Self {
        Registrar {
            config,
            domain: domain.to_ascii_lowercase(),
            aliases,
            authenticate,
            nonces,
            location,
            failures: AuthLimiter::new(),
        }
    }

    /// The domain served.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The location table.
    pub fn location(&self) -> &L {
        &self.location
    }
    /// The location table, to change.
    pub fn location_mut(&mut self) -> &mut L {
        &mut self.location
    }

    /// Whether `host` names this node's domain.
    pub fn is_local(&self, host: &str) -> bool {
        host.eq_ignore_ascii_case(&self.domain)
            || self.aliases.iter().any(|a| a.eq_ignore_ascii_case(host))
    }

    /// The canonical AOR (`user@domain`) of a URI in our domain.
    pub fn aor_of(&self, uri: &str) -> Option<String> {
        let parts = uri_parts(uri)?;
        let user = parts.user?;
        self.is_local(parts.host)
            .then(|| format!("{user}@{}", self.domain))
    }

    fn challenge(&mut self, req: &Request, now: Instant, stale: bool) -> Response {
        let nonce = self.nonces.issue(now);
        let mut resp = reply(req, 401, Some("Unauthorized"));
        let [sha256, md5] = digest::challenge(&self.domain, &nonce, stale);
        let challenges = self.config.digest_algorithms.iter().map(|a| match a {
            DigestAlgorithm::Sha256 => sha256.clone(),
            DigestAlgorithm::Md5 => md5.clone(),
        });
        for value in challenges {
            message::push(
                &mut resp,
                rsip::Header::WwwAuthenticate(rsip::headers::WwwAuthenticate::new(value)),
            );
        }
        resp
    }

    /// Handles one REGISTER that arrived on `flow`.
    pub fn handle(
        &mut self,
        req: &Request,
        flow: &Flow,
        now: Instant,
        accounts: &dyn Accounts,
    ) -> (Response, Outcome) {
        // §10.3 step 1: the Request-URI must name our domain.
        let ruri = req.uri.to_string();
        match uri_parts(&ruri) {
            Some(p) if self.is_local(p.host) => {}
            _ => return (reply(req, 403, Some("Not Our Domain")), Outcome::Refused),
        }
        let Some(to) = first(&req.headers, Name::To).and_then(NameAddr::parse) else {
            return (reply(req, 400, Some("Bad To")), Outcome::Refused);
        };
        let Some(aor) = self.aor_of(to.uri) else {
            return (reply(req, 403, Some("Not Our Domain")), Outcome::Refused);
        };
        let user = aor.split('@').next().unwrap_or_default().to_string();
        if self.authenticate {
            if let Some(refusal) = self.authenticate(req, flow, &user, now, accounts) {
                return refusal;
            }
        }
        self.update_bindings(req, flow, &aor, now)
    }

    /// Returns the response to send instead of registering, if the request is not
    /// authenticated as `user`.
    fn authenticate(
        &mut self,
        req: &Request,
        flow: &Flow,
        user: &str,
        now: Instant,
        accounts: &dyn Accounts,
    ) -> Option<(Response, Outcome)> {
        if self.failures.throttled(flow.remote.ip(), user, now) {
            return Some((
                reply(req, 403, Some("Too Many Failed Attempts")),
                Outcome::Throttled,
            ));
        }
        let creds = values(&req.headers, Name::Authorization)
            .filter_map(|v| Credentials::parse(v).ok())
            .find(|c| c.realm.eq_ignore_ascii_case(&self.domain));
        let Some(creds) = creds else {
            return Some((self.challenge(req, now, false), Outcome::Challenged));
        };
        let account = accounts.account(user);
        // Unknown users are checked against a dummy HA1 so that the work done and the
        // answer given are those of a wrong password.
        let ha1 = match (&account, creds.algorithm) {
            (Some(a), Algorithm::Md5) => a.ha1_md5.clone(),
            (Some(a), Algorithm::Sha256) => a.ha1_sha256.clone(),
            (None, alg) => digest::dummy_ha1(alg).to_string(),
        };
        let method = req.method.to_string();
        let good =
            digest::verify(&creds, &method, &ha1) && account.is_some() && creds.username == user;
        if !good {
            self.failures.failed(flow.remote.ip(), user, now);
            tracing::warn!(
                target: "supernode::auth",
                "auth failure: src={} user={:?} method={}",
                flow.remote.ip(),
                user,
                method
            );
            return Some((self.challenge(req, now, false), Outcome::AuthFailed));
        }
        match self.nonces.check(&creds.nonce, creds.nc, now) {
            NonceCheck::Fresh => None,
            NonceCheck::Stale => Some((self.challenge(req, now, true), Outcome::Challenged)),
            NonceCheck::Replayed | NonceCheck::Forged => {
                Some((self.challenge(req, now, false), Outcome::Challenged))
            }
        }
    }

    fn update_bindings(
        &mut self,
        req: &Request,
        flow: &Flow,
        aor: &str,
        now: Instant,
    ) -> (Response, Outcome) {
        let call_id = first(&req.headers, Name::CallId)
            .unwrap_or_default()
            .to_string();
        let Some((cseq, _)) = message::cseq(&req.headers) else {
            return (reply(req, 400, Some("Bad CSeq")), Outcome::Refused);
        };
        let header_expires = match first(&req.headers, Name::Expires) {
            Some(v) => match v.trim().parse::<u32>() {
                Ok(n) => Some(n),
                Err(_) => return (reply(req, 400, Some("Bad Expires")), Outcome::Refused),
            },
            None => None,
        };
        let contacts: Vec<&str> = values(&req.headers, Name::Contact)
            .flat_map(split_list)
            .collect();
        // §10.3 step 6: `*` only alone and with Expires: 0.
        if contacts.iter().any(|c| c.trim() == "*") {
            if contacts.len() != 1 || header_expires != Some(0) {
                return (
                    reply(
                        req,
                        400,
                        Some("Wildcard Contact Needs Expires 0 And No Other Contact"),
                    ),
                    Outcome::Refused,
                );
            }
            self.location.remove_all(aor);
            return (self.ok(req, aor, now), Outcome::Registered);
        }
        let mut parsed = Vec::with_capacity(contacts.len());
        for c in &contacts {
            let Some(na) = NameAddr::parse(c) else {
                return (reply(req, 400, Some("Bad Contact")), Outcome::Refused);
            };
            let expires = match na.param("expires").flatten() {
                Some(v) => match v.parse::<u32>() {
                    Ok(n) => n,
                    Err(_) => {
                        return (
                            reply(req, 400, Some("Bad Contact Expires")),
                            Outcome::Refused,
                        )
                    }
                },
                None => header_expires.unwrap_or(self.config.default_expires),
            };
            if expires != 0 && expires < self.config.min_expires {
                let mut resp = reply(req, 423, Some("Interval Too Brief"));
                message::push(
                    &mut resp,
                    rsip::Header::MinExpires(rsip::headers::MinExpires::new(
                        self.config.min_expires.to_string(),
                    )),
                );
                return (resp, Outcome::Refused);
            }
            let q = match na.param("q").flatten() {
                Some(v) => match v.parse::<f32>() {
                    Ok(q) if (0.0..=1.0).contains(&q) => q,
                    _ => return (reply(req, 400, Some("Bad q-value")), Outcome::Refused),
                },
                None => 1.0,
            };
            parsed.push((na, expires.min(self.config.max_expires), q));
        }
        let existing = self.location.lookup(aor, now);
        for (na, expires, q) in parsed {
            let contact = na.uri.to_string();
            if let Some(old) = existing.iter().find(|b| b.contact == contact) {
                // §10.3 step 7: an older or repeated REGISTER of the same Call-ID
                // must not undo a newer one.
                if old.call_id == call_id && old.cseq >= cseq {
                    continue;
                }
            }
            if expires == 0 {
                self.location.remove(aor, &contact);
                continue;
            }
            let live = self.location.lookup(aor, now).len();
            let is_new = !existing.iter().any(|b| b.contact == contact);
            if is_new && live >= self.config.max_contacts {
                return (reply(req, 403, Some("Too Many Contacts")), Outcome::Refused);
            }
            self.location.store(Binding {
                aor: aor.to_string(),
                contact,
                expires: now + Duration::from_secs(u64::from(expires)),
                q,
                call_id: call_id.clone(),
                cseq,
                flow: *flow,
                instance: na.param("+sip.instance").flatten().map(str::to_string),
            });
        }
        (self.ok(req, aor, now), Outcome::Registered)
    }

    /// 200 OK listing every current contact with its remaining time (§10.3 step 8).
    fn ok(&self, req: &Request, aor: &str, now: Instant) -> Response {
        let mut resp = reply(req, 200, Some("OK"));
        for b in self.location.lookup(aor, now) {
            let value = if b.q < 1.0 {
                format!("<{}>;expires={};q={}", b.contact, b.remaining(now), b.q)
            } else {
                format!("<{}>;expires={}", b.contact, b.remaining(now))
            };
            message::push(
                &mut resp,
                rsip::Header::Contact(rsip::headers::Contact::new(value)),
            );
        }
        resp
    }
}

#[cfg(test)]
#[path = "registrar_tests.rs"]
mod tests;
