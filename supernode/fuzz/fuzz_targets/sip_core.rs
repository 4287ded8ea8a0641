//! Arbitrary datagrams into the whole SIP core (intake, transactions, registrar with
//! digest, OPTIONS, routing): nothing may panic, and time may jump.
#![no_main]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use libfuzzer_sys::fuzz_target;
use supernode::config::RegistrarConfig;
use supernode::metrics::Metrics;
use supernode::sip::conference::{Conference, ConferenceConfig};
use supernode::sip::core::SipCore;
use supernode::sip::digest::{NonceConfig, Nonces};
use supernode::sip::location::LocalLocation;
use supernode::sip::proxy::{Proxy, ProxyConfig};
use supernode::sip::registrar::Registrar;
use supernode::sip::transaction::{self, Flow, TransactionLayer, Transport};
use supernode::store::Account;

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let mut accounts = HashMap::new();
    accounts.insert(
        "alice".to_string(),
        Account::with_password("alice", "example.org", "secret"),
    );
    let registrar = Registrar::new(
        RegistrarConfig::default(),
        "example.org",
        vec!["127.0.0.1".into()],
        true,
        Nonces::new(NonceConfig::default(), [1; 32], now),
        LocalLocation::new(now, SystemTime::now()),
    );
    let metrics = Arc::new(Metrics::default());
    let node = "127.0.0.1:5060".parse().expect("address");
    let proxy = Proxy::new(
        ProxyConfig::new(node),
        Nonces::new(NonceConfig::default(), [2; 32], now),
        metrics.clone(),
    );
    let conference = Conference::new(ConferenceConfig::new(node, "127.0.0.1".parse().expect("ip")));
    let mut core = SipCore::new(
        TransactionLayer::new(transaction::Config::default()),
        registrar,
        proxy,
        conference,
        metrics,
    );
    // Records: [flags][len hi][len lo][bytes...]; flags pick transport and a time step.
    let mut rest = data;
    let mut t = now;
    while rest.len() >= 3 {
        let flags = rest[0];
        let len = usize::from(u16::from_be_bytes([rest[1], rest[2]])).min(rest.len() - 3);
        let msg = &rest[3..3 + len];
        rest = &rest[3 + len..];
        t += Duration::from_millis(u64::from(flags >> 2) * 250);
        let flow = Flow {
            transport: if flags & 1 == 0 { Transport::Udp } else { Transport::Tcp },
            remote: "192.0.2.7:5060".parse().expect("address"),
            connection: (flags & 1 == 1).then_some(1),
        };
        core.handle_bytes(msg, flow, t, &accounts);
        if flags & 2 == 2 {
            core.handle_timeout(t, &accounts);
        }
        while core.poll_transmit().is_some() {}
        // Answer the mixer the way the driver would, so media paths run too.
        while core.poll_mixer_command().is_some() {}
    }
    core.handle_timeout(t + Duration::from_secs(64), &accounts);
    while core.poll_transmit().is_some() {}
});
