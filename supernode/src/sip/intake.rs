//! SIP message intake: the one place raw bytes from the network become `rsip` messages.
//!
//! Real phones send SIP that rsip 0.4 (last released in 2022) mishandles: compact header
//! names come out as unknown headers, a folded header line is a parse error, `Content-Length`
//! is ignored (the body is whatever follows the blank line), whitespace before the colon of
//! a header fails the whole message, and comma-combined `Via`/`Contact` values silently lose
//! every element but the first. So every message is normalised here first, in one pass over
//! the header section, into one output buffer that rsip reads without surprises. The same
//! pass collects what is needed to answer a request we reject (RFC 3261 §8.2.6), because a
//! phone that gets no answer retransmits for 32 seconds instead of learning what is wrong.
//!
//! Limits of rsip 0.4 that normalising cannot fix, and how they surface here:
//! * an IPv6 host in the Request-URI fails rsip's URI parser (it splits host and port at the
//!   first `:`): [`parse`] answers `501` via [`IntakeError::Unsupported`]; IPv6 hosts in
//!   `Via`/`Contact`/`From`/`To` parse as untyped headers but their `typed()` fails;
//! * a non-`sip:`/`sips:` Request-URI (`tel:` …) fails to parse: answered `416`;
//! * a method outside rsip's fixed list is unparseable: answered `501`.

use std::ops::Range;

/// Largest message accepted (64 KiB): one UDP datagram can be no larger, and a stream peer
/// that sends more is either broken or hostile, so buffering must stop somewhere.
pub const MAX_MESSAGE: usize = 65_535;

/// Longest header line accepted (8 KiB), start line and unfolded header lines alike: no
/// legitimate header comes near it, and the bound keeps per-line work predictable.
pub const MAX_HEADER_LINE: usize = 8_192;

/// Why a message was not accepted; each maps to a reply (see [`IntakeError::reply`]) or a
/// silent drop, and is counted (see [`IntakeError::kind`]).
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// Not a message at all (empty, binary garbage, no start line): dropped silently,
    /// because answering noise only helps reflection attacks.
    #[error("not a SIP message: {0}")]
    Garbage(&'static str),
    /// A message we answer with `400 Bad Request` and this reason phrase when `context` is
    /// known. For responses, for ACK (never answered), or for requests without a usable
    /// `Via`, `context` is None and the message is dropped.
    #[error("bad SIP message: {reason}")]
    BadRequest {
        /// The reason phrase for the 400, e.g. "Bad CSeq" or "Missing Call-ID".
        reason: &'static str,
        /// What is needed to build the reply, when a reply is possible (boxed so the
        /// error stays small on the hot path's `Result`).
        context: Option<Box<ReplyContext>>,
    },
    /// Too large (more than [`MAX_MESSAGE`] bytes, or one header line over
    /// [`MAX_HEADER_LINE`]): answered `513 Message Too Large` when `context` is known.
    #[error("SIP message too large")]
    TooLarge {
        /// What is needed to build the reply, when a reply is possible (boxed so the
        /// error stays small on the hot path's `Result`).
        context: Option<Box<ReplyContext>>,
    },
    /// A well-formed request this service cannot handle, mostly because rsip 0.4 cannot
    /// represent it: `501 Not Implemented` (method outside rsip's list, IPv6 Request-URI),
    /// `416 Unsupported URI Scheme` (`tel:` …), `505 Version Not Supported`. RFC 3261 asks
    /// for these specific codes so the phone can tell "fix your message" from "not here".
    #[error("unsupported SIP message: {code} {reason}")]
    Unsupported {
        /// The status code to answer with.
        code: u16,
        /// The reason phrase to answer with.
        reason: &'static str,
        /// What is needed to build the reply, when a reply is possible (boxed so the
        /// error stays small on the hot path's `Result`).
        context: Option<Box<ReplyContext>>,
    },
}

impl IntakeError {
    /// The status code, reason phrase and reply context to answer with, or None when the
    /// message must be dropped silently; saves every transport from repeating the mapping.
    pub fn reply(&self) -> Option<(u16, &'static str, &ReplyContext)> {
        match self {
            Self::Garbage(_) => None,
            Self::BadRequest { reason, context } => context.as_deref().map(|c| (400, *reason, c)),
            Self::TooLarge { context } => context.as_deref().map(|c| (513, "Message Too Large", c)),
            Self::Unsupported {
                code,
                reason,
                context,
            } => context.as_deref().map(|c| (*code, *reason, c)),
        }
    }

    /// A short stable label for metrics, so rejected traffic is counted per cause without
    /// formatting strings on the hot path.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Garbage(_) => "garbage",
            Self::BadRequest { .. } => "bad_request",
            Self::TooLarge { .. } => "too_large",
            Self::Unsupported { .. } => "unsupported",
        }
    }

    /// The reply context, if the message can be answered at all.
    pub fn context(&self) -> Option<&ReplyContext> {
        match self {
            Self::Garbage(_) => None,
            Self::BadRequest { context, .. }
            | Self::TooLarge { context }
            | Self::Unsupported { context, .. } => context.as_deref(),
        }
    }

    fn into_context(self) -> Option<Box<ReplyContext>> {
        match self {
            Self::Garbage(_) => None,
            Self::BadRequest { context, .. }
            | Self::TooLarge { context }
            | Self::Unsupported { context, .. } => context,
        }
    }
}

/// The raw header values needed to answer a request we could not parse (RFC 3261 §8.2.6:
/// copy Via, From, To, Call-ID, CSeq; add a To tag). Kept as strings because the request
/// never became an rsip message. A header that was missing is an empty string and is left
/// out of the reply. The transport may edit `vias[0]` (received/rport, RFC 3261 §18.2.1;
/// RFC 3581) before calling [`ReplyContext::response`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyContext {
    /// Every Via value, top first, one element per entry (combined values already split).
    pub vias: Vec<String>,
    /// The From value.
    pub from: String,
    /// The To value.
    pub to: String,
    /// The Call-ID value.
    pub call_id: String,
    /// The CSeq value, as received.
    pub cseq: String,
    /// The request-line method, e.g. "REGISTER" (for logging and CANCEL handling).
    pub method: String,
}

impl ReplyContext {
    /// Builds the whole response bytes, e.g. "SIP/2.0 400 Bad CSeq\r\nVia: ...\r\n...
    /// Content-Length: 0\r\n\r\n". A To tag is added when the To has none and `to_tag` is
    /// not empty (RFC 3261 §8.2.6.2); `server` (if not empty) becomes a Server header.
    /// Control characters in `reason`, `to_tag` and `server` are dropped so a caller's
    /// string can never inject a header line.
    pub fn response(&self, code: u16, reason: &str, to_tag: &str, server: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            160 + self.vias.iter().map(|v| v.len() + 7).sum::<usize>()
                + self.from.len()
                + self.to.len()
                + self.call_id.len()
                + self.cseq.len()
                + server.len(),
        );
        out.extend_from_slice(b"SIP/2.0 ");
        push_decimal(&mut out, u64::from(code));
        out.push(b' ');
        push_printable(&mut out, reason.as_bytes());
        out.extend_from_slice(b"\r\n");
        for via in &self.vias {
            push_header(&mut out, b"Via", via.as_bytes());
        }
        if !self.from.is_empty() {
            push_header(&mut out, b"From", self.from.as_bytes());
        }
        if !self.to.is_empty() {
            out.extend_from_slice(b"To: ");
            out.extend_from_slice(self.to.as_bytes());
            if !to_tag.is_empty() && !has_tag(self.to.as_bytes()) {
                out.extend_from_slice(b";tag=");
                for &b in to_tag.as_bytes() {
                    if is_token(b) {
                        out.push(b);
                    }
                }
            }
            out.extend_from_slice(b"\r\n");
        }
        if !self.call_id.is_empty() {
            push_header(&mut out, b"Call-ID", self.call_id.as_bytes());
        }
        if !self.cseq.is_empty() {
            push_header(&mut out, b"CSeq", self.cseq.as_bytes());
        }
        if !server.is_empty() {
            out.extend_from_slice(b"Server: ");
            push_printable(&mut out, server.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
        out
    }
}

/// What one datagram or one framed stream message was.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "Message is the overwhelmingly common variant; boxing it would add an allocation per message for nothing"
)]
pub enum Intake {
    /// A CRLF keepalive ping ("\r\n\r\n", RFC 5626 §3.5.1): the caller answers "\r\n" on a
    /// stream and ignores it on UDP.
    Keepalive,
    /// A lone CRLF (a peer's pong to our ping, or stray CRLF before a start line, which
    /// RFC 3261 §7.5 says to ignore): nothing to do; answering it would start a ping-pong.
    Pong,
    /// A parsed message.
    Message(rsip::SipMessage),
}

/// Normalises and parses one whole message (a UDP datagram, or one message framed by
/// [`frame_stream`]); the single entry point the transports call.
pub fn parse(raw: &[u8]) -> Result<Intake, IntakeError> {
    if !raw.is_empty() && raw.iter().all(|&b| b == b'\r' || b == b'\n') {
        let lfs = raw.iter().filter(|&&b| b == b'\n').count();
        return Ok(if lfs >= 2 {
            Intake::Keepalive
        } else {
            Intake::Pong
        });
    }
    let norm = normalize_inner(raw)?;
    if let Kind::Request { method, uri, .. } = &norm.kind {
        let method = norm.out.get(method.clone()).unwrap_or_default();
        let uri = norm.out.get(uri.clone()).unwrap_or_default();
        if !RSIP_METHODS.contains(&method) {
            return Err(IntakeError::Unsupported {
                code: 501,
                reason: "Not Implemented",
                context: context_of(&norm),
            });
        }
        let scheme_end = uri.iter().position(|&b| b == b':').unwrap_or(0);
        let scheme = uri.get(..scheme_end).unwrap_or_default();
        if !scheme.eq_ignore_ascii_case(b"sip") && !scheme.eq_ignore_ascii_case(b"sips") {
            return Err(IntakeError::Unsupported {
                code: 416,
                reason: "Unsupported URI Scheme",
                context: context_of(&norm),
            });
        }
    }
    match rsip::SipMessage::try_from(norm.out.as_slice()) {
        Ok(message) => Ok(Intake::Message(message)),
        Err(_) => Err(rsip_failure(&norm)),
    }
}

/// Normalisation alone (for tests and fuzzing, and for callers that forward bytes rather
/// than rsip values): unfolds continuation lines, expands compact header names, splits
/// comma-combined Via/Contact/Route/Record-Route values into one header each, removes the
/// optional whitespace inside Via that rsip's Via parser rejects, checks Content-Length and
/// cuts the body to it (a body longer than Content-Length is truncated per RFC 3261 §18.3;
/// a missing Content-Length means the rest of the datagram is the body, and the header is
/// added), and rejects what would make the message unusable or ambiguous: NUL or other
/// control bytes and non-UTF-8 in the header section, a missing Via/From/To/Call-ID/CSeq,
/// duplicates of the single-valued ones, a CSeq number of 2^31 or more (RFC 3261 §8.1.1.5)
/// or a CSeq method that differs from the request line, a non-numeric Max-Forwards.
/// Leading CRLFs are skipped; input that is only CRLFs is [`IntakeError::Garbage`] here
/// ([`parse`] reports it as a keepalive first). Bare-LF line ends are accepted and become CRLF.
pub fn normalize(raw: &[u8]) -> Result<Vec<u8>, IntakeError> {
    normalize_inner(raw).map(|n| n.out)
}

/// TCP/TLS framing (RFC 3261 §18.3): given the bytes buffered from a stream, returns
/// `Ok(Some(n))` when the first `n` bytes are one whole message (headers plus
/// Content-Length body), `Ok(None)` when more bytes are needed, and `Err` when the stream
/// is unusable and should be closed (after answering, if [`IntakeError::reply`] allows):
/// headers over [`MAX_MESSAGE`] without a blank line, a first line that is no start line,
/// or a missing or bad Content-Length, which is mandatory on streams.
///
/// Leading CR/LF bytes (keepalives) are returned as their own "message" of just those
/// bytes, `Some(k)`, for the caller to hand to [`parse`], which says [`Intake::Keepalive`]
/// or [`Intake::Pong`]. A run of fewer than four CR/LF bytes at the very end of the buffer
/// waits for more (`None`), so that a ping split across reads is still seen whole.
///
/// The function is stateless, so each call rescans the buffered headers: call it when new
/// bytes arrived, not in a loop; a peer trickling bytes costs at most O(n²) over 64 KiB.
pub fn frame_stream(buf: &[u8]) -> Result<Option<usize>, IntakeError> {
    let crlfs = buf
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    if crlfs > 0 {
        return Ok((crlfs < buf.len() || crlfs >= 4).then_some(crlfs));
    }
    if buf.is_empty() {
        return Ok(None);
    }
    let first = scan_line(buf, 0);
    if first.end - first.start > MAX_HEADER_LINE {
        return Err(IntakeError::TooLarge { context: None });
    }
    if !first.terminated {
        return Ok(None);
    }
    if let Err(IntakeError::Garbage(why)) = split_start_line(slice(buf, first.start..first.end)) {
        return Err(IntakeError::Garbage(why));
    }

    let mut pos = first.next;
    let mut current: Option<ClParse> = None;
    let mut length: Option<Result<usize, ()>> = None;
    let header_end = loop {
        if pos > MAX_MESSAGE {
            return Err(IntakeError::TooLarge {
                context: scan_context(slice(buf, 0..MAX_MESSAGE)),
            });
        }
        let line = scan_line(buf, pos);
        if !line.terminated {
            if buf.len() > MAX_MESSAGE {
                return Err(IntakeError::TooLarge {
                    context: scan_context(slice(buf, 0..MAX_MESSAGE)),
                });
            }
            return Ok(None);
        }
        let text = slice(buf, line.start..line.end);
        pos = line.next;
        match text.first() {
            None => {
                cl_finish(&mut current, &mut length);
                break line.next;
            }
            Some(b' ' | b'\t') => {
                if let Some(cl) = current.as_mut() {
                    cl.feed(b" ");
                    cl.feed(text);
                }
            }
            Some(_) => {
                cl_finish(&mut current, &mut length);
                if let Some(colon) = text.iter().position(|&b| b == b':') {
                    let name = trim(slice(text, 0..colon));
                    if name.eq_ignore_ascii_case(b"Content-Length")
                        || name.eq_ignore_ascii_case(b"l")
                    {
                        let mut cl = ClParse::default();
                        cl.feed(slice(text, colon + 1..text.len()));
                        current = Some(cl);
                    }
                }
            }
        }
    };
    let bad = |reason| IntakeError::BadRequest {
        reason,
        context: scan_context(slice(buf, 0..header_end)),
    };
    let body = match length {
        None => return Err(bad("Missing Content-Length")),
        Some(Err(())) => return Err(bad("Bad Content-Length")),
        Some(Ok(n)) => n,
    };
    let total = header_end.saturating_add(body);
    if total > MAX_MESSAGE {
        return Err(IntakeError::TooLarge {
            context: scan_context(slice(buf, 0..header_end)),
        });
    }
    Ok((buf.len() >= total).then_some(total))
}

/// Closes the Content-Length header being read by [`frame_stream`], merging it with any
/// earlier one: equal duplicates are harmless, different ones make the framing ambiguous.
fn cl_finish(current: &mut Option<ClParse>, length: &mut Option<Result<usize, ()>>) {
    if let Some(cl) = current.take() {
        let value = cl.finish().ok_or(());
        *length = match (*length, value) {
            (None, v) => Some(v),
            (Some(Ok(a)), Ok(b)) if a == b => Some(Ok(a)),
            _ => Some(Err(())),
        };
    }
}

/// The methods rsip 0.4 can represent, spelled as RFC 3261 requires (methods are
/// case-sensitive; rsip itself would also accept "invite").
const RSIP_METHODS: [&[u8]; 14] = [
    b"ACK",
    b"BYE",
    b"CANCEL",
    b"INFO",
    b"INVITE",
    b"MESSAGE",
    b"NOTIFY",
    b"OPTIONS",
    b"PRACK",
    b"PUBLISH",
    b"REFER",
    b"REGISTER",
    b"SUBSCRIBE",
    b"UPDATE",
];

/// Normalised bytes plus what the scan learned, so [`parse`] need not rescan.
struct Normalized {
    out: Vec<u8>,
    kind: Kind,
}

enum Kind {
    /// Ranges index into the output buffer's start line.
    Request {
        method: Range<usize>,
        uri: Range<usize>,
        ack: bool,
    },
    Response,
}

/// An error noticed mid-scan: the scan goes on so the reply context is complete.
#[derive(Clone, Copy)]
enum Pending {
    Bad(&'static str),
    TooLarge,
    Unsupported(u16, &'static str),
}

/// Header names the scan treats specially; everything else is copied through.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Name {
    Via,
    From,
    To,
    CallId,
    CSeq,
    ContentLength,
    MaxForwards,
    Contact,
    Route,
    RecordRoute,
    Other,
}

const SEEN_VIA: u8 = 1;
const SEEN_FROM: u8 = 2;
const SEEN_TO: u8 = 4;
const SEEN_CALL_ID: u8 = 8;
const SEEN_CSEQ: u8 = 16;

/// Byte classes for the line scanner: anything non-zero needs a second look, so the common
/// printable-ASCII byte costs one table load and one compare.
const C_LF: u8 = 1;
const C_CTL: u8 = 2;
const C_HIGH: u8 = 4;

static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = if i == b'\n' as usize {
            C_LF
        } else if i == b'\t' as usize {
            0
        } else if i < 0x20 || i == 0x7f {
            C_CTL
        } else if i >= 0x80 {
            C_HIGH
        } else {
            0
        };
        i += 1;
    }
    t
};

/// One physical line: `start..end` excludes the line ending.
struct Line {
    start: usize,
    end: usize,
    next: usize,
    flags: u8,
    terminated: bool,
}

/// Finds the physical line starting at `pos`, noting control and non-ASCII bytes on the
/// way, so the header section is read once. A CR counts as part of the line ending only
/// directly before the LF; anywhere else it is a control byte, since a lone CR would
/// re-split the line for a less careful parser downstream.
fn scan_line(buf: &[u8], pos: usize) -> Line {
    let mut flags = 0u8;
    let mut i = pos;
    loop {
        // Skip eight plain printable-ASCII bytes at a time (SWAR): only a chunk holding
        // a control byte (LF, CR, TAB, ...), DEL or a non-ASCII byte is looked at bytewise.
        while let Some(chunk) = buf.get(i..i + 8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            if unusual(u64::from_le_bytes(word)) {
                break;
            }
            i += 8;
        }
        let chunk_end = (i + 8).min(buf.len());
        while i < chunk_end {
            let b = buf.get(i).copied().unwrap_or(b'\n');
            let class = CLASS[usize::from(b)];
            if class == C_LF {
                let end = if i > pos && buf.get(i - 1) == Some(&b'\r') {
                    i - 1
                } else {
                    i
                };
                return Line {
                    start: pos,
                    end,
                    next: i + 1,
                    flags,
                    terminated: true,
                };
            }
            if class != 0 && !(b == b'\r' && buf.get(i + 1) == Some(&b'\n')) {
                flags |= class;
            }
            i += 1;
        }
        if i >= buf.len() {
            return Line {
                start: pos.min(buf.len()),
                end: buf.len(),
                next: buf.len(),
                flags,
                terminated: false,
            };
        }
    }
}

/// Whether any byte of the word is below 0x20, is 0x7f, or is 0x80 and up (the classic
/// "has less than" bit trick, exact for n <= 128).
fn unusual(x: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below_space = x.wrapping_sub(ONES * 0x20) & !x;
    let del = x ^ (ONES * 0x7f);
    let is_del = del.wrapping_sub(ONES) & !del;
    (below_space | is_del | x) & HIGH != 0
}

/// A slice that is empty instead of panicking when the range is out of bounds; every range
/// here is derived from scans of the same buffer, this only makes that cheap to trust.
fn slice(buf: &[u8], range: Range<usize>) -> &[u8] {
    buf.get(range).unwrap_or_default()
}

fn is_ws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if !is_ws(*first) {
            break;
        }
        s = rest;
    }
    while let [rest @ .., last] = s {
        if !is_ws(*last) {
            break;
        }
        s = rest;
    }
    s
}

/// RFC 3261 §25.1 token characters, as a table because header names are checked per byte.
static TOKEN: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
            );
        i += 1;
    }
    t
};

fn is_token(b: u8) -> bool {
    TOKEN[usize::from(b)]
}

/// The start line cut into its parts, before anything is written.
enum StartLine<'a> {
    Request {
        method: &'a [u8],
        uri: &'a [u8],
        version: &'a [u8],
    },
    Response {
        version: &'a [u8],
        code: &'a [u8],
        reason: &'a [u8],
    },
}

/// Splits a start line at whitespace runs (tolerating tabs and doubled spaces, which rsip
/// would reject) and decides whether it is a SIP start line at all. Only the "is this
/// SIP?" question is answered here, with `Garbage`; the finer checks are the caller's.
fn split_start_line(line: &[u8]) -> Result<StartLine<'_>, IntakeError> {
    if line
        .iter()
        .any(|&b| CLASS[usize::from(b)] & C_CTL != 0 || b == b'\r')
    {
        return Err(IntakeError::Garbage("control bytes in start line"));
    }
    let first_end = line.iter().position(|&b| is_ws(b)).unwrap_or(line.len());
    let first = slice(line, 0..first_end);
    let rest = trim(slice(line, first_end..line.len()));
    let second_end = rest.iter().position(|&b| is_ws(b)).unwrap_or(rest.len());
    let second = slice(rest, 0..second_end);
    let third = trim(slice(rest, second_end..rest.len()));
    if first.len() >= 4 && slice(first, 0..4).eq_ignore_ascii_case(b"SIP/") {
        return Ok(StartLine::Response {
            version: first,
            code: second,
            reason: third,
        });
    }
    let sip_version = third.len() >= 4 && slice(third, 0..4).eq_ignore_ascii_case(b"SIP/");
    if first.is_empty()
        || !first.iter().all(|&b| is_token(b))
        || second.is_empty()
        || !sip_version
        || third.iter().any(|&b| is_ws(b))
    {
        return Err(IntakeError::Garbage("no SIP start line"));
    }
    Ok(StartLine::Request {
        method: first,
        uri: second,
        version: third,
    })
}

/// The whole normalisation pass; see [`normalize`] for what it does and why.
fn normalize_inner(raw: &[u8]) -> Result<Normalized, IntakeError> {
    let skip = raw
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    if skip >= raw.len() {
        return Err(IntakeError::Garbage("empty"));
    }
    let start = scan_line(raw, skip);
    if start.end - start.start > MAX_HEADER_LINE {
        return Err(IntakeError::TooLarge { context: None });
    }
    let mut s = Scanner {
        out: Vec::with_capacity(raw.len() + 128),
        scratch: Vec::new(),
        pending: None,
        seen: 0,
        via_bad: false,
        content_length: None,
        kind: Kind::Response,
    };
    s.start_line(slice(raw, start.start..start.end), start.flags)?;

    let mut pos = start.next;
    let mut body_start = raw.len();
    while pos < raw.len() {
        let line = scan_line(raw, pos);
        if line.start == line.end {
            body_start = line.next;
            break;
        }
        pos = s.header(raw, line);
    }
    s.finish(raw, body_start)
}

struct Scanner {
    out: Vec<u8>,
    /// Only used for folded headers, so unfolded messages never allocate it.
    scratch: Vec<u8>,
    pending: Option<Pending>,
    seen: u8,
    /// A Via line had to be dropped: replying would route by the wrong Via.
    via_bad: bool,
    content_length: Option<Result<usize, ()>>,
    kind: Kind,
}

impl Scanner {
    /// Keeps the first error, except that a size error wins: it maps to its own status.
    fn note(&mut self, p: Pending) {
        if self.pending.is_none() || matches!(p, Pending::TooLarge) {
            self.pending = Some(p);
        }
    }

    fn start_line(&mut self, line: &[u8], flags: u8) -> Result<(), IntakeError> {
        match split_start_line(line)? {
            StartLine::Response {
                version,
                code,
                reason,
            } => {
                if !version.eq_ignore_ascii_case(b"SIP/2.0") {
                    return Err(IntakeError::Unsupported {
                        code: 505,
                        reason: "Version Not Supported",
                        context: None,
                    });
                }
                let code_ok = code.len() == 3
                    && code.iter().all(u8::is_ascii_digit)
                    && matches!(code.first(), Some(b'1'..=b'6'));
                if !code_ok || (flags & C_HIGH != 0 && std::str::from_utf8(reason).is_err()) {
                    return Err(IntakeError::BadRequest {
                        reason: "Bad Status Line",
                        context: None,
                    });
                }
                self.out.extend_from_slice(b"SIP/2.0 ");
                self.out.extend_from_slice(code);
                self.out.push(b' ');
                self.out.extend_from_slice(reason);
                self.out.extend_from_slice(b"\r\n");
                self.kind = Kind::Response;
            }
            StartLine::Request {
                method,
                uri,
                version,
            } => {
                self.out.extend_from_slice(method);
                let method_range = 0..method.len();
                self.out.push(b' ');
                let uri_start = self.out.len();
                self.out.extend_from_slice(uri);
                let uri_range = uri_start..self.out.len();
                self.out.extend_from_slice(b" SIP/2.0\r\n");
                self.kind = Kind::Request {
                    method: method_range,
                    uri: uri_range,
                    ack: method == b"ACK",
                };
                if !version.eq_ignore_ascii_case(b"SIP/2.0") {
                    self.note(Pending::Unsupported(505, "Version Not Supported"));
                }
                if flags & C_HIGH != 0 {
                    self.note(Pending::Bad("Bad Request-URI"));
                }
            }
        }
        Ok(())
    }

    /// Reads one header (its first physical line is `line`, continuation lines follow in
    /// `raw`), writes its normalised form, and returns where the next header starts.
    fn header(&mut self, raw: &[u8], line: Line) -> usize {
        let text = slice(raw, line.start..line.end);
        let mut flags = line.flags;
        let mut too_long = text.len() > MAX_HEADER_LINE;
        let mut next = line.next;
        let mut folded = false;
        // Gather continuation lines first: the logical header is only known once the next
        // line does not start with whitespace.
        while matches!(raw.get(next), Some(b' ' | b'\t')) {
            let cont = scan_line(raw, next);
            if !folded {
                folded = true;
                self.scratch.clear();
                self.scratch.extend_from_slice(text);
            }
            let piece = trim(slice(raw, cont.start..cont.end));
            if !piece.is_empty() {
                self.scratch.push(b' ');
                self.scratch.extend_from_slice(piece);
            }
            flags |= cont.flags;
            too_long |= cont.end - cont.start > MAX_HEADER_LINE;
            next = cont.next;
        }
        let scratch = std::mem::take(&mut self.scratch);
        let logical = if folded { scratch.as_slice() } else { text };
        too_long |= logical.len() > MAX_HEADER_LINE;
        self.logical_header(logical, flags, too_long);
        self.scratch = scratch;
        next
    }

    fn logical_header(&mut self, logical: &[u8], flags: u8, too_long: bool) {
        if matches!(logical.first(), Some(b' ' | b'\t')) {
            // A continuation with no header before it (right after the start line).
            self.note(Pending::Bad("Malformed Header"));
            return;
        }
        // One walk over the name finds both its end and whether it is a token; only
        // whitespace may stand between it and the colon ("Via : ..." is legal, RFC 3261
        // §7.3.1, and rsip rejects it).
        let name_len = logical.iter().take_while(|&&b| is_token(b)).count();
        let name = slice(logical, 0..name_len);
        let after = trim(slice(logical, name_len..logical.len()));
        let (Some(b':'), false) = (after.first(), name.is_empty()) else {
            self.note(Pending::Bad("Malformed Header"));
            return;
        };
        let (kind, canonical) = classify(name);
        if too_long {
            self.via_bad |= kind == Name::Via;
            self.note(Pending::TooLarge);
            return;
        }
        let value = trim(slice(after, 1..after.len()));
        if flags & C_CTL != 0 {
            self.via_bad |= kind == Name::Via;
            self.note(Pending::Bad("Bad Header Character"));
            return;
        }
        if flags & C_HIGH != 0 && std::str::from_utf8(logical).is_err() {
            self.via_bad |= kind == Name::Via;
            self.note(Pending::Bad("Bad Header Encoding"));
            return;
        }
        let name = canonical.unwrap_or(name);
        match kind {
            Name::Via => {
                if self.list(name, value, true) {
                    self.seen |= SEEN_VIA;
                }
            }
            Name::Contact | Name::Route | Name::RecordRoute => {
                self.list(name, value, false);
            }
            Name::From => self.single(name, value, SEEN_FROM, "Duplicate From"),
            Name::To => self.single(name, value, SEEN_TO, "Duplicate To"),
            Name::CallId => self.single(name, value, SEEN_CALL_ID, "Duplicate Call-ID"),
            Name::CSeq => self.cseq(name, value),
            Name::ContentLength => self.content_length(name, value),
            Name::MaxForwards => {
                let ok = !value.is_empty()
                    && value.len() <= 10
                    && value.iter().all(u8::is_ascii_digit)
                    && parse_decimal(value) <= u64::from(u32::MAX);
                if !ok {
                    self.note(Pending::Bad("Bad Max-Forwards"));
                }
                push_header(&mut self.out, name, value);
            }
            Name::Other => push_header(&mut self.out, name, value),
        }
    }

    /// From, To, Call-ID: exactly one each, or the dialog they name is ambiguous.
    fn single(&mut self, name: &[u8], value: &[u8], bit: u8, duplicate: &'static str) {
        if !value.is_empty() {
            if self.seen & bit != 0 {
                self.note(Pending::Bad(duplicate));
            }
            self.seen |= bit;
        }
        push_header(&mut self.out, name, value);
    }

    fn cseq(&mut self, name: &[u8], value: &[u8]) {
        if value.is_empty() {
            push_header(&mut self.out, name, value);
            return;
        }
        if self.seen & SEEN_CSEQ != 0 {
            self.note(Pending::Bad("Duplicate CSeq"));
        }
        self.seen |= SEEN_CSEQ;
        let digits_len = value.iter().take_while(|b| b.is_ascii_digit()).count();
        let digits = slice(value, 0..digits_len);
        let after = slice(value, digits_len..value.len());
        let method = trim(after);
        let well_formed = (1..=10).contains(&digits_len)
            && parse_decimal(digits) < 1 << 31
            && after.first().is_some_and(|&b| is_ws(b))
            && !method.is_empty()
            && method.iter().all(|&b| is_token(b));
        let matches_request = match &self.kind {
            Kind::Request { method: m, .. } => slice(&self.out, m.clone()) == method,
            Kind::Response => true,
        };
        if well_formed && matches_request {
            self.out.extend_from_slice(name);
            self.out.extend_from_slice(b": ");
            self.out.extend_from_slice(digits);
            self.out.push(b' ');
            self.out.extend_from_slice(method);
            self.out.extend_from_slice(b"\r\n");
        } else {
            self.note(Pending::Bad("Bad CSeq"));
            push_header(&mut self.out, name, value);
        }
    }

    fn content_length(&mut self, name: &[u8], value: &[u8]) {
        let mut cl = ClParse::default();
        cl.feed(value);
        let parsed = cl.finish().ok_or(());
        match (self.content_length, parsed) {
            (None, Ok(n)) => {
                self.content_length = Some(Ok(n));
                self.out.extend_from_slice(name);
                self.out.extend_from_slice(b": ");
                push_decimal(&mut self.out, n as u64);
                self.out.extend_from_slice(b"\r\n");
            }
            // An identical duplicate is harmless; dropping it keeps the output canonical.
            (Some(Ok(a)), Ok(b)) if a == b => {}
            _ => {
                self.content_length = Some(Err(()));
                self.note(Pending::Bad("Bad Content-Length"));
                push_header(&mut self.out, name, value);
            }
        }
    }

    /// Writes each top-level comma-separated element as its own header line, because rsip
    /// keeps a combined value as one header whose `typed()` fails (Contact) or silently
    /// sees only the first element (Via). Commas inside quotes or `<...>` do not split.
    /// Returns whether any non-empty element was written.
    fn list(&mut self, name: &[u8], value: &[u8], via: bool) -> bool {
        // Nearly every value is a single element; `contains` on bytes is a memchr.
        if !value.contains(&b',') {
            return self.list_element(name, value, via);
        }
        let mut any = false;
        let mut start = 0;
        let mut in_quote = false;
        let mut escaped = false;
        let mut in_angle = false;
        for (i, &b) in value.iter().enumerate() {
            if in_quote {
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    in_quote = false;
                }
                continue;
            }
            match b {
                b'"' => in_quote = true,
                b'<' => in_angle = true,
                b'>' => in_angle = false,
                b',' if !in_angle => {
                    any |= self.list_element(name, slice(value, start..i), via);
                    start = i + 1;
                }
                _ => {}
            }
        }
        any |= self.list_element(name, slice(value, start..value.len()), via);
        any
    }

    fn list_element(&mut self, name: &[u8], element: &[u8], via: bool) -> bool {
        let element = trim(element);
        if element.is_empty() {
            return false;
        }
        self.out.extend_from_slice(name);
        self.out.extend_from_slice(b": ");
        if via && (element.contains(&b' ') || element.contains(&b'\t')) {
            push_via(&mut self.out, element);
        } else {
            self.out.extend_from_slice(element);
        }
        self.out.extend_from_slice(b"\r\n");
        true
    }

    fn finish(mut self, raw: &[u8], body_start: usize) -> Result<Normalized, IntakeError> {
        let available = raw.len().saturating_sub(body_start);
        let body_len = match self.content_length {
            Some(Ok(n)) if n <= available => n,
            Some(Ok(_)) => {
                self.note(Pending::Bad("Bad Content-Length"));
                0
            }
            Some(Err(())) => 0,
            None => {
                self.out.extend_from_slice(b"Content-Length: ");
                push_decimal(&mut self.out, available as u64);
                self.out.extend_from_slice(b"\r\n");
                available
            }
        };
        for (bit, reason) in [
            (SEEN_VIA, "Missing Via"),
            (SEEN_FROM, "Missing From"),
            (SEEN_TO, "Missing To"),
            (SEEN_CALL_ID, "Missing Call-ID"),
            (SEEN_CSEQ, "Missing CSeq"),
        ] {
            if self.seen & bit == 0 {
                self.note(Pending::Bad(reason));
            }
        }
        if raw.len() > MAX_MESSAGE {
            self.note(Pending::TooLarge);
        }
        self.out.extend_from_slice(b"\r\n");
        self.out
            .extend_from_slice(slice(raw, body_start..body_start.saturating_add(body_len)));
        let via_bad = self.via_bad;
        let norm = Normalized {
            out: self.out,
            kind: self.kind,
        };
        let Some(pending) = self.pending else {
            return Ok(norm);
        };
        let context = if via_bad { None } else { context_of(&norm) };
        Err(match pending {
            Pending::Bad(reason) => IntakeError::BadRequest { reason, context },
            Pending::TooLarge => IntakeError::TooLarge { context },
            Pending::Unsupported(code, reason) => IntakeError::Unsupported {
                code,
                reason,
                context,
            },
        })
    }
}

/// Maps a header name to the kind the scan cares about and, where useful, a canonical
/// spelling (always for compact forms, RFC 3261 §7.3.3 plus the extension RFCs).
fn classify(name: &[u8]) -> (Name, Option<&'static [u8]>) {
    if let [c] = name {
        let full: (Name, &'static [u8]) = match c.to_ascii_lowercase() {
            b'v' => (Name::Via, b"Via"),
            b'f' => (Name::From, b"From"),
            b't' => (Name::To, b"To"),
            b'i' => (Name::CallId, b"Call-ID"),
            b'm' => (Name::Contact, b"Contact"),
            b'l' => (Name::ContentLength, b"Content-Length"),
            b'c' => (Name::Other, b"Content-Type"),
            b'e' => (Name::Other, b"Content-Encoding"),
            b'k' => (Name::Other, b"Supported"),
            b's' => (Name::Other, b"Subject"),
            b'o' => (Name::Other, b"Event"),
            b'r' => (Name::Other, b"Refer-To"),
            b'u' => (Name::Other, b"Allow-Events"),
            b'x' => (Name::Other, b"Session-Expires"),
            b'y' => (Name::Other, b"Identity"),
            b'a' => (Name::Other, b"Accept-Contact"),
            b'b' => (Name::Other, b"Referred-By"),
            b'd' => (Name::Other, b"Request-Disposition"),
            b'j' => (Name::Other, b"Reject-Contact"),
            _ => return (Name::Other, None),
        };
        return (full.0, Some(full.1));
    }
    const KNOWN: [(Name, &[u8]); 10] = [
        (Name::Via, b"Via"),
        (Name::From, b"From"),
        (Name::To, b"To"),
        (Name::CallId, b"Call-ID"),
        (Name::CSeq, b"CSeq"),
        (Name::ContentLength, b"Content-Length"),
        (Name::MaxForwards, b"Max-Forwards"),
        (Name::Contact, b"Contact"),
        (Name::Route, b"Route"),
        (Name::RecordRoute, b"Record-Route"),
    ];
    for (kind, canonical) in KNOWN {
        if name.len() == canonical.len() && name.eq_ignore_ascii_case(canonical) {
            return (kind, Some(canonical));
        }
    }
    (Name::Other, None)
}

/// Content-Length digits, fed in pieces so [`frame_stream`] can follow a folded header
/// without copying. Anything but optional whitespace around 1–10 digits is bad, and so is
/// a value over `u32::MAX` (no message can be that large; it is a probe or garbage).
#[derive(Default, Clone, Copy)]
struct ClParse {
    value: u64,
    digits: u8,
    /// 0: leading whitespace, 1: digits, 2: trailing whitespace, 3: bad.
    state: u8,
}

impl ClParse {
    fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.state = match (self.state, b) {
                (0, b' ' | b'\t') => 0,
                (0 | 1, b'0'..=b'9') if self.digits < 10 => {
                    self.value = self.value * 10 + u64::from(b - b'0');
                    self.digits += 1;
                    1
                }
                (1 | 2, b' ' | b'\t') => 2,
                _ => 3,
            };
        }
    }

    fn finish(self) -> Option<usize> {
        let ok = matches!(self.state, 1 | 2) && self.value <= u64::from(u32::MAX);
        ok.then(|| usize::try_from(self.value).ok()).flatten()
    }
}

/// Parses ASCII digits already checked by the caller; saturates instead of overflowing.
fn parse_decimal(digits: &[u8]) -> u64 {
    digits.iter().fold(0u64, |acc, &b| {
        acc.saturating_mul(10)
            .saturating_add(u64::from(b.wrapping_sub(b'0')))
    })
}

fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        if let Some(slot) = buf.get_mut(i) {
            *slot = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    out.extend_from_slice(slice(&buf, i..buf.len()));
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.push(b':');
    if !value.is_empty() {
        out.push(b' ');
        out.extend_from_slice(value);
    }
    out.extend_from_slice(b"\r\n");
}

/// Copies a caller-supplied string without control characters (no header injection).
fn push_printable(out: &mut Vec<u8>, s: &[u8]) {
    out.extend(s.iter().copied().filter(|&b| b >= 0x20 && b != 0x7f));
}

/// Writes one Via element without the optional whitespace RFC 3261 allows around `/`, `;`,
/// `=` and `:` ("SIP / 2.0 / UDP host ; branch = x"), which rsip's Via parser rejects.
/// Other whitespace runs become one space; quoted strings are copied untouched.
fn push_via(out: &mut Vec<u8>, element: &[u8]) {
    fn separator(b: u8) -> bool {
        matches!(b, b'/' | b';' | b'=' | b':')
    }
    let mut last = 0u8;
    let mut space = false;
    let mut in_quote = false;
    let mut escaped = false;
    for &b in element {
        if in_quote {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_quote = false;
            }
            last = b;
            continue;
        }
        if is_ws(b) {
            space = true;
            continue;
        }
        if space && !separator(last) && !separator(b) {
            out.push(b' ');
        }
        space = false;
        out.push(b);
        in_quote = b == b'"';
        last = b;
    }
}

/// Whether a To value already carries a tag parameter. Only header parameters count: with
/// a `<...>` the URI's own `;tag=` inside the brackets is not the dialog tag.
fn has_tag(to: &[u8]) -> bool {
    let mut params_from = 0;
    let mut in_quote = false;
    let mut escaped = false;
    for (i, &b) in to.iter().enumerate() {
        if in_quote {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_quote = false;
            }
            continue;
        }
        match b {
            b'"' => in_quote = true,
            b'>' => params_from = i + 1,
            _ => {}
        }
    }
    slice(to, params_from..to.len())
        .split(|&b| b == b';')
        .skip(1)
        .any(|param| {
            let key = param.split(|&b| b == b'=').next().unwrap_or_default();
            trim(key).eq_ignore_ascii_case(b"tag")
        })
}

/// Builds the reply context from normalised output, which is clean ("Name: value\r\n",
/// canonical names, valid UTF-8), so this cheap re-read only runs on the error path.
/// None for responses and ACK (never answered) and when there is no Via to answer along.
fn context_of(norm: &Normalized) -> Option<Box<ReplyContext>> {
    let Kind::Request { method, ack, .. } = &norm.kind else {
        return None;
    };
    if *ack {
        return None;
    }
    let text = String::from_utf8_lossy(&norm.out);
    let mut lines = text.split("\r\n");
    let mut ctx = ReplyContext {
        vias: Vec::new(),
        from: String::new(),
        to: String::new(),
        call_id: String::new(),
        cseq: String::new(),
        method: String::from_utf8_lossy(slice(&norm.out, method.clone())).into_owned(),
    };
    lines.next();
    for line in lines {
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.trim_start_matches(' ');
        let slot = match name {
            "Via" => {
                ctx.vias.push(value.to_owned());
                continue;
            }
            "From" => &mut ctx.from,
            "To" => &mut ctx.to,
            "Call-ID" => &mut ctx.call_id,
            "CSeq" => &mut ctx.cseq,
            _ => continue,
        };
        if slot.is_empty() {
            value.clone_into(slot);
        }
    }
    (!ctx.vias.is_empty()).then(|| Box::new(ctx))
}

/// The reply context for raw header bytes, whatever else is wrong with them.
fn scan_context(raw: &[u8]) -> Option<Box<ReplyContext>> {
    match normalize_inner(raw) {
        Ok(norm) => context_of(&norm),
        Err(e) => e.into_context(),
    }
}

/// Names the cause when rsip rejects a message the normaliser accepted, so the phone gets
/// a useful status instead of a generic 400.
fn rsip_failure(norm: &Normalized) -> IntakeError {
    let context = context_of(norm);
    let Kind::Request { uri, .. } = &norm.kind else {
        return IntakeError::BadRequest {
            reason: "Malformed Message",
            context,
        };
    };
    let uri = slice(&norm.out, uri.clone());
    let uri_parses = std::str::from_utf8(uri).is_ok_and(|u| rsip::Uri::try_from(u).is_ok());
    if uri_parses {
        IntakeError::BadRequest {
            reason: "Malformed Message",
            context,
        }
    } else if uri.contains(&b'[') {
        IntakeError::Unsupported {
            code: 501,
            reason: "IPv6 Request-URI Not Implemented",
            context,
        }
    } else {
        IntakeError::BadRequest {
            reason: "Bad Request-URI",
            context,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rsip::prelude::*;

    /// Turns readable `\n` test text into wire CRLF.
    fn crlf(s: &str) -> String {
        s.replace('\n', "\r\n")
    }

    /// A message with a correct Content-Length (under `cl_name`) for `body`.
    fn with_body(head: &str, cl_name: &str, body: &str) -> Vec<u8> {
        let body = crlf(body);
        format!("{}{}: {}\r\n\r\n{}", crlf(head), cl_name, body.len(), body).into_bytes()
    }

    const SDP_BARESIP: &str = "v=0
o=- 2890844526 2890844526 IN IP4 192.168.1.23
s=-
c=IN IP4 192.168.1.23
t=0 0
m=audio 10000 RTP/AVP 96 0 8 101
a=rtpmap:96 opus/48000/2
a=fmtp:96 stereo=1;sprop-stereo=1
a=rtpmap:101 telephone-event/8000
a=sendrecv
a=rtcp-mux
";

    const SDP_POLYCOM: &str = "v=0
o=- 1700000000 1700000000 IN IP4 172.16.4.20
s=Polycom IP Phone
c=IN IP4 172.16.4.20
t=0 0
a=sendrecv
m=audio 2222 RTP/AVP 9 0 8 18 101
a=rtpmap:9 G722/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:18 G729/8000
a=fmtp:18 annexb=no
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
";

    fn baresip_register() -> Vec<u8> {
        with_body(
            "REGISTER sip:sip.example.org SIP/2.0
Via: SIP/2.0/UDP 192.168.1.23:5060;branch=z9hG4bK0a1c2e3f45b6;rport
Contact: <sip:alice-0x55d1c2@192.168.1.23:5060;transport=udp>;expires=3600
Max-Forwards: 70
To: <sip:alice@sip.example.org>
From: <sip:alice@sip.example.org>;tag=5d0a7b3c0f2e1d4a
Call-ID: 8e1f6a2b4c9d3e07
CSeq: 23311 REGISTER
User-Agent: baresip v3.10.1 (x86_64/Linux)
Allow: INVITE,ACK,BYE,CANCEL,OPTIONS,NOTIFY,SUBSCRIBE,INFO,MESSAGE,UPDATE,REFER
Supported: replaces,norefersub,gruu
",
            "Content-Length",
            "",
        )
    }

    fn baresip_invite() -> Vec<u8> {
        with_body(
            "INVITE sip:bob@sip.example.org SIP/2.0
Via: SIP/2.0/UDP 192.168.1.23:5060;branch=z9hG4bK77aa01b2c3d4;rport
Contact: <sip:alice-0x55d1c2@192.168.1.23:5060;transport=udp>
Max-Forwards: 70
To: <sip:bob@sip.example.org>
From: \"Alice\" <sip:alice@sip.example.org>;tag=a1b2c3d4e5f60718
Call-ID: 4b1c2d3e4f5a6b7c
CSeq: 29012 INVITE
User-Agent: baresip v3.10.1 (x86_64/Linux)
Allow: INVITE,ACK,BYE,CANCEL,OPTIONS,NOTIFY,SUBSCRIBE,INFO,MESSAGE,UPDATE,REFER
Supported: replaces,norefersub
Content-Type: application/sdp
",
            "Content-Length",
            SDP_BARESIP,
        )
    }

    fn linphone_register() -> Vec<u8> {
        with_body(
            "REGISTER sip:sip.linphone.org SIP/2.0
Via: SIP/2.0/TLS 10.0.2.15:40523;alias;branch=z9hG4bK.Xq3y5kW7m;rport
From: <sip:bob@sip.linphone.org>;tag=R~9uYx2G8
To: sip:bob@sip.linphone.org
CSeq: 20 REGISTER
Call-ID: 0p7s-Bq3Zx
Max-Forwards: 70
Supported: replaces, outbound, gruu, path
Accept: application/sdp
Accept: text/plain
Accept: application/vnd.gsma.rcs-ft-http+xml
Contact: <sip:bob@10.0.2.15:40523;transport=tls>;+sip.instance=\"<urn:uuid:a7c1b3e2-5f6d-4e8a-9b0c-1d2e3f4a5b6c>\";+org.linphone.specs=\"lime,lime\"
Expires: 600
User-Agent: LinphoneAndroid/5.2.5 (Pixel 7) LinphoneSDK/5.3.47 (tags/5.3.47^0)
",
            "Content-Length",
            "",
        )
    }

    /// A Polycom-style desk phone INVITE: long header forms, G.722 first, SDP body.
    fn polycom_invite() -> Vec<u8> {
        with_body(
            "INVITE sip:1002@pbx.example.com;user=phone SIP/2.0
Via: SIP/2.0/UDP 172.16.4.20:5060;branch=z9hG4bK2f8a6c1e7b9d3;rport
From: \"Front Desk\" <sip:1001@pbx.example.com>;tag=C3A1B2D4-E5F60718
To: <sip:1002@pbx.example.com;user=phone>
CSeq: 1 INVITE
Call-ID: 9f1e2d3c-4b5a6978-8a7b6c5d@172.16.4.20
Contact: <sip:1001@172.16.4.20:5060>
Allow: INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, MESSAGE, SUBSCRIBE, NOTIFY, PRACK, UPDATE, REFER
User-Agent: PolycomVVX-VVX_450-UA/6.4.3.5018
Accept-Language: en
Supported: 100rel,replaces
Allow-Events: conference,talk,hold
Max-Forwards: 70
Content-Type: application/sdp
",
            "Content-Length",
            SDP_POLYCOM,
        )
    }

    /// An INVITE squeezed into compact forms, as UAs do to stay under the UDP MTU.
    fn compact_invite() -> Vec<u8> {
        with_body(
            "INVITE sip:carol@example.net SIP/2.0
v: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKnashds8;rport
f: \"Alice\" <sip:alice@example.com>;tag=1928301774
t: <sip:carol@example.net>
i: a84b4c76e66710@pc33.example.com
CSeq: 314159 INVITE
m: <sip:alice@198.51.100.7:5060>
Max-Forwards: 70
k: timer, 100rel
x: 1800;refresher=uac
u: talk, hold, conference
c: application/sdp
",
            "l",
            SDP_BARESIP,
        )
    }

    fn options_ping() -> Vec<u8> {
        with_body(
            "OPTIONS sip:pbx.example.com SIP/2.0
Via: SIP/2.0/UDP 172.16.4.21:5060;branch=z9hG4bK6c0f3e1a
From: <sip:ping@172.16.4.21>;tag=8812
To: <sip:pbx.example.com>
Call-ID: 55aa33cc@172.16.4.21
CSeq: 102 OPTIONS
Max-Forwards: 70
User-Agent: Yealink SIP-T46U 108.86.0.45
Accept: application/sdp
",
            "Content-Length",
            "",
        )
    }

    fn unauthorized_response() -> Vec<u8> {
        with_body(
            "SIP/2.0 401 Unauthorized
Via: SIP/2.0/UDP 192.168.1.23:5060;branch=z9hG4bK0a1c2e3f45b6;rport=5060;received=203.0.113.9
From: <sip:alice@sip.example.org>;tag=5d0a7b3c0f2e1d4a
To: <sip:alice@sip.example.org>;tag=as1f2e3d4c
Call-ID: 8e1f6a2b4c9d3e07
CSeq: 23311 REGISTER
WWW-Authenticate: Digest realm=\"sip.example.org\", nonce=\"6b3a9c1d\", algorithm=MD5, qop=\"auth\"
Server: supernode
",
            "Content-Length",
            "",
        )
    }

    fn samples() -> Vec<(&'static str, Vec<u8>)> {
        vec![
            ("register-baresip", baresip_register()),
            ("invite-baresip-sdp", baresip_invite()),
            ("register-linphone", linphone_register()),
            ("invite-polycom-sdp", polycom_invite()),
            ("invite-compact-sdp", compact_invite()),
            ("options-yealink", options_ping()),
            ("response-401", unauthorized_response()),
        ]
    }

    fn request(raw: &[u8]) -> rsip::Request {
        match parse(raw) {
            Ok(Intake::Message(rsip::SipMessage::Request(r))) => r,
            other => panic!("expected a request, got {other:?}"),
        }
    }

    fn bad(raw: &[u8]) -> (&'static str, Option<Box<ReplyContext>>) {
        match normalize(raw) {
            Err(IntakeError::BadRequest { reason, context }) => (reason, context),
            other => panic!("expected BadRequest, got {other:?}"),
        }
    }

    fn text(out: &[u8]) -> String {
        String::from_utf8_lossy(out).into_owned()
    }

    const MINIMAL: &str = "OPTIONS sip:a@example.com SIP/2.0
Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKm1
From: <sip:b@example.com>;tag=1
To: <sip:a@example.com>
Call-ID: min-1
CSeq: 7 OPTIONS
";

    #[test]
    fn compact_forms_expand_and_rsip_sees_typed_headers() {
        let req = request(&compact_invite());
        let via = req.via_header().unwrap().typed().unwrap();
        assert_eq!(via.branch().unwrap().to_string(), "z9hG4bKnashds8");
        assert_eq!(
            req.call_id_header().unwrap().value(),
            "a84b4c76e66710@pc33.example.com"
        );
        let cseq = req.cseq_header().unwrap().typed().unwrap();
        assert_eq!((cseq.seq, cseq.method), (314159, rsip::Method::Invite));
        assert_eq!(
            req.from_header()
                .unwrap()
                .tag()
                .unwrap()
                .unwrap()
                .to_string(),
            "1928301774"
        );
        assert_eq!(
            req.to_header().unwrap().uri().unwrap().to_string(),
            "sip:carol@example.net"
        );
        assert!(req.contact_header().unwrap().typed().is_ok());
        assert!(req
            .headers()
            .iter()
            .any(|h| matches!(h, rsip::Header::ContentType(_))));
        assert!(req
            .headers()
            .iter()
            .any(|h| matches!(h, rsip::Header::Supported(_))));
        assert!(req
            .headers()
            .iter()
            .any(|h| matches!(h, rsip::Header::Other(n, v) if n == "Session-Expires" && v == "1800;refresher=uac")));
        assert_eq!(req.body(), crlf(SDP_BARESIP).as_bytes());
    }

    #[test]
    fn every_compact_name_expands() {
        let table = [
            ("v", "Via"),
            ("f", "From"),
            ("t", "To"),
            ("i", "Call-ID"),
            ("m", "Contact"),
            ("l", "Content-Length"),
            ("c", "Content-Type"),
            ("e", "Content-Encoding"),
            ("k", "Supported"),
            ("s", "Subject"),
            ("o", "Event"),
            ("r", "Refer-To"),
            ("u", "Allow-Events"),
            ("x", "Session-Expires"),
            ("y", "Identity"),
            ("a", "Accept-Contact"),
            ("b", "Referred-By"),
            ("d", "Request-Disposition"),
            ("j", "Reject-Contact"),
        ];
        for (short, long) in table {
            for name in [short.to_owned(), short.to_uppercase()] {
                let value = if short == "l" { "0" } else { "x1" };
                // The single-valued headers are taken out of MINIMAL first, or the compact
                // one would be a (correctly rejected) duplicate.
                let base: String = crlf(MINIMAL)
                    .split_inclusive("\r\n")
                    .filter(|line| !line.starts_with(&format!("{long}:")))
                    .collect();
                let raw = format!("{base}{name}: {value}\r\n\r\n");
                let out = text(&normalize(raw.as_bytes()).unwrap());
                assert!(
                    out.contains(&format!("\r\n{long}: {value}\r\n")),
                    "{name}: {out}"
                );
                assert!(!out.contains(&format!("\r\n{name}:")), "{name}: {out}");
            }
        }
    }

    #[test]
    fn folded_header_unfolds() {
        let raw = crlf(
            "REGISTER sip:example.com SIP/2.0
Via: SIP/2.0/UDP 10.0.0.1:5060
 ;branch=z9hG4bKfold
From: <sip:a@example.com>;tag=9
To: <sip:a@example.com>
Call-ID: fold-1
CSeq: 1 REGISTER
Subject: I know you're there,
\tpick up the phone
   and talk to me!
Content-Length: 0

",
        );
        let out = text(&normalize(raw.as_bytes()).unwrap());
        assert!(
            out.contains("\r\nSubject: I know you're there, pick up the phone and talk to me!\r\n")
        );
        let req = request(raw.as_bytes());
        let via = req.via_header().unwrap().typed().unwrap();
        assert_eq!(via.branch().unwrap().to_string(), "z9hG4bKfold");
    }

    #[test]
    fn content_length_cuts_trailing_garbage_on_udp() {
        let mut raw = with_body(MINIMAL, "Content-Length", "hello");
        raw.extend_from_slice(b"GARBAGE AFTER THE BODY\r\n");
        let req = request(&raw);
        assert_eq!(req.body(), b"hello");
        assert!(text(&normalize(&raw).unwrap()).ends_with("Content-Length: 5\r\n\r\nhello"));
    }

    #[test]
    fn missing_content_length_on_a_datagram_takes_the_rest_and_adds_the_header() {
        let raw = format!("{}\r\nbody bytes", crlf(MINIMAL));
        let out = text(&normalize(raw.as_bytes()).unwrap());
        assert!(
            out.ends_with("Content-Length: 10\r\n\r\nbody bytes"),
            "{out}"
        );
    }

    #[test]
    fn short_body_is_bad_content_length() {
        let raw = format!("{}Content-Length: 50\r\n\r\nonly this", crlf(MINIMAL));
        let (reason, context) = bad(raw.as_bytes());
        assert_eq!(reason, "Bad Content-Length");
        assert_eq!(context.unwrap().call_id, "min-1");
    }

    #[test]
    fn negative_non_numeric_absurd_and_conflicting_content_length() {
        for value in ["-1", "abc", "5x", "", "1 2", "99999999999", "+5", "0x10"] {
            let raw = format!("{}Content-Length: {value}\r\n\r\nhello", crlf(MINIMAL));
            assert_eq!(bad(raw.as_bytes()).0, "Bad Content-Length", "{value:?}");
        }
        let conflicting = format!("{}l: 5\r\nContent-Length: 4\r\n\r\nhello", crlf(MINIMAL));
        assert_eq!(bad(conflicting.as_bytes()).0, "Bad Content-Length");
        let same = format!("{}l: 5\r\nContent-Length: 5\r\n\r\nhello", crlf(MINIMAL));
        let out = text(&normalize(same.as_bytes()).unwrap());
        assert_eq!(out.matches("Content-Length").count(), 1, "{out}");
    }

    #[test]
    fn overlong_header_line_is_too_large_with_context() {
        let raw = format!("{}X-Big: {}\r\n\r\n", crlf(MINIMAL), "a".repeat(60_000));
        match normalize(raw.as_bytes()) {
            Err(IntakeError::TooLarge { context: Some(ctx) }) => assert_eq!(ctx.cseq, "7 OPTIONS"),
            other => panic!("{other:?}"),
        }
        let err = parse(raw.as_bytes()).unwrap_err();
        assert_eq!(err.reply().map(|(code, _, _)| code), Some(513));
        let just_fits = format!("{}X-Big: {}\r\n\r\n", crlf(MINIMAL), "a".repeat(8_000));
        assert!(normalize(just_fits.as_bytes()).is_ok());
    }

    #[test]
    fn oversized_message_is_too_large() {
        let body = "b".repeat(MAX_MESSAGE);
        let raw = with_body(MINIMAL, "Content-Length", &body);
        assert!(matches!(
            normalize(&raw),
            Err(IntakeError::TooLarge { context: Some(_) })
        ));
    }

    #[test]
    fn missing_via_cannot_be_answered() {
        let raw = crlf(MINIMAL).replace("Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKm1\r\n", "");
        let (reason, context) = bad(format!("{raw}\r\n").as_bytes());
        assert_eq!(reason, "Missing Via");
        assert!(context.is_none());
    }

    #[test]
    fn missing_cseq_is_answered_with_a_parseable_400() {
        let raw = crlf(
            "INVITE sip:bob@example.com SIP/2.0
Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKtop;rport
Via: SIP/2.0/TCP 10.0.0.2:5060;branch=z9hG4bKsecond
From: \"Al\" <sip:al@example.com>;tag=f1
To: <sip:bob@example.com;tag=uri-param-not-dialog-tag>
Call-ID: no-cseq@10.0.0.1
Max-Forwards: 70

",
        );
        let err = parse(raw.as_bytes()).unwrap_err();
        let (code, reason, ctx) = err.reply().unwrap();
        assert_eq!((code, reason), (400, "Missing CSeq"));
        assert_eq!(ctx.method, "INVITE");
        assert_eq!(ctx.vias.len(), 2);
        let bytes = ctx.response(code, reason, "srv77", "supernode/0.1");
        let text = text(&bytes);
        assert!(text.starts_with("SIP/2.0 400 Missing CSeq\r\n"), "{text}");
        assert!(text.ends_with("Content-Length: 0\r\n\r\n"));
        let rsip::SipMessage::Response(resp) =
            rsip::SipMessage::try_from(bytes.as_slice()).unwrap()
        else {
            panic!("not a response");
        };
        assert_eq!(resp.status_code.code(), 400);
        let vias: Vec<_> = resp
            .headers()
            .iter()
            .filter_map(|h| match h {
                rsip::Header::Via(v) => Some(v.value().to_owned()),
                _ => None,
            })
            .collect();
        assert_eq!(
            vias,
            [
                "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKtop;rport",
                "SIP/2.0/TCP 10.0.0.2:5060;branch=z9hG4bKsecond"
            ]
        );
        assert_eq!(resp.call_id_header().unwrap().value(), "no-cseq@10.0.0.1");
        assert_eq!(
            resp.to_header()
                .unwrap()
                .tag()
                .unwrap()
                .unwrap()
                .to_string(),
            "srv77"
        );
        assert_eq!(
            resp.from_header()
                .unwrap()
                .tag()
                .unwrap()
                .unwrap()
                .to_string(),
            "f1"
        );
        assert!(resp.cseq_header().is_err());
    }

    #[test]
    fn response_keeps_an_existing_to_tag_and_copies_cseq() {
        let raw = format!("{}Max-Forwards: lots\r\n\r\n", crlf(MINIMAL)).replace(
            "To: <sip:a@example.com>",
            "To: <sip:a@example.com>;tag=dialog5",
        );
        let (reason, ctx) = bad(raw.as_bytes());
        assert_eq!(reason, "Bad Max-Forwards");
        let text = text(&ctx.unwrap().response(400, reason, "new", ""));
        assert!(
            text.contains("\r\nTo: <sip:a@example.com>;tag=dialog5\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nCSeq: 7 OPTIONS\r\n"));
        assert!(!text.contains("Server:"));
    }

    #[test]
    fn response_strips_control_characters_from_caller_strings() {
        let ctx = ReplyContext {
            vias: vec!["SIP/2.0/UDP h;branch=z9hG4bK1".into()],
            from: "<sip:a@b>;tag=1".into(),
            to: "<sip:c@d>".into(),
            call_id: "x".into(),
            cseq: "1 INVITE".into(),
            method: "INVITE".into(),
        };
        let text = text(&ctx.response(480, "Gone\r\nX-Evil: 1", "t\r\n1", "srv\n"));
        assert!(!text.contains("\r\nX-Evil"));
        assert!(text.contains("To: <sip:c@d>;tag=t1\r\n"), "{text}");
    }

    #[test]
    fn cseq_must_fit_31_bits_and_match_the_method() {
        let at_limit = crlf(MINIMAL).replace("CSeq: 7 OPTIONS", "CSeq: 2147483648 OPTIONS");
        assert_eq!(bad(format!("{at_limit}\r\n").as_bytes()).0, "Bad CSeq");
        let below = crlf(MINIMAL).replace("CSeq: 7 OPTIONS", "CSeq: 2147483647 OPTIONS");
        let req = request(format!("{below}\r\n").as_bytes());
        assert_eq!(req.cseq_header().unwrap().seq().unwrap(), 2_147_483_647);
        for cseq in [
            "CSeq: 7 INVITE",
            "CSeq: 7 options",
            "CSeq: OPTIONS",
            "CSeq: 7",
            "CSeq: 7OPTIONS",
        ] {
            let raw = crlf(MINIMAL).replace("CSeq: 7 OPTIONS", cseq);
            assert_eq!(bad(format!("{raw}\r\n").as_bytes()).0, "Bad CSeq", "{cseq}");
        }
        let spaced = crlf(MINIMAL).replace("CSeq: 7 OPTIONS", "CSeq:   7 \t OPTIONS  ");
        let out = text(&normalize(format!("{spaced}\r\n").as_bytes()).unwrap());
        assert!(out.contains("\r\nCSeq: 7 OPTIONS\r\n"));
    }

    #[test]
    fn garbage_and_empty_input() {
        let inputs: [&[u8]; 6] = [
            b"",
            b"\x00\x01\x02\xff\xfe binary",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
            b"hello",
            b"INVITE\r\n\r\n",
        ];
        for raw in inputs {
            assert!(
                matches!(parse(raw), Err(IntakeError::Garbage(_))),
                "{raw:?}"
            );
            assert!(
                matches!(normalize(raw), Err(IntakeError::Garbage(_))),
                "{raw:?}"
            );
        }
        assert_eq!(parse(b"").unwrap_err().kind(), "garbage");
        assert!(parse(b"junk").unwrap_err().reply().is_none());
    }

    #[test]
    fn crlf_keepalive_and_pong() {
        assert!(matches!(parse(b"\r\n\r\n"), Ok(Intake::Keepalive)));
        assert!(matches!(parse(b"\r\n"), Ok(Intake::Pong)));
        assert!(matches!(
            normalize(b"\r\n\r\n"),
            Err(IntakeError::Garbage(_))
        ));
        let mut leading = b"\r\n\r\n".to_vec();
        leading.extend_from_slice(&options_ping());
        assert!(matches!(parse(&leading), Ok(Intake::Message(_))));
    }

    #[test]
    fn nul_and_non_utf8_in_headers_are_rejected() {
        let nul = format!("{}Subject: a\0b\r\n\r\n", crlf(MINIMAL));
        assert_eq!(bad(nul.as_bytes()).0, "Bad Header Character");
        let lone_cr = format!("{}Subject: a\rX-Injected: b\r\n\r\n", crlf(MINIMAL));
        assert_eq!(bad(lone_cr.as_bytes()).0, "Bad Header Character");
        let mut latin1 = crlf(MINIMAL).into_bytes();
        latin1.extend_from_slice(b"Subject: caf\xe9\r\n\r\n");
        let (reason, context) = bad(&latin1);
        assert_eq!(reason, "Bad Header Encoding");
        assert!(context.is_some());
        let utf8 = format!("{}Subject: café ☎\r\n\r\n", crlf(MINIMAL));
        assert!(matches!(parse(utf8.as_bytes()), Ok(Intake::Message(_))));
        let mut nul_via =
            b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h\0;branch=z9hG4bK\r\n".to_vec();
        nul_via.extend_from_slice(crlf(MINIMAL).split_once("\r\n").unwrap().1.as_bytes());
        assert!(
            bad(&nul_via).1.is_none(),
            "a dropped Via must not be replied along"
        );
        let binary_body = with_body(MINIMAL, "Content-Length", "\0\u{1}\u{2}");
        assert!(normalize(&binary_body).is_ok());
    }

    #[test]
    fn non_numeric_max_forwards() {
        for value in ["abc", "-1", "", "7 0", "99999999999"] {
            let raw = format!("{}Max-Forwards: {value}\r\n\r\n", crlf(MINIMAL));
            assert_eq!(bad(raw.as_bytes()).0, "Bad Max-Forwards", "{value:?}");
        }
        let ok = format!("{}Max-Forwards: 70\r\n\r\n", crlf(MINIMAL));
        assert_eq!(
            request(ok.as_bytes())
                .max_forwards_header()
                .unwrap()
                .num()
                .unwrap(),
            70
        );
    }

    #[test]
    fn missing_and_duplicate_mandatory_headers() {
        for (line, reason) in [
            ("From: <sip:b@example.com>;tag=1\r\n", "Missing From"),
            ("To: <sip:a@example.com>\r\n", "Missing To"),
            ("Call-ID: min-1\r\n", "Missing Call-ID"),
        ] {
            let raw = crlf(MINIMAL).replace(line, "");
            let (got, context) = bad(format!("{raw}\r\n").as_bytes());
            assert_eq!(got, reason);
            assert!(context.is_some());
        }
        let dup = format!("{}i: other\r\n\r\n", crlf(MINIMAL));
        assert_eq!(bad(dup.as_bytes()).0, "Duplicate Call-ID");
    }

    #[test]
    fn ack_and_responses_are_never_answered() {
        let ack = crlf(MINIMAL)
            .replace("OPTIONS", "ACK")
            .replace("CSeq: 7 ACK\r\n", "");
        let (reason, context) = bad(format!("{ack}\r\n").as_bytes());
        assert_eq!(reason, "Missing CSeq");
        assert!(context.is_none());
        let resp = String::from_utf8(unauthorized_response())
            .unwrap()
            .replace("CSeq: 23311 REGISTER\r\n", "");
        let (reason, context) = bad(resp.as_bytes());
        assert_eq!(reason, "Missing CSeq");
        assert!(context.is_none());
    }

    #[test]
    fn unsupported_method_scheme_and_version() {
        let foo = crlf(MINIMAL).replace("OPTIONS", "FOO");
        let err = parse(format!("{foo}\r\n").as_bytes()).unwrap_err();
        assert_eq!(
            err.reply().map(|(c, r, _)| (c, r)),
            Some((501, "Not Implemented"))
        );
        let lower = crlf(MINIMAL).replace("OPTIONS", "options");
        let err = parse(format!("{lower}\r\n").as_bytes()).unwrap_err();
        assert_eq!(err.reply().map(|(c, _, _)| c), Some(501));
        let tel = crlf(MINIMAL).replace("sip:a@example.com SIP", "tel:+15551234 SIP");
        let err = parse(format!("{tel}\r\n").as_bytes()).unwrap_err();
        assert_eq!(err.reply().map(|(c, _, _)| c), Some(416));
        let v3 = crlf(MINIMAL).replace("SIP/2.0\r\n", "SIP/3.0\r\n");
        let err = parse(format!("{v3}\r\n").as_bytes()).unwrap_err();
        assert_eq!(err.reply().map(|(c, _, _)| c), Some(505));
        let ipv6 = crlf(MINIMAL).replace("sip:a@example.com SIP", "sip:a@[2001:db8::1]:5060 SIP");
        let err = parse(format!("{ipv6}\r\n").as_bytes()).unwrap_err();
        assert_eq!(err.reply().map(|(c, _, _)| c), Some(501));
    }

    #[test]
    fn combined_values_are_split_one_per_header() {
        let raw = format!(
            "{}Contact: \"Doe, J\" <sip:j@h1;x=a,b>;q=0.5, <sip:j@h2>\r\nRecord-Route: <sip:p1;lr>,<sip:p2;lr>\r\n\r\n",
            crlf(MINIMAL).replace(
                "Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKm1",
                "Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKm1 , SIP/2.0/TCP 10.0.0.9;branch=z9hG4bKm2"
            )
        );
        let req = request(raw.as_bytes());
        let vias: Vec<_> = req
            .headers()
            .iter()
            .filter_map(|h| match h {
                rsip::Header::Via(v) => v.typed().ok().map(|t| t.branch().map(|b| b.to_string())),
                _ => None,
            })
            .collect();
        assert_eq!(
            vias,
            [Some("z9hG4bKm1".to_owned()), Some("z9hG4bKm2".to_owned())]
        );
        let contacts = req.contact_headers();
        assert_eq!(contacts.len(), 2);
        assert_eq!(contacts[0].value(), "\"Doe, J\" <sip:j@h1;x=a,b>;q=0.5");
        assert!(contacts.iter().all(|c| c.typed().is_ok()));
        assert_eq!(
            text(&normalize(raw.as_bytes()).unwrap())
                .matches("Record-Route: ")
                .count(),
            2
        );
    }

    #[test]
    fn via_optional_whitespace_and_space_before_colon() {
        let raw = crlf(MINIMAL).replace(
            "Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKm1",
            "Via  :  SIP / 2.0 / UDP   10.0.0.1 : 5060 ; branch = z9hG4bKm1 ;x=\"a ; b\"",
        );
        let out = text(&normalize(format!("{raw}\r\n").as_bytes()).unwrap());
        assert!(
            out.contains("\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKm1;x=\"a ; b\"\r\n"),
            "{out}"
        );
        let req = request(format!("{raw}\r\n").as_bytes());
        let via = req.via_header().unwrap().typed().unwrap();
        assert_eq!(via.branch().unwrap().to_string(), "z9hG4bKm1");
    }

    #[test]
    fn bare_lf_line_endings_are_accepted() {
        let raw = format!("{MINIMAL}Content-Length: 3\n\nabc");
        let req = request(raw.as_bytes());
        assert_eq!(req.body(), b"abc");
        assert_eq!(req.call_id_header().unwrap().value(), "min-1");
    }

    #[test]
    fn start_line_whitespace_is_normalised() {
        let raw = crlf(MINIMAL).replace(
            "OPTIONS sip:a@example.com SIP/2.0",
            "OPTIONS  sip:a@example.com\tsip/2.0 ",
        );
        let out = text(&normalize(format!("{raw}\r\n").as_bytes()).unwrap());
        assert!(
            out.starts_with("OPTIONS sip:a@example.com SIP/2.0\r\n"),
            "{out}"
        );
    }

    #[test]
    fn real_phone_samples_parse() {
        for (name, raw) in samples() {
            let Ok(Intake::Message(msg)) = parse(&raw) else {
                panic!("{name}: {:?}", parse(&raw));
            };
            assert!(msg.via_header().unwrap().typed().is_ok(), "{name}");
            assert!(msg.cseq_header().unwrap().typed().is_ok(), "{name}");
            assert!(!msg.call_id_header().unwrap().value().is_empty(), "{name}");
            assert!(
                msg.from_header().unwrap().tag().unwrap().is_some(),
                "{name}"
            );
            for contact in msg.contact_headers() {
                // rsip 0.4's typed Contact fails on any quoted parameter value, such as
                // Linphone's +sip.instance="<urn:uuid:...>" (RFC 5626), so the registrar
                // reads the URI between the angle brackets itself.
                let value = contact.value();
                let uri = value
                    .split_once('<')
                    .and_then(|(_, rest)| rest.split_once('>'))
                    .map_or(value, |(uri, _)| uri);
                assert!(rsip::Uri::try_from(uri).is_ok(), "{name}: {contact:?}");
            }
            if name.starts_with("invite") {
                assert!(msg.body().starts_with(b"v=0\r\n"), "{name}");
                assert!(msg.body().ends_with(b"\r\n"), "{name}");
            } else {
                assert!(msg.body().is_empty(), "{name}");
            }
        }
        let req = request(&polycom_invite());
        assert_eq!(req.uri.to_string(), "sip:1002@pbx.example.com;user=phone");
        assert_eq!(req.body(), crlf(SDP_POLYCOM).as_bytes());
        let reg = request(&linphone_register());
        assert_eq!(reg.expires_header().unwrap().seconds().unwrap(), 600);
        assert_eq!(
            reg.to_header().unwrap().uri().unwrap().to_string(),
            "sip:bob@sip.linphone.org"
        );
    }

    #[test]
    fn normalisation_is_idempotent_on_samples() {
        for (name, raw) in samples() {
            let once = normalize(&raw).unwrap();
            assert_eq!(normalize(&once).unwrap(), once, "{name}");
        }
    }

    /// Feeds `stream` to `frame_stream` in the given chunk sizes, as a transport would,
    /// and returns the frames cut.
    fn frames_of(stream: &[u8], chunks: &[usize]) -> Vec<Vec<u8>> {
        let mut buf = Vec::new();
        let mut frames = Vec::new();
        let mut rest = stream;
        let mut sizes = chunks.iter().copied().cycle();
        while !rest.is_empty() {
            let n = sizes.next().unwrap_or(1).clamp(1, rest.len());
            let (now, later) = rest.split_at(n);
            buf.extend_from_slice(now);
            rest = later;
            while let Some(n) = frame_stream(&buf).unwrap() {
                frames.push(buf.drain(..n).collect());
            }
        }
        assert!(
            buf.len() < 4 && buf.iter().all(|&b| b == b'\r' || b == b'\n'),
            "{buf:?}"
        );
        frames
    }

    #[test]
    fn frame_stream_two_pipelined_messages() {
        let (a, b) = (baresip_register(), polycom_invite());
        let both = [a.as_slice(), b.as_slice()].concat();
        assert_eq!(frame_stream(&both).unwrap(), Some(a.len()));
        assert_eq!(frame_stream(&b).unwrap(), Some(b.len()));
        assert_eq!(frames_of(&both, &[both.len()]), [a, b]);
    }

    #[test]
    fn frame_stream_partial_message_needs_more() {
        let invite = polycom_invite();
        assert_eq!(frame_stream(&invite[..invite.len() - 1]).unwrap(), None);
        assert_eq!(frame_stream(&invite[..40]).unwrap(), None);
        assert_eq!(frame_stream(b"").unwrap(), None);
        assert_eq!(frame_stream(&invite).unwrap(), Some(invite.len()));
    }

    #[test]
    fn frame_stream_split_at_every_offset() {
        let stream = [
            b"\r\n\r\n".as_slice(),
            &compact_invite(),
            &linphone_register(),
            b"\r\n",
            &options_ping(),
        ]
        .concat();
        let whole = frames_of(&stream, &[stream.len()]);
        assert_eq!(whole.len(), 5);
        assert!(matches!(parse(&whole[0]), Ok(Intake::Keepalive)));
        assert!(matches!(parse(&whole[3]), Ok(Intake::Pong)));
        for split in 1..stream.len() {
            assert_eq!(
                frames_of(&stream, &[split, stream.len()]),
                whole,
                "split at {split}"
            );
        }
    }

    #[test]
    fn frame_stream_keepalives() {
        assert_eq!(frame_stream(b"\r\n\r\n").unwrap(), Some(4));
        assert_eq!(frame_stream(b"\r\n").unwrap(), None);
        assert_eq!(frame_stream(b"\r\nOPT").unwrap(), Some(2));
    }

    #[test]
    fn frame_stream_rejects_unusable_streams() {
        let no_cl = format!("{}\r\n", crlf(MINIMAL));
        match frame_stream(no_cl.as_bytes()) {
            Err(IntakeError::BadRequest { reason, context }) => {
                assert_eq!(reason, "Missing Content-Length");
                assert_eq!(context.unwrap().call_id, "min-1");
            }
            other => panic!("{other:?}"),
        }
        let bad_cl = format!("{}Content-Length: ten\r\n\r\n", crlf(MINIMAL));
        assert!(matches!(
            frame_stream(bad_cl.as_bytes()),
            Err(IntakeError::BadRequest {
                reason: "Bad Content-Length",
                ..
            })
        ));
        let conflict = format!("{}l: 1\r\nContent-Length: 2\r\n\r\nab", crlf(MINIMAL));
        assert!(frame_stream(conflict.as_bytes()).is_err());
        let folded_cl = format!("{}Content-Length:\r\n  2\r\n\r\nab", crlf(MINIMAL));
        assert_eq!(
            frame_stream(folded_cl.as_bytes()).unwrap(),
            Some(folded_cl.len())
        );
        assert!(matches!(
            frame_stream(b"GET / HTTP/1.1\r\n"),
            Err(IntakeError::Garbage(_))
        ));
        let endless = format!(
            "{}{}",
            crlf(MINIMAL),
            "X-Pad: yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy\r\n".repeat(2_000)
        );
        assert!(matches!(
            frame_stream(endless.as_bytes()),
            Err(IntakeError::TooLarge { context: Some(_) })
        ));
        let long_first = "OPTIONS sip:".to_owned() + &"a".repeat(MAX_HEADER_LINE);
        assert!(matches!(
            frame_stream(long_first.as_bytes()),
            Err(IntakeError::TooLarge { .. })
        ));
        let huge = format!("{}Content-Length: 70000\r\n\r\n", crlf(MINIMAL));
        assert!(matches!(
            frame_stream(huge.as_bytes()),
            Err(IntakeError::TooLarge { .. })
        ));
    }

    #[test]
    fn frame_and_parse_agree_on_the_body() {
        let raw = with_body(MINIMAL, "l", "0123456789");
        let mut stream = raw.clone();
        stream.extend_from_slice(&raw);
        let n = frame_stream(&stream).unwrap().unwrap();
        assert_eq!(n, raw.len());
        assert_eq!(request(&stream[..n]).body(), b"0123456789");
    }

    #[test]
    fn the_chunk_skip_flags_exactly_the_bytes_the_table_flags() {
        for b in 0..=255u8 {
            for lane in 0..8 {
                let mut word = *b"abcdefgh";
                word[lane] = b;
                let bytewise = !(0x20..0x7f).contains(&b);
                assert_eq!(
                    unusual(u64::from_le_bytes(word)),
                    bytewise,
                    "{b:#x} in lane {lane}"
                );
            }
        }
        // Mixed words: a high byte next to a low one must not hide either.
        assert!(unusual(u64::from_le_bytes(*b"\x80\x00abcdef")));
        assert!(!unusual(u64::from_le_bytes(*b" ~~~~~~~")));
    }

    fn mutate(mut raw: Vec<u8>, edits: &[(usize, u8, u8)]) -> Vec<u8> {
        for &(at, op, byte) in edits {
            let at = at % (raw.len() + 1);
            match op % 3 {
                0 if at < raw.len() => raw[at] = byte,
                1 => raw.insert(at, byte),
                _ if at < raw.len() => {
                    raw.remove(at);
                }
                _ => {}
            }
        }
        raw
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse(&raw);
            let _ = normalize(&raw);
            let _ = frame_stream(&raw);
        }

        #[test]
        fn sip_like_text_never_panics(
            raw in "(INVITE|REGISTER|SIP/2.0|ACK|[a-z]) ?[ -~\\r\\n\\t]{0,300}(\\r\\n\\r\\n)?[ -~]{0,40}"
        ) {
            let _ = parse(raw.as_bytes());
            let _ = frame_stream(raw.as_bytes());
        }

        #[test]
        fn odd_request_uris_and_header_values_never_panic_rsip(
            uri in "(sips?:)?[!-~]{0,60}",
            value in "[ -~]{0,80}",
        ) {
            let raw = crlf(MINIMAL).replace("sip:a@example.com", &uri);
            let _ = parse(format!("{raw}\r\n").as_bytes());
            let raw = format!("{}Contact: {value}\r\nRoute: {value}\r\nv: {value}\r\n\r\n", crlf(MINIMAL));
            let _ = parse(raw.as_bytes());
        }

        #[test]
        fn mutated_samples_never_panic_and_normalise_idempotently(
            pick in 0usize..7,
            edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 0..8),
        ) {
            let raw = mutate(samples().swap_remove(pick).1, &edits);
            let _ = parse(&raw);
            let _ = frame_stream(&raw);
            if let Ok(once) = normalize(&raw) {
                prop_assert_eq!(normalize(&once).ok(), Some(once));
            }
        }

        #[test]
        fn pipelined_stream_split_anywhere_frames_the_same(
            picks in proptest::collection::vec((0usize..7, 0usize..3), 1..5),
            chunks in proptest::collection::vec(1usize..400, 1..20),
        ) {
            let all = samples();
            let mut expected: Vec<Vec<u8>> = Vec::new();
            let mut stream = Vec::new();
            for (pick, keepalive) in picks {
                if keepalive > 0 {
                    let ka = if keepalive == 1 { b"\r\n\r\n".as_slice() } else { b"\r\n" };
                    // Consecutive CRLF runs merge on the wire into one run.
                    match expected.last_mut() {
                        Some(last) if last_is_crlf(last) => last.extend_from_slice(ka),
                        _ => expected.push(ka.to_vec()),
                    }
                    stream.extend_from_slice(ka);
                }
                let msg = all[pick].1.clone();
                stream.extend_from_slice(&msg);
                expected.push(msg);
            }
            prop_assert_eq!(frames_of(&stream, &chunks), expected);
        }
    }

    fn last_is_crlf(frame: &[u8]) -> bool {
        frame.iter().all(|&b| b == b'\r' || b == b'\n')
    }
}
