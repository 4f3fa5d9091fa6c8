//! Hostile RTP and SDP against the real media-node binary, on loopback: RTP Bleed (an attacker
//! spraying the call's port from another port of the carrier's address and from another
//! address, before, during and after the call's first packets and across a pause of the real
//! source), a NAT'd peer whose packets come from another port than its SDP says, SDP media
//! addresses the node must refuse, and a 200 OK that is never acknowledged (a spoofed INVITE).
//!
//! The caller is a raw SIP UAC in this file (exact control over the ACK and the SDP), the agent
//! is the test WebSocket agent (tests/src/agent.rs) and speaks all the time, so the node always
//! has the call's audio to send to whoever it thinks the caller is.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use switchboard_tests::agent::{AgentConn, TestAgent};
use switchboard_tests::node::{MediaNode, RawSip, header_of, status_of};
use switchboard_tests::poll::eventually;
use tokio::net::UdpSocket;

const NUMBER: &str = "15550001111";

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

fn rtp_packet(pt: u8, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, pt & 0x7F];
    p.extend(seq.to_be_bytes());
    p.extend(ts.to_be_bytes());
    p.extend(ssrc.to_be_bytes());
    p.extend(payload);
    p
}

/// True for an RTP (not RTCP) datagram.
fn is_rtp(b: &[u8]) -> bool {
    b.len() >= 12 && b[0] >> 6 == 2 && !(200..=204).contains(&b[1])
}

/// A UDP socket that counts the RTP packets it receives (from anyone).
struct Counter {
    sock: Arc<UdpSocket>,
    rtp: Arc<AtomicUsize>,
}

impl Counter {
    async fn bind(ip: &str) -> Counter {
        let sock = Arc::new(
            UdpSocket::bind(format!("{ip}:0"))
                .await
                .unwrap_or_else(|e| panic!("bind {ip}: {e}")),
        );
        let rtp = Arc::new(AtomicUsize::new(0));
        let (s, n) = (sock.clone(), rtp.clone());
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok((len, _)) = s.recv_from(&mut buf).await {
                if is_rtp(&buf[..len]) {
                    n.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Counter { sock, rtp }
    }

    fn addr(&self) -> SocketAddr {
        self.sock.local_addr().expect("addr")
    }

    fn got(&self) -> usize {
        self.rtp.load(Ordering::Relaxed)
    }

    async fn wait_for(&self, what: &str, n: usize, within: Duration) {
        eventually(what, within, || async {
            match self.got() {
                g if g >= n => Ok(()),
                g => Err(format!("{g} RTP packets")),
            }
        })
        .await
    }
}

/// A PCMU stream being sent.
struct Stream {
    task: tokio::task::JoinHandle<usize>,
    sent: Arc<AtomicUsize>,
}

impl Stream {
    async fn wait_sent(&self, what: &str, n: usize) {
        eventually(what, Duration::from_secs(5), || async {
            match self.sent.load(Ordering::Relaxed) {
                s if s >= n => Ok(()),
                s => Err(format!("{s} sent")),
            }
        })
        .await
    }
}

/// Sends a PCMU stream (one SSRC, sequence and timestamp in order) from `sock` to `to` every
/// 20 ms while `run` is set and `pause` is clear, at most `max` packets. A stream that follows
/// every rule is the strongest attacker: it passes any probation.
fn stream(
    sock: Arc<UdpSocket>,
    to: SocketAddr,
    ssrc: u32,
    run: Arc<AtomicBool>,
    pause: Arc<AtomicBool>,
    max: usize,
) -> Stream {
    let sent_count = Arc::new(AtomicUsize::new(0));
    let counter = sent_count.clone();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let (mut seq, mut ts) = ((ssrc & 0xFFFF) as u16, ssrc);
        let mut sent = 0;
        while run.load(Ordering::Relaxed) && sent < max {
            tick.tick().await;
            ts = ts.wrapping_add(160);
            if pause.load(Ordering::Relaxed) {
                continue;
            }
            let p = rtp_packet(0, seq, ts, ssrc, &[0x55; 160]);
            let _ = sock.send_to(&p, to).await;
            seq = seq.wrapping_add(1);
            sent += 1;
            counter.store(sent, Ordering::Relaxed);
        }
        sent
    });
    Stream {
        task,
        sent: sent_count,
    }
}

/// A raw SIP caller from 127.0.0.1.
struct Caller {
    raw: RawSip,
    call_id: String,
    to: String,
}

impl Caller {
    async fn new(node: &MediaNode, call_id: &str) -> Caller {
        Caller {
            raw: RawSip::new(node.sip).await.expect("sip socket"),
            call_id: call_id.to_owned(),
            to: String::new(),
        }
    }

    /// Sends the INVITE with an SDP offer pointing at `c_ip:port` and returns the final
    /// response text.
    async fn invite(&mut self, c_ip: &str, port: u16) -> String {
        let local = self.raw.local();
        let node = self.raw.node;
        let sdp = format!(
            "v=0\r\no=raw 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 {c_ip}\r\nt=0 0\r\n\
             m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=ptime:20\r\na=sendrecv\r\n"
        );
        let inv = format!(
            "INVITE sip:+{NUMBER}@{node} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-{cid}-inv\r\n\
             From: <sip:raw@{local}>;tag=rawtag\r\nTo: <sip:+{NUMBER}@{node}>\r\nCall-ID: {cid}\r\n\
             CSeq: 1 INVITE\r\nContact: <sip:raw@{local}>\r\nMax-Forwards: 70\r\n\
             Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len(),
            cid = self.call_id,
        );
        self.raw.send(inv.as_bytes()).await;
        let mut seen = Vec::new();
        let fin = self
            .raw
            .recv_until(Duration::from_secs(10), &mut seen, |m| {
                status_of(m).is_some_and(|c| c >= 200) && m.contains("INVITE")
            })
            .await
            .unwrap_or_else(|| panic!("no final response to the INVITE; saw {seen:?}"));
        self.to = header_of(&fin, "To").unwrap_or_default().to_owned();
        fin
    }

    async fn ack(&self) {
        let local = self.raw.local();
        let ack = format!(
            "ACK sip:+{NUMBER}@{} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-{cid}-ack\r\n\
             From: <sip:raw@{local}>;tag=rawtag\r\nTo: {}\r\nCall-ID: {cid}\r\nCSeq: 1 ACK\r\n\
             Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
            self.raw.node,
            self.to,
            cid = self.call_id,
        );
        self.raw.send(ack.as_bytes()).await;
    }

    async fn bye(&self) {
        let local = self.raw.local();
        let bye = format!(
            "BYE sip:+{NUMBER}@{} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-{cid}-bye\r\n\
             From: <sip:raw@{local}>;tag=rawtag\r\nTo: {}\r\nCall-ID: {cid}\r\nCSeq: 2 BYE\r\n\
             Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
            self.raw.node,
            self.to,
            cid = self.call_id,
        );
        self.raw.send(bye.as_bytes()).await;
    }
}

/// The node's RTP address from the SDP of its 200 OK.
fn node_rtp(ok: &str) -> SocketAddr {
    let ip = ok
        .lines()
        .find_map(|l| l.trim().strip_prefix("c=IN IP4 "))
        .expect("c= in the answer")
        .trim();
    let port = ok
        .lines()
        .find_map(|l| l.trim().strip_prefix("m=audio "))
        .and_then(|m| m.split_whitespace().next())
        .and_then(|p| p.parse::<u16>().ok())
        .expect("m=audio in the answer");
    format!("{ip}:{port}").parse().expect("node RTP address")
}

/// The agent speaks for the whole call: 8 s of μ-law that is not silence.
fn agent_speaks(conn: &AgentConn) {
    let audio: Vec<u8> = (0..8 * 8000).map(|i| (i % 200) as u8).collect();
    for chunk in audio.chunks(8000) {
        conn.send_media(chunk);
    }
}

/// RTP Bleed: attackers on another port of the carrier's address and on another loopback
/// address spray the call's port with perfectly sequenced RTP before the ACK, during the real
/// peer's first packets, and through a 2 s pause of the real peer. They get nothing; the real
/// peer gets the call's audio before and after its pause.
#[tokio::test]
async fn hostile_rtp_attackers_never_receive_the_calls_audio() {
    let agent = TestAgent::start().await.expect("agent");
    let node = MediaNode::start(&config(&agent.url()), &[])
        .await
        .expect("node");
    let peer = Counter::bind("127.0.0.1").await;
    let same_host = Counter::bind("127.0.0.1").await;
    let other_host = Counter::bind("127.0.0.2").await;

    let mut caller = Caller::new(&node, "bleed@test").await;
    let ok = caller.invite("127.0.0.1", peer.addr().port()).await;
    assert_eq!(status_of(&ok), Some(200), "{ok}");
    let rtp_port = node_rtp(&ok);

    // The attackers start before the ACK: their packets are already waiting when media starts.
    let run = Arc::new(AtomicBool::new(true));
    let never = Arc::new(AtomicBool::new(false));
    let attack1 = stream(
        same_host.sock.clone(),
        rtp_port,
        0xBAD0_0001,
        run.clone(),
        never.clone(),
        600,
    );
    let attack2 = stream(
        other_host.sock.clone(),
        rtp_port,
        0xBAD0_0002,
        run.clone(),
        never.clone(),
        600,
    );
    // More than any probation before the call's media even starts.
    attack1.wait_sent("attacker 1 before the ACK", 10).await;
    attack2.wait_sent("attacker 2 before the ACK", 10).await;
    // The real peer starts sending on the 200 OK, as carriers do, from the address its SDP
    // named; then it acknowledges. The attackers keep going throughout.
    let pause = Arc::new(AtomicBool::new(false));
    let real = stream(
        peer.sock.clone(),
        rtp_port,
        0x0ca1_1e45,
        run.clone(),
        pause.clone(),
        600,
    );
    real.wait_sent("the real peer's first packets", 2).await;
    caller.ack().await;

    let conn = agent.connection(0, Duration::from_secs(10)).await;
    conn.wait_until("start", Duration::from_secs(5), |c| {
        !c.events("start").is_empty()
    })
    .await;
    agent_speaks(&conn);
    peer.wait_for(
        "the call's RTP at the real peer",
        50,
        Duration::from_secs(5),
    )
    .await;
    // Two seconds of silence from the real peer; the attackers go on.
    pause.store(true, Ordering::Relaxed);
    let before_pause = peer.got();
    // The pause itself is the scenario (twice the old 1 s re-latch delay), not a wait.
    tokio::time::sleep(Duration::from_secs(2)).await;
    pause.store(false, Ordering::Relaxed);
    // The node kept sending to the real peer through the pause and after it.
    peer.wait_for(
        "the call's RTP at the real peer after its pause",
        before_pause + 150,
        Duration::from_secs(6),
    )
    .await;
    caller.bye().await;
    run.store(false, Ordering::Relaxed);
    let sent1 = attack1.task.await.expect("attacker 1");
    let sent2 = attack2.task.await.expect("attacker 2");
    let _ = real.task.await;
    assert!(
        sent1 > 100 && sent2 > 100,
        "the attack ran: {sent1}, {sent2}"
    );
    assert_eq!(
        same_host.got(),
        0,
        "another port of the carrier's address got the call's RTP"
    );
    assert_eq!(other_host.got(), 0, "another address got the call's RTP");
    let dropped = node
        .metric(r#"switchboard_rtp_packets_dropped_total{reason="source"}"#)
        .await;
    assert!(
        dropped >= 100.0,
        "attack packets counted as dropped: {dropped}"
    );
    assert_eq!(
        node.metric("switchboard_rtp_sources_learned_total").await,
        0.0
    );
}

/// Symmetric RTP behind a NAT: the peer's packets come from another port than its SDP names.
/// It is still learned, after a few packets, within the learning window; the agent hears it.
#[tokio::test]
async fn hostile_rtp_nat_peer_is_learned_within_the_window() {
    let agent = TestAgent::start().await.expect("agent");
    let node = MediaNode::start(&config(&agent.url()), &[])
        .await
        .expect("node");
    let signalled = Counter::bind("127.0.0.1").await;
    let actual = Counter::bind("127.0.0.1").await;
    let mut caller = Caller::new(&node, "nat@test").await;
    let ok = caller.invite("127.0.0.1", signalled.addr().port()).await;
    assert_eq!(status_of(&ok), Some(200), "{ok}");
    let rtp_port = node_rtp(&ok);
    caller.ack().await;
    let acked = Instant::now();
    let conn = agent.connection(0, Duration::from_secs(10)).await;
    agent_speaks(&conn);
    let run = Arc::new(AtomicBool::new(true));
    let real = stream(
        actual.sock.clone(),
        rtp_port,
        0x4A7_0001,
        run.clone(),
        Arc::new(AtomicBool::new(false)),
        400,
    );
    actual
        .wait_for("RTP at the NAT'd source", 10, Duration::from_secs(3))
        .await;
    let learned_after = acked.elapsed();
    assert!(
        learned_after < Duration::from_secs(3),
        "learned within the 3 s window: {learned_after:?}"
    );
    conn.wait_until("the caller's audio", Duration::from_secs(5), |c| {
        c.audio().iter().filter(|&&b| b == 0x55).count() >= 160 * 10
    })
    .await;
    assert_eq!(
        node.metric("switchboard_rtp_sources_learned_total").await,
        0.0,
        "same host, another port: not counted as a foreign host"
    );
    caller.bye().await;
    run.store(false, Ordering::Relaxed);
    let _ = real.task.await;
}

/// SDP offers asking for RTP at multicast or link-local addresses are refused with 488 before
/// anything is set up; no agent is called.
#[tokio::test]
async fn hostile_rtp_multicast_and_link_local_media_addresses_are_refused() {
    let agent = TestAgent::start().await.expect("agent");
    let node = MediaNode::start(&config(&agent.url()), &[])
        .await
        .expect("node");
    for (i, addr) in ["224.0.0.1", "169.254.10.20", "255.255.255.255"]
        .iter()
        .enumerate()
    {
        let mut caller = Caller::new(&node, &format!("refused-{i}@test")).await;
        let fin = caller.invite(addr, 40000).await;
        assert_eq!(status_of(&fin), Some(488), "c={addr}: {fin}");
    }
    assert_eq!(
        node.metric(r#"switchboard_sip_rejected_requests_total{reason="media_address"}"#)
            .await,
        3.0
    );
    assert_eq!(agent.connections(), 0, "no agent for a refused call");
}

/// A 200 OK that is never acknowledged (the INVITE was spoofed from the carrier's address):
/// no RTP goes to the SDP address and the agent gets no `start`. The ACK then starts both,
/// which shows the test would have seen them.
#[tokio::test]
async fn hostile_rtp_nothing_flows_before_the_ack() {
    let agent = TestAgent::start().await.expect("agent");
    let node = MediaNode::start(&config(&agent.url()), &[])
        .await
        .expect("node");
    let target = Counter::bind("127.0.0.1").await;
    let mut caller = Caller::new(&node, "noack@test").await;
    let ok = caller.invite("127.0.0.1", target.addr().port()).await;
    assert_eq!(status_of(&ok), Some(200), "{ok}");
    let answered = Instant::now();
    // Watch for 1.5 s (75 packet times) with no ACK: nothing may arrive.
    let conn = agent.connection(0, Duration::from_secs(10)).await;
    while answered.elapsed() < Duration::from_millis(1500) {
        assert_eq!(target.got(), 0, "RTP before the ACK");
        assert!(
            conn.events("start").is_empty(),
            "agent start before the ACK"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    caller.ack().await;
    conn.wait_until("start after the ACK", Duration::from_secs(5), |c| {
        !c.events("start").is_empty()
    })
    .await;
    target
        .wait_for("RTP after the ACK", 10, Duration::from_secs(5))
        .await;
    caller.bye().await;
}

/// `media.mediaSource: signalling-network` (MEDIA_SOURCE_SIGNALLING_NETWORK in the node's
/// configuration): an SDP address outside the trunk's allowed sources is refused with 488, and
/// a source outside them is never learned, even one that would pass every learning rule (here
/// a "NAT'd" peer on 127.0.0.2, which the default mode learns).
#[tokio::test]
async fn hostile_rtp_signalling_network_mode_keeps_media_inside_it() {
    let agent = TestAgent::start().await.expect("agent");
    let mut cfg = config(&agent.url());
    cfg["trunks"][0]["media"]["mediaSource"] = json!("MEDIA_SOURCE_SIGNALLING_NETWORK");
    let node = MediaNode::start(&cfg, &[]).await.expect("node");

    let mut refused = Caller::new(&node, "outside@test").await;
    let fin = refused.invite("127.0.0.2", 40000).await;
    assert_eq!(status_of(&fin), Some(488), "c= outside the network: {fin}");

    let signalled = Counter::bind("127.0.0.1").await;
    let outside = Counter::bind("127.0.0.2").await;
    let mut caller = Caller::new(&node, "inside@test").await;
    let ok = caller.invite("127.0.0.1", signalled.addr().port()).await;
    assert_eq!(status_of(&ok), Some(200), "{ok}");
    let rtp_port = node_rtp(&ok);
    caller.ack().await;
    let run = Arc::new(AtomicBool::new(true));
    let s = stream(
        outside.sock.clone(),
        rtp_port,
        0x0075_1DE0,
        run.clone(),
        Arc::new(AtomicBool::new(false)),
        400,
    );
    // Past the whole learning window (3 s) with a perfect stream from outside.
    s.wait_sent("4 s of RTP from outside the network", 200)
        .await;
    assert_eq!(outside.got(), 0, "a source outside the network was learned");
    assert!(
        signalled.got() > 0,
        "the node sends to the signalled address"
    );
    run.store(false, Ordering::Relaxed);
    let _ = s.task.await;
    caller.bye().await;
}
