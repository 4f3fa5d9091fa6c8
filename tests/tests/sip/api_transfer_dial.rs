//! Dial-through transfer (the trunk's `spec.transfer.mode: dial`): the node calls the target
//! through the trunk's gateway (a second SIPp, with its media at a test RTP endpoint), the agent
//! leaves with `stop` when the target answers, and the caller's and the target's RTP are bridged
//! inside the node — byte-exact when both legs use PCMU, transcoded when the target's leg is
//! PCMA. A BYE from either side ends both legs; a busy or unanswered target returns the caller
//! to the agent with the reason.

use std::time::Duration;

use serde_json::{Value, json};
use switchboard_tests::g711::{alaw_to_linear, close, linear_to_alaw, ulaw_to_linear};
use switchboard_tests::node::free_port;
use switchboard_tests::phone::{FRAME, Phone, ulaw_pattern};
use switchboard_tests::sipp::Sipp;

use crate::api_support::{ApiNode, InboundCall, agent_call, agent_steps, local_scenario};

const NUMBER: &str = "15550001111";
const TARGET: &str = "+14155550199";

fn config(agent_url: &str, gateway: u16, caller_id: &str) -> Value {
    json!({
        "version": "1",
        "trunks": [{
            "id": "demo/carrier",
            "enabled": true,
            "inbound": {"enabled": true, "allowedSources": ["127.0.0.1/32"]},
            "outbound": {
                "enabled": true,
                "gateways": [{"host": "127.0.0.1", "port": gateway, "transport": "TRANSPORT_UDP", "priority": 1, "weight": 1}],
                "leadingPlus": true,
                "ringingTimeoutSeconds": 15
            },
            "media": {"codecs": ["CODEC_PCMU", "CODEC_PCMA"]},
            "transfer": {"mode": "TRANSFER_MODE_DIAL", "allowedTargets": ["+1415"], "callerId": caller_id}
        }],
        "numbers": [{
            "id": "demo/support", "e164": "+15550001111", "trunkId": "demo/carrier",
            // Not a caller ID for API calls: the transfer is allowed by the trunk's policy.
            "inbound": true, "outbound": false,
            "agent": {"url": agent_url}
        }]
    })
}

/// The target behind the gateway: answers with its media at `phone` in `codec`, then `after`.
fn target(
    gateway: u16,
    phone: &Phone,
    (pt, codec): (&str, &str),
    from_user: &str,
    must_have: &str,
    after: &str,
) -> (
    tempfile::TempDir,
    tokio::task::JoinHandle<anyhow::Result<switchboard_tests::sipp::SippRun>>,
) {
    let port = phone.port.to_string();
    let (dir, sipp) = local_scenario(
        "uas_transfer_target.xml",
        &[
            ("@RTP_PORT@", &port),
            ("@PT@", pt),
            ("@CODEC@", codec),
            ("@FROM_USER@", from_user),
            ("@MUST_HAVE@", must_have),
            ("@AFTER_ACK@", after),
        ],
    );
    let run = sipp
        .timeout(Duration::from_secs(40))
        .spawn_server(gateway, 1);
    (dir, run)
}

/// The target waits for the node's BYE and answers it.
const WAIT_FOR_BYE: &str = r#"
  <recv request="BYE" timeout="30000"/>
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
"#;

/// The target hangs up after `ms` milliseconds.
fn hang_up_after(ms: u32) -> String {
    format!(
        r#"
  <pause milliseconds="{ms}"/>
  <send retrans="500">
    <![CDATA[
      BYE [$target] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:target@[local_ip]:[local_port]>;tag=[pid]SIPpTag03[call_number]
      To: [$caller]
      [last_Call-ID:]
      CSeq: 2 BYE
      Contact: <sip:target@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
  <recv response="200"/>
"#
    )
}

/// The payloads of `pt` packets a phone received, in arrival order, as one byte stream.
fn stream(phone: &Phone, pt: u8) -> Vec<u8> {
    phone
        .packets()
        .iter()
        .filter(|p| p.pt == pt)
        .flat_map(|p| p.payload.clone())
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Waits until the live call list shows the caller's call transferred.
async fn wait_transfer_state(node: &ApiNode, id: &str, state: &str, within: Duration) -> Value {
    let deadline = std::time::Instant::now() + within;
    loop {
        let c = node.get(id).await;
        if c["transfer"]["state"] == state {
            return c;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "transfer not {state} within {within:?}: {c}\nnode log:\n{}",
            node.node.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn dial_transfer_bridges_the_caller_to_the_target_byte_exact_until_the_target_hangs_up() {
    let gw = free_port();
    let InboundCall {
        agent: _agent,
        node,
        phone: caller,
        sipp: call,
        conn,
        id,
    } = InboundCall::start(
        |url| config(url, gw, ""),
        NUMBER,
        "",
        Duration::from_secs(40),
    )
    .await;
    let callee = Phone::start(0, 0xFF).await;
    // The caller's own number is the caller ID by default.
    let (_dir, target_run) = target(
        gw,
        &callee,
        ("0", "PCMU"),
        r"\+15559990000",
        "X-Transfer-Reason: billing",
        &hang_up_after(6000),
    );

    // Refused before any INVITE leaves the node (the target's scenario takes exactly one,
    // to the allowed number): a target outside allowedTargets, and the other mode.
    let path = format!("/v1/calls/{id}:transfer");
    let (status, resp) = node.post(&path, json!({"target": "+19005550100"})).await;
    assert_eq!(
        (status, resp["error"]["code"].clone()),
        (403, json!("permission_denied")),
        "{resp}"
    );
    let (status, resp) = node
        .post(&path, json!({"target": TARGET, "mode": "refer"}))
        .await;
    assert_eq!(
        (status, resp["error"]["code"].clone()),
        (403, json!("permission_denied")),
        "{resp}"
    );
    let (status, resp) = node
        .post(
            &path,
            json!({"target": TARGET, "mode": "dial", "timeoutSeconds": 20,
                   "headers": {"X-Transfer-Reason": "billing"}}),
        )
        .await;
    assert_eq!(status, 202, "{resp}");

    let c = wait_transfer_state(&node, &id, "succeeded", Duration::from_secs(15)).await;
    assert_eq!(
        c["state"], "CALL_STATE_ANSWERED",
        "the caller's call goes on: {c}"
    );
    assert_eq!(c["transfer"]["target"], TARGET, "{c}");
    // The agent heard the steps, then left with `stop`.
    conn.wait_until("stop", Duration::from_secs(5), |c| {
        !c.events("stop").is_empty()
    })
    .await;
    assert_eq!(
        agent_steps(&conn),
        [
            ("requested".to_owned(), 0),
            ("ringing".to_owned(), 180),
            ("succeeded".to_owned(), 200)
        ]
    );
    // Both legs are live calls on the node (the target's counts against the trunk's limit).
    let (_, list) = node.call("GET", "/v1/calls", None).await;
    let live: Vec<&Value> = list["calls"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|c| c["state"] == "CALL_STATE_ANSWERED")
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(live.len(), 2, "caller's and target's legs: {list}");
    assert!(live.iter().any(|c| c["to"] == TARGET), "{list}");

    // Caller -> target and target -> caller, byte for byte (both legs PCMU).
    let to_target = ulaw_pattern(40, 7);
    caller.send_audio(&to_target);
    let to_caller = ulaw_pattern(40, 99);
    callee.send_audio(&to_caller);
    callee
        .wait_packets(
            "the caller's audio at the target",
            Duration::from_secs(5),
            |_| contains(&stream(&callee, 0), &to_target),
        )
        .await;
    caller
        .wait_packets(
            "the target's audio at the caller",
            Duration::from_secs(5),
            |_| contains(&stream(&caller, 0), &to_caller),
        )
        .await;
    // A key press on the caller's side is regenerated as RFC 4733 events on the target's leg.
    caller.send_dtmf('5');
    callee
        .wait_packets(
            "the caller's DTMF at the target",
            Duration::from_secs(5),
            |p| {
                p.iter()
                    .any(|r| r.pt == 101 && r.payload.first() == Some(&5))
            },
        )
        .await;
    // The agent got none of the bridged audio.
    assert!(
        !contains(&conn.audio(), &to_target[..FRAME * 5]),
        "the agent left before the bridge"
    );

    // The target hangs up: the caller gets a BYE too.
    let done = node
        .wait_state(&id, "CALL_STATE_COMPLETED", Duration::from_secs(20))
        .await;
    assert!(
        done["reason"]
            .as_str()
            .is_some_and(|r| r.contains("transfer target hung up")),
        "{done}"
    );
    target_run
        .await
        .expect("join")
        .expect("sipp")
        .assert_success("the target answered, talked and hung up");
    call.await
        .expect("join")
        .expect("sipp")
        .assert_success("the caller got the node's BYE");
}

#[tokio::test]
async fn dial_transfer_to_a_pcma_target_transcodes_and_ends_when_the_caller_hangs_up() {
    let gw = free_port();
    let agent = switchboard_tests::agent::TestAgent::start()
        .await
        .expect("agent");
    let node = ApiNode::start(&config(&agent.url(), gw, "+15550001111"), &[]).await;
    let caller = Phone::start(0, 0xFF).await;
    let caller_sipp = Sipp::template(
        "media_uac_hangs_up.xml",
        &[
            ("@RTP_PORT@", &caller.port.to_string()),
            ("@PT@", "0"),
            ("@CODEC@", "PCMU"),
            ("@HOLD_MS@", "8000"),
        ],
    )
    .expect("template")
    .args(["-s", NUMBER, "-mp", &free_port().to_string()])
    .timeout(Duration::from_secs(40));
    let sip = node.node.sip;
    let call = tokio::spawn(async move { caller_sipp.run_client(sip, free_port()).await });
    let (conn, id) = agent_call(&agent).await;
    node.wait_state(&id, "CALL_STATE_ANSWERED", Duration::from_secs(5))
        .await;
    let callee = Phone::start(8, 0xD5).await;
    // The trunk's configured caller ID this time.
    let (_dir, target_run) = target(
        gw,
        &callee,
        ("8", "PCMA"),
        r"\+15550001111",
        "INVITE",
        WAIT_FOR_BYE,
    );

    // From the agent's extension event this time.
    conn.send_raw(&format!(
        r#"{{"event":"transfer","transfer":{{"target":"{TARGET}"}}}}"#
    ));
    wait_transfer_state(&node, &id, "succeeded", Duration::from_secs(15)).await;
    conn.wait_until("stop", Duration::from_secs(5), |c| {
        !c.events("stop").is_empty()
    })
    .await;

    // μ-law from the caller reaches the target as the same sound in A-law, and back.
    let to_target = ulaw_pattern(40, 3);
    caller.send_audio(&to_target);
    let expected: Vec<i32> = to_target.iter().map(|&u| ulaw_to_linear(u)).collect();
    // Somewhere in what `got` received (decoded by `decode`), the same sound as `want`.
    let sounds_like = |got: &[u8], decode: fn(u8) -> i32, want: &[i32]| {
        got.windows(want.len())
            .any(|w| w.iter().zip(want).all(|(&g, &e)| close(decode(g), e)))
    };
    callee
        .wait_packets(
            "the caller's audio at the PCMA target",
            Duration::from_secs(5),
            |_| sounds_like(&stream(&callee, 8), alaw_to_linear, &expected),
        )
        .await;
    // The target speaks A-law.
    let to_caller_linear: Vec<i32> = ulaw_pattern(40, 5)
        .iter()
        .map(|&u| ulaw_to_linear(u))
        .collect();
    let alaw: Vec<u8> = to_caller_linear
        .iter()
        .map(|&x| linear_to_alaw(x))
        .collect();
    callee.send_audio(&alaw);
    caller
        .wait_packets(
            "the PCMA target's audio at the caller",
            Duration::from_secs(5),
            |_| sounds_like(&stream(&caller, 0), ulaw_to_linear, &to_caller_linear),
        )
        .await;

    // The caller hangs up: the target gets the node's BYE.
    call.await
        .expect("join")
        .expect("sipp")
        .assert_success("the caller talked to the target and hung up");
    target_run
        .await
        .expect("join")
        .expect("sipp")
        .assert_success("the PCMA target got the node's BYE");
    let done = node
        .wait_state(&id, "CALL_STATE_COMPLETED", Duration::from_secs(10))
        .await;
    assert_eq!(done["transfer"]["state"], "succeeded", "{done}");
}

#[tokio::test]
async fn a_busy_or_unanswered_target_returns_the_caller_to_the_agent_with_the_reason() {
    let gw = free_port();
    let InboundCall {
        agent: _agent,
        node,
        phone: caller,
        sipp: call,
        conn,
        id,
    } = InboundCall::start(
        |url| config(url, gw, ""),
        NUMBER,
        "",
        Duration::from_secs(40),
    )
    .await;
    let path = format!("/v1/calls/{id}:transfer");

    // Busy.
    let busy = Sipp::template("uas_reject.xml", &[("@CODE@", "486")])
        .expect("scenario")
        .timeout(Duration::from_secs(20))
        .spawn_server(gw, 1);
    let (status, resp) = node.post(&path, json!({"target": TARGET})).await;
    assert_eq!(status, 202, "{resp}");
    let c = wait_transfer_state(&node, &id, "failed", Duration::from_secs(15)).await;
    assert_eq!(c["transfer"]["code"], 486, "{c}");
    assert_eq!(c["transfer"]["reason"], "the target is busy", "{c}");
    assert_eq!(c["state"], "CALL_STATE_ANSWERED", "{c}");
    busy.await
        .expect("join")
        .expect("sipp")
        .assert_success("the target was busy");
    let told = conn.events("transfer");
    let last = &told.last().expect("transfer events").json["transfer"];
    assert_eq!(
        (last["status"].clone(), last["code"].clone()),
        (json!("failed"), json!(486)),
        "{last}"
    );

    // No answer within the request's timeout: the ringing attempt is cancelled.
    let ringing = Sipp::new(switchboard_tests::sipp::scenario("uas_ring_no_answer.xml"))
        .timeout(Duration::from_secs(20))
        .spawn_server(gw, 1);
    let (status, resp) = node
        .post(&path, json!({"target": TARGET, "timeoutSeconds": 2}))
        .await;
    assert_eq!(status, 202, "{resp}");
    conn.wait_until("the second failure", Duration::from_secs(15), |c| {
        agent_steps(c).iter().filter(|(s, _)| s == "failed").count() >= 2
    })
    .await;
    let c = node.get(&id).await;
    assert_eq!(c["transfer"]["reason"], "the target did not answer", "{c}");
    assert_eq!(c["state"], "CALL_STATE_ANSWERED", "{c}");
    ringing
        .await
        .expect("join")
        .expect("sipp")
        .assert_success("the target rang, the node cancelled");
    let steps = agent_steps(&conn);
    assert!(steps.contains(&("ringing".to_owned(), 180)), "{steps:?}");
    assert!(
        conn.events("stop").is_empty(),
        "the agent stays on the call"
    );

    // The caller is still with the agent: its audio still reaches it.
    let before = conn.events("media").len();
    caller.send_audio(&[0x11; FRAME * 10]);
    conn.wait_until(
        "caller audio after the failures",
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
        .assert_success("the call went on until the API hung up");
}

#[tokio::test]
async fn a_transfer_waits_for_a_free_channel_no_longer_than_its_timeout() {
    // One channel on the trunk: the caller's call holds it, so the target's leg waits in the
    // trunk's queue (both legs count) and gives up when the transfer's timeout runs out.
    let gw = free_port();
    let InboundCall {
        agent: _agent,
        node,
        phone: _caller,
        sipp: call,
        conn,
        id,
    } = InboundCall::start(
        |url| {
            let mut c = config(url, gw, "");
            c["trunks"][0]["limits"] = json!({"maxConcurrentCalls": 1});
            c["trunks"][0]["share"] = json!({"maxConcurrentCalls": 1});
            c
        },
        NUMBER,
        "",
        Duration::from_secs(40),
    )
    .await;
    let path = format!("/v1/calls/{id}:transfer");
    let (status, resp) = node
        .post(&path, json!({"target": TARGET, "timeoutSeconds": 2}))
        .await;
    assert_eq!(status, 202, "{resp}");
    let c = wait_transfer_state(&node, &id, "failed", Duration::from_secs(10)).await;
    assert!(
        c["transfer"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("channels stayed busy")),
        "{c}"
    );
    assert_eq!(c["state"], "CALL_STATE_ANSWERED", "{c}");
    assert!(
        conn.events("stop").is_empty(),
        "the agent stays on the call"
    );
    let (status, resp) = node
        .post(&format!("/v1/calls/{id}:hangup"), json!({}))
        .await;
    assert_eq!(status, 202, "{resp}");
    call.await
        .expect("join")
        .expect("sipp")
        .assert_success("the call went on until the API hung up");
}
