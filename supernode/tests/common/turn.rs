//! A node serving TURN for the tests: user `test` / `test` in realm example.org.

use super::{admin, Node};
use std::net::SocketAddr;

/// Starts a node with the TURN user `test` (password `test`), a per-user allocation
/// quota high enough for `turnutils_uclient -m 10` (two allocations per client with
/// RTCP), and `extra` flags; returns it with its TURN address.
pub fn turn_node(extra: &[&str]) -> (Node, SocketAddr) {
    let dir = tempfile::tempdir().expect("tempdir");
    admin(dir.path(), &["user", "add", "test", "--password", "test"]);
    let cfg = dir.path().join("turn.toml");
    std::fs::write(&cfg, "[relay]\nmax_allocations_per_user = 100\n").expect("write config");
    let cfg = cfg.to_string_lossy().into_owned();
    let mut args = vec!["--config", cfg.as_str()];
    args.extend_from_slice(extra);
    let node = Node::start_owned(dir, &args);
    let turn = node
        .turn
        .expect("supernode printed no 'turn udp ADDR' line");
    (node, turn)
}
