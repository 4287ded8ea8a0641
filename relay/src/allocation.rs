//! One TURN allocation and what hangs off it: permissions, channels, its rate limit.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::server::{AllocationId, AuthKey};

/// A permission lets one peer IP send to (and receive from) the relayed address.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Permission {
    pub(crate) ip: IpAddr,
    pub(crate) expires: Instant,
}

/// A channel binds a number to one peer transport address for ChannelData framing.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Channel {
    pub(crate) number: u16,
    pub(crate) peer: SocketAddr,
    pub(crate) expires: Instant,
}

/// A token bucket in bytes: refills at `rate` per second up to one second's worth,
/// so short bursts pass and sustained overuse is dropped.
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    rate: u64,
    tokens: u64,
    last: Instant,
}

impl Bucket {
    pub(crate) fn new(rate: u64, now: Instant) -> Bucket {
        Bucket {
            rate,
            tokens: rate,
            last: now,
        }
    }

    /// Takes `n` bytes' worth of tokens if there are enough.
    pub(crate) fn take(&mut self, n: usize, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last);
        if elapsed > Duration::ZERO {
            let add =
                (elapsed.as_nanos().saturating_mul(u128::from(self.rate)) / 1_000_000_000) as u64;
            if add > 0 {
                self.tokens = self.tokens.saturating_add(add).min(self.rate);
                self.last = now;
            }
        }
        let n = n as u64;
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

/// The server's state for one client 5-tuple.
#[derive(Debug)]
pub(crate) struct Allocation {
    pub(crate) id: AllocationId,
    pub(crate) username: String,
    /// The relay socket's address once the driver has opened it.
    pub(crate) relay: Option<SocketAddr>,
    pub(crate) ipv6: bool,
    pub(crate) expires: Instant,
    pub(crate) dont_fragment: bool,
    pub(crate) permissions: Vec<Permission>,
    pub(crate) channels: Vec<Channel>,
    pub(crate) bucket: Option<Bucket>,
    /// What is needed to answer the Allocate once the relay opens, and to answer a
    /// retransmission of it afterwards.
    pub(crate) allocate_tid: [u8; 12],
    pub(crate) allocate_key: AuthKey,
    pub(crate) allocate_fingerprint: bool,
    pub(crate) lifetime: u32,
    pub(crate) reserve_next: bool,
    pub(crate) reservation_token: Option<[u8; 8]>,
    /// When the timer heap next looks at this allocation.
    pub(crate) next_wake: Instant,
}

impl Allocation {
    pub(crate) fn permitted(&self, ip: IpAddr, now: Instant) -> bool {
        self.permissions
            .iter()
            .any(|p| p.ip == ip && p.expires > now)
    }

    pub(crate) fn channel_by_number(&self, number: u16, now: Instant) -> Option<&Channel> {
        self.channels
            .iter()
            .find(|c| c.number == number && c.expires > now)
    }

    pub(crate) fn channel_by_peer(&self, peer: SocketAddr, now: Instant) -> Option<&Channel> {
        self.channels
            .iter()
            .find(|c| c.peer == peer && c.expires > now)
    }

    /// Installs or refreshes a permission.
    pub(crate) fn permit(&mut self, ip: IpAddr, expires: Instant) {
        match self.permissions.iter_mut().find(|p| p.ip == ip) {
            Some(p) => p.expires = expires,
            None => self.permissions.push(Permission { ip, expires }),
        }
    }

    /// Drops expired permissions and channels; returns the next deadline.
    pub(crate) fn sweep(&mut self, now: Instant) -> Instant {
        self.permissions.retain(|p| p.expires > now);
        self.channels.retain(|c| c.expires > now);
        let mut next = self.expires;
        for p in &self.permissions {
            next = next.min(p.expires);
        }
        for c in &self.channels {
            next = next.min(c.expires);
        }
        next
    }
}
