//! Behaviour tests of the transaction layer against RFC 3261 §17 / RFC 6026, driven by a fake
//! clock: every instant below is `t0` plus an offset, and timers fire only when the test calls
//! `handle_timeout`.

use super::*;
use proptest::prelude::*;
use rsip::Method;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};

const MS: Duration = Duration::from_millis(1);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn flow(transport: Transport, port: u16) -> Flow {
    Flow {
        transport,
        remote: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), port),
        connection: transport.is_reliable().then_some(u64::from(port)),
    }
}

fn udp(port: u16) -> Flow {
    flow(Transport::Udp, port)
}

fn tcp(port: u16) -> Flow {
    flow(Transport::Tcp, port)
}

/// A request as a peer would send it; `via_host` is the sent-by.
fn request_from(method: Method, branch: &str, via_host: &str, cseq: u32) -> Request {
    let name = matching::method_name(method);
    let cseq_method = if method == Method::Ack { "ACK" } else { name };
    let text = format!(
        "{name} sip:bob@example.com SIP/2.0\r\n\
         Via: SIP/2.0/UDP {via_host};branch={branch};rport\r\n\
         Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKdownstream\r\n\
         Max-Forwards: 70\r\n\
         From: Alice <sip:alice@example.com>;tag=1928301774\r\n\
         To: Bob <sip:bob@example.com>\r\n\
         Call-ID: a84b4c76e66710@pc33.example.com\r\n\
         CSeq: {cseq} {cseq_method}\r\n\
         Contact: <sip:alice@192.0.2.1>\r\n\
         Route: <sip:proxy.example.com;lr>\r\n\
         Content-Length: 0\r\n\r\n"
    );
    Request::try_from(text.as_str()).expect("test request parses")
}

fn request(method: Method, branch: &str) -> Request {
    request_from(method, branch, "192.0.2.1:5060", 1)
}

/// A response as the peer's server transaction would send it to `req`.
fn response_to(req: &Request, code: u16, to_tag: Option<&str>) -> Response {
    let mut response = response_for(req, StatusCode::from(code));
    if let Some(tag) = to_tag {
        for h in response.headers.iter_mut() {
            if let Header::To(to) = h {
                use rsip::headers::UntypedHeader;
                *to = rsip::headers::To::new(format!("{};tag={tag}", to.value()));
            }
        }
    }
    response
}

/// Parses a transmitted message back, so tests assert on what went on the wire.
fn wire(t: &Transmit) -> rsip::SipMessage {
    rsip::SipMessage::try_from(t.message.clone()).expect("transmitted bytes parse")
}

fn header_value(msg: &rsip::SipMessage, pick: fn(&Header) -> Option<String>) -> String {
    use rsip::message::HasHeaders;
    msg.headers().iter().find_map(pick).expect("header present")
}

fn via_of(msg: &rsip::SipMessage) -> String {
    use rsip::headers::UntypedHeader;
    header_value(msg, |h| match h {
        Header::Via(v) => Some(v.value().to_owned()),
        _ => None,
    })
}

fn to_of(msg: &rsip::SipMessage) -> String {
    use rsip::headers::UntypedHeader;
    header_value(msg, |h| match h {
        Header::To(v) => Some(v.value().to_owned()),
        _ => None,
    })
}

fn cseq_of(msg: &rsip::SipMessage) -> String {
    use rsip::headers::UntypedHeader;
    header_value(msg, |h| match h {
        Header::CSeq(v) => Some(v.value().to_owned()),
        _ => None,
    })
}

fn transmits(layer: &mut TransactionLayer) -> Vec<Transmit> {
    std::iter::from_fn(|| layer.poll_transmit()).collect()
}

fn events(layer: &mut TransactionLayer) -> Vec<Event> {
    std::iter::from_fn(|| layer.poll_event()).collect()
}

/// Runs every timer up to `until` as a driver would, recording when each transmit happened.
fn run_until(layer: &mut TransactionLayer, until: Instant) -> Vec<(Instant, Transmit)> {
    let mut sent = Vec::new();
    while let Some(at) = layer.poll_timeout() {
        if at > until {
            break;
        }
        layer.handle_timeout(at);
        sent.extend(transmits(layer).into_iter().map(|t| (at, t)));
    }
    sent
}

fn offsets(t0: Instant, sent: &[(Instant, Transmit)]) -> Vec<Duration> {
    sent.iter().map(|(at, _)| *at - t0).collect()
}

fn new_request_key(events: &[Event]) -> TransactionKey {
    events
        .iter()
        .find_map(|e| match e {
            Event::Request { key, .. } => Some(*key),
            _ => None,
        })
        .expect("a Request event")
}

fn count_requests(events: &[Event]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, Event::Request { .. }))
        .count()
}

fn layer() -> TransactionLayer {
    TransactionLayer::new(Config::default())
}

// ---------------------------------------------------------------- non-INVITE server

#[test]
fn udp_non_invite_server_resends_final_on_retransmission_and_tu_sees_one_request() {
    let mut l = layer();
    let t0 = Instant::now();
    let req = request(Method::Register, "z9hG4bKreg1");
    l.handle_request(req.clone(), udp(5060), t0);
    let ev = events(&mut l);
    assert_eq!(count_requests(&ev), 1);
    let key = new_request_key(&ev);
    assert!(
        transmits(&mut l).is_empty(),
        "no automatic 100 to non-INVITE (RFC 4320)"
    );

    // A retransmission before any response is absorbed silently.
    l.handle_request(req.clone(), udp(5060), t0 + ms(400));
    assert!(transmits(&mut l).is_empty());
    assert!(events(&mut l).is_empty());

    l.respond(&key, response_to(&req, 200, Some("srv")), t0 + ms(450))
        .unwrap();
    let first = transmits(&mut l);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].key, Some(key));
    assert_eq!(l.state(&key), Some(State::Completed));

    l.handle_request(req.clone(), udp(5060), t0 + ms(900));
    let again = transmits(&mut l);
    assert_eq!(again.len(), 1);
    assert_eq!(
        again[0].message, first[0].message,
        "same bytes, not re-serialized"
    );
    assert!(events(&mut l).is_empty(), "the TU sees the request once");

    // A second final response from the TU is refused (§17.2.2).
    assert!(matches!(
        l.respond(&key, response_to(&req, 500, None), t0 + ms(950)),
        Err(TransactionError::InvalidState { .. })
    ));
}

#[test]
fn udp_non_invite_server_timer_j_frees_it() {
    let mut l = layer();
    let t0 = Instant::now();
    let req = request(Method::Register, "z9hG4bKreg2");
    l.handle_request(req.clone(), udp(5060), t0);
    let key = new_request_key(&events(&mut l));
    l.respond(&key, response_to(&req, 200, None), t0).unwrap();
    assert_eq!(l.poll_timeout(), Some(t0 + ms(32_000)), "Timer J = 64·T1");
    assert_eq!(l.len(), 1);
    run_until(&mut l, t0 + ms(31_999));
    assert_eq!(l.len(), 1);
    run_until(&mut l, t0 + ms(32_000));
    assert_eq!(l.len(), 0);
    assert_eq!(events(&mut l), vec![Event::Terminated { key }]);
    assert_eq!(l.poll_timeout(), None);
    assert_eq!(l.timer_entries(), 0);
    // Now a retransmission would be a new request again.
    l.handle_request(req, udp(5060), t0 + ms(33_000));
    assert_eq!(count_requests(&events(&mut l)), 1);
}

#[test]
fn tcp_non_invite_server_timer_j_is_zero() {
    let mut l = layer();
    let t0 = Instant::now();
    let req = request(Method::Register, "z9hG4bKreg3");
    l.handle_request(req.clone(), tcp(40000), t0);
    let key = new_request_key(&events(&mut l));
    l.respond(&key, response_to(&req, 200, None), t0).unwrap();
    assert_eq!(transmits(&mut l).len(), 1);
    assert_eq!(l.len(), 0);
    assert_eq!(events(&mut l), vec![Event::Terminated { key }]);
    assert_eq!(l.poll_timeout(), None);
}

#[test]
fn non_invite_server_resends_latest_provisional() {
    let mut l = layer();
    let t0 = Instant::now();
    let req = request(Method::Options, "z9hG4bKopt");
    l.handle_request(req.clone(), udp(5060), t0);
    let key = new_request_key(&events(&mut l));
    l.respond(&key, response_to(&req, 100, None), t0 + ms(10))
        .unwrap();
    let prov = transmits(&mut l);
    assert_eq!(l.state(&key), Some(State::Proceeding));
    l.handle_request(req, udp(5060), t0 + ms(20));
    assert_eq!(transmits(&mut l)[0].message, prov[0].message);
}

// ---------------------------------------------------------------- INVITE server

#[test]
fn invite_server_sends_100_trying_immediately_by_default() {
    let mut l = layer();
    let t0 = Instant::now();
    let req = request(Method::Invite, "z9hG4bKinv1");
    l.handle_request(req, udp(5060), t0);
    let sent = transmits(&mut l);
    assert_eq!(sent.len(), 1);
    let msg = wire(&sent[0]);
    match &msg {
        rsip::SipMessage::Response(r) => assert_eq!(r.status_code.code(), 100),
        other => panic!("expected a response, got {other:?}"),
    }
    assert!(via_of(&msg).contains("branch=z9hG4bKinv1"));
    assert_eq!(cseq_of(&msg), "1 INVITE");
    assert_eq!(count_requests(&events(&mut l)), 1);
}

#[test]
fn invite_server_delayed_trying_fires_after_200ms_unless_tu_answers() {
    let config = Config {
        invite_trying: TryingPolicy::After(ms(200)),
        ..Config::default()
    };
    let t0 = Instant::now();

    let mut l = TransactionLayer::new(config);
    l.handle_request(request(Method::Invite, "z9hG4bKslow"), udp(5060), t0);
    assert!(transmits(&mut l).is_empty());
    assert_eq!(l.poll_timeout(), Some(t0 + ms(200)));
    let sent = run_until(&mut l, t0 + ms(10_000));
    assert_eq!(offsets(t0, &sent), vec![ms(200)]);

    let mut l = TransactionLayer::new(config);
    let req = request(Method::Invite, "z9hG4bKfast");
    l.handle_request(req.clone(), udp(5060), t0);
    let key = new_request_key(&events(&mut l));
    l.respond(&key, response_to(&req, 180, Some("t")), t0 + ms(50))
        .unwrap();
    assert_eq!(transmits(&mut l).len(), 1, "only the 180");
    assert_eq!(l.poll_timeout(), None, "100 timer cancelled");
    assert!(run_until(&mut l, t0 + ms(10_000)).is_empty());
}

#[test]
fn invite_server_486_retransmitted_with_timer_g_until_ack_then_timer_i() {
    let mut l = layer();
    let t0 = Instant::now();
    let req = request(Method::Invite, "z9hG4bKbusy");
    l.handle_request(req.clone(), udp(5060), t0);
    let key = new_request_key(&events(&mut l));
    transmits(&mut l);
    l.respond(&key, response_to(&req, 486, Some("b1")), t0)
        .unwrap();
    let final_bytes = transmits(&mut l).remove(0).message;
    assert_eq!(l.state(&key), Some(State::Completed));

    // Timer G: T1, 2T1, 4T1, then capped at T2 = 4 s.
    let sent = run_until(&mut l, t0 + ms(20_000));
    assert_eq!(
        offsets(t0, &sent),
        [500, 1_500, 3_500, 7_500, 11_500, 15_500, 19_500].map(ms)
    );
    assert!(sent.iter().all(|(_, t)| t.message == final_bytes));

    // The INVITE retransmitted in Completed gets the final response again.
    l.handle_request(req.clone(), udp(5060), t0 + ms(20_100));
    assert_eq!(transmits(&mut l)[0].message, final_bytes);

    let mut ack = request(Method::Ack, "z9hG4bKbusy");
    for h in ack.headers.iter_mut() {
        if let Header::To(to) = h {
            *to = rsip::headers::To::from("Bob <sip:bob@example.com>;tag=b1");
        }
    }
    l.handle_request(ack.clone(), udp(5060), t0 + ms(20_200));
    assert!(events(&mut l).is_empty(), "ACK for non-2xx is absorbed");
    assert_eq!(l.state(&key), Some(State::Confirmed));
    assert_eq!(
        l.poll_timeout(),
        Some(t0 + ms(25_200)),
        "Timer I = T4, G stopped"
    );
    l.handle_request(ack, udp(5060), t0 + ms(21_000));
    assert!(events(&mut l).is_empty());
    assert!(transmits(&mut l).is_empty());
    let sent = run_until(&mut l, t0 + ms(60_000));
    assert!(sent.is_empty(), "no retransmission after ACK");
    assert_eq!(events(&mut l), vec![Event::Terminated { key }]);
    assert_eq!(l.len(), 0);
}

#[test]
fn invite_server_lost_ack_fires_timer_h() {
    let mut l = layer();
    let t0 = Instant::now();
    let req = request(Method::Invite, "z9hG4bKnoack");
    l.handle_request(req.clone(), udp(5060), t0);
    let key = new_request_key(&events(&mut l));
    l.respond(&key, response_to(&req, 486, Some("x")), t0)
        .unwrap();
    let sent = run_until(&mut l, t0 + ms(31_999));
    assert!(!sent.is_empty());
    assert!(events(&mut l).is_empty());
    run_until(&mut l, t0 + ms(32_000));
    assert_eq!(
        events(&mut l),
        vec![Event::Timeout { key }, Event::Terminated { key }]
    );
    assert_eq!(l.len(), 0);
    assert!(run_until(&mut l, t0 + ms(100_000)).is_empty());
}

#[test]
fn invite_server_tcp_no_timer_g_and_timer_i_zero() {
    let mut l = layer();
    let t0 = Instant::now();
    let req = request(Method::Invite, "z9hG4bKtcp");
    l.handle_request(req.clone(), tcp(4000), t0);
    let key = new_request_key(&events(&mut l));
    l.respond(&key, response_to(&req, 603, Some("d")), t0)
        .unwrap();
    assert_eq!(
        l.poll_timeout(),
        Some(t0 + ms(32_000)),
        "only Timer H on TCP"
    );
    l.handle_request(request(Method::Ack, "z9hG4bKtcp"), tcp(4000), t0 + ms(5));
    assert_eq!(events(&mut l), vec![Event::Terminated { key }]);
    assert_eq!(l.len(), 0);
}

#[test]
fn invite_server_2xx_enters_accepted_absorbs_retransmissions_until_timer_l() {
    let mut l = layer();
    let t0 = Instant::now();
    let req = request(Method::Invite, "z9hG4bKok");
    l.handle_request(req.clone(), udp(5060), t0);
    let key = new_request_key(&events(&mut l));
    transmits(&mut l);
    let ok = response_to(&req, 200, Some("a1"));
    l.respond(&key, ok.clone(), t0 + ms(100)).unwrap();
    assert_eq!(transmits(&mut l).len(), 1);
    assert_eq!(l.state(&key), Some(State::Accepted));
    assert_eq!(l.poll_timeout(), Some(t0 + ms(32_100)), "Timer L = 64·T1");

    // INVITE retransmission: absorbed, nothing resent (the TU retransmits 2xx itself).
    l.handle_request(req.clone(), udp(5060), t0 + ms(600));
    assert!(transmits(&mut l).is_empty());
    assert!(events(&mut l).is_empty());
    assert!(run_until(&mut l, t0 + ms(32_000)).is_empty());

    // The TU's own 2xx retransmission goes out; a non-2xx is refused.
    l.respond(&key, ok, t0 + ms(1_000)).unwrap();
    assert_eq!(transmits(&mut l).len(), 1);
    assert!(l
        .respond(&key, response_to(&req, 486, None), t0 + ms(1_000))
        .is_err());

    // RFC 3261 ACK for 2xx has its own branch: no transaction, straight to the TU.
    l.handle_request(
        request(Method::Ack, "z9hG4bKack2xx"),
        udp(5060),
        t0 + ms(1_100),
    );
    // An ACK reusing the INVITE branch (RFC 2543 style) is passed up by Accepted.
    l.handle_request(request(Method::Ack, "z9hG4bKok"), udp(5060), t0 + ms(1_200));
    let ev = events(&mut l);
    assert!(matches!(ev[0], Event::Ack { invite: None, .. }));
    assert!(matches!(ev[1], Event::Ack { invite: Some(k), .. } if k == key));

    run_until(&mut l, t0 + ms(32_100));
    assert_eq!(events(&mut l), vec![Event::Terminated { key }]);
    assert_eq!(l.len(), 0);
}

// ---------------------------------------------------------------- non-INVITE client

#[test]
fn udp_non_invite_client_timer_e_schedule_and_timer_f_timeout() {
    let mut l = layer();
    let t0 = Instant::now();
    let req = request(Method::Register, "z9hG4bKcli1");
    let key = l.send_request(req, udp(5060), t0).unwrap();
    let first = transmits(&mut l);
    assert_eq!(first.len(), 1);
    let sent = run_until(&mut l, t0 + ms(40_000));
    // Intervals 0.5, 1, 2, 4, 4, 4 … s.
    assert_eq!(
        offsets(t0, &sent),
        [500, 1_500, 3_500, 7_500, 11_500, 15_500, 19_500, 23_500, 27_500, 31_500].map(ms)
    );
    assert!(sent.iter().all(|(_, t)| t.message == first[0].message));
    assert_eq!(
        events(&mut l),
        vec![Event::Timeout { key }, Event::Terminated { key }]
    );
    assert_eq!(l.len(), 0);
}

#[test]
fn non_invite_client_provisional_moves_to_proceeding_then_final_timer_k() {
    let mut l = layer();
    let t0 = Instant::now();
    let req = request(Method::Register, "z9hG4bKcli2");
    let key = l.send_request(req.clone(), udp(5060), t0).unwrap();
    transmits(&mut l);
    assert_eq!(offsets(t0, &run_until(&mut l, t0 + ms(600))), vec![ms(500)]);

    l.handle_response(response_to(&req, 100, None), udp(5060), t0 + ms(600));
    assert_eq!(l.state(&key), Some(State::Proceeding));
    assert!(matches!(&events(&mut l)[..], [Event::Response { key: k, .. }] if *k == key));
    // Timer E was already armed for 1.5 s; from then on it is reset to T2.
    let sent = run_until(&mut l, t0 + ms(10_000));
    assert_eq!(offsets(t0, &sent), [1_500, 5_500, 9_500].map(ms));

    let ok = response_to(&req, 200, Some("r"));
    l.handle_response(ok.clone(), udp(5060), t0 + ms(10_000));
    assert_eq!(l.state(&key), Some(State::Completed));
    assert_eq!(events(&mut l).len(), 1);
    assert_eq!(l.poll_timeout(), Some(t0 + ms(15_000)), "Timer K = T4");
    l.handle_response(ok, udp(5060), t0 + ms(11_000));
    assert!(
        events(&mut l).is_empty(),
        "retransmitted final absorbed in Completed"
    );
    assert!(run_until(&mut l, t0 + ms(15_000)).is_empty());
    assert_eq!(events(&mut l), vec![Event::Terminated { key }]);
}

#[test]
fn tcp_non_invite_client_no_retransmission_and_timer_k_zero() {
    let mut l = layer();
    let t0 = Instant::now();
    let req = request(Method::Options, "z9hG4bKcli3");
    let key = l.send_request(req.clone(), tcp(1), t0).unwrap();
    transmits(&mut l);
    assert_eq!(
        l.poll_timeout(),
        Some(t0 + ms(32_000)),
        "Timer F only, no Timer E"
    );
    l.handle_response(response_to(&req, 200, None), tcp(1), t0 + ms(5));
    let ev = events(&mut l);
    assert!(matches!(ev[0], Event::Response { .. }));
    assert_eq!(ev[1], Event::Terminated { key });
    assert_eq!(l.poll_timeout(), None);
}

// ---------------------------------------------------------------- INVITE client

#[test]
fn invite_client_timer_a_retransmits_until_provisional() {
    let mut l = layer();
    let t0 = Instant::now();
    let req = request(Method::Invite, "z9hG4bKic1");
    let key = l.send_request(req.clone(), udp(5060), t0).unwrap();
    transmits(&mut l);
    let sent = run_until(&mut l, t0 + ms(4_000));
    assert_eq!(offsets(t0, &sent), [500, 1_500, 3_500].map(ms));
    l.handle_response(response_to(&req, 180, Some("r")), udp(5060), t0 + ms(4_000));
    assert_eq!(l.state(&key), Some(State::Proceeding));
    assert!(run_until(&mut l, t0 + ms(100_000)).is_empty(), "A stopped");
    let ev = events(&mut l);
    assert_eq!(ev.len(), 1, "Timer B does not fire in Proceeding: {ev:?}");
    assert_eq!(l.len(), 1);
}

#[test]
fn invite_client_timer_b_times_out_without_response() {
    let mut l = layer();
    let t0 = Instant::now();
    let key = l
        .send_request(request(Method::Invite, "z9hG4bKic2"), udp(5060), t0)
        .unwrap();
    transmits(&mut l);
    let sent = run_until(&mut l, t0 + ms(64_000));
    // Timer A doubles without a cap.
    assert_eq!(
        offsets(t0, &sent),
        [500, 1_500, 3_500, 7_500, 15_500, 31_500].map(ms)
    );
    assert_eq!(
        events(&mut l),
        vec![Event::Timeout { key }, Event::Terminated { key }]
    );
}

#[test]
fn invite_client_acks_non_2xx_on_same_branch_and_reacks_retransmissions() {
    let mut l = layer();
    let t0 = Instant::now();
    let req = request(Method::Invite, "z9hG4bKic3");
    let key = l.send_request(req.clone(), udp(5060), t0).unwrap();
    transmits(&mut l);
    let busy = response_to(&req, 486, Some("uas-tag"));
    l.handle_response(busy.clone(), udp(5060), t0 + ms(300));
    let sent = transmits(&mut l);
    assert_eq!(sent.len(), 1);
    let ack = wire(&sent[0]);
    let rsip::SipMessage::Request(ack_req) = &ack else {
        panic!("expected ACK request");
    };
    assert_eq!(ack_req.method, Method::Ack);
    assert_eq!(ack_req.uri, req.uri);
    assert!(via_of(&ack).contains("branch=z9hG4bKic3"));
    assert!(to_of(&ack).contains("tag=uas-tag"));
    assert_eq!(cseq_of(&ack), "1 ACK");
    {
        use rsip::message::HasHeaders;
        let vias = ack
            .headers()
            .iter()
            .filter(|h| matches!(h, Header::Via(_)))
            .count();
        assert_eq!(vias, 1, "only the top Via");
        assert!(ack.headers().iter().any(|h| matches!(h, Header::Route(_))));
    }
    assert!(matches!(&events(&mut l)[..], [Event::Response { .. }]));
    assert_eq!(l.state(&key), Some(State::Completed));

    l.handle_response(busy, udp(5060), t0 + ms(800));
    let again = transmits(&mut l);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].message, sent[0].message, "ACK re-sent");
    assert!(events(&mut l).is_empty(), "retransmission not passed up");

    assert_eq!(l.poll_timeout(), Some(t0 + ms(32_300)), "Timer D = 32 s");
    assert!(run_until(&mut l, t0 + ms(32_300)).is_empty());
    assert_eq!(events(&mut l), vec![Event::Terminated { key }]);
}

#[test]
fn invite_client_2xx_enters_accepted_and_passes_every_2xx_until_timer_m() {
    let mut l = layer();
    let t0 = Instant::now();
    let req = request(Method::Invite, "z9hG4bKic4");
    let key = l.send_request(req.clone(), udp(5060), t0).unwrap();
    transmits(&mut l);
    let ok = response_to(&req, 200, Some("x"));
    l.handle_response(ok.clone(), udp(5060), t0 + ms(100));
    assert_eq!(l.state(&key), Some(State::Accepted));
    assert!(
        transmits(&mut l).is_empty(),
        "no ACK for a 2xx from the transaction"
    );
    l.handle_response(ok.clone(), udp(5060), t0 + ms(600));
    let forked = response_to(&req, 200, Some("y"));
    l.handle_response(forked, udp(5060), t0 + ms(700));
    l.handle_response(response_to(&req, 486, Some("z")), udp(5060), t0 + ms(800));
    let ev = events(&mut l);
    assert_eq!(
        ev.len(),
        3,
        "two 2xx retransmission/fork + original; 486 dropped"
    );
    assert!(ev.iter().all(|e| matches!(e, Event::Response { .. })));
    assert!(
        run_until(&mut l, t0 + ms(60_000)).is_empty(),
        "no retransmission in Accepted"
    );
    assert_eq!(events(&mut l), vec![Event::Terminated { key }]);
    // After Timer M a late 2xx is stray and still reaches the core (§18.1.2).
    l.handle_response(ok, udp(5060), t0 + ms(60_000));
    assert!(matches!(&events(&mut l)[..], [Event::StrayResponse { .. }]));
}

#[test]
fn invite_client_timer_m_starts_at_the_2xx() {
    let mut l = layer();
    let t0 = Instant::now();
    let req = request(Method::Invite, "z9hG4bKic5");
    l.send_request(req.clone(), udp(5060), t0).unwrap();
    l.handle_response(response_to(&req, 200, Some("x")), udp(5060), t0 + ms(1_000));
    assert_eq!(l.poll_timeout(), Some(t0 + ms(33_000)));
}

// ---------------------------------------------------------------- CANCEL

#[test]
fn cancel_racing_200_gives_tu_the_200_and_cancel_its_own_200() {
    let mut l = layer();
    let t0 = Instant::now();
    let req = request(Method::Invite, "z9hG4bKrace");
    let invite = l.send_request(req.clone(), udp(5060), t0).unwrap();
    transmits(&mut l);
    l.handle_response(response_to(&req, 180, Some("u")), udp(5060), t0 + ms(100));
    events(&mut l);

    let cancel = l.cancel(&invite, t0 + ms(200)).unwrap();
    assert_ne!(cancel, invite);
    let sent = transmits(&mut l);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].key, Some(cancel));
    assert_eq!(sent[0].flow, udp(5060));
    let msg = wire(&sent[0]);
    let rsip::SipMessage::Request(cancel_req) = &msg else {
        panic!("expected CANCEL");
    };
    assert_eq!(cancel_req.method, Method::Cancel);
    assert_eq!(cancel_req.uri, req.uri);
    assert!(via_of(&msg).contains("branch=z9hG4bKrace"));
    assert!(!to_of(&msg).contains("tag="), "To of the request (§9.1)");
    assert_eq!(cseq_of(&msg), "1 CANCEL");
    assert_eq!(
        l.cancel(&invite, t0 + ms(210)),
        Err(TransactionError::AlreadyCancelled)
    );

    // The 200 to the INVITE overtakes the 487.
    let ok = response_to(&req, 200, Some("u"));
    l.handle_response(ok, udp(5060), t0 + ms(250));
    let cancel_ok = response_to(cancel_req, 200, Some("u"));
    l.handle_response(cancel_ok, udp(5060), t0 + ms(260));
    let ev = events(&mut l);
    assert!(
        matches!(&ev[0], Event::Response { key, response } if *key == invite && response.status_code.code() == 200),
        "{ev:?}"
    );
    assert!(
        matches!(&ev[1], Event::Response { key, response } if *key == cancel && response.status_code.code() == 200),
        "{ev:?}"
    );
    assert_eq!(l.state(&invite), Some(State::Accepted));
    assert!(
        transmits(&mut l).is_empty(),
        "the TU ACKs the 2xx, not the layer"
    );
    // A late 487 changes nothing.
    l.handle_response(response_to(&req, 487, Some("u")), udp(5060), t0 + ms(300));
    assert!(events(&mut l).is_empty());
    assert!(transmits(&mut l).is_empty());
}

#[test]
fn cancel_before_provisional_waits_for_it() {
    let mut l = layer();
    let t0 = Instant::now();
    let req = request(Method::Invite, "z9hG4bKwait");
    let invite = l.send_request(req.clone(), udp(5060), t0).unwrap();
    transmits(&mut l);
    let cancel = l.cancel(&invite, t0 + ms(10)).unwrap();
    assert_eq!(l.state(&cancel), Some(State::Waiting));
    assert!(transmits(&mut l).is_empty(), "§9.1: no CANCEL before a 1xx");
    l.handle_response(response_to(&req, 100, None), udp(5060), t0 + ms(50));
    let sent = transmits(&mut l);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].key, Some(cancel));
    assert_eq!(l.state(&cancel), Some(State::Trying));
}

#[test]
fn waiting_cancel_is_dropped_when_invite_completes_first() {
    let mut l = layer();
    let t0 = Instant::now();
    let req = request(Method::Invite, "z9hG4bKwait2");
    let invite = l.send_request(req.clone(), udp(5060), t0).unwrap();
    let cancel = l.cancel(&invite, t0 + ms(10)).unwrap();
    transmits(&mut l);
    l.handle_response(response_to(&req, 486, Some("b")), udp(5060), t0 + ms(50));
    let sent = transmits(&mut l);
    assert_eq!(sent.len(), 1, "only the ACK");
    assert!(matches!(wire(&sent[0]), rsip::SipMessage::Request(r) if r.method == Method::Ack));
    assert_eq!(l.state(&cancel), None);
    assert!(events(&mut l).contains(&Event::Terminated { key: cancel }));
}

#[test]
fn cancelled_invite_without_final_response_is_destroyed_after_64_t1() {
    let mut l = layer();
    let t0 = Instant::now();
    let req = request(Method::Invite, "z9hG4bKgiveup");
    let invite = l.send_request(req.clone(), tcp(9), t0).unwrap();
    l.handle_response(response_to(&req, 180, Some("g")), tcp(9), t0 + ms(100));
    let cancel = l.cancel(&invite, t0 + ms(1_000)).unwrap();
    events(&mut l);
    run_until(&mut l, t0 + ms(33_000));
    let ev = events(&mut l);
    assert!(ev.contains(&Event::Timeout { key: invite }), "{ev:?}");
    assert!(ev.contains(&Event::Timeout { key: cancel }), "{ev:?}");
    assert_eq!(l.len(), 0);
}

#[test]
fn cancel_refused_after_final_response_and_for_non_invite() {
    let mut l = layer();
    let t0 = Instant::now();
    let req = request(Method::Invite, "z9hG4bKlate");
    let invite = l.send_request(req.clone(), udp(5060), t0).unwrap();
    l.handle_response(response_to(&req, 200, Some("x")), udp(5060), t0);
    assert!(matches!(
        l.cancel(&invite, t0),
        Err(TransactionError::InvalidState {
            state: State::Accepted,
            ..
        })
    ));
    let reg = l
        .send_request(request(Method::Register, "z9hG4bKr"), udp(5060), t0)
        .unwrap();
    assert_eq!(
        l.cancel(&reg, t0),
        Err(TransactionError::WrongKind("INVITE client"))
    );
}

// ---------------------------------------------------------------- forking

#[test]
fn forked_invites_only_the_486_branch_is_acked_by_the_layer() {
    let mut l = layer();
    let t0 = Instant::now();
    let a = request(Method::Invite, "z9hG4bKforkA");
    let b = request(Method::Invite, "z9hG4bKforkB");
    let ka = l.send_request(a.clone(), udp(6001), t0).unwrap();
    let kb = l.send_request(b.clone(), udp(6002), t0).unwrap();
    transmits(&mut l);
    l.handle_response(response_to(&a, 180, Some("a")), udp(6001), t0 + ms(100));
    l.handle_response(response_to(&b, 486, Some("b")), udp(6002), t0 + ms(150));
    l.handle_response(response_to(&a, 200, Some("a")), udp(6001), t0 + ms(200));
    let sent = transmits(&mut l);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].key, Some(kb));
    assert_eq!(sent[0].flow, udp(6002));
    assert!(via_of(&wire(&sent[0])).contains("z9hG4bKforkB"));
    assert_eq!(l.state(&ka), Some(State::Accepted));
    assert_eq!(l.state(&kb), Some(State::Completed));
}

// ---------------------------------------------------------------- transport errors

#[test]
fn transport_error_terminates_client_and_server_transactions() {
    let mut l = layer();
    let t0 = Instant::now();
    let ck = l
        .send_request(request(Method::Options, "z9hG4bKte"), tcp(7), t0)
        .unwrap();
    let sent = transmits(&mut l);
    l.handle_transport_error(&sent[0].key.unwrap(), t0 + ms(1));
    assert_eq!(
        events(&mut l),
        vec![
            Event::TransportError { key: ck },
            Event::Terminated { key: ck }
        ]
    );
    l.handle_request(request(Method::Invite, "z9hG4bKte2"), udp(5060), t0);
    let sk = new_request_key(&events(&mut l));
    l.handle_transport_error(&sk, t0 + ms(2));
    assert_eq!(
        events(&mut l),
        vec![
            Event::TransportError { key: sk },
            Event::Terminated { key: sk }
        ]
    );
    // Late reports for dead transactions are ignored.
    l.handle_transport_error(&sk, t0 + ms(3));
    assert!(events(&mut l).is_empty());
    assert_eq!(l.len(), 0);
    assert_eq!(l.poll_timeout(), None);
}

// ---------------------------------------------------------------- matching

#[test]
fn different_branch_is_a_different_server_transaction() {
    let mut l = layer();
    let t0 = Instant::now();
    l.handle_request(request(Method::Register, "z9hG4bK1"), udp(5060), t0);
    l.handle_request(request(Method::Register, "z9hG4bK2"), udp(5060), t0);
    assert_eq!(count_requests(&events(&mut l)), 2);
    assert_eq!(l.len(), 2);
}

#[test]
fn same_branch_from_another_sent_by_is_a_different_server_transaction() {
    let mut l = layer();
    let t0 = Instant::now();
    l.handle_request(
        request_from(Method::Register, "z9hG4bKsame", "192.0.2.1:5060", 1),
        udp(5060),
        t0,
    );
    l.handle_request(
        request_from(Method::Register, "z9hG4bKsame", "192.0.2.99:5060", 1),
        udp(5061),
        t0,
    );
    // Sent-by compares case-insensitively (hosts are case-insensitive).
    l.handle_request(
        request_from(Method::Register, "z9hG4bKsame", "EXAMPLE.com", 1),
        udp(5062),
        t0,
    );
    l.handle_request(
        request_from(Method::Register, "z9hG4bKsame", "example.COM", 1),
        udp(5062),
        t0,
    );
    assert_eq!(count_requests(&events(&mut l)), 3);
}

#[test]
fn cancel_with_invite_branch_is_its_own_transaction_and_finds_the_invite() {
    let mut l = layer();
    let t0 = Instant::now();
    l.handle_request(request(Method::Invite, "z9hG4bKcx"), udp(5060), t0);
    let invite = new_request_key(&events(&mut l));
    l.handle_request(request(Method::Cancel, "z9hG4bKcx"), udp(5060), t0 + ms(5));
    let ev = events(&mut l);
    let [Event::Cancel {
        key,
        invite: Some(target),
        ..
    }] = &ev[..]
    else {
        panic!("expected a Cancel event, got {ev:?}");
    };
    assert_ne!(*key, invite);
    assert_eq!(*target, invite);
    assert_eq!(l.len(), 2);
    // A CANCEL for an unknown INVITE still gets its own transaction (the TU answers 481).
    l.handle_request(request(Method::Cancel, "z9hG4bKnone"), udp(5060), t0);
    assert!(matches!(
        &events(&mut l)[..],
        [Event::Cancel { invite: None, .. }]
    ));
}

#[test]
fn ack_for_non_2xx_matches_the_invite_transaction() {
    let mut l = layer();
    let t0 = Instant::now();
    let req = request(Method::Invite, "z9hG4bKackm");
    l.handle_request(req.clone(), udp(5060), t0);
    let key = new_request_key(&events(&mut l));
    l.respond(&key, response_to(&req, 404, Some("n")), t0)
        .unwrap();
    l.handle_request(request(Method::Ack, "z9hG4bKackm"), udp(5060), t0 + ms(1));
    assert!(events(&mut l).is_empty());
    assert_eq!(l.state(&key), Some(State::Confirmed));
    // An ACK with another branch is not this transaction's.
    l.handle_request(request(Method::Ack, "z9hG4bKother"), udp(5060), t0 + ms(2));
    assert!(matches!(
        &events(&mut l)[..],
        [Event::Ack { invite: None, .. }]
    ));
}

#[test]
fn response_matching_uses_branch_and_cseq_method() {
    let mut l = layer();
    let t0 = Instant::now();
    let req = request(Method::Invite, "z9hG4bKrm");
    let invite = l.send_request(req.clone(), udp(5060), t0).unwrap();
    // Same branch, CSeq method CANCEL: not the INVITE's response.
    let mut wrong = response_to(&req, 200, Some("t"));
    for h in wrong.headers.iter_mut() {
        if let Header::CSeq(c) = h {
            *c = rsip::headers::CSeq::from("1 CANCEL");
        }
    }
    l.handle_response(wrong, udp(5060), t0);
    assert!(matches!(&events(&mut l)[..], [Event::StrayResponse { .. }]));
    assert_eq!(l.state(&invite), Some(State::Calling));
    let other = request(Method::Invite, "z9hG4bKelse");
    l.handle_response(response_to(&other, 180, None), udp(5060), t0);
    assert!(matches!(&events(&mut l)[..], [Event::StrayResponse { .. }]));
    assert_eq!(l.state(&invite), Some(State::Calling));
}

#[test]
fn rfc2543_requests_without_cookie_use_the_fallback_match() {
    let mut l = layer();
    let t0 = Instant::now();
    let req = request(Method::Invite, "old1");
    l.handle_request(req.clone(), udp(5060), t0);
    let key = new_request_key(&events(&mut l));
    transmits(&mut l);
    l.handle_request(req.clone(), udp(5060), t0 + ms(500));
    assert!(events(&mut l).is_empty(), "retransmission recognised");
    assert_eq!(transmits(&mut l).len(), 1, "100 resent");
    l.respond(&key, response_to(&req, 486, Some("z")), t0 + ms(600))
        .unwrap();
    l.handle_request(request(Method::Ack, "old1"), udp(5060), t0 + ms(700));
    assert_eq!(l.state(&key), Some(State::Confirmed));
    // A new CSeq is a new transaction.
    l.handle_request(
        request_from(Method::Invite, "old1", "192.0.2.1:5060", 2),
        udp(5060),
        t0 + ms(800),
    );
    assert_eq!(count_requests(&events(&mut l)), 1);
    // A request without any Via cannot be matched.
    let mut bad = request(Method::Options, "z9hG4bKbad");
    bad.headers.retain(|h| !matches!(h, Header::Via(_)));
    let before = l.len();
    l.handle_request(bad, udp(5060), t0);
    assert!(events(&mut l).is_empty());
    assert_eq!(l.len(), before);
    assert_eq!(l.dropped(), 1);
}

#[test]
fn send_request_validates_its_input() {
    let mut l = layer();
    let t0 = Instant::now();
    assert_eq!(
        l.send_request(request(Method::Ack, "z9hG4bKa"), udp(1), t0),
        Err(TransactionError::AckIsNotATransaction)
    );
    assert_eq!(
        l.send_request(request(Method::Bye, "nocookie"), udp(1), t0),
        Err(TransactionError::MissingBranch)
    );
    l.send_request(request(Method::Bye, "z9hG4bKdup"), udp(1), t0)
        .unwrap();
    assert_eq!(
        l.send_request(request(Method::Bye, "z9hG4bKdup"), udp(1), t0),
        Err(TransactionError::DuplicateTransaction)
    );
    assert_eq!(
        l.respond(
            &TransactionKey {
                index: 99,
                generation: 0
            },
            response_to(&request(Method::Bye, "x"), 200, None),
            t0
        ),
        Err(TransactionError::UnknownTransaction)
    );
}

#[test]
fn new_branch_has_cookie_and_is_unique() {
    let branches: HashSet<String> = (0..10_000).map(|_| new_branch()).collect();
    assert_eq!(branches.len(), 10_000);
    assert!(branches.iter().all(|b| b.starts_with("z9hG4bK")));
}

#[test]
fn keys_of_terminated_transactions_do_not_alias_new_ones() {
    let mut l = layer();
    let t0 = Instant::now();
    let req = request(Method::Register, "z9hG4bKalias1");
    l.handle_request(req.clone(), tcp(1), t0);
    let old = new_request_key(&events(&mut l));
    l.respond(&old, response_to(&req, 200, None), t0).unwrap();
    l.handle_request(request(Method::Register, "z9hG4bKalias2"), tcp(1), t0);
    let new = new_request_key(&events(&mut l));
    assert_eq!(old.index, new.index, "slot reused");
    assert_ne!(old, new);
    assert_eq!(l.state(&old), None);
    assert_eq!(l.state(&new), Some(State::Trying));
}

#[test]
fn cancelled_timers_do_not_surface_in_poll_timeout() {
    let mut l = layer();
    let t0 = Instant::now();
    let req = request(Method::Register, "z9hG4bKprune");
    l.send_request(req.clone(), udp(1), t0).unwrap();
    assert_eq!(l.poll_timeout(), Some(t0 + ms(500)));
    l.handle_response(response_to(&req, 200, None), udp(1), t0 + ms(100));
    // Timer E (0.5 s) is cancelled; the next deadline is Timer K at 0.1 + 5 s.
    assert_eq!(l.poll_timeout(), Some(t0 + ms(5_100)));
}

// ---------------------------------------------------------------- property test

#[derive(Debug, Clone)]
enum Op {
    ServerRequest {
        method: u8,
        branch: u8,
        reliable: bool,
    },
    Respond {
        pick: usize,
        code: u16,
    },
    SendRequest {
        invite: bool,
        reliable: bool,
    },
    ClientResponse {
        pick: usize,
        code: u16,
        cancel: bool,
    },
    Cancel {
        pick: usize,
    },
    TransportError {
        pick: usize,
    },
    Terminate {
        pick: usize,
    },
    Advance {
        ms: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let code = prop::sample::select(vec![100u16, 180, 183, 200, 202, 302, 404, 486, 487, 503]);
    prop_oneof![
        4 => (0u8..5, 0u8..6, any::<bool>())
            .prop_map(|(method, branch, reliable)| Op::ServerRequest { method, branch, reliable }),
        3 => (any::<usize>(), code.clone()).prop_map(|(pick, code)| Op::Respond { pick, code }),
        2 => (any::<bool>(), any::<bool>())
            .prop_map(|(invite, reliable)| Op::SendRequest { invite, reliable }),
        3 => (any::<usize>(), code, any::<bool>())
            .prop_map(|(pick, code, cancel)| Op::ClientResponse { pick, code, cancel }),
        1 => any::<usize>().prop_map(|pick| Op::Cancel { pick }),
        1 => any::<usize>().prop_map(|pick| Op::TransportError { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Terminate { pick }),
        3 => prop_oneof![0u64..600, 0u64..40_000].prop_map(|ms| Op::Advance { ms }),
    ]
}

/// Drains outputs, checking the event invariants as it goes.
fn drain(
    l: &mut TransactionLayer,
    server_keys: &mut Vec<TransactionKey>,
    terminated: &mut HashMap<TransactionKey, usize>,
) {
    while let Some(t) = l.poll_transmit() {
        assert!(!t.message.is_empty());
    }
    while let Some(e) = l.poll_event() {
        match e {
            Event::Request { key, .. } | Event::Cancel { key, .. } => server_keys.push(key),
            Event::Terminated { key } => *terminated.entry(key).or_default() += 1,
            Event::Response { key, .. }
            | Event::Timeout { key }
            | Event::TransportError { key } => {
                assert!(!terminated.contains_key(&key), "event for a terminated key");
            }
            Event::Ack { .. } | Event::StrayResponse { .. } => {}
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn random_interleavings_never_panic_and_everything_terminates(ops in prop::collection::vec(op(), 1..80)) {
        let mut l = layer();
        let t0 = Instant::now();
        let mut now = t0;
        let mut server_keys = Vec::new();
        let mut client: Vec<(TransactionKey, Request)> = Vec::new();
        let mut created: HashSet<TransactionKey> = HashSet::new();
        let mut terminated = HashMap::new();
        let methods = [Method::Invite, Method::Register, Method::Options, Method::Ack, Method::Cancel];

        for op in ops {
            match op {
                Op::ServerRequest { method, branch, reliable } => {
                    let f = if reliable { tcp(1) } else { udp(1) };
                    let b = if branch == 5 { "old".to_owned() } else { format!("z9hG4bK{branch}") };
                    l.handle_request(request(methods[method as usize], &b), f, now);
                }
                Op::Respond { pick, code } => {
                    if !server_keys.is_empty() {
                        let key = server_keys[pick % server_keys.len()];
                        let dummy = request(Method::Options, "z9hG4bKd");
                        let _ = l.respond(&key, response_to(&dummy, code, Some("p")), now);
                    }
                }
                Op::SendRequest { invite, reliable } => {
                    let f = if reliable { tcp(2) } else { udp(2) };
                    let m = if invite { Method::Invite } else { Method::Register };
                    let req = request(m, &new_branch());
                    let key = l.send_request(req.clone(), f, now).unwrap();
                    created.insert(key);
                    client.push((key, req));
                }
                Op::ClientResponse { pick, code, cancel } => {
                    if !client.is_empty() {
                        let (_, req) = &client[pick % client.len()];
                        let mut resp = response_to(req, code, Some("c"));
                        if cancel {
                            for h in resp.headers.iter_mut() {
                                if let Header::CSeq(c) = h {
                                    *c = rsip::headers::CSeq::from("1 CANCEL");
                                }
                            }
                        }
                        let f = l.flow(&client[pick % client.len()].0).unwrap_or(udp(2));
                        l.handle_response(resp, f, now);
                    }
                }
                Op::Cancel { pick } => {
                    if !client.is_empty() {
                        let (key, _) = &client[pick % client.len()];
                        if let Ok(ck) = l.cancel(key, now) {
                            created.insert(ck);
                        }
                    }
                }
                Op::TransportError { pick } => {
                    let all: Vec<_> = server_keys.iter().chain(client.iter().map(|(k, _)| k)).copied().collect();
                    if !all.is_empty() {
                        l.handle_transport_error(&all[pick % all.len()], now);
                    }
                }
                Op::Terminate { pick } => {
                    let all: Vec<_> = server_keys.iter().chain(client.iter().map(|(k, _)| k)).copied().collect();
                    if !all.is_empty() {
                        l.terminate(&all[pick % all.len()]);
                    }
                }
                Op::Advance { ms } => {
                    now += Duration::from_millis(ms);
                    l.handle_timeout(now);
                }
            }
            if let Some(at) = l.poll_timeout() {
                // Whatever is due has been run by the last Advance, except deadlines armed at
                // `now` by later operations (none are: every timer is in the future).
                prop_assert!(at > now, "poll_timeout {at:?} not after now");
            }
            drain(&mut l, &mut server_keys, &mut terminated);
        }

        // A conforming TU answers every server transaction and cancels pending INVITEs.
        created.extend(server_keys.iter().copied());
        for key in server_keys.clone() {
            let dummy = request(Method::Options, "z9hG4bKd");
            let _ = l.respond(&key, response_to(&dummy, 500, Some("end")), now);
        }
        for (key, _) in client.clone() {
            let _ = l.cancel(&key, now).map(|ck| created.insert(ck));
        }
        drain(&mut l, &mut server_keys, &mut terminated);
        created.extend(server_keys.iter().copied());

        let mut rounds = 0;
        while let Some(at) = l.poll_timeout() {
            prop_assert!(at >= now);
            now = at;
            l.handle_timeout(now);
            drain(&mut l, &mut server_keys, &mut terminated);
            rounds += 1;
            prop_assert!(rounds < 100_000, "timers never run out");
        }
        prop_assert_eq!(l.len(), 0);
        prop_assert!(l.is_empty());
        prop_assert_eq!(l.timer_entries(), 0);
        for key in &created {
            prop_assert_eq!(terminated.get(key).copied(), Some(1), "key {:?} terminated once", key);
        }
        prop_assert_eq!(terminated.len(), created.len());
    }
}

#[test]
fn zero_t1_cannot_spin_the_timer_loop() {
    // Guards the 1 ms floor in `backoff`: with T1 = 0 a retransmission timer re-armed at `now`
    // would fire forever inside one `handle_timeout`.
    let mut l = TransactionLayer::new(Config {
        t1: Duration::ZERO,
        t2: Duration::ZERO,
        ..Config::default()
    });
    let t0 = Instant::now();
    let req = request(Method::Options, "z9hG4bKzero");
    let key = l.send_request(req.clone(), udp(1), t0).unwrap();
    // Provisional response: Timer F would be zero, so use it before any timer runs.
    l.handle_response(response_to(&req, 100, None), udp(1), t0);
    assert_eq!(l.poll_timeout(), Some(t0), "Timer F = 64·0");
    l.handle_timeout(t0 + ms(10));
    assert_eq!(l.state(&key), None);
    assert!(l.poll_timeout().is_none());
    let _ = MS;
}

#[test]
fn per_transaction_footprint_stays_small() {
    // 640,000 live REGISTER transactions at 20,000/s: every byte here costs 0.64 MB.
    // Measured total with a stored 296-byte 200 OK: ~650 B per transaction (see mod docs).
    assert!(
        std::mem::size_of::<SlabEntry>() <= 160,
        "slab entry grew to {} bytes",
        std::mem::size_of::<SlabEntry>()
    );
    assert!(std::mem::size_of::<timers::Entry>() <= 32);
}
