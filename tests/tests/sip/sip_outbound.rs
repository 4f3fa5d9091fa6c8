//! The outbound engine against SIPp acting as the carrier: digest on 407,
//! failover on 503, no failover on 486, fallback trunks. Calls are placed
//! through the node's debug endpoint `POST /debug/dial` (served with `--debug-routes`).

use std::time::Duration;

use serde_json::{Value, json};
use switchboard_tests::node::{MediaNode, free_port};
use switchboard_tests::sipp::{Sipp, SippRun};

fn gateway(port: u16, priority: u32) -> Value {
    json!({"host": "127.0.0.1", "port": port, "transport": "TRANSPORT_UDP", "priority": priority, "weight": 1})
}

/// A primary trunk with `primary` gateways and a backup trunk with
/// `backup` gateways; the caller number falls back from one to the other.
fn config(primary: Vec<Value>, backup: Vec<Value>) -> Value {
    let outbound = |gws: Vec<Value>| {
        json!({
            "enabled": true,
            "gateways": gws,
            "auth": {"username": "alice", "password": "s3cret"},
            "leadingPlus": true,
            "techPrefix": "77",
            "fromDomain": "sb.example",
            "ringingTimeoutSeconds": 20
        })
    };
    json!({
        "version": "1",
        "trunks": [
            {"id": "demo/backup", "enabled": true, "outbound": outbound(backup)},
            {"id": "demo/primary", "enabled": true, "outbound": outbound(primary)}
        ],
        "numbers": [
            {"id": "demo/caller", "e164": "+15550001111", "trunkId": "demo/primary", "fallbackTrunkIds": ["demo/backup"], "inbound": true, "outbound": true}
        ]
    })
}

fn answering_carrier(port: u16) -> tokio::task::JoinHandle<anyhow::Result<SippRun>> {
    Sipp::template(
        "uas_answer.xml",
        &[
            ("@RURI_USER@", "77\\+15557654321"),
            ("@FROM_DOMAIN@", "sb.example"),
        ],
    )
    .expect("template")
    .spawn_server(port, 1)
}

fn rejecting_carrier(port: u16, code: &str) -> tokio::task::JoinHandle<anyhow::Result<SippRun>> {
    Sipp::template("uas_reject.xml", &[("@CODE@", code)])
        .expect("template")
        .spawn_server(port, 1)
}

async fn dial(node: &MediaNode) -> Value {
    let (status, body) = node
        .http(
            "POST",
            "/debug/dial",
            Some(&json!({"number_id": "demo/caller", "to": "+1 555 765 4321"})),
        )
        .await
        .expect("dial request");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("dial outcome JSON")
}

async fn hang_up(node: &MediaNode, outcome: &Value) {
    let call_id = outcome["call_id"].as_str().expect("call_id");
    let (status, _) = node
        .http("POST", "/debug/hangup", Some(&json!({"call_id": call_id})))
        .await
        .expect("hangup");
    assert_eq!(status, 202);
}

#[tokio::test]
async fn sip_outbound_digest_on_407_establishes_the_call() {
    let gw = free_port();
    let carrier = Sipp::new(switchboard_tests::sipp::scenario("uas_auth.xml")).spawn_server(gw, 1);
    let node = MediaNode::start(&config(vec![gateway(gw, 1)], vec![]), &["--debug-routes"])
        .await
        .expect("node starts");
    let outcome = dial(&node).await;
    assert_eq!(outcome["outcome"], "answered", "{outcome}");
    hang_up(&node, &outcome).await;
    let run = carrier.await.expect("join").expect("sipp");
    run.assert_success("carrier challenging with 407");
    // Check the credentials ourselves (RFC 2617 with qop=auth).
    let auth = run
        .messages
        .lines()
        .find_map(|l| l.strip_prefix("Proxy-Authorization: Digest "))
        .unwrap_or_else(|| panic!("no Proxy-Authorization sent:\n{}", run.messages))
        .to_owned();
    let param = |k: &str| {
        auth.split(", ")
            .find_map(|p| p.strip_prefix(&format!("{k}=")))
            .map(|v| v.trim_matches('"').to_owned())
            .unwrap_or_else(|| panic!("{k} missing in {auth}"))
    };
    assert_eq!(param("username"), "alice");
    assert_eq!(param("realm"), "carrier.example");
    assert_eq!(param("opaque"), "op4que");
    let md5 = |s: String| format!("{:x}", md5::Md5::digest(s.as_bytes()));
    use md5::Digest as _;
    let ha1 = md5("alice:carrier.example:s3cret".into());
    let ha2 = md5(format!("INVITE:{}", param("uri")));
    let expected = md5(format!(
        "{ha1}:{}:{}:{}:auth:{ha2}",
        param("nonce"),
        param("nc"),
        param("cnonce")
    ));
    assert_eq!(param("response"), expected, "digest response is correct");
    assert!(!node.log().contains("s3cret"), "password never logged");
}

#[tokio::test]
async fn sip_outbound_fails_over_on_503_to_the_next_gateway() {
    let (g1, g2) = (free_port(), free_port());
    let first = rejecting_carrier(g1, "503");
    let second = answering_carrier(g2);
    let node = MediaNode::start(
        &config(vec![gateway(g2, 2), gateway(g1, 1)], vec![]),
        &["--debug-routes"],
    )
    .await
    .expect("node starts");
    let outcome = dial(&node).await;
    assert_eq!(outcome["outcome"], "answered", "{outcome}");
    assert_eq!(outcome["gateway"], format!("127.0.0.1:{g2}"), "{outcome}");
    assert_eq!(outcome["attempts"][0]["code"], 503, "{outcome}");
    hang_up(&node, &outcome).await;
    first
        .await
        .expect("join")
        .expect("sipp")
        .assert_success("first gateway refusing with 503");
    second
        .await
        .expect("join")
        .expect("sipp")
        .assert_success("second gateway answering (R-URI 77+E.164, From domain)");
}

#[tokio::test]
async fn sip_outbound_486_is_final_no_failover() {
    let (g1, g2) = (free_port(), free_port());
    let first = rejecting_carrier(g1, "486");
    let node = MediaNode::start(
        &config(vec![gateway(g1, 1), gateway(g2, 2)], vec![gateway(g2, 1)]),
        &["--debug-routes"],
    )
    .await
    .expect("node starts");
    let outcome = dial(&node).await;
    assert_eq!(outcome["outcome"], "failed", "{outcome}");
    assert_eq!(outcome["code"], 486, "{outcome}");
    assert_eq!(
        outcome["attempts"].as_array().map(Vec::len),
        Some(1),
        "no other gateway tried: {outcome}"
    );
    first
        .await
        .expect("join")
        .expect("sipp")
        .assert_success("gateway refusing with 486");
    assert_eq!(
        node.metric(
            r#"switchboard_sip_calls_total{code="486",direction="outbound",result="failed"}"#
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn sip_outbound_uses_fallback_trunk_when_every_gateway_failed() {
    let (g1, g2) = (free_port(), free_port());
    let primary = rejecting_carrier(g1, "503");
    let backup = answering_carrier(g2);
    let node = MediaNode::start(
        &config(vec![gateway(g1, 1)], vec![gateway(g2, 1)]),
        &["--debug-routes"],
    )
    .await
    .expect("node starts");
    let outcome = dial(&node).await;
    assert_eq!(outcome["outcome"], "answered", "{outcome}");
    assert_eq!(outcome["trunk_id"], "demo/backup", "{outcome}");
    hang_up(&node, &outcome).await;
    primary
        .await
        .expect("join")
        .expect("sipp")
        .assert_success("primary trunk's gateway refusing");
    backup
        .await
        .expect("join")
        .expect("sipp")
        .assert_success("fallback trunk's gateway answering");
    let _ = Duration::ZERO;
}

#[tokio::test]
async fn sip_outbound_carrier_asking_the_node_to_refresh_gets_refreshes() {
    // The carrier's UPDATE says refresher=uas: the node (the UAS of that UPDATE) must refresh,
    // although it was the UAC of the dialog's INVITE (RFC 4028 4: roles per transaction).
    let gw = free_port();
    let carrier = Sipp::new(switchboard_tests::sipp::scenario(
        "uas_session_timer_update.xml",
    ))
    .spawn_server(gw, 1);
    let node = MediaNode::start(
        &config(vec![gateway(gw, 1)], vec![]),
        &["--debug-routes", "--min-se", "4"],
    )
    .await
    .expect("node starts");
    let outcome = dial(&node).await;
    assert_eq!(outcome["outcome"], "answered", "{outcome}");
    carrier
        .await
        .expect("join")
        .expect("sipp")
        .assert_success("the node refreshes the session the carrier asked it to refresh");
}
