//! Two baresip phones register with digest and call each other through the proxy,
//! over UDP and over TCP: each one's recording holds the other's tone.

mod common;

use std::time::Duration;

use common::baresip::{tone_power, Ua};
use common::{admin, md5_only_config, Node};

fn call(transport: &str, base_port: u16) {
    let dir = tempfile::tempdir().expect("tempdir");
    for user in ["alice", "bob"] {
        admin(dir.path(), &["user", "add", user, "--password", "secret"]);
    }
    // baresip 1.0 gives up on any SHA-256 challenge.
    let config = md5_only_config(dir.path());
    let config = config.to_str().expect("utf-8").to_string();
    let node = Node::start_owned(dir, &["--config", &config]);
    let phones = tempfile::tempdir().expect("tempdir");
    let mut bob = Ua::new(
        phones.path(),
        "bob",
        node.sip,
        transport,
        880.0,
        "opus/48000/2",
        base_port,
    );
    let mut alice = Ua::new(
        phones.path(),
        "alice",
        node.sip,
        transport,
        440.0,
        "opus/48000/2",
        base_port + 4,
    );
    bob.start(9, &[]);
    std::thread::sleep(Duration::from_millis(1500));
    alice.start(6, &[format!("/dial sip:bob@{}", node.sip)]);
    alice.wait();
    bob.wait();
    for (who, ua, theirs, own) in [("bob", &bob, 440.0, 880.0), ("alice", &alice, 880.0, 440.0)] {
        let (samples, rate) = ua.heard();
        assert!(
            samples.len() > rate as usize,
            "{who} recorded only {} samples; log:\n{}",
            samples.len(),
            ua.log()
        );
        // Skip the first half second (jitter buffer start, codec warm-up).
        let tail = &samples[(rate as usize / 2).min(samples.len())..];
        let heard = tone_power(tail, rate, theirs);
        let echo = tone_power(tail, rate, own);
        // A 0.3-amplitude tone measures about 0.02; an absent one is noise.
        assert!(
            heard > 1e-3 && heard > 100.0 * echo,
            "{who} over {transport}: other's tone {heard:e}, own tone {echo:e}; log:\n{}",
            ua.log()
        );
    }
}

#[test]
fn two_baresip_phones_call_each_other_over_udp() {
    call("udp", 24_100);
}

#[test]
fn two_baresip_phones_call_each_other_over_tcp() {
    call("tcp", 24_200);
}
