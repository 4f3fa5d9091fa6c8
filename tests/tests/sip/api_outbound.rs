//! An outbound call through the HTTP call API: SIPp plays the carrier, the
//! demo agent is bridged once the carrier answers, and a webhook receiver
//! gets initiated, ringing, answered and completed in order.

use std::time::Duration;

use crate::api_support::{ApiNode, DemoAgent, TOKEN, WebhookReceiver, authed};
use serde_json::{Value, json};
use switchboard_proto::v1alpha1 as pb;
use switchboard_proto::v1alpha1::call_service_client::CallServiceClient;
use switchboard_tests::node::{MediaNode, free_port};
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

/// The control channel's token in these tests (not the API's).
const CONTROL_TOKEN: &str = "test-control-token-9c1e";

/// `--control-bind` on a free port with [`CONTROL_TOKEN`] (plaintext), the token file in `dir`.
fn control_args(dir: &tempfile::TempDir) -> (std::net::SocketAddr, Vec<String>) {
    let file = dir.path().join("control-token");
    std::fs::write(&file, format!("{CONTROL_TOKEN}\n")).expect("token file");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let args = vec![
        "--control-bind".to_string(),
        addr.to_string(),
        "--control-insecure".to_string(),
        "--control-token-file".to_string(),
        file.display().to_string(),
    ];
    (addr, args)
}

/// A CallService client on the control port (it starts listening shortly after the node).
async fn control_calls(addr: std::net::SocketAddr) -> CallServiceClient<tonic::transport::Channel> {
    let endpoint =
        tonic::transport::Endpoint::from_shared(format!("http://{addr}")).expect("endpoint");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match endpoint.connect().await {
            Ok(ch) => return CallServiceClient::new(ch),
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("control port {addr}: {e}"),
        }
    }
}

#[tokio::test]
async fn control_port_dial_with_a_client_ref_places_one_call() {
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
    let dir = tempfile::tempdir().expect("dir");
    let (control, args) = control_args(&dir);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let node = ApiNode::start(&config(gw, &agent.url(), ""), &refs).await;
    let mut calls = control_calls(control).await;

    // The control port's CallService wants the control token, not none and not the API's.
    for token in [None, Some(TOKEN)] {
        let req = pb::ListCallsRequest::default();
        let r = match token {
            Some(t) => calls.list(authed(req, t)).await,
            None => calls.list(req).await,
        };
        let code = r.expect_err("refused").code();
        assert_eq!(code, tonic::Code::Unauthenticated, "token {token:?}");
    }

    let key = "demo/spring/+15557654321/1";
    let dial = || pb::DialRequest {
        from: "+15550001111".into(),
        to: "+15557654321".into(),
        client_ref: key.into(),
        ..Default::default()
    };
    let first = calls
        .dial(authed(dial(), CONTROL_TOKEN))
        .await
        .expect("dial")
        .into_inner()
        .call
        .expect("call");
    assert_eq!(first.client_ref, key);
    let again = calls
        .dial(authed(dial(), CONTROL_TOKEN))
        .await
        .expect("dial again")
        .into_inner()
        .call
        .expect("call");
    assert_eq!(again.id, first.id, "the same key answers the same call");
    // The API port serves the same calls: the key is known there too.
    let (status, resp) = node
        .call(
            "POST",
            "/v1/calls",
            Some(&json!({"from": "+15550001111", "to": "+15557654321", "clientRef": key})),
        )
        .await;
    assert_eq!(status, 201, "{resp}");
    assert_eq!(resp["call"]["id"], first.id.as_str(), "{resp}");

    node.wait_state(&first.id, "CALL_STATE_ANSWERED", WAIT)
        .await;
    let list = |prefix: &str| {
        let mut calls = calls.clone();
        let req = pb::ListCallsRequest {
            client_ref_prefix: prefix.into(),
        };
        async move {
            calls
                .list(authed(req, CONTROL_TOKEN))
                .await
                .expect("list")
                .into_inner()
                .calls
        }
    };
    let spring = list("demo/spring/").await;
    assert_eq!(spring.len(), 1, "{spring:?}");
    assert_eq!(spring[0].id, first.id);
    assert_eq!(spring[0].client_ref, key);
    assert!(list("demo/summer/").await.is_empty());
    assert_eq!(list("").await.len(), 1);
    let (status, body) = node
        .call("GET", "/v1/calls?clientRefPrefix=demo%2Fspring%2F", None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["calls"][0]["clientRef"], key, "{body}");
    let (_, body) = node
        .call("GET", "/v1/calls?clientRefPrefix=demo%2Fsummer%2F", None)
        .await;
    assert!(body.get("calls").is_none(), "{body}");

    calls
        .hangup(authed(
            pb::HangupRequest {
                call_id: first.id.clone(),
                reason: String::new(),
            },
            CONTROL_TOKEN,
        ))
        .await
        .expect("hangup");
    node.wait_state(&first.id, "CALL_STATE_COMPLETED", WAIT)
        .await;
    // Completed and retained: a retry with the key still answers that call, places nothing.
    let retry = calls
        .dial(authed(dial(), CONTROL_TOKEN))
        .await
        .expect("retry")
        .into_inner()
        .call
        .expect("call");
    assert_eq!(retry.id, first.id);
    assert_eq!(retry.state(), pb::CallState::Completed);

    let run = carrier.await.expect("join").expect("sipp");
    run.assert_success("carrier answering the one call");
    let mut call_ids: Vec<&str> = run
        .messages
        .split("INVITE sip:")
        .skip(1)
        .filter_map(|inv| {
            inv.lines()
                .find_map(|l| l.strip_prefix("Call-ID:").map(str::trim))
        })
        .collect();
    call_ids.sort_unstable();
    call_ids.dedup();
    assert_eq!(call_ids.len(), 1, "one INVITE dialog: {}", run.messages);
    agent.wait_log("agent-summary", WAIT).await;
}

#[tokio::test]
async fn control_port_serves_calls_without_the_api_port() {
    let dir = tempfile::tempdir().expect("dir");
    let (control, args) = control_args(&dir);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let node = MediaNode::start(&config(free_port(), "ws://127.0.0.1:9/agent", ""), &refs)
        .await
        .expect("node starts");
    let mut calls = control_calls(control).await;
    let list = calls
        .list(authed(pb::ListCallsRequest::default(), CONTROL_TOKEN))
        .await
        .expect("list without --api-bind")
        .into_inner();
    assert!(list.calls.is_empty());
    let bad = calls
        .dial(authed(
            pb::DialRequest {
                from: "+15550001111".into(),
                to: "+15557654321".into(),
                client_ref: "has space".into(),
                ..Default::default()
            },
            CONTROL_TOKEN,
        ))
        .await
        .expect_err("bad key");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().starts_with("clientRef:"), "{}", bad.message());
    drop(node);
}
