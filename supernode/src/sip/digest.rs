//! HTTP digest authentication for SIP (RFC 3261 §22 with RFC 7616 semantics and the
//! RFC 8760 SHA-256 algorithm).
//!
//! The registrar and the proxy need to prove that a request comes from the owner of an
//! account without ever storing or seeing the password; this module holds everything
//! about that except the account store and the SIP messages themselves: it works on
//! header *value* strings and on stored HA1 values, and it is sans-IO (every call that
//! needs the time is handed `now`), so it is unit-testable with a fake clock.
//!
//! How a caller uses it, for one request:
//!
//! 1. No `Authorization`/`Proxy-Authorization` header: answer 401/407 with both
//!    [`challenge`] values and a nonce from [`Nonces::issue`].
//! 2. Parse the header with [`Credentials::parse`]; a parse error is answered like 1.
//! 3. Look up the user's HA1 for `creds.algorithm` and `creds.realm`; for an unknown user
//!    use [`dummy_ha1`] instead so the work and the answer match a wrong password.
//! 4. [`verify`]; a wrong response (or an unknown user) gets a fresh challenge without
//!    `stale`, which tells the client its password is wrong.
//! 5. Only then [`Nonces::check`]: `Fresh` accepts the request; `Stale` gets a fresh
//!    challenge with `stale=true` (the password was right, the client retries silently);
//!    `Replayed` and `Forged` get a fresh challenge.
//!
//! The nonce is checked *after* the response so that a wrong password does not burn a
//! nonce count (a legitimate client retrying with the right password keeps its nonce)
//! and so that `stale=true` is only ever sent to someone who knows the password, as
//! RFC 7616 §3.3 requires.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use md5::Md5;
use sha2::{Digest, Sha256};

/// Longest digest output of a supported algorithm (SHA-256), so digests and their hex
/// forms fit in stack buffers on the hot path.
const MAX_DIGEST: usize = 32;

/// A digest algorithm that this server accepts.
///
/// Only the non-session variants exist: `-sess` needs the cnonce folded into HA1, which
/// defeats HA1-only storage and is not used by the SIP clients we target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// `MD5`: the RFC 2617/3261 default, still the only one sipp 3.6 and baresip 1.0
    /// answer.
    Md5,
    /// `SHA-256` (RFC 8760): offered first to every client that supports it.
    Sha256,
}

impl Algorithm {
    /// The token used in `algorithm=` parameters, so challenges and logs spell it the
    /// way the RFCs do.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    /// Bytes in a raw digest of this algorithm; HA1 and responses are twice that in hex.
    fn digest_len(self) -> usize {
        match self {
            Algorithm::Md5 => 16,
            Algorithm::Sha256 => 32,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Algorithm {
    type Err = DigestError;

    /// Case-insensitive, because clients disagree on the spelling (`md5`, `MD5`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("MD5") {
            Ok(Algorithm::Md5)
        } else if s.eq_ignore_ascii_case("SHA-256") {
            Ok(Algorithm::Sha256)
        } else {
            Err(DigestError::UnsupportedAlgorithm(s.to_owned()))
        }
    }
}

/// Why an `Authorization`/`Proxy-Authorization` value was not usable; the caller answers
/// all of them with a fresh challenge (or 400), the variants exist for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// The header uses another scheme (e.g. `Basic`), which SIP must not accept.
    #[error("authorization scheme is not Digest")]
    NotDigest,
    /// The value does not follow the `name=value, ...` grammar.
    #[error("malformed digest header at byte {at}: {what}")]
    Syntax {
        /// Byte offset in the header value where parsing gave up.
        at: usize,
        /// What was expected there.
        what: &'static str,
    },
    /// A parameter the response cannot be checked without is absent.
    #[error("missing digest parameter `{0}`")]
    MissingParameter(&'static str),
    /// A parameter appeared twice; RFC 7235 forbids it and accepting either copy would
    /// let a proxy and this server disagree about what was authenticated.
    #[error("duplicate digest parameter `{0}`")]
    DuplicateParameter(String),
    /// `algorithm=` names something other than `MD5` or `SHA-256` (including the
    /// `-sess` variants).
    #[error("unsupported digest algorithm `{0}`")]
    UnsupportedAlgorithm(String),
    /// `qop=` is something other than `auth` (e.g. `auth-int`, which we never offer).
    #[error("unsupported qop `{0}`")]
    UnsupportedQop(String),
    /// `nc=` is not 8 hex digits; the response covers its exact spelling, so a
    /// normalised value could not be checked anyway.
    #[error("invalid nonce count `{0}`")]
    InvalidNonceCount(String),
    /// A recognised but unsupported feature was requested (e.g. `userhash=true`).
    #[error("unsupported digest feature `{0}`")]
    Unsupported(&'static str),
}

/// HA1 = H(username:realm:password) in lowercase hex: the only form in which account
/// passwords are stored, so a leaked store does not reveal them (nor work for another
/// realm).
pub fn ha1(alg: Algorithm, username: &str, realm: &str, password: &str) -> String {
    fn run<D: Digest>(username: &str, realm: &str, password: &str) -> String {
        let mut h = D::new();
        h.update(username.as_bytes());
        h.update(b":");
        h.update(realm.as_bytes());
        h.update(b":");
        h.update(password.as_bytes());
        hex::encode(h.finalize())
    }
    match alg {
        Algorithm::Md5 => run::<Md5>(username, realm, password),
        Algorithm::Sha256 => run::<Sha256>(username, realm, password),
    }
}

/// A parsed `Authorization`/`Proxy-Authorization` value with the Digest scheme, so the
/// caller can look up the account and then [`verify`] the response.
///
/// Parameter values are unescaped. When `qop` is absent, `nc` and `cnonce` are always
/// `None` even if the client sent them: the RFC 2069 response does not cover them, so
/// letting them steer replay detection would let an attacker replay a captured request
/// with a bumped `nc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The account name, used to look up the HA1.
    pub username: String,
    /// The protection space the client answered; the caller must check it is ours.
    pub realm: String,
    /// The nonce from our challenge, checked with [`Nonces::check`].
    pub nonce: String,
    /// The digest-uri; the caller should compare it with the Request-URI.
    pub uri: String,
    /// The client's response, hex.
    pub response: String,
    /// `MD5` when the client omitted `algorithm=`, as RFC 2617 specifies.
    pub algorithm: Algorithm,
    /// `Some("auth")` (in the client's spelling) or `None` for RFC 2069 style.
    pub qop: Option<String>,
    /// The nonce count, present exactly when `qop` is.
    pub nc: Option<u32>,
    /// The client nonce, present exactly when `qop` is.
    pub cnonce: Option<String>,
    /// Echo of our `opaque`; not relied upon.
    pub opaque: Option<String>,
}

impl Credentials {
    /// Parses a header value such as `Digest username="bob", realm="example.org", ...`.
    ///
    /// Tolerant where real clients differ (scheme and parameter-name case, whitespace
    /// including folded lines, parameter order, quoted or unquoted values, unknown
    /// parameters, empty list elements) and strict where leniency would weaken the check
    /// (duplicates, unsupported algorithm/qop, malformed `nc`).
    pub fn parse(header_value: &str) -> Result<Self, DigestError> {
        let mut username = None;
        let mut realm = None;
        let mut nonce = None;
        let mut uri = None;
        let mut response = None;
        let mut algorithm = None;
        let mut qop = None;
        let mut nc = None;
        let mut cnonce = None;
        let mut opaque = None;
        let mut userhash = None;

        for_each_param(header_value, |name, value| {
            let slot = if name.eq_ignore_ascii_case("username") {
                &mut username
            } else if name.eq_ignore_ascii_case("realm") {
                &mut realm
            } else if name.eq_ignore_ascii_case("nonce") {
                &mut nonce
            } else if name.eq_ignore_ascii_case("uri") {
                &mut uri
            } else if name.eq_ignore_ascii_case("response") {
                &mut response
            } else if name.eq_ignore_ascii_case("algorithm") {
                &mut algorithm
            } else if name.eq_ignore_ascii_case("qop") {
                &mut qop
            } else if name.eq_ignore_ascii_case("nc") {
                &mut nc
            } else if name.eq_ignore_ascii_case("cnonce") {
                &mut cnonce
            } else if name.eq_ignore_ascii_case("opaque") {
                &mut opaque
            } else if name.eq_ignore_ascii_case("userhash") {
                &mut userhash
            } else {
                // Extensions (auth-param) must be ignored, RFC 7616 §3.4.
                return Ok(());
            };
            if slot.is_some() {
                return Err(DigestError::DuplicateParameter(name.to_owned()));
            }
            *slot = Some(value.into_owned());
            Ok(())
        })?;

        if userhash
            .as_deref()
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
        {
            return Err(DigestError::Unsupported("userhash"));
        }
        let algorithm = match algorithm {
            None => Algorithm::Md5,
            Some(a) => a.parse()?,
        };
        let (qop, nc, cnonce) = match qop {
            None => (None, None, None),
            Some(q) => {
                if !q.eq_ignore_ascii_case("auth") {
                    return Err(DigestError::UnsupportedQop(q));
                }
                let nc = nc.ok_or(DigestError::MissingParameter("nc"))?;
                let cnonce = cnonce.ok_or(DigestError::MissingParameter("cnonce"))?;
                (Some(q), Some(parse_nc(&nc)?), Some(cnonce))
            }
        };
        Ok(Credentials {
            username: username.ok_or(DigestError::MissingParameter("username"))?,
            realm: realm.ok_or(DigestError::MissingParameter("realm"))?,
            nonce: nonce.ok_or(DigestError::MissingParameter("nonce"))?,
            uri: uri.ok_or(DigestError::MissingParameter("uri"))?,
            response: response.ok_or(DigestError::MissingParameter("response"))?,
            algorithm,
            qop,
            nc,
            cnonce,
            opaque,
        })
    }
}

/// `nc` must be exactly 8 lowercase hex digits (RFC 7616 `8LHEX`): the response is
/// computed over its text and we recompute that text as `{:08x}`, so any other spelling
/// would fail verification with a misleading "wrong password".
fn parse_nc(s: &str) -> Result<u32, DigestError> {
    if s.len() == 8 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        u32::from_str_radix(s, 16).map_err(|_| DigestError::InvalidNonceCount(s.to_owned()))
    } else {
        Err(DigestError::InvalidNonceCount(s.to_owned()))
    }
}

/// RFC 7230 `tchar`: what a scheme, a parameter name or a plain token may contain.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whitespace including CR/LF, so header values with folded lines (obsolete but still
/// legal in SIP) parse.
fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// Walks a `Digest name=value, ...` header value and hands each parameter to `f`, so
/// the grammar lives in one place for credentials and (in tests) challenges. Values are
/// borrowed unless they contained escapes.
///
/// All positions where the input is sliced follow an ASCII byte, so slicing never splits
/// a UTF-8 sequence; `get` is used anyway so a mistake here is an error, not a panic.
fn for_each_param<'a>(
    s: &'a str,
    mut f: impl FnMut(&'a str, Cow<'a, str>) -> Result<(), DigestError>,
) -> Result<(), DigestError> {
    let b = s.as_bytes();
    let syntax = |at: usize, what: &'static str| DigestError::Syntax { at, what };
    let slice = |from: usize, to: usize| s.get(from..to).ok_or(syntax(from, "bad offset"));
    let mut pos = 0;
    let skip_ws = |pos: &mut usize| {
        while b.get(*pos).is_some_and(|&c| is_ws(c)) {
            *pos += 1;
        }
    };
    let take_token = |pos: &mut usize| {
        let start = *pos;
        while b.get(*pos).is_some_and(|&c| is_tchar(c)) {
            *pos += 1;
        }
        start
    };

    skip_ws(&mut pos);
    let start = take_token(&mut pos);
    if !slice(start, pos)?.eq_ignore_ascii_case("Digest") {
        return Err(DigestError::NotDigest);
    }
    match b.get(pos) {
        None => return Err(DigestError::MissingParameter("username")),
        Some(&c) if is_ws(c) => {}
        Some(_) => return Err(syntax(pos, "whitespace after scheme")),
    }

    loop {
        while b.get(pos).is_some_and(|&c| is_ws(c) || c == b',') {
            pos += 1;
        }
        if pos >= b.len() {
            return Ok(());
        }
        let start = take_token(&mut pos);
        if start == pos {
            return Err(syntax(pos, "parameter name"));
        }
        let name = slice(start, pos)?;
        skip_ws(&mut pos);
        if b.get(pos) != Some(&b'=') {
            return Err(syntax(pos, "'='"));
        }
        pos += 1;
        skip_ws(&mut pos);
        let value = if b.get(pos) == Some(&b'"') {
            pos += 1;
            let mut segment = pos;
            let mut owned: Option<String> = None;
            loop {
                match b.get(pos) {
                    None => return Err(syntax(pos, "closing '\"'")),
                    Some(b'"') => {
                        let tail = slice(segment, pos)?;
                        pos += 1;
                        break match owned {
                            Some(mut o) => {
                                o.push_str(tail);
                                Cow::Owned(o)
                            }
                            None => Cow::Borrowed(tail),
                        };
                    }
                    Some(b'\\') => {
                        let o = owned.get_or_insert_with(String::new);
                        o.push_str(slice(segment, pos)?);
                        let escaped = s
                            .get(pos + 1..)
                            .and_then(|rest| rest.chars().next())
                            .ok_or(syntax(pos, "escaped character"))?;
                        o.push(escaped);
                        pos += 1 + escaped.len_utf8();
                        segment = pos;
                    }
                    Some(_) => pos += 1,
                }
            }
        } else {
            // Plain tokens are read up to the next delimiter rather than strictly as
            // `token`, because some clients send base64 nonces ('/', '=') unquoted.
            let start = pos;
            while b
                .get(pos)
                .is_some_and(|&c| !is_ws(c) && c != b',' && c != b'"')
            {
                pos += 1;
            }
            if start == pos {
                return Err(syntax(pos, "parameter value"));
            }
            Cow::Borrowed(slice(start, pos)?)
        };
        f(name, value)?;
        skip_ws(&mut pos);
        match b.get(pos) {
            None => return Ok(()),
            Some(b',') => {}
            Some(_) => return Err(syntax(pos, "','")),
        }
    }
}

/// Raw digest output on the stack, sized for the longest supported algorithm, so
/// verification does not allocate.
struct Raw {
    bytes: [u8; MAX_DIGEST],
    len: usize,
}

impl Raw {
    fn from_output(out: &[u8]) -> Self {
        let mut bytes = [0u8; MAX_DIGEST];
        let mut len = 0;
        for (d, s) in bytes.iter_mut().zip(out) {
            *d = *s;
            len += 1;
        }
        Raw { bytes, len }
    }

    fn as_slice(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or(&[])
    }
}

/// Lowercase hex into a caller-provided buffer; returns the written prefix. Digests are
/// hashed as hex text inside the response, and this keeps that off the heap.
fn hex_into<'b>(bytes: &[u8], buf: &'b mut [u8]) -> &'b [u8] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = 0;
    for (pair, byte) in buf.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0x0f)];
        n += 2;
    }
    buf.get(..n).unwrap_or(&[])
}

/// Feeds `text` lowercased, because stored HA1 values are defined as lowercase hex but
/// a caller might hand an uppercase one, and the response hashes HA1 as text.
fn update_lowercase<D: Digest>(h: &mut D, text: &[u8]) {
    let mut buf = [0u8; 64];
    for chunk in text.chunks(buf.len()) {
        for (d, s) in buf.iter_mut().zip(chunk) {
            *d = s.to_ascii_lowercase();
        }
        h.update(buf.get(..chunk.len()).unwrap_or(&[]));
    }
}

/// The raw expected response (RFC 7616 §3.4.1), generic over the hash.
fn response_digest<D: Digest>(creds: &Credentials, method: &str, ha1_hex: &str) -> Raw {
    let mut h = D::new();
    h.update(method.as_bytes());
    h.update(b":");
    h.update(creds.uri.as_bytes());
    let ha2 = h.finalize();
    let mut ha2_buf = [0u8; 2 * MAX_DIGEST];
    let ha2_hex = hex_into(&ha2, &mut ha2_buf);

    let mut h = D::new();
    update_lowercase(&mut h, ha1_hex.as_bytes());
    h.update(b":");
    h.update(creds.nonce.as_bytes());
    h.update(b":");
    if let Some(qop) = &creds.qop {
        let mut nc_buf = [0u8; 8];
        h.update(hex_into(&creds.nc.unwrap_or(0).to_be_bytes(), &mut nc_buf));
        h.update(b":");
        h.update(creds.cnonce.as_deref().unwrap_or("").as_bytes());
        h.update(b":");
        h.update(qop.as_bytes());
        h.update(b":");
    }
    h.update(ha2_hex);
    Raw::from_output(&h.finalize())
}

fn compute(creds: &Credentials, method: &str, ha1_hex: &str) -> Raw {
    match creds.algorithm {
        Algorithm::Md5 => response_digest::<Md5>(creds, method, ha1_hex),
        Algorithm::Sha256 => response_digest::<Sha256>(creds, method, ha1_hex),
    }
}

/// The `response` the client should have sent, in lowercase hex: for tests, logs and a
/// UAC side. HA2 = H(method:uri); response = H(HA1:nonce:nc:cnonce:qop:HA2) with qop and
/// H(HA1:nonce:HA2) without (RFC 2069 style).
pub fn expected_response(creds: &Credentials, method: &str, ha1_hex: &str) -> String {
    hex::encode(compute(creds, method, ha1_hex).as_slice())
}

/// Whether the client's response matches `ha1_hex`, compared in constant time so the
/// timing does not reveal how many leading bytes of a guess were right.
///
/// Does not allocate. The hex case of the client's response is not significant. Realm,
/// uri and nonce freshness are the caller's (and [`Nonces::check`]'s) business.
pub fn verify(creds: &Credentials, method: &str, ha1_hex: &str) -> bool {
    let expected = compute(creds, method, ha1_hex);
    let n = creds.algorithm.digest_len();
    let mut given = [0u8; MAX_DIGEST];
    let Some(given) = given.get_mut(..n) else {
        return false;
    };
    if hex::decode_to_slice(creds.response.as_bytes(), given).is_err() {
        return false;
    }
    constant_time_eq(given, expected.as_slice())
}

/// Equality whose duration depends only on the lengths (which are public).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// A HA1 to verify against when the user does not exist, so that the work done and the
/// answer given (a wrong-password challenge) are the same as for a known user and the
/// registrar cannot be used to enumerate accounts.
///
/// It is random per process (not a constant in the source), so nobody can compute a
/// response that matches it; callers must still treat an unknown user as a failure.
/// Returned as `&'static str` so the unknown-user path does not allocate either.
pub fn dummy_ha1(alg: Algorithm) -> &'static str {
    static DUMMY: OnceLock<[String; 2]> = OnceLock::new();
    let dummy = DUMMY.get_or_init(|| {
        let mut seed = [0u8; 32];
        random_bytes(&mut seed);
        [
            hex::encode(seed.get(..16).unwrap_or(&[])),
            hex::encode(seed),
        ]
    });
    match alg {
        Algorithm::Md5 => &dummy[0],
        Algorithm::Sha256 => &dummy[1],
    }
}

/// OS randomness, falling back to std's randomly keyed SipHash (seeded from the OS at
/// thread start) so that a getrandom failure degrades instead of panicking.
fn random_bytes(out: &mut [u8]) {
    if getrandom::fill(out).is_ok() {
        return;
    }
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(i);
        for (d, s) in chunk.iter_mut().zip(h.finish().to_le_bytes()) {
            *d = s;
        }
    }
}

/// Tunables for [`Nonces`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NonceConfig {
    /// How long a nonce is accepted after issue; older ones get `stale=true`. Bounds both
    /// how long a captured nonce is useful and how long it must be remembered.
    pub lifetime: Duration,
    /// Most nonces whose use is remembered at once, so a flood of registrations cannot
    /// grow memory without bound. When full the oldest is forgotten, and that nonce
    /// (and any older one) is answered `Stale` from then on rather than risk a replay.
    pub max_tracked: usize,
}

impl Default for NonceConfig {
    /// 5 minutes and 1,000,000 entries (about 50 MB at worst): long enough for a slow
    /// user typing a password, enough for 3,000 fresh registrations a second.
    fn default() -> Self {
        NonceConfig {
            lifetime: Duration::from_secs(300),
            max_tracked: 1_000_000,
        }
    }
}

/// Verdict of [`Nonces::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NonceCheck {
    /// Ours, in time, first use of this nonce count: accept. The count is now recorded.
    Fresh,
    /// Ours but expired (or forgotten under memory pressure): challenge again with
    /// `stale=true` so the client retries without asking its user.
    Stale,
    /// Ours and in time but this nonce count (or, without qop, this nonce) was already
    /// used: a replay or a confused client; challenge again.
    Replayed,
    /// Not issued by this process (other secret, tampered, garbage): challenge again.
    Forged,
}

/// Domain separation for the nonce MAC, in case the secret is ever reused elsewhere.
const NONCE_MAC_CONTEXT: &[u8] = b"supernode digest nonce v1\0";
/// Issue time (8 bytes, ms since the epoch) + serial (8 bytes).
const NONCE_BODY: usize = 16;
/// Truncated HMAC-SHA-256: 128 bits is plenty against forgery within a lifetime.
const NONCE_TAG: usize = 16;
const NONCE_RAW: usize = NONCE_BODY + NONCE_TAG;

/// Issues and validates nonces: self-validating (issue time + serial + HMAC under a
/// per-process secret, so forged or foreign nonces are rejected without any state) plus
/// a bounded table of nonce → highest nonce count for replay detection.
///
/// Time is `now` relative to `epoch`, never read from the clock. The effective time is
/// the latest `now` seen, so a caller handing in a slightly older `Instant` cannot make
/// an expired-and-forgotten nonce look fresh again.
pub struct Nonces {
    config: NonceConfig,
    /// Keyed once: cloning a keyed HMAC skips the key schedule on every check.
    mac: Hmac<Sha256>,
    epoch: Instant,
    latest_ms: u64,
    next_serial: u64,
    /// (issued ms, serial) → highest nc used; `u32::MAX` once used without qop. Ordered
    /// by issue time so expiry and eviction pop from the front.
    used: BTreeMap<(u64, u64), u32>,
    /// Highest key evicted for space: nonces at or below it that are not in `used` may
    /// have been used, so they are answered `Stale`.
    forgotten_upto: Option<(u64, u64)>,
}

impl fmt::Debug for Nonces {
    /// Leaves out the keyed MAC so the secret never reaches a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Nonces")
            .field("config", &self.config)
            .field("tracked", &self.used.len())
            .field("next_serial", &self.next_serial)
            .finish_non_exhaustive()
    }
}

impl Nonces {
    /// With an explicit secret, for tests and for several processes that must accept
    /// each other's nonces. `epoch` is any instant at or before the first `now`.
    pub fn new(config: NonceConfig, secret: [u8; 32], epoch: Instant) -> Self {
        // HMAC zero-pads keys to the block size, so this is HMAC keyed with `secret`,
        // built without the fallible slice constructor.
        let mut key = hmac::digest::Key::<Hmac<Sha256>>::default();
        for (d, s) in key.iter_mut().zip(secret) {
            *d = s;
        }
        Nonces {
            config,
            mac: <Hmac<Sha256> as hmac::digest::KeyInit>::new(&key),
            epoch,
            latest_ms: 0,
            next_serial: 0,
            used: BTreeMap::new(),
            forgotten_upto: None,
        }
    }

    /// With a fresh random secret: the normal case, since nonces only need to survive
    /// as long as the process (a restart makes clients re-authenticate once).
    pub fn with_random_secret(config: NonceConfig, epoch: Instant) -> Self {
        let mut secret = [0u8; 32];
        random_bytes(&mut secret);
        Self::new(config, secret, epoch)
    }

    /// A new nonce for a challenge: 64 lowercase hex digits, safe in a quoted-string and
    /// unique within this `Nonces` (so single-use RFC 2069 nonces are distinguishable).
    pub fn issue(&mut self, now: Instant) -> String {
        let issued = self.observe(now);
        let serial = self.next_serial;
        self.next_serial = self.next_serial.wrapping_add(1);
        let mut raw = [0u8; NONCE_RAW];
        let (body, tag) = raw.split_at_mut(NONCE_BODY);
        let (time_part, serial_part) = body.split_at_mut(8);
        time_part.copy_from_slice(&issued.to_be_bytes());
        serial_part.copy_from_slice(&serial.to_be_bytes());
        let full = self.tag(body);
        for (d, s) in tag.iter_mut().zip(full) {
            *d = s;
        }
        hex::encode(raw)
    }

    /// Validates `nonce` and, if `Fresh`, records `nc` (`None` for RFC 2069 style, which
    /// allows one use per nonce; with qop each use needs a higher `nc`).
    ///
    /// Call it only after [`verify`] succeeded: a wrong password then does not burn a
    /// nonce count, and `Stale` (which makes clients retry silently) is only reached by
    /// someone who knows the password.
    pub fn check(&mut self, nonce: &str, nc: Option<u32>, now: Instant) -> NonceCheck {
        let Some(key) = self.authenticate(nonce) else {
            return NonceCheck::Forged;
        };
        let now_ms = self.observe(now);
        if self.expired(key.0, now_ms) {
            return NonceCheck::Stale;
        }
        self.prune(now_ms);
        if let Some(highest) = self.used.get_mut(&key) {
            return match nc {
                Some(nc) if nc > *highest => {
                    *highest = nc;
                    NonceCheck::Fresh
                }
                _ => NonceCheck::Replayed,
            };
        }
        if self.forgotten_upto.is_some_and(|w| key <= w) {
            return NonceCheck::Stale;
        }
        let recorded = match nc {
            // Counts start at 1, so 0 can never be "higher than before".
            Some(0) => return NonceCheck::Replayed,
            Some(nc) => nc,
            None => u32::MAX,
        };
        self.used.insert(key, recorded);
        while self.used.len() > self.config.max_tracked {
            let Some((evicted, _)) = self.used.pop_first() else {
                break;
            };
            self.forgotten_upto = Some(self.forgotten_upto.map_or(evicted, |w| w.max(evicted)));
        }
        NonceCheck::Fresh
    }

    /// How many nonces are remembered, for metrics.
    pub fn tracked(&self) -> usize {
        self.used.len()
    }

    /// Milliseconds since the epoch, never going backwards.
    fn observe(&mut self, now: Instant) -> u64 {
        let ms = duration_ms(now.saturating_duration_since(self.epoch));
        self.latest_ms = self.latest_ms.max(ms);
        self.latest_ms
    }

    fn expired(&self, issued_ms: u64, now_ms: u64) -> bool {
        now_ms.saturating_sub(issued_ms) > duration_ms(self.config.lifetime)
    }

    /// Drops remembered nonces that have expired: they are answered `Stale` by their
    /// time alone, so remembering them is wasted memory.
    fn prune(&mut self, now_ms: u64) {
        while let Some((&(issued, _), _)) = self.used.first_key_value() {
            if !self.expired(issued, now_ms) {
                break;
            }
            self.used.pop_first();
        }
    }

    fn tag(&self, body: &[u8]) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(NONCE_MAC_CONTEXT);
        mac.update(body);
        mac.finalize().into_bytes().into()
    }

    /// The (issue time, serial) of a nonce we issued, or `None` if we did not.
    fn authenticate(&self, nonce: &str) -> Option<(u64, u64)> {
        let mut raw = [0u8; NONCE_RAW];
        hex::decode_to_slice(nonce.as_bytes(), &mut raw).ok()?;
        let (body, tag) = raw.split_at(NONCE_BODY);
        let mut mac = self.mac.clone();
        mac.update(NONCE_MAC_CONTEXT);
        mac.update(body);
        mac.verify_truncated_left(tag).ok()?;
        let (time_part, serial_part) = body.split_at(8);
        Some((
            u64::from_be_bytes(time_part.try_into().ok()?),
            u64::from_be_bytes(serial_part.try_into().ok()?),
        ))
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The two `WWW-Authenticate`/`Proxy-Authenticate` values to send, SHA-256 first then
/// MD5, with the same realm, nonce and `qop="auth"`: offering both lets SHA-256-capable
/// clients use it while sipp 3.6 and baresip 1.0, which answer only MD5 and fail a
/// SHA-256-only challenge, still register (RFC 8760 §2.4 allows several challenges).
///
/// Quotes and backslashes in `realm`/`nonce` are escaped and control characters are
/// dropped, so a misconfigured realm cannot inject header lines.
pub fn challenge(realm: &str, nonce: &str, stale: bool) -> [String; 2] {
    let realm_q = quote(realm);
    let nonce_q = quote(nonce);
    let opaque = opaque_for(realm);
    let stale = if stale { ", stale=true" } else { "" };
    [Algorithm::Sha256, Algorithm::Md5].map(|alg| {
        format!(
            "Digest realm={realm_q}, nonce={nonce_q}, opaque=\"{opaque}\", algorithm={alg}, qop=\"auth\"{stale}"
        )
    })
}

/// A stable opaque per realm. Some clients expect the parameter; it carries no state
/// because the nonce already does, so it is derived rather than stored.
fn opaque_for(realm: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"supernode digest opaque\0");
    h.update(realm.as_bytes());
    hex::encode(h.finalize().get(..8).unwrap_or(&[]))
}

/// RFC 7230 quoted-string, minus anything that could end the header line.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECRET: [u8; 32] = [7; 32];

    fn header(pairs: &[(&str, &str)]) -> String {
        let params: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("Digest {}", params.join(", "))
    }

    #[test]
    fn rfc2617_md5_example() {
        let ha1 = ha1(
            Algorithm::Md5,
            "Mufasa",
            "testrealm@host.com",
            "Circle Of Life",
        );
        let creds = Credentials::parse(
            "Digest username=\"Mufasa\", realm=\"testrealm@host.com\", \
             nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", uri=\"/dir/index.html\", \
             qop=auth, nc=00000001, cnonce=\"0a4f113b\", \
             response=\"6629fae49393a05397450978507c4ef1\", \
             opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"",
        )
        .unwrap();
        assert_eq!(creds.algorithm, Algorithm::Md5);
        assert_eq!(
            expected_response(&creds, "GET", &ha1),
            "6629fae49393a05397450978507c4ef1"
        );
        assert!(verify(&creds, "GET", &ha1));
        assert!(verify(&creds, "GET", &ha1.to_uppercase()));
        assert!(!verify(&creds, "POST", &ha1));
        let wrong = super::ha1(
            Algorithm::Md5,
            "Mufasa",
            "testrealm@host.com",
            "Circle of Life",
        );
        assert!(!verify(&creds, "GET", &wrong));
    }

    #[test]
    fn rfc7616_sha256_example() {
        let ha1 = ha1(
            Algorithm::Sha256,
            "Mufasa",
            "http-auth@example.org",
            "Circle of Life",
        );
        let creds = Credentials::parse(
            "Digest username=\"Mufasa\", realm=\"http-auth@example.org\", \
             uri=\"/dir/index.html\", algorithm=SHA-256, \
             nonce=\"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v\", nc=00000001, \
             cnonce=\"f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ\", qop=auth, \
             response=\"753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1\", \
             opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\"",
        )
        .unwrap();
        assert_eq!(creds.algorithm, Algorithm::Sha256);
        assert_eq!(
            expected_response(&creds, "GET", &ha1),
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
        );
        assert!(verify(&creds, "GET", &ha1));
        let mut upper = creds.clone();
        upper.response = upper.response.to_uppercase();
        assert!(verify(&upper, "GET", &ha1));
        // An MD5 HA1 for a SHA-256 answer must not verify.
        let md5 = super::ha1(
            Algorithm::Md5,
            "Mufasa",
            "http-auth@example.org",
            "Circle of Life",
        );
        assert!(!verify(&creds, "GET", &md5));
    }

    #[test]
    fn rfc2069_no_qop_round_trip() {
        // RFC 2069 example with its erratum (the published response was wrong);
        // the expected values were computed independently with Python's hashlib.
        let md5 = ha1(
            Algorithm::Md5,
            "Mufasa",
            "testrealm@host.com",
            "CircleOfLife",
        );
        let creds = Credentials::parse(
            "Digest username=\"Mufasa\", realm=\"testrealm@host.com\", \
             nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", uri=\"/dir/index.html\", \
             response=\"1949323746fe6a43ef61f9606e7febea\", nc=00000001, cnonce=\"x\"",
        )
        .unwrap();
        assert_eq!(creds.qop, None);
        assert_eq!(creds.nc, None, "nc without qop must be ignored");
        assert_eq!(creds.cnonce, None);
        assert!(verify(&creds, "GET", &md5));

        let sha = ha1(Algorithm::Sha256, "alice", "example.org", "secret");
        let mut creds = Credentials {
            username: "alice".into(),
            realm: "example.org".into(),
            nonce: "abc".into(),
            uri: "sip:example.org".into(),
            response: String::new(),
            algorithm: Algorithm::Sha256,
            qop: None,
            nc: None,
            cnonce: None,
            opaque: None,
        };
        assert_eq!(
            expected_response(&creds, "REGISTER", &sha),
            "0e0ff782495febc62a1bc22bd1eff801aee9f8cf1890629f4dfbdab1a81512c0"
        );
        creds.response = expected_response(&creds, "REGISTER", &sha);
        let text = header(&[
            ("username", "\"alice\""),
            ("realm", "\"example.org\""),
            ("nonce", "\"abc\""),
            ("uri", "\"sip:example.org\""),
            ("response", &format!("\"{}\"", creds.response)),
            ("algorithm", "sha-256"),
        ]);
        let parsed = Credentials::parse(&text).unwrap();
        assert_eq!(parsed, creds);
        assert!(verify(&parsed, "REGISTER", &sha));
    }

    #[test]
    fn parse_odd_whitespace_escapes_and_order() {
        let text = "  dIgEsT\t\r\n  NC = 0000000a ,,cnonce\t=\"c\\\"n\"\r\n ,ALGORITHM=\"md5\",\
                    qop=\"auth\",uri = \"sip:bob@example.org;transport=tcp\" , \
                    Response=\"AB\", nonce=n0/+=,  username = \"a\\\\b\\c é\" ,realm=\"r, \\\"x\\\"\",\
                    opaque=\"\", foo=bar, baz=\"q,\\\"\"  ,";
        let c = Credentials::parse(text).unwrap();
        assert_eq!(c.username, "a\\bc é");
        assert_eq!(c.realm, "r, \"x\"");
        assert_eq!(c.nonce, "n0/+=");
        assert_eq!(c.uri, "sip:bob@example.org;transport=tcp");
        assert_eq!(c.response, "AB");
        assert_eq!(c.algorithm, Algorithm::Md5);
        assert_eq!(c.qop.as_deref(), Some("auth"));
        assert_eq!(c.nc, Some(10));
        assert_eq!(c.cnonce.as_deref(), Some("c\"n"));
        assert_eq!(c.opaque.as_deref(), Some(""));
    }

    #[test]
    fn parse_rejects_what_it_must() {
        let ok = [
            ("username", "\"u\""),
            ("realm", "\"r\""),
            ("nonce", "\"n\""),
            ("uri", "\"sip:r\""),
            ("response", "\"00\""),
        ];
        assert!(Credentials::parse(&header(&ok)).is_ok());
        for missing in 0..ok.len() {
            let mut v = ok.to_vec();
            let (name, _) = v.remove(missing);
            assert_eq!(
                Credentials::parse(&header(&v)),
                Err(DigestError::MissingParameter(name))
            );
        }
        let with = |extra: &[(&str, &str)]| {
            let mut v = ok.to_vec();
            v.extend_from_slice(extra);
            Credentials::parse(&header(&v))
        };
        assert_eq!(
            with(&[("Realm", "\"other\"")]),
            Err(DigestError::DuplicateParameter("Realm".into()))
        );
        assert_eq!(
            with(&[("algorithm", "MD5-sess")]),
            Err(DigestError::UnsupportedAlgorithm("MD5-sess".into()))
        );
        assert_eq!(
            with(&[("algorithm", "SHA-256-sess")]),
            Err(DigestError::UnsupportedAlgorithm("SHA-256-sess".into()))
        );
        assert_eq!(
            with(&[("qop", "auth-int"), ("nc", "00000001"), ("cnonce", "\"c\"")]),
            Err(DigestError::UnsupportedQop("auth-int".into()))
        );
        assert_eq!(
            with(&[("qop", "auth"), ("cnonce", "\"c\"")]),
            Err(DigestError::MissingParameter("nc"))
        );
        assert_eq!(
            with(&[("qop", "auth"), ("nc", "00000001")]),
            Err(DigestError::MissingParameter("cnonce"))
        );
        for bad in ["1", "+0000001", "000000001", "0000000g", "0000000A"] {
            assert_eq!(
                with(&[("qop", "auth"), ("nc", bad), ("cnonce", "\"c\"")]),
                Err(DigestError::InvalidNonceCount(bad.into()))
            );
        }
        assert_eq!(
            with(&[("userhash", "TRUE")]),
            Err(DigestError::Unsupported("userhash"))
        );
        assert!(with(&[("userhash", "false")]).is_ok());
        assert_eq!(
            Credentials::parse("Basic dXNlcjpwYXNz"),
            Err(DigestError::NotDigest)
        );
        assert_eq!(
            Credentials::parse("Digestive username=\"u\""),
            Err(DigestError::NotDigest)
        );
        assert_eq!(Credentials::parse(""), Err(DigestError::NotDigest));
        for broken in [
            "Digest username=\"u",
            "Digest username=\"u\\",
            "Digest username",
            "Digest username=",
            "Digest =\"u\"",
            "Digest username=\"u\" realm=\"r\"",
            "Digest,username=\"u\"",
        ] {
            assert!(
                matches!(Credentials::parse(broken), Err(DigestError::Syntax { .. })),
                "{broken:?} -> {:?}",
                Credentials::parse(broken)
            );
        }
    }

    #[test]
    fn algorithm_names() {
        for (s, a) in [
            ("MD5", Algorithm::Md5),
            ("md5", Algorithm::Md5),
            ("SHA-256", Algorithm::Sha256),
            ("sha-256", Algorithm::Sha256),
        ] {
            assert_eq!(s.parse::<Algorithm>(), Ok(a));
        }
        for s in ["SHA256", "SHA-512-256", "md5-sess", ""] {
            assert!(s.parse::<Algorithm>().is_err(), "{s}");
        }
        assert_eq!(Algorithm::Sha256.to_string(), "SHA-256");
        assert_eq!(ha1(Algorithm::Md5, "u", "r", "p").len(), 32);
        assert_eq!(ha1(Algorithm::Sha256, "u", "r", "p").len(), 64);
    }

    fn config(lifetime_s: u64, max_tracked: usize) -> NonceConfig {
        NonceConfig {
            lifetime: Duration::from_secs(lifetime_s),
            max_tracked,
        }
    }

    #[test]
    fn nonce_lifecycle() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut nonces = Nonces::new(NonceConfig::default(), SECRET, t0);
        let n = nonces.issue(at(10));
        assert_eq!(n.len(), 64);
        assert!(n
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(n, nonces.issue(at(10)), "nonces are unique");

        assert_eq!(nonces.check(&n, Some(1), at(11)), NonceCheck::Fresh);
        assert_eq!(nonces.check(&n, Some(1), at(12)), NonceCheck::Replayed);
        assert_eq!(nonces.check(&n, Some(3), at(12)), NonceCheck::Fresh);
        assert_eq!(nonces.check(&n, Some(2), at(13)), NonceCheck::Replayed);
        assert_eq!(
            nonces.check(&n.to_uppercase(), Some(3), at(13)),
            NonceCheck::Replayed,
            "case variants share replay state"
        );
        assert_eq!(nonces.check(&n, None, at(13)), NonceCheck::Replayed);
        assert_eq!(nonces.check(&n, Some(4), at(10 + 300)), NonceCheck::Fresh);
        assert_eq!(nonces.check(&n, Some(5), at(10 + 301)), NonceCheck::Stale);
        // Handing in an older instant later must not revive it.
        assert_eq!(nonces.check(&n, Some(6), at(20)), NonceCheck::Stale);

        let m = nonces.issue(at(400));
        assert_eq!(nonces.check(&m, Some(0), at(400)), NonceCheck::Replayed);
        assert_eq!(nonces.check(&m, Some(1), at(400)), NonceCheck::Fresh);
    }

    #[test]
    fn no_qop_nonce_is_single_use() {
        let t0 = Instant::now();
        let mut nonces = Nonces::new(NonceConfig::default(), SECRET, t0);
        let n = nonces.issue(t0);
        assert_eq!(nonces.check(&n, None, t0), NonceCheck::Fresh);
        assert_eq!(nonces.check(&n, None, t0), NonceCheck::Replayed);
        assert_eq!(nonces.check(&n, Some(1), t0), NonceCheck::Replayed);
        assert_eq!(nonces.check(&n, Some(u32::MAX), t0), NonceCheck::Replayed);
    }

    #[test]
    fn forged_nonces() {
        let t0 = Instant::now();
        let mut nonces = Nonces::new(NonceConfig::default(), SECRET, t0);
        let n = nonces.issue(t0);
        for i in 0..n.len() {
            let mut bytes = n.clone().into_bytes();
            bytes[i] = if bytes[i] == b'0' { b'1' } else { b'0' };
            let forged = String::from_utf8(bytes).unwrap();
            assert_eq!(
                nonces.check(&forged, Some(1), t0),
                NonceCheck::Forged,
                "{i}"
            );
        }
        for junk in [
            "",
            "00",
            &n[..62],
            &format!("{n}00"),
            &format!("{}zz", &n[..62]),
        ] {
            assert_eq!(nonces.check(junk, None, t0), NonceCheck::Forged);
        }
        let mut other = Nonces::new(NonceConfig::default(), [8; 32], t0);
        let foreign = other.issue(t0);
        assert_eq!(nonces.check(&foreign, Some(1), t0), NonceCheck::Forged);
        let mut random = Nonces::with_random_secret(NonceConfig::default(), t0);
        assert_eq!(random.check(&n, Some(1), t0), NonceCheck::Forged);
        let r = random.issue(t0);
        assert_eq!(random.check(&r, Some(1), t0), NonceCheck::Fresh);
        assert_eq!(nonces.check(&r, Some(1), t0), NonceCheck::Forged);
        // Same secret (another process sharing it) accepts.
        let mut twin = Nonces::new(NonceConfig::default(), SECRET, t0);
        assert_eq!(twin.check(&n, Some(1), t0), NonceCheck::Fresh);
    }

    #[test]
    fn table_cap_evicts_oldest() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut nonces = Nonces::new(config(300, 2), SECRET, t0);
        let a = nonces.issue(at(1));
        let b = nonces.issue(at(2));
        let c = nonces.issue(at(3));
        let d = nonces.issue(at(4));
        assert_eq!(nonces.check(&b, Some(1), at(5)), NonceCheck::Fresh);
        assert_eq!(nonces.check(&c, Some(1), at(5)), NonceCheck::Fresh);
        assert_eq!(nonces.tracked(), 2);
        // `a` is older than everything tracked but has not been forgotten yet.
        assert_eq!(nonces.check(&a, Some(1), at(5)), NonceCheck::Fresh);
        assert_eq!(nonces.tracked(), 2, "a was inserted and evicted at once");
        assert_eq!(nonces.check(&a, Some(2), at(5)), NonceCheck::Stale);
        assert_eq!(nonces.check(&d, Some(1), at(6)), NonceCheck::Fresh);
        assert_eq!(nonces.tracked(), 2);
        // b (oldest) was evicted: never Fresh again, so no replay window opens.
        assert_eq!(nonces.check(&b, Some(1), at(6)), NonceCheck::Stale);
        assert_eq!(nonces.check(&b, Some(9), at(6)), NonceCheck::Stale);
        // c and d are still remembered.
        assert_eq!(nonces.check(&c, Some(1), at(6)), NonceCheck::Replayed);
        assert_eq!(nonces.check(&d, Some(1), at(6)), NonceCheck::Replayed);
        assert_eq!(nonces.check(&d, Some(2), at(6)), NonceCheck::Fresh);
    }

    #[test]
    fn expired_entries_are_forgotten() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut nonces = Nonces::new(config(60, 100), SECRET, t0);
        for i in 0..10 {
            let n = nonces.issue(at(i));
            assert_eq!(nonces.check(&n, None, at(i)), NonceCheck::Fresh);
        }
        assert_eq!(nonces.tracked(), 10);
        let late = nonces.issue(at(65));
        assert_eq!(nonces.check(&late, Some(1), at(65)), NonceCheck::Fresh);
        assert_eq!(nonces.tracked(), 1 + 5, "issued at 0..=4 expired by 65");
    }

    #[test]
    fn zero_capacity_still_blocks_replays() {
        let t0 = Instant::now();
        let mut nonces = Nonces::new(config(60, 0), SECRET, t0);
        let n = nonces.issue(t0);
        assert_eq!(nonces.check(&n, Some(1), t0), NonceCheck::Fresh);
        assert_eq!(nonces.check(&n, Some(2), t0), NonceCheck::Stale);
        assert_eq!(nonces.tracked(), 0);
    }

    fn challenge_params(value: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for_each_param(value, |k, v| {
            out.push((k.to_ascii_lowercase(), v.into_owned()));
            Ok(())
        })
        .unwrap();
        out
    }

    fn get<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn challenges_parse_with_our_rules() {
        let t0 = Instant::now();
        let mut nonces = Nonces::new(NonceConfig::default(), SECRET, t0);
        let nonce = nonces.issue(t0);
        let [sha, md5] = challenge("example.org", &nonce, false);
        assert!(sha.starts_with("Digest realm=\"example.org\", nonce=\""));
        for (value, alg) in [(&sha, "SHA-256"), (&md5, "MD5")] {
            let p = challenge_params(value);
            assert_eq!(get(&p, "realm"), Some("example.org"));
            assert_eq!(get(&p, "nonce"), Some(nonce.as_str()));
            assert_eq!(get(&p, "algorithm"), Some(alg));
            assert_eq!(get(&p, "qop"), Some("auth"));
            assert_eq!(get(&p, "opaque").map(str::len), Some(16));
            assert_eq!(get(&p, "stale"), None);
            assert!(!value.contains('\r') && !value.contains('\n'));
        }
        assert_eq!(
            get(&challenge_params(&sha), "opaque"),
            get(&challenge_params(&md5), "opaque")
        );

        let [sha, md5] = challenge("we\"ird\\ \r\nX-Injected: 1", &nonce, true);
        for value in [&sha, &md5] {
            let p = challenge_params(value);
            assert_eq!(get(&p, "realm"), Some("we\"ird\\ X-Injected: 1"));
            assert_eq!(get(&p, "stale"), Some("true"));
            assert!(!value.contains('\r') && !value.contains('\n'));
        }
    }

    #[test]
    fn challenge_answer_end_to_end() {
        let t0 = Instant::now();
        let mut nonces = Nonces::new(NonceConfig::default(), SECRET, t0);
        let nonce = nonces.issue(t0);
        let [sha, _] = challenge("example.org", &nonce, false);
        let p = challenge_params(&sha);
        let stored = ha1(Algorithm::Sha256, "bob", "example.org", "pw");
        let mut creds = Credentials {
            username: "bob".into(),
            realm: get(&p, "realm").unwrap().into(),
            nonce: get(&p, "nonce").unwrap().into(),
            uri: "sip:example.org".into(),
            response: String::new(),
            algorithm: get(&p, "algorithm").unwrap().parse().unwrap(),
            qop: Some("auth".into()),
            nc: Some(1),
            cnonce: Some("xyz".into()),
            opaque: get(&p, "opaque").map(Into::into),
        };
        creds.response = expected_response(&creds, "REGISTER", &stored);
        let text = format!(
            "Digest username=\"bob\", realm=\"{}\", nonce=\"{}\", uri=\"sip:example.org\", \
             response=\"{}\", algorithm=SHA-256, qop=auth, nc=00000001, cnonce=\"xyz\", \
             opaque=\"{}\"",
            creds.realm,
            creds.nonce,
            creds.response,
            creds.opaque.as_deref().unwrap()
        );
        let parsed = Credentials::parse(&text).unwrap();
        assert_eq!(parsed, creds);
        assert!(verify(&parsed, "REGISTER", &stored));
        assert_eq!(
            nonces.check(&parsed.nonce, parsed.nc, t0),
            NonceCheck::Fresh
        );
        assert_eq!(
            nonces.check(&parsed.nonce, parsed.nc, t0),
            NonceCheck::Replayed
        );
    }

    #[test]
    fn dummy_ha1_matches_shape_and_never_verifies_guesses() {
        for alg in [Algorithm::Md5, Algorithm::Sha256] {
            let dummy = dummy_ha1(alg);
            assert_eq!(dummy.len(), ha1(alg, "u", "r", "p").len());
            assert!(dummy.bytes().all(|b| b.is_ascii_hexdigit()));
            assert_eq!(dummy, dummy_ha1(alg), "stable within the process");
            let mut creds = Credentials::parse(&header(&[
                ("username", "\"ghost\""),
                ("realm", "\"r\""),
                ("nonce", "\"n\""),
                ("uri", "\"sip:r\""),
                ("response", "\"00\""),
                ("algorithm", alg.as_str()),
            ]))
            .unwrap();
            for guess in [
                ha1(alg, "ghost", "r", ""),
                ha1(alg, "", "", ""),
                "0".repeat(64),
            ] {
                creds.response = expected_response(&creds, "REGISTER", &guess);
                assert!(!verify(&creds, "REGISTER", dummy));
            }
            creds.response = expected_response(&creds, "REGISTER", dummy);
            assert!(
                verify(&creds, "REGISTER", dummy),
                "same code path as real HA1"
            );
        }
        assert_ne!(dummy_ha1(Algorithm::Sha256), "0".repeat(64));
    }

    #[test]
    fn verify_rejects_malformed_responses() {
        let stored = ha1(Algorithm::Md5, "u", "r", "p");
        let mut creds = Credentials::parse(&header(&[
            ("username", "\"u\""),
            ("realm", "\"r\""),
            ("nonce", "\"n\""),
            ("uri", "\"sip:r\""),
            ("response", "\"00\""),
        ]))
        .unwrap();
        let good = expected_response(&creds, "REGISTER", &stored);
        creds.response = good.clone();
        assert!(verify(&creds, "REGISTER", &stored));
        for bad in [
            String::new(),
            good[..30].to_owned(),
            format!("{good}00"),
            format!("{}zz", &good[..30]),
            format!("{good:0>64}"),
        ] {
            creds.response = bad;
            assert!(!verify(&creds, "REGISTER", &stored));
        }
    }

    /// How a client might spell a token value: quoted or not, in any case.
    fn spelled(value: &'static str) -> impl Strategy<Value = String> {
        (any::<bool>(), any::<bool>()).prop_map(move |(quoted, lower)| {
            let value = if lower {
                value.to_ascii_lowercase()
            } else {
                value.to_owned()
            };
            if quoted {
                quote(&value)
            } else {
                value
            }
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn parse_never_panics(s in ".{0,200}") {
            let _ = Credentials::parse(&s);
            let _ = Credentials::parse(&format!("Digest {s}"));
        }

        #[test]
        fn parse_never_panics_on_near_valid_bytes(
            s in proptest::collection::vec(
                prop_oneof![
                    Just("Digest ".to_owned()), Just("\"".to_owned()), Just("\\".to_owned()),
                    Just(",".to_owned()), Just("=".to_owned()), Just(" ".to_owned()),
                    Just("username".to_owned()), Just("qop".to_owned()), Just("nc".to_owned()),
                    Just("é".to_owned()), Just("\r\n".to_owned()), "[a-z0-9]{1,4}",
                ],
                0..40,
            ).prop_map(|v| v.concat())
        ) {
            if let Ok(c) = Credentials::parse(&s) {
                let _ = verify(&c, "REGISTER", &s);
                let _ = expected_response(&c, "", "");
            }
        }

        #[test]
        fn quoted_values_round_trip(
            username in "\\PC{0,30}",
            realm in "[ -~]{0,30}",
            ws in proptest::collection::vec("[ \t]{0,3}(\r\n[ \t])?", 12),
            upper in any::<bool>(),
            reverse in any::<bool>(),
            alg in spelled("SHA-256"),
        ) {
            let mut params = [
                ("username", quote(&username)),
                ("realm", quote(&realm)),
                ("nonce", "\"abc\"".to_owned()),
                ("uri", "\"sip:x\"".to_owned()),
                ("response", "\"00ff\"".to_owned()),
                ("algorithm", alg),
            ];
            if reverse {
                params.reverse();
            }
            let mut text = format!("{}Digest ", ws[0]);
            for (i, (k, v)) in params.iter().enumerate() {
                let k = if upper { k.to_ascii_uppercase() } else { (*k).to_owned() };
                text.push_str(&format!("{}{k}{}={}{v}{},", ws[i + 1], ws[i + 2], ws[i + 3], ws[i + 4]));
            }
            let c = Credentials::parse(&text).unwrap();
            // quote() drops control characters, so compare against that.
            let strip = |s: &str| s.chars().filter(|c| *c == '\t' || !c.is_control()).collect::<String>();
            prop_assert_eq!(c.username, strip(&username));
            prop_assert_eq!(c.realm, strip(&realm));
            prop_assert_eq!(c.algorithm, Algorithm::Sha256);
        }

        #[test]
        fn check_never_panics(nonce in ".{0,80}", nc in proptest::option::of(any::<u32>())) {
            let t0 = Instant::now();
            let mut nonces = Nonces::new(config(1, 1), SECRET, t0);
            prop_assert_eq!(nonces.check(&nonce, nc, t0), NonceCheck::Forged);
        }
    }
}
