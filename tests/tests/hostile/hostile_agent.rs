//! A hostile agent cannot exhaust the node nor disturb another call: the real media-node
//! binary, two concurrent SIPp calls on loopback, one bridged to a hostile WebSocket agent
//! (in this file) and one to the well-behaved test agent (tests/src/agent.rs).
//!
//! - A mark flood (hundreds of thousands of 200-byte marks while audio is queued, as fast as
//!   the socket takes them) keeps the node's memory bounded (VmRSS/VmHWM from /proc) and ends
//!   with the node closing that agent's session with a reason and hanging that call up (BYE);
//!   the other call's RTP keeps its 20 ms pace throughout.
//! - A WebSocket message over the node's limit closes that agent's session with 1009 (Message
//!   Too Big) and a reason; that call ends with a BYE; the other call goes on.
//!
//! The caller side of each call is SIPp (signalling, `media_uac_bye.xml`) plus a small RTP
//! endpoint here (the "phone") on its own OS threads, so that arrival times of the node's
//! packets are taken without waiting on the test's async runtime.

use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures::{SinkExt, StreamExt};
use serde_json::json;
use switchboard_tests::agent::TestAgent;
use switchboard_tests::node::{MediaNode, proc_status_kib};
use switchboard_tests::sipp::spawn_bye_call;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

/// The number bridged to the hostile agent.
const HOSTILE: &str = "15550001111";
/// The number bridged to the well-behaved agent.
const CALM: &str = "15550002222";
const FRAME: usize = 160;

fn config(hostile_url: &str, calm_url: &str) -> serde_json::Value {
    json!({
        "version": "1",
        "trunks": [{
            "id": "demo/carrier",
            "enabled": true,
            "inbound": {"enabled": true, "allowedSources": ["127.0.0.1/32"]},
            "media": {"codecs": ["CODEC_PCMU"], "rtpTimeoutSeconds": 30}
        }],
        "numbers": [
            {
                "id": "demo/hostile", "e164": "+15550001111", "trunkId": "demo/carrier",
                "inbound": true,
                "agent": {"url": hostile_url, "bearerToken": "tok-123"}
            },
            {
                "id": "demo/calm", "e164": "+15550002222", "trunkId": "demo/carrier",
                "inbound": true,
                "agent": {"url": calm_url}
            }
        ]
    })
}

// ------------------------------------------------------------------------------------------
// The phone: the caller's RTP endpoint, on OS threads.

/// Receives the node's RTP (recording arrival times) and, once the node's first packet told
/// it where the node is, sends 20 ms of μ-law silence every 20 ms back (so the node latches
/// and its RTP timeout never fires).
struct Phone {
    port: u16,
    arrivals: Arc<Mutex<Vec<Instant>>>,
    stop: Arc<AtomicBool>,
}

impl Phone {
    fn start() -> Phone {
        let sock = StdUdpSocket::bind("127.0.0.1:0").expect("bind phone");
        let port = sock.local_addr().expect("addr").port();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let tx_sock = sock.try_clone().expect("clone");
        let arrivals: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let node: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (arrivals, node, stop) = (arrivals.clone(), node.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = sock.recv_from(&mut buf) else {
                        continue;
                    };
                    let at = Instant::now();
                    // RTP version 2, not RTCP (payload types 200-204 in the second octet).
                    if n >= 12 && buf[0] >> 6 == 2 && !(200..=204).contains(&buf[1]) {
                        arrivals.lock().expect("lock").push(at);
                        node.lock().expect("lock").get_or_insert(from);
                    }
                }
            });
        }
        {
            let (node, stop) = (node.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut seq, mut ts) = (100u16, 8000u32);
                let ssrc = 0x5eed_0002u32;
                let start = Instant::now();
                let mut k = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    k += 1;
                    let due = start + Duration::from_millis(20) * k;
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let Some(to) = *node.lock().expect("lock") else {
                        continue;
                    };
                    let mut p = vec![0x80, 0];
                    p.extend(seq.to_be_bytes());
                    p.extend(ts.to_be_bytes());
                    p.extend(ssrc.to_be_bytes());
                    p.extend([0xFFu8; FRAME]);
                    let _ = tx_sock.send_to(&p, to);
                    seq = seq.wrapping_add(1);
                    ts = ts.wrapping_add(FRAME as u32);
                }
            });
        }
        Phone {
            port,
            arrivals,
            stop,
        }
    }

    fn arrivals(&self) -> Vec<Instant> {
        self.arrivals.lock().expect("lock").clone()
    }

    async fn wait_packets(&self, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.arrivals().len() < n {
            assert!(
                Instant::now() < deadline,
                "phone got {} of {n} packets within {within:?}",
                self.arrivals().len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Phone {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Gaps between consecutive packets that arrived in `[from, to]`, sorted.
fn gaps_between(arrivals: &[Instant], from: Instant, to: Instant) -> Vec<Duration> {
    let inside: Vec<Instant> = arrivals
        .iter()
        .copied()
        .filter(|t| *t >= from && *t <= to)
        .collect();
    let mut gaps: Vec<Duration> = inside.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort();
    gaps
}

/// The other call kept its 20 ms pace over the window: enough packets, p99 gap under 60 ms,
/// none over 100 ms.
fn assert_paced(arrivals: &[Instant], from: Instant, to: Instant, what: &str) {
    let gaps = gaps_between(arrivals, from, to);
    let span = to - from;
    let expected = (span.as_millis() / 20) as usize;
    assert!(
        gaps.len() + 1 >= expected * 9 / 10,
        "{what}: {} packets in {span:?}, expected about {expected}",
        gaps.len() + 1
    );
    let p99 = gaps[(gaps.len() * 99 / 100).min(gaps.len() - 1)];
    let max = gaps[gaps.len() - 1];
    assert!(
        p99 < Duration::from_millis(60),
        "{what}: p99 gap {p99:?} (max {max:?})"
    );
    assert!(
        max < Duration::from_millis(100),
        "{what}: largest gap {max:?}"
    );
}

// ------------------------------------------------------------------------------------------
// SIPp.

// ------------------------------------------------------------------------------------------
// The hostile agent.

/// What the hostile agent does once the stream has started.
#[derive(Clone, Copy)]
enum Attack {
    /// Queue `audio_secs` of audio, then send up to `marks` marks with names of `name_len`
    /// bytes as fast as the socket takes them, for at most `within`.
    MarkFlood {
        audio_secs: usize,
        marks: usize,
        name_len: usize,
        within: Duration,
    },
    /// One text message of `bytes` bytes (a media message with a huge payload).
    Oversized { bytes: usize },
}

/// What the hostile agent saw.
#[derive(Debug, Default)]
struct AttackReport {
    /// Messages of the attack the socket took before it failed or the attack ended.
    sent: usize,
    /// The close frame the node sent: (code, reason).
    close: Option<(u16, String)>,
    /// When the attack started and ended.
    started: Option<Instant>,
    ended: Option<Instant>,
}

/// Listens on 127.0.0.1; the first connection gets the attack. Returns the URL and the task.
async fn hostile_agent(attack: Attack) -> (String, tokio::task::JoinHandle<AttackReport>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}/agent", listener.local_addr().expect("addr"));
    let task = tokio::spawn(async move {
        let mut report = AttackReport::default();
        let (tcp, _) = listener.accept().await.expect("accept");
        let ws = tokio_tungstenite::accept_async(tcp)
            .await
            .expect("handshake");
        let (mut sink, mut stream) = ws.split();
        // The attack starts once the stream has (connected, then start).
        let mut stream_sid = String::new();
        while let Some(Ok(m)) = stream.next().await {
            if let Message::Text(t) = m {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).expect("json");
                if v["event"] == "start" {
                    stream_sid = v["streamSid"].as_str().unwrap_or_default().to_owned();
                    break;
                }
            }
        }
        // Read everything the node sends, keeping the close frame.
        let close: Arc<Mutex<Option<(u16, String)>>> = Arc::default();
        let seen_close = close.clone();
        let reader = tokio::spawn(async move {
            while let Some(m) = stream.next().await {
                match m {
                    Ok(Message::Close(f)) => {
                        *seen_close.lock().expect("lock") = Some(
                            f.map(|f| (u16::from(f.code), f.reason.to_string()))
                                .unwrap_or((0, String::new())),
                        );
                        break;
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        });
        report.started = Some(Instant::now());
        match attack {
            Attack::MarkFlood {
                audio_secs,
                marks,
                name_len,
                within,
            } => {
                // Seconds of audio queued, so that every mark waits for it to play.
                for _ in 0..audio_secs {
                    let media = json!({"event": "media", "streamSid": stream_sid,
                        "media": {"payload": BASE64.encode([0x55u8; 8000])}});
                    if sink.send(Message::text(media.to_string())).await.is_err() {
                        break;
                    }
                }
                let deadline = Instant::now() + within;
                let pad = "x".repeat(name_len.saturating_sub(8));
                for i in 0..marks {
                    let mark = format!(
                        r#"{{"event":"mark","streamSid":"{stream_sid}","mark":{{"name":"{i:08}{pad}"}}}}"#
                    );
                    if sink.feed(Message::text(mark)).await.is_err() {
                        break;
                    }
                    report.sent += 1;
                    if i % 512 == 511 && (sink.flush().await.is_err() || Instant::now() > deadline)
                    {
                        break;
                    }
                }
                let _ = sink.flush().await;
            }
            Attack::Oversized { bytes } => {
                let payload = "A".repeat(bytes);
                let media = format!(
                    r#"{{"event":"media","streamSid":"{stream_sid}","media":{{"payload":"{payload}"}}}}"#
                );
                if sink.send(Message::text(media)).await.is_ok() {
                    report.sent = 1;
                }
            }
        }
        report.ended = Some(Instant::now());
        // The node should close this session: wait for its close frame (bounded).
        let _ = tokio::time::timeout(Duration::from_secs(15), reader).await;
        report.close = close.lock().expect("lock").clone();
        report
    });
    (url, task)
}

// ------------------------------------------------------------------------------------------
// Tests.

/// Hundreds of thousands of 200-byte marks while audio is queued: the node's memory stays
/// bounded, the node closes that agent's session with a reason (1008) and hangs the call up,
/// and the other call's RTP keeps its 20 ms pace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mark_flood_is_bounded_and_does_not_disturb_another_call() {
    let calm = TestAgent::start().await.expect("agent");
    let (hostile_url, attack) = hostile_agent(Attack::MarkFlood {
        audio_secs: 20,
        marks: 300_000,
        name_len: 200,
        within: Duration::from_secs(30),
    })
    .await;
    let node = MediaNode::start(&config(&hostile_url, &calm.url()), &[])
        .await
        .expect("node");

    // The calm call first, running steadily.
    let calm_phone = Phone::start();
    let calm_call = spawn_bye_call(
        node.sip,
        CALM,
        calm_phone.port,
        ("0", "PCMU"),
        "",
        Duration::from_secs(60),
    );
    let calm_conn = calm.connection(0, Duration::from_secs(10)).await;
    calm_phone.wait_packets(25, Duration::from_secs(10)).await;

    let rss_before = proc_status_kib(node.pid(), "VmRSS:");
    let hostile_phone = Phone::start();
    let hostile_call = spawn_bye_call(
        node.sip,
        HOSTILE,
        hostile_phone.port,
        ("0", "PCMU"),
        "",
        Duration::from_secs(60),
    );

    // Sample the node's RSS while the attack runs.
    let pid = node.pid();
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while sampling.load(Ordering::Relaxed) {
                peak = peak.max(proc_status_kib(pid, "VmRSS:"));
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        })
    };
    let report = tokio::time::timeout(Duration::from_secs(60), attack)
        .await
        .expect("the attack ends")
        .expect("attack task");
    sampling.store(false, Ordering::Relaxed);
    let peak_rss = sampler.join().expect("sampler");
    let hwm = proc_status_kib(pid, "VmHWM:");
    let started = report.started.expect("attack started");
    let growth_kb = hwm.max(peak_rss).saturating_sub(rss_before);
    eprintln!(
        "mark flood: {} marks taken by the socket in {:?}; node RSS before {rss_before} kB, \
         sampled peak {peak_rss} kB, VmHWM {hwm} kB (growth {growth_kb} kB); close {:?}",
        report.sent,
        report.ended.map(|e| e - started),
        report.close
    );
    assert!(
        growth_kb < 20 * 1024,
        "node memory grew by {growth_kb} kB during the mark flood (bound 20 MB)"
    );
    let (code, reason) = report.close.expect("the node closed the agent's session");
    assert_eq!(code, 1008, "policy violation: {reason}");
    assert!(
        reason.contains("mark"),
        "the reason names the limit: {reason}"
    );

    // The hostile call ends with the node's BYE.
    let run = tokio::time::timeout(Duration::from_secs(30), hostile_call)
        .await
        .expect("hostile call ends")
        .expect("sipp task")
        .expect("sipp runs");
    run.assert_success("BYE after the agent session was closed for its marks");
    // Another second of the calm call after the attack, inside the measured window.
    let n = calm_phone.arrivals().len();
    calm_phone
        .wait_packets(n + 50, Duration::from_secs(5))
        .await;
    assert!(
        node.metric(r#"switchboard_agent_limit_exceeded_total{limit="pending_marks"}"#)
            .await
            >= 1.0
    );
    assert_eq!(
        node.metric(r#"switchboard_agent_disconnects_total{reason="limit_exceeded"}"#)
            .await,
        1.0
    );
    assert_eq!(
        node.metric(r#"switchboard_call_end_reasons_total{reason="agent_limit"}"#)
            .await,
        1.0
    );
    assert!(
        node.log().contains("closing agent session"),
        "the node logs why it closed the session"
    );

    // The calm call was not disturbed: its RTP kept its pace from the attack's start to now,
    // and its agent still gets the caller's audio.
    assert_paced(
        &calm_phone.arrivals(),
        started,
        Instant::now(),
        "calm call during the mark flood",
    );
    assert!(!calm_conn.is_closed(), "the calm agent's session is open");
    let n = calm_conn.events("media").len();
    calm_conn
        .wait_until("more caller audio", Duration::from_secs(5), |c| {
            c.events("media").len() > n + 10
        })
        .await;
    calm_conn.close();
    let run = calm_call.await.expect("sipp task").expect("sipp runs");
    run.assert_success("calm call ends when its agent closes");
}

/// A WebSocket message over the node's limit (512 KiB; the limit is 256 KiB) closes that
/// agent's session with 1009 and a reason, the call ends with a BYE, and the other call goes
/// on at its pace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_closes_only_that_session() {
    let calm = TestAgent::start().await.expect("agent");
    let (hostile_url, attack) = hostile_agent(Attack::Oversized { bytes: 512 * 1024 }).await;
    let node = MediaNode::start(&config(&hostile_url, &calm.url()), &[])
        .await
        .expect("node");

    let calm_phone = Phone::start();
    let calm_call = spawn_bye_call(
        node.sip,
        CALM,
        calm_phone.port,
        ("0", "PCMU"),
        "",
        Duration::from_secs(60),
    );
    let calm_conn = calm.connection(0, Duration::from_secs(10)).await;
    calm_phone.wait_packets(25, Duration::from_secs(10)).await;

    let hostile_phone = Phone::start();
    let hostile_call = spawn_bye_call(
        node.sip,
        HOSTILE,
        hostile_phone.port,
        ("0", "PCMU"),
        "",
        Duration::from_secs(30),
    );
    let report = tokio::time::timeout(Duration::from_secs(30), attack)
        .await
        .expect("the attack ends")
        .expect("attack task");
    let (code, reason) = report.close.expect("the node closed the agent's session");
    assert_eq!(code, 1009, "message too big: {reason}");
    assert!(
        reason.contains("262144"),
        "the reason names the limit: {reason}"
    );
    let run = tokio::time::timeout(Duration::from_secs(30), hostile_call)
        .await
        .expect("hostile call ends")
        .expect("sipp task")
        .expect("sipp runs");
    run.assert_success("BYE after the oversized message");
    let n = calm_phone.arrivals().len();
    calm_phone
        .wait_packets(n + 50, Duration::from_secs(5))
        .await;

    assert_eq!(
        node.metric(r#"switchboard_agent_limit_exceeded_total{limit="message_size"}"#)
            .await,
        1.0
    );
    assert_eq!(
        node.metric(r#"switchboard_agent_disconnects_total{reason="limit_exceeded"}"#)
            .await,
        1.0
    );
    assert_eq!(
        node.metric(r#"switchboard_call_end_reasons_total{reason="agent_limit"}"#)
            .await,
        1.0
    );

    let started = report.started.expect("attack started");
    assert_paced(
        &calm_phone.arrivals(),
        started,
        Instant::now(),
        "calm call around the oversized message",
    );
    assert!(!calm_conn.is_closed(), "the calm agent's session is open");
    let n = calm_conn.events("media").len();
    calm_conn
        .wait_until("more caller audio", Duration::from_secs(5), |c| {
            c.events("media").len() > n + 10
        })
        .await;
    calm_conn.close();
    let run = calm_call.await.expect("sipp task").expect("sipp runs");
    run.assert_success("calm call ends when its agent closes");
}
