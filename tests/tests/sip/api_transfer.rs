//! Blind transfer by REFER (RFC 3515) of an answered inbound call, from the call API
//! (`POST /v1/calls/{id}:transfer`) and from the agent's `transfer` extension event: a SIPp
//! carrier that accepts the REFER and reports progress by NOTIFY (message/sipfrag), and one
//! that declines it. The trunk's `spec.transfer.allowedTargets` are enforced before any REFER
//! leaves the node.

use std::time::Duration;

use serde_json::{Value, json};

use crate::api_support::{InboundCall, agent_steps};

const NUMBER: &str = "15550001111";

fn config(agent_url: &str) -> Value {
    config_with(agent_url, false)
}

fn config_with(agent_url: &str, no_progress: bool) -> Value {
    json!({
        "version": "1",
        "trunks": [{
            "id": "demo/carrier",
            "enabled": true,
            "inbound": {"enabled": true, "allowedSources": ["127.0.0.1/32"]},
            "media": {"codecs": ["CODEC_PCMU"]},
            "transfer": {"mode": "TRANSFER_MODE_REFER", "allowedTargets": ["+1415"], "noProgress": no_progress}
        }],
        "numbers": [{
            "id": "demo/support", "e164": "+15550001111", "trunkId": "demo/carrier",
            "inbound": true, "outbound": true,
            "agent": {"url": agent_url}
        }]
    })
}

/// The caller's side of a NOTIFY carrying `frag` (a sipfrag status line), in the dialog
/// the REFER came in; `sub` is the Subscription-State.
fn notify(cseq: u32, frag: &str, sub: &str) -> String {
    format!(
        r#"
  <send retrans="500">
    <![CDATA[
      NOTIFY [$contact] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: "sipp" <sip:+15559990000@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To:[$nodefrom]
      Call-ID: [call_id]
      CSeq: {cseq} NOTIFY
      Contact: <sip:sipp@[local_ip]:[local_port]>
      Max-Forwards: 70
      Event: refer
      Subscription-State: {sub}
      Content-Type: message/sipfrag
      Content-Length: [len]

      {frag}
    ]]>
  </send>
  <recv response="200"/>
"#
    )
}

/// Receives the REFER (checking its Refer-To and Referred-By) and answers it `code`.
fn refer_answered(code: &str) -> String {
    refer_answered_with(code, "", "")
}

/// [`refer_answered`], also checking the REFER for `must_have` and adding `extra` headers to
/// the answer.
fn refer_answered_with(code: &str, must_have: &str, extra: &str) -> String {
    let check = if must_have.is_empty() {
        String::new()
    } else {
        format!(r#"<ereg regexp="{must_have}" search_in="msg" check_it="true" assign_to="must"/>"#)
    };
    let reference = if must_have.is_empty() { "" } else { ",must" };
    format!(
        r#"
  <recv request="REFER" timeout="15000">
    <action>
      <ereg regexp="Refer-To: &lt;sip:\+14155550199@127\.0\.0\.1>" search_in="msg" check_it="true" assign_to="referto"/>
      <ereg regexp="Referred-By: " search_in="msg" check_it="true" assign_to="referredby"/>
      <ereg regexp="sip:[^>]*" search_in="hdr" header="Contact:" check_it="true" assign_to="contact"/>
      <ereg regexp=".*" search_in="hdr" header="From:" check_it="true" assign_to="nodefrom"/>
      {check}
    </action>
  </recv>
  <send>
    <![CDATA[
      SIP/2.0 {code} Answer
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      {extra}
      Content-Length: 0
    ]]>
  </send>
  <Reference variables="referto,referredby,contact,nodefrom{reference}"/>
"#
    )
}

#[tokio::test]
async fn api_transfer_by_refer_reports_progress_and_leaves_the_call_when_it_succeeds() {
    let carrier_side = format!(
        "{}{}{}",
        refer_answered_with("202", "X-Ticket: 42", ""),
        notify(2, "SIP/2.0 100 Trying", "active;expires=60"),
        notify(3, "SIP/2.0 200 OK", "terminated;reason=noresource"),
    );
    let InboundCall {
        agent: _agent,
        node,
        phone: _phone,
        sipp: call,
        conn,
        id,
    } = InboundCall::start(config, NUMBER, &carrier_side, Duration::from_secs(30)).await;

    // The toll-fraud guard and the field checks, before anything leaves the node.
    let path = format!("/v1/calls/{id}:transfer");
    let (status, resp) = node.post(&path, json!({"target": "+19005550100"})).await;
    assert_eq!(
        (status, resp["error"]["code"].clone()),
        (403, json!("permission_denied")),
        "{resp}"
    );
    let (status, resp) = node
        .post(&path, json!({"target": "sip:evil@example.com"}))
        .await;
    assert_eq!(
        (status, resp["error"]["field"].clone()),
        (400, json!("target")),
        "{resp}"
    );
    let (status, resp) = node
        .post(
            "/v1/calls/CAnope:transfer",
            json!({"target": "+14155550199"}),
        )
        .await;
    assert_eq!(status, 404, "{resp}");

    let (status, resp) = node
        .post(
            &path,
            json!({"target": "+14155550199", "headers": {"Via": "SIP/2.0/UDP evil"}}),
        )
        .await;
    assert_eq!(
        (status, resp["error"]["field"].clone()),
        (400, json!("headers.Via")),
        "{resp}"
    );
    // Custom headers ride on the REFER.
    let (status, resp) = node
        .post(
            &path,
            json!({"target": "+1 415 555 0199", "headers": {"X-Ticket": "42"}}),
        )
        .await;
    assert_eq!(status, 202, "{resp}");
    let done = node
        .wait_state(&id, "CALL_STATE_COMPLETED", Duration::from_secs(15))
        .await;
    assert_eq!(done["transfer"]["state"], "succeeded", "{done}");
    assert_eq!(done["transfer"]["target"], "+14155550199", "{done}");
    assert_eq!(done["transfer"]["code"], 200, "{done}");
    assert!(
        done["reason"]
            .as_str()
            .is_some_and(|r| r.contains("transferred to +14155550199")),
        "{done}"
    );
    let run = call.await.expect("join").expect("sipp");
    run.assert_success("REFER accepted, NOTIFY 100 then 200, then the node's BYE");
    // The agent heard every step, then `stop`.
    conn.wait_until("stop", Duration::from_secs(5), |c| {
        !c.events("stop").is_empty()
    })
    .await;
    let steps = agent_steps(&conn);
    assert_eq!(
        steps,
        [
            ("requested".to_owned(), 0),
            ("accepted".to_owned(), 202),
            ("accepted".to_owned(), 100),
            ("succeeded".to_owned(), 200)
        ],
        "{steps:?}"
    );
}

#[tokio::test]
async fn a_declined_refer_from_the_agent_keeps_the_caller_with_the_agent() {
    let InboundCall {
        agent: _agent,
        node,
        phone,
        sipp: call,
        conn,
        id,
    } = InboundCall::start(
        config,
        NUMBER,
        &refer_answered("603"),
        Duration::from_secs(30),
    )
    .await;
    // A target the trunk does not allow: refused by the node, no REFER (the carrier's
    // scenario would fail on a second one).
    conn.send_raw(r#"{"event":"transfer","transfer":{"target":"+442071234567"}}"#);
    conn.wait_until("the refusal", Duration::from_secs(5), |c| {
        !agent_steps(c).is_empty()
    })
    .await;
    assert_eq!(agent_steps(&conn), [("failed".to_owned(), 0)]);
    conn.send_raw(r#"{"event":"transfer","transfer":{"target":"+14155550199"}}"#);
    conn.wait_until("the decline", Duration::from_secs(10), |c| {
        agent_steps(c).len() >= 3
    })
    .await;
    let steps = agent_steps(&conn);
    assert_eq!(
        steps[1..],
        [("requested".to_owned(), 0), ("failed".to_owned(), 603)],
        "{steps:?}"
    );
    // The caller is still on the call with the agent, and its audio still flows to it.
    let c = node.get(&id).await;
    assert_eq!(c["state"], "CALL_STATE_ANSWERED", "{c}");
    assert_eq!(c["transfer"]["state"], "failed", "{c}");
    assert_eq!(c["transfer"]["code"], 603, "{c}");
    let before = conn.events("media").len();
    phone.send_audio(&[0x11; 160 * 10]);
    conn.wait_until(
        "caller audio after the decline",
        Duration::from_secs(5),
        |c| c.events("media").len() > before,
    )
    .await;
    let (status, resp) = node
        .post(&format!("/v1/calls/{id}:hangup"), json!({}))
        .await;
    assert_eq!(status, 202, "{resp}");
    call.await
        .expect("join")
        .expect("sipp")
        .assert_success("REFER declined, the call goes on until the API hangs up");
}

#[tokio::test]
async fn a_no_progress_refer_accepted_with_refer_sub_false_counts_as_succeeded() {
    // RFC 4488: the trunk asks for no NOTIFY; the carrier agrees in its 202 and takes the
    // caller, so the node leaves at once.
    let InboundCall {
        agent: _agent,
        node,
        phone: _phone,
        sipp: call,
        conn,
        id,
    } = InboundCall::start(
        |url| config_with(url, true),
        NUMBER,
        &refer_answered_with("202", "Refer-Sub: false", "Refer-Sub: false"),
        Duration::from_secs(30),
    )
    .await;
    let (status, resp) = node
        .post(
            &format!("/v1/calls/{id}:transfer"),
            json!({"target": "+14155550199"}),
        )
        .await;
    assert_eq!(status, 202, "{resp}");
    let done = node
        .wait_state(&id, "CALL_STATE_COMPLETED", Duration::from_secs(15))
        .await;
    assert_eq!(done["transfer"]["state"], "succeeded", "{done}");
    assert_eq!(done["transfer"]["code"], 202, "{done}");
    call.await
        .expect("join")
        .expect("sipp")
        .assert_success("REFER with Refer-Sub: false accepted, then the node's BYE");
    conn.wait_until("stop", Duration::from_secs(5), |c| {
        !c.events("stop").is_empty()
    })
    .await;
    assert_eq!(
        agent_steps(&conn),
        [("requested".to_owned(), 0), ("succeeded".to_owned(), 202)]
    );
}
