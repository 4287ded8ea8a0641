//! Extraction of the few header fields the transaction layer matches on, and the compact
//! string keys built from them.
//!
//! rsip keeps headers as untyped strings and only parses them on demand through nom. Parsing
//! the whole `Via` for every datagram would dominate the cost of a REGISTER, so the top `Via`
//! and `CSeq` are scanned by hand here: matching needs only the branch, the sent-by and the
//! CSeq method (RFC 3261 §17.1.3, §17.2.3).

use rsip::{Header, Headers, Method, Request};
use std::fmt::Write as _;

/// The RFC 3261 magic cookie: a branch starting with it was built by an RFC 3261 element and is
/// unique across space and time, so it alone identifies the transaction (§8.1.1.7, §17.2.3).
pub(super) const MAGIC_COOKIE: &str = "z9hG4bK";

/// The parts of the topmost `Via` value that matching uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TopVia<'a> {
    /// The whole first Via value (up to the first comma), for legacy matching and for copying
    /// into ACK/CANCEL, which carry only the top Via (§17.1.1.3, §9.1).
    pub raw: &'a str,
    /// sent-by (`host[:port]`), part of the server key because branches from different senders
    /// may collide (§17.2.3).
    pub sent_by: &'a str,
    /// The branch parameter, if any.
    pub branch: Option<&'a str>,
}

/// Returns the first `Via` value of the message.
///
/// rsip does not map the compact form `v:` to `Header::Via`, so it is accepted here too: a
/// request arriving with compact headers must still match its transaction (§7.3.3).
pub(super) fn top_via(headers: &Headers) -> Option<TopVia<'_>> {
    let value = headers.iter().find_map(|h| match h {
        Header::Via(v) => Some(untyped_value(v)),
        Header::Other(name, value) if name.eq_ignore_ascii_case("v") => Some(value.as_str()),
        _ => None,
    })?;
    parse_via_value(value)
}

fn untyped_value(v: &rsip::headers::Via) -> &str {
    use rsip::headers::UntypedHeader;
    v.value()
}

/// Parses `SIP/2.0/UDP host:port;branch=...;rport` (only the first value of a comma list).
pub(super) fn parse_via_value(value: &str) -> Option<TopVia<'_>> {
    // A Via header line may hold several comma-separated values (§7.3.1); the topmost is the
    // first. Commas cannot appear inside a well-formed via-parm except in quoted strings, which
    // Via parameters do not use in practice.
    let raw = value.split(',').next()?.trim();
    let (head, params) = match raw.find(';') {
        Some(i) => (&raw[..i], &raw[i + 1..]),
        None => (raw, ""),
    };
    // sent-protocol may contain LWS around the slashes, so locate the transport token after the
    // last slash, then the sent-by after the whitespace that follows it.
    let after_slash = &head[head.rfind('/')? + 1..];
    let after_slash = after_slash.trim_start();
    let transport_end = after_slash
        .find(|c: char| c.is_whitespace())
        .unwrap_or(after_slash.len());
    let sent_by = after_slash[transport_end..].trim();
    if sent_by.is_empty() {
        return None;
    }
    let branch = params.split(';').find_map(|p| {
        let (name, value) = p.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("branch")
            .then(|| value.trim())
    });
    Some(TopVia {
        raw,
        sent_by,
        branch,
    })
}

/// Returns (sequence number, method) from `CSeq`.
pub(super) fn cseq(headers: &Headers) -> Option<(u32, Method)> {
    use rsip::headers::UntypedHeader;
    let value = headers.iter().find_map(|h| match h {
        Header::CSeq(c) => Some(c.value()),
        _ => None,
    })?;
    let mut parts = value.split_whitespace();
    let seq = parts.next()?.parse().ok()?;
    let method = parse_method(parts.next()?)?;
    Some((seq, method))
}

fn parse_method(s: &str) -> Option<Method> {
    // Method names are case-sensitive in SIP (§7.1), but rsip's own parser is lenient; staying
    // lenient keeps the two in agreement.
    Method::all()
        .into_iter()
        .find(|m| method_name(*m).eq_ignore_ascii_case(s))
}

/// Upper-case method name without allocating (rsip's `Display` goes through `to_uppercase`).
pub(super) fn method_name(m: Method) -> &'static str {
    match m {
        Method::Ack => "ACK",
        Method::Bye => "BYE",
        Method::Cancel => "CANCEL",
        Method::Info => "INFO",
        Method::Invite => "INVITE",
        Method::Message => "MESSAGE",
        Method::Notify => "NOTIFY",
        Method::Options => "OPTIONS",
        Method::PRack => "PRACK",
        Method::Publish => "PUBLISH",
        Method::Refer => "REFER",
        Method::Register => "REGISTER",
        Method::Subscribe => "SUBSCRIBE",
        Method::Update => "UPDATE",
    }
}

/// One byte standing for the method inside a key, so keys stay short.
fn method_code(m: Method) -> char {
    match m {
        Method::Ack => 'a',
        Method::Bye => 'b',
        Method::Cancel => 'c',
        Method::Info => 'i',
        Method::Invite => 'I',
        Method::Message => 'm',
        Method::Notify => 'n',
        Method::Options => 'o',
        Method::PRack => 'p',
        Method::Publish => 'P',
        Method::Refer => 'r',
        Method::Register => 'R',
        Method::Subscribe => 's',
        Method::Update => 'u',
    }
}

/// Why a request cannot be given a server key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KeyError {
    Via,
    CSeq,
    CallId,
    From,
}

/// Writes the server-transaction key of `request` into `buf`, as if its method were
/// `key_method` (ACK is keyed as INVITE, and a CANCEL looks up its INVITE this way).
///
/// RFC 3261 requests: `S` + method + branch + ' ' + lower-cased sent-by (§17.2.3: branch,
/// sent-by and method, with ACK matching INVITE). Requests whose branch lacks the magic cookie
/// (RFC 2543 elements) get a legacy key `L` + method + Call-ID, CSeq number, From, Request-URI
/// and the whole top Via — the §17.2.3 fallback without the To tag: the To tag of an INVITE
/// retransmission equals the original's, and the To tag of the ACK for a non-2xx equals the tag
/// of the response this same transaction sent, so omitting it never separates what the RFC
/// would match; it only stops distinguishing requests that differ in nothing else.
pub(super) fn server_key(
    buf: &mut String,
    request: &Request,
    key_method: Method,
) -> Result<(), KeyError> {
    buf.clear();
    let via = top_via(&request.headers).ok_or(KeyError::Via)?;
    match via.branch {
        Some(branch) if branch.starts_with(MAGIC_COOKIE) => {
            buf.push('S');
            buf.push(method_code(key_method));
            buf.push_str(branch);
            buf.push(' ');
            buf.extend(via.sent_by.chars().map(|c| c.to_ascii_lowercase()));
        }
        _ => {
            use rsip::headers::UntypedHeader;
            let (seq, _) = cseq(&request.headers).ok_or(KeyError::CSeq)?;
            let call_id = request
                .headers
                .iter()
                .find_map(|h| match h {
                    Header::CallId(c) => Some(c.value()),
                    _ => None,
                })
                .ok_or(KeyError::CallId)?;
            let from = request
                .headers
                .iter()
                .find_map(|h| match h {
                    Header::From(f) => Some(f.value()),
                    _ => None,
                })
                .ok_or(KeyError::From)?;
            buf.push('L');
            buf.push(method_code(key_method));
            // Writing to a String cannot fail.
            let _ = write!(
                buf,
                "{}\n{}\n{}\n{}\n{}",
                call_id.trim(),
                seq,
                from.trim(),
                request.uri,
                via.raw
            );
        }
    }
    Ok(())
}

/// Writes the client-transaction key: `C` + method + branch (§17.1.3: the branch we generated
/// plus the CSeq method, so the CANCEL sharing an INVITE's branch is a different transaction).
pub(super) fn client_key(buf: &mut String, branch: &str, method: Method) {
    buf.clear();
    buf.push('C');
    buf.push(method_code(method));
    buf.push_str(branch);
}

/// Replaces the method code of a key already in `buf` (used to find the INVITE a CANCEL
/// targets without rebuilding the key).
pub(super) fn rekey_method(buf: &mut String, method: Method) {
    if buf.len() >= 2 {
        let mut code = [0u8; 4];
        let code = method_code(method).encode_utf8(&mut code);
        buf.replace_range(1..2, code);
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn parses_top_via() {
        let v = parse_via_value(
            "SIP / 2.0 / UDP  Host.Example.com:5060 ;rport; branch = z9hG4bK77 , SIP/2.0/TCP other",
        )
        .unwrap();
        assert_eq!(v.sent_by, "Host.Example.com:5060");
        assert_eq!(v.branch, Some("z9hG4bK77"));
        assert!(parse_via_value("garbage").is_none());
        let v = parse_via_value("SIP/2.0/UDP 10.0.0.1").unwrap();
        assert_eq!(v.branch, None);
        assert_eq!(v.sent_by, "10.0.0.1");
    }

    #[test]
    fn rekey_changes_only_the_method() {
        let mut s = String::new();
        client_key(&mut s, "z9hG4bKx", Method::Invite);
        let before = s.clone();
        rekey_method(&mut s, Method::Cancel);
        assert_ne!(s, before);
        rekey_method(&mut s, Method::Invite);
        assert_eq!(s, before);
    }
}
