//! The peer address policy, table-driven.

use std::net::IpAddr;

use relay::policy::{Cidr, PeerPolicy};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

#[test]
fn default_policy_table() {
    let p = PeerPolicy {
        own: vec![ip("198.41.0.4"), ip("2001:500::1")],
        ..Default::default()
    };
    let table: &[(&str, bool)] = &[
        ("8.8.8.8", true),
        ("1.1.1.1", true),
        ("2606:4700::1111", true),
        ("127.0.0.1", false),
        ("10.0.0.1", false),
        ("172.16.5.5", false),
        ("172.32.0.1", true),
        ("192.168.1.1", false),
        ("169.254.1.1", false),
        ("100.64.0.1", false),
        ("100.128.0.1", true),
        ("0.1.2.3", false),
        ("192.0.0.8", false),
        ("192.0.2.1", false),
        ("198.18.0.1", false),
        ("198.19.255.255", false),
        ("198.51.100.1", false),
        ("203.0.113.1", false),
        ("224.0.0.1", false),
        ("239.255.255.250", false),
        ("240.0.0.1", false),
        ("255.255.255.255", false),
        ("0.0.0.0", false),
        ("198.41.0.4", false),
        ("::", false),
        ("::1", false),
        ("fc00::1", false),
        ("fd12:3456::1", false),
        ("fe80::1", false),
        ("ff02::1", false),
        ("2001:db8::1", false),
        ("2001:500::1", false),
        ("::ffff:127.0.0.1", false),
        ("::ffff:10.0.0.1", false),
        ("::127.0.0.1", false),
        ("::ffff:8.8.8.8", true),
        ("64:ff9b::10.0.0.1", false),
        ("64:ff9b::8.8.8.8", true),
        ("2002:c0a8:0101::1", false),
        ("::ffff:198.41.0.4", false),
    ];
    for &(addr, want) in table {
        assert_eq!(p.permits(ip(addr)), want, "{addr}");
    }
}

#[test]
fn allow_wins_over_every_deny() {
    let p = PeerPolicy {
        allow: vec![
            "127.0.0.0/8".parse().expect("c"),
            "10.1.0.0/16".parse().expect("c"),
            "::1".parse().expect("c"),
        ],
        deny: vec!["8.8.0.0/16".parse().expect("c")],
        own: vec![ip("127.0.0.1")],
    };
    let table: &[(&str, bool)] = &[
        ("127.0.0.1", true),
        ("127.5.5.5", true),
        ("::ffff:127.0.0.1", true),
        ("10.1.2.3", true),
        ("10.2.0.1", false),
        ("::1", true),
        ("8.8.8.8", false),
        ("9.9.9.9", true),
    ];
    for &(addr, want) in table {
        assert_eq!(p.permits(ip(addr)), want, "{addr}");
    }
}

#[test]
fn cidr_parsing() {
    let table: &[(&str, bool)] = &[
        ("10.0.0.0/8", true),
        ("10.0.0.1", true),
        ("::/0", true),
        ("fe80::/10", true),
        ("10.0.0.0/33", false),
        ("::/129", false),
        ("nonsense", false),
        ("10.0.0.0/x", false),
    ];
    for &(s, ok) in table {
        assert_eq!(s.parse::<Cidr>().is_ok(), ok, "{s}");
    }
    let all: Cidr = "0.0.0.0/0".parse().expect("c");
    assert!(all.contains(ip("1.2.3.4")));
    assert!(!all.contains(ip("::1")));
}
