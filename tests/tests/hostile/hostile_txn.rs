//! Hostile load on the transaction layer, against the real media node on
//! loopback: requests must not pin memory after their RFC 3261 timers end,
//! the transaction table is bounded (per node and per source) with a
//! counted 503, a new INVITE that reuses a live call's Call-ID never
//! touches that call, and 401/403 answers to unauthorised sources are sent
//! once instead of being retransmitted by Timer G.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use switchboard_tests::node::{MediaNode, RawSip, header_of, status_of};
use switchboard_tests::poll::eventually;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NUMBER: &str = "15550001111";
const GAUGE: &str = "switchboard_sip_server_transactions";
/// RSS growth tolerated once the transactions ended (allocator slack);
/// 4,000 requests kept with their 12 KB keys held about 47 MB.
const RSS_SLACK_KIB: u64 = 16 * 1024;

/// One trunk whose carrier sends from `sources`, one number on it.
fn config(sources: &[&str]) -> serde_json::Value {
    json!({
        "version": "1",
        "trunks": [{"id": "demo/carrier", "enabled": true,
                    "inbound": {"enabled": true, "allowedSources": sources}}],
        "numbers": [{"id": "demo/n", "e164": "+15550001111", "trunkId": "demo/carrier", "inbound": true}]
    })
}

fn options(proto: &str, local: SocketAddr, branch: &str, call_id: &str) -> String {
    format!(
        "OPTIONS sip:+{NUMBER}@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/{proto} {local};branch=z9hG4bK{branch}\r\n\
         From: <sip:probe@{local}>;tag=p\r\nTo: <sip:+{NUMBER}@127.0.0.1>\r\nCall-ID: {call_id}\r\n\
         CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
}

fn invite(local: SocketAddr, branch: &str, call_id: &str, from_tag: &str, cseq: u32) -> String {
    let sdp = format!(
        "v=0\r\no=raw 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {} RTP/AVP 0\r\n",
        local.port() + 2
    );
    format!(
        "INVITE sip:+{NUMBER}@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch={branch}\r\n\
         From: <sip:raw@{local}>;tag={from_tag}\r\nTo: <sip:+{NUMBER}@127.0.0.1>\r\nCall-ID: {call_id}\r\n\
         CSeq: {cseq} INVITE\r\nContact: <sip:raw@{local}>\r\nMax-Forwards: 70\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
}

/// A request inside the dialog of `call_id` (`to` is the To of our 200).
fn in_dialog(
    method: &str,
    local: SocketAddr,
    branch: &str,
    call_id: &str,
    from_tag: &str,
    to: &str,
    cseq: u32,
) -> String {
    format!(
        "{method} sip:+{NUMBER}@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch={branch}\r\n\
         From: <sip:raw@{local}>;tag={from_tag}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n\
         Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
}

/// The transactions gauge; fails when the node does not export it (a 0
/// from an absent series must not pass for "freed").
async fn transactions(node: &MediaNode) -> Result<f64, String> {
    let (_, text) = node
        .http("GET", "/metrics", None)
        .await
        .map_err(|e| e.to_string())?;
    text.lines()
        .find_map(|l| l.strip_prefix(GAUGE).and_then(|v| v.trim().parse().ok()))
        .ok_or_else(|| format!("{GAUGE} not exported"))
}

async fn wait_transactions_at_most(node: &MediaNode, max: f64, within: Duration) {
    eventually(&format!("server transactions <= {max}"), within, || async {
        let n = transactions(node).await?;
        if n <= max {
            Ok(())
        } else {
            Err(format!("{n} transactions"))
        }
    })
    .await;
}

/// Sends `count` UDP requests built by `make(i)` with at most `window`
/// unanswered at a time; returns the status codes of the answers. Panics
/// when answers stop coming for 5 s.
async fn udp_requests(
    raw: &RawSip,
    count: usize,
    window: usize,
    make: impl Fn(usize) -> String,
) -> Vec<u16> {
    let mut codes = Vec::with_capacity(count);
    let mut sent = 0;
    let mut buf = vec![0u8; 65536];
    while codes.len() < count {
        while sent < count && sent - codes.len() < window {
            raw.send(make(sent).as_bytes()).await;
            sent += 1;
        }
        let r = tokio::time::timeout(Duration::from_secs(5), raw.sock.recv_from(&mut buf)).await;
        let Ok(Ok((n, _))) = r else {
            panic!(
                "answers stopped after {} of {count} (sent {sent})",
                codes.len()
            );
        };
        if let Some(code) = status_of(&String::from_utf8_lossy(&buf[..n])) {
            codes.push(code);
        }
    }
    codes
}

#[tokio::test]
async fn txn_requests_do_not_pin_memory_after_their_timers_end() {
    let node = MediaNode::start(
        &config(&["127.0.0.1/32"]),
        &["--rate-limit", "0", "--call-handler", "logging"],
    )
    .await
    .expect("node starts");
    // Checked below, together with RSS, so that a node without the gauge
    // still shows how much memory it keeps.
    let base = transactions(&node).await.unwrap_or(0.0);
    let rss0 = node.rss_kib();
    assert!(rss0 > 0, "VmRSS readable");

    // 4,000 requests with 12 KB branches: each answered, none kept.
    let raw = RawSip::new(node.sip).await.expect("socket");
    let local = raw.local();
    let big = "b".repeat(12 * 1024);
    let codes = udp_requests(&raw, 4000, 8, |i| {
        options("UDP", local, &format!("{i}{big}"), &format!("big{i}@t"))
    })
    .await;
    assert!(
        codes.iter().all(|c| *c >= 200),
        "every request gets a final answer"
    );
    // Even over UDP, where Timer J keeps an answered non-INVITE transaction
    // for 64*T1 (32 s), everything is released within 40 s.
    eventually(
        "transactions and RSS back to baseline",
        Duration::from_secs(40),
        || async {
            let n = transactions(&node).await;
            let rss = node.rss_kib();
            match n {
                Ok(n) if n <= base && rss < rss0 + RSS_SLACK_KIB => Ok(()),
                _ => Err(format!("transactions {n:?}, RSS {rss0} -> {rss} KiB")),
            }
        },
    )
    .await;
    eprintln!(
        "after 4000 big requests: RSS {rss0} -> {} KiB",
        node.rss_kib()
    );

    // Over TCP Timer J is zero: the transactions end with their answer.
    let mut tcp = tokio::net::TcpStream::connect(node.sip).await.expect("tcp");
    let tlocal = tcp.local_addr().expect("local");
    // In batches of 100 (a client's window, as over UDP): 2,000 requests pipelined at once
    // would measure the node's load shedding on a busy CI machine, not Timer J.
    let mut got = String::new();
    let mut buf = vec![0u8; 65536];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for b in 0..20 {
        let mut batch = String::new();
        for i in b * 100..(b + 1) * 100 {
            batch.push_str(&options(
                "TCP",
                tlocal,
                &format!("tcp{i}"),
                &format!("tcp{i}@t"),
            ));
        }
        tcp.write_all(batch.as_bytes()).await.expect("write");
        while got.matches("SIP/2.0 200 ").count() < (b + 1) * 100 {
            let n = tokio::time::timeout_at(deadline, tcp.read(&mut buf))
                .await
                .expect("2000 answers over TCP in time")
                .expect("read");
            assert!(n > 0, "node closed the TCP connection");
            got.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }
    wait_transactions_at_most(&node, base, Duration::from_secs(5)).await;

    // Over UDP a non-INVITE transaction lives for Timer J (64*T1) and then ends.
    let codes = udp_requests(&raw, 500, 8, |i| {
        options("UDP", local, &format!("j{i}"), &format!("j{i}@t"))
    })
    .await;
    assert!(
        codes.iter().all(|c| *c == 200),
        "small OPTIONS answered 200: {codes:?}"
    );
    let live = transactions(&node).await.expect("gauge");
    assert!(
        live >= base + 500.0,
        "UDP transactions absorb retransmissions until Timer J: {live}"
    );
    wait_transactions_at_most(&node, base, Duration::from_secs(45)).await;

    let rss1 = node.rss_kib();
    eprintln!("at the end: RSS {rss0} -> {rss1} KiB");
    assert!(
        rss1 < rss0 + RSS_SLACK_KIB,
        "RSS grew from {rss0} KiB to {rss1} KiB after the transactions ended"
    );
    assert!(
        !node.log().contains("panicked"),
        "a task panicked:\n{}",
        node.log()
    );
}

#[tokio::test]
async fn txn_table_is_bounded_per_node_and_per_source_with_counted_503() {
    let node = MediaNode::start(
        &config(&["127.0.0.1/32"]),
        &[
            "--rate-limit",
            "0",
            "--max-transactions",
            "120",
            "--max-transactions-per-source",
            "80",
            "--call-handler",
            "logging",
        ],
    )
    .await
    .expect("node starts");
    let a = RawSip::new(node.sip).await.expect("socket");
    let la = a.local();
    let codes = udp_requests(&a, 100, 1, |i| {
        options("UDP", la, &format!("a{i}"), &format!("a{i}@t"))
    })
    .await;
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 80, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 503).count(), 20, "{codes:?}");
    // Another source still has room until the node-wide table is full.
    let b = RawSip {
        sock: tokio::net::UdpSocket::bind("127.0.0.2:0")
            .await
            .expect("127.0.0.2"),
        node: node.sip,
    };
    let lb = b.local();
    let codes = udp_requests(&b, 60, 1, |i| {
        options("UDP", lb, &format!("b{i}"), &format!("b{i}@t"))
    })
    .await;
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 40, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 503).count(), 20, "{codes:?}");
    assert_eq!(transactions(&node).await.expect("gauge"), 120.0);
    assert_eq!(
        node.metric(r#"switchboard_sip_transaction_overload_total{limit="source"}"#)
            .await,
        20.0
    );
    assert_eq!(
        node.metric(r#"switchboard_sip_transaction_overload_total{limit="node"}"#)
            .await,
        20.0
    );
}

#[tokio::test]
async fn txn_invite_reusing_a_live_call_id_never_touches_that_call() {
    let node = MediaNode::start(
        &config(&["127.0.0.1/32"]),
        &["--call-handler", "logging", "--debug-routes"],
    )
    .await
    .expect("node starts");
    let raw = RawSip::new(node.sip).await.expect("socket");
    let local = raw.local();
    let call_id = "collide@test";
    raw.send(invite(local, "z9hG4bKfirst", call_id, "first", 1).as_bytes())
        .await;
    let mut seen = Vec::new();
    let ok = raw
        .recv_until(Duration::from_secs(5), &mut seen, |m| {
            status_of(m) == Some(200)
        })
        .await
        .unwrap_or_else(|| panic!("no 200 for the first call; saw {seen:?}"));
    let to = header_of(&ok, "To").expect("To").to_owned();
    raw.send(in_dialog("ACK", local, "z9hG4bKack1", call_id, "first", &to, 1).as_bytes())
        .await;

    // Same Call-ID, another From tag, another branch; its answer is never ACKed.
    raw.send(invite(local, "z9hG4bKsecond", call_id, "second", 1).as_bytes())
        .await;
    let mut seen = Vec::new();
    let second = raw
        .recv_until(Duration::from_secs(5), &mut seen, |m| {
            status_of(m).is_some_and(|c| c >= 200) && m.contains("branch=z9hG4bKsecond")
        })
        .await
        .unwrap_or_else(|| panic!("no final answer to the colliding INVITE; saw {seen:?}"));
    let code = status_of(&second).unwrap_or(0);
    let second_to = header_of(&second, "To").unwrap_or_default().to_owned();
    assert!(
        matches!(code, 400 | 482) || ((200..300).contains(&code) && second_to != to),
        "the colliding INVITE gets its own answer: {second}"
    );

    // Past the 64*T1 ACK wait of the second answer, the first call must
    // not have been sent a BYE.
    let mut later = Vec::new();
    let bye = raw
        .recv_until(Duration::from_secs(36), &mut later, |m| {
            m.starts_with("BYE ") && m.contains("tag=first")
        })
        .await;
    assert!(bye.is_none(), "the live call was hung up: {bye:?}");
    // A BYE naming the call's Call-ID and our tag but another From tag is
    // not this dialog (RFC 3261 12.2.2): 481, and the call stays up.
    raw.send(in_dialog("BYE", local, "z9hG4bKbyeX", call_id, "intruder", &to, 2).as_bytes())
        .await;
    let mut seen = Vec::new();
    let foreign = raw
        .recv_until(Duration::from_secs(5), &mut seen, |m| {
            m.contains("branch=z9hG4bKbyeX") && status_of(m).is_some_and(|c| c >= 200)
        })
        .await
        .unwrap_or_else(|| panic!("the foreign BYE was not answered; saw {seen:?}"));
    assert_eq!(status_of(&foreign), Some(481), "{foreign}");
    raw.send(in_dialog("BYE", local, "z9hG4bKbye1", call_id, "first", &to, 2).as_bytes())
        .await;
    let mut seen = Vec::new();
    let answer = raw
        .recv_until(Duration::from_secs(5), &mut seen, |m| {
            m.contains("CSeq: 2 BYE")
        })
        .await
        .unwrap_or_else(|| panic!("BYE not answered; saw {seen:?}"));
    assert_eq!(
        status_of(&answer),
        Some(200),
        "the first call was still up: {answer}"
    );
}

/// Counts the final answers with `code` on `raw` for `within`, never ACKing.
async fn count_answers(raw: &RawSip, code: u16, within: Duration) -> (usize, Vec<String>) {
    let mut seen = Vec::new();
    let _ = raw.recv_until(within, &mut seen, |_| false).await;
    (
        seen.iter().filter(|m| status_of(m) == Some(code)).count(),
        seen,
    )
}

#[tokio::test]
async fn txn_403_to_an_unknown_source_is_sent_once() {
    // The carrier sends from 127.0.0.9; we are 127.0.0.1.
    let node = MediaNode::start(&config(&["127.0.0.9/32"]), &["--call-handler", "logging"])
        .await
        .expect("node starts");
    let raw = RawSip::new(node.sip).await.expect("socket");
    let local = raw.local();
    let inv = invite(local, "z9hG4bKacl1", "acl@test", "x", 1);
    raw.send(inv.as_bytes()).await;
    let (n, seen) = count_answers(&raw, 403, Duration::from_secs(5)).await;
    assert_eq!(n, 1, "one 403, no Timer G retransmissions: {seen:?}");
    assert!(seen.len() <= 2, "at most 100 Trying and the 403: {seen:?}");
    // A retransmitted INVITE is answered once more, from the transaction.
    raw.send(inv.as_bytes()).await;
    let (n, seen) = count_answers(&raw, 403, Duration::from_secs(2)).await;
    assert_eq!(n, 1, "{seen:?}");
    assert_eq!(
        node.metric(r#"switchboard_sip_rejected_requests_total{reason="acl"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn txn_401_challenge_is_sent_once() {
    let config = json!({
        "version": "1",
        "trunks": [{"id": "ns/carrier", "enabled": true, "inbound": {"enabled": true, "allowedSources": [],
            "auth": {"realm": "carrier", "credentials": {"username": "alice", "password": "s3cret"}}}}],
        "numbers": [{"id": "ns/main", "e164": "+15550001111", "trunkId": "ns/carrier", "inbound": true}]
    });
    let node = MediaNode::start(&config, &["--call-handler", "logging"])
        .await
        .expect("node starts");
    let raw = RawSip::new(node.sip).await.expect("socket");
    raw.send(invite(raw.local(), "z9hG4bKauth1", "auth@test", "x", 1).as_bytes())
        .await;
    let (n, seen) = count_answers(&raw, 401, Duration::from_secs(5)).await;
    assert_eq!(n, 1, "one 401, no Timer G retransmissions: {seen:?}");
}

#[tokio::test]
async fn txn_unknown_sources_share_one_budget_and_cannot_starve_the_carrier() {
    let node = MediaNode::start(
        &config(&["127.0.0.1/32"]),
        &[
            "--rate-limit-unknown-total",
            "0.001",
            "--rate-burst-unknown-total",
            "5",
            "--call-handler",
            "logging",
        ],
    )
    .await
    .expect("node starts");
    // 20 unknown sources, each far below its own per-source limit.
    let mut socks = Vec::new();
    for i in 0..20u8 {
        let raw = RawSip {
            sock: tokio::net::UdpSocket::bind((std::net::Ipv4Addr::new(127, 0, 1, 10 + i), 0))
                .await
                .expect("bind 127.0.1.x"),
            node: node.sip,
        };
        let local = raw.local();
        raw.send(options("UDP", local, &format!("u{i}"), &format!("u{i}@t")).as_bytes())
            .await;
        socks.push(raw);
    }
    eventually(
        "15 unknown requests dropped",
        Duration::from_secs(5),
        || async {
            let n = node
                .metric(r#"switchboard_sip_dropped_messages_total{reason="unknown_sources_rate"}"#)
                .await;
            if n == 15.0 {
                Ok(())
            } else {
                Err(format!("{n} dropped"))
            }
        },
    )
    .await;
    // The carrier is budgeted apart: all of its requests are answered.
    let carrier = RawSip::new(node.sip).await.expect("socket");
    let local = carrier.local();
    let codes = udp_requests(&carrier, 20, 1, |i| {
        options("UDP", local, &format!("c{i}"), &format!("c{i}@t"))
    })
    .await;
    assert!(codes.iter().all(|c| *c == 200), "{codes:?}");
}
