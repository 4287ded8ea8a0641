//! The command line: init, user and room management, and the domain a data directory
//! is bound to.

mod common;

use common::{supernode, Node};

fn run(args: &[&str]) -> (bool, String, String) {
    let out = supernode().args(args).output().expect("run supernode");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn init_writes_a_config_that_run_accepts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("supernode.toml");
    let cfg_s = cfg.to_str().expect("utf-8");
    let (ok, out, err) = run(&["init", "--config", cfg_s]);
    assert!(ok, "{err}");
    assert!(out.contains("wrote"));
    let text = std::fs::read_to_string(&cfg).expect("read");
    assert!(text.contains("sip = \"0.0.0.0:5060\"") && text.contains("[registrar]"));
    // A second init refuses to overwrite.
    let (ok, _, err) = run(&["init", "--config", cfg_s]);
    assert!(!ok && err.contains("--force"), "{err}");
    // The file works as the node's configuration (flags override its addresses).
    let data = dir.path().join("data");
    let node = Node::start_in(&data, &["--config", cfg_s]);
    assert!(node.sip.ip().is_loopback());
    assert!(node.stop());
}

#[test]
fn users_and_rooms_are_managed_and_share_one_namespace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_str().expect("utf-8");
    let with = |args: &[&str]| {
        let mut v: Vec<&str> = args.to_vec();
        v.extend(["--data", d, "--domain", "example.org"]);
        run(&v)
    };
    assert!(with(&["user", "add", "alice", "--password", "Zq9-unique-pass"]).0);
    assert!(with(&["room", "add", "standup", "--pin", "1234", "--max", "8"]).0);
    let (ok, _, err) = with(&["room", "add", "alice"]);
    assert!(!ok && err.contains("already a user or a room"), "{err}");
    let (ok, _, err) = with(&["user", "add", "voicemail", "--password", "x"]);
    assert!(!ok && err.contains("reserved"), "{err}");
    let (ok, _, err) = with(&["room", "add", "r2", "--pin", "12ab"]);
    assert!(!ok && err.contains("PIN"), "{err}");
    let (_, out, _) = with(&["user", "list"]);
    assert_eq!(out.trim(), "alice");
    let (_, out, _) = with(&["room", "list"]);
    assert!(out.contains("sip:standup@example.org max 8 pin"), "{out}");
    assert!(with(&["user", "del", "alice"]).0);
    let (ok, _, err) = with(&["user", "del", "alice"]);
    assert!(!ok && err.contains("no user"), "{err}");
    // The password is not stored anywhere in the data directory, only HA1 values.
    for entry in std::fs::read_dir(dir.path()).expect("data dir") {
        let bytes = std::fs::read(entry.expect("entry").path()).expect("read");
        assert!(!bytes.windows(15).any(|w| w == b"Zq9-unique-pass"));
    }
}

#[test]
fn a_data_directory_refuses_another_domain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_str().expect("utf-8");
    assert!(
        run(&[
            "user",
            "add",
            "a",
            "--password",
            "p",
            "--data",
            d,
            "--domain",
            "one.example"
        ])
        .0
    );
    let (ok, _, err) = run(&[
        "run",
        "--data",
        d,
        "--domain",
        "two.example",
        "--sip",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--turn",
        "127.0.0.1:0",
        "--p2p",
        "127.0.0.1:0",
    ]);
    assert!(!ok);
    assert!(
        err.contains("one.example") && err.contains("--domain"),
        "{err}"
    );
}

#[test]
fn auth_none_is_refused_off_loopback() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_str().expect("utf-8");
    let (ok, _, err) = run(&[
        "run",
        "--data",
        d,
        "--sip-auth",
        "none",
        "--sip",
        "0.0.0.0:0",
        "--admin",
        "127.0.0.1:0",
        "--turn",
        "127.0.0.1:0",
        "--p2p",
        "127.0.0.1:0",
    ]);
    assert!(!ok);
    assert!(
        err.contains("loopback") && err.contains("--sip 0.0.0.0:0"),
        "{err}"
    );
}

#[test]
fn registrations_survive_a_restart() {
    use std::net::UdpSocket;
    use std::time::Duration;
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::start_in(dir.path(), &["--sip-auth", "none"]);
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let me = sock.local_addr().expect("addr");
    let reg = format!(
        "REGISTER sip:example.org SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-r1\r\n\
         From: <sip:carol@example.org>;tag=1\r\nTo: <sip:carol@example.org>\r\nCall-ID: r1\r\n\
         CSeq: 1 REGISTER\r\nContact: <sip:carol@{me}>\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n"
    );
    sock.send_to(reg.as_bytes(), node.sip).expect("send");
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("200");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("SIP/2.0 200"));
    assert!(node.stop(), "clean stop");
    let node = Node::start_in(dir.path(), &["--sip-auth", "none"]);
    let query = reg
        .replace("z9hG4bK-r1", "z9hG4bK-r2")
        .replace("CSeq: 1", "CSeq: 2")
        .replace(
            &format!("Contact: <sip:carol@{me}>\r\nExpires: 600\r\n"),
            "",
        );
    sock.send_to(query.as_bytes(), node.sip).expect("send");
    let n = sock.recv(&mut buf).expect("200");
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(
        text.starts_with("SIP/2.0 200") && text.contains(&format!("sip:carol@{me}")),
        "{text}"
    );
}

#[test]
fn udp_registrations_get_nat_keepalives() {
    use std::net::UdpSocket;
    use std::time::Duration;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("k.toml");
    std::fs::write(&cfg, "[registrar]\nnat_keepalive_seconds = 1\n").expect("config");
    let node = Node::start_in(
        dir.path(),
        &[
            "--sip-auth",
            "none",
            "--config",
            cfg.to_str().expect("utf-8"),
        ],
    );
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let me = sock.local_addr().expect("addr");
    let reg = format!(
        "REGISTER sip:example.org SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-k1\r\n\
         From: <sip:dave@example.org>;tag=1\r\nTo: <sip:dave@example.org>\r\nCall-ID: k1\r\n\
         CSeq: 1 REGISTER\r\nContact: <sip:dave@{me}>\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n"
    );
    sock.send_to(reg.as_bytes(), node.sip).expect("send");
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("200");
    assert!(buf[..n].starts_with(b"SIP/2.0 200"));
    let n = sock.recv(&mut buf).expect("a keepalive within 3 s");
    assert_eq!(&buf[..n], b"\r\n\r\n");
}

#[test]
fn stun_binding_on_the_sip_port_answers_the_mapped_address() {
    use std::net::UdpSocket;
    use std::time::Duration;
    // RFC 5626 §4.4.2: outbound UAs keep their UDP flow alive with STUN Binding requests.
    let node = Node::start(&[], |_| {});
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut req = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
    req.extend_from_slice(b"txn-id-12345");
    sock.send_to(&req, node.sip).expect("send");
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("a Binding success");
    assert_eq!(&buf[0..2], &[0x01, 0x01]);
    assert_eq!(&buf[8..20], b"txn-id-12345");
    let port = u16::from_be_bytes([buf[26], buf[27]]) ^ 0x2112;
    assert_eq!(n, 32);
    assert_eq!(port, sock.local_addr().expect("addr").port());
    assert_eq!(&buf[28..32], &[127 ^ 0x21, 0x12, 0xA4, 1 ^ 0x42]);
}
