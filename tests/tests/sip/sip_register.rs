//! REGISTER against a SIPp registrar that challenges with 401: the node
//! authenticates, and refreshes before the 4 s expiry. Over TLS: the registrar's certificate
//! is verified (a registrar in the test answers over the connection), and one whose
//! certificate expired is refused with that reason.

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
    registration(&node, |r| {
        r["state"] == "registered" && r["successes"].as_u64() >= Some(2) && r["expires"] == 4
    })
    .await;
    assert_eq!(
        node.metric(r#"switchboard_sip_registered{trunk="demo/reg"}"#)
            .await,
        1.0
    );
    assert!(!node.log().contains("s3cret"), "password never logged");
}

fn tls_registrar_config(port: u16, ca_pem: &str) -> serde_json::Value {
    json!({
        "version": "1",
        "trunks": [{
            "id": "demo/reg",
            "enabled": true,
            "registerHere": true,
            "outbound": {
                "enabled": true,
                "gateways": [{"host": "127.0.0.1", "port": port, "transport": "TRANSPORT_TLS"}],
                "tls": {"caPem": ca_pem},
                "register": {"enabled": true, "expiresSeconds": 60}
            }
        }],
        "numbers": []
    })
}

async fn registration(
    node: &MediaNode,
    want: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    eventually(
        "the registration state",
        Duration::from_secs(15),
        || async {
            let (_, body) = node
                .http("GET", "/debug/registrations", None)
                .await
                .map_err(|e| e.to_string())?;
            let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            if want(&v[0]) {
                Ok(v[0].clone())
            } else {
                Err(body)
            }
        },
    )
    .await
}

/// A registrar on TLS whose certificate the trunk's CA signed for its address: the node
/// connects, verifies it and sends REGISTER over the connection; the registrar's 200 makes
/// the trunk registered.
#[tokio::test]
async fn registration_over_tls_verifies_the_registrar() {
    use switchboard_tests::tls::{TestCa, read_message, server_config};
    use tokio::io::AsyncWriteExt;
    let ca = TestCa::new();
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config(&ca.issue(&["127.0.0.1"])));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (seen_tx, seen) = tokio::sync::oneshot::channel::<String>();
    let registrar = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("the node connects");
        let mut tls = acceptor.accept(tcp).await.expect("handshake");
        let mut buf = Vec::new();
        let req = read_message(&mut tls, &mut buf, Duration::from_secs(10))
            .await
            .expect("a REGISTER over TLS");
        let copy = |name: &str| {
            req.lines()
                .find(|l| {
                    l.to_ascii_lowercase()
                        .starts_with(&format!("{}:", name.to_ascii_lowercase()))
                })
                .unwrap_or_default()
                .to_string()
        };
        let contact = copy("Contact");
        let reply = format!(
            "SIP/2.0 200 OK\r\n{}\r\n{}\r\n{};tag=reg\r\n{}\r\n{}\r\n{}\r\nContent-Length: 0\r\n\r\n",
            copy("Via"),
            copy("From"),
            copy("To"),
            copy("Call-ID"),
            copy("CSeq"),
            contact
                .split(";expires")
                .next()
                .unwrap_or_default()
                .to_string()
                + ";expires=60",
        );
        tls.write_all(reply.as_bytes()).await.expect("reply");
        let _ = seen_tx.send(req);
        // Keep the connection open while the test looks at the state.
        let _ = read_message(&mut tls, &mut buf, Duration::from_secs(20)).await;
    });
    let node = MediaNode::start(&tls_registrar_config(port, ca.pem()), &["--debug-routes"])
        .await
        .expect("node starts");
    let r = registration(&node, |r| r["state"] == "registered").await;
    assert_eq!(r["expires"], 60, "{r}");
    let req = seen.await.expect("the registrar saw the REGISTER");
    assert!(req.starts_with("REGISTER sip:"), "{req}");
    assert!(req.contains("SIP/2.0/TLS"), "{req}");
    registrar.abort();
}

/// A registrar whose certificate expired: the registration fails and its state says why.
#[tokio::test]
async fn a_tls_registrar_with_an_expired_certificate_is_refused_with_the_reason() {
    use switchboard_tests::tls::{TestCa, handshake_only_listener};
    let ca = TestCa::new();
    let (addr, _listener) = handshake_only_listener(&ca.issue_expired(&["127.0.0.1"])).await;
    let node = MediaNode::start(
        &tls_registrar_config(addr.port(), ca.pem()),
        &["--debug-routes"],
    )
    .await
    .expect("node starts");
    let r = registration(&node, |r| r["state"] == "failed").await;
    let error = r["error"].as_str().unwrap_or_default();
    assert!(error.contains("TLS") && error.contains("expired"), "{r}");
    assert_eq!(
        node.metric(r#"switchboard_sip_registered{trunk="demo/reg"}"#)
            .await,
        0.0
    );
}
