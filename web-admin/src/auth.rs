//! Passwords, API tokens, browser sessions and the login limiter.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::Engine;
use sha2::{Digest, Sha256};

use crate::error::{AdminError, AdminResult};
use crate::model::ApiToken;

/// `n` random bytes from the OS, URL-safe base64 without padding.
pub(crate) fn random_token(n: usize) -> String {
    let mut buf = vec![0u8; n];
    // The OS generator failing is not recoverable; fall back to a hash of the time
    // would weaken sessions, so abort the request instead.
    getrandom::fill(&mut buf).expect("OS random generator");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

/// Hash the admin password with argon2id into a PHC string, for
/// `supernode admin set-password` and the first-start generated password.
pub fn hash_password(password: &str) -> AdminResult<String> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| AdminError::Internal(e.to_string()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| AdminError::Internal(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AdminError::Internal(e.to_string()))
}

/// Check a password against a PHC string; false on mismatch or a malformed hash.
pub fn verify_password(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(h) => Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok(),
        Err(_) => false,
    }
}

/// Generate a fresh random admin password (for a first start on loopback).
pub fn generate_password() -> String {
    random_token(18)
}

/// Hex SHA-256 of an API token: what [`crate::AdminAuth`] stores. Tokens carry 256 bits
/// of randomness, so a fast hash suffices.
pub fn hash_token(token: &str) -> String {
    let d = Sha256::digest(token.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Create an API token for `supernode admin token create`: returns the secret to show
/// once (`sn_<id>_<secret>`) and the record to store with [`crate::AdminAuth::add_token`].
pub fn new_api_token(name: &str) -> (String, ApiToken) {
    let id = random_token(6);
    let secret = format!("sn_{}_{}", id, random_token(32));
    let created_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let rec = ApiToken {
        id,
        name: name.to_string(),
        hash: hash_token(&secret),
        created_unix,
    };
    (secret, rec)
}

/// Compare two byte strings in time independent of where they differ.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A logged-in browser session.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub csrf: String,
    pub expires: Instant,
}

/// In-memory sessions keyed by the cookie value.
#[derive(Default)]
pub(crate) struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    pub fn create(&self, ttl: Duration) -> (String, Session) {
        let id = random_token(32);
        let s = Session {
            csrf: random_token(32),
            expires: Instant::now() + ttl,
        };
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        m.retain(|_, v| v.expires > now);
        m.insert(id.clone(), s.clone());
        (id, s)
    }

    pub fn get(&self, id: &str) -> Option<Session> {
        let m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        m.get(id).filter(|s| s.expires > Instant::now()).cloned()
    }

    pub fn remove(&self, id: &str) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}

#[derive(Debug, Clone)]
struct Attempts {
    window_start: Instant,
    in_window: u32,
    failures: u32,
    locked_until: Option<Instant>,
}

/// Login rate limit and lockout per source IP.
pub(crate) struct LoginLimiter {
    map: Mutex<HashMap<String, Attempts>>,
    max_failures: u32,
    lockout: Duration,
    per_minute: u32,
}

/// Why a login attempt is refused before the password is even checked.
pub(crate) enum Refusal {
    /// Locked out for this many more seconds.
    Locked(u64),
    /// Too many attempts in the last minute.
    RateLimited,
}

impl LoginLimiter {
    pub fn new(max_failures: u32, lockout: Duration, per_minute: u32) -> Self {
        LoginLimiter {
            map: Mutex::new(HashMap::new()),
            max_failures,
            lockout,
            per_minute,
        }
    }

    /// Record an attempt from `src`; refuse it if locked out or over the rate.
    pub fn check(&self, src: &str) -> Result<(), Refusal> {
        let now = Instant::now();
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let a = m.entry(src.to_string()).or_insert(Attempts {
            window_start: now,
            in_window: 0,
            failures: 0,
            locked_until: None,
        });
        if let Some(until) = a.locked_until {
            if until > now {
                return Err(Refusal::Locked((until - now).as_secs().max(1)));
            }
            a.locked_until = None;
            a.failures = 0;
        }
        if now.duration_since(a.window_start) >= Duration::from_secs(60) {
            a.window_start = now;
            a.in_window = 0;
        }
        a.in_window += 1;
        if a.in_window > self.per_minute {
            return Err(Refusal::RateLimited);
        }
        Ok(())
    }

    /// A wrong password from `src`; returns true when this failure locked it out.
    pub fn failed(&self, src: &str) -> bool {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = m.get_mut(src) {
            a.failures += 1;
            if a.failures >= self.max_failures {
                a.locked_until = Some(Instant::now() + self.lockout);
                return true;
            }
        }
        false
    }

    /// A successful login from `src` clears its failures.
    pub fn succeeded(&self, src: &str) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(src);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_roundtrip() {
        let h = hash_password("correct horse").expect("hash");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong", &h));
        assert!(!verify_password("x", "not a phc"));
    }

    #[test]
    fn api_token_hash_matches() {
        let (secret, rec) = new_api_token("ci");
        assert!(secret.starts_with(&format!("sn_{}_", rec.id)));
        assert_eq!(hash_token(&secret), rec.hash);
    }
}
