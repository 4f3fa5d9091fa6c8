//! Call control from the API on an answered call: DTMF (`POST /v1/calls/{id}:dtmf`, gRPC
//! `SendDtmf`) as RFC 4733 events in the call's RTP or as SIP INFO where the trunk says so,
//! and hang-up with a reason (`POST /v1/calls/{id}:hangup`). Real node, SIPp caller, a real
//! WebSocket agent, the caller's RTP captured by a small endpoint.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard_proto::v1alpha1 as pb;

use crate::api_support::{ApiNode, InboundCall, TOKEN, authed};

const NUMBER: &str = "15550001111";

fn config(agent_url: &str, dtmf: &str) -> Value {
    json!({
        "version": "1",
        "trunks": [{
            "id": "demo/carrier",
            "enabled": true,
            "inbound": {"enabled": true, "allowedSources": ["127.0.0.1/32"]},
            "media": {"codecs": ["CODEC_PCMU"], "dtmf": dtmf}
        }],
        "numbers": [{
            "id": "demo/support", "e164": "+15550001111", "trunkId": "demo/carrier",
            "inbound": true, "outbound": true,
            "agent": {"url": agent_url}
        }]
    })
}

async fn wait_metric(node: &ApiNode, series: &str, value: f64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let v = node.node.metric(series).await;
        if v >= value {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} = {v}, wanted {value}; log:\n{}",
            node.node.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The caller receives an INFO carrying `signal` (application/dtmf-relay) and answers 200;
/// `var` names the SIPp variable its check assigns.
fn expect_info(signal: &str, var: &str) -> String {
    format!(
        r#"
  <recv request="INFO" timeout="15000">
    <action>
      <ereg regexp="Content-Type: application/dtmf-relay" search_in="msg" check_it="true" assign_to="{var}ct"/>
      <ereg regexp="Signal={signal}" search_in="body" check_it="true" assign_to="{var}"/>
    </action>
  </recv>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0
    ]]>
  </send>
  <Reference variables="{var}ct,{var}"/>
"#
    )
}

#[tokio::test]
async fn api_dtmf_goes_out_as_info_on_an_info_trunk_and_hangup_carries_the_reason() {
    let InboundCall {
        agent: _agent,
        node,
        phone,
        sipp: call,
        conn,
        id,
    } = InboundCall::start(
        |url| config(url, "DTMF_MODE_INFO"),
        NUMBER,
        // Two digits from the API, one from the agent's `dtmf` event, in order.
        &[
            expect_info("7", "d1"),
            expect_info("#", "d2"),
            expect_info("5", "d3"),
        ]
        .concat(),
        Duration::from_secs(30),
    )
    .await;

    // Refused before anything reaches the call.
    for (body, field) in [
        (json!({"digits": "7x"}), "digits"),
        (json!({"digits": ""}), "digits"),
        (json!({"digits": "1".repeat(33)}), "digits"),
    ] {
        let (status, resp) = node
            .post(&format!("/v1/calls/{id}:dtmf"), body.clone())
            .await;
        assert_eq!(status, 400, "{body}: {resp}");
        assert_eq!(resp["error"]["field"], field, "{resp}");
    }
    let (status, resp) = node
        .post("/v1/calls/CAnope:dtmf", json!({"digits": "1"}))
        .await;
    assert_eq!(status, 404, "{resp}");
    let (status, resp) = node
        .post(&format!("/v1/calls/{id}:transfer-nowhere"), json!({}))
        .await;
    assert_eq!(status, 404, "{resp}");
    let (status, resp) = node
        .post(
            &format!("/v1/calls/{id}:hangup"),
            json!({"reason": "a\u{7}b"}),
        )
        .await;
    assert_eq!(
        (status, resp["error"]["field"].clone()),
        (400, json!("reason")),
        "{resp}"
    );

    let (status, resp) = node
        .post(&format!("/v1/calls/{id}:dtmf"), json!({"digits": "7#"}))
        .await;
    assert_eq!(status, 202, "{resp}");
    assert_eq!(resp["call"]["id"], id.as_str(), "{resp}");
    wait_metric(
        &node,
        "switchboard_sip_dtmf_info_sent_total",
        2.0,
        Duration::from_secs(5),
    )
    .await;
    // The agent's own digits take the trunk's path too.
    conn.send_raw(r#"{"event":"dtmf","dtmf":{"digits":"5"}}"#);
    wait_metric(
        &node,
        "switchboard_sip_dtmf_info_sent_total",
        3.0,
        Duration::from_secs(5),
    )
    .await;

    let (status, resp) = node
        .post(
            &format!("/v1/calls/{id}:hangup"),
            json!({"reason": "handed to a human"}),
        )
        .await;
    assert_eq!(status, 202, "{resp}");
    let done = node
        .wait_state(&id, "CALL_STATE_COMPLETED", Duration::from_secs(10))
        .await;
    assert_eq!(
        done["reason"], "hung up by the API: handed to a human",
        "{done}"
    );
    let run = call.await.expect("join").expect("sipp");
    run.assert_success("two INFO digits in order, then the node's BYE");
    // No RFC 4733 events: the trunk says INFO.
    assert!(
        phone.packets().iter().all(|p| p.pt != 101),
        "telephone-events sent on an INFO trunk"
    );
    // Over: DTMF now conflicts.
    let (status, resp) = node
        .post(&format!("/v1/calls/{id}:dtmf"), json!({"digits": "1"}))
        .await;
    assert_eq!(status, 409, "{resp}");
}

#[tokio::test]
async fn api_dtmf_goes_out_as_rfc4733_events_over_http_and_grpc() {
    let InboundCall {
        agent: _agent,
        node,
        phone,
        sipp: call,
        conn: _conn,
        id,
    } = InboundCall::start(
        |url| config(url, "DTMF_MODE_BOTH"),
        NUMBER,
        "",
        Duration::from_secs(8),
    )
    .await;
    let (status, resp) = node
        .post(&format!("/v1/calls/{id}:dtmf"), json!({"digits": "9"}))
        .await;
    assert_eq!(status, 202, "{resp}");
    let mut grpc = node.grpc().await;
    grpc.send_dtmf(authed(
        pb::SendDtmfRequest {
            call_id: id.clone(),
            digits: "*a".into(),
        },
        TOKEN,
    ))
    .await
    .expect("SendDtmf");
    let missing = grpc
        .send_dtmf(authed(
            pb::SendDtmfRequest {
                call_id: "CAnope".into(),
                digits: "1".into(),
            },
            TOKEN,
        ))
        .await
        .expect_err("unknown call");
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");
    let bad = grpc
        .send_dtmf(authed(
            pb::SendDtmfRequest {
                call_id: id.clone(),
                digits: "e".into(),
            },
            TOKEN,
        ))
        .await
        .expect_err("bad digit");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");

    // The three digits as events, in order, each ended (the end bit on its last packets).
    phone
        .wait_packets("three events", Duration::from_secs(5), |p| {
            p.iter()
                .filter(|r| r.pt == 101 && r.payload.get(1).is_some_and(|b| b & 0x80 != 0))
                .map(|r| r.ts)
                .collect::<std::collections::BTreeSet<_>>()
                .len()
                >= 3
        })
        .await;
    let mut codes: Vec<u8> = phone
        .packets()
        .iter()
        .filter(|r| r.pt == 101 && r.marker)
        .map(|r| r.payload[0])
        .collect();
    codes.dedup();
    assert_eq!(codes, [9, 10, 12], "9, *, A in order");
    assert_eq!(
        node.node
            .metric("switchboard_sip_dtmf_info_sent_total")
            .await,
        0.0
    );
    let _ = call.await;
}
