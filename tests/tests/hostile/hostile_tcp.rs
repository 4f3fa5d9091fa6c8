//! Hostile TCP clients against the real media-node binary: an overflowing
//! Content-Length, slow and partial messages, silent connections and
//! connection floods from several loopback sources. Each must be closed or
//! refused without leaking descriptors, without a panic, and without
//! keeping a legitimate client from being answered.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use serde_json::json;
use switchboard_tests::node::{MediaNode, status_of};
use switchboard_tests::poll::eventually;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

fn config() -> serde_json::Value {
    json!({
        "version": "1",
        "trunks": [{"id": "demo/carrier", "enabled": true, "inbound": {"enabled": true, "allowedSources": ["127.0.0.1/32"]}}],
        "numbers": [{"id": "demo/n", "e164": "+15550001111", "trunkId": "demo/carrier", "inbound": true}]
    })
}

/// A TCP connection to the node from a chosen loopback source address
/// (the whole of 127.0.0.0/8 is local on Linux).
async fn connect_from(src: Ipv4Addr, node: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().expect("socket");
    sock.bind(SocketAddr::from((src, 0))).expect("bind source");
    tokio::time::timeout(Duration::from_secs(10), sock.connect(node))
        .await
        .expect("connect within 10s")
        .expect("connect")
}

/// An OPTIONS over TCP with `content_length` written as given.
fn options(local: SocketAddr, branch: &str, content_length: &str) -> String {
    format!(
        "OPTIONS sip:+15550001111@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP {local};branch=z9hG4bK{branch}\r\n\
         From: <sip:t@{local}>;tag=t{branch}\r\nTo: <sip:+15550001111@127.0.0.1>\r\nCall-ID: {branch}@hostile-tcp\r\n\
         CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: {content_length}\r\n\r\n"
    )
}

/// Sends a valid OPTIONS on `s` and returns the status of the answer, or
/// `None` when the connection closed or nothing came within `within`.
async fn ping(s: &mut TcpStream, branch: &str, within: Duration) -> Option<u16> {
    let local = s.local_addr().ok()?;
    s.write_all(options(local, branch, "0").as_bytes())
        .await
        .ok()?;
    let deadline = tokio::time::Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
            Ok(Ok(n)) => n,
        };
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if text.contains("\r\n\r\n") {
            return status_of(text.trim_start());
        }
    }
}

/// Reads (and discards) until the node closes the connection: the time
/// it took, or `None` if it was still open after `within`.
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

/// Open descriptors of a process.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn assert_no_panic(node: &MediaNode) {
    let log = node.log();
    assert!(!log.contains("panicked"), "a task panicked:\n{log}");
}

#[tokio::test]
async fn tcp_overflowing_content_length_closes_without_fd_leak_or_panic() {
    let mut node = MediaNode::start(&config(), &[]).await.expect("node starts");
    // A first TCP exchange so that anything the node opens lazily for TCP
    // is part of the baseline.
    let mut warm = connect_from(Ipv4Addr::LOCALHOST, node.sip).await;
    assert_eq!(
        ping(&mut warm, "warm", Duration::from_secs(5)).await,
        Some(200)
    );
    drop(warm);
    let pid = node.pid();
    let baseline = eventually(
        "warm-up connection released",
        Duration::from_secs(10),
        || async {
            let n = fd_count(pid);
            // Stable for a moment: the warm-up socket is gone on the node's side.
            tokio::time::sleep(Duration::from_millis(200)).await;
            if fd_count(pid) == n {
                Ok(n)
            } else {
                Err(format!("{n} fds, changing"))
            }
        },
    )
    .await;

    // Values at and just below u64::MAX: head length + Content-Length
    // overflows for each of them.
    let lengths: Vec<String> = [0u64, 1, 20, 63, 200]
        .iter()
        .map(|d| (u64::MAX - d).to_string())
        .collect();
    let mut tasks = Vec::new();
    for i in 0..20usize {
        let len = lengths[i % lengths.len()].clone();
        let src = Ipv4Addr::new(127, 0, 1, 1 + (i % 4) as u8);
        let sip = node.sip;
        tasks.push(tokio::spawn(async move {
            let mut s = connect_from(src, sip).await;
            let local = s.local_addr().expect("local");
            let _ = s
                .write_all(options(local, &format!("ovf{i}"), &len).as_bytes())
                .await;
            let closed = closed_within(&mut s, Duration::from_secs(10)).await;
            (len, closed, s)
        }));
    }
    let mut still_open = Vec::new();
    let mut sockets = Vec::new();
    for t in tasks {
        let (len, closed, s) = t.await.expect("join");
        if closed.is_none() {
            still_open.push(len);
        }
        sockets.push(s);
    }
    // Our side goes away too: whatever the node still holds is a leak.
    drop(sockets);
    let leaked = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let n = fd_count(pid);
            if n <= baseline || Instant::now() > deadline {
                break n.saturating_sub(baseline);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    assert!(node.is_running(), "node died; log:\n{}", node.log());
    assert!(
        still_open.is_empty(),
        "{} of 20 connections with an overflowing Content-Length were not closed: {still_open:?}",
        still_open.len()
    );
    assert_eq!(
        leaked, 0,
        "{leaked} descriptors leaked (baseline {baseline})"
    );
    assert_no_panic(&node);
    // Refused as a framing error, and the node still serves TCP.
    assert!(
        node.metric(r#"switchboard_sip_dropped_messages_total{reason="too_large"}"#)
            .await
            >= 20.0
    );
    let mut s = connect_from(Ipv4Addr::LOCALHOST, node.sip).await;
    assert_eq!(
        ping(&mut s, "after", Duration::from_secs(5)).await,
        Some(200)
    );
}

/// Reads until the node closes the connection: everything it sent, or `None` if it was still
/// open after `within`.
async fn read_to_close(s: &mut TcpStream, within: Duration) -> Option<String> {
    let deadline = tokio::time::Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&got).into_owned()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return None,
        }
    }
}

/// A request that does not frame over TCP is answered (400, or 505 for another SIP
/// version) before the connection is closed, as over UDP: the client learns why.
#[tokio::test]
async fn tcp_unframed_requests_are_answered_before_the_close() {
    let mut node = MediaNode::start(&config(), &[]).await.expect("node starts");
    let cases = [
        ("neg", "-5", None, "SIP/2.0 400 Bad Content-Length"),
        ("word", "five", None, "SIP/2.0 400 Bad Content-Length"),
        ("ver", "0", Some("SIP/7.0"), "SIP/2.0 505 "),
    ];
    for (branch, cl, version, want) in cases {
        let mut s = connect_from(Ipv4Addr::LOCALHOST, node.sip).await;
        let local = s.local_addr().expect("local address");
        let mut req = options(local, branch, cl);
        if let Some(v) = version {
            req = req.replacen("SIP/2.0\r\n", &format!("{v}\r\n"), 1);
        }
        s.write_all(req.as_bytes()).await.expect("send");
        let got = read_to_close(&mut s, Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("{branch}: connection still open after 10 s"));
        assert!(
            got.starts_with(want),
            "{branch}: expected {want:?} before the close, got {got:?}"
        );
        assert!(
            got.contains(&format!("Call-ID: {branch}@hostile-tcp")),
            "{branch}: the answer must be addressed to the request: {got:?}"
        );
    }
    assert!(node.is_running(), "node died; log:\n{}", node.log());
    assert_no_panic(&node);
    let mut s = connect_from(Ipv4Addr::LOCALHOST, node.sip).await;
    assert_eq!(
        ping(&mut s, "after", Duration::from_secs(5)).await,
        Some(200)
    );
}

/// Defaults: 5 s for the first message of a connection, 10 s to finish
/// any message once its first byte arrived, idle 300 s.
#[tokio::test]
async fn tcp_partial_and_silent_connections_are_closed_at_their_deadlines() {
    let node = MediaNode::start(&config(), &[]).await.expect("node starts");
    let sip = node.sip;
    let half = |local: SocketAddr, i: usize| {
        let full = options(local, &format!("half{i}"), "0");
        full[..full.len() / 2].to_owned()
    };
    // 40 connections that send half a message and 10 that send nothing,
    // from four sources (under the per-source cap).
    let mut never_valid = Vec::new();
    for i in 0..50usize {
        let src = Ipv4Addr::new(127, 0, 2, 1 + (i % 4) as u8);
        never_valid.push(tokio::spawn(async move {
            let mut s = connect_from(src, sip).await;
            if i < 40 {
                let local = s.local_addr().expect("local");
                let _ = s.write_all(half(local, i).as_bytes()).await;
            }
            closed_within(&mut s, Duration::from_secs(20)).await
        }));
    }
    // A client that sends a valid request and then trickles a message one
    // byte at a time: the activity must not extend the message deadline.
    let trickle = tokio::spawn(async move {
        let mut s = connect_from(Ipv4Addr::new(127, 0, 2, 10), sip).await;
        assert_eq!(
            ping(&mut s, "trickle-first", Duration::from_secs(5)).await,
            Some(200)
        );
        let local = s.local_addr().expect("local");
        let msg = options(local, "trickle", "0");
        let start = Instant::now();
        for b in msg.as_bytes().iter().take(msg.len() - 2) {
            if s.write_all(&[*b]).await.is_err() {
                break;
            }
            // Paced on purpose: this is the slow client under test.
            tokio::time::sleep(Duration::from_millis(100)).await;
            if start.elapsed() > Duration::from_secs(25) {
                break;
            }
        }
        let closed = closed_within(&mut s, Duration::from_secs(1)).await;
        closed.map(|_| start.elapsed())
    });
    // A client that sends a valid request and then stays quiet is kept
    // (idle timeout 300 s, and no message is in progress).
    let mut quiet = connect_from(Ipv4Addr::new(127, 0, 2, 11), sip).await;
    assert_eq!(
        ping(&mut quiet, "quiet", Duration::from_secs(5)).await,
        Some(200)
    );
    // While all of that is pending, a legitimate client is answered.
    let mut legit = connect_from(Ipv4Addr::LOCALHOST, sip).await;
    assert_eq!(
        ping(&mut legit, "legit", Duration::from_secs(5)).await,
        Some(200),
        "legitimate TCP OPTIONS not answered while slow clients are connected"
    );

    let mut late = Vec::new();
    for (i, t) in never_valid.into_iter().enumerate() {
        match t.await.expect("join") {
            Some(d) if d >= Duration::from_millis(4500) && d <= Duration::from_secs(12) => {}
            other => late.push((i, other)),
        }
    }
    assert!(
        late.is_empty(),
        "connections without a valid first message not closed about 5 s after connecting: {late:?}"
    );
    let trickled = trickle.await.expect("join");
    assert!(
        trickled.is_some_and(|d| d >= Duration::from_millis(9500) && d <= Duration::from_secs(17)),
        "a message trickled byte by byte was not closed about 10 s after its first byte: {trickled:?}"
    );
    assert_eq!(
        closed_within(&mut quiet, Duration::from_millis(200)).await,
        None,
        "an idle connection that sent a valid request was closed early"
    );
    assert_eq!(
        ping(&mut quiet, "quiet2", Duration::from_secs(5)).await,
        Some(200)
    );
    assert!(
        node.metric(r#"switchboard_sip_tcp_closed_total{reason="first_message_timeout"}"#)
            .await
            >= 50.0
    );
    assert!(
        node.metric(r#"switchboard_sip_tcp_closed_total{reason="message_timeout"}"#)
            .await
            >= 1.0
    );
    assert_no_panic(&node);
}

#[tokio::test]
async fn tcp_idle_connections_are_closed_after_the_idle_timeout() {
    let node = MediaNode::start(&config(), &["--tcp-idle-timeout-secs", "2"])
        .await
        .expect("node starts");
    let mut s = connect_from(Ipv4Addr::LOCALHOST, node.sip).await;
    assert_eq!(
        ping(&mut s, "idle", Duration::from_secs(5)).await,
        Some(200)
    );
    let closed = closed_within(&mut s, Duration::from_secs(10)).await;
    assert!(
        closed.is_some_and(|d| d >= Duration::from_millis(1500)),
        "idle connection closed at {closed:?}, expected about 2 s"
    );
    assert!(
        node.metric(r#"switchboard_sip_tcp_closed_total{reason="idle"}"#)
            .await
            >= 1.0
    );
}

/// Opens `n` connections from `src` that each get an OPTIONS answered.
async fn established(src: Ipv4Addr, node: SocketAddr, n: usize, tag: &str) -> Vec<TcpStream> {
    let mut out = Vec::new();
    for i in 0..n {
        let mut s = connect_from(src, node).await;
        assert_eq!(
            ping(&mut s, &format!("{tag}{i}"), Duration::from_secs(5)).await,
            Some(200),
            "connection {i} from {src} not served"
        );
        out.push(s);
    }
    out
}

/// A connection from `src` is refused: closed at once, nothing answered.
async fn assert_refused(src: Ipv4Addr, node: SocketAddr) {
    let mut s = connect_from(src, node).await;
    // Whether the write lands before the close is a race; the close is not.
    let local = s.local_addr().expect("local");
    let _ = s.write_all(options(local, "refused", "0").as_bytes()).await;
    let mut got = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut got)).await;
    assert!(
        closed.is_ok(),
        "connection from {src} over the cap was kept open"
    );
    assert!(
        got.is_empty(),
        "connection from {src} over the cap was answered: {}",
        String::from_utf8_lossy(&got)
    );
}

/// Connects from `src` until one is served again (a slot was released).
async fn eventually_served(src: Ipv4Addr, node: SocketAddr) -> TcpStream {
    eventually(
        "a released slot is reused",
        Duration::from_secs(10),
        || async {
            let mut s = connect_from(src, node).await;
            match ping(&mut s, "again", Duration::from_secs(2)).await {
                Some(200) => Ok(s),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
}

/// Default per-source cap: 32 connections per source address.
#[tokio::test]
async fn tcp_per_source_connection_cap_holds_and_spares_other_sources() {
    let node = MediaNode::start(&config(), &[]).await.expect("node starts");
    let flood = Ipv4Addr::new(127, 0, 3, 1);
    let mut held = established(flood, node.sip, 32, "ps").await;
    for _ in 0..4 {
        assert_refused(flood, node.sip).await;
    }
    assert!(
        node.metric(r#"switchboard_sip_tcp_refused_total{reason="per_source"}"#)
            .await
            >= 4.0
    );
    // Another source is not affected.
    let other = established(Ipv4Addr::new(127, 0, 3, 2), node.sip, 2, "other").await;
    // Closing connections gives the source its slots back.
    held.truncate(30);
    let again = eventually_served(flood, node.sip).await;
    let expected = held.len() + 1 + other.len();
    eventually(
        "the open connections gauge",
        Duration::from_secs(10),
        || async {
            let open = node
                .metric(r#"switchboard_sip_tcp_connections{direction="inbound"}"#)
                .await as usize;
            if open == expected {
                Ok(())
            } else {
                Err(format!("{open}, expected {expected}"))
            }
        },
    )
    .await;
    drop(again);
    assert_no_panic(&node);
}

/// The global cap holds against many unknown sources, and the carrier
/// (127.0.0.1 is in the trunk's allowedSources) has a budget of its own
/// that the flood cannot take.
#[tokio::test]
async fn tcp_global_connection_cap_holds_and_spares_the_carriers() {
    let node = MediaNode::start(&config(), &["--tcp-max-connections", "12"])
        .await
        .expect("node starts");
    let mut held = Vec::new();
    for k in 0..4u8 {
        held.extend(
            established(
                Ipv4Addr::new(127, 0, 4, 1 + k),
                node.sip,
                3,
                &format!("g{k}_"),
            )
            .await,
        );
    }
    assert_refused(Ipv4Addr::new(127, 0, 4, 9), node.sip).await;
    assert!(
        node.metric(r#"switchboard_sip_tcp_refused_total{reason="global"}"#)
            .await
            >= 1.0
    );
    // The flood holds every unknown slot; the carrier is still served, up
    // to a cap of its own.
    let carrier = established(Ipv4Addr::LOCALHOST, node.sip, 12, "carrier").await;
    assert_refused(Ipv4Addr::LOCALHOST, node.sip).await;
    assert!(
        node.metric(r#"switchboard_sip_tcp_refused_total{reason="global_carriers"}"#)
            .await
            >= 1.0
    );
    held.pop();
    let _again = eventually_served(Ipv4Addr::new(127, 0, 4, 9), node.sip).await;
    drop(carrier);
    let _carrier_again = eventually_served(Ipv4Addr::LOCALHOST, node.sip).await;
    assert_no_panic(&node);
}

/// Outgoing connections share the reader: a call to a carrier over TCP
/// still works, and the connection counts as outbound, not against the
/// accept caps.
#[tokio::test]
async fn tcp_outbound_call_to_a_carrier_still_works() {
    let gw = switchboard_tests::node::free_port();
    let carrier = switchboard_tests::sipp::Sipp::template(
        "uas_answer.xml",
        &[
            ("@RURI_USER@", "77\\+15557654321"),
            ("@FROM_DOMAIN@", "sb.example"),
        ],
    )
    .expect("template")
    .args(["-t", "t1"])
    .spawn_server(gw, 1);
    let config = json!({
        "version": "1",
        "trunks": [{"id": "demo/carrier", "enabled": true, "outbound": {
            "enabled": true,
            "gateways": [{"host": "127.0.0.1", "port": gw, "transport": "TRANSPORT_TCP", "priority": 1, "weight": 1}],
            "leadingPlus": true, "techPrefix": "77", "fromDomain": "sb.example", "ringingTimeoutSeconds": 20
        }}],
        "numbers": [{"id": "demo/caller", "e164": "+15550001111", "trunkId": "demo/carrier", "inbound": true, "outbound": true}]
    });
    // Only one connection from the node may exist, so the global cap of
    // one accepted connection must not apply to it.
    let node = MediaNode::start(&config, &["--debug-routes", "--tcp-max-connections", "1"])
        .await
        .expect("node starts");
    // SIPp must be listening before the node dials: TCP has no retransmission.
    let gw_addr: SocketAddr = format!("127.0.0.1:{gw}").parse().expect("addr");
    eventually("SIPp listening on TCP", Duration::from_secs(10), || async {
        let probe = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
        // Probing costs SIPp one idle connection, which it tolerates.
        probe
            .connect(gw_addr)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    })
    .await;
    let (status, body) = node
        .http(
            "POST",
            "/debug/dial",
            Some(&json!({"number_id": "demo/caller", "to": "+1 555 765 4321"})),
        )
        .await
        .expect("dial request");
    assert_eq!(status, 200, "{body}");
    let outcome: serde_json::Value = serde_json::from_str(&body).expect("outcome JSON");
    assert_eq!(outcome["outcome"], "answered", "{outcome}");
    assert_eq!(
        node.metric(r#"switchboard_sip_tcp_connections{direction="outbound"}"#)
            .await,
        1.0
    );
    let call_id = outcome["call_id"].as_str().expect("call_id");
    let (status, _) = node
        .http("POST", "/debug/hangup", Some(&json!({"call_id": call_id})))
        .await
        .expect("hangup");
    assert_eq!(status, 202);
    carrier
        .await
        .expect("join")
        .expect("sipp")
        .assert_success("carrier reached over TCP, BYE on the same connection");
    assert_no_panic(&node);
}
