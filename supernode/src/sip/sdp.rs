//! SDP (RFC 4566) parsing and the offer/answer model (RFC 3264) for the conference UAS.
//!
//! The node answers audio offers only: it picks one `m=audio` stream, one codec of its
//! own (Opus, then PCMU, then PCMA: what the mixer can mix), RFC 4733 telephone-event
//! for PIN digits and the RFC 6464 audio-level header extension (RFC 8285) that lets the
//! mixer choose talkers without decoding, and rejects everything else in the answer.
//!
//! [`Session::parse`] is a tolerant reader (unknown lines and attributes are skipped, as
//! RFC 4566 §5 asks) that never panics on network input; [`negotiate`] turns an offer
//! into the choices the mixer needs ([`Negotiated`]); [`LocalSession::render`] writes
//! the answer and keeps the `o=` version rules of RFC 3264 §8.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use mixer::CodecKind;

/// The URI of the client-to-mixer audio level header extension (RFC 6464).
pub const AUDIO_LEVEL_URN: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";

/// The packet time the mixer sends and asks for (it runs 20 ms ticks).
pub const PTIME_MS: u32 = 20;

/// The events our answers accept for telephone-event: DTMF 0-15 and flash (16), the
/// set RFC 4733 §7.1.1 recommends to offer.
pub const TELEPHONE_EVENTS: &str = "0-16";

/// How many `m=` lines and attributes per line a description may have before it is
/// refused: far above any real phone's offer, and it bounds the work one body costs.
const MAX_MEDIA: usize = 64;

/// The direction attribute of a stream (RFC 4566 §6, RFC 3264 §5.1), from the point of
/// view of the side that wrote the description.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    /// Send and receive (the default when no attribute is given).
    #[default]
    SendRecv,
    /// Only send: the usual way a phone puts the call on hold.
    SendOnly,
    /// Only receive.
    RecvOnly,
    /// Neither: hold with the media paused both ways.
    Inactive,
}

impl Direction {
    /// Reads an attribute name (`sendrecv`, …); `None` for any other attribute.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "sendrecv" => Direction::SendRecv,
            "sendonly" => Direction::SendOnly,
            "recvonly" => Direction::RecvOnly,
            "inactive" => Direction::Inactive,
            _ => return None,
        })
    }

    /// The attribute name.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// The direction an answer takes for an offer with this one (RFC 3264 §6.1): the
    /// mirror image, since the answerer receives what the offerer sends.
    pub fn answer(self) -> Self {
        match self {
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            d => d,
        }
    }

    /// Whether the side that wrote it will not listen: the caller put us on hold.
    pub fn is_hold(self) -> bool {
        matches!(self, Direction::SendOnly | Direction::Inactive)
    }
}

/// Why an offer cannot be answered. Each maps to a SIP response and a warn-code so the
/// caller's phone can tell the user what went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    /// Not a session description, or a line we must understand is broken.
    #[error("malformed SDP: {0}")]
    Malformed(&'static str),
    /// No `m=audio` stream with a non-zero port.
    #[error("no audio stream offered")]
    NoAudio,
    /// The audio streams use transports we cannot do: SRTP (`RTP/SAVP`, `RTP/SAVPF`,
    /// DTLS-SRTP `UDP/TLS/RTP/SAVPF`) or anything that is not plain RTP.
    #[error("unsupported media transport {0}")]
    UnsupportedTransport(String),
    /// None of Opus, PCMU and PCMA is offered.
    #[error("no common codec (we take opus/48000/2, PCMU/8000, PCMA/8000)")]
    NoCommonCodec,
    /// The connection address is not an IP address (a host name or a multicast group),
    /// or its family is one we cannot send to.
    #[error("unsupported connection address")]
    UnsupportedAddress,
}

impl SdpError {
    /// The SIP status to answer the INVITE with: 400 for a broken body, 488 Not
    /// Acceptable Here when the offer is fine but we cannot take it (RFC 3261 §13.3.1.3).
    pub fn status(&self) -> u16 {
        match self {
            SdpError::Malformed(_) => 400,
            _ => 488,
        }
    }

    /// The RFC 3261 §20.43 warn-code and text for the Warning header.
    pub fn warning(&self) -> (u16, &'static str) {
        match self {
            SdpError::Malformed(_) => (399, "Malformed session description"),
            SdpError::NoAudio => (304, "Media type not available"),
            SdpError::UnsupportedTransport(_) => (302, "Incompatible transport protocol"),
            SdpError::NoCommonCodec => (305, "Incompatible media format"),
            SdpError::UnsupportedAddress => (301, "Incompatible network address formats"),
        }
    }
}

/// An `a=rtpmap` line: what a dynamic payload type stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpMap {
    /// The payload type.
    pub payload_type: u8,
    /// Encoding name as written (compared case-insensitively, RFC 4855 §3).
    pub encoding: String,
    /// RTP clock rate.
    pub clock_rate: u32,
    /// Channels (the third field), if given.
    pub channels: Option<u16>,
}

/// An `a=extmap` line (RFC 8285 §8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtMap {
    /// The extension id used in packets.
    pub id: u16,
    /// The optional direction after the id.
    pub direction: Option<Direction>,
    /// The extension's URI.
    pub uri: String,
}

/// An `a=rtcp` line (RFC 3605): where the peer wants RTCP when not on port + 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rtcp {
    /// The port.
    pub port: u16,
    /// The address, if it differs from the connection address.
    pub address: Option<IpAddr>,
}

/// An `o=` line: identifies the session and its version (RFC 4566 §5.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// User name (`-` when none).
    pub username: String,
    /// Session id, a numeric string kept as text (it may exceed 64 bits).
    pub session_id: String,
    /// Session version, a numeric string.
    pub version: String,
    /// The originator's address as written.
    pub address: String,
}

/// One `m=` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media {
    /// Media type: `audio`, `video`, …
    pub kind: String,
    /// Transport port; 0 means the stream is disabled (RFC 3264 §5.1).
    pub port: u16,
    /// Transport protocol: `RTP/AVP`, `RTP/SAVPF`, …
    pub proto: String,
    /// The format list (payload types for RTP) in the offerer's order of preference.
    pub formats: Vec<String>,
    /// Media-level `c=` address; `None` means the session-level one applies.
    pub connection: Option<IpAddr>,
    /// `a=rtpmap` lines.
    pub rtpmaps: Vec<RtpMap>,
    /// `a=fmtp` lines: payload type and parameters.
    pub fmtps: Vec<(u8, String)>,
    /// `a=ptime`, in milliseconds.
    pub ptime: Option<u32>,
    /// Media-level direction; `None` means the session-level one applies.
    pub direction: Option<Direction>,
    /// Media-level `a=extmap` lines.
    pub extmaps: Vec<ExtMap>,
    /// `a=rtcp`.
    pub rtcp: Option<Rtcp>,
}

/// A parsed session description.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Session {
    /// The `o=` line.
    pub origin: Option<Origin>,
    /// Session-level `c=` address.
    pub connection: Option<IpAddr>,
    /// Session-level direction.
    pub direction: Option<Direction>,
    /// Session-level `a=extmap` lines (RFC 8285 allows them there).
    pub extmaps: Vec<ExtMap>,
    /// The `m=` sections in order.
    pub media: Vec<Media>,
}

impl Session {
    /// Parses a description. Unknown line types and attributes are skipped; broken
    /// `v=`, `o=`, `c=` and `m=` lines are errors, since answering a stream we
    /// misunderstood would send media to the wrong place.
    pub fn parse(text: &str) -> Result<Self, SdpError> {
        let mut session = Session::default();
        let mut saw_version = false;
        for raw in text.split('\n') {
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            if line.trim().is_empty() {
                continue;
            }
            // `x=` with an ASCII type letter: byte 1 being '=' proves byte 0 is one byte
            // long, so slicing at 2 is on a character boundary.
            if line.as_bytes().get(1) != Some(&b'=') {
                return Err(SdpError::Malformed("a line is not type=value"));
            }
            let (kind, value) = (line.as_bytes()[0], &line[2..]);
            if !saw_version {
                if kind != b'v' || value.trim() != "0" {
                    return Err(SdpError::Malformed("the first line is not v=0"));
                }
                saw_version = true;
                continue;
            }
            match kind {
                b'o' => session.origin = Some(parse_origin(value)?),
                b'c' => {
                    let addr = parse_connection(value)?;
                    match session.media.last_mut() {
                        Some(m) => m.connection = Some(addr),
                        None => session.connection = Some(addr),
                    }
                }
                b'm' => {
                    if session.media.len() >= MAX_MEDIA {
                        return Err(SdpError::Malformed("too many m= lines"));
                    }
                    session.media.push(parse_media(value)?);
                }
                b'a' => session.attribute(value),
                _ => {}
            }
        }
        if !saw_version {
            return Err(SdpError::Malformed("empty session description"));
        }
        Ok(session)
    }

    fn attribute(&mut self, value: &str) {
        let (name, arg) = match value.split_once(':') {
            Some((n, a)) => (n.trim(), Some(a.trim())),
            None => (value.trim(), None),
        };
        if let Some(d) = Direction::parse(name) {
            match self.media.last_mut() {
                Some(m) => m.direction = Some(d),
                None => self.direction = Some(d),
            }
            return;
        }
        let Some(arg) = arg else { return };
        if name == "extmap" {
            if let Some(e) = parse_extmap(arg) {
                let list = match self.media.last_mut() {
                    Some(m) => &mut m.extmaps,
                    None => &mut self.extmaps,
                };
                if list.len() < MAX_MEDIA {
                    list.push(e);
                }
            }
            return;
        }
        // The remaining attributes are media-level only (RFC 4566 §6, RFC 3605).
        let Some(m) = self.media.last_mut() else {
            return;
        };
        match name {
            "rtpmap" => {
                if let Some(r) = parse_rtpmap(arg) {
                    if m.rtpmaps.len() < MAX_MEDIA {
                        m.rtpmaps.push(r);
                    }
                }
            }
            "fmtp" => {
                if let Some((pt, params)) = arg.split_once(' ') {
                    if let Ok(pt) = pt.parse::<u8>() {
                        if m.fmtps.len() < MAX_MEDIA {
                            m.fmtps.push((pt, params.trim().to_string()));
                        }
                    }
                }
            }
            "ptime" => m.ptime = arg.parse().ok(),
            "rtcp" => m.rtcp = parse_rtcp(arg),
            _ => {}
        }
    }
}

fn parse_origin(value: &str) -> Result<Origin, SdpError> {
    let f: Vec<&str> = value.split_whitespace().collect();
    let &[username, session_id, version, _nettype, _addrtype, address] = f.as_slice() else {
        return Err(SdpError::Malformed("o= needs six fields"));
    };
    Ok(Origin {
        username: username.to_string(),
        session_id: session_id.to_string(),
        version: version.to_string(),
        address: address.to_string(),
    })
}

/// `IN IP4 192.0.2.1`, `IN IP6 2001:db8::1`; a multicast `/ttl` suffix is cut off and
/// then refused with every other non-unicast or non-literal address.
fn parse_connection(value: &str) -> Result<IpAddr, SdpError> {
    let f: Vec<&str> = value.split_whitespace().collect();
    let &[nettype, addrtype, address] = f.as_slice() else {
        return Err(SdpError::Malformed("c= needs three fields"));
    };
    if nettype != "IN" {
        return Err(SdpError::UnsupportedAddress);
    }
    let host = address.split('/').next().unwrap_or(address);
    let ip: IpAddr = host.parse().map_err(|_| SdpError::UnsupportedAddress)?;
    match (addrtype, ip) {
        ("IP4", IpAddr::V4(_)) | ("IP6", IpAddr::V6(_)) => {}
        _ => return Err(SdpError::Malformed("c= address does not match its type")),
    }
    if ip.is_multicast() {
        return Err(SdpError::UnsupportedAddress);
    }
    Ok(ip)
}

/// `audio 49170 RTP/AVP 0 8 97`, `audio 49170/2 RTP/AVP 0`.
fn parse_media(value: &str) -> Result<Media, SdpError> {
    let mut f = value.split_whitespace();
    let (Some(kind), Some(port), Some(proto)) = (f.next(), f.next(), f.next()) else {
        return Err(SdpError::Malformed("m= needs media, port and protocol"));
    };
    let port = port.split('/').next().unwrap_or(port);
    let port: u16 = port
        .parse()
        .map_err(|_| SdpError::Malformed("m= port is not a number"))?;
    let formats: Vec<String> = f.take(MAX_MEDIA).map(str::to_string).collect();
    Ok(Media {
        kind: kind.to_string(),
        port,
        proto: proto.to_string(),
        formats,
        connection: None,
        rtpmaps: Vec::new(),
        fmtps: Vec::new(),
        ptime: None,
        direction: None,
        extmaps: Vec::new(),
        rtcp: None,
    })
}

/// `97 opus/48000/2`.
fn parse_rtpmap(arg: &str) -> Option<RtpMap> {
    let (pt, rest) = arg.split_once(' ')?;
    let mut parts = rest.trim().split('/');
    let encoding = parts.next()?.trim();
    let clock_rate = parts.next()?.trim().parse().ok()?;
    let channels = match parts.next() {
        Some(c) => Some(c.trim().parse().ok()?),
        None => None,
    };
    if encoding.is_empty() {
        return None;
    }
    Some(RtpMap {
        payload_type: pt.trim().parse().ok()?,
        encoding: encoding.to_string(),
        clock_rate,
        channels,
    })
}

/// `1 urn:...`, `1/sendonly urn:... vad=on`.
fn parse_extmap(arg: &str) -> Option<ExtMap> {
    let mut f = arg.split_whitespace();
    let id_dir = f.next()?;
    let uri = f.next()?;
    let (id, direction) = match id_dir.split_once('/') {
        Some((id, d)) => (id, Some(Direction::parse(d)?)),
        None => (id_dir, None),
    };
    Some(ExtMap {
        id: id.parse().ok()?,
        direction,
        uri: uri.to_string(),
    })
}

/// `53020`, `53020 IN IP4 126.16.64.4`.
fn parse_rtcp(arg: &str) -> Option<Rtcp> {
    let mut f = arg.split_whitespace();
    let port = f.next()?.parse().ok()?;
    let rest: Vec<&str> = f.collect();
    let address = match rest.as_slice() {
        [] => None,
        [_, _, a] => Some(a.parse().ok()?),
        _ => return None,
    };
    Some(Rtcp { port, address })
}

/// An RFC 4733 telephone-event format chosen for a leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelephoneEvent {
    /// The offered payload type (kept: the answer must use the offerer's numbers).
    pub payload_type: u8,
    /// Its RTP clock rate, 8000 or 48000 as offered.
    pub clock_rate: u32,
}

/// What a media line looked like, to reject it in the answer (RFC 3264 §6: the answer
/// has as many `m=` lines as the offer, in the same order).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rejected {
    kind: String,
    proto: String,
    formats: String,
}

/// The outcome of negotiating an offer: everything the conference needs to add the
/// mixer leg and to write the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Where to send RTP: the stream's `c=` address and `m=` port. The address is
    /// unspecified (`0.0.0.0`) for an old-style hold; the mixer latches on the source of
    /// the RTP that arrives anyway.
    pub remote_rtp: SocketAddr,
    /// Where the peer wants RTCP, when it said so with `a=rtcp` (else port + 1).
    pub remote_rtcp: Option<SocketAddr>,
    /// The audio codec.
    pub codec: CodecKind,
    /// Its payload type as offered.
    pub payload_type: u8,
    /// RFC 4733 events, if offered.
    pub telephone_event: Option<TelephoneEvent>,
    /// The RFC 6464 audio-level extension id, if offered.
    pub audio_level_ext: Option<u8>,
    /// Direction of the extension as offered, mirrored in the answer.
    audio_level_direction: Option<Direction>,
    /// The offerer's direction for the stream.
    pub direction: Direction,
    /// The offerer put the call on hold: `sendonly`, `inactive`, or `c=0.0.0.0`
    /// (RFC 2543 style, still sent by older phones).
    pub hold: bool,
    /// The offered packet time, if any (we send 20 ms regardless, the mixer's tick).
    pub ptime: Option<u32>,
    /// The transport protocol of the chosen stream (`RTP/AVP` or `RTP/AVPF`), echoed in
    /// the answer as RFC 3264 §6 requires.
    pub proto: String,
    /// Index of the chosen stream among the offer's `m=` lines.
    pub media_index: usize,
    /// Every other `m=` line, rejected in the answer.
    others: Vec<(usize, Rejected)>,
}

impl Negotiated {
    /// The direction our answer states.
    pub fn answer_direction(&self) -> Direction {
        self.direction.answer()
    }

    /// A copy for sending a fresh offer of the same session ourselves (the offer in a
    /// 200 to a re-INVITE without SDP): sending and receiving again, nothing on hold.
    pub fn as_local_offer(&self) -> Negotiated {
        Negotiated {
            direction: Direction::SendRecv,
            hold: false,
            ..self.clone()
        }
    }
}

/// Our codec preference: Opus (wideband, FEC), then the two G.711 laws.
const PREFERENCE: [CodecKind; 3] = [CodecKind::Opus, CodecKind::Pcmu, CodecKind::Pcma];

fn codec_of(map: Option<&RtpMap>, pt: u8) -> Option<CodecKind> {
    let Some(m) = map else {
        // Static payload types need no rtpmap (RFC 3551 table 4).
        return match pt {
            0 => Some(CodecKind::Pcmu),
            8 => Some(CodecKind::Pcma),
            _ => None,
        };
    };
    let e = m.encoding.as_str();
    if e.eq_ignore_ascii_case("opus") && m.clock_rate == 48_000 && m.channels.unwrap_or(2) <= 2 {
        // RFC 7587 §7 always writes opus/48000/2; mono senders are fine for the mixer.
        Some(CodecKind::Opus)
    } else if e.eq_ignore_ascii_case("PCMU")
        && m.clock_rate == 8_000
        && m.channels.unwrap_or(1) == 1
    {
        Some(CodecKind::Pcmu)
    } else if e.eq_ignore_ascii_case("PCMA")
        && m.clock_rate == 8_000
        && m.channels.unwrap_or(1) == 1
    {
        Some(CodecKind::Pcma)
    } else {
        None
    }
}

fn is_plain_rtp(proto: &str) -> bool {
    proto.eq_ignore_ascii_case("RTP/AVP") || proto.eq_ignore_ascii_case("RTP/AVPF")
}

/// Chooses what to answer to an offer: the first `m=audio` stream with a non-zero
/// port, plain RTP and a codec in common; our codec preference, except that `keep`
/// (the codec a re-INVITE's dialog already uses) wins when still offered, so a
/// re-offer does not needlessly restart the leg.
pub fn negotiate(offer: &Session, keep: Option<CodecKind>) -> Result<Negotiated, SdpError> {
    let mut error = SdpError::NoAudio;
    for (index, m) in offer.media.iter().enumerate() {
        if m.kind != "audio" || m.port == 0 {
            continue;
        }
        if !is_plain_rtp(&m.proto) {
            if error == SdpError::NoAudio {
                error = SdpError::UnsupportedTransport(m.proto.clone());
            }
            continue;
        }
        match negotiate_media(offer, index, m, keep) {
            Ok(n) => return Ok(n),
            Err(e) => {
                if matches!(error, SdpError::NoAudio | SdpError::UnsupportedTransport(_)) {
                    error = e;
                }
            }
        }
    }
    Err(error)
}

fn negotiate_media(
    offer: &Session,
    index: usize,
    m: &Media,
    keep: Option<CodecKind>,
) -> Result<Negotiated, SdpError> {
    let rtpmap = |pt: u8| m.rtpmaps.iter().find(|r| r.payload_type == pt);
    let mut offered: Vec<(CodecKind, u8)> = Vec::new();
    let mut events: Vec<TelephoneEvent> = Vec::new();
    for f in &m.formats {
        let Ok(pt) = f.parse::<u8>() else { continue };
        if pt > 127 {
            continue;
        }
        let map = rtpmap(pt);
        if let Some(c) = codec_of(map, pt) {
            offered.push((c, pt));
        } else if let Some(map) = map {
            if map.encoding.eq_ignore_ascii_case("telephone-event")
                && matches!(map.clock_rate, 8_000 | 48_000)
            {
                events.push(TelephoneEvent {
                    payload_type: pt,
                    clock_rate: map.clock_rate,
                });
            }
        }
    }
    let first_of = |c: CodecKind| offered.iter().find(|(k, _)| *k == c).copied();
    let (codec, payload_type) = keep
        .and_then(first_of)
        .or_else(|| PREFERENCE.iter().find_map(|&c| first_of(c)))
        .ok_or(SdpError::NoCommonCodec)?;
    // RFC 4733 §2.1: events at the audio codec's clock rate keep one timestamp base;
    // another offered rate still works for digit detection.
    let telephone_event = events
        .iter()
        .find(|e| e.clock_rate == codec.clock_rate())
        .or_else(|| events.first())
        .copied();
    let ext = m.extmaps.iter().chain(offer.extmaps.iter()).find(|e| {
        e.uri.eq_ignore_ascii_case(AUDIO_LEVEL_URN)
            && (1..=255).contains(&e.id)
            && e.id != 15
            && e.direction != Some(Direction::Inactive)
    });
    let address = m
        .connection
        .or(offer.connection)
        .ok_or(SdpError::Malformed("no c= line for the audio stream"))?;
    let direction = m.direction.or(offer.direction).unwrap_or_default();
    let remote_rtcp = m
        .rtcp
        .map(|r| SocketAddr::new(r.address.unwrap_or(address), r.port));
    let others = offer
        .media
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != index)
        .map(|(i, o)| {
            let formats = if o.formats.is_empty() {
                // A format is mandatory even on a rejected line (RFC 3264 §6).
                "0".to_string()
            } else {
                o.formats.join(" ")
            };
            let r = Rejected {
                kind: o.kind.clone(),
                proto: o.proto.clone(),
                formats,
            };
            (i, r)
        })
        .collect();
    Ok(Negotiated {
        remote_rtp: SocketAddr::new(address, m.port),
        remote_rtcp,
        codec,
        payload_type,
        telephone_event,
        audio_level_ext: ext.and_then(|e| u8::try_from(e.id).ok()),
        audio_level_direction: ext.and_then(|e| e.direction),
        direction,
        hold: direction.is_hold() || address.is_unspecified(),
        ptime: m.ptime,
        proto: m.proto.clone(),
        media_index: index,
        others,
    })
}

/// Our side of one dialog's session: the `o=` identity and version, and the body last
/// sent, so the version changes exactly when the description does (RFC 3264 §8: a
/// changed description increments the version by one, an unchanged one keeps it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalSession {
    session_id: u64,
    version: u64,
    address: IpAddr,
    last_body: Option<String>,
}

impl LocalSession {
    /// A session with a random id (the caller supplies randomness, keeping this module
    /// deterministic), answering from `address` (our advertised media IP).
    pub fn new(session_id: u64, address: IpAddr) -> Self {
        LocalSession {
            // Some parsers read the id as a signed 64-bit number.
            session_id: session_id >> 1,
            version: 1,
            address,
            last_body: None,
        }
    }

    /// The version of the last description rendered.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The description last rendered, if any.
    pub fn last(&self) -> Option<String> {
        self.last_body.as_ref().map(|b| self.with_origin(b))
    }

    /// Writes our description of `media` with RTP on `rtp_port` and the given direction:
    /// the answer to the offer `media` came from, or our own offer of the same session.
    pub fn render(&mut self, media: &Negotiated, rtp_port: u16, direction: Direction) -> String {
        let body = body(media, self.address, rtp_port, direction);
        match &self.last_body {
            Some(last) if *last == body => {}
            Some(_) => {
                self.version += 1;
                self.last_body = Some(body);
            }
            None => self.last_body = Some(body),
        }
        self.last().unwrap_or_default()
    }

    fn with_origin(&self, body: &str) -> String {
        format!(
            "v=0\r\no=supernode {} {} IN {} {}\r\n{body}",
            self.session_id,
            self.version,
            ip_type(self.address),
            self.address
        )
    }
}

fn ip_type(ip: IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => "IP4",
        IpAddr::V6(_) => "IP6",
    }
}

/// Everything after `o=`.
fn body(m: &Negotiated, address: IpAddr, port: u16, direction: Direction) -> String {
    let mut s = String::with_capacity(400);
    // Writing into a String cannot fail.
    let _ = write!(
        s,
        "s=supernode\r\nc=IN {} {address}\r\nt=0 0\r\n",
        ip_type(address)
    );
    let count = m.others.len() + 1;
    let mut others = m.others.iter().peekable();
    for i in 0..count {
        if let Some((_, r)) = others.next_if(|(j, _)| *j == i) {
            let _ = write!(s, "m={} 0 {} {}\r\n", r.kind, r.proto, r.formats);
            continue;
        }
        audio(&mut s, m, port, direction);
    }
    s
}

fn audio(s: &mut String, m: &Negotiated, port: u16, direction: Direction) {
    let pt = m.payload_type;
    let _ = write!(s, "m=audio {port} {} {pt}", m.proto);
    if let Some(te) = m.telephone_event {
        let _ = write!(s, " {}", te.payload_type);
    }
    s.push_str("\r\n");
    match m.codec {
        CodecKind::Opus => {
            let _ = write!(
                s,
                "a=rtpmap:{pt} opus/48000/2\r\na=fmtp:{pt} minptime=10;useinbandfec=1\r\n"
            );
        }
        CodecKind::Pcmu => {
            let _ = write!(s, "a=rtpmap:{pt} PCMU/8000\r\n");
        }
        CodecKind::Pcma => {
            let _ = write!(s, "a=rtpmap:{pt} PCMA/8000\r\n");
        }
    }
    if let Some(te) = m.telephone_event {
        let _ = write!(
            s,
            "a=rtpmap:{0} telephone-event/{1}\r\na=fmtp:{0} {TELEPHONE_EVENTS}\r\n",
            te.payload_type, te.clock_rate
        );
    }
    let _ = write!(s, "a=ptime:{PTIME_MS}\r\n");
    if let Some(id) = m.audio_level_ext {
        // RFC 6464 levels flow from the client to the mixer: an offer of `sendonly`
        // needs `recvonly` back (RFC 8285 §6); an offer without a direction gets none.
        match m.audio_level_direction {
            Some(d) => {
                let _ = write!(
                    s,
                    "a=extmap:{id}/{} {AUDIO_LEVEL_URN}\r\n",
                    d.answer().as_str()
                );
            }
            None => {
                let _ = write!(s, "a=extmap:{id} {AUDIO_LEVEL_URN}\r\n");
            }
        }
    }
    let _ = write!(s, "a={}\r\n", direction.as_str());
}

/// An answer and the choices behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The choices (codec, payload types, remote address, hold).
    pub negotiated: Negotiated,
    /// The answer's text.
    pub text: String,
}

/// Parses `offer`, negotiates it and renders the answer with RTP on `rtp_port`, in one
/// call: for callers that know their port before the offer arrives.
pub fn answer(
    offer: &str,
    keep: Option<CodecKind>,
    local: &mut LocalSession,
    rtp_port: u16,
) -> Result<Answer, SdpError> {
    let session = Session::parse(offer)?;
    let negotiated = negotiate(&session, keep)?;
    let text = local.render(&negotiated, rtp_port, negotiated.answer_direction());
    Ok(Answer { negotiated, text })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    fn crlf(s: &str) -> String {
        s.lines()
            .map(str::trim_start)
            .filter(|l| !l.is_empty())
            .map(|l| format!("{l}\r\n"))
            .collect()
    }

    /// baresip 1.0 with its default audio codecs and the audio-level extension on.
    const BARESIP: &str = "v=0
        o=- 1680615384 1943256386 IN IP4 192.168.1.23
        s=-
        c=IN IP4 192.168.1.23
        t=0 0
        a=tool:baresip 1.0.0
        m=audio 10970 RTP/AVP 96 0 8 101
        b=AS:96
        a=rtpmap:96 opus/48000/2
        a=fmtp:96 stereo=1;sprop-stereo=1
        a=rtpmap:0 PCMU/8000
        a=rtpmap:8 PCMA/8000
        a=rtpmap:101 telephone-event/8000
        a=fmtp:101 0-15
        a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level
        a=rtcp-rsize
        a=sendrecv
        a=label:1
        a=ssrc:3370941446 cname:6d8e9a71-1234
        a=mid:0
        a=ptime:20";

    /// Linphone 5 with video enabled and several telephone-event rates.
    const LINPHONE: &str = "v=0
        o=alice 3344 2118 IN IP4 10.0.0.5
        s=Talk
        c=IN IP4 10.0.0.5
        t=0 0
        a=rtcp-xr:rcvr-rtt=all:10000 stat-summary=loss,dup,jitt,TTL voip-metrics
        a=record:off
        m=audio 7078 RTP/AVP 96 97 98 0 8 18 101 99 100
        a=rtpmap:96 opus/48000/2
        a=fmtp:96 useinbandfec=1
        a=rtpmap:97 SILK/16000
        a=rtpmap:98 speex/16000
        a=fmtp:98 vbr=on
        a=rtpmap:18 G729/8000
        a=fmtp:18 annexb=yes
        a=rtpmap:101 telephone-event/48000
        a=rtpmap:99 telephone-event/16000
        a=rtpmap:100 telephone-event/8000
        a=rtcp:7079
        a=rtcp-fb:* trr-int 1000
        a=rtcp-fb:* ccm tmmbr
        m=video 9078 RTP/AVP 96 97
        a=rtpmap:96 VP8/90000
        a=rtpmap:97 H264/90000
        a=fmtp:97 profile-level-id=42801F
        a=rtcp-fb:* trr-int 1000";

    /// A Polycom VVX desk phone: G.722, G.711 and G.729 only.
    const POLYCOM: &str = "v=0
        o=- 1709824512 1709824512 IN IP4 192.168.1.50
        s=Polycom IP Phone
        c=IN IP4 192.168.1.50
        t=0 0
        a=sendrecv
        m=audio 2222 RTP/AVP 9 0 8 18 127
        a=rtpmap:9 G722/8000
        a=rtpmap:0 PCMU/8000
        a=rtpmap:8 PCMA/8000
        a=rtpmap:18 G729/8000
        a=fmtp:18 annexb=no
        a=rtpmap:127 telephone-event/8000";

    /// A Yealink T4x with "SRTP optional": plain RTP/AVP with an SDES crypto line, A-law
    /// first, IPv4 address only at media level.
    const YEALINK: &str = "v=0
        o=- 20020 20020 IN IP4 10.1.2.3
        s=SDP data
        t=0 0
        m=audio 11800 RTP/AVP 8 0 9 101
        c=IN IP4 10.1.2.3
        a=rtpmap:8 PCMA/8000
        a=rtpmap:0 PCMU/8000
        a=rtpmap:9 G722/8000
        a=fmtp:101 0-15
        a=rtpmap:101 telephone-event/8000
        a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz
        a=ptime:20
        a=sendrecv";

    /// A browser (WebRTC): DTLS-SRTP only.
    const WEBRTC: &str = "v=0
        o=- 4611731400430051336 2 IN IP4 127.0.0.1
        s=-
        t=0 0
        a=group:BUNDLE 0
        a=msid-semantic: WMS
        m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126
        c=IN IP4 0.0.0.0
        a=rtcp:9 IN IP4 0.0.0.0
        a=ice-ufrag:EsAw
        a=ice-pwd:bP+XJMM09aR8AiX1jdukzR6Y
        a=fingerprint:sha-256 A1:B2:C3:D4
        a=setup:actpass
        a=mid:0
        a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level
        a=sendrecv
        a=rtcp-mux
        a=rtpmap:111 opus/48000/2
        a=fmtp:111 minptime=10;useinbandfec=1
        a=rtpmap:0 PCMU/8000
        a=rtpmap:8 PCMA/8000
        a=rtpmap:126 telephone-event/8000";

    fn local() -> LocalSession {
        LocalSession::new(
            0x1234_5678_9abc_def0,
            IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)),
        )
    }

    fn lines(text: &str) -> Vec<&str> {
        text.split("\r\n").filter(|l| !l.is_empty()).collect()
    }

    #[test]
    fn baresip_gets_opus_with_events_and_levels() {
        let mut l = local();
        let a = answer(&crlf(BARESIP), None, &mut l, 40000).unwrap();
        let n = &a.negotiated;
        assert_eq!(n.codec, CodecKind::Opus);
        assert_eq!(n.payload_type, 96);
        assert_eq!(
            n.telephone_event,
            Some(TelephoneEvent {
                payload_type: 101,
                clock_rate: 8000
            })
        );
        assert_eq!(n.audio_level_ext, Some(1));
        assert_eq!(n.remote_rtp, "192.168.1.23:10970".parse().unwrap());
        assert_eq!(n.direction, Direction::SendRecv);
        assert!(!n.hold);
        assert_eq!(n.ptime, Some(20));
        let expected = "v=0\r\n\
            o=supernode 655884233731895160 1 IN IP4 203.0.113.7\r\n\
            s=supernode\r\n\
            c=IN IP4 203.0.113.7\r\n\
            t=0 0\r\n\
            m=audio 40000 RTP/AVP 96 101\r\n\
            a=rtpmap:96 opus/48000/2\r\n\
            a=fmtp:96 minptime=10;useinbandfec=1\r\n\
            a=rtpmap:101 telephone-event/8000\r\n\
            a=fmtp:101 0-16\r\n\
            a=ptime:20\r\n\
            a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n\
            a=sendrecv\r\n";
        assert_eq!(a.text, expected);
    }

    #[test]
    fn linphone_gets_opus_events_at_48k_and_video_rejected() {
        let a = answer(&crlf(LINPHONE), None, &mut local(), 40002).unwrap();
        let n = &a.negotiated;
        assert_eq!((n.codec, n.payload_type), (CodecKind::Opus, 96));
        assert_eq!(
            n.telephone_event,
            Some(TelephoneEvent {
                payload_type: 101,
                clock_rate: 48000
            })
        );
        assert_eq!(n.audio_level_ext, None);
        assert_eq!(n.remote_rtcp, Some("10.0.0.5:7079".parse().unwrap()));
        let l = lines(&a.text);
        assert!(l.contains(&"m=audio 40002 RTP/AVP 96 101"), "{}", a.text);
        assert_eq!(l.last(), Some(&"m=video 0 RTP/AVP 96 97"), "{}", a.text);
        assert!(!a.text.contains("extmap"));
        // Both m= lines parse back, in the offer's order.
        let back = Session::parse(&a.text).unwrap();
        assert_eq!(back.media.len(), 2);
        assert_eq!(back.media[1].port, 0);
    }

    #[test]
    fn desk_phones_get_g711() {
        let a = answer(&crlf(POLYCOM), None, &mut local(), 40004).unwrap();
        let n = &a.negotiated;
        assert_eq!((n.codec, n.payload_type), (CodecKind::Pcmu, 0));
        assert_eq!(n.telephone_event.map(|t| t.payload_type), Some(127));
        assert!(lines(&a.text).contains(&"m=audio 40004 RTP/AVP 0 127"));
        assert!(lines(&a.text).contains(&"a=rtpmap:0 PCMU/8000"));
        assert!(!a.text.contains("fmtp:0"));

        // Our preference wins over the phone's (PCMU before PCMA).
        let a = answer(&crlf(YEALINK), None, &mut local(), 40006).unwrap();
        assert_eq!(a.negotiated.codec, CodecKind::Pcmu);
        assert_eq!(a.negotiated.remote_rtp, "10.1.2.3:11800".parse().unwrap());
        assert!(!a.text.contains("crypto"));

        // Unless the dialog already uses PCMA and the re-offer still has it.
        let a = answer(&crlf(YEALINK), Some(CodecKind::Pcma), &mut local(), 40006).unwrap();
        assert_eq!(
            (a.negotiated.codec, a.negotiated.payload_type),
            (CodecKind::Pcma, 8)
        );
    }

    #[test]
    fn webrtc_is_refused_with_488() {
        let e = answer(&crlf(WEBRTC), None, &mut local(), 40008).unwrap_err();
        assert_eq!(
            e,
            SdpError::UnsupportedTransport("UDP/TLS/RTP/SAVPF".into())
        );
        assert_eq!(e.status(), 488);
        assert_eq!(e.warning().0, 302);
        let savp = crlf(&BARESIP.replace("RTP/AVP", "RTP/SAVP"));
        assert_eq!(
            answer(&savp, None, &mut local(), 1).unwrap_err().status(),
            488
        );
    }

    #[test]
    fn no_common_codec_is_488() {
        let offer = crlf(
            "v=0
            o=- 1 1 IN IP4 10.0.0.1
            s=-
            c=IN IP4 10.0.0.1
            t=0 0
            m=audio 5004 RTP/AVP 9 18 101
            a=rtpmap:9 G722/8000
            a=rtpmap:18 G729/8000
            a=rtpmap:101 telephone-event/8000",
        );
        let e = answer(&offer, None, &mut local(), 1).unwrap_err();
        assert_eq!(e, SdpError::NoCommonCodec);
        assert_eq!((e.status(), e.warning().0), (488, 305));
    }

    #[test]
    fn static_types_need_no_rtpmap_and_remapped_ones_are_read() {
        let offer = crlf(
            "v=0
            o=- 1 1 IN IP4 10.0.0.1
            s=-
            c=IN IP4 10.0.0.1
            t=0 0
            m=audio 5004 RTP/AVP 8 3",
        );
        let a = answer(&offer, None, &mut local(), 1).unwrap();
        assert_eq!(
            (a.negotiated.codec, a.negotiated.payload_type),
            (CodecKind::Pcma, 8)
        );
        assert_eq!(a.negotiated.telephone_event, None);
        assert!(!a.text.contains("telephone-event"));
    }

    #[test]
    fn hold_offers() {
        let sendonly = crlf(&BARESIP.replace("a=sendrecv", "a=sendonly"));
        let a = answer(&sendonly, None, &mut local(), 1).unwrap();
        assert!(a.negotiated.hold);
        assert_eq!(a.negotiated.answer_direction(), Direction::RecvOnly);
        assert!(lines(&a.text).contains(&"a=recvonly"));

        let inactive = crlf(&POLYCOM.replace("a=sendrecv", "a=inactive"));
        let a = answer(&inactive, None, &mut local(), 1).unwrap();
        assert!(a.negotiated.hold);
        assert!(lines(&a.text).contains(&"a=inactive"));

        let zero = crlf(&POLYCOM.replace("c=IN IP4 192.168.1.50", "c=IN IP4 0.0.0.0"));
        let a = answer(&zero, None, &mut local(), 1).unwrap();
        assert!(a.negotiated.hold);
        assert_eq!(a.negotiated.direction, Direction::SendRecv);
        assert!(a.negotiated.remote_rtp.ip().is_unspecified());

        // Media level beats session level.
        let both = crlf(&POLYCOM.replace(
            "a=rtpmap:127 telephone-event/8000",
            "a=rtpmap:127 telephone-event/8000\na=sendonly",
        ));
        let a = answer(&both, None, &mut local(), 1).unwrap();
        assert_eq!(a.negotiated.direction, Direction::SendOnly);

        let recvonly = crlf(&BARESIP.replace("a=sendrecv", "a=recvonly"));
        let a = answer(&recvonly, None, &mut local(), 1).unwrap();
        assert!(!a.negotiated.hold);
        assert!(lines(&a.text).contains(&"a=sendonly"));
    }

    #[test]
    fn ipv6_and_extmap_variants() {
        let offer = crlf(
            "v=0
            o=- 1 1 IN IP6 2001:db8::1
            s=-
            c=IN IP6 2001:db8::1
            t=0 0
            a=extmap:3/sendonly urn:ietf:params:rtp-hdrext:ssrc-audio-level vad=on
            m=audio 5004 RTP/AVPF 0
            a=rtcp:5008 IN IP6 2001:db8::2",
        );
        let a = answer(&offer, None, &mut local(), 1).unwrap();
        let n = &a.negotiated;
        assert_eq!(n.remote_rtp, "[2001:db8::1]:5004".parse().unwrap());
        assert_eq!(n.remote_rtcp, Some("[2001:db8::2]:5008".parse().unwrap()));
        assert_eq!(n.audio_level_ext, Some(3));
        assert_eq!(n.proto, "RTP/AVPF");
        assert!(lines(&a.text).contains(&"m=audio 1 RTP/AVPF 0"));
        assert!(lines(&a.text)
            .contains(&"a=extmap:3/recvonly urn:ietf:params:rtp-hdrext:ssrc-audio-level"));
    }

    #[test]
    fn disabled_and_unusable_streams_are_skipped() {
        // The first audio line is disabled (port 0); the second one is used, and the
        // answer keeps both lines in place.
        let offer = crlf(
            "v=0
            o=- 1 1 IN IP4 10.0.0.1
            s=-
            c=IN IP4 10.0.0.1
            t=0 0
            m=audio 0 RTP/AVP 0
            m=audio 6000 RTP/AVP 8",
        );
        let a = answer(&offer, None, &mut local(), 7000).unwrap();
        assert_eq!(a.negotiated.media_index, 1);
        let ms: Vec<&str> = lines(&a.text)
            .into_iter()
            .filter(|l| l.starts_with("m="))
            .collect();
        assert_eq!(ms, vec!["m=audio 0 RTP/AVP 0", "m=audio 7000 RTP/AVP 8"]);

        let only_disabled = crlf(&POLYCOM.replace("m=audio 2222", "m=audio 0"));
        assert_eq!(
            answer(&only_disabled, None, &mut local(), 1).unwrap_err(),
            SdpError::NoAudio
        );
    }

    #[test]
    fn malformed_and_unsupported_addresses() {
        assert!(matches!(
            Session::parse("hello"),
            Err(SdpError::Malformed(_))
        ));
        assert!(matches!(Session::parse(""), Err(SdpError::Malformed(_))));
        let fqdn = crlf(&POLYCOM.replace("c=IN IP4 192.168.1.50", "c=IN IP4 phone.example"));
        assert_eq!(
            Session::parse(&fqdn).unwrap_err(),
            SdpError::UnsupportedAddress
        );
        let mcast = crlf(&POLYCOM.replace("c=IN IP4 192.168.1.50", "c=IN IP4 224.2.1.1/127"));
        assert_eq!(
            Session::parse(&mcast).unwrap_err(),
            SdpError::UnsupportedAddress
        );
        let noc = crlf(&POLYCOM.replace("c=IN IP4 192.168.1.50", ""));
        assert!(matches!(
            answer(&noc, None, &mut local(), 1),
            Err(SdpError::Malformed(_))
        ));
        let badport = crlf(&POLYCOM.replace("m=audio 2222", "m=audio 99999"));
        assert_eq!(Session::parse(&badport).unwrap_err().status(), 400);
    }

    #[test]
    fn version_increments_only_when_the_answer_changes() {
        let mut l = local();
        let offer = crlf(BARESIP);
        let first = answer(&offer, None, &mut l, 40000).unwrap().text;
        assert_eq!(l.version(), 1);
        let again = answer(&offer, None, &mut l, 40000).unwrap().text;
        assert_eq!(first, again);
        let hold = crlf(&BARESIP.replace("a=sendrecv", "a=sendonly"));
        let held = answer(&hold, None, &mut l, 40000).unwrap().text;
        assert_eq!(l.version(), 2);
        let o = |t: &str| Session::parse(t).unwrap().origin.unwrap();
        assert_eq!(o(&held).session_id, o(&first).session_id);
        assert_eq!(o(&held).version, "2");
        let resumed = answer(&offer, None, &mut l, 40000).unwrap().text;
        assert_eq!(o(&resumed).version, "3");
        assert_eq!(l.last().as_deref(), Some(resumed.as_str()));
    }

    #[test]
    fn answers_are_valid_offers_for_the_same_choice() {
        for offer in [BARESIP, LINPHONE, POLYCOM, YEALINK] {
            let a = answer(&crlf(offer), None, &mut local(), 30000).unwrap();
            let back = negotiate(&Session::parse(&a.text).unwrap(), None).unwrap();
            assert_eq!(back.codec, a.negotiated.codec);
            assert_eq!(back.payload_type, a.negotiated.payload_type);
            assert_eq!(back.telephone_event, a.negotiated.telephone_event);
            assert_eq!(back.audio_level_ext, a.negotiated.audio_level_ext);
            assert_eq!(back.remote_rtp.port(), 30000);
        }
    }

    /// An offer's text and what it offered: codecs, telephone-event, level id, direction.
    type Offer = (
        String,
        Vec<(CodecKind, u8)>,
        Option<(u8, u32)>,
        Option<u8>,
        Direction,
    );

    fn offer_strategy() -> impl Strategy<Value = Offer> {
        let codecs = proptest::sample::subsequence(
            vec![
                (CodecKind::Opus, 0u8),
                (CodecKind::Pcmu, 0),
                (CodecKind::Pcma, 8),
            ],
            1..=3,
        );
        let direction = prop_oneof![
            Just(Direction::SendRecv),
            Just(Direction::SendOnly),
            Just(Direction::RecvOnly),
            Just(Direction::Inactive),
        ];
        (
            codecs,
            96u8..=127,
            proptest::option::of((96u8..=127, prop_oneof![Just(8000u32), Just(48000)])),
            proptest::option::of(1u8..=14),
            direction,
            any::<[u8; 4]>(),
            1u16..,
            proptest::bool::ANY,
        )
            .prop_filter("distinct payload types", |(_, opus, te, ..)| {
                te.is_none_or(|(t, _)| t != *opus)
            })
            .prop_map(|(codecs, opus_pt, te, ext, dir, ip, port, shuffle)| {
                let mut codecs: Vec<(CodecKind, u8)> = codecs
                    .into_iter()
                    .map(|(c, pt)| {
                        if c == CodecKind::Opus {
                            (c, opus_pt)
                        } else {
                            (c, pt)
                        }
                    })
                    .collect();
                if shuffle {
                    codecs.reverse();
                }
                let mut fmts: Vec<String> = codecs.iter().map(|(_, pt)| pt.to_string()).collect();
                if let Some((pt, _)) = te {
                    fmts.push(pt.to_string());
                }
                // Unicast only: multicast groups are refused by design.
                let ip = Ipv4Addr::new(ip[0] % 224, ip[1], ip[2], ip[3]);
                let mut s = format!(
                    "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
                     m=audio {port} RTP/AVP {}\r\n",
                    fmts.join(" ")
                );
                for (c, pt) in &codecs {
                    let name = match c {
                        CodecKind::Opus => "opus/48000/2",
                        CodecKind::Pcmu => "PCMU/8000",
                        CodecKind::Pcma => "PCMA/8000",
                    };
                    s.push_str(&format!("a=rtpmap:{pt} {name}\r\n"));
                }
                if let Some((pt, rate)) = te {
                    s.push_str(&format!("a=rtpmap:{pt} telephone-event/{rate}\r\n"));
                }
                if let Some(id) = ext {
                    s.push_str(&format!("a=extmap:{id} {AUDIO_LEVEL_URN}\r\n"));
                }
                s.push_str(&format!("a={}\r\n", dir.as_str()));
                (s, codecs, te, ext, dir)
            })
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in "(?s).{0,400}") {
            if let Ok(session) = Session::parse(&s) {
                let _ = negotiate(&session, None);
            }
        }

        #[test]
        fn sdp_shaped_text_never_panics(
            lines in proptest::collection::vec(
                ("[vocmabt]", "[ -~]{0,40}").prop_map(|(k, v)| format!("{k}={v}")),
                0..30,
            )
        ) {
            let text = format!("v=0\r\n{}", lines.join("\r\n"));
            if let Ok(session) = Session::parse(&text) {
                if let Ok(n) = negotiate(&session, Some(CodecKind::Pcma)) {
                    let _ = local().render(&n, 1000, n.answer_direction());
                }
            }
        }

        #[test]
        fn answers_round_trip((offer, codecs, te, ext, dir) in offer_strategy(), port in 1u16..) {
            let a = answer(&offer, None, &mut local(), port).unwrap();
            let n = &a.negotiated;
            let want = PREFERENCE
                .iter()
                .find_map(|p| codecs.iter().find(|(c, _)| c == p))
                .copied()
                .unwrap();
            prop_assert_eq!((n.codec, n.payload_type), want);
            prop_assert_eq!(n.telephone_event.map(|t| (t.payload_type, t.clock_rate)), te);
            prop_assert_eq!(n.audio_level_ext, ext);
            prop_assert_eq!(n.direction, dir);

            let back = negotiate(&Session::parse(&a.text).unwrap(), None).unwrap();
            prop_assert_eq!(back.codec, n.codec);
            prop_assert_eq!(back.payload_type, n.payload_type);
            prop_assert_eq!(back.telephone_event, n.telephone_event);
            prop_assert_eq!(back.audio_level_ext, n.audio_level_ext);
            prop_assert_eq!(back.direction, dir.answer());
            prop_assert_eq!(back.remote_rtp, SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)), port));
        }
    }
}
