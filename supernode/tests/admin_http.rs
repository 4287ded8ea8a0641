//! The web admin served by the real binary: `/healthz`, `/metrics` moving with SIP
//! traffic, the JSON API behind a token made with the CLI, and the login page.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::time::Duration;

use common::{supernode, Node};

/// One HTTP/1.1 request on a fresh connection; returns (status, body).
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the admin");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    match body {
        Some(b) => req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        )),
        None => req.push_str("\r\n"),
    }
    s.write_all(req.as_bytes()).expect("send");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn cli(data: &Path, args: &[&str]) -> String {
    let out = supernode()
        .args(args)
        .arg("--data")
        .arg(data)
        .arg("--domain")
        .arg("example.org")
        .output()
        .expect("run supernode");
    assert!(
        out.status.success(),
        "supernode {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The REGISTER counter, read with a Prometheus text-format parser: the whole
/// exposition must parse, and the counter must be typed as one.
fn register_count(metrics: &str) -> u64 {
    let lines = metrics.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    assert!(scrape.samples.len() > 5, "{} samples", scrape.samples.len());
    scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "supernode_sip_requests_total" && s.labels.get("method") == Some("REGISTER")
        })
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) => v as u64,
            ref other => panic!("REGISTER requests are a counter, not {other:?}"),
        })
        .expect("REGISTER counter")
}

#[test]
fn health_metrics_and_login_page() {
    let node = Node::start(&[], |_| {});
    let admin = node.admin.expect("the node printed its admin address");
    assert!(admin.ip().is_loopback());
    let (code, body) = http(admin, "GET", "/healthz", None, None);
    assert_eq!(code, 200, "{body}");
    // A generated password went to a private file, never to stdout.
    assert!(node.data.join("admin-password").exists());

    let (code, metrics) = http(admin, "GET", "/metrics", None, None);
    assert_eq!(code, 200);
    assert!(
        metrics.contains("supernode_sip_requests_total"),
        "{metrics}"
    );
    let before = register_count(&metrics);
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let me = sock.local_addr().expect("addr");
    let register = format!(
        "REGISTER sip:example.org SIP/2.0\r\n\
         Via: SIP/2.0/UDP {me};branch=z9hG4bK-admin-1;rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:alice@example.org>;tag=a1\r\n\
         To: <sip:alice@example.org>\r\n\
         Call-ID: admin-metrics-1\r\n\
         CSeq: 1 REGISTER\r\n\
         Contact: <sip:alice@{me}>\r\n\
         Expires: 60\r\n\
         Content-Length: 0\r\n\r\n"
    );
    sock.send_to(register.as_bytes(), node.sip).expect("send");
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = [0u8; 4096];
    let _ = sock.recv_from(&mut buf).expect("an answer to REGISTER");
    let (_, metrics) = http(admin, "GET", "/metrics", None, None);
    assert!(register_count(&metrics) > before, "{metrics}");
    assert!(metrics.contains("supernode_admin_http_requests_total"));

    let (code, page) = http(admin, "GET", "/login", None, None);
    assert_eq!(code, 200);
    assert!(page.to_ascii_lowercase().contains("password"), "{page}");
    // The dashboard sends a browser without a session to the login page.
    let (code, _) = http(admin, "GET", "/", None, None);
    assert!(code == 303 || code == 302 || code == 401, "{code}");
    assert!(node.stop());
}

#[test]
fn api_with_a_cli_token_manages_rooms() {
    let node = Node::start(&[], |data| {
        cli(
            data,
            &["room", "add", "standup", "--pin", "1234", "--max", "8"],
        );
    });
    let admin = node.admin.expect("admin address");
    let (code, _) = http(admin, "GET", "/api/v1/rooms", None, None);
    assert_eq!(code, 401);
    let (code, _) = http(admin, "GET", "/api/v1/rooms", Some("sn_bad_token"), None);
    assert_eq!(code, 401);

    let token = cli(&node.data, &["admin", "token", "create", "ci"]);
    let token = token.trim();
    assert!(token.starts_with("sn_"), "{token}");
    let (code, body) = http(admin, "GET", "/api/v1/rooms", Some(token), None);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"standup\""), "{body}");
    assert!(body.contains("sip:standup@example.org"), "{body}");

    let (code, body) = http(
        admin,
        "POST",
        "/api/v1/rooms",
        Some(token),
        Some(r#"{"name":"weekly","max_participants":10}"#),
    );
    assert_eq!(code, 201, "{body}");
    let (code, _) = http(
        admin,
        "POST",
        "/api/v1/rooms",
        Some(token),
        Some(r#"{"name":"weekly"}"#),
    );
    assert_eq!(code, 409);
    let listed = cli(&node.data, &["room", "list"]);
    assert!(listed.contains("sip:weekly@example.org max 10"), "{listed}");

    let (code, body) = http(
        admin,
        "GET",
        "/api/v1/rooms/weekly/participants",
        Some(token),
        None,
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body.trim(), "[]");
    let (code, body) = http(admin, "GET", "/api/v1/node", Some(token), None);
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("example.org") && body.contains("admin"),
        "{body}"
    );
    let (code, _) = http(admin, "DELETE", "/api/v1/rooms/weekly", Some(token), None);
    assert!(code == 204 || code == 200, "{code}");
    let (code, _) = http(admin, "DELETE", "/api/v1/rooms/weekly", Some(token), None);
    assert_eq!(code, 404);
    assert!(node.stop());
}

#[test]
fn set_password_from_stdin_and_a_public_address_needs_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path();
    cli(data, &["room", "list"]);
    // No password yet: a non-loopback admin address is refused with what to do.
    let out = supernode()
        .args(["run", "--domain", "example.org", "--sip", "127.0.0.1:0"])
        .args(["--admin", "0.0.0.0:0", "--turn", "127.0.0.1:0"])
        .arg("--data")
        .arg(data)
        .output()
        .expect("run supernode");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("supernode admin set-password"), "{err}");

    let mut child = supernode()
        .args(["admin", "set-password", "--password-stdin", "--data"])
        .arg(data)
        .args(["--domain", "example.org"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"correct horse battery\n")
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // With a password set, no password file is generated.
    let node = Node::start_in(data, &[]);
    assert!(node.admin.is_some());
    assert!(!data.join("admin-password").exists());
    assert!(node.stop());
}

/// The id of the first participant in a participants JSON array.
fn first_id(body: &str) -> Option<String> {
    let rest = body.split("\"id\":\"").nth(1)?;
    Some(rest.split('"').next()?.to_string())
}

#[test]
fn a_baresip_caller_shows_in_the_live_view_and_is_kicked() {
    let dir = tempfile::tempdir().expect("tempdir");
    cli(
        dir.path(),
        &["user", "add", "alice", "--password", "secret"],
    );
    cli(dir.path(), &["room", "add", "team"]);
    let config = common::md5_only_config(dir.path());
    let config = config.to_str().expect("utf-8").to_string();
    let node = Node::start_owned(dir, &["--config", &config, "--rtp-ports", "44100-44199"]);
    let admin = node.admin.expect("admin address");
    let token = cli(&node.data, &["admin", "token", "create", "live"]);
    let token = token.trim();

    let root = tempfile::tempdir().expect("tempdir");
    let mut alice = common::baresip::Ua::new(
        root.path(),
        "alice",
        node.sip,
        "udp",
        440.0,
        "opus/48000/2",
        15090,
    );
    alice.start(20, &[format!("/dial sip:team@{}", node.sip)]);
    let path = "/api/v1/rooms/team/participants";
    let mut id = None;
    for _ in 0..100 {
        let (code, body) = http(admin, "GET", path, Some(token), None);
        assert_eq!(code, 200, "{body}");
        if let Some(found) = first_id(&body) {
            assert!(body.contains("\"codec\":\"opus\""), "{body}");
            assert!(body.contains("alice"), "{body}");
            id = Some(found);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let id = id.unwrap_or_else(|| panic!("alice never showed in the room; log:\n{}", alice.log()));
    let (code, body) = http(
        admin,
        "GET",
        "/api/v1/users/alice/registrations",
        Some(token),
        None,
    );
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"transport\":\"udp\""), "{body}");

    let (code, body) = http(
        admin,
        "POST",
        &format!("/api/v1/rooms/team/participants/{id}/kick"),
        Some(token),
        None,
    );
    assert!(code == 204 || code == 200, "{code} {body}");
    let mut gone = false;
    for _ in 0..50 {
        let (_, body) = http(admin, "GET", path, Some(token), None);
        if first_id(&body).is_none() {
            gone = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(gone, "still listed after the kick");
    // The phone got the BYE: its call ended long before its 20 s run is over.
    let (_, metrics) = http(admin, "GET", "/metrics", None, None);
    assert!(
        metrics.contains("supernode_conference_participants 0"),
        "{metrics}"
    );
    assert!(
        alice.wait_for("terminated", Duration::from_secs(5))
            || alice.wait_for("closed", Duration::from_secs(1)),
        "{}",
        alice.log()
    );
    drop(alice);
    assert!(node.stop());
}
