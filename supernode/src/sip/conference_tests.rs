//! Behaviour tests of the conference UAS, driven by a fake clock through the real
//! transaction layer (so every response and request is one the layer accepts and puts
//! on the wire) and a fake mixer that assigns ids and ports like `mixer::Mixer` does.

use super::*;
use crate::sip::intake::{self, Intake};
use crate::sip::sdp::Session;
use crate::sip::transaction::{Config, Event, TransactionLayer};
use rsip::message::HasHeaders;
use rsip::SipMessage;
use std::collections::VecDeque;
use std::net::Ipv4Addr;

const T1: Duration = Duration::from_millis(500);
const ALICE: &str = "192.0.2.10";

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn udp(ip: &str, port: u16) -> Flow {
    Flow {
        transport: Transport::Udp,
        remote: SocketAddr::new(ip.parse().unwrap(), port),
        connection: None,
    }
}

/// baresip 1.0 with Opus, G.711, telephone-event and the audio-level extension.
fn baresip_sdp(ip: &str, port: u16, direction: &str) -> String {
    format!(
        "v=0\r\n\
         o=- 1680615384 1943256386 IN IP4 {ip}\r\n\
         s=-\r\n\
         c=IN IP4 {ip}\r\n\
         t=0 0\r\n\
         a=tool:baresip 1.0.0\r\n\
         m=audio {port} RTP/AVP 96 0 8 101\r\n\
         a=rtpmap:96 opus/48000/2\r\n\
         a=fmtp:96 stereo=1;sprop-stereo=1\r\n\
         a=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:8 PCMA/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\n\
         a=fmtp:101 0-15\r\n\
         a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n\
         a={direction}\r\n\
         a=ptime:20\r\n"
    )
}

/// A desk phone with G.722 and G.729 only: nothing we can mix.
const G722_ONLY: &str = "v=0\r\n\
    o=- 1 1 IN IP4 192.0.2.10\r\n\
    s=-\r\n\
    c=IN IP4 192.0.2.10\r\n\
    t=0 0\r\n\
    m=audio 2222 RTP/AVP 9 18 101\r\n\
    a=rtpmap:9 G722/8000\r\n\
    a=rtpmap:18 G729/8000\r\n\
    a=rtpmap:101 telephone-event/8000\r\n";

/// One caller's side of a call: what its requests carry.
#[derive(Clone)]
struct Caller {
    ip: &'static str,
    port: u16,
    from_tag: String,
    call_id: String,
    room: String,
    /// Our tag, learnt from the 200.
    to_tag: Option<String>,
    cseq: u32,
    branch: u32,
}

impl Caller {
    fn new(name: &str, ip: &'static str, room: &str) -> Self {
        Caller {
            ip,
            port: 5060,
            from_tag: format!("{name}-tag"),
            call_id: format!("{name}-call@{ip}"),
            room: room.to_string(),
            to_tag: None,
            cseq: 0,
            branch: 0,
        }
    }

    fn flow(&self) -> Flow {
        udp(self.ip, self.port)
    }

    /// A request in this call; `cseq` is taken as is (ACK and CANCEL reuse the
    /// INVITE's), and `body` comes with its Content-Type.
    fn request(&mut self, method: &str, cseq: u32, body: Option<(&str, &str)>) -> String {
        self.branch += 1;
        let to_tag = self
            .to_tag
            .as_ref()
            .map(|t| format!(";tag={t}"))
            .unwrap_or_default();
        let (ctype, body) = match body {
            Some((t, b)) => (format!("Content-Type: {t}\r\n"), b.to_string()),
            None => (String::new(), String::new()),
        };
        format!(
            "{method} sip:{room}@example.org SIP/2.0\r\n\
             Via: SIP/2.0/UDP {ip}:{port};branch=z9hG4bK{tag}{branch};rport\r\n\
             Max-Forwards: 70\r\n\
             From: \"Alice\" <sip:alice@example.org>;tag={tag}\r\n\
             To: <sip:{room}@example.org>{to_tag}\r\n\
             Call-ID: {call}\r\n\
             CSeq: {cseq} {method}\r\n\
             Contact: <sip:alice@{ip}:{port}>\r\n\
             User-Agent: baresip v1.0.0 (x86_64/linux)\r\n\
             {ctype}\
             Content-Length: {len}\r\n\r\n{body}",
            room = self.room,
            ip = self.ip,
            port = self.port,
            tag = self.from_tag,
            branch = self.branch,
            call = self.call_id,
            len = body.len(),
        )
    }

    fn next(&mut self, method: &str, body: Option<(&str, &str)>) -> String {
        self.cseq += 1;
        let cseq = self.cseq;
        self.request(method, cseq, body)
    }

    fn invite(&mut self, sdp: &str) -> String {
        self.next("INVITE", Some(("application/sdp", sdp)))
    }

    fn ack(&mut self) -> String {
        let cseq = self.cseq;
        self.request("ACK", cseq, None)
    }
}

/// The fake mixer: ids like `Mixer` (one counter), one port per dialog like the
/// driver's socket table, and the state the conference should have built.
#[derive(Default)]
struct FakeMixer {
    next_id: u64,
    rooms: HashMap<RoomId, RoomConfig>,
    legs: HashMap<LegId, (RoomId, LegConfig, DialogId)>,
    held: HashMap<LegId, bool>,
    ports: HashMap<DialogId, u16>,
    next_port: u16,
}

impl FakeMixer {
    fn apply(&mut self, cmd: &MixerCommand) -> Option<Reply> {
        match cmd {
            MixerCommand::CreateRoom { token, config } => {
                self.next_id += 1;
                let id = RoomId(self.next_id);
                self.rooms.insert(id, *config);
                Some(Reply::Room(*token, Ok(id)))
            }
            MixerCommand::DestroyRoom { room } => {
                assert!(
                    self.rooms.remove(room).is_some(),
                    "destroying unknown {room:?}"
                );
                self.legs.retain(|_, (r, _, _)| r != room);
                None
            }
            MixerCommand::AddLeg {
                dialog,
                room,
                config,
            } => {
                assert!(
                    self.rooms.contains_key(room),
                    "adding a leg to unknown {room:?}"
                );
                let in_room = self.legs.values().filter(|(r, _, _)| r == room).count();
                assert!(in_room < self.rooms[room].max_legs, "room full");
                self.next_id += 1;
                let leg = LegId(self.next_id);
                self.legs.insert(leg, (*room, *config, *dialog));
                if self.next_port == 0 {
                    self.next_port = 40000;
                }
                let port = *self.ports.entry(*dialog).or_insert_with(|| {
                    self.next_port += 2;
                    self.next_port
                });
                let local = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
                Some(Reply::Leg(
                    *dialog,
                    Ok(LegHandle {
                        room: *room,
                        leg,
                        local,
                    }),
                ))
            }
            MixerCommand::RemoveLeg { room, leg } => {
                if let Some((r, _, _)) = self.legs.remove(leg) {
                    assert_eq!(r, *room);
                }
                None
            }
            MixerCommand::SetHeld { leg, held, .. } => {
                self.held.insert(*leg, *held);
                None
            }
            MixerCommand::ReleaseMedia { dialog } => {
                self.ports.remove(dialog);
                None
            }
        }
    }

    fn only_leg(&self) -> (LegId, RoomId, LegConfig, DialogId) {
        assert_eq!(self.legs.len(), 1, "{:?}", self.legs);
        let (l, (r, c, d)) = self.legs.iter().next().unwrap();
        (*l, *r, *c, *d)
    }
}

enum Reply {
    Room(RoomToken, Result<RoomId, String>),
    Leg(DialogId, Result<LegHandle, String>),
}

/// The core and driver in miniature: transaction layer, conference, fake mixer.
struct Harness {
    now: Instant,
    tl: TransactionLayer,
    conf: Conference,
    mixer: FakeMixer,
    rooms: HashMap<String, RoomRecord>,
    /// Mixer commands in order, for assertions.
    commands: Vec<MixerCommand>,
    /// When false, replies are held back in `deferred` (a slow mixer).
    auto: bool,
    deferred: VecDeque<Reply>,
    /// Messages sent, parsed back from the wire.
    wire: Vec<(Flow, SipMessage)>,
}

impl Harness {
    fn new() -> Self {
        let mut config = ConferenceConfig::new(
            "203.0.113.1:5060".parse().unwrap(),
            "203.0.113.1".parse().unwrap(),
        );
        config.t1 = T1;
        let mut rooms = HashMap::new();
        for (name, pin, max) in [
            ("team", None, 10),
            ("duo", None, 1),
            ("secret", Some("1234"), 10),
        ] {
            rooms.insert(
                name.to_string(),
                RoomRecord {
                    name: name.to_string(),
                    pin: pin.map(str::to_string),
                    max_legs: max,
                },
            );
        }
        Harness {
            now: Instant::now(),
            tl: TransactionLayer::new(Config::default()),
            conf: Conference::new(config),
            mixer: FakeMixer::default(),
            rooms,
            commands: Vec::new(),
            auto: true,
            deferred: VecDeque::new(),
            wire: Vec::new(),
        }
    }

    fn run(&mut self, actions: Actions) {
        let mut queue: VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Respond { key, response } => {
                    self.tl.respond(&key, response, self.now).unwrap();
                }
                Action::Retransmit { response, flow } => {
                    self.tl
                        .send_stateless(&SipMessage::Response(response), flow);
                }
                Action::Request { request, flow } => {
                    self.tl.send_request(request, flow, self.now).unwrap();
                }
                Action::Mixer(cmd) => {
                    self.commands.push(cmd.clone());
                    if let Some(reply) = self.mixer.apply(&cmd) {
                        if self.auto {
                            queue.extend(self.reply(reply));
                        } else {
                            self.deferred.push_back(reply);
                        }
                    }
                }
            }
        }
        while let Some(t) = self.tl.poll_transmit() {
            let msg = SipMessage::try_from(t.message.clone()).expect("sent messages parse");
            self.wire.push((t.flow, msg));
        }
    }

    fn reply(&mut self, reply: Reply) -> Actions {
        match reply {
            Reply::Room(token, result) => self.conf.room_created(token, result, self.now),
            Reply::Leg(dialog, result) => self.conf.leg_added(dialog, result, self.now),
        }
    }

    /// Lets the slow mixer answer one held-back command.
    fn release_one(&mut self) {
        let reply = self.deferred.pop_front().expect("a deferred mixer reply");
        let actions = self.reply(reply);
        self.run(actions);
    }

    /// A message from the network, through intake and the transaction layer, routed
    /// like the core does.
    fn receive(&mut self, text: &str, flow: Flow) {
        let Ok(Intake::Message(msg)) = intake::parse(text.as_bytes()) else {
            panic!("test message does not parse: {text}");
        };
        match msg {
            SipMessage::Request(r) => self.tl.handle_request(r, flow, self.now),
            SipMessage::Response(r) => self.tl.handle_response(r, flow, self.now),
        }
        while let Some(event) = self.tl.poll_event() {
            let actions = match event {
                Event::Request { key, request, flow } => {
                    let to_tag = first(&request.headers, Name::To).and_then(tag);
                    let room = if to_tag.is_none() {
                        request.uri.user().and_then(|u| self.rooms.get(u)).cloned()
                    } else {
                        // In-dialog: the core sends what `owns` claims here, and answers
                        // the rest 481 itself, as the conference does.
                        None
                    };
                    self.conf
                        .handle_request(key, &request, flow, room.as_ref(), self.now)
                }
                Event::Ack { request, flow, .. } => self.conf.handle_ack(&request, flow, self.now),
                Event::Cancel {
                    key,
                    request,
                    invite,
                    ..
                } => self.conf.handle_cancel(key, &request, invite, self.now),
                _ => Vec::new(),
            };
            self.run(actions);
        }
    }

    fn advance(&mut self, by: Duration) {
        let end = self.now + by;
        loop {
            let next = [self.conf.poll_timeout(), self.tl.poll_timeout()]
                .into_iter()
                .flatten()
                .filter(|t| *t <= end)
                .min();
            let Some(at) = next else { break };
            self.now = self.now.max(at);
            self.tl.handle_timeout(self.now);
            let actions = self.conf.handle_timeout(self.now);
            self.run(actions);
            while let Some(t) = self.tl.poll_transmit() {
                let msg = SipMessage::try_from(t.message.clone()).unwrap();
                self.wire.push((t.flow, msg));
            }
            while self.tl.poll_event().is_some() {}
        }
        self.now = end;
    }

    fn mixer_event(&mut self, event: MixerEvent) {
        let actions = self.conf.handle_mixer_event(&event, self.now);
        self.run(actions);
    }

    fn take_wire(&mut self) -> Vec<(Flow, SipMessage)> {
        std::mem::take(&mut self.wire)
    }

    /// Final responses sent since the last call, as (code, response).
    fn responses(&mut self) -> Vec<Response> {
        self.take_wire()
            .into_iter()
            .filter_map(|(_, m)| match m {
                SipMessage::Response(r) if r.status_code.code() >= 200 => Some(r),
                _ => None,
            })
            .collect()
    }

    fn requests(&mut self) -> Vec<(Flow, Request)> {
        self.take_wire()
            .into_iter()
            .filter_map(|(f, m)| match m {
                SipMessage::Request(r) => Some((f, r)),
                _ => None,
            })
            .collect()
    }

    /// Calls `room` and returns the 200 (the caller learns our tag from it).
    fn call(&mut self, caller: &mut Caller, sdp: &str) -> Response {
        let invite = caller.invite(sdp);
        self.receive(&invite, caller.flow());
        let mut rs = self.responses();
        assert_eq!(rs.len(), 1, "{rs:?}");
        let ok = rs.remove(0);
        assert_eq!(ok.status_code.code(), 200, "{ok}");
        caller.to_tag = first(&ok.headers, Name::To)
            .and_then(tag)
            .map(str::to_string);
        assert!(caller.to_tag.is_some());
        ok
    }

    /// Calls and ACKs.
    fn join(&mut self, caller: &mut Caller, sdp: &str) -> Response {
        let ok = self.call(caller, sdp);
        let ack = caller.ack();
        self.receive(&ack, caller.flow());
        ok
    }
}

fn status(resp: &Response) -> u16 {
    resp.status_code.code()
}

fn body(resp: &Response) -> String {
    String::from_utf8(resp.body.clone()).unwrap()
}

fn header<'a>(
    msg: &'a impl HasHeaders,
    pick: impl Fn(&'a Header) -> Option<&'a str>,
) -> Option<&'a str> {
    msg.headers().iter().find_map(pick)
}

fn dtmf(leg: LegId, digit: char) -> MixerEvent {
    MixerEvent::Room {
        room: RoomId(0),
        event: RoomEvent::Dtmf { leg, digit },
    }
}

fn baresip(direction: &str) -> String {
    baresip_sdp(ALICE, 10970, direction)
}

#[test]
fn invite_gets_an_opus_leg_and_a_200_with_the_answer() {
    let mut h = Harness::new();
    let mut alice = Caller::new("alice", ALICE, "team");
    let invite = alice.invite(&baresip("sendrecv"));
    h.receive(&invite, alice.flow());

    // The room, then the leg with what was negotiated.
    assert!(matches!(h.commands[0], MixerCommand::CreateRoom { .. }));
    let MixerCommand::AddLeg { config, .. } = h.commands[1] else {
        panic!("{:?}", h.commands);
    };
    assert_eq!(config.codec, CodecKind::Opus);
    assert_eq!(config.payload_type, 96);
    assert_eq!(config.telephone_event_pt, Some(101));
    assert_eq!(config.audio_level_ext, Some(1));
    assert_eq!(config.remote, "192.0.2.10:10970".parse().unwrap());
    let (_, _, _, dialog) = h.mixer.only_leg();
    let port = h.mixer.ports[&dialog];

    // 100 Trying from the transaction layer, then the 200 with the answer.
    let wire = h.take_wire();
    let codes: Vec<u16> = wire
        .iter()
        .filter_map(|(_, m)| match m {
            SipMessage::Response(r) => Some(status(r)),
            _ => None,
        })
        .collect();
    assert_eq!(codes, vec![100, 200]);
    let SipMessage::Response(ok) = &wire[1].1 else {
        unreachable!()
    };
    assert_eq!(wire[1].0, alice.flow());
    let to = first(&ok.headers, Name::To).unwrap();
    assert!(tag(to).is_some_and(|t| t.len() >= 8), "{to}");
    assert_eq!(
        first(&ok.headers, Name::Contact),
        Some("<sip:team@203.0.113.1:5060>")
    );
    let ctype = header(ok, |h| match h {
        Header::ContentType(v) => Some(v.value()),
        _ => None,
    });
    assert_eq!(ctype, Some("application/sdp"));
    let text = body(ok);
    let clen = header(ok, |h| match h {
        Header::ContentLength(v) => Some(v.value()),
        _ => None,
    });
    assert_eq!(clen, Some(text.len().to_string().as_str()));
    let answer = Session::parse(&text).unwrap();
    let back = sdp::negotiate(&answer, None).unwrap();
    assert_eq!(back.codec, CodecKind::Opus);
    assert_eq!(back.payload_type, 96);
    assert_eq!(back.telephone_event.map(|t| t.payload_type), Some(101));
    assert_eq!(back.audio_level_ext, Some(1));
    assert_eq!(
        back.remote_rtp,
        SocketAddr::new("203.0.113.1".parse().unwrap(), port)
    );
    assert_eq!(back.direction, Direction::SendRecv);
    assert!(text.contains("a=fmtp:96 minptime=10;useinbandfec=1\r\n"));

    // The ACK stops the retransmissions: nothing more goes out.
    alice.to_tag = tag(to).map(str::to_string);
    let ack = alice.ack();
    h.receive(&ack, alice.flow());
    h.advance(Duration::from_secs(40));
    assert!(h.take_wire().is_empty());
    assert_eq!(h.conf.len(), 1);
    assert_eq!(h.conf.seats("team"), 1);
}

#[test]
fn bye_removes_the_leg_and_gets_200() {
    let mut h = Harness::new();
    let mut alice = Caller::new("alice", ALICE, "team");
    let mut bob = Caller::new("bob", "192.0.2.20", "team");
    h.join(&mut alice, &baresip("sendrecv"));
    h.join(&mut bob, &baresip_sdp("192.0.2.20", 4000, "sendrecv"));
    assert_eq!(h.mixer.legs.len(), 2);
    // One room for both.
    assert_eq!(h.mixer.rooms.len(), 1);
    h.commands.clear();

    let bye = alice.next("BYE", None);
    h.receive(&bye, alice.flow());
    let rs = h.responses();
    assert_eq!(rs.iter().map(status).collect::<Vec<_>>(), vec![200]);
    assert!(matches!(h.commands[0], MixerCommand::RemoveLeg { .. }));
    assert!(matches!(h.commands[1], MixerCommand::ReleaseMedia { .. }));
    assert_eq!(h.mixer.legs.len(), 1);
    assert_eq!(h.conf.seats("team"), 1);

    // The last one out closes the mixer room.
    let bye = bob.next("BYE", None);
    h.receive(&bye, bob.flow());
    assert_eq!(
        h.responses().iter().map(status).collect::<Vec<_>>(),
        vec![200]
    );
    assert!(h.mixer.rooms.is_empty());
    assert!(h.mixer.ports.is_empty());
    assert!(h.conf.is_empty());

    // A BYE for a dialog that is gone: 481.
    let again = alice.next("BYE", None);
    h.receive(&again, alice.flow());
    assert_eq!(
        h.responses().iter().map(status).collect::<Vec<_>>(),
        vec![481]
    );
}

#[test]
fn unknown_room_is_404() {
    let mut h = Harness::new();
    let mut alice = Caller::new("alice", ALICE, "nosuchroom");
    let invite = alice.invite(&baresip("sendrecv"));
    h.receive(&invite, alice.flow());
    assert_eq!(
        h.responses().iter().map(status).collect::<Vec<_>>(),
        vec![404]
    );
    assert!(h.commands.is_empty());
}

#[test]
fn full_room_is_486() {
    let mut h = Harness::new();
    let mut alice = Caller::new("alice", ALICE, "duo");
    h.join(&mut alice, &baresip("sendrecv"));
    let mut bob = Caller::new("bob", "192.0.2.20", "duo");
    let invite = bob.invite(&baresip_sdp("192.0.2.20", 4000, "sendrecv"));
    h.receive(&invite, bob.flow());
    assert_eq!(
        h.responses().iter().map(status).collect::<Vec<_>>(),
        vec![486]
    );
    assert_eq!(h.mixer.legs.len(), 1);

    // A seat frees up when alice leaves.
    let bye = alice.next("BYE", None);
    h.receive(&bye, alice.flow());
    h.take_wire();
    h.call(&mut bob, &baresip_sdp("192.0.2.20", 4000, "sendrecv"));
}

#[test]
fn unusable_offers_are_refused() {
    let mut h = Harness::new();
    let mut alice = Caller::new("alice", ALICE, "team");

    let invite = alice.invite(G722_ONLY);
    h.receive(&invite, alice.flow());
    let rs = h.responses();
    assert_eq!(status(&rs[0]), 488);
    let warning = header(&rs[0], |h| match h {
        Header::Warning(v) => Some(v.value()),
        _ => None,
    });
    assert_eq!(
        warning,
        Some("305 203.0.113.1 \"Incompatible media format\"")
    );

    // No offer at all: we require one.
    let bare = alice.next("INVITE", None);
    h.receive(&bare, alice.flow());
    assert_eq!(status(&h.responses()[0]), 488);

    // SRTP only.
    let savpf = baresip("sendrecv").replace("RTP/AVP", "RTP/SAVPF");
    let invite = alice.invite(&savpf);
    h.receive(&invite, alice.flow());
    assert_eq!(status(&h.responses()[0]), 488);

    // Not SDP.
    let text = alice.next("INVITE", Some(("text/plain", "hello")));
    h.receive(&text, alice.flow());
    assert_eq!(status(&h.responses()[0]), 415);

    // An extension we do not do.
    let mut invite = alice.invite(&baresip("sendrecv"));
    invite = invite.replace(
        "Max-Forwards: 70\r\n",
        "Max-Forwards: 70\r\nRequire: 100rel\r\n",
    );
    h.receive(&invite, alice.flow());
    let rs = h.responses();
    assert_eq!(status(&rs[0]), 420);
    let unsupported = header(&rs[0], |h| match h {
        Header::Unsupported(v) => Some(v.value()),
        _ => None,
    });
    assert_eq!(unsupported, Some("100rel"));

    assert!(h.commands.is_empty());
    assert!(h.conf.is_empty());
}

#[test]
fn reinvite_hold_and_resume_set_held() {
    let mut h = Harness::new();
    let mut alice = Caller::new("alice", ALICE, "team");
    let first_ok = h.join(&mut alice, &baresip("sendrecv"));
    let (leg, _, _, _) = h.mixer.only_leg();
    let origin = |r: &Response| Session::parse(&body(r)).unwrap().origin.unwrap();
    h.commands.clear();

    let hold = alice.invite(&baresip("sendonly"));
    h.receive(&hold, alice.flow());
    let rs = h.responses();
    assert_eq!(status(&rs[0]), 200);
    assert!(body(&rs[0]).contains("a=recvonly\r\n"));
    assert_eq!(origin(&rs[0]).session_id, origin(&first_ok).session_id);
    assert_eq!(origin(&rs[0]).version, "2");
    let room = h.mixer.only_leg().1;
    assert_eq!(
        h.commands,
        vec![MixerCommand::SetHeld {
            room,
            leg,
            held: true
        }]
    );
    assert!(h.mixer.held[&leg]);
    let ack = alice.ack();
    h.receive(&ack, alice.flow());

    // Old-style hold: c=0.0.0.0 with sendrecv is still hold, and keeps the leg.
    let resume = alice.invite(&baresip("sendrecv"));
    h.receive(&resume, alice.flow());
    assert!(!h.mixer.held[&leg]);
    let rs = h.responses();
    assert!(body(&rs[0]).contains("a=sendrecv\r\n"));
    assert_eq!(origin(&rs[0]).version, "3");
    let ack = alice.ack();
    h.receive(&ack, alice.flow());

    let zero = baresip_sdp("0.0.0.0", 10970, "sendrecv");
    let hold = alice.invite(&zero);
    h.receive(&hold, alice.flow());
    assert!(h.mixer.held[&leg]);
    let ack = alice.ack();
    h.receive(&ack, alice.flow());
    let resume = alice.invite(&baresip("sendrecv"));
    h.receive(&resume, alice.flow());
    assert!(!h.mixer.held[&leg]);
    // Same leg throughout: hold never re-adds it.
    assert_eq!(h.mixer.only_leg().0, leg);
}

#[test]
fn reinvite_changing_the_codec_re_adds_the_leg_on_the_same_port() {
    let mut h = Harness::new();
    let mut alice = Caller::new("alice", ALICE, "team");
    let ok = h.join(&mut alice, &baresip("sendrecv"));
    let port = |r: &Response| {
        sdp::negotiate(&Session::parse(&body(r)).unwrap(), None)
            .unwrap()
            .remote_rtp
            .port()
    };
    let (old_leg, room, _, _) = h.mixer.only_leg();
    h.commands.clear();

    // Opus no longer offered: PCMU now.
    let g711 = baresip("sendrecv")
        .replace("RTP/AVP 96 0 8 101", "RTP/AVP 0 8 101")
        .replace("a=rtpmap:96 opus/48000/2\r\n", "");
    let reinvite = alice.invite(&g711);
    h.receive(&reinvite, alice.flow());
    let rs = h.responses();
    assert_eq!(status(&rs[0]), 200);
    assert_eq!(port(&rs[0]), port(&ok));
    assert!(body(&rs[0]).contains("m=audio"));
    assert!(body(&rs[0]).contains("a=rtpmap:0 PCMU/8000"));
    assert!(matches!(h.commands[0], MixerCommand::RemoveLeg { leg, .. } if leg == old_leg));
    let (new_leg, new_room, config, _) = h.mixer.only_leg();
    assert_ne!(new_leg, old_leg);
    assert_eq!(new_room, room);
    assert_eq!((config.codec, config.payload_type), (CodecKind::Pcmu, 0));

    // A re-offer of the same thing changes nothing in the mixer.
    let ack = alice.ack();
    h.receive(&ack, alice.flow());
    h.commands.clear();
    let again = alice.invite(&g711);
    h.receive(&again, alice.flow());
    assert!(h.commands.is_empty(), "{:?}", h.commands);
    assert_eq!(status(&h.responses()[0]), 200);

    // A refused re-offer (488) leaves the call as it was.
    let ack = alice.ack();
    h.receive(&ack, alice.flow());
    let bad = alice.invite(G722_ONLY);
    h.receive(&bad, alice.flow());
    assert_eq!(status(&h.responses()[0]), 488);
    assert_eq!(h.mixer.only_leg().0, new_leg);
    assert_eq!(h.conf.len(), 1);
}

#[test]
fn reinvite_without_sdp_gets_an_offer_and_the_ack_answers() {
    let mut h = Harness::new();
    let mut alice = Caller::new("alice", ALICE, "team");
    h.join(&mut alice, &baresip("sendrecv"));
    let (leg, ..) = h.mixer.only_leg();
    let reinvite = alice.next("INVITE", None);
    h.receive(&reinvite, alice.flow());
    let rs = h.responses();
    assert_eq!(status(&rs[0]), 200);
    let offer = body(&rs[0]);
    assert!(offer.contains("a=sendrecv\r\n"));
    // The session did not change, so neither did its version.
    assert_eq!(Session::parse(&offer).unwrap().origin.unwrap().version, "1");
    // The caller answers with sendonly (hold) in the ACK.
    let cseq = alice.cseq;
    let ack = alice.request("ACK", cseq, Some(("application/sdp", &baresip("sendonly"))));
    h.receive(&ack, alice.flow());
    assert_eq!(h.mixer.held.get(&leg), Some(&true));
    h.advance(Duration::from_secs(40));
    assert!(h.requests().is_empty());
}

#[test]
fn pin_room_admits_after_the_right_digits() {
    let mut h = Harness::new();
    let mut bob = Caller::new("bob", "192.0.2.20", "secret");
    let mut alice = Caller::new("alice", ALICE, "secret");

    // Bob is admitted first, to have someone in the room.
    h.join(&mut bob, &baresip_sdp("192.0.2.20", 4000, "sendrecv"));
    let MixerCommand::CreateRoom { config, .. } = h.commands[0] else {
        panic!("{:?}", h.commands);
    };
    assert_eq!(config.max_legs, 1, "a private lobby");
    let (bob_leg, lobby, _, bob_dialog) = h.mixer.only_leg();
    let bob_port = h.mixer.ports[&bob_dialog];
    for d in "1234".chars() {
        h.mixer_event(dtmf(bob_leg, d));
    }
    let (bob_leg2, room, _, _) = h.mixer.only_leg();
    assert_ne!(room, lobby);
    assert_ne!(bob_leg2, bob_leg);
    assert!(!h.mixer.rooms.contains_key(&lobby), "the lobby is gone");
    assert_eq!(
        h.mixer.ports[&bob_dialog], bob_port,
        "same socket, same port"
    );

    // Alice waits in her own lobby, not in the room.
    h.join(&mut alice, &baresip("sendrecv"));
    let (alice_leg, alice_lobby, _) = h
        .mixer
        .legs
        .iter()
        .find(|(l, _)| **l != bob_leg2)
        .map(|(l, (r, c, _))| (*l, *r, *c))
        .unwrap();
    assert_ne!(alice_lobby, room);
    // A wrong digit in the middle: `*` starts over without counting a try.
    for d in "12*1234".chars() {
        h.mixer_event(dtmf(alice_leg, d));
    }
    let rooms: Vec<RoomId> = h.mixer.legs.values().map(|(r, _, _)| *r).collect();
    assert_eq!(rooms, vec![room, room]);
    assert_eq!(h.mixer.rooms.len(), 1);
    // Digits after admission do nothing.
    let alice_in_room = *h.mixer.legs.keys().find(|l| **l != bob_leg2).unwrap();
    h.commands.clear();
    h.mixer_event(dtmf(alice_in_room, '9'));
    assert!(h.commands.is_empty());
    assert!(h.requests().is_empty());
}

#[test]
fn three_wrong_pins_hang_up() {
    let mut h = Harness::new();
    let mut alice = Caller::new("alice", ALICE, "secret");
    let ok = h.join(&mut alice, &baresip("sendrecv"));
    let (leg, ..) = h.mixer.only_leg();
    // Two wrong tries, one ended early by `#`.
    for d in "9999".chars() {
        h.mixer_event(dtmf(leg, d));
    }
    for d in "12#".chars() {
        h.mixer_event(dtmf(leg, d));
    }
    assert!(h.requests().is_empty());
    assert_eq!(h.conf.len(), 1);
    for d in "4321".chars() {
        h.mixer_event(dtmf(leg, d));
    }
    let reqs = h.requests();
    assert_eq!(reqs.len(), 1);
    let (flow, bye) = &reqs[0];
    assert_eq!(*flow, alice.flow());
    assert_eq!(bye.method, Method::Bye);
    assert_eq!(bye.uri.to_string(), "sip:alice@192.0.2.10:5060");
    assert_eq!(
        first(&bye.headers, Name::CallId),
        Some(alice.call_id.as_str())
    );
    assert_eq!(
        first(&bye.headers, Name::From).and_then(tag),
        alice.to_tag.as_deref()
    );
    assert_eq!(
        first(&bye.headers, Name::To).and_then(tag),
        Some(alice.from_tag.as_str())
    );
    assert_eq!(cseq(&bye.headers), Some((1, "BYE")));
    assert!(first(&bye.headers, Name::Via)
        .unwrap()
        .contains("203.0.113.1:5060;branch=z9hG4bK"));
    let _ = ok;
    assert!(h.mixer.legs.is_empty());
    assert!(h.mixer.rooms.is_empty());
    assert!(h.conf.is_empty());
}

#[test]
fn pin_timeout_hangs_up() {
    let mut h = Harness::new();
    let mut alice = Caller::new("alice", ALICE, "secret");
    h.join(&mut alice, &baresip("sendrecv"));
    h.advance(Duration::from_secs(59));
    assert!(h.requests().is_empty());
    h.advance(Duration::from_secs(1));
    let reqs = h.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].1.method, Method::Bye);
    assert!(h.conf.is_empty());
}

#[test]
fn info_digits_admit_too() {
    let mut h = Harness::new();
    let mut alice = Caller::new("alice", ALICE, "secret");
    h.join(&mut alice, &baresip("sendrecv"));
    let (_, lobby, _, _) = h.mixer.only_leg();
    for d in ["1", "2"] {
        let body = format!("Signal={d}\r\nDuration=160\r\n");
        let info = alice.next("INFO", Some(("application/dtmf-relay", &body)));
        h.receive(&info, alice.flow());
        assert_eq!(status(&h.responses()[0]), 200);
    }
    for d in ["3", "4"] {
        let info = alice.next("INFO", Some(("application/dtmf", d)));
        h.receive(&info, alice.flow());
        assert_eq!(status(&h.responses()[0]), 200);
    }
    let (_, room, _, _) = h.mixer.only_leg();
    assert_ne!(room, lobby);
    // Other bodies are refused.
    let info = alice.next("INFO", Some(("application/json", "{}")));
    h.receive(&info, alice.flow());
    assert_eq!(status(&h.responses()[0]), 415);
}

#[test]
fn rtp_timeout_hangs_up() {
    let mut h = Harness::new();
    let mut alice = Caller::new("alice", ALICE, "team");
    h.join(&mut alice, &baresip("sendrecv"));
    let (leg, room, ..) = h.mixer.only_leg();
    h.mixer_event(MixerEvent::Room {
        room,
        event: RoomEvent::LegTimedOut(leg),
    });
    let reqs = h.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].1.method, Method::Bye);
    assert!(h.mixer.legs.is_empty());
    // Talking events and events of unknown legs need nothing.
    h.mixer_event(MixerEvent::Room {
        room,
        event: RoomEvent::TalkingStarted(leg),
    });
    h.mixer_event(MixerEvent::Room {
        room,
        event: RoomEvent::LegTimedOut(leg),
    });
    assert!(h.take_wire().is_empty());
}

#[test]
fn kick_sends_bye_and_frees_the_leg() {
    let mut h = Harness::new();
    let mut alice = Caller::new("alice", ALICE, "team");
    h.join(&mut alice, &baresip("sendrecv"));
    let (leg, room, _, dialog) = h.mixer.only_leg();
    let listed = h.conf.dialogs();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, dialog);
    assert_eq!(listed[0].room, "team");
    assert_eq!(listed[0].leg, Some((room, leg)));
    assert!(listed[0].remote.contains("alice"), "{}", listed[0].remote);
    let actions = h.conf.kick(dialog, h.now);
    h.run(actions);
    let reqs = h.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].1.method, Method::Bye);
    assert_eq!(reqs[0].0.remote, alice.flow().remote);
    assert!(h.mixer.legs.is_empty());
    assert!(h.mixer.ports.is_empty());
    assert!(h.conf.is_empty());
    assert!(h.conf.dialogs().is_empty());
    // Kicking it again does nothing.
    let actions = h.conf.kick(dialog, h.now);
    assert!(actions.is_empty());
}

#[test]
fn the_200_is_retransmitted_until_the_ack() {
    let mut h = Harness::new();
    let mut alice = Caller::new("alice", ALICE, "team");
    let ok = h.call(&mut alice, &baresip("sendrecv"));
    let start = h.now;
    let mut at = Vec::new();
    for _ in 0..12 {
        h.advance(ms(250));
        for (_, m) in h.take_wire() {
            let SipMessage::Response(r) = m else {
                panic!("unexpected {m}");
            };
            assert_eq!(r, ok, "retransmissions are the same 200");
            at.push((h.now - start).as_millis());
        }
    }
    // T1, then doubling: 0.5 s, 1.5 s (+1), 3.5 s (+2)
    assert_eq!(at, vec![500, 1500], "{at:?}");
    h.advance(ms(2000));
    assert_eq!(h.take_wire().len(), 1, "at 3.5 s");
    let ack = alice.ack();
    h.receive(&ack, alice.flow());
    h.advance(Duration::from_secs(60));
    assert!(h.take_wire().is_empty());
    assert_eq!(h.conf.len(), 1);
}

#[test]
fn no_ack_in_64_t1_means_bye() {
    let mut h = Harness::new();
    let mut alice = Caller::new("alice", ALICE, "team");
    h.call(&mut alice, &baresip("sendrecv"));
    let start = h.now;
    let mut retransmits = Vec::new();
    let mut bye_at = None;
    while bye_at.is_none() && h.now - start < Duration::from_secs(40) {
        h.advance(ms(100));
        for (_, m) in h.take_wire() {
            match m {
                SipMessage::Response(r) => {
                    assert_eq!(status(&r), 200);
                    retransmits.push((h.now - start).as_millis());
                }
                SipMessage::Request(r) if r.method == Method::Bye => {
                    bye_at = Some(h.now - start);
                }
                // The BYE's own retransmissions are the transaction layer's.
                SipMessage::Request(_) => {}
            }
        }
    }
    // 0.5, 1.5, 3.5, then every 4 s (T2) until 32 s.
    assert_eq!(
        retransmits,
        vec![500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500]
    );
    assert_eq!(bye_at, Some(T1 * 64));
    assert!(h.conf.is_empty());
    assert!(h.mixer.legs.is_empty());
}

#[test]
fn cancel_before_the_200_gets_487() {
    let mut h = Harness::new();
    h.auto = false;
    let mut alice = Caller::new("alice", ALICE, "team");
    let invite = alice.invite(&baresip("sendrecv"));
    h.receive(&invite, alice.flow());
    // The mixer has not reported the room yet.
    assert_eq!(h.deferred.len(), 1);
    let codes: Vec<u16> = h
        .take_wire()
        .iter()
        .filter_map(|(_, m)| match m {
            SipMessage::Response(r) => Some(status(r)),
            _ => None,
        })
        .collect();
    assert_eq!(codes, vec![100]);

    let cseq = alice.cseq;
    alice.branch -= 1; // a CANCEL reuses the INVITE's branch
    let cancel = alice.request("CANCEL", cseq, None);
    h.receive(&cancel, alice.flow());
    let rs = h.responses();
    let got: Vec<(u16, &str)> = rs.iter().map(|r| (status(r), cseq_method(r))).collect();
    assert_eq!(got, vec![(200, "CANCEL"), (487, "INVITE")]);
    assert_eq!(
        first(&rs[0].headers, Name::To).and_then(tag),
        first(&rs[1].headers, Name::To).and_then(tag)
    );
    assert!(h.conf.is_empty());
    assert_eq!(h.conf.seats("team"), 0);

    // The room the mixer creates late is destroyed at once.
    h.auto = true;
    h.release_one();
    assert!(h.mixer.rooms.is_empty());
    assert!(h.mixer.legs.is_empty());
}

fn cseq_method(r: &Response) -> &str {
    cseq(&r.headers).map(|(_, m)| m).unwrap_or_default()
}

#[test]
fn a_slow_leg_still_gets_its_200_and_cancel_after_200_changes_nothing() {
    let mut h = Harness::new();
    h.auto = false;
    let mut alice = Caller::new("alice", ALICE, "team");
    let invite = alice.invite(&baresip("sendrecv"));
    h.receive(&invite, alice.flow());
    h.release_one(); // room created → AddLeg
    assert!(h.responses().is_empty());
    h.release_one(); // leg added → 200
    let rs = h.responses();
    assert_eq!(status(&rs[0]), 200);
    let cseq = alice.cseq;
    alice.branch -= 1;
    let cancel = alice.request("CANCEL", cseq, None);
    h.receive(&cancel, alice.flow());
    let rs = h.responses();
    assert_eq!(rs.iter().map(status).collect::<Vec<_>>(), vec![200]);
    assert_eq!(h.conf.len(), 1);
}

#[test]
fn mixer_failures_are_503_or_bye() {
    let mut h = Harness::new();
    h.auto = false;
    let mut alice = Caller::new("alice", ALICE, "team");
    let invite = alice.invite(&baresip("sendrecv"));
    h.receive(&invite, alice.flow());
    let Some(Reply::Room(token, _)) = h.deferred.pop_front() else {
        panic!("no CreateRoom");
    };
    h.mixer.rooms.clear();
    let actions = h.conf.room_created(token, Err("mixer busy".into()), h.now);
    h.run(actions);
    let rs = h.responses();
    assert_eq!(rs.iter().map(status).collect::<Vec<_>>(), vec![503]);
    assert!(h.conf.is_empty());
    assert_eq!(h.conf.seats("team"), 0);
}

#[test]
fn shutdown_hangs_up_on_everyone() {
    let mut h = Harness::new();
    let mut alice = Caller::new("alice", ALICE, "team");
    let mut bob = Caller::new("bob", "192.0.2.20", "secret");
    h.join(&mut alice, &baresip("sendrecv"));
    h.join(&mut bob, &baresip_sdp("192.0.2.20", 4000, "sendrecv"));
    let actions = h.conf.shutdown(h.now);
    h.run(actions);
    let mut byes: Vec<SocketAddr> = h
        .requests()
        .into_iter()
        .filter(|(_, r)| r.method == Method::Bye)
        .map(|(f, _)| f.remote)
        .collect();
    byes.sort();
    assert_eq!(byes, vec![alice.flow().remote, bob.flow().remote]);
    assert!(h.mixer.rooms.is_empty());
    assert!(h.mixer.legs.is_empty());
    assert!(h.mixer.ports.is_empty());
    assert!(h.conf.is_empty());
    assert_eq!(h.conf.poll_timeout(), None);

    // Nobody new gets in.
    let mut carol = Caller::new("carol", "192.0.2.30", "team");
    let invite = carol.invite(&baresip_sdp("192.0.2.30", 4000, "sendrecv"));
    h.receive(&invite, carol.flow());
    assert_eq!(status(&h.responses()[0]), 503);
}

#[test]
fn other_requests() {
    let mut h = Harness::new();
    let mut alice = Caller::new("alice", ALICE, "team");
    // OPTIONS to the room, out of dialog.
    let options = alice.next("OPTIONS", None);
    h.receive(&options, alice.flow());
    let rs = h.responses();
    assert_eq!(status(&rs[0]), 200);
    let allow = header(&rs[0], |h| match h {
        Header::Allow(v) => Some(v.value()),
        _ => None,
    });
    assert_eq!(allow, Some(ALLOW));

    h.join(&mut alice, &baresip("sendrecv"));
    let options = alice.next("OPTIONS", None);
    h.receive(&options, alice.flow());
    assert_eq!(status(&h.responses()[0]), 200);
    let message = alice.next("MESSAGE", Some(("text/plain", "hi")));
    h.receive(&message, alice.flow());
    assert_eq!(status(&h.responses()[0]), 405);

    // Out of order: a CSeq below the last one.
    alice.cseq = 1;
    let stale = alice.next("INFO", None);
    h.receive(&stale, alice.flow());
    assert_eq!(status(&h.responses()[0]), 500);
}

#[test]
fn record_route_becomes_the_route_set() {
    let mut h = Harness::new();
    let mut alice = Caller::new("alice", ALICE, "team");
    let invite = alice.invite(&baresip("sendrecv")).replace(
        "Max-Forwards: 70\r\n",
        "Max-Forwards: 70\r\nRecord-Route: <sip:p1.example.org;lr>, <sip:p2.example.org;lr>\r\n",
    );
    h.receive(&invite, alice.flow());
    let rs = h.responses();
    let rr: Vec<&str> = values(&rs[0].headers, Name::RecordRoute).collect();
    assert!(!rr.is_empty());
    alice.to_tag = first(&rs[0].headers, Name::To)
        .and_then(tag)
        .map(str::to_string);
    let ack = alice.ack();
    h.receive(&ack, alice.flow());
    let actions = h.conf.shutdown(h.now);
    h.run(actions);
    let reqs = h.requests();
    let routes: Vec<&str> = values(&reqs[0].1.headers, Name::Route).collect();
    assert_eq!(
        routes,
        vec!["<sip:p1.example.org;lr>", "<sip:p2.example.org;lr>"]
    );
}

#[test]
fn info_digit_parsing() {
    assert_eq!(dtmf_digit("5"), Some('5'));
    assert_eq!(dtmf_digit("#"), Some('#'));
    assert_eq!(dtmf_digit("10"), Some('*'));
    assert_eq!(dtmf_digit("11"), Some('#'));
    assert_eq!(dtmf_digit("a"), Some('A'));
    assert_eq!(dtmf_digit("55"), None);
    assert_eq!(dtmf_digit(""), None);
    assert_eq!(dtmf_digit("x"), None);
}

/// One step of a random session with three callers.
#[derive(Debug, Clone)]
enum Op {
    Invite(usize, usize),
    Ack(usize),
    Bye(usize),
    Reinvite(usize, &'static str),
    Digits(usize, &'static str),
    TimedOut(usize),
    Cancel(usize),
    Advance(u64),
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    let caller = 0usize..3;
    prop_oneof![
        (caller.clone(), 0usize..3).prop_map(|(c, r)| Op::Invite(c, r)),
        caller.clone().prop_map(Op::Ack),
        caller.clone().prop_map(Op::Bye),
        (
            caller.clone(),
            prop_oneof![Just("sendonly"), Just("sendrecv"), Just("inactive")]
        )
            .prop_map(|(c, d)| Op::Reinvite(c, d)),
        (
            caller.clone(),
            prop_oneof![Just("1234"), Just("99#"), Just("1*")]
        )
            .prop_map(|(c, d)| Op::Digits(c, d)),
        caller.clone().prop_map(Op::TimedOut),
        caller.prop_map(Op::Cancel),
        (0u64..40_000).prop_map(Op::Advance),
    ]
}

impl Harness {
    /// Checks that mixer and conference agree: no leaked leg, room or socket.
    fn check_invariants(&self) {
        let conf = &self.conf;
        for (leg, (room, _, dialog)) in &self.mixer.legs {
            let d = conf.dialogs.get(dialog).expect("a leg of a dead dialog");
            match d.leg {
                Leg::Active {
                    leg: l, room: r, ..
                } => assert_eq!((l, r), (*leg, *room)),
                other => panic!("mixer has {leg:?}, dialog has {other:?}"),
            }
        }
        for room in self.mixer.rooms.keys() {
            let used = conf
                .rooms
                .values()
                .any(|r| r.mixer == Some(MixerRoom::Ready(*room)))
                || conf
                    .dialogs
                    .values()
                    .any(|d| d.lobby == Some(MixerRoom::Ready(*room)));
            assert!(used, "leaked mixer room {room:?}");
        }
        for dialog in self.mixer.ports.keys() {
            assert!(conf.dialogs.contains_key(dialog), "leaked socket");
        }
        for (name, r) in &conf.rooms {
            let n = conf.dialogs.values().filter(|d| d.room == *name).count();
            assert_eq!(r.seats, n, "seats of {name}");
        }
        assert_eq!(conf.by_key.len(), conf.dialogs.len());
        for id in conf.by_leg.values() {
            assert!(conf.dialogs.contains_key(id));
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
    #[test]
    fn random_sessions_leak_nothing(ops in proptest::collection::vec(op(), 1..40)) {
        let mut h = Harness::new();
        let ips = ["192.0.2.10", "192.0.2.20", "192.0.2.30"];
        let rooms = ["team", "duo", "secret"];
        let mut callers: Vec<Caller> = (0..3)
            .map(|i| Caller::new(&format!("c{i}"), ips[i], rooms[0]))
            .collect();
        for op in ops {
            match op {
                Op::Invite(c, r) => {
                    // A fresh call each time.
                    let caller = &mut callers[c];
                    caller.call_id = format!("{}x", caller.call_id);
                    caller.room = rooms[r].to_string();
                    caller.to_tag = None;
                    let invite = caller.invite(&baresip_sdp(caller.ip, 4000, "sendrecv"));
                    h.receive(&invite, caller.flow());
                }
                Op::Ack(c) => {
                    let ack = callers[c].ack();
                    h.receive(&ack, callers[c].flow());
                }
                Op::Bye(c) if callers[c].to_tag.is_some() => {
                    let bye = callers[c].next("BYE", None);
                    h.receive(&bye, callers[c].flow());
                }
                Op::Reinvite(c, dir) if callers[c].to_tag.is_some() => {
                    let ip = callers[c].ip;
                    let invite = callers[c].invite(&baresip_sdp(ip, 4000, dir));
                    h.receive(&invite, callers[c].flow());
                }
                Op::Digits(c, digits) => {
                    let leg = h
                        .mixer
                        .legs
                        .iter()
                        .find(|(_, (_, _, d))| {
                            h.conf.dialogs.get(d).is_some_and(|d| d.key.0 == callers[c].call_id)
                        })
                        .map(|(l, _)| *l);
                    if let Some(leg) = leg {
                        for d in digits.chars() {
                            h.mixer_event(dtmf(leg, d));
                        }
                    }
                }
                Op::TimedOut(c) => {
                    let leg = h
                        .mixer
                        .legs
                        .iter()
                        .find(|(_, (_, _, d))| {
                            h.conf.dialogs.get(d).is_some_and(|d| d.key.0 == callers[c].call_id)
                        })
                        .map(|(l, (r, _, _))| (*l, *r));
                    if let Some((leg, room)) = leg {
                        h.mixer_event(MixerEvent::Room { room, event: RoomEvent::LegTimedOut(leg) });
                    }
                }
                Op::Cancel(c) => {
                    let caller = &mut callers[c];
                    let cseq = caller.cseq;
                    caller.branch = caller.branch.saturating_sub(1);
                    let cancel = caller.request("CANCEL", cseq, None);
                    caller.branch += 1;
                    h.receive(&cancel, caller.flow());
                }
                Op::Advance(ms_) => h.advance(ms(ms_)),
                _ => {}
            }
            // Callers learn our tag from a 200 to their INVITE.
            for (_, m) in h.take_wire() {
                if let SipMessage::Response(r) = m {
                    if status(&r) == 200 && cseq_method(&r) == "INVITE" {
                        let call = first(&r.headers, Name::CallId).unwrap_or_default().to_string();
                        if let Some(c) = callers.iter_mut().find(|c| c.call_id == call) {
                            c.to_tag = first(&r.headers, Name::To).and_then(tag).map(str::to_string);
                        }
                    }
                }
            }
            h.check_invariants();
        }
        let actions = h.conf.shutdown(h.now);
        h.run(actions);
        h.check_invariants();
        proptest::prop_assert!(h.mixer.legs.is_empty());
        proptest::prop_assert!(h.mixer.rooms.is_empty());
        proptest::prop_assert!(h.mixer.ports.is_empty());
        proptest::prop_assert!(h.conf.is_empty());
    }
}
