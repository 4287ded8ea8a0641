//! Failed-authentication limits, per source address and per user, shared in shape by
//! the registrar and the proxy: after [`MAX_FAILURES`] failures within
//! [`FAILURE_WINDOW`], further attempts are refused outright (403) until the window
//! passes, whichever source they come from. Applies to every source, loopback included.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Failures a source or a user may have in [`FAILURE_WINDOW`].
pub const MAX_FAILURES: u32 = 20;
/// The window of [`MAX_FAILURES`].
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Source(IpAddr),
    User(String),
}

/// Counts failed authentications. Sans-IO: time comes in.
#[derive(Debug, Default)]
pub struct AuthLimiter {
    failures: HashMap<Key, (Instant, u32)>,
}

impl AuthLimiter {
    /// An empty limiter.
    pub fn new() -> Self {
        Self::default()
    }

    fn over(&mut self, key: &Key, now: Instant) -> bool {
        match self.failures.get(key) {
            Some((since, n)) if now.saturating_duration_since(*since) < FAILURE_WINDOW => {
                *n >= MAX_FAILURES
            }
            Some(_) => {
                self.failures.remove(key);
                false
            }
            None => false,
        }
    }

    /// Whether attempts from `source` or for `user` are refused right now.
    pub fn throttled(&mut self, source: IpAddr, user: &str, now: Instant) -> bool {
        self.over(&Key::Source(source), now) || self.over(&Key::User(user.to_string()), now)
    }

    /// Records one failure of `user` from `source`.
    pub fn failed(&mut self, source: IpAddr, user: &str, now: Instant) {
        if self.failures.len() > 100_000 {
            self.failures
                .retain(|_, (since, _)| now.saturating_duration_since(*since) < FAILURE_WINDOW);
        }
        for key in [Key::Source(source), Key::User(user.to_string())] {
            let e = self.failures.entry(key).or_insert((now, 0));
            if now.saturating_duration_since(e.0) >= FAILURE_WINDOW {
                *e = (now, 0);
            }
            e.1 += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_by_source_and_by_user_and_forgives_after_the_window() {
        let mut l = AuthLimiter::new();
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..MAX_FAILURES {
            assert!(!l.throttled(a, "alice", t0));
            l.failed(a, "alice", t0);
        }
        assert!(l.throttled(a, "bob", t0), "the source is throttled");
        assert!(
            l.throttled(b, "alice", t0),
            "the user is throttled from anywhere"
        );
        assert!(!l.throttled(b, "bob", t0));
        assert!(!l.throttled(a, "alice", t0 + FAILURE_WINDOW + Duration::from_secs(1)));
    }
}
