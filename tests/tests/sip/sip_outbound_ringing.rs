//! The ringing timeout: a carrier that rings and never answers gets a CANCEL
//! after trunk.outbound.ringingTimeoutSeconds, and no other gateway is tried.

use std::time::Duration;

use serde_json::json;
use switchboard_tests::node::{MediaNode, free_port};
use switchboard_tests::sipp::{Sipp, scenario};

#[tokio::test]
async fn sip_outbound_ringing_timeout_sends_cancel_without_failover() {
    let (ringing, spare) = (free_port(), free_port());
    let carrier = Sipp::new(scenario("uas_ring_no_answer.xml"))
        .timeout(Duration::from_secs(20))
        .spawn_server(ringing, 1);
    let config = json!({
        "version": "1",
        "trunks": [{
            "id": "demo/t", "enabled": true,
            "outbound": {
                "enabled": true,
                "gateways": [
                    {"host": "127.0.0.1", "port": ringing, "transport": "TRANSPORT_UDP", "priority": 0, "weight": 1},
                    {"host": "127.0.0.1", "port": spare, "transport": "TRANSPORT_UDP", "priority": 1, "weight": 1}
                ],
                "ringingTimeoutSeconds": 1,
                "failover": {"onTimeout": true, "statusCodes": [408, 478], "statusClasses": [5]}
            }
        }],
        "numbers": [{"id": "demo/caller", "e164": "+15550001111", "trunkId": "demo/t", "outbound": true}]
    });
    let node = MediaNode::start(&config, &["--debug-routes"])
        .await
        .expect("node starts");
    // Nothing listens on the spare gateway: trying it would show as a
    // second attempt.
    let (status, body) = node
        .http(
            "POST",
            "/debug/dial",
            Some(&json!({"number_id": "demo/caller", "to": "+15557654321"})),
        )
        .await
        .expect("dial");
    assert_eq!(status, 200, "{body}");
    let outcome: serde_json::Value = serde_json::from_str(&body).expect("outcome");
    carrier
        .await
        .expect("join")
        .expect("sipp")
        .assert_success("carrier saw CANCEL after the ringing timeout");
    let text = outcome.to_string();
    assert!(text.contains("ringing_timeout"), "{text}");
    assert_eq!(
        outcome["attempts"].as_array().map(Vec::len),
        Some(1),
        "no failover after ringing: {text}"
    );
    assert_eq!(outcome["code"], 487);
}
