//! The caller's side of a call's media, for end-to-end tests: RTP parsed and built here
//! independently of the node (RFC 3550 5.1), a recognisable μ-law pattern, and the "phone",
//! an RTP endpoint that paces audio and RFC 4733 events towards the node and records what the
//! node sends.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// Bytes of one 20 ms G.711 frame.
pub const FRAME: usize = 160;

/// `frames` frames of a recognisable μ-law signal that never contains 0xFF (silence), so it
/// can be found in a stream padded with silence. Different seeds give unrelated signals, so
/// audio sent after an event is not mistaken for audio sent before it (a hash of index and
/// seed: the former `index * K + seed >> 24` gave every seed the same bytes).
pub fn ulaw_pattern(frames: usize, seed: u32) -> Vec<u8> {
    let start = seed.wrapping_mul(0x9E37_79B9);
    (0..frames * FRAME)
        .map(|i| {
            // The murmur3 finaliser: every input bit reaches the top byte.
            let mut z = (i as u32).wrapping_add(start);
            z = (z ^ (z >> 16)).wrapping_mul(0x85EB_CA6B);
            z = (z ^ (z >> 13)).wrapping_mul(0xC2B2_AE35);
            let x = ((z ^ (z >> 16)) >> 24) as u8;
            if x == 0xFF || x == 0x7F { 0x80 } else { x }
        })
        .collect()
}

// ------------------------------------------------------------------------------------------
// RTP on the wire (RFC 3550 5.1), parsed here independently of the node.

/// One RTP packet as received.
#[derive(Debug, Clone)]
pub struct Rtp {
    /// When it arrived.
    pub at: Instant,
    /// Where it came from.
    pub from: SocketAddr,
    /// The marker bit.
    pub marker: bool,
    /// Payload type.
    pub pt: u8,
    /// Sequence number.
    pub seq: u16,
    /// RTP timestamp.
    pub ts: u32,
    /// Synchronisation source.
    pub ssrc: u32,
    /// The payload (after CSRCs, extension and padding).
    pub payload: Vec<u8>,
}

/// Parses an RTP packet (None when it is not RTP version 2 or is truncated).
pub fn parse_rtp(b: &[u8], at: Instant, from: SocketAddr) -> Option<Rtp> {
    if b.len() < 12 || b[0] >> 6 != 2 {
        return None;
    }
    let cc = (b[0] & 0x0F) as usize;
    let mut off = 12 + 4 * cc;
    if b[0] & 0x10 != 0 {
        let len = u16::from_be_bytes([*b.get(off + 2)?, *b.get(off + 3)?]) as usize;
        off += 4 + 4 * len;
    }
    let mut end = b.len();
    if b[0] & 0x20 != 0 {
        end -= *b.last()? as usize;
    }
    Some(Rtp {
        at,
        from,
        marker: b[1] & 0x80 != 0,
        pt: b[1] & 0x7F,
        seq: u16::from_be_bytes([b[2], b[3]]),
        ts: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        ssrc: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
        payload: b.get(off..end)?.to_vec(),
    })
}

/// Builds an RTP packet without CSRCs or extension.
pub fn rtp_packet(marker: bool, pt: u8, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, (pt & 0x7F) | if marker { 0x80 } else { 0 }];
    p.extend(seq.to_be_bytes());
    p.extend(ts.to_be_bytes());
    p.extend(ssrc.to_be_bytes());
    p.extend(payload);
    p
}

// ------------------------------------------------------------------------------------------
// The phone: the caller's RTP endpoint.

/// What the phone is told to do.
enum PhoneCmd {
    /// Send these μ-law (or A-law) bytes.
    Audio(Vec<u8>),
    /// Send an RFC 4733 event.
    Dtmf(u8),
    /// Send nothing for this long (after the queued audio).
    Pause(Duration),
    /// Stop sending.
    Stop,
}

/// Sends RTP towards the node at 20 ms pace (queued audio, RFC 4733 events, silence otherwise)
/// once the node's first packet told it where the node is (symmetric RTP), and records every
/// packet the node sends.
pub struct Phone {
    /// The phone's RTP port (what the caller's SDP names).
    pub port: u16,
    received: Arc<Mutex<Vec<Rtp>>>,
    cmd: mpsc::UnboundedSender<PhoneCmd>,
    last_sent: Arc<Mutex<Option<Instant>>>,
}

impl Phone {
    /// `silence`: the byte of silence in the call's codec.
    ///
    /// The sender runs on an OS thread of its own with an absolute 20 ms schedule, so that the
    /// test's async runtime (agents, SIPp, polling) never delays or bunches the caller's
    /// packets: what the node sees is a clean line unless a test makes it otherwise.
    pub async fn start(pt: u8, silence: u8) -> Phone {
        let std_sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind phone");
        Self::start_on(std_sock, pt, silence)
    }

    /// [`Phone::start`] on an already bound socket (e.g. one bound inside a test network
    /// namespace, see [`crate::netns`]).
    pub fn start_on(std_sock: std::net::UdpSocket, pt: u8, silence: u8) -> Phone {
        let port = std_sock.local_addr().expect("addr").port();
        let tx_sock = std_sock.try_clone().expect("clone phone socket");
        std_sock.set_nonblocking(true).expect("nonblocking");
        let rx_sock = UdpSocket::from_std(std_sock).expect("phone socket");
        let received: Arc<Mutex<Vec<Rtp>>> = Arc::default();
        let rec = received.clone();
        let (node_tx, node_rx) = std::sync::mpsc::channel::<SocketAddr>();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let mut told = false;
            while let Ok((n, from)) = rx_sock.recv_from(&mut buf).await {
                // RTCP (payload types 200-204 in the second octet) is not audio.
                if n >= 2 && (200..=204).contains(&buf[1]) {
                    continue;
                }
                if let Some(p) = parse_rtp(&buf[..n], Instant::now(), from) {
                    rec.lock().expect("lock").push(p);
                    if !told {
                        told = node_tx.send(from).is_ok();
                    }
                }
            }
        });
        let (cmd, cmds) = mpsc::unbounded_channel();
        let last_sent: Arc<Mutex<Option<Instant>>> = Arc::default();
        let last = last_sent.clone();
        std::thread::spawn(move || phone_sender(tx_sock, node_rx, cmds, last, pt, silence));
        Phone {
            port,
            received,
            cmd,
            last_sent,
        }
    }

    /// Queues audio to send at 20 ms pace.
    pub fn send_audio(&self, bytes: &[u8]) {
        let _ = self.cmd.send(PhoneCmd::Audio(bytes.to_vec()));
    }

    /// Queues an RFC 4733 key press (after the audio queued before it).
    pub fn send_dtmf(&self, digit: char) {
        let ev = match digit {
            '0'..='9' => digit as u8 - b'0',
            '*' => 10,
            '#' => 11,
            _ => panic!("not a DTMF digit"),
        };
        let _ = self.cmd.send(PhoneCmd::Dtmf(ev));
    }

    /// Sends nothing for `d` once the queued audio is out.
    pub fn pause(&self, d: Duration) {
        let _ = self.cmd.send(PhoneCmd::Pause(d));
    }

    /// Stops sending.
    pub fn stop(&self) {
        let _ = self.cmd.send(PhoneCmd::Stop);
    }

    /// When the phone last sent a packet.
    pub fn last_sent(&self) -> Option<Instant> {
        *self.last_sent.lock().expect("lock")
    }

    /// Every packet the node sent so far.
    pub fn packets(&self) -> Vec<Rtp> {
        self.received.lock().expect("lock").clone()
    }

    /// Polls the received packets until `check` holds, failing after `within`.
    pub async fn wait_packets(&self, what: &str, within: Duration, check: impl Fn(&[Rtp]) -> bool) {
        let deadline = Instant::now() + within;
        loop {
            let p = self.packets();
            if check(&p) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {within:?} waiting for {what}; phone got {} packets",
                p.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The phone's sending side (see [`Phone::start`]): waits for the node's first packet, then
/// for the test's first command, then sends a packet every 20 ms on an absolute schedule.
fn phone_sender(
    sock: std::net::UdpSocket,
    node_rx: std::sync::mpsc::Receiver<SocketAddr>,
    mut cmds: mpsc::UnboundedReceiver<PhoneCmd>,
    last: Arc<Mutex<Option<Instant>>>,
    pt: u8,
    silence: u8,
) {
    let Ok(node) = node_rx.recv() else {
        return;
    };
    // The stream starts with the test's first command, so that what the agent hears starts
    // with what the test sent (no leading silence to account for).
    let first_cmd = cmds.blocking_recv();
    let ssrc = 0x0ca1_1e45u32;
    let (mut seq, mut ts) = (7000u16, 160_000u32);
    let mut queue: std::collections::VecDeque<u8> = Default::default();
    let mut dtmf: std::collections::VecDeque<u8> = Default::default();
    let mut first = true;
    let mut pause: Option<Duration> = None;
    match first_cmd {
        Some(PhoneCmd::Audio(a)) => queue.extend(a),
        Some(PhoneCmd::Dtmf(ev)) => dtmf.push_back(ev),
        Some(PhoneCmd::Pause(d)) => pause = Some(d),
        Some(PhoneCmd::Stop) | None => return,
    }
    let period = Duration::from_millis(20);
    let mut next = Instant::now();
    let send = |p: &[u8]| {
        let _ = sock.send_to(p, node);
        *last.lock().expect("lock") = Some(Instant::now());
    };
    // Sleeps until the next slot of the schedule (never drifting: slots are absolute).
    let tick = |next: &mut Instant| {
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        *next += period;
    };
    loop {
        tick(&mut next);
        loop {
            match cmds.try_recv() {
                Ok(PhoneCmd::Audio(a)) => queue.extend(a),
                Ok(PhoneCmd::Dtmf(ev)) => dtmf.push_back(ev),
                Ok(PhoneCmd::Pause(d)) => pause = Some(d),
                Ok(PhoneCmd::Stop) | Err(mpsc::error::TryRecvError::Disconnected) => return,
                Err(mpsc::error::TryRecvError::Empty) => break,
            }
        }
        if queue.is_empty()
            && let Some(d) = pause.take()
        {
            std::thread::sleep(d);
            next = Instant::now() + period;
            ts = ts.wrapping_add((d.as_millis() as u32) * 8);
            continue;
        }
        // Key presses follow the audio queued before them.
        if let Some(ev) = queue.is_empty().then(|| dtmf.pop_front()).flatten() {
            // RFC 4733: 5 packets 20 ms apart with growing duration, then the end packet three
            // times, all with the event's start timestamp; audio time moves on.
            let start_ts = ts;
            for k in 1..=5u16 {
                let body = [ev, 10, ((k * 160) >> 8) as u8, (k * 160) as u8];
                send(&rtp_packet(k == 1, 101, seq, start_ts, ssrc, &body));
                seq = seq.wrapping_add(1);
                ts = ts.wrapping_add(160);
                tick(&mut next);
            }
            for _ in 0..3 {
                let body = [ev, 0x80 | 10, (960u16 >> 8) as u8, 960u16 as u8];
                send(&rtp_packet(false, 101, seq, start_ts, ssrc, &body));
                seq = seq.wrapping_add(1);
            }
            continue;
        }
        let mut frame = [silence; FRAME];
        for b in frame.iter_mut() {
            match queue.pop_front() {
                Some(x) => *b = x,
                None => break,
            }
        }
        send(&rtp_packet(first, pt, seq, ts, ssrc, &frame));
        first = false;
        seq = seq.wrapping_add(1);
        ts = ts.wrapping_add(160);
    }
}

/// Asserts RFC 3550 continuity of the node's stream: one SSRC, sequence numbers +1 and
/// timestamps +160 from packet to packet, and 50 packets per second.
pub fn assert_continuous_50pps(pkts: &[Rtp], pt: u8) {
    assert!(
        !pkts.is_empty() && pkts[0].marker,
        "the first packet starts a talkspurt (marker bit)"
    );
    assert_continuous(pkts, pt);
}

/// [`assert_continuous_50pps`] for a stretch of the stream that need not start it.
pub fn assert_continuous(pkts: &[Rtp], pt: u8) {
    assert!(
        pkts.len() >= 50,
        "need at least a second of packets, got {}",
        pkts.len()
    );
    let ssrc = pkts[0].ssrc;
    for w in pkts.windows(2) {
        assert_eq!(
            w[1].from, w[0].from,
            "one source address (symmetric RTP: our RTP port)"
        );
        assert_eq!(w[1].ssrc, ssrc, "one SSRC");
        assert_eq!(w[1].pt, pt, "payload type");
        assert_eq!(w[1].payload.len(), FRAME, "20 ms per packet");
        assert_eq!(
            w[1].seq,
            w[0].seq.wrapping_add(1),
            "sequence numbers continuous"
        );
        assert_eq!(
            w[1].ts,
            w[0].ts.wrapping_add(160),
            "timestamps advance 160 per packet"
        );
    }
    let span = pkts[pkts.len() - 1].at - pkts[0].at;
    let rate = (pkts.len() - 1) as f64 / span.as_secs_f64();
    assert!(
        (47.0..=53.0).contains(&rate),
        "50 packets per second, got {rate:.2} over {span:?}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_of_different_seeds_share_no_frame() {
        // Tests tell audio sent before and after an event apart by its seed.
        let a = ulaw_pattern(50, 11);
        let b = ulaw_pattern(25, 21);
        assert!(!a.windows(16).any(|w| b.windows(16).any(|v| v == w)));
        assert!(a.iter().chain(&b).all(|&x| x != 0xFF && x != 0x7F));
        assert_eq!(ulaw_pattern(3, 11), a[..3 * FRAME]);
    }
}
