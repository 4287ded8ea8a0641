//! Bad input over UDP and TCP to the real binary: each gets its 4xx/5xx or a silent
//! drop, never a crash, and the node keeps serving.

mod common;

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::time::Duration;

use common::Node;

fn headers(method: &str, cseq: &str, extra: &str) -> String {
    format!(
        "{method} sip:127.0.0.1 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-bad-{cseq}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:probe@example.org>;tag=1\r\n\
         To: <sip:127.0.0.1>\r\n\
         Call-ID: bad-{cseq}@127.0.0.1\r\n\
         CSeq: {cseq} {method}\r\n\
         {extra}"
    )
}

/// Sends one datagram and returns the status code of the answer, or None after 1 s.
fn ask(sock: &UdpSocket, node: &Node, msg: &[u8]) -> Option<u16> {
    sock.send_to(msg, node.sip).expect("send");
    let mut buf = vec![0u8; 70_000];
    match sock.recv_from(&mut buf) {
        Ok((n, _)) => {
            let text = String::from_utf8_lossy(&buf[..n]);
            text.split_whitespace().nth(1).and_then(|c| c.parse().ok())
        }
        Err(_) => None,
    }
}

fn options_still_answered(sock: &UdpSocket, node: &Node, n: u32) {
    let msg = headers(
        "OPTIONS",
        &format!("{}", 900 + n),
        "Content-Length: 0\r\n\r\n",
    );
    assert_eq!(
        ask(sock, node, msg.as_bytes()),
        Some(200),
        "the node stopped answering"
    );
}

#[test]
fn bad_datagrams_get_clear_errors_or_silence_and_the_node_keeps_serving() {
    let node = Node::start(&[], |_| {});
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_millis(1000)))
        .expect("timeout");
    let cases: Vec<(&str, Vec<u8>, Option<u16>)> = vec![
        (
            "body shorter than Content-Length",
            headers("OPTIONS", "1", "Content-Length: 500\r\n\r\nshort").into_bytes(),
            Some(400),
        ),
        (
            "negative Content-Length",
            headers("OPTIONS", "2", "Content-Length: -5\r\n\r\n").into_bytes(),
            Some(400),
        ),
        (
            "non-numeric Content-Length",
            headers("OPTIONS", "3", "Content-Length: ten\r\n\r\n").into_bytes(),
            Some(400),
        ),
        (
            "CSeq beyond 2^31",
            headers("OPTIONS", "4294967296", "Content-Length: 0\r\n\r\n").into_bytes(),
            Some(400),
        ),
        (
            "a 60 kB header",
            headers(
                "OPTIONS",
                "5",
                &format!("X-Junk: {}\r\nContent-Length: 0\r\n\r\n", "a".repeat(60_000)),
            )
            .into_bytes(),
            Some(513),
        ),
        (
            "an unknown method addressed to the node",
            headers("FROBNICATE", "6", "Content-Length: 0\r\n\r\n").into_bytes(),
            Some(501),
        ),
        (
            "missing Via (nowhere to answer)",
            b"OPTIONS sip:127.0.0.1 SIP/2.0\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n".to_vec(),
            None,
        ),
        ("garbage bytes", vec![0xff, 0x00, 0x13, 0x37, 0x42, 0x99, 0x01], None),
        (
            "a truncated request line",
            b"OPTIONS sip:127.0".to_vec(),
            None,
        ),
        (
            "a request cut inside its CSeq line",
            headers("OPTIONS", "7", "")
                .trim_end_matches("OPTIONS\r\n")
                .to_string()
                .into_bytes(),
            Some(400),
        ),
    ];
    for (i, (what, msg, want)) in cases.into_iter().enumerate() {
        let got = ask(&sock, &node, &msg);
        assert_eq!(got, want, "{what}");
        options_still_answered(&sock, &node, i as u32);
    }
}

#[test]
fn a_stream_with_lost_framing_is_closed_and_others_are_served() {
    let node = Node::start(&[], |_| {});
    let mut bad = TcpStream::connect(node.sip).expect("connect");
    bad.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    bad.write_all(b"\x00\x01\x02 this is not SIP\r\n\r\n")
        .expect("write");
    let mut buf = [0u8; 64];
    // The node closes a stream it cannot frame: read returns 0 (or an error).
    assert!(matches!(bad.read(&mut buf), Ok(0) | Err(_)));
    let mut good = TcpStream::connect(node.sip).expect("connect");
    good.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let msg =
        headers("OPTIONS", "1", "Content-Length: 0\r\n\r\n").replace("SIP/2.0/UDP", "SIP/2.0/TCP");
    good.write_all(msg.as_bytes()).expect("write");
    let mut resp = vec![0u8; 4096];
    let n = good.read(&mut resp).expect("read");
    assert!(
        String::from_utf8_lossy(&resp[..n]).starts_with("SIP/2.0 200"),
        "{}",
        String::from_utf8_lossy(&resp[..n])
    );
}

#[test]
fn a_flooding_source_is_dropped_and_banned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("flood.toml");
    std::fs::write(
        &config,
        "[flood]\nrequests_per_second = 5\nban_seconds = 60\nexempt = []\n",
    )
    .expect("config");
    let config = config.to_str().expect("utf-8").to_string();
    let node = Node::start_owned(dir, &["--config", &config]);
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let mut answered = 0;
    for i in 0..40 {
        let msg = headers(
            "OPTIONS",
            &format!("{}", i + 1),
            "Content-Length: 0\r\n\r\n",
        );
        if ask(&sock, &node, msg.as_bytes()) == Some(200) {
            answered += 1;
        }
    }
    // 5/s averaged over 2 s: the first 10 pass, then the source is banned.
    assert_eq!(answered, 10, "answered {answered} of 40");
}
