//! Flood protection in the manner of Kamailio's pike module: a per-source request rate
//! limit; a source over it is dropped and banned for a while, without an answer (an
//! answer would amplify the flood).
//!
//! The default (1,000 messages per second per source address, loopback exempt) stays
//! far above what an honest client sends: a phone system of a thousand phones behind
//! one NAT refreshing registrations every minute sends about 17 per second, and the
//! REGISTER benchmark's 20,000 per second come from loopback. Failed authentications
//! are limited separately, per source and per user, by the registrar.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use relay::policy::Cidr;
use serde::{Deserialize, Serialize};

/// (De)serialises the exempt ranges as `"192.0.2.0/24"` strings, with the relay's
/// CIDR type, so the TURN deny list and the flood exemptions parse ranges one way.
mod cidr_list {
    use relay::policy::Cidr;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(list: &[Cidr], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(list.iter().map(|c| c.to_string()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Cidr>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|s| {
                s.parse().map_err(|_| {
                    serde::de::Error::custom(format!(
                        "{s:?} is not an address range: write e.g. 192.0.2.0/24"
                    ))
                })
            })
            .collect()
    }
}

/// Flood limits, with the defaults the module doc argues for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FloodConfig {
    /// Messages a source may send per second, averaged over two seconds.
    pub requests_per_second: u32,
    /// How long a source over the limit is ignored.
    pub ban_seconds: u64,
    /// Sources never limited.
    #[serde(with = "cidr_list")]
    pub exempt: Vec<Cidr>,
}

impl Default for FloodConfig {
    fn default() -> Self {
        FloodConfig {
            requests_per_second: 1_000,
            ban_seconds: 60,
            exempt: [
                Cidr::new(IpAddr::from([127, 0, 0, 0]), 8),
                Cidr::new(IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]), 128),
            ]
            .into_iter()
            .flatten()
            .collect(),
        }
    }
}

/// What to do with a message from a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Process it.
    Allow,
    /// Drop it silently: the source went over the limit just now (log and count it).
    Ban,
    /// Drop it silently: the source is banned.
    Drop,
}

const WINDOW: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy)]
struct Source {
    window_start: Instant,
    count: u32,
    banned_until: Option<Instant>,
}

/// The per-source counters. Sans-IO: time comes in.
#[derive(Debug)]
pub struct FloodGuard {
    config: FloodConfig,
    sources: HashMap<IpAddr, Source>,
    last_sweep: Option<Instant>,
}

impl FloodGuard {
    /// A guard with these limits.
    pub fn new(config: FloodConfig) -> Self {
        FloodGuard {
            config,
            sources: HashMap::new(),
            last_sweep: None,
        }
    }

    /// Sources banned at `now`.
    pub fn banned(&self, now: Instant) -> usize {
        self.sources
            .values()
            .filter(|s| s.banned_until.is_some_and(|t| t > now))
            .count()
    }

    /// Counts one message from `ip` and says whether to process it.
    pub fn check(&mut self, ip: IpAddr, now: Instant) -> Verdict {
        // An IPv4-mapped IPv6 source is matched as the IPv4 address it is.
        let ip = ip.to_canonical();
        if self.config.exempt.iter().any(|c| c.contains(ip)) {
            return Verdict::Allow;
        }
        self.sweep(now);
        let limit = self.config.requests_per_second.saturating_mul(2);
        let ban = Duration::from_secs(self.config.ban_seconds);
        let s = self.sources.entry(ip).or_insert(Source {
            window_start: now,
            count: 0,
            banned_until: None,
        });
        if let Some(until) = s.banned_until {
            if until > now {
                return Verdict::Drop;
            }
            s.banned_until = None;
            s.window_start = now;
            s.count = 0;
        }
        if now.saturating_duration_since(s.window_start) >= WINDOW {
            s.window_start = now;
            s.count = 0;
        }
        s.count += 1;
        if s.count > limit {
            s.banned_until = Some(now + ban);
            return Verdict::Ban;
        }
        Verdict::Allow
    }

    /// Forgets quiet sources now and then, so the table stays as large as the set of
    /// recently active or banned sources.
    fn sweep(&mut self, now: Instant) {
        if self
            .last_sweep
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(10))
        {
            return;
        }
        self.last_sweep = Some(now);
        self.sources.retain(|_, s| {
            s.banned_until.is_some_and(|t| t > now)
                || now.saturating_duration_since(s.window_start) < WINDOW
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(rps: u32) -> FloodGuard {
        FloodGuard::new(FloodConfig {
            requests_per_second: rps,
            ban_seconds: 60,
            ..FloodConfig::default()
        })
    }

    #[test]
    fn a_source_over_the_limit_is_banned_then_forgiven() {
        let mut g = guard(10);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..20 {
            assert_eq!(g.check(ip, t0), Verdict::Allow);
        }
        assert_eq!(g.check(ip, t0), Verdict::Ban);
        assert_eq!(g.check(ip, t0 + Duration::from_secs(30)), Verdict::Drop);
        assert_eq!(g.check(other, t0), Verdict::Allow);
        assert_eq!(g.banned(t0), 1);
        assert_eq!(g.check(ip, t0 + Duration::from_secs(61)), Verdict::Allow);
    }

    #[test]
    fn an_honest_steady_rate_is_never_banned() {
        let mut g = guard(10);
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        let t0 = Instant::now();
        for i in 0..1000u32 {
            let t = t0 + Duration::from_millis(u64::from(i) * 110);
            assert_eq!(g.check(ip, t), Verdict::Allow, "message {i}");
        }
    }

    #[test]
    fn loopback_is_exempt_by_default() {
        let mut g = guard(1);
        let t0 = Instant::now();
        for _ in 0..10_000 {
            assert_eq!(g.check("127.0.0.1".parse().unwrap(), t0), Verdict::Allow);
            assert_eq!(g.check("::1".parse().unwrap(), t0), Verdict::Allow);
        }
    }

    #[test]
    fn cidr_parsing_and_matching() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        // An IPv4-mapped source is exempt by its IPv4 range.
        let mut g = FloodGuard::new(FloodConfig {
            requests_per_second: 1,
            exempt: vec![c],
            ..FloodConfig::default()
        });
        let t0 = Instant::now();
        for _ in 0..100 {
            assert_eq!(
                g.check("::ffff:10.1.0.9".parse().unwrap(), t0),
                Verdict::Allow
            );
        }
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.1".parse().unwrap()));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:1::1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nonsense".parse::<Cidr>().is_err());
        assert_eq!(
            "192.0.2.9".parse::<Cidr>().unwrap().to_string(),
            "192.0.2.9/32"
        );
    }

    #[test]
    fn the_table_forgets_quiet_sources() {
        let mut g = guard(1000);
        let t0 = Instant::now();
        for i in 0..100u8 {
            g.check(IpAddr::from([192, 0, 2, i]), t0);
        }
        g.check(
            IpAddr::from([198, 51, 100, 1]),
            t0 + Duration::from_secs(20),
        );
        assert_eq!(g.sources.len(), 1);
    }
}
