//! OPTIONS pings to gateways: a gateway answering 503 is marked down and
//! skipped by the outbound engine while another gateway is healthy.

use std::time::Duration;

use serde_json::json;
use switchboard_tests::node::{MediaNode, header_of};
use switchboard_tests::poll::eventually;
use tokio::net::UdpSocket;

/// A scripted gateway: answers OPTIONS with `options_code` and INVITE with
/// `invite_code`, counting the INVITEs it saw.
async fn gateway(
    options_code: u16,
    invite_code: u16,
) -> (
    u16,
    tokio::task::JoinHandle<()>,
    tokio::sync::watch::Receiver<u32>,
) {
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let port = sock.local_addr().expect("addr").port();
    let (tx, rx) = tokio::sync::watch::channel(0u32);
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        let mut invites = 0;
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            let code = if msg.starts_with("OPTIONS ") {
                options_code
            } else if msg.starts_with("INVITE ") {
                invites += 1;
                let _ = tx.send(invites);
                invite_code
            } else {
                continue;
            };
            let mut resp = format!("SIP/2.0 {code} Scripted\r\n");
            for name in ["Via", "From", "Call-ID", "CSeq"] {
                for line in msg.lines().filter(|l| {
                    l.split(':')
                        .next()
                        .is_some_and(|k| k.eq_ignore_ascii_case(name))
                }) {
                    resp.push_str(line);
                    resp.push_str("\r\n");
                }
            }
            let to = header_of(&msg, "To").unwrap_or_default();
            resp.push_str(&format!("To: {to};tag=gw\r\nContent-Length: 0\r\n\r\n"));
            let _ = sock.send_to(resp.as_bytes(), from).await;
        }
    });
    (port, task, rx)
}

#[tokio::test]
async fn sip_options_pings_mark_gateways_and_dead_ones_are_skipped() {
    let (down, t1, down_invites) = gateway(503, 486).await;
    let (up, t2, up_invites) = gateway(200, 486).await;
    let config = json!({
        "version": "1",
        "trunks": [{
            "id": "demo/t",
            "enabled": true,
            "optionsIntervalSeconds": 1,
            "outbound": {"enabled": true, "gateways": [
                {"host": "127.0.0.1", "port": down, "priority": 1, "weight": 1},
                {"host": "127.0.0.1", "port": up, "priority": 2, "weight": 1}
            ]}
        }],
        "numbers": [{"id": "demo/n", "e164": "+15550001111", "trunkId": "demo/t", "outbound": true}]
    });
    let node = MediaNode::start(&config, &["--debug-routes"])
        .await
        .expect("node starts");
    eventually("both gateways pinged", Duration::from_secs(10), || async {
        let (_, body) = node
            .http("GET", "/debug/gateways", None)
            .await
            .map_err(|e| e.to_string())?;
        let v: Vec<serde_json::Value> = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        let state = |port: u16| {
            v.iter()
                .find(|g| g["gateway"] == format!("127.0.0.1:{port}"))
                .map(|g| (g["healthy"].clone(), g["last_code"].clone()))
        };
        if state(down) == Some((json!(false), json!(503)))
            && state(up) == Some((json!(true), json!(200)))
        {
            Ok(())
        } else {
            Err(body)
        }
    })
    .await;
    let (_, body) = node
        .http(
            "POST",
            "/debug/dial",
            Some(&json!({"number_id": "demo/n", "to": "+15557654321"})),
        )
        .await
        .expect("dial");
    let outcome: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(outcome["code"], 486, "{outcome}");
    assert_eq!(
        outcome["attempts"][0]["gateway"],
        format!("127.0.0.1:{up}"),
        "the dead gateway was skipped: {outcome}"
    );
    assert_eq!(*down_invites.borrow(), 0);
    assert_eq!(*up_invites.borrow(), 1);
    assert_eq!(
        node.metric(&format!(
            r#"switchboard_sip_gateway_healthy{{gateway="127.0.0.1:{down}",trunk="demo/t"}}"#
        ))
        .await,
        0.0
    );
    t1.abort();
    t2.abort();
}
