//! Hostile clients against the node's SIP-over-TLS listener: connections that never finish
//! the handshake are closed at the deadline, the per-source cap holds before any TLS work,
//! garbage instead of a ClientHello is closed at once, and a legitimate TLS client is still
//! served throughout.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use serde_json::json;
use switchboard_tests::node::{MediaNode, free_port, status_of};
use switchboard_tests::poll::eventually;
use switchboard_tests::tls::TlsSipClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

fn config() -> serde_json::Value {
    json!({
        "version": "1",
        "trunks": [{"id": "demo/carrier", "enabled": true, "inbound": {"enabled": true, "allowedSources": ["127.0.0.1/32"]}}],
        "numbers": [{"id": "demo/n", "e164": "+15550001111", "trunkId": "demo/carrier", "inbound": true}]
    })
}

struct TlsNode {
    node: MediaNode,
    tls: SocketAddr,
    _dir: tempfile::TempDir,
}

async fn start(extra: &[&str]) -> TlsNode {
    let dir = tempfile::tempdir().expect("dir");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let (c, k) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&c, cert.pem()).expect("write");
    std::fs::write(&k, key.serialize_pem()).expect("write");
    let tls: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let mut args = vec![
        "--tls-cert".to_owned(),
        c.display().to_string(),
        "--tls-key".to_owned(),
        k.display().to_string(),
        "--tls-bind".to_owned(),
        tls.to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let node = MediaNode::start(&config(), &refs)
        .await
        .expect("node starts");
    TlsNode {
        node,
        tls,
        _dir: dir,
    }
}

async fn connect_from(src: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().expect("socket");
    sock.bind(SocketAddr::from((src, 0))).expect("bind source");
    tokio::time::timeout(Duration::from_secs(10), sock.connect(to))
        .await
        .expect("connect within 10s")
        .expect("connect")
}

/// Sends an OPTIONS over a fresh TLS connection from 127.0.0.1 and returns the status.
async fn tls_options(to: SocketAddr, branch: &str) -> Option<u16> {
    let tcp = connect_from(Ipv4Addr::LOCALHOST, to).await;
    let mut s = TlsSipClient::handshake(tcp).await.ok()?;
    let local = s.local();
    let msg = format!(
        "OPTIONS sip:+15550001111@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TLS {local};branch=z9hG4bK{branch}\r\n\
         From: <sip:t@{local}>;tag=t{branch}\r\nTo: <sip:+15550001111@127.0.0.1>\r\nCall-ID: {branch}@tls\r\n\
         CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    s.send(&msg).await.ok()?;
    let reply = s.next_message(Duration::from_secs(5)).await?;
    status_of(reply.trim_start())
}

/// Reads until the node closes the connection: how long it took, or `None` if still open.
async fn closed_within(s: &mut TcpStream, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
            Err(_) => return None,
        }
    }
}

#[tokio::test]
async fn tls_handshakes_that_never_finish_are_closed_at_the_deadline() {
    let n = start(&["--tcp-first-message-timeout-secs", "2"]).await;
    assert_eq!(
        tls_options(n.tls, "warm").await,
        Some(200),
        "TLS OPTIONS answered"
    );
    // Silent connections and a ClientHello cut short: closed after about 2 s.
    let opened = Instant::now();
    let mut silent = Vec::new();
    for i in 0..5u8 {
        silent.push(connect_from(Ipv4Addr::new(127, 0, 6, 1 + i), n.tls).await);
    }
    let mut partial = connect_from(Ipv4Addr::new(127, 0, 6, 9), n.tls).await;
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
        .await
        .expect("write");
    // A legitimate client is served while they hang.
    assert_eq!(tls_options(n.tls, "during").await, Some(200));
    for s in silent.iter_mut().chain(std::iter::once(&mut partial)) {
        assert!(
            closed_within(s, Duration::from_secs(10)).await.is_some(),
            "a hanging handshake was kept"
        );
        let after = opened.elapsed();
        assert!(
            after >= Duration::from_millis(1500),
            "handshake closed {after:?} after opening, expected about 2 s"
        );
    }
    assert!(
        n.node
            .metric(r#"switchboard_sip_tls_closed_total{reason="tls_handshake_timeout"}"#)
            .await
            >= 6.0
    );
    // Garbage instead of a ClientHello is closed at once.
    let mut junk = connect_from(Ipv4Addr::new(127, 0, 6, 20), n.tls).await;
    junk.write_all(b"OPTIONS sip:x SIP/2.0\r\n\r\n")
        .await
        .expect("write");
    assert!(
        closed_within(&mut junk, Duration::from_secs(1))
            .await
            .is_some()
    );
    assert!(
        n.node
            .metric(r#"switchboard_sip_tls_closed_total{reason="tls_handshake_failed"}"#)
            .await
            >= 1.0
    );
    assert!(!n.node.log().contains("panicked"), "{}", n.node.log());
}

#[tokio::test]
async fn tls_connection_caps_hold_before_the_handshake() {
    let n = start(&["--tcp-max-connections-per-source", "4"]).await;
    let flood = Ipv4Addr::new(127, 0, 7, 1);
    // Four silent connections (no handshake at all) take the source's four slots.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect_from(flood, n.tls).await);
    }
    eventually("the four held", Duration::from_secs(5), || async {
        let open = n
            .node
            .metric(r#"switchboard_sip_tls_connections{direction="inbound"}"#)
            .await;
        if open >= 4.0 {
            Ok(())
        } else {
            Err(format!("{open}"))
        }
    })
    .await;
    let mut fifth = connect_from(flood, n.tls).await;
    assert!(
        closed_within(&mut fifth, Duration::from_secs(2))
            .await
            .is_some(),
        "a fifth connection from the source was kept"
    );
    assert!(
        n.node
            .metric(r#"switchboard_sip_tls_refused_total{reason="per_source"}"#)
            .await
            >= 1.0
    );
    // Another source (the carrier) is still served.
    assert_eq!(tls_options(n.tls, "carrier").await, Some(200));
    drop(held);
}
