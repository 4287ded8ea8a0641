//! Conference rooms with real phones: baresip 1.0 UAs register, dial `sip:ROOM@node`,
//! and their decoded recordings show what the room's mixer sent them. Everything on
//! 127.0.0.1; every baresip is bounded by `-t`; each UA has its own SIP port (2 apart,
//! TLS takes port + 1), RTP range (derived from the port by the harness) and console.
//!
//! Tone checks (Goertzel, mean over 100 ms blocks of the recording's middle part, where
//! every participant of the test is in the room): each tone a UA must hear has at least
//! [`HEARD_FLOOR`] (a 0.3-amplitude sine, as sent, measures about 0.02) and at least
//! [`MIN_RATIO`] times the power of the UA's own tone, which the mix-minus must keep
//! out (it measures around 1e-6 and less).

mod common;

use std::time::Duration;

use common::baresip::{block_tone_power, Ua};
use common::{admin, md5_only_config, Node};

/// Least power of a tone that counts as heard.
const HEARD_FLOOR: f32 = 1e-3;
/// How much stronger each heard tone must be than the listener's own tone.
const MIN_RATIO: f32 = 10.0;
/// Most power of a tone that counts as not heard at all (the PIN lobby). The PIN test
/// keeps its tones (600, 900, 1200 Hz) away from the 425 Hz a lobby prompt would use.
const SILENT_CEILING: f32 = 1e-5;

/// A node with alice, bob and carol (password `secret`), the rooms `room add` makes
/// of `rooms`, MD5 challenges only (baresip 1.0 gives up on SHA-256), and its own RTP
/// port range.
fn node(rooms: &[&[&str]], rtp_ports: &str) -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    for user in ["alice", "bob", "carol"] {
        admin(dir.path(), &["user", "add", user, "--password", "secret"]);
    }
    for room in rooms {
        let mut args = vec!["room", "add"];
        args.extend_from_slice(room);
        admin(dir.path(), &args);
    }
    let config = md5_only_config(dir.path());
    let config = config.to_str().expect("utf-8 path").to_string();
    Node::start_owned(dir, &["--config", &config, "--rtp-ports", rtp_ports])
}

/// The middle part of a recording: from `from` to `to` of its length.
fn middle(samples: &[f32], from: f32, to: f32) -> &[f32] {
    let n = samples.len() as f32;
    &samples[(n * from) as usize..(n * to) as usize]
}

/// Asserts that `ua` heard every tone of `others` and not its own.
fn assert_heard(name: &str, ua: &Ua, own: f32, others: &[f32], from: f32, to: f32) {
    let (samples, rate) = ua.heard();
    let part = middle(&samples, from, to);
    let own_power = block_tone_power(part, rate, own);
    for &f in others {
        let p = block_tone_power(part, rate, f);
        assert!(
            p >= HEARD_FLOOR && p >= MIN_RATIO * own_power,
            "{name} ({rate} Hz): {f} Hz at {p:e}, own {own} Hz at {own_power:e}; log:\n{}",
            ua.log()
        );
    }
}

#[test]
fn three_phones_in_a_room_hear_the_others_and_not_themselves() {
    let node = node(&[&["room1"]], "42000-42199");
    let root = tempfile::tempdir().expect("tempdir");
    let dial = vec![format!("/dial sip:room1@{}", node.sip)];
    let mut alice = Ua::new(
        root.path(),
        "alice",
        node.sip,
        "udp",
        440.0,
        "opus/48000/2",
        15060,
    );
    let mut bob = Ua::new(
        root.path(),
        "bob",
        node.sip,
        "udp",
        660.0,
        "opus/48000/2",
        15062,
    );
    let mut carol = Ua::new(root.path(), "carol", node.sip, "udp", 880.0, "pcmu", 15064);
    // Staggered so the three are in the room together from about 1.5 s to 9.5 s.
    alice.start(10, &dial);
    std::thread::sleep(Duration::from_millis(500));
    bob.start(9, &dial);
    std::thread::sleep(Duration::from_millis(500));
    carol.start(8, &dial);
    for ua in [&mut alice, &mut bob, &mut carol] {
        ua.wait();
    }
    // The recordings start when each call is answered; 30 %..75 % of each lies in the
    // stretch where all three are in the room.
    assert_heard("alice", &alice, 440.0, &[660.0, 880.0], 0.3, 0.75);
    assert_heard("bob", &bob, 660.0, &[440.0, 880.0], 0.3, 0.75);
    let (_, rate) = carol.heard();
    assert_eq!(rate, 8000, "carol negotiated PCMU: {}", carol.log());
    assert_heard("carol", &carol, 880.0, &[440.0, 660.0], 0.3, 0.75);
    assert!(node.stop(), "the node did not stop cleanly");
}

#[test]
fn pin_room_admits_the_right_pin_and_hangs_up_on_three_wrong_ones() {
    let node = node(&[&["room2", "--pin", "4321"]], "42200-42399");
    let root = tempfile::tempdir().expect("tempdir");
    let dial = vec![format!("/dial sip:room2@{}", node.sip)];
    let answered = Duration::from_secs(5);
    let mut alice = Ua::new(
        root.path(),
        "alice",
        node.sip,
        "udp",
        600.0,
        "opus/48000/2",
        15070,
    )
    .with_console(15570);
    let mut bob = Ua::new(
        root.path(),
        "bob",
        node.sip,
        "udp",
        900.0,
        "opus/48000/2",
        15072,
    )
    .with_console(15572);
    let mut carol =
        Ua::new(root.path(), "carol", node.sip, "udp", 1200.0, "pcmu", 15074).with_console(15574);

    // Alice is admitted first, so the room has someone in it for bob.
    alice.start(12, &dial);
    assert!(
        alice.wait_for("Call established", answered),
        "{}",
        alice.log()
    );
    alice.command("/sndcode 4321#");
    // Carol types three wrong PINs while bob joins.
    carol.start(12, &dial);
    assert!(
        carol.wait_for("Call established", answered),
        "{}",
        carol.log()
    );
    bob.start(8, &dial);
    for pin in ["1111#", "2222#", "3333#"] {
        carol.command(&format!("/sndcode {pin}"));
        std::thread::sleep(Duration::from_millis(400));
    }
    assert!(bob.wait_for("Call established", answered), "{}", bob.log());
    bob.command("/sndcode 4321#");

    // The third wrong PIN ends carol's call with our BYE, long before her -t 12.
    assert!(
        carol.wait_for("session closed", Duration::from_secs(3)),
        "carol was not hung up on: {}",
        carol.log()
    );
    for ua in [&mut alice, &mut bob, &mut carol] {
        ua.wait();
    }
    let log = carol.log();
    let duration: u32 = log
        .split("terminated (duration: ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| panic!("carol's call did not end: {log}"));
    assert!(duration < 8, "carol's call lasted {duration} s: {log}");
    // In the lobby she heard nobody.
    let (samples, rate) = carol.heard();
    for f in [600.0, 900.0] {
        let p = block_tone_power(&samples, rate, f);
        assert!(
            p < SILENT_CEILING,
            "carol heard {f} Hz at {p:e} in the lobby"
        );
    }

    // Bob, admitted with the right PIN, hears alice, who was in the room before him
    // (bob's recording: about 1 s in the lobby, then 6.5 s in the room).
    assert_heard("bob", &bob, 900.0, &[600.0], 0.4, 0.9);
    // And alice hears bob once he is in (her recording's stretch with bob in it).
    assert_heard("alice", &alice, 600.0, &[900.0], 0.3, 0.65);
    assert!(node.stop(), "the node did not stop cleanly");
}

#[test]
fn stopping_the_node_hangs_up_its_conference_calls() {
    let node = node(&[&["room3"]], "42400-42599");
    let root = tempfile::tempdir().expect("tempdir");
    let mut alice = Ua::new(
        root.path(),
        "alice",
        node.sip,
        "udp",
        440.0,
        "opus/48000/2",
        15080,
    );
    alice.start(10, &[format!("/dial sip:room3@{}", node.sip)]);
    assert!(
        alice.wait_for("Call established", Duration::from_secs(5)),
        "{}",
        alice.log()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(node.stop(), "the node did not stop cleanly");
    // The BYE went out before the node exited.
    assert!(
        alice.wait_for("session closed", Duration::from_secs(2)),
        "alice's call was not ended by the node: {}",
        alice.log()
    );
}
