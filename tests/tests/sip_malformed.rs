//! Hostile and malformed input (in the spirit of RFC 4475, written for
//! this node) never crashes it and never disturbs a concurrent call; the
//! per-source rate limit and scanner filter drop silently and count.

use std::time::Duration;

use serde_json::json;
use switchboard_tests::node::{MediaNode, RawSip, free_port, status_of};
use switchboard_tests::sipp::Sipp;
use tokio::io::AsyncWriteExt;

const NUMBER: &str = "15550001111";

fn config() -> serde_json::Value {
    json!({
        "version": "1",
        "trunks": [{"id": "demo/carrier", "enabled": true, "inbound": {"enabled": true, "allowedSources": ["127.0.0.1/32"]}}],
        "numbers": [{"id": "demo/n", "e164": "+15550001111", "trunkId": "demo/carrier", "inbound": true}]
    })
}

/// A well-formed request with `method`, extra headers and body, from `local`.
fn request(method: &str, local: &str, branch: &str, extra: &str, body: &str) -> String {
    format!(
        "{method} sip:+{NUMBER}@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{branch}\r\nFrom: <sip:t@{local}>;tag=t{branch}\r\n\
         To: <sip:+{NUMBER}@127.0.0.1>\r\nCall-ID: {branch}@torture\r\nCSeq: 1 {method}\r\nMax-Forwards: 70\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn corpus(local: &str) -> Vec<Vec<u8>> {
    let ok = request("OPTIONS", local, "base", "", "");
    let mut c: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"\r\n\r\n".to_vec(),
        vec![0xff, 0x00, 0x13, 0x37, 0x80, 0x81],
        (0..2000u32).map(|i| (i * 7919 % 251) as u8).collect(),
        ok.as_bytes()[..ok.len() / 2].to_vec(),
        ok.replace("\r\n\r\n", "\r\n").into_bytes(),
        format!("{ok}{}", "x".repeat(70_000)).into_bytes(),
        ok.replace("Content-Length: 0", "Content-Length: 500").into_bytes(),
        ok.replace("Content-Length: 0", "Content-Length: -1").into_bytes(),
        ok.replace("Content-Length: 0", "Content-Length: 99999999999999999999999").into_bytes(),
        ok.replace("Content-Length: 0", "Content-Length: 0\r\nContent-Length: 4").into_bytes(),
        ok.replace("Content-Length: 0", "Content-Length: zero").into_bytes(),
        ok.replace(&format!("Via: SIP/2.0/UDP {local};branch=z9hG4bKbase\r\n"), "").into_bytes(),
        ok.replace(&format!("SIP/2.0/UDP {local}"), "SIP/2.0/UDP").into_bytes(),
        ok.replace(&format!("SIP/2.0/UDP {local}"), "SIP/2.0/UDP [::1").into_bytes(),
        ok.replace("CSeq: 1 OPTIONS", "CSeq: 4294967296 OPTIONS").into_bytes(),
        ok.replace("CSeq: 1 OPTIONS", "CSeq: abc OPTIONS").into_bytes(),
        ok.replace("Call-ID: base@torture\r\n", "").into_bytes(),
        ok.replace("OPTIONS sip:", "OPTIONS  sip:").into_bytes(),
        ok.replace(" SIP/2.0\r\nVia", " SIP/7.0\r\nVia").into_bytes(),
        ok.replace("OPTIONS sip:", "options sip:").into_bytes(),
        ok.replace("Max-Forwards: 70", "Max-Forwards 70").into_bytes(),
        ok.replace("Max-Forwards: 70", "Max Forwards: 70").into_bytes(),
        ok.replace("Max-Forwards: 70", "Max-Forwards: 9999").into_bytes(),
        ok.replace("Max-Forwards: 70", &"X-Pad: y\r\n".repeat(300)).into_bytes(),
        ok.replace("Max-Forwards: 70", &format!("X-Long: {}", "z".repeat(9000))).into_bytes(),
        ok.replace("Max-Forwards: 70", "X-Bin: \u{0}\u{1}\u{7f}").into_bytes(),
        ok.replace("From: <sip:t@", "From: \"\\\"<evil>,\\\"\" <sip:t@").into_bytes(),
        ok.replace("To: <sip:+", "To: <sip:%00%ff@[::1>;tag=\u{263a}<sip:+").into_bytes(),
        ok.replace("sip:+15550001111@127.0.0.1 SIP", "sip:+15550001111@127.0.0.1:99999 SIP").into_bytes(),
        ok.replace("sip:+15550001111@127.0.0.1 SIP", "http://example.com SIP").into_bytes(),
        ok.replace("Via: SIP", &format!("Via: {}SIP", format!("SIP/2.0/UDP h{local};branch=z9hG4bKv,").repeat(60))).into_bytes(),
        ok.replace("Max-Forwards: 70", "Max-Forwards: 70\r\n continued\r\n\tagain").into_bytes(),
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKnobody\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n".to_vec(),
        b"SIP/2.0 999 Odd\r\nContent-Length: 0\r\n\r\n".to_vec(),
        b"SIP/2.0 200\r\n\r\n".to_vec(),
        request("INVITE", local, "badsdp", "Content-Type: application/sdp\r\n", "v=0\r\nm=audio notaport RTP/AVP 0\r\n").into_bytes(),
        request("INVITE", local, "nosdpct", "Content-Type: text/plain\r\n", "hello").into_bytes(),
        request("INVITE", local, "g729", "Content-Type: application/sdp\r\n", "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 18\r\n").into_bytes(),
        request("INVITE", local, "require", "Require: 100rel, foo\r\n", "").into_bytes(),
        request("INVITE", local, "shortse", "Supported: timer\r\nSession-Expires: 10\r\n", "").into_bytes(),
        request("ACK", local, "strayack", "", "").into_bytes(),
        request("CANCEL", local, "straycancel", "", "").into_bytes(),
        request("PRACK", local, "prack", "", "").into_bytes(),
        request("SUBSCRIBE", local, "sub", "Event: presence\r\n", "").into_bytes(),
    ];
    c.push(
        request(
            "INFO",
            local,
            "info",
            "Content-Type: application/dtmf-relay\r\n",
            "Signal=\u{0}\r\n",
        )
        .into_bytes(),
    );
    c
}

#[tokio::test]
async fn sip_malformed_corpus_never_crashes_or_disturbs_a_call() {
    let mut node = MediaNode::start(&config(), &[]).await.expect("node starts");
    let sip = node.sip;
    let call = tokio::spawn(async move {
        Sipp::template("uac_long.xml", &[("@HOLD_MS@", "3000")])
            .expect("template")
            .args(["-s", NUMBER])
            .run_client(sip, free_port())
            .await
    });
    let raw = RawSip::new(node.sip).await.expect("socket");
    let local = raw.local().to_string();
    for msg in corpus(&local) {
        raw.send(&msg).await;
    }
    // Specific answers for well-framed requests we must refuse properly.
    let expect = [
        (request("NEWMETHOD", &local, "newm", "", ""), 501),
        (
            request("OPTIONS", &local, "mf0", "", "")
                .replace("Max-Forwards: 70", "Max-Forwards: 0"),
            483,
        ),
        (request("BYE", &local, "nodialog", "", ""), 481),
        (
            request("OPTIONS", &local, "cseqmismatch", "", "")
                .replace("CSeq: 1 OPTIONS", "CSeq: 1 INVITE"),
            400,
        ),
        (
            request(
                "INVITE",
                &local,
                "g729b",
                "Content-Type: application/sdp\r\n",
                "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 18\r\n",
            ),
            488,
        ),
        (
            request(
                "INVITE",
                &local,
                "shortse2",
                "Supported: timer\r\nSession-Expires: 10\r\n",
                "",
            ),
            422,
        ),
        (
            request("INVITE", &local, "req2", "Require: foo\r\n", ""),
            420,
        ),
    ];
    for (msg, code) in expect {
        raw.send(msg.as_bytes()).await;
        let branch = msg
            .split("branch=")
            .nth(1)
            .and_then(|b| b.split("\r\n").next())
            .unwrap_or_default()
            .to_owned();
        let mut seen = Vec::new();
        let got = raw
            .recv_until(Duration::from_secs(5), &mut seen, |m| {
                m.contains(&branch) && status_of(m).is_some_and(|c| c >= 200)
            })
            .await
            .unwrap_or_else(|| panic!("no final answer for {branch}"));
        assert_eq!(status_of(&got), Some(code), "{branch}: {got}");
    }
    // TCP: a garbage stream, an oversized Content-Length, a half message.
    for junk in [
        b"GARBAGE\r\n\r\n".to_vec(),
        b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 99999999\r\n\r\n".to_vec(),
        b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:1;bra".to_vec(),
        vec![b'A'; 40_000],
    ] {
        if let Ok(mut s) = tokio::net::TcpStream::connect(node.sip).await {
            let _ = s.write_all(&junk).await;
        }
    }
    // A scanner is ignored silently.
    let scanner = request(
        "OPTIONS",
        &local,
        "scan",
        "User-Agent: friendly-scanner\r\n",
        "",
    );
    raw.send(scanner.as_bytes()).await;
    // The node still answers a valid request (and the scanner got nothing before it).
    let probe = request("OPTIONS", &local, "probe", "", "");
    raw.send(probe.as_bytes()).await;
    let mut seen = Vec::new();
    let got = raw
        .recv_until(Duration::from_secs(5), &mut seen, |m| {
            m.contains("z9hG4bKprobe")
        })
        .await
        .expect("probe answered");
    assert_eq!(status_of(&got), Some(200));
    assert!(
        !seen.iter().any(|m| m.contains("z9hG4bKscan")),
        "scanner got an answer"
    );
    assert!(
        node.metric(r#"switchboard_sip_dropped_messages_total{reason="scanner"}"#)
            .await
            >= 1.0
    );
    call.await
        .expect("join")
        .expect("sipp")
        .assert_success("concurrent call unaffected by the corpus");
    assert!(node.is_running(), "node crashed; log:\n{}", node.log());
    let (status, _) = node.http("GET", "/healthz", None).await.expect("healthz");
    assert_eq!(status, 200);
    assert!(
        !node.log().contains("panicked"),
        "a task panicked:\n{}",
        node.log()
    );
}

#[tokio::test]
async fn sip_rate_limit_drops_excess_requests_per_source() {
    let node = MediaNode::start(&config(), &["--rate-limit", "1", "--rate-burst", "5"])
        .await
        .expect("node starts");
    let raw = RawSip::new(node.sip).await.expect("socket");
    let local = raw.local().to_string();
    for i in 0..20 {
        raw.send(request("OPTIONS", &local, &format!("rl{i}"), "", "").as_bytes())
            .await;
    }
    // Every request is either answered or counted as dropped.
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (answered, limited) = loop {
        let answered = seen
            .iter()
            .filter(|m: &&String| status_of(m) == Some(200))
            .count();
        let limited = node.metric("switchboard_sip_rate_limited_total").await as usize;
        if answered + limited == 20 || tokio::time::Instant::now() > deadline {
            break (answered, limited);
        }
        let _ = raw
            .recv_until(Duration::from_millis(100), &mut seen, |_| true)
            .await;
    };
    assert_eq!(
        answered + limited,
        20,
        "answered {answered}, limited {limited}"
    );
    assert!((5..=7).contains(&answered), "answered {answered} of 20");
}
