//! REGISTER against a SIPp registrar that challenges with 401: the node
//! authenticates, and refreshes before the 4 s expiry.

use std::time::Duration;

use serde_json::json;
use switchboard_tests::node::{MediaNode, free_port};
use switchboard_tests::poll::eventually;
use switchboard_tests::sipp::{Sipp, scenario};

#[tokio::test]
async fn sip_register_with_digest_succeeds_and_refreshes() {
    let registrar = free_port();
    let sipp = Sipp::new(scenario("uas_registrar.xml"))
        .timeout(Duration::from_secs(30))
        .spawn_server(registrar, 1);
    let config = json!({
        "version": "1",
        "trunks": [{
            "id": "demo/reg",
            "enabled": true,
            "registerHere": true,
            "outbound": {
                "enabled": true,
                "gateways": [{"host": "127.0.0.1", "port": registrar}],
                "auth": {"username": "alice", "password": "s3cret"},
                "register": {"enabled": true, "expiresSeconds": 60}
            }
        }],
        "numbers": []
    });
    let node = MediaNode::start(&config, &["--debug-routes"])
        .await
        .expect("node starts");
    sipp.await
        .expect("join")
        .expect("sipp")
        .assert_success("registrar: two challenged registrations");
    eventually(
        "two successful registrations reported",
        Duration::from_secs(5),
        || async {
            let (_, body) = node
                .http("GET", "/debug/registrations", None)
                .await
                .map_err(|e| e.to_string())?;
            let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            let r = &v[0];
            if r["state"] == "registered" && r["successes"].as_u64() >= Some(2) && r["expires"] == 4
            {
                Ok(())
            } else {
                Err(body)
            }
        },
    )
    .await;
    assert_eq!(
        node.metric(r#"switchboard_sip_registered{trunk="demo/reg"}"#)
            .await,
        1.0
    );
    assert!(!node.log().contains("s3cret"), "password never logged");
}
