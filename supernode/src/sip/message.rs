//! Reading header values out of rsip messages and building responses to requests.

use rsip::headers::UntypedHeader;
use rsip::{Header, Headers, Request, Response};

/// The software name in Server and User-Agent headers.
pub const SERVER: &str = concat!("supernode/", env!("CARGO_PKG_VERSION"));

/// Header names the node reads, so lookups match on rsip's typed variants rather than
/// formatting every header to compare names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Name {
    /// Via.
    Via,
    /// From.
    From,
    /// To.
    To,
    /// Call-ID.
    CallId,
    /// CSeq.
    CSeq,
    /// Contact.
    Contact,
    /// Expires.
    Expires,
    /// Authorization.
    Authorization,
    /// Proxy-Authorization.
    ProxyAuthorization,
    /// Max-Forwards.
    MaxForwards,
    /// Require.
    Require,
    /// Supported.
    Supported,
    /// Route.
    Route,
    /// Record-Route.
    RecordRoute,
}

fn value_of(h: &Header, name: Name) -> Option<&str> {
    Some(match (h, name) {
        (Header::Via(v), Name::Via) => v.value(),
        (Header::From(v), Name::From) => v.value(),
        (Header::To(v), Name::To) => v.value(),
        (Header::CallId(v), Name::CallId) => v.value(),
        (Header::CSeq(v), Name::CSeq) => v.value(),
        (Header::Contact(v), Name::Contact) => v.value(),
        (Header::Expires(v), Name::Expires) => v.value(),
        (Header::Authorization(v), Name::Authorization) => v.value(),
        (Header::ProxyAuthorization(v), Name::ProxyAuthorization) => v.value(),
        (Header::MaxForwards(v), Name::MaxForwards) => v.value(),
        (Header::Require(v), Name::Require) => v.value(),
        (Header::Supported(v), Name::Supported) => v.value(),
        (Header::Route(v), Name::Route) => v.value(),
        (Header::RecordRoute(v), Name::RecordRoute) => v.value(),
        _ => return None,
    })
}

/// Every value of a header, in message order.
pub fn values(headers: &Headers, name: Name) -> impl Iterator<Item = &str> {
    headers.iter().filter_map(move |h| value_of(h, name))
}

/// The first value of a header.
pub fn first(headers: &Headers, name: Name) -> Option<&str> {
    values(headers, name).next()
}

/// The `tag` parameter of a From or To value.
pub fn tag(value: &str) -> Option<&str> {
    crate::sip::headers::NameAddr::parse(value)?
        .param("tag")
        .flatten()
}

/// The CSeq number and method.
pub fn cseq(headers: &Headers) -> Option<(u32, &str)> {
    let v = first(headers, Name::CSeq)?;
    let mut it = v.split_whitespace();
    let n = it.next()?.parse().ok()?;
    Some((n, it.next()?))
}

/// A To tag that is the same for every retransmission of one request: derived from
/// Call-ID, From tag and the top Via branch, so stateless answers (401 challenges)
/// repeat themselves exactly.
pub fn stable_tag(req: &Request) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    first(&req.headers, Name::CallId).hash(&mut h);
    first(&req.headers, Name::From).map(tag).hash(&mut h);
    first(&req.headers, Name::Via).hash(&mut h);
    format!("{:x}", h.finish())
}

/// A response to `req` (RFC 3261 §8.2.6): the Vias, From, Call-ID and CSeq copied, To
/// copied with a tag added when it has none (except for 100 Trying), no body.
pub fn reply(req: &Request, code: u16, reason: Option<&str>) -> Response {
    let mut headers = Headers::default();
    for h in req.headers.iter() {
        match h {
            Header::Via(_) | Header::From(_) | Header::CallId(_) | Header::CSeq(_) => {
                headers.push(h.clone())
            }
            Header::To(to) => {
                if code > 100 && tag(to.value()).is_none() {
                    let tagged = format!("{};tag={}", to.value(), stable_tag(req));
                    headers.push(Header::To(rsip::headers::To::new(tagged)));
                } else {
                    headers.push(h.clone());
                }
            }
            _ => {}
        }
    }
    headers.push(Header::Server(rsip::headers::Server::new(SERVER)));
    headers.push(Header::ContentLength(rsip::headers::ContentLength::new(
        "0",
    )));
    // rsip's own phrases are its enum names ("BusyHere"), so phrases are ours.
    let status_code = rsip::StatusCode::Other(code, reason.unwrap_or(phrase(code)).to_string());
    Response {
        status_code,
        version: rsip::Version::V2,
        headers,
        body: Vec::new(),
    }
}

/// The RFC 3261 §21 reason phrase of a status code.
pub fn phrase(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        180 => "Ringing",
        181 => "Call Is Being Forwarded",
        182 => "Queued",
        183 => "Session Progress",
        200 => "OK",
        202 => "Accepted",
        301 => "Moved Permanently",
        302 => "Moved Temporarily",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        423 => "Interval Too Brief",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        484 => "Address Incomplete",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        491 => "Request Pending",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        600 => "Busy Everywhere",
        603 => "Decline",
        604 => "Does Not Exist Anywhere",
        606 => "Not Acceptable",
        _ => "Unknown",
    }
}

/// Adds a header line to a response, before its Content-Length.
pub fn push(resp: &mut Response, header: Header) {
    let mut all: Vec<Header> = std::mem::take(&mut resp.headers).into_iter().collect();
    let at = all
        .iter()
        .position(|h| matches!(h, Header::ContentLength(_)))
        .unwrap_or(all.len());
    all.insert(at, header);
    resp.headers = Headers::from(all);
}

/// An extension header (`Name: value`) rsip has no variant for.
pub fn other(name: &str, value: impl Into<String>) -> Header {
    Header::Other(name.to_string(), value.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const REGISTER: &str = "REGISTER sip:example.org SIP/2.0\r\n\
        Via: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bK1\r\n\
        Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK0\r\n\
        From: <sip:alice@example.org>;tag=abc\r\n\
        To: <sip:alice@example.org>\r\n\
        Call-ID: c1\r\n\
        CSeq: 7 REGISTER\r\n\
        Contact: <sip:alice@127.0.0.1:5090>\r\n\
        Content-Length: 0\r\n\r\n";

    #[test]
    fn a_reply_copies_the_right_headers_and_tags_to() {
        let req = Request::try_from(REGISTER).unwrap();
        let resp = reply(&req, 401, None);
        assert_eq!(resp.status_code.code(), 401);
        assert_eq!(values(&resp.headers, Name::Via).count(), 2);
        let to = first(&resp.headers, Name::To).unwrap();
        assert_eq!(tag(to), Some(stable_tag(&req).as_str()));
        assert_eq!(cseq(&resp.headers), Some((7, "REGISTER")));
        assert!(first(&resp.headers, Name::Contact).is_none());
        let text = resp.to_string();
        assert!(text.starts_with("SIP/2.0 401"), "{text}");
        assert!(text.ends_with("Content-Length: 0\r\n\r\n"), "{text}");
    }

    #[test]
    fn pushed_headers_go_before_content_length() {
        let req = Request::try_from(REGISTER).unwrap();
        let mut resp = reply(&req, 200, Some("OK"));
        push(&mut resp, other("Min-Expires", "60"));
        let text = resp.to_string();
        let a = text.find("Min-Expires").unwrap();
        let b = text.find("Content-Length").unwrap();
        assert!(a < b);
    }
}
