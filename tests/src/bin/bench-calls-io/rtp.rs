//! The RTP callers: one connected UDP socket per call, one sender thread for all of them on an
//! absolute 20 ms schedule (the calls' phases spread evenly over the period, as independent
//! callers' would be), one receiver thread (epoll) timing the echoes with the kernel's receive
//! timestamps. Optionally the sender impairs its own stream: random delay, swaps, drops and one
//! pause per call.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::net::UdpSocket;
use std::os::fd::AsRawFd as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::Rng as _;

use super::sys::{self, Epoll};
use super::{FRAME, Probes, parse_probe, write_probe};

const PERIOD: Duration = Duration::from_millis(20);
/// Packets due within this much of now go out in the same wake-up: fewer sleeps, and a send
/// at most this early (its real send time is what is recorded).
const SLACK: Duration = Duration::from_micros(1000);
/// The receiver reads its sockets at most this often.
const POLL: Duration = Duration::from_millis(2);
const HDR: usize = 12;

/// How the caller spoils its own stream toward the node (no netem needed).
#[derive(Clone, Copy, Debug)]
pub struct Impairment {
    /// Extra delay per packet, uniform in [0, max_delay).
    pub max_delay: Duration,
    /// Share of packets sent right after the next one.
    pub swap: f64,
    /// Share of packets never sent.
    pub drop: f64,
    /// Once per call: packets due in this stretch are held and sent together at its end.
    pub pause: Duration,
    /// The pause starts at a uniform offset in this range after sending starts.
    pub pause_start: (Duration, Duration),
}

/// What the sender did.
#[derive(Default, Clone, Copy, Debug)]
pub struct SendReport {
    /// Packets sent.
    pub sent: u64,
    /// `send` failures (e.g. a full socket buffer).
    pub send_errors: u64,
    /// Packets dropped on purpose (impairment).
    pub dropped: u64,
    /// Packets sent after their successor on purpose (impairment).
    pub swapped: u64,
    /// Packets held by a pause and sent in its burst.
    pub held: u64,
    /// Sends more than 2 ms behind their planned time (the sender itself was late).
    pub late_over_2ms: u64,
    /// Largest lateness of a send behind its planned time, ms.
    pub late_max_ms: f64,
    /// The sender thread ran at real-time priority.
    pub realtime: bool,
}

/// Running callers; [`Callers::stop_sending`] then [`Callers::finish`].
pub struct Callers {
    stop_send: Arc<AtomicBool>,
    stop_recv: Arc<AtomicBool>,
    sender: Option<JoinHandle<SendReport>>,
    receiver: Option<JoinHandle<()>>,
}

impl Callers {
    /// Starts sending on every socket (each already connected to its call's media address)
    /// and receiving the echoes; call `i` is probe call `i`.
    pub fn start(
        socks: Vec<UdpSocket>,
        probes: Arc<Probes>,
        impair: Option<Impairment>,
    ) -> io::Result<Callers> {
        for s in &socks {
            s.set_nonblocking(true)?;
            sys::enable_rx_timestamps(s.as_raw_fd())?;
        }
        let socks = Arc::new(socks);
        let stop_send = Arc::new(AtomicBool::new(false));
        let stop_recv = Arc::new(AtomicBool::new(false));
        let receiver = {
            let (socks, probes, stop) = (socks.clone(), probes.clone(), stop_recv.clone());
            let ep = Epoll::new()?;
            for (i, s) in socks.iter().enumerate() {
                ep.add(s.as_raw_fd(), i as u64, libc::EPOLLIN as u32)?;
            }
            std::thread::Builder::new()
                .name("rtp-recv".into())
                .spawn(move || receive(&socks, &probes, &stop, ep))?
        };
        let sender = {
            let stop = stop_send.clone();
            std::thread::Builder::new()
                .name("rtp-send".into())
                .spawn(move || send(&socks, &probes, &stop, impair))?
        };
        Ok(Callers {
            stop_send,
            stop_recv,
            sender: Some(sender),
            receiver: Some(receiver),
        })
    }

    /// Stops sending (echoes still counted until [`Callers::finish`]).
    pub fn stop_sending(&self) {
        self.stop_send.store(true, Ordering::Relaxed);
    }

    /// Stops everything; what the sender did.
    pub fn finish(mut self) -> SendReport {
        self.stop_sending();
        let report = self
            .sender
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        self.stop_recv.store(true, Ordering::Relaxed);
        if let Some(h) = self.receiver.take() {
            let _ = h.join();
        }
        report
    }
}

impl Drop for Callers {
    fn drop(&mut self) {
        self.stop_send.store(true, Ordering::Relaxed);
        self.stop_recv.store(true, Ordering::Relaxed);
    }
}

fn receive(socks: &[UdpSocket], probes: &Probes, stop: &AtomicBool, ep: Epoll) {
    let mut evs = sys::events(1024);
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        let Ok(n) = ep.wait(&mut evs, 20) else {
            return;
        };
        for ev in &evs[..n] {
            let i = ev.u64 as usize;
            let Some(s) = socks.get(i) else { continue };
            let Ok((len, ts)) = sys::recv_ts(s.as_raw_fd(), &mut buf) else {
                continue;
            };
            let pkt = &buf[..len];
            // RTP version 2, not RTCP (payload types 200-204 with the marker bit).
            if len < HDR || pkt[0] & 0xC0 != 0x80 || (200..=204).contains(&pkt[1]) {
                continue;
            }
            let off = HDR + 4 * (pkt[0] & 0x0F) as usize;
            if let Some((call, seq)) = pkt.get(off..).and_then(parse_probe)
                && call == i
                && let Some(slot) = probes.slot(call, seq)
            {
                let t = ts.unwrap_or_else(sys::now_ns);
                let _ =
                    probes.back[slot].compare_exchange(0, t, Ordering::Relaxed, Ordering::Relaxed);
            }
        }
        if n > 0 {
            // Let echoes gather: one wake-up per POLL instead of one per packet. The kernel's
            // receive timestamps keep the times exact.
            std::thread::sleep(POLL);
        }
    }
}

/// Per-call impairment state.
struct LegImpair {
    pause_from: Instant,
    held_swap: Option<u32>,
}

fn send(
    socks: &[UdpSocket],
    probes: &Probes,
    stop: &AtomicBool,
    impair: Option<Impairment>,
) -> SendReport {
    if socks.is_empty() {
        return SendReport::default();
    }
    let n = socks.len() as u32;
    let mut rep = SendReport {
        realtime: sys::realtime_priority(),
        ..SendReport::default()
    };
    let mut pkt = [0xFFu8; HDR + FRAME];
    pkt[0] = 0x80;
    pkt[1] = 0x00;
    let ssrc_base: u32 = rand::random();
    let t0 = Instant::now() + Duration::from_millis(5);
    // The wall clock at t0, for the planned (clean-line) send times of impaired runs.
    let rt0 = sys::now_ns() + 5_000_000;
    let mut rng = rand::rng();
    let mut legs: Vec<LegImpair> = match impair {
        Some(im) => (0..socks.len())
            .map(|_| {
                let (a, b) = im.pause_start;
                let span = b.saturating_sub(a).as_secs_f64();
                LegImpair {
                    pause_from: t0 + a + Duration::from_secs_f64(rng.random::<f64>() * span),
                    held_swap: None,
                }
            })
            .collect(),
        None => Vec::new(),
    };
    // Impaired packets wait here for their send time: (when, insertion order, call, sequence).
    let mut heap: BinaryHeap<Reverse<(Instant, u64, u32, u32)>> = BinaryHeap::new();
    let mut order = 0u64;
    let due = |k: u32, i: u32| t0 + PERIOD * k + PERIOD * i / n;
    let send_one = |call: u32,
                    seq: u32,
                    planned: Instant,
                    pkt: &mut [u8; HDR + FRAME],
                    rep: &mut SendReport| {
        let Some(sock) = socks.get(call as usize) else {
            return;
        };
        pkt[2..4].copy_from_slice(&(seq as u16).to_be_bytes());
        pkt[4..8].copy_from_slice(&seq.wrapping_mul(FRAME as u32).to_be_bytes());
        pkt[8..12].copy_from_slice(&(ssrc_base ^ call).to_be_bytes());
        write_probe(&mut pkt[HDR..], call as u16, seq);
        let late = Instant::now().saturating_duration_since(planned);
        if late > Duration::from_millis(2) {
            rep.late_over_2ms += 1;
        }
        rep.late_max_ms = rep.late_max_ms.max(late.as_secs_f64() * 1000.0);
        let t = sys::now_ns();
        if sock.send(&pkt[..]).is_ok() {
            rep.sent += 1;
            if let Some(s) = probes.slot(call as usize, seq as usize) {
                probes.sent[s].store(t, Ordering::Relaxed);
            }
        } else {
            rep.send_errors += 1;
        }
    };
    let (mut k, mut i) = (0u32, 0u32);
    while !stop.load(Ordering::Relaxed) {
        let horizon = Instant::now() + SLACK;
        // Packets due on the clean schedule.
        loop {
            let d = due(k, i);
            if d > horizon {
                break;
            }
            match impair {
                None => send_one(i, k, d, &mut pkt, &mut rep),
                Some(im) => {
                    if let Some(s) = probes.slot(i as usize, k as usize)
                        && let Some(nom) = probes.nominal.get(s)
                    {
                        let ns = rt0 + d.saturating_duration_since(t0).as_nanos() as u64;
                        nom.store(ns, Ordering::Relaxed);
                    }
                    let leg = &mut legs[i as usize];
                    let mut at = d + im.max_delay.mul_f64(rng.random::<f64>());
                    let pause_to = leg.pause_from + im.pause;
                    if at >= leg.pause_from && at < pause_to {
                        at = pause_to;
                        rep.held += 1;
                    }
                    let drop = rng.random::<f64>() < im.drop;
                    let mut push = |seq: u32, at: Instant| {
                        order += 1;
                        heap.push(Reverse((at, order, i, seq)));
                    };
                    match (leg.held_swap.take(), drop) {
                        (Some(h), true) => {
                            rep.dropped += 1;
                            push(h, at);
                        }
                        (Some(h), false) => {
                            rep.swapped += 1;
                            push(k, at);
                            push(h, at);
                        }
                        (None, true) => rep.dropped += 1,
                        (None, false) if rng.random::<f64>() < im.swap => {
                            leg.held_swap = Some(k);
                        }
                        (None, false) => push(k, at),
                    }
                }
            }
            i += 1;
            if i == n {
                i = 0;
                k += 1;
            }
        }
        while let Some(&Reverse((at, _, call, seq))) = heap.peek() {
            if at > horizon {
                break;
            }
            heap.pop();
            send_one(call, seq, at, &mut pkt, &mut rep);
        }
        let mut next = due(k, i);
        if let Some(&Reverse((at, ..))) = heap.peek() {
            next = next.min(at);
        }
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
    }
    rep
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A caller socket connected to a peer socket we read from; the caller's packets in order.
    fn run(impair: Option<Impairment>, want: usize) -> (Vec<(usize, usize)>, SendReport) {
        let peer = UdpSocket::bind("127.0.0.1:0").expect("bind");
        peer.set_read_timeout(Some(Duration::from_millis(600)))
            .expect("timeout");
        let caller = UdpSocket::bind("127.0.0.1:0").expect("bind");
        caller
            .connect(peer.local_addr().expect("addr"))
            .expect("connect");
        let probes = Arc::new(Probes::new(1, 1000, impair.is_some()));
        let callers = Callers::start(vec![caller], probes.clone(), impair).expect("start");
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        // Bounded: `want` packets at 50/s, or the read times out.
        while got.len() < want {
            let Ok(n) = peer.recv(&mut buf) else { break };
            let rtp_seq = u16::from_be_bytes([buf[2], buf[3]]) as usize;
            let probe = parse_probe(&buf[HDR..n]).expect("probe");
            assert_eq!(probe.1, rtp_seq, "RTP sequence and probe sequence agree");
            got.push(probe);
        }
        let rep = callers.finish();
        (got, rep)
    }

    #[test]
    fn clean_stream_is_in_order_and_recorded() {
        let (got, rep) = run(None, 10);
        let seqs: Vec<usize> = got.iter().map(|p| p.1).collect();
        assert_eq!(seqs, (0..10).collect::<Vec<_>>());
        assert!(got.iter().all(|p| p.0 == 0));
        assert!(rep.sent >= 10);
        assert_eq!(rep.dropped + rep.swapped + rep.held, 0);
    }

    #[test]
    fn impairment_swaps_and_drops_as_asked() {
        let never = (Duration::from_secs(3600), Duration::from_secs(3600));
        let swap_all = Impairment {
            max_delay: Duration::ZERO,
            swap: 1.0,
            drop: 0.0,
            pause: Duration::from_millis(500),
            pause_start: never,
        };
        let (got, rep) = run(Some(swap_all), 6);
        let seqs: Vec<usize> = got.iter().map(|p| p.1).collect();
        assert_eq!(seqs, [1, 0, 3, 2, 5, 4]);
        assert!(rep.swapped >= 3);
        let drop_all = Impairment {
            swap: 0.0,
            drop: 1.0,
            ..swap_all
        };
        let (got, rep) = run(Some(drop_all), 1);
        assert!(got.is_empty(), "every packet dropped");
        assert!(rep.dropped > 0 && rep.sent == 0);
    }

    #[test]
    fn a_pause_holds_packets_and_sends_them_together() {
        let pause = Impairment {
            max_delay: Duration::ZERO,
            swap: 0.0,
            drop: 0.0,
            pause: Duration::from_millis(200),
            pause_start: (Duration::ZERO, Duration::ZERO),
        };
        let (got, rep) = run(Some(pause), 12);
        let seqs: Vec<usize> = got.iter().map(|p| p.1).collect();
        assert_eq!(seqs, (0..12).collect::<Vec<_>>(), "held, not reordered");
        // 200 ms of 20 ms packets from the start were held.
        assert!(rep.held >= 9, "held {}", rep.held);
    }
}
