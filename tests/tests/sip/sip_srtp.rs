//! Encrypted calls against baresip (its `srtp` module, libsrtp underneath): SRTP with SDES
//! keys on a trunk whose `media.encryption` is `required`, inbound (baresip calls) and
//! outbound (the node calls baresip in auto-answer), audio both ways through the agent;
//! plain offers, SRTP offers to a plain trunk and keys over unencrypted signalling refused
//! with 488.
//!
//! The UDP tests' trunks set `allowSdesWithoutTls` (without it the keys are refused, as one
//! test shows); the TLS tests carry the keys over SIP over TLS, inbound and outbound, with
//! certificate verification, failover on a bad certificate and mutual TLS.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use switchboard_tests::agent::TestAgent;
use switchboard_tests::node::{MediaNode, free_port_pair};
use switchboard_tests::phone::ulaw_pattern;

fn config(agent_url: &str, encryption: &str, allow_insecure_keys: bool) -> serde_json::Value {
    json!({
        "version": "1",
        "trunks": [{
            "id": "demo/carrier",
            "enabled": true,
            "inbound": {"enabled": true, "allowedSources": ["127.0.0.1/32"]},
            "media": {
                "codecs": ["CODEC_PCMU"],
                "encryption": encryption,
                "allowSdesWithoutTls": allow_insecure_keys
            }
        }],
        "numbers": [{
            "id": "demo/n", "e164": "+15550001111", "trunkId": "demo/carrier", "inbound": true,
            "agent": {"url": agent_url}
        }]
    })
}

/// Runs baresip dialling the node for `secs` seconds; `mediaenc` is its account's media
/// encryption (`srtp-mand`, `srtp` or none). Returns its output; what it heard (decoded) is
/// in `dir/*-dec.wav` (the sndfile module).
async fn baresip_call(dir: &Path, node: &MediaNode, mediaenc: Option<&str>, secs: u32) -> String {
    let enc = mediaenc
        .map(|m| format!(";mediaenc={m}"))
        .unwrap_or_default();
    baresip_files(
        dir,
        free_port_pair(),
        &format!("<sip:caller@127.0.0.1>;regint=0{enc}"),
    );
    let child = tokio::process::Command::new("baresip")
        .arg("-f")
        .arg(dir)
        .args([
            "-e",
            &format!("/dial sip:+15550001111@{}", node.sip),
            "-t",
            &secs.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("baresip installed (scripts/test-deps.sh)");
    let out = tokio::time::timeout(
        Duration::from_secs(u64::from(secs) + 30),
        child.wait_with_output(),
    )
    .await
    .expect("baresip exits")
    .expect("baresip output");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Writes baresip's config into `dir`, listening on `port`, and its account.
fn baresip_files(dir: &Path, port: u16, account: &str) {
    let play = dir.join("play.wav");
    // ausine only produces 48 kHz stereo; baresip resamples to PCMU.
    let cfg = format!(
        "poll_method epoll\nsip_listen 127.0.0.1:{port}\nsip_trans_def udp\naudio_player aufile,{p}\naudio_alert aufile,{p}\n\
         audio_source ausine,440\nausrc_srate 48000\nauplay_srate 48000\nausrc_channels 2\nauplay_channels 2\n\
         module_path /usr/lib/baresip/modules\nmodule g711.so\nmodule ausine.so\nmodule aufile.so\nmodule srtp.so\n\
         module sndfile.so\nsnd_path {d}\nmodule_app account.so\nmodule_app menu.so\n",
        p = play.display(),
        d = dir.display()
    );
    std::fs::write(dir.join("config"), cfg).expect("config");
    std::fs::write(dir.join("accounts"), format!("{account}\n")).expect("accounts");
}

/// Adds baresip's UDP console (`cons` module) on `port`: commands such as `/sndcode 1`
/// (RFC 4733 digits in the call) sent there as datagrams.
fn baresip_console(dir: &Path, port: u16) {
    let path = dir.join("config");
    let mut cfg = std::fs::read_to_string(&path).expect("config");
    cfg.push_str(&format!("module cons.so\ncons_listen 127.0.0.1:{port}\n"));
    std::fs::write(path, cfg).expect("config");
}

/// Whether something listens on UDP `port` (IPv4), from /proc/net/udp.
fn udp_bound(port: u16) -> bool {
    let needle = format!(":{port:04X} ");
    std::fs::read_to_string("/proc/net/udp")
        .map(|t| {
            t.lines().skip(1).any(|l| {
                l.split_whitespace()
                    .nth(1)
                    .is_some_and(|a| format!("{a} ").contains(&needle))
            })
        })
        .unwrap_or(false)
}

/// What baresip heard, decoded (the sndfile module's `*-dec.wav` in `dir`).
fn heard(dir: &Path) -> Vec<i16> {
    std::fs::read_dir(dir)
        .expect("dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.to_string_lossy().ends_with("-dec.wav"))
        .map(|p| wav_samples(&p))
        .unwrap_or_default()
}

/// The 16-bit PCM samples of a WAV file (data chunk only).
fn wav_samples(path: &Path) -> Vec<i16> {
    let bytes = std::fs::read(path).unwrap_or_default();
    let Some(at) = bytes.windows(4).position(|w| w == b"data") else {
        return Vec::new();
    };
    bytes
        .get(at + 8..)
        .unwrap_or_default()
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect()
}

#[tokio::test]
async fn srtp_call_from_baresip_carries_audio_both_ways() {
    let agent = TestAgent::start().await.expect("agent");
    let node = MediaNode::start(
        &config(&agent.url(), "MEDIA_ENCRYPTION_REQUIRED", true),
        &[],
    )
    .await
    .expect("node starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let call = {
        let dir = dir.path().to_owned();
        let node_ref = &node;
        async move { baresip_call(&dir, node_ref, Some("srtp-mand"), 6).await }
    };
    let speak = async {
        let conn = agent.connection(0, Duration::from_secs(15)).await;
        conn.wait_until("the call's start", Duration::from_secs(10), |c| {
            !c.stream_sid().is_empty()
        })
        .await;
        // Two seconds of a loud pattern for baresip to hear.
        conn.send_media(&ulaw_pattern(100, 7));
        // The caller's 440 Hz tone arrives decrypted: many distinct μ-law values, not the
        // one or two of silence (or of garbage that never authenticated: nothing at all).
        conn.wait_until("the caller's audio", Duration::from_secs(10), |c| {
            let audio = c.audio();
            let mut seen = [false; 256];
            audio.iter().for_each(|b| seen[usize::from(*b)] = true);
            audio.len() >= 8000 && seen.iter().filter(|s| **s).count() > 20
        })
        .await;
        conn
    };
    let (text, conn) = tokio::join!(call, speak);
    assert!(
        text.contains("Call established"),
        "baresip did not establish the call:\n{text}\nnode log:\n{}",
        node.log()
    );
    assert!(
        !conn.events("start").is_empty(),
        "the agent's session started"
    );
    // What baresip heard (decrypted by libsrtp) is the agent's audio, not silence.
    let heard = heard(dir.path());
    let loud = heard.iter().filter(|s| s.unsigned_abs() > 2000).count();
    assert!(
        loud > 4800,
        "baresip heard {loud} loud samples of {}; node log:\n{}",
        heard.len(),
        node.log()
    );
    let drops = |reason: &'static str| {
        let node = &node;
        async move {
            node.metric(&format!(
                r#"switchboard_rtp_packets_dropped_total{{reason="{reason}"}}"#
            ))
            .await
        }
    };
    assert_eq!(
        drops("srtp_auth").await,
        0.0,
        "packets failed authentication on a clean call; node log:\n{}",
        node.log()
    );
    // baresip sends one plaintext RTCP APP "PING" when the call starts (too short for
    // SRTCP, so dropped as srtp_other) and may repeat an RTCP packet on its other port (a
    // replay); anything more is a bug.
    let other = drops("srtp_other").await + drops("srtp_replay").await;
    assert!(
        other <= 2.0,
        "{other} SRTP drops; node log:\n{}",
        node.log()
    );
    assert!(
        node.metric("switchboard_rtp_packets_received_total").await >= 200.0,
        "the caller's RTP reached the node decrypted"
    );
}

/// baresip (with `mediaenc`) calls a trunk with `encryption`: the call is refused with 488,
/// counted under `reason`, and no agent session starts.
async fn refused_with_488(
    encryption: &str,
    allow_insecure_keys: bool,
    mediaenc: Option<&str>,
    reason: &str,
) {
    let agent = TestAgent::start().await.expect("agent");
    let node = MediaNode::start(&config(&agent.url(), encryption, allow_insecure_keys), &[])
        .await
        .expect("node starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let text = baresip_call(dir.path(), &node, mediaenc, 2).await;
    assert!(
        !text.contains("Call established"),
        "the call was established:\n{text}"
    );
    assert_eq!(
        node.metric(&format!(
            r#"switchboard_sip_rejected_requests_total{{reason="{reason}"}}"#
        ))
        .await,
        1.0,
        "{text}"
    );
    assert_eq!(
        agent.connections(),
        0,
        "no agent session for a refused call"
    );
}

#[tokio::test]
async fn plain_offer_to_a_trunk_requiring_srtp_gets_488() {
    refused_with_488("MEDIA_ENCRYPTION_REQUIRED", true, None, "srtp_required").await;
}

#[tokio::test]
async fn srtp_keys_over_plain_signalling_are_refused_unless_the_trunk_allows_it() {
    refused_with_488(
        "MEDIA_ENCRYPTION_REQUIRED",
        false,
        Some("srtp-mand"),
        "sdes_insecure",
    )
    .await;
}

#[tokio::test]
async fn srtp_offer_to_a_trunk_without_encryption_gets_488() {
    refused_with_488(
        "MEDIA_ENCRYPTION_DISABLED",
        false,
        Some("srtp-mand"),
        "srtp_disabled",
    )
    .await;
}

/// The node calls baresip (auto-answer, `srtp-mand`) through a trunk that requires SRTP:
/// our offer is RTP/SAVP with a key, baresip answers with its own, audio flows both ways.
#[tokio::test]
async fn outbound_srtp_call_to_baresip_carries_audio_both_ways() {
    let agent = TestAgent::start().await.expect("agent");
    let port = free_port_pair();
    let cfg = json!({
        "version": "1",
        "trunks": [{
            "id": "demo/carrier", "enabled": true,
            "outbound": {"enabled": true, "gateways": [
                {"host": "127.0.0.1", "port": port, "transport": "TRANSPORT_UDP", "priority": 1, "weight": 1}
            ]},
            "media": {"codecs": ["CODEC_PCMU"], "encryption": "MEDIA_ENCRYPTION_REQUIRED", "allowSdesWithoutTls": true}
        }],
        "numbers": [{
            "id": "demo/caller", "e164": "+15550001111", "trunkId": "demo/carrier", "outbound": true,
            "agent": {"url": agent.url()}
        }]
    });
    let node = MediaNode::start(&cfg, &["--debug-routes"])
        .await
        .expect("node starts");
    let dir = tempfile::tempdir().expect("tempdir");
    baresip_files(
        dir.path(),
        port,
        "<sip:15557654321@127.0.0.1>;regint=0;answermode=auto;mediaenc=srtp-mand",
    );
    let baresip = tokio::process::Command::new("baresip")
        .arg("-f")
        .arg(dir.path())
        .args(["-t", "10"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("baresip installed (scripts/test-deps.sh)");
    switchboard_tests::poll::eventually("baresip listening", Duration::from_secs(10), || async {
        if udp_bound(port) {
            Ok(())
        } else {
            Err("not yet".to_string())
        }
    })
    .await;
    let (status, body) = node
        .http(
            "POST",
            "/debug/dial",
            Some(&json!({"number_id": "demo/caller", "to": "+1 555 765 4321"})),
        )
        .await
        .expect("dial request");
    assert_eq!(status, 200, "{body}");
    let outcome: serde_json::Value = serde_json::from_str(&body).expect("dial outcome JSON");
    assert_eq!(
        outcome["outcome"],
        "answered",
        "{outcome}\nnode log:\n{}",
        node.log()
    );
    let conn = agent.connection(0, Duration::from_secs(10)).await;
    conn.wait_until("the call's start", Duration::from_secs(10), |c| {
        !c.stream_sid().is_empty()
    })
    .await;
    conn.send_media(&ulaw_pattern(100, 3));
    // Two seconds of baresip's audio: by then it has heard the agent's two seconds too.
    conn.wait_until("baresip's audio, decrypted", Duration::from_secs(10), |c| {
        let audio = c.audio();
        let mut seen = [false; 256];
        audio.iter().for_each(|b| seen[usize::from(*b)] = true);
        audio.len() >= 16000 && seen.iter().filter(|s| **s).count() > 20
    })
    .await;
    let call_id = outcome["call_id"].as_str().expect("call_id");
    let (status, _) = node
        .http("POST", "/debug/hangup", Some(&json!({"call_id": call_id})))
        .await
        .expect("hangup");
    assert_eq!(status, 202);
    let out = tokio::time::timeout(Duration::from_secs(30), baresip.wait_with_output())
        .await
        .expect("baresip exits")
        .expect("baresip output");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let loud = heard(dir.path())
        .iter()
        .filter(|s| s.unsigned_abs() > 2000)
        .count();
    assert!(
        loud > 4800,
        "baresip heard {loud} loud samples:\n{text}\nnode log:\n{}",
        node.log()
    );
    assert_eq!(
        node.metric(r#"switchboard_rtp_packets_dropped_total{reason="srtp_auth"}"#)
            .await,
        0.0
    );
}

/// A raw caller with a key of its own: the caller's audio (byte-exact) and a DTMF press
/// reach the agent, the agent's audio comes back byte-exact once decrypted and never in
/// plaintext on the wire, a tampered packet, a replayed one and a plain RTP packet are
/// dropped and counted, and a re-INVITE with a new key rekeys both directions.
#[tokio::test]
async fn srtp_media_is_byte_exact_encrypted_on_the_wire_and_tampering_is_counted() {
    use switchboard_media_node::media::srtp::{MasterKey, Session, Suite};
    use switchboard_media_node::sdes;
    use switchboard_media_node::sdp::Sdp;
    use switchboard_tests::node::{RawSip, header_of, status_of};
    use switchboard_tests::phone::rtp_packet;

    let agent = TestAgent::start().await.expect("agent");
    let node = MediaNode::start(
        &config(&agent.url(), "MEDIA_ENCRYPTION_REQUIRED", true),
        &[],
    )
    .await
    .expect("node starts");
    let raw = RawSip::new(node.sip).await.expect("sip socket");
    let rtp = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("rtp");
    let rtp_port = rtp.local_addr().expect("addr").port();
    let ours = MasterKey::random(Suite::AesCm128HmacSha1_80);
    let sdp = format!(
        "v=0\r\no=raw 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {rtp_port} RTP/SAVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
         a=fmtp:101 0-16\r\n{}a=ptime:20\r\na=sendrecv\r\n",
        sdes::line(5, &ours)
    );
    let (local, to_node) = (raw.local(), raw.node);
    let invite = format!(
        "INVITE sip:+15550001111@{to_node} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-srtp-inv\r\n\
         From: <sip:raw@{local}>;tag=rawtag\r\nTo: <sip:+15550001111@{to_node}>\r\nCall-ID: srtp-raw\r\n\
         CSeq: 1 INVITE\r\nContact: <sip:raw@{local}>\r\nMax-Forwards: 70\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    );
    raw.send(invite.as_bytes()).await;
    let mut seen = Vec::new();
    let ok = raw
        .recv_until(Duration::from_secs(10), &mut seen, |m| {
            status_of(m).is_some_and(|c| c >= 200)
        })
        .await
        .unwrap_or_else(|| panic!("no final response; saw {seen:?}"));
    assert_eq!(status_of(&ok), Some(200), "{ok}");
    let body = ok.split("\r\n\r\n").nth(1).expect("SDP body");
    let answer = Sdp::parse(body).expect("answer parses");
    let audio = answer.audio().expect("audio");
    assert_eq!(audio.proto, "RTP/SAVP", "{body}");
    let theirs = sdes::choose(&audio.crypto).expect("the node's key");
    assert_eq!(theirs.tag, 5, "the answer echoes our tag");
    assert_ne!(
        theirs.key.key_salt(),
        ours.key_salt(),
        "the node has its own key"
    );
    let node_rtp = std::net::SocketAddr::new(audio.addr.expect("c= address"), audio.port);
    let to_hdr = header_of(&ok, "To").expect("To").to_owned();
    let ack = format!(
        "ACK sip:+15550001111@{to_node} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-srtp-ack\r\n\
         From: <sip:raw@{local}>;tag=rawtag\r\nTo: {to_hdr}\r\nCall-ID: srtp-raw\r\nCSeq: 1 ACK\r\n\
         Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    raw.send(ack.as_bytes()).await;

    let mut session = Session::new(&ours, theirs.key.clone()).expect("session");
    let caller_audio = ulaw_pattern(50, 11);
    let mut interval = tokio::time::interval(Duration::from_millis(20));
    let mut sent: Vec<Vec<u8>> = Vec::new();
    for (i, frame) in caller_audio.chunks(160).enumerate() {
        interval.tick().await;
        let seq = 1000 + i as u16;
        let plain = rtp_packet(i == 0, 0, seq, 160 * i as u32, 0x5eed, frame);
        let wire = session.protect_rtp(&plain).expect("protect");
        if i == 10 {
            // A tampered copy (sent first: a replayed sequence number is refused before
            // authentication, RFC 3711 3.3), a replay and a plain packet: none may reach
            // the agent.
            let mut bad = wire.to_vec();
            bad[20] ^= 0x40;
            rtp.send_to(&bad, node_rtp).await.expect("send");
            rtp.send_to(&wire, node_rtp).await.expect("send");
            rtp.send_to(&sent[5], node_rtp).await.expect("send");
            let plain = rtp_packet(
                false,
                0,
                seq + 1,
                160 * (i as u32 + 1),
                0x5eed,
                &[0x11; 160],
            );
            rtp.send_to(&plain, node_rtp).await.expect("send");
        } else {
            rtp.send_to(&wire, node_rtp).await.expect("send");
        }
        sent.push(wire.to_vec());
    }
    let conn = agent.connection(0, Duration::from_secs(10)).await;
    conn.wait_until(
        "the caller's audio, byte-exact",
        Duration::from_secs(10),
        |c| {
            c.audio()
                .windows(caller_audio.len())
                .any(|w| w == caller_audio)
        },
    )
    .await;
    assert!(
        !conn.audio().windows(160).any(|w| w == [0x11; 160]),
        "the plain packet reached the agent"
    );
    // DTMF (RFC 4733) inside SRTP: one press of 7, three updates and three final packets.
    // A timestamp after the audio (50 frames of 160 samples).
    let ts = 160 * 60;
    for (k, (duration, end)) in [
        (160u16, false),
        (320, false),
        (480, false),
        (640, true),
        (640, true),
        (640, true),
    ]
    .into_iter()
    .enumerate()
    {
        interval.tick().await;
        let payload = [
            7u8,
            if end { 0x80 | 10 } else { 10 },
            (duration >> 8) as u8,
            duration as u8,
        ];
        let pkt = rtp_packet(k == 0, 101, 1100 + k as u16, ts, 0x5eed, &payload);
        let wire = session.protect_rtp(&pkt).expect("protect");
        rtp.send_to(&wire, node_rtp).await.expect("send");
    }
    conn.wait_until("the DTMF digit", Duration::from_secs(5), |c| {
        c.digits() == "7"
    })
    .await;

    // The agent speaks; what arrives here is SRTP that decrypts to exactly its audio.
    let agent_audio = ulaw_pattern(25, 99);
    conn.send_media(&agent_audio);
    let mut wire_bytes = Vec::new();
    let mut decrypted = Vec::new();
    let mut buf = [0u8; 2048];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !decrypted
        .windows(agent_audio.len())
        .any(|w| w == agent_audio)
    {
        let (n, _) = tokio::time::timeout_at(deadline, rtp.recv_from(&mut buf))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the agent's audio never came back; node log:\n{}",
                    node.log()
                )
            })
            .expect("recv");
        let packet = &buf[..n];
        if packet.get(1).is_some_and(|pt| (200..=204).contains(pt)) {
            continue; // SRTCP
        }
        wire_bytes.extend_from_slice(packet);
        let plain = session
            .unprotect_rtp(packet)
            .expect("the node's SRTP authenticates");
        decrypted.extend_from_slice(&plain[12..]);
    }
    assert!(
        !wire_bytes
            .windows(16)
            .any(|w| agent_audio.windows(16).any(|a| a == w)),
        "the agent's audio is visible in plaintext on the wire"
    );

    let drops = |reason: &'static str| {
        let node = &node;
        async move {
            node.metric(&format!(
                r#"switchboard_rtp_packets_dropped_total{{reason="{reason}"}}"#
            ))
            .await
        }
    };
    assert_eq!(
        drops("srtp_auth").await,
        2.0,
        "the tampered and the plain packet"
    );
    assert_eq!(drops("srtp_replay").await, 1.0, "the replayed packet");

    // Rekey: a re-INVITE with a new key of ours gets a new key of the node's; audio under
    // the new keys flows, packets under the old key are refused.
    let ours2 = MasterKey::random(Suite::AesCm128HmacSha1_80);
    let sdp2 = sdp.replace("o=raw 1 1", "o=raw 1 2").replace(
        sdes::line(5, &ours).as_str(),
        sdes::line(5, &ours2).as_str(),
    );
    let reinvite = invite
        .replace("z9hG4bK-srtp-inv", "z9hG4bK-srtp-reinv")
        .replace("CSeq: 1 INVITE", "CSeq: 2 INVITE")
        .replace(
            &format!("To: <sip:+15550001111@{to_node}>"),
            &format!("To: {to_hdr}"),
        )
        .replace(&sdp, &sdp2);
    raw.send(reinvite.as_bytes()).await;
    let ok2 = raw
        .recv_until(Duration::from_secs(10), &mut seen, |m| {
            status_of(m).is_some_and(|c| c >= 200) && m.contains("CSeq: 2 INVITE")
        })
        .await
        .unwrap_or_else(|| panic!("no answer to the re-INVITE; saw {seen:?}"));
    assert_eq!(status_of(&ok2), Some(200), "{ok2}");
    let answer2 = Sdp::parse(ok2.split("\r\n\r\n").nth(1).expect("SDP")).expect("parses");
    let theirs2 = sdes::choose(&answer2.audio().expect("audio").crypto).expect("a key");
    assert_ne!(theirs2.key, theirs.key, "a new key answers a rekey");
    raw.send(
        ack.replace("z9hG4bK-srtp-ack", "z9hG4bK-srtp-ack2")
            .replace("CSeq: 1 ACK", "CSeq: 2 ACK")
            .as_bytes(),
    )
    .await;
    let mut old = session;
    let mut session = Session::new(&ours2, theirs2.key.clone()).expect("session");
    let after = ulaw_pattern(25, 21);
    for (i, frame) in after.chunks(160).enumerate() {
        interval.tick().await;
        let seq = 2000 + i as u16;
        let plain = rtp_packet(i == 0, 0, seq, 160 * (100 + i as u32), 0x5eed, frame);
        if i == 3 {
            let stale = old
                .protect_rtp(&rtp_packet(false, 0, seq, 0, 0x5eed, &[0x22; 160]))
                .expect("protect");
            rtp.send_to(&stale, node_rtp).await.expect("send");
        }
        let wire = session.protect_rtp(&plain).expect("protect");
        rtp.send_to(&wire, node_rtp).await.expect("send");
    }
    conn.wait_until("audio under the new keys", Duration::from_secs(10), |c| {
        c.audio().windows(after.len()).any(|w| w == after)
    })
    .await;
    assert_eq!(
        drops("srtp_auth").await,
        3.0,
        "the packet under the old key; log:\n{}",
        node.log()
    );
    // And the node sends under its new key.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (n, _) = tokio::time::timeout_at(deadline, rtp.recv_from(&mut buf))
            .await
            .expect("the node's RTP under the new key")
            .expect("recv");
        if buf.get(1).is_some_and(|pt| (200..=204).contains(pt)) {
            continue;
        }
        if session.unprotect_rtp(&buf[..n]).is_ok() {
            break;
        }
    }
    let bye = format!(
        "BYE sip:+15550001111@{to_node} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-srtp-bye\r\n\
         From: <sip:raw@{local}>;tag=rawtag\r\nTo: {to_hdr}\r\nCall-ID: srtp-raw\r\nCSeq: 3 BYE\r\n\
         Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    raw.send(bye.as_bytes()).await;
}

/// A self-signed certificate for the node's TLS listener, written into `dir`.
fn node_certificate(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let key = rcgen::KeyPair::generate().expect("key");
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("params");
    let cert = params.self_signed(&key).expect("cert");
    let (c, k) = (dir.join("node.crt"), dir.join("node.key"));
    std::fs::write(&c, cert.pem()).expect("write");
    std::fs::write(&k, key.serialize_pem()).expect("write");
    (c, k)
}

/// A caller that uses SIPS (RFC 5630): a `sips:` INVITE over TLS is answered with a `sips:`
/// Contact (RFC 3261 12.1.1) and the dialog works (BYE answered); the same INVITE over plain
/// UDP is refused with 416, since SIPS promises TLS on every hop.
#[tokio::test]
async fn a_sips_call_over_tls_gets_a_sips_contact_and_sips_over_udp_is_refused() {
    use switchboard_tests::node::{RawSip, header_of, status_of};
    use switchboard_tests::tls::TlsSipClient;
    let agent = TestAgent::start().await.expect("agent");
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = node_certificate(dir.path());
    let tls: std::net::SocketAddr = format!("127.0.0.1:{}", switchboard_tests::node::free_port())
        .parse()
        .expect("addr");
    let node = MediaNode::start(
        &config(&agent.url(), "MEDIA_ENCRYPTION_OPTIONAL", false),
        &[
            "--tls-cert",
            &cert.display().to_string(),
            "--tls-key",
            &key.display().to_string(),
            "--tls-bind",
            &tls.to_string(),
        ],
    )
    .await
    .expect("node starts");
    let sdp = "v=0\r\no=raw 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
               m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n";
    let invite = |via: &str, local: std::net::SocketAddr, to: std::net::SocketAddr, id: &str| {
        format!(
            "INVITE sips:+15550001111@{to} SIP/2.0\r\nVia: SIP/2.0/{via} {local};branch=z9hG4bK-{id}\r\n\
             From: <sips:raw@{local}>;tag=t-{id}\r\nTo: <sips:+15550001111@{to}>\r\nCall-ID: {id}\r\n\
             CSeq: 1 INVITE\r\nContact: <sips:raw@{local}>\r\nMax-Forwards: 70\r\n\
             Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        )
    };

    let mut c = TlsSipClient::connect(tls).await.expect("TLS connection");
    let local = c.local();
    c.send(&invite("TLS", local, tls, "sips-tls"))
        .await
        .expect("send");
    let ok = loop {
        let m = c
            .next_message(Duration::from_secs(10))
            .await
            .expect("a response over the connection");
        if status_of(&m).is_some_and(|code| code >= 200) {
            break m;
        }
    };
    assert_eq!(status_of(&ok), Some(200), "{ok}");
    let contact = header_of(&ok, "Contact").expect("Contact");
    assert!(
        contact.starts_with("<sips:") && !contact.contains("transport="),
        "a SIPS Contact without transport=tls: {contact}"
    );
    let to = header_of(&ok, "To").expect("To");
    let target = contact
        .trim_start_matches('<')
        .split('>')
        .next()
        .expect("uri");
    c.send(&format!(
        "ACK {target} SIP/2.0\r\nVia: SIP/2.0/TLS {local};branch=z9hG4bK-sips-ack\r\n\
         From: <sips:raw@{local}>;tag=t-sips-tls\r\nTo: {to}\r\nCall-ID: sips-tls\r\n\
         CSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ))
    .await
    .expect("ACK");
    c.send(&format!(
        "BYE {target} SIP/2.0\r\nVia: SIP/2.0/TLS {local};branch=z9hG4bK-sips-bye\r\n\
         From: <sips:raw@{local}>;tag=t-sips-tls\r\nTo: {to}\r\nCall-ID: sips-tls\r\n\
         CSeq: 2 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ))
    .await
    .expect("BYE");
    let bye_ok = loop {
        let m = c
            .next_message(Duration::from_secs(10))
            .await
            .expect("the BYE's answer");
        if header_of(&m, "CSeq").is_some_and(|v| v.ends_with("BYE")) {
            break m;
        }
    };
    assert_eq!(status_of(&bye_ok), Some(200), "{bye_ok}");

    let raw = RawSip::new(node.sip).await.expect("sip socket");
    raw.send(invite("UDP", raw.local(), node.sip, "sips-udp").as_bytes())
        .await;
    let mut seen = Vec::new();
    let refused = raw
        .recv_until(Duration::from_secs(10), &mut seen, |m| {
            status_of(m).is_some_and(|code| code >= 200)
        })
        .await
        .unwrap_or_else(|| panic!("no final response; saw {seen:?}"));
    assert_eq!(status_of(&refused), Some(416), "{refused}");
    assert_eq!(
        node.metric(r#"switchboard_sip_rejected_requests_total{reason="sips_without_tls"}"#)
            .await,
        1.0
    );
}

/// baresip calls over SIP over TLS with mandatory SRTP, to a trunk that does not allow
/// keys over plain signalling: TLS carries the keys, the call is answered, audio flows both
/// ways and baresip's BYE ends it.
#[tokio::test]
async fn srtp_call_over_tls_from_baresip() {
    let agent = TestAgent::start().await.expect("agent");
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = node_certificate(dir.path());
    let tls_port = switchboard_tests::node::free_port();
    let tls_bind = format!("127.0.0.1:{tls_port}");
    let node = MediaNode::start(
        &config(&agent.url(), "MEDIA_ENCRYPTION_REQUIRED", false),
        &[
            "--tls-cert",
            &cert.display().to_string(),
            "--tls-key",
            &key.display().to_string(),
            "--tls-bind",
            &tls_bind,
        ],
    )
    .await
    .expect("node starts");
    let phone = dir.path().join("baresip");
    std::fs::create_dir(&phone).expect("dir");
    baresip_files(
        &phone,
        free_port_pair(),
        "<sip:caller@127.0.0.1;transport=tls>;regint=0;mediaenc=srtp-mand",
    );
    let console_port = switchboard_tests::node::free_port();
    baresip_console(&phone, console_port);
    let call = async {
        let child = tokio::process::Command::new("baresip")
            .arg("-f")
            .arg(&phone)
            .args([
                "-e",
                &format!("/dial sip:+15550001111@{tls_bind};transport=tls"),
                "-t",
                "6",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("baresip installed (scripts/test-deps.sh)");
        let out = tokio::time::timeout(Duration::from_secs(40), child.wait_with_output())
            .await
            .expect("baresip exits")
            .expect("baresip output");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let speak = async {
        let conn = agent.connection(0, Duration::from_secs(15)).await;
        conn.wait_until("the call's start", Duration::from_secs(10), |c| {
            !c.stream_sid().is_empty()
        })
        .await;
        conn.send_media(&ulaw_pattern(100, 5));
        // Digits typed on baresip's console go out as RFC 4733 events, inside SRTP; one
        // command per digit, each once the previous one arrived (baresip drops digits typed
        // faster than it sends them).
        let console = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("console socket");
        let mut want = String::new();
        for d in ['1', '9', '#'] {
            console
                .send_to(
                    format!("/sndcode {d}\n").as_bytes(),
                    ("127.0.0.1", console_port),
                )
                .await
                .expect("console command");
            want.push(d);
            conn.wait_until(&format!("digits {want}"), Duration::from_secs(5), |c| {
                c.digits() == want
            })
            .await;
        }
        conn.wait_until("the caller's audio", Duration::from_secs(10), |c| {
            c.audio().len() >= 8000
        })
        .await;
    };
    let (text, ()) = tokio::join!(call, speak);
    assert!(
        text.contains("Call established"),
        "baresip did not establish the call over TLS:\n{text}\nnode log:\n{}",
        node.log()
    );
    let loud = heard(&phone)
        .iter()
        .filter(|s| s.unsigned_abs() > 2000)
        .count();
    assert!(loud > 4800, "baresip heard {loud} loud samples:\n{text}");
    assert_eq!(
        node.metric(
            r#"switchboard_sip_calls_total{code="200",direction="inbound",result="answered"}"#
        )
        .await,
        1.0
    );
    // The keys can only have been accepted over TLS (the trunk refuses them otherwise), and
    // the TLS connection baresip used is closed now that it quit.
    switchboard_tests::poll::eventually(
        "the TLS connection closed",
        Duration::from_secs(10),
        || async {
            let closed = node
                .metric(r#"switchboard_sip_tls_closed_total{reason="peer_closed"}"#)
                .await;
            if closed >= 1.0 {
                Ok(())
            } else {
                Err(format!("{closed}"))
            }
        },
    )
    .await;
    assert_eq!(
        node.metric(r#"switchboard_sip_tls_closed_total{reason="tls_handshake_failed"}"#)
            .await,
        0.0
    );
}

/// A private CA and a certificate it signed for `names` (IP addresses or DNS names), as
/// baresip's `sip_certificate` wants it (certificate then key, one file).
fn carrier_certificate(dir: &Path, names: &[&str]) -> (String, std::path::PathBuf) {
    let ca = switchboard_tests::tls::TestCa::new();
    let path = dir.join("carrier.pem");
    std::fs::write(&path, ca.issue(names).combined_pem()).expect("write");
    (ca.pem().to_string(), path)
}

fn tls_trunk(agent_url: &str, gateways: serde_json::Value, ca_pem: &str) -> serde_json::Value {
    json!({
        "version": "1",
        "trunks": [{
            "id": "demo/carrier", "enabled": true,
            "outbound": {"enabled": true, "gateways": gateways, "tls": {"caPem": ca_pem}},
            "media": {"codecs": ["CODEC_PCMU"], "encryption": "MEDIA_ENCRYPTION_REQUIRED"}
        }],
        "numbers": [{
            "id": "demo/caller", "e164": "+15550001111", "trunkId": "demo/carrier", "outbound": true,
            "agent": {"url": agent_url}
        }]
    })
}

/// Starts baresip in auto-answer with a TLS certificate (it listens for TLS on `port + 1`).
fn baresip_tls_uas(dir: &Path, port: u16, cert: &Path) -> tokio::process::Child {
    baresip_files(
        dir,
        port,
        "<sip:15557654321@127.0.0.1>;regint=0;answermode=auto;mediaenc=srtp-mand",
    );
    let mut cfg = std::fs::read_to_string(dir.join("config")).expect("config");
    cfg.push_str(&format!("sip_certificate {}\n", cert.display()));
    std::fs::write(dir.join("config"), cfg).expect("config");
    tokio::process::Command::new("baresip")
        .arg("-f")
        .arg(dir)
        .args(["-t", "10"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("baresip installed (scripts/test-deps.sh)")
}

fn tcp_bound(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

async fn dial(node: &MediaNode) -> serde_json::Value {
    let (status, body) = node
        .http(
            "POST",
            "/debug/dial",
            Some(&json!({"number_id": "demo/caller", "to": "+1 555 765 4321"})),
        )
        .await
        .expect("dial request");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("dial outcome JSON")
}

/// Optional encryption: our offer carries a key (RTP/AVP with `a=crypto`); a carrier that
/// refuses it with 488 gets the INVITE again without the key (same Call-ID, next CSeq) and
/// the call is answered in plain RTP. SIPp checks both offers.
#[tokio::test]
async fn an_optional_srtp_offer_refused_with_488_is_retried_in_plain_rtp() {
    let agent = TestAgent::start().await.expect("agent");
    let gw = switchboard_tests::node::free_port();
    let carrier = switchboard_tests::sipp::Sipp::new(switchboard_tests::sipp::scenario(
        "uas_488_srtp_then_plain.xml",
    ))
    .spawn_server(gw, 1);
    let cfg = json!({
        "version": "1",
        "trunks": [{
            "id": "demo/carrier", "enabled": true,
            "outbound": {"enabled": true, "gateways": [
                {"host": "127.0.0.1", "port": gw, "transport": "TRANSPORT_UDP", "priority": 1, "weight": 1}
            ]},
            "media": {"codecs": ["CODEC_PCMU"], "encryption": "MEDIA_ENCRYPTION_OPTIONAL", "allowSdesWithoutTls": true}
        }],
        "numbers": [{
            "id": "demo/caller", "e164": "+15550001111", "trunkId": "demo/carrier", "outbound": true,
            "agent": {"url": agent.url()}
        }]
    });
    let node = MediaNode::start(&cfg, &["--debug-routes"])
        .await
        .expect("node starts");
    let outcome = dial(&node).await;
    assert_eq!(outcome["outcome"], "answered", "{outcome}\n{}", node.log());
    assert_eq!(
        outcome["attempts"].as_array().map(Vec::len),
        Some(1),
        "one gateway attempt, retried inside it: {outcome}"
    );
    let run = carrier.await.expect("join").expect("sipp");
    run.assert_success("carrier refusing the SRTP offer, answering the plain one");
    let invites: Vec<&str> = run.messages.split("INVITE sip:").skip(1).collect();
    assert_eq!(invites.len(), 2, "{}", run.messages);
    assert!(invites[1].contains("CSeq: 2 INVITE"), "{}", invites[1]);
    assert_eq!(
        node.metric("switchboard_sip_srtp_plain_retries_total")
            .await,
        1.0
    );
}

/// The node calls a TLS gateway (baresip) whose certificate a private CA in the trunk's
/// `outbound.tls.caPem` signed for its address: verified, the keys go over TLS (the trunk
/// does not allow them elsewhere) and audio flows both ways.
#[tokio::test]
async fn outbound_call_over_tls_verifies_the_gateway_and_carries_srtp() {
    let agent = TestAgent::start().await.expect("agent");
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, cert) = carrier_certificate(dir.path(), &["127.0.0.1"]);
    let port = free_port_pair();
    let gateways = json!([{"host": "127.0.0.1", "port": port + 1, "transport": "TRANSPORT_TLS", "priority": 1, "weight": 1}]);
    let node = MediaNode::start(&tls_trunk(&agent.url(), gateways, &ca), &["--debug-routes"])
        .await
        .expect("node starts");
    let phone = dir.path().join("baresip");
    std::fs::create_dir(&phone).expect("dir");
    let baresip = baresip_tls_uas(&phone, port, &cert);
    switchboard_tests::poll::eventually("baresip's TLS port", Duration::from_secs(10), || async {
        if tcp_bound(port + 1) {
            Ok(())
        } else {
            Err("not yet".to_string())
        }
    })
    .await;
    let outcome = dial(&node).await;
    assert_eq!(
        outcome["outcome"],
        "answered",
        "{outcome}\nnode log:\n{}",
        node.log()
    );
    let conn = agent.connection(0, Duration::from_secs(10)).await;
    conn.wait_until("the call's start", Duration::from_secs(10), |c| {
        !c.stream_sid().is_empty()
    })
    .await;
    conn.send_media(&ulaw_pattern(100, 4));
    // Two seconds of baresip's audio: by then it has heard the agent's two seconds too.
    conn.wait_until("baresip's audio", Duration::from_secs(10), |c| {
        c.audio().len() >= 16000
    })
    .await;
    assert_eq!(
        node.metric(r#"switchboard_sip_tls_connections{direction="outbound"}"#)
            .await,
        1.0,
        "the call went over one outbound TLS connection"
    );
    let call_id = outcome["call_id"].as_str().expect("call_id");
    let (status, _) = node
        .http("POST", "/debug/hangup", Some(&json!({"call_id": call_id})))
        .await
        .expect("hangup");
    assert_eq!(status, 202);
    let out = tokio::time::timeout(Duration::from_secs(30), baresip.wait_with_output())
        .await
        .expect("baresip exits")
        .expect("output");
    let loud = heard(&phone)
        .iter()
        .filter(|s| s.unsigned_abs() > 2000)
        .count();
    assert!(
        loud > 4800,
        "baresip heard {loud} loud samples:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A gateway whose certificate is not valid for its name fails the attempt at once with the
/// reason, and the dial fails over to the next gateway.
#[tokio::test]
async fn a_tls_gateway_with_the_wrong_name_fails_over_with_the_reason() {
    let agent = TestAgent::start().await.expect("agent");
    let dir = tempfile::tempdir().expect("tempdir");
    // Signed by the trusted CA, but for another name than the gateway's host.
    let (ca, cert) = carrier_certificate(dir.path(), &["carrier.example"]);
    let port = free_port_pair();
    let gateways = json!([
        {"host": "127.0.0.1", "port": port + 1, "transport": "TRANSPORT_TLS", "priority": 1, "weight": 1},
        {"host": "127.0.0.1", "port": port + 1, "transport": "TRANSPORT_TLS", "priority": 2, "weight": 1}
    ]);
    let mut cfg = tls_trunk(&agent.url(), gateways, &ca);
    // OPTIONS health checks over TLS, every second.
    cfg["trunks"][0]["optionsIntervalSeconds"] = json!(1);
    let node = MediaNode::start(&cfg, &["--debug-routes"])
        .await
        .expect("node starts");
    let phone = dir.path().join("baresip");
    std::fs::create_dir(&phone).expect("dir");
    let _baresip = baresip_tls_uas(&phone, port, &cert);
    switchboard_tests::poll::eventually("baresip's TLS port", Duration::from_secs(10), || async {
        if tcp_bound(port + 1) {
            Ok(())
        } else {
            Err("not yet".to_string())
        }
    })
    .await;
    let started = std::time::Instant::now();
    let outcome = dial(&node).await;
    assert_eq!(outcome["outcome"], "failed", "{outcome}");
    let attempts = outcome["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 2, "both gateways tried: {outcome}");
    for a in attempts {
        assert_eq!(a["result"], "error", "{outcome}");
        let e = a["error"].as_str().unwrap_or_default();
        assert!(
            e.contains("TLS") && e.contains("certificate"),
            "a clear reason: {outcome}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a certificate failure fails over at once, not after a SIP timeout"
    );
    assert!(
        node.metric(r#"switchboard_sip_tls_closed_total{reason="tls_connect_failed"}"#)
            .await
            >= 2.0
    );
    // The health check marks the gateway down (the trunk's Degraded in a cluster).
    let series = format!("gateway=\"127.0.0.1:{}\"", port + 1);
    switchboard_tests::poll::eventually(
        "the gateway marked down",
        Duration::from_secs(10),
        || async {
            let (_, text) = node
                .http("GET", "/metrics", None)
                .await
                .map_err(|e| e.to_string())?;
            let down = text.lines().any(|l| {
                l.starts_with("switchboard_sip_gateway_healthy{")
                    && l.contains(&series)
                    && l.ends_with(" 0")
            });
            if down && node.log().contains("gateway unreachable over TLS") {
                Ok(())
            } else {
                Err("not yet".to_string())
            }
        },
    )
    .await;
}

/// A gateway that requires a client certificate (mutual TLS) receives the trunk's: a
/// TLS server in the test, trusting only the CA that signed the node's client certificate,
/// accepts the node's connection, challenges its INVITE with digest and gets the answer
/// over the same connection.
#[tokio::test]
async fn a_mutual_tls_gateway_receives_the_trunks_client_certificate() {
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().expect("tempdir");
    // The gateway's own certificate, from a CA the trunk trusts.
    let (gateway_ca, gateway_pem) = carrier_certificate(dir.path(), &["127.0.0.1"]);
    let gateway_text = std::fs::read_to_string(&gateway_pem).expect("pem");
    // The node's client certificate, from a CA the gateway trusts.
    let client_ca_key = rcgen::KeyPair::generate().expect("key");
    let mut client_ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    client_ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let client_ca = client_ca_params.self_signed(&client_ca_key).expect("ca");
    let client_issuer = rcgen::Issuer::new(client_ca_params, client_ca_key);
    let client_key = rcgen::KeyPair::generate().expect("key");
    let client_cert = rcgen::CertificateParams::new(vec!["node.switchboard.test".to_owned()])
        .expect("params")
        .signed_by(&client_key, &client_issuer)
        .expect("cert");

    // The gateway: TLS with client authentication required.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(client_ca.der().clone()).expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .expect("verifier");
    let chain: Vec<_> = rustls_pemfile::certs(&mut gateway_text.as_bytes())
        .filter_map(Result::ok)
        .collect();
    let key = rustls_pemfile::private_key(&mut gateway_text.as_bytes())
        .ok()
        .flatten()
        .expect("key");
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let gateway = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let mut tls = acceptor.accept(tcp).await.expect("the node's handshake");
        let presented = tls
            .get_ref()
            .1
            .peer_certificates()
            .map(|c| c.len())
            .unwrap_or(0);
        // Messages off the stream, framed by Content-Length.
        let mut pending: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; 8192];
        let mut next =
            async move |tls: &mut tokio_rustls::server::TlsStream<tokio::net::TcpStream>| loop {
                if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&pending[..end]).into_owned();
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if pending.len() >= end + 4 + len {
                        let msg = String::from_utf8_lossy(&pending[..end + 4 + len]).into_owned();
                        pending.drain(..end + 4 + len);
                        return msg;
                    }
                }
                let n = tls.read(&mut buf).await.expect("read");
                assert!(n > 0, "the node closed the connection");
                pending.extend_from_slice(&buf[..n]);
            };
        let answer = |req: &str, status: &str, extra: &str| {
            let copied = req
                .lines()
                .filter(|l| {
                    ["via:", "from:", "to:", "call-id:", "cseq:"]
                        .iter()
                        .any(|h| l.to_ascii_lowercase().starts_with(h))
                })
                .collect::<Vec<_>>()
                .join("\r\n");
            format!("SIP/2.0 {status}\r\n{copied}\r\n{extra}Content-Length: 0\r\n\r\n")
        };
        // A digest challenge first, answered over the same TLS connection.
        let first = next(&mut tls).await;
        assert!(first.starts_with("INVITE "), "{first}");
        let challenge = answer(
            &first,
            "401 Unauthorized",
            "WWW-Authenticate: Digest realm=\"carrier.test\", nonce=\"n0nce\", qop=\"auth\"\r\n",
        );
        tls.write_all(challenge.as_bytes()).await.expect("write");
        let ack = next(&mut tls).await;
        assert!(ack.starts_with("ACK "), "the 401 is ACKed: {ack}");
        let invite = next(&mut tls).await;
        // Turn the call down so the dial ends quickly.
        tls.write_all(answer(&invite, "603 Decline", "").as_bytes())
            .await
            .expect("write");
        let _ = next(&mut tls).await;
        (presented, invite)
    });

    let cfg = json!({
        "version": "1",
        "trunks": [{
            "id": "demo/carrier", "enabled": true,
            "outbound": {
                "enabled": true,
                "gateways": [{"host": "127.0.0.1", "port": port, "transport": "TRANSPORT_TLS", "priority": 1, "weight": 1}],
                "auth": {"username": "alice", "password": "s3cret"},
                "tls": {
                    "caPem": gateway_ca,
                    "clientCertPem": client_cert.pem(),
                    "clientKeyPem": client_key.serialize_pem()
                }
            }
        }],
        "numbers": [{"id": "demo/caller", "e164": "+15550001111", "trunkId": "demo/carrier", "outbound": true}]
    });
    let node = MediaNode::start(&cfg, &["--debug-routes"])
        .await
        .expect("node starts");
    let outcome = dial(&node).await;
    let (presented, invite) = tokio::time::timeout(Duration::from_secs(20), gateway)
        .await
        .expect("the gateway saw the node")
        .expect("gateway task");
    assert_eq!(presented, 1, "the node presented its client certificate");
    assert!(invite.starts_with("INVITE sip:"), "{invite}");
    assert!(invite.contains("SIP/2.0/TLS"), "Via says TLS: {invite}");
    assert!(
        invite.contains("Authorization: Digest username=\"alice\""),
        "digest answered over TLS: {invite}"
    );
    assert_eq!(outcome["code"], 603, "{outcome}");
    assert!(
        !node.log().contains("BEGIN PRIVATE KEY"),
        "the client key never reaches the log"
    );
}
