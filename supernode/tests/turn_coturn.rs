//! The TURN service against coturn's own test clients (`turnutils_uclient` through
//! supernode to a `turnutils_peer` echo peer), and the peer policy on the wire.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::free_port;
use common::turn::turn_node;
use relay::server::LongTermKey;
use relay::stun::{attr, Class, Message, MessageWriter, Method};

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn need(cmd: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .expect("sh")
        .status
        .success();
    assert!(
        found,
        "{cmd} is not installed: run scripts/ensure-deps.sh (apt-get install coturn)"
    );
}

/// Starts `turnutils_peer`, an echo peer, on a free loopback port (bounded to 120 s).
fn echo_peer() -> (Killed, u16) {
    need("turnutils_peer");
    let port = free_port();
    let child = Command::new("timeout")
        .args(["120", "turnutils_peer", "-L", "127.0.0.1", "-p"])
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start turnutils_peer");
    // It binds at once; give it a moment before clients send.
    std::thread::sleep(Duration::from_millis(300));
    (Killed(child), port)
}

/// What `turnutils_uclient` reported at the end of a run.
#[derive(Debug)]
struct Report {
    sent: u64,
    received: u64,
    lost: u64,
}

/// Runs `turnutils_uclient` with 10 clients × 100 messages of 172 bytes through the
/// node at `turn` to the echo peer at `peer_port`, plus `flags`; bounded to 60 s.
fn uclient(turn: SocketAddr, peer_port: u16, flags: &[&str]) -> (Report, String) {
    need("turnutils_uclient");
    let out = Command::new("timeout")
        .args([
            "60",
            "turnutils_uclient",
            "-m",
            "10",
            "-n",
            "100",
            "-l",
            "172",
        ])
        .args(["-e", "127.0.0.1", "-r"])
        .arg(peer_port.to_string())
        .args(["-u", "test", "-w", "test", "-X"])
        .args(flags)
        .arg("-p")
        .arg(turn.port().to_string())
        .arg("127.0.0.1")
        .stdin(Stdio::null())
        .output()
        .expect("run turnutils_uclient");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let number_after = |key: &str| -> Option<u64> {
        let line = text.lines().rev().find(|l| l.contains(key))?;
        let rest = &line[line.find(key)? + key.len()..];
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    let report = Report {
        sent: number_after("start_mclient: tot_send_msgs=").unwrap_or(0),
        received: number_after("tot_recv_msgs=").unwrap_or(0),
        lost: number_after("Total lost packets ").unwrap_or(u64::MAX),
    };
    (report, text)
}

/// One coturn client run must relay all 1,000 messages both ways without loss.
fn relays_without_loss(flags: &[&str]) {
    let (_peer, peer_port) = echo_peer();
    let (node, turn) = turn_node(&["--allow-peer", "127.0.0.0/8"]);
    let (report, text) = uclient(turn, peer_port, flags);
    let tail: Vec<&str> = text.lines().rev().take(12).collect();
    assert!(
        report.sent == 1000 && report.received == 1000 && report.lost == 0,
        "turnutils_uclient {flags:?}: {report:?}\n{}",
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
    assert!(node.stop(), "the node did not stop cleanly");
}

#[test]
fn coturn_client_udp_channels_with_dont_fragment() {
    relays_without_loss(&["-g"]);
}

#[test]
fn coturn_client_udp_send_indications_with_dont_fragment() {
    relays_without_loss(&["-g", "-s"]);
}

#[test]
fn coturn_client_tcp_channels() {
    relays_without_loss(&["-t"]);
}

#[test]
fn coturn_client_tcp_send_indications() {
    relays_without_loss(&["-t", "-s"]);
}

/// Sends `req` and returns the response with the same transaction id (2 s bound).
fn transact(sock: &UdpSocket, req: &[u8], buf: &mut [u8]) -> usize {
    sock.send(req).expect("send");
    loop {
        let n = sock.recv(buf).expect("no TURN response within 2 s");
        if n >= 20 && buf[8..20] == req[8..20] {
            return n;
        }
    }
}

#[test]
fn loopback_peers_are_refused_without_allow_peer() {
    let (node, turn) = turn_node(&[]);
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.connect(turn).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    // The peer that must never hear from the relay.
    let target = UdpSocket::bind("127.0.0.1:0").expect("bind target");
    target
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let target_addr = target.local_addr().expect("addr");
    let mut buf = vec![0u8; 2048];

    // Allocate without credentials: 401 with REALM and NONCE.
    let mut req = Vec::new();
    let mut w = MessageWriter::new(&mut req, Method::Allocate, Class::Request, [1; 12]);
    w.add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    let n = transact(&sock, w.as_bytes(), &mut buf);
    let msg = Message::parse(&buf[..n]).expect("parse 401");
    assert_eq!(msg.error_code().expect("code").map(|(c, _)| c), Some(401));
    let nonce = msg
        .text(attr::NONCE)
        .expect("nonce")
        .expect("nonce")
        .to_string();
    let realm = msg
        .text(attr::REALM)
        .expect("realm")
        .expect("realm")
        .to_string();
    assert_eq!(realm, "example.org");
    let key = LongTermKey::from_password("test", &realm, "test");

    let authed = |method: Method, tid: u8, extra: &dyn Fn(&mut MessageWriter<'_>)| {
        let mut req = Vec::new();
        let mut w = MessageWriter::new(&mut req, method, Class::Request, [tid; 12]);
        extra(&mut w);
        w.add(attr::USERNAME, b"test");
        w.add(attr::REALM, realm.as_bytes());
        w.add(attr::NONCE, nonce.as_bytes());
        w.add_message_integrity(&key.0);
        w.add_fingerprint();
        req
    };
    let req = authed(Method::Allocate, 2, &|w| {
        w.add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    let n = transact(&sock, &req, &mut buf);
    let msg = Message::parse(&buf[..n]).expect("parse allocate");
    assert_eq!(msg.class(), Class::Success, "{:?}", msg.error_code());

    // CreatePermission toward loopback: 403 Forbidden.
    let req = authed(Method::CreatePermission, 3, &|w| {
        w.add_xor_address(attr::XOR_PEER_ADDRESS, target_addr);
    });
    let n = transact(&sock, &req, &mut buf);
    let msg = Message::parse(&buf[..n]).expect("parse permission");
    assert_eq!(msg.error_code().expect("code").map(|(c, _)| c), Some(403));

    // A Send indication toward it is dropped: nothing reaches the target.
    let mut ind = Vec::new();
    let mut w = MessageWriter::new(&mut ind, Method::Send, Class::Indication, [4; 12]);
    w.add_xor_address(attr::XOR_PEER_ADDRESS, target_addr);
    w.add(attr::DATA, b"must not arrive");
    w.add_fingerprint();
    for _ in 0..3 {
        sock.send(w.as_bytes()).expect("send");
    }
    let mut got = [0u8; 64];
    assert!(
        target.recv_from(&mut got).is_err(),
        "the relay sent to a loopback peer although no --allow-peer allowed it"
    );
    assert!(node.stop(), "the node did not stop cleanly");
}
