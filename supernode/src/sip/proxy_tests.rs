//! Proxy tests: a whole [`SipCore`] driven with raw SIP text over fake flows and a fake
//! clock, its output read back as the phones would see it on the wire.

use super::*;
use crate::config::RegistrarConfig;
use crate::sip::conference::{Conference, ConferenceConfig};
use crate::sip::core::SipCore;
use crate::sip::digest::{expected_response, ha1, NonceConfig};
use crate::sip::location::LocalLocation;
use crate::sip::transaction::{self, TransactionLayer};
use crate::store::Account;
use std::time::SystemTime;

const DOMAIN: &str = "example.org";
const PROXY: &str = "192.0.2.1:5060";
const RR_UDP: &str = "<sip:192.0.2.1:5060;transport=udp;lr>";

/// Alice's phone behind NAT: sends from a private address, seen from a public one.
const ALICE_PUBLIC: &str = "203.0.113.5:41000";
/// Bob's two phones behind NAT: registered from these public addresses.
const BOB1: &str = "198.51.100.10:5090";
const BOB2: &str = "198.51.100.11:5090";
/// Carol's phone on TCP, connection 7.
const CAROL: &str = "198.51.100.20:40000";

fn udp(addr: &str) -> Flow {
    Flow {
        transport: Transport::Udp,
        remote: addr.parse().unwrap(),
        connection: None,
    }
}

fn tcp(addr: &str, id: u64) -> Flow {
    Flow {
        transport: Transport::Tcp,
        remote: addr.parse().unwrap(),
        connection: Some(id),
    }
}

/// One message the core sent, as the receiving phone reads it.
#[derive(Debug, Clone)]
struct Out {
    flow: Flow,
    key: Option<TransactionKey>,
    text: String,
}

impl Out {
    fn start(&self) -> &str {
        self.text.lines().next().unwrap_or_default()
    }

    fn status(&self) -> Option<u16> {
        let rest = self.start().strip_prefix("SIP/2.0 ")?;
        rest.split_whitespace().next()?.parse().ok()
    }

    fn method(&self) -> Option<&str> {
        if self.start().starts_with("SIP/2.0") {
            return None;
        }
        self.start().split_whitespace().next()
    }

    fn request_uri(&self) -> &str {
        self.start().split_whitespace().nth(1).unwrap_or_default()
    }

    /// Every value of a header, in order.
    fn headers(&self, name: &str) -> Vec<&str> {
        self.text
            .split("\r\n")
            .skip(1)
            .take_while(|l| !l.is_empty())
            .filter_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
            })
            .collect()
    }

    fn header(&self, name: &str) -> &str {
        self.headers(name).first().copied().unwrap_or_default()
    }

    fn body(&self) -> &str {
        self.text.split_once("\r\n\r\n").map_or("", |(_, b)| b)
    }

    /// The response a phone sends to this request: Vias, Record-Routes, From, Call-ID and
    /// CSeq copied, To with `to_tag` added, plus `extra` lines.
    fn answer(&self, code: u16, to_tag: &str, extra: &[&str]) -> String {
        let mut s = format!("SIP/2.0 {code} {}\r\n", message::phrase(code));
        for line in self
            .text
            .split("\r\n")
            .skip(1)
            .take_while(|l| !l.is_empty())
        {
            let name = line.split(':').next().unwrap_or_default().trim();
            if ["Via", "Record-Route", "From", "Call-ID", "CSeq"]
                .iter()
                .any(|n| n.eq_ignore_ascii_case(name))
            {
                s.push_str(line);
                s.push_str("\r\n");
            }
        }
        let to = self.header("To");
        if to.contains("tag=") || to_tag.is_empty() {
            s.push_str(&format!("To: {to}\r\n"));
        } else {
            s.push_str(&format!("To: {to};tag={to_tag}\r\n"));
        }
        for l in extra {
            s.push_str(l);
            s.push_str("\r\n");
        }
        s.push_str("Content-Length: 0\r\n\r\n");
        s
    }
}

/// A request in wire form, with Content-Length computed.
fn request(start: &str, lines: &[&str], body: &str) -> String {
    let mut s = format!("{start}\r\n");
    for l in lines {
        s.push_str(l);
        s.push_str("\r\n");
    }
    s.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s
}

const SDP: &str = "v=0\r\no=alice 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";

/// Alice's INVITE for `target`, sent from behind NAT (private sent-by, `rport` asked).
fn alice_invite(target: &str, branch: &str, cseq: u32, extra: &[&str]) -> String {
    let via = format!("Via: SIP/2.0/UDP 10.0.0.5:5060;rport;branch={branch}");
    let to = format!("To: <{target}>");
    let cseq = format!("CSeq: {cseq} INVITE");
    let mut lines = vec![
        via.as_str(),
        "Max-Forwards: 70",
        "From: \"Alice\" <sip:alice@example.org>;tag=a1",
        to.as_str(),
        "Call-ID: call-1@10.0.0.5",
        cseq.as_str(),
        "Contact: <sip:alice@10.0.0.5:5060>",
        "Content-Type: application/sdp",
    ];
    lines.extend_from_slice(extra);
    request(&format!("INVITE {target} SIP/2.0"), &lines, SDP)
}

struct Harness {
    core: SipCore,
    accounts: HashMap<String, Account>,
    now: Instant,
    metrics: Arc<Metrics>,
}

impl Harness {
    fn new(authenticate: bool) -> Self {
        let now = Instant::now();
        let metrics = Arc::new(Metrics::default());
        // The registrar does not challenge, so phones register in one step; the proxy's
        // own challenge is what these tests are about.
        let registrar = Registrar::new(
            RegistrarConfig::default(),
            DOMAIN,
            vec!["192.0.2.1".into()],
            false,
            Nonces::new(NonceConfig::default(), [1; 32], now),
            LocalLocation::new(now, SystemTime::now()),
        );
        let proxy = Proxy::new(
            ProxyConfig {
                authenticate,
                ..ProxyConfig::new(PROXY.parse().unwrap())
            },
            Nonces::new(NonceConfig::default(), [2; 32], now),
            metrics.clone(),
        );
        let core = SipCore::new(
            TransactionLayer::new(transaction::Config::default()),
            registrar,
            proxy,
            Conference::new(ConferenceConfig::new(
                PROXY.parse().unwrap(),
                "192.0.2.1".parse().unwrap(),
            )),
            metrics.clone(),
        );
        let mut accounts = HashMap::new();
        for user in ["alice", "bob", "carol"] {
            accounts.insert(
                user.to_string(),
                Account::with_password(user, DOMAIN, "secret"),
            );
        }
        Harness {
            core,
            accounts,
            now,
            metrics,
        }
    }

    /// Feeds one message from `flow` and returns everything the core sent.
    fn send(&mut self, flow: Flow, text: &str) -> Vec<Out> {
        self.core
            .handle_bytes(text.as_bytes(), flow, self.now, &self.accounts);
        self.drain()
    }

    fn drain(&mut self) -> Vec<Out> {
        let mut out = Vec::new();
        while let Some(t) = self.core.poll_transmit() {
            out.push(Out {
                flow: t.flow,
                key: t.key,
                text: String::from_utf8(t.message.to_vec()).unwrap(),
            });
        }
        out
    }

    /// Moves the fake clock forward, firing every timer on the way.
    fn advance(&mut self, by: Duration) -> Vec<Out> {
        let until = self.now + by;
        let mut out = Vec::new();
        while let Some(at) = self.core.poll_timeout().filter(|at| *at <= until) {
            self.now = at.max(self.now);
            self.core.handle_timeout(self.now, &self.accounts);
            out.extend(self.drain());
        }
        self.now = until;
        out
    }

    fn register(&mut self, user: &str, contact: &str, flow: Flow) {
        let transport = if flow.transport == Transport::Tcp {
            "TCP"
        } else {
            "UDP"
        };
        let via = format!(
            "Via: SIP/2.0/{transport} {};branch=z9hG4bKreg{user}{}",
            flow.remote,
            flow.remote.port()
        );
        let from = format!("From: <sip:{user}@{DOMAIN}>;tag=r{user}");
        let to = format!("To: <sip:{user}@{DOMAIN}>");
        let call_id = format!("Call-ID: reg-{user}-{}", flow.remote);
        let contact = format!("Contact: <{contact}>");
        let text = request(
            &format!("REGISTER sip:{DOMAIN} SIP/2.0"),
            &[
                &via,
                "Max-Forwards: 70",
                &from,
                &to,
                &call_id,
                "CSeq: 1 REGISTER",
                &contact,
                "Expires: 600",
            ],
            "",
        );
        let out = self.send(flow, &text);
        assert_eq!(out.len(), 1, "{out:#?}");
        assert_eq!(out[0].status(), Some(200), "{}", out[0].text);
    }

    /// Bob registered from two phones, alice calls him: returns the two forwarded INVITEs
    /// (bob1's first) after checking the 100 Trying.
    fn fork_to_bob(&mut self) -> (Out, Out) {
        self.register("bob", "sip:bob@10.1.1.10:5090", udp(BOB1));
        self.register("bob", "sip:bob@10.1.1.11:5090", udp(BOB2));
        let out = self.send(
            udp(ALICE_PUBLIC),
            &alice_invite("sip:bob@example.org", "z9hG4bKa1", 1, &[]),
        );
        assert_eq!(out.len(), 3, "{out:#?}");
        assert_eq!(out[0].status(), Some(100));
        let to = |addr: &str| {
            out.iter()
                .find(|o| o.flow == udp(addr) && o.method() == Some("INVITE"))
                .cloned()
                .unwrap_or_else(|| panic!("no INVITE to {addr}: {out:#?}"))
        };
        (to(BOB1), to(BOB2))
    }
}

fn upstream(out: &[Out]) -> Vec<&Out> {
    out.iter().filter(|o| o.flow == udp(ALICE_PUBLIC)).collect()
}

fn statuses(out: &[&Out]) -> Vec<u16> {
    out.iter().filter_map(|o| o.status()).collect()
}

#[test]
fn invite_is_forwarded_to_the_registered_flow_with_record_route_via_and_max_forwards() {
    let mut h = Harness::new(false);
    h.register("bob", "sip:bob@10.1.1.10:5090", udp(BOB1));
    let out = h.send(
        udp(ALICE_PUBLIC),
        &alice_invite("sip:bob@example.org", "z9hG4bKa1", 1, &[]),
    );
    assert_eq!(out.len(), 2, "{out:#?}");
    assert_eq!(out[0].status(), Some(100));
    assert_eq!(out[0].flow, udp(ALICE_PUBLIC));
    let fwd = &out[1];
    // Sent to the NAT address bob registered from, not to the private contact address.
    assert_eq!(fwd.flow, udp(BOB1));
    assert!(fwd.key.is_some(), "forwarded by a client transaction");
    assert_eq!(fwd.method(), Some("INVITE"));
    assert_eq!(fwd.request_uri(), "sip:bob@10.1.1.10:5090");
    assert_eq!(fwd.header("Max-Forwards"), "69");
    assert_eq!(fwd.headers("Record-Route"), vec![RR_UDP]);
    let vias = fwd.headers("Via");
    assert_eq!(vias.len(), 2);
    assert!(
        vias[0].starts_with("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK"),
        "{}",
        vias[0]
    );
    assert!(vias[1].contains("branch=z9hG4bKa1"));
    assert_eq!(fwd.body(), SDP);
    assert_eq!(fwd.header("Content-Length"), SDP.len().to_string());
    assert_eq!(h.core.proxy().pending(), 1);
}

#[test]
fn received_and_rport_are_noted_in_the_top_via() {
    let mut h = Harness::new(false);
    h.register("bob", "sip:bob@10.1.1.10:5090", udp(BOB1));
    let out = h.send(
        udp(ALICE_PUBLIC),
        &alice_invite("sip:bob@example.org", "z9hG4bKa1", 1, &[]),
    );
    let alice_via = out[1].headers("Via")[1];
    assert_eq!(
        alice_via,
        "SIP/2.0/UDP 10.0.0.5:5060;rport=41000;branch=z9hG4bKa1;received=203.0.113.5"
    );
    // A response we make ourselves carries it too, and goes to the source address.
    let out = h.send(
        udp(ALICE_PUBLIC),
        &alice_invite("sip:nobody@example.org", "z9hG4bKa2", 1, &[]),
    );
    let not_found = out.iter().find(|o| o.status() == Some(404)).unwrap();
    assert_eq!(not_found.flow, udp(ALICE_PUBLIC));
    assert!(not_found.header("Via").contains("received=203.0.113.5"));
    assert!(not_found.header("Via").contains("rport=41000"));
    // Without rport, received only when the sent-by differs from the source.
    let mut h = Harness::new(false);
    h.register("bob", "sip:bob@10.1.1.10:5090", udp(BOB1));
    let invite = alice_invite("sip:bob@example.org", "z9hG4bKa3", 1, &[]).replace(";rport", "");
    let out = h.send(udp("10.0.0.5:5060"), &invite);
    assert_eq!(
        out[1].headers("Via")[1],
        "SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKa3"
    );
}

#[test]
fn provisional_and_final_responses_go_upstream_without_our_via() {
    let mut h = Harness::new(false);
    h.register("bob", "sip:bob@10.1.1.10:5090", udp(BOB1));
    let out = h.send(
        udp(ALICE_PUBLIC),
        &alice_invite("sip:bob@example.org", "z9hG4bKa1", 1, &[]),
    );
    let fwd = out[1].clone();
    // A 100 from downstream is hop by hop: not forwarded.
    assert!(h.send(udp(BOB1), &fwd.answer(100, "", &[])).is_empty());
    let out = h.send(udp(BOB1), &fwd.answer(180, "b1", &[]));
    assert_eq!(out.len(), 1, "{out:#?}");
    assert_eq!(out[0].flow, udp(ALICE_PUBLIC));
    assert_eq!(out[0].start(), "SIP/2.0 180 Ringing");
    assert_eq!(out[0].headers("Via").len(), 1);
    assert!(out[0].header("Via").contains("branch=z9hG4bKa1"));
    let out = h.send(
        udp(BOB1),
        &fwd.answer(200, "b1", &["Contact: <sip:bob@10.1.1.10:5090>"]),
    );
    assert_eq!(out.len(), 1, "{out:#?}");
    assert_eq!(out[0].flow, udp(ALICE_PUBLIC));
    assert_eq!(out[0].status(), Some(200));
    assert_eq!(out[0].headers("Via").len(), 1);
    assert_eq!(out[0].headers("Record-Route"), vec![RR_UDP]);
    assert_eq!(h.metrics.dialogs.get(), 1);
}

#[test]
fn forking_forwards_the_first_2xx_and_cancels_the_other_branch() {
    let mut h = Harness::new(false);
    let (b1, b2) = h.fork_to_bob();
    let out = h.send(udp(BOB1), &b1.answer(180, "b1", &[]));
    assert_eq!(statuses(&upstream(&out)), vec![180]);
    let out = h.send(udp(BOB2), &b2.answer(200, "b2", &[]));
    assert_eq!(statuses(&upstream(&out)), vec![200]);
    let cancel = out
        .iter()
        .find(|o| o.method() == Some("CANCEL"))
        .unwrap_or_else(|| panic!("no CANCEL: {out:#?}"));
    assert_eq!(cancel.flow, udp(BOB1));
    assert_eq!(cancel.request_uri(), b1.request_uri());
    assert_eq!(
        cancel.header("Via"),
        b1.header("Via"),
        "CANCEL reuses the branch"
    );
    assert!(!out
        .iter()
        .any(|o| o.flow == udp(BOB2) && o.method().is_some()));
    // bob1 confirms the CANCEL and terminates its INVITE; the 487 stays with us.
    assert!(h.send(udp(BOB1), &cancel.answer(200, "b1", &[])).is_empty());
    let out = h.send(udp(BOB1), &b1.answer(487, "b1", &[]));
    assert_eq!(out.len(), 1, "only the hop-by-hop ACK: {out:#?}");
    assert_eq!(out[0].method(), Some("ACK"));
    assert_eq!(out[0].flow, udp(BOB1));
}

#[test]
fn every_2xx_of_a_forked_invite_goes_upstream() {
    let mut h = Harness::new(false);
    let (b1, b2) = h.fork_to_bob();
    let out = h.send(udp(BOB1), &b1.answer(200, "b1", &[]));
    assert_eq!(statuses(&upstream(&out)), vec![200]);
    // bob2 answered before the CANCEL reached it: the caller must see it to ACK and BYE.
    let out = h.send(udp(BOB2), &b2.answer(200, "b2", &[]));
    let up = upstream(&out);
    assert_eq!(statuses(&up), vec![200]);
    assert!(up[0].header("To").contains("tag=b2"));
    assert_eq!(h.metrics.dialogs.get(), 2);
}

#[test]
fn when_every_branch_fails_the_best_response_goes_upstream() {
    let mut h = Harness::new(false);
    let (b1, b2) = h.fork_to_bob();
    let out = h.send(udp(BOB1), &b1.answer(404, "b1", &[]));
    assert!(upstream(&out).is_empty(), "bob2 may still answer: {out:#?}");
    assert_eq!(out[0].method(), Some("ACK"));
    let out = h.send(udp(BOB2), &b2.answer(486, "b2", &[]));
    let up = upstream(&out);
    assert_eq!(up.len(), 1, "{out:#?}");
    assert_eq!(up[0].start(), "SIP/2.0 486 Busy Here");
    assert!(up[0].header("To").contains("tag=b2"));
    assert_eq!(up[0].headers("Via").len(), 1);
    // The caller's ACK for the 486 stays with our server transaction.
    let ack = request(
        "ACK sip:bob@example.org SIP/2.0",
        &[
            "Via: SIP/2.0/UDP 10.0.0.5:5060;rport;branch=z9hG4bKa1",
            "Max-Forwards: 70",
            "From: \"Alice\" <sip:alice@example.org>;tag=a1",
            &format!("To: {}", up[0].header("To")),
            "Call-ID: call-1@10.0.0.5",
            "CSeq: 1 ACK",
        ],
        "",
    );
    assert!(h.send(udp(ALICE_PUBLIC), &ack).is_empty());
    assert_eq!(h.metrics.dialogs.get(), 0);
}

#[test]
fn a_6xx_ends_the_search_and_wins() {
    let mut h = Harness::new(false);
    let (b1, b2) = h.fork_to_bob();
    h.send(udp(BOB1), &b1.answer(180, "b1", &[]));
    let out = h.send(udp(BOB2), &b2.answer(603, "b2", &[]));
    assert!(upstream(&out).is_empty());
    let cancel = out.iter().find(|o| o.method() == Some("CANCEL")).unwrap();
    assert_eq!(cancel.flow, udp(BOB1));
    let out = h.send(udp(BOB1), &b1.answer(487, "b1", &[]));
    assert_eq!(statuses(&upstream(&out)), vec![603]);
}

#[test]
fn challenges_of_every_branch_are_aggregated() {
    let mut h = Harness::new(false);
    let (b1, b2) = h.fork_to_bob();
    h.send(
        udp(BOB1),
        &b1.answer(
            407,
            "b1",
            &["Proxy-Authenticate: Digest realm=\"one\", nonce=\"1\""],
        ),
    );
    let out = h.send(
        udp(BOB2),
        &b2.answer(
            401,
            "b2",
            &["WWW-Authenticate: Digest realm=\"two\", nonce=\"2\""],
        ),
    );
    let up = upstream(&out);
    assert_eq!(statuses(&up), vec![407]);
    assert_eq!(up[0].headers("Proxy-Authenticate").len(), 1);
    assert_eq!(up[0].headers("WWW-Authenticate").len(), 1);
}

#[test]
fn cancel_from_upstream_cancels_the_branches_and_ends_in_487() {
    let mut h = Harness::new(false);
    let (b1, b2) = h.fork_to_bob();
    h.send(udp(BOB1), &b1.answer(180, "b1", &[]));
    h.send(udp(BOB2), &b2.answer(180, "b2", &[]));
    let cancel = request(
        "CANCEL sip:bob@example.org SIP/2.0",
        &[
            "Via: SIP/2.0/UDP 10.0.0.5:5060;rport;branch=z9hG4bKa1",
            "Max-Forwards: 70",
            "From: \"Alice\" <sip:alice@example.org>;tag=a1",
            "To: <sip:bob@example.org>",
            "Call-ID: call-1@10.0.0.5",
            "CSeq: 1 CANCEL",
        ],
        "",
    );
    let out = h.send(udp(ALICE_PUBLIC), &cancel);
    let up = upstream(&out);
    assert_eq!(statuses(&up), vec![200]);
    assert!(up[0].header("CSeq").ends_with("CANCEL"));
    let cancels: Vec<&Out> = out
        .iter()
        .filter(|o| o.method() == Some("CANCEL"))
        .collect();
    assert_eq!(cancels.len(), 2, "{out:#?}");
    assert!(cancels.iter().any(|c| c.flow == udp(BOB1)));
    assert!(cancels.iter().any(|c| c.flow == udp(BOB2)));
    for c in &cancels {
        h.send(c.flow, &c.answer(200, "x", &[]));
    }
    let out = h.send(udp(BOB1), &b1.answer(487, "b1", &[]));
    assert!(upstream(&out).is_empty(), "bob2 has not reported: {out:#?}");
    let out = h.send(udp(BOB2), &b2.answer(487, "b2", &[]));
    let up = upstream(&out);
    assert_eq!(statuses(&up), vec![487]);
    assert!(up[0].header("CSeq").ends_with("INVITE"));
}

#[test]
fn a_cancel_for_no_transaction_gets_481() {
    let mut h = Harness::new(false);
    let cancel = request(
        "CANCEL sip:bob@example.org SIP/2.0",
        &[
            "Via: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKnone",
            "Max-Forwards: 70",
            "From: <sip:alice@example.org>;tag=a1",
            "To: <sip:bob@example.org>",
            "Call-ID: nothing",
            "CSeq: 1 CANCEL",
        ],
        "",
    );
    let out = h.send(udp(ALICE_PUBLIC), &cancel);
    assert_eq!(statuses(&upstream(&out)), vec![481]);
}

/// Alice's in-dialog request after bob1 answered `fwd` (ACK, BYE, ...), along the route set.
fn in_dialog(method: &str, cseq: u32, branch: &str, creds: Option<&str>) -> String {
    let via = format!("Via: SIP/2.0/UDP 10.0.0.5:5060;rport;branch={branch}");
    let route = format!("Route: {RR_UDP}");
    let cseq = format!("CSeq: {cseq} {method}");
    let mut lines = vec![
        via.as_str(),
        route.as_str(),
        "Max-Forwards: 70",
        "From: \"Alice\" <sip:alice@example.org>;tag=a1",
        "To: <sip:bob@example.org>;tag=b1",
        "Call-ID: call-1@10.0.0.5",
        cseq.as_str(),
    ];
    if let Some(c) = creds {
        lines.push(c);
    }
    request(
        &format!("{method} sip:bob@10.1.1.10:5090 SIP/2.0"),
        &lines,
        "",
    )
}

#[test]
fn ack_for_2xx_is_forwarded_statelessly_and_bye_statefully_to_the_contacts_flow() {
    let mut h = Harness::new(true);
    h.register("bob", "sip:bob@10.1.1.10:5090", udp(BOB1));
    // Alice is not local here (from another domain), so nothing is challenged.
    let invite = alice_invite("sip:bob@example.org", "z9hG4bKa1", 1, &[])
        .replace("sip:alice@example.org", "sip:alice@elsewhere.net");
    let out = h.send(udp(ALICE_PUBLIC), &invite);
    let fwd = out[1].clone();
    let out = h.send(
        udp(BOB1),
        &fwd.answer(200, "b1", &["Contact: <sip:bob@10.1.1.10:5090>"]),
    );
    assert_eq!(statuses(&upstream(&out)), vec![200]);
    assert_eq!(h.metrics.dialogs.get(), 1);

    let ack = in_dialog("ACK", 1, "z9hG4bKack1", None)
        .replace("alice@example.org", "alice@elsewhere.net");
    let out = h.send(udp(ALICE_PUBLIC), &ack);
    assert_eq!(out.len(), 1, "{out:#?}");
    assert_eq!(out[0].method(), Some("ACK"));
    assert_eq!(out[0].flow, udp(BOB1), "through bob's NAT binding");
    assert_eq!(out[0].key, None, "stateless");
    assert_eq!(out[0].request_uri(), "sip:bob@10.1.1.10:5090");
    assert!(out[0].headers("Route").is_empty(), "our Route popped");
    assert_eq!(out[0].headers("Via").len(), 2);
    assert!(out[0]
        .header("Via")
        .starts_with("SIP/2.0/UDP 192.0.2.1:5060;branch="));
    assert_eq!(out[0].header("Max-Forwards"), "69");

    let bye = in_dialog("BYE", 2, "z9hG4bKbye1", None)
        .replace("alice@example.org", "alice@elsewhere.net");
    let out = h.send(udp(ALICE_PUBLIC), &bye);
    assert_eq!(out.len(), 1, "{out:#?}");
    let fwd_bye = out[0].clone();
    assert_eq!(fwd_bye.method(), Some("BYE"));
    assert_eq!(fwd_bye.flow, udp(BOB1));
    assert!(fwd_bye.key.is_some(), "stateful");
    assert!(fwd_bye.headers("Route").is_empty());
    assert!(fwd_bye.headers("Record-Route").is_empty());
    let out = h.send(udp(BOB1), &fwd_bye.answer(200, "", &[]));
    let up = upstream(&out);
    assert_eq!(statuses(&up), vec![200]);
    assert_eq!(up[0].headers("Via").len(), 1);
    assert_eq!(h.metrics.dialogs.get(), 0);
}

#[test]
fn a_bye_from_the_callee_reaches_the_caller_through_its_registered_flow() {
    let mut h = Harness::new(false);
    h.register("alice", "sip:alice@10.0.0.5:5060", udp(ALICE_PUBLIC));
    let bye = request(
        "BYE sip:alice@10.0.0.5:5060 SIP/2.0",
        &[
            "Via: SIP/2.0/UDP 10.1.1.10:5090;branch=z9hG4bKbb",
            &format!("Route: {RR_UDP}"),
            "Max-Forwards: 70",
            "From: <sip:bob@example.org>;tag=b1",
            "To: \"Alice\" <sip:alice@example.org>;tag=a1",
            "Call-ID: call-1@10.0.0.5",
            "CSeq: 1 BYE",
        ],
        "",
    );
    let out = h.send(udp(BOB1), &bye);
    assert_eq!(out.len(), 1, "{out:#?}");
    assert_eq!(out[0].method(), Some("BYE"));
    assert_eq!(out[0].flow, udp(ALICE_PUBLIC));
    // Not a registered contact: UDP to the Request-URI's address.
    let mut h = Harness::new(false);
    let out = h.send(udp(BOB1), &bye);
    assert_eq!(out[0].flow, udp("10.0.0.5:5060"));
    // A host name cannot be resolved yet.
    let out = h.send(
        udp(BOB1),
        &bye.replace(
            "BYE sip:alice@10.0.0.5:5060",
            "BYE sip:alice@phone.example.net",
        )
        .replace("z9hG4bKbb", "z9hG4bKbc"),
    );
    assert_eq!(out[0].status(), Some(478));
}

#[test]
fn in_dialog_requests_not_routed_through_us_are_refused() {
    let mut h = Harness::new(false);
    h.register("bob", "sip:bob@10.1.1.10:5090", udp(BOB1));
    let bye = in_dialog("BYE", 2, "z9hG4bKbye", None).replace(&format!("Route: {RR_UDP}\r\n"), "");
    let out = h.send(udp(ALICE_PUBLIC), &bye);
    assert_eq!(statuses(&upstream(&out)), vec![404]);
}

#[test]
fn unknown_user_is_404_other_domain_403_and_no_hops_left_483() {
    let mut h = Harness::new(false);
    let out = h.send(
        udp(ALICE_PUBLIC),
        &alice_invite("sip:nobody@example.org", "z9hG4bKn1", 1, &[]),
    );
    assert_eq!(statuses(&upstream(&out)), vec![100, 404]);
    let out = h.send(
        udp(ALICE_PUBLIC),
        &alice_invite("sip:bob@elsewhere.net", "z9hG4bKn2", 1, &[]),
    );
    let up = upstream(&out);
    assert_eq!(statuses(&up), vec![100, 403]);
    assert_eq!(up[1].start(), "SIP/2.0 403 Relaying Denied");
    h.register("bob", "sip:bob@10.1.1.10:5090", udp(BOB1));
    let out = h.send(
        udp(ALICE_PUBLIC),
        &alice_invite("sip:bob@example.org", "z9hG4bKn3", 1, &[])
            .replace("Max-Forwards: 70", "Max-Forwards: 0"),
    );
    assert_eq!(statuses(&upstream(&out)), vec![100, 483]);
    // OPTIONS for a registered user is proxied, so its hop limit applies too.
    let options = request(
        "OPTIONS sip:bob@example.org SIP/2.0",
        &[
            "Via: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKo1",
            "Max-Forwards: 0",
            "From: <sip:alice@elsewhere.net>;tag=a1",
            "To: <sip:bob@example.org>",
            "Call-ID: opt-1",
            "CSeq: 1 OPTIONS",
        ],
        "",
    );
    let out = h.send(udp(ALICE_PUBLIC), &options);
    assert_eq!(statuses(&upstream(&out)), vec![483]);
}

#[test]
fn a_request_that_comes_back_unchanged_is_a_loop() {
    let mut h = Harness::new(false);
    // A misconfigured phone registers the domain itself as its contact: every request
    // for bob would circle through us until Max-Forwards runs out.
    h.register("bob", "sip:bob@example.org", udp(BOB1));
    let out = h.send(
        udp(ALICE_PUBLIC),
        &alice_invite("sip:bob@example.org", "z9hG4bKl1", 1, &[]),
    );
    let fwd = out[1].clone();
    assert_eq!(fwd.request_uri(), "sip:bob@example.org");
    let out = h.send(udp(BOB1), &fwd.text);
    let looped = out.iter().find(|o| o.status().is_some_and(|s| s > 100));
    assert_eq!(looped.and_then(|o| o.status()), Some(482), "{out:#?}");
    // The 482 goes back the way the looped request came, and from there upstream.
    let looped = looped.unwrap().clone();
    assert_eq!(looped.flow, udp(BOB1));
    let out = h.send(udp(BOB1), &looped.text);
    assert_eq!(statuses(&upstream(&out)), vec![482]);
}

#[test]
fn a_spiral_with_a_new_request_uri_is_not_a_loop() {
    let mut h = Harness::new(false);
    h.register("bob", "sip:bob@10.1.1.10:5090", udp(BOB1));
    h.register("carol", "sip:bob@example.org", udp(CAROL));
    // carol's phone forwards to bob@example.org: the same call passes us twice, with a
    // different Request-URI each time.
    let out = h.send(
        udp(ALICE_PUBLIC),
        &alice_invite("sip:carol@example.org", "z9hG4bKs1", 1, &[]),
    );
    let fwd = out[1].clone();
    assert_eq!(fwd.flow, udp(CAROL));
    let out = h.send(udp(CAROL), &fwd.text);
    let again = out
        .iter()
        .find(|o| o.method() == Some("INVITE"))
        .unwrap_or_else(|| panic!("spiral refused: {out:#?}"));
    assert_eq!(again.flow, udp(BOB1));
    // Alice's Via and ours of each pass (carol's phone is simulated without its own).
    assert_eq!(again.headers("Via").len(), 3);
}

/// The Proxy-Authorization alice's phone computes for `challenge`, with the digest uri
/// set to the proxy's address as sipp does.
fn proxy_credentials(challenge: &str, nc: u32) -> String {
    let nonce = challenge
        .split("nonce=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap();
    let uri = format!("sip:{PROXY}");
    let creds = Credentials {
        username: "alice".into(),
        realm: DOMAIN.into(),
        nonce: nonce.into(),
        uri: uri.clone(),
        response: String::new(),
        algorithm: Algorithm::Md5,
        qop: Some("auth".into()),
        nc: Some(nc),
        cnonce: Some("c0ffee".into()),
        opaque: None,
    };
    let response = expected_response(
        &creds,
        "INVITE",
        &ha1(Algorithm::Md5, "alice", DOMAIN, "secret"),
    );
    format!(
        "Proxy-Authorization: Digest username=\"alice\", realm=\"{DOMAIN}\", nonce=\"{nonce}\", \
         uri=\"{uri}\", response=\"{response}\", algorithm=MD5, qop=auth, nc={nc:08x}, cnonce=\"c0ffee\""
    )
}

#[test]
fn local_callers_are_challenged_with_407_and_pass_with_credentials() {
    let mut h = Harness::new(true);
    h.register("bob", "sip:bob@10.1.1.10:5090", udp(BOB1));
    let out = h.send(
        udp(ALICE_PUBLIC),
        &alice_invite("sip:bob@example.org", "z9hG4bKa1", 1, &[]),
    );
    let up = upstream(&out);
    assert_eq!(statuses(&up), vec![100, 407], "{out:#?}");
    assert_eq!(out.len(), 2, "nothing forwarded: {out:#?}");
    let challenges = up[1].headers("Proxy-Authenticate");
    assert_eq!(challenges.len(), 2);
    assert!(challenges[0].contains("algorithm=SHA-256"));
    assert!(challenges[1].contains("algorithm=MD5"));
    assert!(challenges[0].contains("realm=\"example.org\""));

    // Wrong password: challenged again, counted.
    let wrong = proxy_credentials(challenges[1], 1).replace("response=\"", "response=\"0");
    let out = h.send(
        udp(ALICE_PUBLIC),
        &alice_invite("sip:bob@example.org", "z9hG4bKa2", 2, &[&wrong]),
    );
    assert_eq!(statuses(&upstream(&out)), vec![100, 407]);
    assert_eq!(h.metrics.auth_failures.get(), 1);

    let creds = proxy_credentials(challenges[1], 1);
    let out = h.send(
        udp(ALICE_PUBLIC),
        &alice_invite("sip:bob@example.org", "z9hG4bKa3", 3, &[&creds]),
    );
    let fwd = out
        .iter()
        .find(|o| o.method() == Some("INVITE"))
        .unwrap_or_else(|| panic!("not forwarded: {out:#?}"));
    assert_eq!(fwd.flow, udp(BOB1));
    assert!(
        fwd.headers("Proxy-Authorization").is_empty(),
        "consumed credentials are stripped"
    );
    // The same credentials again are a replay.
    let out = h.send(
        udp(ALICE_PUBLIC),
        &alice_invite("sip:bob@example.org", "z9hG4bKa4", 4, &[&creds]),
    );
    assert_eq!(statuses(&upstream(&out)), vec![100, 407]);
}

#[test]
fn credentials_of_another_user_are_forbidden() {
    let mut h = Harness::new(true);
    h.register("bob", "sip:bob@10.1.1.10:5090", udp(BOB1));
    let out = h.send(
        udp(ALICE_PUBLIC),
        &alice_invite("sip:bob@example.org", "z9hG4bKa1", 1, &[]),
    );
    let challenge = upstream(&out)[1].headers("Proxy-Authenticate")[1].to_string();
    let creds = proxy_credentials(&challenge, 1);
    let invite = alice_invite("sip:bob@example.org", "z9hG4bKa2", 2, &[&creds])
        .replace("tag=a1", "tag=a2")
        .replace("sip:alice@example.org", "sip:carol@example.org");
    let out = h.send(udp(ALICE_PUBLIC), &invite);
    assert_eq!(statuses(&upstream(&out)), vec![100, 403]);
}

#[test]
fn ack_and_bye_in_dialog_are_not_challenged_even_with_stale_credentials() {
    let mut h = Harness::new(true);
    h.register("bob", "sip:bob@10.1.1.10:5090", udp(BOB1));
    // baresip repeats its old credentials (with a used nonce) on ACK and BYE.
    let stale = "Proxy-Authorization: Digest username=\"alice\", realm=\"example.org\", \
                 nonce=\"00\", uri=\"sip:bob@example.org\", response=\"00\"";
    let out = h.send(
        udp(ALICE_PUBLIC),
        &in_dialog("ACK", 1, "z9hG4bKack", Some(stale)),
    );
    assert_eq!(out.len(), 1, "{out:#?}");
    assert_eq!(out[0].method(), Some("ACK"));
    assert!(out[0].headers("Proxy-Authorization").is_empty());
    let out = h.send(
        udp(ALICE_PUBLIC),
        &in_dialog("BYE", 2, "z9hG4bKbye", Some(stale)),
    );
    assert_eq!(out.len(), 1, "{out:#?}");
    assert_eq!(out[0].method(), Some("BYE"));
    assert_eq!(out[0].flow, udp(BOB1));
    // And CANCEL is never challenged: it answers 481 here because nothing matches.
    assert_eq!(h.metrics.auth_failures.get(), 0);
}

#[test]
fn without_authentication_local_callers_pass_unchallenged() {
    let mut h = Harness::new(false);
    h.register("bob", "sip:bob@10.1.1.10:5090", udp(BOB1));
    let out = h.send(
        udp(ALICE_PUBLIC),
        &alice_invite("sip:bob@example.org", "z9hG4bKa1", 1, &[]),
    );
    assert_eq!(out[1].method(), Some("INVITE"));
}

#[test]
fn a_phone_registered_over_tcp_is_reached_on_its_connection() {
    let mut h = Harness::new(false);
    h.register(
        "carol",
        "sip:carol@10.1.1.20:5060;transport=tcp",
        tcp(CAROL, 7),
    );
    let out = h.send(
        udp(ALICE_PUBLIC),
        &alice_invite("sip:carol@example.org", "z9hG4bKa1", 1, &[]),
    );
    let fwd = out
        .iter()
        .find(|o| o.method() == Some("INVITE"))
        .unwrap()
        .clone();
    assert_eq!(fwd.flow, tcp(CAROL, 7));
    assert!(fwd.header("Via").starts_with("SIP/2.0/TCP 192.0.2.1:5060;"));
    // UDP in, TCP out: one Record-Route for each side.
    assert_eq!(
        fwd.headers("Record-Route"),
        vec![
            "<sip:192.0.2.1:5060;transport=tcp;lr>",
            "<sip:192.0.2.1:5060;transport=udp;lr>"
        ]
    );
    let out = h.send(tcp(CAROL, 7), &fwd.answer(200, "c1", &[]));
    assert_eq!(statuses(&upstream(&out)), vec![200]);
    // The caller's route set has both entries; both are ours and both are popped.
    let bye = request(
        "BYE sip:carol@10.1.1.20:5060;transport=tcp SIP/2.0",
        &[
            "Via: SIP/2.0/UDP 10.0.0.5:5060;rport;branch=z9hG4bKbye",
            "Route: <sip:192.0.2.1:5060;transport=udp;lr>",
            "Route: <sip:192.0.2.1:5060;transport=tcp;lr>",
            "Max-Forwards: 70",
            "From: \"Alice\" <sip:alice@example.org>;tag=a1",
            "To: <sip:carol@example.org>;tag=c1",
            "Call-ID: call-1@10.0.0.5",
            "CSeq: 2 BYE",
        ],
        "",
    );
    let out = h.send(udp(ALICE_PUBLIC), &bye);
    assert_eq!(out.len(), 1, "{out:#?}");
    assert_eq!(out[0].flow, tcp(CAROL, 7));
    assert!(out[0].headers("Route").is_empty());
}

#[test]
fn timer_b_on_the_only_branch_is_408_upstream() {
    let mut h = Harness::new(false);
    h.register("bob", "sip:bob@10.1.1.10:5090", udp(BOB1));
    h.send(
        udp(ALICE_PUBLIC),
        &alice_invite("sip:bob@example.org", "z9hG4bKa1", 1, &[]),
    );
    let out = h.advance(Duration::from_secs(31));
    assert!(
        out.iter().all(|o| o.flow == udp(BOB1)),
        "retransmissions only: {out:#?}"
    );
    assert!(out.len() >= 5, "Timer A retransmits: {out:#?}");
    let out = h.advance(Duration::from_secs(2));
    let up = statuses(&upstream(&out));
    // The 408, then Timer G's retransmissions of it until alice ACKs.
    assert!(!up.is_empty() && up.iter().all(|s| *s == 408), "{out:#?}");
    // Everything is cleaned up once the transactions end.
    h.advance(Duration::from_secs(60));
    assert_eq!(h.core.proxy().pending(), 0);
}

#[test]
fn a_call_nobody_answers_is_cancelled_at_the_no_answer_limit_and_gets_408() {
    let mut h = Harness::new(false);
    h.register("bob", "sip:bob@10.1.1.10:5090", udp(BOB1));
    let out = h.send(
        udp(ALICE_PUBLIC),
        &alice_invite("sip:bob@example.org", "z9hG4bKa1", 1, &[]),
    );
    let fwd = out[1].clone();
    h.send(udp(BOB1), &fwd.answer(180, "b1", &[]));
    let out = h.advance(Duration::from_secs(59));
    assert!(out.is_empty(), "{out:#?}");
    let out = h.advance(Duration::from_secs(2));
    let cancel = out
        .iter()
        .find(|o| o.method() == Some("CANCEL"))
        .unwrap_or_else(|| panic!("no CANCEL: {out:#?}"));
    assert_eq!(cancel.flow, udp(BOB1));
    h.send(udp(BOB1), &cancel.answer(200, "b1", &[]));
    let out = h.send(udp(BOB1), &fwd.answer(487, "b1", &[]));
    assert_eq!(statuses(&upstream(&out)), vec![408]);
}

#[test]
fn transport_errors_on_every_branch_are_480_upstream() {
    let mut h = Harness::new(false);
    h.register(
        "carol",
        "sip:carol@10.1.1.20:5060;transport=tcp",
        tcp(CAROL, 7),
    );
    let out = h.send(
        udp(ALICE_PUBLIC),
        &alice_invite("sip:carol@example.org", "z9hG4bKa1", 1, &[]),
    );
    let key = out[1].key.unwrap();
    // The driver finds connection 7 closed.
    h.core.handle_transport_error(key, h.now, &h.accounts);
    let out = h.drain();
    assert_eq!(statuses(&upstream(&out)), vec![480]);
}

#[test]
fn methods_the_node_does_not_implement_are_forwarded_too() {
    let mut h = Harness::new(false);
    h.register("bob", "sip:bob@10.1.1.10:5090", udp(BOB1));
    let message = request(
        "MESSAGE sip:bob@example.org SIP/2.0",
        &[
            "Via: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKm1",
            "Max-Forwards: 70",
            "From: <sip:alice@elsewhere.net>;tag=a1",
            "To: <sip:bob@example.org>",
            "Call-ID: msg-1",
            "CSeq: 1 MESSAGE",
            "Content-Type: text/plain",
        ],
        "hello",
    );
    let out = h.send(udp(ALICE_PUBLIC), &message);
    assert_eq!(out.len(), 1, "{out:#?}");
    assert_eq!(out[0].method(), Some("MESSAGE"));
    assert_eq!(out[0].flow, udp(BOB1));
    assert!(
        out[0].headers("Record-Route").is_empty(),
        "no dialog, no Record-Route"
    );
    assert_eq!(out[0].body(), "hello");
    let out = h.send(udp(BOB1), &out[0].answer(202, "b1", &[]));
    assert_eq!(statuses(&upstream(&out)), vec![202]);
}

#[test]
fn a_transaction_timeout_of_a_non_invite_is_408() {
    let mut h = Harness::new(false);
    h.register("bob", "sip:bob@10.1.1.10:5090", udp(BOB1));
    let message = request(
        "MESSAGE sip:bob@example.org SIP/2.0",
        &[
            "Via: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKm1",
            "Max-Forwards: 70",
            "From: <sip:alice@elsewhere.net>;tag=a1",
            "To: <sip:bob@example.org>",
            "Call-ID: msg-1",
            "CSeq: 1 MESSAGE",
        ],
        "",
    );
    h.send(udp(ALICE_PUBLIC), &message);
    let out = h.advance(Duration::from_secs(33));
    assert_eq!(statuses(&upstream(&out)), vec![408]);
}

#[test]
fn a_487_built_from_our_cancel_still_reaches_the_caller() {
    let mut h = Harness::new(false);
    h.register("bob", "sip:bob@10.1.1.10:5090", udp(BOB1));
    let out = h.send(
        udp(ALICE_PUBLIC),
        &alice_invite("sip:bob@example.org", "z9hG4bKa1", 1, &[]),
    );
    let fwd = out[1].clone();
    h.send(udp(BOB1), &fwd.answer(180, "b1", &[]));
    let cancel = request(
        "CANCEL sip:bob@example.org SIP/2.0",
        &[
            "Via: SIP/2.0/UDP 10.0.0.5:5060;rport;branch=z9hG4bKa1",
            "Max-Forwards: 70",
            "From: \"Alice\" <sip:alice@example.org>;tag=a1",
            "To: <sip:bob@example.org>",
            "Call-ID: call-1@10.0.0.5",
            "CSeq: 1 CANCEL",
        ],
        "",
    );
    let out = h.send(udp(ALICE_PUBLIC), &cancel);
    let ours = out
        .iter()
        .find(|o| o.method() == Some("CANCEL"))
        .unwrap()
        .clone();
    assert_eq!(ours.headers("Via").len(), 1);
    h.send(udp(BOB1), &ours.answer(200, "b1", &[]));
    // Some phones answer the INVITE from the CANCEL: only our Via on the 487.
    let sloppy = ours.answer(487, "b1", &[]).replace("1 CANCEL", "1 INVITE");
    let out = h.send(udp(BOB1), &sloppy);
    let up = upstream(&out);
    assert_eq!(statuses(&up), vec![487]);
    assert_eq!(
        up[0].headers("Via"),
        vec!["SIP/2.0/UDP 10.0.0.5:5060;rport=41000;branch=z9hG4bKa1;received=203.0.113.5"]
    );
}

#[test]
fn a_2xx_retransmitted_after_the_transactions_ended_is_forwarded_statelessly() {
    let mut h = Harness::new(false);
    h.register("bob", "sip:bob@10.1.1.10:5090", udp(BOB1));
    let out = h.send(
        udp(ALICE_PUBLIC),
        &alice_invite("sip:bob@example.org", "z9hG4bKa1", 1, &[]),
    );
    let ok = out[1].answer(200, "b1", &[]);
    assert_eq!(statuses(&upstream(&h.send(udp(BOB1), &ok))), vec![200]);
    h.advance(Duration::from_secs(40));
    assert_eq!(h.core.proxy().pending(), 0);
    // bob never got the ACK and retransmits: the answer must still reach alice, along
    // the Via (received and rport lead through her NAT).
    let out = h.send(udp(BOB1), &ok);
    assert_eq!(out.len(), 1, "{out:#?}");
    assert_eq!(out[0].flow, udp(ALICE_PUBLIC));
    assert_eq!(out[0].status(), Some(200));
    assert_eq!(out[0].key, None);
    assert_eq!(out[0].headers("Via").len(), 1);
    // Anything else without a transaction is dropped.
    assert!(h
        .send(
            udp(BOB1),
            &ok.replace("SIP/2.0 200 OK", "SIP/2.0 486 Busy Here")
        )
        .is_empty());
}

#[test]
fn repeated_wrong_credentials_are_throttled() {
    let mut h = Harness::new(true);
    h.register("bob", "sip:bob@10.1.1.10:5090", udp(BOB1));
    let out = h.send(
        udp(ALICE_PUBLIC),
        &alice_invite("sip:bob@example.org", "z9hG4bKt0", 1, &[]),
    );
    let challenge = upstream(&out)[1].headers("Proxy-Authenticate")[1].to_string();
    let wrong = proxy_credentials(&challenge, 1).replace("response=\"", "response=\"0");
    for i in 0..crate::sip::auth_limit::MAX_FAILURES {
        let out = h.send(
            udp(ALICE_PUBLIC),
            &alice_invite(
                "sip:bob@example.org",
                &format!("z9hG4bKt{}", i + 1),
                i + 2,
                &[&wrong],
            ),
        );
        assert_eq!(statuses(&upstream(&out)), vec![100, 407], "attempt {i}");
    }
    // Even the right password is refused now, until the window passes.
    let right = proxy_credentials(&challenge, 1);
    let out = h.send(
        udp(ALICE_PUBLIC),
        &alice_invite("sip:bob@example.org", "z9hG4bKtz", 99, &[&right]),
    );
    assert_eq!(statuses(&upstream(&out)), vec![100, 403]);
}
