//! TURN REST credentials in coturn's format (draft-uberti-behave-turn-rest): the username
//! is `expiry:user` and the password is base64(HMAC-SHA1(secret, username)).

use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha1::Sha1;
use utoipa::ToSchema;

/// Time-limited TURN credentials for a WebRTC client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TurnCredentials {
    /// `<expiry unix seconds>:<user>`.
    pub username: String,
    /// base64(HMAC-SHA1(secret, username)).
    pub password: String,
    /// Seconds the credentials stay valid.
    pub ttl: u64,
    /// TURN URIs to use them with.
    pub uris: Vec<String>,
}

/// What a client asks for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TurnRequest {
    /// Who the credentials are for (default `webrtc`); a `:` is not allowed.
    #[serde(default)]
    pub user: Option<String>,
    /// Lifetime in seconds, 60 to 86400 (default 3600).
    #[serde(default)]
    pub ttl: Option<u64>,
}

/// Compute credentials for `user` valid `ttl` seconds after `now_unix`.
pub fn turn_credentials(
    secret: &[u8],
    user: &str,
    ttl: u64,
    now_unix: u64,
    uris: Vec<String>,
) -> TurnCredentials {
    let username = format!("{}:{}", now_unix + ttl, user);
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(secret).expect("hmac key");
    mac.update(username.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    TurnCredentials {
        username,
        password,
        ttl,
        uris,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector() {
        // HMAC-SHA1(key="secret", "1700003600:alice"), checked with
        // `printf %s 1700003600:alice | openssl dgst -sha1 -hmac secret -binary | base64`.
        let c = turn_credentials(b"secret", "alice", 3600, 1_700_000_000, vec![]);
        assert_eq!(c.username, "1700003600:alice");
        assert_eq!(c.password, "LLPLO4qjdVL2qZhwr3eImhn7J20=");
    }
}
