//! RFC 5626 §4.4.2 keepalives over UDP: a phone using SIP outbound sends STUN Binding
//! requests (RFC 5389/8489) to the SIP port and expects a Binding success naming the
//! address it was seen from, which also tells it whether its NAT binding changed.
//! Only the Binding method is answered; anything else STUN-shaped is dropped.

use std::net::SocketAddr;

const MAGIC_COOKIE: u32 = 0x2112_A442;
const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const XOR_MAPPED_ADDRESS: u16 = 0x0020;

/// Whether a datagram is STUN rather than SIP: SIP starts with a letter, STUN with two
/// zero bits and carries the magic cookie (RFC 8489 §6).
pub fn is_stun(data: &[u8]) -> bool {
    data.len() >= 20
        && data[0] & 0xC0 == 0
        && u32::from_be_bytes([data[4], data[5], data[6], data[7]]) == MAGIC_COOKIE
}

/// The Binding success response to a Binding request from `from`, or `None` for any
/// other or malformed STUN message.
pub fn binding_response(request: &[u8], from: SocketAddr) -> Option<Vec<u8>> {
    if !is_stun(request) {
        return None;
    }
    let kind = u16::from_be_bytes([request[0], request[1]]);
    let length = usize::from(u16::from_be_bytes([request[2], request[3]]));
    if kind != BINDING_REQUEST || length % 4 != 0 || 20 + length != request.len() {
        return None;
    }
    let transaction = &request[8..20];
    let port = from.port() ^ (MAGIC_COOKIE >> 16) as u16;
    let mut value = Vec::with_capacity(20);
    match from {
        SocketAddr::V4(a) => {
            value.extend_from_slice(&[0, 0x01]);
            value.extend_from_slice(&port.to_be_bytes());
            let ip = u32::from(*a.ip()) ^ MAGIC_COOKIE;
            value.extend_from_slice(&ip.to_be_bytes());
        }
        SocketAddr::V6(a) => {
            value.extend_from_slice(&[0, 0x02]);
            value.extend_from_slice(&port.to_be_bytes());
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
            key[4..].copy_from_slice(transaction);
            for (b, k) in a.ip().octets().iter().zip(key) {
                value.push(b ^ k);
            }
        }
    }
    let mut out = Vec::with_capacity(20 + 4 + value.len());
    out.extend_from_slice(&BINDING_SUCCESS.to_be_bytes());
    out.extend_from_slice(&((4 + value.len()) as u16).to_be_bytes());
    out.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
    out.extend_from_slice(transaction);
    out.extend_from_slice(&XOR_MAPPED_ADDRESS.to_be_bytes());
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(&value);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Vec<u8> {
        let mut r = vec![0x00, 0x01, 0x00, 0x00];
        r.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        r.extend_from_slice(&[7; 12]);
        r
    }

    #[test]
    fn binding_request_gets_the_xor_mapped_source() {
        let from: SocketAddr = "192.0.2.1:32853".parse().unwrap();
        let resp = binding_response(&request(), from).unwrap();
        assert_eq!(&resp[0..2], &[0x01, 0x01]);
        assert_eq!(&resp[8..20], &[7; 12]);
        // RFC 5769 §2.2 encodes 192.0.2.1:32853 as port 0xa147, address 0xe112a643.
        assert_eq!(&resp[20..24], &[0x00, 0x20, 0x00, 0x08]);
        assert_eq!(
            &resp[24..32],
            &[0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43]
        );
    }

    #[test]
    fn ipv6_sources_are_xored_with_cookie_and_transaction() {
        let from: SocketAddr = "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
            .parse()
            .unwrap();
        let resp = binding_response(&request(), from).unwrap();
        assert_eq!(resp.len(), 20 + 4 + 20);
        assert_eq!(&resp[26..28], &[0xa1, 0x47]);
        assert_eq!(resp[28] ^ 0x21, 0x20); // first octet 0x20 xor cookie 0x21
    }

    #[test]
    fn sip_and_other_stun_are_left_alone() {
        assert!(!is_stun(b"OPTIONS sip:x SIP/2.0\r\n\r\n"));
        let mut other = request();
        other[1] = 0x03; // Allocate
        assert!(binding_response(&other, "127.0.0.1:1".parse().unwrap()).is_none());
        let mut bad_len = request();
        bad_len[3] = 4;
        assert!(binding_response(&bad_len, "127.0.0.1:1".parse().unwrap()).is_none());
    }
}
