//! `--media-advertise`: SIP through a load balancer, RTP straight to the
//! node. The SDP answer carries the media address, not the SIP one.

use serde_json::json;
use switchboard_tests::node::{MediaNode, free_port};
use switchboard_tests::sipp::Sipp;

#[tokio::test]
async fn sip_sdp_answer_uses_the_media_advertise_address() {
    let config = json!({
        "version": "1",
        "trunks": [{"id": "demo/t", "enabled": true, "inbound": {"enabled": true, "allowedSources": ["127.0.0.1/32"]}}],
        "numbers": [{"id": "demo/n", "e164": "+15550001111", "trunkId": "demo/t", "inbound": true}]
    });
    let node = MediaNode::start(
        &config,
        &[
            "--advertise",
            "198.51.100.7",
            "--media-advertise",
            "127.0.0.9",
            "--call-handler",
            "logging",
        ],
    )
    .await
    .expect("node starts");
    Sipp::template(
        "uac_call_media_ip.xml",
        &[("@MEDIA_IP@", "127\\.0\\.0\\.9")],
    )
    .expect("template")
    .args(["-s", "+15550001111"])
    .run_client(node.sip, free_port())
    .await
    .expect("sipp")
    .assert_success("SDP answer with c=IN IP4 127.0.0.9");
    // The answered call's set-up time was recorded.
    assert_eq!(
        node.metric(r#"switchboard_sip_setup_seconds_count{direction="inbound"}"#)
            .await,
        1.0
    );
}
