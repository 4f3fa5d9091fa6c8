//! Graceful drain of the real media-node binary: SIGTERM with calls in progress (they run to
//! their own BYE, then the process exits 0), a short grace period (the node ends what is left
//! with BYE, the callers answer 200), `POST /drain` from loopback (the Helm preStop hook:
//! draining without exiting), and the unauthenticated `/debug/*` routes being off unless `--debug-routes`.
//!
//! Inbound calls are bridged to a real WebSocket test agent (the node connects to the number's
//! agent before answering), and SIPp plays the carrier.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use switchboard_tests::agent::TestAgent;
use switchboard_tests::node::{MediaNode, RawSip, free_port, header_of, status_of};
use switchboard_tests::poll::eventually;
use switchboard_tests::sipp::{Sipp, SippRun};
use tokio::task::JoinHandle;

const NUMBER: &str = "15550001111";
const ACTIVE: &str = r#"switchboard_sip_active_calls{direction="inbound",trunk="demo/carrier"}"#;
const ANSWERED: &str =
    r#"switchboard_sip_calls_total{code="200",direction="inbound",result="answered"}"#;
const DRAINING: &str = "switchboard_draining";

/// One trunk accepting 127.0.0.1, one number answered by `agent_url`.
fn config(agent_url: &str) -> serde_json::Value {
    json!({
        "version": "1",
        "trunks": [{
            "id": "demo/carrier",
            "enabled": true,
            "inbound": {"enabled": true, "allowedSources": ["127.0.0.1/32"]},
            "media": {"codecs": ["CODEC_PCMU", "CODEC_PCMA"], "rtpTimeoutSeconds": 60}
        }],
        "numbers": [{
            "id": "demo/support", "e164": "+15550001111", "trunkId": "demo/carrier",
            "inbound": true, "outbound": true,
            "agent": {"url": agent_url}
        }]
    })
}

/// A caller that hangs up itself after `hold_ms` (and fails on a BYE from the node).
fn long_call(sip: SocketAddr, hold_ms: u64) -> JoinHandle<anyhow::Result<SippRun>> {
    tokio::spawn(async move {
        Sipp::template("uac_long.xml", &[("@HOLD_MS@", &hold_ms.to_string())])?
            .args(["-s", NUMBER])
            .timeout(Duration::from_millis(hold_ms) + Duration::from_secs(30))
            .run_client(sip, free_port())
            .await
    })
}

/// A caller that never hangs up: it waits for the node's BYE and answers 200.
fn waiting_call(sip: SocketAddr) -> JoinHandle<anyhow::Result<SippRun>> {
    tokio::spawn(async move {
        Sipp::new(switchboard_tests::sipp::scenario("drain_uac_wait_bye.xml"))
            .args(["-s", NUMBER])
            .timeout(Duration::from_secs(60))
            .run_client(sip, free_port())
            .await
    })
}

async fn wait_metric(node: &MediaNode, series: &str, want: f64, within: Duration) {
    eventually(&format!("{series} = {want}"), within, || async {
        let v = node.metric(series).await;
        if v == want {
            Ok(())
        } else {
            Err(v.to_string())
        }
    })
    .await;
}

async fn wait_unready(node: &MediaNode) {
    eventually("readiness to fail", Duration::from_secs(5), || async {
        match node.http("GET", "/readyz", None).await {
            Ok((503, body)) if body.contains("draining") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

/// Sends OPTIONS from a raw socket; the response text.
async fn options(sip: SocketAddr) -> String {
    let raw = RawSip::new(sip).await.expect("socket");
    let local = raw.local();
    let branch = format!("z9hG4bKdrain{}", free_port());
    let msg = format!(
        "OPTIONS sip:{sip} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch={branch}\r\n\
         From: <sip:probe@{local}>;tag=d1\r\nTo: <sip:{sip}>\r\nCall-ID: {branch}@drain\r\n\
         CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    raw.send(msg.as_bytes()).await;
    let mut seen = Vec::new();
    raw.recv_until(Duration::from_secs(5), &mut seen, |m| {
        status_of(m).is_some()
    })
    .await
    .expect("OPTIONS answered")
}

/// Everything a draining node must show: readiness false, the gauge, OPTIONS 503 with
/// Retry-After, a new INVITE refused with 503 and Retry-After.
async fn assert_draining(node: &MediaNode) {
    wait_unready(node).await;
    assert_eq!(node.metric(DRAINING).await, 1.0, "switchboard_draining");
    let resp = options(node.sip).await;
    assert_eq!(
        status_of(&resp),
        Some(503),
        "OPTIONS while draining: {resp}"
    );
    assert!(
        header_of(&resp, "Retry-After").is_some(),
        "OPTIONS 503 without Retry-After: {resp}"
    );
    Sipp::new(switchboard_tests::sipp::scenario("drain_uac_503.xml"))
        .args(["-s", NUMBER])
        .run_client(node.sip, free_port())
        .await
        .expect("sipp runs")
        .assert_success("a new INVITE gets 503 with Retry-After while draining");
    assert!(
        node.metric(r#"switchboard_sip_rejected_requests_total{reason="draining"}"#)
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn drain_sigterm_lets_three_calls_end_with_their_bye_then_exits_0() {
    let agent = TestAgent::start().await.expect("agent");
    let mut node = MediaNode::start(&config(&agent.url()), &[])
        .await
        .expect("node starts");
    assert_eq!(node.metric(DRAINING).await, 0.0);
    let resp = options(node.sip).await;
    assert_eq!(
        status_of(&resp),
        Some(200),
        "OPTIONS before the drain: {resp}"
    );

    // Long enough to outlast every check below; the callers hang up themselves.
    let calls: Vec<_> = (0..3).map(|_| long_call(node.sip, 8000)).collect();
    wait_metric(&node, ANSWERED, 3.0, Duration::from_secs(15)).await;
    assert_eq!(node.metric(ACTIVE).await, 3.0);
    assert_eq!(agent.connections(), 3, "each call bridged to the agent");

    node.signal("TERM");
    assert_draining(&node).await;
    // The calls continue: still counted, the process still runs.
    assert_eq!(node.metric(ACTIVE).await, 3.0, "calls in progress kept");
    assert!(node.is_running(), "the node waits for its calls");

    for c in calls {
        c.await
            .expect("join")
            .expect("sipp runs")
            .assert_success("a call in progress runs to the caller's BYE during the drain");
    }
    // Right after its last call the node still answers SIP for a moment: a
    // lost final 200 makes the caller retransmit its BYE, and only a live
    // process answers that (it exited at once before).
    let resp = options(node.sip).await;
    assert_eq!(
        status_of(&resp),
        Some(503),
        "OPTIONS right after the last call: {resp}"
    );
    let Some(status) = node.wait_exit(Duration::from_secs(15)).await else {
        panic!(
            "node exits once the last call ended; calls still counted: {}; log:\n{}",
            node.metric(ACTIVE).await,
            node.log()
        )
    };
    assert!(
        node.log()
            .contains("drained; answering retransmissions before exiting"),
        "{}",
        node.log()
    );
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        node.log()
    );
    assert!(
        !node.log().contains("grace period over"),
        "no call was cut by the grace period"
    );
}

#[tokio::test]
async fn drain_short_grace_ends_remaining_calls_with_bye_then_exits_0() {
    let agent = TestAgent::start().await.expect("agent");
    let mut node = MediaNode::start(&config(&agent.url()), &["--drain-grace-secs", "3"])
        .await
        .expect("node starts");
    let calls: Vec<_> = (0..3).map(|_| waiting_call(node.sip)).collect();
    wait_metric(&node, ANSWERED, 3.0, Duration::from_secs(15)).await;

    node.signal("TERM");
    assert_draining(&node).await;
    assert_eq!(
        node.metric(ACTIVE).await,
        3.0,
        "calls kept during the grace"
    );

    // The grace period ends: the node hangs up each call with BYE; the callers answer 200.
    for c in calls {
        let run = c.await.expect("join").expect("sipp runs");
        run.assert_success("the node's BYE received and answered 200");
        assert!(
            run.messages.contains("BYE sip:"),
            "the caller saw the node's BYE:\n{}",
            run.messages
        );
    }
    let status = node
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("node exits after hanging up");
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        node.log()
    );
    assert!(node.log().contains("grace period over"), "{}", node.log());
}

#[tokio::test]
async fn drain_endpoint_drains_without_exiting() {
    let agent = TestAgent::start().await.expect("agent");
    let mut node = MediaNode::start(&config(&agent.url()), &[])
        .await
        .expect("node starts");
    let call = long_call(node.sip, 4000);
    wait_metric(&node, ANSWERED, 1.0, Duration::from_secs(15)).await;

    let (status, body) = node
        .http("POST", "/drain", None)
        .await
        .expect("POST /drain");
    assert_eq!(status, 200, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).expect("JSON body");
    assert_eq!(body["draining"], true, "{body}");
    assert_eq!(body["active_calls"], 1, "{body}");
    assert_draining(&node).await;

    // The call in progress runs to its end; the node then stays up, draining.
    call.await
        .expect("join")
        .expect("sipp runs")
        .assert_success("the call in progress continues after /drain");
    wait_metric(&node, ACTIVE, 0.0, Duration::from_secs(5)).await;
    assert_draining(&node).await;
    assert!(node.is_running(), "/drain alone never exits the process");
    // A second /drain is harmless.
    let (status, _) = node
        .http("POST", "/drain", None)
        .await
        .expect("POST /drain");
    assert_eq!(status, 200);

    // SIGTERM afterwards: nothing left, so the node exits 0.
    node.signal("TERM");
    let status = node
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("node exits on SIGTERM");
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        node.log()
    );
}

#[tokio::test]
async fn admin_debug_routes_only_with_the_flag() {
    let agent = TestAgent::start().await.expect("agent");
    let cfg = config(&agent.url());
    let dial = json!({"from": "+15550001111", "to": "+15557654321"});
    let off = MediaNode::start(&cfg, &[]).await.expect("node starts");
    for (method, path) in [
        ("POST", "/debug/dial"),
        ("POST", "/debug/hangup"),
        ("GET", "/debug/calls"),
        ("GET", "/debug/registrations"),
        ("GET", "/debug/gateways"),
    ] {
        let body = (method == "POST").then_some(&dial);
        let (status, _) = off.http(method, path, body).await.expect("admin answers");
        assert_eq!(status, 404, "{method} {path} without --debug-routes");
    }
    let on = MediaNode::start(&cfg, &["--debug-routes"])
        .await
        .expect("node starts");
    let (status, body) = on.http("GET", "/debug/calls", None).await.expect("admin");
    assert_eq!((status, body.trim()), (200, "[]"));
}

/// A supervised task that panics (injected through `POST /debug/panic`) makes the node
/// unready within a second and is counted; a restartable one (the gateway health checks)
/// comes back after its back-off and the node is ready again, still answering SIP.
#[tokio::test]
async fn a_panicking_task_makes_the_node_unready_until_it_is_restarted() {
    let agent = TestAgent::start().await.expect("agent");
    let node = MediaNode::start(&config(&agent.url()), &["--debug-routes"])
        .await
        .expect("node starts");
    let (status, body) = node
        .http(
            "POST",
            "/debug/panic",
            Some(&json!({"task": "no-such-task"})),
        )
        .await
        .expect("request");
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains("gateway-health") && body.contains("sip-dispatch"),
        "{body}"
    );
    let (status, _) = node
        .http(
            "POST",
            "/debug/panic",
            Some(&json!({"task": "gateway-health"})),
        )
        .await
        .expect("request");
    assert_eq!(status, 202);
    eventually("readiness false", Duration::from_secs(1), || async {
        match node.http("GET", "/readyz", None).await {
            Ok((503, body)) if body.contains("gateway-health") && body.contains("panicked") => {
                Ok(())
            }
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(
        node.metric(r#"switchboard_task_failures_total{kind="panic",task="gateway-health"}"#)
            .await,
        1.0
    );
    // Restarted after 1 s, ready once it has run 5 s.
    eventually("ready again", Duration::from_secs(15), || async {
        match node.http("GET", "/readyz", None).await {
            Ok((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(status_of(&options(node.sip).await), Some(200));
    assert!(
        node.log().contains("supervised task failed"),
        "{}",
        node.log()
    );
}

/// A critical task (the SIP dispatcher, which owns the transaction layer's event channel)
/// that panics makes the node unready, drain and exit with a failure status, so Kubernetes
/// starts a fresh process.
#[tokio::test]
async fn a_critical_task_panic_drains_and_exits_with_failure() {
    let agent = TestAgent::start().await.expect("agent");
    let mut node = MediaNode::start(&config(&agent.url()), &["--debug-routes"])
        .await
        .expect("node starts");
    let (status, _) = node
        .http(
            "POST",
            "/debug/panic",
            Some(&json!({"task": "sip-dispatch"})),
        )
        .await
        .expect("request");
    assert_eq!(status, 202);
    let exit = node
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("the node exits after its drain");
    assert!(!exit.success(), "exit status {exit}");
    let log = node.log();
    assert!(
        log.contains("a critical task failed") && log.contains("sip-dispatch"),
        "{log}"
    );
}
