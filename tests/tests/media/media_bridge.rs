//! Calls carry audio: the real media-node binary bridging SIPp callers' RTP to a WebSocket agent
//! speaking Twilio Media Streams (tests/src/agent.rs, and Pipecat's serializer in
//! tests/agents/pipecat_agent.py).
//!
//! RTP is either played by SIPp from a pcap the test writes (`media_uac_pcap.xml`), or sent and
//! captured by a small RTP endpoint in this file (the "phone") whose address SIPp writes into its
//! SDP (`media_uac_bye.xml`), so that exact bytes, sequence numbers, timestamps and pacing of
//! what the node sends can be asserted. Expectations come from RFC 3550/3551/4733, G.711 and the
//! protocol document, with independent reference code here (G.711 decoding, RTP parsing).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use switchboard_tests::agent::TestAgent;
use switchboard_tests::node::{MediaNode, free_port};
use switchboard_tests::phone::{
    FRAME, Phone, Rtp, assert_continuous_50pps, rtp_packet, ulaw_pattern,
};
use switchboard_tests::sipp::{Sipp, SippRun, spawn_bye_call};

const NUMBER: &str = "15550001111";

// ------------------------------------------------------------------------------------------
use switchboard_tests::g711::{
    alaw_to_linear, close, linear_to_alaw, linear_to_ulaw, ulaw_to_linear,
};

/// A loud sine as μ-law (for the PCMA test, where values must survive transcoding).
fn ulaw_sine(frames: usize, hz: f64) -> Vec<u8> {
    (0..frames * FRAME)
        .map(|i| {
            let v = (12000.0 * (2.0 * std::f64::consts::PI * hz * i as f64 / 8000.0).sin()) as i32;
            let u = linear_to_ulaw(v);
            if u == 0xFF { 0xFE } else { u }
        })
        .collect()
}

/// A pcap (Ethernet/IPv4/UDP) of RTP packets 20 ms apart, for SIPp's `play_pcap_audio`.
fn write_pcap(path: &Path, pt: u8, payload: &[u8]) {
    let mut out = Vec::new();
    out.extend(0xa1b2_c3d4u32.to_le_bytes());
    out.extend(2u16.to_le_bytes());
    out.extend(4u16.to_le_bytes());
    out.extend(0i32.to_le_bytes());
    out.extend(0u32.to_le_bytes());
    out.extend(65535u32.to_le_bytes());
    out.extend(1u32.to_le_bytes()); // LINKTYPE_ETHERNET
    for (i, chunk) in payload.chunks(FRAME).enumerate() {
        let rtp = rtp_packet(
            i == 0,
            pt,
            1000 + i as u16,
            5000 + (i * FRAME) as u32,
            0x5eed_0001,
            chunk,
        );
        let udp_len = 8 + rtp.len();
        let ip_len = 20 + udp_len;
        let mut ip = vec![0x45, 0];
        ip.extend((ip_len as u16).to_be_bytes());
        ip.extend((i as u16).to_be_bytes());
        ip.extend([0x40, 0, 64, 17, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1]);
        let sum = ip
            .chunks(2)
            .fold(0u32, |s, w| s + u32::from(u16::from_be_bytes([w[0], w[1]])));
        let sum = !(((sum & 0xFFFF) + (sum >> 16)) as u16);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        let mut pkt = vec![0u8; 12];
        pkt.extend([0x08, 0x00]);
        pkt.extend(ip);
        pkt.extend(6000u16.to_be_bytes());
        pkt.extend(6000u16.to_be_bytes());
        pkt.extend((udp_len as u16).to_be_bytes());
        pkt.extend(0u16.to_be_bytes());
        pkt.extend(rtp);
        let usec = i as u64 * 20_000;
        out.extend(((usec / 1_000_000) as u32).to_le_bytes());
        out.extend(((usec % 1_000_000) as u32).to_le_bytes());
        out.extend((pkt.len() as u32).to_le_bytes());
        out.extend((pkt.len() as u32).to_le_bytes());
        out.extend(pkt);
    }
    std::fs::write(path, out).expect("writing pcap");
}
// ------------------------------------------------------------------------------------------
// Configuration and SIPp helpers.

fn config(agent_url: &str, rtp_timeout: u32, max_duration: u32) -> serde_json::Value {
    json!({
        "version": "1",
        "trunks": [{
            "id": "demo/carrier",
            "enabled": true,
            "inbound": {"enabled": true, "allowedSources": ["127.0.0.1/32"]},
            "media": {"codecs": ["CODEC_PCMU", "CODEC_PCMA"], "rtpTimeoutSeconds": rtp_timeout}
        }],
        "numbers": [{
            "id": "demo/support", "e164": "+15550001111", "trunkId": "demo/carrier",
            "inbound": true, "outbound": true, "maxCallDurationSeconds": max_duration,
            "agent": {"url": agent_url, "bearerToken": "tok-123", "parameters": {"tenant": "acme"}}
        }]
    })
}

const INFO_DTMF: &str = r#"
  <pause milliseconds="@INFO_AFTER_MS@"/>
  <send retrans="500">
    <![CDATA[

      INFO [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: "sipp" <sip:+15559990000@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      [last_To:]
      Call-ID: [call_id]
      [routes]
      CSeq: 2 INFO
      Max-Forwards: 70
      Content-Type: application/dtmf-relay
      Content-Length: [len]

      Signal=@DIGIT@
      Duration=160

    ]]>
  </send>
  <recv response="200"/>
"#;

async fn finish(call: tokio::task::JoinHandle<anyhow::Result<SippRun>>, what: &str) -> SippRun {
    let run = call.await.expect("sipp task").expect("sipp runs");
    run.assert_success(what);
    run
}

async fn metric_eventually(node: &MediaNode, series: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = node.metric(series).await;
        if v == want {
            return;
        }
        assert!(Instant::now() < deadline, "{series} is {v}, want {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ------------------------------------------------------------------------------------------
// Tests.

/// SIPp plays a pcap of known μ-law; the agent receives exactly those bytes, in order, in
/// 160-byte media messages with the protocol's framing; SIPp's BYE ends the stream with `stop`.
#[tokio::test]
async fn media_sipp_pcap_audio_reaches_agent_exactly() {
    let agent = TestAgent::start().await.expect("agent");
    let node = MediaNode::start(&config(&agent.url(), 30, 0), &[])
        .await
        .expect("node");
    let dir = tempfile::tempdir().expect("tmp");
    let pcap = dir.path().join("caller.pcap");
    let audio = ulaw_pattern(75, 1);
    write_pcap(&pcap, 0, &audio);
    let run = Sipp::template(
        "media_uac_pcap.xml",
        &[
            ("@PCAP@", &pcap.display().to_string()),
            ("@PLAY_MS@", "2500"),
        ],
    )
    .expect("template")
    .args(["-s", NUMBER, "-mp", &free_port().to_string()])
    .run_client(node.sip, free_port())
    .await
    .expect("sipp runs");
    run.assert_success("pcap call");

    let conn = agent.connection(0, Duration::from_secs(5)).await;
    conn.wait_until("stop", Duration::from_secs(5), |c| {
        !c.events("stop").is_empty()
    })
    .await;
    assert_eq!(conn.authorization().as_deref(), Some("Bearer tok-123"));
    let msgs = conn.messages();
    assert_eq!(msgs[0].json["event"], "connected");
    let start = &msgs[1].json;
    assert_eq!(start["event"], "start");
    assert_eq!(start["start"]["mediaFormat"]["encoding"], "audio/x-mulaw");
    assert_eq!(start["start"]["customParameters"]["tenant"], "acme");
    assert_eq!(start["start"]["customParameters"]["direction"], "inbound");
    assert_eq!(start["start"]["accountSid"], "demo/carrier");
    // `connected` carries no number; every later message counts from 1.
    for (i, m) in msgs.iter().enumerate().skip(1) {
        assert_eq!(
            m.json["sequenceNumber"],
            i.to_string(),
            "sequenceNumber of message {i}"
        );
    }
    let media = conn.events("media");
    for (k, m) in media.iter().enumerate() {
        assert_eq!(
            m.json["media"]["chunk"],
            (k + 1).to_string(),
            "chunk counts media from 1"
        );
        assert_eq!(m.json["media"]["track"], "inbound");
    }
    let ts: Vec<u64> = media
        .iter()
        .map(|m| {
            m.json["media"]["timestamp"]
                .as_str()
                .and_then(|t| t.parse().ok())
                .expect("timestamp string")
        })
        .collect();
    assert!(
        ts.windows(2).all(|w| w[1] == w[0] + 20),
        "timestamps 20 ms apart: {ts:?}"
    );
    let got = conn.audio();
    assert_eq!(got.len(), audio.len(), "every frame arrived, no more");
    assert!(
        got == audio,
        "the agent got exactly the caller's μ-law, in order"
    );
    assert_eq!(conn.events("stop").len(), 1);
    assert!(
        node.metric("switchboard_rtp_packets_received_total").await >= 75.0,
        "RTP counted"
    );
    assert_eq!(
        node.metric(r#"switchboard_call_end_reasons_total{reason="remote_bye"}"#)
            .await,
        1.0
    );
}

/// Agent audio of any chunk size reaches the caller as RTP at 50 packets per second with
/// continuous sequence numbers and timestamps (silence before and after), byte-exact; caller
/// audio from the phone reaches the agent byte-exact; the agent closing its socket ends the
/// call with a BYE and the reason recorded.
#[tokio::test]
async fn media_agent_audio_paced_to_caller_and_agent_close_sends_bye() {
    let agent = TestAgent::start().await.expect("agent");
    let node = MediaNode::start(&config(&agent.url(), 30, 0), &[])
        .await
        .expect("node");
    let phone = Phone::start(0, 0xFF).await;
    let call = spawn_bye_call(
        node.sip,
        NUMBER,
        phone.port,
        ("0", "PCMU"),
        "",
        Duration::from_secs(20),
    );
    let conn = agent.connection(0, Duration::from_secs(10)).await;
    conn.wait_until("start", Duration::from_secs(5), |c| {
        !c.events("start").is_empty()
    })
    .await;

    // Caller -> agent, through the phone's own RTP.
    let caller_audio = ulaw_pattern(50, 7);
    phone.send_audio(&caller_audio);
    // Agent -> caller: 1.5 s in uneven chunks (not multiples of 160).
    let agent_audio = ulaw_pattern(75, 99)[..75 * FRAME - 37].to_vec();
    for chunk in agent_audio.chunks(1013) {
        conn.send_media(chunk);
    }
    conn.send_mark("done");
    conn.wait_until("the mark after the audio", Duration::from_secs(10), |c| {
        c.marks() == ["done"]
    })
    .await;
    // A second of silence after the audio, to see the stream go on.
    let n_at_mark = phone.packets().len();
    phone
        .wait_packets("a second more", Duration::from_secs(5), |p| {
            p.len() >= n_at_mark + 50
        })
        .await;
    conn.wait_until("the caller's audio", Duration::from_secs(5), |c| {
        c.audio().len() >= caller_audio.len()
    })
    .await;
    assert!(
        conn.audio()[..caller_audio.len()] == caller_audio[..],
        "caller audio exact and in order"
    );

    let pkts = phone.packets();
    assert_continuous_50pps(&pkts, 0);
    let bytes: Vec<u8> = pkts.iter().flat_map(|p| p.payload.clone()).collect();
    let first = bytes
        .iter()
        .position(|&b| b != 0xFF)
        .expect("agent audio arrived");
    assert_eq!(first % FRAME, 0, "agent audio starts on a packet boundary");
    assert!(
        bytes[..first].iter().all(|&b| b == 0xFF),
        "silence before the agent spoke"
    );
    assert!(
        bytes[first..first + agent_audio.len()] == agent_audio[..],
        "the caller got exactly the agent's μ-law"
    );
    assert!(
        bytes[first + agent_audio.len()..]
            .iter()
            .all(|&b| b == 0xFF),
        "silence after the agent's audio"
    );

    // The agent hangs up: the node sends BYE to the caller.
    conn.close();
    finish(call, "BYE after the agent closed").await;
    metric_eventually(
        &node,
        r#"switchboard_call_end_reasons_total{reason="agent_disconnected"}"#,
        1.0,
    )
    .await;
    metric_eventually(
        &node,
        r#"switchboard_agent_disconnects_total{reason="agent_closed"}"#,
        1.0,
    )
    .await;
    phone.stop();
}

/// A PCMA call: A-law from the caller reaches the agent as the same sound in μ-law, and the
/// agent's μ-law reaches the caller as A-law, with A-law silence around it.
#[tokio::test]
async fn media_pcma_call_both_directions() {
    let agent = TestAgent::start().await.expect("agent");
    let node = MediaNode::start(&config(&agent.url(), 30, 0), &[])
        .await
        .expect("node");
    let phone = Phone::start(8, 0xD5).await;
    let call = spawn_bye_call(
        node.sip,
        NUMBER,
        phone.port,
        ("8", "PCMA"),
        "",
        Duration::from_secs(20),
    );
    let conn = agent.connection(0, Duration::from_secs(10)).await;
    conn.wait_until("start", Duration::from_secs(5), |c| {
        !c.events("start").is_empty()
    })
    .await;

    let caller_ulaw = ulaw_sine(50, 300.0);
    let caller_alaw: Vec<u8> = caller_ulaw
        .iter()
        .map(|&u| linear_to_alaw(ulaw_to_linear(u)))
        .collect();
    phone.send_audio(&caller_alaw);
    let agent_ulaw = ulaw_sine(50, 700.0);
    conn.send_media(&agent_ulaw);
    conn.send_mark("played");
    conn.wait_until("the mark", Duration::from_secs(10), |c| {
        c.marks() == ["played"]
    })
    .await;
    conn.wait_until("the caller's audio", Duration::from_secs(5), |c| {
        c.audio().len() >= caller_alaw.len()
    })
    .await;

    let got = conn.audio();
    for (i, (&a, &u)) in caller_alaw.iter().zip(&got).enumerate() {
        assert!(
            close(alaw_to_linear(a), ulaw_to_linear(u)),
            "sample {i}: caller sent A-law {a:#04x} ({}), agent got μ-law {u:#04x} ({})",
            alaw_to_linear(a),
            ulaw_to_linear(u)
        );
    }
    let pkts = phone.packets();
    assert_continuous_50pps(&pkts, 8);
    let bytes: Vec<u8> = pkts.iter().flat_map(|p| p.payload.clone()).collect();
    let first = bytes
        .iter()
        .position(|&b| alaw_to_linear(b).abs() > 64)
        .expect("agent audio arrived");
    assert!(
        bytes[..first].iter().all(|&b| alaw_to_linear(b).abs() <= 8),
        "A-law silence before the agent spoke"
    );
    let first = first - first % FRAME;
    for (i, (&u, &a)) in agent_ulaw.iter().zip(&bytes[first..]).enumerate() {
        assert!(
            close(ulaw_to_linear(u), alaw_to_linear(a)),
            "sample {i}: agent sent μ-law {u:#04x}, caller got A-law {a:#04x}"
        );
    }
    conn.close();
    finish(call, "PCMA call").await;
    phone.stop();
}

/// RFC 4733 key presses (with the end packet sent three times, as senders do) reach the agent
/// once per press; a SIP INFO digit too.
#[tokio::test]
async fn media_dtmf_rfc4733_and_info_once_per_digit() {
    let agent = TestAgent::start().await.expect("agent");
    let node = MediaNode::start(&config(&agent.url(), 30, 0), &[])
        .await
        .expect("node");
    let phone = Phone::start(0, 0xFF).await;
    let info = INFO_DTMF
        .replace("@INFO_AFTER_MS@", "200")
        .replace("@DIGIT@", "5");
    let call = spawn_bye_call(
        node.sip,
        NUMBER,
        phone.port,
        ("0", "PCMU"),
        &info,
        Duration::from_secs(20),
    );
    let conn = agent.connection(0, Duration::from_secs(10)).await;
    conn.wait_until("start", Duration::from_secs(5), |c| {
        !c.events("start").is_empty()
    })
    .await;
    phone.send_audio(&ulaw_pattern(5, 3));
    for d in ['1', '9', '#'] {
        phone.send_dtmf(d);
    }
    conn.wait_until("four digits", Duration::from_secs(10), |c| {
        c.digits().len() >= 4
    })
    .await;
    // Give duplicates (end-packet repeats) time to show up if they were reported.
    phone.send_audio(&ulaw_pattern(10, 4));
    conn.wait_until("audio after the digits", Duration::from_secs(5), |c| {
        c.audio().len() >= 15 * FRAME
    })
    .await;
    let digits = conn.digits();
    assert_eq!(digits.matches('5').count(), 1, "INFO digit once: {digits}");
    assert_eq!(
        digits.replace('5', ""),
        "19#",
        "RFC 4733 digits once each, in order"
    );
    for m in conn.events("dtmf") {
        assert_eq!(m.json["dtmf"]["track"], "inbound_track");
    }
    metric_eventually(
        &node,
        r#"switchboard_dtmf_events_total{source="rfc4733"}"#,
        3.0,
    )
    .await;
    metric_eventually(
        &node,
        r#"switchboard_dtmf_events_total{source="info"}"#,
        1.0,
    )
    .await;
    conn.close();
    finish(call, "DTMF call").await;
    phone.stop();
}

/// `clear` during a long playout stops the audio within one frame and returns the pending mark
/// at once; marks queued afterwards come back in order, each once its audio has played.
#[tokio::test]
async fn media_clear_stops_playout_and_marks_come_back_in_order() {
    let agent = TestAgent::start().await.expect("agent");
    let node = MediaNode::start(&config(&agent.url(), 30, 0), &[])
        .await
        .expect("node");
    let phone = Phone::start(0, 0xFF).await;
    let call = spawn_bye_call(
        node.sip,
        NUMBER,
        phone.port,
        ("0", "PCMU"),
        "",
        Duration::from_secs(20),
    );
    let conn = agent.connection(0, Duration::from_secs(10)).await;
    conn.wait_until("start", Duration::from_secs(5), |c| {
        !c.events("start").is_empty()
    })
    .await;

    conn.send_media(&ulaw_pattern(500, 5)); // ten seconds
    conn.send_mark("long");
    let audio_packets = |p: &[Rtp]| {
        p.iter()
            .filter(|r| r.payload.iter().any(|&b| b != 0xFF))
            .count()
    };
    phone
        .wait_packets(
            "half a second of agent audio",
            Duration::from_secs(10),
            |p| audio_packets(p) >= 25,
        )
        .await;
    conn.send_clear();
    conn.wait_until("the cleared mark", Duration::from_secs(5), |c| {
        c.marks() == ["long"]
    })
    .await;
    let cleared_at = conn.events("mark")[0].at;
    // Watch the stream for a while after the clear.
    let n = phone.packets().len();
    phone
        .wait_packets(
            "half a second after the clear",
            Duration::from_secs(5),
            |p| p.len() >= n + 25,
        )
        .await;
    let late_audio = phone
        .packets()
        .iter()
        .filter(|r| r.at > cleared_at && r.payload.iter().any(|&b| b != 0xFF))
        .count();
    assert!(
        late_audio <= 1,
        "audio stopped within one frame of the clear; {late_audio} audio packets after it"
    );
    assert!(
        audio_packets(&phone.packets()) < 100,
        "the ten seconds were not played"
    );

    // Marks after a clear: played in order.
    let sent = Instant::now();
    conn.send_media(&ulaw_pattern(3, 6));
    conn.send_mark("a");
    conn.send_media(&ulaw_pattern(2, 7));
    conn.send_mark("b");
    conn.send_mark("c");
    conn.wait_until("marks a, b, c", Duration::from_secs(5), |c| {
        c.marks().len() == 4
    })
    .await;
    assert_eq!(conn.marks(), ["long", "a", "b", "c"]);
    let marks = conn.events("mark");
    assert!(
        marks[1].at - sent >= Duration::from_millis(40),
        "mark a came back after its 60 ms of audio played, not at once ({:?})",
        marks[1].at - sent
    );
    assert!(
        marks[2].at >= marks[1].at + Duration::from_millis(20),
        "b after its own audio"
    );
    conn.close();
    finish(call, "clear call").await;
    phone.stop();
}

/// An unreachable agent gets the INVITE refused with 503 before answering (also when the agent
/// accepts TCP but never completes the upgrade: the connect timeout); with
/// `--agent-unreachable answer-hangup` the call is answered and hung up. Reasons are recorded.
#[tokio::test]
async fn media_agent_unreachable_503_or_answer_hangup() {
    // A port with nothing listening.
    let closed = format!("ws://127.0.0.1:{}/agent", free_port());
    let node = MediaNode::start(&config(&closed, 30, 0), &[])
        .await
        .expect("node");
    Sipp::template("media_uac_rejected.xml", &[("@CODE@", "503")])
        .expect("template")
        .args(["-s", NUMBER, "-mp", &free_port().to_string()])
        .run_client(node.sip, free_port())
        .await
        .expect("sipp runs")
        .assert_success("503 for an unreachable agent");
    assert_eq!(
        node.metric(r#"switchboard_sip_rejected_requests_total{reason="agent_unreachable"}"#)
            .await,
        1.0
    );
    assert_eq!(
        node.metric(r#"switchboard_agent_connect_failures_total{reason="transport"}"#)
            .await,
        1.0
    );
    assert!(node.log().contains("agent unreachable at call set-up"));
    drop(node);

    // An agent that accepts TCP and then says nothing: the connect timeout decides.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let silent_url = format!("ws://{}/agent", silent.local_addr().expect("addr"));
    let hold = tokio::spawn(async move {
        let mut keep = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            keep.push(s);
        }
    });
    let node = MediaNode::start(
        &config(&silent_url, 30, 0),
        &["--agent-connect-timeout-ms", "500"],
    )
    .await
    .expect("node");
    let started = Instant::now();
    Sipp::template("media_uac_rejected.xml", &[("@CODE@", "503")])
        .expect("template")
        .args(["-s", NUMBER, "-mp", &free_port().to_string()])
        .run_client(node.sip, free_port())
        .await
        .expect("sipp runs")
        .assert_success("503 after the connect timeout");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "bounded by the connect timeout"
    );
    assert_eq!(
        node.metric(r#"switchboard_agent_connect_failures_total{reason="timeout"}"#)
            .await,
        1.0
    );
    drop(node);
    hold.abort();

    let node = MediaNode::start(
        &config(&closed, 30, 0),
        &["--agent-unreachable", "answer-hangup"],
    )
    .await
    .expect("node");
    let phone = Phone::start(0, 0xFF).await;
    let call = spawn_bye_call(
        node.sip,
        NUMBER,
        phone.port,
        ("0", "PCMU"),
        "",
        Duration::from_secs(5),
    );
    finish(call, "answered, then BYE for an unreachable agent").await;
    metric_eventually(
        &node,
        r#"switchboard_call_end_reasons_total{reason="agent_unreachable"}"#,
        1.0,
    )
    .await;
    phone.stop();
}

/// RTP that stops hangs the call up with a BYE after the trunk's rtpTimeoutSeconds.
#[tokio::test]
async fn media_rtp_timeout_sends_bye() {
    let agent = TestAgent::start().await.expect("agent");
    let node = MediaNode::start(&config(&agent.url(), 2, 0), &[])
        .await
        .expect("node");
    let phone = Phone::start(0, 0xFF).await;
    let call = spawn_bye_call(
        node.sip,
        NUMBER,
        phone.port,
        ("0", "PCMU"),
        "",
        Duration::from_secs(15),
    );
    let conn = agent.connection(0, Duration::from_secs(10)).await;
    phone.send_audio(&ulaw_pattern(25, 8));
    conn.wait_until("caller audio", Duration::from_secs(5), |c| {
        c.audio().len() >= 25 * FRAME
    })
    .await;
    phone.stop();
    let stopped = phone.last_sent().expect("the phone sent RTP");
    finish(call, "BYE after the RTP timeout").await;
    let waited = stopped.elapsed();
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(6),
        "BYE about 2 s after the last packet, got {waited:?}"
    );
    metric_eventually(
        &node,
        r#"switchboard_call_end_reasons_total{reason="rtp_timeout"}"#,
        1.0,
    )
    .await;
    conn.wait_until("stop to the agent", Duration::from_secs(5), |c| {
        !c.events("stop").is_empty()
    })
    .await;
    assert!(node.log().contains("no RTP from the caller"));
}

/// The number's maxCallDurationSeconds ends the call with a BYE even while audio flows.
#[tokio::test]
async fn media_max_call_duration_sends_bye() {
    let agent = TestAgent::start().await.expect("agent");
    let node = MediaNode::start(&config(&agent.url(), 30, 2), &[])
        .await
        .expect("node");
    let phone = Phone::start(0, 0xFF).await;
    let started = Instant::now();
    let call = spawn_bye_call(
        node.sip,
        NUMBER,
        phone.port,
        ("0", "PCMU"),
        "",
        Duration::from_secs(15),
    );
    phone.send_audio(&ulaw_pattern(10, 2));
    finish(call, "BYE at the maximum duration").await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(6),
        "took {took:?}"
    );
    metric_eventually(
        &node,
        r#"switchboard_call_end_reasons_total{reason="max_duration"}"#,
        1.0,
    )
    .await;
    phone.stop();
}

/// The Python interpreter of the Pipecat venv that scripts/test-deps.sh installs.
fn pipecat_python() -> std::path::PathBuf {
    let cache = std::env::var_os("SWITCHBOARD_CACHE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").expect("HOME"))
                .join(".cache/switchboard")
        });
    let python = cache.join("pipecat-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/test-deps.sh (it installs Pipecat for this test)",
        python.display()
    );
    python
}

/// An agent built on an independent implementation of the protocol, Pipecat's Twilio
/// serializer: it decodes our `start`, `media` and `dtmf` messages, and what it sends (audio
/// converted to μ-law by Pipecat) reaches the caller byte-exact; its closing ends the call.
#[tokio::test]
async fn media_pipecat_agent_end_to_end() {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().expect("tmp");
    let report_path = dir.path().join("report.json");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("agents/pipecat_agent.py");
    let mut agent = tokio::process::Command::new(pipecat_python())
        .arg(&script)
        .arg(&report_path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("starting the Pipecat agent");
    let stdout = agent.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("the Pipecat agent starts within 60 s")
        .expect("read")
        .expect("a READY line");
    let port: u16 = ready
        .strip_prefix("READY ")
        .and_then(|p| p.trim().parse().ok())
        .expect("READY <port>");

    let node = MediaNode::start(&config(&format!("ws://127.0.0.1:{port}/"), 30, 0), &[])
        .await
        .expect("node");
    let phone = Phone::start(0, 0xFF).await;
    let call = spawn_bye_call(
        node.sip,
        NUMBER,
        phone.port,
        ("0", "PCMU"),
        "",
        Duration::from_secs(20),
    );
    let caller_audio = ulaw_pattern(50, 11);
    phone.send_audio(&caller_audio);
    phone.send_dtmf('1');
    // The agent answers the digit with 400 ms of tone: wait until the caller heard it.
    let heard = |p: &[Rtp]| {
        p.iter()
            .filter(|r| r.payload.iter().any(|&b| b != 0xFF))
            .count()
    };
    phone
        .wait_packets("the Pipecat agent's audio", Duration::from_secs(10), |p| {
            heard(p) >= 20
        })
        .await;
    phone.send_dtmf('#');
    finish(call, "BYE after the Pipecat agent closed").await;
    phone.stop();

    let deadline = Instant::now() + Duration::from_secs(10);
    let report: serde_json::Value = loop {
        if let Ok(text) = std::fs::read_to_string(&report_path)
            && let Ok(v) = serde_json::from_str(&text)
        {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "the Pipecat agent wrote no report"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let events: Vec<&str> = report["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e.as_str())
        .collect();
    assert_eq!(events[..2], ["connected", "start"]);
    assert_eq!(
        report["start"]["start"]["customParameters"]["tenant"],
        "acme"
    );
    assert_eq!(
        report["digits"],
        json!(["1", "#"]),
        "each key press once, through Pipecat's parser"
    );
    // Pipecat decoded our media messages to PCM: the caller's audio, sample for sample.
    let pcm = base64_decode(report["caller_pcm"].as_str().expect("pcm"));
    let samples: Vec<i32> = pcm
        .chunks_exact(2)
        .map(|b| i32::from(i16::from_le_bytes([b[0], b[1]])))
        .collect();
    assert!(
        samples.len() >= caller_audio.len(),
        "Pipecat got all the caller's audio"
    );
    for (i, (&u, &s)) in caller_audio.iter().zip(&samples).enumerate() {
        assert_eq!(ulaw_to_linear(u), s, "sample {i} as Pipecat decoded it");
    }
    // What Pipecat serialized reached the caller exactly, on a packet boundary.
    let sent = &report["sent"][0];
    assert_eq!(sent["event"], "media");
    let reply = base64_decode(sent["media"]["payload"].as_str().expect("payload"));
    assert_eq!(reply.len(), 3200, "400 ms of μ-law");
    let bytes: Vec<u8> = phone
        .packets()
        .iter()
        .flat_map(|p| p.payload.clone())
        .collect();
    let found = (0..bytes.len() / FRAME).any(|k| bytes[k * FRAME..].starts_with(&reply));
    assert!(found, "the caller got Pipecat's audio byte-exact");
    metric_eventually(
        &node,
        r#"switchboard_call_end_reasons_total{reason="agent_disconnected"}"#,
        1.0,
    )
    .await;
    let _ = agent.kill().await;
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("base64")
}

/// Hold (the caller's re-INVITE with sendonly makes us recvonly): the node stops sending and
/// does not time out for lack of RTP; on resume the stream continues with the next sequence
/// number, a timestamp advanced by the time on hold and the marker bit.
#[tokio::test]
async fn media_hold_pauses_sending_and_suspends_rtp_timeout() {
    let agent = TestAgent::start().await.expect("agent");
    let node = MediaNode::start(&config(&agent.url(), 2, 0), &[])
        .await
        .expect("node");
    let phone = Phone::start(0, 0xFF).await;
    let sip = node.sip;
    let port = phone.port.to_string();
    let sipp = Sipp::template(
        "media_uac_hold.xml",
        &[
            ("@RTP_PORT@", port.as_str()),
            ("@PT@", "0"),
            ("@CODEC@", "PCMU"),
            ("@TALK_MS@", "1000"),
            ("@HOLD_MS@", "3000"),
            ("@BYE_WITHIN_MS@", "20000"),
        ],
    )
    .expect("template")
    .args(["-s", NUMBER, "-mp", &free_port().to_string()])
    .timeout(Duration::from_secs(40));
    let call = tokio::spawn(async move { sipp.run_client(sip, free_port()).await });
    let conn = agent.connection(0, Duration::from_secs(10)).await;
    // Talk, then fall silent for longer than the 2 s RTP timeout while on hold.
    phone.send_audio(&ulaw_pattern(40, 12));
    phone.pause(Duration::from_millis(3400));
    phone.send_audio(&ulaw_pattern(10, 13));
    // Wait for the stream to come back after the hold, and a second more.
    phone
        .wait_packets("the stream to resume", Duration::from_secs(15), |p| {
            p.windows(2)
                .any(|w| w[1].at - w[0].at > Duration::from_secs(1))
                && p.last()
                    .is_some_and(|l| l.at.elapsed() < Duration::from_millis(200))
                && p.len() >= 150
        })
        .await;
    let pkts = phone.packets();
    let gaps: Vec<usize> = (1..pkts.len())
        .filter(|&i| pkts[i].at - pkts[i - 1].at > Duration::from_millis(500))
        .collect();
    assert_eq!(gaps.len(), 1, "one pause in the node's stream (the hold)");
    let i = gaps[0];
    let (before, after) = (&pkts[i - 1], &pkts[i]);
    let gap = after.at - before.at;
    assert!(
        gap > Duration::from_millis(2500) && gap < Duration::from_millis(3800),
        "nothing sent while on hold ({gap:?})"
    );
    assert_eq!(
        after.seq,
        before.seq.wrapping_add(1),
        "sequence numbers continue"
    );
    assert!(after.marker, "a new talkspurt after the hold");
    let advanced = after.ts.wrapping_sub(before.ts) as f64 / 8000.0;
    assert!(
        (advanced - gap.as_secs_f64()).abs() < 0.1,
        "timestamps kept real time: advanced {advanced:.3}s over {gap:?}"
    );
    assert_continuous_50pps(&pkts[i..], 0);
    conn.close();
    let run = call.await.expect("sipp task").expect("sipp runs");
    run.assert_success("hold and resume, then BYE from the agent closing");
    assert_eq!(
        node.metric(r#"switchboard_call_end_reasons_total{reason="rtp_timeout"}"#)
            .await,
        0.0,
        "no RTP timeout during hold"
    );
    metric_eventually(
        &node,
        r#"switchboard_call_end_reasons_total{reason="agent_disconnected"}"#,
        1.0,
    )
    .await;
    phone.stop();
}

/// A carrier's call context reaches the agent: P-Asserted-Identity, Diversion and every X-
/// header (a repeated one joined) appear in `start.customParameters` as `sip_<Header>` by
/// default; User-to-User only once the trunk lists it in `inbound.passHeaders`, which then
/// replaces the default.
#[tokio::test]
async fn inbound_sip_headers_reach_the_agent_as_custom_parameters() {
    for (pass, want_uui) in [(None, false), (Some(json!(["User-to-User"])), true)] {
        let agent = TestAgent::start().await.expect("agent");
        let mut cfg = config(&agent.url(), 30, 0);
        if let Some(p) = &pass {
            cfg["trunks"][0]["inbound"]["passHeaders"] = json!({"names": p});
        }
        let node = MediaNode::start(&cfg, &[]).await.expect("node");
        Sipp::new(switchboard_tests::sipp::scenario("uac_call_headers.xml"))
            .args(["-s", NUMBER])
            .run_client(node.sip, free_port())
            .await
            .expect("sipp runs")
            .assert_success("a call with carrier headers");
        let conn = agent.connection(0, Duration::from_secs(5)).await;
        conn.wait_until("start", Duration::from_secs(5), |c| {
            !c.events("start").is_empty()
        })
        .await;
        let start = conn.events("start")[0].json.clone();
        let p = &start["start"]["customParameters"];
        if want_uui {
            assert_eq!(p["sip_User-to-User"], "00ff;encoding=hex", "{p}");
            assert!(
                p.get("sip_X-Customer-Id").is_none(),
                "the list replaces the default: {p}"
            );
        } else {
            assert_eq!(
                p["sip_P-Asserted-Identity"], "\"Alice\" <sip:+15551234567@carrier.example>",
                "{p}"
            );
            assert_eq!(
                p["sip_Diversion"],
                "<sip:+15557654321@carrier.example>;reason=no-answer"
            );
            assert_eq!(p["sip_X-Customer-Id"], "42, 43");
            assert_eq!(p["sip_X-Campaign"], "spring");
            assert!(p.get("sip_User-to-User").is_none(), "{p}");
        }
        // The call facts are still there and win.
        assert_eq!(p["direction"], "inbound");
        assert_eq!(p["tenant"], "acme");
    }
}

/// The agent ends the call with the `hangup` extension event: it gets `stop`, the socket
/// closes, the caller gets the node's BYE (and answers it), and the end is counted as the
/// agent's.
#[tokio::test]
async fn the_agent_hangs_up_with_the_hangup_event() {
    let agent = TestAgent::start().await.expect("agent");
    let node = MediaNode::start(&config(&agent.url(), 30, 0), &[])
        .await
        .expect("node");
    let sip = node.sip;
    let caller = tokio::spawn(async move {
        Sipp::new(switchboard_tests::sipp::scenario("drain_uac_wait_bye.xml"))
            .args(["-s", NUMBER])
            .timeout(Duration::from_secs(30))
            .run_client(sip, free_port())
            .await
    });
    let conn = agent.connection(0, Duration::from_secs(10)).await;
    conn.wait_until("start", Duration::from_secs(5), |c| {
        !c.events("start").is_empty()
    })
    .await;
    conn.send_raw(r#"{"event":"hangup","hangup":{"reason":"conversation finished"}}"#);
    conn.wait_until("stop", Duration::from_secs(5), |c| {
        !c.events("stop").is_empty()
    })
    .await;
    let run = caller.await.expect("join").expect("sipp");
    run.assert_success("the caller receives the node's BYE and answers 200");
    assert!(run.messages.contains("BYE sip:"), "{}", run.messages);
    assert_eq!(
        node.metric(r#"switchboard_call_end_reasons_total{reason="agent_hangup"}"#)
            .await,
        1.0
    );
}

/// Digits from the agent (the `dtmf` extension event) reach the caller as RFC 4733 events
/// inside the call's RTP stream: one event per digit, each with the marker on its first
/// packet, one timestamp throughout, a growing duration and the end bit, in order; the audio
/// stream goes on after them without a sequence gap.
#[tokio::test]
async fn agent_dtmf_reaches_the_caller_as_rfc4733_events() {
    let agent = TestAgent::start().await.expect("agent");
    let node = MediaNode::start(&config(&agent.url(), 30, 0), &[])
        .await
        .expect("node");
    let phone = Phone::start(0, 0xFF).await;
    let call = spawn_bye_call(
        node.sip,
        NUMBER,
        phone.port,
        ("0", "PCMU"),
        "",
        Duration::from_secs(6),
    );
    let conn = agent.connection(0, Duration::from_secs(10)).await;
    conn.wait_until("start", Duration::from_secs(5), |c| {
        !c.events("start").is_empty()
    })
    .await;
    phone.send_audio(&ulaw_sine(50, 300.0));
    // Invalid characters are ignored, lower-case letters taken.
    conn.send_raw(r#"{"event":"dtmf","dtmf":{"digits":"1x#d"}}"#);
    phone
        .wait_packets("three events", Duration::from_secs(5), |p| {
            p.iter()
                .filter(|r| r.pt == 101 && r.payload.get(1).is_some_and(|b| b & 0x80 != 0))
                .map(|r| (r.ts, r.payload[0]))
                .collect::<std::collections::BTreeSet<_>>()
                .len()
                >= 3
        })
        .await;
    let _ = call.await;
    let pkts = phone.packets();
    let events: Vec<&switchboard_tests::phone::Rtp> = pkts.iter().filter(|r| r.pt == 101).collect();
    let mut digits = Vec::new();
    for e in &events {
        if e.marker {
            digits.push((e.payload[0], e.ts));
        } else {
            let (code, ts) = *digits.last().expect("an event starts with the marker");
            assert_eq!((e.payload[0], e.ts), (code, ts), "one timestamp per event");
        }
    }
    let codes: Vec<u8> = digits.iter().map(|(c, _)| *c).collect();
    assert_eq!(codes, [1, 11, 15], "1, #, D in order");
    for (code, ts) in &digits {
        let ends = events
            .iter()
            .filter(|e| e.ts == *ts && e.payload[0] == *code && e.payload[1] & 0x80 != 0)
            .count();
        assert_eq!(ends, 3, "the end packet three times (RFC 4733 2.5.1.4)");
        let longest = events
            .iter()
            .filter(|e| e.ts == *ts)
            .map(|e| u16::from_be_bytes([e.payload[2], e.payload[3]]))
            .max();
        assert_eq!(longest, Some(800), "100 ms at 8 kHz");
    }
    // One sequence space with the audio: no gaps from first to last packet of the call.
    let mut seqs: Vec<u16> = pkts.iter().map(|r| r.seq).collect();
    seqs.dedup();
    for w in seqs.windows(2) {
        assert_eq!(w[1], w[0].wrapping_add(1), "sequence continues");
    }
}
