//! Starts the real `supernode` binary on loopback with ephemeral ports and a fresh
//! data directory, and runs real peers against it.

#![allow(dead_code)]

pub mod baresip;
pub mod turn;
pub mod webdriver;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The binary under test.
pub fn supernode() -> Command {
    Command::new(env!("CARGO_BIN_EXE_supernode"))
}

/// Runs a `supernode` subcommand that must succeed (`user add`, `room add`).
pub fn admin(data: &Path, args: &[&str]) {
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
        "supernode {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A configuration file for the Debian 12 peers, which cannot answer a SHA-256
/// challenge: sipp 3.6 reads the first `algorithm=` among all WWW-Authenticate values,
/// baresip 1.0 gives up on any SHA-256 challenge it sees.
pub fn md5_only_config(data: &Path) -> PathBuf {
    let path = data.join("md5-only.toml");
    std::fs::write(&path, "[registrar]\ndigest_algorithms = [\"MD5\"]\n").expect("write config");
    path
}

/// A running node; killed when dropped.
pub struct Node {
    child: Child,
    /// Its SIP address (UDP and TCP).
    pub sip: SocketAddr,
    /// Its data directory.
    pub data: PathBuf,
    /// Its admin HTTP address, from the `admin http://ADDR` line (if it printed one).
    pub admin: Option<SocketAddr>,
    /// Its TURN address (UDP and TCP), from the `turn udp ADDR` line.
    pub turn: Option<SocketAddr>,
    _dir: Option<tempfile::TempDir>,
    /// What it printed on stdout after the address lines.
    pub lines: mpsc::Receiver<String>,
}

impl Node {
    /// Starts a node for example.org with a fresh data directory prepared by `prepare`.
    pub fn start(extra: &[&str], prepare: impl FnOnce(&Path)) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().to_path_buf();
        prepare(&data);
        let mut node = Node::start_in(&data, extra);
        node._dir = Some(dir);
        node
    }

    /// Starts a node on a data directory it then owns (removed when dropped).
    pub fn start_owned(dir: tempfile::TempDir, extra: &[&str]) -> Node {
        let mut node = Node::start_in(dir.path(), extra);
        node._dir = Some(dir);
        node
    }

    /// Starts a node on an existing data directory (restart tests).
    pub fn start_in(data: &Path, extra: &[&str]) -> Node {
        let mut child = supernode()
            .args(["run", "--domain", "example.org", "--sip", "127.0.0.1:0"])
            .args([
                "--admin",
                "127.0.0.1:0",
                "--turn",
                "127.0.0.1:0",
                "--p2p",
                "127.0.0.1:0",
            ])
            .arg("--data")
            .arg(data)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start supernode");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut sip = None;
        while sip.is_none() {
            let line = rx
                .recv_timeout(Duration::from_secs(20))
                .expect("supernode printed no 'sip udp' line within 20 s");
            if let Some(a) = line.strip_prefix("sip udp ") {
                sip = Some(a.parse().expect("address"));
            }
        }
        // The admin line follows the SIP lines; any line starting `admin ` settles it.
        let mut admin = None;
        let mut turn = None;
        while let Ok(line) = rx.recv_timeout(Duration::from_secs(20)) {
            if let Some(a) = line.strip_prefix("turn udp ") {
                turn = a.parse().ok();
            }
            if let Some(a) = line.strip_prefix("admin http://") {
                admin = Some(a.trim_end_matches('/').parse().expect("admin address"));
                break;
            }
            if line.starts_with("admin ") && !line.starts_with("admin password") {
                break;
            }
        }
        Node {
            child,
            sip: sip.expect("address"),
            admin,
            turn,
            data: data.to_path_buf(),
            _dir: None,
            lines: rx,
        }
    }

    /// Stops it with SIGTERM and waits (bounded) for a clean exit.
    pub fn stop(mut self) -> bool {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        for _ in 0..100 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A UDP port free right now on 127.0.0.1.
pub fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Path of a sipp scenario shipped with the tests.
pub fn scenario(name: &str) -> String {
    format!("{}/tests/sipp/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Runs sipp against `target` (bounded by `-timeout`), returning whether every call
/// succeeded, and its error log on failure.
pub fn sipp(target: SocketAddr, args: &[&str]) -> (bool, String) {
    let which = Command::new("sh")
        .args(["-c", "command -v sipp"])
        .output()
        .expect("sh");
    assert!(
        which.status.success(),
        "sipp is not installed: run scripts/ensure-deps.sh (apt-get install sip-tester)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port().to_string();
    let out = Command::new("sipp")
        .arg(target.to_string())
        .args([
            "-i",
            "127.0.0.1",
            "-p",
            &port,
            "-nostdin",
            "-timeout",
            "30s",
            "-timeout_error",
        ])
        .args(["-trace_err", "-error_file"])
        .arg(dir.path().join("err.log"))
        .args(args)
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("run sipp");
    let errors = std::fs::read_to_string(dir.path().join("err.log")).unwrap_or_default();
    (
        out.status.success(),
        format!("{}\n{}", String::from_utf8_lossy(&out.stderr), errors),
    )
}
