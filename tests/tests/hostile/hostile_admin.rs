//! The admin port against hostile tenants and peers, on the real media-node binary (issue 10,
//! item 8): an agent URL naming the node's own `/drain` is refused by the egress guard (the
//! call gets 503, the node keeps taking calls); `/drain` is POST only and needs the pod's own
//! loopback (127.0.0.1/::1) or the admin token; `--debug-routes` needs a loopback admin port.
//!
//! "Another address" is 127.0.0.3: the admin port listens on 127.0.0.2 and the test binds its
//! client socket to 127.0.0.3, which the node must not treat as its own loopback. Everything
//! stays on 127.0.0.0/8.

use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;
use switchboard_tests::node::{MediaNode, StartOptions, binary, free_port};
use switchboard_tests::poll::eventually;
use switchboard_tests::sipp::Sipp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NUMBER: &str = "15550002222";
const DRAINING: &str = "switchboard_draining";
const TOKEN: &str = "admin-t0ken-for-tests";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

/// One trunk accepting 127.0.0.1, one number answered by `agent_url`.
fn config(agent_url: &str) -> serde_json::Value {
    json!({
        "version": "1",
        "trunks": [{
            "id": "tenant/carrier",
            "enabled": true,
            "inbound": {"enabled": true, "allowedSources": ["127.0.0.1/32"]},
            "media": {"codecs": ["CODEC_PCMU", "CODEC_PCMA"], "rtpTimeoutSeconds": 60}
        }],
        "numbers": [{
            "id": "tenant/line", "e164": "+15550002222", "trunkId": "tenant/carrier",
            "inbound": true, "outbound": true,
            "agent": {"url": agent_url}
        }]
    })
}

/// One HTTP/1.1 request from a socket bound to `from` (status, body), bounded in time.
async fn request_from(
    from: IpAddr,
    to: SocketAddr,
    method: &str,
    token: Option<&str>,
) -> (u16, String) {
    let fut = async {
        let sock = tokio::net::TcpSocket::new_v4()?;
        sock.bind(SocketAddr::new(from, 0))?;
        let mut s = sock.connect(to).await?;
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "{method} /drain HTTP/1.1\r\nHost: {to}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        anyhow::Ok(String::from_utf8_lossy(&out).into_owned())
    };
    let text = tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .expect("admin answers in time")
        .expect("HTTP exchange");
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_owned())
}

/// Readiness 200 and the draining gauge at 0.
async fn assert_not_draining(node: &MediaNode, after: &str) {
    let (status, body) = node.http("GET", "/readyz", None).await.expect("readyz");
    assert_eq!((status, body.as_str()), (200, "ready"), "after {after}");
    assert_eq!(node.metric(DRAINING).await, 0.0, "draining after {after}");
}

async fn wait_draining(node: &MediaNode) {
    eventually("the node to drain", Duration::from_secs(5), || async {
        match node.http("GET", "/readyz", None).await {
            Ok((503, b)) if b.contains("draining") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(node.metric(DRAINING).await, 1.0);
}

async fn start(token: bool, extra: &[&str]) -> (MediaNode, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token file");
    let token_path = token_file.to_string_lossy().into_owned();
    let mut args: Vec<&str> = extra.to_vec();
    if token {
        args.extend(["--admin-token-file", token_path.as_str()]);
    }
    let node = MediaNode::start_with(
        &config("ws://127.0.0.1:9/unused"),
        &args,
        StartOptions {
            http_ip: ip("127.0.0.2"),
            ..StartOptions::default()
        },
    )
    .await
    .expect("node starts");
    (node, dir)
}

#[tokio::test]
async fn an_agent_url_naming_the_admin_port_is_refused_and_the_node_keeps_serving() {
    let admin = free_port();
    // The tenant's URL carries a token-like query: the refusal log must not show it.
    let url = format!("ws://127.0.0.1:{admin}/drain?token=TENANT-SECRET");
    let node = MediaNode::start_with(
        &config(&url),
        &[],
        StartOptions {
            loopback_egress: false,
            http_port: Some(admin),
            ..StartOptions::default()
        },
    )
    .await
    .expect("node starts");
    assert_eq!(node.http.port(), admin);

    for attempt in 1..=2 {
        Sipp::template("media_uac_rejected.xml", &[("@CODE@", "503")])
            .expect("template")
            .args(["-s", NUMBER, "-mp", &free_port().to_string()])
            .run_client(node.sip, free_port())
            .await
            .expect("sipp runs")
            .assert_success("503 for an agent URL the egress guard refuses");
        // The node did not drain itself: it still takes calls.
        assert_not_draining(&node, &format!("call {attempt}")).await;
    }
    assert_eq!(
        node.metric(r#"switchboard_sip_rejected_requests_total{reason="agent_url_refused"}"#)
            .await,
        2.0
    );
    assert_eq!(
        node.metric(r#"switchboard_call_end_reasons_total{reason="agent_url_refused"}"#)
            .await,
        2.0
    );
    assert_eq!(
        node.metric(r#"switchboard_agent_connect_failures_total{reason="refused"}"#)
            .await,
        2.0
    );
    let log = node.log();
    let line = log
        .lines()
        .find(|l| l.contains("refused by the egress guard"))
        .unwrap_or_else(|| panic!("no refusal logged:\n{log}"));
    assert!(
        line.contains(&format!("ws://127.0.0.1:{admin}")) && line.contains("loopback"),
        "the log names the receiver and the rule: {line}"
    );
    assert!(
        !line.contains("TENANT-SECRET") && !line.contains("/drain"),
        "only scheme://host:port is logged: {line}"
    );
}

#[tokio::test]
async fn drain_is_post_only_from_loopback_or_with_the_admin_token() {
    let (node, _dir) = start(true, &[]).await;
    let near = ip("127.0.0.1");
    let far = ip("127.0.0.3");

    let (status, _) = request_from(near, node.http, "GET", None).await;
    assert_eq!(status, 405, "GET /drain");
    assert_not_draining(&node, "GET /drain").await;

    let (status, body) = request_from(far, node.http, "POST", None).await;
    assert_eq!(status, 401, "POST without a token from 127.0.0.3: {body}");
    assert_not_draining(&node, "POST without a token").await;

    let (status, body) = request_from(far, node.http, "POST", Some("not-the-token")).await;
    assert_eq!(status, 403, "POST with a wrong token: {body}");
    assert!(!body.contains("not-the-token"), "never echoed: {body}");
    assert_not_draining(&node, "POST with a wrong token").await;
    let log = node.log();
    assert!(
        log.contains("drain request refused") && !log.contains("not-the-token"),
        "refusals are logged without the token:\n{log}"
    );

    // The preStop hook runs inside the pod: 127.0.0.1 needs no token.
    let (status, body) = request_from(near, node.http, "POST", None).await;
    assert_eq!(status, 200, "POST from 127.0.0.1: {body}");
    let body: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(body["draining"], true);
    wait_draining(&node).await;
}

#[tokio::test]
async fn drain_with_the_admin_token_works_from_another_address() {
    let (node, _dir) = start(true, &[]).await;
    let (status, body) = request_from(ip("127.0.0.3"), node.http, "POST", Some(TOKEN)).await;
    assert_eq!(status, 200, "POST with the token: {body}");
    wait_draining(&node).await;
}

#[tokio::test]
async fn without_a_token_file_only_loopback_can_drain() {
    let (node, _dir) = start(false, &[]).await;
    let (status, _) = request_from(ip("127.0.0.3"), node.http, "POST", Some(TOKEN)).await;
    assert_eq!(status, 403, "no --admin-token-file: no token is accepted");
    assert_not_draining(&node, "POST from 127.0.0.3").await;
}

#[tokio::test]
async fn the_prestop_client_drains_the_node_with_its_token() {
    let (node, dir) = start(true, &[]).await;
    let out = tokio::task::spawn_blocking({
        let http = node.http.to_string();
        let token = dir.path().join("admin-token");
        move || {
            Command::new(binary())
                .arg("--send-drain")
                .env("SWITCHBOARD_HTTP_BIND", http)
                .env("SWITCHBOARD_ADMIN_TOKEN_FILE", token)
                .stdin(Stdio::null())
                .output()
        }
    })
    .await
    .expect("join")
    .expect("run --send-drain");
    assert!(
        out.status.success(),
        "--send-drain: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"draining\":true"));
    wait_draining(&node).await;
}

#[tokio::test]
async fn debug_routes_refuse_a_non_loopback_admin_port() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("routing.json");
    std::fs::write(&cfg, config("ws://127.0.0.1:9/").to_string()).expect("config");
    let sip = format!("127.0.0.1:{}", free_port());
    let http = format!("0.0.0.0:{}", free_port());
    /// Kills the process if the test fails while it still runs (today's binary would serve).
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Reap(
        Command::new(binary())
            .arg("--config")
            .arg(&cfg)
            .args(["--sip-bind", &sip, "--http-bind", &http, "--debug-routes"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn"),
    );
    let status = eventually("the node to exit", Duration::from_secs(10), || {
        let s = child.0.try_wait();
        async move {
            match s {
                Ok(Some(s)) => Ok(s),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    let mut stderr = String::new();
    if let Some(mut e) = child.0.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    assert!(!status.success(), "exit status {status}");
    assert!(
        stderr.contains("--debug-routes") && stderr.contains("loopback"),
        "the reason is printed: {stderr}"
    );
}
