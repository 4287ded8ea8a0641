//! Registrar tests: a fake clock, an in-memory account table, and digest answers
//! computed the way a phone computes them.

use super::*;
use crate::sip::digest::{expected_response, ha1, NonceConfig};
use crate::sip::location::LocalLocation;
use crate::sip::transaction::Transport;
use std::time::SystemTime;

const DOMAIN: &str = "example.org";

struct Fixture {
    reg: Registrar<LocalLocation>,
    accounts: HashMap<String, Account>,
    now: Instant,
    cseq: u32,
}

fn flow(port: u16) -> Flow {
    Flow {
        transport: Transport::Udp,
        remote: format!("192.0.2.10:{port}").parse().unwrap(),
        connection: None,
    }
}

fn fixture(auth: bool) -> Fixture {
    let now = Instant::now();
    let mut accounts = HashMap::new();
    accounts.insert(
        "alice".to_string(),
        Account::with_password("alice", DOMAIN, "secret"),
    );
    Fixture {
        reg: Registrar::new(
            RegistrarConfig::default(),
            DOMAIN,
            vec!["127.0.0.1".into()],
            auth,
            Nonces::new(NonceConfig::default(), [7; 32], now),
            LocalLocation::new(now, SystemTime::now()),
        ),
        accounts,
        now,
        cseq: 0,
    }
}

fn register(
    user: &str,
    contact: &str,
    expires: Option<&str>,
    cseq: u32,
    auth: Option<&str>,
) -> Request {
    let mut text = format!(
        "REGISTER sip:{DOMAIN} SIP/2.0\r\n\
         Via: SIP/2.0/UDP 192.0.2.10:5090;branch=z9hG4bK{cseq}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:{user}@{DOMAIN}>;tag=t1\r\n\
         To: <sip:{user}@{DOMAIN}>\r\n\
         Call-ID: call-{user}\r\n\
         CSeq: {cseq} REGISTER\r\n"
    );
    if !contact.is_empty() {
        text.push_str(&format!("Contact: {contact}\r\n"));
    }
    if let Some(e) = expires {
        text.push_str(&format!("Expires: {e}\r\n"));
    }
    if let Some(a) = auth {
        text.push_str(&format!("Authorization: {a}\r\n"));
    }
    text.push_str("Content-Length: 0\r\n\r\n");
    Request::try_from(text.as_str()).unwrap()
}

fn challenges(resp: &Response) -> Vec<String> {
    resp.headers
        .iter()
        .filter_map(|h| match h {
            rsip::Header::WwwAuthenticate(w) => Some(w.value().to_string()),
            _ => None,
        })
        .collect()
}

fn param(challenge: &str, name: &str) -> String {
    let start = challenge.find(&format!("{name}=")).unwrap() + name.len() + 1;
    let rest = &challenge[start..];
    if let Some(q) = rest.strip_prefix('"') {
        q[..q.find('"').unwrap()].to_string()
    } else {
        rest.split(',').next().unwrap().trim().to_string()
    }
}

/// The Authorization value a phone sends for this challenge.
fn answer(challenge: &str, user: &str, password: &str, alg: Algorithm, nc: u32) -> String {
    let nonce = param(challenge, "nonce");
    let creds = Credentials {
        username: user.into(),
        realm: DOMAIN.into(),
        nonce: nonce.clone(),
        uri: format!("sip:{DOMAIN}"),
        response: String::new(),
        algorithm: alg,
        qop: Some("auth".into()),
        nc: Some(nc),
        cnonce: Some("c0ffee".into()),
        opaque: None,
    };
    let response = expected_response(&creds, "REGISTER", &ha1(alg, user, DOMAIN, password));
    format!(
        "Digest username=\"{user}\", realm=\"{DOMAIN}\", nonce=\"{nonce}\", uri=\"sip:{DOMAIN}\", \
         response=\"{response}\", algorithm={}, qop=auth, nc={nc:08x}, cnonce=\"c0ffee\"",
        alg.as_str()
    )
}

impl Fixture {
    fn send(&mut self, req: &Request) -> (Response, Outcome) {
        self.reg.handle(req, &flow(5090), self.now, &self.accounts)
    }

    /// REGISTER, take the challenge, answer it; returns the final response.
    fn register_authed(
        &mut self,
        user: &str,
        password: &str,
        contact: &str,
        expires: Option<&str>,
        alg: Algorithm,
    ) -> (Response, Outcome) {
        self.cseq += 1;
        let (resp, outcome) = self.send(&register(user, contact, expires, self.cseq, None));
        assert_eq!(resp.status_code.code(), 401);
        assert_eq!(outcome, Outcome::Challenged);
        let ch = challenges(&resp);
        let pick = ch
            .iter()
            .find(|c| c.contains(&format!("algorithm={}", alg.as_str())))
            .unwrap();
        self.cseq += 1;
        let auth = answer(pick, user, password, alg, 1);
        self.send(&register(user, contact, expires, self.cseq, Some(&auth)))
    }
}

#[test]
fn the_challenge_offers_sha256_first_then_md5() {
    let mut f = fixture(true);
    let (resp, _) = f.send(&register(
        "alice",
        "<sip:alice@192.0.2.10:5090>",
        None,
        1,
        None,
    ));
    assert_eq!(resp.status_code.code(), 401);
    let ch = challenges(&resp);
    assert_eq!(ch.len(), 2);
    assert!(ch[0].contains("algorithm=SHA-256"), "{ch:?}");
    assert!(ch[1].contains("algorithm=MD5"), "{ch:?}");
    assert!(ch
        .iter()
        .all(|c| c.contains("qop=\"auth\"") && c.contains("realm=\"example.org\"")));
}

#[test]
fn md5_and_sha256_answers_register() {
    for alg in [Algorithm::Md5, Algorithm::Sha256] {
        let mut f = fixture(true);
        let (resp, outcome) = f.register_authed(
            "alice",
            "secret",
            "<sip:alice@192.0.2.10:5090>",
            Some("600"),
            alg,
        );
        assert_eq!(resp.status_code.code(), 200, "{alg:?}");
        assert_eq!(outcome, Outcome::Registered);
        let b = f.reg.location().lookup("alice@example.org", f.now);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].flow, flow(5090));
        assert_eq!(b[0].remaining(f.now), 600);
        assert!(resp.to_string().contains("expires=600"));
    }
}

#[test]
fn unknown_user_and_wrong_password_get_the_same_answer() {
    let mut f = fixture(true);
    let (wrong, o1) = f.register_authed(
        "alice",
        "nope",
        "<sip:alice@192.0.2.10:5090>",
        None,
        Algorithm::Md5,
    );
    let (unknown, o2) = f.register_authed(
        "mallory",
        "secret",
        "<sip:mallory@192.0.2.10:5090>",
        None,
        Algorithm::Md5,
    );
    assert_eq!((o1, o2), (Outcome::AuthFailed, Outcome::AuthFailed));
    assert_eq!(wrong.status_code.code(), 401);
    assert_eq!(unknown.status_code.code(), 401);
    let names = |r: &Response| -> Vec<String> {
        r.headers
            .iter()
            .map(|h| {
                h.to_string()
                    .split(':')
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
    };
    assert_eq!(names(&wrong), names(&unknown));
    assert!(f.reg.location().is_empty());
}

#[test]
fn a_replayed_nonce_count_is_challenged_again() {
    let mut f = fixture(true);
    let (resp, _) = f.send(&register(
        "alice",
        "<sip:alice@192.0.2.10:5090>",
        None,
        1,
        None,
    ));
    let ch = challenges(&resp)[1].clone();
    let auth = answer(&ch, "alice", "secret", Algorithm::Md5, 1);
    let (ok, _) = f.send(&register(
        "alice",
        "<sip:alice@192.0.2.10:5090>",
        None,
        2,
        Some(&auth),
    ));
    assert_eq!(ok.status_code.code(), 200);
    let (again, outcome) = f.send(&register(
        "alice",
        "<sip:alice@192.0.2.10:5090>",
        None,
        3,
        Some(&auth),
    ));
    assert_eq!(again.status_code.code(), 401);
    assert_eq!(outcome, Outcome::Challenged);
    let next = answer(&ch, "alice", "secret", Algorithm::Md5, 2);
    let (ok, _) = f.send(&register(
        "alice",
        "<sip:alice@192.0.2.10:5090>",
        None,
        4,
        Some(&next),
    ));
    assert_eq!(ok.status_code.code(), 200);
}

#[test]
fn an_expired_nonce_gets_stale_true() {
    let mut f = fixture(true);
    let (resp, _) = f.send(&register(
        "alice",
        "<sip:alice@192.0.2.10:5090>",
        None,
        1,
        None,
    ));
    let ch = challenges(&resp)[1].clone();
    f.now += Duration::from_secs(3600);
    let auth = answer(&ch, "alice", "secret", Algorithm::Md5, 1);
    let (resp, _) = f.send(&register(
        "alice",
        "<sip:alice@192.0.2.10:5090>",
        None,
        2,
        Some(&auth),
    ));
    assert_eq!(resp.status_code.code(), 401);
    assert!(
        challenges(&resp).iter().all(|c| c.contains("stale=true")),
        "{:?}",
        challenges(&resp)
    );
}

#[test]
fn foreign_domains_are_refused() {
    let mut f = fixture(false);
    let req = Request::try_from(
        "REGISTER sip:other.org SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bK1\r\n\
         From: <sip:a@other.org>;tag=1\r\nTo: <sip:a@other.org>\r\nCall-ID: x\r\nCSeq: 1 REGISTER\r\n\
         Contact: <sip:a@192.0.2.10>\r\nContent-Length: 0\r\n\r\n",
    )
    .unwrap();
    assert_eq!(f.send(&req).0.status_code.code(), 403);
    // Our address as the Request-URI host is ours, but the AOR's domain is not.
    let req = Request::try_from(
        "REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bK2\r\n\
         From: <sip:a@other.org>;tag=1\r\nTo: <sip:a@other.org>\r\nCall-ID: x\r\nCSeq: 1 REGISTER\r\n\
         Contact: <sip:a@192.0.2.10>\r\nContent-Length: 0\r\n\r\n",
    )
    .unwrap();
    assert_eq!(f.send(&req).0.status_code.code(), 403);
}

#[test]
fn too_brief_gets_423_with_min_expires() {
    let mut f = fixture(false);
    let (resp, _) = f.send(&register(
        "bob",
        "<sip:bob@192.0.2.10>",
        Some("10"),
        1,
        None,
    ));
    assert_eq!(resp.status_code.code(), 423);
    assert!(resp.to_string().contains("Min-Expires: 60"), "{resp}");
    assert!(f.reg.location().is_empty());
}

#[test]
fn several_contacts_q_values_and_per_contact_expires() {
    let mut f = fixture(false);
    let (resp, _) = f.send(&register(
        "bob",
        "<sip:bob@192.0.2.10:1>;q=0.3, <sip:bob@192.0.2.11:2>;q=0.9;expires=120",
        Some("3600"),
        1,
        None,
    ));
    assert_eq!(resp.status_code.code(), 200);
    let b = f.reg.location().lookup("bob@example.org", f.now);
    assert_eq!(b.len(), 2);
    assert_eq!(b[0].contact, "sip:bob@192.0.2.11:2");
    assert_eq!(b[0].remaining(f.now), 120);
    assert_eq!(b[1].remaining(f.now), 3600);
    // Longer than max_expires is cut.
    let (_, _) = f.send(&register(
        "bob",
        "<sip:bob@192.0.2.12:3>",
        Some("999999"),
        2,
        None,
    ));
    let b = f.reg.location().lookup("bob@example.org", f.now);
    assert_eq!(b.iter().map(|x| x.remaining(f.now)).max(), Some(7200));
}

#[test]
fn wildcard_removes_all_and_needs_expires_zero() {
    let mut f = fixture(false);
    f.send(&register(
        "bob",
        "<sip:bob@192.0.2.10:1>, <sip:bob@192.0.2.11:2>",
        None,
        1,
        None,
    ));
    assert_eq!(f.reg.location().len(), 2);
    let (bad, _) = f.send(&register("bob", "*", Some("60"), 2, None));
    assert_eq!(bad.status_code.code(), 400);
    let (ok, _) = f.send(&register("bob", "*", Some("0"), 3, None));
    assert_eq!(ok.status_code.code(), 200);
    assert!(f.reg.location().is_empty());
    assert!(!ok.to_string().contains("Contact:"));
}

#[test]
fn an_out_of_order_register_does_not_undo_a_newer_one() {
    let mut f = fixture(false);
    f.send(&register(
        "bob",
        "<sip:bob@192.0.2.10:1>",
        Some("600"),
        5,
        None,
    ));
    f.send(&register(
        "bob",
        "<sip:bob@192.0.2.10:1>",
        Some("0"),
        4,
        None,
    ));
    assert_eq!(f.reg.location().len(), 1);
    f.send(&register(
        "bob",
        "<sip:bob@192.0.2.10:1>",
        Some("0"),
        6,
        None,
    ));
    assert!(f.reg.location().is_empty());
}

#[test]
fn a_register_without_contact_lists_the_bindings() {
    let mut f = fixture(false);
    f.send(&register("bob", "<sip:bob@192.0.2.10:1>", None, 1, None));
    let (resp, _) = f.send(&register("bob", "", None, 2, None));
    assert_eq!(resp.status_code.code(), 200);
    assert!(resp.to_string().contains("sip:bob@192.0.2.10:1"));
    assert_eq!(f.reg.location().len(), 1);
}

#[test]
fn failures_are_throttled_per_source_and_user() {
    let mut f = fixture(true);
    for _ in 0..MAX_FAILURES {
        let (_, o) = f.register_authed(
            "alice",
            "wrong",
            "<sip:alice@192.0.2.10>",
            None,
            Algorithm::Md5,
        );
        assert_eq!(o, Outcome::AuthFailed);
    }
    f.cseq += 1;
    let (resp, o) = f.send(&register(
        "alice",
        "<sip:alice@192.0.2.10>",
        None,
        f.cseq,
        None,
    ));
    assert_eq!((resp.status_code.code(), o), (403, Outcome::Throttled));
    // The window passes.
    f.now += FAILURE_WINDOW + Duration::from_secs(1);
    let (resp, _) = f.register_authed(
        "alice",
        "secret",
        "<sip:alice@192.0.2.10>",
        None,
        Algorithm::Md5,
    );
    assert_eq!(resp.status_code.code(), 200);
}

#[test]
fn a_user_may_not_register_another_users_aor() {
    let mut f = fixture(true);
    f.accounts
        .insert("bob".into(), Account::with_password("bob", DOMAIN, "pw"));
    // bob answers the challenge with his own credentials for alice's AOR.
    let (resp, _) = f.send(&register("alice", "<sip:x@192.0.2.10>", None, 1, None));
    let ch = challenges(&resp)[1].clone();
    let auth = answer(&ch, "bob", "pw", Algorithm::Md5, 1);
    let (resp, o) = f.send(&register(
        "alice",
        "<sip:x@192.0.2.10>",
        None,
        2,
        Some(&auth),
    ));
    assert_eq!(resp.status_code.code(), 401);
    assert_eq!(o, Outcome::AuthFailed);
}
