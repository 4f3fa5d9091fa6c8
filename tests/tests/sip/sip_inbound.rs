//! Inbound calls against the real media-node binary, driven by SIPp and by
//! a raw UDP peer: admission (403/404/486/503), the full call flow,
//! retransmissions, CANCEL, hold/resume and draining.

use std::time::Duration;

use serde_json::json;
use switchboard_tests::node::{MediaNode, RawSip, free_port, header_of, status_of};
use switchboard_tests::poll::eventually;
use switchboard_tests::sipp::{Sipp, scenario};

const NUMBER: &str = "15550001111";

/// One trunk allowing 127.0.0.1, a disabled trunk allowing 127.0.0.3,
/// one number on the first; optional channel share.
fn config(max_calls: Option<u32>) -> serde_json::Value {
    let mut trunk = json!({
        "id": "demo/carrier",
        "enabled": true,
        "inbound": {"enabled": true, "allowedSources": ["127.0.0.1/32", "::1/128"]},
        "media": {"codecs": ["CODEC_PCMU", "CODEC_PCMA"]}
    });
    if let Some(m) = max_calls {
        trunk["limits"] = json!({"maxConcurrentCalls": m});
        trunk["share"] = json!({"maxConcurrentCalls": m});
    }
    json!({
        "version": "7",
        "trunks": [
            trunk,
            {"id": "demo/off", "enabled": false, "inbound": {"enabled": true, "allowedSources": ["127.0.0.3/32"]}}
        ],
        "numbers": [
            {"id": "demo/support", "e164": "+15550001111", "trunkId": "demo/carrier", "fallbackTrunkIds": ["demo/off"], "inbound": true, "outbound": true}
        ]
    })
}

async fn answered_calls(node: &MediaNode) -> usize {
    match node.http("GET", "/debug/calls", None).await {
        Ok((200, body)) => serde_json::from_str::<Vec<serde_json::Value>>(&body)
            .map(|v| v.iter().filter(|c| c["state"] == "answered").count())
            .unwrap_or(0),
        _ => 0,
    }
}

#[tokio::test]
async fn sip_inbound_call_from_allowed_source_completes() {
    let node = MediaNode::start(&config(None), &["--debug-routes"])
        .await
        .expect("node starts");
    let run = Sipp::new(scenario("uac_call.xml"))
        .args(["-s", NUMBER])
        .run_client(node.sip, free_port())
        .await
        .expect("sipp runs");
    run.assert_success("uac_call (100, 180, 200 with PCMU + telephone-event, ACK, BYE, 200)");
    let answered = node
        .metric(r#"switchboard_sip_calls_total{code="200",direction="inbound",result="answered"}"#)
        .await;
    assert_eq!(answered, 1.0, "exactly one answered call counted");
    eventually("the call to be gone", Duration::from_secs(5), || async {
        let (_, body) = node
            .http("GET", "/debug/calls", None)
            .await
            .map_err(|e| e.to_string())?;
        if body.trim() == "[]" {
            Ok(())
        } else {
            Err(body)
        }
    })
    .await;
}

#[tokio::test]
async fn sip_inbound_rejections_403_404() {
    let node = MediaNode::start(&config(None), &[])
        .await
        .expect("node starts");
    // Unknown source (127.0.0.2 is loopback but in no trunk's ACL): 403,
    // for a known and for an unknown number alike.
    for number in [NUMBER, "19999999999"] {
        Sipp::template("uac_rejected.xml", &[("@CODE@", "403")])
            .expect("template")
            .args(["-s", number])
            .run_client_from(node.sip, "127.0.0.2", free_port())
            .await
            .expect("sipp runs")
            .assert_success("403 for an unknown source");
    }
    // A source whose only trunk is disabled: 403.
    Sipp::template("uac_rejected.xml", &[("@CODE@", "403")])
        .expect("template")
        .args(["-s", NUMBER])
        .run_client_from(node.sip, "127.0.0.3", free_port())
        .await
        .expect("sipp runs")
        .assert_success("403 for a disabled trunk");
    // Allowed source, unknown number: 404.
    Sipp::template("uac_rejected.xml", &[("@CODE@", "404")])
        .expect("template")
        .args(["-s", "19999999999"])
        .run_client(node.sip, free_port())
        .await
        .expect("sipp runs")
        .assert_success("404 for an unknown number");
    assert_eq!(
        node.metric(r#"switchboard_sip_rejected_requests_total{reason="acl"}"#)
            .await,
        2.0
    );
    assert_eq!(
        node.metric(r#"switchboard_sip_rejected_requests_total{reason="not_found"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn sip_inbound_over_channel_share_gets_486() {
    let node = MediaNode::start(&config(Some(1)), &["--debug-routes"])
        .await
        .expect("node starts");
    let sip = node.sip;
    let first = tokio::spawn(async move {
        Sipp::template("uac_long.xml", &[("@HOLD_MS@", "3000")])
            .expect("template")
            .args(["-s", NUMBER])
            .run_client(sip, free_port())
            .await
    });
    eventually(
        "the first call to be answered",
        Duration::from_secs(10),
        || async {
            if answered_calls(&node).await == 1 {
                Ok(())
            } else {
                Err("not yet".into())
            }
        },
    )
    .await;
    Sipp::template("uac_rejected.xml", &[("@CODE@", "486")])
        .expect("template")
        .args(["-s", NUMBER])
        .run_client(node.sip, free_port())
        .await
        .expect("sipp runs")
        .assert_success("486 over the channel share");
    first
        .await
        .expect("join")
        .expect("sipp runs")
        .assert_success("first call unaffected");
}

#[tokio::test]
async fn sip_inbound_cancel_before_answer_gets_487() {
    let node = MediaNode::start(&config(None), &["--answer-delay-ms", "10000"])
        .await
        .expect("node starts");
    Sipp::new(scenario("uac_cancel.xml"))
        .args(["-s", NUMBER])
        .run_client(node.sip, free_port())
        .await
        .expect("sipp runs")
        .assert_success("CANCEL while ringing: 200 then 487");
    assert_eq!(
        node.metric(
            r#"switchboard_sip_calls_total{code="487",direction="inbound",result="cancelled"}"#
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn sip_inbound_hold_and_resume_reinvite() {
    let node = MediaNode::start(&config(None), &[])
        .await
        .expect("node starts");
    Sipp::new(scenario("uac_hold.xml"))
        .args(["-s", NUMBER])
        .run_client(node.sip, free_port())
        .await
        .expect("sipp runs")
        .assert_success("hold (sendonly->recvonly), inactive, resume (sendrecv), BYE");
}

fn invite(
    local: std::net::SocketAddr,
    node: std::net::SocketAddr,
    branch: &str,
    call_id: &str,
) -> String {
    let sdp = format!(
        "v=0\r\no=raw 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n",
        local.port() + 2
    );
    format!(
        "INVITE sip:+{NUMBER}@{node} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch={branch}\r\nFrom: <sip:raw@{local}>;tag=rawtag\r\n\
         To: <sip:+{NUMBER}@{node}>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:raw@{local}>\r\nMax-Forwards: 70\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
}

#[tokio::test]
async fn sip_inbound_retransmitted_invite_and_bye_handled_once() {
    let node = MediaNode::start(&config(None), &["--debug-routes"])
        .await
        .expect("node starts");
    let raw = RawSip::new(node.sip).await.expect("socket");
    let local = raw.local();
    let inv = invite(local, node.sip, "z9hG4bKretrans1", "retrans-call@test");
    raw.send(inv.as_bytes()).await;
    raw.send(inv.as_bytes()).await;
    let mut seen = Vec::new();
    let ok = raw
        .recv_until(Duration::from_secs(5), &mut seen, |m| {
            status_of(m) == Some(200)
        })
        .await
        .unwrap_or_else(|| panic!("no 200; saw {seen:?}"));
    let to = header_of(&ok, "To").expect("To in 200").to_owned();
    assert!(to.contains("tag="), "200 carries our tag: {to}");
    assert!(
        ok.contains("a=rtpmap:8 PCMA/8000"),
        "PCMA chosen as the only offered codec: {ok}"
    );
    // A retransmission after the 200 is absorbed, not a second call.
    raw.send(inv.as_bytes()).await;
    let ack = format!(
        "ACK sip:+{NUMBER}@{} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKack1\r\nFrom: <sip:raw@{local}>;tag=rawtag\r\nTo: {to}\r\n\
         Call-ID: retrans-call@test\r\nCSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        node.sip
    );
    raw.send(ack.as_bytes()).await;
    eventually("one answered call", Duration::from_secs(5), || async {
        match answered_calls(&node).await {
            1 => Ok(()),
            n => Err(format!("{n} answered calls")),
        }
    })
    .await;
    let bye = format!(
        "BYE sip:+{NUMBER}@{} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKbye1\r\nFrom: <sip:raw@{local}>;tag=rawtag\r\nTo: {to}\r\n\
         Call-ID: retrans-call@test\r\nCSeq: 2 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        node.sip
    );
    raw.send(bye.as_bytes()).await;
    let mut seen = Vec::new();
    raw.recv_until(Duration::from_secs(5), &mut seen, |m| {
        status_of(m) == Some(200) && m.contains("BYE")
    })
    .await
    .unwrap_or_else(|| panic!("no 200 to BYE; saw {seen:?}"));
    raw.send(bye.as_bytes()).await;
    let mut seen2 = Vec::new();
    let again = raw
        .recv_until(Duration::from_secs(5), &mut seen2, |m| {
            m.contains("CSeq: 2 BYE")
        })
        .await
        .unwrap_or_else(|| panic!("retransmitted BYE not answered; saw {seen2:?}"));
    assert_eq!(
        status_of(&again),
        Some(200),
        "retransmitted BYE gets the same 200, not 481: {again}"
    );
    assert_eq!(
        node.metric(
            r#"switchboard_sip_calls_total{code="200",direction="inbound",result="answered"}"#
        )
        .await,
        1.0
    );
    let invite_200s = seen
        .iter()
        .chain(seen2.iter())
        .filter(|m| status_of(m) == Some(200) && m.contains("INVITE"))
        .count();
    let _ = invite_200s; // 2xx retransmissions are allowed until the ACK is seen.
}

#[tokio::test]
async fn sip_inbound_draining_answers_503_and_exits_after_last_call() {
    let mut node = MediaNode::start(&config(None), &["--debug-routes"])
        .await
        .expect("node starts");
    let sip = node.sip;
    let call = tokio::spawn(async move {
        Sipp::template("uac_long.xml", &[("@HOLD_MS@", "4000")])
            .expect("template")
            .args(["-s", NUMBER])
            .run_client(sip, free_port())
            .await
    });
    eventually(
        "the call to be answered",
        Duration::from_secs(10),
        || async {
            if answered_calls(&node).await == 1 {
                Ok(())
            } else {
                Err("not yet".into())
            }
        },
    )
    .await;
    node.signal("TERM");
    eventually("readiness to drop", Duration::from_secs(5), || async {
        match node.http("GET", "/readyz", None).await {
            Ok((503, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    Sipp::template("uac_rejected.xml", &[("@CODE@", "503")])
        .expect("template")
        .args(["-s", NUMBER])
        .run_client(node.sip, free_port())
        .await
        .expect("sipp runs")
        .assert_success("503 while draining");
    // OPTIONS reports draining too, with Retry-After.
    let raw = RawSip::new(node.sip).await.expect("socket");
    let local = raw.local();
    let options = format!(
        "OPTIONS sip:{} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKopt1\r\nFrom: <sip:raw@{local}>;tag=o1\r\nTo: <sip:{}>\r\n\
         Call-ID: opt@test\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        node.sip, node.sip
    );
    raw.send(options.as_bytes()).await;
    let mut seen = Vec::new();
    let resp = raw
        .recv_until(Duration::from_secs(5), &mut seen, |m| {
            status_of(m).is_some()
        })
        .await
        .expect("OPTIONS answered");
    assert_eq!(status_of(&resp), Some(503), "{resp}");
    assert!(header_of(&resp, "Retry-After").is_some(), "{resp}");
    call.await
        .expect("join")
        .expect("sipp runs")
        .assert_success("the call in progress completes during the drain");
    let status = node
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("node exits once the last call ended");
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn sip_inbound_session_timer_refreshed_by_the_node() {
    // A small Min-SE lets the test see a refresh within seconds.
    let node = MediaNode::start(&config(None), &["--min-se", "4"])
        .await
        .expect("node starts");
    Sipp::new(scenario("uac_session_timer.xml"))
        .args(["-s", NUMBER])
        .run_client(node.sip, free_port())
        .await
        .expect("sipp runs")
        .assert_success("Session-Expires 4;refresher=uas honoured with an UPDATE refresh");
}

#[tokio::test]
async fn sip_inbound_call_over_tcp() {
    let node = MediaNode::start(&config(None), &[])
        .await
        .expect("node starts");
    Sipp::new(scenario("uac_call.xml"))
        .args(["-s", NUMBER, "-t", "t1"])
        .run_client(node.sip, free_port())
        .await
        .expect("sipp runs")
        .assert_success("call over one reused TCP connection");
}

#[tokio::test]
async fn sip_inbound_call_over_ipv6() {
    let port = free_port();
    let bind = format!("[::1]:{port}");
    let node = MediaNode::start(&config(None), &["--sip-bind", &bind])
        .await
        .expect("node starts");
    Sipp::new(scenario("uac_call.xml"))
        .args(["-s", NUMBER])
        .run_client_from(bind.parse().expect("addr"), "::1", free_port())
        .await
        .expect("sipp runs")
        .assert_success("call over IPv6 loopback");
    let answered = node
        .metric(r#"switchboard_sip_calls_total{code="200",direction="inbound",result="answered"}"#)
        .await;
    assert_eq!(answered, 1.0);
}
