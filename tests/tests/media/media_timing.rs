//! The media path's timing model against the real media-node binary (issue 11): caller audio is
//! forwarded to the agent on arrival (held only at a gap, reordered, losses concealed with one
//! silence frame each), agent audio reaching an empty playout queue leaves at once and the rest
//! 20 ms apart, each call in its own phase, and a bursty agent's long answer plays fully at real
//! time with its marks returned when their audio has been sent.
//!
//! The caller is SIPp (signalling) with its SDP pointing at a scripted RTP endpoint in this
//! file: packets leave on an absolute schedule from an OS thread of their own (so the test's
//! runtime never bunches them), in whatever order and with whatever gaps the test scripts, and
//! every packet the node sends is recorded with its arrival instant. The agent is the test
//! WebSocket agent (tests/src/agent.rs), which records when each message arrived.
//!
//! Assertions are about order and structure (which event came before which, byte-exact audio,
//! continuous sequence numbers and timestamps); where a bound on time is needed it is a whole
//! frame or more, far from what the node takes.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use switchboard_tests::agent::{AgentConn, TestAgent};
use switchboard_tests::node::MediaNode;
use switchboard_tests::phone::{
    FRAME, Rtp, assert_continuous, assert_continuous_50pps, parse_rtp, rtp_packet,
};
use switchboard_tests::sipp::spawn_bye_call;
use tokio::net::UdpSocket;

const NUMBER: &str = "15550001111";
const SSRC: u32 = 0x5151_0001;

fn config(agent_url: &str) -> serde_json::Value {
    json!({
        "version": "1",
        "trunks": [{
            "id": "demo/carrier",
            "enabled": true,
            "inbound": {"enabled": true, "allowedSources": ["127.0.0.1/32"]},
            "media": {"codecs": ["CODEC_PCMU"], "rtpTimeoutSeconds": 30}
        }],
        "numbers": [{
            "id": "demo/support", "e164": "+15550001111", "trunkId": "demo/carrier",
            "inbound": true, "outbound": true,
            "agent": {"url": agent_url}
        }]
    })
}

/// A frame whose bytes all carry `tag` (never 0xFF, μ-law silence).
fn tagged(tag: u16) -> [u8; FRAME] {
    let b = (tag % 250) as u8;
    [if b == 0x7F { 0x7E } else { b }; FRAME]
}

/// One scripted packet: sent `at` after the script starts.
#[derive(Clone)]
struct Scripted {
    at: Duration,
    packet: Vec<u8>,
}

/// A script being sent.
struct Sender(std::thread::JoinHandle<()>);

impl Sender {
    /// Waits for the script's end without blocking the runtime (the agent runs on it).
    async fn finish(self) {
        tokio::task::spawn_blocking(move || self.0.join())
            .await
            .expect("join")
            .expect("sender thread");
    }
}

/// The caller's RTP endpoint: records what the node sends; sends a script once asked.
struct Caller {
    port: u16,
    sock: Arc<std::net::UdpSocket>,
    node: Arc<Mutex<Option<SocketAddr>>>,
    received: Arc<Mutex<Vec<Rtp>>>,
    /// When each scripted packet actually left, by index in the script.
    sent_at: Arc<Mutex<Vec<Instant>>>,
}

impl Caller {
    async fn start() -> Caller {
        let std_sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let port = std_sock.local_addr().expect("addr").port();
        let tx = std_sock.try_clone().expect("clone");
        std_sock.set_nonblocking(true).expect("nonblocking");
        let rx = UdpSocket::from_std(std_sock).expect("socket");
        let received: Arc<Mutex<Vec<Rtp>>> = Arc::default();
        let node: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let (rec, n) = (received.clone(), node.clone());
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok((len, from)) = rx.recv_from(&mut buf).await {
                if len >= 2 && (200..=204).contains(&buf[1]) {
                    continue;
                }
                if let Some(p) = parse_rtp(&buf[..len], Instant::now(), from) {
                    n.lock().expect("lock").get_or_insert(from);
                    rec.lock().expect("lock").push(p);
                }
            }
        });
        Caller {
            port,
            sock: Arc::new(tx),
            node,
            received,
            sent_at: Arc::default(),
        }
    }

    fn packets(&self) -> Vec<Rtp> {
        self.received.lock().expect("lock").clone()
    }

    /// Waits for the node's first packet (symmetric RTP: that is where ours go).
    async fn node_addr(&self) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(a) = *self.node.lock().expect("lock") {
                return a;
            }
            assert!(Instant::now() < deadline, "the node never sent RTP");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sends the script from an OS thread on an absolute schedule; returns at once.
    async fn play(&self, script: Vec<Scripted>) -> Sender {
        let to = self.node_addr().await;
        let sock = self.sock.clone();
        let sent_at = self.sent_at.clone();
        Sender(std::thread::spawn(move || {
            let start = Instant::now();
            for s in script {
                if let Some(wait) = (start + s.at).checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let _ = sock.send_to(&s.packet, to);
                sent_at.lock().expect("lock").push(Instant::now());
            }
        }))
    }

    async fn wait_packets(&self, what: &str, check: impl Fn(&[Rtp]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if check(&self.packets()) {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Packets 0..n of a 20 ms stream with tagged payloads, in `order` (indexes into the stream),
/// each sent in the 20 ms slot of its position in `order`.
fn script(order: &[u16]) -> Vec<Scripted> {
    order
        .iter()
        .enumerate()
        .map(|(slot, &k)| Scripted {
            at: Duration::from_millis(20 * slot as u64),
            packet: rtp_packet(
                k == 0,
                0,
                1000u16.wrapping_add(k),
                48_000u32.wrapping_add(160 * u32::from(k)),
                SSRC,
                &tagged(k),
            ),
        })
        .collect()
}

struct Env {
    node: MediaNode,
    agent: TestAgent,
}

async fn env() -> Env {
    env_with(&[]).await
}

/// [`env`] with extra node flags.
async fn env_with(flags: &[&str]) -> Env {
    let agent = TestAgent::start().await.expect("agent");
    let node = MediaNode::start(&config(&agent.url()), flags)
        .await
        .expect("node");
    Env { node, agent }
}

struct Call {
    conn: AgentConn,
    caller: Caller,
    sipp: tokio::task::JoinHandle<anyhow::Result<switchboard_tests::sipp::SippRun>>,
}

/// The `n`th call (from 0) to the node of `env`.
async fn call(env: &Env, n: usize) -> Call {
    let caller = Caller::start().await;
    let sipp = spawn_bye_call(
        env.node.sip,
        NUMBER,
        caller.port,
        ("0", "PCMU"),
        "",
        Duration::from_secs(60),
    );
    let conn = env.agent.connection(n, Duration::from_secs(10)).await;
    conn.wait_until("start", Duration::from_secs(5), |c| {
        !c.events("start").is_empty()
    })
    .await;
    caller.node_addr().await;
    Call { conn, caller, sipp }
}

impl Call {
    async fn hang_up(self) {
        // The agent closing ends the call with a BYE, which SIPp answers.
        self.conn.close();
        let run = self.sipp.await.expect("sipp task").expect("sipp runs");
        run.assert_success("call ended by the node");
    }
}

/// Media messages: (timestamp ms, first byte, received at).
fn media(conn: &AgentConn) -> Vec<(u64, u8, Instant, Vec<u8>)> {
    use base64::Engine as _;
    conn.events("media")
        .into_iter()
        .map(|m| {
            let ts = m.json["media"]["timestamp"]
                .as_str()
                .and_then(|t| t.parse().ok())
                .expect("timestamp");
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(m.json["media"]["payload"].as_str().unwrap_or_default())
                .expect("base64");
            (ts, bytes[0], m.at, bytes)
        })
        .collect()
}

fn assert_20ms_apart(m: &[(u64, u8, Instant, Vec<u8>)]) {
    assert!(
        m.windows(2).all(|w| w[1].0 == w[0].0 + 20),
        "timestamps 20 ms apart: {:?}",
        m.iter().map(|x| x.0).collect::<Vec<_>>()
    );
}

/// Waits for `n` media frames at the agent; checks there are no more and that they are
/// 20 ms apart in stream time.
async fn frames(c: &Call, n: usize) -> Vec<(u64, u8, Instant, Vec<u8>)> {
    c.conn
        .wait_until(&format!("{n} frames"), Duration::from_secs(10), |a| {
            a.events("media").len() >= n
        })
        .await;
    let m = media(&c.conn);
    assert_eq!(m.len(), n, "{n} frames, no more");
    assert_20ms_apart(&m);
    m
}

/// Checks the node's count of concealed caller frames.
async fn assert_concealed(e: &Env, want: f64) {
    assert_eq!(
        e.node
            .metric("switchboard_caller_frames_concealed_total")
            .await,
        want,
        "caller frames concealed"
    );
}

/// In-order packets go to the agent at once: each frame reaches the agent before the caller
/// has even sent the next packet (a buffer holding one frame or more could not do that).
#[tokio::test]
async fn in_order_caller_audio_reaches_the_agent_before_the_next_packet_is_sent() {
    let e = env().await;
    let c = call(&e, 0).await;
    let order: Vec<u16> = (0..50).collect();
    c.caller.play(script(&order)).await.finish().await;
    let m = frames(&c, 50).await;
    let sent = c.caller.sent_at.lock().expect("lock").clone();
    for (k, frame) in m.iter().enumerate() {
        assert!(frame.3 == tagged(k as u16), "frame {k} is packet {k}");
    }
    let before_next = (0..49).filter(|&k| m[k].2 < sent[k + 1]).count();

    assert!(
        before_next >= 45,
        "frames that reached the agent before the next packet left the caller: {before_next} of 49"
    );
    assert_concealed(&e, 0.0).await;
    c.hang_up().await;
}

/// A burst (30 packets sent back to back, as a network releases a stall) is read in full and
/// in order: the engine reads at most 16 datagrams a wake, so the rest must be read on the next
/// wake without waiting for another packet (none follows the burst here).
#[tokio::test]
async fn a_burst_of_caller_packets_is_read_in_full_and_in_order() {
    let e = env().await;
    let c = call(&e, 0).await;
    let burst: Vec<Scripted> = script(&(0..30).collect::<Vec<u16>>())
        .into_iter()
        .map(|s| Scripted {
            at: Duration::ZERO,
            ..s
        })
        .collect();
    c.caller.play(burst).await.finish().await;
    let m = frames(&c, 30).await;
    for (k, frame) in m.iter().enumerate() {
        assert!(frame.3 == tagged(k as u16), "frame {k} is packet {k}");
    }
    assert_concealed(&e, 0.0).await;
    c.hang_up().await;
}

/// Swapped packets are put back in order; nothing is concealed or dropped.
#[tokio::test]
async fn reordered_caller_packets_are_put_back_in_order() {
    // The late packet arrives 40 ms after the gap it fills; the default 60 ms hold left 20 ms
    // for this test's own sender to be scheduled on a loaded machine, and a full `make test`
    // once missed it (the frame was concealed). A longer hold keeps the claim under test
    // (reordered packets are restored) apart from the machine's scheduling.
    let e = env_with(&["--jitter-min-ms", "150"]).await;
    let c = call(&e, 0).await;
    let mut order: Vec<u16> = (0..40).collect();
    for pair in [5usize, 12, 20, 31] {
        order.swap(pair, pair + 1);
    }
    // And one packet two slots late.
    let late = order.remove(25);
    order.insert(27, late);
    c.caller.play(script(&order)).await.finish().await;
    let m = frames(&c, 40).await;
    for (k, frame) in m.iter().enumerate() {
        assert!(
            frame.3 == tagged(k as u16),
            "frame {k} in stream order: got tags {:?}",
            m.iter().map(|f| f.1).collect::<Vec<_>>()
        );
    }
    assert_concealed(&e, 0.0).await;
    assert_eq!(
        e.node.metric("switchboard_caller_packets_late_total").await,
        0.0
    );
    c.hang_up().await;
}

/// A lost packet becomes exactly one frame of silence at its place; the stream keeps its
/// 20 ms steps; the frames around it are exact.
#[tokio::test]
async fn a_lost_caller_packet_becomes_one_silence_frame() {
    let e = env().await;
    let c = call(&e, 0).await;
    let order: Vec<u16> = (0..40).filter(|k| *k != 9 && *k != 23).collect();
    // Keep the slots of the lost packets empty (a loss, not a shift in time).
    let mut s = script(&(0..40).collect::<Vec<_>>());
    s.retain(|p| {
        let seq = u16::from_be_bytes([p.packet[2], p.packet[3]]).wrapping_sub(1000);
        order.contains(&seq)
    });
    c.caller.play(s).await.finish().await;
    let m = frames(&c, 40).await;
    for (k, frame) in m.iter().enumerate() {
        if k == 9 || k == 23 {
            assert!(frame.3.iter().all(|&b| b == 0xFF), "frame {k} is silence");
        } else {
            assert!(frame.3 == tagged(k as u16), "frame {k} exact");
        }
    }
    assert_concealed(&e, 2.0).await;
    c.hang_up().await;
}

/// The agent's first audio after silence leaves the node at once (not on the next 20 ms slot
/// of a shared clock), the rest 20 ms apart, with continuous sequence numbers and timestamps.
#[tokio::test]
async fn the_first_agent_frame_after_silence_leaves_at_once_then_20_ms_apart() {
    let e = env().await;
    let c = call(&e, 0).await;
    // Keep the caller's stream going so the call stays up.
    let keep: Vec<u16> = (0..400).collect();
    let sender = c.caller.play(script(&keep)).await;
    c.caller
        .wait_packets("a second of silence", |p| p.len() >= 50)
        .await;
    // Three answers, each 7 ms after a silence packet; a busy machine may delay one of them.
    let mut at_once = 0;
    for turn in 0..3u16 {
        let n0 = c.caller.packets().len();
        c.caller
            .wait_packets("the next silence packet", |p| p.len() > n0)
            .await;
        let last_silence = c.caller.packets()[n0].at;
        if let Some(w) =
            (last_silence + Duration::from_millis(7)).checked_duration_since(Instant::now())
        {
            tokio::time::sleep(w).await;
        }
        let audio: Vec<u8> = (0..10u16).flat_map(|k| tagged(turn * 10 + k + 1)).collect();
        c.conn.send_media(&audio);
        let want = 10 * (turn as usize + 1);
        c.caller
            .wait_packets("the agent's audio", |p| {
                p.iter().filter(|r| r.payload[0] != 0xFF).count() >= want
            })
            .await;
        let pkts = c.caller.packets();
        let first = pkts
            .iter()
            .enumerate()
            .filter(|(_, r)| r.payload[0] != 0xFF)
            .nth(want - 10)
            .map(|(i, _)| i)
            .expect("audio");
        if pkts[first].at < pkts[first - 1].at + Duration::from_millis(20) {
            at_once += 1;
        }
        let audio_pkts = &pkts[first..first + 10];
        let span = audio_pkts[9].at - audio_pkts[0].at;
        assert!(
            span >= Duration::from_millis(170) && span <= Duration::from_millis(210),
            "ten frames 20 ms apart, not a burst: {span:?}"
        );
        for (k, p) in audio_pkts.iter().enumerate() {
            assert!(
                p.payload == tagged(turn * 10 + k as u16 + 1),
                "frame {k} exact"
            );
        }
        // Back to silence before the next answer.
        c.caller
            .wait_packets("silence again", |p| {
                p.len() > first + 20 && p[p.len() - 1].payload[0] == 0xFF
            })
            .await;
    }
    assert!(
        at_once >= 2,
        "the first frame of {at_once} of 3 answers left before the next 20 ms slot"
    );
    assert_continuous_50pps(&c.caller.packets(), 0);
    sender.finish().await;
    c.hang_up().await;
}

/// Two calls whose agents start speaking 7 ms apart send their audio apart: each call keeps
/// its own phase (a shared 20 ms clock would send both in the same instant).
#[tokio::test]
async fn two_calls_keep_their_own_phases() {
    let e = env().await;
    let a = call(&e, 0).await;
    let b = call(&e, 1).await;
    let keep: Vec<u16> = (0..200).collect();
    let sa = a.caller.play(script(&keep)).await;
    let sb = b.caller.play(script(&keep)).await;
    a.caller.wait_packets("silence", |p| p.len() >= 25).await;
    b.caller.wait_packets("silence", |p| p.len() >= 25).await;
    let audio: Vec<u8> = (0..50u16).flat_map(tagged).collect();
    a.conn.send_media(&audio);
    tokio::time::sleep(Duration::from_millis(7)).await;
    b.conn.send_media(&audio);
    for c in [&a, &b] {
        c.caller
            .wait_packets("a second of audio", |p| {
                p.iter().filter(|r| r.payload[0] != 0xFF).count() >= 50
            })
            .await;
    }
    let audio_times = |c: &Call| -> Vec<Instant> {
        c.caller
            .packets()
            .into_iter()
            .filter(|r| r.payload[0] != 0xFF)
            .map(|r| r.at)
            .collect()
    };
    let (ta, tb) = (audio_times(&a), audio_times(&b));
    // Phase of b against a, per frame, on the 20 ms circle (µs, -10,000..10,000).
    let phase = |x: Instant, y: Instant| -> i64 {
        let d = if y >= x {
            (y - x).as_micros() as i64
        } else {
            -((x - y).as_micros() as i64)
        };
        (d + 10_000).rem_euclid(20_000) - 10_000
    };
    // On one shared clock both calls' packets would leave in the same instant, every frame;
    // here they follow when each agent spoke. (A wake-up delayed by a busy machine can move a
    // call's phase by a few ms mid-answer, so this asserts most frames, not all.)
    let apart = ta
        .iter()
        .zip(&tb)
        .filter(|(x, y)| phase(**x, **y).abs() >= 2_000)
        .count();
    assert!(
        apart * 4 >= ta.len().min(tb.len()) * 3,
        "only {apart} of {} frames left at least 2 ms apart (mod 20 ms); first pair {} µs apart",
        ta.len().min(tb.len()),
        phase(ta[0], tb[0])
    );
    sa.finish().await;
    sb.finish().await;
    a.hang_up().await;
    b.hang_up().await;
}

/// A 30 s answer sent at twice real time (as Pipecat and TTS pipelines do) plays completely,
/// byte-exact, at 50 packets per second; each mark comes back once the audio before it has
/// been sent, not when it was received.
#[tokio::test]
async fn a_30_s_answer_at_twice_real_time_plays_fully_with_marks_after_their_audio() {
    let e = env().await;
    let c = call(&e, 0).await;
    let keep: Vec<u16> = (0..1700).collect();
    let sender = c.caller.play(script(&keep)).await;
    c.caller.wait_packets("silence", |p| p.len() >= 10).await;
    // 1,500 frames, 5 per message (100 ms), one message every 50 ms; a mark after each 5 s.
    let frames: Vec<[u8; FRAME]> = (0..1500u16).map(|k| tagged(k + 1)).collect();
    let mut mark_sent_at = Vec::new();
    let start = Instant::now();
    for (i, chunk) in frames.chunks(5).enumerate() {
        let at = start + Duration::from_millis(50 * i as u64);
        if let Some(w) = at.checked_duration_since(Instant::now()) {
            tokio::time::sleep(w).await;
        }
        let bytes: Vec<u8> = chunk.iter().flatten().copied().collect();
        c.conn.send_media(&bytes);
        if (i + 1) % 50 == 0 {
            c.conn.send_mark(&format!("m{}", (i + 1) / 50));
            mark_sent_at.push(Instant::now());
        }
    }
    c.conn
        .wait_until("six marks", Duration::from_secs(30), |a| {
            a.marks().len() == 6
        })
        .await;
    c.caller
        .wait_packets("all the audio", |p| {
            p.iter().filter(|r| r.payload[0] != 0xFF).count() >= 1500
        })
        .await;
    let pkts = c.caller.packets();
    // From the answer on (the silence before it is not what this test is about, and a busy CI
    // machine may have made the node skip some of it while six tests started together).
    let first = pkts
        .iter()
        .position(|r| r.payload[0] != 0xFF)
        .expect("audio");
    assert_continuous(&pkts[first..], 0);
    let audio: Vec<&Rtp> = pkts.iter().filter(|r| r.payload[0] != 0xFF).collect();
    assert_eq!(audio.len(), 1500);
    for (k, p) in audio.iter().enumerate() {
        assert!(p.payload == frames[k], "frame {k} exact and in order");
    }
    let span = audio[1499].at - audio[0].at;
    assert!(
        span >= Duration::from_millis(29_500) && span <= Duration::from_millis(30_500),
        "played at real time: {span:?}"
    );
    let marks = c.conn.events("mark");
    assert_eq!(c.conn.marks(), ["m1", "m2", "m3", "m4", "m5", "m6"]);
    for (k, m) in marks.iter().enumerate() {
        // Mark k+1 follows frame 250 (k+1) - 1.
        let last = audio[250 * (k + 1) - 1].at;
        let before_last = audio[250 * (k + 1) - 2].at;
        assert!(
            m.at >= before_last,
            "mark {} echoed {:?} before its audio was sent",
            k + 1,
            before_last - m.at
        );
        // Received long before (the agent is 2x ahead), returned when its audio was sent.
        assert!(mark_sent_at[k] + Duration::from_secs(1) < last);
        if k < 5 {
            assert!(
                m.at < audio[250 * (k + 1) + 5].at,
                "mark {} echoed no later than 100 ms after its audio",
                k + 1
            );
        }
    }
    sender.finish().await;
    c.hang_up().await;
}
