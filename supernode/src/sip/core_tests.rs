//! Routing tests of the core with the conference wired in: raw SIP text in over fake
//! flows and a fake clock, mixer commands answered by a fake driver the way `node.rs`
//! answers them, and what the phones would read on the wire checked.

use super::*;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

use mixer::LegId;

use crate::config::RegistrarConfig;
use crate::sip::conference::ConferenceConfig;
use crate::sip::digest::{NonceConfig, Nonces};
use crate::sip::proxy::ProxyConfig;
use crate::sip::transaction::{self, TransactionLayer};
use crate::store::Account;

const DOMAIN: &str = "example.org";
const NODE: &str = "192.0.2.1:5060";
/// A caller of another domain: not challenged by the proxy.
const CALLER: &str = "198.51.100.7:5062";
const CALLER_FROM: &str = "From: <sip:dave@elsewhere.example>;tag=d1";

/// Accounts and rooms, as the store has them.
#[derive(Default)]
struct Directory {
    accounts: HashMap<String, Account>,
    rooms: HashMap<String, RoomRecord>,
}

impl Accounts for Directory {
    fn account(&self, name: &str) -> Option<Account> {
        self.accounts.get(name).cloned()
    }

    fn room(&self, name: &str) -> Option<RoomRecord> {
        self.rooms.get(name).cloned()
    }
}

fn udp(addr: &str) -> Flow {
    Flow {
        transport: Transport::Udp,
        remote: addr.parse().unwrap(),
        connection: None,
    }
}

/// One message the core sent, as text.
#[derive(Debug, Clone)]
struct Out {
    flow: Flow,
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
        (!self.start().starts_with("SIP/2.0"))
            .then(|| self.start().split_whitespace().next())
            .flatten()
    }

    fn header(&self, name: &str) -> &str {
        self.text
            .split("\r\n")
            .skip(1)
            .take_while(|l| !l.is_empty())
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
            })
            .unwrap_or_default()
    }

    fn body(&self) -> &str {
        self.text.split_once("\r\n\r\n").map_or("", |(_, b)| b)
    }

    fn to_tag(&self) -> &str {
        self.header("To")
            .split(";tag=")
            .nth(1)
            .map(|t| t.split(';').next().unwrap_or_default())
            .unwrap_or_default()
    }
}

fn request(start: &str, lines: &[&str], body: &str) -> String {
    let mut s = format!("{start}\r\n");
    for l in lines {
        s.push_str(l);
        s.push_str("\r\n");
    }
    s.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s
}

const SDP: &str = "v=0\r\no=dave 1 1 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n";

/// Dave's out-of-dialog request for `target` with method `method`.
fn dave(method: &str, target: &str, branch: &str, cseq: u32, body: &str) -> String {
    let via = format!("Via: SIP/2.0/UDP {CALLER};branch={branch}");
    let to = format!("To: <{target}>");
    let cseq = format!("CSeq: {cseq} {method}");
    let mut lines = vec![
        via.as_str(),
        "Max-Forwards: 70",
        CALLER_FROM,
        to.as_str(),
        "Call-ID: conf-1@198.51.100.7",
        cseq.as_str(),
        "Contact: <sip:dave@198.51.100.7:5062>",
    ];
    if !body.is_empty() {
        lines.push("Content-Type: application/sdp");
    }
    request(&format!("{method} {target} SIP/2.0"), &lines, body)
}

/// Dave's in-dialog request (`to_tag` is ours), sent to our Contact.
fn dave_in_dialog(method: &str, to_tag: &str, branch: &str, cseq: u32) -> String {
    let via = format!("Via: SIP/2.0/UDP {CALLER};branch={branch}");
    let to = format!("To: <sip:room1@{DOMAIN}>;tag={to_tag}");
    let cseq = format!("CSeq: {cseq} {method}");
    request(
        &format!("{method} sip:room1@{NODE} SIP/2.0"),
        &[
            via.as_str(),
            "Max-Forwards: 70",
            CALLER_FROM,
            to.as_str(),
            "Call-ID: conf-1@198.51.100.7",
            cseq.as_str(),
        ],
        "",
    )
}

struct Harness {
    core: SipCore,
    dir: Directory,
    now: Instant,
    next_id: u64,
    /// Every mixer command the core gave, in order.
    commands: Vec<MixerCommand>,
    /// Answer AddLeg at once (else kept here, a slow driver).
    auto: bool,
    deferred: Vec<DialogId>,
}

impl Harness {
    fn new() -> Self {
        let now = Instant::now();
        let metrics = Arc::new(Metrics::default());
        let registrar = Registrar::new(
            RegistrarConfig::default(),
            DOMAIN,
            vec!["192.0.2.1".into()],
            false,
            Nonces::new(NonceConfig::default(), [1; 32], now),
            LocalLocation::new(now, SystemTime::now()),
        );
        let proxy = Proxy::new(
            ProxyConfig::new(NODE.parse().unwrap()),
            Nonces::new(NonceConfig::default(), [2; 32], now),
            metrics.clone(),
        );
        let conference = Conference::new(ConferenceConfig::new(
            NODE.parse().unwrap(),
            "192.0.2.1".parse().unwrap(),
        ));
        let core = SipCore::new(
            TransactionLayer::new(transaction::Config::default()),
            registrar,
            proxy,
            conference,
            metrics,
        );
        let mut dir = Directory::default();
        dir.accounts.insert(
            "alice".into(),
            Account::with_password("alice", DOMAIN, "secret"),
        );
        for (name, pin) in [("room1", None), ("locked", Some("4321"))] {
            dir.rooms.insert(
                name.into(),
                RoomRecord {
                    name: name.into(),
                    pin: pin.map(str::to_string),
                    max_legs: 10,
                },
            );
        }
        Harness {
            core,
            dir,
            now,
            next_id: 0,
            commands: Vec::new(),
            auto: true,
            deferred: Vec::new(),
        }
    }

    /// What `node.rs` does after every input: mixer commands, then the wire.
    fn drive(&mut self) -> Vec<Out> {
        while let Some(cmd) = self.core.poll_mixer_command() {
            self.commands.push(cmd.clone());
            match cmd {
                MixerCommand::CreateRoom { token, .. } => {
                    self.next_id += 1;
                    let room = RoomId(self.next_id);
                    self.core.room_created(token, Ok(room), self.now);
                }
                MixerCommand::AddLeg { dialog, room, .. } if self.auto => {
                    self.next_id += 1;
                    let handle = LegHandle {
                        room,
                        leg: LegId(self.next_id),
                        local: SocketAddr::new(IpAddr::from([192, 0, 2, 1]), 40000),
                    };
                    self.core.leg_added(dialog, Ok(handle), self.now);
                }
                MixerCommand::AddLeg { dialog, .. } => self.deferred.push(dialog),
                _ => {}
            }
        }
        let mut out = Vec::new();
        while let Some(t) = self.core.poll_transmit() {
            out.push(Out {
                flow: t.flow,
                text: String::from_utf8(t.message.to_vec()).unwrap(),
            });
        }
        out
    }

    fn send(&mut self, flow: Flow, text: &str) -> Vec<Out> {
        self.core
            .handle_bytes(text.as_bytes(), flow, self.now, &self.dir);
        self.drive()
    }

    fn advance(&mut self, by: Duration) -> Vec<Out> {
        let until = self.now + by;
        let mut out = Vec::new();
        while let Some(at) = self.core.poll_timeout().filter(|at| *at <= until) {
            self.now = at.max(self.now);
            self.core.handle_timeout(self.now, &self.dir);
            out.extend(self.drive());
        }
        self.now = until;
        out
    }

    /// Dave calls room1 and is answered: returns the 200 OK.
    fn join(&mut self) -> Out {
        let out = self.send(
            udp(CALLER),
            &dave(
                "INVITE",
                &format!("sip:room1@{DOMAIN}"),
                "z9hG4bKi1",
                1,
                SDP,
            ),
        );
        let ok = out
            .iter()
            .find(|o| o.status() == Some(200))
            .cloned()
            .unwrap_or_else(|| panic!("no 200: {out:#?}"));
        assert_eq!(ok.flow, udp(CALLER));
        ok
    }

    fn ack(&mut self, to_tag: &str) -> Vec<Out> {
        self.send(
            udp(CALLER),
            &dave_in_dialog("ACK", to_tag, "z9hG4bKack1", 1),
        )
    }
}

fn statuses(out: &[Out]) -> Vec<u16> {
    out.iter().filter_map(Out::status).collect()
}

#[test]
fn invite_for_a_room_is_answered_by_the_conference_with_a_leg() {
    let mut h = Harness::new();
    let ok = h.join();
    assert!(ok.header("Contact").contains("sip:room1@192.0.2.1:5060"));
    assert!(ok.body().contains("m=audio 40000 RTP/AVP 0"), "{}", ok.text);
    assert!(matches!(
        h.commands[..],
        [MixerCommand::CreateRoom { .. }, MixerCommand::AddLeg { .. }]
    ));
    assert_eq!(h.core.conference().len(), 1);
    // The ACK reaches the conference (not the proxy), so the 200 is not retransmitted.
    let tag = ok.to_tag().to_string();
    assert!(h.ack(&tag).is_empty());
    assert!(h.advance(Duration::from_secs(5)).is_empty());
    // The BYE too: answered by the conference, which releases the leg and the room.
    let out = h.send(udp(CALLER), &dave_in_dialog("BYE", &tag, "z9hG4bKbye1", 2));
    assert_eq!(statuses(&out), vec![200]);
    assert_eq!(h.core.conference().len(), 0);
    assert!(h
        .commands
        .iter()
        .any(|c| matches!(c, MixerCommand::ReleaseMedia { .. })));
    assert!(h
        .commands
        .iter()
        .any(|c| matches!(c, MixerCommand::DestroyRoom { .. })));
}

#[test]
fn without_an_ack_the_2xx_is_retransmitted_by_the_conference() {
    let mut h = Harness::new();
    h.join();
    let out = h.advance(Duration::from_millis(600));
    assert_eq!(statuses(&out), vec![200], "{out:#?}");
}

#[test]
fn unknown_user_that_is_no_room_is_404_and_a_room_of_another_domain_is_refused() {
    let mut h = Harness::new();
    let out = h.send(
        udp(CALLER),
        &dave(
            "INVITE",
            &format!("sip:nobody@{DOMAIN}"),
            "z9hG4bKn1",
            1,
            SDP,
        ),
    );
    assert_eq!(statuses(&out), vec![100, 404]);
    let out = h.send(
        udp(CALLER),
        &dave("INVITE", "sip:room1@other.example", "z9hG4bKn2", 1, SDP),
    );
    assert_eq!(statuses(&out), vec![100, 403]);
    assert!(h.commands.is_empty());
}

#[test]
fn local_callers_authenticate_before_reaching_a_room() {
    let mut h = Harness::new();
    let target = format!("sip:room1@{DOMAIN}");
    let text = request(
        &format!("INVITE {target} SIP/2.0"),
        &[
            "Via: SIP/2.0/UDP 198.51.100.8:5060;branch=z9hG4bKl1",
            "Max-Forwards: 70",
            "From: <sip:alice@example.org>;tag=a1",
            &format!("To: <{target}>"),
            "Call-ID: local-1",
            "CSeq: 1 INVITE",
            "Contact: <sip:alice@198.51.100.8:5060>",
            "Content-Type: application/sdp",
        ],
        SDP,
    );
    let out = h.send(udp("198.51.100.8:5060"), &text);
    assert_eq!(statuses(&out), vec![100, 407]);
    assert!(h.commands.is_empty());
}

#[test]
fn other_methods_for_a_room_are_refused_by_what_the_node_knows_of_them() {
    let mut h = Harness::new();
    let target = format!("sip:room1@{DOMAIN}");
    // Known, not served by rooms: 405 with the conference's Allow.
    let out = h.send(udp(CALLER), &dave("MESSAGE", &target, "z9hG4bKm1", 1, ""));
    assert_eq!(statuses(&out), vec![405], "{out:#?}");
    assert!(out[0].header("Allow").contains("INVITE"));
    assert!(!out[0].header("Allow").contains("MESSAGE"));
    // Unknown to the node: 501.
    let out = h.send(
        udp(CALLER),
        &dave("FROBNICATE", &target, "z9hG4bKm2", 1, ""),
    );
    assert_eq!(statuses(&out), vec![501], "{out:#?}");
    // OPTIONS for a room is the conference's: its Allow, not the registrar's.
    let out = h.send(udp(CALLER), &dave("OPTIONS", &target, "z9hG4bKm3", 1, ""));
    assert_eq!(statuses(&out), vec![200], "{out:#?}");
    assert!(!out[0].header("Allow").contains("REGISTER"));
    assert!(out[0].header("Allow").contains("INFO"));
}

#[test]
fn cancel_before_the_leg_exists_gets_487_from_the_conference() {
    let mut h = Harness::new();
    h.auto = false;
    let target = format!("sip:room1@{DOMAIN}");
    let out = h.send(udp(CALLER), &dave("INVITE", &target, "z9hG4bKc1", 1, SDP));
    assert_eq!(statuses(&out), vec![100]);
    assert_eq!(h.deferred.len(), 1);
    let out = h.send(udp(CALLER), &dave("CANCEL", &target, "z9hG4bKc1", 1, ""));
    assert_eq!(statuses(&out), vec![200, 487], "{out:#?}");
    assert_eq!(h.core.conference().len(), 0);
    // The slow leg arrives after all: removed again, its socket released.
    let dialog = h.deferred.pop().unwrap();
    h.core.leg_added(
        dialog,
        Ok(LegHandle {
            room: RoomId(1),
            leg: LegId(99),
            local: SocketAddr::new(IpAddr::from([192, 0, 2, 1]), 40000),
        }),
        h.now,
    );
    h.drive();
    assert!(matches!(
        h.commands[h.commands.len() - 2..],
        [
            MixerCommand::RemoveLeg { .. },
            MixerCommand::ReleaseMedia { .. }
        ]
    ));
}

#[test]
fn dtmf_from_the_mixer_admits_a_pin_caller() {
    let mut h = Harness::new();
    let out = h.send(
        udp(CALLER),
        &dave(
            "INVITE",
            &format!("sip:locked@{DOMAIN}"),
            "z9hG4bKp1",
            1,
            SDP,
        ),
    );
    assert!(statuses(&out).contains(&200), "{out:#?}");
    let leg = h
        .commands
        .iter()
        .filter(|c| matches!(c, MixerCommand::AddLeg { .. }))
        .count();
    assert_eq!(leg, 1, "the lobby leg");
    let lobby_leg = LegId(h.next_id);
    for digit in ['4', '3', '2', '1'] {
        let event = MixerEvent::Room {
            room: RoomId(1),
            event: mixer::RoomEvent::Dtmf {
                leg: lobby_leg,
                digit,
            },
        };
        h.core.handle_mixer_event(&event, h.now);
        h.drive();
    }
    // Admitted: the lobby is destroyed and the leg re-added in a new (the room's) room.
    let adds = h
        .commands
        .iter()
        .filter(|c| matches!(c, MixerCommand::AddLeg { .. }))
        .count();
    assert_eq!(adds, 2, "{:#?}", h.commands);
}

#[test]
fn shutdown_sends_byes_whose_answers_are_tracked_and_refuses_new_calls() {
    let mut h = Harness::new();
    let ok = h.join();
    let tag = ok.to_tag().to_string();
    h.ack(&tag);
    h.core.shutdown_conference(h.now);
    let out = h.drive();
    let bye = out
        .iter()
        .find(|o| o.method() == Some("BYE"))
        .cloned()
        .unwrap_or_else(|| panic!("no BYE: {out:#?}"));
    assert_eq!(bye.flow, udp(CALLER));
    assert_eq!(h.core.pending_conference_requests(), 1);
    // Dave's 200 for the BYE.
    let answer = format!(
        "SIP/2.0 200 OK\r\nVia: {}\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {}\r\nContent-Length: 0\r\n\r\n",
        bye.header("Via"),
        bye.header("From"),
        bye.header("To"),
        bye.header("Call-ID"),
        bye.header("CSeq"),
    );
    h.send(udp(CALLER), &answer);
    assert_eq!(h.core.pending_conference_requests(), 0);
    // New calls are refused while shutting down.
    let out = h.send(
        udp(CALLER),
        &dave(
            "INVITE",
            &format!("sip:room1@{DOMAIN}"),
            "z9hG4bKi9",
            5,
            SDP,
        ),
    );
    assert_eq!(statuses(&out), vec![100, 503]);
}
