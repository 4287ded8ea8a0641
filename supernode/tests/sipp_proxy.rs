//! The proxy against sipp, a real SIP peer: bob registers with digest, then a sipp UAS
//! on the same port answers; alice, a sipp UAC, calls him through the node, answering
//! the proxy's 407 as a phone does. Everything on 127.0.0.1, every sipp bounded by
//! `-timeout`.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{admin, free_port, md5_only_config, scenario, sipp, Node};

/// A node with alice and bob (password `secret`), challenging with MD5 only: sipp 3.6
/// answers nothing else.
fn node() -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    for user in ["alice", "bob"] {
        admin(dir.path(), &["user", "add", user, "--password", "secret"]);
    }
    let config = md5_only_config(dir.path());
    let config = config.to_str().expect("utf-8 path").to_string();
    Node::start_owned(dir, &["--config", &config])
}

/// A sipp process on a chosen local port, so that bob's registration and bob's UAS
/// share one address (what a phone does).
struct Sipp {
    child: Child,
    dir: tempfile::TempDir,
}

impl Sipp {
    fn start(target: SocketAddr, port: u16, args: &[&str]) -> Sipp {
        let dir = tempfile::tempdir().expect("tempdir");
        let child = Command::new("sipp")
            .arg(target.to_string())
            .args(["-i", "127.0.0.1", "-p", &port.to_string(), "-nostdin"])
            .args([
                "-timeout",
                "30s",
                "-timeout_error",
                "-trace_err",
                "-error_file",
            ])
            .arg(dir.path().join("err.log"))
            .args(args)
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run sipp (apt-get install sip-tester)");
        Sipp { child, dir }
    }

    /// Waits (bounded) for sipp to exit; whether every call succeeded, and its errors.
    fn finish(mut self) -> (bool, String) {
        let deadline = Instant::now() + Duration::from_secs(40);
        let status = loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let errors = std::fs::read_to_string(self.dir.path().join("err.log")).unwrap_or_default();
        let mut stderr = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut stderr);
        }
        (
            status.is_some_and(|s| s.success()),
            format!("{stderr}\n{errors}"),
        )
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until something is bound to UDP `port` on 127.0.0.1 (the UAS is listening).
fn wait_until_bound(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while UdpSocket::bind(("127.0.0.1", port)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "sipp UAS never bound port {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Registers bob at 127.0.0.1:`port`, then starts the UAS `uas` there.
fn bob_registered_and_listening(node: &Node, port: u16, uas: &str) -> Sipp {
    let register = Sipp::start(
        node.sip,
        port,
        &[
            "-sf",
            &scenario("register-once.xml"),
            "-s",
            "bob",
            "-ap",
            "secret",
            "-m",
            "1",
        ],
    );
    let (ok, log) = register.finish();
    assert!(ok, "bob did not register:\n{log}");
    let uas = Sipp::start(
        node.sip,
        port,
        &["-sf", &scenario(uas), "-s", "bob", "-m", "1"],
    );
    wait_until_bound(port);
    uas
}

#[test]
fn alice_calls_bob_through_the_proxy_with_a_407_challenge() {
    let node = node();
    let bob = bob_registered_and_listening(&node, free_port(), "uas-answer.xml");
    let (ok, log) = sipp(
        node.sip,
        &[
            "-sf",
            &scenario("invite-407.xml"),
            "-s",
            "bob",
            "-au",
            "alice",
            "-ap",
            "secret",
            "-m",
            "1",
        ],
    );
    assert!(ok, "alice's call failed:\n{log}");
    let (ok, log) = bob.finish();
    assert!(ok, "bob's UAS failed:\n{log}");
    assert!(node.stop(), "supernode did not exit cleanly on SIGTERM");
}

#[test]
fn alice_cancels_before_bob_answers() {
    let node = node();
    let bob = bob_registered_and_listening(&node, free_port(), "uas-ring-cancel.xml");
    let (ok, log) = sipp(
        node.sip,
        &[
            "-sf",
            &scenario("invite-407-cancel.xml"),
            "-s",
            "bob",
            "-au",
            "alice",
            "-ap",
            "secret",
            "-m",
            "1",
        ],
    );
    assert!(ok, "alice's cancelled call failed:\n{log}");
    let (ok, log) = bob.finish();
    assert!(ok, "bob's UAS failed:\n{log}");
}
