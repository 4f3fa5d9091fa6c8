//! Hostile and malformed input (in the spirit of RFC 4475, written for
//! this node) never crashes it and never disturbs a concurrent call; the
//! per-source rate limit and scanner filter drop silently and count; and RFC 4475's own
//! torture messages (tests/rfc4475/) get the answers the RFC asks of a user agent.

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
        // The node is the endpoint: Max-Forwards 0 stops proxies only (RFC 4475 3.3.11).
        (
            request("OPTIONS", &local, "mf0", "", "")
                .replace("Max-Forwards: 70", "Max-Forwards: 0"),
            200,
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

/// What the node (a user agent server, not a proxy or registrar) answers to each of RFC
/// 4475's torture messages over UDP (tests/rfc4475/, the RFC's own bytes): the codes it may
/// answer, empty for "no answer" (responses, which match no transaction). Where the RFC lets a
/// liberal element accept what a strict one refuses with 400, both are listed; the node's
/// number is not among the messages' users, so accepted INVITEs get 404.
const RFC4475: &[(&str, &[u16])] = &[
    // 3.1.1 valid messages: never 400.
    ("wsinv.dat", &[481]), // has a To tag: a request in a dialog we do not know
    ("intmeth.dat", &[501]),
    ("esc01.dat", &[404]),
    ("escnull.dat", &[405]),
    ("esc02.dat", &[501]),
    ("lwsdisp.dat", &[200]),
    ("longreq.dat", &[404]),
    ("dblreq.dat", &[405]),
    ("semiuri.dat", &[200]),
    ("transports.dat", &[200]),
    ("mpart01.dat", &[501]),
    ("unreason.dat", &[]),
    ("noreason.dat", &[]),
    // 3.1.2 invalid messages.
    ("badinv01.dat", &[400]),
    ("clerr.dat", &[400]),
    ("ncl.dat", &[400]),
    ("scalar02.dat", &[400]),
    ("scalarlg.dat", &[]),
    ("quotbal.dat", &[400, 404]),
    ("ltgtruri.dat", &[400, 404]),
    ("lwsruri.dat", &[400]),
    ("lwsstart.dat", &[400]),
    ("trws.dat", &[400, 200]),
    ("escruri.dat", &[400, 404]),
    ("baddate.dat", &[400, 404]),
    ("regbadct.dat", &[400, 405]),
    ("badaspec.dat", &[400, 200]),
    ("baddn.dat", &[400, 200]),
    ("badvers.dat", &[505]),
    ("mismatch01.dat", &[400]),
    ("mismatch02.dat", &[501, 400]),
    ("bigcode.dat", &[]),
    // 3.2 transaction layer.
    ("badbranch.dat", &[200, 400]),
    // 3.3 application layer.
    ("insuf.dat", &[400]),
    ("unkscm.dat", &[416]),
    ("novelsc.dat", &[416]),
    ("unksm2.dat", &[405, 400]),
    ("bext01.dat", &[420]),
    ("invut.dat", &[404, 415]),
    ("regaut01.dat", &[405, 401]),
    ("multi01.dat", &[400]),
    ("mcl01.dat", &[400]),
    ("bcast.dat", &[]),
    ("zeromf.dat", &[200]), // Max-Forwards 0 stops proxies, not the request's endpoint
    ("cparam01.dat", &[405]),
    ("cparam02.dat", &[405]),
    ("regescrt.dat", &[405]),
    ("sdp01.dat", &[404, 406, 400]),
    // 3.4 backward compatibility: an RFC 2543 INVITE is accepted.
    ("inv2543.dat", &[404]),
];

/// Sends one torture message to a fresh node (several messages share a branch and sent-by,
/// which makes them one transaction on one node) and returns the final answers it got.
async fn torture(name: &str, data: Vec<u8>) -> (String, Vec<String>, MediaNode) {
    let node = MediaNode::start(&config(), &[]).await.expect("node starts");
    let raw = RawSip::new(node.sip).await.expect("socket");
    raw.send(&data).await;
    let mut seen = Vec::new();
    // Answers come at once or never; a short wait bounds the silent cases.
    let _ = raw
        .recv_until(Duration::from_millis(1500), &mut seen, |_| false)
        .await;
    let finals = seen
        .into_iter()
        .filter(|m| status_of(m).is_some_and(|c| c >= 200))
        .collect();
    (name.to_owned(), finals, node)
}

#[tokio::test]
async fn rfc4475_torture_messages_get_the_answers_the_rfc_asks_for() {
    use futures::StreamExt;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rfc4475");
    let mut listed: Vec<String> = std::fs::read_dir(&dir)
        .expect("tests/rfc4475")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".dat") && n != "test.dat")
        .collect();
    listed.sort();
    let mut expected: Vec<String> = RFC4475.iter().map(|(n, _)| n.to_string()).collect();
    expected.sort();
    assert_eq!(
        listed, expected,
        "every message of the corpus has an expectation"
    );
    let runs: Vec<_> = futures::stream::iter(RFC4475.iter().map(|(name, _)| {
        let data = std::fs::read(dir.join(name)).expect("message");
        torture(name, data)
    }))
    .buffer_unordered(8)
    .collect()
    .await;
    let mut wrong = Vec::new();
    for (name, finals, node) in &runs {
        let want = RFC4475
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, w)| *w)
            .unwrap_or_default();
        // An INVITE's final answer is retransmitted until an ACK we never send (Timer G):
        // the same answer again, not another one.
        let mut codes: Vec<u16> = finals.iter().filter_map(|m| status_of(m)).collect();
        codes.dedup();
        let ok = match want {
            [] => codes.is_empty(),
            _ => codes.len() == 1 && want.contains(&codes[0]),
        };
        if !ok {
            wrong.push(format!("{name}: got {codes:?}, want one of {want:?}"));
        }
        if *name == "bext01.dat" {
            let unsupported = finals
                .first()
                .and_then(|m| switchboard_tests::node::header_of(m, "Unsupported"))
                .unwrap_or_default()
                .to_owned();
            assert!(
                unsupported.contains("nothingSupportsThis")
                    && unsupported.contains("nothingSupportsThisEither")
                    && !unsupported.contains("noProxiesSupportThis"),
                "420 lists the Require tags, not Proxy-Require's: {unsupported:?}"
            );
        }
        // Whatever came in, the node still serves.
        let raw = RawSip::new(node.sip).await.expect("socket");
        let local = raw.local().to_string();
        raw.send(request("OPTIONS", &local, "alive", "", "").as_bytes())
            .await;
        let mut seen = Vec::new();
        let alive = raw
            .recv_until(Duration::from_secs(5), &mut seen, |m| {
                status_of(m) == Some(200)
            })
            .await;
        assert!(alive.is_some(), "{name}: node stopped answering: {seen:?}");
        assert!(!node.log().contains("panicked"), "{name}: {}", node.log());
    }
    assert!(
        wrong.is_empty(),
        "answers off the RFC:\n{}",
        wrong.join("\n")
    );
}
