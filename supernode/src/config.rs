//! The node's one typed configuration: defaults in one place, a TOML file
//! (`supernode init` writes a commented one) and command-line flags on top.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How the SIP service authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SipAuth {
    /// Digest (SHA-256 and MD5) for REGISTER and for requests from local users.
    #[default]
    Digest,
    /// None at all: only for benchmarks, refused unless every listener is on loopback.
    None,
}

impl std::str::FromStr for SipAuth {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "digest" => Ok(SipAuth::Digest),
            "none" => Ok(SipAuth::None),
            _ => Err(format!("unknown auth mode {s:?}: use digest or none")),
        }
    }
}

/// A range of UDP ports for RTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRange {
    /// Lowest port.
    pub low: u16,
    /// Highest port.
    pub high: u16,
}

impl std::str::FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (a, b) = s.split_once('-').ok_or_else(|| {
            format!("{s:?} is not a port range: write LOW-HIGH, e.g. 49152-65535")
        })?;
        let low: u16 = a
            .trim()
            .parse()
            .map_err(|_| format!("bad low port {a:?}"))?;
        let high: u16 = b
            .trim()
            .parse()
            .map_err(|_| format!("bad high port {b:?}"))?;
        if low == 0 || low > high {
            return Err(format!("port range {s:?} must have 0 < LOW <= HIGH"));
        }
        Ok(PortRange { low, high })
    }
}

/// One digest algorithm the registrar and proxy may challenge with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DigestAlgorithm {
    /// SHA-256 (RFC 8760).
    #[serde(rename = "SHA-256")]
    Sha256,
    /// MD5 (RFC 3261).
    #[serde(rename = "MD5")]
    Md5,
}

/// Registrar limits (RFC 3261 §10.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrarConfig {
    /// Shortest registration accepted; shorter gets 423 with Min-Expires.
    pub min_expires: u32,
    /// Longest registration granted; longer is cut to this.
    pub max_expires: u32,
    /// Granted when the REGISTER names no expiry.
    pub default_expires: u32,
    /// Contacts one AOR may hold.
    pub max_contacts: usize,
    /// Seconds between NAT keepalives (CRLF-CRLF) to each UDP registration's address.
    pub nat_keepalive_seconds: u64,
    /// Digest challenges offered, most preferred first (RFC 8760 §2.4).
    pub digest_algorithms: Vec<DigestAlgorithm>,
}

impl Default for RegistrarConfig {
    fn default() -> Self {
        RegistrarConfig {
            min_expires: 60,
            max_expires: 7200,
            default_expires: 3600,
            max_contacts: 10,
            nat_keepalive_seconds: 25,
            digest_algorithms: vec![DigestAlgorithm::Sha256, DigestAlgorithm::Md5],
        }
    }
}

/// Everything `supernode run` needs, with its defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The SIP domain served (default: the host name).
    pub domain: Option<String>,
    /// Data directory: SQLite database and audio files.
    pub data: PathBuf,
    /// SIP address, UDP and TCP on the same port (port 0: pick one free port for both).
    pub sip: SocketAddr,
    /// TURN address, UDP and TCP on the same port (port 0: pick one free port for both).
    pub turn: SocketAddr,
    /// Admin HTTP address (its service comes with the admin issue).
    pub admin: SocketAddr,
    /// libp2p address (its service comes with the overlay issue).
    pub p2p: SocketAddr,
    /// Overlay bootstrap peers.
    pub bootstrap: Vec<String>,
    /// Address written into Via, Record-Route, Contact and SDP when the node binds
    /// 0.0.0.0 or sits behind a 1:1 NAT.
    pub advertise: Option<IpAddr>,
    /// DNS server for RFC 3263 lookups (overlay issue).
    pub dns: Option<SocketAddr>,
    /// SIP authentication.
    pub sip_auth: SipAuth,
    /// UDP ports for RTP (mixer legs, relays).
    pub rtp_ports: PortRange,
    /// Peer ranges the relay may reach although they are special-purpose.
    pub allow_peer: Vec<String>,
    /// Registrar limits.
    pub registrar: RegistrarConfig,
    /// Mixer threads (0: one per core).
    pub mixer_threads: usize,
    /// Per-source flood limits (Kamailio pike style).
    pub flood: crate::sip::flood::FloodConfig,
    /// Shared secret for coturn-style time-limited TURN credentials ("TURN REST API":
    /// username `EXPIRY:NAME`, password base64(HMAC-SHA1(secret, username))); SIP
    /// accounts work as TURN users either way.
    pub turn_secret: Option<String>,
    /// TURN relay limits.
    pub relay: RelayConfig,
}

/// TURN relay limits (RFC 8656 leaves them to the operator).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// Allocations alive at once before 508 Insufficient Capacity.
    pub max_allocations: usize,
    /// Allocations per username before 486 Allocation Quota Reached.
    pub max_allocations_per_user: u32,
    /// Permissions and channels per allocation before 508.
    pub max_permissions_per_allocation: usize,
    /// Relayed bytes per second per allocation, both directions; 0 is unlimited.
    pub bandwidth_limit: u64,
    /// Longest allocation lifetime granted, in seconds.
    pub max_lifetime: u32,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            max_allocations: 10_000,
            max_allocations_per_user: 1000,
            max_permissions_per_allocation: 64,
            bandwidth_limit: 0,
            max_lifetime: 3600,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            domain: None,
            data: PathBuf::from("./data"),
            sip: SocketAddr::from(([0, 0, 0, 0], 5060)),
            turn: SocketAddr::from(([0, 0, 0, 0], 3478)),
            admin: SocketAddr::from(([127, 0, 0, 1], 8080)),
            p2p: SocketAddr::from(([0, 0, 0, 0], 4001)),
            bootstrap: Vec::new(),
            advertise: None,
            dns: None,
            sip_auth: SipAuth::Digest,
            rtp_ports: PortRange {
                low: 49152,
                high: 65535,
            },
            allow_peer: Vec::new(),
            registrar: RegistrarConfig::default(),
            mixer_threads: 0,
            flood: crate::sip::flood::FloodConfig::default(),
            turn_secret: None,
            relay: RelayConfig::default(),
        }
    }
}

/// The commented file `supernode init` writes: every setting at its default.
pub const TEMPLATE: &str = r#"# supernode configuration. Every setting is shown at its default; flags of
# `supernode run` override this file.

# The SIP domain served. Default: this host's name. The data directory records it on
# first use: digest passwords are bound to it.
# domain = "example.org"

# Where the SQLite database and audio files live.
data = "./data"

# SIP on UDP and TCP, same port. Port 0 picks one free port for both.
sip = "0.0.0.0:5060"

# TURN (relay, UDP and TCP on the same port), admin UI, overlay.
turn = "0.0.0.0:3478"
admin = "127.0.0.1:8080"
p2p = "0.0.0.0:4001"
bootstrap = []

# Address written into Via, Record-Route, Contact and SDP when binding 0.0.0.0 or
# behind a 1:1 NAT.
# advertise = "203.0.113.7"

# DNS server for routing to other SIP domains (RFC 3263).
# dns = "127.0.0.1:53"

# "digest" (SHA-256 and MD5) or "none" (benchmarks only; every listener must be on
# loopback).
sip_auth = "digest"

# UDP ports for RTP.
rtp_ports = { low = 49152, high = 65535 }

# Special-purpose peer ranges the relay may reach anyway, e.g. ["127.0.0.0/8"].
allow_peer = []

# Shared secret for time-limited TURN credentials (coturn's static-auth-secret, the
# "TURN REST API"). SIP accounts are TURN users with their SIP password either way.
# turn_secret = "change me"

# Mixer threads; 0 is one per core.
mixer_threads = 0

[registrar]
min_expires = 60       # shorter gets 423 Interval Too Brief
max_expires = 7200     # longer is cut to this
default_expires = 3600 # when the REGISTER names none
max_contacts = 10      # per address of record
nat_keepalive_seconds = 25  # CRLF-CRLF to each UDP registration, keeps NAT bindings open
# Digest challenges offered, most preferred first (RFC 8760). Clients that choke on a
# SHA-256 challenge (baresip 1.0, sipp 3.6) need ["MD5"].
digest_algorithms = ["SHA-256", "MD5"]

[flood]
requests_per_second = 1000  # per source address, averaged over 2 s; over it: banned
ban_seconds = 60
exempt = ["127.0.0.0/8", "::1/128"]

[relay]
max_allocations = 10000             # alive at once; more get 508
max_allocations_per_user = 1000     # more get 486 (a WebRTC gateway account may hold many)
max_permissions_per_allocation = 64 # permissions and channels; more get 508
bandwidth_limit = 0                 # bytes/s per allocation, both directions; 0: none
max_lifetime = 3600                 # seconds
"#;

impl Config {
    /// Reads a TOML file; unknown keys are errors, so a typo does not pass silently.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
            context: format!("reading {}", path.display()),
            source: e,
        })?;
        toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// The domain, defaulting to the host name.
    pub fn domain(&self) -> String {
        self.domain.clone().unwrap_or_else(host_name)
    }

    /// Refuses combinations that would be unsafe: no authentication on a listener
    /// reachable from outside the host.
    pub fn validate(&self) -> Result<()> {
        if self.sip_auth == SipAuth::None {
            let open: Vec<String> = [
                ("sip", self.sip),
                ("turn", self.turn),
                ("admin", self.admin),
                ("p2p", self.p2p),
            ]
            .iter()
            .filter(|(_, a)| !a.ip().is_loopback())
            .map(|(n, a)| format!("--{n} {a}"))
            .collect();
            if !open.is_empty() {
                return Err(Error::Config(format!(
                    "--sip-auth none is only for benchmarks on loopback; these listeners are not: {}",
                    open.join(", ")
                )));
            }
        }
        for a in &self.allow_peer {
            if a.parse::<relay::policy::Cidr>().is_err() {
                return Err(Error::Config(format!(
                    "--allow-peer {a:?} is not a network: write ADDRESS/PREFIX, e.g. 127.0.0.0/8"
                )));
            }
        }
        if self.relay.max_lifetime < 600 {
            return Err(Error::Config(
                "relay.max_lifetime must be at least 600 s (RFC 8656 default lifetime)".into(),
            ));
        }
        let r = &self.registrar;
        if r.nat_keepalive_seconds == 0 {
            return Err(Error::Config(
                "registrar.nat_keepalive_seconds must be at least 1".into(),
            ));
        }
        if r.digest_algorithms.is_empty() {
            return Err(Error::Config(
                "registrar.digest_algorithms needs at least one of \"SHA-256\", \"MD5\"".into(),
            ));
        }
        if r.min_expires > r.max_expires || r.default_expires < r.min_expires {
            return Err(Error::Config(
                "registrar: need min_expires <= default_expires and min_expires <= max_expires"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// This host's name, as the default domain.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_parses_to_the_defaults() {
        let parsed: Config = toml::from_str(TEMPLATE).unwrap();
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(toml::from_str::<Config>("sipp = \"1.2.3.4:5\"").is_err());
    }

    #[test]
    fn auth_none_needs_loopback_everywhere() {
        let mut c = Config {
            sip_auth: SipAuth::None,
            ..Config::default()
        };
        assert!(c.validate().is_err());
        let lo = SocketAddr::from(([127, 0, 0, 1], 0));
        c.sip = lo;
        c.turn = lo;
        c.admin = lo;
        c.p2p = lo;
        c.validate().unwrap();
    }

    #[test]
    fn bad_allow_peer_networks_are_refused() {
        let mut c = Config {
            allow_peer: vec!["127.0.0.0/8".into(), "::1".into()],
            ..Config::default()
        };
        c.validate().unwrap();
        c.allow_peer.push("10.0.0.0/33".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("10.0.0.0/33"), "{e}");
    }

    #[test]
    fn port_ranges_parse_and_refuse_nonsense() {
        assert_eq!(
            "1000-2000".parse::<PortRange>().unwrap(),
            PortRange {
                low: 1000,
                high: 2000
            }
        );
        assert!("2000-1000".parse::<PortRange>().is_err());
        assert!("abc".parse::<PortRange>().is_err());
    }
}
