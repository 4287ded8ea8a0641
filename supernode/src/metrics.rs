//! One registry of counters for the whole node, read by `/metrics` (admin issue) and
//! by tests. Counters are atomics, so any thread or task bumps them without a lock.

use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
    /// Sets the value: for a counter mirrored from a component's own monotonic count
    /// (the TURN core keeps its counters in plain fields).
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }
}

/// The TURN relay's counters, copied from the core's `relay::server::Stats`.
#[derive(Debug, Default)]
pub struct RelayMetrics {
    /// Allocations alive now.
    pub allocations: Gauge,
    /// Allocations ever created.
    pub allocations_created: Counter,
    /// Permissions installed or refreshed.
    pub permissions: Counter,
    /// Channel bindings made or refreshed.
    pub channels: Counter,
    /// Datagrams relayed client to peer.
    pub packets_to_peer: Counter,
    /// Payload bytes relayed client to peer.
    pub bytes_to_peer: Counter,
    /// Datagrams relayed peer to client.
    pub packets_to_client: Counter,
    /// Payload bytes relayed peer to client.
    pub bytes_to_client: Counter,
    /// Peers refused by the policy (403).
    pub denied_peers: Counter,
    /// Wrong or unknown credentials.
    pub auth_failures: Counter,
    /// 438 Stale Nonce answers.
    pub stale_nonces: Counter,
    /// 486 Allocation Quota Reached answers.
    pub quota_hits: Counter,
    /// 508 Insufficient Capacity answers.
    pub capacity_hits: Counter,
    /// Input that was neither STUN nor ChannelData.
    pub malformed: Counter,
    /// Data dropped for lack of a permission or channel.
    pub dropped_no_permission: Counter,
    /// Data dropped by the bandwidth cap.
    pub dropped_bandwidth: Counter,
    /// STUN Binding requests answered.
    pub binding_requests: Counter,
}

impl RelayMetrics {
    /// Prometheus text exposition, `supernode_relay_*`.
    pub fn render(&self, out: &mut String) {
        out.push_str(&format!(
            "# TYPE supernode_relay_allocations gauge\nsupernode_relay_allocations {}\n",
            self.allocations.get()
        ));
        for (name, v) in [
            (
                "supernode_relay_allocations_total",
                self.allocations_created.get(),
            ),
            ("supernode_relay_permissions_total", self.permissions.get()),
            (
                "supernode_relay_channel_bindings_total",
                self.channels.get(),
            ),
            (
                "supernode_relay_denied_peers_total",
                self.denied_peers.get(),
            ),
            (
                "supernode_relay_auth_failures_total",
                self.auth_failures.get(),
            ),
            (
                "supernode_relay_stale_nonces_total",
                self.stale_nonces.get(),
            ),
            ("supernode_relay_quota_hits_total", self.quota_hits.get()),
            (
                "supernode_relay_capacity_hits_total",
                self.capacity_hits.get(),
            ),
            ("supernode_relay_malformed_total", self.malformed.get()),
            (
                "supernode_relay_binding_requests_total",
                self.binding_requests.get(),
            ),
        ] {
            out.push_str(&format!("# TYPE {name} counter\n{name} {v}\n"));
        }
        for (name, to_peer, to_client) in [
            (
                "supernode_relay_packets_total",
                self.packets_to_peer.get(),
                self.packets_to_client.get(),
            ),
            (
                "supernode_relay_bytes_total",
                self.bytes_to_peer.get(),
                self.bytes_to_client.get(),
            ),
        ] {
            out.push_str(&format!(
                "# TYPE {name} counter\n{name}{{direction=\"to_peer\"}} {to_peer}\n{name}{{direction=\"to_client\"}} {to_client}\n"
            ));
        }
        out.push_str(&format!(
            "# TYPE supernode_relay_dropped_total counter\nsupernode_relay_dropped_total{{reason=\"no_permission\"}} {}\nsupernode_relay_dropped_total{{reason=\"bandwidth\"}} {}\n",
            self.dropped_no_permission.get(),
            self.dropped_bandwidth.get()
        ));
    }
}

/// A value that goes up and down (bindings, dialogs).
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }
    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// SIP methods counted by name; anything else is `other`.
pub const METHODS: [&str; 14] = [
    "REGISTER",
    "INVITE",
    "ACK",
    "BYE",
    "CANCEL",
    "OPTIONS",
    "INFO",
    "MESSAGE",
    "NOTIFY",
    "SUBSCRIBE",
    "PRACK",
    "UPDATE",
    "REFER",
    "other",
];

/// Every counter of the node.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Requests received, by method (index into [`METHODS`]).
    pub requests: [Counter; 14],
    /// Responses sent, by class 1xx..6xx (index 0..6).
    pub responses: [Counter; 6],
    /// Messages that did not parse (answered 400/513 or dropped).
    pub parse_errors: Counter,
    /// Datagrams dropped as garbage without an answer.
    pub dropped: Counter,
    /// Failed digest authentications.
    pub auth_failures: Counter,
    /// Requests dropped by the flood limiter.
    pub rate_limited: Counter,
    /// Sources currently banned by the flood limiter.
    pub banned_sources: Gauge,
    /// Live registrations.
    pub bindings: Gauge,
    /// Live dialogs (calls through the proxy and room legs).
    pub dialogs: Gauge,
    /// CRLF keepalives answered.
    pub keepalives: Counter,
    /// The TURN relay's counters.
    pub relay: RelayMetrics,
}

impl Metrics {
    /// Counts a request by its method name.
    pub fn request(&self, method: &str) {
        let i = METHODS
            .iter()
            .position(|m| *m == method)
            .unwrap_or(METHODS.len() - 1);
        self.requests[i].inc();
    }
    /// Counts a response by its status code.
    pub fn response(&self, code: u16) {
        let class = (usize::from(code / 100)).clamp(1, 6) - 1;
        self.responses[class].inc();
    }
    /// Prometheus text exposition of every counter.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# TYPE supernode_sip_requests_total counter\n");
        for (i, m) in METHODS.iter().enumerate() {
            out.push_str(&format!(
                "supernode_sip_requests_total{{method=\"{m}\"}} {}\n",
                self.requests[i].get()
            ));
        }
        out.push_str("# TYPE supernode_sip_responses_total counter\n");
        for (i, c) in self.responses.iter().enumerate() {
            out.push_str(&format!(
                "supernode_sip_responses_total{{class=\"{}xx\"}} {}\n",
                i + 1,
                c.get()
            ));
        }
        for (name, v) in [
            ("supernode_sip_parse_errors_total", self.parse_errors.get()),
            ("supernode_sip_dropped_total", self.dropped.get()),
            (
                "supernode_sip_auth_failures_total",
                self.auth_failures.get(),
            ),
            ("supernode_sip_rate_limited_total", self.rate_limited.get()),
            ("supernode_sip_keepalives_total", self.keepalives.get()),
        ] {
            out.push_str(&format!("# TYPE {name} counter\n{name} {v}\n"));
        }
        for (name, v) in [
            ("supernode_sip_banned_sources", self.banned_sources.get()),
            ("supernode_sip_bindings", self.bindings.get()),
            ("supernode_sip_dialogs", self.dialogs.get()),
        ] {
            out.push_str(&format!("# TYPE {name} gauge\n{name} {v}\n"));
        }
        self.relay.render(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_method_and_class_and_renders() {
        let m = Metrics::default();
        m.request("REGISTER");
        m.request("FOO");
        m.response(200);
        m.response(401);
        m.response(999);
        assert_eq!(m.requests[0].get(), 1);
        assert_eq!(m.requests[13].get(), 1);
        let text = m.render();
        assert!(text.contains("supernode_sip_requests_total{method=\"REGISTER\"} 1"));
        assert!(text.contains("supernode_sip_responses_total{class=\"4xx\"} 1"));
        assert!(text.contains("supernode_sip_responses_total{class=\"6xx\"} 1"));
        m.relay.packets_to_peer.set(7);
        let text = m.render();
        assert!(text.contains("supernode_relay_packets_total{direction=\"to_peer\"} 7"));
        assert!(text.contains("supernode_relay_allocations 0"));
    }
}
