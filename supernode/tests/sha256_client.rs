//! A client of our own answers the registrar's SHA-256 challenge (RFC 8760) over the
//! network, against the real binary with its default configuration (SHA-256 first):
//! the Debian 12 peers (sipp 3.6, baresip 1.0) cannot.

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use common::{admin, Node};
use supernode::sip::digest::{expected_response, ha1, Algorithm, Credentials};

fn exchange(sock: &UdpSocket, node: &Node, msg: &str) -> String {
    sock.send_to(msg.as_bytes(), node.sip).expect("send");
    let mut buf = vec![0u8; 8192];
    let n = sock.recv(&mut buf).expect("an answer within 2 s");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn param<'a>(challenge: &'a str, name: &str) -> &'a str {
    let start = challenge.find(&format!("{name}=")).expect("param") + name.len() + 1;
    let rest = &challenge[start..];
    match rest.strip_prefix('"') {
        Some(q) => &q[..q.find('"').expect("closing quote")],
        None => rest.split([',', '\r']).next().expect("value").trim(),
    }
}

#[test]
fn our_own_client_registers_with_sha256() {
    let node = Node::start(&[], |data| {
        admin(data, &["user", "add", "alice", "--password", "s3cret-pass"]);
    });
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let me = sock.local_addr().expect("addr");
    let register = |cseq: u32, auth: Option<&str>| {
        format!(
            "REGISTER sip:example.org SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-sha{cseq}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:alice@example.org>;tag=s1\r\nTo: <sip:alice@example.org>\r\n\
             Call-ID: sha256-1\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:alice@{me}>\r\nExpires: 300\r\n\
             {}Content-Length: 0\r\n\r\n",
            auth.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default()
        )
    };
    let challenge = exchange(&sock, &node, &register(1, None));
    assert!(challenge.starts_with("SIP/2.0 401"), "{challenge}");
    let lines: Vec<&str> = challenge
        .lines()
        .filter(|l| l.starts_with("WWW-Authenticate:"))
        .collect();
    assert_eq!(lines.len(), 2, "{challenge}");
    assert!(
        lines[0].contains("algorithm=SHA-256"),
        "SHA-256 is offered first: {challenge}"
    );
    let sha = lines[0];
    let creds = Credentials {
        username: "alice".into(),
        realm: param(sha, "realm").into(),
        nonce: param(sha, "nonce").into(),
        uri: "sip:example.org".into(),
        response: String::new(),
        algorithm: Algorithm::Sha256,
        qop: Some("auth".into()),
        nc: Some(1),
        cnonce: Some("0a4f113b".into()),
        opaque: Some(param(sha, "opaque").into()),
    };
    let key = ha1(Algorithm::Sha256, "alice", &creds.realm, "s3cret-pass");
    let response = expected_response(&creds, "REGISTER", &key);
    assert_eq!(response.len(), 64, "a SHA-256 response");
    let auth = format!(
        "Digest username=\"alice\", realm=\"{}\", nonce=\"{}\", uri=\"sip:example.org\", \
         response=\"{response}\", algorithm=SHA-256, qop=auth, nc=00000001, cnonce=\"0a4f113b\", opaque=\"{}\"",
        creds.realm,
        creds.nonce,
        param(sha, "opaque")
    );
    let ok = exchange(&sock, &node, &register(2, Some(&auth)));
    assert!(ok.starts_with("SIP/2.0 200"), "{ok}");
    assert!(
        ok.contains(&format!("sip:alice@{me}")) && ok.contains("expires=300"),
        "{ok}"
    );
}
