//! STUN messages (RFC 8489) and TURN ChannelData frames (RFC 8656 §12.4).
//!
//! Decoding is zero-copy: [`Message::parse`] checks the framing once and then hands
//! out attribute values as slices of the received datagram. Encoding goes through
//! [`MessageWriter`], which writes into a caller-owned `Vec<u8>` so a warm buffer is
//! reused for every response without allocating.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;

use crate::Error;

/// The fixed value in every RFC 5389/8489 header; it tells STUN from RTP and
/// ChannelData on a shared port and is the XOR key for addresses.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// Size of the STUN header.
pub const HEADER_LEN: usize = 20;
/// XORed into the CRC-32 so FINGERPRINT differs from other protocols' CRCs.
const FINGERPRINT_XOR: u32 = 0x5354_554e;

/// Attribute type numbers (RFC 8489 §18.3, RFC 8656 §18), named as the RFCs name them.
pub mod attr {
    /// MAPPED-ADDRESS.
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    /// USERNAME.
    pub const USERNAME: u16 = 0x0006;
    /// MESSAGE-INTEGRITY (HMAC-SHA1).
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    /// ERROR-CODE.
    pub const ERROR_CODE: u16 = 0x0009;
    /// UNKNOWN-ATTRIBUTES.
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    /// CHANNEL-NUMBER.
    pub const CHANNEL_NUMBER: u16 = 0x000C;
    /// LIFETIME.
    pub const LIFETIME: u16 = 0x000D;
    /// XOR-PEER-ADDRESS.
    pub const XOR_PEER_ADDRESS: u16 = 0x0012;
    /// DATA.
    pub const DATA: u16 = 0x0013;
    /// REALM.
    pub const REALM: u16 = 0x0014;
    /// NONCE.
    pub const NONCE: u16 = 0x0015;
    /// XOR-RELAYED-ADDRESS.
    pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    /// REQUESTED-ADDRESS-FAMILY.
    pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
    /// EVEN-PORT.
    pub const EVEN_PORT: u16 = 0x0018;
    /// REQUESTED-TRANSPORT.
    pub const REQUESTED_TRANSPORT: u16 = 0x0019;
    /// DONT-FRAGMENT.
    pub const DONT_FRAGMENT: u16 = 0x001A;
    /// MESSAGE-INTEGRITY-SHA256.
    pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
    /// PASSWORD-ALGORITHM.
    pub const PASSWORD_ALGORITHM: u16 = 0x001D;
    /// XOR-MAPPED-ADDRESS.
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    /// RESERVATION-TOKEN.
    pub const RESERVATION_TOKEN: u16 = 0x0022;
    /// PRIORITY (ICE, RFC 8445), known so ICE checks are not refused with 420.
    pub const PRIORITY: u16 = 0x0024;
    /// USE-CANDIDATE (ICE).
    pub const USE_CANDIDATE: u16 = 0x0025;
    /// PASSWORD-ALGORITHMS.
    pub const PASSWORD_ALGORITHMS: u16 = 0x8002;
    /// SOFTWARE.
    pub const SOFTWARE: u16 = 0x8022;
    /// FINGERPRINT.
    pub const FINGERPRINT: u16 = 0x8028;

    /// Whether this server understands a comprehension-required attribute; the
    /// others make a request fail with 420 (RFC 8489 §6.3.1).
    pub fn is_known(t: u16) -> bool {
        t >= 0x8000
            || matches!(
                t,
                MAPPED_ADDRESS
                    | USERNAME
                    | MESSAGE_INTEGRITY
                    | ERROR_CODE
                    | UNKNOWN_ATTRIBUTES
                    | CHANNEL_NUMBER
                    | LIFETIME
                    | XOR_PEER_ADDRESS
                    | DATA
                    | REALM
                    | NONCE
                    | XOR_RELAYED_ADDRESS
                    | REQUESTED_ADDRESS_FAMILY
                    | EVEN_PORT
                    | REQUESTED_TRANSPORT
                    | DONT_FRAGMENT
                    | MESSAGE_INTEGRITY_SHA256
                    | PASSWORD_ALGORITHM
                    | XOR_MAPPED_ADDRESS
                    | RESERVATION_TOKEN
                    | PRIORITY
                    | USE_CANDIDATE
            )
    }
}

/// The STUN/TURN methods this crate speaks (RFC 8489 §18.2, RFC 8656 §17).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// Binding: reflexive address discovery and keepalive.
    Binding,
    /// Allocate a relayed transport address.
    Allocate,
    /// Refresh (or delete, lifetime 0) an allocation.
    Refresh,
    /// Send indication: client data toward a peer.
    Send,
    /// Data indication: peer data toward the client.
    Data,
    /// Install permissions for peer IPs.
    CreatePermission,
    /// Bind a channel number to a peer transport address.
    ChannelBind,
    /// Any other method number, kept so the server can answer 400 to it.
    Other(u16),
}

impl Method {
    /// The 12-bit method number.
    pub fn number(self) -> u16 {
        match self {
            Method::Binding => 0x001,
            Method::Allocate => 0x003,
            Method::Refresh => 0x004,
            Method::Send => 0x006,
            Method::Data => 0x007,
            Method::CreatePermission => 0x008,
            Method::ChannelBind => 0x009,
            Method::Other(n) => n & 0x0FFF,
        }
    }

    fn from_number(n: u16) -> Method {
        match n {
            0x001 => Method::Binding,
            0x003 => Method::Allocate,
            0x004 => Method::Refresh,
            0x006 => Method::Send,
            0x007 => Method::Data,
            0x008 => Method::CreatePermission,
            0x009 => Method::ChannelBind,
            n => Method::Other(n),
        }
    }
}

/// The message class, packed into the type field beside the method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// Expects a response.
    Request,
    /// Fire-and-forget.
    Indication,
    /// Success response.
    Success,
    /// Error response (carries ERROR-CODE).
    Error,
}

/// Packs method and class into the 14-bit message type (RFC 8489 §5).
fn message_type(method: Method, class: Class) -> u16 {
    let m = method.number();
    let c: u16 = match class {
        Class::Request => 0b00,
        Class::Indication => 0b01,
        Class::Success => 0b10,
        Class::Error => 0b11,
    };
    (m & 0x000F) | ((m & 0x0070) << 1) | ((m & 0x0F80) << 2) | ((c & 1) << 4) | ((c & 2) << 7)
}

fn split_type(t: u16) -> (Method, Class) {
    let m = (t & 0x000F) | ((t >> 1) & 0x0070) | ((t >> 2) & 0x0F80);
    let class = match ((t >> 4) & 1) | ((t >> 7) & 2) {
        0 => Class::Request,
        1 => Class::Indication,
        2 => Class::Success,
        _ => Class::Error,
    };
    (Method::from_number(m), class)
}

/// The 96-bit transaction id that pairs a response with its request.
pub type TransactionId = [u8; 12];

/// One attribute as it sits in the datagram: its type and value, padding excluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawAttribute<'a> {
    /// Attribute type number (see [`attr`]).
    pub kind: u16,
    /// The value bytes, borrowed from the datagram.
    pub value: &'a [u8],
}

/// A received STUN message whose framing has been checked; attributes are read
/// lazily from the borrowed bytes.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    bytes: &'a [u8],
    method: Method,
    class: Class,
    /// Offset of MESSAGE-INTEGRITY, if present: what it covers ends there.
    integrity: Option<usize>,
    /// Offset of MESSAGE-INTEGRITY-SHA256, if present.
    integrity_sha256: Option<usize>,
    /// Whether FINGERPRINT was present (and verified).
    fingerprint: bool,
    /// Attributes at or past this offset are ignored (those after the integrity ones,
    /// RFC 8489 §14.5).
    attributes_end: usize,
}

/// Reads a big-endian u16 at `at`, if the bytes are there.
fn be16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([s[0], s[1]]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn padded(len: usize) -> usize {
    (len + 3) & !3
}

/// Whether these bytes look like a STUN message (first two bits zero, magic cookie),
/// so a driver can tell STUN from ChannelData on a shared port without parsing.
pub fn is_stun(bytes: &[u8]) -> bool {
    bytes.len() >= HEADER_LEN && bytes[0] & 0xC0 == 0 && be32(bytes, 4) == Some(MAGIC_COOKIE)
}

impl<'a> Message<'a> {
    /// Checks header, length, attribute framing and (if present) FINGERPRINT.
    ///
    /// Bytes after the announced length are ignored, as a stream framer may hand
    /// over more than one message.
    pub fn parse(bytes: &'a [u8]) -> Result<Message<'a>, Error> {
        if bytes.len() < HEADER_LEN {
            return Err(Error::Truncated {
                needed: HEADER_LEN,
                had: bytes.len(),
            });
        }
        if !is_stun(bytes) {
            return Err(Error::NotStun);
        }
        let t = be16(bytes, 0).ok_or(Error::NotStun)?;
        let len = usize::from(be16(bytes, 2).ok_or(Error::NotStun)?);
        if len % 4 != 0 {
            return Err(Error::BadLength(len));
        }
        let total = HEADER_LEN + len;
        if bytes.len() < total {
            return Err(Error::Truncated {
                needed: total,
                had: bytes.len(),
            });
        }
        let bytes = &bytes[..total];
        let (method, class) = split_type(t);
        let mut msg = Message {
            bytes,
            method,
            class,
            integrity: None,
            integrity_sha256: None,
            fingerprint: false,
            attributes_end: total,
        };
        let mut at = HEADER_LEN;
        let mut fingerprint_at = None;
        while at < total {
            let kind = be16(bytes, at).ok_or(Error::Truncated {
                needed: at + 4,
                had: total,
            })?;
            let vlen = usize::from(be16(bytes, at + 2).ok_or(Error::Truncated {
                needed: at + 4,
                had: total,
            })?);
            let next = at + 4 + padded(vlen);
            if next > total {
                return Err(Error::AttributeOverrun(kind));
            }
            if fingerprint_at.is_some() {
                return Err(Error::FingerprintNotLast);
            }
            match kind {
                attr::MESSAGE_INTEGRITY
                    if msg.integrity.is_none() && msg.integrity_sha256.is_none() =>
                {
                    if vlen != 20 {
                        return Err(Error::BadAttribute(kind));
                    }
                    msg.integrity = Some(at);
                    msg.attributes_end = next;
                }
                attr::MESSAGE_INTEGRITY_SHA256 if msg.integrity_sha256.is_none() => {
                    if !(16..=32).contains(&vlen) || vlen % 4 != 0 {
                        return Err(Error::BadAttribute(kind));
                    }
                    msg.integrity_sha256 = Some(at);
                    msg.attributes_end = next;
                }
                attr::FINGERPRINT => {
                    if vlen != 4 {
                        return Err(Error::BadAttribute(kind));
                    }
                    fingerprint_at = Some(at);
                }
                _ => {}
            }
            at = next;
        }
        if let Some(fp) = fingerprint_at {
            let want = be32(bytes, fp + 4).ok_or(Error::BadAttribute(attr::FINGERPRINT))?;
            if crc32fast::hash(&bytes[..fp]) ^ FINGERPRINT_XOR != want {
                return Err(Error::BadFingerprint);
            }
            msg.fingerprint = true;
            if msg.integrity.is_none() && msg.integrity_sha256.is_none() {
                msg.attributes_end = fp;
            }
        }
        Ok(msg)
    }

    /// The method.
    pub fn method(&self) -> Method {
        self.method
    }

    /// The class.
    pub fn class(&self) -> Class {
        self.class
    }

    /// The transaction id.
    pub fn transaction_id(&self) -> TransactionId {
        let mut t = [0u8; 12];
        t.copy_from_slice(&self.bytes[8..20]);
        t
    }

    /// The whole message (header and attributes), as received.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Whether FINGERPRINT was present (it verified, or parsing would have failed).
    pub fn has_fingerprint(&self) -> bool {
        self.fingerprint
    }

    /// Whether MESSAGE-INTEGRITY or MESSAGE-INTEGRITY-SHA256 is present.
    pub fn has_integrity(&self) -> bool {
        self.integrity.is_some() || self.integrity_sha256.is_some()
    }

    /// Whether the message is protected with MESSAGE-INTEGRITY-SHA256 (so a reply
    /// should use it too).
    pub fn uses_sha256(&self) -> bool {
        self.integrity_sha256.is_some()
    }

    /// Attributes before the integrity attributes (later ones are ignored, RFC 8489
    /// §14.5), integrity and FINGERPRINT themselves excluded.
    pub fn attributes(&self) -> Attributes<'a> {
        Attributes {
            bytes: self.bytes,
            at: HEADER_LEN,
            end: self.attributes_end,
        }
    }

    /// The first attribute of this type.
    pub fn get(&self, kind: u16) -> Option<&'a [u8]> {
        self.attributes().find(|a| a.kind == kind).map(|a| a.value)
    }

    /// The first comprehension-required attribute this server does not know.
    pub fn unknown_required(&self) -> impl Iterator<Item = u16> + 'a {
        self.attributes()
            .map(|a| a.kind)
            .filter(|&k| !attr::is_known(k))
    }

    /// A UTF-8 text attribute (USERNAME, REALM, NONCE, SOFTWARE).
    pub fn text(&self, kind: u16) -> Result<Option<&'a str>, Error> {
        match self.get(kind) {
            None => Ok(None),
            Some(v) => std::str::from_utf8(v)
                .map(Some)
                .map_err(|_| Error::BadAttribute(kind)),
        }
    }

    /// A 32-bit attribute (LIFETIME).
    pub fn u32_attr(&self, kind: u16) -> Result<Option<u32>, Error> {
        match self.get(kind) {
            None => Ok(None),
            Some(v) if v.len() == 4 => Ok(be32(v, 0)),
            Some(_) => Err(Error::BadAttribute(kind)),
        }
    }

    /// An XOR-encoded address attribute (XOR-MAPPED/PEER/RELAYED-ADDRESS).
    pub fn xor_address(&self, kind: u16) -> Result<Option<SocketAddr>, Error> {
        match self.get(kind) {
            None => Ok(None),
            Some(v) => decode_address(v, Some(&self.transaction_id()), kind).map(Some),
        }
    }

    /// MAPPED-ADDRESS, the plain (RFC 3489) form.
    pub fn mapped_address(&self) -> Result<Option<SocketAddr>, Error> {
        match self.get(attr::MAPPED_ADDRESS) {
            None => Ok(None),
            Some(v) => decode_address(v, None, attr::MAPPED_ADDRESS).map(Some),
        }
    }

    /// Every XOR-PEER-ADDRESS (CreatePermission may carry several).
    pub fn xor_peer_addresses(&self) -> impl Iterator<Item = Result<SocketAddr, Error>> + 'a {
        let tid = self.transaction_id();
        self.attributes()
            .filter(|a| a.kind == attr::XOR_PEER_ADDRESS)
            .map(move |a| decode_address(a.value, Some(&tid), attr::XOR_PEER_ADDRESS))
    }

    /// ERROR-CODE as (code, reason).
    pub fn error_code(&self) -> Result<Option<(u16, &'a str)>, Error> {
        match self.get(attr::ERROR_CODE) {
            None => Ok(None),
            Some(v) if v.len() >= 4 => {
                let code = u16::from(v[2] & 0x07) * 100 + u16::from(v[3]);
                let reason = std::str::from_utf8(&v[4..])
                    .map_err(|_| Error::BadAttribute(attr::ERROR_CODE))?;
                Ok(Some((code, reason)))
            }
            Some(_) => Err(Error::BadAttribute(attr::ERROR_CODE)),
        }
    }

    /// The attribute types listed in UNKNOWN-ATTRIBUTES.
    pub fn unknown_attributes(&self) -> impl Iterator<Item = u16> + 'a {
        let v = self.get(attr::UNKNOWN_ATTRIBUTES).unwrap_or(&[]);
        v.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]]))
    }

    /// Checks MESSAGE-INTEGRITY-SHA256 if present, else MESSAGE-INTEGRITY, with `key`
    /// (the long-term key MD5(username:realm:password), or the short-term password).
    pub fn verify_integrity(&self, key: &[u8]) -> Result<(), Error> {
        if let Some(at) = self.integrity_sha256 {
            let vlen = usize::from(be16(self.bytes, at + 2).ok_or(Error::NoIntegrity)?);
            let want = &self.bytes[at + 4..at + 4 + vlen];
            let mut mac =
                <Hmac<Sha256> as Mac>::new_from_slice(key).map_err(|_| Error::IntegrityMismatch)?;
            self.feed_covered(at, 4 + vlen, |d| mac.update(d));
            return mac
                .verify_truncated_left(want)
                .map_err(|_| Error::IntegrityMismatch);
        }
        if let Some(at) = self.integrity {
            let want = &self.bytes[at + 4..at + 24];
            let mut mac =
                <Hmac<Sha1> as Mac>::new_from_slice(key).map_err(|_| Error::IntegrityMismatch)?;
            self.feed_covered(at, 24, |d| mac.update(d));
            return mac.verify_slice(want).map_err(|_| Error::IntegrityMismatch);
        }
        Err(Error::NoIntegrity)
    }

    /// Feeds the bytes an integrity attribute at `at` covers, with the header length
    /// rewritten to end just after that attribute (RFC 8489 §14.5).
    fn feed_covered(&self, at: usize, attr_len: usize, mut f: impl FnMut(&[u8])) {
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&self.bytes[..HEADER_LEN]);
        let len = (at + attr_len - HEADER_LEN) as u16;
        header[2..4].copy_from_slice(&len.to_be_bytes());
        f(&header);
        f(&self.bytes[HEADER_LEN..at]);
    }
}

/// Iterator over a message's attributes (see [`Message::attributes`]).
#[derive(Debug, Clone)]
pub struct Attributes<'a> {
    bytes: &'a [u8],
    at: usize,
    end: usize,
}

impl<'a> Iterator for Attributes<'a> {
    type Item = RawAttribute<'a>;
    fn next(&mut self) -> Option<RawAttribute<'a>> {
        loop {
            if self.at + 4 > self.end {
                return None;
            }
            let kind = be16(self.bytes, self.at)?;
            let len = usize::from(be16(self.bytes, self.at + 2)?);
            let value = self.bytes.get(self.at + 4..self.at + 4 + len)?;
            self.at += 4 + padded(len);
            if matches!(
                kind,
                attr::MESSAGE_INTEGRITY | attr::MESSAGE_INTEGRITY_SHA256 | attr::FINGERPRINT
            ) {
                continue;
            }
            return Some(RawAttribute { kind, value });
        }
    }
}

fn decode_address(v: &[u8], tid: Option<&TransactionId>, kind: u16) -> Result<SocketAddr, Error> {
    let bad = Error::BadAttribute(kind);
    let family = *v.get(1).ok_or(bad.clone())?;
    let mut port = be16(v, 2).ok_or(bad.clone())?;
    if tid.is_some() {
        port ^= (MAGIC_COOKIE >> 16) as u16;
    }
    let ip = match (family, v.len()) {
        (0x01, 8) => {
            let mut o = [v[4], v[5], v[6], v[7]];
            if tid.is_some() {
                for (b, k) in o.iter_mut().zip(MAGIC_COOKIE.to_be_bytes()) {
                    *b ^= k;
                }
            }
            IpAddr::V4(Ipv4Addr::from(o))
        }
        (0x02, 20) => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&v[4..20]);
            if let Some(tid) = tid {
                let key = xor_key_v6(tid);
                for (b, k) in o.iter_mut().zip(key) {
                    *b ^= k;
                }
            }
            IpAddr::V6(Ipv6Addr::from(o))
        }
        _ => return Err(bad),
    };
    Ok(SocketAddr::new(ip, port))
}

fn xor_key_v6(tid: &TransactionId) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    key[4..].copy_from_slice(tid);
    key
}

/// Builds one STUN message in a caller-owned buffer.
///
/// `new` clears the buffer and writes the header; each `add_*` appends an attribute
/// and keeps the header length current, so integrity and FINGERPRINT (which cover
/// everything before them) can be appended last.
#[derive(Debug)]
pub struct MessageWriter<'b> {
    buf: &'b mut Vec<u8>,
    tid: TransactionId,
}

impl<'b> MessageWriter<'b> {
    /// Starts a message of this method and class in `buf` (cleared first).
    pub fn new(buf: &'b mut Vec<u8>, method: Method, class: Class, tid: TransactionId) -> Self {
        buf.clear();
        buf.extend_from_slice(&message_type(method, class).to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(&tid);
        MessageWriter { buf, tid }
    }

    fn set_len(&mut self) {
        // Callers cannot exceed u16 with what this server writes (values come from
        // bounded datagrams); saturate rather than panic if one ever did.
        let len = u16::try_from(self.buf.len() - HEADER_LEN).unwrap_or(u16::MAX);
        self.buf[2..4].copy_from_slice(&len.to_be_bytes());
    }

    /// Appends an attribute with a raw value, padding it to 4 bytes.
    pub fn add(&mut self, kind: u16, value: &[u8]) -> &mut Self {
        let len = u16::try_from(value.len()).unwrap_or(u16::MAX);
        self.buf.extend_from_slice(&kind.to_be_bytes());
        self.buf.extend_from_slice(&len.to_be_bytes());
        self.buf.extend_from_slice(&value[..usize::from(len)]);
        let pad = padded(usize::from(len)) - usize::from(len);
        self.buf.extend_from_slice(&[0u8; 3][..pad]);
        self.set_len();
        self
    }

    /// Appends a 32-bit attribute (LIFETIME, CHANNEL-NUMBER is 16+16 reserved).
    pub fn add_u32(&mut self, kind: u16, v: u32) -> &mut Self {
        self.add(kind, &v.to_be_bytes())
    }

    /// Appends an XOR-encoded address (XOR-MAPPED/PEER/RELAYED-ADDRESS).
    pub fn add_xor_address(&mut self, kind: u16, addr: SocketAddr) -> &mut Self {
        let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
        match addr.ip() {
            IpAddr::V4(ip) => {
                let mut v = [0u8; 8];
                v[1] = 0x01;
                v[2..4].copy_from_slice(&port.to_be_bytes());
                let x = u32::from(ip) ^ MAGIC_COOKIE;
                v[4..8].copy_from_slice(&x.to_be_bytes());
                self.add(kind, &v)
            }
            IpAddr::V6(ip) => {
                let mut v = [0u8; 20];
                v[1] = 0x02;
                v[2..4].copy_from_slice(&port.to_be_bytes());
                let key = xor_key_v6(&self.tid);
                for (i, (b, k)) in ip.octets().iter().zip(key).enumerate() {
                    v[4 + i] = b ^ k;
                }
                self.add(kind, &v)
            }
        }
    }

    /// Appends MAPPED-ADDRESS (plain form, for RFC 3489 clients).
    pub fn add_mapped_address(&mut self, addr: SocketAddr) -> &mut Self {
        match addr.ip() {
            IpAddr::V4(ip) => {
                let mut v = [0u8; 8];
                v[1] = 0x01;
                v[2..4].copy_from_slice(&addr.port().to_be_bytes());
                v[4..8].copy_from_slice(&ip.octets());
                self.add(attr::MAPPED_ADDRESS, &v)
            }
            IpAddr::V6(ip) => {
                let mut v = [0u8; 20];
                v[1] = 0x02;
                v[2..4].copy_from_slice(&addr.port().to_be_bytes());
                v[4..20].copy_from_slice(&ip.octets());
                self.add(attr::MAPPED_ADDRESS, &v)
            }
        }
    }

    /// Appends ERROR-CODE with its reason phrase.
    pub fn add_error_code(&mut self, code: u16, reason: &str) -> &mut Self {
        let start = self.buf.len();
        self.buf.extend_from_slice(&attr::ERROR_CODE.to_be_bytes());
        let vlen = (4 + reason.len()).min(763);
        self.buf.extend_from_slice(&(vlen as u16).to_be_bytes());
        self.buf
            .extend_from_slice(&[0, 0, ((code / 100) & 0x07) as u8, (code % 100) as u8]);
        self.buf.extend_from_slice(&reason.as_bytes()[..vlen - 4]);
        let pad = padded(self.buf.len() - start) - (self.buf.len() - start);
        self.buf.extend_from_slice(&[0u8; 3][..pad]);
        self.set_len();
        self
    }

    /// Appends UNKNOWN-ATTRIBUTES listing these types.
    pub fn add_unknown_attributes(&mut self, kinds: impl Iterator<Item = u16>) -> &mut Self {
        let start = self.buf.len();
        self.buf
            .extend_from_slice(&attr::UNKNOWN_ATTRIBUTES.to_be_bytes());
        self.buf.extend_from_slice(&[0, 0]);
        let mut n = 0u16;
        for k in kinds.take(32) {
            self.buf.extend_from_slice(&k.to_be_bytes());
            n += 2;
        }
        self.buf[start + 2..start + 4].copy_from_slice(&n.to_be_bytes());
        if n % 4 != 0 {
            self.buf.extend_from_slice(&[0, 0]);
        }
        self.set_len();
        self
    }

    /// Appends MESSAGE-INTEGRITY (HMAC-SHA1 with `key`) over everything so far.
    pub fn add_message_integrity(&mut self, key: &[u8]) -> &mut Self {
        let at = self.buf.len();
        self.add(attr::MESSAGE_INTEGRITY, &[0u8; 20]);
        if let Ok(mut mac) = <Hmac<Sha1> as Mac>::new_from_slice(key) {
            mac.update(&self.buf[..at]);
            let tag = mac.finalize().into_bytes();
            self.buf[at + 4..at + 24].copy_from_slice(&tag);
        }
        self
    }

    /// Appends MESSAGE-INTEGRITY-SHA256 (full 32 bytes) over everything so far.
    pub fn add_message_integrity_sha256(&mut self, key: &[u8]) -> &mut Self {
        let at = self.buf.len();
        self.add(attr::MESSAGE_INTEGRITY_SHA256, &[0u8; 32]);
        if let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(key) {
            mac.update(&self.buf[..at]);
            let tag = mac.finalize().into_bytes();
            self.buf[at + 4..at + 36].copy_from_slice(&tag);
        }
        self
    }

    /// Appends FINGERPRINT; call last.
    pub fn add_fingerprint(&mut self) -> &mut Self {
        let at = self.buf.len();
        self.add(attr::FINGERPRINT, &[0u8; 4]);
        let crc = crc32fast::hash(&self.buf[..at]) ^ FINGERPRINT_XOR;
        self.buf[at + 4..at + 8].copy_from_slice(&crc.to_be_bytes());
        self
    }

    /// The encoded message so far.
    pub fn as_bytes(&self) -> &[u8] {
        self.buf
    }
}

/// Lowest channel number a client may bind (RFC 8656 §12).
pub const CHANNEL_MIN: u16 = 0x4000;
/// Highest channel number a client may bind. RFC 8656 §12 narrowed the range to
/// 0x4FFF, but RFC 5766 clients (coturn's `turnutils_uclient` among them) pick numbers
/// up to 0x7FFF, and coturn accepts them; so do we, as the RFC 5766 range.
pub const CHANNEL_MAX: u16 = 0x7FFF;

/// A ChannelData frame: the 4-byte-header fast path for data on a bound channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelData<'a> {
    /// Channel number, 0x4000-0x7FFF.
    pub channel: u16,
    /// Application data, borrowed from the input.
    pub data: &'a [u8],
}

impl<'a> ChannelData<'a> {
    /// Parses one frame from the front of `bytes`; returns it and how many bytes it
    /// used (padded to 4 when `stream` is set, as TCP framing requires).
    pub fn parse(bytes: &'a [u8], stream: bool) -> Result<(ChannelData<'a>, usize), Error> {
        let channel = be16(bytes, 0).ok_or(Error::Truncated {
            needed: 4,
            had: bytes.len(),
        })?;
        let len = usize::from(be16(bytes, 2).ok_or(Error::Truncated {
            needed: 4,
            had: bytes.len(),
        })?);
        if !(CHANNEL_MIN..=CHANNEL_MAX).contains(&channel) {
            return Err(Error::BadChannelNumber(channel));
        }
        let data = bytes.get(4..4 + len).ok_or(Error::Truncated {
            needed: 4 + len,
            had: bytes.len(),
        })?;
        let used = if stream {
            (4 + padded(len)).min(bytes.len())
        } else {
            bytes.len()
        };
        Ok((ChannelData { channel, data }, used))
    }

    /// Writes a frame into `buf` (cleared first), padding to 4 when `stream` is set.
    pub fn write(buf: &mut Vec<u8>, channel: u16, data: &[u8], stream: bool) -> Result<(), Error> {
        let len = u16::try_from(data.len()).map_err(|_| Error::TooLong)?;
        buf.clear();
        buf.extend_from_slice(&channel.to_be_bytes());
        buf.extend_from_slice(&len.to_be_bytes());
        buf.extend_from_slice(data);
        if stream {
            let pad = padded(data.len()) - data.len();
            buf.extend_from_slice(&[0u8; 3][..pad]);
        }
        Ok(())
    }
}

/// How many bytes the next frame on a TCP connection needs, from its first 4 bytes:
/// a STUN message (20 + length) or a ChannelData frame (4 + length, padded). `None`
/// until 4 bytes are there; an error if the stream carries neither (close it).
pub fn stream_frame_len(bytes: &[u8]) -> Result<Option<usize>, Error> {
    let (Some(first), Some(len)) = (be16(bytes, 0), be16(bytes, 2)) else {
        return Ok(None);
    };
    let len = usize::from(len);
    match first >> 14 {
        0 => Ok(Some(HEADER_LEN + len)),
        1 if first <= CHANNEL_MAX => Ok(Some(4 + padded(len))),
        _ => Err(Error::BadChannelNumber(first)),
    }
}
