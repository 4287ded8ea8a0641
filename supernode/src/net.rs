//! Socket helpers the SIP and TURN drivers share.

use std::net::{IpAddr, SocketAddr};

use tokio::net::{TcpListener, UdpSocket};

use crate::error::{Error, Result};

/// Wraps an I/O error with what the node was doing.
pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// Binds UDP and TCP on the same address, as SIP and TURN listen; with port 0, tries a
/// few ports until both bind. `service` names it in errors.
pub(crate) async fn bind_udp_tcp(
    addr: SocketAddr,
    service: &str,
) -> Result<(UdpSocket, TcpListener)> {
    let mut last = None;
    for _ in 0..20 {
        let udp = UdpSocket::bind(addr)
            .await
            .map_err(io(format!("binding {service} UDP {addr}")))?;
        let local = udp
            .local_addr()
            .map_err(io(format!("reading the {service} UDP address")))?;
        match TcpListener::bind(local).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if addr.port() == 0 => last = Some(e),
            Err(e) => return Err(io(format!("binding {service} TCP {local}"))(e)),
        }
    }
    Err(io(format!("binding {service} TCP next to UDP on {addr}"))(
        last.unwrap_or_else(|| std::io::Error::other("no free port")),
    ))
}

/// The local address the host would send from when `bound` is the wildcard: found by
/// connecting a UDP socket (which sends nothing) towards a documentation address.
pub(crate) fn outward_ip(bound: IpAddr) -> IpAddr {
    if !bound.is_unspecified() {
        return bound;
    }
    let probe = std::net::UdpSocket::bind(("0.0.0.0", 0))
        .and_then(|s| s.connect(("192.0.2.1", 9)).map(|()| s))
        .and_then(|s| s.local_addr());
    match probe {
        Ok(a) if !a.ip().is_unspecified() => a.ip(),
        _ => IpAddr::from([127, 0, 0, 1]),
    }
}
