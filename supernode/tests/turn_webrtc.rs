//! The webrtc-rs `turn` crate's client allocates through supernode, gets a permission
//! and exchanges data with a UDP echo peer.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::turn::turn_node;
use turn::client::{Client, ClientConfig};
use webrtc_util::conn::Conn;

#[test]
fn webrtc_turn_client_relays_to_an_echo_peer() {
    let (node, turn) = turn_node(&["--allow-peer", "127.0.0.0/8"]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(30), exchange(turn))
            .await
            .expect("the TURN exchange took over 30 s");
    });
    assert!(node.stop(), "the node did not stop cleanly");
}

async fn exchange(turn: std::net::SocketAddr) {
    // The echo peer: sends every datagram back where it came from.
    let echo = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind echo");
    let echo_addr = echo.local_addr().expect("echo addr");
    let echo_task = tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = echo.recv_from(&mut buf).await {
            let _ = echo.send_to(&buf[..n], from).await;
        }
    });

    let conn = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind client");
    let client = Client::new(ClientConfig {
        stun_serv_addr: turn.to_string(),
        turn_serv_addr: turn.to_string(),
        username: "test".into(),
        password: "test".into(),
        realm: "example.org".into(),
        software: "supernode test".into(),
        rto_in_ms: 0,
        conn: Arc::new(conn),
        vnet: None,
    })
    .await
    .expect("client");
    client.listen().await.expect("listen");
    let reflexive = client
        .send_binding_request()
        .await
        .expect("binding request");
    assert_eq!(reflexive.ip(), std::net::IpAddr::from([127, 0, 0, 1]));

    let relay = client.allocate().await.expect("allocate");
    let relayed = relay.local_addr().expect("relayed address");
    assert_eq!(relayed.ip(), std::net::IpAddr::from([127, 0, 0, 1]));

    let mut buf = [0u8; 1500];
    for i in 0..20u32 {
        let msg = format!("hello {i}");
        // The first send installs the permission (CreatePermission), later ones may go
        // over a channel once the client has bound one.
        relay
            .send_to(msg.as_bytes(), echo_addr)
            .await
            .expect("send through the relay");
        let (n, from) = tokio::time::timeout(Duration::from_secs(3), relay.recv_from(&mut buf))
            .await
            .expect("no echo within 3 s")
            .expect("recv through the relay");
        assert_eq!(from, echo_addr);
        assert_eq!(&buf[..n], msg.as_bytes());
    }
    relay.close().await.expect("close relay");
    client.close().await.expect("close client");
    echo_task.abort();
}
