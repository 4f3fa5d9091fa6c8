//! Digest authentication of inbound calls (RFC 3261 22, RFC 7616): a trunk
//! with credentials and no allowedSources takes calls from any source that
//! authenticates, and tells an unauthenticated one nothing about numbers.

use serde_json::json;
use switchboard_tests::agent::TestAgent;
use switchboard_tests::node::{MediaNode, free_port};
use switchboard_tests::sipp::Sipp;

const NUMBER: &str = "+14155550100";

async fn node(agent: &TestAgent) -> MediaNode {
    let config = json!({
        "version": "1",
        "trunks": [{
            "id": "ns/carrier",
            "enabled": true,
            "inbound": {
                "enabled": true,
                "allowedSources": [],
                "auth": {"realm": "carrier", "credentials": {"username": "alice", "password": "s3cret"}}
            }
        }],
        "numbers": [{
            "id": "ns/main", "e164": NUMBER, "trunkId": "ns/carrier", "inbound": true,
            "agent": {"url": agent.url(), "protocol": "AGENT_PROTOCOL_TWILIO_MEDIA_STREAMS"}
        }]
    });
    MediaNode::start(&config, &[]).await.expect("node starts")
}

fn auth_scenario(name: &str, password: &str) -> Sipp {
    Sipp::template(name, &[("@USER@", "alice"), ("@PASSWORD@", password)]).expect("template")
}

#[tokio::test]
async fn sip_inbound_digest_challenge_then_the_call_completes() {
    let agent = TestAgent::start().await.expect("agent");
    let node = node(&agent).await;
    auth_scenario("uac_auth.xml", "s3cret")
        .args(["-s", NUMBER])
        .run_client(node.sip, free_port())
        .await
        .expect("sipp")
        .assert_success("challenged call with the right credentials");
    assert!(!node.log().contains("s3cret"), "password in the node log");
}

#[tokio::test]
async fn sip_inbound_digest_wrong_password_is_challenged_again() {
    let agent = TestAgent::start().await.expect("agent");
    let node = node(&agent).await;
    auth_scenario("uac_auth_refused.xml", "wrong")
        .args(["-s", NUMBER])
        .run_client(node.sip, free_port())
        .await
        .expect("sipp")
        .assert_success("wrong credentials are refused with 401");
    assert_eq!(agent.connections(), 0, "no agent was reached");
    assert!(
        node.metric(r#"switchboard_sip_rejected_requests_total{reason="auth_failed"}"#)
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn sip_inbound_unauthenticated_source_learns_nothing_about_numbers() {
    let agent = TestAgent::start().await.expect("agent");
    let node = node(&agent).await;
    // A known and an unknown number get the same answer: a challenge.
    for to in [NUMBER, "+19995550000"] {
        Sipp::template("uac_rejected.xml", &[("@CODE@", "401")])
            .expect("template")
            .args(["-s", to])
            .run_client(node.sip, free_port())
            .await
            .expect("sipp")
            .assert_success(&format!("401 for {to}"));
    }
}
