//! The location service: where each address of record can be reached.
//!
//! Behind the [`Location`] trait so that the DHT overlay can replace the local table
//! without the proxy or the registrar noticing. [`LocalLocation`] is today's
//! implementation: an in-memory table whose changes are queued for the store (write
//! behind), so a burst of REGISTERs costs one database commit, not one each.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::sip::transaction::{Flow, Transport};
use crate::store::StoredBinding;

/// One registered contact of an address of record.
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    /// Canonical AOR: `user@domain`, lower-case domain.
    pub aor: String,
    /// The Contact URI as registered (without angle brackets or header params).
    pub contact: String,
    /// When it lapses.
    pub expires: Instant,
    /// Preference among the AOR's contacts (RFC 3261 q-value, 0..=1).
    pub q: f32,
    /// Call-ID of the REGISTER that set it: a refresh must come with a higher CSeq.
    pub call_id: String,
    /// CSeq number of that REGISTER.
    pub cseq: u32,
    /// The flow it arrived on: requests for the AOR go back over it, which is what
    /// reaches a phone behind NAT.
    pub flow: Flow,
    /// RFC 5626 `+sip.instance`, if the phone sent one.
    pub instance: Option<String>,
}

impl Binding {
    /// Seconds left before it lapses.
    pub fn remaining(&self, now: Instant) -> u64 {
        self.expires.saturating_duration_since(now).as_secs()
    }
}

/// Stores, refreshes, removes and looks up bindings. The registrar and the proxy use
/// nothing else of the location service.
pub trait Location {
    /// Adds a binding or replaces the one with the same AOR and contact.
    fn store(&mut self, binding: Binding);
    /// Removes one contact of an AOR; false if it was not there.
    fn remove(&mut self, aor: &str, contact: &str) -> bool;
    /// Removes every contact of an AOR.
    fn remove_all(&mut self, aor: &str);
    /// The AOR's bindings that have not lapsed at `now`, most preferred first.
    fn lookup(&self, aor: &str, now: Instant) -> Vec<Binding>;
    /// Drops lapsed bindings; returns how many.
    fn expire(&mut self, now: Instant) -> usize;
    /// Number of live bindings.
    fn len(&self) -> usize;
    /// Whether there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A change waiting to be written to the store.
#[derive(Debug, Clone, PartialEq)]
pub enum PendingWrite {
    /// Insert or update.
    Put(StoredBinding),
    /// Delete (AOR, contact).
    Remove(String, String),
}

/// The in-memory location table of this node.
#[derive(Debug, Default)]
pub struct LocalLocation {
    table: HashMap<String, Vec<Binding>>,
    count: usize,
    pending: Vec<PendingWrite>,
    /// Maps `Instant`s to wall-clock seconds for persistence.
    clock: Option<(Instant, SystemTime)>,
}

impl LocalLocation {
    /// An empty table. `now` and `wall` anchor the conversion between the monotonic
    /// expiry times and the wall-clock ones stored on disk.
    pub fn new(now: Instant, wall: SystemTime) -> Self {
        LocalLocation {
            clock: Some((now, wall)),
            ..Default::default()
        }
    }

    fn unix(&self, t: Instant) -> i64 {
        let (now, wall) = self.clock.unwrap_or((t, UNIX_EPOCH));
        let base = wall
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        if t >= now {
            base + t.duration_since(now).as_secs() as i64
        } else {
            base - now.duration_since(t).as_secs() as i64
        }
    }

    /// Converts a stored expiry back to an `Instant`, for loading at start.
    pub fn instant_of(&self, unix: i64) -> Instant {
        let (now, wall) = self.clock.unwrap_or((Instant::now(), SystemTime::now()));
        let base = wall
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        now + Duration::from_secs(unix.saturating_sub(base).max(0) as u64)
    }

    /// The distinct UDP flows of live bindings: the NAT bindings the node keeps open
    /// with keepalives so requests can still reach phones behind NAT.
    pub fn udp_flows(&self, now: Instant) -> Vec<Flow> {
        let mut flows: Vec<Flow> = self
            .table
            .values()
            .flatten()
            .filter(|b| b.flow.transport == Transport::Udp && b.expires > now)
            .map(|b| b.flow)
            .collect();
        flows.sort_by_key(|f| f.remote);
        flows.dedup_by_key(|f| f.remote);
        flows
    }

    /// Every binding in the table (lapsed ones included until they are expired).
    pub fn bindings(&self) -> impl Iterator<Item = &Binding> {
        self.table.values().flatten()
    }

    /// Takes the writes queued since the last call.
    pub fn take_pending(&mut self) -> Vec<PendingWrite> {
        std::mem::take(&mut self.pending)
    }

    /// Loads a persisted binding without queueing a write.
    pub fn restore(&mut self, binding: Binding) {
        self.insert(binding);
    }

    fn insert(&mut self, binding: Binding) {
        let list = self.table.entry(binding.aor.clone()).or_default();
        match list.iter_mut().find(|b| b.contact == binding.contact) {
            Some(existing) => *existing = binding,
            None => {
                list.push(binding);
                self.count += 1;
            }
        }
    }

    /// The persisted form of a binding.
    pub fn stored(&self, b: &Binding) -> StoredBinding {
        StoredBinding {
            aor: b.aor.clone(),
            contact: b.contact.clone(),
            expires_unix: self.unix(b.expires),
            q: b.q,
            call_id: b.call_id.clone(),
            cseq: b.cseq,
            transport: b.flow.transport.name().to_string(),
            remote: b.flow.remote.to_string(),
            instance: b.instance.clone(),
        }
    }
}

impl Location for LocalLocation {
    fn store(&mut self, binding: Binding) {
        let stored = self.stored(&binding);
        self.pending.push(PendingWrite::Put(stored));
        self.insert(binding);
    }

    fn remove(&mut self, aor: &str, contact: &str) -> bool {
        let Some(list) = self.table.get_mut(aor) else {
            return false;
        };
        let before = list.len();
        list.retain(|b| b.contact != contact);
        let removed = before != list.len();
        if list.is_empty() {
            self.table.remove(aor);
        }
        if removed {
            self.count -= 1;
            self.pending
                .push(PendingWrite::Remove(aor.to_string(), contact.to_string()));
        }
        removed
    }

    fn remove_all(&mut self, aor: &str) {
        if let Some(list) = self.table.remove(aor) {
            self.count -= list.len();
            for b in list {
                self.pending.push(PendingWrite::Remove(b.aor, b.contact));
            }
        }
    }

    fn lookup(&self, aor: &str, now: Instant) -> Vec<Binding> {
        let mut found: Vec<Binding> = self
            .table
            .get(aor)
            .map(|l| l.iter().filter(|b| b.expires > now).cloned().collect())
            .unwrap_or_default();
        found.sort_by(|a, b| b.q.total_cmp(&a.q));
        found
    }

    fn expire(&mut self, now: Instant) -> usize {
        let mut gone = 0;
        self.table.retain(|_, list| {
            let before = list.len();
            list.retain(|b| b.expires > now);
            gone += before - list.len();
            !list.is_empty()
        });
        self.count -= gone;
        // Lapsed rows are deleted from the store at the next start (`live_bindings`).
        gone
    }

    fn len(&self) -> usize {
        self.count
    }
}

impl Transport {
    /// The lower-case name used in Via and in the store.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(aor: &str, contact: &str, secs: u64, q: f32, now: Instant) -> Binding {
        Binding {
            aor: aor.into(),
            contact: contact.into(),
            expires: now + Duration::from_secs(secs),
            q,
            call_id: "c".into(),
            cseq: 1,
            flow: Flow {
                transport: Transport::Udp,
                remote: "127.0.0.1:5090".parse().unwrap(),
                connection: None,
            },
            instance: None,
        }
    }

    #[test]
    fn store_lookup_by_q_and_expire() {
        let now = Instant::now();
        let mut loc = LocalLocation::new(now, SystemTime::now());
        loc.store(binding("a@x", "sip:a@1.1.1.1", 60, 0.5, now));
        loc.store(binding("a@x", "sip:a@2.2.2.2", 10, 1.0, now));
        loc.store(binding("a@x", "sip:a@1.1.1.1", 120, 0.5, now)); // refresh, same contact
        assert_eq!(loc.len(), 2);
        let l = loc.lookup("a@x", now);
        assert_eq!(l[0].contact, "sip:a@2.2.2.2");
        assert_eq!(loc.take_pending().len(), 3);
        assert_eq!(loc.expire(now + Duration::from_secs(30)), 1);
        assert_eq!(loc.lookup("a@x", now + Duration::from_secs(30)).len(), 1);
        assert!(loc.remove("a@x", "sip:a@1.1.1.1"));
        assert!(loc.is_empty());
        assert!(!loc.remove("a@x", "sip:a@1.1.1.1"));
    }

    #[test]
    fn udp_flows_are_distinct_and_live() {
        let now = Instant::now();
        let mut loc = LocalLocation::new(now, SystemTime::now());
        loc.store(binding("a@x", "sip:a@1.1.1.1", 60, 1.0, now));
        loc.store(binding("b@x", "sip:b@1.1.1.1", 60, 1.0, now)); // same NAT flow
        let mut tcp = binding("c@x", "sip:c@3.3.3.3", 60, 1.0, now);
        tcp.flow.transport = Transport::Tcp;
        tcp.flow.remote = "127.0.0.1:6000".parse().unwrap();
        loc.store(tcp);
        assert_eq!(loc.udp_flows(now).len(), 1);
        assert!(loc.udp_flows(now + Duration::from_secs(61)).is_empty());
    }

    #[test]
    fn stored_expiry_round_trips_through_wall_clock() {
        let now = Instant::now();
        let loc = LocalLocation::new(now, SystemTime::now());
        let b = binding("a@x", "sip:a@1.1.1.1", 3600, 1.0, now);
        let s = loc.stored(&b);
        let back = loc.instant_of(s.expires_unix);
        let diff = back.max(b.expires) - back.min(b.expires);
        assert!(diff <= Duration::from_secs(1));
    }
}
