//! Outbound pacing through the call API: calls beyond the trunk's
//! concurrent share wait in the trunk's queue and start in order, never more
//! than the share at once; a full queue is refused with 503 (HTTP) and
//! RESOURCE_EXHAUSTED (gRPC).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::api_support::{ApiNode, TOKEN, authed, local_scenario};
use serde_json::{Value, json};
use switchboard_proto::v1alpha1 as pb;
use switchboard_tests::node::free_port;
use switchboard_tests::sipp::Sipp;

fn config(gateway_port: u16, share: u32, cps: f64) -> Value {
    json!({
        "version": "1",
        "trunks": [{
            "id": "demo/carrier", "enabled": true,
            "outbound": {
                "enabled": true,
                "gateways": [{"host": "127.0.0.1", "port": gateway_port, "transport": "TRANSPORT_UDP", "priority": 1, "weight": 1}],
                "leadingPlus": true,
                "fromDomain": "sb.example",
                "ringingTimeoutSeconds": 15
            },
            "limits": {"maxConcurrentCalls": share * 2, "maxCallsPerSecond": 10},
            "share": {"maxConcurrentCalls": share, "maxCallsPerSecond": cps}
        }],
        "numbers": [{
            "id": "demo/caller", "e164": "+15550001111", "trunkId": "demo/carrier",
            "inbound": true, "outbound": true,
            "agent": {"url": "ws://127.0.0.1:9/agent", "protocol": "AGENT_PROTOCOL_TWILIO_MEDIA_STREAMS"}
        }]
    })
}

#[tokio::test]
async fn api_pacing_queues_calls_beyond_the_share_and_starts_them_in_order() {
    const CALLS: usize = 5;
    const SHARE: usize = 2;
    let gw = free_port();
    let (_dir, carrier) = local_scenario("uas_answer_bye.xml", &[("@HOLD_MS@", "700")]);
    let carrier = carrier
        .timeout(Duration::from_secs(60))
        .spawn_server(gw, CALLS as u32);

    // The logging handler: this test is about SIP pacing, not agents.
    let node = ApiNode::start(
        &config(gw, SHARE as u32, 4.0),
        &["--call-handler", "logging"],
    )
    .await;
    let mut grpc = node.grpc().await;
    let mut events = grpc
        .watch_events(authed(pb::WatchEventsRequest {}, TOKEN))
        .await
        .expect("watch events")
        .into_inner();

    let mut ids = Vec::new();
    for _ in 0..CALLS {
        let (status, resp) = node
            .call(
                "POST",
                "/v1/calls",
                Some(&json!({"from": "+15550001111", "to": "+15557654321"})),
            )
            .await;
        assert_eq!(status, 201, "{resp}");
        ids.push(resp["call"]["id"].as_str().expect("id").to_owned());
    }

    // Follow the calls through their events until all completed.
    let mut order: Vec<(String, String)> = Vec::new();
    let mut completed = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while completed.len() < CALLS {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = tokio::time::timeout(left, events.message())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "calls did not complete; events so far {order:?}\nnode log:\n{}",
                    node.node.log()
                )
            })
            .expect("event stream")
            .expect("stream open");
        let call = ev.call.expect("call in event");
        if ev.event == "completed" {
            assert_eq!(call.final_code, 200, "{call:?}");
            completed.insert(call.id.clone());
        }
        order.push((call.id, ev.event));
    }

    // Calls start (ring) in the order they were placed.
    let rang: Vec<&String> = order
        .iter()
        .filter(|(_, e)| e == "ringing")
        .map(|(id, _)| id)
        .collect();
    assert_eq!(rang, ids.iter().collect::<Vec<_>>(), "FIFO order");

    // Never more than the share between ringing and completed.
    let mut running: HashMap<&str, bool> = HashMap::new();
    let mut max = 0;
    for (id, e) in &order {
        match e.as_str() {
            "ringing" => {
                running.insert(id, true);
            }
            "completed" => {
                running.remove(id.as_str());
            }
            _ => {}
        }
        max = max.max(running.len());
    }
    assert!(
        max <= SHARE,
        "{max} calls ran at once with a share of {SHARE}: {order:?}"
    );
    assert_eq!(max, SHARE, "the share was used: {order:?}");

    carrier
        .await
        .expect("join")
        .expect("sipp")
        .assert_success("carrier answering paced calls");
}

#[tokio::test]
async fn api_queue_full_is_refused_and_queued_calls_can_be_hung_up() {
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
    let node = ApiNode::start(
        &config(gw, 1, 0.0),
        &["--call-handler", "logging", "--outbound-queue-size", "2"],
    )
    .await;
    let dial = json!({"from": "+15550001111", "to": "+15557654321"});
    let first = node.dial(dial.clone()).await;
    node.wait_state(&first, "CALL_STATE_ANSWERED", Duration::from_secs(20))
        .await;

    // The share (1) is taken: the next two wait, the queue (2) is full.
    let second = node.dial(dial.clone()).await;
    let third = node.dial(dial.clone()).await;
    for id in [&second, &third] {
        assert_eq!(node.get(id).await["state"], "CALL_STATE_QUEUED");
    }
    let (status, resp) = node.call("POST", "/v1/calls", Some(&dial)).await;
    assert_eq!(status, 503, "{resp}");
    assert_eq!(resp["error"]["code"], "queue_full", "{resp}");
    let mut grpc = node.grpc().await;
    let err = grpc
        .dial(authed(
            pb::DialRequest {
                from: "+15550001111".into(),
                to: "+15557654321".into(),
                ..Default::default()
            },
            TOKEN,
        ))
        .await
        .expect_err("queue full");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");

    // Leaving the queue frees places at once.
    for id in [&third, &second] {
        let (status, resp) = node.call("DELETE", &format!("/v1/calls/{id}"), None).await;
        assert_eq!(status, 202, "{resp}");
        let done = node
            .wait_state(id, "CALL_STATE_COMPLETED", Duration::from_secs(10))
            .await;
        assert_eq!(done["reason"], "hung up by the API before answer", "{done}");
    }
    let fourth = node.dial(dial.clone()).await;
    assert_eq!(node.get(&fourth).await["state"], "CALL_STATE_QUEUED");
    let (status, _) = node
        .call("DELETE", &format!("/v1/calls/{fourth}"), None)
        .await;
    assert_eq!(status, 202);
    node.wait_state(&fourth, "CALL_STATE_COMPLETED", Duration::from_secs(10))
        .await;

    let (status, _) = node
        .call("DELETE", &format!("/v1/calls/{first}"), None)
        .await;
    assert_eq!(status, 202);
    node.wait_state(&first, "CALL_STATE_COMPLETED", Duration::from_secs(20))
        .await;
    carrier
        .await
        .expect("join")
        .expect("sipp")
        .assert_success("carrier with one call");
}
