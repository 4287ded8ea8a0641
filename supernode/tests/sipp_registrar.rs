//! The registrar and OPTIONS against sipp, a real SIP peer, over UDP and TCP.

mod common;

use common::{admin, md5_only_config, scenario, sipp, Node};

/// A node with user1..userN (password `secret`), challenging with MD5 only because
/// sipp 3.6 answers only MD5 and reads only the first challenge's algorithm. SHA-256
/// is tested with our own client in the registrar's unit tests.
fn node_with_users(n: usize) -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    for i in 1..=n {
        admin(
            dir.path(),
            &["user", "add", &format!("user{i}"), "--password", "secret"],
        );
    }
    let config = md5_only_config(dir.path());
    let config = config.to_str().expect("utf-8 path").to_string();
    Node::start_owned(dir, &["--config", &config])
}

#[test]
fn sipp_registers_refreshes_and_unregisters_with_digest_over_udp() {
    let node = node_with_users(20);
    let (ok, log) = sipp(
        node.sip,
        &[
            "-sf",
            &scenario("register-digest.xml"),
            "-s",
            "user",
            "-ap",
            "secret",
            "-m",
            "20",
            "-r",
            "100",
        ],
    );
    assert!(ok, "sipp failed:\n{log}");
    assert!(node.stop(), "supernode did not exit cleanly on SIGTERM");
}

#[test]
fn sipp_registers_with_digest_over_tcp() {
    let node = node_with_users(5);
    let (ok, log) = sipp(
        node.sip,
        &[
            "-t",
            "t1",
            "-sf",
            &scenario("register-digest.xml"),
            "-s",
            "user",
            "-ap",
            "secret",
            "-m",
            "5",
            "-r",
            "50",
        ],
    );
    assert!(ok, "sipp over TCP failed:\n{log}");
}

#[test]
fn a_wrong_password_and_an_unknown_user_are_challenged_alike() {
    let node = node_with_users(3);
    let (ok, log) = sipp(
        node.sip,
        &[
            "-sf",
            &scenario("register-wrong-password.xml"),
            "-s",
            "user",
            "-ap",
            "wrong",
            "-m",
            "3",
        ],
    );
    assert!(ok, "wrong password was not answered 401:\n{log}");
    let (ok, log) = sipp(
        node.sip,
        &[
            "-sf",
            &scenario("register-wrong-password.xml"),
            "-s",
            "nobody",
            "-ap",
            "secret",
            "-m",
            "3",
        ],
    );
    assert!(ok, "unknown user was not answered 401:\n{log}");
}

#[test]
fn options_to_the_server_answers_200_with_allow() {
    let node = node_with_users(0);
    let (ok, log) = sipp(node.sip, &["-sf", &scenario("options.xml"), "-m", "3"]);
    assert!(ok, "OPTIONS failed:\n{log}");
    let (ok, log) = sipp(
        node.sip,
        &["-t", "t1", "-sf", &scenario("options.xml"), "-m", "1"],
    );
    assert!(ok, "OPTIONS over TCP failed:\n{log}");
}
