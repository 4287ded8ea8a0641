//! The web admin in headless Chromium (Debian's `chromium` through `chromedriver`):
//! log in with the generated password, create a room, see it listed, watch a baresip
//! caller appear in the live view without a reload and its talking indicator light,
//! kick it (the phone gets BYE), delete the room. Screenshots of every step are kept
//! as artefacts in a folder whose path is printed.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::baresip::Ua;
use common::webdriver::Browser;
use common::{admin, md5_only_config, Node};

/// Every wait in this test.
const WAIT: Duration = Duration::from_secs(10);

/// A folder for the screenshots that outlives the test.
fn artefacts() -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "supernode-admin-browser-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("artefact dir");
    println!("artefacts {}", dir.display());
    dir
}

/// The live view's row of the (only) participant, if any: the `<tr id="p-…">` element.
fn participant_row(source: &str) -> Option<&str> {
    let start = source.find("<tr id=\"p-")?;
    let rest = &source[start..];
    Some(&rest[..rest.find("</tr>").unwrap_or(rest.len())])
}

#[test]
fn log_in_create_a_room_watch_a_caller_kick_it_and_delete_the_room() {
    let began = Instant::now();
    let shots = artefacts();
    // baresip 1.0 needs MD5 digest, set by a config file inside the data directory.
    let dir = tempfile::tempdir().expect("tempdir");
    admin(
        dir.path(),
        &["user", "add", "alice", "--password", "secret"],
    );
    let config = md5_only_config(dir.path());
    let config = config.to_str().expect("utf-8").to_string();
    let node = Node::start_owned(dir, &["--config", &config, "--rtp-ports", "44400-44499"]);
    let addr = node.admin.expect("the node printed its admin address");
    let base = format!("http://{addr}");

    // The first start on loopback generated a password into this file and printed its
    // path (`admin password written to PATH`, before the `admin http://` line).
    let pw_file = node.data.join(web_admin::PASSWORD_FILE);
    let password = std::fs::read_to_string(&pw_file)
        .unwrap_or_else(|e| panic!("read {}: {e}", pw_file.display()));
    let password = password.trim();
    assert!(!password.is_empty());

    let browser = Browser::start(&shots.join("chromedriver.log"));

    // Log in.
    browser.goto(&format!("{base}/login"));
    browser.screenshot(&shots, "01-login");
    let field = browser.find("#password").expect("password field");
    browser.send_keys(&field, password).expect("type password");
    browser.click_css("form[action=\"/login\"] button[type=submit]", WAIT);
    assert!(
        browser.wait_source(WAIT, |s| s.contains("<h1>Node ") && s.contains("Log out")),
        "no dashboard after logging in: {} {}",
        browser.url(),
        browser.source()
    );
    browser.screenshot(&shots, "02-dashboard");

    // Create the room through the form; it redirects to the room's live view.
    browser.goto(&format!("{base}/rooms"));
    let name = browser.find("#name").expect("room name field");
    browser.send_keys(&name, "demo").expect("type room name");
    browser.click_css("form[action=\"/rooms\"] button[type=submit]", WAIT);
    assert!(
        browser.wait_source(WAIT, |s| s.contains("<h1>Room demo</h1>")),
        "no room page after creating it: {} {}",
        browser.url(),
        browser.source()
    );
    // Listed, with its SIP URI.
    browser.goto(&format!("{base}/rooms"));
    let list = browser.source();
    assert!(list.contains("href=\"/rooms/demo\""), "{list}");
    assert!(list.contains("sip:demo@example.org"), "{list}");
    browser.screenshot(&shots, "03-room-listed");

    // Open the live view before anyone calls: the caller must appear without a reload.
    browser.goto(&format!("{base}/rooms/demo"));
    assert!(participant_row(&browser.source()).is_none());
    browser.screenshot(&shots, "04-live-empty");

    let phones = tempfile::tempdir().expect("tempdir");
    let mut alice = Ua::new(
        phones.path(),
        "alice",
        node.sip,
        "udp",
        440.0,
        "opus/48000/2",
        15100,
    );
    alice.start(30, &[format!("/dial sip:demo@{}", node.sip)]);
    assert!(
        browser.wait_source(WAIT, |s| participant_row(s)
            .is_some_and(|r| r.contains("alice"))),
        "the caller never appeared in the live view; page:\n{}\nbaresip:\n{}",
        browser.source(),
        alice.log()
    );
    let row = participant_row(&browser.source())
        .unwrap_or_default()
        .to_string();
    assert!(row.contains("opus"), "{row}");
    browser.screenshot(&shots, "05-live-joined");
    // Its tone makes the mixer report it talking.
    assert!(
        browser.wait_source(WAIT, |s| participant_row(s)
            .is_some_and(|r| r.contains("<span class=\"talking\">"))),
        "the talking indicator never lit; page:\n{}",
        browser.source()
    );
    browser.screenshot(&shots, "06-live-talking");

    // Kick: the node sends BYE, the phone's call ends, the row goes.
    browser.click_css("tr[id^=\"p-\"] button.kick", WAIT);
    assert!(
        alice.wait_for("terminated", WAIT) || alice.wait_for("closed", Duration::from_secs(1)),
        "the phone's call did not end after the kick:\n{}",
        alice.log()
    );
    assert!(
        browser.wait_source(WAIT, |s| s.contains("<h1>Room demo</h1>")
            && participant_row(s).is_none()),
        "still listed after the kick: {}",
        browser.source()
    );
    browser.screenshot(&shots, "07-kicked");
    drop(alice);

    // Delete the room from its page; back on the list, it is gone.
    browser.click_css("button.danger", WAIT);
    assert!(
        browser.wait_source(WAIT, |s| s.contains("<h1>Rooms</h1>")
            && !s.contains("href=\"/rooms/demo\"")),
        "the room is still listed after deleting it: {} {}",
        browser.url(),
        browser.source()
    );
    browser.screenshot(&shots, "08-room-deleted");

    drop(browser);
    assert!(node.stop());
    assert!(
        began.elapsed() < Duration::from_secs(60),
        "took {:?}",
        began.elapsed()
    );
}
