//! An outbound call through the HTTP call API: SIPp plays the carrier, the
//! demo agent is bridged once the carrier answers, and a webhook receiver
//! gets initiated, ringing, answered and completed in order.

use std::time::Duration;

use crate::api_support::{ApiNode, DemoAgent, TOKEN, WebhookReceiver};
use serde_json::{Value, json};
use switchboard_tests::node::free_port;
use switchboard_tests::sipp::Sipp;

const WAIT: Duration = Duration::from_secs(20);

fn config(gateway_port: u16, agent_url: &str, webhook: &str) -> Value {
    json!({
        "version": "1",
        "trunks": [{
            "id": "demo/carrier", "enabled": true,
            "outbound": {
                "enabled": true,
                "gateways": [{"host": "127.0.0.1", "port": gateway_port, "transport": "TRANSPORT_UDP", "priority": 1, "weight": 1}],
                "auth": {"username": "alice", "password": "carrier-s3cret"},
                "leadingPlus": true,
                "fromDomain": "sb.example",
                "ringingTimeoutSeconds": 15
            }
        }],
        "numbers": [{
            "id": "demo/caller", "e164": "+15550001111", "trunkId": "demo/carrier",
            "inbound": true, "outbound": true,
            "agent": {"url": agent_url, "protocol": "AGENT_PROTOCOL_TWILIO_MEDIA_STREAMS",
                      "parameters": {"persona": "sales"}, "statusWebhook": webhook}
        }]
    })
}

#[tokio::test]
async fn api_outbound_call_is_bridged_and_reports_webhooks_in_order() {
    let hooks = WebhookReceiver::start(0).await;
    let agent = DemoAgent::start().await;
    let gw = free_port();
    let carrier = Sipp::template(
        "uas_answer.xml",
        &[
            ("@RURI_USER@", "\\+15557654321"),
            ("@FROM_DOMAIN@", "sb.example"),
        ],
    )
    .expect("scenario")
    .spawn_server(gw, 1);
    let node = ApiNode::start(&config(gw, &agent.url(), &hooks.url()), &[]).await;

    // A header that could change routing or identity is refused before anything is dialled.
    let (status, resp) = node
        .call(
            "POST",
            "/v1/calls",
            Some(&json!({"from": "+15550001111", "to": "+1 555 765 4321",
                          "headers": {"Authorization": "Digest x"}})),
        )
        .await;
    assert_eq!(status, 400, "{resp}");
    assert_eq!(resp["error"]["field"], "headers.Authorization", "{resp}");

    let (status, resp) = node
        .call(
            "POST",
            "/v1/calls",
            Some(&json!({"from": "+15550001111", "to": "+1 555 765 4321",
                          "agent": {"parameters": {"campaign": "spring"}},
                          "headers": {"X-Campaign-Id": "spring-42", "User-to-User": "00ff;encoding=hex"}})),
        )
        .await;
    assert_eq!(status, 201, "{resp}");
    let id = resp["call"]["id"].as_str().expect("id").to_owned();
    assert!(id.starts_with("CA") && id.len() == 34, "{id}");
    assert_eq!(resp["call"]["direction"], "CALL_DIRECTION_OUTBOUND");
    assert_eq!(resp["call"]["numberId"], "demo/caller");

    let answered = node.wait_state(&id, "CALL_STATE_ANSWERED", WAIT).await;
    assert_eq!(answered["finalCode"], 200, "{answered}");
    assert!(
        answered["sipCallId"]
            .as_str()
            .is_some_and(|s| s.ends_with("@switchboard")),
        "{answered}"
    );
    assert_eq!(answered["agentUrl"], agent.url());

    // Bridged: the agent got the stream start with the call's parameters,
    // including our call id for correlation and the API's extra parameter.
    let log = agent.wait_log("<- start", WAIT).await;
    assert!(log.contains(&id), "agent saw the call id: {log}");
    assert!(
        log.contains("campaign"),
        "override parameter reached the agent: {log}"
    );
    assert!(log.contains("persona"), "number parameter kept: {log}");

    // The live list shows the call.
    let (status, list) = node.call("GET", "/v1/calls", None).await;
    assert_eq!(status, 200);
    assert!(
        list["calls"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["id"] == id)),
        "{list}"
    );

    let (status, resp) = node.call("DELETE", &format!("/v1/calls/{id}"), None).await;
    assert_eq!(status, 202, "{resp}");
    let done = node.wait_state(&id, "CALL_STATE_COMPLETED", WAIT).await;
    assert_eq!(done["reason"], "hung up by the API", "{done}");
    assert_eq!(done["finalCode"], 200);
    assert!(
        done["durationSeconds"].as_f64().is_some_and(|d| d > 0.0),
        "{done}"
    );

    // Hanging up twice is a conflict, an unknown call is 404.
    let (status, resp) = node.call("DELETE", &format!("/v1/calls/{id}"), None).await;
    assert_eq!(status, 409, "{resp}");
    assert_eq!(resp["error"]["code"], "conflict");
    let (status, _) = node.call("GET", "/v1/calls/CA0000", None).await;
    assert_eq!(status, 404);

    let names = hooks.wait_for(&id, 4, WAIT).await;
    assert_eq!(names, ["initiated", "ringing", "answered", "completed"]);
    let completed = hooks
        .events()
        .into_iter()
        .find(|e| e["call"]["id"] == id && e["event"] == "completed")
        .expect("completed event");
    assert_eq!(completed["call"]["finalCode"], 200);
    assert_eq!(completed["call"]["reason"], "hung up by the API");
    assert!(completed["call"]["durationSeconds"].as_f64().is_some());

    let run = carrier.await.expect("join").expect("sipp");
    run.assert_success("carrier answering the API call");
    // The API's headers are on the INVITEs (the challenged one and the authenticated one).
    let invites: Vec<&str> = run.messages.split("INVITE sip:").skip(1).collect();
    assert!(!invites.is_empty(), "{}", run.messages);
    for inv in invites {
        let head = inv.split("\r\n\r\n").next().unwrap_or_default();
        assert!(head.contains("X-Campaign-Id: spring-42"), "{head}");
        assert!(head.contains("User-to-User: 00ff;encoding=hex"), "{head}");
    }
    agent.wait_log("agent-summary", WAIT).await;

    let log = node.node.log();
    for secret in [TOKEN, "carrier-s3cret", "hook-s3cret"] {
        assert!(!log.contains(secret), "{secret} leaked into the node log");
    }
}

#[tokio::test]
async fn api_failed_call_completes_with_the_carriers_code_and_retried_webhooks() {
    // The receiver fails its first two requests: the node must retry.
    let hooks = WebhookReceiver::start(2).await;
    let gw = free_port();
    let carrier = Sipp::template("uas_reject.xml", &[("@CODE@", "486")])
        .expect("scenario")
        .spawn_server(gw, 1);
    let node = ApiNode::start(
        &config(gw, "ws://127.0.0.1:9/agent", &hooks.url()),
        &["--webhook-attempts", "4"],
    )
    .await;
    let id = node
        .dial(json!({"from": "demo/caller", "to": "+15557654321"}))
        .await;
    let done = node.wait_state(&id, "CALL_STATE_COMPLETED", WAIT).await;
    assert_eq!(done["finalCode"], 486, "{done}");
    assert_eq!(done["reason"], "rejected by the carrier", "{done}");
    assert!(done.get("answeredAtMs").is_none(), "never answered: {done}");
    let names = hooks.wait_for(&id, 2, WAIT).await;
    assert_eq!(names, ["initiated", "completed"]);
    assert!(hooks.attempts() >= 4, "two failures, then two deliveries");
    carrier
        .await
        .expect("join")
        .expect("sipp")
        .assert_success("carrier rejecting");
    let log = node.node.log();
    assert!(
        !log.contains("hook-s3cret"),
        "webhook URL secrets never logged"
    );
}
